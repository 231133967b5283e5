"""edgert.evaluate.skab: SKAB's window->point mapping, the metrics, the streaming runtime path,
and (with TensorFlow and the data) a tiny end-to-end run.

SKAB is GPL-3.0 and is never copied into the project: the end-to-end tests read it from
``../shared/data/SKAB`` (or ``$EDGERT_SKAB_DATA``) and skip when it is absent; every other test
uses synthetic numbers.
"""

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from edgert.evaluate import skab, skab_cli

SKAB_DATA = Path(os.environ.get("EDGERT_SKAB_DATA")
                 or Path(__file__).resolve().parents[2] / "shared" / "data" / "SKAB")
HAS_TF = importlib.util.find_spec("tensorflow") is not None
needs_tf = pytest.mark.skipif(not HAS_TF, reason="TensorFlow not installed (pip install "
                                                 "'edgert[train]'): training is needed")
needs_data = pytest.mark.skipif(not (SKAB_DATA / "valve1").is_dir(),
                                reason=f"SKAB data not found at {SKAB_DATA} (set "
                                       "EDGERT_SKAB_DATA); it is GPL-3.0 and never copied here")


# ---------------------------------------------------------------------------------------------
# SKAB's mapping, transcribed from its baseline code
# ---------------------------------------------------------------------------------------------

def skab_loop(anomalous_data, n_steps):
    """SKAB's notebook code, verbatim apart from names (prediction over the scored points)."""
    anomalous_data_indices = []
    for data_idx in range(n_steps - 1, len(anomalous_data) - n_steps + 1):
        if np.all(anomalous_data[data_idx - n_steps + 1: data_idx]):
            anomalous_data_indices.append(data_idx)
    prediction = np.zeros(len(anomalous_data) + n_steps - 1, dtype=bool)
    prediction[anomalous_data_indices] = True
    return prediction


