"""Per-sensor commissioning (`edgert.commission`): gains from a sensor's first samples, bounded,
kept on disk, refused for a machine too far from the model's healthy reference; the windows it
takes are not judged; the daemon publishes ``event/commission/<sensor>`` over ZeroMQ."""

import json
import time

import msgpack
import numpy as np
import pytest
import zmq

import edgert
from edgert import config, models, wire
from edgert.commission import CommissionError, Commissioning, windows_for
from edgert.data import itsc_recording
from edgert.evaluate.itsc import commission_gains


def _pipe(**kw):
    return edgert.Pipeline("motor-ae", backend="cpu", commission_samples=256, **kw)


def _push_commissioned(p, sensor, x, n=256):
    """The first ``n`` samples, scored, then the rest: the gains are set before the rest is
    quantized (the daemon's batches are 1 ms; here a flush makes it exact)."""
    ds = p.push(sensor, x[:n], 0, 1_000_000) + p.flush()
    return ds + p.push(sensor, x[n:], n * 1_000_000, 1_000_000) + p.flush()


def test_windows_for():
    assert windows_for(256, 64, 16) == 13
    assert windows_for(10, 64, 16) == 1 and windows_for(64, 64, 16) == 1


def test_gains_match_the_sample_exact_ones_and_bring_a_low_phase_back():
    """SC_HLT_001's phase B is ~5 % low: its gain ~1.05; the window-statistics RMS agrees with
    the sample-exact one (`edgert.evaluate.itsc.commission_gains`) to 0.5 %."""
    x = itsc_recording("SC_HLT_001")
    p = _pipe()
    try:
        ds = _push_commissioned(p, "m1", x)
        row = p.stats(top_n=10)["per_sensor"]["m1"]["commissioning"]
        assert row["state"] == "commissioned"
        exact = commission_gains({"SC_HLT_001": (x, "SC_HLT")}, np.ones(3), p.model.mean,
                                 p.model.std, 256)["001"]
        assert np.allclose(row["gains"], exact, rtol=5e-3), (row["gains"], exact)
        assert 1.03 < row["gains"][1] < 1.07
        judged = [d for d in ds if np.isfinite(d.threshold)]
        assert len(ds) - len(judged) == 13  # the commissioning windows: not judged
        assert not any(d.anomaly for d in judged)
        assert p.stats()["commissioning"]["accepted"] == 1
    finally:
        p.close()


def test_gains_change_the_normalization_the_model_sees():
    """The same healthy recording with phase C 6 % low: without commissioning the model's
    scores rise; commissioned, they come back to the unscaled recording's."""
    x = itsc_recording("SC_HLT_003")
    low = x * np.array([1.0, 1.0, 0.94], np.float32)
    plain = edgert.Pipeline("motor-ae", backend="cpu")
    p = _pipe()
    try:
        s_ref = plain.score(x).score[13:]
        s_low = plain.score(low).score[13:]
        s_com = np.array([d.score for d in _push_commissioned(p, "m", low)])[13:]
        assert s_low.mean() > 1.2 * s_ref.mean()
        assert abs(s_com.mean() - s_ref.mean()) < 0.25 * (s_low.mean() - s_ref.mean())
    finally:
        plain.close()
        p.close()


def test_a_faulty_machine_is_refused_and_keeps_alarming(caplog):
    """SC_A3_B0_C0 (phase A 30 % short circuit): phase A's RMS is 1.37 of the reference; the
    gain bound (±10 %) refuses it, naming the channel, and every later window alarms."""
    sink = _Sink()
    p = _pipe(sink=sink)
    try:
        ds = _push_commissioned(p, "bad", itsc_recording("SC_A3_B0_C0_001"))
        judged = [d for d in ds if np.isfinite(d.threshold)]
        assert len(judged) == len(ds) - 13 and all(d.anomaly for d in judged)
        ev = [e for k, s, e in sink.events if k == "commission"]
        assert len(ev) == 1 and ev[0]["state"] == "refused" and ev[0]["v"] == 1
        assert ev[0]["reason"].startswith("channel 0: RMS 1.3") and "outside [1/1.1, 1.1]" in ev[0]["reason"]
        assert p.stats()["commissioning"]["refused"] == 1
        assert p.stats(top_n=5)["per_sensor"]["bad"]["commissioning"]["gains"] == [1.0, 1.0, 1.0]
    finally:
        p.close()


