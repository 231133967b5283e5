"""The numba kernels, the numpy reference kernels and the naive loops agree bit for bit.

Contracts: docs/design.md, "Kernels". Every comparison here is exact (float outputs are
compared as raw bits, so even -0.0 vs 0.0 would fail): all three versions do the float64
arithmetic in the contract's operation order, and every mean is a sequential sum in
increasing index order divided by the count.

Bulk array contents come from a numpy Generator seeded by hypothesis (fast to draw), mixed
per channel from value "modes" (constants, zeros, -0.0, subnormals, huge values, exact .5
ties, cancelling big values...) and overwritten at drawn positions with edge values.

Where an order of operations is observable it is pinned: normalize_quantize's by values built
to sit next to a .5 rounding boundary, window_stats' summation order by cancelling values.
For sums of non-negative terms (recon_error, rms) another order changes the float64 result
by a few ulps at most, which the float32 outputs essentially never show, so no test can
force it; the versions still agree because they all sum in the same order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import naive
from edgert.kernels import _jit, ref

IMPLS = {"numba": _jit, "numpy": ref, "naive": naive}
BLOCK_DTYPES = ["<f4", "<f8", "<i2", "<i4", "<u2"]
F32 = np.finfo(np.float32)

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Budget of naive inner-loop iterations per example (they run ~1 us each in Python).
NAIVE_BUDGET = 12_000


def assert_same(a: np.ndarray, b: np.ndarray, what: str) -> None:
    """Exact equality, as raw bits for floats (NaN payloads and the sign of zero included)."""
    assert a.dtype == b.dtype and a.shape == b.shape, what
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    if not np.array_equal(a.view(np.uint8), b.view(np.uint8)):
        bad = np.argwhere(a != b)[:5] if a.dtype.kind != "f" else np.argwhere(
            a.view(f"u{a.itemsize}") != b.view(f"u{b.itemsize}"))[:5]
        raise AssertionError(f"{what}: differ at {bad.tolist()}: "
                             f"{[a[tuple(i)] for i in bad]} vs {[b[tuple(i)] for i in bad]}")


# ------------------------------------------------------------------ value generators

SPECIAL_F32 = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 1.5, 2.5, -2.5, F32.max, -F32.max, F32.tiny,
               -F32.tiny, F32.smallest_subnormal, -F32.smallest_subnormal, 1e30, -1e30,
               65535.0, -32768.0, 127.5, -128.5, 3.0e38]
NONFINITE = [np.nan, np.inf, -np.inf]
F32_MODES = ["normal", "wide", "const", "zero", "negzero", "tiny", "huge", "quarters", "ints",
             "cancel"]


def f32_column(rng: np.random.Generator, n: int, mode: str) -> np.ndarray:
    if mode == "normal":
        return rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 4)
    if mode == "wide":  # magnitudes 1e-40 .. 1e38, both signs
        return rng.choice([-1.0, 1.0], n) * 10.0 ** rng.uniform(-40, 38, n)
    if mode == "const":
        return np.full(n, rng.choice(SPECIAL_F32))
    if mode == "zero":
        return np.zeros(n)
    if mode == "negzero":
        return np.full(n, -0.0)
    if mode == "tiny":
        return rng.integers(-50, 50, n) * float(F32.smallest_subnormal)
    if mode == "huge":
        return rng.choice([-1.0, 1.0], n) * rng.uniform(1e37, float(F32.max), n)
    if mode == "quarters":  # exact in float32; with dyadic mean/scale many .5 rounding ties
        return rng.integers(-600, 600, n) / 4.0
    if mode == "cancel":  # big values of both signs among small ones: sums depend on order
        big = rng.choice([-1.0, 1.0], n) * 10.0 ** rng.integers(8, 31, n)
        return np.where(rng.random(n) < 0.5, big, rng.standard_normal(n))
    return rng.integers(-40000, 40000, n).astype(np.float64)  # "ints"


@st.composite
def f32_matrix(draw, rows: int, C: int, nonfinite: bool = False) -> np.ndarray:
    """float32 [rows, C] with per-channel value modes and injected edge values."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    modes = draw(st.lists(st.sampled_from(F32_MODES), min_size=C, max_size=C))
    with np.errstate(over="ignore"):
        a = np.stack([f32_column(rng, rows, m) for m in modes], axis=1).astype(np.float32)
    if rows:
        specials = SPECIAL_F32 + (NONFINITE if nonfinite else [])
        for _ in range(draw(st.integers(0, 6))):
            r = draw(st.integers(0, rows - 1))
            c = draw(st.integers(0, C - 1))
            a[r, c] = draw(st.sampled_from(specials))
    return a


