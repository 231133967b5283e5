"""The on-disk reservoir of normal windows: bounded, reopened, refused when mismatched, and fed
by a real daemon (real sockets, the shipped int8 model, replayed ITSC data) with exactly the
raw windows it judged normal."""

import json
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from edgert import models, reservoir, wire
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
    assert meta["count"] == 4 and meta["head"] == 4 and meta["schema"] == reservoir.SCHEMA
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
    assert set(got["sensor"]) <= {"s0", "s1"} and "s1" in set(got["sensor"])
    assert (rdir / "motor-ae.bin").stat().st_size == 64 * reservoir.record_dtype(64, 3).itemsize


def test_serve_refuses_a_reservoir_of_another_window(tmp_path):
    rdir = tmp_path / "res"
    Reservoir(rdir, "motor-ae", 32, CH, size=16).close()
    with pytest.raises(ReservoirError, match=r"motor-ae\.json: field 'window' is 32"):
        Running(tmp_path, "ipc", "sub", reservoir_dir=str(rdir), reservoir_size=16)


# -- crash consistency ----------------------------------------------------------------------

WRITER = r"""
import os, struct, sys
import numpy as np
from edgert import reservoir

d, run, seed, W, C, size, kmax = sys.argv[1:]
run, seed, W, C, size, kmax = map(int, (run, seed, W, C, size, kmax))
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
from crash_writer_data import window_of, sensor_of

reservoir.FLUSH_S = 0.05  # flush (msync + sidecar) often, so some kills land there too
r = reservoir.Reservoir(d, "m", W, [f"c{i}" for i in range(C)], size=size, rate=1.0)
ack = os.open(os.path.join(d, f"ack{run}"), os.O_RDWR | os.O_CREAT, 0o600)
rng = np.random.default_rng(seed)
i = 0
while True:
    k = int(rng.integers(1, kmax + 1))
    ids = np.arange(i, i + k)
    r.add(window_of(run, ids, W, C), run * 10**9 + ids, [sensor_of(run, j) for j in ids])
    i += k
    os.pwrite(ack, struct.pack("<q", i), 0)  # written records the parent may count on
    r.maybe_flush()
"""

WRITER_DATA = r"""
import numpy as np

def window_of(run, ids, W, C):
    # distinct content per (run, index): exact equality identifies the window
    base = (np.asarray(ids, np.int64) * 131 + run * 7919) % 1000003
    return (base[:, None, None] + np.arange(W * C).reshape(1, W, C)).astype(np.float32) / 8

def sensor_of(run, i):
    # a new sensor every 7 windows (none known to any sidecar), some 64-byte UTF-8 ids
    j = i // 7
    return (f"r{run}s{j}-" + "\u00fc" * (j % 27))[:64].encode()[:64].decode("utf-8", "ignore")
"""


