"""The three-node ITSC case of ``edgert fleet`` (tests and docs/results/fleet-2026-12-02.json).

Three nodes, each a motor whose daemon kept its own healthy ITSC recordings (shipped in
``edgert.data``): ``a`` SC_HLT_001 (phase B ~7 % low: the shipped model's fold without it
flags 58 of its 59 windows), ``b`` SC_HLT_002 + 003, ``c`` SC_HLT_004 + 005. Each recording's
first ``SPLIT`` samples fill the node's reservoir (windows at hop ``RES_HOP``); the rest are
the node's unseen healthy windows (hop ``TEST_HOP``), which no model ever trains or
calibrates on. A poisoned node ``p`` holds fault windows (SC_A3/SC_A4 short circuits) in its
reservoir.

``python -m edgert.fleet.case --out FILE`` runs the comparison: on every node's unseen healthy
windows and on the 12 ITSC fault classes (all 60 fault recordings, hop 16), the shipped model;
each node retrained alone (``edgert retrain``); the federated model (``edgert fleet`` over
Flower's deployment engine on localhost, its per-node threshold and normalization); a model
trained centrally on the three reservoirs' training windows (each normalized by its node, the
same epochs in total, thresholds calibrated per node as the federated one: the upper bound);
the federation with Flower's client-side fixed-clipping DP wrapper (``DP``); then the
federation with the poisoned node under FedAvg and FedTrimmedAvg.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .. import models, reservoir

SPLIT = 750          # samples of each recording for the reservoir; the rest is unseen
RES_HOP, TEST_HOP = 4, 2
NODES = {"a": ["SC_HLT_001"], "b": ["SC_HLT_002", "SC_HLT_003"],
         "c": ["SC_HLT_004", "SC_HLT_005"]}
POISON = ["SC_A3_B0_C0", "SC_A4_B0_C0"]
DP = (0.5, 0.1)  # the case's clipping norm and noise multiplier (one setting, not tuned)


def reservoir_windows(names: list[str], window: int = 64) -> np.ndarray:
    """Raw windows ``[n, W, 3]`` of the first ``SPLIT`` samples of each recording."""
    from ..data import itsc_recording
    from ..train import make_windows

    return np.concatenate([make_windows(itsc_recording(n)[:SPLIT], window, RES_HOP)
                           for n in names])


def unseen_windows(names: list[str], window: int = 64) -> np.ndarray:
    """Raw windows of the samples after ``SPLIT`` (never in a reservoir)."""
    from ..data import itsc_recording
    from ..train import make_windows

    return np.concatenate([make_windows(itsc_recording(n)[SPLIT:], window, TEST_HOP)
                           for n in names])


def poison_windows(window: int = 64) -> np.ndarray:
    """Fault windows for the poisoned node: the first ``SPLIT`` samples of the 5 recordings of
    each class in ``POISON``."""
    return reservoir_windows([f"{c}_00{i}" for c in POISON for i in range(1, 6)], window)


def make_node(root: Path, name: str, windows: np.ndarray, model: str = "motor-ae") -> dict:
    """A node's directories under ``root/name``: a copy of the shipped model (without its fold
    models) and a reservoir holding ``windows`` (as the daemon stores them, oldest first)."""
    d = Path(root) / name
    mdir = d / "model"
    shutil.copytree(models.resolve(model), mdir, ignore=shutil.ignore_patterns("folds"))
    m = models.load(mdir)
    rdir = d / "reservoir"
    r = reservoir.Reservoir(rdir, m.name, m.window, m.channels, size=max(64, len(windows)),
                            rate=1.0)
    r.add(windows, np.arange(len(windows), dtype=np.int64) * 10**6, f"motor-{name}")
    r.close()
    return {"name": name, "model": mdir, "reservoir": rdir}


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (bound once, then released)."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def make_certs(d: Path, host: str = "127.0.0.1") -> dict:
    """A throwaway CA and a server certificate for ``host`` (SAN: IP address or DNS name),
    PEM files in ``d`` (``cryptography``, a dependency of flwr): for tests on one machine.
    Returns ``{"ca", "cert", "key"}`` paths as str."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject, issuer, pub, signer, ca: bool, san=None):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
             .public_key(pub).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=2))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san is not None:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgert fleet test CA")])
    ca = cert(ca_name, ca_name, ca_key.public_key(), ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        san = [x509.IPAddress(ipaddress.ip_address(host))]
    except ValueError:
        san = [x509.DNSName(host)]
    srv = cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]), ca_name,
               key.public_key(), ca_key, False, san)
    pem = serialization.Encoding.PEM
    (d / "ca.crt").write_bytes(ca.public_bytes(pem))
    (d / "server.pem").write_bytes(srv.public_bytes(pem))
    (d / "server.key").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    return {"ca": str(d / "ca.crt"), "cert": str(d / "server.pem"), "key": str(d / "server.key")}