@st.composite
def block_of(draw, dtype: str, n: int, C: int, nonfinite: bool) -> np.ndarray:
    """[n, C] block of a bus dtype, with the dtype's extremes (and NaN/Inf if asked)."""
    dt = np.dtype(dtype)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dt.kind in "iu":
        info = np.iinfo(dt)
        a = rng.integers(info.min, int(info.max) + 1, (n, C), dtype=np.int64).astype(dt)
        specials = [info.min, info.max, 0, 1, -1 if dt.kind == "i" else 2]
    elif dt == np.float32:
        return draw(f32_matrix(n, C, nonfinite))
    else:  # f8: also values a float32 can't hold (overflow to inf, underflow to 0)
        a = rng.standard_normal((n, C)) * 10.0 ** rng.uniform(-50, 50, (n, C))
        specials = [0.0, -0.0, 1e300, -1e300, 5e-324, 3.4028235677973366e38, 3.402823669e38,
                    1.0000000596046448, 2.0**-150, 16777217.0]
        if nonfinite:
            specials += NONFINITE
    if n:
        for _ in range(draw(st.integers(0, 6))):
            r, c = draw(st.integers(0, n - 1)), draw(st.integers(0, C - 1))
            a[r, c] = draw(st.sampled_from(specials))
    return np.ascontiguousarray(a)


def logical_positions(cap: int) -> st.SearchStrategy[int]:
    """Logical sample positions: small, around 2**31 and 2**32, huge; any phase in the ring."""
    return st.one_of(
        st.integers(0, 4 * cap),
        st.integers(2**31 - 2 * cap, 2**31 + 2 * cap),
        st.integers(2**32 - 2 * cap, 2**32 + 2 * cap),
        st.integers(0, 2**52),
    )


def sizes(max_w: int = 128):
    """(W, C, cap) with cap anywhere from W to large."""
    return st.integers(1, max_w).flatmap(lambda W: st.tuples(
        st.just(W), st.integers(1, 16),
        st.one_of(st.just(W), st.integers(W, 2 * W + 3), st.integers(W, 5000))))


# ------------------------------------------------------------------ ring_append