@pytest.mark.parametrize("window", [2, 5, 60])
def test_skab_mapping_equals_skab_loop(window):
    rng = np.random.default_rng(window)
    for _ in range(60):
        n = int(rng.integers(0, 4 * window + 20))
        # runs of flags, so that "all flagged" happens
        flags = np.repeat(rng.random(n // 3 + 1) < 0.6, 3)[:n]
        flags ^= rng.random(n) < 0.02
        got = skab.skab_point_flags(flags, window)
        assert got.shape == (n + window - 1,)
        np.testing.assert_array_equal(got, skab_loop(flags, window))


def test_skab_mapping_never_flags_the_edges():
    n_windows = 200
    got = skab.skab_point_flags(np.ones(n_windows, bool), 60)
    assert len(got) == n_windows + 59
    np.testing.assert_array_equal(np.flatnonzero(got), np.arange(59, n_windows - 59))
    # window 100 covers points 100..159: it is needed for points 101..159 (not for 100)
    f = np.ones(300, bool)
    f[100] = False
    got = skab.skab_point_flags(f, 60)
    assert got[100] and not got[101] and not got[159] and got[160]


def test_rates_and_confusion():
    y = np.array([0, 0, 1, 1, 1, 0, 1, 0])
    p = np.array([0, 1, 1, 1, 0, 0, 1, 1])
    c = skab.confusion(y, p)
    assert c == {"tp": 3, "fp": 2, "fn": 1, "tn": 2}
    r = skab.rates(c)
    assert r["f1"] == pytest.approx(3 / (3 + 1.5))
    assert r["far"] == pytest.approx(50.0) and r["mar"] == pytest.approx(25.0)
    t = skab.rates(skab.confusion(y, np.ones_like(y)))
    assert t["f1"] == pytest.approx(2 * 0.5 / 1.5) and t["far"] == 100.0 and t["mar"] == 0.0
    with pytest.raises(ValueError):
        skab.confusion(y, p[:-1])


def _file(n_test=150, start=30, stop=90, channels=2):
    n = skab.TRAIN_ROWS + n_test
    y = np.zeros(n, np.int8)
    y[skab.TRAIN_ROWS + start:skab.TRAIN_ROWS + stop] = 1
    return skab.SkabFile("synthetic/0", [f"c{i}" for i in range(channels)],
                         np.zeros((n, channels)), y)


def test_summarize_uses_test_windows_for_skab_and_the_window_ending_at_each_point():
    W = skab.WINDOW
    f = _file()
    n_win = len(f.x) - W + 1
    # SKAB row: every window flagged -> points 59 .. n_windows_test - 60 flagged
    # stream row: only the window ending at test point 40 flagged -> only point 40 flagged
    stream = np.zeros(n_win, bool)
    stream[skab.TRAIN_ROWS + 40 - W + 1] = True
    res = skab.summarize([f], [{"skab_flags": np.ones(n_win, bool), "stream_flags": stream}])
    n_test_win = f.n_test - W + 1
    flagged = np.arange(W - 1, n_test_win - W + 1)
    y = f.y[skab.TRAIN_ROWS:]
    assert res["skab"]["tp"] == int(y[flagged].sum())
    assert res["skab"]["fp"] == int((1 - y[flagged]).sum())
    assert res["stream"] == {**skab.rates({"tp": 1, "fp": 0, "fn": 59, "tn": 90}),
                             "tp": 1, "fp": 0, "fn": 59, "tn": 90}
    # flags of windows that start in the training part only reach the first W-1 test points
    early = np.zeros(n_win, bool)
    early[:skab.TRAIN_ROWS] = True
    res = skab.summarize([f], [{"skab_flags": early, "stream_flags": early}])
    assert res["skab"]["tp"] + res["skab"]["fp"] == 0
    assert res["stream"]["fp"] + res["stream"]["tp"] == W - 1  # test points 0..58
    assert res["stream"]["tp"] == W - 1 - 30                     # anomalous from point 30
    assert res["trivial"]["f1"] == pytest.approx(2 * 60 / (60 + 150))


# ---------------------------------------------------------------------------------------------
# data loading (synthetic CSVs in SKAB's layout)
# ---------------------------------------------------------------------------------------------

def _write_csv(path, n, labelled=True, seed=0):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = "datetime;s1;s2" + (";anomaly;changepoint" if labelled else "")
    rows = [head]
    for i in range(n):
        vals = [f"{v:.6g}" for v in rng.normal(size=2)]
        if labelled:
            vals += ["1.0" if i > n - 10 else "0.0", "0.0"]
        rows.append(f"2020-03-09 10:{i // 60 % 60:02d}:{i % 60:02d};" + ";".join(vals))
    path.write_text("\n".join(rows) + "\n")


def test_labelled_files_order_and_loading(tmp_path):
    for name in ("10", "2", "0"):
        _write_csv(tmp_path / "valve1" / f"{name}.csv", 500)
    _write_csv(tmp_path / "other" / "1.csv", 470)
    _write_csv(tmp_path / "anomaly-free" / "anomaly-free.csv", 300, labelled=False)
    got = [p.relative_to(tmp_path).as_posix() for p in skab.labelled_files(tmp_path)]
    assert got == ["other/1.csv", "valve1/0.csv", "valve1/2.csv", "valve1/10.csv"]
    files = skab.load_skab(tmp_path, files=2)
    assert [f.name for f in files] == ["other/1", "valve1/0"]
    f = files[1]
    assert f.columns == ["s1", "s2"] and f.x.shape == (500, 2) and f.x.dtype == np.float64
    assert f.y.sum() == 9 and f.n_test == 100
    af = skab.load_anomaly_free(tmp_path)
    assert af.y is None and af.x.shape == (300, 2)


def test_short_or_missing_data_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        skab.load_skab(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no labelled"):
        skab.load_skab(tmp_path)
    _write_csv(tmp_path / "valve1" / "0.csv", skab.TRAIN_ROWS + 10)
    with pytest.raises(ValueError, match="need at least"):
        skab.load_skab(tmp_path)


def test_cli_parser_and_bad_data_exit_code(tmp_path, capsys):
    import argparse

    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd")
    skab_cli.add_parser(sub)
    args = p.parse_args(["skab", "--data", "D", "--files", "2", "--json"])
    assert args.fn is skab_cli.cmd_skab and args.files == 2 and args.json
    assert args.method == "edgeae"
    assert skab_cli.main(["--data", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# the runtime path (shipped model, no TensorFlow)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped_ae():
    from edgert import models

    try:
        return models.resolve("motor-ae")
    except models.ModelError as exc:
        pytest.skip(f"shipped model motor-ae unavailable: {exc}")


def test_runtime_scorer_is_causal_and_matches_the_kernel_contract(shipped_ae):
    rng = np.random.default_rng(0)
    scorer = skab.RuntimeScorer(shipped_ae, max_batch=8, block=13, tail=16)
    m = scorer.model
    W, C = m.window, m.n_channels
    x = rng.normal(size=(W + 150, C)) * m.std + m.mean
    full = scorer.score(x)
    n_win = len(x) - W + 1
    assert full.inq.shape == (n_win, 1, W, C) and full.ch_err.shape == (n_win, C)
    # no look-ahead: a prefix of the stream scores its windows identically
    part = scorer.score(x[:W + 70])
    k = 71
    np.testing.assert_array_equal(part.inq, full.inq[:k])
    np.testing.assert_array_equal(part.outq, full.outq[:k])
    np.testing.assert_array_equal(part.ch_err, full.ch_err[:k])
    np.testing.assert_array_equal(part.tail_err, full.tail_err[:k])
    # batching and block size change nothing
    one = skab.RuntimeScorer(shipped_ae, max_batch=1, block=1, tail=16).score(x)
    np.testing.assert_array_equal(one.outq, full.outq)
    np.testing.assert_array_equal(one.ch_err, full.ch_err)
    # input rows: normalize_quantize's contract on float32 samples
    xs = np.asarray(x, np.float32).astype(np.float64)
    idx = np.arange(n_win)[:, None] + np.arange(W)[None, :]
    q = np.clip(np.rint((xs[idx] - m.mean) * m.inv_std / full.in_scale + full.in_zp), -128, 127)
    np.testing.assert_array_equal(full.inq[:, 0], q.astype(np.int8))
    # errors: recon_error's contract, over the window and over its last `tail` rows
    a, b = full.dequant()
    np.testing.assert_allclose(full.ch_err, ((a - b) ** 2).mean(axis=1), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(full.tail_err, ((a - b)[:, -16:] ** 2).mean(axis=1), rtol=1e-6,
                               atol=1e-9)
    with pytest.raises(ValueError, match="tail"):
        skab.RuntimeScorer(shipped_ae, tail=W + 1)


def test_channel_drift_flags_a_drifting_channel():
    rng = np.random.default_rng(1)
    files = []
    for i in range(3):
        n = skab.TRAIN_ROWS + 100
        x = rng.normal(size=(n, 3))
        x[:, 2] += np.linspace(0, 6, n)  # a slow drift: rows 200-399 sit ~2 std higher
        files.append(skab.SkabFile(f"s/{i}", ["a", "b", "c"], x, np.zeros(n, np.int8)))
    d = skab.channel_drift(files)
    assert d[0] < 0.5 and d[1] < 0.5 and d[2] > 1.5


# ---------------------------------------------------------------------------------------------
# TensorFlow: the Edge-TPU-friendly layouts convert exactly; a tiny end-to-end run
# ---------------------------------------------------------------------------------------------

@needs_tf
@pytest.mark.parametrize("cfg", [skab.ConvAEConfig(), skab.EdgeAEConfig()],
                         ids=["convae", "edgeae"])
def test_subpixel_variant_is_exact_and_int8_has_no_transpose_conv(cfg):
    from edgert.train import build_ae, set_seed, tflite_ops, to_subpixel_model

    set_seed(0)
    spec = cfg.spec(8)
    model = build_ae(spec)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 1, skab.WINDOW, 8)).astype(np.float32)
    for layer in model.layers:  # non-zero biases too
        w = layer.get_weights()
        if w:
            layer.set_weights([rng.normal(scale=0.3, size=v.shape).astype(np.float32)
                               for v in w])
    to_subpixel_model(spec, model, check=x)  # raises if the outputs differ
    ops = tflite_ops(skab.int8_dynamic(spec, model, x))
    assert ops and not any(o.startswith("TRANSPOSE_CONV") for o in ops), ops
    assert {o.split("/")[0] for o in ops} <= {"CONV_2D", "RESHAPE", "RELU"}, ops


@needs_tf
@needs_data
def test_convae_one_file_end_to_end():
    res = skab.evaluate(SKAB_DATA, method="convae", files=1, epochs=2, log=lambda *a: None)
    f = skab.load_skab(SKAB_DATA, 1)[0]
    assert res["files"] == 1 and res["windows_scored"] == len(f.x) - skab.WINDOW + 1
    for row in ("skab", "stream", "trivial"):
        r = res[row]
        assert r["tp"] + r["fp"] + r["fn"] + r["tn"] == f.n_test
        assert 0 <= r["f1"] <= 1 and 0 <= r["far"] <= 100 and 0 <= r["mar"] <= 100
    assert res["windows_per_s"] > 0 and res["backend"].startswith("cpu:")


@needs_tf
@needs_data
def test_cli_json_two_files(capsys):
    assert skab_cli.main(["--data", str(SKAB_DATA), "--files", "2", "--epochs", "2",
                      "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    j = json.loads(out[-1])
    for k in ("f1", "far", "mar", "stream_f1", "stream_far", "stream_mar", "files",
              "trivial_f1", "windows_per_s", "level_f1"):
        assert k in j, k
    assert j["files"] == 2 and j["method"] == "edgeae" and 0.5 < j["trivial_f1"] < 0.9
    assert any("SKAB protocol" in line for line in out)
    assert any("Conv-AE" in line for line in out)


@needs_tf
def test_streaming_alarm_ends_within_end_tail_rows_of_the_anomaly(tmp_path):
    """The end rule (EdgeAEConfig.end_tail): a streaming alarm needs the anomaly in the newest
    `end_tail` rows too, so it stops within that many rows of the anomaly's end, where the
    `tail` rule alone keeps flagging until the tail has passed it (synthetic file, no SKAB data)."""
    rng = np.random.default_rng(0)
    n, a, b = 1000, 600, 700
    t = np.arange(n)
    x = np.stack([np.sin(t / 7.0), np.cos(t / 11.0), np.sin(t / 5.0 + 1)], axis=1)
    x = x + 0.05 * rng.standard_normal(x.shape)
    x[a:b, 0] += 3.0  # a level fault on channel 0 during rows a..b-1
    y = np.zeros(n, np.int8)
    y[a:b] = 1
    f = skab.SkabFile("synthetic", ["c0", "c1", "c2"], x, y)
    cfg = skab.EdgeAEConfig(epochs=3, seed=0)
    per_file, _ = skab.run_edgeae([f], cfg, tmp_path, log=lambda *a: None)
    r = per_file[0]
    W = skab.WINDOW
    end_rule, tail_only = r["stream_flags"], r["tail_only"]["stream_flags"]
    assert not (end_rule & ~tail_only).any()  # the end rule only removes alarms

    def ending(e):  # the window whose newest row is e
        return e - W + 1

    inside = [ending(e) for e in range(a + cfg.tail, b)]
    assert end_rule[inside].mean() > 0.9
    after = [ending(e) for e in range(b + cfg.end_tail, b + cfg.tail)]
    assert tail_only[after].any() and not end_rule[after].any()
