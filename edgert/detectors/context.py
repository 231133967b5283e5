"""Context novelty: how unexpected each sample is given the few samples before it and the time
of day, learned online from the stream itself (a raw anomaly score in [0, 1]).

The idea is that of the Contextual Anomaly Detector (CAD OSE, M. Smirnov, one of NAB's
leaders): quantize each value into a few levels, remember which level followed which
context, and score a sample by how little its context predicted it and how many of its
contexts are new. Here, per row ``t`` and per quantizer ``q`` (several level counts and
range paddings, averaged, so no single binning decides):

* for each order ``k = 1 .. order``, the context is the last ``k`` levels; with ``p_k`` the
  frequency of the current level after that context so far (only for contexts seen before)
  and ``new`` the share of orders whose (context, level) pair was never seen,
  ``r = (1 - mean(p_k) + new) / 2`` (CAD's ``(1 - active share + new-context share) / 2``);
* with timestamps, the time bucket (hour of day, and weekend or not) is one more context:
  its ``(1 - p + new) / 2`` is averaged with ``r`` with weight ``tod_weight`` (HTM encodes
  the time of day the same way);
* every count is learned after the row is scored (test, then train).

The quantizers' ranges are fixed from the first ``warmup`` rows (NAB: the probationary
period, where nothing is scored): those rows are buffered, score 0, and are replayed into
the model once the range is known. Nothing later changes a range, so the score of row ``t``
depends on rows ``<= t`` only. Levels continue beyond the warm-up range with the same width
(up to ``beyond`` ranges either side, as HTM's unbounded scalar encoder does), so a value far
outside it is a new symbol, not just the end level.

Memory: one open-addressing table of ``2**table_bits`` int64 keys and counts, shared by all
quantizers; once it is 3/4 full, new pairs are no longer stored (counted in ``dropped``) and
count as never seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._jit import njit

__all__ = ["ContextConfig", "ContextNovelty", "time_buckets"]

_EMPTY = -1
_MAX_ORDER, _MAX_LEVELS, _MAX_Q = 8, 32, 64


@dataclass(frozen=True)
class ContextConfig:
    """Settings of `ContextNovelty` (see the module docstring)."""
    levels: tuple = (8,)           # levels of each quantizer family (CAD OSE: 8)
    pads: tuple = (0.0, 0.1, 0.2)  # range padding, x the warm-up range (quantizers: levels x pads)
    order: int = 5                 # longest context, in samples
    tod_weight: float = 1.0        # weight of the time-of-day context (0: none)
    beyond: int = 4                # warm-up ranges of levels kept beyond each end (0: clip)
    warmup: int = 750              # rows that fix the ranges (NAB: the probationary period)
    table_bits: int = 20           # 2**bits table slots (16 bytes each)

    def check(self) -> None:
        """Raises ValueError naming the first bad field."""
        for k in ("order", "beyond", "warmup", "table_bits"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"context: {k} must be an integer, got {v!r}")
        if not (1 <= len(self.levels) and 1 <= len(self.pads)
                and len(self.levels) * len(self.pads) <= _MAX_Q):
            raise ValueError(f"context: levels x pads must give 1..{_MAX_Q} quantizers")
        for L in self.levels:
            if not (isinstance(L, (int, np.integer)) and 2 <= L <= _MAX_LEVELS):
                raise ValueError(f"context: levels must be integers in [2, {_MAX_LEVELS}], "
                                 f"got {L!r}")
        for p in self.pads:
            if not (np.isfinite(p) and 0 <= p <= 10):
                raise ValueError(f"context: pads must be in [0, 10], got {p!r}")
        if not 1 <= self.order <= _MAX_ORDER:
            raise ValueError(f"context: order must be in [1, {_MAX_ORDER}], got {self.order}")
        if not (np.isfinite(self.tod_weight) and 0 <= self.tod_weight <= 100):
            raise ValueError(f"context: tod_weight must be in [0, 100], got {self.tod_weight}")
        if not 0 <= self.beyond <= 64:
            raise ValueError(f"context: beyond must be in [0, 64], got {self.beyond}")
        if not 2 <= self.warmup <= 1 << 22:
            raise ValueError(f"context: warmup must be in [2, 2**22] rows, got {self.warmup}")
        if not 8 <= self.table_bits <= 24:   # 2**24 slots: 256 MB
            raise ValueError(f"context: table_bits must be in [8, 24], got {self.table_bits}")


def time_buckets(stamps) -> np.ndarray:
    """int64 [n]: hour of day (0-23), +24 on Saturdays and Sundays, of datetime64 ``stamps``."""
    ts = np.asarray(stamps).astype("datetime64[s]")
    day = ts.astype("datetime64[D]")
    hour = ((ts - day).astype(np.int64) // 3600).astype(np.int64)
    dow = (day.astype(np.int64) + 3) % 7          # 1970-01-01 was a Thursday; 0 = Monday
    return hour + 24 * (dow >= 5)


@njit
def _slot(keys, key, mask):
    """The slot holding ``key``, or the empty slot where it would go (linear probing)."""
    i = ((key * -7046029254386353131) >> 17) & mask
    while keys[i] != _EMPTY and keys[i] != key:
        i = (i + 1) & mask
    return i


@njit
def _seen_then_count(keys, cnt, key, mask, state):
    """Count of ``key`` before this row, then count it (unless the table is full)."""
    i = _slot(keys, key, mask)
    c = cnt[i]
    if keys[i] == _EMPTY:
        if state[1] >= state[2]:          # full: do not store, count the drop
            state[3] += 1
            return 0
        keys[i] = key
        state[1] += 1
    cnt[i] = c + 1
    return c


_M62 = (1 << 62) - 1        # keys are the low 62 bits of exact integer arithmetic: the
_PRIME = 1000003            # same with numba's wrapping int64 and with Python's ints


@njit
def _context_block(values, tod, lo, scale, nlev, beyond, keys, cnt, hist, state, order,
                   tod_weight, out):
    """Raw context-novelty scores of one block (see the module docstring). ``hist`` [order, Q]
    holds the last symbols (ring by row number); ``state`` = [rows, used, capacity, dropped].
    Keys: ``ctx * 4096 + order * 256 + quantizer * 4 + kind`` (kind 0/1: sequence context /
    pair, 2/3: time context / pair), ``ctx`` a rolling hash of the symbols."""
    mask = keys.shape[0] - 1
    nq = lo.shape[0]
    for j in range(values.shape[0]):
        t = int(state[0])
        acc = 0.0
        for q in range(nq):
            L = int(nlev[q])
            x = (values[j] - lo[q]) * scale[q]
            # levels continue beyond the warm-up range with the same width, up to `beyond`
            # ranges either side (then the end symbols)
            s = int(math.floor(max(min(x, (beyond + 1.0) * L - 0.5), -beyond * L - 0.5)))
            if beyond == 0:
                s = min(max(s, 0), L - 1)
            s_enc = s + beyond * L + 1                 # >= 1
            ctx = 0
            psum = 0.0
            pn = 0
            new = 0
            tot = 0
            for k in range(1, order + 1):
                if t - k < 0:
                    break
                ctx = (ctx * _PRIME + int(hist[(t - k) % order, q])) & _M62
                kc = (ctx * 4096 + k * 256 + q * 4) & _M62
                kt = (((ctx * _PRIME + s_enc) & _M62) * 4096 + k * 256 + q * 4 + 1) & _M62
                cc = _seen_then_count(keys, cnt, kc, mask, state)
                ct = _seen_then_count(keys, cnt, kt, mask, state)
                tot += 1
                if cc > 0:
                    psum += ct / cc
                    pn += 1
                if ct == 0:
                    new += 1
            r = 0.5
            if tot > 0:
                r = (1.0 - (psum / pn if pn > 0 else 0.0) + new / tot) / 2.0
            if tod_weight > 0 and tod[j] >= 0:
                tc = int(tod[j]) + 1
                kc = (tc * 4096 + q * 4 + 2) & _M62
                kt = (((tc * _PRIME + s_enc) & _M62) * 4096 + q * 4 + 3) & _M62
                cc = _seen_then_count(keys, cnt, kc, mask, state)
                ct = _seen_then_count(keys, cnt, kt, mask, state)
                rt = 0.5
                if cc > 0:
                    rt = (1.0 - ct / cc + (1.0 if ct == 0 else 0.0)) / 2.0
                r = (r + tod_weight * rt) / (1.0 + tod_weight)
            hist[t % order, q] = s_enc
            acc += r
        out[j] = acc / nq
        state[0] = t + 1


class ContextNovelty:
    """Online context-novelty raw score of one scalar stream (see the module docstring).

    Args:
      cfg: `ContextConfig`.
    """

    def __init__(self, cfg: ContextConfig | None = None):
        self.cfg = cfg or ContextConfig()
        self.cfg.check()
        c = self.cfg
        self._keys = np.full(1 << c.table_bits, _EMPTY, np.int64)
        self._cnt = np.zeros(1 << c.table_bits, np.int64)
        nq = len(c.levels) * len(c.pads)
        self._hist = np.zeros((c.order, nq), np.int64)
        self._state = np.array([0, 0, (3 << c.table_bits) // 4, 0], np.int64)
        self._buf_v: list[np.ndarray] = []
        self._buf_t: list[np.ndarray] = []
        self._nbuf = 0
        self.lo = self.scale = self.nlev = None

    @property
    def fitted(self) -> bool:
        """True once the warm-up rows have fixed the ranges."""
        return self.lo is not None

    @property
    def dropped(self) -> int:
        """Context pairs not stored because the table was full."""
        return int(self._state[3])

    def _fit(self, v: np.ndarray) -> None:
        """Quantizer ranges from the warm-up values ``v``."""
        c = self.cfg
        vmin, vmax = float(v.min()), float(v.max())
        span = vmax - vmin
        if span <= 0:   # a constant warm-up: a small range around the value
            span = max(abs(vmin), 1.0) * 1e-3
            vmin, vmax = vmin - span / 2, vmax + span / 2
        lo, scale, nlev = [], [], []
        for L in c.levels:
            for p in c.pads:
                a, b = vmin - p * span, vmax + p * span
                lo.append(a)
                scale.append(L / (b - a))
                nlev.append(L)
        self.lo = np.array(lo)
        self.scale = np.array(scale)
        self.nlev = np.array(nlev, np.int64)

    def _run(self, v: np.ndarray, tod: np.ndarray) -> np.ndarray:
        out = np.empty(len(v))
        _context_block(v, tod, self.lo, self.scale, self.nlev, int(self.cfg.beyond),
                       self._keys, self._cnt,
                       self._hist, self._state, self.cfg.order, float(self.cfg.tod_weight), out)
        return out

    def update(self, values: np.ndarray, tod: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Feeds the next rows (finite values; ``tod`` from `time_buckets`, or None).

        Returns:
          (raw [k]: scores of the rows after the warm-up, NaN for rows still buffered;
          and, on the call that completes the warm-up, the warm-up rows' raw scores and
          values, else None, None).
        """
        v = np.ascontiguousarray(values, np.float64).reshape(-1)
        t = (np.full(len(v), -1, np.int64) if tod is None
             else np.ascontiguousarray(tod, np.int64).reshape(-1))
        if t.shape != v.shape:
            raise ValueError(f"context: {len(t)} time buckets for {len(v)} values")
        raw = np.full(len(v), np.nan)
        warm_raw = warm_v = None
        i = 0
        if not self.fitted:
            i = min(len(v), self.cfg.warmup - self._nbuf)
            self._buf_v.append(v[:i].copy())
            self._buf_t.append(t[:i].copy())
            self._nbuf += i
            if self._nbuf == self.cfg.warmup:
                warm_v = np.concatenate(self._buf_v)
                self._fit(warm_v)
                warm_raw = self._run(warm_v, np.concatenate(self._buf_t))
                self._buf_v, self._buf_t = [], []
        if self.fitted and i < len(v):
            raw[i:] = self._run(v[i:], t[i:])
        return raw, warm_raw, warm_v
