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
then the federation with the poisoned node under FedAvg and FedTrimmedAvg.
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

    def run(self, timeout: float) -> tuple[int, dict, str]:
        """Starts the server and the clients, waits for the server; returns (its exit code,
        the record, its stdout)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        srv_log = open(self.work / "server.log", "wb")
        srv = subprocess.Popen(self.server_cmd, stdout=subprocess.PIPE, stderr=srv_log,
                               env=env, start_new_session=True)
        self.procs.append(srv)
        for i, cmd in enumerate(self.client_cmds):
            lf = open(self.work / f"client-{self.nodes[i]['name']}.log", "wb")
            self.procs.append(subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT,
                                               env=env, start_new_session=True))
        try:
            out, _ = srv.communicate(timeout=timeout)
        finally:
            self.stop()
        rec = json.loads(self.out.read_text()) if self.out.is_file() else {}
        return srv.returncode, rec, out.decode()

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
