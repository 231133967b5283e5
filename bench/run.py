"""``edgert bench [--quick] [--only SECTIONS] [--plot DIR] [--json] [--out FILE] [--from FILE]``.

Sections, in the order they run (see the modules for how each is measured):

1. kernels (`micro.bench_kernels`): each numba kernel vs its numpy reference on 32 windows of
   the model's W×C and of 64×8, and (full mode) of every W × C in 32/64/256 × 1/3/8 → µs per
   call and the speedup (target ≥ 5×).
2. invoke (`micro.bench_invoke`): bare ``backend.run(32)`` and ``run(1)`` in a loop → windows/s.
3. pipeline (`pipeline.saturate`): the daemon as a subprocess on CPU 0, blocks of 64 samples
   from 8 sensors sent from CPU 1 as fast as it takes them → sustained windows/s; the ratio to
   the bare batch-32 rate (target ≥ 0.5).
4. latency (`pipeline.paced`): a fresh daemon at 50 % of that rate → p50/p99/p99.9 latency
   (target p99 ≤ 2000 µs), RSS (target ≤ 200 MB), start-up (spawn → first decision).
5. inference (`inference`): every shipped model × variant (dynamic, b1, packed) × backend
   (cpu; edgetpu and delegates, or why they are not available) × batch 1/8/32/packed →
   windows/s and per-call p50/p99.
6. bus (`bus`): ZeroMQ ipc vs tcp loopback, blocks of 1…4096 samples of the wire format,
   copy vs zero-copy receive, the sender in its own process on the other core → messages/s,
   samples/s.
7. e2e (`e2e`): 1, 64 and 1024 sensors; per count its saturation rate, then load steps of
   10…150 % of it on fresh daemons → windows/s achieved, p50/p99/p99.9, drops and losses.
8. startup (`startup`): ``edgert serve`` → first decision with a cold numba cache (a fresh
   ``NUMBA_CACHE_DIR``) and warm; daemon RSS.
9. naive (`naive`): the daemon against the plain Python service a user would write instead
   (`naive_service.py`), each a separate process fed the same ZeroMQ stream, runs interleaved
   → windows per CPU-second, p99 receipt → decision, and the same decisions on the same
   labelled windows; the ratio (target ≥ 5×).

``--quick`` (CI) runs sections 1-4 with small budgets (~20 s). ``--only kernels,bus`` picks
sections. Prints a table (progress goes to stderr); with ``--json`` the last stdout line is the
whole result as one JSON object. Every run writes that JSON (figures, machine, versions,
settings) to ``--out`` or to ``bench/results/bench-<timestamp>.json`` under the current
directory; ``--plot DIR`` draws PNGs from it (`plot`), ``--from FILE`` re-renders a saved one.

The CI gate judges ``"ratios"``: figures of one run divided by figures of the same run, each
in CPU time, so another process taking a core moves neither side: numba / numpy CPU time per
kernel call, and the daemon's windows per CPU-second (its own threads, /proc) over the bare
batch-32 invoke's windows per CPU-second (`pipeline_over_bare_invoke_cpu`; the wall-clock
ratio is a figure, not judged). A ratio below 0.5 × its value in bench/baseline.json fails.
The baseline holds one entry per CPU kind (architecture, int8 dot-product instructions and
microarchitecture, `sysinfo.cpu_int8`: the int8 invoke runs ~5× faster per window on one VNNI
CPU than on another, which moves every ratio against it); a CPU kind without an entry is "not
judged". The load from other processes
(`sysinfo.LoadMeter`) over the gated sections is measured; above `LOAD_LIMIT` of the cores the
run is repeated once, and if the machine is still loaded the result is "not judged: machine
loaded (figures)", exit 0 with that line. ``--update-baseline`` writes this CPU kind's entry,
only into bench/baseline.json of a git checkout (editable install), only from a run of every
gated section, never from a loaded run.
Exit status: 0 when every section ran (whether or not targets were met), 1 otherwise (or a
ratio fell below 0.5 × its baseline), 2 for bad arguments or a refused ``--update-baseline``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import gate, sysinfo
from .jsonsafe import clean as _clean
from .snapshot import snapshot_model as _snapshot_model

SCHEMA = 2
SECTIONS = ("kernels", "invoke", "pipeline", "latency", "inference", "bus", "e2e", "startup", "naive", "hostile",
            "engine", "workers", "integrations", "frontier")
QUICK_SECTIONS = ("kernels", "invoke", "pipeline", "latency")  # what CI runs (--quick)
GATE_SECTIONS = gate.GATE_SECTIONS  # the sections whose ratios the gate judges
# Other processes may use this share of the cores during the gated sections; above it the run
# is measured again, and if still loaded not judged. On 2 cores: half a core.
LOAD_LIMIT = 0.25
EXTRA_SHAPE = (64, 8, 16)  # W, C, H: the prototype's shape (shared/NOTES.md)

TARGETS = {  # name: (op, value)
    "kernel_speedup_min": (">=", 5.0),
    "pipeline_over_bare_invoke_cpu": (">=", 0.5),
    "p99_latency_us": ("<=", 2000.0),
    "rss_mb": ("<=", 200.0),
    # the daemon's windows per CPU-second over the plain Python service's (bench/naive.py), at
    # equal decisions: the engine rework's target (issue 12), not met by today's daemon
    "edgert_over_naive_cpu": (">=", 5.0),
}


@dataclass
class Settings:
    quick: bool = False
    model: str = "motor-ae"
    kernel_repeats: int = 21
    kernel_target_s: float = 0.01
    kernel_windows: int = 32
    invoke_repeats: int = 21
    invoke_target_s: float = 0.1
    max_batch: int = 32
    sensors: int = 8
    block_samples: int = 64
    stats_interval_s: float = 0.2
    pipeline_s: float = 15.0
    pipeline_settle_s: float = 1.0
    backlog_msgs: int = 12000
    latency_load: float = 0.5
    latency_s: float = 10.0
    startup_timeout_s: float = 120.0
    cpu_daemon: int | None = 0
    cpu_bench: int | None = 1
    sections: tuple = SECTIONS
    # kernels: window sizes × channel counts swept (full mode; quick keeps the model's shape and 64x8)
    kernel_sweep: bool = True
    kernel_windows_sweep: tuple = (32, 64, 256)
    kernel_channels_sweep: tuple = (1, 3, 8)
    # inference: every shipped model (empty = all) × variant × backend × batch
    inference_models: tuple = ()
    inference_target_s: float = 0.5
    inference_batches: tuple = (1, 8, 32)
    # bus
    bus_blocks: tuple = (1, 16, 64, 256, 1024, 4096)
    bus_transports: tuple = ("ipc", "tcp")
    bus_modes: tuple = ("copy", "zero_copy")
    bus_s: float = 1.0
    # end to end: sensor counts, load steps as fractions of each count's saturation rate
    e2e_sensors: tuple = (1, 64, 1024)
    e2e_fractions: tuple = (0.10, 0.25, 0.50, 0.75, 1.00, 1.50)
    e2e_step_s: float = 4.0
    e2e_saturation_s: float = 6.0
    e2e_socket: str = "sub"
    e2e_sndhwm: int = 1000  # each sensor socket's send queue (ZeroMQ's default); past it PUB drops
    e2e_max_extra_steps: int = 2  # more steps (1.5x each) while the daemon still keeps up
    # start-up: one cold numba cache, then warm ones
    startup_warm_runs: int = 2
    startup_cold: bool = True  # False: warm runs only, numba's default cache (tests)
    startup_cold_timeout_s: float = 300.0
    # naive: the daemon vs the plain Python service, interleaved rounds (bench/naive.py)
    naive_rounds: int = 3
    # hostile: the daemon under attack (bench/hostile.py); overload seconds per socket type
    hostile_overload_s: float = 60.0
    # engine: the per-message path against a baseline build (bench/engine.py); the baseline's
    # Python comes from $EDGERT_BASELINE_PYTHON (a venv with an older edgert), else none
    engine_rounds: int = 3
    engine_seconds: float = 4.0
    # workers: edgert serve --workers N against the single process (bench/workers.py)
    workers_n: int = 2
    workers_paced_msgs: float = 6000.0
    workers_paced_s: float = 8.0
    workers_saturate_s: float = 10.0
    workers_rounds: int = 3
    # frontier: model sizes side by side (bench/frontier.py); empty = the shipped models
    frontier_models: tuple = ()
    frontier_rounds: int = 7
    frontier_target_s: float = 0.2
    naive_saturate_s: float = 4.0
    naive_paced_s: float = 3.0
    naive_runtimes: tuple = ("litert", "onnxruntime", "tflite-runtime")
    naive_decisions: bool = True
    load_limit: float = LOAD_LIMIT
    plot_dir: str | None = None
    notes: list = field(default_factory=list)

    @classmethod
    def for_mode(cls, quick: bool, **kw) -> "Settings":
        if quick:
            base = dict(quick=True, kernel_repeats=7, kernel_target_s=0.004, invoke_repeats=7,
                        invoke_target_s=0.05, pipeline_s=5.0, pipeline_settle_s=0.6, latency_s=5.0,
                        kernel_sweep=False, sections=QUICK_SECTIONS, frontier_rounds=3,
                        frontier_target_s=0.03)
        else:
            base = {}
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(**base)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


LoadMeter = sysinfo.LoadMeter  # CPU used by other processes while a section ran


def run_bench(settings: Settings, log=_log) -> dict:
    """Run the selected sections; returns the result dict (never raises for a failing section)."""
    from . import micro, pipeline

    result = {
        "schema": SCHEMA,
        "tool": "edgert bench",
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if settings.quick else "full",
        "machine": sysinfo.machine_info(),
        "settings": None,
        "errors": {},
        "problems": [],
    }
    git = sysinfo.git_rev(Path(__file__).resolve().parent.parent)
    if git:
        result["machine"]["git"] = git
    t_all = time.perf_counter()
    meter_all = LoadMeter()
    meter_gate = None

    # pinning: the bench (sender) on one core, the daemon on the other
    orig_aff = None
    try:
        orig_aff = os.sched_getaffinity(0)
    except AttributeError:
        pass
    if settings.cpu_bench is not None and settings.cpu_daemon is not None and orig_aff is not None \
            and {settings.cpu_bench, settings.cpu_daemon} <= orig_aff and settings.cpu_bench != settings.cpu_daemon:
        sysinfo.pin(settings.cpu_bench)
        result["machine"]["pinning"] = {"bench": settings.cpu_bench, "daemon": settings.cpu_daemon}
    else:
        settings.notes.append("not pinned: needs two distinct allowed CPUs "
                              f"{settings.cpu_bench} and {settings.cpu_daemon} (allowed: {sorted(orig_aff or [])})")
        settings.cpu_daemon = None
        result["machine"]["pinning"] = None

    snap = None
    try:
        model = None
        try:
            model, snap, src = _snapshot_model(settings.model)
            model_arg = str(snap)
            v = model.variants["dynamic"]
            result["model"] = {
                "name": model.name, "dir": str(src), "window": model.window, "hop": model.hop,
                "channels": model.channels, "threshold": model.threshold,
                "dynamic_variant": v.path.name, "sha256": model.manifest.get("files", {}).get(v.path.name),
                "input_quant": [v.input.scale, v.input.zero_point],
                "output_quant": [v.output.scale, v.output.zero_point],
            }
        except Exception as exc:  # noqa: BLE001 - every section that needs it reports it
            result["model"] = None
            result["errors"]["model"] = f"{type(exc).__name__}: {exc}"
            log(f"edgert bench: model {settings.model!r} unavailable: {exc}")

        # the load from other processes while the gated figures are measured (sections 1-3)
        meter_gate = LoadMeter()

        # 1. kernels
        if "kernels" in settings.sections:
            log("edgert bench: kernels (numba vs numpy)")
            _section(result, "kernels", lambda: _kernels_section(settings, model, log))

        # 2. bare invoke
        if "invoke" in settings.sections:
            log("edgert bench: bare invoke")
            _section(result, "invoke", lambda: micro.bench_invoke(
                _need_model(settings, result, model), settings.invoke_repeats, settings.invoke_target_s,
                max_batch=settings.max_batch, log=log))

        # 3. pipeline at full speed
        if "pipeline" in settings.sections:
            log(f"edgert bench: pipeline ({settings.sensors} sensors, {settings.block_samples}-sample "
                f"blocks, {settings.pipeline_s:g} s)")
            pres = _section(result, "pipeline", lambda: pipeline.saturate(
                _need_model(settings, result, model), model_arg, settings.pipeline_s,
                settings.pipeline_settle_s, n_sensors=settings.sensors, block=settings.block_samples,
                stats_interval=settings.stats_interval_s, backlog_msgs=settings.backlog_msgs,
                cpu_daemon=settings.cpu_daemon, startup_timeout=settings.startup_timeout_s, log=log))
            if pres is not None:
                log(f"  sustained {pres['windows_per_s']:,.0f} windows/s, "
                    f"{_fmt(pres['windows_per_daemon_cpu_s'], 0)} per daemon CPU-second")
        result["machine"]["load_gated"] = meter_gate.stop()
        meter_gate = None

        # 4. latency at half load, fresh daemon
        if "latency" in settings.sections:
            lres = _section(result, "latency", lambda: _latency_section(settings, result, model, model_arg, log))
            if lres is not None:
                log(f"  p50 {_fmt(lres['p50_latency_us'], 0)} µs, p99 {_fmt(lres['p99_latency_us'], 0)} µs, "
                    f"rss {_fmt(lres['rss_mb'])} MB")

        _more_sections(settings, result, model, model_arg if model is not None else None, log)
    finally:
        if meter_gate is not None:  # an exception before section 3 ended
            result["machine"]["load_gated"] = meter_gate.stop()
        if snap is not None:
            shutil.rmtree(snap.parent, ignore_errors=True)
        if orig_aff is not None:
            try:
                os.sched_setaffinity(0, orig_aff)
            except OSError:
                pass

    result["settings"] = asdict(settings)
    result["machine"]["loadavg_end"] = sysinfo.loadavg()
    result["machine"]["load_during_run"] = meter_all.stop()
    result["elapsed_s"] = round(time.perf_counter() - t_all, 2)
    _summarize(result)
    return result


def _section(result: dict, name: str, run) -> dict | None:
    """Run one section: ``run()``'s result, with the machine load meanwhile, goes to
    ``result[name]``; an exception goes to ``result["errors"][name]`` (the other sections run).
    Returns the section's result or None."""
    m = LoadMeter()
    try:
        res = run()
    except Exception as exc:  # noqa: BLE001
        result["errors"][name] = _err(exc)
        return None
    res["machine_load"] = m.stop()
    result[name] = res
    return res


