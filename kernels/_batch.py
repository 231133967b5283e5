"""The per-message path over a batch of messages, compiled: header parse, validation, stream
check, ring append, window cut and quantization for every message of one receive wake-up in
one call (`ingest_messages`), instead of a dozen Python calls per message.

It accepts only the common case and says so: a message it cannot prove well formed and in
sequence by the same rules as `edgert.wire.decode` and `edgert.windows.SensorStream.check`
(every drop, every note, a first block, a gap, a contradiction, an unusual encoding) stops
the call with `SLOW`, and the caller hands that message to the per-message Python path, which
gives the reason. The fast path's conditions are a subset of the Python path's accept
conditions (its int-with-float comparisons done exactly, as Python does them), so both
paths cut the same windows with the same numbers (tests/test_batch_path.py holds them equal).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._jit import count_nonfinite, normalize_quantize, ring_append, window_stats

DONE, FULL, SLOW, DEADLINE = 0, 1, 2, 3

INT64_MAX = (1 << 63) - 1
MAX_DT_NS = 86_400 * 10**9
MAX_SAMPLES = 1 << 20
MAX_CHANNELS = 256


@njit(cache=True, nogil=True)
def _be(b, p, m):
    """Big-endian unsigned integer of m bytes at b[p:]."""
    v = np.uint64(0)
    for j in range(m):
        v = (v << np.uint64(8)) | np.uint64(b[p + j])
    return v


@njit(cache=True, nogil=True)
def _int(b, p, end):
    """A msgpack integer at b[p] as int64 → (ok, value, next p). ok is False for anything else
    (or a uint64 beyond int64)."""
    if p >= end:
        return False, 0, p
    t = b[p]
    if t <= 0x7F:
        return True, np.int64(t), p + 1
    if t >= 0xE0:
        return True, np.int64(t) - 256, p + 1
    if 0xCC <= t <= 0xCF:
        m = 1 << (t - 0xCC)
        if p + 1 + m > end:
            return False, 0, p
        v = _be(b, p + 1, m)
        if v > np.uint64(INT64_MAX):
            return False, 0, p
        return True, np.int64(v), p + 1 + m
    if 0xD0 <= t <= 0xD3:
        m = 1 << (t - 0xD0)
        if p + 1 + m > end:
            return False, 0, p
        v = _be(b, p + 1, m)
        bits = 8 * m
        if bits < 64 and v >= (np.uint64(1) << np.uint64(bits - 1)):
            return True, np.int64(v) - np.int64(1 << bits), p + 1 + m
        return True, np.int64(v), p + 1 + m  # int64: the bits are the value
    return False, 0, p


@njit(cache=True, nogil=True)
def parse_header(b, p, end):
    """A header written as edgert.wire.encode_header does (a map of exactly v, seq, t0, dt,
    dtype "f4" and shape [n, c], keys in any order, integers in any msgpack width).

    Returns (ok, seq, t0, dt, n, c); ok is False for anything else, which the Python path then
    decodes (and accepts or drops with its reason).
    """
    bad = (False, 0, 0, 0, 0, 0)
    if p >= end or b[p] != 0x86:
        return bad
    p += 1
    seen = 0
    v = seq = t0 = dt = n = c = 0
    for _ in range(6):
        if p >= end:
            return bad
        kl = b[p] - 0xA0
        if kl < 1 or kl > 5 or p + 1 + kl > end:
            return bad
        k0 = b[p + 1]
        k1 = b[p + 2] if kl > 1 else 0
        p += 1 + kl
        if kl == 1 and k0 == 118:  # "v"
            ok, v, p = _int(b, p, end)
            bit = 1
        elif kl == 3 and k0 == 115 and k1 == 101 and b[p - 1] == 113:  # "seq"
            ok, seq, p = _int(b, p, end)
            bit = 2
        elif kl == 2 and k0 == 116 and k1 == 48:  # "t0"
            ok, t0, p = _int(b, p, end)
            bit = 4
        elif kl == 2 and k0 == 100 and k1 == 116:  # "dt"
            ok, dt, p = _int(b, p, end)
            bit = 8
        elif kl == 5 and k0 == 100 and k1 == 116 and b[p - 3] == 121 and b[p - 2] == 112 and b[p - 1] == 101:
            # "dtype": only "f4" is taken here
            ok = p + 3 <= end and b[p] == 0xA2 and b[p + 1] == 102 and b[p + 2] == 52
            p += 3
            bit = 16
        elif kl == 5 and k0 == 115 and k1 == 104 and b[p - 3] == 97 and b[p - 2] == 112 and b[p - 1] == 101:
            # "shape": [n, c]
            ok = p < end and b[p] == 0x92
            p += 1
            if ok:
                ok, n, p = _int(b, p, end)
            if ok:
                ok, c, p = _int(b, p, end)
            bit = 32
        else:
            return bad
        if not ok or (seen & bit):
            return bad
        seen |= bit
    if seen != 63 or p != end or v != 1:
        return bad
    if not (0 <= seq and 0 < dt <= MAX_DT_NS and 1 <= n <= MAX_SAMPLES and 1 <= c <= MAX_CHANNELS):
        return bad
    if np.float64(n) * np.float64(dt) > 9.0e18 or t0 > INT64_MAX - n * dt:
        return bad
    return True, seq, t0, dt, n, c


TWO63 = 9.223372036854775808e18


@njit(cache=True, nogil=True)
def _not_below(t, x):
    """Python's ``not (t < x)`` for an int64 t and a float x, exactly (numba would round t)."""
    if x < -TWO63:
        return True
    if x >= TWO63:
        return False
    return t >= np.int64(math.ceil(x))


