"""Numba kernels (see docs/design.md, "Kernels"); bit-identical to `ref.py`.

float64 arithmetic is written in exactly the operation order of the contract (numba does not
contract a*b+c into an FMA nor reassociate without fastmath, which is not used here), and
every mean is a sequential sum in increasing index order divided by the count. Shapes are
validated once per call, before any memory is touched: these loops run without bounds checks.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["ring_append", "count_nonfinite", "normalize_quantize", "recon_error", "window_stats",
           "ingest"]


@njit(cache=True, nogil=True)
def _copy_twice(dst, o1, o2, src, i0, n):
    """dst[o1:o1+n] = dst[o2:o2+n] = float32(src[i0:i0+n]) on flat arrays."""
    # Index views with the loop counter only: LLVM then sees the index is >= 0, drops
    # numba's negative-index wraparound and vectorizes the loop.
    d1 = dst[o1:o1 + n]
    d2 = dst[o2:o2 + n]
    s = src[i0:i0 + n]
    for t in range(n):
        v = np.float32(s[t])
        d1[t] = v
        d2[t] = v


@njit(cache=True, nogil=True)
def ring_append(ring, cap, pos, block):
    n = block.shape[0]
    C = ring.shape[1]
    if cap < 1 or ring.shape[0] != 2 * cap:
        raise ValueError("ring must be [2*cap, C] with cap >= 1")
    if block.shape[1] != C:
        raise ValueError("block must be [n, C] with the ring's C")
    if n > cap:
        raise ValueError("block longer than the ring capacity")
    rf = ring.reshape(ring.size)  # a view; the ring must be C-contiguous
    bf = block.ravel()  # a view for a C-contiguous block (a copy otherwise)
    r0 = pos % cap
    m = min(n, cap - r0)
    # rows r0..r0+m-1 and their mirrors, then the part that wrapped to rows 0..n-m-1
    _copy_twice(rf, r0 * C, (r0 + cap) * C, bf, 0, m * C)
    _copy_twice(rf, 0, cap * C, bf, m * C, (n - m) * C)
    return pos + n


@njit(cache=True, nogil=True)
def count_nonfinite(block):
    # math.isfinite is constant True for integer dtypes, so the loop folds away for them.
    # Counting in uint32 (chunks well below 2**32) lets the loop use 8 lanes, not 4.
    b = block.ravel()
    n = b.size
    cnt = 0
    for i0 in range(0, n, 1 << 30):
        part = b[i0:min(n, i0 + (1 << 30))]
        c32 = np.uint32(0)
        for i in range(part.size):
            c32 = np.uint32(c32 + np.uint32(not math.isfinite(part[i])))
        cnt += c32
    return cnt


@njit(cache=True, nogil=True)
def normalize_quantize(ring, cap, starts, W, mean, inv_std, scale, zero_point, out, row0):
    k = starts.shape[0]
    C = ring.shape[1]
    if cap < 1 or ring.shape[0] != 2 * cap:
        raise ValueError("ring must be [2*cap, C] with cap >= 1")
    if W < 1 or W > cap:
        raise ValueError("need 1 <= W <= cap")
    if out.shape[1] != 1 or out.shape[2] != W or out.shape[3] != C:
        raise ValueError("out must be [B, 1, W, C]")
    if row0 < 0 or row0 + k > out.shape[0]:
        raise ValueError("rows row0..row0+k out of range of out")
    if mean.shape[0] != C or inv_std.shape[0] != C:
        raise ValueError("mean and inv_std must have C entries")
    sc = np.float64(scale)
    zp = np.float64(zero_point)
    if not sc > 0.0:
        raise ValueError("scale must be > 0")
    n = W * C
    # mean/inv_std tiled over a window so the inner loop runs flat over w*C+c
    mt = np.empty(n)
    it = np.empty(n)
    for w in range(W):
        for c in range(C):
            mt[w * C + c] = mean[c]
            it[w * C + c] = inv_std[c]
    rf = ring.ravel()
    of = out.reshape(out.size)  # a view; out must be C-contiguous
    for j in range(k):
        src = (starts[j] % cap) * C
        dst = (row0 + j) * n
        x = rf[src:src + n]  # views indexed by the loop counter only (see _copy_twice)
        q = of[dst:dst + n]
        for t in range(n):
            v = np.rint((np.float64(x[t]) - mt[t]) * it[t] / sc + zp)
            if v < -128.0:
                v = -128.0
            elif v > 127.0:
                v = 127.0
            q[t] = np.int8(v)


@njit(cache=True, nogil=True)
def _sq_err(a, izp, isc, b, ozp, osc, sq):
    """sq[t] = (((a[t]-izp)*isc) - ((b[t]-ozp)*osc))**2 on flat views (vectorizes)."""
    for t in range(sq.shape[0]):
        d = (np.float64(a[t]) - izp) * isc - (np.float64(b[t]) - ozp) * osc
        sq[t] = d * d


@njit(cache=True, nogil=True)
def _mean_w4(sq, n, W, C, c):
    """Means over w of channel c of 4 consecutive [W, C] windows in flat `sq`; the 4 running
    sums are independent chains, so the adds overlap instead of waiting on each other."""
    s0 = sq[0:n]
    s1 = sq[n:2 * n]
    s2 = sq[2 * n:3 * n]
    s3 = sq[3 * n:4 * n]
    a0 = 0.0
    a1 = 0.0
    a2 = 0.0
    a3 = 0.0
    for w in range(W):
        i = w * C + c
        a0 += s0[i]
        a1 += s1[i]
        a2 += s2[i]
        a3 += s3[i]
    return a0 / W, a1 / W, a2 / W, a3 / W


@njit(cache=True, nogil=True)
def recon_error(inp, in_scale, in_zp, outq, out_scale, out_zp, k, ch_err, scores):
    B = inp.shape[0]
    W = inp.shape[2]
    C = inp.shape[3]
    if (inp.shape[1] != 1 or outq.shape[0] != B or outq.shape[1] != 1 or outq.shape[2] != W
            or outq.shape[3] != C):
        raise ValueError("inp and outq must both be [B, 1, W, C]")
    if k < 0 or k > B or ch_err.shape[0] < k or ch_err.shape[1] != C or scores.shape[0] < k:
        raise ValueError("k exceeds the batch, or ch_err/scores are too small")
    isc = np.float64(in_scale)
    izp = np.float64(in_zp)
    osc = np.float64(out_scale)
    ozp = np.float64(out_zp)
    n = W * C
    fi = inp.ravel()
    fo = outq.ravel()
    sq = np.empty(4 * n)
    for j0 in range(0, k, 4):
        m = min(4, k - j0)
        # squared errors of up to 4 windows, flat; then their sums over w, in w order
        _sq_err(fi[j0 * n:(j0 + m) * n], izp, isc, fo[j0 * n:(j0 + m) * n], ozp, osc,
                sq[:m * n])
        if m == 4:
            for c in range(C):
                e0, e1, e2, e3 = _mean_w4(sq, n, W, C, c)
                ch_err[j0, c] = e0
                ch_err[j0 + 1, c] = e1
                ch_err[j0 + 2, c] = e2
                ch_err[j0 + 3, c] = e3
        else:
            for jj in range(m):
                x = sq[jj * n:(jj + 1) * n]
                for c in range(C):
                    acc = 0.0
                    for w in range(W):
                        acc += x[w * C + c]
                    ch_err[j0 + jj, c] = acc / W
        for j in range(j0, j0 + m):
            tot = 0.0
            for c in range(C):
                tot += np.float64(ch_err[j, c])  # the stored float32 values
            scores[j] = tot / C


@njit(cache=True, nogil=True)
def window_stats(ring, cap, starts, W, out):
    k = starts.shape[0]
    C = ring.shape[1]
    if cap < 1 or ring.shape[0] != 2 * cap:
        raise ValueError("ring must be [2*cap, C] with cap >= 1")
    if W < 1 or W > cap:
        raise ValueError("need 1 <= W <= cap")
    if out.shape[0] < k or out.shape[1] != C or out.shape[2] != 6:
        raise ValueError("out must be [k, C, 6]")
    for j in range(k):
        s = starts[j] % cap
        x = ring[s:s + W]  # a view indexed by loop counters only (see _copy_twice)
        for c in range(C):
            s1 = -0.0  # -0.0 + x == x exactly: the sum of all -0.0 stays -0.0, like numpy's
            s2 = 0.0
            pk = 0.0
            for w in range(W):
                v = np.float64(x[w, c])
                s1 += v
                s2 += v * v
                a = abs(v)
                if a > pk:
                    pk = a
            mean = s1 / W
            m2 = 0.0
            m4 = 0.0
            for w in range(W):
                d = np.float64(x[w, c]) - mean
                d2 = d * d
                m2 += d2
                m4 += d2 * d2
            m2 = m2 / W
            m4 = m4 / W
            rms = math.sqrt(s2 / W)
            out[j, c, 0] = mean
            out[j, c, 1] = math.sqrt(m2)
            out[j, c, 2] = rms
            out[j, c, 3] = pk
            out[j, c, 4] = pk / rms if rms != 0.0 else 0.0
            out[j, c, 5] = m4 / (m2 * m2) if m2 != 0.0 else 0.0


@njit(cache=True, nogil=True)
def ingest(ring, cap, pos, next_start, block, W, H, mean, inv_std, scale, zero_point, out, stats,
           t_start, row0, max_rows, t_origin, dt):
    """One step of a sensor's stream: append a chunk of `block` to the ring (only when no
    completed window is waiting), then cut up to `max_rows` completed windows into rows
    row0.. of `out` (normalize+quantize), `stats` (window_stats) and `t_start` (ns).

    The chunk is at most what the ring holds without overwriting the first window still to be
    cut, and appending comes before cutting, so every window cut by a call is intact in the
    ring when it returns. Returns (pos, next_start, rows_cut, samples_used).
    """
    n = block.shape[0]
    used = 0
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
        starts = np.empty(k, dtype=np.int64)
        for j in range(k):
            starts[j] = next_start + j * H
            t_start[row0 + j] = t_origin + starts[j] * dt
        normalize_quantize(ring, cap, starts, W, mean, inv_std, scale, zero_point, out, row0)
        window_stats(ring, cap, starts, W, stats[row0:row0 + k])
        next_start += k * H
    return pos, next_start, k, used