def _need_model(settings: Settings, result: dict, model):
    """The model, or the reason it is unavailable as this section's error."""
    if model is None:
        raise RuntimeError(f"model {settings.model!r} unavailable: {result['errors'].get('model')}")
    return model


def _kernels_section(settings: Settings, model, log) -> dict:
    """Numba vs numpy per kernel: the model's shape, the extra shape, and the sweep."""
    import numpy as np

    from . import micro

    if model is not None:
        v = model.variants["dynamic"]
        W, C, H = model.window, model.n_channels, model.hop
        mean, std = model.mean, model.std
        inq, outq = (v.input.scale, v.input.zero_point), (v.output.scale, v.output.zero_point)
    else:
        W, C, H = 64, 3, 16
        mean, std = [0.0] * 3, [2.0] * 3
        inq = outq = (0.03, -1)
        settings.notes.append("kernels: no model, used W=64 C=3 H=16, mean 0, std 2, scale 0.03")
    cases = {f"{W}x{C}": micro.KernelCase(W, C, H, mean, std, inq, outq, settings.kernel_windows)}
    eW, eC, eH = EXTRA_SHAPE
    if f"{eW}x{eC}" not in cases:
        data = micro.signal_data(eC, 4096).astype(np.float64)
        cases[f"{eW}x{eC}"] = micro.KernelCase(eW, eC, eH, data.mean(0), data.std(0), inq, outq,
                                              settings.kernel_windows)
    if settings.kernel_sweep:
        sweep = micro.sweep_cases(settings.kernel_windows_sweep, settings.kernel_channels_sweep,
                                  inq, outq, settings.kernel_windows)
        cases.update({k: v for k, v in sweep.items() if k not in cases})
    from edgert import kernels as _kernels
    extra = sorted(set(_kernels.__all__) - set(micro.KERNELS) - {"BACKEND", "warmup"})
    if extra:
        settings.notes.append(f"kernels not benchmarked (no input recipe in bench/micro.py): {extra}")
    return micro.bench_kernels(cases, settings.kernel_repeats, settings.kernel_target_s, log=log)


