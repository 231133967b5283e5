"""On-disk reservoir of recent normal windows, kept by the daemon for ``edgert retrain``.

One reservoir per model: ``DIR/<model>.bin``, a fixed-size ring of records (``np.memmap``,
never grows), and ``DIR/<model>.json``, a small sidecar (window, channels, record count, ring
head, the sensors seen, the normalization of the model that judged the windows). A record is
one window as the sensor sent it (raw float32 ``[W, C]``, not normalized: a retrain fits its
own normalization), its start time and its sensor.

The daemon feeds it once per batch (``Reservoir.feed``) with the windows it judged normal (not
flagged), of which a random fraction ``rate`` is kept, so disk writes stay bounded whatever the
input rate. The raw windows are read back from each sensor's ring (the batch only holds the
int8 tensor); a window whose samples the ring has already overwritten is detected (its
re-quantization differs from the scored tensor row) and skipped, never stored wrong.
Everything is vectorized per batch; Python loops run per sensor in the batch, not per window.

The sidecar is rewritten (temp file + ``os.replace``, after the data is flushed) on a timer
(``maybe_flush``, called from the daemon's loop between batches, never inside a batch) and on
close, so a reader never sees a count that the data does not hold. Reopening continues
where the ring stopped; a reservoir written for another window or channels is refused with an
error naming the file and the field. No TensorFlow here: this runs in the daemon.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("edgert")

SCHEMA = 1
FLUSH_S = 5.0  # sidecar rewritten at most this often while windows come in


class ReservoirError(ValueError):
    """A reservoir that cannot be used; the message names the file and the field."""


def record_dtype(window: int, n_channels: int) -> np.dtype:
    """One record: start time (ns), sensor index (into the sidecar's ``sensors``), the window."""
    return np.dtype([("t_start", "<i8"), ("sensor", "<i4"), ("x", "<f4", (window, n_channels))])


def paths(directory: str | os.PathLike, model: str) -> tuple[Path, Path]:
    """(data file, sidecar) of ``model``'s reservoir in ``directory``."""
    d = Path(directory)
    return d / f"{model}.bin", d / f"{model}.json"


class Reservoir:
    """A bounded ring of normal windows on disk.

    Args:
      directory: where the files live (created).
      model: model name (file stem).
      window, channels: the model's window length and channel names; an existing reservoir
        must have the same.
      size: records in the ring (the file is ``size`` x record size bytes); an existing
        reservoir must have the same.
      rate: fraction of the normal windows kept (0 < rate <= 1).
      normalization: the judging model's ``{"mean", "std"}`` (recorded, not applied).
      seed: seed of the sampling generator (None: fresh entropy).
    """

    def __init__(self, directory, model: str, window: int, channels, size: int = 4096,
                 rate: float = 0.05, normalization: dict | None = None, seed: int | None = None):
        if not (isinstance(size, int) and size >= 1):
            raise ReservoirError(f"reservoir size must be a positive integer, got {size!r}")
        if not 0 < rate <= 1:
            raise ReservoirError(f"reservoir rate must be in (0, 1], got {rate!r}")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_path, self.meta_path = paths(self.dir, model)
        self.model, self.window, self.channels = model, int(window), list(channels)
        self.size, self.rate = size, float(rate)
        self.dtype = record_dtype(self.window, len(self.channels))
        self.rng = np.random.default_rng(seed)
        self.sensors: list[str] = []
        self.count = 0  # records ever written (the ring holds min(count, size))
        self.stale = 0  # sampled windows skipped: the sensor ring had moved on
        self.errors = 0  # feeds that failed (e.g. disk full); detection goes on
        self.normalization = normalization
        if self.meta_path.exists():
            self._reopen()
        else:
            self.rec = np.memmap(self.data_path, self.dtype, mode="w+", shape=(size,))
            self._write_meta()
        self._sensor_id = {s: i for i, s in enumerate(self.sensors)}
        self._dirty = False
        self._next_flush = time.monotonic() + FLUSH_S
        self._scratch = None

    # -- files --------------------------------------------------------------------------
    def _reopen(self) -> None:
        meta = read_meta(self.meta_path)
        for field, want in (("window", self.window), ("channels", self.channels),
                            ("size", self.size)):
            if meta[field] != want:
                raise ReservoirError(
                    f"{self.meta_path}: field {field!r} is {meta[field]!r}, but this reservoir "
                    f"is opened for {want!r} (model {self.model}); use another reservoir "
                    "directory or remove these files")
        want_bytes = self.size * self.dtype.itemsize
        if not self.data_path.is_file() or self.data_path.stat().st_size != want_bytes:
            got = self.data_path.stat().st_size if self.data_path.is_file() else "missing"
            raise ReservoirError(f"{self.data_path}: size {got}, expected {want_bytes} bytes "
                                 f"({self.size} records of {self.dtype.itemsize})")
        self.rec = np.memmap(self.data_path, self.dtype, mode="r+", shape=(self.size,))
        self.count = meta["count"]
        self.sensors = list(meta["sensors"])
        self.stale = meta.get("stale", 0)
        if self.normalization is None:
            self.normalization = meta.get("normalization")

    def _write_meta(self) -> None:
        meta = {"schema": SCHEMA, "model": self.model, "window": self.window,
                "channels": self.channels, "size": self.size, "count": self.count,
                "head": self.count % self.size, "rate": self.rate, "dtype": "float32",
                "record": "t_start int64 ns, sensor int32 (index into sensors), x float32 "
                          "[window, channels] raw samples (not normalized)",
                "sensors": self.sensors, "stale": self.stale,
                "normalization": self.normalization, "updated_unix": round(time.time(), 3)}
        tmp = self.meta_path.with_name(self.meta_path.name + ".tmp")
        tmp.write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(tmp, self.meta_path)

    def flush(self) -> None:
        """Data to disk first, then the sidecar that counts it."""
        if self._dirty:
            self.rec.flush()
            self._write_meta()
            self._dirty = False
        self._next_flush = time.monotonic() + FLUSH_S

    def maybe_flush(self) -> None:
        """``flush`` when the flush interval has passed (call it from a loop)."""
        if self._dirty and time.monotonic() >= self._next_flush:
            self.flush()

    def close(self) -> None:
        self.flush()
        self.rec.flush()
        del self.rec

    # -- writing ------------------------------------------------------------------------
    def add(self, x: np.ndarray, t_start: np.ndarray, sensors) -> int:
        """Append raw windows ``x [k, W, C]`` (overwriting the oldest when full).

        Args:
          t_start: ns, one per window.
          sensors: one sensor name for all, or one per window.
        Returns k.
        """
        k = len(x)
        if k == 0:
            return 0
        if isinstance(sensors, str):
            sid = np.full(k, self._sid(sensors), np.int32)
        else:
            sid = np.array([self._sid(s) for s in sensors], np.int32)
        self._put(np.asarray(x, np.float32), np.asarray(t_start, np.int64), sid)
        return k

    def _sid(self, sensor: str) -> int:
        i = self._sensor_id.get(sensor)
        if i is None:
            i = self._sensor_id[sensor] = len(self.sensors)
            self.sensors.append(sensor)
        return i

    def _put(self, x, t_start, sid) -> None:
        k = len(x)
        if k > self.size:  # more than the ring holds: only the newest survive anyway
            x, t_start, sid = x[-self.size:], t_start[-self.size:], sid[-self.size:]
            self.count += k - self.size
            k = self.size
        pos = (self.count + np.arange(k)) % self.size
        self.rec["x"][pos] = x
        self.rec["t_start"][pos] = t_start
        self.rec["sensor"][pos] = sid
        self.count += k
        self._dirty = True

    def feed(self, batcher, k: int, flags: np.ndarray, streams, names) -> int:
        """Keep a random ``rate`` of the batch's normal (unflagged) windows. Called by the
        daemon per scored batch, before the batch rows are reused. Never raises: a failing
        disk must not stop detection (counted in ``errors``, logged).

        Args:
          batcher: the `edgert.batcher.Batcher` whose first k rows were just scored.
          flags: bool [k], True for windows judged anomalous (never stored).
          streams, names: the daemon's ``{sensor: SensorStream}`` and its index -> name list.
        Returns the number of windows stored.
        """
        try:
            return self._feed(batcher, k, flags, streams, names)
        except Exception as exc:
            self.errors += 1
            if self.errors == 1 or self.errors % 1000 == 0:
                log.warning("reservoir %s: %d failed writes, last: %r", self.data_path,
                            self.errors, exc)
            return 0

    def _feed(self, batcher, k, flags, streams, names) -> int:
        keep = ~flags[:k] & (self.rng.random(k) < self.rate)
        rows = np.flatnonzero(keep)
        if rows.size == 0:
            return 0
        from . import kernels

        b = batcher
        W = self.window
        if self._scratch is None or self._scratch.shape[0] < k:
            self._scratch = np.zeros((max(k, 32),) + b.buf.shape[1:], b.buf.dtype)
        stored = 0
        sidx = b.sensor_idx[rows]
        for s in np.unique(sidx):
            r = rows[sidx == s]
            st = streams[names[int(s)]]
            if st.dt <= 0:
                continue
            start = (b.t_start[r] - st.t_origin) // st.dt
            # still in the ring: the ring holds the last cap samples before st.pos
            ok = (start >= 0) & (start >= st.pos - st.cap) & (start + W <= st.pos)
            r, start = r[ok], start[ok].astype(np.int64)
            self.stale += int((~ok).sum())
            if r.size == 0:
                continue
            # re-quantize from the ring exactly as the scored rows were made: equal rows prove
            # the ring still holds the very samples that were judged normal
            mean, inv_std = st.normalization(b)
            kernels.normalize_quantize(st.ring, st.cap, start, W, mean, inv_std, b.in_scale,
                                       b.in_zp, self._scratch, 0)
            same = (self._scratch[:r.size] == b.buf[r]).reshape(r.size, -1).all(axis=1)
            self.stale += int((~same).sum())
            r, start = r[same], start[same]
            if r.size == 0:
                continue
            idx = (start % st.cap)[:, None] + np.arange(W)
            self._put(st.ring[idx], b.t_start[r], np.full(r.size, self._sid(st.sensor), np.int32))
            stored += int(r.size)
        return stored


# -- reading --------------------------------------------------------------------------------

def read_meta(meta_path: Path) -> dict:
    """The sidecar, checked; ReservoirError naming the file and field otherwise."""
    try:
        meta = json.loads(Path(meta_path).read_text())
    except FileNotFoundError:
        raise ReservoirError(f"{meta_path}: missing (no reservoir for this model here)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReservoirError(f"{meta_path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ReservoirError(f"{meta_path}: must be a JSON object")
    for field, types in (("window", int), ("channels", list), ("size", int), ("count", int),
                         ("sensors", list)):
        if field not in meta:
            raise ReservoirError(f"{meta_path}: missing field {field!r}")
        if isinstance(meta[field], bool) or not isinstance(meta[field], types):
            raise ReservoirError(f"{meta_path}: field {field!r} has the wrong type "
                                 f"({type(meta[field]).__name__})")
    if meta["window"] < 1 or meta["size"] < 1 or meta["count"] < 0:
        raise ReservoirError(f"{meta_path}: fields 'window', 'size' must be >= 1 and 'count' "
                             ">= 0")
    return meta


def load(directory, model: str, window: int | None = None, channels=None) -> dict:
    """A reservoir's contents, oldest first (a copy; the daemon may keep writing).

    Args:
      window, channels: when given, must match the reservoir (else ReservoirError naming the
        file and the field).
    Returns ``{"x": float32 [n, W, C], "t_start": int64 [n], "sensor": [n] names,
    "meta": sidecar}``.
    """
    data_path, meta_path = paths(directory, model)
    meta = read_meta(meta_path)
    for field, want in (("window", window), ("channels", None if channels is None
                                              else list(channels))):
        if want is not None and meta[field] != want:
            raise ReservoirError(f"{meta_path}: field {field!r} is {meta[field]!r}, model "
                                 f"{model} has {want!r}")
    dt = record_dtype(meta["window"], len(meta["channels"]))
    want_bytes = meta["size"] * dt.itemsize
    if not data_path.is_file() or data_path.stat().st_size != want_bytes:
        got = data_path.stat().st_size if data_path.is_file() else "missing"
        raise ReservoirError(f"{data_path}: size {got}, expected {want_bytes} bytes")
    rec = np.fromfile(data_path, dtype=dt, count=meta["size"])
    n, size = min(meta["count"], meta["size"]), meta["size"]
    order = np.arange(n) if meta["count"] <= size else (meta["count"] + np.arange(size)) % size
    rec = rec[order]
    names = np.asarray(meta["sensors"] or [""], dtype=object)
    sid = rec["sensor"]
    if n and (sid.min() < 0 or sid.max() >= len(meta["sensors"])):
        raise ReservoirError(f"{data_path}: a record's sensor index is outside the sidecar's "
                             f"'sensors' ({len(meta['sensors'])})")
    return {"x": np.ascontiguousarray(rec["x"]), "t_start": rec["t_start"].copy(),
            "sensor": names[sid] if n else np.zeros(0, object), "meta": meta}


def for_model(directory, model, size: int, rate: float, seed: int | None = None) -> Reservoir:
    """The daemon's reservoir for a loaded `edgert.models.Model`."""
    return Reservoir(directory, model.name, model.window, model.channels, size=size, rate=rate,
                     normalization={"mean": [float(v) for v in model.mean],
                                    "std": [float(v) for v in model.std]}, seed=seed)
