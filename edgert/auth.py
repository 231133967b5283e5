"""ZeroMQ CURVE authentication: set it up on the daemon's sockets and on clients.

One job. The daemon side (`ServerAuth`) makes the sensor socket (``--listen``) and the event
socket (``--events``) CURVE servers with the daemon's key pair, starts pyzmq's ZAP
authenticator thread (`zmq.auth.thread.ThreadAuthenticator`, ``configure_curve``) with the
directory of allowed client public keys, counts the peers refused at the handshake, and checks
``sensor_keys`` (a sensor id may only be sent by its client key). Without CURVE it warns once
about tcp:// endpoints reachable from the network. The client side (`secure_client`) gives a
sensor or an event subscriber its key pair and the daemon's public key. `new_keypair` writes
key pairs (``edgert keys new``). No cryptography here: libzmq does it, pyzmq runs ZAP.

Key files are pyzmq's/czmq's certificate format: ``NAME.key`` (public) and ``NAME.key_secret``
(public and secret), Z85 text. The ZAP "User-Id" of an authenticated peer is its public key in
Z85; libzmq attaches it to every frame the peer sends (``frame.get("User-Id")``).
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import os
import queue
import re
import socket as _socket
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq

log = logging.getLogger("edgert")

# ZAP domains: one per daemon socket, so the two may allow different client directories.
DOMAINS = {"sensors": "edgert-sensors", "events": "edgert-events"}
CONFIG_HINT = ("turn CURVE on: `edgert keys new DIR --name server`, one `edgert keys new` per client, "
               "then curve_server_key = \"DIR/server.key_secret\" and curve_allowed_clients_dir "
               "(config file or --curve-server-key / --curve-allowed-clients-dir)")
_LOOPBACK_NAMES = {"localhost", "lo", "ip6-localhost", "ip6-loopback"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MONITOR_IDS = itertools.count()


def require_curve() -> None:
    """Raise RuntimeError unless this libzmq can do CURVE (it needs libsodium or tweetnacl)."""
    if not zmq.has("curve"):
        raise RuntimeError(f"libzmq {zmq.zmq_version()} (pyzmq {zmq.__version__}) was built without "
                           "CURVE support; install a pyzmq wheel from PyPI (it bundles libzmq with "
                           "CURVE) or a libzmq built with libsodium")


# -- key files -------------------------------------------------------------------------------
def default_key_name() -> str:
    """This host's name as a key file name (so every device's key has a distinct name)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", _socket.gethostname()).strip(".-")
    return name if name and _NAME_RE.match(name) else "edgert"


def new_keypair(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write a CURVE key pair ``DIR/NAME.key`` (mode 0644) and ``DIR/NAME.key_secret`` (0600).

    The directory is created (mode 0700) if missing. Both files are created exclusively first,
    with their final modes, so the secret key is never readable by others, not even for a
    moment, and an existing pair is never overwritten.
    Returns:
      (public key path, secret key path).
    Raises:
      ValueError: a bad name, or a key file of that name already exists.
      RuntimeError: libzmq has no CURVE.
    """
    import zmq.auth

    require_curve()
    if not _NAME_RE.match(name) or name.endswith((".key", ".key_secret")):
        raise ValueError(f"key name {name!r} must be a plain file name (letters, digits, '.', '_', '-'), "
                         "without the .key suffix")
    d = Path(directory)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    public, secret = d / f"{name}.key", d / f"{name}.key_secret"
    made = []
    try:
        for path, mode in ((secret, 0o600), (public, 0o644)):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            except FileExistsError:
                raise ValueError(f"{path}: already exists; refusing to overwrite a key "
                                 "(remove it first, or choose another --name)") from None
            os.close(fd)
            made.append(path)
        os.chmod(secret, 0o600)  # O_CREAT's mode is masked by the umask: set both exactly
        os.chmod(public, 0o644)
        # pyzmq opens with "w": the files keep the modes they were created with.
        zmq.auth.create_certificates(str(d), name)
    except BaseException:
        for path in made:
            path.unlink(missing_ok=True)
        raise
    return public, secret


def _load_file(path: str, what: str) -> tuple[bytes, bytes | None]:
    """(public, secret or None) Z85 keys from a certificate file; ValueError naming `what` and the file."""
    import zmq.auth

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what}: {path}: no such file")
    try:
        public, secret = zmq.auth.load_certificate(p)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{what}: {path}: not a CURVE key file ({exc})") from None
    if not _z85_key(public):
        raise ValueError(f"{what}: {path}: public-key is not a 40-character Z85 CURVE key")
    if secret is not None:
        if not _z85_key(secret):
            raise ValueError(f"{what}: {path}: secret-key is not a 40-character Z85 CURVE key")
        if zmq.curve_public(secret) != public:
            raise ValueError(f"{what}: {path}: public-key does not belong to its secret-key")
    return public, secret


def _z85_key(key: bytes) -> bool:
    """True for the 40-character Z85 text of a 32-byte key."""
    from zmq.utils import z85

    if len(key) != 40:
        return False
    try:
        return len(z85.decode(key)) == 32
    except (ValueError, KeyError, TypeError):
        return False


def load_public(spec: str, what: str) -> bytes:
    """A public key (Z85 bytes) from a key file (``.key`` or ``.key_secret``) or 40 Z85 characters.

    Raises:
      ValueError naming `what` and the file.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"{what}: expected a key file path or a 40-character Z85 public key, got {spec!r}")
    if len(spec) == 40 and not os.path.exists(spec) and _z85_key(spec.encode("ascii", "replace")):
        return spec.encode("ascii")
    return _load_file(spec, what)[0]


