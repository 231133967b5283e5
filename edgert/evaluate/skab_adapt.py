"""Adaptive streaming on SKAB: ``edgert eval skab --adapt VARIANTS``.

The fixed-threshold streaming row of `edgert.evaluate.skab` flags a window when its score (per
scored channel, the runtime's squared error over the window's newest ``tail`` rows divided by
that channel's training quantile; the largest ratio) exceeds ``factor`` (4/3). This module
replays each file's windows in time order, one batch at a time as the daemon would (SKAB is
1 Hz: at the daemon's 1 ms batching delay every batch is one window), through edgert's
adaptive parts, and reports the same streaming F1 / FAR / MAR beside the fixed row of the same
run (same models, same scores):

* ``spot``, ``dspot``, ``quantile``: `edgert.thresholds` (built by its ``make_threshold``, as
  the daemon's are: `SpotThreshold` with the risk ``q`` = ``Config.risk_q``, DSPOT depth 200;
  `QuantileThreshold` with its defaults), warm-started from the fixed threshold (``calibrated`` = factor). Per batch:
  ``values`` -> decision -> ``learn(scores, flags)`` (they learn only from windows judged
  normal, plus isolated clipped exceedances). Their warm-up (``n_init`` / ``min_scores``) is the
  file's training windows (341), the data the fixed threshold was calibrated on: the daemon's
  1000 would end warm-up at row ~1060 of files of ~1100 rows, i.e. never adapt.
* ``+drift``: also the daemon's drift check (`edgert.drift.PageHinkley`, threshold
  ``Config.drift_threshold``, on the score and each channel's window RMS, once per second of
  sensor time = per window here); a detection calls ``recalibrate`` (back to the fixed
  threshold, warm-up again).
* ``safe``: `edgert.adapt.SafeNormalization` (the daemon's ``--adapt safe`` settings: segment
  1 s, hold ``Config.adapt_hold_s``, probation ``Config.adapt_probation_s``), fed per batch with
  the windows' raw mean/std and flags. The normalization changes the model's input, so these
  variants re-score every window through the runtime as the daemon does (its scoring core,
  `edgert.runtime.Stream`): samples appended to the sensor's ring, each completed window
  normalized and quantized with the sensor's *current* mean/inv_std rows (``kernels.ingest``),
  invoked, its tail error taken (``ReconstructionScorer.tail_error``) and divided by the
  calibrated per-channel references.
  An accepted operating point restarts the adaptive threshold (as ``Daemon._adapted``).
  ``safe`` keeps the fixed threshold; ``safe+spot`` adds SPOT.
  (This replay found that `SafeNormalization`'s gain once scaled about zero, so on SKAB's
  channels, which sit far from zero in standard deviations — valve1/0: voltage 23,
  accelerometers 53-91, thermocouple 706 — tracking's 5 % gain budget moved their levels by many
  standard deviations; the gain now scales the spread about the level.)

Every file's stream starts at row 0: the training windows come first (their decisions are not
scored; they warm the adaptive parts up), then the test windows, each decided before anything
learns from it. No label is read by this module; settings are the daemon's defaults (or the
training-part size), not tuned on SKAB's test parts.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import skab

SEC = 10**9  # SKAB samples at 1 Hz: row r is at sensor time r seconds

#: variant -> (threshold kind, PageHinkley drift recalibration, safe normalization: None or
#: "raw" (the daemon's: on the sensor's raw samples))
VARIANTS = {
    "spot": ("spot", False, None),
    "dspot": ("dspot", False, None),
    "quantile": ("quantile", False, None),
    "spot+drift": ("spot", True, None),
    "dspot+drift": ("dspot", True, None),
    "quantile+drift": ("quantile", True, None),
    "safe": ("fixed", False, "raw"),
    "safe+spot": ("spot", False, "raw"),
}


def parse_variants(text: str) -> list[str]:
    """``"off"`` -> [], ``"all"`` -> every variant, else a comma list of `VARIANTS` keys."""
    text = (text or "off").strip()
    if text == "off":
        return []
    if text == "all":
        return list(VARIANTS)
    out = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in out if v not in VARIANTS]
    if bad:
        raise ValueError(f"--adapt: unknown variant(s) {', '.join(bad)} "
                         f"(off, all, or a comma list of {', '.join(VARIANTS)})")
    return out


def make_threshold(kind: str, calibrated: float, n_warm: int):
    """The thresholder ``kind`` (fixed, spot, dspot, quantile) for one sensor, warm-started from
    ``calibrated``, with the daemon's settings except a warm-up of ``n_warm`` scores
    (`edgert.thresholds.make_threshold`)."""
    from ..config import Config
    from ..thresholds import make_threshold as make

    return make(kind, calibrated, risk_q=Config().risk_q, max_sensors=1, n_warm=n_warm)


def window_stats(x: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw per-window, per-channel mean, std and RMS (hop 1) of series ``x`` [n, C]: what the
    ingest kernel hands the daemon (``stats[..., 0:3]``). Each uses its window's rows only."""
    v = np.lib.stride_tricks.sliding_window_view(np.asarray(x, np.float64), window, axis=0)
    return v.mean(axis=2), v.std(axis=2), np.sqrt((v * v).mean(axis=2))


