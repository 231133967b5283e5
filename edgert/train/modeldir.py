"""Writing a trained model's directory (`write_model_dir`: variants, reproducible float
``.keras``, manifest through `edgert.models`) and the small helpers its manifest fields use
(`round_sig`, `quantile_higher`, `variant_entry`, `data_desc`, `default_command`)."""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .architectures import clone_with_batch, load_tf
from .config import ITSC_ATTRIBUTION
from .data import Dataset
from .export import Exported, tflite_ops
from .int8 import Int8Model


def round_sig(x: float, nd: int = 6) -> float:
    return float(f"{float(x):.{nd}g}")


def quantile_higher(scores: np.ndarray, q: float) -> float:
    # "higher": an actual observed score, never interpolated below the largest ones
    return float(np.quantile(np.asarray(scores, np.float64), q, method="higher"))


def _io_json(m: Int8Model) -> dict:
    io_ = m.io()
    for k in io_:
        io_[k]["scale"] = float(io_[k]["scale"])  # exact float32 value as read from the model
    return io_


def _cfg_json(cfg) -> dict:
    d = asdict(cfg)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def _arch_summary(model) -> list[str]:
    rows = []
    for layer in model.layers[1:]:
        c = layer.get_config()
        desc = type(layer).__name__
        if "filters" in c:
            desc += (f"({c['filters']}, k={tuple(c['kernel_size'])}, s={tuple(c['strides'])}, "
                     f"{c['padding']})")
        elif "pool_size" in c:
            desc += f"(pool={tuple(c['pool_size'])})"
        shape = tuple(layer.output.shape)
        rows.append(f"{layer.name}: {desc} -> {shape}")
    return rows


def _litert_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("ai-edge-litert")
    except Exception:
        return None


def _versions(tf) -> dict:
    return {"tensorflow": tf.__version__,
            "keras": tf.keras.__version__ if hasattr(tf.keras, "__version__") else None,
            "litert": _litert_version(), "python": platform.python_version()}


def data_desc(ds: Dataset | None) -> str:
    if ds is None or ds.default_itsc:
        return f"{ITSC_ATTRIBUTION}, shipped as edgert/data/itsc.npz"
    if ds.is_itsc:
        return f"{ITSC_ATTRIBUTION}, read from {ds.source}"
    return ds.source


def variant_entry(fname: str, m: Int8Model, batch, rows: int | None = None) -> dict:
    v = {"file": fname, "batch": batch}
    if rows is not None:
        v.update({"layout": "packed", "rows": rows})
    v.update(_io_json(m))
    return v


def _speed(models: dict, reps: int = 300) -> dict:
    """Rough LiteRT invoke cost per window in µs (one thread, this machine, shared;
    indicative). ``models``: name -> (Int8Model, batch)."""
    out = {}
    for name, (m, b) in models.items():
        it = m._interp(b if m.fixed_batch is None else m.fixed_batch)
        d = it.get_input_details()[0]
        it.set_tensor(d["index"], np.zeros(d["shape"], np.int8))
        it.invoke()
        t = time.perf_counter()
        for _ in range(reps):
            it.invoke()
        per_invoke = (time.perf_counter() - t) / reps
        windows = int(d["shape"][0]) * (m.rows if m.rows > 1 else 1)
        out[name] = round(per_invoke / windows * 1e6, 2)
    return out


def write_fold_dir(d: Path, manifest: dict, files: dict[str, bytes]) -> dict:
    """A minimal model directory (one or more variants + manifest) for a CV fold."""
    from ..models import write_model_dir as write_dir

    if d.exists():
        shutil.rmtree(d)
    write_dir(d, manifest, files)
    return manifest


def _edgetpu_verdict(path: Path) -> dict | None:
    """``edgert check-model``'s offline verdict (Coral's documented rules), if available."""
    try:
        from edgert.edgetpu_check import check
    except Exception:  # pragma: no cover - the checker is optional here
        return None
    try:
        r = check(path)
    except Exception as exc:  # pragma: no cover
        return {"error": str(exc)}
    return {"mappable": bool(r.mappable), "tpu_ops": int(r.tpu_ops),
            "cpu_ops": int(len(r.ops) - r.tpu_ops), "min_runtime": int(r.min_runtime)}


def variant_files(name: str) -> dict[str, str]:
    """File names of a model directory: variant -> file, plus ``"float"`` (the Keras model)."""
    return {"dynamic": f"{name}_dyn.tflite", "b1": f"{name}_b1.tflite",
            "packed": f"{name}_packed.tflite", "float": f"{name}_float.keras"}


