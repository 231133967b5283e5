"""Daemon settings: defaults, a TOML file with the same keys as the command line, overrides."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


@dataclass
class Config:
    listen: str = "ipc:///tmp/edgert-sensors"
    events: str = "ipc:///tmp/edgert-events"
    socket: str = "sub"  # "sub" or "pull"
    model: str = "motor-ae"
    classifier: str = ""  # optional classifier model (same window/hop/channels) for fault classes
    backend: str = "auto"
    max_batch: int = 32
    max_delay_us: int = 1000
    num_threads: int = 1
    ring_capacity: int = 1024  # samples per sensor ring
    gap_samples: float = 3.0  # t0 jump (in sample periods) that restarts a sensor's windows
    max_sensors: int = 4096
    threshold: str = "fixed"  # fixed (manifest) | spot | dspot | quantile
    risk_q: float = 1e-4  # SPOT/DSPOT risk: target false-alarm probability per window
    stats_interval_s: float = 1.0
    publish_scores: bool = False  # also publish every window's score: event/scores/<sensor> per batch
    watch_model_s: float = 1.0
    drift_interval_s: float = 1.0  # feed per-sensor means to the drift detectors this often (0: off)
    drift_threshold: float = 50.0  # Page-Hinkley lambda, in standard deviations  # check the model directory for a new model this often (0: never)
    adapt: str = "off"  # off | safe: per-sensor normalization follows the machine (edgert/adapt.py)
    adapt_hold_s: float = 30.0  # a sustained, stationary, common-mode shift is tried after this long
    adapt_probation_s: float = 3.0  # ... and accepted if the model finds it normal for this long
    rcvhwm: int = 100000
    reservoir_dir: str = ""  # keep a reservoir of normal windows here for edgert retrain ("": off)
    reservoir_size: int = 4096  # windows in the on-disk ring (bounded file size)
    reservoir_rate: float = 0.05  # fraction of the normal windows kept
    log_level: str = "INFO"
    # CURVE (edgert/auth.py): all empty = off. The daemon's .key_secret file; the directory of the
    # allowed clients' *.key files (sensors, and event subscribers unless curve_event_clients_dir
    # names another directory for them); sensor_keys binds sensor ids to client keys (a table of
    # id = .key file or Z85 public key): then only listed ids are accepted, each from its key only.
    curve_server_key: str = ""
    curve_allowed_clients_dir: str = ""
    curve_event_clients_dir: str = ""
    sensor_keys: dict = field(default_factory=dict)

    def validate(self) -> "Config":
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
        if not 0 < self.risk_q < 1:
            raise ValueError(f"config field 'risk_q' must be in (0, 1), got {self.risk_q!r}")
        if not 0 < self.reservoir_rate <= 1:
            raise ValueError(f"config field 'reservoir_rate' must be in (0, 1], got {self.reservoir_rate!r}")
        for name in ("max_batch", "max_delay_us", "num_threads", "ring_capacity", "max_sensors",
                     "reservoir_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "max_delay_us" else 1):
                raise ValueError(f"config field {name!r} must be a positive integer, got {v!r}")
        from .auth import server_keys

        try:
            server_keys(self)  # the key files exist and parse (ValueError naming the key and file)
        except RuntimeError as exc:  # libzmq without CURVE
            raise ValueError(f"config key 'curve_server_key': {exc}") from None
        return self


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
            if type(value) is not type(default):
                raise ValueError(f"{path}: key {key!r} must be {type(default).__name__}, got {value!r}")
            setattr(cfg, attr, value)
    for key, value in overrides.items():
        if value is not None:
            setattr(cfg, key, value)
    return cfg.validate()
