"""What one fleet node does with its own data: local fine-tuning and the final validation.

No Flower here (``edgert.fleet.apps`` wraps these functions in a ClientApp), so the same code
runs in the tests and in ``edgert.fleet.case`` without a network. TensorFlow is imported on
first use.

A node's reservoir (``edgert serve --reservoir``) is split, oldest first, into blocks of
consecutive records (``edgert.retrain.split_blocks`` sizes); of every 5 blocks, 3 train, 1
calibrates the threshold and 1 is held back for the validation gates (the same held-back
blocks as ``edgert retrain``'s). The normalization is fitted on the node's training windows
and never leaves the node (like FedBN's local statistics): the federation averages only the
convolution weights, so a node whose phase B runs 7 % low is not pulled towards the others'
amplitudes. The threshold is calibrated on the calibration blocks, which no model of the
federation trained on.

What leaves the node (`train`'s return): the model's weight arrays (same names, shapes and
dtype as the global model received) and three numbers (``num-examples``, ``train-loss``,
``seconds``). `validate_and_publish` returns the verdict rows of ``edgert retrain``'s gates
(counts and rates) and never the windows.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .. import models, reservoir, retrain

ROLES = 5  # of every 5 blocks: 0-2 train, 3 calibration, 4 validation (retrain's held-back)
MIN_WINDOWS = 64


class NodeError(ValueError):
    """Bad node input (model, reservoir, arrays); the message names the file or field."""


def split(n: int, blocks: int = 50) -> dict[str, np.ndarray]:
    """Indices of n records (oldest first): ``train``, ``cal`` and ``val`` (validation: the
    blocks ``edgert.retrain.split_blocks`` holds back, so both commands validate on the same
    windows)."""
    size = max(1, n // blocks)
    role = (np.arange(n) // size) % ROLES
    return {"train": np.flatnonzero(role < 3), "cal": np.flatnonzero(role == 3),
            "val": np.flatnonzero(role == 4)}


class Node:
    """A node's model directory and reservoir, loaded and split (no TensorFlow needed).

    Args:
      model_dir: the model directory the node's daemon serves (its float model is fine-tuned).
      reservoir_dir: the node's reservoir directory (``edgert serve --reservoir``).
      min_windows: fewer reservoir windows than this is an error.
    """

    def __init__(self, model_dir, reservoir_dir, min_windows: int = MIN_WINDOWS):
        self.model = models.load(model_dir)
        if self.model.kind != "autoencoder":
            raise NodeError(f"{self.model.dir}/manifest.json: field 'kind' is "
                            f"{self.model.kind!r}; edgert fleet trains autoencoders")
        self.float_path = retrain.float_model_path(self.model)
        self.reservoir_dir = Path(reservoir_dir)
        res = reservoir.load(reservoir_dir, self.model.name, window=self.model.window,
                             channels=self.model.channels)
        x = res["x"]
        if len(x) < min_windows:
            raise NodeError(f"{reservoir.paths(reservoir_dir, self.model.name)[1]}: {len(x)} "
                            f"windows, at least {min_windows} needed")
        parts = split(len(x))
        self.x = x
        self.sensors = sorted(set(res["sensor"].tolist()))
        self.xtr, self.xcal, self.xval = (x[parts[k]] for k in ("train", "cal", "val"))
        from ..train import fit_normalization

        self.mean, self.std = fit_normalization(self.xtr)

    def cfg(self):
        """The model's AEConfig (from its manifest)."""
        return retrain.ae_config(self.model.manifest)

    def normalized(self, x: np.ndarray) -> np.ndarray:
        from ..train import normalize

        return normalize(x, self.mean, self.std)


def keras_model(node: Node, arrays: list[np.ndarray] | None = None):
    """The node's float Keras model (safe_mode load), with ``arrays`` as its weights when given;
    NodeError when their number, shapes or dtypes differ from the model's."""
    from ..train import load_tf

    tf = load_tf()
    m = tf.keras.models.load_model(node.float_path, compile=False, safe_mode=True)
    if arrays is not None:
        check_arrays(m.get_weights(), arrays, str(node.float_path))
        m.set_weights([np.asarray(a, np.float32) for a in arrays])
    return m


def check_arrays(want: list[np.ndarray], got: list[np.ndarray], where: str) -> None:
    """NodeError unless ``got`` has ``want``'s number of arrays, shapes and float32 dtype and
    only finite values."""
    if len(got) != len(want):
        raise NodeError(f"{where}: received {len(got)} weight arrays, the model has {len(want)}")
    for i, (w, g) in enumerate(zip(want, got)):
        g = np.asarray(g)
        if tuple(g.shape) != tuple(w.shape) or g.dtype != np.float32:
            raise NodeError(f"{where}: weight array {i} is {g.dtype}{list(g.shape)}, the model "
                            f"has float32{list(w.shape)}")
        if not np.all(np.isfinite(g)):
            raise NodeError(f"{where}: weight array {i} holds non-finite values")