def test_sigkill_at_random_points_never_loses_or_corrupts_a_record(tmp_path):
    """A real writer process (the Reservoir's own API: add, maybe_flush) meets a new sensor
    every 7 windows and is killed with SIGKILL at a random point, 30 times, each run reopening
    the ring the last one left. After every kill the ring loads, holds exactly the newest
    records in write order, each equal to what the writer wrote for it (window, time, sensor
    id), with every acknowledged record present and at most the batch in flight beyond them."""
    WK, CK, SIZE, KMAX, KILLS = 256, 8, 97, 40, 30
    (tmp_path / "crash_writer.py").write_text(WRITER)
    (tmp_path / "crash_writer_data.py").write_text(WRITER_DATA)
    sys.path.insert(0, str(tmp_path))
    try:
        from crash_writer_data import sensor_of, window_of
    finally:
        sys.path.remove(str(tmp_path))
    rdir = tmp_path / "res"
    rdir.mkdir()
    rng = np.random.default_rng(20240610)
    runs = {}  # run -> (first seq - 1, records acknowledged)
    count, torn_seen, mid_batch = 0, 0, 0
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    for run in range(KILLS):
        proc = subprocess.Popen([sys.executable, str(tmp_path / "crash_writer.py"), str(rdir),
                                 str(run), str(run), str(WK), str(CK), str(SIZE), str(KMAX)],
                                env=env, stderr=subprocess.PIPE)
        ack = rdir / f"ack{run}"
        end = time.monotonic() + 30
        while time.monotonic() < end and not (ack.is_file() and ack.stat().st_size == 8):
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.25))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        acked = struct.unpack("<q", ack.read_bytes())[0]
        runs[run] = (count, acked)

        got = reservoir.load(rdir, "m", window=WK)
        new_count = got["count"]
        # nothing acknowledged is lost; beyond it, at most the one batch being written
        assert count + acked <= new_count <= count + acked + KMAX, (run, count, acked, new_count)
        mid_batch += new_count != count + acked
        n = min(new_count, SIZE)
        want = np.arange(new_count - n + 1, new_count + 1, dtype=np.uint64)
        # the newest records in write order; a torn slot can only be the oldest one's
        assert got["torn"] <= 1
        assert got["seq"].tolist() == (want[got["torn"]:] if got["torn"] else want).tolist()
        torn_seen += got["torn"]
        for r_ in runs:  # each record is what its writer wrote for it
            base, _ = runs[r_]
            mine = (got["seq"] > base) & (got["seq"] <= (runs[r_ + 1][0] if r_ + 1 in runs
                                                          else new_count))
            if not mine.any():
                continue
            ids = (got["seq"][mine] - base - 1).astype(np.int64)
            np.testing.assert_array_equal(got["t_start"][mine], r_ * 10**9 + ids)
            np.testing.assert_array_equal(got["x"][mine], window_of(r_, ids, WK, CK))
            assert got["sensor"][mine].tolist() == [sensor_of(r_, int(j)) for j in ids]
        count = new_count
    assert count > 2 * SIZE  # the ring wrapped (several times)
    # the last writer is reopened by a clean process: it continues, and a later load succeeds
    r = Reservoir(rdir, "m", WK, [f"c{i}" for i in range(CK)], size=SIZE, rate=1.0)
    assert r.count == count
    r.add(window_of(99, np.arange(3), WK, CK), 99 * 10**9 + np.arange(3), "after")
    r.close()
    got = reservoir.load(rdir, "m")
    assert got["count"] == count + 3 and got["torn"] == 0
    assert got["sensor"][-3:].tolist() == ["after"] * 3
    print(f"{KILLS} kills: {mid_batch} inside a batch, {torn_seen} torn record(s) detected")


