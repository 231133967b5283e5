"""Per-sensor commissioning: a gain per channel, learned once from a sensor's first samples.

Healthy machines of one type differ by a few per cent per channel (ITSC's five healthy
recordings: phase RMS 0.95-1.04 of the training mean; SC_HLT_001's phase B is 5-7 % low), and
a per-channel difference is exactly what a fault looks like to a model trained on others (a
shorted winding changes one phase). `edgert.adapt` therefore never learns one. Commissioning
is the field's answer: when a sensor is installed the operator vouches that the machine is
healthy, and the first ``commission_samples`` samples set, once, a gain per channel that brings
each channel's RMS (about the model's mean, in the model's normalized units) to the model's
reference, 1.0 for a model normalized on its own healthy training data (a manifest may give
``normalization.reference_rms``).

Guards, since an installer can be wrong and a peer can lie:

* every gain must lie within ``[1/max_gain, max_gain]`` (default 1.1, ±10 %): a machine further
  from the model's healthy reference than that is refused (``event/commission/<sensor>``
  ``state: refused``, naming the channel) and keeps the model's normalization, so it alarms;
* the gains are set once per sensor and never follow the machine afterwards (a later fault is
  not learned); with ``commission_file`` they are kept on disk (atomic JSON, at most
  ``max_records`` sensors; with ``serve --workers`` each worker writes ``FILE.worker-K`` and
  reads them all), so a restart or an eviction does not commission the sensor again on
  whatever it sends then;
* windows scored while a sensor commissions are not flagged (the operator said healthy) but
  are counted (``commissioning_windows``).

What it cannot know: a machine that is already faulty within the gain bound at commissioning
(a fault that changes one channel's RMS by less than 10 %) is taken as its own healthy state.

The RMS comes from the window statistics the ingest kernel computes anyway (each window's raw
mean and std per channel): ``E[x²] = std² + mean²`` averaged over the sensor's first windows
(overlapping windows weigh a sample by how many windows hold it). Per batch the work is one
fancy index and, while any sensor commissions, a few ``np.add.at``; Python runs once per sensor
when it finishes.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np

__all__ = ["Commissioning", "windows_for", "CommissionError"]

NONE, RUNNING, DONE, REFUSED = 0, 1, 2, 3
STATE_NAMES = ("none", "commissioning", "commissioned", "refused")


class CommissionError(ValueError):
    """A commissioning file that cannot be used (names the file and the field)."""


def windows_for(samples: int, window: int, hop: int) -> int:
    """Windows whose samples lie within a sensor's first ``samples`` samples (at least 1)."""
    return max(1, (int(samples) - int(window)) // int(hop) + 1)


class Commissioning:
    """Per-sensor channel gains (module docstring).

    Args:
      mean, std: the model's per-channel normalization (length C).
      reference_rms: the normalized RMS a healthy channel has (length C; ones by default).
      samples: commissioning samples per sensor; window, hop: the model's.
      max_sensors: slots (rows preallocated).
      max_gain: every gain within ``[1/max_gain, max_gain]``, else refused.
      path: optional JSON file that keeps accepted gains across restarts and evictions.
      model: the model's name (recorded in the file; a file for another model is refused).
      max_records: sensors the file may hold.
    """

    def __init__(self, mean, std, samples: int, window: int, hop: int, max_sensors: int,
                 max_gain: float = 1.1, reference_rms=None, path: str | os.PathLike | None = None,
                 model: str = "", max_records: int = 4096):
        self.base_mean = np.asarray(mean, np.float64).reshape(-1)
        self.base_std = np.asarray(std, np.float64).reshape(-1)
        C, S = self.base_mean.size, int(max_sensors)
        self.reference = (np.ones(C) if reference_rms is None
                          else np.asarray(reference_rms, np.float64).reshape(-1))
        if self.reference.shape != (C,) or not (self.reference > 0).all():
            raise ValueError(f"reference_rms needs {C} positive values, got {reference_rms!r}")
        if not math.isfinite(max_gain) or max_gain < 1.0:
            raise ValueError(f"commission_max_gain must be a finite number >= 1, got {max_gain!r}")
        self.samples, self.max_gain = int(samples), float(max_gain)
        self.n_windows = windows_for(samples, window, hop)
        self.model = model
        self._cur = None  # the current batch's commissioning windows (mask -> learn)
        self.target = None  # an edgert.adapt.SafeNormalization whose rows carry the gains
        # The rows the ingest kernels normalize with (streams hold views of them).
        self.mean = np.tile(self.base_mean, (S, 1))
        self.gain = np.ones((S, C))
        self.inv_std = np.tile(self._inv(np.ones(C)), (S, 1))
        self.left = np.zeros(S, dtype=np.int64)  # windows still to see; 0: not commissioning
        self.state = np.zeros(S, dtype=np.int8)
        self._sq = np.zeros((S, C))
        self._m = np.zeros((S, C))
        self._n = np.zeros(S, dtype=np.int64)
        self.accepted = self.refused = self.restored = self.unpersisted = 0
        self.windows = 0  # windows scored while commissioning (never flagged)
        self.path = Path(path) if path else None
        self.max_records = int(max_records)
        self.records: dict[str, dict] = self._load() if self.path else {}

    def _inv(self, g: np.ndarray) -> np.ndarray:
        return np.where(self.base_std > 0, g / np.where(self.base_std > 0, self.base_std, 1.0), 0.0)

    # -- the file ---------------------------------------------------------------------
    def _load(self) -> dict:
        """The records of ``path``; for a worker's file ``X.worker-K`` (``serve --workers``:
        each worker writes only its own) also those of ``X`` and every ``X.worker-*``, since a
        sensor may reconnect to another worker; the own file's records win."""
        p = self.path
        base, sep, _ = p.name.rpartition(".worker-")
        if not sep:
            return self._load_one(p)
        out: dict = {}
        for q in [p.with_name(base), *sorted(p.parent.glob(base + ".worker-*"))]:
            if q != p and not q.name.endswith(".tmp"):
                out.update(self._load_one(q))
        out.update(self._load_one(p))
        return dict(list(out.items())[:self.max_records])

    def _load_one(self, p: Path) -> dict:
        if not p.exists():
            return {}
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise CommissionError(f"{p}: not a commissioning file: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("sensors"), dict):
            raise CommissionError(f"{p}: field 'sensors' missing or not an object")
        if doc.get("model") != self.model:
            raise CommissionError(f"{p}: field 'model' is {doc.get('model')!r}, the running model is "
                                  f"{self.model!r} (commission again for a new model: move the file)")
        C = self.base_mean.size
        out = {}
        for sensor, rec in list(doc["sensors"].items())[:self.max_records]:
            g = rec.get("gains") if isinstance(rec, dict) else None
            if (not isinstance(g, list) or len(g) != C
                    or not all(isinstance(v, (int, float)) and 1 / self.max_gain <= v <= self.max_gain
                               for v in g)):
                raise CommissionError(f"{p}: sensors[{sensor!r}].gains must be {C} numbers within "
                                      f"[1/{self.max_gain:g}, {self.max_gain:g}]")
            out[str(sensor)] = rec
        return out

    def _save(self) -> None:
        doc = {"model": self.model, "samples": self.samples, "max_gain": self.max_gain,
               "sensors": self.records}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, self.path)

    # -- sensors ----------------------------------------------------------------------
    def admit(self, s: int, sensor: str) -> dict | None:
        """Slot ``s`` now holds ``sensor``: its recorded gains, or commissioning from its next
        windows. Returns an event step when recorded gains were restored."""
        rec = self.records.get(sensor)
        self._sq[s] = self._m[s] = 0.0
        self._n[s] = 0
        if rec is not None:
            self._set(s, np.asarray(rec["gains"], np.float64))
            self.state[s], self.left[s] = DONE, 0
            self.restored += 1
            return {"sensor_index": s, "state": "restored", "gains": list(rec["gains"]),
                    "commissioned_at": rec.get("at")}
        self._set(s, np.ones(self.base_mean.size))
        self.state[s], self.left[s] = RUNNING, self.n_windows
        return None

    def forget(self, s: int) -> None:
        """Slot ``s`` was freed: the model's normalization, nothing pending."""
        self._set(s, np.ones(self.base_mean.size))
        self.state[s], self.left[s] = NONE, 0

    def _set(self, s: int, g: np.ndarray) -> None:
        self.gain[s] = g
        if self.target is not None:  # the safe adaptation's rows: the gains go under its transform
            self.target.set_channel_gains(s, g)
            return
        self.mean[s] = self.base_mean
        self.inv_std[s] = self._inv(g)

    def attach(self, norm) -> None:
        """Write gains into an `edgert.adapt.SafeNormalization`'s rows (the ones the kernels
        then use) instead of this object's own."""
        self.target = norm
        self.mean, self.inv_std = norm.mean, norm.inv_std

    def reset(self, mean, std) -> None:
        """A new model (hot-swap). A retrained model's normalization is fitted to the machine
        as it is now, so every sensor goes back to gains of 1 and is not commissioned again;
        a model with the same normalization keeps the gains."""
        mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        if np.array_equal(mean, self.base_mean) and np.array_equal(std, self.base_std):
            for s in np.flatnonzero(self.state == DONE):  # re-applied under a reset transform
                self._set(int(s), self.gain[s].copy())
            return
        self.base_mean, self.base_std = mean, std
        if self.target is None:
            self.mean[:] = mean
        for s in range(self.left.size):
            self._set(s, np.ones(mean.size))
        self.state[:] = NONE
        self.left[:] = 0

    def describe(self, s: int) -> dict:
        return {"state": STATE_NAMES[self.state[s]],
                "gains": [round(float(v), 5) for v in self.gain[s]]}

    # -- per batch --------------------------------------------------------------------
    def mask(self, sidx: np.ndarray, thr: np.ndarray) -> np.ndarray:
        """``thr`` with +inf for the windows that commission their sensor (a copy if any): a
        sensor's next ``left`` windows in batch order. `learn` then takes the same windows."""
        self._cur = None
        cand = np.flatnonzero(self.left[sidx] > 0)
        if cand.size == 0:
            return thr
        s = sidx[cand]
        order = np.argsort(s, kind="stable")  # rank of each window among its sensor's, in order
        ss = s[order]
        first = np.r_[True, ss[1:] != ss[:-1]]
        start = np.maximum.accumulate(np.where(first, np.arange(ss.size), 0))
        rank = np.empty(ss.size, dtype=np.int64)
        rank[order] = np.arange(ss.size) - start
        cm = np.zeros(len(sidx), dtype=bool)
        cm[cand[rank < self.left[s]]] = True
        self._cur = cm
        thr = np.array(thr, dtype=np.float64, copy=True)
        thr[cm] = np.inf
        return thr

    def learn(self, sidx: np.ndarray, win_mean: np.ndarray, win_std: np.ndarray,
              names: list) -> list[dict]:
        """Account the windows `mask` set apart in this batch; finish the sensors that saw
        enough. Returns event steps (``sensor_index``, ``state`` commissioned | refused)."""
        cm, self._cur = self._cur, None
        if cm is None:
            return []
        s = sidx[cm]
        m, sd = win_mean[cm], win_std[cm]
        np.add.at(self._sq, s, sd * sd + m * m)
        np.add.at(self._m, s, m)
        np.add.at(self._n, s, 1)
        np.subtract.at(self.left, s, 1)
        self.windows += int(cm.sum())
        out = []
        for k in np.unique(s):
            k = int(k)
            if self.left[k] <= 0:
                self.left[k] = 0
                out.append(self._finish(k, names[k]))
        return out

    def _finish(self, s: int, sensor: str) -> dict:
        n = self._n[s]
        ex2, ex = self._sq[s] / n, self._m[s] / n
        mu, sd = self.base_mean, self.base_std
        msq = np.maximum(ex2 - 2 * mu * ex + mu * mu, 0.0)  # E[(x - mu)²]
        with np.errstate(divide="ignore", invalid="ignore"):
            rms = np.where(sd > 0, np.sqrt(msq) / np.where(sd > 0, sd, 1.0), self.reference)
            g = self.reference / rms
        lo, hi = 1 / self.max_gain, self.max_gain
        bad = [i for i in range(g.size) if not (np.isfinite(g[i]) and lo <= g[i] <= hi)]
        step = {"sensor_index": s, "windows": int(n), "rms": [round(float(v), 5) for v in rms]}
        if bad:
            self.state[s] = REFUSED
            self.refused += 1
            self._set(s, np.ones(g.size))
            i = bad[0]
            return {**step, "state": "refused",
                    "reason": f"channel {i}: RMS {rms[i]:.4g} of the model's healthy reference, a "
                              f"gain of {g[i]:.4g} is outside [1/{hi:g}, {hi:g}]: keeping the "
                              "model's normalization"}
        self._set(s, g)
        self.state[s] = DONE
        self.accepted += 1
        gains = [round(float(v), 6) for v in g]
        if self.path is not None:
            if sensor in self.records or len(self.records) < self.max_records:
                self.records[sensor] = {"gains": gains, "windows": int(n),
                                        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                self._save()
            else:
                self.unpersisted += 1
        return {**step, "state": "commissioned", "gains": gains}

    def stats(self) -> dict:
        return {"samples": self.samples, "windows_each": self.n_windows, "max_gain": self.max_gain,
                "accepted": self.accepted, "refused": self.refused, "restored": self.restored,
                "commissioning_now": int((self.left > 0).sum()), "windows": self.windows,
                "unpersisted": self.unpersisted, "file": str(self.path) if self.path else None}
