"""The ``edgert train`` command line (`add_parsers`, `cmd_train`, `main`): parses the
options, reads the data and runs the autoencoder or classifier procedure."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from .architectures import load_tf
from .autoencoder import train_ae_split, train_motor_ae
from .classifier import train_classifier
from .config import TRAIN_EXTRA_HINT, AEConfig, CNNConfig, parse_filters
from .data import Dataset, load_dataset
from .sequence import SEQ_KINDS, SeqConfig, train_seq

#: the first line of ``edgert train --help``
DESCRIPTION = "Train, quantize and export edgert's int8 models (``edgert train``)."


NORMAL_CANDIDATES = ("SC_HLT", "normal", "Normal", "healthy", "Healthy", "0", "false", "False",
                     "ok", "OK")


def _normal_label(ds: Dataset, wanted: str | None) -> str | None:
    """The label of normal data: ``wanted``, else the first known name present; None when the
    data carries no labels at all (everything is normal)."""
    present = set()
    for r in ds.recordings:
        if r.labels is not None:
            present |= set(np.unique(r.labels).tolist())
        elif r.label is not None:
            present.add(r.label)
    if wanted is not None:
        if wanted not in present:
            raise ValueError(f"--normal {wanted!r}: no such label (labels: "
                             f"{', '.join(sorted(present)) or 'none'})")
        return wanted
    if not present or (len(present) == 1 and all(r.labels is None for r in ds.recordings)):
        return None
    for c in NORMAL_CANDIDATES:
        if c in present:
            return c
    raise ValueError("cannot tell which label is normal; say it with --normal LABEL (labels: "
                     f"{', '.join(sorted(present)[:20])})")


def canonical_command(args, epochs: int, cv: int) -> str:
    """The full ``edgert train`` command of a run, every option explicit (recorded in the
    manifest: run it again to reproduce the model)."""
    parts = ["edgert", "train"]
    if args.data is not None:
        parts += ["--data", str(args.data)]
    parts += ["--kind", args.kind, "--window", str(args.window), "--hop", str(args.hop)]
    for opt, val in (("--channels", args.channels), ("--labels", args.labels),
                     ("--normal", args.normal), ("--holdout", args.holdout),
                     ("--sample-rate", args.sample_rate)):
        if val is not None:
            parts += [opt, str(val)]
    parts += ["--out", str(args.out), "--name", _model_name(args), "--seed", str(args.seed),
              "--epochs", str(epochs), "--cv", str(cv), "--rows", str(args.rows)]
    if getattr(args, "filters", None) is not None:
        parts += ["--filters", ",".join(str(f) for f in parse_filters(args.filters))]
    return shlex.join(parts)


def _model_name(args) -> str:
    return args.name or Path(args.out).resolve().name


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None,
                   help="CSV file (header row; optional label column), .npz (samples [n, C], "
                        "optional labels [n]; or one array per recording), or a directory of "
                        "class folders of headerless CSV files (ITSC layout). Default: the "
                        "ITSC copy shipped in edgert.data")
    p.add_argument("--kind", choices=["autoencoder", "classifier", "lstm-ae", "forecast"],
                   default="autoencoder",
                   help="autoencoder: trained on normal data, scores reconstruction error; "
                        "classifier: names the class; lstm-ae: LSTM autoencoder; forecast: "
                        "1D-CNN predicting the window's last --target-rows samples")
    p.add_argument("--target-rows", type=int, default=None, dest="target_rows",
                   help="forecast: h, the window's last rows predicted and scored (default W/4)")
    p.add_argument("--window", type=int, default=64, help="W, samples (default 64)")
    p.add_argument("--hop", type=int, default=16, help="H, samples (default 16)")
    p.add_argument("--channels", default=None,
                   help="comma-separated channel columns (CSV with a header) or names (headerless)")
    p.add_argument("--labels", default=None,
                   help="label column of a CSV (name, or index when headerless)")
    p.add_argument("--normal", default=None,
                   help="autoencoder: the label of normal data (default: SC_HLT, normal, "
                        "healthy or 0, whichever is present; all data when there are no labels)")
    p.add_argument("--holdout", default=None,
                   help="autoencoder: the normal recording never trained or calibrated on "
                        "(default: the last one)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--name", default=None, help="model name (default: the --out directory's name)")
    p.add_argument("--seed", type=int, default=0, help="random seed (training and splits)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs (default 150 autoencoder, 20 classifier)")
    p.add_argument("--cv", type=int, default=None,
                   help="cross-validation folds written to OUT/folds/ (default 5 for a "
                        "classifier, 0 for an autoencoder: there, any N > 0 means one fold per "
                        "normal recording); 0: none")
    p.add_argument("--rows", type=int, default=16, help="B of the packed [1, B, W, C] variant")
    p.add_argument("--sample-rate", type=int, default=None, dest="sample_rate",
                   help="sample rate in Hz, recorded in the manifest (default: 1000 for the "
                        "shipped ITSC data, else unset)")
    p.add_argument("--filters", default=None,
                   help="filters of the strided conv layers, comma-separated, one layer per "
                        "entry (default 16,16,16 autoencoder, 16,32,32 classifier)")


def add_parsers(subparsers) -> argparse.ArgumentParser:
    """Adds ``train`` to the ``edgert`` sub-commands."""
    p = subparsers.add_parser(
        "train", help="train, int8-quantize and export a model directory (needs TensorFlow: "
                      f"{TRAIN_EXTRA_HINT})",
        description=DESCRIPTION)
    add_arguments(p)
    p.set_defaults(fn=cmd_train)
    return p


def require_tensorflow() -> None:
    try:
        load_tf()  # sets the environment (oneDNN off, quiet C++ logs) before the first import
    except ImportError as exc:
        raise ImportError(f"TensorFlow is not installed ({exc}); {TRAIN_EXTRA_HINT}") from None


def run_training(args, log=None) -> dict:
    """Runs ``edgert train`` with parsed ``args``; returns the manifest written."""
    log = log or (lambda *a: print(*a, file=sys.stderr, flush=True))
    for name in ("window", "hop", "rows"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1")
    channels = [c.strip() for c in args.channels.split(",")] if args.channels else None
    ds = load_dataset(args.data, channels, args.labels)
    name = _model_name(args)
    sr = args.sample_rate if args.sample_rate is not None else (1000 if ds.default_itsc else None)
    for r in ds.recordings:
        if len(r.x) < args.window:
            log(f"note: recording {r.name} is shorter than one window ({len(r.x)} samples)")
    if args.kind in SEQ_KINDS:
        return _run_seq(args, ds, name, sr, log)
    if args.kind == "autoencoder":
        cv = 0 if args.cv is None else args.cv
        cfg = AEConfig(name=name, window=args.window, hop=args.hop, channels=tuple(ds.channels),
                       sample_rate_hz=sr, packed_rows=args.rows)
        if getattr(args, "filters", None) is not None:
            cfg.filters = parse_filters(args.filters)
        if args.epochs is not None:
            cfg.epochs = args.epochs
        normal = _normal_label(ds, args.normal)
        whole = sorted(r.name for r in ds.recordings
                       if r.labels is None and (normal is None or r.label == normal))
        command = canonical_command(args, cfg.epochs, cv)
        if len(whole) >= 3 and all(r.labels is None for r in ds.recordings):
            hold = args.holdout or whole[-1]
            if hold not in whole:
                raise ValueError(f"--holdout {hold!r} is not a normal recording "
                                 f"({', '.join(whole)})")
            cfg.train_recordings = tuple(n for n in whole if n != hold)
            cfg.holdout_recordings = (hold,)
            if normal is not None:
                cfg.healthy_class = normal
            log(f"autoencoder: normal label {normal!r}; training recordings "
                f"{', '.join(cfg.train_recordings)}; held out {hold}")
            return train_motor_ae(args.out, args.seed, cfg=cfg, command=command, log=log, ds=ds,
                                  cv=cv)
        if cv:
            log("note: --cv needs at least 3 normal recordings; no folds written")
        if args.holdout is not None:
            raise ValueError("--holdout needs at least 3 normal recordings")
        cfg.train_recordings, cfg.holdout_recordings = (), ()
        if normal is not None:
            cfg.healthy_class = normal
        command = canonical_command(args, cfg.epochs, 0)
        return train_ae_split(args.out, ds, cfg, args.seed, normal=normal, command=command,
                              log=log)
    cv = 5 if args.cv is None else args.cv
    cfg = CNNConfig(name=name, window=args.window, hop=args.hop, channels=tuple(ds.channels),
                    sample_rate_hz=sr, packed_rows=args.rows, cv=cv)
    if getattr(args, "filters", None) is not None:
        cfg.filters = parse_filters(args.filters)
    if args.epochs is not None:
        cfg.epochs = args.epochs
    return train_classifier(args.out, ds, cfg, args.seed,
                            command=canonical_command(args, cfg.epochs, cv), log=log)


def _run_seq(args, ds: Dataset, name: str, sr, log) -> dict:
    """``--kind lstm-ae|forecast``: needs >= 3 whole normal recordings (the last, or
    ``--holdout``, held out); calibrated leave-one-recording-out (`train_seq`)."""
    W = args.window
    h = args.target_rows if args.target_rows is not None else max(1, W // 4)
    cfg = SeqConfig(name=name, window=W, hop=args.hop, channels=tuple(ds.channels),
                    sample_rate_hz=sr, kind=args.kind, target_rows=h)
    if args.kind == "lstm-ae":  # Adam at 2e-3 barely moves the LSTM in tens of epochs
        cfg.learning_rate, cfg.batch_size = 1e-2, 32
    if args.epochs is not None:
        cfg.epochs = args.epochs
    if args.kind == "forecast" and not 1 <= h <= (W - 1) // 2:
        raise ValueError(f"--target-rows must be in 1..{(W - 1) // 2} for --window {W}")
    normal = _normal_label(ds, args.normal)
    whole = sorted(r.name for r in ds.recordings
                   if r.labels is None and (normal is None or r.label == normal))
    if len(whole) < 3:
        raise ValueError(f"--kind {args.kind} needs at least 3 whole normal recordings, got "
                         f"{len(whole)}")
    hold = args.holdout or whole[-1]
    if hold not in whole:
        raise ValueError(f"--holdout {hold!r} is not a normal recording ({', '.join(whole)})")
    cfg.train_recordings = tuple(n for n in whole if n != hold)
    cfg.holdout_recordings = (hold,)
    cv = 0 if args.cv is None else args.cv
    command = canonical_command(args, cfg.epochs, cv)
    if args.kind == "forecast":
        command += f" --target-rows {h}"
    return train_seq(args.out, ds, cfg, args.seed, normal, command, log=log, cv=cv)


def cmd_train(args) -> int:
    try:
        require_tensorflow()
    except ImportError as exc:
        print(f"edgert train: {exc}", file=sys.stderr)
        return 2
    try:
        run_training(args)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"edgert train: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edgert train", description=DESCRIPTION)
    add_arguments(p)
    return cmd_train(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