def load_secret(path: str, what: str) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a ``.key_secret`` file. ValueError naming `what` and the file."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"{what}: expected the path of a .key_secret file, got {path!r}")
    public, secret = _load_file(path, what)
    if secret is None:
        raise ValueError(f"{what}: {path}: holds no secret-key (a public .key file?); give the "
                         ".key_secret file written by `edgert keys new`")
    return public, secret


def load_dir(directory: str, what: str) -> set[bytes]:
    """The public keys of every ``*.key`` file in a directory. ValueError naming `what` and the file."""
    d = Path(directory)
    if not d.is_dir():
        raise ValueError(f"{what}: {directory}: no such directory")
    keys = set()
    for p in sorted(d.glob("*.key")):
        keys.add(_load_file(str(p), what)[0])
    if not keys:
        raise ValueError(f"{what}: {directory}: holds no *.key public key files, so no client could connect")
    return keys


# -- daemon configuration ----------------------------------------------------------------------
@dataclass
class ServerKeys:
    """The daemon's CURVE settings, loaded and checked (`server_keys`)."""
    public: bytes
    secret: bytes
    secret_path: str
    dirs: dict  # role ("sensors" / "events") -> directory of allowed client public keys
    sensor_keys: dict = field(default_factory=dict)  # sensor id -> Z85 public key (str)


def curve_configured(cfg) -> bool:
    """True if any CURVE setting is given."""
    return bool(cfg.curve_server_key or cfg.curve_allowed_clients_dir or cfg.curve_event_clients_dir
                or cfg.sensor_keys)


def server_keys(cfg) -> ServerKeys | None:
    """Load and check the daemon's CURVE settings from a `edgert.config.Config`.

    Returns:
      None when CURVE is off (no CURVE key set), else the loaded keys.
    Raises:
      ValueError naming the config key and the file at fault; RuntimeError if libzmq lacks CURVE.
    """
    from . import wire

    if not curve_configured(cfg):
        return None
    if not cfg.curve_server_key:
        given = [k for k in ("curve_allowed_clients_dir", "curve_event_clients_dir", "sensor_keys")
                 if getattr(cfg, k)]
        raise ValueError(f"config key 'curve_server_key' is empty, but {', '.join(map(repr, given))} "
                         "need it: give the daemon's .key_secret file")
    if not cfg.curve_allowed_clients_dir:
        raise ValueError("config key 'curve_allowed_clients_dir' is empty: with curve_server_key set, "
                         "give the directory of the allowed clients' *.key public key files")
    require_curve()
    public, secret = load_secret(cfg.curve_server_key, "config key 'curve_server_key'")
    allowed = load_dir(cfg.curve_allowed_clients_dir, "config key 'curve_allowed_clients_dir'")
    dirs = {"sensors": cfg.curve_allowed_clients_dir, "events": cfg.curve_allowed_clients_dir}
    if cfg.curve_event_clients_dir:
        load_dir(cfg.curve_event_clients_dir, "config key 'curve_event_clients_dir'")
        dirs["events"] = cfg.curve_event_clients_dir
    if not isinstance(cfg.sensor_keys, dict):
        raise ValueError(f"config key 'sensor_keys' must be a table of sensor id = key, got {cfg.sensor_keys!r}")
    bound = {}
    for sensor, spec in cfg.sensor_keys.items():
        what = f"config key 'sensor_keys' entry {sensor!r}"
        if not isinstance(sensor, str) or not 1 <= len(sensor.encode("utf-8")) <= wire.MAX_SENSOR_ID:
            raise ValueError(f"{what}: a sensor id must be 1-{wire.MAX_SENSOR_ID} UTF-8 bytes")
        key = load_public(spec, what)
        if key not in allowed:
            raise ValueError(f"{what}: the key in {spec} is not among the allowed clients in "
                             f"{cfg.curve_allowed_clients_dir}, so it could never connect")
        bound[sensor] = key.decode("ascii")
    return ServerKeys(public, secret, cfg.curve_server_key, dirs, bound)