class RuntimeStream:
    """Scores windows of one series through a model's CPU backend on demand, in time order,
    with the normalization rows it is handed at each call (the daemon's per-batch path,
    through its scoring core `edgert.runtime.Stream`): samples are appended to the sensor's
    ring only up to the newest window asked for, and the windows they complete are quantized
    with the rows of that call.

    ``score(i, k, mean, inv_std)`` -> float64 [k]: windows i..i+k-1 (window s = rows s..s+W-1),
    per scored channel the tail error / ``ref``, maximum over ``channels``."""

    def __init__(self, model_dir, x: np.ndarray, tail: int, ref: np.ndarray,
                 channels, max_batch: int = 1):
        from ..runtime import Runner, Stream

        self.runner = Runner(model_dir, "cpu", max_batch=max_batch, tail=tail)
        self.model = m = self.runner.model
        if not self.runner.errors:
            raise ValueError(f"{model_dir}: the model reconstructs "
                             f"{self.runner.variant.output.shape[-1]} of {m.n_channels} "
                             "channels; adaptive re-scoring needs one output per channel")
        self.W, self.tail = m.window, int(tail)
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.stream = Stream(self.runner, hop=1)
        self.next = 0  # the next window the stream cuts
        self.ch = np.asarray(channels, dtype=np.int64)
        self.ref = np.asarray(ref, np.float64)

    def score(self, i: int, k: int, mean: np.ndarray, inv_std: np.ndarray) -> np.ndarray:
        W = self.W
        if k > self.runner.max_batch:
            raise ValueError(f"batch of {k} windows exceeds the backend's {self.runner.max_batch}")
        end = i + k - 1 + W  # rows needed: up to the newest window's last sample
        if end > len(self.x):
            raise ValueError(f"window {i + k - 1} runs past the series ({len(self.x)} rows)")
        if i != self.next:
            raise ValueError(f"window {i} asked after window {self.next - 1}: windows are cut "
                             "once, in time order (it has left the ring)")
        st = self.stream
        st.normalize_with(mean, inv_std)
        st.push(self.x[st.pushed:end])
        st.flush()
        r = st.take()
        self.next = i + k
        return (r.tail_err[:, self.ch] / self.ref).max(axis=1)

    def close(self) -> None:
        self.runner.close()


@dataclass
class Replay:
    """The result of one causal replay of one sensor's windows."""
    flags: np.ndarray              # bool [n_win]: the decision on each window, as it was made
    scores: np.ndarray             # float64 [n_win]
    thresholds: np.ndarray         # float64 [n_win]: the threshold each window was compared with
    drifts: int = 0
    norm_events: dict = field(default_factory=dict)  # state -> count (probation/accepted/refused)


