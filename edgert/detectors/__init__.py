"""Online detectors for one scalar stream (NAB-style series): raw scorers plus the anomaly
likelihood, each a small causal state machine fed block by block.

Protocol (River's ``learn_one``/``score_one``, vectorized): ``det.update(values, stamps)``
scores the next rows, then learns them, and returns one score in [0, 1] per row. Feeding a
stream in blocks of any size gives the same scores as one call, and the score of row ``t``
never depends on rows after ``t`` (tests/test_nab_detectors.py checks both). The numba
kernels run a whole block per call (no per-sample Python); without numba the same code runs
as plain Python.

Detectors (`DETECTORS`, ``edgert eval nab --detector NAME``):

* ``context``: `context.ContextNovelty` (CAD-OSE-like context novelty over several
  quantizers, with the time of day) -> `likelihood.AnomalyLikelihood` (HTM's post-processing:
  likelihood of the short-term mean, one event per red episode, spatial rule).
* ``level``: the likelihood on the level channel alone: raw = |value - mean| / std of the
  warm-up rows, squashed to [0, 1) (a statistical baseline for ``context``).

They live here, not in ``edgert.evaluate``, because they are meant for the daemon's scoring
path as well (a per-sensor state of a few MB), and ``edgert.evaluate.nab`` only drives them.
"""

from __future__ import annotations

import numpy as np

from ._jit import BACKEND
from .context import ContextConfig, ContextNovelty, time_buckets
from .likelihood import AnomalyLikelihood, LikelihoodConfig

__all__ = ["BACKEND", "DETECTORS", "ContextConfig", "ContextNovelty", "LikelihoodConfig",
           "AnomalyLikelihood", "ContextDetector", "LevelDetector", "make_detector",
           "time_buckets"]


def _check_values(values) -> np.ndarray:
    """float64 [k] of finite values, or ValueError naming the first bad row."""
    v = np.ascontiguousarray(values, np.float64).reshape(-1)
    bad = ~np.isfinite(v)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"detector: value at row {i} of the block is not finite ({v[i]})")
    return v


class ContextDetector:
    """Context novelty -> anomaly likelihood (``--detector context``).

    Args:
      warmup: rows that fix the quantizers and whose scores are 0 (NAB: the probationary
        period); the likelihood learns on half of them and fits on the other half.
      context: `ContextConfig` overrides (``warmup`` is set from the argument).
      likelihood: `LikelihoodConfig` overrides (``learn``/``estimate`` from ``warmup``).
    """

    name = "context"

    def __init__(self, warmup: int, context: dict | None = None,
                 likelihood: dict | None = None):
        self.ctx = ContextNovelty(ContextConfig(**{**(context or {}), "warmup": int(warmup)}))
        self.lik = AnomalyLikelihood(LikelihoodConfig.for_probation(warmup, **(likelihood or {})))

    def update(self, values, stamps=None) -> np.ndarray:
        """Scores in [0, 1] for the next rows (0 while warming up), then learns them.

        Args:
          values: float [k], finite.
          stamps: datetime64 [k] (the time-of-day context), or None.
        """
        v = _check_values(values)
        tod = None if stamps is None else time_buckets(stamps)
        if tod is not None and tod.shape != v.shape:
            raise ValueError(f"detector: {len(tod)} timestamps for {len(v)} values")
        raw, warm_raw, warm_v = self.ctx.update(v, tod)
        if warm_raw is not None:        # warm-up complete: its rows teach the likelihood
            self.lik.update(warm_raw, warm_v)
        out = np.zeros(len(v))
        live = ~np.isnan(raw)
        if live.any():
            out[live] = self.lik.update(raw[live], v[live])
        return out


class LevelDetector:
    """The anomaly likelihood of the level alone (``--detector level``): raw =
    ``1 - exp(-|value - mean| / std)`` with the warm-up rows' mean and std (statistical
    baseline: no context, no model).

    Args:
      warmup: as `ContextDetector`.
      likelihood: `LikelihoodConfig` overrides.
    """

    name = "level"

    def __init__(self, warmup: int, likelihood: dict | None = None):
        if not 2 <= int(warmup) <= 1 << 22:
            raise ValueError(f"level: warmup must be in [2, 2**22] rows, got {warmup}")
        self.warmup = int(warmup)
        self.lik = AnomalyLikelihood(LikelihoodConfig.for_probation(warmup, **(likelihood or {})))
        self._buf: list[np.ndarray] = []
        self._nbuf = 0
        self.mean = self.std = None

    def _raw(self, v: np.ndarray) -> np.ndarray:
        return 1.0 - np.exp(-np.abs(v - self.mean) / self.std)

    def update(self, values, stamps=None) -> np.ndarray:
        """As `ContextDetector.update` (``stamps`` is not used)."""
        v = _check_values(values)
        out = np.zeros(len(v))
        i = 0
        if self.mean is None:
            i = min(len(v), self.warmup - self._nbuf)
            self._buf.append(v[:i].copy())
            self._nbuf += i
            if self._nbuf == self.warmup:
                w = np.concatenate(self._buf)
                self.mean = float(w.mean())
                self.std = float(w.std()) or max(abs(self.mean), 1.0) * 1e-3
                self.lik.update(self._raw(w), w)
                self._buf = []
        if self.mean is not None and i < len(v):
            out[i:] = self.lik.update(self._raw(v[i:]), v[i:])
        return out


#: ``--detector`` names -> factories ``(warmup rows) -> detector``
DETECTORS = {"context": ContextDetector, "level": LevelDetector}


def make_detector(name: str, warmup: int, **kw):
    """A detector of `DETECTORS` by name; ValueError naming the choices otherwise."""
    try:
        cls = DETECTORS[name]
    except KeyError:
        raise ValueError(f"unknown detector {name!r} (choose from "
                         f"{', '.join(sorted(DETECTORS))})") from None
    return cls(warmup, **kw)
