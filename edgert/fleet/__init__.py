"""Federated retraining across a fleet with Flower (``edgert fleet server|client``).

Several boards, each with its own reservoir of normal windows (``edgert serve --reservoir``),
fine-tune one autoencoder together without sending any window away: each round the server
sends the global float weights, each node fine-tunes them on its own windows and sends back
weights and three numbers, the server averages (FedAvg, or a trimmed mean). After the last
round every node validates the final model with ``edgert retrain``'s gates on its own
held-back windows and publishes it into its model directory only if they pass; the server
records each node's verdict. Normalization and threshold stay local to each node.

Modules: `launch` (the commands: SuperLink + run, SuperNode), `apps` (Flower's ServerApp and
ClientApp), `node` (a node's training and validation, no Flower), `case` (the three-node ITSC
comparison written to docs/results). Needs the ``fleet`` extra (flwr, TensorFlow); the parser
below imports neither, and ``edgert serve`` never imports this package.
"""

from __future__ import annotations

import argparse
import json
import sys

HELP = ("federated retraining with Flower: 'server' (SuperLink + FedAvg run) and 'client' "
        "(SuperNode on a node's reservoir) (needs pip install 'edgert[fleet]')")


def add_parsers(subparsers) -> argparse.ArgumentParser:
    """Adds ``fleet server`` and ``fleet client`` to the ``edgert`` sub-commands."""
    p = subparsers.add_parser("fleet", help=HELP, description=(__doc__ or "").split("\n")[0])
    sub = p.add_subparsers(dest="fleet_cmd", required=True)

    s = sub.add_parser("server", help="run a SuperLink and one federated retraining run")
    s.add_argument("--model", required=True, help="model directory whose float weights start "
                                                  "the federation (the shipped one)")
    s.add_argument("--nodes", type=int, default=3, help="nodes to wait for and train with")
    s.add_argument("--rounds", type=int, default=5, help="federated rounds")
    s.add_argument("--epochs", type=int, default=4, help="local epochs per round")
    s.add_argument("--lr", type=float, default=None,
                   help="local learning rate (default: the model's training rate / 4)")
    s.add_argument("--strategy", choices=("fedavg", "trimmed"), default="fedavg",
                   help="aggregation: FedAvg or FedTrimmedAvg (coordinate-wise trimmed mean)")
    s.add_argument("--trim", type=float, default=0.34,
                   help="FedTrimmedAvg: fraction cut at each end (0.34 of 3 nodes: the median)")
    s.add_argument("--dp-clip", type=float, default=0.0, metavar="NORM",
                   help="differential privacy: clip each node's update to this L2 norm on the "
                        "node and add Gaussian noise on the server (Flower's "
                        "DifferentialPrivacyClientSideFixedClipping); 0: off")
    s.add_argument("--dp-noise", type=float, default=1.0, metavar="MULT",
                   help="noise multiplier with --dp-clip")
    s.add_argument("--no-publish", action="store_true",
                   help="nodes validate the final model but do not publish it")
    s.add_argument("--tolerance", type=float, default=0.05,
                   help="allowed drop of a fault detection rate in the nodes' gates")
    s.add_argument("--seed", type=int, default=0, help="random seed of the nodes' fine-tuning")
    s.add_argument("--out", help="write the run's record (rounds, bytes, verdicts) as JSON here")
    s.add_argument("--listen", default="0.0.0.0", help="address of the Fleet API (the nodes')")
    s.add_argument("--host", default="127.0.0.1",
                   help="address of the local APIs (ServerAppIo, Control)")
    s.add_argument("--fleet-port", type=int, default=9092, help="Fleet API port (gRPC; the nodes dial it)")
    s.add_argument("--serverappio-port", type=int, default=9091,
                   help="ServerAppIo API port (local: SuperLink <-> ServerApp)")
    s.add_argument("--control-port", type=int, default=9093,
                   help="Control API port (local: flwr run submits the run here)")
    s.add_argument("--insecure", action="store_true", help="no TLS (one machine, closed network)")
    s.add_argument("--ca", help="TLS: CA certificate (PEM)")
    s.add_argument("--cert", help="TLS: server certificate (PEM; its SAN names the address the "
                                  "nodes dial)")
    s.add_argument("--key", help="TLS: server private key (PEM)")
    s.add_argument("--wait-nodes", type=float, default=120.0,
                   help="seconds to wait for --nodes nodes")
    s.add_argument("--timeout", type=float, default=900.0, help="seconds per round at most")
    s.add_argument("--json", action="store_true", help="print the record as JSON")
    s.set_defaults(fn=cmd_server)

    c = sub.add_parser("client", help="run a SuperNode training on this node's reservoir")
    c.add_argument("--reservoir", required=True, metavar="DIR",
                   help="this node's reservoir (edgert serve --reservoir DIR)")
    c.add_argument("--model", required=True, metavar="DIR",
                   help="this node's model directory (validated into, published into)")
    c.add_argument("--superlink", default="127.0.0.1:9092", help="the server's Fleet API host:port")
    c.add_argument("--name", default=None, help="this node's name in the server's record "
                                                "(default: the model directory's name)")
    c.add_argument("--clientappio-port", type=int, default=9094,
                   help="local port between the SuperNode and its ClientApp processes")
    c.add_argument("--insecure", action="store_true", help="no TLS")
    c.add_argument("--root-certificates", metavar="PEM", help="TLS: the CA certificate")
    c.set_defaults(fn=cmd_client)
    return p


def _fail(exc) -> int:
    print(f"edgert fleet: {exc}", file=sys.stderr)
    return 2


def cmd_server(args) -> int:
    from . import launch

    try:
        launch.require_flower()
        rec = launch.run_server(args, log=lambda *a: print(*a, file=sys.stderr, flush=True))
    except (ImportError, ValueError, FileNotFoundError) as exc:
        return _fail(exc)
    print(launch.summary(rec))
    if args.json:
        print(json.dumps(rec, default=float))
    if rec.get("status") != "done":
        print(f"edgert fleet: run {rec.get('status')}", file=sys.stderr)
        return 2
    return 0 if all(v["passed"] for v in rec.get("verdicts", [])) else 1


def cmd_client(args) -> int:
    from . import launch

    try:
        launch.require_flower()
        return launch.run_client(args)
    except (ImportError, ValueError, FileNotFoundError, OSError) as exc:
        return _fail(exc)
