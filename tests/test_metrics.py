"""Prometheus /metrics, /healthz and /readyz (edgert/metrics.py), scraped by a real Prometheus.

A real ``edgert serve --metrics`` replays ITSC recordings over ZeroMQ while a Prometheus
server started here (``--storage.tsdb.path`` in a temporary directory, its own port, a 1 s
scrape interval) scrapes it; its HTTP API must return the series with the values the daemon
itself reports in its final stats. The Grafana dashboard's expressions are checked against
the names of a live scrape and evaluated by the same Prometheus. Skips (with the reason) where
the ``prometheus`` binary is not installed (Debian's package; .ci/run installs it).
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zmq

pytest.importorskip("prometheus_client", reason="prometheus-client not installed (the metrics extra)")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from edgert import config  # noqa: E402
from edgert.bus import SensorPublisher  # noqa: E402
from edgert.cli import main as cli_main  # noqa: E402
from edgert.daemon import Daemon  # noqa: E402
from edgert.data import itsc_recording  # noqa: E402
from edgert.metrics import OTHER, histogram_buckets  # noqa: E402
from edgert.replay import replay  # noqa: E402
from edgert.stats import LatencyHistogram  # noqa: E402
from edgert.wire import DROP_REASONS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana-edgert.json"
PROMETHEUS = shutil.which("prometheus")
HEALTHY = "SC_HLT_005"
FAULTS = ["SC_A3_B0_C0_001", "SC_A0_B4_C0_002"]
PER_RECORDING = (1000 - 64) // 16 + 1  # windows of one 1000-sample recording (window 64, hop 16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for(fn, timeout: float, what: str, interval: float = 0.1):
    """fn() until it returns something truthy; fail naming `what` after `timeout` s."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            last = fn()
        except (OSError, urllib.error.URLError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def scrape(base: str) -> dict:
    """{sample name: {frozenset(labels.items()): value}} from a /metrics page."""
    status, text = http_get(base + "/metrics")
    assert status == 200, text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return out


class Prometheus:
    """A Prometheus server scraping `targets` every second, storage in `tmp`."""

    def __init__(self, tmp: Path, targets: list):
        self.port = free_port()
        cfg = tmp / "prometheus.yml"
        cfg.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
                       "  - job_name: edgert\n    static_configs:\n"
                       f"      - targets: [{', '.join(repr(t) for t in targets)}]\n")
        self.log = open(tmp / "prometheus.log", "w")
        self.proc = subprocess.Popen([PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'data'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout=30):
        wait_for(lambda: self.proc.poll() is None and http_get(self.base + "/-/ready")[0] == 200 or
                 self.proc.poll() is not None and pytest.fail(f"prometheus exited {self.proc.returncode}: "
                                                              f"{Path(self.log.name).read_text()[-2000:]}"),
                 timeout, "prometheus /-/ready")

    def query(self, expr: str) -> list:
        """The result vector of an instant query, [(labels dict, float value), ...]."""
        status, body = http_get(self.base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        data = json.loads(body)
        assert status == 200 and data["status"] == "success", (expr, body)
        return [(r["metric"], float(r["value"][1])) for r in data["data"]["result"]]

    def value(self, expr: str):
        """The single value of an instant query, or None when it has no result."""
        res = self.query(expr)
        assert len(res) <= 1, (expr, res)
        return res[0][1] if res else None

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


# -- the scenario: a real edgert serve, a real Prometheus, a replay ------------------------------------
@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    if PROMETHEUS is None:
        pytest.skip("the prometheus binary is not installed (Debian package 'prometheus'; .ci/run installs it)")
    tmp = tmp_path_factory.mktemp("prom")
    mport = free_port()
    cfg = tmp / "edgert.toml"
    cfg.write_text("metrics_max_sensors = 2\nstats_interval_s = 0.5\n")
    serve_log = open(tmp / "serve.err", "w")
    serve = subprocess.Popen([sys.executable, "-m", "edgert", "serve", "--config", str(cfg),
                              "--listen", f"ipc://{tmp}/s", "--events", f"ipc://{tmp}/e",
                              "--metrics", f"127.0.0.1:{mport}"],
                             stdout=subprocess.PIPE, stderr=serve_log, text=True, cwd=str(tmp))
    prom = Prometheus(tmp, [f"127.0.0.1:{mport}"])
    base = f"http://127.0.0.1:{mport}"
    ctx = zmq.Context()
    out = {"prom": prom, "base": base}
    try:
        prom.wait_ready()

        def serve_ready():
            if serve.poll() is not None:
                pytest.fail(f"edgert serve exited {serve.returncode}: {(tmp / 'serve.err').read_text()[-2000:]}")
            return http_get(base + "/readyz")[0] == 200

        wait_for(serve_ready, 90, "edgert serve /readyz 200")
        out["healthz_serving"] = http_get(base + "/healthz")
        # Wait until Prometheus has scraped the daemon once (its target is up) before input flows.
        wait_for(lambda: prom.value('up{job="edgert"}') == 1, 30, "prometheus scraping edgert")

        # motor-1: healthy then faulty recordings, paced in real time (Prometheus scrapes during it),
        # its sensor clock half a second behind ours so the queue delay is measurable.
        pub = SensorPublisher(f"ipc://{tmp}/s", "motor-1", ctx=ctx)
        assert pub.wait_subscribed(10)
        names = [HEALTHY, *FAULTS]
        replay([itsc_recording(n) for n in names], pub, 1000.0, realtime=True, speed=1.0, gap_s=0.1,
               t0_ns=time.time_ns() - 500_000_000)
        # Bad input, counted by reason: blocks with 2 channels for a 3-channel model, garbage headers.
        for k in range(3):
            pub.send(np.zeros((64, 2)), time.time_ns() - 10_000_000_000 + k * 64_000_000, 1_000_000)
        for _ in range(2):
            pub.send_frames([b"motor-1", b"\xc1 not msgpack", b""])
        pub.close()
        # Two more sensors (the label limit is 2): one with a hole in its seq numbering (lost blocks).
        for sensor in ("motor-2", "motor-3"):
            p = SensorPublisher(f"ipc://{tmp}/s", sensor, ctx=ctx)
            assert p.wait_subscribed(10)
            skip = (lambda si, i, n, p=p: setattr(p, "seq", p.seq + 2) if i == 320 else None) \
                if sensor == "motor-3" else None
            replay([itsc_recording(HEALTHY)], p, 1000.0, realtime=False, t0_ns=time.time_ns() - 5_000_000_000,
                   on_block=skip)
            p.close()
        out["expected_windows"] = PER_RECORDING * (len(names) + 2)
        # Prometheus has the final count once the daemon has scored everything and it scraped again.
        wait_for(lambda: prom.value("edgert_windows_total") == out["expected_windows"], 30,
                 f"edgert_windows_total == {out['expected_windows']} in prometheus", interval=0.5)
        time.sleep(1.5)  # one more scrape: every series of the same, final snapshot
        q = {
            "windows": "edgert_windows_total",
            "anomalies": "edgert_anomalies_total",
            "messages": "edgert_messages_total",
            "lost_blocks": "edgert_lost_blocks_total",
            "latency_count": "edgert_decision_latency_seconds_count",
            "latency_sum": "edgert_decision_latency_seconds_sum",
            "qd_count": "edgert_queue_delay_seconds_count",
            "qd_ahead": "edgert_queue_delay_clock_ahead_total",
            "sensor_sum": "sum(edgert_sensor_windows_total)",
            "sensor_anom_sum": "sum(edgert_sensor_anomalies_total)",
            "sensor_drop_sum": "sum(edgert_sensor_dropped_messages_total)",
            "p99": "histogram_quantile(0.99, sum by (le) (edgert_decision_latency_seconds_bucket))",
            "rss": "process_resident_memory_bytes",
            "scrapes": "count_over_time(edgert_windows_total[5m])",
            "changes": "changes(edgert_windows_total[5m])",
            "drop_increase": 'increase(edgert_dropped_messages_total{reason="channels"}[5m])',
            "up": "edgert_up",
            "ready": "edgert_ready",
        }
        out["q"] = {k: prom.value(e) for k, e in q.items()}
        out["drops"] = {m["reason"]: v for m, v in prom.query("edgert_dropped_messages_total")}
        out["per_sensor"] = {m["sensor"]: v for m, v in prom.query("edgert_sensor_windows_total")}
        out["model_info"] = prom.query("edgert_model_info")
        out["backend_info"] = prom.query("edgert_backend_info")
        out["scraped"] = scrape(base)
        out["dashboard_results"] = {}
        for expr in dashboard_exprs():
            e = expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
            out["dashboard_results"][expr] = prom.query(e)
        out["healthz_end"] = http_get(base + "/healthz")
        serve.send_signal(signal.SIGTERM)
        stdout, _ = serve.communicate(timeout=30)
        assert serve.returncode == 0, (tmp / "serve.err").read_text()[-2000:]
        out["final"] = json.loads(stdout.strip().splitlines()[-1])
        yield out
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait(5)
        serve_log.close()
        prom.close()
        ctx.destroy(linger=0)


def test_prometheus_series_equal_the_daemons_counts(scenario):
    q, final = scenario["q"], scenario["final"]
    assert final["windows"] == scenario["expected_windows"]
    assert q["windows"] == final["windows"]
    assert q["anomalies"] == final["anomalies"] and final["anomalies"] > 0  # the faults were seen
    assert q["messages"] == final["messages"]
    assert q["lost_blocks"] == final["lost_blocks"] == 2
    drops = scenario["drops"]
    assert set(DROP_REASONS) <= set(drops)  # every reason exported from the start, at 0 until it happens
    assert {r: v for r, v in drops.items() if v} == {r: float(n) for r, n in final["drops_by_reason"].items()}
    assert {r: v for r, v in drops.items() if v} == {"channels": 3.0, "msgpack": 2.0}
    assert scenario["q"]["drop_increase"] > 0  # the zero before the first drop: increase() sees them
    # The histograms count every window: decisions all, queue delay all but the clock-ahead ones.
    assert q["latency_count"] == final["windows"]
    assert q["qd_count"] + q["qd_ahead"] == final["windows"] and q["qd_count"] > 0
    assert q["qd_ahead"] == final["queue_delay_clock_ahead"]
    assert 0 < q["latency_sum"] / q["latency_count"] < 1.0  # mean decision latency in seconds


def test_prometheus_scraped_during_the_replay(scenario):
    q = scenario["q"]
    assert q["scrapes"] >= 4  # one a second over a replay of several seconds
    assert q["changes"] >= 2  # it saw the count grow, not only the end result
    assert q["up"] == 1 and q["ready"] == 1


def test_latency_quantile_matches_the_daemons(scenario):
    """histogram_quantile over the exported buckets lands in the same quarter-decade bucket as
    the daemon's own p99 (the buckets are 1.78x wide; Prometheus interpolates inside one)."""
    p99_prom, p99_daemon = scenario["q"]["p99"], scenario["final"]["p99_latency_us"] * 1e-6
    assert 0 < p99_prom < 1.0
    assert p99_daemon / 2 <= p99_prom <= p99_daemon * 2, (p99_prom, p99_daemon)


def test_per_sensor_labels_bounded_and_add_up(scenario):
    """metrics_max_sensors = 2 with 3 sensors: two labels and _other, summing to the totals."""
    per, final = scenario["per_sensor"], scenario["final"]
    assert len(per) == 3 and OTHER in per and "motor-1" in per, per
    assert per["motor-1"] == 3 * PER_RECORDING
    assert per[OTHER] == PER_RECORDING  # the third sensor, unlabelled
    assert scenario["q"]["sensor_sum"] == final["windows"]
    assert scenario["q"]["sensor_anom_sum"] == final["anomalies"]
    assert scenario["q"]["sensor_drop_sum"] == final["dropped"]


def test_info_metrics_and_rss(scenario):
    final = scenario["final"]
    (labels, v), = scenario["model_info"]
    assert v == 1 and labels["model"] == final["model"] == "motor-ae" and labels["generation"] == "0"
    (labels, v), = scenario["backend_info"]
    assert labels["backend"] == final["backend"] and labels["kernels"] == final["kernels"]
    rss = scenario["q"]["rss"]
    assert 20e6 < rss < 4e9
    assert 0.5 < rss / (final["rss_mb"] * 2**20) < 2.0  # the same process the daemon measured


def test_health_while_serving(scenario):
    assert scenario["healthz_serving"][0] == 200
    assert scenario["healthz_end"][0] == 200


# -- the dashboard ----------------------------------------------------------------------------------------
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}


def dashboard_exprs() -> list:
    """Every PromQL expression of the dashboard's panels."""
    d = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", []) if t.get("expr")]
    assert exprs, "no expressions in the dashboard"
    return exprs


def metric_names(expr: str) -> set:
    """The metric names a PromQL expression selects: identifiers that are not functions (followed
    by '('), keywords, label lists of by/without/on/ignoring/group_*, label matchers, strings,
    ranges, numbers or Grafana variables."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    e = re.sub(r"\$\{?\w+\}?", "", e)  # Grafana variables
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        rest = e[m.end():].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        if re.fullmatch(r"\d", e[m.start() - 1: m.start()] or "x"):  # part of a number such as 1e-3
            continue
        names.add(word)
    return names


def test_dashboard_uses_only_exported_names(scenario):
    """Every metric a dashboard expression names is in a live /metrics of edgert serve."""
    # the extraction itself, on the constructs the dashboard uses
    assert metric_names('histogram_quantile(0.99, sum by (le) (rate(a_bucket{x=~"$i"}[$__rate_interval])))') \
        == {"a_bucket"}
    assert metric_names('topk(10, sum without (sensor) (rate(b_total{s="on(x)"}[5m]))) and on (instance) c_info') \
        == {"b_total", "c_info"}
    exported = set(scenario["scraped"])
    used = set().union(*(metric_names(e) for e in dashboard_exprs()))
    assert used, "no metric names found in the dashboard"
    assert used <= exported, sorted(used - exported)
    want = {"edgert_windows_total", "edgert_anomalies_total", "edgert_dropped_messages_total",
            "edgert_decision_latency_seconds_bucket", "edgert_queue_delay_seconds_bucket",
            "process_resident_memory_bytes", "edgert_sensor_anomalies_total"}
    assert want <= used, sorted(want - used)  # the panels the dashboard promises
    d = json.loads(DASHBOARD.read_text())
    for var in d["templating"]["list"]:  # label_values(metric, label)
        m = re.match(r"label_values\((\w+),", var["definition"])
        assert m and m.group(1) in exported, var["definition"]


def test_dashboard_expressions_return_data(scenario):
    """The same expressions, evaluated by the Prometheus that scraped edgert, parse and return series."""
    empty = [e for e, res in scenario["dashboard_results"].items() if not res]
    assert not empty, empty


# -- health and readiness of an in-process daemon -------------------------------------------------------
def _daemon(tmp_path, ctx, **cfg):
    cfg.setdefault("max_clock_skew_s", 0.0)
    c = config.load(None, listen=f"ipc://{tmp_path}/s", events=f"ipc://{tmp_path}/e",
                    metrics_listen="127.0.0.1:0", **cfg)
    return Daemon(c, ctx=ctx)


def test_healthz_and_readyz_follow_the_loop(tmp_path):
    """/readyz: 503 before bind, 200 serving, 503 once stopping. /healthz: 200 while the loop
    ticks, 503 while it is stalled (a tick hook that blocks, as a hung watchdog call would)."""
    ctx = zmq.Context()
    d = _daemon(tmp_path, ctx, health_stall_s=1.0)
    base = "http://" + d.metrics.address
    stall = threading.Event()
    go = threading.Event()

    def tick():
        if stall.is_set():
            go.wait(30)

    ready = threading.Event()
    t = threading.Thread(target=lambda: d.run(ready=ready.set, tick=tick), daemon=True)
    try:
        assert http_get(base + "/readyz")[0] == 503  # model loaded, sockets not bound yet
        assert http_get(base + "/healthz")[0] == 200  # starting is alive
        d.bind()
        assert http_get(base + "/readyz")[0] == 503  # bound, input not taken yet
        t.start()
        assert ready.wait(30)
        assert http_get(base + "/readyz") == (200, "ready\n")
        assert http_get(base + "/healthz")[0] == 200
        host, port = d.metrics.address.rsplit(":", 1)
        with socket.create_connection((host, int(port))):  # a client that connects and says nothing
            t0 = time.monotonic()
            assert http_get(base + "/healthz", timeout=2)[0] == 200  # does not hold up the probes
            assert time.monotonic() - t0 < 1.0
        stall.set()  # the loop blocks in its tick hook
        status, text = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(http_get(base + "/healthz")),
                                5, "/healthz 503 with the loop stalled")
        assert "stalled" in text
        assert scrape(base)["edgert_up"][frozenset()] == 0  # /metrics still answers, stale but honest
        assert http_get(base + "/readyz")[0] == 200  # readiness is about input, liveness about the loop
        stall.clear()
        go.set()
        wait_for(lambda: http_get(base + "/healthz")[0] == 200, 5, "/healthz 200 after the stall")
        assert scrape(base)["edgert_up"][frozenset()] == 1
        go.clear()
        stall.set()  # hold the loop so that the stopping state can be seen before the port closes
        d.stop()
        assert http_get(base + "/readyz") == (503, "not ready: stopping\n")
        stall.clear()
        go.set()
        t.join(10)
        assert not t.is_alive()
        with pytest.raises(OSError):  # the port is released when run returns
            http_get(base + "/healthz", timeout=2)
    finally:
        go.set()
        if t.is_alive():
            d.stop()
            t.join(10)
        elif d.sock is not None and not d.sock.closed:
            d.close()
        d.metrics.close()  # idempotent: run() closed it if it ran
        ctx.destroy(linger=0)


def test_per_sensor_labels_bounded_in_process(tmp_path):
    """More sensors than metrics_max_sensors: the first ones keep their labels, the rest sum to
    _other; a labelled sensor evicted and back keeps counting up; the series add up to the total."""
    ctx = zmq.Context()
    d = _daemon(tmp_path, ctx, metrics_max_sensors=3, sensor_idle_s=0.5, stats_interval_s=0.1)
    base = "http://" + d.metrics.address
    d.bind()
    ready = threading.Event()
    t = threading.Thread(target=lambda: d.run(ready=ready.set), daemon=True)
    t.start()
    try:
        assert ready.wait(30)
        block = itsc_recording(HEALTHY)[:200]  # (200 - 64) // 16 + 1 = 9 windows
        per_block = (200 - 64) // 16 + 1
        pubs = {}
        # a sensor that calls itself "_other" gets no label of its own: it is summed there
        for name in ["s0", OTHER] + [f"s{i}" for i in range(1, 7)]:
            p = pubs[name] = SensorPublisher(d.listen_endpoint, name, ctx=ctx)
            assert p.wait_subscribed(5)
            p.send(block, 0, 1_000_000)
            if name == "s0":  # s0 is alone in the table at the next snapshot: it is labelled first
                wait_for(lambda: "s0" in d.metrics.labels.index, 5, "s0 labelled")

        def windows_total():
            m = scrape(base)
            return m if m["edgert_windows_total"][frozenset()] == 8 * per_block else None

        m = wait_for(windows_total, 10, "all windows in /metrics")
        per = {dict(k)["sensor"]: v for k, v in m["edgert_sensor_windows_total"].items()}
        assert len(per) == 4 and OTHER in per and "s0" in per, per
        assert all(v == per_block for k, v in per.items() if k != OTHER)
        assert per[OTHER] == 5 * per_block  # 4 unlabelled sensors and the one called "_other"
        assert sum(per.values()) == m["edgert_windows_total"][frozenset()]
        # s0 goes idle, is evicted (sensor_idle_s 0.5), comes back in a new slot: its series goes on.
        wait_for(lambda: (lambda m: m["edgert_sensors_active"][frozenset()] == 0 and
                          m["edgert_sensors_evicted_total"][frozenset()] == 8)(scrape(base)), 10, "all evicted")
        pubs["s0"].send(block, 10**12, 1_000_000)

        def s0_back():
            m = scrape(base)
            per = {dict(k)["sensor"]: v for k, v in m["edgert_sensor_windows_total"].items()}
            return (m, per) if per["s0"] == 2 * per_block else None

        m, per = wait_for(s0_back, 10, "s0 counting on after eviction")
        assert sum(per.values()) == m["edgert_windows_total"][frozenset()] == 9 * per_block
        assert len(per) == 4
        for p in pubs.values():
            p.close()
    finally:
        d.stop()
        t.join(10)
        d.metrics.close()
        ctx.destroy(linger=0)


def test_histogram_buckets_are_exact_at_their_bounds():
    """The exported cumulative buckets count exactly the latencies below each bound."""
    rng = np.random.default_rng(7)
    lat_us = np.exp(rng.normal(np.log(300.0), 1.5, 20_000))  # 300 µs median, wide
    h = LatencyHistogram()
    h.add(lat_us[:7000])
    h.add(lat_us[7000:])
    buckets = histogram_buckets(h.counts, h.total, h.edges)
    assert buckets[-1] == ("+Inf", 20_000)
    les = [float(le) for le, _ in buckets[:-1]]
    assert les == sorted(les) and les[0] < 2e-6 and les[-1] == 100.0
    for le, n in buckets[:-1]:
        assert n == int((lat_us < float(le) * 1e6 * (1 - 1e-12)).sum()), le
    assert h.sum_us == pytest.approx(lat_us.sum(), rel=1e-9)


# -- the command line --------------------------------------------------------------------------------------
def test_serve_metrics_address_in_use_is_a_one_line_error(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        rc = cli_main(["serve", "--listen", f"ipc://{tmp_path}/s", "--events", f"ipc://{tmp_path}/e",
                       "--metrics", f"127.0.0.1:{port}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and f"127.0.0.1:{port}" in err and "cannot bind" in err, err


@pytest.mark.parametrize("addr", ["nonsense", "127.0.0.1:99999", "::1:9108"])
def test_serve_metrics_bad_address(tmp_path, capsys, addr):
    rc = cli_main(["serve", "--listen", f"ipc://{tmp_path}/s", "--events", f"ipc://{tmp_path}/e", "--metrics", addr])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and addr in err and "metrics_listen" in err, err


def test_config_metrics_keys(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('metrics_listen = "[::1]:9108"\nmetrics_max_sensors = 0\nhealth_stall_s = 2.5\n')
    c = config.load(str(p))
    assert (c.metrics_listen, c.metrics_max_sensors, c.health_stall_s) == ("[::1]:9108", 0, 2.5)
    for bad in ("metrics_max_sensors = -1", "health_stall_s = 0.0", 'metrics_listen = "x"',
                "metrics_max_sensors = 1000000"):
        p.write_text(bad + "\n")
        with pytest.raises(ValueError, match=bad.split()[0]):
            config.load(str(p))


def test_metrics_listen_ipv6_and_every_interface():
    from edgert.metrics import Metrics

    for listen, want in (("[::1]:0", "[::1]:"), (":0", "0.0.0.0:")):
        try:
            m = Metrics(listen)
        except ValueError as exc:
            if "::1" in listen and not socket.has_ipv6 or "cannot bind" in str(exc):
                pytest.skip(f"no IPv6 loopback here: {exc}")
            raise
        try:
            assert m.address.startswith(want)
            host, port = m.address.rsplit(":", 1)
            status, _ = http_get(f"http://{host.replace('0.0.0.0', '127.0.0.1')}:{port}/healthz")
            assert status == 200
            assert http_get(f"http://{host.replace('0.0.0.0', '127.0.0.1')}:{port}/nope")[0] == 404
        finally:
            m.close()


def test_serve_without_prometheus_client_says_what_to_install(tmp_path):
    code = ("import sys; sys.modules['prometheus_client'] = None\n"
            "from edgert.cli import main\n"
            f"sys.exit(main(['serve', '--listen', 'ipc://{tmp_path}/s', '--events', 'ipc://{tmp_path}/e', "
            "'--metrics', '127.0.0.1:0']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert r.returncode == 2, r.stderr
    assert "prometheus-client" in r.stderr and "edgert[metrics]" in r.stderr
    assert "Traceback" not in r.stderr
