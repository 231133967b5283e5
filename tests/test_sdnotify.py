"""sd_notify over a real unix datagram socket, and `edgert serve` under a simulated systemd."""

from __future__ import annotations

import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from edgert import sdnotify


class FakeSystemd:
    """A bound unix datagram socket standing in for systemd's notification socket."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + path[1:] if path.startswith("@") else path)
        self.path = path
        self.messages: list[tuple[float, str]] = []

    def receive(self, timeout: float, n: int | None = None) -> list[str]:
        """Collect datagrams for up to `timeout` seconds (or until `n` arrived); returns them."""
        got = []
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0 and (n is None or len(got) < n):
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except (socket.timeout, BlockingIOError):
                break
            msg = data.decode()
            self.messages.append((time.monotonic(), msg))
            got.append(msg)
        return got

    def wait_for(self, line: str, timeout: float) -> str | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for msg in self.receive(min(0.5, end - time.monotonic())):
                if line in msg.splitlines():
                    return msg
        return None

    def close(self):
        self.sock.close()


@pytest.fixture
def systemd(tmp_path):
    s = FakeSystemd(str(tmp_path / "notify.sock"))
    yield s
    s.close()


def test_notify_path_socket(systemd, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", systemd.path)
    assert sdnotify.notify("READY=1\nSTATUS=hello")
    assert systemd.receive(2.0, n=1) == ["READY=1\nSTATUS=hello"]


def test_notify_abstract_socket(monkeypatch):
    name = f"@edgert-test-{os.getpid()}-{time.monotonic_ns()}"
    s = FakeSystemd(name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", name)
        assert sdnotify.notify("WATCHDOG=1")
        assert s.receive(2.0, n=1) == ["WATCHDOG=1"]
    finally:
        s.close()


def test_notify_without_systemd_is_a_no_op(monkeypatch, tmp_path):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    n = sdnotify.Notifier()
    assert not n.enabled and n.ready("x") is False
    n.tick()
    n.stopping()
    # a socket that is gone must not raise either (systemd restarted, say)
    assert sdnotify.notify("READY=1", str(tmp_path / "gone.sock")) is False


def test_watchdog_interval(monkeypatch):
    assert sdnotify.watchdog_interval({}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "10000000"}) == 5.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}) == 5.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "junk"}) is None


def test_notifier_ticks_at_half_the_watchdog(systemd):
    now = [100.0]
    n = sdnotify.Notifier(systemd.path, interval=5.0, clock=lambda: now[0])
    n.tick()  # before READY: nothing
    assert n.ready("serving")
    assert systemd.receive(2.0, n=1) == ["READY=1\nSTATUS=serving"]
    for t in (101.0, 104.9):
        now[0] = t
        n.tick()
    assert systemd.receive(0.1) == []
    for t in (105.0, 105.1, 110.0, 114.0, 115.1):
        now[0] = t
        n.tick()
    assert systemd.receive(2.0, n=3) == ["WATCHDOG=1"] * 3
    assert systemd.receive(0.1) == []
    assert n.stopping("bye")
    now[0] = 200.0
    n.tick()
    assert systemd.receive(2.0, n=1) == ["STOPPING=1\nSTATUS=bye"]
    assert systemd.receive(0.1) == []


def _daemon_has_hooks() -> bool:
    from edgert.daemon import Daemon

    return "tick" in inspect.signature(Daemon.run).parameters


@pytest.mark.skipif(not _daemon_has_hooks(), reason="Daemon.run(tick=...) hook not in edgert/daemon.py yet")
def test_serve_notifies_systemd(systemd, tmp_path):
    """`edgert serve` as systemd would run it (Type=notify, WatchdogSec=0.4 s): READY=1 once the
    sockets take input, WATCHDOG=1 every 0.2 s, STOPPING=1 on SIGTERM, exit 0."""
    from edgert import wire

    listen, events = f"ipc://{tmp_path}/sensors", f"ipc://{tmp_path}/events"
    env = dict(os.environ, NOTIFY_SOCKET=systemd.path, WATCHDOG_USEC="400000", PYTHONUNBUFFERED="1")
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, "-m", "edgert", "serve", "--listen", listen, "--events", events,
                             "--socket", "pull", "--backend", "cpu", "--stats-interval", "0.5"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ctx = zmq.Context()
    try:
        ready = systemd.wait_for("READY=1", 120)
        assert ready is not None, "no READY=1 from edgert serve"
        assert proc.poll() is None
        t_ready = time.monotonic()
        # input is taken as soon as READY=1 is out
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 1000)
        push.connect(listen)
        block = np.zeros((64, 3), np.float32)
        push.send_multipart([b"m1", wire.encode_header(0, time.time_ns(), 1_000_000, block), block.tobytes()])
        systemd.receive(1.5)
        after = [(t, m) for t, m in systemd.messages if t >= t_ready]
        dogs = [t for t, m in after if "WATCHDOG=1" in m.splitlines()]
        assert len(dogs) >= 4, systemd.messages
        gaps = np.diff(dogs)
        assert gaps.max() < 0.4, gaps  # always inside the 0.4 s watchdog
        assert sum("READY=1" in m.splitlines() for _, m in systemd.messages) == 1
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert systemd.wait_for("STOPPING=1", 5) is not None or any(
            "STOPPING=1" in m.splitlines() for _, m in systemd.messages)
        final = json.loads(out.strip().splitlines()[-1])
        assert final["final"] and final["messages"] == 1 and final["backend"].startswith("cpu:")
        push.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        ctx.destroy(linger=0)


def test_deploy_files():
    """deploy/edgert.service is a notify service with a watchdog running `edgert serve --config`,
    and deploy/edgert.toml is a valid config."""
    import configparser
    import shlex
    from pathlib import Path

    from edgert import config
    from edgert.backends import spec

    root = Path(__file__).resolve().parents[1] / "deploy"
    unit = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    unit.optionxform = str
    unit.read(root / "edgert.service")
    svc = unit["Service"]
    assert svc["Type"] == "notify"
    assert float(svc["WatchdogSec"]) > 0
    assert svc["Restart"] == "on-failure"
    argv = shlex.split(svc["ExecStart"])
    assert argv[0].startswith("/") and argv[0].endswith("/edgert") and argv[1] == "serve"
    assert argv[argv.index("--config") + 1] == "/etc/edgert/edgert.toml"
    assert "PrivateDevices" not in svc  # would hide the Edge TPU
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    cfg = config.load(str(root / "edgert.toml"))
    spec.parse(cfg.backend)
    assert cfg.listen.startswith("ipc:///run/edgert/")  # inside the unit's RuntimeDirectory
