"""``edgert eval``: benchmarks scored through edgert's int8 runtime path.

Each dataset module adds its sub-command to ``edgert eval`` with ``add_parser(subparsers)``:

* ``itsc`` (`edgert.evaluate.itsc`): ITSC motor-current faults; the classifier
  leave-one-repetition-out and the autoencoder leave-one-healthy-recording-out, from the fold
  models shipped with ``motor-cnn`` and ``motor-ae`` (no TensorFlow needed).
* ``skab`` (`edgert.evaluate.skab`, its command line in `edgert.evaluate.skab_cli`): SKAB
  outlier detection (trains per file: needs TensorFlow).
* ``nab`` (`edgert.evaluate.nab`): NAB with NAB's scoring (trains per file: needs TensorFlow).

``add_parsers(subparsers)`` registers ``eval`` itself on the ``edgert`` sub-commands.
"""

from __future__ import annotations

import importlib
import importlib.util

DATASETS = ("itsc", "skab", "nab")
CLI_MODULES = {"skab": "skab_cli"}  # a dataset whose command line is not in its own module


def add_parsers(subparsers):
    """Adds ``eval`` (with one sub-command per dataset module present) to ``subparsers``."""
    p = subparsers.add_parser("eval", help="benchmarks through the int8 runtime (itsc, skab, nab)")
    sub = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for name in DATASETS:
        module = f"{__name__}.{CLI_MODULES.get(name, name)}"
        if importlib.util.find_spec(module) is None:
            continue
        importlib.import_module(module).add_parser(sub)
    return p
