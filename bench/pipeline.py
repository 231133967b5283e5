"""End-to-end figures with the real daemon (`python -m edgert serve`) over ZeroMQ ipc.

The daemon runs as a subprocess pinned to CPU 0 with a PULL input socket; this process is
the sensor side (PUSH, `edgert.bus.SensorPublisher`, one socket per sensor id) pinned to
CPU 1, and reads the daemon's ``stats`` events.

* `saturate`: blocks go out as fast as the daemon takes them (flow control keeps a bounded
  backlog of unconsumed messages, so the daemon never waits for input and its ZeroMQ I/O
  thread never buffers hundreds of MB); the daemon's own ``windows`` / ``uptime_s`` counters
  over the busy period give the sustained rate.
* `paced`: a fresh daemon, blocks paced at a fixed window rate (``time.sleep`` to each send's
  due time, sends that fell behind go out back to back; ``spin=True`` busy-waits instead, which
  measurably slows the daemon on the other core); p50/p99 latency (receipt → decision), RSS and counts come from the daemon's final
  JSON line printed at SIGTERM.
* Both measure start-up: spawn → first decision, seen as the first ``anomaly`` event of a
  probe sensor fed a deliberately anomalous signal (a full-scale alternating square wave) as
  soon as the daemon's input socket exists.

The process under test need not be edgert's daemon: ``prefix`` (the argv before ``--listen``)
runs any service that takes the same options and keeps the same contract (stats and anomaly
events on ``--events``, a final JSON stats line at SIGTERM) — `naive_service.py` does, so the
plain Python service is measured by this very harness, fed by this very sender.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

from edgert import events as ev
from edgert.bus import SensorPublisher

from . import sysinfo

DT_NS = 1_000_000  # 1 kHz sensors
PROBE = "probe-0"
PROBE_EVERY_S = 0.02


class BenchError(RuntimeError):
    """The daemon or the bus misbehaved; the message says precisely how."""


# -- data -------------------------------------------------------------------------------
def seamless_period(rec: np.ndarray, lo: int = 500, match: int = 8) -> int:
    """A length L such that rec[:L] tiled is (nearly) continuous: rec[L:L+match] ≈ rec[:match]."""
    n = rec.shape[0]
    best, best_d = n, np.inf
    for L in range(lo, n - match):
        d = float(np.abs(rec[L:L + match] - rec[:match]).max())
        if d < best_d:
            best, best_d = L, d
    return best


def sensor_blocks(block: int, recording: str = "SC_HLT_005") -> list:
    """Contiguous [block, C] float32 blocks of a healthy recording tiled without seams, as a cycle."""
    from edgert.data import itsc_recording

    rec = itsc_recording(recording)
    L = seamless_period(rec)
    base = rec[:L]
    data = np.ascontiguousarray(np.tile(base, (block, 1)), dtype=np.float32)  # block*L samples
    return [data[i * block:(i + 1) * block] for i in range(L)]


def stream_blocks(x: np.ndarray, block: int) -> list:
    """Contiguous float32 [block, C] blocks of `x` in order (a last partial block is left out)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return [x[i:i + block] for i in range(0, len(x) - block + 1, block)]


def probe_block(model, block: int) -> np.ndarray:
    """A block whose windows the model cannot reconstruct: ±(full scale) alternating every sample."""
    v = model.variants["dynamic"].input
    amp = 200.0 * v.scale * np.asarray(model.std, dtype=np.float64)  # beyond the int8 range
    sign = np.where(np.arange(block) % 2 == 0, 1.0, -1.0)[:, None]
    return np.ascontiguousarray(np.asarray(model.mean)[None, :] + sign * amp[None, :], dtype=np.float32)


def windows_for(samples: int, W: int, H: int) -> int:
    return 0 if samples < W else (samples - W) // H + 1


