"""Offline Edge TPU compatibility check of a ``.tflite`` file (``edgert check-model``).

Reads the TFLite flatbuffer without TensorFlow (``ai_edge_litert.schema_py_generated`` when
importable, else the ``tflite`` package) and applies Coral's documented rules: fully 8-bit
tensors, constant parameters, static shapes, at most 3 innermost dimensions larger than 1, one
subgraph, and every op in the Edge TPU's supported-operations table with its limits. It also
flags op versions newer than the last ``edgetpu_compiler`` (16) can parse.

Like the compiler, it walks the ops in order: the first op that cannot map ends the Edge TPU
segment, and that op and every op after it run on the CPU. Usage::

    edgert check-model model.tflite [--json] [--min-runtime N]

Exit status: 0 every op maps, 1 some or all ops would run on the CPU, 2 the file is unreadable.
With ``--json`` the last stdout line is a JSON object
``{path, mappable, ops: [{index, op, version, ok, reason}], first_unmapped, problems, ...}``.

The verdict is a prediction from the documentation, not the compiler: the compiler can still
leave a documented op on the CPU ("not mapped due to some unspecified limitation", e.g. some
large reshapes). ``edgert compile`` runs the real compiler where it is installed.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------------
# Rules (data). Source: Coral, "TensorFlow models on the Edge TPU", sections "Model
# requirements" and "Supported operations":
#   https://coral.ai/docs/edgetpu/models-intro/#supported-operations
# `runtime` is the table's "Runtime version" column: the minimum Edge TPU runtime that maps the
# op ("All" -> 0). The compiler's -m/--min_runtime_version picks that target
# (https://coral.ai/docs/edgetpu/compiler/); ops that need a newer runtime stay on the CPU.
# `params` are input positions that must be compile-time constants (weights, biases, shapes,
# axes); `int32` are the positions allowed to be int32 (biases and shape/axis inputs). Every
# other input and output must be int8/uint8.
# ---------------------------------------------------------------------------------------------

DOC_URL = "https://coral.ai/docs/edgetpu/models-intro/#supported-operations"

#: Runtime targeted by default (edgetpu_compiler -m). 13 is the oldest runtime that maps
#: TRANSPOSE_CONV, EXPAND_DIMS, QUANTIZE, ...; a model compiled for 14 (compiler 16's own
#: default) refuses to load on runtime 13 ("Package requires runtime version (14) ...").
DEFAULT_MIN_RUNTIME = 13

NONE_ACT, RELU_ACTS = "NONE", ("NONE", "RELU", "RELU6")
EIGHT_BIT = ("int8", "uint8")


@dataclass(frozen=True)
class OpRule:
    runtime: int = 0  # minimum Edge TPU runtime (0 = all)
    params: tuple = ()  # inputs that must be compile-time constants
    int32: tuple = ()  # inputs that may be int32 (biases, shape/axis inputs)
    wide: tuple = ()  # inputs that may be int16/int32 (LSTM state and gate parameters)
    fused_activation: bool = True  # False: the doc says "No fused activation function"
    limits: str = ""  # the doc's "Known limitations" text (13+ runtimes)
    check: str = ""  # name of an extra check below (_check_<name>)


SUPPORTED_OPS = {
    "ADD": OpRule(),
    "AVERAGE_POOL_2D": OpRule(fused_activation=False, limits="No fused activation function."),
    "CONCATENATION": OpRule(fused_activation=False, check="concat", limits=(
        "No fused activation function. If any input is a compile-time constant tensor, there "
        "must be only 2 inputs, and this constant tensor must be all zeroes.")),
    "CONV_2D": OpRule(params=(1, 2), int32=(2,), check="dilation",
                      limits="Must use the same dilation in x and y dimensions."),
    "DEPTHWISE_CONV_2D": OpRule(params=(1, 2), int32=(2,), check="dilation",
                                limits="Must use the same dilation in x and y dimensions."),
    "EXPAND_DIMS": OpRule(runtime=13, params=(1,), int32=(1,)),
    "FULLY_CONNECTED": OpRule(params=(1, 2), int32=(2,), check="fully_connected", limits=(
        "Only the default format is supported for fully-connected weights. Output tensor is "
        "one-dimensional.")),
    "L2_NORMALIZATION": OpRule(),
    "LOGISTIC": OpRule(),
    "LSTM": OpRule(runtime=14, wide=tuple(range(1, 24)), limits="Unidirectional LSTM only."),
    "UNIDIRECTIONAL_SEQUENCE_LSTM": OpRule(runtime=14, wide=tuple(range(1, 24)),
                                           limits="Unidirectional LSTM only."),
    "MAXIMUM": OpRule(),
    "MAX_POOL_2D": OpRule(fused_activation=False, limits="No fused activation function."),
    "MEAN": OpRule(params=(1,), int32=(1,), check="mean", limits=(
        "No reduction in batch dimension. If a z-reduction, the z-dimension must be multiple "
        "of 4.")),
    "MINIMUM": OpRule(),
    "MUL": OpRule(),
    "PACK": OpRule(runtime=13, check="pack", limits="No packing in batch dimension."),
    "PAD": OpRule(params=(1,), int32=(1,), check="pad", limits="No padding in batch dimension."),
    "PRELU": OpRule(runtime=13, params=(1,), check="prelu", limits=(
        "Alpha must be 1-dimensional (only the innermost dimension can be >1 size).")),
    "QUANTIZE": OpRule(runtime=13, check="quantize"),
    "REDUCE_MAX": OpRule(runtime=14, params=(1,), int32=(1,), check="reduce_batch",
                         limits="Cannot operate on the batch dimension."),
    "REDUCE_MIN": OpRule(runtime=14, params=(1,), int32=(1,), check="reduce_batch",
                         limits="Cannot operate on the batch dimension."),
    "RELU": OpRule(),
    "RELU6": OpRule(),
    "RELU_N1_TO_1": OpRule(),
    "RESHAPE": OpRule(params=(1,), int32=(1,),
                      limits="Certain reshapes might not be mapped for large tensor sizes."),
    "RESIZE_BILINEAR": OpRule(params=(1,), int32=(1,), limits=(
        "Input/output is a 3-dimensional tensor. Depending on input/output size, this "
        "operation may not be mapped to the Edge TPU to avoid loss in precision.")),
    "RESIZE_NEAREST_NEIGHBOR": OpRule(params=(1,), int32=(1,), limits=(
        "Input/output is a 3-dimensional tensor. Depending on input/output size, this "
        "operation may not be mapped to the Edge TPU to avoid loss in precision.")),
    "RSQRT": OpRule(runtime=14),
    "SLICE": OpRule(params=(1, 2), int32=(1, 2)),
    "SOFTMAX": OpRule(check="softmax",
                      limits="Supports only 1-D input tensor with a max of 16,000 elements."),
    "SPACE_TO_DEPTH": OpRule(),
    "SPLIT": OpRule(params=(0,), int32=(0,), check="split",
                    limits="No splitting in batch dimension."),
    "SQUARED_DIFFERENCE": OpRule(runtime=14),
    "SQUEEZE": OpRule(),
    "STRIDED_SLICE": OpRule(params=(1, 2, 3), int32=(1, 2, 3), check="strided_slice", limits=(
        "Supported only when all strides are equal to 1 (that is, effectively a Stride op), "
        "and with ellipsis-axis-mask == 0, and new-axis-max == 0.")),
    "SUB": OpRule(),
    "SUM": OpRule(runtime=13, params=(1,), int32=(1,), check="reduce_batch",
                  limits="Cannot operate on the batch dimension."),
    "TANH": OpRule(),
    "TRANSPOSE": OpRule(runtime=14, params=(1,), int32=(1,)),
    "TRANSPOSE_CONV": OpRule(runtime=13, params=(0, 1, 3), int32=(0, 3)),
}

# Op versions edgetpu_compiler 16.0 (2021, the last release) can parse. The compiler reads the
# model with the TFLite op resolver of its time; a newer op version makes it refuse the whole
# model: "ERROR: Didn't find op for builtin opcode 'TRANSPOSE_CONV' version '4' ... Invalid
# model ... Model could not be parsed" (google-coral/edgetpu#845). The table is the highest
# version of each op whose minimum TFLite runtime is <= 2.5.0 (the TFLite of mid-2021, when
# compiler 16 was released), from TensorFlow's tensorflow/lite/tools/versioning/
# runtime_version.cc (TRANSPOSE_CONV v4 = fused activation, TFLite 2.13; CONV_2D v6 = 2.9;
# FULLY_CONNECTED v10 = 2.11; TILE v3 = 2.8; ...). Opcodes after HASHTABLE_SIZE (139, the last
# op of TFLite 2.5) are unknown to the compiler altogether. Only TRANSPOSE_CONV v4 is confirmed
# in the field; the 2.5 cut-off for the others is inferred from the compiler's release date.
COMPILER_MAX_VERSION = {
    "ABS": 3, "ADD": 3, "ARG_MAX": 2, "ARG_MIN": 2, "AVERAGE_POOL_2D": 3, "BATCH_MATMUL": 4,
    "BATCH_TO_SPACE_ND": 3, "BROADCAST_TO": 3, "CAST": 1, "CONCATENATION": 3, "CONV_2D": 5,
    "DEPTHWISE_CONV_2D": 6, "DEPTH_TO_SPACE": 2, "DEQUANTIZE": 4, "DIV": 2, "ELU": 1,
    "EMBEDDING_LOOKUP": 3, "EQUAL": 3, "EXP": 1, "EXPAND_DIMS": 1, "FILL": 3, "FLOOR_DIV": 2,
    "FLOOR_MOD": 1, "FULLY_CONNECTED": 9, "GATHER": 5, "GATHER_ND": 3, "GREATER": 2,
    "GREATER_EQUAL": 2, "HARD_SWISH": 1, "L2_NORMALIZATION": 2, "LEAKY_RELU": 2, "LESS": 2,
    "LESS_EQUAL": 2, "LOG": 1, "LOGISTIC": 3, "LOG_SOFTMAX": 2, "LSTM": 4, "MAXIMUM": 4,
    "MAX_POOL_2D": 3, "MEAN": 3, "MINIMUM": 4, "MIRROR_PAD": 2, "MUL": 4, "NEG": 1,
    "NOT_EQUAL": 3, "PACK": 3, "PAD": 3, "PADV2": 3, "POW": 1, "PRELU": 1, "QUANTIZE": 2,
    "RANGE": 1, "REDUCE_MAX": 3, "REDUCE_MIN": 3, "REDUCE_PROD": 1, "RELU": 3, "RELU6": 3,
    "RELU_N1_TO_1": 1, "RESHAPE": 1, "RESIZE_BILINEAR": 4, "RESIZE_NEAREST_NEIGHBOR": 4,
    "REVERSE_V2": 3, "RSQRT": 2, "SELECT": 2, "SELECT_V2": 1, "SHAPE": 1, "SLICE": 5,
    "SOFTMAX": 3, "SPACE_TO_BATCH_ND": 3, "SPACE_TO_DEPTH": 2, "SPLIT": 4, "SPLIT_V": 2,
    "SQRT": 1, "SQUARE": 1, "SQUARED_DIFFERENCE": 2, "SQUEEZE": 2, "STRIDED_SLICE": 5, "SUB": 5,
    "SUM": 2, "TANH": 3, "TILE": 2, "TOPK_V2": 2, "TRANSPOSE": 5, "TRANSPOSE_CONV": 3,
    "UNIDIRECTIONAL_SEQUENCE_LSTM": 3, "UNPACK": 4, "WHERE": 1,
}
COMPILER_LAST_OPCODE = 139  # BuiltinOperator.HASHTABLE_SIZE

VERSION_HINTS = {
    ("TRANSPOSE_CONV", 4): "v4 is TRANSPOSE_CONV with a fused activation (TFLite 2.13+): put the "
                           "ReLU in its own layer so the converter emits TRANSPOSE_CONV v2/v3 + RELU",
}

EDGETPU_CUSTOM_OP = "edgetpu-custom-op"


class CheckError(Exception):
    """The file cannot be read as a TFLite model; the message names the path."""


# ---------------------------------------------------------------------------------------------
# Flatbuffer access (either generated schema module)
# ---------------------------------------------------------------------------------------------

SCHEMA_MODULES = ("ai_edge_litert.schema_py_generated", "tflite")
_schema_cache: dict = {}


def load_schema(names=None):
    """Return ``(module, name)`` of the first importable TFLite schema module (of `names`,
    default `SCHEMA_MODULES`).

    Raises:
      CheckError saying what to install when neither is importable.
    """
    errors = []
    for name in (SCHEMA_MODULES if names is None else names):
        if name in _schema_cache:
            return _schema_cache[name], name
        try:
            mod = importlib.import_module(name)
            for attr in ("Model", "BuiltinOperator", "TensorType", "BuiltinOptions",
                         "ActivationFunctionType"):
                getattr(mod, attr)
        except Exception as exc:  # ImportError, or a broken/partial install
            errors.append(f"{name}: {exc}")
            continue
        _schema_cache[name] = mod
        return mod, name
    raise CheckError("cannot read .tflite files: no TFLite flatbuffer schema is importable "
                     "(install ai-edge-litert, which provides ai_edge_litert.schema_py_generated, "
                     "or the small 'tflite' package); tried " + "; ".join(errors))


def _enum_names(cls) -> dict:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


@dataclass
class Tensor:
    index: int
    name: str
    dtype: str
    shape: tuple  # shape_signature when present (-1 = dynamic), else shape
    const: bool
    data: bytes | None  # constant data (None when not constant)
    scale: float | None
    zero_point: int | None

    def values(self):
        """Constant data as a flat integer array (int32/int64/int8/uint8 tensors), else None."""
        if self.data is None:
            return None
        dt = {"int32": np.int32, "int64": np.int64, "int8": np.int8, "uint8": np.uint8}.get(self.dtype)
        if dt is None or len(self.data) % np.dtype(dt).itemsize:
            return None
        return np.frombuffer(self.data, dtype=dt)

    def describe(self) -> str:
        return f"{_short(self.name)} {self.dtype}{list(self.shape)}"


@dataclass
class Op:
    index: int
    name: str  # BuiltinOperator name, or "CUSTOM(<code>)"
    code: int
    version: int
    custom: str | None
    inputs: list  # Tensor or None (optional input left out)
    outputs: list
    options: object  # the generated options table, or None
    activation: str | None  # fused activation name, when the op has one


@dataclass
class Graph:
    schema: str
    n_subgraphs: int
    inputs: list  # tensor indices
    outputs: list
    tensors: list
    ops: list
    min_runtime_version: str | None  # TFLite metadata, when present


def _s(b) -> str:
    if b is None:
        return ""
    return b.decode("utf-8", "replace") if isinstance(b, (bytes, bytearray)) else str(b)


def read_model(path, schema_names=None) -> Graph:
    """Parse a .tflite file into a `Graph` (first subgraph).

    Raises:
      CheckError naming `path` when the file is missing, truncated or not a TFLite flatbuffer.
    """
    path = Path(path)
    try:
        buf = path.read_bytes()
    except OSError as exc:
        raise CheckError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise CheckError(f"{path}: not a TFLite model (no 'TFL3' flatbuffer identifier; "
                         f"{len(buf)} bytes)")
    S, schema_name = load_schema(schema_names)
    try:
        return _read(S, schema_name, buf, path)
    except CheckError:
        raise
    except Exception as exc:  # struct.error, IndexError, ValueError ... from a damaged file
        raise CheckError(f"{path}: damaged or truncated TFLite flatbuffer "
                         f"({type(exc).__name__}: {exc})") from None


def _read(S, schema_name, buf: bytes, path: Path) -> Graph:
    n = len(buf)
    if int.from_bytes(buf[0:4], "little") >= n:
        raise CheckError(f"{path}: truncated TFLite flatbuffer (root table past the end, {n} bytes)")

    def length(value, what):  # every vector element takes at least 4 bytes
        if value < 0 or value * 4 > n:
            raise CheckError(f"{path}: damaged TFLite flatbuffer ({what} count {value} "
                             f"does not fit in {n} bytes)")
        return value

    op_names = _enum_names(S.BuiltinOperator)
    type_names = _enum_names(S.TensorType)
    act_names = _enum_names(S.ActivationFunctionType)
    opt_names = _enum_names(S.BuiltinOptions)
    m = S.Model.GetRootAs(buf, 0)
    n_sub = length(m.SubgraphsLength(), "subgraph")
    if n_sub < 1:
        raise CheckError(f"{path}: TFLite model without a subgraph")
    n_buffers = length(m.BuffersLength(), "buffer")

    def buffer_data(bi):
        if bi <= 0 or bi >= n_buffers:
            return None
        b = m.Buffers(bi)
        if b is None:
            return None
        off = getattr(b, "Offset", lambda: 0)() or 0
        if off > 1:  # data stored after the flatbuffer (models > 2 GB)
            size = b.Size()
            if off + size > n:
                raise CheckError(f"{path}: truncated (buffer {bi} ends at {off + size} of {n} bytes)")
            return buf[off:off + size] if size else None
        if b.DataIsNone() or b.DataLength() == 0:
            return None
        data = b.DataAsNumpy()  # raises ValueError when the vector runs past the end
        return data.tobytes()

    min_rt = None
    for i in range(length(m.MetadataLength(), "metadata")):
        md = m.Metadata(i)
        if _s(md.Name()) == "min_runtime_version":
            d = buffer_data(md.Buffer())
            if d:
                min_rt = d.split(b"\0", 1)[0].decode("ascii", "replace") or None

    sg = m.Subgraphs(0)
    tensors = []
    for ti in range(length(sg.TensorsLength(), "tensor")):
        t = sg.Tensors(ti)
        shape = tuple(int(v) for v in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        if t.ShapeSignatureLength():
            shape = tuple(int(v) for v in t.ShapeSignatureAsNumpy())
        data = None if t.IsVariable() else buffer_data(t.Buffer())
        scale = zp = None
        q = t.Quantization()
        if q is not None and q.ScaleLength():
            scale = float(q.Scale(0))
            zp = int(q.ZeroPoint(0)) if q.ZeroPointLength() else 0
        tensors.append(Tensor(ti, _s(t.Name()), type_names.get(t.Type(), f"type{t.Type()}").lower(),
                              shape, data is not None, data, scale, zp))

    def tensor(idx):
        if idx < 0:
            return None
        if idx >= len(tensors):
            raise CheckError(f"{path}: damaged TFLite flatbuffer (tensor index {idx} out of "
                             f"range, {len(tensors)} tensors)")
        return tensors[idx]

    codes = []
    for ci in range(length(m.OperatorCodesLength(), "operator code")):
        oc = m.OperatorCodes(ci)
        code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
        custom = _s(oc.CustomCode()) if oc.CustomCode() is not None else None
        codes.append((code, int(oc.Version()), custom))
    ops = []
    for oi in range(length(sg.OperatorsLength(), "operator")):
        o = sg.Operators(oi)
        ci = o.OpcodeIndex()
        if ci >= len(codes):
            raise CheckError(f"{path}: damaged TFLite flatbuffer (opcode index {ci} out of range)")
        code, version, custom = codes[ci]
        name = op_names.get(code, f"OPCODE_{code}")
        if name == "CUSTOM":
            name = f"CUSTOM({custom})"
        ins = [tensor(int(v)) for v in o.InputsAsNumpy()] if o.InputsLength() else []
        outs = [tensor(int(v)) for v in o.OutputsAsNumpy()] if o.OutputsLength() else []
        options = activation = None
        otype = o.BuiltinOptionsType()
        if otype:
            cls = getattr(S, opt_names.get(otype, ""), None)
            tab = o.BuiltinOptions()
            if isinstance(cls, type) and tab is not None:
                options = cls()
                options.Init(tab.Bytes, tab.Pos)
                if hasattr(options, "FusedActivationFunction"):
                    a = options.FusedActivationFunction()
                    activation = act_names.get(a, f"activation{a}")
        ops.append(Op(oi, name, code, version, custom, ins, outs, options, activation))
    g_in = [int(v) for v in sg.InputsAsNumpy()] if sg.InputsLength() else []
    g_out = [int(v) for v in sg.OutputsAsNumpy()] if sg.OutputsLength() else []
    for idx in g_in + g_out:
        tensor(idx)
    return Graph(schema_name, n_sub, g_in, g_out, tensors, ops, min_rt)


# ---------------------------------------------------------------------------------------------
# Per-op checks (the "Known limitations" column)
# ---------------------------------------------------------------------------------------------

def _axes(t: Tensor, rank: int):
    v = t.values() if t is not None else None
    if v is None:
        return None
    return sorted({int(a) % rank for a in v}) if rank else []


def _check_dilation(op: Op, problems, notes):
    o = op.options
    if o is not None and hasattr(o, "DilationHFactor"):
        h, w = o.DilationHFactor(), o.DilationWFactor()
        if h != w:
            problems.append(f"dilation {h}x{w}: the Edge TPU needs the same dilation in x and y")


def _check_fully_connected(op: Op, problems, notes):
    o = op.options
    if o is not None and hasattr(o, "WeightsFormat") and o.WeightsFormat() != 0:
        problems.append("non-default (shuffled) weights format: only the default format maps")
    out = op.outputs[0] if op.outputs else None
    if out is not None and sum(1 for d in out.shape if d != 1) > 1:
        problems.append(f"output {out.describe()} is not one-dimensional "
                        f"(the Edge TPU's FULLY_CONNECTED output is 1-D)")


def _check_mean(op: Op, problems, notes):
    _check_reduce_batch(op, problems, notes)
    x = op.inputs[0]
    if x is None or not x.shape:
        return
    axes = _axes(op.inputs[1] if len(op.inputs) > 1 else None, len(x.shape))
    z = len(x.shape) - 1
    if axes and z in axes and x.shape[z] > 0 and x.shape[z] % 4:
        problems.append(f"reduces the z (channel) dimension of size {x.shape[z]}, which must be "
                        f"a multiple of 4")


def _check_reduce_batch(op: Op, problems, notes):
    x = op.inputs[0]
    if x is None or len(x.shape) < 2:
        return
    axes = _axes(op.inputs[1] if len(op.inputs) > 1 else None, len(x.shape))
    if axes and 0 in axes:
        problems.append("reduces along the batch dimension (axis 0)")


def _check_pack(op: Op, problems, notes):
    o = op.options
    if o is not None and hasattr(o, "Axis") and op.outputs and op.outputs[0] is not None:
        rank = len(op.outputs[0].shape)
        if rank >= 2 and o.Axis() % rank == 0:
            problems.append("packs along the batch dimension (axis 0)")


def _check_pad(op: Op, problems, notes):
    p = op.inputs[1] if len(op.inputs) > 1 else None
    v = p.values() if p is not None else None
    if v is not None and v.size >= 2 and (v.size // 2) >= 2 and (int(v[0]) or int(v[1])):
        problems.append(f"pads the batch dimension (axis 0 by {int(v[0])}, {int(v[1])})")


def _check_prelu(op: Op, problems, notes):
    a = op.inputs[1] if len(op.inputs) > 1 else None
    if a is not None and sum(1 for d in a.shape[:-1] if d != 1):
        problems.append(f"alpha {list(a.shape)} is not 1-D: only its innermost dimension may be "
                        f"> 1 (Keras PReLU needs shared_axes=[1, 2])")


def _check_quantize(op: Op, problems, notes):
    x = op.inputs[0] if op.inputs else None
    y = op.outputs[0] if op.outputs else None
    if x is not None and x.dtype not in EIGHT_BIT:
        problems.append(f"quantizes {x.dtype} input {_short(x.name)}: only 8-bit to 8-bit (re)quantization "
                        f"maps to the Edge TPU")
    elif y is not None and y.dtype not in EIGHT_BIT:
        problems.append(f"quantizes to {y.dtype}: only 8-bit to 8-bit (re)quantization maps")


def _check_softmax(op: Op, problems, notes):
    x = op.inputs[0] if op.inputs else None
    if x is None or any(d < 0 for d in x.shape):
        return
    if sum(1 for d in x.shape if d != 1) > 1:
        problems.append(f"input {list(x.shape)} is not 1-D (the Edge TPU's SOFTMAX takes a 1-D "
                        f"tensor)")
    elif math.prod(x.shape) > 16000:
        problems.append(f"input has {math.prod(x.shape)} elements (max 16,000)")


def _check_split(op: Op, problems, notes):
    x = op.inputs[1] if len(op.inputs) > 1 else None
    if x is None or len(x.shape) < 2:
        return
    axes = _axes(op.inputs[0], len(x.shape))
    if axes and 0 in axes:
        problems.append("splits along the batch dimension (axis 0)")


def _check_strided_slice(op: Op, problems, notes):
    o = op.options
    if o is not None:
        if getattr(o, "EllipsisMask", lambda: 0)():
            problems.append("ellipsis_mask != 0")
        if getattr(o, "NewAxisMask", lambda: 0)():
            problems.append("new_axis_mask != 0")
    s = op.inputs[3] if len(op.inputs) > 3 else None
    v = s.values() if s is not None else None
    if v is not None and np.any(v != 1):
        problems.append(f"strides {v.tolist()}: only strides of 1 map")


def _check_concat(op: Op, problems, notes):
    consts = [t for t in op.inputs if t is not None and t.const]
    if not consts:
        return
    if len(op.inputs) != 2:
        problems.append("has a constant input among more than 2 inputs (a constant input is "
                        "only allowed as the all-zero second operand of a 2-input concat)")
    else:
        v = consts[0].values()
        if v is None or np.any(v != (consts[0].zero_point or 0)):
            problems.append(f"constant input {_short(consts[0].name)} is not all zeros")


_CHECKS = {name[len("_check_"):]: fn for name, fn in list(globals().items())
           if name.startswith("_check_") and callable(fn)}


# ---------------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------------

@dataclass
class OpVerdict:
    index: int
    op: str
    version: int
    ok: bool  # runs on the Edge TPU
    reason: str | None  # why it runs on the CPU (None when ok)
    problems: list = field(default_factory=list)  # the op's own rule violations
    notes: list = field(default_factory=list)  # caveats that do not stop it mapping
    inputs: list = field(default_factory=list)  # tensor names
    outputs: list = field(default_factory=list)
    runtime: int = 0  # minimum Edge TPU runtime the op needs

    def as_json(self) -> dict:
        d = {"index": self.index, "op": self.op, "version": self.version, "ok": self.ok,
             "reason": self.reason}
        if self.notes:
            d["notes"] = self.notes
        return d


@dataclass
class Report:
    path: str
    schema: str
    min_runtime: int  # the Edge TPU runtime targeted (-m)
    ops: list
    problems: list
    first_unmapped: OpVerdict | None
    compiler_refuses: bool  # edgetpu_compiler 16 would not parse the model at all
    compiled: bool  # already an edgetpu_compiler output (has an edgetpu-custom-op)
    required_runtime: int  # lowest Edge TPU runtime that maps every mapped op
    tflite_min_runtime: str | None

    @property
    def mappable(self) -> bool:
        return not self.problems and all(o.ok for o in self.ops)

    @property
    def tpu_ops(self) -> int:
        return sum(1 for o in self.ops if o.ok)

    def as_json(self) -> dict:
        f = self.first_unmapped
        return {
            "path": self.path,
            "mappable": self.mappable,
            "ops": [o.as_json() for o in self.ops],
            "first_unmapped": None if f is None else {
                "index": f.index, "op": f.op, "version": f.version, "reason": f.reason,
                "inputs": f.inputs, "outputs": f.outputs, "whole_model": self.compiler_refuses},
            "problems": self.problems,
            "tpu_ops": self.tpu_ops,
            "cpu_ops": len(self.ops) - self.tpu_ops,
            "compiler_refuses": self.compiler_refuses,
            "compiled": self.compiled,
            "min_runtime": self.min_runtime,
            "required_runtime": self.required_runtime,
            "tflite_min_runtime": self.tflite_min_runtime,
            "schema": self.schema,
        }


def _short(name: str) -> str:
    """First component of a converter-joined tensor name ("a;b;c" -> "a;…")."""
    return name.split(";", 1)[0] + (";…" if ";" in name else "")


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def _names(ts) -> str:
    seen, out = set(), []
    for t in ts:
        if t.index not in seen:
            seen.add(t.index)
            out.append(f"{_short(t.name)} {t.dtype}{list(t.shape)}")
    return ", ".join(out)


def _op_problems(op: Op, graph: Graph, target: int):
    """The op's own rule violations, notes and required runtime (ignores its position)."""
    problems, notes = [], []
    base = op.name
    rule = SUPPORTED_OPS.get(base)
    if op.custom is not None:
        if op.custom == EDGETPU_CUSTOM_OP:
            notes.append("already compiled for the Edge TPU")
            return problems, notes, 0
        problems.append(f"custom op {op.custom!r} is not supported by the Edge TPU")
        return problems, notes, 0
    if rule is None:
        problems.append(f"{base} is not in the Edge TPU's supported operations")
        return problems, notes, 0
    if rule.runtime > target:
        problems.append(f"{base} needs Edge TPU runtime >= {rule.runtime} "
                        f"(compiling for runtime {target}: raise --min-runtime)")
    wrong_type, dynamic, too_deep = [], [], []
    for pos, t in enumerate(op.inputs):
        if t is None:
            continue
        if pos in rule.params:
            if not t.const:
                problems.append(f"input {pos} ({_short(t.name)}) is computed at run time; the "
                                f"Edge TPU needs constant parameters")
            allowed = EIGHT_BIT + (("int32",) if pos in rule.int32 else ())
        elif pos in rule.wide:
            allowed = EIGHT_BIT + ("int16", "int32")
        else:
            allowed = EIGHT_BIT
        if base != "QUANTIZE" and t.dtype not in allowed:  # QUANTIZE: its own check
            wrong_type.append(t)
    for t in op.outputs:
        if t is not None and t.dtype not in EIGHT_BIT and base != "QUANTIZE":
            wrong_type.append(t)
    for t in [*op.inputs, *op.outputs]:
        if t is None or t.const:
            continue
        if any(d < 0 for d in t.shape):
            dynamic.append(t)
        elif len(t.shape) > 3 and any(d != 1 for d in t.shape[:-3]):
            too_deep.append(t)
    if wrong_type:
        types = sorted({t.dtype for t in wrong_type})
        problems.append(f"{'/'.join(types)} tensors ({_names(wrong_type)}); the Edge TPU needs "
                        f"int8/uint8" + (" (int32 only for biases and shape/axis inputs)"
                                         if "int32" in types else ""))
    if dynamic:
        problems.append(f"dynamic shapes (-1 in shape_signature: {_names(dynamic)}); the Edge "
                        f"TPU needs static shapes: export a fixed-batch model")
    if too_deep:
        problems.append(f"more than 3 dimensions larger than 1 ({_names(too_deep)}): only the 3 "
                        f"innermost may be > 1, so a batch > 1 cannot run on the Edge TPU (lay B "
                        f"windows out as [1, B, W, C])")
    if op.activation is not None and op.activation != NONE_ACT:
        if not rule.fused_activation:
            problems.append(f"fused {op.activation} activation: {base} must have none on the "
                            f"Edge TPU")
        elif op.activation not in RELU_ACTS:
            notes.append(f"fused {op.activation} activation (Coral documents only ReLU/ReLU6 "
                         f"fusions; keep it as a separate op if the compiler refuses it)")
    if rule.check:
        _CHECKS[rule.check](op, problems, notes)
    if base in ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"):
        notes.append(rule.limits)
    seen = set()
    problems = [p for p in problems if not (p in seen or seen.add(p))]
    return problems, notes, rule.runtime


