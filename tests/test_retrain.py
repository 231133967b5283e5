"""``edgert retrain`` end to end: a real daemon (real sockets, the shipped int8 model, replayed
ITSC data) fills its reservoir; the model is fine-tuned on it, re-quantized, validated and
published into the directory the daemon watches, which swaps to it between two batches with
no window dropped or scored twice. A candidate trained on fault windows is refused.

Needs TensorFlow (skipped without it, e.g. in CI), except the exit-2 test.
"""

import hashlib
import importlib.util
import json
import shutil
import sys

import numpy as np
import pytest

from edgert import models, reservoir
from edgert.data import itsc_recording
from edgert.retrain import inject, split_blocks
from test_daemon import HEALTHY, Running, windows_per_recording
from test_hotswap import model_events, stream, wait_for

HAS_TF = importlib.util.find_spec("tensorflow") is not None
needs_tf = pytest.mark.skipif(not HAS_TF, reason="needs TensorFlow (pip install 'edgert[train]')")
TRAIN_HEALTHY = ["SC_HLT_001", "SC_HLT_002", "SC_HLT_003", "SC_HLT_004"]


def test_retrain_without_tensorflow_exits_2(monkeypatch, capsys, tmp_path):
    from edgert.cli import main

    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import tensorflow -> ImportError
    rc = main(["retrain", "--model", "motor-ae", "--reservoir", str(tmp_path)])
    assert rc == 2
    assert "pip install 'edgert[train]'" in capsys.readouterr().err


def test_split_and_injections():
    parts = split_blocks(500)
    allidx = np.concatenate(list(parts.values()))
    assert sorted(allidx.tolist()) == list(range(500))  # a partition
    assert len(parts["train"]) == 400 and len(parts["val"]) == 100
    assert np.all(np.diff(parts["val"])[::10] >= 1)  # blocks of 10 consecutive records
    x = np.random.default_rng(0).normal(size=(6, 64, 3)).astype(np.float32)
    mean, std = np.zeros(3), np.ones(3)
    for kind in ("imbalance", "offset", "spike"):
        y = inject(x, kind, mean, std)
        diff = np.abs(y - x).sum(axis=1)  # [n, C]
        assert np.all((diff > 0) == (np.arange(3)[None, :] == (np.arange(6) % 3)[:, None]))
    assert np.allclose(inject(x, "offset", mean, std)[0, :, 0], x[0, :, 0] + 0.5)


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


