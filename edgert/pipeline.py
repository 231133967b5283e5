"""The engine: windows → kernels → batcher → backend → scores, thresholds, drift, adaptation.

`Pipeline` is edgert as a library, and the one engine the daemon (`edgert.daemon`, its
transport: sockets, timers, signals) runs::

    >>> import numpy as np, edgert
    >>> from edgert.data import itsc_recording
    >>> p = edgert.Pipeline("motor-ae", backend="cpu")
    >>> s = p.score(itsc_recording("SC_A3_B0_C0_001"))  # a 30 % short circuit in phase A
    >>> len(s), bool(s.anomaly.mean() > 0.9), s.top_channel[s.anomaly][0]
    (59, True, 'ia')
    >>> p.close()

`push(sensor, samples, t0_ns, dt_ns)` feeds a live block and returns a `Decision` per window
scored; the daemon feeds raw bus messages through `handle(frames, t_recv)`, which makes no
Decision objects (it publishes anomalies from the batch arrays through its `EventSink`).
Every block, either way, gets the same checks, counts (`stats`) and bounded per-sensor state
(a table of ``max_sensors`` slots; idle sensors are evicted).
"""

from __future__ import annotations

import fnmatch
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from . import backends, kernels, models, wire
from . import config as config_mod
from .adapt import SafeNormalization
from .batcher import Batcher, run_variant
from .config import Config
from .drift import PageHinkley
from . import events
from .events import STAT_NAMES, EventSink
from .scoring import ClassScorer, ReconstructionScorer
from .stats import BoundedCounts, LatencyHistogram, RateLimitedLog, json_safe, top_by_total
from .windows import SensorStream, StreamTable, push_block, ring_capacity
from .wire import safe_id

__all__ = ["Pipeline", "Decision", "Scores", "make_threshold"]

log = logging.getLogger("edgert")

MIN_COMPILED = 3  # handle_many: fewer messages than this go the per-message way (cheaper for 1-2)


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on one window: the fields of an ``anomaly`` event (docs/wire-format.md),
    for every window, flagged or not."""

    sensor: str
    t_start: int  # ns, first sample
    t_end: int  # ns, last sample
    score: float
    threshold: float
    anomaly: bool
    contributions: tuple  # per channel (the model's order), sums to 1
    top_channels: tuple  # up to 3 channel names, largest contribution first
    seq: int  # of the block that completed the window
    latency_us: float  # receipt of that block -> decision
    cls: str | None = None  # with a classifier: the class name ...
    class_prob: float | None = None  # ... and its probability


@dataclass(frozen=True)
class Scores:
    """An offline array's windows as parallel arrays (`Pipeline.score`)."""

    t_start: np.ndarray  # int64 ns
    score: np.ndarray  # float64
    threshold: np.ndarray
    anomaly: np.ndarray  # bool
    contributions: np.ndarray  # [n, C]
    top_channel: np.ndarray  # str (object), the largest contribution's channel
    cls: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.score)

    @classmethod
    def from_decisions(cls, ds: list, channels) -> "Scores":
        C = len(channels)
        return cls(t_start=np.array([d.t_start for d in ds], dtype=np.int64),
                   score=np.array([d.score for d in ds], dtype=np.float64),
                   threshold=np.array([d.threshold for d in ds], dtype=np.float64),
                   anomaly=np.array([d.anomaly for d in ds], dtype=bool),
                   contributions=np.array([d.contributions for d in ds], dtype=np.float64).reshape(-1, C),
                   top_channel=np.array([d.top_channels[0] if d.top_channels else "" for d in ds], dtype=object),
                   cls=np.array([d.cls for d in ds], dtype=object) if ds and ds[0].cls is not None else None)


