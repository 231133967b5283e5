"""Inference backends: one small protocol, so the daemon never cares what runs the model.

A backend is made for a `edgert.models.Model` and exposes (see `base.Backend`):
``name``, ``max_batch``, ``input_buffer()`` (the int8 [max_batch, 1, W, C] array the kernels
write windows into), ``run(k)`` (run the first k rows, return the int8 output rows) and
``close()``.

Kinds (`spec`): ``cpu`` (LiteRT/tflite-runtime, the ``dynamic`` variant), ``edgetpu`` (the
compiled ``edgetpu`` variant on Coral Edge TPUs, `edgetpu`), ``delegate:PATH[:key=value,…]``
(any TFLite external delegate, `delegate`), ``auto`` (= ``edgetpu|cpu``), and chains ``A|B``.
Every delegate is tried in a child process first (`probe`), so a crashing one cannot take the
daemon down.
"""

from __future__ import annotations

import logging

from . import spec as _spec
from .base import Backend, BackendError
from .cpu import CpuBackend

log = logging.getLogger("edgert")


def _build(sp: _spec.Spec, model, max_batch: int, num_threads: int) -> Backend:
    if sp.kind == "cpu":
        return CpuBackend(model, max_batch=max_batch, num_threads=num_threads)
    if sp.kind == "edgetpu":
        from . import edgetpu

        return edgetpu.build(model, sp.options, max_batch=max_batch, num_threads=num_threads)
    if sp.kind == "delegate":
        from . import delegate

        return delegate.build(model, sp.path, sp.options, max_batch=max_batch, num_threads=num_threads)
    raise BackendError(f"unknown backend {sp.text!r} (expected {_spec.USAGE})")  # pragma: no cover


def create(kind: str, model, max_batch: int = 32, num_threads: int = 1) -> Backend:
    """Build the backend named by `kind` for `model` (see `edgert.backends.spec`).

    A chain ``A|B|…`` (``auto`` is ``edgetpu|cpu``) tries each in turn; for every one that
    cannot run, ONE log line gives its cause and what runs instead (INFO for ``auto``, WARNING
    for a chain written out). A single backend that cannot run raises.

    Returns:
      a ready `Backend`; its ``name`` says what actually runs, its ``fallbacks`` lists
      ``{"backend", "cause", "reason"}`` for each backend of the chain that could not.
    Raises:
      BackendError when no backend of the chain can run here (the message gives every cause).
    """
    try:
        chain = _spec.parse(kind)
    except ValueError as exc:
        raise BackendError(str(exc), cause="bad specification") from None
    fallbacks: list[dict] = []
    for i, sp in enumerate(chain):
        try:
            backend = _build(sp, model, max_batch, num_threads)
        except BackendError as exc:
            if len(chain) == 1:
                raise
            fallbacks.append({"backend": sp.text, "cause": exc.cause or "error",
                              "reason": " ".join(str(exc).split())})
            if i == len(chain) - 1:
                raise BackendError(f"no backend of {kind!r} can run here: " + "; ".join(
                    f"{f['backend']}: {f['reason']}" for f in fallbacks), cause=exc.cause) from None
            continue
        for f in fallbacks:
            level = logging.INFO if all(s.auto for s in chain) else logging.WARNING
            log.log(level, "backend %s not used (%s: %s); running %s", f["backend"], f["cause"],
                    f["reason"], backend.name)
        try:
            backend.fallbacks = fallbacks
        except AttributeError:  # pragma: no cover - a backend with __slots__
            pass
        return backend
    raise BackendError(f"empty backend specification {kind!r}")  # pragma: no cover


__all__ = ["Backend", "BackendError", "CpuBackend", "create"]
