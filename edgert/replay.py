"""Replay recorded samples onto the bus as a sensor would: CSV, NPZ or shipped recordings.

Each source is a segment; between segments sensor time jumps by `gap_s`, which the daemon
sees as a new recording (its windows restart instead of stitching two recordings together).

Channels are sent in the model's order: a source that names its columns (a CSV header, an
NPZ ``channels`` array, a shipped recording) is matched to the model's ``channels`` by name
and reordered; one that does not (a headerless CSV, a bare array) is sent in file order once
its column count matches. A time column is recognised by name and never sent.
"""

from __future__ import annotations

import csv
import itertools
import json
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq

from .bus import SensorPublisher

SHIPPED_PREFIX = "itsc:"
TIME_COLUMNS = ("time", "timestamp", "t", "datetime")  # matched case-insensitively
LABEL_COLUMNS = ("anomaly", "changepoint", "label", "labels")  # ground truth, not sensor channels
DELIMITERS = (",", ";", "\t")


@dataclass
class Recording:
    """Samples read from one source.

    Attributes:
      source: what was read (a path or ``itsc:NAME``), for messages.
      samples: float32 [n_samples, n_channels].
      names: the channel names the source gives (CSV header, NPZ ``channels``), or None
        when it gives none (headerless CSV, plain array, or columns chosen by index).
      by_position: True when the columns were chosen with ``columns`` (sent in that order).
      skipped: names of the columns that were read past (time, labels), for messages.
    """

    source: str
    samples: np.ndarray
    names: list | None
    by_position: bool = False
    skipped: tuple = ()


def describe_itsc(name: str) -> str:
    """What a shipped ITSC recording holds: "healthy" or "30 % short circuit, phase A"."""
    from .data import itsc_class

    cls = itsc_class(name)
    if cls == "SC_HLT":
        return "healthy"
    for part in cls.split("_")[1:]:
        if part[1:] not in ("", "0"):
            return f"{int(part[1:]) * 10} % inter-turn short circuit, phase {part[0]}"
    return cls


def shipped_recordings() -> list[str]:
    """``itsc:NAME`` of every shipped recording, sorted."""
    from .data import itsc_names

    return [SHIPPED_PREFIX + n for n in itsc_names()]


