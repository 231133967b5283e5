"""``delegate:PATH[:key=value,…]``: any TensorFlow Lite external delegate.

The library must implement the external-delegate plugin interface
(``tflite_plugin_create_delegate`` / ``tflite_plugin_destroy_delegate``, which is what
``load_delegate(PATH, options)`` calls); the options are passed to it as strings.

The delegate is first tried in a child process (`edgert.backends.probe`): load, create,
build an interpreter on the model, one invoke. A crash there (SIGSEGV, SIGABRT, …) is reported
with the versions involved and never reaches the daemon. Then the model's ``dynamic`` variant
runs with one interpreter (and one delegate instance) per batch size, exactly like the CPU
backend; if the delegate cannot take the dynamic variant (many accelerators need static
shapes), its ``b1`` variant runs one window per invoke.
"""

from __future__ import annotations

import logging
import os

from .. import tflite
from . import probe
from .base import BackendError
from .cpu import DynamicBatchBackend, _Slot
from .packed import PackedBackend, model_source

log = logging.getLogger("edgert")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def probe_failure(what: str, pr: probe.ProbeResult, lib: str, with_versions: bool = True,
                  label: str = "delegate") -> BackendError:
    """A BackendError describing a failed probe (crash, timeout or reported error).

    Crashes and timeouts always name the versions involved; a reported error names them when
    `with_versions` (the caller may add them once for several errors).
    """
    versions = probe.versions_text(pr, lib, label)
    details = {"stage": pr.stage, "signal": pr.signal, "returncode": pr.returncode,
               "stderr": pr.stderr_lines(8), "versions": versions, **{k: v for k, v in pr.result.items()
                                                                       if k in ("cause", "error", "stage")}}
    if pr.signal:
        tail = pr.stderr_lines(2)
        msg = (f"{what} crashed the probe process with {pr.signal} at stage '{pr.stage}' "
               f"({versions}){probe.crash_hint(pr)}" + (f"; stderr: {tail}" if tail else ""))
        return BackendError(_one_line(msg), cause="delegate crashed", details=details)
    if pr.timed_out:
        return BackendError(_one_line(f"{what}: the probe process did not finish within its timeout at stage "
                                      f"'{pr.stage}' ({versions}); raise EDGERT_PROBE_TIMEOUT if the device "
                                      f"is just slow to open"), cause="probe timed out", details=details)
    if not pr.result:
        tail = pr.stderr_lines(3)
        return BackendError(_one_line(f"{what}: the probe process exited with status {pr.returncode} at stage "
                                      f"'{pr.stage}' ({versions})" + (f"; stderr: {tail}" if tail else "")),
                            cause="delegate crashed", details=details)
    res = pr.result
    err = res.get("error", "failed")
    extra = pr.stderr_lines(2)
    if extra and extra not in err:
        err = f"{err} (stderr: {extra})"
    return BackendError(_one_line(f"{what}: {err}" + (f" ({versions})" if with_versions else "")),
                        cause=res.get("cause") or "delegate failed", details=details)


def build(model, path: str, options: dict | None = None, max_batch: int = 32, num_threads: int = 1,
          probe_first: bool = True):
    """A backend running `model` through the TFLite external delegate at `path`.

    Args:
      model: the `edgert.models.Model`.
      path: the delegate library.
      options: key=value strings passed to ``tflite_plugin_create_delegate``.
      max_batch, num_threads: as for the CPU backend.
      probe_first: try it in a child process first (leave on outside tests of the probe itself).
    Returns:
      a `DynamicBatchBackend` (dynamic variant) or `PackedBackend` (b1 variant) whose ``name`` is
      ``delegate:<library file name>:<runtime>-<version>``.
    Raises:
      BackendError with ``cause`` "delegate crashed" (the probe child died of a signal, named in
      the message), "library absent", "delegate failed", "probe timed out" or "no variant".
    """
    options = dict(options or {})
    try:
        Interpreter, load_delegate, runtime, version = tflite.find()
    except ImportError as exc:
        raise BackendError(str(exc), cause="runtime absent") from None
    what = f"delegate {path}"
    candidates = [v for v in (model.variants.get("dynamic"), model.variants.get("b1")) if v is not None]
    if not candidates:
        raise BackendError(f"{model.dir}/manifest.json: model {model.name!r} has neither a 'dynamic' nor "
                           f"a 'b1' variant for a delegate", cause="no variant")
    base = os.path.basename(path)
    errors = []
    last = None
    for variant in candidates:
        if probe_first:
            pr = last = probe.probe_delegate(path, options, variant.path,
                                             batch=max_batch if variant.batch is None else None,
                                             num_threads=num_threads)
            if not pr.ok:
                err = probe_failure(what, pr, path)
                if err.cause in ("delegate crashed", "library absent", "probe timed out") or \
                        pr.result.get("stage") in ("load library", "create delegate"):
                    raise err  # not about the variant: another variant will not help
                errors.append(f"{variant.name} variant: {pr.result.get('error', 'failed')}")
                continue
        name = f"delegate:{base}:{runtime}-{version}"
        delegates = []

        def make():
            try:
                d = load_delegate(path, options)
            except OSError as exc:
                raise BackendError(_one_line(f"{what}: {exc}"), cause="library absent") from None
            except ValueError as exc:
                raise BackendError(_one_line(f"{what}: {exc}"), cause="delegate failed") from None
            delegates.append(d)
            return [d]

        try:
            if variant.batch is None:
                b = DynamicBatchBackend(model, variant, max_batch, num_threads, Interpreter, runtime,
                                        name, make_delegates=make)
            else:
                slot = _Slot(Interpreter, model_source(model, variant), 1, num_threads, dynamic=False,
                             delegates=make())
                b = PackedBackend(model, variant, max_batch, [slot], name, runtime)
        except BackendError as exc:
            if exc.cause in ("library absent",):
                raise
            errors.append(f"{variant.name} variant: {exc}")
            continue
        except (ValueError, RuntimeError) as exc:
            errors.append(f"{variant.name} variant: {_one_line(exc)}")
            continue
        b._delegates = delegates  # outlive the interpreters (destroyed with the backend)
        b.delegate_path = path
        b.delegate_options = options
        b.info = {"kind": "delegate", "path": path, "options": options, "variant": variant.name,
                  "runtime": f"{runtime} {version}"}
        return b
    versions = probe.versions_text(last, path) if last is not None else f"runtime {runtime} {version}"
    raise BackendError(_one_line(f"{what}: no variant of {model.name} runs with it: " + "; ".join(errors)
                                 + f" ({versions})"), cause="delegate failed")
