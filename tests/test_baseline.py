"""The statistical baseline (`edgert.evaluate.baseline`) and its rows in ``edgert eval``."""

import json

import numpy as np
import pytest

import naive
from edgert.evaluate import baseline as B


@pytest.mark.parametrize("seed", range(6))
def test_window_features_equal_naive_loops(seed):
    rng = np.random.default_rng(seed)
    n, C = int(rng.integers(8, 120)), int(rng.integers(1, 6))
    W = int(rng.integers(1, n + 1))
    x = (rng.normal(size=(n, C)) * rng.uniform(0.1, 50, C) + rng.uniform(-100, 100, C))
    x = x.astype(rng.choice([np.float32, np.float64]))
    starts = np.sort(rng.choice(n - W + 1, size=min(7, n - W + 1), replace=False))
    mean, std = rng.normal(size=C), rng.uniform(0.2, 5, C)
    phases = bool(seed % 2)
    tail = None if seed < 3 else int(rng.integers(1, W + 1))
    got = B.window_features(x, W, starts, mean=mean, std=std, phases=phases, tail=tail)
    want = naive.baseline_features(x, W, starts, mean, std, phases, tail)
    assert got.shape == want.shape == (len(starts), 3 * C + (C if phases else 0))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    assert B.feature_names([f"c{i}" for i in range(C)], phases)[:3] == ["level:c0", "rms:c0",
                                                                         "spread:c0"]


def test_default_starts_hop_and_bad_input():
    x = np.arange(40, dtype=np.float64).reshape(20, 2)
    f = B.window_features(x, 8, hop=4)
    assert len(f) == len(B.window_starts(20, 8, 4)) == 4
    np.testing.assert_allclose(f, naive.baseline_features(x, 8, [0, 4, 8, 12], [0, 0], [1, 1],
                                                          False))
    with pytest.raises(ValueError, match="window starts"):
        B.window_features(x, 8, np.array([13]))
    with pytest.raises(ValueError, match="nonfinite"):
        B.window_features(np.full((20, 2), np.nan), 8)
    with pytest.raises(ValueError, match="std"):
        B.window_features(x, 8, std=[1.0, 0.0])
    with pytest.raises(ValueError, match="tail"):
        B.window_features(x, 8, tail=9)


def test_features_from_the_kernels_window_stats_match():
    """The daemon's ingest kernel already computes each window's raw mean and std: the same
    features come from them (what a daemon-side baseline would use)."""
    from edgert import kernels

    rng = np.random.default_rng(3)
    x = (rng.normal(size=(300, 3)) * 2 + 0.3).astype(np.float32)
    ring = np.zeros((600, 3), np.float32)
    kernels.ring_append(ring, 300, 0, x)
    starts = np.arange(0, 300 - 64 + 1, 16, dtype=np.int64)
    stats = np.zeros((len(starts), 3, 6), np.float32)
    kernels.window_stats(ring, 300, starts, 64, stats)
    mean, std = np.array([0.1, -0.2, 0.0]), np.array([2.0, 1.9, 2.1])
    np.testing.assert_allclose(B.features_from_stats(stats, mean, std, phases=True),
                               B.window_features(x, 64, starts, mean=mean, std=std, phases=True),
                               rtol=1e-5, atol=1e-5)


def test_score_is_the_largest_normalized_deviation():
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(200, 4)) * [1, 2, 3, 4]
    b = B.StatBaseline.fit(normal)
    f = rng.normal(size=(9, 4)) * 5
    want = [max(abs(f[i, j] - normal[:, j].mean()) / normal[:, j].std() for j in range(4))
            for i in range(9)]
    np.testing.assert_allclose(b.score(f), want)
    q = B.StatBaseline.fit(normal, scale=0.999, columns=[1, 3])
    ref = [np.quantile(np.abs(normal[:, j] - normal[:, j].mean()), 0.999) for j in (1, 3)]
    np.testing.assert_allclose(q.score(f), np.max(np.abs(f[:, [1, 3]] - normal.mean(0)[[1, 3]])
                                                  / ref, axis=1))
    with pytest.raises(ValueError, match="threshold"):
        b.flags(f)
    with pytest.raises(ValueError, match="scale"):
        B.StatBaseline.fit(normal, scale=2.0)


