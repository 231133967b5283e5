"""The daemon loop: sensor bus → windows → batcher → backend → scores → events.

One thread does everything: receive (``copy=False``, payload viewed with ``np.frombuffer``),
validate, append to the sensor's ring, quantize completed windows into the input tensor, run
full or due batches, publish anomalies. Bad input is dropped and counted per sensor and
reason, never raised. SIGTERM/SIGINT stop intake, flush the pending batch, and `run` returns
the final stats (the CLI prints them as one JSON line).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import time

import numpy as np
import zmq

from . import auth, backends, kernels, models, wire
from .batcher import Batcher, run_variant
from .bus import recv_frames
from .adapt import SafeNormalization
from .config import Config
from .drift import PageHinkley
from .events import STAT_NAMES, EventPublisher
from .scoring import ClassScorer, FixedThreshold, ReconstructionScorer, channel_shares
from .stats import LatencyHistogram, RateLimitedLog, SensorCounters
from .windows import SensorStream, push_block

log = logging.getLogger("edgert")

DRAIN = 256  # messages handled per poll wake-up before checking deadlines


class Daemon:
    """The edgert daemon. `run()` blocks until `stop()` (or a signal)."""

    def __init__(self, cfg: Config, ctx: zmq.Context | None = None):
        self.cfg = cfg
        # Load (or compile) every kernel now, not inside the first message's handling, so the
        # first decision is not 100-300 ms late.
        self.warmup_s = kernels.warmup()
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
        self.counters = SensorCounters()
        self.latency = LatencyHistogram()
        self.rlog = RateLimitedLog()
        self.streams: dict[str, SensorStream] = {}
        self.names: list[str] = []
        self.win_counts = np.zeros(cfg.max_sensors, dtype=np.int64)
        self.anom_counts = np.zeros(cfg.max_sensors, dtype=np.int64)
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
            log.info("drift on %s (%s)%s", sensor, ", ".join(which), "; threshold recalibrates" if recal else "")
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
        log.info("adaptation on %s: %s", sensor, ev)

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
        exactly where they were: none dropped, none scored twice), and build a backend that
        passes its self-test. Otherwise it is refused and the running model keeps running.
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
        if isinstance(self.threshold, FixedThreshold):
            self.threshold = FixedThreshold(new.threshold)
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
    def bind(self) -> None:
        """Bind the input and event sockets (separate from `run` so tests can learn ports)."""
        kind = zmq.SUB if self.cfg.socket == "sub" else zmq.PULL
        self.auth = auth.ServerAuth(self.ctx, self.cfg)  # [auth] CURVE + ZAP, or one warning for open tcp
        self.sock = self.ctx.socket(kind)
        self.sock.setsockopt(zmq.RCVHWM, self.cfg.rcvhwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        if kind == zmq.SUB:
            self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.auth.secure(self.sock, "sensors")  # [auth]
        self.sock.bind(self.cfg.listen)
        self.listen_endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.events = EventPublisher(self.ctx, self.cfg.events,
                                     secure=lambda s: self.auth.secure(s, "events"))  # [auth]
        self.events_endpoint = self.events.endpoint

    def stop(self, *_args) -> None:
        self._stop = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    # -- input ----------------------------------------------------------------
    def _drop(self, sensor, reason: str, message: str) -> None:
        self.counters.drop(sensor, reason)
        self.rlog.warning((sensor, reason), f"dropped block: {message}")

    def _stream(self, sensor: str) -> SensorStream | None:
        st = self.streams.get(sensor)
        if st is None:
            if len(self.names) >= self.cfg.max_sensors:
                return None
            st = SensorStream(sensor, len(self.names), self.model.n_channels, self.model.window,
                              self.model.hop, self.cfg.ring_capacity, self.cfg.gap_samples)
            st.note = functools.partial(self.counters.note, sensor)
            if self.norm is not None:
                st.norm_mean = self.norm.mean[st.index]
                st.norm_inv_std = self.norm.inv_std[st.index]
            self.streams[sensor] = st
            self.names.append(sensor)
        return st

    def handle(self, frames, t_recv: int) -> None:
        """Validate one message and push its samples; every failure is a counted drop."""
        try:
            blk = wire.decode(frames, check_finite=kernels.count_nonfinite)
        except wire.WireError as exc:
            self._drop(exc.sensor, exc.reason, str(exc))
            return
        sensor = blk.sensor
        if self.auth is not None and self.auth.sensor_keys and not self.auth.sensor_allowed(frames, sensor):  # [auth]
            self._drop(sensor, "auth", f"{sensor}: sent by a CURVE key not bound to it in sensor_keys")  # [auth]
            return  # [auth]
        n, c = blk.samples.shape
        if c != self.model.n_channels:
            self._drop(sensor, "channels", f"{sensor}: block has {c} channels, model "
                       f"{self.model.name} expects {self.model.n_channels} ({', '.join(self.model.channels)})")
            return
        st = self._stream(sensor)
        if st is None:
            self._drop(sensor, "too_many_sensors", f"{sensor}: more than {self.cfg.max_sensors} sensors")
            return
        try:
            st.check(blk.seq, blk.t0, blk.dt, n, st.note)
        except wire.WireError as exc:
            self._drop(sensor, exc.reason, str(exc))
            return
        self.counters.messages[sensor] += 1
        self.counters.samples[sensor] += n
        push_block(st, blk.samples, blk.seq, t_recv, self.batcher)

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
            shares = channel_shares(ch_err[idx])
            self._publish_anomalies(b, idx, scores, thr, ch_err, shares, lat_us, k, cls)

    def _publish_scores(self, b, sidx, scores, thr, flags, k) -> None:
        """One ``event/scores/<sensor>`` per sensor in the batch: every window's score (for plots)."""
        for s in np.unique(sidx):
            sel = sidx == s
            sensor = self.names[int(s)]
            self.events.publish("scores", sensor, {
                "sensor": sensor, "t_start": b.t_start[:k][sel].tolist(),
                "score": scores[sel].astype(float).tolist(), "threshold": thr[sel].astype(float).tolist(),
                "anomaly": flags[sel].tolist(), "model": self.model.name})

    def _publish_anomalies(self, b, idx, scores, thr, ch_err, shares, lat_us, k, cls=None) -> None:
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
                "batch": int(k),
            })

    # -- stats ----------------------------------------------------------------
    def stats(self) -> dict:
        d = self.counters.as_dict()
        n = len(self.names)
        d["windows"] = int(self.win_counts[:n].sum())
        d["anomalies"] = int(self.anom_counts[:n].sum())
        d["per_sensor"] = {s: {"windows": int(self.win_counts[i]), "anomalies": int(self.anom_counts[i]),
                               "restarts": self.streams[s].restarts}
                           for i, s in enumerate(self.names)}
        if self.classifier is not None:
            names = self.classifier.class_names
            for i, s in enumerate(self.names):
                row = self.class_counts[i]
                d["per_sensor"][s]["classes"] = {names[j]: int(row[j]) for j in np.flatnonzero(row)}
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
            "drifts": self.drifts,
            "adaptations": {"accepted": self.norm.accepted, "refused": self.norm.refused}
            if self.norm is not None else None,
            "lost_windows": self.lost_windows,
            "batch_reasons": dict(self.batcher.reasons),
            "p50_latency_us": self.latency.quantile(0.50),
            "p99_latency_us": self.latency.quantile(0.99),
            "p999_latency_us": self.latency.quantile(0.999),
            "max_latency_us": self.latency.max_us,
            "uptime_s": round(elapsed, 3),
            "kernel_warmup_s": round(self.warmup_s, 3),
            "first_decision_s": round((self.first_decision_ns - self.started_ns) * 1e-9, 6)
            if self.first_decision_ns else None,
            "windows_per_s": round(d["windows"] / elapsed, 1) if elapsed > 0 else 0.0,
            "events_published": self.events.published if self.events else 0,
            **auth.stats(self.auth),  # [auth] curve, auth_refused, auth_refused_by
            **rss_breakdown(),
        })
        return d

    # -- main loop --------------------------------------------------------------
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
        self.events.publish("lifecycle", "daemon", {"state": "started", "model": self.model.name,
                                                     "backend": self.backend.name, "pid": os.getpid()})
        log.info("serving %s on %s (%s), events on %s, backend %s, kernels %s",
                 self.model.name, self.listen_endpoint, self.cfg.socket, self.events_endpoint,
                 self.backend.name, kernels.BACKEND)
        if ready is not None:
            ready()
        recv = functools.partial(recv_frames, sock)
        perf = time.perf_counter_ns
        while not self._stop:
            due = batcher.deadline_ns()
            if due is None:
                timeout = 100
            else:
                timeout = max(0, min(100, -(-(due - perf()) // 1_000_000)))
            if poller.poll(timeout):
                for _ in range(DRAIN):
                    try:
                        frames = recv()
                    except zmq.Again:
                        break
                    t = perf()
                    self.handle(frames, t)
                    if batcher.n and t >= batcher.t_recv[0] + batcher.max_delay_ns:
                        batcher.flush("deadline")
            batcher.poll()
            if tick is not None:
                tick()
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
                self.events.publish("stats", "daemon", self.stats())
        # Stop: no more input; score what is pending, say goodbye.
        sock.close(linger=0)
        batcher.flush("flush")
        if self.reservoir is not None:
            self.reservoir.close()
        final = self.stats()
        final["latency_histogram"] = self.latency.sparse()  # final only: keeps stats events small
        self.events.publish("lifecycle", "daemon", {"state": "stopped", **final})
        self.events.close()
        self.auth.close()  # [auth] after the secured sockets are closed
        self.backend.close()
        if self.cls_backend is not None:
            self.cls_backend.close()
        return final


def make_threshold(cfg: Config, calibrated: float):
    """The thresholder named by ``cfg.threshold``, warm-started from the calibrated value."""
    from .thresholds import QuantileThreshold, SpotThreshold

    if cfg.threshold == "spot":
        return SpotThreshold(q=cfg.risk_q, calibrated=calibrated, max_sensors=cfg.max_sensors)
    if cfg.threshold == "dspot":
        return SpotThreshold(q=cfg.risk_q, calibrated=calibrated, depth=200, max_sensors=cfg.max_sensors)
    if cfg.threshold == "quantile":
        return QuantileThreshold(calibrated=calibrated, max_sensors=cfg.max_sensors)
    return FixedThreshold(calibrated)


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