def _too_new(op: Op) -> str | None:
    if op.custom is not None:
        return None
    if op.code > COMPILER_LAST_OPCODE:
        return (f"{op.name} did not exist when edgetpu_compiler 16 was built (opcode {op.code}); "
                f"the compiler cannot parse the model")
    top = COMPILER_MAX_VERSION.get(op.name)
    if top is not None and op.version > top:
        hint = VERSION_HINTS.get((op.name, op.version))
        return (f"{op.name} v{op.version} is newer than edgetpu_compiler 16 can parse (max "
                f"v{top}): it refuses the whole model (\"Didn't find op for builtin opcode "
                f"'{op.name}' version '{op.version}'\")" + (f"; {hint}" if hint else ""))
    return None


def _boundary(op: Op, graph: Graph) -> str | None:
    """Reason if `op` is a float QUANTIZE/DEQUANTIZE at the graph's edge, else None.

    The compiler leaves a float->8-bit QUANTIZE of a graph input and an 8-bit->float DEQUANTIZE
    of a graph output on the CPU ("Operation is working on an unsupported data type") without
    ending the Edge TPU segment between them.
    """
    if op.name == "QUANTIZE" and op.inputs and op.inputs[0] is not None:
        x = op.inputs[0]
        if x.dtype not in EIGHT_BIT and x.index in graph.inputs:
            return (f"QUANTIZE of the {x.dtype} graph input {_short(x.name)} runs on the CPU "
                    f"before the Edge TPU segment (give the model int8/uint8 inputs to avoid it)")
    if op.name == "DEQUANTIZE" and op.outputs and op.outputs[0] is not None:
        y = op.outputs[0]
        if y.dtype not in EIGHT_BIT and y.index in graph.outputs:
            return (f"DEQUANTIZE to the {y.dtype} graph output {_short(y.name)} runs on the CPU "
                    f"after the Edge TPU segment (give the model int8/uint8 outputs to avoid it)")
    return None


