"""edgert eval nab: NAB's scoring on hand-built cases, the sweep, the results layout, bad input,
the online decisions; with TensorFlow, a reduced end-to-end run on a synthetic corpus; with
``../shared/data/NAB``, the real corpus' structure.

Expected values are computed here from NAB's formulas written out by hand: NAB's scaled
sigmoid ``2 * sigmoid(-5 x) - 1`` equals ``-tanh(2.5 x)``, which is what the tests use.
"""

import importlib.util
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from edgert.evaluate import nab, nabdata
from edgert.evaluate import nabscore as ns

NAB_DATA = Path(os.environ.get("EDGERT_NAB_DATA")
                or Path(__file__).resolve().parents[2] / "shared" / "data" / "NAB")
HAS_TF = importlib.util.find_spec("tensorflow") is not None
STD = ns.PROFILES["standard"]
LOW_FP = ns.PROFILES["reward_low_FP_rate"]
LOW_FN = ns.PROFILES["reward_low_FN_rate"]


def S(x):
    """NAB's scaled sigmoid, by the tanh identity."""
    return -1.0 if x > 3 else -math.tanh(2.5 * x)


def raw(n, wins, det_rows, profile=STD, percent=0.0):
    """Raw NAB score of one file when exactly ``det_rows`` are detections."""
    rows = ns.sweep_rows(n, wins, profile, percent)
    a = np.zeros(n)
    a[list(det_rows)] = 1.0
    return ns.score_at(a, rows, 0.5, profile["fnWeight"])


# ---------------------------------------------------------------------------------------------
# the scoring rules on one window [5, 9] (width 5) of a 40-row file
# ---------------------------------------------------------------------------------------------

W = [(5, 9)]


def test_probation_length():
    assert ns.probation_length(20) == 3            # floor(0.15 * 20)
    assert ns.probation_length(4032) == 604
    assert ns.probation_length(10000) == 750.0     # capped at 0.15 * 5000


def test_detection_at_window_start_scores_tp_weight():
    assert raw(40, W, [5])["score"] == pytest.approx(1.0)
    assert raw(40, W, [5], LOW_FN)["score"] == pytest.approx(1.0)


def test_detection_at_window_end():
    # position -(9 - 9 + 1) / 5 = -0.2, scaled by S(-1) so that the start scores 1
    assert raw(40, W, [9])["score"] == pytest.approx(S(-0.2) / S(-1.0))
    assert raw(40, W, [9])["score"] == pytest.approx(0.468386, abs=1e-6)


def test_several_detections_in_a_window_count_once():
    one = raw(40, W, [6])["score"]
    assert one == pytest.approx(S(-0.8) / S(-1.0))
    assert raw(40, W, [6, 7, 8, 9])["score"] == pytest.approx(one)
    assert raw(40, W, [6, 7, 8, 9])["windows_detected"] == 1


def test_missed_window_costs_fn_weight():
    assert raw(40, W, [])["score"] == pytest.approx(-1.0)
    assert raw(40, W, [], LOW_FN)["score"] == pytest.approx(-2.0)
    assert raw(40, [(5, 9), (20, 24)], [20])["score"] == pytest.approx(-1.0 + 1.0)


def test_false_positive_before_any_window_costs_full_fp_weight():
    assert raw(40, W, [5, 2])["score"] == pytest.approx(1.0 - 0.11)
    assert raw(40, W, [5, 2], LOW_FP)["score"] == pytest.approx(1.0 - 0.22)


def test_false_positive_after_a_window_depends_on_distance():
    # row 12: |9 - 12| / (5 - 1) = 0.75
    assert raw(40, W, [5, 12])["score"] == pytest.approx(1.0 + 0.11 * S(0.75))
    # just after the end: 1/4 -> a smaller penalty than far away
    near = raw(40, W, [5, 10])["score"] - 1.0
    far = raw(40, W, [5, 30])["score"] - 1.0
    assert near == pytest.approx(0.11 * S(0.25))
    assert far == pytest.approx(-0.11)         # 21 / 4 > 3: the full weight
    assert -0.11 < near < 0
    # rows after the second window are measured from that one
    two = [(5, 9), (20, 22)]                   # width 3: divide by 2
    assert raw(40, two, [5, 20, 23])["score"] == pytest.approx(2.0 + 0.11 * S(0.5))


