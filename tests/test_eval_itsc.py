"""``edgert eval itsc``: the shipped fold models through the int8 runtime path (no TF)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgert import models
from edgert.data import itsc_class, itsc_names, itsc_recording
from edgert.evaluate import itsc

SHARED_ITSC = Path(__file__).resolve().parents[2] / "shared" / "data" / "ITSC"

# Recordings whose signals contradict their label (amplitudes and phase angles of the three
# currents): two look healthy, two like other fault classes, one turns healthy at ~0.8 s.
MISLABELLED = {"SC_A0_B2_C0_002", "SC_A1_B0_C0_002", "SC_A0_B1_C0_005", "SC_A1_B0_C0_005"}
CHANGES_CLASS = {"SC_A4_B0_C0_004"}


@pytest.fixture(scope="module")
def result():
    return itsc.evaluate(None)


def test_classifier_loro_through_runtime(result):
    c = result["classifier"]
    assert [f["fold"] for f in c["folds"]] == [f"rep_00{r}" for r in range(1, 6)]
    assert c["windows"] == 65 * 59 and not c["missing"]
    conf = np.array(c["confusion"])
    assert conf.shape == (13, 13) and conf.sum() == c["windows"]
    assert c["window_accuracy"] == pytest.approx(np.trace(conf) / conf.sum(), abs=1e-4)
    # the runtime path (kernels -> CPU backend -> ClassScorer) gives what training measured
    # with LiteRT directly
    assert c["window_accuracy"] == c["recorded_window_accuracy"]
    rec = models.load("motor-cnn").manifest["training"]["metrics"]["cv"]
    assert c["confusion"] == rec["confusion"]
    assert c["window_accuracy"] >= 0.90 and c["recording_accuracy"] >= 0.90
    # every window of a recording that does not carry a suspect is classified correctly, bar
    # the few at the start of a recording whose amplitude is still settling
    bad = {n for n, r in c["per_recording"].items() if r["accuracy"] < 0.95}
    assert bad <= MISLABELLED | CHANGES_CLASS | {"SC_A0_B2_C0_005"}
    named = {s["recording"] for s in c["suspected"]}
    assert MISLABELLED | CHANGES_CLASS <= named
    assert {a["recording"] for a in c["label_audit"]} == MISLABELLED  # model-free check
    assert {s["recording"] for s in c["suspects"]} >= CHANGES_CLASS | {"SC_A0_B2_C0_002",
                                                                       "SC_A1_B0_C0_002"}


def test_autoencoder_loho_through_runtime(result):
    a = result["autoencoder"]
    assert sorted(a["false_alarm_rate_per_fold"]) == [f"SC_HLT_00{r}" for r in range(1, 6)]
    assert len(a["detection_rate"]) == 12
    assert all(0.0 <= v <= 1.0 for v in a["detection_rate"].values())
    # fold SC_HLT_005 is the shipped motor-ae itself: same threshold, same figures
    ae = models.load("motor-ae")
    f5 = next(f for f in a["folds"] if f["fold"] == "SC_HLT_005")
    assert f5["threshold"] == ae.threshold
    assert f5["false_alarm_rate"] == \
        ae.manifest["training"]["metrics"]["false_alarm_rate_holdout"]["SC_HLT_005"]
    assert f5["detection_rate"] == ae.manifest["training"]["metrics"]["detection_rate"]
    assert a["windows_per_s"] > 0


def test_cli_json_last_line(capsys):
    assert itsc.main(["--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    last = json.loads(lines[-1])
    for key in ("accuracy", "recording_accuracy", "folds", "ae", "windows_per_s"):
        assert key in last
    assert len(last["folds"]) == 5 and last["windows_per_s"] > 0
    assert {"false_alarm_rate", "detection_rate", "windows_per_s"} <= set(last["ae"])
    assert last["ae"]["attribution"]["per_class"]["SC_A3_B0_C0"]["attribution"] == 1.0
    text = "\n".join(lines[:-1])
    assert "confusion matrix" in text and "windows/s" in text
    for n in MISLABELLED | CHANGES_CLASS:
        assert n in text
    assert MISLABELLED | CHANGES_CLASS <= {s["recording"] for s in last["suspects"]}


def _write_itsc_layout(root, names):
    for n in names:
        d = root / itsc_class(n)
        d.mkdir(parents=True, exist_ok=True)
        x = itsc_recording(n)
        (d / f"{n}.csv").write_text("\n".join(",".join(repr(float(v)) for v in row)
                                              for row in x) + "\n")


def test_itsc_folder_layout_subset(tmp_path, result):
    """--data DIR in the ITSC layout (class folders of headerless CSV): a subset of recordings
    gives per-recording results equal to the shipped copy's."""
    names = [n for n in itsc_names() if n.startswith(("SC_HLT", "SC_A0_B2_C0"))]
    _write_itsc_layout(tmp_path, names)
    res = itsc.evaluate(tmp_path)
    c = res["classifier"]
    assert c["windows"] == len(names) * 59
    for n in names:
        assert c["per_recording"][n] == result["classifier"]["per_recording"][n]
    assert set(c["missing"]) == set(itsc_names()) - set(names)
    assert res["autoencoder"]["false_alarm_rate_per_fold"] == \
        result["autoencoder"]["false_alarm_rate_per_fold"]


