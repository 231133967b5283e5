"""Safe adaptation of each sensor's input normalization to a drifting machine.

The model sees windows normalized with the manifest's per-channel mean and std. A machine that
moves to a new operating point (more load: every phase current 30 % higher; a sensor re-zeroed:
an offset) looks anomalous to it forever unless the normalization follows. Following blindly is
how a slow fault, or an attacker, teaches a detector that abnormal is normal. So each sensor's
normalization is ``x' = (x - mean_s) / std_s`` with ``mean_s = mean + b_s`` and
``std_s = a_s * std``: a per-channel level change ``b_s`` and one common gain ``a_s`` of the
spread about that level for all channels (a new operating point: ``x_new - level_new =
a (x_old - level_old)``; the gain scales about the level, not about zero, so a channel that sits
far from zero — a temperature at 60 °C — is not shifted by it), and it changes only in two
guarded ways:

1. **Tracking** from windows judged normal (under the threshold): once per segment (default
   1 s of sensor time) the transform moves toward what the normal windows say, by at most
   ``track_step`` of a standard deviation (and gain ``track_step``), and never further than
   ``track_budget`` from the last accepted operating point. A fault ramping in below the
   threshold can drag the normalization by at most that budget, so it is flagged a little later
   but still flagged.
2. **Accepting a new operating point** from windows judged anomalous, only when all of these
   hold: the alarm has been sustained (alarm rate ≥ 50 % in every segment) for ``hold_s``; over
   that time every channel's level and spread stayed within ``stationary_tol`` standard
   deviations (a ramp — wear, a poisoning attempt — never passes this); the channels' spreads
   changed by one common factor within ``gain_tol`` (an imbalance between channels is the
   signature of a fault, e.g. a shorted winding, and is never normalized away); the total change
   from the calibrated normalization stays within ``max_offset`` standard deviations and a gain
   within ``[1/max_gain, max_gain]``. The candidate is then applied *on probation* for
   ``probation_s``: if the model now finds the windows normal (alarm rate ≤ 10 %) it is accepted,
   otherwise it is reverted and the alarm goes on (the windows differ in shape, not just in
   level). At most one operating point is accepted per ``cooldown_s``. Every probation,
   acceptance and refusal is returned as an event for the bus.

What this cannot tell apart: a ramp slower than ``stationary_tol`` standard deviations per
``hold_s`` looks like a step followed by a plateau. Such a ramp can move the operating point once
per ``cooldown_s``, by at most its own progress, and never beyond ``max_offset``/``max_gain`` in
total; each step is an event an operator sees. A fault that settles at a stationary,
common-gain level with the same waveform is, to this module, a new operating point.

A benign level shift of the kind above therefore stops alarming at most about
``hold_s + 2 × segment_s`` of sensor time after it began (the candidate is applied on probation
then; the two segments: the one the shift began in, and the check's granularity) and is
accepted ``probation_s`` later.

Per batch the work is vectorized accumulation (``np.add.at``); Python runs once per sensor per
segment. Windows statistics come from the ingest kernel (mean and std of each window and
channel, in raw units).
"""

from __future__ import annotations

import numpy as np

NORMAL, SUSTAINED, PROBATION = 0, 1, 2
_STATE_NAMES = ("normal", "sustained", "probation")