def test_a_torn_record_is_skipped_and_the_ring_continues(tmp_path):
    """A record copied only in part (a writer killed mid-copy, or a torn page after a power
    cut) fails its CRC: load leaves it out and counts it, reopening writes over it."""
    r = Reservoir(tmp_path, "m", W, CH, size=5, rate=1.0)
    r.add(windows(4), np.arange(4), "a")
    r.close()
    raw = bytearray(r.data_path.read_bytes())
    item = reservoir.record_dtype(W, 3).itemsize
    # the 4th record (slot 3) half-overwritten by a newer write that never finished
    raw[3 * item + 16: 3 * item + item // 2] = b"\x07" * (item // 2 - 16)
    r.data_path.write_bytes(bytes(raw))
    got = reservoir.load(tmp_path, "m")
    assert got["torn"] == 1 and got["seq"].tolist() == [1, 2, 3] and got["count"] == 3
    assert got["x"][:, 0, 0].tolist() == [0, 1, 2]
    r2 = Reservoir(tmp_path, "m", W, CH, size=5, rate=1.0)
    assert r2.count == 3 and r2.torn == 1
    r2.add(windows(3, 10), np.arange(3) + 10, "b")  # seq 4 goes into the torn slot
    r2.close()
    got = reservoir.load(tmp_path, "m")
    assert got["torn"] == 0 and got["seq"].tolist() == [2, 3, 4, 5, 6]
    assert got["x"][:, 0, 0].tolist() == [1, 2, 10, 11, 12]
    assert got["sensor"].tolist() == ["a", "a", "b", "b", "b"]


def test_sensor_ids_are_stored_exactly_and_bounded(tmp_path):
    assert reservoir.SENSOR_BYTES == wire.MAX_SENSOR_ID  # every id the wire accepts fits
    ids = ["x" * 64, "\u00e9" * 32, "a\x00b", "line\nfeed", "s"]
    r = Reservoir(tmp_path, "m", W, CH, size=8, rate=1.0)
    r.add(windows(5), np.arange(5), ids)
    with pytest.raises(ReservoirError, match="65 bytes"):
        r.add(windows(1), np.arange(1), "y" * 65)
    with pytest.raises(ReservoirError, match="0 bytes"):
        r.add(windows(1), np.arange(1), "")
    bad = windows(1)
    bad[0, 3, 1] = np.nan  # never stored: a later load would refuse the file
    with pytest.raises(ReservoirError, match="must be finite"):
        r.add(bad, np.arange(1), "s")
    r.close()
    got = reservoir.load(tmp_path, "m")
    assert got["sensor"].tolist() == ids and got["count"] == 5


def test_old_schema_and_foreign_records_refused_naming_file_and_field(tmp_path):
    Reservoir(tmp_path, "m", W, CH, size=4).close()
    meta = json.loads((tmp_path / "m.json").read_text())
    old = dict(meta, schema=1, sensors=["a"])
    (tmp_path / "m.json").write_text(json.dumps(old))
    for call in (lambda: reservoir.load(tmp_path, "m"),
                 lambda: Reservoir(tmp_path, "m", W, CH, size=4)):
        with pytest.raises(ReservoirError, match=r"m\.json: field 'schema' is 1, this edgert "
                                                 r"reads schema 2"):
            call()
    (tmp_path / "m.json").write_text(json.dumps(meta))
    # a record with a valid CRC in a slot its write number does not map to: not ours
    r = Reservoir(tmp_path, "m", W, CH, size=4, rate=1.0)
    r.add(windows(1), [0], "a")
    rec = np.array(r.rec[:1])
    r.close()
    rec["seq"] = 3  # belongs in slot 2, sits in slot 0
    rec["crc"] = reservoir.crc32s(rec)
    with open(tmp_path / "m.bin", "r+b") as f:
        f.write(rec.tobytes())
    with pytest.raises(ReservoirError, match=r"m\.bin: record in slot 0: field 'seq'"):
        reservoir.load(tmp_path, "m")


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "", "a\x00b", "n" * 101])
def test_model_name_must_be_a_plain_file_name(tmp_path, name):
    inner = tmp_path / "a" / "b"
    with pytest.raises(ReservoirError, match="field 'model' must be"):
        reservoir.paths(inner, name)
    with pytest.raises(ReservoirError, match="field 'model' must be"):
        Reservoir(inner, name, W, CH, size=4)
    with pytest.raises(ReservoirError, match="field 'model' must be"):
        reservoir.load(inner, name)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # nothing written anywhere


def test_daemon_refuses_a_manifest_named_outside_the_reservoir(tmp_path):
    """A model whose manifest ``name`` is ``../../x`` never reaches the reservoir: the model
    load refuses it, naming the manifest and the field."""
    import shutil

    d = tmp_path / "model"
    shutil.copytree(models.resolve("motor-ae"), d, ignore=shutil.ignore_patterns("folds"))
    m = json.loads((d / "manifest.json").read_text())
    m["name"] = "../../x"
    (d / "manifest.json").write_text(json.dumps(m))
    rdir = tmp_path / "deep" / "er" / "res"
    try:
        r = Running(tmp_path, "ipc", "sub", model=str(d), reservoir_dir=str(rdir))
    except models.ModelError as exc:
        assert "manifest.json: field 'name' must be a plain file name" in str(exc)
    else:
        r.close()
        pytest.fail("a model named ../../x was served")
    assert not list(tmp_path.rglob("x.bin")) and not list(tmp_path.rglob("x.json"))
