"""`edgert bench`: smoke tests with tiny repeat counts and budgets (figures are not checked against
targets here; that is what the benchmark itself reports)."""

import argparse
import copy
import json
import os
import shutil
import subprocess

import pytest

from edgert import models
from edgert.bench import micro, run, sysinfo

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
    # CPU time beside wall time: what the gate compares
    assert inv["batch32"]["windows_per_cpu_s"] > 0 and inv["windows_per_cpu_s"] == inv["batch32"]["windows_per_cpu_s"]
    assert all(row["numba_wall_us"] > 0 and row["speedup_wall"] > 0
               for case in ("64x3", "64x8") for row in res["kernels"][case]["kernels"].values())
    assert res["figures"]["bare_invoke_windows_per_s"] == inv["batch32"]["windows_per_s"]
    assert res["targets"]["kernel_speedup_min"]["value"] == min(
        v for k, v in res["ratios"].items() if k.startswith("kernel_speedup."))
    assert res["targets"]["pipeline_over_bare_invoke_cpu"]["pass"] is None  # not run
    for key in ("cpu_model", "cpu_int8", "nproc", "python", "numpy", "numba", "pyzmq", "litert"):
        assert key in res["machine"]
    assert res["machine"]["load_gated"]["seconds"] > 0  # the load meter ran over the gated sections
    # the table renders and the file is valid JSON
    table = run.render(res)
    assert "bare invoke" in table and "int8: " + res["machine"]["cpu_int8"]["kind"] in table
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
    assert p["windows_per_s"] > 0 and res["ratios"]["pipeline_over_bare_invoke_cpu"] == round(
        p["windows_per_daemon_cpu_s"] / res["invoke"]["windows_per_cpu_s"], 3)
    assert "pipeline_over_bare_invoke" not in res["ratios"]  # wall clock: a figure, never gated
    assert res["figures"]["pipeline_over_bare_invoke_wall"] > 0
    for sec in (p, lat):
        c = sec["counts"]
        assert c["mismatch"] == {} and c["windows_scored"] == c["windows_expected"] > 0
        assert sec["final"]["dropped"] == 0, sec["final"]["drops"]
        assert c["probe_windows"] == c["probe_windows_expected"]
        assert sec["startup"]["method"] == "probe anomaly event"
        assert 0 < sec["startup"]["bound_s"] <= sec["startup"]["first_decision_s"]
    assert lat["p50_latency_us"] > 0 and lat["p99_latency_us"] >= lat["p50_latency_us"]
    assert lat["rss_mb"] > 0


# -- the CI gate (bench/gate.py): CPU-time ratios, the load meter, the baseline writer ---------
CPU_INT8 = {"kind": "x86_64 avx512-vnni", "vnni": True, "flags": ["avx2", "avx512_vnni"]}


def _load(share: float) -> dict:
    return {"seconds": 10.0, "cores": 2, "other_cores": round(2 * share, 2), "steal_cores": 0.0,
            "others_share": share}


def synthetic(pipe_cpu_ratio: float, wall_ratio: float, others_share: float = 0.0) -> dict:
    """A made-up result of the gated sections: the bare invoke runs 1,000,000 windows per
    CPU-second and per wall second; the daemon `pipe_cpu_ratio` of that per CPU-second of its
    own, but `wall_ratio` of it per wall second (it had that share of its core)."""
    inv = 1_000_000.0
    share = wall_ratio / pipe_cpu_ratio
    krow = {"numba_us": 2.0, "numpy_us": 40.0, "numba_wall_us": 2.2, "numpy_wall_us": 41.0,
            "numba_min_us": 1.9, "numpy_min_us": 39.0, "speedup": 20.0, "speedup_wall": 18.6,
            "identical": True, "calls_per_repeat": [100, 10]}
    brow = lambda k: {"us_per_invoke": 1e6 * k / inv, "min_us_per_invoke": 1e6 * k / inv,  # noqa: E731
                      "invokes_per_s": inv / k, "windows_per_s": inv, "us_per_window": 1.0,
                      "cpu_us_per_invoke": 1e6 * k / inv, "windows_per_cpu_s": inv}
    rate = wall_ratio * inv
    r = {"schema": 2, "tool": "edgert bench", "timestamp": "2026-12-01T00:00:00+00:00", "mode": "quick",
         "machine": {"cpu_model": "Test CPU", "cpu_int8": CPU_INT8, "nproc": 2, "python": "3.11",
                     "numpy": "2", "numba": "0.68", "pyzmq": "27", "libzmq": "4.3", "litert": "2.3",
                     "load_gated": _load(others_share), "load_during_run": _load(others_share)},
         "errors": {}, "problems": [], "elapsed_s": 1.0,
         "settings": {"stats_interval_s": 0.2, "notes": []},
         "kernels": {"64x3": {"W": 64, "C": 3, "H": 16, "windows": 32, "block_samples": 64,
                              "kernels": {"ingest": krow}}},
         "invoke": {"backend": "cpu (test)", "max_batch": 32, "batch32": brow(32), "batch1": brow(1),
                    "windows_per_s": inv, "windows_per_cpu_s": inv},
         "pipeline": {"sensors": 8, "block_samples": 64, "windows_per_s": rate, "messages_per_s": rate / 4,
                      "windows_per_daemon_cpu_s": pipe_cpu_ratio * inv, "daemon_cpu_share": share,
                      "daemon_threads_cpu_share": {"1:python": share}, "sender_blocked_share": 0.5,
                      "interval_windows_per_s": {"min": rate, "median": rate, "max": rate, "n": 5},
                      "measured_s": 4.0, "startup": {"first_decision_s": 0.5, "first_window_latency_us": 300.0},
                      "problems": []}}
    run._summarize(r)
    return r