# -- the daemon subprocess --------------------------------------------------------------
class DaemonProc:
    """``python -m edgert serve`` on fresh ipc endpoints, pinned to `cpu`."""

    def __init__(self, model: str, stats_interval: float, cpu: int | None, tag: str,
                 extra: tuple = (), socket: str = "pull", env: dict | None = None,
                 prefix: tuple | None = None):
        self.tmp = Path(tempfile.mkdtemp(prefix=f"edgert-bench-{tag}-"))
        self.listen_path = self.tmp / "s"
        self.events_path = self.tmp / "e"
        self.listen = f"ipc://{self.listen_path}"
        self.events = f"ipc://{self.events_path}"
        self.cmd = [*(prefix or (sys.executable, "-m", "edgert", "serve")), "--listen", self.listen, "--events",
                    self.events, "--socket", socket, "--stats-interval", str(stats_interval),
                    "--model", str(model), *extra]
        self.stderr_path = self.tmp / "stderr.log"
        self._stderr = open(self.stderr_path, "w+b")
        preexec = None
        if cpu is not None:
            def preexec():
                os.sched_setaffinity(0, {cpu})
        self.cpu = cpu
        self.t_spawn = time.perf_counter()
        self.socket = socket
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=self._stderr,
                                     preexec_fn=preexec, text=True,
                                     env=None if env is None else {**os.environ, **env})
        self.pid = self.proc.pid
        self.final = None

    def stderr_tail(self, n: int = 15) -> str:
        try:
            lines = self.stderr_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def check_alive(self, what: str) -> None:
        rc = self.proc.poll()
        if rc is not None:
            out = self.proc.stdout.read() if self.proc.stdout else ""
            raise BenchError(f"daemon exited with code {rc} {what}; stdout: {out.strip()[-500:]!r}; "
                             f"stderr tail:\n{self.stderr_tail()}")

    def wait_bound(self, timeout: float) -> float:
        """Wait until both ipc endpoints exist; seconds since spawn."""
        deadline = time.perf_counter() + timeout
        while not (self.listen_path.exists() and self.events_path.exists()):
            self.check_alive("before binding its sockets")
            if time.perf_counter() > deadline:
                raise BenchError(f"daemon did not bind {self.listen} / {self.events} within {timeout:.0f} s; "
                                 f"stderr tail:\n{self.stderr_tail()}")
            time.sleep(0.0005)
        return time.perf_counter() - self.t_spawn

    def stop(self, timeout: float = 20.0) -> dict:
        """SIGTERM, wait, and parse the final JSON stats line."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        t0 = time.perf_counter()
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
            raise BenchError(f"daemon did not exit within {timeout:.0f} s of SIGTERM (killed); "
                             f"stderr tail:\n{self.stderr_tail()}")
        stop_s = time.perf_counter() - t0
        self._stderr.close()
        final = None
        for line in reversed(out.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    d = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if d.get("final"):
                    final = d
                    break
        if final is None:
            raise BenchError(f"daemon exited with code {self.proc.returncode} after SIGTERM without a "
                             f"final stats line; stdout: {out.strip()[-500:]!r}; stderr tail:\n{self.stderr_tail()}")
        final["_stop_s"] = round(stop_s, 3)
        self.final = final
        return final

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self._stderr.closed:
            self._stderr.close()

    def cleanup(self) -> None:
        self.kill()
        for p in (self.listen_path, self.events_path, self.stderr_path):
            try:
                p.unlink()
            except OSError:
                pass
        try:
            self.tmp.rmdir()
        except OSError:
            pass


class Events:
    """SUB on the daemon's events: keeps stats snapshots (with receipt time) and probe anomalies."""

    def __init__(self, ctx: zmq.Context, endpoint: str, scores: bool = False):
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, 100000)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 2)
        topics = ["event/stats/", "event/lifecycle/", f"event/anomaly/{PROBE}"]
        if scores:  # every window's score (a daemon run with --publish-scores)
            topics.append("event/scores/")
        for prefix in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        self.scores: list = []  # (sensor, payload)
        self.sock.connect(endpoint)
        self.stats: list = []  # (bench perf_counter, payload)
        self.probe_anomalies = 0
        self.first_probe_anomaly = None  # (perf_counter, payload)
        self.lifecycle: list = []

    def drain(self, timeout_ms: int = 0) -> int:
        """Handle every event waiting (wait up to timeout_ms for the first). Returns how many."""
        n = 0
        sock = self.sock
        if timeout_ms and not sock.poll(timeout_ms):
            return 0
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return n
            t = time.perf_counter()
            kind, sensor, payload = ev.decode(frames)
            n += 1
            if kind == "stats":
                self.stats.append((t, payload))
            elif kind == "anomaly" and sensor == PROBE:
                self.probe_anomalies += 1
                if self.first_probe_anomaly is None:
                    self.first_probe_anomaly = (t, payload)
            elif kind == "lifecycle":
                self.lifecycle.append((t, payload))
            elif kind == "scores":
                self.scores.append((sensor, payload))

    @property
    def last(self) -> dict | None:
        return self.stats[-1][1] if self.stats else None

    def close(self) -> None:
        self.sock.close(linger=0)


