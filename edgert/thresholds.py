"""Thresholds on anomaly scores: the `Threshold` protocol, the fixed (calibrated) threshold,
SPOT/DSPOT (peaks over threshold), a quantile rule, and `make_threshold`, the factory by name.

The protocol (River-style: one small seam every thresholder shares, applied per batch, with
per-sensor state kept inside; see `Threshold`):

* ``values(sensor_idx) -> thresholds``: the threshold of each row's sensor;
* ``learn(sensor_idx, scores, flags)``: observe a batch's scores and decisions;
* ``forget(sensor)``: a sensor slot was freed (evicted): no state left for its next owner;
* ``rebase(calibrated)``: a new model (hot swap) with its own calibrated threshold;
* ``recalibrate(sensor)``: adaptive thresholders only (`AdaptiveThreshold`): restart one
  sensor's calibration (after a drift). Its presence is what marks a thresholder adaptive
  (the daemon's drift event reports ``recalibrating`` from it), so `FixedThreshold` has none.

Rebase: a new model scores in its own units, so what an adaptive thresholder learned from the
old model's scores (fitted tails, warm-up scores, DSPOT moving averages, quantile buffers)
does not carry over: every sensor restarts its calibration from the new calibrated value, and
the ceiling (ceiling × calibrated) follows the new model. Only the alarm positions used to
tell isolated alarms from bursts (counted in windows, not score units) are kept.

SPOT (Siffer et al., KDD 2017) models the tail of the score distribution above a high initial
threshold ``t`` with a generalized Pareto distribution fitted to the peaks ``x - t``, and sets
the alarm threshold ``z_q`` so that P(score > z_q) = q, the one parameter (the risk).
DSPOT first subtracts a moving average of recent normal scores, for streams whose level drifts.

Safety: scores above the alarm threshold are learned only when they are isolated (no other
alarm in the previous `isolation` windows of that sensor: the rare exceedances a risk q
implies; leaving them out would censor the tail and drag the threshold down after itself),
and then clipped to `clip` × the threshold; alarms in bursts, which is what faults look like,
are never learned. The threshold moves at most `max_step` (relative) per refit and never
rises above `ceiling` × the calibrated threshold, so a slowly growing fault cannot drag the
threshold up after itself.
"""

from __future__ import annotations

import math
import numbers
from typing import Protocol, runtime_checkable

import numpy as np

#: the thresholder names `make_threshold` knows (``Config.threshold``)
KINDS = ("fixed", "spot", "dspot", "quantile")
#: DSPOT moving-average depth (the daemon's and the evaluators')
DSPOT_DEPTH = 200


@runtime_checkable
class Threshold(Protocol):
    """What every thresholder implements (see the module docstring)."""

    def values(self, sensor_idx: np.ndarray) -> np.ndarray:
        """Per-row thresholds (float32 [n]) for windows of sensors ``sensor_idx`` (int [n])."""

    def learn(self, sensor_idx: np.ndarray, scores: np.ndarray, flags: np.ndarray) -> None:
        """Observe a batch: each row's sensor, score and decision (score > its threshold)."""

    def forget(self, sensor: int) -> None:
        """Drop what was learned for a sensor slot (the sensor was evicted)."""

    def rebase(self, calibrated: float) -> None:
        """Follow a new model whose calibrated threshold is ``calibrated`` (finite, > 0):
        every sensor's threshold becomes ``calibrated`` and adapts from there."""


@runtime_checkable
class AdaptiveThreshold(Threshold, Protocol):
    """A thresholder that learns per sensor, and so can restart a sensor's calibration."""

    def recalibrate(self, sensor: int) -> None:
        """Forget what sensor ``sensor`` learned (after a drift): back to the calibrated value."""


def _checked_calibrated(calibrated) -> float:
    """``calibrated`` as a float; ValueError unless a finite number > 0."""
    ok = isinstance(calibrated, numbers.Real) and not isinstance(calibrated, bool)
    if not (ok and math.isfinite(calibrated) and calibrated > 0):
        raise ValueError(f"calibrated threshold must be finite and > 0, got {calibrated!r}")
    return float(calibrated)


def _positive_int(name: str, v) -> int:
    """``v`` as an int; ValueError naming ``name`` unless an integer >= 1."""
    if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    return int(v)


