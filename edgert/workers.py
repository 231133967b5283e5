"""``edgert serve --workers N``: N daemon processes behind one ``--listen`` endpoint, one supervisor.

How a message reaches a worker, without Python per message: the supervisor (`Supervisor`,
the process systemd starts) owns the listening sockets (`Listener`) and hands each worker
one over a unix socket (SCM_RIGHTS). Each worker is an ordinary `edgert.daemon.Daemon`
whose input socket binds on that descriptor (libzmq's ``ZMQ_USE_FD``), so the kernel, not
Python, decides which worker accepts a sensor connection: with ``tcp://`` each worker has
its own ``SO_REUSEPORT`` socket on the one port (the kernel spreads connections by a hash of
their addresses), with ``ipc://`` all workers accept on one shared socket. A connection, and
so every window of the sensor ids it carries, stays with its worker while both live. When a
worker dies the kernel closes its connections; the sensors' ZeroMQ sockets reconnect on their
own (100 ms) and a live worker accepts them: it starts their streams fresh, and the
supervisor notes the gap from the seqs the two workers reported (``handovers``).

The supervisor does no per-message work: it restarts dead (or silent) workers with back-off,
tells systemd READY once every worker serves, forwards SIGTERM/SIGINT/SIGHUP, republishes
the workers' events (an internal ipc PUSH per worker → one PULL here → the daemon's
`EventSink`), publishes one aggregated stats stream (`aggregate_stats`) and, on stop, prints
the aggregated final stats as the single-process daemon does. Each worker writes its own
reservoir (``reservoir_dir/worker-K``) and watches the model directory itself.

The worker side runs as ``python -m edgert.workers --slot K --listen EP --run-dir DIR`` with
its control socket as stdin.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket as pysocket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, fields

import msgpack
import zmq

from . import events as events_mod
from .config import Config

log = logging.getLogger("edgert")

RESTART_BACKOFF_S = (1.0, 30.0)  # first restart delay, ceiling (doubling per quick death)
STABLE_S = 30.0  # a worker that ran this long resets the back-off
HUNG_AFTER_S = 10.0  # a serving worker silent this long (and 10 stats intervals) is killed and restarted
INTERNAL_HWM = 10000  # events queued per worker toward the supervisor; past it they are counted, dropped
MAX_WORKERS = 256
BACKLOG = 1024  # listen() backlog of the shared socket (libzmq's own default is 100)


# -- the listening sockets ----------------------------------------------------------------------
def _listen(sock: pysocket.socket, addr) -> pysocket.socket:
    """Bind, listen, non-blocking (closes `sock` on failure).

    Non-blocking matters when several workers accept on one socket: each I/O thread is woken
    for a new connection and all but one find the queue empty; libzmq's accept() must then
    fail with EAGAIN instead of blocking its I/O thread (libzmq does not set O_NONBLOCK on a
    ``ZMQ_USE_FD`` socket)."""
    try:
        sock.bind(addr)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _tcp_address(endpoint: str) -> tuple:
    """(family, sockaddr) of ``tcp://HOST:PORT`` (``*`` for all IPv4 interfaces or an
    ephemeral port). Raises ValueError naming the endpoint."""
    hostport = endpoint[len("tcp://"):]
    host, sep, port = hostport.rpartition(":")
    if not sep or not host:
        raise ValueError(f"--listen {endpoint}: expected tcp://HOST:PORT")
    try:
        port_n = 0 if port == "*" else int(port)
    except ValueError:
        raise ValueError(f"--listen {endpoint}: port {port!r} is not a number") from None
    if not 0 <= port_n <= 65535:
        raise ValueError(f"--listen {endpoint}: port {port_n} is out of range")
    host = "0.0.0.0" if host == "*" else host.strip("[]")
    try:
        family, _, _, _, sockaddr = pysocket.getaddrinfo(host, port_n, type=pysocket.SOCK_STREAM,
                                                         flags=pysocket.AI_PASSIVE)[0]
    except OSError as exc:
        raise ValueError(f"--listen {endpoint}: cannot resolve {host!r} ({exc}); with --workers give an "
                         "address, a host name or * (not an interface name)") from None
    return family, sockaddr


def _port_free(endpoint: str, family, addr) -> tuple:
    """`addr` with its port chosen (port 0) after checking that no one holds it: a bind without
    SO_REUSEPORT fails on a port in use, so a second daemon cannot silently join our
    SO_REUSEPORT group and take a share of the sensors. Raises OSError naming the endpoint."""
    probe = pysocket.socket(family, pysocket.SOCK_STREAM)
    try:
        probe.bind(addr)
        return (addr[0], probe.getsockname()[1]) + tuple(addr[2:])
    except OSError as exc:
        raise OSError(exc.errno, f"--listen {endpoint}: {exc.strerror} (another process listens there?)") from None
    finally:
        probe.close()


class Listener:
    """What the workers accept sensor connections on, created by the supervisor.

    ``tcp://`` on Linux: one ``SO_REUSEPORT`` listening socket per worker on the same port; the
    kernel spreads new connections over them by a hash of the connection's addresses (even,
    whatever the timing), a connection stays with the socket that took it, and a worker's
    socket dies with it (its queued connections are reset and reconnect to the others). The
    supervisor holds the port with a bound socket that does not listen (it takes no
    connections). ``ipc://`` (and tcp without SO_REUSEPORT): one listening socket shared by
    every worker: each new connection goes to whichever worker's I/O thread accepts first.

    Raises:
      ValueError naming the endpoint when it is not tcp/ipc or cannot be resolved; OSError
      when it cannot be bound (port in use, an ipc path held by a live process).
    """

    def __init__(self, endpoint: str):
        self.shared = self.anchor = None
        if endpoint.startswith("ipc://"):
            self.mode = "shared"
            self.shared, self.endpoint = self._ipc(endpoint), endpoint
        elif endpoint.startswith("tcp://"):
            family, addr = _tcp_address(endpoint)
            self.mode = "reuseport" if hasattr(pysocket, "SO_REUSEPORT") else "shared"
            s = pysocket.socket(family, pysocket.SOCK_STREAM)
            s.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_REUSEADDR, 1)  # as libzmq does
            if self.mode == "reuseport":
                addr = _port_free(endpoint, family, addr)
                s.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_REUSEPORT, 1)
                try:
                    s.bind(addr)  # holds the port; never listens, so it takes no connection
                except BaseException:
                    s.close()
                    raise
                self.anchor = s
            else:
                self.shared = _listen(s, addr)
            host, port = s.getsockname()[:2]
            self.family, self.addr = family, (host, port) + tuple(addr[2:])
            self.endpoint = f"tcp://[{host}]:{port}" if family == pysocket.AF_INET6 else f"tcp://{host}:{port}"
        else:
            raise ValueError(f"--listen {endpoint}: --workers needs a tcp:// or ipc:// endpoint")

    @staticmethod
    def _ipc(endpoint: str) -> pysocket.socket:
        path = endpoint[len("ipc://"):]
        if not path or path == "*":
            raise ValueError(f"--listen {endpoint}: with --workers, an ipc endpoint needs a path")
        from .daemon import _claim_ipc

        _claim_ipc(endpoint)  # refuses a path a live process listens on
        if not path.startswith("@") and os.path.exists(path):
            os.unlink(path)  # a stale file from a crash
        addr = "\0" + path[1:] if path.startswith("@") else path
        return _listen(pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM), addr)

    def for_worker(self) -> tuple[pysocket.socket, bool]:
        """(the listening socket to hand to a worker, whether the caller closes it once handed)."""
        if self.mode == "shared":
            return self.shared, False
        s = pysocket.socket(self.family, pysocket.SOCK_STREAM)
        s.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_REUSEADDR, 1)
        s.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_REUSEPORT, 1)
        return _listen(s, self.addr), True

    def close(self) -> None:
        for s in (self.shared, self.anchor):
            if s is not None:
                s.close()
        if self.endpoint.startswith("ipc://") and not self.endpoint.startswith("ipc://@"):
            _unlink(self.endpoint[len("ipc://"):])


# -- stats: one function merges the workers' -------------------------------------------------
_MAX_KEYS = ("max_latency_us", "queue_delay_max_us", "uptime_s", "kernel_warmup_s")
_MIN_KEYS = ("first_decision_s",)
_HISTOGRAMS = {"latency_histogram": ("p50_latency_us", "p99_latency_us", "p999_latency_us"),
               "queue_delay_histogram": ("queue_delay_p50_us", "queue_delay_p99_us", None)}
_QUANTILES = (0.50, 0.99, 0.999)
_INTERNAL = ("seq",)  # per-worker bookkeeping, not part of the daemon's stats


def merge_histograms(hists: list) -> dict | None:
    """Sum sparse latency histograms (`edgert.stats.LatencyHistogram.sparse`: same bin edges in
    every worker). Returns the same shape, or None when there is none."""
    hists = [h for h in hists if h]
    if not hists:
        return None
    counts: dict[float, int] = {}
    for h in hists:
        for le, c in zip(h.get("le_us", []), h.get("counts", [])):
            counts[le] = counts.get(le, 0) + int(c)
    le = sorted(counts)
    return {"le_us": le, "counts": [counts[x] for x in le],
            "max_us": max(float(h.get("max_us") or 0.0) for h in hists),
            "sum_us": sum(float(h.get("sum_us") or 0.0) for h in hists)}


def histogram_quantile(h: dict | None, q: float) -> float | None:
    """The q-quantile of a sparse histogram (the upper edge of the bin holding it, at most the
    maximum), as `LatencyHistogram.quantile`; None when empty."""
    if not h or not h["counts"]:
        return None
    total = sum(h["counts"])
    target, cum = q * total, 0
    for le, c in zip(h["le_us"], h["counts"]):
        cum += c
        if cum >= target:
            return min(float(le), float(h["max_us"]))
    return float(h["max_us"])


def _merge_value(a, b):
    """Merge two values of one stats key: numbers add, dicts merge key by key, lists join
    (without repeats), equal strings stay, differing ones become a list of the distinct ones."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) or bool(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a + b
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            out[k] = _merge_value(out.get(k), v)
        return out
    if isinstance(a, list) or isinstance(b, list):
        la = a if isinstance(a, list) else [a]
        return la + [x for x in (b if isinstance(b, list) else [b]) if x not in la]
    return a if a == b else [a, b]


