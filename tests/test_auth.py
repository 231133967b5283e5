"""CURVE authentication of the sensor and event buses: real sockets, a real daemon on a thread
with the real int8 model, real motor recordings (edgert/data), keys written by edgert itself."""

import collections
import logging
import os
import stat
import threading
import time

import numpy as np
import pytest
import zmq
import zmq.auth

from edgert import auth, config
from edgert import events as ev
from edgert.bus import SensorPublisher
from edgert.cli import main as cli_main
from edgert.daemon import Daemon
from edgert.data import itsc_recording
from edgert.replay import replay

HEALTHY = "SC_HLT_005"  # never seen in training
FAULT = "SC_A3_B0_C0_001"  # 30 % inter-turn short in phase A
T0 = time.time_ns() // 10**9 * 10**9  # one sensor clock for the module: two runs cut the same windows


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """A daemon key pair, three allowed clients (a, b: sensors; sub: an event subscriber) and
    a stranger whose public key is not in the allowed directory."""
    d = tmp_path_factory.mktemp("keys")
    k = {"server": auth.new_keypair(d, "server")}
    for name in ("a", "b", "sub"):
        k[name] = auth.new_keypair(d / "clients", name)
    k["stranger"] = auth.new_keypair(d / "strangers", "stranger")
    k["dir"] = d / "clients"
    return k


def curve_cfg(keys, **extra):
    return dict(curve_server_key=str(keys["server"][1]), curve_allowed_clients_dir=str(keys["dir"]), **extra)


class Served:
    """A daemon on a thread (tcp on loopback), recording which sensor ids reach `Daemon.handle`."""

    def __init__(self, keys, socket="sub", **cfg):
        self.keys = keys
        self.ctx = zmq.Context()
        try:
            c = config.load(None, listen="tcp://127.0.0.1:*", events="tcp://127.0.0.1:*", socket=socket, **cfg)
            self.d = Daemon(c, ctx=self.ctx)
            self.d.bind()
        except BaseException:
            self.ctx.destroy(linger=0)
            raise
        self.handled = collections.Counter()
        real = self.d.pipeline.handle_many

        def handle_many(msgs, ts):
            for frames in msgs:
                self.handled[bytes(frames[0])] += 1
            real(msgs, ts)

        # the loop hands every wake-up's messages to the pipeline's handle_many: each one is seen
        self.d.pipeline.handle_many = handle_many
        self.ready = threading.Event()
        self.final = None
        self.t = threading.Thread(target=lambda: setattr(self, "final", self.d.run(ready=self.ready.set)),
                                  daemon=True)
        self.t.start()
        assert self.ready.wait(30)
        self.socks = []

    def client_keys(self, key):
        """curve_server_key / curve_client_key arguments for a client using key `key` (None: no CURVE)."""
        if key is None:
            return {}
        return {"curve_server_key": str(self.keys["server"][0]), "curve_client_key": str(self.keys[key][1])}

    def publisher(self, sensor, key):
        kind = "pub" if self.d.cfg.socket == "sub" else "push"
        return SensorPublisher(self.d.listen_endpoint, sensor, kind=kind, ctx=self.ctx, **self.client_keys(key))

    def subscriber(self, key):
        s = self.ctx.socket(zmq.SUB)
        if key is not None:
            auth.secure_client(s, str(self.keys["server"][0]), str(self.keys[key][1]))
        s.setsockopt(zmq.SUBSCRIBE, b"event/")
        s.connect(self.d.events_endpoint)
        self.socks.append(s)
        return s

    def wait(self, pred, timeout=20):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            st = self.d.stats()
            if pred(st):
                return st
            time.sleep(0.05)
        raise AssertionError(f"condition not reached in {timeout} s: {self.d.stats()}")

    def close(self):
        self.d.stop()
        self.t.join(10)
        assert not self.t.is_alive()
        for s in self.socks:
            s.close(linger=0)
        self.ctx.destroy(linger=0)
        return self.final


