"""``edgert bench --only naive``: edgert's daemon against the plain Python service a user would
write instead (`naive_service.py`), on the same ZeroMQ stream, in the same run.

Every service runs as its own process on the daemon's CPU, started, fed and read by the
harness of bench/pipeline.py (one sender: `pipeline.SensorLoad`, 8 sensors × 64-sample blocks
of real ITSC motor current over ipc PUSH/PULL). Per service and round, the rounds interleaved
(edgert, naive, edgert, naive, …):

1. saturation (`pipeline.saturate`): blocks as fast as the service takes them → windows/s, its
   CPU time from /proc/PID/task/*/stat → **windows per CPU-second** (CPU time, so another
   process on the core does not move it);
2. paced (`pipeline.paced`): a fresh process at ``load_fraction`` of the slowest service's
   saturation rate (the same offered load for all) → p50/p99 receipt → decision latency
   (each measures from its own receipt of the block to the decision, in the same histogram
   bins) and windows per CPU-second at that load.

Then the decisions (`decisions`): each service once more, fed the labelled ITSC stream (the
model's held-out healthy recordings and every fault recording, one sensor per recording, from
its first sample); the daemon publishes every window's score (``--publish-scores``), the naive
service records them (``--record``); flags compared window by window (same sensor, same start
time), F1 against the recordings' labels.

Services: ``edgert`` (``edgert serve``); ``naive`` (LiteRT int8, the same model file: the
service the ≥ 5× target is about); ``naive-onnx`` (ONNX Runtime, the float model converted by
`peers.to_onnx`; needs onnxruntime, and tf2onnx + TensorFlow unless the ONNX file is cached);
``naive-tflite`` (tflite-runtime int8, in ``$EDGERT_TFLITE_PYTHON`` or this Python). A runtime
that is not installed is reported with the reason, not run.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import pipeline, sysinfo

SERVICE = Path(__file__).with_name("naive_service.py")
TARGET = 5.0  # edgert's windows per CPU-second over the naive LiteRT service's (issue 11)
LABELS = {"edgert": "edgert daemon (int8, LiteRT)", "naive": "naive Python service, LiteRT int8",
          "naive-onnx": "naive Python service, ONNX Runtime float",
          "naive-tflite": "naive Python service, tflite-runtime int8"}
RUNTIME_KEYS = {"litert": "naive", "onnxruntime": "naive-onnx", "tflite-runtime": "naive-tflite"}


# -- which services can run here --------------------------------------------------------------
def tflite_python() -> tuple[str | None, str]:
    """(a Python with tflite-runtime, pyzmq and msgpack, why not)."""
    py = os.environ.get("EDGERT_TFLITE_PYTHON")
    if not py and importlib.util.find_spec("tflite_runtime") is None:
        return None, "tflite-runtime not installed (needs numpy<2: its own venv, $EDGERT_TFLITE_PYTHON)"
    py = py or sys.executable
    p = subprocess.run([py, "-c", "import tflite_runtime.interpreter, zmq, msgpack, numpy"],
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        return None, f"{py}: " + (p.stderr.strip().splitlines() or ["cannot import"])[-1]
    return py, ""


def services(model, runtimes, log=None, onnx=None) -> tuple[dict, dict]:
    """({key: argv prefix or None for edgert}, {key: why it cannot run}).

    ``onnx``: ``callable(model) -> (path or None, why not)`` converting the float model for the
    ONNX Runtime service (`bench.peers.onnx_file`; given by the caller, so this module does not
    import the peers'); without it that service is reported as not run."""
    out, unavailable = {"edgert": None}, {}
    for rt in runtimes:
        key = RUNTIME_KEYS.get(rt)
        if key is None:
            raise ValueError(f"unknown runtime {rt!r} (known: {', '.join(RUNTIME_KEYS)})")
        py, why, extra = sys.executable, "", ()
        if rt == "litert" and importlib.util.find_spec("ai_edge_litert") is None:
            why = "ai-edge-litert not installed"
        elif rt == "tflite-runtime":
            py, why = tflite_python()
        elif rt == "onnxruntime":
            try:
                path, why = onnx(model) if onnx is not None else (None, "no ONNX converter given "
                                                                   "(edgert bench passes bench.peers.onnx_file)")
            except Exception as exc:  # noqa: BLE001 - a failed conversion: report it, go on
                path, why = None, f"ONNX conversion failed: {type(exc).__name__}: {exc}"
            extra = ("--onnx", str(path)) if path else ()
        if why:
            unavailable[key] = why
            if log:
                log(f"  {key}: not run: {why}")
            continue
        out[key] = (py, str(SERVICE), "--runtime", rt, *extra)
    return out, unavailable


# -- the comparison ---------------------------------------------------------------------------
def _keep(r: dict) -> dict:
    """The figures of a pipeline result this section keeps."""
    keys = ("windows_per_s", "windows_per_daemon_cpu_s", "daemon_cpu_share", "messages_per_s",
            "seconds_loaded", "sender_blocked_share", "offered_windows_per_s", "p50_latency_us",
            "p99_latency_us", "p999_latency_us", "max_latency_us", "rss_mb", "problems")
    out = {k: r.get(k) for k in keys if k in r}
    if "windows_per_daemon_cpu_s" not in r and r.get("windows_per_s") and r.get("daemon_cpu_share"):
        out["windows_per_daemon_cpu_s"] = round(r["windows_per_s"] / r["daemon_cpu_share"], 1)
    out["counts_ok"] = r["counts"]["windows_scored"] == r["counts"]["windows_expected"]
    out["startup_s"] = r["startup"]["first_decision_s"]
    return out


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def compare(model, model_arg: str, rounds: int = 3, saturate_s: float = 4.0, paced_s: float = 3.0,
            runtimes=("litert",), decisions: bool = True, n_sensors: int = 8, block: int = 64,
            stats_interval: float = 0.2, backlog_msgs: int = 12000, settle: float = 0.5,
            load_fraction: float = 0.5, cpu_daemon: int | None = 0, startup_timeout: float = 120.0,
            recordings: int | None = None, log=None, onnx=None) -> dict:
    """The section: interleaved saturation and paced rounds, the decisions, the ratios
    (``onnx``: see `services`)."""
    svcs, unavailable = services(model, runtimes, log, onnx)
    meter = sysinfo.LoadMeter()
    common = dict(n_sensors=n_sensors, block=block, stats_interval=stats_interval,
                  cpu_daemon=cpu_daemon, startup_timeout=startup_timeout)
    failed: dict = {}  # a service that failed once is reported, and left out from then on

    def attempt(k, fn):
        try:
            return _keep(fn())
        except Exception as exc:  # noqa: BLE001 - the other services still run
            failed[k] = f"{type(exc).__name__}: {exc}"
            if log:
                log(f"  {k}: {failed[k]}")
            return None

    sat = {k: [] for k in svcs}
    for r in range(rounds):
        for k, prefix in svcs.items():
            if k in failed:
                continue
            res = attempt(k, lambda: pipeline.saturate(model, model_arg, saturate_s, settle,
                                                       backlog_msgs=backlog_msgs, prefix=prefix, **common))
            if res is not None:
                sat[k].append(res)
                if log:
                    log(f"  round {r + 1} {k}: saturated {_f(res['windows_per_s'])} windows/s, "
                        f"{_f(res['windows_per_daemon_cpu_s'])} per CPU-second")
    live = [k for k in svcs if k not in failed]
    if not live:
        raise RuntimeError(f"every service failed: {failed}")
    rate = load_fraction * min(_median([x["windows_per_s"] for x in sat[k]]) for k in live)
    paced = {k: [] for k in svcs}
    for r in range(rounds):
        for k, prefix in svcs.items():
            if k in failed:
                continue
            res = attempt(k, lambda: pipeline.paced(model, model_arg, rate, paced_s,
                                                    settle=min(settle, paced_s / 4), prefix=prefix, **common))
            if res is not None:
                paced[k].append(res)
                if log:
                    log(f"  round {r + 1} {k}: at {rate:,.0f} windows/s p99 {_f(res['p99_latency_us'])} µs")
    svcs = {k: v for k, v in svcs.items() if k not in failed}
    dec = decisions_all(model, model_arg, svcs, block, stats_interval, cpu_daemon, startup_timeout,
                        recordings, log) if decisions else {}
    out = {"sensors": n_sensors, "block_samples": block, "socket": "pull", "transport": "ipc",
           "rounds": rounds, "saturate_s": saturate_s, "paced_s": paced_s,
           "paced_windows_per_s": round(rate, 1), "load_fraction": load_fraction,
           "services": {}, "unavailable": unavailable, "failed": failed, "decisions": dec,
           "machine_load": meter.stop()}
    for k in svcs:
        s, p = sat[k], paced[k]
        out["services"][k] = {
            "label": LABELS[k], "argv": None if svcs[k] is None else list(svcs[k]),
            "windows_per_s": _median([x["windows_per_s"] for x in s]),
            "windows_per_cpu_s": _median([x["windows_per_daemon_cpu_s"] for x in s]),
            "windows_per_cpu_s_rounds": [x["windows_per_daemon_cpu_s"] for x in s],
            "cpu_share": _median([x["daemon_cpu_share"] for x in s]),
            "paced_windows_per_cpu_s": _median([x.get("windows_per_daemon_cpu_s") for x in p]),
            "p50_latency_us": _median([x["p50_latency_us"] for x in p]),
            "p99_latency_us": _median([x["p99_latency_us"] for x in p]),
            "p99_latency_us_rounds": [x["p99_latency_us"] for x in p],
            "rss_mb": _median([x.get("rss_mb") for x in p]),
            "saturate": s, "paced": p}
    out["ratios"] = ratios(out)
    out["problems"] = problems(out)
    return out


def ratios(sec: dict) -> dict:
    """edgert over each naive service: windows per CPU-second (medians, and round by round),
    the naive p99 over edgert's, and whether the decisions were equal."""
    sv = sec["services"]
    e = sv.get("edgert") or {}
    out = {}
    for k, r in sv.items():
        if k == "edgert" or not e.get("windows_per_cpu_s") or not r.get("windows_per_cpu_s"):
            continue
        per_round = [a / b for a, b in zip(e["windows_per_cpu_s_rounds"], r["windows_per_cpu_s_rounds"])
                     if a and b]
        d = (sec.get("decisions") or {}).get(k) or {}
        out[k] = {"edgert_over_naive_cpu": round(e["windows_per_cpu_s"] / r["windows_per_cpu_s"], 3),
                  "per_round": [round(x, 3) for x in per_round],
                  "edgert_over_naive_wall": round(e["windows_per_s"] / r["windows_per_s"], 3)
                  if r.get("windows_per_s") else None,
                  "naive_p99_over_edgert": round(r["p99_latency_us"] / e["p99_latency_us"], 3)
                  if r.get("p99_latency_us") and e.get("p99_latency_us") else None,
                  "same_decisions": d.get("agreement") == 1.0 if d else None,
                  "f1_edgert": ((sec.get("decisions") or {}).get("edgert") or {}).get("f1"),
                  "f1_naive": d.get("f1")}
    return out


def problems(sec: dict) -> list:
    """What went wrong, one line each: a failed service, windows lost, decisions that differ."""
    out = [f"{k} failed: {why}" for k, why in (sec.get("failed") or {}).items()]
    for k, s in sec["services"].items():
        for phase in ("saturate", "paced"):
            for i, x in enumerate(s[phase]):
                if not x["counts_ok"]:
                    out.append(f"{k} {phase} round {i + 1}: windows scored differ from windows sent")
                out += [f"{k} {phase} round {i + 1}: {p}" for p in x.get("problems") or []]
    for k, d in (sec.get("decisions") or {}).items():
        if "error" in d:
            out.append(f"decisions {k}: {d['error']}")
        elif k != "edgert" and d.get("agreement") is not None and d["agreement"] < 1.0 \
                and k != "naive-onnx":  # the float model may decide differently near the threshold
            out.append(f"decisions {k}: {d['differ']} of {d['compared']} windows decided unlike edgert")
    return out


# -- decisions on the labelled stream ---------------------------------------------------------
def labelled_recordings(model, limit: int | None = None) -> list:
    """[(name, [n, C] samples, label)]: the model's held-out healthy recordings (0) and every
    fault recording (1) of the shipped ITSC data; `limit` keeps the first healthy ones and
    fault ones alternately (tests)."""
    from edgert.evaluate.itsc import load_itsc

    cfg = (model.manifest.get("training") or {})
    hold = cfg.get("holdout_recordings") or (cfg.get("config") or {}).get("holdout_recordings") or []
    healthy = (cfg.get("config") or {}).get("healthy_class", "SC_HLT")
    recs = load_itsc()
    normal = [(n, recs[n][0], 0) for n in hold if n in recs]
    faults = [(n, x, 1) for n, (x, c) in sorted(recs.items()) if c != healthy]
    if limit is None:
        return normal + faults
    out = []
    for a, b in zip(normal + [None] * len(faults), faults):
        out += [x for x in (a, b) if x is not None]
    return out[:limit]


def decisions_all(model, model_arg, svcs: dict, block: int, stats_interval: float,
                  cpu_daemon, startup_timeout: float, recordings: int | None, log=None) -> dict:
    """`decide` per service, then each one's flags against edgert's and against the labels."""
    from .quality import quality

    recs = labelled_recordings(model, recordings)
    got = {}
    for k, prefix in svcs.items():
        try:
            got[k] = decide(model, model_arg, prefix, [x for _, x, _ in recs], block,
                            stats_interval, cpu_daemon, startup_timeout)
        except Exception as exc:  # noqa: BLE001 - one service failing: say so, compare the rest
            got[k] = {"error": f"{type(exc).__name__}: {exc}"}
    labels = {f"bench-{i}": lab for i, (_, _, lab) in enumerate(recs)}
    ref = got.get("edgert") or {}
    out = {}
    for k, d in got.items():
        if "error" in d:
            out[k] = {"error": d["error"]}
            continue
        keys = sorted(d)
        y = np.array([labels[s] for s, _ in keys])
        f = np.array([d[key][1] for key in keys])
        q = quality(y, f)
        row = {"windows": len(keys), **{m: q[m] for m in ("f1", "far", "mar", "tp", "fp", "fn", "tn")}}
        if k != "edgert" and "error" not in ref:
            both = sorted(set(d) & set(ref))
            same = sum(d[key][1] == ref[key][1] for key in both)
            row.update({"compared": len(both), "only_here": len(set(d) - set(ref)),
                        "only_edgert": len(set(ref) - set(d)), "differ": len(both) - same,
                        "agreement": round(same / len(both), 6) if both else None,
                        "max_score_diff": max((abs(d[key][0] - ref[key][0]) for key in both), default=None)})
        out[k] = row
        if log:
            log(f"  decisions {k}: {len(keys)} windows, F1 {q['f1']:.3f}"
                + (f", {row['differ']} differ from edgert" if "differ" in row else ""))
    out["stream"] = {"recordings": [n for n, _, _ in recs], "labels": "per recording: held-out "
                     "healthy = 0, fault = 1", "sensors": len(recs), "block_samples": block}
    return out


def decide(model, model_arg, prefix, streams: list, block: int, stats_interval: float,
           cpu_daemon, startup_timeout: float, msgs_per_s: float = 2000.0) -> dict:
    """Feed one fresh service the `streams` (sensor ``bench-i`` sends stream i once, paced at
    `msgs_per_s`); every window's decision: {(sensor, first sample's index in its stream):
    (score, flag)} (the index, not the time: each session's sender starts its clock afresh)."""
    edgert = prefix is None
    with tempfile.TemporaryDirectory(prefix="edgert-naive-dec-") as tmp:
        rec = Path(tmp) / "decisions.npz"
        extra = ("--publish-scores",) if edgert else ("--record", str(rec))
        with pipeline.Session(model, model_arg, tag="dec", stats_interval=stats_interval,
                              cpu_daemon=cpu_daemon, startup_timeout=startup_timeout, block=block,
                              extra=extra, prefix=prefix, scores=edgert) as s:
            ld = s.load(len(streams), sndhwm=1000, streams=streams)
            t0 = {f"bench-{i}": t for i, t in enumerate(ld.t0)}
            dt = ld.dt
            todo = [i for i in range(len(streams)) if ld.remaining(i)]
            period, due = 1.0 / msgs_per_s, time.perf_counter()
            while todo:
                for i in list(todo):
                    delay = due - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    ld.send(i)
                    due += period
                    if not ld.remaining(i):
                        todo.remove(i)
                s.evs.drain(0)
            s.wait_consumed(ld.total, 10.0 + ld.total / msgs_per_s, "labelled")
            time.sleep(0.05)  # the last partial batch waits for its 1 ms deadline
            s.stop()
            if edgert:  # the last scores events may still be on their way
                while s.evs.drain(200):
                    pass
                return {(sensor, (int(t) - t0[sensor]) // dt): (float(sc), bool(f))
                        for sensor, pl in s.evs.scores if sensor in t0
                        for t, sc, f in zip(pl["t_start"], pl["score"], pl["anomaly"])}
        z = np.load(rec)
        return {(str(sn), (int(t) - t0[str(sn)]) // dt): (float(sc), bool(f)) for sn, t, sc, f in
                zip(z["sensor"], z["t_start"], z["score"], z["flag"]) if str(sn) in t0}


# -- output -----------------------------------------------------------------------------------
def figures(sec: dict) -> dict:
    """Flat figures for the result's ``figures`` (``naive.<service>.<figure>``) and
    ``naive.edgert_over_naive_cpu`` (the LiteRT service's, the target's)."""
    out = {}
    for k, s in sec.get("services", {}).items():
        for f in ("windows_per_s", "windows_per_cpu_s", "p50_latency_us", "p99_latency_us"):
            out[f"naive.{k}.{f}"] = s.get(f)
    for k, r in sec.get("ratios", {}).items():
        out[f"naive.{k}.edgert_over_naive_cpu"] = r["edgert_over_naive_cpu"]
    r = sec.get("ratios", {}).get("naive")
    if r:
        out["naive.edgert_over_naive_cpu"] = r["edgert_over_naive_cpu"]
    return out


def _f(x, nd=0) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.{nd}f}"


def render_lines(sec: dict) -> list:
    """The section as table lines (``edgert bench``'s text output)."""
    lines = [f"naive service vs edgert ({sec['sensors']} sensors x {sec['block_samples']}-sample blocks, "
             f"PUSH/PULL {sec['transport']}, one sender; {sec['rounds']} interleaved rounds; latency at "
             f"{_f(sec['paced_windows_per_s'])} windows/s for all)",
             f"  {'service':<44}{'windows/s':>10}{'per CPU-s':>11}{'cores':>7}{'p50 µs':>8}{'p99 µs':>8}"
             f"{'F1':>7}{'same decisions':>16}"]
    dec = sec.get("decisions") or {}
    for k, s in sec["services"].items():
        d = dec.get(k) or {}
        same = "-" if k == "edgert" else ("n/a" if not d or "error" in d else
                                          f"{d['compared'] - d['differ']}/{d['compared']}")
        f1 = d.get("f1")
        lines.append(f"  {s['label']:<44}{_f(s['windows_per_s']):>10}{_f(s['windows_per_cpu_s']):>11}"
                     f"{_f(s['cpu_share'], 2):>7}{_f(s['p50_latency_us']):>8}{_f(s['p99_latency_us']):>8}"
                     f"{'n/a' if f1 is None else f'{f1:.3f}':>7}{same:>16}")
        rounds = ", ".join(_f(x) for x in s["windows_per_cpu_s_rounds"])
        lines.append(f"  {'':<44}per CPU-s by round: {rounds}; at the paced load: "
                     f"{_f(s.get('paced_windows_per_cpu_s'))}")
    for k, r in sec.get("ratios", {}).items():
        pr = ", ".join(f"{x:.2f}" for x in r["per_round"])
        line = (f"  edgert / {k} per CPU-second: {r['edgert_over_naive_cpu']:.2f}x (rounds {pr}); wall "
                f"{_f(r['edgert_over_naive_wall'], 2)}x; naive p99 / edgert p99 {_f(r['naive_p99_over_edgert'], 2)}")
        if k == "naive":
            met = r["edgert_over_naive_cpu"] >= TARGET and r["same_decisions"] is not False
            line += f"   target >= {TARGET:g}x at equal decisions: {'met' if met else 'MISSED'}"
        lines.append(line)
    for k, why in sec.get("unavailable", {}).items():
        lines.append(f"  not run: {k}: {why}")
    load = sec.get("machine_load") or {}
    if load.get("others_share") is not None:
        lines.append(f"  other processes meanwhile: {load['other_cores']:.2f} of {load['cores']} cores")
    return lines