class FixedThreshold:
    """The manifest's calibrated threshold, the same for every sensor."""

    def __init__(self, value: float):
        self.value = float(value)
        self._buf = np.full(1, self.value, dtype=np.float32)

    def values(self, sensor_idx: np.ndarray) -> np.ndarray:
        """The value for every row (a view of a reused buffer: read it before the next call)."""
        if self._buf.size < sensor_idx.size:
            self._buf = np.full(sensor_idx.size, self.value, dtype=np.float32)
        return self._buf[:sensor_idx.size]

    def learn(self, sensor_idx, scores, flags) -> None:
        """Nothing to learn: the value is the manifest's."""

    def forget(self, sensor: int) -> None:
        """No per-sensor state."""

    def rebase(self, calibrated: float) -> None:
        """Take the new model's calibrated threshold."""
        self.value = _checked_calibrated(calibrated)
        self._buf = np.full(self._buf.size, self.value, dtype=np.float32)


def make_threshold(kind: str, calibrated: float, *, risk_q: float, max_sensors: int,
                   n_warm: int | None = None) -> Threshold:
    """The thresholder named ``kind``, warm-started from the calibrated threshold.

    Args:
      kind: one of `KINDS`: ``fixed`` (the calibrated value), ``spot``, ``dspot`` (SPOT with
        a moving average of depth `DSPOT_DEPTH`) or ``quantile`` (`QuantileThreshold` with
        its defaults).
      calibrated: the model's calibrated threshold (finite, > 0).
      risk_q: SPOT/DSPOT risk q (``Config.risk_q``), in (0, 1).
      max_sensors: sensor slots (``Config.max_sensors``), >= 1.
      n_warm: scores per sensor before an adaptive thresholder fits its own (None: the
        class defaults, 1000).
    Returns:
      a `Threshold` (an `AdaptiveThreshold` unless ``kind`` is ``fixed``).
    Raises:
      ValueError: an unknown kind or an out-of-range argument, naming it.
    """
    c = _checked_calibrated(calibrated)
    max_sensors = _positive_int("max_sensors", max_sensors)
    n_warm = None if n_warm is None else _positive_int("n_warm", n_warm)
    warm = {} if n_warm is None else {"n_init": n_warm}
    if kind == "fixed":
        return FixedThreshold(c)
    if kind == "spot":
        return SpotThreshold(q=risk_q, calibrated=c, max_sensors=max_sensors, **warm)
    if kind == "dspot":
        return SpotThreshold(q=risk_q, calibrated=c, depth=DSPOT_DEPTH, max_sensors=max_sensors, **warm)
    if kind == "quantile":
        return QuantileThreshold(calibrated=c, max_sensors=max_sensors,
                                 **({} if n_warm is None else {"min_scores": n_warm}))
    raise ValueError(f"unknown threshold kind {kind!r} (one of {', '.join(KINDS)})")


