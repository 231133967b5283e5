"""``edgert train --kind lstm-ae|forecast``: the seed's temporal models, int8 like the others.

* ``lstm-ae``: an LSTM autoencoder ``[B, 1, W, C] -> [B, 1, W, C]`` (encoder LSTM to a code,
  decoder LSTM fed the code at every step, 1x1 Conv2D to the channels), unrolled by hand
  from ops in Coral's table (`unrolled_lstm` says why not Keras' LSTM); scored like the
  conv autoencoder (per-channel MSE over the window).
* ``forecast``: a 1D-CNN that sees the whole ``[B, 1, W, C]`` window, crops its first
  ``W - h`` rows inside the graph (STRIDED_SLICE) and predicts the last ``h`` rows
  ``[B, 1, h, C]``; the score is the per-channel MSE of that forecast against the window's last
  ``h`` rows (manifest ``target_rows``), so the runtime's window, hop and attribution stay as
  they are.

Both are fitted on normal recordings only and calibrated with the autoencoder's rule: with
``>= 3`` normal recordings, leave-one-recording-out over the training recordings (a model with
the same config and seed trained on the others, converted to int8, scores the held-out one
through LiteRT) and threshold = ``factor x quantile('higher')`` of the pooled held-out scores.
Variants: ``dynamic`` and ``b1``. No ``packed`` variant: `packed_from_b1` rewrites tensors of
shape ``[1, 1, w, c]`` only, and both graphs hold other shapes (the LSTM's ``[1, C]`` step
inputs and ``[1, units]`` states, which FULLY_CONNECTED needs 1-D on the Edge TPU; the forecast's STRIDED_SLICE whose constant ``end``
``[1, 1, W-h, C]`` would have to change with the rows).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .architectures import load_tf, set_seed
from .config import AEConfig
from .data import Dataset, fit_normalization, make_windows, normalize
from .export import convert_int8, representative_set, tflite_ops
from .int8 import Int8Model
from .modeldir import quantile_higher, round_sig
from .progress import Progress
from .unrolled_lstm import lstm_autoencoder

SEQ_KINDS = ("lstm-ae", "forecast")


@dataclass
class SeqConfig(AEConfig):
    """An `AEConfig` plus what the temporal kinds add (recorded in the manifest)."""

    kind: str = "forecast"
    target_rows: int = 16            # forecast: h, the rows predicted (the window's last h)
    units: int = 16                  # lstm-ae: LSTM units (encoder and decoder)
    epochs: int = 30


def build_seq_model(cfg: SeqConfig, batch: int | None = None):
    """The Keras model of ``cfg.kind`` with input ``[batch, 1, W, C]`` (None: dynamic batch).

    forecast: Cropping2D keeps rows ``[0, W-h)``; Conv2D ``(1, k)`` 'same' + ReLU per entry
    of ``cfg.filters``; a linear ``(1, W-2h+1)`` 'valid' Conv2D with C filters maps the
    ``W-h`` positions onto the ``h`` predicted ones (output ``[batch, 1, h, C]``). Only
    CONV_2D and STRIDED_SLICE after conversion.
    lstm-ae: `unrolled_lstm.lstm_autoencoder` (encoder LSTM to a code, decoder LSTM fed
    the code at every step, 1x1 Conv2D to the channels), unrolled by hand from Edge TPU ops.
    Raises ValueError for an unknown kind or ``h`` not in ``1..(W-1)//2``.
    """
    tf = load_tf()
    L = tf.keras.layers
    W, C = cfg.window, len(cfg.channels)
    inp = tf.keras.Input(shape=(1, W, C), batch_size=batch, name="x")
    name = cfg.name.replace("-", "_")
    if cfg.kind == "forecast":
        h = int(cfg.target_rows)
        if not 1 <= h <= (W - 1) // 2:
            raise ValueError(f"target_rows {h} must be in 1..{(W - 1) // 2} for window {W}")
        z = L.Cropping2D(((0, 0), (0, h)), name="past")(inp)
        for i, f in enumerate(cfg.filters):
            z = L.Conv2D(f, (1, cfg.kernel), padding="same", name=f"conv{i}")(z)
            z = L.ReLU(name=f"conv{i}_relu")(z)
        out = L.Conv2D(C, (1, W - 2 * h + 1), padding="valid", name="forecast")(z)
        return tf.keras.Model(inp, out, name=name)
    if cfg.kind == "lstm-ae":
        out = lstm_autoencoder(tf, inp, W, C, cfg.units)
        return tf.keras.Model(inp, out, name=name)
    raise ValueError(f"unknown kind {cfg.kind!r} (one of {SEQ_KINDS})")


def target(cfg: SeqConfig, x: np.ndarray) -> np.ndarray:
    """What the model is fitted to reproduce from windows ``x`` ``[n, 1, W, C]``."""
    return x[:, :, x.shape[2] - cfg.target_rows:] if cfg.kind == "forecast" else x


def fit(cfg: SeqConfig, x: np.ndarray, seed: int, label: str):
    """A fresh model fitted on normalized windows (MSE, cosine-decayed Adam); (model, losses)."""
    tf = load_tf()
    set_seed(seed)
    model = build_seq_model(cfg, batch=None)
    steps = cfg.epochs * int(np.ceil(len(x) / cfg.batch_size))
    lr = tf.keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=steps, alpha=0.02)
    model.compile(optimizer=tf.keras.optimizers.Adam(lr), loss="mse")
    cb = Progress(label, cfg.epochs).keras_callback()
    h = model.fit(x, target(cfg, x), batch_size=cfg.batch_size, epochs=cfg.epochs, shuffle=True,
                  verbose=0, callbacks=[cb])
    return model, h.history["loss"]


def export(cfg: SeqConfig, model, rep: np.ndarray, batch: int | None) -> bytes:
    """int8 (full-integer) flatbuffer of ``model`` with batch ``batch`` (None: dynamic)."""
    if batch is not None:
        m = build_seq_model(cfg, batch=batch)
        m.set_weights(model.get_weights())
        model = m
    return convert_int8(model, rep)


def int8_errors(m8: Int8Model, cfg: SeqConfig, xn: np.ndarray, batch: int | None = None):
    """(scores [n], per-channel MSE [n, C]) as the runtime computes them (dequantized int8
    input and output; forecast: the input's last ``target_rows`` rows vs the output)."""
    q = m8.quantize(xn)
    oq = m8.run_q(q, batch)
    x = (target(cfg, q).astype(np.float64) - m8.in_zp) * m8.in_scale
    y = (oq.astype(np.float64) - m8.out_zp) * m8.out_scale
    ch = ((x - y) ** 2).mean(axis=(1, 2)).astype(np.float32)
    return ch.astype(np.float64).mean(axis=1).astype(np.float32), ch


def _fit_and_convert(cfg, recs, names, seed, label):
    """Normalization, fitted model and its dynamic int8 model from recordings ``names``."""
    mean, std = fit_normalization(np.concatenate([make_windows(recs[n], cfg.window, cfg.hop)
                                                  for n in names]))
    x = normalize(np.concatenate([make_windows(recs[n], cfg.window, cfg.train_hop)
                                  for n in names]), mean, std)
    model, losses = fit(cfg, x, seed, label)
    rep = representative_set(cfg, x, seed)
    return mean, std, model, losses, rep, Int8Model(export(cfg, model, rep, None))


def calibrate(cfg: SeqConfig, recs: dict, names: list, seed: int, log=print):
    """Leave-one-recording-out over ``names`` (the autoencoder's rule): returns (pooled
    held-out int8 scores, scores per recording, their ``cfg.quantile`` ('higher'))."""
    pooled, per_rec = [], {}
    for r in names:
        others = [n for n in names if n != r]
        mean, std, _, _, _, m8 = _fit_and_convert(cfg, recs, others, seed, f"LORO {r}")
        s, _ = int8_errors(m8, cfg, normalize(make_windows(recs[r], cfg.window, cfg.hop), mean, std))
        per_rec[r] = s
        pooled.append(s)
        log(f"  LORO {r}: n={len(s)} median={np.median(s):.5f} max={s.max():.5f}")
    pooled = np.concatenate(pooled)
    return pooled, per_rec, quantile_higher(pooled, cfg.quantile)


def write_folds(out: Path, manifest: dict, recs: dict, cfg: SeqConfig, seed: int, log=print):
    """``out/folds/<h>/`` for every normal recording h (training + held-out ones): the model
    the same procedure gives with h held out (own LORO threshold), dynamic variant only, with
    ``fold.held_out`` as ``edgert eval itsc --ae`` reads it."""
    from edgert import models

    normal = sorted(set(cfg.train_recordings) | set(cfg.holdout_recordings))
    for h in normal:
        others = [n for n in normal if n != h]
        log(f"fold {h}: calibrating and training on {', '.join(others)} ...")
        _, _, qv = calibrate(cfg, recs, others, seed, log)
        mean, std, _, _, _, m8 = _fit_and_convert(cfg, recs, others, seed, f"fold {h}")
        fname = f"{cfg.name}_dyn.tflite"
        fm = {k: v for k, v in manifest.items() if k not in ("variants", "files", "training")}
        fm.update({
            "name": f"{cfg.name}-fold-{h}", "description": f"cross-validation fold of {cfg.name}: {h} held out",
            "normalization": {"mean": [round_sig(v, 9) for v in mean],
                              "std": [round_sig(v, 9) for v in std]},
            "threshold": round_sig(cfg.factor * qv, 6),
            "calibration": {**manifest["calibration"], "recordings": others,
                            "quantile_value": round_sig(qv, 6)},
            "files": {},
            "variants": {"dynamic": {"file": fname, "batch": "dynamic", **m8.io()}},
            "fold": {"held_out": [h], "train": others, "seed": seed, "parent": cfg.name},
        })
        fm["calibration"].pop("per_recording_max", None)
        fm["calibration"].pop("windows", None)
        models.write_model_dir(out / "folds" / h, fm, {fname: m8.content})


def train_seq(out: str | os.PathLike, ds: Dataset, cfg: SeqConfig, seed: int,
              normal: str | None, command: str, log=print, cv: int = 0) -> dict:
    """Trains, calibrates and writes the model directory ``out`` for ``cfg.kind``.

    Args:
      ds: recordings; those labelled ``normal`` (all when None) are the normal ones, the last
        (``cfg.holdout_recordings``) never trained or calibrated on.
      cfg: the run (``train_recordings`` / ``holdout_recordings`` set by the caller).
      cv: > 0: also `write_folds` (one per normal recording).
    Returns the manifest written. Raises ValueError with fewer than 3 training recordings.
    """
    from edgert import models

    t0 = time.time()
    recs = {r.name: r.x for r in ds.recordings}
    if len(cfg.train_recordings) < 2:
        raise ValueError(f"--kind {cfg.kind} needs at least 3 whole normal recordings (2 to "
                         f"train and calibrate on, 1 held out); got {len(cfg.train_recordings)} "
                         "for training")
    pooled, per_rec, qv = calibrate(cfg, recs, list(cfg.train_recordings), seed, log)
    threshold = round_sig(cfg.factor * qv, 6)
    log("training the final model ...")
    mean, std, model, losses, rep, dyn = _fit_and_convert(cfg, recs, list(cfg.train_recordings),
                                                          seed, "final")
    b1_bytes = export(cfg, model, rep, 1)
    b1 = Int8Model(b1_bytes)
    # metrics: every recording scored by the dynamic int8 model through LiteRT
    label_of = {r.name: r.label for r in ds.recordings}
    rates: dict = {}
    for n in recs:
        s, _ = int8_errors(dyn, cfg, normalize(make_windows(recs[n], cfg.window, cfg.hop), mean, std), 32)
        c = label_of[n] if label_of[n] is not None else "unlabelled"
        rates.setdefault(c, []).append(s)
    flagged = {c: round_sig(float((np.concatenate(v) > threshold).mean()), 5) for c, v in rates.items()}
    out = Path(out)
    name = cfg.name
    files = {f"{name}_dyn.tflite": dyn.content, f"{name}_b1.tflite": b1_bytes}
    W, C = cfg.window, len(cfg.channels)
    desc = {"forecast": f"int8 1D-CNN forecaster: predicts the last {cfg.target_rows} of {W} "
                        "samples from the ones before; score = forecast MSE on those rows",
            "lstm-ae": f"int8 LSTM autoencoder over windows of {W} samples; score = "
                       "reconstruction MSE"}[cfg.kind]
    manifest = {
        "schema": 1, "name": name, "kind": cfg.kind, "description": desc,
        "window": W, "hop": cfg.hop, "sample_rate_hz": cfg.sample_rate_hz,
        "channels": list(cfg.channels), "input_layout": "NHWC",
        "normalization": {"mean": [round_sig(v, 9) for v in mean],
                          "std": [round_sig(v, 9) for v in std]},
        "score": "mean_sq", "threshold": threshold,
        **({"target_rows": cfg.target_rows} if cfg.kind == "forecast" else {}),
        "calibration": {
            "method": ("leave-one-recording-out over the training recordings: for each, a model "
                       "with the same config and seed trained (and normalized) on the others, "
                       f"converted to int8, scored its windows (hop {cfg.hop}) through LiteRT; "
                       "threshold = factor x quantile ('higher') of the pooled held-out scores"),
            "windows": int(len(pooled)), "recordings": list(cfg.train_recordings),
            "quantile": cfg.quantile, "factor": cfg.factor,
            "quantile_value": round_sig(qv, 6),
            "per_recording_max": {r: round_sig(v.max(), 6) for r, v in per_rec.items()},
        },
        "class_names": None,
        "files": {},
        "variants": {
            "dynamic": {"file": f"{name}_dyn.tflite", "batch": "dynamic", **dyn.io(),
                        "ops": tflite_ops(dyn.content)},
            "b1": {"file": f"{name}_b1.tflite", "batch": 1, **b1.io(),
                   "ops": tflite_ops(b1_bytes)},
        },
        "training": {"command": command, "seed": seed, "data_sha256": ds.sha256,
                     "config": {k: (list(v) if isinstance(v, tuple) else v)
                                for k, v in asdict(cfg).items()},
                     "train_recordings": list(cfg.train_recordings),
                     "holdout_recordings": list(cfg.holdout_recordings),
                     "normal_label": normal,
                     "metrics": {"flagged_rate_by_label": flagged,
                                 "final_train_loss": round_sig(losses[-1])},
                     "seconds": round(time.time() - t0, 1)},
    }
    models.write_model_dir(out, manifest, files)
    if cv:
        write_folds(out, manifest, recs, cfg, seed, log)
    log(f"wrote {out}: threshold {threshold}; flagged by label {flagged}")
    return manifest
