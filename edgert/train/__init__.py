"""Train, quantize and export edgert's int8 models (``edgert train``).

Two kinds, both full-integer int8 TFLite with Edge-TPU-friendly graphs (``(1, k)`` kernels on
``[rows, 1, W, C]`` tensors, no reshapes, no UpSampling/TILE, static shapes in the fixed
variants):

* ``--kind autoencoder`` (shipped: ``motor-ae``): a conv autoencoder trained on normal
  windows only; a window whose reconstruction error exceeds the calibrated threshold is
  anomalous.
* ``--kind classifier`` (shipped: ``motor-cnn``): a small CNN (strided ``(1, k)`` convs,
  AVERAGE_POOL_2D over the remaining width, a 1x1 conv to the class logits) that names the
  class of every window; the manifest says ``"kind": "classifier"``, ``"output": "logits"``.

Usage::

    edgert train [--data PATH] --kind autoencoder|classifier [--window W] [--hop H]
                 [--channels a,b,c] [--labels COLUMN] [--normal LABEL] --out DIR
                 [--seed N] [--epochs N] [--cv N] [--rows B] [--sample-rate HZ]

(``python -m edgert.train`` takes the same arguments.) ``--data``:

* a CSV file: a header row with the channel names (delimiter ``,`` ``;`` or tab), an optional
  label column named by ``--labels`` (per-sample labels); non-numeric columns and time columns
  (``time``, ``timestamp``, ``t``, …) are skipped unless ``--channels`` names them. Headerless CSV: ``--channels`` names the columns, ``--labels`` is a column index.
* an ``.npz``: ``samples`` ``[n, C]`` and optional ``labels`` ``[n]`` (and ``channels``); or
  one ``[n, C]`` array per recording, labelled by its name without the ``_NNN`` suffix (the
  shipped ``edgert/data/itsc.npz``).
* a directory of class folders of headerless CSV files (the ITSC layout,
  ``<CLASS>/<CLASS>_00N.csv``): each file is a recording labelled by its folder.
* omitted: the ITSC copy shipped in ``edgert.data`` (channels ia, ib, ic, 1 kHz).

The model directory written to ``--out`` loads in the runtime as it is (docs/design.md,
"Model directory"): normalization, every variant with its tensor specs, int8 fidelity, the
exact command and seed, TensorFlow/LiteRT versions, sha256 of every file. Variants:

* ``dynamic`` (``*_dyn.tflite``, ``[-1, 1, W, C]``): the CPU path (LiteRT/XNNPACK). In the
  autoencoder each Conv2DTranspose is rewritten as its exact sub-pixel equivalent (Conv2D +
  constant-shape Reshape, same weights, float outputs checked equal): a TRANSPOSE_CONV with a
  dynamic batch needs a run-time output shape, which in LiteRT makes every later tensor
  dynamic (unallocated until the first invoke, not taken by XNNPACK, ~5x slower here).
* ``b1`` (``*_b1.tflite``, ``[1, 1, W, C]``): for the Edge TPU (CONV_2D, TRANSPOSE_CONV v2,
  RELU, AVERAGE_POOL_2D only).
* ``packed`` (``*_packed.tflite``, ``[1, B, W, C]``, ``"layout": "packed"``, ``"rows": B``):
  B windows in one invoke (the Edge TPU cannot batch); ``(1, k)`` kernels keep the B rows
  independent, so row j of the output is what ``b1`` gives for window j. It is made from the
  converted b1 flatbuffer itself (``packed_from_b1``: activation shapes ``[1, 1, w, c]`` ->
  ``[1, B, w, c]``; weights, biases and quantization parameters are b1's bytes), so its int8
  outputs equal B b1 invokes exactly (checked at export: ``packed_equals_b1``).

The bias-free Conv2DTranspose layers of the autoencoder are on purpose: with a bias, the
TFLite converter fuses BiasAdd + the following ReLU into TRANSPOSE_CONV (fused activation ->
op version 4, newer than the last edgetpu_compiler accepts). Without one they convert to
TRANSPOSE_CONV v2 followed by a separate RELU op.

Autoencoder procedure (data with >= 3 normal recordings, e.g. ITSC): the last normal recording
(``--holdout``) is never used for training or calibration; the threshold is factor x quantile of
int8 scores that leave-one-recording-out models (same config and seed, trained on the other
training recordings) give the recording they never saw; the shipped model is trained on all
training recordings. ``--cv N`` (N > 0) also writes ``folds/<recording>/``: one model per
normal recording held out (same procedure, own threshold), used by ``edgert eval itsc``.
With fewer normal recordings (one stream), each stream's normal samples are split in time: the
first 80 % train, the threshold is calibrated on the held-back last 20 %.

Classifier procedure: ``--cv N`` (default 5) cross-validation folds first (recordings named
``…_NNN`` are grouped by repetition NNN: leave-one-repetition-out; otherwise every recording is
cut into N consecutive blocks and block i of every recording is held out in fold i); each
fold's int8 dynamic model is written to ``folds/<fold>/`` and scored through LiteRT on its
held-out windows (accuracy, confusion, float-vs-int8 argmax agreement). The shipped model is
then trained on all the data. Training windows are cut with a hop of 2 (phase augmentation)
and every window gets a random gain per channel (+-5 %: healthy recordings differ by a few
per cent per phase, e.g. SC_HLT_001's phase B is 7 % low), with label smoothing 0.1.
Before each training, ``label_audit`` looks at the training recordings only: a recording whose
per-channel RMS and channel correlations (for these currents: the phase amplitudes and phase
angles) sit nearer another class's median than its own is not trained on (it stays in every
evaluation). On ITSC it drops SC_A0_B2_C0_002 and SC_A1_B0_C0_002 (healthy signals),
SC_A0_B1_C0_005 and SC_A1_B0_C0_005 (other fault patterns) whenever they are in the training
set, so no fold is taught that healthy-looking windows are faults.

Shipped models, reproduced exactly (bit-identical .tflite files, same metrics) on this
machine (x86-64, TensorFlow 2.21 CPU, oneDNN off, op determinism on) by::

    edgert train --kind autoencoder --window 64 --hop 16 --channels ia,ib,ic \\
        --sample-rate 1000 --out compiled_models/motor-ae --seed 0 --epochs 150 --cv 5
    edgert train --kind classifier --window 64 --hop 16 --channels ia,ib,ic \\
        --sample-rate 1000 --out compiled_models/motor-cnn --seed 0 --epochs 20 --cv 5

(``--data /path/to/ITSC`` gives the same arrays as the shipped copy.) Another CPU or
TensorFlow version may sum floats in another order; the recorded metrics are then expected to
move by a few windows, not to be bit-identical.

Modules, along the steps of a run: `edgert.train.config` (`AEConfig`, `CNNConfig`),
`.data` (reading ``--data``, windows, normalization), `.architectures` (the Keras builders:
one conv-autoencoder builder `build_ae` for ``edgert train``, ``eval skab``/``eval nab`` and
``bench --peers``, and the classifier), `.fit` (training), `.export` (int8 conversion, the
three variants, flatbuffer helpers), `.int8` (LiteRT scoring), `.modeldir` (the model directory
and manifest), `.autoencoder` and `.classifier` (the two procedures), `.cli` (``edgert
train``). This package re-exports their public names.

The runtime never imports this package. TensorFlow (the ``train`` extra) is imported lazily,
inside the functions that need it; without it ``edgert train`` exits 2 and says
``pip install 'edgert[train]'``. The int8 checks run the converted models through LiteRT
(``ai_edge_litert``, a runtime dependency), exactly as the runtime will.
"""