def _host(endpoint: str) -> str | None:
    """The host part of a ``tcp://HOST:PORT`` endpoint (brackets stripped), None if not tcp."""
    if not endpoint.startswith("tcp://"):
        return None
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0]
    host = host.split(";")[-1]  # "source;destination" form: the destination is what is bound
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_exposed(endpoint: str) -> bool:
    """True for a tcp:// endpoint that may accept connections from other machines: anything but
    a loopback address (127.0.0.0/8, ::1, localhost, lo). ipc:// and inproc:// are local."""
    host = _host(endpoint)
    if host is None:
        return False
    if host.lower() in _LOOPBACK_NAMES:
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # "*", an interface or a host name: assume reachable from the network


def warn_unauthenticated(endpoints: dict) -> str | None:
    """Log one warning naming every exposed endpoint ({role: endpoint}) and how to turn CURVE on.
    Returns the message (None if nothing is exposed)."""
    exposed = [f"{ep} ({role})" for role, ep in endpoints.items() if ep and is_exposed(ep)]
    if not exposed:
        return None
    msg = (f"unauthenticated: {', '.join(exposed)} accept{'s' if len(exposed) == 1 else ''} connections "
           f"from the network without CURVE: anyone who reaches {'it' if len(exposed) == 1 else 'them'} "
           f"can send sensor data or read events; {CONFIG_HINT}")
    log.warning("%s", msg)
    return msg


# -- daemon side -------------------------------------------------------------------------------
def _authenticator(ctx: zmq.Context):
    """pyzmq's ZAP authenticator thread, with a client's User-Id fixed to its Z85 public key
    (pyzmq's default, stated here because `ServerAuth.sensor_allowed` relies on it)."""
    from zmq.auth.thread import ThreadAuthenticator
    from zmq.utils import z85

    class Authenticator(ThreadAuthenticator):
        def curve_user_id(self, client_public_key: bytes) -> str:
            return z85.encode(client_public_key).decode("ascii")

    return Authenticator(ctx, log=logging.getLogger("edgert.zap"))  # its DEBUG lines name refused keys


def _monitor(sock: zmq.Socket, events: int) -> zmq.Socket:
    """A PAIR socket receiving `sock`'s monitor events. Its own inproc address (pyzmq's default
    is derived from the file descriptor, which a closed socket gives back to the next one)."""
    addr = f"inproc://edgert-auth-monitor-{os.getpid()}-{next(_MONITOR_IDS)}"
    sock.monitor(addr, events)
    pair = sock.context.socket(zmq.PAIR)
    pair.linger = 0
    pair.connect(addr)
    return pair


