"""MQTT for plant integration (paho-mqtt, the ``[mqtt]`` extra): events out, sensor data in.

- `MqttEventSink`: an `edgert.events.EventSink` for ``--events mqtt://HOST:PORT`` (``mqtts://``
  for TLS). Topics ``<prefix>/<node>/<kind>/<sensor>``, JSON payloads with the ZeroMQ events'
  fields and ``v``; QoS 1 for anomaly, drift, adapt, model and lifecycle events, QoS 0 for
  stats and scores; a retained ``<prefix>/<node>/status`` (``online`` with model and backend,
  Last Will ``offline``); optional Home Assistant discovery (a ``binary_sensor`` per sensor).
  ``publish`` never touches the network: it encodes the event and appends it to a bounded
  outbox (messages and bytes); a sender thread hands at most ``mqtt_inflight`` messages at a
  time to paho, whose own thread (``loop_start``) talks to the broker and reconnects with
  back-off. While the broker is away the outbox fills and the oldest go first, stats and
  scores before anomalies; every event lost is counted by kind (``mqtt_dropped``).
- `MqttIngest`: ``--listen mqtt://HOST:PORT/sensors/+``. paho's thread only checks a message's
  size and queues it (bounded, drops counted) on an inproc ZeroMQ socket the daemon polls; the
  daemon thread turns it into the bus's frames and hands them to `Pipeline.handle`, so MQTT
  blocks get the same validation, drop reasons and counts as ZeroMQ ones.
- `MqttSensorPublisher`: ``edgert replay --to mqtt://HOST:PORT/sensors/+``.

Payload framing and topics: docs/wire-format.md ("MQTT"). Passwords come from a file or an
environment variable named in the config and are never logged.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import socket as pysocket
import struct
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import numpy as np
import zmq

from . import wire
from .events import SCHEMA_VERSION
from .stats import RateLimitedLog, json_safe
from .wire import safe_id

log = logging.getLogger("edgert")

EXTRA_HINT = "pip install 'edgert[mqtt]'"
SCHEMES = ("mqtt", "mqtts")
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
# Kinds whose loss matters: QoS 1, kept in the outbox in preference to the periodic ones.
QOS1_KINDS = frozenset({"anomaly", "drift", "adapt", "model", "lifecycle", "ha"})
ITEM_OVERHEAD = 160  # bytes an outbox entry costs beyond its topic and payload (tuple, objects)
LEN_PREFIX = struct.Struct(">I")  # binary block: header length, big-endian uint32 (first byte 0)
# Characters that may not appear in a topic level as such (wildcards, separator, NUL, the
# control and non-characters Mosquitto refuses with a disconnect) and "%" itself: percent-escaped.
_UNSAFE = re.compile("[%+#/\x00-\x1f\x7f-\x9f\ufdd0-\ufdef\ufffe\uffff]")


class MissingExtra(RuntimeError):
    """paho-mqtt is not installed (the ``[mqtt]`` extra)."""


def paho():
    """The ``paho.mqtt.client`` module, or `MissingExtra` naming the extra to install."""
    try:
        import paho.mqtt.client as client
    except ImportError:
        raise MissingExtra(f"mqtt:// endpoints need paho-mqtt: {EXTRA_HINT}") from None
    return client


def is_mqtt(endpoint) -> bool:
    """True for an ``mqtt://`` or ``mqtts://`` endpoint."""
    return isinstance(endpoint, str) and endpoint.split("://", 1)[0] in SCHEMES and "://" in endpoint


@dataclass(frozen=True)
class Endpoint:
    """A parsed MQTT endpoint: broker ``host``/``port``, ``tls`` for mqtts://, the topic
    (filter) after the host (``sensors/+``; empty for events) and where its ``+`` is."""

    url: str
    host: str
    port: int
    tls: bool
    topic: str = ""
    sensor_level: int = -1

    def topic_for(self, sensor: str) -> str:
        """The topic a sensor publishes on: the filter with ``+`` replaced by its escaped id."""
        levels = self.topic.split("/")
        levels[self.sensor_level] = escape_level(sensor)
        return "/".join(levels)


