"""Try a delegate in a child process before the daemon loads it.

A TFLite delegate is native code: a broken one (or a runtime/delegate pair that does not go
together, e.g. tflite-runtime >= 2.12 with an old libedgetpu) can segfault or abort, and that
would take the whole daemon down. So every delegate is first loaded here, in a separate
Python process (``python -m edgert.backends.probe …``): load the library, create the
delegate, build an interpreter with it, allocate, run one invoke. Only if that worked does the
parent load it in-process. A child killed by a signal is reported by name (SIGSEGV, SIGABRT)
with the stage it reached and the versions involved.

Child protocol: lines ``@@edgert-probe {json}`` on stdout, each one of ``{"stage": name}``
(before each risky step, so a crash says where), ``{"info": {...}}`` (facts as soon as they are
known: runtime, versions, devices) and finally ``{"result": {...}}``. Anything else the native
code prints is ignored (stdout) or kept as the stderr tail.

Modes::

    python -m edgert.backends.probe delegate --lib PATH [--opt k=v]… [--model FILE] [--batch N]
    python -m edgert.backends.probe edgetpu [--lib libedgetpu.so.1] [--device usb:0]… [--opt k=v]…
                                            [--model FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "@@edgert-probe "
DEFAULT_TIMEOUT_S = 60.0  # a USB Accelerator's first open loads its firmware (seconds)
MAX_PROBE_INDEX = 8  # devices per type tried when enumerating by load_delegate()
STDERR_TAIL = 3000


# ----------------------------------------------------------------------------- parent side
@dataclass
class ProbeResult:
    """What a probe child did.

    Attributes:
      ok: the child finished and reported success.
      result: the child's final result ({} if it never got there).
      info: facts the child reported along the way (runtime, versions, devices, …).
      stage: the last stage the child announced (where it crashed, if it did).
      returncode: the child's exit status (negative: killed by that signal).
      signal: the signal's name ("SIGSEGV", "SIGABRT") if the child was killed by one.
      timed_out: the child was killed after `timeout` seconds.
      stderr: the tail of the child's stderr.
      seconds: wall time of the probe.
    """

    ok: bool
    result: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    stage: str | None = None
    returncode: int | None = None
    signal: str | None = None
    timed_out: bool = False
    stderr: str = ""
    seconds: float = 0.0
    command: list = field(default_factory=list)

    @property
    def crashed(self) -> bool:
        return self.signal is not None or (self.returncode not in (0, None) and not self.result)

    def stderr_lines(self, n: int = 4) -> str:
        """The last `n` lines the native code printed, joined with ' | ' (one log line).

        Python's own crash report (faulthandler frames) and the runtimes' routine chatter are
        left out: the stage already says where it happened.
        """
        skip = ("Exception ignored in", "Traceback", "  File ", "    ", "AttributeError: 'Delegate'",
                "INFO: Created TensorFlow Lite", "Fatal Python error", "Current thread", "Thread 0x",
                "Extension modules", "Stack (most recent", "<no Python frame>")
        lines = [ln.strip() for ln in self.stderr.splitlines() if ln.strip() and not ln.startswith(skip)]
        return " | ".join(lines[-n:])


def _timeout() -> float:
    try:
        return float(os.environ.get("EDGERT_PROBE_TIMEOUT", DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S


def _child_env() -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the directory holding the edgert package
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONFAULTHANDLER", "1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    return env


def run_child(args: list[str], timeout: float | None = None) -> ProbeResult:
    """Run ``python -m edgert.backends.probe ARGS`` and collect what it said."""
    cmd = [sys.executable, "-X", "faulthandler", "-m", "edgert.backends.probe", *args]
    timeout = _timeout() if timeout is None else timeout
    t0 = time.monotonic()
    try:
        cp = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                            env=_child_env())
        out, err, rc, timed_out = cp.stdout, cp.stderr, cp.returncode, False
    except subprocess.TimeoutExpired as exc:
        out, err, rc, timed_out = exc.stdout or b"", exc.stderr or b"", None, True
    pr = ProbeResult(ok=False, returncode=rc, timed_out=timed_out, seconds=time.monotonic() - t0,
                     command=cmd)
    pr.stderr = err.decode("utf-8", "replace")[-STDERR_TAIL:]
    for line in out.decode("utf-8", "replace").splitlines():
        if not line.startswith(PREFIX):
            continue
        try:
            msg = json.loads(line[len(PREFIX):])
        except json.JSONDecodeError:
            continue
        if "stage" in msg:
            pr.stage = msg["stage"]
        if "info" in msg:
            pr.info.update(msg["info"])
        if "result" in msg:
            pr.result = msg["result"]
    if rc is not None and rc < 0:
        try:
            pr.signal = signal.Signals(-rc).name
        except ValueError:
            pr.signal = f"signal {-rc}"
    pr.ok = rc == 0 and bool(pr.result.get("ok"))
    return pr


def probe_delegate(lib: str, options: dict | None = None, model_path=None, batch: int | None = None,
                   num_threads: int = 1, timeout: float | None = None) -> ProbeResult:
    """Load `lib` as a TFLite external delegate in a child; with a model, build and invoke it."""
    args = ["delegate", "--lib", str(lib), "--threads", str(num_threads)]
    for k, v in (options or {}).items():
        args += ["--opt", f"{k}={v}"]
    if model_path is not None:
        args += ["--model", str(model_path)]
    if batch is not None:
        args += ["--batch", str(batch)]
    return run_child(args, timeout)


def probe_edgetpu(lib: str = "libedgetpu.so.1", devices=None, options: dict | None = None,
                  model_path=None, timeout: float | None = None) -> ProbeResult:
    """Find Edge TPUs in a child (pycoral, else libedgetpu); with a model, invoke it on each."""
    args = ["edgetpu", "--lib", str(lib)]
    for d in devices or []:
        args += ["--device", d]
    for k, v in (options or {}).items():
        args += ["--opt", f"{k}={v}"]
    if model_path is not None:
        args += ["--model", str(model_path)]
    return run_child(args, timeout)


def installed_packages(names=("libedgetpu1-std", "libedgetpu1-max", "python3-pycoral",
                              "python3-tflite-runtime")) -> dict:
    """Debian package versions (``dpkg-query``), {} where dpkg is absent. Loads nothing."""
    try:
        cp = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Status}\\n",
                             *names], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {}
    found = {}
    for line in cp.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "installed":
            found[parts[0]] = parts[1]
    return found


def versions_text(pr: ProbeResult, lib: str | None = None, label: str = "delegate") -> str:
    """"runtime ai-edge-litert 2.3.0, delegate /x.so (-> /y.so), libedgetpu …" for messages."""
    from .. import tflite

    info = {**pr.info, **pr.result}
    parts = []
    runtime, version = info.get("runtime"), info.get("runtime_version")
    if not runtime:
        try:
            _, _, runtime, version = tflite.find()
        except ImportError:
            runtime, version = "no runtime", ""
    parts.append(f"runtime {runtime} {version}".rstrip())
    if lib:
        real = os.path.realpath(lib) if os.path.exists(lib) else None
        parts.append(f"{label} {lib}" + (f" (-> {real})" if real and real != os.path.abspath(lib) else ""))
    if info.get("libedgetpu_version"):
        parts.append(f"libedgetpu {info['libedgetpu_version']}")
    if info.get("pycoral_version"):
        parts.append(f"pycoral {info['pycoral_version']}")
    pkgs = installed_packages() if (pr.signal or pr.timed_out) else {}
    if pkgs:
        parts.append("packages " + ", ".join(f"{k} {v}" for k, v in pkgs.items()))
    parts.append(f"python {sys.version.split()[0]}")
    return ", ".join(parts)


def crash_hint(pr: ProbeResult) -> str:
    """A known cause for a crash, if the versions point at one."""
    info = {**pr.info, **pr.result}
    runtime, version = info.get("runtime"), str(info.get("runtime_version", ""))
    if pr.signal and runtime == "tflite-runtime" and info.get("libedgetpu_version") is not None:
        try:
            major, minor = (int(x) for x in version.split(".")[:2])
        except ValueError:
            return ""
        if (major, minor) >= (2, 12):
            return ("; known failure: tflite-runtime >= 2.12 with an older libedgetpu segfaults: "
                    "install the libedgetpu built for this runtime (see docs/coral.md)")
    return ""


# ------------------------------------------------------------------------------ child side
def _emit(kind: str, payload) -> None:
    sys.stdout.write(PREFIX + json.dumps({kind: payload}, default=str) + "\n")
    sys.stdout.flush()


def _stage(name: str) -> None:
    _emit("stage", name)


def _info(**kw) -> None:
    _emit("info", kw)


def _error(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", "; ")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _kv(items) -> dict:
    opts = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise SystemExit(f"--opt {item!r}: expected key=value")
        opts[k] = v
    return opts


def _no_core_dumps() -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass


def _runtime():
    _stage("import runtime")
    from edgert import tflite

    Interpreter, load_delegate, runtime, version = tflite.find()
    _info(runtime=runtime, runtime_version=version, python=sys.version.split()[0])
    return Interpreter, load_delegate, runtime, version


def _invoke_once(Interpreter, model: str, delegate, threads: int, batch: int | None, label: str) -> dict:
    """Build an interpreter with `delegate`, allocate, run one invoke on zeros."""
    import numpy as np

    _stage(f"{label}interpreter (ModifyGraphWithDelegate)")
    interp = Interpreter(model_path=model, experimental_delegates=[delegate], num_threads=threads)
    inp = interp.get_input_details()[0]
    if batch is not None and int(inp["shape_signature"][0]) == -1:
        interp.resize_tensor_input(inp["index"], [batch, *inp["shape"][1:]], strict=True)
    _stage(f"{label}allocate_tensors")
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], np.zeros(inp["shape"], dtype=inp["dtype"]))
    _stage(f"{label}invoke")
    t0 = time.perf_counter()
    interp.invoke()
    dt = time.perf_counter() - t0
    out = interp.get_output_details()[0]
    shape = [int(s) for s in interp.get_tensor(out["index"]).shape]
    del interp
    return {"input_shape": [int(s) for s in inp["shape"]], "output_shape": shape,
            "first_invoke_ms": round(dt * 1e3, 3)}


def child_delegate(a) -> dict:
    Interpreter, load_delegate, runtime, version = _runtime()
    opts = _kv(a.opt)
    _stage("load_delegate (dlopen + tflite_plugin_create_delegate)")
    try:
        d = load_delegate(a.lib, opts)
    except OSError as exc:
        return {"ok": False, "stage": "load library", "cause": "library absent", "error": _error(exc)}
    except ValueError as exc:
        return {"ok": False, "stage": "create delegate", "cause": "delegate failed", "error": _error(exc)}
    res = {"ok": True, "delegate": a.lib}
    if a.model:
        try:
            res.update(_invoke_once(Interpreter, a.model, d, a.threads, a.batch, ""))
        except Exception as exc:  # the runtime raises ValueError/RuntimeError on delegate errors
            return {"ok": False, "stage": "interpreter", "cause": "delegate failed", "error": _error(exc)}
    _stage("destroy delegate")
    del d
    return res


def _pycoral() -> dict:
    """Google's pycoral, if importable (it is never a dependency; PyPI's ``pycoral`` is unrelated)."""
    try:
        from pycoral.utils import edgetpu as pc  # noqa: F401
    except Exception as exc:
        return {"present": False, "error": _error(exc)}
    if not hasattr(pc, "list_edge_tpus"):
        return {"present": False, "error": "a 'pycoral' without pycoral.utils.edgetpu.list_edge_tpus "
                                           "(PyPI's pycoral is an unrelated tool)"}
    res: dict = {"present": True}
    try:
        import pycoral

        res["version"] = getattr(pycoral, "__version__", "unknown")
    except Exception:
        pass
    try:
        res["runtime_version"] = str(pc.get_runtime_version())
    except Exception as exc:
        res["runtime_version_error"] = _error(exc)
    try:
        res["devices"] = [dict(d) for d in pc.list_edge_tpus()]
    except Exception as exc:
        res["devices_error"] = _error(exc)
    return res


def _device_names(records) -> list[dict]:
    """[{'type': 'usb', 'path': p}, …] → add 'device': 'usb:N' (N counts per type, in order)."""
    count: dict[str, int] = {}
    out = []
    for r in records:
        t = str(r.get("type", "")).lower()
        t = "pci" if "pci" in t else "usb" if "usb" in t else t
        i = count.get(t, 0)
        count[t] = i + 1
        out.append({"device": f"{t}:{i}", "type": t, "path": r.get("path")})
    return out


def child_edgetpu(a) -> dict:
    import ctypes

    Interpreter, load_delegate, runtime, version = _runtime()
    opts = _kv(a.opt)
    _stage("import pycoral")
    pc = _pycoral()
    _info(pycoral=pc.get("present"), pycoral_version=pc.get("version"),
          pycoral_error=pc.get("error"), pycoral_runtime_version=pc.get("runtime_version"))
    _stage(f"load library {a.lib}")
    try:
        lib = ctypes.CDLL(a.lib)
    except OSError as exc:
        return {"ok": False, "stage": "load library", "cause": "library absent", "error": _error(exc),
                "pycoral": pc}
    ver = None
    if hasattr(lib, "edgetpu_version"):
        lib.edgetpu_version.restype = ctypes.c_char_p
        try:
            ver = lib.edgetpu_version().decode("utf-8", "replace")
        except Exception:
            ver = None
    ver = ver or pc.get("runtime_version")
    _info(libedgetpu_version=ver)
    _stage("enumerate devices")
    if pc.get("present") and "devices" in pc:
        method, devices = "pycoral.utils.edgetpu.list_edge_tpus", _device_names(pc["devices"])
    elif hasattr(lib, "edgetpu_list_devices"):
        class _Dev(ctypes.Structure):
            _fields_ = [("type", ctypes.c_int), ("path", ctypes.c_char_p)]

        lib.edgetpu_list_devices.restype = ctypes.POINTER(_Dev)
        lib.edgetpu_list_devices.argtypes = [ctypes.POINTER(ctypes.c_size_t)]
        n = ctypes.c_size_t(0)
        ptr = lib.edgetpu_list_devices(ctypes.byref(n))
        recs = [{"type": "pci" if ptr[i].type == 0 else "usb",
                 "path": (ptr[i].path or b"").decode("utf-8", "replace")} for i in range(n.value)]
        if hasattr(lib, "edgetpu_free_devices") and n.value:
            lib.edgetpu_free_devices(ptr)
        method, devices = "libedgetpu edgetpu_list_devices()", _device_names(recs)
    else:
        method, devices = "load_delegate(lib, {'device': 'usb:N'|'pci:N'}) probing", []
        for t in ("usb", "pci"):
            for i in range(MAX_PROBE_INDEX):
                _stage(f"probe device {t}:{i}")
                try:
                    load_delegate(a.lib, {"device": f"{t}:{i}"})  # dropped at once: closes the device
                except ValueError:
                    break
                devices.append({"device": f"{t}:{i}", "type": t, "path": None})
    _info(enumeration=method, devices=[d["device"] for d in devices])
    found = [d["device"] for d in devices]
    res = {"ok": False, "library": a.lib, "libedgetpu_version": ver, "enumeration": method,
           "devices": devices, "pycoral": pc}
    wanted = a.device or found
    missing = [d for d in wanted if d not in found]
    if not found:
        res.update(stage="enumerate devices", cause="no device",
                   error=f"{a.lib} loaded but no Edge TPU was found ({method})")
        return res
    if missing:
        res.update(stage="enumerate devices", cause="no device",
                   error=f"requested device(s) {', '.join(missing)} not found; present: {', '.join(found)}")
        return res
    results = {}
    for dev in wanted:
        r: dict = {"ok": False}
        _stage(f"device {dev}: load_delegate")
        try:
            dl = load_delegate(a.lib, {"device": dev, **opts})
        except ValueError as exc:
            r.update(stage="create delegate", error=_error(exc))
            results[dev] = r
            continue
        if a.model:
            try:
                r.update(_invoke_once(Interpreter, a.model, dl, 1, None, f"device {dev}: "))
            except Exception as exc:
                r.update(stage="interpreter", error=_error(exc))
                results[dev] = r
                del dl
                continue
        r["ok"] = True
        results[dev] = r
        del dl
    res["results"] = results
    res["usable"] = [d for d in wanted if results[d]["ok"]]
    res["ok"] = bool(res["usable"])
    if not res["ok"]:
        res.update(stage="device", cause="delegate failed",
                   error="; ".join(f"{d}: {r.get('error')}" for d, r in results.items()))
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgert.backends.probe", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    d = sub.add_parser("delegate")
    d.add_argument("--lib", required=True)
    d.add_argument("--opt", action="append")
    d.add_argument("--model")
    d.add_argument("--batch", type=int)
    d.add_argument("--threads", type=int, default=1)
    e = sub.add_parser("edgetpu")
    e.add_argument("--lib", default="libedgetpu.so.1")
    e.add_argument("--device", action="append")
    e.add_argument("--opt", action="append")
    e.add_argument("--model")
    a = p.parse_args(argv)
    _no_core_dumps()
    try:
        res = child_delegate(a) if a.mode == "delegate" else child_edgetpu(a)
    except ImportError as exc:
        res = {"ok": False, "stage": "import runtime", "cause": "runtime absent", "error": _error(exc)}
    _emit("result", res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