def aggregate_stats(worker_stats: list, top_n: int | None = None) -> dict:
    """The daemon's stats from its workers' (each one `edgert.daemon.Daemon.stats` of a worker,
    with its latency histograms): what one process serving every sensor would report.

    Counters (messages, windows, drops by reason, per-sensor rows, peers, ...) are summed;
    the latency and queue-delay quantiles are taken from the merged histograms; maxima
    (``max_latency_us``, ``uptime_s``, ...) are the largest, ``first_decision_s`` the
    earliest; ``model``/``backend`` stay a string when all workers agree, else become the
    list of distinct values (e.g. during a model swap). A sensor id that two workers held (it
    reconnected to another one) gets one row, the sum of both.

    Args:
      worker_stats: one stats dict per worker (None entries are skipped).
      top_n: keep at most this many sensors in ``per_sensor``, ``drops`` and ``notes`` (most
        drops first, then most windows), as the single daemon does; None: all.
    Returns:
      a JSON-safe dict with the keys of `Daemon.stats`, plus ``workers_reporting``.
    """
    from .stats import json_safe, top_by_total

    items = [s for s in worker_stats if s]
    out: dict = {}
    for s in items:
        for k, v in s.items():
            if k in _INTERNAL or k in _HISTOGRAMS:
                continue
            if k in _MAX_KEYS or k in _MIN_KEYS:
                if v is None:
                    continue
                cur = out.get(k)
                out[k] = v if cur is None else (max(cur, v) if k in _MAX_KEYS else min(cur, v))
            else:
                out[k] = _merge_value(out.get(k), v)
    for key, names in _HISTOGRAMS.items():
        h = merge_histograms([s.get(key) for s in items])
        for q, name in zip(_QUANTILES, names):
            if name is not None:
                out[name] = histogram_quantile(h, q)
        if h is not None:
            out[key] = h
    out["v"] = 1
    if isinstance(out.get("windows_per_s"), float):
        out["windows_per_s"] = round(out["windows_per_s"], 1)
    out["workers_reporting"] = len(items)
    if top_n is not None:
        drops = top_by_total(out.get("drops") or {}, top_n)
        per = out.get("per_sensor") or {}
        shown = [s for s in drops if s in per]
        if len(shown) < top_n:
            rest = sorted((s for s in per if s not in drops), key=lambda s: -int(per[s].get("windows", 0)))
            shown += rest[:top_n - len(shown)]
        out["drops"] = drops
        out["per_sensor"] = {s: per[s] for s in shown}
        out["notes"] = {s: v for s, v in (out.get("notes") or {}).items() if s in out["per_sensor"]}
    return json_safe(out)