def _numeric(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


def _load_shipped(source: str) -> Recording:
    from .data import ITSC_CHANNELS, itsc_names, itsc_recording

    name = source[len(SHIPPED_PREFIX):]
    if name not in itsc_names():
        raise ValueError(f"{source}: no shipped recording of that name (edgert replay --list names all "
                         f"{len(itsc_names())}, e.g. itsc:SC_HLT_005)")
    return Recording(source, itsc_recording(name), list(ITSC_CHANNELS))


def _load_array(source: str, path: Path) -> Recording:
    try:
        obj = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{source}: not a readable NPY/NPZ file ({exc})") from None
    names = None
    if isinstance(obj, np.lib.npyio.NpzFile):
        with obj:
            keys = list(obj.keys())
            key = "samples" if "samples" in keys else next((k for k in keys if k != "channels"), None)
            if key is None:
                raise ValueError(f"{source}: empty NPZ (no 'samples' array)")
            try:
                arr = obj[key]
                if "channels" in keys:
                    names = [str(c) for c in np.atleast_1d(obj["channels"])]
            except ValueError as exc:
                raise ValueError(f"{source}: {exc}") from None
    else:
        arr = obj
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{source}: expected a [n_samples, n_channels] array, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{source}: samples must be numbers, got dtype {arr.dtype}")
    if names is not None and len(names) != arr.shape[1]:
        raise ValueError(f"{source}: 'channels' names {len(names)} channels ({', '.join(names)}) but "
                         f"'samples' has {arr.shape[1]}")
    return Recording(source, np.ascontiguousarray(arr, dtype=np.float32), names)


def _csv_head(source: str, path: Path) -> tuple[str, list, list | None]:
    """(delimiter, first row, second row or None) of a CSV, parsed with the csv module."""
    try:
        with open(path, "r", encoding="utf-8-sig", newline="") as f:
            lines = [f.readline(), f.readline()]
    except UnicodeDecodeError:
        raise ValueError(f"{source}: not a text (UTF-8) CSV file") from None
    if not lines[0].strip():
        raise ValueError(f"{source}: empty file")
    delim = max(DELIMITERS, key=lines[0].count)
    rows = [next(csv.reader([ln], delimiter=delim), []) if ln.strip() else None for ln in lines]
    return delim, [tok.strip() for tok in rows[0]], [tok.strip() for tok in rows[1]] if rows[1] else None


def _pick_column(source: str, c, head: list, has_header: bool, what: str) -> int:
    """The index of column `c` (a header name or a 0-based index)."""
    c = str(c).strip()
    if c.isdigit():
        i = int(c)
        if i >= len(head):
            raise ValueError(f"{source}: {what} {i} out of range ({len(head)} columns)")
        return i
    if has_header and c in head:
        return head.index(c)
    if has_header:
        folded = [h.casefold() for h in head]
        if folded.count(c.casefold()) == 1:
            return folded.index(c.casefold())
    raise ValueError(f"{source}: no column {c!r} ({'columns: ' + ', '.join(head) if has_header else 'no header'})")


def _load_csv(source: str, path: Path, columns, time_column) -> Recording:
    delim, head, second = _csv_head(source, path)
    has_header = not all(_numeric(h) for h in head)
    data_row = second if has_header else head
    if data_row is None:
        raise ValueError(f"{source}: a header but no data rows")
    if len(data_row) != len(head):
        raise ValueError(f"{source}: the header has {len(head)} columns, the first data row {len(data_row)}")
    if has_header and len(set(head)) != len(head):
        dup = sorted({h for h in head if head.count(h) > 1})
        raise ValueError(f"{source}: duplicate column names {', '.join(dup)}")
    skip = set()
    if time_column is not None:
        skip.add(_pick_column(source, time_column, head, has_header, "--time-column"))
    elif has_header:
        skip |= {i for i, h in enumerate(head) if h.casefold() in TIME_COLUMNS}
    if columns:
        use = [_pick_column(source, c, head, has_header, "column") for c in columns]
        bad = [head[i] if has_header else str(i) for i in use if i in skip]
        if bad:
            raise ValueError(f"{source}: column {bad[0]} is the time column, not a channel")
        names = [head[i] for i in use] if has_header else None
        by_position = True
    else:
        if has_header:
            skip |= {i for i, h in enumerate(head) if h.casefold() in LABEL_COLUMNS}
        use = [i for i in range(len(head)) if i not in skip]
        text = [i for i in use if not _numeric(data_row[i])]
        if text:
            what = ", ".join(repr(head[i]) if has_header else str(i) for i in text)
            raise ValueError(f"{source}: column(s) {what} are not numbers (name a time column with "
                             f"--time-column, or choose the channels with --columns)")
        names = [head[i] for i in use] if has_header else None
        by_position = False
    if not use:
        raise ValueError(f"{source}: no channel columns")
    try:
        arr = np.loadtxt(path, delimiter=delim, quotechar='"', skiprows=1 if has_header else 0,
                         usecols=use, dtype=np.float64, ndmin=2, encoding="utf-8-sig")
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    if arr.shape[0] == 0:
        raise ValueError(f"{source}: no data rows")
    skipped = tuple(head[i] if has_header else f"column {i}" for i in sorted(skip))
    return Recording(source, np.ascontiguousarray(arr, dtype=np.float32), names, by_position, skipped)


def load_recording(source: str, columns=None, time_column=None) -> Recording:
    """Read a CSV, an NPZ/NPY, or ``itsc:NAME`` (shipped data).

    CSV: ``,``, ``;`` or tab separated, an optional header row (quoted names are fine). With a
    header, a time column (``time``, ``timestamp``, ``t``, ``datetime``, any case, or the one
    named by `time_column`) and label columns (``anomaly``, ``changepoint``, ``label``) are
    read past; every other column must be numeric. NPZ: the ``samples`` array (else the first
    one) and, if present, ``channels`` (their names).

    Args:
      columns: names (with a header) or 0-based indices of the columns to send, in the order
        of the model's channels (matching by name is then off).
      time_column: name or 0-based index of a time column (skipped; the rate comes from --rate).
    Returns:
      a `Recording`.
    Raises:
      ValueError naming the file and what is wrong with it.
    """
    if source.startswith(SHIPPED_PREFIX):
        rec = _load_shipped(source)
        if columns:
            idx = [_pick_column(source, c, rec.names, True, "column") for c in columns]
            rec = Recording(source, np.ascontiguousarray(rec.samples[:, idx]), [rec.names[i] for i in idx], True)
        return rec
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"{source}: no such file")
    if path.suffix in (".npz", ".npy"):
        rec = _load_array(source, path)
        if columns:
            idx = [_pick_column(source, c, rec.names or [], rec.names is not None, "column") for c in columns]
            rec = Recording(source, np.ascontiguousarray(rec.samples[:, idx]),
                            [rec.names[i] for i in idx] if rec.names else None, True)
        return rec
    return _load_csv(source, path, columns, time_column)


