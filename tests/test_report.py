"""Explanations: replay writes every window's score and explanation as CSV; report draws it."""

import argparse
import csv

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
        n = rec.write_csv(str(out), res["spans"], res["dt"], [s.shape[0] for s in segs])
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

    pytest.importorskip("matplotlib")
    from edgert.report import main
    png = tmp_path / "ev.png"
    args = argparse.Namespace(events=str(out), data="itsc:SC_A0_B0_C2_001", segment=1, png=str(png))
    assert main(args) == 0
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_report_refuses_what_it_cannot_read(tmp_path):
    from edgert.report import main
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    args = argparse.Namespace(events=str(bad), data=None, segment=0, png=None)
    assert main(args) == 2
    args.events = str(tmp_path / "missing.csv")
    assert main(args) == 2
