# PYTHON_ARGCOMPLETE_OK  (argcomplete, if installed, completes `edgert` commands and options)
"""``edgert`` command line (serve, replay, keys, demo, report, models, bench, eval, ...);
``edgert -h`` lists the commands, ``edgert COMMAND -h`` their options.

A bad argument, or input a command checks (files, models, endpoints), is one line on stderr
naming the option, file or field, and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import re
import sys

ENDPOINT = re.compile(r"^(tcp|ipc|inproc|ws|wss|pgm|epgm|norm|vmci|udp)://.+")
SUMMARY = "edge inference runtime for real-time anomaly detection on sensor streams"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``edgert CMD: error: ...``), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


class _DefaultsFormatter(argparse.HelpFormatter):
    """Shows ``(default: X)`` after an option's help unless it says its default already or
    has none worth showing (None, False)."""

    def _get_help_string(self, action):
        h = action.help or ""
        d = action.default
        if (not action.option_strings or d is None or d is False or d is argparse.SUPPRESS
                or "default" in h.lower() or not h):
            return h
        return f"{h} (default: %(default)s)"


def _show(v) -> str:
    return f"{v:,}" if isinstance(v, int) else f"{v:g}"


def _number(kind, lo=None, hi=None, lo_open=False, what=""):
    """An argparse type: a finite `kind` number within [lo, hi] (lo excluded when lo_open)."""

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if kind is float and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise argparse.ArgumentTypeError(f"must be {'>' if lo_open else '>='} {_show(lo)}{what}, got {text}")
        if hi is not None and v > hi:
            raise argparse.ArgumentTypeError(f"must be <= {_show(hi)}{what}, got {text}")
        return v

    parse.__name__ = "integer" if kind is int else "number"
    return parse


def _sensor_id(text: str) -> str:
    from .wire import MAX_SENSOR_ID

    n = len(text.encode("utf-8"))
    if not 1 <= n <= MAX_SENSOR_ID:
        raise argparse.ArgumentTypeError(f"a sensor id is 1-{MAX_SENSOR_ID} UTF-8 bytes, got {n}")
    return text


def _endpoint(text: str) -> str:
    if not ENDPOINT.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a ZeroMQ endpoint (e.g. tcp://127.0.0.1:5555, "
                                         "ipc:///run/edgert/sensors)")
    return text


def _sensor_endpoint(text: str) -> str:
    """A ZeroMQ endpoint, or a broker's ``mqtt[s]://HOST:PORT/TOPIC/+`` (the ``+``: the sensor id)."""
    from .mqtt import is_mqtt, parse_endpoint

    if not is_mqtt(text):
        return _endpoint(text)
    try:
        parse_endpoint(text, sensors=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _one_or_list(items):
    """A repeatable option's values: None, one string, or a list (config's listen/events)."""
    return None if not items else items[0] if len(items) == 1 else items


def _mqtt_missing(cfg) -> str | None:
    """The one-line error when mqtt:// endpoints are configured but paho-mqtt is missing."""
    from .config import endpoints
    from .mqtt import MissingExtra, is_mqtt, paho

    if any(is_mqtt(ep) for ep in endpoints(cfg.listen) + endpoints(cfg.events)):
        try:
            paho()
        except MissingExtra as exc:
            return str(exc)
    return None


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger().setLevel(getattr(logging, level.upper(), logging.INFO))


def cmd_serve(args) -> int:
    from . import config, sdnotify
    from .daemon import Daemon
    from .metrics import MetricsError  # [metrics]

    def load():
        return config.load(args.config, listen=_one_or_list(args.listen), events=_one_or_list(args.events),
                           model=args.model,
                           backend=args.backend, socket=args.socket, max_batch=args.max_batch,
                           max_delay_us=args.max_delay_us, stats_interval_s=args.stats_interval,
                           threshold=args.threshold, risk_q=args.risk_q, classifier=args.classifier,
                           publish_scores=args.publish_scores or None, adapt=args.adapt,
                           adapt_hold_s=args.adapt_hold_s, reservoir_dir=args.reservoir_dir,
                           commission_samples=args.commission_samples,
                           commission_file=args.commission_file,
                           max_queue_mb=args.max_queue_mb, max_sensors=args.max_sensors,
                           max_clock_skew_s=args.max_clock_skew_s,
                           log_level=args.log_level_flag or args.log_level,
                           curve_server_key=args.curve_server_key,
                           curve_allowed_clients_dir=args.curve_allowed_clients_dir,
                           curve_event_clients_dir=args.curve_event_clients_dir,
                           sensor_keys=_sensor_keys(args.sensor_key), workers=args.workers,
                           metrics_listen=args.metrics_listen,  # [metrics]
                           mqtt_topic_prefix=args.mqtt_prefix, mqtt_node=args.mqtt_node,
                           mqtt_username=args.mqtt_username, mqtt_password_file=args.mqtt_password_file,
                           mqtt_ca_file=args.mqtt_ca_file, mqtt_ha_discovery=args.mqtt_ha_discovery or None)

    try:
        cfg = load()
    except ValueError as exc:
        print(f"edgert serve: {exc}", file=sys.stderr)
        return 2
    missing = _mqtt_missing(cfg)
    if missing:
        print(f"edgert serve: {missing}", file=sys.stderr)
        return 2
    _setup_logging(cfg.log_level)
    notifier = sdnotify.Notifier()  # no-op unless started by systemd (Type=notify)
    if cfg.workers > 1:  # [workers] N processes behind one listening socket, this one supervises
        from .workers import serve as serve_workers

        return serve_workers(cfg, load, notifier)
    try:
        d = Daemon(cfg)
        d.bind()
    except MetricsError as exc:  # [metrics] the address is taken (or prometheus-client missing): a usage error
        notifier.status(f"failed: {exc}")
        print(f"edgert serve: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # model, backend or socket errors: say which, exit non-zero
        notifier.status(f"failed: {exc}")
        print(f"edgert serve: {exc}", file=sys.stderr)
        return 1
    d.reload_config = load  # SIGHUP re-reads the file with the same command-line overrides
    d.install_signal_handlers()
    final = d.run(ready=lambda: notifier.ready(f"serving {d.model.name} on {d.listen_endpoint}, "
                                               f"backend {d.backend.name}"),
                  tick=notifier.tick)
    notifier.stopping(f"stopped after {final.get('windows', 0)} windows")
    print(json.dumps({"final": True, **final}, allow_nan=False), flush=True)
    return 0


def _sensor_keys(items) -> dict | None:
    """``--sensor-key ID=KEY`` flags as a sensor_keys mapping (None when none given)."""
    if not items:
        return None
    out = {}
    for item in items:
        sensor, sep, key = item.partition("=")
        if not sep or not sensor or not key:
            raise ValueError(f"--sensor-key {item!r}: expected SENSOR_ID=KEYFILE (or =Z85 public key)")
        out[sensor] = key
    return out


def cmd_replay(args) -> int:
    from .replay import main as replay_main

    return replay_main(args)


def cmd_report(args) -> int:
    from .report import main as report_main

    return report_main(args)


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(seconds=args.seconds, as_json=args.json, speed=args.speed)


def cmd_models(args) -> int:
    from . import models

    rows = []
    for name in models.shipped():
        try:
            m = models.load(name)
        except models.ModelError as exc:
            rows.append({"name": name, "error": str(exc)})
            continue
        rows.append({
            "name": m.name, "kind": m.kind, "window": m.window, "hop": m.hop,
            "channels": m.channels, "threshold": m.threshold, "class_names": m.class_names,
            "variants": {k: {"file": v.path.name, "batch": v.batch or "dynamic",
                             "input": list(v.input.shape)} for k, v in m.variants.items()},
            "metrics": m.manifest.get("training", {}).get("metrics", {}),
            "dir": str(m.dir),
        })
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            if "error" in r:
                print(f"{r['name']}: ERROR {r['error']}")
                continue
            print(f"{r['name']}: {r['kind']}, window {r['window']} hop {r['hop']}, channels "
                  f"{','.join(r['channels'])}, threshold {r['threshold']}")
            for k, v in r["variants"].items():
                print(f"    {k}: {v['file']} batch {v['batch']} input {v['input']}")
    return 0 if all("error" not in r for r in rows) else 1


def cmd_bench(args) -> int:
    from .bench import run as bench_run

    return bench_run.main(args)


def cmd_backends(args) -> int:
    from . import models
    from .backends.report import main as report

    try:  # the manifest only: whether the runtime can run it is what the report tells
        models.load(args.model, verify=False)
    except models.ModelError as exc:
        print(f"edgert backends: --model: {exc}", file=sys.stderr)
        return 2
    return report(as_json=args.json, model=args.model)


def cmd_warmup(args) -> int:
    from . import kernels, models

    secs = kernels.warmup()
    print(f"kernels: {kernels.BACKEND}, warmed in {secs:.2f} s")
    for name in models.shipped():
        models.load(name)
        print(f"model {name}: ok")
    return 0


def cmd_keys_new(args) -> int:
    from . import auth

    try:
        public, secret = auth.new_keypair(args.dir, args.name or auth.default_key_name())
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"edgert keys new: {exc}", file=sys.stderr)
        return 2
    print(f"public key: {public}")
    print(f"secret key: {secret}")
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``edgert`` parser: every sub-command, one-line errors, defaults shown in help.

    Args:
      command: the sub-command about to be parsed; the other commands of `LAZY_COMMANDS` are
        then registered by name and help only, without importing their modules. None: all
        in full.
    """
    from . import __version__

    p = _Parser(prog="edgert", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"edgert {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    from .config import Config, LOG_LEVELS

    dflt = Config()
    s = sub.add_parser("serve", help="run the daemon",
                       description="Run the daemon: sensor blocks in on --listen, events out on --events. "
                                   "Every option is also a key of the --config TOML file (command line wins). "
                                   "SIGTERM/SIGINT: drain, flush, print the final stats as one JSON line, exit 0. "
                                   "SIGHUP: reload the config file (live keys applied, others named as needing a restart).")
    s.add_argument("--listen", action="append", metavar="EP",
                   help=f"sensor endpoint to bind (tcp://*:5555, ipc:///run/edgert/sensors), or a broker's topic "
                        f"filter to subscribe to, mqtt://HOST:PORT/sensors/+ (the + level is the sensor id); "
                        f"repeatable (default {dflt.listen})")
    s.add_argument("--events", action="append", metavar="EP",
                   help=f"event PUB endpoint to bind, or a broker to publish to, mqtt://HOST:PORT (mqtts:// for "
                        f"TLS); repeatable, e.g. ZeroMQ and MQTT side by side (default {dflt.events})")
    s.add_argument("--mqtt-prefix", dest="mqtt_prefix", metavar="TOPIC",
                   help=f"MQTT events: topic prefix (default {dflt.mqtt_topic_prefix})")
    s.add_argument("--mqtt-node", dest="mqtt_node", metavar="NAME",
                   help="MQTT events: the node level of the topics (default: this host's name)")
    s.add_argument("--mqtt-username", dest="mqtt_username", metavar="USER", help="MQTT: broker user name")
    s.add_argument("--mqtt-password-file", dest="mqtt_password_file", metavar="FILE",
                   help="MQTT: a file whose first line is the broker password (or mqtt_password_env in the config)")
    s.add_argument("--mqtt-ca-file", dest="mqtt_ca_file", metavar="FILE",
                   help="mqtts://: CA certificates to check the broker with (default: the system's)")
    s.add_argument("--mqtt-ha-discovery", action="store_true", dest="mqtt_ha_discovery",
                   help="MQTT events: Home Assistant discovery, a binary_sensor per sensor (anomalous or not)")
    s.add_argument("--model", help=f"shipped model name or model directory (default {dflt.model})")
    s.add_argument("--backend", help="auto|cpu|edgetpu[:device=usb:0]|delegate:PATH[:key=value,…], "
                                     "or a fallback chain A|B (default auto = edgetpu|cpu)")
    s.add_argument("--classifier", help="also classify every window with this classifier model "
                                        "(same window, hop and channels), e.g. motor-cnn")
    s.add_argument("--socket", choices=["sub", "pull"], help=f"input socket type (default {dflt.socket})")
    s.add_argument("--max-batch", type=int, dest="max_batch",
                   help=f"windows per backend invoke at most (default {dflt.max_batch})")
    s.add_argument("--max-delay-us", type=int, dest="max_delay_us",
                   help=f"a partial batch goes when its oldest window waited this long (default {dflt.max_delay_us})")
    s.add_argument("--stats-interval", type=float, dest="stats_interval",
                   help=f"seconds between stats events (default {dflt.stats_interval_s:g})")
    s.add_argument("--threshold", choices=["fixed", "spot", "dspot", "quantile"],
                   help="fixed: the manifest's calibrated threshold (default); spot/dspot: streaming "
                        "peaks-over-threshold per sensor; quantile: rolling quantile per sensor")
    s.add_argument("--risk-q", type=float, dest="risk_q", help=f"SPOT risk q (default {dflt.risk_q:g})")
    s.add_argument("--adapt", choices=["off", "safe"],
                   help="safe: each sensor's normalization follows a new operating point (a sustained, "
                        "stationary, common-gain shift the model accepts on probation); off (default)")
    s.add_argument("--adapt-hold", type=float, dest="adapt_hold_s",
                   help=f"seconds (sensor time) a shift must hold before it is tried (default {dflt.adapt_hold_s:g})")
    s.add_argument("--commission", type=int, dest="commission_samples", metavar="N",
                   help="each new sensor's first N samples (a healthy machine) set a gain per channel, "
                        "once, within +-commission_max_gain (edgert/commission.py); 0: off (default)")
    s.add_argument("--commission-file", dest="commission_file", metavar="FILE",
                   help="keep commissioned gains in FILE across restarts (JSON)")
    s.add_argument("--publish-scores", action="store_true", dest="publish_scores",
                   help="also publish every window's score (event/scores/<sensor>), e.g. for replay --events-out")
    s.add_argument("--reservoir", dest="reservoir_dir", metavar="DIR",
                   help="keep a bounded on-disk reservoir of normal windows in DIR for edgert retrain")
    s.add_argument("--max-queue-mb", type=float, dest="max_queue_mb",
                   help=f"receive queue budget per connection, MB (default {dflt.max_queue_mb:g})")
    s.add_argument("--max-sensors", type=int, dest="max_sensors",
                   help=f"sensor slots; idle sensors are evicted (default {dflt.max_sensors})")
    s.add_argument("--max-clock-skew", type=float, dest="max_clock_skew_s", metavar="S",
                   help=f"drop blocks whose t0 is further than S seconds from this clock; 0: off, e.g. to "
                        f"replay old timestamps (default {dflt.max_clock_skew_s:g})")
    s.add_argument("--log-level", dest="log_level", type=str.upper, choices=LOG_LEVELS,
                   help=f"(default {dflt.log_level})")
    s.add_argument("-v", "--verbose", action="store_const", const="DEBUG", dest="log_level_flag",
                   help="log level DEBUG")
    s.add_argument("-q", "--quiet", action="store_const", const="WARNING", dest="log_level_flag",
                   help="log level WARNING")
    s.add_argument("--curve-server-key", dest="curve_server_key", metavar="SECRETFILE",
                   help="turn CURVE on: the daemon's .key_secret (edgert keys new DIR --name server)")
    s.add_argument("--curve-allowed-clients-dir", dest="curve_allowed_clients_dir", metavar="DIR",
                   help="with CURVE: directory of the allowed clients' *.key public keys (sensors, and "
                        "event subscribers unless --curve-event-clients-dir)")
    s.add_argument("--curve-event-clients-dir", dest="curve_event_clients_dir", metavar="DIR",
                   help="with CURVE: a separate directory of the event subscribers' *.key files")
    s.add_argument("--sensor-key", dest="sensor_key", action="append", metavar="ID=KEY",
                   help="with CURVE: sensor ID may only be sent by this client key (.key file or Z85); "
                        "repeat per sensor; then only listed sensor ids are accepted")
    s.add_argument("--metrics", dest="metrics_listen", metavar="HOST:PORT",
                   help="serve Prometheus /metrics, /healthz and /readyz here, e.g. 127.0.0.1:9108 "
                        "(config key metrics_listen; default: off)")
    s.add_argument("--workers", type=_number(int, 1, 256), metavar="N",
                   help="serve with N worker processes on the same --listen socket (tcp or ipc), each "
                        "holding whole sensor connections; this process supervises (default 1: one process)")
    s.add_argument("--config", help="TOML file with the same keys (an [edgert] table or top level)")
    s.set_defaults(fn=cmd_serve)

    r = sub.add_parser("replay", help="publish recorded samples as a sensor", fromfile_prefix_chars="@",
                       description="Publish CSV/NPZ files or shipped recordings as one sensor would. Columns "
                                   "are matched to the model's channels by name (a CSV header, an NPZ "
                                   "'channels' array) and reordered; headerless files are sent in file order "
                                   "once their column count matches. A time column (time, timestamp, t, "
                                   "datetime, or --time-column) is skipped: the rate is --rate. @LIST reads "
                                   "arguments from the file LIST, one per line.")
    r.add_argument("files", nargs="*", metavar="FILE", help="CSV, NPZ/NPY, or itsc:NAME (shipped; see --list)")
    r.add_argument("--list", action="store_true", help="name the shipped recordings and exit")
    r.add_argument("--to", type=_sensor_endpoint, metavar="EP",
                   help="the daemon's sensor endpoint (its --listen), e.g. tcp://127.0.0.1:5555, or a broker topic "
                        "mqtt://HOST:PORT/sensors/+ (+ becomes the sensor id) (required)")
    r.add_argument("--json-payload", action="store_true", dest="json_payload",
                   help="with --to mqtt://: JSON payloads instead of the binary block")
    r.add_argument("--mqtt-username", dest="mqtt_username", metavar="USER", help="with --to mqtt://: user name")
    r.add_argument("--mqtt-password-file", dest="mqtt_password_file", metavar="FILE",
                   help="with --to mqtt://: a file whose first line is the password")
    r.add_argument("--mqtt-ca-file", dest="mqtt_ca_file", metavar="FILE",
                   help="with --to mqtts://: CA certificates (default: the system's)")
    r.add_argument("--sensor", type=_sensor_id, metavar="ID", help="sensor id, 1-64 UTF-8 bytes (required)")
    r.add_argument("--rate", type=_number(float, 0, 1e9, lo_open=True, what=" Hz"), metavar="HZ",
                   help="sample rate, Hz (required)")
    r.add_argument("--model", default="motor-ae", metavar="NAME|DIR",
                   help="the daemon's model (shipped name or directory): its channels order the columns")
    r.add_argument("--columns", metavar="COLS", help="comma-separated column names or 0-based indices to send, in the "
                                     "model's channel order (instead of matching header names)")
    r.add_argument("--time-column", dest="time_column", metavar="NAME",
                   help="a time column to skip (name or 0-based index); time, timestamp, t and datetime "
                        "are recognised without it")
    r.add_argument("--block", type=_number(int, 1, 1 << 20), default=64, metavar="N", help="samples per message")
    r.add_argument("--speed", type=_number(float, 0, 1e6, lo_open=True), default=1.0, metavar="X",
                   help="wall-clock speed-up over real time")
    r.add_argument("--fast", action="store_true", help="send as fast as the socket takes blocks (ignores --speed)")
    r.add_argument("--repeat", type=_number(int, 1, 1_000_000), default=1, metavar="N",
                   help="replay the file list this many times")
    r.add_argument("--gap", type=_number(float, 0, 31_536_000, what=" s"), default=1.0, metavar="S",
                   help="sensor-time gap between files, s (the daemon restarts its windows there)")
    r.add_argument("--t0", type=_number(int, 0, 1 << 62), metavar="NS",
                   help="timestamp of the first sample, ns since the Unix epoch (default: now)")
    r.add_argument("--socket", choices=["pub", "push"], default="pub",
                   help="pub for a daemon whose input is SUB (edgert serve unless --socket pull), "
                        "push for a PULL daemon")
    r.add_argument("--wait", type=_number(float, 0, 3600, lo_open=True, what=" s"), default=10.0, metavar="S",
                   help="seconds to wait for the daemon to take the connection")
    r.add_argument("--events", type=_endpoint, metavar="EP",
                   help="the daemon's event endpoint: replay then reads its stats and fails on dropped blocks")
    r.add_argument("--events-out", dest="events_out", metavar="CSV",
                   help="write every window's score, threshold, flag and explanation here; needs --events "
                        "and a daemon run with --publish-scores")
    r.add_argument("--curve-server-key", dest="curve_server_key", metavar="PUBFILE",
                   help="CURVE: the daemon's public key (its .key file, or Z85 text)")
    r.add_argument("--curve-client-key", dest="curve_client_key", metavar="SECRETFILE",
                   help="CURVE: this sensor's .key_secret (its .key must be in the daemon's allowed dir)")
    r.set_defaults(fn=cmd_replay)

    k = sub.add_parser("keys", help="CURVE key pairs for the daemon, sensors and event subscribers")
    ksub = k.add_subparsers(dest="keys_cmd", required=True)
    kn = ksub.add_parser("new", help="write NAME.key (public) and NAME.key_secret (mode 0600) in DIR")
    kn.add_argument("dir", metavar="DIR", help="directory for the key files (created, mode 0700)")
    kn.add_argument("--name", help="file name without suffix (default: this host's name)")
    kn.set_defaults(fn=cmd_keys_new)

    d = sub.add_parser("demo", help="daemon + a replaying sensor on shipped data")
    d.add_argument("--seconds", type=_number(float, 0, 3600, lo_open=True, what=" s"), default=10.0, metavar="S",
                   help="about how long the sensor replays, wall-clock seconds")
    d.add_argument("--speed", type=_number(float, 0, 100, lo_open=True), default=10.0, metavar="X",
                   help="replay speed-up over the 1 kHz recordings")
    d.add_argument("--json", action="store_true", help="progress on stderr; last line on stdout: the result as JSON")
    d.set_defaults(fn=cmd_demo)

    rp = sub.add_parser("report", help="plot signal, score, threshold and flagged spans from replay --events-out")
    rp.add_argument("events", metavar="EVENTS", help="CSV written by edgert replay --events-out")
    rp.add_argument("--data", metavar="FILE", help="the replayed input (CSV/NPZ/itsc:NAME) to draw the signal")
    rp.add_argument("--segment", type=_number(int, 0, 1_000_000), default=0, metavar="N", help="which replayed file to draw (0: the first)")
    rp.add_argument("--png", metavar="OUT", help="write the figure here (default: EVENTS with .png)")
    rp.add_argument("--unit", default="", help="unit of the signal for its axis label, e.g. A (default: none)")
    rp.add_argument("--window", type=_number(int, 1, 1 << 20), metavar="N",
                    help="window length, samples, for CSVs without t_end_ns (default 64)")
    rp.set_defaults(fn=cmd_report)

    m = sub.add_parser("models", help="list shipped models")
    m.add_argument("--json", action="store_true", help="one JSON array instead of text")
    m.set_defaults(fn=cmd_models)

    _add(sub, "bench", command)
    bk = sub.add_parser("backends", help="what can run models here (CPU, Edge TPU, delegates) and why not")
    bk.add_argument("--json", action="store_true", help="one JSON object instead of text")
    bk.add_argument("--model", default="motor-ae", metavar="NAME|DIR", help="model whose variants to check (shipped name or directory)")
    bk.set_defaults(fn=cmd_backends)

    w = sub.add_parser("warmup", help="compile the numba kernels and check the models load")
    w.set_defaults(fn=cmd_warmup)

    for name in ("check-model", "compile", "eval", "train", "retrain", "fleet"):
        _add(sub, name, command)
    _finish(p, sub)
    return p


def _add_bench(sub) -> None:
    """Adds ``bench`` (its options here, ``--peers`` and the peers' from `edgert.bench.peers`)."""
    b = sub.add_parser("bench", help=LAZY_COMMANDS["bench"][1])
    b.add_argument("--quick", action="store_true", help="the CI gate: the first four sections, short runs")
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    b.add_argument("--out", help="write the JSON result here")
    b.add_argument("--update-baseline", action="store_true", dest="update_baseline",
                   help="write this CPU kind's entry of bench/baseline.json (git checkout only, every gated "
                        "section, not from a loaded run)")
    b.add_argument("--no-baseline", action="store_true", dest="no_baseline",
                   help="do not compare with bench/baseline.json")
    b.add_argument("--only", help="comma-separated sections: kernels,invoke,pipeline,latency,inference,bus,"
                   "e2e,startup,naive,hostile,engine,workers,integrations,frontier (default: all; --quick: the first four); with --peers: the peers "
                   "to run (default: all)")
    b.add_argument("--frontier-models", dest="frontier_models", metavar="DIR,...",
                   help="frontier section: model directories to compare (default: the shipped ones)")
    b.add_argument("--plot", metavar="DIR", help="write latency CDFs, throughput-vs-load and bus PNGs here")
    b.add_argument("--from", dest="from_json", metavar="FILE", help="render (and --plot) a saved result, run nothing")
    b.set_defaults(fn=cmd_bench)
    from .bench.peers import add_arguments as add_peer_arguments
    add_peer_arguments(b)


def _add_from(module: str):
    """A function adding the command(s) of `module` (its ``add_parsers(sub)``) to ``sub``."""
    def add(sub) -> None:
        importlib.import_module(module, __package__).add_parsers(sub)
    return add


# Commands whose options are defined where they run (training, evaluation, bench code): their
# modules are imported only to parse that command, so `edgert serve` imports none of them.
# The help is what ``edgert -h`` lists without importing them (tests/test_imports.py checks it
# against each module's own).
LAZY_COMMANDS = {
    "bench": (_add_bench, "benchmark suite: kernels, inference, bus, end to end; CI gate"),
    "check-model": (_add_from(".edgetpu_check"),
                    "check a .tflite file against the Edge TPU rules (offline, no compiler needed)"),
    "compile": (_add_from(".compiler"),
                "co-compile model directories for the Edge TPU (needs edgetpu_compiler, x86-64 Linux)"),
    "eval": (_add_from(".evaluate"), "benchmarks through the int8 runtime (itsc, skab, nab)"),
    "train": (_add_from(".train"), "train, int8-quantize and export a model directory (needs "
                                   "TensorFlow: pip install 'edgert[train]')"),
    "retrain": (_add_from(".retrain"), "fine-tune an autoencoder on the daemon's reservoir of "
                                       "normal windows, validate it and (with --publish) publish "
                                       "it (needs TensorFlow)"),
    "fleet": (_add_from(".fleet"), "federated retraining with Flower: 'server' (SuperLink + "
                                   "FedAvg run) and 'client' (SuperNode on a node's reservoir) "
                                   "(needs pip install 'edgert[fleet]')"),
}


def _add(sub, name: str, command: str | None) -> None:
    """Adds command `name`: in full when it is `command` or `command` is None, else only its
    name and help (a placeholder ``edgert -h`` lists; its module is not imported)."""
    add, help_ = LAZY_COMMANDS[name]
    if command is None or command == name:
        add(sub)
    else:
        sub.add_parser(name, help=help_)


def _finish(p: argparse.ArgumentParser, sub) -> None:
    """Name every command in the top-level description and show defaults in every command's
    help (serve's help is left as its module writes it)."""
    names = list(sub.choices)
    p.description = (f"edgert: {SUMMARY}.\n\ncommands: {', '.join(names)}\n"
                     "(edgert COMMAND -h shows a command's options and their defaults)")

    def walk(parser):
        parser.formatter_class = _DefaultsFormatter
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for child in a.choices.values():
                    walk(child)

    for name, child in sub.choices.items():
        if name != "serve":
            walk(child)


def _command(argv) -> str | None:
    """The sub-command `argv` names (its first word, when that is not an option), else None."""
    return argv[0] if argv and not argv[0].startswith("-") else None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    completing = "_ARGCOMPLETE" in os.environ  # completion needs every command's options
    parser = build_parser(None if completing else _command(argv))
    if completing:
        try:  # optional: shell completion when argcomplete is installed
            import argcomplete
        except ImportError:
            pass
        else:
            argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
