"""``edgert report EVENTS [--data FILE] [--png OUT]``: why did an alarm fire, as a picture.

Reads the per-window CSV that ``edgert replay --events-out`` writes and draws, for one replayed
file, against time in seconds since its first sample: the signal (when ``--data`` is given),
each window's score against its threshold (log scale), and each flagged window's split of the
reconstruction error between the channels. Flagged spans are shaded in every panel; a channel
has the same colour in every panel. A fast oscillating signal (mains current) is drawn as its
RMS over one window, with its waveform zoomed on the first flagged span, so it is never a solid
band. matplotlib is optional (``pip install 'edgert[report]'``); without it the command says so.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

FLAG_COLOR = "tab:red"
SPAN_ALPHA = 0.13
BAND_CYCLES = 20  # more cycles than this across the plot and raw lines merge into a band


def read_events(path: str) -> list[dict]:
    """Rows of an events CSV as dicts (numbers converted). Raises ValueError naming the file."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: not readable as CSV ({exc})") from None
    need = {"segment", "sample", "score", "threshold", "anomaly"}
    if rows and not need <= set(rows[0]):
        raise ValueError(f"{path}: not an edgert events CSV (missing columns {sorted(need - set(rows[0]))})")
    for i, r in enumerate(rows):
        try:
            for k in ("segment", "sample", "anomaly"):
                r[k] = int(r[k])
            for k in ("score", "threshold"):
                r[k] = float(r[k])
            for k in ("t_start_ns", "t_end_ns"):
                r[k] = int(r[k]) if r.get(k) not in (None, "") else None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: row {i + 2}: {exc}") from None
    return rows


def _dt_ns(rows: list[dict], window: int) -> float | None:
    """Sample period in ns from the rows' times, or None when they do not say."""
    with_t = [r for r in rows if r.get("t_start_ns") is not None]
    for a, b in zip(with_t, with_t[1:]):
        if b["sample"] != a["sample"]:
            return (b["t_start_ns"] - a["t_start_ns"]) / (b["sample"] - a["sample"])
    for r in with_t:
        if r.get("t_end_ns") is not None and window > 1:
            return (r["t_end_ns"] - r["t_start_ns"]) / (window - 1)
    return None


def _spans(starts: np.ndarray, ends: np.ndarray) -> list[tuple]:
    """Merge overlapping [start, end] intervals (sorted by start) into disjoint spans."""
    out: list[list] = []
    for s, e in zip(starts, ends):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [tuple(x) for x in out]


def _period(x: np.ndarray) -> float | None:
    """The dominant period of the signal in samples (strongest spectral line of any channel,
    refined between FFT bins), or None for a signal with no cycle inside the recording."""
    n = x.shape[0]
    if n < 8:
        return None
    spec = np.abs(np.fft.rfft(x - x.mean(axis=0), axis=0))
    spec[0] = 0.0
    c = int(np.argmax(spec.max(axis=0)))
    k = int(np.argmax(spec[:, c]))
    if k < 1:
        return None
    if k >= spec.shape[0] - 1:
        return 2.0
    y0, y1, y2 = np.log(spec[k - 1:k + 2, c] + 1e-300)
    den = y0 - 2 * y1 + y2
    k_f = k + (0.5 * (y0 - y2) / den if den != 0 else 0.0)  # parabolic peak interpolation
    return n / k_f


def _moving_rms(x: np.ndarray, length: float) -> np.ndarray:
    """Centred RMS of each column over `length` samples (fractional: a whole number of cycles of
    a period that is not a whole number of samples), vectorized; the ends use the first / last
    `length` samples."""
    n = x.shape[0]
    length = float(min(max(length, 1.0), n))
    c = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x.astype(np.float64) ** 2, axis=0)])
    lo = np.clip(np.arange(n) - length / 2, 0.0, n - length)
    pos = np.arange(n + 1, dtype=np.float64)
    out = np.empty(x.shape, dtype=np.float64)
    for j in range(x.shape[1]):  # per channel, each one vectorized over samples
        e = np.interp(lo + length, pos, c[:, j]) - np.interp(lo, pos, c[:, j])
        out[:, j] = np.sqrt(np.maximum(e, 0.0) / length)
    return out


def channel_colors(names: list[str]) -> dict:
    """One colour per channel name, the same in every panel."""
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink",
               "tab:olive", "tab:cyan", "tab:gray"]
    return {n: palette[i % len(palette)] for i, n in enumerate(names)}