def test_file_keeps_gains_across_restarts_and_is_checked(tmp_path):
    f = tmp_path / "commission.json"
    x = itsc_recording("SC_HLT_001")
    p = _pipe(commission_file=str(f))
    try:
        _push_commissioned(p, "m1", x)
        g1 = p.stats(top_n=5)["per_sensor"]["m1"]["commissioning"]["gains"]
    finally:
        p.close()
    doc = json.loads(f.read_text())
    assert doc["model"] == "motor-ae" and list(doc["sensors"]) == ["m1"]
    # a restart: the sensor is not commissioned again on what it sends now (a fault)
    sink = _Sink()
    p = _pipe(commission_file=str(f), sink=sink)
    try:
        ds = p.push("m1", itsc_recording("SC_A3_B0_C0_001"), 0, 1_000_000) + p.flush()
        assert all(np.isfinite(d.threshold) for d in ds)  # every window judged at once
        assert sum(d.anomaly for d in ds) == len(ds)
        assert p.stats(top_n=5)["per_sensor"]["m1"]["commissioning"] == {"state": "commissioned",
                                                                           "gains": g1}
        assert [e["state"] for k, s, e in sink.events if k == "commission"] == ["restored"]
        assert p.stats()["commissioning"]["restored"] == 1
    finally:
        p.close()
    # a file for another model, or a tampered one, is refused by name
    doc["model"] = "other"
    f.write_text(json.dumps(doc))
    with pytest.raises(CommissionError, match=r"commission.json: field 'model' is 'other'"):
        _pipe(commission_file=str(f))
    doc["model"] = "motor-ae"
    doc["sensors"]["m1"]["gains"] = [1.0, 3.0, 1.0]
    f.write_text(json.dumps(doc))
    with pytest.raises(CommissionError, match=r"sensors\['m1'\].gains must be 3 numbers within"):
        _pipe(commission_file=str(f))
    f.write_text("{not json")
    with pytest.raises(CommissionError, match="not a commissioning file"):
        _pipe(commission_file=str(f))


def test_file_is_bounded(tmp_path):
    c = Commissioning([0.0], [1.0], 64, 64, 16, max_sensors=4, path=tmp_path / "c.json",
                      model="m", max_records=2)
    names = [f"s{i}" for i in range(4)]
    for i in range(4):
        c.admit(i, names[i])
    thr = c.mask(np.arange(4), np.zeros(4))
    assert np.isinf(thr).all()
    steps = c.learn(np.arange(4), np.zeros((4, 1)), np.ones((4, 1)), names)
    assert [s["state"] for s in steps] == ["commissioned"] * 4
    assert len(json.loads((tmp_path / "c.json").read_text())["sensors"]) == 2
    assert c.unpersisted == 2


def test_mask_takes_only_each_sensors_remaining_windows():
    c = Commissioning([0.0], [1.0], 64 + 16 * 2, 64, 16, max_sensors=3)  # 3 windows each
    for i in range(3):
        c.admit(i, f"s{i}")
    c.forget(2)  # a freed slot does not commission
    sidx = np.array([0, 1, 0, 0, 0, 1, 2, 0])
    thr = c.mask(sidx, np.ones(len(sidx)))
    assert np.isinf(thr).tolist() == [True, True, True, True, False, True, False, False]
    c.learn(sidx, np.zeros((8, 1)), np.ones((8, 1)), ["s0", "s1", "s2"])
    assert c.left.tolist() == [0, 1, 0] and c.accepted == 1


