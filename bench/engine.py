"""``edgert bench --only engine``: the daemon's per-message path, CPU-normalized, against a
baseline build and against the bare invoke, in the same run.

What the issue on the engine asks to show, measured by the harness of bench/pipeline.py (one
sender process pinned to CPU 1, the daemon under test pinned to CPU 0, 8 sensors over ipc
PUSH/PULL, real ITSC motor current):

* **windows per daemon CPU-second** (the daemon's threads' CPU time from /proc, so another
  process on its core does not move the figure), at 64- and 256-sample blocks;
* the same for a **baseline build** (``--baseline-python``: a Python whose ``edgert`` is an
  older checkout, e.g. the main the engine issue was filed against), the runs interleaved
  (baseline, current, baseline, current, …) so slow phases of a shared machine hit both;
* the **bare invoke** (`micro.bench_invoke`: LiteRT on a full batch, nothing else) in windows per
  CPU-second, measured between the rounds → pipeline / bare, the share of the daemon's CPU that
  is the model;
* an **anomaly storm**: every window of every sensor anomalous (the healthy recording at 3×
  amplitude, so every event is built and published), against the quiet rate.

Ratios are medians of per-round ratios; every round's figure is kept in the JSON.
"""

from __future__ import annotations

import statistics
import sys

import numpy as np

from . import micro, pipeline, sysinfo


def storm_streams(model, n_sensors: int) -> list:
    """One anomalous [n, C] stream per sensor: the healthy bench recording at 3× amplitude
    (every window's reconstruction error is far above the threshold)."""
    blocks = pipeline.sensor_blocks(256)
    x = np.concatenate(blocks[:64]) * 3.0
    return [np.ascontiguousarray(np.roll(x, 97 * i, axis=0), dtype=np.float32) for i in range(n_sensors)]


def _median(xs):
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 3) if xs else None


def _run(model, model_arg, prefix, block, seconds, streams, log):
    r = pipeline.saturate(model, model_arg, duration=seconds, settle=min(1.0, seconds / 4), block=block,
                          prefix=prefix, streams=streams, log=None)
    keep = {k: r.get(k) for k in ("windows_per_s", "windows_per_daemon_cpu_s", "daemon_cpu_share",
                                  "messages_per_s", "anomalies", "problems", "sender_bound")}
    keep["rss_mb"] = (r.get("final") or {}).get("rss_mb")
    if log:
        log(f"    {'storm ' if streams else ''}b{block} {'baseline' if prefix else 'current '}: "
            f"{keep['windows_per_daemon_cpu_s']} windows/CPU-s, {keep['windows_per_s']} windows/s, "
            f"anomalies {keep['anomalies']}")
    return keep


def compare(model, model_arg: str, baseline_python: str | None = None, rounds: int = 3,
            seconds: float = 4.0, blocks: tuple = (64, 256), storm: bool = True, log=None) -> dict:
    """Interleaved rounds of the current daemon (and the baseline build when given).

    Args:
      model: the loaded `edgert.models.Model` (window, hop, channels for the sender).
      model_arg: what ``--model`` gets.
      baseline_python: a Python whose ``-m edgert serve`` is the build to compare with, or None.
      rounds: interleaved rounds (each runs every configuration once per build).
      seconds: saturation seconds per run.
      blocks: block sizes (samples per message).
      storm: also run the anomaly storm at the first block size (current build only, and the
        baseline's when given).
    Returns:
      a JSON-safe dict: per configuration and build, the rounds and their medians; ratios.
    """
    builds = {"current": None}
    if baseline_python:
        builds = {"baseline": (baseline_python, "-m", "edgert", "serve"), "current": None}
    configs = [(f"b{b}", b, None) for b in blocks]
    if storm:
        configs.append((f"storm_b{blocks[0]}", blocks[0], storm_streams(model, 8)))
    runs = {c[0]: {b: [] for b in builds} for c in configs}
    bare = []
    for rnd in range(rounds):
        if log:
            log(f"  round {rnd + 1}/{rounds}")
        for name, block, streams in configs:
            for build, prefix in builds.items():
                runs[name][build].append(_run(model, model_arg, prefix, block, seconds, streams, log))
        inv = micro.bench_invoke(model, repeats=3, target_s=0.3)
        bare.append(inv.get("windows_per_cpu_s"))
    out = {"machine": {"cpu": sysinfo.cpu_model(), "int8": sysinfo.cpu_int8()},
           "python": sys.version.split()[0], "rounds": rounds, "seconds": seconds,
           "baseline_python": baseline_python, "bare_invoke_windows_per_cpu_s": bare, "configs": {}}
    for name, per in runs.items():
        row = {}
        for build, rs in per.items():
            row[build] = {"windows_per_cpu_s": _median([r["windows_per_daemon_cpu_s"] for r in rs]),
                          "windows_per_s": _median([r["windows_per_s"] for r in rs]), "rounds": rs}
        cur = [r["windows_per_daemon_cpu_s"] for r in per["current"]]
        row["pipeline_over_bare"] = _median([c / b for c, b in zip(cur, bare) if c and b])
        if "baseline" in per:
            base = [r["windows_per_daemon_cpu_s"] for r in per["baseline"]]
            row["current_over_baseline"] = _median([c / b for c, b in zip(cur, base) if c and b])
        out["configs"][name] = row
    if storm:
        s, q = out["configs"][f"storm_b{blocks[0]}"], out["configs"][f"b{blocks[0]}"]
        out["storm_over_quiet"] = {b: _median([x["windows_per_daemon_cpu_s"] / y["windows_per_daemon_cpu_s"]
                                               for x, y in zip(s[b]["rounds"], q[b]["rounds"])
                                               if x["windows_per_daemon_cpu_s"] and y["windows_per_daemon_cpu_s"]])
                                   for b in builds}
    return out


