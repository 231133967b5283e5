"""Model hot-swap: a validated model replaces the running one between two batches; a corrupt
or mismatched one is refused while the old one keeps running. No window dropped or doubled."""

import json
import os
import shutil
import time

import numpy as np
import pytest

from edgert import models
from edgert.data import itsc_recording
from edgert.replay import replay
from test_daemon import HEALTHY, Running, windows_per_recording


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    shutil.copytree(models.resolve("motor-ae"), d)
    return d


def publish_manifest(d, change):
    m = json.loads((d / "manifest.json").read_text())
    change(m)
    tmp = d / "manifest.json.tmp"
    tmp.write_text(json.dumps(m))
    os.replace(tmp, d / "manifest.json")  # atomic, as a publisher should


def model_events(r, state=None):
    return [p for k, s, p in r.events if k == "model" and (state is None or p["state"] == state)]


def wait_for(r, pred, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r.collect(0.1)
        if pred():
            return True
    return False


def stream(r, sensor, names, t0):
    pub = r.publisher(sensor)
    assert pub.wait_subscribed(5)
    res = replay([itsc_recording(n) for n in names], pub, 1000.0, realtime=False, t0_ns=t0)
    pub.close()
    return res


def test_swap_refuse_and_keep_counting(tmp_path, model_dir):
    r = Running(tmp_path, "ipc", "sub", model=str(model_dir), watch_model_s=0.1)
    per = windows_per_recording(r.d.model)
    old_thr = r.d.model.threshold
    try:
        stream(r, "m1", [HEALTHY, "SC_A3_B0_C0_001"], t0=10**18)
        assert r.wait_windows(2 * per)

        # 1. a valid new model (recalibrated threshold): swapped in, used from the next batch
        publish_manifest(model_dir, lambda m: m.__setitem__("threshold", old_thr * 2))
        assert wait_for(r, lambda: model_events(r, "swapped")), r.events[-3:]
        sw = model_events(r, "swapped")[0]
        assert sw["running"]["threshold"] == old_thr * 2 and sw["previous"]["threshold"] == old_thr
        stream(r, "m1", ["SC_A3_B0_C0_002"], t0=10**18 + 10 * 10**9)
        assert r.wait_windows(3 * per)
        r.collect(0.3)
        after = [p for k, s, p in r.events if k == "anomaly" and p["t_start"] >= 10**18 + 10 * 10**9]
        assert after and all(p["threshold"] == pytest.approx(old_thr * 2) for p in after)

        # 2. a corrupt model file: refused, the running model keeps going
        f = model_dir / "motor-ae_dyn.tflite"
        f.write_bytes(f.read_bytes()[:1000])
        assert wait_for(r, lambda: model_events(r, "refused"))
        assert "sha256" in model_events(r, "refused")[0]["reason"]
        stream(r, "m1", [HEALTHY], t0=10**18 + 20 * 10**9)
        assert r.wait_windows(4 * per)

        # 3. a model of another shape (hop changed): refused, needs a restart
        shutil.copy(models.resolve("motor-ae") / "motor-ae_dyn.tflite", f)  # repair the file
        publish_manifest(model_dir, lambda m: m.__setitem__("hop", 32))
        assert wait_for(r, lambda: len(model_events(r, "refused")) >= 2)
        assert "hop" in model_events(r, "refused")[-1]["reason"]
        stream(r, "m1", [HEALTHY], t0=10**18 + 30 * 10**9)
        assert r.wait_windows(5 * per)
    finally:
        final = r.close()
    assert final["model_swaps"] == 1 and final["model_refusals"] >= 2
    assert final["windows"] == 5 * per  # every window scored exactly once across swap and refusals
    assert final["batch_errors"] == 0 and final["dropped"] == 0


def test_swap_refuses_a_candidate_that_turns_detection_off(tmp_path, model_dir):
    """A manifest that loads and verifies but whose threshold (1e9) would silently turn
    detection off is refused with the cause, as is one whose normalization makes every healthy
    window an anomaly; a sane recalibration still swaps, and faults are flagged throughout."""
    r = Running(tmp_path, "ipc", "sub", model=str(model_dir), watch_model_s=0.1)
    per = windows_per_recording(r.d.model)
    old_thr = r.d.model.threshold
    t0 = 10**18
    try:
        # 1. threshold 1e9: refused, naming the manifest, the field and the bound
        publish_manifest(model_dir, lambda m: m.__setitem__("threshold", 1e9))
        assert wait_for(r, lambda: model_events(r, "refused")), r.events[-3:]
        why = model_events(r, "refused")[0]["reason"]
        assert "manifest.json: field 'threshold' is 1e+09" in why and "4x" in why, why
        assert model_events(r, "refused")[0]["running"]["threshold"] == old_thr
        stream(r, "m1", ["SC_A3_B0_C0_001"], t0=t0)  # a fault: still flagged, old threshold
        assert r.wait_windows(per)
        r.collect(0.3)
        flagged = [p for k, s, p in r.events if k == "anomaly"]
        assert len(flagged) > 0.5 * per and all(p["threshold"] == pytest.approx(old_thr)
                                               for p in flagged)

        # 2. a threshold in range but a normalization that flags every healthy window
        def shift_mean(m):
            m["threshold"] = old_thr * 1.5
            m["normalization"]["mean"] = [v + 3 * s for v, s in zip(
                m["normalization"]["mean"], m["normalization"]["std"])]
        publish_manifest(model_dir, shift_mean)
        assert wait_for(r, lambda: len(model_events(r, "refused")) >= 2)
        why = model_events(r, "refused")[1]["reason"]
        assert "flags 100% of 295 windows of the shipped healthy ITSC recordings" in why, why

        # 3. a sane recalibration (2x, the normalization as shipped): swapped
        shipped = json.loads((models.resolve("motor-ae") / "manifest.json").read_text())
        publish_manifest(model_dir, lambda m: m.update(threshold=old_thr * 2,
                                                       normalization=shipped["normalization"]))
        assert wait_for(r, lambda: model_events(r, "swapped")), r.events[-3:]
        assert model_events(r, "swapped")[0]["running"]["threshold"] == old_thr * 2
        stream(r, "m1", [HEALTHY, "SC_A3_B0_C0_002"], t0=t0 + 10 * 10**9)
        assert r.wait_windows(3 * per)
        r.collect(0.3)
    finally:
        final = r.close()
    assert final["model_swaps"] == 1 and final["model_refusals"] == 2
    assert final["windows"] == 3 * per and final["dropped"] == 0


@pytest.mark.parametrize("kind", ["fixed", "spot", "dspot", "quantile"])
def test_swap_rebases_the_threshold(tmp_path, model_dir, kind):
    """A new model (calibrated threshold 2x) swapped under each thresholder: what was learned
    from the old model's scores is dropped, every sensor's threshold is the NEW calibrated value
    (and adapts from there), and the ceiling is 3x the new value, not 3x the old."""
    r = Running(tmp_path, "ipc", "sub", model=str(model_dir), watch_model_s=0.1, threshold=kind)
    per = windows_per_recording(r.d.model)
    old, new = r.d.model.threshold, 2 * r.d.model.threshold
    t0, n_rec = 10**18, 20  # 20 x 59 windows per sensor: past the 1000-score warm-up
    try:
        for sensor in ("m1", "m2"):
            stream(r, sensor, [HEALTHY] * n_rec, t0=t0)
        assert r.wait_windows(2 * n_rec * per, timeout=60)
        slots = np.array([r.d.names.index("m1"), r.d.names.index("m2")])
        before = r.d.threshold.values(slots)
        if kind == "fixed":
            assert before.tolist() == [np.float32(old)] * 2
        else:  # learned from the old model's scores
            assert np.all(before != np.float32(old)), before

        publish_manifest(model_dir, lambda m: m.__setitem__("threshold", new))
        assert wait_for(r, lambda: model_events(r, "swapped")), r.events[-3:]
        # nothing streamed since: every sensor (and every free slot) starts at the new value
        every = np.arange(r.d.cfg.max_sensors)
        assert np.all(r.d.threshold.values(every) == np.float32(new)), r.d.threshold.values(slots)

        t1 = t0 + 100 * 10**9  # a fault after the swap: decided against the new threshold
        stream(r, "m1", ["SC_A3_B0_C0_002"], t0=t1)
        assert r.wait_windows((2 * n_rec + 1) * per)
        r.collect(0.3)
        after = [p for k, s, p in r.events if k == "anomaly" and p["t_start"] >= t1]
        assert after
        if kind == "dspot":  # the new value plus the moving mean of the new model's scores
            assert all(p["threshold"] >= new * (1 - 1e-6) for p in after)
        else:
            assert all(p["threshold"] == pytest.approx(new) for p in after)
    finally:
        final = r.close()
    assert final["model_swaps"] == 1 and final["windows"] == (2 * n_rec + 1) * per
    assert final["batch_errors"] == 0 and final["dropped"] == 0
    if kind == "fixed":
        return
    # The ceiling follows the new model. The same thresholder the daemon swapped (the daemon
    # has stopped) learns, as normal, scores of a level 5x the old calibrated value: between
    # 3x old (the old ceiling) and 3x new. Its threshold rises past the old ceiling and stops
    # at 3x new, so a score of 4.5x old, above the old ceiling, is not flagged.
    th = r.d.threshold
    s = int(slots[1])
    x = old * (5 + np.random.default_rng(0).exponential(2.0, 1500))
    for i in range(0, x.size, 32):
        b = x[i:i + 32]
        th.learn(np.full(b.size, s), b, np.zeros(b.size, bool))
    lift = th._m[s] if kind == "dspot" else 0.0  # DSPOT caps the excess over its moving mean
    v = float(th.values(np.array([s]))[0])
    assert v == pytest.approx(3 * new + lift, rel=1e-6)
    assert v > 4.5 * old + lift > 3 * old + lift


def test_validate_candidate_gates(model_dir, monkeypatch):
    """The gates one by one, through the candidate's own backend: the threshold factor both
    ways, healthy windows flagged, and the fault-detection gate naming the weakest kinds."""
    import dataclasses

    from edgert import backends, modelcheck

    m = models.load(model_dir)
    be = backends.create("cpu", m, max_batch=32)
    try:
        ok = modelcheck.validate_candidate(m, m, be)
        assert ok["normal_flagged"] <= 0.05 and ok["injected_detected"] >= 0.9
        assert ok["itsc_faults_detected"] >= 0.9
        for f in (1 / 4.5, 4.5, 1e-9 / m.threshold):
            with pytest.raises(modelcheck.CandidateError, match="field 'threshold'"):
                modelcheck.validate_candidate(m, dataclasses.replace(m, threshold=m.threshold * f),
                                              be)
        assert modelcheck.validate_candidate(m, dataclasses.replace(m, threshold=m.threshold * 3.9),
                                             be)["threshold_ratio"] == 3.9
        monkeypatch.setattr(modelcheck, "MIN_FAULT_DETECTED", 0.9)
        with pytest.raises(modelcheck.CandidateError,
                           match=r"detects \d+% of injected faults .*lowest: imbalance"):
            modelcheck.validate_candidate(m, dataclasses.replace(m, threshold=m.threshold * 3), be)
        # another sensor set: edgert ships no windows of it, the threshold gate alone applies
        other = dataclasses.replace(m, channels=["x", "y", "z"], threshold=m.threshold * 3)
        assert modelcheck.validate_candidate(m, other, be)["normal_flagged"] is None
    finally:
        be.close()