@pytest.mark.parametrize("kw, msg", [(dict(commission_samples=-1), "commission_samples"),
                                     (dict(commission_samples=True), "commission_samples"),
                                     (dict(commission_samples=256, commission_max_gain=0.9),
                                      "commission_max_gain"),
                                     (dict(commission_samples=256, commission_max_gain=float("nan")),
                                      "commission_max_gain"),
                                     (dict(commission_file="/tmp/x.json"), "commission_file")])
def test_config_errors_name_the_field(kw, msg):
    with pytest.raises(ValueError, match=msg):
        config.load(None, **kw)


def test_daemon_publishes_commission_events_over_zeromq(tmp_path):
    from edgert.daemon import Daemon

    cfg = config.load(None, listen=f"ipc://{tmp_path}/s", events=f"ipc://{tmp_path}/e",
                      watch_model_s=0, max_clock_skew_s=0.0, commission_samples=256,
                      commission_file=str(tmp_path / "c.json"))
    ctx = zmq.Context()
    d = Daemon(cfg, ctx=ctx)
    d.bind()
    sub = ctx.socket(zmq.SUB)
    sub.connect(f"ipc://{tmp_path}/e")
    sub.setsockopt(zmq.SUBSCRIBE, b"event/commission/")
    time.sleep(0.3)  # the subscription reaches the publisher
    got = {}
    try:
        for sensor, name in (("good", "SC_HLT_002"), ("bad", "SC_A3_B0_C0_002")):
            x = itsc_recording(name)
            for seq, i in enumerate(range(0, 2048, 128)):
                part = np.ascontiguousarray(x[i:i + 128])
                d.handle([sensor.encode(), wire.encode_header(seq, 10**18 + i * 1_000_000, 1_000_000, part),
                          part.tobytes()], time.perf_counter_ns())
            d.batcher.flush()
        end = time.time() + 5
        while len(got) < 2 and time.time() < end:
            if sub.poll(200):
                topic, payload = sub.recv_multipart()
                got[topic.decode()] = msgpack.unpackb(payload)
    finally:
        sub.close(linger=0)
        d.sock.close(linger=0)
        d.events.close()
        ctx.destroy(linger=0)
    assert got["event/commission/good"]["state"] == "commissioned"
    assert got["event/commission/bad"]["state"] == "refused"
    assert list(json.loads((tmp_path / "c.json").read_text())["sensors"]) == ["good"]


class _Sink:
    def __init__(self):
        self.events = []

    def publish(self, kind, sensor, payload):
        self.events.append((kind, sensor, payload))

    def close(self):
        pass


def test_eval_itsc_commissions_as_the_pipeline_does():
    """`edgert eval itsc`'s commissioned variant takes its gains from the daemon's
    Commissioning on the same window statistics: equal to the Pipeline's to float rounding."""
    from edgert.evaluate.itsc import daemon_commission_gains

    recs = {n: (itsc_recording(n), "SC_HLT") for n in ("SC_HLT_001", "SC_HLT_004")}
    gains, states = daemon_commission_gains(models.load("motor-ae").dir, recs, 256)
    assert states == {"001": "commissioned", "004": "commissioned"}
    p = _pipe()
    try:
        for n, r in (("SC_HLT_001", "001"), ("SC_HLT_004", "004")):
            p.push(r, recs[n][0][:256], 0, 1_000_000)
            p.flush()
            assert np.allclose(p.commission.describe(p.streams[r].index)["gains"], gains[r],
                               rtol=0, atol=2e-5)
    finally:
        p.close()


