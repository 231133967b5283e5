"""The on-disk reservoir of normal windows: bounded, reopened, refused when mismatched, and fed
by a real daemon (real sockets, the shipped int8 model, replayed ITSC data) with exactly the
raw windows it judged normal."""

import json
import time

import numpy as np
import pytest

from edgert import reservoir
from edgert.data import itsc_recording
from edgert.replay import replay
from edgert.reservoir import Reservoir, ReservoirError
from test_daemon import HEALTHY, Running, stream_recordings, windows_per_recording

W, CH = 64, ["ia", "ib", "ic"]


def windows(k, start=0):
    """k distinct windows: window i is filled with the value start + i."""
    v = np.arange(start, start + k, dtype=np.float32)
    return np.broadcast_to(v[:, None, None], (k, W, len(CH))).copy()


def test_ring_is_bounded_and_keeps_the_newest(tmp_path):
    r = Reservoir(tmp_path, "m", W, CH, size=8, rate=1.0)
    size_bytes = r.data_path.stat().st_size
    for i in range(5):  # 15 windows in batches of 3 into a ring of 8
        r.add(windows(3, 3 * i), np.arange(3 * i, 3 * i + 3) * 10, "s1")
    r.add(windows(20, 100), np.arange(20), "s2")  # more than the ring holds at once
    r.close()
    assert r.data_path.stat().st_size == size_bytes == 8 * reservoir.record_dtype(W, 3).itemsize
    got = reservoir.load(tmp_path, "m")
    assert got["meta"]["count"] == 35
    assert got["x"][:, 0, 0].tolist() == list(range(112, 120))  # the 8 newest, oldest first
    assert set(got["sensor"]) == {"s2"}


def test_reopen_continues_and_keeps_sensors(tmp_path):
    r = Reservoir(tmp_path, "m", W, CH, size=6, rate=1.0)
    r.add(windows(4), np.arange(4), "a")
    r.close()
    meta = json.loads(r.meta_path.read_text())
    assert meta["count"] == 4 and meta["head"] == 4 and meta["sensors"] == ["a"]
    r2 = Reservoir(tmp_path, "m", W, CH, size=6, rate=1.0)
    assert r2.count == 4
    r2.add(windows(4, 10), np.arange(4) + 10, ["b", "a", "b", "a"])
    r2.close()
    got = reservoir.load(tmp_path, "m")
    assert got["x"][:, 0, 0].tolist() == [2, 3, 10, 11, 12, 13]
    assert got["sensor"].tolist() == ["a", "a", "b", "a", "b", "a"]
    assert got["t_start"].tolist() == [2, 3, 10, 11, 12, 13]


def test_mismatched_reservoir_refused_naming_file_and_field(tmp_path):
    Reservoir(tmp_path, "m", W, CH, size=4).close()
    with pytest.raises(ReservoirError, match=r"m\.json: field 'window' is 64.*32"):
        Reservoir(tmp_path, "m", 32, CH, size=4)
    with pytest.raises(ReservoirError, match=r"m\.json: field 'channels'"):
        Reservoir(tmp_path, "m", W, ["ia", "ib"], size=4)
    with pytest.raises(ReservoirError, match=r"m\.json: field 'size' is 4"):
        Reservoir(tmp_path, "m", W, CH, size=5)
    with pytest.raises(ReservoirError, match=r"m\.json: field 'window'"):
        reservoir.load(tmp_path, "m", window=128)
    with pytest.raises(ReservoirError, match=r"missing"):
        reservoir.load(tmp_path, "other")
    (tmp_path / "m.bin").write_bytes(b"\0" * 10)  # truncated data file
    with pytest.raises(ReservoirError, match=r"m\.bin: size 10"):
        Reservoir(tmp_path, "m", W, CH, size=4)


