"""The temporal model kinds (``edgert train --kind lstm-ae|forecast``, issue 15): tiny models
trained on synthetic three-phase data, loaded, scored by `runtime.Runner`, `score_array` and
`edgert.Pipeline.push`, their manifests validated, and their ops mapped by ``check-model``.
Training needs TensorFlow: those tests skip without it (CI installs none)."""

import importlib.util
import json

import numpy as np
import pytest

import edgert
from edgert import edgetpu_check, models, runtime

needs_tf = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                              reason="TensorFlow is not installed (pip install 'edgert[train]'); "
                                     "CI does not install it")
PERIOD = 20


def _phases(n, phase, rng, noise=0.05):
    t = np.arange(n)
    x = np.stack([np.sin(2 * np.pi * t / PERIOD + phase + 2 * np.pi * c / 3) for c in range(3)], 1)
    return (x + noise * rng.standard_normal(x.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(0)
    p = tmp_path_factory.mktemp("kinds") / "synth.npz"
    np.savez(p, **{f"normal_{i:03d}": _phases(500, rng.uniform(0, 6.28), rng) for i in (1, 2, 3)})
    return p


def _train(data, out, kind, window, extra=(), epochs=4):
    from edgert.train.cli import main as train_main

    args = ["--data", str(data), "--kind", kind, "--window", str(window), "--hop", "8",
            "--out", str(out), "--seed", "0", "--epochs", str(epochs), *extra]
    assert train_main(args) == 0
    return models.load(out)


@pytest.fixture(scope="module")
def forecast(data, tmp_path_factory):
    return _train(data, tmp_path_factory.mktemp("fc") / "fc", "forecast", 32, ["--target-rows", "8"])


@pytest.fixture(scope="module")
def lstm(data, tmp_path_factory):
    return _train(data, tmp_path_factory.mktemp("lstm") / "lstm", "lstm-ae", 16, epochs=10)


def _deq(q, scale, zp):
    return (q.astype(np.float64) - zp) * scale


@needs_tf
def test_forecast_manifest_and_variants(forecast):
    m = forecast
    assert m.kind == "forecast" and m.target_rows == 8 and m.threshold > 0
    assert set(m.variants) == {"dynamic", "b1"}
    assert m.variants["dynamic"].output.shape == (-1, 1, 8, 3)
    assert m.variants["b1"].output.shape == (1, 1, 8, 3)
    assert m.manifest["calibration"]["recordings"] == ["normal_001", "normal_002"]


@needs_tf
def test_forecast_scores_exactly_the_target_rows(forecast):
    """The score is the per-channel MSE of the dequantized output against the input's last
    h rows, nothing else (what ran, int8 rounding included)."""
    r = runtime.Runner(forecast, "cpu", max_batch=8)
    x = _phases(32 + 7 * 8, 0.3, np.random.default_rng(5))
    ring, cap = runtime.ring_of(x)
    b = r.score_windows(ring, cap, np.arange(8, dtype=np.int64) * 8)
    v = r.variant
    want = ((_deq(b.inq[:, :, 24:], v.input.scale, v.input.zero_point)
             - _deq(b.outq, v.output.scale, v.output.zero_point)) ** 2).mean(axis=(1, 2))
    assert b.outq.shape == (8, 1, 8, 3)
    np.testing.assert_allclose(b.ch_err, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(b.scores, want.mean(axis=1), rtol=1e-5, atol=1e-7)
    r.close()


def _score_faults(model, W):
    """Scores of normal windows, and of the same windows with a gain change (x1.5 on phase 0)
    in their newest quarter, by `score_array` (the runtime's path)."""
    rng = np.random.default_rng(7)
    x = _phases(400, 1.0, rng)
    normal = runtime.score_array(model, x, hop=W).scores
    bad = x.copy()
    for s in range(0, 400 - W + 1, W):
        bad[s + W - W // 4:s + W, 0] *= 1.5
    return normal, runtime.score_array(model, bad, hop=W).scores


@needs_tf
@pytest.mark.parametrize("which", ["forecast", "lstm"])
def test_gain_fault_scores_above_normal(which, request):
    m = request.getfixturevalue(which)
    normal, bad = _score_faults(m, m.window)
    assert len(normal) == len(bad) > 5
    assert np.median(bad) > 2 * np.median(normal)
    # the thresholds of these few-epoch models are loose: no decision rate asserted beyond this
    assert (bad > m.threshold).mean() >= (normal > m.threshold).mean()


@needs_tf
def test_forecast_fault_in_the_input_part_only_is_not_the_score(forecast):
    """A spike in the rows the forecaster only reads (not the predicted ones) moves the score
    through the forecast alone: the spike itself is never compared. A spike of the same size
    in the predicted rows scores far higher."""
    x = _phases(32, 0.5, np.random.default_rng(9))
    past, future = x.copy(), x.copy()
    past[10, 1] += 3.0
    future[28, 1] += 3.0
    s = [runtime.score_array(forecast, a, hop=32).scores[0] for a in (x, past, future)]
    assert s[2] > 3 * s[1]


@needs_tf
@pytest.mark.parametrize("which", ["forecast", "lstm"])
def test_pipeline_push_scores_the_kind(which, request):
    m = request.getfixturevalue(which)
    x = _phases(300, 0.2, np.random.default_rng(11))
    p = edgert.Pipeline(m.dir, backend="cpu")
    try:
        offline = p.score(x)
        got = []
        for a in range(0, len(x), 50):
            got += p.push("s1", x[a:a + 50], a * 1000, 1000)
        got += p.flush()
    finally:
        p.close()
    assert len(got) == len(offline) > 0
    assert np.allclose([d.score for d in got], offline.score, rtol=0, atol=0)


@needs_tf
def test_lstm_manifest(lstm):
    assert lstm.kind == "lstm-ae" and lstm.target_rows is None
    assert lstm.variants["dynamic"].output.shape == (-1, 1, 16, 3)
    ops = {o.split("/")[0] for o in lstm.manifest["variants"]["b1"]["ops"]}
    # unrolled by hand (unrolled_lstm): no WHILE, UNPACK, SPLIT, PACK or TILE
    assert {"FULLY_CONNECTED", "LOGISTIC", "TANH", "MUL"} <= ops
    assert not ops & {"WHILE", "UNIDIRECTIONAL_SEQUENCE_LSTM", "UNPACK", "SPLIT", "PACK", "TILE",
                      "QUANTIZE", "DEQUANTIZE"}


@needs_tf
@pytest.mark.parametrize("which", ["forecast", "lstm"])
def test_check_model_maps_the_ops(which, request):
    m = request.getfixturevalue(which)
    r = edgetpu_check.check(m.variants["b1"].path)
    ops = [o.op for o in r.ops]
    assert len(ops) == len(m.manifest["variants"]["b1"]["ops"])
    # forecast: STRIDED_SLICE (strides 1) and CONV_2D; lstm-ae: the hand-unrolled steps
    # (STRIDED_SLICE, FULLY_CONNECTED, ADD, LOGISTIC, TANH, MUL, RESHAPE), a CONCATENATION
    # and a CONV_2D: all in Coral's table, so all on the TPU by the documentation
    assert r.mappable, edgetpu_check.format_report(r)
    text = edgetpu_check.format_report(r)
    assert ("TPU" in text) and m.variants["b1"].path.name in text


def _manifest(tmp_path, model, edit):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(model.dir, d)
    man = json.loads((d / "manifest.json").read_text())
    edit(man)
    (d / "manifest.json").write_text(json.dumps(man))
    return d


@needs_tf
@pytest.mark.parametrize("edit, match", [
    (lambda m: m.pop("target_rows"), "target_rows"),
    (lambda m: m.update(target_rows=32), "target_rows"),
    (lambda m: m["variants"]["b1"]["output"].update(shape=[1, 1, 32, 3]), "output"),
    (lambda m: m.pop("threshold"), "threshold"),
])
def test_loader_refuses_bad_forecast_manifests(tmp_path, forecast, edit, match):
    with pytest.raises(models.ModelError, match=match):
        models.load(_manifest(tmp_path, forecast, edit))


def test_kinds_are_known_without_tensorflow():
    assert {"lstm-ae", "forecast"} <= set(models.KINDS)
    assert {"lstm-ae", "forecast"} <= set(models.ERROR_KINDS)


@needs_tf
def test_swap_gates_check_the_new_kinds(forecast):
    """``modelcheck.validate_candidate`` (the daemon's swap gate) checks a forecast candidate's
    threshold against the running model's, as it does an autoencoder's."""
    import dataclasses

    from edgert import backends, modelcheck

    b = backends.create("cpu", forecast, max_batch=8)
    try:
        ok = modelcheck.validate_candidate(forecast, forecast, b)
        assert ok["threshold_ratio"] == 1.0
        running = dataclasses.replace(forecast, threshold=forecast.threshold * 10)
        with pytest.raises(modelcheck.CandidateError, match="threshold"):
            modelcheck.validate_candidate(running, forecast, b)
    finally:
        b.close()
