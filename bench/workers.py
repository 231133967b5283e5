"""``edgert bench --only workers``: what ``edgert serve --workers N`` costs and gives (edgert/workers.py).

Three measurements; the first two with the single-process daemon (``N = 1``) and with N workers:

- **windows per daemon CPU-second**, paced (one fixed load every configuration keeps up
  with) and saturated: 64 sensors on tcp loopback, each its own connection, real blocks of a
  healthy ITSC recording; every window scored over the CPU time of every daemon process (the
  supervisor and its workers, all threads, /proc/PID/task/*/stat). N-workers / single is the
  overhead of the distribution: the kernel places connections (ZMQ_USE_FD), so nothing per
  message; what costs is N interpreters, N ZeroMQ I/O threads and timers, smaller batches per
  worker at a given load, and the supervisor's event relay.
- **wall-clock windows/s at saturation**: the sender sends as fast as the daemon takes blocks
  (a bounded backlog), no CPU pinning. On a 2-core box the sender needs a core
  too, so 2 workers share the cores with it (and with whatever else runs): the figure says
  what this box gave, the sender's and the other processes' CPU are recorded beside it, and
  the CPU-second figure is the one to scale.

- **placement**: 64 sensors connecting at once, three times, over tcp (one SO_REUSEPORT socket
  per worker) and ipc (one shared socket): how many each worker took.

Then, on paper, 4 Cortex-A53 cores (a Coral Dev Board): the measured windows per CPU-second
of the workers, scaled by a stated per-core slowdown range (an assumption, not measured
here), times 4 cores, with the sensors remote (no local sender). The CPU model and its int8
instructions are recorded with every figure (`sysinfo.cpu_int8`).
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

from . import pipeline as _pipeline
from . import sysinfo
from .pipeline import BenchError, DaemonProc, Session, _consumed

# An A53 core (in-order, 2-wide, ~1.5 GHz, NEON without the int8 dot-product of ARMv8.2) against
# one core of the x86-64 server this runs on: an assumed slowdown range for this workload
# (CPython interpreter + XNNPACK int8), NOT measured here: state it with the estimate.
A53_SLOWDOWN = (6.0, 12.0)
A53_CORES = 4


class _TcpDaemon(DaemonProc):
    """`DaemonProc` listening on a free tcp loopback port (with workers, tcp gives each its
    own SO_REUSEPORT socket: the kernel spreads the sensors evenly; ipc does not)."""

    def __init__(self, *args, extra: tuple = (), **kw):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        tcp = f"tcp://127.0.0.1:{port}"
        super().__init__(*args, extra=tuple(extra) + ("--listen", tcp), **kw)  # the last --listen wins
        self.listen = tcp

    def wait_bound(self, timeout: float) -> float:
        """Wait for the events endpoint (the tcp port shows no file)."""
        deadline = time.perf_counter() + timeout
        while not self.events_path.exists():
            self.check_alive("before binding its sockets")
            if time.perf_counter() > deadline:
                raise BenchError(f"daemon did not bind {self.events} within {timeout:.0f} s")
            time.sleep(0.005)
        return time.perf_counter() - self.t_spawn


class _TcpSession(Session):
    """`Session` with the daemon on tcp loopback (`_TcpDaemon`)."""

    def __enter__(self):
        orig = _pipeline.DaemonProc
        _pipeline.DaemonProc = _TcpDaemon  # Session.__enter__ builds its daemon by this name
        try:
            return super().__enter__()
        finally:
            _pipeline.DaemonProc = orig


def _cpu_s(pids) -> float:
    """CPU seconds (user+system, every thread) of these processes."""
    return sum(sum(sysinfo.proc_threads_cpu(p).values()) for p in pids)


def _daemon_pids(s: Session, n_workers: int, timeout: float = 120.0) -> list:
    """The daemon's processes: itself, and with workers the pids of every serving worker
    (waits until all serve, from the aggregated stats)."""
    if n_workers == 1:
        return [s.d.pid]
    deadline = time.perf_counter() + timeout
    while True:
        st = s.next_stats()
        ws = st.get("workers") or []
        if len(ws) == n_workers and all(w["state"] == "serving" for w in ws):
            return [s.d.pid] + [w["pid"] for w in ws]
        if time.perf_counter() > deadline:
            raise BenchError(f"{n_workers} workers not all serving after {timeout:.0f} s: {ws}")


def _placement(final: dict) -> dict:
    """Sensors per worker (from the final per-sensor rows), e.g. {"0": 30, "1": 34}."""
    out: dict = {}
    for name, row in (final.get("per_sensor") or {}).items():
        if name.startswith("bench-") and "worker" in row:
            k = str(row["worker"])
            out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items()))


def run_case(model, model_arg: str, n_workers: int, *, rate_msgs: float | None, seconds: float,
             n_sensors: int = 64, block: int = 64, stats_interval: float = 0.5, queue_mb: float = 1.0,
             backlog_msgs: int = 20000, sndhwm: int = 5000, startup_timeout: float = 180.0, log=None) -> dict:
    """One daemon (``--workers n_workers``; 1 = the single process), loaded for `seconds`.

    Args:
      rate_msgs: messages per second, paced (round robin over the sensors); None: as fast as
        the daemon takes them (saturation), with at most `backlog_msgs` sent and not yet
        consumed (per the daemon's stats; the sensors' queues, `sndhwm`, never fill).
    Returns:
      windows, daemon CPU seconds, windows per daemon CPU-second, wall-clock windows/s, the
      sender's CPU share, sensors per worker, lost messages.
    """
    extra = (("--workers", str(n_workers)) if n_workers > 1 else ()) + ("--max-queue-mb", str(queue_mb))
    meter = sysinfo.LoadMeter()
    with _TcpSession(model, model_arg, tag=f"workers{n_workers}", stats_interval=stats_interval, cpu_daemon=None,
                 startup_timeout=startup_timeout, block=block, socket="pull", extra=extra, log=log) as s:
        pids = _daemon_pids(s, n_workers)
        ld = s.load(n_sensors, sndhwm=sndhwm)
        base_windows, base = s.evs.last.get("windows", 0), s.base
        perf = time.perf_counter
        total, i = 0, 0
        cpu0, ru0, t0 = [_cpu_s([p]) for p in pids], os.times(), perf()
        t_end = t0 + seconds
        while True:
            now = perf()
            if now >= t_end:
                break
            if rate_msgs is not None:
                due = int((now - t0) * rate_msgs)
                if total >= due:
                    s.evs.drain(1)
                    continue
                burst = min(due - total, 256)
            elif total - (_consumed(s.evs.last) - base) >= backlog_msgs:
                s.evs.drain(20)  # as fast as the daemon takes them, at most backlog_msgs outstanding
                continue
            else:
                burst = n_sensors
            for _ in range(burst):
                ld.send(i)
                i = i + 1 if i + 1 < n_sensors else 0
            total += burst
            s.evs.drain(0)
        t_stop = perf()
        ru1 = os.times()
        s.wait_consumed(total, 60.0, "workers")
        cpu1 = [_cpu_s([p]) for p in pids]
        t_done = perf()
        final = s.stop()
    per_proc = [round(b - a, 3) for a, b in zip(cpu0, cpu1)]
    windows = final["windows"] - base_windows
    cpu = sum(per_proc)
    # wall clock: every window of the load over the time from the first send until the stats
    # showed the last block consumed (late by at most one stats interval: a lower bound)
    wall_rate = round(windows / (t_done - t0), 1)
    sender = (ru1.user - ru0.user) + (ru1.system - ru0.system)
    return {
        "workers": n_workers,
        "paced_msgs_per_s": rate_msgs,
        "sensors": n_sensors, "block_samples": block,
        "seconds_loaded": round(t_stop - t0, 3),
        "seconds_to_drain": round(t_done - t_stop, 3),
        "messages_sent": total,
        "windows": windows,
        "lost_messages": total - (_consumed(final) - base),
        "daemon_cpu_s": round(cpu, 3),
        "cpu_s_by_process": ({"supervisor": per_proc[0], "workers": per_proc[1:]} if n_workers > 1
                             else {"daemon": per_proc[0]}),
        "windows_per_daemon_cpu_s": round(windows / cpu, 1) if cpu > 0 else None,
        "daemon_cores_used": round(cpu / (t_done - t0), 3),
        "wall_windows_per_s": wall_rate,  # sent, then drained: includes the backlog's drain
        "sender_cpu_share": round(sender / (t_stop - t0), 3),
        "sensors_per_worker": _placement(final) if n_workers > 1 else {"0": n_sensors},
        "worker_restarts": final.get("worker_restarts", 0),
        "p99_latency_us": final.get("p99_latency_us"),
        # windows per backend invoke: a worker sees 1/N of the load, so at a paced rate its
        # batches fill less before the max_delay_us deadline sends them
        "mean_batch": round(final["windows"] / final["batches"], 2) if final.get("batches") else None,
        "machine_load": {k: v for k, v in meter.stop().items() if k != "per_cpu"},
        "loadavg_end": sysinfo.loadavg(),
    }


def compare(model, model_arg: str, n_workers: int = 2, *, paced_msgs: float = 6000.0, paced_s: float = 8.0,
            saturate_s: float = 10.0, rounds: int = 2, n_sensors: int = 64, block: int = 64,
            stats_interval: float = 0.5, log=None) -> dict:
    """The workers section: paced CPU efficiency and saturated wall-clock throughput, single
    process vs `n_workers`, interleaved over `rounds`; plus the Cortex-A53 estimate."""
    def say(msg):
        if log:
            log(msg)

    machine = {"cpu_model": sysinfo.cpu_model(), "cpu_int8": sysinfo.cpu_int8(), "nproc": os.cpu_count()}
    try:
        aff = os.sched_getaffinity(0)
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))  # the daemons need every core: no pinning
    except (AttributeError, OSError):
        aff = None
    paced, saturated = [], []
    try:
        for r in range(rounds):
            for n in (1, n_workers):
                say(f"  round {r + 1}: {n} worker(s), paced {paced_msgs:g} msgs/s for {paced_s:g} s")
                paced.append(run_case(model, model_arg, n, rate_msgs=paced_msgs, seconds=paced_s,
                                      n_sensors=n_sensors, block=block, stats_interval=stats_interval, log=log))
                say(f"    {paced[-1]['windows_per_daemon_cpu_s']:,.0f} windows per daemon CPU-s")
            for n in (1, n_workers):
                say(f"  round {r + 1}: {n} worker(s), saturating for {saturate_s:g} s")
                saturated.append(run_case(model, model_arg, n, rate_msgs=None, seconds=saturate_s,
                                          n_sensors=n_sensors, block=block, stats_interval=stats_interval, log=log))
                say(f"    {saturated[-1]['wall_windows_per_s'] or 0:,.0f} windows/s wall clock, sender "
                    f"{saturated[-1]['sender_cpu_share']:.2f} of a core")
    finally:
        if aff is not None:
            os.sched_setaffinity(0, aff)

    def med(rows, n, key):
        vals = [x[key] for x in rows if x["workers"] == n and x[key] is not None]
        return round(statistics.median(vals), 1) if vals else None

    def ratio(a, b):
        return round(a / b, 3) if a and b else None

    n = str(n_workers)
    cpu = {"paced": {"1": med(paced, 1, "windows_per_daemon_cpu_s"), n: med(paced, n_workers, "windows_per_daemon_cpu_s")},
           "saturated": {"1": med(saturated, 1, "windows_per_daemon_cpu_s"),
                         n: med(saturated, n_workers, "windows_per_daemon_cpu_s")}}
    wall = {"1": med(saturated, 1, "wall_windows_per_s"), n: med(saturated, n_workers, "wall_windows_per_s")}
    res = {
        "machine": machine,
        "n_workers": n_workers,
        "paced": paced,
        "saturated": saturated,
        "summary": {  # medians over the rounds
            "windows_per_daemon_cpu_s": cpu,
            "cpu_efficiency_workers_over_single": {k: ratio(v[n], v["1"]) for k, v in cpu.items()},
            "wall_windows_per_s_saturated": wall,
            "wall_speedup": ratio(wall[n], wall["1"]),
            "sender_cpu_share_saturated": med(saturated, n_workers, "sender_cpu_share"),
            "other_processes_cores": med([{**x, "o": x["machine_load"].get("other_cores")} for x in paced + saturated
                                          if x["workers"] == n_workers], n_workers, "o"),
        },
    }
    say("  placement: 64 sensors connecting at once, 3 times, over tcp (SO_REUSEPORT) and ipc (one socket)")
    res["placement"] = placement(n_workers, n_sensors, log=log)
    res["a53_estimate"] = a53_estimate(cpu["saturated"][n], ratio(cpu["saturated"][n], cpu["saturated"]["1"]))
    return res


def a53_estimate(windows_per_cpu_s: float | None, efficiency: float | None) -> dict | None:
    """On paper: 4 Cortex-A53 cores, one worker each, the sensors remote (no local sender).

    windows/s ≈ 4 × (windows per daemon CPU-second of the workers here) / slowdown, for the
    assumed per-core slowdown range `A53_SLOWDOWN`; the supervisor and the I/O threads are
    inside the measured CPU-seconds already. An estimate, not a measurement."""
    if not windows_per_cpu_s:
        return None
    lo, hi = A53_SLOWDOWN
    return {
        "cores": A53_CORES,
        "assumed_per_core_slowdown_vs_this_cpu": [lo, hi],
        "windows_per_s": [round(A53_CORES * windows_per_cpu_s / hi), round(A53_CORES * windows_per_cpu_s / lo)],
        "single_process_windows_per_s": [round(windows_per_cpu_s / (efficiency or 1) / hi),
                                         round(windows_per_cpu_s / (efficiency or 1) / lo)],
        "basis": (f"{A53_CORES} x {windows_per_cpu_s:,.0f} windows per daemon CPU-second measured here with workers, "
                  f"divided by an ASSUMED per-core slowdown of {lo:g}-{hi:g}x (in-order A53 at ~1.5 GHz, no int8 "
                  "dot-product instructions, against this CPU); not measured on a board"),
    }


def render_lines(r: dict) -> list:
    """The section's table lines for `edgert bench`."""
    s = r["summary"]
    n = str(r["n_workers"])
    c = r["machine"]["cpu_int8"]
    lines = [(f"workers (edgert serve --workers {n} vs one process; {r['machine']['cpu_model']}, int8: "
              f"{c['kind']}, VNNI {'yes' if c['vnni'] else 'no'}; medians of {len(r['paced']) // 2} rounds)")]
    for regime, v in s["windows_per_daemon_cpu_s"].items():
        lines.append(f"  windows per daemon CPU-s, {regime:<9} 1: {v['1'] or 0:,.0f}   {n}: {v[n] or 0:,.0f}   "
                     f"({n} workers / 1: {s['cpu_efficiency_workers_over_single'][regime]})")
    wall = s["wall_windows_per_s_saturated"]
    lines.append(f"  saturated windows/s, wall clock   1: {wall['1'] or 0:,.0f}   {n}: {wall[n] or 0:,.0f}   "
                 f"(x{s['wall_speedup']}; sender {s['sender_cpu_share_saturated']} of a core, other processes "
                 f"{s['other_processes_cores']} cores)")
    for transport, v in (r.get("placement") or {}).items():
        lines.append(f"  sensors per worker, {transport} ({v['mechanism']}): {v['splits']}")
    a = r.get("a53_estimate")
    if a:
        lines.append(f"  4 x Cortex-A53 (estimate, not measured): {a['windows_per_s'][0]:,}-{a['windows_per_s'][1]:,} "
                     f"windows/s (assumed per-core slowdown {a['assumed_per_core_slowdown_vs_this_cpu']})")
    return lines