def startup(d: DaemonProc, ctx: zmq.Context, model, block: int, timeout: float,
            scores: bool = False) -> tuple:
    """Spawn → first decision. Returns (Events, probe publisher, figures)."""
    bound_s = d.wait_bound(timeout)
    evs = Events(ctx, d.events, scores=scores)
    probe = _publisher(ctx, d, PROBE, sndhwm=1000, timeout=timeout)
    pb = probe_block(model, block)
    t0 = time.time_ns()
    deadline = time.perf_counter() + timeout
    sent = 0
    method = None
    next_send = 0.0
    while True:
        if time.perf_counter() >= next_send:
            # one block, then another every PROBE_EVERY_S until a decision shows up: few probe
            # windows end up in the daemon's latency histogram
            try:
                probe.send(pb, t0 + sent * block * DT_NS, DT_NS)
            except zmq.Again:
                raise _send_blocked(d, "start-up probe") from None
            sent += 1
            next_send = time.perf_counter() + PROBE_EVERY_S
        evs.drain(1)
        if evs.first_probe_anomaly is not None:
            method = "probe anomaly event"
            t_dec, first = evs.first_probe_anomaly
            break
        st = evs.last
        if st is not None and st.get("windows", 0) > 0:
            method = "first stats event with windows > 0 (resolution = stats interval; the probe scored no anomaly)"
            t_dec, first = evs.stats[-1][0], {}
            break
        d.check_alive("during start-up")
        if time.perf_counter() > deadline:
            raise BenchError(f"no decision from the daemon within {timeout:.0f} s of spawning it "
                             f"({sent} probe blocks sent); stderr tail:\n{d.stderr_tail()}")
    return evs, probe, {
        "bound_s": round(bound_s, 4),
        "first_decision_s": round(t_dec - d.t_spawn, 4),
        "method": method,
        "probe_blocks": sent,
        "probe_samples": sent * block,
        # receipt -> decision of that first window inside the daemon (first kernel calls included)
        "first_window_latency_us": first.get("latency_us"),
        "first_window_seq": first.get("seq"),
        "mem_at_first_decision": sysinfo.proc_mem_mb(d.pid),
    }


def _next_stats(evs: Events, d: DaemonProc, stats_interval: float) -> dict:
    """Wait for the next stats event."""
    n0 = len(evs.stats)
    deadline = time.perf_counter() + 5 * stats_interval + 2.0
    while len(evs.stats) == n0:
        evs.drain(int(stats_interval * 1000) + 1)
        if time.perf_counter() > deadline:
            d.check_alive("while waiting for a stats event")
            raise BenchError(f"no stats event from the daemon for {5 * stats_interval + 2.0:.1f} s "
                             f"(interval {stats_interval} s)")
    return evs.last


SEND_TIMEOUT_MS = 3000  # a send blocked this long means the daemon stopped taking input


def _publisher(ctx, d: DaemonProc, sensor: str, sndhwm: int, timeout: float = 10.0) -> SensorPublisher:
    """One sensor's socket: PUSH to a ``pull`` daemon, XPUB (waiting for the subscription) to ``sub``."""
    kind = "pub" if d.socket == "sub" else "push"
    pub = SensorPublisher(d.listen, sensor, kind=kind, ctx=ctx, sndhwm=sndhwm)
    pub.sock.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
    if not pub.wait_subscribed(timeout):
        raise BenchError(f"the daemon's SUB socket did not subscribe on {d.listen} within {timeout:.0f} s")
    return pub


def _send_blocked(d: DaemonProc, what: str) -> BenchError:
    d.check_alive(f"({what}: a send blocked for {SEND_TIMEOUT_MS / 1000:g} s)")
    return BenchError(f"daemon stopped taking input ({what}): a send to {d.listen} blocked for "
                      f"{SEND_TIMEOUT_MS / 1000:g} s although the process is alive; stderr tail:\n{d.stderr_tail()}")


def _consumed(st: dict) -> int:
    return int(st.get("messages", 0)) + int(st.get("dropped", 0))