def _latency_section(settings: Settings, result: dict, model, model_arg, log) -> dict:
    """Receipt-to-decision latency at a fraction of the pipeline's (or bare invoke's) rate."""
    from . import pipeline

    _need_model(settings, result, model)
    if "pipeline" in result:
        max_rate, src = result["pipeline"]["windows_per_s"], "pipeline"
    elif "invoke" in result:
        max_rate, src = 0.5 * result["invoke"]["windows_per_s"], "0.5 x bare invoke (no pipeline figure)"
    else:
        raise RuntimeError("no max rate to take a fraction of (pipeline and invoke both missing)")
    rate = settings.latency_load * max_rate
    log(f"edgert bench: latency at {settings.latency_load:.0%} load ({rate:,.0f} windows/s, "
        f"{settings.latency_s:g} s)")
    lres = pipeline.paced(model, model_arg, rate, settings.latency_s, n_sensors=settings.sensors,
                          block=settings.block_samples, stats_interval=settings.stats_interval_s,
                          cpu_daemon=settings.cpu_daemon, startup_timeout=settings.startup_timeout_s, log=log)
    lres["load_fraction"] = settings.latency_load
    lres["max_rate_from"] = src
    return lres


def _more_sections(settings: Settings, result: dict, model, model_arg, log) -> None:
    """inference, bus, e2e, startup (see their modules); each failure is recorded, not raised."""
    if "inference" in settings.sections:
        from . import inference
        from edgert import models as _models

        log("edgert bench: inference (every shipped model, variant, backend, batch)")
        _section(result, "inference", lambda: {"models": inference.bench_inference(
            settings.inference_models or tuple(_models.shipped()), settings.inference_target_s,
            tuple(settings.inference_batches), log=log)})

    if "bus" in settings.sections:
        from . import bus

        log("edgert bench: bus (ZeroMQ ipc vs tcp, block sizes, copy vs zero-copy receive)")
        C = model.n_channels if model is not None else 3
        _section(result, "bus", lambda: bus.bus_sweep(
            tuple(settings.bus_blocks), tuple(settings.bus_transports), tuple(settings.bus_modes),
            channels=C, seconds=settings.bus_s, cpu_sender=settings.cpu_daemon, log=log))

    if "e2e" in settings.sections:
        from . import e2e

        log(f"edgert bench: end to end ({', '.join(map(str, settings.e2e_sensors))} sensors, load steps "
            f"{', '.join(f'{f:.0%}' for f in settings.e2e_fractions)} of saturation)")
        _section(result, "e2e", lambda: e2e.load_steps(
            _need_model(settings, result, model), model_arg, tuple(settings.e2e_sensors),
            tuple(settings.e2e_fractions), step_s=settings.e2e_step_s, sat_s=settings.e2e_saturation_s,
            settle=settings.pipeline_settle_s, block=settings.block_samples,
            stats_interval=settings.stats_interval_s, backlog_msgs=settings.backlog_msgs,
            cpu_daemon=settings.cpu_daemon, startup_timeout=settings.startup_timeout_s,
            socket=settings.e2e_socket, sndhwm=settings.e2e_sndhwm,
            max_extra_steps=settings.e2e_max_extra_steps, log=log))

    if "hostile" in settings.sections:
        from . import hostile

        log(f"edgert bench: hostile (hostile messages, 65,536-sample blocks, {settings.hostile_overload_s:g} s "
            "overload on PULL and on SUB, fault probes throughout)")
        _section(result, "hostile", lambda: {
            "messages": hostile.messages(),
            "big_blocks": hostile.big_blocks(),
            "overload": [hostile.overload(k, settings.hostile_overload_s) for k in ("pull", "sub")]})

    if "engine" in settings.sections:
        import os

        from . import engine

        base = os.environ.get("EDGERT_BASELINE_PYTHON") or None
        log(f"edgert bench: engine (windows per daemon CPU-second at 64/256-sample blocks and in an anomaly "
            f"storm, {settings.engine_rounds} rounds{', against ' + base if base else ''}; p99 at half load; "
            "RSS at 64 and 4,096 sensors)")

        def _engine():
            m = _need_model(settings, result, model)
            out = engine.compare(m, model_arg, base, rounds=settings.engine_rounds,
                                 seconds=settings.engine_seconds, log=log)
            builds = {"current": None, **({"baseline": (base, "-m", "edgert", "serve")} if base else {})}
            out["latency_memory"] = {b: engine.latency_and_memory(m, model_arg, out["configs"]["b64"][b]["windows_per_s"],
                                                                  prefix=pre, log=log)
                                     for b, pre in builds.items()}
            return out
        _section(result, "engine", _engine)

    if "integrations" in settings.sections:
        from . import integrations

        log("edgert bench: integrations (the MQTT events sink and a scraped /metrics on vs off, healthy and "
            "anomaly storm, a real Mosquitto)")
        _section(result, "integrations", lambda: integrations.compare(
            _need_model(settings, result, model), model_arg, rounds=settings.engine_rounds,
            seconds=settings.engine_seconds, log=log))

    if "workers" in settings.sections:
        from . import workers

        log(f"edgert bench: workers (edgert serve --workers {settings.workers_n} vs one process: windows per "
            f"daemon CPU-second paced, wall-clock windows/s saturated, {settings.workers_rounds} rounds)")
        _section(result, "workers", lambda: workers.compare(
            _need_model(settings, result, model), model_arg, settings.workers_n,
            paced_msgs=settings.workers_paced_msgs, paced_s=settings.workers_paced_s,
            saturate_s=settings.workers_saturate_s, rounds=settings.workers_rounds, log=log))

    if "frontier" in settings.sections:
        from . import frontier

        log(f"edgert bench: frontier (params, MACs, µs per window at batch {settings.max_batch} of "
            f"{', '.join(settings.frontier_models) or 'the shipped models'}, {settings.frontier_rounds} "
            "interleaved rounds)")
        _section(result, "frontier", lambda: frontier.measure(
            settings.frontier_models or None, rounds=settings.frontier_rounds,
            target_s=settings.frontier_target_s, batch=settings.max_batch, log=log))

    if "naive" in settings.sections:
        from . import naive

        log(f"edgert bench: naive (the daemon vs a plain Python service on the same stream, "
            f"{settings.naive_rounds} interleaved rounds)")
        from .peers import onnx_file

        _section(result, "naive", lambda: naive.compare(
            _need_model(settings, result, model), model_arg, rounds=settings.naive_rounds,
            saturate_s=settings.naive_saturate_s, paced_s=settings.naive_paced_s,
            runtimes=tuple(settings.naive_runtimes), decisions=settings.naive_decisions,
            n_sensors=settings.sensors, block=settings.block_samples,
            stats_interval=settings.stats_interval_s, backlog_msgs=settings.backlog_msgs,
            settle=settings.pipeline_settle_s, load_fraction=settings.latency_load,
            cpu_daemon=settings.cpu_daemon, startup_timeout=settings.startup_timeout_s, log=log,
            onnx=onnx_file))

    if "startup" in settings.sections:
        from . import startup

        log(f"edgert bench: start-up (edgert serve -> first decision; cold numba cache, then "
            f"{settings.startup_warm_runs} warm)")
        _section(result, "startup", lambda: startup.cold_warm(
            _need_model(settings, result, model), model_arg, warm_runs=settings.startup_warm_runs,
            block=settings.block_samples, stats_interval=settings.stats_interval_s,
            cpu_daemon=settings.cpu_daemon, startup_timeout=settings.startup_cold_timeout_s,
            cold=settings.startup_cold, log=log))