def per_recording(model, n=1000):
    return (n - model.window) // model.hop + 1


def stream(pub, names, t0=T0, block=64):
    assert pub.wait_subscribed(5)
    return replay([itsc_recording(n) for n in names], pub, 1000.0, block=block, realtime=False,
                  gap_s=1.0, t0_ns=t0)


def collect(sock, seconds):
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if sock.poll(50):
            out.append(ev.decode(sock.recv_multipart()))
    return out


# (a) an allowed sensor's blocks are scored -----------------------------------------------------
@pytest.mark.parametrize("socket", ["sub", "pull"])
def test_allowed_sensor_is_scored(keys, socket):
    r = Served(keys, socket, **curve_cfg(keys))
    try:
        per = per_recording(r.d.model)
        sub = r.subscriber("sub")
        time.sleep(0.2)
        pub = r.publisher("motor-1", "a")
        res = stream(pub, [HEALTHY, FAULT])
        pub.close()
        r.wait(lambda st: st["windows"] >= 2 * per)
        got = collect(sub, 0.5)
    finally:
        final = r.close()
    assert final["curve"] is True
    assert final["messages"] == res["blocks"] and final["dropped"] == 0
    assert final["windows"] == 2 * per
    lo, hi = res["spans"][1]
    flagged = [p for k, s, p in got if k == "anomaly" and lo <= p["t_start"] <= hi]
    assert len(flagged) >= 0.5 * per
    assert final["auth_refused"] == 0


# (b) senders without an allowed key never reach handle ----------------------------------------
@pytest.mark.parametrize("socket", ["sub", "pull"])
def test_unkeyed_and_unknown_senders_never_reach_handle(keys, socket):
    r = Served(keys, socket, **curve_cfg(keys))
    try:
        per = per_recording(r.d.model)
        nokey = r.publisher("intruder-nokey", None)
        stranger = r.publisher("intruder-stranger", "stranger")
        assert not stranger.wait_subscribed(5) and stranger.refused == "zap_denied"
        if socket == "sub":  # the daemon's subscription never reaches a refused XPUB
            assert not nokey.wait_subscribed(0.5)
        block = itsc_recording(FAULT)[:64]
        for p in (nokey, stranger):
            p.sock.setsockopt(zmq.SNDTIMEO, 100)  # a refused PUSH has no peer: send would wait forever
            for seq in range(16):
                try:
                    p.send(block, T0 + seq * 64_000_000, 1_000_000, seq=seq)
                except zmq.Again:
                    break
        pub = r.publisher("motor-1", "a")
        res = stream(pub, [HEALTHY])
        pub.close()
        st = r.wait(lambda st: st["windows"] >= per and st["auth_refused"] >= 2)
        time.sleep(0.3)
        nokey.sock.close(linger=0)
        stranger.sock.close(linger=0)
    finally:
        final = r.close()
    assert set(r.handled) == {b"motor-1"}, r.handled
    assert final["messages"] == res["blocks"] == r.handled[b"motor-1"]
    assert final["dropped"] == 0 and final["drops"] == {} and set(final["per_sensor"]) == {"motor-1"}
    assert final["windows"] == per
    by = final["auth_refused_by"]
    assert by.get("sensors/zap_denied", 0) >= 1, by  # the stranger: ZAP said no
    # the key-less peer fails at the mechanism (no_curve), or reports no detail when it hangs up first
    assert sum(n for k, n in by.items() if k != "sensors/zap_denied") >= 1, by
    assert final["auth_refused"] == sum(by.values()) >= 2 and st["auth_refused"] >= 2


