"""edgert: an edge inference runtime for real-time anomaly detection on sensor streams.

Data flow: bus (`wire`, `bus`) → windows (`windows`) → kernels (`edgert.kernels`) → batcher
(`batcher`) → backend (`backends`) → scoring (`scoring`, `thresholds`, `drift`) → events
(`events`). `pipeline.Pipeline` is that engine as a library; `daemon` runs it behind ZeroMQ
sockets, `cli` is the ``edgert`` command.

Use as a library::

    import edgert
    p = edgert.Pipeline("motor-ae")          # the shipped int8 autoencoder, best backend here
    scores = p.score(samples)                # [n, 3] motor current -> per-window scores, flags
"""

import os as _os

__version__ = "0.1.0"
__all__ = ["Pipeline", "Decision", "Scores", "__version__"]


def __getattr__(name):
    # Imported on first use: `import edgert` (and the CLI's start) stays free of numpy, numba
    # and the TFLite runtime until the engine is asked for.
    if name in ("Pipeline", "Decision", "Scores"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'edgert' has no attribute {name!r}")

# In a source checkout, kernels/, compiled_models/ and bench/ sit beside edgert/ (the layout
# shows the data flow); an install maps them to edgert.kernels etc. (pyproject package-dir).
# Let the checkout work as the install does, e.g. `python -m edgert` run from the repository.
_here = _os.path.dirname(_os.path.abspath(__file__))
_root = _os.path.dirname(_here)
if (not _os.path.isdir(_os.path.join(_here, "kernels"))
        and _os.path.isfile(_os.path.join(_root, "kernels", "__init__.py"))
        and _os.path.isfile(_os.path.join(_root, "pyproject.toml"))):
    __path__.append(_root)  # noqa: F821 - a package's __path__
