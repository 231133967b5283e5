"""Vectorized numpy kernels: the fallback when numba is unavailable and the benchmark baseline.

Same signatures and bit-identical results as `_jit.py` (see docs/design.md, "Kernels").

Reductions (means over w or c) are defined as a *sequential* float64 sum in increasing index
order, divided by the count. ``np.sum``/``np.mean`` do not guarantee that order (they switch
to pairwise summation whenever the reduced axis ends up as the inner loop, e.g. for C == 1),
so the sums here use ``np.add.accumulate``, which is sequential by definition, and take its
last element.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ring_append", "count_nonfinite", "normalize_quantize", "recon_error", "window_stats",
           "ingest"]


def _seqsum(x: np.ndarray, axis: int) -> np.ndarray:
    """Sequential float64 sum of `x` along `axis` (same order as a plain loop)."""
    acc = np.add.accumulate(x, axis=axis)
    return np.take(acc, -1, axis=axis)


def _check_ring(ring: np.ndarray, cap: int) -> None:
    if cap < 1 or ring.ndim != 2 or ring.shape[0] != 2 * cap:
        raise ValueError("ring must be [2*cap, C] with cap >= 1")


def _windows(ring: np.ndarray, cap: int, starts: np.ndarray, W: int) -> np.ndarray:
    """float64 [k, W, C] copy of the windows at logical `starts`."""
    s = np.asarray(starts, dtype=np.int64) % cap
    idx = s[:, None] + np.arange(W, dtype=np.int64)
    return ring[idx].astype(np.float64)


def ring_append(ring: np.ndarray, cap: int, pos: int, block: np.ndarray) -> int:
    """Write `block` ([n, C]) to logical rows pos..pos+n-1 of the mirrored ring; return pos+n."""
    _check_ring(ring, cap)
    n = block.shape[0]
    if block.ndim != 2 or block.shape[1] != ring.shape[1]:
        raise ValueError("block must be [n, C] with the ring's C")
    if n > cap:
        raise ValueError("block longer than the ring capacity")
    r0 = pos % cap
    m = min(n, cap - r0)
    if m:
        ring[r0:r0 + m] = block[:m]
        ring[r0 + cap:r0 + cap + m] = block[:m]
    if n > m:
        ring[0:n - m] = block[m:]
        ring[cap:cap + n - m] = block[m:]
    return int(pos) + n


def count_nonfinite(block: np.ndarray) -> int:
    """Number of NaN/+-Inf values in `block` (0 for integer dtypes)."""
    if block.dtype.kind != "f":
        return 0
    return int(block.size - np.count_nonzero(np.isfinite(block)))


def normalize_quantize(ring, cap, starts, W, mean, inv_std, scale, zero_point, out, row0) -> None:
    """Normalize and int8-quantize the windows at `starts` into out[row0:row0+k, 0]."""
    _check_ring(ring, cap)
    k = len(starts)
    C = ring.shape[1]
    if W < 1 or W > cap:
        raise ValueError("need 1 <= W <= cap")
    if out.ndim != 4 or out.shape[1] != 1 or out.shape[2] != W or out.shape[3] != C:
        raise ValueError("out must be [B, 1, W, C]")
    if row0 < 0 or row0 + k > out.shape[0]:
        raise ValueError("rows row0..row0+k out of range of out")
    if len(mean) != C or len(inv_std) != C:
        raise ValueError("mean and inv_std must have C entries")
    if not scale > 0:
        raise ValueError("scale must be > 0")
    if k == 0:
        return
    x = _windows(ring, cap, starts, W)
    x -= mean
    x *= inv_std
    x /= scale
    x += zero_point
    np.rint(x, out=x)
    np.clip(x, -128.0, 127.0, out=x)
    out[row0:row0 + k, 0] = x  # float64 -> int8; values are integral and in range


def recon_error(inp, in_scale, in_zp, outq, out_scale, out_zp, k, ch_err, scores) -> None:
    """Per-channel mean squared reconstruction error (dequantized units) and its channel mean."""
    if inp.ndim != 4 or inp.shape != outq.shape or inp.shape[1] != 1:
        raise ValueError("inp and outq must both be [B, 1, W, C]")
    B, _, W, C = inp.shape
    if k < 0 or k > B or ch_err.shape[0] < k or ch_err.shape[1] != C or scores.shape[0] < k:
        raise ValueError("k exceeds the batch, or ch_err/scores are too small")
    if k == 0:
        return
    a = inp[:k, 0].astype(np.float64)
    a -= in_zp
    a *= in_scale
    b = outq[:k, 0].astype(np.float64)
    b -= out_zp
    b *= out_scale
    a -= b
    a *= a
    ch_err[:k] = _seqsum(a, 1) / W
    scores[:k] = _seqsum(ch_err[:k].astype(np.float64), 1) / C


def window_stats(ring, cap, starts, W, out) -> None:
    """Per window and channel: mean, std, rms, peak, crest, kurtosis into out[:k] ([k, C, 6])."""
    _check_ring(ring, cap)
    k = len(starts)
    C = ring.shape[1]
    if W < 1 or W > cap:
        raise ValueError("need 1 <= W <= cap")
    if out.ndim != 3 or out.shape[0] < k or out.shape[1] != C or out.shape[2] != 6:
        raise ValueError("out must be [k, C, 6]")
    if k == 0:
        return
    x = _windows(ring, cap, starts, W)
    mean = _seqsum(x, 1) / W
    rms = np.sqrt(_seqsum(x * x, 1) / W)
    peak = np.abs(x).max(axis=1)
    x -= mean[:, None, :]
    x *= x
    m2 = _seqsum(x, 1) / W
    x *= x
    m4 = _seqsum(x, 1) / W
    crest = np.zeros_like(rms)
    np.divide(peak, rms, out=crest, where=rms != 0)
    kurt = np.zeros_like(m2)
    np.divide(m4, m2 * m2, out=kurt, where=m2 != 0)
    o = out[:k]
    o[..., 0] = mean
    o[..., 1] = np.sqrt(m2)
    o[..., 2] = rms
    o[..., 3] = peak
    o[..., 4] = crest
    o[..., 5] = kurt


def ingest(ring, cap, pos, next_start, block, W, H, mean, inv_std, scale, zero_point, out, stats,
           t_start, row0, max_rows, t_origin, dt):
    """numpy version of `_jit.ingest` (same contract), composed of the kernels above."""
    n = block.shape[0]
    used = 0
    pos, next_start = int(pos), int(next_start)
    if next_start + W > pos and n > 0:
        m = min(n, cap, next_start + cap - pos)
        pos = ring_append(ring, cap, pos, block[:m])
        used = m
    k = 0
    if next_start + W <= pos:
        k = min((pos - W - next_start) // H + 1, max_rows)
    if k > 0:
        if row0 < 0 or row0 + k > t_start.shape[0] or row0 + k > stats.shape[0]:
            raise ValueError("rows row0..row0+k out of range of t_start/stats")
        starts = next_start + H * np.arange(k, dtype=np.int64)
        t_start[row0:row0 + k] = t_origin + starts * dt
        normalize_quantize(ring, cap, starts, W, mean, inv_std, scale, zero_point, out, row0)
        window_stats(ring, cap, starts, W, stats[row0:row0 + k])
        next_start += k * H
    return pos, next_start, k, used
