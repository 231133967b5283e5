"""Inference backends: one small protocol, so the daemon never cares what runs the model.

A backend is made for a `edgert.models.Model` and exposes (see `base.Backend`):
``name``, ``max_batch``, ``input_buffer()`` (the int8 [max_batch, 1, W, C] array the kernels
write windows into), ``run(k)`` (run the first k rows, return the int8 output rows) and
``close()``. `cpu` is LiteRT/tflite-runtime on the CPU; the Edge TPU backend plugs in here.
"""

from __future__ import annotations

from .base import Backend, BackendError
from .cpu import CpuBackend


def create(kind: str, model, max_batch: int = 32, num_threads: int = 1) -> Backend:
    """Build the backend named by `kind` ("auto" or "cpu") for `model`.

    Returns:
      a ready `Backend`; its ``name`` says what actually runs.
    Raises:
      BackendError when the requested backend cannot run here.
    """
    if kind in ("auto", "cpu"):
        return CpuBackend(model, max_batch=max_batch, num_threads=num_threads)
    raise BackendError(f"unknown backend {kind!r} (available: auto, cpu)")


__all__ = ["Backend", "BackendError", "CpuBackend", "create"]