def replay(n_win: int, score, threshold, batch: int = 1, norm=None, win_mean=None, win_std=None,
           drift=None, drift_rows=None, t_start=None) -> Replay:
    """Decide ``n_win`` windows of one sensor (index 0) in time order, ``batch`` at a time, the
    way ``Daemon._score_batch`` does: score with the current normalization, compare with the
    current threshold, then let the thresholder, the normalization and the drift check learn.

    Args:
      score: ``score(i, k, mean, inv_std) -> float64[k]`` for windows i..i+k-1 (``mean`` and
        ``inv_std`` are ``norm``'s current rows, None without ``norm``).
      threshold: an object with ``values``/``learn`` (and optionally ``recalibrate``).
      norm: a `SafeNormalization` (one sensor) fed with ``win_mean``/``win_std`` [n_win, C]
        (raw units) and ``t_start`` [n_win] ns; an accepted operating point recalibrates the
        threshold.
      drift: a `PageHinkley` over ``drift_rows.shape[1] + 1`` streams fed per batch with the
        batch's mean score and mean ``drift_rows`` [n_win, C]; a detection recalibrates.
    Returns:
      `Replay`.
    """
    flags = np.zeros(n_win, bool)
    scores = np.zeros(n_win)
    thr = np.zeros(n_win)
    sidx = np.zeros(max(1, batch), dtype=np.int64)
    recal = getattr(threshold, "recalibrate", None)
    drifts, events = 0, {}
    streams = None if drift is None else np.arange(1 + drift_rows.shape[1])
    for i in range(0, n_win, batch):
        k = min(batch, n_win - i)
        s = np.asarray(score(i, k, *((norm.mean[0], norm.inv_std[0]) if norm is not None
                                     else (None, None))), np.float64)
        t = np.asarray(threshold.values(sidx[:k]), np.float64)
        f = s > t
        threshold.learn(sidx[:k], s, f)
        flags[i:i + k], scores[i:i + k], thr[i:i + k] = f, s, t
        if norm is not None:
            for ev in norm.learn(sidx[:k], win_mean[i:i + k], win_std[i:i + k], f,
                                 t_start[i:i + k]):
                events[ev["state"]] = events.get(ev["state"], 0) + 1
                if ev["state"] == "accepted" and recal is not None:
                    recal(0)
        if drift is not None:
            vals = np.concatenate([[s.mean()], drift_rows[i:i + k].mean(axis=0)])
            if drift.update(streams, vals).any():
                drifts += 1
                if recal is not None:
                    recal(0)
    return Replay(flags, scores, thr, drifts, events)


def run_variant(variant: str, f: skab.SkabFile, pre_scores: np.ndarray, calibrated: float,
                n_warm: int, stats, stream_factory, batch: int = 1) -> Replay:
    """One variant on one file. ``pre_scores`` [n_win]: the fixed-normalization scores (used
    unless the variant adapts the normalization, which needs ``stream_factory()`` -> a
    `RuntimeStream` over the file's samples);
    ``stats``: `window_stats` of the file (raw samples)."""
    from ..adapt import SafeNormalization
    from ..config import Config
    from ..drift import PageHinkley

    kind, with_drift, norm_mode = VARIANTS[variant]
    cfg = Config()
    n_win = len(pre_scores)
    thr = make_threshold(kind, calibrated, n_warm)
    mean, std, rms = stats
    drift = PageHinkley(1 + rms.shape[1], threshold=cfg.drift_threshold) if with_drift else None
    t_start = np.arange(n_win, dtype=np.int64) * SEC
    if norm_mode is None:
        return replay(n_win, lambda i, k, *_: pre_scores[i:i + k], thr, batch=batch,
                      drift=drift, drift_rows=rms, t_start=t_start)
    stream = stream_factory()
    try:
        m = stream.model
        norm = SafeNormalization(m.mean, m.std, max_sensors=1, hold_s=cfg.adapt_hold_s,
                                 probation_s=cfg.adapt_probation_s)
        return replay(n_win, stream.score, thr, batch=batch, norm=norm, win_mean=mean,
                      win_std=std, drift=drift, drift_rows=rms, t_start=t_start)
    finally:
        stream.close()