def latency_and_memory(model, model_arg: str, saturation_windows_per_s: float, prefix=None,
                       seconds: float = 5.0, sensor_counts: tuple = (64, 4096), log=None) -> dict:
    """p99 receipt → decision at half the saturation rate (8 sensors, 64-sample blocks), and the
    daemon's RSS with many sensors streaming (``sensor_counts``, the probe included; 64
    connections carry them, each sensor its own id, so the daemon holds one ring and one table
    row per sensor).

    Args:
      saturation_windows_per_s: the build's saturation rate (windows/s) in this run.
      prefix: the build's ``serve`` command (None: this Python's edgert).
    Returns:
      {"half_load": {...}, "rss": {N: {...}}}
    """
    half = pipeline.paced(model, model_arg, 0.5 * saturation_windows_per_s, seconds, n_sensors=8, prefix=prefix)
    out = {"half_load": {k: half.get(k) for k in ("target_windows_per_s", "windows_per_s", "p50_latency_us",
                                                  "p99_latency_us", "p999_latency_us", "rss_mb",
                                                  "daemon_cpu_share", "problems")}, "rss": {}}
    if log:
        log(f"    half load {'baseline' if prefix else 'current '}: p99 {out['half_load']['p99_latency_us']} µs "
            f"at {out['half_load']['windows_per_s']} windows/s")
    pipeline.raise_fd_limit(1024)
    for n in sensor_counts:
        # n sensors in the daemon's table: the harness's probe and n - 1 loaded ones, each
        # sending a few blocks (2 windows per sensor-second), 64 connections carrying them
        r = pipeline.paced(model, model_arg, min(2.0 * (n - 1), 0.3 * saturation_windows_per_s),
                           max(seconds, 8.0), n_sensors=n - 1, n_sockets=min(n - 1, 64), prefix=prefix)
        out["rss"][n] = {k: r.get(k) for k in ("rss_mb", "daemon_mem", "windows_per_s", "messages_received",
                                               "problems")}
        out["rss"][n]["sensors_active"] = (r.get("final") or {}).get("sensors_active")
        if log:
            log(f"    {n} sensors {'baseline' if prefix else 'current '}: RSS {r.get('rss_mb')} MB")
    return out


def render_lines(r: dict) -> list:
    """The engine section as text."""
    f = lambda x: "n/a" if x is None else (f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}")  # noqa: E731
    int8 = (r.get("machine") or {}).get("int8") or {}
    lines = [f"engine (windows per daemon CPU-second; CPU {r['machine']['cpu']}, int8 {int8}; "
             f"bare invoke {', '.join(f(x) for x in r['bare_invoke_windows_per_cpu_s'])} windows per CPU-second)"]
    for name, row in r["configs"].items():
        base = row.get("baseline")
        lines.append(f"  {name:<10} current {f(row['current']['windows_per_cpu_s']):>9}"
                     + (f"  baseline {f(base['windows_per_cpu_s']):>9}  current/baseline "
                        f"{f(row.get('current_over_baseline'))}" if base else "")
                     + f"  pipeline/bare {f(row.get('pipeline_over_bare'))}")
    if r.get("storm_over_quiet"):
        lines.append(f"  storm / quiet: {r['storm_over_quiet']}")
    for b, lm in (r.get("latency_memory") or {}).items():
        h = lm["half_load"]
        rss = ", ".join(f"{n} sensors {x.get('rss_mb')} MB" for n, x in lm["rss"].items())
        lines.append(f"  {b}: p99 {f(h.get('p99_latency_us'))} µs at half load "
                     f"({f(h.get('windows_per_s'))} windows/s); RSS {rss}")
    return lines


def main(argv=None) -> int:
    import argparse
    import json

    from edgert.models import load as load_model

    ap = argparse.ArgumentParser(prog="python -m edgert.bench.engine", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="motor-ae")
    ap.add_argument("--baseline-python", help="a Python whose edgert is the build to compare with")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--blocks", default="64,256")
    ap.add_argument("--no-storm", action="store_true")
    ap.add_argument("--no-latency-memory", action="store_true", help="skip the half-load p99 and RSS runs")
    ap.add_argument("--out", help="write the JSON here")
    a = ap.parse_args(argv)
    model = load_model(a.model)
    res = compare(model, a.model, a.baseline_python, a.rounds, a.seconds,
                  tuple(int(b) for b in a.blocks.split(",")), not a.no_storm,
                  log=lambda m: print(m, file=sys.stderr, flush=True))
    if not a.no_latency_memory:
        builds = {"current": None}
        if a.baseline_python:
            builds["baseline"] = (a.baseline_python, "-m", "edgert", "serve")
        b0 = res["configs"][f"b{a.blocks.split(',')[0]}"]
        res["latency_memory"] = {
            b: latency_and_memory(model, a.model, b0[b]["windows_per_s"], prefix=pre,
                                  log=lambda m: print(m, file=sys.stderr, flush=True))
            for b, pre in builds.items()}
    text = json.dumps(res, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
