"""edgert.kernels: the per-sample hot path (ring append, finiteness check, normalize+quantize,
reconstruction error, window statistics).

Numba kernels from `_jit.py` when numba imports, otherwise the vectorized numpy ones from
`ref.py` (same signatures, bit-identical results, slower), with a single RuntimeWarning.
`EDGERT_NO_NUMBA=1` forces the numpy kernels. `BACKEND` says which set is in use. Contracts:
docs/design.md, "Kernels".
"""

from __future__ import annotations

import os
import time
import warnings

import numpy as np

__all__ = ["BACKEND", "ring_append", "count_nonfinite", "normalize_quantize", "recon_error",
           "window_stats", "ingest", "ingest_messages", "book_batch",
           "encode_anomalies", "phasor_shares", "warmup"]


def _numba_unavailable() -> str | None:
    """Why the numba kernels can't be used, or None if they can."""
    if os.environ.get("EDGERT_NO_NUMBA") == "1":
        return "EDGERT_NO_NUMBA=1 is set"
    try:
        import numba  # noqa: F401
    except (ImportError, OSError) as exc:  # OSError: llvmlite's shared library failed to load
        return f"import failed: {type(exc).__name__}: {exc}"
    return None


_why = _numba_unavailable()
if _why is None:
    from ._jit import count_nonfinite, ingest, normalize_quantize, recon_error, ring_append, window_stats

    from ._batch import DEADLINE, DONE, FULL, SLOW, book_batch, ingest_messages
    from ._attribution import phasor_shares
    from ._events import encode_anomalies

    BACKEND = "numba"
else:
    from .ref import count_nonfinite, ingest, normalize_quantize, recon_error, ring_append, window_stats

    # No compiled per-message path without numba: the pipeline handles each message in Python.
    ingest_messages = book_batch = encode_anomalies = phasor_shares = None
    DONE, FULL, SLOW, DEADLINE = 0, 1, 2, 3
    BACKEND = "numpy"
    warnings.warn(f"edgert.kernels: numba is unavailable ({_why}); the numpy kernels serve "
                  "instead (slower)", RuntimeWarning, stacklevel=2)
del _why

#: Sample dtypes the bus allows (edgert/wire.py), i.e. what ring_append/count_nonfinite get.
_BLOCK_DTYPES = ("<f4", "<f8", "<i2", "<i4", "<u2")


def warmup(progress=None) -> float:
    """Call every kernel once on tiny arrays so numba compiles (or loads from its cache) each
    specialization the daemon uses. Returns the seconds taken.

    Blocks are covered for every bus dtype, writable and read-only (a block decoded with
    ``np.frombuffer`` from a message is read-only, which numba types separately). Scalars
    are Python int/float and float arrays float64: a caller passing e.g. a numpy float32
    scale gets another specialization, compiled on its first call.

    Args:
      progress: optional ``callable(step, n_steps, name)`` called before each kernel group
        (a first run on a new CPU compiles for tens of seconds: the caller can say so).
    Returns:
      seconds taken.
    """
    say = progress or (lambda *_: None)
    t0 = time.perf_counter()
    say(1, 3, "ring_append, count_nonfinite")
    cap, C, W = 4, 2, 2
    ring = np.zeros((2 * cap, C), dtype=np.float32)
    for dt in _BLOCK_DTYPES:
        for writable in (True, False):
            block = np.ones((3, C), dtype=dt)
            block.flags.writeable = writable
            ring_append(ring, cap, 0, block)
            count_nonfinite(block)
    say(2, 3, "normalize_quantize, recon_error, window_stats")
    starts = np.array([0, 1], dtype=np.int64)
    mean = np.zeros(C, dtype=np.float64)
    inv_std = np.ones(C, dtype=np.float64)
    q = np.zeros((2, 1, W, C), dtype=np.int8)
    normalize_quantize(ring, cap, starts, W, mean, inv_std, 0.5, 0, q, 0)
    ch_err = np.zeros((2, C), dtype=np.float32)
    scores = np.zeros(2, dtype=np.float32)
    recon_error(q, 0.5, 0, q, 0.5, 0, 2, ch_err, scores)
    stats = np.zeros((2, C, 6), dtype=np.float32)
    window_stats(ring, cap, starts, W, stats)
    t_start = np.zeros(2, dtype=np.int64)
    say(3, 3, "ingest")
    for dt in _BLOCK_DTYPES:
        for writable in (True, False):
            block = np.ones((3, C), dtype=dt)
            block.flags.writeable = writable
            ingest(ring, cap, 0, 0, block, W, 1, mean, inv_std, 0.5, 0, q, stats, t_start, 0, 2, 0, 1)
    if ingest_messages is not None:
        _warm_ingest_messages(ring, cap, W, C, q, stats)
    return time.perf_counter() - t0


def _warm_ingest_messages(ring, cap, W, C, q, stats) -> None:
    """Compile (or load) the per-message batch kernel with the types the pipeline passes."""
    i8 = np.int64
    one = np.zeros(1, i8)
    z2 = np.zeros(2, i8)
    rings = ring[None]
    # headers and payloads are views of joined bytes: read-only arrays, typed apart by numba
    ingest_messages(np.frombuffer(bytes(1), np.uint8), z2, np.frombuffer(bytes(4), np.uint8), z2, np.full(1, -1, i8), one, 0, 0,
                    C, 1, 0, -1, 3.0, one, one.copy(), np.full(1, -1, i8), one.copy(), one.copy(),
                    np.zeros(1, np.uint8), one.copy(), one.copy(), one.copy(), one.copy(), rings, cap, W, 1,
                    np.zeros((1, C)), np.ones((1, C)), 0.5, 0, q, stats, np.zeros(2, i8),
                    np.zeros(2, np.int32), np.zeros(2, i8), np.zeros(2, i8), np.zeros(2, i8), 0, 2, 1000)
    edges = np.arange(4, dtype=np.float64)
    for thr_dtype in (np.float32, np.float64):  # FixedThreshold's values are f4, the adaptive ones f8
        book_batch(np.zeros(2, np.float32), np.zeros(2, thr_dtype), np.zeros(2, np.int32), z2, z2, stats, 2, 0, 0,
                   np.zeros(2, np.bool_), np.zeros(2), np.zeros(2), np.zeros(1, i8), np.zeros(1, i8), edges,
                   np.zeros(4, i8), edges, np.zeros(4, i8), np.zeros((1, C + 1)), True)
    ro = np.frombuffer(bytes(64), np.uint8)  # the packer's pre-encoded parts are read-only views
    off = np.zeros(30, i8)
    shares = np.full((1, C), 0.5, np.float32)
    for shares_dtype in (np.float32, np.float64):
        sh = shares.astype(shares_dtype)
        for thr_dtype in (np.float32, np.float64):
            encode_anomalies(np.zeros(1, i8), np.zeros(2, np.int32), z2, z2, stats, np.zeros(2, np.float32),
                             np.zeros(2, thr_dtype), sh, np.zeros((2, C), np.float32), np.zeros(2), np.zeros(2),
                             np.argsort(-sh, axis=1)[:, :3], 2, 1, np.zeros(1, i8), ro, np.zeros(1, i8),
                             np.zeros(1, i8), ro, off, ro, off, ro, off, np.zeros(4096, np.uint8), np.zeros(2, i8))
    phasor_shares(q, np.zeros(1, i8), 0, 0.5, np.ones((2, W)), np.ones(C, np.complex128), np.ones(C), 1j,
                  shares, np.zeros((1, C), np.float32))
