"""Field hardening, piece by piece, in process: header integers, one bad message never stops
the loop, the clock check, bounded per-id state, eviction, the allowlist, queue limits, the
ipc takeover refusal, JSON-safe stats, reload. (The real process under attack:
tests/test_hostile.py.)"""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import msgpack
import numpy as np
import pytest
import zmq

from edgert import config, wire
from edgert.daemon import Daemon
from edgert.data import itsc_recording

HEALTHY = "SC_HLT_005"
DT = 1_000_000


_contexts = []


@pytest.fixture(autouse=True)
def _destroy_contexts():
    """Every daemon made by `daemon` gets its own context, destroyed after the test (a context
    left to the garbage collector can block in zmq_ctx_term)."""
    yield
    while _contexts:
        _contexts.pop().destroy(linger=0)


def daemon(tmp_path, **cfg) -> Daemon:
    c = config.load(None, listen=f"ipc://{tmp_path}/s", events=f"ipc://{tmp_path}/e", watch_model_s=0,
                    drift_interval_s=0, **cfg)
    ctx = zmq.Context()
    _contexts.append(ctx)
    return Daemon(c, ctx=ctx)


def block(sensor, seq, t0, x=None, dt=DT, **hdr):
    x = itsc_recording(HEALTHY)[:64].astype(np.float32) if x is None else x
    h = {"v": 1, "seq": seq, "t0": t0, "dt": dt, "dtype": "f4", "shape": list(x.shape), **hdr}
    return [sensor.encode() if isinstance(sensor, str) else sensor, msgpack.packb(h), x.tobytes()]


@pytest.mark.parametrize("field, value", [
    ("seq", 2**63), ("seq", 2**64 - 1), ("seq", -1), ("t0", 2**63), ("t0", 2**64 - 1),
    ("dt", 2**63), ("dt", 2**64 - 1), ("dt", 10**15), ("t0", 2**63 - 2),  # t0 + n * dt overflows
])
def test_header_integers_out_of_int64_are_dropped(field, value):
    h = {"seq": 0, "t0": time.time_ns(), "dt": DT, field: value}
    with pytest.raises(wire.WireError) as ei:
        wire.decode(block("s", **h))
    assert ei.value.reason in ("header", "dt")
    assert repr(field) in str(ei.value) or "overflows" in str(ei.value)


def test_daemon_survives_every_big_integer(tmp_path):
    d = daemon(tmp_path)
    now = time.time_ns()
    for seq, t0, dt in [(2**63, now, DT), (0, 2**64 - 1, DT), (0, now, 2**63), (0, 2**63 - 2, DT)]:
        d.handle(block("m", seq, t0, dt=dt), time.perf_counter_ns())
    d.handle(block("m", 0, now), time.perf_counter_ns())  # a good block still goes through
    st = d.stats()
    assert st["drops_by_reason"]["header"] + st["drops_by_reason"].get("dt", 0) == 4
    assert st["messages"] == 1 and st["internal_errors"] == 0


def test_an_exception_in_handling_is_counted_not_raised(tmp_path, monkeypatch, caplog):
    d = daemon(tmp_path)
    import edgert.pipeline as pl

    def boom(*a, **k):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(pl, "push_block", boom)
    with caplog.at_level(logging.WARNING, logger="edgert"):
        d.handle(block("m", 0, time.time_ns()), time.perf_counter_ns())
    st = d.stats()
    assert st["drops_by_reason"] == {"internal": 1} and st["internal_errors"] == 1
    assert any("kernel exploded" in r.getMessage() and r.exc_info for r in caplog.records)


def test_clock_check_drops_far_future_and_past(tmp_path):
    d = daemon(tmp_path, max_clock_skew_s=60.0)
    d._now_wall = now = time.time_ns()
    d.handle(block("m", 0, now + 10 * 365 * 86400 * 10**9), time.perf_counter_ns())
    d.handle(block("m", 1, now - 3600 * 10**9), time.perf_counter_ns())
    d.handle(block("m", 2, now), time.perf_counter_ns())
    st = d.stats()
    assert st["drops_by_reason"] == {"clock": 2} and st["messages"] == 1


