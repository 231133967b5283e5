"""The sensor side of the bus: a publisher that speaks the wire format (used by replay and tests).

Sensors connect; the daemon binds. With ``pub`` the sensor uses an XPUB socket so it can wait
until the daemon's subscription has arrived (a plain PUB drops what it sends before that);
with ``push`` the socket queues only to a completed connection (ZMQ_IMMEDIATE), so with no
daemon, or a daemon whose input is not PULL, nothing is queued into the void: the sensor waits.
"""

from __future__ import annotations

import time

import numpy as np
import zmq

from . import wire
from .auth import HandshakeWatch, secure_client


class SensorPublisher:
    """Sends blocks of samples for one sensor id.

    Args:
      endpoint: the daemon's listen endpoint (``tcp://host:port`` or ``ipc://path``).
      sensor: sensor id (1-64 UTF-8 bytes).
      kind: "pub" (daemon SUB) or "push" (daemon PULL).
      ctx: a zmq context (default: the global instance).
      curve_server_key, curve_client_key: for a daemon with CURVE on, the daemon's public key
        (``.key`` file or Z85 text) and this sensor's ``.key_secret`` file (`edgert.auth.secure_client`).
    Raises:
      ValueError for a bad sensor id or key file (naming it).
    """

    def __init__(self, endpoint: str, sensor: str, kind: str = "pub", ctx: zmq.Context | None = None,
                 sndhwm: int = 100000, curve_server_key: str | None = None,
                 curve_client_key: str | None = None):
        if not 1 <= len(sensor.encode("utf-8")) <= wire.MAX_SENSOR_ID:
            raise ValueError(f"sensor id {sensor!r} must be 1-{wire.MAX_SENSOR_ID} UTF-8 bytes")
        self.ctx = ctx or zmq.Context.instance()
        self.kind = kind
        self.sock = self.ctx.socket(zmq.XPUB if kind == "pub" else zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, sndhwm)
        self.sock.setsockopt(zmq.LINGER, 2000)
        if kind == "push":
            self.sock.setsockopt(zmq.IMMEDIATE, 1)  # before connect: it applies to new connections
        try:
            self.curve = secure_client(self.sock, curve_server_key, curve_client_key)
        except BaseException:
            self.sock.close(linger=0)
            raise
        # With CURVE, watch the handshake: a refused client learns why instead of waiting forever.
        self._watch = HandshakeWatch(self.sock) if self.curve else None
        self.refused = None  # why the daemon refused this client (edgert.auth.refusal_cause), if it did
        self.sock.connect(endpoint)
        self.sensor = sensor
        self._id = sensor.encode("utf-8")
        self.seq = 0
        self.sent = 0

    def wait_subscribed(self, timeout: float = 5.0) -> bool:
        """Block until a daemon can take blocks. True if one can.

        ``pub``: until a subscriber's subscription arrives. ``push``: until a connection has
        completed its ZeroMQ handshake (a SUB daemon's never does; nothing listening, neither).
        With CURVE (either kind): first the CURVE handshake; False if the daemon refused this
        client (`refused` says why) or did not answer in time.
        """
        if self._watch is not None:
            start = time.monotonic()
            ok, self.refused = self._watch.wait(timeout)
            self._watch.close()
            self._watch = None
            if not ok:
                return False
            timeout = max(0.0, timeout - (time.monotonic() - start))
        if self.kind != "pub":
            return bool(self.sock.poll(int(timeout * 1000), zmq.POLLOUT))
        if self.sock.poll(int(timeout * 1000), zmq.POLLIN):
            self.sock.recv()  # the subscription message itself
            return True
        return False

    def send(self, samples: np.ndarray, t0: int, dt: int, seq: int | None = None) -> None:
        """Send one block ([n, C] array of an allowed dtype) starting at t0 ns, dt ns apart."""
        if seq is None:
            seq = self.seq
        self.seq = seq + 1
        samples = np.ascontiguousarray(samples)
        self.sock.send_multipart([self._id, wire.encode_header(seq, t0, dt, samples), samples],
                                 copy=samples.nbytes < zmq.COPY_THRESHOLD)
        self.sent += 1

    def send_frames(self, frames) -> None:
        """Send raw frames (for tests of malformed input)."""
        self.sock.send_multipart(frames)

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
        self.sock.close()


def recv_frames(sock, flags: int = zmq.NOBLOCK) -> list:
    """Receive one multipart message as zero-copy ``Frame``s.

    Same result as ``sock.recv_multipart(flags, copy=False)`` at under half its cost: each
    Frame says itself whether more parts follow, so no RCVMORE query per part.
    Raises zmq.Again when nothing is waiting (with NOBLOCK).
    """
    f = sock.recv(flags, copy=False)
    frames = [f]
    while f.more:
        f = sock.recv(copy=False)
        frames.append(f)
    return frames


def now_ns() -> int:
    return time.time_ns()
