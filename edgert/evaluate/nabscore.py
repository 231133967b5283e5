"""NAB scoring, transcribed from the Numenta Anomaly Benchmark's own code (numpy, no pandas).

What was followed (numenta/NAB, MIT licence, NAB v1.x):

* ``nab/sweeper.py`` (``Sweeper.calcSweepScore``, ``calcScoreByThreshold``, ``scaledSigmoid``,
  ``_getProbationaryLength``): the per-row "sweep score" and the sweep over thresholds.
* ``nab/optimizer.py`` (``optimizeThreshold``): one threshold per profile for the whole corpus,
  the one whose corpus score is highest (first of equal scores, i.e. the highest threshold).
* ``nab/runner.py`` (``normalize``): ``100 * (raw - null) / (perfect - null)``, ``perfect`` =
  number of windows in the labels file x ``tpWeight``, ``null`` = the null detector's score.
* ``nab/util.py`` (``getProbationPeriod``, ``convertAnomalyScoresToDetections``): probation =
  ``min(floor(0.15 n), 0.15 * 5000)`` rows; a row is a detection iff its score >= threshold.
* ``config/profiles.json``: the three cost matrices in `PROFILES`.

The rules, per file of ``n`` rows:

* Rows ``i < probation`` are ignored entirely (NAB names them "probationary").
* A window ``[a, b]`` (row indices of its limits; both must be timestamps of the file) gives
  each of its rows ``i`` the value ``S(-(b - i + 1) / (b - a + 1)) * tpWeight / S(-1)`` where
  ``S(x) = 2 / (1 + exp(5 x)) - 1`` (and ``-1`` for ``x > 3``): 1.0 at the window's first row,
  ~0.86 in its middle, ~0 at its end. A window scores the largest value among its detected
  rows (so only the earliest detection counts), or ``-fnWeight`` when none is detected.
* Every detected row outside all windows adds ``fpWeight x S(|b_prev - i| / (w_prev - 1))``
  where ``b_prev``, ``w_prev`` are the last row and width of the closest preceding window, or
  ``-fpWeight`` when no window precedes it (so a false positive just after a window costs
  little and one far from any window costs the full weight).

Rows are walked in file order as NAB does: a window is entered when a row's timestamp equals
its start. Windows must therefore be sorted, disjoint and on the file's timestamps; here that
is checked up front (`window_rows`) and a clear error raised, where NAB would silently skip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["PROFILES", "PROBATION_PERCENT", "probation_length", "scaled_sigmoid", "window_rows",
           "FileRows", "sweep_rows", "Sweep", "sweep", "best_threshold", "score_at",
           "null_score", "perfect_score", "normalized"]

#: config/profiles.json (NAB v1.x): the three application profiles' cost matrices.
PROFILES = {
    "standard": {"tpWeight": 1.0, "fnWeight": 1.0, "fpWeight": 0.11, "tnWeight": 1.0},
    "reward_low_FP_rate": {"tpWeight": 1.0, "fnWeight": 1.0, "fpWeight": 0.22, "tnWeight": 1.0},
    "reward_low_FN_rate": {"tpWeight": 1.0, "fnWeight": 2.0, "fpWeight": 0.11, "tnWeight": 1.0},
}
PROBATION_PERCENT = 0.15
#: Row labels in `FileRows.window`: probationary rows and rows outside every window.
PROBATIONARY, OUTSIDE = -2, -1


def probation_length(n_rows: int, percent: float = PROBATION_PERCENT) -> float:
    """NAB's ``getProbationPeriod``: ``min(floor(percent * n), percent * 5000)`` (a float when
    the cap applies, as in NAB; rows ``i < `` this value are probationary)."""
    return min(math.floor(percent * n_rows), percent * 5000)


def scaled_sigmoid(x) -> np.ndarray:
    """NAB's ``scaledSigmoid``: ``2 * sigmoid(-5 x) - 1``, and ``-1`` where ``x > 3``."""
    x = np.asarray(x, dtype=np.float64)
    val = 2.0 * (1.0 / (1.0 + np.exp(5.0 * x))) - 1.0
    return np.where(x > 3.0, -1.0, val)