def refusal_cause(event: int, value: int) -> str:
    """Name a failed handshake: ``zap_denied`` (ZAP refused the key), ``no_curve`` (one side
    does not use CURVE), ``bad_crypto`` (wrong server key or corrupt data), ``handshake``."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return "zap_denied"  # value: the ZAP status code (400: key not allowed)
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return "no_curve"
        if value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
            return "bad_crypto"
    return "handshake"


HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


class _RefusalMonitor(threading.Thread):
    """Reads the monitor sockets of the CURVE sockets and hands each failed handshake to
    `on_refusal(role, event, value)` (`ServerAuth.monitor_event`)."""

    def __init__(self, on_refusal):
        super().__init__(name="edgert-auth-monitor", daemon=True)
        self.on_refusal = on_refusal
        self._new: queue.Queue = queue.Queue()
        self._stop_evt = threading.Event()

    def add(self, sock: zmq.Socket, role: str) -> None:
        """Monitor `sock` (call before it binds: the monitor socket is connected at once, so no
        event is lost while this thread picks it up)."""
        self._new.put((_monitor(sock, HANDSHAKE_FAILED), role))

    def run(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        poller, mons = zmq.Poller(), {}
        try:
            while not self._stop_evt.is_set():
                while not self._new.empty():
                    m, role = self._new.get()
                    poller.register(m, zmq.POLLIN)
                    mons[m] = role
                for m, _ in poller.poll(100):
                    ev = recv_monitor_message(m, zmq.NOBLOCK)
                    self.on_refusal(mons[m], ev["event"], ev["value"], ev["endpoint"])
        except zmq.ZMQError:  # the context was terminated under us: nothing left to count
            pass
        finally:
            while not self._new.empty():
                mons[self._new.get()[0]] = None
            for m in mons:
                m.close(linger=0)

    def close(self) -> None:
        self._stop_evt.set()
        if self.is_alive():
            self.join(5)


class ServerAuth:
    """CURVE on the daemon's sockets, or (CURVE off) one warning about exposed tcp endpoints.

    Args:
      ctx: the daemon's zmq context (the ZAP handler is per context: one daemon per context).
      cfg: an `edgert.config.Config` (curve_* keys, sensor_keys, listen, events).
    Raises:
      ValueError for bad key settings (naming the key and file), RuntimeError without CURVE in
      libzmq or when the context already has a ZAP handler.
    """

    def __init__(self, ctx: zmq.Context, cfg):
        self.keys = server_keys(cfg)
        self.enabled = self.keys is not None
        self.sensor_keys = self.keys.sensor_keys if self.enabled else {}
        self._auth = self._monitor = None
        self._counts: dict = {}  # (role, cause) -> peers refused at the handshake
        self._lock = threading.Lock()  # counts are written by the monitor thread, read by stats()
        self._rlog = None
        if not self.enabled:
            self.warning = warn_unauthenticated({"sensors": cfg.listen, "events": cfg.events})
            return
        self.warning = None
        mode = os.stat(self.keys.secret_path).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s: the daemon's secret key is readable by others (mode %o); chmod 600 it",
                        self.keys.secret_path, stat.S_IMODE(mode))
        self._auth = _authenticator(ctx)
        try:
            self._auth.start()
        except zmq.ZMQError as exc:
            self._auth = None
            raise RuntimeError(f"cannot start the ZAP authenticator ({exc}): this zmq context "
                               "already has one (one daemon per context)") from None
        for role, directory in self.keys.dirs.items():
            self._auth.configure_curve(domain=DOMAINS[role], location=directory)
        from .stats import RateLimitedLog

        self._rlog = RateLimitedLog()
        self._monitor = _RefusalMonitor(self.monitor_event)
        self._monitor.start()

    def secure(self, sock: zmq.Socket, role: str, monitor: bool = True) -> None:
        """Make `sock` a CURVE server in the ZAP domain of `role` ("sensors" or "events"). Call
        before ``bind``. No-op when CURVE is off.

        Args:
          monitor: count the socket's refused peers from a socket monitor of our own. libzmq
            allows one monitor per socket: if the caller monitors `sock` itself, pass False and
            forward events matching `HANDSHAKE_FAILED` to `monitor_event`.
        """
        if not self.enabled:
            return
        sock.curve_secretkey = self.keys.secret
        sock.curve_publickey = self.keys.public
        sock.curve_server = True
        sock.zap_domain = DOMAINS[role].encode()
        if monitor:
            self._monitor.add(sock, role)

    def monitor_event(self, role: str, event: int, value: int, endpoint: bytes = b"") -> None:
        """Count one socket monitor event of a secured socket if it is a failed handshake:
        ``HANDSHAKE_FAILED_AUTH`` is a ZAP refusal (a key not in the allowed directory); a
        ``HANDSHAKE_FAILED_PROTOCOL`` mechanism mismatch a peer without CURVE (ZAP never sees
        it); a cryptographic error or no detail, one that does not know the daemon's public key
        (or hung up first). Thread-safe; other events are ignored."""
        if not self.enabled or not event & HANDSHAKE_FAILED:
            return
        key = (role, refusal_cause(event, value))
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
            self._rlog.warning(key, f"CURVE refused a peer on the {role} socket "
                                    f"{bytes(endpoint).decode(errors='replace')}: {key[1]} "
                                    f"({zmq.Event(event).name} {value:#x})")

    def sensor_allowed(self, frames, sensor: str) -> bool:
        """True if the message's sender (its ZAP User-Id, i.e. its public key) is the key bound to
        `sensor` in sensor_keys. A sensor id not in sensor_keys is refused: with sensor_keys set,
        only the listed ids may speak. Only call when `sensor_keys` is non-empty."""
        want = self.sensor_keys.get(sensor)
        if want is None:
            return False
        try:
            return frames[0].get("User-Id") == want
        except (zmq.ZMQError, AttributeError):  # no User-Id, or frames received with copy=True
            return False

    @property
    def refused(self) -> int:
        """Peers refused at the handshake so far, both sockets, every cause."""
        return self.stats()["auth_refused"]

    def stats(self) -> dict:
        """``auth_refused`` (total) and ``auth_refused_by`` ({"sensors/no_curve": n, …}) for the
        daemon's stats; ``curve`` says whether CURVE is on."""
        with self._lock:
            by = {f"{r}/{c}": n for (r, c), n in sorted(self._counts.items())}
        return {"curve": self.enabled, "auth_refused": sum(by.values()), "auth_refused_by": by}

    def close(self) -> None:
        """Stop the monitor and the ZAP thread (after the secured sockets are closed)."""
        if self._monitor is not None:
            self._monitor.close()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


