"""Train, quantize and export edgert's int8 models (``edgert train``).

Two kinds, both full-integer int8 TFLite with Edge-TPU-friendly graphs (``(1, k)`` kernels on
``[rows, 1, W, C]`` tensors, no reshapes, no UpSampling/TILE, static shapes in the fixed
variants):

* ``--kind autoencoder`` (shipped: ``motor-ae``): a conv autoencoder trained on normal
  windows only; a window whose reconstruction error exceeds the calibrated threshold is
  anomalous.
* ``--kind classifier`` (shipped: ``motor-cnn``): a small CNN (strided ``(1, k)`` convs,
  AVERAGE_POOL_2D over the remaining width, a 1x1 conv to the class logits) that names the
  class of every window; the manifest says ``"kind": "classifier"``, ``"output": "logits"``.

Usage::

    edgert train [--data PATH] --kind autoencoder|classifier [--window W] [--hop H]
                 [--channels a,b,c] [--labels COLUMN] [--normal LABEL] --out DIR
                 [--seed N] [--epochs N] [--cv N] [--rows B] [--sample-rate HZ]

(``python -m edgert.train`` takes the same arguments.) ``--data``:

* a CSV file: a header row with the channel names (delimiter ``,`` ``;`` or tab), an optional
  label column named by ``--labels`` (per-sample labels); non-numeric columns and time columns
  (``time``, ``timestamp``, ``t``, …) are skipped unless ``--channels`` names them. Headerless CSV: ``--channels`` names the columns, ``--labels`` is a column index.
* an ``.npz``: ``samples`` ``[n, C]`` and optional ``labels`` ``[n]`` (and ``channels``); or
  one ``[n, C]`` array per recording, labelled by its name without the ``_NNN`` suffix (the
  shipped ``edgert/data/itsc.npz``).
* a directory of class folders of headerless CSV files (the ITSC layout,
  ``<CLASS>/<CLASS>_00N.csv``): each file is a recording labelled by its folder.
* omitted: the ITSC copy shipped in ``edgert.data`` (channels ia, ib, ic, 1 kHz).

The model directory written to ``--out`` loads in the runtime as it is (docs/design.md,
"Model directory"): normalization, every variant with its tensor specs, int8 fidelity, the
exact command and seed, TensorFlow/LiteRT versions, sha256 of every file. Variants:

* ``dynamic`` (``*_dyn.tflite``, ``[-1, 1, W, C]``): the CPU path (LiteRT/XNNPACK). In the
  autoencoder each Conv2DTranspose is rewritten as its exact sub-pixel equivalent (Conv2D +
  constant-shape Reshape, same weights, float outputs checked equal): a TRANSPOSE_CONV with a
  dynamic batch needs a run-time output shape, which in LiteRT makes every later tensor
  dynamic (unallocated until the first invoke, not taken by XNNPACK, ~5x slower here).
* ``b1`` (``*_b1.tflite``, ``[1, 1, W, C]``): for the Edge TPU (CONV_2D, TRANSPOSE_CONV v2,
  RELU, AVERAGE_POOL_2D only).
* ``packed`` (``*_packed.tflite``, ``[1, B, W, C]``, ``"layout": "packed"``, ``"rows": B``):
  B windows in one invoke (the Edge TPU cannot batch); ``(1, k)`` kernels keep the B rows
  independent, so row j of the output is what ``b1`` gives for window j. It is made from the
  converted b1 flatbuffer itself (``packed_from_b1``: activation shapes ``[1, 1, w, c]`` ->
  ``[1, B, w, c]``; weights, biases and quantization parameters are b1's bytes), so its int8
  outputs equal B b1 invokes exactly (checked at export: ``packed_equals_b1``).

The bias-free Conv2DTranspose layers of the autoencoder are on purpose: with a bias, the
TFLite converter fuses BiasAdd + the following ReLU into TRANSPOSE_CONV (fused activation ->
op version 4, newer than the last edgetpu_compiler accepts). Without one they convert to
TRANSPOSE_CONV v2 followed by a separate RELU op.

Autoencoder procedure (data with >= 3 normal recordings, e.g. ITSC): the last normal recording
(``--holdout``) is never used for training or calibration; the threshold is factor x quantile of
int8 scores that leave-one-recording-out models (same config and seed, trained on the other
training recordings) give the recording they never saw; the shipped model is trained on all
training recordings. ``--cv N`` (N > 0) also writes ``folds/<recording>/``: one model per
normal recording held out (same procedure, own threshold), used by ``edgert eval itsc``.
With fewer normal recordings (one stream), each stream's normal samples are split in time: the
first 80 % train, the threshold is calibrated on the held-back last 20 %.

Classifier procedure: ``--cv N`` (default 5) cross-validation folds first (recordings named
``…_NNN`` are grouped by repetition NNN: leave-one-repetition-out; otherwise every recording is
cut into N consecutive blocks and block i of every recording is held out in fold i); each
fold's int8 dynamic model is written to ``folds/<fold>/`` and scored through LiteRT on its
held-out windows (accuracy, confusion, float-vs-int8 argmax agreement). The shipped model is
then trained on all the data. Training windows are cut with a hop of 2 (phase augmentation)
and every window gets a random gain per channel (+-5 %: healthy recordings differ by a few
per cent per phase, e.g. SC_HLT_001's phase B is 7 % low), with label smoothing 0.1.
Before each training, ``label_audit`` looks at the training recordings only: a recording whose
per-channel RMS and channel correlations (for these currents: the phase amplitudes and phase
angles) sit nearer another class's median than its own is not trained on (it stays in every
evaluation). On ITSC it drops SC_A0_B2_C0_002 and SC_A1_B0_C0_002 (healthy signals),
SC_A0_B1_C0_005 and SC_A1_B0_C0_005 (other fault patterns) whenever they are in the training
set, so no fold is taught that healthy-looking windows are faults.

Shipped models, reproduced exactly (bit-identical .tflite files, same metrics) on this
machine (x86-64, TensorFlow 2.21 CPU, oneDNN off, op determinism on) by::

    edgert train --kind autoencoder --window 64 --hop 16 --channels ia,ib,ic \\
        --sample-rate 1000 --out compiled_models/motor-ae --seed 0 --epochs 150 --cv 5
    edgert train --kind classifier --window 64 --hop 16 --channels ia,ib,ic \\
        --sample-rate 1000 --out compiled_models/motor-cnn --seed 0 --epochs 20 --cv 5

(``--data /path/to/ITSC`` gives the same arrays as the shipped copy.) Another CPU or
TensorFlow version may sum floats in another order; the recorded metrics are then expected to
move by a few windows, not to be bit-identical.

The runtime never imports this module. TensorFlow (the ``train`` extra) is imported lazily,
inside the functions that need it; without it ``edgert train`` exits 2 and says
``pip install 'edgert[train]'``. The int8 checks run the converted models through LiteRT
(``ai_edge_litert``, a runtime dependency), exactly as the runtime will.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import os
import platform
import re
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = [
    "AEConfig",
    "CNNConfig",
    "Recording",
    "Dataset",
    "load_dataset",
    "load_recordings",
    "make_windows",
    "fit_normalization",
    "build_autoencoder",
    "build_subpixel_autoencoder",
    "build_classifier",
    "to_subpixel",
    "train_autoencoder",
    "train_classifier_model",
    "convert_int8",
    "export_dynamic",
    "export_b1",
    "export_packed",
    "packed_from_b1",
    "calibrate_threshold",
    "Int8Model",
    "tflite_ops",
    "train_motor_ae",
    "train_ae_split",
    "train_classifier",
    "cv_folds",
    "label_audit",
    "add_parsers",
    "cmd_train",
    "main",
]

TRAIN_EXTRA_HINT = "pip install 'edgert[train]'"
#: header names never taken as channels unless --channels names them
TIME_COLUMNS = ("t", "time", "timestamp", "datetime", "date", "time_s", "time_ms", "ts", "index")
ITSC_ATTRIBUTION = ("ITSC (MIT licence; University of Guanajuato, Cardenas-Cornejo et al., "
                    "Measurement 222:113680, 2023)")


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------

@dataclass
class AEConfig:
    """Everything that defines an autoencoder training run (recorded in the manifest)."""

    name: str = "motor-ae"
    window: int = 64                 # W, samples
    hop: int = 16                    # H, samples: runtime hop, and the hop of all scored windows
    # hop of the windows the network is fitted on: denser than ``hop`` as augmentation (every
    # 2nd phase offset of the 60 Hz waveform instead of every 16th sample); normalization,
    # threshold and metrics all use ``hop``
    train_hop: int = 2
    channels: tuple[str, ...] = ("ia", "ib", "ic")
    sample_rate_hz: int | None = 1000
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
    # rows B of the packed [1, B, W, C] variant
    packed_rows: int = 16
    # single-stream data (fewer than 3 normal recordings): fraction of each normal stream, at
    # its end, held back from training to calibrate the threshold
    holdout_fraction: float = 0.2


@dataclass
class CNNConfig:
    """Everything that defines a classifier training run (recorded in the manifest)."""

    name: str = "motor-cnn"
    window: int = 64
    hop: int = 16                    # runtime hop and the hop of every scored window
    train_hop: int = 2               # hop of the fitted windows (phase augmentation)
    channels: tuple[str, ...] = ("ia", "ib", "ic")
    sample_rate_hz: int | None = 1000
    class_names: tuple[str, ...] = ()
    # architecture: one Conv2D (1, kernel) stride (1, 2) + ReLU per entry of filters, then
    # AveragePooling2D over the remaining width and a 1x1 Conv2D to the class logits
    kernel: int = 5
    filters: tuple[int, ...] = (16, 32, 32)
    # training
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 3e-3      # Adam, cosine decay to 2 % over all steps
    label_smoothing: float = 0.1
    channel_gain: float = 0.05       # every fitted window x (1 + U(-g, g)) per channel
    # quantization: representative set = this many training windows (no headroom: the
    # normalization is fitted on every class, faults included)
    rep_windows: int = 800
    packed_rows: int = 16
    cv: int = 5                      # folds (0: none)
    # leave training recordings whose label disagrees with the data out of training (see
    # ``label_audit``); they are still in every evaluation
    audit_labels: bool = True


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

@dataclass
class Recording:
    """One continuous recording: samples and either one label or one label per sample."""

    name: str
    x: np.ndarray                       # float32 [n, C]
    label: str | None = None            # the recording's label (class folder, name prefix)
    labels: np.ndarray | None = None    # per-sample labels (str) from a label column


@dataclass
class Dataset:
    recordings: list
    channels: list
    source: str                         # what --data was ("shipped ITSC" or the path)
    sha256: str                         # over the data files read
    default_itsc: bool = False

    def names(self) -> list[str]:
        return [r.name for r in self.recordings]

    def by_name(self) -> dict[str, Recording]:
        return {r.name: r for r in self.recordings}

    @property
    def is_itsc(self) -> bool:
        return bool(self.recordings) and all(
            re.fullmatch(r"SC_(HLT|A\d_B\d_C\d)_\d{3}", r.name) for r in self.recordings)


def recording_class(name: str) -> str:
    """``"SC_HLT_003"`` -> ``"SC_HLT"`` (a name without a ``_`` is its own class)."""
    return name.rsplit("_", 1)[0]


def load_recordings(data: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Recordings by name, float32 [n, C] (any labels dropped).

    ``data``: None (the copy shipped in ``edgert.data``), an ``.npz`` file, or a directory
    holding ``<CLASS>/<name>.csv`` (or ``<name>.csv``) headerless CSV files.
    """
    return {r.name: r.x for r in load_dataset(data).recordings}


