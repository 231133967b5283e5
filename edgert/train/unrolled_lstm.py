"""The ``lstm-ae`` graph: an LSTM autoencoder unrolled by hand from ops the Edge TPU lists.

Why by hand (measured with TF 2.21, Keras 3.15, tf-keras 2.21, ai-edge-litert 2.3):

* Keras 3's ``LSTM`` converts to WHILE loops, and the full-int8 calibrator then segfaults
  (tensorflow#75140).
* ``LSTM(unroll=True)`` converts and runs, but its graph starts with UNPACK (not in Coral's
  supported operations: every later op would run on the CPU), SPLITs the gates in float32
  between DEQUANTIZE and QUANTIZE (not full-integer), PACKs along the batch axis, and
  ``RepeatVector`` adds TILE v3, which ``edgetpu_compiler`` 16 cannot parse at all.
* tf-keras' fused UNIDIRECTIONAL_SEQUENCE_LSTM keeps its h/c state in variable tensors across
  invokes (wrong scores unless ``reset_all_variables()`` before each one), and its int8 version
  of this autoencoder is far from the float model.

Here each step is built from Keras layers whose weights are shared over the steps: per gate a
Dense on the step's input (with the bias) and a Dense on the previous h (no bias), Add,
sigmoid/tanh, Multiply. After conversion: STRIDED_SLICE (strides 1), FULLY_CONNECTED, ADD,
LOGISTIC, TANH, MUL, RESHAPE, one CONCATENATION and one CONV_2D, all int8 (int32 biases), all
in Coral's table; the batch-1 graph has ~50 ops per time step (W=32, 16 units: 1573 ops).
"""

from __future__ import annotations

GATES = "ifgo"  # input, forget, cell candidate, output


class _Cell:
    """One LSTM's weights: per gate a Dense on the input (bias) and one on h (no bias)."""

    def __init__(self, tf, units: int, fan_in: int, name: str):
        L = self.L = tf.keras.layers
        # Keras' LSTM initialization: Glorot-uniform over the four gates' joint kernel
        # (fan_out 4 x units), forget-gate bias 1 (unit_forget_bias), orthogonal recurrent
        # weights; the few-epoch fits here need them
        lim = (6.0 / (fan_in + 4 * units)) ** 0.5
        init = tf.keras.initializers.RandomUniform(-lim, lim)
        self.x = {g: L.Dense(units, kernel_initializer=init,
                             bias_initializer="ones" if g == "f" else "zeros",
                             name=f"{name}_x{g}") for g in GATES}
        self.h = {g: L.Dense(units, use_bias=False, kernel_initializer="orthogonal",
                             name=f"{name}_h{g}") for g in GATES}

    def step(self, xproj: dict, h, c):
        """One time step. Args: ``xproj`` gate -> the input's projection ``[B, units]``; ``h``,
        ``c`` the previous state (None: zero, the first step). Returns the new ``(h, c)``."""
        L = self.L
        pre = {g: xproj[g] if h is None else L.Add()([xproj[g], self.h[g](h)]) for g in GATES}
        i = L.Activation("sigmoid")(pre["i"])
        f = L.Activation("sigmoid")(pre["f"])
        g = L.Activation("tanh")(pre["g"])
        o = L.Activation("sigmoid")(pre["o"])
        ig = L.Multiply()([i, g])
        c = ig if c is None else L.Add()([L.Multiply()([f, c]), ig])
        return L.Multiply()([o, L.Activation("tanh")(c)]), c


def lstm_autoencoder(tf, inp, window: int, channels: int, units: int):
    """The autoencoder's output ``[B, 1, W, C]`` from input ``inp`` ``[B, 1, W, C]``.

    Encoder: an LSTM over the W rows (row t taken by Cropping2D + Reshape); its last h is the
    code. Decoder: an LSTM whose input at every step is the code (projected once, not tiled);
    its W hidden states are concatenated to ``[B, 1, W, units]`` and a 1x1 Conv2D maps them
    to the C channels.
    """
    L = tf.keras.layers
    W, C = int(window), int(channels)
    enc, dec = _Cell(tf, units, C, "enc"), _Cell(tf, units, units, "dec")
    h = c = None
    for t in range(W):
        xt = L.Reshape((C,))(L.Cropping2D(((0, 0), (t, W - 1 - t)))(inp))
        h, c = enc.step({g: enc.x[g](xt) for g in GATES}, h, c)
    code = {g: dec.x[g](h) for g in GATES}
    hs, h, c = [], None, None
    for _ in range(W):
        h, c = dec.step(code, h, c)
        hs.append(L.Reshape((1, 1, units))(h))
    z = L.Concatenate(axis=2, name="steps")(hs)
    return L.Conv2D(C, 1, name="recon")(z)
