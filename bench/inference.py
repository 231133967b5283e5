"""Inference: every shipped model × variant × backend × batch → windows/s and per-invoke p50/p99.

Variants run the way the runtime runs them: ``dynamic`` on `edgert.backends.cpu.CpuBackend`
(one interpreter per batch size), ``b1`` and ``packed`` (static ``[1, B, W, C]``) on
`edgert.backends.packed.PackedBackend` (``run(k)`` = ceil(k / B) invokes, rows copied in and
out, a partial last invoke zero-padded). Batches 1, 8 and 32 for each, plus "packed": the
packed variant's own B rows through its zero-copy path (one invoke, no row copies).

Backends other than the CPU are built through `edgert.backends.create`, whose probing says
why one cannot run here; that reason is reported as ``"not available: <cause>: <reason>"``.
Each call of ``backend.run(k)`` is timed on its own (``perf_counter_ns``), so p50/p99 are per
call; windows/s is k × calls / total time of the timed loop. Input rows are real windows
(shipped ITSC data), quantized with the model's normalization.
"""

from __future__ import annotations

import os
import time

import numpy as np

BATCHES = (1, 8, 32)
VARIANTS = ("dynamic", "b1", "packed")


def time_runs(run, k: int, target_s: float, min_calls: int = 50, warmup: int = 20) -> dict:
    """Call ``run(k)`` for about `target_s` (at least `min_calls` times), each call timed.

    Returns:
      {calls, seconds, windows_per_s, invokes_per_s, p50_us, p99_us, mean_us, min_us, max_us}
    """
    for _ in range(warmup):
        run(k)
    perf = time.perf_counter_ns
    cap = max(min_calls, 1 << 16)
    times = np.empty(cap, dtype=np.int64)
    n = 0
    t_end = perf() + int(target_s * 1e9)
    t0 = perf()
    while n < cap:
        a = perf()
        run(k)
        b = perf()
        times[n] = b - a
        n += 1
        if b >= t_end and n >= min_calls:
            break
    total = (perf() - t0) * 1e-9
    us = times[:n] * 1e-3
    return {
        "calls": n, "seconds": round(total, 4),
        "windows_per_s": round(k * n / total, 1), "invokes_per_s": round(n / total, 1),
        "p50_us": round(float(np.percentile(us, 50)), 2), "p99_us": round(float(np.percentile(us, 99)), 2),
        "mean_us": round(float(us.mean()), 2), "min_us": round(float(us.min()), 2),
        "max_us": round(float(us.max()), 2), "us_per_window": round(float(us.mean()) / k, 3),
    }


def _static_cpu(model, variant, max_batch: int):
    """A `PackedBackend` on one CPU interpreter of a static b1/packed variant."""
    from edgert.backends import _litert
    from edgert.backends.cpu import _Slot
    from edgert.backends.packed import PackedBackend, model_source

    Interpreter, _, runtime, version = _litert.find()
    slot = _Slot(Interpreter, model_source(model, variant), 1, 1, dynamic=False)
    return PackedBackend(model, variant, max_batch, [slot], f"cpu:{runtime}-{version}", runtime)


def _fill(backend, model) -> None:
    from .micro import fill_input

    fill_input(backend, model)


def bench_cpu(model, target_s: float, batches=BATCHES, log=None) -> dict:
    """Every variant of `model` on the CPU. Returns {variant: {batch label: figures} | {error}}."""
    from edgert.backends import create

    out = {}
    for vname in VARIANTS:
        v = model.variants.get(vname)
        if v is None:
            out[vname] = {"error": f"no {vname!r} variant in {model.dir}/manifest.json"}
            continue
        rows = {}
        try:
            if vname == "dynamic":
                b = create("cpu", model, max_batch=max(batches))
                info = {"runs_on": "CpuBackend (one interpreter per batch size)"}
            else:
                b = _static_cpu(model, v, max(batches))
                info = {"runs_on": f"PackedBackend, {b.rows} row(s) per invoke", "rows_per_invoke": b.rows}
            try:
                _fill(b, model)
                for k in batches:
                    rows[str(k)] = time_runs(b.run, k, target_s)
                    if vname != "dynamic":
                        rows[str(k)]["invokes_per_call"] = -(-k // b.rows)
            finally:
                b.close()
            if vname == "packed":
                b = _static_cpu(model, v, None or v.input.shape[1])
                try:
                    _fill(b, model)
                    B = b.rows
                    rows[f"packed{B}"] = {**time_runs(b.run, B, target_s), "invokes_per_call": 1,
                                          "zero_copy": bool(b.zero_copy)}
                finally:
                    b.close()
            out[vname] = {"backend": b.name, "file": v.path.name, **info, "batches": rows}
        except Exception as exc:  # noqa: BLE001 - report it, go on with the next variant
            out[vname] = {"error": f"{type(exc).__name__}: {exc}"}
        if log and "batches" in out[vname]:
            parts = ", ".join(f"{k}: {r['windows_per_s']:,.0f} w/s p99 {r['p99_us']:.0f} µs"
                              for k, r in out[vname]["batches"].items())
            log(f"  {model.name} {vname}: {parts}")
        elif log:
            log(f"  {model.name} {vname}: {out[vname]['error']}")
    return out


def _other_backend(spec: str, model, target_s: float, batches=BATCHES) -> dict:
    """A non-CPU backend, or why it is not available here."""
    from edgert.backends import BackendError, create

    try:
        b = create(spec, model, max_batch=max(batches))
    except BackendError as exc:
        return {"available": False,
                "reason": f"not available: {exc.cause or 'error'}: {' '.join(str(exc).split())}"}
    except Exception as exc:  # noqa: BLE001
        return {"available": False, "reason": f"not available: {type(exc).__name__}: {exc}"}
    try:
        _fill(b, model)
        rows = {str(k): time_runs(b.run, k, target_s) for k in batches}
        return {"available": True, "backend": b.name, "info": getattr(b, "info", None),
                "variants": {getattr(getattr(b, "variant", None), "name", "?"): {"batches": rows}}}
    finally:
        b.close()


def delegate_specs() -> list:
    """Delegates to benchmark: ``EDGERT_BENCH_DELEGATES`` (``;``-separated ``delegate:PATH[:k=v]``)."""
    return [x.strip() for x in os.environ.get("EDGERT_BENCH_DELEGATES", "").split(";") if x.strip()]


def bench_inference(model_names, target_s: float, batches=BATCHES, log=None) -> dict:
    """{model: {"cpu": {...}, "edgetpu": {...}, "delegate[:…]": {...}}} (see module doc)."""
    from edgert import models

    res = {}
    for name in model_names:
        try:
            model = models.load(name)
        except Exception as exc:  # noqa: BLE001
            res[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        entry = {"model": {"name": model.name, "kind": model.kind, "window": model.window,
                           "channels": model.n_channels},
                 "cpu": {"available": True, "variants": bench_cpu(model, target_s, batches, log)}}
        entry["edgetpu"] = _other_backend("edgetpu", model, target_s, batches)
        specs = delegate_specs()
        if not specs:
            entry["delegate"] = {"available": False, "reason": "not available: no delegate library named "
                                 "(set EDGERT_BENCH_DELEGATES=delegate:PATH[:key=value,…] to benchmark one)"}
        for spec in specs:
            entry[spec] = _other_backend(spec, model, target_s, batches)
        if log:
            for key, e in entry.items():
                if isinstance(e, dict) and e.get("available") is False:
                    log(f"  {name} {key}: {e['reason']}")
        res[name] = entry
    return res
