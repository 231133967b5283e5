"""The statistical baseline every evaluation reports beside the model (issue 15).

A model has to earn its place against the obvious detector, so each evaluator (``edgert eval
itsc|skab|nab``) scores this one on the same windows, with thresholds from the same normal data
and the same calibration rule as its model, and reports the combination too.

Features, per window (`window_features`; window ``[W, C]``, hop as the model's), on the values
the model sees (normalized with the model's mean and std, so every channel is in the same
units):

* per channel: ``level`` (mean), ``rms`` (root mean square) and ``spread`` (standard
  deviation, ddof 0);
* with ``phases=True`` (a multi-phase signal, e.g. ITSC's three motor currents): per channel the
  ``imbalance`` ``rms_c / mean_k(rms_k) - 1``, the signature of a winding fault.

The daemon already computes a window's raw mean and std per channel in its ingest kernel
(``batcher.stats``: `edgert.events.STAT_NAMES`); `features_from_stats` turns those into the
same features without touching the samples again.

Detector (`StatBaseline`): each feature's deviation from its normal center, in units of a
normal scale: ``d_f = |f - center_f| / scale_f``; the window's score is the largest ``d_f``.
The center is the mean of the feature over the normal windows; the scale is either their
standard deviation (``scale="std"``) or a quantile ``q`` of ``|f - center_f|`` over them
(``scale=q``, SKAB's per-channel rule: a ratio to the 0.999 quantile of the training windows).

Calibration, as the model's:

* ITSC (`edgert.train`'s autoencoder rule, `calibrate_loro`): leave one normal recording out,
  fit on the others, score it; threshold = ``factor`` x quantile ``q`` (numpy ``method=
  "higher"``, an observed score) of the pooled held-out scores; the detector itself is then
  fitted on all the normal recordings. ``q`` and ``factor`` are read from the fold model's
  manifest (0.999, 1.5).
* SKAB (`edgert.evaluate.skab`'s edgeae rule): per-feature ratio to the feature's 0.999
  quantile on the training windows, threshold 4/3.

Combination (`combine`): ``or`` (alarm when either alarms) and ``and`` (both). Everything is
numpy, vectorized over windows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["STATS", "feature_names", "window_starts", "window_features", "features_from_stats",
           "quantile_higher", "StatBaseline", "calibrate_loro", "combine", "rates"]

#: the per-channel statistics, in feature order (then ``imbalance`` per channel with phases)
STATS = ("level", "rms", "spread")
_TINY = 1e-12  # a feature that never moves in normal data: any move at all is a deviation


def feature_names(channels, phases: bool = False) -> list[str]:
    """``"stat:channel"`` for every feature `window_features` returns, in its column order."""
    names = [f"{s}:{c}" for c in channels for s in STATS]
    if phases:
        names += [f"imbalance:{c}" for c in channels]
    return names


def window_starts(n: int, window: int, hop: int) -> np.ndarray:
    """Starts of every window of ``window`` rows, hop ``hop``, in a series of ``n`` rows."""
    if window < 1 or hop < 1:
        raise ValueError(f"window and hop must be >= 1, got {window}, {hop}")
    return np.arange(0, max(n - window + 1, 0), hop, dtype=np.int64)


def _checked_norm(C: int, mean, std) -> tuple[np.ndarray, np.ndarray]:
    mean = np.zeros(C) if mean is None else np.asarray(mean, np.float64).reshape(-1)
    std = np.ones(C) if std is None else np.asarray(std, np.float64).reshape(-1)
    if mean.shape != (C,) or std.shape != (C,):
        raise ValueError(f"normalization mean/std need {C} values, got {mean.shape}, {std.shape}")
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise ValueError("normalization std must be finite and > 0, mean finite")
    return mean, std


def _assemble(level: np.ndarray, spread: np.ndarray, rms: np.ndarray, phases: bool) -> np.ndarray:
    """[n, C] statistics -> [n, F] features in `feature_names` order."""
    n, C = level.shape
    out = np.empty((n, C * len(STATS) + (C if phases else 0)), np.float64)
    out[:, 0:3 * C:3], out[:, 1:3 * C:3], out[:, 2:3 * C:3] = level, rms, spread
    if phases:
        m = rms.mean(axis=1, keepdims=True)
        out[:, 3 * C:] = rms / np.where(m > 0, m, _TINY) - 1.0
    return out


def window_features(x: np.ndarray, window: int, starts: np.ndarray | None = None,
                    hop: int | None = None, mean=None, std=None,
                    phases: bool = False, tail: int | None = None) -> np.ndarray:
    """Features of the windows of series ``x`` (see the module docstring).

    Args:
      x: ``[n, C]`` samples (any real dtype; computed in float64).
      window: rows per window (W).
      starts: window starts (int, each in ``0..n-W``); default every ``hop`` rows.
      hop: used when ``starts`` is None (default 1).
      mean, std: per-channel normalization applied first (``(x - mean) / std``); default none.
      phases: add the per-channel imbalance of the rms (multi-phase signals).
      tail: the statistics over each window's newest ``tail`` rows only (1..W; SKAB's
        streaming score looks at the newest rows).
    Returns:
      float64 ``[len(starts), F]``, columns as `feature_names`.
    Raises ValueError for a bad shape, a start out of range or a nonfinite sample.
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"series of shape {x.shape}: need [n, C >= 1]")
    n, C = x.shape
    if not 1 <= window <= n:
        raise ValueError(f"window {window} must be in 1..{n} (the series' rows)")
    if starts is None:
        starts = window_starts(n, window, 1 if hop is None else int(hop))
    starts = np.asarray(starts, np.int64)
    if starts.size and (starts.min() < 0 or starts.max() > n - window):
        raise ValueError(f"window starts must be in 0..{n - window}")
    t = window if tail is None else int(tail)
    if not 1 <= t <= window:
        raise ValueError(f"tail must be in 1..{window}, got {tail}")
    mu, sd = _checked_norm(C, mean, std)
    z = (x.astype(np.float64) - mu) / sd
    if not np.isfinite(z).all():
        raise ValueError("nonfinite sample(s) in the series")
    w = sliding_window_view(z, window, axis=0)[starts][:, :, window - t:]  # [k, C, t] view
    level = w.mean(axis=2)
    rms = np.sqrt((w * w).mean(axis=2))
    spread = w.std(axis=2)
    return _assemble(level, spread, rms, phases)