def _err(exc: BaseException) -> str:
    tb = traceback.format_exception_only(type(exc), exc)
    return "".join(tb).strip()


def _summarize(r: dict) -> None:
    """Top-level ``figures``, ``ratios`` and ``targets``."""
    figures, ratios = {}, {}
    k = r.get("kernels")
    if k:
        for label, case in k.items():
            if not isinstance(case, dict) or "kernels" not in case:
                continue
            for name, row in case["kernels"].items():
                if isinstance(row["speedup"], (int, float)) and math.isfinite(row["speedup"]):
                    ratios[f"kernel_speedup.{label}.{name}"] = row["speedup"]
                figures[f"kernel_us.{label}.{name}.numba"] = row["numba_us"]
                figures[f"kernel_us.{label}.{name}.numpy"] = row["numpy_us"]
                if not row["identical"]:
                    r["problems"].append(f"kernel {name} ({label}): numba and numpy results differ")
    inv = r.get("invoke")
    if inv:
        b = inv[f"batch{inv['max_batch']}"]
        figures["bare_invoke_windows_per_s"] = b["windows_per_s"]
        figures["bare_invoke_us_batch32"] = b["us_per_invoke"]
        figures["bare_invoke_batch1_per_s"] = inv["batch1"]["invokes_per_s"]
        figures["bare_invoke_us_batch1"] = inv["batch1"]["us_per_invoke"]
        figures["bare_invoke_windows_per_cpu_s"] = inv.get("windows_per_cpu_s")
    p = r.get("pipeline")
    if p:
        figures["pipeline_windows_per_s"] = p["windows_per_s"]
        figures["pipeline_messages_per_s"] = p["messages_per_s"]
        figures["pipeline_windows_per_daemon_cpu_s"] = p["windows_per_daemon_cpu_s"]
        figures["startup_first_decision_s.pipeline_daemon"] = p["startup"]["first_decision_s"]
        if inv:
            # wall clock: moved by whatever else ran on the daemon's core; a figure, not judged
            figures["pipeline_over_bare_invoke_wall"] = round(p["windows_per_s"] / inv["windows_per_s"], 3)
            if p.get("windows_per_daemon_cpu_s") and inv.get("windows_per_cpu_s"):
                ratios["pipeline_over_bare_invoke_cpu"] = round(
                    p["windows_per_daemon_cpu_s"] / inv["windows_per_cpu_s"], 3)
        r["problems"] += [f"pipeline: {x}" for x in p.get("problems", [])]
    lat = r.get("latency")
    if lat:
        for key in ("p50_latency_us", "p99_latency_us", "max_latency_us", "rss_mb"):
            figures[key] = lat[key]
        figures["peak_rss_mb"] = (lat.get("daemon_mem") or {}).get("peak_rss_mb")
        figures["latency_load_windows_per_s"] = lat["offered_windows_per_s"]
        figures["startup_first_decision_s"] = lat["startup"]["first_decision_s"]
        figures["startup_bound_s"] = lat["startup"]["bound_s"]
        r["problems"] += [f"latency: {x}" for x in lat.get("problems", [])]
    if lat:
        figures["p999_latency_us"] = lat.get("p999_latency_us")
    _summarize_more(r, figures)
    sp = [v for key, v in ratios.items() if key.startswith("kernel_speedup.")]
    values = {
        "kernel_speedup_min": min(sp) if sp else None,
        "pipeline_over_bare_invoke_cpu": ratios.get("pipeline_over_bare_invoke_cpu"),
        "p99_latency_us": figures.get("p99_latency_us"),
        "rss_mb": figures.get("rss_mb"),
        "edgert_over_naive_cpu": figures.get("naive.edgert_over_naive_cpu"),
    }
    targets = {}
    for name, (op, want) in TARGETS.items():
        got = values[name]
        ok = None if got is None or (isinstance(got, float) and math.isnan(got)) else \
            (got >= want if op == ">=" else got <= want)
        targets[name] = {"value": got, "target": f"{op} {want:g}", "pass": ok}
    if sp:
        failing = sorted(key.split(".", 1)[1] for key, v in ratios.items()
                         if key.startswith("kernel_speedup.") and v < TARGETS["kernel_speedup_min"][1])
        targets["kernel_speedup_min"]["below_target"] = failing
    r["figures"] = figures
    r["ratios"] = ratios
    r["targets"] = targets


