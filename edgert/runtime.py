"""The engine's scoring core as a library call: samples → ring → normalize/quantize → invoke → error.

`edgert.Pipeline` scores a sensor's block with `windows.push_block` (`kernels.ingest`: ring
append, window cut, normalize+quantize into the backend's input tensor, window statistics) →
`batcher.Batcher` → ``backend.run`` → `scoring.ReconstructionScorer` (`scoring.ClassScorer`
for a classifier). `Runner` is that chain for one model, without the engine's bookkeeping
(sensor table, thresholds, drift, events); `Stream` feeds it a series the way the pipeline
feeds a sensor, and `score_array` scores a whole array. edgert's evaluators (``edgert eval
itsc|skab|nab``) and ``edgert bench --peers`` score through these, so every figure they report
is the daemon's computation, int8 rounding included, and no second copy of it exists::

    >>> from edgert.data import itsc_recording
    >>> r = score_array("motor-ae", itsc_recording("SC_A3_B0_C0_001"))
    >>> len(r), r.ch_err.shape, bool((r.scores > 0).all())
    (59, (59, 3), True)

Options the daemon does not need: another hop than the model's (SKAB's evaluation scores every
window, hop 1), the error over a window's newest ``tail`` rows too, the int8 input/output rows
and the window statistics kept per window, per-call normalization rows (`Stream.normalize_with`,
as the daemon's safe adaptation sets a sensor's rows).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from . import kernels, models, wire
from .batcher import Batcher, run_variant
from .scoring import ClassScorer, ReconstructionScorer
from .windows import SensorStream, push_block

__all__ = ["Runner", "Batch", "Stream", "ArrayScores", "score_array", "ring_of"]


@dataclass
class Batch:
    """One scored batch: views into the runner's buffers, valid until its next batch."""

    k: int
    inq: np.ndarray  # int8/uint8 [k, 1, W, C]: the input rows that ran
    outq: np.ndarray  # [k, 1, W, C_out]: the output rows
    scores: np.ndarray | None = None  # float32 [k]: mean over channels of ch_err (autoencoder)
    ch_err: np.ndarray | None = None  # float32 [k, C]: per-channel MSE over the window
    tail_err: np.ndarray | None = None  # float32 [k, C]: the same over its newest `tail` rows
    cls: np.ndarray | None = None  # int64 [k]: class index (classifier)
    prob: np.ndarray | None = None  # float32 [k]: its probability


class Runner:
    """One model on one backend, each batch scored as the pipeline scores it.

    Args:
      model: an `edgert.models.Model`, a shipped model name or a model directory.
      backend: a backend spec (``cpu``, ``auto``, …: `edgert.backends.create`), or a built
        backend to score with (e.g. a hot-swap candidate's; `close` then closes it too).
      max_batch: rows per invoke.
      num_threads: interpreter threads.
      tail: also the per-channel error over each window's newest ``tail`` rows (1..W).
    Errors (``ch_err``, ``scores``, ``tail_err``) exist for an autoencoder with one output
    per input channel; another autoencoder (e.g. SKAB's Conv-AE baseline, one output) gets
    its tensors only.
    """

    def __init__(self, model, backend: str = "cpu", max_batch: int = 32, num_threads: int = 1,
                 tail: int | None = None):
        from . import backends

        self.model = m = model if isinstance(model, models.Model) else models.load(model)
        W = m.window
        if tail is not None and not 0 < int(tail) <= W:
            raise ValueError(f"tail must be in 1..{W}, got {tail}")
        self.tail = None if tail is None else int(tail)
        self.backend = (backends.create(backend, m, max_batch=max_batch, num_threads=num_threads)
                        if isinstance(backend, str) else backend)
        self.variant = v = run_variant(self.backend, m)
        self.in_scale, self.in_zp = float(v.input.scale), int(v.input.zero_point)
        self.out_scale, self.out_zp = float(v.output.scale), int(v.output.zero_point)
        self.mean = np.ascontiguousarray(m.mean, dtype=np.float64)
        self.inv_std = np.ascontiguousarray(m.inv_std, dtype=np.float64)
        self.max_batch = self.backend.max_batch
        self.classifier = m.kind == "classifier"
        self.scorer = (ClassScorer(m, self.max_batch, v) if self.classifier
                       else ReconstructionScorer(m, self.max_batch, v))
        self.errors = not self.classifier and int(v.output.shape[-1]) == m.n_channels

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def buf(self) -> np.ndarray:
        """The backend's input tensor (rows ``[:k]`` hold the last batch)."""
        return self.backend.input_buffer()

    def run(self, k: int) -> Batch:
        """Invoke the backend on rows ``[:k]`` of its input tensor and score them."""
        buf = self.backend.input_buffer()
        out = self.backend.run(k)  # the rows of the interpreter that ran (>= k)
        b = Batch(k, buf[:k], out[:k])
        if self.classifier:
            b.cls, b.prob = self.scorer.classify(out, k)
        elif self.errors:
            b.scores, b.ch_err = self.scorer.score(buf, out, k)
            if self.tail:
                b.tail_err = self.scorer.tail_error(buf, out, k, self.tail)
        return b

    def score_windows(self, ring: np.ndarray, cap: int, starts: np.ndarray, mean=None,
                      inv_std=None) -> Batch:
        """The windows at ``starts`` of a mirrored ring (``[2 * cap, C]``, as a sensor's) normalized
        and quantized into the input tensor (``kernels.normalize_quantize``, what
        ``kernels.ingest`` runs), invoked and scored. ``mean``/``inv_std``: the normalization
        rows (default: the model's). At most ``max_batch`` windows."""
        k = len(starts)
        if k > self.max_batch:
            raise ValueError(f"{k} windows exceed the backend's batch of {self.max_batch}")
        kernels.normalize_quantize(ring, cap, starts, self.model.window,
                                   self.mean if mean is None else mean,
                                   self.inv_std if inv_std is None else inv_std,
                                   self.in_scale, self.in_zp, self.backend.input_buffer(), 0)
        return self.run(k)

    def close(self) -> None:
        self.backend.close()


