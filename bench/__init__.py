"""edgert.bench: the benchmark behind ``edgert bench`` (repository directory ``bench/``).

`run.main(args)` measures, in one run: the numba kernels against their numpy references,
the bare batch-32 / batch-1 invoke rate of the CPU backend, the daemon's sustained
windows/s over ZeroMQ (daemon and sender pinned to separate cores), and latency, RSS and
start-up of a fresh daemon at half that load. Results go to a JSON file
(``bench/results/bench-<timestamp>.json`` under the current directory by default) whose
``ratios`` hold the machine-independent figures (pipeline / bare invoke, numba / numpy).
"""
