"""edgert: an edge inference runtime for real-time anomaly detection on sensor streams.

Data flow: bus (`wire`, `bus`) → windows (`windows`) → kernels (`edgert.kernels`) → batcher
(`batcher`) → backend (`backends`) → scoring (`scoring`) → events (`events`); `daemon` runs
the loop, `cli` is the ``edgert`` command.
"""

__version__ = "0.1.0"