@needs_tf
def test_retrain_publish_while_serving_then_refuse_a_poisoned_candidate(tmp_path):
    from edgert.retrain import retrain

    model_dir = tmp_path / "model"
    shutil.copytree(models.resolve("motor-ae"), model_dir, ignore=shutil.ignore_patterns("folds"))
    rdir = tmp_path / "res"
    r = Running(tmp_path, "ipc", "sub", model=str(model_dir), watch_model_s=0.1,
                reservoir_dir=str(rdir), reservoir_rate=1.0, reservoir_size=2048)
    per = windows_per_recording(r.d.model)
    old_thr = r.d.model.threshold
    try:
        # 1. the daemon serves healthy recordings and keeps the normal windows
        stream(r, "m1", TRAIN_HEALTHY, t0=10**18)
        assert r.wait_windows(4 * per)
        r.d.reservoir.flush()  # (the daemon also flushes on a timer and on stop)

        # 2. retrain from that reservoir and publish into the watched directory
        res = retrain(model_dir, rdir, out=tmp_path / "cand", do_publish=True, epochs=3,
                      seed=0, log=lambda *a: None)
        assert res["passed"], res["rows"]
        assert res["published"]
        by = {row["check"]: row for row in res["rows"]}
        assert by["false alarms, held-back normal windows"]["candidate"] == 0
        assert by["ITSC SC_A3_B0_C0"]["candidate"] >= 0.95
        new = models.load(model_dir)  # sha256 of every file verified
        assert new.manifest["retrain"]["generation"] == 1
        assert new.variants["dynamic"].path.name == "motor-ae_r1_dyn.tflite"
        assert (model_dir / "motor-ae_r1_float.keras").is_file()

        # 3. the daemon swaps to it once, between batches
        assert wait_for(r, lambda: model_events(r, "swapped")), r.events[-3:]
        sw = model_events(r, "swapped")
        assert len(sw) == 1 and not model_events(r, "refused")
        assert sw[0]["previous"]["threshold"] == old_thr
        assert sw[0]["running"]["threshold"] == pytest.approx(res["threshold"])
        assert "motor-ae_r1_dyn.tflite" in sw[0]["running"]["sha256"]

        # 4. it goes on scoring: the unseen healthy recording quiet, a fault flagged
        stream(r, "m1", [HEALTHY, "SC_A3_B0_C0_001"], t0=10**18 + 10 * 10**9)
        assert r.wait_windows(6 * per)
        r.collect(0.3)
        after = [p for k, s, p in r.events if k == "anomaly" and p["t_start"] >= 10**18 + 10 * 10**9]
        assert all(p["threshold"] == pytest.approx(res["threshold"]) for p in after)
        fault_lo = 10**18 + 10 * 10**9 + 2 * 10**9  # the fault segment starts after a 1 s gap
        assert sum(p["t_start"] >= fault_lo for p in after) >= 0.5 * per
        assert sum(p["t_start"] < fault_lo for p in after) <= 0.05 * per

        # 5. a candidate fine-tuned on fault windows is refused and not published
        bad = tmp_path / "bad"
        rb = reservoir.Reservoir(bad, "motor-ae", 64, ["ia", "ib", "ic"], size=1024, rate=1.0)
        from edgert.train import make_windows

        for i in range(1, 6):
            for cls in ("SC_A3_B0_C0", "SC_A4_B0_C0"):
                w = make_windows(itsc_recording(f"{cls}_00{i}"), 64, 16)
                rb.add(w, np.arange(len(w)), "poison")
        rb.close()
        before = {p.name: _sha(p) for p in model_dir.iterdir() if p.is_file()}
        res2 = retrain(model_dir, bad, do_publish=True, epochs=3, seed=0, log=lambda *a: None)
        assert not res2["passed"] and not res2["published"]
        failed = {row["check"] for row in res2["rows"] if not row["passed"]}
        assert "ITSC SC_A3_B0_C0" in failed
        assert {p.name: _sha(p) for p in model_dir.iterdir() if p.is_file()} == before
        r.collect(0.5)
        assert len(model_events(r, "swapped")) == 1
    finally:
        final = r.close()
    assert final["model_swaps"] == 1 and final["model_refusals"] == 0
    assert final["windows"] == 6 * per  # every window scored exactly once across the swap
    assert final["batch_errors"] == 0 and final["dropped"] == 0 and final["lost_windows"] == 0


@needs_tf
def test_retrain_cli_refuses_mismatched_reservoir_and_missing_float_model(tmp_path, capsys):
    from edgert.cli import main

    rdir = tmp_path / "res"
    reservoir.Reservoir(rdir, "motor-ae", 32, ["ia", "ib", "ic"], size=8).close()
    rc = main(["retrain", "--model", "motor-ae", "--reservoir", str(rdir)])
    assert rc == 2
    assert "motor-ae.json: field 'window' is 32" in capsys.readouterr().err
    d = tmp_path / "nofloat"
    shutil.copytree(models.resolve("motor-ae"), d, ignore=shutil.ignore_patterns("folds"))
    m = json.loads((d / "manifest.json").read_text())
    f = m.pop("float_model")["file"]
    m["files"].pop(f)
    (d / f).unlink()
    (d / "manifest.json").write_text(json.dumps(m))
    rc = main(["retrain", "--model", str(d), "--reservoir", str(rdir)])
    assert rc == 2
    assert "no field 'float_model'" in capsys.readouterr().err


def _fake_generation(tmp_path, model_dir, gen):
    """A candidate directory as edgert retrain writes it (files named <name>_r<gen>_*), made
    from the shipped files (no TensorFlow): publishing and clean-up only."""
    cand = tmp_path / f"cand{gen}"
    cand.mkdir()
    m = json.loads((models.resolve("motor-ae") / "manifest.json").read_text())
    files = {}
    for v in m["variants"].values():
        new = v["file"].replace("motor-ae_", f"motor-ae_r{gen}_")
        shutil.copy(models.resolve("motor-ae") / v["file"], cand / new)
        v["file"] = new
        files[new] = _sha(cand / new)
    fl = f"motor-ae_r{gen}_float.keras"
    shutil.copy(models.resolve("motor-ae") / m["float_model"]["file"], cand / fl)
    files[fl] = _sha(cand / fl)
    m["float_model"]["file"] = fl
    m["files"] = files
    m["threshold"] = 0.001 * gen
    m["retrain"] = {"generation": gen}
    (cand / "manifest.json").write_text(json.dumps(m))
    return cand


