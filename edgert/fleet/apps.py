"""The Flower ServerApp and ClientApp of ``edgert fleet`` (needs ``flwr`` and TensorFlow).

Run by Flower's deployment engine: ``edgert fleet server`` starts a SuperLink and submits a
run (``flwr run``) of a small generated Flower App whose components are ``server`` and
``client`` below; every ``edgert fleet client`` is a SuperNode whose node config names its
model and reservoir directories (``model=… reservoir=… name=…``).

Server (``server``): the shipped float model's weights (its ``--model`` directory) go out;
each round the sampled nodes fine-tune them on their own reservoir (`edgert.fleet.node.train`)
and send back weights, which the strategy aggregates (``fedavg``: FedAvg weighted by training
windows; ``trimmed``: FedTrimmedAvg; with ``dp-clip`` > 0, wrapped in Flower's
DifferentialPrivacyClientSideFixedClipping, the nodes clip their update with
``fixedclipping_mod`` and the server adds Gaussian noise). After the last round every node
receives the final weights in an ``evaluate`` message and validates them with ``edgert
retrain``'s gates (`edgert.fleet.node.validate_and_publish`); the server records its verdict.

What the server records (the run config's ``out`` file, JSON): per round the wall time,
the payload bytes sent and received (the serialized weight arrays of the messages), and for
every reply the names of its records, the arrays' shapes and the metric names: the evidence
that only weights and aggregate numbers travelled; then each node's verdict.
"""

from __future__ import annotations

import json
import os
import time
import traceback

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.common.constant import MessageType
from flwr.common.differential_privacy_constants import KEY_CLIPPING_NORM
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp import strategy as strategies

from . import node as fleet_node

# ---------------------------------------------------------------------------------------------
# client
# ---------------------------------------------------------------------------------------------


def _node(context: Context) -> "fleet_node.Node":
    cfg = context.node_config
    for key in ("model", "reservoir"):
        if not isinstance(cfg.get(key), str) or not cfg.get(key):
            raise fleet_node.NodeError(f"node config: field {key!r} missing (flower-supernode "
                                       f"--node-config 'model=\"DIR\" reservoir=\"DIR\"')")
    return fleet_node.Node(cfg["model"], cfg["reservoir"])


def optional_clipping(msg: Message, ctxt: Context, call_next) -> Message:
    """Flower's ``fixedclipping_mod`` when the server asks for clipping (its DP wrapper puts the
    clipping norm in the train config), else nothing: one ClientApp serves both kinds of run."""
    conf = next(iter(msg.content.config_records.values()), None)
    if (msg.metadata.message_type == MessageType.TRAIN and conf is not None
            and KEY_CLIPPING_NORM in conf):
        return fixedclipping_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


client = ClientApp(mods=[optional_clipping])


@client.train()
def client_train(msg: Message, context: Context) -> Message:
    """Fine-tunes the received weights on this node's reservoir; replies with weights and
    three numbers only."""
    conf = msg.content["config"]
    nd = _node(context)
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    w, metrics = fleet_node.train(nd, arrays, epochs=int(conf["epochs"]),
                                  lr=float(conf["lr"]) or None, seed=int(conf["seed"]))
    return Message(content=RecordDict({"arrays": ArrayRecord(w),
                                       "metrics": MetricRecord(metrics)}), reply_to=msg)


