"""On-disk reservoir of recent normal windows, kept by the daemon for ``edgert retrain``.

One reservoir per model: ``DIR/<model>.bin``, a fixed-size ring of records (``np.memmap``,
never grows), and ``DIR/<model>.json``, a small sidecar (schema, window, channels, ring size,
rate, the normalization of the model that judged the windows; a record count and the stale
counter as of the last flush, for information). A record is one window as the sensor sent it
(raw float32 ``[W, C]``, not normalized: a retrain fits its own normalization), its start
time, its sensor id and its place in the write order.

Crash consistency (schema 2). Every record carries all it needs: a write number ``seq``
(1, 2, …; record ``seq`` lives in slot ``(seq - 1) % size``), the sensor id bytes in a
fixed 64-byte field (``wire.MAX_SENSOR_ID``) with their length, and last a CRC-32 of all its
other bytes. A record is built in memory and copied into its slot whole, so a writer killed
at any point leaves every slot either as it was, or new and complete, or torn, and a torn one
fails its CRC and is skipped (counted as ``torn``). Readers never need the sidecar's count:
``load`` orders the records that pass by ``seq``, and a reopened ring continues after the
highest one. A process killed with SIGKILL loses nothing it had written (the pages are in the
page cache); a power cut loses at most what was written since the last ``flush`` (msync).
Schema 1 (sensor indices into the sidecar, which a crash could leave behind the records) is
refused with an error naming the file and the field.

The daemon feeds it once per batch (``Reservoir.feed``) with the windows it judged normal (not
flagged), of which a random fraction ``rate`` is kept, so disk writes stay bounded whatever the
input rate. The raw windows are read back from each sensor's ring (the batch only holds the
int8 tensor); a window whose samples the ring has already overwritten is detected (its
re-quantization differs from the scored tensor row) and skipped, never stored wrong.
Array work is vectorized per batch; Python loops run per sensor in the batch, plus one
``zlib.crc32`` call per stored record (a sampled fraction of the windows, not per sample).

``flush`` (msync, then the sidecar through a temp file + ``os.replace``) runs on a timer
(``maybe_flush``, called from the daemon's loop between batches) and on close. A reservoir
written for another window, channels or size is refused with an error naming the file and the
field. No TensorFlow here: this runs in the daemon.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from pathlib import Path

import numpy as np

from .models import ModelError, check_plain_name

log = logging.getLogger("edgert")

SCHEMA = 2
FLUSH_S = 5.0  # sidecar rewritten (and the ring msynced) at most this often while windows come in
SENSOR_BYTES = 64  # the sensor id field; equals wire.MAX_SENSOR_ID (a test checks)
MAX_SEQ = 2**62  # a record's write number beyond this is not from a writer (hostile file)
MAX_WINDOW, MAX_CHANNELS = 1 << 20, 4096  # sidecar sanity bounds, checked before any allocation


class ReservoirError(ValueError):
    """A reservoir that cannot be used; the message names the file and the field."""


def record_dtype(window: int, n_channels: int) -> np.dtype:
    """One record (packed, little-endian): write number, start time (ns), sensor id (length +
    64 bytes, UTF-8), the window, and last the CRC-32 of all the bytes before it."""
    return np.dtype([("seq", "<u8"), ("t_start", "<i8"), ("sensor_len", "<u4"),
                     ("sensor", "u1", (SENSOR_BYTES,)), ("x", "<f4", (window, n_channels)),
                     ("crc", "<u4")])


def crc32s(rec: np.ndarray) -> np.ndarray:
    """CRC-32 (``zlib.crc32``) of each record's bytes before its ``crc`` field.

    Args:
      rec: a contiguous 1-D array of `record_dtype` records.
    Returns uint32 [len(rec)].
    """
    b = np.ascontiguousarray(rec).view(np.uint8).reshape(len(rec), rec.dtype.itemsize)[:, :-4]
    return np.fromiter((zlib.crc32(row) for row in b), np.uint32, len(rec))


def plain_name(name, where: str, field: str = "name") -> str:
    """``name`` if it is a plain file name (what a model name must be to name files), else
    ReservoirError naming ``where`` and ``field``."""
    try:
        return check_plain_name(name, where, field)
    except ModelError as exc:
        raise ReservoirError(str(exc)) from None


def paths(directory: str | os.PathLike, model: str) -> tuple[Path, Path]:
    """(data file, sidecar) of ``model``'s reservoir in ``directory``; ReservoirError when the
    model name is not a plain file name (``../x`` must not write outside ``directory``)."""
    d = Path(directory)
    plain_name(model, f"reservoir {d}", "model")
    return d / f"{model}.bin", d / f"{model}.json"


def encode_id(sensor: str) -> bytes:
    """The sensor id as stored: UTF-8, 1-64 bytes, else ReservoirError."""
    raw = str(sensor).encode("utf-8")
    if not 1 <= len(raw) <= SENSOR_BYTES:
        raise ReservoirError(f"reservoir: sensor id {sensor!r} is {len(raw)} bytes in UTF-8; "
                             f"1-{SENSOR_BYTES} fit a record")
    return raw


def put_ids(rec: np.ndarray, sensors) -> None:
    """Writes one sensor id into all records ``rec``, or one per record (a Python loop per
    distinct sensor, not per record)."""
    if isinstance(sensors, str):
        raw = encode_id(sensors)
        rec["sensor_len"] = len(raw)
        rec["sensor"][:, :len(raw)] = np.frombuffer(raw, np.uint8)
        return
    names = list(sensors)
    if len(names) != len(rec):
        raise ReservoirError(f"reservoir: {len(names)} sensor ids for {len(rec)} windows")
    uniq, inv = np.unique(np.asarray(names, dtype=object), return_inverse=True)
    inv = inv.reshape(-1)
    for i, name in enumerate(uniq):
        raw = encode_id(name)
        rows = np.flatnonzero(inv == i)
        rec["sensor_len"][rows] = len(raw)
        rec["sensor"][rows, :len(raw)] = np.frombuffer(raw, np.uint8)


def scan(raw: np.ndarray, data_path) -> tuple[np.ndarray, int]:
    """Which slots of a ring hold a complete record.

    Args:
      raw: the ring's records, slot order (a copy or a memmap).
      data_path: the file (named in errors).
    Returns (bool [size] valid, number of torn slots: written, CRC failing). A record whose
    CRC passes but whose fields no writer writes (seq 0, beyond MAX_SEQ or in another slot,
    sensor length outside 1-64, non-finite samples) raises ReservoirError naming the file, the
    slot and the field: such a file was not written by edgert.
    """
    size = len(raw)
    arr = np.asarray(raw)
    written = arr.view(np.uint8).reshape(size, arr.dtype.itemsize).any(axis=1)
    ok = np.zeros(size, bool)
    idx = np.flatnonzero(written)
    if idx.size:
        ok[idx] = crc32s(arr[idx]) == arr["crc"][idx]
    good = np.flatnonzero(ok)
    seq = arr["seq"][good]
    slen = arr["sensor_len"][good]
    slot = good.astype(np.uint64)
    for field, bad in (("seq", (seq < 1) | (seq > MAX_SEQ) | ((seq - 1) % size != slot)),
                       ("sensor_len", (slen < 1) | (slen > SENSOR_BYTES)),
                       ("x", ~np.isfinite(arr["x"][good]).all(axis=(1, 2)))):
        if bad.any():
            raise ReservoirError(f"{data_path}: record in slot {int(good[np.argmax(bad)])}: field "
                                 f"{field!r} holds a value no edgert writer writes; not a "
                                 "reservoir of this edgert (remove it)")
    return ok, int(written.sum() - ok.sum())


class Reservoir:
    """A bounded ring of normal windows on disk.

    Args:
      directory: where the files live (created).
      model: model name (file stem; must be a plain file name).
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
        self.data_path, self.meta_path = paths(self.dir, model)  # checks the name first
        self.dir.mkdir(parents=True, exist_ok=True)
        self.model, self.window, self.channels = model, int(window), list(channels)
        self.size, self.rate = size, float(rate)
        self.dtype = record_dtype(self.window, len(self.channels))
        self.rng = np.random.default_rng(seed)
        self.count = 0  # records ever written (the ring holds min(count, size)); the last seq
        self.stale = 0  # sampled windows skipped: the sensor ring had moved on
        self.errors = 0  # feeds that failed (e.g. disk full); detection goes on
        self.torn = 0  # slots found torn when this ring was opened (a crash mid-write)
        self.normalization = normalization
        if self.meta_path.exists():
            self._reopen()
        else:  # data file first: a sidecar never describes a file that is not there
            self.rec = np.memmap(self.data_path, self.dtype, mode="w+", shape=(size,))
            self.rec.flush()
            self._write_meta()
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
        ok, self.torn = scan(self.rec, self.data_path)
        self.count = int(self.rec["seq"][ok].max()) if ok.any() else 0  # continue after it
        if self.torn:
            log.warning("reservoir %s: %d torn record(s) from an interrupted write skipped",
                        self.data_path, self.torn)
        stale = meta.get("stale", 0)
        self.stale = stale if isinstance(stale, int) and not isinstance(stale, bool) else 0
        if self.normalization is None:
            self.normalization = meta.get("normalization")

    def _write_meta(self) -> None:
        meta = {"schema": SCHEMA, "model": self.model, "window": self.window,
                "channels": self.channels, "size": self.size, "count": self.count,
                "head": self.count % self.size, "rate": self.rate, "dtype": "float32",
                "record": ("seq uint64 (write number, 1-based; slot (seq-1) % size), t_start "
                           f"int64 ns, sensor_len uint32, sensor {SENSOR_BYTES} bytes UTF-8, x "
                           "float32 [window, channels] raw samples (not normalized), crc uint32 "
                           "(CRC-32 of the bytes before it); little-endian, packed"),
                "record_bytes": self.dtype.itemsize,
                "stale": self.stale, "normalization": self.normalization,
                "updated_unix": round(time.time(), 3)}
        tmp = self.meta_path.with_name(self.meta_path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(meta, indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.meta_path)

    def flush(self) -> None:
        """The ring to disk (msync), then the sidecar's count and counters."""
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
          sensors: one sensor id for all, or one per window (1-64 bytes in UTF-8).
        Returns k.
        """
        k = len(x)
        if k == 0:
            return 0
        x = np.asarray(x, np.float32)
        if x.shape[1:] != (self.window, len(self.channels)) or not np.isfinite(x).all():
            raise ReservoirError(f"{self.data_path}: windows must be finite float32 "
                                 f"[k, {self.window}, {len(self.channels)}], got shape "
                                 f"{list(x.shape)}")
        self._put(x, np.asarray(t_start, np.int64), sensors)
        return k

    def _put(self, x, t_start, sensors) -> None:
        """Writes k records; each is built whole in memory (CRC last) and copied into its slot
        in write order, so an interrupted call leaves complete records and at most one torn."""
        k = len(x)
        if k > self.size:  # more than the ring holds: only the newest survive anyway
            if not isinstance(sensors, str):
                sensors = list(sensors)[-self.size:]
            x, t_start = x[-self.size:], t_start[-self.size:]
            self.count += k - self.size
            k = self.size
        new = np.zeros(k, self.dtype)
        put_ids(new, sensors)
        new["seq"] = np.arange(self.count + 1, self.count + 1 + k, dtype=np.uint64)
        new["t_start"] = t_start
        new["x"] = x
        new["crc"] = crc32s(new)
        self.rec[(self.count + np.arange(k)) % self.size] = new
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
            self._put(st.ring[idx], b.t_start[r], st.sensor)
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
    if meta.get("schema") != SCHEMA:
        raise ReservoirError(
            f"{meta_path}: field 'schema' is {meta.get('schema')!r}, this edgert reads schema "
            f"{SCHEMA} (records carry their sensor id and a CRC-32 since schema 2); move the "
            "old reservoir away or remove its files, the daemon starts a new one")
    for field, types in (("window", int), ("channels", list), ("size", int)):
        if field not in meta:
            raise ReservoirError(f"{meta_path}: missing field {field!r}")
        if isinstance(meta[field], bool) or not isinstance(meta[field], types):
            raise ReservoirError(f"{meta_path}: field {field!r} has the wrong type "
                                 f"({type(meta[field]).__name__})")
    if not 1 <= meta["window"] <= MAX_WINDOW or meta["size"] < 1:
        raise ReservoirError(f"{meta_path}: field 'window' must be 1-{MAX_WINDOW} and 'size' "
                             ">= 1")
    if not (1 <= len(meta["channels"]) <= MAX_CHANNELS
            and all(isinstance(c, str) for c in meta["channels"])):
        raise ReservoirError(f"{meta_path}: field 'channels' must be 1-{MAX_CHANNELS} names")
    return meta


def load(directory, model: str, window: int | None = None, channels=None) -> dict:
    """A reservoir's contents, oldest first (a copy; the daemon may keep writing: a record
    being written as it is read fails its CRC and is left out).

    Args:
      window, channels: when given, must match the reservoir (else ReservoirError naming the
        file and the field).
    Returns ``{"x": float32 [n, W, C], "t_start": int64 [n], "sensor": [n] ids, "seq": uint64
    [n] write numbers, "count": records ever written (highest seq), "torn": slots skipped
    (interrupted writes), "meta": sidecar}``.
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
    raw = np.fromfile(data_path, dtype=dt, count=meta["size"])
    if len(raw) != meta["size"]:
        raise ReservoirError(f"{data_path}: shorter than {meta['size']} records")
    ok, torn = scan(raw, data_path)
    rec = raw[ok]
    rec = rec[np.argsort(rec["seq"], kind="stable")]
    key = np.concatenate([rec["sensor_len"].astype("<u4").view(np.uint8).reshape(-1, 4),
                          rec["sensor"]], axis=1)
    uniq, inv = np.unique(key, axis=0, return_inverse=True)
    names = np.empty(len(uniq), object)
    for i, u in enumerate(uniq):  # per distinct sensor
        n = int(u[:4].view("<u4")[0])
        try:
            names[i] = u[4:4 + n].tobytes().decode("utf-8")
        except UnicodeDecodeError:
            raise ReservoirError(f"{data_path}: field 'sensor' of a record is not UTF-8") from None
    return {"x": np.ascontiguousarray(rec["x"]), "t_start": rec["t_start"].copy(),
            "sensor": names[inv.reshape(-1)] if len(rec) else np.zeros(0, object),
            "seq": rec["seq"].copy(), "count": int(rec["seq"].max()) if len(rec) else 0,
            "torn": torn, "meta": meta}


def for_model(directory, model, size: int, rate: float, seed: int | None = None) -> Reservoir:
    """The daemon's reservoir for a loaded `edgert.models.Model`."""
    return Reservoir(directory, model.name, model.window, model.channels, size=size, rate=rate,
                     normalization={"mean": [float(v) for v in model.mean],
                                    "std": [float(v) for v in model.std]}, seed=seed)
