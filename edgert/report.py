"""``edgert report EVENTS [--data FILE] [--png OUT]``: why did an alarm fire, as a picture.

Reads the per-window CSV that ``edgert replay --events-out`` writes and draws, for one replayed
file: the signal (when ``--data`` is given), each window's score against its threshold (log
scale), the flagged spans shaded on both, and which channel carried most of the error.
matplotlib is optional (``pip install 'edgert[report]'``); without it the command says so.
"""

from __future__ import annotations

import csv
import sys


def read_events(path: str) -> list[dict]:
    """Rows of an events CSV as dicts (numbers converted). Raises ValueError naming the file."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    need = {"segment", "sample", "score", "threshold", "anomaly"}
    if rows and not need <= set(rows[0]):
        raise ValueError(f"{path}: not an edgert events CSV (missing columns {sorted(need - set(rows[0]))})")
    for r in rows:
        for k in ("segment", "sample", "anomaly"):
            r[k] = int(r[k])
        for k in ("score", "threshold"):
            r[k] = float(r[k])
    return rows


def plot(rows: list[dict], png: str, window: int, signal=None, channels=None, title: str = "") -> None:
    """Draw signal (optional), score/threshold and flagged spans into `png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n_axes = 3 if signal is not None else 2
    fig, axes = plt.subplots(n_axes, 1, figsize=(11, 2.6 * n_axes), sharex=True)
    x = np.array([r["sample"] for r in rows]) + window - 1  # a window is decided at its last sample
    score = np.array([r["score"] for r in rows])
    thr = np.array([r["threshold"] for r in rows])
    flag = np.array([r["anomaly"] for r in rows], bool)
    ax = 0
    if signal is not None:
        for c in range(signal.shape[1]):
            axes[0].plot(signal[:, c], lw=0.8, label=(channels[c] if channels else f"ch{c}"))
        axes[0].set_ylabel("signal")
        axes[0].legend(loc="upper right", fontsize=8)
        ax = 1
    axes[ax].semilogy(x, score, ".-", lw=0.8, ms=3, label="score")
    axes[ax].semilogy(x, thr, "r--", lw=1, label="threshold")
    axes[ax].set_ylabel("score")
    axes[ax].legend(loc="upper right", fontsize=8)
    top = [r.get("top_channels", "").split(" ")[0] if r["anomaly"] else "" for r in rows]
    names = sorted({t for t in top if t})
    for i, name in enumerate(names):
        sel = np.array([t == name for t in top])
        axes[ax + 1].plot(x[sel], np.full(sel.sum(), i), "s", ms=4, label=name)
    axes[ax + 1].set_yticks(range(len(names)), names)
    axes[ax + 1].set_ylabel("top channel")
    axes[ax + 1].set_xlabel("sample")
    for a in axes:  # shade flagged windows (their whole span)
        for s in x[flag]:
            a.axvspan(s - window + 1, s, color="red", alpha=0.04, lw=0)
    fig.suptitle(title or f"{flag.sum()} of {len(rows)} windows flagged")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(args) -> int:
    try:
        rows = read_events(args.events)
    except ValueError as exc:
        print(f"edgert report: {exc}", file=sys.stderr)
        return 2
    rows = [r for r in rows if r["segment"] == args.segment]
    if not rows:
        print(f"edgert report: {args.events}: no scored windows for segment {args.segment}", file=sys.stderr)
        return 2
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("edgert report: needs matplotlib (pip install 'edgert[report]')", file=sys.stderr)
        return 2
    signal = None
    if args.data:
        from .replay import load_samples
        try:
            signal = load_samples(args.data)
        except ValueError as exc:
            print(f"edgert report: {exc}", file=sys.stderr)
            return 2
    starts = sorted(r["sample"] for r in rows)
    hop = min((b - a for a, b in zip(starts, starts[1:]) if b > a), default=1)
    shares = [k for k in rows[0] if k.startswith("share_")]
    channels = [k[len("share_"):] for k in shares] or None
    window = int(getattr(args, "window", 0) or 64)
    png = args.png or args.events.rsplit(".", 1)[0] + ".png"
    flagged = sum(r["anomaly"] for r in rows)
    plot(rows, png, window, signal, channels,
         title=f"{args.events}: {flagged} of {len(rows)} windows flagged (hop {hop})")
    print(f"edgert report: wrote {png} ({flagged} of {len(rows)} windows flagged)")
    return 0
