"""Replay recorded samples onto the bus as a sensor would: CSV, NPZ or shipped recordings.

Each source is a segment; between segments sensor time jumps by `gap_s`, which the daemon
sees as a new recording (its windows restart instead of stitching two recordings together).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .bus import SensorPublisher

SHIPPED_PREFIX = "itsc:"


def load_samples(source: str, columns=None) -> np.ndarray:
    """Load a [n, C] float32 array from a CSV, an NPZ/NPY, or ``itsc:NAME`` (shipped data).

    CSV: ``,`` or ``;`` separated, an optional header row; non-numeric columns (timestamps,
    labels given by name in `columns`' absence) are skipped. `columns`: names (with a header)
    or 0-based indices to keep.
    Raises:
      ValueError naming the file and what is wrong with it.
    """
    if source.startswith(SHIPPED_PREFIX):
        from .data import itsc_recording
        return itsc_recording(source[len(SHIPPED_PREFIX):])
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"{source}: no such file")
    if path.suffix in (".npz", ".npy"):
        obj = np.load(path, allow_pickle=False)
        if isinstance(obj, np.lib.npyio.NpzFile):
            keys = list(obj.keys())
            key = "samples" if "samples" in keys else keys[0] if keys else None
            if key is None:
                raise ValueError(f"{source}: empty NPZ")
            arr = obj[key]
        else:
            arr = obj
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2 or arr.shape[0] == 0:
            raise ValueError(f"{source}: expected a [n_samples, n_channels] array, got shape {arr.shape}")
        return np.ascontiguousarray(arr, dtype=np.float32)
    with open(path, "r", encoding="utf-8") as f:
        first = f.readline()
        second = f.readline()
    delim = ";" if first.count(";") > first.count(",") else ","
    head = [h.strip() for h in first.strip().split(delim)]

    def numeric(tok: str) -> bool:
        try:
            float(tok)
            return True
        except ValueError:
            return False

    has_header = not all(numeric(h) for h in head)
    data_row = (second if has_header else first).strip().split(delim)
    numeric_cols = [i for i, tok in enumerate(data_row) if numeric(tok.strip())]
    if columns:
        use = []
        for c in columns:
            if isinstance(c, int) or str(c).isdigit():
                use.append(int(c))
            elif has_header and c in head:
                use.append(head.index(c))
            else:
                raise ValueError(f"{source}: no column {c!r} (columns: {', '.join(head)})")
    else:
        use = numeric_cols
        if has_header:  # labels are not sensor channels
            use = [i for i in use if head[i].lower() not in ("anomaly", "changepoint", "label", "labels")]
    if not use:
        raise ValueError(f"{source}: no numeric columns")
    try:
        arr = np.loadtxt(path, delimiter=delim, skiprows=1 if has_header else 0, usecols=use,
                         dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    return np.ascontiguousarray(arr, dtype=np.float32)


def replay(segments, pub: SensorPublisher, rate_hz: float, block: int = 64, speed: float = 1.0,
           realtime: bool = True, gap_s: float = 1.0, t0_ns: int | None = None,
           on_block=None) -> dict:
    """Send segments ([n, C] arrays) as blocks of `block` samples.

    Args:
      rate_hz: sensor sample rate (sets dt).
      speed: wall-clock speed-up when `realtime` (2.0 = twice real time).
      realtime: pace sends to the sample clock; False sends as fast as the socket takes them.
      gap_s: sensor-time gap inserted between segments.
      on_block: optional ``callable(segment_index, start_sample, n)`` after each send.
    Returns:
      counts: blocks, samples, seconds, segment boundaries as (t_first_ns, t_last_ns).
    """
    dt = int(round(1e9 / rate_hz))
    t = time.time_ns() if t0_ns is None else int(t0_ns)
    start_wall = time.perf_counter()
    sent_samples = 0
    spans = []
    blocks = 0
    for si, seg in enumerate(segments):
        seg_t0 = t
        for i in range(0, seg.shape[0], block):
            part = seg[i:i + block]
            pub.send(part, t, dt)
            blocks += 1
            t += part.shape[0] * dt
            sent_samples += part.shape[0]
            if on_block is not None:
                on_block(si, i, part.shape[0])
            if realtime:
                ahead = sent_samples / rate_hz / speed - (time.perf_counter() - start_wall)
                if ahead > 0:
                    time.sleep(ahead)
        spans.append((seg_t0, t - dt))
        t += int(gap_s * 1e9)
    return {"blocks": blocks, "samples": sent_samples, "seconds": time.perf_counter() - start_wall,
            "spans": spans, "dt": dt}


class EventRecorder:
    """Collects one sensor's events from the daemon's event socket while it is replayed, and
    writes them as one CSV row per scored window (the daemon must publish scores:
    ``publish_scores = true`` / ``edgert serve --publish-scores``).

    Args:
      endpoint: the daemon's event endpoint.
      sensor: the replayed sensor id.
      channels: channel names for the per-channel contribution columns.
      curve_server_key, curve_client_key: for a daemon with CURVE on, its public key and this
        subscriber's ``.key_secret`` (`edgert.auth.secure_client`); the key must be allowed on the
        daemon's event socket.
    """

    def __init__(self, endpoint: str, sensor: str, ctx=None, curve_server_key: str | None = None,
                 curve_client_key: str | None = None):
        import zmq

        from .auth import HandshakeWatch, secure_client

        self.zmq = zmq
        self.sock = (ctx or zmq.Context.instance()).socket(zmq.SUB)
        try:
            curve = secure_client(self.sock, curve_server_key, curve_client_key)
        except BaseException:
            self.sock.close(linger=0)
            raise
        self._watch = HandshakeWatch(self.sock) if curve else None
        for kind in ("scores", "anomaly"):
            self.sock.setsockopt(zmq.SUBSCRIBE, f"event/{kind}/{sensor}".encode())
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.connect(endpoint)
        self.scores: dict = {}  # t_start -> (score, threshold, anomaly)
        self.anomalies: dict = {}  # t_start -> anomaly event

    def handshake(self, timeout: float = 2.0) -> tuple[bool | None, str | None]:
        """With CURVE: wait for the handshake with the daemon's event socket. Returns (True, None),
        (False, cause) if refused (`edgert.auth.refusal_cause`), (None, None) on timeout or without CURVE."""
        if self._watch is None:
            return None, None
        res = self._watch.wait(timeout)
        self._watch.close()
        self._watch = None
        return res

    def poll(self, timeout_ms: int = 0) -> int:
        """Take every event waiting (waiting up to timeout_ms for the first). Returns how many."""
        from .events import decode

        n = 0
        while self.sock.poll(timeout_ms if n == 0 else 0):
            kind, _, p = decode(self.sock.recv_multipart())
            if kind == "scores":
                for t, s, th, a in zip(p["t_start"], p["score"], p["threshold"], p["anomaly"]):
                    self.scores[t] = (s, th, a)
            elif kind == "anomaly":
                self.anomalies[p["t_start"]] = p
            n += 1
        return n

    def drain(self, quiet_s: float = 0.5, max_s: float = 10.0) -> None:
        """Poll until no event arrived for quiet_s (at most max_s)."""
        end = time.monotonic() + max_s
        while time.monotonic() < end and self.poll(int(quiet_s * 1000)):
            pass

    def write_csv(self, path: str, spans: list, dt: int, segment_lengths: list) -> int:
        """One row per window: segment, sample index within it, times, score, threshold, flag,
        top channels, each channel's share, class. Returns the number of rows."""
        import csv

        rows = []
        for t, (s, th, a) in sorted(self.scores.items()):
            seg = next((i for i, (lo, hi) in enumerate(spans) if lo <= t <= hi), -1)
            idx = (t - spans[seg][0]) // dt if seg >= 0 else -1
            ev = self.anomalies.get(t, {})
            rows.append([seg, idx, t, s, th, int(bool(a)), " ".join(ev.get("top_channels", [])),
                         *(ev.get("contributions") or []), ev.get("class", ""), ev.get("class_prob", "")])
        chans = next((ev.get("channels") for ev in self.anomalies.values()), None) or []
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["segment", "sample", "t_start_ns", "score", "threshold", "anomaly", "top_channels",
                        *[f"share_{c}" for c in chans], "class", "class_prob"])
            for r in rows:
                if len(r) < 9 + len(chans):  # a window without an anomaly event: empty shares
                    r = r[:7] + [""] * len(chans) + r[7:]
                w.writerow(r)
        return len(rows)

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
        self.sock.close(linger=0)