from __future__ import annotations

from .config import AEConfig, CNNConfig, ITSC_ATTRIBUTION, TIME_COLUMNS, TRAIN_EXTRA_HINT
from .data import (Dataset, Recording, cut, fit_normalization, load_dataset, load_recordings,
                   make_windows, normalize, recording_class, window_labels, window_starts)
from .architectures import (Shuffle, ae_spec, build_ae, build_autoencoder, build_classifier,
                            build_subpixel_autoencoder, check_subpixel, clone_with_batch, load_tf,
                            set_seed, subpixel_taps, to_subpixel, to_subpixel_model)
from .progress import Progress
from .fit import train_autoencoder, train_classifier_model
from .export import (Exported, convert_int8, export_b1, export_dynamic, export_packed,
                     export_variants, packed_from_b1, representative_set, tflite_ops)
from .int8 import (Int8Model, float_errors, float_logits, interpreter_cls, packed_vs_b1,
                   static_after_resize)
from .modeldir import (data_desc, default_command, quantile_higher, round_sig, save_keras,
                       strip_keras_timestamps, variant_entry, variant_files, write_fold_dir,
                       write_manifest, write_model_dir)
from .autoencoder import calibrate_threshold, itsc_attribution, train_ae_split, train_motor_ae
from .classifier import (classification_summary, cv_folds, label_audit, recording_suspects,
                         train_classifier)
from .cli import (DESCRIPTION, NORMAL_CANDIDATES, add_arguments, add_parsers, canonical_command,
                  cmd_train, main, require_tensorflow, run_training)

__all__ = [
    "AEConfig",
    "CNNConfig",
    "ITSC_ATTRIBUTION",
    "TIME_COLUMNS",
    "TRAIN_EXTRA_HINT",
    "Dataset",
    "Recording",
    "cut",
    "fit_normalization",
    "load_dataset",
    "load_recordings",
    "make_windows",
    "normalize",
    "recording_class",
    "window_labels",
    "window_starts",
    "Shuffle",
    "ae_spec",
    "build_ae",
    "build_autoencoder",
    "build_classifier",
    "build_subpixel_autoencoder",
    "check_subpixel",
    "clone_with_batch",
    "load_tf",
    "set_seed",
    "subpixel_taps",
    "to_subpixel",
    "to_subpixel_model",
    "Progress",
    "train_autoencoder",
    "train_classifier_model",
    "Exported",
    "convert_int8",
    "export_b1",
    "export_dynamic",
    "export_packed",
    "export_variants",
    "packed_from_b1",
    "representative_set",
    "tflite_ops",
    "Int8Model",
    "float_errors",
    "float_logits",
    "interpreter_cls",
    "packed_vs_b1",
    "static_after_resize",
    "data_desc",
    "default_command",
    "quantile_higher",
    "round_sig",
    "save_keras",
    "strip_keras_timestamps",
    "variant_entry",
    "variant_files",
    "write_fold_dir",
    "write_manifest",
    "write_model_dir",
    "calibrate_threshold",
    "itsc_attribution",
    "train_ae_split",
    "train_motor_ae",
    "classification_summary",
    "cv_folds",
    "label_audit",
    "recording_suspects",
    "train_classifier",
    "DESCRIPTION",
    "NORMAL_CANDIDATES",
    "add_arguments",
    "add_parsers",
    "canonical_command",
    "cmd_train",
    "main",
    "require_tensorflow",
    "run_training",
]
