"""``edgert`` command line: serve, replay, demo, models, bench, warmup, keys."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def cmd_serve(args) -> int:
    from . import config, sdnotify
    from .daemon import Daemon

    try:
        cfg = config.load(args.config, listen=args.listen, events=args.events, model=args.model,
                          backend=args.backend, socket=args.socket, max_batch=args.max_batch,
                          max_delay_us=args.max_delay_us, stats_interval_s=args.stats_interval,
                          threshold=args.threshold, risk_q=args.risk_q, classifier=args.classifier,
                          publish_scores=args.publish_scores or None, adapt=args.adapt,
                          adapt_hold_s=args.adapt_hold_s, reservoir_dir=args.reservoir_dir,
                          curve_server_key=args.curve_server_key,
                          curve_allowed_clients_dir=args.curve_allowed_clients_dir,
                          curve_event_clients_dir=args.curve_event_clients_dir,
                          sensor_keys=_sensor_keys(args.sensor_key))
    except ValueError as exc:
        print(f"edgert serve: {exc}", file=sys.stderr)
        return 2
    _setup_logging(cfg.log_level)
    notifier = sdnotify.Notifier()  # no-op unless started by systemd (Type=notify)
    try:
        d = Daemon(cfg)
        d.bind()
    except Exception as exc:  # model, backend or socket errors: say which, exit non-zero
        notifier.status(f"failed: {exc}")
        print(f"edgert serve: {exc}", file=sys.stderr)
        return 1
    d.install_signal_handlers()
    final = d.run(ready=lambda: notifier.ready(f"serving {d.model.name} on {d.listen_endpoint}, "
                                               f"backend {d.backend.name}"),
                  tick=notifier.tick)
    notifier.stopping(f"stopped after {final.get('windows', 0)} windows")
    print(json.dumps({"final": True, **final}, default=float), flush=True)
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
    from .bus import SensorPublisher
    from .replay import load_samples, replay

    try:
        data = [load_samples(f, args.columns.split(",") if args.columns else None) for f in args.files]
    except ValueError as exc:
        print(f"edgert replay: {exc}", file=sys.stderr)
        return 2
    segments = data * args.repeat
    keys = {"curve_server_key": args.curve_server_key, "curve_client_key": args.curve_client_key}
    try:
        pub = SensorPublisher(args.to, args.sensor, kind=args.socket, **keys)
    except (ValueError, RuntimeError) as exc:
        print(f"edgert replay: {exc}", file=sys.stderr)
        return 2
    if not pub.wait_subscribed(args.wait):
        pub.close()
        if pub.refused:
            from .auth import CLIENT_HINTS
            print(f"edgert replay: {args.to} refused this client at the CURVE handshake ({pub.refused}): "
                  f"{CLIENT_HINTS[pub.refused]}", file=sys.stderr)
        else:
            print(f"edgert replay: no daemon subscribed on {args.to} within {args.wait} s", file=sys.stderr)
        return 1
    rec = None
    if args.events_out:
        from .replay import EventRecorder
        if not args.events:
            print("edgert replay: --events-out needs --events ENDPOINT (the daemon's event socket)", file=sys.stderr)
            return 2
        rec = EventRecorder(args.events, args.sensor, **keys)
        ok, cause = rec.handshake(args.wait)
        if ok is False:
            from .auth import CLIENT_HINTS
            print(f"edgert replay: {args.events} refused this client at the CURVE handshake ({cause}): "
                  f"{CLIENT_HINTS[cause]}", file=sys.stderr)
            rec.close()
            pub.close()
            return 1
        time.sleep(0.3)  # let the subscription reach the daemon before the first window is scored
    res = replay(segments, pub, args.rate, block=args.block, speed=args.speed,
                 realtime=not args.fast, gap_s=args.gap, t0_ns=args.t0,
                 on_block=(lambda *_: rec.poll(0)) if rec else None)
    pub.close()
    if rec is not None:
        rec.drain()
        n = rec.write_csv(args.events_out, res["spans"], res["dt"], [d.shape[0] for d in segments])
        rec.close()
        print(f"edgert replay: {n} scored windows ({len(rec.anomalies)} anomalies) written to "
              f"{args.events_out}", file=sys.stderr)
        if n == 0:
            print("edgert replay: no scores arrived: start the daemon with --publish-scores", file=sys.stderr)
    print(json.dumps({"sensor": args.sensor, "blocks": res["blocks"], "samples": res["samples"],
                      "seconds": round(res["seconds"], 3)}), flush=True)
    return 0


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
    from .backends.report import main as report

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgert", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="run the daemon")
    s.add_argument("--listen", help="sensor endpoint to bind (tcp://*:5555, ipc:///run/edgert/sensors)")
    s.add_argument("--events", help="event PUB endpoint to bind")
    s.add_argument("--model", help="shipped model name or model directory (default motor-ae)")
    s.add_argument("--backend", help="auto|cpu|edgetpu[:device=usb:0]|delegate:PATH[:key=value,…], "
                                     "or a fallback chain A|B (default auto = edgetpu|cpu)")
    s.add_argument("--classifier", help="also classify every window with this classifier model "
                                        "(same window, hop and channels), e.g. motor-cnn")
    s.add_argument("--socket", choices=["sub", "pull"], help="input socket type (default sub)")
    s.add_argument("--max-batch", type=int, dest="max_batch")
    s.add_argument("--max-delay-us", type=int, dest="max_delay_us")
    s.add_argument("--stats-interval", type=float, dest="stats_interval")
    s.add_argument("--threshold", choices=["fixed", "spot", "dspot", "quantile"],
                   help="fixed: the manifest's calibrated threshold (default); spot/dspot: streaming "
                        "peaks-over-threshold per sensor; quantile: rolling quantile per sensor")
    s.add_argument("--risk-q", type=float, dest="risk_q", help="SPOT risk q (default 1e-4)")
    s.add_argument("--adapt", choices=["off", "safe"],
                   help="safe: each sensor's normalization follows a new operating point (a sustained, "
                        "stationary, common-gain shift the model accepts on probation); off (default)")
    s.add_argument("--adapt-hold", type=float, dest="adapt_hold_s",
                   help="seconds (sensor time) a shift must hold before it is tried (default 30)")
    s.add_argument("--publish-scores", action="store_true", dest="publish_scores",
                   help="also publish every window's score (event/scores/<sensor>), e.g. for replay --events-out")
    s.add_argument("--reservoir", dest="reservoir_dir", metavar="DIR",
                   help="keep a bounded on-disk reservoir of normal windows in DIR for edgert retrain")
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
    s.add_argument("--config", help="TOML file with the same keys")
    s.set_defaults(fn=cmd_serve)

    r = sub.add_parser("replay", help="publish recorded samples as a sensor")
    r.add_argument("files", nargs="+", metavar="FILE", help="CSV, NPZ, or itsc:NAME (shipped)")
    r.add_argument("--to", required=True, help="daemon endpoint")
    r.add_argument("--sensor", required=True, help="sensor id")
    r.add_argument("--rate", type=float, required=True, help="sample rate, Hz")
    r.add_argument("--block", type=int, default=64, help="samples per message")
    r.add_argument("--speed", type=float, default=1.0, help="wall-clock speed-up")
    r.add_argument("--fast", action="store_true", help="send as fast as possible")
    r.add_argument("--repeat", type=int, default=1, help="replay the file list this many times")
    r.add_argument("--gap", type=float, default=1.0, help="sensor-time gap between files, s")
    r.add_argument("--t0", type=int, help="ns timestamp of the first sample (default now)")
    r.add_argument("--columns", help="comma-separated column names or indices")
    r.add_argument("--socket", choices=["pub", "push"], default="pub")
    r.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the daemon")
    r.add_argument("--events", help="the daemon's event endpoint (for --events-out)")
    r.add_argument("--events-out", dest="events_out",
                   help="write every window's score, threshold, flag and explanation here (CSV); "
                        "the daemon must run with --publish-scores")
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
    d.add_argument("--seconds", type=float, default=10.0)
    d.add_argument("--speed", type=float, default=10.0, help="replay speed-up over the 1 kHz recordings")
    d.add_argument("--json", action="store_true")
    d.set_defaults(fn=cmd_demo)

    rp = sub.add_parser("report", help="plot signal, score, threshold and flagged spans from replay --events-out")
    rp.add_argument("events", metavar="EVENTS", help="CSV written by edgert replay --events-out")
    rp.add_argument("--data", help="the replayed input (CSV/NPZ/itsc:NAME) to draw the signal")
    rp.add_argument("--segment", type=int, default=0, help="which replayed file to draw (default 0)")
    rp.add_argument("--png", help="write the figure here (default EVENTS.png)")
    rp.set_defaults(fn=cmd_report)

    m = sub.add_parser("models", help="list shipped models")
    m.add_argument("--json", action="store_true")
    m.set_defaults(fn=cmd_models)

    b = sub.add_parser("bench", help="latency microbenchmarks")
    b.add_argument("--quick", action="store_true")
    b.add_argument("--json", action="store_true")
    b.add_argument("--out", help="write the JSON result here")
    b.add_argument("--update-baseline", action="store_true", dest="update_baseline",
                   help="rewrite bench/baseline.json from this run's ratios")
    b.add_argument("--no-baseline", action="store_true", dest="no_baseline",
                   help="do not compare with bench/baseline.json")
    b.add_argument("--only", help="comma-separated sections: kernels,invoke,pipeline,latency,inference,bus,"
                   "e2e,startup (default: all; --quick: the first four); with --peers: the peers to run "
                   "(default: all)")
    b.add_argument("--plot", metavar="DIR", help="write latency CDFs, throughput-vs-load and bus PNGs here")
    b.add_argument("--from", dest="from_json", metavar="FILE", help="render (and --plot) a saved result, run nothing")
    b.set_defaults(fn=cmd_bench)
    from .bench.peers import add_arguments as add_peer_arguments
    add_peer_arguments(b)

    bk = sub.add_parser("backends", help="what can run models here (CPU, Edge TPU, delegates) and why not")
    bk.add_argument("--json", action="store_true")
    bk.add_argument("--model", default="motor-ae", help="model whose variants to check (default motor-ae)")
    bk.set_defaults(fn=cmd_backends)

    w = sub.add_parser("warmup", help="compile the numba kernels and check the models load")
    w.set_defaults(fn=cmd_warmup)

    from .compiler import add_parsers as add_compile_parsers
    from .edgetpu_check import add_parsers as add_check_parsers
    add_check_parsers(sub)
    add_compile_parsers(sub)
    from .evaluate import add_parsers as add_eval_parsers
    add_eval_parsers(sub)
    from .train import add_parsers as add_train_parsers
    add_train_parsers(sub)
    from .retrain import add_parsers as add_retrain_parsers
    add_retrain_parsers(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
