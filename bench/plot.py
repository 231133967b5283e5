"""``edgert bench --plot DIR``: PNG figures from a bench result (matplotlib, imported lazily).

* ``e2e-latency-cdf-<N>sensors.png``: per sensor count, the receipt-to-decision latency CDF
  of every load step (left) and its tail, 1 − CDF on a log scale (right), from the daemon's
  histogram;
* ``e2e-throughput.png``: achieved vs offered windows/s per sensor count (left) and p99 /
  p99.9 latency vs offered load (right);
* ``bus.png``: messages/s and samples/s vs block size, per transport and receive mode.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def require():
    """The matplotlib.pyplot module (Agg backend); RuntimeError saying how to install it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError(f"--plot needs matplotlib ({exc}); install it with "
                           "`pip install matplotlib` (or `pip install 'edgert[report]'`)") from None
    return plt


def _cdf(hist: dict):
    le = np.asarray(hist.get("le_us", []), dtype=float)
    counts = np.asarray(hist.get("counts", []), dtype=float)
    if counts.size == 0 or counts.sum() == 0:
        return None, None
    c = np.cumsum(counts) / counts.sum()
    return le, c


def plot_all(result: dict, out_dir) -> list:
    """Write every figure the result has data for; returns the paths written."""
    plt = require()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    stamp = f"{result.get('timestamp', '')} {result.get('machine', {}).get('cpu_model', '')}".strip()
    e = result.get("e2e") or {}
    runs = e.get("runs") or {}
    for n, run in runs.items():
        steps = [s for s in run.get("steps", []) if "error" not in s and s.get("latency_histogram")]
        if not steps:
            continue
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
        for st in steps:
            le, c = _cdf(st["latency_histogram"])
            if le is None:
                continue
            label = f"{st['load_fraction']:.0%} ({st['offered_windows_per_s']:,.0f} w/s)"
            ax1.step(le, c, where="post", label=label)
            tail = np.clip(1.0 - c, 1e-7, None)
            ax2.step(le, tail, where="post", label=label)
        for ax in (ax1, ax2):
            ax.set_xscale("log")
            ax.set_xlabel("receipt -> decision latency (µs)")
            ax.grid(True, which="both", alpha=0.3)
        ax1.set_ylabel("fraction of windows ≤ x")
        ax2.set_yscale("log")
        ax2.set_ylabel("fraction of windows > x")
        ax2.axhline(1e-2, color="grey", lw=0.6, ls=":")
        ax2.axhline(1e-3, color="grey", lw=0.6, ls=":")
        ax1.legend(title="offered load", fontsize=8)
        fig.suptitle(f"edgert daemon latency, {n} sensor(s), saturation "
                     f"{run.get('saturation_windows_per_s', float('nan')):,.0f} windows/s\n{stamp}", fontsize=9)
        fig.tight_layout()
        p = out / f"e2e-latency-cdf-{n}sensors.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)
    if runs:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
        top = 0.0
        for i, (n, run) in enumerate(runs.items()):
            steps = [s for s in run.get("steps", []) if "error" not in s]
            if not steps:
                continue
            col = f"C{i}"
            x = [s["offered_windows_per_s"] for s in steps]
            y = [s.get("windows_per_s") or np.nan for s in steps]
            top = max(top, max(x), np.nanmax(y) if any(v == v for v in y) else 0)
            ax1.plot(x, y, "o-", color=col, label=f"{n} sensor(s)")
            ax2.plot(x, [s.get("p99_latency_us") or np.nan for s in steps], "o-", color=col, label=f"{n}: p99")
            ax2.plot(x, [s.get("p999_latency_us") or np.nan for s in steps], "x--", color=col, label=f"{n}: p99.9")
        ax1.plot([0, top], [0, top], color="grey", lw=0.6, ls=":", label="achieved = offered")
        ax1.set_xlabel("offered windows/s")
        ax1.set_ylabel("achieved windows/s")
        ax1.legend(fontsize=8)
        ax2.set_xlabel("offered windows/s")
        ax2.set_ylabel("latency (µs)")
        ax2.set_yscale("log")
        ax2.legend(fontsize=7, ncol=2)
        for ax in (ax1, ax2):
            ax.grid(True, alpha=0.3)
        fig.suptitle(f"edgert daemon throughput vs offered load\n{stamp}", fontsize=9)
        fig.tight_layout()
        p = out / "e2e-throughput.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)
    b = result.get("bus") or {}
    pts = b.get("points") or []
    if pts:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
        for tr in sorted({p["transport"] for p in pts}):
            for mode in sorted({p["mode"] for p in pts}):
                sel = sorted((p for p in pts if p["transport"] == tr and p["mode"] == mode),
                             key=lambda p: p["block_samples"])
                if not sel:
                    continue
                x = [p["block_samples"] for p in sel]
                ax1.plot(x, [p["messages_per_s"] for p in sel], "o-", label=f"{tr} {mode}")
                ax2.plot(x, [p["samples_per_s"] for p in sel], "o-", label=f"{tr} {mode}")
        for ax, yl in ((ax1, "messages/s"), (ax2, "samples/s")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("block size (samples)")
            ax.set_ylabel(yl)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"ZeroMQ PUSH->PULL, wire format, {b.get('channels')} channels\n{stamp}", fontsize=9)
        fig.tight_layout()
        p = out / "bus.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)
    return written