def features_from_stats(stats: np.ndarray, mean=None, std=None,
                        phases: bool = False) -> np.ndarray:
    """The same features from the ingest kernel's raw window statistics.

    Args:
      stats: float ``[n, C, 6]`` (`edgert.events.STAT_NAMES`: mean, std, rms, ...), raw units.
      mean, std: the model's normalization (as in `window_features`).
      phases: add the imbalance.
    Returns float64 ``[n, F]``: level ``(m - mean) / std``, spread ``s / std``, rms
    ``sqrt(level² + spread²)`` (the rms of the normalized window).
    """
    stats = np.asarray(stats, np.float64)
    if stats.ndim != 3 or stats.shape[2] < 2:
        raise ValueError(f"window statistics of shape {stats.shape}: need [n, C, 6]")
    mu, sd = _checked_norm(stats.shape[1], mean, std)
    level = (stats[:, :, 0] - mu) / sd
    spread = stats[:, :, 1] / sd
    return _assemble(level, spread, np.sqrt(level * level + spread * spread), phases)


def quantile_higher(scores: np.ndarray, q: float) -> float:
    """Quantile ``q`` of ``scores`` with numpy's ``method="higher"`` (an observed score, never
    interpolated below the largest ones): `edgert.train`'s calibration quantile."""
    s = np.asarray(scores, np.float64).reshape(-1)
    if not s.size or not 0.0 <= q <= 1.0:
        raise ValueError(f"need scores and 0 <= q <= 1 (got {s.size} scores, q {q})")
    return float(np.quantile(s, q, method="higher"))