@st.composite
def ring_append_case(draw):
    C = draw(st.integers(1, 16))
    cap = draw(st.one_of(st.integers(1, 8), st.integers(1, 300), st.integers(300, 5000)))
    dtype = draw(st.sampled_from(BLOCK_DTYPES))
    readonly = draw(st.booleans())
    pos = draw(logical_positions(cap))
    nmax = min(cap, max(1, NAIVE_BUDGET // (8 * C)))
    blocks = []
    for _ in range(draw(st.integers(1, 3))):
        n = draw(st.one_of(st.integers(0, nmax), st.just(min(cap, nmax))))
        b = draw(block_of(dtype, n, C, nonfinite=True))
        b.flags.writeable = not readonly
        blocks.append(b)
    ring = draw(f32_matrix(2 * cap, C))
    return ring, cap, pos, blocks


@SETTINGS
@given(ring_append_case())
def test_ring_append(case):
    ring0, cap, pos0, blocks = case
    results = {}
    for name, impl in IMPLS.items():
        ring = ring0.copy()
        pos = pos0
        with np.errstate(over="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # f8 -> f4 overflow
            for b in blocks:
                new = impl.ring_append(ring, cap, pos, b)
                assert new == pos + b.shape[0] and isinstance(new, int), name
                pos = new
        results[name] = ring
    for name in ("numpy", "naive"):
        assert_same(results["numba"], results[name], f"ring numba vs {name}")


@SETTINGS
@given(st.data())
def test_ring_windows_follow_the_stream(data):
    """Semantics, independently of the other versions: after appending a stream in chunks,
    every window of the last cap samples is the contiguous view ring[s % cap:s % cap + W]."""
    W, C, cap = data.draw(sizes(max_w=64))
    cap = min(cap, 600)
    start = data.draw(logical_positions(cap))
    total = data.draw(st.integers(cap, 3 * cap))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    stream = rng.standard_normal((total, C)).astype(np.float32)
    for name, impl in (("numba", _jit), ("numpy", ref)):
        ring = np.full((2 * cap, C), np.nan, dtype=np.float32)
        pos, i = start, 0
        while i < total:
            n = int(rng.integers(0, cap + 1))
            pos = impl.ring_append(ring, cap, pos, stream[i:i + n])
            i += n
        assert pos == start + total
        assert_same(ring[:cap], ring[cap:], f"{name}: mirror halves")
        for s in range(pos - cap, pos - W + 1, max(1, cap // 50)):
            r = s % cap
            assert_same(ring[r:r + W], stream[s - start:s - start + W], f"{name}: window at {s}")


# ------------------------------------------------------------------ count_nonfinite

@SETTINGS
@given(st.data())
def test_count_nonfinite(data):
    dtype = data.draw(st.sampled_from(BLOCK_DTYPES))
    C = data.draw(st.integers(1, 16))
    n = data.draw(st.integers(0, max(1, NAIVE_BUDGET // (4 * C))))
    block = data.draw(block_of(dtype, n, C, nonfinite=True))
    block.flags.writeable = data.draw(st.booleans())
    want = int(np.count_nonzero(~np.isfinite(block))) if block.dtype.kind == "f" else 0
    for name, impl in IMPLS.items():
        got = impl.count_nonfinite(block)
        assert got == want and isinstance(got, int), (name, got, want)


def test_count_nonfinite_edges():
    for dt in BLOCK_DTYPES:
        z = np.zeros((0, 3), dtype=dt)
        assert all(impl.count_nonfinite(z) == 0 for impl in IMPLS.values())
    b = np.array([[np.nan, np.inf, -np.inf, F32.max, -0.0, F32.smallest_subnormal]], np.float32)
    assert all(impl.count_nonfinite(b) == 3 for impl in IMPLS.values())
    b = np.full((100, 7), np.nan)
    assert all(impl.count_nonfinite(b) == 700 for impl in IMPLS.values())
    for dt in ("<i2", "<i4", "<u2"):
        info = np.iinfo(dt)
        b = np.array([[info.min, info.max]], dtype=dt)
        assert all(impl.count_nonfinite(b) == 0 for impl in IMPLS.values())


# ------------------------------------------------------------------ normalize_quantize

@st.composite
def normalize_case(draw):
    W, C, cap = draw(sizes())
    ring = draw(f32_matrix(2 * cap, C))
    k = draw(st.integers(0, 40))
    starts = np.array(draw(st.lists(logical_positions(cap), min_size=k, max_size=k)),
                      dtype=np.int64)
    if draw(st.booleans()):
        # dyadic parameters: with "quarters" data, many values land exactly on .5 ties
        mean = np.array(draw(st.lists(st.sampled_from([0.0, 0.5, -1.5, 0.25, 3.0]),
                                      min_size=C, max_size=C)))
        inv_std = np.array(draw(st.lists(st.sampled_from([0.0, 1.0, 2.0, 0.5, 4.0, 0.125]),
                                         min_size=C, max_size=C)))
        scale = draw(st.sampled_from([1.0, 0.5, 0.25, 2.0, 0.125, 1.0 / 1024]))
    else:
        mean = np.array(draw(st.lists(st.one_of(st.just(0.0), st.floats(-1e6, 1e6),
                                                st.floats(-1e30, 1e30)),
                                      min_size=C, max_size=C)))
        # inv_std 0: a zero-std channel the caller neutralized; every value -> zero_point
        inv_std = np.array(draw(st.lists(st.one_of(st.floats(1e-6, 1e6), st.floats(1e-3, 1e3),
                                                   st.floats(1e-30, 1e30), st.just(0.0)),
                                         min_size=C, max_size=C)))
        scale = draw(st.one_of(st.floats(1e-3, 10.0), st.floats(1e-300, 1e-3),
                               st.floats(10.0, 1e300), st.just(0.0039215689)))
    zero_point = draw(st.one_of(st.integers(-128, 127), st.sampled_from([-128, -1, 0, 127])))
    row0 = draw(st.integers(0, 4))
    B = row0 + k + draw(st.integers(0, 3))
    out0 = np.random.default_rng(k).integers(-128, 128, (B, 1, W, C)).astype(np.int8)
    return ring, cap, starts, W, mean, inv_std, scale, zero_point, out0, row0


@SETTINGS
@given(normalize_case())
def test_normalize_quantize(case):
    ring, cap, starts, W, mean, inv_std, scale, zp, out0, row0 = case
    C = ring.shape[1]
    outs = {}
    for name, impl in (("numba", _jit), ("numpy", ref)):
        out = out0.copy()
        with np.errstate(over="ignore"):  # (x - mean) * inv_std / tiny scale -> +-inf -> clip
            impl.normalize_quantize(ring, cap, starts, W, mean, inv_std, scale, zp, out, row0)
        outs[name] = out
    assert_same(outs["numba"], outs["numpy"], "out numba vs numpy")
    # rows outside row0..row0+k are untouched
    k = len(starts)
    assert_same(outs["numpy"][:row0], out0[:row0], "rows before row0")
    assert_same(outs["numpy"][row0 + k:], out0[row0 + k:], "rows after row0+k")
    # the naive loops on as many windows as the budget allows
    kk = min(k, max(1, NAIVE_BUDGET // (W * C)))
    out = out0.copy()
    naive.normalize_quantize(ring, cap, starts[:kk], W, mean, inv_std, scale, zp, out, row0)
    assert_same(outs["numpy"][row0:row0 + kk], out[row0:row0 + kk], "out numpy vs naive")


def test_normalize_quantize_operation_order():
    """Values built to land within an ulp or two of a .5 rounding boundary, where another
    association of the same formula ((x-m)*(i/s), x*i/s-m*i/s, ...) rounds differently:
    only the contract's ((x - mean) * inv_std / scale + zero_point) reproduces these."""
    rng = np.random.default_rng(20240611)
    cap, W, C = 2, 2, 16
    starts = np.array([0, 5], np.int64)
    order_matters = 0
    for _ in range(40):
        s = float(10 ** rng.uniform(-3, 0))
        x = (rng.standard_normal(C) * 10).astype(np.float32)
        i = 10 ** rng.uniform(-1, 1, C)
        zp = int(rng.integers(-20, 21))
        t = (rng.integers(-100, 100, C) + 0.5) * s / i  # (x - m) * i / s close to n + 0.5
        m = x.astype(np.float64) - t
        xd = x.astype(np.float64)
        contract = ((xd - m) * i) / s + zp
        others = [(xd - m) * (i / s) + zp, ((xd - m) / s) * i + zp, (xd - m) * i * (1 / s) + zp,
                  xd * i / s - m * i / s + zp, (xd * i - m * i) / s + zp]
        want = np.clip(np.rint(contract), -128, 127).astype(np.int8)
        differs = [np.clip(np.rint(o), -128, 127) != want for o in others]
        order_matters += int(np.logical_or.reduce(differs).sum())
        ring = np.tile(x, (2 * cap, 1))
        for name, impl in IMPLS.items():
            out = np.zeros((2, 1, W, C), np.int8)
            impl.normalize_quantize(ring, cap, starts, W, m, i, s, zp, out, 0)
            assert (out == want).all(), name
    assert order_matters >= 40  # the construction really probes the operation order


def test_normalize_quantize_edges():
    """Hand-checked values: ties to even, clipping, inv_std 0, dtype extremes."""
    cap, W, C = 4, 4, 3
    vals = np.array([[0.5, 1.5, 2.5], [-0.5, -1.5, -2.5], [1e30, -1e30, F32.max],
                     [126.5, -128.5, 127.49]], np.float32)
    ring = np.concatenate([vals, vals])
    mean = np.zeros(C)
    inv_std = np.array([1.0, 1.0, 0.0])
    want = np.array([[0, 2, 0], [0, -2, 0], [127, -128, 0], [126, -128, 0]], np.int8)
    for impl in IMPLS.values():
        out = np.full((2, 1, W, C), 99, np.int8)
        impl.normalize_quantize(ring, cap, np.array([2**40 + 4], np.int64), W, mean, inv_std,
                                1.0, 0, out, 1)
        assert_same(out[1, 0], want, impl.__name__)
        assert (out[0] == 99).all()
    # zero_point is added before rounding: 0.5 + 3 = 3.5 -> 4 (even)
    for impl in IMPLS.values():
        out = np.zeros((1, 1, W, C), np.int8)
        impl.normalize_quantize(ring, cap, np.array([0], np.int64), W, mean, np.ones(C), 1.0, 3,
                                out, 0)
        assert out[0, 0, 0, 0] == 4 and out[0, 0, 0, 1] == 4 and out[0, 0, 0, 2] == 6


# ------------------------------------------------------------------ recon_error

@st.composite
def recon_case(draw):
    W = draw(st.integers(1, 128))
    C = draw(st.integers(1, 16))
    k = draw(st.integers(0, 40))
    B = k + draw(st.integers(0, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mode = draw(st.sampled_from(["random", "equal", "extremes", "close"]))
    inp = rng.integers(-128, 128, (B, 1, W, C)).astype(np.int8)
    if mode == "random":
        outq = rng.integers(-128, 128, (B, 1, W, C)).astype(np.int8)
    elif mode == "equal":
        outq = inp.copy()
    elif mode == "extremes":
        inp = rng.choice(np.array([-128, 127], np.int8), (B, 1, W, C))
        outq = rng.choice(np.array([-128, 127], np.int8), (B, 1, W, C))
    else:
        outq = np.clip(inp.astype(int) + rng.integers(-2, 3, inp.shape), -128, 127).astype(np.int8)
    scales = st.one_of(st.floats(1e-6, 10.0), st.sampled_from([2.0**-7, 0.1, 0.0039215689, 1.0]),
                       st.floats(1e-30, 1e-6))
    zps = st.one_of(st.integers(-128, 127), st.sampled_from([-128, 0, 127]))
    ch0 = rng.standard_normal((B, C)).astype(np.float32)
    sc0 = rng.standard_normal(B).astype(np.float32)
    return inp, draw(scales), draw(zps), outq, draw(scales), draw(zps), k, ch0, sc0


@SETTINGS
@given(recon_case())
def test_recon_error(case):
    inp, isc, izp, outq, osc, ozp, k, ch0, sc0 = case
    B, _, W, C = inp.shape
    res = {}
    for name, impl in (("numba", _jit), ("numpy", ref)):
        ch, sc = ch0.copy(), sc0.copy()
        impl.recon_error(inp, isc, izp, outq, osc, ozp, k, ch, sc)
        res[name] = ch, sc
    assert_same(res["numba"][0], res["numpy"][0], "ch_err numba vs numpy")
    assert_same(res["numba"][1], res["numpy"][1], "scores numba vs numpy")
    assert_same(res["numpy"][0][k:], ch0[k:], "ch_err rows >= k untouched")
    assert_same(res["numpy"][1][k:], sc0[k:], "scores >= k untouched")
    kk = min(k, max(1, NAIVE_BUDGET // (W * C)))
    ch, sc = ch0.copy(), sc0.copy()
    naive.recon_error(inp, isc, izp, outq, osc, ozp, kk, ch, sc)
    assert_same(res["numpy"][0][:kk], ch[:kk], "ch_err numpy vs naive")
    assert_same(res["numpy"][1][:kk], sc[:kk], "scores numpy vs naive")


def test_recon_error_hand_checked():
    inp = np.zeros((2, 1, 2, 2), np.int8)
    outq = np.zeros((2, 1, 2, 2), np.int8)
    inp[0, 0, :, 0] = [2, 4]        # (2-0)*0.5 = 1, (4-0)*0.5 = 2; outq (0-(-2))*0.25 = 0.5
    outq[0, 0, :, 1] = [-128, 127]  # inp 0 -> 0; outq -> (-126)*0.25, 129*0.25
    for impl in IMPLS.values():
        ch = np.full((2, 2), -1, np.float32)
        sc = np.full(2, -1, np.float32)
        impl.recon_error(inp, 0.5, 0, outq, 0.25, -2, 1, ch, sc)
        e0 = ((1 - 0.5) ** 2 + (2 - 0.5) ** 2) / 2
        e1 = ((0 - (-126 * 0.25)) ** 2 + (0 - 129 * 0.25) ** 2) / 2
        assert ch[0].tolist() == [np.float32(e0), np.float32(e1)]
        assert sc[0] == np.float32((float(np.float32(e0)) + float(np.float32(e1))) / 2)
        assert ch[1].tolist() == [-1, -1] and sc[1] == -1


# ------------------------------------------------------------------ window_stats

@st.composite
def stats_case(draw):
    W, C, cap = draw(sizes())
    ring = draw(f32_matrix(2 * cap, C))
    k = draw(st.integers(0, 40))
    starts = np.array(draw(st.lists(logical_positions(cap), min_size=k, max_size=k)),
                      dtype=np.int64)
    rows = k + draw(st.integers(0, 2))
    out0 = np.random.default_rng(k).standard_normal((rows, C, 6)).astype(np.float32)
    return ring, cap, starts, W, out0


@SETTINGS
@given(stats_case())
def test_window_stats(case):
    ring, cap, starts, W, out0 = case
    C = ring.shape[1]
    k = len(starts)
    res = {}
    for name, impl in (("numba", _jit), ("numpy", ref)):
        out = out0.copy()
        impl.window_stats(ring, cap, starts, W, out)
        res[name] = out
    assert_same(res["numba"], res["numpy"], "stats numba vs numpy")
    assert_same(res["numpy"][k:], out0[k:], "rows >= k untouched")
    assert np.isfinite(res["numpy"]).all()
    kk = min(k, max(1, NAIVE_BUDGET // (W * C)))
    out = out0.copy()
    naive.window_stats(ring, cap, starts[:kk], W, out)
    assert_same(res["numpy"][:kk], out[:kk], "stats numpy vs naive")


def test_window_stats_hand_checked():
    cap, W = 4, 4
    ring = np.zeros((8, 4), np.float32)
    ring[:4, 0] = [1, -1, 1, -1]      # mean 0, std 1, rms 1, peak 1, crest 1, kurt 1
    ring[:4, 1] = 5.0                  # constant: std 0 -> kurtosis 0
    ring[:4, 2] = 0.0                  # zeros: rms 0 -> crest 0
    ring[:4, 3] = -0.0                 # mean is -0.0
    ring[4:] = ring[:4]
    want = np.array([[0, 1, 1, 1, 1, 1], [5, 0, 5, 5, 1, 0], [0, 0, 0, 0, 0, 0],
                     [-0.0, 0, 0, 0, 0, 0]], np.float32)
    for impl in IMPLS.values():
        out = np.full((1, 4, 6), 7, np.float32)
        impl.window_stats(ring, cap, np.array([2**33], np.int64), W, out)
        assert_same(out[0], want, impl.__name__)


# ------------------------------------------------------------------ argument checks

@pytest.mark.parametrize("impl", [_jit, ref], ids=["numba", "numpy"])
def test_bad_arguments_raise(impl):
    cap, C, W = 8, 2, 4
    ring = np.zeros((2 * cap, C), np.float32)
    with pytest.raises(ValueError):
        impl.ring_append(ring, cap, 0, np.zeros((cap + 1, C), np.float32))
    with pytest.raises(ValueError):
        impl.ring_append(ring, cap, 0, np.zeros((2, C + 1), np.float32))
    with pytest.raises(ValueError):
        impl.ring_append(ring, cap + 1, 0, np.zeros((2, C), np.float32))
    starts = np.arange(3, dtype=np.int64)
    m, s = np.zeros(C), np.ones(C)
    out = np.zeros((3, 1, W, C), np.int8)
    with pytest.raises(ValueError):  # row0 + k > B
        impl.normalize_quantize(ring, cap, starts, W, m, s, 0.1, 0, out, 1)
    with pytest.raises(ValueError):  # W > cap
        impl.normalize_quantize(ring, cap, starts, cap + 1, m, s, 0.1, 0,
                                np.zeros((3, 1, cap + 1, C), np.int8), 0)
    with pytest.raises(ValueError):  # out's W differs
        impl.normalize_quantize(ring, cap, starts, W - 1, m, s, 0.1, 0, out, 0)
    with pytest.raises(ValueError):
        impl.normalize_quantize(ring, cap, starts, W, m, s, 0.0, 0, out, 0)
    with pytest.raises(ValueError):
        impl.window_stats(ring, cap, starts, cap + 1, np.zeros((3, C, 6), np.float32))
    with pytest.raises(ValueError):
        impl.window_stats(ring, cap, starts, W, np.zeros((2, C, 6), np.float32))
    with pytest.raises(ValueError):
        impl.recon_error(out, 0.1, 0, out, 0.1, 0, 4, np.zeros((4, C), np.float32),
                         np.zeros(4, np.float32))


# ------------------------------------------------------------------ package / backend

def test_package_exports_numba_kernels():
    if os.environ.get("EDGERT_NO_NUMBA") == "1":
        pytest.skip("EDGERT_NO_NUMBA=1 in this environment")
    import edgert.kernels as k
    assert k.BACKEND == "numba"
    for name in ("ring_append", "count_nonfinite", "normalize_quantize", "recon_error",
                 "window_stats"):
        assert getattr(k, name) is getattr(_jit, name)


def test_warmup_covers_bus_dtypes():
    """After warmup(), blocks of every bus dtype, writable or read-only (np.frombuffer),
    and the float kernels with Python scalars need no further compilation."""
    import edgert.kernels as k
    assert k.warmup() >= 0.0
    before = {f: len(getattr(_jit, f).signatures) for f in _jit.__all__}
    cap, C, W = 8, 3, 4
    ring = np.zeros((2 * cap, C), np.float32)
    for dt in BLOCK_DTYPES:
        raw = np.ones((5, C), dtype=dt).tobytes()
        ro = np.frombuffer(raw, dtype=dt).reshape(5, C)
        assert not ro.flags.writeable
        for b in (ro, ro.copy()):
            _jit.ring_append(ring, cap, 2**33, b)
            _jit.count_nonfinite(b)
    starts = np.array([2**33], np.int64)
    q = np.zeros((2, 1, W, C), np.int8)
    _jit.normalize_quantize(ring, cap, starts, W, np.zeros(C), np.ones(C), 0.03, -1, q, 1)
    _jit.recon_error(q, 0.03, -1, q, 0.03, -1, 2, np.zeros((2, C), np.float32),
                     np.zeros(2, np.float32))
    stats = np.zeros((3, C, 6), np.float32)
    _jit.window_stats(ring, cap, starts, W, stats[1:2])
    after = {f: len(getattr(_jit, f).signatures) for f in _jit.__all__}
    assert after == before


_FALLBACK_PROBE = r"""
import json, sys, warnings
if sys.argv[1] == "block":
    sys.modules["numba"] = None  # makes `import numba` raise ImportError
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import edgert.kernels as k
    import edgert.kernels  # a second import must not warn again
    from edgert.kernels import ref
    k.warmup()
print(json.dumps({
    "backend": k.BACKEND,
    "same": all(getattr(k, f) is getattr(ref, f) for f in ref.__all__),
    "warnings": [(w.category.__name__, str(w.message)) for w in caught],
}))
"""


@pytest.mark.parametrize("how", ["env", "block"])
def test_without_numba_falls_back_with_one_warning(how):
    """EDGERT_NO_NUMBA=1, or numba failing to import: numpy kernels and exactly one warning."""
    env = dict(os.environ)
    env.pop("EDGERT_NO_NUMBA", None)
    if how == "env":
        env["EDGERT_NO_NUMBA"] = "1"
    proc = subprocess.run([sys.executable, "-c", _FALLBACK_PROBE, how], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["backend"] == "numpy"
    assert got["same"]
    assert len(got["warnings"]) == 1, got["warnings"]
    cat, msg = got["warnings"][0]
    assert cat == "RuntimeWarning"
    assert "numba is unavailable" in msg and "numpy kernels" in msg and "slower" in msg
    assert ("EDGERT_NO_NUMBA=1" in msg) if how == "env" else ("import failed" in msg)


@st.composite
def ingest_cases(draw):
    C = draw(st.integers(1, 8))
    W = draw(st.integers(1, 64))
    H = draw(st.integers(1, 80))
    cap = draw(st.integers(2 * W, 2 * W + 300))
    B = draw(st.integers(1, 12))
    dtype = draw(st.sampled_from(["<f4", "<f8", "<i2", "<i4", "<u2"]))
    sizes = draw(st.lists(st.integers(0, 3 * cap), min_size=1, max_size=6))
    seed = draw(st.integers(0, 2**32 - 1))
    pos0 = draw(st.sampled_from([0, 5, 2**31 + 7, 2**33]))
    return C, W, H, cap, B, dtype, sizes, seed, pos0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ingest_cases())
def test_ingest_fused_step_agrees(case):
    """numba == numpy == naive for the fused append+cut step, driven over whole streams with
    small batches (so calls stop at max_rows and resume), and the windows equal slices of the
    stream."""
    C, W, H, cap, B, dtype, sizes, seed, pos0 = case
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=C)
    inv_std = rng.uniform(0.1, 3, size=C)
    scale, zp = float(rng.uniform(0.01, 0.5)), int(rng.integers(-5, 5))
    impls = {"jit": _jit.ingest, "ref": ref.ingest, "naive": naive.ingest}
    results = {}
    blocks = [(rng.normal(scale=50, size=(n, C))).astype(dtype) for n in sizes]
    for name, fn in impls.items():
        ring = np.zeros((2 * cap, C), np.float32)
        pos, nxt = pos0, pos0
        out = np.zeros((B, 1, W, C), np.int8)
        stats = np.zeros((B, C, 6), np.float32)
        t_start = np.zeros(B, np.int64)
        got_q, got_s, got_t = [], [], []
        for blk in blocks:
            i = 0
            while True:
                pos, nxt, k, used = fn(ring, cap, pos, nxt, blk[i:], W, H, mean, inv_std, scale, zp,
                                       out, stats, t_start, 0, B, 10**18, 1000)
                i += used
                got_q.extend(out[:k].copy())
                got_s.extend(stats[:k].copy())
                got_t.extend(t_start[:k].tolist())
                if i >= blk.shape[0] and nxt + W > pos:
                    break
        results[name] = (np.array(got_q), np.array(got_s), got_t, pos, nxt)
    for name in ("ref", "naive"):
        a, b = results["jit"], results[name]
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1].view(np.uint32), b[1].view(np.uint32))
        assert a[2:] == b[2:], name
    stream = np.concatenate([b.astype(np.float32) for b in blocks]) if blocks else np.zeros((0, C))
    starts = np.arange(0, stream.shape[0] - W + 1, H)
    assert len(results["jit"][2]) == starts.size
    assert results["jit"][2] == [10**18 + (pos0 + s) * 1000 for s in starts]
    for j, s in enumerate(starts[:50]):
        win = stream[s:s + W].astype(np.float64)
        q = np.clip(np.rint((win - mean) * inv_std / scale + zp), -128, 127).astype(np.int8)
        assert np.array_equal(results["jit"][0][j, 0], q)
