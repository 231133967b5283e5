"""Attribution of flagged windows (``edgert.scoring``): which channel departs from its own normal.

Synthetic three-phase windows check the function's contract (scale invariance, a naturally
noisy channel does not dominate, the fault-angle fit, the manifest field's checks and the
fallback); the shipped int8 motor-ae through the real daemon checks the result on real ITSC
faults (one recording per phase).
"""

import json
import shutil

import numpy as np
import pytest

from edgert import models
from edgert.data import itsc_recording
from edgert.evaluate.itsc import RuntimeScorer
from edgert.scoring import (PhasorAttribution, ReconstructionScorer, attribution_field,
                            channel_shares, dominant_frequency, fit_fault_angle)

FS, F0, W = 1000.0, 60.0, 64


def three_phase(n, amp=(1.0, 1.0, 1.0), lead_deg=(0.0, 0.0, 0.0), noise=(0.02, 0.02, 0.02),
                seed=0):
    """``n`` windows ``[n, W, 3]`` of a balanced 60 Hz three-phase signal at random start
    phases, channel c with amplitude ``amp[c]``, advanced by ``lead_deg[c]``, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(W) / FS
    phi = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    shift = np.radians([0.0, -120.0, 120.0]) + np.radians(lead_deg)
    x = np.asarray(amp) * np.cos(2 * np.pi * F0 * t[None, :, None] + phi + shift)
    return x + rng.normal(size=x.shape) * np.asarray(noise)


def reference(normal, angle=0.0):
    f = attribution_field(normal, FS, F0)
    return PhasorAttribution(f["f0_hz"], FS, W, [complex(*p) for p in f["normal_phasor"]],
                             f["normal_spread"], angle), f


def test_dominant_frequency_of_normal_data():
    t = np.arange(3000) / FS
    x = np.stack([np.sin(2 * np.pi * 59.7 * t + k) for k in range(3)], axis=1)
    assert dominant_frequency([x], FS) == pytest.approx(59.7, abs=0.05)


def test_invariant_to_a_channel_scale():
    """Each channel is measured against its own normal: a channel that is 10x larger (so its
    reconstruction error is naturally 100x larger) does not dominate, and the attribution is
    the same as for the unscaled data."""
    normal = three_phase(400, seed=1)
    fault = three_phase(50, amp=(1.2, 1.0, 1.0), seed=2)  # channel 0 grew by 20 %
    att, _ = reference(normal)
    big = np.array([1.0, 10.0, 1.0])
    att_big, _ = reference(normal * big)
    err = ((fault - fault.mean(axis=1, keepdims=True)) ** 2).mean(axis=1)  # stand-in ch_err
    fallback = channel_shares(err)
    s = att.shares(fault, fallback)
    s_big = att_big.shares(fault * big, channel_shares(err * big ** 2))
    assert np.allclose(s, s_big, atol=1e-4)
    assert (s.argmax(axis=1) == 0).all()
    # what the error shares say about the scaled data: the large channel, every time
    assert (channel_shares(err * big ** 2).argmax(axis=1) == 1).all()


def test_a_naturally_noisy_channel_does_not_dominate():
    """Channel 2 is 20x noisier than the others on normal data; a 2 % rise of channel 0 is
    named, though channel 2's departure (not scaled by its normal spread) is larger in most
    windows."""
    noisy = (0.01, 0.01, 0.2)
    att, f = reference(three_phase(600, noise=noisy, seed=3))
    assert f["normal_spread"][2] > 3 * f["normal_spread"][0]
    fault = three_phase(200, amp=(1.02, 1.0, 1.0), noise=noisy, seed=4)
    top = att.shares(fault, np.full((200, 3), 1 / 3)).argmax(axis=1)
    assert (top == 0).mean() >= 0.9
    raw = np.abs(att.departure(fault) * att.spread)  # departures not scaled by normal spread
    assert (raw.argmax(axis=1) == 2).mean() > 0.5


def test_fault_angle_fit_finds_the_direction_of_the_fault():
    """Faults in channel c advance c by 10 degrees and delay the next channel (c + 1) as much,
    both amplitudes grow alike: amplitude alone (angle 0) cannot tell c from c + 1, the fitted
    angle (+90: the channel that leads) can."""
    normal = three_phase(400, seed=5)
    att, _ = reference(normal)
    dep, faulty = [], []
    for c in range(3):
        lead = np.zeros(3)
        lead[c], lead[(c + 1) % 3] = 10.0, -10.0
        amp = np.ones(3)
        amp[c] = amp[(c + 1) % 3] = 1.15
        dep.append(att.departure(three_phase(100, amp=amp, lead_deg=lead, seed=6 + c)))
        faulty.append(np.full(100, c))
    dep, faulty = np.concatenate(dep), np.concatenate(faulty)
    angle, hit, per = fit_fault_angle(dep, faulty)
    assert 60 <= angle <= 120 and hit >= 0.95 and min(per) >= 0.95
    at_zero = ((dep.real).argmax(axis=1) == faulty).mean()
    assert at_zero < 0.75


def test_no_fundamental_is_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="fundamental"):
        attribution_field(rng.normal(size=(200, W, 3)), FS, F0)


@pytest.fixture
def ae_copy(tmp_path):
    """A copy of the shipped motor-ae (without folds) whose manifest a test may edit."""
    d = tmp_path / "motor-ae"
    shutil.copytree(models.resolve("motor-ae"), d, ignore=shutil.ignore_patterns("folds"))
    return d


def _edit(d, fn):
    p = d / "manifest.json"
    m = json.loads(p.read_text())
    fn(m)
    p.write_text(json.dumps(m, indent=2) + "\n")


def test_manifest_without_the_field_falls_back_to_error_shares(ae_copy):
    x = itsc_recording("SC_A3_B0_C0_001")
    shipped = {}
    RuntimeScorer("motor-ae").run(x, shipped)
    _edit(ae_copy, lambda m: m.pop("attribution"))
    sc = RuntimeScorer(ae_copy)
    assert sc.scorer.attribution is None
    d = {}
    sc.run(x, d)
    assert np.array_equal(d["shares"], d["raw_shares"])  # today's behaviour
    assert d["departure"] is None
    assert np.array_equal(d["raw_shares"], shipped["raw_shares"])
    assert not np.array_equal(shipped["shares"], shipped["raw_shares"])


@pytest.mark.parametrize("field,value,msg", [
    ("normal_spread", [0.01, 0.0, 0.01], "attribution.normal_spread"),
    ("normal_phasor", [[1.0, 0.0], [0.5, 0.5]], "attribution.normal_phasor"),
    ("normal_phasor", [[1.0, 0.0], [0.0, 0.0], [0.5, 0.5]], "zero phasor"),
    ("f0_hz", 700.0, "attribution.f0_hz"),
    ("f0_hz", 5.0, "attribution.f0_hz"),  # less than one cycle in 64 samples at 1 kHz
    ("fault_angle_deg", "83", "attribution.fault_angle_deg"),
    ("method", "shap", "attribution.method"),
])
def test_bad_field_refused_at_load(ae_copy, field, value, msg):
    _edit(ae_copy, lambda m: m["attribution"].__setitem__(field, value))
    with pytest.raises(models.ModelError, match=msg) as e:
        models.load(ae_copy, verify=False)
    assert str(ae_copy / "manifest.json") in str(e.value)


def test_field_needs_a_sample_rate(ae_copy):
    _edit(ae_copy, lambda m: m.pop("sample_rate_hz"))
    with pytest.raises(models.ModelError, match="sample_rate_hz"):
        models.load(ae_copy, verify=False)


def test_scorer_shares_only_for_the_rows_asked():
    """``ReconstructionScorer.shares`` explains exactly rows ``idx`` of a batch (the daemon
    passes the flagged ones), the same as when each row is explained alone."""
    sc = RuntimeScorer("motor-ae")
    d = {}
    sc.run(itsc_recording("SC_A0_B0_C3_003")[:64 + 16 * 7], d)  # 8 windows: one batch
    rs = ReconstructionScorer(models.load("motor-ae"), 32)
    idx = np.array([1, 4, 6])
    got = rs.shares(sc.buf, d["ch_err"], idx)
    one = np.concatenate([rs.shares(sc.buf, d["ch_err"], np.array([i])) for i in idx])
    assert got.shape == (3, 3) and np.allclose(got.sum(axis=1), 1, atol=1e-5)
    assert np.array_equal(got, one)
    assert np.array_equal(got, d["shares"][idx])
    assert rs.shares(sc.buf, d["ch_err"], np.array([], np.int64)).shape == (0, 3)


def test_daemon_events_name_the_faulty_phase(tmp_path):
    """Real daemon, real ZeroMQ, shipped int8 motor-ae: the anomaly events of a phase-A, a
    phase-B and a phase-C short circuit name that phase first (>= 90 % of flagged windows);
    the reconstruction error's shares (the old way) named ia in none of the phase-A windows."""
    from test_daemon import Running, stream_recordings

    faults = {"SC_A3_B0_C0_001": "ia", "SC_A0_B4_C0_002": "ib", "SC_A0_B0_C3_003": "ic"}
    r = Running(tmp_path, "ipc", "sub")
    try:
        per = (1000 - r.d.model.window) // r.d.model.hop + 1
        res = stream_recordings(r, "motor-1", list(faults))
        assert r.wait_windows(per * len(faults)), r.d.stats()
        r.collect(0.3)
    finally:
        r.close()
    anomalies = [p for k, s, p in r.events if k == "anomaly"]
    for (name, phase), (lo, hi) in zip(faults.items(), res["spans"]):
        hits = [p for p in anomalies if lo <= p["t_start"] <= hi]
        assert len(hits) >= 0.9 * per, (name, len(hits))
        named = np.mean([p["top_channels"][0] == phase for p in hits])
        assert named >= 0.9, (name, named)
        assert all(abs(sum(p["contributions"]) - 1) < 1e-4 for p in hits)
        if phase == "ia":
            old = np.array([p["channel_error"] for p in hits]).argmax(axis=1)
            assert (old == 0).mean() < 0.1


