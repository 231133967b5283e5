"""edgert.bench: the benchmark suite behind ``edgert bench`` (repository directory ``bench/``).

`run.main(args)` runs the sections (kernels, bare invoke, pipeline, latency, inference, bus,
end to end, start-up; see `run`), prints a table and writes one JSON file with every figure,
the machine, the library versions and the settings. ``--quick`` is the CI subset whose
``ratios`` (pipeline / bare invoke, numba / numpy) are compared with bench/baseline.json.
"""
