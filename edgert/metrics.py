"""Prometheus ``/metrics`` and the ``/healthz`` / ``/readyz`` probes of the daemon (``metrics_listen``).

What is exported is what the engine already counts (`edgert.pipeline.Pipeline`: totals, drops
by reason, the per-slot window/anomaly arrays, the `edgert.stats.LatencyHistogram` of decision
latency and queueing delay); nothing is added to the handling of a message.

Threads. The HTTP server runs in its own thread; the daemon's loop owns and mutates every
count (dicts that grow, a sensor table that is reordered and evicted from). Reading those from
the server thread would race (``dictionary changed size during iteration``, a histogram's
counts read in the middle of an update). So the loop itself copies what is exported into a
plain snapshot (`Metrics.publish`: a few dicts, two copies of ~1000 int64 bins, at most
``metrics_max_sensors`` per-sensor rows) at most every `SNAPSHOT_S` seconds, from
`Metrics.tick`, which it calls once per wake-up (one clock read and a compare: O(1), nothing per
message). Publishing replaces one attribute, which is atomic under the GIL; a scrape reads the
newest snapshot whole, so every series in one scrape comes from the same instant and the loop
never waits for a scraper. Values are up to `SNAPSHOT_S` old (a scrape interval is 10-60 s).
The conversion to Prometheus families (cumulative buckets in seconds) happens in the server
thread, at scrape time. RSS and CPU come from prometheus-client's `ProcessCollector` (/proc).

Per-sensor series. Labels are bounded: the first ``metrics_max_sensors`` sensor ids the
snapshot meets keep their own ``sensor`` label for the life of the process; every other sensor
is summed into ``sensor="_other"`` (total minus the labelled ones, so the per-sensor series of
a counter always add up to its total, and ``_other`` never decreases). A labelled sensor that is
evicted and comes back keeps counting up from where it was (what its earlier slots counted is
banked here).

Health. ``/healthz`` is 200 while the process is starting (loading and compiling may take tens
of seconds) and while the loop has ticked within ``health_stall_s``; 503 when it has not (a
stalled loop). ``/readyz`` is 200 once the model is loaded, the backend probed and the sockets
are bound and read (`Health.set_ready`, called where `edgert.daemon.Daemon.run` starts taking
input), 503 before that and from the moment a stop is requested.

prometheus-client is optional (the ``metrics`` extra): this module imports it only when a
server is started.
"""

from __future__ import annotations

import hashlib
import socket
import socketserver
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import numpy as np

from .stats import LatencyHistogram
from .wire import DROP_REASONS, NOTE_REASONS

SNAPSHOT_S = 0.5  # the loop publishes a snapshot at most this often
OTHER = "_other"  # the sensor label of every sensor past metrics_max_sensors
# Bucket bounds of the exported histograms: every 30th edge of the engine's 120-bins-per-decade
# histogram (a quarter decade, x1.78), 1 µs .. 100 s. They fall exactly on the engine's bin edges,
# so each cumulative count is exact, not interpolated.
BUCKET_STEP = 30


ZERO_DROPS = dict.fromkeys(DROP_REASONS, 0)
ZERO_NOTES = dict.fromkeys(NOTE_REASONS, 0)
ZERO_BATCHES = dict.fromkeys(("full", "deadline", "flush", "swap", "evict"), 0)


