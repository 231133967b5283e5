"""``edgert train --kind autoencoder``: with >= 3 normal recordings, leave-one-recording-out
threshold calibration and optional per-recording folds (`train_motor_ae`, the shipped
``motor-ae``); with fewer (one stream), a chronological hold-back (`train_ae_split`)."""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .architectures import load_tf
from .config import AEConfig
from .data import (Dataset, cut, fit_normalization, load_dataset, make_windows, normalize,
                   recording_class, window_labels, window_starts)
from .export import export_dynamic, export_variants, representative_set
from .fit import train_autoencoder
from .int8 import Int8Model, float_errors, packed_vs_b1, static_after_resize
from .modeldir import (data_desc, default_command, quantile_higher, round_sig, variant_entry,
                       write_fold_dir, write_manifest, write_model_dir)


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
    q = quantile_higher(pooled, cfg.quantile)
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
    load_tf()  # TensorFlow first: fails early without it
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
    threshold = round_sig(cal["threshold"], 6)  # the value written to the manifest is the one measured

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
    packed_cmp = packed_vs_b1(packed, b1, all_x)

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
        "score_median": {c: round_sig(np.median(np.concatenate(
            [score_of[n] for n in recs if label_of[n] == c]))) for c in classes},
        "score_p05": {c: round_sig(np.quantile(np.concatenate(
            [score_of[n] for n in recs if label_of[n] == c]), 0.05)) for c in classes},
        "score_max_holdout": round_sig(max(score_of[n].max() for n in cfg.holdout_recordings)),
        "float_int8_score_corr": round_sig(corr_all, 5),
        "float_int8_score_corr_healthy_only": round_sig(corr_h, 5),
        "float_int8_score_corr_windows": int(len(s32)),
        "float_int8_score_corr_b1": round_sig(np.corrcoef(fl_all, sb1)[0, 1], 5),
        "float_int8_decision_agreement": round_sig(decision_agree, 5),
        "dyn_output_allocated_before_first_invoke": static_after_resize(dyn_bytes, cfg, 8),
        "dyn_batch_1_8_32_identical": bool(all(per_batch_equal.values())),
        "b1_equals_dyn": b1_equal,
        "b1_vs_dyn_max_abs_score_diff": round_sig(np.abs(sb1 - s32).max(), 4),
        "b1_vs_dyn_max_rel_score_diff": round_sig((np.abs(sb1 - s32) / np.maximum(s32, 1e-12)).max(), 4),
        "b1_vs_dyn_decisions_differ": int(((sb1 > threshold) != (s32 > threshold)).sum()),
        "b1_variant": {k: rates_b1[k] for k in (
            "false_alarm_rate_holdout", "false_alarm_rate_train_recordings", "detection_rate",
            "detection_rate_by_severity")},
        **packed_cmp,
        "final_train_loss": round_sig(hist["loss"][-1]),
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
        "normalization": {"mean": [round_sig(v, 9) for v in mean], "std": [round_sig(v, 9) for v in std]},
        "score": "mean_sq",
        "threshold": round_sig(threshold, 6),
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
            "quantile_value": round_sig(cal["quantile_value"], 6),
            "per_recording_max": {r: round_sig(v.max(), 6) for r, v in cal["per_recording"].items()},
        },
        **itsc_attribution(itsc, recs, label_of, cfg.train_recordings, mean, std, cfg,
                       command or default_command(out, seed, None, "autoencoder", cfg)),
        "class_names": None,
    }
    fidelity = {
        "float_int8_score_corr": round_sig(corr_all, 5),
        "float_int8_decision_agreement": round_sig(decision_agree, 5),
        "windows": int(len(s32)),
        "variant": "dynamic",
        "packed_equals_b1": packed_cmp["packed_equals_b1"],
    }
    training = {
        "command": command or default_command(out, seed, None, "autoencoder", cfg),
        "seed": seed,
        "data": data_desc(ds),
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
                f_thr = round_sig(f_cal["threshold"], 6)
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
                "normalization": {"mean": [round_sig(v, 9) for v in f_mean],
                                  "std": [round_sig(v, 9) for v in f_std]},
                "score": "mean_sq", "threshold": f_thr,
                "calibration": {"method": manifest["calibration"]["method"],
                                "recordings": list(others), "quantile": cfg.quantile,
                                "factor": cfg.factor,
                                "quantile_value": round_sig(f_cal["quantile_value"], 6)},
                **itsc_attribution(itsc, recs, label_of, others, f_mean, f_std, cfg,
                               command or default_command(out, seed, None, "autoencoder", cfg)),
                "class_names": None,
                "variants": {"dynamic": variant_entry(fname, m8, "dynamic")},
                "fold": {"held_out": [h], "train": list(others), "seed": seed,
                         "parent": cfg.name},
                "metrics": {k: f_rates[k] for k in (
                    "false_alarm_rate_holdout", "detection_rate", "detection_rate_by_severity")},
            }
            write_fold_dir(folds_dir / h, fm, {fname: f_bytes})
            summary.append({"held_out": h, "threshold": f_thr,
                            "false_alarm_rate": f_rates["false_alarm_rate_holdout"][h],
                            "detection_rate": f_rates["detection_rate"]})
        det = {c: round_sig(np.mean([s["detection_rate"][c] for s in summary]), 4)
               for c in summary[0]["detection_rate"]}
        manifest["training"]["metrics"]["cv"] = {
            "method": "leave-one-normal-recording-out: each normal recording held out in turn, "
                      "threshold calibrated (leave-one-recording-out) on the others, int8 "
                      "dynamic model scored through LiteRT; models in folds/",
            "folds": summary,
            "false_alarm_rate_held_out_mean": round_sig(np.mean([s["false_alarm_rate"]
                                                          for s in summary]), 4),
            "detection_rate_mean": det,
        }
    manifest["training"]["seconds"] = round(time.time() - t0, 1)
    write_manifest(out, manifest)
    log(f"wrote {out} in {time.time() - t0:.0f} s; threshold {threshold:.6g}")
    return manifest


