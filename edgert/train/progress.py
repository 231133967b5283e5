"""One-line training progress bars on stderr (`Progress`)."""

from __future__ import annotations

import sys
import time

from .architectures import load_tf


class Progress:
    """A one-line progress bar per training, on stderr: ``label [#####-----] 12/150 loss …``."""

    def __init__(self, label: str, total: int, stream=None, width: int = 30):
        self.label, self.total, self.width = label, max(int(total), 1), width
        self.stream = stream if stream is not None else sys.stderr
        self.t0 = time.time()

    def update(self, done: int, loss: float | None = None) -> None:
        k = int(self.width * done / self.total)
        bar = "#" * k + "-" * (self.width - k)
        extra = "" if loss is None else f" loss {loss:.5g}"
        end = "\n" if done >= self.total else ""
        self.stream.write(f"\r  {self.label} [{bar}] epoch {done}/{self.total}{extra} "
                          f"{time.time() - self.t0:.0f}s{end}")
        self.stream.flush()

    def keras_callback(self):
        tf = load_tf()
        prog = self

        class _CB(tf.keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                prog.update(epoch + 1, (logs or {}).get("loss"))

        return _CB()