def test_compiled_phasor_shares_match_numpy():
    """`kernels.phasor_shares` (what the pipeline runs) against `PhasorAttribution.shares` (numpy):
    the same shares to float rounding, the same channel named, on real and random windows."""
    from edgert import kernels, models
    from edgert.scoring import ReconstructionScorer, channel_shares

    if kernels.phasor_shares is None:
        pytest.skip("numba unavailable")
    m = models.load("motor-ae")
    sc = ReconstructionScorer(m, 32)
    if sc.attribution is None:
        pytest.skip("motor-ae has no attribution field")
    rng = np.random.default_rng(0)
    for trial in range(20):
        inp = rng.integers(-128, 128, size=(32, 1, m.window, m.n_channels)).astype(np.int8)
        if trial % 2:  # a sine per channel: phasors of the size the model sees
            t = np.arange(m.window)[:, None]
            x = 60 * np.sin(2 * np.pi * t / 20 + rng.uniform(0, 6, (1, m.n_channels)))
            inp[:] = np.clip(np.rint(x * rng.uniform(0.5, 1.5, (32, 1, 1, m.n_channels))), -128, 127)
        idx = np.sort(rng.choice(32, size=int(rng.integers(1, 33)), replace=False))
        raw = channel_shares(rng.uniform(0, 1, (len(idx), m.n_channels)).astype(np.float32))
        want = sc.attribution.shares(sc.windows(inp, idx), raw)
        got = kernels.phasor_shares(inp, idx.astype(np.int64), sc.in_zp, sc.in_scale, sc.attribution.basis,
                                    sc.attribution.normal, sc.attribution.spread, sc.attribution.turn, raw,
                                    np.empty_like(raw))
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
        assert (got.argmax(axis=1) == want.argmax(axis=1)).all()
