"""Safe normalization adaptation (edgert/adapt.py).

Unit tests drive `SafeNormalization` with synthetic window statistics; daemon tests push a real
ITSC healthy recording (tiled: it holds exactly 60 cycles of 60 Hz, so tiles join seamlessly)
through the daemon's real path (wire decode, rings, kernels, LiteRT, thresholds) with a shift,
a ramp or a fault from second 20 of sensor time, and read each second's alarm rate.
"""

import time

import numpy as np
import pytest
import zmq

from edgert import config, wire
from edgert.adapt import SafeNormalization
from edgert.daemon import Daemon
from edgert.data import itsc_recording
from test_daemon import Running

SEC = 10**9
MEAN, STD = np.array([0.0, 0.0, 0.0]), np.array([2.0, 2.0, 2.0])


def feed(a, t_from, seconds, m, sd, flag, per_s=64, sensor=0):
    """Windows of one sensor, `per_s` per second of sensor time, all with stats (m, sd)."""
    events = []
    for sec in range(seconds):
        t = t_from + sec * SEC + np.arange(per_s, dtype=np.int64) * (SEC // per_s)
        fl = np.asarray(flag(sec) if callable(flag) else flag)
        events += a.learn(np.full(per_s, sensor), np.tile(m(sec) if callable(m) else m, (per_s, 1)),
                          np.tile(sd(sec) if callable(sd) else sd, (per_s, 1)), np.full(per_s, fl), t)
    return events


def test_common_shift_goes_on_probation_then_is_accepted():
    a = SafeNormalization(MEAN, STD, max_sensors=4, hold_s=10, probation_s=3)
    ref_m, ref_s = np.array([0.1, -0.1, 0.0]), np.array([1.4, 1.4, 1.5])
    assert feed(a, 0, 5, ref_m, ref_s, False) == []
    row_mean, row_inv = a.mean[0], a.inv_std[0]  # what a stream holds
    new_m, new_s = ref_m + np.array([1.0, 0.0, -0.5]), ref_s * 1.3
    ev = feed(a, 5 * SEC, 13, new_m, new_s, True)
    assert [e["state"] for e in ev] == ["probation"]
    assert ev[0]["gain"] == pytest.approx(1.3, rel=1e-6)
    assert ev[0]["offset"] == pytest.approx([1.0, 0.0, -0.5], abs=1e-6)
    # The stream's views now normalize the new regime like the old one.
    assert row_mean == pytest.approx(MEAN + np.array([1.0, 0.0, -0.5]))
    assert row_inv == pytest.approx(1 / (1.3 * STD))
    ev = feed(a, 18 * SEC, 4, new_m, new_s, False)  # the model agrees: normal under probation
    assert [e["state"] for e in ev] == ["accepted"] and a.accepted == 1


def test_probation_failure_reverts():
    a = SafeNormalization(MEAN, STD, max_sensors=2, hold_s=5, probation_s=2)
    ref_m, ref_s = np.zeros(3), np.ones(3)
    feed(a, 0, 3, ref_m, ref_s, False)
    ev = feed(a, 3 * SEC, 7, ref_m + 1.0, ref_s, True)
    assert ev[-1]["state"] == "probation"
    ev = feed(a, 10 * SEC, 3, ref_m + 1.0, ref_s, True)  # still anomalous: shape, not level
    assert ev[-1]["state"] == "refused" and "still" in ev[-1]["reason"]
    assert a.mean[0] == pytest.approx(MEAN) and a.inv_std[0] == pytest.approx(1 / STD)
    assert a.accepted == 0


def test_imbalance_between_channels_is_refused():
    a = SafeNormalization(MEAN, STD, max_sensors=2, hold_s=5)
    feed(a, 0, 3, np.zeros(3), np.ones(3), False)
    ev = feed(a, 3 * SEC, 8, np.zeros(3), np.array([1.3, 1.0, 1.0]), True)
    assert ev and all(e["state"] == "refused" and "imbalance" in e["reason"] for e in ev)
    assert a.mean[0] == pytest.approx(MEAN) and a.inv_std[0] == pytest.approx(1 / STD)


def test_ramp_is_never_stationary():
    a = SafeNormalization(MEAN, STD, max_sensors=2, hold_s=5)
    feed(a, 0, 3, np.zeros(3), np.ones(3), False)
    # 0.05 std / s: 0.25 std per hold, beyond the 0.1 std stationarity tolerance
    ev = feed(a, 3 * SEC, 60, lambda s: np.full(3, 0.1 * s), np.ones(3), True)
    assert ev == [] and a.state[0] == 1  # sustained, never tried
    assert a.mean[0] == pytest.approx(MEAN)


def test_a_staircase_moves_at_most_once_per_cooldown():
    a = SafeNormalization(MEAN, STD, max_sensors=2, hold_s=5, probation_s=1, cooldown_s=100)
    feed(a, 0, 3, np.zeros(3), np.ones(3), False)
    # Steps of 0.4 std every 12 s, each flagged until accepted: only the first is taken.
    level = lambda s: np.full(3, 0.8 * (1 + s // 12))
    ev = feed(a, 3 * SEC, 60, level, np.ones(3), lambda s: abs(level(s)[0] - a.mean[0, 0]) > 0.1)
    assert [e["state"] for e in ev] == ["probation", "accepted"]
    assert a.offset[0] == pytest.approx(np.full(3, 0.8))


def test_shift_beyond_budget_is_refused():
    a = SafeNormalization(MEAN, STD, max_sensors=2, hold_s=5, max_offset=3.0, max_gain=2.0)
    feed(a, 0, 3, np.zeros(3), np.ones(3), False)
    ev = feed(a, 3 * SEC, 7, np.full(3, 7.0), np.ones(3), True)  # 3.5 std
    assert ev[-1]["state"] == "refused" and "offset" in ev[-1]["reason"]
    b = SafeNormalization(MEAN, STD, max_sensors=2, hold_s=5, max_gain=2.0)
    feed(b, 0, 3, np.zeros(3), np.ones(3), False)
    ev = feed(b, 3 * SEC, 7, np.zeros(3), np.full(3, 2.5), True)
    assert ev[-1]["state"] == "refused" and "gain" in ev[-1]["reason"]


def test_tracking_from_normal_windows_is_rate_and_budget_bounded():
    a = SafeNormalization(MEAN, STD, max_sensors=2, track_step=0.002, track_budget=0.05)
    feed(a, 0, 2, np.zeros(3), np.ones(3), False)
    # Normal windows that say "the level is 1 std higher": a slow poisoning attempt.
    feed(a, 2 * SEC, 10, np.full(3, 2.0), np.ones(3), False)
    # At most step × std per segment (segments close at batch granularity: 5-10 in 10 s here).
    assert np.all(a.offset[0] <= 10 * 0.002 * 2.0 + 1e-12) and np.all(a.offset[0] >= 4 * 0.002 * 2.0)
    feed(a, 12 * SEC, 200, np.full(3, 2.0), np.ones(3), False)
    assert a.offset[0] == pytest.approx(np.full(3, 0.05 * 2.0))  # never past the budget
    assert a.gain[0] == pytest.approx(1.0)


def test_reset_refills_the_views_streams_hold():
    a = SafeNormalization(MEAN, STD, max_sensors=2, hold_s=5)
    view = a.mean[1]
    a._apply(1, 1.5, np.ones(3))
    a.reset(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 1.0]))
    assert view == pytest.approx([1.0, 2.0, 3.0]) and a.inv_std[1] == pytest.approx(1.0)


def test_gain_scales_about_the_level_not_about_zero():
    # A channel far from zero (60 °C, std 2): a 20 % wider spread must not move its level.
    a = SafeNormalization(np.array([60.0]), np.array([2.0]), max_sensors=1, hold_s=5, probation_s=1)
    feed(a, 0, 3, np.array([60.0]), np.array([1.5]), False)
    # flagged until the candidate is applied (then the model finds the windows normal)
    ev = feed(a, 3 * SEC, 12, np.array([60.0]), np.array([1.8]), lambda sec: a.state[0] != 2)
    assert [e["state"] for e in ev] == ["probation", "accepted"]
    g = ev[-1]["gain"]
    assert 1.15 < g < 1.21  # 1.2, less the segment that straddles the change
    assert a.mean[0] == pytest.approx([60.0]) and a.inv_std[0] == pytest.approx([1 / (a.gain[0] * 2.0)])
    # Tracking's gain budget likewise leaves the level alone.
    b = SafeNormalization(np.array([60.0]), np.array([2.0]), max_sensors=1)
    feed(b, 0, 3, np.array([60.0]), np.array([1.5]), False)
    feed(b, 3 * SEC, 100, np.array([60.0]), np.array([1.6]), False)
    assert b.gain[0] > 1.02 and b.mean[0] == pytest.approx([60.0])


def test_constant_channel_normalizes_to_zero():
    a = SafeNormalization(np.zeros(2), np.array([1.0, 0.0]), max_sensors=1)
    assert a.inv_std[0] == pytest.approx([1.0, 0.0])
    a._apply(0, 2.0, np.zeros(2))
    assert a.inv_std[0] == pytest.approx([0.5, 0.0])


# -- the daemon, real model ---------------------------------------------------------------

BASE = None


def alarm_rates(scenario, seconds=60, inspect=None, **cfg):
    """Per second of sensor time, the fraction of one sensor's windows flagged; and the
    daemon's adapt events. ``inspect(daemon)`` is called before it closes."""
    global BASE
    if BASE is None:
        BASE = itsc_recording("SC_HLT_002").astype(np.float32)
    c = config.load(None, listen="inproc://adapt-in", events="inproc://adapt-ev", drift_interval_s=0,
                    watch_model_s=0, max_clock_skew_s=0.0, **cfg)  # sensor time runs ahead of ours
    ctx = zmq.Context()
    d = Daemon(c, ctx=ctx)
    d.bind()
    d.started_ns = time.perf_counter_ns()
    events = []
    publish = d.events.publish
    d.events.publish = lambda kind, sensor, ev: (events.append(ev) if kind == "adapt" else None,
                                                  publish(kind, sensor, ev))
    t, seq, rates = 10**18, 0, []
    try:
        for sec in range(seconds):
            x = np.ascontiguousarray(scenario(BASE, sec), dtype=np.float32)
            a0, w0 = (d.anom_counts[0], d.win_counts[0]) if d.names else (0, 0)
            for i in range(0, 1000, 100):
                part = x[i:i + 100]
                d.handle([b"motor", wire.encode_header(seq, t, 1_000_000, part), part.tobytes()],
                         time.perf_counter_ns())
                seq, t = seq + 1, t + 100 * 1_000_000
            d.batcher.flush()
            rates.append((d.anom_counts[0] - a0) / max(1, d.win_counts[0] - w0))
        if inspect is not None:
            inspect(d)
    finally:
        d.sock.close(linger=0)
        d.events.close()
        ctx.destroy(linger=0)
    return np.array(rates), events


OFFSET = np.array([1.0, -0.5, 0.3], dtype=np.float32)  # a re-zeroed sensor: 0.5 / 0.25 / 0.15 std


def benign_offset(x, sec):
    return x + OFFSET if sec >= 20 else x


@pytest.mark.parametrize("threshold", ["fixed", "spot"])
def test_daemon_benign_level_shift_stops_alarming_within_hold_plus_two_seconds(threshold):
    hold = 10.0
    rates, events = alarm_rates(benign_offset, adapt="safe", adapt_hold_s=hold, threshold=threshold)
    assert rates[:20].max() < 0.1  # healthy
    assert rates[20:25].min() > 0.9  # the shift alarms at first
    quiet = 20 + hold + 2  # the stated time: hold_s + 2 segments of 1 s
    assert rates[int(quiet):].max() < 0.05, rates
    states = [e["state"] for e in events]
    assert states == ["probation", "accepted"], events
    assert events[1]["offset"] == pytest.approx(OFFSET, abs=0.05)


def test_daemon_without_adaptation_keeps_alarming_on_the_shift():
    rates, events = alarm_rates(benign_offset, seconds=45, adapt="off")
    assert rates[20:].min() > 0.9 and events == []


RAMPS = {
    # wear or a poisoning attempt: level creeps up 0.015 std per second, no end in sight
    "offset": lambda x, sec: x + np.float32(0.03 * max(0, sec - 20)),
    # one phase's current grows 0.5 % per second: a developing winding fault
    "phase_a": lambda x, sec: x * np.array([1 + 0.005 * max(0, sec - 20), 1, 1], dtype=np.float32),
}


@pytest.mark.parametrize("ramp", sorted(RAMPS))
@pytest.mark.parametrize("threshold", ["fixed", "spot"])
def test_daemon_slow_ramp_is_still_flagged(ramp, threshold):
    rates, events = alarm_rates(RAMPS[ramp], seconds=90, adapt="safe", adapt_hold_s=10.0, threshold=threshold)
    onset = int(np.argmax(rates > 0.5))
    assert 20 < onset < 60, rates
    assert rates[onset + 2:].min() > 0.9, rates  # flagged from then on, to the end
    assert not [e for e in events if e["state"] in ("probation", "accepted")], events


def test_daemon_sustained_real_fault_is_not_learned():
    fault = itsc_recording("SC_A3_B0_C0_001").astype(np.float32)
    rates, events = alarm_rates(lambda x, sec: fault if sec >= 20 else x, seconds=70,
                                adapt="safe", adapt_hold_s=10.0)
    assert rates[20:].min() > 0.9
    assert events and all(e["state"] == "refused" for e in events)


def test_adapt_event_on_the_bus(tmp_path):
    r = Running(tmp_path, "ipc", "sub", adapt="safe", adapt_hold_s=3.0, adapt_probation_s=1.0,
                drift_interval_s=0, watch_model_s=0)
    try:
        pub = r.publisher("m7")
        assert pub.wait_subscribed(5)
        x = np.tile(itsc_recording("SC_HLT_002").astype(np.float32), (12, 1))
        x[4000:] += OFFSET
        t = 10**18
        for seq, i in enumerate(range(0, x.shape[0], 250)):
            pub.send(x[i:i + 250], t + i * 1_000_000, 1_000_000, seq=seq)
        pub.close()
        assert r.wait_windows(700)
        r.collect(0.5)
    finally:
        final = r.close()
    adapt = [(s, p) for k, s, p in r.events if k == "adapt"]
    assert [p["state"] for s, p in adapt] == ["probation", "accepted"], adapt
    assert all(s == "m7" and p["sensor"] == "m7" for s, p in adapt)
    assert final["adaptations"] == {"accepted": 1, "refused": 0}


def test_reservoir_keeps_normal_windows_of_the_accepted_operating_point(tmp_path):
    """The reservoir re-quantizes each sampled window to prove it is the one scored: with
    adaptation it must use the sensor's normalization, or every adapted window is 'stale'."""
    seen = {}

    def inspect(d):
        seen.update(count=d.reservoir.count, stale=d.reservoir.stale,
                    t=np.array(d.reservoir.rec["t_start"][:d.reservoir.count]))
        d.reservoir.close()

    rates, events = alarm_rates(benign_offset, seconds=45, inspect=inspect, adapt="safe",
                                adapt_hold_s=10.0, reservoir_dir=str(tmp_path), reservoir_rate=1.0)
    assert [e["state"] for e in events] == ["probation", "accepted"]
    after = (seen["t"] - 10**18) >= 33 * 10**9  # windows of the new operating point, accepted
    assert seen["stale"] == 0 and after.sum() > 500, seen