def test_sensor_ids_are_escaped_in_logs(tmp_path, caplog):
    d = daemon(tmp_path)
    evil = "x\nFAKE edgert WARNING forged"
    with caplog.at_level(logging.INFO, logger="edgert"):
        d.handle(block(evil, 0, time.time_ns(), x=np.zeros((64, 6), np.float32)), time.perf_counter_ns())
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "dropped block" in text
    assert not any(line.startswith("FAKE") for line in text.splitlines())
    assert repr(evil) in text


def test_unknown_ids_and_stats_stay_bounded(tmp_path):
    d = daemon(tmp_path, max_sensors=64, max_unknown_ids=100, stats_top_n=10, sensor_evict_s=3600.0)
    now = time.time_ns()
    t = time.perf_counter_ns()
    for i in range(5000):
        d.handle(block(f"id-{i}", 0, now), t)
    st = d.stats()
    assert st["sensors_active"] == 64
    assert st["drops_by_reason"] == {"too_many_sensors": 5000 - 64}
    assert len(d.unknown.by_id) <= 101  # 100 named ids and the "(other ids)" bucket
    assert sum(sum(r.values()) for r in d.unknown.by_id.values()) == 5000 - 64
    assert len(st["per_sensor"]) <= 10 and len(st["drops"]) <= 10
    assert len(json.dumps(st)) < 16_000
    assert len(d.rlog._state) <= 256


def test_full_table_evicts_the_least_recent_idle_sensor(tmp_path):
    d = daemon(tmp_path, max_sensors=4, sensor_evict_s=1.0, threshold="quantile")
    now = time.time_ns()
    t = time.perf_counter_ns()
    for i in range(4):
        d.handle(block(f"old-{i}", 0, now), t)
    d.threshold._z[0] = 123.0  # state learned for old-0's slot
    d.handle(block("new", 0, now), t + 10**8)  # 0.1 s later: nobody idle long enough
    assert d.stats()["drops_by_reason"] == {"too_many_sensors": 1}
    d.handle(block("new", 0, now), t + 2 * 10**9)  # 2 s later: old-0 yields its slot
    st = d.stats()
    assert "new" in d.streams and "old-0" not in d.streams and st["sensors_evicted"] == 1
    assert d.streams["new"].index == 0 and d.threshold._z[0] != 123.0  # the slot starts clean
    assert st["messages"] == 5  # old-0's count is kept in the totals


def test_idle_sensors_are_evicted(tmp_path):
    d = daemon(tmp_path, sensor_idle_s=5.0)
    t = time.perf_counter_ns()
    d.handle(block("a", 0, time.time_ns()), t)
    d.handle(block("b", 0, time.time_ns()), t + 4 * 10**9)
    assert d.evict_idle(now=t + 6 * 10**9) == 1 and list(d.streams) == ["b"]


def test_allowlist_refuses_other_ids_before_they_take_a_slot(tmp_path):
    d = daemon(tmp_path, sensors_allowed=["motor-*", "pump-7"])
    now = time.time_ns()
    for s in ("motor-1", "pump-7", "pump-8", "intruder"):
        d.handle(block(s, 0, now), time.perf_counter_ns())
    assert sorted(d.streams) == ["motor-1", "pump-7"]
    assert d.stats()["drops_by_reason"] == {"not_allowed": 2}


def test_blocks_over_max_block_samples_are_dropped(tmp_path):
    d = daemon(tmp_path, max_block_samples=1000)
    x = np.tile(itsc_recording(HEALTHY).astype(np.float32), (2, 1))[:1001]
    d.handle(block("m", 0, time.time_ns(), x=x), time.perf_counter_ns())
    assert d.stats()["drops_by_reason"] == {"too_large": 1}