def _file_sha(h, path: Path, rel: str) -> None:
    h.update(rel.encode() + b"\0")
    with open(path, "rb") as fh:
        for blk in iter(lambda: fh.read(1 << 20), b""):
            h.update(blk)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _label_str(v) -> str:
    """Labels as strings; 1.0 and 1 both become "1"."""
    s = str(v).strip()
    try:
        f = float(s)
        if f.is_integer():
            return str(int(f))
    except ValueError:
        pass
    return s


def _read_csv(path: Path, channels: Sequence[str] | None, label_col: str | None):
    """-> (x float32 [n, C], channel names, per-sample labels or None)."""
    text = path.read_text()
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    delim = max((",", ";", "\t"), key=first.count) if any(d in first for d in ",;\t") else ","
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=delim) if any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{path}: empty CSV file")
    header = None
    if not all(_is_number(c) for c in rows[0]):
        header = [c.strip() for c in rows[0]]
        rows = rows[1:]
    if not rows:
        raise ValueError(f"{path}: no data rows")
    ncol = len(rows[0])
    if any(len(r) != ncol for r in rows):
        raise ValueError(f"{path}: rows have different numbers of fields")
    names = header or [str(i) for i in range(ncol)]

    def col_index(key: str, what: str) -> int:
        if key in names:
            return names.index(key)
        if key.isdigit() and int(key) < ncol:
            return int(key)
        raise ValueError(f"{path}: no {what} column {key!r} (columns: {', '.join(names)})")

    li = None if label_col is None else col_index(label_col, "label")
    labels = None if li is None else np.array([_label_str(r[li]) for r in rows])
    numeric = [i for i in range(ncol) if i != li and _is_number(rows[0][i])
               and names[i].strip().lower() not in TIME_COLUMNS]
    if header is not None and channels:
        use = [col_index(c, "channel") for c in channels]
        ch_names = [names[i] for i in use]
    else:
        use = numeric
        if channels:  # headerless: --channels names the columns
            if len(channels) != len(use):
                raise ValueError(f"{path}: {len(use)} data columns but --channels names "
                                 f"{len(channels)}")
            ch_names = list(channels)
        else:
            ch_names = [names[i] for i in use] if header else [f"ch{i}" for i in range(len(use))]
    if not use:
        raise ValueError(f"{path}: no numeric channel columns")
    try:
        x = np.array([[float(r[i]) for i in use] for r in rows], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{path}: non-numeric value in a channel column ({exc})") from None
    return x.astype(np.float32), ch_names, labels


def load_dataset(data: str | os.PathLike | None = None, channels: Sequence[str] | None = None,
                 labels: str | None = None) -> Dataset:
    """Read ``--data`` into recordings (see the module docstring for the formats)."""
    if data is None:
        from importlib import resources

        from edgert.data import ITSC_CHANNELS, itsc_class, itsc_names, itsc_recording

        h = hashlib.sha256()
        ref = resources.files("edgert.data").joinpath("itsc.npz")
        with resources.as_file(ref) as p:
            _file_sha(h, Path(p), "itsc.npz")
        recs = [Recording(n, np.array(itsc_recording(n), dtype=np.float32), itsc_class(n))
                for n in itsc_names()]
        chans = list(channels) if channels else list(ITSC_CHANNELS)
        if len(chans) != 3:
            raise ValueError("the shipped ITSC data has 3 channels")
        return Dataset(recs, chans, "edgert/data/itsc.npz (shipped)", h.hexdigest(),
                       default_itsc=True)
    p = Path(data)
    h = hashlib.sha256()
    if p.is_file() and p.suffix == ".npz":
        _file_sha(h, p, p.name)
        with np.load(p, allow_pickle=False) as z:
            if "samples" in z.files:
                x = np.asarray(z["samples"], dtype=np.float32)
                if x.ndim == 1:
                    x = x[:, None]
                lab = (np.array([_label_str(v) for v in z["labels"]]) if "labels" in z.files
                       else None)
                if labels is not None and lab is None:
                    raise ValueError(f"{p}: --labels given but the npz has no 'labels' array")
                if lab is not None and len(lab) != len(x):
                    raise ValueError(f"{p}: 'labels' has {len(lab)} entries, 'samples' {len(x)}")
                names = ([str(c) for c in z["channels"]] if "channels" in z.files
                         else [f"ch{i}" for i in range(x.shape[1])])
                if channels:
                    if len(channels) != x.shape[1]:
                        raise ValueError(f"{p}: {x.shape[1]} channels but --channels names "
                                         f"{len(channels)}")
                    names = list(channels)
                recs = [Recording(p.stem, x, None, lab)]
            else:
                recs = []
                for k in sorted(z.files):
                    x = np.asarray(z[k], dtype=np.float32)
                    recs.append(Recording(k, x[:, None] if x.ndim == 1 else x, recording_class(k)))
                C = recs[0].x.shape[1] if recs else 0
                names = list(channels) if channels else [f"ch{i}" for i in range(C)]
        return _checked(Dataset(recs, names, str(data), h.hexdigest()))
    if p.is_file():
        _file_sha(h, p, p.name)
        x, names, lab = _read_csv(p, channels, labels)
        if labels is None:
            lab = None
        return _checked(Dataset([Recording(p.stem, x, None, lab)], names, str(data), h.hexdigest()))
    if p.is_dir():
        files = sorted(p.rglob("*.csv"))
        if not files:
            raise FileNotFoundError(f"{p}: no *.csv recordings found")
        recs, names = [], None
        for f in files:
            rel = f.relative_to(p)
            _file_sha(h, f, rel.as_posix())
            x, ch, lab = _read_csv(f, channels, labels)
            label = rel.parts[0] if len(rel.parts) > 1 else recording_class(f.stem)
            if names is None:
                names = ch
            elif ch != names:
                raise ValueError(f"{f}: channels {ch} differ from the other files' {names}")
            recs.append(Recording(f.stem, x, label, lab if labels is not None else None))
        return _checked(Dataset(recs, names, str(data), h.hexdigest()))
    raise FileNotFoundError(f"{p}: expected a CSV file, an .npz file or a directory of CSV files")


def _checked(ds: Dataset) -> Dataset:
    C = len(ds.channels)
    seen = set()
    for r in ds.recordings:
        if r.x.ndim != 2 or r.x.shape[1] != C:
            raise ValueError(f"recording {r.name}: shape {r.x.shape}, expected [n, {C}]")
        if not np.all(np.isfinite(r.x)):
            raise ValueError(f"recording {r.name}: NaN or Inf samples")
        if r.name in seen:
            raise ValueError(f"two recordings are named {r.name!r}")
        seen.add(r.name)
    return ds


def make_windows(x: np.ndarray, window: int, hop: int) -> np.ndarray:
    """Windows ``[n, W, C]`` starting at 0, hop, 2·hop, … (only complete windows)."""
    x = np.asarray(x, dtype=np.float32)
    n = (x.shape[0] - window) // hop + 1
    if n <= 0:
        return np.zeros((0, window, x.shape[1]), np.float32)
    idx = np.arange(n)[:, None] * hop + np.arange(window)[None, :]
    return np.ascontiguousarray(x[idx])


def window_starts(lo: int, hi: int, window: int, hop: int) -> np.ndarray:
    """Starts of the complete windows inside samples [lo, hi): lo, lo+hop, …"""
    n = (hi - lo - window) // hop + 1
    return lo + np.arange(max(n, 0), dtype=np.int64) * hop


def cut(x: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    idx = np.asarray(starts, np.int64)[:, None] + np.arange(window)[None, :]
    return np.ascontiguousarray(np.asarray(x, np.float32)[idx]) if len(starts) else \
        np.zeros((0, window, x.shape[1]), np.float32)


def window_labels(rec: Recording, starts: np.ndarray, window: int) -> list:
    """Label of each window: the recording's, or the samples' label when all samples of the
    window share it (None for a window that straddles a label change)."""
    if rec.labels is None:
        return [rec.label] * len(starts)
    out = []
    for s in starts:
        seg = rec.labels[s:s + window]
        out.append(seg[0] if np.all(seg == seg[0]) else None)
    return out


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
# progress
# ---------------------------------------------------------------------------------------------

class Progress:
    """A one-line progress bar per training, on stderr: ``label [#####-----] 12/150 loss …``."""

    def __init__(self, label: str, total: int, stream=None, width: int = 30):
        self.label, self.total, self.width = label, max(int(total), 1), width
        self.stream = stream if stream is not None else sys.stderr
        self.t0 = time.time()

    def update(self, done: int, loss: float | None = None) -> None:
        k = int(self.width * done / self.total)
        bar = "#" * k + "-" * (self.width - k)
        extra = "" if loss is None else f" loss {loss:.5g}"
        end = "\n" if done >= self.total else ""
        self.stream.write(f"\r  {self.label} [{bar}] epoch {done}/{self.total}{extra} "
                          f"{time.time() - self.t0:.0f}s{end}")
        self.stream.flush()

    def keras_callback(self):
        tf = _tf()
        prog = self

        class _CB(tf.keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                prog.update(epoch + 1, (logs or {}).get("loss"))

        return _CB()


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


def build_autoencoder(cfg: AEConfig, batch: int | None = None, rows: int = 1):
    """Keras model ``[batch, rows, W, C] -> [batch, rows, W, C]`` (``batch=None``: dynamic).

    Encoder: one Conv2D ``(1, k)`` stride ``(1, 2)`` + ReLU per entry of ``cfg.filters``, then
    a ``(1, W / 2**len(filters))`` valid Conv2D with ``cfg.latent`` filters and no activation,
    which collapses the window to a ``[1, 1, latent]`` code. Decoder: the mirror image with
    Conv2DTranspose, each followed by its own ReLU layer, and a linear Conv2D with C filters.
    ``rows > 1`` (with ``batch=1``) is the packed layout: every kernel is ``(1, k)``, so the
    rows never mix.

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
        raise ValueError(f"window {W} is not divisible by 2**{n_down} (the autoencoder halves "
                         f"it {n_down} times)")
    w_code = W // 2 ** n_down
    inp = tf.keras.Input(shape=(rows, W, C), batch_size=batch, name="x")
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


_SHUFFLE_CLS = None


def Shuffle(w: int, f: int, **kw):
    """A Keras layer reshaping ``[.., 1, w', f'] -> [-1, 1, w, f]`` with a constant shape.

    Keras' Reshape computes the batch with SHAPE/PACK, which would make the converted RESHAPE
    output dynamic again (see ``build_subpixel_autoencoder``). The layer class is made on the
    first call (TensorFlow is imported lazily) and registered for ``.keras`` loading as
    ``edgert>Shuffle``; every model builder (here and ``edgert.evaluate.skab``) uses this one.
    """
    global _SHUFFLE_CLS
    if _SHUFFLE_CLS is None:
        tf = _tf()

        @tf.keras.utils.register_keras_serializable(package="edgert", name="Shuffle")
        class _Shuffle(tf.keras.layers.Layer):
            def __init__(self, w, f, **kw):
                super().__init__(**kw)
                self.w, self.f = int(w), int(f)

            def call(self, x):
                return tf.keras.ops.reshape(x, (-1, 1, self.w, self.f))

            def compute_output_shape(self, input_shape):
                return (input_shape[0], 1, self.w, self.f)

            def get_config(self):
                return {**super().get_config(), "w": self.w, "f": self.f}

        _SHUFFLE_CLS = _Shuffle
    return _SHUFFLE_CLS(w, f, **kw)


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
        check_subpixel(model, sp, check)
    return sp


def check_subpixel(model, sp, check: np.ndarray) -> None:
    """Raise unless the sub-pixel model ``sp`` gives ``model``'s float outputs on ``check``."""
    a = np.asarray(model(check, training=False))
    b = np.asarray(sp(check, training=False))
    err = float(np.abs(a - b).max())
    if not err < 1e-4 * max(1.0, float(np.abs(a).max())):
        raise RuntimeError(f"sub-pixel decoder differs from Conv2DTranspose: {err}")


def train_autoencoder(cfg: AEConfig, x_train: np.ndarray, seed: int, verbose: int = 0,
                      label: str = "autoencoder"):
    """Fits a fresh autoencoder on normalized windows ``[n, 1, W, C]``; returns (model, history)."""
    tf = _tf()
    set_seed(seed)
    model = build_autoencoder(cfg, batch=None)
    steps = cfg.epochs * int(np.ceil(len(x_train) / cfg.batch_size))
    lr = tf.keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=steps,
                                                   alpha=0.02)
    model.compile(optimizer=tf.keras.optimizers.Adam(lr), loss="mse")
    cb = Progress(label, cfg.epochs).keras_callback()
    hist = model.fit(x_train, x_train, batch_size=cfg.batch_size, epochs=cfg.epochs,
                     shuffle=True, verbose=verbose, callbacks=[cb])
    return model, hist.history


def build_classifier(cfg: CNNConfig, batch: int | None = None, rows: int = 1):
    """Keras model ``[batch, rows, W, C] -> [batch, rows, 1, K]`` logits (K classes).

    One Conv2D ``(1, k)`` stride ``(1, 2)`` 'same' + ReLU per entry of ``cfg.filters``, then
    AveragePooling2D ``(1, w)`` over the remaining width ``w`` (AVERAGE_POOL_2D: a global
    average per row, phase-invariant), then a 1x1 Conv2D with K filters (the classifier head as
    a CONV_2D, so the rows of a packed ``[1, B, W, C]`` input stay independent; no SOFTMAX:
    the Edge TPU maps it only for 1-D inputs, and the argmax of the logits is the class).
    Converts to CONV_2D (ReLU fused), AVERAGE_POOL_2D and CONV_2D only.
    """
    tf = _tf()
    L = tf.keras.layers
    if not cfg.class_names:
        raise ValueError("class_names is empty")
    W, C = cfg.window, len(cfg.channels)
    inp = tf.keras.Input(shape=(rows, W, C), batch_size=batch, name="x")
    h = inp
    for i, f in enumerate(cfg.filters):
        h = L.Conv2D(f, (1, cfg.kernel), strides=(1, 2), padding="same", name=f"conv{i}")(h)
        h = L.ReLU(name=f"conv{i}_relu")(h)
    w = int(h.shape[2])
    h = L.AveragePooling2D((1, w), name="pool")(h)
    out = L.Conv2D(len(cfg.class_names), (1, 1), name="logits")(h)
    return tf.keras.Model(inp, out, name=cfg.name.replace("-", "_"))


def train_classifier_model(cfg: CNNConfig, x: np.ndarray, y: np.ndarray, seed: int,
                           label: str = "classifier"):
    """Fits a fresh classifier on normalized windows ``[n, 1, W, C]`` with class indices ``y``.

    Every epoch the windows are shuffled and each gets a random gain per channel
    (``1 + U(-g, g)``, g = ``cfg.channel_gain``), both from a numpy generator seeded with
    ``seed``; one ``fit`` call per epoch (Adam, cosine-decayed learning rate over all steps,
    categorical cross-entropy on the logits with label smoothing). Returns (model, history).
    """
    tf = _tf()
    set_seed(seed)
    model = build_classifier(cfg, batch=None)
    n, K = len(x), len(cfg.class_names)
    steps = cfg.epochs * int(np.ceil(n / cfg.batch_size))
    lr = tf.keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=steps,
                                                   alpha=0.02)
    model.compile(optimizer=tf.keras.optimizers.Adam(lr),
                  loss=tf.keras.losses.CategoricalCrossentropy(
                      from_logits=True, label_smoothing=cfg.label_smoothing))
    yy = np.eye(K, dtype=np.float32)[np.asarray(y, np.int64)][:, None, None, :]
    rng = np.random.default_rng(seed)
    prog = Progress(label, cfg.epochs)
    losses = []
    for e in range(cfg.epochs):
        perm = rng.permutation(n)
        xe = x[perm]
        if cfg.channel_gain:
            g = 1.0 + cfg.channel_gain * rng.uniform(-1.0, 1.0, (n, 1, 1, x.shape[-1]))
            xe = xe * g.astype(np.float32)
        h = model.fit(xe, yy[perm], batch_size=cfg.batch_size, epochs=e + 1, initial_epoch=e,
                      shuffle=False, verbose=0)
        losses.append(float(h.history["loss"][-1]))
        prog.update(e + 1, losses[-1])
    return model, {"loss": losses}


def representative_set(cfg: AEConfig, x_train: np.ndarray, seed: int) -> np.ndarray:
    """Calibration inputs for the quantizer: training windows, and the same × rep_headroom."""
    rng = np.random.default_rng(seed)
    n = min(cfg.rep_windows, len(x_train))
    pick = np.sort(rng.choice(len(x_train), size=n, replace=False))
    base = x_train[pick]
    sets = [base]
    if getattr(cfg, "rep_headroom", 1.0) and getattr(cfg, "rep_headroom", 1.0) != 1.0:
        sets.append(base * np.float32(cfg.rep_headroom))
    return np.concatenate(sets).astype(np.float32)


def convert_int8(model, rep: np.ndarray) -> bytes:
    """Full-integer int8 TFLite (int8 input and output) calibrated on ``rep``
    ``[n, rows, W, C]`` (one sample per row of ``rep``)."""
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


def clone_with_batch(cfg, model, batch: int | None, rows: int = 1):
    build = build_classifier if isinstance(cfg, CNNConfig) else build_autoencoder
    m = build(cfg, batch=batch, rows=rows)
    m.set_weights(model.get_weights())
    return m


def export_dynamic(cfg, model, rep: np.ndarray) -> bytes:
    """int8 dynamic-batch variant of the trained (batch None) ``model``."""
    if isinstance(cfg, CNNConfig):
        return convert_int8(model, rep)
    if cfg.dyn_decoder == "subpixel":
        return convert_int8(to_subpixel(cfg, model, batch=None, check=rep[:256]), rep)
    if cfg.dyn_decoder == "transpose":
        return convert_int8(model, rep)
    raise ValueError(f"dyn_decoder must be 'subpixel' or 'transpose', not {cfg.dyn_decoder!r}")


def export_b1(cfg, model, rep: np.ndarray) -> bytes:
    """int8 fixed ``[1, 1, W, C]`` variant (Conv2DTranspose kept: TRANSPOSE_CONV for the TPU)."""
    return convert_int8(clone_with_batch(cfg, model, 1), rep)


def packed_from_b1(b1: bytes, rows: int) -> bytes:
    """The packed ``[1, rows, W, C]`` variant made from the converted b1 model itself.

    Rewrites the b1 flatbuffer (no TensorFlow): every activation tensor ``[1, 1, w, c]``
    becomes ``[1, rows, w, c]`` (shape and shape signature), and each TRANSPOSE_CONV's constant
    output shape ``[1, 1, w, c]`` becomes ``[1, rows, w, c]``. Weights, biases and every
    quantization parameter stay b1's bytes, and all kernels are ``(1, k)``, so row j of the
    packed output is exactly what b1 gives for window j. (Converting a rows-B Keras model
    instead calibrates on float activations that TF sums in a shape-dependent order: the
    activation scales then differ from b1's in the last float bits, and a few int8 outputs by
    1 LSB.)
    """
    import flatbuffers

    try:
        from ai_edge_litert import schema_py_generated as S
    except ImportError:  # pragma: no cover
        import tflite as S  # type: ignore
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    m = S.ModelT.InitFromPackedBuf(b1, 0)
    if len(m.subgraphs) != 1:
        raise ValueError(f"expected one subgraph, found {len(m.subgraphs)}")
    g = m.subgraphs[0]
    names = {v: k for k, v in vars(S.BuiltinOperator).items() if not k.startswith("_")}

    def constant(t) -> bool:
        data = m.buffers[t.buffer].data
        return data is not None and len(data) > 0

    for op in g.operators:
        oc = m.operatorCodes[op.opcodeIndex]
        if names.get(max(oc.builtinCode, oc.deprecatedBuiltinCode)) == "TRANSPOSE_CONV":
            t = g.tensors[op.inputs[0]]
            shp = np.frombuffer(bytes(m.buffers[t.buffer].data), "<i4").copy()
            if len(shp) != 4 or shp[0] != 1 or shp[1] != 1:
                raise ValueError(f"TRANSPOSE_CONV output shape {shp.tolist()} is not [1, 1, w, c]")
            shp[1] = rows
            buf = S.BufferT()
            buf.data = np.frombuffer(shp.astype("<i4").tobytes(), np.uint8)
            m.buffers.append(buf)  # a buffer of its own (constant buffers may be shared)
            t.buffer = len(m.buffers) - 1
    for t in g.tensors:
        if constant(t):
            continue
        shape = [int(v) for v in (t.shape if t.shape is not None else [])]
        if len(shape) != 4 or shape[0] != 1 or shape[1] != 1:
            raise ValueError(f"activation tensor {t.name!r} has shape {shape}, not [1, 1, w, c]")
        t.shape = np.array([1, rows] + shape[2:], np.int32)
        if t.shapeSignature is not None and len(t.shapeSignature):
            sig = [int(v) for v in t.shapeSignature]
            t.shapeSignature = np.array([sig[0], rows] + sig[2:], np.int32)
    b = flatbuffers.Builder(len(b1) + 4096)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def export_packed(cfg, model, rep: np.ndarray, rows: int, b1: bytes | None = None) -> bytes:
    """int8 fixed ``[1, rows, W, C]`` variant: ``packed_from_b1`` of the b1 variant."""
    return packed_from_b1(b1 if b1 is not None else export_b1(cfg, model, rep), rows)


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
    ``recon_error`` kernel contract (docs/design.md), in float64. A packed ``[1, B, W, C]``
    model takes windows B at a time as rows (``rows``).
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
        self.rows = self.in_shape[1]
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
        """int8 ``[n, 1, W, C]`` in -> int8 ``[n, …]`` out (one row per window), invoking
        ``batch`` windows at a time (a partial last batch is zero-padded). A packed model takes
        ``rows`` windows per invoke as ``[1, rows, W, C]``; its output row j is returned as
        ``[1, …]`` like the other variants' rows."""
        if self.rows > 1:
            return self._run_packed(q)
        b = self.fixed_batch or batch or 32
        it = self._interp(b)
        iidx = it.get_input_details()[0]["index"]
        oidx = it.get_output_details()[0]["index"]
        out = None
        for s in range(0, len(q), b):
            chunk = q[s : s + b]
            k = len(chunk)
            if k < b:
                chunk = np.concatenate([chunk, np.zeros((b - k,) + q.shape[1:], q.dtype)])
            it.set_tensor(iidx, chunk)
            it.invoke()
            o = it.get_tensor(oidx)[:k]
            if out is None:
                out = np.empty((len(q),) + o.shape[1:], o.dtype)
            out[s : s + k] = o
        return out if out is not None else np.empty((0,) + tuple(self.out_shape[1:]), self.out_dtype)

    def _run_packed(self, q: np.ndarray) -> np.ndarray:
        B = self.rows
        it = self._interp(1)
        iidx = it.get_input_details()[0]["index"]
        oidx = it.get_output_details()[0]["index"]
        row_shape = (1, *self.out_shape[2:])
        out = np.empty((len(q),) + row_shape, self.out_dtype)
        buf = np.zeros((1, B) + q.shape[2:], q.dtype)
        for s in range(0, len(q), B):
            k = min(B, len(q) - s)
            buf[:] = 0
            buf[0, :k] = q[s : s + k, 0]
            it.set_tensor(iidx, buf)
            it.invoke()
            out[s : s + k] = it.get_tensor(oidx)[0, :k].reshape((k,) + row_shape)
        return out

    def errors(self, xn: np.ndarray, batch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores [n], per-channel MSE [n, C]) of normalized windows ``[n, 1, W, C]``."""
        q = self.quantize(xn)
        oq = self.run_q(q, batch)
        x = (q.astype(np.float64) - self.in_zp) * self.in_scale
        y = (oq.astype(np.float64) - self.out_zp) * self.out_scale
        ch = ((x - y) ** 2).mean(axis=(1, 2)).astype(np.float32)
        return ch.astype(np.float64).mean(axis=1).astype(np.float32), ch

    def logits(self, xn: np.ndarray, batch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(dequantized logits [n, K], int8 outputs [n, K]) of normalized windows."""
        oq = self.run_q(self.quantize(xn), batch).reshape(len(xn), -1)
        return (oq.astype(np.float64) - self.out_zp) * self.out_scale, oq


def float_errors(model, xn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = model.predict(xn, batch_size=256, verbose=0)
    ch = ((xn.astype(np.float64) - y) ** 2).mean(axis=(1, 2))
    return ch.mean(axis=1), ch


def float_logits(model, xn: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(xn, batch_size=256, verbose=0)).reshape(len(xn), -1)


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


def _edgetpu_verdict(path: Path) -> dict | None:
    """``edgert check-model``'s offline verdict (Coral's documented rules), if available."""
    try:
        from edgert.edgetpu_check import check
    except Exception:  # pragma: no cover - the checker is optional here
        return None
    try:
        r = check(path)
    except Exception as exc:  # pragma: no cover
        return {"error": str(exc)}
    return {"mappable": bool(r.mappable), "tpu_ops": int(r.tpu_ops),
            "cpu_ops": int(len(r.ops) - r.tpu_ops), "min_runtime": int(r.min_runtime)}


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------

def _r(x: float, nd: int = 6) -> float:
    return float(f"{float(x):.{nd}g}")


def _quantile(scores: np.ndarray, q: float) -> float:
    # "higher": an actual observed score, never interpolated below the largest ones
    return float(np.quantile(np.asarray(scores, np.float64), q, method="higher"))


def _io_json(m: Int8Model) -> dict:
    io_ = m.io()
    for k in io_:
        io_[k]["scale"] = float(io_[k]["scale"])  # exact float32 value as read from the model
    return io_


def _cfg_json(cfg) -> dict:
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
        elif "pool_size" in c:
            desc += f"(pool={tuple(c['pool_size'])})"
        shape = tuple(layer.output.shape)
        rows.append(f"{layer.name}: {desc} -> {shape}")
    return rows


def _litert_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("ai-edge-litert")
    except Exception:
        return None


def _versions(tf) -> dict:
    return {"tensorflow": tf.__version__,
            "keras": tf.keras.__version__ if hasattr(tf.keras, "__version__") else None,
            "litert": _litert_version(), "python": platform.python_version()}


def _data_desc(ds: Dataset | None) -> str:
    if ds is None or ds.default_itsc:
        return f"{ITSC_ATTRIBUTION}, shipped as edgert/data/itsc.npz"
    if ds.is_itsc:
        return f"{ITSC_ATTRIBUTION}, read from {ds.source}"
    return ds.source


def _variant_entry(fname: str, m: Int8Model, batch, rows: int | None = None) -> dict:
    v = {"file": fname, "batch": batch}
    if rows is not None:
        v.update({"layout": "packed", "rows": rows})
    v.update(_io_json(m))
    return v


def _speed(models: dict, reps: int = 300) -> dict:
    """Rough LiteRT invoke cost per window in µs (one thread, this machine, shared;
    indicative). ``models``: name -> (Int8Model, batch)."""
    out = {}
    for name, (m, b) in models.items():
        it = m._interp(b if m.fixed_batch is None else m.fixed_batch)
        d = it.get_input_details()[0]
        it.set_tensor(d["index"], np.zeros(d["shape"], np.int8))
        it.invoke()
        t = time.perf_counter()
        for _ in range(reps):
            it.invoke()
        per_invoke = (time.perf_counter() - t) / reps
        windows = int(d["shape"][0]) * (m.rows if m.rows > 1 else 1)
        out[name] = round(per_invoke / windows * 1e6, 2)
    return out


def _write_fold_dir(d: Path, manifest: dict, files: dict[str, bytes]) -> dict:
    """A minimal model directory (one or more variants + manifest) for a CV fold."""
    from .models import write_model_dir as write_dir

    if d.exists():
        shutil.rmtree(d)
    write_dir(d, manifest, files)
    return manifest


@dataclass
class Exported:
    """The three int8 variants of one trained model: flatbuffers and their LiteRT runners."""

    dyn_bytes: bytes
    b1_bytes: bytes
    packed_bytes: bytes
    dyn: Int8Model
    b1: Int8Model
    packed: Int8Model


def export_variants(cfg, model, rep: np.ndarray) -> Exported:
    """Converts the trained (batch None) ``model`` to the dynamic, b1 and packed int8 variants,
    all calibrated on the representative set ``rep``."""
    dyn_bytes = export_dynamic(cfg, model, rep)
    b1_bytes = export_b1(cfg, model, rep)
    packed_bytes = packed_from_b1(b1_bytes, cfg.packed_rows)
    return Exported(dyn_bytes, b1_bytes, packed_bytes, Int8Model(dyn_bytes), Int8Model(b1_bytes),
                    Int8Model(packed_bytes))


def variant_files(name: str) -> dict[str, str]:
    """File names of a model directory: variant -> file, plus ``"float"`` (the Keras model)."""
    return {"dynamic": f"{name}_dyn.tflite", "b1": f"{name}_b1.tflite",
            "packed": f"{name}_packed.tflite", "float": f"{name}_float.keras"}


def save_keras(model, path: Path) -> None:
    """``model.save(path)`` (Keras v3 zip), made byte-reproducible: Keras stamps the save time
    into ``metadata.json`` (``date_saved``) and into the weights entry's zip header; both are
    dropped, so the same weights give the same sha256 (training is reproducible here)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.keras")
    model.save(tmp)
    strip_keras_timestamps(tmp, path)
    tmp.unlink()


def strip_keras_timestamps(src: Path, dst: Path) -> None:
    """Copies a ``.keras`` zip without its save time (see ``save_keras``)."""
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "metadata.json":
                meta = json.loads(data)
                meta.pop("date_saved", None)
                data = json.dumps(meta).encode()
            zi = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            zi.compress_type, zi.external_attr = info.compress_type, info.external_attr
            zout.writestr(zi, data)


def write_manifest(out: Path, manifest: dict) -> None:
    """Writes ``out/manifest.json`` (sha256 ``files`` computed, checked as the reader checks
    it, replaced atomically): `edgert.models.write_manifest`, the one manifest writer."""
    from .models import write_manifest as write

    write(out, manifest)


def write_model_dir(out: str | os.PathLike, cfg, model, ex: Exported, head: dict,
                    fidelity: dict, training: dict, metrics: dict,
                    manifest_now: bool = True, stem: str | None = None) -> dict:
    """Writes a model directory: the three int8 variants, the float Keras model they were
    converted from (``<name>_float.keras``, for ``edgert retrain``; the runtime never reads it)
    and, when ``manifest_now``, ``manifest.json`` (last).

    Args:
      out: directory (created).
      cfg: the AEConfig/CNNConfig of the run (name, packed_rows, recorded as training.config).
      model: the trained float Keras model (batch None).
      ex: its int8 variants (``export_variants``).
      head: manifest fields before ``variants`` (schema, name, kind, …, class_names).
      fidelity: the manifest's ``fidelity`` section.
      training: the first fields of ``training`` (command, seed, data, …); versions, config,
        architecture, ops, Edge TPU verdicts, LiteRT speed and ``metrics`` are appended.
    Returns the manifest (``files``, the sha256 of every file written, is filled in by
    ``write_manifest``; with ``manifest_now=False`` the caller adds to it and calls that). ``stem``: file
    name stem instead of ``cfg.name`` (``edgert retrain`` names each generation's files anew).
    """
    tf = _tf()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fn = variant_files(stem or cfg.name)
    for v, content in (("dynamic", ex.dyn_bytes), ("b1", ex.b1_bytes),
                       ("packed", ex.packed_bytes)):
        (out / fn[v]).write_bytes(content)
    # a fresh, uncompiled copy: no optimizer state (whose auto-numbered name, e.g. "adam_3",
    # depends on how many models this process compiled before)
    save_keras(clone_with_batch(cfg, model, None), out / fn["float"])
    manifest = {
        **head,
        "variants": {
            "dynamic": _variant_entry(fn["dynamic"], ex.dyn, "dynamic"),
            "b1": _variant_entry(fn["b1"], ex.b1, 1),
            "packed": _variant_entry(fn["packed"], ex.packed, 1, rows=cfg.packed_rows),
        },
        "fidelity": fidelity,
        "float_model": {
            "file": fn["float"], "format": "keras",
            "keras": getattr(tf.keras, "__version__", None),
            "input": "normalized windows [batch, 1, W, C] (batch None)",
            "note": "the float Keras model the int8 variants were converted from (the b1 "
                    "graph with a dynamic batch); edgert retrain fine-tunes it, the runtime "
                    "never reads it",
        },
        "training": {
            **training,
            **_versions(tf),
            "config": _cfg_json(cfg),
            "architecture": _arch_summary(model),
            "params": int(model.count_params()),
            "ops": {"dynamic": tflite_ops(ex.dyn_bytes), "b1": tflite_ops(ex.b1_bytes),
                    "packed": tflite_ops(ex.packed_bytes)},
            "edgetpu_check": {v: _edgetpu_verdict(out / fn[v]) for v in ("b1", "packed")},
            "litert_us_per_window": _speed({"dyn_b1": (ex.dyn, 1), "dyn_b32": (ex.dyn, 32),
                                            "b1": (ex.b1, 1), "packed": (ex.packed, 1)}),
            "metrics": metrics,
        },
        "files": {},  # the sha256 of each variant and of the float model: write_manifest
    }
    if manifest_now:
        write_manifest(out, manifest)
    return manifest


# ---------------------------------------------------------------------------------------------
# autoencoder: recordings (leave-one-recording-out calibration)
# ---------------------------------------------------------------------------------------------

def calibrate_threshold(cfg: AEConfig, recs: dict[str, np.ndarray], seed: int,
                        log=print) -> dict:
    """Leave-one-recording-out over the training recordings.

    For each training recording r, a model with the same config and seed is trained on the
    other training recordings (normalization fitted on them too), converted to int8, and scores
    the windows of r through LiteRT (dynamic variant, as shipped): these scores come from
    recordings the scoring model never saw, which is the situation the threshold must hold in
    (healthy recordings differ from each other by a few per cent).
    threshold = factor × quantile of the pooled held-out scores.
    """
    pooled, per_rec = [], {}
    for r in cfg.train_recordings:
        others = [n for n in cfg.train_recordings if n != r]
        tr = np.concatenate([make_windows(recs[n], cfg.window, cfg.train_hop) for n in others])
        mean, std = fit_normalization(
            np.concatenate([make_windows(recs[n], cfg.window, cfg.hop) for n in others]))
        model, _ = train_autoencoder(cfg, normalize(tr, mean, std), seed, label=f"LORO {r}")
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


def _ae_description(cfg: AEConfig, itsc: bool) -> str:
    W = cfg.window
    dur = (f" ({W / cfg.sample_rate_hz * 1000:g} ms at {cfg.sample_rate_hz} Hz)"
           if cfg.sample_rate_hz else "")
    if itsc:
        return ("int8 convolutional autoencoder for three-phase induction-motor stator current "
                f"(ITSC), trained on healthy recordings only; windows of {W} samples{dur}. A "
                "window whose reconstruction error exceeds the threshold is anomalous "
                "(unbalanced phase currents, e.g. an inter-turn short circuit).")
    return (f"int8 convolutional autoencoder trained on normal windows only; windows of {W} "
            f"samples{dur} of {len(cfg.channels)} channels. A window whose reconstruction "
            "error exceeds the threshold is anomalous.")


def train_motor_ae(out: str | os.PathLike, seed: int = 0, data: str | os.PathLike | None = None,
                   cfg: AEConfig | None = None, command: str | None = None,
                   log=print, ds: Dataset | None = None, cv: int = 0) -> dict:
    """Trains, converts, calibrates, evaluates and writes the model directory ``out``.

    ``ds`` (or ``data``): recordings, each with one label; ``cfg.train_recordings`` and
    ``cfg.holdout_recordings`` must be recordings labelled ``cfg.healthy_class``. ``cv > 0``
    also writes ``out/folds/<recording>/``: for every normal recording, the model the same
    procedure gives with that recording held out (own threshold), dynamic variant only.
    """
    cfg = cfg or AEConfig()
    t0 = time.time()
    _tf()  # TensorFlow first: fails early without it
    ds = ds or load_dataset(data)
    recs = {r.name: r.x for r in ds.recordings}
    label_of = {r.name: (r.label if r.label is not None else recording_class(r.name))
                for r in ds.recordings}
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
    model, hist = train_autoencoder(cfg, x_fit, seed, label="final")
    rep = representative_set(cfg, x_fit, seed)
    ex = export_variants(cfg, model, rep)
    dyn_bytes, b1_bytes = ex.dyn_bytes, ex.b1_bytes
    dyn, b1, packed = ex.dyn, ex.b1, ex.packed

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
    packed_cmp = _packed_vs_b1(packed, b1, all_x)

    # --- metrics -----------------------------------------------------------------------
    offs = np.cumsum([0] + [len(xn[n]) for n in recs])
    split = lambda s: {n: s[offs[i]:offs[i + 1]] for i, n in enumerate(recs)}  # noqa: E731
    score_of = split(s32)
    fl_all, _ = float_errors(model, all_x)
    corr_all = float(np.corrcoef(fl_all, s32)[0, 1])
    healthy = [n for n in recs if label_of[n] == cfg.healthy_class]
    h_idx = np.concatenate([np.arange(offs[i], offs[i + 1]) for i, n in enumerate(recs)
                            if n in healthy])
    corr_h = float(np.corrcoef(fl_all[h_idx], s32[h_idx])[0, 1])
    classes = sorted({label_of[n] for n in recs})
    rates = _rates(score_of, threshold, cfg, classes, label_of)
    rates_b1 = _rates(split(sb1), threshold, cfg, classes, label_of)
    decision_agree = float(((fl_all > threshold) == (s32 > threshold)).mean())

    metrics = {
        "scored_with": "LiteRT int8 (dynamic variant, batch 32); score from dequantized int8 "
                       "input and output tensors",
        **rates,
        "score_median": {c: _r(np.median(np.concatenate(
            [score_of[n] for n in recs if label_of[n] == c]))) for c in classes},
        "score_p05": {c: _r(np.quantile(np.concatenate(
            [score_of[n] for n in recs if label_of[n] == c]), 0.05)) for c in classes},
        "score_max_holdout": _r(max(score_of[n].max() for n in cfg.holdout_recordings)),
        "float_int8_score_corr": _r(corr_all, 5),
        "float_int8_score_corr_healthy_only": _r(corr_h, 5),
        "float_int8_score_corr_windows": int(len(s32)),
        "float_int8_score_corr_b1": _r(np.corrcoef(fl_all, sb1)[0, 1], 5),
        "float_int8_decision_agreement": _r(decision_agree, 5),
        "dyn_output_allocated_before_first_invoke": _static_after_resize(dyn_bytes, cfg, 8),
        "dyn_batch_1_8_32_identical": bool(all(per_batch_equal.values())),
        "b1_equals_dyn": b1_equal,
        "b1_vs_dyn_max_abs_score_diff": _r(np.abs(sb1 - s32).max(), 4),
        "b1_vs_dyn_max_rel_score_diff": _r((np.abs(sb1 - s32) / np.maximum(s32, 1e-12)).max(), 4),
        "b1_vs_dyn_decisions_differ": int(((sb1 > threshold) != (s32 > threshold)).sum()),
        "b1_variant": {k: rates_b1[k] for k in (
            "false_alarm_rate_holdout", "false_alarm_rate_train_recordings", "detection_rate",
            "detection_rate_by_severity")},
        **packed_cmp,
        "final_train_loss": _r(hist["loss"][-1]),
    }

    # --- write the model directory -----------------------------------------------------
    out = Path(out)
    n_cal = int(len(cal["scores"]))
    itsc = ds.is_itsc
    head = {
        "schema": 1,
        "name": cfg.name,
        "kind": "autoencoder",
        "description": _ae_description(cfg, itsc),
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
        **_attribution(itsc, recs, label_of, cfg.train_recordings, mean, std, cfg,
                       command or _default_command(out, seed, None, "autoencoder", cfg)),
        "class_names": None,
    }
    fidelity = {
        "float_int8_score_corr": _r(corr_all, 5),
        "float_int8_decision_agreement": _r(decision_agree, 5),
        "windows": int(len(s32)),
        "variant": "dynamic",
        "packed_equals_b1": packed_cmp["packed_equals_b1"],
    }
    training = {
        "command": command or _default_command(out, seed, None, "autoencoder", cfg),
        "seed": seed,
        "data": _data_desc(ds),
        "data_sha256": ds.sha256,
        "train_recordings": list(cfg.train_recordings),
        "holdout_recordings": list(cfg.holdout_recordings),
    }
    manifest = write_model_dir(out, cfg, model, ex, head, fidelity, training, metrics,
                               manifest_now=False)

    # --- leave-one-normal-recording-out folds (for edgert eval) ---------------------------
    folds_dir = out / "folds"
    if folds_dir.exists():
        shutil.rmtree(folds_dir)
    if cv:
        normal = sorted(set(cfg.train_recordings) | set(cfg.holdout_recordings))
        summary = []
        for h in normal:
            others = tuple(n for n in normal if n != h)
            cfg_h = replace(cfg, train_recordings=others, holdout_recordings=(h,))
            if (h,) == tuple(cfg.holdout_recordings) and set(others) == set(cfg.train_recordings):
                log(f"fold {h}: the shipped model (same recordings held out)")
                f_bytes, f_thr, f_mean, f_std, f_cal = dyn_bytes, threshold, mean, std, cal
            else:
                log(f"fold {h}: calibrating and training on {', '.join(others)} ...")
                f_cal = calibrate_threshold(cfg_h, recs, seed, log=log)
                f_thr = _r(f_cal["threshold"], 6)
                f_mean, f_std = fit_normalization(np.concatenate([win_h[n] for n in others]))
                xf = normalize(np.concatenate([make_windows(recs[n], W, cfg.train_hop)
                                               for n in others]), f_mean, f_std)
                m_h, _ = train_autoencoder(cfg_h, xf, seed, label=f"fold {h}")
                f_bytes = export_dynamic(cfg_h, m_h, representative_set(cfg_h, xf, seed))
            m8 = Int8Model(f_bytes)
            f_scores = {n: m8.errors(normalize(win_h[n], f_mean, f_std), batch=32)[0]
                        for n in recs}
            f_rates = _rates(f_scores, f_thr, cfg_h, classes, label_of)
            fname = f"{cfg.name}_dyn.tflite"
            fm = {
                "schema": 1, "name": f"{cfg.name}-fold-{h}", "kind": "autoencoder",
                "description": f"cross-validation fold of {cfg.name}: {h} held out",
                "window": W, "hop": H, "sample_rate_hz": cfg.sample_rate_hz,
                "channels": list(cfg.channels), "input_layout": "NHWC",
                "normalization": {"mean": [_r(v, 9) for v in f_mean],
                                  "std": [_r(v, 9) for v in f_std]},
                "score": "mean_sq", "threshold": f_thr,
                "calibration": {"method": manifest["calibration"]["method"],
                                "recordings": list(others), "quantile": cfg.quantile,
                                "factor": cfg.factor,
                                "quantile_value": _r(f_cal["quantile_value"], 6)},
                **_attribution(itsc, recs, label_of, others, f_mean, f_std, cfg,
                               command or _default_command(out, seed, None, "autoencoder", cfg)),
                "class_names": None,
                "variants": {"dynamic": _variant_entry(fname, m8, "dynamic")},
                "fold": {"held_out": [h], "train": list(others), "seed": seed,
                         "parent": cfg.name},
                "metrics": {k: f_rates[k] for k in (
                    "false_alarm_rate_holdout", "detection_rate", "detection_rate_by_severity")},
            }
            _write_fold_dir(folds_dir / h, fm, {fname: f_bytes})
            summary.append({"held_out": h, "threshold": f_thr,
                            "false_alarm_rate": f_rates["false_alarm_rate_holdout"][h],
                            "detection_rate": f_rates["detection_rate"]})
        det = {c: _r(np.mean([s["detection_rate"][c] for s in summary]), 4)
               for c in summary[0]["detection_rate"]}
        manifest["training"]["metrics"]["cv"] = {
            "method": "leave-one-normal-recording-out: each normal recording held out in turn, "
                      "threshold calibrated (leave-one-recording-out) on the others, int8 "
                      "dynamic model scored through LiteRT; models in folds/",
            "folds": summary,
            "false_alarm_rate_held_out_mean": _r(np.mean([s["false_alarm_rate"]
                                                          for s in summary]), 4),
            "detection_rate_mean": det,
        }
    manifest["training"]["seconds"] = round(time.time() - t0, 1)
    write_manifest(out, manifest)
    log(f"wrote {out} in {time.time() - t0:.0f} s; threshold {threshold:.6g}")
    return manifest


def _attribution(itsc: bool, recs: dict, label_of: dict, normal, mean, std, cfg,
                 command) -> dict:
    """``{"attribution": field}`` for an ITSC-like model (`edgert.evaluate.itsc.attribution_for`:
    normal phasors from ``normal``, fault angle from the single-phase fault recordings), else {}."""
    if not itsc or not cfg.sample_rate_hz:
        return {}
    from .evaluate.itsc import attribution_for

    field = attribution_for({n: (x, label_of[n]) for n, x in recs.items()}, list(normal), mean,
                            std, cfg.window, cfg.hop, cfg.sample_rate_hz)
    field["command"] = command
    return {"attribution": field}


def _packed_vs_b1(packed: Int8Model, b1: Int8Model, xn: np.ndarray) -> dict:
    """Runs every window through b1 (one invoke each) and packed (rows per invoke) on the same
    int8 inputs and compares the int8 outputs row by row."""
    if (packed.in_scale, packed.in_zp) != (b1.in_scale, b1.in_zp):
        return {"packed_equals_b1": False, "packed_vs_b1_max_lsb": None,
                "packed_quantization_equals_b1": False}
    q = b1.quantize(xn)
    a = b1.run_q(q).astype(np.int32)
    p = packed.run_q(q).astype(np.int32).reshape(a.shape)
    same_q = (packed.out_scale, packed.out_zp) == (b1.out_scale, b1.out_zp)
    return {"packed_equals_b1": bool(same_q and np.array_equal(a, p)),
            "packed_vs_b1_max_lsb": int(np.abs(a - p).max()) if len(a) else 0,
            "packed_quantization_equals_b1": bool(same_q),
            "packed_rows": int(packed.rows)}


def _rates(score_of: dict[str, np.ndarray], threshold: float, cfg: AEConfig,
           classes: list[str], label_of: dict[str, str] | None = None) -> dict:
    """False-alarm and detection rates (fraction of windows with score > threshold)."""
    label_of = label_of or {n: recording_class(n) for n in score_of}

    def rate(names):
        if not names:
            return 0.0, 0
        s = np.concatenate([score_of[n] for n in names])
        return float((s > threshold).mean()), int(len(s))

    detection = {}
    for c in classes:
        if c == cfg.healthy_class:
            continue
        names = sorted(n for n in score_of if label_of[n] == c)
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


def _static_after_resize(content: bytes, cfg, batch: int) -> bool:
    """True when, after resize_tensor_input + allocate_tensors, the output tensor already has
    its memory (no dynamic tensors), so a zero-copy view can be taken before the first invoke."""
    it = _interpreter_cls()(model_content=content, num_threads=1)
    shape = [int(v) for v in it.get_input_details()[0]["shape"]]
    it.resize_tensor_input(it.get_input_details()[0]["index"], [batch] + shape[1:], strict=True)
    it.allocate_tensors()
    try:
        view = it.tensor(it.get_output_details()[0]["index"])()
    except ValueError:
        return False
    return view.shape[0] == batch


# ---------------------------------------------------------------------------------------------
# autoencoder: one stream (chronological hold-back)
# ---------------------------------------------------------------------------------------------

def _all_normal(mask: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    cs = np.concatenate([[0], np.cumsum(mask.astype(np.int64))])
    return (cs[starts + window] - cs[starts]) == window


def train_ae_split(out: str | os.PathLike, ds: Dataset, cfg: AEConfig, seed: int = 0,
                   normal: str | None = None, command: str | None = None, log=print) -> dict:
    """Autoencoder for data without >= 3 normal recordings (e.g. one CSV stream).

    Every recording's normal samples (all of them when the data has no labels; else those
    labelled ``normal``) are split in time where the last ``cfg.holdout_fraction`` of them
    begins: normal windows before the cut train, normal windows after it are held back; threshold = factor x quantile ('higher') of the held-back windows' int8 scores
    (LiteRT, dynamic variant) of the shipped model, which never saw them.
    """
    t0 = time.time()
    _tf()  # TensorFlow first: fails early without it
    W, H = cfg.window, cfg.hop
    parts = []
    for r in ds.recordings:
        if r.labels is not None:
            mask = r.labels == normal if normal is not None else np.ones(len(r.x), bool)
        elif normal is None or r.label is None or r.label == normal:
            mask = np.ones(len(r.x), bool)
        else:
            continue
        if mask.any():  # cut where the last holdout_fraction of the normal samples begins
            idx = np.flatnonzero(mask)
            parts.append((r, int(idx[min(int(len(idx) * (1 - cfg.holdout_fraction)),
                                         len(idx) - 1)]), mask))
    if not parts:
        raise ValueError(f"no normal samples (label {normal!r}) in the data")

    def normal_windows(held: bool, hop: int) -> np.ndarray:
        xs = []
        for r, cut_at, mask in parts:
            lo, hi = (cut_at, len(r.x)) if held else (0, cut_at)
            st = window_starts(lo, hi, W, hop)
            st = st[_all_normal(mask, st, W)] if len(st) else st
            xs.append(cut(r.x, st, W))
        return np.concatenate(xs)

    tr_h = normal_windows(False, H)
    held_w = normal_windows(True, H)
    if len(tr_h) < 8 or len(held_w) < 4:
        raise ValueError(f"too little normal data: {len(tr_h)} training and {len(held_w)} "
                         f"held-back windows of {W} samples (hop {H})")
    mean, std = fit_normalization(tr_h)
    x_fit = normalize(normal_windows(False, cfg.train_hop), mean, std)
    held = normalize(held_w, mean, std)
    log(f"training windows: {len(x_fit)} (hop {cfg.train_hop}); held back: {len(held)} "
        f"(hop {H})")
    model, hist = train_autoencoder(cfg, x_fit, seed, label="train")
    rep = representative_set(cfg, x_fit, seed)
    ex = export_variants(cfg, model, rep)
    dyn, b1, packed = ex.dyn, ex.b1, ex.packed
    s_held, _ = dyn.errors(held, batch=32)
    q = _quantile(s_held, cfg.quantile)
    threshold = _r(cfg.factor * q, 6)

    # abnormal windows: every window whose samples all carry one label other than `normal`
    abnormal: dict[str, list] = {}
    for r in ds.recordings:
        st = window_starts(0, len(r.x), W, H)
        for s, lab in zip(st, window_labels(r, st, W)):
            if lab is not None and normal is not None and lab != normal:
                abnormal.setdefault(lab, []).append(r.x[s:s + W])
    detection = {}
    fl_parts, q_parts = [float_errors(model, held)[0]], [s_held]
    for lab in sorted(abnormal):
        xa = normalize(np.stack(abnormal[lab]), mean, std)
        sa, _ = dyn.errors(xa, batch=32)
        detection[lab] = {"rate": _r((sa > threshold).mean(), 4), "windows": int(len(sa))}
        fl_parts.append(float_errors(model, xa)[0])
        q_parts.append(sa)
    fl_all, s_all = np.concatenate(fl_parts), np.concatenate(q_parts)
    corr = float(np.corrcoef(fl_all, s_all)[0, 1]) if len(s_all) > 1 else 1.0
    agree = float(((fl_all > threshold) == (s_all > threshold)).mean())
    packed_cmp = _packed_vs_b1(packed, b1, held)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "folds").exists():
        shutil.rmtree(out / "folds")
    head = {
        "schema": 1, "name": cfg.name, "kind": "autoencoder",
        "description": _ae_description(cfg, False),
        "window": W, "hop": H, "sample_rate_hz": cfg.sample_rate_hz,
        "channels": list(cfg.channels), "input_layout": "NHWC",
        "normalization": {"mean": [_r(v, 9) for v in mean], "std": [_r(v, 9) for v in std]},
        "score": "mean_sq",
        "threshold": threshold,
        "calibration": {
            "method": (f"chronological hold-back: the last {cfg.holdout_fraction:g} of every "
                       "normal stream is never trained on; threshold = factor x quantile "
                       f"('higher') of the int8 scores (LiteRT) of its windows (hop {H})"),
            "windows": int(len(s_held)), "recordings": [r.name for r, _, _ in parts],
            "quantile": cfg.quantile, "factor": cfg.factor, "quantile_value": _r(q, 6),
            "normal_label": normal,
        },
        "class_names": None,
    }
    fidelity = {"float_int8_score_corr": _r(corr, 5),
                "float_int8_decision_agreement": _r(agree, 5),
                "windows": int(len(s_all)), "variant": "dynamic",
                "packed_equals_b1": packed_cmp["packed_equals_b1"]}
    training = {
        "command": command or _default_command(out, seed, None, "autoencoder", cfg),
        "seed": seed, "data": _data_desc(ds), "data_sha256": ds.sha256,
    }
    metrics = {
        "scored_with": "LiteRT int8 (dynamic variant, batch 32)",
        "false_alarm_rate_held_back": _r((s_held > threshold).mean(), 4),
        "held_back_windows": int(len(s_held)),
        "detection_rate": {k: v["rate"] for k, v in detection.items()},
        "detection_windows": {k: v["windows"] for k, v in detection.items()},
        **packed_cmp,
        "final_train_loss": _r(hist["loss"][-1]),
    }
    manifest = write_model_dir(out, cfg, model, ex, head, fidelity, training, metrics,
                               manifest_now=False)
    manifest["training"]["seconds"] = round(time.time() - t0, 1)
    write_manifest(out, manifest)
    log(f"wrote {out} in {time.time() - t0:.0f} s; threshold {threshold:.6g}")
    return manifest


# ---------------------------------------------------------------------------------------------
# classifier
# ---------------------------------------------------------------------------------------------

def _recording_stats(x: np.ndarray) -> np.ndarray:
    """Per-channel RMS (about the mean) and the channel correlations: for near-sinusoidal
    signals, each phase's amplitude and the cosine of every phase difference."""
    x = np.asarray(x, np.float64)
    x = x - x.mean(axis=0)
    rms = np.sqrt((x ** 2).mean(axis=0))
    if x.shape[1] < 2:
        return rms
    c = np.corrcoef(x.T)
    iu = np.triu_indices(x.shape[1], 1)
    return np.concatenate([rms, np.nan_to_num(c[iu])])


def label_audit(parts: dict[str, tuple[np.ndarray, str]], min_per_class: int = 3) -> list[dict]:
    """Recordings whose label disagrees with the other recordings of the data.

    ``parts``: name -> (samples [n, C], label). Each recording is summarized by
    ``_recording_stats``; features are scaled by the pooled within-class spread (1.4826 x
    median absolute deviation from the class medians). A recording is flagged when the median
    of another class's other recordings is nearer than its own class's (classes with at least
    ``min_per_class`` recordings). Uses only what it is given, so a fold's audit never sees
    its held-out data.
    """
    by_cls: dict[str, list[str]] = {}
    for n, (_, lab) in parts.items():
        by_cls.setdefault(lab, []).append(n)
    by_cls = {c: v for c, v in by_cls.items() if len(v) >= min_per_class}
    if len(by_cls) < 2:
        return []
    F = {n: _recording_stats(parts[n][0]) for v in by_cls.values() for n in v}
    dev = np.concatenate([np.array([F[n] for n in v]) - np.median([F[n] for n in v], axis=0)
                          for v in by_cls.values()])
    scale = 1.4826 * np.median(np.abs(dev), axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    flagged = []
    for c, v in by_cls.items():
        for n in v:
            d = {k: float(np.linalg.norm((F[n] - np.median([F[m] for m in w if m != n], axis=0))
                                         / scale))
                 for k, w in by_cls.items()}
            best = min(d, key=d.get)
            if best != c:
                flagged.append({"recording": n, "label": c, "nearest_class": best,
                                "distance_own": _r(d[c], 3), "distance_nearest": _r(d[best], 3)})
    return flagged


def cv_folds(ds: Dataset, k: int) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """Cross-validation folds: ``[(fold name, {recording: (lo, hi) held out})]``.

    Recordings named ``…_NNN`` (several of them, at least two distinct NNN) are grouped by
    repetition NNN: fold ``rep_NNN`` holds out repetition NNN of every class (``k`` only
    switches CV on). Otherwise every recording is cut into ``k`` consecutive blocks and fold
    ``block_i`` holds out block i of every recording.
    """
    if k <= 0:
        return []
    m = [re.search(r"_(\d+)$", r.name) for r in ds.recordings]
    if len(ds.recordings) > 1 and all(m):
        groups = sorted({g.group(1) for g in m})
        if len(groups) >= 2:
            return [(f"rep_{g}", {r.name: (0, len(r.x)) for r, mm in zip(ds.recordings, m)
                                  if mm.group(1) == g}) for g in groups]
    if k < 2:
        raise ValueError("cross-validation needs at least 2 folds (--cv 0 switches it off)")
    return [(f"block_{i + 1}", {r.name: (i * len(r.x) // k, (i + 1) * len(r.x) // k)
                                for r in ds.recordings}) for i in range(k)]


def recording_suspects(per_recording: dict, class_names: Sequence[str], min_run: int = 8,
                       hop: int = 16, window: int = 64) -> list[dict]:
    """Recordings whose windows do not agree with their label.

    ``per_recording``: name -> (label index, predicted class per window in time order, window
    starts). A recording is reported when the majority of its windows is another class
    ("looks like X": mislabelled, or a class the model cannot tell), or when it starts or ends
    with a run of at least ``min_run`` consecutive windows of one other class ("changes class
    part-way": its label holds for part of the recording only).
    """
    out = []
    for name, (y, pred, starts) in per_recording.items():
        pred = np.asarray(pred)
        if not len(pred):
            continue
        votes = np.bincount(pred, minlength=len(class_names))
        maj = int(votes.argmax())
        entry = {"recording": name, "label": class_names[y],
                 "window_accuracy": _r((pred == y).mean(), 4)}
        if maj != y:
            out.append({**entry, "kind": "majority is another class",
                        "looks_like": class_names[maj], "share": _r(votes[maj] / len(pred), 4)})
            continue
        for side in ("end", "start"):
            seq = pred[::-1] if side == "end" else pred
            c = seq[0]
            run = int(np.argmax(seq != c)) if np.any(seq != c) else len(seq)
            if c != y and run >= min_run:
                at = int(starts[len(pred) - run]) if side == "end" else int(starts[run - 1] + window)
                out.append({**entry, "kind": f"changes class part-way ({side})",
                            "looks_like": class_names[int(c)], "windows": run,
                            "from_sample" if side == "end" else "until_sample": at})
                break
    return out


def _segments_windows(segs, W: int, hop: int, cidx: dict):
    """Windows of ``[(recording, lo, hi)]`` with known labels -> (x, y, names, starts)."""
    xs, ys, names, starts = [], [], [], []
    for r, lo, hi in segs:
        st = window_starts(lo, hi, W, hop)
        lab = window_labels(r, st, W)
        keep = np.array([i for i, l in enumerate(lab) if l is not None], np.int64)
        st = st[keep] if len(keep) else st[:0]
        xs.append(cut(r.x, st, W))
        ys.append(np.array([cidx[lab[i]] for i in keep], np.int64))
        names += [r.name] * len(st)
        starts.append(st)
    if not xs:
        return (np.zeros((0, W, 1), np.float32), np.zeros(0, np.int64), [], np.zeros(0, np.int64))
    return np.concatenate(xs), np.concatenate(ys), names, np.concatenate(starts)


def classification_summary(y: np.ndarray, pred: np.ndarray, names: Sequence[str],
                           starts: np.ndarray, class_names: Sequence[str],
                           hop: int = 16, window: int = 64) -> dict:
    """Window and recording (majority vote) accuracy, confusion matrix, per-recording detail
    and suspects, for windows in time order within each recording."""
    y, pred = np.asarray(y), np.asarray(pred)
    K = len(class_names)
    conf = np.zeros((K, K), np.int64)
    np.add.at(conf, (y, pred), 1)
    per = {}
    for n in dict.fromkeys(names):
        idx = np.array([i for i, m in enumerate(names) if m == n])
        order = idx[np.argsort(np.asarray(starts)[idx], kind="stable")]
        per[n] = (int(y[order[0]]), pred[order], np.asarray(starts)[order])
    rec_ok = {n: int(np.bincount(p, minlength=K).argmax()) == yy for n, (yy, p, _) in per.items()}
    return {
        "window_accuracy": _r((y == pred).mean(), 4) if len(y) else None,
        "windows": int(len(y)),
        "recording_accuracy": _r(np.mean(list(rec_ok.values())), 4) if rec_ok else None,
        "recordings": len(rec_ok),
        "confusion": conf.tolist(),
        "per_recording": {n: {"label": class_names[yy], "accuracy": _r((p == yy).mean(), 4),
                              "majority": class_names[int(np.bincount(p, minlength=K).argmax())]}
                          for n, (yy, p, _) in per.items()},
        "suspects": recording_suspects(per, class_names, hop=hop, window=window),
    }


def _cls_description(cfg: CNNConfig, itsc: bool) -> str:
    W = cfg.window
    dur = (f" ({W / cfg.sample_rate_hz * 1000:g} ms at {cfg.sample_rate_hz} Hz)"
           if cfg.sample_rate_hz else "")
    if itsc:
        return (f"int8 CNN naming the state of a three-phase induction motor from {W}-sample "
                f"windows{dur} of its stator currents (ITSC): healthy (SC_HLT) or a 10/20/30/40 % "
                "inter-turn short circuit in phase A, B or C (13 classes). Output: int8 logits "
                "[rows, 1, 13]; the class is their argmax (softmax for probabilities).")
    return (f"int8 CNN classifying {W}-sample windows{dur} of {len(cfg.channels)} channels into "
            f"{len(cfg.class_names)} classes. Output: int8 logits; the class is their argmax.")


def train_classifier(out: str | os.PathLike, ds: Dataset, cfg: CNNConfig | None = None,
                     seed: int = 0, command: str | None = None, log=print) -> dict:
    """Cross-validates (``cfg.cv``), trains on everything, converts, checks and writes ``out``
    (with ``out/folds/<fold>/``: each fold's int8 dynamic model, for ``edgert eval``)."""
    cfg = cfg or CNNConfig()
    t0 = time.time()
    _tf()  # TensorFlow first: fails early without it
    W, H = cfg.window, cfg.hop
    labels = set()
    for r in ds.recordings:
        labels |= {lab for lab in window_labels(r, window_starts(0, len(r.x), W, H), W)
                   if lab is not None}
    class_names = sorted(labels)
    if len(class_names) < 2:
        raise ValueError(f"a classifier needs at least 2 labelled classes, found {class_names} "
                         "(labels come from class folders, recording names or --labels)")
    cfg = replace(cfg, class_names=tuple(class_names), channels=tuple(ds.channels))
    cidx = {c: i for i, c in enumerate(class_names)}
    by_name = ds.by_name()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folds_dir = out / "folds"
    if folds_dir.exists():
        shutil.rmtree(folds_dir)
    fname_dyn = f"{cfg.name}_dyn.tflite"

    def fit(segs, label):
        dropped = []
        if cfg.audit_labels:
            parts: dict[str, list] = {}
            for r, lo, hi in segs:
                if r.labels is None and r.label is not None and hi > lo:
                    parts.setdefault(r.name, [[], r.label])[0].append(r.x[lo:hi])
            dropped = label_audit({n: (np.concatenate(v[0]), v[1]) for n, v in parts.items()})
            gone = {d["recording"] for d in dropped}
            segs = [(r, lo, hi) for r, lo, hi in segs if r.name not in gone]
            for d in dropped:
                log(f"{label}: not training on {d['recording']} (labelled {d['label']}, its "
                    f"statistics are nearer {d['nearest_class']})")
        xh, _, _, _ = _segments_windows(segs, W, H, cidx)
        mean, std = fit_normalization(xh)
        xf, yf, _, _ = _segments_windows(segs, W, cfg.train_hop, cidx)
        xfn = normalize(xf, mean, std)
        log(f"{label}: {len(xfn)} training windows (hop {cfg.train_hop})")
        model, hist = train_classifier_model(cfg, xfn, yf, seed, label=label)
        return model, hist, mean, std, representative_set(cfg, xfn, seed), dropped

    # --- cross-validation ----------------------------------------------------------------
    folds = cv_folds(ds, cfg.cv)
    cv_y, cv_p8, cv_pf, cv_names, cv_starts, fold_rows = [], [], [], [], [], []
    for fold, held in folds:
        train_segs, test_segs = [], []
        for r in ds.recordings:
            if r.name in held:
                lo, hi = held[r.name]
                train_segs += [(r, 0, lo), (r, hi, len(r.x))]
                test_segs.append((r, lo, hi))
            else:
                train_segs.append((r, 0, len(r.x)))
        model, _, mean, std, rep, dropped = fit(train_segs, f"fold {fold}")
        fbytes = export_dynamic(cfg, model, rep)
        m8 = Int8Model(fbytes)
        xt, yt, nt, st = _segments_windows(test_segs, W, H, cidx)
        xtn = normalize(xt, mean, std)
        p8 = m8.logits(xtn, batch=32)[0].argmax(1)
        pf = float_logits(model, xtn).argmax(1)
        acc, agr = float((p8 == yt).mean()), float((p8 == pf).mean())
        log(f"  fold {fold}: int8 window accuracy {acc:.4f}, float {float((pf == yt).mean()):.4f}, "
            f"int8/float agreement {agr:.4f} ({len(yt)} windows)")
        fm = {
            "schema": 1, "name": f"{cfg.name}-fold-{fold}", "kind": "classifier",
            "description": f"cross-validation fold of {cfg.name}: {fold} held out",
            "window": W, "hop": H, "sample_rate_hz": cfg.sample_rate_hz,
            "channels": list(cfg.channels), "input_layout": "NHWC",
            "normalization": {"mean": [_r(v, 9) for v in mean], "std": [_r(v, 9) for v in std]},
            "score": "argmax", "output": "logits", "threshold": None,
            "class_names": list(class_names),
            "variants": {"dynamic": _variant_entry(fname_dyn, m8, "dynamic")},
            "fold": {"name": fold, "held_out": sorted(held),
                     "not_trained_on": [d["recording"] for d in dropped],
                     "held_out_samples": {n: list(v) for n, v in sorted(held.items())},
                     "seed": seed, "parent": cfg.name},
            "metrics": {"window_accuracy": _r(acc, 4), "int8_float_argmax_agreement": _r(agr, 4),
                        "windows": int(len(yt))},
        }
        fm = _write_fold_dir(folds_dir / fold, fm, {fname_dyn: fbytes})
        fold_rows.append({"fold": fold, "held_out": sorted(held), "window_accuracy": _r(acc, 4),
                          "float_window_accuracy": _r((pf == yt).mean(), 4),
                          "int8_float_argmax_agreement": _r(agr, 4), "windows": int(len(yt)),
                          "not_trained_on": [d["recording"] for d in dropped],
                          "dir": f"folds/{fold}",
                          "sha256": {fname_dyn: fm["files"][fname_dyn]}})
        cv_y.append(yt), cv_p8.append(p8), cv_pf.append(pf)
        cv_names += [f"{n}" if held[n] == (0, len(by_name[n].x)) else f"{n}@{fold}" for n in nt]
        cv_starts.append(st)
    cv = None
    if folds:
        y, p8, pf = np.concatenate(cv_y), np.concatenate(cv_p8), np.concatenate(cv_pf)
        summ = classification_summary(y, p8, cv_names, np.concatenate(cv_starts), class_names,
                                      hop=H, window=W)
        cv = {
            "method": ("leave-one-repetition-out (repetition NNN of every class held out)"
                       if folds[0][0].startswith("rep_") else
                       f"blocked {len(folds)}-fold (block i of every recording held out)"),
            "scored_with": "LiteRT int8, each fold's dynamic variant (folds/<fold>/), batch 32",
            "folds": fold_rows,
            **summ,
            "float_window_accuracy": _r((pf == y).mean(), 4),
            "int8_float_argmax_agreement": _r((p8 == pf).mean(), 4),
        }
        log(f"cross-validation: int8 window accuracy {summ['window_accuracy']}, recording "
            f"accuracy {summ['recording_accuracy']}, int8/float agreement "
            f"{cv['int8_float_argmax_agreement']}")
        for s in summ["suspects"]:
            log(f"  suspect {s['recording']} ({s['label']}): {s['kind']}, looks like "
                f"{s['looks_like']}")

    # --- final model on everything ---------------------------------------------------------
    all_segs = [(r, 0, len(r.x)) for r in ds.recordings]
    model, hist, mean, std, rep, dropped_final = fit(all_segs, "final")
    ex = export_variants(cfg, model, rep)
    dyn_bytes = ex.dyn_bytes
    dyn, b1, packed = ex.dyn, ex.b1, ex.packed
    xa, ya, na, sa = _segments_windows(all_segs, W, H, cidx)
    xan = normalize(xa, mean, std)
    lg32, q32 = dyn.logits(xan, batch=32)
    same_batches = all(np.array_equal(dyn.logits(xan, batch=b)[1], q32) for b in (1, 8))
    if not same_batches:
        raise RuntimeError("dynamic model gives different results per batch size")
    p_dyn = lg32.argmax(1)
    p_b1 = b1.logits(xan)[0].argmax(1)
    p_fl = float_logits(model, xan).argmax(1)
    packed_cmp = _packed_vs_b1(packed, b1, xan)
    agree = float((p_dyn == p_fl).mean())
    final = {
        "scored_with": "LiteRT int8 (dynamic variant, batch 32) on every window (hop "
                       f"{H}) of the training data",
        "train_window_accuracy_int8": _r((p_dyn == ya).mean(), 4),
        "train_window_accuracy_float": _r((p_fl == ya).mean(), 4),
        "int8_float_argmax_agreement": _r(agree, 5),
        "b1_float_argmax_agreement": _r((p_b1 == p_fl).mean(), 5),
        "b1_dyn_argmax_agreement": _r((p_b1 == p_dyn).mean(), 5),
        "windows": int(len(ya)),
        "dyn_batch_1_8_32_identical": bool(same_batches),
        "dyn_output_allocated_before_first_invoke": _static_after_resize(dyn_bytes, cfg, 8),
        **packed_cmp,
        "final_train_loss": _r(hist["loss"][-1]),
    }
    log(f"final model: int8/float argmax agreement {agree:.4f} on {len(ya)} windows; "
        f"packed == b1: {packed_cmp['packed_equals_b1']}")

    itsc = ds.is_itsc
    head = {
        "schema": 1,
        "name": cfg.name,
        "kind": "classifier",
        "description": _cls_description(cfg, itsc),
        "window": W, "hop": H,
        "sample_rate_hz": cfg.sample_rate_hz,
        "channels": list(cfg.channels),
        "input_layout": "NHWC",
        "normalization": {"mean": [_r(v, 9) for v in mean], "std": [_r(v, 9) for v in std]},
        "score": "argmax",
        "output": "logits",
        "threshold": None,
        "class_names": list(class_names),
    }
    fidelity = {
        "int8_float_argmax_agreement": _r(agree, 5),
        "windows": int(len(ya)),
        "variant": "dynamic",
        "b1_float_argmax_agreement": final["b1_float_argmax_agreement"],
        "packed_equals_b1": packed_cmp["packed_equals_b1"],
        "cv_held_out_int8_float_argmax_agreement": (cv or {}).get(
            "int8_float_argmax_agreement"),
    }
    training = {
        "command": command or _default_command(out, seed, None, "classifier", cfg),
        "seed": seed,
        "data": _data_desc(ds),
        "data_sha256": ds.sha256,
        "train_recordings": [n for n in ds.names()
                             if n not in {d["recording"] for d in dropped_final}],
        "label_audit": {
            "method": "label_audit: per-channel RMS and channel correlations of each "
                      "recording, nearest class median (leave-one-out, robust scaling); "
                      "flagged recordings are not trained on (every evaluation keeps them)",
            "not_trained_on": dropped_final},
    }
    manifest = write_model_dir(out, cfg, model, ex, head, fidelity, training,
                               {"cv": cv, "final": final}, manifest_now=False)
    manifest["training"]["seconds"] = round(time.time() - t0, 1)
    write_manifest(out, manifest)
    log(f"wrote {out} in {time.time() - t0:.0f} s")
    return manifest


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------

NORMAL_CANDIDATES = ("SC_HLT", "normal", "Normal", "healthy", "Healthy", "0", "false", "False",
                     "ok", "OK")


def _normal_label(ds: Dataset, wanted: str | None) -> str | None:
    """The label of normal data: ``wanted``, else the first known name present; None when the
    data carries no labels at all (everything is normal)."""
    present = set()
    for r in ds.recordings:
        if r.labels is not None:
            present |= set(np.unique(r.labels).tolist())
        elif r.label is not None:
            present.add(r.label)
    if wanted is not None:
        if wanted not in present:
            raise ValueError(f"--normal {wanted!r}: no such label (labels: "
                             f"{', '.join(sorted(present)) or 'none'})")
        return wanted
    if not present or (len(present) == 1 and all(r.labels is None for r in ds.recordings)):
        return None
    for c in NORMAL_CANDIDATES:
        if c in present:
            return c
    raise ValueError("cannot tell which label is normal; say it with --normal LABEL (labels: "
                     f"{', '.join(sorted(present)[:20])})")


def _default_command(out, seed, data, kind, cfg) -> str:
    parts = ["edgert", "train"]
    if data is not None:
        parts += ["--data", str(data)]
    parts += ["--kind", kind, "--window", str(cfg.window), "--hop", str(cfg.hop),
              "--channels", ",".join(cfg.channels), "--out", str(out), "--name", cfg.name,
              "--seed", str(seed), "--epochs", str(cfg.epochs)]
    return shlex.join(parts)


def canonical_command(args, epochs: int, cv: int) -> str:
    """The full ``edgert train`` command of a run, every option explicit (recorded in the
    manifest: run it again to reproduce the model)."""
    parts = ["edgert", "train"]
    if args.data is not None:
        parts += ["--data", str(args.data)]
    parts += ["--kind", args.kind, "--window", str(args.window), "--hop", str(args.hop)]
    for opt, val in (("--channels", args.channels), ("--labels", args.labels),
                     ("--normal", args.normal), ("--holdout", args.holdout),
                     ("--sample-rate", args.sample_rate)):
        if val is not None:
            parts += [opt, str(val)]
    parts += ["--out", str(args.out), "--name", _model_name(args), "--seed", str(args.seed),
              "--epochs", str(epochs), "--cv", str(cv), "--rows", str(args.rows)]
    return shlex.join(parts)


def _model_name(args) -> str:
    return args.name or Path(args.out).resolve().name


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None,
                   help="CSV file (header row; optional label column), .npz (samples [n, C], "
                        "optional labels [n]; or one array per recording), or a directory of "
                        "class folders of headerless CSV files (ITSC layout). Default: the "
                        "ITSC copy shipped in edgert.data")
    p.add_argument("--kind", choices=["autoencoder", "classifier"], default="autoencoder",
                   help="autoencoder: trained on normal data, scores reconstruction error; classifier: names the class")
    p.add_argument("--window", type=int, default=64, help="W, samples (default 64)")
    p.add_argument("--hop", type=int, default=16, help="H, samples (default 16)")
    p.add_argument("--channels", default=None,
                   help="comma-separated channel columns (CSV with a header) or names (headerless)")
    p.add_argument("--labels", default=None,
                   help="label column of a CSV (name, or index when headerless)")
    p.add_argument("--normal", default=None,
                   help="autoencoder: the label of normal data (default: SC_HLT, normal, "
                        "healthy or 0, whichever is present; all data when there are no labels)")
    p.add_argument("--holdout", default=None,
                   help="autoencoder: the normal recording never trained or calibrated on "
                        "(default: the last one)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--name", default=None, help="model name (default: the --out directory's name)")
    p.add_argument("--seed", type=int, default=0, help="random seed (training and splits)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs (default 150 autoencoder, 20 classifier)")
    p.add_argument("--cv", type=int, default=None,
                   help="cross-validation folds written to OUT/folds/ (default 5 for a "
                        "classifier, 0 for an autoencoder: there, any N > 0 means one fold per "
                        "normal recording); 0: none")
    p.add_argument("--rows", type=int, default=16, help="B of the packed [1, B, W, C] variant")
    p.add_argument("--sample-rate", type=int, default=None, dest="sample_rate",
                   help="sample rate in Hz, recorded in the manifest (default: 1000 for the "
                        "shipped ITSC data, else unset)")


def add_parsers(subparsers) -> argparse.ArgumentParser:
    """Adds ``train`` to the ``edgert`` sub-commands."""
    p = subparsers.add_parser(
        "train", help="train, int8-quantize and export a model directory (needs TensorFlow: "
                      f"{TRAIN_EXTRA_HINT})",
        description=(__doc__ or "").split("\n")[0])
    add_arguments(p)
    p.set_defaults(fn=cmd_train)
    return p


def _require_tensorflow() -> None:
    try:
        _tf()  # sets the environment (oneDNN off, quiet C++ logs) before the first import
    except ImportError as exc:
        raise ImportError(f"TensorFlow is not installed ({exc}); {TRAIN_EXTRA_HINT}") from None


def run_training(args, log=None) -> dict:
    """Runs ``edgert train`` with parsed ``args``; returns the manifest written."""
    log = log or (lambda *a: print(*a, file=sys.stderr, flush=True))
    for name in ("window", "hop", "rows"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1")
    channels = [c.strip() for c in args.channels.split(",")] if args.channels else None
    ds = load_dataset(args.data, channels, args.labels)
    name = _model_name(args)
    sr = args.sample_rate if args.sample_rate is not None else (1000 if ds.default_itsc else None)
    for r in ds.recordings:
        if len(r.x) < args.window:
            log(f"note: recording {r.name} is shorter than one window ({len(r.x)} samples)")
    if args.kind == "autoencoder":
        cv = 0 if args.cv is None else args.cv
        cfg = AEConfig(name=name, window=args.window, hop=args.hop, channels=tuple(ds.channels),
                       sample_rate_hz=sr, packed_rows=args.rows)
        if args.epochs is not None:
            cfg.epochs = args.epochs
        normal = _normal_label(ds, args.normal)
        whole = sorted(r.name for r in ds.recordings
                       if r.labels is None and (normal is None or r.label == normal))
        command = canonical_command(args, cfg.epochs, cv)
        if len(whole) >= 3 and all(r.labels is None for r in ds.recordings):
            hold = args.holdout or whole[-1]
            if hold not in whole:
                raise ValueError(f"--holdout {hold!r} is not a normal recording "
                                 f"({', '.join(whole)})")
            cfg.train_recordings = tuple(n for n in whole if n != hold)
            cfg.holdout_recordings = (hold,)
            if normal is not None:
                cfg.healthy_class = normal
            log(f"autoencoder: normal label {normal!r}; training recordings "
                f"{', '.join(cfg.train_recordings)}; held out {hold}")
            return train_motor_ae(args.out, args.seed, cfg=cfg, command=command, log=log, ds=ds,
                                  cv=cv)
        if cv:
            log("note: --cv needs at least 3 normal recordings; no folds written")
        if args.holdout is not None:
            raise ValueError("--holdout needs at least 3 normal recordings")
        cfg.train_recordings, cfg.holdout_recordings = (), ()
        if normal is not None:
            cfg.healthy_class = normal
        command = canonical_command(args, cfg.epochs, 0)
        return train_ae_split(args.out, ds, cfg, args.seed, normal=normal, command=command,
                              log=log)
    cv = 5 if args.cv is None else args.cv
    cfg = CNNConfig(name=name, window=args.window, hop=args.hop, channels=tuple(ds.channels),
                    sample_rate_hz=sr, packed_rows=args.rows, cv=cv)
    if args.epochs is not None:
        cfg.epochs = args.epochs
    return train_classifier(args.out, ds, cfg, args.seed,
                            command=canonical_command(args, cfg.epochs, cv), log=log)


def cmd_train(args) -> int:
    try:
        _require_tensorflow()
    except ImportError as exc:
        print(f"edgert train: {exc}", file=sys.stderr)
        return 2
    try:
        run_training(args)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"edgert train: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edgert train", description=(__doc__ or "").split("\n")[0])
    add_arguments(p)
    return cmd_train(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