class MetricsError(ValueError):
    """metrics_listen cannot be served (bad address, port in use, prometheus-client missing)."""


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``127.0.0.1:9108``, ``[::1]:9108``, ``:9108`` for every interface) as (host, port).

    Raises:
      MetricsError naming the address when it is not HOST:PORT with a port in 0..65535.
    """
    host, sep, port = str(text).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise MetricsError(f"metrics_listen {text!r}: expected HOST:PORT with a port in 0..65535, "
                           "e.g. 127.0.0.1:9108")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host and not text.startswith("["):
        raise MetricsError(f"metrics_listen {text!r}: write an IPv6 address in brackets, e.g. [::1]:9108")
    return host or "0.0.0.0", int(port)


# -- the health probes -----------------------------------------------------------------------
class Health:
    """What ``/healthz`` and ``/readyz`` answer. Written by the daemon's thread, read by the server's.

    Args:
      stall_s: ``/healthz`` turns 503 when the loop has not ticked for this long.
    """

    def __init__(self, stall_s: float = 5.0):
        self.stall_s = float(stall_s)
        self.state = "starting"  # starting -> ready -> stopping
        self.last_tick = None  # time.monotonic() of the loop's last wake-up

    def set_ready(self) -> None:
        self.last_tick = time.monotonic()
        self.state = "ready"

    def set_stopping(self) -> None:
        self.state = "stopping"

    def live(self) -> tuple[int, str]:
        """(HTTP status, text) for ``/healthz``."""
        last = self.last_tick
        if last is None:
            return 200, f"ok: {self.state}\n"
        age = time.monotonic() - last
        if age > self.stall_s:
            return 503, f"stalled: the loop last ticked {age:.1f} s ago (health_stall_s {self.stall_s:g})\n"
        return 200, f"ok: {self.state}, loop ticked {age * 1e3:.0f} ms ago\n"

    def ready(self) -> tuple[int, str]:
        """(HTTP status, text) for ``/readyz``."""
        if self.state == "ready":
            return 200, "ready\n"
        return 503, f"not ready: {self.state}\n"


# -- snapshots (built in the daemon's thread) -----------------------------------------------------
class SensorLabels:
    """Per-sensor counts for at most `limit` labelled sensors; the rest under `OTHER`.

    Args:
      limit: how many sensor ids get their own label (0: none, everything is `OTHER`).
    """

    def __init__(self, limit: int):
        self.limit = int(limit)
        self.names: list[str] = []  # labelled sensors, in the order they were labelled
        self.index: dict[str, int] = {}  # name -> row
        self._refs: list = []  # the SensorStream each row last read (None: not in the table)
        self._bank = np.zeros((0, 3), dtype=np.int64)  # (windows, anomalies, drops) of earlier slots
        self._last = np.zeros((0, 3), dtype=np.int64)  # ... of the current slot, as last read

    def _admit(self, streams) -> None:
        """Label ids until the table is full; then never again (labels stay stable)."""
        for name in streams:
            if name not in self.index and name != OTHER:  # a sensor called "_other" is summed there
                self.index[name] = len(self.names)
                self.names.append(name)
                self._refs.append(None)
                if len(self.names) >= self.limit:
                    break
        grow = len(self.names) - len(self._bank)
        if grow:
            self._bank = np.vstack([self._bank, np.zeros((grow, 3), dtype=np.int64)])
            self._last = np.vstack([self._last, np.zeros((grow, 3), dtype=np.int64)])

    def update(self, pipe) -> tuple[list, np.ndarray]:
        """Read the labelled sensors' counts from the engine (daemon thread only).

        One dict lookup per labelled sensor, the rest vectorized.

        Args:
          pipe: the `edgert.pipeline.Pipeline`.
        Returns:
          (names, counts): the labelled sensors and an int64 [len(names), 3] array of their
          (windows, anomalies, dropped blocks), counted over every slot they held.
        """
        streams = pipe.streams
        if len(self.names) < self.limit:  # O(limit): stops when full, or the table holds fewer sensors
            self._admit(streams)
        k = len(self.names)
        slot = np.full(k, -1, dtype=np.int64)
        drops = np.zeros(k, dtype=np.int64)
        refs, get = self._refs, streams.get
        moved = []
        for r, name in enumerate(self.names):
            st = get(name)
            if st is not refs[r]:  # evicted, or evicted and admitted again
                moved.append(r)
                refs[r] = st
            if st is not None:
                slot[r] = st.index
                if st.drops:
                    drops[r] = sum(st.drops.values())
        if moved:  # bank what the old slot counted
            self._bank[moved] += self._last[moved]
            self._last[moved] = 0
        here = np.flatnonzero(slot >= 0)
        s = slot[here]
        self._last[here, 0] = pipe.win_counts[s]
        self._last[here, 1] = pipe.anom_counts[s]
        self._last[here, 2] = drops[here]
        return list(self.names), self._bank + self._last


def _model_digest(manifest: dict) -> str:
    """12 hex digits naming the model's files (their sha256s from the manifest)."""
    files = manifest.get("files", {})
    h = hashlib.sha256("".join(f"{k}={v};" for k, v in sorted(files.items())).encode())
    return h.hexdigest()[:12]


