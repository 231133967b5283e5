"""Drift in the daemon: a level shift of one sensor's signal is an event/drift/<sensor> and
restarts that sensor's adaptive threshold calibration; a steady sensor raises none."""

import time

import numpy as np
import zmq

from edgert import config, wire
from edgert.daemon import Daemon
from edgert.data import itsc_recording


def test_level_shift_is_a_drift_event(tmp_path):
    cfg = config.load(None, listen=f"ipc://{tmp_path}/s", events=f"ipc://{tmp_path}/e",
                      threshold="spot", drift_interval_s=3600, watch_model_s=0,  # checked by hand below
                      max_clock_skew_s=0.0)  # synthetic sensor clocks (t0 = 10**18)
    ctx = zmq.Context()
    d = Daemon(cfg, ctx=ctx)
    d.bind()
    d.started_ns = time.perf_counter_ns()
    healthy = [itsc_recording(f"SC_HLT_00{i}") for i in (2, 3, 4, 5)]
    t = {"steady": 10**18, "shifting": 10**18}
    seq = {"steady": 0, "shifting": 0}
    drifts = []

    def send(sensor, x):
        for i in range(0, x.shape[0], 100):
            part = np.ascontiguousarray(x[i:i + 100])
            d.handle([sensor.encode(), wire.encode_header(seq[sensor], t[sensor], 1_000_000, part),
                      part.tobytes()], time.perf_counter_ns())
            seq[sensor] += 1
            t[sensor] += part.shape[0] * 1_000_000

    try:
        for interval in range(80):
            rec = healthy[interval % 4]
            send("steady", rec)
            # from interval 40 on, the shifting motor runs at a new operating point: +25 % current
            send("shifting", rec * (1.25 if interval >= 40 else 1.0))
            d.batcher.flush()
            for ev in d.check_drift():
                drifts.append((interval, ev))
    finally:
        d.sock.close(linger=0)
        d.events.close()
        ctx.destroy(linger=0)
    steady = [i for i, ev in drifts if ev["sensor"] == "steady"]
    shifting = [i for i, ev in drifts if ev["sensor"] == "shifting"]
    assert steady == []
    assert shifting and 40 <= shifting[0] <= 45, drifts
    ev = [ev for i, ev in drifts if ev["sensor"] == "shifting"][0]
    assert ev["recalibrating"] and any(s.startswith("rms:") for s in ev["statistics"])
