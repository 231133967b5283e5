"""Shipped model variants and ``edgert train``.

Runtime-only (LiteRT, no TensorFlow) except ``test_reduced_training_reproduces``, which trains
and is skipped where TensorFlow is not importable (CI installs no TF).

Packed vs b1 is exact, not "within tolerance": the packed variant is the b1 flatbuffer with its
activation shapes ``[1, 1, w, c]`` rewritten to ``[1, B, w, c]`` (``edgert.train.
packed_from_b1``): the same int8 weights, biases and quantization parameters, and every kernel
is ``(1, k)``, so each row goes through the same integer arithmetic as a b1 invoke.
"""

import importlib.util
import json
import shlex
import shutil
import sys

import numpy as np
import pytest

from edgert import models
from edgert.backends import _litert
from edgert.data import itsc_names, itsc_recording
from edgert.train import main as train_main
from edgert.train import make_windows, packed_from_b1

SHIPPED = ["motor-ae", "motor-cnn"]


def _interp(path):
    Interpreter = _litert.find()[0]
    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    return it


def _windows(m, n_rec=13):
    """Real windows from every 5th shipped recording, normalized and quantized like the
    ``normalize_quantize`` kernel (float64, same operation order)."""
    names = itsc_names()[::5][:n_rec]
    x = np.concatenate([make_windows(itsc_recording(n), m.window, m.hop) for n in names])
    v = m.variants["b1"].input
    z = (x.astype(np.float64) - m.mean) * m.inv_std / v.scale + v.zero_point
    return np.clip(np.rint(z), -128, 127).astype(np.int8)[:, None]  # [n, 1, W, C]


def _score(m, q, out):
    """Autoencoder: the runtime's score per window; classifier: argmax of the logits."""
    if m.kind == "classifier":
        return out.reshape(len(out), -1).argmax(axis=1)
    vi, vo = m.variants["b1"].input, m.variants["b1"].output
    x = (q.astype(np.float64) - vi.zero_point) * vi.scale
    y = (out.reshape(q.shape).astype(np.float64) - vo.zero_point) * vo.scale
    return ((x - y) ** 2).mean(axis=(1, 2)).mean(axis=1)


@pytest.mark.parametrize("name", SHIPPED)
def test_packed_equals_b1_invokes(name):
    m = models.load(name)
    pv, bv = m.variants["packed"], m.variants["b1"]
    B = m.manifest["variants"]["packed"]["rows"]
    assert m.manifest["variants"]["packed"]["layout"] == "packed"
    assert pv.input.shape == (1, B, m.window, m.n_channels) and pv.batch == 1
    assert (pv.input.scale, pv.input.zero_point) == (bv.input.scale, bv.input.zero_point)
    assert (pv.output.scale, pv.output.zero_point) == (bv.output.scale, bv.output.zero_point)
    q = _windows(m)
    n = len(q) - len(q) % B + 3  # whole packs and a partial last one (zero rows after it)
    q = q[:n]
    b1 = _interp(bv.path)
    bi, bo = b1.get_input_details()[0]["index"], b1.get_output_details()[0]["index"]
    ref = []
    for w in q:  # one invoke per window
        b1.set_tensor(bi, w[None])
        b1.invoke()
        ref.append(b1.get_tensor(bo)[0].copy())
    ref = np.stack(ref)
    pk = _interp(pv.path)
    pi, po = pk.get_input_details()[0]["index"], pk.get_output_details()[0]["index"]
    got = []
    for s in range(0, n, B):
        k = min(B, n - s)
        buf = np.zeros((1, B, m.window, m.n_channels), np.int8)
        buf[0, :k] = q[s:s + k, 0]
        pk.set_tensor(pi, buf)
        pk.invoke()
        out = pk.get_tensor(po)
        assert out.shape[:2] == (1, B)
        got.append(out[0, :k].copy())
    got = np.concatenate(got).reshape(ref.shape)
    assert np.array_equal(got, ref)  # exact: same int8 model, rows independent
    assert np.array_equal(_score(m, q, got), _score(m, q, ref))


@pytest.mark.parametrize("name", SHIPPED)
def test_packed_file_is_b1_rewritten(name):
    """The shipped packed file is exactly ``packed_from_b1`` of the shipped b1 file."""
    m = models.load(name)
    B = m.manifest["variants"]["packed"]["rows"]
    assert packed_from_b1(m.variants["b1"].path.read_bytes(), B) == \
        m.variants["packed"].path.read_bytes()