def snapshot(daemon, labels: SensorLabels) -> dict:
    """Copy what is exported out of the daemon and its engine (daemon thread only).

    Cost: O(active sensors) for the message/sample/lost-block sums, O(labelled sensors) for the
    per-sensor rows, and two copies of the latency histograms' bins.

    Args:
      daemon: the `edgert.daemon.Daemon`.
      labels: the `SensorLabels` table (kept across snapshots).
    Returns:
      a dict of plain Python numbers, dicts and numpy copies, never changed afterwards.
    """
    pipe = daemon.pipeline
    streams = list(pipe.streams.values())
    t = pipe.totals
    windows = t["windows"] + int(pipe.win_counts.sum())
    anomalies = t["anomalies"] + int(pipe.anom_counts.sum())
    drops = dict(pipe.drops_by_reason)
    model = pipe.model
    counters = {
        "messages": t["messages"] + sum(st.messages for st in streams),
        "samples": t["samples"] + sum(st.samples for st in streams),
        "windows": windows,
        "anomalies": anomalies,
        "lost_blocks": t["lost_blocks"] + sum(st.lost_blocks for st in streams),
        "lost_windows": pipe.lost_windows,
        "batch_errors": pipe.batch_errors,
        "internal_errors": pipe.internal_errors,
        "model_swaps": pipe.model_swaps,
        "model_refusals": pipe.model_refusals,
        "reloads": daemon.reloads,
        "drifts": pipe.drifts,
        "sensors_evicted": pipe.evicted,
        "events_published": daemon.events.published if daemon.events is not None else 0,
        "queue_delay_clock_ahead": pipe.queue_delay_unsane,
        "discarded_at_stop": daemon.discarded_at_stop,
    }
    names, counts = labels.update(pipe)
    # What no labelled sensor counted: unlabelled sensors, ids without a slot (their drops).
    other = np.array([windows, anomalies, sum(drops.values())], dtype=np.int64) - counts.sum(axis=0)
    per_sensor = (names + [OTHER], np.vstack([counts, other[None]]))
    lat, qd = pipe.latency, pipe.queue_delay
    return {
        "time": time.time(),
        "counters": counters,
        # Every known reason from the start, at 0: rate() and increase() then see a reason's first
        # drops (a series that appears with its first value has no increase to show).
        "drops": {**ZERO_DROPS, **drops},
        "notes": {**ZERO_NOTES, **pipe.notes_by_reason},
        "batches": {**ZERO_BATCHES, **pipe.batcher.reasons},
        "peers": dict(daemon.peer_events),
        "adaptations": {"accepted": pipe.norm.accepted, "refused": pipe.norm.refused}
        if pipe.norm is not None else {},
        "commissioning": _commissioning(pipe.commission.stats()) if pipe.commission is not None else {},
        "sensors_active": len(streams),
        "per_sensor": per_sensor,
        "latency": (lat.counts.copy(), lat.total, getattr(lat, "sum_us", None), lat.edges),
        "queue_delay": (qd.counts.copy(), qd.total, getattr(qd, "sum_us", None), qd.edges),
        **_info(model, pipe.backend, daemon.cfg.threshold, labels),
    }


