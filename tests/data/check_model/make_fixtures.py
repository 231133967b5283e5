"""Build the small .tflite fixtures used by tests/test_check_model.py.

Run with a TensorFlow environment (the tests themselves only read the committed outputs):

    /work/tfvenv/bin/python tests/data/check_model/make_fixtures.py

Each model is tiny (a few KB) and breaks exactly one Edge TPU rule, except ``mappable``:

- ``mappable.tflite``       int8, fixed batch 1: CONV_2D, MAX_POOL_2D, ADD, CONCATENATION,
                            RESHAPE, FULLY_CONNECTED, SOFTMAX (every op maps)
- ``float32.tflite``        the same kind of graph left in float32 (no quantization)
- ``dynamic_batch.tflite``  int8 with batch None and a Reshape: SHAPE/STRIDED_SLICE/PACK build
                            the run-time shape; every tensor has -1 in its shape signature
- ``rank4.tflite``          int8, fixed batch 2: [2, 4, 8, 3] tensors have 4 dims > 1
- ``cpu_middle.tflite``     int8: CONV_2D, LEAKY_RELU (not supported by the Edge TPU), then
                            more CONV_2D that therefore run on the CPU too
- ``tconv_relu_v4.tflite``  int8: Conv2DTranspose(activation="relu") -> TRANSPOSE_CONV v4
                            (fused activation), newer than edgetpu_compiler 16 accepts
- ``float_io.tflite``       int8 inside, float32 input/output: QUANTIZE first, DEQUANTIZE last
- ``compiled_edgetpu.tflite`` the shape of a fully compiled model: ``mappable`` with its ops
                            replaced by one ``edgetpu-custom-op`` (dummy custom options; it
                            cannot run, it only lets the checker recognise compiled files)

The random weights and the representative data are seeded, but TensorFlow's converter output
is not guaranteed to be byte-identical across versions; the tests check structure only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

OUT = Path(__file__).resolve().parent
keras = tf.keras


def _rep(shape, n=16, seed=0):
    rng = np.random.default_rng(seed)
    shape = tuple(1 if s is None else s for s in shape)

    def gen():
        for _ in range(n):
            yield [rng.standard_normal(shape).astype(np.float32)]
    return gen


def convert(model, rep_shape, quantize=True, io_type=tf.int8):
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = _rep(rep_shape)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if io_type is not None:
            conv.inference_input_type = io_type
            conv.inference_output_type = io_type
    return conv.convert()


def mappable(quantize=True):
    x = keras.Input(shape=(1, 16, 3), batch_size=1, name="x")
    a = keras.layers.Conv2D(8, (1, 3), padding="same", activation="relu", name="conv_a")(x)
    b = keras.layers.Conv2D(8, (1, 3), padding="same", activation="relu", name="conv_b")(x)
    s = keras.layers.Add(name="add")([a, b])
    c = keras.layers.Concatenate(name="concat")([s, a])
    p = keras.layers.MaxPooling2D((1, 2), name="pool")(c)
    f = keras.layers.Reshape((8 * 16,), name="flatten")(p)
    d = keras.layers.Dense(4, name="dense")(f)
    y = keras.layers.Softmax(name="softmax")(d)
    return keras.Model(x, y), (1, 1, 16, 3)


def dynamic_batch():
    x = keras.Input(shape=(1, 16, 3), name="x")  # batch None
    a = keras.layers.Conv2D(4, (1, 3), padding="same", activation="relu", name="conv")(x)
    r = keras.layers.Reshape((4, 16), name="reshape")(a)
    y = keras.layers.Dense(2, name="dense")(r)
    return keras.Model(x, y), (1, 1, 16, 3)


def rank4():
    x = keras.Input(shape=(4, 8, 3), batch_size=2, name="x")
    y = keras.layers.Conv2D(4, (1, 3), padding="same", activation="relu", name="conv")(x)
    return keras.Model(x, y), (2, 4, 8, 3)


def cpu_middle():
    x = keras.Input(shape=(1, 8, 3), batch_size=1, name="x")
    a = keras.layers.Conv2D(4, (1, 3), padding="same", activation="relu", name="conv0")(x)
    # LEAKY_RELU (int8, v2) runs in TFLite but is not in the Edge TPU's operation table.
    # (tf.tile would do too, but TF 2.21 emits TILE v3, newer than edgetpu_compiler 16 parses,
    # which makes the compiler refuse the whole model instead of cutting the graph there.)
    t = keras.layers.LeakyReLU(negative_slope=0.1, name="leaky")(a)
    b = keras.layers.Conv2D(4, (1, 3), padding="same", activation="relu", name="conv1")(t)
    y = keras.layers.Conv2D(3, (1, 3), padding="same", name="conv2")(b)
    return keras.Model(x, y), (1, 1, 8, 3)


def tconv_relu_v4():
    x = keras.Input(shape=(1, 8, 3), batch_size=1, name="x")
    a = keras.layers.Conv2D(4, (1, 3), padding="same", activation="relu", name="conv")(x)
    # A non-zero bias keeps BiasAdd in the graph; the converter then fuses BiasAdd + Relu
    # into the TRANSPOSE_CONV (a zero bias is folded away and the Relu stays separate).
    t = keras.layers.Conv2DTranspose(4, (1, 3), strides=(1, 2), padding="same",
                                     activation="relu", bias_initializer="random_normal",
                                     name="tconv_relu")(a)
    y = keras.layers.Conv2D(3, (1, 3), padding="same", name="out")(t)
    return keras.Model(x, y), (1, 1, 8, 3)


def fake_compiled(tflite: bytes) -> bytes:
    """Replace every op of a model by one edgetpu-custom-op from graph input to output."""
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as S

    m = S.ModelT.InitFromPackedBuf(bytearray(tflite), 0)
    code = S.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = S.BuiltinOperator.CUSTOM
    code.customCode = b"edgetpu-custom-op"
    code.version = 1
    m.operatorCodes = [code]
    sg = m.subgraphs[0]
    op = S.OperatorT()
    op.opcodeIndex = 0
    op.inputs, op.outputs = list(sg.inputs), list(sg.outputs)
    op.customOptions = list(b"fake")
    sg.operators = [op]
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def main() -> int:
    keras.utils.set_random_seed(0)
    built = {}
    m, s = mappable()
    built["mappable"] = convert(m, s)
    built["float_io"] = convert(m, s, io_type=None)
    built["compiled_edgetpu"] = fake_compiled(built["mappable"])
    m, s = mappable()
    built["float32"] = convert(m, s, quantize=False)
    for name, fn in (("dynamic_batch", dynamic_batch), ("rank4", rank4),
                     ("cpu_middle", cpu_middle), ("tconv_relu_v4", tconv_relu_v4)):
        m, s = fn()
        built[name] = convert(m, s)
    for name, data in built.items():
        (OUT / f"{name}.tflite").write_bytes(data)
        print(f"{name}.tflite: {len(data)} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
