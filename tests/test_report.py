"""Explanations: replay writes every window's score and explanation as CSV; report draws it."""

import argparse
import csv

import numpy as np
import pytest

from edgert.data import itsc_recording
from edgert.replay import EventRecorder, replay
from test_daemon import HEALTHY, Running, windows_per_recording


def test_replay_events_csv_and_report_png(tmp_path):
    r = Running(tmp_path, "ipc", "sub", publish_scores=True)
    try:
        rec = EventRecorder(r.d.events_endpoint, "m1", ctx=r.ctx)
        pub = r.publisher("m1")
        assert pub.wait_subscribed(5)
        import time
        time.sleep(0.3)
        segs = [itsc_recording(HEALTHY), itsc_recording("SC_A0_B0_C2_001")]
        res = replay(segs, pub, 1000.0, realtime=False, on_block=lambda *_: rec.poll(0))
        pub.close()
        per = windows_per_recording(r.d.model)
        assert r.wait_windows(2 * per)
        rec.drain(quiet_s=0.5)
        out = tmp_path / "ev.csv"
        n = rec.write_csv(str(out), res["spans"], res["dt"], [s.shape[0] for s in segs], window=r.d.model.window)
        rec.close()
    finally:
        r.close()
    assert n == 2 * per
    rows = list(csv.DictReader(open(out)))
    healthy = [x for x in rows if x["segment"] == "0"]
    fault = [x for x in rows if x["segment"] == "1"]
    assert len(healthy) == len(fault) == per
    assert sum(int(x["anomaly"]) for x in healthy) == 0
    assert all(int(x["anomaly"]) for x in fault)
    assert all(x["top_channels"].split(" ")[0] in ("ia", "ib", "ic") and x["share_ic"] for x in fault)
    assert [int(x["sample"]) for x in fault[:3]] == [0, 16, 32]
    # each window's last sample: from the anomaly event where there is one, else from the window
    assert all(int(x["t_end_ns"]) - int(x["t_start_ns"]) == 63 * res["dt"] for x in rows)

    pytest.importorskip("matplotlib")
    from edgert.report import main
    png = tmp_path / "ev.png"
    args = argparse.Namespace(events=str(out), data="itsc:SC_A0_B0_C2_001", segment=1, png=str(png))
    assert main(args) == 0
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    _check_figure(str(out), tmp_path)


def _check_figure(events_csv, tmp_path):
    """The picture of a real run, read as a plant engineer would: seconds, units, a legend for
    flagged spans, a labelled threshold, one colour per channel, no solid 60 Hz band."""
    from edgert.report import plot, read_events

    rows = [r for r in read_events(events_csv) if r["segment"] == 1]
    x = itsc_recording("SC_A0_B0_C2_001")
    fig = plot(rows, str(tmp_path / "f.png"), 64, x, ["ia", "ib", "ic"], signal_names=["ia", "ib", "ic"], unit="A")
    sig, score, share, zoom = fig.axes
    for a in (share, zoom):
        assert a.get_xlabel() == "time since the first sample of the recording (s)"
    for a in (sig, score, share):
        lo, hi = a.get_xlim()
        assert lo == 0 and 0.99 < hi < 1.01  # 1000 samples at 1 kHz: one second, not 1000 samples
    assert sig.get_ylabel() == "RMS (A)" and zoom.get_ylabel() == "signal (A)"
    # 60 Hz drawn as its RMS (a line, not a band from -peak to +peak), the waveform only zoomed
    assert all(np.ptp(line.get_ydata()) < 0.25 * np.ptp(x[:, c]) for c, line in enumerate(sig.get_lines()))
    assert zoom.get_xlim()[1] - zoom.get_xlim()[0] < 0.3
    colors = {}
    for a in (sig, share, zoom):
        for line in a.get_lines():
            if line.get_label() in ("ia", "ib", "ic"):
                assert colors.setdefault(line.get_label(), line.get_color()) == line.get_color()
    assert len(set(colors.values())) == 3
    legend = [t.get_text() for t in score.get_legend().get_texts()]
    assert "threshold 0.00411" in legend and "flagged span (score > threshold)" in legend
    assert "share of the" in share.get_ylabel()


def test_slow_signals_are_drawn_as_they_are(tmp_path):
    pytest.importorskip("matplotlib")
    from edgert.report import plot

    t0 = 1_700_000_000_000_000_000
    rows = [{"segment": 0, "sample": i * 16, "t_start_ns": t0 + i * 16_000_000, "t_end_ns": t0 + (i * 16 + 63) * 1_000_000,
             "score": 0.001, "threshold": 0.004, "anomaly": 0, "top_channels": ""} for i in range(59)]
    slow = np.c_[np.sin(np.linspace(0, 3, 1000)), np.linspace(0, 1, 1000)]  # a level and a ramp
    fig = plot(rows, str(tmp_path / "s.png"), 64, slow, [], signal_names=["level", "ramp"])
    assert len(fig.axes) == 3  # no zoom panel needed
    assert np.array_equal(fig.axes[0].get_lines()[0].get_ydata(), slow[:, 0])
    assert fig.axes[0].get_ylabel() == "signal (as recorded)"


def test_report_refuses_what_it_cannot_read(tmp_path):
    from edgert.report import main
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    args = argparse.Namespace(events=str(bad), data=None, segment=0, png=None)
    assert main(args) == 2
    args.events = str(tmp_path / "missing.csv")
    assert main(args) == 2
