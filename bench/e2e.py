"""End to end: many sensors, offered load stepped up to (and past) saturation.

For each sensor count N (e.g. 1, 64, 1024; one socket per sensor, like separate devices):

1. saturation: `pipeline.saturate` with N sensors — blocks go out as fast as the daemon takes
   them (bounded backlog) → the daemon's sustained windows/s for N sensors;
2. load steps: for each fraction f (e.g. 10 … 150 %), `pipeline.paced` on a fresh daemon at
   f × that rate (and, while the daemon still keeps up at the last one, up to two more
   steps of 1.5× the previous fraction), the sensors taking turns, each at ``f × rate / N`` windows/s (its sample
   rate and ``dt`` are stated per step) → windows/s achieved, receipt-to-decision
   p50/p99/p99.9 and the full histogram (the daemon's `edgert.stats.LatencyHistogram`),
   blocks the daemon dropped (its counters) and blocks lost on the way (sent − received).

The daemon listens with its default input socket, ``sub`` (sensors PUB): past saturation
ZeroMQ drops what exceeds its queues (sender SNDHWM 1000 per socket, the daemon's RCVHWM
100000 per connection) instead of slowing the sensors down, which is what an overloaded
deployment sees. The latency is measured by the daemon from the receipt of a block: time a
block spent queued in ZeroMQ before that is not in it; ``backlog_at_send_end_msgs`` and
``drain_after_send_s`` show how much was queued when sending stopped. The daemon runs on one
core, this process (all sensors) on the other.
"""

from __future__ import annotations

from . import pipeline

SENSORS = (1, 64, 1024)
FRACTIONS = (0.10, 0.25, 0.50, 0.75, 1.00, 1.50)


def load_steps(model, model_arg: str, sensor_counts=SENSORS, fractions=FRACTIONS, step_s: float = 4.0,
               sat_s: float = 6.0, settle: float = 1.0, block: int = 64, stats_interval: float = 0.2,
               backlog_msgs: int = 12000, cpu_daemon: int | None = 0, startup_timeout: float = 120.0,
               socket: str = "sub", sndhwm: int = 1000, max_extra_steps: int = 2, log=None) -> dict:
    """Saturation and load steps per sensor count. Returns {"runs": {N: {...}}, settings}.

    When the daemon still kept up at the last fraction (the saturation run caught it while
    another process had its core), up to `max_extra_steps` more steps at 1.5× the previous
    fraction follow, so the curve reaches saturation. A failing step is recorded as
    ``{"error": ...}`` and the next one runs.
    """
    runs = {}
    fd_limit = pipeline.raise_fd_limit(4 * max(sensor_counts) + 256)
    for n in sensor_counts:
        entry: dict = {"sensors": n}
        runs[str(n)] = entry
        if log:
            log(f"  e2e {n} sensors: saturation ({sat_s:g} s)")
        try:
            sat = pipeline.saturate(model, model_arg, sat_s, settle, n_sensors=n, block=block,
                                    stats_interval=stats_interval, backlog_msgs=backlog_msgs,
                                    cpu_daemon=cpu_daemon, startup_timeout=startup_timeout, socket=socket)
        except Exception as exc:  # noqa: BLE001 - no rate to step: say why, go on
            entry["error"] = f"saturation: {type(exc).__name__}: {exc}"
            if log:
                log(f"    {entry['error']}")
            continue
        entry["saturation"] = _trim(sat)
        rate = sat["windows_per_s"]
        entry["saturation_windows_per_s"] = rate
        if log:
            log(f"    saturation {rate:,.0f} windows/s")
        steps = []
        todo = list(fractions)
        extra = 0
        while todo:
            f = todo.pop(0)
            target = f * rate
            try:
                st = pipeline.paced(model, model_arg, target, step_s, n_sensors=n, block=block,
                                    stats_interval=stats_interval, cpu_daemon=cpu_daemon,
                                    startup_timeout=startup_timeout, socket=socket, sndhwm=sndhwm,
                                    expect_all=False, settle=min(settle, step_s / 4))
                st = _trim(st)
                st["load_fraction"] = f
                drops = st["final"].get("dropped") or 0
                st["dropped_by_daemon"] = drops
                st["drop_share"] = round((drops + st["lost_messages"]) / max(1, st["messages_sent"]), 5)
            except Exception as exc:  # noqa: BLE001
                st = {"load_fraction": f, "target_windows_per_s": round(target, 1),
                      "error": f"{type(exc).__name__}: {exc}"}
            steps.append(st)
            if not todo and extra < max_extra_steps and _unsaturated(st):
                # the measured saturation rate was low (another process had the daemon's core
                # then): step on until the daemon falls behind or loses blocks
                todo.append(round(f * 1.5, 3))
                extra += 1
            if log:
                if "error" in st:
                    log(f"    {f:>5.0%}: ERROR {st['error']}")
                else:
                    log(f"    {f:>5.0%}: offered {st['offered_windows_per_s']:>9,.0f} achieved "
                        f"{_num(st['windows_per_s']):>9} windows/s, p50/p99/p99.9 {_num(st['p50_latency_us'])}/"
                        f"{_num(st['p99_latency_us'])}/{_num(st['p999_latency_us'])} µs, dropped "
                        f"{st['dropped_by_daemon']}, lost {st['lost_messages']} of {st['messages_sent']}")
        entry["steps"] = steps
    return {"socket": socket, "block_samples": block, "step_s": step_s, "saturation_s": sat_s,
            "fractions": list(fractions), "sender_sndhwm": sndhwm, "open_files_limit": fd_limit,
            "max_extra_steps": max_extra_steps, "runs": runs}


def _unsaturated(st: dict) -> bool:
    """The daemon kept up with this step: achieved ≥ 97 % of offered, nothing lost or dropped."""
    if "error" in st or not st.get("windows_per_s") or not st.get("offered_windows_per_s"):
        return False
    return (st["windows_per_s"] >= 0.97 * st["offered_windows_per_s"] and st["lost_messages"] == 0
            and st["dropped_by_daemon"] == 0)


def _num(x) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def _trim(r: dict) -> dict:
    """Drop the bulky parts of a pipeline result that the e2e report does not need."""
    out = dict(r)
    out.pop("daemon_threads_cpu_share", None)
    return out
