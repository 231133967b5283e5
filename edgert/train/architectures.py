"""Keras model builders of edgert's int8 models (TensorFlow imported lazily, `load_tf`).

One conv-autoencoder builder, `build_ae`, takes a layer list (a *spec*): ``edgert train``'s
autoencoder (`ae_spec` of an `AEConfig`), and the per-file models of ``edgert eval skab`` /
``eval nab`` and ``bench --peers`` (`edgert.evaluate.skab`'s ``ConvAEConfig.spec`` /
``EdgeAEConfig.spec``) are all built by it, in the plain form (Conv2DTranspose, for training
and the fixed-shape Edge TPU variants) and in the exact sub-pixel form of the dynamic-batch CPU
variant (`to_subpixel_model` moves trained weights over). Also the classifier CNN
(`build_classifier`) and the seeding that makes training reproducible (`set_seed`).
"""

from __future__ import annotations

import os

import numpy as np

from .config import AEConfig, CNNConfig

def load_tf():
    """TensorFlow, imported on first use (the ``train`` extra): raises ImportError without it.

    Sets the environment first: oneDNN off (it reorders float sums between runs/machines;
    off for reproducible training) and quiet C++ logs."""
    # oneDNN reorders float sums between runs/machines; off for reproducible training.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def set_seed(seed: int) -> None:
    """Seeds Python, numpy, TF/Keras and switches on deterministic TF ops."""
    tf = load_tf()
    import random

    random.seed(seed)
    np.random.seed(seed)
    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def subpixel_taps(k: int, stride: int = 2) -> tuple[int, list[list[tuple[int, int]]]]:
    """How a ``(1, k)`` stride-2 'same' Conv2DTranspose maps onto a stride-1 Conv2D.

    TF's transposed conv computes ``y[o] += x[i] K[t]`` for ``o = stride*i + t - pb`` with
    ``pb = max(k - stride, 0) // 2``. Output position ``o = stride*j + r`` (phase ``r``) thus
    takes ``x[j + d]`` with ``d = (r + pb - t) / stride`` for every tap ``t`` that makes it an
    integer. Returns (``m``, per phase the list of (conv tap ``u = d + m``, ConvT tap ``t``)),
    for a symmetric ``'same'`` Conv2D of width ``2m + 1``.
    """
    pb = max(k - stride, 0) // 2
    pairs = [[((r + pb - t) // stride, t) for t in range(k) if (r + pb - t) % stride == 0]
             for r in range(stride)]
    m = max(abs(d) for ph in pairs for d, _ in ph)
    return m, [[(d + m, t) for d, t in ph] for ph in pairs]


_SHUFFLE_CLS = None


def Shuffle(w: int, f: int, **kw):
    """A Keras layer reshaping ``[.., 1, w', f'] -> [-1, 1, w, f]`` with a constant shape.

    Keras' Reshape computes the batch with SHAPE/PACK, which would make the converted RESHAPE
    output dynamic again (see ``build_subpixel_autoencoder``). The layer class is made on the
    first call (TensorFlow is imported lazily) and registered for ``.keras`` loading as
    ``edgert>Shuffle``; the sub-pixel form of `build_ae` uses it.
    """
    global _SHUFFLE_CLS
    if _SHUFFLE_CLS is None:
        tf = load_tf()

        @tf.keras.utils.register_keras_serializable(package="edgert", name="Shuffle")
        class _Shuffle(tf.keras.layers.Layer):
            def __init__(self, w, f, **kw):
                super().__init__(**kw)
                self.w, self.f = int(w), int(f)

            def call(self, x):
                return tf.keras.ops.reshape(x, (-1, 1, self.w, self.f))

            def compute_output_shape(self, input_shape):
                return (input_shape[0], 1, self.w, self.f)

            def get_config(self):
                return {**super().get_config(), "w": self.w, "f": self.f}

        _SHUFFLE_CLS = _Shuffle
    return _SHUFFLE_CLS(w, f, **kw)
def ae_spec(cfg: AEConfig) -> dict:
    """The `build_ae` spec of ``edgert train``'s autoencoder (see `build_autoencoder`).

    Args:
      cfg: the run's AEConfig (window, channels, kernel, filters, latent, out_kernel, name).
    Returns ``{"name", "subpixel_name", "window", "c_in", "c_out", "layers", "names"}``; the
    layer names (``enc{i}``, ``code``, ``dec_expand``, ``dec{i}``, ``recon``) are those of the
    shipped models' float ``.keras`` files and TFLite graphs.
    Raises ValueError when the window is not divisible by ``2 ** len(cfg.filters)``.
    """
    W, C = cfg.window, len(cfg.channels)
    n_down = len(cfg.filters)
    if W % (2 ** n_down):
        raise ValueError(f"window {W} is not divisible by 2**{n_down} (the autoencoder halves "
                         f"it {n_down} times)")
    w_code = W // 2 ** n_down
    up = list(reversed(cfg.filters))
    name = cfg.name.replace("-", "_")
    return {
        "name": name, "subpixel_name": name + "_sp", "window": W, "c_in": C, "c_out": C,
        "layers": ([("down", f, cfg.kernel) for f in cfg.filters]
                   + [("code", cfg.latent), ("expand", cfg.filters[-1], w_code)]
                   + [("up", f, cfg.kernel) for f in up] + [("conv", C, cfg.out_kernel)]),
        "names": ([f"enc{i}" for i in range(n_down)] + ["code", "dec_expand"]
                  + [f"dec{i}" for i in range(len(up))] + ["recon"]),
    }


def _layer_names(spec: dict) -> list[str]:
    """The spec's layer names: ``spec["names"]``, else ``l0``, ``l1``, …"""
    names = spec.get("names") or [f"l{i}" for i in range(len(spec["layers"]))]
    if len(names) != len(spec["layers"]):
        raise ValueError(f"spec {spec['name']!r}: {len(names)} names for "
                         f"{len(spec['layers'])} layers")
    return list(names)


def build_ae(spec: dict, subpixel: bool = False, batch: int | None = None, rows: int = 1):
    """A conv autoencoder ``[batch, rows, W, C_in] -> [batch, rows, W, C_out]`` from a layer
    list (the one autoencoder builder of edgert).

    Args:
      spec: ``{"name", "window", "c_in", "c_out", "layers": [...]}`` and optionally
        ``"names"`` (one per layer; default ``l{i}``) and ``"subpixel_name"`` (the model name
        of the sub-pixel form; default ``name``). Each layer is a tuple: ``("down", filters,
        k)`` (Conv2D (1,k) stride (1,2) 'same' + ReLU layer ``<name>_relu``), ``("code",
        latent)`` ((1, w) valid linear Conv2D: the window becomes ``[1, 1, latent]``),
        ``("expand", filters, w)`` (Conv2DTranspose (1, w) valid without bias + ReLU layer:
        ``[1, 1, latent] -> [1, w, filters]``), ``("up", filters, k[, bias])``
        (Conv2DTranspose (1,k) stride (1,2) 'same', no bias unless ``bias`` + ReLU layer),
        ``("conv", filters, k[, activation])`` (stride-1 'same' Conv2D), ``("drop", rate)``.
      subpixel: build each "expand" and "up" as its exact sub-pixel equivalent instead (a
        stride-1 Conv2D with ``stride x filters`` outputs and ReLU, named ``<name>_sp``, then a
        constant-shape `Shuffle` ``<name>_shuffle`` interleaving the phases; dropout left out):
        the form of the dynamic-batch CPU variant, weights from `to_subpixel_model`.
      batch: fixed batch size, or None (dynamic).
      rows: rows of the packed ``[1, rows, W, C]`` layout (every kernel is ``(1, k)``, so rows
        never mix); the sub-pixel form takes ``rows == 1`` only.
    Returns the Keras model. Raises ValueError for an unknown layer kind or layers that do not
    map the window back to its width.

    Edge TPU rules: Conv2DTranspose without bias (with one, the converter fuses BiasAdd + ReLU
    into TRANSPOSE_CONV v4, newer than the last edgetpu_compiler accepts; without, it is
    TRANSPOSE_CONV v2 and a separate RELU), ReLU as separate layers after it, no reshapes.
    """
    tf = load_tf()
    L = tf.keras.layers
    if subpixel and rows != 1:
        raise ValueError(f"the sub-pixel form takes one row per window, not {rows}")
    W = spec["window"]
    inp = tf.keras.Input(shape=(rows, W, spec["c_in"]), batch_size=batch, name="x")
    h, w = inp, W
    for ly, n in zip(spec["layers"], _layer_names(spec)):
        kind = ly[0]
        if kind == "down":
            h = L.Conv2D(ly[1], (1, ly[2]), strides=(1, 2), padding="same", name=n)(h)
            h = L.ReLU(name=f"{n}_relu")(h)
            w = (w + 1) // 2
        elif kind == "up":
            bias = bool(ly[3]) if len(ly) > 3 else False
            if subpixel:
                m, _ = subpixel_taps(ly[2])
                h = L.Conv2D(2 * ly[1], (1, 2 * m + 1), padding="same", use_bias=bias,
                             activation="relu", name=f"{n}_sp")(h)
                w *= 2
                h = Shuffle(w, ly[1], name=f"{n}_shuffle")(h)
            else:
                h = L.Conv2DTranspose(ly[1], (1, ly[2]), strides=(1, 2), padding="same",
                                      use_bias=bias, name=n)(h)
                h = L.ReLU(name=f"{n}_relu")(h)
                w *= 2
        elif kind == "code":
            h = L.Conv2D(ly[1], (1, w), padding="valid", name=n)(h)
            w = 1
        elif kind == "expand":
            if subpixel:
                h = L.Conv2D(ly[2] * ly[1], (1, 1), use_bias=False, activation="relu",
                             name=f"{n}_sp")(h)
                h = Shuffle(ly[2], ly[1], name=f"{n}_shuffle")(h)
            else:
                h = L.Conv2DTranspose(ly[1], (1, ly[2]), padding="valid", use_bias=False,
                                      name=n)(h)
                h = L.ReLU(name=f"{n}_relu")(h)
            w = ly[2]
        elif kind == "conv":
            act = ly[3] if len(ly) > 3 else None
            h = L.Conv2D(ly[1], (1, ly[2]), padding="same", activation=act, name=n)(h)
        elif kind == "drop":
            if not subpixel:
                h = L.Dropout(ly[1], name=n)(h)
        else:
            raise ValueError(f"unknown layer kind {kind!r}")
    if w != W:
        raise ValueError(f"layers map window {W} to {w}")
    name = spec.get("subpixel_name", spec["name"]) if subpixel else spec["name"]
    return tf.keras.Model(inp, h, name=name)


def to_subpixel_model(spec: dict, model, batch: int | None = None,
                      check: np.ndarray | None = None):
    """The sub-pixel form of ``spec`` (`build_ae` with ``subpixel=True``) carrying the weights
    of the trained plain-form ``model``.

    Args:
      spec: the `build_ae` spec ``model`` was built from.
      model: the trained Keras model.
      batch: batch of the new model (None: dynamic).
      check: normalized windows: raise (`check_subpixel`) unless both give the same output.
    Returns the new Keras model. Each ConvT tap ``t`` of output phase ``r`` becomes tap ``u``
    of the phase's output group (`subpixel_taps`); the "expand" ConvT kernel
    ``[1, w, f, latent]`` becomes a 1x1 conv with column ``o*f + c``.
    """
    sp = build_ae(spec, subpixel=True, batch=batch)
    src = {layer.name: layer for layer in model.layers}
    for ly, n in zip(spec["layers"], _layer_names(spec)):
        if ly[0] == "up":
            wts = src[n].get_weights()
            K = wts[0]                                  # [1, k, f_out, f_in]
            _, k, fo, fi = K.shape
            m, phases = subpixel_taps(k)
            Wt = np.zeros((1, 2 * m + 1, fi, 2 * fo), np.float32)
            for r, ph in enumerate(phases):
                for u, t in ph:
                    Wt[0, u, :, r * fo:(r + 1) * fo] = K[0, t].T
            # a bias (not Edge-TPU friendly, see build_ae) is the same for both phases
            sp.get_layer(f"{n}_sp").set_weights([Wt] + [np.tile(b, 2) for b in wts[1:]])
        elif ly[0] == "expand":
            K = src[n].get_weights()[0]
            _, wc, f, lat = K.shape
            sp.get_layer(f"{n}_sp").set_weights(
                [np.transpose(K[0], (2, 0, 1)).reshape(1, 1, lat, wc * f)])
        elif ly[0] in ("down", "conv", "code"):
            sp.get_layer(n).set_weights(src[n].get_weights())
    if check is not None:
        check_subpixel(model, sp, check)
    return sp


def check_subpixel(model, sp, check: np.ndarray) -> None:
    """Raise unless the sub-pixel model ``sp`` gives ``model``'s float outputs on ``check``."""
    a = np.asarray(model(check, training=False))
    b = np.asarray(sp(check, training=False))
    err = float(np.abs(a - b).max())
    if not err < 1e-4 * max(1.0, float(np.abs(a).max())):
        raise RuntimeError(f"sub-pixel decoder differs from Conv2DTranspose: {err}")


def build_autoencoder(cfg: AEConfig, batch: int | None = None, rows: int = 1):
    """Keras model ``[batch, rows, W, C] -> [batch, rows, W, C]`` (``batch=None``: dynamic).

    Encoder: one Conv2D ``(1, k)`` stride ``(1, 2)`` + ReLU per entry of ``cfg.filters``, then
    a ``(1, W / 2**len(filters))`` valid Conv2D with ``cfg.latent`` filters and no activation,
    which collapses the window to a ``[1, 1, latent]`` code. Decoder: the mirror image with
    Conv2DTranspose, each followed by its own ReLU layer, and a linear Conv2D with C filters.
    ``rows > 1`` (with ``batch=1``) is the packed layout: every kernel is ``(1, k)``, so the
    rows never mix.

    The Conv2DTranspose layers have no bias on purpose: with a bias, the TFLite converter fuses
    BiasAdd + the following ReLU layer into TRANSPOSE_CONV (fused activation -> op version 4,
    newer than the last edgetpu_compiler accepts). Without one they convert to TRANSPOSE_CONV
    v2 followed by a separate RELU op (checked in the converted model, see ``tflite_ops``).
    """
    return build_ae(ae_spec(cfg), batch=batch, rows=rows)


def build_subpixel_autoencoder(cfg: AEConfig, batch: int | None = None):
    """The same function as ``build_autoencoder`` with each Conv2DTranspose written as its
    exact sub-pixel equivalent: a stride-1 Conv2D with ``stride × filters`` outputs (one group
    per output phase) and a Reshape ``[.., 1, w, stride*f] -> [.., 1, stride*w, f]`` that
    interleaves the phases (ReLU applied before the Reshape: it is elementwise).

    Used for the dynamic-batch CPU variant. A TRANSPOSE_CONV whose batch is dynamic needs its
    output shape computed at run time (SHAPE/STRIDED_SLICE/PACK), which LiteRT treats as a
    dynamic tensor: every op after it is allocated only at the first invoke (no zero-copy
    output view after ``allocate_tensors``) and XNNPACK cannot take it. This form converts to
    CONV_2D + RESHAPE only, whose shapes are all known once the batch is set.
    Weights come from a trained ``build_autoencoder`` model via ``to_subpixel``.
    """
    return build_ae(ae_spec(cfg), subpixel=True, batch=batch)


def to_subpixel(cfg: AEConfig, model, batch: int | None = None, check: np.ndarray | None = None):
    """A ``build_subpixel_autoencoder`` model carrying the weights of the trained ``model``.

    With ``check`` (normalized windows), asserts both give the same float output.
    """
    return to_subpixel_model(ae_spec(cfg), model, batch=batch, check=check)


def build_classifier(cfg: CNNConfig, batch: int | None = None, rows: int = 1):
    """Keras model ``[batch, rows, W, C] -> [batch, rows, 1, K]`` logits (K classes).

    One Conv2D ``(1, k)`` stride ``(1, 2)`` 'same' + ReLU per entry of ``cfg.filters``, then
    AveragePooling2D ``(1, w)`` over the remaining width ``w`` (AVERAGE_POOL_2D: a global
    average per row, phase-invariant), then a 1x1 Conv2D with K filters (the classifier head as
    a CONV_2D, so the rows of a packed ``[1, B, W, C]`` input stay independent; no SOFTMAX:
    the Edge TPU maps it only for 1-D inputs, and the argmax of the logits is the class).
    Converts to CONV_2D (ReLU fused), AVERAGE_POOL_2D and CONV_2D only.
    """
    tf = load_tf()
    L = tf.keras.layers
    if not cfg.class_names:
        raise ValueError("class_names is empty")
    W, C = cfg.window, len(cfg.channels)
    inp = tf.keras.Input(shape=(rows, W, C), batch_size=batch, name="x")
    h = inp
    for i, f in enumerate(cfg.filters):
        h = L.Conv2D(f, (1, cfg.kernel), strides=(1, 2), padding="same", name=f"conv{i}")(h)
        h = L.ReLU(name=f"conv{i}_relu")(h)
    w = int(h.shape[2])
    h = L.AveragePooling2D((1, w), name="pool")(h)
    out = L.Conv2D(len(cfg.class_names), (1, 1), name="logits")(h)
    return tf.keras.Model(inp, out, name=cfg.name.replace("-", "_"))


def clone_with_batch(cfg, model, batch: int | None, rows: int = 1):
    build = build_classifier if isinstance(cfg, CNNConfig) else build_autoencoder
    m = build(cfg, batch=batch, rows=rows)
    m.set_weights(model.get_weights())
    return m