def test_manifests_record_variants_and_fidelity():
    ae, cnn = models.load("motor-ae"), models.load("motor-cnn")
    for m in (ae, cnn):
        assert set(m.variants) >= {"dynamic", "b1", "packed"}
        assert m.variants["dynamic"].input.shape == (-1, 1, m.window, m.n_channels)
        assert m.variants["b1"].input.shape == (1, 1, m.window, m.n_channels)
        t = m.manifest["training"]
        assert t["command"].startswith("edgert train ") and isinstance(t["seed"], int)
        assert len(t["data_sha256"]) == 64
        assert m.manifest["fidelity"]["packed_equals_b1"] is True
        for v in ("b1", "packed"):
            assert t["edgetpu_check"][v]["mappable"] is True
            assert not any(op.startswith(("SHAPE", "TILE", "RESHAPE")) for op in t["ops"][v])
    assert cnn.kind == "classifier" and cnn.manifest["output"] == "logits"
    assert len(cnn.class_names) == 13 and "SC_HLT" in cnn.class_names
    assert (cnn.window, cnn.hop, cnn.channels) == (ae.window, ae.hop, ae.channels)
    assert np.allclose(cnn.mean, cnn.manifest["normalization"]["mean"])
    assert cnn.manifest["fidelity"]["int8_float_argmax_agreement"] >= 0.99
    assert cnn.manifest["fidelity"]["cv_held_out_int8_float_argmax_agreement"] >= 0.99
    assert cnn.variants["dynamic"].output.shape == (-1, 1, 1, 13)
    assert ae.manifest["fidelity"]["float_int8_decision_agreement"] >= 0.99


def _copy(tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(models.resolve(name), dst, ignore=shutil.ignore_patterns("folds"))
    return dst


def _edit(d, fn):
    p = d / "manifest.json"
    m = json.loads(p.read_text())
    fn(m)
    p.write_text(json.dumps(m))


@pytest.mark.parametrize("change, match", [
    (lambda m: m["variants"]["packed"].__setitem__("rows", 8), "rows 8"),
    (lambda m: m["variants"]["packed"].pop("rows"), "'rows'"),
    (lambda m: m["variants"]["packed"].pop("layout"), "need \\[1, 1, 64, 3\\]"),
    (lambda m: m["variants"]["packed"].__setitem__("batch", 16), "'batch' must be 1"),
])
def test_loader_checks_packed_shape(tmp_path, change, match):
    d = _copy(tmp_path, "motor-cnn")
    models.load(d)
    _edit(d, change)
    with pytest.raises(models.ModelError, match=match):
        models.load(d)


def test_compiled_variant_inherits_packed_layout(tmp_path):
    """An ``edgert compile`` entry names its source variant; the shape check uses its layout."""
    d = _copy(tmp_path, "motor-ae")

    def add(m):
        v = dict(m["variants"]["packed"])
        for k in ("layout", "rows"):
            v.pop(k)
        v["source_variant"] = "packed"
        m["variants"]["edgetpu"] = v

    _edit(d, add)
    assert models.load(d).variants["edgetpu"].input.shape[:2] == (1, 16)


def test_train_without_tensorflow_exits_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import tensorflow -> ImportError
    rc = train_main(["--kind", "classifier", "--out", str(tmp_path / "m")])
    assert rc == 2
    assert "pip install 'edgert[train]'" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------------------------------------
# training (needs TensorFlow)
# ---------------------------------------------------------------------------------------------

def _reduced_data(path):
    """A small ITSC subset: 3 classes, 400 samples per recording; SC_HLT with 3 recordings
    (enough for the autoencoder's leave-one-recording-out calibration)."""
    arrays = {}
    for cls, reps in (("SC_HLT", (1, 2, 3)), ("SC_A0_B0_C4", (1, 2)), ("SC_A4_B0_C0", (1, 2))):
        for r in reps:
            n = f"{cls}_{r:03d}"
            arrays[n] = np.asarray(itsc_recording(n)[:400])
    np.savez(path, **arrays)


def _comparable(m):
    """The manifest without what legitimately changes between runs (timings, --out)."""
    m = json.loads(json.dumps(m))
    t = m["training"]
    for k in ("seconds", "litert_us_per_window", "command"):
        t.pop(k, None)
    return m


def _stream_csv(path):
    """One CSV stream as users have them: a time column, two channels, a label column."""
    x = np.concatenate([itsc_recording("SC_HLT_001")[:, :2],
                        itsc_recording("SC_A4_B0_C0_001")[:300, :2]])
    lab = ["normal"] * 1000 + ["fault"] * 300
    with open(path, "w") as f:
        f.write("time,ia,ib,state\n")
        for i, (row, y) in enumerate(zip(x, lab)):
            f.write(f"{i / 1000:.3f},{float(row[0])!r},{float(row[1])!r},{y}\n")


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                    reason="TensorFlow is not installed (pip install 'edgert[train]'); "
                           "CI does not install it")