# (c) sensor_keys: one sensor's key cannot speak for another -------------------------------------
def _run_b(keys, spoof: bool):
    """Sensor B streams healthy then fault data, sensor A its own healthy data; with `spoof`,
    A's key also sends blocks under B's id (a far-future seq/t0 that would silence B, and
    fault data at B's own times) before and after B's stream, and one under an unlisted id."""
    sk = {"motor-A": str(keys["a"][0]), "motor-B": str(keys["b"][0])}
    r = Served(keys, "sub", **curve_cfg(keys, sensor_keys=sk))
    n_spoof = 0
    try:
        sub = r.subscriber("sub")
        time.sleep(0.2)
        a_own = r.publisher("motor-A", "a")
        stream(a_own, [HEALTHY], t0=T0)
        a_own.close()
        fault = itsc_recording(FAULT)
        if spoof:
            a_as_b = r.publisher("motor-B", "a")
            assert a_as_b.wait_subscribed(5)
            a_as_b.send(fault[:64], T0 + 10 * 365 * 86400 * 10**9, 1_000_000, seq=2**62)
            for seq in range(8):
                a_as_b.send(fault[seq * 64:(seq + 1) * 64], T0 + seq * 64_000_000, 1_000_000, seq=seq)
            n_spoof = 9
            r.wait(lambda st: st["drops"].get("motor-B", {}).get("auth", 0) == n_spoof)
        b = r.publisher("motor-B", "b")
        res = stream(b, [HEALTHY, FAULT], t0=T0)
        b.close()
        if spoof:
            a_as_b.send(fault[:64], res["spans"][1][1] + 1_000_000, 1_000_000, seq=res["blocks"])
            a_as_c = r.publisher("motor-C", "a")  # not in sensor_keys: nobody may send it
            assert a_as_c.wait_subscribed(5)
            a_as_c.send(fault[:64], T0, 1_000_000, seq=0)
            n_spoof += 1
            r.wait(lambda st: st["drops"].get("motor-B", {}).get("auth", 0) == n_spoof
                   and st["drops"].get("motor-C", {}).get("auth", 0) == 1)
            a_as_b.close()
            a_as_c.close()
        per = per_recording(r.d.model)
        r.wait(lambda st: st["windows"] >= 3 * per)
        got = collect(sub, 0.5)
    finally:
        final = r.close()
    flagged = sorted(p["t_start"] for k, s, p in got if k == "anomaly" and s == "motor-B")
    return final, flagged, n_spoof, per


def test_sensor_key_cannot_speak_for_another_sensor(keys):
    base, base_flagged, _, per = _run_b(keys, spoof=False)
    final, flagged, n_spoof, _ = _run_b(keys, spoof=True)
    assert base["drops"] == {}
    assert final["drops"] == {"motor-B": {"auth": n_spoof}, "motor-C": {"auth": 1}}
    assert final["per_sensor"]["motor-B"] == base["per_sensor"]["motor-B"]  # windows, anomalies, restarts
    assert final["per_sensor"]["motor-B"]["anomalies"] > 0
    assert flagged == base_flagged and flagged  # the same windows flagged, at the same times
    assert final["per_sensor"]["motor-A"] == base["per_sensor"]["motor-A"]  # A's own id is accepted
    assert final["per_sensor"]["motor-A"]["windows"] == per
    assert "motor-C" not in final["per_sensor"]


# (d) event subscribers need an allowed key -------------------------------------------------------
def test_event_subscriber_without_allowed_key_gets_nothing(keys, tmp_path):
    # event subscribers have their own directory here: only "sub" may read; "a" may only send
    only_sub = tmp_path / "event-clients"
    only_sub.mkdir()
    (only_sub / "sub.key").write_bytes(keys["sub"][0].read_bytes())
    r = Served(keys, "sub", **curve_cfg(keys, curve_event_clients_dir=str(only_sub), stats_interval_s=0.2))
    try:
        per = per_recording(r.d.model)
        good = r.subscriber("sub")
        bad = {"no key": r.subscriber(None), "stranger": r.subscriber("stranger"),
               "sensor key": r.subscriber("a")}
        time.sleep(0.3)
        pub = r.publisher("motor-1", "a")  # allowed on the sensor socket
        stream(pub, [FAULT])
        pub.close()
        r.wait(lambda st: st["windows"] >= per)
        got = collect(good, 1.0)
        got_bad = {name: collect(s, 0.05) for name, s in bad.items()}
        st = r.wait(lambda st: sum(n for k, n in st["auth_refused_by"].items() if k.startswith("events/")) >= 3)
    finally:
        final = r.close()
    kinds = collections.Counter(k for k, _, _ in got)
    assert kinds["anomaly"] > 0 and kinds["stats"] > 0
    assert got_bad == {"no key": [], "stranger": [], "sensor key": []}
    assert final["windows"] == per
    assert st["auth_refused_by"].get("events/zap_denied", 0) >= 2  # stranger and the sensor's key