@pytest.mark.parametrize("adapt", ["off", "safe"])
def test_swap_keeps_gains_for_the_same_normalization_and_resets_them_otherwise(tmp_path, adapt):
    """A hot-swapped model with the model's normalization keeps every sensor's gains; one with
    another normalization (edgert retrain fits it to the machine as it is now) resets them to 1
    and does not commission again."""
    import shutil

    d = tmp_path / "m"
    shutil.copytree(models.resolve("motor-ae"), d)
    p = edgert.Pipeline(str(d), backend="cpu", commission_samples=256, adapt=adapt)
    try:
        _push_commissioned(p, "m1", itsc_recording("SC_HLT_001"))
        i = p.streams["m1"].index
        g = p.commission.describe(i)["gains"]
        rows = p.norm if p.norm is not None else p.commission
        inv = rows.inv_std[i].copy()
        assert p.swap_model(d) == "swapped"
        assert p.commission.describe(i) == {"state": "commissioned", "gains": g}
        assert np.allclose(rows.inv_std[i], inv)
        m = json.loads((d / "manifest.json").read_text())
        m["normalization"]["std"] = [v * 1.01 for v in m["normalization"]["std"]]
        (d / "manifest.json").write_text(json.dumps(m))
        assert p.swap_model(d) == "swapped"
        assert p.commission.describe(i) == {"state": "none", "gains": [1.0, 1.0, 1.0]}
        assert np.allclose(rows.inv_std[i], 1 / np.asarray(m["normalization"]["std"]))
        ds = p.push("m1", itsc_recording("SC_HLT_002")[:512], 10**12, 1_000_000) + p.flush()
        assert all(np.isfinite(d.threshold) for d in ds)  # judged: no second commissioning
    finally:
        p.close()


def test_metrics_export_the_commissioning_counters():
    """/metrics has edgert_commissioning_total{result}, from the stats the engine keeps (also
    through the --workers supervisor's aggregated stats)."""
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest

    from edgert import metrics

    p = _pipe()
    try:
        _push_commissioned(p, "good", itsc_recording("SC_HLT_002"))
        _push_commissioned(p, "bad", itsc_recording("SC_A3_B0_C0_002"))
        snap = metrics.snapshot_from_stats(p.stats(), metrics.StatsLabels(8))
    finally:
        p.close()
    assert snap["commissioning"] == {"accepted": 1, "refused": 1, "restored": 0}
    m = metrics.Metrics("127.0.0.1:0")
    m.snap = snap
    reg = CollectorRegistry()
    reg.register(metrics.EdgertCollector(m))
    text = generate_latest(reg).decode()
    assert 'edgert_commissioning_total{result="refused"} 1.0' in text


def test_workers_write_their_own_file_and_read_every_workers(tmp_path):
    """serve --workers: worker K writes FILE.worker-K only, and knows every sensor any worker
    (or a single-process run, FILE) commissioned, since a sensor may reconnect elsewhere."""
    from edgert.workers import worker_config

    base = tmp_path / "c.json"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"commission_samples": 64,
                                                 "commission_file": str(base)}))
    assert worker_config(str(run), 1, "ipc://x").commission_file == f"{base}.worker-1"

    def rec(g):
        return {"gains": [g], "windows": 1}

    for name, sensors in ((base, {"old": rec(1.01)}), (tmp_path / "c.json.worker-0", {"a": rec(1.02)}),
                          (tmp_path / "c.json.worker-1", {"b": rec(1.03), "a": rec(1.04)})):
        name.write_text(json.dumps({"model": "m", "sensors": sensors}))
    c = Commissioning([0.0], [1.0], 64, 64, 16, 4, path=f"{base}.worker-1", model="m")
    assert {k: v["gains"] for k, v in c.records.items()} == {"old": [1.01], "a": [1.04], "b": [1.03]}
    c.admit(0, "new")
    c.mask(np.array([0]), np.zeros(1))
    c.learn(np.array([0]), np.zeros((1, 1)), np.ones((1, 1)), ["new"])
    own = json.loads((tmp_path / "c.json.worker-1").read_text())["sensors"]
    assert "new" in own and json.loads(base.read_text())["sensors"] == {"old": rec(1.01)}
