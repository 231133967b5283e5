"""Ring buffers and window cutting: the right windows, in order, across blocks, chunks and gaps."""

import numpy as np
import pytest

from edgert import wire
from edgert.windows import SensorStream, push_block


class Collect:
    """A batcher-shaped sink that keeps every window it is given (for checking)."""

    def __init__(self, W, C, max_batch=8, scale=0.05, zp=3):
        self.buf = np.zeros((max_batch, 1, W, C), dtype=np.int8)
        self.stats = np.zeros((max_batch, C, 6), dtype=np.float32)
        self.t_start = np.zeros(max_batch, dtype=np.int64)
        self.max_batch = max_batch
        self.mean = np.linspace(-1, 1, C)
        self.inv_std = 1.0 / np.linspace(0.5, 2, C)
        self.in_scale, self.in_zp = scale, zp
        self.extra = []
        self.n = 0
        self.windows, self.t_starts, self.seqs, self.flushes = [], [], [], 0

    @property
    def free(self):
        return self.max_batch - self.n

    def commit_rows(self, k, sensor_index, seq, t_recv):
        self.windows.extend(self.buf[self.n:self.n + k, 0].copy())
        self.t_starts.extend(int(t) for t in self.t_start[self.n:self.n + k])
        self.seqs.extend([seq] * k)
        self.n += k
        if self.n >= self.max_batch:
            self.n = 0
            self.flushes += 1

    def expect(self, x):
        q = np.rint((x.astype(np.float64) - self.mean) * self.inv_std / self.in_scale + self.in_zp)
        return np.clip(q, -128, 127).astype(np.int8)


def feed(stream, sink, x, block, t0=0, dt=1000, seq0=0):
    seq = seq0
    for i in range(0, x.shape[0], block):
        part = x[i:i + block]
        stream.check(seq, t0 + i * dt, dt, part.shape[0], lambda r: None)
        push_block(stream, part, seq, 0, sink)
        seq += 1
    return seq


@pytest.mark.parametrize("W,H,block,cap", [(64, 16, 64, 1024), (64, 16, 7, 128), (8, 3, 1000, 16),
                                           (5, 5, 1, 10), (64, 64, 4096, 200), (16, 1, 33, 40)])
def test_windows_match_slices(W, H, block, cap):
    rng = np.random.default_rng(W + H + block)
    C = 3
    x = rng.normal(size=(3000, C)).astype(np.float32)
    st = SensorStream("s", 0, C, W, H, capacity=cap)
    sink = Collect(W, C)
    feed(st, sink, x, block)
    starts = np.arange(0, 3000 - W + 1, H)
    assert len(sink.windows) == starts.size
    for s, win, t in zip(starts, sink.windows, sink.t_starts):
        assert np.array_equal(win, sink.expect(x[s:s + W])), s
        assert t == s * 1000


def test_integer_dtypes_become_float():
    W, C = 8, 2
    x = (np.arange(200).reshape(100, 2) % 300).astype(np.int16)
    st = SensorStream("s", 0, C, W, 4)
    sink = Collect(W, C, scale=1.0, zp=0)
    feed(st, sink, x, 10)
    assert np.array_equal(sink.windows[3], sink.expect(x[12:20].astype(np.float32)))


def test_time_gap_restarts_windows():
    W, H, C = 16, 8, 1
    st = SensorStream("s", 0, C, W, H)
    sink = Collect(W, C)
    notes = []
    x = np.ones((40, 1), np.float32)
    st.check(0, 0, 1000, 40, notes.append)
    push_block(st, x, 0, 0, sink)
    n1 = len(sink.windows)  # starts 0, 8, 16, 24
    assert n1 == 4
    # next block starts 10 s later: a new recording, windows restart, nothing straddles
    st.check(1, 10_000_000_000, 1000, 40, notes.append)
    push_block(st, 2 * x, 1, 0, sink)
    assert notes == ["time_gap"]
    assert len(sink.windows) == 8
    assert sink.t_starts[4] == 10_000_000_000
    assert all(np.all(w == w.flat[0]) for w in sink.windows)  # no mixed window


def test_small_jitter_is_not_a_gap():
    st = SensorStream("s", 0, 1, 4, 2)
    notes = []
    st.check(0, 0, 1000, 10, notes.append)
    st.pos = 10
    st.check(1, 10_000 + 1500, 1000, 10, notes.append)  # 1.5 samples late: tolerated
    assert notes == []


def test_seq_and_t0_backwards_are_refused():
    st = SensorStream("s", 0, 1, 4, 2)
    st.check(5, 0, 1000, 10, lambda r: None)
    st.pos = 10
    with pytest.raises(wire.WireError) as ei:
        st.check(5, 10_000, 1000, 10, lambda r: None)
    assert ei.value.reason == "seq_backwards"
    with pytest.raises(wire.WireError) as ei:
        st.check(6, 0, 1000, 10, lambda r: None)
    assert ei.value.reason == "t0_backwards"


def test_seq_gap_is_noted_and_sensor_restart_accepted():
    st = SensorStream("s", 0, 1, 4, 2)
    notes = []
    st.check(0, 0, 1000, 10, notes.append)
    st.pos = 10
    st.check(3, 10_000, 1000, 10, notes.append)
    assert notes == ["seq_gap"]
    st.pos = 20
    st.check(0, 60_000_000_000, 1000, 10, notes.append)  # rebooted: seq 0, a minute later
    assert notes == ["seq_gap", "sensor_restart", "time_gap"]
