"""Compile model directories for the Edge TPU with ``edgetpu_compiler`` (``edgert compile``).

``edgert compile MODEL_DIR... [--min-runtime N] [--out DIR]`` co-compiles the fixed-batch
variants of all the given model directories in one compiler run::

    edgetpu_compiler -s -m N -o OUT a_b1.tflite b_b1.tflite

so that the models share one Edge TPU's on-chip parameter cache (Coral: "Co-compiling multiple
models", https://coral.ai/docs/edgetpu/compiler/; the models compiled together must run on the
same Edge TPU, the first one listed gets the cache first). It parses the compiler's report into
mapped / CPU ops per model, copies each ``<file>_edgetpu.tflite`` into its model directory and
adds an ``edgetpu`` variant (with its sha256) to the directory's ``manifest.json``.

``edgetpu_compiler`` exists only for x86-64 Debian/Ubuntu, from Coral's apt repository (package
``edgetpu-compiler``); ``edgert check-model`` gives the same verdict offline.

Exit status: 0 compiled and every op mapped, 1 the compiler failed or left ops on the CPU (the
compiled files are still written in the second case), 2 no compiler / unusable model directory.
"""

from __future__ import annotations

import json
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

COMPILER = "edgetpu_compiler"
DEFAULT_MIN_RUNTIME = 13  # == edgetpu_check.DEFAULT_MIN_RUNTIME (not imported: keeps this light)
MAPPED = "Mapped to Edge TPU"
VARIANT = "edgetpu"
TIMEOUT_S = 600

NOT_INSTALLED = (
    "edgetpu_compiler is not on PATH. It comes only from Coral's apt repository and runs only "
    "on x86-64 Debian/Ubuntu (package edgetpu-compiler; see https://coral.ai/docs/edgetpu/"
    "compiler/): it is not on PyPI, not in Debian, and there is no ARM build (compile on an "
    "x86-64 machine, not on the Dev Board). `edgert check-model MODEL.tflite` gives the same "
    "mapped/CPU verdict offline.")


class CompileError(RuntimeError):
    """Compilation could not run or failed; the message says why."""


# ---------------------------------------------------------------------------------------------
# Log parsing
# ---------------------------------------------------------------------------------------------

@dataclass
class OpStatus:
    op: str
    count: int
    status: str

    @property
    def mapped(self) -> bool:
        return self.status == MAPPED


@dataclass
class ModelLog:
    """The compiler's report for one input model."""

    input: str
    output: str | None = None
    input_size: int | None = None  # bytes
    output_size: int | None = None
    on_chip_bytes: int | None = None  # "On-chip memory used for caching model parameters"
    on_chip_remaining_bytes: int | None = None
    off_chip_bytes: int | None = None  # "Off-chip memory used for streaming uncached ..."
    tpu_subgraphs: int | None = None
    total_ops: int | None = None
    tpu_ops_reported: int | None = None  # "Number of operations that will run on Edge TPU"
    cpu_ops_reported: int | None = None
    operation_log: str | None = None
    operators: list = field(default_factory=list)  # OpStatus rows of the -s table

    @property
    def mapped(self) -> dict:
        out = {}
        for r in self.operators:
            if r.mapped:
                out[r.op] = out.get(r.op, 0) + r.count
        return out

    @property
    def unmapped(self) -> list:
        return [r for r in self.operators if not r.mapped]

    @property
    def tpu_ops(self) -> int | None:
        if self.tpu_ops_reported is not None:
            return self.tpu_ops_reported
        if self.operators:
            return sum(self.mapped.values())
        return self.total_ops if self.total_ops is not None and self.tpu_subgraphs else None

    @property
    def cpu_ops(self) -> int | None:
        if self.cpu_ops_reported is not None:
            return self.cpu_ops_reported
        if self.operators:
            return sum(r.count for r in self.unmapped)
        if self.total_ops is not None and self.tpu_ops is not None:
            return self.total_ops - self.tpu_ops
        return None

    @property
    def fully_mapped(self) -> bool:
        return self.cpu_ops == 0 and bool(self.tpu_ops)


@dataclass
class CompileLog:
    version: str | None = None  # "16.0.384591198"
    success: bool = False
    compile_ms: int | None = None
    errors: list = field(default_factory=list)
    models: list = field(default_factory=list)  # ModelLog

    def model(self, path) -> ModelLog | None:
        """The report of the input model `path` (matched by file name)."""
        name = Path(str(path)).name
        for m in self.models:
            if Path(m.input).name == name:
                return m
        return None