@dataclass
class StatBaseline:
    """Largest normalized deviation of any feature from its normal center (module docstring).

    Attributes:
      center, scale: float64 ``[F]``.
      threshold: the alarm threshold on `score` (None until calibrated).
      columns: the features scored (indices into ``[F]``; default all).
      calibration: how the threshold was set (for reports).
    """

    center: np.ndarray
    scale: np.ndarray
    threshold: float | None = None
    columns: np.ndarray | None = None
    calibration: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, features: np.ndarray, scale="std", columns=None) -> "StatBaseline":
        """Center and scale from normal windows' ``features`` ``[n, F]``. ``scale``: ``"std"``
        or a quantile ``q`` in (0, 1] of ``|f - center|``. ``columns``: features to score."""
        f = np.asarray(features, np.float64)
        if f.ndim != 2 or len(f) < 1:
            raise ValueError(f"normal features of shape {f.shape}: need [n >= 1, F]")
        center = f.mean(axis=0)
        if scale == "std":
            s = f.std(axis=0)
        elif isinstance(scale, float) and 0 < scale <= 1:
            s = np.quantile(np.abs(f - center), scale, axis=0)
        else:
            raise ValueError(f"scale must be 'std' or a quantile in (0, 1], got {scale!r}")
        cols = None if columns is None else np.asarray(columns, np.int64)
        return cls(center, np.maximum(s, _TINY), None, cols)

    def deviations(self, features: np.ndarray) -> np.ndarray:
        """``|f - center| / scale`` per window and scored feature, float64 ``[n, F']``."""
        f = np.asarray(features, np.float64)
        if f.ndim != 2 or f.shape[1] != len(self.center):
            raise ValueError(f"features of shape {f.shape}: the baseline has "
                             f"{len(self.center)} features")
        d = np.abs(f - self.center) / self.scale
        return d if self.columns is None else d[:, self.columns]

    def score(self, features: np.ndarray) -> np.ndarray:
        """Window scores: the largest deviation, float64 ``[n]``."""
        d = self.deviations(features)
        return d.max(axis=1) if d.shape[1] else np.zeros(len(d))

    def flags(self, features: np.ndarray) -> np.ndarray:
        """Alarms: score above the threshold (bool ``[n]``)."""
        if self.threshold is None:
            raise ValueError("the baseline has no threshold (calibrate it first)")
        return self.score(features) > self.threshold

    def to_field(self, names=None) -> dict:
        """JSON-ready (e.g. a manifest's ``baseline`` field, for a daemon-side baseline):
        ``center``, ``scale``, ``threshold``, ``columns``, ``features`` (names), ``calibration``."""
        return {"features": None if names is None else list(names),
                "center": [float(v) for v in self.center], "scale": [float(v) for v in self.scale],
                "threshold": self.threshold,
                "columns": None if self.columns is None else [int(c) for c in self.columns],
                "calibration": self.calibration}

    @classmethod
    def from_field(cls, field_: dict) -> "StatBaseline":
        """The inverse of `to_field`; ValueError naming the field at fault."""
        try:
            center = np.asarray(field_["center"], np.float64)
            scale = np.asarray(field_["scale"], np.float64)
            thr = field_.get("threshold")
            cols = field_.get("columns")
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"baseline field: {exc!r}") from None
        if center.ndim != 1 or scale.shape != center.shape or not (scale > 0).all() \
                or not np.isfinite(center).all() or not np.isfinite(scale).all():
            raise ValueError("baseline field: 'center' and 'scale' must be equal-length finite "
                             "lists, scale > 0")
        if thr is not None and not (isinstance(thr, (int, float)) and np.isfinite(thr) and thr > 0):
            raise ValueError(f"baseline field: 'threshold' must be finite and > 0, got {thr!r}")
        if cols is not None:
            cols = np.asarray(cols, np.int64)
            if cols.ndim != 1 or (cols.size and (cols.min() < 0 or cols.max() >= len(center))):
                raise ValueError(f"baseline field: 'columns' must index 0..{len(center) - 1}")
        return cls(center, scale, None if thr is None else float(thr), cols,
                   dict(field_.get("calibration") or {}))

    def top_features(self, features: np.ndarray) -> np.ndarray:
        """Index (into the scored features) of each window's largest deviation."""
        return self.deviations(features).argmax(axis=1)


def calibrate_loro(groups, q: float, factor: float, scale="std",
                   columns=None) -> StatBaseline:
    """`edgert.train`'s autoencoder calibration applied to the baseline.

    Args:
      groups: list of normal feature arrays ``[n_i, F]``, one per normal recording (>= 2).
      q, factor: threshold = ``factor`` x `quantile_higher` (pooled held-out scores, ``q``).
      scale, columns: as `StatBaseline.fit`.
    Returns the baseline fitted on all groups, with ``threshold`` and ``calibration`` set
    (``quantile_value``, ``held_out_max`` per group).
    """
    groups = [np.asarray(g, np.float64) for g in groups]
    if len(groups) < 2:
        raise ValueError("leave-one-out calibration needs >= 2 normal recordings, got "
                         f"{len(groups)}")
    pooled, per = [], []
    for i, g in enumerate(groups):
        rest = np.concatenate([h for j, h in enumerate(groups) if j != i])
        s = StatBaseline.fit(rest, scale, columns).score(g)
        pooled.append(s)
        per.append(float(s.max()) if s.size else None)
    qv = quantile_higher(np.concatenate(pooled), q)
    b = StatBaseline.fit(np.concatenate(groups), scale, columns)
    b.threshold = float(factor) * qv
    b.calibration = {"method": "leave-one-recording-out (as the model's): threshold = factor x "
                               "quantile ('higher') of the pooled held-out scores",
                     "quantile": q, "factor": factor, "quantile_value": qv,
                     "held_out_max": per}
    return b


def combine(model_flags: np.ndarray, baseline_flags: np.ndarray, how: str = "or") -> np.ndarray:
    """The combined decision: ``or`` (either alarms) or ``and`` (both alarm)."""
    a, b = np.asarray(model_flags, bool), np.asarray(baseline_flags, bool)
    if a.shape != b.shape:
        raise ValueError(f"model flags {a.shape} and baseline flags {b.shape} differ in shape")
    if how == "or":
        return a | b
    if how == "and":
        return a & b
    raise ValueError(f"combination must be 'or' or 'and', got {how!r}")


def rates(flags_normal: np.ndarray, flags_fault: np.ndarray) -> dict:
    """False-alarm rate on normal windows and detection rate on fault windows."""
    fn, ff = np.asarray(flags_normal, bool), np.asarray(flags_fault, bool)
    return {"false_alarms": int(fn.sum()), "normal_windows": int(fn.size),
            "false_alarm_rate": round(float(fn.mean()), 4) if fn.size else None,
            "detection_rate": round(float(ff.mean()), 4) if ff.size else None}