def make_hook(variants: list[str], batch: int = 1, log=print):
    """The per-file hook for `skab.run_edgeae`: runs ``variants`` on the file's scores and
    returns ``{variant: {"stream_flags", "drifts", "norm_events", "final_threshold"}}``."""
    def hook(f: skab.SkabFile, sc: skab.Scored, model_dir: Path, scored: list[int], cfg,
             stream_score: np.ndarray) -> dict:
        n_tr = skab.TRAIN_ROWS - cfg.window + 1
        # the calibrated per-channel references of the streaming score (skab.channel_ratio)
        ref = np.quantile(sc.tail_err[:n_tr, scored].astype(np.float64), cfg.quantile, axis=0)
        ref = np.where(ref > 0, ref, np.finfo(np.float64).tiny)
        stats = window_stats(f.x, cfg.window)
        # the replay loop with the fixed threshold must reproduce skab's streaming decisions
        fx = replay(len(stream_score), lambda i, k, *_: stream_score[i:i + k],
                    make_threshold("fixed", cfg.factor, n_tr))
        out = {"_fixed_mismatch": int((fx.flags != (stream_score > cfg.factor)).sum())}
        for v in variants:
            t0 = time.time()
            r = run_variant(v, f, stream_score, cfg.factor, n_tr, stats,
                            lambda: RuntimeStream(model_dir, f.x, cfg.tail, ref, scored, batch),
                            batch=batch)
            out[v] = {"stream_flags": r.flags, "drifts": r.drifts, "norm_events": r.norm_events,
                      "final_threshold": float(r.thresholds[-1]),
                      "test_threshold_mean": float(r.thresholds[n_tr:].mean()),
                      "seconds": time.time() - t0}
            if VARIANTS[v][2] is not None:
                # before any change of the normalization the runtime re-scoring must equal the
                # fixed run's scores (same int8 path): report how many windows that held for
                same = np.isclose(r.scores, stream_score, rtol=1e-6, atol=1e-9)
                out[v]["identical_prefix"] = int(np.argmin(same)) if not same.all() else len(same)
        log(f"    {f.name} adaptive: " + ", ".join(
            f"{v} {int(o['stream_flags'][n_tr:].sum())} flags" for v, o in out.items()
            if v in VARIANTS))
        return out
    return hook


def evaluate(data, variants: list[str], seed: int = 0, files: int | None = None,
             epochs: int | None = None, batch: int = 1, log=print) -> dict:
    """`skab.evaluate` (method edgeae) with the adaptive variants replayed on every file.
    Returns its result plus ``"adapt": {variant: {f1, far, mar, tp, fp, fn, tn, drifts,
    norm_events, test_threshold_mean}}``."""
    res = skab.evaluate(data, method="edgeae", files=files, seed=seed, epochs=epochs, log=log,
                        hook=make_hook(variants, batch, log))
    sk = skab.load_skab(data, files)
    per = res.pop("_per_file_adapt")
    adapt = {}
    for v in variants:
        rows = [{"skab_flags": p["skab_flags"], "stream_flags": p["adapt"][v]["stream_flags"]}
                for p in per]
        s = skab.summarize(sk, rows)["stream"]
        a = [p["adapt"][v] for p in per]
        ev = {}
        for o in a:
            for k2, n in o["norm_events"].items():
                ev[k2] = ev.get(k2, 0) + n
        adapt[v] = {**s, "drifts": sum(o["drifts"] for o in a), "norm_events": ev,
                    "test_threshold_mean": float(np.mean([o["test_threshold_mean"] for o in a])),
                    "seconds": round(sum(o["seconds"] for o in a), 2)}
        if VARIANTS[v][2] is not None:
            adapt[v]["identical_prefix_min"] = min(o["identical_prefix"] for o in a)
    res["adapt"] = adapt
    res["adapt_batch"] = batch
    res["adapt_fixed_mismatch"] = sum(p["adapt"]["_fixed_mismatch"] for p in per)
    return res


