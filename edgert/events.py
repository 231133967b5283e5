"""Events out: the event schema, and the sinks they go to.

Every payload the daemon publishes is built here, by one function per kind (`anomaly`,
`scores`, `drift`, `adapt`, `model_swapped`, `model_refused`, `lifecycle`; ``stats`` payloads
are `edgert.pipeline.Pipeline.stats` and `edgert.daemon.Daemon.stats`), each with the schema
version ``v`` (`SCHEMA_VERSION`); docs/wire-format.md documents the fields. An `EventSink`
takes them; `EventPublisher`, a ZeroMQ PUB socket the daemon binds (frame 0
``event/<kind>/<sensor>``, frame 1 msgpack), is the one edgert ships. Subscribers filter by
prefix, e.g. ``event/anomaly/``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import msgpack
import numpy as np
import zmq


@runtime_checkable
class EventSink(Protocol):
    """Where the engine's events go (`edgert.pipeline.Pipeline`'s ``sink``): the ZeroMQ PUB
    publisher below is one; another transport (MQTT, a test's list) is a new class with these
    two methods, not an engine edit. ``payload`` gets ``v`` (`SCHEMA_VERSION`) added."""

    def publish(self, kind: str, sensor: str, payload: dict) -> None:
        """Send one event of `kind` (anomaly, scores, drift, adapt, model, stats, lifecycle)."""

    def close(self) -> None:
        """Release the transport."""

SCHEMA_VERSION = 1  # "v" in every event payload (docs/wire-format.md, "Events")
STAT_NAMES = ("mean", "std", "rms", "peak", "crest", "kurtosis")


# -- the schema: one builder per event kind ------------------------------------------------
def anomaly(*, sensor: str, model: str, backend: str, t_start: int, t_end: int, score: float,
            threshold: float, channels, contributions, channel_error, top_channels, stats: dict,
            seq: int, latency_us: float, queue_delay_us: float | None, batch: int,
            cls: str | None = None, class_prob: float | None = None, classifier: str | None = None) -> dict:
    """``event/anomaly/<sensor>``: one flagged window (fields: docs/wire-format.md)."""
    ev = {"v": SCHEMA_VERSION, "sensor": sensor, "t_start": t_start, "t_end": t_end, "score": score,
          "threshold": threshold, "channels": channels, "contributions": contributions,
          "channel_error": channel_error, "top_channels": top_channels, "stats": stats, "model": model,
          "backend": backend, "seq": seq, "latency_us": latency_us, "queue_delay_us": queue_delay_us,
          "batch": batch}
    if cls is not None:
        ev.update({"class": cls, "class_prob": class_prob, "classifier": classifier})
    return ev


def scores(*, sensor: str, model: str, t_start: list, score: list, threshold: list, anomaly: list) -> dict:
    """``event/scores/<sensor>``: every window of one sensor in one batch (parallel lists)."""
    return {"v": SCHEMA_VERSION, "sensor": sensor, "t_start": t_start, "score": score,
            "threshold": threshold, "anomaly": anomaly, "model": model}


def drift(*, sensor: str, model: str, statistics: list, recalibrating: bool, threshold: float) -> dict:
    """``event/drift/<sensor>``: Page-Hinkley fired on these statistics."""
    return {"v": SCHEMA_VERSION, "sensor": sensor, "statistics": statistics,
            "recalibrating": recalibrating, "threshold": threshold, "model": model}


def adapt(*, sensor: str, model: str, step: dict) -> dict:
    """``event/adapt/<sensor>``: a step of safe adaptation (`edgert.adapt`: probation,
    accepted or refused, with its figures)."""
    return {"v": SCHEMA_VERSION, "sensor": sensor, "model": model, **step}


def commission(*, sensor: str, model: str, step: dict) -> dict:
    """``event/commission/<sensor>``: a sensor's commissioning (`edgert.commission`):
    ``state`` commissioned | refused | restored, with its gains or the reason."""
    return {"v": SCHEMA_VERSION, "sensor": sensor, "model": model, **step}


def model_swapped(*, model: str, previous: dict, running: dict, backend: str, windows_before: int) -> dict:
    """``event/model/daemon``: a new model runs from the next batch on."""
    return {"v": SCHEMA_VERSION, "state": "swapped", "model": model, "previous": previous,
            "running": running, "backend": backend, "windows_before": windows_before}


def model_refused(*, model: str, reason: str, running: dict) -> dict:
    """``event/model/daemon``: a candidate model was refused; `model` keeps running."""
    return {"v": SCHEMA_VERSION, "state": "refused", "model": model, "reason": reason, "running": running}


def lifecycle(state: str, **fields) -> dict:
    """``event/lifecycle/daemon``: started, reloaded or stopped (with the final stats)."""
    return {"v": SCHEMA_VERSION, "state": state, **fields}


_MORE = int(zmq.SNDMORE)  # an int flag: pyzmq's enum `|` costs more than the send


def topic(kind: str, sensor: str) -> bytes:
    return f"event/{kind}/{sensor}".encode("utf-8")


class EventPublisher:
    """Binds a PUB socket and publishes msgpack events (never blocks: PUB drops on HWM).

    Args:
      secure: optional ``callable(sock)`` run before ``bind``, e.g. to make the socket a CURVE
        server (`edgert.auth.ServerAuth.secure`).
    """

    def __init__(self, ctx: zmq.Context, endpoint: str, hwm: int = 10000, secure=None):
        self.sock = ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.SNDHWM, hwm)
        self.sock.setsockopt(zmq.LINGER, 200)
        if secure is not None:
            secure(self.sock)
        self.sock.bind(endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.published = 0

    def publish(self, kind: str, sensor: str, payload: dict) -> None:
        """Publish one event; its payload gets the schema version ``v`` (`SCHEMA_VERSION`)."""
        payload["v"] = SCHEMA_VERSION
        send = self.sock.send
        send(topic(kind, sensor), _MORE)  # two sends: a third of send_multipart's cost
        send(msgpack.packb(payload))
        self.published += 1

    def publish_packed(self, topics: list, data: bytes, offsets) -> None:
        """Publish events whose payloads are already msgpack (`edgert.kernels.encode_anomalies`):
        event j is ``topics[j]`` with ``data[offsets[j]:offsets[j + 1]]``."""
        send = self.sock.send
        mv = memoryview(data)
        for j, t in enumerate(topics):
            send(t, _MORE)
            send(mv[offsets[j]:offsets[j + 1]])
        self.published += len(topics)

    def close(self) -> None:
        self.sock.close()


class FanOut:
    """One `EventSink` over several (``--events`` given more than once, e.g. ZeroMQ and MQTT
    side by side): each event goes to every sink, in order. Each sink adds ``v`` itself.

    Attributes:
      sinks: the sinks, in the order of the endpoints.
      published: events handed out (each counted once however many sinks took it).
    """

    def __init__(self, sinks: list):
        self.sinks = list(sinks)
        self.published = 0

    def publish(self, kind: str, sensor: str, payload: dict) -> None:
        for sink in self.sinks:
            sink.publish(kind, sensor, payload)
        self.published += 1

    def publish_packed(self, topics: list, data, offsets) -> None:
        """Packed anomaly events (`AnomalyPacker`): passed on as they are to the sinks that take
        them (ZeroMQ); for the others each event is asked `coalesce` first (MQTT sends at most one
        a sensor per interval) and only those sent are decoded into a dict."""
        for sink in self.sinks:
            packed = getattr(sink, "publish_packed", None)
            if packed is not None:
                packed(topics, data, offsets)
                continue
            coalesce = getattr(sink, "coalesce", None)
            mv = memoryview(data)
            for j, t in enumerate(topics):
                _, kind, sensor = bytes(t).decode("utf-8").split("/", 2)
                if coalesce is not None and coalesce(kind, sensor):
                    continue
                payload = msgpack.unpackb(mv[offsets[j]:offsets[j + 1]], raw=False)
                if coalesce is not None:
                    sink.publish(kind, sensor, payload, checked=True)
                else:
                    sink.publish(kind, sensor, payload)
        self.published += len(topics)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def decode(frames) -> tuple[str, str, dict]:
    """(kind, sensor, payload) of a received event."""
    t = bytes(frames[0]).decode("utf-8")
    _, kind, sensor = t.split("/", 2)
    return kind, sensor, msgpack.unpackb(bytes(frames[1]), raw=False)


ANOMALY_KEYS = ("v", "sensor", "t_start", "t_end", "score", "threshold", "channels", "contributions",
                "channel_error", "top_channels", "stats", "model", "backend", "seq", "latency_us",
                "queue_delay_us", "batch")  # the payload order of `anomaly` (without a classifier)


class AnomalyPacker:
    """Anomaly events of a batch packed in one compiled call (`edgert.kernels.encode_anomalies`)
    for a sink with ``publish_packed``: the same payloads as `anomaly`, byte for byte what
    msgpack would decode to the same values.

    Args:
      model, backend: names in every event (a new packer after a swap).
      channels: the model's channel names.
      slots: sensor table size.
    """

    def __init__(self, model: str, backend: str, channels, slots: int):
        self.model, self.backend, self.C = model, backend, len(channels)
        packed = [msgpack.packb(k) for k in (*ANOMALY_KEYS, *STAT_NAMES)]
        self.keys, self.key_off = self._blob(packed)
        self.consts, self.const_off = self._blob([msgpack.packb(list(channels)), msgpack.packb(model),
                                                 msgpack.packb(backend), msgpack.packb(SCHEMA_VERSION)])
        self.chans, self.chan_off = self._blob([msgpack.packb(c) for c in channels])
        self.name_a = np.zeros(slots, np.int64)
        self.name_z = np.zeros(slots, np.int64)
        self._slot: dict[int, tuple] = {}  # slot -> (sensor, packed name, topic)
        self.per_event = (64 + len(self.keys) + len(self.consts) + 3 * max(map(len, packed)) + 80
                          + 3 * int(self.chan_off[-1]) + 9 * (8 * 9 * self.C + 4) + 9 * 4)
        self.out = np.zeros(32 * self.per_event, np.uint8)
        self.out_off = np.zeros(33, np.int64)

    @staticmethod
    def _blob(parts):
        off = np.zeros(len(parts) + 1, np.int64)
        off[1:] = np.cumsum([len(p) for p in parts])
        return np.frombuffer(b"".join(parts), np.uint8), off

    def publish(self, sink, names, dt, b, idx, scores, thr, ch_err, shares, lat_us, qd_us, k: int, span: int) -> None:
        """Pack and publish the events of rows `idx` of batch `b` (see `Pipeline._score_batch`)."""
        from . import kernels

        m = len(idx)
        slots = b.sensor_idx[idx].tolist()
        parts, pos = [], 0
        for s in set(slots):
            name = names[s]
            c = self._slot.get(s)
            if c is None or c[0] != name:  # the slot changed hands since
                c = self._slot[s] = (name, msgpack.packb(name), topic("anomaly", name))
            self.name_a[s] = pos
            pos += len(c[1])
            self.name_z[s] = pos
            parts.append(c[1])
        if self.out.size < m * self.per_event:
            self.out = np.zeros(m * self.per_event, np.uint8)
        if self.out_off.size < m + 1:
            self.out_off = np.zeros(m + 1, np.int64)
        top = np.argsort(-shares, axis=1)[:, :3]
        n = kernels.encode_anomalies(
            idx, b.sensor_idx, b.t_start, b.seq, b.stats, scores, thr, shares, ch_err, lat_us, qd_us, top, k,
            span, dt, np.frombuffer(b"".join(parts), np.uint8), self.name_a, self.name_z, self.chans,
            self.chan_off, self.keys, self.key_off, self.consts, self.const_off, self.out, self.out_off)
        sink.publish_packed([self._slot[s][2] for s in slots], memoryview(self.out)[:n],
                            self.out_off[:m + 1].tolist())
