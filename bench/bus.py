"""Bus: ZeroMQ ``ipc://`` vs ``tcp://127.0.0.1``, block sizes, copy vs zero-copy receive.

A sender process (pinned to the other core when it can be) connects a PUSH socket and sends
blocks of the real wire format as fast as it can with `edgert.bus.SensorPublisher.send` (one
msgpack header per block, the payload zero-copy from 64 KiB up as pyzmq does), then one
1-frame end marker. This process binds PULL, as the daemon does, and for every message
receives and validates it with `edgert.wire.decode` (the sender keeps its socket open until
the next point starts, so nothing queued is discarded at close):

* ``copy``: ``recv_multipart()`` (each frame copied into a ``bytes``);
* ``zero_copy``: `edgert.bus.recv_frames` (``Frame`` objects, the payload viewed in place),
  what the daemon does.

The rate is messages received between the first message and the end marker, over that time;
samples/s = messages/s × block. The CPU share of the receiving thread (``thread_time``) and
of the sender process say which side bounds the figure: a sender near 1.0 core with the
receiver well below it means the receive path had room to spare.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import shutil
import tempfile
import time

import numpy as np
import zmq

BLOCKS = (1, 16, 64, 256, 1024, 4096)
TRANSPORTS = ("ipc", "tcp")
MODES = ("copy", "zero_copy")
END = b"END"
SEND_TIMEOUT_MS = 10000


def _sender_main(conn, cpu) -> None:
    """Child process: run send commands from `conn` until it says None."""
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
        except (AttributeError, OSError):
            pass
    from edgert.bus import SensorPublisher

    ctx = zmq.Context()
    prev = None
    try:
        while True:
            cmd = conn.recv()
            if prev is not None:
                # closed only now that the receiver has had everything (a socket closed with
                # messages still queued lost them here, linger or not)
                prev.sock.close(linger=0)
                prev = None
            if cmd is None:
                break
            block, C, seconds = cmd["block"], cmd["channels"], cmd["seconds"]
            rng = np.random.default_rng(block)
            data = rng.standard_normal((block, C)).astype(np.float32)
            pub = SensorPublisher(cmd["endpoint"], "bus-0", kind="push", ctx=ctx, sndhwm=1000)
            pub.sock.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)  # a stuck receiver must not hang us
            perf = time.perf_counter
            send = pub.send
            n, t_ns, dt = 0, time.time_ns(), 1_000_000
            c0 = time.process_time()
            t0 = perf()
            t_end = t0 + seconds
            error = None
            try:
                while True:
                    for _ in range(32):
                        send(data, t_ns, dt)
                        t_ns += block * dt
                    n += 32
                    if perf() >= t_end:
                        break
                t1 = perf()
                pub.sock.send(END)
            except zmq.Again:
                t1 = perf()
                error = f"a send blocked for {SEND_TIMEOUT_MS / 1000:g} s after {n} messages"
            cpu_s = time.process_time() - c0
            prev = pub
            conn.send({"sent": n, "seconds": t1 - t0, "cpu_share": cpu_s / max(1e-9, t1 - t0), "error": error})
    finally:
        if prev is not None:
            prev.sock.close(linger=0)
        ctx.term()
        conn.close()


class Sender:
    """The sender process; `run` one point at a time; `close` ends it."""

    def __init__(self, cpu: int | None):
        c = mp.get_context("spawn")
        self.conn, child = c.Pipe()
        self.proc = c.Process(target=_sender_main, args=(child, cpu), daemon=True)
        self.proc.start()
        child.close()

    def start(self, endpoint: str, block: int, channels: int, seconds: float) -> None:
        self.conn.send({"endpoint": endpoint, "block": block, "channels": channels, "seconds": seconds})

    def result(self, timeout: float) -> dict:
        if not self.conn.poll(timeout):
            raise RuntimeError(f"bus sender gave no result within {timeout:.0f} s "
                               f"(alive: {self.proc.is_alive()}, exit code {self.proc.exitcode})")
        return self.conn.recv()

    def close(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, BrokenPipeError):
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


_serial = itertools.count()


def receive_point(ctx, sender: Sender, transport: str, block: int, mode: str, channels: int,
                  seconds: float, tmpdir: str, timeout: float = 15.0) -> dict:
    """One measurement: bind, have the sender send for `seconds`, receive and decode everything."""
    from edgert import wire
    from edgert.bus import recv_frames

    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, 1000)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    try:
        if transport == "ipc":  # a fresh path per point: never one a closing socket may still unlink
            sock.bind(f"ipc://{tmpdir}/bus-{next(_serial)}")
        else:
            sock.bind("tcp://127.0.0.1:*")
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        sender.start(endpoint, block, channels, seconds)
        zero = mode == "zero_copy"
        n = samples = bad = 0
        t_first = None
        c0 = None
        perf = time.perf_counter
        decode = wire.decode
        while True:
            try:
                frames = recv_frames(sock, 0) if zero else sock.recv_multipart()
            except zmq.Again:
                snd = sender.result(SEND_TIMEOUT_MS / 1000 + timeout)  # the sender gives up too
                raise RuntimeError(f"bus {transport} block {block} {mode}: nothing received for "
                                   f"{timeout:.0f} s after {n} messages (sender: {snd.get('error')})") from None
            if len(frames) == 1:
                t_last = perf()
                c1 = time.thread_time()
                break
            if t_first is None:
                t_first = perf()
                c0 = time.thread_time()
                continue  # the clock starts at the first message: count those after it
            try:
                samples += decode(frames).samples.shape[0]
                n += 1
            except wire.WireError:
                bad += 1
        snd = sender.result(timeout)
    finally:
        sock.close(linger=0)
    secs = t_last - t_first if t_first is not None else 0.0
    rate = n / secs if secs > 0 else 0.0
    return {
        "transport": transport, "block_samples": block, "mode": mode, "channels": channels,
        "payload_bytes": block * channels * 4,
        "messages": n, "seconds": round(secs, 4), "decode_errors": bad,
        "messages_per_s": round(rate, 1),
        "samples_per_s": round(samples / secs, 1) if secs > 0 else 0.0,
        "mb_per_s": round(rate * block * channels * 4 / 1e6, 2),
        "receiver_thread_cpu_share": round((c1 - c0) / secs, 3) if secs > 0 else None,
        "sender_msgs_per_s": round(snd["sent"] / snd["seconds"], 1),
        "sender_cpu_share": round(snd["cpu_share"], 3),
        "sender_error": snd.get("error"),
    }


def bus_sweep(blocks=BLOCKS, transports=TRANSPORTS, modes=MODES, channels: int = 3,
              seconds: float = 1.0, cpu_sender: int | None = None, log=None) -> dict:
    """Every transport × block × receive mode. Returns {"points": [...], settings}."""
    ctx = zmq.Context()
    tmpdir = tempfile.mkdtemp(prefix="edgert-bench-bus-")
    sender = Sender(cpu_sender)
    points, errors = [], []
    try:
        # a short discarded point first: the sender's first connection and sends (imports,
        # allocations) would otherwise land in the first figure
        receive_point(ctx, sender, transports[0], blocks[0], modes[0], channels, min(0.2, seconds), tmpdir)
        for transport in transports:
            for block in blocks:
                for mode in modes:
                    try:
                        p = receive_point(ctx, sender, transport, block, mode, channels, seconds, tmpdir)
                    except RuntimeError as exc:  # one stuck point: record it, go on with a fresh sender
                        errors.append(str(exc))
                        if log:
                            log(f"  bus {transport} {block:>5} samples {mode:<9}: ERROR {exc}")
                        sender.close()
                        sender = Sender(cpu_sender)
                        continue
                    points.append(p)
                    if log:
                        log(f"  bus {transport} {block:>5} samples {mode:<9}: {p['messages_per_s']:>10,.0f} msgs/s "
                            f"{p['samples_per_s']:>13,.0f} samples/s (receiver {p['receiver_thread_cpu_share']:.2f}, "
                            f"sender {p['sender_cpu_share']:.2f} cores)")
    finally:
        sender.close()
        ctx.term()
        shutil.rmtree(tmpdir, ignore_errors=True)
    return {"channels": channels, "seconds_per_point": seconds, "sender_cpu": cpu_sender,
            "socket": "PUSH (sender, connects) -> PULL (receiver, binds)", "points": points, "errors": errors}