def test_probationary_rows_are_ignored():
    # 40 rows, probation floor(6) = 6: rows 0..5 do not count, detected or not
    assert raw(40, [(20, 24)], [0, 3, 5, 20], percent=0.15)["score"] == pytest.approx(1.0)
    # a window that starts inside the probation keeps its width but loses those rows
    r = raw(40, [(4, 9)], [4], percent=0.15)
    assert r["score"] == pytest.approx(-1.0) and r["windows_detected"] == 0
    r = raw(40, [(4, 9)], [6], percent=0.15)
    assert r["score"] == pytest.approx(S(-4 / 6) / S(-1.0))


def test_perfect_and_null_detectors_normalize_to_100_and_0():
    n, wins = 200, [(30, 49), (120, 139)]
    for prof in ns.PROFILES.values():
        rows = ns.sweep_rows(n, wins, prof)
        null = ns.null_score([rows], prof["fnWeight"])
        assert null == pytest.approx(-2 * prof["fnWeight"])
        perfect = np.zeros(n)
        perfect[[30, 120]] = 1.0
        thr, best = ns.best_threshold(ns.sweep([(perfect, rows)], prof["fnWeight"]))
        assert thr == 1.0 and best == pytest.approx(2.0)
        assert ns.normalized(best, null, ns.perfect_score(2, prof)) == pytest.approx(100.0)
        zero = ns.best_threshold(ns.sweep([(np.zeros(n), rows)], prof["fnWeight"]))[1]
        assert ns.normalized(zero, null, ns.perfect_score(2, prof)) == pytest.approx(0.0)


# ---------------------------------------------------------------------------------------------
# the threshold sweep
# ---------------------------------------------------------------------------------------------

def test_sweep_equals_scoring_at_every_threshold():
    rng = np.random.default_rng(5)
    for trial in range(150):
        n = int(rng.integers(25, 90))
        cuts = np.sort(rng.choice(np.arange(n), 4, replace=False))
        wins = [(int(cuts[0]), int(cuts[1])), (int(cuts[2]), int(cuts[3]))]
        wins = [w for w in wins if w[1] > w[0]]
        prof = list(ns.PROFILES.values())[trial % 3]
        files = []
        for _ in range(2):
            rows = ns.sweep_rows(n, wins, prof, float(rng.choice([0.0, 0.15])))
            files.append((np.round(rng.random(n), 1), rows))
        sw = ns.sweep(files, prof["fnWeight"])
        assert sw.threshold[0] == 1.1 and np.all(np.diff(sw.threshold) < 0)
        for t, s, tp, fp in zip(sw.threshold, sw.score, sw.tp, sw.fp):
            parts = [ns.score_at(a, r, t, prof["fnWeight"]) for a, r in files]
            assert sum(p["score"] for p in parts) == pytest.approx(s, abs=1e-9)
            assert sum(p["tp"] for p in parts) == tp and sum(p["fp"] for p in parts) == fp


def test_threshold_is_chosen_over_the_corpus():
    wins = [(10, 19)]
    rows = ns.sweep_rows(60, wins, STD)
    a = np.zeros(60)
    b = np.zeros(60)
    a[10] = 0.9                 # file 1: a hit at 0.9
    b[40] = 0.95                # file 2: a false positive at 0.95 ...
    b[12] = 0.6                 # ... and a hit at 0.6
    sw = ns.sweep([(a, rows), (b, rows)], 1.0)
    got = dict(zip(np.round(sw.threshold, 3), sw.score))
    assert got[1.1] == pytest.approx(-2.0)
    fp = 0.11 * S((40 - 19) / 9)   # 21 rows after a window of width 10
    assert got[0.95] == pytest.approx(-2.0 + fp)
    assert got[0.9] == pytest.approx(1.0 - 1.0 + fp)
    assert got[0.6] == pytest.approx(1.0 + S(-0.8) / S(-1.0) + fp)
    thr, best = ns.best_threshold(sw)
    assert thr == pytest.approx(0.6) and best == pytest.approx(got[0.6])
    # equal scores: the highest threshold wins (NAB's stable sort)
    c = np.zeros(60)
    c[10], c[11] = 0.8, 0.7
    assert ns.best_threshold(ns.sweep([(c, rows)], 1.0))[0] == pytest.approx(0.8)