# -- the worker side ----------------------------------------------------------------------------
class WorkerEvents:
    """A worker's `edgert.events.EventSink`: every event goes to the supervisor over an
    internal ipc PUSH (never blocks: past `INTERNAL_HWM` queued events it counts a drop).

    Stats events are completed with what the supervisor needs to aggregate: the latency
    histograms and each sensor's first and last seq in this worker (``seq``).
    """

    def __init__(self, ctx: zmq.Context, endpoint: str, slot: int, incarnation: int):
        self.sock = ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, INTERNAL_HWM)
        self.sock.setsockopt(zmq.LINGER, 5000)  # the final stats must reach the supervisor
        self.sock.connect(endpoint)
        self.endpoint = endpoint
        self.header = json.dumps({"slot": slot, "inc": incarnation, "pid": os.getpid()}).encode()
        self.daemon = None  # set once the Daemon exists: stats are completed from it
        self.published = 0
        self.dropped = 0
        self._first_seq: dict[str, int] = {}

    def _seq_table(self) -> dict:
        """{sensor: [first seq taken, last seq taken]} for every stream this worker holds."""
        streams = self.daemon.pipeline.streams
        out = {}
        for name, st in streams.items():
            if st.last_seq is None:
                continue
            first = self._first_seq.get(name)
            if first is None:  # seqs the stream advanced by: accepted blocks plus the ones lost
                first = self._first_seq[name] = max(0, st.last_seq - (st.messages - 1) - st.lost_blocks)
            out[name] = [first, st.last_seq]
        for name in [n for n in self._first_seq if n not in streams]:
            del self._first_seq[name]  # evicted: a later stream of that id starts anew
        return out

    def _complete(self, kind: str, payload: dict) -> dict:
        if self.daemon is None:
            return payload
        final = kind == "lifecycle" and payload.get("state") == "stopped"
        if kind == "stats" or final:
            if not final:
                payload["latency_histogram"] = self.daemon.latency.sparse()
                payload["queue_delay_histogram"] = self.daemon.queue_delay.sparse()
            payload["seq"] = self._seq_table()
            payload["events_dropped_internal"] = self.dropped
        return payload

    def publish(self, kind: str, sensor: str, payload: dict) -> None:
        """Send one event to the supervisor (`EventSink.publish`)."""
        payload["v"] = events_mod.SCHEMA_VERSION
        payload = self._complete(kind, payload)
        self.send(events_mod.topic(kind, sensor), msgpack.packb(payload))

    def send(self, topic: bytes, body: bytes) -> None:
        try:
            self.sock.send_multipart([self.header, topic, body], zmq.NOBLOCK)
            self.published += 1
        except zmq.Again:
            self.dropped += 1

    def control(self, what: str, **info) -> None:
        """A message for the supervisor alone (``ctl/initialized``, ``ctl/failed``)."""
        self.send(f"ctl/{what}".encode(), msgpack.packb(info))

    def close(self) -> None:
        self.sock.close()


