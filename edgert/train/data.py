"""Training data for ``edgert train``: ``--data`` read into a `Dataset` of recordings
(CSV file, ``.npz``, a directory of class folders, or the shipped ITSC copy), windows cut from
them and their normalization."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .config import TIME_COLUMNS


@dataclass
class Recording:
    """One continuous recording: samples and either one label or one label per sample."""

    name: str
    x: np.ndarray                       # float32 [n, C]
    label: str | None = None            # the recording's label (class folder, name prefix)
    labels: np.ndarray | None = None    # per-sample labels (str) from a label column


@dataclass
class Dataset:
    recordings: list
    channels: list
    source: str                         # what --data was ("shipped ITSC" or the path)
    sha256: str                         # over the data files read
    default_itsc: bool = False

    def names(self) -> list[str]:
        return [r.name for r in self.recordings]

    def by_name(self) -> dict[str, Recording]:
        return {r.name: r for r in self.recordings}

    @property
    def is_itsc(self) -> bool:
        return bool(self.recordings) and all(
            re.fullmatch(r"SC_(HLT|A\d_B\d_C\d)_\d{3}", r.name) for r in self.recordings)


def recording_class(name: str) -> str:
    """``"SC_HLT_003"`` -> ``"SC_HLT"`` (a name without a ``_`` is its own class)."""
    return name.rsplit("_", 1)[0]


def load_recordings(data: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Recordings by name, float32 [n, C] (any labels dropped).

    ``data``: None (the copy shipped in ``edgert.data``), an ``.npz`` file, or a directory
    holding ``<CLASS>/<name>.csv`` (or ``<name>.csv``) headerless CSV files.
    """
    return {r.name: r.x for r in load_dataset(data).recordings}


def _file_sha(h, path: Path, rel: str) -> None:
    h.update(rel.encode() + b"\0")
    with open(path, "rb") as fh:
        for blk in iter(lambda: fh.read(1 << 20), b""):
            h.update(blk)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _label_str(v) -> str:
    """Labels as strings; 1.0 and 1 both become "1"."""
    s = str(v).strip()
    try:
        f = float(s)
        if f.is_integer():
            return str(int(f))
    except ValueError:
        pass
    return s