def window_rows(timestamps: np.ndarray, windows, where: str = "labels") -> list[tuple[int, int]]:
    """Row indices ``(a, b)`` of each window's limits in ``timestamps`` (datetime64, in file
    order): the first row with that timestamp, as NAB's ``timestamps.index(limit)``.

    Raises ValueError naming ``where`` and the window when a limit is not a timestamp of the
    file, a window ends before it starts, or windows overlap or are out of order (NAB walks
    rows in order and would silently skip such a window)."""
    ts = np.asarray(timestamps)
    out = []
    for k, (t1, t2) in enumerate(windows):
        idx = []
        for t in (t1, t2):
            hit = np.flatnonzero(ts == t)
            i = int(hit[0]) if len(hit) else -1
            if i < 0:
                raise ValueError(f"{where}: window {k} limit {t} is not a timestamp of the file")
            idx.append(i)
        a, b = idx
        if b < a:
            raise ValueError(f"{where}: window {k} ends ({t2}) before it starts ({t1})")
        if b == a:
            # NAB divides by (width - 1) for rows after it: a one-row window breaks its scorer
            raise ValueError(f"{where}: window {k} is a single row ({t1}); NAB cannot score it")
        if out and a <= out[-1][1]:
            raise ValueError(f"{where}: window {k} ({t1}) starts before window {k - 1} ends")
        out.append((a, b))
    return out


@dataclass
class FileRows:
    """One file's rows as NAB's sweeper sees them (weights of one profile)."""
    sweep: np.ndarray    # float64 [n]: each row's weighted score if it were a detection
    window: np.ndarray   # int64 [n]: window number, OUTSIDE, or PROBATIONARY
    n_windows: int       # windows of the file (scorable or not)


def sweep_rows(n: int, wins: list[tuple[int, int]], profile: dict,
               percent: float = PROBATION_PERCENT) -> FileRows:
    """``Sweeper.calcSweepScore`` for one file of ``n`` rows with windows ``wins`` (row
    indices from `window_rows`), under the cost matrix ``profile``."""
    tp, fp = profile["tpWeight"], profile["fpWeight"]
    max_tp = float(scaled_sigmoid(-1.0))
    i = np.arange(n, dtype=np.float64)
    sweep = np.full(n, -1.0 * fp)          # before any window: "really far away" from one
    label = np.full(n, OUTSIDE, dtype=np.int64)
    for k, (a, b) in enumerate(wins):
        width = float(b - a + 1)
        r = slice(a, b + 1)
        sweep[r] = scaled_sigmoid(-(b - i[r] + 1) / width) * tp / max_tp
        label[r] = k
        nxt = wins[k + 1][0] if k + 1 < len(wins) else n
        after = slice(b + 1, nxt)
        sweep[after] = scaled_sigmoid(np.abs(b - i[after]) / (width - 1)) * fp
    prob = probation_length(n, percent)
    label[i < prob] = PROBATIONARY
    return FileRows(sweep, label, len(wins))


@dataclass
class Sweep:
    """``calcScoreByThreshold`` over a corpus: one row per distinct threshold, highest first
    (the first row, threshold 1.1, detects nothing)."""
    threshold: np.ndarray
    score: np.ndarray
    tp: np.ndarray
    tn: np.ndarray
    fp: np.ndarray
    fn: np.ndarray


def _scorable(files: list[tuple[np.ndarray, FileRows]]):
    """Concatenates the scorable rows of every file, windows numbered across the corpus."""
    scores, sweeps, wins = [], [], []
    offset = 0
    for anomaly, rows in files:
        a = np.asarray(anomaly, dtype=np.float64)
        if a.shape != rows.sweep.shape:
            raise ValueError(f"{len(a)} anomaly scores for {len(rows.sweep)} rows")
        keep = rows.window != PROBATIONARY
        w = rows.window[keep]
        scores.append(a[keep])
        sweeps.append(rows.sweep[keep])
        wins.append(np.where(w >= 0, w + offset, OUTSIDE))
        offset += rows.n_windows
    if not scores:
        return np.zeros(0), np.zeros(0), np.zeros(0, np.int64)
    return np.concatenate(scores), np.concatenate(sweeps), np.concatenate(wins)