def _dense(sparse: dict | None, edges: np.ndarray) -> tuple[np.ndarray, int]:
    """A `LatencyHistogram.sparse` dict back to dense bin counts on `edges` (its bins' upper
    edges, rounded to 0.01 µs there, name the bins). Returns (counts, total)."""
    counts = np.zeros(edges.size, dtype=np.int64)
    if not sparse or not sparse.get("counts"):
        return counts, 0
    le = np.asarray(sparse["le_us"], dtype=np.float64)
    j = np.clip(np.searchsorted(edges, le), 1, edges.size - 1)
    j = np.where(np.abs(edges[j - 1] - le) < np.abs(edges[j] - le), j - 1, j)  # the nearest edge
    np.add.at(counts, np.clip(j - 1, 0, edges.size - 1), np.asarray(sparse["counts"], dtype=np.int64))
    return counts, int(counts.sum())


class StatsLabels:
    """Per-sensor labels for a stats dict (the supervisor of ``--workers``): the first
    `limit` sensor ids seen keep their own label for good; the rest are summed as ``_other``."""

    def __init__(self, limit: int):
        self.limit = int(limit)
        self.names: list = []
        self._known: set = set()

    def rows(self, per_sensor: dict, totals: tuple) -> tuple[list, np.ndarray]:
        for name in per_sensor:
            if len(self.names) >= self.limit:
                break
            if name not in self._known and name != OTHER:
                self._known.add(name)
                self.names.append(name)
        counts = np.zeros((len(self.names) + 1, 3), dtype=np.int64)
        for i, name in enumerate(self.names):
            r = per_sensor.get(name) or {}
            d = r.get("drops") or {}
            counts[i] = (int(r.get("windows", 0)), int(r.get("anomalies", 0)),
                         int(sum(d.values())) if isinstance(d, dict) else 0)
        counts[-1] = np.asarray(totals, dtype=np.int64) - counts[:-1].sum(axis=0)
        return self.names + [OTHER], counts


def snapshot_from_stats(d: dict, labels: StatsLabels, threshold: str = "") -> dict:
    """The same snapshot as `snapshot`, from an aggregated stats dict (`edgert.workers.aggregate_stats`
    of every worker, with their latency histograms) instead of a live engine: what the
    supervisor of ``edgert serve --workers N`` exports, one endpoint for all its workers.

    Args:
      d: the aggregated stats (every sensor in ``per_sensor``: ``top_n=None``).
      labels: the `StatsLabels` table (kept across snapshots).
      threshold: the threshold kind (an info label).
    """
    from . import kernels

    drops = dict(d.get("drops_by_reason") or {})
    g = lambda k: int(d.get(k) or 0)  # noqa: E731
    counters = {k: g(k) for k in ("messages", "samples", "windows", "anomalies", "lost_blocks", "lost_windows",
                                  "batch_errors", "internal_errors", "model_swaps", "model_refusals", "reloads",
                                  "drifts", "sensors_evicted", "queue_delay_clock_ahead", "discarded_at_stop")}
    counters["events_published"] = g("events_forwarded") or g("events_published")
    per_sensor = labels.rows(d.get("per_sensor") or {}, (counters["windows"], counters["anomalies"],
                                                          sum(drops.values())))
    edges = LatencyHistogram().edges
    lh, qh = d.get("latency_histogram") or {}, d.get("queue_delay_histogram") or {}
    lat, lat_n = _dense(lh, edges)
    qd, qd_n = _dense(qh, edges)
    model, backend = d.get("model"), d.get("backend")
    return {
        "time": time.time(),
        "counters": counters,
        "drops": {**ZERO_DROPS, **drops},
        "notes": {**ZERO_NOTES, **(d.get("notes_by_reason") or {})},
        "batches": {**ZERO_BATCHES, **(d.get("batch_reasons") or {})},
        "peers": dict(d.get("peers") or {}),
        "adaptations": {k: v for k, v in (d.get("adaptations") or {}).items() if k in ("accepted", "refused")},
        "commissioning": _commissioning(d.get("commissioning") or {}),
        "sensors_active": g("sensors_active"),
        "per_sensor": per_sensor,
        "latency": (lat, lat_n, lh.get("sum_us", 0.0), edges),
        "queue_delay": (qd, qd_n, qh.get("sum_us", 0.0), edges),
        "model": {"model": ",".join(model) if isinstance(model, list) else str(model or ""),
                  "generation": "", "digest": "", "threshold_kind": threshold},
        "backend": {"backend": ",".join(backend) if isinstance(backend, list) else str(backend or ""),
                    "kernels": str(kernels.BACKEND), "fallbacks": ""},
    }


