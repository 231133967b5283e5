"""Checks a candidate model before the daemon hot-swaps it in (``Daemon.check_model``).

A manifest that loads and verifies (sha256, tensors) can still be wrong for the plant: a
threshold of 1e9 turns detection off, one of 1e-9 floods the event bus with alarms, a broken
normalization makes every window an anomaly. ``validate_candidate`` refuses such a candidate
with the cause; the daemon then publishes a ``model`` event with state "refused" and the
running model keeps running. Gates:

1. threshold: within ``THRESHOLD_FACTOR`` of the running model's, both ways (a recalibration
   moves a threshold by tens of percent; ``edgert retrain`` moved it 0.2-0.9x here);
2. for a model of the ITSC channels (ia, ib, ic), scored through the candidate's own backend
   (the interpreter that will run, with the candidate's normalization and quantization):

   * the shipped healthy ITSC recordings: at most ``MAX_NORMAL_FLAGGED`` of their windows
     above the candidate's threshold;
   * the same windows with the faults ``edgert retrain`` injects (``retrain.inject``:
     imbalance, offset, spike, sized from the healthy data's own statistics), and the shipped
     ITSC fault recordings (``retrain.itsc_fault_windows``): at least ``MIN_FAULT_DETECTED``
     of them above it, each pooled over its kinds.

   Models of other channels get gate 1 only: edgert ships no windows of their sensors.

These are absolute sanity gates for a swap, not ``edgert retrain``'s comparison with the
running model (that needs the running model's interpreter, which is busy serving). The
shipped motor-ae passes them with margins (0 % of healthy windows flagged; injected faults
99 %, ITSC faults 96 % detected); at 4x its threshold it still passes (55 %, 76 %).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

THRESHOLD_FACTOR = 4.0  # a candidate threshold must lie in [running / F, running * F]
MAX_NORMAL_FLAGGED = 0.25  # of the healthy windows, at most this fraction above the threshold
MIN_FAULT_DETECTED = 0.5  # of the fault windows (pooled per family), at least this fraction
ITSC_CHANNELS = ["ia", "ib", "ic"]


class CandidateError(ValueError):
    """A candidate model refused for a swap; the message names the manifest and the cause."""


@lru_cache(maxsize=4)
def healthy_windows(window: int, hop: int) -> np.ndarray:
    """Raw windows ``[n, W, C]`` of the shipped healthy ITSC recordings (read-only, cached)."""
    from .data import itsc_class, itsc_names, itsc_recording
    from .train import make_windows

    w = np.concatenate([make_windows(itsc_recording(n), window, hop) for n in itsc_names()
                        if itsc_class(n) == "SC_HLT"])
    w.setflags(write=False)
    return w


def backend_scores(model, backend, windows: np.ndarray) -> np.ndarray:
    """Reconstruction scores of raw windows ``[n, W, C]`` as the daemon computes them: the
    same quantization kernel into the backend's input buffer, ``backend.run``, the same error
    kernel. Uses (overwrites) the backend's input buffer: only for a backend not serving yet.

    Returns float32 [n].
    """
    from .runtime import Runner

    runner = Runner(model, backend)  # the scoring core's quantize -> invoke -> error, on this backend
    B = runner.max_batch
    n, W, C = windows.shape
    out = np.empty(n, np.float32)
    ring = np.zeros((2 * B * W, C), np.float32)  # the kernels' mirrored-ring layout, no wrap
    starts = np.arange(B, dtype=np.int64) * W
    for s in range(0, n, B):
        k = min(B, n - s)
        ring[:k * W] = windows[s:s + k].reshape(k * W, C)
        out[s:s + k] = runner.score_windows(ring, B * W, starts[:k]).scores
    return out


def validate_candidate(running, candidate, backend) -> dict:
    """Refuse a candidate that would turn detection off or flood alarms (module docstring).

    Args:
      running: the `edgert.models.Model` serving now.
      candidate: the verified `edgert.models.Model` about to replace it.
      backend: the candidate's backend, built and self-tested, not serving yet.
    Returns a summary ``{"threshold_ratio", "normal_flagged", "injected_detected",
    "itsc_faults_detected"}`` (the last three None when not checked).
    Raises CandidateError naming the manifest and the failed gate.
    """
    where = f"{candidate.dir}/manifest.json"
    out = {"threshold_ratio": None, "normal_flagged": None, "injected_detected": None,
           "itsc_faults_detected": None}
    from .models import ERROR_KINDS  # the gates hold for every kind scored by an error

    if candidate.kind not in ERROR_KINDS or running.threshold is None:
        return out
    thr, ref = float(candidate.threshold), float(running.threshold)
    ratio = thr / ref
    out["threshold_ratio"] = round(ratio, 4)
    if not 1 / THRESHOLD_FACTOR <= ratio <= THRESHOLD_FACTOR:
        raise CandidateError(
            f"{where}: field 'threshold' is {thr:.6g}, {ratio:.3g}x the running model's "
            f"{ref:.6g}; a swap may move it by at most {THRESHOLD_FACTOR:g}x either way "
            f"({ref / THRESHOLD_FACTOR:.6g}-{ref * THRESHOLD_FACTOR:.6g}): a threshold that "
            "far off turns detection off or floods alarms (restart with the model to force it)")
    if list(candidate.channels) != ITSC_CHANNELS:
        return out
    from .retrain import FAULTS, inject, itsc_fault_windows
    from .train import fit_normalization

    normal = healthy_windows(candidate.window, candidate.hop)
    flagged = float((backend_scores(candidate, backend, normal) > thr).mean())
    out["normal_flagged"] = round(flagged, 4)
    if flagged > MAX_NORMAL_FLAGGED:
        raise CandidateError(
            f"{where}: the candidate (threshold {thr:.6g}) flags {flagged:.0%} of {len(normal)} "
            f"windows of the shipped healthy ITSC recordings, at most {MAX_NORMAL_FLAGGED:.0%} "
            "allowed (check its 'threshold' and 'normalization')")
    mean, std = fit_normalization(normal)  # fault sizes from the data, not the candidate
    families = (
        ("injected_detected", f"injected faults ({', '.join(FAULTS)}) on the healthy ITSC windows",
         lambda: {k: inject(normal, k, mean, std, seed=0) for k in FAULTS}),
        ("itsc_faults_detected", "the shipped ITSC fault recordings",
         lambda: itsc_fault_windows(candidate.window, candidate.hop)))
    for key, what, make in families:
        rates = {k: float((backend_scores(candidate, backend, w) > thr).mean())
                 for k, w in make().items()}
        pooled = float(np.mean(list(rates.values())))
        out[key] = round(pooled, 4)
        if pooled < MIN_FAULT_DETECTED:
            worst = ", ".join(f"{k} {v:.0%}" for k, v in sorted(rates.items(),
                                                                  key=lambda kv: kv[1])[:3])
            raise CandidateError(
                f"{where}: the candidate (threshold {thr:.6g}) detects {pooled:.0%} of {what}, "
                f"at least {MIN_FAULT_DETECTED:.0%} needed (lowest: {worst})")
    return out
