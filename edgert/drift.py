"""Drift detectors on streams of per-window values (scores, per-channel statistics).

One seam for all of them, per batch and vectorized over streams: ``update(stream_idx, values)
-> bool[k]`` marks the rows at which a drift was detected (and the stream restarted).

`PageHinkley`: the two-sided Page-Hinkley test (Page 1954; as in River and MOA): the
cumulative deviation of each value from the running mean, minus a tolerance `delta`; a drift
is detected when it strays more than `threshold` from its running extreme.
"""

from __future__ import annotations

import numpy as np


class PageHinkley:
    """Two-sided Page-Hinkley on many independent streams at once.

    Args:
      n_streams: number of streams (sensors × statistics), indexed 0..n_streams-1.
      delta: magnitude of change tolerated (in the values' units, or in standard deviations
        when `standardize` is set).
      threshold: detection threshold (lambda).
      min_n: values seen before a stream may signal.
      alpha: forgetting factor of the cumulative sums (1.0: none).
      standardize: divide deviations by the standard deviation of the stream's first `min_n`
        values (its baseline; frozen after that so a shift cannot inflate its own yardstick),
        so one threshold fits streams of any scale.
    """

    def __init__(self, n_streams: int, delta: float = 0.5, threshold: float = 50.0, min_n: int = 30,
                 alpha: float = 1.0, standardize: bool = True):
        self.delta, self.threshold, self.min_n, self.alpha = delta, threshold, min_n, alpha
        self.standardize = standardize
        self.n = np.zeros(n_streams, dtype=np.int64)
        self.mean = np.zeros(n_streams)
        self.m2 = np.zeros(n_streams)
        self.scale = np.zeros(n_streams)  # baseline std, frozen at min_n values
        self.up = np.zeros(n_streams)  # cumulative sum for increases
        self.up_min = np.zeros(n_streams)
        self.down = np.zeros(n_streams)  # for decreases
        self.down_max = np.zeros(n_streams)
        self.detections = np.zeros(n_streams, dtype=np.int64)

    def reset(self, i) -> None:
        for a in (self.n, self.mean, self.m2, self.scale, self.up, self.up_min, self.down, self.down_max):
            a[i] = 0

    def update(self, stream_idx: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Feed values (row j belongs to stream stream_idx[j], rows in time order).

        Returns:
          bool[k]: True where a drift was detected (that stream restarts after the row).
        """
        out = np.zeros(len(values), dtype=bool)
        for j, (i, x) in enumerate(zip(np.asarray(stream_idx).tolist(), np.asarray(values, np.float64).tolist())):
            n = self.n[i] + 1
            self.n[i] = n
            d = x - self.mean[i]
            self.mean[i] += d / n
            if n <= self.min_n:  # baseline: learn the scale, no test yet
                self.m2[i] += d * (x - self.mean[i])
                if n == self.min_n:
                    self.scale[i] = np.sqrt(self.m2[i] / (n - 1)) if n > 1 else 0.0
                continue
            scale = self.scale[i] if self.standardize else 1.0
            if not scale > 0:
                scale = max(abs(self.mean[i]) * 1e-6, 1e-12)
            dev = (x - self.mean[i]) / scale
            self.up[i] = self.alpha * self.up[i] + dev - self.delta
            self.up_min[i] = min(self.up_min[i], self.up[i])
            self.down[i] = self.alpha * self.down[i] + dev + self.delta
            self.down_max[i] = max(self.down_max[i], self.down[i])
            if n >= self.min_n and (self.up[i] - self.up_min[i] > self.threshold
                                    or self.down_max[i] - self.down[i] > self.threshold):
                out[j] = True
                self.detections[i] += 1
                self.reset(i)
        return out