def stats(server_auth: ServerAuth | None) -> dict:
    """`ServerAuth.stats` or, before the daemon bound its sockets, the same keys at zero."""
    if server_auth is None:
        return {"curve": False, "auth_refused": 0, "auth_refused_by": {}}
    return server_auth.stats()


# -- client side -------------------------------------------------------------------------------
def secure_client(sock: zmq.Socket, server_key: str | None, client_key: str | None) -> bool:
    """Give a client socket (sensor, event subscriber) CURVE keys. Call before ``connect``.

    Args:
      server_key: the daemon's public key: its ``.key`` file (or ``.key_secret``; only the public
        half is read) or the 40-character Z85 text.
      client_key: this client's ``.key_secret`` file (its ``.key`` must be in the daemon's
        allowed clients directory).
    Returns:
      True if CURVE was set, False if both are None/empty (plain connection).
    Raises:
      ValueError naming the option and the file; RuntimeError if libzmq lacks CURVE.
    """
    if not server_key and not client_key:
        return False
    if not server_key or not client_key:
        raise ValueError("curve_server_key (the daemon's public key) and curve_client_key (this "
                         "client's .key_secret) go together: give both or neither")
    require_curve()
    server_public = load_public(server_key, "curve_server_key")
    public, secret = load_secret(client_key, "curve_client_key")
    sock.curve_serverkey = server_public
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    return True


CLIENT_HINTS = {
    "zap_denied": "the daemon refused this client's key: put its .key in the daemon's allowed clients directory",
    "no_curve": "the daemon does not use CURVE on this socket (or this client does not): use --curve-* on both or neither",
    "bad_crypto": "wrong daemon public key (curve_server_key)?",
    "handshake": "wrong daemon public key (curve_server_key), or the daemon refused this client",
}


class HandshakeWatch:
    """Watches a client socket's CURVE handshakes (create before ``connect``), so a refused client
    can say why instead of waiting forever (a PUSH whose peer refused it blocks on send).
    Use from the socket's thread; `close` when done."""

    def __init__(self, sock: zmq.Socket):
        self._pair = _monitor(sock, zmq.EVENT_HANDSHAKE_SUCCEEDED | HANDSHAKE_FAILED)

    def wait(self, timeout: float) -> tuple[bool | None, str | None]:
        """Wait up to `timeout` s for the first handshake to end.
        Returns:
          (True, None) on success, (False, cause) when refused (`refusal_cause`), (None, None) on timeout.
        """
        from zmq.utils.monitor import recv_monitor_message

        end = time.monotonic() + timeout
        while self._pair is not None:
            left = end - time.monotonic()
            if left <= 0 or not self._pair.poll(int(left * 1000) + 1):
                return None, None
            ev = recv_monitor_message(self._pair)
            if ev["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return True, None
            if ev["event"] & HANDSHAKE_FAILED:
                return False, refusal_cause(ev["event"], ev["value"])
        return None, None

    def close(self) -> None:
        if self._pair is not None:
            self._pair.close(linger=0)
            self._pair = None
