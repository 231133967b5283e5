"""Train, quantize and export an int8 convolutional autoencoder (``motor-ae``).

Usage (later also ``edgert train``)::

    python -m edgert.train --data PATH --out compiled_models/motor-ae --seed 0

``--data`` is either the ITSC directory of CSV files (``<CLASS>/<CLASS>_00N.csv``, headerless,
1000 × 3) or an ``.npz`` with one [n, C] array per recording; without it the copy shipped in
``edgert.data`` is used.

The runtime never imports this module. TensorFlow (the ``train`` extra) is imported lazily,
inside the functions that need it; the int8 checks run the converted model through LiteRT
(``ai_edge_litert``, a runtime dependency), exactly as the runtime will.

What it does:

1. cuts the healthy training recordings into windows ``[n, W, C]`` (hop ``train_hop``),
   fits per-channel mean/std on them;
2. trains a conv autoencoder on ``[batch, 1, W, C]`` tensors with ``(1, k)`` kernels only
   (strided Conv2D down to a ``[1, 1, latent]`` code, Conv2DTranspose back up, ReLU as separate
   layers, a linear Conv2D with C filters at the end), which converts to bare CONV_2D /
   TRANSPOSE_CONV (Edge TPU friendly, no reshapes, no UpSampling);
3. converts it twice with full-integer int8 post-training quantization: ``*_dyn.tflite``
   (batch -1, for the CPU path) and ``*_b1.tflite`` (fixed ``[1, 1, W, C]``, for the Edge TPU:
   CONV_2D, TRANSPOSE_CONV v2, RELU only). In the dynamic variant each Conv2DTranspose is
   rewritten as its exact sub-pixel equivalent (Conv2D + constant-shape Reshape, same weights,
   float outputs checked equal): a TRANSPOSE_CONV with a dynamic batch needs a run-time output
   shape, which in LiteRT makes every later tensor dynamic (unallocated until the first
   invoke, not taken by XNNPACK, ~5x slower here);
4. calibrates the threshold on int8 scores computed with LiteRT and measures false alarms,
   per-class detection and float-vs-int8 agreement;
5. writes ``manifest.json`` (the contract in docs/design.md, "Model directory").
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import platform
import re
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = [
    "AEConfig",
    "load_recordings",
    "make_windows",
    "fit_normalization",
    "build_autoencoder",
    "build_subpixel_autoencoder",
    "to_subpixel",
    "train_autoencoder",
    "convert_int8",
    "export_dynamic",
    "export_b1",
    "calibrate_threshold",
    "Int8Model",
    "tflite_ops",
    "train_motor_ae",
    "main",
]


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------

@dataclass
class AEConfig:
    """Everything that defines a training run (recorded in the manifest)."""

    name: str = "motor-ae"
    window: int = 64                 # W, samples
    hop: int = 16                    # H, samples: runtime hop, and the hop of all scored windows
    # hop of the windows the network is fitted on: denser than ``hop`` as augmentation (every
    # 2nd phase offset of the 60 Hz waveform instead of every 16th sample); normalization,
    # threshold and metrics all use ``hop``
    train_hop: int = 2
    channels: tuple[str, ...] = ("ia", "ib", "ic")
    sample_rate_hz: int = 1000
    # architecture
    kernel: int = 5                  # (1, k) kernels of the strided layers
    filters: tuple[int, ...] = (16, 16, 16)  # one strided (stride 2) conv per entry
    latent: int = 3                  # bottleneck: [1, 1, latent]
    out_kernel: int = 3              # linear output conv
    # how the dynamic-batch variant expresses the decoder: "subpixel" (exact CONV_2D + RESHAPE
    # rewrite of each Conv2DTranspose, static shapes once the batch is set, fully taken by
    # XNNPACK) or "transpose" (TRANSPOSE_CONV; its output shape becomes a run-time tensor)
    dyn_decoder: str = "subpixel"
    # training
    epochs: int = 150
    batch_size: int = 64
    learning_rate: float = 2e-3
    # quantization: the representative set is the training windows, plus the same windows
    # multiplied by this factor, so that the int8 input range has room for the larger currents
    # of faulty phases instead of clipping them at the healthy peak
    rep_headroom: float = 1.6
    rep_windows: int = 400
    # threshold
    quantile: float = 0.999
    factor: float = 1.5
    # data split
    train_recordings: tuple[str, ...] = ("SC_HLT_001", "SC_HLT_002", "SC_HLT_003", "SC_HLT_004")
    holdout_recordings: tuple[str, ...] = ("SC_HLT_005",)
    healthy_class: str = "SC_HLT"


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

def load_recordings(data: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Recordings by name, float32 [n, C].

    ``data``: None (the copy shipped in ``edgert.data``), an ``.npz`` file, or a directory
    holding ``<CLASS>/<name>.csv`` (or ``<name>.csv``) headerless CSV files.
    """
    if data is None:
        from edgert.data import itsc_names, itsc_recording

        return {n: np.array(itsc_recording(n), dtype=np.float32) for n in itsc_names()}
    p = Path(data)
    if p.is_file() and p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            return {k: np.asarray(z[k], dtype=np.float32) for k in sorted(z.files)}
    if p.is_dir():
        out = {}
        for f in sorted(p.rglob("*.csv")):
            a = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2)
            out[f.stem] = a.astype(np.float32)
        if not out:
            raise FileNotFoundError(f"{p}: no *.csv recordings found")
        return out
    raise FileNotFoundError(f"{p}: expected a directory of CSV recordings or an .npz file")