@client.evaluate()
def client_validate(msg: Message, context: Context) -> Message:
    """The final model validated here with ``edgert retrain``'s gates and published when they
    pass (and the server asks to publish); replies with the verdict (counts, rates, reasons)."""
    conf = msg.content["config"]
    name = str(context.node_config.get("name", ""))
    try:
        nd = _node(context)
        res = fleet_node.validate_and_publish(
            nd, msg.content["arrays"].to_numpy_ndarrays(), publish=bool(conf["publish"]),
            tol=float(conf["tolerance"]), seed=int(conf["seed"]), label=str(conf["label"]))
        metrics = {"passed": int(res["passed"]), "published": int(res["published"]),
                   "threshold": float(res["threshold"]), "val-windows": int(len(nd.xval)),
                   "num-examples": int(len(nd.xval))}
        # the candidate's local path (not data): where a refused model can be inspected
        verdict = {"node": name, "reason": res["reason"], "candidate": res["candidate"],
                   "rows": json.dumps(res["rows"], default=float)}
    except Exception as exc:  # a node that cannot validate keeps its model and says why
        metrics = {"passed": 0, "published": 0, "num-examples": 0}
        verdict = {"node": name, "reason": f"kept the running model: {exc}", "rows": "[]",
                   "traceback": traceback.format_exc()[-2000:]}
    return Message(content=RecordDict({"metrics": MetricRecord(metrics),
                                       "verdict": ConfigRecord(verdict)}), reply_to=msg)


# ---------------------------------------------------------------------------------------------
# server
# ---------------------------------------------------------------------------------------------


def payload_bytes(rec: ArrayRecord) -> int:
    """Bytes of an ArrayRecord's serialized arrays (what a message carries besides framing)."""
    return int(sum(len(a.data) for a in rec.values()))


def describe(msg: Message) -> dict:
    """What a reply carried: its records by kind, array shapes and dtypes, metric names."""
    if msg.has_error():
        return {"node_id": msg.metadata.src_node_id, "error": str(msg.error.reason)}
    c = msg.content
    return {"node_id": msg.metadata.src_node_id,
            "array_records": {k: [[n, list(a.shape), a.dtype] for n, a in r.items()]
                              for k, r in c.array_records.items()},
            "array_bytes": sum(payload_bytes(r) for r in c.array_records.values()),
            "metric_records": {k: sorted(r.keys()) for k, r in c.metric_records.items()},
            "config_records": {k: sorted(r.keys()) for k, r in c.config_records.items()}}


def recording(base: type) -> type:
    """A subclass of strategy class ``base`` that records each round's wall time, payload
    bytes and what every reply carried (``self.log``)."""

    class Recording(base):
        log: list

        def configure_train(self, server_round, arrays, config, grid):
            msgs = list(super().configure_train(server_round, arrays, config, grid))
            self.log.append({"round": server_round, "t0": time.time(), "nodes": len(msgs),
                             "bytes_down": payload_bytes(arrays) * len(msgs)})
            return msgs

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            r = self.log[-1]
            r["replies"] = [describe(m) for m in replies]  # first: an aggregator may consume them
            out = super().aggregate_train(server_round, replies)
            r["bytes_up"] = sum(d.get("array_bytes", 0) for d in r["replies"])
            r["wall_s"] = round(time.time() - r.pop("t0"), 3)
            if out[1] is not None:
                r["metrics"] = dict(out[1])
            return out

    Recording.__name__ = f"Recording{base.__name__}"
    return Recording


def make_strategy(rc, n_nodes: int):
    """The strategy the run config names; returns (strategy, the recording inner strategy)."""
    kind = str(rc.get("strategy", "fedavg"))
    common = dict(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n_nodes,
                  min_available_nodes=n_nodes)
    if kind == "fedavg":
        inner = recording(strategies.FedAvg)(**common)
    elif kind == "trimmed":
        inner = recording(strategies.FedTrimmedAvg)(beta=float(rc.get("trim", 0.34)), **common)
    else:
        raise ValueError(f"run config: field 'strategy' is {kind!r} (fedavg or trimmed)")
    inner.log = []
    clip = float(rc.get("dp-clip", 0.0))
    if clip > 0:
        outer = strategies.DifferentialPrivacyClientSideFixedClipping(
            inner, noise_multiplier=float(rc.get("dp-noise", 1.0)), clipping_norm=clip,
            num_sampled_clients=n_nodes)
        return outer, inner
    return inner, inner


def _initial_arrays(model_dir: str) -> ArrayRecord:
    from .. import models, retrain
    from ..train import load_tf

    path = retrain.float_model_path(models.load(model_dir))
    m = load_tf().keras.models.load_model(path, compile=False, safe_mode=True)
    return ArrayRecord([np.asarray(a, np.float32) for a in m.get_weights()])


