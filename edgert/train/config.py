"""Configuration of ``edgert train`` runs: `AEConfig` (autoencoder) and `CNNConfig`
(classifier), recorded whole in every manifest (``training.config``)."""

from __future__ import annotations

from dataclasses import dataclass


TRAIN_EXTRA_HINT = "pip install 'edgert[train]'"
#: header names never taken as channels unless --channels names them
TIME_COLUMNS = ("t", "time", "timestamp", "datetime", "date", "time_s", "time_ms", "ts", "index")
#: bounds of ``--filters`` entries (a conv layer of 0 filters or thousands is a typo)
MAX_FILTERS = 1024


def parse_filters(text: str) -> tuple[int, ...]:
    """``--filters`` ("8,8,8") as a tuple of ints, one strided conv layer per entry.

    Raises ValueError naming the option when an entry is not an integer in [1, MAX_FILTERS]
    or there are none (or more than 8: W would have to be divisible by 2**9)."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        vals = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--filters {text!r}: expected comma-separated integers, e.g. 8,8,8") from None
    if not 1 <= len(vals) <= 8 or any(not 1 <= v <= MAX_FILTERS for v in vals):
        raise ValueError(f"--filters {text!r}: 1 to 8 entries, each in 1..{MAX_FILTERS}")
    return vals


ITSC_ATTRIBUTION = ("ITSC (MIT licence; University of Guanajuato, Cardenas-Cornejo et al., "
                    "Measurement 222:113680, 2023)")


@dataclass
class AEConfig:
    """Everything that defines an autoencoder training run (recorded in the manifest)."""

    name: str = "motor-ae"
    window: int = 64                 # W, samples
    hop: int = 16                    # H, samples: runtime hop, and the hop of all scored windows
    # hop of the windows the network is fitted on: denser than ``hop`` as augmentation (every
    # 2nd phase offset of the 60 Hz waveform instead of every 16th sample); normalization,
    # threshold and metrics all use ``hop``
    train_hop: int = 2
    channels: tuple[str, ...] = ("ia", "ib", "ic")
    sample_rate_hz: int | None = 1000
    # architecture
    kernel: int = 5                  # (1, k) kernels of the strided layers
    filters: tuple[int, ...] = (16, 16, 16)  # one strided (stride 2) conv per entry
    latent: int = 3                  # bottleneck: [1, 1, latent]
    out_kernel: int = 3              # linear output conv
    # how the dynamic-batch variant expresses the decoder: "subpixel" (exact CONV_2D + RESHAPE
    # rewrite of each Conv2DTranspose, static shapes once the batch is set, fully taken by
    # XNNPACK) or "transpose" (TRANSPOSE_CONV; its output shape becomes a run-time tensor)
    dyn_decoder: str = "subpixel"
    # training
    epochs: int = 150
    batch_size: int = 64
    learning_rate: float = 2e-3
    # quantization: the representative set is the training windows, plus the same windows
    # multiplied by this factor, so that the int8 input range has room for the larger currents
    # of faulty phases instead of clipping them at the healthy peak
    rep_headroom: float = 1.6
    rep_windows: int = 400
    # threshold
    quantile: float = 0.999
    factor: float = 1.5
    # data split
    train_recordings: tuple[str, ...] = ("SC_HLT_001", "SC_HLT_002", "SC_HLT_003", "SC_HLT_004")
    holdout_recordings: tuple[str, ...] = ("SC_HLT_005",)
    healthy_class: str = "SC_HLT"
    # rows B of the packed [1, B, W, C] variant
    packed_rows: int = 16
    # single-stream data (fewer than 3 normal recordings): fraction of each normal stream, at
    # its end, held back from training to calibrate the threshold
    holdout_fraction: float = 0.2


@dataclass
class CNNConfig:
    """Everything that defines a classifier training run (recorded in the manifest)."""

    name: str = "motor-cnn"
    window: int = 64
    hop: int = 16                    # runtime hop and the hop of every scored window
    train_hop: int = 2               # hop of the fitted windows (phase augmentation)
    channels: tuple[str, ...] = ("ia", "ib", "ic")
    sample_rate_hz: int | None = 1000
    class_names: tuple[str, ...] = ()
    # architecture: one Conv2D (1, kernel) stride (1, 2) + ReLU per entry of filters, then
    # AveragePooling2D over the remaining width and a 1x1 Conv2D to the class logits
    kernel: int = 5
    filters: tuple[int, ...] = (16, 32, 32)
    # training
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 3e-3      # Adam, cosine decay to 2 % over all steps
    label_smoothing: float = 0.1
    channel_gain: float = 0.05       # every fitted window x (1 + U(-g, g)) per channel
    # quantization: representative set = this many training windows (no headroom: the
    # normalization is fitted on every class, faults included)
    rep_windows: int = 800
    packed_rows: int = 16
    cv: int = 5                      # folds (0: none)
    # leave training recordings whose label disagrees with the data out of training (see
    # ``label_audit``); they are still in every evaluation
    audit_labels: bool = True