def _stats_from(sub, proc, log_path, timeout: float) -> dict:
    """The next ``event/stats/daemon`` payload on `sub` (BenchError if the daemon exited or
    said nothing for `timeout` s)."""
    from edgert import events as ev

    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        if sub.poll(200):
            return ev.decode(sub.recv_multipart())[2]
        if proc.poll() is not None:
            raise BenchError(f"daemon exited: {log_path.read_text()[-800:]}")
    raise BenchError(f"no stats from the daemon within {timeout:.0f} s")


def _one_placement(ctx, listen, sub, proc, log_path, tag: str, n_sensors: int, n_workers: int) -> list:
    """Connect `n_sensors` fresh sensors at once, one block each; the sensors each worker took."""
    from edgert.bus import SensorPublisher

    pubs = [SensorPublisher(listen, f"{tag}-{i}", kind="pub", ctx=ctx) for i in range(n_sensors)]
    try:
        for p in pubs:
            if not p.wait_subscribed(20):
                raise BenchError(f"sensor {p.sensor}: no worker took its connection")
        for p in pubs:
            p.send(np.zeros((64, 3), np.float32), time.time_ns(), 1_000_000)
        want = {p.sensor for p in pubs}
        deadline = time.perf_counter() + 20
        while True:
            st = _stats_from(sub, proc, log_path, 10)
            rows = {k: v for k, v in (st.get("per_sensor") or {}).items() if k in want}
            if len(rows) == n_sensors and all("worker" in v for v in rows.values()):
                break
            if time.perf_counter() > deadline:
                raise BenchError(f"only {len(rows)} of {n_sensors} sensors placed")
    finally:
        for p in pubs:
            p.sock.close(linger=0)
    split = [0] * n_workers
    for v in rows.values():
        split[v["worker"]] += 1
    return split