def test_replay_cli_with_keys(keys, tmp_path, capsys):
    """`edgert replay --curve-server-key --curve-client-key` (sensor and --events-out recorder);
    a refused key ends with the cause, not a hang."""
    r = Served(keys, "pull", **curve_cfg(keys, publish_scores=True))
    out = tmp_path / "scores.csv"
    common = ["replay", "itsc:" + HEALTHY, "--to", r.d.listen_endpoint, "--sensor", "motor-1", "--rate", "1000",
              "--fast", "--socket", "push", "--curve-server-key", str(keys["server"][0]), "--wait", "5"]
    try:
        per = per_recording(r.d.model)
        rc = cli_main(common + ["--curve-client-key", str(keys["sub"][1]), "--events", r.d.events_endpoint,
                                "--events-out", str(out)])
        st = r.wait(lambda st: st["windows"] >= per)
        rc_refused = cli_main(common + ["--curve-client-key", str(keys["stranger"][1])])
    finally:
        r.close()
    err = capsys.readouterr().err
    assert rc == 0 and st["windows"] == per
    assert len(out.read_text().splitlines()) == 1 + per  # header + one row per scored window
    assert rc_refused == 1
    assert "refused this client at the CURVE handshake (zap_denied)" in err and "allowed clients directory" in err


