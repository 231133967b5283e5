"""Per-sensor ring buffers that cut sliding windows (length W, every H samples).

Each sensor owns a preallocated mirrored ring (see docs/design.md), so every window is a
contiguous view. A block is appended in chunks no larger than the ring can hold beside a
pending window; after each chunk the windows it completed are normalized and quantized
straight into the batcher's input tensor (a kernel call per chunk, not per window) before
the ring moves on. Sensor time is checked on every block: a jump forward (the sensor paused,
or a new recording began) restarts the sensor's windows instead of stitching across it.
"""

from __future__ import annotations

import numpy as np

from . import kernels
from .wire import WireError


class StreamTable:
    """Every sensor's ring and stream state as rows of preallocated arrays (slot = row), so the
    compiled per-message path (`edgert.kernels.ingest_messages`) reads and updates any sensor's
    state in one call. `SensorStream` objects are views of one row each.

    The rings are one ``np.zeros`` arena of ``slots * 2 * cap`` samples: the kernel hands pages
    out untouched, so a slot costs memory only once a sensor has used it.

    Args:
      slots: number of rows (the daemon's ``max_sensors``).
      n_channels: channels per sample.
      cap: ring capacity in samples of every row.
    """

    def __init__(self, slots: int, n_channels: int, cap: int):
        self.slots, self.cap = int(slots), int(cap)
        self.rings = np.zeros((self.slots, 2 * self.cap, n_channels), dtype=np.float32)
        i8 = np.int64
        self.pos = np.zeros(slots, i8)  # logical samples appended since the last restart
        self.next_start = np.zeros(slots, i8)  # logical start of the next window to cut
        self.last_seq = np.full(slots, -1, i8)  # -1: none yet
        self.t_origin = np.zeros(slots, i8)  # ns of logical sample 0 since the last restart
        self.dt = np.zeros(slots, i8)
        self.fast = np.zeros(slots, np.uint8)  # 1: the compiled path may take this slot's next block
        self.drop_min = np.full(slots, np.iinfo(np.int64).max, i8)  # smallest dropped seq ahead
        self.messages = np.zeros(slots, i8)
        self.samples = np.zeros(slots, i8)
        self.last_seen = np.zeros(slots, i8)  # perf ns of the last accepted block

    def reset(self, row: int) -> None:
        """Fresh state for a slot taken by a new sensor (its ring is overwritten before use)."""
        for a in (self.pos, self.next_start, self.t_origin, self.dt, self.messages, self.samples,
                  self.last_seen, self.fast):
            a[row] = 0
        self.last_seq[row] = -1
        self.drop_min[row] = np.iinfo(np.int64).max


def _row_field(name: str, doc: str):
    """A SensorStream attribute stored in its StreamTable row (read as a Python int)."""
    def get(self):
        return int(getattr(self._t, name)[self._row])

    def set_(self, value):
        getattr(self._t, name)[self._row] = value
    return property(get, set_, doc=doc)


