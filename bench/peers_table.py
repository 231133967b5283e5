"""Tables of an ``edgert bench --peers`` result (bench/peers.py): plain text for the terminal,
markdown for the README (``edgert bench --render FILE.json`` prints it from a saved result).
Both read only the result dict, so a saved JSON renders the same way as a live run.

Under each detector table, `notes` says what its rows cannot: they time the model path only
(edgert's row runs several times its daemon's windows/s), and a speed ratio against a detector
that detects little says nothing. The services table (``itsc.services``, `bench.naive`) is
the comparison a deployment needs: edgert's daemon and the naive Python service on one stream.
"""

from __future__ import annotations

import math

DATASETS = ("itsc", "skab")
# a detector whose F1 is below this share of edgert's detects too little for a speed ratio
# against it to mean anything
WEAK_F1_SHARE = 0.5
NAIVE_TARGET = 5.0


def weak(sec: dict, key: str) -> bool:
    """Does detector `key` decide so much worse than edgert (F1 below `WEAK_F1_SHARE` of
    edgert's) that a speed ratio against it says nothing?"""
    p = sec.get("peers", {})
    e, r = (p.get("edgert") or {}).get("quality"), (p.get(key) or {}).get("quality")
    if not e or not r or e.get("f1") is None:
        return False
    return (r.get("f1") or 0.0) < WEAK_F1_SHARE * e["f1"]


def meaningful(sec: dict, name: str, t: dict) -> bool:
    """Does target `name` (``over_<peer>``) compare with a detector that detects?"""
    return t.get("meaningful", not weak(sec, name.removeprefix("over_")))


def _peer_f1(sec: dict, name: str):
    return ((sec["peers"].get(name.removeprefix("over_")) or {}).get("quality") or {}).get("f1")


def notes(sec: dict, times: str = "x") -> list[str]:
    """What the detector rows cannot say, as sentences (under the table)."""
    out = []
    e = sec["peers"].get("edgert")
    if e and "error" not in e and e.get("windows_per_s"):
        d = ((sec.get("services") or {}).get("services") or {}).get("edgert")
        daemon = (f"edgert's daemon fed a ZeroMQ stream ran {_f(d['windows_per_s'], 0)} windows/s "
                  f"({_f(d['windows_per_cpu_s'], 0)} per CPU-second; services table)" if d and d.get("windows_per_s")
                  else "edgert's daemon, which also receives, decodes, windows and publishes them, runs "
                       "fewer (`edgert bench --only naive` measures it beside the service a user would "
                       "write)")
        out.append(f"These rows compare model paths only: windows already in memory, no ZeroMQ receipt, "
                   f"decoding, windowing or events. edgert's row runs {_f(e['windows_per_s'], 0)} windows/s "
                   f"here; {daemon}.")
    for k, r in sec["peers"].items():
        if k == "edgert" or "error" in r or not weak(sec, k):
            continue
        q, eq = r["quality"], e["quality"]
        sp = sec.get("ratios", {}).get(k, {}).get("speedup")
        out.append(f"{r['label']} detects too little to compare with (F1 {_f(q['f1'])} vs edgert's "
                   f"{_f(eq['f1'])}; it misses {_f(q['mar'], pct=True)} of the anomalous windows): "
                   + (f"edgert's {sp:.1f}{times} speed over it " if sp else "a speed ratio against it ")
                   + "says nothing.")
    return out


def service_rows(sv: dict) -> list[list[str]]:
    """The services table's rows as cells: service, windows/s, per CPU-second, cores, p99 µs,
    F1, same decisions as the daemon, the daemon's windows per CPU-second over this one's."""
    rows = []
    dec = sv.get("decisions") or {}
    for k, s in sv.get("services", {}).items():
        d = dec.get(k) or {}
        same = "-" if k == "edgert" else ("n/a" if not d or "error" in d or not d.get("compared")
                                          else f"{d['compared'] - d['differ']}/{d['compared']}")
        r = (sv.get("ratios") or {}).get(k) or {}
        x = r.get("edgert_over_naive_cpu")
        rows.append([s["label"], _f(s["windows_per_s"], 0), _f(s["windows_per_cpu_s"], 0),
                     _f(s["cpu_share"], 2), _f(s["p99_latency_us"], 0), _f(d.get("f1")), same,
                     "-" if x is None else f"{x:.2f}"])
    return rows