def parse_endpoint(url: str, sensors: bool = False) -> Endpoint:
    """Parse ``mqtt[s]://HOST[:PORT][/TOPIC/FILTER]``.

    Args:
      sensors: an input endpoint: its path is a topic filter with exactly one ``+`` level
        (the sensor id) and no ``#``.
    Raises:
      ValueError naming the endpoint and what is wrong.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url}: not an MQTT endpoint ({exc})") from None
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise ValueError(f"{url}: expected mqtt://HOST:PORT or mqtts://HOST:PORT")
    if parts.username or parts.password:
        raise ValueError(f"{url}: put credentials in the config (mqtt_username, mqtt_password_file or "
                         "mqtt_password_env), not in the endpoint")
    if parts.query or parts.fragment:
        raise ValueError(f"{url}: unexpected ?query or #fragment (a '#' wildcard is not allowed)")
    topic = parts.path[1:] if parts.path.startswith("/") else parts.path
    level = -1
    if sensors:
        levels = topic.split("/")
        if not topic or levels.count("+") != 1 or "#" in topic or any("+" in lv and lv != "+" for lv in levels):
            raise ValueError(f"{url}: the topic filter must have exactly one '+' level, the sensor id "
                             "(e.g. mqtt://broker:1883/sensors/+), and no '#'")
        level = levels.index("+")
    elif topic:
        raise ValueError(f"{url}: an event endpoint takes no topic (set mqtt_topic_prefix)")
    return Endpoint(url, parts.hostname, port or DEFAULT_PORTS[parts.scheme], parts.scheme == "mqtts",
                    topic, level)


def escape_level(text: str) -> str:
    """`text` as one valid MQTT topic level: ``+ # / %``, NUL, control and non-characters
    percent-encoded (UTF-8 bytes), so any sensor id maps to exactly one level and back."""
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8")), text)


def unescape_level(level: str) -> str:
    """The sensor id of an escaped topic level (`escape_level`'s inverse).
    Raises UnicodeDecodeError when the escapes are not UTF-8."""
    return unquote(level, errors="strict") if "%" in level else level


def node_name(cfg) -> str:
    """``mqtt_node`` or this host's name."""
    return cfg.mqtt_node or pysocket.gethostname() or "edgert"


def read_password(cfg) -> str | None:
    """The broker password: the first line of ``mqtt_password_file`` or the environment
    variable ``mqtt_password_env``; None when neither is set.
    Raises ValueError naming the key (never the password)."""
    if cfg.mqtt_password_file:
        try:
            with open(cfg.mqtt_password_file, encoding="utf-8") as f:
                return f.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"config key 'mqtt_password_file': {cfg.mqtt_password_file}: "
                             f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    if cfg.mqtt_password_env:
        value = os.environ.get(cfg.mqtt_password_env)
        if value is None:
            raise ValueError(f"config key 'mqtt_password_env': environment variable "
                             f"{cfg.mqtt_password_env} is not set")
        return value
    return None


def make_client(cfg, ep: Endpoint, client_id: str, will: tuple | None = None):
    """A paho client for `ep` set up from the config: TLS (``mqtt_ca_file``, optional client
    certificate), username/password, keepalive, reconnect back-off, and a Last Will
    ``(topic, payload)`` (QoS 1, retained). Not connected yet.
    Raises `MissingExtra` without paho, ValueError for unusable TLS files or credentials."""
    mqtt = paho()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True,
                         protocol=mqtt.MQTTv311)
    client.suppress_exceptions = True  # a failing callback is logged by paho; it must not end its thread
    if ep.tls:
        try:
            client.tls_set(ca_certs=cfg.mqtt_ca_file or None, certfile=cfg.mqtt_cert_file or None,
                           keyfile=cfg.mqtt_key_file or None)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ValueError(f"{ep.url}: TLS files (mqtt_ca_file, mqtt_cert_file, mqtt_key_file): {exc}") from None
    password = read_password(cfg)
    if cfg.mqtt_username or password is not None:
        client.username_pw_set(cfg.mqtt_username or None, password)
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    client.reconnect_delay_set(cfg.mqtt_reconnect_min_s, cfg.mqtt_reconnect_max_s)
    return client


def _exposed_warning(cfg, ep: Endpoint, role: str) -> None:
    """One warning for plain mqtt:// to a broker off this host without credentials."""
    if ep.tls or cfg.mqtt_username or ep.host in ("localhost", "127.0.0.1", "::1"):
        return
    log.warning("%s (%s): plain MQTT without credentials to a broker on another host: anyone on the "
                "network path can read or forge this traffic; use mqtts:// and mqtt_username", ep.url, role)


class _Connection:
    """Connection state of a paho client as its callbacks report it (thread-safe reads)."""

    def __init__(self, name: str, url: str):
        self.name, self.url = name, url
        self.connected = False
        self.connects = 0
        self.disconnects = 0
        self.refusals = 0
        self.last_error: str | None = None
        self.connected_at: float | None = None
        self.closing = False  # a disconnect we asked for is not worth a warning
        self.rlog = RateLimitedLog(period=30.0, burst=2, max_keys=8)

    def on_connect(self, reason_code) -> bool:
        if reason_code.is_failure:
            self.refusals += 1
            self.last_error = str(reason_code)
            self.rlog.warning(("refused", self.name), f"MQTT {self.name}: {self.url} refused the connection: "
                                                     f"{reason_code}")
            return False
        self.connected = True
        self.connects += 1
        self.connected_at = time.monotonic()
        log.info("MQTT %s: connected to %s%s", self.name, self.url, " (reconnected)" if self.connects > 1 else "")
        return True

    def on_disconnect(self, reason_code) -> None:
        was = self.connected
        self.connected = False
        if self.closing:
            return
        if was:
            self.disconnects += 1
            self.last_error = str(reason_code)
            self.rlog.warning(("lost", self.name), f"MQTT {self.name}: lost {self.url} ({reason_code}); "
                                                  "reconnecting with back-off")
        elif not self.refusals or self.last_error is None:  # e.g. TLS: a client certificate the broker refused
            self.last_error = f"closed by the broker before accepting the connection ({reason_code})"
            self.rlog.warning(("closed", self.name), f"MQTT {self.name}: {self.url} closed the connection "
                                                    f"before accepting it ({reason_code}); retrying with back-off")

    def on_connect_fail(self) -> None:
        self.last_error = "connection failed (broker unreachable)"
        self.rlog.warning(("fail", self.name), f"MQTT {self.name}: cannot reach {self.url}; retrying with back-off")

    def stats(self) -> dict:
        return {"connected": self.connected, "connects": self.connects, "disconnects": self.disconnects,
                "refused": self.refusals, "last_error": self.last_error}