def _info(model, backend, threshold: str, holder) -> dict:
    """The labels of the info metrics, computed again only when the model or backend changed (a swap).

    Args:
      model, backend: the running ones; threshold: the threshold kind.
      holder: where the one cached entry lives (its ``_info`` attribute).
    """
    cached = getattr(holder, "_info", None)
    if cached is not None and cached[0] is model and cached[1] is backend and cached[2] == threshold:
        return cached[3]
    from . import kernels

    gen = (model.manifest.get("retrain") or {}).get("generation", 0)
    info = {
        "model": {"model": model.name, "generation": str(gen), "digest": _model_digest(model.manifest),
                  "threshold_kind": threshold},
        "backend": {"backend": backend.name, "kernels": str(kernels.BACKEND),
                    "fallbacks": ",".join(str(f.get("backend", "?")) if isinstance(f, dict) else str(f)
                                          for f in getattr(backend, "fallbacks", None) or [])},
    }
    holder._info = (model, backend, threshold, info)  # one entry: an old model is not kept alive
    return info


def histogram_buckets(counts: np.ndarray, total: int, edges: np.ndarray, step: int = BUCKET_STEP) -> list:
    """Prometheus cumulative buckets in seconds from a `LatencyHistogram`'s bins (µs).

    Bin ``i`` of the engine holds ``edges[i] <= x < edges[i+1]`` (bin 0 also what was below
    ``edges[0]``, the last bin what was above the top edge); the bucket ``le=edges[j]`` is then
    the sum of bins ``0..j-1``, exact at every chosen edge.

    Args:
      counts: the bins (``len(edges)`` of them: one per edge interval plus the overflow bin).
      total: the number of observations (the ``+Inf`` bucket).
      edges: the bin edges in µs.
      step: every `step`-th edge becomes a bucket bound.
    Returns:
      ``[(le, cumulative count), ..., ("+Inf", total)]`` with ``le`` in seconds, as text.
    """
    cum = np.cumsum(counts)
    out = []
    for j in range(step, len(edges), step):
        out.append((f"{float(edges[j]) * 1e-6:.12g}", int(cum[j - 1])))  # 1e-05, not 9.999999999999999e-06
    out.append(("+Inf", int(total)))
    return out


# -- the collector (server thread) -------------------------------------------------------------------
# (name without _total, help, key in snapshot["counters"])
COUNTERS = [
    ("edgert_messages", "Sensor blocks accepted (validated and pushed into a window).", "messages"),
    ("edgert_samples", "Samples in the accepted blocks.", "samples"),
    ("edgert_windows", "Windows scored by the model.", "windows"),
    ("edgert_anomalies", "Windows flagged anomalous.", "anomalies"),
    ("edgert_lost_blocks", "Blocks missing from a sensor's seq numbering (lost upstream).", "lost_blocks"),
    ("edgert_lost_windows", "Windows lost to a failed batch.", "lost_windows"),
    ("edgert_batch_errors", "Batches whose inference failed.", "batch_errors"),
    ("edgert_internal_errors", "Exceptions while handling a message (bugs), counted and logged.", "internal_errors"),
    ("edgert_model_swaps", "Models swapped in live.", "model_swaps"),
    ("edgert_model_refusals", "Model updates refused (the running model kept running).", "model_refusals"),
    ("edgert_reloads", "Configuration reloads (SIGHUP).", "reloads"),
    ("edgert_drifts", "Drift detections.", "drifts"),
    ("edgert_sensors_evicted", "Sensors evicted from the sensor table (idle or yielding their slot).", "sensors_evicted"),
    ("edgert_events_published", "Events published on the events socket.", "events_published"),
    ("edgert_queue_delay_clock_ahead", "Windows left out of the queue delay histogram: the sensor clock was ahead.",
     "queue_delay_clock_ahead"),
    ("edgert_discarded_at_stop", "Blocks still queued when the stop drain ran out of time.", "discarded_at_stop"),
]
# (name without _total, help, snapshot key, label name)
LABELLED = [
    ("edgert_dropped_messages", "Sensor blocks dropped, by reason.", "drops", "reason"),
    ("edgert_stream_notes", "Stream irregularities that were handled (not drops), by reason.", "notes", "reason"),
    ("edgert_batches", "Batches run, by what triggered them.", "batches", "reason"),
    ("edgert_peer_events", "Sensor connections accepted and closed.", "peers", "event"),
    ("edgert_adaptations", "Normalization adaptations, accepted or refused.", "adaptations", "result"),
    ("edgert_commissioning", "Sensor commissionings (edgert/commission.py), by result.", "commissioning", "result"),
]


