"""Daemon settings: defaults, a TOML file with the same keys as the command line, overrides."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MAX_INT = (1 << 31) - 1  # counts and sizes in the config: refuse absurd values before anything is allocated

# Keys a running daemon applies on SIGHUP (`edgert.daemon.Daemon.reload`); any other changed
# key is reported as needing a restart.
RELOADABLE = ("log_level", "publish_scores", "stats_interval_s", "threshold", "risk_q", "drift_interval_s",
              "drift_threshold", "watch_model_s", "max_delay_us", "max_clock_skew_s", "max_seq_gap",
              "sensor_idle_s", "sensor_evict_s", "sensors_allowed", "stats_top_n", "drain_s",
              "adapt_hold_s", "adapt_probation_s")


# Keys that may be one endpoint or a list of them (ZeroMQ and MQTT side by side).
ENDPOINT_LISTS = ("listen", "events")


def endpoints(value) -> list:
    """`listen` or `events` as a list of endpoints (they may be one string or a list)."""
    return [value] if isinstance(value, str) else list(value)


@dataclass
class Config:
    listen: str | list = "ipc:///tmp/edgert-sensors"  # or a list; mqtt://HOST:PORT/sensors/+ ingests from a broker
    events: str | list = "ipc:///tmp/edgert-events"  # or a list; mqtt[s]://HOST:PORT publishes to a broker
    socket: str = "sub"  # "sub" or "pull"
    model: str = "motor-ae"
    classifier: str = ""  # optional classifier model (same window/hop/channels) for fault classes
    backend: str = "auto"
    max_batch: int = 32
    max_delay_us: int = 1000
    num_threads: int = 1
    ring_capacity: int = 0  # samples per sensor ring (0: max(2 x window, 256), 1024 with a reservoir)
    gap_samples: float = 3.0  # t0 jump (in sample periods) that restarts a sensor's windows
    threshold: str = "fixed"  # fixed (manifest) | spot | dspot | quantile
    risk_q: float = 1e-4  # SPOT/DSPOT risk: target false-alarm probability per window
    stats_interval_s: float = 1.0
    publish_scores: bool = False  # also publish every window's score: event/scores/<sensor> per batch
    watch_model_s: float = 1.0  # check the model directory for a new model this often (0: never)
    drift_interval_s: float = 1.0  # feed per-sensor means to the drift detectors this often (0: off)
    drift_threshold: float = 50.0  # Page-Hinkley lambda, in standard deviations
    adapt: str = "off"  # off | safe: per-sensor normalization follows the machine (edgert/adapt.py)
    adapt_hold_s: float = 30.0  # a sustained, stationary, common-mode shift is tried after this long
    adapt_probation_s: float = 3.0  # ... and accepted if the model finds it normal for this long
    # Commissioning (edgert/commission.py): a sensor's first commission_samples samples set, once, a
    # gain per channel to the model's healthy reference, each within [1/commission_max_gain,
    # commission_max_gain] (else refused); 0: off. commission_file keeps them across restarts.
    commission_samples: int = 0
    commission_max_gain: float = 1.1
    commission_file: str = ""
    # Bounds on what the network can make the daemon hold (docs: README "Reliability").
    max_queue_mb: float = 64.0  # receive queue budget per connection; sets RCVHWM unless rcvhwm is set
    rcvhwm: int = 0  # receive high-water mark in messages per connection (0: from max_queue_mb)
    max_block_samples: int = 65536  # larger blocks are dropped ("too_large"): bounds work per message
    max_msg_bytes: int = 0  # ZMQ_MAXMSGSIZE: a larger frame disconnects its sender (0: the largest valid block)
    max_clock_skew_s: float = 86400.0  # t0 farther than this from the daemon's clock is dropped ("clock"; 0: off)
    max_seq_gap: int = 1 << 20  # a seq jump beyond this is a contradiction, not a loss ("seq_jump")
    max_sensors: int = 4096
    sensor_idle_s: float = 600.0  # a sensor silent this long is evicted (its slot and state freed)
    sensor_evict_s: float = 10.0  # with the table full, a sensor silent this long yields its slot to a new one
    sensors_allowed: list = field(default_factory=list)  # sensor ids or fnmatch patterns (empty: any id)
    max_unknown_ids: int = 1024  # ids without a slot whose drops are counted by name; the rest in one bucket
    stats_top_n: int = 32  # sensors listed in a stats event (most drops first); totals cover all
    drain_s: float = 1.0  # on SIGTERM, queued blocks are handled for up to this long, the rest counted
    reservoir_dir: str = ""  # keep a reservoir of normal windows here for edgert retrain ("": off)
    reservoir_size: int = 4096  # windows in the on-disk ring (bounded file size)
    reservoir_rate: float = 0.05  # fraction of the normal windows kept
    log_level: str = "INFO"
    # [metrics] Prometheus /metrics, /healthz, /readyz (edgert/metrics.py); "" = off, e.g. "127.0.0.1:9108".
    metrics_listen: str = ""
    metrics_max_sensors: int = 64  # sensors with their own `sensor` label; the rest are summed as "_other"
    health_stall_s: float = 5.0  # /healthz answers 503 when the loop has not woken up for this long
    workers: int = 1  # [workers] processes serving --listen (edgert/workers.py); 1: this one process
    # CURVE (edgert/auth.py): all empty = off. The daemon's .key_secret file; the directory of the
    # allowed clients' *.key files (sensors, and event subscribers unless curve_event_clients_dir
    # names another directory for them); sensor_keys binds sensor ids to client keys (a table of
    # id = .key file or Z85 public key): then only listed ids are accepted, each from its key only.
    curve_server_key: str = ""
    curve_allowed_clients_dir: str = ""
    curve_event_clients_dir: str = ""
    sensor_keys: dict = field(default_factory=dict)
    # MQTT (edgert/mqtt.py, README "MQTT"): for mqtt:// and mqtts:// endpoints in listen/events.
    mqtt_topic_prefix: str = "edgert"  # events on <prefix>/<node>/<kind>/<sensor>
    mqtt_node: str = ""  # the <node> topic level ("": this host's name)
    mqtt_client_id: str = ""  # "": edgert-<node> (events), edgert-<node>-in (sensor input)
    mqtt_username: str = ""
    mqtt_password_file: str = ""  # the password: first line of this file ...
    mqtt_password_env: str = ""  # ... or this environment variable (never in the config itself)
    mqtt_ca_file: str = ""  # mqtts://: CA certificates ("": the system's)
    mqtt_cert_file: str = ""  # mqtts://: client certificate (optional) ...
    mqtt_key_file: str = ""  # ... and its key
    mqtt_keepalive_s: int = 30
    mqtt_reconnect_min_s: float = 1.0  # reconnect back-off: from this, doubling ...
    mqtt_reconnect_max_s: float = 30.0  # ... up to this
    mqtt_outbox_messages: int = 10000  # events waiting for the broker at most (the oldest go first) ...
    mqtt_outbox_mb: float = 8.0  # ... and their bytes
    mqtt_inflight: int = 64  # messages handed to paho and not yet sent/acknowledged at most
    mqtt_listen_qos: int = 0  # QoS of the sensor-input subscription (0 or 1)
    mqtt_max_payload_bytes: int = 0  # larger input payloads are dropped (too_large); 0: the largest valid block
    mqtt_ha_discovery: bool = False  # Home Assistant discovery: a binary_sensor per sensor
    mqtt_ha_prefix: str = "homeassistant"
    mqtt_ha_off_delay_s: float = 10.0  # Home Assistant turns a sensor's state OFF this long after its last anomaly
    # At most one anomaly event per sensor this often on MQTT (the next one carries "coalesced": the
    # flagged windows not sent since); 0: every flagged window. ZeroMQ events are never coalesced.
    mqtt_anomaly_interval_s: float = 1.0

    def validate(self) -> "Config":
        self._validate_endpoints()
        if self.socket not in ("sub", "pull"):
            raise ValueError(f"config field 'socket' must be 'sub' or 'pull', got {self.socket!r}")
        from .backends.spec import parse as parse_backend

        try:
            parse_backend(self.backend)
        except ValueError as exc:
            raise ValueError(f"config field 'backend': {exc}") from None
        if self.threshold not in ("fixed", "spot", "dspot", "quantile"):
            raise ValueError(f"config field 'threshold' must be fixed, spot, dspot or quantile, got {self.threshold!r}")
        if self.adapt not in ("off", "safe"):
            raise ValueError(f"config field 'adapt' must be off or safe, got {self.adapt!r}")
        if self.adapt_hold_s <= 0 or self.adapt_probation_s <= 0:
            raise ValueError("config fields 'adapt_hold_s' and 'adapt_probation_s' must be > 0")
        c = self.commission_samples
        if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c <= (1 << 24):
            raise ValueError(f"config field 'commission_samples' must be an integer from 0 to {1 << 24}, got {c!r}")
        g = self.commission_max_gain
        if not isinstance(g, (int, float)) or isinstance(g, bool) or not math.isfinite(g) or not 1 <= g <= 10:
            raise ValueError(f"config field 'commission_max_gain' must be a number from 1 to 10, got {g!r}")
        if self.commission_file and not c:
            raise ValueError("config field 'commission_file' needs commission_samples > 0")
        if not 0 < self.risk_q < 1:
            raise ValueError(f"config field 'risk_q' must be in (0, 1), got {self.risk_q!r}")
        if not 0 < self.reservoir_rate <= 1:
            raise ValueError(f"config field 'reservoir_rate' must be in (0, 1], got {self.reservoir_rate!r}")
        if str(self.log_level).upper() not in LOG_LEVELS:
            raise ValueError(f"config field 'log_level' must be one of {', '.join(LOG_LEVELS)}, "
                             f"got {self.log_level!r}")
        self.log_level = str(self.log_level).upper()
        zero_ok = ("max_delay_us", "rcvhwm", "max_msg_bytes", "ring_capacity", "metrics_max_sensors")
        for name in ("max_batch", "max_delay_us", "num_threads", "ring_capacity", "max_sensors",
                     "reservoir_size", "rcvhwm", "max_block_samples", "max_msg_bytes", "max_seq_gap",
                     "max_unknown_ids", "stats_top_n", "metrics_max_sensors"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not (0 if name in zero_ok else 1) <= v <= MAX_INT:
                raise ValueError(f"config field {name!r} must be a positive integer (at most {MAX_INT}), got {v!r}")
        for name in ("max_queue_mb", "sensor_idle_s", "sensor_evict_s", "max_clock_skew_s", "drain_s",
                     "stats_interval_s"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise ValueError(f"config field {name!r} must be a finite number >= 0, got {v!r}")
        if self.metrics_max_sensors > 100_000:  # [metrics] label cardinality: a scrape stays small
            raise ValueError(f"config field 'metrics_max_sensors' must be at most 100000, got {self.metrics_max_sensors}")
        if not isinstance(self.health_stall_s, (int, float)) or isinstance(self.health_stall_s, bool) \
                or not math.isfinite(self.health_stall_s) or self.health_stall_s <= 0:
            raise ValueError(f"config field 'health_stall_s' must be a finite number > 0, got {self.health_stall_s!r}")
        if self.metrics_listen:
            from .metrics import parse_listen

            parse_listen(self.metrics_listen)  # MetricsError (a ValueError) naming the address
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or not 1 <= self.workers <= 256:  # [workers]
            raise ValueError(f"config field 'workers' must be an integer from 1 to 256, got {self.workers!r}")
        if self.workers > 1 and (len(endpoints(self.listen)) != 1 or len(endpoints(self.events)) != 1
                                 or any(str(ep).startswith("mqtt") for ep in endpoints(self.listen) + endpoints(self.events))):
            # the supervisor shares one listening socket and republishes on one events socket
            raise ValueError("config field 'workers' > 1 needs exactly one ZeroMQ 'listen' and one ZeroMQ 'events' "
                             "endpoint (MQTT endpoints and lists run with workers = 1)")
        if self.max_queue_mb <= 0 or self.stats_interval_s <= 0:
            raise ValueError("config fields 'max_queue_mb' and 'stats_interval_s' must be > 0")
        if self.max_block_samples > (1 << 20):
            raise ValueError(f"config field 'max_block_samples' must be at most {1 << 20} (the wire format's "
                             f"limit), got {self.max_block_samples}")
        if not isinstance(self.sensors_allowed, list) or not all(
                isinstance(x, str) and 1 <= len(x.encode("utf-8")) <= 64 for x in self.sensors_allowed):
            raise ValueError("config field 'sensors_allowed' must be a list of sensor ids or patterns "
                             f"(1-64 UTF-8 bytes each), got {self.sensors_allowed!r}")
        self._validate_mqtt()
        from .auth import server_keys

        try:
            server_keys(self)  # the key files exist and parse (ValueError naming the key and file)
        except RuntimeError as exc:  # libzmq without CURVE
            raise ValueError(f"config key 'curve_server_key': {exc}") from None
        return self

    def _validate_endpoints(self) -> None:
        for name in ENDPOINT_LISTS:
            v = getattr(self, name)
            eps = endpoints(v) if isinstance(v, (str, list, tuple)) else None
            if not eps or not all(isinstance(e, str) and e for e in eps) or len(eps) > 16:
                raise ValueError(f"config field {name!r} must be an endpoint or a list of 1-16 endpoints, got {v!r}")
            if isinstance(v, (list, tuple)):
                setattr(self, name, eps[0] if len(eps) == 1 else eps)
        from .mqtt import is_mqtt, parse_endpoint

        for name in ENDPOINT_LISTS:
            for e in endpoints(getattr(self, name)):
                if is_mqtt(e):
                    try:
                        parse_endpoint(e, sensors=name == "listen")
                    except ValueError as exc:
                        raise ValueError(f"config field {name!r}: {exc}") from None

    def _validate_mqtt(self) -> None:
        for name in ("mqtt_keepalive_s", "mqtt_outbox_messages", "mqtt_inflight"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_INT:
                raise ValueError(f"config field {name!r} must be a positive integer (at most {MAX_INT}), got {v!r}")
        v = self.mqtt_max_payload_bytes
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 256 * 2**20:
            raise ValueError(f"config field 'mqtt_max_payload_bytes' must be 0..{256 * 2**20} (MQTT's limit), got {v!r}")
        for name in ("mqtt_reconnect_min_s", "mqtt_reconnect_max_s", "mqtt_outbox_mb", "mqtt_ha_off_delay_s"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"config field {name!r} must be a finite number > 0, got {v!r}")
        v = self.mqtt_anomaly_interval_s
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not 0 <= v <= 86_400:
            raise ValueError(f"config field 'mqtt_anomaly_interval_s' must be 0..86400 seconds, got {v!r}")
        if self.mqtt_reconnect_max_s < self.mqtt_reconnect_min_s:
            raise ValueError("config field 'mqtt_reconnect_max_s' must be >= mqtt_reconnect_min_s")
        if self.mqtt_listen_qos not in (0, 1) or isinstance(self.mqtt_listen_qos, bool):
            raise ValueError(f"config field 'mqtt_listen_qos' must be 0 or 1, got {self.mqtt_listen_qos!r}")
        for name in ("mqtt_topic_prefix", "mqtt_ha_prefix"):
            v = getattr(self, name)
            if not v or any(c in v for c in "+#\x00") or v.startswith("/") or v.endswith("/") or "//" in v:
                raise ValueError(f"config field {name!r} must be a topic without wildcards (+ #), NUL or "
                                 f"empty levels, got {v!r}")
        if len(self.mqtt_node.encode("utf-8")) > 128 or len(self.mqtt_client_id.encode("utf-8")) > 128:
            raise ValueError("config fields 'mqtt_node' and 'mqtt_client_id' must be at most 128 bytes")
        if self.mqtt_password_file and self.mqtt_password_env:
            raise ValueError("config fields 'mqtt_password_file' and 'mqtt_password_env': set one, not both")
        if self.mqtt_password_file or self.mqtt_password_env:
            from .mqtt import read_password

            read_password(self)  # readable now, or a ValueError naming the key (never the password)


def load(path: str | None = None, **overrides) -> Config:
    """Defaults, then the TOML file (top level or an ``[edgert]`` table), then non-None overrides.

    Raises:
      ValueError naming the file and key for unknown keys or wrong types.
    """
    cfg = Config()
    known = {f.name: f.type for f in fields(Config)}
    if path:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ValueError(f"{path}: config file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: not valid TOML ({exc})") from None
        data = data.get("edgert", data)
        for key, value in data.items():
            attr = key.replace("-", "_")
            if attr not in known:
                raise ValueError(f"{path}: unknown key {key!r} (known: {', '.join(sorted(known))})")
            default = getattr(cfg, attr)
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if attr in ENDPOINT_LISTS and isinstance(value, list):
                pass  # several endpoints (checked by validate)
            elif type(value) is not type(default):
                raise ValueError(f"{path}: key {key!r} must be {type(default).__name__}, got {value!r}")
            setattr(cfg, attr, value)
    for key, value in overrides.items():
        if value is not None:
            setattr(cfg, key, value)
    return cfg.validate()