def test_queue_limits_come_from_the_budget(tmp_path):
    d = daemon(tmp_path, max_queue_mb=64.0)
    hwm, maxmsg = d.queue_limits()
    per_msg = 4096 + 64 * 3 * 8
    assert hwm == 64 * 2**20 // per_msg and maxmsg == 65536 * 3 * 8
    d.bind()
    try:
        assert d.sock.getsockopt(zmq.RCVHWM) == hwm and d.sock.getsockopt(zmq.MAXMSGSIZE) == maxmsg
    finally:
        d.close()


def test_stats_are_strict_json_before_any_window(tmp_path):
    d = daemon(tmp_path)
    st = d.stats()
    json.dumps(st, allow_nan=False)  # NaN would raise
    assert st["p50_latency_us"] is None


def test_second_daemon_on_a_live_ipc_path_is_refused_and_files_are_removed(tmp_path):
    d1 = daemon(tmp_path)
    d1.bind()
    d2 = daemon(tmp_path)
    with pytest.raises(OSError, match="another process is listening"):
        d2.bind()
    # d1 still owns its socket: a sensor reaches it
    import threading

    t = threading.Thread(target=d1.run, daemon=True)
    t.start()
    push = d1.ctx.socket(zmq.PUSH if d1.cfg.socket == "pull" else zmq.PUB)
    push.connect(d1.cfg.listen)
    time.sleep(0.3)
    push.send_multipart(block("m", 0, time.time_ns()))
    time.sleep(0.3)
    d1.stop()
    t.join(10)
    push.close(0)
    assert d1.stats()["messages"] == 1
    assert not t.is_alive()
    assert not os.path.exists(f"{tmp_path}/s") and not os.path.exists(f"{tmp_path}/e")
    # a stale socket file (a crashed daemon) is not "live": a new daemon binds over it
    import socket as pysocket

    s = pysocket.socket(pysocket.AF_UNIX)
    s.bind(f"{tmp_path}/s")
    s.close()
    d3 = daemon(tmp_path)
    d3.bind()
    d3.close()


def test_log_level_is_validated():
    with pytest.raises(ValueError, match="log_level"):
        config.load(None, log_level="verbose")
    assert config.load(None, log_level="debug").log_level == "DEBUG"


def _serve(tmp_path, cfg_text):
    cfg = tmp_path / "edgert.toml"
    cfg.write_text(cfg_text)
    proc = subprocess.Popen([sys.executable, "-m", "edgert", "serve", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
    return cfg, proc


def test_sighup_reloads_live_keys_and_names_the_rest(tmp_path):
    base = f'listen = "ipc://{tmp_path}/s"\nevents = "ipc://{tmp_path}/e"\nsocket = "pull"\n'
    cfg, proc = _serve(tmp_path, base + 'log_level = "INFO"\n')
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"event/lifecycle/")
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(f"{tmp_path}/e"):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        sub.connect(f"ipc://{tmp_path}/e")
        time.sleep(0.5)
        cfg.write_text(base + 'log_level = "DEBUG"\npublish_scores = true\nmax_sensors = 10\n')
        proc.send_signal(signal.SIGHUP)
        assert sub.poll(10000)
        from edgert import events as ev

        kind, _, p = ev.decode(sub.recv_multipart())
        while p.get("state") != "reloaded":
            assert sub.poll(10000)
            kind, _, p = ev.decode(sub.recv_multipart())
        assert sorted(p["applied"]) == ["log_level", "publish_scores"] and p["needs_restart"] == ["max_sensors"]
        assert proc.poll() is None  # SIGHUP used to kill it (exit 129)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        ctx.destroy(linger=0)
    assert proc.returncode == 0, err
    final = json.loads(out.strip().splitlines()[-1], parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert final["reloads"] == 1
    assert "needs a restart" in err
