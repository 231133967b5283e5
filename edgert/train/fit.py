"""Fitting fresh models on normalized windows: `train_autoencoder` (MSE, cosine-decayed
Adam) and `train_classifier_model` (per-epoch shuffles and channel gains, label smoothing);
both seeded (`set_seed`), so a run is reproducible."""

from __future__ import annotations

import numpy as np

from .architectures import build_autoencoder, build_classifier, load_tf, set_seed
from .config import AEConfig, CNNConfig
from .progress import Progress


def train_autoencoder(cfg: AEConfig, x_train: np.ndarray, seed: int, verbose: int = 0,
                      label: str = "autoencoder"):
    """Fits a fresh autoencoder on normalized windows ``[n, 1, W, C]``; returns (model, history)."""
    tf = load_tf()
    set_seed(seed)
    model = build_autoencoder(cfg, batch=None)
    steps = cfg.epochs * int(np.ceil(len(x_train) / cfg.batch_size))
    lr = tf.keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=steps,
                                                   alpha=0.02)
    model.compile(optimizer=tf.keras.optimizers.Adam(lr), loss="mse")
    cb = Progress(label, cfg.epochs).keras_callback()
    hist = model.fit(x_train, x_train, batch_size=cfg.batch_size, epochs=cfg.epochs,
                     shuffle=True, verbose=verbose, callbacks=[cb])
    return model, hist.history


def train_classifier_model(cfg: CNNConfig, x: np.ndarray, y: np.ndarray, seed: int,
                           label: str = "classifier"):
    """Fits a fresh classifier on normalized windows ``[n, 1, W, C]`` with class indices ``y``.

    Every epoch the windows are shuffled and each gets a random gain per channel
    (``1 + U(-g, g)``, g = ``cfg.channel_gain``), both from a numpy generator seeded with
    ``seed``; one ``fit`` call per epoch (Adam, cosine-decayed learning rate over all steps,
    categorical cross-entropy on the logits with label smoothing). Returns (model, history).
    """
    tf = load_tf()
    set_seed(seed)
    model = build_classifier(cfg, batch=None)
    n, K = len(x), len(cfg.class_names)
    steps = cfg.epochs * int(np.ceil(n / cfg.batch_size))
    lr = tf.keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=steps,
                                                   alpha=0.02)
    model.compile(optimizer=tf.keras.optimizers.Adam(lr),
                  loss=tf.keras.losses.CategoricalCrossentropy(
                      from_logits=True, label_smoothing=cfg.label_smoothing))
    yy = np.eye(K, dtype=np.float32)[np.asarray(y, np.int64)][:, None, None, :]
    rng = np.random.default_rng(seed)
    prog = Progress(label, cfg.epochs)
    losses = []
    for e in range(cfg.epochs):
        perm = rng.permutation(n)
        xe = x[perm]
        if cfg.channel_gain:
            g = 1.0 + cfg.channel_gain * rng.uniform(-1.0, 1.0, (n, 1, 1, x.shape[-1]))
            xe = xe * g.astype(np.float32)
        h = model.fit(xe, yy[perm], batch_size=cfg.batch_size, epochs=e + 1, initial_epoch=e,
                      shuffle=False, verbose=0)
        losses.append(float(h.history["loss"][-1]))
        prog.update(e + 1, losses[-1])
    return model, {"loss": losses}
