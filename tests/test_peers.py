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


# -- what the tables must say, and the service a user would write instead ------------------------
def _weak_river_result():
    res = _fake_result()
    sec = res["itsc"]
    sec["peers"]["river"]["quality"] = {"f1": 0.015, "far": 0.0, "mar": 0.993}
    sec["ratios"] = P.ratios(sec)
    sec["targets"] = P.targets(sec)
    return res


def test_tables_say_the_rows_are_model_paths_and_river_detects_nothing():
    res = _weak_river_result()
    assert res["itsc"]["targets"]["over_river"]["meaningful"] is False
    md = T.render_markdown(res)
    assert ("These rows compare model paths only: windows already in memory, no ZeroMQ receipt, "
            "decoding, windowing or events. edgert's row runs 100,000 windows/s here;") in md
    assert ("River HalfSpaceTrees + QuantileFilter detects too little to compare with (F1 0.015 vs "
            "edgert's 0.980; it misses 99.3% of the anomalous windows): edgert's 100.0× speed over it "
            "says nothing.") in md
    assert "Target over river (>= 50x and F1 >= peer's): 100.0×, speed met, F1 met (says nothing: " \
           "the peer's F1 is 0.015)." in md
    text = T.render(res)
    assert "note: These rows compare model paths only" in text and "says nothing" in text
    # a detector as good as edgert gets no such note
    assert "detects too little" not in T.render_markdown(_fake_result())


def _services():
    svc = lambda label, wps, cpu, p99: {"label": label, "windows_per_s": wps,  # noqa: E731
                                        "windows_per_cpu_s": cpu, "cpu_share": wps / cpu,
                                        "p99_latency_us": p99, "windows_per_cpu_s_rounds": [cpu]}
    return {"sensors": 8, "block_samples": 64, "transport": "ipc", "rounds": 3,
            "paced_windows_per_s": 40000.0,
            "services": {"edgert": svc("edgert daemon (int8, LiteRT)", 100000.0, 120000.0, 900.0),
                         "naive": svc("naive Python service, LiteRT int8", 90000.0, 100000.0, 1100.0)},
            "decisions": {"edgert": {"f1": 0.98}, "naive": {"f1": 0.98, "compared": 3477, "differ": 0,
                                                            "agreement": 1.0}},
            "ratios": {"naive": {"edgert_over_naive_cpu": 1.2, "per_round": [1.1, 1.2, 1.3],
                                 "same_decisions": True}},
            "unavailable": {"naive-onnx": "onnxruntime not installed"}}


def test_services_table_under_itsc():
    res = _weak_river_result()
    res["itsc"]["services"] = _services()
    res["machine"]["cpu_int8"] = {"kind": "x86_64 avx2", "vnni": False, "flags": ["avx2"]}
    md = T.render_markdown(res)
    assert md.startswith("Measured with `edgert bench --peers` on Test CPU (2 CPUs, int8: x86_64 avx2, VNNI no,")
    assert "Test CPU (int8: x86_64 avx2, VNNI no), 2 CPUs" in T.render(res)
    assert "**Services on the same ZeroMQ stream**" in md
    assert "| naive Python service, LiteRT int8 | 90,000 | 100,000 | 0.90 | 1,100 | 0.980 | 3477/3477 | 1.20 |" in md
    assert "edgert's daemon fed a ZeroMQ stream ran 100,000 windows/s (120,000 per CPU-second" in md
    assert ("Target: edgert's daemon >= 5x the naive LiteRT service's windows per CPU-second at equal "
            "decisions: 1.20x (rounds 1.10, 1.20, 1.30), missed.") in md
    assert "Not run: naive-onnx (onnxruntime not installed)." in md
    assert "service (same ZeroMQ stream)" in T.render(res)


def test_naive_service_bad_model_is_one_line_exit_2(tmp_path):
    import subprocess
    import sys

    from edgert.bench import naive

    p = subprocess.run([sys.executable, str(naive.SERVICE), "--listen", f"ipc://{tmp_path}/s",
                        "--events", f"ipc://{tmp_path}/e", "--model", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stdout == ""
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("naive_service: FileNotFoundError") and "nope" in err[0]


@needs_model
@pytest.mark.parametrize("runtime", ["litert", "tflite-runtime"])
def test_naive_service_decides_like_the_daemon_on_the_same_stream(runtime):
    """The naive service (its own process, real PULL/PUB sockets, the real int8 model in LiteRT
    or tflite-runtime) and edgert's daemon, fed the same labelled ITSC blocks by the same
    sender: the same windows, the same flags, the same F1."""
    import shutil

    from edgert.bench import naive, run

    model, snap, _ = run._snapshot_model("motor-ae")
    try:
        svcs, unavailable = naive.services(model, (runtime,))
        key = naive.RUNTIME_KEYS[runtime]
        if key in unavailable:
            pytest.skip(unavailable[key])
        dec = naive.decisions_all(model, str(snap), svcs, block=64, stats_interval=0.2, cpu_daemon=None,
                                  startup_timeout=120.0, recordings=4)
    finally:
        shutil.rmtree(snap.parent, ignore_errors=True)
    assert "error" not in dec["edgert"] and "error" not in dec[key], dec
    recs = dec["stream"]["recordings"]
    assert len(recs) == 4 and recs[0].startswith("SC_HLT")  # a healthy recording and faults
    per_rec = (1000 // 64 * 64 - 64) // 16 + 1  # 1000-sample recordings in 64-sample blocks
    e, n = dec["edgert"], dec[key]
    assert e["windows"] == n["windows"] == n["compared"] == 4 * per_rec
    assert n["only_here"] == n["only_edgert"] == 0
    assert n["differ"] == 0 and n["agreement"] == 1.0
    if runtime == "litert":  # the same interpreter and kernels: the same scores, float32 aside
        assert n["max_score_diff"] < 1e-6
    assert e["f1"] == n["f1"] and e["tp"] + e["fn"] == 3 * per_rec


@needs_model
def test_naive_service_counts_bad_blocks_as_drops():
    """Hostile input to the naive service is a counted drop (by reason), never a crash."""
    import msgpack
    import zmq

    from edgert.bench import naive_service as NS

    m = NS.Model(models.resolve("motor-ae"))
    svc = NS.Service(m, invoke=None, runtime="litert", pub=None)
    head = lambda **kw: msgpack.packb({"v": 1, "seq": 0, "t0": 0, "dt": 1000, "dtype": "f4",  # noqa: E731
                                       "shape": [64, 3], **kw})
    ok = np.zeros((64, 3), np.float32).tobytes()
    for frames in ([b"s", b"\xc1", ok],                    # not msgpack
                   [b"s", head(dtype="f16"), ok],          # unknown dtype
                   [b"s", head(shape=[64, 4]), ok],        # size != shape
                   [b"s", head(shape=[16, 12]), ok],       # right size, wrong channel count
                   [b"s", head()],                         # a frame missing
                   [b"\xff", head(), ok]):                 # sensor id not UTF-8
        svc.on_message([zmq.Frame(f) for f in frames], 0)
    assert svc.messages == 0 and not svc.views
    assert sum(svc.drops.values()) == 6 and svc.drops["channels"] == 1
    svc.on_message([zmq.Frame(f) for f in (b"s", head(), ok)], 0)  # a good block still counts
    assert svc.messages == 1 and len(svc.views) == 1