class SafeNormalization:
    """Per-sensor normalization, adapted only in the guarded ways the module docstring describes.

    Args:
      mean, std: the model's per-channel normalization (manifest), length C.
      max_sensors: rows preallocated.
      segment_s: accounting period, sensor time.
      hold_s: a sustained, stationary alarm must last this long before a new operating point is
        considered.
      probation_s: a candidate normalization is tried for this long before it is accepted.
      stationary_tol: per-channel spread (max - min) of segment means and stds over the hold,
        in units of the model's std, allowed for "stationary".
      gain_tol: per-channel gains may differ from their median by this fraction.
      max_offset: accepted offsets stay within this many model stds of the calibrated mean.
      max_gain: accepted gains stay within [1/max_gain, max_gain].
      track_step, track_budget: tracking from normal windows moves at most track_step (in model
        stds, and as a gain fraction) per segment, at most track_budget from the accepted point.
      cooldown_s: after an accepted operating point, the next is not considered for this long.
    """

    def __init__(self, mean, std, max_sensors: int = 4096, segment_s: float = 1.0,
                 hold_s: float = 30.0, probation_s: float = 3.0, stationary_tol: float = 0.1,
                 gain_tol: float = 0.03, max_offset: float = 3.0, max_gain: float = 2.0,
                 track_step: float = 0.002, track_budget: float = 0.05, cooldown_s: float = 600.0):
        self.max_sensors = int(max_sensors)
        self.segment_ns = int(segment_s * 1e9)
        self.hold_ns = int(max(hold_s, 2 * segment_s) * 1e9)
        self.probation_ns = int(max(probation_s, segment_s) * 1e9)
        self.stationary_tol, self.gain_tol = stationary_tol, gain_tol
        self.max_offset, self.max_gain = max_offset, max_gain
        self.track_step, self.track_budget = track_step, track_budget
        self.cooldown_ns = int(cooldown_s * 1e9)
        self.accepted = 0
        self.refused = 0
        self._start(mean, std)

    def _start(self, mean, std) -> None:
        """Every sensor at the calibrated point of the normalization (mean, std)."""
        self.base_mean = np.asarray(mean, dtype=np.float64)
        self.base_std = np.asarray(std, dtype=np.float64)
        # Constant channels (std 0) normalize to 0; tolerances on them are in raw units.
        self._unit = np.where(self.base_std > 0, self.base_std, 1.0)
        C, S = self.base_mean.size, self.max_sensors
        # What the ingest kernel uses (rows are handed to the sensors' streams as views).
        self.mean = np.tile(self.base_mean, (S, 1))
        self.inv_std = np.tile(self._inv(1.0), (S, 1))
        # Per-channel gains set once by commissioning (`edgert.commission`), under the transform.
        self.chan_gain = np.ones((S, C))
        # The transform per sensor: gain a (common), offset b (per channel); accepted point.
        self.gain = np.ones(S)
        self.offset = np.zeros((S, C))
        self.acc_gain = np.ones(S)
        self.acc_offset = np.zeros((S, C))
        self._accepted_at = np.full(S, np.iinfo(np.int64).min // 2, dtype=np.int64)
        # The sensor's reference behaviour under the calibrated normalization: mean of window
        # means and of window stds over its first normal segment (NaN until then).
        self.ref_mean = np.full((S, C), np.nan)
        self.ref_std = np.full((S, C), np.nan)
        # Segment accumulators.
        self._n = np.zeros(S, dtype=np.int64)
        self._nflag = np.zeros(S, dtype=np.int64)
        self._sum_m = np.zeros((S, C))
        self._sum_s = np.zeros((S, C))
        self._norm_n = np.zeros(S, dtype=np.int64)
        self._norm_m = np.zeros((S, C))
        self._norm_s = np.zeros((S, C))
        self._t0 = np.full(S, -1, dtype=np.int64)
        self._tlast = np.zeros(S, dtype=np.int64)
        self.state = np.zeros(S, dtype=np.int8)
        self._hist: dict[int, list] = {}  # sensor -> [(t0, t1, seg mean, seg std)] while sustained
        self._prob: dict[int, list] = {}  # sensor -> [t end, flags, n, previous transform]

    # -- per batch (vectorized) ------------------------------------------------
    def learn(self, sensor_idx, win_mean, win_std, flags, t_start) -> list[dict]:
        """Account a batch of windows; close the segments that ended. Returns events (dicts
        with ``sensor_index`` and ``state`` accepted | refused | probation) for the caller to
        publish.

        Args:
          sensor_idx: [k] sensor index per window.
          win_mean, win_std: [k, C] raw per-channel mean and std of each window.
          flags: [k] bool, the window was judged anomalous.
          t_start: [k] int64 ns, sensor time of each window's first sample.
        """
        sidx = np.asarray(sensor_idx)
        np.add.at(self._n, sidx, 1)
        np.add.at(self._nflag, sidx, flags.astype(np.int64))
        np.add.at(self._sum_m, sidx, win_mean)
        np.add.at(self._sum_s, sidx, win_std)
        ok = ~flags
        if ok.any():
            so = sidx[ok]
            np.add.at(self._norm_n, so, 1)
            np.add.at(self._norm_m, so, win_mean[ok])
            np.add.at(self._norm_s, so, win_std[ok])
        np.maximum.at(self._tlast, sidx, t_start)
        fresh = self._t0[sidx] < 0
        if fresh.any():
            fs = sidx[fresh]
            self._t0[fs] = np.iinfo(np.int64).max
            np.minimum.at(self._t0, fs, t_start[fresh])
        touched = np.unique(sidx)
        done = touched[self._tlast[touched] - self._t0[touched] >= self.segment_ns]
        events = []
        for s in done:
            ev = self._close_segment(int(s))
            if ev is not None:
                events.append(ev)
        return events

    def reset(self, mean, std) -> None:
        """A new model (hot-swap): its normalization, every sensor back to the calibrated point.
        The `mean` and `inv_std` arrays are refilled in place (streams hold views of rows)."""
        views = self.mean, self.inv_std
        self._start(mean, std)
        views[0][:] = self.mean
        views[1][:] = self.inv_std
        self.mean, self.inv_std = views

    def forget(self, s: int) -> None:
        """Sensor slot `s` was freed (the sensor went idle and was evicted): back to the
        calibrated point with no history, ready for the next sensor that takes the slot.
        Rows are refilled in place (the next stream holds views of them)."""
        self.mean[s] = self.base_mean
        self.inv_std[s] = self._inv(1.0)
        self.chan_gain[s] = 1.0
        self.gain[s] = self.acc_gain[s] = 1.0
        self.offset[s] = self.acc_offset[s] = 0.0
        self._accepted_at[s] = np.iinfo(np.int64).min // 2
        self.ref_mean[s] = self.ref_std[s] = np.nan
        self._n[s] = self._nflag[s] = self._norm_n[s] = 0
        self._sum_m[s] = self._sum_s[s] = self._norm_m[s] = self._norm_s[s] = 0.0
        self._t0[s] = -1
        self._tlast[s] = 0
        self.state[s] = NORMAL
        self._hist.pop(s, None)
        self._prob.pop(s, None)

    def describe(self, s: int) -> dict:
        """The sensor's current transform, for events and stats."""
        return {"regime": _STATE_NAMES[self.state[s]], "gain": round(float(self.gain[s]), 5),
                "offset": [round(float(x), 6) for x in self.offset[s]]}

    # -- per sensor, once per segment -------------------------------------------
    def _close_segment(self, s: int):
        n = self._n[s]
        rate = self._nflag[s] / n
        seg_m = self._sum_m[s] / n
        seg_s = self._sum_s[s] / n
        nn = self._norm_n[s]
        norm_m = self._norm_m[s] / nn if nn else None
        norm_s = self._norm_s[s] / nn if nn else None
        t0, t1 = int(self._t0[s]), int(self._tlast[s])
        self._n[s] = self._nflag[s] = self._norm_n[s] = 0
        self._sum_m[s] = self._sum_s[s] = self._norm_m[s] = self._norm_s[s] = 0.0
        self._t0[s] = -1
        if np.isnan(self.ref_mean[s, 0]):
            if self.state[s] == NORMAL and rate < 0.05 and nn:
                # Reference behaviour, seen through the calibrated (identity) transform.
                self.ref_mean[s], self.ref_std[s] = norm_m, norm_s
            return None
        st = self.state[s]
        if st == PROBATION:
            return self._probation_segment(s, rate, n, t1)
        if rate >= 0.5:
            hist = self._hist.setdefault(s, [])
            hist.append((t0, t1, seg_m, seg_s))
            self.state[s] = SUSTAINED
            if t1 - hist[0][0] >= self.hold_ns:
                # Keep the segments of the last hold_s; judge the shift on them.
                while t1 - hist[1][0] >= self.hold_ns:
                    del hist[0]
                return self._consider(s, hist, t1)
            return None
        # Mostly normal segment.
        self._hist.pop(s, None)
        self.state[s] = NORMAL
        if nn and rate < 0.05:
            self._track(s, norm_m, norm_s)
        return None

    def _target(self, s, m, sd):
        """The transform (gain, level changes, per-channel gains) mapping the reference onto a
        regime with window means m and stds sd (raw units)."""
        g_c = sd / np.maximum(self.ref_std[s], 1e-12)
        g = float(np.median(g_c))
        return g, m - self.ref_mean[s], g_c

    def _track(self, s, m, sd) -> None:
        g, b, _ = self._target(s, m, sd)
        std = self._unit
        step, budget = self.track_step, self.track_budget
        lo_g, hi_g = self.acc_gain[s] * (1 - budget), self.acc_gain[s] * (1 + budget)
        g_new = np.clip(np.clip(g, self.gain[s] * (1 - step), self.gain[s] * (1 + step)), lo_g, hi_g)
        b_new = np.clip(b, self.offset[s] - step * std, self.offset[s] + step * std)
        b_new = np.clip(b_new, self.acc_offset[s] - budget * std, self.acc_offset[s] + budget * std)
        self._apply(s, g_new, b_new)

    def _consider(self, s: int, hist: list, now: int) -> dict | None:
        ms = np.array([h[2] for h in hist])
        ss = np.array([h[3] for h in hist])
        std = self._unit
        spread = max(float(np.max((ms.max(0) - ms.min(0)) / std)),
                     float(np.max((ss.max(0) - ss.min(0)) / std)))
        if spread > self.stationary_tol:
            return None  # still moving (a ramp, a transient): keep alarming, keep watching
        if now - self._accepted_at[s] < self.cooldown_ns:
            return None  # one new operating point per cooldown: a staircase is a ramp
        g, b, g_c = self._target(s, ms.mean(0), ss.mean(0))
        reason = None
        if np.max(np.abs(g_c / g - 1)) > self.gain_tol:
            reason = (f"channels changed by different factors ({', '.join(f'{x:.3f}' for x in g_c)}): "
                      "an imbalance, not a common operating-point change")
        elif not (1 / self.max_gain <= g <= self.max_gain):
            reason = f"gain {g:.3f} outside [1/{self.max_gain}, {self.max_gain}]"
        elif np.max(np.abs(b) / std) > self.max_offset:
            reason = f"offset beyond {self.max_offset} standard deviations"
        self._hist.pop(s, None)
        if reason is not None:
            self.refused += 1
            return {"sensor_index": s, "state": "refused", "reason": reason,
                    "stationary_spread": round(spread, 4)}
        self._prob[s] = [now + self.probation_ns, 0, 0, (self.gain[s], self.offset[s].copy())]
        self.state[s] = PROBATION
        self._apply(s, g, b)
        return {"sensor_index": s, "state": "probation", "stationary_spread": round(spread, 4),
                **self.describe(s)}

    def _probation_segment(self, s: int, rate: float, n: int, now: int) -> dict | None:
        p = self._prob[s]
        p[1] += int(round(rate * n))
        p[2] += n
        if now < p[0]:
            return None
        del self._prob[s]
        rate = p[1] / max(p[2], 1)
        if rate <= 0.1:
            self.acc_gain[s], self.acc_offset[s] = self.gain[s], self.offset[s].copy()
            self._accepted_at[s] = now
            self.state[s] = NORMAL
            self.accepted += 1
            return {"sensor_index": s, "state": "accepted", "probation_alarm_rate": round(float(rate), 4),
                    **self.describe(s)}
        self._apply(s, *p[3])
        self.state[s] = SUSTAINED
        self.refused += 1
        return {"sensor_index": s, "state": "refused", "probation_alarm_rate": round(float(rate), 4),
                "reason": "the model still finds the windows anomalous after re-normalization"}

    def _apply(self, s: int, g: float, b) -> None:
        self.gain[s] = g
        self.offset[s] = b
        self.mean[s] = self.base_mean + b
        self.inv_std[s] = self._inv(g) * self.chan_gain[s]

    def set_channel_gains(self, s: int, g) -> None:
        """Commissioning's per-channel gains for slot ``s`` (`edgert.commission`), applied
        under the sensor's current transform."""
        self.chan_gain[s] = g
        self._apply(s, self.gain[s], self.offset[s])

    def _inv(self, g: float) -> np.ndarray:
        return np.where(self.base_std > 0, 1.0 / (g * self._unit), 0.0)