class SensorLoad:
    """`n_sensors` sensors (ids ``bench-<i>``), each sending its own block stream of the wire format.

    Sensor i uses socket i % n_sockets (one socket per sensor by default, like separate
    devices). Per message: one msgpack header and a ``send_multipart`` of [id, header, samples],
    what `edgert.bus.SensorPublisher.send` does. The samples cycle through a healthy recording,
    each sensor starting at its own offset; t0 advances by block·dt per block, so every stream is
    correctly sequenced and gap-free. With ``streams`` (one [n, C] array per sensor) sensor i
    sends the blocks of its own array from the start instead (``remaining(i)`` says how many
    are left; past the end it starts over).
    """

    def __init__(self, ctx, d: DaemonProc, n_sensors: int, block: int, sndhwm: int,
                 n_sockets: int | None = None, dt_ns: int = DT_NS, streams: list | None = None):
        self.n = n_sensors
        self.block = block
        self.dt = int(dt_ns)
        if streams is None:
            self.blocks = sensor_blocks(block)
            self.per_sensor = [self.blocks] * n_sensors
        else:
            if len(streams) != n_sensors:
                raise ValueError(f"{len(streams)} streams for {n_sensors} sensors")
            self.per_sensor = [stream_blocks(x, block) for x in streams]
            self.blocks = self.per_sensor[0]
        nblk = self.nblk = len(self.blocks)
        ns = min(n_sensors, n_sockets or n_sensors)
        self.pubs = []
        try:
            for j in range(ns):
                self.pubs.append(_publisher(ctx, d, f"bench-{j}", sndhwm))
        except BaseException:
            self.close()
            raise
        self.socks = [self.pubs[i % ns].sock for i in range(n_sensors)]
        self.ids = [f"bench-{i}".encode() for i in range(n_sensors)]
        self.idx = [(i * nblk) // n_sensors if streams is None else 0 for i in range(n_sensors)]
        t0 = time.time_ns()
        self.t0 = [t0] * n_sensors
        self.sent = [0] * n_sensors
        self.copy = self.blocks[0].nbytes < zmq.COPY_THRESHOLD
        self.d = d

    def send(self, i: int) -> None:
        """Send sensor i's next block (raises BenchError when the daemon stopped taking input)."""
        from edgert.wire import encode_header

        j = self.idx[i]
        blocks = self.per_sensor[i]
        blk = blocks[j]
        seq = self.sent[i]
        try:
            self.socks[i].send_multipart([self.ids[i], encode_header(seq, self.t0[i], self.dt, blk), blk],
                                         copy=self.copy)
        except zmq.Again:
            raise _send_blocked(self.d, "load") from None
        self.idx[i] = j + 1 if j + 1 < len(blocks) else 0
        self.t0[i] += self.block * self.dt
        self.sent[i] = seq + 1

    def remaining(self, i: int) -> int:
        """Blocks of sensor i's stream not sent yet (before it would start over)."""
        return max(0, len(self.per_sensor[i]) - self.sent[i])

    @property
    def total(self) -> int:
        return sum(self.sent)

    def close(self) -> None:
        for p in self.pubs:
            p.sock.close(linger=0)


MAX_SOCKETS = 8192


def raise_fd_limit(want: int) -> int:
    """Raise this process's soft open-files limit towards `want` (up to the hard limit): every
    sensor socket takes a few descriptors. Returns the soft limit now in force."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return want
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    return soft


class Session:
    """A fresh daemon with its start-up measured and the counters' baseline taken.

    The sequence every end-to-end measurement shares: spawn ``edgert serve`` (pinned), wait
    for its first decision (`startup`), connect the load, wait for one stats event so the
    probe's blocks are counted, remember the count (`base`). Use as a context manager; `stop`
    sends SIGTERM and returns the daemon's final stats. Leaving the block kills the daemon if
    it still runs and removes its sockets and files.
    """

    def __init__(self, model, model_arg: str, *, tag: str, stats_interval: float = 0.2,
                 cpu_daemon: int | None = 0, startup_timeout: float = 120.0, block: int = 64,
                 socket: str = "pull", env: dict | None = None, extra: tuple = (), log=None,
                 prefix: tuple | None = None, scores: bool = False):
        self.model, self.model_arg, self.tag = model, model_arg, tag
        self.prefix, self.scores = prefix, scores
        self.stats_interval = stats_interval
        self.cpu_daemon, self.startup_timeout, self.block = cpu_daemon, startup_timeout, block
        self.socket, self.env, self.extra, self.log = socket, env, extra, log
        self.ctx = self.d = self.evs = self.probe = None
        self.loads: list = []
        self.startup: dict = {}
        self.base = 0

    def __enter__(self) -> "Session":
        self.ctx = zmq.Context()
        self.ctx.set(zmq.MAX_SOCKETS, MAX_SOCKETS)  # libzmq's default is 1023: too few for 1024 sensors
        try:
            self.d = DaemonProc(self.model_arg, self.stats_interval, self.cpu_daemon, self.tag,
                                extra=self.extra, socket=self.socket, env=self.env, prefix=self.prefix)
            self.evs, self.probe, self.startup = startup(self.d, self.ctx, self.model, self.block,
                                                         self.startup_timeout, scores=self.scores)
            if self.log:
                self.log(f"  daemon up: bound {self.startup['bound_s']:.2f} s, first decision "
                         f"{self.startup['first_decision_s']:.2f} s")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def load(self, n_sensors: int, sndhwm: int, n_sockets: int | None = None, dt_ns: int = DT_NS,
             streams: list | None = None) -> SensorLoad:
        """Connect `n_sensors` sensors, then take the counters' baseline (after the probe's blocks)."""
        ld = SensorLoad(self.ctx, self.d, n_sensors, self.block, sndhwm, n_sockets, dt_ns, streams)
        self.loads.append(ld)
        self.next_stats()
        self.base = _consumed(self.evs.last)
        return ld

    def next_stats(self) -> dict:
        return _next_stats(self.evs, self.d, self.stats_interval)

    def consumed(self) -> int:
        """Messages the daemon took (accepted + dropped) since `load`, per its last stats event."""
        return _consumed(self.evs.last) - self.base

    def wait_consumed(self, total: int, timeout: float, what: str) -> float:
        """Wait until the daemon has taken `total` messages; seconds waited."""
        t_w = time.perf_counter()
        while self.consumed() < total:
            if time.perf_counter() - t_w > timeout:
                raise BenchError(f"daemon did not consume the last {total - self.consumed()} of {total} "
                                 f"{what} messages within {timeout:.0f} s after sending stopped")
            self.next_stats()
        return time.perf_counter() - t_w

    def stop(self) -> dict:
        return self.d.stop()

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.d is not None:
            self.d.kill()
        for ld in self.loads:
            ld.close()
        if self.probe is not None:
            self.probe.sock.close(linger=0)
        if self.evs is not None:
            self.evs.close()
        if self.ctx is not None:
            self.ctx.term()
        if self.d is not None:
            self.d.cleanup()


def _count_check(final: dict, sent_blocks: list, block: int, W: int, H: int, probe: dict,
                 show: int = 10) -> dict:
    """Compare what the daemon counted with what was sent (per load sensor; at most `show`
    mismatching sensors are listed, all are counted)."""
    per = final.get("per_sensor", {})
    missing = {}
    n_mismatch = 0
    expected_total = scored_total = 0
    for i, nb in enumerate(sent_blocks):
        exp = windows_for(nb * block, W, H)
        expected_total += exp
        got = per.get(f"bench-{i}", {}).get("windows", 0)
        scored_total += got
        if got != exp:
            n_mismatch += 1
            if len(missing) < show:
                missing[f"bench-{i}"] = {"expected": exp, "scored": got}
    return {"windows_expected": expected_total,
            "windows_scored": scored_total,
            "mismatch": missing,
            "sensors_mismatched": n_mismatch,
            "probe_windows": per.get(PROBE, {}).get("windows", 0),
            "probe_windows_expected": windows_for(probe["probe_samples"], W, H)}


def saturate(model, model_arg: str, duration: float, settle: float, n_sensors: int = 8, block: int = 64,
             stats_interval: float = 0.2, backlog_msgs: int = 12000, cpu_daemon: int | None = 0,
             startup_timeout: float = 120.0, log=None, socket: str = "pull",
             prefix: tuple | None = None, streams: list | None = None, extra: tuple = ()) -> dict:
    """Max sustained windows/s of the daemon (or of the service `prefix` starts; see module doc).
    ``extra``: more ``serve`` options (e.g. an MQTT events endpoint).

    ``streams`` (one [n, C] array per sensor, cycled) replaces the healthy recording, e.g. an
    anomalous signal for an anomaly storm."""
    W, H = model.window, model.hop
    with Session(model, model_arg, tag="sat", stats_interval=stats_interval, cpu_daemon=cpu_daemon,
                 startup_timeout=startup_timeout, block=block, socket=socket, log=log,
                 prefix=prefix, extra=tuple(extra)) as s:
        d, evs = s.d, s.evs
        ld = s.load(n_sensors, sndhwm=max(1000, backlog_msgs // n_sensors + 64), streams=streams)
        send = ld.send
        total = 0
        consumed = 0
        blocked_s = 0.0
        waits = 0
        perf = time.perf_counter
        ru0 = os.times()
        cpu0 = sysinfo.proc_threads_cpu(d.pid)
        t_start = perf()
        t_end = t_start + duration
        t_progress = t_start
        while True:
            now = perf()
            if now >= t_end:
                break
            if total - consumed >= backlog_msgs:
                evs.drain(int(stats_interval * 2000))
                before = consumed
                consumed = s.consumed()
                t1 = perf()
                blocked_s += t1 - now
                waits += 1
                if consumed != before:
                    t_progress = t1
                elif t1 - t_progress > 5 * stats_interval + 1.0:
                    d.check_alive("while loaded")
                    raise BenchError(f"daemon stalled: it consumed nothing for {t1 - t_progress:.1f} s with "
                                     f"{total - consumed} messages outstanding (stats events: {len(evs.stats)})")
                continue
            for i in range(n_sensors):
                send(i)
            total += n_sensors
            if total & 63 < n_sensors and evs.drain(0):
                consumed = s.consumed()
                t_progress = perf()
        t_stop = perf()
        cpu1 = sysinfo.proc_threads_cpu(d.pid)
        ru1 = os.times()
        mem = sysinfo.proc_mem_mb(d.pid)
        # wait until the daemon has consumed every block sent, so the counts can be checked exactly
        drain_s = 10.0 + 4 * backlog_msgs / max(1.0, (consumed + 1) / max(1e-3, t_stop - t_start))
        if socket == "sub":  # PUB/SUB may lose blocks (a full queue): wait for what arrives
            drain_wait = _wait_settled(s, total, drain_s)
        else:
            drain_wait = s.wait_consumed(total, drain_s, "saturating")
        received = s.consumed()
        final = s.stop()
        evs.drain(200)
        st_fig = s.startup
        sent = list(ld.sent)

    snaps = [(t, x) for t, x in evs.stats if t_start + settle <= t <= t_stop]
    res = {
        "sensors": n_sensors, "block_samples": block, "socket": socket,
        "seconds_loaded": round(t_stop - t_start, 3),
        "startup": st_fig, "messages_sent": total,
        "messages_received": received, "lost_messages": total - received,
        "sender_msgs_per_s": round(total / (t_stop - t_start), 1),
        "sender_blocked_share": round(blocked_s / (t_stop - t_start), 3),
        "sender_cpu_share": round(((ru1.user - ru0.user) + (ru1.system - ru0.system)) / (t_stop - t_start), 3),
        "daemon_threads_cpu_share": sysinfo.threads_cpu_share(cpu0, cpu1, t_stop - t_start),
        "daemon_mem_loaded": mem,
        "backlog_limit_msgs": backlog_msgs,
        "drain_after_send_s": round(drain_wait, 3),
    }
    if len(snaps) < 2:
        raise BenchError(f"only {len(snaps)} daemon stats events in the busy period "
                         f"({len(evs.stats)} in total): stats are not arriving every {stats_interval} s")
    (_, a), (_, b) = snaps[0], snaps[-1]
    du = b["uptime_s"] - a["uptime_s"]
    rate = (b["windows"] - a["windows"]) / du
    mrate = (b["messages"] - a["messages"]) / du
    inter = []
    for (_, x), (_, y) in zip(snaps, snaps[1:]):
        dd = y["uptime_s"] - x["uptime_s"]
        if dd > 0:
            inter.append((y["windows"] - x["windows"]) / dd)
    gaps = [y[0] - x[0] for x, y in zip(evs.stats, evs.stats[1:]) if t_start <= x[0] <= t_stop]
    main_share = _main_thread_share(res["daemon_threads_cpu_share"])
    proc_share = sum(res["daemon_threads_cpu_share"].values())
    res.update({
        "windows_per_s": round(rate, 1),
        "daemon_cpu_share": round(proc_share, 3),
        "daemon_main_thread_cpu_share": main_share,
        # throughput per CPU-second the daemon actually got: less sensitive to other load on its core
        "windows_per_daemon_cpu_s": round(rate / proc_share, 1) if proc_share > 0 else None,
        "messages_per_s": round(mrate, 1),
        "interval_windows_per_s": {"min": round(min(inter), 1), "median": round(float(np.median(inter)), 1),
                                   "max": round(max(inter), 1), "n": len(inter)},
        "measured_s": round(du, 3),
        "max_stats_gap_s": round(max(gaps), 3) if gaps else None,
        "sender_bound": bool(res["sender_blocked_share"] < 0.05),
        "anomalies": b.get("anomalies", 0) - a.get("anomalies", 0),
        "final": _final_summary(final),
        "counts": _count_check(final, sent, block, W, H, st_fig),
    })
    res["problems"] = _problems(res, final, loaded=True)
    return res


def paced(model, model_arg: str, windows_per_s: float, duration: float, n_sensors: int = 8,
          block: int = 64, stats_interval: float = 0.2, cpu_daemon: int | None = 0,
          startup_timeout: float = 120.0, log=None, socket: str = "pull", sndhwm: int = 100000,
          n_sockets: int | None = None, expect_all: bool = True, drain_timeout: float = 10.0,
          settle: float = 0.5, spin: bool = False, prefix: tuple | None = None) -> dict:
    """A fresh daemon at a fixed window rate: latency, RSS, start-up (see module doc).

    The sensors take turns (round robin), so each sends ``windows_per_s / n_sensors`` windows/s;
    their sample period ``dt`` is set to match, so sensor time runs like wall time.
    With ``expect_all`` False (an overload step on a ``sub`` daemon) blocks lost on the way
    are a figure (``lost_messages``), not a failure: the daemon is then waited for until it
    has taken what reached it.
    """
    W, H = model.window, model.hop
    msg_rate = windows_per_s * H / block  # 64-sample blocks with hop 16 complete 4 windows each
    period = 1.0 / msg_rate
    per_sensor_hz = msg_rate * block / n_sensors  # samples/s of each sensor
    dt_ns = max(1, int(round(1e9 / per_sensor_hz)))
    with Session(model, model_arg, tag="lat", stats_interval=stats_interval, cpu_daemon=cpu_daemon,
                 startup_timeout=startup_timeout, block=block, socket=socket, log=log,
                 prefix=prefix) as s:
        d, evs = s.d, s.evs
        ld = s.load(n_sensors, sndhwm=sndhwm, n_sockets=n_sockets, dt_ns=dt_ns)
        send = ld.send
        perf = time.perf_counter
        cpu0 = sysinfo.proc_threads_cpu(d.pid)
        t_start = perf()
        n_msgs = int(duration * msg_rate)
        late = 0
        max_late = 0.0
        i = 0
        due = t_start
        sleep = time.sleep
        for m in range(n_msgs):
            now = perf()
            if now < due:
                if spin:
                    while now < due:
                        now = perf()
                else:  # sleep: a spinning sender slows the daemon's core too (shared caches/SMT)
                    sleep(due - now)
                    now = perf()
            lag = now - due
            if lag > 200e-6:
                late += 1
                if lag > max_late:
                    max_late = lag
            send(i)
            i = i + 1 if i + 1 < n_sensors else 0
            due += period
            if m & 255 == 0:
                evs.drain(0)
        t_stop = perf()
        total = ld.total
        backlog = total - s.consumed() if evs.last else None  # per the last stats event (<= interval old)
        cpu1 = sysinfo.proc_threads_cpu(d.pid)
        mem = sysinfo.proc_mem_mb(d.pid)
        if expect_all:
            drain_wait = s.wait_consumed(total, drain_timeout, "paced")
        else:
            drain_wait = _wait_settled(s, total, drain_timeout)
        time.sleep(0.005)  # the last partial batch waits max_delay_us (1 ms) for its deadline
        final = s.stop()
        st_fig = s.startup
        sent = list(ld.sent)
        received = s.consumed()
    secs = t_stop - t_start
    shares = sysinfo.threads_cpu_share(cpu0, cpu1, secs)
    # windows/s the daemon achieved while the load ran: its counters between the first stats
    # event after `settle` (or after the start) and the last one before sending stopped
    snaps = [(t, x) for t, x in evs.stats if t_start <= t <= t_stop]
    later = [(t, x) for t, x in snaps if t >= t_start + settle]
    if len(later) >= 2:
        snaps = later
    achieved = None
    if len(snaps) >= 2 and snaps[-1][1]["uptime_s"] > snaps[0][1]["uptime_s"]:
        a, b = snaps[0][1], snaps[-1][1]
        achieved = (b["windows"] - a["windows"]) / (b["uptime_s"] - a["uptime_s"])
    res = {
        "sensors": n_sensors, "block_samples": block, "socket": socket,
        "target_windows_per_s": round(windows_per_s, 1),
        # windows the blocks sent complete (a sensor's first block completes 1, later ones H/block
        # each), per second of sending
        "offered_windows_per_s": None,
        "windows_per_s": round(achieved, 1) if achieved is not None else None,
        "per_sensor_samples_per_s": round(per_sensor_hz, 2),
        "per_sensor_windows_per_s": round(per_sensor_hz / H, 3),
        "seconds_loaded": round(secs, 3),
        "messages_sent": total,
        "messages_received": received,
        "lost_messages": total - received,
        "backlog_at_send_end_msgs": backlog,
        "drain_after_send_s": round(drain_wait, 3),
        "late_sends": late, "max_send_lag_us": round(max_late * 1e6, 1),
        "startup": st_fig,
        "p50_latency_us": final.get("p50_latency_us"),
        "p99_latency_us": final.get("p99_latency_us"),
        "p999_latency_us": final.get("p999_latency_us"),
        "max_latency_us": final.get("max_latency_us"),
        "latency_histogram": final.get("latency_histogram"),
        "rss_mb": final.get("rss_mb"),
        "daemon_mem": mem,
        "daemon_threads_cpu_share": shares,
        "daemon_cpu_share": round(sum(shares.values()), 3),
        "final": _final_summary(final),
        "counts": _count_check(final, sent, block, W, H, st_fig),
    }
    res["offered_windows_per_s"] = round(res["counts"]["windows_expected"] / secs, 1)
    res["problems"] = _problems(res, final, loaded=False)
    return res


def _wait_settled(s: Session, total: int, timeout: float) -> float:
    """Wait until the daemon took all `total` messages or its count stopped moving for three stats
    intervals (the rest was lost on the way); seconds waited."""
    t_w = time.perf_counter()
    last, still = -1, 0
    while time.perf_counter() - t_w < timeout:
        got = s.consumed()
        if got >= total:
            break
        still = still + 1 if got == last else 0
        if still >= 3:
            break
        last = got
        s.next_stats()
    return time.perf_counter() - t_w


def _main_thread_share(shares: dict) -> float | None:
    """CPU share of the daemon's main thread (the busiest one not named ZMQbg/...)."""
    main = [v for k, v in shares.items() if "ZMQbg" not in k]
    return max(main) if main else None