def worker_config(run_dir: str, slot: int, listen: str) -> Config:
    """The worker's settings: the supervisor's (``run_dir/config.json``), with its own
    reservoir directory (``reservoir_dir/worker-K``: no two writers on one file), its own
    commissioning file (``commission_file.worker-K``, reading the others too) and stats
    listing every sensor (the supervisor trims the aggregate to ``stats_top_n``)."""
    with open(os.path.join(run_dir, "config.json")) as f:
        data = json.load(f)
    cfg = Config(**{k: v for k, v in data.items() if k in {f.name for f in fields(Config)}})
    if cfg.reservoir_dir:
        cfg.reservoir_dir = os.path.join(cfg.reservoir_dir, f"worker-{slot}")
    if cfg.commission_file:  # each worker writes its own; reads every worker's (edgert.commission)
        cfg.commission_file = f"{cfg.commission_file}.worker-{slot}"
    cfg.stats_top_n = cfg.max_sensors + cfg.max_unknown_ids + 1
    cfg.listen = listen  # the endpoint of the shared socket (a tcp port chosen by the supervisor)
    cfg.workers = 1
    if getattr(cfg, "metrics_listen", ""):  # [metrics] one port: the supervisor's to serve, not each worker's
        cfg.metrics_listen = ""
    return cfg.validate()


def worker_main(argv=None) -> int:
    """A worker process: build the daemon, tell the supervisor, wait for its go (``serve`` and
    the listening socket, passed over stdin, a unix socket), serve on it until SIGTERM or until
    the supervisor is gone (its end of stdin closed)."""
    from .daemon import Daemon

    p = argparse.ArgumentParser(prog="edgert.workers")
    p.add_argument("--slot", type=int, required=True)
    p.add_argument("--inc", type=int, default=0)
    p.add_argument("--listen", required=True)
    p.add_argument("--run-dir", required=True)
    a = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the supervisor decides
    cfg = worker_config(a.run_dir, a.slot, a.listen)
    logging.basicConfig(level=getattr(logging, cfg.log_level), stream=sys.stderr,
                        format=f"%(asctime)s edgert.worker-{a.slot} %(levelname)s %(message)s")
    ctl = pysocket.socket(fileno=os.dup(0))  # the supervisor's control socket
    ctx = zmq.Context()
    sink = WorkerEvents(ctx, f"ipc://{a.run_dir}/events", a.slot, a.inc)
    try:
        d = Daemon(cfg, ctx=ctx)
    except Exception as exc:  # noqa: BLE001 - model, backend, reservoir: the supervisor reports it
        log.error("worker %d cannot start: %s", a.slot, exc)
        sink.control("failed", error=str(exc))
        sink.close()
        ctx.term()
        return 1
    sink.daemon = d
    sink.control("initialized")
    try:
        msg, fds, _, _ = pysocket.recv_fds(ctl, 64, 1)
    except OSError:
        msg, fds = b"", []
    if msg.strip() != b"serve" or not fds:  # the supervisor is gone, or stops before we serve
        sink.close()
        d.pipeline.close()
        ctx.term()
        return 0
    d.listen_fd = fds[0]  # [workers] see edgert.daemon.Daemon.bind
    d.make_events = lambda _ctx: sink
    d.reload_config = lambda: worker_config(a.run_dir, a.slot, a.listen)
    d.install_signal_handlers()
    threading.Thread(target=_stop_when_orphaned, args=(ctl, d), daemon=True).start()
    try:
        d.bind()
    except Exception as exc:  # noqa: BLE001 - a socket error: the supervisor reports it
        sink.control("failed", error=str(exc))
        sink.close()
        ctx.term()
        return 1
    d.run()
    ctx.term()
    return 0


def _stop_when_orphaned(ctl: pysocket.socket, d) -> None:
    """Stop the worker when the supervisor's end of the control socket closes (it died)."""
    try:
        while ctl.recv(64):
            pass
    except OSError:
        pass
    d.stop()


