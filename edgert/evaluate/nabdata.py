"""NAB corpus files: reading ``data/<category>/<file>.csv`` and ``labels/combined_windows.json``,
and writing NAB's results layout.

Layout of ``--data DIR`` (NAB's repository layout, as in ``../shared/data/NAB``)::

    DIR/labels/combined_windows.json      {"<category>/<file>.csv": [[start, end], ...], ...}
    DIR/data/<category>/<file>.csv        timestamp,value

Every labelled file must be present. Bad input raises ValueError naming the file and the row
(1-based line number) or the JSON key; a missing file or directory raises FileNotFoundError.

Results (`write_results`): ``OUT/<detector>/<category>/<detector>_<file>.csv`` with columns
``timestamp,value,anomaly_score,label`` (label 1 for rows inside a labelled window), the
format NAB's own ``run.py --score`` reads.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["NabFile", "read_series", "read_windows", "load_corpus", "labels_of",
           "write_results"]

LABELS = Path("labels") / "combined_windows.json"


@dataclass
class NabFile:
    key: str                   # "realKnownCause/nyc_taxi.csv"
    timestamps: np.ndarray     # datetime64[us] [n], in file order (NAB's repeat some)
    stamp_text: list[str]      # the timestamps as written in the file
    values: np.ndarray         # float64 [n]
    value_text: list[str]      # the values as written
    windows: list              # [(start, end)] datetime64[us]

    @property
    def category(self) -> str:
        return self.key.split("/")[0]

    @property
    def name(self) -> str:
        return self.key.split("/")[-1]


def _stamp(text: str) -> np.datetime64:
    """'2014-07-01 00:00:00[.ffffff]' -> datetime64[us] (ValueError when malformed)."""
    t = text.strip().replace(" ", "T", 1)
    if len(t) < 19 or t[4] != "-" or t[10] != "T":
        raise ValueError(f"not a 'YYYY-MM-DD HH:MM:SS' timestamp: {text!r}")
    return np.datetime64(t, "us")


def read_series(path: str | os.PathLike) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """One NAB data file. Returns (timestamps datetime64[us], their text, values float64, their
    text). Raises ValueError naming the file and line for a bad header, a short row, an
    unparsable timestamp or value. Timestamps need not increase: NAB's own files repeat
    some and step back at a daylight-saving change; rows are taken in file order, as NAB
    does."""
    path = Path(path)
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise ValueError(f"{path}: empty file (expected a 'timestamp,value' header)")
    head = [h.strip() for h in rows[0]]
    if head[:2] != ["timestamp", "value"]:
        raise ValueError(f"{path}: line 1: header {rows[0]!r}, expected 'timestamp,value'")
    stamps, vals, st_txt, v_txt = [], [], [], []
    for line, r in enumerate(rows[1:], start=2):
        if not r or all(not c.strip() for c in r):
            continue
        if len(r) < 2:
            raise ValueError(f"{path}: line {line}: {len(r)} field(s), expected timestamp,value")
        try:
            t = _stamp(r[0])
        except ValueError as exc:
            raise ValueError(f"{path}: line {line}: field 'timestamp': {exc}") from None
        try:
            v = float(r[1])
        except ValueError:
            raise ValueError(f"{path}: line {line}: field 'value': not a number: "
                             f"{r[1]!r}") from None
        if not np.isfinite(v):
            raise ValueError(f"{path}: line {line}: field 'value': not finite: {r[1]!r}")
        stamps.append(t)
        vals.append(v)
        st_txt.append(r[0])
        v_txt.append(r[1])
    if not stamps:
        raise ValueError(f"{path}: no data rows")
    return (np.array(stamps, dtype="datetime64[us]"), st_txt, np.array(vals, np.float64),
            v_txt)


def read_windows(path: str | os.PathLike) -> dict[str, list]:
    """``combined_windows.json`` -> ``{key: [(start, end) datetime64[us]]}``. Raises
    ValueError naming the file and key for anything but a dict of lists of [start, end]
    timestamp pairs."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected an object {{\"<category>/<file>.csv\": [[start, "
                         f"end], ...]}}, got {type(raw).__name__}")
    out = {}
    for key, wins in raw.items():
        if not isinstance(wins, list):
            raise ValueError(f"{path}: {key!r}: expected a list of [start, end] pairs")
        pairs = []
        for k, w in enumerate(wins):
            if not (isinstance(w, list) and len(w) == 2 and all(isinstance(t, str) for t in w)):
                raise ValueError(f"{path}: {key!r} window {k}: expected [start, end] strings, "
                                 f"got {w!r}")
            try:
                pairs.append((_stamp(w[0]), _stamp(w[1])))
            except ValueError as exc:
                raise ValueError(f"{path}: {key!r} window {k}: {exc}") from None
        out[key] = pairs
    return out


def load_corpus(data: str | os.PathLike) -> list[NabFile]:
    """Every file named in ``DIR/labels/combined_windows.json``, sorted by key, with its
    windows checked against its timestamps (`nabscore.window_rows`)."""
    from .nabscore import window_rows

    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory (expected NAB's layout: labels/, "
                                "data/<category>/)")
    lab = root / LABELS
    if not lab.is_file():
        raise FileNotFoundError(f"{lab}: labels file not found (expected NAB's layout: "
                                f"{LABELS}, data/<category>/<file>.csv)")
    windows = read_windows(lab)
    if not windows:
        raise ValueError(f"{lab}: no files labelled")
    files = []
    for key in sorted(windows):
        p = root / "data" / key
        if not p.is_file():
            raise FileNotFoundError(f"{p}: data file for {key!r} (named in {lab}) not found")
        ts, st, v, vt = read_series(p)
        window_rows(ts, windows[key], where=f"{lab}: {key!r}")
        files.append(NabFile(key, ts, st, v, vt, windows[key]))
    return files


def labels_of(f: NabFile) -> np.ndarray:
    """int8 [n]: 1 for rows inside a labelled window (NAB's ``CorpusLabel`` labels)."""
    y = np.zeros(len(f.timestamps), np.int8)
    for t1, t2 in f.windows:
        y[(f.timestamps >= t1) & (f.timestamps <= t2)] = 1
    return y


def write_results(out: str | os.PathLike, detector: str, f: NabFile,
                  scores: np.ndarray) -> Path:
    """``out/<detector>/<category>/<detector>_<file>.csv``: timestamp,value,anomaly_score,label
    (timestamps and values as read; scores at full precision, so NAB's sweep sees the same
    thresholds). Returns the path."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != f.values.shape:
        raise ValueError(f"{f.key}: {len(scores)} scores for {len(f.values)} rows")
    path = Path(out) / detector / f.category / f"{detector}_{f.name}"
    path.parent.mkdir(parents=True, exist_ok=True)
    y = labels_of(f)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["timestamp", "value", "anomaly_score", "label"])
        for t, v, s, lb in zip(f.stamp_text, f.value_text, scores.tolist(), y.tolist()):
            w.writerow([t, v, repr(float(s)), lb])
    return path
