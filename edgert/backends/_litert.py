"""Old import path of `edgert.tflite` (tests and ``bench/`` use ``_litert.find``); the same
function, so the runtime found is cached once."""

from ..tflite import find

__all__ = ["find"]