_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "KB": 1000, "MB": 1000 ** 2}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMG]?i?B)\s*$")
_OP_ROW = re.compile(r"^([A-Z][A-Z0-9_]*(?:\([^)]*\))?)\s+(\d+)\s+(\S.*?)\s*$")
_KEYS = {
    "Input model": ("input", str), "Input": ("input", str),
    "Output model": ("output", str), "Output": ("output", str),
    "Input size": ("input_size", "size"), "Output size": ("output_size", "size"),
    "On-chip memory used for caching model parameters": ("on_chip_bytes", "size"),
    "On-chip memory remaining for caching model parameters": ("on_chip_remaining_bytes", "size"),
    "Off-chip memory used for streaming uncached model parameters": ("off_chip_bytes", "size"),
    "Number of Edge TPU subgraphs": ("tpu_subgraphs", int),
    "Total number of operations": ("total_ops", int),
    "Operation log": ("operation_log", str),
    "Number of operations that will run on Edge TPU": ("tpu_ops_reported", int),
    "Number of operations that will run on CPU": ("cpu_ops_reported", int),
}
_ERRORS = re.compile(r"^(ERROR:.*|Error:.*|Invalid model:.*|Model could not be parsed.*|"
                     r"Internal compiler error.*|Compilation failed.*|Model not quantized.*)$")


def parse_size(text: str) -> int | None:
    """``"1.23MiB"`` -> bytes (rounded); None when not a size."""
    m = _SIZE.match(text)
    if not m:
        return None
    return int(round(float(m.group(1)) * _UNITS.get(m.group(2), 1)))


def parse_log(text: str) -> CompileLog:
    """Parse ``edgetpu_compiler -s`` output (stdout + stderr, or a ``*_edgetpu.log`` file).

    Recognises the header ("Edge TPU Compiler version X", "Model(s) compiled successfully in N
    ms."), one block per input model ("Input model:", sizes, on-/off-chip memory, op counts,
    "Operation log:"), the ``Operator  Count  Status`` table after each block, and error lines
    ("ERROR: ...", "Invalid model: ...", "Model could not be parsed", "Internal compiler error").
    """
    log = CompileLog()
    cur: ModelLog | None = None
    in_table = False
    for raw in text.splitlines():
        line = raw.rstrip()
        s = line.strip()
        if not s:
            continue
        m = re.match(r"^Edge TPU Compiler version\s+(\S+)", s)
        if m:
            log.version = m.group(1)
            continue
        m = re.match(r"^Models? (?:successfully )?compiled successfully in (\d+)\s*ms", s)
        if m:
            log.success, log.compile_ms = True, int(m.group(1))
            continue
        if re.match(r"^Operator\s+Count\s+Status$", s):
            in_table = True
            if cur is None:  # an operation log file: no "Input model:" line before
                cur = ModelLog(input="")
                log.models.append(cur)
            continue
        key, sep, value = s.partition(":")
        if sep and key in _KEYS:
            in_table = False
            attr, conv = _KEYS[key]
            value = value.strip()
            if attr == "input":
                if cur is not None and cur.input == "" and not cur.operators:
                    cur.input = value
                else:
                    cur = ModelLog(input=value)
                    log.models.append(cur)
                continue
            if cur is None:
                cur = ModelLog(input="")
                log.models.append(cur)
            if conv == "size":
                setattr(cur, attr, parse_size(value))
            elif conv is int:
                setattr(cur, attr, int(value) if value.isdigit() else None)
            else:
                setattr(cur, attr, value)
            continue
        if in_table and cur is not None:
            m = _OP_ROW.match(s)
            if m:
                cur.operators.append(OpStatus(m.group(1), int(m.group(2)), m.group(3)))
                continue
            in_table = False
        if _ERRORS.match(s) and not s.startswith("Model successfully compiled"):
            log.errors.append(s)
    if log.errors:
        log.success = False
    return log


# ---------------------------------------------------------------------------------------------
# Running the compiler and updating manifests
# ---------------------------------------------------------------------------------------------

def find_compiler() -> str | None:
    """Path of ``edgetpu_compiler`` on PATH, else None."""
    return shutil.which(COMPILER)


