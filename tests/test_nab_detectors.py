"""edgert.detectors (context novelty, anomaly likelihood, level likelihood) and
``edgert eval nab --detector``: causality, block invariance, determinism, a spike found on a
synthetic series, bad input, bounded memory, the numpy-free fallback, the CLI on a tiny corpus.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgert.detectors import (DETECTORS, AnomalyLikelihood, ContextConfig, ContextDetector,
                              ContextNovelty, LevelDetector, LikelihoodConfig, make_detector,
                              time_buckets)
from edgert.evaluate import nab

T0 = np.datetime64("2020-01-06T00:00:00")   # a Monday


def series(n=4000, seed=0, spike=None):
    """A daily cycle of 5-minute rows with noise (and a 3-row spike at ``spike``)."""
    rng = np.random.default_rng(seed)
    i = np.arange(n)
    v = 10 + 3 * np.sin(2 * np.pi * i / 288) + 0.3 * rng.standard_normal(n)
    if spike is not None:
        v[spike:spike + 3] += 12
    return v, T0 + i * np.timedelta64(5, "m")


def run(det, v, ts, block=None):
    if block is None:
        return det.update(v, ts)
    return np.concatenate([det.update(v[a:a + block], ts[a:a + block])
                           for a in range(0, len(v), block)])


@pytest.mark.parametrize("name", sorted(DETECTORS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_score_at_t_does_not_depend_on_later_rows(name, seed):
    v, ts = series(seed=seed)
    base = run(make_detector(name, 600), v, ts)
    rng = np.random.default_rng(100 + seed)
    for cut in (600, 1500, 3100):
        w = v.copy()
        w[cut:] = rng.normal(50, 20, len(v) - cut)     # a different future
        got = run(make_detector(name, 600), w, ts)
        assert np.array_equal(got[:cut], base[:cut])
        assert not np.array_equal(got[cut:], base[cut:])   # the future did change


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_blocks_of_any_size_give_the_same_scores(name):
    v, ts = series(n=2500, seed=3, spike=1800)
    one = run(make_detector(name, 500), v, ts)
    for block in (1, 7, 256, 499, 501):
        assert np.array_equal(run(make_detector(name, 500), v, ts, block), one), block


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_deterministic(seed):
    v, ts = series(seed=seed, spike=3000)
    a = run(ContextDetector(600), v, ts)
    b = run(ContextDetector(600), v, ts, block=100)
    assert np.array_equal(a, b)
    assert np.all((a >= 0) & (a <= 1)) and not a[:600].any()   # warm-up rows score 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_spike_is_the_strongest_event(seed):
    v, ts = series(seed=seed, spike=3000)
    s = run(ContextDetector(600), v, ts, block=64)
    assert s[3000] == s.max() == 1.0
    # the normal rows stay well below the spike, and rarely reach 0.5
    normal = np.r_[s[600:3000], s[3020:]]
    assert normal.max() < 0.6 and (normal >= 0.5).sum() <= 2
    lv = run(LevelDetector(600), v, ts, block=64)
    assert lv[3000] == lv.max() >= 0.5


def test_likelihood_reports_one_event_per_red_episode():
    rng = np.random.default_rng(4)
    n = 3000
    raw = np.clip(rng.normal(0.2, 0.05, n), 0, 1)
    raw[2000:2100] = 1.0                      # a long run of surprise
    values = np.zeros(n)                      # spatial rule off: constant values
    s = AnomalyLikelihood(LikelihoodConfig.for_probation(600)).update(raw, values)
    assert s[:600].max() == pytest.approx(np.log(0.5 + 1e-10) / np.log(1e-10))
    hot = np.flatnonzero(s >= 0.5)
    assert len(hot) == 1 and 2000 <= hot[0] < 2010
    assert np.all(s[hot[0] + 1:2100] <= 0.31)   # the rest of the episode: "yellow" (1e-3)


def test_spatial_rule_scores_a_new_extreme_one():
    v = np.r_[np.tile([0.0, 1.0], 500), 1.2, 1.04]
    s = AnomalyLikelihood(LikelihoodConfig.for_probation(200)).update(np.zeros(len(v)), v)
    assert s[1000] == 1.0 and s[1001] < 1.0       # 1.2 > 1 + 5 %; 1.04 is within 5 % of 1.2


def test_time_buckets():
    ts = np.array(["2020-01-06T00:10", "2020-01-06T13:59", "2020-01-11T05:00",
                   "2020-01-12T23:30"], dtype="datetime64[m]")
    assert time_buckets(ts).tolist() == [0, 13, 24 + 5, 24 + 23]


def test_bad_input_and_settings_are_named():
    det = ContextDetector(100)
    with pytest.raises(ValueError, match=r"row 2 .* not finite"):
        det.update(np.array([1.0, 2.0, np.nan]))
    with pytest.raises(ValueError, match="3 timestamps for 2 values"):
        det.update(np.ones(2), np.array(["2020-01-01"] * 3, "datetime64[s]"))
    with pytest.raises(ValueError, match="order"):
        ContextDetector(100, context={"order": 0})
    with pytest.raises(ValueError, match="levels"):
        ContextNovelty(ContextConfig(levels=(1,)))
    with pytest.raises(ValueError, match="table_bits"):
        ContextNovelty(ContextConfig(table_bits=64))
    with pytest.raises(ValueError, match="warmup"):
        LevelDetector(1)
    with pytest.raises(ValueError, match="history"):
        AnomalyLikelihood(LikelihoodConfig(history=0))
    with pytest.raises(ValueError, match="history must be an integer"):
        AnomalyLikelihood(LikelihoodConfig(history=8640.5))
    with pytest.raises(ValueError, match="history must be in"):
        AnomalyLikelihood(LikelihoodConfig(history=1 << 40))      # not allocated
    with pytest.raises(ValueError, match="order must be an integer"):
        ContextNovelty(ContextConfig(order=5.0))
    with pytest.raises(ValueError, match="unknown detector 'nope'"):
        make_detector("nope", 100)


def test_a_full_table_drops_new_contexts_and_keeps_going():
    v, ts = series(n=3000, seed=5)
    det = ContextDetector(300, context={"table_bits": 8})     # 256 slots
    s = run(det, v, ts, block=128)
    assert det.ctx.dropped > 0 and det.ctx._state[1] <= 192   # stopped at 3/4 full
    assert np.all(np.isfinite(s)) and np.all((s >= 0) & (s <= 1))


def test_constant_stream_is_quiet():
    s = ContextDetector(200).update(np.full(2000, 7.0))
    assert s.max() < 0.5


def test_plain_python_fallback_matches_numba():
    """EDGERT_NO_NUMBA=1: the same kernels as plain Python give the same scores."""
    code = ("import numpy as np, sys; from edgert.detectors import ContextDetector, BACKEND; "
            "i = np.arange(900); v = np.sin(i / 10) + 0.01 * (i % 7); v[700] += 5; "
            "ts = np.datetime64('2020-01-01') + i * np.timedelta64(5, 'm'); "
            "sys.stdout.write(BACKEND + ' ' + ' '.join(repr(float(x)) for x in "
            "ContextDetector(200).update(v, ts)))")
    env = dict(os.environ, EDGERT_NO_NUMBA="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()
    assert out[0] == "python"
    i = np.arange(900)
    v = np.sin(i / 10) + 0.01 * (i % 7)
    v[700] += 5
    ts = np.datetime64("2020-01-01") + i * np.timedelta64(5, "m")
    want = ContextDetector(200).update(v, ts)
    assert np.array_equal(np.array([float(x) for x in out[1:]]), want)


# ---------------------------------------------------------------------------------------------
# edgert eval nab --detector
# ---------------------------------------------------------------------------------------------

def make_corpus(root: Path, n=2000, spike=1500, window=(1480, 1579)) -> Path:
    """A NAB-layout directory: ``synthetic/s.csv`` (5-minute rows, a spike in one window)
    and ``quiet/q.csv`` (the same cycle, no anomaly, no window)."""
    (root / "labels").mkdir(parents=True, exist_ok=True)
    lab = {}
    for key, sp in (("synthetic/s.csv", spike), ("quiet/q.csv", None)):
        v, ts = series(n=n, seed=7, spike=sp)
        path = root / "data" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        stamps = [str(t).replace("T", " ") for t in ts.astype("datetime64[s]")]
        with open(path, "w") as fh:
            fh.write("timestamp,value\n")
            for t, x in zip(stamps, v):
                fh.write(f"{t},{float(x)!r}\n")
        lab[key] = ([[stamps[window[0]] + ".000000", stamps[window[1]] + ".000000"]]
                    if sp is not None else [])
    (root / "labels" / "combined_windows.json").write_text(json.dumps(lab))
    return root


def test_cli_detector_context_scores_a_tiny_corpus(tmp_path, capsys):
    root = make_corpus(tmp_path / "nab")
    rc = nab.main(["--data", str(root), "--detector", "context", "--json",
                   "--results", str(tmp_path / "res")])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    res = json.loads(out[-1])
    assert res["detector"] == "context" and res["files"] == 2
    assert res["standard"] > 90          # the spike is found at the window's start
    assert res["per_file"]["synthetic/s.csv"]["windows_detected"] == 1
    assert res["categories"]["synthetic"]["standard"] == res["standard"]
    assert res["categories"]["quiet"]["standard_fp_rows"] == 0
    csv = tmp_path / "res" / "edgertContext" / "synthetic" / "edgertContext_s.csv"
    assert csv.is_file() and csv.read_text().startswith("timestamp,value,anomaly_score,label")
    assert "edgert context (this run)" in "\n".join(out)


def test_cli_detector_choices_and_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        nab.main(["--data", str(tmp_path), "--detector", "nope"])
    assert e.value.code == 2
    assert nab.main(["--data", str(tmp_path / "missing"), "--detector", "level"]) == 2
    err = capsys.readouterr().err
    assert "edgert eval nab:" in err and "not a directory" in err and "Traceback" not in err
    root = make_corpus(tmp_path / "nab")
    for bad, msg in ((["--set", "context.nope=1"], "context has no setting 'nope'"),
                     (["--set", "context.order=99"], "order must be in [1, 8]"),
                     (["--set", "order=3"], "expected GROUP.FIELD=VALUE"),
                     (["--set", "likelihood.avg=x"], "is not JSON")):
        assert nab.main(["--data", str(root), "--detector", "context", *bad]) == 2
        assert msg in capsys.readouterr().err
    assert nab.main(["--data", str(root), "--set", "context.order=3"]) == 2   # the model
    assert "--set applies to --detector" in capsys.readouterr().err
    assert nab.main(["--data", str(root), "--detector", "context", "--json",
                     "--set", "context.order=3", "--set", "context.levels=[8, 16]"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["params"] == {"context": {"order": 3, "levels": [8, 16]}}
    from edgert.cli import build_parser
    args = build_parser().parse_args(["eval", "nab", "--data", "x", "--detector", "context"])
    assert args.detector == "context"


def test_model_error_through_the_likelihood():
    """The model path's extra row: the int8 model's error -> AnomalyLikelihood (no TensorFlow
    needed here: a synthetic error stream)."""
    rng = np.random.default_rng(6)
    n, p = 5000, 750
    err = np.exp(rng.normal(-3, 0.3, n))
    err[:31] = np.nan                       # rows before the first full window
    err[3500:3520] *= 30                    # the model fails on a burst
    values = np.sin(np.arange(n) / 10)      # bounded: the spatial rule stays quiet
    s = nab.model_likelihood_scores(err, values, p)
    assert not s[:p].any() and np.all((s >= 0) & (s <= 1))
    assert s[3500:3510].max() == s[p:].max() >= 0.5
    future = err.copy()
    future[3000:] = 1.0
    assert np.array_equal(nab.model_likelihood_scores(future, values, p)[:3000], s[:3000])
