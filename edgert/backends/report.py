"""``edgert backends [--json]``: what can run a model here and, for what cannot, why.

Nothing native is loaded in this process: the Edge TPU facts (pycoral, libedgetpu, devices,
one invoke per device) come from a probe child (`edgert.backends.probe`).
"""

from __future__ import annotations

import json
import platform
import sys

from .. import tflite
from . import probe, spec
from .base import BackendError


def _dist_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def _cpu(model) -> dict:
    d: dict = {"installed": {n: _dist_version(n) for n in ("ai-edge-litert", "tflite-runtime")}}
    try:
        _, _, runtime, version = tflite.find()
    except ImportError as exc:
        d.update(available=False, why=str(exc))
        return d
    d.update(available=True, runtime=runtime, version=version)
    if model is not None:
        from .cpu import CpuBackend

        try:
            b = CpuBackend(model, max_batch=4)
            d["model"] = {"name": model.name, "variant": "dynamic", "ok": True, "backend": b.name}
            b.close()
        except BackendError as exc:
            d["model"] = {"name": model.name, "ok": False, "why": str(exc)}
    return d


def _edgetpu(model, lib: str) -> dict:
    from . import edgetpu

    variant = model.variants.get(edgetpu.VARIANT) if model is not None else None
    d: dict = {"library": lib, "library_located": edgetpu.locate_library(lib),
               "packages": probe.installed_packages()}
    if model is not None:
        d["model"] = {"name": model.name, "variant": edgetpu.VARIANT if variant else None}
        if variant is None:
            d["model"]["why"] = (f"no compiled '{edgetpu.VARIANT}' variant in {model.dir}/manifest.json "
                                 f"(variants: {', '.join(model.variants)})")
    pr = probe.probe_edgetpu(lib, model_path=variant.path if variant else None)
    res, info = pr.result, pr.info
    pc = res.get("pycoral") or {}
    d["pycoral"] = {"present": bool(info.get("pycoral")), "version": info.get("pycoral_version"),
                    "why": None if info.get("pycoral") else (info.get("pycoral_error") or pc.get("error"))}
    if pr.signal or pr.timed_out or not res:
        from .delegate import probe_failure

        err = probe_failure("Edge TPU probe", pr, lib, label="library")
        d.update(available=False, cause=err.cause, why=str(err))
        return d
    if res.get("stage") == "load library":
        d["loadable"] = False
        d["load_error"] = res.get("error")
    else:
        d["loadable"] = True
        d["libedgetpu_version"] = res.get("libedgetpu_version")
        d["enumeration"] = res.get("enumeration")
        d["devices"] = [x["device"] for x in res.get("devices", [])]
        if "results" in res:
            d["invoke"] = res["results"]
    if not d.get("loadable"):
        d.update(available=False, cause="library absent", why=d["load_error"])
    elif not d.get("devices"):
        d.update(available=False, cause="no device", why=res.get("error"))
    elif variant is None and model is not None:
        d.update(available=False, cause="no variant", why=d["model"]["why"])
    elif not res.get("ok"):
        from . import edgetpu as _e

        mm = _e.version_mismatch(pr.stderr) or _e.version_mismatch(str(res.get("error", "")))
        d.update(available=False, cause="version mismatch" if mm else (res.get("cause") or "delegate failed"),
                 why=mm or res.get("error"))
    else:
        d.update(available=True, usable=res.get("usable", []))
    return d