def load_samples(source: str, columns=None, time_column=None) -> np.ndarray:
    """The [n, C] float32 samples of `load_recording` (columns in file order or as chosen)."""
    return load_recording(source, columns, time_column).samples


def to_model_order(rec: Recording, channels: list, model_name: str) -> np.ndarray:
    """`rec`'s samples with its columns in the model's channel order.

    Named columns are matched to `channels` by name (case-insensitively when unambiguous) and
    reordered; every channel must be present and no other column. Unnamed columns (or columns
    chosen by position) are taken in order once their count matches; a chosen column whose
    name is another model channel's is refused (it would be sent as the wrong channel).
    Raises:
      ValueError naming the source, its channels and the model's.
    """
    n = rec.samples.shape[1]
    model_desc = f"model {model_name} takes {len(channels)} ({', '.join(channels)})"
    hint = "; pass --model if the daemon serves another model"
    if rec.names is None or rec.by_position:
        if n != len(channels):
            has = f" ({', '.join(rec.names)})" if rec.names else ""
            raise ValueError(f"{rec.source}: {n} channel{'s' if n != 1 else ''}{has}, but {model_desc}{hint}")
        if rec.names:
            for i, name in enumerate(rec.names):
                if name in channels and channels.index(name) != i:
                    raise ValueError(f"{rec.source}: column {name!r} would be sent as channel "
                                     f"{channels[i]!r}: list --columns in the model's order ({', '.join(channels)})")
        return rec.samples
    folded = {c.casefold(): c for c in channels}
    mapped = {}
    extra = []
    for i, name in enumerate(rec.names):
        key = name if name in channels else folded.get(name.casefold()) if len(folded) == len(channels) else None
        if key is None or key in mapped:
            extra.append(name)
        else:
            mapped[key] = i
    missing = [c for c in channels if c not in mapped]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if extra:
            parts.append(f"extra {', '.join(extra)}")
        skipped = f"; read past: {', '.join(rec.skipped)}" if rec.skipped else ""
        raise ValueError(f"{rec.source}: channels {', '.join(rec.names)} do not match: {model_desc}: "
                         f"{' and '.join(parts)}{skipped} (choose columns with --columns, a time column "
                         f"with --time-column{hint})")
    order = [mapped[c] for c in channels]
    if order == list(range(n)):
        return rec.samples
    return np.ascontiguousarray(rec.samples[:, order])


