"""Tables of an ``edgert bench --peers`` result (bench/peers.py): plain text for the terminal,
markdown for the README (``edgert bench --render FILE.json`` prints it from a saved result).
Both read only the result dict, so a saved JSON renders the same way as a live run."""

from __future__ import annotations

import math

DATASETS = ("itsc", "skab")


def _f(x, nd=3, pct=False) -> str:
    """A figure for a table cell: n/a, a percentage, thousands separated, or nd decimals."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if pct:
        return f"{100 * x:.1f}%"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{nd}f}"


def _rows(sec: dict):
    for k, r in sec["peers"].items():
        yield k, r


def render(res: dict) -> str:
    """Plain-text table of a `run_peers` result."""
    m = res["machine"]
    lines = [f"edgert bench --peers - {m['cpu_model']}, {m['nproc']} CPUs, Python {m['python']}; "
             f"one thread per peer; fitting not timed"]
    load = (m.get("load_during_run") or {}).get("other_cores")
    if load is not None and load > 0.1:
        lines.append(f"WARNING: other processes used {load:.2f} cores during the run: figures are noisy")
    for ds in DATASETS:
        sec = res.get(ds)
        if not sec:
            continue
        d = sec["dataset"]
        if ds == "itsc":
            lines.append(f"\nITSC: {d['normal_windows']} normal + {d['anomalous_windows']} "
                         f"anomalous windows (W {d['window']}, hop {d['hop']}); F1/FAR/MAR per window")
        else:
            lines.append(f"\nSKAB: {d['files']} files, {d['test_points']} test points "
                         f"({d['anomalous_points']} anomalous); F1/FAR/MAR per point, streaming")
        lines.append(f"  {'':<38}{'batch':>5}{'windows/s':>12}{'p99 call µs':>12}"
                     f"{'p99 µs/win':>11}{'F1':>7}{'FAR':>7}{'MAR':>7}{'edgert x':>10}{'(p50)':>8}")
        for k, r in _rows(sec):
            if "error" in r:
                lines.append(f"  {r['label']:<38}ERROR {r['error']}")
                continue
            c = _cells(sec, k, r, times="x", none="")
            widths = (-38, 5, 12, 12, 11, 7, 7, 7, 10, 8)
            lines.append("  " + "".join(f"{x:<{-w}}" if w < 0 else f"{x:>{w}}" for x, w in zip(c, widths)))
        for name, t in sec.get("targets", {}).items():
            if t["value"] is None:
                lines.append(f"  target {name}: {t['target']}: not measured")
            else:
                lines.append(f"  target {name}: {t['target']}: {t['value']:.1f}x, speed "
                             f"{'met' if t['speed_pass'] else 'MISSED'}, F1 "
                             f"{'met' if t['f1_pass'] else 'MISSED'}")
    for k, why in res.get("unavailable", {}).items():
        lines.append(f"not run: {k}: {why}")
    for k, e in res.get("errors", {}).items():
        lines.append(f"ERROR {k}: {e}")
    for n in res.get("settings", {}).get("notes", []):
        lines.append(f"note: {n}")
    lines.append(f"elapsed {res.get('elapsed_s', 0):.0f} s")
    return "\n".join(lines)


def _cells(sec: dict, k: str, r: dict, times: str, none: str) -> list[str]:
    """One detector's row as formatted cells (label, batch, windows/s, p99 per call and per
    window, F1, FAR, MAR, speed-up, median-call speed-up), for the text and markdown tables."""
    q, ratios = r["quality"], sec["ratios"].get(k, {})
    sp, s50 = ratios.get("speedup"), ratios.get("speedup_p50")
    return [r["label"], str(r["batch"]), _f(r["windows_per_s"], 0), _f(r["p99_call_us"], 1),
            _f(r["p99_window_us"], 2), _f(q["f1"]), _f(q["far"], pct=True), _f(q["mar"], pct=True),
            none if sp is None else _f(sp, 1) + times, none if s50 is None else _f(s50, 1) + times]


def render_markdown(res: dict) -> str:
    """The README results table (markdown) of a `run_peers` result, with its command and
    machine."""
    m = res["machine"]
    v = res.get("versions", {})
    out = [f"Measured with `{res.get('command', 'edgert bench --peers')}` on "
           f"{m['cpu_model']} ({m['nproc']} CPUs, Python {m['python']}), {res['timestamp'][:10]}; "
           "one thread each, fitting and conversion not timed; after an untimed quality pass, "
           f"{res['settings']['rounds']} timed round(s), the detectors in turn."]
    load = (m.get("load_during_run") or {}).get("other_cores")
    if load is not None:
        out[0] += f" Other processes used {load:.2f} of the {m['nproc']} cores meanwhile."
    vv = ", ".join(f"{k} {v[k]}" for k in ("ai-edge-litert", "river", "pyod", "onnxruntime",
                                           "tensorflow-cpu", "tensorflow") if k in v)
    if vv:
        out.append(f"Versions: {vv}.")
    q = res["settings"].get("quantile")
    if q:
        out.append(f"Thresholds: River's QuantileFilter q = {q:g} and PyOD contamination "
                   f"{1 - q:.3g} (their own); the float autoencoders decide as edgert does "
                   "(ITSC: the manifest's calibrated threshold; SKAB: edgeae's per-channel "
                   "references from the training windows). p99 per window = p99 of call time / "
                   "windows in the call; a window waits for its whole call. Speed-up: edgert's "
                   "windows/s over the detector's; last column: the same from the median call's "
                   "time per window (less moved by other processes).")
    for ds in DATASETS:
        sec = res.get(ds)
        if not sec:
            continue
        d = sec["dataset"]
        if ds == "itsc":
            out += ["", f"**ITSC** ({d['normal_windows']} normal + {d['anomalous_windows']} "
                        f"anomalous windows of {d['window']} samples, hop {d['hop']}; "
                        f"quality per window, FAR from the {d['normal_windows']} normal ones)"]
        else:
            out += ["", f"**SKAB** ({d['files']} files, {d['test_points']} test points, "
                        "streaming point-wise quality; each detector fitted per file on its "
                        "first 400 rows)"]
        out += ["", "| detector | batch | windows/s | p99 µs per call | p99 µs per window | F1 | "
                    "FAR | MAR | edgert speed-up | (median calls) |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for k, r in _rows(sec):
            if "error" in r:
                out.append(f"| {r['label']} | | | | | | | | error: {r['error'][:80]} | |")
                continue
            out.append("| " + " | ".join(_cells(sec, k, r, times="×", none="-")) + " |")
        out.append("")
        for name, t in sec.get("targets", {}).items():
            if t["value"] is not None:
                out.append(f"Target {name.replace('_', ' ')} ({t['target']}): {t['value']:.1f}×, "
                           f"speed {'met' if t['speed_pass'] else 'missed'}, F1 "
                           f"{'met' if t['f1_pass'] else 'missed'}.")
    if res.get("unavailable"):
        out += [""] + [f"Not run: {k} ({why})." for k, why in res["unavailable"].items()]
    return "\n".join(out) + "\n"
