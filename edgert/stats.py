"""Counters, a latency histogram and a rate-limited logger for the daemon.

Nothing here allocates per sample: latencies go into a fixed log-spaced histogram in one
vectorized call per batch, counters are plain dict increments per message.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import numpy as np

log = logging.getLogger("edgert")


class LatencyHistogram:
    """Log-spaced histogram of latencies in microseconds (1 µs .. ~100 s, ~2 % resolution)."""

    def __init__(self, lo_us: float = 1.0, hi_us: float = 1e8, bins_per_decade: int = 120):
        decades = np.log10(hi_us / lo_us)
        self._n = int(decades * bins_per_decade) + 1
        self._lo = lo_us
        self._k = bins_per_decade
        self.counts = np.zeros(self._n + 1, dtype=np.int64)
        self.edges = lo_us * 10.0 ** (np.arange(self._n + 1) / bins_per_decade)
        self.total = 0
        self.max_us = 0.0

    def add(self, latencies_us: np.ndarray) -> None:
        """Add an array of latencies (µs)."""
        if latencies_us.size == 0:
            return
        idx = np.searchsorted(self.edges, latencies_us, side="right") - 1
        np.clip(idx, 0, self._n, out=idx)
        self.counts += np.bincount(idx, minlength=self.counts.size)
        self.total += latencies_us.size
        self.max_us = max(self.max_us, float(latencies_us.max()))

    def quantile(self, q: float) -> float:
        """Approximate q-quantile in µs (upper edge of the bin holding it), NaN if empty."""
        if self.total == 0:
            return float("nan")
        target = q * self.total
        i = int(np.searchsorted(np.cumsum(self.counts), target, side="left"))
        return float(min(self.edges[min(i + 1, self._n)], self.max_us))

    def sparse(self) -> dict:
        """The non-empty bins: ``{"le_us": [upper edge µs, ...], "counts": [n, ...], "max_us"}``
        (enough to draw the CDF or take any quantile later; a few hundred numbers at most)."""
        nz = np.flatnonzero(self.counts)
        le = self.edges[np.minimum(nz + 1, self._n)]
        return {"le_us": [round(float(x), 2) for x in le], "counts": [int(c) for c in self.counts[nz]],
                "max_us": self.max_us}

    def reset(self) -> None:
        self.counts[:] = 0
        self.total = 0
        self.max_us = 0.0


class SensorCounters:
    """Per-sensor and per-reason counts of everything that happened to input."""

    def __init__(self):
        self.messages = defaultdict(int)   # sensor -> accepted blocks
        self.samples = defaultdict(int)    # sensor -> accepted samples
        self.windows = defaultdict(int)    # sensor -> windows scored
        self.anomalies = defaultdict(int)  # sensor -> anomalous windows
        self.drops = defaultdict(lambda: defaultdict(int))  # sensor -> reason -> blocks
        self.notes = defaultdict(lambda: defaultdict(int))  # sensor -> reason -> count

    def drop(self, sensor: str | None, reason: str) -> None:
        self.drops[sensor or "?"][reason] += 1

    def note(self, sensor: str, reason: str) -> None:
        self.notes[sensor][reason] += 1

    def total_drops(self) -> int:
        return sum(sum(r.values()) for r in self.drops.values())

    def as_dict(self) -> dict:
        return {
            "messages": sum(self.messages.values()),
            "samples": sum(self.samples.values()),
            "windows": sum(self.windows.values()),
            "anomalies": sum(self.anomalies.values()),
            "dropped": self.total_drops(),
            "drops": {s: dict(r) for s, r in self.drops.items()},
            "notes": {s: dict(r) for s, r in self.notes.items()},
            "sensors": sorted(self.messages),
        }


class RateLimitedLog:
    """Logs at most `burst` messages per key per `period` seconds, then a summary line."""

    def __init__(self, period: float = 10.0, burst: int = 3, logger: logging.Logger = log):
        self.period = period
        self.burst = burst
        self.log = logger
        self._state: dict = {}

    def warning(self, key, msg: str) -> None:
        now = time.monotonic()
        start, n, suppressed = self._state.get(key, (now, 0, 0))
        if now - start >= self.period:
            if suppressed:
                self.log.warning("%s (%d similar messages suppressed in the last %.0f s)",
                                 msg, suppressed, now - start)
                self._state[key] = (now, 1, 0)
                return
            start, n, suppressed = now, 0, 0
        if n < self.burst:
            self.log.warning("%s", msg)
            self._state[key] = (start, n + 1, suppressed)
        else:
            self._state[key] = (start, n, suppressed + 1)
