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
                invoke_target_s=0.002, cpu_bench=None, cpu_daemon=None, kernel_sweep=False)
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


# -- the suite's other sections (tiny configurations; structure, not speed) -------------------
def test_kernel_sweep_cases_hold_every_window():
    cases = micro.sweep_cases((32, 256), (1, 8), (0.03, -1), (0.03, 0))
    assert set(cases) == {"32x1", "256x1", "32x8", "256x8"}
    c = cases["256x8"]
    assert c.H == 64 and c.inp.shape == (32, 1, 256, 8)
    assert c.starts.min() >= c.pos - c.cap and c.starts.max() + 256 <= c.pos
    res = micro.bench_kernels({"256x8": c}, repeats=2, target_s=0.0005)
    rows = res["256x8"]["kernels"]
    assert set(rows) == set(micro.KERNELS) and all(r["identical"] for r in rows.values())


@needs_model
def test_inference_every_variant_and_backend_reason():
    from edgert.bench import inference
    res = inference.bench_inference(["motor-ae"], target_s=0.002, batches=(1, 8))["motor-ae"]
    cpu = res["cpu"]["variants"]
    assert set(cpu) == set(inference.VARIANTS)
    for vname, v in cpu.items():
        assert "error" not in v, v
        keys = {"1", "8"} | ({"packed16"} if vname == "packed" else set())
        assert set(v["batches"]) == keys
        for row in v["batches"].values():
            assert row["calls"] >= 50 and row["windows_per_s"] > 0
            assert 0 < row["min_us"] <= row["p50_us"] <= row["p99_us"] <= row["max_us"]
    assert cpu["packed"]["batches"]["packed16"]["zero_copy"] is True
    assert cpu["b1"]["batches"]["8"]["invokes_per_call"] == 8
    # no Edge TPU variant or device here: the probe's reason is reported, not an exception
    tpu = res["edgetpu"]
    assert tpu["available"] is True or tpu["reason"].startswith("not available: ")


def test_bus_one_point_per_transport():
    from edgert.bench import bus
    res = bus.bus_sweep(blocks=(16,), transports=("ipc", "tcp"), modes=("copy", "zero_copy"),
                        channels=3, seconds=0.05)
    pts = res["points"]
    assert [(p["transport"], p["mode"]) for p in pts] == [("ipc", "copy"), ("ipc", "zero_copy"),
                                                          ("tcp", "copy"), ("tcp", "zero_copy")]
    for p in pts:
        assert p["messages"] > 0 and p["decode_errors"] == 0
        assert p["samples_per_s"] == pytest.approx(16 * p["messages_per_s"], rel=1e-3)


def test_only_sections_are_checked():
    assert run.parse_sections("kernels, bus") == ("kernels", "bus")
    assert run.parse_sections(None) is None
    with pytest.raises(ValueError, match="unknown section.*nope"):
        run.parse_sections("kernels,nope")


def test_plot_says_how_to_get_matplotlib(monkeypatch):
    import sys
    from edgert.bench import plot
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(RuntimeError, match="pip install matplotlib"):
        plot.require()


@needs_model
def test_e2e_startup_json_table_and_plots(tmp_path, capsys):
    """One sensor count, one load step, a warm start-up: figures in the JSON, the table, PNGs."""
    pytest.importorskip("matplotlib")
    s = tiny(sections=("e2e", "startup", "bus"), e2e_sensors=(3,), e2e_fractions=(0.5,), e2e_step_s=0.6,
             e2e_max_extra_steps=0,
             e2e_saturation_s=1.0, pipeline_settle_s=0.2, startup_cold=False, startup_warm_runs=1,
             bus_blocks=(64,), bus_transports=("ipc",), bus_modes=("zero_copy",), bus_s=0.05)
    res = run.run_bench(s, log=lambda m: None)
    assert res["errors"] == {}, res["errors"]
    run3 = res["e2e"]["runs"]["3"]
    assert run3["saturation_windows_per_s"] > 0
    (st,) = run3["steps"]
    assert "error" not in st, st
    assert st["load_fraction"] == 0.5 and st["sensors"] == 3 and st["socket"] == "sub"
    assert st["messages_sent"] > 0 and st["lost_messages"] == 0 and st["dropped_by_daemon"] == 0
    assert st["counts"]["windows_scored"] == st["counts"]["windows_expected"] > 0
    assert 0 < st["p50_latency_us"] <= st["p99_latency_us"] <= st["p999_latency_us"]
    assert sum(st["latency_histogram"]["counts"]) >= st["counts"]["windows_scored"]
    assert res["figures"]["e2e.3.50pct.p999_latency_us"] == st["p999_latency_us"]
    (warm,) = res["startup"]["runs"]
    assert warm["cache"] == "warm" and warm["first_decision_s"] > 0 and warm["rss_mb_at_first_decision"] > 0
    assert res["figures"]["startup.warm.first_decision_s"] == warm["first_decision_s"]
    table = run.render(res)
    assert "end to end" in table and "start-up" in table and "bus:" in table
    path = run.write_json(res, str(tmp_path / "r.json"))
    saved = json.loads(path.read_text())
    assert saved["e2e"]["runs"]["3"]["steps"][0]["p999_latency_us"] == st["p999_latency_us"]
    # --from re-renders and --plot draws from the saved file
    rc = run.main(argparse.Namespace(from_json=str(path), plot=str(tmp_path / "png")))
    assert rc == 0 and "end to end" in capsys.readouterr().out
    pngs = sorted(p.name for p in (tmp_path / "png").glob("*.png"))
    assert pngs == ["bus.png", "e2e-latency-cdf-3sensors.png", "e2e-throughput.png"]
    assert all((tmp_path / "png" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_e2e_steps_on_only_while_the_daemon_keeps_up():
    from edgert.bench.e2e import _unsaturated
    kept_up = {"windows_per_s": 990.0, "offered_windows_per_s": 1000.0, "lost_messages": 0, "dropped_by_daemon": 0}
    assert _unsaturated(kept_up)
    assert not _unsaturated({**kept_up, "windows_per_s": 900.0})
    assert not _unsaturated({**kept_up, "lost_messages": 3})
    assert not _unsaturated({**kept_up, "dropped_by_daemon": 1})
    assert not _unsaturated({"error": "x"})