def check_graph(graph: Graph, path: str = "", min_runtime: int = DEFAULT_MIN_RUNTIME) -> Report:
    """Apply the Edge TPU rules to a parsed `Graph`."""
    verdicts, problems = [], []
    cut = refuse = None
    required = 0
    for op in graph.ops:
        own, notes, runtime = _op_problems(op, graph, min_runtime)
        v = OpVerdict(op.index, op.name, op.version, True, None, own, notes,
                      [t.name for t in op.inputs if t is not None],
                      [t.name for t in op.outputs if t is not None], runtime)
        too_new = _too_new(op)
        if too_new:
            v.problems.insert(0, too_new)
            if refuse is None:
                refuse = v
        boundary = _boundary(op, graph)
        if boundary and not too_new:
            v.ok, v.reason, v.problems = False, boundary, [boundary]
        elif v.problems:
            v.ok, v.reason = False, "; ".join(v.problems)
            if cut is None:
                cut = v
        verdicts.append(v)
    if graph.n_subgraphs != 1:
        problems.append(f"the model has {graph.n_subgraphs} subgraphs (control flow); the Edge TPU "
                        f"compiler needs exactly one: ops in subgraphs 1..{graph.n_subgraphs - 1} "
                        f"run on the CPU")
    if not graph.ops:
        problems.append("the model has no operators")
    compiled = [v for v in verdicts if v.op == f"CUSTOM({EDGETPU_CUSTOM_OP})"]
    if compiled:  # an edgetpu_compiler output: only its custom op runs on the Edge TPU
        refuse = cut = None
        for v in verdicts:
            if v not in compiled:
                v.ok, v.reason = False, (f"outside the compiled {EDGETPU_CUSTOM_OP}: the "
                                         f"compiler left it on the CPU")
                v.problems = [v.reason]
                cut = cut or v
    first = refuse or cut
    for v in verdicts:
        if refuse is not None:
            if v is not refuse:
                v.ok = False
                v.reason = (f"the compiler refuses the whole model (op #{refuse.index} "
                            f"{refuse.op} v{refuse.version})"
                            + (f"; also: {'; '.join(v.problems)}" if v.problems else ""))
        elif cut is not None and v.index > cut.index and not compiled:
            v.ok = False
            v.reason = (f"after op #{cut.index} {cut.op}, the first op that cannot map: the Edge "
                        f"TPU runs one segment, everything after it runs on the CPU"
                        + (f"; also: {'; '.join(v.problems)}" if v.problems else ""))
        if v.ok:
            required = max(required, v.runtime)
    for v in verdicts:
        problems.extend(f"op #{v.index} {v.op}: {p}" for p in v.problems)
    return Report(path, graph.schema, min_runtime, verdicts, problems, first,
                  refuse is not None, bool(compiled), required, graph.min_runtime_version)