def service_lines(sv: dict) -> list[str]:
    """Sentences under the services table: how it was measured, the target, what did not run."""
    out = [f"Same stream for every service ({sv['sensors']} sensors x {sv['block_samples']}-sample "
           f"blocks of ITSC motor current, PUSH/PULL {sv['transport']}, one sender), each service its own "
           f"process on one core, {sv['rounds']} interleaved rounds (medians); windows/s and CPU-seconds at "
           f"saturation, p99 receipt -> decision at {_f(sv['paced_windows_per_s'], 0)} windows/s; F1 and "
           "decisions on the labelled ITSC stream, window by window."]
    r = (sv.get("ratios") or {}).get("naive")
    if r:
        met = r["edgert_over_naive_cpu"] >= NAIVE_TARGET and r.get("same_decisions") is not False
        out.append(f"Target: edgert's daemon >= {NAIVE_TARGET:g}x the naive LiteRT service's windows per "
                   f"CPU-second at equal decisions: {r['edgert_over_naive_cpu']:.2f}x (rounds "
                   f"{', '.join(f'{x:.2f}' for x in r['per_round'])}), {'met' if met else 'missed'}.")
    out += [f"Not run: {k} ({why})." for k, why in (sv.get("unavailable") or {}).items()]
    return out


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
    int8 = m.get("cpu_int8")
    lines = [f"edgert bench --peers - {m['cpu_model']}"
             + (f" (int8: {int8['kind']}, VNNI {'yes' if int8['vnni'] else 'no'})" if int8 else "")
             + f", {m['nproc']} CPUs, Python {m['python']}; one thread per peer; fitting not timed"]
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
                             f"{'met' if t['f1_pass'] else 'MISSED'}"
                             + ("" if meaningful(sec, name, t) else
                                f" (says nothing: the peer's F1 is {_f(t.get('peer_f1', _peer_f1(sec, name)))})"))
        lines += [f"  note: {n}" for n in notes(sec)]
        sv = sec.get("services")
        if sv:
            lines.append(f"\n  {'service (same ZeroMQ stream)':<44}{'windows/s':>10}{'per CPU-s':>11}"
                         f"{'cores':>7}{'p99 µs':>8}{'F1':>7}{'same dec.':>11}{'edgert x':>10}")
            for c in service_rows(sv):
                lines.append("  " + "".join(f"{x:<{-w}}" if w < 0 else f"{x:>{w}}"
                                            for x, w in zip(c, (-44, 10, 11, 7, 8, 7, 11, 10))))
            lines += [f"  {x}" for x in service_lines(sv)]
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
    int8 = m.get("cpu_int8")
    out = [f"Measured with `{res.get('command', 'edgert bench --peers')}` on "
           f"{m['cpu_model']} ({m['nproc']} CPUs"
           + (f", int8: {int8['kind']}, VNNI {'yes' if int8['vnni'] else 'no'}" if int8 else "")
           + f", Python {m['python']}), {res['timestamp'][:10]}; "
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
                           f"{'met' if t['f1_pass'] else 'missed'}"
                           + ("." if meaningful(sec, name, t) else
                              f" (says nothing: the peer's F1 is {_f(t.get('peer_f1', _peer_f1(sec, name)))})."))
        nn = notes(sec, times="×")
        if nn:
            out += [""] + nn
        sv = sec.get("services")
        if sv:
            out += ["", "**Services on the same ZeroMQ stream** (what a deployment runs: edgert's daemon "
                        "and the plain Python service a user would write instead)", "",
                    "| service | windows/s | windows per CPU-second | cores | p99 µs receipt → decision | "
                    "F1 | same decisions as the daemon | daemon × per CPU-second |",
                    "|---|---:|---:|---:|---:|---:|---:|---:|"]
            out += ["| " + " | ".join(c) + " |" for c in service_rows(sv)]
            out += [""] + service_lines(sv)
    if res.get("unavailable"):
        out += [""] + [f"Not run: {k} ({why})." for k, why in res["unavailable"].items()]
    return "\n".join(out) + "\n"
