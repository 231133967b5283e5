"""Model directories: find, load, verify and write ``compiled_models/<name>/manifest.json``.

A model directory holds int8 ``.tflite`` files and a manifest (docs/design.md). Loading
verifies the sha256 of every file and that each variant's tensors have the shape, dtype and
quantization the manifest states, so a swapped, truncated or retrained-but-not-recorded file
is refused with an error naming the file and the field.

Writing goes through `write_manifest` / `write_model_dir` only (training, retraining, the SKAB
and NAB evaluators): the writer computes the sha256 ``files`` list and checks the manifest with
the reader's own parser before it replaces ``manifest.json``, so what is written loads.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from . import tflite
from .errors import ModelError  # noqa: F401  (edgert.models.ModelError is its public name)

KINDS = ("autoencoder", "classifier", "lstm-ae", "forecast")
#: kinds scored by an error against the input window and a calibrated threshold
ERROR_KINDS = ("autoencoder", "lstm-ae", "forecast")
MANIFEST = "manifest.json"
MAX_NAME_BYTES = 100  # a name becomes file names with suffixes ("_r12_float.keras"); 255 is the limit


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple  # -1 for a dynamic batch dimension
    dtype: str
    scale: float
    zero_point: int


LAYOUTS = ("NHWC", "packed")


@dataclass(frozen=True)
class Variant:
    """One ``.tflite`` file of a model directory, as its manifest entry describes it."""

    name: str
    path: Path
    batch: int | None  # None: dynamic
    input: TensorSpec
    output: TensorSpec
    # "NHWC": windows along the batch axis, input [batch, 1, W, C]; "packed": `rows` windows
    # as rows of one static input [1, rows, W, C] (edgert.backends.packed)
    layout: str = "NHWC"
    rows: int = 1  # windows per batch item: the packed rows, 1 for NHWC
    source: str | None = None  # the variant this one was compiled from (``source_variant``)
    sha256: str | None = None  # the manifest's digest of `path` (``files``)


@dataclass
class Model:
    """A verified model directory."""

    name: str
    dir: Path
    kind: str
    window: int
    hop: int
    channels: list
    mean: np.ndarray  # float64[C]
    std: np.ndarray  # float64[C]
    threshold: float | None
    class_names: list | None
    variants: dict
    manifest: dict = field(repr=False)
    target_rows: int | None = None  # forecast: the window's last rows the output predicts

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def inv_std(self) -> np.ndarray:
        """1/std, with 0 for constant channels (they normalize to 0, not to inf)."""
        with np.errstate(divide="ignore"):
            inv = np.where(self.std > 0, 1.0 / self.std, 0.0)
        return inv.astype(np.float64)

    @property
    def sample_rate_hz(self) -> float | None:
        return self.manifest.get("sample_rate_hz")


def models_root() -> Path:
    """Directory of the models shipped in the package."""
    return Path(str(resources.files("edgert.compiled_models")))


def shipped() -> list[str]:
    """Names of the shipped model directories."""
    root = models_root()
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST).is_file())


def resolve(name_or_path) -> Path:
    """A model directory from a path (a directory or its manifest.json) or a shipped name."""
    p = Path(name_or_path)
    if p.is_file() and p.name == MANIFEST:
        return p.parent
    if p.is_dir():
        return p
    shipped_dir = models_root() / str(name_or_path)
    if (shipped_dir / MANIFEST).is_file():
        return shipped_dir
    raise ModelError(f"{name_or_path}: no such model directory and no shipped model of that name "
                     f"(shipped: {', '.join(shipped()) or 'none'})")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_plain_name(name, where: str, field: str) -> str:
    """``name`` if it is a plain file name, else ModelError naming ``where`` and ``field``.

    Plain: a non-empty string of at most ``MAX_NAME_BYTES`` bytes in UTF-8, without '/', '\\',
    '..', NUL or other control characters, not starting with '.'. Model names become file
    names (the reservoir's ``DIR/<name>.bin``, retrain's ``<name>_r<N>_*``), so ``../../x``
    would write outside the directory meant.
    """
    if not isinstance(name, str):
        raise ModelError(f"{where}: field {field!r} must be a plain file name (a string), got "
                         f"{type(name).__name__}")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate (JSON allows "\\udc80")
        size = None
    bad = None
    if size is None:
        bad = "is not valid UTF-8"
    elif size == 0:
        bad = "is empty"
    elif size > MAX_NAME_BYTES:
        bad = f"longer than {MAX_NAME_BYTES} bytes"
    elif "/" in name or "\\" in name:
        bad = "contains a path separator"
    elif ".." in name or name.startswith("."):
        bad = "contains '..' or starts with '.'"
    elif any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        bad = "contains NUL or a control character"
    if bad:
        shown = name if len(name) <= 120 else name[:120] + "…"
        raise ModelError(f"{where}: field {field!r} must be a plain file name, {shown!r} {bad}")
    return name


def _req(d: dict, key: str, where: str, types):
    if key not in d:
        raise ModelError(f"{where}: missing field {key!r}")
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, types):
        raise ModelError(f"{where}: field {key!r} has the wrong type ({type(v).__name__})")
    return v


def _tensor_spec(d, where: str) -> TensorSpec:
    if not isinstance(d, dict):
        raise ModelError(f"{where}: must be a map")
    shape = _req(d, "shape", where, list)
    if not all(isinstance(s, int) and (s > 0 or s == -1) for s in shape):
        raise ModelError(f"{where}: field 'shape' must be positive ints (or -1 for batch), got {shape}")
    dtype = _req(d, "dtype", where, str)
    if dtype not in ("int8", "uint8"):
        raise ModelError(f"{where}: field 'dtype' must be int8 or uint8, got {dtype!r}")
    scale = float(_req(d, "scale", where, (int, float)))
    if not scale > 0:
        raise ModelError(f"{where}: field 'scale' must be > 0, got {scale}")
    zp = _req(d, "zero_point", where, int)
    return TensorSpec(tuple(shape), dtype, scale, zp)


def load(name_or_path, verify: bool = True) -> Model:
    """Load and verify a model directory.

    Args:
      name_or_path: a shipped model name ("motor-ae") or a directory / manifest path.
      verify: check sha256 and tensor specs against the files (leave on outside tests).
    Returns:
      a `Model`.
    Raises:
      ModelError naming the file and field at fault.
    """
    d = resolve(name_or_path)
    mpath = d / MANIFEST
    try:
        m = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise ModelError(f"{mpath}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{mpath}: not valid JSON ({exc})") from None
    model = parse(m, d)
    if verify:
        verify_files(model)
    return model


def parse(m, d: Path) -> Model:
    """The `Model` a manifest describes, its fields checked (not yet its files: `verify_files`).

    Args:
      m: the decoded ``manifest.json``.
      d: the model directory (variant paths are relative to it).
    Raises:
      ModelError naming the manifest and the field at fault.
    """
    d = Path(d)
    mpath = d / MANIFEST
    if not isinstance(m, dict):
        raise ModelError(f"{mpath}: must be a JSON object")
    where = str(mpath)
    name = check_plain_name(_req(m, "name", where, str), where, "name")
    kind = _req(m, "kind", where, str)
    if kind not in KINDS:
        raise ModelError(f"{where}: field 'kind' must be one of {KINDS}, got {kind!r}")
    window = _req(m, "window", where, int)
    hop = _req(m, "hop", where, int)
    if window < 1 or hop < 1:
        raise ModelError(f"{where}: fields 'window' and 'hop' must be >= 1 (got {window}, {hop})")
    channels = _req(m, "channels", where, list)
    if not channels or not all(isinstance(c, str) for c in channels):
        raise ModelError(f"{where}: field 'channels' must be a non-empty list of names")
    norm = _req(m, "normalization", where, dict)
    mean = np.asarray(_req(norm, "mean", where + ": normalization", list), dtype=np.float64)
    std = np.asarray(_req(norm, "std", where + ": normalization", list), dtype=np.float64)
    for fname, arr in (("mean", mean), ("std", std)):
        if arr.shape != (len(channels),) or not np.all(np.isfinite(arr)):
            raise ModelError(f"{where}: field 'normalization.{fname}' must be {len(channels)} finite numbers")
    if np.any(std < 0):
        raise ModelError(f"{where}: field 'normalization.std' must be >= 0")
    threshold = m.get("threshold")
    if kind in ERROR_KINDS:
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not threshold > 0:
            raise ModelError(f"{where}: field 'threshold' must be a positive number for an autoencoder, got {threshold!r}")
        threshold = float(threshold)
    target_rows = None
    if kind == "forecast":
        # the forecast is scored on the window's last target_rows rows (scoring.py)
        target_rows = m.get("target_rows")
        if isinstance(target_rows, bool) or not isinstance(target_rows, int) or not 0 < target_rows < window:
            raise ModelError(f"{where}: field 'target_rows' must be an int in 1..{window - 1} for a "
                             f"forecast model, got {target_rows!r}")
    class_names = m.get("class_names")
    if kind == "classifier" and (not isinstance(class_names, list) or not class_names):
        raise ModelError(f"{where}: field 'class_names' must be a non-empty list for a classifier")
    files = _req(m, "files", where, dict)
    for fname in files:
        check_plain_name(fname, where, "files")
    fm = m.get("float_model")
    if isinstance(fm, dict) and "file" in fm:
        check_plain_name(fm["file"], where, "float_model.file")
    variants = {}
    for vname, vd in _req(m, "variants", where, dict).items():
        vw = f"{where}: variants.{vname}"
        if not isinstance(vd, dict):
            raise ModelError(f"{vw}: must be a map")
        fname = check_plain_name(_req(vd, "file", vw, str), vw, "file")
        batch = vd.get("batch")
        batch = None if batch == "dynamic" else batch
        if batch is not None and (not isinstance(batch, int) or batch < 1):
            raise ModelError(f"{vw}: field 'batch' must be 'dynamic' or a positive int, got {vd.get('batch')!r}")
        spec_in = _tensor_spec(vd.get("input"), vw + ".input")
        spec_out = _tensor_spec(vd.get("output"), vw + ".output")
        # "NHWC" (default): [batch, 1, W, C]; "packed": [1, rows, W, C], B windows as rows of
        # one static invoke. A compiled variant inherits layout and rows from its source_variant.
        source = vd.get("source_variant")
        if source is not None and not isinstance(source, str):
            raise ModelError(f"{vw}: field 'source_variant' must be a variant name, got {source!r}")
        src = _req(m, "variants", where, dict).get(source)
        src = src if isinstance(src, dict) else {}
        layout = vd.get("layout", src.get("layout", "NHWC"))
        rows = 1
        if layout not in LAYOUTS:
            raise ModelError(f"{vw}: field 'layout' must be one of {LAYOUTS}, got {layout!r}")
        if layout == "packed":
            rows = vd.get("rows", src.get("rows"))
            if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
                raise ModelError(f"{vw}: field 'rows' must be a positive int for layout 'packed', got {rows!r}")
            if batch != 1:
                raise ModelError(f"{vw}: field 'batch' must be 1 for layout 'packed', got {vd.get('batch')!r}")
            want_in = (1, rows, window, len(channels))
            if spec_in.shape != want_in:
                raise ModelError(f"{vw}.input: field 'shape' is {list(spec_in.shape)}, layout 'packed' with "
                                 f"rows {rows}, window {window} and {len(channels)} channels needs {list(want_in)}")
        elif layout == "NHWC":
            want_in = (batch if batch is not None else -1, 1, window, len(channels))
            if spec_in.shape != want_in:
                raise ModelError(f"{vw}.input: field 'shape' is {list(spec_in.shape)}, window {window} and "
                                 f"{len(channels)} channels need {list(want_in)}")
        if kind in ("lstm-ae", "forecast"):
            rows_out = target_rows if kind == "forecast" else window
            want_out = spec_in.shape[:2] + (rows_out, len(channels))
            if spec_out.shape != want_out:
                raise ModelError(f"{vw}.output: field 'shape' is {list(spec_out.shape)}, a {kind} model "
                                 f"with this input needs {list(want_out)}")
        if fname not in files:
            raise ModelError(f"{where}: field 'files' has no sha256 for {fname}")
        variants[vname] = Variant(vname, d / fname, batch, spec_in, spec_out, layout, rows,
                                  source, files[fname])
    if not variants:
        raise ModelError(f"{where}: field 'variants' is empty")
    from .scoring import PhasorAttribution  # the optional 'attribution' field, checked here
    PhasorAttribution.from_manifest(m, len(channels), window, where)
    return Model(name, d, kind, window, hop, list(channels), mean, std, threshold,
                 class_names, variants, m, target_rows)


def verify_files(model: Model) -> None:
    """Check the sha256 of every file in the manifest's ``files`` and each variant's tensors.

    Raises:
      ModelError naming the file at fault.
    """
    for fname, digest in model.manifest["files"].items():
        fpath = model.dir / fname
        if not fpath.is_file():
            raise ModelError(f"{fpath}: listed in {MANIFEST} 'files' but missing")
        got = sha256(fpath)
        if got != digest:
            raise ModelError(f"{fpath}: sha256 {got[:16]}… does not match {MANIFEST} "
                             f"'files' ({str(digest)[:16]}…)")
    for v in model.variants.values():
        verify_tensors(v)


def _referenced_files(m: dict) -> list:
    """File names a manifest refers to: each variant's ``file``, then ``float_model.file``."""
    names = [vd.get("file") for vd in (m.get("variants") or {}).values() if isinstance(vd, dict)]
    fm = m.get("float_model")
    if isinstance(fm, dict):
        names.append(fm.get("file"))
    return [n for n in names if isinstance(n, str)]