def gpd_fit(peaks: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood GPD (shape gamma, scale sigma) for excesses `peaks` (> 0).

    Uses Grimshaw's reduction to one parameter theta = gamma / sigma: for each theta the
    optimal gamma is mean(log(1 + theta * y)), so the likelihood is maximized on a grid of
    theta (vectorized), then refined by golden-section search; theta -> 0 is the exponential.
    Returns:
      (gamma, sigma).
    """
    y = np.asarray(peaks, dtype=np.float64)
    y = y[y > 0]
    n = y.size
    if n == 0:
        return 0.0, 1e-12
    mean = y.mean()
    if n < 3 or y.max() <= 0:
        return 0.0, max(mean, 1e-12)

    def loglik(theta):
        theta = np.atleast_1d(theta)
        z = 1.0 + np.outer(theta, y)
        ok = np.all(z > 0, axis=1)
        logz = np.log(np.where(z > 0, z, 1.0))
        g = logz.mean(axis=1)
        sigma = np.where(theta != 0, g / np.where(theta != 0, theta, 1.0), mean)
        ll = -n * np.log(np.where(sigma > 0, sigma, np.inf)) - (1.0 + 1.0 / np.where(g != 0, g, np.inf)) * logz.sum(axis=1)
        ll = np.where(ok & (sigma > 0), ll, -np.inf)
        return ll, g, sigma

    lo = -1.0 / y.max() + 1e-9
    hi = 20.0 / mean
    grid = np.concatenate([lo + (0 - lo) * (1 - np.geomspace(1, 1e-6, 60)), np.geomspace(1e-6 / mean, hi, 80)])
    ll, g, s = loglik(grid)
    exp_ll = -n * math.log(mean) - n  # theta -> 0: exponential with scale = mean
    i = int(np.argmax(ll))
    if not np.isfinite(ll[i]) or ll[i] <= exp_ll:
        return 0.0, float(mean)
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    phi = (math.sqrt(5) - 1) / 2
    for _ in range(40):  # golden section on [a, b]
        c, d = b - phi * (b - a), a + phi * (b - a)
        if loglik(c)[0][0] > loglik(d)[0][0]:
            b = d
        else:
            a = c
    theta = 0.5 * (a + b)
    ll_t, g_t, s_t = loglik(theta)
    if ll_t[0] < ll[i]:
        return float(g[i]), float(s[i])
    return float(g_t[0]), float(s_t[0])


def gpd_quantile(t: float, gamma: float, sigma: float, q: float, n: int, nt: int) -> float:
    """SPOT's z_q: the score exceeded with probability q, given nt of n scores exceed t."""
    if nt <= 0:
        return t
    r = q * n / nt
    if abs(gamma) < 1e-9:
        return t - sigma * math.log(r)
    return t + sigma / gamma * (r ** (-gamma) - 1.0)


class _Isolation:
    """Per-sensor alarm bookkeeping: which exceedances are isolated tail events."""

    def __init__(self):
        self.seen: dict[int, int] = {}
        self.last: dict[int, int] = {}

    def forget(self, s: int) -> None:
        self.seen.pop(s, None)
        self.last.pop(s, None)

    def learnable(self, s: int, x: np.ndarray, flags: np.ndarray, isolation: int, cap: float) -> np.ndarray:
        """Scores of sensor `s` that may be learned: the normal ones, plus isolated alarms clipped to `cap`."""
        seen = self.seen.get(s, 0)
        self.seen[s] = seen + x.size
        if not flags.any():
            return x
        pos = seen + np.flatnonzero(flags)
        gaps = np.diff(np.concatenate([[self.last.get(s, -(1 << 60))], pos]))
        self.last[s] = int(pos[-1])
        isolated = x[flags][gaps > isolation]
        normal = x[~flags]
        if isolated.size:
            normal = np.concatenate([normal, np.minimum(isolated, cap)])
        return normal


class _SensorSpot:
    __slots__ = ("init", "n", "peaks", "t", "z", "gamma", "sigma", "new", "ma", "fitted")

    def __init__(self, depth: int):
        self.init: list = []
        self.n = 0
        self.peaks = np.zeros(0)
        self.t = self.z = math.nan
        self.gamma = self.sigma = 0.0
        self.new = 0
        self.ma = np.zeros(0)  # the last `depth` normal scores, oldest first (DSPOT)
        self.fitted = False


class SpotThreshold:
    """Per-sensor SPOT (depth=0) or DSPOT (depth>0) thresholds.

    Args:
      q: risk: the target probability that a normal score exceeds the threshold.
      calibrated: the manifest's calibrated threshold; serves until a sensor has `n_init`
        scores, caps what is learned during warm-up (scores above it are not normal), and
        anchors the ceiling.
      n_init: scores per sensor before the tail is fitted (warm start uses `calibrated`).
      level: quantile of the warm-up scores taken as the initial threshold t.
      depth: DSPOT moving-average depth (0: plain SPOT).
      ceiling: the threshold never exceeds ceiling × calibrated (a poisoning guard).
      max_step: largest relative change of the threshold per refit.
      max_peaks: peaks kept per sensor (older ones are forgotten proportionally).
      refit_every: refit after this many new peaks.
      isolation: an alarm with no other alarm in this many previous windows of its sensor is
        taken as a normal tail event and learned (clipped); default 1 / (10 q).
      clip: learned exceedances are clipped to clip × the current threshold.
    """

    def __init__(self, q: float = 1e-3, calibrated: float | None = None, n_init: int = 1000,
                 level: float = 0.98, depth: int = 0, ceiling: float = 3.0, max_step: float = 0.1,
                 max_peaks: int = 2000, refit_every: int = 10, max_sensors: int = 4096,
                 isolation: int | None = None, clip: float = 1.5):
        if not 0 < q < 1:
            raise ValueError(f"q must be in (0, 1), got {q}")
        self.q, self.calibrated, self.n_init, self.level = q, calibrated, n_init, level
        self.depth, self.ceiling, self.max_step = depth, ceiling, max_step
        self.max_peaks, self.refit_every = max_peaks, refit_every
        self.isolation = int(isolation if isolation is not None else max(10, round(0.1 / q)))
        self.clip = clip
        self._iso = _Isolation()
        self._s: dict[int, _SensorSpot] = {}
        default = calibrated if calibrated is not None else math.inf
        self._z = np.full(max_sensors, default, dtype=np.float64)  # alarm threshold per sensor
        self._m = np.zeros(max_sensors, dtype=np.float64)  # DSPOT moving average per sensor

    # -- the seam ----------------------------------------------------------
    def values(self, sensor_idx: np.ndarray) -> np.ndarray:
        return (self._z[sensor_idx] + self._m[sensor_idx]).astype(np.float32)

    def learn(self, sensor_idx: np.ndarray, scores: np.ndarray, flags: np.ndarray) -> None:
        sensor_idx = np.asarray(sensor_idx)
        if sensor_idx.size == 0:
            return
        if np.all(sensor_idx == sensor_idx[0]):
            self._learn_sensor(int(sensor_idx[0]), np.asarray(scores, np.float64), np.asarray(flags))
            return
        for s in np.unique(sensor_idx):
            sel = sensor_idx == s
            self._learn_sensor(int(s), np.asarray(scores, np.float64)[sel], np.asarray(flags)[sel])

    def threshold(self, sensor: int) -> float:
        return float(self._z[sensor] + self._m[sensor])

    def recalibrate(self, sensor: int) -> None:
        """Forget a sensor's fitted tail (after a drift): warm start again from the calibrated value."""
        self._s.pop(int(sensor), None)
        self._z[sensor] = self.calibrated if self.calibrated is not None else math.inf
        self._m[sensor] = 0.0

    def forget(self, sensor: int) -> None:
        """Sensor slot freed (evicted): no state left for the next sensor that takes it."""
        self.recalibrate(sensor)
        self._iso.forget(int(sensor))

    def rebase(self, calibrated: float) -> None:
        """A new model: every sensor's fitted tail, warm-up scores and DSPOT moving average
        (in the old model's score units) are dropped; all thresholds restart from the new
        ``calibrated``, which also anchors the ceiling from now on."""
        self.calibrated = _checked_calibrated(calibrated)
        self._s.clear()
        self._z.fill(self.calibrated)
        self._m.fill(0.0)

    # -- per sensor ----------------------------------------------------------
    def _learn_sensor(self, s: int, x: np.ndarray, flags: np.ndarray) -> None:
        st = self._s.get(s)
        if st is None:
            st = self._s[s] = _SensorSpot(self.depth)
        normal = self._iso.learnable(s, x, flags.astype(bool), self.isolation,
                                     self.clip * (self._z[s] + self._m[s]))
        if normal.size == 0:
            return
        if self.depth:
            normal = self._detrend(st, s, normal)
        if not st.fitted:
            st.init.extend(normal.tolist())
            if len(st.init) >= self.n_init:
                self._initial_fit(st, s)
            return
        st.n += normal.size
        exc = normal[normal > st.t] - st.t
        if exc.size:
            st.peaks = np.concatenate([st.peaks, exc])
            st.new += exc.size
            if st.peaks.size > self.max_peaks:
                drop = st.peaks.size - self.max_peaks
                st.n = max(int(st.n * self.max_peaks / st.peaks.size), self.max_peaks)
                st.peaks = st.peaks[drop:]
            if st.new >= self.refit_every:
                self._refit(st, s)

    def _detrend(self, st: _SensorSpot, s: int, x: np.ndarray) -> np.ndarray:
        """Subtract, from each normal score, the mean of the `depth` normal scores before it."""
        d = self.depth
        h = st.ma.size
        full = np.concatenate([st.ma, x])
        cs = np.concatenate([[0.0], np.cumsum(full)])
        end = h + np.arange(x.size)
        begin = np.maximum(end - d, 0)
        cnt = end - begin
        mean = np.where(cnt > 0, (cs[end] - cs[begin]) / np.maximum(cnt, 1), 0.0)
        st.ma = full[-d:]
        self._m[s] = float(st.ma.mean())
        return x - mean

    def _initial_fit(self, st: _SensorSpot, s: int) -> None:
        x = np.asarray(st.init, dtype=np.float64)
        st.init = []
        st.t = float(np.quantile(x, self.level))
        st.peaks = x[x > st.t] - st.t
        st.n = x.size
        st.fitted = True
        self._refit(st, s, first=True)

    def _refit(self, st: _SensorSpot, s: int, first: bool = False) -> None:
        st.new = 0
        st.gamma, st.sigma = gpd_fit(st.peaks)
        z = gpd_quantile(st.t, st.gamma, st.sigma, self.q, st.n, st.peaks.size)
        old = self._z[s]
        if not first and math.isfinite(old) and old > 0:
            z = min(max(z, old * (1 - self.max_step)), old * (1 + self.max_step))
        if self.calibrated is not None:
            z = min(z, self.ceiling * self.calibrated)
        self._z[s] = z


class QuantileThreshold:
    """factor × the q-quantile of each sensor's last `size` normal scores (the simple rule).

    Warm start and the same poisoning guards as `SpotThreshold`: alarms are learned only when
    isolated (and clipped), and the threshold never exceeds ceiling × calibrated.
    """

    def __init__(self, quantile: float = 0.999, factor: float = 1.5, calibrated: float | None = None,
                 size: int = 5000, min_scores: int = 1000, every: int = 100, ceiling: float = 3.0,
                 max_sensors: int = 4096, isolation: int | None = None, clip: float = 1.5):
        self.isolation = int(isolation if isolation is not None else max(10, round(0.1 / (1 - quantile))))
        self.clip = clip
        self._iso = _Isolation()
        self.quantile, self.factor, self.calibrated = quantile, factor, calibrated
        self.size, self.min_scores, self.every, self.ceiling = size, min_scores, every, ceiling
        self._buf: dict[int, np.ndarray] = {}
        self._count = np.zeros(max_sensors, dtype=np.int64)
        self._since = np.zeros(max_sensors, dtype=np.int64)
        self._z = np.full(max_sensors, calibrated if calibrated is not None else math.inf)

    def values(self, sensor_idx):
        return self._z[sensor_idx].astype(np.float32)

    def recalibrate(self, sensor: int) -> None:
        """Forget a sensor's recent scores (after a drift): back to the calibrated value."""
        self._buf.pop(int(sensor), None)
        self._count[sensor] = self._since[sensor] = 0
        self._z[sensor] = self.calibrated if self.calibrated is not None else math.inf

    def forget(self, sensor: int) -> None:
        """Sensor slot freed (evicted): no state left for the next sensor that takes it."""
        self.recalibrate(sensor)
        self._iso.forget(int(sensor))

    def rebase(self, calibrated: float) -> None:
        """A new model: every sensor's recent scores (in the old model's units) are dropped;
        all thresholds restart from the new ``calibrated``, which also anchors the ceiling."""
        self.calibrated = _checked_calibrated(calibrated)
        self._buf.clear()
        self._count.fill(0)
        self._since.fill(0)
        self._z.fill(self.calibrated)

    def learn(self, sensor_idx, scores, flags):
        sensor_idx = np.asarray(sensor_idx)
        flags = np.asarray(flags, bool)
        for s in np.unique(sensor_idx):
            sel = sensor_idx == s
            x = self._iso.learnable(int(s), np.asarray(scores, np.float64)[sel], flags[sel],
                                    self.isolation, self.clip * self._z[s])
            if x.size == 0:
                continue
            buf = self._buf.setdefault(int(s), np.zeros(self.size))
            c = self._count[s]
            idx = (c + np.arange(x.size)) % self.size
            buf[idx[-self.size:]] = x[-self.size:]
            self._count[s] = c + x.size
            self._since[s] += x.size
            if self._count[s] >= self.min_scores and self._since[s] >= self.every:
                self._since[s] = 0
                z = self.factor * float(np.quantile(buf[:min(self._count[s], self.size)], self.quantile))
                if self.calibrated is not None:
                    z = min(z, self.ceiling * self.calibrated)
                self._z[s] = z