@njit(cache=True, nogil=True)
def _not_above(t, y):
    """Python's ``not (t > y)`` for an int64 t and a float y, exactly."""
    if y >= TWO63:
        return True
    if y < -TWO63:
        return False
    return t <= np.int64(math.floor(y))


@njit(cache=True, nogil=True)
def _within(a, b, tol):
    """|a - b| <= tol for int64 a, b without overflow (tol >= 0)."""
    if abs(np.float64(a) - np.float64(b)) > 4.0e18:
        return False
    return abs(a - b) <= tol


@njit(cache=True, nogil=True)
def ingest_messages(hbuf, hoff, pbuf, poff, slot, t_recv, i0, used0,
                    C, max_block, now_wall, skew_ns, gap_samples,
                    pos_a, next_a, last_seq_a, t_origin_a, dt_a, fast_a, drop_min_a, msgs_a, samples_a, last_seen_a,
                    rings, cap, W, H, mean, inv_std, scale, zero_point,
                    out, stats, t_start, b_sensor, b_seq, b_trecv, b_tlast, row0, max_rows, max_delay_ns):
    """Ingest messages i0.. of a wake-up until they are done, the batch is full, one needs the
    Python path, or the pending batch is due.

    Args:
      hbuf, hoff: the headers concatenated (uint8) and their offsets (int64[M+1]).
      pbuf, poff: the payloads concatenated (uint8, each a multiple of 4 bytes) and offsets.
      slot: int64[M] the sender's slot in the sensor table (-1: unknown, or the message must go
        the Python way, e.g. not 3 frames).
      t_recv: int64[M] receipt times (perf ns).
      i0, used0: where to resume (message, samples of it already appended after a FULL).
      C, max_block: the model's channels; max_block_samples.
      now_wall, skew_ns: the daemon's wall clock (ns) and the clock tolerance in whole ns (-1: off).
      gap_samples: the time-gap tolerance in sample periods.
      pos_a … last_seen_a: the sensor table's per-slot state (`edgert.windows.StreamTable`;
        drop_min_a: the smallest seq ahead that was received and dropped).
      rings: [slots, 2*cap, C] float32; W, H: window and hop.
      mean, inv_std: [rows, C] float64 normalization; row = slot when rows > 1, else row 0.
      scale, zero_point: input quantization.
      out, stats, t_start, b_sensor, b_seq, b_trecv, b_tlast: the batcher's input tensor and
        per-row arrays; row0: rows already pending; max_rows: rows per batch.
      max_delay_ns: a pending batch whose first row's message came this long before the
        current message's receipt is due (the daemon's per-message deadline check).
    Returns:
      (i, used, rows, status): resume point (message i, samples of it used), rows now pending,
      and DONE | FULL | SLOW (message i needs the Python path) | DEADLINE.
    """
    M = slot.shape[0]
    rows = row0
    per_slot = mean.shape[0] > 1
    i = i0
    used = used0
    while i < M:
        s = slot[i]
        if s < 0:
            return i, 0, rows, SLOW
        ok, seq, t0, dt, n, c = parse_header(hbuf, hoff[i], hoff[i + 1])
        if not ok or c != C or n > max_block or poff[i + 1] - poff[i] != n * c * 4:
            return i, 0, rows, SLOW
        samples = pbuf[poff[i]:poff[i + 1]].view(np.float32).reshape(n, c)
        if used == 0:
            if count_nonfinite(samples) != 0:
                return i, 0, rows, SLOW
            if skew_ns >= 0 and not _within(t0, now_wall, skew_ns):
                return i, 0, rows, SLOW
            # SensorStream.check's plain case: next seq, same dt, t0 where the last block ended.
            # (a block dropped earlier with a seq at or before this one changes the loss count)
            if (not fast_a[s] or last_seq_a[s] < 0 or seq != last_seq_a[s] + 1 or dt != dt_a[s]
                    or seq >= drop_min_a[s]):
                return i, 0, rows, SLOW
            # the same float expressions as SensorStream.check, compared exactly as Python does
            expected = np.float64(t_origin_a[s] + pos_a[s] * dt)
            tol = gap_samples * np.float64(dt)
            if not (_not_below(t0, expected - tol) and _not_above(t0, expected + tol)):
                return i, 0, rows, SLOW
            last_seq_a[s] = seq
            last_seen_a[s] = t_recv[i]
        ring = rings[s]
        mrow = s if per_slot else 0
        m_mean = mean[mrow]
        m_inv = inv_std[mrow]
        t_last = t0 + (n - 1) * dt
        origin = t_origin_a[s]
        # windows.push_block, in place
        while True:
            pos = pos_a[s]
            first = next_a[s]
            if first + W > pos and used < n:
                m = min(n - used, cap, first + cap - pos)
                pos = ring_append(ring, cap, pos, samples[used:used + m])
                used += m
                pos_a[s] = pos
            k = 0
            if first + W <= pos:
                k = min((pos - W - first) // H + 1, max_rows - rows)
            if k > 0:
                starts = np.empty(k, dtype=np.int64)
                for j in range(k):
                    starts[j] = first + j * H
                    r = rows + j
                    t_start[r] = origin + starts[j] * dt
                    b_sensor[r] = s
                    b_seq[r] = seq
                    b_trecv[r] = t_recv[i]
                    b_tlast[r] = t_last
                normalize_quantize(ring, cap, starts, W, m_mean, m_inv, scale, zero_point, out, rows)
                window_stats(ring, cap, starts, W, stats[rows:rows + k])
                next_a[s] = first + k * H
                rows += k
            done = used >= n and next_a[s] + W > pos_a[s]
            if done:
                msgs_a[s] += 1
                samples_a[s] += n
            if rows >= max_rows:
                if done:
                    return i + 1, 0, rows, FULL
                return i, used, rows, FULL
            if done:
                break
        i += 1
        used = 0
        if rows > 0 and t_recv[i - 1] >= b_trecv[0] + max_delay_ns:
            return i, 0, rows, DEADLINE
    return i, 0, rows, DONE


@njit(cache=True, nogil=True)
def _hist_add(edges, counts, x):
    """`edgert.stats.LatencyHistogram.add` for one value: bin searchsorted(edges, x, 'right') - 1,
    clipped to the histogram's range."""
    i = np.searchsorted(edges, x, side="right") - 1
    n = counts.shape[0] - 1
    if i < 0:
        i = 0
    elif i > n:
        i = n
    counts[i] += 1


@njit(cache=True, nogil=True)
def book_batch(scores, thr, sidx, t_recv, t_last, stats, k, t_dec, wall_offset, flags, lat_us,
               qd_us, win_counts, anom_counts, lat_edges, lat_counts, qd_edges, qd_counts,
               drift_acc, drift_on):
    """The bookkeeping of one scored batch in one pass (what took a dozen numpy calls):
    flags (score > threshold), receipt → decision latency and queueing delay (µs) into their
    histograms, windows and anomalies per sensor slot, and the drift sums (score and each
    channel's RMS, `stats[..., 2]`) when `drift_on`.

    Returns (anomalies, max latency µs, max sane queue delay µs or -1, sane queue delays,
    queue delays with the sensor clock ahead of ours, sum of latencies µs, sum of sane queue
    delays µs).
    """
    n_anom = 0
    lat_sum = 0.0
    qd_sum = 0.0
    lat_max = -1.0
    qd_max = -1.0
    sane = 0
    C = stats.shape[1]
    for j in range(k):
        s = sidx[j]
        f = scores[j] > thr[j]
        flags[j] = f
        lat = (t_dec - t_recv[j]) * 1e-3
        lat_us[j] = lat
        _hist_add(lat_edges, lat_counts, lat)
        lat_sum += lat
        if lat > lat_max:
            lat_max = lat
        qd = (t_recv[j] + wall_offset - t_last[j]) * 1e-3
        qd_us[j] = qd
        if qd >= 0:
            _hist_add(qd_edges, qd_counts, qd)
            qd_sum += qd
            sane += 1
            if qd > qd_max:
                qd_max = qd
        win_counts[s] += 1
        if f:
            anom_counts[s] += 1
            n_anom += 1
        if drift_on:
            drift_acc[s, 0] += scores[j]
            for c in range(C):
                drift_acc[s, 1 + c] += np.float64(stats[j, c, 2])
    return n_anom, lat_max, qd_max, sane, k - sane, lat_sum, qd_sum