def _commissioning(st: dict) -> dict:
    """The commissioning counters of a stats dict (`Commissioning.stats`) as result -> count."""
    return {k: int(st.get(k) or 0) for k in ("accepted", "refused", "restored")} if st else {}
PER_SENSOR = [
    ("edgert_sensor_windows", "Windows scored, per sensor (bounded labels; the rest under sensor=\"_other\")."),
    ("edgert_sensor_anomalies", "Windows flagged anomalous, per sensor (bounded labels)."),
    ("edgert_sensor_dropped_messages", "Blocks dropped, per sensor (bounded labels)."),
]


class EdgertCollector:
    """A prometheus-client custom collector over the newest snapshot of a `Metrics` (scrape time)."""

    def __init__(self, metrics: "Metrics"):
        self.metrics = metrics

    def describe(self):
        return []  # names are fixed, no collision check needed; collect() only when scraped

    def collect(self):
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                            InfoMetricFamily)

        m = self.metrics
        status, _ = m.health.live()
        yield GaugeMetricFamily("edgert_up", "1 while the daemon's loop ticks (as /healthz), 0 when stalled.",
                                value=1.0 if status == 200 else 0.0)
        yield GaugeMetricFamily("edgert_ready", "1 while taking input (as /readyz).",
                                value=1.0 if m.health.state == "ready" else 0.0)
        last = m.health.last_tick
        if last is not None:
            yield GaugeMetricFamily("edgert_loop_tick_age_seconds", "Seconds since the loop last woke up.",
                                    value=time.monotonic() - last)
        snap = m.snap
        if snap is None:  # still starting: no engine yet
            return
        yield GaugeMetricFamily("edgert_snapshot_age_seconds", "Age of the values exported here.",
                                value=max(0.0, time.time() - snap["time"]))
        c = snap["counters"]
        for name, doc, key in COUNTERS:
            yield CounterMetricFamily(name, doc, value=c[key])
        for name, doc, key, label in LABELLED:
            fam = CounterMetricFamily(name, doc, labels=[label])
            for k, v in sorted(snap[key].items()):
                fam.add_metric([str(k)], v)
            yield fam
        for j, (name, doc) in enumerate(PER_SENSOR):
            fam = CounterMetricFamily(name, doc, labels=["sensor"])
            names, counts = snap["per_sensor"]
            for sensor, v in zip(names, counts[:, j].tolist()):
                fam.add_metric([sensor], v)
            yield fam
        yield GaugeMetricFamily("edgert_sensors_active", "Sensors holding a slot in the sensor table.",
                                value=snap["sensors_active"])
        for name, doc, key in (("edgert_decision_latency_seconds", "Receipt of a window's last block to its "
                                "decision (scored, thresholded), per window.", "latency"),
                               ("edgert_queue_delay_seconds", "Sensor time of a block's last sample to its "
                                "receipt, per window (sane sensor clocks only).", "queue_delay")):
            counts, total, sum_us, edges = snap[key]
            yield HistogramMetricFamily(name, doc, buckets=histogram_buckets(counts, total, edges),
                                        sum_value=None if sum_us is None else sum_us * 1e-6)
        yield InfoMetricFamily("edgert_model", "The model being served (generation: edgert retrain's).",
                               value=snap["model"])
        yield InfoMetricFamily("edgert_backend", "The inference backend and kernel implementation.",
                               value=snap["backend"])
        yield InfoMetricFamily("edgert_build", "edgert's version.", value={"version": m.version})


