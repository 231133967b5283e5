"""``edgert bench --peers``: edgert side by side with what users would pick instead.

Same labelled streams, same machine, one run. For edgert and every peer: windows/s, per-call
and per-window p99 latency, and detection quality (F1, false-alarm rate FAR, missed-alarm
rate MAR) on the same windows.

Datasets:

* ``itsc`` (shipped, MIT): motor current, 3 channels, the windows (W 64, hop 16) of the
  held-out healthy recording (normal) and of every fault recording (anomalous), one label
  per window. Everything is fitted on the training recordings of ``motor-ae``'s manifest.
* ``skab`` (``../shared/data/SKAB`` or ``--skab-data``; GPL-3.0, read in place): every
  labelled file, SKAB's protocol (`edgert.evaluate.skab`: each file's first 400 rows fit a
  fresh model, the rest is its test part), window 60, hop 1, scored point-wise with the
  streaming (causal) mapping (a point takes the decision of the window ending at it).
  edgert's side is ``edgert eval skab``'s default method (``edgeae``), which trains per file:
  this part needs TensorFlow.

Who (``--only`` keys):

* ``edgert``: the int8 model on the runtime path, through the pipeline's scoring core
  (`edgert.runtime.Runner`: ``kernels.normalize_quantize`` from a mirrored ring, ``edgert.backends``
  cpu = LiteRT/XNNPACK, ``ReconstructionScorer``'s ``kernels.recon_error``), threshold; batch 32.
* ``river``: River ``HalfSpaceTrees`` (River's default trees, height and window size; limits
  from the training features) inside its ``QuantileFilter`` (q = ``--quantile``), on
  per-window features (per channel: mean, std, rms, peak, crest, kurtosis from
  ``kernels.window_stats``), learning online (score, classify, learn, one window per call:
  River has no batch API for it); fitted on the training windows in a seeded shuffled order
  (its reference mass is its last 250 windows), then the filter's quantile on their scores.
* ``iforest``, ``ecod``: PyOD detectors fitted on the training windows' features, applied per
  batch of 32 with their own threshold (``contamination`` = 1 - ``--quantile``).
* ``onnxruntime``, ``tensorflow``: the same autoencoder as edgert in float (the Keras model
  whose int8 conversion edgert runs; ONNX by tf2onnx), numpy normalization and error, batch
  32, thresholded like edgert (ITSC: the manifest's threshold, calibrated leave-one-recording-
  out on int8 scores, which track the float ones (manifest fidelity); SKAB: edgeae's
  per-channel references from this model's own training-window errors).
* ``tflite-runtime``: edgert's int8 model under tflite-runtime (ITSC only). Its wheels need
  numpy < 2, so it usually runs in another venv: ``--tflite-python PATH``
  (`bench/_tflite_worker.py`); otherwise it is reported as not installed.
* ``naive`` (ITSC only): not a model path but whole services on a ZeroMQ stream: edgert's
  daemon against the plain Python service a user would write instead (`naive_service.py`,
  LiteRT int8 / ONNX Runtime float / tflite-runtime int8), interleaved rounds of
  `bench.naive.compare` → windows per CPU-second, p99 receipt → decision, decisions on the
  labelled stream. Its own table (``itsc.services``).

The detector rows time the model path only (windows already in memory: no receipt, decoding,
windowing or events), so edgert's row there runs several times the windows/s of its daemon;
and a speed ratio against a detector that detects little (River's HalfSpaceTrees here, F1 ≈
0.015) says nothing. The tables say both under the rows (`peers_table`).

Fairness: one thread each (LiteRT, ORT intra/inter 1, TF intra/inter 1, BLAS via
threadpoolctl, IForest n_jobs 1); fitting, conversion and the first (warm-up) call are not
timed; the samples are in memory (a ring per recording, filled untimed) and every peer takes
its input from there. A call covers the peer's whole per-window work: feature or input
extraction, inference, score and decision. After one untimed quality pass, the peers run
``--rounds`` timed passes over the stream in turn (round-robin, so machine noise hits all
alike); windows/s = windows / time summed over the rounds; ``p99_call_us`` is the 99th
percentile of one call's time (a window waits for its whole batch), ``p99_window_us`` that of
call time / windows in the call.

Output: a table, the JSON (``--out``, default ``bench/results/peers-<timestamp>.json``),
``--markdown`` prints the README table; ``--render FILE.json`` renders a saved result only.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import sysinfo
from .peers_table import render, render_markdown, weak
from .quality import pooled, quality  # noqa: F401  (re-exported: peers.quality)
from .jsonsafe import clean as _clean

SCHEMA = 1
PEERS = ("edgert", "river", "iforest", "ecod", "onnxruntime", "tensorflow", "tflite-runtime", "naive")
DATASETS = ("itsc", "skab")
TARGETS = {"over_river": 50.0, "over_onnxruntime": 5.0}
FEATURES = ("mean", "std", "rms", "peak", "crest", "kurtosis")  # kernels.window_stats order
VERSIONS = ("numpy", "ai-edge-litert", "river", "pyod", "scikit-learn", "onnxruntime", "onnx",
            "tf2onnx", "tensorflow-cpu", "tensorflow", "keras", "numba")


@dataclass
class Settings:
    datasets: tuple = DATASETS
    only: tuple = PEERS
    batch: int = 32
    rounds: int = 5
    quantile: float = 0.999
    skab_data: str | None = None
    skab_files: int | None = None
    float_model: str | None = None
    tflite_python: str | None = None
    model: str = "motor-ae"
    onnx_cache: str | None = None
    notes: list = field(default_factory=list)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# quality
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# streams
# ---------------------------------------------------------------------------------------------

@dataclass
class Segment:
    """One recording in a mirrored ring (as the daemon holds it) and the windows cut from it."""
    name: str
    ring: np.ndarray      # float32 [2 * cap, C]
    cap: int
    starts: np.ndarray    # int64 window starts
    y: np.ndarray | None = None  # per-window labels (1 = anomalous), when known per window


def segment(name: str, x: np.ndarray, window: int, hop: int, label: int | None = None) -> Segment:
    """``x`` [n, C] appended to a mirrored ring; windows at 0, hop, 2 hop, ..."""
    from edgert.runtime import ring_of

    x = np.ascontiguousarray(x, np.float32)
    n = len(x)
    if x.ndim != 2 or n < window:
        raise ValueError(f"{name}: shape {x.shape}: need [n >= {window}, C]")
    ring, _ = ring_of(x)
    starts = np.arange(0, n - window + 1, hop, dtype=np.int64)
    y = None if label is None else np.full(len(starts), label, np.int8)
    return Segment(name, ring, n, starts, y)


def batches(segs: list[Segment], size: int) -> list[tuple]:
    """(ring, cap, starts) calls of up to ``size`` windows, never across recordings."""
    return [(s.ring, s.cap, s.starts[i:i + size]) for s in segs
            for i in range(0, len(s.starts), size)]


def cut(ring: np.ndarray, cap: int, starts: np.ndarray, window: int) -> np.ndarray:
    """float32 [k, W, C] copies of the windows (the ring is mirrored: never wraps)."""
    idx = (starts % cap)[:, None] + np.arange(window)[None, :]
    return ring[idx]


# ---------------------------------------------------------------------------------------------
# decision rules shared by the autoencoders (int8 and float)
# ---------------------------------------------------------------------------------------------

class FixedRule:
    """ITSC: window score = mean over channels of the per-channel MSE; alarm above ``threshold``
    (edgert's ReconstructionScorer + FixedThreshold)."""
    tail = None

    def __init__(self, threshold: float):
        self.threshold = float(threshold)

    def calibrate(self, full: np.ndarray, tail) -> None:
        pass

    def decide(self, full: np.ndarray, tail, scores=None) -> np.ndarray:
        s = full.mean(axis=1) if scores is None else scores
        return s > self.threshold

    def info(self) -> dict:
        return {"rule": "score > manifest threshold", "threshold": self.threshold}


class TailRatioRule:
    """SKAB, ``edgert eval skab``'s edgeae streaming decision: per scored channel, the MSE
    over the window's newest ``tail`` rows divided by its ``q`` quantile on the training
    windows; alarm when the largest ratio exceeds ``factor``."""

    def __init__(self, scored: list[int], q: float, factor: float, tail: int):
        self.scored, self.q, self.factor, self.tail = list(scored), q, factor, tail
        self.ref = None

    def calibrate(self, full: np.ndarray, tail: np.ndarray) -> None:
        ref = np.quantile(tail[:, self.scored].astype(np.float64), self.q, axis=0)
        self.ref = np.where(ref > 0, ref, np.finfo(np.float64).tiny)

    def decide(self, full, tail, scores=None) -> np.ndarray:
        return (tail[:, self.scored] / self.ref).max(axis=1) > self.factor

    def info(self) -> dict:
        return {"rule": f"max over scored channels of tail({self.tail}) MSE / its "
                        f"{self.q} training quantile > {self.factor:.4g}",
                "scored_channels": self.scored}


def float_errors(x: np.ndarray, y: np.ndarray, tail: int | None):
    """Per-channel MSE [k, C] over the window and over its newest ``tail`` rows."""
    sq = (x - y) ** 2
    return sq.mean(axis=(1, 2)), (sq[:, 0, -tail:].mean(axis=1) if tail else None)


# ---------------------------------------------------------------------------------------------
# the contenders
# ---------------------------------------------------------------------------------------------

@dataclass
class Task:
    """What one fitted detector sees: training windows, the stream, the autoencoder."""
    name: str
    window: int
    train: list[Segment]
    test: list[Segment]
    model_dir: Path | None = None     # edgert int8 model directory
    keras: object = None              # the float Keras model (before quantization)
    keras_path: str | None = None
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    rule: object = None               # FixedRule / TailRatioRule (copied per peer)
    workdir: Path | None = None
    onnx_cache: Path | None = None


class Peer:
    key = ""
    label = ""
    batch = 32
    modules: tuple = ()

    def __init__(self, settings: Settings):
        self.settings = settings
        self.details: dict = {}

    @classmethod
    def missing(cls) -> str | None:
        """Why this peer can't run here (a module not installed), or None."""
        for m in cls.modules:
            try:
                if importlib.util.find_spec(m) is None:
                    return f"{m} not installed (pip install 'edgert[bench]')"
            except (ImportError, ValueError) as exc:
                return f"{m}: {exc}"
        return None

    def fit(self, task: Task) -> None:
        """Everything before the stream (not timed)."""

    def process(self, ring, cap, starts) -> np.ndarray:
        """Decisions (bool [k]) for the windows at ``starts``."""
        raise NotImplementedError

    def warm(self, task: Task) -> None:
        """One untimed call on a training batch (first-call costs: JIT, allocation, tracing)."""
        b = batches(task.train[:1], self.batch)[0]
        self.process(*b)


class EdgertPeer(Peer):
    key, label = "edgert", "edgert (int8, LiteRT)"

    def fit(self, task: Task) -> None:
        from edgert.runtime import Runner

        self.rule = copy.deepcopy(task.rule)
        # the pipeline's scoring core: normalize+quantize, LiteRT invoke, recon_error
        self.runner = Runner(task.model_dir, "cpu", max_batch=self.batch, num_threads=1,
                             tail=getattr(self.rule, "tail", None) or None)
        self.details = {"backend": self.runner.name, "batch": self.batch, "threads": 1,
                        "model": str(task.model_dir), **self.rule.info()}
        if getattr(self.rule, "tail", None):  # calibrate on the training windows' errors
            fulls, tails = [], []
            for b in batches(task.train, self.batch):
                f, t, _ = self._errors(*b)
                fulls.append(f.copy()), tails.append(t.copy())
            self.rule.calibrate(np.concatenate(fulls), np.concatenate(tails))

    def _errors(self, ring, cap, starts):
        r = self.runner.score_windows(ring, cap, starts)
        return r.ch_err, r.tail_err, r.scores

    def process(self, ring, cap, starts):
        full, tail, scores = self._errors(ring, cap, starts)
        return self.rule.decide(full, tail, scores if tail is None else None)


class FeaturePeer(Peer):
    """Peers on per-window features: per channel the six ``kernels.window_stats`` values."""

    def _features(self, ring, cap, starts) -> np.ndarray:
        k = len(starts)
        if self._st.shape[0] < k:
            self._st = np.zeros((k, self._st.shape[1], len(FEATURES)), np.float32)
        self.K.window_stats(ring, cap, starts, self.W, self._st)
        return self._st[:k].reshape(k, -1)

    def _train_features(self, task: Task) -> np.ndarray:
        from edgert import kernels

        self.K, self.W = kernels, task.window
        self._st = np.zeros((self.batch, task.train[0].ring.shape[1], len(FEATURES)), np.float32)
        return np.concatenate([self._features(*b).copy() for b in batches(task.train, 256)])


class RiverPeer(FeaturePeer):
    key, label, batch, modules = "river", "River HalfSpaceTrees + QuantileFilter", 1, ("river",)

    def fit(self, task: Task) -> None:
        from river import anomaly

        X = self._train_features(task)
        C = task.train[0].ring.shape[1]
        self.names = [f"c{c}_{f}" for c in range(C) for f in FEATURES]
        lo, hi = X.min(axis=0).astype(np.float64), X.max(axis=0).astype(np.float64)
        pad = np.maximum(hi - lo, 1e-9) * 0.1
        limits = {n: (float(a - p), float(b + p)) for n, a, b, p in zip(self.names, lo, hi, pad)}
        hst = anomaly.HalfSpaceTrees(n_trees=10, height=8, window_size=250, limits=limits, seed=0)
        self.qf = anomaly.QuantileFilter(hst, q=self.settings.quantile)
        # HST's reference mass is its last `window_size` windows: shuffled (seeded), they are a
        # sample of every training recording instead of the end of the last one
        X = X[np.random.default_rng(0).permutation(len(X))]
        rows = [dict(zip(self.names, r.tolist())) for r in X]
        for r in rows:  # the trees learn the training windows ...
            hst.learn_one(r)
        for r in rows:  # ... then the filter's quantile learns their scores
            self.qf.quantile.update(hst.score_one(r))
        self.details = {"batch": 1, "features": len(self.names), "train_windows": len(rows),
                        "n_trees": 10, "height": 8, "window_size": 250, "params": "River's defaults",
                        "q": self.settings.quantile,
                        "online": "score_one, classify, learn_one per window (protects the "
                                  "trees from windows it flags)"}

    def process(self, ring, cap, starts):
        X = self._features(ring, cap, starts)
        out = np.empty(len(starts), bool)
        qf, names = self.qf, self.names
        for i, r in enumerate(X.tolist()):
            x = dict(zip(names, r))
            out[i] = qf.classify(qf.score_one(x))
            qf.learn_one(x)
        return out


class PyodPeer(FeaturePeer):
    modules = ("pyod", "sklearn")
    make = None

    def fit(self, task: Task) -> None:
        X = self._train_features(task)
        self.det = self.make(contamination=1.0 - self.settings.quantile)
        self.det.fit(X)
        self.thr = float(self.det.threshold_)
        self.details = {"batch": self.batch, "features": X.shape[1], "train_windows": len(X),
                        "contamination": round(1.0 - self.settings.quantile, 6),
                        "threshold": self.thr}

    def process(self, ring, cap, starts):
        return self.det.decision_function(self._features(ring, cap, starts)) > self.thr


class IForestPeer(PyodPeer):
    key, label = "iforest", "PyOD IForest"

    @staticmethod
    def make(contamination):
        from pyod.models.iforest import IForest

        return IForest(contamination=contamination, random_state=0, n_jobs=1)


class EcodPeer(PyodPeer):
    key, label = "ecod", "PyOD ECOD"

    @staticmethod
    def make(contamination):
        from pyod.models.ecod import ECOD

        return ECOD(contamination=contamination, n_jobs=1)


class FloatAEPeer(Peer):
    """The autoencoder in float: numpy normalization -> runtime -> numpy error -> rule."""
    runtime = ""

    def fit(self, task: Task) -> None:
        if task.keras is None:
            raise RuntimeError(f"no float Keras model for {task.name} (pass --float-model)")
        self.W = task.window
        self.mean = np.asarray(task.mean, np.float32)
        self.inv_std = (1.0 / np.asarray(task.std, np.float64)).astype(np.float32)
        self.rule = copy.deepcopy(task.rule)
        self._load(task)
        self.details.update({"batch": self.batch, "threads": 1, **self.rule.info()})
        if getattr(self.rule, "tail", None):
            fulls, tails = [], []
            for b in batches(task.train, self.batch):
                f, t = self._errors(*b)
                fulls.append(f), tails.append(t)
            self.rule.calibrate(np.concatenate(fulls), np.concatenate(tails))

    def _errors(self, ring, cap, starts):
        x = ((cut(ring, cap, starts, self.W) - self.mean) * self.inv_std)[:, None]
        return float_errors(x, self._run(x), self.rule.tail)

    def process(self, ring, cap, starts):
        full, tail = self._errors(ring, cap, starts)
        return self.rule.decide(full, tail)


def _tf():
    """TensorFlow with one intra-op and one inter-op thread (set before its first op)."""
    from edgert.train import load_tf as edgert_tf

    tf = edgert_tf()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialized: it keeps the settings it has
        pass
    return tf


class TensorflowPeer(FloatAEPeer):
    key, label, modules, runtime = "tensorflow", "TensorFlow float", ("tensorflow",), "tensorflow"

    def _load(self, task: Task) -> None:
        tf = _tf()
        m = task.keras
        W, C = task.window, len(self.mean)
        fn = tf.function(lambda x: m(x, training=False), reduce_retracing=True, autograph=False,
                         input_signature=[tf.TensorSpec([None, 1, W, C], tf.float32)])
        self._fn = fn
        self.details = {"how": "tf.function(model) on [k, 1, W, C], eager numpy in/out",
                        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
                        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
                        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS")}

    def _run(self, x):
        return self._fn(x).numpy()


class OnnxPeer(FloatAEPeer):
    key, label, modules, runtime = ("onnxruntime", "ONNX Runtime float", ("onnxruntime", "onnx",
                                    "tf2onnx", "tensorflow"), "onnxruntime")

    def _load(self, task: Task) -> None:
        import onnxruntime as ort

        path, conv = to_onnx(task, self.settings)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.inp = self.sess.get_inputs()[0].name
        # the conversion must be faithful: compare with Keras on the training windows
        r, c, st = batches(task.train, self.batch)[0]
        x = ((cut(r, c, st, task.window) - self.mean) * self.inv_std)[:, None]
        ref = np.asarray(task.keras(x, training=False))
        diff = float(np.abs(self._run(x) - ref).max())
        if not diff < 1e-3:
            raise RuntimeError(f"ONNX conversion of {task.name} differs from Keras by {diff:g}")
        self.details = {"onnx": str(path), **conv, "max_abs_diff_vs_keras": diff,
                        "intra_op_threads": 1, "inter_op_threads": 1}

    def _run(self, x):
        return self.sess.run(None, {self.inp: x})[0]


def to_onnx(task: Task, settings: Settings) -> tuple[Path, dict]:
    """ONNX file of ``task.keras`` (tf2onnx, opset 17). Cached by the Keras file's sha256 when
    the model came from a file, else written to the task's work directory."""
    import hashlib

    tf = _tf()
    import tf2onnx

    if task.keras_path:
        h = hashlib.sha256(Path(task.keras_path).read_bytes()).hexdigest()[:16]
        cache = task.onnx_cache or Path(settings.onnx_cache or
                                        Path.home() / ".cache" / "edgert" / "peers")
        cache.mkdir(parents=True, exist_ok=True)
        path = cache / f"{Path(task.keras_path).stem}-{h}.onnx"
    else:
        path = task.workdir / f"{task.name.replace('/', '_')}.onnx"
    info = {"converter": f"tf2onnx {tf2onnx.__version__}, opset 17", "cached": path.is_file()}
    if not path.is_file():
        W, C = task.window, len(task.mean)
        spec = (tf.TensorSpec((None, 1, W, C), tf.float32, name="x"),)
        t0 = time.perf_counter()
        tmp = path.with_suffix(".tmp")
        tf2onnx.convert.from_keras(task.keras, input_signature=spec, opset=17,
                                   output_path=str(tmp))
        os.replace(tmp, path)
        info["convert_s"] = round(time.perf_counter() - t0, 2)
    return path, info


class TfliteRuntimePeer(Peer):
    """edgert's int8 model under tflite-runtime, in a Python that has it (`_tflite_worker.py`).
    It times itself (its own rounds, not interleaved with the others)."""
    key, label = "tflite-runtime", "tflite-runtime int8"
    external = True

    @classmethod
    def python(cls, settings: Settings) -> tuple[str | None, str]:
        """(interpreter to use, why not) — ``--tflite-python``, else this one if it works."""
        py = settings.tflite_python or os.environ.get("EDGERT_TFLITE_PYTHON")
        if py:
            return py, ""
        if importlib.util.find_spec("tflite_runtime") is None:
            return None, ("tflite-runtime not installed (it needs numpy<2: install it in its own "
                          "venv and pass --tflite-python VENV/bin/python)")
        return sys.executable, ""

    def run_external(self, task: Task, rounds: int, log=_log) -> dict:
        from edgert import models

        py, why = self.python(self.settings)
        if py is None:
            raise RuntimeError(why)
        m = models.load(task.model_dir)
        v = m.variants["dynamic"]
        calls = batches(task.test, self.batch)
        win = np.concatenate([cut(r, c, s, m.window) for r, c, s in calls])
        bounds = np.cumsum([0] + [len(s) for _, _, s in calls]).astype(np.int64)
        with tempfile.TemporaryDirectory(prefix="edgert-peers-tfl-") as tmp:
            src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
            np.savez(src, windows=win, bounds=bounds, mean=m.mean, inv_std=m.inv_std,
                     quant=np.array([v.input.scale, v.input.zero_point, v.output.scale,
                                     v.output.zero_point], np.float64),
                     model=str(v.path), rounds=rounds + 1, threads=1)
            worker = Path(__file__).with_name("_tflite_worker.py")
            p = subprocess.run([py, str(worker), str(src), str(dst)], capture_output=True,
                               text=True, timeout=900)
            if p.returncode != 0:
                raise RuntimeError(f"tflite-runtime worker ({py}) failed: "
                                   + (p.stderr.strip().splitlines() or ["?"])[-1])
            z = np.load(dst)
            scores, call_ns = z["scores"], z["call_ns"]
        ver = subprocess.run([py, "-c", "import importlib.metadata as m, numpy; "
                              "print(m.version('tflite-runtime'), numpy.__version__)"],
                             capture_output=True, text=True).stdout.split()
        self.details = {"python": py, "tflite_runtime": ver[0] if ver else None,
                        "numpy": ver[1] if len(ver) > 1 else None, "batch": self.batch,
                        "threads": 1, "model": v.path.name,
                        "note": "first round untimed (warm-up); its own rounds, after the others"}
        rows = np.diff(bounds)
        return {"flags": scores > task.rule.threshold, "scores": scores,
                "call_ns": call_ns[1:].ravel(), "rows": np.tile(rows, rounds)}


ALL = {c.key: c for c in (EdgertPeer, RiverPeer, IForestPeer, EcodPeer, OnnxPeer, TensorflowPeer,
                          TfliteRuntimePeer)}


# ---------------------------------------------------------------------------------------------
# running one task: fit, quality pass, timed rounds
# ---------------------------------------------------------------------------------------------

def run_task(task: Task, keys, settings: Settings, log=_log) -> dict:
    """Fit every peer in ``keys`` on ``task``; returns {key: {"flags", "call_ns", "rows",
    "fit_s", "details"} or {"error"}}."""
    res, live = {}, {}
    for key in keys:
        cls = ALL[key]
        peer = cls(settings)
        try:
            t0 = time.perf_counter()
            if getattr(cls, "external", False):
                out = peer.run_external(task, settings.rounds, log=log)
                out.update({"fit_s": 0.0, "details": peer.details})
                res[key] = out
                continue
            peer.fit(task)
            peer.warm(task)
            res[key] = {"fit_s": time.perf_counter() - t0, "details": peer.details}
            live[key] = peer
        except Exception as exc:  # noqa: BLE001 - one peer failing must not end the bench
            res[key] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"  {key}: {res[key]['error']}")
    plans = {k: batches(task.test, p.batch) for k, p in live.items()}
    for k, p in live.items():  # quality pass (untimed)
        res[k]["flags"] = np.concatenate([p.process(*b) for b in plans[k]]).astype(bool)
        res[k]["call_ns"], res[k]["rows"] = [], []
    clock = time.perf_counter_ns
    for _ in range(settings.rounds):
        for k, p in live.items():
            ns, rows = res[k]["call_ns"], res[k]["rows"]
            for b in plans[k]:
                t0 = clock()
                p.process(*b)
                ns.append(clock() - t0)
                rows.append(len(b[2]))
    for k in live:
        res[k]["call_ns"] = np.asarray(res[k]["call_ns"], np.int64)
        res[k]["rows"] = np.asarray(res[k]["rows"], np.int64)
    for p in live.values():
        if hasattr(p, "backend"):
            p.backend.close()
    return res


def timing(call_ns: np.ndarray, rows: np.ndarray) -> dict:
    """windows/s and latency figures from per-call times and windows per call."""
    if len(call_ns) == 0:
        return {}
    t = call_ns.sum() / 1e9
    per_w = call_ns / rows / 1e3
    return {"windows": int(rows.sum()), "seconds": round(float(t), 4),
            "windows_per_s": float(rows.sum() / t) if t > 0 else None,
            "p50_call_us": float(np.percentile(call_ns, 50) / 1e3),
            "p99_call_us": float(np.percentile(call_ns, 99) / 1e3),
            "p99_window_us": float(np.percentile(per_w, 99)),
            # the typical call's cost per window: less moved by other processes' preemptions
            # than the total time, which a few stalled calls can dominate on a shared machine
            "p50_window_us": float(np.percentile(per_w, 50)),
            "mean_window_us": float(call_ns.sum() / rows.sum() / 1e3),
            "calls": int(len(call_ns))}


# ---------------------------------------------------------------------------------------------
# ITSC
# ---------------------------------------------------------------------------------------------

def find_float_model(model_dir: Path, explicit: str | None) -> Path | None:
    """The float Keras model of ``model_dir``: ``explicit``, else the manifest's
    ``float_model`` (or a ``files`` entry ending in .keras), else a lone ``*.keras`` there."""
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise FileNotFoundError(f"--float-model {p}: no such file")
        return p
    try:
        man = json.loads((model_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        man = {}
    fm = man.get("float_model")
    cands = [fm.get("file") if isinstance(fm, dict) else fm] if fm else []
    cands += [f for f in man.get("files", {}) if str(f).endswith(".keras")]
    for c in cands:
        if c and (model_dir / c).is_file():
            return model_dir / c
    found = sorted(model_dir.glob("*.keras"))
    return found[0] if len(found) == 1 else None


def itsc_task(settings: Settings, log=_log) -> tuple[Task, dict]:
    from edgert import models
    from edgert.evaluate.itsc import load_itsc

    mdir = models.resolve(settings.model)
    m = models.load(mdir)
    tr = (m.manifest.get("training") or {})
    cfg = tr.get("config") or {}
    train_names = tr.get("train_recordings") or cfg.get("train_recordings")
    hold = tr.get("holdout_recordings") or cfg.get("holdout_recordings")
    healthy = cfg.get("healthy_class", "SC_HLT")
    train_hop = int(cfg.get("train_hop", m.hop))
    recs = load_itsc()
    W, H = m.window, m.hop
    train = [segment(n, recs[n][0], W, train_hop) for n in train_names]
    normal = [segment(n, recs[n][0], W, H, 0) for n in hold]
    faults = [segment(n, x, W, H, 1) for n, (x, c) in sorted(recs.items()) if c != healthy]
    task = Task("itsc", W, train, normal + faults, model_dir=mdir, mean=m.mean, std=m.std,
                rule=FixedRule(m.threshold))
    keras_path = find_float_model(mdir, settings.float_model)
    why_no_keras = None
    if keras_path is None:
        why_no_keras = (f"no float Keras model in {mdir} (manifest 'float_model'); pass "
                        "--float-model FILE.keras")
    elif importlib.util.find_spec("tensorflow") is None:
        why_no_keras = "tensorflow not installed (the float model is a Keras file)"
    elif set(settings.only) & {"onnxruntime", "tensorflow"}:  # only they need it
        tf = _tf()
        task.keras = tf.keras.models.load_model(keras_path, compile=False)
        task.keras_path = str(keras_path)
    n_norm = sum(len(s.starts) for s in normal)
    n_fault = sum(len(s.starts) for s in faults)
    info = {"model": m.name, "model_dir": str(mdir), "window": W, "hop": H,
            "channels": list(m.channels), "threshold": m.threshold,
            "train_recordings": list(train_names), "train_hop": train_hop,
            "train_windows": sum(len(s.starts) for s in train),
            "normal_recordings": list(hold), "fault_recordings": len(faults),
            "normal_windows": n_norm, "anomalous_windows": n_fault,
            "float_model": task.keras_path, "float_model_missing": why_no_keras,
            "labels": "per window: the recording's (held-out healthy = normal, fault = anomalous)"}
    log(f"itsc: {len(train)} training recordings ({info['train_windows']} windows, hop "
        f"{train_hop}); stream {n_norm} normal + {n_fault} anomalous windows (W {W}, hop {H})")
    return task, info


def run_itsc(settings: Settings, keys, log=_log) -> dict:
    task, info = itsc_task(settings, log)
    if info["float_model_missing"]:
        for k in ("onnxruntime", "tensorflow"):
            if k in keys:
                settings.notes.append(f"itsc {k}: {info['float_model_missing']}")
    keys = [k for k in keys if not (info["float_model_missing"] and k in ("onnxruntime",
                                                                        "tensorflow"))]
    raw = run_task(task, keys, settings, log)
    y = np.concatenate([s.y for s in task.test])
    out = {"dataset": info, "peers": {}}
    for k, r in raw.items():
        if "error" in r:
            out["peers"][k] = {"label": ALL[k].label, "error": r["error"]}
            continue
        row = {"label": ALL[k].label, "batch": ALL[k].batch, "fit_s": round(r["fit_s"], 3),
               "quality": quality(y, r["flags"]), **timing(r["call_ns"], r["rows"]),
               "details": r["details"]}
        out["peers"][k] = row
    if "tflite-runtime" in raw and "scores" in raw["tflite-runtime"] and "edgert" in raw \
            and "flags" in raw["edgert"]:
        agree = float((raw["tflite-runtime"]["flags"] == raw["edgert"]["flags"]).mean())
        out["peers"]["tflite-runtime"]["details"]["decisions_equal_edgert"] = agree
    return out


# ---------------------------------------------------------------------------------------------
# SKAB
# ---------------------------------------------------------------------------------------------

def default_skab_data() -> Path | None:
    env = os.environ.get("EDGERT_SKAB_DATA")
    cands = [Path(env)] if env else []
    root = Path(__file__).resolve().parent.parent
    cands += [root.parent / "shared" / "data" / "SKAB", root / ".." / ".." / "shared" / "data" / "SKAB"]
    for c in cands:
        if c.is_dir():
            return c.resolve()
    return None


def _train_skab_file(f, cfg, workdir: Path):
    """``edgert eval skab``'s per-file training (`skab._train_file`), keeping the float Keras
    model: (model dir, keras model, mean, std, epochs)."""
    from edgert.evaluate import skab
    from edgert.train import build_ae, set_seed

    mean, std = skab.fit_scaler(f.x[:skab.TRAIN_ROWS])
    xtr = skab.windows_of((f.x[:skab.TRAIN_ROWS] - mean) / std, cfg.window)
    spec = cfg.spec(f.x.shape[1])
    set_seed(cfg.seed)
    model = build_ae(spec)
    epochs = skab._fit(model, xtr, cfg)
    tfl = skab.int8_dynamic(spec, model, skab.rep_set(xtr, cfg.rep_headroom, cfg.rep_windows,
                                                      cfg.seed))
    mdir = skab.write_model_dir(workdir / f.name.replace("/", "_"),
                                spec["name"].replace("_", "-"), tfl, f.columns, mean, std, 1.0,
                                "see edgert.evaluate.skab",
                                {"data": f"SKAB {f.name}, rows 0-{skab.TRAIN_ROWS - 1}",
                                 "epochs": epochs, "seed": cfg.seed})
    return mdir, model, mean, std, epochs


def run_skab(settings: Settings, keys, log=_log) -> dict:
    from edgert.evaluate import skab

    data = Path(settings.skab_data) if settings.skab_data else default_skab_data()
    if data is None or not data.is_dir():
        raise FileNotFoundError("SKAB data not found (../shared/data/SKAB, $EDGERT_SKAB_DATA "
                                "or --skab-data DIR)")
    if set(keys) & {"edgert", "onnxruntime", "tensorflow"}:
        if importlib.util.find_spec("tensorflow") is None:
            raise RuntimeError("skab needs TensorFlow: edgert's side trains a model per file "
                               "(pip install 'edgert[bench]')")
        _tf()
    files = skab.load_skab(data, settings.skab_files)
    cfg = skab.EdgeAEConfig(seed=0)
    W = cfg.window
    drift = skab.channel_drift(files, W)
    scored = [c for c in range(len(drift)) if drift[c] <= cfg.drift_limit]
    log(f"skab: {len(files)} labelled files from {data}; scored channels "
        f"{[files[0].columns[c] for c in scored]}")
    per = {k: [] for k in keys}
    acc = {k: {"call_ns": [], "rows": [], "fit_s": 0.0, "details": None, "error": None}
           for k in keys}
    t_train = 0.0
    with tempfile.TemporaryDirectory(prefix="edgert-peers-skab-") as tmp:
        for f in files:
            t0 = time.perf_counter()
            mdir = model = mean = std = None
            epochs = "no"
            if set(keys) & {"edgert", "onnxruntime", "tensorflow"}:  # they need the model
                mdir, model, mean, std, epochs = _train_skab_file(f, cfg, Path(tmp))
            t_train += time.perf_counter() - t0
            task = Task(f"skab:{f.name}", W, [segment(f.name + ":train", f.x[:skab.TRAIN_ROWS], W, 1)],
                        [segment(f.name, f.x, W, 1)], model_dir=mdir, keras=model, mean=mean,
                        std=std, rule=TailRatioRule(scored, cfg.quantile, cfg.factor, cfg.tail),
                        workdir=Path(tmp))
            raw = run_task(task, [k for k in keys if not acc[k]["error"]], settings, log)
            for k, r in raw.items():
                if "error" in r:
                    acc[k]["error"] = f"{f.name}: {r['error']}"
                    continue
                per[k].append({"skab_flags": r["flags"], "stream_flags": r["flags"]})
                acc[k]["call_ns"].append(r["call_ns"]), acc[k]["rows"].append(r["rows"])
                acc[k]["fit_s"] += r["fit_s"]
                acc[k]["details"] = r["details"]
            log(f"  {f.name}: {epochs} epochs, {time.perf_counter() - t0:.1f} s")
    out = {"dataset": {"data": str(data), "files": len(files),
                       "file_names": [f.name for f in files], "window": W, "hop": 1,
                       "train_rows": skab.TRAIN_ROWS, "scored_channels":
                       [files[0].columns[c] for c in scored],
                       "test_points": int(sum(f.n_test for f in files)),
                       "anomalous_points": int(sum(f.y[skab.TRAIN_ROWS:].sum() for f in files)),
                       "edgert_training_s": round(t_train, 1),
                       "training": "edgert eval skab's edgeae per file, in this process, where "
                                   "TensorFlow has one thread (for the TF peer): the fits can "
                                   "differ slightly from `edgert eval skab`'s",
                       "mapping": "streaming: test point i takes the decision of the window "
                                  "ending at i (edgert eval skab's 'streaming' row)"},
           "peers": {}}
    for k in keys:
        a = acc[k]
        if a["error"] or len(per[k]) != len(files):
            out["peers"][k] = {"label": ALL[k].label, "error": a["error"] or "incomplete"}
            continue
        s = skab.summarize(files, per[k])["stream"]
        q = {"f1": s["f1"], "far": s["far"] / 100, "mar": s["mar"] / 100,
             **{m: s[m] for m in ("tp", "fp", "fn", "tn")}}
        out["peers"][k] = {"label": ALL[k].label, "batch": ALL[k].batch,
                           "fit_s": round(a["fit_s"], 3), "quality": q,
                           **timing(np.concatenate(a["call_ns"]), np.concatenate(a["rows"])),
                           "details": a["details"]}
    return out


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------

def versions(settings: Settings) -> dict:
    from importlib import metadata

    out = {}
    for d in VERSIONS:
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            pass
    return out


def ratios(section: dict) -> dict:
    """edgert's windows/s over each peer's (``speedup``; ``speedup_p50`` from the median call's
    time per window), and whether edgert's F1 is >= the peer's."""
    p = section["peers"]
    e = p.get("edgert") or {}
    out = {}
    for k, r in p.items():
        if k == "edgert" or "error" in r or "error" in e or not e:
            continue
        out[k] = {"speedup": e["windows_per_s"] / r["windows_per_s"] if r.get("windows_per_s") else None,
                  "speedup_p50": (r["p50_window_us"] / e["p50_window_us"]
                                  if e.get("p50_window_us") and "p50_window_us" in r else None),
                  "f1_edgert": e["quality"]["f1"], "f1_peer": r["quality"]["f1"],
                  "f1_at_least": (e["quality"]["f1"] or 0) >= (r["quality"]["f1"] or 0) - 1e-12}
    return out


def run_services(settings: Settings, log=_log) -> dict:
    """`bench.naive.compare` on the model (a private copy), with this run's budget: edgert's
    daemon against the naive services on one ZeroMQ stream."""
    import shutil

    from . import naive
    from .snapshot import snapshot_model

    model, snap, _ = snapshot_model(settings.model)
    rt = ["litert", "onnxruntime"]
    if TfliteRuntimePeer.python(settings)[0]:
        rt.append("tflite-runtime")
    old = os.environ.get("EDGERT_TFLITE_PYTHON")
    if settings.tflite_python:
        os.environ["EDGERT_TFLITE_PYTHON"] = settings.tflite_python
    cpus = os.sched_getaffinity(0)
    pinned = {0, 1} <= cpus  # the service on CPU 0, this process (the sender) on CPU 1
    try:
        if pinned:
            sysinfo.pin(1)
        return naive.compare(model, str(snap), onnx=onnx_file, rounds=min(3, settings.rounds),
                             saturate_s=3.0, paced_s=2.0, runtimes=tuple(rt),
                             cpu_daemon=0 if pinned else None, log=log)
    finally:
        if pinned:
            os.sched_setaffinity(0, cpus)
        if settings.tflite_python:
            if old is None:
                os.environ.pop("EDGERT_TFLITE_PYTHON", None)
            else:
                os.environ["EDGERT_TFLITE_PYTHON"] = old
        shutil.rmtree(snap.parent, ignore_errors=True)


def targets(section: dict) -> dict:
    r = section.get("ratios", {})
    out = {}
    for name, (peer, goal) in {"over_river": ("river", 50.0),
                               "over_onnxruntime": ("onnxruntime", 5.0)}.items():
        x = r.get(peer)
        if not x or x["speedup"] is None:
            out[name] = {"target": f">= {goal:g}x and F1 >= peer's", "value": None, "pass": None}
            continue
        out[name] = {"target": f">= {goal:g}x and F1 >= peer's", "value": x["speedup"],
                     "speed_pass": x["speedup"] >= goal, "f1_pass": x["f1_at_least"],
                     "pass": bool(x["speedup"] >= goal and x["f1_at_least"]),
                     # False: the peer detects too little for the speed ratio to mean anything
                     "meaningful": not weak(section, peer), "peer_f1": x["f1_peer"]}
    return out


def other_load(cpu0, own0, wall: float) -> dict:
    """Cores used by *other* processes (not this one or its children) since ``cpu0``/``own0``
    (`sysinfo.cpu_times()`, `os.times()`): the noise the figures were measured under."""
    cpu1, own1 = sysinfo.cpu_times(), os.times()
    if not cpu0 or not cpu1 or wall <= 0:
        return {}
    busy = sum(cpu1[c][0] - cpu0[c][0] for c in cpu1 if c in cpu0) / os.sysconf("SC_CLK_TCK")
    mine = sum(getattr(own1, a) - getattr(own0, a)
               for a in ("user", "system", "children_user", "children_system"))
    return {"other_cores": round(max(0.0, busy - mine) / wall, 2),
            "per_cpu": sysinfo.cpu_usage(cpu0, cpu1), "loadavg_end": sysinfo.loadavg()}


def run_peers(settings: Settings, log=_log) -> dict:
    res = {"schema": SCHEMA, "tool": "edgert bench --peers",
           "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "command": "edgert bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"]
                                                 else sys.argv[1:]),
           "machine": sysinfo.machine_info(), "versions": versions(settings),
           "unavailable": {}, "errors": {}}
    git = sysinfo.git_rev(Path(__file__).resolve().parent.parent)
    if git:
        res["machine"]["git"] = git
    keys = []
    for k in settings.only:
        if k == "naive":  # services on a stream, not a model path: after ITSC's detectors
            continue
        cls = ALL[k]
        why = cls.python(settings)[1] if k == "tflite-runtime" else cls.missing()
        if why:
            res["unavailable"][k] = why
            log(f"edgert bench --peers: {k}: {why}")
        else:
            keys.append(k)
    t0 = time.perf_counter()
    cpu0, own0 = sysinfo.cpu_times(), os.times()
    try:
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(1)
    except ImportError:
        limiter = None
        settings.notes.append("threadpoolctl missing: BLAS threads not limited")
    try:
        for ds in settings.datasets:
            log(f"edgert bench --peers: {ds}")
            try:
                sec = run_itsc(settings, keys, log) if ds == "itsc" else \
                    run_skab(settings, [k for k in keys if k != "tflite-runtime"], log)
                sec["ratios"] = ratios(sec)
                sec["targets"] = targets(sec)
                res[ds] = sec
                if ds == "itsc" and "naive" in settings.only:
                    sec["services"] = run_services(settings, log)
            except Exception as exc:  # noqa: BLE001 - report, go on with the next dataset
                res["errors"][ds] = f"{type(exc).__name__}: {exc}"
                log(f"edgert bench --peers: {ds}: {res['errors'][ds]}")
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
    res["machine"]["loadavg_end"] = sysinfo.loadavg()
    res["elapsed_s"] = round(time.perf_counter() - t0, 1)
    res["machine"]["load_during_run"] = other_load(cpu0, own0, res["elapsed_s"])
    res["settings"] = asdict(settings)
    return res


# ---------------------------------------------------------------------------------------------
# command line (options of `edgert bench`)
# ---------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--peers`` options of ``edgert bench``."""
    g = p.add_argument_group("side by side with other detectors (--peers; bench/peers.py)")
    g.add_argument("--peers", action="store_true",
                   help="edgert vs River, PyOD, ONNX Runtime, TensorFlow, tflite-runtime on "
                        "ITSC and SKAB (needs the [bench] extra)")
    g.add_argument("--datasets", default=",".join(DATASETS), help="itsc,skab (default both)")
    g.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5, --quick 1)")
    g.add_argument("--quantile", type=float, default=0.999,
                   help="peers' own thresholds: River QuantileFilter q, PyOD contamination 1-q")
    g.add_argument("--skab-data", dest="skab_data", help="SKAB data/ directory")
    g.add_argument("--skab-files", dest="skab_files", type=int, help="only the first N SKAB files")
    g.add_argument("--float-model", dest="float_model", help="float Keras model of --model")
    g.add_argument("--tflite-python", dest="tflite_python",
                   help="a Python with tflite-runtime (numpy<2), e.g. VENV/bin/python "
                        "(or $EDGERT_TFLITE_PYTHON)")
    g.add_argument("--markdown", action="store_true", help="also print the README table")
    g.add_argument("--render", metavar="JSON", help="print the markdown table of a saved result")


def _split(s: str, allowed) -> tuple:
    out = tuple(x.strip() for x in s.split(",") if x.strip())
    bad = [x for x in out if x not in allowed]
    if bad:
        raise ValueError(f"unknown {bad}: choose from {', '.join(allowed)}")
    return out


def main(args) -> int:
    if getattr(args, "render", None):
        try:
            res = json.loads(Path(args.render).read_text())
        except (OSError, ValueError) as exc:
            print(f"edgert bench --render: {args.render}: {exc}", file=sys.stderr)
            return 2
        print(render_markdown(res), end="")
        return 0
    try:
        s = Settings(datasets=_split(args.datasets, DATASETS), only=_split(getattr(args, "only", None) or ",".join(PEERS), PEERS),
                     rounds=args.rounds if args.rounds else (1 if getattr(args, "quick", False) else 5),
                     quantile=args.quantile, skab_data=args.skab_data,
                     skab_files=args.skab_files if args.skab_files else
                     (4 if getattr(args, "quick", False) else None),
                     float_model=args.float_model, tflite_python=args.tflite_python,
                     model=getattr(args, "model", None) or "motor-ae")
    except ValueError as exc:
        print(f"edgert bench --peers: {exc}", file=sys.stderr)
        return 2
    if not 0.5 <= s.quantile < 1:
        print("edgert bench --peers: --quantile must be in [0.5, 1)", file=sys.stderr)
        return 2
    res = run_peers(s)
    out = Path(args.out) if getattr(args, "out", None) else \
        Path("bench") / "results" / f"peers-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_clean(res), indent=1) + "\n")
    print(render(res), flush=True)
    print(f"results: {out}", flush=True)
    if args.markdown:
        print("\n" + render_markdown(_clean(res)), end="", flush=True)
    if getattr(args, "json", False):
        print(json.dumps(_clean(res), separators=(",", ":")), flush=True)
    return 1 if res["errors"] else 0


def onnx_file(model) -> tuple[Path | None, str]:
    """(the float model of `model` as ONNX, why not): `to_onnx`, cached by the Keras file's hash
    in ~/.cache/edgert/peers. The ONNX converter `bench.naive` is given for its ONNX Runtime service."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None, "onnxruntime not installed (pip install 'edgert[bench]')"
    keras = find_float_model(model.dir, None)
    if keras is None:
        return None, f"no float Keras model in {model.dir}"
    if importlib.util.find_spec("tf2onnx") is None or importlib.util.find_spec("tensorflow") is None:
        return None, "tf2onnx or tensorflow not installed (they convert the float model once)"
    tf = _tf()
    task = Task("naive", model.window, [], [], keras=tf.keras.models.load_model(keras, compile=False),
                      keras_path=str(keras), mean=model.mean, std=model.std)
    path, _ = to_onnx(task, Settings())
    return path, ""
