"""``edgert fleet``: federated retraining over Flower's deployment engine on localhost.

Real processes: ``edgert fleet server`` (a Flower SuperLink and one run of the edgert
ServerApp) and one ``edgert fleet client`` (a SuperNode) per node, over gRPC on 127.0.0.1;
each node's reservoir holds its own shipped ITSC healthy recordings (`edgert.fleet.case`).
Checks: the rounds complete, every reply carries only the model's weight arrays and three
numbers, every node validates the final model with ``edgert retrain``'s gates and publishes
it; with a poisoned node (fault windows in its reservoir) no honest node publishes and each
says why. Needs flwr and TensorFlow (``pip install 'edgert[fleet]'``); skipped without them,
except the checks that need neither.
"""

import hashlib
import importlib.util
import sys
import time

import numpy as np
import pytest

from edgert import models
from edgert.fleet import case, node
from edgert.retrain import split_blocks

HAS_FLEET = all(importlib.util.find_spec(m) is not None for m in ("flwr", "tensorflow"))
needs_fleet = pytest.mark.skipif(not HAS_FLEET, reason="needs flwr and TensorFlow "
                                                       "(pip install 'edgert[fleet]')")
METRICS = {"num-examples", "train-loss", "seconds"}  # all a node sends besides weights


def test_fleet_without_flower_exits_2(monkeypatch, capsys, tmp_path):
    from edgert.cli import main

    monkeypatch.setitem(sys.modules, "flwr", None)  # as if flwr were not installed
    for argv in (["fleet", "server", "--model", "motor-ae", "--insecure"],
                 ["fleet", "client", "--model", "motor-ae", "--reservoir", str(tmp_path),
                  "--insecure"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "pip install 'edgert[fleet]'" in err


@needs_fleet
def test_fleet_bad_input_exits_2_naming_it(capsys, tmp_path):
    from edgert.cli import main

    cases = [(["fleet", "client", "--model", "motor-ae", "--reservoir", str(tmp_path / "none"),
               "--insecure"], f"{tmp_path / 'none'}/motor-ae.json: missing"),
             (["fleet", "server", "--model", str(tmp_path / "nomodel"), "--insecure"],
              f"{tmp_path / 'nomodel'}: no such model directory"),
             (["fleet", "server", "--model", "motor-ae"], "--ca: needed for TLS"),
             (["fleet", "server", "--model", "motor-ae", "--insecure", "--rounds", "0"],
              "--rounds and --epochs must be >= 1")]
    for argv, msg in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err, err


def test_serve_imports_neither_flower_nor_fleet():
    from test_imports import _imported_by

    for code in (["-m", "edgert", "serve", "--help"],
                 ["-c", "import edgert.cli as c; c.build_parser('serve').parse_args(['serve']); "
                        "import edgert.daemon"]):
        mods = _imported_by(code)
        bad = [m for m in mods if m.split(".")[0] == "flwr" or m.startswith("edgert.fleet")]
        assert not bad, bad
    mods = _imported_by(["-m", "edgert", "fleet", "--help"])  # the parser alone: no Flower
    assert not [m for m in mods if m.split(".")[0] == "flwr"]


def test_node_split_keeps_retrain_validation_blocks():
    for n in (64, 172, 500, 1031):
        p = node.split(n)
        allidx = np.sort(np.concatenate(list(p.values())))
        assert allidx.tolist() == list(range(n))  # a partition
        assert p["val"].tolist() == split_blocks(n)["val"].tolist()  # retrain's held-back
        assert len(p["cal"]) > 0 and len(p["train"]) > 2 * len(p["cal"])


def test_case_data_never_overlaps():
    """A node's unseen windows come from samples its reservoir never held."""
    res = case.reservoir_windows(["SC_HLT_001"])
    unseen = case.unseen_windows(["SC_HLT_001"])
    assert res.shape[1:] == unseen.shape[1:] == (64, 3)
    assert len(res) == (case.SPLIT - 64) // case.RES_HOP + 1
    tail = {w.tobytes() for w in unseen}
    assert not tail & {w.tobytes() for w in res}


def test_fleet_run_stops_on_the_marker_and_on_timeout(tmp_path):
    """`case.Fleet.run` never hangs a test: it stops every process when a client logs the
    marker, or at the timeout, and says which (fake server and clients: no Flower needed)."""
    nodes = [{"name": "a", "model": tmp_path, "reservoir": tmp_path}]
    for client, want, limit in (("print('x Both bytes y', flush=True)", "aborted", 30),
                                ("print('fine', flush=True)", "timeout", 2)):
        f = case.Fleet(nodes, tmp_path / want, [])
        f.server_cmd = [sys.executable, "-c", "import time; time.sleep(60)"]
        f.client_cmds = [[sys.executable, "-c", client + "; import time; time.sleep(60)"]]
        t = time.time()
        rc, rec, _ = f.run(timeout=limit, abort_on="Both bytes")
        assert rc is None and rec["status"].startswith(want), rec
        assert time.time() - t < limit + 12
        assert all(p.poll() is not None for p in f.procs)  # nothing left running


def _sha_dir(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()
            if p.is_file()}


@needs_fleet
def test_three_nodes_two_rounds_over_tls_publish_and_only_weights_travel(tmp_path):
    nodes = [case.make_node(tmp_path, k, case.reservoir_windows(v))
             for k, v in case.NODES.items()]
    tls = case.make_certs(tmp_path / "certs")  # a throwaway CA; the server's SAN 127.0.0.1
    args = ["--model", str(nodes[0]["model"]), "--rounds", "2", "--epochs", "1",
            "--timeout", ROUND_TIMEOUT]
    rc, rec, out = _run(lambda work: case.Fleet(nodes, work, args, tls=tls), tmp_path, 300, 3)
    assert rec.get("status") == "done", (rc, out, rec)
    assert rc == 0, out

    # the rounds: 3 nodes each, every reply the model's weights and three numbers
    shapes = rec["weights"]["shapes"]
    assert len(rec["round_log"]) == 2
    for r in rec["round_log"]:
        assert r["nodes"] == 3 and len(r["replies"]) == 3
        assert r["bytes_up"] == r["bytes_down"] == 3 * rec["weights"]["bytes"]
        for rep in r["replies"]:
            assert "error" not in rep, rep
            assert list(rep["array_records"]) == ["arrays"]
            assert [a[1] for a in rep["array_records"]["arrays"]] == shapes
            assert rep["metric_records"] == {"metrics": sorted(METRICS)}
            assert rep["config_records"] == {}
    # (a window is [64, 3]; no weight array has that shape, so none could carry one)
    assert all(s[-2:] != [64, 3] for s in shapes)

    # the verdicts: every node validated the final model and published it
    v = {d["node"]: d for d in rec["verdicts"]}
    assert sorted(v) == ["a", "b", "c"]
    for name, d in v.items():
        assert d["passed"] and d["published"], d["reason"]
        checks = {r["check"] for r in d["rows"]}
        assert {"false alarms, held-back normal windows", "injected imbalance",
                "ITSC SC_A3_B0_C0", "manifest complete, sha256 verified"} <= checks
        m = models.load(tmp_path / name / "model")  # every sha256 verified
        assert m.manifest["retrain"]["generation"] == 1
        assert m.threshold == pytest.approx(d["threshold"])
        assert "only weights left the node" in m.manifest["training"]["data"]
    assert "node a: PASS" in out
    assert "TLS" in "".join(p.read_text() for p in tmp_path.glob("run*/server.log"))  # not --insecure


FLOWER_RACE = "Both bytes_sent and bytes_recv cannot be zero"
ROUND_TIMEOUT = "90"  # s per round: a round a node never answers ends instead of hanging


def _complete(rec, n):
    return rec.get("status") == "done" and all(r["nodes"] == n == len(r["replies"])
                                               for r in rec.get("round_log", []))


def _run(make, tmp_path, timeout, n):
    """Run the fleet `make(work_dir)` builds. Flower 1.25's SuperLink sometimes refuses a node's
    pull of its first message ("Both bytes_sent and bytes_recv cannot be zero for run …", seen
    twice in CI: the node never gets it and the round waits for it; once the run hung until the
    test's timeout). A run is stopped as soon as a client logs that, and only a run stopped so,
    or one that timed out or lost a node in a round, is repeated once in a fresh directory."""
    f = make(tmp_path / "run")
    rc, rec, out = f.run(timeout=timeout, abort_on=FLOWER_RACE)
    if not _complete(rec, n):
        logs = "".join(p.read_text(errors="replace")
                       for p in (tmp_path / "run").glob("client-*.log"))
        flaky = (FLOWER_RACE in logs or rc is None
                 or any(len(r["replies"]) < n for r in rec.get("round_log", [])))
        if flaky:
            print(f"fleet run repeated once: {rec.get('status')}")
            f = make(tmp_path / "run2")
            rc, rec, out = f.run(timeout=timeout, abort_on=FLOWER_RACE)
    return rc, rec, out


@needs_fleet
def test_poisoned_node_gets_no_model_published_on_honest_nodes(tmp_path):
    nodes = [case.make_node(tmp_path, "a", case.reservoir_windows(case.NODES["a"])),
             case.make_node(tmp_path, "b", case.reservoir_windows(case.NODES["b"])),
             case.make_node(tmp_path, "p", case.poison_windows())]
    before = {n["name"]: _sha_dir(n["model"]) for n in nodes}
    args = ["--model", str(nodes[0]["model"]), "--rounds", "1", "--epochs", "2",
            "--timeout", ROUND_TIMEOUT]
    rc, rec, out = _run(lambda work: case.Fleet(nodes, work, args), tmp_path, 300, 3)
    assert rec.get("status") == "done", (rc, out, rec)
    assert rc == 1, out  # the run completed; nodes refused
    v = {d["node"]: d for d in rec["verdicts"]}
    for name in ("a", "b"):
        assert not v[name]["passed"] and not v[name]["published"]
        failed = {r["check"] for r in v[name]["rows"] if not r["passed"]}
        faults = {r["check"] for r in v[name]["rows"]
                  if r["check"].startswith(("ITSC", "injected"))}
        assert failed and failed <= faults, v[name]["rows"]  # fault detection fell
        assert v[name]["reason"].startswith("kept the running model: failed")
        assert all(f"{c} (current " in v[name]["reason"] for c in failed)
        assert _sha_dir(tmp_path / name / "model") == before[name]  # untouched
    assert "FAIL" in out
