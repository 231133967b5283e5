"""Microbenchmarks: numba kernels vs their numpy references, and the bare backend invoke rate.

Timing: a warm-up call, then the number of calls that fills about `target_s` is calibrated,
then `repeats` timed loops of that many calls; the figure is the median time per call (the
minimum is kept beside it), in wall time and in this process's CPU time (`time.process_time`):
the CPU time is what the CI gate compares, since another process taking the core stretches
the wall time of a loop but not its CPU time. Inputs are real motor current (shipped ITSC data), quantized
with the model's normalization, in the shapes the daemon uses.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

KERNELS = ("ring_append", "count_nonfinite", "normalize_quantize", "recon_error", "window_stats",
           "ingest")
RING_CAPACITY = 1024  # the daemon's default ring_capacity
RECORDING = "SC_HLT_005"


def _loop(fn, args, n: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of `n` calls of ``fn(*args)``."""
    perf, cpu = time.perf_counter, time.process_time
    c0, t0 = cpu(), perf()
    for _ in range(n):
        fn(*args)
    t1, c1 = perf(), cpu()
    return t1 - t0, c1 - c0


def _calibrate(fn, args, target_s: float) -> int:
    """Calls per timed loop so that one loop takes about `target_s` (after a warm-up)."""
    fn(*args)  # warm-up (numba: compile or load from cache)
    fn(*args)
    n = 1
    while True:
        t = _loop(fn, args, n)[0]
        if t >= target_s / 8 or n >= 1 << 22:
            break
        n *= 4
    return max(1, int(n * target_s / max(t, 1e-9)))


def time_calls(fn, args, repeats: int, target_s: float) -> dict:
    """Median and min seconds per ``fn(*args)`` call over `repeats` loops of ~`target_s` each:
    wall (``median_s``, ``min_s``) and process CPU time (``cpu_median_s``, ``cpu_min_s``)."""
    return time_pair([(fn, args)], repeats, target_s)[0]


def time_pair(fns, repeats: int, target_s: float) -> list:
    """Like `time_calls` for several (fn, args), their loops interleaved so that a burst of load
    from other processes hits all of them alike (their ratio stays meaningful)."""
    ns = [_calibrate(fn, args, target_s) for fn, args in fns]
    wall = [[] for _ in fns]
    cpu = [[] for _ in fns]
    for _ in range(repeats):
        for j, (fn, args) in enumerate(fns):
            w, c = _loop(fn, args, ns[j])
            wall[j].append(w / ns[j])
            cpu[j].append(c / ns[j])
    return [{"median_s": statistics.median(w), "min_s": min(w),
             "cpu_median_s": statistics.median(c), "cpu_min_s": min(c), "calls": n, "repeats": repeats}
            for w, c, n in zip(wall, cpu, ns)]


