"""The daemon as a hostile or unlucky network finds it: the real process under attack.

Scenarios (each runs ``python -m edgert serve`` as a real process on fresh ipc endpoints):

* `messages`: wire-valid messages that used to kill or hijack it (header integers at and past
  int64, a spoofed block under a real sensor's id, an id that forges log lines, two 512 MiB
  frames, 10,000 one-shot sensor ids, a new sensor after the table filled), while a fault
  probe sensor streams healthy and faulty motor current in real time and must stay detected.
* `overload`: a flood process sends blocks of 64 sensors on one connection as fast as it can
  (PUSH: flow control; SUB: the publisher drops), for a set time, while two fault probes
  stream in real time: one on its own connection, one inside the flooded connection. RSS is
  sampled all along; afterwards every block sent must be accounted for:
  ``sent = processed + dropped + lost + discarded_at_stop``.

Both return a dict of figures (RSS max and after, counts, probe detection and latency). The
test suite runs them short (tests/test_hostile.py); ``edgert bench --only hostile`` runs them
for the README's reliability table. Latency of a probe: sensor time of the block's last sample
(the sensor stamps blocks with this machine's wall clock) to the anomaly event's receipt.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time

import msgpack
import numpy as np
import zmq

from edgert import events as ev
from edgert import wire
from edgert.data import itsc_recording

from .pipeline import BenchError, DaemonProc

DT_NS = 1_000_000  # 1 kHz, as the ITSC recordings
BLOCK = 64
HEALTHY, FAULT = "SC_HLT_005", "SC_A3_B0_C0_001"  # the fault: a 30 % short in phase A


# -- measuring the daemon process --------------------------------------------------------
def rss_mb(pid: int) -> float | None:
    """VmRSS of a process in MB, None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (all threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class RssSampler(threading.Thread):
    """Samples a process's RSS every `period` seconds until `stop()`."""

    def __init__(self, pid: int, period: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.samples: list = []  # (monotonic, MB)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            v = rss_mb(self.pid)
            if v is not None:
                self.samples.append((time.monotonic(), v))
            self._halt.wait(self.period)

    def stop(self) -> None:
        self._halt.set()
        self.join(2)

    def max_between(self, t0: float, t1: float) -> float | None:
        xs = [v for t, v in self.samples if t0 <= t <= t1]
        return round(max(xs), 1) if xs else None

    def last(self) -> float | None:
        return round(self.samples[-1][1], 1) if self.samples else None


def strict_final(d: DaemonProc) -> dict:
    """Stop the daemon (SIGTERM) and parse its final line with a strict JSON parser (no NaN)."""
    final = d.stop()
    out_line = json.dumps(final)  # DaemonProc parsed it leniently: check it again strictly

    def no_constants(name):
        raise BenchError(f"final stats line holds {name}: not JSON (a strict parser refuses it)")

    json.loads(out_line, parse_constant=no_constants)
    return final


def _sender(ctx, endpoint: str, kind: str, sndhwm: int, linger: int):
    """A PUSH socket (daemon PULL), or an XPUB that waited for the daemon's subscription
    (daemon SUB), so no block is lost before the subscription arrives."""
    sock = ctx.socket(zmq.PUSH if kind == "pull" else zmq.XPUB)
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    sock.setsockopt(zmq.LINGER, linger)
    sock.connect(endpoint)
    if kind != "pull":
        if not sock.poll(10000, zmq.POLLIN):
            raise BenchError(f"no subscription from the daemon on {endpoint} within 10 s")
        sock.recv()
    return sock


# -- a sensor streaming real motor current in real time ---------------------------------
class Probe(threading.Thread):
    """Streams healthy and faulty recordings alternately, in real time, as sensor `sensor`.

    Records the wall-clock time each block was sent (its ``seq``) so anomaly events can be
    matched to it; `spans` are the sensor-time spans of the fault recordings.
    """

    def __init__(self, ctx, endpoint: str, sensor: str, kind: str, seconds: float):
        super().__init__(daemon=True)
        self.sensor, self.seconds = sensor, seconds
        self.sock = _sender(ctx, endpoint, kind, sndhwm=100000, linger=1000)
        self.segments = [(itsc_recording(HEALTHY).astype(np.float32), False),
                         (itsc_recording(FAULT).astype(np.float32), True)]
        self.fault_spans: list = []  # (t_first, t_last) sensor ns of fault segments
        self.t_start = time.time_ns()  # sensor time of seq 0's first sample
        self.sent = 0
        self.seq = 0
        self._halt = threading.Event()

    def run(self) -> None:
        t_start = self.t_start = time.time_ns()
        t = t_start
        i = 0
        end = time.monotonic() + self.seconds
        while time.monotonic() < end and not self._halt.is_set():
            x, faulty = self.segments[i % 2]
            i += 1
            seg_t0 = t
            for a in range(0, x.shape[0] - BLOCK + 1, BLOCK):
                blk = x[a:a + BLOCK]
                due = (t + (BLOCK - 1) * DT_NS - t_start) / 1e9  # sent once its last sample is past
                lag = due - (time.time_ns() - t_start) / 1e9
                if lag > 0:
                    time.sleep(lag)
                self.sock.send_multipart([self.sensor.encode(), wire.encode_header(self.seq, t, DT_NS, blk), blk])
                self.seq += 1
                self.sent += 1
                t += BLOCK * DT_NS
                if self._halt.is_set():
                    break
            if faulty:
                self.fault_spans.append((seg_t0, t - DT_NS))

    def stop(self) -> None:
        """Wait for the thread to end (it ends by itself after `seconds`; `halt` ends it now)."""
        self.join(self.seconds + 10)
        self.sock.close()

    def halt(self) -> None:
        self._halt.set()


class Anomalies(threading.Thread):
    """Collects anomaly events of the probes and stats events, with their wall-clock receipt."""

    def __init__(self, ctx, endpoint: str, prefix: str = "probe"):
        super().__init__(daemon=True)
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, 1_000_000)
        self.sock.setsockopt(zmq.SUBSCRIBE, f"event/anomaly/{prefix}".encode())
        self.sock.setsockopt(zmq.SUBSCRIBE, b"event/stats/")
        self.sock.connect(endpoint)
        self.anomalies: dict = {}  # sensor -> [(recv wall ns, t_start)]
        self.stats_sizes: list = []
        self.last_stats: dict | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            if not self.sock.poll(100):
                continue
            while True:
                try:
                    frames = self.sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                t = time.time_ns()
                kind, sensor, p = ev.decode(frames)
                if kind == "anomaly":
                    self.anomalies.setdefault(sensor, []).append((t, p["t_start"], p["seq"]))
                elif kind == "stats":
                    self.stats_sizes.append(len(frames[1]))
                    self.last_stats = p

    def stop(self) -> None:
        self._halt.set()
        self.join(2)
        self.sock.close(linger=0)


def detection(probe_spans: list, anomalies: list, t_stream: int, W: int = 64, H: int = 16, skip: int = 1) -> dict:
    """Per fault span of a probe: share of its windows flagged, and latency: the sensor time
    of the last sample of the block that completed the window (the moment the sensor could
    send it) → the anomaly event received. The first `skip` spans are left out of the minimum
    (a warm-up: the daemon may still be starting).

    Args:
      anomalies: [(receipt wall ns, t_start, seq)] of the probe's anomaly events.
      t_stream: sensor time of the probe's seq 0 (its blocks are contiguous BLOCK samples).
    """
    per_span = []
    lat_ms = []
    ts = np.array([a[1] for a in anomalies], dtype=np.int64)
    recv = np.array([a[0] for a in anomalies], dtype=np.int64)
    seq = np.array([a[2] for a in anomalies], dtype=np.int64)
    block_end = t_stream + (seq + 1) * BLOCK * DT_NS - DT_NS
    for lo, hi in probe_spans:
        n_win = ((hi - lo) // DT_NS + 1 - W) // H + 1
        sel = (ts >= lo) & (ts + (W - 1) * DT_NS <= hi)
        per_span.append(float(sel.sum()) / max(n_win, 1))
        lat_ms.extend(((recv[sel] - block_end[sel]) / 1e6).tolist())
    judged = per_span[skip:] if len(per_span) > skip else per_span
    return {"fault_spans": len(per_span), "min_flagged_share": round(min(judged), 3) if judged else None,
            "flagged_share": [round(x, 3) for x in per_span],
            "latency_ms_p50": round(float(np.percentile(lat_ms, 50)), 2) if lat_ms else None,
            "latency_ms_p99": round(float(np.percentile(lat_ms, 99)), 2) if lat_ms else None,
            "latency_ms_max": round(float(max(lat_ms)), 2) if lat_ms else None}


def accounting(final: dict, sent: int) -> dict:
    """sent = processed + dropped + lost + discarded_at_stop, from the daemon's final stats."""
    got = final["messages"] + final["dropped"] + final["lost_blocks"] + final["discarded_at_stop"]
    return {"sent": sent, "processed": final["messages"], "dropped": final["dropped"],
            "lost": final["lost_blocks"], "discarded_at_stop": final["discarded_at_stop"],
            "accounted": got, "exact": got == sent}


# -- scenario: hostile messages ------------------------------------------------------------
def _header(seq, t0, dt=DT_NS, shape=(BLOCK, 3)) -> bytes:
    return msgpack.packb({"v": 1, "seq": seq, "t0": t0, "dt": dt, "dtype": "f4", "shape": list(shape)})


@contextlib.contextmanager
def _daemon_under_test(tag: str, socket: str, **config):
    """A ``python -m edgert serve`` process on fresh ipc endpoints (`config` keys in a temporary
    TOML file), its RSS sampled and its probes' anomaly and stats events collected; all of it
    torn down on exit. Yields (ctx, daemon, sampler, events)."""
    ctx = zmq.Context()
    cfg_path = _config(**config) if config else None
    d = DaemonProc("motor-ae", 0.5, None, tag, socket=socket, extra=("--config", cfg_path) if cfg_path else ())
    sampler = evs = None
    try:
        d.wait_bound(120)
        sampler = RssSampler(d.pid)
        sampler.start()
        evs = Anomalies(ctx, d.events)
        evs.start()
        time.sleep(0.3)  # the events subscription is in place before anything is sent
        yield ctx, d, sampler, evs
    finally:
        if sampler is not None:
            sampler.stop()
        if evs is not None:
            evs.stop()
        d.cleanup()
        if cfg_path is not None:
            os.unlink(cfg_path)
        ctx.destroy(linger=0)


def messages(seconds: float = 14.0, n_ids: int = 10_000, big_frames: int = 2, big_mb: int = 512,
             evict_s: float = 3.0) -> dict:
    """Every hostile message of the field-hardening issue against one daemon (PULL), with a
    fault probe streaming throughout and a late probe that starts after the sensor table
    filled. Returns figures; raises BenchError when the daemon died."""
    with _daemon_under_test("hostile", "pull", sensor_evict_s=evict_s) as (ctx, d, sampler, evs):
        probe = Probe(ctx, d.listen, "probe-own", "pull", seconds)
        probe.start()
        time.sleep(2.5)  # the probe streams healthy then faulty data before the attack starts
        rss_idle = sampler.last()
        bad = ctx.socket(zmq.PUSH)
        bad.setsockopt(zmq.LINGER, 5000)
        bad.setsockopt(zmq.SNDHWM, 1_000_000)
        bad.connect(d.listen)
        blk = itsc_recording(HEALTHY)[:BLOCK].astype(np.float32)
        now = time.time_ns()
        sent_bad = 0

        def send(frames):
            nonlocal sent_bad
            bad.send_multipart(frames)
            sent_bad += 1

        # 1. header integers at and past int64 (msgpack carries uint64)
        for seq, t0, dt in [(2**63, now, DT_NS), (2**64 - 1, now, DT_NS), (0, 2**63, DT_NS),
                            (0, 2**64 - 1, DT_NS), (0, -(2**63) - 1 + 1, DT_NS), (0, now, 2**63),
                            (0, now, 2**64 - 1), (0, 2**63 - 2, DT_NS), (2**63 - 1, now, 10**15)]:
            send([b"bigint", _header(seq, t0, dt), blk])
        # 2. spoofs under the probe's id: a huge seq ten years ahead, a huge seq now, then a
        #    plausible one (seq ahead, time ahead) that the genuine stream must recover from
        ten_years = 10 * 365 * 86400 * 10**9
        send([b"probe-own", _header(2**62, now + ten_years), blk])
        send([b"probe-own", _header(2**62, now), blk])
        send([b"probe-own", _header(probe.seq + 1000, time.time_ns() + 5 * 10**9), blk])
        # 3. an id that would forge log lines (dropped for its channel count, so it is logged)
        forged = "evil\nFAKE edgert WARNING forged line\r"
        send([forged.encode(), _header(0, now, shape=(BLOCK, 6)), np.zeros((BLOCK, 6), np.float32)])
        # 4. 10,000 one-shot ids
        t_ids = time.monotonic()
        for i in range(n_ids):
            send([f"oneshot-{i}".encode(), _header(0, now), blk])
        # 5. frames of 512 MiB (never received: the sender is disconnected by ZMQ_MAXMSGSIZE)
        huge = np.zeros(big_mb * 2**20, dtype=np.uint8)  # zero pages: no RSS in this process
        giant = ctx.socket(zmq.PUSH)
        giant.setsockopt(zmq.LINGER, 0)
        giant.setsockopt(zmq.SNDTIMEO, 20000)
        giant.connect(d.listen)
        for _ in range(big_frames):
            try:
                giant.send_multipart([b"giant", _header(0, now, shape=(big_mb * 2**20 // 12, 3)), huge], copy=False)
            except zmq.Again:
                pass
        time.sleep(1.0)
        giant.close()
        del huge
        # 6. a probe that starts after the table filled with one-shot ids
        late = Probe(ctx, d.listen, "probe-late", "pull", max(2.0, seconds - (time.monotonic() - t_ids)))
        late.start()
        probe.stop()  # each ends after its time; stop() closes its socket once delivered
        late.stop()
        time.sleep(1.0)  # the last windows are scored and published
        bad.close()
        rss_max = sampler.max_between(0, time.monotonic())
        final = strict_final(d)
        sampler.stop()
        evs.stop()
        stderr = d.stderr_path.read_text(errors="replace")
        out = {
            "rss_idle_mb": rss_idle, "rss_max_mb": rss_max,
            "exit_code": d.proc.returncode,
            "internal_errors": final["internal_errors"],
            "drops_by_reason": final["drops_by_reason"],
            "notes_by_reason": final["notes_by_reason"],
            "sensors_evicted": final["sensors_evicted"],
            "peer_disconnects": final["peers"]["disconnected"],
            "stats_event_bytes_max": max(evs.stats_sizes) if evs.stats_sizes else None,
            "forged_log_line": any(line.startswith("FAKE") for line in stderr.splitlines()),
            "accounting": accounting(final, probe.sent + late.sent + sent_bad),
            "probe": detection(probe.fault_spans, evs.anomalies.get("probe-own", []), probe.t_start),
            "late_probe": {**detection(late.fault_spans, evs.anomalies.get("probe-late", []), late.t_start, skip=0),
                           "windows": final["per_sensor"].get("probe-late", {}).get("windows", 0)},
        }
        return out


def _config(**keys) -> str:
    """A TOML config file with `keys` (in a fresh temp dir). Returns its path."""
    import tempfile

    fd, path = tempfile.mkstemp(suffix=".toml", prefix="edgert-hostile-")
    with os.fdopen(fd, "w") as f:
        for k, v in keys.items():
            f.write(f"{k} = {json.dumps(v)}\n")
    return path


# -- scenario: the largest blocks a sensor may send ------------------------------------------
def big_blocks(seconds: float = 10.0, block_samples: int = 65536, every_s: float = 1.0) -> dict:
    """A sensor sends blocks of `block_samples` (the default max_block_samples) every
    `every_s` while the probe streams in real time: the probe's latency shows how long one
    such block holds the loop (a block is cut, quantized and scored in one go)."""
    with _daemon_under_test("bigblocks", "pull") as (ctx, d, sampler, evs):
        probe = Probe(ctx, d.listen, "probe-own", "pull", seconds)
        probe.start()
        big = _sender(ctx, d.listen, "pull", sndhwm=4, linger=5000)
        x = np.tile(itsc_recording(HEALTHY).astype(np.float32), (block_samples // 1000 + 1, 1))[:block_samples]
        t = time.time_ns()
        seq = sent = 0
        end = time.monotonic() + seconds - 1.0
        while time.monotonic() < end:
            big.send_multipart([b"big", wire.encode_header(seq, t, DT_NS, x), x])
            seq += 1
            sent += 1
            t += block_samples * DT_NS
            time.sleep(every_s)
        probe.stop()
        big.close()
        time.sleep(1.0)
        final = strict_final(d)
        sampler.stop()
        evs.stop()
        return {"block_samples": block_samples, "blocks_sent": sent, "every_s": every_s,
                "exit_code": d.proc.returncode, "rss_max_mb": sampler.max_between(0, time.monotonic()),
                "big_windows": final["per_sensor"].get("big", {}).get("windows", 0),
                "drops_by_reason": final["drops_by_reason"],
                "accounting": accounting(final, sent + probe.sent),
                "probe": detection(probe.fault_spans, evs.anomalies.get("probe-own", []), probe.t_start)}


# -- scenario: sustained overload ------------------------------------------------------------
FLOOD_SENSORS = 64


def _flood_main(endpoint: str, kind: str, seconds: float, out_path: str, tail_after: float) -> None:
    """The flood process: 64 sensors' blocks on one connection as fast as it goes, with the
    shared probe's real-time blocks (healthy/faulty) interleaved; then, for SUB, a pause and
    one tail block per sensor so that every publisher-side loss shows as a seq gap. Writes
    {sent, probe_sent, probe_spans} to out_path."""
    ctx = zmq.Context()
    sock = _sender(ctx, endpoint, kind, sndhwm=1000, linger=-1 if kind == "pull" else 2000)
    data = itsc_recording(HEALTHY).astype(np.float32)
    blocks = [np.ascontiguousarray(data[a:a + BLOCK]) for a in range(0, 960, BLOCK)]
    ids = [f"flood-{i}".encode() for i in range(FLOOD_SENSORS)]
    seqs = [0] * FLOOD_SENSORS
    t_wall = time.time_ns()
    ts = [t_wall] * FLOOD_SENSORS
    probe_x = [(itsc_recording(HEALTHY).astype(np.float32), False), (itsc_recording(FAULT).astype(np.float32), True)]
    p_seq, p_t, p_i, p_a = 0, t_wall, 0, 0
    p_seg_t0 = t_wall + BLOCK * DT_NS
    spans = []
    pack = msgpack.packb
    # One block per sensor first, received before the flood starts: a loss before a sensor's
    # first received block would be no seq gap to the daemon (it cannot know seq 0 was sent).
    for i in range(FLOOD_SENSORS):
        sock.send_multipart([ids[i], pack({"v": 1, "seq": 0, "t0": ts[i], "dt": DT_NS, "dtype": "f4",
                                           "shape": [BLOCK, 3]}), blocks[0]], copy=True)
        seqs[i], ts[i] = 1, ts[i] + BLOCK * DT_NS
    sock.send_multipart([b"probe-shared", wire.encode_header(p_seq, p_t, DT_NS, blocks[0]), blocks[0]])
    p_seq, p_t = 1, p_t + BLOCK * DT_NS
    sent, probe_sent = FLOOD_SENSORS, 1
    time.sleep(0.5)
    end = time.monotonic() + seconds
    j = 0
    while True:
        for _ in range(256):
            i = j % FLOOD_SENSORS
            b = blocks[(j // FLOOD_SENSORS) % len(blocks)]
            sock.send_multipart([ids[i], pack({"v": 1, "seq": seqs[i], "t0": ts[i], "dt": DT_NS, "dtype": "f4",
                                               "shape": [BLOCK, 3]}), b], copy=True)
            seqs[i] += 1
            ts[i] += BLOCK * DT_NS
            sent += 1
            j += 1
        now = time.time_ns()
        while p_t + BLOCK * DT_NS <= now:  # the shared probe keeps real time
            x, faulty = probe_x[p_i % 2]
            sock.send_multipart([b"probe-shared", wire.encode_header(p_seq, p_t, DT_NS, x[p_a:p_a + BLOCK]),
                                 np.ascontiguousarray(x[p_a:p_a + BLOCK])])
            probe_sent += 1
            p_seq += 1
            p_t += BLOCK * DT_NS
            p_a += BLOCK
            if p_a + BLOCK > x.shape[0]:
                if faulty:
                    spans.append((p_seg_t0, p_t - DT_NS))
                p_i, p_a, p_seg_t0 = p_i + 1, 0, p_t
        if time.monotonic() >= end:
            break
    if kind != "pull":
        time.sleep(tail_after)  # the daemon's queue empties; the tail blocks then arrive
        for i in range(FLOOD_SENSORS):
            sock.send_multipart([ids[i], pack({"v": 1, "seq": seqs[i], "t0": ts[i], "dt": DT_NS, "dtype": "f4",
                                               "shape": [BLOCK, 3]}), blocks[0]], copy=True)
            sent += 1
        p_t = max(p_t, time.time_ns() - BLOCK * DT_NS)  # a time gap: a restart, not stitched
        sock.send_multipart([b"probe-shared", wire.encode_header(p_seq, p_t, DT_NS, blocks[0]), blocks[0]])
        probe_sent += 1
    sock.close()  # PUSH: linger -1 waits until every queued block is in the daemon's queue
    ctx.term()
    with open(out_path, "w") as f:
        json.dump({"sent": sent, "probe_sent": probe_sent, "probe_spans": spans, "probe_t0": t_wall,
                   "seconds": seconds}, f)


def overload(kind: str = "pull", seconds: float = 20.0, max_queue_mb: float = 64.0, drain_s: float = 1.0,
             settle: float = 4.0) -> dict:
    """A flood on one connection for `seconds`, probes on their own and on the flooded
    connection, RSS sampled; SIGTERM right after the flood (PUSH: with the backlog queued, so
    the drain and ``discarded_at_stop`` are exercised). Returns figures."""
    import tempfile

    flood = None
    with _daemon_under_test(f"overload-{kind}", kind, max_queue_mb=max_queue_mb,
                            drain_s=drain_s) as (ctx, d, sampler, evs):
        try:
            probe = Probe(ctx, d.listen, "probe-own", kind, seconds + settle + 3.0)
            probe.start()
            time.sleep(settle)
            rss_idle = sampler.last()
            cpu0 = cpu_seconds(d.pid)
            out_path = tempfile.mktemp(suffix=".json", prefix="edgert-flood-")
            t0 = time.monotonic()
            flood = subprocess.Popen([sys.executable, "-c",
                                      "import sys; from edgert.bench.hostile import _flood_main as m; "
                                      "m(sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], float(sys.argv[5]))",
                                      d.listen, kind, str(seconds), out_path, "3.0"])
            flood.wait(timeout=seconds + 120)
            t1 = time.monotonic()
            rss_flood_max = sampler.max_between(t0, t1)
            stats_at_end = evs.last_stats or {}
            cpu1 = cpu_seconds(d.pid)
            with open(out_path) as f:
                fl = json.load(f)
            os.unlink(out_path)
            if kind == "pull":
                probe.halt()
                probe.stop()
                final = strict_final(d)  # at once: the backlog is drained (drain_s), the rest counted
                rss_after = None
            else:
                time.sleep(3.0)  # the probe goes on: the daemon recovers
                rss_after = sampler.last()
                probe.halt()
                probe.stop()
                time.sleep(0.5)
                final = strict_final(d)
            sampler.stop()
            evs.stop()
            processed_flood = sum(v["messages"] for k, v in final["per_sensor"].items() if k.startswith("flood-"))
            return {
                "socket": kind, "seconds": seconds, "max_queue_mb": max_queue_mb,
                "rss_idle_mb": rss_idle, "rss_max_mb": rss_flood_max, "rss_after_mb": rss_after,
                "sent_per_s": round(fl["sent"] / seconds), "processed_per_s": round(processed_flood / (t1 - t0)),
                "overload_factor": round(fl["sent"] / max(processed_flood, 1), 2),
                "daemon_cpu_s": round(cpu1 - cpu0, 2) if cpu0 is not None and cpu1 is not None else None,
                "queue_delay_p99_us_at_end": stats_at_end.get("queue_delay_p99_us"),
                "internal_errors": final["internal_errors"],
                "drops_by_reason": final["drops_by_reason"],
                "accounting": accounting(final, fl["sent"] + fl["probe_sent"] + probe.sent),
                "probe_own_connection": detection(probe.fault_spans, evs.anomalies.get("probe-own", []), probe.t_start),
                "probe_shared_connection": detection(fl["probe_spans"], evs.anomalies.get("probe-shared", []),
                                                     fl["probe_t0"], skip=0),
                "exit_code": d.proc.returncode,
            }
        finally:  # the flood process, if the daemon failed under it
            if flood is not None and flood.poll() is None:
                flood.kill()


def render_lines(r: dict) -> list:
    """The reliability table (README "Reliability") from a result of the three scenarios."""
    out = ["hostile (the daemon under attack; probes stream healthy/faulty motor current in real time)"]
    m = r.get("messages")
    if m:
        out.append(f"  hostile messages: exit {m['exit_code']}, internal errors {m['internal_errors']}, "
                   f"RSS idle {m['rss_idle_mb']} -> max {m['rss_max_mb']} MB, stats event <= "
                   f"{m['stats_event_bytes_max']} B, forged log line: {m['forged_log_line']}, "
                   f"accounting exact: {m['accounting']['exact']} ({m['accounting']['sent']} blocks)")
        out.append(f"    drops {m['drops_by_reason']}; probe min flagged share {m['probe']['min_flagged_share']}, "
                   f"latency p99 {m['probe']['latency_ms_p99']} ms; late probe flagged {m['late_probe']['flagged_share']}")
    b = r.get("big_blocks")
    if b:
        out.append(f"  {b['block_samples']}-sample blocks every {b['every_s']} s: probe latency p50/p99/max "
                   f"{b['probe']['latency_ms_p50']}/{b['probe']['latency_ms_p99']}/{b['probe']['latency_ms_max']} ms, "
                   f"RSS max {b['rss_max_mb']} MB")
    for o in r.get("overload") or []:
        acc = o["accounting"]
        out.append(f"  overload {o['socket']}, {o['seconds']:g} s: sent {o['sent_per_s']}/s, processed "
                   f"{o['processed_per_s']}/s ({o['overload_factor']}x), RSS {o['rss_idle_mb']} -> max "
                   f"{o['rss_max_mb']} MB -> after {o['rss_after_mb']} MB; sent {acc['sent']} = processed "
                   f"{acc['processed']} + dropped {acc['dropped']} + lost {acc['lost']} + discarded "
                   f"{acc['discarded_at_stop']}: {'exact' if acc['exact'] else 'NOT EXACT'}")
        for k in ("probe_own_connection", "probe_shared_connection"):
            p = o[k]
            out.append(f"    {k.replace('_', ' ')}: fault windows flagged min {p['min_flagged_share']}, "
                       f"latency p50/p99 {p['latency_ms_p50']}/{p['latency_ms_p99']} ms")
    return out


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m edgert.bench.hostile", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="overload duration per socket type")
    p.add_argument("--only", choices=["messages", "big_blocks", "overload"], default=None)
    args = p.parse_args(argv)
    res = {}
    if args.only in (None, "messages"):
        res["messages"] = messages()
    if args.only in (None, "big_blocks"):
        res["big_blocks"] = big_blocks()
    if args.only in (None, "overload"):
        res["overload"] = [overload(k, args.seconds) for k in ("pull", "sub")]
    print(json.dumps(res, indent=1))
    print("\n".join(render_lines(res)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