def _read_csv(path: Path, channels: Sequence[str] | None, label_col: str | None):
    """-> (x float32 [n, C], channel names, per-sample labels or None)."""
    text = path.read_text()
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    delim = max((",", ";", "\t"), key=first.count) if any(d in first for d in ",;\t") else ","
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=delim) if any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{path}: empty CSV file")
    header = None
    if not all(_is_number(c) for c in rows[0]):
        header = [c.strip() for c in rows[0]]
        rows = rows[1:]
    if not rows:
        raise ValueError(f"{path}: no data rows")
    ncol = len(rows[0])
    if any(len(r) != ncol for r in rows):
        raise ValueError(f"{path}: rows have different numbers of fields")
    names = header or [str(i) for i in range(ncol)]

    def col_index(key: str, what: str) -> int:
        if key in names:
            return names.index(key)
        if key.isdigit() and int(key) < ncol:
            return int(key)
        raise ValueError(f"{path}: no {what} column {key!r} (columns: {', '.join(names)})")

    li = None if label_col is None else col_index(label_col, "label")
    labels = None if li is None else np.array([_label_str(r[li]) for r in rows])
    numeric = [i for i in range(ncol) if i != li and _is_number(rows[0][i])
               and names[i].strip().lower() not in TIME_COLUMNS]
    if header is not None and channels:
        use = [col_index(c, "channel") for c in channels]
        ch_names = [names[i] for i in use]
    else:
        use = numeric
        if channels:  # headerless: --channels names the columns
            if len(channels) != len(use):
                raise ValueError(f"{path}: {len(use)} data columns but --channels names "
                                 f"{len(channels)}")
            ch_names = list(channels)
        else:
            ch_names = [names[i] for i in use] if header else [f"ch{i}" for i in range(len(use))]
    if not use:
        raise ValueError(f"{path}: no numeric channel columns")
    try:
        x = np.array([[float(r[i]) for i in use] for r in rows], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{path}: non-numeric value in a channel column ({exc})") from None
    return x.astype(np.float32), ch_names, labels


def load_dataset(data: str | os.PathLike | None = None, channels: Sequence[str] | None = None,
                 labels: str | None = None) -> Dataset:
    """Read ``--data`` into recordings (see the module docstring for the formats)."""
    if data is None:
        from importlib import resources

        from edgert.data import ITSC_CHANNELS, itsc_class, itsc_names, itsc_recording

        h = hashlib.sha256()
        ref = resources.files("edgert.data").joinpath("itsc.npz")
        with resources.as_file(ref) as p:
            _file_sha(h, Path(p), "itsc.npz")
        recs = [Recording(n, np.array(itsc_recording(n), dtype=np.float32), itsc_class(n))
                for n in itsc_names()]
        chans = list(channels) if channels else list(ITSC_CHANNELS)
        if len(chans) != 3:
            raise ValueError("the shipped ITSC data has 3 channels")
        return Dataset(recs, chans, "edgert/data/itsc.npz (shipped)", h.hexdigest(),
                       default_itsc=True)
    p = Path(data)
    h = hashlib.sha256()
    if p.is_file() and p.suffix == ".npz":
        _file_sha(h, p, p.name)
        with np.load(p, allow_pickle=False) as z:
            if "samples" in z.files:
                x = np.asarray(z["samples"], dtype=np.float32)
                if x.ndim == 1:
                    x = x[:, None]
                lab = (np.array([_label_str(v) for v in z["labels"]]) if "labels" in z.files
                       else None)
                if labels is not None and lab is None:
                    raise ValueError(f"{p}: --labels given but the npz has no 'labels' array")
                if lab is not None and len(lab) != len(x):
                    raise ValueError(f"{p}: 'labels' has {len(lab)} entries, 'samples' {len(x)}")
                names = ([str(c) for c in z["channels"]] if "channels" in z.files
                         else [f"ch{i}" for i in range(x.shape[1])])
                if channels:
                    if len(channels) != x.shape[1]:
                        raise ValueError(f"{p}: {x.shape[1]} channels but --channels names "
                                         f"{len(channels)}")
                    names = list(channels)
                recs = [Recording(p.stem, x, None, lab)]
            else:
                recs = []
                for k in sorted(z.files):
                    x = np.asarray(z[k], dtype=np.float32)
                    recs.append(Recording(k, x[:, None] if x.ndim == 1 else x, recording_class(k)))
                C = recs[0].x.shape[1] if recs else 0
                names = list(channels) if channels else [f"ch{i}" for i in range(C)]
        return _checked(Dataset(recs, names, str(data), h.hexdigest()))
    if p.is_file():
        _file_sha(h, p, p.name)
        x, names, lab = _read_csv(p, channels, labels)
        if labels is None:
            lab = None
        return _checked(Dataset([Recording(p.stem, x, None, lab)], names, str(data), h.hexdigest()))
    if p.is_dir():
        files = sorted(p.rglob("*.csv"))
        if not files:
            raise FileNotFoundError(f"{p}: no *.csv recordings found")
        recs, names = [], None
        for f in files:
            rel = f.relative_to(p)
            _file_sha(h, f, rel.as_posix())
            x, ch, lab = _read_csv(f, channels, labels)
            label = rel.parts[0] if len(rel.parts) > 1 else recording_class(f.stem)
            if names is None:
                names = ch
            elif ch != names:
                raise ValueError(f"{f}: channels {ch} differ from the other files' {names}")
            recs.append(Recording(f.stem, x, label, lab if labels is not None else None))
        return _checked(Dataset(recs, names, str(data), h.hexdigest()))
    raise FileNotFoundError(f"{p}: expected a CSV file, an .npz file or a directory of CSV files")


def _checked(ds: Dataset) -> Dataset:
    C = len(ds.channels)
    seen = set()
    for r in ds.recordings:
        if r.x.ndim != 2 or r.x.shape[1] != C:
            raise ValueError(f"recording {r.name}: shape {r.x.shape}, expected [n, {C}]")
        if not np.all(np.isfinite(r.x)):
            raise ValueError(f"recording {r.name}: NaN or Inf samples")
        if r.name in seen:
            raise ValueError(f"two recordings are named {r.name!r}")
        seen.add(r.name)
    return ds


def make_windows(x: np.ndarray, window: int, hop: int) -> np.ndarray:
    """Windows ``[n, W, C]`` starting at 0, hop, 2·hop, … (only complete windows)."""
    x = np.asarray(x, dtype=np.float32)
    n = (x.shape[0] - window) // hop + 1
    if n <= 0:
        return np.zeros((0, window, x.shape[1]), np.float32)
    idx = np.arange(n)[:, None] * hop + np.arange(window)[None, :]
    return np.ascontiguousarray(x[idx])


def window_starts(lo: int, hi: int, window: int, hop: int) -> np.ndarray:
    """Starts of the complete windows inside samples [lo, hi): lo, lo+hop, …"""
    n = (hi - lo - window) // hop + 1
    return lo + np.arange(max(n, 0), dtype=np.int64) * hop


def cut(x: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    idx = np.asarray(starts, np.int64)[:, None] + np.arange(window)[None, :]
    return np.ascontiguousarray(np.asarray(x, np.float32)[idx]) if len(starts) else \
        np.zeros((0, window, x.shape[1]), np.float32)


def window_labels(rec: Recording, starts: np.ndarray, window: int) -> list:
    """Label of each window: the recording's, or the samples' label when all samples of the
    window share it (None for a window that straddles a label change)."""
    if rec.labels is None:
        return [rec.label] * len(starts)
    out = []
    for s in starts:
        seg = rec.labels[s:s + window]
        out.append(seg[0] if np.all(seg == seg[0]) else None)
    return out


def fit_normalization(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (float64) over all samples of all windows ``[n, W, C]``."""
    w = np.asarray(windows, dtype=np.float64).reshape(-1, windows.shape[-1])
    mean = w.mean(axis=0)
    std = w.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return mean, std


def normalize(windows: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``[n, W, C]`` -> normalized float32 ``[n, 1, W, C]`` (the model's layout)."""
    inv_std = 1.0 / np.asarray(std, np.float64)
    z = (np.asarray(windows, np.float64) - np.asarray(mean, np.float64)) * inv_std
    return z.astype(np.float32)[:, None, :, :]