def signal_data(C: int, n: int) -> np.ndarray:
    """[n, C] float32 motor current: the shipped recording's 3 phases, more channels as time-shifted
    and scaled copies, tiled to length n."""
    from edgert.data import itsc_recording

    rec = itsc_recording(RECORDING).astype(np.float64)
    cols = []
    for c in range(C):
        base = rec[:, c % 3]
        if c >= 3:
            base = np.roll(base, 7 * c) * (1.0 + 0.1 * c)
        cols.append(base)
    x = np.stack(cols, axis=1)
    reps = -(-n // x.shape[0])
    return np.ascontiguousarray(np.tile(x, (reps, 1))[:n], dtype=np.float32)


class KernelCase:
    """Inputs for every kernel on `n_windows` windows of W×C (hop H), as the daemon calls them."""

    def __init__(self, W: int, C: int, H: int, mean, std, in_q, out_q, n_windows: int = 32,
                 cap: int = RING_CAPACITY, seed: int = 0):
        from edgert.kernels import ref

        self.W, self.C, self.H, self.k = W, C, H, n_windows
        cap = max(cap, 2 * W, 1 << (W + (n_windows - 1) * H).bit_length())  # all k windows in the ring
        self.cap = cap
        x = signal_data(C, 4 * cap)
        self.ring = np.zeros((2 * cap, C), dtype=np.float32)
        pos = 0
        for i in range(0, 3 * cap, cap // 2):
            pos = ref.ring_append(self.ring, cap, pos, x[i:i + cap // 2])
        self.pos = pos
        # the block that completes the 32 windows: 32*H new samples, read-only like a message view
        nb = min(n_windows * H, cap)
        self.block = x[3 * cap:3 * cap + nb].copy()
        self.block.flags.writeable = False
        first = pos - W - (n_windows - 1) * H
        self.starts = (first + np.arange(n_windows, dtype=np.int64) * H).astype(np.int64)
        self.mean = np.ascontiguousarray(mean, dtype=np.float64)
        std = np.asarray(std, dtype=np.float64)
        self.inv_std = np.where(std > 0, 1.0 / np.where(std > 0, std, 1.0), 0.0)
        self.in_scale, self.in_zp = float(in_q[0]), int(in_q[1])
        self.out_scale, self.out_zp = float(out_q[0]), int(out_q[1])
        # quantized input windows, and an output = input + a little reconstruction noise
        self.inp = np.zeros((n_windows, 1, W, C), dtype=np.int8)
        ref.normalize_quantize(self.ring, cap, self.starts, W, self.mean, self.inv_std,
                               self.in_scale, self.in_zp, self.inp, 0)
        rng = np.random.default_rng(seed)
        noisy = self.inp.astype(np.int32) + rng.integers(-6, 7, size=self.inp.shape)
        self.outq = np.clip(noisy, -128, 127).astype(np.int8)

    def calls(self, impl) -> dict:
        """{kernel: (fn, args, outputs)} for one implementation module; outputs are the arrays
        a call writes (fresh per implementation, so results can be compared)."""
        W, C, k, cap = self.W, self.C, self.k, self.cap
        ring = self.ring.copy()
        out = np.zeros((k, 1, W, C), dtype=np.int8)
        ch_err = np.zeros((k, C), dtype=np.float32)
        scores = np.zeros(k, dtype=np.float32)
        stats = np.zeros((k, C, 6), dtype=np.float32)
        ring2 = self.ring.copy()
        ring3 = self.ring.copy()
        # ingest: what the daemon calls per 64-sample message (append + cut the windows it
        # completes: 64 // H of them), idempotent for fixed (pos, next_start).
        blk = self.block[:64]
        nxt = self.pos - W + self.H
        out3 = np.zeros((k, 1, W, C), dtype=np.int8)
        stats3 = np.zeros((k, C, 6), dtype=np.float32)
        t3 = np.zeros(k, dtype=np.int64)
        return {
            "ingest": (impl.ingest, (ring3, cap, self.pos, nxt, blk, W, self.H, self.mean, self.inv_std,
                                     self.in_scale, self.in_zp, out3, stats3, t3, 0, k, 10**18, 1000),
                       (ring3, out3, stats3, t3)),
            "ring_append": (impl.ring_append, (ring2, cap, self.pos, self.block), (ring2,)),
            "count_nonfinite": (impl.count_nonfinite, (self.block,), ()),
            "normalize_quantize": (impl.normalize_quantize,
                                   (ring, cap, self.starts, W, self.mean, self.inv_std, self.in_scale,
                                    self.in_zp, out, 0), (out,)),
            "recon_error": (impl.recon_error,
                            (self.inp, self.in_scale, self.in_zp, self.outq, self.out_scale, self.out_zp,
                             k, ch_err, scores), (ch_err, scores)),
            "window_stats": (impl.window_stats, (ring, cap, self.starts, W, stats), (stats,)),
        }


def bench_kernels(shapes: dict, repeats: int, target_s: float, log=None) -> dict:
    """numba (`edgert.kernels._jit`) vs numpy (`edgert.kernels.ref`) per kernel and shape.

    Args:
      shapes: {label: KernelCase}.
    Returns:
      {label: {kernel: {numba_us, numpy_us, speedup, identical, ...}}}
    """
    from edgert.kernels import ref

    try:
        from edgert.kernels import _jit
    except Exception as exc:  # noqa: BLE001 - numba missing or broken: say so
        raise RuntimeError(f"numba kernels unavailable ({type(exc).__name__}: {exc})") from None
    res = {}
    for label, case in shapes.items():
        jit_calls, ref_calls = case.calls(_jit), case.calls(ref)
        rows = {}
        for name in KERNELS:
            fj, aj, oj = jit_calls[name]
            fr, ar, orf = ref_calls[name]
            rj, rr = fj(*aj), fr(*ar)
            identical = bool(rj == rr and all(np.array_equal(a, b, equal_nan=True) for a, b in zip(oj, orf)))
            tj, tr = time_pair([(fj, aj), (fr, ar)], repeats, target_s)
            rows[name] = {
                # CPU time per call (what the gate compares); wall time beside it
                "numba_us": round(tj["cpu_median_s"] * 1e6, 3),
                "numpy_us": round(tr["cpu_median_s"] * 1e6, 3),
                "numba_wall_us": round(tj["median_s"] * 1e6, 3),
                "numpy_wall_us": round(tr["median_s"] * 1e6, 3),
                "numba_min_us": round(tj["min_s"] * 1e6, 3),
                "numpy_min_us": round(tr["min_s"] * 1e6, 3),
                "speedup": round(_ratio(tr["cpu_median_s"], tj["cpu_median_s"]), 2),
                "speedup_wall": round(tr["median_s"] / tj["median_s"], 2),
                "identical": identical,
                "calls_per_repeat": [tj["calls"], tr["calls"]],
            }
            if log:
                log(f"  kernel {label} {name}: numba {rows[name]['numba_us']:.2f} µs, numpy "
                    f"{rows[name]['numpy_us']:.2f} µs, {rows[name]['speedup']:.1f}x")
        res[label] = {"W": case.W, "C": case.C, "H": case.H, "windows": case.k,
                      "block_samples": int(case.block.shape[0]), "kernels": rows}
    return res


def _ratio(a: float, b: float) -> float:
    """a / b, or nan when b is 0 (a loop too short for the CPU clock)."""
    return a / b if b > 0 else float("nan")


def sweep_cases(windows, channels, in_q, out_q, n_windows: int = 32) -> dict:
    """{"WxC": KernelCase} for every window size × channel count (hop W/4, like the models'),
    normalized with the data's own per-channel mean and std."""
    cases = {}
    for C in channels:
        data = signal_data(C, 4096).astype(np.float64)
        for W in windows:
            cases[f"{W}x{C}"] = KernelCase(W, C, max(1, W // 4), data.mean(0), data.std(0), in_q, out_q,
                                           n_windows)
    return cases


def fill_input(backend, model) -> None:
    """Quantize real windows into the backend's input buffer (all rows)."""
    buf = backend.input_buffer()
    B = buf.shape[0]
    v = model.variants["dynamic"]
    case = KernelCase(model.window, model.n_channels, model.hop, model.mean, model.std,
                      (v.input.scale, v.input.zero_point), (v.output.scale, v.output.zero_point),
                      n_windows=min(B, 32))
    reps = -(-B // case.k)
    rows = np.concatenate([case.inp] * reps)[:B]
    buf[:] = rows


def bench_invoke(model, repeats: int, target_s: float, max_batch: int = 32, log=None) -> dict:
    """Bare ``backend.run(k)`` rate for k = max_batch and k = 1 (LiteRT CPU backend)."""
    from edgert import backends

    t0 = time.perf_counter()
    backend = backends.create("cpu", model, max_batch=max_batch)
    create_s = time.perf_counter() - t0
    try:
        fill_input(backend, model)
        run = backend.run
        out = {"backend": backend.name, "max_batch": max_batch, "create_s": round(create_s, 3)}
        for k in (max_batch, 1):
            for _ in range(50):
                run(k)
            t = time_calls(run, (k,), repeats, target_s)
            us = t["median_s"] * 1e6
            cpu_us = t["cpu_median_s"] * 1e6
            out[f"batch{k}"] = {
                "us_per_invoke": round(us, 2),
                "min_us_per_invoke": round(t["min_s"] * 1e6, 2),
                "invokes_per_s": round(1e6 / us, 1),
                "windows_per_s": round(k * 1e6 / us, 1),
                "us_per_window": round(us / k, 3),
                # this process's CPU time (LiteRT runs one thread: the calling one)
                "cpu_us_per_invoke": round(cpu_us, 2),
                "windows_per_cpu_s": round(k * 1e6 / cpu_us, 1) if cpu_us > 0 else None,
            }
            if log:
                log(f"  invoke batch {k}: {us:.2f} µs ({cpu_us:.2f} µs CPU), {k * 1e6 / us:,.0f} windows/s")
        out["windows_per_s"] = out[f"batch{max_batch}"]["windows_per_s"]
        out["windows_per_cpu_s"] = out[f"batch{max_batch}"]["windows_per_cpu_s"]
        return out
    finally:
        backend.close()