def _summarize_more(r: dict, figures: dict) -> None:
    """Figures of the inference, bus, e2e and startup sections (flat, dotted names)."""
    inf = (r.get("inference") or {}).get("models") or {}
    for mname, entry in inf.items():
        for bk, be in entry.items():
            if not isinstance(be, dict) or not be.get("available"):
                continue
            for vname, v in (be.get("variants") or {}).items():
                for k, row in (v.get("batches") or {}).items():
                    base = f"inference.{mname}.{bk}.{vname}.{k}"
                    figures[f"{base}.windows_per_s"] = row["windows_per_s"]
                    figures[f"{base}.p50_us"] = row["p50_us"]
                    figures[f"{base}.p99_us"] = row["p99_us"]
    r["problems"] += [f"bus: {x}" for x in (r.get("bus") or {}).get("errors", [])]
    for p in (r.get("bus") or {}).get("points", []):
        base = f"bus.{p['transport']}.{p['block_samples']}.{p['mode']}"
        figures[f"{base}.messages_per_s"] = p["messages_per_s"]
        figures[f"{base}.samples_per_s"] = p["samples_per_s"]
    for n, run in ((r.get("e2e") or {}).get("runs") or {}).items():
        if "saturation_windows_per_s" in run:
            figures[f"e2e.{n}.saturation_windows_per_s"] = run["saturation_windows_per_s"]
        for st in run.get("steps", []):
            if "error" in st:
                continue
            base = f"e2e.{n}.{round(st['load_fraction'] * 100)}pct"
            for key in ("offered_windows_per_s", "windows_per_s", "p50_latency_us", "p99_latency_us",
                        "p999_latency_us", "dropped_by_daemon", "lost_messages"):
                figures[f"{base}.{key}"] = st.get(key)
    nv = r.get("naive")
    if nv:
        from . import naive

        figures.update(naive.figures(nv))
        r["problems"] += [f"naive: {x}" for x in nv.get("problems", [])]
    su = r.get("startup")
    if su:
        for label in ("cold", "warm"):
            if label in su:
                figures[f"startup.{label}.first_decision_s"] = min(su[label]["first_decision_s"])
                figures[f"startup.{label}.rss_mb"] = max(x for x in su[label]["rss_mb_at_first_decision"]
                                                         if x is not None) if any(su[label]["rss_mb_at_first_decision"]) else None
        r["problems"] += [f"startup: {x}" for x in su.get("problems", [])]


# -- output ------------------------------------------------------------------------------
def _fmt(x, nd=1, unit="") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, (int, float)) and abs(x) >= 10000:
        return f"{x:,.0f}{unit}"
    return f"{x:.{nd}f}{unit}"


