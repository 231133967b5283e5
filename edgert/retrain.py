"""Fine-tune an autoencoder on its daemon's reservoir, validate it, publish it (``edgert retrain``).

Usage::

    edgert retrain --model DIR --reservoir DIR [--out DIR] [--publish] [--epochs N]
                   [--seed S] [--json]

Steps:

1. Load the running model directory (sha256 verified) and its float Keras model
   (``float_model`` in the manifest, written by ``edgert train``; a ``.keras`` file loaded with
   ``safe_mode=True``, anything else such as ``.h5`` refused before TensorFlow is imported),
   and the reservoir of raw normal windows the daemon kept for it (``edgert serve
   --reservoir DIR``, ``edgert.reservoir``).
2. Split the reservoir, oldest first, into blocks of consecutive records; of every 5 blocks, 4
   train and 1 is held back for validation (blocks, not single windows, so overlapping
   neighbours rarely straddle the two roles).
3. Fit a new normalization on the training windows, fine-tune the float model on them (Adam,
   cosine-decayed learning rate, fixed seed) and convert it to the same int8 variants as
   ``edgert train`` (dynamic, b1, packed; ``edgert.train.export_variants``). The threshold is
   calibrated as ``edgert train`` does (leave-one-recording-out), with time segments for
   recordings: the training windows are cut into 3 consecutive segments; for each, a model
   fine-tuned the same way on the other two (own normalization), converted to int8, scores the
   segment it never saw (LiteRT, dynamic variant); threshold = factor x quantile ('higher') of
   the pooled scores. A threshold calibrated on windows the model trained on would be far too
   tight for the next hour's data.
4. Validate the candidate against the running model, each with its own normalization and
   threshold, on windows neither trained on:

   * false alarms on the held-back normal windows: candidate <= current;
   * injected faults on the held-back windows (raw units, per window one channel, rotating):
     phase imbalance (the channel's deviation from its mean x 1.2), offset (+0.5 std of the
     channel), spike (+6 std on one sample); and, for a model of the ITSC channels
     (ia, ib, ic), the shipped ITSC fault recordings per class (60 recordings, 12 classes).
     For each, candidate detection rate >= current - tolerance (default 0.05);
   * the candidate directory loads through ``edgert.models.load`` (sha256 of every file
     verified, tensor specs checked), lists all three variants and the float model, and
     holds no unlisted file.

5. Print the verdict table. Only when every check passes and ``--publish`` is given is the
   candidate published into the model directory, atomically for a daemon that watches it
   (``watch_model_s``): its files carry a new generation stem (``<name>_r<N>_dyn.tflite`` …)
   and go in first (temp name, fsync, ``os.replace``), the manifest last (temp +
   ``os.replace``), so a reader sees either the old manifest with the old files or the new
   manifest with the new files. Files of generations older than the previous one are then
   removed. Exit 0: passed (and published when asked); 1: validation failed, nothing
   published; 2: bad input or no TensorFlow (``pip install 'edgert[train]'``).

The reservoir holds only windows the running model judged normal, so a slow fault that never
crossed the threshold could still teach the candidate that it is normal; the fault checks
above are what stands between that and a published model.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

from . import models, reservoir

HOLDBACK_BLOCKS = 5  # of every 5 blocks: 4 train, 1 validation
SEGMENTS = 3  # consecutive segments of the training windows for the threshold calibration
FAULTS = {"imbalance": 1.2, "offset": 0.5, "spike": 6.0}


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

def split_blocks(n: int, blocks: int = 50) -> dict[str, np.ndarray]:
    """Indices of n records (oldest first) for training and validation: consecutive blocks of
    about n / ``blocks`` records; block b goes to validation when b % 5 == 4, else to
    training."""
    size = max(1, n // blocks)
    role = (np.arange(n) // size) % HOLDBACK_BLOCKS
    return {"train": np.flatnonzero(role < HOLDBACK_BLOCKS - 1),
            "val": np.flatnonzero(role == HOLDBACK_BLOCKS - 1)}


def calibrate(cfg, fpath: Path, x: np.ndarray, epochs: int, seed: int, lr: float,
              log) -> dict:
    """Leave-one-segment-out threshold over the training windows ``x`` (oldest first): for
    each of ``SEGMENTS`` consecutive segments, a model fine-tuned on the others (normalization
    fitted on them) scores it through LiteRT int8. Returns ``{"threshold", "quantile_value",
    "windows", "per_segment_max"}``."""
    from .train import (Int8Model, quantile_higher, export_dynamic, fit_normalization, normalize,
                        representative_set)

    pooled, seg_max = [], []
    bounds = np.linspace(0, len(x), SEGMENTS + 1).astype(int)
    for k in range(SEGMENTS):
        held = np.zeros(len(x), bool)
        held[bounds[k]:bounds[k + 1]] = True
        mean, std = fit_normalization(x[~held])
        xn = normalize(x[~held], mean, std)
        m, _ = fine_tune(cfg, fpath, xn, epochs, seed, lr, label=f"segment {k + 1}/{SEGMENTS}")
        m8 = Int8Model(export_dynamic(cfg, m, representative_set(cfg, xn, seed)))
        s, _ = m8.errors(normalize(x[held], mean, std), batch=32)
        pooled.append(s)
        seg_max.append(float(s.max()))
        log(f"  segment {k + 1}/{SEGMENTS} held out: n={len(s)} median={np.median(s):.5f} "
            f"max={s.max():.5f}")
    pooled = np.concatenate(pooled)
    q = quantile_higher(pooled, cfg.quantile)
    return {"threshold": cfg.factor * q, "quantile_value": q, "windows": int(len(pooled)),
            "per_segment_max": seg_max}


def inject(x: np.ndarray, kind: str, mean: np.ndarray, std: np.ndarray,
           seed: int = 0) -> np.ndarray:
    """Raw windows ``[n, W, C]`` with one fault each; window i's fault is on channel i % C.

    ``imbalance``: the channel's deviation from ``mean`` x 1.2 (one phase 20 % stronger);
    ``offset``: + 0.5 ``std``; ``spike``: + 6 ``std`` on one sample (random position).
    """
    y = np.array(x, np.float32, copy=True)
    n, W, C = y.shape
    ch = np.arange(n) % C
    rows = np.arange(n)
    if kind == "imbalance":
        m = mean[ch][:, None].astype(np.float32)
        y[rows, :, ch] = m + FAULTS["imbalance"] * (y[rows, :, ch] - m)
    elif kind == "offset":
        y[rows, :, ch] += (FAULTS["offset"] * std[ch])[:, None].astype(np.float32)
    elif kind == "spike":
        t = np.random.default_rng(seed).integers(0, W, n)
        y[rows, t, ch] += (FAULTS["spike"] * std[ch]).astype(np.float32)
    else:
        raise ValueError(f"unknown fault kind {kind!r}")
    return y


def itsc_fault_windows(window: int, hop: int) -> dict[str, np.ndarray]:
    """Raw windows of the shipped ITSC fault recordings, by class (all 5 recordings each)."""
    from .data import itsc_class, itsc_names, itsc_recording
    from .train import make_windows

    out: dict[str, list] = {}
    for name in itsc_names():
        c = itsc_class(name)
        if c != "SC_HLT":
            out.setdefault(c, []).append(make_windows(itsc_recording(name), window, hop))
    return {c: np.concatenate(v) for c, v in sorted(out.items())}


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------

def ae_config(manifest: dict):
    """The AEConfig recorded in a manifest (``training.config``), unknown keys ignored."""
    from .train import AEConfig

    rec = (manifest.get("training") or {}).get("config") or {}
    known = {f.name for f in fields(AEConfig)}
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in rec.items() if k in known}
    cfg = AEConfig(**kw)
    cfg.window, cfg.hop, cfg.channels = manifest["window"], manifest["hop"], tuple(
        manifest["channels"])
    return cfg


def float_model_path(model: models.Model) -> Path:
    """The float Keras model a retrain fine-tunes: listed in the manifest's ``files`` (so its
    sha256 was verified) and a ``.keras`` file (`check_keras_file`). Needs no TensorFlow."""
    fm = model.manifest.get("float_model")
    if not isinstance(fm, dict) or not isinstance(fm.get("file"), str):
        raise models.ModelError(
            f"{model.dir}/manifest.json: no field 'float_model' (the float Keras model "
            "edgert retrain fine-tunes); re-run the manifest's training.command with this "
            "edgert version to write one")
    p = model.dir / fm["file"]
    if fm["file"] not in model.manifest.get("files", {}):
        raise models.ModelError(f"{model.dir}/manifest.json: field 'files' has no sha256 for "
                                f"{fm['file']}")
    return check_keras_file(p)


def check_keras_file(path: Path) -> Path:
    """``path`` if it names a Keras v3 ``.keras`` archive, else ModelError naming it.

    Only that format honours ``safe_mode=True`` (no Python code, e.g. a ``Lambda`` layer's
    bytecode, is deserialized on load); a legacy ``.h5`` or a SavedModel directory runs
    whatever it carries. Checked before TensorFlow is imported.
    """
    if Path(path).suffix != ".keras":
        raise models.ModelError(
            f"{path}: the float model must be a Keras v3 '.keras' file (loaded with "
            f"safe_mode=True); '{Path(path).suffix or Path(path).name}' is refused (a legacy "
            ".h5 or SavedModel can run arbitrary code when loaded); re-save it with "
            "model.save('NAME.keras') in a trusted environment")
    return Path(path)


def fine_tune(cfg, path: Path, x: np.ndarray, epochs: int, seed: int, lr: float,
              label: str = "fine-tune"):
    """Loads the float model and fits it on normalized windows ``x [n, 1, W, C]``."""
    from .train import Progress, load_tf, set_seed

    check_keras_file(path)  # before TensorFlow: an .h5 never reaches the loader
    tf = load_tf()
    set_seed(seed)
    # safe_mode=True explicitly (Keras' default today): no code deserialized from the archive
    model = tf.keras.models.load_model(path, compile=False, safe_mode=True)
    want = (None, 1, cfg.window, len(cfg.channels))
    if tuple(model.input_shape) != want:
        raise models.ModelError(f"{path}: input shape {model.input_shape}, expected {want}")
    steps = epochs * int(np.ceil(len(x) / cfg.batch_size))
    sched = tf.keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(steps, 1), alpha=0.02)
    model.compile(optimizer=tf.keras.optimizers.Adam(sched), loss="mse")
    cb = Progress(label, epochs).keras_callback()
    hist = model.fit(x, x, batch_size=cfg.batch_size, epochs=epochs, shuffle=True, verbose=0,
                     callbacks=[cb])
    return model, hist.history


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------

def _scorer(m8, mean, std, threshold):
    from .train import normalize

    def flags(raw: np.ndarray) -> np.ndarray:
        s, _ = m8.errors(normalize(raw, mean, std), batch=32)
        return s > threshold

    return flags


def validate(old: models.Model, old_m8, cand: dict, val_raw: np.ndarray, tol: float,
             seed: int) -> list[dict]:
    """The verdict rows: false alarms on ``val_raw`` and detection of the injected and the
    ITSC faults, current model vs candidate (each with its own normalization and threshold).
    ``cand``: ``{"m8", "mean", "std", "threshold"}``."""
    f_old = _scorer(old_m8, old.mean, old.std, old.threshold)
    f_new = _scorer(cand["m8"], cand["mean"], cand["std"], cand["threshold"])
    rows = []
    fa_old, fa_new = int(f_old(val_raw).sum()), int(f_new(val_raw).sum())
    rows.append({"check": "false alarms, held-back normal windows", "windows": len(val_raw),
                 "current": fa_old, "candidate": fa_new, "rule": "candidate <= current",
                 "passed": fa_new <= fa_old})
    for kind in FAULTS:
        xf = inject(val_raw, kind, cand["mean"], cand["std"], seed)
        d_old, d_new = float(f_old(xf).mean()), float(f_new(xf).mean())
        rows.append({"check": f"injected {kind}", "windows": len(xf), "current": round(d_old, 4),
                     "candidate": round(d_new, 4), "rule": f"candidate >= current - {tol:g}",
                     "passed": d_new >= d_old - tol})
    if list(old.channels) == ["ia", "ib", "ic"]:
        for c, xw in itsc_fault_windows(old.window, old.hop).items():
            d_old, d_new = float(f_old(xw).mean()), float(f_new(xw).mean())
            rows.append({"check": f"ITSC {c}", "windows": len(xw), "current": round(d_old, 4),
                         "candidate": round(d_new, 4), "rule": f"candidate >= current - {tol:g}",
                         "passed": d_new >= d_old - tol})
    return rows


def check_directory(d: Path) -> dict:
    """The candidate loads (sha256 of every file, tensor specs) and is complete."""
    try:
        m = models.load(d)
        problems = []
        for v in ("dynamic", "b1", "packed"):
            if v not in m.variants:
                problems.append(f"variant {v!r} missing")
        files = m.manifest.get("files", {})
        fm = (m.manifest.get("float_model") or {}).get("file")
        if fm not in files:
            problems.append("float model not listed in 'files'")
        extra = sorted(p.name for p in d.iterdir() if p.is_file() and p.name != "manifest.json"
                       and p.name not in files)
        if extra:
            problems.append(f"unlisted files {extra}")
        detail = "; ".join(problems) or (f"{len(files)} files, sha256 verified by "
                                         "edgert.models.load")
        return {"check": "manifest complete, sha256 verified", "windows": None,
                "current": None, "candidate": detail, "rule": "loads, all variants, float model",
                "passed": not problems}
    except models.ModelError as exc:
        return {"check": "manifest complete, sha256 verified", "windows": None, "current": None,
                "candidate": str(exc), "rule": "loads, all variants, float model",
                "passed": False}


def verdict_table(rows: list[dict]) -> str:
    w = max(len(r["check"]) for r in rows)
    lines = [f"{'check':<{w}}  {'windows':>7}  {'current':>8}  {'candidate':>9}  result  rule"]
    for r in rows:
        win = "" if r["windows"] is None else str(r["windows"])
        cur = "" if r["current"] is None else str(r["current"])
        cand = str(r["candidate"])
        if len(cand) > 9:  # long text (the directory check) goes after the rule
            lines.append(f"{r['check']:<{w}}  {win:>7}  {cur:>8}  {'':>9}  "
                         f"{'PASS' if r['passed'] else 'FAIL':<6}  {r['rule']}: {cand}")
        else:
            lines.append(f"{r['check']:<{w}}  {win:>7}  {cur:>8}  {cand:>9}  "
                         f"{'PASS' if r['passed'] else 'FAIL':<6}  {r['rule']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# publishing
# ---------------------------------------------------------------------------------------------

def _generation(manifest: dict) -> int:
    return int((manifest.get("retrain") or {}).get("generation", 0))


def publish(cand: Path, model_dir: Path) -> list[str]:
    """Moves the candidate's files into ``model_dir``, the manifest last; returns the old
    generation files removed.

    Every file goes to a hidden temp name in ``model_dir`` first (same file system), is
    fsynced, and then renamed onto its final name (``os.replace``). The new files have new
    names, so the running manifest's files are untouched until the manifest itself is
    replaced; a daemon watching the directory swaps once, at the manifest.
    """
    new = json.loads((cand / "manifest.json").read_text())
    old_manifest = json.loads((model_dir / "manifest.json").read_text())
    for fname in new["files"]:
        tmp = model_dir / f".{fname}.tmp"
        shutil.copyfile(cand / fname, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, model_dir / fname)
    models.write_manifest(model_dir, new)  # files re-hashed as copied, checked, replaced last
    keep = set(new["files"]) | set(old_manifest.get("files", {}))
    stem = re.escape(new["name"])
    removed = []
    for p in model_dir.iterdir():  # generations before the previous one
        if (p.is_file() and p.name not in keep
                and re.fullmatch(rf"{stem}_r\d+_(dyn|b1|packed)\.tflite|{stem}_r\d+_float\.keras",
                                 p.name)):
            p.unlink()
            removed.append(p.name)
    return sorted(removed)


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------

def retrain(model_dir, reservoir_dir, out=None, do_publish: bool = False, epochs: int = 20,
            seed: int = 0, tol: float = 0.05, lr: float | None = None, min_windows: int = 64,
            command: str | None = None, log=print) -> dict:
    """Runs the whole procedure (module docstring). Returns ``{"passed", "published", "rows",
    "candidate", …}``; raises ValueError (ModelError, ReservoirError) for bad input."""
    from .train import round_sig, load_tf, fit_normalization, normalize

    t0 = time.time()
    if out and Path(out).exists() and any(Path(out).iterdir()):
        raise ValueError(f"--out {out}: directory exists and is not empty")
    old = models.load(model_dir)
    if old.kind != "autoencoder":
        raise models.ModelError(f"{old.dir}/manifest.json: field 'kind' is {old.kind!r}; "
                                "edgert retrain fine-tunes autoencoders")
    fpath = float_model_path(old)  # a .keras file, checked before TensorFlow is imported
    load_tf()  # sets TensorFlow's environment (oneDNN off) before its first import
    cfg = ae_config(old.manifest)
    res = reservoir.load(reservoir_dir, old.name, window=old.window, channels=old.channels)
    x = res["x"]
    if len(x) < min_windows:
        raise reservoir.ReservoirError(
            f"{reservoir.paths(reservoir_dir, old.name)[1]}: {len(x)} windows, at least "
            f"{min_windows} needed (let the daemon run longer or raise reservoir_rate)")
    parts = split_blocks(len(x))
    xtr, xval = x[parts["train"]], x[parts["val"]]
    log(f"reservoir: {len(x)} windows from {sorted(set(res['sensor'].tolist()))}; "
        f"train {len(xtr)}, validation {len(xval)}")

    lr = lr if lr is not None else cfg.learning_rate / 4
    log(f"calibrating the threshold (leave one of {SEGMENTS} time segments out) ...")
    cal = calibrate(cfg, fpath, xtr, epochs, seed, lr, log)
    threshold = round_sig(cal["threshold"], 6)
    mean, std = fit_normalization(xtr)
    xn = normalize(xtr, mean, std)
    t_fit = time.time()
    model, hist = fine_tune(cfg, fpath, xn, epochs, seed, lr)
    fit_s = time.time() - t_fit
    log(f"fine-tuned {epochs} epochs in {fit_s:.1f} s (loss {hist['loss'][-1]:.5g}); "
        f"threshold {threshold:.6g} (was {old.threshold:.6g})")
    calibration = {
        "method": (f"edgert retrain: leave-one-segment-out over {SEGMENTS} consecutive "
                   "time segments of the reservoir's training windows: for each, a model "
                   "fine-tuned the same way on the others (own normalization), converted to "
                   "int8, scored its windows through LiteRT; threshold = factor x quantile "
                   "('higher') of the pooled held-out scores"),
        "windows": cal["windows"], "quantile": cfg.quantile, "factor": cfg.factor,
        "quantile_value": round_sig(cal["quantile_value"], 6),
        "per_segment_max": [round_sig(v, 6) for v in cal["per_segment_max"]]}
    training = {
        "command": command or shlex.join(["edgert", "retrain", "--model", str(model_dir),
                                          "--reservoir", str(reservoir_dir), "--epochs",
                                          str(epochs), "--seed", str(seed)]),
        "seed": seed,
        "data": (f"reservoir {reservoir_dir}: {len(x)} normal windows kept by the daemon "
                 f"(sensors {sorted(set(res['sensor'].tolist()))})"),
    }
    metrics = {"train_windows": int(len(xtr)), "epochs": epochs, "learning_rate": lr,
               "fine_tune_seconds": round(fit_s, 1), "final_train_loss": round_sig(hist["loss"][-1])}
    out_res = finish(old, cfg, model, mean, std, threshold, calibration, xtr, xval, training,
                     metrics, out=out, do_publish=do_publish, seed=seed, tol=tol, log=log, t0=t0)
    out_res.update({"windows": len(x), "fine_tune_seconds": round(fit_s, 1)})
    return out_res


def finish(old: models.Model, cfg, model, mean, std, threshold: float, calibration: dict,
           xtr: np.ndarray, xval: np.ndarray, training: dict, metrics: dict, out=None,
           do_publish: bool = False, seed: int = 0, tol: float = 0.05, log=print,
           t0: float | None = None) -> dict:
    """Steps 3 (export) to 5 for a fine-tuned float ``model`` with its normalization
    (``mean``, ``std``) and ``threshold``: the int8 variants, the verdict rows against the
    running model ``old`` on the held-back raw windows ``xval``, the candidate directory (in
    ``out`` or a new temporary one) and, when every check passes and ``do_publish``, the
    publication into ``old.dir``. ``calibration``, ``training`` and ``metrics`` go into the
    candidate's manifest (``training`` gains ``fine_tuned_from``; ``metrics`` the verdict rows
    and the packed check). Used by ``retrain`` and by ``edgert fleet`` (a federated model
    validated on a node). Returns ``{"passed", "published", "rows", "candidate", "model",
    "generation", "threshold", "previous_threshold", "seconds", "removed"}``."""
    from .train import (Int8Model, packed_vs_b1, round_sig, export_variants, float_errors,
                        normalize, representative_set, write_model_dir)

    t0 = time.time() if t0 is None else t0
    if out and Path(out).exists() and any(Path(out).iterdir()):
        raise ValueError(f"--out {out}: directory exists and is not empty")
    xn = normalize(xtr, mean, std)
    rep = representative_set(cfg, xn, seed)
    ex = export_variants(cfg, model, rep)

    old_m8 = Int8Model(models.read_variant(old, old.variants["dynamic"]))
    rows = validate(old, old_m8, {"m8": ex.dyn, "mean": mean, "std": std,
                                  "threshold": threshold}, xval, tol, seed)

    # --- candidate directory ------------------------------------------------------------
    gen = _generation(old.manifest) + 1
    stem = f"{old.name}_r{gen}"
    cand = Path(out) if out else Path(tempfile.mkdtemp(prefix=f"edgert-retrain-{old.name}-"))
    xv = normalize(xval, mean, std)
    fl, _ = float_errors(model, xv)
    s_val, _ = ex.dyn.errors(xv, batch=32)
    packed_cmp = packed_vs_b1(ex.packed, ex.b1, xv)
    corr = float(np.corrcoef(fl, s_val)[0, 1]) if len(xv) > 1 else 1.0
    m = old.manifest
    # 'attribution' (which channel an anomaly names) is kept: its phasor statistics are of the
    # raw signal, independent of the normalization a retrain refits.
    head = {k: m[k] for k in ("schema", "name", "kind", "description", "window", "hop",
                              "sample_rate_hz", "channels", "input_layout", "attribution") if k in m}
    head.update({
        "normalization": {"mean": [round_sig(v, 9) for v in mean], "std": [round_sig(v, 9) for v in std]},
        "score": "mean_sq",
        "threshold": threshold,
        "calibration": calibration,
        "class_names": None,
    })
    fidelity = {"float_int8_score_corr": round_sig(corr, 5),
                "float_int8_decision_agreement": round_sig(((fl > threshold) == (s_val > threshold))
                                                    .mean(), 5),
                "windows": int(len(xv)), "variant": "dynamic",
                "packed_equals_b1": packed_cmp["packed_equals_b1"]}
    training = {**training,
                "fine_tuned_from": {"name": old.name, "files": m.get("files"),
                                    "threshold": old.threshold},
                "original_training_command": (m.get("training") or {}).get("command")}
    metrics = {"validation": rows, **metrics, **packed_cmp}
    manifest = write_model_dir(cand, cfg, model, ex, head, fidelity, training, metrics,
                               manifest_now=False, stem=stem)
    manifest["retrain"] = {"generation": gen, "parent": _generation(m),
                           "seconds": round(time.time() - t0, 1)}
    models.write_manifest(cand, manifest)
    rows.append(check_directory(cand))
    passed = all(r["passed"] for r in rows)
    published, removed = False, []
    if passed and do_publish:
        removed = publish(cand, old.dir)
        published = True
        if not out:  # the temporary candidate is now a copy of the published files
            shutil.rmtree(cand, ignore_errors=True)
            cand = old.dir
        log(f"published generation {gen} into {old.dir}" +
            (f" (removed {', '.join(removed)})" if removed else ""))
    return {"passed": passed, "published": published, "rows": rows, "candidate": str(cand),
            "model": str(old.dir), "generation": gen, "threshold": threshold,
            "previous_threshold": old.threshold, "seconds": round(time.time() - t0, 1),
            "removed": removed}


def add_parsers(subparsers) -> argparse.ArgumentParser:
    """Adds ``retrain`` to the ``edgert`` sub-commands."""
    p = subparsers.add_parser(
        "retrain", help="fine-tune an autoencoder on the daemon's reservoir of normal windows, "
                        "validate it and (with --publish) publish it (needs TensorFlow)",
        description=(__doc__ or "").split("\n")[0])
    p.add_argument("--model", required=True, help="model directory (the one the daemon serves)")
    p.add_argument("--reservoir", required=True, metavar="DIR",
                   help="the daemon's reservoir directory (edgert serve --reservoir DIR)")
    p.add_argument("--out", default=None, help="write the candidate here (default: a new "
                                               "temporary directory)")
    p.add_argument("--publish", action="store_true",
                   help="publish the candidate into --model when every check passes")
    p.add_argument("--epochs", type=int, default=20, help="fine-tuning epochs (default 20)")
    p.add_argument("--seed", type=int, default=0, help="random seed (training and splits)")
    p.add_argument("--tolerance", type=float, default=0.05,
                   help="allowed drop of a fault detection rate (default 0.05)")
    p.add_argument("--json", action="store_true", help="last line: the result as JSON")
    p.set_defaults(fn=cmd_retrain)
    return p


def cmd_retrain(args) -> int:
    from .train import require_tensorflow

    try:  # the model's own faults first (no TensorFlow needed to find them)
        float_model_path(models.load(args.model))
    except (ValueError, FileNotFoundError) as exc:
        print(f"edgert retrain: {exc}", file=sys.stderr)
        return 2
    try:
        require_tensorflow()
    except ImportError as exc:
        print(f"edgert retrain: {exc}", file=sys.stderr)
        return 2
    if args.epochs < 1:
        print("edgert retrain: --epochs must be >= 1", file=sys.stderr)
        return 2
    cmd = shlex.join(["edgert", "retrain", "--model", args.model, "--reservoir", args.reservoir,
                      "--epochs", str(args.epochs), "--seed", str(args.seed)])
    try:
        res = retrain(args.model, args.reservoir, out=args.out, do_publish=args.publish,
                      epochs=args.epochs, seed=args.seed, tol=args.tolerance, command=cmd,
                      log=lambda *a: print(*a, file=sys.stderr, flush=True))
    except (ValueError, FileNotFoundError) as exc:
        print(f"edgert retrain: {exc}", file=sys.stderr)
        return 2
    print(verdict_table(res["rows"]))
    if res["passed"]:
        msg = ("published" if res["published"] else
               "passed; not published (no --publish)") + f": candidate {res['candidate']}"
    else:
        failed = [r["check"] for r in res["rows"] if not r["passed"]]
        msg = f"REFUSED, not published: failed {', '.join(failed)}; candidate {res['candidate']}"
    print(msg)
    if args.json:
        print(json.dumps(res, default=float))
    return 0 if res["passed"] else 1
