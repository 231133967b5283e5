"""int8 export: full-integer TFLite conversion (`convert_int8`) of the trained Keras model
into the three variants of a model directory (`export_variants`: dynamic, b1, packed), the
packed variant made by rewriting the b1 flatbuffer (`packed_from_b1`), and `tflite_ops`."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np

from .architectures import clone_with_batch, load_tf, to_subpixel
from .config import AEConfig, CNNConfig
from .int8 import Int8Model


def representative_set(cfg: AEConfig, x_train: np.ndarray, seed: int) -> np.ndarray:
    """Calibration inputs for the quantizer: training windows, and the same × rep_headroom."""
    rng = np.random.default_rng(seed)
    n = min(cfg.rep_windows, len(x_train))
    pick = np.sort(rng.choice(len(x_train), size=n, replace=False))
    base = x_train[pick]
    sets = [base]
    if getattr(cfg, "rep_headroom", 1.0) and getattr(cfg, "rep_headroom", 1.0) != 1.0:
        sets.append(base * np.float32(cfg.rep_headroom))
    return np.concatenate(sets).astype(np.float32)


def convert_int8(model, rep: np.ndarray) -> bytes:
    """Full-integer int8 TFLite (int8 input and output) calibrated on ``rep``
    ``[n, rows, W, C]`` (one sample per row of ``rep``)."""
    tf = load_tf()

    def gen():
        for i in range(len(rep)):
            yield [rep[i : i + 1]]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = gen
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    with contextlib.redirect_stdout(io.StringIO()):  # Keras export chatter
        return conv.convert()


def export_dynamic(cfg, model, rep: np.ndarray) -> bytes:
    """int8 dynamic-batch variant of the trained (batch None) ``model``."""
    if isinstance(cfg, CNNConfig):
        return convert_int8(model, rep)
    if cfg.dyn_decoder == "subpixel":
        return convert_int8(to_subpixel(cfg, model, batch=None, check=rep[:256]), rep)
    if cfg.dyn_decoder == "transpose":
        return convert_int8(model, rep)
    raise ValueError(f"dyn_decoder must be 'subpixel' or 'transpose', not {cfg.dyn_decoder!r}")


def export_b1(cfg, model, rep: np.ndarray) -> bytes:
    """int8 fixed ``[1, 1, W, C]`` variant (Conv2DTranspose kept: TRANSPOSE_CONV for the TPU)."""
    return convert_int8(clone_with_batch(cfg, model, 1), rep)


def packed_from_b1(b1: bytes, rows: int) -> bytes:
    """The packed ``[1, rows, W, C]`` variant made from the converted b1 model itself.

    Rewrites the b1 flatbuffer (no TensorFlow): every activation tensor ``[1, 1, w, c]``
    becomes ``[1, rows, w, c]`` (shape and shape signature), and each TRANSPOSE_CONV's constant
    output shape ``[1, 1, w, c]`` becomes ``[1, rows, w, c]``. Weights, biases and every
    quantization parameter stay b1's bytes, and all kernels are ``(1, k)``, so row j of the
    packed output is exactly what b1 gives for window j. (Converting a rows-B Keras model
    instead calibrates on float activations that TF sums in a shape-dependent order: the
    activation scales then differ from b1's in the last float bits, and a few int8 outputs by
    1 LSB.)
    """
    import flatbuffers

    try:
        from ai_edge_litert import schema_py_generated as S
    except ImportError:  # pragma: no cover
        import tflite as S  # type: ignore
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    m = S.ModelT.InitFromPackedBuf(b1, 0)
    if len(m.subgraphs) != 1:
        raise ValueError(f"expected one subgraph, found {len(m.subgraphs)}")
    g = m.subgraphs[0]
    names = {v: k for k, v in vars(S.BuiltinOperator).items() if not k.startswith("_")}

    def constant(t) -> bool:
        data = m.buffers[t.buffer].data
        return data is not None and len(data) > 0

    for op in g.operators:
        oc = m.operatorCodes[op.opcodeIndex]
        if names.get(max(oc.builtinCode, oc.deprecatedBuiltinCode)) == "TRANSPOSE_CONV":
            t = g.tensors[op.inputs[0]]
            shp = np.frombuffer(bytes(m.buffers[t.buffer].data), "<i4").copy()
            if len(shp) != 4 or shp[0] != 1 or shp[1] != 1:
                raise ValueError(f"TRANSPOSE_CONV output shape {shp.tolist()} is not [1, 1, w, c]")
            shp[1] = rows
            buf = S.BufferT()
            buf.data = np.frombuffer(shp.astype("<i4").tobytes(), np.uint8)
            m.buffers.append(buf)  # a buffer of its own (constant buffers may be shared)
            t.buffer = len(m.buffers) - 1
    for t in g.tensors:
        if constant(t):
            continue
        shape = [int(v) for v in (t.shape if t.shape is not None else [])]
        if len(shape) != 4 or shape[0] != 1 or shape[1] != 1:
            raise ValueError(f"activation tensor {t.name!r} has shape {shape}, not [1, 1, w, c]")
        t.shape = np.array([1, rows] + shape[2:], np.int32)
        if t.shapeSignature is not None and len(t.shapeSignature):
            sig = [int(v) for v in t.shapeSignature]
            t.shapeSignature = np.array([sig[0], rows] + sig[2:], np.int32)
    b = flatbuffers.Builder(len(b1) + 4096)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def export_packed(cfg, model, rep: np.ndarray, rows: int, b1: bytes | None = None) -> bytes:
    """int8 fixed ``[1, rows, W, C]`` variant: ``packed_from_b1`` of the b1 variant."""
    return packed_from_b1(b1 if b1 is not None else export_b1(cfg, model, rep), rows)


def tflite_ops(content: bytes) -> list[str]:
    """Operator names of the (single-subgraph) model in execution order, without TensorFlow."""
    try:
        from ai_edge_litert import schema_py_generated as S
    except ImportError:  # pragma: no cover
        import tflite as S  # type: ignore
    m = S.Model.GetRootAsModel(content, 0)
    names = {v: k for k, v in vars(S.BuiltinOperator).items() if not k.startswith("_")}
    ops = []
    g = m.Subgraphs(0)
    for i in range(g.OperatorsLength()):
        oc = m.OperatorCodes(g.Operators(i).OpcodeIndex())
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        ops.append(f"{names.get(code, code)}/v{oc.Version()}")
    return ops


@dataclass
class Exported:
    """The three int8 variants of one trained model: flatbuffers and their LiteRT runners."""

    dyn_bytes: bytes
    b1_bytes: bytes
    packed_bytes: bytes
    dyn: Int8Model
    b1: Int8Model
    packed: Int8Model


def export_variants(cfg, model, rep: np.ndarray) -> Exported:
    """Converts the trained (batch None) ``model`` to the dynamic, b1 and packed int8 variants,
    all calibrated on the representative set ``rep``."""
    dyn_bytes = export_dynamic(cfg, model, rep)
    b1_bytes = export_b1(cfg, model, rep)
    packed_bytes = packed_from_b1(b1_bytes, cfg.packed_rows)
    return Exported(dyn_bytes, b1_bytes, packed_bytes, Int8Model(dyn_bytes), Int8Model(b1_bytes),
                    Int8Model(packed_bytes))