def save_keras(model, path: Path) -> None:
    """``model.save(path)`` (Keras v3 zip), made byte-reproducible: Keras stamps the save time
    into ``metadata.json`` (``date_saved``) and into the weights entry's zip header; both are
    dropped, so the same weights give the same sha256 (training is reproducible here)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.keras")
    model.save(tmp)
    strip_keras_timestamps(tmp, path)
    tmp.unlink()


def strip_keras_timestamps(src: Path, dst: Path) -> None:
    """Copies a ``.keras`` zip without its save time (see ``save_keras``)."""
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "metadata.json":
                meta = json.loads(data)
                meta.pop("date_saved", None)
                data = json.dumps(meta).encode()
            zi = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            zi.compress_type, zi.external_attr = info.compress_type, info.external_attr
            zout.writestr(zi, data)


def write_manifest(out: Path, manifest: dict) -> None:
    """Writes ``out/manifest.json`` (sha256 ``files`` computed, checked as the reader checks
    it, replaced atomically): `edgert.models.write_manifest`, the one manifest writer."""
    from ..models import write_manifest as write

    write(out, manifest)


def write_model_dir(out: str | os.PathLike, cfg, model, ex: Exported, head: dict,
                    fidelity: dict, training: dict, metrics: dict,
                    manifest_now: bool = True, stem: str | None = None) -> dict:
    """Writes a model directory: the three int8 variants, the float Keras model they were
    converted from (``<name>_float.keras``, for ``edgert retrain``; the runtime never reads it)
    and, when ``manifest_now``, ``manifest.json`` (last).

    Args:
      out: directory (created).
      cfg: the AEConfig/CNNConfig of the run (name, packed_rows, recorded as training.config).
      model: the trained float Keras model (batch None).
      ex: its int8 variants (``export_variants``).
      head: manifest fields before ``variants`` (schema, name, kind, …, class_names).
      fidelity: the manifest's ``fidelity`` section.
      training: the first fields of ``training`` (command, seed, data, …); versions, config,
        architecture, ops, Edge TPU verdicts, LiteRT speed and ``metrics`` are appended.
    Returns the manifest (``files``, the sha256 of every file written, is filled in by
    ``write_manifest``; with ``manifest_now=False`` the caller adds to it and calls that). ``stem``: file
    name stem instead of ``cfg.name`` (``edgert retrain`` names each generation's files anew).
    """
    tf = load_tf()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fn = variant_files(stem or cfg.name)
    for v, content in (("dynamic", ex.dyn_bytes), ("b1", ex.b1_bytes),
                       ("packed", ex.packed_bytes)):
        (out / fn[v]).write_bytes(content)
    # a fresh, uncompiled copy: no optimizer state (whose auto-numbered name, e.g. "adam_3",
    # depends on how many models this process compiled before)
    save_keras(clone_with_batch(cfg, model, None), out / fn["float"])
    manifest = {
        **head,
        "variants": {
            "dynamic": variant_entry(fn["dynamic"], ex.dyn, "dynamic"),
            "b1": variant_entry(fn["b1"], ex.b1, 1),
            "packed": variant_entry(fn["packed"], ex.packed, 1, rows=cfg.packed_rows),
        },
        "fidelity": fidelity,
        "float_model": {
            "file": fn["float"], "format": "keras",
            "keras": getattr(tf.keras, "__version__", None),
            "input": "normalized windows [batch, 1, W, C] (batch None)",
            "note": "the float Keras model the int8 variants were converted from (the b1 "
                    "graph with a dynamic batch); edgert retrain fine-tunes it, the runtime "
                    "never reads it",
        },
        "training": {
            **training,
            **_versions(tf),
            "config": _cfg_json(cfg),
            "architecture": _arch_summary(model),
            "params": int(model.count_params()),
            "ops": {"dynamic": tflite_ops(ex.dyn_bytes), "b1": tflite_ops(ex.b1_bytes),
                    "packed": tflite_ops(ex.packed_bytes)},
            "edgetpu_check": {v: _edgetpu_verdict(out / fn[v]) for v in ("b1", "packed")},
            "litert_us_per_window": _speed({"dyn_b1": (ex.dyn, 1), "dyn_b32": (ex.dyn, 32),
                                            "b1": (ex.b1, 1), "packed": (ex.packed, 1)}),
            "metrics": metrics,
        },
        "files": {},  # the sha256 of each variant and of the float model: write_manifest
    }
    if manifest_now:
        write_manifest(out, manifest)
    return manifest


def default_command(out, seed, data, kind, cfg) -> str:
    parts = ["edgert", "train"]
    if data is not None:
        parts += ["--data", str(data)]
    parts += ["--kind", kind, "--window", str(cfg.window), "--hop", str(cfg.hop),
              "--channels", ",".join(cfg.channels), "--out", str(out), "--name", cfg.name,
              "--seed", str(seed), "--epochs", str(cfg.epochs)]
    return shlex.join(parts)
