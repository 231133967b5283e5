"""`edgert bench --peers` (bench/peers.py): metrics by hand, decision rules, stream batching,
the table renderers, and a small end-to-end run of edgert and whichever peers are installed.
Peers that are not installed (CI installs only `.[test]`) skip; figures are not checked
against the speed targets (that is the benchmark's job)."""

import json

import numpy as np
import pytest

from edgert import models
from edgert.bench import peers as P
from edgert.bench import peers_table as T

needs_model = pytest.mark.skipif("motor-ae" not in models.shipped(),
                                 reason="shipped model motor-ae missing")


def test_quality_hand_example():
    y = [1, 1, 1, 0, 0, 0, 0]
    p = [1, 1, 0, 1, 0, 0, 0]
    q = P.quality(y, p)
    assert (q["tp"], q["fp"], q["fn"], q["tn"]) == (2, 1, 1, 3)
    assert q["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # 0.667
    assert q["far"] == pytest.approx(1 / 4)
    assert q["mar"] == pytest.approx(1 / 3)


def test_quality_edges_and_pooling():
    q = P.quality([0, 0, 0], [0, 0, 0])  # nothing to find, nothing flagged
    assert q["f1"] is None and q["far"] == 0.0 and q["mar"] is None
    assert P.quality([1, 1], [0, 0])["f1"] == 0.0
    assert P.quality([1, 0], [1, 0])["f1"] == 1.0
    with pytest.raises(ValueError):
        P.quality([1, 0], [1])
    a, b = P.quality([1, 0, 0], [1, 1, 0]), P.quality([1, 1, 0], [0, 1, 0])
    both = P.quality([1, 0, 0, 1, 1, 0], [1, 1, 0, 0, 1, 0])
    assert P.pooled([a, b]) == both


def test_quality_matches_skab_rates():
    from edgert.evaluate import skab

    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 2, 500), rng.integers(0, 2, 500)
    q, r = P.quality(y, p), skab.rates(skab.confusion(y, p))
    assert q["f1"] == pytest.approx(r["f1"]) and q["far"] * 100 == pytest.approx(r["far"])
    assert q["mar"] * 100 == pytest.approx(r["mar"])


def test_segments_and_batches_never_cross_recordings():
    x = np.arange(100 * 2, dtype=np.float32).reshape(100, 2)
    s1, s2 = P.segment("a", x, 10, 5, label=0), P.segment("b", x[:40], 10, 5, label=1)
    assert len(s1.starts) == 19 and len(s2.starts) == 7 and s2.y.tolist() == [1] * 7
    calls = P.batches([s1, s2], 8)
    assert [len(c[2]) for c in calls] == [8, 8, 3, 7]
    w = P.cut(*calls[1], 10)
    assert w.shape == (8, 10, 2) and np.array_equal(w[0], x[40:50])
    with pytest.raises(ValueError, match="short"):
        P.segment("short", x[:5], 10, 1)


def test_rules_decide_by_hand():
    full = np.array([[1.0, 3.0], [0.5, 0.5]], np.float32)
    r = P.FixedRule(1.0)
    assert r.decide(full, None).tolist() == [True, False]
    assert r.decide(full, None, scores=np.array([0.0, 2.0])).tolist() == [False, True]
    t = P.TailRatioRule([1], q=0.5, factor=2.0, tail=4)
    t.calibrate(full, np.array([[9.0, 1.0], [9.0, 3.0]]))  # channel 1 reference: median 2
    tail = np.array([[100.0, 3.9], [0.0, 4.1]])
    assert t.decide(full, tail).tolist() == [False, True]  # channel 0 is not scored


def test_float_errors_tail():
    x = np.zeros((1, 1, 4, 2), np.float32)
    y = x.copy()
    y[0, 0, 3, 0] = 2.0  # one error of 2 in the last row of channel 0
    full, tail = P.float_errors(x, y, 2)
    assert full.tolist() == [[1.0, 0.0]] and tail.tolist() == [[2.0, 0.0]]


def _fake_result():
    row = lambda label, batch, wps, f1: {  # noqa: E731
        "label": label, "batch": batch, "windows_per_s": wps, "p99_call_us": 120.0,
        "p99_window_us": 4.0, "p50_window_us": 1e5 / wps, "quality": {"f1": f1, "far": 0.01,
                                                                     "mar": 0.2}}
    sec = {"dataset": {"normal_windows": 59, "anomalous_windows": 3540, "window": 64, "hop": 16},
           "peers": {"edgert": row("edgert (int8, LiteRT)", 32, 100000.0, 0.98),
                     "river": row("River HalfSpaceTrees + QuantileFilter", 1, 1000.0, 0.5),
                     "iforest": {"label": "PyOD IForest", "error": "boom"}}}
    sec["ratios"] = P.ratios(sec)
    sec["targets"] = P.targets(sec)
    return {"timestamp": "2026-11-27T13:00:00+00:00", "command": "edgert bench --peers",
            "machine": {"cpu_model": "Test CPU", "nproc": 2, "python": "3.11.7"},
            "versions": {"river": "0.26.1"}, "settings": {"rounds": 3, "quantile": 0.999, "notes": ["n1"]},
            "itsc": sec, "unavailable": {"ecod": "pyod not installed"}, "errors": {},
            "elapsed_s": 1.0}


def test_ratios_and_targets():
    sec = _fake_result()["itsc"]
    assert sec["ratios"]["river"]["speedup"] == pytest.approx(100.0)
    assert sec["ratios"]["river"]["speedup_p50"] == pytest.approx(100.0)
    assert sec["ratios"]["river"]["f1_at_least"] is True
    assert "iforest" not in sec["ratios"]
    t = sec["targets"]
    assert t["over_river"]["pass"] is True and t["over_onnxruntime"]["pass"] is None


