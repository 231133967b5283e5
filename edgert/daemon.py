"""The daemon loop: sensor bus → windows → batcher → backend → scores → events.

One thread does everything: receive (``copy=False``, payload viewed with ``np.frombuffer``),
validate, append to the sensor's ring, quantize completed windows into the input tensor, run
full or due batches, publish anomalies. Bad input is dropped and counted per sensor and
reason, never raised; an exception while handling one message is counted (``internal``) and
logged with its traceback, and the loop goes on.

What the network can make the daemon hold is bounded by its settings: receive queues by a
byte budget (``max_queue_mb`` → RCVHWM) and a frame size limit (``ZMQ_MAXMSGSIZE``), work per
message by ``max_block_samples``, sensor state by ``max_sensors`` with idle eviction, counts
for ids without a slot by ``max_unknown_ids``. SIGTERM/SIGINT stop intake, handle what is
queued for up to ``drain_s`` (the rest is counted as ``discarded_at_stop``), flush the pending
batch, and `run` returns the final stats (the CLI prints them as one JSON line). SIGHUP
reloads what can change live (`reload`).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import signal
import socket as pysocket
import time
from collections import OrderedDict

import numpy as np
import zmq

from . import auth, backends, kernels, models, wire
from .batcher import Batcher, run_variant
from .bus import recv_frames
from .adapt import SafeNormalization
from .config import Config
from .drift import PageHinkley
from .events import STAT_NAMES, EventPublisher
from .scoring import ClassScorer, ReconstructionScorer
from .stats import BoundedCounts, LatencyHistogram, RateLimitedLog, json_safe, top_by_total
from .windows import SensorStream, push_block
from .wire import safe_id

log = logging.getLogger("edgert")

DRAIN = 256  # messages handled per poll wake-up before checking deadlines
# Receive queue cost of one message beyond its payload: libzmq keeps small messages inside its
# shared 8 KiB decode buffers, so a queued 768-byte block held 3-7 KB of RSS (measured).
MSG_OVERHEAD_BYTES = 4096


class Daemon:
    """The edgert daemon. `run()` blocks until `stop()` (or a signal)."""

    def __init__(self, cfg: Config, ctx: zmq.Context | None = None):
        self.cfg = cfg
        # Load (or compile) every kernel now, not inside the first message's handling, so the
        # first decision is not 100-300 ms late. A first run on a new CPU compiles for tens of
        # seconds: say so rather than sit silent.
        progress, timer = _warmup_progress()
        timer.start()
        try:
            self.warmup_s = kernels.warmup(progress=progress)
        finally:
            timer.cancel()
        self.model = models.load(cfg.model)
        if self.model.kind != "autoencoder":
            raise ValueError(f"{self.model.dir}: the daemon scores autoencoders; "
                             f"model kind is {self.model.kind!r}")
        self.backend = backends.create(cfg.backend, self.model, max_batch=cfg.max_batch,
                                       num_threads=cfg.num_threads)
        self.scorer = ReconstructionScorer(self.model, self.backend.max_batch,
                                           run_variant(self.backend, self.model))
        self.threshold = make_threshold(cfg, self.model.threshold)
        self.batcher = Batcher(self.backend, self.model, self._on_batch,
                               max_batch=cfg.max_batch, max_delay_us=cfg.max_delay_us)
        # Drift: per-sensor sums of the score and of each channel's RMS, accumulated per batch
        # (vectorized) and fed to Page-Hinkley once per drift interval as means.
        C = self.model.n_channels
        self._drift_acc = np.zeros((cfg.max_sensors, 1 + C))
        self._drift_rows = np.zeros((cfg.max_batch, 1 + C))
        self._drift_seen = np.zeros(cfg.max_sensors, dtype=np.int64)  # win_counts at the last check
        self.drift = PageHinkley(cfg.max_sensors * (1 + C), threshold=cfg.drift_threshold)
        self.drifts = 0
        self.norm = None
        if cfg.adapt == "safe":
            self.norm = SafeNormalization(self.model.mean, self.model.std, max_sensors=cfg.max_sensors,
                                          hold_s=cfg.adapt_hold_s, probation_s=cfg.adapt_probation_s)
        self.classifier = self.cls_backend = self.cls_scorer = None
        if cfg.classifier:
            self._add_classifier(cfg.classifier)
        self.ctx = ctx or zmq.Context.instance()
        self.latency = LatencyHistogram()  # receipt -> decision
        self.queue_delay = LatencyHistogram()  # sensor time of the block's last sample -> receipt
        self.queue_delay_unsane = 0  # windows whose sensor clock was ahead of ours (not in the histogram)
        self.rlog = RateLimitedLog()
        # Sensor table: slots 0..max_sensors-1, least recently active first (an idle one is
        # evicted to make room). `names[i]` is the sensor in slot i (None: free).
        self.streams: OrderedDict[str, SensorStream] = OrderedDict()
        self.names: list[str | None] = []
        self._free: list[int] = []
        self.win_counts = np.zeros(cfg.max_sensors, dtype=np.int64)
        self.anom_counts = np.zeros(cfg.max_sensors, dtype=np.int64)
        # Counts that survive eviction: totals over every sensor ever seen, and drops of ids
        # that hold no slot (bounded by max_unknown_ids).
        self.totals = {"messages": 0, "samples": 0, "windows": 0, "anomalies": 0, "lost_blocks": 0}
        self.drops_by_reason: dict[str, int] = {}
        self.notes_by_reason: dict[str, int] = {}
        self.unknown = BoundedCounts(cfg.max_unknown_ids)
        self.evicted = 0
        self.discarded_at_stop = 0
        self.internal_errors = 0
        self._allowed = _matcher(cfg.sensors_allowed)
        # Ring per sensor: sized to the window (kilobytes a sensor), unless the reservoir reads
        # windows back from the rings after their batch is scored: then a batch's worth more.
        self._ring_capacity = cfg.ring_capacity or (1024 if cfg.reservoir_dir else 0)
        self._wall_offset = time.time_ns() - time.perf_counter_ns()  # perf ns -> wall ns
        self._now_wall = time.time_ns()  # refreshed once per loop wake-up
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
        self.batch_errors = 0
        self.lost_windows = 0
        self.model_swaps = 0
        self.model_refusals = 0
        self._model_sig = self._model_signature()
        self.reservoir = None  # normal windows kept on disk for edgert retrain (edgert.reservoir)
        if cfg.reservoir_dir:
            from . import reservoir
            self.reservoir = reservoir.for_model(cfg.reservoir_dir, self.model, cfg.reservoir_size, cfg.reservoir_rate)
        self.started_ns = 0
        self.first_decision_ns = 0
        self.sock = None
        self.events = None
        self.listen_endpoint = None
        self.events_endpoint = None
        self.auth = None  # [auth] edgert.auth.ServerAuth, set in bind()

    def _add_classifier(self, name: str) -> None:
        c = models.load(name)
        m = self.model
        if c.kind != "classifier":
            raise ValueError(f"{c.dir}/manifest.json: field 'kind' is {c.kind!r}; --classifier needs a classifier")
        for field in ("window", "hop", "channels"):
            if getattr(c, field) != getattr(m, field):
                raise ValueError(f"{c.dir}/manifest.json: field {field!r} is {getattr(c, field)!r}, but the "
                                 f"autoencoder {m.name} has {getattr(m, field)!r}; they must see the same windows")
        self.classifier = c
        # The classifier may have no compiled variant for an accelerator: let it fall back to
        # the CPU rather than stop the daemon.
        chain = self.cfg.backend if self.cfg.backend.endswith("cpu") else f"{self.cfg.backend}|cpu"
        self.cls_backend = backends.create(chain, c, max_batch=self.batcher.max_batch,
                                           num_threads=self.cfg.num_threads)
        self.cls_scorer = ClassScorer(c, self.batcher.max_batch, run_variant(self.cls_backend, c))
        self.batcher.add_input(self.cls_backend, c)
        self.class_counts = np.zeros((self.cfg.max_sensors, len(c.class_names)), dtype=np.int64)

    # -- drift ------------------------------------------------------------------
    def check_drift(self) -> list:
        """Feed each sensor's mean score and per-channel RMS since the last call to the drift
        detectors; a drift is an ``event/drift/<sensor>`` and restarts that sensor's threshold
        calibration (adaptive thresholds only; the calibrated one stays). Returns the events."""
        ns = len(self.names)
        counts = self.win_counts[:ns] - self._drift_seen[:ns]
        self._drift_seen[:ns] = self.win_counts[:ns]
        active = np.flatnonzero(counts)
        if active.size == 0:
            return []
        means = self._drift_acc[active] / counts[active, None]
        width = means.shape[1]
        streams = (active[:, None] * width + np.arange(width)).ravel()
        hits = self.drift.update(streams, means.ravel())
        self._drift_acc[active] = 0
        out = []
        stat_names = ["score"] + [f"rms:{c}" for c in self.model.channels]
        hit_rows = hits.reshape(-1, width)  # row r: sensor active[r]
        for r in np.flatnonzero(hit_rows.any(axis=1)):
            stream = int(active[r])
            sensor = self.names[stream]
            which = [stat_names[j] for j in np.flatnonzero(hit_rows[r])]
            recal = hasattr(self.threshold, "recalibrate")
            if recal:
                self.threshold.recalibrate(int(stream))
            self.drifts += 1
            ev = {"sensor": sensor, "statistics": which, "recalibrating": recal,
                  "threshold": float(self.threshold.values(np.array([stream]))[0]), "model": self.model.name}
            self.events.publish("drift", sensor, ev)
            log.info("drift on %s (%s)%s", safe_id(sensor), ", ".join(which), "; threshold recalibrates" if recal else "")
            out.append(ev)
        return out

    def _adapted(self, ev: dict) -> None:
        """Publish a normalization adaptation step as ``event/adapt/<sensor>``; an accepted
        operating point also restarts the sensor's adaptive threshold calibration."""
        s = ev.pop("sensor_index")
        sensor = self.names[s]
        if ev["state"] == "accepted" and hasattr(self.threshold, "recalibrate"):
            self.threshold.recalibrate(s)
        self.events.publish("adapt", sensor, {"sensor": sensor, "model": self.model.name, **ev})
        log.info("adaptation on %s: %s", safe_id(sensor), ev)

    # -- model hot-swap ---------------------------------------------------------
    def _model_signature(self):
        """(mtime_ns, size) of the manifest and every file it lists: changes when a model is published.
        Only listed files: a publisher (edgert retrain) writes the next model's files under new
        names first and replaces the manifest last, so the swap happens once, at the manifest."""
        d = self.model.dir
        sig = []
        for p in [d / "manifest.json", *(d / f for f in sorted(self.model.manifest.get("files", {})))]:
            try:
                st = p.stat()
                sig.append((p.name, st.st_mtime_ns, st.st_size))
            except OSError:
                sig.append((p.name, None, None))
        return tuple(sig)

    def check_model(self) -> str | None:
        """Swap in the model now in the model directory if it changed and validates.

        Called between batches. The new model must load and verify (sha256, tensors), be the
        same kind with the same window, hop and channels (so every sensor's windows go on
        exactly where they were: none dropped, none scored twice), build a backend that
        passes its self-test, and pass `edgert.modelcheck.validate_candidate` (threshold
        within a bounded factor of the running one, sane scores on built-in normal and fault
        windows). Otherwise it is refused and the running model keeps running.
        Returns "swapped", "refused" or None (nothing changed).
        """
        sig = self._model_signature()
        if sig == self._model_sig:
            return None
        self._model_sig = sig
        old = self.model
        try:
            new = models.load(old.dir)
            for field in ("kind", "window", "hop", "channels"):
                if getattr(new, field) != getattr(old, field):
                    raise ValueError(f"{new.dir}/manifest.json: field {field!r} changed from "
                                     f"{getattr(old, field)!r} to {getattr(new, field)!r}; that needs a restart")
            backend = backends.create(self.cfg.backend, new, max_batch=self.cfg.max_batch,
                                      num_threads=self.cfg.num_threads)
            try:  # threshold within a factor of ours, sane scores on built-in windows
                from .modelcheck import validate_candidate

                validate_candidate(old, new, backend)
            except Exception:
                backend.close()
                raise
        except Exception as exc:
            self.model_refusals += 1
            log.warning("model update refused, %s keeps running: %s", old.name, exc)
            self.events.publish("model", "daemon", {"state": "refused", "model": old.name,
                                                    "reason": str(exc), "running": self._model_id(old)})
            return "refused"
        self.batcher.flush("swap")  # the pending windows are scored by the model they were quantized for
        old_backend = self.backend
        self.backend = backend
        self.model = new
        self._model_sig = self._model_signature()  # the new manifest's files from now on
        self.batcher.rebind(backend, new)
        self.scorer = ReconstructionScorer(new, backend.max_batch, run_variant(backend, new))
        # every threshold follows the new model: its calibrated value, warm start and ceiling
        self.threshold.rebase(new.threshold)
        if self.norm is not None:  # the new model was fitted to the machine as it is now
            self.norm.reset(new.mean, new.std)
        old_backend.close()
        self.model_swaps += 1
        info = {"state": "swapped", "model": new.name, "previous": self._model_id(old),
                "running": self._model_id(new), "backend": backend.name,
                "windows_before": int(self.win_counts[:len(self.names)].sum())}
        log.info("model swapped: %s", info)
        self.events.publish("model", "daemon", info)
        return "swapped"

    @staticmethod
    def _model_id(m) -> dict:
        files = m.manifest.get("files", {})
        return {"name": m.name, "threshold": m.threshold,
                "sha256": {k: str(v)[:16] for k, v in sorted(files.items())}}

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
        for ep in (self.cfg.listen, self.cfg.events):
            _claim_ipc(ep)
        self.auth = auth.ServerAuth(self.ctx, self.cfg)  # [auth] CURVE + ZAP, or one warning for open tcp
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
        self.sock.bind(self.cfg.listen)
        self.listen_endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.events = EventPublisher(self.ctx, self.cfg.events,
                                     secure=lambda s: self.auth.secure(s, "events"))  # [auth]
        self.events_endpoint = self.events.endpoint
        self._ipc_paths = [ep[len("ipc://"):] for ep in (self.listen_endpoint, self.events_endpoint)
                           if ep.startswith("ipc://")]
        log.info("receive queue: RCVHWM %d messages per connection (max_queue_mb %g), frames over %d bytes "
                 "disconnect their sender", hwm, self.cfg.max_queue_mb, maxmsg)

    def stop(self, *_args) -> None:
        self._stop = True

    def close(self) -> None:
        """Close the sockets of a daemon that was bound but will not `run` (run closes them
        itself), and remove its ipc socket files."""
        for sock in (self.sock, self._monitor):
            if sock is not None and not sock.closed:
                sock.close(linger=0)
        if self.events is not None:
            self.events.close()
        if self.auth is not None:
            self.auth.close()  # [auth] ZAP and monitor threads
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

    # -- input ----------------------------------------------------------------
    def _drop(self, sensor, reason: str, message: str, exc_info=None, seq: int | None = None) -> None:
        """Count a dropped block against its sensor (or the bounded table of ids without a
        slot) and its reason; log it, rate-limited, with the id escaped. `seq`, when known,
        keeps a later seq gap over this block from counting it as lost too."""
        self.drops_by_reason[reason] = self.drops_by_reason.get(reason, 0) + 1
        st = self.streams.get(sensor) if sensor is not None else None
        if st is not None:
            st.drops[reason] = st.drops.get(reason, 0) + 1
            if seq is not None:
                st.dropped(seq)
            key = (st.index, reason)
        else:
            self.unknown.add("?" if sensor is None else sensor, reason)
            key = ("?", reason)  # one log key per reason for ids without a slot
        self.rlog.warning(key, f"dropped block: {message}", exc_info=exc_info)

    def _note(self, st: SensorStream, reason: str, n: int = 1) -> None:
        self.notes_by_reason[reason] = self.notes_by_reason.get(reason, 0) + n
        st.notes[reason] = st.notes.get(reason, 0) + n

    def _admit(self, sensor: str, now: int) -> SensorStream:
        """A slot for a sensor seen for the first time (raises WireError when refused).

        With the table full, the least recently active sensor yields its slot if it has been
        silent for ``sensor_evict_s`` (a flood of one-shot ids cannot lock genuine sensors
        out); ``sensors_allowed`` refuses unknown ids before they take a slot at all.
        """
        cfg = self.cfg
        if self._allowed is not None and not self._allowed(sensor):
            raise wire.WireError("not_allowed", "sensor id is not in sensors_allowed", sensor)
        if self._free:
            idx = self._free.pop()
        elif len(self.names) < cfg.max_sensors:
            idx = len(self.names)
            self.names.append(None)
        else:
            oldest = next(iter(self.streams.values()))
            if now - oldest.last_seen < cfg.sensor_evict_s * 1e9:
                raise wire.WireError("too_many_sensors", f"all {cfg.max_sensors} sensor slots active "
                                     f"within sensor_evict_s ({cfg.sensor_evict_s:g} s)", sensor)
            self._evict(oldest)
            idx = self._free.pop()
        st = SensorStream(sensor, idx, self.model.n_channels, self.model.window, self.model.hop,
                          self._ring_capacity, cfg.gap_samples, cfg.max_seq_gap)
        st.messages = st.samples = 0
        st.drops, st.notes = {}, {}
        st.last_seen = now
        st.note = lambda reason, n=1, _st=st: self._note(_st, reason, n)
        if self.norm is not None:
            st.norm_mean = self.norm.mean[idx]
            st.norm_inv_std = self.norm.inv_std[idx]
        self.streams[sensor] = st
        self.names[idx] = sensor
        return st

    def _evict(self, st: SensorStream) -> None:
        """Free a sensor's slot and every per-slot state; its counts stay in the totals."""
        i = st.index
        b = self.batcher
        if b.n and (b.sensor_idx[:b.n] == i).any():
            b.flush("evict")  # its pending windows are scored under its own name first
        t = self.totals
        t["messages"] += st.messages
        t["samples"] += st.samples
        t["lost_blocks"] += st.lost_blocks
        t["windows"] += int(self.win_counts[i])
        t["anomalies"] += int(self.anom_counts[i])
        self.win_counts[i] = self.anom_counts[i] = 0
        width = 1 + self.model.n_channels
        self._drift_acc[i] = 0
        self._drift_seen[i] = 0
        self.drift.reset(np.arange(i * width, (i + 1) * width))
        if hasattr(self.threshold, "forget"):
            self.threshold.forget(i)
        if self.norm is not None:
            self.norm.forget(i)
        if self.classifier is not None:
            self.class_counts[i] = 0
        del self.streams[st.sensor]
        self.names[i] = None
        self._free.append(i)
        self.evicted += 1

    def evict_idle(self, now: int | None = None) -> int:
        """Evict every sensor silent for ``sensor_idle_s``. Returns how many."""
        now = time.perf_counter_ns() if now is None else now
        limit = self.cfg.sensor_idle_s * 1e9
        n = 0
        while self.streams:
            st = next(iter(self.streams.values()))  # least recently active first
            if now - st.last_seen < limit:
                break
            log.info("sensor %s idle for %.0f s: evicted", safe_id(st.sensor), (now - st.last_seen) / 1e9)
            self._evict(st)
            n += 1
        return n

    def handle(self, frames, t_recv: int) -> None:
        """Validate one message and push its samples; every failure is a counted drop, and an
        exception (a bug) is counted as ``internal`` and logged: one message never stops the loop."""
        try:
            self._handle(frames, t_recv)
        except Exception as exc:
            self.internal_errors += 1
            sensor = None
            try:
                sensor = bytes(frames[0])[:wire.MAX_SENSOR_ID].decode("utf-8", "replace")
            except Exception:
                pass
            self._drop(sensor, "internal", f"{safe_id(sensor)}: internal error while handling a block: {exc!r}",
                       exc_info=exc)

    def _handle(self, frames, t_recv: int) -> None:
        try:
            blk = wire.decode(frames, check_finite=kernels.count_nonfinite)
        except wire.WireError as exc:
            self._drop(exc.sensor, exc.reason, str(exc), seq=exc.seq)
            return
        sensor = blk.sensor
        if self.auth is not None and self.auth.sensor_keys and not self.auth.sensor_allowed(frames, sensor):  # [auth]
            self._drop(sensor, "auth", f"{safe_id(sensor)}: sent by a CURVE key not bound to it in sensor_keys", seq=blk.seq)  # [auth]
            return  # [auth]
        n, c = blk.samples.shape
        cfg = self.cfg
        if c != self.model.n_channels:
            self._drop(sensor, "channels", f"{safe_id(sensor)}: block has {c} channels, model "
                       f"{self.model.name} expects {self.model.n_channels} ({', '.join(self.model.channels)})", seq=blk.seq)
            return
        if n > cfg.max_block_samples:
            self._drop(sensor, "too_large", f"{safe_id(sensor)}: block of {n} samples, max_block_samples "
                       f"is {cfg.max_block_samples}", seq=blk.seq)
            return
        skew = cfg.max_clock_skew_s
        if skew and abs(blk.t0 - self._now_wall) > skew * 1e9:
            self._drop(sensor, "clock", f"{safe_id(sensor)}: t0 is {(blk.t0 - self._now_wall) / 1e9:+.3f} s "
                       f"from the daemon's clock (max_clock_skew_s {skew:g})", seq=blk.seq)
            return
        st = self.streams.get(sensor)
        try:
            if st is None:
                st = self._admit(sensor, t_recv)
            else:
                self.streams.move_to_end(sensor)
            st.check(blk.seq, blk.t0, blk.dt, n, st.note)
        except wire.WireError as exc:
            self._drop(sensor, exc.reason, str(exc), seq=blk.seq)
            return
        st.last_seen = t_recv
        push_block(st, blk.samples, blk.seq, t_recv, self.batcher, blk.t0 + (n - 1) * blk.dt)
        st.messages += 1
        st.samples += n

    # -- a batch is due -------------------------------------------------------
    def _on_batch(self, b: Batcher, k: int, reason: str) -> None:
        try:
            self._score_batch(b, k)
        except Exception as exc:  # a failing backend or kernel must not take the daemon down
            self.batch_errors += 1
            self.lost_windows += k
            self.rlog.warning("batch", f"batch of {k} windows failed and was lost: {exc!r}")

    def _score_batch(self, b: Batcher, k: int) -> None:
        out = self.backend.run(k)
        scores, ch_err = self.scorer.score(b.buf, out, k)
        sidx = b.sensor_idx[:k]
        cls = None
        if self.cls_backend is not None:
            cls = self.cls_scorer.classify(self.cls_backend.run(k), k)
            np.add.at(self.class_counts, (sidx, cls[0]), 1)
        thr = self.threshold.values(sidx)
        flags = scores > thr
        self.threshold.learn(sidx, scores, flags)
        t_dec = time.perf_counter_ns()
        if not self.first_decision_ns:
            self.first_decision_ns = t_dec
        lat_us = (t_dec - b.t_recv[:k]) * 1e-3
        self.latency.add(lat_us)
        # Queueing delay: the sensor's time of the message's last sample -> our receipt. Only
        # where the sensor clock is sane (not ahead of ours): a skewed clock must not pass for
        # a fast queue.
        qd_us = (b.t_recv[:k] + self._wall_offset - b.t_last[:k]) * 1e-3
        sane = qd_us >= 0
        if sane.all():
            self.queue_delay.add(qd_us)
        else:
            self.queue_delay.add(qd_us[sane])
            self.queue_delay_unsane += int(k - sane.sum())
        np.add.at(self.win_counts, sidx, 1)
        if self.reservoir is not None:  # before the normalization may change under the rows
            self.reservoir.feed(b, k, flags, self.streams, self.names)
        if self.norm is not None:
            for ev in self.norm.learn(sidx, b.stats[:k, :, 0], b.stats[:k, :, 1], flags, b.t_start[:k]):
                self._adapted(ev)
        if self.cfg.drift_interval_s > 0:
            rows = self._drift_rows[:k]
            rows[:, 0] = scores
            rows[:, 1:] = b.stats[:k, :, 2]
            np.add.at(self._drift_acc, sidx, rows)
        if self.cfg.publish_scores:
            self._publish_scores(b, sidx, scores, thr, flags, k)
        if flags.any():
            idx = np.flatnonzero(flags)
            np.add.at(self.anom_counts, sidx[idx], 1)
            shares = self.scorer.shares(b.buf, ch_err, idx)  # attribution (scoring.py)
            self._publish_anomalies(b, idx, scores, thr, ch_err, shares, lat_us, k, cls, qd_us)

    def _publish_scores(self, b, sidx, scores, thr, flags, k) -> None:
        """One ``event/scores/<sensor>`` per sensor in the batch: every window's score (for plots)."""
        for s in np.unique(sidx):
            sel = sidx == s
            sensor = self.names[int(s)]
            self.events.publish("scores", sensor, {
                "sensor": sensor, "t_start": b.t_start[:k][sel].tolist(),
                "score": scores[sel].astype(float).tolist(), "threshold": thr[sel].astype(float).tolist(),
                "anomaly": flags[sel].tolist(), "model": self.model.name})

    def _publish_anomalies(self, b, idx, scores, thr, ch_err, shares, lat_us, k, cls=None, qd_us=None) -> None:
        m = self.model
        span = (m.window - 1)
        for j, i in enumerate(idx):
            st = self.streams[self.names[b.sensor_idx[i]]]
            order = np.argsort(-shares[j])
            t_start = int(b.t_start[i])
            extra = {}
            if cls is not None:
                extra = {"class": self.classifier.class_names[int(cls[0][i])],
                         "class_prob": float(cls[1][i]), "classifier": self.classifier.name}
            self.events.publish("anomaly", st.sensor, {**extra,
                "sensor": st.sensor,
                "t_start": t_start,
                "t_end": t_start + span * st.dt,
                "score": float(scores[i]),
                "threshold": float(thr[i]),
                "channels": m.channels,
                "contributions": [float(x) for x in shares[j]],
                "channel_error": [float(x) for x in ch_err[i]],
                "top_channels": [m.channels[o] for o in order[:3]],
                "stats": {name: [float(x) for x in b.stats[i, :, s]] for s, name in enumerate(STAT_NAMES)},
                "model": m.name,
                "backend": self.backend.name,
                "seq": int(b.seq[i]),
                "latency_us": float(lat_us[i]),
                "queue_delay_us": float(qd_us[i]) if qd_us is not None and qd_us[i] >= 0 else None,
                "batch": int(k),
            })

    # -- stats ----------------------------------------------------------------
    def _sensor_row(self, st: SensorStream) -> dict:
        i = st.index
        row = {"windows": int(self.win_counts[i]), "anomalies": int(self.anom_counts[i]),
               "messages": st.messages, "lost_blocks": st.lost_blocks, "restarts": st.restarts}
        if self.classifier is not None:
            names = self.classifier.class_names
            r = self.class_counts[i]
            row["classes"] = {names[j]: int(r[j]) for j in np.flatnonzero(r)}
        return row

    def stats(self, top_n: int | None = None) -> dict:
        """Totals over every sensor ever seen, and the `top_n` sensors (default
        ``stats_top_n``; most drops first, then most windows) in ``per_sensor``, ``drops`` and
        ``notes``, so the stats stay small whatever the number of ids. JSON-safe: a figure
        that does not exist yet (no window scored) is None, never NaN."""
        top_n = self.cfg.stats_top_n if top_n is None else top_n
        streams = list(self.streams.values())
        t = self.totals
        messages = t["messages"] + sum(st.messages for st in streams)
        windows = t["windows"] + int(self.win_counts.sum())
        anomalies = t["anomalies"] + int(self.anom_counts.sum())
        lost = t["lost_blocks"] + sum(st.lost_blocks for st in streams)
        dropped = sum(self.drops_by_reason.values())
        # Which sensors to show: every id with drops competes (slot or not), then activity.
        drop_rows = {k: dict(v) for k, v in self.unknown.by_id.items()}  # drops before a slot, or without
        for st in streams:
            if st.drops:
                row = drop_rows.setdefault(st.sensor, {})
                for r, c in st.drops.items():
                    row[r] = row.get(r, 0) + c
        drops = top_by_total(drop_rows, top_n)
        shown = [s for s in drops if s in self.streams]
        if len(shown) < top_n:
            rest = sorted((st for st in streams if st.sensor not in drops),
                          key=lambda st: -int(self.win_counts[st.index]))
            shown += [st.sensor for st in rest[:top_n - len(shown)]]
        d = {
            "v": 1,
            "messages": messages,
            "samples": t["samples"] + sum(st.samples for st in streams),
            "windows": windows,
            "anomalies": anomalies,
            "received": messages + dropped,  # messages read off the socket (handled or dropped)
            "dropped": dropped,
            "drops_by_reason": dict(self.drops_by_reason),
            "lost_blocks": lost,
            "notes_by_reason": dict(self.notes_by_reason),
            "discarded_at_stop": self.discarded_at_stop,
            "internal_errors": self.internal_errors,
            "sensors_active": len(self.streams),
            "sensors_evicted": self.evicted,
            "drops": drops,
            "notes": {s: dict(self.streams[s].notes) for s in shown if self.streams[s].notes},
            "per_sensor": {s: self._sensor_row(self.streams[s]) for s in shown},
            "peers": dict(self.peer_events),
        }
        elapsed = (time.perf_counter_ns() - self.started_ns) * 1e-9 if self.started_ns else 0.0
        d.update({
            "model": self.model.name,
            "backend": self.backend.name,
            "backend_fallbacks": getattr(self.backend, "fallbacks", []),
            "kernels": kernels.BACKEND,
            "batches": self.batcher.batches,
            "batch_errors": self.batch_errors,
            "model_swaps": self.model_swaps,
            "model_refusals": self.model_refusals,
            "reloads": self.reloads,
            "memory_trims": self.memory_trims,
            "drifts": self.drifts,
            "adaptations": {"accepted": self.norm.accepted, "refused": self.norm.refused}
            if self.norm is not None else None,
            "lost_windows": self.lost_windows,
            "batch_reasons": dict(self.batcher.reasons),
            "p50_latency_us": self.latency.quantile(0.50),
            "p99_latency_us": self.latency.quantile(0.99),
            "p999_latency_us": self.latency.quantile(0.999),
            "max_latency_us": self.latency.max_us,
            "queue_delay_p50_us": self.queue_delay.quantile(0.50),
            "queue_delay_p99_us": self.queue_delay.quantile(0.99),
            "queue_delay_max_us": self.queue_delay.max_us,
            "queue_delay_clock_ahead": self.queue_delay_unsane,
            "uptime_s": round(elapsed, 3),
            "kernel_warmup_s": round(self.warmup_s, 3),
            "first_decision_s": round((self.first_decision_ns - self.started_ns) * 1e-9, 6)
            if self.first_decision_ns else None,
            "windows_per_s": round(windows / elapsed, 1) if elapsed > 0 else 0.0,
            "events_published": self.events.published if self.events else 0,
            **auth.stats(self.auth),  # [auth] curve, auth_refused, auth_refused_by
            **rss_breakdown(),
        })
        return json_safe(d)

    # -- reload (SIGHUP) ----------------------------------------------------------
    def reload(self) -> dict:
        """Re-read the configuration (``reload_config``) and apply what can change live
        (`config.RELOADABLE`: log level, thresholds, publish_scores, intervals, sensor limits,
        the allowlist...); look at the model directory now. Keys that need a restart are
        named, not applied. Publishes ``event/lifecycle/daemon`` with state ``reloaded``.

        Returns:
          ``{"applied": [...], "needs_restart": [...], "error": str | None}``.
        """
        from .config import RELOADABLE
        from dataclasses import fields as dc_fields

        self.reloads += 1
        out = {"applied": [], "needs_restart": [], "error": None}
        try:
            new = self.reload_config() if self.reload_config is not None else self.cfg
        except Exception as exc:  # a broken file: keep running on the old settings
            out["error"] = str(exc)
            log.warning("reload refused, settings unchanged: %s", exc)
        else:
            old = self.cfg
            changed = [f.name for f in dc_fields(old) if getattr(old, f.name) != getattr(new, f.name)]
            for key in changed:
                (out["applied"] if key in RELOADABLE else out["needs_restart"]).append(key)
            for key in out["applied"]:
                setattr(old, key, getattr(new, key))
            if "log_level" in out["applied"]:
                logging.getLogger().setLevel(old.log_level)
                log.setLevel(old.log_level)
            if {"threshold", "risk_q"} & set(out["applied"]):
                self.batcher.flush("reload")
                self.threshold = make_threshold(old, self.model.threshold)
            if "drift_threshold" in out["applied"]:
                self.drift.threshold = old.drift_threshold
            if "max_delay_us" in out["applied"]:
                self.batcher.max_delay_ns = int(old.max_delay_us) * 1000
            if "sensors_allowed" in out["applied"]:
                self._allowed = _matcher(old.sensors_allowed)
            if self.norm is not None and {"adapt_hold_s", "adapt_probation_s"} & set(out["applied"]):
                self.norm.hold_ns = int(max(old.adapt_hold_s, 2 * self.norm.segment_ns / 1e9) * 1e9)
                self.norm.probation_ns = int(max(old.adapt_probation_s, self.norm.segment_ns / 1e9) * 1e9)
            for key in out["needs_restart"]:
                log.warning("reload: %s changed, but needs a restart to take effect", key)
        out["model"] = self.check_model() if self.events is not None else None
        log.info("reloaded: applied %s; needs restart %s", out["applied"] or "nothing", out["needs_restart"] or "nothing")
        if self.events is not None:
            self.events.publish("lifecycle", "daemon", {"v": 1, "state": "reloaded", **out})
        return out

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
        batcher = self.batcher
        while time.monotonic() < end:
            try:
                frames = recv_frames(sock)
            except zmq.Again:
                return
            t = perf()
            self.handle(frames, t)
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
        sock, batcher = self.sock, self.batcher
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        self.started_ns = time.perf_counter_ns()
        next_stats = time.monotonic() + self.cfg.stats_interval_s
        watch = self.cfg.watch_model_s
        next_watch = time.monotonic() + watch if watch > 0 else float("inf")
        drift_every = self.cfg.drift_interval_s
        next_drift = time.monotonic() + drift_every if drift_every > 0 else float("inf")
        self.events.publish("lifecycle", "daemon", {"v": 1, "state": "started", "model": self.model.name,
                                                     "backend": self.backend.name, "pid": os.getpid()})
        log.info("serving %s on %s (%s), events on %s, backend %s, kernels %s",
                 self.model.name, self.listen_endpoint, self.cfg.socket, self.events_endpoint,
                 self.backend.name, kernels.BACKEND)
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
                self._now_wall = time.time_ns()
                self._backlog = True
                for _ in range(DRAIN):
                    try:
                        frames = recv(sock)
                    except zmq.Again:
                        self._backlog = False
                        break
                    t = perf()
                    self.handle(frames, t)
                    if batcher.n and t >= batcher.t_recv[0] + batcher.max_delay_ns:
                        batcher.flush("deadline")
            batcher.poll()
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
                self.check_drift()
            if time.monotonic() >= next_watch:
                next_watch = time.monotonic() + watch
                self.check_model()
            if self.reservoir is not None:
                self.reservoir.maybe_flush()  # also while idle: the sidecar's count reaches disk
            if time.monotonic() >= next_stats:
                next_stats = time.monotonic() + self.cfg.stats_interval_s
                self._now_wall = time.time_ns()
                self._wall_offset = self._now_wall - perf()  # follows clock steps (NTP)
                self._drain_monitor()
                self.evict_idle()
                self._trim_memory()
                self.events.publish("stats", "daemon", self.stats())
        # Stop: no more input; handle what is queued (bounded), score what is pending, say goodbye.
        self._drain_at_stop(sock)
        sock.close(linger=0)
        batcher.flush("flush")
        self._drain_monitor()
        if self._monitor is not None:
            self._monitor.close(linger=0)
        if self.reservoir is not None:
            self.reservoir.close()
        final = self.stats(top_n=len(self.streams) + len(self.unknown.by_id))
        final["latency_histogram"] = self.latency.sparse()  # final only: keeps stats events small
        final["queue_delay_histogram"] = self.queue_delay.sparse()
        self.events.publish("lifecycle", "daemon", {"state": "stopped", **final})
        self.events.close()
        self.auth.close()  # [auth] after the secured sockets are closed
        for path in self._ipc_paths:  # a clean exit leaves no socket file behind
            try:
                os.unlink(path)
            except OSError:
                pass
        self.backend.close()
        if self.cls_backend is not None:
            self.cls_backend.close()
        return final