class SensorStream:
    """Ring buffer and time/sequence bookkeeping of one sensor.

    Args:
      sensor: sensor id.
      index: small integer id used in batch metadata arrays.
      n_channels, window, hop: from the model manifest.
      capacity: ring capacity in samples (>= 2 * window; 0: max(2 * window, 256)).
      gap_samples: a t0 more than this many sample periods away from the expected one is a
        time gap (forward) or a t0 going backwards (an overlap).
      max_seq_gap: a seq further ahead than this is not a gap (loss) but a contradiction.
      table: the `StreamTable` whose row `index` holds this stream (None: a table of its own;
        its ``cap`` then wins over `capacity`).
    """

    RESTART_AFTER = 8  # consistent contradicting blocks in a row that restart the stream

    pos = _row_field("pos", "logical samples appended since the last restart")
    next_start = _row_field("next_start", "logical start of the next window to cut")
    t_origin = _row_field("t_origin", "ns of logical sample 0 since the last restart")
    dt = _row_field("dt", "sample period (ns); 0 before the first block")
    messages = _row_field("messages", "blocks accepted")
    samples = _row_field("samples", "samples accepted")
    last_seen = _row_field("last_seen", "perf ns of the last accepted block")

    def __init__(self, sensor: str, index: int, n_channels: int, window: int, hop: int,
                 capacity: int = 0, gap_samples: float = 3.0, max_seq_gap: int = 1 << 20,
                 table: StreamTable | None = None):
        self.sensor = sensor
        self.index = index
        self.window = window
        self.hop = hop
        if table is None:
            table = StreamTable(1, n_channels, ring_capacity(window, capacity))
            self._row = 0
        else:
            self._row = index
            table.reset(index)
        self._t = table
        self.cap = table.cap
        self.ring = table.rings[self._row]
        self.gap_samples = gap_samples
        self.restarts = 0
        self.max_seq_gap = int(max_seq_gap)
        self.lost_blocks = 0  # blocks skipped by seq gaps (lost on the way)
        self._cand = None  # (next seq, next t0, dt, count) of a run of contradicting blocks
        self._dropped_ahead: set[int] = set()  # seqs after last_seq that were received but dropped
        self._last_gap = 0  # blocks the last accepted block's seq gap counted as lost
        # Per-sensor normalization (views into edgert.adapt.SafeNormalization's rows) when the
        # daemon adapts; None: the model's, held by the batcher.
        self.norm_mean: np.ndarray | None = None
        self.norm_inv_std: np.ndarray | None = None

    @property
    def last_seq(self) -> int | None:
        v = int(self._t.last_seq[self._row])
        return None if v < 0 else v

    @last_seq.setter
    def last_seq(self, value: int | None) -> None:
        self._t.last_seq[self._row] = -1 if value is None else value

    def sync_fast(self) -> None:
        """Let the compiled path take this stream's next block only in the plain case: no run
        of contradicting blocks under way, no gap to retract, and (checked there) no dropped
        block at or before its seq."""
        t, r = self._t, self._row
        t.fast[r] = self._cand is None and self._last_gap == 0
        t.drop_min[r] = min(self._dropped_ahead) if self._dropped_ahead else np.iinfo(np.int64).max

    def normalization(self, batcher) -> tuple[np.ndarray, np.ndarray]:
        """(mean, inv_std) this sensor's windows are normalized with: its own rows when the
        daemon adapts them (`edgert.adapt`), else the model's, which the batcher holds."""
        if self.norm_mean is None:
            return batcher.mean, batcher.inv_std
        return self.norm_mean, self.norm_inv_std

    def dropped(self, seq: int) -> None:
        """A block of this sensor with this seq was received and dropped: a later seq gap
        over it is not a loss (each block is counted once, as dropped or as lost)."""
        if self.last_seq is not None and seq > self.last_seq and len(self._dropped_ahead) < 256:
            self._dropped_ahead.add(seq)

    def restart(self, t0: int, dt: int) -> None:
        self.t_origin, self.dt, self.pos, self.next_start = t0, dt, 0, 0
        self.restarts += 1

    def check(self, seq: int, t0: int, dt: int, n: int, notes) -> None:
        """Check a block's seq and t0 against the stream; restart windows on a time gap.

        A block that contradicts the stored state (seq not after the last one, a seq jump
        beyond `max_seq_gap`, t0 before the end of the last block) is dropped, but a run of
        `RESTART_AFTER` such blocks that are consistent among themselves (contiguous seq and
        time, same dt) restarts the stream at the last of them: one spoofed or corrupt block
        can no longer silence a genuine sensor for good.

        Args:
          seq, t0, dt, n: the block's header fields and sample count (range-checked by `wire`).
          notes: ``callable(reason, count=1)`` for things that are noted, not dropped
            (``seq_gap`` carries the number of blocks skipped).
        Raises:
          WireError("seq_backwards" | "seq_jump" | "t0_backwards") for a block to drop.
        """
        expected_t = self.t_origin + self.pos * self.dt
        tol = self.gap_samples * max(dt, self.dt)
        last = self.last_seq
        skipped = 0
        if last is not None:
            if seq <= last:
                if self.dt and t0 > expected_t + tol:
                    # seq restarted and time moved on: the sensor rebooted. Accept it.
                    notes("sensor_restart")
                    last = None
                else:
                    return self._contradicts(seq, t0, dt, n, notes, "seq_backwards", f"seq {seq} after {last}")
            elif seq > last + 1:
                skipped = seq - last - 1
                if skipped > self.max_seq_gap:
                    return self._contradicts(seq, t0, dt, n, notes, "seq_jump",
                                             f"seq {seq} is {skipped} blocks after {last} (max_seq_gap {self.max_seq_gap})")
        if self.dt == 0:
            self.restart(t0, dt)  # first block of this sensor
        elif dt != self.dt:
            notes("dt_change")
            self.restart(t0, dt)
        elif t0 < expected_t - tol:
            return self._contradicts(seq, t0, dt, n, notes, "t0_backwards",
                                     f"t0 {t0} is {(expected_t - t0) / 1e6:.3f} ms before the end "
                                     f"of the previous block (seq {last})")
        elif t0 > expected_t + tol:
            notes("time_gap")
            self.restart(t0, dt)
        if self._dropped_ahead:
            skipped -= sum(1 for q in self._dropped_ahead if (last or 0) < q < seq)
            self._dropped_ahead = {q for q in self._dropped_ahead if q > seq}
        self._last_gap = max(skipped, 0)
        if skipped > 0:
            notes("seq_gap", skipped)
            self.lost_blocks += skipped
        self.last_seq = seq
        self._cand = None

    def _contradicts(self, seq, t0, dt, n, notes, reason, message):
        """A block the stored state refuses: drop it, unless it completes a run of
        `RESTART_AFTER` consistent ones, which restarts the stream there."""
        c = self._cand
        count = 1
        if c is not None and seq == c[0] and dt == c[2] and abs(t0 - c[1]) <= self.gap_samples * dt:
            count = c[3] + 1
        if count >= self.RESTART_AFTER:
            notes("sensor_restart")
            if self._last_gap:
                # The state these blocks contradict was set by a block that jumped ahead (a
                # spoof, or a sensor that went back): the loss its gap implied never happened.
                notes("seq_gap_retracted", self._last_gap)
                self.lost_blocks -= self._last_gap
                self._last_gap = 0
            self.restart(t0, dt)
            self.last_seq = seq
            self._cand = None
            return
        self._cand = (seq + 1, t0 + n * dt, dt, count)
        raise WireError(reason, f"{message} ({count} consistent such blocks in a row; "
                        f"{self.RESTART_AFTER} restart the stream)", self.sensor)


