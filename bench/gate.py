"""The CI gate of ``edgert bench``: this run's CPU-time ratios against bench/baseline.json.

What is judged: ratios named ``kernel_speedup.<WxC>.<kernel>`` (numba over numpy, CPU time
per call) and ``pipeline_over_bare_invoke_cpu`` (the daemon's windows per CPU-second over the
bare batch-32 invoke's), both measured in one run, so a core taken by another process moves
neither side. A ratio below ``tolerance`` × its baseline is a regression.

The baseline (schema 2) holds one entry per CPU kind (`sysinfo.cpu_int8`: architecture, int8
dot-product level and microarchitecture), since the int8 invoke, and with it every ratio
against it, runs ~5× faster per window on one VNNI CPU than on another::

    {"schema": 2, "tolerance": 0.5,
     "cpus": {"x86_64 avx512-vnni GenuineIntel 6/167": {"from": ..., "cpu_model": ...,
              "cpu_int8": {...}, "load": {...}, "ratios": {...}}}}

Verdicts: ``pass``, ``fail`` (a line per regression, or a baseline entry lacking a gated
figure), and three that are not judged, each printed as one line starting "not judged:" —
the machine was loaded in both measurements, the baseline has no entry for this CPU kind, or
the run measured no gated ratio. The writer (`updated`) refuses what would make a misleading
baseline: a run without every gated section, a loaded run, a file outside a git checkout.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

SCHEMA = 2
# A ratio may fall to this fraction of its baseline before CI fails. CPU-time ratios of one run
# move ~20 % between runs; a real regression (a kernel falling back to numpy, a copy on the hot
# path) moves them 2-10x.
TOLERANCE = 0.5
PIPELINE_RATIO = "pipeline_over_bare_invoke_cpu"
GATE_SECTIONS = ("kernels", "invoke", "pipeline")


def gated(name: str) -> bool:
    """Is ratio `name` one the gate judges?"""
    return name.startswith("kernel_speedup.") or name == PIPELINE_RATIO


def loaded(load: dict, limit: float) -> bool:
    """Did other processes (and steal) take more than `limit` of the cores? False when unknown."""
    share = (load or {}).get("others_share")
    return share is not None and share > limit


def describe_load(load: dict) -> str:
    """'other processes 0.62 + steal 0.00 of 2 cores (31 %) over 12.3 s' or 'load unknown'."""
    if not load or load.get("others_share") is None:
        return "load unknown (no /proc/stat)"
    return (f"other processes {load['other_cores']:.2f} + steal {load['steal_cores']:.2f} of "
            f"{load['cores']} cores ({load['others_share']:.0%}) over {load['seconds']:.1f} s")


def read_baseline(path: Path) -> dict:
    """The baseline file; ValueError naming the file when it is not a JSON object."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: not a JSON object")
    return d


def entry_for(baseline: dict, kind: str) -> dict | None:
    """This CPU kind's entry (None for another kind, or a schema-1 file without kinds)."""
    cpus = baseline.get("cpus")
    e = cpus.get(kind) if isinstance(cpus, dict) else None
    return e if isinstance(e, dict) and isinstance(e.get("ratios"), dict) else None


def compare_baseline(result: dict, entry: dict, tolerance: float = TOLERANCE) -> dict:
    """Judge `result`'s gated ratios against a baseline entry.

    Returns {"problems": [...], "judged": [names], "not_run": [names in the baseline the run
    did not measure]}. A problem is a ratio below tolerance × baseline, or a gated figure the
    run measured that the entry has no value for (a baseline written from part of a run).
    """
    got_all = result.get("ratios", {})
    base_all = entry.get("ratios", {})
    problems, judged, not_run = [], [], []
    for name, base in sorted(base_all.items()):
        if not gated(name) or not isinstance(base, (int, float)) or base <= 0:
            continue
        got = got_all.get(name)
        if got is None:
            not_run.append(name)
            continue
        judged.append(name)
        if got < tolerance * base:
            problems.append(f"REGRESSION {name}: {got:.3f} < {tolerance:g} x baseline {base:.3f}")
    families = {"kernel_speedup.": "kernel speedups", PIPELINE_RATIO: PIPELINE_RATIO}
    for prefix, what in families.items():
        measured = any(n.startswith(prefix) for n in got_all)
        in_base = any(n.startswith(prefix) and isinstance(v, (int, float)) and v > 0
                      for n, v in base_all.items())
        if measured and not in_base:
            problems.append(f"BASELINE INCOMPLETE: it has no {what} for this CPU kind; rewrite it "
                            "with `edgert bench --quick --update-baseline` from a git checkout")
    return {"problems": problems, "judged": judged, "not_run": not_run}