def sweep(files: list[tuple[np.ndarray, FileRows]], fn_weight: float) -> Sweep:
    """NAB's threshold sweep over ``files`` (``(anomaly_scores, FileRows)`` pairs, all with
    the same profile's weights): for each distinct anomaly score ``t`` (and 1.1), the corpus
    score when rows with score >= ``t`` are detections."""
    s, sw, win = _scorable(files)
    order = np.argsort(-s, kind="stable")
    s, sw, win = s[order], sw[order], win[order]
    in_win = win >= 0
    # windows that have at least one scorable row start as false negatives
    ids = np.unique(win[in_win])
    base = -fn_weight * len(ids)
    # each row's change of the corpus score when it becomes a detection: a false positive
    # adds its sweep score; a window row raises its window's part to the running maximum
    delta = np.where(in_win, 0.0, sw)
    for w in ids:
        pos = np.flatnonzero(win == w)
        run = np.maximum.accumulate(np.concatenate([[-fn_weight], sw[pos]]))
        delta[pos] = np.diff(run)
    total = base + np.cumsum(delta)
    tp = np.cumsum(in_win)
    fp = np.cumsum(~in_win)
    n_in, n_out = int(in_win.sum()), int((~in_win).sum())
    # a threshold's row is taken after the last row with that score
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True]) if len(s) else np.zeros(0, np.int64)
    thr = np.r_[1.1, s[last]]
    score = np.r_[base, total[last]]
    tp_ = np.r_[0, tp[last]]
    fp_ = np.r_[0, fp[last]]
    if len(s) and s[0] == 1.1:  # NAB does not emit the empty 1.1 row then
        thr, score, tp_, fp_ = thr[1:], score[1:], tp_[1:], fp_[1:]
    return Sweep(thr, score, tp_, n_out - fp_, fp_, n_in - tp_)


def best_threshold(sw: Sweep) -> tuple[float, float]:
    """``optimizeThreshold``: (threshold, raw score) of the highest score; of equal scores the
    first row, i.e. the highest threshold (Python's sort is stable)."""
    i = int(np.argmax(sw.score))
    return float(sw.threshold[i]), float(sw.score[i])


def score_at(anomaly: np.ndarray, rows: FileRows, threshold: float, fn_weight: float) -> dict:
    """One file's raw score and counts when rows with score >= ``threshold`` are detections
    (``Sweeper.scoreDataSet`` with the corpus threshold)."""
    a = np.asarray(anomaly, dtype=np.float64)
    keep = rows.window != PROBATIONARY
    det = (a >= threshold) & keep
    in_win = rows.window >= 0
    score = float(rows.sweep[det & ~in_win].sum())
    detected = 0
    first = []
    for w in np.unique(rows.window[in_win]):
        sel = rows.window == w
        hit = det & sel
        if hit.any():
            score += float(rows.sweep[hit].max())
            detected += 1
            first.append(int(np.flatnonzero(hit)[0]))
        else:
            score -= fn_weight
    return {"score": score, "tp": int((det & in_win).sum()), "fp": int((det & ~in_win).sum()),
            "fn": int((~det & in_win & keep).sum()), "tn": int((~det & ~in_win & keep).sum()),
            "windows_detected": detected, "first_detection_rows": first}


def null_score(files_rows: list[FileRows], fn_weight: float) -> float:
    """The null detector's raw corpus score (NAB's ``null`` detector: every row scores 0.5),
    through the same sweep and threshold choice."""
    pairs = [(np.full(len(r.sweep), 0.5), r) for r in files_rows]
    return best_threshold(sweep(pairs, fn_weight))[1]


def perfect_score(n_windows: int, profile: dict) -> float:
    """``normalize``'s perfect score: every labelled window x ``tpWeight``."""
    return n_windows * profile["tpWeight"]


def normalized(raw: float, null: float, perfect: float) -> float:
    """``100 * (raw - null) / (perfect - null)``."""
    return 100.0 * (raw - null) / (perfect - null)
