"""``njit`` for the detectors: numba's when it imports (and ``EDGERT_NO_NUMBA`` is not ``1``),
otherwise the plain Python function (same results, much slower), like ``edgert.kernels``."""

from __future__ import annotations

import os

try:
    if os.environ.get("EDGERT_NO_NUMBA") == "1":
        raise ImportError("EDGERT_NO_NUMBA=1 is set")
    from numba import njit as _njit

    BACKEND = "numba"

    def njit(fn):
        """Compiles ``fn`` with numba (cached on disk)."""
        return _njit(cache=True, nogil=True)(fn)
except (ImportError, OSError):  # OSError: llvmlite's shared library failed to load
    BACKEND = "python"

    def njit(fn):
        """numba is unavailable: ``fn`` runs as plain Python."""
        return fn
