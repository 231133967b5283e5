"""A private copy of a model directory for a benchmark run (``bench.run``, ``bench.peers``)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path


def snapshot_model(name: str):
    """Copy the model directory to a private temp dir and load it from there.

    The in-process backend and every daemon then run the very same files, and a model being
    rewritten in place meanwhile (TFLite maps the file: a rewrite under a live interpreter is a
    SIGBUS) cannot disturb the run. Returns (model, snapshot dir, source dir).
    """
    from edgert import models

    src = models.resolve(name)
    last = None
    for _ in range(3):  # a copy taken mid-rewrite fails its sha256 check: take it again
        tmp = Path(tempfile.mkdtemp(prefix="edgert-bench-model-"))
        snap = tmp / src.name
        shutil.copytree(src, snap, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
        try:
            return models.load(snap), snap, src
        except models.ModelError as exc:
            last = exc
            shutil.rmtree(tmp, ignore_errors=True)
            time.sleep(1.0)
    raise last