@pytest.mark.skipif(not SHARED_ITSC.is_dir(), reason=f"{SHARED_ITSC} not present")
def test_shared_itsc_copy_matches_shipped(result):
    res = itsc.evaluate(SHARED_ITSC)
    assert res["classifier"]["confusion"] == result["classifier"]["confusion"]
    assert res["autoencoder"]["detection_rate"] == result["autoencoder"]["detection_rate"]


def test_missing_folds_is_an_error(tmp_path, capsys):
    empty = tmp_path / "m"
    empty.mkdir()
    assert itsc.main(["--cnn", str(empty), "--no-ae"]) == 2
    assert "no fold models" in capsys.readouterr().err


def test_attribution_names_the_faulty_phase_per_recording():
    """The shipped motor-ae (what the daemon runs) through the runtime path: in every recording
    with one faulty phase whose signal carries its label, >= 95 % of the flagged windows name
    the faulty phase first (ITSC phase A -> ia, B -> ib, C -> ic); the reconstruction error's
    shares named ia in none of the phase-A short circuits' windows (severity 3 and 4)."""
    sc = itsc.RuntimeScorer("motor-ae")
    thr = sc.model.threshold
    new, old, checked = {}, {}, set()
    for n in itsc_names():
        phase = itsc.faulty_phase(itsc_class(n))
        if phase is None:
            continue
        d = {}
        s, _, _ = sc.run(itsc_recording(n), d)
        f = s > thr
        if f.sum() < 10:  # the two healthy-looking recordings are not flagged
            assert n in MISLABELLED
            continue
        checked.add(itsc_class(n))
        new[n] = float((d["shares"][f].argmax(axis=1) == phase).mean())
        old[n] = float((d["raw_shares"][f].argmax(axis=1) == phase).mean())
    assert len(checked) == 12
    assert {n for n, v in new.items() if v < 0.95} <= MISLABELLED
    assert all(v < 0.1 for n, v in old.items() if n.startswith(("SC_A3", "SC_A4")))
    for n in ("SC_A3_B0_C0_001", "SC_A0_B4_C0_002", "SC_A0_B0_C3_003"):
        assert new[n] == 1.0


def test_attribution_table(result, capsys):
    """``edgert eval itsc``'s attribution table: per single-phase class, the fold models'
    flagged windows and the share naming the faulty phase, old (error shares) and new (also
    with the fault angle refitted without the window's repetition)."""
    att = result["autoencoder"]["attribution"]
    per = att["per_class"]
    assert len(per) == 12 and all(e["flagged"] > 0 for e in per.values())
    # a class whose flagged recordings all carry their label: >= 99 % either way
    with_suspect = {"SC_A0_B1_C0", "SC_A1_B0_C0"}  # SC_A0_B1_C0_005, SC_A1_B0_C0_005
    for c, e in per.items():
        if c not in with_suspect:
            assert e["attribution"] >= 0.99 and e["attribution_loro"] >= 0.99, (c, e)
    assert per["SC_A3_B0_C0"]["raw_error"] < 0.05 and per["SC_A4_B0_C0"]["raw_error"] < 0.05
    assert all(60 <= a <= 110 for a in att["loro_fault_angles"])
    print(itsc.report(result))
    text = capsys.readouterr().out
    assert "attribution: flagged windows" in text and "error shares (old)" in text


def test_write_attribution_reproduces_the_shipped_fields(tmp_path):
    """The shipped ``attribution`` fields are what ``--write-attribution`` computes (a copy of
    motor-ae with the field removed gets it back, equal), and what ``edgert train`` would write
    (the same function from the same recordings and normalization)."""
    from edgert.train import AEConfig, itsc_attribution

    src = models.resolve("motor-ae")
    d = tmp_path / "motor-ae"
    shutil.copytree(src, d)
    paths = [d / "manifest.json", *sorted((d / "folds").glob("*/manifest.json"))]
    for p in paths:
        m = json.loads(p.read_text())
        m.pop("attribution")
        p.write_text(json.dumps(m, indent=2) + "\n")
    recs = itsc.load_itsc()
    written = itsc.write_attribution(d, recs, "cmd")
    assert written == [paths[0], *sorted(paths[1:])]
    for p in paths:
        shipped = (src / p.relative_to(d)).read_text()
        got = json.loads(p.read_text())
        want = json.loads(shipped)
        assert got["attribution"].pop("command") == "cmd"
        assert want["attribution"].pop("command").startswith("edgert eval itsc --write-attribution")
        assert got == want
        assert list(got) == list(want)  # same place in the manifest
    models.load(d)  # sha256 of the model files untouched: still verifies
    m = json.loads((src / "manifest.json").read_text())
    cfg = AEConfig(window=m["window"], hop=m["hop"], sample_rate_hz=m["sample_rate_hz"])
    field = itsc_attribution(True, {n: x for n, (x, _) in recs.items()},
                         {n: c for n, (_, c) in recs.items()}, m["training"]["train_recordings"],
                         np.array(m["normalization"]["mean"]), np.array(m["normalization"]["std"]),
                         cfg, "cmd")["attribution"]
    field.pop("command")
    m["attribution"].pop("command")
    assert field == m["attribution"]
