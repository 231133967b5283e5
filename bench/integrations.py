"""``edgert bench --only integrations``: the daemon with its plant integrations on vs off.

"On" is the MQTT events sink (QoS 1 anomalies to a real Mosquitto this module starts on a free
port; a subscriber takes everything) plus the Prometheus endpoint scraped every second by a
thread of this process, as a Prometheus server would; "off" is the daemon with its ZeroMQ
events only. Runs interleaved (off, on, off, on, …) with the harness of bench/pipeline.py
(8 sensors × 64-sample blocks over ipc, saturation), on a healthy stream and in an anomaly
storm (every window flagged, so every window is an MQTT message). Figure: windows per daemon
CPU-second (all its threads, paho's included), on over off.

Needs ``mosquitto`` (Debian package) and the ``[mqtt]``/``[metrics]`` extras; says why when not.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request

from . import engine, pipeline

MOSQUITTO = next((p for p in ("/usr/sbin/mosquitto", shutil.which("mosquitto") or "") if p and os.path.exists(p)), None)


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Broker:
    """A Mosquitto on 127.0.0.1:<free port> with its own config in a temporary directory."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="edgert-bench-mqtt-")
        self.port = _free_port()
        conf = os.path.join(self.dir, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 100000\n")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on 127.0.0.1:{self.port} within 10 s")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class _Scraper(threading.Thread):
    """GET /metrics every `every` seconds until stopped; counts scrapes and their wall time."""

    def __init__(self, url: str, every: float = 1.0):
        super().__init__(daemon=True)
        self.url, self.every = url, every
        self.n, self.seconds, self.errors = 0, 0.0, 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.every):
            t = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    r.read()
                self.n += 1
                self.seconds += time.perf_counter() - t
            except OSError:
                self.errors += 1

    def halt(self) -> None:
        self._halt.set()
        self.join(10)


def _subscriber(port: int):
    """A paho client taking every edgert message (QoS 1), so the broker delivers for real."""
    import paho.mqtt.client as mqtt

    got = [0]
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="edgert-bench-sub")
    c.on_message = lambda *_a: got.__setitem__(0, got[0] + 1)
    c.connect("127.0.0.1", port)
    c.subscribe("edgert/#", qos=1)
    c.loop_start()
    return c, got


def why_not() -> str | None:
    """Why the section cannot run here, or None."""
    if MOSQUITTO is None:
        return "mosquitto is not installed (Debian: apt-get install mosquitto)"
    for mod, extra in (("paho.mqtt.client", "mqtt"), ("prometheus_client", "metrics")):
        try:
            __import__(mod)
        except ImportError:
            return f"{mod} is missing (pip install 'edgert[{extra}]')"
    return None


def compare(model, model_arg: str, rounds: int = 3, seconds: float = 4.0, log=None) -> dict:
    """Interleaved saturation runs with the integrations off and on, healthy and storm.

    Returns a JSON-safe dict: per stream and setting the rounds and medians of windows per
    daemon CPU-second, on/off ratios, and the on runs' MQTT delivery and scrape figures.
    """
    why = why_not()
    if why:
        return {"skipped": why}
    broker = Broker()
    sub, got = _subscriber(broker.port)
    out = {"rounds": rounds, "seconds": seconds, "streams": {}}
    try:
        streams = {"healthy": None, "storm": engine.storm_streams(model, 8)}
        res = {s: {"off": [], "on": []} for s in streams}
        for rnd in range(rounds):
            for sname, data in streams.items():
                for setting in ("off", "on"):
                    extra: tuple = ()
                    scraper = None
                    if setting == "on":
                        mport = _free_port()
                        extra = ("--events", f"mqtt://127.0.0.1:{broker.port}", "--metrics", f"127.0.0.1:{mport}")
                        scraper = _Scraper(f"http://127.0.0.1:{mport}/metrics")
                    before = got[0]
                    if scraper:
                        scraper.start()
                    try:
                        r = pipeline.saturate(model, model_arg, duration=seconds, settle=min(1.0, seconds / 4),
                                              block=64, streams=data, extra=extra)
                    finally:
                        if scraper:
                            scraper.halt()
                    row = {"windows_per_cpu_s": r.get("windows_per_daemon_cpu_s"), "windows_per_s": r.get("windows_per_s"),
                           "anomalies": r.get("anomalies"), "daemon_cpu_share": r.get("daemon_cpu_share")}
                    if setting == "on":
                        final = r.get("final") or {}
                        row.update({"mqtt_received_by_subscriber": got[0] - before,
                                    "scrapes": scraper.n, "scrape_errors": scraper.errors,
                                    "scrape_wall_ms_mean": round(1e3 * scraper.seconds / scraper.n, 2) if scraper.n else None,
                                    "mqtt_dropped": final.get("mqtt_dropped")})
                    res[sname][setting].append(row)
                    if log:
                        log(f"    {sname} {setting}: {row['windows_per_cpu_s']} windows/CPU-s")
        for sname, per in res.items():
            off = [x["windows_per_cpu_s"] for x in per["off"]]
            on = [x["windows_per_cpu_s"] for x in per["on"]]
            ratios = [a / b for a, b in zip(on, off) if a and b]
            out["streams"][sname] = {"off": per["off"], "on": per["on"],
                                     "off_median": statistics.median(off), "on_median": statistics.median(on),
                                     "on_over_off": round(statistics.median(ratios), 3) if ratios else None}
    finally:
        sub.loop_stop()
        sub.disconnect()
        broker.close()
    return out


def render_lines(r: dict) -> list:
    if r.get("skipped"):
        return [f"integrations: skipped ({r['skipped']})"]
    lines = ["integrations (MQTT events sink + Prometheus scraped every 1 s, on vs off; windows per daemon CPU-second)"]
    for s, x in r["streams"].items():
        lines.append(f"  {s:<8} off {x['off_median']:>10,.0f}  on {x['on_median']:>10,.0f}  on/off {x['on_over_off']}")
    return lines


def main(argv=None) -> int:
    import argparse
    import json
    import sys

    from edgert.models import load

    ap = argparse.ArgumentParser(prog="python -m edgert.bench.integrations", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="motor-ae")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    res = compare(load(a.model), a.model, a.rounds, a.seconds, log=lambda m: print(m, file=sys.stderr, flush=True))
    text = json.dumps(res, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    print("\n".join(render_lines(res)))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
