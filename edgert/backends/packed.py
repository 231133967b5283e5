"""Static-shape variants that carry B windows per invoke as ``[1, B, W, C]`` ("packed").

The Edge TPU cannot batch (only the innermost three dimensions may exceed 1), so a model for
it is exported with its windows laid out as rows: input ``[1, B, W, C]``, convolutions with
``(1, k)`` kernels keep the rows independent, output ``[1, B, W, C]``. A ``b1`` variant
(``[1, 1, W, C]``) is the same thing with B = 1.

`PackedBackend` presents the usual backend protocol on top of one or more such interpreters
(one per device): ``input_buffer()`` is int8 ``[max_batch, 1, W, C]``, ``run(k)`` returns the
output rows ``[k, 1, W, C]``. With one interpreter and ``max_batch <= B`` the buffer *is* the
interpreter's input tensor viewed as ``[B, 1, W, C]`` (no copy at all); otherwise each invoke
copies up to B rows in and out (a memcpy of B·W·C bytes each way) and the invokes go to the
interpreters round-robin. Rows past k in the last invoke of a batch are zero-padded.
"""

from __future__ import annotations

import numpy as np

from ..models import read_variant
from .base import BackendError


def model_source(model, variant) -> bytes:
    """What an interpreter should load: the variant's bytes, checked against the manifest's
    sha256 (`edgert.models.read_variant`)."""
    try:
        return read_variant(model, variant)
    except Exception as exc:
        raise BackendError(str(exc), cause="no variant") from None


def packed_rows(model, variant) -> int:
    """B of a static ``[1, B, W, C]`` variant (1 for ``b1``); BackendError if it is not one.

    The layout and rows come from the manifest as `edgert.models.load` read it
    (``variant.layout``, ``variant.rows``; a compiled variant inherits its source's), and the
    loader has checked a packed input against them. The output is ``[1, B, …]`` (an
    autoencoder's ``[1, B, W, C]``, a classifier's ``[1, B, classes]``), or anything ``[1, …]``
    when B = 1.
    """
    shape = tuple(variant.input.shape)
    W, C = model.window, model.n_channels
    if len(shape) != 4 or shape[0] != 1 or shape[2:] != (W, C) or shape[1] < 1:
        raise BackendError(f"{model.dir}/manifest.json: variant {variant.name!r} input {list(shape)} is not "
                           f"[1, B, {W}, {C}] (a b1 or packed layout)", cause="no variant")
    rows = int(shape[1])
    if rows > 1 and variant.layout != "packed":
        raise BackendError(f"{model.dir}/manifest.json: variant {variant.name!r} has {rows} rows but "
                           f"layout {variant.layout!r} (expected 'packed')", cause="no variant")
    if variant.layout == "packed" and variant.rows != rows:
        raise BackendError(f"{model.dir}/manifest.json: variant {variant.name!r} says rows {variant.rows} "
                           f"but its input is {list(shape)}", cause="no variant")
    out = tuple(variant.output.shape)
    if not out or out[0] != 1 or (rows > 1 and (len(out) < 2 or out[1] != rows)):
        raise BackendError(f"{model.dir}/manifest.json: variant {variant.name!r} output {list(out)} is not "
                           f"[1, {rows}, …] like its input {list(shape)}", cause="no variant")
    return rows


def row_shape(variant, rows: int) -> tuple:
    """Shape of one window's output row as the protocol returns it (``run(k)`` → ``[k, *row]``).

    b1: the output minus its batch axis. Packed: the output minus ``[1, B]``, with the ``1`` of
    ``[…, 1, W, C]`` put back for a 4-D (autoencoder) output so rows look like the CPU's.
    """
    out = tuple(variant.output.shape)
    if rows == 1:
        return out[1:]
    return (1, *out[2:]) if len(out) == 4 else out[2:]