def replay(segments, pub: SensorPublisher, rate_hz: float, block: int = 64, speed: float = 1.0,
           realtime: bool = True, gap_s: float = 1.0, t0_ns: int | None = None,
           on_block=None) -> dict:
    """Send segments ([n, C] arrays) as blocks of `block` samples.

    Args:
      segments: an iterable of [n, C] arrays.
      rate_hz: sensor sample rate (sets dt).
      speed: wall-clock speed-up when `realtime` (2.0 = twice real time).
      realtime: pace sends to the sample clock; False sends as fast as the socket takes them.
      gap_s: sensor-time gap inserted between segments.
      on_block: optional ``callable(segment_index, start_sample, n)`` after each send.
    Returns:
      counts: blocks, samples, seconds, segment boundaries as (t_first_ns, t_last_ns).
    Raises:
      zmq.Again when a send times out (a PUSH socket with SNDTIMEO whose daemon went away).
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


def diagnose_connection(endpoint: str, kind: str, ctx=None, seconds: float = 0.5) -> str:
    """Why a sensor socket of `kind` ("pub" or "push") got no daemon at `endpoint`.

    Connects a probe socket of the same type with a monitor attached before connecting (so no
    event is missed) and reads what happens: a peer that accepts the TCP/IPC connection and
    then drops it during the ZeroMQ handshake has an incompatible socket type; a connection that
    is refused and retried has nobody listening.
    Returns:
      one sentence for the error message.
    """
    from zmq.utils.monitor import recv_monitor_message

    ctx = ctx or zmq.Context.instance()
    sock = ctx.socket(zmq.XPUB if kind == "pub" else zmq.PUSH)
    mon = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED
                                  | zmq.EVENT_HANDSHAKE_SUCCEEDED)
    seen = set()
    try:
        sock.connect(endpoint)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if mon.poll(max(1, int((end - time.monotonic()) * 1000))):
                ev = recv_monitor_message(mon)["event"]
                seen.add(ev)
                if ev in (zmq.EVENT_HANDSHAKE_SUCCEEDED, zmq.EVENT_DISCONNECTED):
                    break
    finally:
        sock.disable_monitor()
        mon.close(linger=0)
        sock.close(linger=0)
    other, daemon_kind = ("push", "pull") if kind == "pub" else ("pub", "sub")
    if zmq.EVENT_HANDSHAKE_SUCCEEDED in seen:
        return f"a daemon answered {endpoint} only now (it started late?): try again"
    if zmq.EVENT_CONNECTED in seen:
        return (f"something listens on {endpoint} but refuses a {kind.upper()} sensor: the daemon's input "
                f"is a {daemon_kind.upper()} socket (edgert serve --socket {daemon_kind}); use --socket {other}")
    return f"nothing accepts connections on {endpoint} (is the daemon running and listening there?)"


def _sensor_counts(stats: dict, sensor: str) -> dict:
    """This sensor's drops ({reason: blocks}) and scored windows in a daemon stats payload."""
    drops = dict((stats.get("drops") or {}).get(sensor) or {})
    per = stats.get("per_sensor") or {}
    if sensor not in per and stats.get("sensors_active", 0) > len(per):
        # A stats event lists the top sensors only (stats_top_n; those with drops first): this
        # one is not among them, so its windows are unknown here (its drops would be listed).
        return {"drops": drops, "windows": None}
    return {"drops": drops, "windows": int((per.get(sensor) or {}).get("windows", 0))}