def test_window_limits_must_be_timestamps():
    ts = np.arange("2020-01-01T00:00", "2020-01-01T01:00", 5, dtype="datetime64[m]")
    ts = ts.astype("datetime64[us]")
    assert ns.window_rows(ts, [(ts[2], ts[5])]) == [(2, 5)]
    with pytest.raises(ValueError, match="labels: window 0 limit"):
        ns.window_rows(ts, [(ts[2] + np.timedelta64(1, "m"), ts[5])])
    with pytest.raises(ValueError, match="before window 0 ends"):
        ns.window_rows(ts, [(ts[2], ts[5]), (ts[4], ts[8])])
    with pytest.raises(ValueError, match="single row"):
        ns.window_rows(ts, [(ts[2], ts[2])])


# ---------------------------------------------------------------------------------------------
# files: reading, results layout, bad input, the CLI's messages
# ---------------------------------------------------------------------------------------------

def make_corpus(root: Path, n=400, windows=((200, 239),), seed=0, spike=None) -> Path:
    """A NAB-layout directory with one file ``synthetic/s.csv`` of ``n`` 5-minute rows."""
    rng = np.random.default_rng(seed)
    t0 = np.datetime64("2020-01-01T00:00:00")
    ts = [t0 + np.timedelta64(5 * i, "m") for i in range(n)]
    v = 10 + np.sin(np.arange(n) / 7) + 0.1 * rng.standard_normal(n)
    if spike is not None:
        v[spike:spike + 5] += 8
    (root / "data" / "synthetic").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    with open(root / "data" / "synthetic" / "s.csv", "w") as fh:
        fh.write("timestamp,value\n")
        for t, x in zip(ts, v):
            fh.write(f"{str(t).replace('T', ' ')},{float(x)!r}\n")
    lab = {"synthetic/s.csv": [[str(ts[a]).replace("T", " ") + ".000000",
                                str(ts[b]).replace("T", " ") + ".000000"] for a, b in windows]}
    (root / "labels" / "combined_windows.json").write_text(json.dumps(lab))
    return root


def test_load_corpus_and_results_layout(tmp_path):
    root = make_corpus(tmp_path / "nab")
    files = nabdata.load_corpus(root)
    assert [f.key for f in files] == ["synthetic/s.csv"]
    f = files[0]
    assert len(f.values) == 400 and f.category == "synthetic" and f.name == "s.csv"
    y = nabdata.labels_of(f)
    assert y.sum() == 40 and y[200] == 1 and y[239] == 1 and y[240] == 0
    scores = np.linspace(0, 1, 400)
    p = nabdata.write_results(tmp_path / "res", "edgert", f, scores)
    assert p == tmp_path / "res" / "edgert" / "synthetic" / "edgert_s.csv"
    lines = p.read_text().splitlines()
    assert lines[0] == "timestamp,value,anomaly_score,label"
    assert len(lines) == 401
    t, v, s, lb = lines[201].split(",")
    assert t == f.stamp_text[200] and v == f.value_text[200]
    assert float(s) == scores[200] and lb == "1"
    with pytest.raises(ValueError, match="3 scores for 400 rows"):
        nabdata.write_results(tmp_path / "res", "edgert", f, scores[:3])


def _run_cli(capsys, *argv):
    rc = nab.main(list(argv))
    return rc, capsys.readouterr().err


def test_cli_names_missing_directory_and_labels(tmp_path, capsys):
    rc, err = _run_cli(capsys, "--data", str(tmp_path / "nope"))
    assert rc == 2 and "nope: not a directory" in err
    (tmp_path / "empty").mkdir()
    rc, err = _run_cli(capsys, "--data", str(tmp_path / "empty"))
    assert rc == 2 and "combined_windows.json: labels file not found" in err