def compile_models(model_paths, out_dir, min_runtime: int, compiler: str | None = None,
                   timeout: float = TIMEOUT_S):
    """Run ``edgetpu_compiler -s -m N -o OUT MODEL...`` once on all `model_paths`.

    Returns:
      ``(CompileLog, stdout+stderr text, argv)``.
    Raises:
      CompileError if the compiler is absent, cannot start or times out.
    """
    exe = compiler or find_compiler()
    if exe is None:
        raise CompileError(NOT_INSTALLED)
    argv = [exe, "-s", "-m", str(int(min_runtime)), "-o", str(out_dir), *map(str, model_paths)]
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           errors="replace", timeout=timeout)
    except FileNotFoundError:
        raise CompileError(NOT_INSTALLED) from None
    except OSError as exc:  # e.g. an x86-64 binary on an ARM board: Exec format error
        raise CompileError(f"cannot run {exe}: {exc} (edgetpu_compiler runs only on x86-64 "
                           f"Linux, machine here: {platform.machine()})") from None
    except subprocess.TimeoutExpired:
        raise CompileError(f"{exe} did not finish within {timeout:.0f} s") from None
    log = parse_log(p.stdout)
    if p.returncode != 0:
        log.success = False
        if not log.errors:
            log.errors.append(f"{Path(exe).name} exited with status {p.returncode}")
    return log, p.stdout, argv


def edgetpu_name(fname: str) -> str:
    """``motor-ae_b1.tflite`` -> ``motor-ae_b1_edgetpu.tflite`` (the compiler's naming)."""
    stem = fname[:-len(".tflite")] if fname.endswith(".tflite") else fname
    return f"{stem}_edgetpu.tflite"


def manifest_entry(model, vname: str, mlog: ModelLog, clog: CompileLog, min_runtime: int,
                   co_compiled: list) -> dict:
    """The manifest variant for the compiled form of `model`'s variant `vname`."""
    v = model.variants[vname]
    spec = lambda s: {"shape": list(s.shape), "dtype": s.dtype, "scale": s.scale,  # noqa: E731
                      "zero_point": s.zero_point}
    return {
        "file": edgetpu_name(v.path.name),
        "batch": v.batch,
        "backend": "edgetpu",
        "source": v.path.name,
        "source_variant": vname,
        "input": spec(v.input),
        "output": spec(v.output),
        "compiler_version": clog.version,
        "min_runtime": int(min_runtime),
        "tpu_ops": mlog.tpu_ops,
        "cpu_ops": mlog.cpu_ops,
        "mapped": mlog.mapped,
        "unmapped": [asdict(r) for r in mlog.unmapped],
        "tpu_subgraphs": mlog.tpu_subgraphs,
        "on_chip_memory_bytes": mlog.on_chip_bytes,
        "off_chip_memory_bytes": mlog.off_chip_bytes,
        "co_compiled_with": [n for n in co_compiled if n != v.path.name],
    }


def update_manifest(model_dir, entries: dict) -> dict:
    """Add `entries` ({variant name: entry}) to ``model_dir/manifest.json``; the files must
    already be in `model_dir`. Written by `edgert.models.write_manifest`, the one writer: it
    records every file's sha256 and checks the result as `load` would, atomically.

    Returns:
      the updated manifest.
    """
    from .models import MANIFEST, ModelError, write_manifest

    d = Path(model_dir)
    m = json.loads((d / MANIFEST).read_text())
    variants = m.setdefault("variants", {})
    for vname, entry in entries.items():
        fpath = d / entry["file"]
        if not fpath.is_file():
            raise ModelError(f"{fpath}: missing (compile output not copied into {d})")
        variants[vname] = entry
    m.setdefault("files", {})
    write_manifest(d, m)
    return m


def _fixed_variants(model) -> list:
    """(variant name, Variant) of the fixed-batch, not yet compiled variants."""
    return [(k, v) for k, v in model.variants.items()
            if v.batch is not None and k != VARIANT and not k.startswith(VARIANT + "_")
            and not v.path.name.endswith("_edgetpu.tflite")]