def _wait_nodes(grid: Grid, n: int, timeout: float) -> list[int]:
    end = time.time() + timeout
    while True:
        ids = sorted(grid.get_node_ids())
        if len(ids) >= n or time.time() > end:
            return ids
        time.sleep(0.5)


def _write(path: str, rec: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(rec, f, indent=1, default=float)
    os.replace(tmp, path)


server = ServerApp()


@server.main()
def server_main(grid: Grid, context: Context) -> None:
    """Rounds of the chosen strategy, then every node's validation verdict (module docstring)."""
    rc = context.run_config
    out = str(rc["out"])
    n = int(rc["nodes"])
    rec = {"strategy": str(rc.get("strategy", "fedavg")), "rounds": int(rc["rounds"]),
           "epochs": int(rc["epochs"]), "nodes_expected": n, "dp_clip": float(rc.get("dp-clip", 0)),
           "dp_noise": float(rc.get("dp-noise", 0)), "status": "running"}
    t0 = time.time()
    try:
        ids = _wait_nodes(grid, n, float(rc.get("wait-nodes", 120)))
        if len(ids) < n:
            raise RuntimeError(f"{len(ids)} of {n} nodes connected within the wait")
        strat, inner = make_strategy(rc, n)
        arrays = _initial_arrays(str(rc["model"]))
        rec["weights"] = {"arrays": len(arrays), "bytes": payload_bytes(arrays),
                          "shapes": [list(a.shape) for a in arrays.to_numpy_ndarrays()],
                          "params": int(sum(a.size for a in arrays.to_numpy_ndarrays()))}
        train_cfg = ConfigRecord({"epochs": int(rc["epochs"]), "lr": float(rc.get("lr", 0.0)),
                                  "seed": int(rc.get("seed", 0))})
        result = strat.start(grid=grid, initial_arrays=arrays, num_rounds=int(rc["rounds"]),
                             train_config=train_cfg, timeout=float(rc.get("round-timeout", 900)))
        rec["round_log"] = inner.log
        # the final model to every node, for its own validation
        conf = ConfigRecord({"publish": bool(rc.get("publish", True)),
                             "tolerance": float(rc.get("tolerance", 0.05)),
                             "seed": int(rc.get("seed", 0)),
                             "label": f"{rec['strategy']}, {rec['rounds']} rounds x "
                                      f"{rec['epochs']} epochs, {n} nodes"})
        msgs = [Message(content=RecordDict({"arrays": result.arrays, "config": conf}),
                        dst_node_id=nid, message_type=MessageType.EVALUATE) for nid in ids]
        t1 = time.time()
        replies = list(grid.send_and_receive(msgs, timeout=float(rc.get("round-timeout", 900))))
        rec["validation"] = {"wall_s": round(time.time() - t1, 3),
                             "bytes_down": payload_bytes(result.arrays) * len(msgs),
                             "replies": [describe(m) for m in replies]}
        verdicts = []
        for m in replies:
            if m.has_error():
                verdicts.append({"node_id": m.metadata.src_node_id, "passed": False,
                                 "published": False, "reason": f"error: {m.error.reason}"})
                continue
            v, met = m.content["verdict"], m.content["metrics"]
            verdicts.append({"node_id": m.metadata.src_node_id, "node": v["node"],
                             "passed": bool(met["passed"]), "published": bool(met["published"]),
                             "threshold": met.get("threshold"), "reason": v["reason"],
                             "rows": json.loads(v["rows"]), "candidate": v.get("candidate"),
                             **({"traceback": v["traceback"]} if "traceback" in v else {})})
        rec["verdicts"] = sorted(verdicts, key=lambda d: str(d.get("node", "")))
        rec["status"] = "done"
    except Exception as exc:
        rec["status"] = f"failed: {exc}"
        rec["traceback"] = traceback.format_exc()[-3000:]
    rec["wall_s"] = round(time.time() - t0, 2)
    _write(out, rec)
