"""systemd's notification protocol (sd_notify), without libsystemd.

A service of ``Type=notify`` gets ``$NOTIFY_SOCKET``: a unix datagram socket, a filesystem path
or, when it starts with ``@``, a name in the abstract namespace. Each notification is one
datagram of newline-separated ``KEY=VALUE`` lines: ``READY=1`` (start-up done),
``STATUS=…`` (free text shown by ``systemctl status``), ``WATCHDOG=1`` (keep-alive; with
``WatchdogSec=`` systemd sets ``$WATCHDOG_USEC`` and kills the service when it stops coming),
``STOPPING=1`` (shutting down). Without ``$NOTIFY_SOCKET`` everything here is a no-op, so the
daemon runs the same by hand, under systemd or in a container.

    n = Notifier()                 # reads the environment once
    n.ready("serving motor-ae")    # READY=1 + STATUS=…
    n.tick()                       # call often: sends WATCHDOG=1 every WATCHDOG_USEC/2
    n.stopping()                   # STOPPING=1
"""

from __future__ import annotations

import os
import socket
import time

__all__ = ["notify", "watchdog_interval", "Notifier"]


def _address(path: str | None) -> str | bytes | None:
    if not path:
        return None
    if path.startswith("@"):
        return "\0" + path[1:]  # abstract namespace
    if path.startswith("/"):
        return path
    return None  # systemd only hands out absolute paths or abstract names (vsock is not handled)


def notify(state: str, socket_path: str | None = None) -> bool:
    """Send one notification (e.g. ``"READY=1"`` or ``"STATUS=…\\nWATCHDOG=1"``).

    Args:
      state: newline-separated ``KEY=VALUE`` assignments.
      socket_path: the socket; default ``$NOTIFY_SOCKET``.
    Returns:
      True if it was sent, False when there is no socket to send to or sending failed
      (notifications are best-effort: a missing systemd must never stop the daemon).
    """
    addr = _address(socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET"))
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode("utf-8"))
        return True
    except OSError:
        return False


def watchdog_interval(env=None) -> float | None:
    """Seconds between keep-alives: half of ``$WATCHDOG_USEC``, or None when no watchdog is asked.

    ``$WATCHDOG_PID``, when set, must be this process (otherwise the watchdog is someone else's).
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        us = int(usec)
    except ValueError:
        return None
    return us / 2e6 if us > 0 else None


class Notifier:
    """The daemon's side of the protocol: ready, periodic watchdog, status, stopping.

    Args:
      socket_path: default ``$NOTIFY_SOCKET`` (read once, here).
      interval: watchdog period in seconds; default `watchdog_interval()`.
      clock: monotonic clock (tests).
    """

    def __init__(self, socket_path: str | None = None, interval: float | None = None, clock=time.monotonic):
        self.socket_path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET")
        self.enabled = _address(self.socket_path) is not None
        self.interval = interval if interval is not None else watchdog_interval()
        self._clock = clock
        self._next = float("inf")
        self.sent = 0

    def send(self, state: str) -> bool:
        if not self.enabled:
            return False
        ok = notify(state, self.socket_path)
        self.sent += ok
        return ok

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (plus ``STATUS=`` if given); starts the watchdog clock."""
        msg = "READY=1" + (f"\nSTATUS={status}" if status else "")
        ok = self.send(msg)
        if self.interval:
            self._next = self._clock() + self.interval
        return ok

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def tick(self) -> None:
        """Call from the main loop as often as you like: sends ``WATCHDOG=1`` when due.

        Costs one clock read when nothing is due. The watchdog only runs after `ready`, and only
        from the loop that calls this, so a wedged loop stops the keep-alives (which is the point).
        """
        now = self._clock()
        if now < self._next:
            return
        self._next = now + self.interval
        self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        self._next = float("inf")
        return self.send("STOPPING=1" + (f"\nSTATUS={status}" if status else ""))