def verdict(result: dict, baseline: dict | None, path: Path, attempts: list, limit: float,
            tolerance: float | None = None) -> dict:
    """The gate's verdict on `result` (after `attempts`, the load of each measurement).

    Returns {"status": pass | fail | not_judged, "lines": [...], ...}; the lines are what to
    print, and a not-judged verdict has exactly one line starting "not judged:".
    """
    m = result.get("machine", {})
    kind = (m.get("cpu_int8") or {}).get("kind", "unknown")
    cores = next((a.get("cores") for a in attempts if a.get("cores")), m.get("nproc"))
    out = {"cpu_kind": kind, "baseline": str(path), "attempts": attempts, "limit": limit}
    if not any(gated(n) for n in result.get("ratios", {})):
        return {**out, "status": "not_judged", "reason": "no gated ratio",
                "lines": ["not judged: this run measured no gated ratio (sections "
                          f"{', '.join(GATE_SECTIONS)})"]}
    entry = entry_for(baseline or {}, kind)
    if entry is None:
        have = sorted((baseline or {}).get("cpus") or {}) or ["none (a file without CPU kinds)"]
        return {**out, "status": "not_judged", "reason": "cpu kind",
                "lines": [f"not judged: {path.name} has no entry for this CPU kind, {kind} "
                          f"({m.get('cpu_model')}); it has: {', '.join(have)}. Write one with "
                          "`edgert bench --quick --update-baseline` from a git checkout"]}
    if attempts and loaded(attempts[-1], limit):
        figs = "; ".join(f"run {i + 1}: {describe_load(a)}" for i, a in enumerate(attempts))
        lim = f"limit {limit:.0%} of the cores" + (f" = {limit * cores:.2f} cores" if cores else "")
        return {**out, "status": "not_judged", "reason": "loaded",
                "lines": [f"not judged: machine loaded ({figs}; {lim})"]}
    tol = tolerance if tolerance is not None else float((baseline or {}).get("tolerance", TOLERANCE))
    c = compare_baseline(result, entry, tol)
    out.update(c)
    if c["problems"]:
        return {**out, "status": "fail", "lines": list(c["problems"])}
    line = (f"baseline: {len(c['judged'])} ratios (CPU time) within {tol:g} x of {path.name} "
            f"({kind}, {entry.get('from', '?')}); {describe_load(attempts[-1] if attempts else {})}")
    if c["not_run"]:
        line += f"; not measured in this run: {len(c['not_run'])} ({', '.join(c['not_run'][:3])}…)"
    return {**out, "status": "pass", "lines": [line]}


# -- writing the baseline -------------------------------------------------------------------
def partial_refusal(sections) -> str | None:
    """Why ``--only SECTIONS`` cannot write a baseline (it lacks a gated section), or None."""
    if not sections:
        return None
    missing = [s for s in GATE_SECTIONS if s not in sections]
    if missing:
        return (f"--only {','.join(sections)} lacks {', '.join(missing)}: a baseline needs every "
                f"gated section ({', '.join(GATE_SECTIONS)}), or the ratios it lacks go unjudged")
    return None


def checkout_refusal(path: Path, git: str = "git") -> str | None:
    """Why `path` is not a baseline to rewrite, or None: it must be ``bench/baseline.json`` at
    the top of a git work tree of the project (an editable install), not an installed copy."""
    path = Path(path).resolve()
    if any(part in ("site-packages", "dist-packages") for part in path.parts):
        return f"{path} is an installed copy, not a checkout: run it from a git clone installed with pip install -e"
    try:
        p = subprocess.run([git, "-C", str(path.parent), "rev-parse", "--show-toplevel"],
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot check that {path} is in a git checkout ({type(exc).__name__}: {exc})"
    if p.returncode != 0:
        return f"{path} is in no git work tree: run it from a git clone installed with pip install -e"
    top = Path(p.stdout.strip()).resolve()
    if (top / "bench" / "baseline.json").resolve() != path or not (top / "pyproject.toml").is_file():
        return f"{path} is not bench/baseline.json at the top of the project's checkout ({top})"
    return None


def write_refusal(result: dict, limit: float) -> str | None:
    """Why this run's ratios must not become the baseline, or None."""
    failed = [s for s in GATE_SECTIONS if s in result.get("errors", {})]
    if failed:
        return f"section(s) {', '.join(failed)} failed"
    missing = [s for s in GATE_SECTIONS if s not in result]
    if missing:
        return f"section(s) {', '.join(missing)} did not run"
    if PIPELINE_RATIO not in result.get("ratios", {}):
        return f"no {PIPELINE_RATIO} (the daemon's or the invoke's CPU time is missing)"
    att = result.get("load_attempts") or [result.get("machine", {}).get("load_gated") or {}]
    if loaded(att[-1], limit):
        return f"machine loaded ({describe_load(att[-1])})"
    return None


def updated(baseline: dict | None, result: dict) -> dict:
    """`baseline` with this CPU kind's entry replaced by `result`'s gated ratios (other kinds
    kept; a schema-1 file is replaced)."""
    m = result.get("machine", {})
    kind = (m.get("cpu_int8") or {}).get("kind", "unknown")
    old = baseline if baseline and baseline.get("schema") == SCHEMA else {}
    cpus = dict(old.get("cpus") or {})
    cpus[kind] = {"from": result.get("timestamp"), "mode": result.get("mode"),
                  "cpu_model": m.get("cpu_model"), "cpu_int8": m.get("cpu_int8"),
                  "load": {k: v for k, v in (m.get("load_gated") or {}).items() if k != "per_cpu"},
                  "ratios": {k: v for k, v in sorted(result.get("ratios", {}).items()) if gated(k)}}
    return {"schema": SCHEMA, "tolerance": old.get("tolerance", TOLERANCE),
            "note": "written by `edgert bench --update-baseline`; one entry per CPU kind "
                    "(bench/gate.py)", "cpus": dict(sorted(cpus.items()))}