def make_threshold(cfg: Config, calibrated: float):
    """The thresholder named by ``cfg.threshold``, warm-started from the calibrated value
    (`edgert.thresholds.make_threshold` with the daemon's settings)."""
    from .thresholds import make_threshold as make

    return make(cfg.threshold, calibrated, risk_q=cfg.risk_q, max_sensors=cfg.max_sensors)


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


def _matcher(patterns):
    """None (any id) or a predicate for ``sensors_allowed``: exact ids and fnmatch patterns."""
    if not patterns:
        return None
    exact = {p for p in patterns if not any(ch in p for ch in "*?[")}
    globs = [p for p in patterns if p not in exact]
    rx = re.compile("|".join(fnmatch.translate(p) for p in globs)) if globs else None
    return lambda sensor: sensor in exact or (rx is not None and rx.match(sensor) is not None)


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


def _warmup_progress():
    """A kernels.warmup progress callback, and a timer that says, after a second, that
    kernels are being compiled (a first run on a new CPU takes tens of seconds; a warm cache
    loads in well under a second and says nothing). Returns (callback, timer)."""
    import threading

    said = threading.Event()

    def first():
        said.set()
        log.info("compiling kernels for this CPU (first run only; later starts load them from the "
                 "numba cache; `edgert warmup` does it ahead of time)")

    def progress(step, n, name):
        if said.is_set():
            log.info("compiling kernels %d/%d: %s", step, n, name)

    timer = threading.Timer(1.0, first)
    timer.daemon = True
    return progress, timer