def write_manifest(out, manifest: dict, *, indent: int = 2) -> Model:
    """Write ``out/manifest.json``: the one writer of model manifests.

    Fills ``manifest["files"]`` with the sha256 of every file it lists and every file the
    manifest refers to (variants, ``float_model``), in that order; a ``files`` field already
    there keeps its place among the fields (``"files": {}`` reserves it), else it goes last.
    The result is checked as `load` checks it (fields, digests, each variant's tensors) and
    then written through a temporary file and ``os.replace``, so a reader never sees a
    half-written manifest nor one it would refuse.

    Args:
      out: the model directory (the files must be in it already).
      manifest: the manifest's fields; updated in place (``files``).
      indent: JSON indentation (2; the SKAB and NAB evaluators' work directories use 1).
    Returns:
      the written model, as `load` would return it.
    Raises:
      ModelError naming the file or field at fault; nothing is written then.
    """
    d = Path(out)
    where = d / MANIFEST
    listed = manifest.get("files", {})
    if not isinstance(listed, dict):
        raise ModelError(f"{where}: field 'files' must be a map of file name to sha256")
    names = list(listed) + [n for n in _referenced_files(manifest) if n not in listed]
    digests = {}
    for fname in names:
        fpath = d / check_plain_name(fname, str(where), "files")
        if not fpath.is_file():
            raise ModelError(f"{fpath}: named in the manifest for {d} but missing")
        digests[fname] = sha256(fpath)
    manifest["files"] = digests
    model = parse(manifest, d)
    for v in model.variants.values():
        verify_tensors(v)
    tmp = d / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=indent) + "\n")
    os.replace(tmp, where)
    return model


