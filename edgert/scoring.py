"""Scores from model outputs, and the thresholds that turn scores into decisions.

Every threshold implements one small protocol (like River's ``learn_one``/``score_one``, but
per batch): ``values(sensor_idx) -> thresholds`` and ``learn(sensor_idx, scores, flags)``,
so adaptive thresholds swap in without touching the daemon.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from . import kernels


class Threshold(Protocol):
    def values(self, sensor_idx: np.ndarray) -> np.ndarray:
        """Per-row thresholds for windows of the given sensors."""

    def learn(self, sensor_idx: np.ndarray, scores: np.ndarray, flags: np.ndarray) -> None:
        """Observe a batch's scores and decisions."""

    def forget(self, sensor: int) -> None:
        """Drop what was learned for a sensor slot (the sensor was evicted)."""


class FixedThreshold:
    """The manifest's calibrated threshold, the same for every sensor."""

    def __init__(self, value: float):
        self.value = float(value)
        self._buf = np.full(1, self.value, dtype=np.float32)

    def values(self, sensor_idx: np.ndarray) -> np.ndarray:
        if self._buf.size < sensor_idx.size:
            self._buf = np.full(sensor_idx.size, self.value, dtype=np.float32)
        return self._buf[:sensor_idx.size]

    def learn(self, sensor_idx, scores, flags) -> None:
        pass

    def forget(self, sensor: int) -> None:
        pass


class ReconstructionScorer:
    """Autoencoder score: mean over channels of the per-channel MSE in normalized units.

    Both the input tensor (what the model saw) and the output tensor are dequantized, so the
    score is computed from exactly what ran, int8 rounding included.
    """

    def __init__(self, model, max_batch: int, variant=None):
        v = variant or (model.variants["dynamic"] if "dynamic" in model.variants else next(iter(model.variants.values())))
        self.in_scale, self.in_zp = float(v.input.scale), int(v.input.zero_point)
        self.out_scale, self.out_zp = float(v.output.scale), int(v.output.zero_point)
        self.ch_err = np.zeros((max_batch, model.n_channels), dtype=np.float32)
        self.scores = np.zeros(max_batch, dtype=np.float32)

    def score(self, inp: np.ndarray, out: np.ndarray, k: int):
        """Return (scores[k], ch_err[k, C]) views for the first k rows."""
        # The output may come from a smaller interpreter than the input buffer: compare rows [0, k).
        kernels.recon_error(inp[:k], self.in_scale, self.in_zp, out[:k], self.out_scale, self.out_zp,
                            k, self.ch_err, self.scores)
        return self.scores[:k], self.ch_err[:k]


def channel_shares(ch_err: np.ndarray) -> np.ndarray:
    """Each channel's share of a window's reconstruction error (rows sum to 1)."""
    total = ch_err.sum(axis=-1, keepdims=True)
    return np.divide(ch_err, total, out=np.zeros_like(ch_err), where=total > 0)


class ClassScorer:
    """Classifier output → (class index, probability) per window.

    The int8 output rows are dequantized; a model whose manifest says ``"output": "logits"``
    (or whose dequantized rows are not probabilities) gets a softmax.
    """

    def __init__(self, model, max_batch: int, variant=None):
        v = variant or (model.variants["dynamic"] if "dynamic" in model.variants else next(iter(model.variants.values())))
        self.scale, self.zp = float(v.output.scale), int(v.output.zero_point)
        self.logits = model.manifest.get("output") == "logits"
        self.names = list(model.class_names)
        self.n = len(self.names)

    def classify(self, out: np.ndarray, k: int):
        """Return (class index int64[k], probability float32[k])."""
        x = (out[:k].reshape(k, -1)[:, :self.n].astype(np.float32) - self.zp) * self.scale
        if self.logits or not (x.min() >= -1e-3 and np.allclose(x.sum(axis=1), 1.0, atol=0.05)):
            x = np.exp(x - x.max(axis=1, keepdims=True))
            x /= x.sum(axis=1, keepdims=True)
        idx = x.argmax(axis=1)
        return idx, x[np.arange(k), idx]
