"""The compiled per-message path (`Pipeline.handle_many`, `edgert.kernels.ingest_messages`)
against the per-message Python path it replaces (`Pipeline.handle` + the daemon's deadline
check, one message at a time): the same windows, decisions, drops, notes, counts and sensor
table, message for message, on streams full of what the fast path must refuse.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgert import kernels, wire
from edgert.pipeline import Pipeline

pytestmark = pytest.mark.skipif(kernels.ingest_messages is None, reason="numba unavailable: no compiled path")

DT = 1_000_000
T0 = 1_700_000_000 * 10**9


def _pipe(**kw):
    p = Pipeline(backend="cpu", max_clock_skew_s=kw.pop("max_clock_skew_s", 0.0), **kw)
    p._collect = []
    return p


def _hdr(seq, t0, dt, n, c, dtype="f4", extra=None, order=None):
    import msgpack

    h = {"v": 1, "seq": seq, "t0": t0, "dt": dt, "dtype": dtype, "shape": [n, c]}
    if extra:
        h.update(extra)
    if order:
        h = {k: h[k] for k in order}
    return msgpack.packb(h)


def hostile_stream(seed: int, n_msgs: int = 1500, sensors: int = 6, C: int = 3):
    """Messages of several sensors, mostly plain, with every kind of trouble mixed in."""
    rng = np.random.default_rng(seed)
    seq = [0] * sensors
    t = [T0 + i * 7_777 for i in range(sensors)]
    out = []
    for _ in range(n_msgs):
        i = int(rng.integers(sensors))
        sid = f"s{i}".encode()
        n = int(rng.choice([16, 64, 64, 64, 100, 300]))
        x = (rng.normal(size=(n, C)) * (1 + 3 * (rng.random() < 0.1))).astype("<f4")
        r = rng.random()
        s, t0 = seq[i], t[i]
        frames = None
        if r < 0.02:
            x[rng.integers(n), rng.integers(C)] = np.nan
        elif r < 0.04:
            s = max(0, s - 1 - int(rng.integers(3)))  # seq backwards
        elif r < 0.06:
            s += int(rng.integers(1, 4))  # a gap: blocks lost
        elif r < 0.07:
            t0 += int(rng.integers(4, 50)) * DT  # a time gap: restart
        elif r < 0.08:
            t0 -= int(rng.integers(4, 50)) * DT  # t0 backwards
        elif r < 0.085:
            t0 += 3 * DT + int(rng.choice([-1, 0, 1]))  # right at the gap tolerance
        elif r < 0.09:
            frames = [sid, _hdr(s, t0, DT, n, C + 1), np.zeros((n, C + 1), "<f4").tobytes()]  # channels
        elif r < 0.10:
            frames = [sid, _hdr(s, t0, DT, n, C, "i2"), (x * 100).astype("<i2").tobytes()]
        elif r < 0.11:
            frames = [sid, _hdr(s, t0, DT, n, C, "f8"), x.astype("<f8").tobytes()]
        elif r < 0.115:
            frames = [sid, b"\x93garbage", x.tobytes()]
        elif r < 0.12:
            frames = [sid, _hdr(s, t0, DT, n, C)]  # 2 frames
        elif r < 0.125:
            frames = [sid, _hdr(s, t0, DT, n, C, extra={"unit": "A"}), x.tobytes()]  # extra key: allowed
        elif r < 0.13:
            frames = [sid, _hdr(s, t0, DT, n, C, order=["shape", "dtype", "dt", "t0", "seq", "v"]), x.tobytes()]
        elif r < 0.135:
            s += 5_000_000  # seq jump beyond max_seq_gap
        elif r < 0.14:
            frames = [b"new-%d" % int(rng.integers(1000)), _hdr(0, t0, DT, n, C), x.tobytes()]
        elif r < 0.145:
            frames = [sid, _hdr(s, t0, DT * 2, n, C), x.tobytes()]  # dt change
        elif r < 0.15:
            frames = [sid, _hdr(s, 2**63 - 10, DT, n, C), x.tobytes()]  # t0 overflow
        elif r < 0.155:
            frames = [sid, _hdr(s, t0, DT, n, C), x.tobytes()[:-4]]  # size
        if frames is None:
            frames = [sid, _hdr(s, t0, DT, n, C), x.tobytes()]
        if r >= 0.155 or r < 0.02 or 0.06 <= r < 0.07 or 0.085 <= r < 0.09 or 0.12 <= r < 0.13 \
                or 0.14 <= r < 0.145:
            seq[i] = s + 1
            t[i] = t0 + n * DT
        out.append(frames)
    return out


def _receipts(n, seed):
    rng = np.random.default_rng(seed + 1000)
    return (10**12 + np.cumsum(rng.integers(1, 400_000, size=n))).tolist()  # 1 ns .. 0.4 ms apart


def _state(p: Pipeline) -> dict:
    st = p.stats(top_n=10_000)
    for k in ("uptime_s", "rss_mb", "windows_per_s", "latency_us", "queue_delay_us", "memory",
              "first_decision_s", "warmup_s", "batch_path_messages", "max_latency_us", "queue_delay_max_us",
              "kernel_warmup_s"):
        st.pop(k, None)
    tb = p.table
    rows = {name: (s.pos, s.next_start, s.last_seq, s.t_origin, s.dt, s.messages, s.samples, s.last_seen,
                   s.restarts, s.lost_blocks, s._cand, sorted(s._dropped_ahead), s._last_gap)
            for name, s in p.streams.items()}
    return {"stats": st, "rows": rows, "order": list(p.streams), "reasons": dict(p.batcher.reasons),
            "batches": p.batcher.batches, "fast": tb.fast.copy().tolist()}


def _decisions(p: Pipeline) -> list:
    return [(d.sensor, d.t_start, d.t_end, d.score, d.threshold, d.anomaly, d.contributions, d.seq)
            for d in p._collect]


def _run_pair(msgs, receipts, chunks, **kw):
    ref, fast = _pipe(**kw), _pipe(**kw)
    for f, t in zip(msgs, receipts):
        ref._handle_one(f, t)
    i = 0
    for n in chunks:
        fast.handle_many(msgs[i:i + n], receipts[i:i + n])
        i += n
    ref.batcher.flush("flush")
    fast.batcher.flush("flush")
    return ref, fast


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_same_result_as_per_message_path(seed):
    msgs = hostile_stream(seed)
    receipts = _receipts(len(msgs), seed)
    rng = np.random.default_rng(seed)
    chunks = []
    left = len(msgs)
    while left:
        n = min(left, int(rng.choice([1, 3, 17, 64, 256])))
        chunks.append(n)
        left -= n
    ref, fast = _run_pair(msgs, receipts, chunks, max_batch=int(rng.choice([1, 7, 32])),
                          max_delay_us=int(rng.choice([0, 200, 1000])))
    assert fast.batch_path_messages > len(msgs) // 2  # the compiled path did most of the work
    assert _decisions(fast) == _decisions(ref)
    assert _state(fast) == _state(ref)
    assert ref.stats()["windows"] > 500 and ref.stats()["dropped"] > 20


def test_same_result_with_eviction_clock_and_adaptation():
    """A small sensor table (evictions mid-wake-up), the clock check, per-sensor normalization."""
    msgs = hostile_stream(7, n_msgs=1200, sensors=9)
    receipts = _receipts(len(msgs), 7)
    kw = dict(max_sensors=4, sensor_evict_s=0.0, max_clock_skew_s=1e9, adapt="safe")
    ref, fast = _run_pair(msgs, receipts, [256] * 4 + [len(msgs) - 1024], **kw)
    assert _decisions(fast) == _decisions(ref)
    assert _state(fast) == _state(ref)
    assert ref.evicted > 10


@pytest.mark.parametrize("adapt", ["off", "safe"])
def test_same_result_with_commissioning(adapt):
    """Per-sensor commissioning gains (edgert.commission) set mid-stream, evictions freeing them."""
    msgs = hostile_stream(11, n_msgs=1200, sensors=9)
    receipts = _receipts(len(msgs), 11)
    kw = dict(max_sensors=4, sensor_evict_s=0.0, adapt=adapt, commission_samples=200,
              commission_max_gain=10.0)
    ref, fast = _run_pair(msgs, receipts, [256] * 4 + [len(msgs) - 1024], **kw)
    assert _decisions(fast) == _decisions(ref)
    assert _state(fast) == _state(ref)
    c = ref.stats()["commissioning"]
    assert c["accepted"] > 3 and c["windows"] > 20, c
    assert any(d.threshold == float("inf") for d in ref._collect)  # commissioning windows: not judged


def test_clock_check_refuses_what_python_refuses():
    """t0 at the clock tolerance, on both sides: each path accepts and drops the same blocks."""
    p_ref, p_fast = _pipe(max_clock_skew_s=1.0), _pipe(max_clock_skew_s=1.0)
    now = T0
    for p in (p_ref, p_fast):
        p._now_wall = now
    x = np.ones((64, 3), "<f4")
    msgs = []
    t = now - 10**9 - 64 * DT * 3  # starts outside the tolerance, walks through it
    for s in range(400):
        msgs.append([b"c", _hdr(s, t, DT, 64, 3), x.tobytes()])
        t += 64 * DT - 5  # a clock slightly fast: crosses both edges exactly at some block
    rec = _receipts(len(msgs), 3)
    for f, r in zip(msgs, rec):
        p_ref._handle_one(f, r)
    p_fast.handle_many(msgs, rec)
    assert _state(p_fast) == _state(p_ref)
    assert p_ref.stats()["drops"]


def test_parse_header_matches_wire_decode():
    """Every header the compiled parser accepts, wire.decode accepts with the same fields."""
    from edgert.kernels._batch import parse_header

    rng = np.random.default_rng(5)
    cases = [_hdr(int(s), int(t), int(d), int(n), int(c))
             for s, t, d, n, c in zip(rng.integers(0, 2**62, 200), rng.integers(-2**62, 2**62, 200),
                                      rng.integers(1, 10**12, 200), rng.integers(1, 2**20, 200),
                                      rng.integers(1, 256, 200))]
    cases += [_hdr(0, 2**63 - 1, 1, 1, 1), _hdr(0, -2**63, 1, 1, 1), _hdr(2**63 - 1, 0, 1, 1, 1),
              _hdr(0, 0, 1, 1, 1, extra={"x": 1}), _hdr(0, 0, 0, 1, 1), _hdr(0, 0, 1, 0, 1)]
    import msgpack

    cases += [msgpack.packb({"v": 1, "seq": -1, "t0": 0, "dt": 1, "dtype": "f4", "shape": [1, 1]}),
              msgpack.packb({"v": True, "seq": 0, "t0": 0, "dt": 1, "dtype": "f4", "shape": [1, 1]}),
              msgpack.packb({"v": 1, "seq": 0, "t0": 0, "dt": 1, "dtype": "f4", "shape": [1, 1, 1]}),
              msgpack.packb({"v": 1, "seq": 2**64 - 1, "t0": 0, "dt": 1, "dtype": "f4", "shape": [1, 1]}),
              msgpack.packb({"v": 1, "seq": 0, "t0": 0, "dt": 1, "dtype": "f4", "shape": [1, 1]})[:-1]]
    accepted = 0
    for h in cases:
        buf = np.frombuffer(h, np.uint8)
        ok, seq, t0, dt, n, c = parse_header(buf, 0, len(h))
        try:
            hdr = msgpack.unpackb(h)
            blk = wire.decode([b"x", h, bytes(4 * hdr["shape"][0] * hdr["shape"][1])])
        except Exception:  # not msgpack, no shape, a WireError: nothing to compare with
            blk = None
        if ok:
            accepted += 1
            assert blk is not None and (blk.seq, blk.t0, blk.dt, blk.samples.shape) == (seq, t0, dt, (n, c))
    assert accepted >= 200


class _DictSink:
    """Takes events as dicts (the Python path builds each payload)."""

    def __init__(self):
        self.events = []

    def publish(self, kind, sensor, payload):
        self.events.append((kind, sensor, dict(payload)))

    def close(self):
        pass


class _PackedSink(_DictSink):
    """Also takes anomaly payloads packed by `kernels.encode_anomalies`; decodes them as a
    subscriber would."""

    def publish_packed(self, topics, data, offsets):
        from edgert import events

        data = bytes(data)
        for j, t in enumerate(topics):
            kind, sensor, payload = events.decode([t, data[offsets[j]:offsets[j + 1]]])
            self.events.append((kind, sensor, payload))


@pytest.mark.parametrize("threshold", ["fixed", "spot"])
def test_packed_anomaly_events_equal_the_python_ones(threshold):
    """Every anomaly payload the compiled encoder writes decodes to the dict the Python path
    builds (timing fields aside: they are taken at each path's own decision time)."""
    msgs = hostile_stream(11, n_msgs=600)
    rec = _receipts(len(msgs), 11)
    ref = Pipeline(backend="cpu", max_clock_skew_s=0.0, threshold=threshold, sink=_DictSink())
    fast = Pipeline(backend="cpu", max_clock_skew_s=0.0, threshold=threshold, sink=_PackedSink())
    for p in (ref, fast):
        p.handle_many(msgs, rec)
        p.batcher.flush("flush")
    strip = ("latency_us", "queue_delay_us")
    a = [(k, s, {f: v for f, v in d.items() if f not in strip}) for k, s, d in ref.sink.events if k == "anomaly"]
    b = [(k, s, {f: v for f, v in d.items() if f not in strip}) for k, s, d in fast.sink.events if k == "anomaly"]
    assert len(a) > 1000 and a == b
    first = [next(list(d) for k, _, d in p.sink.events if k == "anomaly") for p in (ref, fast)]
    assert first[0] == first[1]  # the same field order
    qa = [d["queue_delay_us"] is None for k, _, d in ref.sink.events if k == "anomaly"]
    qb = [d["queue_delay_us"] is None for k, _, d in fast.sink.events if k == "anomaly"]
    assert qa == qb
