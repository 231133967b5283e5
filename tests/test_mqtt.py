"""MQTT in and out (edgert/mqtt.py) against a real Mosquitto started by the tests (tests/brokers.py).

Events arrive with the right topics, payloads, QoS and retain flags; a broker away for 10 s
costs counted events, not detection or memory; wrong credentials are refused; the Last Will
says ``offline`` when the daemon is killed -9; blocks replayed through the broker are
detected as over ZeroMQ, and garbage or oversized payloads are counted drops.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

from edgert import config
from edgert import events as ev
from edgert import mqtt
from edgert.bus import SensorPublisher
from edgert.daemon import Daemon
from edgert.data import itsc_recording
from edgert.replay import replay
from edgert.stats import json_safe

from brokers import MOSQUITTO, SKIP_REASON, Mosquitto, Subscriber

pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed (pip install 'edgert[mqtt]')")
needs_broker = pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)

HEALTHY = "SC_HLT_005"
FAULT = "SC_A3_B0_C0_001"  # 30 % short circuit, phase A
PER = (1000 - 64) // 16 + 1  # motor-ae windows per 1,000-sample recording


class Running:
    """A daemon on a thread (config overrides as keyword arguments), a SUB socket on its ZeroMQ events."""

    def __init__(self, tmp_path, **cfg):
        self.ctx = zmq.Context()
        cfg.setdefault("max_clock_skew_s", 0.0)  # recordings on synthetic clocks
        cfg.setdefault("listen", f"ipc://{tmp_path}/s")
        cfg.setdefault("stats_interval_s", 0.2)
        self.d = Daemon(config.load(None, **cfg), ctx=self.ctx)
        self.d.bind()
        self.sub = None
        if self.d.events_endpoint.startswith("ipc://"):
            self.sub = self.ctx.socket(zmq.SUB)
            self.sub.setsockopt(zmq.SUBSCRIBE, b"event/")
            self.sub.connect(self.d.events_endpoint)
        self.ready = threading.Event()
        self.t = threading.Thread(target=lambda: setattr(self, "final", self.d.run(ready=self.ready.set)), daemon=True)
        self.t.start()
        assert self.ready.wait(30)
        self.zevents = []

    def collect(self, seconds=0.3):
        end = time.monotonic() + seconds
        while self.sub is not None and time.monotonic() < end:
            if self.sub.poll(20):
                self.zevents.append(ev.decode(self.sub.recv_multipart()))
        return self.zevents

    def wait(self, pred, timeout=20):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred(self.d.stats()):
                return True
            time.sleep(0.05)
        return False

    def close(self):
        self.d.stop()
        self.t.join(10)
        assert not self.t.is_alive()
        if self.sub is not None:
            self.sub.close()
        self.ctx.destroy(linger=0)
        return self.final


@pytest.fixture
def broker(tmp_path):
    if MOSQUITTO is None:
        pytest.skip(SKIP_REASON)
    made = []

    def start(**kw):
        b = Mosquitto(tmp_path, **kw)
        made.append(b)
        return b

    yield start
    for b in made:
        b.stop("kill")


def wait_for(pred, timeout=10.0, step=0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


# -- pure functions --------------------------------------------------------------------------
def test_topic_levels_escape_and_round_trip():
    for sid in ("motor-1", "a/b", "x+y#z", "100%", "nul\x00id", "line\nbreak", "ümlaut", "\ufffe", "$SYS"):
        level = mqtt.escape_level(sid)
        assert not any(c in level for c in "+#/\x00\n"), level
        assert mqtt.unescape_level(level) == sid
    assert mqtt.escape_level("a/b+#") == "a%2Fb%2B%23"
    ep = mqtt.parse_endpoint("mqtt://broker:1884/plant/+/raw", sensors=True)
    assert (ep.host, ep.port, ep.tls, ep.sensor_level) == ("broker", 1884, False, 1)
    assert ep.topic_for("m/1") == "plant/m%2F1/raw"
    assert mqtt.parse_endpoint("mqtts://b").port == 8883
    for bad in ("mqtt://b:1883/sensors/#", "mqtt://b:1883/sensors", "mqtt://b/+/+", "mqtt://u:p@b/s/+",
                "mqtt://b:99999/s/+", "mqtt://b/s/a+"):
        with pytest.raises(ValueError, match="mqtt://"):
            mqtt.parse_endpoint(bad, sensors=True)
    with pytest.raises(ValueError, match="takes no topic"):
        mqtt.parse_endpoint("mqtt://b:1883/x")


def test_config_keys_are_checked():
    c = config.load(None, events=["ipc:///tmp/e", "mqtt://127.0.0.1:1883"], listen=["mqtt://h/s/+"])
    assert c.events == ["ipc:///tmp/e", "mqtt://127.0.0.1:1883"] and c.listen == "mqtt://h/s/+"
    for kw, msg in ((dict(events=[]), "'events'"), (dict(listen="mqtt://h:1883/s/#"), "'listen'"),
                    (dict(mqtt_listen_qos=2), "mqtt_listen_qos"), (dict(mqtt_topic_prefix="a/+"), "mqtt_topic_prefix"),
                    (dict(mqtt_outbox_messages=0), "mqtt_outbox_messages"),
                    (dict(mqtt_password_env="EDGERT_TEST_NO_SUCH_VAR"), "EDGERT_TEST_NO_SUCH_VAR is not set"),
                    (dict(mqtt_password_file="/nonexistent/pw"), "mqtt_password_file")):
        with pytest.raises(ValueError, match=msg):
            config.load(None, **kw)


def test_toml_events_list(tmp_path):
    f = tmp_path / "e.toml"
    f.write_text('events = ["ipc:///tmp/e", "mqtt://127.0.0.1:1883"]\nmqtt_ha_discovery = true\n')
    c = config.load(str(f))
    assert c.events[1] == "mqtt://127.0.0.1:1883" and c.mqtt_ha_discovery is True


def test_outbox_is_bounded_and_keeps_anomalies(tmp_path):
    """No broker at all: the outbox holds at most its bounds, drops stats before anomalies,
    and counts every event lost by kind; publish never blocks."""
    from brokers import free_port

    cfg = config.load(None, mqtt_outbox_messages=100, mqtt_outbox_mb=1.0, mqtt_node="n", mqtt_anomaly_interval_s=0)
    sink = mqtt.MqttEventSink(f"mqtt://127.0.0.1:{free_port()}", cfg, "motor-ae", "cpu")
    try:
        t = time.perf_counter()
        for i in range(3000):
            sink.publish("stats" if i % 3 else "anomaly", "s1", {"sensor": "s1", "i": i, "score": float("nan")})
        per_event_us = (time.perf_counter() - t) / 3000 * 1e6
        s = sink.stats()
        assert not s["connected"] and s["outbox_messages"] == 100
        assert s["dropped_by_kind"]["stats"] == 2000 and s["dropped_by_kind"]["anomaly"] == 900
        assert s["published"] == 3000 == s["dropped"] + s["outbox_messages"]
        assert per_event_us < 1000  # never waits for the network (a generous bound: shared machine)
        big = {"blob": "x" * (2 << 20)}  # one event larger than the byte bound: refused, counted
        sink.publish("stats", "daemon", big)
        assert sink.stats()["dropped_by_kind"]["stats"] == 2001
    finally:
        sink.close(timeout=0.1)
    assert sink.stats()["dropped"] == 3001 and sink.stats()["outbox_messages"] == 0


def test_payload_frames_binary_and_json():
    x = itsc_recording(FAULT)[:64]
    chans = ["ia", "ib", "ic"]
    f = mqtt.payload_frames(b"s", mqtt.encode_block(7, 10**9, 10**6, x), chans, lambda: 0)
    h = msgpack.unpackb(bytes(f[1]))
    assert h["seq"] == 7 and h["shape"] == [64, 3] and np.array_equal(np.frombuffer(f[2], "<f4").reshape(64, 3), x)
    doc = json.loads(mqtt.encode_json_block(3, 5, 10, x[:, ::-1], ["ic", "ib", "ia"]))
    f = mqtt.payload_frames(b"s", json.dumps(doc).encode(), chans, lambda: 0)
    assert np.allclose(f[2], x, atol=1e-6)  # reordered to the model's channels
    del doc["seq"]
    assert msgpack.unpackb(mqtt.payload_frames(b"s", json.dumps(doc).encode(), chans, lambda: 41)[1])["seq"] == 41
    for payload, reason in ((b"", "frames"), (b"\x00\x00", "frames"), (b"\x00\x00\x10\x00abc", "frames"),
                            (b"hello", "frames"), (b"{nope", "msgpack"), (b"[1]", "frames"),
                            (b'{"t0": 1, "dt": 1}', "header"), (b'{"t0": 1.5, "dt": 1, "samples": [[1,2,3]]}', "header"),
                            (b'{"t0": 1, "dt": 1, "samples": [[1,2],[3]]}', "shape"),
                            (b'{"t0": 1, "dt": 1, "samples": [["a","b","c"]]}', "shape"),
                            (b'{"t0": 1, "dt": 1, "samples": [[1,2,3]], "channels": ["x","y","z"]}', "channels"),
                            (b'{"t0": 1, "dt": 1, "seq": 99999999999999999999999, "samples": [[1,2,3]]}', "header"),
                            (b"[" * 100000, "frames"), (b"{" + b'"a":[' * 50000, "msgpack")):
        with pytest.raises(mqtt.PayloadError) as exc:
            mqtt.payload_frames(b"s", payload, chans, lambda: 0)
        assert exc.value.reason == reason, (payload[:40], exc.value)


# -- events out, through a real broker ---------------------------------------------------------
@needs_broker
def test_events_topics_payloads_qos_and_retain(tmp_path, broker):
    """ZeroMQ and MQTT side by side: every anomaly reaches MQTT on edgert/<node>/anomaly/<escaped id>
    with QoS 1 and the very payload of the ZeroMQ event (JSON, NaN → null); stats and scores QoS 0;
    a retained status online with model and backend; Home Assistant discovery, retained."""
    b = broker()
    sub = Subscriber(b.port, ["edgert/#", "homeassistant/#"])
    assert sub.connected.wait(10)
    sensor = "motor/1+#"
    r = Running(tmp_path, events=[f"ipc://{tmp_path}/e", b.url], mqtt_node="edge-1", publish_scores=True,
                mqtt_ha_discovery=True, mqtt_anomaly_interval_s=0)  # every flagged window, to compare them all
    try:
        assert wait_for(lambda: r.d.stats()["mqtt"]["events"][0]["connected"])
        pub = SensorPublisher(r.d.listen_endpoint, sensor)
        assert pub.wait_subscribed(5)
        res = replay([itsc_recording(HEALTHY), itsc_recording(FAULT)], pub, 1000.0, realtime=False)
        pub.close()
        assert r.wait(lambda s: s["windows"] >= 2 * PER)
        r.collect(0.5)
        z_anom = [p for k, s, p in r.zevents if k == "anomaly"]
        level = "motor%2F1%2B%23"
        assert sub.wait(lambda m: sum(t == f"edgert/edge-1/anomaly/{level}" for t, *_ in m) >= len(z_anom), 10)
        st = r.d.stats()
    finally:
        final = r.close()
    time.sleep(0.3)
    msgs = list(sub.messages)
    sub.close()
    lo, hi = res["spans"][1]
    assert len(z_anom) >= 0.5 * PER and all(lo <= p["t_start"] <= hi for p in z_anom)
    m_anom = [(json.loads(p), q) for t, p, q, _ in msgs if t == f"edgert/edge-1/anomaly/{level}"]
    assert [p for p, _ in m_anom] == [json_safe(p) for p in z_anom]  # same fields, same v, same order
    assert all(q == 1 for _, q in m_anom) and m_anom[0][0]["v"] == ev.SCHEMA_VERSION
    scores = [(json.loads(p), q) for t, p, q, _ in msgs if t == f"edgert/edge-1/scores/{level}"]
    assert scores and all(q == 0 for _, q in scores) and sum(len(p["score"]) for p, _ in scores) == 2 * PER
    stats = [(json.loads(p), q) for t, p, q, _ in msgs if t == "edgert/edge-1/stats/daemon"]
    assert stats and all(q == 0 for _, q in stats) and "mqtt_dropped" in stats[-1][0]
    life = [json.loads(p) for t, p, q, _ in msgs if t == "edgert/edge-1/lifecycle/daemon"]
    assert [x["state"] for x in life] == ["started", "stopped"] and life[1]["windows"] == 2 * PER
    status = [json.loads(p) for t, p, *_ in msgs if t == "edgert/edge-1/status"]
    assert status[0]["state"] == "online" and status[0]["model"] == "motor-ae" and status[0]["backend"].startswith("cpu")
    assert status[-1]["state"] == "offline"  # a clean stop says so itself (no Last Will then)
    ha = [(t, json.loads(p)) for t, p, *_ in msgs if t.startswith("homeassistant/binary_sensor/")]
    assert len(ha) == 1 and ha[0][1]["state_topic"] == f"edgert/edge-1/ha/{level}/state"
    assert ha[0][1]["availability_topic"] == "edgert/edge-1/status" and ha[0][1]["device_class"] == "problem"
    assert b"ON" in [p for t, p, *_ in msgs if t == f"edgert/edge-1/ha/{level}/state"]
    assert st["mqtt_dropped"] == 0 and final["mqtt_dropped"] == 0
    e = final["mqtt"]["events"][0]
    assert e["published"] == e["delivered"] + e["dropped"] + e["outbox_messages"] + e["inflight"], e
    # retained: a subscriber arriving later gets the status and the discovery config at once
    late = Subscriber(b.port, ["edgert/+/status", "homeassistant/#"])
    try:
        got = late.wait(lambda m: len(m) >= 2, 5)
        assert got and all(retain for *_, retain in late.messages)
        assert json.loads(dict((t, p) for t, p, *_ in late.messages)["edgert/edge-1/status"])["state"] == "offline"
    finally:
        late.close()


@needs_broker
def test_anomalies_coalesced_per_sensor_and_interval(tmp_path, broker):
    """With ``mqtt_anomaly_interval_s`` (default 1 s) a fault that flags every window sends at most
    one anomaly a sensor per interval on MQTT; each carries ``coalesced``, and what went out plus
    what was coalesced is every anomaly the ZeroMQ socket published (which coalesces nothing)."""
    b = broker()
    sub = Subscriber(b.port, ["edgert/#"])
    assert sub.connected.wait(10)
    r = Running(tmp_path, events=[f"ipc://{tmp_path}/e", b.url], mqtt_node="edge-2")
    try:
        assert wait_for(lambda: r.d.stats()["mqtt"]["events"][0]["connected"])
        pubs = [SensorPublisher(r.d.listen_endpoint, f"m{i}") for i in range(2)]
        for p in pubs:
            assert p.wait_subscribed(5)
        t0 = time.monotonic()
        for p in pubs:  # both sensors' faults, as fast as the socket takes them (~1 s of daemon time)
            replay([itsc_recording(FAULT)] * 3, p, 1000.0, realtime=False)
        for p in pubs:
            p.close()
        assert r.wait(lambda s: s["windows"] >= 6 * PER)
        elapsed = time.monotonic() - t0
        r.collect(0.5)
        time.sleep(0.5)
        st = r.d.stats()
    finally:
        final = r.close()
    time.sleep(0.3)
    msgs = list(sub.messages)
    sub.close()
    z = [s for k, s, _ in r.zevents if k == "anomaly"]
    for sensor in ("m0", "m1"):
        m = [json.loads(p) for t, p, *_ in msgs if t == f"edgert/edge-2/anomaly/{sensor}"]
        n_z = sum(s == sensor for s in z)
        assert n_z >= PER and 1 <= len(m) <= elapsed / 1.0 + 3, (len(m), n_z, elapsed)
        assert m[0]["coalesced"] == 0 and all("coalesced" in x for x in m)
        sent_and_counted = len(m) + sum(x["coalesced"] for x in m)
        assert sent_and_counted <= n_z
    e = final["mqtt"]["events"][0]
    n_sent = sum(t.startswith("edgert/edge-2/anomaly/") for t, *_ in msgs)
    assert n_sent + e["coalesced"] == len(z) and final["mqtt_dropped"] == 0, (n_sent, e, len(z))
    assert st["mqtt"]["events"][0]["coalesced"] <= e["coalesced"]


@needs_broker
def test_wrong_credentials_refused_and_password_never_logged(tmp_path, broker, caplog, monkeypatch):
    b = broker(users={"edgert": "s3cret-pw"})
    bad = tmp_path / "bad"
    bad.write_text("wrong-pw-123\n")
    cfg = config.load(None, mqtt_username="edgert", mqtt_password_file=str(bad), mqtt_node="n")
    caplog.set_level("DEBUG")
    sink = mqtt.MqttEventSink(b.url, cfg, "motor-ae", "cpu")
    try:
        assert wait_for(lambda: sink.stats()["refused"] >= 1)
        sink.publish("anomaly", "s1", {"sensor": "s1"})
        time.sleep(0.3)
        s = sink.stats()
        assert not s["connected"] and s["delivered"] == 0 and "authori" in s["last_error"].lower()
    finally:
        sink.close(timeout=0.1)
    assert sink.stats()["dropped_by_kind"] == {"anomaly": 1}
    # the right password, from the environment: connected, status online
    monkeypatch.setenv("EDGERT_TEST_MQTT_PW", "s3cret-pw")
    sub = Subscriber(b.port, ["edgert/#"], username="edgert", password="s3cret-pw")
    cfg = config.load(None, mqtt_username="edgert", mqtt_password_env="EDGERT_TEST_MQTT_PW", mqtt_node="n")
    sink = mqtt.MqttEventSink(b.url, cfg, "motor-ae", "cpu")
    try:
        assert sub.connected.wait(5)
        assert wait_for(lambda: sink.stats()["connected"])
        sink.publish("anomaly", "s1", {"sensor": "s1"})
        assert sub.wait(lambda m: any(t == "edgert/n/anomaly/s1" for t, *_ in m), 5)
    finally:
        sink.close()
        sub.close()
    logged = caplog.text + json.dumps(sink.stats()) + repr(cfg)
    assert "s3cret-pw" not in logged and "wrong-pw-123" not in logged
    assert "refused the connection" in caplog.text


@needs_broker
def test_tls_with_ca_and_client_certificate(tmp_path, broker):
    """mqtts:// to a broker that requires a client certificate: with the CA and the client's
    certificate the events arrive; without the certificate, or trusting only the system's CAs,
    no connection (and nothing is sent in clear)."""
    from brokers import make_certs

    certs = make_certs(tmp_path / "certs")
    b = broker(tls=certs)
    assert b.url.startswith("mqtts://")
    good = config.load(None, mqtt_ca_file=certs["ca.crt"], mqtt_cert_file=certs["client.crt"],
                       mqtt_key_file=certs["client.key"], mqtt_node="tls")
    sinks = [mqtt.MqttEventSink(b.url, good, "motor-ae", "cpu")]
    for kw in (dict(mqtt_ca_file=certs["ca.crt"]), dict()):  # no client certificate; the system's CAs
        sinks.append(mqtt.MqttEventSink(b.url, config.load(None, mqtt_node="tls", mqtt_client_id=f"x{len(sinks)}",
                                                           mqtt_reconnect_min_s=0.2, mqtt_reconnect_max_s=0.5, **kw),
                                        "motor-ae", "cpu"))
    try:
        assert wait_for(lambda: sinks[0].stats()["connected"])
        sinks[0].publish("anomaly", "s1", {"sensor": "s1"})
        assert wait_for(lambda: sinks[0].stats()["delivered"] >= 1)
        time.sleep(1.5)  # a few attempts of the others
        for s in sinks[1:]:
            st = s.stats()
            assert not st["connected"] and st["connects"] == 0 and st["last_error"], st
    finally:
        for s in sinks:
            s.close(timeout=0.2)
    with pytest.raises(ValueError, match="mqtt_ca_file"):
        mqtt.MqttEventSink(b.url, config.load(None, mqtt_ca_file=str(tmp_path / "nope.crt")), "m", "b")


def _serve(tmp_path, *args, env=None):
    """`edgert serve` as a subprocess (stdout: final JSON line; stderr: its log)."""
    return subprocess.Popen([sys.executable, "-m", "edgert", "serve", "--listen", f"ipc://{tmp_path}/s",
                             "--events", f"ipc://{tmp_path}/e", "--stats-interval", "0.2", "--max-clock-skew", "0",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path),
                            env={**os.environ, **(env or {})})


class ZStats:
    """The daemon's stats events over ZeroMQ (its own SUB socket)."""

    def __init__(self, ctx, endpoint):
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"event/stats/daemon")
        self.sock.connect(endpoint)
        self.last = None

    def next(self, timeout=10.0):
        if self.sock.poll(int(timeout * 1000)):
            while True:  # the newest waiting
                self.last = ev.decode(self.sock.recv_multipart())[2]
                if not self.sock.poll(0):
                    return self.last
        return None


