"""edgert.evaluate.skab_adapt: the causal adaptive replay on synthetic scores, the runtime
re-scoring against the fixed run's scorer (shipped model, no TensorFlow), the command line, and
(with TensorFlow and SKAB) a one-file end-to-end run."""

import json

import numpy as np
import pytest

from edgert.adapt import SafeNormalization
from edgert.drift import PageHinkley
from edgert.evaluate import skab, skab_cli
from edgert.evaluate import skab_adapt as sa
from edgert.scoring import FixedThreshold
from edgert.thresholds import SpotThreshold
from test_eval_skab import SKAB_DATA, needs_data, needs_tf


def fixed_scores(x):
    return lambda i, k, *_: x[i:i + k]


def stream(n=3000, fault=(2000, 2100), seed=0):
    """Scores like the ratios of the SKAB score: ~0.6 +- noise, a fault far above."""
    rng = np.random.default_rng(seed)
    x = 0.6 + 0.12 * rng.standard_normal(n)
    x[fault[0]:fault[1]] += 3.0
    return x


def test_parse_variants():
    assert sa.parse_variants("off") == [] and sa.parse_variants("") == []
    assert sa.parse_variants("all") == list(sa.VARIANTS)
    assert sa.parse_variants("spot, safe") == ["spot", "safe"]
    with pytest.raises(ValueError, match="bogus"):
        sa.parse_variants("spot,bogus")


def test_fixed_replay_is_the_fixed_decision():
    x = stream()
    r = sa.replay(len(x), fixed_scores(x), FixedThreshold(4 / 3), batch=7)
    np.testing.assert_array_equal(r.flags, x > np.float32(4 / 3))
    assert np.all(r.thresholds == np.float32(4 / 3)) and r.drifts == 0


@pytest.mark.parametrize("batch", [1, 5])
def test_adaptive_replay_is_causal(batch):
    """A window's decision and threshold depend on earlier windows only (learning happens after
    the batch is decided): changing the future changes nothing before it."""
    x = stream(seed=1)
    mk = lambda: SpotThreshold(q=1e-3, calibrated=4 / 3, n_init=300, max_sensors=1)  # noqa: E731
    a = sa.replay(len(x), fixed_scores(x), mk(), batch=batch)
    y = x.copy()
    cut = 1500 - 1500 % batch  # a batch boundary
    y[cut:] = 10.0  # a different future
    b = sa.replay(len(y), fixed_scores(y), mk(), batch=batch)
    np.testing.assert_array_equal(a.flags[:cut], b.flags[:cut])
    np.testing.assert_array_equal(a.thresholds[:cut], b.thresholds[:cut])
    # the threshold moved away from the calibrated value after warm-up, and the fault is flagged
    assert np.all(a.thresholds[:300] == np.float32(4 / 3))
    assert abs(a.thresholds[1000] - 4 / 3) > 1e-3
    assert a.flags[2000:2100].mean() > 0.95


@pytest.mark.parametrize("variant", ["spot", "dspot", "quantile"])
def test_threshold_variants_learn_from_the_stream_and_keep_a_fault(variant):
    x = stream(seed=2)
    n_tr = 341
    stats = sa.window_stats(np.zeros((len(x) + 59, 2)), 60)
    r = sa.run_variant(variant, None, x, 4 / 3, n_tr, stats, None)
    fixed = x > 4 / 3
    assert r.flags[2000:2100].mean() > 0.9
    # on normal windows the adaptive thresholds do not alarm more than a handful of times
    normal = np.ones(len(x), bool)
    normal[2000:2100] = False
    assert r.flags[normal].sum() <= fixed[normal].sum() + 10


def test_drift_recalibrates_the_threshold():
    x = stream(seed=3, fault=(0, 0))
    rows = np.zeros((len(x), 1))
    rows[1500:] = 5.0  # a level shift in a channel statistic
    rows += np.random.default_rng(0).normal(scale=0.1, size=rows.shape)
    calls = []

    class Spy(FixedThreshold):
        def recalibrate(self, s):
            calls.append(s)

    r = sa.replay(len(x), fixed_scores(x), Spy(4 / 3), drift=PageHinkley(2, threshold=50),
                  drift_rows=rows)
    assert r.drifts >= 1 and calls and calls[0] == 0


def test_window_stats():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3)) * [1, 10, 100] + [5, -3, 1000]
    m, s, rms = sa.window_stats(x, 60)
    assert m.shape == (41, 3)
    np.testing.assert_allclose(m[7], x[7:67].mean(0))
    np.testing.assert_allclose(s[7], x[7:67].std(0))
    np.testing.assert_allclose(rms[40], np.sqrt((x[40:100] ** 2).mean(0)))


