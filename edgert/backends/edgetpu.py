"""``edgetpu[:key=value,…]``: the model's compiled ``edgetpu`` variant on Coral Edge TPUs.

* Devices are found in a child process (`edgert.backends.probe`): with Google's pycoral
  (``pycoral.utils.edgetpu.list_edge_tpus``) when it is importable (it is never a dependency:
  PyPI's ``pycoral`` is an unrelated tool), else with libedgetpu's own C API
  (``edgetpu_list_devices``), else by trying ``load_delegate('libedgetpu.so.1', {'device':
  'usb:N'|'pci:N'})``. The child also builds an interpreter on each device and runs one invoke,
  so a runtime/libedgetpu pair that crashes is caught there.
* The ``edgetpu`` variant is packed (``[1, B, W, C]``, ``"layout": "packed"``, ``"rows": B``)
  or b1-shaped; `edgert.backends.packed.PackedBackend` runs B windows per invoke, zero-pads a
  partial last invoke, and with several TPUs keeps one interpreter per device and sends the
  invokes to them round-robin.

Options: ``device=usb:0`` (or ``pci:0``, ``:0``) runs on that device only; ``lib=PATH`` uses
another libedgetpu (default ``$EDGERT_EDGETPU_LIB`` or ``libedgetpu.so.1``); anything else
(``Performance=Max``, ``Usb.AlwaysDfu=False``, ``Usb.MaxBulkInQueueLength=32``) is passed to
the delegate, which honours such options when a device index is given.
"""

from __future__ import annotations

import ctypes.util
import logging
import os
import re
import shutil
import subprocess

from .. import tflite
from . import probe
from .base import BackendError
from .cpu import _Slot
from .delegate import _one_line, probe_failure
from .packed import PackedBackend, model_source, packed_rows

log = logging.getLogger("edgert")

DEFAULT_LIB = "libedgetpu.so.1"
VARIANT = "edgetpu"
_VERSION_MISMATCH = re.compile(r"[^\n|;]*requires runtime version[^\n|;]*", re.I)


def library(options: dict | None = None) -> str:
    """The libedgetpu to load: option ``lib``, else $EDGERT_EDGETPU_LIB, else libedgetpu.so.1."""
    return (options or {}).get("lib") or os.environ.get("EDGERT_EDGETPU_LIB") or DEFAULT_LIB


def locate_library(lib: str) -> str | None:
    """Where the dynamic loader would find `lib`, without loading it (a hint for messages)."""
    if "/" in lib:
        return lib if os.path.exists(lib) else None
    for d in filter(None, os.environ.get("LD_LIBRARY_PATH", "").split(":")):
        if os.path.exists(os.path.join(d, lib)):
            return os.path.join(d, lib)
    ldconfig = shutil.which("ldconfig") or ("/sbin/ldconfig" if os.path.exists("/sbin/ldconfig") else None)
    if ldconfig:
        try:
            out = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=5).stdout
            for line in out.splitlines():
                if line.strip().startswith(lib + " "):
                    return line.rsplit("=>", 1)[-1].strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return ctypes.util.find_library("edgetpu") if lib == DEFAULT_LIB else None


def version_mismatch(text: str) -> str | None:
    """The libedgetpu "Package requires runtime version (N), which is newer than …" line, if any."""
    m = _VERSION_MISMATCH.search(text or "")
    return m.group(0).strip() if m else None


def _entry(model, name: str) -> dict:
    return model.manifest.get("variants", {}).get(name, {}) or {}


def compiled_variants(model) -> list[str]:
    """Names of the model's variants compiled for the Edge TPU, best first.

    ``edgert compile`` names the compiled form ``edgetpu`` when the model has one fixed-batch
    variant and ``edgetpu_<source>`` (``edgetpu_packed``, ``edgetpu_b1``) when it has several;
    the packed one (most windows per invoke) is preferred.
    """
    names = [n for n, v in model.variants.items()
             if n == VARIANT or n.startswith(VARIANT + "_") or _entry(model, n).get("backend") == VARIANT
             or v.path.name.endswith("_edgetpu.tflite")]

    def rows(n):
        shape = model.variants[n].input.shape
        return int(shape[1]) if len(shape) == 4 and shape[0] == 1 else 0

    return sorted(names, key=lambda n: (-rows(n), n != VARIANT, n))


