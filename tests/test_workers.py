"""``edgert serve --workers N`` end to end: the real CLI with N worker processes on one listening
socket, 64 sensors on their own ZeroMQ connections sending real ITSC recordings, one of them
faulty; a worker killed with SIGKILL mid-stream; the aggregated stats; hot-swap in every
worker; one reservoir per worker; SIGTERM and the final line."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import zmq

from edgert import events as ev
from edgert import models
from edgert.bus import SensorPublisher
from edgert.data import itsc_recording
from edgert.stats import LatencyHistogram
from edgert.workers import aggregate_stats, histogram_quantile, merge_histograms

HEALTHY = "SC_HLT_005"  # never seen in training
FAULT = "SC_A3_B0_C0_001"
N_SENSORS = 64
FAULTY = "s17"
BLOCK = 50  # 20 blocks per 1000-sample recording
BLOCKS_PER_SEG = 1000 // BLOCK
PER_SEG = (1000 - 64) // 16 + 1  # windows of one recording (window 64, hop 16)
T0 = 10**18
SEG_NS = 2 * 10**9  # one recording per 2 s of sensor time: a 1 s gap, so windows restart at each
MAX_FALSE_ALARM_RATE = 0.02


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """``python -m edgert serve --workers N`` with a TOML config, and a SUB socket on its events."""

    def __init__(self, tmp_path, n, transport="ipc", env=None, **keys):
        listen = f"ipc://{tmp_path}/s" if transport == "ipc" else f"tcp://127.0.0.1:{_free_port()}"
        self.n = n
        self.listen, self.events_ep = listen, f"ipc://{tmp_path}/e"
        conf = {"listen": listen, "events": self.events_ep, "workers": n, "stats_interval_s": 0.2,
                "max_clock_skew_s": 0.0, "stats_top_n": 100, **keys}
        self.conf_path = path = tmp_path / "edgert.toml"
        self.write_conf(conf)
        self.err_path = tmp_path / "stderr.log"
        self.err = open(self.err_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "edgert", "serve", "--config", str(path)],
                                     stdout=subprocess.PIPE, stderr=self.err, text=True,
                                     env=None if env is None else {**os.environ, **env})
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"event/")
        self.sub.connect(self.events_ep)
        self.events = []  # (receipt time.monotonic(), kind, sensor, payload)

    def write_conf(self, conf):
        self.conf = conf
        self.conf_path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in conf.items()))

    def stderr(self) -> str:
        self.err.flush()
        return self.err_path.read_text()[-3000:]

    def collect(self, seconds=0.0):
        end = time.monotonic() + seconds
        while True:
            while self.sub.poll(0):
                k, s, p = ev.decode(self.sub.recv_multipart())
                self.events.append((time.monotonic(), k, s, p))
            if time.monotonic() >= end:
                return
            self.sub.poll(20)

    def stats(self):
        return [p for _, k, s, p in self.events if k == "stats" and s == "daemon"]

    def wait(self, pred, timeout, what):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.collect(0.1)
            assert self.proc.poll() is None, f"daemon exited ({self.proc.returncode}): {self.stderr()}"
            st = self.stats()
            if st and pred(st[-1]):
                return st[-1]
        raise AssertionError(f"timed out waiting for {what}; last stats: {(self.stats() or [None])[-1]}\n"
                             f"{self.stderr()}")

    def wait_serving(self, timeout=120):
        return self.wait(lambda s: len(s["workers"]) == self.n and all(w["state"] == "serving" for w in s["workers"]),
                         timeout, f"{self.n} workers serving")

    def stop(self, timeout=40):
        t = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=timeout)
        took = time.monotonic() - t
        self.collect(0.2)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        assert self.proc.returncode == 0 and lines, self.stderr()
        final = json.loads(lines[-1])
        assert final["final"] is True
        return final, took

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.err.close()
        self.sub.close(linger=0)
        self.ctx.term()


class Sensors:
    """64 sensors, each its own XPUB connection (separate devices), sending 1000-sample ITSC
    recordings in 50-sample blocks, one recording every 2 s of sensor time."""

    def __init__(self, ctx, endpoint, faulty=FAULTY):
        self.ids = [f"s{i:02d}" for i in range(N_SENSORS)]
        recs = {name: itsc_recording(name) for name in (HEALTHY, FAULT)}
        self.blocks = {name: [r[i:i + BLOCK] for i in range(0, 1000, BLOCK)] for name, r in recs.items()}
        self.rec = {s: FAULT if s == faulty else HEALTHY for s in self.ids}
        self.pubs = [SensorPublisher(endpoint, s, kind="pub", ctx=ctx) for s in self.ids]
        for p in self.pubs:
            assert p.wait_subscribed(20), f"sensor {p.sensor}: no worker took its connection"
        self.k = 0

    def t0(self, k):
        seg, j = divmod(k, BLOCKS_PER_SEG)
        return T0 + seg * SEG_NS + j * BLOCK * 1_000_000

    def send_round(self):
        """Every sensor sends its next block."""
        j = self.k % BLOCKS_PER_SEG
        t0 = self.t0(self.k)
        for p in self.pubs:
            p.send(self.blocks[self.rec[p.sensor]][j], t0, 1_000_000)
        self.k += 1

    def stream(self, served, segments, period_s=0.025, on_round=None):
        for _ in range(segments * BLOCKS_PER_SEG):
            t = time.monotonic()
            self.send_round()
            if on_round is not None:
                on_round(self)
            served.collect(max(0.0, period_s - (time.monotonic() - t)))

    def close(self):
        for p in self.pubs:
            p.close()


def _wait_datagram(served, sock, timeout) -> bytes:
    """The next sd_notify datagram, collecting events meanwhile."""
    sock.setblocking(False)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            return sock.recv(4096)
        except BlockingIOError:
            served.collect(0.05)
    raise AssertionError(f"no notification within {timeout} s: {served.stderr()}")


def _anomalies(served, sensor=None):
    return [(t, p) for t, k, s, p in served.events if k == "anomaly" and (sensor is None or s == sensor)]


def _check_detection(final, served, segments):
    per_sensor = final["per_sensor"]
    assert sorted(per_sensor) == [f"s{i:02d}" for i in range(N_SENSORS)]
    for s, row in per_sensor.items():  # every window of every sensor, exactly once
        assert row["windows"] == segments * PER_SEG, (s, row)
        assert row["lost_blocks"] == 0, (s, row)
    assert final["windows"] == N_SENSORS * segments * PER_SEG
    assert final["dropped"] == 0 and final["lost_blocks"] == 0
    fault_hits = len(_anomalies(served, FAULTY))
    assert fault_hits >= 0.5 * segments * PER_SEG, fault_hits
    assert per_sensor[FAULTY]["anomalies"] == fault_hits
    false = sum(row["anomalies"] for s, row in per_sensor.items() if s != FAULTY)
    assert false <= MAX_FALSE_ALARM_RATE * (N_SENSORS - 1) * segments * PER_SEG, false
    # the sensors were spread: more than one worker held some, and the workers' counts add up
    held = {row["worker"] for row in per_sensor.values()}
    assert len(held) >= 2, held
    assert sum(w["windows"] for w in final["workers"]) == final["windows"]


@pytest.mark.parametrize("n,transport", [(2, "tcp"), (3, "ipc")])
def test_fault_among_64_sensors_detected(tmp_path, n, transport):
    """One faulty sensor among 64, N workers: every window of every sensor scored once, the
    fault flagged, the healthy ones quiet; one events endpoint; each worker its own reservoir
    (N=3); a new model swapped in by every worker (N=2); SIGTERM ends with one aggregated line."""
    model_dir = tmp_path / "model"
    shutil.copytree(models.resolve("motor-ae"), model_dir)
    keys = {"model": str(model_dir), "watch_model_s": 0.2}
    if n == 3:
        keys["reservoir_dir"] = str(tmp_path / "reservoir")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # plays systemd (Type=notify)
    notify.bind(str(tmp_path / "notify"))
    served = Served(tmp_path, n, transport, env={"NOTIFY_SOCKET": str(tmp_path / "notify")}, **keys)
    sensors = None
    try:
        ready = _wait_datagram(served, notify, 120)
        assert ready.startswith(b"READY=1"), ready
        n0 = len(served.stats())
        st = served.wait(lambda _: len(served.stats()) > n0, 10, "a stats event after READY")
        assert [w["state"] for w in st["workers"]] == ["serving"] * n  # READY once every worker serves
        started = [s for _, k, s, p in served.events if k == "lifecycle" and p["state"] == "started" and s != "daemon"]
        assert sorted(started) == [f"worker-{k}" for k in range(n)]
        sensors = Sensors(served.ctx, served.listen)
        segments = 3
        sensors.stream(served, segments)
        total = N_SENSORS * segments * PER_SEG
        served.wait(lambda s: s["windows"] >= total, 30, f"{total} windows")
        if n == 2:  # hot-swap: publish a recalibrated model; every worker swaps between its batches
            m = json.loads((model_dir / "manifest.json").read_text())
            old_thr = m["threshold"]
            m["threshold"] = old_thr * 2
            (model_dir / "manifest.json.tmp").write_text(json.dumps(m))
            os.replace(model_dir / "manifest.json.tmp", model_dir / "manifest.json")
            served.wait(lambda s: s["model_swaps"] == n, 30, "every worker swapped")
            swapped = [p for _, k, s, p in served.events if k == "model" and p["state"] == "swapped"]
            assert sorted(p["worker"] for p in swapped) == list(range(n))
            assert all(p["running"]["threshold"] == old_thr * 2 for p in swapped)
            t_after = sensors.t0(sensors.k)
            sensors.stream(served, 1)
            segments += 1
            total = N_SENSORS * segments * PER_SEG
            served.wait(lambda s: s["windows"] >= total, 30, f"{total} windows")
            after = [p for _, p in _anomalies(served, FAULTY) if p["t_start"] >= t_after]
            assert after and all(p["threshold"] == pytest.approx(old_thr * 2) for p in after)
        else:  # SIGHUP: the supervisor re-reads the file, every worker applies it
            served.write_conf({**served.conf, "drift_threshold": 80.0})
            served.proc.send_signal(signal.SIGHUP)

            def reloaded():
                return [s for _, k, s, p in served.events if k == "lifecycle" and p["state"] == "reloaded"
                        and "drift_threshold" in p["applied"]]

            end = time.monotonic() + 20
            while len(reloaded()) < n and time.monotonic() < end:
                served.collect(0.1)
            assert sorted(reloaded()) == [f"worker-{k}" for k in range(n)], served.stderr()
        sensors.close()
        sensors = None
        final, took = served.stop()
        assert b"STOPPING=1" in _wait_datagram(served, notify, 5)
    finally:
        if sensors is not None:
            sensors.close()
        served.close()
        notify.close()
    _check_detection(final, served, segments)
    assert took < 10, took
    assert [w["state"] for w in final["workers"]] == ["stopped"] * n
    assert final["worker_restarts"] == 0 and final["handovers"] == 0
    assert final["reloads"] == (n if n == 3 else 0)
    assert not os.path.exists(tmp_path / "s") and not os.path.exists(tmp_path / "e")  # clean exit
    for w in final["workers"]:  # no worker left behind
        assert not os.path.exists(f"/proc/{w['pid']}") or _zombie(w["pid"])
    lifecycle = [p for _, k, s, p in served.events if k == "lifecycle" and s == "daemon"]
    assert lifecycle[-1]["state"] == "stopped" and lifecycle[-1]["windows"] == final["windows"]
    if n == 3:  # one reservoir per worker that held sensors: no two writers on one file
        for k in {row["worker"] for row in final["per_sensor"].values()}:
            assert (tmp_path / "reservoir" / f"worker-{k}" / "motor-ae.bin").is_file(), k
    else:
        assert final["model_swaps"] == n


def _zombie(pid) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("transport", ["ipc", "tcp"])  # one shared socket; one SO_REUSEPORT socket each
def test_kill_a_worker_mid_stream(tmp_path, transport):
    """SIGKILL the worker holding the faulty sensor: its sensors reconnect to the other worker,
    detection resumes within 2 s, the gap is noted as a handover; the other worker's sensors
    miss no window; the dead worker is restarted."""
    served = Served(tmp_path, 2, transport)
    sensors = None
    try:
        served.wait_serving()
        sensors = Sensors(served.ctx, served.listen)
        sensors.stream(served, 1)
        st = served.wait(lambda s: len(s["per_sensor"]) == N_SENSORS and all("worker" in r for r in s["per_sensor"].values()),
                         20, "every sensor placed")
        owner = {s: r["worker"] for s, r in st["per_sensor"].items()}
        victim = owner[FAULTY]
        pid = next(w["pid"] for w in st["workers"] if w["worker"] == victim)
        moved = sorted(s for s, k in owner.items() if k == victim)
        stayed = sorted(s for s, k in owner.items() if k != victim)
        assert stayed, owner  # the test needs sensors on both workers
        os.kill(pid, signal.SIGKILL)
        t_kill, t_sensor = time.monotonic(), sensors.t0(sensors.k)
        sensors.stream(served, 3)
        segments = 4
        sensors.close()
        sensors = None
        served.wait(lambda s: s["handovers"] >= len(moved) and s["worker_restarts"] == 1 and all(
            s["per_sensor"][x]["windows"] >= segments * PER_SEG for x in stayed), 30, "handovers noted, all scored")
        final, _ = served.stop()
    finally:
        if sensors is not None:
            sensors.close()
        served.close()
    resumed = [t for t, p in _anomalies(served, FAULTY) if p["t_start"] >= t_sensor]
    assert resumed, "no detection after the kill"
    print(f"{transport}: detection on {FAULTY} resumed {resumed[0] - t_kill:.2f} s after SIGKILL; "
          f"{len(moved)} sensors moved, {len(stayed)} stayed; gap at most {final['handover_gap_blocks_at_most']} blocks")
    assert resumed[0] - t_kill < 2.0, resumed[0] - t_kill
    rows = final["per_sensor"]
    for s in stayed:  # the other worker's sensors: not one window missed
        assert rows[s]["windows"] == segments * PER_SEG and rows[s]["lost_blocks"] == 0, (s, rows[s])
        assert "handovers" not in rows[s], (s, rows[s])
    for s in moved:  # the victim's: handed over, the gap noted
        assert rows[s]["handovers"] == 1 and rows[s]["worker"] != victim, (s, rows[s])
    assert final["handovers"] == len(moved)
    assert final["worker_restarts"] == 1
    w = final["workers"][victim]
    assert w["restarts"] == 1 and w["pid"] != pid


def test_aggregate_stats_merges_workers():
    """Counters add up, per-sensor rows of one id held by two workers merge, the latency
    quantiles are those of all windows together, maxima stay maxima."""
    rng = __import__("numpy").random.default_rng(1)
    lat_a, lat_b = rng.lognormal(5, 0.5, 3000), rng.lognormal(6, 0.3, 1000)
    ha, hb, both = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    ha.add(lat_a)
    hb.add(lat_b)
    both.add(__import__("numpy").concatenate([lat_a, lat_b]))
    a = {"v": 1, "messages": 10, "windows": 3000, "dropped": 1, "drops_by_reason": {"msgpack": 1},
         "per_sensor": {"x": {"windows": 100, "anomalies": 2, "messages": 5, "lost_blocks": 0, "restarts": 1},
                        "y": {"windows": 2900, "anomalies": 0, "messages": 5, "lost_blocks": 1, "restarts": 1}},
         "drops": {"?": {"msgpack": 1}}, "notes": {"y": {"seq_gap": 1}}, "model": "motor-ae",
         "backend": "cpu:x", "max_latency_us": ha.max_us, "uptime_s": 5.0, "first_decision_s": 0.2,
         "peers": {"connected": 2, "disconnected": 0}, "curve": False,
         "latency_histogram": ha.sparse(), "p50_latency_us": ha.quantile(0.5), "seq": {"x": [0, 4]}}
    b = {"v": 1, "messages": 7, "windows": 1000, "dropped": 0, "drops_by_reason": {},
         "per_sensor": {"x": {"windows": 1000, "anomalies": 5, "messages": 7, "lost_blocks": 2, "restarts": 1}},
         "drops": {}, "notes": {}, "model": "motor-ae-v2", "backend": "cpu:x", "max_latency_us": hb.max_us,
         "uptime_s": 4.0, "first_decision_s": 0.1, "peers": {"connected": 1, "disconnected": 1}, "curve": False,
         "latency_histogram": hb.sparse(), "p50_latency_us": hb.quantile(0.5)}
    agg = aggregate_stats([a, None, b])
    assert agg["messages"] == 17 and agg["windows"] == 4000 and agg["dropped"] == 1
    assert agg["drops_by_reason"] == {"msgpack": 1} and agg["peers"] == {"connected": 3, "disconnected": 1}
    assert agg["per_sensor"]["x"] == {"windows": 1100, "anomalies": 7, "messages": 12, "lost_blocks": 2, "restarts": 2}
    assert agg["per_sensor"]["y"]["windows"] == 2900
    assert agg["model"] == ["motor-ae", "motor-ae-v2"] and agg["backend"] == "cpu:x" and agg["curve"] is False
    assert agg["max_latency_us"] == max(ha.max_us, hb.max_us)
    assert agg["uptime_s"] == 5.0 and agg["first_decision_s"] == 0.1
    for q, key in ((0.5, "p50_latency_us"), (0.99, "p99_latency_us"), (0.999, "p999_latency_us")):
        assert agg[key] == pytest.approx(both.quantile(q), abs=0.01), key  # sparse() rounds edges to 0.01 µs
    assert "seq" not in agg and agg["workers_reporting"] == 2
    assert sum(agg["latency_histogram"]["counts"]) == 4000
    top = aggregate_stats([a, b], top_n=1)  # the busiest sensor only, as one daemon trims its stats
    assert list(top["per_sensor"]) == ["y"] and top["notes"] == {"y": {"seq_gap": 1}}
    assert merge_histograms([None]) is None and histogram_quantile(None, 0.5) is None
    json.dumps(agg, allow_nan=False)


def test_workers_cli_errors(tmp_path):
    """Bad --workers values and endpoints --workers cannot share: one line, exit 2 or 1."""
    for bad in ("0", "x", "300"):
        r = subprocess.run([sys.executable, "-m", "edgert", "serve", "--workers", bad], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 2 and "--workers" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "edgert", "serve", "--workers", "2", "--listen", "inproc://x",
                        "--events", f"ipc://{tmp_path}/e"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "tcp:// or ipc://" in r.stderr and "Traceback" not in r.stderr, r.stderr
    with socket.socket() as busy:  # a port someone listens on: refused, not shared
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = subprocess.run([sys.executable, "-m", "edgert", "serve", "--workers", "2", "--listen",
                            f"tcp://127.0.0.1:{busy.getsockname()[1]}", "--events", f"ipc://{tmp_path}/e"],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "in use" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "edgert", "serve", "--workers", "2", "--listen", f"ipc://{tmp_path}/s",
                        "--events", f"ipc://{tmp_path}/e", "--model", "no-such-model"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "could not start" in r.stderr.splitlines()[-1] and "no-such-model" in r.stderr, r.stderr
    assert not os.path.exists(tmp_path / "s") and not os.path.exists(tmp_path / "e")


def test_one_metrics_endpoint_for_all_workers(tmp_path):
    """With ``metrics_listen`` the supervisor serves /metrics, /healthz and /readyz for every
    worker: windows and anomalies are the sum over the workers (equal to the aggregated final
    stats), the latency histogram counts every window, /readyz is 200 once all workers serve."""
    import urllib.error
    import urllib.request

    pytest.importorskip("prometheus_client")
    port = _free_port()
    served = Served(tmp_path, 2, "tcp", metrics_listen=f"127.0.0.1:{port}", metrics_max_sensors=4)
    sensors = None

    def get(path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def value(text, name, labels=""):
        for line in text.splitlines():
            if line.startswith(name + labels + " ") or (not labels and line.startswith(name + " ")):
                return float(line.rsplit(" ", 1)[1])
        return None

    try:
        served.wait_serving()
        assert get("/readyz")[0] == 200 and get("/healthz")[0] == 200
        sensors = Sensors(served.ctx, served.listen)
        sensors.stream(served, 2)
        total = N_SENSORS * 2 * PER_SEG
        served.wait(lambda s: s["windows"] >= total, 30, f"{total} windows")
        time.sleep(1.2)  # the supervisor's next metrics snapshot (every 0.5 s)
        _, text = get("/metrics")
        sensors.close()
        sensors = None
        final, _ = served.stop()
    finally:
        if sensors is not None:
            sensors.close()
        served.close()
    assert value(text, "edgert_windows_total") == final["windows"] == total
    assert value(text, "edgert_anomalies_total") == final["anomalies"] > 0
    assert value(text, "edgert_decision_latency_seconds_count") == total
    labelled = [ln for ln in text.splitlines() if ln.startswith("edgert_sensor_windows_total{")]
    assert len(labelled) == 5  # 4 sensors with their own label, the rest summed as _other
    assert sum(float(ln.rsplit(" ", 1)[1]) for ln in labelled) == total
    with pytest.raises(OSError):  # the port is released at stop
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
