"""``edgert demo``: the daemon and a sensor replaying shipped motor current, over real ZeroMQ.

The sensor (a separate ``edgert replay`` process) streams a healthy recording the shipped
model never saw in training, then a short-circuit fault, each recording separated by a gap
in sensor time. The demo subscribes to the daemon's events, shows live progress, stops both
processes, and reports windows, anomalies, whether the fault was found, false alarms on the
healthy stretch and the daemon's own latency figures.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import zmq

from . import events as ev
from . import models

HEALTHY = "SC_HLT_005"
FAULT = "SC_A3_B0_C0_001"  # 30 % inter-turn short circuit in phase A
RATE_HZ = 1000.0
GAP_S = 1.0


def _say(as_json: bool, msg: str) -> None:
    print(msg, file=sys.stderr if as_json else sys.stdout, flush=True)


def run_demo(seconds: float = 10.0, as_json: bool = False, speed: float = 10.0,
             model: str = "motor-ae", classifier: str | None = "motor-cnn") -> int:
    """Run the demo; returns the exit status (0 when both processes ran to the end).

    Args:
      seconds: about how long the sensor replays (wall clock), > 0.
      speed: replay speed-up over the 1 kHz recordings, > 0.
    Raises:
      ValueError when seconds or speed is not a positive finite number.
    """
    for name, v in (("seconds", seconds), ("speed", speed)):
        if not (isinstance(v, (int, float)) and 0 < v < float("inf")):
            raise ValueError(f"{name} must be a positive number, got {v!r}")
    m = models.load(model)
    if classifier and classifier not in models.shipped():
        classifier = None
    healthy = m.manifest.get("demo", {}).get("healthy", HEALTHY)
    fault = m.manifest.get("demo", {}).get("fault", FAULT)
    from .data import itsc_recording

    n_rec = itsc_recording(healthy).shape[0]
    rec_s = n_rec / RATE_HZ / speed  # wall seconds per recording
    n_total = max(2, int(seconds / rec_s))
    n_healthy = max(1, int(round(n_total * 0.6)))
    n_fault = max(1, n_total - n_healthy)
    files = [f"itsc:{healthy}"] * n_healthy + [f"itsc:{fault}"] * n_fault
    dt = int(round(1e9 / RATE_HZ))
    t0 = time.time_ns()
    seg_len = n_rec * dt + int(GAP_S * 1e9)
    fault_from = t0 + n_healthy * seg_len  # first ns of the fault stretch

    tmp = tempfile.mkdtemp(prefix="edgert-demo-")
    listen, events_ep = f"ipc://{tmp}/sensors", f"ipc://{tmp}/events"
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"event/")
    sub.connect(events_ep)
    env = dict(os.environ)
    py = [sys.executable, "-m", "edgert"]
    daemon = subprocess.Popen(py + ["serve", "--listen", listen, "--events", events_ep, "--model", model,
                                    "--stats-interval", "0.5"]
                              + (["--classifier", classifier] if classifier else []),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # Start the sensor once the daemon's events reach us, so no early anomaly is missed
    # (a SUB that connects before the PUB binds joins a little late).
    t_wait = time.monotonic() + 120
    while not sub.poll(200):
        if daemon.poll() is not None or time.monotonic() > t_wait:
            _say(as_json, "edgert demo: the daemon did not start:\n" + daemon.communicate()[1][-3000:])
            return 1
    with open(f"{tmp}/files", "w") as fh:  # an argument list can be too long for exec; a @file cannot
        fh.write("\n".join(files) + "\n")
    sensor = subprocess.Popen(py + ["replay", f"@{tmp}/files", "--to", listen, "--sensor", "motor-1",
                                    "--rate", str(RATE_HZ), "--speed", str(speed), "--block", "64",
                                    "--gap", str(GAP_S), "--t0", str(t0), "--wait", "60"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _say(as_json, f"edgert demo: model {m.name}; sensor motor-1 replays {n_healthy} x {healthy} "
                  f"(healthy, unseen in training) then {n_fault} x {fault} (30 % short circuit, phase A) "
                  f"at {speed:g}x real time")
    counts = {"anomalies": 0, "healthy_alarms": 0, "fault_hits": 0}
    fault_classes: dict = {}

    def tally(payload: dict) -> None:
        """Count an anomaly event against the healthy or the fault stretch (and its class)."""
        counts["anomalies"] += 1
        if payload["t_start"] < fault_from:
            counts["healthy_alarms"] += 1
            return
        counts["fault_hits"] += 1
        c = payload.get("class")
        if c:
            fault_classes[c] = fault_classes.get(c, 0) + 1

    backend = None
    deadline = time.monotonic() + seconds * 3 + 90  # cold start can compile kernels
    try:
        while True:
            if sub.poll(200):
                kind, sensor_id, payload = ev.decode(sub.recv_multipart())
                if kind == "anomaly":
                    backend = payload.get("backend", backend)
                    tally(payload)
                elif kind == "stats":
                    backend = payload.get("backend", backend)
                    if not payload["windows"]:
                        continue  # nothing scored yet: no latency to show (it would be null)
                    _say(as_json, f"  {payload['windows']:6d} windows  {payload['windows_per_s']:8.1f}/s  "
                                  f"p50 {payload['p50_latency_us']:7.0f} µs  p99 {payload['p99_latency_us']:7.0f} µs  "
                                  f"anomalies {payload['anomalies']}  dropped {payload['dropped']}")
            if sensor.poll() is not None:
                # Let in-flight events arrive, then stop the daemon.
                t_end = time.monotonic() + 0.5
                while time.monotonic() < t_end:
                    if sub.poll(100):
                        kind, _, payload = ev.decode(sub.recv_multipart())
                        if kind == "anomaly":
                            tally(payload)
                break
            if daemon.poll() is not None or time.monotonic() > deadline:
                break
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        try:
            d_out, d_err = daemon.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            d_out, d_err = daemon.communicate()
        if sensor.poll() is None:
            sensor.kill()
        s_out, s_err = sensor.communicate()
        sub.close()
        shutil.rmtree(tmp, ignore_errors=True)
    final = {}
    for line in d_out.splitlines():
        if line.startswith("{"):
            try:
                final = json.loads(line)
            except json.JSONDecodeError:
                pass
    if not final or sensor.returncode != 0:
        _say(as_json, "edgert demo: FAILED")
        _say(as_json, "daemon stderr:\n" + d_err[-3000:])
        _say(as_json, "sensor stderr:\n" + s_err[-3000:])
        return 1
    healthy_alarms, fault_hits = counts["healthy_alarms"], counts["fault_hits"]
    healthy_windows = n_healthy * ((n_rec - m.window) // m.hop + 1)
    fault_windows = n_fault * ((n_rec - m.window) // m.hop + 1)
    result = {
        "windows": final["windows"],
        "anomalies": final["anomalies"],
        "fault_detected": fault_hits > 0,
        "fault_windows_flagged": fault_hits,
        "fault_windows": fault_windows,
        "false_alarms": healthy_alarms,
        "healthy_windows": healthy_windows,
        "p50_latency_us": final["p50_latency_us"],
        "p99_latency_us": final["p99_latency_us"],
        "backend": final.get("backend", backend),
        "kernels": final.get("kernels"),
        "dropped": final["dropped"],
        "model": m.name,
        "healthy_recording": healthy,
        "fault_recording": fault,
        "classifier": classifier,
        "fault_class": max(fault_classes, key=fault_classes.get) if fault_classes else None,
        "fault_class_share": round(max(fault_classes.values()) / sum(fault_classes.values()), 3)
        if fault_classes else None,
        "true_fault_class": fault.rsplit("_", 1)[0],
        "daemon_rss_mb": final.get("rss_mb"),
        "daemon_rss_anon_mb": final.get("rss_anon_mb"),
        "daemon_rss_file_mb": final.get("rss_file_mb"),
    }
    _say(as_json, f"done: {result['windows']} windows, fault {'DETECTED' if result['fault_detected'] else 'MISSED'} "
                  f"({fault_hits}/{fault_windows} fault windows flagged), false alarms {healthy_alarms}/"
                  f"{healthy_windows} healthy windows, latency p50 {result['p50_latency_us']:.0f} µs "
                  f"p99 {result['p99_latency_us']:.0f} µs, backend {result['backend']}")
    if classifier:
        _say(as_json, f"fault class from {classifier}: {result['fault_class']} on "
                      f"{100 * (result['fault_class_share'] or 0):.0f} % of flagged windows "
                      f"(true class {result['true_fault_class']})")
    if as_json:
        print(json.dumps(result), flush=True)
    return 0
