"""`edgert bench`: smoke tests with tiny repeat counts and budgets (figures are not checked against
targets here; that is what the benchmark itself reports)."""

import argparse
import json

import pytest

from edgert import models
from edgert.bench import micro, run

HAS_MODEL = "motor-ae" in models.shipped()
needs_model = pytest.mark.skipif(not HAS_MODEL, reason="shipped model motor-ae missing")


def tiny(**kw) -> run.Settings:
    base = dict(quick=True, kernel_repeats=2, kernel_target_s=0.0005, invoke_repeats=2,
                invoke_target_s=0.002, cpu_bench=None, cpu_daemon=None)
    base.update(kw)
    return run.Settings(**base)


def test_time_calls_counts_and_orders():
    calls = []
    t = micro.time_calls(calls.append, (1,), repeats=3, target_s=0.0005)
    assert t["repeats"] == 3 and t["calls"] >= 1
    assert 0 < t["min_s"] <= t["median_s"]
    assert len(calls) >= 3 * t["calls"]


def test_kernel_case_matches_reference_shapes():
    case = micro.KernelCase(64, 3, 16, [0.0] * 3, [2.0] * 3, (0.03, -1), (0.03, -1))
    assert case.inp.shape == (32, 1, 64, 3) and case.block.shape == (512, 3)
    assert not case.block.flags.writeable  # like a message payload view
    # every window lies in the ring's valid history
    assert case.starts.min() >= case.pos - case.cap and case.starts.max() + 64 <= case.pos


@needs_model
def test_kernels_and_invoke_figures_in_json(tmp_path):
    res = run.run_bench(tiny(sections=("kernels", "invoke")), log=lambda m: None)
    assert res["errors"] == {}, res["errors"]
    for label in ("64x3", "64x8"):
        rows = res["kernels"][label]["kernels"]
        assert set(rows) == set(micro.KERNELS)
        for name, row in rows.items():
            assert row["numba_us"] > 0 and row["numpy_us"] > 0
            assert row["identical"], f"{label} {name}: numba and numpy disagree"
            assert res["ratios"][f"kernel_speedup.{label}.{name}"] == row["speedup"]
    inv = res["invoke"]
    assert inv["batch32"]["windows_per_s"] > 0 and inv["batch1"]["invokes_per_s"] > 0
    assert res["figures"]["bare_invoke_windows_per_s"] == inv["batch32"]["windows_per_s"]
    assert res["targets"]["kernel_speedup_min"]["value"] == min(
        v for k, v in res["ratios"].items() if k.startswith("kernel_speedup."))
    assert res["targets"]["pipeline_over_bare_invoke"]["pass"] is None  # not run
    for key in ("cpu_model", "nproc", "python", "numpy", "numba", "pyzmq", "litert"):
        assert key in res["machine"]
    # the table renders and the file is valid JSON
    assert "bare invoke" in run.render(res)
    path = run.write_json(res, str(tmp_path / "r.json"))
    assert json.loads(path.read_text())["ratios"] == res["ratios"]


def test_main_json_last_line_and_default_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run.Settings, "for_mode", classmethod(
        lambda cls, quick, **kw: tiny(sections=kw.get("sections") or run.SECTIONS)))
    rc = run.main(argparse.Namespace(quick=True, json=True, out=None, sections=["kernels"],
                                   no_baseline=True))  # tiny timings: the gate is tested below
    out = capsys.readouterr().out.strip().splitlines()
    d = json.loads(out[-1])
    assert rc == 0 and d["mode"] == "quick" and "ratios" in d and "machine" in d and "settings" in d
    files = list((tmp_path / "bench" / "results").glob("bench-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["ratios"] == d["ratios"]


@needs_model
def test_pipeline_and_latency_one_second(tmp_path):
    """The daemon end to end at full load and paced: every window sent is scored, nothing dropped."""
    s = tiny(sections=("invoke", "pipeline", "latency"), pipeline_s=1.0, pipeline_settle_s=0.3,
             latency_s=1.0, latency_load=0.25)
    res = run.run_bench(s, log=lambda m: None)
    assert res["errors"] == {}, res["errors"]
    p, lat = res["pipeline"], res["latency"]
    assert p["windows_per_s"] > 0 and "pipeline_over_bare_invoke" in res["ratios"]
    for sec in (p, lat):
        c = sec["counts"]
        assert c["mismatch"] == {} and c["windows_scored"] == c["windows_expected"] > 0
        assert sec["final"]["dropped"] == 0, sec["final"]["drops"]
        assert c["probe_windows"] == c["probe_windows_expected"]
        assert sec["startup"]["method"] == "probe anomaly event"
        assert 0 < sec["startup"]["bound_s"] <= sec["startup"]["first_decision_s"]
    assert lat["p50_latency_us"] > 0 and lat["p99_latency_us"] >= lat["p50_latency_us"]
    assert lat["rss_mb"] > 0


def test_baseline_gate_names_the_regressed_figure():
    from edgert.bench.run import compare_baseline
    base = {"ratios": {"pipeline_over_bare_invoke": 0.42, "kernel_speedup.64x3.ingest": 22.0}}
    assert compare_baseline({"ratios": {"pipeline_over_bare_invoke": 0.30,
                                        "kernel_speedup.64x3.ingest": 12.0}}, base) == []
    got = compare_baseline({"ratios": {"pipeline_over_bare_invoke": 0.40,
                                       "kernel_speedup.64x3.ingest": 1.1}}, base)
    assert len(got) == 1 and "kernel_speedup.64x3.ingest" in got[0] and "REGRESSION" in got[0]


def test_shipped_baseline_has_ratios():
    import json
    from edgert.bench.run import BASELINE
    ratios = json.loads(BASELINE.read_text())["ratios"]
    assert "pipeline_over_bare_invoke" in ratios and any(k.startswith("kernel_speedup.") for k in ratios)