def cmd_compile(args) -> int:
    """``edgert compile MODEL_DIR... [--min-runtime N] [--out DIR] [--json]``."""
    from . import edgetpu_check, models

    if find_compiler() is None:
        print(f"edgert compile: {NOT_INSTALLED}", file=sys.stderr)
        return 2
    jobs = []  # (model, vname, Variant)
    for d in args.model_dirs:
        try:
            m = models.load(d)
        except (models.ModelError, ImportError) as exc:
            print(f"edgert compile: {exc}", file=sys.stderr)
            return 2
        fixed = _fixed_variants(m)
        if not fixed:
            print(f"edgert compile: {m.dir}: no fixed-batch variant to compile (the Edge TPU "
                  f"needs static shapes; export one with batch 1)", file=sys.stderr)
            return 2
        jobs.extend((m, k, v) for k, v in fixed)
    names = [v.path.name for _, _, v in jobs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        print(f"edgert compile: several model directories have a file named {', '.join(dup)}; "
              f"the compiler writes one output per file name, rename them", file=sys.stderr)
        return 2

    for m, k, v in jobs:  # the offline prediction, for comparison with the compiler's verdict
        try:
            r = edgetpu_check.check(v.path, min_runtime=args.min_runtime)
            verdict = ("all ops map" if r.mappable else
                       f"{r.tpu_ops}/{len(r.ops)} ops map, first on the CPU: #"
                       f"{r.first_unmapped.index} {r.first_unmapped.op}" if r.first_unmapped
                       else f"{r.tpu_ops}/{len(r.ops)} ops map")
            print(f"{v.path.name}: check-model predicts {verdict}")
        except edgetpu_check.CheckError as exc:
            print(f"{v.path.name}: check-model cannot read it ({exc})")

    with tempfile.TemporaryDirectory(prefix="edgert-compile-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        try:
            clog, text, argv = compile_models([v.path for _, _, v in jobs], out, args.min_runtime)
        except CompileError as exc:
            print(f"edgert compile: {exc}", file=sys.stderr)
            return 2
        (out / "edgetpu_compiler.log").write_text(text)
        print(f"$ {shlex.join(argv)}")
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        if not clog.success:
            why = "; ".join(clog.errors) or "no 'compiled successfully' line in its output"
            print(f"edgert compile: the compiler failed: {why}. Nothing was written; "
                  f"`edgert check-model` names the op at fault.", file=sys.stderr)
            return 1
        updates, summary, all_mapped = {}, [], True
        for m, k, v in jobs:
            mlog = clog.model(v.path)
            produced = out / edgetpu_name(v.path.name)
            if mlog is None or not produced.is_file():
                what = (f"gave no report for {v.path.name}" if mlog is None
                        else f"wrote no {produced}")
                print(f"edgert compile: the compiler reported success but {what}; nothing was "
                      f"written", file=sys.stderr)
                return 1
            vname = VARIANT if len(_fixed_variants(m)) == 1 else f"{VARIANT}_{k}"
            entry = manifest_entry(m, k, mlog, clog, args.min_runtime, names)
            updates.setdefault(m.dir, (m, {}))[1][vname] = (entry, produced)
            all_mapped &= mlog.fully_mapped
            summary.append({"model": m.name, "dir": str(m.dir), "variant": vname, **entry})
        for d, (m, entries) in updates.items():
            for vname, (entry, produced) in entries.items():
                shutil.copyfile(produced, d / entry["file"])
            update_manifest(d, {vname: e for vname, (e, _) in entries.items()})
    for s in summary:
        cpu = f", {s['cpu_ops']} on the CPU ({', '.join(u['op'] for u in s['unmapped'])})" \
            if s["cpu_ops"] else ""
        on_chip = s["on_chip_memory_bytes"]
        print(f"{s['dir']}/{s['file']}: variant {s['variant']!r}, {s['tpu_ops']} ops on the "
              f"Edge TPU{cpu}; on-chip parameters "
              f"{'?' if on_chip is None else f'{on_chip / 1024:.1f} KiB'}, off-chip "
              f"{s['off_chip_memory_bytes'] or 0} B; runtime >= {s['min_runtime']}")
    if not all_mapped:
        print("edgert compile: some ops run on the CPU (see above); `edgert check-model` says why",
              file=sys.stderr)
    if args.json:
        print(json.dumps({"compiler_version": clog.version, "all_mapped": all_mapped,
                          "models": summary}))
    return 0 if all_mapped else 1


def add_compile_parser(sub):
    c = sub.add_parser("compile", help="co-compile model directories for the Edge TPU "
                                       "(needs edgetpu_compiler, x86-64 Linux)",
                       description=__doc__.split("\n\n")[0])
    c.add_argument("model_dirs", nargs="+", metavar="MODEL_DIR",
                   help="model directories (or shipped model names); their fixed-batch variants "
                        "are compiled together to share one Edge TPU's parameter cache")
    c.add_argument("--min-runtime", type=int, default=DEFAULT_MIN_RUNTIME, dest="min_runtime",
                   metavar="N",
                   help="lowest Edge TPU runtime the output must load on (edgetpu_compiler -m; "
                        "default 13; TRANSPOSE_CONV needs >= 13)")
    c.add_argument("--out", metavar="DIR", help="keep the compiler's outputs and logs here "
                                                "(default: a temporary directory)")
    c.add_argument("--json", action="store_true", help="also print a JSON summary as the last line")
    c.set_defaults(fn=cmd_compile)
    return c


def add_parsers(sub):
    """Register ``compile`` on an argparse sub-parser set."""
    add_compile_parser(sub)