def test_publish_manifest_last_keeps_previous_generation(tmp_path):
    from edgert.retrain import check_directory, publish

    model_dir = tmp_path / "model"
    shutil.copytree(models.resolve("motor-ae"), model_dir, ignore=shutil.ignore_patterns("folds"))
    shipped = sorted(p.name for p in model_dir.iterdir())
    for gen in (1, 2, 3):
        cand = _fake_generation(tmp_path, model_dir, gen)
        assert check_directory(cand)["passed"]
        removed = publish(cand, model_dir)
        m = models.load(model_dir)  # every sha256 verified
        assert m.threshold == 0.001 * gen and m.manifest["retrain"]["generation"] == gen
        assert not [p for p in model_dir.iterdir() if p.name.startswith(".")]  # no temp left
        if gen == 3:  # generation 1 is older than the previous one (2): removed
            assert removed == sorted(f"motor-ae_r1_{s}" for s in (
                "b1.tflite", "dyn.tflite", "float.keras", "packed.tflite"))
        else:
            assert removed == []
    names = {p.name for p in model_dir.iterdir()}
    assert set(shipped) <= names  # the original files are never removed (rollback)
    assert {f"motor-ae_r{g}_dyn.tflite" for g in (2, 3)} <= names
    assert "motor-ae_r1_dyn.tflite" not in names


def _with_float_model_named(tmp_path, fname):
    """A copy of motor-ae whose float model file is ``fname`` (same bytes, sha256 recorded)."""
    d = tmp_path / "model"
    shutil.copytree(models.resolve("motor-ae"), d, ignore=shutil.ignore_patterns("folds"))
    m = json.loads((d / "manifest.json").read_text())
    old = m["float_model"]["file"]
    (d / old).rename(d / fname)
    m["files"][fname] = m["files"].pop(old)
    m["float_model"]["file"] = fname
    (d / "manifest.json").write_text(json.dumps(m))
    return d


@pytest.mark.parametrize("fname", ["motor-ae_float.h5", "motor-ae_float.hdf5",
                                   "motor-ae_float.keras.h5", "motor-ae_float"])
def test_float_model_other_than_keras_refused_before_tensorflow(tmp_path, monkeypatch, capsys,
                                                                fname):
    """Only a Keras v3 ``.keras`` archive honours safe_mode; a legacy ``.h5`` runs what it
    carries when loaded. Refused naming the file, before TensorFlow is imported (here it
    cannot be: importing it raises)."""
    from edgert.cli import main
    from edgert.retrain import retrain

    d = _with_float_model_named(tmp_path, fname)
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import tensorflow -> ImportError
    with pytest.raises(models.ModelError, match=rf"{fname}: the float model must be a Keras v3 "
                                                r"'\.keras' file"):
        retrain(d, tmp_path / "res", log=lambda *a: None)
    rc = main(["retrain", "--model", str(d), "--reservoir", str(tmp_path / "res")])
    err = capsys.readouterr().err
    assert rc == 2 and f"{d / fname}: the float model must be" in err
    assert "pip install" not in err and len(err.strip().splitlines()) == 1


@needs_tf
def test_fine_tune_loads_with_safe_mode_and_refuses_code_in_the_archive(tmp_path, monkeypatch):
    """``safe_mode=True`` is passed explicitly (not left to Keras' default), and it bites: an
    archive with a Python lambda inside is refused at load."""
    import tensorflow as tf

    from edgert.retrain import ae_config, fine_tune

    m = models.load("motor-ae")
    cfg = ae_config(m.manifest)
    seen = []
    real = tf.keras.models.load_model

    def spy(*a, **kw):
        seen.append(kw)
        return real(*a, **kw)

    monkeypatch.setattr(tf.keras.models, "load_model", spy)
    x = np.random.default_rng(0).normal(size=(64, 1, 64, 3)).astype(np.float32)
    fine_tune(cfg, m.dir / m.manifest["float_model"]["file"], x, 1, 0, 1e-4)
    assert seen and seen[-1].get("safe_mode") is True

    inp = tf.keras.Input((1, 64, 3))
    evil = tf.keras.Model(inp, tf.keras.layers.Lambda(lambda t: t * 2.0)(inp))
    evil.save(tmp_path / "evil.keras")
    with pytest.raises(ValueError, match="safe_mode"):
        fine_tune(cfg, tmp_path / "evil.keras", x, 1, 0, 1e-4)
    assert seen[-1].get("safe_mode") is True
