"""The service a user would write instead of edgert: one plain Python loop, numpy and a runtime.

Run as its own process: ``python naive_service.py --listen EP --events EP --model DIR``. It
imports only numpy, pyzmq, msgpack and one runtime, so it runs in a Python without edgert too
(tflite-runtime needs numpy < 2 and usually lives in its own venv):

* ``--runtime litert`` (default): the model's int8 dynamic-batch variant in LiteRT;
* ``--runtime tflite-runtime``: the same int8 file in tflite-runtime;
* ``--runtime onnxruntime --onnx FILE``: the float model (the Keras model edgert's int8 file
  was converted from, as ONNX), one thread, inputs in float.

The service proper (`Service.on_message`, `Service.score`, about 60 lines) is what NOTES.md
calls the naive loop: PULL receive, ``msgpack.unpackb`` of the header, ``np.frombuffer`` of
the samples, the block normalized in numpy, a list of window views, ``np.stack`` of 32,
vectorized quantize, one invoke at batch 32 (a partial batch padded), vectorized
reconstruction error, the manifest's threshold (the decision edgert's fixed threshold makes),
an ``event/anomaly/<sensor>`` per flagged window. A batch is due at 32 windows or 1 ms after
its oldest window arrived, edgert's defaults.

The rest exists so that bench/pipeline.py measures it exactly as it measures edgert's daemon:
the daemon's options (``--listen --events --socket --stats-interval --model``),
``event/stats/daemon`` every interval, receipt → decision latency per window in the daemon's
log-spaced histogram, one JSON line of final stats at SIGTERM, and ``--record FILE`` (npz of
every window's sensor, start time, score and flag, for comparing decisions).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import zmq

RUNTIMES = ("litert", "tflite-runtime", "onnxruntime")
DTYPES = {"f4": "<f4", "f8": "<f8", "i2": "<i2", "i4": "<i4", "u2": "<u2"}


class Model:
    """What the service reads from a model directory's manifest.json."""

    def __init__(self, d: Path):
        man = json.loads((d / "manifest.json").read_text())
        v = man["variants"]["dynamic"]
        self.path = d / v["file"]
        self.W, self.H = int(man["window"]), int(man["hop"])
        self.C = len(man["channels"])
        self.mean = np.asarray(man["normalization"]["mean"], np.float64)
        std = np.asarray(man["normalization"]["std"], np.float64)
        self.inv_std = np.divide(1.0, std, out=np.zeros_like(std), where=std > 0)
        self.isc, self.izp = float(v["input"]["scale"]), int(v["input"]["zero_point"])
        self.osc, self.ozp = float(v["output"]["scale"]), int(v["output"]["zero_point"])
        self.threshold = float(man["threshold"])
        self.name = man["name"]


def make_invoke(runtime: str, m: Model, batch: int, onnx: str | None):
    """``invoke(x) -> y``: int8 [batch, 1, W, C] through LiteRT / tflite-runtime, or float
    [k, 1, W, C] through ONNX Runtime; one thread each."""
    if runtime == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(onnx), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})[0]
    if runtime == "litert":
        from ai_edge_litert.interpreter import Interpreter
    else:
        from tflite_runtime.interpreter import Interpreter
    it = Interpreter(model_path=str(m.path), num_threads=1)
    i_in = it.get_input_details()[0]["index"]
    it.resize_tensor_input(i_in, [batch, 1, m.W, m.C])
    it.allocate_tensors()
    i_out = it.get_output_details()[0]["index"]

    def invoke(x):
        it.set_tensor(i_in, x)
        it.invoke()
        return it.get_tensor(i_out)
    return invoke


class Histogram:
    """Latencies in µs, log-spaced bins of edgert.stats.LatencyHistogram (1 µs .. 100 s, 120
    per decade), so both report the same quantiles of the same distribution."""

    def __init__(self, per_decade: int = 120):
        self.n = 8 * per_decade + 1
        self.edges = 10.0 ** (np.arange(self.n + 1) / per_decade)
        self.counts = np.zeros(self.n + 1, np.int64)
        self.total, self.max_us = 0, 0.0

    def add(self, us: np.ndarray) -> None:
        idx = np.clip(np.searchsorted(self.edges, us, side="right") - 1, 0, self.n)
        self.counts += np.bincount(idx, minlength=self.counts.size)
        self.total += us.size
        self.max_us = max(self.max_us, float(us.max()))

    def quantile(self, q: float) -> float | None:
        if not self.total:
            return None
        i = int(np.searchsorted(np.cumsum(self.counts), q * self.total, side="left"))
        return float(min(self.edges[min(i + 1, self.n)], self.max_us))


