"""The daemon: the engine (`edgert.pipeline.Pipeline`) behind ZeroMQ sockets, timers and signals.

One thread does everything: receive (``copy=False``, payload viewed with ``np.frombuffer``)
up to DRAIN messages per wake-up and hand each to the pipeline, which validates it, appends it
to the sensor's ring, quantizes completed windows into the input tensor, runs full or due
batches and publishes anomalies through the events socket (its `EventSink`). Bad input is
dropped and counted per sensor and reason, never raised; an exception while handling one
message is counted (``internal``) and logged with its traceback, and the loop goes on.

What the network can make the daemon hold is bounded by its settings: receive queues by a
byte budget (``max_queue_mb`` → RCVHWM) and a frame size limit (``ZMQ_MAXMSGSIZE``), work per
message by ``max_block_samples``, sensor state by ``max_sensors`` with idle eviction, counts
for ids without a slot by ``max_unknown_ids``. SIGTERM/SIGINT stop intake, handle what is
queued for up to ``drain_s`` (the rest is counted as ``discarded_at_stop``), flush the pending
batch, and `run` returns the final stats (the CLI prints them as one JSON line). SIGHUP
reloads what can change live (`reload`). With ``metrics_listen``, `edgert.metrics` serves
Prometheus /metrics, /healthz and /readyz from snapshots the loop publishes ([metrics]).

[mqtt] ``listen`` and ``events`` may each be several endpoints: mqtt:// ones are broker
clients (`edgert.mqtt`): events go to every sink through `edgert.events.FanOut`, and blocks
from a broker are queued by paho's thread and handed to the same ``handle`` by this thread,
as a separate step of the loop.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import signal
import socket as pysocket
import time

import zmq

from . import auth, events, kernels
from . import mqtt as mqtt_mod  # [mqtt] (paho itself is imported only for mqtt:// endpoints)
from .bus import recv_frames
from .config import Config, endpoints
from .events import EventPublisher, FanOut
from .pipeline import Pipeline, make_threshold  # noqa: F401  (make_threshold: the daemon's name for it)
from .stats import json_safe

log = logging.getLogger("edgert")

DRAIN = 256  # messages handled per poll wake-up before checking timers
CHUNK = 32  # most messages received before they are handled together (Pipeline.handle_many)
# Receive queue cost of one message beyond its payload: libzmq keeps small messages inside its
# shared 8 KiB decode buffers, so a queued 768-byte block held 3-7 KB of RSS (measured).
MSG_OVERHEAD_BYTES = 4096


class Daemon:
    """The edgert daemon: sockets, timers and signals around one `Pipeline` (``self.pipeline``).
    `run()` blocks until `stop()` (or a signal).

    The engine's attributes (``model``, ``backend``, ``streams``, ``threshold``, ``batcher``,
    ``handle``, ``check_model``, …) are readable on the daemon too, for tools and tests written
    against it; set them on ``pipeline``.
    """

    def __init__(self, cfg: Config, ctx: zmq.Context | None = None):
        self.cfg = cfg
        self.metrics = None  # [metrics] edgert.metrics.Metrics: up (and /readyz 503) before the model loads
        if cfg.metrics_listen:
            from .metrics import Metrics

            self.metrics = Metrics(cfg.metrics_listen, cfg.metrics_max_sensors, cfg.health_stall_s)
        try:
            self.pipeline = Pipeline(config=cfg)
        except BaseException:
            if self.metrics is not None:  # [metrics] release the port
                self.metrics.close()
            raise
        # The kernels are compiled (or loaded) now: the compiler's code need not stay resident.
        self.compiler_pages_released = release_compiler_pages()
        log.debug("paged out %.0f MB of the JIT compiler's code", self.compiler_pages_released / 2**20)
        self.ctx = ctx or zmq.Context.instance()
        self.discarded_at_stop = 0
        self._reload = False
        self.reload_config = None  # callable() -> Config, set by the CLI (SIGHUP re-reads the file)
        self.reloads = 0
        self._ipc_paths: list[str] = []
        self._monitor = None
        self.peer_events = {"connected": 0, "disconnected": 0}
        self._backlog = False  # the last wake-up found more than DRAIN messages waiting
        self._next_trim = 0.0
        self._rss_low = None
        self.memory_trims = 0
        self._stop = False
        self.sock = None
        self.events = None
        self.listen_endpoint = None
        self.events_endpoint = None
        self.auth = None  # [auth] edgert.auth.ServerAuth, set in bind()
        self.mqtt_sinks: list = []  # [mqtt] MqttEventSink per mqtt:// events endpoint
        self.mqtt_in: list = []  # [mqtt] MqttIngest per mqtt:// listen endpoint
        self.listen_fd = None  # [workers] an inherited listening socket to serve on (ZMQ_USE_FD)
        self.make_events = None  # [workers] callable(ctx) -> EventSink, instead of binding cfg.events

    def __getattr__(self, name):
        # Only called for names the daemon itself does not have: the engine's.
        pipeline = self.__dict__.get("pipeline")
        if pipeline is None:
            raise AttributeError(name)
        return getattr(pipeline, name)

    # -- set-up -------------------------------------------------------------
    def queue_limits(self) -> tuple[int, int]:
        """(RCVHWM in messages per connection, ZMQ_MAXMSGSIZE in bytes) from the settings.

        The HWM comes from the byte budget ``max_queue_mb`` over the cost of one queued block
        of a window's worth of f8 samples plus libzmq's per-message overhead; the frame limit
        from the largest block the daemon accepts (``max_block_samples`` of the model's
        channels as f8), so a 512 MiB frame disconnects its sender instead of being buffered.
        """
        cfg, m = self.cfg, self.model
        hwm = cfg.rcvhwm or max(16, int(cfg.max_queue_mb * 2**20 // (MSG_OVERHEAD_BYTES + m.window * m.n_channels * 8)))
        maxmsg = cfg.max_msg_bytes or cfg.max_block_samples * m.n_channels * 8
        return hwm, maxmsg

    def bind(self) -> None:
        """Bind the input and event sockets (separate from `run` so tests can learn ports).

        Raises:
          OSError when an ipc:// path is held by a live process (a second daemon must not
          silently take the first one's socket over).
        """
        kind = zmq.SUB if self.cfg.socket == "sub" else zmq.PULL
        # [mqtt] listen and events may each be several endpoints: ZeroMQ ones are bound here,
        # mqtt:// ones are broker clients (edgert.mqtt).
        zmq_listen = [ep for ep in endpoints(self.cfg.listen) if not mqtt_mod.is_mqtt(ep)]
        zmq_events = [ep for ep in endpoints(self.cfg.events) if not mqtt_mod.is_mqtt(ep)]
        if len(zmq_listen) + len(zmq_events) < len(endpoints(self.cfg.listen)) + len(endpoints(self.cfg.events)):
            mqtt_mod.paho()  # MissingExtra naming the extra before anything is bound
        if self.listen_fd is None:  # [workers] else the supervisor claimed it
            for ep in zmq_listen:
                _claim_ipc(ep)
        if self.make_events is None:  # [workers]
            for ep in zmq_events:
                _claim_ipc(ep)
        self.auth = auth.ServerAuth(self.ctx, dataclasses.replace(  # [auth] CURVE + ZAP, or one warning for open tcp
            self.cfg, listen=zmq_listen[0] if zmq_listen else "", events=zmq_events[0] if zmq_events else ""))
        self.sock = self.ctx.socket(kind)
        hwm, maxmsg = self.queue_limits()
        self.sock.setsockopt(zmq.RCVHWM, hwm)
        self.sock.setsockopt(zmq.MAXMSGSIZE, maxmsg)
        self.sock.setsockopt(zmq.LINGER, 0)
        if kind == zmq.SUB:
            self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.auth.secure(self.sock, "sensors", monitor=False)  # [auth] one monitor per socket: ours forwards
        self._monitor = self.sock.get_monitor_socket(
            zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | auth.HANDSHAKE_FAILED)
        if self.listen_fd is not None:  # [workers] accept on the supervisor's socket (edgert/workers.py)
            self.sock.setsockopt(zmq.USE_FD, self.listen_fd)
        for ep in zmq_listen:  # [mqtt] none when the daemon only listens on a broker
            self.sock.bind(ep)
        self.listen_endpoint = (self.sock.getsockopt_string(zmq.LAST_ENDPOINT) if zmq_listen
                                else endpoints(self.cfg.listen)[0])
        sinks, zmq_sinks = [], []
        if self.make_events is not None:  # [workers] events go to the supervisor
            sinks.append(self.make_events(self.ctx))
            zmq_sinks.append(sinks[-1])
        else:
            for ep in endpoints(self.cfg.events):
                if mqtt_mod.is_mqtt(ep):  # [mqtt]
                    sinks.append(mqtt_mod.MqttEventSink(ep, self.cfg, self.model.name, self.backend.name))
                    self.mqtt_sinks.append(sinks[-1])
                else:
                    sinks.append(EventPublisher(self.ctx, ep, secure=lambda s: self.auth.secure(s, "events")))  # [auth]
                    zmq_sinks.append(sinks[-1])
        self.events = sinks[0] if len(sinks) == 1 else FanOut(sinks)
        self.events_endpoint = zmq_sinks[0].endpoint if zmq_sinks else self.mqtt_sinks[0].endpoint
        self.pipeline.sink = self.events  # anomaly, scores, drift, adapt and model events go out here
        m = self.model  # [mqtt] the broker input's queue: the same byte budget as a ZeroMQ connection's
        for ep in endpoints(self.cfg.listen):
            if mqtt_mod.is_mqtt(ep):
                self.mqtt_in.append(mqtt_mod.MqttIngest(
                    ep, self.cfg, self.ctx, max_messages=hwm, max_bytes=int(self.cfg.max_queue_mb * 2**20),
                    max_payload=mqtt_mod.payload_limit(self.cfg, m.n_channels)))
        if self.auth.sensor_keys:  # [auth] a sensor id may only come from its key
            self.pipeline.frame_check = self.auth.sensor_allowed
        owned = [self.listen_endpoint] if self.listen_fd is None else []  # [workers] not the supervisor's file
        if self.make_events is None:
            owned += [s.endpoint for s in zmq_sinks]
        self._ipc_paths = [ep[len("ipc://"):] for ep in owned if ep.startswith("ipc://")]
        log.info("receive queue: RCVHWM %d messages per connection (max_queue_mb %g), frames over %d bytes "
                 "disconnect their sender", hwm, self.cfg.max_queue_mb, maxmsg)

    def stop(self, *_args) -> None:
        self._stop = True
        if self.metrics is not None:  # [metrics] /readyz: 503 from now on
            self.metrics.health.set_stopping()

    def close(self) -> None:
        """Close the sockets of a daemon that was bound but will not `run` (run closes them
        itself), and remove its ipc socket files."""
        for sock in (self.sock, self._monitor):
            if sock is not None and not sock.closed:
                sock.close(linger=0)
        for src in self.mqtt_in:  # [mqtt]
            src.close()
        if self.events is not None:
            self.events.close()
        if self.auth is not None:
            self.auth.close()  # [auth] ZAP and monitor threads
        if self.metrics is not None:  # [metrics]
            self.metrics.close()
        for path in self._ipc_paths:
            try:
                os.unlink(path)
            except OSError:
                pass

    def request_reload(self, *_args) -> None:
        self._reload = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGHUP, self.request_reload)

    # -- reload (SIGHUP) ----------------------------------------------------------
    def reload(self) -> dict:
        """Re-read the configuration (``reload_config``) and apply what can change live
        (`config.RELOADABLE`, through `Pipeline.apply_config`: thresholds, publish_scores,
        intervals, sensor limits, the allowlist...; and the log level here); look at the model
        directory now. Keys that need a restart are named, not applied. Publishes
        ``event/lifecycle/daemon`` with state ``reloaded``.

        Returns:
          ``{"applied": [...], "needs_restart": [...], "error": str | None, "model": ...}``.
        """
        self.reloads += 1
        out = {"applied": [], "needs_restart": [], "error": None}
        try:
            new = self.reload_config() if self.reload_config is not None else self.cfg
        except Exception as exc:  # a broken file: keep running on the old settings
            out["error"] = str(exc)
            log.warning("reload refused, settings unchanged: %s", exc)
        else:
            out.update(self.pipeline.apply_config(new))
            if "log_level" in out["applied"]:
                logging.getLogger().setLevel(self.cfg.log_level)
                log.setLevel(self.cfg.log_level)
            for key in out["needs_restart"]:
                log.warning("reload: %s changed, but needs a restart to take effect", key)
        out["model"] = self.pipeline.check_model() if self.events is not None else None
        log.info("reloaded: applied %s; needs restart %s", out["applied"] or "nothing", out["needs_restart"] or "nothing")
        if self.events is not None:
            self.events.publish("lifecycle", "daemon", events.lifecycle("reloaded", **out))
        return out

    # -- stats ----------------------------------------------------------------
    def stats(self, top_n: int | None = None) -> dict:
        """The engine's stats (`Pipeline.stats`) and the transport's: what was discarded at
        stop, peers and CURVE refusals, reloads, memory returned, events published, RSS.
        JSON-safe (no NaN)."""
        d = self.pipeline.stats(top_n)
        d.update({
            "discarded_at_stop": self.discarded_at_stop,
            "peers": dict(self.peer_events),
            "reloads": self.reloads,
            "memory_trims": self.memory_trims,
            "events_published": self.events.published if self.events else 0,
            **auth.stats(self.auth),  # [auth] curve, auth_refused, auth_refused_by
            **self._mqtt_stats(),  # [mqtt]
            **rss_breakdown(),
        })
        return json_safe(d)

    def _mqtt_stats(self) -> dict:
        """[mqtt] ``mqtt_dropped`` (events lost, all MQTT sinks), ``mqtt_dropped_by_kind``, and
        ``mqtt``: each sink's and input's counts. Empty without mqtt:// endpoints."""
        if not self.mqtt_sinks and not self.mqtt_in:
            return {}
        out = [s.stats() for s in self.mqtt_sinks]
        by_kind: dict = {}
        for s in out:
            for k, n in s["dropped_by_kind"].items():
                by_kind[k] = by_kind.get(k, 0) + n
        return {"mqtt_dropped": sum(by_kind.values()), "mqtt_dropped_by_kind": by_kind,
                "mqtt": {"events": out, "sensors": [s.stats() for s in self.mqtt_in]}}

    # -- main loop --------------------------------------------------------------
    def _trim_memory(self) -> None:
        """After a backlog has drained, give the freed receive-queue memory back to the OS.

        glibc keeps freed heap (libzmq's message buffers, in its I/O thread's arena) mapped, so
        without this RSS stays at its overload peak for good. At most every 10 s, only when
        the queue is empty (we kept up) and the anonymous RSS is well above its low mark.
        """
        now = time.monotonic()
        if self._backlog or now < self._next_trim or _malloc_trim is None:
            return
        anon = rss_breakdown().get("rss_anon_mb")
        if anon is None:
            return
        self._rss_low = anon if self._rss_low is None else min(self._rss_low, anon)
        if anon > self._rss_low * 1.1 + 8:
            self._next_trim = now + 10.0
            _malloc_trim(0)
            self.memory_trims += 1

    def _drain_monitor(self) -> None:
        """Count peers connecting and leaving (a frame over ZMQ_MAXMSGSIZE shows as a disconnect)."""
        mon = self._monitor
        if mon is None:
            return
        while True:
            try:
                frames = mon.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            # Frame 0: uint16 event, uint32 value (zmq_socket_monitor); frame 1: the endpoint.
            # Parsed here: zmq.utils.monitor would import asyncio into the daemon.
            event = int.from_bytes(frames[0][:2], "little")
            if event == zmq.EVENT_ACCEPTED:
                self.peer_events["connected"] += 1
            elif event == zmq.EVENT_DISCONNECTED:
                self.peer_events["disconnected"] += 1
            elif self.auth is not None:  # [auth] a failed CURVE handshake: counted by cause
                self.auth.monitor_event("sensors", event, int.from_bytes(frames[0][2:6], "little"), frames[1])

    def _drain_at_stop(self, sock) -> None:
        """Stop intake, handle what is queued for up to ``drain_s``, count the rest."""
        if self.cfg.socket == "sub":
            sock.setsockopt(zmq.UNSUBSCRIBE, b"")  # publishers stop sending to us
        end = time.monotonic() + self.cfg.drain_s
        perf = time.perf_counter_ns
        handle, batcher = self.pipeline.handle, self.pipeline.batcher
        while time.monotonic() < end:
            try:
                frames = recv_frames(sock)
            except zmq.Again:
                return
            t = perf()
            handle(frames, t)
            if batcher.n and t >= batcher.t_recv[0] + batcher.max_delay_ns:
                batcher.flush("deadline")
        # Out of time: count what is still queued (reading a message is ~1 µs, handling it
        # ~20 µs); a sender that keeps pushing cannot hold the stop past another drain_s.
        end = time.monotonic() + max(self.cfg.drain_s, 0.5)
        while time.monotonic() < end:
            try:
                recv_frames(sock)
            except zmq.Again:
                return
            self.discarded_at_stop += 1

    def run(self, ready=None, tick=None) -> dict:
        """Serve until stopped. Returns the final stats.

        Args:
          ready: optional ``callable()`` called once the sockets are bound and input is taken.
          tick: optional ``callable()`` called on every loop iteration (at least every 100 ms
            while idle), e.g. `edgert.sdnotify.Notifier.tick` for the systemd watchdog.
        """
        if self.sock is None:
            self.bind()
        pipe = self.pipeline
        sock, batcher, handle_many = self.sock, pipe.batcher, pipe.handle_many
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        for src in self.mqtt_in:  # [mqtt] the broker input's queue wakes the loop too
            poller.register(src.sock, zmq.POLLIN)
        mqtt_in = self.mqtt_in
        pipe.started_ns = time.perf_counter_ns()
        next_stats = time.monotonic() + self.cfg.stats_interval_s
        watch = self.cfg.watch_model_s
        next_watch = time.monotonic() + watch if watch > 0 else float("inf")
        drift_every = self.cfg.drift_interval_s
        next_drift = time.monotonic() + drift_every if drift_every > 0 else float("inf")
        self.events.publish("lifecycle", "daemon", events.lifecycle(
            "started", model=self.model.name, backend=self.backend.name, pid=os.getpid()))
        log.info("serving %s on %s (%s), events on %s, backend %s, kernels %s",
                 self.model.name, self.listen_endpoint, self.cfg.socket, self.events_endpoint,
                 self.backend.name, kernels.BACKEND)
        mx = self.metrics  # [metrics]
        if mx is not None and not self._stop:
            mx.publish(self)
            mx.health.set_ready()
        # Start-up made ~10^5 long-lived objects (numba, LLVM, the model): move them out of the
        # cyclic collector's reach, or every full collection walks them all again (6 % of the
        # loop's CPU under load, measured with py-spy).
        gc.collect()
        gc.freeze()
        if ready is not None:
            ready()
        recv = recv_frames
        perf = time.perf_counter_ns
        while not self._stop:
            due = batcher.deadline_ns()
            if due is None:
                timeout = 100
            else:
                timeout = max(0, min(100, -(-(due - perf()) // 1_000_000)))
            if poller.poll(timeout):
                pipe._now_wall = time.time_ns()
                self._backlog = True
                # The wake-up's messages in chunks, each in one go (compiled where plain). The
                # chunk starts at 1 and doubles while messages keep waiting, up to CHUNK: a message
                # that arrives alone is handled at once, by the per-message path (latency), a
                # backlog in chunks that amortize the compiled call (throughput). Measured at 47.6k
                # windows/s: p99 779 µs this way, 981-1496 µs with fixed chunks of 32; saturated,
                # 118-122k windows per CPU-second (chunks of 1 only: 81-83k).
                got, chunk = 0, 1
                while got < DRAIN:
                    msgs, ts = [], []
                    for _ in range(chunk):
                        try:
                            msgs.append(recv(sock))
                        except zmq.Again:
                            self._backlog = False
                            break
                        ts.append(perf())
                    if msgs:
                        handle_many(msgs, ts)
                        got += len(msgs)
                    if not self._backlog:
                        break
                    chunk = min(2 * chunk, CHUNK, DRAIN - got)
            for src in mqtt_in:  # [mqtt] blocks from a broker: same handle(), a separate step
                src.drain(pipe, DRAIN)
            batcher.poll()
            if mx is not None:  # [metrics] O(1) a wake-up: a timestamp, a snapshot at most every 0.5 s
                mx.tick(self)
            if tick is not None:
                tick()
            if self._reload:
                self._reload = False
                self.reload()
                drift_every = self.cfg.drift_interval_s
                next_drift = time.monotonic() + drift_every if drift_every > 0 else float("inf")
                watch = self.cfg.watch_model_s
                next_watch = time.monotonic() + watch if watch > 0 else float("inf")
            if time.monotonic() >= next_drift:
                next_drift = time.monotonic() + drift_every
                pipe.check_drift()
            if time.monotonic() >= next_watch:
                next_watch = time.monotonic() + watch
                pipe.check_model()
            if pipe.reservoir is not None:
                pipe.reservoir.maybe_flush()  # also while idle: the sidecar's count reaches disk
            if time.monotonic() >= next_stats:
                next_stats = time.monotonic() + self.cfg.stats_interval_s
                pipe._now_wall = time.time_ns()
                pipe._wall_offset = pipe._now_wall - perf()  # follows clock steps (NTP)
                self._drain_monitor()
                pipe.evict_idle()
                self._trim_memory()
                self.events.publish("stats", "daemon", self.stats())
        # Stop: no more input; handle what is queued (bounded), score what is pending, say goodbye.
        self._drain_at_stop(sock)
        for src in mqtt_in:  # [mqtt] stop the broker input, handle what it queued (drain_s), count the rest
            src.stop_input()
            end = time.monotonic() + self.cfg.drain_s
            while time.monotonic() < end and src.drain(pipe, DRAIN):
                pass
            self.discarded_at_stop += src.discard()
            src.close()
        sock.close(linger=0)
        batcher.flush("flush")
        self._drain_monitor()
        if self._monitor is not None:
            self._monitor.close(linger=0)
        if pipe.reservoir is not None:
            pipe.reservoir.close()
            pipe.reservoir = None
        final = self.stats(top_n=len(pipe.streams) + len(pipe.unknown.by_id))
        final["latency_histogram"] = self.latency.sparse()  # final only: keeps stats events small
        final["queue_delay_histogram"] = self.queue_delay.sparse()
        self.events.publish("lifecycle", "daemon", events.lifecycle("stopped", **final))
        if mx is not None:  # [metrics] release the port
            mx.close()
        self.events.close()
        self.auth.close()  # [auth] after the secured sockets are closed
        for path in self._ipc_paths:  # a clean exit leaves no socket file behind
            try:
                os.unlink(path)
            except OSError:
                pass
        pipe.close()
        return final


def rss_breakdown() -> dict:
    """RSS in MB, split into anonymous (the daemon's own heap) and file-backed pages (shared
    libraries such as llvmlite's 178 MB libLLVM, counted as far as they are paged in)."""
    out = {"rss_mb": rss_mb()}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
                    key, val = line.split(":")
                    out[key.lower().replace("rss", "rss_") + "_mb"] = round(int(val.split()[0]) / 1024, 1)
    except OSError:
        pass
    return out


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux), NaN elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except OSError:
        return float("nan")


def _load_malloc_trim():
    """glibc's malloc_trim, or None (musl, macOS)."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_malloc_trim = _load_malloc_trim()

MADV_DONTNEED = 4
MADV_PAGEOUT = 21  # Linux >= 5.4


def release_compiler_pages(libraries=("libllvmlite",)) -> int:
    """Drop the JIT compiler's code pages from this process's resident set.

    LLVM is used to compile or load the kernels at start-up and not again while the same
    specializations serve (numba dispatches to compiled code without it), yet its ~40 MB of
    code and constants stay resident. Its code segment (``r-xp``: never written, the library
    has no text relocations) is unmapped from this process with MADV_DONTNEED: the pages stay
    in the page cache and fault back in from the file if a new specialization is ever
    compiled. Read-only data (``r--p``, which includes the relocated RELRO part) only gets
    MADV_PAGEOUT, which never loses a modified page. Writable segments are left alone.
    Returns the bytes advised (0 where unsupported: not Linux, an old kernel).
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        done = 0
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 6 or not any(lib in parts[5] for lib in libraries):
                    continue
                advice = {"r-xp": MADV_DONTNEED, "r--p": MADV_PAGEOUT}.get(parts[1])
                if advice is None:
                    continue
                a, b = (int(x, 16) for x in parts[0].split("-"))
                if libc.madvise(a, b - a, advice) == 0:
                    done += b - a
        return done
    except (OSError, AttributeError, ValueError):
        return 0


def _claim_ipc(endpoint: str) -> None:
    """Refuse an ipc:// path that a live process is listening on; remove a stale socket file.

    libzmq binds ipc paths by unlinking whatever is there, so without this check a second
    daemon would silently take the first one's socket over.
    """
    if not endpoint.startswith("ipc://") or endpoint.startswith("ipc://@"):
        return  # not ipc, or an abstract socket (no file)
    path = endpoint[len("ipc://"):]
    if path == "*" or not os.path.exists(path):
        return
    s = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect(path)
    except OSError:
        return  # nobody listens: a stale file from a crash; libzmq replaces it
    finally:
        s.close()
    raise OSError(f"{endpoint}: another process is listening on this ipc path (a second edgert serve?); "
                  "stop it or choose another path")