class EventRecorder:
    """Collects one sensor's events from the daemon's event socket while it is replayed: its
    scores and anomalies (the daemon must publish scores for those: ``publish_scores = true`` /
    ``edgert serve --publish-scores``) and the daemon's ``stats`` events, from which the
    sensor's drops and scored windows are read.

    Args:
      endpoint: the daemon's event endpoint.
      sensor: the replayed sensor id.
      curve_server_key, curve_client_key: for a daemon with CURVE on, its public key and this
        subscriber's ``.key_secret`` (`edgert.auth.secure_client`); the key must be allowed on the
        daemon's event socket.
    """

    def __init__(self, endpoint: str, sensor: str, ctx=None, curve_server_key: str | None = None,
                 curve_client_key: str | None = None):
        import zmq

        from .auth import HandshakeWatch, secure_client

        self.sensor = sensor
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
        self.sock.setsockopt(zmq.SUBSCRIBE, b"event/stats/daemon")
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.connect(endpoint)
        self.scores: dict = {}  # t_start -> (score, threshold, anomaly)
        self.anomalies: dict = {}  # t_start -> anomaly event
        self.stats: list = []  # (monotonic time received, stats payload), the last few
        self.n_stats = 0

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
        """Take every event waiting (waiting up to timeout_ms for the first). Returns how many
        were the sensor's own (scores, anomalies; the periodic stats are not counted)."""
        from .events import decode

        got = n = 0
        while self.sock.poll(timeout_ms if got == 0 else 0):
            kind, sensor, p = decode(self.sock.recv_multipart())
            got += 1
            if kind == "scores":
                for t, s, th, a in zip(p["t_start"], p["score"], p["threshold"], p["anomaly"]):
                    self.scores[t] = (s, th, a)
                n += 1
            elif kind == "anomaly":
                self.anomalies[p["t_start"]] = p
                n += 1
            elif kind == "stats" and sensor == "daemon":
                self.stats = self.stats[-3:] + [(time.monotonic(), p)]
                self.n_stats += 1
        return n

    def wait_stats(self, timeout_s: float) -> dict | None:
        """The next stats event (events of other kinds are kept), or None after timeout_s."""
        seen = self.n_stats
        end = time.monotonic() + timeout_s
        while self.n_stats == seen and time.monotonic() < end:
            self.poll(max(1, int((end - time.monotonic()) * 1000)))
        return self.stats[-1][1] if self.n_stats > seen else None

    def settle(self, timeout_s: float = 10.0) -> dict | None:
        """After the last block: wait until two stats events in a row agree on this sensor's
        drops and windows (the daemon has handled everything), taking every other event
        meanwhile. Returns the last stats payload, or None if none arrived within timeout_s."""
        end = time.monotonic() + timeout_s
        prev = None
        last = None
        while time.monotonic() < end:
            s = self.wait_stats(end - time.monotonic())
            if s is None:
                break
            last = s
            cur = _sensor_counts(s, self.sensor)
            if cur == prev:
                break
            prev = cur
        self.poll(0)
        return last

    def drain(self, quiet_s: float = 0.5, max_s: float = 10.0) -> None:
        """Poll until none of the sensor's events arrived for quiet_s (at most max_s)."""
        end = time.monotonic() + max_s
        quiet_end = time.monotonic() + quiet_s
        while time.monotonic() < min(end, quiet_end):
            if self.poll(int(max(0.0, min(end, quiet_end) - time.monotonic()) * 1000) + 1):
                quiet_end = time.monotonic() + quiet_s

    def write_csv(self, path: str, spans: list, dt: int, segment_lengths: list, window: int | None = None) -> int:
        """One row per window: segment, sample index within it, times (first and last sample,
        ns), score, threshold, flag, top channels, each channel's share of the reconstruction
        error, class. `window` (samples) gives ``t_end_ns`` where no anomaly event does.
        Returns the number of rows."""
        rows = []
        for t, (s, th, a) in sorted(self.scores.items()):
            seg = next((i for i, (lo, hi) in enumerate(spans) if lo <= t <= hi), -1)
            idx = (t - spans[seg][0]) // dt if seg >= 0 else -1
            ev = self.anomalies.get(t, {})
            t_end = ev.get("t_end", t + (window - 1) * dt if window else "")
            rows.append([seg, idx, t, t_end, s, th, int(bool(a)), " ".join(ev.get("top_channels", [])),
                         *(ev.get("contributions") or []), ev.get("class", ""), ev.get("class_prob", "")])
        chans = next((ev.get("channels") for ev in self.anomalies.values()), None) or []
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["segment", "sample", "t_start_ns", "t_end_ns", "score", "threshold", "anomaly",
                        "top_channels", *[f"share_{c}" for c in chans], "class", "class_prob"])
            for r in rows:
                if len(r) < 10 + len(chans):  # a window without an anomaly event: empty shares
                    r = r[:8] + [""] * len(chans) + r[8:]
                w.writerow(r)
        return len(rows)

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
        self.sock.close(linger=0)


def expected_windows(lengths: list, window: int, hop: int, contiguous: bool = False, repeat: int = 1) -> int:
    """Windows the daemon cuts from segments of these lengths sent `repeat` times: each segment
    restarts the windows (a time gap between them), unless `contiguous` (one long stream)."""
    def per(n: int) -> int:
        return (n - window) // hop + 1 if n >= window else 0

    return per(sum(lengths) * repeat) if contiguous else sum(per(n) for n in lengths) * repeat


def _err(msg: str) -> None:
    print(f"edgert replay: {msg}", file=sys.stderr, flush=True)


def _drop_message(sensor: str, drops: dict, model) -> str:
    total = sum(drops.values())
    what = ", ".join(f"{r} ({n})" for r, n in sorted(drops.items(), key=lambda x: -x[1]))
    hint = ""
    if "channels" in drops:
        hint = (f": the daemon's model takes {model.n_channels} channels per block ({', '.join(model.channels)} "
                f"for {model.name}; pass --model if it serves another)")
    return f"the daemon dropped {total} block{'s' if total != 1 else ''} from sensor {sensor}: {what}{hint}"