def ring_of(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Series ``x`` ``[n, C]`` in a mirrored ring of capacity ``n`` (as a sensor's ring holds
    samples: float32 ``[2 n, C]``, ``kernels.ring_append``), for `Runner.score_windows`.
    Returns (ring, cap)."""
    x = np.ascontiguousarray(x, np.float32)
    if x.ndim != 2 or len(x) < 1:
        raise ValueError(f"series of shape {x.shape}: need [n >= 1, C]")
    ring = np.zeros((2 * len(x), x.shape[1]), np.float32)
    kernels.ring_append(ring, len(x), 0, x)
    return ring, len(x)


@dataclass
class ArrayScores:
    """Every window of a series scored (`Stream.take`, `score_array`); window ``i`` starts at
    sample ``starts[i]``. Fields not asked for (or not defined for the model) are None."""

    starts: np.ndarray  # int64 [n]
    scores: np.ndarray | None  # float32 [n]
    ch_err: np.ndarray | None  # float32 [n, C]
    tail_err: np.ndarray | None  # float32 [n, C]
    cls: np.ndarray | None  # int64 [n]
    prob: np.ndarray | None  # float32 [n]
    inq: np.ndarray | None  # [n, 1, W, C]: input rows (keep_tensors)
    outq: np.ndarray | None  # [n, 1, W, C_out]: output rows (keep_tensors)
    stats: np.ndarray | None  # float32 [n, C, 6]: the kernels' window statistics (keep_stats)
    seconds: float  # spent in ring append, quantize, invoke and scoring

    def __len__(self) -> int:
        return len(self.starts)


class Stream:
    """One series through a `Runner` the way the pipeline takes a sensor's blocks: each
    `push` appends samples to a ring (`windows.push_block`, `kernels.ingest`), every window
    completed by them (hop ``hop``) is quantized into the backend's input as it completes,
    and a batch runs when ``max_batch`` windows wait (`flush`: now). No window is scored
    before its last sample is pushed.

    Args:
      runner: the `Runner`.
      hop: samples between windows (default: the model's).
      keep_tensors, keep_stats: keep every window's int8 rows / window statistics.
      capacity: ring capacity in samples (0: the pipeline's default for the window).
    """

    def __init__(self, runner: Runner, hop: int | None = None, keep_tensors: bool = False,
                 keep_stats: bool = False, capacity: int = 0):
        m = runner.model
        self.runner = runner
        self.hop = int(m.hop if hop is None else hop)
        if self.hop < 1:
            raise ValueError(f"hop must be >= 1, got {hop}")
        self.keep_tensors, self.keep_stats = bool(keep_tensors), bool(keep_stats)
        self.sensor = SensorStream("offline", 0, m.n_channels, m.window, self.hop, capacity)
        self.sensor.dt = 1  # t_start of a window = its first sample's index
        self.batcher = Batcher(runner.backend, m, self._on_batch, max_batch=runner.max_batch,
                               max_delay_us=0)
        self.pushed = 0
        self.seconds = 0.0
        self._parts: list[tuple] = []

    def normalize_with(self, mean=None, inv_std=None) -> None:
        """Quantize the windows cut from now on with these rows (float64 ``[C]``; None: the
        model's), as the daemon's safe adaptation sets a sensor's rows."""
        s = self.sensor
        if mean is None:
            s.norm_mean = s.norm_inv_std = None
        else:
            s.norm_mean = np.ascontiguousarray(mean, dtype=np.float64)
            s.norm_inv_std = np.ascontiguousarray(inv_std, dtype=np.float64)

    def push(self, x: np.ndarray) -> None:
        """Append samples ``[n, C]`` (a bus dtype; others are held as float64). Raises
        ValueError for another channel count or a nonfinite value (nothing is appended)."""
        x = np.asarray(x)
        C = self.runner.model.n_channels
        if x.ndim != 2 or x.shape[1] != C:
            raise ValueError(f"samples of shape {x.shape}: the model needs [n, {C}]")
        try:
            wire.dtype_code(x.dtype)
        except ValueError:  # e.g. int64 or float16: held as f8, as Pipeline.push holds them
            x = x.astype(np.float64)
        x = np.ascontiguousarray(x)
        bad = kernels.count_nonfinite(x) if x.dtype.kind == "f" else 0
        if bad:
            raise ValueError(f"samples {self.pushed}..{self.pushed + len(x) - 1}: {bad} "
                             "nonfinite value(s) (NaN or inf)")
        t0 = time.perf_counter()
        push_block(self.sensor, x, 0, 0, self.batcher)
        self.seconds += time.perf_counter() - t0
        self.pushed += len(x)

    def flush(self) -> None:
        """Score the windows waiting for company now."""
        t0 = time.perf_counter()
        self.batcher.flush("flush")
        self.seconds += time.perf_counter() - t0

    def _on_batch(self, b: Batcher, k: int, reason: str) -> None:
        r = self.runner.run(k)
        c = lambda a: None if a is None else a.copy()  # noqa: E731  (the buffers are reused)
        self._parts.append((b.t_start[:k].copy(), c(r.scores), c(r.ch_err), c(r.tail_err),
                            c(r.cls), c(r.prob), c(r.inq) if self.keep_tensors else None,
                            c(r.outq) if self.keep_tensors else None,
                            b.stats[:k].copy() if self.keep_stats else None))

    def take(self) -> ArrayScores:
        """The windows scored since the last `take`, in time order (`flush` first for all)."""
        parts, self._parts = self._parts, []
        cols = list(zip(*parts)) if parts else [()] * 9
        cat = lambda col: None if not col or col[0] is None else np.concatenate(col)  # noqa: E731
        starts = cat(cols[0])
        res = ArrayScores(np.zeros(0, np.int64) if starts is None else starts,
                          *(cat(col) for col in cols[1:]), seconds=self.seconds)
        self.seconds = 0.0
        return res


def score_array(model, x: np.ndarray, *, backend: str = "cpu", hop: int | None = None,
                tail: int | None = None, max_batch: int = 32, num_threads: int = 1,
                block: int | None = None, keep_tensors: bool = False,
                keep_stats: bool = False) -> ArrayScores:
    """Score every window of series ``x`` ``[n, C]`` through the runtime path (`Stream`).

    Args:
      model: a `Runner` (reused: its backend stays open), a `Model`, a name or a directory.
      backend, max_batch, num_threads, tail: for a new `Runner`.
      hop: samples between windows (default: the model's).
      block: samples per push (default: all at once; the windows are the same either way).
      keep_tensors, keep_stats: see `Stream`.
    Returns:
      `ArrayScores`.
    """
    own = not isinstance(model, Runner)
    runner = Runner(model, backend, max_batch, num_threads, tail) if own else model
    try:
        s = Stream(runner, hop=hop, keep_tensors=keep_tensors, keep_stats=keep_stats)
        x = np.asarray(x)
        step = len(x) if not block else int(block)
        for a in range(0, len(x), max(step, 1)):
            s.push(x[a:a + step])
        s.flush()
        return s.take()
    finally:
        if own:
            runner.close()