def placement(n_workers: int = 2, n_sensors: int = 64, trials: int = 3, transports=("tcp", "ipc"),
              startup_timeout: float = 180.0, log=None) -> dict:
    """How the kernel spreads sensor connections over the workers: for each transport, one
    ``edgert serve --workers N``, then `trials` times `n_sensors` fresh sensors (XPUB, each its
    own connection, all connecting at once) and the sensors each worker took.

    tcp: one SO_REUSEPORT socket per worker (a hash of the addresses); ipc: one shared socket
    (whichever worker's I/O thread accepts first)."""
    import shutil
    import signal
    import socket
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import zmq

    out = {}
    for transport in transports:
        tmp = Path(tempfile.mkdtemp(prefix="edgert-bench-placement-"))
        if transport == "tcp":
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                listen = f"tcp://127.0.0.1:{s.getsockname()[1]}"
        else:
            listen = f"ipc://{tmp}/s"
        events = f"ipc://{tmp}/e"
        conf = tmp / "edgert.toml"  # every sensor in the stats events: stats_top_n has no flag
        conf.write_text(f'listen = "{listen}"\nevents = "{events}"\nworkers = {n_workers}\n'
                        f'stats_interval_s = 0.2\nstats_top_n = {trials * n_sensors + 8}\n')
        log_path = tmp / "stderr.log"
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"event/stats/daemon")
        sub.connect(events)
        splits = []
        with open(log_path, "w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "edgert", "serve", "--config", str(conf)],
                                    stdout=subprocess.DEVNULL, stderr=err)
            try:
                end = time.perf_counter() + startup_timeout
                while not all(w["state"] == "serving"
                              for w in _stats_from(sub, proc, log_path, startup_timeout).get("workers", [])):
                    if time.perf_counter() > end:
                        raise BenchError(f"workers not serving within {startup_timeout:.0f} s")
                for t in range(trials):
                    splits.append(_one_placement(ctx, listen, sub, proc, log_path, f"t{t}", n_sensors, n_workers))
                    if log:
                        log(f"  {transport}: {n_sensors} sensors -> {splits[-1]}")
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                sub.close(linger=0)
                ctx.term()
        shutil.rmtree(tmp, ignore_errors=True)
        out[transport] = {"mechanism": "SO_REUSEPORT socket per worker" if transport == "tcp" else "one shared socket",
                          "splits": splits,
                          "largest_share_max": round(max(max(s) for s in splits) / n_sensors, 3) if splits else None}
    return out