def test_loro_calibration_is_the_models_rule():
    """threshold = factor x quantile('higher') of the pooled leave-one-out scores, with the
    quantile function edgert.train calibrates the autoencoder with."""
    from edgert.train.modeldir import quantile_higher

    rng = np.random.default_rng(1)
    groups = [rng.normal(loc=i * 0.1, size=(59, 5)) for i in range(4)]
    b = B.calibrate_loro(groups, q=0.999, factor=1.5)
    pooled = []
    for i, g in enumerate(groups):
        rest = np.concatenate([h for j, h in enumerate(groups) if j != i])
        c, s = rest.mean(axis=0), rest.std(axis=0)
        pooled += [float(np.max(np.abs(row - c) / s)) for row in g]
    assert b.threshold == pytest.approx(1.5 * quantile_higher(np.array(pooled), 0.999), rel=1e-12)
    assert b.calibration["quantile"] == 0.999 and b.calibration["factor"] == 1.5
    np.testing.assert_allclose(b.center, np.concatenate(groups).mean(axis=0))
    with pytest.raises(ValueError, match=">= 2"):
        B.calibrate_loro(groups[:1], 0.999, 1.5)


def test_combine():
    a, b = np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool)
    assert B.combine(a, b, "or").tolist() == [True, True, True, False]
    assert B.combine(a, b, "and").tolist() == [True, False, False, False]
    with pytest.raises(ValueError):
        B.combine(a, b, "xor")


@pytest.fixture(scope="module")
def itsc_json():
    """``edgert eval itsc --no-cnn --json`` on the shipped data and fold models."""
    import contextlib
    import io

    from edgert.evaluate import itsc

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert itsc.main(["--no-cnn", "--json"]) == 0
    text = out.getvalue().strip().splitlines()
    return "\n".join(text[:-1]), json.loads(text[-1])


def test_eval_itsc_reports_baseline_rows(itsc_json):
    text, res = itsc_json
    bl = res["baselines"]
    assert "(b') beside the autoencoder" in text and "model OR baseline" in text
    assert [f["fold"] for f in bl["folds"]] == [f"SC_HLT_00{i}" for i in range(1, 6)]
    for v in ("plain", "commissioned"):
        assert set(bl["summary"][v]) == {"model", "baseline", "or", "and"}
        for row in bl["summary"][v].values():
            assert len(row["detection_rate"]) == 12 and isinstance(row["target_met"], bool)
    # the model's decisions beside the baseline are the model rows' decisions, on the same windows
    plain = bl["summary"]["plain"]
    assert plain["model"]["false_alarm_rate_per_fold"] == res["ae"]["false_alarm_rate_per_fold"]
    assert plain["model"]["detection_rate"] == res["ae"]["detection_rate"]
    assert plain["model"]["healthy_windows"] == 5 * 59
    for f in bl["folds"]:  # OR and AND are what they say, window by window in the counts
        fa = f["plain"]["false_alarms"]
        assert max(fa["model"], fa["baseline"]) <= fa["or"] <= fa["model"] + fa["baseline"]
        assert fa["and"] <= min(fa["model"], fa["baseline"])
    # the commissioned rows score only the windows after the commissioning samples
    assert bl["summary"]["commissioned"]["model"]["healthy_windows"] == 5 * len(
        range(256, 1000 - 64 + 1, 16))