def check(path, min_runtime: int = DEFAULT_MIN_RUNTIME, schema_names=None) -> Report:
    """Read `path` and check it against the Edge TPU rules.

    Raises:
      CheckError (naming the path) when the file cannot be read as a TFLite model.
    """
    return check_graph(read_model(path, schema_names), str(path), min_runtime)


def io_specs(path, schema_names=None) -> dict:
    """``{"input": spec, "output": spec}`` of a single-input single-output model, in the
    manifest's format (shape with -1 for dynamic dims, dtype, scale, zero_point)."""
    g = read_model(path, schema_names)
    out = {}
    for role, idxs in (("input", g.inputs), ("output", g.outputs)):
        if len(idxs) != 1:
            raise CheckError(f"{path}: expected 1 {role} tensor, got {len(idxs)}")
        t = g.tensors[idxs[0]]
        out[role] = {"shape": list(t.shape), "dtype": t.dtype, "scale": t.scale,
                     "zero_point": t.zero_point}
    return out


# ---------------------------------------------------------------------------------------------
# Text report and CLI
# ---------------------------------------------------------------------------------------------

def format_report(r: Report) -> str:
    """Human-readable report: verdict, the first op on the CPU and why, problems, op table."""
    n = len(r.ops)
    lines = []
    f = r.first_unmapped
    if r.mappable:
        need = (f"needs Edge TPU runtime >= {r.required_runtime}" if r.required_runtime
                else "any Edge TPU runtime")
        lines.append(f"{r.path}: all {n} ops map to the Edge TPU ({need}; checked for runtime "
                     f"{r.min_runtime})")
    else:
        lines.append(f"{r.path}: {r.tpu_ops} of {n} ops map to the Edge TPU; "
                     f"{n - r.tpu_ops} would run on the CPU")
        if f is not None:
            lines.append(f"first op on the CPU: #{f.index} {f.op} v{f.version}")
            lines.append(f"  inputs:  {', '.join(_short(x) for x in f.inputs) or '-'}")
            lines.append(f"  outputs: {', '.join(_short(x) for x in f.outputs) or '-'}")
            lines.append(f"  why: {f.reason}")
            if r.compiler_refuses:
                lines.append(f"  edgetpu_compiler 16 cannot parse this model, so all {n} ops "
                             f"run on the CPU")
            elif r.compiled:
                lines.append(f"  compiled model: the {n - r.tpu_ops} ops outside the "
                             f"{EDGETPU_CUSTOM_OP} run on the CPU")
            else:
                span = f"#{f.index}" if f.index == n - 1 else f"#{f.index}..#{n - 1}"
                lines.append(f"  that op and every op after it ({span}) run on the CPU")
        # Problems up to the first unmapped op (later ops run on the CPU anyway).
        stop = f.index if f is not None and not r.compiled else n
        shown = [p for p in r.problems if not p.startswith("op #")
                 or int(p[4:p.index(" ", 4)]) <= stop]
        if shown:
            lines.append("problems:")
            lines.extend(f"  - {p}" for p in shown)
        if len(shown) < len(r.problems):
            lines.append(f"  (+{len(r.problems) - len(shown)} more in the ops after "
                         f"#{stop}; --json lists them)")
    lines.append("ops:")
    for v in r.ops:
        if v.ok:
            extra = "TPU" + ("  note: " + "; ".join(v.notes) if v.notes else "")
        elif v is f:
            extra = "CPU  <- first op on the CPU"
        elif r.compiler_refuses:
            extra = f"CPU  (model refused, see #{f.index})"
        elif f is not None and v.index > f.index and not r.compiled:
            own = f"; also: {_clip('; '.join(v.problems), 110)}" if v.problems else ""
            extra = f"CPU  (after #{f.index}){own}"
        else:
            extra = f"CPU  {v.reason}"
        lines.append(f"  #{v.index:<3d} {v.op + ' v' + str(v.version):<28s} {extra}")
    lines.append(f"rules: {DOC_URL}")
    return "\n".join(lines)


