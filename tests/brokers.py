"""A real Mosquitto broker for tests: started on a free port with its own config in a tmp dir.

`Mosquitto(tmp_path, ...)` writes ``mosquitto.conf`` (a listener on 127.0.0.1, optional
password file, persistence in the tmp dir) and starts ``mosquitto -c``; `stop` / `start`
kill and restart it on the same port. `MOSQUITTO` is the binary or None (tests skip with
`SKIP_REASON`). `Subscriber` is a paho client recording what arrives.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import threading
import time

MOSQUITTO = next((p for p in ("/usr/sbin/mosquitto", shutil.which("mosquitto")) if p and os.path.exists(p)), None)
SKIP_REASON = "mosquitto is not installed (Debian: apt-get install mosquitto)"


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def write_password_file(path, users: dict) -> None:
    """A Mosquitto password file (``mosquitto_passwd -b``) with {user: password}."""
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not os.path.exists(tool):
        import pytest

        pytest.skip("mosquitto_passwd is not installed (Debian: package mosquitto)")
    open(path, "w").close()
    for user, password in users.items():
        subprocess.run([tool, "-b", str(path), user, password], check=True, capture_output=True, timeout=20)


def make_certs(d) -> dict:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (openssl CLI), in `d`.
    Returns {name: path}; skips the test when openssl is missing."""
    tool = shutil.which("openssl")
    if tool is None:
        import pytest

        pytest.skip("openssl is not installed (needed to make test certificates)")
    d.mkdir(exist_ok=True)
    p = {k: str(d / k) for k in ("ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key")}

    def run(*args):
        subprocess.run([tool, *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=edgert-test-ca",
        "-keyout", p["ca.key"], "-out", p["ca.crt"])
    for who, subj in (("server", "/CN=127.0.0.1"), ("client", "/CN=edgert-client")):
        csr = str(d / f"{who}.csr")
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", subj, "-keyout", p[f"{who}.key"], "-out", csr)
        ext = d / f"{who}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1\n" if who == "server" else "extendedKeyUsage=clientAuth\n")
        run("x509", "-req", "-in", csr, "-CA", p["ca.crt"], "-CAkey", p["ca.key"], "-CAcreateserial", "-days", "2",
            "-out", p[f"{who}.crt"], "-extfile", str(ext))
    return p


class Mosquitto:
    """One broker process. Args: users ({user: password}: then anonymous clients are refused),
    persistence (keep retained messages and sessions across `stop`/`start`)."""

    def __init__(self, tmp_path, users: dict | None = None, persistence: bool = False, extra: str = "",
                 tls: dict | None = None):
        self.dir = tmp_path / f"mosquitto-{os.getpid()}-{id(self) & 0xffff:x}"
        self.dir.mkdir()
        self.port = free_port()
        # As root, mosquitto would switch to user "mosquitto", who cannot read this tmp dir.
        lines = [f"user {getpass.getuser()}", f"listener {self.port} 127.0.0.1", f"log_dest file {self.dir / 'mosquitto.log'}",
                 "log_type error", "log_type warning", "log_type notice", "log_type information"]
        if tls:  # {name: path} from make_certs: TLS only, and a client certificate is required
            lines += [f"cafile {tls['ca.crt']}", f"certfile {tls['server.crt']}", f"keyfile {tls['server.key']}",
                      "require_certificate true"]
        if users:
            write_password_file(self.dir / "passwd", users)
            lines += ["allow_anonymous false", f"password_file {self.dir / 'passwd'}"]
        else:
            lines.append("allow_anonymous true")
        if persistence:
            lines += ["persistence true", f"persistence_location {self.dir}/"]
        lines.append(extra)
        (self.dir / "mosquitto.conf").write_text("\n".join(lines) + "\n")
        self.proc = None
        self.start()

        self.tls = bool(tls)

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.dir / "mosquitto.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.proc.stderr.read().decode()[-2000:]} {self.log()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log()[-2000:]}")

    def stop(self, sig: str = "term") -> None:
        """Stop the broker (SIGTERM: it saves its persistence file; "kill": SIGKILL)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill() if sig == "kill" else self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def log(self) -> str:
        try:
            return (self.dir / "mosquitto.log").read_text()
        except OSError:
            return ""


class Subscriber:
    """A paho client subscribed to `topics`, recording (topic, payload bytes, qos, retain)."""

    def __init__(self, port: int, topics=("#",), qos: int = 1, client_id: str = "", clean: bool = True,
                 username: str | None = None, password: str | None = None):
        import paho.mqtt.client as mqtt

        self.messages: list = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.refused = None
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
        if username:
            self.c.username_pw_set(username, password)
        self.c.reconnect_delay_set(0.1, 0.5)

        def on_connect(c, ud, flags, rc, props=None):
            if rc.is_failure:
                self.refused = str(rc)
                return
            c.subscribe([(t, qos) for t in topics])

        def on_message(c, ud, m):
            with self.lock:
                self.messages.append((m.topic, m.payload, m.qos, m.retain))

        self.c.on_connect = on_connect
        self.c.on_subscribe = lambda *a: self.connected.set()  # the broker acknowledged the subscription
        self.c.on_disconnect = lambda *a: self.connected.clear()
        self.c.on_message = on_message
        self.c.connect_async("127.0.0.1", port)
        self.c.loop_start()

    def wait(self, pred, timeout: float = 10.0):
        """Wait until pred(messages) is truthy; returns its value (or the last falsy one)."""
        end = time.monotonic() + timeout
        while True:
            with self.lock:
                got = pred(list(self.messages))
            if got or time.monotonic() > end:
                return got
            time.sleep(0.02)

    def json(self, prefix: str) -> list:
        """Payloads (decoded JSON) of the messages whose topic starts with `prefix`."""
        with self.lock:
            return [json.loads(p) for t, p, *_ in self.messages if t.startswith(prefix)]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
