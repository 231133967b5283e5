"""edgert.runtime, the pipeline's scoring core: the evaluators and ``bench --peers`` score
through it and get exactly what the daemon's path (`edgert.Pipeline.push`) gets; no second
copy of the ring/quantize/invoke/error path exists outside the engine."""

import ast
import doctest
from pathlib import Path

import numpy as np
import pytest

import edgert
from edgert import runtime
from edgert.data import itsc_recording

ROOT = Path(__file__).resolve().parents[1]
REC = "SC_A0_B0_C3_003"  # a fault in phase C: flagged windows and attribution both exercised


def _push_decisions(x, block):
    """Every window of ``x`` through the daemon's path: Pipeline.push in blocks, then flush."""
    p = edgert.Pipeline("motor-ae", backend="cpu")
    try:
        ds = []
        for a in range(0, len(x), block):
            ds += p.push("m", x[a:a + block], a * 1_000_000, 1_000_000)
        return ds + p.flush(), p.model
    finally:
        p.close()


@pytest.fixture(scope="module")
def daemon_path():
    x = itsc_recording(REC)
    ds, m = _push_decisions(x, 100)  # blocks that do not line up with windows or hops
    return x, ds, m


def test_module_doctest_runs():
    res = doctest.testmod(runtime, verbose=False)
    assert res.attempted >= 1 and res.failed == 0


def test_core_scores_exactly_what_the_pipeline_pushes(daemon_path):
    x, ds, m = daemon_path
    r = runtime.score_array("motor-ae", x, keep_tensors=True)
    assert len(r) == len(ds) == (len(x) - m.window) // m.hop + 1
    assert r.starts.tolist() == [d.t_start // 1_000_000 for d in ds]
    np.testing.assert_array_equal(r.scores.astype(np.float64), [d.score for d in ds])
    # the daemon's contributions (attribution) from the core's tensors and errors
    runner = runtime.Runner("motor-ae")
    try:
        shares = np.concatenate([runner.scorer.shares(r.inq[i:i + 32], r.ch_err[i:i + 32],
                                                      np.arange(min(32, len(r) - i)))
                                 for i in range(0, len(r), 32)])
    finally:
        runner.close()
    np.testing.assert_array_equal(shares.astype(np.float64), [d.contributions for d in ds])
    assert any(d.anomaly for d in ds)


def test_evaluators_score_exactly_what_the_pipeline_pushes(daemon_path):
    """eval itsc's scorer at the model's hop, eval skab's at hop 1 (every 16th window is the
    pipeline's) and bench --peers' edgert row: the daemon's scores, bit for bit."""
    from edgert.bench import peers as P
    from edgert.evaluate import itsc, skab

    x, ds, m = daemon_path
    want = np.array([d.score for d in ds])
    sc = itsc.RuntimeScorer("motor-ae")
    try:
        s, starts, _ = sc.run(x)
    finally:
        sc.close()
    np.testing.assert_array_equal(s.astype(np.float64), want)
    assert starts.tolist() == [d.t_start // 1_000_000 for d in ds]
    sk = skab.RuntimeScorer(sc.model.dir, tail=16)
    try:
        full = sk.score(x)
    finally:
        sk.close()
    tot = np.zeros(len(full.ch_err))
    for c in range(m.n_channels):  # the score as recon_error makes it from the stored errors
        tot += full.ch_err[:, c].astype(np.float64)
    np.testing.assert_array_equal((tot / m.n_channels).astype(np.float32)[::m.hop].astype(np.float64),
                                  want)
    peer = P.EdgertPeer(P.Settings())
    seg = P.segment("r", x, m.window, m.hop)
    peer.fit(P.Task("itsc", m.window, [seg], [seg], model_dir=sc.model.dir,
                    rule=P.FixedRule(m.threshold)))
    got = np.concatenate([peer._errors(*b)[2].astype(np.float64) for b in P.batches([seg], 32)])
    np.testing.assert_array_equal(got, want)


def test_stream_options_hop_tail_normalization():
    m = edgert.models.load("motor-ae")
    x = itsc_recording(REC)[:m.window + 40]
    runner = runtime.Runner(m, tail=16)
    try:
        r = runtime.score_array(runner, x, hop=1, block=7, keep_tensors=True, keep_stats=True)
        assert len(r) == 41 and r.starts.tolist() == list(range(41))
        assert r.inq.shape == (41, 1, m.window, 3) and r.stats.shape == (41, 3, 6)
        a = (r.inq[:, 0].astype(np.float64) - runner.in_zp) * runner.in_scale
        b = (r.outq[:, 0].astype(np.float64) - runner.out_zp) * runner.out_scale
        np.testing.assert_allclose(r.tail_err, ((a - b)[:, -16:] ** 2).mean(axis=1), rtol=1e-6,
                                   atol=1e-9)
        # per-call normalization rows, as the daemon's safe adaptation sets a sensor's
        st = runtime.Stream(runner, hop=1)
        st.normalize_with(m.mean + m.std, m.inv_std)
        st.push(x)
        st.flush()
        moved = st.take()
        assert len(moved) == 41 and np.abs(moved.scores - r.scores).max() > 0
    finally:
        runner.close()
    with pytest.raises(ValueError, match="tail"):
        runtime.Runner(m, tail=m.window + 1)
    bad = x.copy()
    bad[50, 1] = np.nan
    with pytest.raises(ValueError, match="1 nonfinite"):
        runtime.score_array("motor-ae", bad)
    with pytest.raises(ValueError, match=r"needs \[n, 3\]"):
        runtime.score_array("motor-ae", x[:, :2])
    short = runtime.score_array("motor-ae", x[:m.window - 1])
    assert len(short) == 0 and short.scores is None


# the kernels and calls that make up the scoring path; only the engine calls them
_PATH_CALLS = {"ring_append", "normalize_quantize", "recon_error", "ingest", "push_block"}


def _calls(path: Path) -> list[str]:
    """``name`` (line) of every call in ``path`` to a scoring-path kernel or a backend factory."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
        recv = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
        if name in _PATH_CALLS or (name == "create" and recv == "backends") or name == "input_buffer":
            out.append(f"{name} (line {node.lineno})")
    return out


@pytest.mark.parametrize("rel", sorted(str(p.relative_to(ROOT)) for p in
                                        [*(ROOT / "edgert" / "evaluate").glob("*.py"),
                                         ROOT / "bench" / "peers.py"]))
def test_no_second_copy_of_the_scoring_path(rel):
    """The evaluators and bench --peers build no ring/quantize/invoke/error path of their own:
    they call edgert.runtime (the pipeline's core), never the kernels or a backend directly."""
    assert _calls(ROOT / rel) == [], f"{rel} rebuilds the scoring path: use edgert.runtime"
