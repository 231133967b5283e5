"""The backend protocol every inference backend implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


class BackendError(RuntimeError):
    """A backend that cannot run here; the message says why.

    Attributes:
      cause: a short classification when one is known ("library absent", "no device",
        "no compiled variant", "version mismatch", "delegate crashed", "delegate failed",
        "probe timed out"), else None.
      details: extra facts for reports (versions, signal, stage, stderr tail).
    """

    def __init__(self, message: str, cause: str | None = None, details: dict | None = None):
        super().__init__(message)
        self.cause = cause
        self.details = details or {}


@runtime_checkable
class Backend(Protocol):
    """What the daemon needs from something that runs a model.

    Attributes:
      name: what actually runs, e.g. "cpu:ai-edge-litert-2.3.0" (shown in stats and events).
      max_batch: rows of `input_buffer()`.

    `edgert.backends.create` also sets ``fallbacks`` on the backend it returns: a list of
    ``{"backend": spec, "cause": message}`` for every backend of the chain that could not run.
    """

    name: str
    max_batch: int

    def input_buffer(self) -> np.ndarray:
        """The int8 [max_batch, 1, W, C] array that windows are quantized into, in place."""

    def run(self, k: int) -> np.ndarray:
        """Run rows [0, k) of the input buffer; return the output rows (a view, valid until the next run)."""

    def close(self) -> None:
        """Release interpreters and devices."""
