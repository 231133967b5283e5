"""Dynamic batching with Triton's semantics.

Windows are quantized straight into the backend's input tensor, row after row; a batch goes
when it holds `max_batch` windows or when its oldest window has waited `max_delay_us` since
the message that completed it was received, whichever comes first. Per-row metadata lives in
preallocated arrays, so committing k windows is a few slice assignments.
"""

from __future__ import annotations

import time

import numpy as np


class Batcher:
    """Collects windows for one backend and hands full (or due) batches to `sink`.

    Args:
      backend: an `edgert.backends.Backend`; its input buffer is filled in place.
      model: the `edgert.models.Model` (normalization, quantization, channels).
      sink: ``callable(batcher, k, reason)`` called with the batch; it must be done with the
        rows before it returns (they are reused).
      max_batch: rows per batch (<= backend.max_batch).
      max_delay_us: longest a window waits for company.
    """

    def __init__(self, backend, model, sink, max_batch: int = 32, max_delay_us: int = 1000):
        self.requested_batch = int(max_batch)
        self.max_delay_ns = int(max_delay_us) * 1000
        self.sink = sink
        self.rebind(backend, model)
        C = model.n_channels
        B = self.max_batch
        self.sensor_idx = np.zeros(B, dtype=np.int32)
        self.t_start = np.zeros(B, dtype=np.int64)  # ns, first sample of the window
        self.seq = np.zeros(B, dtype=np.int64)
        self.t_recv = np.zeros(B, dtype=np.int64)  # perf_counter_ns at receipt
        self.t_last = np.zeros(B, dtype=np.int64)  # ns, sensor time of the message's last sample
        self.stats = np.zeros((B, C, 6), dtype=np.float32)
        # Further models that see the same windows (a classifier beside the autoencoder): each
        # gets the window quantized with its own normalization into its own input tensor.
        self.extra: list[ModelInput] = []
        self.n = 0
        self.batches = 0
        self.reasons = {"full": 0, "deadline": 0, "flush": 0}

    def rebind(self, backend, model) -> None:
        """Quantize into `backend`'s input for `model` from now on (call only when empty)."""
        if getattr(self, "n", 0):
            raise RuntimeError("rebind with windows pending: flush first")
        self.backend = backend
        self.buf = backend.input_buffer()
        self.max_batch = min(self.requested_batch, backend.max_batch)
        spec = run_variant(backend, model).input
        self.in_scale = float(spec.scale)
        self.in_zp = int(spec.zero_point)
        self.mean = np.ascontiguousarray(model.mean, dtype=np.float64)
        self.inv_std = np.ascontiguousarray(model.inv_std, dtype=np.float64)

    def add_input(self, backend, model) -> "ModelInput":
        """Also quantize every window into `backend`'s input for `model` (same W, H, channels)."""
        mi = ModelInput(backend, model)
        self.extra.append(mi)
        return mi

    @property
    def free(self) -> int:
        return self.max_batch - self.n

    def commit_rows(self, k: int, sensor_index: int, seq: int, t_recv: int, t_last: int = 0) -> None:
        """Record metadata of the k rows the kernels just wrote at ``self.n`` (their t_start
        included); send the batch if it is full.

        Args:
          t_last: sensor time (ns) of the last sample of the message that completed the rows,
            for the queueing delay (0: unknown).
        """
        a, b = self.n, self.n + k
        self.sensor_idx[a:b] = sensor_index
        self.seq[a:b] = seq
        self.t_recv[a:b] = t_recv
        self.t_last[a:b] = t_last
        self.n = b
        if b >= self.max_batch:
            self.flush("full")

    def deadline_ns(self) -> int | None:
        """perf_counter_ns when the pending batch is due, or None when empty."""
        if self.n == 0:
            return None
        return int(self.t_recv[0]) + self.max_delay_ns

    def poll(self, now_ns: int | None = None) -> bool:
        """Send the pending batch if its oldest window is due; True if one went."""
        if self.n and (now_ns or time.perf_counter_ns()) >= self.t_recv[0] + self.max_delay_ns:
            self.flush("deadline")
            return True
        return False

    def flush(self, reason: str = "flush") -> None:
        """Send whatever is pending now."""
        k = self.n
        if k == 0:
            return
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        self.batches += 1
        try:
            self.sink(self, k, reason)
        finally:
            self.n = 0


class ModelInput:
    """Where and how a second model's copy of each window is quantized."""

    def __init__(self, backend, model):
        self.backend = backend
        self.model = model
        self.buf = backend.input_buffer()
        spec = run_variant(backend, model).input
        self.in_scale = float(spec.scale)
        self.in_zp = int(spec.zero_point)
        self.mean = np.ascontiguousarray(model.mean, dtype=np.float64)
        self.inv_std = np.ascontiguousarray(model.inv_std, dtype=np.float64)


def run_variant(backend, model):
    """The manifest variant `backend` runs (its tensors' quantization is what counts)."""
    v = getattr(backend, "variant", None)
    if v is not None:
        return v
    return model.variants["dynamic"] if "dynamic" in model.variants else next(iter(model.variants.values()))
