"""``edgert fleet server`` and ``edgert fleet client``: Flower's deployment engine, started.

Server: a Flower SuperLink (``flower-superlink``: Fleet API for the nodes over gRPC,
ServerAppIo and Control APIs on the same host) and one run of the edgert Flower App
(``flwr run``), whose ServerApp is `edgert.fleet.apps.server`. The App is a generated directory
(a ``pyproject.toml`` naming the components and holding this run's config, and a one-line
module importing them from the installed edgert); Flower builds it into a FAB and ships it to
the SuperLink, which starts the ServerApp; each SuperNode starts the ClientApp from the same
FAB. The run's record (rounds, bytes, verdicts) is written to ``--out`` and summarized on
stdout. The SuperLink is stopped when the run ends.

Client: checks the model and reservoir directories, then becomes a Flower SuperNode
(``flower-supernode``, exec) whose node config names them; it serves runs until stopped.

TLS: without ``--insecure`` the server needs ``--ca``, ``--cert`` and ``--key`` (PEM; Flower's
``--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile``), and every client ``--root-certificates``
(the CA); the certificate must name the address the nodes dial (SAN). ``--insecure`` is for
one machine or a closed network: weights then travel unencrypted.

Exit codes (server): 0 every node passed its gates (and published unless ``--no-publish``),
1 the run completed but a node refused the model (its reason is printed), 2 bad input, no
Flower or TensorFlow, or the run failed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLWR_HINT = "pip install 'edgert[fleet]'"
APP_MODULE = "edgert_fleet_app"


class FleetError(ValueError):
    """Bad fleet input or a failed run; the message says which option or file."""


def require_flower() -> None:
    """ImportError with the install hint when flwr or TensorFlow is missing."""
    import importlib.util

    for mod in ("flwr", "tensorflow"):
        try:  # (a module set to None in sys.modules makes find_spec raise ValueError)
            found = importlib.util.find_spec(mod) is not None and sys.modules.get(mod, 1)
        except ValueError:
            found = False
        if not found:
            raise ImportError(f"edgert fleet needs {mod} ({FLWR_HINT})")


def _bin(name: str) -> str:
    """A Flower executable: beside this interpreter first (a venv), else on PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise FleetError(f"{name} not found beside {sys.executable} or on PATH ({FLWR_HINT})")
    return found


def _env(home: Path | None = None) -> dict:
    """The environment for Flower's processes: this interpreter's bin first on PATH (the
    SuperLink and SuperNode start ``flower-superexec``, ``flwr-serverapp`` … by name)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    if home is not None:
        env["FLWR_HOME"] = str(home)
    return env


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None,
              log: Path | None = None) -> None:
    """Returns when ``host:port`` accepts TCP connections; FleetError after ``timeout`` s or
    when ``proc`` exits first (its ``log`` tail in the message)."""
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-1500:] if log and log.is_file() else ""
            raise FleetError(f"flower-superlink exited ({proc.returncode}): {tail}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise FleetError(f"{host}:{port}: nothing listening after {timeout:.0f} s")


def write_app(d: Path, run_config: dict, address: str, tls_ca: str | None) -> Path:
    """The Flower App directory of one run: pyproject (components, run config, federation
    ``edgert`` at ``address``) and the module naming edgert's apps."""
    import tomli_w

    fed = {"address": address}
    if tls_ca:
        fed["root-certificates"] = str(Path(tls_ca).resolve())
    else:
        fed["insecure"] = True
    doc = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": "edgert-fleet", "version": "1.0.0", "dependencies": []},
        "tool": {
            "hatch": {"build": {"targets": {"wheel": {"packages": ["."]}}}},
            "flwr": {"app": {"publisher": "edgert",
                             "components": {"serverapp": f"{APP_MODULE}:server",
                                            "clientapp": f"{APP_MODULE}:client"},
                             "config": run_config},
                     "federations": {"default": "edgert", "edgert": fed}}},
    }
    d.mkdir(parents=True, exist_ok=True)
    (d / "pyproject.toml").write_text(tomli_w.dumps(doc))
    (d / f"{APP_MODULE}.py").write_text(
        '"""edgert fleet: the Flower components, from the installed edgert."""\n'
        "import edgert.fleet.apps as _apps\n\n"
        "server = _apps.server  # plain assignments: flwr run finds the names statically\n"
        "client = _apps.client\n")
    return d


def tls_args(args) -> list[str]:
    """The SuperLink's TLS options from ``--insecure`` or ``--ca/--cert/--key``."""
    if args.insecure:
        return ["--insecure"]
    missing = [o for o in ("ca", "cert", "key") if not getattr(args, o)]
    if missing:
        raise FleetError(f"--{missing[0]}: needed for TLS (or --insecure on a closed network)")
    for o in ("ca", "cert", "key"):
        if not Path(getattr(args, o)).is_file():
            raise FleetError(f"--{o} {getattr(args, o)}: no such file")
    return ["--ssl-ca-certfile", args.ca, "--ssl-certfile", args.cert, "--ssl-keyfile", args.key]