class Fleet:
    """``edgert fleet server`` and one ``edgert fleet client`` per node as real processes on
    localhost (each in its own session, stopped by process group on exit)."""

    def __init__(self, nodes: list[dict], work: Path, server_args: list[str],
                 tls: dict | None = None):
        self.nodes, self.work = nodes, Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        ports = free_ports(3 + len(nodes))
        self.fleet_port = ports[0]
        self.out = self.work / "record.json"
        sec = (["--ca", tls["ca"], "--cert", tls["cert"], "--key", tls["key"]] if tls
               else ["--insecure"])
        self.server_cmd = [sys.executable, "-m", "edgert", "fleet", "server", "--listen",
                           "127.0.0.1", "--fleet-port", str(ports[0]), "--serverappio-port",
                           str(ports[1]), "--control-port", str(ports[2]), "--nodes",
                           str(len(nodes)), "--out", str(self.out), *sec, *server_args]
        csec = ["--root-certificates", tls["ca"]] if tls else ["--insecure"]
        self.client_cmds = [[sys.executable, "-m", "edgert", "fleet", "client", "--model",
                             str(n["model"]), "--reservoir", str(n["reservoir"]), "--name",
                             n["name"], "--superlink", f"127.0.0.1:{ports[0]}",
                             "--clientappio-port", str(ports[3 + i]), *csec]
                            for i, n in enumerate(nodes)]
        self.procs: list[subprocess.Popen] = []

    def run(self, timeout: float, abort_on: str | None = None) -> tuple[int | None, dict, str]:
        """Starts the server and the clients, waits for the server; returns (its exit code,
        the record, its stdout). After ``timeout`` s, or as soon as a client's log shows
        ``abort_on``, everything is stopped and the record's status says which (exit code
        None)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        srv_log = open(self.work / "server.log", "wb")
        srv = subprocess.Popen(self.server_cmd, stdout=subprocess.PIPE, stderr=srv_log,
                               env=env, start_new_session=True)
        self.procs.append(srv)
        for i, cmd in enumerate(self.client_cmds):
            lf = open(self.work / f"client-{self.nodes[i]['name']}.log", "wb")
            self.procs.append(subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT,
                                               env=env, start_new_session=True))
        status, end = None, time.time() + timeout
        try:
            while srv.poll() is None and status is None:
                # the server's stdout is a few lines: the pipe cannot fill while we poll
                try:
                    srv.wait(1.0)
                except subprocess.TimeoutExpired:
                    pass
                if time.time() > end:
                    status = f"timeout: the server still ran after {timeout:.0f} s"
                elif abort_on and any(abort_on in p.read_text(errors="replace")
                                      for p in self.work.glob("client-*.log")):
                    status = f"aborted: a client logged {abort_on!r}"
        finally:
            self.stop()
        out = srv.stdout.read().decode(errors="replace") if srv.stdout else ""
        if status is not None:
            return None, {"status": status}, out
        rec = json.loads(self.out.read_text()) if self.out.is_file() else {}
        return srv.returncode, rec, out

    def stop(self) -> None:
        """Terminates every process group this object started (then kills what is left)."""
        import signal

        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        end = time.time() + 10
        for p in self.procs:
            try:
                p.wait(max(0.1, end - time.time()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


# ---------------------------------------------------------------------------------------------
# the comparison
# ---------------------------------------------------------------------------------------------

def scorer(model_dir) -> dict:
    """A model directory's dynamic int8 variant with its normalization and threshold."""
    from ..train import Int8Model

    m = models.load(model_dir)
    return {"m8": Int8Model(models.read_variant(m, m.variants["dynamic"])), "mean": m.mean,
            "std": m.std, "threshold": m.threshold}


