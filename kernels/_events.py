"""Anomaly events of a batch encoded in one compiled call.

A fault on many sensors flags whole batches, and building each event as a Python dict and
msgpack-packing it cost more than scoring the window. `encode_anomalies` writes every flagged
window's payload straight into one byte buffer, as msgpack: the constant parts (keys, model,
backend, channel names, sensor names) are pre-encoded by the caller and copied, the numbers
are written as msgpack int64 / float64, which decode to exactly the Python values
`edgert.events.anomaly` holds (tests/test_batch_path.py decodes both and compares).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _put(out, p, src, a, z):
    """Copy src[a:z] to out[p:]; return the new p."""
    for j in range(a, z):
        out[p] = src[j]
        p += 1
    return p


@njit(cache=True, nogil=True)
def _u64(out, p, v):
    for j in range(8):
        out[p + j] = np.uint8((v >> np.uint64(56 - 8 * j)) & np.uint64(0xFF))
    return p + 8


@njit(cache=True, nogil=True)
def _i64(out, p, v):
    out[p] = 0xD3
    return _u64(out, p + 1, np.uint64(v))  # two's complement bits, big-endian


@njit(cache=True, nogil=True)
def _f64(out, p, x, fb, ub):
    """x as msgpack float64; fb/ub: a float64[1] scratch and its uint64 view (the bit cast)."""
    out[p] = 0xCB
    fb[0] = x
    return _u64(out, p + 1, ub[0])


@njit(cache=True, nogil=True)
def encode_anomalies(idx, sidx, t_start, seq, stats, scores, thr, shares, ch_err, lat_us, qd_us,
                     top, k, span, dt, name_buf, name_a, name_z, chan_buf, chan_off, keys, key_off,
                     const_buf, const_off, out, out_off):
    """Write the msgpack payload of an ``anomaly`` event for every row in `idx`.

    Args:
      idx: flagged rows of the batch; sidx, t_start, seq, stats, scores, thr, ch_err, lat_us,
        qd_us: the batch's per-row arrays; shares: [len(idx), C] attribution; top: [len(idx),
        <=3] channel indices, largest share first; k: the batch size; span: window - 1.
      dt: sample period (ns) per sensor slot.
      name_buf, name_a, name_z: msgpack-encoded sensor names; slot s's is name_buf[name_a[s]:
        name_z[s]] (only the batch's slots need be set).
      chan_buf, chan_off: msgpack-encoded channel names.
      keys, key_off: the 17 msgpack-encoded keys in payload order, then the 6 statistic names.
      const_buf, const_off: msgpack-encoded values of "channels", "model", "backend", "v".
      out: byte buffer, large enough (the caller sizes it from C); out_off: int64[len(idx)+1].
    Returns:
      bytes written.
    """
    C = stats.shape[1]
    fb = np.empty(1, np.float64)
    ub = fb.view(np.uint64)
    p = 0
    for j in range(idx.shape[0]):
        r = idx[j]
        s = sidx[r]
        out_off[j] = p
        out[p] = 0xDE  # map 16: 17 entries
        out[p + 1] = 0
        out[p + 2] = 17
        p += 3
        kk = 0
        # v
        p = _put(out, p, keys, key_off[kk], key_off[kk + 1])
        kk += 1
        p = _put(out, p, const_buf, const_off[3], const_off[4])
        # sensor
        p = _put(out, p, keys, key_off[kk], key_off[kk + 1])
        kk += 1
        p = _put(out, p, name_buf, name_a[s], name_z[s])
        # t_start, t_end
        p = _put(out, p, keys, key_off[kk], key_off[kk + 1])
        kk += 1
        p = _i64(out, p, t_start[r])
        p = _put(out, p, keys, key_off[kk], key_off[kk + 1])
        kk += 1
        p = _i64(out, p, t_start[r] + span * dt[s])
        # score, threshold
        p = _put(out, p, keys, key_off[kk], key_off[kk + 1])
        kk += 1
        p = _f64(out, p, np.float64(scores[r]), fb, ub)
        p = _put(out, p, keys, key_off[kk], key_off[kk + 1])
        kk += 1
        p = _f64(out, p, np.float64(thr[r]), fb, ub)
        # channels
        p = _put(out, p, keys, key_off[kk], key_off[kk + 1])
        kk += 1
        p = _put(out, p, const_buf, const_off[0], const_off[1])
        # contributions, channel_error
        p = _put(out, p, keys, key_off[kk], key_off[kk + 1])
        kk += 1
        out[p] = 0x90 + C
        p += 1
        for c in range(C):
            p = _f64(out, p, np.float64(shares[j, c]), fb, ub)
        p = _put(out, p, keys, key_off[kk], key_off[kk + 1])
        kk += 1
        out[p] = 0x90 + C
        p += 1
        for c in range(C):
            p = _f64(out, p, np.float64(ch_err[r, c]), fb, ub)
        # top_channels
        p = _put(out, p, keys, key_off[kk], key_off[kk + 1])
        kk += 1
        nt = top.shape[1]
        out[p] = 0x90 + nt
        p += 1
        for t in range(nt):
            ci = top[j, t]
            p = _put(out, p, chan_buf, chan_off[ci], chan_off[ci + 1])
        # stats: {name: [per channel]}
        p = _put(out, p, keys, key_off[kk], key_off[kk + 1])
        kk += 1
        out[p] = 0x80 + 6
        p += 1
        for q in range(6):
            p = _put(out, p, keys, key_off[17 + q], key_off[18 + q])
            out[p] = 0x90 + C
            p += 1
            for c in range(C):
                p = _f64(out, p, np.float64(stats[r, c, q]), fb, ub)
        # model, backend
        p = _put(out, p, keys, key_off[kk], key_off[kk + 1])
        kk += 1
        p = _put(out, p, const_buf, const_off[1], const_off[2])
        p = _put(out, p, keys, key_off[kk], key_off[kk + 1])
        kk += 1
        p = _put(out, p, const_buf, const_off[2], const_off[3])
        # seq, latency_us, queue_delay_us (nil when the sensor clock is ahead), batch
        p = _put(out, p, keys, key_off[kk], key_off[kk + 1])
        kk += 1
        p = _i64(out, p, seq[r])
        p = _put(out, p, keys, key_off[kk], key_off[kk + 1])
        kk += 1
        p = _f64(out, p, lat_us[r], fb, ub)
        p = _put(out, p, keys, key_off[kk], key_off[kk + 1])
        kk += 1
        if qd_us[r] >= 0:
            p = _f64(out, p, qd_us[r], fb, ub)
        else:
            out[p] = 0xC0
            p += 1
        p = _put(out, p, keys, key_off[kk], key_off[kk + 1])
        kk += 1
        p = _i64(out, p, k)
    out_off[idx.shape[0]] = p
    return p
