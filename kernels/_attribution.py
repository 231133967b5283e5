"""Phasor attribution of flagged windows in one compiled pass (numba only).

`edgert.scoring.PhasorAttribution.shares` in numpy takes a dozen small array operations per
batch (dequantize, a stacked matmul, complex alignment); in an anomaly storm, when every window
is flagged, that cost more than packing the events. `phasor_shares` does the same arithmetic
per window in one loop. Its sums run in window order where numpy's matmul uses BLAS blocking, so
results agree to float rounding, not bit for bit (tests/test_scoring.py holds them within
1e-6 on the shares, and the channel named the same).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def phasor_shares(inp, rows, in_zp, in_scale, basis, normal, spread, turn, fallback, out):
    """Each channel's share of the positive attribution scores of windows ``rows`` of `inp`.

    Args:
      inp: the batch's quantized input ``[B, 1, W, C]`` (int8/uint8).
      rows: int64 rows to explain; in_zp, in_scale: the input quantization.
      basis: float64 ``[2, W]`` (`edgert.scoring.phasor_basis`).
      normal: complex128 ``[C]`` normal phasors; spread: float64 ``[C]``; turn: e^{-j theta}.
      fallback: float32 ``[m, C]`` shares for a window with no positive score.
      out: float32 ``[m, C]``.
    """
    W = inp.shape[2]
    C = inp.shape[3]
    zp = np.float64(in_zp)
    sc = np.float64(in_scale)
    p = np.empty(C, np.complex128)
    sv = np.empty(C)
    for j in range(rows.shape[0]):
        r = rows[j]
        acc = 0j
        for c in range(C):
            a = 0.0
            b = 0.0
            for w in range(W):
                x = (np.float64(inp[r, 0, w, c]) - zp) * sc
                a += basis[0, w] * x
                b += basis[1, w] * x
            p[c] = complex(a, -b)
            acc += p[c] / normal[c]
        mag = abs(acc)
        rot = acc.conjugate() / mag if mag > 0 else 1.0 + 0j
        tot = 0.0
        for c in range(C):
            d = (p[c] * rot - normal[c]) / normal[c] / spread[c]
            s = (d * turn).real
            sv[c] = s if s > 0.0 else 0.0
            tot += sv[c]
        for c in range(C):
            out[j, c] = np.float32(sv[c] / tot) if tot > 0 else fallback[j, c]
    return out