def rates(sc: dict, unseen: np.ndarray, faults: dict[str, np.ndarray]) -> dict:
    """False alarms on ``unseen`` healthy windows and detection per fault class."""
    from ..train import normalize

    def flags(x):
        s, _ = sc["m8"].errors(normalize(x, sc["mean"], sc["std"]), batch=32)
        return s > sc["threshold"]

    fa = int(flags(unseen).sum())
    det = {c: round(float(flags(x).mean()), 4) for c, x in faults.items()}
    return {"threshold": float(sc["threshold"]), "false_alarms": fa, "unseen": int(len(unseen)),
            "false_alarm_rate": round(fa / len(unseen), 4),
            "detection_mean": round(float(np.mean(list(det.values()))), 4), "detection": det}


def central(nodes: list[dict], epochs: int, seed: int, work: Path) -> dict[str, dict]:
    """One model fine-tuned on all nodes' training windows pooled (each normalized by its
    node), ``epochs`` epochs; per node its threshold calibrated as the federated model's and
    its int8 scorer. Returns node name -> scorer."""
    from ..train import Int8Model, export_dynamic, representative_set
    from . import node as fnode

    nds = {n["name"]: fnode.Node(n["model"], n["reservoir"]) for n in nodes}
    first = next(iter(nds.values()))
    cfg = first.cfg()
    x = np.concatenate([nd.normalized(nd.xtr) for nd in nds.values()])
    m = fnode.keras_model(first)
    fnode.fit(m, x, epochs, cfg.learning_rate / 4, cfg.batch_size, seed)
    out = {}
    for name, nd in nds.items():
        cal = fnode.calibrate(nd, m, seed)
        m8 = Int8Model(export_dynamic(cfg, m, representative_set(cfg, nd.normalized(nd.xtr),
                                                                 seed)))
        out[name] = {"m8": m8, "mean": nd.mean, "std": nd.std, "threshold": cal["threshold"]}
    return out


def fleet_run(nodes, work: Path, model, rounds: int, epochs: int, extra=()) -> dict:
    """One federation (server + clients on localhost); the server's record."""
    f = Fleet(nodes, work, ["--model", str(model), "--rounds", str(rounds), "--epochs",
                            str(epochs), "--no-publish", *extra])
    t = time.time()
    rc, rec, out = f.run(timeout=rounds * 600 + 600)
    rec["exit_code"], rec["total_wall_s"] = rc, round(time.time() - t, 1)
    if rec.get("status") != "done":
        raise RuntimeError(f"fleet run failed ({rc}): {out} {rec.get('status')}")
    return rec


def rounds_summary(rec: dict) -> dict:
    """Bytes and wall time per round of a record."""
    rl = rec["round_log"]
    return {"weights_bytes": rec["weights"]["bytes"], "params": rec["weights"]["params"],
            "bytes_down_per_round": [r["bytes_down"] for r in rl],
            "bytes_up_per_round": [r["bytes_up"] for r in rl],
            "wall_s_per_round": [r["wall_s"] for r in rl],
            "validation_wall_s": rec["validation"]["wall_s"], "run_wall_s": rec["wall_s"],
            "train_loss_per_round": [(r.get("metrics") or {}).get("train-loss") for r in rl],
            "node_train_s_per_round": [(r.get("metrics") or {}).get("seconds") for r in rl]}


def verdicts(rec: dict) -> dict:
    return {v["node"]: {"passed": v["passed"], "reason": v["reason"],
                        "failed": [r["check"] for r in v["rows"] if not r["passed"]]}
            for v in rec["verdicts"]}


