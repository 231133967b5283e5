"""Events out: a PUB socket the daemon binds; frame 0 ``event/<kind>/<sensor>``, frame 1 msgpack.

Kinds: ``anomaly`` (one per anomalous window), ``stats`` (periodic, sensor ``daemon``),
``lifecycle`` (start/stop). Subscribers filter by prefix, e.g. ``event/anomaly/``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import msgpack
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
        self.sock.send_multipart([topic(kind, sensor), msgpack.packb(payload)], copy=True)
        self.published += 1

    def close(self) -> None:
        self.sock.close()


def decode(frames) -> tuple[str, str, dict]:
    """(kind, sensor, payload) of a received event."""
    t = bytes(frames[0]).decode("utf-8")
    _, kind, sensor = t.split("/", 2)
    return kind, sensor, msgpack.unpackb(bytes(frames[1]), raw=False)