def _mark(ok) -> str:
    return {True: "ok", False: "MISS", None: "-"}[ok]


def render(r: dict) -> str:
    m = r["machine"]
    lines = []
    model = r.get("model") or {}
    lines.append(f"edgert bench ({r['mode']}) - {m['cpu_model']}, {m['nproc']} CPUs, Python {m['python']}, "
                 f"numpy {m['numpy']}, numba {m['numba']}, pyzmq {m['pyzmq']} (libzmq {m['libzmq']}), "
                 f"litert {m['litert']}")
    lines.append(f"CPU: {m['cpu_model']}; int8: {cpu_int8_text(m)}")
    if model:
        lines.append(f"model {model['name']} W={model['window']} H={model['hop']} C={len(model['channels'])} "
                     f"({model['dynamic_variant']}); pinning: {m.get('pinning') or 'none'}")
    load = m.get("load_during_run", {})
    if load.get("other_cores", 0) > 0.1:
        lines.append(f"WARNING: other processes used {load['other_cores']:.2f} cores during the run "
                     f"(loadavg {m.get('loadavg_start')} -> {m.get('loadavg_end')}): wall-clock figures "
                     "are noisy; the ratios are in CPU time")
    t = r["targets"]
    k = r.get("kernels")
    if k:
        lines.append("")
        lines.append(f"{'kernels (WxC), 32 windows, CPU time':<34}{'numba µs':>10}{'numpy µs':>10}{'speedup':>9}"
                     "   target >= 5x")
        for label, case in k.items():
            if not isinstance(case, dict) or "kernels" not in case:
                continue
            for name, row in case["kernels"].items():
                flag = "ok" if row["speedup"] >= 5 else "MISS"  # False for nan too
                if not row["identical"]:
                    flag += " (results differ!)"
                lines.append(f"  {label:<6}{name:<27}{row['numba_us']:>10.2f}{row['numpy_us']:>10.2f}"
                             f"{row['speedup']:>8.1f}x   {flag}")
    inv = r.get("invoke")
    if inv:
        b = inv[f"batch{inv['max_batch']}"]
        lines.append("")
        lines.append(f"bare invoke ({inv['backend']})")
        lines.append(f"  batch {inv['max_batch']:<27}{b['us_per_invoke']:>10.2f} µs/invoke  "
                     f"{_fmt(b['windows_per_s'], 0)} windows/s, {_fmt(b.get('windows_per_cpu_s'), 0)} "
                     "per CPU-second")
        b1 = inv["batch1"]
        lines.append(f"  batch 1{'':<27}{b1['us_per_invoke']:>10.2f} µs/invoke  {_fmt(b1['invokes_per_s'], 0)} invokes/s")
    p = r.get("pipeline")
    if p:
        iv = p["interval_windows_per_s"]
        lines.append("")
        lines.append(f"pipeline ({p['sensors']} sensors x {p['block_samples']}-sample blocks, PUSH/PULL ipc, "
                     f"{p['measured_s']:.1f} s busy)")
        lines.append(f"  sustained{'':<25}{_fmt(p['windows_per_s'], 0):>10} windows/s  "
                     f"({_fmt(p['messages_per_s'], 0)} msgs/s; per {r['settings']['stats_interval_s']} s: "
                     f"{_fmt(iv['min'], 0)}..{_fmt(iv['max'], 0)})")
        pr = t["pipeline_over_bare_invoke_cpu"]
        lines.append(f"  pipeline / bare invoke, per CPU-s{'':<1}{_fmt(pr['value'], 3):>10}             "
                     f"target {pr['target']}  {_mark(pr['pass'])}")
        lines.append(f"  pipeline / bare invoke, wall{'':<6}"
                     f"{_fmt(r['figures'].get('pipeline_over_bare_invoke_wall'), 3):>10}             "
                     "(not judged: moved by other processes)")
        thr = ", ".join(f"{n.split(':', 1)[1]} {v:.2f}" for n, v in list(p["daemon_threads_cpu_share"].items())[:3])
        lines.append(f"  daemon CPU (cores){'':<16}{thr}; sender waited {p['sender_blocked_share']:.0%} of the time")
        lines.append(f"  per daemon CPU-second{'':<13}{_fmt(p['windows_per_daemon_cpu_s'], 0):>10} windows")
        s = p["startup"]
        lines.append(f"  start-up (spawn -> first decision) {s['first_decision_s']:.2f} s; first window "
                     f"{_fmt(s.get('first_window_latency_us'), 0)} µs receipt -> decision")
    lat = r.get("latency")
    if lat:
        lines.append("")
        lines.append(f"latency at {lat['load_fraction']:.0%} load ({_fmt(lat['offered_windows_per_s'], 0)} windows/s "
                     f"for {lat['seconds_loaded']:.1f} s, fresh daemon)")
        p99 = t["p99_latency_us"]
        lines.append(f"  p50 / p99 / p99.9 / max latency{'':<3}{_fmt(lat['p50_latency_us'], 0)} / "
                     f"{_fmt(lat['p99_latency_us'], 0)} / {_fmt(lat.get('p999_latency_us'), 0)}"
                     f" / {_fmt(lat['max_latency_us'], 0)} µs   target p99 {p99['target']}  {_mark(p99['pass'])}")
        rss = t["rss_mb"]
        peak = (lat.get("daemon_mem") or {}).get("peak_rss_mb")
        lines.append(f"  daemon RSS{'':<24}{_fmt(lat['rss_mb'], 1)} MB (peak {_fmt(peak, 1)} MB)   "
                     f"target {rss['target']}  {_mark(rss['pass'])}")
        s = lat["startup"]
        lines.append(f"  start-up (spawn -> first decision) {s['first_decision_s']:.2f} s (sockets bound at "
                     f"{s['bound_s']:.2f} s; first window {_fmt(s.get('first_window_latency_us'), 0)} µs "
                     "receipt -> decision)")
        lines.append(f"  daemon CPU{'':<24}{lat.get('daemon_cpu_share', 0):.2f} cores")
    lines += render_more(r)
    if r.get("naive"):
        from . import naive

        lines += [""] + naive.render_lines(r["naive"])
    if r.get("engine"):
        from . import engine

        lines += [""] + engine.render_lines(r["engine"])
    if r.get("integrations"):
        from . import integrations

        lines += [""] + integrations.render_lines(r["integrations"])
    if r.get("hostile"):
        from . import hostile

        lines += [""] + hostile.render_lines(r["hostile"])
    if r.get("workers"):
        from . import workers

        lines += [""] + workers.render_lines(r["workers"])
    if r.get("frontier"):
        from . import frontier

        lines += [""] + frontier.render_lines(r["frontier"])
    lines.append("")
    ratio_k = t["kernel_speedup_min"]
    lines.append(f"targets: kernel speedup min {_fmt(ratio_k['value'], 1)}{'x' if ratio_k['value'] is not None else ''} "
                 f"{_mark(ratio_k['pass'])}"
                 + (f" (below: {', '.join(ratio_k.get('below_target', []))})" if ratio_k.get("below_target") else "")
                 + f"; pipeline/bare per CPU-s {_mark(t['pipeline_over_bare_invoke_cpu']['pass'])}"
                 + f"; p99 {_mark(t['p99_latency_us']['pass'])}; RSS {_mark(t['rss_mb']['pass'])}"
                 + (f"; edgert/naive per CPU-s {_mark(t['edgert_over_naive_cpu']['pass'])}"
                    if t.get("edgert_over_naive_cpu", {}).get("value") is not None else ""))
    for name, e in r["errors"].items():
        lines.append(f"ERROR {name}: {e}")
    for pb in r["problems"]:
        lines.append(f"PROBLEM {pb}")
    for n in r["settings"]["notes"]:
        lines.append(f"note: {n}")
    lines.append(f"elapsed {r['elapsed_s']:.1f} s")
    return "\n".join(lines)