def write_baseline(path, pipe: float = 0.14, kernel: float | None = 20.0, kind: str = CPU_INT8["kind"]):
    """A baseline with one CPU kind's entry. It also carries the old top-level (schema 1,
    wall-clock) ratios the same way, which the gate before CPU kinds read: the tests then show
    what that gate did with the same case."""
    ratios, legacy = {}, {}
    if pipe is not None:
        ratios["pipeline_over_bare_invoke_cpu"] = pipe
        legacy["pipeline_over_bare_invoke"] = 0.428
    if kernel is not None:
        ratios["kernel_speedup.64x3.ingest"] = legacy["kernel_speedup.64x3.ingest"] = kernel
    path.write_text(json.dumps({"schema": 2, "tolerance": 0.5, "ratios": legacy,
                                "cpus": {kind: {"from": "2026-11-30", "ratios": ratios}}}))
    return path


def gate_run(monkeypatch, tmp_path, capsys, results, **args):
    """`run.main` on made-up results (one per measurement, the last repeated); returns
    (exit status, stdout lines, stderr lines, how many measurements)."""
    calls = []

    def fake_run_bench(settings, log=None):
        calls.append(settings)
        return copy.deepcopy(results[min(len(calls), len(results)) - 1])

    monkeypatch.setattr(run, "run_bench", fake_run_bench)
    ns = argparse.Namespace(quick=True, json=False, out=str(tmp_path / "r.json"), **args)
    rc = run.main(ns)
    out = capsys.readouterr()
    return rc, out.out.splitlines(), out.err.strip().splitlines(), len(calls)


def test_gate_passes_a_correct_build_whose_wall_ratio_is_low(monkeypatch, tmp_path, capsys):
    """What CI got wrong: the daemon had a third of its core, so its wall-clock ratio to the
    bare invoke fell to 0.05 (the wall-clock gate failed it: "pipeline_over_bare_invoke: 0.050 <
    0.5 x baseline 0.428"); per CPU-second it is as fast as ever: pass."""
    monkeypatch.setattr(run, "BASELINE", write_baseline(tmp_path / "baseline.json", pipe=0.14))
    rc, out, err, n = gate_run(monkeypatch, tmp_path, capsys, [synthetic(0.15, 0.05, others_share=0.2)])
    assert rc == 0 and n == 1, out
    assert not any("REGRESSION" in x for x in out)
    (line,) = [x for x in out if x.startswith("baseline: ")]
    assert line.startswith("baseline: 2 ratios (CPU time) within 0.5 x of baseline.json (x86_64 avx512-vnni")
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["gate"]["status"] == "pass" and saved["gate"]["judged"] == [
        "kernel_speedup.64x3.ingest", "pipeline_over_bare_invoke_cpu"]
    assert saved["figures"]["pipeline_over_bare_invoke_wall"] == 0.05


def test_gate_fails_a_real_regression_in_the_cpu_ratio(monkeypatch, tmp_path, capsys):
    """The daemon had its whole core and still ran a third of the windows per CPU-second."""
    monkeypatch.setattr(run, "BASELINE", write_baseline(tmp_path / "baseline.json", pipe=0.14))
    rc, out, err, n = gate_run(monkeypatch, tmp_path, capsys, [synthetic(0.05, 0.05)])
    assert rc == 1 and n == 1
    assert "REGRESSION pipeline_over_bare_invoke_cpu: 0.050 < 0.5 x baseline 0.140" in out


