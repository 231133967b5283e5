"""``edgert train --kind classifier``: cross-validation folds, label audit, the final model
on all data (`train_classifier`, the shipped ``motor-cnn``), and the summaries that
``edgert eval itsc`` shares (`label_audit`, `classification_summary`)."""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .architectures import load_tf
from .config import CNNConfig
from .data import Dataset, cut, fit_normalization, normalize, window_labels, window_starts
from .export import export_dynamic, export_variants, representative_set
from .fit import train_classifier_model
from .int8 import Int8Model, float_logits, packed_vs_b1, static_after_resize
from .modeldir import (data_desc, default_command, round_sig, variant_entry, write_fold_dir,
                       write_manifest, write_model_dir)


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
                                "distance_own": round_sig(d[c], 3), "distance_nearest": round_sig(d[best], 3)})
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
                 "window_accuracy": round_sig((pred == y).mean(), 4)}
        if maj != y:
            out.append({**entry, "kind": "majority is another class",
                        "looks_like": class_names[maj], "share": round_sig(votes[maj] / len(pred), 4)})
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
        "window_accuracy": round_sig((y == pred).mean(), 4) if len(y) else None,
        "windows": int(len(y)),
        "recording_accuracy": round_sig(np.mean(list(rec_ok.values())), 4) if rec_ok else None,
        "recordings": len(rec_ok),
        "confusion": conf.tolist(),
        "per_recording": {n: {"label": class_names[yy], "accuracy": round_sig((p == yy).mean(), 4),
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
    load_tf()  # TensorFlow first: fails early without it
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
            "normalization": {"mean": [round_sig(v, 9) for v in mean], "std": [round_sig(v, 9) for v in std]},
            "score": "argmax", "output": "logits", "threshold": None,
            "class_names": list(class_names),
            "variants": {"dynamic": variant_entry(fname_dyn, m8, "dynamic")},
            "fold": {"name": fold, "held_out": sorted(held),
                     "not_trained_on": [d["recording"] for d in dropped],
                     "held_out_samples": {n: list(v) for n, v in sorted(held.items())},
                     "seed": seed, "parent": cfg.name},
            "metrics": {"window_accuracy": round_sig(acc, 4), "int8_float_argmax_agreement": round_sig(agr, 4),
                        "windows": int(len(yt))},
        }
        fm = write_fold_dir(folds_dir / fold, fm, {fname_dyn: fbytes})
        fold_rows.append({"fold": fold, "held_out": sorted(held), "window_accuracy": round_sig(acc, 4),
                          "float_window_accuracy": round_sig((pf == yt).mean(), 4),
                          "int8_float_argmax_agreement": round_sig(agr, 4), "windows": int(len(yt)),
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
            "float_window_accuracy": round_sig((pf == y).mean(), 4),
            "int8_float_argmax_agreement": round_sig((p8 == pf).mean(), 4),
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
    packed_cmp = packed_vs_b1(packed, b1, xan)
    agree = float((p_dyn == p_fl).mean())
    final = {
        "scored_with": "LiteRT int8 (dynamic variant, batch 32) on every window (hop "
                       f"{H}) of the training data",
        "train_window_accuracy_int8": round_sig((p_dyn == ya).mean(), 4),
        "train_window_accuracy_float": round_sig((p_fl == ya).mean(), 4),
        "int8_float_argmax_agreement": round_sig(agree, 5),
        "b1_float_argmax_agreement": round_sig((p_b1 == p_fl).mean(), 5),
        "b1_dyn_argmax_agreement": round_sig((p_b1 == p_dyn).mean(), 5),
        "windows": int(len(ya)),
        "dyn_batch_1_8_32_identical": bool(same_batches),
        "dyn_output_allocated_before_first_invoke": static_after_resize(dyn_bytes, cfg, 8),
        **packed_cmp,
        "final_train_loss": round_sig(hist["loss"][-1]),
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
        "normalization": {"mean": [round_sig(v, 9) for v in mean], "std": [round_sig(v, 9) for v in std]},
        "score": "argmax",
        "output": "logits",
        "threshold": None,
        "class_names": list(class_names),
    }
    fidelity = {
        "int8_float_argmax_agreement": round_sig(agree, 5),
        "windows": int(len(ya)),
        "variant": "dynamic",
        "b1_float_argmax_agreement": final["b1_float_argmax_agreement"],
        "packed_equals_b1": packed_cmp["packed_equals_b1"],
        "cv_held_out_int8_float_argmax_agreement": (cv or {}).get(
            "int8_float_argmax_agreement"),
    }
    training = {
        "command": command or default_command(out, seed, None, "classifier", cfg),
        "seed": seed,
        "data": data_desc(ds),
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