def _plain(obj):
    """JSON for what the json module does not know (numpy scalars and arrays), else its text."""
    return obj.tolist() if hasattr(obj, "tolist") else str(obj)


# -- events out -------------------------------------------------------------------------------
class MqttEventSink:
    """Publishes the daemon's events to a broker (see the module docstring).

    Args:
      endpoint: ``mqtt://HOST:PORT`` or ``mqtts://HOST:PORT``.
      cfg: the daemon's `edgert.config.Config` (``mqtt_*`` keys, ``max_sensors``).
      model, backend: for the retained ``online`` status.
    Raises:
      `MissingExtra`, or ValueError for a bad endpoint, TLS file or credential setting.
    """

    def __init__(self, endpoint: str, cfg, model: str = "", backend: str = ""):
        self.ep = parse_endpoint(endpoint)
        self.cfg = cfg
        self.node = node_name(cfg)
        self.base = f"{cfg.mqtt_topic_prefix}/{escape_level(self.node)}"
        self.status_topic = f"{self.base}/status"
        self.status = {"v": SCHEMA_VERSION, "state": "online", "node": self.node, "model": model,
                       "backend": backend, "pid": os.getpid()}
        offline = json.dumps({"v": SCHEMA_VERSION, "state": "offline", "node": self.node},
                             separators=(",", ":")).encode()
        self._offline = offline
        self.client = make_client(cfg, self.ep, cfg.mqtt_client_id or f"edgert-{self.node}",
                                  will=(self.status_topic, offline))
        _exposed_warning(cfg, self.ep, "events")
        self.conn = _Connection("events", endpoint)
        self.endpoint = endpoint
        self.max_messages = cfg.mqtt_outbox_messages
        self.max_bytes = int(cfg.mqtt_outbox_mb * 2**20)
        self.inflight = cfg.mqtt_inflight
        # The outbox: QoS 1 kinds and the rest (stats, scores) apart, so the rest go first.
        self._keep: collections.deque = collections.deque()
        self._lossy: collections.deque = collections.deque()
        self._bytes = 0
        self._pending: dict = {}  # mid -> (kind, qos): handed to paho, not yet written/acknowledged
        self._early: set = set()  # mids paho finished before publish() returned
        self._cond = threading.Condition()
        self._stop = False
        self._idle = False  # the sender thread waits for work
        self._handing = 0  # messages the sender took from the outbox and has not recorded yet
        self.published = 0  # messages queued (events, and Home Assistant's); status messages aside
        self.sent = 0  # handed to paho
        self.delivered = 0  # written (QoS 0) or acknowledged by the broker (QoS 1)
        self.dropped: dict = {}  # kind -> events lost (outbox full, connection lost, closed)
        self._topics: dict = {}  # sensor -> escaped level (bounded)
        self.anomaly_interval = float(getattr(cfg, "mqtt_anomaly_interval_s", 0.0))
        self._last_anomaly: dict = {}  # sensor -> [monotonic time of the last anomaly sent, coalesced since]
        self.coalesced = 0  # anomaly events counted, not sent (mqtt_anomaly_interval_s)
        self.ha = cfg.mqtt_ha_discovery
        self._ha: collections.OrderedDict = collections.OrderedDict()  # sensor -> [last state, last ON time]
        self.ha_skipped = 0
        c = self.client
        c.max_inflight_messages_set(self.inflight)
        c.max_queued_messages_set(self.inflight + 8)  # our window + status messages: paho's queue is bounded
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_connect_fail = lambda *_: self.conn.on_connect_fail()
        c.on_publish = self._on_publish
        c.connect_async(self.ep.host, self.ep.port, keepalive=cfg.mqtt_keepalive_s)
        c.loop_start()
        self._thread = threading.Thread(target=self._sender, name="edgert-mqtt-out", daemon=True)
        self._thread.start()

    # -- the hot loop's side: encode and queue, never block ---------------------------
    def coalesce(self, kind: str, sensor: str) -> bool:
        """True when this event is not sent but counted: an anomaly of a sensor whose last one
        went out less than ``mqtt_anomaly_interval_s`` ago. A fault flags every window of a
        sensor (dozens a second): a broker and Home Assistant need its start and a heartbeat,
        not each window, and building each as a JSON message cost 6x scoring it (measured).
        Per-sensor state is bounded like the topic cache."""
        if kind != "anomaly" or self.anomaly_interval <= 0:
            return False
        now = time.monotonic()
        st = self._last_anomaly.get(sensor)
        if st is not None and now - st[0] < self.anomaly_interval:
            st[1] += 1
            self.coalesced += 1
            return True
        if st is None and len(self._last_anomaly) >= 4 * self.cfg.max_sensors:
            self._last_anomaly.clear()  # a flood of ids: forget the intervals, keep the bound
        self._last_anomaly[sensor] = [now, 0] if st is None else [now, st[1]]
        return False

    def publish(self, kind: str, sensor: str, payload: dict, checked: bool = False) -> None:
        """Queue one event (``v`` added, NaN → null). Drops the oldest when the outbox is full.
        An anomaly may be coalesced first (`coalesce`; ``checked``: the caller did that)."""
        if not checked and self.coalesce(kind, sensor):
            return
        if kind == "anomaly" and self.anomaly_interval > 0:
            st = self._last_anomaly.get(sensor)
            payload = dict(payload, coalesced=st[1] if st else 0)
            if st:
                st[1] = 0
        payload["v"] = SCHEMA_VERSION
        try:
            data = json.dumps(payload, separators=(",", ":"), allow_nan=False, default=_plain).encode()
        except ValueError:  # NaN or Inf somewhere: JSON has none
            data = json.dumps(json_safe(payload), separators=(",", ":"), default=_plain).encode()
        level = self._topics.get(sensor)
        if level is None:
            level = escape_level(sensor)
            if len(self._topics) < 4 * self.cfg.max_sensors:
                self._topics[sensor] = level
        qos = 1 if kind in QOS1_KINDS else 0
        self._enqueue(kind, f"{self.base}/{kind}/{level}", data, qos, False)
        if kind == "model" and payload.get("state") == "swapped":
            self.status.update(model=payload.get("model"), backend=payload.get("backend"))
            self._publish_status()
        if self.ha:
            self._ha_update(kind, sensor, payload)

    def _enqueue(self, kind: str, topic: str, data: bytes, qos: int, retain: bool) -> None:
        size = len(data) + len(topic) + ITEM_OVERHEAD
        with self._cond:
            self.published += 1
            if size > self.max_bytes:
                self._count_drop(kind)
                return
            (self._keep if qos else self._lossy).append((kind, topic, data, qos, retain, size))
            self._bytes += size
            while len(self._keep) + len(self._lossy) > self.max_messages or self._bytes > self.max_bytes:
                old = (self._lossy or self._keep).popleft()  # the oldest stats/scores go first
                self._bytes -= old[5]
                self._count_drop(old[0])
            if self._idle:  # wake the sender only when it sleeps (a notify per event costs a syscall)
                self._cond.notify()

    def _count_drop(self, kind: str, n: int = 1) -> None:
        self.dropped[kind] = self.dropped.get(kind, 0) + n

    # -- Home Assistant discovery ------------------------------------------------------
    def _ha_update(self, kind: str, sensor: str, payload: dict) -> None:
        """Discover sensors (from anomaly, scores and stats events) and set their state:
        ON with an anomaly (again at most every off_delay/2 s: Home Assistant turns it OFF
        after ``mqtt_ha_off_delay_s``), OFF when a batch of scores has none."""
        if kind == "stats":
            for s in (payload.get("per_sensor") or {}):
                self._ha_entry(s)
            return
        if kind not in ("anomaly", "scores"):
            return
        entry = self._ha_entry(sensor)
        if entry is None:
            return
        on = kind == "anomaly" or any(payload.get("anomaly") or ())
        now = time.monotonic()
        if on and (entry[0] != "ON" or now - entry[1] >= self.cfg.mqtt_ha_off_delay_s / 2):
            entry[0], entry[1] = "ON", now
            self._enqueue("ha", self._ha_state_topic(sensor), b"ON", 1, False)
        elif not on and entry[0] == "ON" and now - entry[1] >= self.cfg.mqtt_ha_off_delay_s:
            entry[0] = "OFF"
            self._enqueue("ha", self._ha_state_topic(sensor), b"OFF", 1, False)

    def _ha_entry(self, sensor: str):
        entry = self._ha.get(sensor)
        if entry is None:
            if len(self._ha) >= self.cfg.max_sensors:
                self.ha_skipped += 1
                return None
            entry = self._ha[sensor] = ["OFF", 0.0]
            self._enqueue("ha", *self._ha_config(sensor), 1, True)
        return entry

    def _ha_state_topic(self, sensor: str) -> str:
        return f"{self.base}/ha/{escape_level(sensor)}/state"

    def _ha_config(self, sensor: str) -> tuple[str, bytes]:
        """(discovery topic, retained config payload) of one sensor's binary_sensor."""
        import hashlib

        def obj_id(s):  # Home Assistant ids: [a-zA-Z0-9_-], unique per sensor id
            return re.sub(r"[^A-Za-z0-9_-]", "_", s)[:40] + "_" + hashlib.sha1(s.encode()).hexdigest()[:8]

        node, obj = obj_id(self.node), obj_id(sensor)
        cfg = {
            "name": f"{sensor} anomaly",
            "unique_id": f"edgert_{node}_{obj}",
            "state_topic": self._ha_state_topic(sensor),
            "device_class": "problem",
            "payload_on": "ON", "payload_off": "OFF",
            "off_delay": self.cfg.mqtt_ha_off_delay_s,
            "availability_topic": self.status_topic,
            "availability_template": "{{ value_json.state }}",
            "payload_available": "online", "payload_not_available": "offline",
            "device": {"identifiers": [f"edgert_{node}"], "name": f"edgert {self.node}",
                       "manufacturer": "edgert", "model": str(self.status.get("model"))},
        }
        return (f"{self.cfg.mqtt_ha_prefix}/binary_sensor/{node}/{obj}/config",
                json.dumps(cfg, separators=(",", ":")).encode())

    # -- paho's thread -----------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if not self.conn.on_connect(reason_code):
            return
        self._publish_status()
        if self.ha:  # retained configs may be gone with a broker restarted without persistence
            with self._cond:
                sensors = list(self._ha)
            for s in sensors:
                self._enqueue("ha", *self._ha_config(s), 1, True)
        with self._cond:
            self._cond.notify()

    def _publish_status(self) -> None:
        if self.conn.connected:
            data = json.dumps(json_safe(self.status), separators=(",", ":")).encode()
            self.client.publish(self.status_topic, data, qos=1, retain=True)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None) -> None:
        self.conn.on_disconnect(reason_code)
        with self._cond:
            # QoS 0 messages paho had not written are gone with the connection; QoS 1 ones
            # stay in paho's (bounded) queue and are sent again after the reconnect.
            for mid, (kind, qos) in list(self._pending.items()):
                if qos == 0:
                    del self._pending[mid]
                    self._count_drop(kind)
            self._cond.notify()

    def _on_publish(self, client, userdata, mid, reason_code=None, properties=None) -> None:
        with self._cond:
            if self._pending.pop(mid, None) is not None:
                self.delivered += 1
                if self._idle and len(self._pending) <= self.inflight // 2:  # room for a batch
                    self._cond.notify()
            elif len(self._early) < 4 * self.inflight + 64:  # a status mid, or one not recorded yet
                self._early.add(mid)
            else:
                self._early.clear()

    # -- the sender thread: outbox -> paho, at most `inflight` at a time ----------------
    def _sender(self) -> None:
        """Move outbox entries to paho while connected and under the in-flight window, a batch
        per wake-up (locks and thread switches are paid per batch, not per event)."""
        mqtt = paho()
        ok, no_conn = mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN
        while True:
            with self._cond:
                while not self._stop and not (self.conn.connected and len(self._pending) < self.inflight
                                              and (self._keep or self._lossy)):
                    self._idle = True
                    self._cond.wait(0.5)
                    self._idle = False
                if self._stop:
                    return
                batch = []
                for _ in range(self.inflight - len(self._pending)):
                    q = self._keep or self._lossy
                    if not q:
                        break
                    item = q.popleft()
                    self._bytes -= item[5]
                    batch.append(item)
                self._handing = len(batch)
            done = []
            for item in batch:
                kind, topic, data, qos, retain, size = item
                try:
                    info = self.client.publish(topic, data, qos=qos, retain=retain)
                    done.append((item, info.rc, info.mid))
                except Exception as exc:  # e.g. ValueError for a topic paho refuses: count it, go on
                    self.conn.rlog.warning(("publish", kind), f"MQTT events: {kind} event not published: {exc!r}")
                    done.append((item, None, None))
            with self._cond:
                self._handing = 0
                back = []
                for item, rc, mid in done:
                    kind, qos = item[0], item[3]
                    if rc == ok or (rc == no_conn and qos):  # QoS 1 without a connection: paho keeps it
                        self.sent += 1
                        if mid in self._early:
                            self._early.discard(mid)
                            self.delivered += 1
                        else:
                            self._pending[mid] = (kind, qos)
                    elif rc == no_conn:  # QoS 0 with the connection just lost: back to the outbox
                        back.append(item)
                    else:
                        self._count_drop(kind)
                for item in reversed(back):  # in their order, at the front
                    (self._keep if item[3] else self._lossy).appendleft(item)
                    self._bytes += item[5]

    # -- stats and shutdown --------------------------------------------------------------
    def stats(self) -> dict:
        """Counts: published (queued), sent (to paho), delivered, dropped by kind, what the
        outbox and paho hold now (``published = delivered + dropped + outbox_messages +
        inflight`` at every moment), and the connection's state."""
        with self._cond:
            return {"endpoint": self.endpoint, **self.conn.stats(), "published": self.published,
                    "sent": self.sent, "delivered": self.delivered, "dropped": sum(self.dropped.values()),
                    "dropped_by_kind": dict(self.dropped), "outbox_messages": len(self._keep) + len(self._lossy),
                    "outbox_bytes": self._bytes, "inflight": len(self._pending) + self._handing,
                    "coalesced": self.coalesced,
                    **({"ha_sensors": len(self._ha), "ha_skipped": self.ha_skipped} if self.ha else {})}

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (up to `timeout` s while connected), publish the retained
        ``offline`` status (a clean stop sends no Last Will), disconnect. What is left is
        counted as dropped."""
        end = time.monotonic() + timeout
        with self._cond:
            while (self._keep or self._lossy or self._pending) and self.conn.connected and time.monotonic() < end:
                self._cond.wait(0.05)
            self._stop = True
            for item in (*self._keep, *self._lossy):
                self._count_drop(item[0])
            for kind, _ in self._pending.values():
                self._count_drop(kind)
            self._keep.clear()
            self._lossy.clear()
            self._pending.clear()
            self._bytes = 0
            self._cond.notify_all()
        self._thread.join(2.0)
        if self.conn.connected:
            offline = json.loads(self._offline)
            offline["reason"] = "stopped"
            info = self.client.publish(self.status_topic, json.dumps(offline, separators=(",", ":")).encode(),
                                       qos=1, retain=True)
            try:
                info.wait_for_publish(1.0)
            except (ValueError, RuntimeError):
                pass
        self.conn.closing = True
        self.client.disconnect()
        self.client.loop_stop()


# -- sensor data in ---------------------------------------------------------------------------
def encode_block(seq: int, t0: int, dt: int, samples: np.ndarray) -> bytes:
    """One block as one MQTT payload: ``uint32 BE header length | msgpack header | samples``
    (the header and samples of docs/wire-format.md)."""
    samples = np.ascontiguousarray(samples, dtype=wire.DTYPES[wire.dtype_code(samples.dtype)])
    header = wire.encode_header(seq, t0, dt, samples)
    return LEN_PREFIX.pack(len(header)) + header + samples.tobytes()


def encode_json_block(seq: int, t0: int, dt: int, samples: np.ndarray, channels=None) -> bytes:
    """One block as a JSON payload ``{"seq","t0","dt","channels","samples"}``."""
    doc = {"seq": int(seq), "t0": int(t0), "dt": int(dt), "samples": np.asarray(samples, dtype=np.float64).tolist()}
    if channels is not None:
        doc["channels"] = list(channels)
    return json.dumps(doc, separators=(",", ":")).encode()


class PayloadError(ValueError):
    """An MQTT payload that is not a block; ``reason`` is a `wire.DROP_REASONS` name."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def payload_frames(sensor: bytes, payload: bytes, channels: list, next_seq) -> list:
    """The bus frames ``[sensor id, msgpack header, samples]`` of one MQTT payload, for
    `Pipeline.handle` to validate and count like a ZeroMQ message.

    Binary (first byte 0): the length-prefixed header and the samples are sliced out, not
    parsed. JSON (first byte ``{``): ``t0``, ``dt``, ``samples`` ([[…], …], one row per
    sample), optional ``channels`` (names: reordered to the model's) and ``seq`` (default:
    the sensor's next, from ``next_seq()``) become a header and a float64 block.
    Raises:
      `PayloadError` (reason ``frames``: no valid framing; ``msgpack``: not a JSON object;
      ``header``: a JSON field missing or not an integer; ``shape``: samples not a
      rectangular array of numbers; ``channels``: names that are not the model's).
    """
    if payload[:1] == b"\x00":
        if len(payload) < 4:
            raise PayloadError("frames", f"binary payload of {len(payload)} bytes (no 4-byte header length)")
        (h,) = LEN_PREFIX.unpack_from(payload)
        if not 1 <= h <= wire.MAX_HEADER_BYTES or 4 + h > len(payload):
            raise PayloadError("frames", f"binary payload: header length {h} does not fit (1..{wire.MAX_HEADER_BYTES}, "
                                         f"payload {len(payload)} bytes)")
        view = memoryview(payload)
        return [sensor, view[4:4 + h], view[4 + h:]]
    if payload.lstrip()[:1] != b"{":
        raise PayloadError("frames", "payload is neither a binary block (first byte 0) nor a JSON object")
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise PayloadError("msgpack", f"JSON payload does not parse ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise PayloadError("msgpack", "JSON payload is not an object")
    for key in ("t0", "dt", "samples"):
        if key not in doc:
            raise PayloadError("header", f"JSON payload: field {key!r} missing")
    seq = doc.get("seq")
    if seq is None:
        seq = next_seq()
    for key, v in (("t0", doc["t0"]), ("dt", doc["dt"]), ("seq", seq)):
        if type(v) is not int:
            raise PayloadError("header", f"JSON payload: field {key!r} must be an integer, got {type(v).__name__}")
    try:
        arr = np.array(doc["samples"])
    except (ValueError, TypeError):
        raise PayloadError("shape", "JSON payload: 'samples' is not a rectangular array") from None
    if arr.ndim != 2 or arr.size == 0 or arr.dtype.kind not in "iuf":
        raise PayloadError("shape", f"JSON payload: 'samples' must be [[number, ...], ...] (one row per sample), "
                                    f"got {arr.ndim}-d {arr.dtype.kind!r} data")
    arr = np.ascontiguousarray(arr, dtype="<f8")
    names = doc.get("channels")
    if names is not None:
        if (not isinstance(names, list) or len(names) != arr.shape[1] or sorted(map(str, names)) != sorted(channels)
                or len(set(names)) != len(names)):
            raise PayloadError("channels", f"JSON payload: channels {str(names)[:80]} are not the model's "
                                           f"({', '.join(channels)})")
        if names != list(channels):
            arr = np.ascontiguousarray(arr[:, [names.index(c) for c in channels]])
    try:
        header = wire.encode_header(seq, doc["t0"], doc["dt"], arr)
    except (OverflowError, ValueError):  # beyond uint64/int64: msgpack cannot hold it
        raise PayloadError("header", "JSON payload: t0, dt or seq out of the 64-bit range") from None
    return [sensor, header, arr]


class MqttIngest:
    """Sensor blocks from a broker (``--listen mqtt://HOST:PORT/sensors/+``).

    paho's thread only checks a payload's size and pushes ``[topic level, payload]`` on an
    inproc PAIR socket (``sock``, which the daemon polls), bounded by ``max_messages`` and
    ``max_bytes``; over either the message is dropped and counted (``queue_full``; the sensor
    sees it as a ``seq`` gap, like a ZeroMQ high-water mark). `drain` runs in the daemon's
    thread and hands each message to the pipeline.

    Args:
      endpoint: ``mqtt[s]://HOST:PORT/FILTER`` with one ``+`` level.
      cfg: the daemon's config (``mqtt_*`` keys).
      ctx: the daemon's zmq context (inproc needs the same one).
      max_messages, max_bytes: the queue's bounds.
      max_payload: larger payloads are refused by size (``too_large``) before parsing.
    """

    def __init__(self, endpoint: str, cfg, ctx: zmq.Context, max_messages: int, max_bytes: int, max_payload: int):
        self.ep = parse_endpoint(endpoint, sensors=True)
        self.endpoint = endpoint
        self.max_messages, self.max_bytes, self.max_payload = int(max_messages), int(max_bytes), int(max_payload)
        self.filter = self.ep.topic
        self.n_levels = len(self.filter.split("/"))
        node = node_name(cfg)
        self.client = make_client(cfg, self.ep, (cfg.mqtt_client_id or f"edgert-{node}") + "-in")
        _exposed_warning(cfg, self.ep, "sensors")
        self.conn = _Connection("sensors", endpoint)
        self.qos = cfg.mqtt_listen_qos
        addr = f"inproc://edgert-mqtt-in-{id(self)}"
        self.sock = ctx.socket(zmq.PAIR)  # the daemon's end
        self.sock.setsockopt(zmq.RCVHWM, self.max_messages + 16)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(addr)
        self._tx = ctx.socket(zmq.PAIR)  # paho's end: only its thread sends
        self._tx.setsockopt(zmq.SNDHWM, self.max_messages + 16)
        self._tx.setsockopt(zmq.LINGER, 0)
        self._tx.connect(addr)
        self._lock = threading.Lock()
        self._queued = 0
        self._queued_bytes = 0
        self.received = 0
        self.queue_full = 0
        self.oversized: collections.deque = collections.deque()  # (level, size), at most 1024, counted in drain
        self.oversized_other = 0  # oversized payloads beyond those 1024: counted without their sensor
        self.bad_topic = 0
        c = self.client
        c.on_connect = self._on_connect
        c.on_disconnect = lambda cl, ud, fl, rc, pr=None: self.conn.on_disconnect(rc)
        c.on_connect_fail = lambda *_: self.conn.on_connect_fail()
        c.on_message = self._on_message
        c.connect_async(self.ep.host, self.ep.port, keepalive=cfg.mqtt_keepalive_s)
        c.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if self.conn.on_connect(reason_code):
            client.subscribe(self.filter, qos=self.qos)  # again after every reconnect (clean session)

    def _on_message(self, client, userdata, msg) -> None:
        """paho's thread: size check, then queue; never parses, never calls the pipeline."""
        try:
            levels = msg.topic.split("/")
        except UnicodeDecodeError:  # brokers check topics are UTF-8; count one that is not
            self.bad_topic += 1
            return
        if len(levels) != self.n_levels:
            self.bad_topic += 1
            return
        level = levels[self.ep.sensor_level].encode("utf-8")
        payload = msg.payload
        n = len(payload)
        self.received += 1
        if n > self.max_payload:
            if len(self.oversized) < 1024:
                self.oversized.append((level, n))  # counted per sensor by the daemon thread (drain)
            else:
                with self._lock:
                    self.oversized_other += 1
            return
        with self._lock:
            if self._queued >= self.max_messages or self._queued_bytes + n > self.max_bytes:
                self.queue_full += 1
                return
            self._queued += 1
            self._queued_bytes += n
        try:
            self._tx.send_multipart([level, payload], zmq.NOBLOCK, copy=n >= zmq.COPY_THRESHOLD)
        except zmq.ZMQError:  # zmq's own bound (should not be reached before ours) or closed
            with self._lock:
                self._queued -= 1
                self._queued_bytes -= n
                self.queue_full += 1

    def drain(self, pipe, limit: int = 256) -> int:
        """Daemon thread: hand up to `limit` queued messages to ``pipe.handle`` (flushing the
        batcher at its deadline as the ZeroMQ loop does). Returns the number handled."""
        while self.oversized:
            level, n = self.oversized.popleft()
            sensor = self._sensor(pipe, level)
            if sensor is not None:
                pipe._drop(sensor, "too_large", f"{safe_id(sensor)}: MQTT payload of {n} bytes, "
                           f"mqtt_max_payload_bytes is {self.max_payload}")
        if self.oversized_other:
            with self._lock:
                n, self.oversized_other = self.oversized_other, 0
            for _ in range(n):
                pipe._drop(None, "too_large", f"MQTT payloads over mqtt_max_payload_bytes ({self.max_payload}) "
                                              "faster than they could be attributed to their sensors")
        batcher = pipe.batcher
        perf = time.perf_counter_ns
        pipe._now_wall = time.time_ns()
        done = 0
        for _ in range(limit):
            try:
                level, payload = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            payload = payload.bytes
            with self._lock:
                self._queued -= 1
                self._queued_bytes -= len(payload)
            self.handle(pipe, level.bytes, payload, perf())
            done += 1
            if batcher.n and perf() >= batcher.t_recv[0] + batcher.max_delay_ns:
                batcher.flush("deadline")
        return done

    def discard(self) -> int:
        """Read and count what is still queued (at stop, after ``drain_s``)."""
        n = 0
        while True:
            try:
                self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return n
            n += 1

    def _sensor(self, pipe, level: bytes) -> str | None:
        """The sensor id of a topic level (unescaped), or None after counting a ``sensor_id`` drop."""
        try:
            sensor = unescape_level(level.decode("utf-8"))
        except UnicodeDecodeError:
            pipe._drop(None, "sensor_id", f"MQTT topic level {level[:64]!r}: its %-escapes are not UTF-8")
            return None
        if not 1 <= len(sensor.encode("utf-8")) <= wire.MAX_SENSOR_ID:
            pipe._drop(sensor[:wire.MAX_SENSOR_ID], "sensor_id",
                       f"{safe_id(sensor[:wire.MAX_SENSOR_ID])}: sensor id must be 1-{wire.MAX_SENSOR_ID} bytes")
            return None
        return sensor

    def handle(self, pipe, level: bytes, payload: bytes, t_recv: int) -> None:
        """One message: its frames into ``pipe.handle``, or a counted drop naming the sensor."""
        sensor = self._sensor(pipe, level)
        if sensor is None:
            return
        sid = sensor.encode("utf-8")

        def next_seq():
            st = pipe.streams.get(sensor)
            return 0 if st is None or st.last_seq is None else st.last_seq + 1

        try:
            frames = payload_frames(sid, payload, pipe.model.channels, next_seq)
        except PayloadError as exc:
            pipe._drop(sensor, exc.reason, f"{safe_id(sensor)}: {exc}")
            return
        pipe.handle(frames, t_recv)

    def stats(self) -> dict:
        with self._lock:
            q, qb = self._queued, self._queued_bytes
        return {"endpoint": self.endpoint, **self.conn.stats(), "received": self.received,
                "queue_full": self.queue_full, "bad_topic": self.bad_topic, "queued": q, "queued_bytes": qb}

    def stop_input(self) -> None:
        """Stop taking messages (the daemon is stopping): disconnect from the broker."""
        self.conn.closing = True
        self.client.disconnect()
        self.client.loop_stop()

    def close(self) -> None:
        self.stop_input()
        self._tx.close(linger=0)
        self.sock.close(linger=0)


# -- a sensor that publishes to a broker (edgert replay --to mqtt://...) ---------------------
class MqttSensorPublisher:
    """`edgert.bus.SensorPublisher`'s interface over MQTT: one sensor's blocks to the topic
    of `endpoint` with ``+`` replaced by the (escaped) sensor id, QoS 1, binary framing
    (`encode_block`) or JSON (`encode_json_block`).

    Args:
      endpoint: ``mqtt[s]://HOST:PORT/FILTER`` with one ``+`` level.
      cfg: a `edgert.config.Config` for TLS and credentials (``mqtt_*`` keys).
      channels: channel names written into JSON payloads.
      window: messages not yet acknowledged by the broker at most (flow control).
    """

    def __init__(self, endpoint: str, sensor: str, cfg, json_payload: bool = False, channels=None,
                 window: int = 256):
        self.ep = parse_endpoint(endpoint, sensors=True)
        self.topic = self.ep.topic_for(sensor)
        self.sensor = sensor
        self.json = json_payload
        self.channels = channels
        self.client = make_client(cfg, self.ep, f"edgert-replay-{os.getpid()}-{id(self) & 0xffff:x}")
        self.conn = _Connection("replay", endpoint)
        self.client.on_connect = lambda cl, ud, fl, rc, pr=None: self.conn.on_connect(rc)
        self.client.on_disconnect = lambda cl, ud, fl, rc, pr=None: self.conn.on_disconnect(rc)
        self.client.max_inflight_messages_set(window)
        self.client.connect_async(self.ep.host, self.ep.port, keepalive=30)
        self.client.loop_start()
        self._window = window
        self._infos: collections.deque = collections.deque()
        self.seq = 0
        self.sent = 0
        self.refused = None

    def wait_subscribed(self, timeout: float = 5.0) -> bool:
        """Wait until connected to the broker (True), or refused / out of time (False)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and not self.conn.connected and not self.conn.refusals:
            time.sleep(0.02)
        return self.conn.connected

    def why_not(self) -> str:
        """Why `wait_subscribed` failed, for the CLI."""
        return f"the broker {self.ep.host}:{self.ep.port}: {self.conn.last_error or 'no answer'}"

    def send(self, samples: np.ndarray, t0: int, dt: int, seq: int | None = None) -> None:
        """Publish one block (QoS 1); waits while `window` messages are unacknowledged.
        Raises TimeoutError when the broker stops acknowledging for 10 s."""
        if seq is None:
            seq = self.seq
        self.seq = seq + 1
        data = (encode_json_block(seq, t0, dt, samples, self.channels) if self.json
                else encode_block(seq, t0, dt, samples))
        while len(self._infos) >= self._window:
            info = self._infos.popleft()
            if not info.is_published():
                info.wait_for_publish(10.0)
                if not info.is_published():
                    raise TimeoutError(f"{self.ep.url}: the broker acknowledged nothing for 10 s")
        self._infos.append(self.client.publish(self.topic, data, qos=1))
        self.sent += 1

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the broker acknowledged every block. True if it did."""
        end = time.monotonic() + timeout
        while self._infos and time.monotonic() < end:
            info = self._infos[0]
            try:
                info.wait_for_publish(max(0.01, end - time.monotonic()))
            except (ValueError, RuntimeError):
                pass
            if info.is_published():
                self._infos.popleft()
            elif not self.conn.connected:
                time.sleep(0.05)
        return not self._infos

    def close(self) -> None:
        self.flush()
        self.conn.closing = True
        self.client.disconnect()
        self.client.loop_stop()


def payload_limit(cfg, n_channels: int) -> int:
    """``mqtt_max_payload_bytes``, or (0) the largest valid binary block: the 4-byte length,
    a header and ``max_block_samples`` of `n_channels` float64."""
    return cfg.mqtt_max_payload_bytes or 4 + wire.MAX_HEADER_BYTES + cfg.max_block_samples * n_channels * 8
