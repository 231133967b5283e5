"""JSON-safe copies of benchmark results (``bench.run`` and ``bench.peers`` write them)."""

from __future__ import annotations

import math
from pathlib import Path


def clean(x):
    """JSON-safe copy of `x`: NaN/inf -> None, tuples and arrays -> lists,
    numpy scalars -> Python, paths -> str."""
    if isinstance(x, float):
        return None if math.isnan(x) or math.isinf(x) else x
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if hasattr(x, "tolist") and callable(x.tolist):  # numpy arrays and scalars
        return clean(x.tolist())
    if isinstance(x, Path):
        return str(x)
    return x