def write_model_dir(out, manifest: dict, files: Mapping[str, bytes], *, indent: int = 2) -> Model:
    """Write a model directory: `files` (name -> content), then its manifest (`write_manifest`).

    Args:
      out: the directory (created with its parents).
      manifest: the manifest's fields without ``files`` (computed; see `write_manifest`).
      files: the variants' (and any other listed) file contents, by plain file name.
      indent: JSON indentation of ``manifest.json``.
    Returns:
      the written model, as `load` would return it.
    Raises:
      ModelError naming the file or field at fault.
    """
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    for fname, content in files.items():
        (d / check_plain_name(fname, str(d / MANIFEST), "files")).write_bytes(content)
    return write_manifest(d, manifest, indent=indent)


def read_variant(model: "Model", variant: Variant) -> bytes:
    """The bytes of a variant's file, checked against the manifest's sha256.

    Backends run these bytes (``model_content``) rather than the path: the file can then be
    replaced on disk (a retrained model, a copy in progress) without the running interpreter,
    which maps its model, seeing it change under it, and what runs is what was verified.
    """
    data = variant.path.read_bytes()
    want = variant.sha256
    got = hashlib.sha256(data).hexdigest()
    if want is not None and got != want:
        raise ModelError(f"{variant.path}: sha256 {got[:16]}… does not match {MANIFEST} 'files' ({str(want)[:16]}…)")
    return data