@needs_broker
def test_broker_away_10s_daemon_keeps_detecting_counts_drops_rss_bounded(tmp_path, broker):
    """`edgert serve` with ZeroMQ and MQTT events; a sensor floods faults; the broker is stopped
    for 10 s and restarted. The daemon keeps scoring (windows and anomalies keep counting), its
    outbox stays within its bounds and RSS with it, what was lost is counted by kind, it
    reconnects, and every anomaly the broker acknowledged reaches a persistent subscriber."""
    # no per-client queue limit: the broker must not drop for our (slower) subscriber itself
    b = broker(persistence=True, extra="max_queued_messages 0")
    sub = Subscriber(b.port, ["plant/#"], client_id="test-persistent", clean=False)
    assert sub.connected.wait(10)
    proc = _serve(tmp_path, "--events", b.url, "--mqtt-node", "n1", "--mqtt-prefix", "plant/edgert",
                  "--config", _toml(tmp_path, mqtt_outbox_messages=500, mqtt_outbox_mb=1.0,
                                    mqtt_reconnect_min_s=0.2, mqtt_reconnect_max_s=1.0,
                                    mqtt_anomaly_interval_s=0))
    ctx = zmq.Context()
    stop = threading.Event()
    sent = [0]
    try:
        zs = ZStats(ctx, f"ipc://{tmp_path}/e")
        pub = SensorPublisher(f"ipc://{tmp_path}/s", "motor-1", ctx=ctx)
        assert pub.wait_subscribed(60), proc.stderr.read() if proc.poll() is not None else "no daemon"
        fault = itsc_recording(FAULT)

        def flood():  # a fault recording every 20 ms of wall time: ~3,000 anomalies a second
            t0 = 0
            while not stop.is_set():
                replay([fault], pub, 1000.0, realtime=False, t0_ns=t0, gap_s=0)
                t0 += 2 * 10**9
                sent[0] += 1
                time.sleep(0.02)

        th = threading.Thread(target=flood, daemon=True)
        th.start()
        assert wait_for(lambda: (zs.next(5) or {}).get("mqtt", {}).get("events", [{}])[0].get("delivered", 0) > 200, 30)
        before = zs.next()
        b.stop()  # SIGTERM: the broker saves its persistent sessions, then is gone
        t_down = time.monotonic()
        during = []
        while time.monotonic() - t_down < 10:
            s = zs.next()
            if s is not None:
                during.append(s)
        b.start()
        t_up = time.monotonic()
        assert wait_for(lambda: (zs.next(2) or {})["mqtt"]["events"][0]["connected"], 15)
        reconnect_s = time.monotonic() - t_up
        stop.set()
        th.join(10)
        time.sleep(1.0)
        after = wait_for(lambda: (lambda s: s if s["mqtt"]["events"][0]["outbox_messages"] == 0 else None)(zs.next()), 15)
        assert after, zs.last
    finally:
        stop.set()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        ctx.destroy(linger=0)
    final = json.loads(out.strip().splitlines()[-1])
    ev_during = [s["mqtt"]["events"][0] for s in during]
    # the daemon kept scoring while the broker was away, and knew it was away
    assert during[-1]["windows"] - during[0]["windows"] > 20 * PER
    assert during[-1]["anomalies"] > during[0]["anomalies"]
    assert not any(e["connected"] for e in ev_during[2:])
    # bounded: the outbox never held more than its settings; RSS grew by little
    assert max(e["outbox_messages"] for e in ev_during) <= 500
    assert max(e["outbox_bytes"] for e in ev_during) <= 2**20
    rss_growth = max(s["rss_anon_mb"] for s in during) - before["rss_anon_mb"]
    assert rss_growth < 40, rss_growth
    # counted: stats went first, anomalies lost only beyond the bound; the books balance
    e = final["mqtt"]["events"][0]
    assert final["mqtt_dropped"] == e["dropped"] > 1000 and final["mqtt_dropped_by_kind"]["anomaly"] > 0
    assert e["published"] == e["delivered"] + e["dropped"] + e["outbox_messages"] + e["inflight"], e
    assert e["connects"] >= 2 and e["disconnects"] >= 1
    assert final["windows"] == sent[0] * PER and final["dropped"] == 0
    # every anomaly the broker acknowledged reached the persistent subscriber (QoS 1, both sides)
    time.sleep(0.5)
    got = len(sub.json("plant/edgert/n1/anomaly/motor-1"))
    sub.close()
    anomalies_delivered = final["anomalies"] - final["mqtt_dropped_by_kind"]["anomaly"]
    print(f"\nbroker away 10 s: events published {e['published']}, delivered {e['delivered']}, dropped "
          f"{e['dropped']} {final['mqtt_dropped_by_kind']}; anomalies {final['anomalies']}, received by the "
          f"subscriber {got}; reconnect {reconnect_s:.2f} s after the broker came back; anon RSS "
          f"{before['rss_anon_mb']} -> max {max(s['rss_anon_mb'] for s in during)} MB; before the stop: "
          f"{before['anomalies']} anomalies, {before['mqtt_dropped']} dropped")
    assert got >= anomalies_delivered, (got, anomalies_delivered)