def _final_summary(final: dict) -> dict:
    keys = ("messages", "samples", "windows", "anomalies", "dropped", "drops", "notes", "batches",
            "batch_reasons", "p50_latency_us", "p99_latency_us", "max_latency_us", "uptime_s",
            "windows_per_s", "rss_mb", "backend", "kernels", "model", "sensors_active", "_stop_s")
    return {k: final.get(k) for k in keys}


def _problems(res: dict, final: dict, loaded: bool) -> list:
    """Things the daemon or the bus did wrong, stated precisely (empty when all is well)."""
    out = []
    if final.get("dropped"):
        out.append(f"daemon dropped {final['dropped']} blocks: {final.get('drops')}")
    notes = {s: n for s, n in (final.get("notes") or {}).items() if n}
    if notes:
        out.append(f"daemon noted stream irregularities on correctly sequenced input: {notes}")
    c = res["counts"]
    if res.get("lost_messages"):
        out.append(f"{res['lost_messages']} of {res['messages_sent']} blocks sent never reached the daemon "
                   "(ZeroMQ dropped them at a full queue)")
    if c["mismatch"]:
        more = c.get("sensors_mismatched", len(c["mismatch"])) - len(c["mismatch"])
        out.append(f"windows scored differ from what was sent: {c['mismatch']}"
                   + (f" and {more} more sensors" if more > 0 else ""))
    if c["probe_windows"] != c["probe_windows_expected"]:
        out.append(f"probe sensor: {c['probe_windows']} windows scored, {c['probe_windows_expected']} expected")
    gap = res.get("max_stats_gap_s")
    if gap is not None and gap > 0.2 * 5:
        out.append(f"stats events stalled: a {gap:.2f} s gap between events (interval 0.2 s)")
    inter = res.get("interval_windows_per_s")
    if inter and inter["min"] < 0.5 * inter["median"]:
        out.append(f"throughput dipped: slowest 0.2 s interval {inter['min']:.0f} windows/s vs median "
                   f"{inter['median']:.0f}")
    share = res.get("daemon_main_thread_cpu_share")
    if loaded and share is not None and share < 0.9:
        out.append(f"the daemon's main thread got only {share:.2f} of a core while loaded "
                   "(other processes on its CPU, or it waited for input)")
    if loaded and res.get("sender_bound"):
        out.append("the sender never had to wait for the daemon: the figure is sender-bound, not the daemon's max")
    if not loaded and res.get("late_sends", 0) > 0.01 * max(1, res.get("messages_sent", 1)):
        out.append(f"the paced sender was late (>200 µs) on {res['late_sends']} of {res['messages_sent']} sends")
    return out