# -- the supervisor --------------------------------------------------------------------------------
class _Worker:
    """One worker slot: its process, its latest stats, its restarts."""

    def __init__(self, slot: int):
        self.slot = slot
        self.proc: subprocess.Popen | None = None
        self.ctl: pysocket.socket | None = None  # the supervisor's end of the worker's stdin
        self.inc = -1  # incarnation (0 first, +1 per restart)
        self.pid = None
        self.state = "down"  # down | starting | initialized | serving | stopped
        self.started = 0.0
        self.stats: dict | None = None
        self.final: dict | None = None
        self.restart_at = 0.0
        self.fast_deaths = 0
        self.error = None
        self.last_report = 0.0  # time.monotonic() of its last stats event

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    """The main process of ``edgert serve --workers N`` (see the module docstring).

    Args:
      cfg: the daemon's settings (``cfg.workers`` is N).
      load: ``callable() -> Config`` re-reading the settings on SIGHUP (the CLI's).
      notifier: an `edgert.sdnotify.Notifier` (READY once every worker serves; watchdog).
    """

    def __init__(self, cfg: Config, load=None, notifier=None, ctx: zmq.Context | None = None):
        self.cfg = cfg
        self.load = load
        self.notifier = notifier
        self.n = cfg.workers
        self.ctx = ctx or zmq.Context()
        self.workers = [_Worker(k) for k in range(self.n)]
        self.retired: dict | None = None  # the dead incarnations' last stats, merged (their counts stay in the totals)
        self.owner: dict[str, tuple] = {}  # sensor -> (slot, inc, last seq) of its newest stream
        self.handovers: dict[str, int] = {}  # per sensor, for the sensors in `owner`
        self.handovers_total = 0
        self.handover_gap = 0
        self.restarts = 0
        self.events_forwarded = 0
        self._stop = False
        self._reload = False
        self.ready_sent = False
        self._phase = "init"  # init: workers build their engines; serve: each gets its socket once ready
        self.run_dir = None
        self.listener = None
        self.listen_endpoint = None
        self.events = None
        self.events_endpoint = None
        self.auth = None
        self.inbox = None
        self.metrics = None  # [metrics] one /metrics, /healthz, /readyz for every worker
        if cfg.metrics_listen:
            from .metrics import Metrics

            self.metrics = Metrics(cfg.metrics_listen, cfg.metrics_max_sensors, cfg.health_stall_s)

    # -- set-up -------------------------------------------------------------------------
    def bind(self) -> None:
        """Create the shared listening socket, the events endpoint and the internal inbox.

        Raises:
          ValueError/OSError naming the endpoint (the CLI prints it, exit 1).
        """
        from . import auth
        from .daemon import _claim_ipc

        self.run_dir = tempfile.mkdtemp(prefix="edgert-workers-")
        self._write_config(self.cfg)
        self.listener = Listener(self.cfg.listen)
        self.listen_endpoint = self.listener.endpoint
        _claim_ipc(self.cfg.events)
        self.auth = auth.ServerAuth(self.ctx, self.cfg)
        self.events = events_mod.EventPublisher(self.ctx, self.cfg.events,
                                                secure=lambda s: self.auth.secure(s, "events"))
        self.events_endpoint = self.events.endpoint
        self.inbox = self.ctx.socket(zmq.PULL)
        self.inbox.setsockopt(zmq.RCVHWM, INTERNAL_HWM)
        self.inbox.setsockopt(zmq.LINGER, 0)
        self.inbox.bind(f"ipc://{self.run_dir}/events")

    def _write_config(self, cfg: Config) -> None:
        tmp = os.path.join(self.run_dir, "config.json.tmp")
        with open(tmp, "w") as f:
            json.dump(asdict(cfg), f)
        os.replace(tmp, os.path.join(self.run_dir, "config.json"))

    def _spawn(self, w: _Worker) -> None:
        w.inc += 1
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        w.ctl, theirs = pysocket.socketpair()
        try:
            w.proc = subprocess.Popen(
                [sys.executable, "-m", "edgert.workers", "--slot", str(w.slot), "--inc", str(w.inc),
                 "--listen", self.listener.endpoint, "--run-dir", self.run_dir], stdin=theirs, env=env)
        finally:
            theirs.close()
        w.pid = w.proc.pid
        w.state = "starting"
        w.started = time.monotonic()
        w.stats = w.final = w.error = None
        log.info("worker %d started (pid %d%s)", w.slot, w.pid, f", restart {w.inc}" if w.inc else "")

    def _go(self, w: _Worker) -> None:
        """Hand the worker its listening socket (SCM_RIGHTS) and let it serve."""
        sock, close = self.listener.for_worker()
        try:
            pysocket.send_fds(w.ctl, [b"serve"], [sock.fileno()])
        except OSError:
            pass  # it died meanwhile: the next check restarts it
        finally:
            if close:
                sock.close()  # the worker holds it now: it dies with the worker

    def _close_ctl(self, w: _Worker) -> None:
        if w.ctl is not None:
            w.ctl.close()
            w.ctl = None

    # -- signals ------------------------------------------------------------------------------
    def stop(self, *_args) -> None:
        self._stop = True
        if self.metrics is not None:  # [metrics] /readyz: 503 from now on
            self.metrics.health.set_stopping()

    def request_reload(self, *_args) -> None:
        self._reload = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGHUP, self.request_reload)

    def _reload_now(self) -> None:
        """SIGHUP: re-read the settings here; if they load, hand them to the workers (they
        apply what is live and name what needs a restart, as one daemon does)."""
        try:
            new = self.load() if self.load is not None else self.cfg
        except Exception as exc:  # noqa: BLE001 - a broken file: keep running on the old settings
            log.warning("reload refused, settings unchanged: %s", exc)
            return
        if new.workers != self.cfg.workers:
            log.warning("reload: workers changed, but needs a restart to take effect")
            new.workers = self.cfg.workers
        self._write_config(new)
        for key in ("stats_interval_s", "stats_top_n", "log_level", "drain_s"):
            setattr(self.cfg, key, getattr(new, key))
        logging.getLogger().setLevel(self.cfg.log_level)
        for w in self.workers:
            if w.alive() and w.state == "serving":
                w.proc.send_signal(signal.SIGHUP)

    # -- events from the workers -------------------------------------------------------------------
    def _drain_inbox(self, timeout_ms: int) -> None:
        if not self.inbox.poll(timeout_ms):
            return
        for _ in range(1000):
            try:
                header, topic, body = self.inbox.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:
                continue  # not three frames: not ours
            try:
                self._on_message(json.loads(header), topic.decode("utf-8"), msgpack.unpackb(body, raw=False))
            except Exception as exc:  # noqa: BLE001 - one bad message must not stop the supervisor
                log.warning("supervisor: bad message from a worker (%r): %r", topic[:60], exc)

    def _on_message(self, head: dict, topic: str, payload: dict) -> None:
        slot, inc = int(head["slot"]), int(head["inc"])
        if not 0 <= slot < self.n:
            return
        w = self.workers[slot]
        if inc != w.inc:
            return  # a dead incarnation's late message
        if topic.startswith("ctl/"):
            what = topic[4:]
            if what == "initialized":
                w.state = "initialized"
                if self._serving_phase:
                    self._go(w)
            elif what == "failed":
                w.error = payload.get("error")
            return
        _, kind, sensor = topic.split("/", 2)
        if kind == "stats":
            w.stats = payload
            w.last_report = time.monotonic()
            self._note_owners(w, payload.get("seq") or {})
            return
        if kind == "lifecycle" and sensor == "daemon":
            state = payload.get("state")
            if state == "started":
                w.state = "serving"
                w.last_report = time.monotonic()
                log.info("worker %d serving (pid %s)", slot, head.get("pid"))
            elif state == "stopped":
                w.final = {k: v for k, v in payload.items() if k != "state"}
                w.state = "stopped"
                self._note_owners(w, payload.get("seq") or {})
            # the daemon's lifecycle is the supervisor's; a worker's goes out under its own name
            payload = {k: v for k, v in payload.items() if k not in ("seq", "latency_histogram",
                                                                      "queue_delay_histogram")}
            sensor = f"worker-{slot}"
        elif sensor == "daemon":  # model swapped/refused, reloads: say which worker
            payload["worker"] = slot
        self.events.publish(kind, sensor, payload)
        self.events_forwarded += 1

    def _note_owners(self, w: _Worker, seqs: dict) -> None:
        """Track which worker holds each sensor's newest stream; a sensor that shows up on
        another worker with a newer stream was handed over (its connection moved): note the
        blocks between the last seq the old worker reported and the first the new one took."""
        for sensor, (first, last) in seqs.items():
            cur = self.owner.get(sensor)
            if cur is not None and (cur[0], cur[1]) != (w.slot, w.inc):
                if first <= cur[2]:
                    continue  # the older stream (a stale report of the previous holder)
                gap = max(0, int(first) - int(cur[2]) - 1)
                self.handovers[sensor] = self.handovers.get(sensor, 0) + 1
                self.handovers_total += 1
                self.handover_gap += gap
                log.info("sensor %s moved from worker %d to worker %d: seq %d..%d not scored (at most %d "
                         "blocks: the old worker may have scored some after its last report)",
                         sensor, cur[0], w.slot, int(cur[2]) + 1, int(first) - 1, gap)
            self.owner[sensor] = (w.slot, w.inc, int(last))
        if len(self.owner) > 2 * self.n * (self.cfg.max_sensors + 1):
            self._prune_owners()

    def _prune_owners(self) -> None:
        """Forget sensors no live worker holds (ids that came and went): bounded memory."""
        held = set()
        for w in self.workers:
            held.update(((w.stats or {}).get("seq") or {}).keys())
        self.owner = {k: v for k, v in self.owner.items() if k in held}
        self.handovers = {k: v for k, v in self.handovers.items() if k in held}
        if self.retired is not None:
            self.retired["per_sensor"] = {k: v for k, v in (self.retired.get("per_sensor") or {}).items()
                                          if k in held}

    # -- supervision ---------------------------------------------------------------------------------
    @property
    def _serving_phase(self) -> bool:
        return self._phase == "serve"

    def _check_workers(self, now: float) -> None:
        for w in self.workers:
            if w.proc is None:
                if not self._stop and now >= w.restart_at:
                    self._spawn(w)
                continue
            rc = w.proc.poll()
            if rc is None:
                hung = max(HUNG_AFTER_S, 10 * self.cfg.stats_interval_s)
                if w.state == "serving" and not self._stop and now - w.last_report > hung:
                    # the systemd watchdog of a worker: its loop stopped (a wedged backend, a deadlock)
                    log.warning("worker %d (pid %s) sent no stats for %.0f s: killed", w.slot, w.pid, hung)
                    w.error = f"no stats for {hung:.0f} s (hung), killed"
                    w.proc.kill()
                    w.last_report = float("inf")
                continue
            how = f"signal {-rc}" if rc < 0 else f"exit code {rc}"
            ran = now - w.started
            if w.stats:  # merged at once: a worker dying again and again cannot grow this
                self.retired = aggregate_stats([self.retired, _retire(w.stats)])
            w.proc = None
            self._close_ctl(w)
            w.state = "down"
            if self._stop:
                continue
            w.fast_deaths = 0 if ran >= STABLE_S else w.fast_deaths + 1
            delay = min(RESTART_BACKOFF_S[1], RESTART_BACKOFF_S[0] * 2 ** max(0, w.fast_deaths - 1))
            w.restart_at = now + delay
            self.restarts += 1
            log.warning("worker %d (pid %s) died (%s) after %.1f s%s; the other workers keep serving, "
                        "its sensors reconnect to them; restarting it in %.0f s", w.slot, w.pid, how, ran,
                        f": {w.error}" if w.error else "", delay)

    def _start_all(self) -> None:
        """Start every worker, wait until each has built its engine, then let them all bind at
        once (a worker that served alone for seconds would take every sensor connecting then).

        Raises:
          RuntimeError naming the worker's error when one cannot start.
        """
        self._phase = "init"
        for w in self.workers:
            self._spawn(w)
        while not self._stop:
            self._drain_inbox(100)
            for w in self.workers:
                if w.proc.poll() is not None:
                    self._drain_inbox(200)  # its last words (ctl/failed) may still be queued
                    raise RuntimeError(f"worker {w.slot} could not start: {w.error or f'exit code {w.proc.returncode}'}")
            if all(w.state == "initialized" for w in self.workers):
                break
            if self.notifier is not None:
                self.notifier.tick()
        self._phase = "serve"
        if self._stop:  # stopped while starting: none serves (each exits on its closed control socket)
            return
        for w in self.workers:
            self._go(w)

    def stats(self, top_n: int | None = None) -> dict:
        """The aggregate (`aggregate_stats`) of every live worker's latest stats and the last
        stats of dead ones, plus the supervisor's own: workers, restarts, handovers."""
        live = [w.stats for w in self.workers if w.stats is not None]
        d = aggregate_stats(live + [self.retired], top_n=self.cfg.stats_top_n if top_n is None else top_n)
        d["workers_reporting"] = len(live)
        self._decorate(d)
        return d

    def _decorate(self, d: dict) -> None:
        for sensor, row in (d.get("per_sensor") or {}).items():
            own = self.owner.get(sensor)
            if own is not None:
                row["worker"] = own[0]
            if sensor in self.handovers:
                row["handovers"] = self.handovers[sensor]
        d["workers"] = [{"worker": w.slot, "pid": w.pid, "state": w.state, "restarts": max(0, w.inc),
                         "windows": (w.final or w.stats or {}).get("windows", 0),
                         "sensors_active": (w.final or w.stats or {}).get("sensors_active", 0),
                         "rss_mb": (w.final or w.stats or {}).get("rss_mb")} for w in self.workers]
        d["worker_restarts"] = self.restarts
        d["handovers"] = self.handovers_total
        d["handover_gap_blocks_at_most"] = self.handover_gap
        d["events_forwarded"] = self.events_forwarded
        d["supervisor_rss_mb"] = _rss_mb()

    def run(self, ready=None) -> dict:
        """Supervise until stopped; returns the aggregated final stats.

        Raises:
          RuntimeError when a worker cannot start at all (a bad model, a busy reservoir...).
        """
        if self.inbox is None:
            self.bind()
        try:
            self._start_all()
            interval = self.cfg.stats_interval_s
            next_stats = time.monotonic() + interval
            next_metrics = 0.0
            self.events.publish("lifecycle", "daemon", events_mod.lifecycle(
                "started", pid=os.getpid(), workers=self.n, listen=self.listen_endpoint))
            while not self._stop:
                self._drain_inbox(100)
                now = time.monotonic()
                self._check_workers(now)
                mx = self.metrics
                if mx is not None:  # [metrics] the supervisor's loop is what /healthz watches
                    mx.health.last_tick = now
                if not self.ready_sent and all(w.state == "serving" for w in self.workers):
                    self.ready_sent = True
                    if mx is not None:
                        mx.health.set_ready()
                    log.info("serving on %s with %d workers, events on %s", self.listen_endpoint, self.n,
                             self.events_endpoint)
                    if ready is not None:
                        ready()
                if self.notifier is not None:
                    self.notifier.tick()
                if self._reload:
                    self._reload = False
                    self._reload_now()
                if mx is not None and now >= next_metrics:  # [metrics] every sensor's row, labels bounded
                    next_metrics = now + 0.5
                    live = [w.stats for w in self.workers if w.stats is not None]
                    agg = aggregate_stats(live + [self.retired], top_n=None)
                    agg["events_forwarded"] = self.events_forwarded
                    mx.publish_stats(agg, self.cfg.threshold)
                if now >= next_stats:
                    next_stats = now + self.cfg.stats_interval_s
                    self.events.publish("stats", "daemon", self.stats())
            return self._shutdown()
        finally:
            self._cleanup()

    def _shutdown(self) -> dict:
        """Forward SIGTERM, collect every worker's final stats (each drains for drain_s),
        kill what does not exit in time, return the aggregate."""
        for w in self.workers:
            if w.alive():
                if w.state in ("starting", "initialized"):
                    self._close_ctl(w)  # not serving yet: it exits on the closed control socket
                else:
                    w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.cfg.drain_s + 20.0
        while any(w.alive() for w in self.workers) and time.monotonic() < deadline:
            self._drain_inbox(50)
        for w in self.workers:
            if w.alive():
                log.warning("worker %d did not stop in time: killed", w.slot)
                w.proc.kill()
                w.proc.wait()
        end = time.monotonic() + 0.5  # the last frames of the exited workers
        while time.monotonic() < end and self.inbox.poll(50):
            self._drain_inbox(0)
        parts = [w.final or w.stats for w in self.workers]
        final = aggregate_stats(parts + [self.retired], top_n=None)
        final["workers_reporting"] = sum(1 for p in parts if p)
        self._decorate(final)
        self.events.publish("lifecycle", "daemon", events_mod.lifecycle(
            "stopped", **{k: v for k, v in final.items() if not k.endswith("_histogram")}))
        return final

    def _cleanup(self) -> None:
        if self.metrics is not None:  # [metrics] release the port
            self.metrics.close()
        for w in self.workers:
            if w.alive():
                w.proc.kill()
                w.proc.wait()
            self._close_ctl(w)
        for sock in (self.inbox,):
            if sock is not None:
                sock.close(linger=0)
        if self.events is not None:
            self.events.close()
        if self.auth is not None:
            self.auth.close()
        if self.listener is not None:
            self.listener.close()
        if self.events_endpoint and self.events_endpoint.startswith("ipc://"):
            _unlink(self.events_endpoint[len("ipc://"):])
        if self.run_dir:
            for name in ("events", "config.json", "config.json.tmp"):
                _unlink(os.path.join(self.run_dir, name))
            try:
                os.rmdir(self.run_dir)
            except OSError:
                pass
        self.ctx.term()