def _toml(tmp_path, **keys) -> str:
    f = tmp_path / "mqtt.toml"
    f.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items()))
    return str(f)


@needs_broker
def test_last_will_offline_when_killed(tmp_path, broker):
    b = broker()
    sub = Subscriber(b.port, ["edgert/+/status"])
    assert sub.connected.wait(10)
    proc = _serve(tmp_path, "--events", b.url, "--mqtt-node", "lwt-node")
    try:
        assert sub.wait(lambda m: any(json.loads(p)["state"] == "online" for _, p, _, _ in m), 60), \
            "no online status" if proc.poll() is None else proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert sub.wait(lambda m: json.loads(m[-1][1])["state"] == "offline", 10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
        sub.close()
    last = json.loads(sub.messages[-1][1])
    assert sub.messages[-1][0] == "edgert/lwt-node/status" and last == {"v": 1, "state": "offline", "node": "lwt-node"}
    late = Subscriber(b.port, ["edgert/+/status"])  # and it is what a newcomer reads (retained)
    try:
        assert late.wait(lambda m: m and m[-1][3] and json.loads(m[-1][1])["state"] == "offline", 5)
    finally:
        late.close()


# -- sensor data in --------------------------------------------------------------------------
@needs_broker
@pytest.mark.parametrize("json_payload", [False, True])
def test_replay_through_the_broker_detects_the_fault(tmp_path, broker, capsys, json_payload):
    """`edgert replay ... --to mqtt://.../sensors/+`: the daemon, listening on the broker, scores
    every window and flags the fault as over ZeroMQ, with nothing dropped."""
    from edgert.cli import main

    b = broker()
    r = Running(tmp_path, listen=f"{b.url}/plant/+/raw", events=f"ipc://{tmp_path}/e")
    try:
        assert wait_for(lambda: r.d.stats()["mqtt"]["sensors"][0]["connected"])
        time.sleep(0.2)  # the subscription is acknowledged
        argv = ["replay", f"itsc:{HEALTHY}", f"itsc:{FAULT}", "--to", f"{b.url}/plant/+/raw", "--sensor", "motor/1",
                "--rate", "1000", "--speed", "50", "--events", r.d.events_endpoint, "--t0", str(10**12)]
        rc = main(argv + (["--json-payload"] if json_payload else []))
        out, err = capsys.readouterr()
        assert rc == 0, err
        summary = json.loads(out.strip().splitlines()[-1])
        assert r.wait(lambda s: s["windows"] >= 2 * PER)
        r.collect(0.5)
    finally:
        final = r.close()
    assert summary["windows"] == 2 * PER and summary["dropped"] == 0
    assert final["windows"] == 2 * PER and final["dropped"] == 0 and final["per_sensor"]["motor/1"]["windows"] == 2 * PER
    anomalies = [p for k, s, p in r.zevents if k == "anomaly"]
    fault_lo = 10**12 + 1000 * 10**6 + 10**9  # the second recording starts after 1,000 samples and a 1 s gap
    assert len(anomalies) >= 0.5 * PER and all(p["t_start"] >= fault_lo for p in anomalies), len(anomalies)
    assert final["mqtt"]["sensors"][0]["received"] == summary["blocks"]


@needs_broker
def test_garbage_and_oversized_payloads_are_counted_not_fatal(tmp_path, broker):
    import paho.mqtt.client as pm

    b = broker()
    r = Running(tmp_path, listen=[f"ipc://{tmp_path}/s", f"{b.url}/sensors/+"], events=f"ipc://{tmp_path}/e",
                mqtt_max_payload_bytes=20000, mqtt_listen_qos=1)
    c = pm.Client(pm.CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", b.port)
    c.loop_start()
    try:
        assert wait_for(lambda: r.d.stats()["mqtt"]["sensors"][0]["connected"])
        time.sleep(0.2)
        good = itsc_recording(FAULT)
        bad = [(b"\x00\x00", "frames"), (b"garbage", "frames"), (b"{not json", "msgpack"),
               (json.dumps({"t0": 1, "dt": 0, "samples": [[1, 2, 3]]}).encode(), "dt"),
               (json.dumps({"t0": 1, "dt": 1, "samples": [[1, 2]]}).encode(), "channels"),
               (mqtt.encode_block(0, 0, 10**6, np.zeros((64, 3), "f4"))[:-5], "size"),
               (b"\x00" * 30000, "too_large"), (b"{" + b" " * 30000 + b"}", "too_large")]
        infos = [c.publish("sensors/junk", p, qos=1) for p, _ in bad]
        infos.append(c.publish("sensors/" + "x" * 70, mqtt.encode_block(0, 0, 10**6, good[:64]), qos=1))
        for info in infos:
            info.wait_for_publish(5)
        want = {}
        for _, reason in bad:
            want[reason] = want.get(reason, 0) + 1
        want["sensor_id"] = 1
        assert r.wait(lambda s: sum(s["drops_by_reason"].values()) >= len(bad) + 1, 10), r.d.stats()["drops_by_reason"]
        # still detecting, over MQTT and ZeroMQ alike
        for seq, i in enumerate(range(0, 1000, 64)):
            c.publish("sensors/m1", mqtt.encode_block(seq, 10**12 + i * 10**6, 10**6, good[i:i + 64]), qos=1)
        pub = SensorPublisher(r.d.listen_endpoint, "z1", ctx=r.ctx)
        assert pub.wait_subscribed(5)
        replay([good], pub, 1000.0, realtime=False)
        pub.close()
        assert r.wait(lambda s: s["windows"] >= 2 * PER, 20)
    finally:
        c.disconnect()
        c.loop_stop()
        final = r.close()
    assert final["drops_by_reason"] == want, final["drops_by_reason"]
    assert final["drops"]["junk"] == {k: v for k, v in want.items() if k != "sensor_id"}
    assert final["internal_errors"] == 0 and final["windows"] == 2 * PER
    assert final["per_sensor"]["m1"]["anomalies"] >= 0.5 * PER and final["per_sensor"]["z1"]["anomalies"] >= 0.5 * PER


@needs_broker
def test_input_resubscribes_after_a_broker_restart(tmp_path, broker):
    """The broker restarts (it forgets every subscription): the daemon's input reconnects,
    subscribes again and scores what is sent afterwards."""
    import paho.mqtt.client as pm

    b = broker()
    r = Running(tmp_path, listen=f"{b.url}/sensors/+", events=f"ipc://{tmp_path}/e", mqtt_reconnect_min_s=0.1,
                mqtt_reconnect_max_s=0.5)
    x = itsc_recording(FAULT)

    def send(seq0, t0):
        c = pm.Client(pm.CallbackAPIVersion.VERSION2)
        c.connect("127.0.0.1", b.port)
        c.loop_start()
        infos = [c.publish("sensors/m1", mqtt.encode_block(seq0 + k, t0 + i * 10**6, 10**6, x[i:i + 64]), qos=1)
                 for k, i in enumerate(range(0, 1000, 64))]
        for info in infos:
            info.wait_for_publish(5)
        c.disconnect()
        c.loop_stop()

    try:
        assert wait_for(lambda: r.d.stats()["mqtt"]["sensors"][0]["connected"])
        time.sleep(0.2)
        send(0, 10**12)
        assert r.wait(lambda s: s["windows"] >= PER, 10)
        b.stop()
        assert wait_for(lambda: not r.d.stats()["mqtt"]["sensors"][0]["connected"], 5)
        b.start()
        assert wait_for(lambda: r.d.stats()["mqtt"]["sensors"][0]["connects"] >= 2, 10)
        time.sleep(0.3)  # the new subscription is acknowledged
        send(16, 10**12 + 10**10)
        assert r.wait(lambda s: s["windows"] >= 2 * PER, 10), r.d.stats()["mqtt"]
    finally:
        final = r.close()
    assert final["windows"] == 2 * PER and final["dropped"] == 0 and final["per_sensor"]["m1"]["anomalies"] >= PER


def test_mqtt_without_paho_is_one_line_exit_2(tmp_path):
    code = ("import sys; sys.modules['paho'] = None; sys.modules['paho.mqtt'] = None; "
            "sys.modules['paho.mqtt.client'] = None\nfrom edgert.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    for argv in (["serve", "--listen", f"ipc://{tmp_path}/s", "--events", "mqtt://127.0.0.1:1"],
                 ["replay", f"itsc:{HEALTHY}", "--to", "mqtt://127.0.0.1:1/s/+", "--sensor", "m", "--rate", "1000"]):
        out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, out.stderr
        assert out.stderr.count("\n") == 1 and "pip install 'edgert[mqtt]'" in out.stderr, out.stderr