def fit(model, xn: np.ndarray, epochs: int, lr: float, batch_size: int, seed: int) -> float:
    """Fits ``model`` on normalized windows ``xn`` (Adam, cosine-decayed ``lr``, MSE); returns
    the last epoch's loss."""
    from ..train import load_tf, set_seed

    tf = load_tf()
    set_seed(seed)
    steps = epochs * int(np.ceil(len(xn) / batch_size))
    sched = tf.keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(steps, 1), alpha=0.02)
    model.compile(optimizer=tf.keras.optimizers.Adam(sched), loss="mse")
    hist = model.fit(xn, xn, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0)
    return float(hist.history["loss"][-1])


def train(node: Node, arrays: list[np.ndarray], epochs: int, lr: float | None = None,
          seed: int = 0) -> tuple[list[np.ndarray], dict]:
    """One round on the node: the global ``arrays`` fine-tuned on the node's training windows.

    Returns (the new weight arrays, float32, same shapes; ``{"num-examples", "train-loss",
    "seconds"}``): all that leaves the node.
    """
    t0 = time.time()
    cfg = node.cfg()
    m = keras_model(node, arrays)
    loss = fit(m, node.normalized(node.xtr), epochs, lr or cfg.learning_rate / 4,
               cfg.batch_size, seed)
    w = [np.asarray(a, np.float32) for a in m.get_weights()]
    return w, {"num-examples": int(len(node.xtr)), "train-loss": loss,
               "seconds": round(time.time() - t0, 2)}


def calibrate(node: Node, model, seed: int = 0) -> dict:
    """Threshold of ``model`` on this node: factor x quantile ('higher') of its int8 scores
    (LiteRT, dynamic variant) on the calibration windows, which no model trained on."""
    from ..train import Int8Model, export_dynamic, quantile_higher, representative_set, round_sig

    cfg = node.cfg()
    m8 = Int8Model(export_dynamic(cfg, model, representative_set(cfg, node.normalized(node.xtr),
                                                                 seed)))
    s, _ = m8.errors(node.normalized(node.xcal), batch=32)
    q = quantile_higher(s, cfg.quantile)
    return {"threshold": round_sig(cfg.factor * q, 6), "quantile_value": round_sig(q, 6),
            "windows": int(len(s)), "quantile": cfg.quantile, "factor": cfg.factor,
            "method": ("edgert fleet: factor x quantile ('higher') of the federated model's "
                       "int8 scores (LiteRT, dynamic variant) on this node's calibration "
                       "blocks (1 of every 5 reservoir blocks, never trained on by any node)")}


def validate_and_publish(node: Node, arrays: list[np.ndarray], publish: bool,
                         tol: float = 0.05, seed: int = 0, out=None, label: str = "",
                         log=lambda *a: None) -> dict:
    """The federated model on this node: threshold calibrated here, int8 export, the gates of
    ``edgert retrain`` (`edgert.retrain.finish`) against the node's running model on its
    held-back windows, published into the node's model directory only when all pass and
    ``publish``. Returns ``finish``'s result plus ``"reason"`` (why it was not published)."""
    m = keras_model(node, arrays)
    cal = calibrate(node, m, seed)
    training = {"command": f"edgert fleet client --model {node.model.dir} --reservoir "
                           f"{node.reservoir_dir}",
                "seed": seed,
                "data": (f"federated ({label}); this node's reservoir {node.reservoir_dir}: "
                         f"{len(node.x)} normal windows (sensors {node.sensors}); only weights "
                         "left the node")}
    metrics = {"train_windows": int(len(node.xtr)), "calibration_windows": int(len(node.xcal))}
    calibration = {k: v for k, v in cal.items() if k != "threshold"}
    res = retrain.finish(node.model, node.cfg(), m, node.mean, node.std, cal["threshold"],
                         calibration, node.xtr, node.xval, training, metrics, out=out,
                         do_publish=publish, seed=seed, tol=tol, log=log)
    failed = [r["check"] for r in res["rows"] if not r["passed"]]
    if res["published"]:
        res["reason"] = f"published generation {res['generation']}"
    elif failed:
        res["reason"] = "kept the running model: failed " + "; ".join(
            f"{r['check']} (current {r['current']}, candidate {r['candidate']}, rule {r['rule']})"
            if r["current"] is not None else f"{r['check']} ({r['candidate']})"
            for r in res["rows"] if not r["passed"])
    else:
        res["reason"] = "passed; not published (publish off)"
    return res