def collect(model_name: str | None = "motor-ae") -> dict:
    """Everything `edgert backends` reports, as a dict."""
    from . import edgetpu

    model, model_error = None, None
    if model_name:
        from .. import models

        try:
            model = models.load(model_name)
        except Exception as exc:
            model_error = str(exc)
    lib = edgetpu.library()
    rep = {
        "platform": {"python": sys.version.split()[0], "machine": platform.machine(),
                     "system": f"{platform.system()} {platform.release()}", "executable": sys.executable},
        "model": model.name if model else None,
        "model_error": model_error,
        "cpu": _cpu(model),
        "edgetpu": _edgetpu(model, lib),
        "delegate": {
            "usage": "--backend delegate:PATH[:key=value,…]  (config: backend = \"delegate:PATH:k=v\")",
            "how": ("any TensorFlow Lite external delegate (a .so exporting tflite_plugin_create_delegate / "
                    "tflite_plugin_destroy_delegate); options are passed to it as strings; it is first tried in a "
                    "child process (load, build an interpreter, one invoke), then runs the model's dynamic "
                    "variant (or its b1 variant if it needs static shapes)"),
            "examples": ["delegate:/usr/lib/libvx_delegate.so",
                         "delegate:/usr/lib/libedgetpu.so.1:device=usb:0  (the Edge TPU as a plain delegate: "
                         "needs a model compiled for it; prefer the edgetpu backend)",
                         "delegate:/opt/npu/libdelegate.so|cpu  (fall back to the CPU)"],
        },
        "spec": spec.USAGE,
    }
    if rep["edgetpu"].get("available"):
        rep["auto"] = {"runs": "edgetpu", "devices": rep["edgetpu"].get("usable")}
    else:
        rep["auto"] = {"runs": "cpu" if rep["cpu"].get("available") else None,
                       "edgetpu_cause": rep["edgetpu"].get("cause"), "edgetpu_why": rep["edgetpu"].get("why")}
    return rep


def format_text(rep: dict) -> str:
    lines = []
    p = rep["platform"]
    lines.append(f"platform  Python {p['python']} on {p['machine']} ({p['system']})")
    if rep.get("model_error"):
        lines.append(f"model     {rep['model_error']}")
    c = rep["cpu"]
    if c.get("available"):
        extra = ", ".join(f"{k} {v}" for k, v in c["installed"].items() if v and k != c["runtime"])
        lines.append(f"cpu       available: {c['runtime']} {c['version']}" + (f" (also installed: {extra})" if extra else ""))
        if c.get("model"):
            m = c["model"]
            lines.append(f"          model {m['name']}: " + ("dynamic variant runs" if m["ok"] else f"FAILS: {m['why']}"))
    else:
        lines.append(f"cpu       UNAVAILABLE: {c['why']}")
    e = rep["edgetpu"]
    lines.append("edgetpu   " + (f"available on {', '.join(e['usable'])}" if e.get("available")
                                 else f"unavailable ({e.get('cause')}): {e.get('why')}"))
    pc = e["pycoral"]
    lines.append("          pycoral: " + (f"present ({pc.get('version')})" if pc["present"]
                                          else f"not importable ({pc.get('why')}); libedgetpu is used directly"))
    if e.get("loadable") is False:
        lines.append(f"          {e['library']}: not loadable: {e.get('load_error')}")
    elif e.get("loadable"):
        lines.append(f"          {e['library']}: loaded, version {e.get('libedgetpu_version') or 'unknown'}")
        lines.append(f"          devices: {', '.join(e.get('devices') or []) or 'none'} (via {e.get('enumeration')})")
        for dev, r in (e.get("invoke") or {}).items():
            lines.append(f"          {dev}: " + (f"invoke ok ({r.get('first_invoke_ms')} ms first invoke)" if r.get("ok")
                                                  else f"FAILED at {r.get('stage')}: {r.get('error')}"))
    if e.get("packages"):
        lines.append("          packages: " + ", ".join(f"{k} {v}" for k, v in e["packages"].items()))
    if e.get("model"):
        m = e["model"]
        lines.append(f"          model {m['name']}: " + (f"'{m['variant']}' variant present" if m.get("variant")
                                                          else m.get("why", "")))
    d = rep["delegate"]
    lines.append(f"delegate  {d['usage']}")
    lines.append(f"          {d['how']}")
    for ex in d["examples"]:
        lines.append(f"          e.g. {ex}")
    a = rep["auto"]
    if a["runs"] == "edgetpu":
        lines.append(f"auto      runs edgetpu ({', '.join(a['devices'])})")
    else:
        lines.append(f"auto      runs {a['runs'] or 'nothing'} (edgetpu: {a.get('edgetpu_cause')})")
    return "\n".join(lines)


def main(as_json: bool = False, model: str | None = "motor-ae") -> int:
    """Print the report; exit status 0 when at least one backend can run the model."""
    rep = collect(model)
    if as_json:
        print(json.dumps(rep, default=str))
    else:
        print(format_text(rep))
    ok = rep["cpu"].get("available") or rep["edgetpu"].get("available")
    return 0 if ok else 1