def plot(rows: list[dict], png: str, window: int, signal=None, channels=None, title: str = "",
         signal_names=None, unit: str = ""):
    """Draw the report into `png`.

    Args:
      rows: one segment's rows of `read_events`.
      window: samples per window (used when the rows have no ``t_end_ns``).
      signal: optional [n, C] samples of the replayed file.
      channels: channel names of the ``share_*`` columns (the model's order).
      signal_names: names of the signal's columns (default: `channels`).
      unit: the signal's unit for its axis label.
    Returns:
      the matplotlib Figure (closed; for inspection).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = sorted(rows, key=lambda r: r["sample"])
    channels = list(channels or [])
    sig_names = list(signal_names or channels or [f"ch{c}" for c in range(signal.shape[1] if signal is not None else 0)])
    colors = channel_colors(channels + [n for n in sig_names if n not in channels])
    dt = _dt_ns(rows, window)
    scale = dt * 1e-9 if dt else None  # seconds per sample, or None: plot against samples
    sample = np.array([r["sample"] for r in rows], dtype=np.float64)
    per_row_w = np.array([(r["t_end_ns"] - r["t_start_ns"]) / dt + 1 if dt and r.get("t_end_ns") is not None
                          and r.get("t_start_ns") is not None else window for r in rows])
    x0 = sample * (scale or 1)
    x1 = (sample + per_row_w - 1) * (scale or 1)  # a window is decided at its last sample
    xlabel = "time since the first sample of the recording (s)" if scale else "sample"
    score = np.array([r["score"] for r in rows])
    thr = np.array([r["threshold"] for r in rows])
    flag = np.array([r["anomaly"] for r in rows], bool)
    spans = _spans(x0[flag], x1[flag])

    period = _period(signal) if signal is not None else None
    oscillating = period is not None and signal.shape[0] / period > BAND_CYCLES
    kinds = (["signal"] if signal is not None else []) + ["score", "share"] + (["zoom"] if oscillating else [])
    heights = {"signal": 2.6, "zoom": 2.6, "score": 2.6, "share": 2.2}
    fig, axes = plt.subplots(len(kinds), 1, figsize=(11, sum(heights[k] for k in kinds) + 0.9),
                             gridspec_kw={"height_ratios": [heights[k] for k in kinds]})
    ax = dict(zip(kinds, axes))
    unit_txt = f" ({unit})" if unit else " (as recorded)"
    if signal is not None:
        ts = np.arange(signal.shape[0]) * (scale or 1)
        a = ax["signal"]
        if oscillating:
            n_cyc = max(1, round(window / period))  # whole cycles spanning about one window
            rms = _moving_rms(signal, n_cyc * period)
            for c, name in enumerate(sig_names):
                a.plot(ts, rms[:, c], lw=1.4, color=colors[name], label=name)
            a.set_ylabel(f"RMS{unit_txt}")
            a.set_ylim(0, 1.12 * float(rms.max()) or 1.0)  # from zero: a 1 % wobble must not look like a fault
            freq = f", {1e9 / (period * dt):.4g} Hz" if dt else ""
            a.set_title(f"signal: moving RMS of each channel over {n_cyc} cycles ({n_cyc * period:.1f} samples{freq})",
                        fontsize=9, loc="left")
        else:
            for c, name in enumerate(sig_names):
                a.plot(ts, signal[:, c], lw=0.9, color=colors[name], label=name)
            a.set_ylabel(f"signal{unit_txt}")
            a.set_title("signal", fontsize=9, loc="left")
        a.legend(loc="lower right", fontsize=8, ncol=len(sig_names))
        if oscillating:
            z = ax["zoom"]
            w_s = window * (scale or 1)  # four windows: a few cycles of mains, each one readable
            start = spans[0][0] if spans else x0[0]
            zl = max(ts[0], start - w_s)
            zh = min(ts[-1], zl + 4 * w_s)
            sel = (ts >= zl) & (ts <= zh)
            for c, name in enumerate(sig_names):
                z.plot(ts[sel], signal[sel, c], lw=1.1, color=colors[name], label=name)
            z.set_xlim(zl, zh)
            z.set_ylabel(f"signal{unit_txt}")
            what = "around the first flagged span" if spans else "of the first windows (nothing flagged)"
            z.set_title(f"waveform {what}: the dotted box in the first panel", fontsize=9, loc="left")
            for s, e in spans:
                if e >= zl and s <= zh:
                    z.axvspan(s, e, color=FLAG_COLOR, alpha=SPAN_ALPHA, lw=0)
            z.set_xlabel(xlabel)
            a.axvspan(zl, zh, fill=False, ec="0.35", ls=":", lw=1.2)  # where the last panel zooms
    a = ax["score"]
    if (~flag).any():
        a.semilogy(x1[~flag], score[~flag], "o", ms=3, color="tab:blue", label="window score")
    if flag.any():
        a.semilogy(x1[flag], score[flag], "o", ms=3, color=FLAG_COLOR, label="flagged window score")
    if np.ptp(thr) <= 1e-12 * max(thr.max(), 1e-30):
        a.axhline(thr[0], color="black", ls="--", lw=1, label=f"threshold {thr[0]:.3g}")
    else:
        a.step(x1, thr, where="post", color="black", ls="--", lw=1,
               label=f"threshold (adaptive, {thr.min():.3g}-{thr.max():.3g})")
    a.set_ylabel("score (mean squared\nreconstruction error)")
    a.set_title("anomaly score of each window, at its last sample", fontsize=9, loc="left")
    a.set_yscale("log")
    handles, labels = a.get_legend_handles_labels()
    if spans:
        handles.append(Patch(color=FLAG_COLOR, alpha=0.35, lw=0))
        labels.append("flagged span (score > threshold)")
    a.legend(handles, labels, loc="best", fontsize=8)
    a = ax["share"]
    share_cols = [f"share_{c}" for c in channels]
    fl_rows = [r for r, f in zip(rows, flag) if f]
    if channels and fl_rows and all(r.get(k) not in (None, "") for r in fl_rows for k in share_cols):
        sh = np.array([[float(r[k]) for k in share_cols] for r in fl_rows])
        for c, name in enumerate(channels):
            a.plot(x1[flag], sh[:, c], "o", ms=3.5, color=colors[name], label=name)
        a.set_ylim(-0.03, 1.03)
        a.legend(loc="upper right", fontsize=8, ncol=len(channels), title="channel", title_fontsize=8)
    else:
        a.text(0.5, 0.5, "no flagged window" if not fl_rows else "no per-channel shares in the CSV",
               transform=a.transAxes, ha="center", va="center", color="gray")
    a.set_ylabel("share of the\nreconstruction error")
    a.set_title("flagged windows: each channel's share of the reconstruction error", fontsize=9, loc="left")
    a.set_xlabel(xlabel)
    shared = [ax[k] for k in ("signal", "score", "share") if k in ax]
    lo, hi = min(x0.min(), 0.0), x1.max()
    if signal is not None:
        hi = max(hi, (signal.shape[0] - 1) * (scale or 1))
    for k in shared:
        k.set_xlim(lo, hi)
        for s, e in spans:
            k.axvspan(s, e, color=FLAG_COLOR, alpha=SPAN_ALPHA, lw=0)
        k.grid(True, alpha=0.3, lw=0.5)
    if "zoom" in ax:
        ax["zoom"].grid(True, alpha=0.3, lw=0.5)
    fig.suptitle(title or f"{flag.sum()} of {len(rows)} windows flagged", fontsize=11)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return fig


def _err(msg: str) -> int:
    print(f"edgert report: {msg}", file=sys.stderr)
    return 2


def main(args) -> int:
    """``edgert report``: returns the exit status (2 for input it cannot use)."""
    try:
        rows = read_events(args.events)
    except ValueError as exc:
        return _err(str(exc))
    rows = [r for r in rows if r["segment"] == args.segment]
    if not rows:
        return _err(f"{args.events}: no scored windows for segment {args.segment}")
    png = args.png or args.events.rsplit(".", 1)[0] + ".png"
    parent = Path(png).resolve().parent
    if not parent.is_dir():
        return _err(f"--png {png}: directory {parent} does not exist")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return _err("needs matplotlib (pip install 'edgert[report]')")
    shares = [k for k in rows[0] if k.startswith("share_")]
    channels = [k[len("share_"):] for k in shares] or None
    signal = names = None
    if args.data:
        from .replay import load_recording
        try:
            rec = load_recording(args.data)
        except ValueError as exc:
            return _err(str(exc))
        signal, names = rec.samples, rec.names
        if names is None and channels and len(channels) == signal.shape[1]:
            names = channels  # a headerless file was sent in file order as the model's channels
    window = int(getattr(args, "window", None) or 64)
    starts = sorted(r["sample"] for r in rows)
    hop = min((b - a for a, b in zip(starts, starts[1:]) if b > a), default=1)
    flagged = sum(r["anomaly"] for r in rows)
    what = args.data or f"{args.events} segment {args.segment}"
    try:
        plot(rows, png, window, signal, channels, signal_names=names, unit=getattr(args, "unit", "") or "",
             title=f"{what}: {flagged} of {len(rows)} windows flagged (one window every {hop} samples)")
    except OSError as exc:
        return _err(f"--png {png}: {exc}")
    print(f"edgert report: wrote {png} ({flagged} of {len(rows)} windows flagged)")
    return 0