def test_cli_names_the_malformed_csv_row(tmp_path, capsys):
    root = make_corpus(tmp_path / "nab")
    p = root / "data" / "synthetic" / "s.csv"
    lines = p.read_text().splitlines()
    lines[7] = lines[7].split(",")[0] + ",12.x"
    p.write_text("\n".join(lines) + "\n")
    rc, err = _run_cli(capsys, "--data", str(root))
    assert rc == 2 and "s.csv: line 8: field 'value': not a number: '12.x'" in err
    lines[7] = "2020-13-01 00:35:00,1.0"
    p.write_text("\n".join(lines) + "\n")
    rc, err = _run_cli(capsys, "--data", str(root))
    assert rc == 2 and "s.csv: line 8: field 'timestamp'" in err
    p.write_text("time,val\n2020-01-01 00:00:00,1\n")
    rc, err = _run_cli(capsys, "--data", str(root))
    assert rc == 2 and "s.csv: line 1: header" in err


def test_cli_names_the_malformed_labels(tmp_path, capsys):
    root = make_corpus(tmp_path / "nab")
    lab = root / "labels" / "combined_windows.json"
    lab.write_text("{not json")
    rc, err = _run_cli(capsys, "--data", str(root))
    assert rc == 2 and "combined_windows.json: not valid JSON" in err
    lab.write_text(json.dumps({"synthetic/s.csv": [["2020-01-01 00:00:00"]]}))
    rc, err = _run_cli(capsys, "--data", str(root))
    assert rc == 2 and "'synthetic/s.csv' window 0: expected [start, end]" in err
    lab.write_text(json.dumps({"synthetic/s.csv": [["2020-01-01 00:01:00",
                                                    "2020-01-01 00:30:00"]]}))
    rc, err = _run_cli(capsys, "--data", str(root))
    assert rc == 2 and "window 0 limit 2020-01-01T00:01:00" in err
    lab.write_text(json.dumps({"synthetic/other.csv": []}))
    rc, err = _run_cli(capsys, "--data", str(root))
    assert rc == 2 and "other.csv: data file for 'synthetic/other.csv'" in err


def test_eval_nab_is_registered_in_the_cli():
    from edgert.cli import build_parser

    args = build_parser().parse_args(["eval", "nab", "--data", "x", "--json",
                                      "--profile", "standard"])
    assert args.fn is nab.cmd_nab and args.profile == ["standard"] and args.json


# ---------------------------------------------------------------------------------------------
# the online decisions (no model needed: synthetic error streams)
# ---------------------------------------------------------------------------------------------

def test_online_scores_report_one_event_per_burst():
    rng = np.random.default_rng(1)
    n, w, p = 6000, 32, 750
    err = np.exp(rng.normal(-3, 0.3, n))
    err[3000:3060] *= 40            # a burst of large errors
    s = nab.online_scores(err, p, w, nab.NabConfig())
    assert s.shape == (n,) and np.all((s >= 0) & (s <= 1))
    assert not s[:p].any()          # probationary rows never score
    ev = np.flatnonzero(s > 0)
    burst = ev[(ev >= 3000) & (ev < 3060 + 72)]
    # reported from its first row; again only as it grows 3x stronger (escalate), early on
    assert burst[0] == 3000 and burst[-1] < 3010 and len(burst) <= 4
    assert np.all(np.diff(s[burst]) > 0) and np.all(s[burst][1:] > 3 * s[burst][:-1])
    assert s[burst].max() == s.max() > 0.5          # the strongest event of the stream
    assert len(ev) < 10
    once = nab.online_scores(err, p, w, nab.NabConfig(escalate=0))
    assert list(np.flatnonzero(once[3000:3132])) == [0]   # without escalation: once