def run_case(root: Path, model, rounds: int, epochs: int, seed: int = 0, log=print) -> dict:
    """The whole comparison (module docstring); returns the results document."""
    from .. import retrain as rt

    root = Path(root)
    faults = rt.itsc_fault_windows(64, 16)
    nodes = [make_node(root / "honest", k, reservoir_windows(v), model) for k, v in NODES.items()]
    unseen = {k: unseen_windows(v) for k, v in NODES.items()}
    res: dict = {"nodes": {k: {"recordings": v, "reservoir_windows": len(reservoir_windows(v)),
                               "unseen_windows": len(unseen[k])} for k, v in NODES.items()},
                 "models": {}}
    t = time.time()
    log("shipped model ...")
    res["models"]["shipped"] = {k: rates(scorer(n["model"]), unseen[k], faults)
                                for k, n in zip(NODES, nodes)}
    if Path(str(model)).is_dir() and model != "motor-ae":
        res["models"]["shipped motor-ae (trained on SC_HLT_001-004)"] = {
            k: rates(scorer("motor-ae"), unseen[k], faults) for k in NODES}
    log("federated ...")
    rec = fleet_run(nodes, root / "run-fedavg", nodes[0]["model"], rounds, epochs)
    res["federated_fedavg"] = {"rounds": rounds_summary(rec), "verdicts": verdicts(rec)}
    res["models"]["federated (FedAvg)"] = {
        v["node"]: rates(scorer(v["candidate"]), unseen[v["node"]], faults)
        for v in rec["verdicts"]}
    log("federated with differential privacy ...")
    rec = fleet_run(nodes, root / "run-dp", nodes[0]["model"], rounds, epochs,
                    ["--dp-clip", str(DP[0]), "--dp-noise", str(DP[1])])
    res["federated_dp"] = {"dp_clip": DP[0], "dp_noise": DP[1], "rounds": rounds_summary(rec),
                           "verdicts": verdicts(rec),
                           "models": {v["node"]: rates(scorer(v["candidate"]),
                                                       unseen[v["node"]], faults)
                                      for v in rec["verdicts"]}}
    log("alone ...")
    res["models"]["retrained alone (edgert retrain)"] = {}
    for n in nodes:
        r = rt.retrain(n["model"], n["reservoir"], out=root / f"alone-{n['name']}",
                       epochs=rounds * epochs, seed=seed, log=lambda *a: None)
        res["models"]["retrained alone (edgert retrain)"][n["name"]] = {
            **rates(scorer(r["candidate"]), unseen[n["name"]], faults), "gates_passed": r["passed"]}
    log("central ...")
    res["models"]["central (pooled reservoirs)"] = {
        k: rates(sc, unseen[k], faults) for k, sc in central(nodes, rounds * epochs, seed,
                                                             root).items()}
    log("poisoned ...")
    pnodes = [make_node(root / "poisoned", "a", reservoir_windows(NODES["a"]), model),
              make_node(root / "poisoned", "b", reservoir_windows(NODES["b"]), model),
              make_node(root / "poisoned", "p", poison_windows(), model)]
    for strat in ("fedavg", "trimmed"):
        rec = fleet_run(pnodes, root / f"run-poison-{strat}", pnodes[0]["model"], rounds,
                        epochs, ["--strategy", strat])
        res[f"poisoned_{strat}"] = {
            "rounds": rounds_summary(rec), "verdicts": verdicts(rec),
            "models": {v["node"]: rates(scorer(v["candidate"]), unseen[v["node"]], faults)
                       for v in rec["verdicts"] if v["node"] in ("a", "b")}}
    res["seconds"] = round(time.time() - t, 1)
    res["environment"] = environment()
    return res


def environment() -> dict:
    """Versions and CPU of this run."""
    import platform
    from importlib.metadata import version

    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"python": platform.python_version(), "flwr": version("flwr"),
            "tensorflow": version("tensorflow-cpu") if _has("tensorflow-cpu") else None,
            "cpu": cpu, "cores": os.cpu_count()}


def _has(dist: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(dist)
        return True
    except PackageNotFoundError:
        return False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgert.fleet.case", description=__doc__)
    p.add_argument("--model", default="motor-ae", help="the model the fleet starts from")
    p.add_argument("--work", required=True, help="scratch directory (nodes, runs)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--out", help="write the results JSON here")
    a = p.parse_args(argv)
    res = run_case(Path(a.work), a.model, a.rounds, a.epochs,
                   log=lambda *x: print(*x, file=sys.stderr, flush=True))
    res["command"] = "python -m edgert.fleet.case " + " ".join(argv or sys.argv[1:])
    text = json.dumps(res, indent=1, default=float)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