def ring_capacity(window: int, capacity: int = 0) -> int:
    """Ring capacity in samples: `capacity` (at least 2 windows), or for 0 room for a window and
    a few hops beyond it, so a block is appended in few chunks while a sensor costs kilobytes,
    not the 24 KB a fixed 1,024-sample ring did."""
    return max(int(capacity), 2 * window) if capacity else max(2 * window, 256)


def push_block(stream: SensorStream, samples: np.ndarray, seq: int, t_recv: int, batcher,
               t_last: int = 0) -> int:
    """Append a block to a sensor's ring and hand every completed window to the batcher.

    One fused kernel call (`kernels.ingest`) per ring-sized chunk appends the samples and
    cuts the completed windows straight into the batcher's input tensor, statistics and
    timestamps; Python only commits the rows (and flushes a full batch between calls).

    Args:
      stream: the sensor's `SensorStream` (already `check`-ed for this block).
      samples: [n, C] view of the message payload (any wire dtype).
      seq: the block's seq (recorded per window).
      t_recv: ns (perf counter) when the message was received.
      batcher: the `edgert.batcher.Batcher` whose input tensor the windows go into (it
        holds the model's normalization and the tensor's quantization).
      t_last: sensor time (ns) of the block's last sample (for the queueing delay; 0: unknown).
    Returns:
      the number of windows cut.
    """
    W, H, cap = stream.window, stream.hop, stream.cap
    b = batcher
    n = samples.shape[0]
    i = 0
    cut = 0
    mean, inv_std = stream.normalization(b)
    while True:
        row = b.n
        first = stream.next_start
        pos, nxt, k, used = kernels.ingest(
            stream.ring, cap, stream.pos, first, samples[i:] if i else samples, W, H, mean,
            inv_std, b.in_scale, b.in_zp, b.buf, b.stats, b.t_start, row, b.max_batch - row,
            stream.t_origin, stream.dt)
        stream.pos, stream.next_start = pos, nxt
        i += used
        if k:
            if b.extra:  # a classifier beside the model: its own copy of the same windows
                sel = first + H * np.arange(k, dtype=np.int64)
                for mi in b.extra:
                    kernels.normalize_quantize(stream.ring, cap, sel, W, mi.mean, mi.inv_std,
                                               mi.in_scale, mi.in_zp, mi.buf, row)
            b.commit_rows(k, stream.index, seq, t_recv, t_last)
            cut += k
        if i >= n and nxt + W > pos:
            return cut