def test_drift_restart_makes_a_new_level_normal():
    rng = np.random.default_rng(2)
    n, w, p = 8000, 32, 750
    err = np.exp(rng.normal(-3, 0.3, n))
    err[3000:] *= 20                # a new normal from row 3000 on ...
    err[5000:5060] *= 40            # ... and a burst on top of it later

    def run(cfg):
        sc = nab.OnlineScorer(p - (w - 1), cfg, n)
        out = np.concatenate([sc.step(err[a:a + 32]) for a in range(0, n, 32)])
        return out, sc.drifts

    out, drifts = run(nab.NabConfig())
    assert out[3000:3010].max() > 0                   # the change itself is reported
    assert any(3000 <= d < 3300 for d in drifts)       # Page-Hinkley saw it
    assert out[5000:5010].max() > 0                   # the later burst is seen again
    # without the restart the new level stays one long alarm: the burst goes unreported
    out2, drifts2 = run(nab.NabConfig(ph_threshold=1e12))
    assert not drifts2 and out2[3000:3010].max() > 0 and not out2[3010:6000].any()


# ---------------------------------------------------------------------------------------------
# end to end
# ---------------------------------------------------------------------------------------------

@pytest.mark.skipif(not HAS_TF, reason="TensorFlow not installed (pip install 'edgert[train]'): "
                                       "the per-file models are trained")
def test_end_to_end_on_a_synthetic_corpus(tmp_path, capsys):
    root = make_corpus(tmp_path / "nab", n=1200, windows=((800, 859),), spike=805)
    rc = nab.main(["--data", str(root), "--json", "--results", str(tmp_path / "res"),
                   "--models", str(tmp_path / "models"), "--epochs", "3"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    res = json.loads(out[-1])
    assert {"standard", "low_fp", "low_fn", "files"} <= set(res)
    assert res["files"] == 1 and -100 <= res["standard"] <= 100
    assert (tmp_path / "res" / "edgert" / "synthetic" / "edgert_s.csv").is_file()
    # a second run reuses the models (no training) and gives the same scores
    assert nab.main(["--data", str(root), "--json", "--models", str(tmp_path / "models")]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["standard"] == res["standard"]
    # ... but not models of another seed
    assert nab.main(["--data", str(root), "--models", str(tmp_path / "models"),
                     "--seed", "1"]) == 2
    assert "trained with seed=0, this run asks for 1" in capsys.readouterr().err


@pytest.mark.skipif(not (NAB_DATA / "labels" / "combined_windows.json").is_file(),
                    reason=f"NAB data not found at {NAB_DATA} (set EDGERT_NAB_DATA)")
def test_shared_corpus_structure_and_baselines():
    files = nabdata.load_corpus(NAB_DATA)
    n_windows = sum(len(f.windows) for f in files)
    # ../shared held realKnownCause only (7 files, 19 windows), now 35 files with 55 windows
    assert (len(files), n_windows) in ((7, 19), (35, 55))
    res = nab.score_corpus(files, [np.zeros(len(f.values)) for f in files])
    for k in ("standard", "low_fp", "low_fn"):
        assert res[k]["score"] == pytest.approx(0.0)
        assert res[k]["perfect"] == float(n_windows)
    starts = []
    for f in files:
        s = np.zeros(len(f.values))
        for a, _ in ns.window_rows(f.timestamps, f.windows):
            s[a] = 1.0
        starts.append(s)
    res = nab.score_corpus(files, starts)
    assert all(res[k]["score"] == pytest.approx(100.0) for k in ("standard", "low_fp", "low_fn"))


def test_vectorized_erfc_matches_math_erfc():
    x = np.linspace(-6, 9, 1501)     # tails down to erfc(9) ~ 4e-37
    got = nab._erfc(x)
    want = np.array([math.erfc(v) for v in x])
    assert np.max(np.abs(got / want - 1)) < 2e-7


def test_level_channel_sees_what_the_error_does_not():
    rng = np.random.default_rng(3)
    n, w, p = 6000, 32, 750
    err = np.exp(rng.normal(-3, 0.3, n))          # the model's error stays normal ...
    values = rng.normal(0, 1, n)
    values[4000:4200] += 6                        # ... while the level leaves its range
    with_level = nab.online_scores(err, p, w, nab.NabConfig(), values)
    without = nab.online_scores(err, p, w, nab.NabConfig(level=False), values)
    assert with_level[4000:4010].max() == with_level.max() > 0.3
    assert not without[4000:4010].any()
    # the level alone, with a flat error (what --json reports as level_only)
    alone = nab.online_scores(np.ones(n), p, w, nab.NabConfig(), values)
    assert alone[4000:4010].any()