def recording_class(name: str) -> str:
    return name.rsplit("_", 1)[0]


def make_windows(x: np.ndarray, window: int, hop: int) -> np.ndarray:
    """Windows ``[n, W, C]`` starting at 0, hop, 2·hop, … (only complete windows)."""
    x = np.asarray(x, dtype=np.float32)
    n = (x.shape[0] - window) // hop + 1
    if n <= 0:
        return np.zeros((0, window, x.shape[1]), np.float32)
    idx = np.arange(n)[:, None] * hop + np.arange(window)[None, :]
    return np.ascontiguousarray(x[idx])


def fit_normalization(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (float64) over all samples of all windows ``[n, W, C]``."""
    w = np.asarray(windows, dtype=np.float64).reshape(-1, windows.shape[-1])
    mean = w.mean(axis=0)
    std = w.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return mean, std


def normalize(windows: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``[n, W, C]`` -> normalized float32 ``[n, 1, W, C]`` (the model's layout)."""
    inv_std = 1.0 / np.asarray(std, np.float64)
    z = (np.asarray(windows, np.float64) - np.asarray(mean, np.float64)) * inv_std
    return z.astype(np.float32)[:, None, :, :]


# ---------------------------------------------------------------------------------------------
# TensorFlow parts (lazy imports)
# ---------------------------------------------------------------------------------------------

def _tf():
    # oneDNN reorders float sums between runs/machines; off for reproducible training.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def set_seed(seed: int) -> None:
    """Seeds Python, numpy, TF/Keras and switches on deterministic TF ops."""
    tf = _tf()
    import random

    random.seed(seed)
    np.random.seed(seed)
    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def build_autoencoder(cfg: AEConfig, batch: int | None = None):
    """Keras model ``[batch, 1, W, C] -> [batch, 1, W, C]`` (``batch=None``: dynamic).

    Encoder: one Conv2D ``(1, k)`` stride ``(1, 2)`` + ReLU per entry of ``cfg.filters``, then
    a ``(1, W / 2**len(filters))`` valid Conv2D with ``cfg.latent`` filters and no activation,
    which collapses the window to a ``[1, 1, latent]`` code. Decoder: the mirror image with
    Conv2DTranspose, each followed by its own ReLU layer, and a linear Conv2D with C filters.

    The Conv2DTranspose layers have no bias on purpose: with a bias, the TFLite converter fuses
    BiasAdd + the following ReLU layer into TRANSPOSE_CONV (fused activation -> op version 4,
    newer than the last edgetpu_compiler accepts). Without one they convert to TRANSPOSE_CONV
    v2 followed by a separate RELU op (checked in the converted model, see ``tflite_ops``).
    """
    tf = _tf()
    L = tf.keras.layers
    W, C = cfg.window, len(cfg.channels)
    n_down = len(cfg.filters)
    if W % (2 ** n_down):
        raise ValueError(f"window {W} is not divisible by 2**{n_down}")
    w_code = W // 2 ** n_down
    inp = tf.keras.Input(shape=(1, W, C), batch_size=batch, name="x")
    h = inp
    for i, f in enumerate(cfg.filters):
        h = L.Conv2D(f, (1, cfg.kernel), strides=(1, 2), padding="same", name=f"enc{i}")(h)
        h = L.ReLU(name=f"enc{i}_relu")(h)
    code = L.Conv2D(cfg.latent, (1, w_code), padding="valid", name="code")(h)
    h = L.Conv2DTranspose(cfg.filters[-1], (1, w_code), padding="valid", use_bias=False,
                          name="dec_expand")(code)
    h = L.ReLU(name="dec_expand_relu")(h)
    for i, f in enumerate(reversed(cfg.filters)):
        h = L.Conv2DTranspose(f, (1, cfg.kernel), strides=(1, 2), padding="same", use_bias=False,
                              name=f"dec{i}")(h)
        h = L.ReLU(name=f"dec{i}_relu")(h)
    out = L.Conv2D(C, (1, cfg.out_kernel), padding="same", name="recon")(h)
    return tf.keras.Model(inp, out, name=cfg.name.replace("-", "_"))


def _subpixel_taps(k: int, stride: int = 2) -> tuple[int, list[list[tuple[int, int]]]]:
    """How a ``(1, k)`` stride-2 'same' Conv2DTranspose maps onto a stride-1 Conv2D.

    TF's transposed conv computes ``y[o] += x[i] K[t]`` for ``o = stride*i + t - pb`` with
    ``pb = max(k - stride, 0) // 2``. Output position ``o = stride*j + r`` (phase ``r``) thus
    takes ``x[j + d]`` with ``d = (r + pb - t) / stride`` for every tap ``t`` that makes it an
    integer. Returns (``m``, per phase the list of (conv tap ``u = d + m``, ConvT tap ``t``)),
    for a symmetric ``'same'`` Conv2D of width ``2m + 1``.
    """
    pb = max(k - stride, 0) // 2
    pairs = [[((r + pb - t) // stride, t) for t in range(k) if (r + pb - t) % stride == 0]
             for r in range(stride)]
    m = max(abs(d) for ph in pairs for d, _ in ph)
    return m, [[(d + m, t) for d, t in ph] for ph in pairs]


def build_subpixel_autoencoder(cfg: AEConfig, batch: int | None = None):
    """The same function as ``build_autoencoder`` with each Conv2DTranspose written as its
    exact sub-pixel equivalent: a stride-1 Conv2D with ``stride × filters`` outputs (one group
    per output phase) and a Reshape ``[.., 1, w, stride*f] -> [.., 1, stride*w, f]`` that
    interleaves the phases (ReLU applied before the Reshape: it is elementwise).

    Used for the dynamic-batch CPU variant. A TRANSPOSE_CONV whose batch is dynamic needs its
    output shape computed at run time (SHAPE/STRIDED_SLICE/PACK), which LiteRT treats as a
    dynamic tensor: every op after it is allocated only at the first invoke (no zero-copy
    output view after ``allocate_tensors``) and XNNPACK cannot take it. This form converts to
    CONV_2D + RESHAPE only, whose shapes are all known once the batch is set.
    Weights come from a trained ``build_autoencoder`` model via ``to_subpixel``.
    """
    tf = _tf()
    L = tf.keras.layers
    W, C = cfg.window, len(cfg.channels)
    n_down = len(cfg.filters)
    w_code = W // 2 ** n_down
    m, _ = _subpixel_taps(cfg.kernel)

    class Shuffle(L.Layer):
        """Reshape to ``[-1, 1, w, f]`` with a constant shape (Keras' Reshape computes the batch
        with SHAPE/PACK, which would make the RESHAPE output dynamic again)."""

        def __init__(self, w, f, **kw):
            super().__init__(**kw)
            self.w, self.f = w, f

        def call(self, x):
            return tf.keras.ops.reshape(x, (-1, 1, self.w, self.f))

        def compute_output_shape(self, input_shape):
            return (input_shape[0], 1, self.w, self.f)

    inp = tf.keras.Input(shape=(1, W, C), batch_size=batch, name="x")
    h = inp
    for i, f in enumerate(cfg.filters):
        h = L.Conv2D(f, (1, cfg.kernel), strides=(1, 2), padding="same", name=f"enc{i}")(h)
        h = L.ReLU(name=f"enc{i}_relu")(h)
    h = L.Conv2D(cfg.latent, (1, w_code), padding="valid", name="code")(h)
    f = cfg.filters[-1]
    h = L.Conv2D(w_code * f, (1, 1), use_bias=False, activation="relu", name="dec_expand_sp")(h)
    h = Shuffle(w_code, f, name="dec_expand_shuffle")(h)
    w = w_code
    for i, f in enumerate(reversed(cfg.filters)):
        h = L.Conv2D(2 * f, (1, 2 * m + 1), padding="same", use_bias=False, activation="relu",
                     name=f"dec{i}_sp")(h)
        w *= 2
        h = Shuffle(w, f, name=f"dec{i}_shuffle")(h)
    out = L.Conv2D(C, (1, cfg.out_kernel), padding="same", name="recon")(h)
    return tf.keras.Model(inp, out, name=cfg.name.replace("-", "_") + "_sp")


def to_subpixel(cfg: AEConfig, model, batch: int | None = None, check: np.ndarray | None = None):
    """A ``build_subpixel_autoencoder`` model carrying the weights of the trained ``model``.

    With ``check`` (normalized windows), asserts both give the same float output.
    """
    sp = build_subpixel_autoencoder(cfg, batch=batch)
    src = {layer.name: layer for layer in model.layers}
    _, phases = _subpixel_taps(cfg.kernel)
    for layer in sp.layers:
        if layer.name in src and layer.get_weights():
            layer.set_weights(src[layer.name].get_weights())
    # dec_expand: ConvT kernel [1, w_code, f, latent], y[o] = x[0] K[o] -> 1x1 conv, o*f + c
    K = src["dec_expand"].get_weights()[0]
    _, wc, f, lat = K.shape
    Wt = np.transpose(K[0], (2, 0, 1)).reshape(1, 1, lat, wc * f)
    sp.get_layer("dec_expand_sp").set_weights([Wt])
    for i, _f in enumerate(reversed(cfg.filters)):
        K = src[f"dec{i}"].get_weights()[0]          # [1, k, f_out, f_in]
        _, k, fo, fi = K.shape
        Wt = np.zeros((1, 2 * _subpixel_taps(k)[0] + 1, fi, 2 * fo), np.float32)
        for r, ph in enumerate(phases):
            for u, t in ph:
                Wt[0, u, :, r * fo:(r + 1) * fo] = K[0, t].T
        sp.get_layer(f"dec{i}_sp").set_weights([Wt])
    if check is not None:
        a = np.asarray(model(check, training=False))
        b = np.asarray(sp(check, training=False))
        err = float(np.abs(a - b).max())
        if not err < 1e-4 * max(1.0, float(np.abs(a).max())):
            raise RuntimeError(f"sub-pixel decoder differs from Conv2DTranspose: {err}")
    return sp


def train_autoencoder(cfg: AEConfig, x_train: np.ndarray, seed: int, verbose: int = 0):
    """Fits a fresh autoencoder on normalized windows ``[n, 1, W, C]``; returns (model, history)."""
    tf = _tf()
    set_seed(seed)
    model = build_autoencoder(cfg, batch=None)
    steps = cfg.epochs * int(np.ceil(len(x_train) / cfg.batch_size))
    lr = tf.keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=steps,
                                                   alpha=0.02)
    model.compile(optimizer=tf.keras.optimizers.Adam(lr), loss="mse")
    hist = model.fit(x_train, x_train, batch_size=cfg.batch_size, epochs=cfg.epochs,
                     shuffle=True, verbose=verbose)
    return model, hist.history


def representative_set(cfg: AEConfig, x_train: np.ndarray, seed: int) -> np.ndarray:
    """Calibration inputs for the quantizer: training windows, and the same × rep_headroom."""
    rng = np.random.default_rng(seed)
    n = min(cfg.rep_windows, len(x_train))
    pick = np.sort(rng.choice(len(x_train), size=n, replace=False))
    base = x_train[pick]
    sets = [base]
    if cfg.rep_headroom and cfg.rep_headroom != 1.0:
        sets.append(base * np.float32(cfg.rep_headroom))
    return np.concatenate(sets).astype(np.float32)


def convert_int8(model, rep: np.ndarray) -> bytes:
    """Full-integer int8 TFLite (int8 input and output) calibrated on ``rep`` ``[n, 1, W, C]``."""
    tf = _tf()

    def gen():
        for i in range(len(rep)):
            yield [rep[i : i + 1]]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = gen
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    with contextlib.redirect_stdout(io.StringIO()):  # Keras export chatter
        return conv.convert()


def clone_with_batch(cfg: AEConfig, model, batch: int | None):
    m = build_autoencoder(cfg, batch=batch)
    m.set_weights(model.get_weights())
    return m


# ---------------------------------------------------------------------------------------------
# int8 model via LiteRT
# ---------------------------------------------------------------------------------------------

def _interpreter_cls():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - LiteRT is a runtime dependency
        Interpreter = _tf().lite.Interpreter
    return Interpreter


class Int8Model:
    """A converted model run through LiteRT, scored the way the runtime scores.

    Quantization follows the ``normalize_quantize`` kernel contract and the error follows the
    ``recon_error`` kernel contract (docs/design.md), in float64.
    """

    def __init__(self, content: bytes, num_threads: int = 1, xnnpack: bool = True):
        self.content = content
        self._Interp = _interpreter_cls()
        self._kw = {"num_threads": num_threads}
        if not xnnpack:  # TFLite's builtin kernels only (no default XNNPACK delegate)
            from ai_edge_litert.interpreter import OpResolverType

            self._kw["experimental_op_resolver_type"] = (
                OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        self._by_batch: dict[int, object] = {}
        it = self._Interp(model_content=content, **self._kw)
        it.allocate_tensors()
        i, o = it.get_input_details()[0], it.get_output_details()[0]
        self.in_shape = [int(v) for v in i["shape_signature"]]
        self.out_shape = [int(v) for v in o["shape_signature"]]
        self.in_dtype, self.out_dtype = np.dtype(i["dtype"]), np.dtype(o["dtype"])
        self.in_scale, self.in_zp = float(i["quantization"][0]), int(i["quantization"][1])
        self.out_scale, self.out_zp = float(o["quantization"][0]), int(o["quantization"][1])
        self.fixed_batch = self.in_shape[0] if self.in_shape[0] > 0 else None
        self._by_batch[int(i["shape"][0])] = it

    def io(self) -> dict:
        def one(shape, dtype, scale, zp):
            return {"shape": shape, "dtype": dtype.name, "scale": scale, "zero_point": zp}

        return {"input": one(self.in_shape, self.in_dtype, self.in_scale, self.in_zp),
                "output": one(self.out_shape, self.out_dtype, self.out_scale, self.out_zp)}

    def _interp(self, batch: int):
        it = self._by_batch.get(batch)
        if it is None:
            if self.fixed_batch is not None:
                raise ValueError(f"model has a fixed batch {self.fixed_batch}, asked for {batch}")
            it = self._Interp(model_content=self.content, **self._kw)
            idx = it.get_input_details()[0]["index"]
            it.resize_tensor_input(idx, [batch] + self.in_shape[1:], strict=True)
            it.allocate_tensors()
            self._by_batch[batch] = it
        return it

    def quantize(self, xn: np.ndarray) -> np.ndarray:
        q = np.rint(np.asarray(xn, np.float64) / self.in_scale + self.in_zp)
        return np.clip(q, -128, 127).astype(np.int8)

    def run_q(self, q: np.ndarray, batch: int | None = None) -> np.ndarray:
        """int8 ``[n, 1, W, C]`` in -> int8 out, invoking ``batch`` windows at a time
        (a partial last batch is zero-padded)."""
        b = self.fixed_batch or batch or 32
        it = self._interp(b)
        iidx = it.get_input_details()[0]["index"]
        oidx = it.get_output_details()[0]["index"]
        out = np.empty_like(q)
        for s in range(0, len(q), b):
            chunk = q[s : s + b]
            k = len(chunk)
            if k < b:
                chunk = np.concatenate([chunk, np.zeros((b - k,) + q.shape[1:], q.dtype)])
            it.set_tensor(iidx, chunk)
            it.invoke()
            out[s : s + k] = it.get_tensor(oidx)[:k]
        return out

    def errors(self, xn: np.ndarray, batch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores [n], per-channel MSE [n, C]) of normalized windows ``[n, 1, W, C]``."""
        q = self.quantize(xn)
        oq = self.run_q(q, batch)
        x = (q.astype(np.float64) - self.in_zp) * self.in_scale
        y = (oq.astype(np.float64) - self.out_zp) * self.out_scale
        ch = ((x - y) ** 2).mean(axis=(1, 2)).astype(np.float32)
        return ch.astype(np.float64).mean(axis=1).astype(np.float32), ch


def float_errors(model, xn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = model.predict(xn, batch_size=256, verbose=0)
    ch = ((xn.astype(np.float64) - y) ** 2).mean(axis=(1, 2))
    return ch.mean(axis=1), ch


def tflite_ops(content: bytes) -> list[str]:
    """Operator names of the (single-subgraph) model in execution order, without TensorFlow."""
    try:
        from ai_edge_litert import schema_py_generated as S
    except ImportError:  # pragma: no cover
        import tflite as S  # type: ignore
    m = S.Model.GetRootAsModel(content, 0)
    names = {v: k for k, v in vars(S.BuiltinOperator).items() if not k.startswith("_")}
    ops = []
    g = m.Subgraphs(0)
    for i in range(g.OperatorsLength()):
        oc = m.OperatorCodes(g.Operators(i).OpcodeIndex())
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        ops.append(f"{names.get(code, code)}/v{oc.Version()}")
    return ops


# ---------------------------------------------------------------------------------------------
# the full run
# ---------------------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for blk in iter(lambda: fh.read(1 << 20), b""):
            h.update(blk)
    return h.hexdigest()


def _r(x: float, nd: int = 6) -> float:
    return float(f"{float(x):.{nd}g}")


def _quantile(scores: np.ndarray, q: float) -> float:
    # "higher": an actual observed score, never interpolated below the largest ones
    return float(np.quantile(np.asarray(scores, np.float64), q, method="higher"))


def export_dynamic(cfg: AEConfig, model, rep: np.ndarray) -> bytes:
    """int8 dynamic-batch variant of the trained (batch None) ``model``."""
    if cfg.dyn_decoder == "subpixel":
        return convert_int8(to_subpixel(cfg, model, batch=None, check=rep[:256]), rep)
    if cfg.dyn_decoder == "transpose":
        return convert_int8(model, rep)
    raise ValueError(f"dyn_decoder must be 'subpixel' or 'transpose', not {cfg.dyn_decoder!r}")


def export_b1(cfg: AEConfig, model, rep: np.ndarray) -> bytes:
    """int8 fixed ``[1, 1, W, C]`` variant (Conv2DTranspose kept: TRANSPOSE_CONV for the TPU)."""
    return convert_int8(clone_with_batch(cfg, model, 1), rep)


def calibrate_threshold(cfg: AEConfig, recs: dict[str, np.ndarray], seed: int,
                        log=print) -> dict:
    """Leave-one-recording-out over the training recordings.

    For each training recording r, a model with the same config and seed is trained on the
    other training recordings (normalization fitted on them too), converted to int8, and scores
    the windows of r through LiteRT (dynamic variant, as shipped): these scores come from recordings the scoring model never
    saw, which is the situation the threshold must hold in (healthy recordings differ from
    each other by a few per cent). threshold = factor × quantile of the pooled held-out scores.
    """
    pooled, per_rec = [], {}
    for r in cfg.train_recordings:
        others = [n for n in cfg.train_recordings if n != r]
        tr = np.concatenate([make_windows(recs[n], cfg.window, cfg.train_hop) for n in others])
        mean, std = fit_normalization(
            np.concatenate([make_windows(recs[n], cfg.window, cfg.hop) for n in others]))
        model, _ = train_autoencoder(cfg, normalize(tr, mean, std), seed)
        rep = representative_set(cfg, normalize(tr, mean, std), seed)
        m8 = Int8Model(export_dynamic(cfg, model, rep))
        s, _ = m8.errors(normalize(make_windows(recs[r], cfg.window, cfg.hop), mean, std))
        per_rec[r] = s
        pooled.append(s)
        log(f"  LORO {r}: n={len(s)} median={np.median(s):.5f} max={s.max():.5f}")
    pooled = np.concatenate(pooled)
    q = _quantile(pooled, cfg.quantile)
    return {"threshold": cfg.factor * q, "quantile_value": q, "scores": pooled,
            "per_recording": per_rec}


def train_motor_ae(out: str | os.PathLike, seed: int = 0, data: str | os.PathLike | None = None,
                   cfg: AEConfig | None = None, command: str | None = None,
                   log=print) -> dict:
    """Trains, converts, calibrates, evaluates and writes the model directory ``out``."""
    cfg = cfg or AEConfig()
    t0 = time.time()
    tf = _tf()
    recs = load_recordings(data)
    missing = [n for n in cfg.train_recordings + cfg.holdout_recordings if n not in recs]
    if missing:
        raise KeyError(f"recordings not found in the data: {missing}")
    W, H, C = cfg.window, cfg.hop, len(cfg.channels)
    for n, a in recs.items():
        if a.ndim != 2 or a.shape[1] != C:
            raise ValueError(f"recording {n}: shape {a.shape}, expected [n, {C}]")

    # --- normalization and training windows --------------------------------------------
    win_h = {n: make_windows(recs[n], W, H) for n in recs}
    mean, std = fit_normalization(np.concatenate([win_h[n] for n in cfg.train_recordings]))
    x_fit = normalize(np.concatenate([make_windows(recs[n], W, cfg.train_hop)
                                      for n in cfg.train_recordings]), mean, std)
    log(f"training windows: {len(x_fit)} (hop {cfg.train_hop}); "
        f"mean={np.round(mean, 4)} std={np.round(std, 4)}")

    # --- threshold (leave-one-recording-out) ----------------------------------------------
    log("calibrating threshold (leave-one-recording-out) ...")
    cal = calibrate_threshold(cfg, recs, seed, log=log)
    threshold = _r(cal["threshold"], 6)  # the value written to the manifest is the one measured

    # --- final model -------------------------------------------------------------------
    log("training the final model ...")
    model, hist = train_autoencoder(cfg, x_fit, seed)
    rep = representative_set(cfg, x_fit, seed)
    dyn_bytes = export_dynamic(cfg, model, rep)
    b1_bytes = export_b1(cfg, model, rep)
    dyn, b1 = Int8Model(dyn_bytes), Int8Model(b1_bytes)

    # --- checks ------------------------------------------------------------------------
    xn = {n: normalize(win_h[n], mean, std) for n in recs}
    all_x = np.concatenate([xn[n] for n in recs])
    s32, ch32 = dyn.errors(all_x, batch=32)
    per_batch_equal = {}
    for b in (1, 8):
        sb, chb = dyn.errors(all_x, batch=b)
        per_batch_equal[b] = bool(np.array_equal(chb, ch32))
    if not all(per_batch_equal.values()):
        raise RuntimeError(f"dynamic model gives different results per batch size: {per_batch_equal}")
    # b1 vs dyn: the same trained weights, converted separately. With dyn_decoder="subpixel"
    # the graphs differ (CONV_2D+RESHAPE vs TRANSPOSE_CONV), so int8 rounding differs a little;
    # with "transpose" they are the same graph, equal with the builtin kernels (XNNPACK takes
    # the static TRANSPOSE_CONVs of b1 but not the dynamic ones of dyn, and rounds differently).
    sb1, chb1 = b1.errors(all_x)
    b1_equal = bool(np.array_equal(chb1, ch32))
    if cfg.dyn_decoder == "transpose":
        _, ch_dyn_ref = Int8Model(dyn_bytes, xnnpack=False).errors(all_x, batch=32)
        _, ch_b1_ref = Int8Model(b1_bytes, xnnpack=False).errors(all_x)
        if not np.array_equal(ch_dyn_ref, ch_b1_ref):
            raise RuntimeError("b1 and dyn variants differ even with the builtin kernels")

    # --- metrics -----------------------------------------------------------------------
    offs = np.cumsum([0] + [len(xn[n]) for n in recs])
    split = lambda s: {n: s[offs[i]:offs[i + 1]] for i, n in enumerate(recs)}  # noqa: E731
    score_of = split(s32)
    fl_all, _ = float_errors(model, all_x)
    corr_all = float(np.corrcoef(fl_all, s32)[0, 1])
    healthy = [n for n in recs if recording_class(n) == cfg.healthy_class]
    h_idx = np.concatenate([np.arange(offs[i], offs[i + 1]) for i, n in enumerate(recs)
                            if n in healthy])
    corr_h = float(np.corrcoef(fl_all[h_idx], s32[h_idx])[0, 1])
    classes = sorted({recording_class(n) for n in recs})
    rates = _rates(score_of, threshold, cfg, classes)
    rates_b1 = _rates(split(sb1), threshold, cfg, classes)

    metrics = {
        "scored_with": "LiteRT int8 (dynamic variant, batch 32); score from dequantized int8 "
                       "input and output tensors",
        **rates,
        "score_median": {c: _r(np.median(np.concatenate(
            [score_of[n] for n in recs if recording_class(n) == c]))) for c in classes},
        "score_p05": {c: _r(np.quantile(np.concatenate(
            [score_of[n] for n in recs if recording_class(n) == c]), 0.05)) for c in classes},
        "score_max_holdout": _r(max(score_of[n].max() for n in cfg.holdout_recordings)),
        "float_int8_score_corr": _r(corr_all, 5),
        "float_int8_score_corr_healthy_only": _r(corr_h, 5),
        "float_int8_score_corr_windows": int(len(s32)),
        "float_int8_score_corr_b1": _r(np.corrcoef(fl_all, sb1)[0, 1], 5),
        "dyn_output_allocated_before_first_invoke": _static_after_resize(dyn_bytes, cfg, 8),
        "dyn_batch_1_8_32_identical": bool(all(per_batch_equal.values())),
        "b1_equals_dyn": b1_equal,
        "b1_vs_dyn_max_abs_score_diff": _r(np.abs(sb1 - s32).max(), 4),
        "b1_vs_dyn_max_rel_score_diff": _r((np.abs(sb1 - s32) / np.maximum(s32, 1e-12)).max(), 4),
        "b1_vs_dyn_decisions_differ": int(((sb1 > threshold) != (s32 > threshold)).sum()),
        "b1_variant": {k: rates_b1[k] for k in (
            "false_alarm_rate_holdout", "false_alarm_rate_train_recordings", "detection_rate",
            "detection_rate_by_severity")},
        "final_train_loss": _r(hist["loss"][-1]),
    }

    # --- write the model directory -----------------------------------------------------
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    f_dyn, f_b1 = f"{cfg.name}_dyn.tflite", f"{cfg.name}_b1.tflite"
    (out / f_dyn).write_bytes(dyn_bytes)
    (out / f_b1).write_bytes(b1_bytes)
    var_dyn = {"file": f_dyn, "batch": "dynamic", **_io_json(dyn)}
    var_b1 = {"file": f_b1, "batch": 1, **_io_json(b1)}
    n_cal = int(len(cal["scores"]))
    manifest = {
        "schema": 1,
        "name": cfg.name,
        "kind": "autoencoder",
        "description": (
            "int8 convolutional autoencoder for three-phase induction-motor stator current "
            f"(ITSC), trained on healthy recordings only; windows of {W} samples "
            f"({W / cfg.sample_rate_hz * 1000:g} ms at {cfg.sample_rate_hz} Hz). A window "
            "whose reconstruction error exceeds the threshold is anomalous (unbalanced phase "
            "currents, e.g. an inter-turn short circuit)."),
        "window": W, "hop": H,
        "sample_rate_hz": cfg.sample_rate_hz,
        "channels": list(cfg.channels),
        "input_layout": "NHWC",
        "normalization": {"mean": [_r(v, 9) for v in mean], "std": [_r(v, 9) for v in std]},
        "score": "mean_sq",
        "threshold": _r(threshold, 6),
        "calibration": {
            "method": (
                "leave-one-recording-out over the training recordings: for each, a model with "
                "the same config and seed trained (and normalized) on the other three, converted "
                "to int8, scored its windows (hop {H}) through LiteRT; threshold = factor x "
                "quantile ('higher') of the pooled held-out scores").format(H=H),
            "windows": n_cal,
            "recordings": list(cfg.train_recordings),
            "quantile": cfg.quantile,
            "factor": cfg.factor,
            "quantile_value": _r(cal["quantile_value"], 6),
            "per_recording_max": {r: _r(v.max(), 6) for r, v in cal["per_recording"].items()},
        },
        "class_names": None,
        "variants": {"dynamic": var_dyn, "b1": var_b1},
        "training": {
            "command": command or _default_command(out, seed, data),
            "seed": seed,
            "data": ("ITSC (MIT licence; University of Guanajuato, Cardenas-Cornejo et al., "
                     "Measurement 222:113680, 2023), shipped as edgert/data/itsc.npz"),
            "train_recordings": list(cfg.train_recordings),
            "holdout_recordings": list(cfg.holdout_recordings),
            "tensorflow": tf.__version__,
            "keras": tf.keras.__version__ if hasattr(tf.keras, "__version__") else None,
            "litert": _litert_version(),
            "python": platform.python_version(),
            "config": _cfg_json(cfg),
            "architecture": _arch_summary(model),
            "params": int(model.count_params()),
            "ops": {"dynamic": tflite_ops(dyn_bytes), "b1": tflite_ops(b1_bytes)},
            "litert_us_per_window": _speed(dyn, b1, cfg),
            "seconds": round(time.time() - t0, 1),
            "metrics": metrics,
        },
        "files": {f_dyn: _sha256(out / f_dyn), f_b1: _sha256(out / f_b1)},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"wrote {out} in {time.time() - t0:.0f} s; threshold {threshold:.6g}")
    return manifest


def _rates(score_of: dict[str, np.ndarray], threshold: float, cfg: AEConfig,
           classes: list[str]) -> dict:
    """False-alarm and detection rates (fraction of windows with score > threshold)."""
    def rate(names):
        s = np.concatenate([score_of[n] for n in names])
        return float((s > threshold).mean()), int(len(s))

    detection = {}
    for c in classes:
        if c == cfg.healthy_class:
            continue
        names = sorted(n for n in score_of if recording_class(n) == c)
        r, nwin = rate(names)
        detection[c] = {
            "rate": _r(r, 4), "windows": nwin,
            "per_recording": {n: _r((score_of[n] > threshold).mean(), 4) for n in names}}

    def severity(name):  # "SC_A0_B3_C0_002" -> 3; None for the healthy class
        m = re.fullmatch(r"SC_A(\d)_B(\d)_C(\d)_\d+", name)
        return max(int(v) for v in m.groups()) if m else None

    levels = sorted({severity(n) for n in score_of} - {None})
    return {
        "false_alarm_rate_holdout": {n: _r((score_of[n] > threshold).mean(), 4)
                                     for n in cfg.holdout_recordings},
        "false_alarm_windows_holdout": int(sum((score_of[n] > threshold).sum()
                                               for n in cfg.holdout_recordings)),
        "holdout_windows": rate(list(cfg.holdout_recordings))[1],
        "false_alarm_rate_train_recordings": _r(rate(list(cfg.train_recordings))[0], 4),
        "detection_rate": {c: detection[c]["rate"] for c in detection},
        "detection_rate_by_severity": {
            f"{10 * k}%": _r(rate([n for n in score_of if severity(n) == k])[0], 4)
            for k in levels},
        "detection_windows_per_class": {c: detection[c]["windows"] for c in detection},
        "detection_per_recording": {c: detection[c]["per_recording"] for c in detection},
    }


def _static_after_resize(content: bytes, cfg: AEConfig, batch: int) -> bool:
    """True when, after resize_tensor_input + allocate_tensors, the output tensor already has
    its memory (no dynamic tensors), so a zero-copy view can be taken before the first invoke."""
    it = _interpreter_cls()(model_content=content, num_threads=1)
    it.resize_tensor_input(it.get_input_details()[0]["index"],
                           [batch, 1, cfg.window, len(cfg.channels)], strict=True)
    it.allocate_tensors()
    try:
        view = it.tensor(it.get_output_details()[0]["index"])()
    except ValueError:
        return False
    return tuple(view.shape) == (batch, 1, cfg.window, len(cfg.channels))


def _speed(dyn: Int8Model, b1: Int8Model, cfg: AEConfig, reps: int = 300) -> dict:
    """Rough LiteRT invoke cost per window (one thread, this machine, shared; indicative)."""
    out = {}
    shape = [1, len(cfg.channels)]
    for name, m, b in (("dyn_b1", dyn, 1), ("dyn_b32", dyn, 32), ("b1", b1, 1)):
        it = m._interp(b)
        it.set_tensor(it.get_input_details()[0]["index"],
                      np.zeros([b, 1, cfg.window, shape[1]], np.int8))
        it.invoke()
        t = time.perf_counter()
        for _ in range(reps):
            it.invoke()
        out[name] = round((time.perf_counter() - t) / reps / b * 1e6, 2)
    return out


def _io_json(m: Int8Model) -> dict:
    io = m.io()
    for k in io:
        io[k]["scale"] = float(io[k]["scale"])  # exact float32 value as read from the model
    return io


def _cfg_json(cfg: AEConfig) -> dict:
    d = asdict(cfg)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def _arch_summary(model) -> list[str]:
    rows = []
    for layer in model.layers[1:]:
        c = layer.get_config()
        desc = type(layer).__name__
        if "filters" in c:
            desc += (f"({c['filters']}, k={tuple(c['kernel_size'])}, s={tuple(c['strides'])}, "
                     f"{c['padding']})")
        shape = tuple(layer.output.shape)
        rows.append(f"{layer.name}: {desc} -> {shape}")
    return rows


def _litert_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("ai-edge-litert")
    except Exception:
        return None


def _default_command(out, seed, data) -> str:
    parts = ["python", "-m", "edgert.train"]
    if data is not None:
        parts += ["--data", str(data)]
    parts += ["--out", str(out), "--seed", str(seed)]
    return shlex.join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgert.train", description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None,
                   help="ITSC directory of CSV files or an .npz (default: the shipped copy)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="override the epoch count")
    p.add_argument("--holdout", default=None,
                   help="held-out healthy recording (default SC_HLT_005); the other four train")
    args = p.parse_args(argv)
    cfg = AEConfig()
    if args.epochs is not None:
        cfg.epochs = args.epochs
    if args.holdout is not None:
        healthy = ("SC_HLT_001", "SC_HLT_002", "SC_HLT_003", "SC_HLT_004", "SC_HLT_005")
        if args.holdout not in healthy:
            p.error(f"--holdout must be one of {healthy}")
        cfg.holdout_recordings = (args.holdout,)
        cfg.train_recordings = tuple(n for n in healthy if n != args.holdout)
    cmd = "python -m edgert.train " + shlex.join(list(argv if argv is not None else sys.argv[1:]))
    train_motor_ae(args.out, seed=args.seed, data=args.data, cfg=cfg, command=cmd)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