def test_gate_on_a_loaded_machine_measures_again_then_is_not_judged(monkeypatch, tmp_path, capsys):
    """Other processes took 60 % of the cores in both measurements: one "not judged" line,
    exit 0, whatever the (regressed) figures say."""
    monkeypatch.setattr(run, "BASELINE", write_baseline(tmp_path / "baseline.json", pipe=0.14))
    rc, out, err, n = gate_run(monkeypatch, tmp_path, capsys, [synthetic(0.05, 0.02, others_share=0.6)])
    assert rc == 0 and n == 2
    judged = [x for x in out if x.startswith(("not judged", "baseline:", "REGRESSION"))]
    assert judged == ["not judged: machine loaded (run 1: other processes 1.20 + steal 0.00 of 2 cores (60%) "
                      "over 10.0 s; run 2: other processes 1.20 + steal 0.00 of 2 cores (60%) over 10.0 s; "
                      "limit 25% of the cores = 0.50 cores)"]


def test_gate_loaded_then_quiet_judges_the_quiet_measurement(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(run, "BASELINE", write_baseline(tmp_path / "baseline.json", pipe=0.14))
    rc, out, err, n = gate_run(monkeypatch, tmp_path, capsys,
                               [synthetic(0.15, 0.05, others_share=0.6), synthetic(0.05, 0.05)])
    assert rc == 1 and n == 2 and not any(x.startswith("not judged") for x in out)
    assert any(x.startswith("REGRESSION pipeline_over_bare_invoke_cpu") for x in out)


def test_gate_fails_when_the_baseline_lacks_the_pipeline_ratio(monkeypatch, tmp_path, capsys):
    """A baseline of kernel ratios only (what `--update-baseline --only kernels` wrote) must not
    let a pipeline regression pass."""
    monkeypatch.setattr(run, "BASELINE", write_baseline(tmp_path / "baseline.json", pipe=None))
    rc, out, err, n = gate_run(monkeypatch, tmp_path, capsys, [synthetic(0.05, 0.05)])
    assert rc == 1
    assert any(x.startswith("BASELINE INCOMPLETE: it has no pipeline_over_bare_invoke_cpu") for x in out)


def test_gate_another_cpu_kind_is_not_judged(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(run, "BASELINE", write_baseline(tmp_path / "baseline.json", kind="x86_64 avx2"))
    rc, out, err, n = gate_run(monkeypatch, tmp_path, capsys, [synthetic(0.05, 0.05)])
    assert rc == 0
    (line,) = [x for x in out if x.startswith(("not judged", "baseline:", "REGRESSION"))]
    assert line.startswith("not judged: baseline.json has no entry for this CPU kind, x86_64 avx512-vnni "
                           "(Test CPU); it has: x86_64 avx2")


def test_load_meter_counts_other_processes_only():
    tick = os.sysconf("SC_CLK_TCK")
    cpu = iter([{"cpu0": (0, 0, 0), "cpu1": (0, 0, 0)},
                {"cpu0": (tick, 0, 0), "cpu1": (tick // 2, tick // 4, tick // 4)}])
    own = iter([10.0, 10.5])  # this process tree used 0.5 CPU-s of the 1.5 busy
    clock = iter([100.0, 101.0])
    m = sysinfo.LoadMeter(read_cpu=lambda: next(cpu), read_own=lambda: next(own), clock=lambda: next(clock))
    r = m.stop()
    assert (r["cores"], r["other_cores"], r["steal_cores"]) == (2, 1.0, 0.25)
    assert r["others_share"] == pytest.approx((1.0 + 0.25) / 2)
    assert run.gate.loaded(r, 0.25) and not run.gate.loaded(r, 0.7)
    assert not run.gate.loaded({"seconds": 1.0}, 0.25)  # no /proc/stat: unknown, not loaded


def test_cpu_int8_kind_and_flags():
    k = sysinfo.cpu_int8({"fpu", "avx2", "avx512bw", "avx512_vnni", "amx_int8"}, "x86_64", "GenuineIntel 6/167")
    assert k == {"kind": "x86_64 avx512-vnni GenuineIntel 6/167", "vnni": True,
                 "flags": ["amx_int8", "avx2", "avx512_vnni", "avx512bw"], "ident": "GenuineIntel 6/167"}
    # the same instructions on another microarchitecture are another kind (its invoke speed differs)
    assert sysinfo.cpu_int8({"avx512_vnni"}, "x86_64", "AuthenticAMD 25/17")["kind"] == \
        "x86_64 avx512-vnni AuthenticAMD 25/17"
    assert sysinfo.cpu_int8({"avx2", "avx_vnni"}, "x86_64", "")["kind"] == "x86_64 avx-vnni"
    old = sysinfo.cpu_int8({"avx2", "sse4_1"}, "x86_64", "")
    assert old["kind"] == "x86_64 avx2" and old["vnni"] is False
    assert sysinfo.cpu_int8({"asimd", "asimddp"}, "aarch64", "")["kind"] == "aarch64 dotprod"
    x86 = ("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 167\n"
           "model name\t: Intel(R) Xeon(R)\nflags\t\t: fpu avx2 avx512_vnni\n\nprocessor\t: 1\n"
           "vendor_id\t: Other\n")
    assert sysinfo.cpu_flags(x86) == {"fpu", "avx2", "avx512_vnni"}
    assert sysinfo.cpu_ident(x86) == "GenuineIntel 6/167"
    arm = ("processor\t: 0\nFeatures\t: fp asimd asimddp\nCPU implementer\t: 0x41\n"
           "CPU architecture: 8\nCPU part\t: 0xd0c\n")
    assert sysinfo.cpu_flags(arm) == {"fp", "asimd", "asimddp"}
    assert sysinfo.cpu_ident(arm) == "0x41 8/0xd0c"
    assert sysinfo.cpu_ident("") == ""


def test_update_baseline_refuses_a_partial_only(monkeypatch, tmp_path, capsys):
    base = tmp_path / "baseline.json"
    base.write_text("{}")
    monkeypatch.setattr(run, "BASELINE", base)
    monkeypatch.setattr(run, "run_bench", lambda *a, **k: pytest.fail("measured before refusing"))
    rc = run.main(argparse.Namespace(quick=True, update_baseline=True, only="kernels"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("edgert bench: --update-baseline refused: --only kernels lacks invoke, pipeline")
    assert base.read_text() == "{}"


def test_update_baseline_refuses_outside_a_checkout(monkeypatch, tmp_path, capsys):
    base = tmp_path / "bench" / "baseline.json"  # no git work tree around it
    base.parent.mkdir()
    base.write_text("{}")
    monkeypatch.setattr(run, "BASELINE", base)
    monkeypatch.setattr(run, "run_bench", lambda *a, **k: pytest.fail("measured before refusing"))
    rc = run.main(argparse.Namespace(quick=True, update_baseline=True, only=None))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "is in no git work tree" in err[0], err
    assert base.read_text() == "{}"
    installed = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "edgert" / "bench" / "baseline.json"
    assert "is an installed copy, not a checkout" in run.gate.checkout_refusal(installed)


needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")


@needs_git
def test_update_baseline_writes_this_cpu_kind_in_a_checkout(monkeypatch, tmp_path, capsys):
    """In a git checkout: this kind's entry, the gated ratios only, other kinds kept; not from
    a loaded run."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'edgert'\n")
    (tmp_path / "bench").mkdir()
    base = write_baseline(tmp_path / "bench" / "baseline.json", kind="x86_64 avx2")
    assert run.gate.checkout_refusal(base) is None
    assert "not bench/baseline.json at the top" in run.gate.checkout_refusal(tmp_path / "baseline.json")
    monkeypatch.setattr(run, "BASELINE", base)
    r = synthetic(0.15, 0.15)
    r["ratios"]["not_gated"] = 3.0
    rc, out, err, n = gate_run(monkeypatch, tmp_path, capsys, [r], update_baseline=True, only=None)
    assert rc == 0 and out[-1] == f"baseline: wrote {base} (entry x86_64 avx512-vnni: 2 ratios)"
    new = json.loads(base.read_text())
    assert set(new["cpus"]) == {"x86_64 avx2", "x86_64 avx512-vnni"}
    assert new["cpus"]["x86_64 avx512-vnni"]["ratios"] == {"kernel_speedup.64x3.ingest": 20.0,
                                                          "pipeline_over_bare_invoke_cpu": 0.15}
    assert new["cpus"]["x86_64 avx512-vnni"]["cpu_int8"] == CPU_INT8
    # loaded in both measurements: nothing written, exit 1
    before = base.read_text()
    rc, out, err, n = gate_run(monkeypatch, tmp_path, capsys, [synthetic(0.3, 0.1, others_share=0.6)],
                               update_baseline=True, only=None)
    assert rc == 1 and n == 2 and out[-1].startswith("baseline: not written: machine loaded")
    assert base.read_text() == before


def test_baseline_gate_names_the_regressed_figure():
    base = {"ratios": {"pipeline_over_bare_invoke_cpu": 0.14, "kernel_speedup.64x3.ingest": 22.0}}
    ok = run.compare_baseline({"ratios": {"pipeline_over_bare_invoke_cpu": 0.10,
                                          "kernel_speedup.64x3.ingest": 12.0}}, base)
    assert ok["problems"] == [] and len(ok["judged"]) == 2
    got = run.compare_baseline({"ratios": {"pipeline_over_bare_invoke_cpu": 0.13,
                                           "kernel_speedup.64x3.ingest": 1.1}}, base)["problems"]
    assert len(got) == 1 and "kernel_speedup.64x3.ingest" in got[0] and "REGRESSION" in got[0]


def test_shipped_baseline_is_complete_per_cpu_kind():
    b = json.loads(run.BASELINE.read_text())
    assert b["schema"] == 2 and b["cpus"]
    for kind, e in b["cpus"].items():
        r = e["ratios"]
        assert "pipeline_over_bare_invoke_cpu" in r and any(k.startswith("kernel_speedup.") for k in r)
        assert all(run.gate.gated(k) for k in r) and e["cpu_int8"]["kind"] == kind


@needs_model
def test_naive_section_on_the_same_stream(monkeypatch):
    """`--only naive`: the daemon and the naive service, each saturated and paced by the same
    harness; figures, their ratio and the target in the JSON and the table. A service that
    cannot start is reported and left out; the others are still compared."""
    from edgert.bench import naive

    real = naive.services

    def with_a_broken_one(model, runtimes, log=None, onnx=None):
        svcs, unavailable = real(model, runtimes, log, onnx)
        return {**svcs, "naive-tflite": ("/nonexistent/python", str(naive.SERVICE))}, unavailable

    monkeypatch.setattr(naive, "services", with_a_broken_one)
    s = tiny(sections=("naive",), naive_rounds=1, naive_saturate_s=0.8, naive_paced_s=0.6,
             pipeline_settle_s=0.2, naive_runtimes=("litert",), naive_decisions=False)
    res = run.run_bench(s, log=lambda m: None)
    assert res["errors"] == {}, res["errors"]
    nv = res["naive"]
    e, n = nv["services"]["edgert"], nv["services"]["naive"]
    for sv in (e, n):
        assert sv["windows_per_s"] > 0 and sv["windows_per_cpu_s"] > 0 and sv["p99_latency_us"] > 0
        assert sv["saturate"][0]["counts_ok"] and sv["paced"][0]["counts_ok"]
    assert e["argv"] is None and n["argv"][1].endswith("naive_service.py")
    ratio = nv["ratios"]["naive"]["edgert_over_naive_cpu"]
    assert ratio == round(e["windows_per_cpu_s"] / n["windows_per_cpu_s"], 3)
    assert res["figures"]["naive.edgert_over_naive_cpu"] == ratio
    assert res["targets"]["edgert_over_naive_cpu"]["value"] == ratio
    assert "naive service vs edgert" in run.render(res)
    assert nv["failed"]["naive-tflite"].startswith("FileNotFoundError") and "naive-tflite" not in nv["services"]
    assert any(p.startswith("naive: naive-tflite failed: FileNotFoundError") for p in res["problems"])


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


def test_engine_section_measures_the_daemon_against_the_bare_invoke():
    """`bench/engine.py` on a tiny budget: windows per daemon CPU-second at 64-sample blocks and
    in an anomaly storm (every window flagged), the bare invoke beside them, and the text."""
    from edgert.bench import engine
    from edgert.models import load

    m = load("motor-ae")
    r = engine.compare(m, "motor-ae", rounds=1, seconds=1.5, blocks=(64,), storm=True)
    quiet, storm = r["configs"]["b64"], r["configs"]["storm_b64"]
    assert quiet["current"]["windows_per_cpu_s"] > 0 and storm["current"]["windows_per_cpu_s"] > 0
    assert storm["current"]["rounds"][0]["anomalies"] > 0 and quiet["current"]["rounds"][0]["anomalies"] == 0
    assert 0 < quiet["pipeline_over_bare"] < 2 and r["bare_invoke_windows_per_cpu_s"][0] > 0
    assert r["storm_over_quiet"]["current"] > 0
    text = "\n".join(engine.render_lines(r))
    assert "storm / quiet" in text and "pipeline/bare" in text