class Sensor:
    def __init__(self, idx: int):
        self.idx, self.buf, self.t_buf, self.next_t0, self.windows = idx, None, 0, None, 0


class Service:
    def __init__(self, m: Model, invoke, runtime: str, pub, batch: int = 32,
                 max_delay_us: int = 1000, record: bool = False):
        self.m, self.invoke, self.pub, self.B = m, invoke, pub, batch
        self.float_model = runtime == "onnxruntime"
        self.max_delay_ns = max_delay_us * 1000
        self.sensors: dict = {}
        self.names: list = []
        self.views: list = []   # pending windows: views of the normalized blocks
        self.meta: list = []    # (receipt ns, sensor index, window start ns) per pending window
        self.pad = np.zeros((batch, 1, m.W, m.C), np.int8)
        self.lat = Histogram()
        self.messages = self.samples = self.windows = self.anomalies = self.batches = 0
        self.drops: dict = {}
        self.record = [] if record else None

    # -- the service ---------------------------------------------------------------------
    def on_message(self, frames, t_recv: int) -> None:
        """One block: header, samples, normalization, the windows it completes."""
        m = self.m
        try:
            name = frames[0].bytes.decode()
            h = msgpack.unpackb(frames[1].bytes)
            n, c = h["shape"]
            x = np.frombuffer(frames[2].buffer, DTYPES[h["dtype"]]).reshape(n, c)
            t0, dt = int(h["t0"]), int(h["dt"])
        except (ValueError, KeyError, TypeError, IndexError, msgpack.UnpackException) as exc:
            self.drops[type(exc).__name__] = self.drops.get(type(exc).__name__, 0) + 1
            return
        if c != m.C:
            self.drops["channels"] = self.drops.get("channels", 0) + 1
            return
        st = self.sensors.get(name)
        if st is None:
            st = self.sensors[name] = Sensor(len(self.names))
            self.names.append(name)
        self.messages += 1
        self.samples += n
        z = (x - m.mean) * m.inv_std  # float64, as edgert's kernel computes it
        if st.buf is None or t0 != st.next_t0:  # first block, or a gap: windows start afresh
            st.buf, st.t_buf = z, t0
        else:
            st.buf = np.concatenate((st.buf, z))
        st.next_t0 = t0 + n * dt
        nwin = (len(st.buf) - m.W) // m.H + 1 if len(st.buf) >= m.W else 0
        starts = range(0, nwin * m.H, m.H)
        self.views += [st.buf[s:s + m.W] for s in starts]
        self.meta += [(t_recv, st.idx, st.t_buf + s * dt) for s in starts]
        st.windows += nwin
        if nwin:
            st.buf = st.buf[nwin * m.H:]
            st.t_buf += nwin * m.H * dt
        while len(self.views) >= self.B:
            self.score(self.B)

    def score(self, k: int) -> None:
        """The oldest k pending windows: stack, quantize, invoke, error, threshold, events."""
        m = self.m
        X = np.stack(self.views[:k])                                   # [k, W, C] normalized
        meta = self.meta[:k]
        del self.views[:k], self.meta[:k]
        if self.float_model:
            xin = X.astype(np.float32)[:, None]
            err = (xin[:, 0] - self.invoke(xin)[:, 0]) ** 2
        else:
            q = np.clip(np.rint(X / m.isc + m.izp), -128, 127).astype(np.int8)[:, None]
            if k < self.B:
                self.pad[:k] = q
                q = self.pad
            y = self.invoke(q)[:k, 0].astype(np.float64)
            err = ((q[:k, 0].astype(np.float64) - m.izp) * m.isc - (y - m.ozp) * m.osc) ** 2
        scores = err.mean(axis=1).mean(axis=1)                         # per window
        flags = scores > m.threshold
        t_dec = time.perf_counter_ns()
        self.lat.add((t_dec - np.array([r[0] for r in meta], np.int64)) * 1e-3)
        self.windows += k
        self.batches += 1
        for i in np.flatnonzero(flags):
            _, s, t_start = meta[i]
            self.anomalies += 1
            self.pub.send_multipart([f"event/anomaly/{self.names[s]}".encode(), msgpack.packb(
                {"sensor": self.names[s], "t_start": t_start, "score": float(scores[i]),
                 "threshold": m.threshold, "model": m.name, "backend": "naive"})])
        if self.record is not None:
            self.record.append((np.array([r[1] for r in meta]), np.array([r[2] for r in meta]),
                                scores.astype(np.float64), flags))

    # -- what the benchmark reads ------------------------------------------------------------
    def stats(self, started_ns: int) -> dict:
        up = (time.perf_counter_ns() - started_ns) * 1e-9
        return {"messages": self.messages, "samples": self.samples, "windows": self.windows,
                "anomalies": self.anomalies, "dropped": sum(self.drops.values()),
                "drops": dict(self.drops), "notes": {}, "batches": self.batches,
                "uptime_s": round(up, 3), "windows_per_s": round(self.windows / up, 1) if up else 0.0,
                "p50_latency_us": self.lat.quantile(0.5), "p99_latency_us": self.lat.quantile(0.99),
                "p999_latency_us": self.lat.quantile(0.999), "max_latency_us": self.lat.max_us,
                "model": self.m.name}

    def save(self, path: str) -> None:
        """Every scored window: sensor name, start ns, score, flag (npz)."""
        r = self.record or [(np.zeros(0, int), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, bool))]
        sid, t, s, f = (np.concatenate(a) for a in zip(*r))
        np.savez(path, sensor=np.asarray(self.names, dtype=str)[sid] if len(sid) else np.zeros(0, str),
                 t_start=t, score=s, flag=f)


def rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def serve(args) -> dict:
    """Bind, serve until SIGTERM/SIGINT, score what is pending; the final stats."""
    m = Model(Path(args.model))
    invoke = make_invoke(args.runtime, m, args.batch, args.onnx)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL if args.socket == "pull" else zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 100000)
    if args.socket == "sub":
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 10000)
    pub.bind(args.events)
    sock.bind(args.listen)
    svc = Service(m, invoke, args.runtime, pub, args.batch, args.max_delay_us, bool(args.record))
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(1))
    started = time.perf_counter_ns()
    next_stats = time.monotonic() + args.stats_interval
    perf = time.perf_counter_ns
    while not stop:
        due = svc.meta[0][0] + svc.max_delay_ns if svc.meta else None
        timeout = 100 if due is None else max(0, min(100, -(-(due - perf()) // 1_000_000)))
        if sock.poll(timeout):
            for _ in range(256):
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                svc.on_message(frames, perf())
        if svc.meta and perf() >= svc.meta[0][0] + svc.max_delay_ns:
            svc.score(len(svc.views))
        if time.monotonic() >= next_stats:
            next_stats = time.monotonic() + args.stats_interval
            pub.send_multipart([b"event/stats/daemon", msgpack.packb(svc.stats(started))])
    sock.close(linger=0)
    while svc.views:
        svc.score(min(args.batch, len(svc.views)))
    final = {**svc.stats(started), "final": True, "backend": f"naive {args.runtime}",
             "per_sensor": {n: {"windows": svc.sensors[n].windows} for n in svc.names},
             "rss_mb": rss_mb(), "latency_histogram": {"total": svc.lat.total}}
    if args.record:
        svc.save(args.record)
    pub.close(linger=200)
    ctx.term()
    return final


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", required=True, help="bind the input socket here (ipc://, tcp://)")
    p.add_argument("--events", required=True, help="bind the events PUB socket here")
    p.add_argument("--socket", choices=("pull", "sub"), default="pull")
    p.add_argument("--stats-interval", type=float, default=1.0, dest="stats_interval")
    p.add_argument("--model", required=True, help="model directory (manifest.json)")
    p.add_argument("--runtime", choices=RUNTIMES, default="litert")
    p.add_argument("--onnx", help="the float model as ONNX (--runtime onnxruntime)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-delay-us", type=int, default=1000, dest="max_delay_us")
    p.add_argument("--record", help="write every window's decision here (npz) at exit")
    args = p.parse_args(argv)
    if args.runtime == "onnxruntime" and not args.onnx:
        p.error("--runtime onnxruntime needs --onnx FILE")
    if not 1 <= args.batch <= 4096 or args.stats_interval <= 0 or args.max_delay_us < 0:
        p.error("--batch must be 1..4096, --stats-interval > 0, --max-delay-us >= 0")
    try:
        final = serve(args)
    except (OSError, KeyError, ValueError, ImportError, zmq.ZMQError) as exc:
        print(f"naive_service: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(final), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
