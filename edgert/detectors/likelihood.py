"""Anomaly likelihood: a raw anomaly score stream -> a calibrated, event-like score in [0, 1].

The idea is Numenta's "anomaly likelihood" (Ahmad et al., *Unsupervised real-time anomaly
detection for streaming data*, Neurocomputing 262, 2017; the post-processing of NAB's HTM
detector), re-implemented here from the paper's description and NAB's published settings:

* the short-term mean of the raw score (last ``avg`` rows) is compared with a normal
  distribution fitted to the history of those means (the last ``history`` rows, refitted every
  ``reestimate`` rows; mean at least 0.03, variance at least 0.0003 so a near-constant raw
  score cannot make noise look significant); the tail probability ``q`` is two-sided about
  the mean;
* a "red" tail (``q <= 1e-5``) is reported only on the row where it starts: while it lasts,
  the following rows report ``q = 1e-3`` (so one anomaly is one strong event, which is what
  NAB and an operator want);
* the score is ``log(q) / log(1e-10)`` (0.5 at ``q = 1e-5``, 1 at ``q = 1e-10``);
* a spatial rule: a value beyond the range of every earlier value by more than
  ``spatial_tol`` of that range scores 1 (NAB's HTM detector does the same);
* rows before ``learn + estimate`` (NAB: the probationary period, halved) score
  ``log(0.5) / log(1e-10)`` (about 0.03): the distribution is not known yet.

Everything is causal: the score of row ``t`` depends on rows ``<= t`` only, and feeding a
stream in blocks of any size gives the same scores as one call (`AnomalyLikelihood.update`).
Memory is bounded by ``history + avg`` floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._jit import njit

__all__ = ["LikelihoodConfig", "AnomalyLikelihood"]

_LOG_1E10 = math.log(1e-10)


@dataclass(frozen=True)
class LikelihoodConfig:
    """Settings of `AnomalyLikelihood` (defaults: NAB's HTM detector's)."""
    learn: int = 375           # rows whose raw scores are not used (the raw scorer is learning)
    estimate: int = 375        # rows after ``learn`` before the first fit
    avg: int = 10              # rows in the short-term mean of the raw score
    history: int = 8640        # rows of short-term means in each fit
    reestimate: int = 100      # rows between fits
    min_mean: float = 0.03
    min_var: float = 0.0003
    red: float = 1e-5          # tail probability of a new event
    yellow: float = 1e-3       # what the rows after it report while the tail stays red
    spatial_tol: float = 0.05  # 0 disables the spatial rule

    @classmethod
    def for_probation(cls, probation: float, **kw) -> "LikelihoodConfig":
        """NAB's HTM split of a probationary period of ``probation`` rows: half to learn, half
        to estimate."""
        p = max(2, int(probation))
        return cls(learn=p // 2, estimate=p - p // 2, **kw)

    def check(self) -> None:
        """Raises ValueError naming the first bad field."""
        for k in ("learn", "estimate", "avg", "history", "reestimate"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"likelihood: {k} must be an integer, got {v!r}")
        for k in ("learn", "estimate"):
            if not 0 <= getattr(self, k) <= 1 << 40:
                raise ValueError(f"likelihood: {k} must be in [0, 2**40], got {getattr(self, k)}")
        for k in ("avg", "history", "reestimate"):   # avg and history are allocated
            if not 1 <= getattr(self, k) <= 1 << 20:
                raise ValueError(f"likelihood: {k} must be in [1, 2**20], got {getattr(self, k)}")
        if not (0 < self.red < 1 and 0 < self.yellow < 1):
            raise ValueError(f"likelihood: red and yellow must be in (0, 1), got "
                             f"{self.red}, {self.yellow}")
        for k in ("min_mean", "min_var", "spatial_tol"):
            v = getattr(self, k)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"likelihood: {k} must be finite and >= 0, got {v}")


# state vectors (one float64 and one int64 array, so a numba call carries everything)
_F_SUM, _F_MU, _F_SD, _F_PREV_Q, _F_VMIN, _F_VMAX, _NF = range(7)
_I_N, _I_HAVE, _NI = range(3)


@njit
def _likelihood_block(raw, values, sf, si, ring_raw, ring_ma, learn, start, avg, history,
                      reestimate, min_mean, min_var, red, yellow, spatial_tol, out):
    """Scores ``raw``/``values`` (one block, in order) into ``out``, updating the state."""
    for j in range(raw.shape[0]):
        t = si[_I_N]
        r = raw[j]
        # short-term mean of the raw score over the last `avg` rows
        sf[_F_SUM] += r
        if t >= avg:
            sf[_F_SUM] -= ring_raw[t % avg]
        ring_raw[t % avg] = r
        ma = sf[_F_SUM] / min(t + 1, avg)
        q = 0.5
        if t >= start:
            if si[_I_HAVE] == 0 or (t - start) % reestimate == 0:
                a = max(learn, t - history)
                s = 0.0
                s2 = 0.0
                for k in range(a, t):
                    m = ring_ma[k % history]
                    s += m
                    s2 += m * m
                c = t - a
                mu = s / c
                var = s2 / c - mu * mu
                sf[_F_MU] = max(mu, min_mean)
                sf[_F_SD] = math.sqrt(max(var, min_var))
                si[_I_HAVE] = 1
            x = ma
            if x < sf[_F_MU]:   # two-sided: mirror about the mean
                x = 2.0 * sf[_F_MU] - x
            z = (x - sf[_F_MU]) / sf[_F_SD]
            q = 0.5 * math.erfc(z / math.sqrt(2.0))
            raw_q = q
            if q <= red and sf[_F_PREV_Q] <= red:
                q = yellow       # the event is already reported
            sf[_F_PREV_Q] = raw_q
        ring_ma[t % history] = ma
        score = math.log(q + 1e-10) / _LOG_1E10
        v = values[j]
        lo = sf[_F_VMIN]
        hi = sf[_F_VMAX]
        if spatial_tol > 0 and t > 0 and hi > lo:
            tol = (hi - lo) * spatial_tol
            if v > hi + tol or v < lo - tol:
                score = 1.0
        if t == 0 or v > hi:
            sf[_F_VMAX] = v
        if t == 0 or v < lo:
            sf[_F_VMIN] = v
        out[j] = min(1.0, max(0.0, score))
        si[_I_N] = t + 1


class AnomalyLikelihood:
    """Online anomaly likelihood of a raw score stream (see the module docstring).

    Args:
      cfg: `LikelihoodConfig` (``LikelihoodConfig.for_probation(P)`` for NAB).
    """

    def __init__(self, cfg: LikelihoodConfig | None = None):
        self.cfg = cfg or LikelihoodConfig()
        self.cfg.check()
        self._sf = np.zeros(_NF)
        self._sf[_F_PREV_Q] = 1.0
        self._si = np.zeros(_NI, np.int64)
        self._ring_raw = np.zeros(self.cfg.avg)
        self._ring_ma = np.zeros(self.cfg.history)

    @property
    def n(self) -> int:
        """Rows seen."""
        return int(self._si[_I_N])

    def update(self, raw: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Scores the next rows and learns them.

        Args:
          raw: float [k], the raw anomaly score of each row (any scale; finite).
          values: float [k], the rows' sample values (for the spatial rule).
        Returns:
          float64 [k] scores in [0, 1].
        Raises:
          ValueError: shapes differ or a value is not finite.
        """
        raw = np.ascontiguousarray(raw, np.float64).reshape(-1)
        values = np.ascontiguousarray(values, np.float64).reshape(-1)
        if raw.shape != values.shape:
            raise ValueError(f"likelihood: {len(raw)} raw scores for {len(values)} values")
        for name, a in (("raw", raw), ("values", values)):
            if not np.isfinite(a).all():
                i = int(np.flatnonzero(~np.isfinite(a))[0])
                raise ValueError(f"likelihood: {name}[{i}] is not finite ({a[i]})")
        out = np.empty(len(raw))
        c = self.cfg
        _likelihood_block(raw, values, self._sf, self._si, self._ring_raw, self._ring_ma,
                          c.learn, c.learn + c.estimate, c.avg, c.history, c.reestimate,
                          c.min_mean, c.min_var, c.red, c.yellow, c.spatial_tol, out)
        return out
