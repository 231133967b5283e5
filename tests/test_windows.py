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

    def commit_rows(self, k, sensor_index, seq, t_recv, t_last=0):
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
        stream.check(seq, t0 + i * dt, dt, part.shape[0], lambda r, n=1: None)
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
    st.check(5, 0, 1000, 10, lambda r, n=1: None)
    st.pos = 10
    with pytest.raises(wire.WireError) as ei:
        st.check(5, 10_000, 1000, 10, lambda r, n=1: None)
    assert ei.value.reason == "seq_backwards"
    with pytest.raises(wire.WireError) as ei:
        st.check(6, 0, 1000, 10, lambda r, n=1: None)
    assert ei.value.reason == "t0_backwards"


def test_seq_gap_is_noted_and_sensor_restart_accepted():
    st = SensorStream("s", 0, 1, 4, 2)
    notes = []
    note = lambda r, n=1: notes.append((r, n))  # noqa: E731
    st.check(0, 0, 1000, 10, note)
    st.pos = 10
    st.check(3, 10_000, 1000, 10, note)
    assert notes == [("seq_gap", 2)] and st.lost_blocks == 2  # seqs 1 and 2 were lost
    st.pos = 20
    st.check(0, 60_000_000_000, 1000, 10, note)  # rebooted: seq 0, a minute later
    assert notes == [("seq_gap", 2), ("sensor_restart", 1), ("time_gap", 1)]


def test_a_dropped_block_is_not_also_lost():
    st = SensorStream("s", 0, 1, 4, 2)
    st.check(0, 0, 1000, 10, lambda r, n=1: None)
    st.pos = 10
    st.dropped(1)  # received, dropped (say NaN): the gap over it is one lost block, not two
    st.check(3, 10_000, 1000, 10, lambda r, n=1: None)
    assert st.lost_blocks == 1


def spoofed_then_genuine(st, spoof_seq, spoof_t0, n=10, dt=1000):
    """A genuine stream (seq 0.., t0 0..), one spoofed block, then the genuine stream goes on.
    Returns the reasons of the genuine blocks' fates after the spoof (None: accepted)."""
    notes = []
    note = lambda r, k=1: notes.append(r)  # noqa: E731
    for seq in range(5):
        st.check(seq, seq * n * dt, dt, n, note)
        st.pos += n
    try:
        st.check(spoof_seq, spoof_t0, dt, n, note)
        st.pos = 0  # a spoof that was accepted moved the stream
    except wire.WireError:
        pass
    fates = []
    for seq in range(5, 25):
        try:
            st.check(seq, seq * n * dt, dt, n, note)
            st.pos += n
            fates.append(None)
        except wire.WireError as exc:
            fates.append(exc.reason)
    return fates, notes


def test_a_spoofed_huge_seq_is_dropped_and_the_sensor_goes_on():
    st = SensorStream("s", 0, 1, 4, 2)
    fates, notes = spoofed_then_genuine(st, 1 << 62, 5 * 10 * 1000)
    assert fates == [None] * 20 and "seq_gap" not in notes


def test_a_run_of_consistent_blocks_restarts_a_hijacked_stream():
    # The spoof is plausible (seq a little ahead, time ahead but within the clock bound), so
    # it is accepted; the genuine sensor's next blocks contradict it, and the 8th consistent
    # one in a row restarts the stream: the sensor is not silenced for good.
    st = SensorStream("s", 0, 1, 4, 2)
    fates, notes = spoofed_then_genuine(st, 1000, 10**12)
    assert fates[:7] == ["seq_backwards"] * 7
    assert fates[7:] == [None] * 13
    assert "sensor_restart" in notes


def test_inconsistent_contradictions_do_not_restart():
    # Blocks that contradict the state but not consistently among themselves (replayed or
    # shuffled old blocks) never add up to a restart.
    st = SensorStream("s", 0, 1, 4, 2)
    for seq in range(100):
        st.check(seq, seq * 10_000, 1000, 10, lambda r, k=1: None)
        st.pos += 10
    rng = np.random.default_rng(0)
    for _ in range(200):
        seq = int(rng.integers(0, 99))
        with pytest.raises(wire.WireError):
            st.check(seq, seq * 10_000, 1000, 10, lambda r, k=1: None)
    assert st.last_seq == 99
