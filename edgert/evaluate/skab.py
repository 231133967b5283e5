"""SKAB outlier detection through edgert's int8 runtime path (``edgert eval skab``).

Protocol (Skoltech Anomaly Benchmark, outlier detection): for each labelled file, the first
400 rows are its training part and the rest its test part; per file a model is trained (or
a shared one adapted) and its scaler fitted on the training part only; point-wise F1, FAR and
MAR are computed over all test points of all files together.

Everything is scored the way edgert scores a live stream: each per-file Keras model is
converted to a full-integer int8 TFLite model (the dynamic-batch CPU variant of
``edgert.train``), written as a model directory, loaded and verified by ``edgert.models``,
run by ``edgert.backends`` (LiteRT), with windows cut from a mirrored ring by the kernels
(``ring_append``, ``normalize_quantize``) and errors computed by ``recon_error``. The file is
fed to the ring in time order (training part, then test part), so every window score only
depends on samples up to the window's last one.

Two results are reported and never mixed:

* ``skab``: SKAB's own mapping of window decisions to points (its baseline code): window j
  covers test points j..j+59; test point i is flagged iff 59 <= i < n_windows - 59 and the 59
  windows starting at i-59 .. i-1 are all above the threshold. It looks up to 58 points ahead.
* ``stream``: a causal detector. Point i is decided when the window ending at i has been
  scored, from that window and earlier ones only. Every test point is decided: the windows
  ending at the first 59 test points start in the training part, which precedes them in the
  stream, so they are scored like any other (nothing is assumed normal).

Methods (``--method``):

* ``convae``: SKAB's Conv-AE baseline (window 60, per-file scaler, one output filter compared
  with all 8 channels, residual = sum over channels of the window's mean absolute error,
  threshold 4/3 x the 0.999 quantile of the training residuals), in an Edge-TPU-friendly
  layout and through int8. Used to check this protocol code against SKAB's published figures.
* ``shared`` (default): see `SharedConfig` - an autoencoder with one output per channel,
  pre-trained once on SKAB's anomaly-free recording (cut into pseudo-files that are scaled
  exactly like a labelled file: scaler fitted on their first 400 rows), fine-tuned per file on
  its 400 training rows; the window score is the runtime's per-channel mean squared error
  (``recon_error``) weighted per channel; threshold and weights come from the anomaly-free
  recording and the file's own training part only. No label of any test part is used to
  fit anything.

TensorFlow is needed (training); it is imported lazily. The data is read from ``--data``
(GPL-3.0: never copied into the project).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

__all__ = [
    "WINDOW", "TRAIN_ROWS", "LEADERBOARD", "SkabFile", "load_file", "labelled_files",
    "load_skab", "load_anomaly_free", "confusion", "rates", "skab_point_flags",
    "stream_point_flags", "RuntimeScorer", "ConvAEConfig", "SharedConfig", "evaluate",
    "add_parser", "main",
]

WINDOW = 60
TRAIN_ROWS = 400
LABELS = ("anomaly", "changepoint")

#: SKAB outlier-detection leaderboard (all 34 labelled files): F1, FAR %, MAR %.
LEADERBOARD = [
    ("Conv-AE", 0.78, 13.55, 28.02), ("MSET", 0.78, 39.73, 14.13),
    ("T2+Q (PCA)", 0.76, 26.62, 24.92), ("LSTM-AE", 0.74, 29.96, 25.92),
    ("T2", 0.66, 19.21, 42.6), ("LSTM-VAE", 0.56, 9.13, 55.03),
    ("Vanilla LSTM", 0.54, 12.54, 59.53), ("Vanilla AE", 0.39, 2.59, 75.15),
    ("Isolation forest", 0.29, 2.56, 82.89),
]
#: SKAB's Conv-AE re-run with SKAB's own code (shared/README.md): F1, FAR %, MAR %.
CONVAE_REPRODUCED = {"all 34 files": (0.784, 13.55, 28.0), "valve1+valve2": (0.757, 15.0, 31.3)}


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

@dataclass
class SkabFile:
    name: str                  # "valve1/0"
    columns: list[str]         # the sensor channels
    x: np.ndarray              # float64 [n, C]
    y: np.ndarray | None       # int8 [n] (anomaly label), None for unlabelled files

    @property
    def n_test(self) -> int:
        return len(self.x) - TRAIN_ROWS


def load_file(path: str | os.PathLike, name: str | None = None) -> SkabFile:
    """One SKAB CSV (``;``-separated, a ``datetime`` column first, then the sensors, then the
    optional ``anomaly`` and ``changepoint`` labels)."""
    path = Path(path)
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh, delimiter=";"))
    if not rows:
        raise ValueError(f"{path}: empty file")
    header = [h.strip() for h in rows[0]]
    if header[0].lower() != "datetime":
        raise ValueError(f"{path}: first column is {header[0]!r}, expected 'datetime'")
    body = [r for r in rows[1:] if r]
    try:
        vals = np.array([[float(v) for v in r[1:]] for r in body], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{path}: non-numeric value ({exc})") from None
    cols = header[1:]
    if vals.ndim != 2 or vals.shape[1] != len(cols):
        raise ValueError(f"{path}: rows do not all have {len(header)} fields")
    sensors = [i for i, c in enumerate(cols) if c not in LABELS]
    y = None
    if "anomaly" in cols:
        y = vals[:, cols.index("anomaly")].astype(np.int8)
    return SkabFile(name or path.stem, [cols[i] for i in sensors],
                    np.ascontiguousarray(vals[:, sensors]), y)


def _file_key(p: Path):
    return (p.parent.name, int(p.stem) if p.stem.isdigit() else 1 << 30, p.stem)


def labelled_files(data: str | os.PathLike) -> list[Path]:
    """Every CSV under ``data`` whose header has an ``anomaly`` column (valve1/, valve2/,
    other/ ...), sorted by folder then file number."""
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory (expected SKAB's data/ folder)")
    out = []
    for p in sorted(root.rglob("*.csv"), key=_file_key):
        with open(p, newline="") as fh:
            head = fh.readline()
        if "anomaly" in [h.strip() for h in head.split(";")]:
            out.append(p)
    if not out:
        raise FileNotFoundError(f"{root}: no labelled SKAB CSV files (with an 'anomaly' column)")
    return out


def load_skab(data: str | os.PathLike, files: int | None = None) -> list[SkabFile]:
    """The labelled files (the first ``files`` of them in `labelled_files` order)."""
    root = Path(data)
    paths = labelled_files(root)
    if files is not None:
        paths = paths[:files]
    out = []
    for p in paths:
        f = load_file(p, f"{p.parent.relative_to(root).as_posix()}/{p.stem}")
        if len(f.x) < TRAIN_ROWS + WINDOW:
            raise ValueError(f"{p}: {len(f.x)} rows, need at least {TRAIN_ROWS + WINDOW}")
        out.append(f)
    return out


def load_anomaly_free(data: str | os.PathLike) -> SkabFile | None:
    """``anomaly-free/anomaly-free.csv`` if present (no labels: every row is normal)."""
    p = Path(data) / "anomaly-free" / "anomaly-free.csv"
    return load_file(p, "anomaly-free/anomaly-free") if p.is_file() else None


# ---------------------------------------------------------------------------------------------
# metrics and the two window -> point mappings
# ---------------------------------------------------------------------------------------------

def confusion(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    t = np.asarray(y_true).astype(bool)
    p = np.asarray(y_pred).astype(bool)
    if t.shape != p.shape:
        raise ValueError(f"labels {t.shape} and predictions {p.shape} differ in shape")
    return {"tp": int((t & p).sum()), "fp": int((~t & p).sum()),
            "fn": int((t & ~p).sum()), "tn": int((~t & ~p).sum())}


def rates(c: dict) -> dict:
    """SKAB's binary metrics from summed counts: F1 = TP / (TP + (FN + FP) / 2),
    FAR = FP / (FP + TN) in %, MAR = FN / (FN + TP) in %."""
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    f1 = tp / (tp + (fn + fp) / 2) if tp + fn + fp else 1.0
    far = 100.0 * fp / (fp + tn) if fp + tn else 0.0
    mar = 100.0 * fn / (fn + tp) if fn + tp else 0.0
    return {"f1": f1, "far": far, "mar": mar}


def skab_point_flags(window_flags: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """SKAB's baseline mapping. ``window_flags[j]``: window j (test points j..j+W-1) above the
    threshold. Returns flags for the ``n_windows + W - 1`` test points: point i is flagged iff
    ``W-1 <= i < n_windows - W + 1`` and windows ``i-W+1 .. i-1`` are all flagged (SKAB's
    ``for i in range(N_STEPS - 1, len(X) - N_STEPS + 1): if np.all(a[i - N_STEPS + 1:i])``)."""
    f = np.asarray(window_flags, dtype=bool)
    nw = len(f)
    out = np.zeros(nw + window - 1, dtype=bool)
    lo, hi = window - 1, nw - window + 1
    if hi <= lo:
        return out
    cs = np.concatenate([[0], np.cumsum(f, dtype=np.int64)])
    i = np.arange(lo, hi)
    out[lo:hi] = (cs[i] - cs[i - window + 1]) == window - 1
    return out


def stream_point_flags(window_flags_ending: np.ndarray) -> np.ndarray:
    """Streaming mapping: point i takes the decision made when the window ending at i was
    scored (``window_flags_ending[i]``, already causal)."""
    return np.asarray(window_flags_ending, dtype=bool).copy()


# ---------------------------------------------------------------------------------------------
# the runtime path: model directory -> edgert.models -> edgert.backends + kernels
# ---------------------------------------------------------------------------------------------

def write_model_dir(out: Path, name: str, tflite: bytes, columns: Sequence[str],
                    mean: np.ndarray, std: np.ndarray, threshold: float, score: str,
                    extra: dict | None = None) -> Path:
    """A model directory in the format of docs/design.md ("Model directory") holding one
    dynamic-batch variant."""
    from ..train import Int8Model, _sha256

    out.mkdir(parents=True, exist_ok=True)
    fname = f"{name}_dyn.tflite"
    (out / fname).write_bytes(tflite)
    io_ = Int8Model(tflite).io()
    for k in io_:
        io_[k]["scale"] = float(io_[k]["scale"])
    manifest = {
        "schema": 1, "name": name, "kind": "autoencoder",
        "description": "per-file SKAB model written by edgert.evaluate.skab",
        "window": WINDOW, "hop": 1, "sample_rate_hz": 1, "channels": list(columns),
        "input_layout": "NHWC",
        "normalization": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        "score": score, "threshold": float(threshold),
        "class_names": None,
        "variants": {"dynamic": {"file": fname, "batch": "dynamic", **io_}},
        "training": extra or {},
        "files": {fname: _sha256(out / fname)},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return out


@dataclass
class Scored:
    """Every window of one file, scored through the runtime. Window ``s`` starts at row ``s``
    of the file (rows s .. s+W-1)."""
    inq: np.ndarray            # int8 [n_win, 1, W, C] the interpreter's input rows
    outq: np.ndarray           # int8 [n_win, 1, W, C_out] its output rows
    ch_err: np.ndarray | None  # float32 [n_win, C] recon_error (None when C_out != C)
    in_scale: float
    in_zp: int
    out_scale: float
    out_zp: int
    seconds: float             # time in normalize_quantize + invoke + recon_error

    def dequant(self) -> tuple[np.ndarray, np.ndarray]:
        x = (self.inq[:, 0].astype(np.float64) - self.in_zp) * self.in_scale
        y = (self.outq[:, 0].astype(np.float64) - self.out_zp) * self.out_scale
        return x, y


class RuntimeScorer:
    """Streams a series through a ring buffer into a model's CPU backend, window by window
    (hop 1), in time order, the way the daemon does: blocks of samples are appended, then
    every window completed by them is normalized+quantized into the backend's input buffer,
    invoked in batches of up to ``max_batch`` and its per-channel error computed."""

    def __init__(self, model_dir: Path, max_batch: int = 32, block: int = 32):
        from .. import backends, models

        self.model = models.load(model_dir)
        self.backend = backends.create("cpu", self.model, max_batch=max_batch)
        self.block = int(block)
        v = self.model.variants["dynamic"]
        self.in_spec, self.out_spec = v.input, v.output

    def close(self) -> None:
        self.backend.close()

    def score(self, x: np.ndarray) -> Scored:
        from .. import kernels

        m, be = self.model, self.backend
        W, C = m.window, m.n_channels
        c_out = self.out_spec.shape[-1]
        x = np.ascontiguousarray(x, dtype=np.float32)
        n = len(x)
        n_win = n - W + 1
        cap = W + self.block + be.max_batch
        ring = np.zeros((2 * cap, C), np.float32)
        buf = be.input_buffer()
        inq = np.empty((n_win, 1, W, C), np.int8)
        outq = np.empty((n_win, 1, W, c_out), np.int8)
        same = c_out == C
        ch_err = np.empty((n_win, C), np.float32) if same else None
        scores = np.empty(be.max_batch, np.float32)
        mean, inv_std = m.mean, m.inv_std
        isc, izp = self.in_spec.scale, self.in_spec.zero_point
        osc, ozp = self.out_spec.scale, self.out_spec.zero_point
        pos, nxt, secs = 0, 0, 0.0
        while pos < n:
            pos = kernels.ring_append(ring, cap, pos, x[pos:pos + self.block])
            while nxt + W <= pos:  # windows completed by the samples received so far
                k = min(be.max_batch, pos - W + 1 - nxt)
                starts = np.arange(nxt, nxt + k, dtype=np.int64)
                t0 = time.perf_counter()
                kernels.normalize_quantize(ring, cap, starts, W, mean, inv_std, isc, izp, buf, 0)
                out = be.run(k)
                if same:
                    kernels.recon_error(buf, isc, izp, out, osc, ozp, k, ch_err[nxt:nxt + k],
                                        scores)
                secs += time.perf_counter() - t0
                inq[nxt:nxt + k] = buf[:k]
                outq[nxt:nxt + k] = out[:k]
                nxt += k
        return Scored(inq, outq, ch_err, isc, izp, osc, ozp, secs)


# ---------------------------------------------------------------------------------------------
# TensorFlow: Edge-TPU-friendly conv autoencoders and their int8 dynamic-batch variant
# ---------------------------------------------------------------------------------------------

def _layers():
    from ..train import _tf

    tf = _tf()
    return tf, tf.keras.layers


def _shuffle_layer_cls():
    """Constant-shape reshape ``[.., 1, w, 2f] -> [.., 1, 2w, f]`` (as in edgert.train: Keras'
    Reshape would compute the batch at run time and make the tensor dynamic)."""
    tf, L = _layers()

    class Shuffle(L.Layer):
        def __init__(self, w, f, **kw):
            super().__init__(**kw)
            self.w, self.f = w, f

        def call(self, x):
            return tf.keras.ops.reshape(x, (-1, 1, self.w, self.f))

        def compute_output_shape(self, input_shape):
            return (input_shape[0], 1, self.w, self.f)

        def get_config(self):
            return {**super().get_config(), "w": self.w, "f": self.f}

    return Shuffle


def build_ae(spec: dict, subpixel: bool = False, batch: int | None = None):
    """A conv autoencoder ``[B, 1, W, C_in] -> [B, 1, W, C_out]`` from a layer list.

    ``spec``: ``{"name", "window", "c_in", "c_out", "layers": [...]}``, each layer a tuple
    ``("down", filters, k)`` (Conv2D (1,k) stride (1,2) 'same' + ReLU layer), ``("up",
    filters, k)`` (Conv2DTranspose (1,k) stride (1,2) 'same' without bias + ReLU layer: the
    Edge TPU rules of edgert.train), ``("conv", filters, k, act)`` (stride-1 Conv2D),
    ``("drop", rate)``. With ``subpixel=True`` each "up" is its exact sub-pixel equivalent
    (Conv2D with 2 x filters + constant reshape), the form of the dynamic-batch CPU variant.
    """
    from ..train import _subpixel_taps

    tf, L = _layers()
    Shuffle = _shuffle_layer_cls()
    W = spec["window"]
    inp = tf.keras.Input(shape=(1, W, spec["c_in"]), batch_size=batch, name="x")
    h, w = inp, W
    for i, ly in enumerate(spec["layers"]):
        kind = ly[0]
        if kind == "down":
            h = L.Conv2D(ly[1], (1, ly[2]), strides=(1, 2), padding="same", name=f"l{i}")(h)
            h = L.ReLU(name=f"l{i}_relu")(h)
            w = (w + 1) // 2
        elif kind == "up":
            bias = bool(ly[3]) if len(ly) > 3 else False
            if subpixel:
                m, _ = _subpixel_taps(ly[2])
                h = L.Conv2D(2 * ly[1], (1, 2 * m + 1), padding="same", use_bias=bias,
                             activation="relu", name=f"l{i}_sp")(h)
                w *= 2
                h = Shuffle(w, ly[1], name=f"l{i}_shuffle")(h)
            else:
                h = L.Conv2DTranspose(ly[1], (1, ly[2]), strides=(1, 2), padding="same",
                                      use_bias=bias, name=f"l{i}")(h)
                h = L.ReLU(name=f"l{i}_relu")(h)
                w *= 2
        elif kind == "conv":
            act = ly[3] if len(ly) > 3 else None
            h = L.Conv2D(ly[1], (1, ly[2]), padding="same", activation=act, name=f"l{i}")(h)
        elif kind == "drop":
            if not subpixel:
                h = L.Dropout(ly[1], name=f"l{i}")(h)
        else:
            raise ValueError(f"unknown layer kind {kind!r}")
    if w != W:
        raise ValueError(f"layers map window {W} to {w}")
    return tf.keras.Model(inp, h, name=spec["name"])


def to_subpixel_model(spec: dict, model, check: np.ndarray | None = None):
    """The ``subpixel=True`` form of ``spec`` carrying the weights of the trained ``model``
    (same mapping as edgert.train.to_subpixel); ``check``: assert equal float outputs."""
    from ..train import _subpixel_taps

    sp = build_ae(spec, subpixel=True, batch=None)
    src = {layer.name: layer for layer in model.layers}
    for i, ly in enumerate(spec["layers"]):
        if ly[0] == "up":
            wts = src[f"l{i}"].get_weights()
            K = wts[0]                                  # [1, k, f_out, f_in]
            _, k, fo, fi = K.shape
            m, phases = _subpixel_taps(k)
            Wt = np.zeros((1, 2 * m + 1, fi, 2 * fo), np.float32)
            for r, ph in enumerate(phases):
                for u, t in ph:
                    Wt[0, u, :, r * fo:(r + 1) * fo] = K[0, t].T
            # a bias (not Edge-TPU friendly, see build_ae) is the same for both phases
            sp.get_layer(f"l{i}_sp").set_weights([Wt] + [np.tile(b, 2) for b in wts[1:]])
        elif ly[0] in ("down", "conv"):
            sp.get_layer(f"l{i}").set_weights(src[f"l{i}"].get_weights())
    if check is not None:
        a = np.asarray(model(check, training=False))
        b = np.asarray(sp(check, training=False))
        err = float(np.abs(a - b).max())
        if not err < 1e-4 * max(1.0, float(np.abs(a).max())):
            raise RuntimeError(f"sub-pixel decoder differs from Conv2DTranspose: {err}")
    return sp


def int8_dynamic(spec: dict, model, rep: np.ndarray) -> bytes:
    """Full-integer int8 dynamic-batch TFLite (CONV_2D + RESHAPE + RELU only) of ``model``,
    calibrated on ``rep`` ``[n, 1, W, C]`` (edgert.train.convert_int8)."""
    from ..train import convert_int8

    return convert_int8(to_subpixel_model(spec, model, check=rep[:128]), rep)


def windows_of(z: np.ndarray, window: int = WINDOW, hop: int = 1) -> np.ndarray:
    """Normalized series ``[n, C]`` -> float32 ``[n_win, 1, W, C]`` (edgert.train.make_windows)."""
    from ..train import make_windows

    return make_windows(z.astype(np.float32), window, hop)[:, None]


def fit_scaler(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """StandardScaler on rows ``x`` (ddof 0; a constant channel gets std 1)."""
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    return mean, np.where(std > 0, std, 1.0)


def rep_set(x: np.ndarray, headroom: float, n: int, seed: int) -> np.ndarray:
    """Quantizer calibration windows (edgert.train.representative_set)."""
    from ..train import AEConfig, representative_set

    return representative_set(AEConfig(rep_headroom=headroom, rep_windows=n), x, seed)


# ---------------------------------------------------------------------------------------------
# method "convae": SKAB's Conv-AE baseline
# ---------------------------------------------------------------------------------------------

@dataclass
class ConvAEConfig:
    """SKAB's Conv_AE (core/Conv_AE.py + its notebook), Edge TPU layout: Conv1D -> (1,k)
    Conv2D on [B, 1, W, C]; Conv1DTranspose stride 2 -> Conv2DTranspose without bias + ReLU
    layer; the last Conv1DTranspose (1 filter, stride 1) -> a stride-1 Conv2D (same function
    class)."""
    window: int = WINDOW
    epochs: int = 100
    batch_size: int = 32
    learning_rate: float = 1e-3
    validation_split: float = 0.1
    patience: int = 5
    quantile: float = 0.999
    factor: float = 4 / 3
    rep_headroom: float = 1.6
    rep_windows: int = 400
    seed: int = 0
    # SKAB's Conv1DTranspose layers have a bias; with it, BiasAdd + ReLU fuse into a
    # TRANSPOSE_CONV v4 the Edge TPU compiler rejects (edgert.train), so the default drops it.
    # The CPU variant scored here is unaffected either way (sub-pixel CONV_2D).
    convt_bias: bool = False
    # also score the float Keras model (diagnostic: what int8 costs)
    float_check: bool = False

    def spec(self, c: int) -> dict:
        b = self.convt_bias
        return {"name": "skab_convae", "window": self.window, "c_in": c, "c_out": 1,
                "layers": [("down", 32, 7), ("drop", 0.2), ("down", 16, 7), ("up", 16, 7, b),
                           ("drop", 0.2), ("up", 32, 7, b), ("conv", 1, 7)]}


def _fit(model, x, cfg, epochs=None, lr=None):
    from ..train import _tf

    tf = _tf()
    model.compile(optimizer=tf.keras.optimizers.Adam(lr or cfg.learning_rate), loss="mse")
    cb = [tf.keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience,
                                           mode="min")]
    h = model.fit(x, x, epochs=epochs or cfg.epochs, batch_size=cfg.batch_size,
                  validation_split=cfg.validation_split, shuffle=True, verbose=0, callbacks=cb)
    return len(h.history["loss"])


def skab_residual(sc: Scored) -> np.ndarray:
    """SKAB's residual per window: sum over channels of the mean |x - y| over the window
    (y broadcast over the channels when the model has one output)."""
    x, y = sc.dequant()
    return np.abs(x - y).mean(axis=1).sum(axis=1)


def run_convae(files: list[SkabFile], cfg: ConvAEConfig, workdir: Path, log=print) -> list[dict]:
    from ..train import set_seed

    per_file = []
    for f in files:
        t0 = time.time()
        mean, std = fit_scaler(f.x[:TRAIN_ROWS])
        xtr = windows_of((f.x[:TRAIN_ROWS] - mean) / std, cfg.window)
        set_seed(cfg.seed)
        spec = cfg.spec(f.x.shape[1])
        model = build_ae(spec)
        epochs = _fit(model, xtr, cfg)
        tfl = int8_dynamic(spec, model, rep_set(xtr, cfg.rep_headroom, cfg.rep_windows, cfg.seed))
        mdir = write_model_dir(workdir / f.name.replace("/", "_"), "skab-convae", tfl, f.columns,
                               mean, std, 1.0, "skab_mae_sum")
        scorer = RuntimeScorer(mdir)
        sc = scorer.score(f.x)
        scorer.close()
        res = skab_residual(sc)
        n_tr = TRAIN_ROWS - cfg.window + 1
        thr = cfg.factor * float(np.quantile(res[:n_tr], cfg.quantile))
        r = {"name": f.name, "scores": res, "threshold": thr, "stream_flags": res > thr,
             "windows": len(res), "runtime_seconds": sc.seconds, "epochs": epochs}
        if cfg.float_check:
            xa = windows_of((f.x - mean) / std, cfg.window)
            fres = np.abs(xa - model.predict(xa, batch_size=256, verbose=0)).mean(axis=2).sum(
                axis=-1)[:, 0]
            fthr = cfg.factor * float(np.quantile(fres[:n_tr], cfg.quantile))
            r["float"] = {"scores": fres, "threshold": fthr, "stream_flags": fres > fthr}
        r["seconds"] = time.time() - t0
        per_file.append(r)
        log(f"  {f.name}: {epochs} epochs, threshold {thr:.4g}, {time.time() - t0:.1f} s")
    return per_file


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------

@dataclass
class SharedConfig:  # filled in below
    seed: int = 0


def summarize(files: list[SkabFile], per_file: list[dict], window: int = WINDOW) -> dict:
    """Both rows from per-file window scores/flags. ``per_file[i]["scores"]``: one score per
    window of the whole file (window s = rows s..s+W-1); ``threshold``; ``stream_flags``: the
    causal decision made when window s was scored (one per window)."""
    c_skab = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    c_stream = dict(c_skab)
    c_triv = dict(c_skab)
    rows = []
    for f, r in zip(files, per_file):
        s = np.asarray(r["scores"])
        y = f.y[TRAIN_ROWS:]
        # SKAB: windows cut from the test part only: window j = test points j..j+W-1
        test_win = s[TRAIN_ROWS:] > r["threshold"]
        p_skab = skab_point_flags(test_win, window)
        # stream: test point i is decided with the window ending at it, i.e. starting at
        # row TRAIN_ROWS + i - W + 1 (in the training part for i < W - 1)
        p_stream = stream_point_flags(np.asarray(r["stream_flags"])[TRAIN_ROWS - window + 1:])
        assert len(p_skab) == len(y) == len(p_stream), (len(p_skab), len(y), len(p_stream))
        cs, cst = confusion(y, p_skab), confusion(y, p_stream)
        ct = confusion(y, np.ones_like(y))
        for acc, c in ((c_skab, cs), (c_stream, cst), (c_triv, ct)):
            for k in acc:
                acc[k] += c[k]
        rows.append({"file": f.name, "test_points": int(len(y)), "anomalous": int(y.sum()),
                     "skab": {k: round(v, 4) for k, v in rates(cs).items()},
                     "stream": {k: round(v, 4) for k, v in rates(cst).items()}})
    return {"skab": {**rates(c_skab), **c_skab}, "stream": {**rates(c_stream), **c_stream},
            "trivial": {**rates(c_triv), **c_triv}, "per_file": rows}


def evaluate(data: str | os.PathLike, method: str = "shared", files: int | None = None,
             seed: int = 0, log=print) -> dict:
    """Runs the protocol; returns the summary dict (see `summarize`)."""
    t0 = time.time()
    sk = load_skab(data, files)
    log(f"{len(sk)} labelled files, {sum(f.n_test for f in sk)} test points")
    with tempfile.TemporaryDirectory(prefix="edgert-skab-") as tmp:
        if method == "convae":
            per_file = run_convae(sk, ConvAEConfig(seed=seed), Path(tmp), log=log)
        else:
            raise ValueError(f"unknown method {method!r}")
    out = summarize(sk, per_file)
    n_win = sum(r["windows"] for r in per_file)
    out.update({"method": method, "files": len(sk), "seconds": round(time.time() - t0, 1),
                "windows_scored": n_win,
                "windows_per_s": n_win / max(1e-9, sum(r["runtime_seconds"] for r in per_file))})
    return out