def report(res: dict) -> str:
    """The adaptive rows beside the fixed streaming row of the same run."""
    fx = res["stream"]
    lines = [f"Adaptive streaming (causal replay, batch {res['adapt_batch']}; same models and "
             f"scores as above, seed {res['seed']}):",
             f"  {'':<40} {'F1':>6} {'FAR %':>7} {'MAR %':>7}  {'dF1':>7} {'dFAR':>7}"]
    lines.append(skab._row("fixed threshold (streaming row above)", fx,
                           f"replayed: {res['adapt_fixed_mismatch']} windows differ"))
    for v, r in res["adapt"].items():
        note = f"{r['f1'] - fx['f1']:+7.3f} {r['far'] - fx['far']:+7.2f}"
        extra = []
        if r["drifts"]:
            extra.append(f"{r['drifts']} drift recalibrations")
        if r["norm_events"]:
            extra.append("normalization " + ", ".join(f"{k} {n}" for k, n in
                                                      sorted(r["norm_events"].items())))
        extra.append(f"mean test threshold {r['test_threshold_mean']:.3g}; {r['seconds']:.1f} s")
        if "identical_prefix_min" in r:
            extra.append(f"re-scored = fixed scores until window >= {r['identical_prefix_min']}")
        lines.append(skab._row(v, r, note + "  " + "; ".join(extra)))
    return "\n".join(lines)


def add_arguments(p) -> None:
    """Adds ``--adapt`` (and ``--adapt-batch``) to the ``skab`` parser."""
    p.add_argument("--adapt", default="off", metavar="VARIANTS",
                   help="also replay the streaming decisions through edgert's adaptive parts: "
                        "off (default), all, or a comma list of " + ", ".join(VARIANTS)
                        + " (method edgeae)")
    p.add_argument("--adapt-batch", type=int, default=1,
                   help="windows per batch in the adaptive replay (1: the daemon at 1 Hz)")


def cmd(args) -> int:
    """``edgert eval skab --adapt ...``: the usual report, then the adaptive rows."""
    def run(log):
        variants = parse_variants(args.adapt)
        if args.method != "edgeae":
            raise ValueError("--adapt needs --method edgeae (its per-channel streaming score)")
        if args.adapt_batch < 1:
            raise ValueError(f"--adapt-batch must be >= 1, got {args.adapt_batch}")
        return evaluate(args.data, variants, seed=args.seed, files=args.files, epochs=args.epochs,
                        batch=args.adapt_batch, log=log)

    res = skab.guarded(run)
    if res is None:
        return 2
    print(skab.report(res), flush=True)
    print(report(res), flush=True)
    if args.json:
        def fig(r):
            return {"f1": round(r["f1"], 4), "far": round(r["far"], 3), "mar": round(r["mar"], 3),
                    **{m: r[m] for m in ("tp", "fp", "fn", "tn")}}
        out = {"method": res["method"], "seed": res["seed"], "files": res["files"],
               "seconds": res["seconds"], "skab": fig(res["skab"]), "stream": fig(res["stream"]),
               "adapt_fixed_mismatch": res["adapt_fixed_mismatch"],
               "adapt": {v: {**fig(r), "drifts": r["drifts"], "norm_events": r["norm_events"],
                             "test_threshold_mean": round(r["test_threshold_mean"], 4),
                             "seconds": r["seconds"]}
                         for v, r in res["adapt"].items()}}
        print(json.dumps(out), flush=True)
    return 0