class PackedBackend:
    """B windows per invoke on static ``[1, B, W, C]`` interpreters, round-robin over several.

    Args:
      model: the `edgert.models.Model`.
      variant: a packed (or b1) `edgert.models.Variant`.
      max_batch: rows of the input buffer.
      slots: one `edgert.backends.cpu._Slot` per device, built on `variant` (batch 1, static).
      name: what runs (``backend.name``).
      runtime: runtime name for messages.
    """

    def __init__(self, model, variant, max_batch: int, slots: list, name: str, runtime: str):
        if max_batch < 1:
            raise BackendError(f"max_batch must be >= 1, got {max_batch}")
        if not slots:
            raise BackendError("no interpreter to run on")
        self.model = model
        self.variant = variant
        self.rows = packed_rows(model, variant)
        self.max_batch = int(max_batch)
        self.name = name
        self.runtime = runtime
        self._slots = list(slots)
        self._n = len(self._slots)
        self._rr = 0
        B, W, C = self.rows, model.window, model.n_channels
        for s in self._slots:
            if tuple(s.inp.shape) != (1, B, W, C):
                raise BackendError(f"{variant.path}: interpreter input {list(s.inp.shape)} != [1, {B}, {W}, {C}]")
        self._row = row_shape(variant, B)
        self.invokes = 0  # total invokes (B windows or fewer each)
        self.invokes_per_slot = [0] * self._n
        self.zero_copy = self._n == 1 and self.max_batch <= B
        if self.zero_copy:
            s = self._slots[0]
            self._in = s.inp.reshape(B, 1, W, C)[: self.max_batch]
            if not np.shares_memory(self._in, s.inp):  # pragma: no cover - reshape of a contiguous view
                raise BackendError(f"{variant.path}: cannot view the input tensor as rows")
            self._out = None
        else:
            self._in = np.zeros((self.max_batch, 1, W, C), dtype=np.int8)
            self._out = np.zeros((self.max_batch, *self._row), dtype=np.dtype(variant.output.dtype))
        self._self_test()

    # -- protocol ---------------------------------------------------------------
    def input_buffer(self) -> np.ndarray:
        return self._in

    def run(self, k: int) -> np.ndarray:
        B = self.rows
        if self.zero_copy:
            s = self._slots[0]
            if k < B:
                s.inp[0, k:] = 0  # pad the partial batch
            out = s.invoke()
            self.invokes += 1
            self.invokes_per_slot[0] += 1
            return out.reshape(B, *self._row)[:k]
        inp, res = self._in, self._out
        j = 0
        while j < k:
            m = min(B, k - j)
            r = self._rr
            s = self._slots[r]
            self._rr = (r + 1) % self._n
            s.inp[0, :m] = inp[j:j + m, 0]
            if m < B:
                s.inp[0, m:] = 0  # pad the partial batch
            out = s.invoke()
            res[j:j + m] = out.reshape(B, *self._row)[:m]
            self.invokes += 1
            self.invokes_per_slot[r] += 1
            j += m
        return res[:k]

    def close(self) -> None:
        for s in self._slots:
            s.inp = s.out = None
        self._slots = []
        self._in = self._out = None

    # -- checks -------------------------------------------------------------------
    def _self_test(self) -> None:
        """Rows must be independent (a row's result does not depend on its neighbours or its
        position) and every interpreter must give the same rows; the input must stay put."""
        B = self.rows
        rng = np.random.default_rng(0)
        x = rng.integers(-100, 100, size=(B, *self._slots[0].inp.shape[2:]), dtype=np.int8)
        ref = None
        for i, s in enumerate(self._slots):
            s.inp[0] = x
            a = s.invoke().reshape(B, *self._row).copy()
            s.inp[0] = x[::-1]
            b = s.invoke().reshape(B, *self._row)[::-1].copy()
            if not np.array_equal(a, b):
                worst = int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())
                raise BackendError(f"{self.variant.path}: rows of the packed layout are not independent "
                                   f"(reversing the {B} rows changes results by up to {worst} LSB)")
            if ref is None:
                ref = a
            elif not np.array_equal(a, ref):
                worst = int(np.abs(a.astype(np.int32) - ref.astype(np.int32)).max())
                raise BackendError(f"{self.variant.path}: interpreter {i} differs from interpreter 0 by up "
                                   f"to {worst} LSB on the same rows")
            s.inp[0] = 0
            if s.input_moved():
                raise BackendError(f"{self.variant.path}: {self.runtime} moved the input tensor between "
                                   f"invokes; cannot write windows in place")
        self._rr = 0
