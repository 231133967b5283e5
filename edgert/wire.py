"""The sensor wire format: encode and validate one block of samples.

A block is one ZeroMQ multipart message of three frames (see docs/wire-format.md):

0. sensor id, UTF-8, 1-64 bytes (also the SUB topic);
1. msgpack map ``{"v": 1, "seq", "t0", "dt", "dtype", "shape"}`` (unknown keys ignored);
2. the samples, C-order little-endian, ``n_samples * n_channels * itemsize`` bytes.

`decode` turns the frames into a `Block` whose ``samples`` is a zero-copy numpy view of
frame 2, or raises `WireError` whose ``reason`` is one of `DROP_REASONS`, so the daemon can
count every drop per sensor and reason. Nothing here loops over samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack
import numpy as np

VERSION = 1
MAX_SENSOR_ID = 64
MAX_SAMPLES = 1 << 20  # per block; larger blocks are refused as "huge"
MAX_CHANNELS = 256
MAX_HEADER_BYTES = 4096
F4_MAX = float(np.finfo(np.float32).max)  # samples are held as float32

# Wire dtype code -> little-endian numpy dtype.
DTYPES = {
    "f4": np.dtype("<f4"),
    "f8": np.dtype("<f8"),
    "i2": np.dtype("<i2"),
    "i4": np.dtype("<i4"),
    "u2": np.dtype("<u2"),
}

# Every reason a block can be dropped (or noted, for "seq_gap"). Stable names: they are
# the labels of the per-sensor drop counters in stats and events.
DROP_REASONS = (
    "frames",        # not exactly 3 frames
    "sensor_id",     # empty, > 64 bytes, or not UTF-8
    "msgpack",       # frame 1 is not a msgpack map
    "version",       # "v" missing or not 1
    "header",        # a required key missing or of the wrong type
    "dtype",         # dtype not one of DTYPES
    "shape",         # zero or huge shape, or not [n_samples, n_channels]
    "size",          # payload length != n_samples * n_channels * itemsize
    "nonfinite",     # NaN or Inf in a float block
    "channels",      # channel count does not match the model
    "seq_backwards",  # seq not greater than the last accepted seq
    "t0_backwards",  # t0 earlier than the end of the last accepted block
    "dt",            # dt <= 0
    "too_many_sensors",  # more distinct sensor ids than the daemon's max_sensors
    "auth",          # sensor_keys: the sensor id was sent by a CURVE key not bound to it
)
NOTE_REASONS = ("seq_gap", "time_gap")


class WireError(ValueError):
    """A block that violates the wire format.

    Attributes:
      reason: one of `DROP_REASONS`.
      sensor: the sensor id when it could be read, else None.
    """

    def __init__(self, reason: str, message: str, sensor: str | None = None):
        super().__init__(f"{sensor or '?'}: {reason}: {message}")
        self.reason = reason
        self.sensor = sensor


@dataclass(slots=True)
class Block:
    """One validated block of samples from one sensor."""

    sensor: str
    seq: int
    t0: int  # ns since epoch of the first sample
    dt: int  # ns between samples
    samples: np.ndarray  # [n_samples, n_channels], a view of the message payload


def encode_header(seq: int, t0: int, dt: int, samples: np.ndarray) -> bytes:
    """Pack the msgpack header frame for `samples` ([n, C] array of an allowed dtype)."""
    code = dtype_code(samples.dtype)
    return msgpack.packb(
        {"v": VERSION, "seq": int(seq), "t0": int(t0), "dt": int(dt), "dtype": code,
         "shape": [int(samples.shape[0]), int(samples.shape[1])]}
    )


def encode(sensor: str, seq: int, t0: int, dt: int, samples: np.ndarray) -> list:
    """Return the three frames of one block, ready for ``send_multipart``.

    The payload frame is the array itself (a buffer), so zmq can send it without a copy
    when it is large; it is made C-contiguous little-endian first if it is not.
    """
    if samples.ndim != 2:
        raise ValueError(f"samples must be [n_samples, n_channels], got shape {samples.shape}")
    want = DTYPES[dtype_code(samples.dtype)]
    samples = np.ascontiguousarray(samples, dtype=want)
    return [sensor.encode("utf-8"), encode_header(seq, t0, dt, samples), samples]


def dtype_code(dtype) -> str:
    """Wire code ("f4", ...) for a numpy dtype; raises ValueError for one not allowed."""
    dt = np.dtype(dtype)
    for code, allowed in DTYPES.items():
        if dt.kind == allowed.kind and dt.itemsize == allowed.itemsize:
            return code
    raise ValueError(f"dtype {dt} is not allowed on the wire (allowed: {', '.join(DTYPES)})")


def _int(header: dict, key: str, sensor: str, minimum: int | None = None) -> int:
    value = header.get(key)
    if type(value) is not int:  # bool is an int subclass: refuse it too
        raise WireError("header", f"field {key!r} must be an integer, got {value!r}", sensor)
    if minimum is not None and value < minimum:
        raise WireError("header", f"field {key!r} must be >= {minimum}, got {value}", sensor)
    return value


def decode(frames, check_finite=None) -> Block:
    """Validate the frames of one message and view its samples without copying.

    The common case (a well-formed block) takes a short path of a few type checks; anything
    unusual is re-validated step by step by `_decode_checked`, which names what is wrong.

    Args:
      frames: a list of zmq ``Frame`` objects (from ``recv_multipart(copy=False)``) or bytes.
      check_finite: optional ``callable(samples) -> int`` counting NaN/Inf (a kernel); when
        given, a float block with any non-finite value is refused.
    Returns:
      a `Block`.
    Raises:
      WireError naming the reason, the sensor (when known) and the field at fault.
    """
    if len(frames) == 3:
        f0, f1, f2 = frames
        try:
            raw_id, raw_header, payload = f0.bytes, f1.bytes, f2.buffer  # zmq Frames
        except AttributeError:
            raw_id, raw_header, payload = bytes(f0), bytes(f1), f2
        try:
            h = msgpack.unpackb(raw_header) if len(raw_header) <= MAX_HEADER_BYTES else None
            v, seq, t0, dt, code, (n, c) = h["v"], h["seq"], h["t0"], h["dt"], h["dtype"], h["shape"]
            dtype = DTYPES[code]
            sensor = raw_id.decode("utf-8")
        except Exception:  # any problem: the careful path says which
            return _decode_checked(frames, check_finite)
        if (v == VERSION and type(v) is int and type(seq) is int and seq >= 0 and type(t0) is int
                and type(dt) is int and dt > 0 and type(n) is int and type(c) is int
                and 1 <= n <= MAX_SAMPLES and 1 <= c <= MAX_CHANNELS
                and 1 <= len(raw_id) <= MAX_SENSOR_ID
                and memoryview(payload).nbytes == n * c * dtype.itemsize):
            samples = np.frombuffer(payload, dtype=dtype).reshape(n, c)
            if check_finite is not None and dtype.kind == "f":
                _check_finite(samples, check_finite, code, seq, sensor)
            return Block(sensor, seq, t0, dt, samples)
    return _decode_checked(frames, check_finite)


def _check_finite(samples, check_finite, code, seq, sensor) -> None:
    bad = check_finite(samples)
    if bad:
        raise WireError("nonfinite", f"{bad} NaN/Inf values in the block (seq {seq})", sensor)
    if code == "f8" and np.abs(samples).max() > F4_MAX:
        raise WireError("nonfinite", f"f8 values beyond float32 range in the block (seq {seq})", sensor)


def _decode_checked(frames, check_finite=None) -> Block:
    """`decode`, one check at a time, for messages the short path did not accept."""
    if len(frames) != 3:
        sensor = None
        if frames:
            try:
                sensor = _buf(frames[0]).tobytes().decode("utf-8")[:MAX_SENSOR_ID] or None
            except UnicodeDecodeError:
                pass
        raise WireError("frames", f"expected 3 frames, got {len(frames)}", sensor)
    raw_id = _buf(frames[0])
    if not 1 <= raw_id.nbytes <= MAX_SENSOR_ID:
        raise WireError("sensor_id", f"sensor id must be 1-{MAX_SENSOR_ID} bytes, got {raw_id.nbytes}")
    try:
        sensor = raw_id.tobytes().decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("sensor_id", "sensor id is not valid UTF-8") from None

    raw_header = _buf(frames[1])
    if raw_header.nbytes > MAX_HEADER_BYTES:
        raise WireError("msgpack", f"header frame is {raw_header.nbytes} bytes (max {MAX_HEADER_BYTES})", sensor)
    try:
        header = msgpack.unpackb(raw_header, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise WireError("msgpack", f"header frame is not msgpack ({type(exc).__name__})", sensor) from None
    if not isinstance(header, dict):
        raise WireError("msgpack", f"header must be a map, got {type(header).__name__}", sensor)
    if header.get("v") != VERSION or type(header.get("v")) is not int:
        raise WireError("version", f"field 'v' must be {VERSION}, got {header.get('v')!r}", sensor)
    seq = _int(header, "seq", sensor, 0)
    t0 = _int(header, "t0", sensor)
    dt = _int(header, "dt", sensor)
    if dt <= 0:
        raise WireError("dt", f"field 'dt' must be > 0 ns, got {dt}", sensor)
    code = header.get("dtype")
    dtype = DTYPES.get(code) if isinstance(code, str) else None
    if dtype is None:
        raise WireError("dtype", f"field 'dtype' must be one of {list(DTYPES)}, got {code!r}", sensor)
    shape = header.get("shape")
    if (not isinstance(shape, (list, tuple)) or len(shape) != 2
            or any(type(s) is not int for s in shape)):
        raise WireError("shape", f"field 'shape' must be [n_samples, n_channels], got {shape!r}", sensor)
    n, c = shape
    if not (1 <= n <= MAX_SAMPLES and 1 <= c <= MAX_CHANNELS):
        raise WireError("shape", f"field 'shape' {shape} out of range "
                        f"(1..{MAX_SAMPLES} samples, 1..{MAX_CHANNELS} channels)", sensor)
    payload = _buf(frames[2])
    if payload.nbytes != n * c * dtype.itemsize:
        raise WireError("size", f"payload is {payload.nbytes} bytes, shape {shape} of {code} needs "
                        f"{n * c * dtype.itemsize}", sensor)
    samples = np.frombuffer(payload, dtype=dtype).reshape(n, c)
    if check_finite is not None and dtype.kind == "f":
        _check_finite(samples, check_finite, code, seq, sensor)
    return Block(sensor, seq, t0, dt, samples)


def _buf(frame) -> memoryview:
    """A memoryview of a zmq Frame's payload (no copy) or of bytes."""
    buf = getattr(frame, "buffer", None)
    return memoryview(frame if buf is None else buf)
