"""The wire format: every malformed message is refused with its reason and sensor."""

import msgpack
import numpy as np
import pytest

from edgert import wire
from edgert.kernels import count_nonfinite


def frames(sensor=b"s1", header=None, payload=None, **override):
    samples = np.arange(12, dtype="<f4").reshape(4, 3)
    h = {"v": 1, "seq": 0, "t0": 1_000, "dt": 1_000_000, "dtype": "f4", "shape": [4, 3]}
    h.update(override)
    return [sensor, msgpack.packb(h) if header is None else header,
            samples.tobytes() if payload is None else payload]


def test_round_trip_all_dtypes():
    for code, dt in wire.DTYPES.items():
        x = (np.arange(20) % 7).astype(dt).reshape(10, 2)
        f = wire.encode("motor-1", 5, 123, 1000, x)
        blk = wire.decode([bytes(memoryview(p)) if not isinstance(p, bytes) else p for p in f])
        assert blk.sensor == "motor-1" and blk.seq == 5 and blk.t0 == 123 and blk.dt == 1000
        assert blk.samples.dtype == dt and np.array_equal(blk.samples, x)


def test_payload_is_a_view_not_a_copy():
    payload = bytearray(np.arange(12, dtype="<f4").tobytes())
    blk = wire.decode(frames(payload=payload))
    payload[0:4] = np.float32(42).tobytes()
    assert blk.samples[0, 0] == 42  # the array shares the frame's memory


def test_unknown_keys_ignored():
    blk = wire.decode(frames(extra="hello", unit="A"))
    assert blk.samples.shape == (4, 3)


@pytest.mark.parametrize("f, reason", [
    ([b"s1", b"x"], "frames"),
    ([b"s1", b"x", b"y", b"z"], "frames"),
    (frames(sensor=b""), "sensor_id"),
    (frames(sensor=b"x" * 65), "sensor_id"),
    (frames(sensor=b"\xff\xfe"), "sensor_id"),
    (frames(header=b"\xc1garbage"), "msgpack"),
    (frames(header=msgpack.packb([1, 2, 3])), "msgpack"),
    (frames(header=b"\x00" * 5000), "msgpack"),
    (frames(v=2), "version"),
    (frames(v="1"), "version"),
    (frames(seq=-1), "header"),
    (frames(seq=1.5), "header"),
    (frames(t0="now"), "header"),
    (frames(dt=0), "dt"),
    (frames(dt=-5), "dt"),
    (frames(dtype="f2"), "dtype"),
    (frames(dtype=None), "dtype"),
    (frames(shape=[4]), "shape"),
    (frames(shape=[0, 3]), "shape"),
    (frames(shape=[4, 0]), "shape"),
    (frames(shape=[2**40, 3]), "shape"),
    (frames(shape="4x3"), "shape"),
    (frames(shape=[2, 3]), "size"),
    (frames(payload=b"\x00" * 47), "size"),
])
def test_malformed(f, reason):
    with pytest.raises(wire.WireError) as ei:
        wire.decode(f)
    assert ei.value.reason == reason
    assert ei.value.reason in wire.DROP_REASONS


def test_error_names_sensor():
    with pytest.raises(wire.WireError) as ei:
        wire.decode(frames(sensor=b"pump-7", dtype="f2"))
    assert ei.value.sensor == "pump-7" and "pump-7" in str(ei.value) and "dtype" in str(ei.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite(bad):
    x = np.zeros((4, 3), dtype="<f4")
    x[2, 1] = bad
    with pytest.raises(wire.WireError) as ei:
        wire.decode(frames(payload=x.tobytes()), check_finite=count_nonfinite)
    assert ei.value.reason == "nonfinite"
    # integer blocks have no NaN; they pass
    xi = np.zeros((4, 3), dtype="<i2")
    assert wire.decode(frames(payload=xi.tobytes(), dtype="i2"), check_finite=count_nonfinite)


def test_encode_refuses_disallowed_dtype():
    with pytest.raises(ValueError, match="not allowed"):
        wire.encode("s", 0, 0, 1, np.zeros((2, 2), dtype=np.int64))