# ---------------------------------------------------------------------------------------------
# the runtime re-scoring (shipped model, no TensorFlow)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped_ae():
    from edgert import models

    try:
        return models.resolve("motor-ae")
    except models.ModelError as exc:
        pytest.skip(f"shipped model motor-ae unavailable: {exc}")


def _series(m, n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(m.window + n, m.n_channels)) * m.std + m.mean


def test_runtime_stream_equals_the_fixed_scorer(shipped_ae):
    sc = skab.RuntimeScorer(shipped_ae, max_batch=8, block=13, tail=16)
    m = sc.model
    x = _series(m, 120)
    full = sc.score(x)
    ref = np.quantile(full.tail_err[:40].astype(np.float64), 0.999, axis=0)
    ch = [0, 2]
    pre = (full.tail_err[:, ch] / ref[ch]).max(axis=1)
    for batch in (1, 4):
        st = sa.RuntimeStream(shipped_ae, x, 16, ref[ch], ch, max_batch=batch)
        got = np.concatenate([st.score(i, min(batch, len(pre) - i), m.mean, m.inv_std)
                              for i in range(0, len(pre), batch)])
        st.close()
        np.testing.assert_array_equal(got, pre)
    st = sa.RuntimeStream(shipped_ae, x, 16, ref[ch], ch)
    for i in range(len(pre)):
        st.score(i, 1, m.mean, m.inv_std)
    with pytest.raises(ValueError, match="left the ring"):
        st.score(0, 1, m.mean, m.inv_std)


def test_safe_replay_without_adaptation_is_the_fixed_run(shipped_ae):
    """SafeNormalization that never moves (no tracking, no acceptance): the replay re-scores
    every window exactly as the fixed run did, and a shifted normalization changes the
    scores (it really feeds the runtime)."""
    sc = skab.RuntimeScorer(shipped_ae, max_batch=8, tail=16)
    m = sc.model
    x = _series(m, 150, seed=1)
    full = sc.score(x)
    ref = np.quantile(full.tail_err[:50].astype(np.float64), 0.999, axis=0)
    ch = list(range(m.n_channels))
    pre = (full.tail_err / ref).max(axis=1)
    n = len(pre)
    mean, std, _ = sa.window_stats(x, m.window)
    t = np.arange(n, dtype=np.int64) * sa.SEC // 100
    norm = SafeNormalization(m.mean, m.std, max_sensors=1, track_step=0.0)
    st = sa.RuntimeStream(shipped_ae, x, 16, ref, ch)
    r = sa.replay(n, st.score, FixedThreshold(4 / 3), norm=norm, win_mean=mean, win_std=std,
                  t_start=t)
    np.testing.assert_array_equal(r.scores, pre)
    norm = SafeNormalization(m.mean, m.std, max_sensors=1, track_step=0.0)
    norm.mean[0] += 2 * m.std  # as if an operating point had been applied
    st = sa.RuntimeStream(shipped_ae, x, 16, ref, ch)
    r = sa.replay(n, st.score, FixedThreshold(4 / 3), norm=norm, win_mean=mean, win_std=std,
                  t_start=t)
    assert np.abs(r.scores - pre).max() > 0.1


def test_cli_rejects_bad_adapt_options(tmp_path, capsys):
    assert skab_cli.main(["--data", str(tmp_path), "--adapt", "bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert skab_cli.main(["--data", str(tmp_path), "--adapt", "spot", "--method", "convae"]) == 2
    assert "edgeae" in capsys.readouterr().err
    assert skab_cli.main(["--data", str(tmp_path / "missing"), "--adapt", "spot"]) == 2
    assert "not a directory" in capsys.readouterr().err


@needs_tf
@needs_data
def test_cli_adapt_one_file(capsys):
    assert skab_cli.main(["--data", str(SKAB_DATA), "--files", "1", "--epochs", "1",
                      "--adapt", "spot,safe", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    j = json.loads(out[-1])
    assert set(j["adapt"]) == {"spot", "safe"} and j["adapt_fixed_mismatch"] == 0
    n = sum(j["stream"][k] for k in ("tp", "fp", "fn", "tn"))
    for r in j["adapt"].values():
        assert sum(r[k] for k in ("tp", "fp", "fn", "tn")) == n
        assert 0 <= r["f1"] <= 1 and 0 <= r["far"] <= 100
    assert any("Adaptive streaming" in line for line in out)