def test_daemon_keeps_only_normal_windows_raw_and_exact(tmp_path):
    rdir = tmp_path / "res"
    r = Running(tmp_path, "ipc", "sub", reservoir_dir=str(rdir), reservoir_rate=1.0,
                reservoir_size=10000)
    # one continuous stream (no time gap): healthy, a 30 % fault in phase A, healthy again
    x = np.concatenate([itsc_recording(n) for n in (HEALTHY, "SC_A3_B0_C0_001", "SC_HLT_004")])
    try:
        pub = r.publisher("m1")
        assert pub.wait_subscribed(5)
        res = replay([x], pub, 1000.0, block=64, realtime=False, gap_s=0)
        pub.close()
        n_win = (len(x) - 64) // 16 + 1
        assert r.wait_windows(n_win)
        r.collect(0.3)
    finally:
        final = r.close()
    t0, dt = res["spans"][0][0], res["dt"]
    anomalies = {p["t_start"] for k, s, p in r.events if k == "anomaly"}
    in_fault = [1000 <= (t - t0) // dt < 2000 - 64 for t in anomalies]
    assert sum(in_fault) > 0.5 * 59  # the fault was flagged
    got = reservoir.load(rdir, "motor-ae", window=64, channels=CH)
    stored = set(got["t_start"].tolist())
    assert not stored & anomalies  # no flagged window stored
    assert len(stored) == len(got["t_start"])  # none twice
    assert got["meta"]["stale"] == 0
    assert len(stored) == final["windows"] - final["anomalies"]  # every normal window (rate 1)
    # raw, un-normalized samples, exactly as sent
    idx = (got["t_start"] - t0) // dt
    np.testing.assert_array_equal(got["x"], x[idx[:, None] + np.arange(64)])
    assert set(got["sensor"]) == {"m1"}
    assert got["meta"]["normalization"]["mean"] == pytest.approx(list(r.d.model.mean))


def test_daemon_sampling_rate_bounds_writes_and_reopens(tmp_path, monkeypatch):
    monkeypatch.setattr(reservoir, "FLUSH_S", 0.2)
    rdir = tmp_path / "res"
    counts = []
    for run in range(2):  # a restart continues the same reservoir
        (tmp_path / f"run{run}").mkdir()
        r = Running(tmp_path / f"run{run}", "ipc", "sub", reservoir_dir=str(rdir),
                    reservoir_rate=0.25, reservoir_size=64)
        try:
            stream_recordings(r, f"s{run}", [HEALTHY, "SC_HLT_003"])
            per = windows_per_recording(r.d.model)
            assert r.wait_windows(2 * per)
            # flushed on the timer while the daemon idles (not only at stop)
            end = time.monotonic() + 5
            while time.monotonic() < end and reservoir.load(rdir, "motor-ae")["meta"][
                    "count"] != r.d.reservoir.count:
                time.sleep(0.05)
            assert reservoir.load(rdir, "motor-ae")["meta"]["count"] == r.d.reservoir.count
        finally:
            final = r.close()
        meta = reservoir.load(rdir, "motor-ae")["meta"]
        counts.append(meta["count"])
        assert final["dropped"] == 0
        # windows still pending when a time gap restarts the sensor cannot be read back from
        # its ring: skipped and counted, at most one batch per gap
        assert meta["stale"] <= 32 * (run + 1)
    normal = 2 * per
    # 25 % of ~118 normal windows per run: binomial, 5 sigma bounds
    for c in (counts[0], counts[1] - counts[0]):
        assert 0.25 * normal - 5 * np.sqrt(normal * 0.25 * 0.75) < c < 0.25 * normal + 5 * np.sqrt(
            normal * 0.25 * 0.75), counts
    got = reservoir.load(rdir, "motor-ae")
    assert len(got["x"]) == min(counts[1], 64)
    assert set(got["meta"]["sensors"]) == {"s0", "s1"}
    assert (rdir / "motor-ae.bin").stat().st_size == 64 * reservoir.record_dtype(64, 3).itemsize


def test_serve_refuses_a_reservoir_of_another_window(tmp_path):
    rdir = tmp_path / "res"
    Reservoir(rdir, "motor-ae", 32, CH, size=16).close()
    with pytest.raises(ReservoirError, match=r"motor-ae\.json: field 'window' is 32"):
        Running(tmp_path, "ipc", "sub", reservoir_dir=str(rdir), reservoir_size=16)
