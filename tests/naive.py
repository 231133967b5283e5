"""Slow, obvious loop versions of the kernels (docs/design.md, "Kernels"), for tests only.

Written straight from the contract with Python floats (IEEE float64) and explicit loops, so a
reader can check them against the table line by line. Means are sequential sums in increasing
index order divided by the count, the order the numba and numpy kernels use too. Squares are
written as products (x * x): ``**`` goes through libm pow, which need not round like a product.
"""

from __future__ import annotations

import math

import numpy as np


def _f64(x) -> float:
    return float(x)


def _rint(v: float) -> float:
    """Round half to even (Python's round on floats); non-finite values pass through."""
    if math.isfinite(v):
        return float(round(v))
    return v


def ring_append(ring, cap, pos, block):
    n, C = block.shape
    assert n <= cap and ring.shape == (2 * cap, C)
    for i in range(n):
        row = (pos + i) % cap
        for c in range(C):
            v = np.float32(block[i, c])
            ring[row, c] = v
            ring[row + cap, c] = v
    return pos + n


def count_nonfinite(block):
    if block.dtype.kind != "f":
        return 0
    cnt = 0
    for i in range(block.shape[0]):
        for c in range(block.shape[1]):
            if not math.isfinite(_f64(block[i, c])):
                cnt += 1
    return cnt


def normalize_quantize(ring, cap, starts, W, mean, inv_std, scale, zero_point, out, row0):
    C = ring.shape[1]
    for j in range(len(starts)):
        s = int(starts[j]) % cap
        for w in range(W):
            for c in range(C):
                x = _f64(ring[s + w, c])
                v = (x - _f64(mean[c])) * _f64(inv_std[c]) / _f64(scale) + _f64(zero_point)
                q = min(max(_rint(v), -128.0), 127.0)
                out[row0 + j, 0, w, c] = int(q)


def recon_error(inp, in_scale, in_zp, outq, out_scale, out_zp, k, ch_err, scores):
    W, C = inp.shape[2], inp.shape[3]
    for j in range(k):
        for c in range(C):
            acc = 0.0
            for w in range(W):
                a = (_f64(inp[j, 0, w, c]) - _f64(in_zp)) * _f64(in_scale)
                b = (_f64(outq[j, 0, w, c]) - _f64(out_zp)) * _f64(out_scale)
                acc += (a - b) * (a - b)
            ch_err[j, c] = np.float32(acc / W)
        tot = 0.0
        for c in range(C):
            tot += _f64(ch_err[j, c])
        scores[j] = np.float32(tot / C)


def window_stats(ring, cap, starts, W, out):
    C = ring.shape[1]
    for j in range(len(starts)):
        s = int(starts[j]) % cap
        for c in range(C):
            xs = [_f64(ring[s + w, c]) for w in range(W)]
            total = -0.0  # so that a window of -0.0 has mean -0.0 (as a running sum from x[0])
            for x in xs:
                total += x
            mean = total / W
            m2 = 0.0
            m4 = 0.0
            sq = 0.0
            peak = 0.0
            for x in xs:
                d2 = (x - mean) * (x - mean)
                m2 += d2
                m4 += d2 * d2
                sq += x * x
                peak = max(peak, abs(x))
            m2 /= W
            m4 /= W
            rms = math.sqrt(sq / W)
            out[j, c, 0] = np.float32(mean)
            out[j, c, 1] = np.float32(math.sqrt(m2))
            out[j, c, 2] = np.float32(rms)
            out[j, c, 3] = np.float32(peak)
            out[j, c, 4] = np.float32(peak / rms) if rms != 0 else 0.0
            out[j, c, 5] = np.float32(m4 / (m2 * m2)) if m2 != 0 else 0.0


def ingest(ring, cap, pos, next_start, block, W, H, mean, inv_std, scale, zero_point, out, stats,
           t_start, row0, max_rows, t_origin, dt):
    """Obvious version of the fused step: append a safe chunk, then cut windows one by one."""
    used = 0
    if next_start + W > pos and block.shape[0] > 0:
        m = min(block.shape[0], cap, next_start + cap - pos)
        pos = ring_append(ring, cap, pos, block[:m])
        used = m
    k = 0
    while next_start + W <= pos and k < max_rows:
        s = np.array([next_start], dtype=np.int64)
        normalize_quantize(ring, cap, s, W, mean, inv_std, scale, zero_point, out, row0 + k)
        window_stats(ring, cap, s, W, stats[row0 + k:row0 + k + 1])
        t_start[row0 + k] = t_origin + next_start * dt
        next_start += H
        k += 1
    return pos, next_start, k, used


def baseline_features(x, W, starts, mean, std, phases, tail=None):
    """Obvious version of ``edgert.evaluate.baseline.window_features``: per window, per channel
    level (mean), rms and spread (std, ddof 0) of ``(x - mean) / std`` over the window's newest
    ``tail`` rows, then (phases) each channel's rms over the channels' mean rms, minus 1."""
    t = W if tail is None else tail
    C = len(x[0])
    rows = []
    for s in starts:
        feats, rmss = [], []
        for c in range(C):
            vals = [(float(x[s + w][c]) - float(mean[c])) / float(std[c]) for w in range(W - t, W)]
            lvl = sum(vals) / t
            rms = math.sqrt(sum(v * v for v in vals) / t)
            spread = math.sqrt(sum((v - lvl) * (v - lvl) for v in vals) / t)
            feats += [lvl, rms, spread]
            rmss.append(rms)
        if phases:
            m = sum(rmss) / C
            feats += [r / m - 1.0 for r in rmss]
        rows.append(feats)
    return np.array(rows, dtype=np.float64).reshape(len(starts), -1)
