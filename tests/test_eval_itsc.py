"""``edgert eval itsc``: the shipped fold models through the int8 runtime path (no TF)."""

import json
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
