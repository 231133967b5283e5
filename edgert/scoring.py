"""Scores from model outputs, and which channel a flagged window is attributed to.

The thresholds themselves (the `Threshold` protocol, `FixedThreshold`, SPOT/DSPOT, quantile and
the `make_threshold` factory) live in `edgert.thresholds`; `Threshold` and `FixedThreshold` are
re-exported here for the code that imports them from this module.

Attribution (the ``contributions``/``top_channels`` of anomaly events): a model whose manifest
has the optional ``attribution`` field (``"method": "phasor"``) names the channel whose
fundamental (e.g. the 60 Hz of a motor current) departs from that channel's own normal
phasor, relative to the channel's normal spread, along the direction a fault moves it
(``fault_angle_deg``). Without the field, each channel's share of the reconstruction error
(`channel_shares`, which on ITSC names the wrong phase) is used as before.
"""

from __future__ import annotations

import math

import numpy as np

from . import kernels
from .errors import ModelError
from .thresholds import FixedThreshold, Threshold  # noqa: F401  (re-exported: the old home)


class ReconstructionScorer:
    """Autoencoder score: mean over channels of the per-channel MSE in normalized units.

    Both the input tensor (what the model saw) and the output tensor are dequantized, so the
    score is computed from exactly what ran, int8 rounding included. The kinds ``autoencoder``
    and ``lstm-ae`` reconstruct the whole window; a ``forecast`` model (``model.target_rows``
    = h) outputs ``[B, 1, h, C]``, compared with the input's last h rows only (copied into a
    buffer of its own with one vectorized copy per batch: the kernel takes contiguous arrays).
    """

    def __init__(self, model, max_batch: int, variant=None):
        v = variant or (model.variants["dynamic"] if "dynamic" in model.variants else next(iter(model.variants.values())))
        self.in_scale, self.in_zp = float(v.input.scale), int(v.input.zero_point)
        self.out_scale, self.out_zp = float(v.output.scale), int(v.output.zero_point)
        self.ch_err = np.zeros((max_batch, model.n_channels), dtype=np.float32)
        self.scores = np.zeros(max_batch, dtype=np.float32)
        self._tail_err = self._tail_scores = None  # tail_error's, made on its first call
        self.window = int(model.window)
        self.target_rows = getattr(model, "target_rows", None)
        self._target = None
        if self.target_rows is not None:
            self._target = np.zeros((max_batch, 1, self.target_rows, model.n_channels),
                                    dtype=np.dtype(v.input.dtype))
        self.attribution = PhasorAttribution.from_manifest(
            model.manifest, model.n_channels, model.window, f"{model.dir}/manifest.json")

    def score(self, inp: np.ndarray, out: np.ndarray, k: int):
        """Return (scores[k], ch_err[k, C]) views for the first k rows."""
        # The output may come from a smaller interpreter than the input buffer: compare rows [0, k).
        if self._target is not None:  # forecast: the window's last target_rows rows
            np.copyto(self._target[:k], inp[:k, :, self.window - self.target_rows:])
            inp = self._target
        kernels.recon_error(inp[:k], self.in_scale, self.in_zp, out[:k], self.out_scale, self.out_zp,
                            k, self.ch_err, self.scores)
        return self.scores[:k], self.ch_err[:k]

    def tail_error(self, inp: np.ndarray, out: np.ndarray, k: int, tail: int) -> np.ndarray:
        """The per-channel error over each window's newest ``tail`` rows (`score` over the
        last ``tail`` time steps only): a float32 ``[k, C]`` view, valid until the next call."""
        W = self.window
        if not 0 < tail <= (self.target_rows or W):
            raise ValueError(f"tail must be in 1..{self.target_rows or W}, got {tail}")
        if self._tail_err is None:
            self._tail_err = np.zeros_like(self.ch_err)
            self._tail_scores = np.zeros_like(self.scores)
        kernels.recon_error(np.ascontiguousarray(inp[:k, :, W - tail:]), self.in_scale, self.in_zp,
                            np.ascontiguousarray(out[:k, :, out.shape[2] - tail:]), self.out_scale,
                            self.out_zp, k, self._tail_err, self._tail_scores)
        return self._tail_err[:k]

    def windows(self, inp: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """The dequantized input windows of rows ``idx``: float64 ``[m, W, C]`` (what the
        model saw, in normalized units)."""
        x = inp[idx].reshape(len(idx), self.window, -1).astype(np.float64)
        x -= self.in_zp
        x *= self.in_scale
        return x

    def shares(self, inp: np.ndarray, ch_err: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Each channel's share of the attribution of rows ``idx`` (rows sum to 1).

        Args:
          inp: the batch's input tensor (``[B, 1, W, C]``, int8/uint8).
          ch_err: the batch's per-channel errors ``[k, C]`` (`score`).
          idx: rows to explain (the flagged ones).
        Returns float32 ``[len(idx), C]``: `PhasorAttribution.shares` when the manifest has
        an ``attribution`` field, else `channel_shares` of the reconstruction error.
        """
        raw = channel_shares(ch_err[idx])
        if self.attribution is None or len(idx) == 0:
            return raw
        att = self.attribution
        if kernels.phasor_shares is not None:  # the same arithmetic in one compiled pass
            out = np.empty(raw.shape, np.float32)
            return kernels.phasor_shares(inp, np.asarray(idx, np.int64), self.in_zp, self.in_scale, att.basis,
                                         att.normal, att.spread, att.turn, raw, out)
        return att.shares(self.windows(inp, idx), raw)


def channel_shares(ch_err: np.ndarray) -> np.ndarray:
    """Each channel's share of a window's reconstruction error (rows sum to 1)."""
    total = ch_err.sum(axis=-1, keepdims=True)
    return np.divide(ch_err, total, out=np.zeros_like(ch_err), where=total > 0)


# --- attribution: departure of each channel's fundamental from its own normal ----------------

def phasor_basis(window: int, f0_hz: float, sample_rate_hz: float) -> np.ndarray:
    """Rows that turn a window into its fundamental: ``basis @ x`` gives the least-squares
    ``a, b`` of ``x(t) ~ a cos(wt) + b sin(wt) + c`` (the constant ``c`` absorbs the window's
    mean, so an offset or an adapted normalization does not move the phasor ``a - jb``).

    Returns float64 ``[2, window]``."""
    t = np.arange(int(window), dtype=np.float64)
    w = 2.0 * math.pi * float(f0_hz) / float(sample_rate_hz)
    design = np.stack([np.cos(w * t), np.sin(w * t), np.ones_like(t)], axis=1)
    return np.linalg.pinv(design)[:2]


def phasors(x: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Fundamental phasor of every window and channel: complex128 ``[m, C]`` from
    ``x`` ``[m, W, C]`` (each window's own time origin)."""
    ab = np.matmul(basis, np.asarray(x, dtype=np.float64))  # [m, 2, C]
    return ab[:, 0, :] - 1j * ab[:, 1, :]


def _align(p: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """``p`` ``[m, C]`` rotated per window onto ``normal``'s phase frame: by the mean angle of
    ``p_c / normal_c`` over the channels, each channel relative to its own normal (so no
    channel's scale weighs more); the windows' start times cancel."""
    r = (p / normal).sum(axis=1)
    mag = np.abs(r)
    rot = np.divide(np.conj(r), mag, out=np.ones_like(r), where=mag > 0)
    return p * rot[:, None]


def normal_phasors(p: np.ndarray, iters: int = 10) -> np.ndarray:
    """The normal phasor of each channel: the mean of the windows' phasors ``p`` ``[n, C]``
    after each window is aligned onto it (start: the dominant eigenvector of ``sum p p^H``);
    channel 0 (or the largest) at angle 0. Returns complex128 ``[C]``."""
    _, vec = np.linalg.eigh(p.T @ np.conj(p))
    normal = vec[:, -1]
    for _ in range(iters):
        normal = _align(p, normal).mean(axis=0)
    ref = normal[0] if abs(normal[0]) > 0 else normal[np.argmax(np.abs(normal))]
    return normal * np.conj(ref) / abs(ref)


def fit_fault_angle(dep: np.ndarray, faulty: np.ndarray) -> tuple[int, float, list]:
    """The direction (degrees) along which the faulty channel's departure is largest.

    Args:
      dep: departures ``[m, C]`` (complex, `PhasorAttribution.departure`) of windows with a
        known faulty channel.
      faulty: that channel's index per window ``[m]``.
    Returns (angle 0..359, balanced hit rate: mean over faulty channels of the share of their
    windows whose top channel is right, hit rate per channel (None where no window)). Ties:
    the middle of the longest run of best angles.
    """
    dep = np.asarray(dep)
    faulty = np.asarray(faulty, dtype=np.int64)
    C = dep.shape[1]
    present = [c for c in range(C) if (faulty == c).any()]
    if not present:
        raise ValueError("fit_fault_angle: no windows with a faulty channel")
    acc = np.zeros((C, 360))
    rad = np.radians(np.arange(360))
    for a0 in range(0, 360, 45):  # angles in chunks: [m, 45, C] at a time
        ang = rad[a0:a0 + 45]
        sc = (dep.real[:, None, :] * np.cos(ang)[None, :, None]
              + dep.imag[:, None, :] * np.sin(ang)[None, :, None])
        hit = sc.argmax(axis=2) == faulty[:, None]
        for c in present:
            acc[c, a0:a0 + 45] = hit[faulty == c].mean(axis=0)
    bal = acc[present].mean(axis=0)
    on = bal >= bal.max() - 1e-12
    if on.all():
        best = 0
    else:  # roll a miss to the front, then take the middle of the longest run of hits
        k = int(np.flatnonzero(~on)[0])
        edges = np.diff(np.r_[0, np.roll(on, -k).astype(np.int8), 0])
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        j = int(np.argmax(ends - starts))
        best = int((k + (starts[j] + ends[j] - 1) // 2) % 360)
    return best, float(bal[best]), [float(acc[c, best]) if c in present else None for c in range(C)]


def attribution_field(normal_windows: np.ndarray, sample_rate_hz: float, f0_hz: float,
                      fault_windows: np.ndarray | None = None, faulty: np.ndarray | None = None,
                      min_fundamental: float = 0.5) -> dict:
    """The manifest's ``attribution`` field from normal windows (and, for the fault angle,
    windows whose faulty channel is known).

    Args:
      normal_windows: float ``[n, W, C]`` normal windows, normalized as the model's input.
      sample_rate_hz, f0_hz: the sampling rate and the fundamental (`dominant_frequency`).
      fault_windows, faulty: ``[m, W, C]`` windows (same normalization) and their faulty
        channel ``[m]``; without them the fault angle is 0 (the channel whose fundamental
        grew most, relative to its normal, is named).
      min_fundamental: least share of each channel's normal variance the fundamental must
        carry (otherwise a phasor says little about the channel: ValueError).
    Returns {"method", "f0_hz", "normal_phasor" ([re, im] per channel), "normal_spread",
    "fault_angle_deg", "normal_windows", "fault_fit"}.
    """
    x = np.asarray(normal_windows, dtype=np.float64)
    if x.ndim != 3 or len(x) < 2:
        raise ValueError(f"normal windows: need [n >= 2, W, C], got shape {x.shape}")
    W = x.shape[1]
    if not (0 < f0_hz < sample_rate_hz / 2) or f0_hz * W < sample_rate_hz:
        raise ValueError(f"f0 {f0_hz} Hz: needs 0 < f0 < {sample_rate_hz / 2:g} Hz and at least "
                         f"one cycle per window of {W} samples at {sample_rate_hz:g} Hz")
    basis = phasor_basis(W, f0_hz, sample_rate_hz)
    p = phasors(x, basis)
    share = (np.abs(p) ** 2 / 2).mean(axis=0) / np.maximum(x.var(axis=1).mean(axis=0), 1e-30)
    if (share < min_fundamental).any():
        c = int(np.argmin(share))
        raise ValueError(f"channel {c}: the {f0_hz:g} Hz fundamental carries {share[c]:.2f} of its "
                         f"normal variance (< {min_fundamental}); no phasor attribution")
    normal = normal_phasors(p)
    dev = (_align(p, normal) - normal) / normal
    spread = np.maximum(np.sqrt((np.abs(dev) ** 2).mean(axis=0)), 1e-9)
    field = {"method": "phasor", "f0_hz": round(float(f0_hz), 4),
             "normal_phasor": [[round(float(v.real), 7) + 0.0, round(float(v.imag), 7) + 0.0]
                               for v in normal],  # + 0.0: no -0.0 in the JSON
             "normal_spread": [round(float(v), 7) for v in spread],
             "fault_angle_deg": 0, "normal_windows": int(len(x)), "fault_fit": None}
    if fault_windows is not None and len(fault_windows):
        att = PhasorAttribution(f0_hz, sample_rate_hz, W, normal, spread, 0.0)
        angle, bal, per = fit_fault_angle(att.departure(fault_windows), faulty)
        field["fault_angle_deg"] = angle
        field["fault_fit"] = {
            "windows": int(len(fault_windows)), "balanced_hit_rate": round(bal, 4),
            "hit_rate_per_channel": [None if v is None else round(v, 4) for v in per]}
    return field


def dominant_frequency(recordings, sample_rate_hz: float, min_hz: float = 0.0) -> float:
    """The frequency (Hz) with the most power summed over the recordings' channels (mean
    removed; parabolic interpolation between FFT bins). ``recordings``: arrays ``[n, C]``."""
    n = max(len(r) for r in recordings)
    nfft = 1 << max(int(math.ceil(math.log2(max(n, 2)))) + 2, 4)
    power = np.zeros(nfft // 2 + 1)
    for r in recordings:
        r = np.asarray(r, dtype=np.float64)
        power += (np.abs(np.fft.rfft(r - r.mean(axis=0), n=nfft, axis=0)) ** 2).sum(axis=1)
    freqs = np.fft.rfftfreq(nfft, 1.0 / sample_rate_hz)
    power[freqs <= min_hz] = 0
    power[0] = 0
    i = int(np.argmax(power))
    if 0 < i < len(power) - 1:
        a, b, c = np.log(power[i - 1:i + 2] + 1e-300)
        den = a - 2 * b + c
        off = 0.5 * (a - c) / den if den != 0 else 0.0
        return float((i + off) * sample_rate_hz / nfft)
    return float(freqs[i])


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class PhasorAttribution:
    """Names the channel whose fundamental departs from its own normal, along the fault
    direction.

    Per window: the phasor ``P_c`` of each channel's fundamental (`phasor_basis`), the window
    rotated so its phasors best match the normal ones ``N_c`` (the start time cancels), the
    relative departure ``d_c = (P_c - N_c) / N_c / s_c`` (``s_c``: the RMS of ``|d_c|`` on
    normal windows, so a channel that naturally varies more does not dominate; dividing by
    ``N_c`` makes it independent of the channel's scale), and the score ``Re(d_c e^{-j theta})``.
    ``theta = 0`` names the channel whose amplitude grew most relative to its normal. On the
    ITSC motor a shorted turn in phase X moves two line currents, X and the next phase, by
    about the same amount: X's current leads its normal phasor and the next one's lags, so the
    angle that tells them apart (fitted on labelled faults, `fit_fault_angle`) is 83 degrees
    for the shipped motor-ae.
    """

    def __init__(self, f0_hz: float, sample_rate_hz: float, window: int, normal, spread,
                 fault_angle_deg: float):
        self.f0_hz, self.fault_angle_deg = float(f0_hz), float(fault_angle_deg)
        self.basis = phasor_basis(window, f0_hz, sample_rate_hz)
        self.normal = np.asarray(normal, dtype=np.complex128)
        self.spread = np.asarray(spread, dtype=np.float64)
        self.turn = np.exp(-1j * math.radians(self.fault_angle_deg))

    @classmethod
    def from_manifest(cls, manifest: dict, n_channels: int, window: int,
                      where: str) -> "PhasorAttribution | None":
        """The manifest's ``attribution`` field checked and parsed, or None when absent.
        Raises ModelError naming ``where`` and the field at fault."""
        a = manifest.get("attribution")
        if a is None:
            return None
        w = f"{where}: field 'attribution"
        if not isinstance(a, dict):
            raise ModelError(f"{w}' must be a map")
        if a.get("method") != "phasor":
            raise ModelError(f"{w}.method' must be 'phasor', got {a.get('method')!r}")
        fs = manifest.get("sample_rate_hz")
        if not _finite(fs) or fs <= 0:
            raise ModelError(f"{where}: field 'sample_rate_hz' must be a positive number for "
                             f"attribution.method 'phasor', got {fs!r}")
        f0 = a.get("f0_hz")
        if not _finite(f0) or not 0 < f0 < fs / 2 or f0 * window < fs:
            raise ModelError(f"{w}.f0_hz' must be in (0, {fs / 2:g}) Hz with at least one cycle "
                             f"per window of {window} samples, got {f0!r}")
        pairs = a.get("normal_phasor")
        if (not isinstance(pairs, list) or len(pairs) != n_channels
                or not all(isinstance(q, list) and len(q) == 2 and all(_finite(v) for v in q)
                           for q in pairs)):
            raise ModelError(f"{w}.normal_phasor' must be {n_channels} [re, im] pairs of numbers")
        normal = np.array([complex(q[0], q[1]) for q in pairs])
        if not (np.abs(normal) > 0).all():
            raise ModelError(f"{w}.normal_phasor' has a zero phasor (channel "
                             f"{int(np.argmin(np.abs(normal)))})")
        spread = a.get("normal_spread")
        if (not isinstance(spread, list) or len(spread) != n_channels
                or not all(_finite(v) and v > 0 for v in spread)):
            raise ModelError(f"{w}.normal_spread' must be {n_channels} positive numbers")
        angle = a.get("fault_angle_deg")
        if not _finite(angle):
            raise ModelError(f"{w}.fault_angle_deg' must be a number, got {angle!r}")
        return cls(f0, fs, window, normal, spread, angle)

    def departure(self, x: np.ndarray) -> np.ndarray:
        """Relative departure of each channel's fundamental from its normal, in units of its
        normal spread: complex128 ``[m, C]`` from windows ``x`` ``[m, W, C]``."""
        p = _align(phasors(x, self.basis), self.normal)
        return (p - self.normal) / self.normal / self.spread

    def scores(self, x: np.ndarray) -> np.ndarray:
        """``Re(departure * e^{-j theta})``: float64 ``[m, C]``, largest for the channel named."""
        return (self.departure(x) * self.turn).real

    def shares(self, x: np.ndarray, fallback: np.ndarray) -> np.ndarray:
        """Each channel's share of the positive scores (rows sum to 1); a window where no
        channel scores above 0 gets its row of ``fallback``. Returns float32 ``[m, C]``."""
        pos = np.maximum(self.scores(x), 0.0)
        tot = pos.sum(axis=1, keepdims=True)
        out = np.divide(pos, tot, out=np.zeros_like(pos), where=tot > 0)
        return np.where(tot > 0, out, fallback).astype(np.float32)


class ClassScorer:
    """Classifier output → (class index, probability) per window.

    The int8 output rows are dequantized; a model whose manifest says ``"output": "logits"``
    (or whose dequantized rows are not probabilities) gets a softmax.
    """

    def __init__(self, model, max_batch: int, variant=None):
        v = variant or (model.variants["dynamic"] if "dynamic" in model.variants else next(iter(model.variants.values())))
        self.scale, self.zp = float(v.output.scale), int(v.output.zero_point)
        self.logits = model.manifest.get("output") == "logits"
        self.names = list(model.class_names)
        self.n = len(self.names)

    def classify(self, out: np.ndarray, k: int):
        """Return (class index int64[k], probability float32[k])."""
        x = (out[:k].reshape(k, -1)[:, :self.n].astype(np.float32) - self.zp) * self.scale
        if self.logits or not (x.min() >= -1e-3 and np.allclose(x.sum(axis=1), 1.0, atol=0.05)):
            x = np.exp(x - x.max(axis=1, keepdims=True))
            x /= x.sum(axis=1, keepdims=True)
        idx = x.argmax(axis=1)
        return idx, x[np.arange(k), idx]