def cmd_check_model(args) -> int:
    """``edgert check-model PATH [--json] [--min-runtime N]``; exit 0 mapped, 1 not, 2 unreadable."""
    try:
        r = check(args.path, min_runtime=args.min_runtime)
    except CheckError as exc:
        print(f"edgert check-model: {exc}", file=sys.stderr)
        if getattr(args, "json", False):
            print(json.dumps({"path": str(args.path), "mappable": False, "error": str(exc)}))
        return 2
    print(format_report(r), flush=True)
    if args.json:
        print(json.dumps(r.as_json()), flush=True)
    return 0 if r.mappable else 1


def add_check_parser(sub):
    c = sub.add_parser("check-model", help="check a .tflite file against the Edge TPU rules "
                                           "(offline, no compiler needed)",
                       description=__doc__.split("\n\n")[0])
    c.add_argument("path", metavar="PATH", help=".tflite file")
    c.add_argument("--json", action="store_true", help="also print a JSON summary as the last line")
    c.add_argument("--min-runtime", type=int, default=DEFAULT_MIN_RUNTIME, dest="min_runtime",
                   metavar="N", help=f"Edge TPU runtime to target, as edgetpu_compiler -m "
                                     f"(default {DEFAULT_MIN_RUNTIME})")
    c.set_defaults(fn=cmd_check_model)
    return c


def add_parsers(sub):
    """Register ``check-model`` on an argparse sub-parser set."""
    add_check_parser(sub)


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="edgert-check-model")
    sub = p.add_subparsers(dest="cmd", required=True)
    add_parsers(sub)
    args = p.parse_args(["check-model", *(sys.argv[1:] if argv is None else argv)])
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