def main(args) -> int:
    """``edgert replay``: load and check every file, send, then (with ``--events``) read the
    daemon's stats for this sensor. Exit 0 when sent (and, when the daemon can be seen, taken
    without drops); 2 for bad input; 1 when the daemon is absent, refuses, or drops blocks."""
    from . import models

    if args.list:
        for name in shipped_recordings():
            print(f"{name}\t{describe_itsc(name[len(SHIPPED_PREFIX):])}")
        return 0
    missing = [opt for opt, v in (("FILE", args.files), ("--to", args.to), ("--sensor", args.sensor),
                                  ("--rate", args.rate)) if not v]
    if missing:
        _err(f"missing {', '.join(missing)} (edgert replay -h for help; --list names the shipped recordings)")
        return 2
    if getattr(args, "json_payload", False) and not (args.to or "").startswith(("mqtt://", "mqtts://")):
        _err("--json-payload is for --to mqtt://HOST:PORT/TOPIC/+ (a broker)")
        return 2
    if args.events_out and not args.events:
        _err("--events-out needs --events ENDPOINT (the daemon's event socket)")
        return 2
    try:
        model = models.load(args.model, verify=False)  # its channels; no interpreter is built
    except models.ModelError as exc:
        _err(f"--model: {exc}")
        return 2
    columns = next(csv.reader([args.columns]), None) if args.columns else None
    loaded: dict = {}
    try:
        for f in args.files:  # each distinct source once: a file listed many times is one array
            if f not in loaded:
                rec = load_recording(f, columns, args.time_column)
                loaded[f] = to_model_order(rec, model.channels, model.name)
    except ValueError as exc:
        _err(str(exc))
        return 2
    data = [loaded[f] for f in args.files]
    keys = {"curve_server_key": getattr(args, "curve_server_key", None),
            "curve_client_key": getattr(args, "curve_client_key", None)}
    try:
        pub = (_mqtt_publisher(args, model) if _is_mqtt(args.to)
               else SensorPublisher(args.to, args.sensor, kind=args.socket, **keys))
    except (zmq.ZMQError, ValueError, RuntimeError) as exc:  # RuntimeError: also paho missing (the extra)
        _err(f"--to {args.to}: {exc}")
        return 2
    try:
        rec = EventRecorder(args.events, args.sensor, **keys) if args.events else None
    except (zmq.ZMQError, ValueError, RuntimeError) as exc:
        pub.close()
        _err(f"--events {args.events}: {exc}")
        return 2
    try:
        return _send(args, model, data, pub, rec)
    finally:
        pub.close()
        if rec is not None:
            rec.close()


def _is_mqtt(endpoint: str) -> bool:
    from .mqtt import is_mqtt

    return is_mqtt(endpoint)


def _mqtt_publisher(args, model):
    """``--to mqtt[s]://HOST:PORT/TOPIC/+``: an `edgert.mqtt.MqttSensorPublisher` (binary blocks,
    or JSON with --json-payload). Raises ValueError / RuntimeError (paho missing) for the CLI."""
    from . import config
    from .mqtt import MqttSensorPublisher, paho

    paho()
    cfg = config.load(None, mqtt_username=getattr(args, "mqtt_username", None),
                      mqtt_password_file=getattr(args, "mqtt_password_file", None),
                      mqtt_ca_file=getattr(args, "mqtt_ca_file", None))
    return MqttSensorPublisher(args.to, args.sensor, cfg, json_payload=getattr(args, "json_payload", False),
                               channels=model.channels)