def test_eval_itsc_baseline_calibrated_by_the_fold_manifest(itsc_json):
    from edgert import models

    _, res = itsc_json
    for f in res["baselines"]["folds"]:
        mpath = models.resolve("motor-ae") / "folds" / f["fold"] / "manifest.json"
        cal = json.loads(mpath.read_text())["calibration"]
        for v in ("plain", "commissioned"):
            got = f[v]["baseline_calibration"]
            assert (got["quantile"], got["factor"]) == (cal["quantile"], cal["factor"])
            assert f[v]["baseline_threshold"] == pytest.approx(
                cal["factor"] * got["quantile_value"], abs=2e-4)


def test_eval_itsc_commission_rejects_bad_values(capsys):
    from edgert.evaluate import itsc

    assert itsc.main(["--no-cnn", "--commission", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("edgert eval itsc: commissioning samples must be >= 1")
    assert itsc.main(["--no-cnn", "--commission", "5000"]) == 2
    assert "commissioning needs 5000" in capsys.readouterr().err


def _synthetic_skab(seed=0, n=900):
    """A SKAB-shaped file (8 channels, 1 s rows) with a level shift on channel 2 from row 600
    to 700 (labelled): generated here, no SKAB data."""
    from edgert.evaluate.skab import SkabFile

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)) + np.arange(8) * 10
    y = np.zeros(n, np.int8)
    x[600:700, 2] += 6.0
    y[600:700] = 1
    return SkabFile(f"synthetic/{seed}", [f"ch{i}" for i in range(8)], x, y)


def test_skab_baseline_rows_on_synthetic_file():
    from edgert.evaluate import skab

    f = _synthetic_skab()
    cfg = skab.EdgeAEConfig()
    bl = skab.baseline_flags(f, cfg, scored=list(range(8)))
    n_win = len(f.x) - cfg.window + 1
    assert bl["skab_flags"].shape == bl["stream_flags"].shape == (n_win,)
    s = bl["stream_flags"]
    # the window ending at row i is window i - 59: flagged inside the shift (once the newest
    # 20 rows hold it) and until its last row leaves those 20 rows, then quiet again; rare
    # alarms on the noise before it (24 features, each at its own 0.999 quantile x 4/3)
    assert s[620 - 59:719 - 59].all() and not s[719 - 59:730 - 59].any()
    assert s[400 - 59:590 - 59].mean() < 0.05
    model = {"skab_flags": np.zeros(n_win, bool), "stream_flags": np.ones(n_win, bool)}
    r = skab.with_baseline(dict(model), bl)
    assert (r["or"]["skab_flags"] == bl["skab_flags"]).all()
    assert r["and"]["stream_flags"].tolist() == bl["stream_flags"].tolist()
    assert not r["and"]["skab_flags"].any() and r["or"]["stream_flags"].all()


