"""The backend protocol every inference backend implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


class BackendError(RuntimeError):
    """A backend that cannot run here; the message says why."""


@runtime_checkable
class Backend(Protocol):
    """What the daemon needs from something that runs a model.

    Attributes:
      name: what actually runs, e.g. "cpu:ai-edge-litert-2.3.0" (shown in stats and events).
      max_batch: rows of `input_buffer()`.
    """

    name: str
    max_batch: int

    def input_buffer(self) -> np.ndarray:
        """The int8 [max_batch, 1, W, C] array that windows are quantized into, in place."""

    def run(self, k: int) -> np.ndarray:
        """Run rows [0, k) of the input buffer; return the output rows (a view, valid until the next run)."""

    def close(self) -> None:
        """Release interpreters and devices."""