@pytest.mark.parametrize("kind, data, extra", [
    ("classifier", "npz", ["--channels", "ia,ib,ic", "--cv", "2"]),
    ("autoencoder", "npz", ["--channels", "ia,ib,ic", "--cv", "0"]),
    ("autoencoder", "csv", ["--labels", "state"]),
])
def test_reduced_training_reproduces(tmp_path, kind, data, extra):
    """Train a reduced model (2 epochs, little data), then run the command recorded in its
    manifest again: same .tflite bytes, same manifest (timings aside)."""
    if data == "npz":
        data = tmp_path / "small.npz"
        _reduced_data(data)
    else:
        data = tmp_path / "stream.csv"
        _stream_csv(data)
    out1 = tmp_path / "run1"
    args = ["--data", str(data), "--kind", kind, "--window", "64", "--hop", "16",
            "--out", str(out1), "--name", f"t-{kind}", "--seed", "3", "--epochs", "2", *extra]
    assert train_main(args) == 0
    m1 = json.loads((out1 / "manifest.json").read_text())
    cmd = shlex.split(m1["training"]["command"])
    assert cmd[:2] == ["edgert", "train"] and "--seed" in cmd and "3" in cmd
    out2 = tmp_path / "run2"
    cmd[cmd.index("--out") + 1] = str(out2)
    assert train_main(cmd[2:]) == 0
    m2 = json.loads((out2 / "manifest.json").read_text())
    assert m1["files"] == m2["files"]  # bit-identical model files
    assert m1["float_model"]["file"] == f"t-{kind}_float.keras" in m1["files"]  # for retrain
    assert _comparable(m1) == _comparable(m2)
    loaded = models.load(out2)
    assert set(loaded.variants) == {"dynamic", "b1", "packed"}
    if kind == "classifier":
        assert loaded.class_names == ["SC_A0_B0_C4", "SC_A4_B0_C0", "SC_HLT"]
        folds = sorted(p.name for p in (out2 / "folds").iterdir())
        assert folds == ["rep_001", "rep_002", "rep_003"]
        for f in folds:
            models.load(out2 / "folds" / f)
    elif str(data).endswith(".csv"):  # one stream: chronological hold-back calibration
        assert loaded.channels == ["ia", "ib"] and loaded.threshold > 0
        assert m2["calibration"]["normal_label"] == "normal"
        assert "fault" in m2["training"]["metrics"]["detection_rate"]
    else:
        assert loaded.threshold > 0
        assert m2["training"]["train_recordings"] == ["SC_HLT_001", "SC_HLT_002"]


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                    reason="TensorFlow is not installed (pip install 'edgert[train]'); "
                           "CI does not install it")
def test_one_autoencoder_builder_rebuilds_the_shipped_motor_ae_variants():
    """`build_ae` (the one conv-autoencoder builder, spec from `ae_spec`) with the shipped
    float weights converts to the shipped dynamic, b1 and packed files, byte for byte: same
    layers, names and graph as the model ``edgert train`` shipped. (Conversion calibrates on
    float activations: on another CPU or TensorFlow than the manifest's, the last bits may
    differ; see the module docstring of edgert.train.)"""
    import hashlib

    from edgert.train import (AEConfig, ae_spec, build_ae, export_variants, fit_normalization,
                              load_tf, normalize, representative_set)

    d = models.resolve("motor-ae")
    m = json.loads((d / "manifest.json").read_text())
    cfg = AEConfig(**{k: tuple(v) if isinstance(v, list) else v
                      for k, v in m["training"]["config"].items()})
    shipped = load_tf().keras.models.load_model(d / m["float_model"]["file"], compile=False)
    model = build_ae(ae_spec(cfg))
    assert [ly.name for ly in model.layers] == [ly.name for ly in shipped.layers]
    model.set_weights(shipped.get_weights())
    recs = [itsc_recording(n) for n in cfg.train_recordings]  # as edgert.train.autoencoder
    mean, std = fit_normalization(np.concatenate([make_windows(x, cfg.window, cfg.hop)
                                                  for x in recs]))
    x_fit = normalize(np.concatenate([make_windows(x, cfg.window, cfg.train_hop) for x in recs]),
                      mean, std)
    ex = export_variants(cfg, model, representative_set(cfg, x_fit, m["training"]["seed"]))
    for v, content in (("dynamic", ex.dyn_bytes), ("b1", ex.b1_bytes),
                       ("packed", ex.packed_bytes)):
        assert hashlib.sha256(content).hexdigest() == m["files"][m["variants"][v]["file"]], v
