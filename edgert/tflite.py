"""The TFLite runtime, low level: find an interpreter and read a model's I/O tensors.

Everything above it (``edgert.models``, ``edgert.backends``) goes through this module, so
what runs a ``.tflite`` file is chosen in one place and nothing here imports edgert.

Finding an interpreter: LiteRT (ai-edge-litert) first, tflite-runtime second.

LiteRT is the default (XNNPACK runs int8 models ~5x faster than tflite-runtime's kernels);
tflite-runtime is what many Coral boards carry, so it is accepted when it is all there is.
``EDGERT_TFLITE_RUNTIME=tflite-runtime`` (or ``ai-edge-litert``) picks one when both are
installed, e.g. to match the TF Lite version a libedgetpu build was made for (docs/coral.md).
"""

from __future__ import annotations

import importlib
import os

_CANDIDATES = (
    ("ai_edge_litert.interpreter", "ai-edge-litert", "ai_edge_litert"),
    ("tflite_runtime.interpreter", "tflite-runtime", "tflite_runtime"),
)

_found = None


def find():
    """Return ``(Interpreter, load_delegate, runtime_name, version)`` of the first runtime found.

    Raises:
      ImportError listing what was tried and how to install the default.
    """
    global _found
    if _found is not None:
        return _found
    errors = []
    want = os.environ.get("EDGERT_TFLITE_RUNTIME", "").strip()
    candidates = _CANDIDATES
    if want:
        candidates = tuple(c for c in _CANDIDATES if want in (c[1], c[2]))
        if not candidates:
            raise ImportError(f"EDGERT_TFLITE_RUNTIME={want!r}: expected one of "
                              + ", ".join(c[1] for c in _CANDIDATES))
    for module, dist, pkg in candidates:
        try:
            mod = importlib.import_module(module)
        except Exception as exc:  # a broken install can raise more than ImportError
            errors.append(f"{module}: {exc}")
            continue
        version = "unknown"
        try:
            from importlib.metadata import version as _v
            version = _v(dist)
        except Exception:
            version = getattr(importlib.import_module(pkg), "__version__", "unknown")
        _found = (mod.Interpreter, mod.load_delegate, dist, version)
        return _found
    raise ImportError("no TFLite interpreter found (pip install ai-edge-litert); tried: "
                      + "; ".join(errors))


def io_details(model_path) -> tuple[list, list]:
    """The input and output tensor details of a ``.tflite`` file, as the interpreter sees them.

    Args:
      model_path: path of the file.
    Returns:
      ``(inputs, outputs)``: lists of the interpreter's detail dicts (``shape``,
      ``shape_signature``, ``dtype``, ``quantization``, …).
    Raises:
      ImportError when no interpreter is installed; any error of the interpreter when the
      file is not a loadable model (the caller names the file).
    """
    Interpreter = find()[0]
    interp = Interpreter(model_path=str(model_path))
    return interp.get_input_details(), interp.get_output_details()