def test_render_markdown_table():
    md = T.render_markdown(_fake_result())
    lines = md.splitlines()
    assert lines[0].startswith("Measured with `edgert bench --peers` on Test CPU (2 CPUs")
    assert "| detector | batch | windows/s |" in md
    edg = next(ln for ln in lines if ln.startswith("| edgert"))
    assert edg == ("| edgert (int8, LiteRT) | 32 | 100,000 | 120.0 | 4.00 | 0.980 | 1.0% | "
                   "20.0% | - | - |")
    riv = next(ln for ln in lines if ln.startswith("| River"))
    assert riv.endswith("| 100.0× | 100.0× |")
    assert "error: boom" in md and "Not run: ecod (pyod not installed)." in md
    assert "Target over river (>= 50x and F1 >= peer's): 100.0×, speed met, F1 met." in md
    text = T.render(_fake_result())
    assert "100.0x" in text and "ERROR boom" in text and "note: n1" in text


def test_cli_render_and_bad_peer(tmp_path, capsys):
    from edgert import cli

    f = tmp_path / "r.json"
    f.write_text(json.dumps(_fake_result()))
    assert cli.main(["bench", "--render", str(f)]) == 0
    assert "| edgert (int8, LiteRT) | 32 |" in capsys.readouterr().out
    assert cli.main(["bench", "--peers", "--only", "edgert,nope"]) == 2
    assert "nope" in capsys.readouterr().err


@needs_model
def test_find_float_model(tmp_path):
    assert P.find_float_model(tmp_path, None) is None
    (tmp_path / "m.keras").write_bytes(b"x")
    assert P.find_float_model(tmp_path, None) == tmp_path / "m.keras"
    with pytest.raises(FileNotFoundError):
        P.find_float_model(tmp_path, str(tmp_path / "nope.keras"))


@needs_model
def test_edgert_side_end_to_end(tmp_path):
    """edgert on ITSC through the peers harness: its decisions are the runtime's (eval itsc's
    RuntimeScorer scores against the manifest threshold), figures land in the JSON."""
    from edgert.evaluate.itsc import RuntimeScorer

    s = P.Settings(datasets=("itsc",), only=("edgert",), rounds=1)
    res = P.run_peers(s, log=lambda *a: None)
    assert not res["errors"], res["errors"]
    e = res["itsc"]["peers"]["edgert"]
    d = res["itsc"]["dataset"]
    assert e["windows"] == d["normal_windows"] + d["anomalous_windows"]
    assert e["windows_per_s"] > 0 and e["p99_call_us"] >= e["p99_window_us"] >= e["p50_window_us"] > 0
    task, _ = P.itsc_task(s, log=lambda *a: None)
    sc = RuntimeScorer(task.model_dir)
    try:
        flags = np.concatenate([sc.run(seg.ring[:seg.cap])[0] for seg in task.test])
    finally:
        sc.close()
    y = np.concatenate([seg.y for seg in task.test])
    want = P.quality(y, flags > task.rule.threshold)
    assert e["quality"] == want
    assert 0.9 < want["f1"] <= 1.0
    md = T.render_markdown(P._clean(res))
    assert "| edgert (int8, LiteRT) | 32 |" in md


PEER_MODULES = {"river": "river", "iforest": "pyod", "ecod": "pyod"}


@needs_model
@pytest.mark.parametrize("key", sorted(PEER_MODULES))
def test_feature_peer_runs_on_itsc(key):
    pytest.importorskip(PEER_MODULES[key], reason=f"{PEER_MODULES[key]} not installed "
                                                  "(the [bench] extra)")
    s = P.Settings(datasets=("itsc",), only=(key,), rounds=1)
    task, _ = P.itsc_task(s, log=lambda *a: None)
    task.test = task.test[:3]  # the healthy recording and two faults: quick
    res = P.run_task(task, [key], s, log=lambda *a: None)[key]
    assert "error" not in res, res.get("error")
    n = sum(len(t.starts) for t in task.test)
    assert res["flags"].shape == (n,) and res["rows"].sum() == n
    y = np.concatenate([t.y for t in task.test])
    q = P.quality(y, res["flags"])
    assert q["tp"] + q["fn"] == 2 * len(task.test[1].starts)


def test_unavailable_peer_is_reported_not_run(monkeypatch):
    monkeypatch.setattr(P.RiverPeer, "modules", ("no_such_module_xyz",))
    s = P.Settings(datasets=(), only=("river",), rounds=1)
    res = P.run_peers(s, log=lambda *a: None)
    assert "not installed" in res["unavailable"]["river"]


@needs_model
def test_tflite_runtime_worker_matches_edgert():
    """tflite-runtime (another venv's Python, $EDGERT_TFLITE_PYTHON, or this one) runs the same
    int8 model: the same decisions as edgert's LiteRT path."""
    s = P.Settings(datasets=("itsc",), only=("tflite-runtime", "edgert"), rounds=1)
    py, why = P.TfliteRuntimePeer.python(s)
    if py is None:
        pytest.skip(why)
    task, _ = P.itsc_task(s, log=lambda *a: None)
    task.test = task.test[:3]
    res = P.run_task(task, ["edgert", "tflite-runtime"], s, log=lambda *a: None)
    assert "error" not in res["tflite-runtime"], res["tflite-runtime"].get("error")
    t = res["tflite-runtime"]
    assert t["rows"].sum() == sum(len(x.starts) for x in task.test) == len(t["flags"])
    assert np.array_equal(t["flags"], res["edgert"]["flags"])