# (e) edgert keys new -----------------------------------------------------------------------------
def test_keys_new_writes_usable_pair_and_refuses_to_overwrite(tmp_path, capsys):
    d = tmp_path / "k"
    assert cli_main(["keys", "new", str(d), "--name", "dev1"]) == 0
    out = capsys.readouterr().out
    public, secret = d / "dev1.key", d / "dev1.key_secret"
    assert str(public) in out and str(secret) in out
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(public).st_mode) == 0o644
    pk, none = zmq.auth.load_certificate(public)
    pk2, sk = zmq.auth.load_certificate(secret)
    assert none is None and pk == pk2 and zmq.curve_public(sk) == pk
    assert cli_main(["keys", "new", str(d), "--name", "srv"]) == 0
    capsys.readouterr()
    # usable: a CURVE server with the srv pair, a client with dev1's pair, a message goes through
    ctx = zmq.Context()
    try:
        srv = ctx.socket(zmq.PULL)
        srv.curve_server = True
        srv.curve_publickey, srv.curve_secretkey = zmq.auth.load_certificate(d / "srv.key_secret")
        srv.bind("tcp://127.0.0.1:*")
        cli = ctx.socket(zmq.PUSH)
        assert auth.secure_client(cli, str(d / "srv.key"), str(secret))
        cli.connect(srv.last_endpoint.decode())
        cli.send(b"hello")
        assert srv.poll(5000) and srv.recv() == b"hello"
    finally:
        ctx.destroy(linger=0)
    before = secret.read_bytes(), public.read_bytes()
    assert cli_main(["keys", "new", str(d), "--name", "dev1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and "dev1.key" in err
    assert (secret.read_bytes(), public.read_bytes()) == before
    secret.unlink()  # only the public key left: still refused, and the public key kept
    assert cli_main(["keys", "new", str(d), "--name", "dev1"]) == 2
    assert public.read_bytes() == before[1] and not secret.exists()
    assert cli_main(["keys", "new", str(d), "--name", "../escape"]) == 2
    assert not (tmp_path / "escape.key").exists()


# (f) the unauthenticated-tcp warning ---------------------------------------------------------------
def _bind_only(caplog, **cfg):
    ctx = zmq.Context()
    caplog.clear()
    try:
        with caplog.at_level(logging.WARNING, logger="edgert"):
            d = Daemon(config.load(None, **cfg), ctx=ctx)
            d.bind()
        d.backend.close()
        d.auth.close()
    finally:
        ctx.destroy(linger=0)  # closes the daemon's sockets too
    return [r.getMessage() for r in caplog.records if "unauthenticated" in r.getMessage()]


def test_unauthenticated_tcp_warned_once(caplog, tmp_path, keys):
    msgs = _bind_only(caplog, listen="tcp://*:*", events="tcp://*:*")
    assert len(msgs) == 1, msgs
    assert msgs[0].count("tcp://*:*") == 2 and "curve_server_key" in msgs[0] and "edgert keys new" in msgs[0]
    msgs = _bind_only(caplog, listen="tcp://0.0.0.0:*", events=f"ipc://{tmp_path}/e")
    assert len(msgs) == 1 and "tcp://0.0.0.0:*" in msgs[0] and "ipc://" not in msgs[0]
    assert _bind_only(caplog, listen="tcp://127.0.0.1:*", events=f"ipc://{tmp_path}/e2") == []
    assert _bind_only(caplog, listen=f"ipc://{tmp_path}/s", events="tcp://127.0.0.1:*") == []
    assert _bind_only(caplog, listen="tcp://*:*", events="tcp://*:*", **curve_cfg(keys)) == []
    for ep in ("tcp://0.0.0.0:5555", "tcp://192.168.1.20:5555", "tcp://[::]:5555", "tcp://eth0:5555",
               "tcp://plant-gw.example:5555"):
        assert auth.is_exposed(ep), ep
    for ep in ("tcp://127.0.0.1:5555", "tcp://127.0.1.1:5555", "tcp://[::1]:5555", "tcp://localhost:5555",
               "tcp://lo:5555", "ipc:///run/edgert/sensors", "inproc://x"):
        assert not auth.is_exposed(ep), ep


# (g) configuration is checked, errors name the key and the file -------------------------------------
def test_config_errors_name_key_and_file(keys, tmp_path):
    srv_pub, srv_sec = (str(p) for p in keys["server"])

    def err(**cfg):
        with pytest.raises(ValueError) as ei:
            config.load(None, **cfg)
        return str(ei.value)

    missing = str(tmp_path / "nope.key_secret")
    e = err(curve_server_key=missing, curve_allowed_clients_dir=str(keys["dir"]))
    assert "curve_server_key" in e and missing in e
    e = err(curve_server_key=srv_pub, curve_allowed_clients_dir=str(keys["dir"]))
    assert "curve_server_key" in e and srv_pub in e and "secret" in e
    forged = tmp_path / "forged.key_secret"  # a secret key with someone else's public key
    other_pub, _ = zmq.auth.load_certificate(keys["a"][1])
    _, srv_secret = zmq.auth.load_certificate(srv_sec)
    forged.write_text(f'curve\n    public-key = "{other_pub.decode()}"\n    secret-key = "{srv_secret.decode()}"\n')
    e = err(curve_server_key=str(forged), curve_allowed_clients_dir=str(keys["dir"]))
    assert "curve_server_key" in e and str(forged) in e
    e = err(curve_server_key=srv_sec)
    assert "curve_allowed_clients_dir" in e
    e = err(curve_server_key=srv_sec, curve_allowed_clients_dir=str(tmp_path / "nodir"))
    assert "curve_allowed_clients_dir" in e and str(tmp_path / "nodir") in e
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "ok.key").write_bytes(keys["a"][0].read_bytes())
    (broken / "bad.key").write_text("curve\n    nothing here\n")
    e = err(curve_server_key=srv_sec, curve_allowed_clients_dir=str(broken))
    assert "curve_allowed_clients_dir" in e and str(broken / "bad.key") in e
    (broken / "bad.key").write_text('curve\n    public-key = "tooshort"\n')
    e = err(curve_server_key=srv_sec, curve_allowed_clients_dir=str(broken))
    assert "curve_allowed_clients_dir" in e and str(broken / "bad.key") in e
    empty = tmp_path / "empty"
    empty.mkdir()
    e = err(curve_server_key=srv_sec, curve_allowed_clients_dir=str(empty))
    assert "curve_allowed_clients_dir" in e and str(empty) in e
    e = err(curve_server_key=srv_sec, curve_allowed_clients_dir=str(keys["dir"]),
            curve_event_clients_dir=str(tmp_path / "noevents"))
    assert "curve_event_clients_dir" in e and str(tmp_path / "noevents") in e
    gone = str(tmp_path / "gone.key")
    e = err(**curve_cfg(keys, sensor_keys={"motor-1": gone}))
    assert "sensor_keys" in e and "'motor-1'" in e and gone in e
    stranger_pub = str(keys["stranger"][0])
    e = err(**curve_cfg(keys, sensor_keys={"motor-1": stranger_pub}))
    assert "sensor_keys" in e and "'motor-1'" in e and stranger_pub in e and "allowed" in e
    e = err(sensor_keys={"motor-1": str(keys["a"][0])})
    assert "curve_server_key" in e and "sensor_keys" in e
    e = err(**curve_cfg(keys, sensor_keys={"x" * 65: str(keys["a"][0])}))
    assert "sensor_keys" in e
    # accepted: a .key file or the Z85 text
    z85 = zmq.auth.load_certificate(keys["b"][0])[0].decode()
    cfg = config.load(None, **curve_cfg(keys, sensor_keys={"motor-1": str(keys["a"][0]), "motor-2": z85}))
    assert auth.server_keys(cfg).sensor_keys["motor-2"] == z85


def test_config_toml_and_cli(keys, tmp_path, capsys):
    toml = tmp_path / "e.toml"
    toml.write_text(f'curve_server_key = "{keys["server"][1]}"\n'
                    f'curve_allowed_clients_dir = "{keys["dir"]}"\n'
                    f'[sensor_keys]\nmotor-1 = "{keys["a"][0]}"\n')
    cfg = config.load(str(toml))
    assert cfg.sensor_keys == {"motor-1": str(keys["a"][0])}
    toml.write_text('sensor_keys = "motor-1"\n')
    with pytest.raises(ValueError, match="sensor_keys"):
        config.load(str(toml))
    missing = str(tmp_path / "missing.key_secret")
    assert cli_main(["serve", "--curve-server-key", missing, "--curve-allowed-clients-dir",
                     str(keys["dir"])]) == 2
    e = capsys.readouterr().err
    assert e.count("\n") == 1 and "curve_server_key" in e and missing in e
    assert cli_main(["serve", "--sensor-key", "motor-1"]) == 2
    assert "--sensor-key" in capsys.readouterr().err
    # replay: a client key file without its secret half
    assert cli_main(["replay", "itsc:" + HEALTHY, "--to", "tcp://127.0.0.1:9", "--sensor", "m", "--rate", "1000",
                     "--curve-server-key", str(keys["server"][0]), "--curve-client-key", str(keys["a"][0])]) == 2
    e = capsys.readouterr().err
    assert e.count("\n") == 1 and "curve_client_key" in e and str(keys["a"][0]) in e


def test_without_curve_in_libzmq_the_message_says_so(keys, monkeypatch):
    real_has = zmq.has
    monkeypatch.setattr(zmq, "has", lambda cap: False if cap == "curve" else real_has(cap))
    with pytest.raises(ValueError, match="without CURVE support"):
        config.load(None, **curve_cfg(keys))
    with pytest.raises(RuntimeError, match="without CURVE support"):
        SensorPublisher("tcp://127.0.0.1:9", "m", kind="push", curve_server_key=str(keys["server"][0]),
                        curve_client_key=str(keys["a"][1]))


def test_refusals_forwarded_from_the_callers_own_monitor(keys):
    """libzmq keeps one monitor per socket: a caller that monitors the sensor socket itself (the
    daemon counting connects) passes monitor=False and forwards events; refusals still count."""
    from zmq.utils.monitor import recv_monitor_message

    ctx = zmq.Context()
    sa = auth.ServerAuth(ctx, config.load(None, **curve_cfg(keys)))
    try:
        srv = ctx.socket(zmq.PULL)
        sa.secure(srv, "sensors", monitor=False)
        mon = srv.get_monitor_socket(zmq.EVENT_ACCEPTED | auth.HANDSHAKE_FAILED)
        srv.bind("tcp://127.0.0.1:*")
        cli = ctx.socket(zmq.PUSH)
        auth.secure_client(cli, str(keys["server"][0]), str(keys["stranger"][1]))
        cli.connect(srv.last_endpoint.decode())
        seen = collections.Counter()
        end = time.monotonic() + 5
        while time.monotonic() < end and sa.stats()["auth_refused"] == 0:
            if mon.poll(50):
                e = recv_monitor_message(mon)
                seen[e["event"]] += 1
                sa.monitor_event("sensors", e["event"], e["value"], e["endpoint"])
        assert seen[zmq.EVENT_ACCEPTED] >= 1  # the caller's own events still arrive
        assert sa.stats()["auth_refused_by"] == {"sensors/zap_denied": 1}
    finally:
        sa.close()
        ctx.destroy(linger=0)


def _c_example() -> str:
    """The C sensor listing of docs/wire-format.md."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "wire-format.md").read_text()
    part = doc[doc.index("### A sensor in C"):]
    return part[part.index("```c\n") + 5:part.index("\n```", part.index("```c\n"))]


def test_c_sensor_example_with_curve(keys, tmp_path):
    """The documented C sensor, compiled and run over CURVE against the daemon: its blocks of a
    real fault recording are scored (skipped without a C compiler, libzmq and msgpack-c headers)."""
    import shutil
    import subprocess

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    src = tmp_path / "sensor.c"
    src.write_text(_c_example())
    exe = tmp_path / "sensor"
    res = subprocess.run([cc, str(src), "-o", str(exe), "-lzmq", "-lmsgpackc"], capture_output=True, text=True)
    if res.returncode and ("zmq.h" in res.stderr or "msgpack.h" in res.stderr or "cannot find -l" in res.stderr):
        pytest.skip(f"libzmq / msgpack-c development files missing (Debian: libzmq3-dev libmsgpack-dev): "
                    f"{res.stderr.strip().splitlines()[0]}")
    assert res.returncode == 0, res.stderr
    samples = tmp_path / "fault.f32"
    samples.write_bytes(np.ascontiguousarray(itsc_recording(FAULT), dtype="<f4").tobytes())
    z85 = lambda path, i: zmq.auth.load_certificate(path)[i].decode()  # noqa: E731
    r = Served(keys, "sub", **curve_cfg(keys))
    try:
        per = per_recording(r.d.model)
        run = subprocess.run([str(exe), r.d.listen_endpoint, "motor-c", str(samples), z85(keys["server"][0], 0),
                              z85(keys["b"][0], 0), z85(keys["b"][1], 1)], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0 and run.stdout.strip() == "16 blocks", (run.stdout, run.stderr)
        r.wait(lambda st: st["windows"] >= per)
    finally:
        final = r.close()
    assert final["messages"] == 16 and final["dropped"] == 0 and final["windows"] == per
    assert final["per_sensor"]["motor-c"]["anomalies"] >= 0.5 * per  # the fault is flagged