# -- the server -----------------------------------------------------------------------------------
MAX_CLIENTS = 8  # requests served at once; more are closed at once (bounded threads and memory)


class _QuietHandler(WSGIRequestHandler):
    timeout = 5  # a client that connects and says nothing holds its thread no longer than this

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass  # no line per scrape in the daemon's log


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    """wsgiref's server, a thread per request up to `MAX_CLIENTS` (a slow scraper or a client that
    says nothing does not hold up the health probes), without the reverse-DNS lookup of
    ``server_bind``."""

    daemon_threads = True
    block_on_close = False

    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]
        self.setup_environ()
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # too many at once: close, do not queue
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def _server_class(host: str):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return type("_Server", (_Server,), {"address_family": family})


class Metrics:
    """The daemon's metrics and health endpoint: snapshots in, HTTP out.

    Args:
      listen: ``HOST:PORT`` (`parse_listen`; port 0 picks a free port, see `address`).
      max_sensors: per-sensor labels (``metrics_max_sensors``).
      stall_s: ``health_stall_s`` (`Health`).
    Raises:
      MetricsError naming the address when it cannot be bound, or when prometheus-client is missing.
    """

    def __init__(self, listen: str, max_sensors: int = 64, stall_s: float = 5.0):
        host, port = parse_listen(listen)
        try:
            from prometheus_client import make_wsgi_app
            from prometheus_client.process_collector import ProcessCollector
            from prometheus_client.registry import CollectorRegistry
        except ImportError:
            raise MetricsError(f"metrics_listen {listen}: needs prometheus-client "
                               "(pip install 'edgert[metrics]')") from None
        from . import __version__

        self.version = __version__
        self.health = Health(stall_s)
        self.labels = SensorLabels(max_sensors)
        self.snap = None
        self._next = 0.0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(EdgertCollector(self))
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        self._prom = make_wsgi_app(self.registry)
        try:
            self.server = _server_class(host)((host, port), _QuietHandler)
        except OSError as exc:
            raise MetricsError(f"metrics_listen {listen}: cannot bind ({exc.strerror or exc})") from None
        self.server.set_app(self._app)
        self.address = f"{host}:{self.server.server_address[1]}" if ":" not in host else \
            f"[{host}]:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="edgert-metrics", daemon=True)
        self._thread.start()

    def _app(self, environ, start_response):
        path = environ.get("PATH_INFO") or "/"
        if path in ("/healthz", "/readyz"):
            status, text = self.health.live() if path == "/healthz" else self.health.ready()
            start_response(f"{status} {'OK' if status == 200 else 'Service Unavailable'}",
                           [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")])
            return [text.encode()]
        if path in ("/metrics", "/"):
            return self._prom(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: try /metrics, /healthz or /readyz\n"]

    def tick(self, daemon) -> None:
        """Called by the daemon's loop on every wake-up: note the time, publish a snapshot when due.

        Args:
          daemon: the `edgert.daemon.Daemon` (read only when a snapshot is due).
        """
        now = time.monotonic()
        self.health.last_tick = now
        if now >= self._next:
            self._next = now + SNAPSHOT_S
            self.publish(daemon)

    def publish(self, daemon) -> None:
        """Take a snapshot now (daemon thread) and make it the one scrapes read."""
        self.snap = snapshot(daemon, self.labels)

    def publish_stats(self, stats: dict, threshold: str = "") -> None:
        """Make an aggregated stats dict the snapshot scrapes read (`snapshot_from_stats`; the
        supervisor of ``--workers``, which also calls ``health.last_tick`` from its loop)."""
        if getattr(self, "_stats_labels", None) is None:
            self._stats_labels = StatsLabels(self.labels.limit)
        self.snap = snapshot_from_stats(stats, self._stats_labels, threshold)

    def close(self) -> None:
        """Stop serving and release the port."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self._thread.join(2)
            self.server = None
