"""Counters, a latency histogram and a rate-limited logger for the daemon.

Nothing here allocates per sample: latencies go into a fixed log-spaced histogram in one
vectorized call per batch. Counts per id are bounded (`BoundedCounts`), and so are the keys of
the rate-limited log: hostile ids cannot grow them.
"""

from __future__ import annotations

import logging
import math
import time

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
        self.sum_us = 0.0  # [metrics] a Prometheus histogram's _sum (one numpy sum a batch)
        self.max_us = 0.0

    def add(self, latencies_us: np.ndarray) -> None:
        """Add an array of latencies (µs)."""
        if latencies_us.size == 0:
            return
        idx = np.searchsorted(self.edges, latencies_us, side="right") - 1
        np.clip(idx, 0, self._n, out=idx)
        self.counts += np.bincount(idx, minlength=self.counts.size)
        self.total += latencies_us.size
        self.sum_us += float(latencies_us.sum())
        self.max_us = max(self.max_us, float(latencies_us.max()))

    def quantile(self, q: float) -> float:
        """Approximate q-quantile in µs (upper edge of the bin holding it), NaN if empty."""
        if self.total == 0:
            return float("nan")
        target = q * self.total
        i = int(np.searchsorted(np.cumsum(self.counts), target, side="left"))
        return float(min(self.edges[min(i + 1, self._n)], self.max_us))

    def sparse(self) -> dict:
        """The non-empty bins: ``{"le_us": [upper edge µs, ...], "counts": [n, ...], "max_us",
        "sum_us"}`` (enough to draw the CDF, take any quantile or export a Prometheus histogram
        later; a few hundred numbers at most)."""
        nz = np.flatnonzero(self.counts)
        le = self.edges[np.minimum(nz + 1, self._n)]
        return {"le_us": [round(float(x), 2) for x in le], "counts": [int(c) for c in self.counts[nz]],
                "max_us": self.max_us, "sum_us": self.sum_us}

    def reset(self) -> None:
        self.counts[:] = 0
        self.total = 0
        self.sum_us = 0.0
        self.max_us = 0.0


OTHER_IDS = "(other ids)"  # the bucket for ids past the limit of `BoundedCounts`


class BoundedCounts:
    """Counts per id and reason for at most `max_ids` ids; later ids share one bucket.

    For ids the daemon holds no slot for (refused, malformed, never admitted): a flood of
    one-shot ids must not grow memory or the stats event, so past the limit their counts go
    to `OTHER_IDS` (totals stay exact).
    """

    def __init__(self, max_ids: int = 1024):
        self.max_ids = int(max_ids)
        self.by_id: dict[str, dict[str, int]] = {}

    def add(self, key: str, reason: str, n: int = 1) -> None:
        row = self.by_id.get(key)
        if row is None:
            if len(self.by_id) >= self.max_ids:
                key = OTHER_IDS
                row = self.by_id.get(key)
            if row is None:
                row = self.by_id[key] = {}
        row[reason] = row.get(reason, 0) + n

    def clear(self) -> None:
        self.by_id.clear()


def top_by_total(rows: dict, n: int) -> dict:
    """The `n` entries of ``{id: {reason: count}}`` with the largest total count."""
    if len(rows) <= n:
        return {k: dict(v) for k, v in rows.items()}
    keys = sorted(rows, key=lambda k: -sum(rows[k].values()))[:n]
    return {k: dict(rows[k]) for k in keys}


def json_safe(x):
    """`x` with every non-finite float replaced by None, recursively (JSON has no NaN: a
    strict parser such as JavaScript's JSON.parse refuses it)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


class RateLimitedLog:
    """Logs at most `burst` messages per key per `period` seconds, then a summary line.

    At most `max_keys` keys are tracked; past that, keys whose period has ended are forgotten
    and, if none has, a new key shares one overflow key (so a flood of ids stays quiet too).
    """

    def __init__(self, period: float = 10.0, burst: int = 3, logger: logging.Logger = log,
                 max_keys: int = 256):
        self.period = period
        self.burst = burst
        self.log = logger
        self.max_keys = max_keys
        self._state: dict = {}

    def warning(self, key, msg: str, exc_info=None) -> None:
        now = time.monotonic()
        if key not in self._state and len(self._state) >= self.max_keys:
            self._state = {k: v for k, v in self._state.items() if now - v[0] < self.period}
            if len(self._state) >= self.max_keys:
                key = ("overflow", key[1] if isinstance(key, tuple) and len(key) > 1 else "")
        start, n, suppressed = self._state.get(key, (now, 0, 0))
        if now - start >= self.period:
            if suppressed:
                self.log.warning("%s (%d similar messages suppressed in the last %.0f s)",
                                 msg, suppressed, now - start)
                self._state[key] = (now, 1, 0)
                return
            start, n, suppressed = now, 0, 0
        if n < self.burst:
            self.log.warning("%s", msg, exc_info=exc_info)
            self._state[key] = (start, n + 1, suppressed)
        else:
            self._state[key] = (start, n, suppressed + 1)