def _retire(stats: dict) -> dict:
    """A dead worker's last stats, kept for its counts: without what describes a live process."""
    return {k: v for k, v in stats.items()
            if k not in ("sensors_active", "windows_per_s", "uptime_s", "seq") and not k.startswith("rss_")}


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _rss_mb():
    from .daemon import rss_mb

    return rss_mb()


def serve(cfg: Config, load, notifier) -> int:
    """``edgert serve`` with ``workers > 1`` (called by the CLI): supervise, print the final
    stats as one JSON line. Returns the exit status."""
    from .metrics import MetricsError

    try:
        sup = Supervisor(cfg, load, notifier)
    except MetricsError as exc:  # [metrics] the address is taken (or prometheus-client missing)
        notifier.status(f"failed: {exc}")
        print(f"edgert serve: {exc}", file=sys.stderr)
        return 2
    try:
        sup.bind()
    except Exception as exc:  # noqa: BLE001 - endpoint or key errors: say which, exit 1
        notifier.status(f"failed: {exc}")
        print(f"edgert serve: {exc}", file=sys.stderr)
        sup._cleanup()
        return 1
    sup.install_signal_handlers()
    try:
        final = sup.run(ready=lambda: notifier.ready(f"serving on {sup.listen_endpoint} with {sup.n} workers"))
    except RuntimeError as exc:
        notifier.status(f"failed: {exc}")
        print(f"edgert serve: {exc}", file=sys.stderr)
        return 1
    notifier.stopping(f"stopped after {final.get('windows', 0)} windows")
    print(json.dumps({"final": True, **final}, allow_nan=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