def test_skab_json_carries_baseline_rows(monkeypatch, capsys):
    from edgert.evaluate import skab, skab_cli

    files = [_synthetic_skab(s) for s in range(2)]
    cfg = skab.EdgeAEConfig()
    per = []
    for f in files:
        n_win = len(f.x) - cfg.window + 1
        per.append(skab.with_baseline({"skab_flags": np.zeros(n_win, bool),
                                       "stream_flags": np.zeros(n_win, bool)},
                                      skab.baseline_flags(f, cfg, list(range(8)))))

    def fake_evaluate(data, **kw):  # the evaluation's result without training a model
        out = skab.summarize(files, per)
        for k in ("baseline", "or", "and"):
            sm = skab.summarize(files, [r[k] for r in per])
            out[k] = {"skab": sm["skab"], "stream": sm["stream"]}
        out.update({"method": "edgeae", "config": {"drift_limit": 1.0}, "files": 2, "seed": 0,
                    "backend": "cpu", "seconds": 0.0, "windows_scored": 1, "windows_per_s": 1.0})
        return out

    monkeypatch.setattr(skab, "evaluate", fake_evaluate)
    assert skab_cli.main(["--data", "unused", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    js = json.loads(lines[-1])
    for k in ("baseline", "or", "and"):
        for m in ("f1", "far", "mar", "stream_f1", "stream_far", "stream_mar"):
            assert isinstance(js[f"{k}_{m}"], float)
    assert js["f1"] == 0.0 and js["baseline_stream_f1"] > 0.5  # the model flagged nothing
    assert js["or_stream_f1"] == js["baseline_stream_f1"] and js["and_f1"] == 0.0
    assert any("statistical baseline, stream" in ln for ln in lines)


def _synthetic_nab(seed, n=1200, spike_at=900):
    """A NAB-shaped file (5-minute rows) with a level burst at ``spike_at`` and its window:
    generated here."""
    from edgert.evaluate.nabdata import NabFile

    rng = np.random.default_rng(seed)
    ts = np.datetime64("2020-01-01T00:00:00", "us") + np.arange(n) * np.timedelta64(5, "m")
    v = 10 + rng.normal(size=n)
    v[spike_at:spike_at + 20] += 8
    win = [(ts[spike_at - 30], ts[spike_at + 30])]
    return NabFile(f"synthetic/f{seed}.csv", ts, [str(t) for t in ts], v,
                   [str(x) for x in v], win)


def test_nab_baseline_scores_are_causal_and_find_the_burst():
    from edgert.evaluate import nab, nabscore

    f = _synthetic_nab(0)
    cfg = nab.NabConfig()
    p = nabscore.probation_length(len(f.values))
    s = nab.baseline_file_scores(f.values, p, cfg)
    assert s.shape == f.values.shape and (s[:int(np.ceil(p))] == 0).all()
    assert s[900:930].max() > 0  # an event in the burst's window
    # causal: changing the future does not change a row's score
    g = f.values.copy()
    g[1000:] += 50
    np.testing.assert_array_equal(nab.baseline_file_scores(g, p, cfg)[:1000], s[:1000])


def test_nab_baseline_rows(monkeypatch, capsys):
    from edgert.evaluate import nab, nabscore

    files = [_synthetic_nab(s) for s in range(2)]
    cfg = nab.NabConfig()
    quiet = [np.zeros(len(f.values)) for f in files]  # a detector that reports nothing
    rows = nab.baseline_rows(files, quiet, cfg)
    assert set(rows["baseline"]) == set(nab.PROFILE_KEYS) == set(rows["or"])
    assert rows["baseline"]["standard"] > 50  # it finds the bursts the quiet detector misses
    assert rows["or"] == rows["baseline"]  # OR with a silent detector is the baseline
    assert "per_category" not in rows  # one category only

    def fake_evaluate(data, cfg, **kw):  # the run's result without training models
        prof = nab.score_corpus(files, quiet)
        return {"profiles": prof, "ablation": {}, "baseline": rows, "files": [],
                "n_files": 2, "rows": 2400, "seconds": 0.0, "rows_per_s": 1.0,
                "backend": "cpu"}

    monkeypatch.setattr(nab, "evaluate", fake_evaluate)
    assert nab.main(["--data", "unused", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    js = json.loads(lines[-1])
    assert js["baseline"]["baseline"]["standard"] == pytest.approx(rows["baseline"]["standard"])
    assert any("statistical baseline (level/rms/spread)" in ln for ln in lines)
    assert nabscore.probation_length(1200) == 180


def test_field_round_trip_and_bad_fields():
    rng = np.random.default_rng(2)
    b = B.calibrate_loro([rng.normal(size=(30, 4)) for _ in range(3)], 0.999, 1.5)
    f = json.loads(json.dumps(b.to_field(["a", "b", "c", "d"])))
    c = B.StatBaseline.from_field(f)
    x = rng.normal(size=(10, 4)) * 3
    assert (c.flags(x) == b.flags(x)).all() and c.threshold == b.threshold
    for bad, match in (({**f, "scale": [1, 0, 1, 1]}, "scale"),
                       ({**f, "threshold": float("nan")}, "threshold"),
                       ({**f, "columns": [4]}, "columns"), ({"center": [1]}, "scale")):
        with pytest.raises(ValueError, match=match):
            B.StatBaseline.from_field(bad)
