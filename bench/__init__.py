"""edgert.bench: the benchmark suite behind ``edgert bench`` (repository directory ``bench/``).

`run.main(args)` runs the sections (kernels, bare invoke, pipeline, latency, inference, bus,
end to end, start-up, naive; see `run`), prints a table and writes one JSON file with every
figure, the machine (CPU model and int8 instructions), the library versions and the settings.
``--quick`` is the CI subset whose CPU-time ``ratios`` (pipeline / bare invoke per CPU-second,
numba / numpy CPU time) `gate` compares with bench/baseline.json.
"""