def variant_of(model):
    """The model's compiled Edge TPU variant; BackendError(cause="no variant") if it has none."""
    names = compiled_variants(model)
    if not names:
        raise BackendError(f"model {model.name!r} has no compiled '{VARIANT}' variant in {model.dir}/manifest.json "
                           f"(compile one with `edgert compile` on an x86-64 host; see docs/coral.md)",
                           cause="no variant")
    return model.variants[names[0]]


def compiled_for(model, variant) -> str:
    """"edgetpu_compiler 16.0, runtime >= 13" from the manifest entry, '' if it does not say."""
    e = _entry(model, variant.name)
    parts = []
    if e.get("compiler_version"):
        parts.append(f"edgetpu_compiler {e['compiler_version']}")
    if e.get("min_runtime") is not None:
        parts.append(f"Edge TPU runtime >= {e['min_runtime']}")
    return ", ".join(parts)


def build(model, options: dict | None = None, max_batch: int = 32, num_threads: int = 1):
    """A `PackedBackend` on every usable Edge TPU (or the one named by ``device=``).

    Raises:
      BackendError with ``cause``: "no variant", "library absent", "no device",
      "version mismatch", "delegate crashed" (signal named), "delegate failed", "probe timed out".
    """
    options = dict(options or {})
    lib = library(options)
    options.pop("lib", None)
    want = options.pop("device", None)
    try:
        variant = variant_of(model)
    except BackendError as exc:
        where = locate_library(lib)
        hint = f"{lib} is at {where}" if where else f"{lib} is not on the library path either"
        raise BackendError(f"{exc} ({hint})", cause=exc.cause) from None
    try:
        Interpreter, load_delegate, runtime, version = tflite.find()
    except ImportError as exc:
        raise BackendError(str(exc), cause="runtime absent") from None
    packed_rows(model, variant)  # refuse a variant of the wrong shape before touching devices
    pr = probe.probe_edgetpu(lib, devices=[want] if want else None, options=options,
                             model_path=variant.path)
    what = "Edge TPU"
    if not pr.ok:
        err = probe_failure(what, pr, lib, label="library")
        made = compiled_for(model, variant)
        if made and err.cause == "delegate crashed":
            err = BackendError(f"{err} (model {variant.path.name}: {made})", cause=err.cause, details=err.details)
        mismatch = version_mismatch(pr.stderr) or version_mismatch(str(pr.result.get("error", "")))
        if mismatch and not pr.signal:
            made = compiled_for(model, variant)
            raise BackendError(_one_line(
                f"{what}: {variant.path.name} was compiled for a newer Edge TPU runtime than this libedgetpu"
                f"{f' ({made})' if made else ''}: {mismatch}; recompile it with `edgert compile --min-runtime N` "
                f"(edgetpu_compiler -m N) or install a newer libedgetpu "
                f"({probe.versions_text(pr, lib, 'library')})"), cause="version mismatch",
                details=err.details)
        raise err
    usable = pr.result.get("usable", [])
    libver = pr.result.get("libedgetpu_version") or "version unknown"
    delegates, slots = [], []
    source = model_source(model, variant)
    for dev in usable:
        try:
            d = load_delegate(lib, {"device": dev, **options})
        except (OSError, ValueError) as exc:
            raise BackendError(_one_line(f"{what}: device {dev} worked in the probe but not in-process: {exc}"),
                               cause="delegate failed") from None
        delegates.append(d)
        try:
            slots.append(_Slot(Interpreter, source, 1, num_threads, dynamic=False, delegates=[d]))
        except (ValueError, RuntimeError) as exc:
            raise BackendError(_one_line(f"{what}: device {dev}: {exc}"), cause="delegate failed") from None
    name = f"edgetpu:{runtime}-{version}[{','.join(usable)}]"
    b = PackedBackend(model, variant, max_batch, slots, name, runtime)
    b._delegates = delegates
    failed = {d: r.get("error") for d, r in pr.result.get("results", {}).items() if not r.get("ok")}
    if failed:
        log.warning("Edge TPU device(s) %s failed the probe and are not used: %s; running on %s",
                    ", ".join(failed), _one_line("; ".join(f"{d}: {e}" for d, e in failed.items())),
                    ", ".join(usable))
    b.info = {"kind": "edgetpu", "library": lib, "libedgetpu_version": libver, "devices": usable,
              "failed_devices": failed, "enumeration": pr.result.get("enumeration"),
              "rows_per_invoke": b.rows, "variant": variant.name, "runtime": f"{runtime} {version}",
              "pycoral": bool(pr.info.get("pycoral"))}
    return b