def cpu_int8_text(machine: dict) -> str:
    """"x86_64 avx512-vnni GenuineIntel 6/167 (VNNI: yes; amx_int8, avx2, ...)" from
    `sysinfo.cpu_int8`'s record."""
    c = machine.get("cpu_int8")
    if not c:
        return "not recorded"
    return f"{c['kind']} (VNNI: {'yes' if c['vnni'] else 'no'}; {', '.join(c['flags']) or 'no int8 flags'})"


def render_more(r: dict) -> list:
    """Table lines of the inference, bus, e2e and startup sections."""
    lines = []
    inf = (r.get("inference") or {}).get("models")
    if inf:
        lines.append("")
        lines.append(f"{'inference (per call of run(k))':<40}{'windows/s':>12}{'p50 µs':>10}{'p99 µs':>10}"
                     f"{'µs/window':>11}")
        for mname, entry in inf.items():
            if "error" in entry:
                lines.append(f"  {mname}: ERROR {entry['error']}")
                continue
            for bk, be in entry.items():
                if not isinstance(be, dict) or "available" not in be:
                    continue
                if not be["available"]:
                    lines.append(f"  {mname} {bk}: {be['reason']}")
                    continue
                for vname, v in be["variants"].items():
                    if "error" in v:
                        lines.append(f"  {mname} {bk} {vname}: ERROR {v['error']}")
                        continue
                    for k, row in v["batches"].items():
                        label = f"  {mname} {bk} {vname} " + (k if k.startswith("packed") else f"batch {k}")
                        lines.append(f"{label:<40}{_fmt(row['windows_per_s'], 0):>12}{row['p50_us']:>10.1f}"
                                     f"{row['p99_us']:>10.1f}{row['us_per_window']:>11.2f}")
    b = r.get("bus")
    if b:
        lines.append("")
        lines.append(f"bus: {b['socket']}, {b['channels']} float32 channels, wire format decoded per message, "
                     f"{b['seconds_per_point']:g} s per point")
        lines.append(f"  {'transport block mode':<30}{'msgs/s':>11}{'samples/s':>14}{'MB/s':>9}"
                     f"{'recv cores':>11}{'send cores':>11}")
        for p in b["points"]:
            lines.append(f"  {p['transport']:<4}{p['block_samples']:>6}  {p['mode']:<18}{_fmt(p['messages_per_s'], 0):>11}"
                         f"{_fmt(p['samples_per_s'], 0):>14}{p['mb_per_s']:>9.1f}"
                         f"{_fmt(p['receiver_thread_cpu_share'], 2):>11}{_fmt(p['sender_cpu_share'], 2):>11}")
    e = r.get("e2e")
    if e:
        lines.append("")
        lines.append(f"end to end ({e['socket']} socket, {e['block_samples']}-sample blocks, {e['step_s']:g} s per "
                     f"step, fresh daemon per step; latency = daemon receipt -> decision)")
        lines.append(f"  {'sensors load':<14}{'per-sensor Hz':>14}{'offered w/s':>12}{'achieved':>10}{'p50 µs':>9}"
                     f"{'p99 µs':>9}{'p99.9 µs':>10}{'dropped':>9}{'lost':>8}{'sent':>9}{'daemon cores':>13}")
        for n, run in e["runs"].items():
            if "error" in run:
                lines.append(f"  {n:>7}: ERROR {run['error']}")
                continue
            sat = run.get("saturation") or {}
            lines.append(f"  {n:>7} saturation {_fmt(run['saturation_windows_per_s'], 0)} windows/s (the daemon got "
                         f"{_fmt(sat.get('daemon_cpu_share'), 2)} cores: {_fmt(sat.get('windows_per_daemon_cpu_s'), 0)} "
                         f"windows per daemon CPU-second)")
            for st in run.get("steps", []):
                pct = f"{st['load_fraction']:.0%}"
                if "error" in st:
                    lines.append(f"  {n:>7} {pct:>5}  ERROR {st['error']}")
                    continue
                lines.append(f"  {n:>7} {pct:>5}{_fmt(st['per_sensor_samples_per_s'], 1):>14}"
                             f"{_fmt(st['offered_windows_per_s'], 0):>12}{_fmt(st['windows_per_s'], 0):>10}"
                             f"{_fmt(st['p50_latency_us'], 0):>9}{_fmt(st['p99_latency_us'], 0):>9}"
                             f"{_fmt(st['p999_latency_us'], 0):>10}{st['dropped_by_daemon']:>9}"
                             f"{st['lost_messages']:>8}{st['messages_sent']:>9}"
                             f"{_fmt(st.get('daemon_cpu_share'), 2):>13}")
    su = r.get("startup")
    if su:
        lines.append("")
        lines.append("start-up (edgert serve -> first decision)")
        for row in su["runs"]:
            lines.append(f"  {row['cache']:<5} numba cache: {row['first_decision_s']:.2f} s (sockets bound "
                         f"{row['bound_s']:.2f} s, kernel warm-up {_fmt(row['kernel_warmup_s'], 2)} s), RSS "
                         f"{_fmt(row['rss_mb_at_first_decision'], 1)} MB at first decision, "
                         f"{_fmt(row['rss_mb_at_exit'], 1)} MB at exit")
    return lines