def verify_tensors(variant: Variant) -> None:
    """Open `variant` in the TFLite interpreter and compare its I/O tensors with the manifest."""
    try:
        ins, outs = tflite.io_details(variant.path)
    except ImportError:
        raise
    except Exception as exc:
        raise ModelError(f"{variant.path}: not a loadable TFLite model ({exc})") from None
    if len(ins) != 1 or len(outs) != 1:
        raise ModelError(f"{variant.path}: expected 1 input and 1 output tensor, got {len(ins)} and {len(outs)}")
    for role, det, spec in (("input", ins[0], variant.input), ("output", outs[0], variant.output)):
        sig = tuple(int(s) for s in det.get("shape_signature", det["shape"]))
        if sig != spec.shape:
            raise ModelError(f"{variant.path}: {role} shape {list(sig)} != manifest "
                             f"variants.{variant.name}.{role}.shape {list(spec.shape)}")
        dtype = np.dtype(det["dtype"]).name
        if dtype != spec.dtype:
            raise ModelError(f"{variant.path}: {role} dtype {dtype} != manifest "
                             f"variants.{variant.name}.{role}.dtype {spec.dtype}")
        scale, zp = det["quantization"]
        if not np.isclose(scale, spec.scale, rtol=1e-6) or zp != spec.zero_point:
            raise ModelError(f"{variant.path}: {role} quantization ({scale}, {zp}) != manifest "
                             f"variants.{variant.name}.{role} ({spec.scale}, {spec.zero_point})")