class Pipeline:
    """The engine, usable without sockets.

    Args:
      model: shipped model name or model directory (an autoencoder).
      backend: ``auto``, ``cpu``, ``edgetpu[:device=…]``, ``delegate:PATH``, or a chain ``A|B``.
      classifier: optional classifier model (same window, hop and channels).
      threshold: ``fixed`` | ``spot`` | ``dspot`` | ``quantile``.
      adapt: ``off`` | ``safe`` (`edgert.adapt`).
      config: a whole `edgert.config.Config` instead (the daemon passes its own).
      sink: an `edgert.events.EventSink` for anomaly/scores/drift/adapt/model events.
      settings: any other `Config` key (``max_batch=8``, ``publish_scores=True``, …).
    """

    def __init__(self, model: str = "motor-ae", backend: str = "auto", classifier: str | None = None,
                 threshold: str = "fixed", adapt: str = "off", *, config: Config | None = None,
                 sink: EventSink | None = None, **settings):
        if config is None:
            from dataclasses import fields as dc_fields

            unknown = sorted(set(settings) - {f.name for f in dc_fields(Config)})
            if unknown:
                raise TypeError(f"Pipeline: unknown setting(s) {', '.join(unknown)} (see edgert.config.Config)")
            # A library caller is trusted about its own clock (offline arrays start at t0 = 0):
            # the clock check, a defence against network peers, is off unless asked for.
            settings.setdefault("max_clock_skew_s", 0.0)
            config = config_mod.load(None, model=model, backend=backend, classifier=classifier or "",
                                     threshold=threshold, adapt=adapt, **settings)
        cfg = self.cfg = config
        self.sink = sink
        self.frame_check = None  # callable(frames, sensor) -> bool: e.g. CURVE sensor_keys (the daemon's)
        self._collect: list | None = None  # Decisions of the current push()/flush() (library use)
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
        if self.model.kind not in models.ERROR_KINDS:
            raise ValueError(f"{self.model.dir}: the pipeline scores {', '.join(models.ERROR_KINDS)}; "
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
        self._packer = None  # events.AnomalyPacker for the running model and backend
        self._flags = np.zeros(cfg.max_batch, bool)  # per-batch outputs of kernels.book_batch
        self._lat_us = np.zeros(cfg.max_batch)
        self._qd_us = np.zeros(cfg.max_batch)
        self._drift_seen = np.zeros(cfg.max_sensors, dtype=np.int64)  # win_counts at the last check
        self.drift = PageHinkley(cfg.max_sensors * (1 + C), threshold=cfg.drift_threshold)
        self.drifts = 0
        self.norm = None
        if cfg.adapt == "safe":
            self.norm = SafeNormalization(self.model.mean, self.model.std, max_sensors=cfg.max_sensors,
                                          hold_s=cfg.adapt_hold_s, probation_s=cfg.adapt_probation_s)
        self.commission = None
        if cfg.commission_samples:
            from .commission import Commissioning

            self.commission = Commissioning(
                self.model.mean, self.model.std, cfg.commission_samples, self.model.window, self.model.hop,
                cfg.max_sensors, cfg.commission_max_gain, self.model.manifest["normalization"].get("reference_rms"),
                cfg.commission_file or None, self.model.name, cfg.max_sensors)
            if self.norm is not None:
                self.commission.attach(self.norm)
        self.classifier = self.cls_backend = self.cls_scorer = None
        if cfg.classifier:
            self._add_classifier(cfg.classifier)
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
        self.internal_errors = 0
        self._allowed = _matcher(cfg.sensors_allowed)
        # Ring per sensor: sized to the window (kilobytes a sensor), unless the reservoir reads
        # windows back from the rings after their batch is scored: then a batch's worth more.
        self._ring_capacity = cfg.ring_capacity or (1024 if cfg.reservoir_dir else 0)
        self.table = StreamTable(cfg.max_sensors, C, ring_capacity(self.model.window, self._ring_capacity))
        self._slot_of: dict[bytes, int] = {}  # raw sensor id -> slot (the compiled path's lookup)
        self._slot_changes: list | None = None  # (raw id, slot or -1) while handle_many waits on handle
        self.batch_path = kernels.ingest_messages is not None  # False: per-message Python only
        self._wall_offset = time.time_ns() - time.perf_counter_ns()  # perf ns -> wall ns
        self._now_wall = time.time_ns()  # the daemon refreshes it once per loop wake-up
        self.batch_errors = 0
        self.batch_path_messages = 0  # messages the compiled path took whole
        self.lost_windows = 0
        self.model_swaps = 0
        self.model_refusals = 0
        self._model_sig = self._model_signature()
        self.reservoir = None  # normal windows kept on disk for edgert retrain (edgert.reservoir)
        if cfg.reservoir_dir:
            from . import reservoir
            self.reservoir = reservoir.for_model(cfg.reservoir_dir, self.model, cfg.reservoir_size, cfg.reservoir_rate)
        self.started_ns = time.perf_counter_ns()
        self.first_decision_ns = 0
        self._seq: dict[str, int] = {}  # next seq per sensor for push() without one

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
            ev = events.drift(sensor=sensor, model=self.model.name, statistics=which, recalibrating=recal,
                              threshold=float(self.threshold.values(np.array([stream]))[0]))
            self._publish("drift", sensor, ev)
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
        self._publish("adapt", sensor, events.adapt(sensor=sensor, model=self.model.name, step=ev))
        log.info("adaptation on %s: %s", safe_id(sensor), ev)

    def _commissioned(self, step: dict) -> None:
        """Publish a commissioning step as ``event/commission/<sensor>``."""
        sensor = self.names[step.pop("sensor_index")]
        self._publish("commission", sensor, events.commission(sensor=sensor, model=self.model.name, step=step))
        if step["state"] == "refused":
            log.warning("commissioning %s refused: %s", safe_id(sensor), step["reason"])
        else:
            log.info("sensor %s %s: gains %s", safe_id(sensor), step["state"], step["gains"])

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

    def check_model(self, directory=None) -> str | None:
        """Swap in the model now in the model directory if it changed and validates
        (the daemon calls this every ``watch_model_s``; `swap_model` publishes and swaps at once).

        Called between batches. The new model must load and verify (sha256, tensors), be the
        same kind with the same window, hop and channels (so every sensor's windows go on
        exactly where they were: none dropped, none scored twice), build a backend that
        passes its self-test, and pass `edgert.modelcheck.validate_candidate` (threshold
        within a bounded factor of the running one, sane scores on built-in normal and fault
        windows). Otherwise it is refused and the running model keeps running.
        Returns "swapped", "refused" or None (nothing changed).
        """
        old = self.model
        if directory is None:
            sig = self._model_signature()
            if sig == self._model_sig:
                return None
            self._model_sig = sig
        try:
            new = models.load(old.dir if directory is None else directory)
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
            self._publish("model", "daemon", events.model_refused(model=old.name, reason=str(exc),
                                                                  running=self._model_id(old)))
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
        if self.commission is not None:
            self.commission.reset(new.mean, new.std)
        old_backend.close()
        self.model_swaps += 1
        info = events.model_swapped(model=new.name, previous=self._model_id(old), running=self._model_id(new),
                                    backend=backend.name, windows_before=int(self.win_counts.sum()))
        log.info("model swapped: %s", info)
        self._publish("model", "daemon", info)
        return "swapped"

    @staticmethod
    def _model_id(m) -> dict:
        files = m.manifest.get("files", {})
        return {"name": m.name, "threshold": m.threshold,
                "sha256": {k: str(v)[:16] for k, v in sorted(files.items())}}

    # -- the library API ----------------------------------------------------------
    def push(self, sensor: str, samples, t0_ns: int, dt_ns: int, seq: int | None = None) -> list[Decision]:
        """Feed one block of a sensor's samples; return a `Decision` for every window that was
        scored during this call (windows wait in the batcher until it is full or
        ``max_delay_us`` passed: `flush` scores the rest).

        Args:
          sensor: sensor id, 1-64 UTF-8 bytes.
          samples: [n, C] array (C = the model's channels, in `model.channels` order); float
            arrays must be finite.
          t0_ns: time of the first sample, ns; dt_ns: ns between samples.
          seq: block sequence number (default: one more than this sensor's last).
        Returns:
          the decisions, oldest first.
        Raises:
          ValueError naming the sensor and the field for a block the pipeline refuses (the same
          checks, and the same counts in `stats`, as blocks off the bus).
        """
        x = np.asarray(samples)
        if x.ndim != 2:
            raise ValueError(f"{safe_id(sensor)}: samples must be [n_samples, n_channels], got shape {x.shape}")
        if seq is None:
            seq = self._seq.get(sensor, 0)
        self._seq[sensor] = int(seq) + 1
        try:
            wire.dtype_code(x.dtype)
        except ValueError:  # e.g. int64 or float16: held as f8 (a bus block must be a wire dtype)
            x = x.astype(np.float64)
        x = np.ascontiguousarray(x)
        frames = [sensor.encode("utf-8"), wire.encode_header(int(seq), int(t0_ns), int(dt_ns), x), x]
        return self._run_collecting(lambda: self._push_frames(frames, sensor))

    def _push_frames(self, frames, sensor: str) -> None:
        before = dict(self.drops_by_reason)
        self._now_wall = time.time_ns()
        self.handle(frames, time.perf_counter_ns())
        if self.drops_by_reason != before:
            reason = next(r for r, n in self.drops_by_reason.items() if n != before.get(r, 0))
            raise ValueError(f"{safe_id(sensor)}: block refused ({reason}); counted in stats()['drops']")
        self.batcher.poll()

    def flush(self) -> list[Decision]:
        """Score every window waiting in the batcher now. Returns their decisions."""
        return self._run_collecting(lambda: self.batcher.flush("flush"))

    def _run_collecting(self, fn) -> list[Decision]:
        self._collect = out = []
        try:
            fn()
        finally:
            self._collect = None
        return out

    def score(self, x, dt_ns: int = 1_000_000, t0_ns: int = 0, block: int = 4096) -> Scores:
        """Score an offline array, window by window, exactly as the live path would.

        The array goes through a sensor of its own (``max_block_samples``-sized blocks), the
        batcher is flushed, and the sensor is released again. Adaptive thresholds start from
        the calibrated value for it.

        Args:
          x: [n, C] samples in the model's channel order.
          dt_ns, t0_ns: sample period and time of the first sample (only the windows' times).
          block: samples per pushed block.
        Returns:
          `Scores` (parallel arrays, one entry per window in time order).

        Per-window errors, the int8 tensors or another hop, without thresholds or decisions:
        `edgert.runtime.score_array` (the same ring, kernels, batcher, backend and scorer).
        """
        self._n_offline = getattr(self, "_n_offline", 0) + 1
        sensor = f"score:{self._n_offline}"
        x = np.asarray(x)
        decisions: list[Decision] = []
        block = max(1, min(int(block), self.cfg.max_block_samples))
        for a in range(0, len(x), block):
            decisions += self.push(sensor, x[a:a + block], t0_ns + a * dt_ns, dt_ns)
        decisions += self.flush()
        st = self.streams.get(sensor)
        if st is not None:
            self._evict(st)
        return Scores.from_decisions(decisions, self.model.channels)

    def swap_model(self, model_dir) -> str:
        """Load the model in `model_dir` (same kind, window, hop and channels), check it as a
        hot swap would (`edgert.modelcheck`) and swap it in between batches.
        Returns "swapped" or "refused" (the reason is logged and, with a sink, published)."""
        return self.check_model(directory=model_dir)

    def close(self) -> None:
        """Score what is pending, close the reservoir and the backends."""
        self.batcher.flush("flush")
        if self.reservoir is not None:
            self.reservoir.close()
            self.reservoir = None
        self.backend.close()
        if self.cls_backend is not None:
            self.cls_backend.close()

    def _publish(self, kind: str, sensor: str, payload: dict) -> None:
        if self.sink is not None:
            self.sink.publish(kind, sensor, payload)

    def _collect_decisions(self, b, k, scores, thr, flags, ch_err, cls, lat_us, qd_us) -> None:
        """One `Decision` per window of the batch (library use only: the daemon publishes
        anomalies from the arrays and never builds these)."""
        shares = self.scorer.shares(b.buf, ch_err, np.arange(k))
        names = self.model.channels
        span = self.model.window - 1
        for i in range(k):
            st = self.streams[self.names[b.sensor_idx[i]]]
            order = np.argsort(-shares[i])
            self._collect.append(Decision(
                sensor=st.sensor, t_start=int(b.t_start[i]), t_end=int(b.t_start[i]) + span * st.dt,
                score=float(scores[i]), threshold=float(thr[i]), anomaly=bool(flags[i]),
                contributions=tuple(float(v) for v in shares[i]),
                top_channels=tuple(names[o] for o in order[:3]), seq=int(b.seq[i]),
                latency_us=float(lat_us[i]),
                cls=self.classifier.class_names[int(cls[0][i])] if cls is not None else None,
                class_prob=float(cls[1][i]) if cls is not None else None))

    def apply_config(self, new: Config) -> dict:
        """Apply the live-changeable keys of `new` (`edgert.config.RELOADABLE`) to the engine.
        Returns ``{"applied": [...], "needs_restart": [...]}`` (changed keys either way)."""
        from dataclasses import fields as dc_fields

        from .config import RELOADABLE

        old = self.cfg
        out = {"applied": [], "needs_restart": []}
        changed = [f.name for f in dc_fields(old) if getattr(old, f.name) != getattr(new, f.name)]
        for key in changed:
            (out["applied"] if key in RELOADABLE else out["needs_restart"]).append(key)
        for key in out["applied"]:
            setattr(old, key, getattr(new, key))
        applied = set(out["applied"])
        if {"threshold", "risk_q"} & applied:
            self.batcher.flush("reload")
            self.threshold = make_threshold(old, self.model.threshold)
        if "drift_threshold" in applied:
            self.drift.threshold = old.drift_threshold
        if "max_delay_us" in applied:
            self.batcher.max_delay_ns = int(old.max_delay_us) * 1000
        if "sensors_allowed" in applied:
            self._allowed = _matcher(old.sensors_allowed)
        if self.norm is not None and {"adapt_hold_s", "adapt_probation_s"} & applied:
            self.norm.hold_ns = int(max(old.adapt_hold_s, 2 * self.norm.segment_ns / 1e9) * 1e9)
            self.norm.probation_ns = int(max(old.adapt_probation_s, self.norm.segment_ns / 1e9) * 1e9)
        return out

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
            st.sync_fast()  # a contradiction run, a dropped seq ahead: the Python path decides next
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
                          self._ring_capacity, cfg.gap_samples, cfg.max_seq_gap, table=self.table)
        st.drops, st.notes = {}, {}
        st.last_seen = now
        st.note = lambda reason, n=1, _st=st: self._note(_st, reason, n)
        rows = self.norm if self.norm is not None else self.commission
        if rows is not None:
            st.norm_mean = rows.mean[idx]
            st.norm_inv_std = rows.inv_std[idx]
        self.streams[sensor] = st
        self.names[idx] = sensor
        raw = sensor.encode("utf-8")
        self._slot_of[raw] = idx
        if self._slot_changes is not None:
            self._slot_changes.append((raw, idx))
        if self.commission is not None:
            step = self.commission.admit(idx, sensor)
            if step is not None:
                self._commissioned(step)
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
        if self.commission is not None:
            self.commission.forget(i)
        if self.classifier is not None:
            self.class_counts[i] = 0
        del self.streams[st.sensor]
        raw = st.sensor.encode("utf-8")
        self._slot_of.pop(raw, None)
        if self._slot_changes is not None:
            self._slot_changes.append((raw, -1))
        self.table.fast[i] = 0
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

    def handle_many(self, msgs: list, t_recv: list) -> None:
        """Handle the messages of one receive wake-up, in order: the same result as `handle`
        on each followed by the daemon's deadline check, at a fraction of the cost.

        The plain case (a known sensor's next block, f4, every check passed) runs in one
        compiled call for the lot (`edgert.kernels.ingest_messages`); the call stops at any
        message it cannot vouch for, which goes through `handle` (and gets its drop reason or
        note), and at a full or due batch, which is scored; then it resumes.

        Args:
          msgs: the messages, each a list of frames (zmq Frames or bytes).
          t_recv: perf_counter_ns at each message's receipt.
        """
        b = self.batcher
        if (len(msgs) < MIN_COMPILED or not self.batch_path or b.extra
                or self.frame_check is not None):
            # a message or two: the Python path is cheaper than concatenating for the kernel
            for frames, t in zip(msgs, t_recv):
                self._handle_one(frames, t)
            return
        hbuf, hoff, pbuf, poff, ids, slow = self._prepare(msgs)
        slot_of = self._slot_of
        M = len(msgs)
        slots = np.fromiter((slot_of.get(x, -1) for x in ids), np.int64, M)
        if slow:
            slots[slow] = -1
        tr = np.asarray(t_recv, dtype=np.int64)
        cfg, tb, m = self.cfg, self.table, self.model
        skew = cfg.max_clock_skew_s
        skew_ns = min(int(skew * 1e9), 4 * 10**18) if skew else -1  # floor: |d| <= skew*1e9 for int d
        rows = self.norm if self.norm is not None else self.commission
        mean, inv_std = (rows.mean, rows.inv_std) if rows is not None else (b.mean[None], b.inv_std[None])
        ingest = kernels.ingest_messages
        i = used = 0
        start = 0  # first message whose sender is not yet moved to the LRU end
        where = None  # raw id -> its message positions, built on the first admission or eviction
        while i < M:
            i2, used, rows, status = ingest(
                hbuf, hoff, pbuf, poff, slots, tr, i, used, m.n_channels, cfg.max_block_samples,
                self._now_wall, skew_ns, float(cfg.gap_samples), tb.pos, tb.next_start, tb.last_seq,
                tb.t_origin, tb.dt, tb.fast, tb.drop_min, tb.messages, tb.samples, tb.last_seen, tb.rings, tb.cap,
                m.window, m.hop, mean, inv_std, b.in_scale, b.in_zp, b.buf, b.stats, b.t_start,
                b.sensor_idx, b.seq, b.t_recv, b.t_last, b.n, b.max_batch, b.max_delay_ns)
            self.batch_path_messages += i2 - i
            b.n = rows
            end = i2 + 1 if used else i2  # a message cut short by a full batch was checked: touched
            if end > start:
                self._touch(slots, start, end)
                start = end
            i = i2
            if status == kernels.FULL:
                b.flush("full")
            elif status == kernels.DEADLINE:
                b.flush("deadline")
            elif status == kernels.SLOW:
                changes = self._slot_changes = []
                try:
                    self._handle_one(msgs[i], int(tr[i]))
                finally:
                    self._slot_changes = None
                if changes:  # a sensor was admitted or evicted: its later messages here follow
                    if where is None:
                        where = {}
                        for j, x in enumerate(ids):
                            where.setdefault(x, []).append(j)
                    for raw, slot in changes:
                        for j in where.get(raw, ()):
                            if j > i:
                                slots[j] = slot
                i += 1
                start = i

    def _handle_one(self, frames, t: int) -> None:
        """`handle`, then the daemon's per-message deadline check."""
        self.handle(frames, t)
        b = self.batcher
        if b.n and t >= b.t_recv[0] + b.max_delay_ns:
            b.flush("deadline")

    def _touch(self, slots, a: int, z: int) -> None:
        """Move the senders of messages a..z-1 to the recently-active end of the sensor table,
        in the order of their last message (what `_accept` does one message at a time)."""
        names, move = self.names, self.streams.move_to_end
        for s in reversed(dict.fromkeys(slots[a:z][::-1].tolist())):
            move(names[s])

    @staticmethod
    def _prepare(msgs: list) -> tuple:
        """The ids, headers and payloads of a wake-up's messages, concatenated for the compiled
        path. Returns (hbuf, hoff, pbuf, poff, ids, slow): `slow` lists the messages that must
        go through `handle` (not 3 frames, a payload whose size is not a multiple of 4: not f4),
        which stand in the buffers as empty."""
        ids, hs, ps, slow = [], [], [], []
        for j, frames in enumerate(msgs):
            try:
                f0, f1, f2 = frames
                b0 = getattr(f0, "bytes", f0)
                h, p = memoryview(getattr(f1, "buffer", f1)), memoryview(getattr(f2, "buffer", f2))
                if p.nbytes & 3:
                    raise ValueError
                ids.append(b0 if type(b0) is bytes else bytes(b0))
                hs.append(h)
                ps.append(p)
            except (ValueError, TypeError):
                ids.append(b"")
                hs.append(b"")
                ps.append(b"")
                slow.append(j)
        n = len(msgs)
        hoff = np.zeros(n + 1, np.int64)
        np.cumsum(np.fromiter((x.nbytes if type(x) is memoryview else len(x) for x in hs), np.int64, n), out=hoff[1:])
        poff = np.zeros(n + 1, np.int64)
        np.cumsum(np.fromiter((x.nbytes if type(x) is memoryview else len(x) for x in ps), np.int64, n), out=poff[1:])
        return (np.frombuffer(b"".join(hs), np.uint8), hoff, np.frombuffer(b"".join(ps), np.uint8), poff,
                ids, slow)

    def _handle(self, frames, t_recv: int) -> None:
        try:
            blk = wire.decode(frames, check_finite=kernels.count_nonfinite)
        except wire.WireError as exc:
            self._drop(exc.sensor, exc.reason, str(exc), seq=exc.seq)
            return
        sensor = blk.sensor
        if self.frame_check is not None and not self.frame_check(frames, sensor):  # e.g. CURVE sensor_keys
            self._drop(sensor, "auth", f"{safe_id(sensor)}: sent by a CURVE key not bound to it in sensor_keys",
                       seq=blk.seq)
            return
        self._accept(sensor, blk.samples, blk.seq, blk.t0, blk.dt, t_recv)

    def _accept(self, sensor: str, samples, seq: int, t0: int, dt: int, t_recv: int) -> None:
        """A block that is well formed (from `wire.decode` or `push`): the checks against the
        model, the clock and the sensor's stream, then its windows into the batcher."""
        n, c = samples.shape
        cfg = self.cfg
        if c != self.model.n_channels:
            self._drop(sensor, "channels", f"{safe_id(sensor)}: block has {c} channels, model "
                       f"{self.model.name} expects {self.model.n_channels} ({', '.join(self.model.channels)})", seq=seq)
            return
        if n > cfg.max_block_samples:
            self._drop(sensor, "too_large", f"{safe_id(sensor)}: block of {n} samples, max_block_samples "
                       f"is {cfg.max_block_samples}", seq=seq)
            return
        skew = cfg.max_clock_skew_s
        if skew and abs(t0 - self._now_wall) > skew * 1e9:
            self._drop(sensor, "clock", f"{safe_id(sensor)}: t0 is {(t0 - self._now_wall) / 1e9:+.3f} s "
                       f"from the daemon's clock (max_clock_skew_s {skew:g})", seq=seq)
            return
        st = self.streams.get(sensor)
        try:
            if st is None:
                st = self._admit(sensor, t_recv)
            else:
                self.streams.move_to_end(sensor)
            st.check(seq, t0, dt, n, st.note)
        except wire.WireError as exc:
            self._drop(sensor, exc.reason, str(exc), seq=seq)
            return
        st.last_seen = t_recv
        push_block(st, samples, seq, t_recv, self.batcher, t0 + (n - 1) * dt)
        st.messages += 1
        st.samples += n
        st.sync_fast()

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
        if self.commission is not None:  # windows of commissioning sensors are not judged
            thr = self.commission.mask(sidx, thr)
        if kernels.book_batch is not None:
            flags, lat_us, qd_us = self._flags[:k], self._lat_us[:k], self._qd_us[:k]
            t_dec = time.perf_counter_ns()
            lat, qd = self.latency, self.queue_delay
            _, lat_max, qd_max, sane, unsane, lat_sum, qd_sum = kernels.book_batch(
                scores, thr, sidx, b.t_recv, b.t_last, b.stats, k, t_dec, self._wall_offset, flags, lat_us,
                qd_us, self.win_counts, self.anom_counts, lat.edges, lat.counts, qd.edges, qd.counts,
                self._drift_acc, self.cfg.drift_interval_s > 0)
            lat.total += k
            lat.sum_us += lat_sum
            lat.max_us = max(lat.max_us, lat_max)
            if sane:
                qd.total += sane
                qd.sum_us += qd_sum
                qd.max_us = max(qd.max_us, qd_max)
            self.queue_delay_unsane += unsane
            self.threshold.learn(sidx, scores, flags)
        else:
            flags, lat_us, qd_us, t_dec = self._book_numpy(b, k, sidx, scores, thr)
        if not self.first_decision_ns:
            self.first_decision_ns = t_dec
        if self.reservoir is not None:  # before the normalization may change under the rows
            self.reservoir.feed(b, k, flags, self.streams, self.names)
        if self.norm is not None:
            for ev in self.norm.learn(sidx, b.stats[:k, :, 0], b.stats[:k, :, 1], flags, b.t_start[:k]):
                self._adapted(ev)
        if self.commission is not None:
            for ev in self.commission.learn(sidx, b.stats[:k, :, 0], b.stats[:k, :, 1], self.names):
                self._commissioned(ev)
        if self.cfg.publish_scores and self.sink is not None:
            self._publish_scores(b, sidx, scores, thr, flags, k)
        if self._collect is not None:  # library use: a Decision per window
            self._collect_decisions(b, k, scores, thr, flags, ch_err, cls, lat_us, qd_us)
        if self.sink is not None and flags.any():
            idx = np.flatnonzero(flags)
            shares = self.scorer.shares(b.buf, ch_err, idx)  # attribution (scoring.py)
            self._publish_anomalies(b, idx, scores, thr, ch_err, shares, lat_us, k, cls, qd_us)

    def _book_numpy(self, b, k, sidx, scores, thr):
        """`kernels.book_batch` in numpy (no numba). Returns (flags, lat_us, qd_us, t_dec)."""
        flags = scores > thr
        self.threshold.learn(sidx, scores, flags)
        t_dec = time.perf_counter_ns()
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
        np.add.at(self.anom_counts, sidx[flags], 1)
        if self.cfg.drift_interval_s > 0:
            rows = self._drift_rows[:k]
            rows[:, 0] = scores
            rows[:, 1:] = b.stats[:k, :, 2]
            np.add.at(self._drift_acc, sidx, rows)
        return flags, lat_us, qd_us, t_dec

    def _publish_scores(self, b, sidx, scores, thr, flags, k) -> None:
        """One ``event/scores/<sensor>`` per sensor in the batch: every window's score (for plots)."""
        for s in np.unique(sidx):
            sel = sidx == s
            sensor = self.names[int(s)]
            self._publish("scores", sensor, events.scores(
                sensor=sensor, model=self.model.name, t_start=b.t_start[:k][sel].tolist(),
                score=scores[sel].astype(float).tolist(), threshold=thr[sel].astype(float).tolist(),
                anomaly=flags[sel].tolist()))

    def _packer_ok(self) -> bool:
        """Whether this batch's anomaly events can be packed by the compiled encoder: the sink
        takes packed events, numba is there, the channels fit msgpack's short arrays. Keeps a
        packer for the running model and backend."""
        if kernels.encode_anomalies is None or getattr(self.sink, "publish_packed", None) is None:
            return False
        m, name = self.model, self.backend.name
        pk = self._packer
        if pk is None or pk.model != m.name or pk.backend != name:
            if m.n_channels > 15:
                return False
            pk = self._packer = events.AnomalyPacker(m.name, name, m.channels, self.cfg.max_sensors)
        return True

    def _publish_anomalies(self, b, idx, scores, thr, ch_err, shares, lat_us, k, cls=None, qd_us=None) -> None:
        """One ``event/anomaly/<sensor>`` per flagged window. The batch's arrays are turned into
        Python lists once (``tolist``), not element by element: a fault on many sensors flags
        whole batches, and that is when the loop must keep up."""
        m = self.model
        span = m.window - 1
        if cls is None and self._packer_ok():
            self._packer.publish(self.sink, self.names, self.table.dt, b, idx, scores, thr, ch_err, shares, lat_us,
                                 qd_us, k, span)
            return
        names, backend = m.channels, self.backend.name
        top = np.argsort(-shares, axis=1)[:, :3].tolist()
        shares_l, err_l = shares.tolist(), ch_err[idx].tolist()
        stats_l = b.stats[idx].transpose(0, 2, 1).tolist()  # [window][statistic][channel]
        score_l, thr_l, lat_l = scores[idx].tolist(), thr[idx].tolist(), lat_us[idx].tolist()
        qd_l = qd_us[idx].tolist() if qd_us is not None else [None] * len(idx)
        t_l, seq_l, s_l = b.t_start[idx].tolist(), b.seq[idx].tolist(), b.sensor_idx[idx].tolist()
        cls_l = (cls[0][idx].tolist(), cls[1][idx].tolist()) if cls is not None else None
        for j in range(len(idx)):
            st = self.streams[self.names[s_l[j]]]
            extra = {}
            if cls_l is not None:
                extra = {"cls": self.classifier.class_names[cls_l[0][j]], "class_prob": cls_l[1][j],
                         "classifier": self.classifier.name}
            qd = qd_l[j]
            self._publish("anomaly", st.sensor, events.anomaly(
                sensor=st.sensor, model=m.name, backend=backend, t_start=t_l[j], t_end=t_l[j] + span * st.dt,
                score=score_l[j], threshold=thr_l[j], channels=names, contributions=shares_l[j],
                channel_error=err_l[j], top_channels=[names[o] for o in top[j]],
                stats=dict(zip(STAT_NAMES, stats_l[j])), seq=seq_l[j], latency_us=lat_l[j],
                queue_delay_us=qd if qd is not None and qd >= 0 else None, batch=int(k), **extra))

    # -- stats ----------------------------------------------------------------
    def _sensor_row(self, st: SensorStream) -> dict:
        i = st.index
        row = {"windows": int(self.win_counts[i]), "anomalies": int(self.anom_counts[i]),
               "messages": st.messages, "lost_blocks": st.lost_blocks, "restarts": st.restarts}
        if self.classifier is not None:
            names = self.classifier.class_names
            r = self.class_counts[i]
            row["classes"] = {names[j]: int(r[j]) for j in np.flatnonzero(r)}
        if self.commission is not None:
            row["commissioning"] = self.commission.describe(i)
        return row

    def stats(self, top_n: int | None = None) -> dict:
        """The engine's counts and figures: totals over every sensor ever seen, and the `top_n` sensors (default
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
            "internal_errors": self.internal_errors,
            "sensors_active": len(self.streams),
            "sensors_evicted": self.evicted,
            "drops": drops,
            "notes": {s: dict(self.streams[s].notes) for s in shown if self.streams[s].notes},
            "per_sensor": {s: self._sensor_row(self.streams[s]) for s in shown},
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
            "drifts": self.drifts,
            "adaptations": {"accepted": self.norm.accepted, "refused": self.norm.refused}
            if self.norm is not None else None,
            "commissioning": self.commission.stats() if self.commission is not None else None,
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
        })
        return json_safe(d)


def make_threshold(cfg: Config, calibrated: float):
    """The thresholder named by ``cfg.threshold``, warm-started from the calibrated value
    (`edgert.thresholds.make_threshold` with the daemon's settings)."""
    from .thresholds import make_threshold as make

    return make(cfg.threshold, calibrated, risk_q=cfg.risk_q, max_sensors=cfg.max_sensors)


def _matcher(patterns):
    """None (any id) or a predicate for ``sensors_allowed``: exact ids and fnmatch patterns."""
    if not patterns:
        return None
    exact = {p for p in patterns if not any(ch in p for ch in "*?[")}
    globs = [p for p in patterns if p not in exact]
    rx = re.compile("|".join(fnmatch.translate(p) for p in globs)) if globs else None
    return lambda sensor: sensor in exact or (rx is not None and rx.match(sensor) is not None)


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