def itsc_attribution(itsc: bool, recs: dict, label_of: dict, normal, mean, std, cfg,
                 command) -> dict:
    """``{"attribution": field}`` for an ITSC-like model (`edgert.evaluate.itsc.attribution_for`:
    normal phasors from ``normal``, fault angle from the single-phase fault recordings), else {}."""
    if not itsc or not cfg.sample_rate_hz:
        return {}
    from ..evaluate.itsc import attribution_for

    field = attribution_for({n: (x, label_of[n]) for n, x in recs.items()}, list(normal), mean,
                            std, cfg.window, cfg.hop, cfg.sample_rate_hz)
    field["command"] = command
    return {"attribution": field}


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
            "rate": round_sig(r, 4), "windows": nwin,
            "per_recording": {n: round_sig((score_of[n] > threshold).mean(), 4) for n in names}}

    def severity(name):  # "SC_A0_B3_C0_002" -> 3; None for the healthy class
        m = re.fullmatch(r"SC_A(\d)_B(\d)_C(\d)_\d+", name)
        return max(int(v) for v in m.groups()) if m else None

    levels = sorted({severity(n) for n in score_of} - {None})
    return {
        "false_alarm_rate_holdout": {n: round_sig((score_of[n] > threshold).mean(), 4)
                                     for n in cfg.holdout_recordings},
        "false_alarm_windows_holdout": int(sum((score_of[n] > threshold).sum()
                                               for n in cfg.holdout_recordings)),
        "holdout_windows": rate(list(cfg.holdout_recordings))[1],
        "false_alarm_rate_train_recordings": round_sig(rate(list(cfg.train_recordings))[0], 4),
        "detection_rate": {c: detection[c]["rate"] for c in detection},
        "detection_rate_by_severity": {
            f"{10 * k}%": round_sig(rate([n for n in score_of if severity(n) == k])[0], 4)
            for k in levels},
        "detection_windows_per_class": {c: detection[c]["windows"] for c in detection},
        "detection_per_recording": {c: detection[c]["per_recording"] for c in detection},
    }


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
    load_tf()  # TensorFlow first: fails early without it
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
    q = quantile_higher(s_held, cfg.quantile)
    threshold = round_sig(cfg.factor * q, 6)

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
        detection[lab] = {"rate": round_sig((sa > threshold).mean(), 4), "windows": int(len(sa))}
        fl_parts.append(float_errors(model, xa)[0])
        q_parts.append(sa)
    fl_all, s_all = np.concatenate(fl_parts), np.concatenate(q_parts)
    corr = float(np.corrcoef(fl_all, s_all)[0, 1]) if len(s_all) > 1 else 1.0
    agree = float(((fl_all > threshold) == (s_all > threshold)).mean())
    packed_cmp = packed_vs_b1(packed, b1, held)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "folds").exists():
        shutil.rmtree(out / "folds")
    head = {
        "schema": 1, "name": cfg.name, "kind": "autoencoder",
        "description": _ae_description(cfg, False),
        "window": W, "hop": H, "sample_rate_hz": cfg.sample_rate_hz,
        "channels": list(cfg.channels), "input_layout": "NHWC",
        "normalization": {"mean": [round_sig(v, 9) for v in mean], "std": [round_sig(v, 9) for v in std]},
        "score": "mean_sq",
        "threshold": threshold,
        "calibration": {
            "method": (f"chronological hold-back: the last {cfg.holdout_fraction:g} of every "
                       "normal stream is never trained on; threshold = factor x quantile "
                       f"('higher') of the int8 scores (LiteRT) of its windows (hop {H})"),
            "windows": int(len(s_held)), "recordings": [r.name for r, _, _ in parts],
            "quantile": cfg.quantile, "factor": cfg.factor, "quantile_value": round_sig(q, 6),
            "normal_label": normal,
        },
        "class_names": None,
    }
    fidelity = {"float_int8_score_corr": round_sig(corr, 5),
                "float_int8_decision_agreement": round_sig(agree, 5),
                "windows": int(len(s_all)), "variant": "dynamic",
                "packed_equals_b1": packed_cmp["packed_equals_b1"]}
    training = {
        "command": command or default_command(out, seed, None, "autoencoder", cfg),
        "seed": seed, "data": data_desc(ds), "data_sha256": ds.sha256,
    }
    metrics = {
        "scored_with": "LiteRT int8 (dynamic variant, batch 32)",
        "false_alarm_rate_held_back": round_sig((s_held > threshold).mean(), 4),
        "held_back_windows": int(len(s_held)),
        "detection_rate": {k: v["rate"] for k, v in detection.items()},
        "detection_windows": {k: v["windows"] for k, v in detection.items()},
        **packed_cmp,
        "final_train_loss": round_sig(hist["loss"][-1]),
    }
    manifest = write_model_dir(out, cfg, model, ex, head, fidelity, training, metrics,
                               manifest_now=False)
    manifest["training"]["seconds"] = round(time.time() - t0, 1)
    write_manifest(out, manifest)
    log(f"wrote {out} in {time.time() - t0:.0f} s; threshold {threshold:.6g}")
    return manifest