def run_server(args, log=print) -> dict:
    """Starts the SuperLink, submits the run, waits for its record, stops the SuperLink.
    Returns the record (`edgert.fleet.apps.server_main`)."""
    import signal

    # SIGTERM (a supervisor, a test's timeout) must stop the SuperLink this process started in
    # its own session, as the finally below does: without a handler Python dies on the spot.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from .. import models, retrain

    retrain.float_model_path(models.load(args.model))  # the initial weights exist
    if args.nodes < 1 or args.rounds < 1 or args.epochs < 1:
        raise FleetError("--nodes, --rounds and --epochs must be >= 1")
    tls = tls_args(args)
    work = Path(tempfile.mkdtemp(prefix="edgert-fleet-"))
    out = Path(args.out).resolve() if args.out else work / "record.json"
    out.unlink(missing_ok=True)
    run_config = {"model": str(Path(args.model).resolve()), "nodes": args.nodes,
                  "rounds": args.rounds, "epochs": args.epochs, "lr": float(args.lr or 0.0),
                  "seed": args.seed, "strategy": args.strategy, "trim": args.trim,
                  "dp-clip": float(args.dp_clip), "dp-noise": float(args.dp_noise),
                  "publish": not args.no_publish, "tolerance": args.tolerance,
                  "out": str(out), "wait-nodes": float(args.wait_nodes),
                  "round-timeout": float(args.timeout)}
    host = args.host
    app = write_app(work / "app", run_config, f"{host}:{args.control_port}",
                    None if args.insecure else args.ca)
    env = _env(work / "home")
    link_log = work / "superlink.log"
    cmd = [_bin("flower-superlink"), *tls,
           "--fleet-api-address", f"{args.listen}:{args.fleet_port}",
           "--serverappio-api-address", f"{host}:{args.serverappio_port}",
           "--control-api-address", f"{host}:{args.control_port}",
           "--database", str(work / "state.db"), "--storage-dir", str(work / "storage")]
    with open(link_log, "wb") as lf:
        link = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        wait_port(host, args.control_port, 60, link, link_log)
        log(f"edgert fleet server: SuperLink up (Fleet API {args.listen}:{args.fleet_port}, "
            f"{'insecure' if args.insecure else 'TLS'}); waiting for {args.nodes} nodes")
        run_log = work / "run.log"
        with open(run_log, "wb") as rf:
            r = subprocess.run([_bin("flwr"), "run", str(app), "edgert", "--stream"], cwd=app,
                               env=env, stdout=rf, stderr=subprocess.STDOUT,
                               timeout=args.timeout * (args.rounds + 2) + args.wait_nodes)
        end = time.time() + 30  # the record is written as the ServerApp ends
        while not out.is_file() and time.time() < end:
            time.sleep(0.2)
        if not out.is_file():
            raise FleetError(f"the run wrote no record (flwr run exit {r.returncode}): "
                             f"{run_log.read_text()[-1500:]}")
        rec = json.loads(out.read_text())
    finally:
        link.terminate()
        try:
            link.wait(10)
        except subprocess.TimeoutExpired:
            link.kill()
    if rec.get("status") == "done":  # the logs are kept (and named) only when the run failed
        shutil.rmtree(work, ignore_errors=True)
    else:
        rec["logs"] = {"superlink": str(link_log), "run": str(run_log)}
    return rec


def summary(rec: dict) -> str:
    """Rounds and verdicts as text."""
    lines = [f"strategy {rec.get('strategy')}, {rec.get('rounds')} rounds x {rec.get('epochs')} "
             f"epochs; status {rec.get('status')}"]
    for r in rec.get("round_log", []):
        lines.append(f"round {r['round']}: {r['nodes']} nodes, {r.get('wall_s')} s, "
                     f"{r['bytes_down']} B down, {r.get('bytes_up')} B up, loss "
                     f"{(r.get('metrics') or {}).get('train-loss', float('nan')):.5g}")
    for v in rec.get("verdicts", []):
        lines.append(f"node {v.get('node') or v['node_id']}: "
                     f"{'PASS' if v['passed'] else 'FAIL'}; {v['reason']}")
    return "\n".join(lines)


def check_client(args) -> list[str]:
    """The ``flower-supernode`` command of ``edgert fleet client`` after checking its
    model and reservoir (FleetError / ValueError naming what is wrong)."""
    from .node import Node

    for o in ("model", "reservoir", "name"):
        v = getattr(args, o) or ""
        if '"' in v or "\\" in v or "\n" in v:
            raise FleetError(f"--{o} {v!r}: quotes, backslashes and newlines are not allowed")
    nd = Node(args.model, args.reservoir)
    name = args.name or nd.model.dir.name
    node_cfg = (f'model="{nd.model.dir.resolve()}" reservoir="{Path(args.reservoir).resolve()}" '
                f'name="{name}"')
    if args.insecure:
        tls = ["--insecure"]
    elif args.root_certificates and Path(args.root_certificates).is_file():
        tls = ["--root-certificates", args.root_certificates]
    else:
        raise FleetError("--root-certificates FILE (the CA) is needed for TLS, or --insecure")
    return [_bin("flower-supernode"), *tls, "--superlink", args.superlink,
            "--clientappio-api-address", f"127.0.0.1:{args.clientappio_port}",
            "--node-config", node_cfg]


def run_client(args) -> int:
    """Becomes the SuperNode (exec): returns only on error."""
    cmd = check_client(args)
    print(f"edgert fleet client: {cmd[-1]} -> {args.superlink}", file=sys.stderr, flush=True)
    os.execve(cmd[0], cmd, _env())
    return 2  # pragma: no cover - execve does not return