def _send(args, model, data, pub, rec) -> int:
    """The connected part of `main`: wait for the daemon, send, check what it took."""
    if not pub.wait_subscribed(args.wait):
        if hasattr(pub, "why_not"):  # MQTT
            _err(f"no connection to the broker within {args.wait:g} s: {pub.why_not()}")
        elif getattr(pub, "refused", None):
            from .auth import CLIENT_HINTS
            _err(f"{args.to} refused this client at the CURVE handshake ({pub.refused}): "
                 f"{CLIENT_HINTS[pub.refused]}")
        else:
            _err(f"no daemon took the connection within {args.wait:g} s: "
                 + diagnose_connection(args.to, args.socket, pub.ctx))
        return 1
    base = None
    if rec is not None:
        ok, cause = rec.handshake(args.wait)
        if ok is False:
            from .auth import CLIENT_HINTS
            _err(f"{args.events} refused this client at the CURVE handshake ({cause}): {CLIENT_HINTS[cause]}")
            return 1
        rec.poll(0)
        base = rec.stats[-1][1] if rec.stats else rec.wait_stats(3.0)
        if base is None:
            _err(f"warning: no stats event from a daemon on {args.events} within 3 s (is it the daemon's "
                 "event endpoint?): its drops cannot be checked")
        elif base.get("model") not in (None, model.name):
            _err(f"the daemon on {args.events} serves model {base['model']}, not {model.name}: pass --model "
                 f"{base['model']} (its name or directory), so the channels are checked against it")
            return 2
    if args.socket == "push" and hasattr(pub, "sock"):  # a daemon gone mid-replay: say so instead of blocking for ever
        pub.sock.setsockopt(zmq.SNDTIMEO, int(max(args.wait, 1.0) * 1000))
    segments = itertools.chain.from_iterable(itertools.repeat(data, args.repeat))
    total_blocks = args.repeat * sum(-(-d.shape[0] // args.block) for d in data)
    try:
        res = replay(segments, pub, args.rate, block=args.block, speed=args.speed,
                     realtime=not args.fast, gap_s=args.gap, t0_ns=args.t0,
                     on_block=(lambda *_: rec.poll(0)) if rec else None)
    except TimeoutError as exc:  # MQTT: the broker stopped acknowledging
        _err(f"{exc} (after {pub.sent} of {total_blocks} blocks)")
        return 1
    except zmq.Again:
        _err(f"the daemon stopped taking blocks after {pub.sent} of {total_blocks} (a send blocked for "
             f"{max(args.wait, 1.0):g} s)")
        return 1
    if hasattr(pub, "flush") and not pub.flush(max(args.wait, 1.0)):  # MQTT: every block at the broker
        _err(f"the broker did not acknowledge every block within {max(args.wait, 1.0):g} s")
        return 1
    summary = {"sensor": args.sensor, "blocks": res["blocks"], "samples": res["samples"],
               "seconds": round(res["seconds"], 3)}
    status = 0
    if rec is not None:
        final = rec.settle(10.0 if base is not None else 3.0)
        if final is None:  # no stats to say the daemon is done: wait for its events to stop
            rec.drain(quiet_s=0.5)
        got = _sensor_counts(final, args.sensor) if final else None
        if got is not None:
            was = _sensor_counts(base, args.sensor) if base else {"drops": {}, "windows": 0}
            drops = {r: n - was["drops"].get(r, 0) for r, n in got["drops"].items() if n > was["drops"].get(r, 0)}
            windows = (None if got["windows"] is None or was["windows"] is None
                       else got["windows"] - was["windows"])
            summary.update(windows=windows, dropped=sum(drops.values()))
            want = expected_windows([d.shape[0] for d in data], model.window, model.hop,
                                    contiguous=args.gap * args.rate <= 3, repeat=args.repeat)
            if drops:
                _err(_drop_message(args.sensor, drops, model))
                status = 1
            elif summary["windows"] is None:
                _err(f"note: sensor {args.sensor} is not among the sensors the daemon's stats list (stats_top_n); "
                     "no drops were counted for it, its windows are not checked")
            elif summary["windows"] == 0 and want > 0:
                _err(f"the daemon scored none of the {want} windows of sensor {args.sensor} and dropped nothing: "
                     "the blocks never reached it")
                status = 1
            elif summary["windows"] < want:
                _err(f"warning: the daemon scored {summary['windows']} of the {want} windows sent, with no "
                     "drops counted: blocks were lost on the way (the daemon's receive high-water mark?)")
        elif base is not None:
            _err("warning: no stats event from the daemon after the last block: its drops were not checked")
        if args.events_out:
            n = rec.write_csv(args.events_out, res["spans"], res["dt"], None, window=model.window)
            _err(f"{n} scored windows ({len(rec.anomalies)} anomalies) written to {args.events_out}")
            if n == 0 and status == 0:
                if got is not None and (summary["windows"] or 0) > 0:
                    _err(f"the daemon scored {summary['windows']} windows from {args.sensor} but published no "
                         "scores: start it with --publish-scores (publish_scores = true)")
                elif got is not None:
                    _err(f"the daemon scored no windows from {args.sensor} (recordings shorter than "
                         f"{model.window} samples?)")
                else:
                    _err("no scores arrived: is the daemon running with --publish-scores?")
                status = 1
            elif got is not None and n < summary["windows"]:
                _err(f"warning: the daemon scored {summary['windows']} windows, {n} scores reached this "
                     "recorder (events lost to the event socket's high-water mark?)")
    print(json.dumps(summary), flush=True)
    return status