def write_json(result: dict, out: str | None) -> Path:
    if out:
        path = Path(out)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path("bench") / "results" / f"bench-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(result), indent=1) + "\n")
    return path


BASELINE = Path(__file__).with_name("baseline.json")
TOLERANCE = gate.TOLERANCE
compare_baseline = gate.compare_baseline


def measure(settings: Settings, recheck, log=_log) -> dict:
    """`run_bench`, and once more when other processes took more than ``settings.load_limit``
    of the cores during the gated sections and ``recheck(result)`` says the result is to be
    judged. The load of every attempt is kept in ``result["load_attempts"]``."""
    attempts = []
    for i in range(2):
        result = run_bench(copy.deepcopy(settings), log=log)
        load = result.get("machine", {}).get("load_gated") or {}
        attempts.append(load)
        if i == 1 or not gate.loaded(load, settings.load_limit) or not recheck(result):
            break
        log(f"edgert bench: machine loaded ({gate.describe_load(load)}): measuring again")
    result["load_attempts"] = attempts
    return result


def _write_baseline(result: dict, settings: Settings) -> int:
    """Write this CPU kind's entry of `BASELINE` from `result`, or say why not; exit status."""
    why = gate.write_refusal(result, settings.load_limit)
    if why:
        print(f"baseline: not written: {why}", flush=True)
        return 1
    try:
        old = gate.read_baseline(BASELINE) if BASELINE.is_file() else None
    except ValueError:
        old = None  # unreadable: replaced
    new = gate.updated(old, result)
    BASELINE.write_text(json.dumps(_clean(new), indent=1) + "\n")
    kind = result["machine"]["cpu_int8"]["kind"]
    print(f"baseline: wrote {BASELINE} (entry {kind}: {len(new['cpus'][kind]['ratios'])} ratios)", flush=True)
    return 0


def parse_sections(value) -> tuple | None:
    """``"kernels,bus"`` or a list → a tuple of section names; ValueError naming an unknown one."""
    if not value:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(x.strip() for x in items if x.strip())
    bad = [x for x in names if x not in SECTIONS]
    if bad:
        raise ValueError(f"--only: unknown section(s) {', '.join(bad)} (known: {', '.join(SECTIONS)})")
    return names


def main(args) -> int:
    if getattr(args, "peers", False) or getattr(args, "render", None):
        from . import peers  # edgert side by side with other detectors (bench/peers.py)

        return peers.main(args)
    try:
        sections = parse_sections(getattr(args, "only", None) or getattr(args, "sections", None))
    except ValueError as exc:
        print(f"edgert bench: {exc}", file=sys.stderr)
        return 2
    frontier_models = ()
    if getattr(args, "frontier_models", None):
        from . import frontier

        try:  # before a long run: a bad directory is one line, exit 2
            frontier_models = tuple(str(m.dir) for m in frontier.load_models(args.frontier_models))
        except ValueError as exc:
            print(f"edgert bench: {exc}", file=sys.stderr)
            return 2
    update = bool(getattr(args, "update_baseline", False))
    if update:  # before a long run, not after it
        why = gate.partial_refusal(sections) or gate.checkout_refusal(BASELINE)
        if why:
            print(f"edgert bench: --update-baseline refused: {why}", file=sys.stderr)
            return 2
    plot_dir = getattr(args, "plot", None)
    if plot_dir:
        from . import plot
        try:
            plot.require()  # before a long run, not after it
        except RuntimeError as exc:
            print(f"edgert bench: {exc}", file=sys.stderr)
            return 2
    src = getattr(args, "from_json", None)
    if src:  # re-render and re-plot a saved result
        try:
            result = json.loads(Path(src).read_text())
        except (OSError, ValueError) as exc:
            print(f"edgert bench: --from {src}: {exc}", file=sys.stderr)
            return 2
        print(render(result), flush=True)
        if plot_dir:
            for f in plot.plot_all(result, plot_dir):
                print(f"plot: {f}", flush=True)
        return 0
    settings = Settings.for_mode(bool(getattr(args, "quick", False)), model=getattr(args, "model", None),
                                 sections=sections, plot_dir=plot_dir,
                                 frontier_models=frontier_models or None)
    judge = not update and BASELINE.is_file() and not getattr(args, "no_baseline", False)
    baseline, bad_baseline = None, None
    if judge:
        try:
            baseline = gate.read_baseline(BASELINE)
        except ValueError as exc:
            bad_baseline = str(exc)
    gated_run = bool(set(settings.sections) & set(GATE_SECTIONS))

    def recheck(res: dict) -> bool:
        """Is a loaded measurement worth repeating: will it be judged, or written?"""
        kind = (res.get("machine", {}).get("cpu_int8") or {}).get("kind", "")
        return gated_run and (update or (judge and gate.entry_for(baseline or {}, kind) is not None))

    result = measure(settings, recheck)
    verdict = None
    if judge:
        if bad_baseline:
            result["errors"]["baseline"] = bad_baseline
        verdict = gate.verdict(result, baseline, BASELINE, result["load_attempts"], settings.load_limit)
        result["gate"] = verdict
    path = write_json(result, getattr(args, "out", None))
    result["output"] = str(path)
    print(render(result), flush=True)
    print(f"results: {path}", flush=True)
    rc = 1 if result["errors"] else 0
    if plot_dir:
        try:
            for f in plot.plot_all(result, plot_dir):
                print(f"plot: {f}", flush=True)
        except Exception as exc:  # noqa: BLE001 - the figures are already saved
            print(f"edgert bench: plotting failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            rc = 1
    if update:
        rc = max(rc, _write_baseline(result, settings))
    elif verdict is not None:
        for line in verdict["lines"]:
            print(line, flush=True)
        if verdict["status"] == "fail":
            rc = 1
    if getattr(args, "json", False):
        print(json.dumps(_clean(result), separators=(",", ":")), flush=True)
    return rc
