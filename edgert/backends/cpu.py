"""CPU backend: the model's dynamic-batch int8 variant on LiteRT (XNNPACK) or tflite-runtime.

One interpreter is allocated per batch size (1, 2, 4, ... max_batch) at start-up so the hot
path never calls ``resize_tensor_input``: a partial batch of k windows runs on the smallest
interpreter that holds k, and the rows past k are ignored.
"""

from __future__ import annotations

import numpy as np

from .. import tflite
from ..models import read_variant
from .base import BackendError


def batch_sizes(max_batch: int) -> list[int]:
    """Powers of two below `max_batch`, then `max_batch` itself."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    sizes.append(max_batch)
    return sizes


class _Slot:
    """One interpreter allocated for a fixed batch size, with views of its I/O tensors."""

    def __init__(self, Interpreter, path, batch: int, num_threads: int, dynamic: bool,
                 delegates=None):
        """`path`: the model file, or its bytes (preferred: see `edgert.models.read_variant`)."""
        self.batch = batch
        extra = {"experimental_delegates": list(delegates)} if delegates else {}
        if isinstance(path, (bytes, bytearray)):
            self._content = bytes(path)  # the interpreter keeps a pointer into this buffer
            extra["model_content"] = self._content
        else:
            extra["model_path"] = path
        self.interp = Interpreter(num_threads=num_threads, **extra)
        inp = self.interp.get_input_details()[0]
        if dynamic and inp["shape"][0] != batch:
            self.interp.resize_tensor_input(inp["index"], [batch, *inp["shape"][1:]], strict=True)
        self.interp.allocate_tensors()
        self.in_index = inp["index"]
        self.out_index = self.interp.get_output_details()[0]["index"]
        # Run once before taking any view: the runtime applies its default delegate (XNNPACK)
        # lazily at the first invoke and re-plans the tensor arena then, moving the input.
        self.interp.invoke()
        # From here on the input view is held for the interpreter's lifetime: nothing resizes
        # tensors any more, so the arena stays put (the self-test checks it). The public
        # invoke() refuses to run while numpy views exist (its guard against resizes), so we
        # call the underlying Invoke() directly. The output of a dynamic-batch model is a
        # dynamic tensor the runtime may reallocate, so its view is taken afresh per invoke.
        self.inp = self.interp.tensor(self.in_index)()
        raw = getattr(self.interp, "_interpreter", None)
        self._invoke = raw.Invoke if raw is not None and hasattr(raw, "Invoke") else None
        self._in_fn = self.interp.tensor(self.in_index)
        self._out_fn = self.interp.tensor(self.out_index)
        self.out = None
        self.invoke()
        if self.out.shape[0] != batch:
            raise BackendError(f"{path}: output batch is {self.out.shape[0]} after resizing the "
                               f"input to {batch} (this runtime cannot batch this model)")

    def invoke(self) -> np.ndarray:
        self.out = None
        if self._invoke is not None:
            self._invoke()
        else:  # pragma: no cover - runtimes without the private handle
            inp, self.inp = self.inp, None
            self.interp.invoke()
            self.inp = inp
        self.out = self._out_fn()
        return self.out

    def input_moved(self) -> bool:
        return self._in_fn().ctypes.data != self.inp.ctypes.data


class DynamicBatchBackend:
    """Runs a dynamic-batch variant: one interpreter per batch size, rows written in place.

    Shared by `CpuBackend` and `edgert.backends.delegate.DelegateBackend` (which passes
    ``make_delegates``: a callable returning the delegate list for one more interpreter).
    """

    def __init__(self, model, variant, max_batch: int, num_threads: int, Interpreter, runtime: str,
                 name: str, make_delegates=None):
        if max_batch < 1:
            raise BackendError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model
        self.variant = variant
        self.max_batch = int(max_batch)
        self.name = name
        self.runtime = runtime
        try:
            path = read_variant(model, variant)  # bytes, verified: see read_variant
        except Exception as exc:
            raise BackendError(str(exc)) from None
        self._slots = [_Slot(Interpreter, path, b, num_threads, dynamic=variant.batch is None,
                             delegates=make_delegates() if make_delegates else None)
                       for b in batch_sizes(self.max_batch)]
        self._by_k = np.empty(self.max_batch + 1, dtype=np.int64)
        j = 0
        for k in range(self.max_batch + 1):
            while self._slots[j].batch < k:
                j += 1
            self._by_k[k] = j
        self._full = self._slots[-1]
        self._self_test()

    def input_buffer(self) -> np.ndarray:
        return self._full.inp

    def run(self, k: int) -> np.ndarray:
        slot = self._slots[self._by_k[k]]
        if slot is not self._full:
            slot.inp[:k] = self._full.inp[:k]
        return slot.invoke()

    def close(self) -> None:
        for s in self._slots:
            s.inp = s.out = None
        self._slots = []

    def _self_test(self) -> None:
        """Every batch size must give the same rows as batch 1 (some runtimes silently don't)."""
        rng = np.random.default_rng(0)
        x = rng.integers(-100, 100, size=self._full.inp.shape, dtype=np.int8)
        self._full.inp[:] = x
        ref = self.run(self.max_batch).copy()
        for slot in self._slots:
            k = slot.batch
            self._full.inp[:k] = x[:k]
            got = self.run(k)[:k]
            if not np.array_equal(got, ref[:k]):
                worst = int(np.abs(got.astype(np.int32) - ref[:k].astype(np.int32)).max())
                raise BackendError(f"{self.variant.path}: batch {k} differs from batch "
                                   f"{self.max_batch} by up to {worst} LSB on {self.runtime}")
        self._full.inp[:] = 0
        moved = [s.batch for s in self._slots if s.input_moved()]
        if moved:
            raise BackendError(f"{self.variant.path}: {self.runtime} moved the input tensor between "
                               f"invokes (batch sizes {moved}); cannot write windows in place")


class CpuBackend(DynamicBatchBackend):
    """Runs a model's ``dynamic`` variant on the CPU.

    Args:
      model: a loaded `edgert.models.Model`.
      max_batch: largest batch (rows of the input buffer).
      num_threads: interpreter threads; 1 is fastest for these small models at low batch.
    """

    def __init__(self, model, max_batch: int = 32, num_threads: int = 1):
        try:
            Interpreter, _, runtime, version = tflite.find()
        except ImportError as exc:
            raise BackendError(str(exc), cause="runtime absent") from None
        variant = model.variants.get("dynamic")
        if variant is None:
            raise BackendError(f"{model.dir}/manifest.json: model {model.name!r} has no 'dynamic' "
                               f"variant for the CPU", cause="no variant")
        super().__init__(model, variant, max_batch, num_threads, Interpreter, runtime,
                         f"cpu:{runtime}-{version}")
