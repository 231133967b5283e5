"""Start-up: ``edgert serve`` (a real subprocess) → first decision, cold vs warm numba cache.

``NUMBA_CACHE_DIR`` points at a fresh empty directory: the first daemon compiles every kernel
(cold) and leaves its cache there, the next ones load it (warm). Each run measures spawn →
sockets bound → first decision (the first anomaly event of a probe sensor fed a signal the
model cannot reconstruct, sent as soon as the input socket exists; see `pipeline.startup`),
the daemon's own kernel warm-up time, and its RSS at the first decision and at exit.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from . import pipeline


def _cache_files(d: Path) -> int:
    return sum(1 for p in d.rglob("*") if p.is_file())


def cold_warm(model, model_arg: str, warm_runs: int = 2, block: int = 64, stats_interval: float = 0.2,
              cpu_daemon: int | None = 0, startup_timeout: float = 180.0, cold: bool = True, log=None) -> dict:
    """One cold start and `warm_runs` warm ones. Returns {"runs": [...], "cold": {...}, "warm": {...}}.

    With ``cold`` False the daemons use numba's usual cache (warm once anything ran the
    kernels) and no cold run is made: a quick check that start-up is measured at all.
    """
    cache = Path(tempfile.mkdtemp(prefix="edgert-bench-numba-cache-"))
    runs = []
    try:
        for i in range(0 if cold else 1, 1 + warm_runs):
            label = "cold" if i == 0 else "warm"
            files_before = _cache_files(cache)
            env = {"NUMBA_CACHE_DIR": str(cache)} if cold else None
            with pipeline.Session(model, model_arg, tag=f"startup-{label}", stats_interval=stats_interval,
                                  cpu_daemon=cpu_daemon, startup_timeout=startup_timeout, block=block,
                                  env=env) as s:
                fig = dict(s.startup)
                final = s.stop()
            mem = fig.pop("mem_at_first_decision", {}) or {}
            row = {
                "cache": label,
                "cache_files_before": files_before,
                "cache_files_after": _cache_files(cache),
                "first_decision_s": fig["first_decision_s"],
                "bound_s": fig["bound_s"],
                "method": fig["method"],
                "kernel_warmup_s": final.get("kernel_warmup_s"),
                "rss_mb_at_first_decision": mem.get("rss_mb"),
                "rss_mb_at_exit": final.get("rss_mb"),
                "rss_anon_mb_at_exit": final.get("rss_anon_mb"),
                "kernels": final.get("kernels"),
            }
            runs.append(row)
            if log:
                log(f"  start-up {label}: first decision {row['first_decision_s']:.2f} s (bound "
                    f"{row['bound_s']:.2f} s, kernel warm-up {row['kernel_warmup_s']} s), RSS "
                    f"{row['rss_mb_at_first_decision']} MB")
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    out = {"numba_cache_dir": "fresh temporary directory (NUMBA_CACHE_DIR)" if cold else "numba's default",
           "runs": runs}
    for label in ("cold", "warm"):
        rs = [r for r in runs if r["cache"] == label]
        if rs:
            out[label] = {k: [r[k] for r in rs] for k in ("first_decision_s", "kernel_warmup_s",
                                                           "rss_mb_at_first_decision")}
    problems = []
    if cold and runs and runs[0]["cache_files_before"] != 0:
        problems.append("the cold run's numba cache directory was not empty")
    if cold and runs and runs[0]["cache_files_after"] == 0:
        problems.append("the cold run left no numba cache files: the warm runs were not warm")
    out["problems"] = problems
    return out
