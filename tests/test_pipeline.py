"""edgert.Pipeline: the engine as a library, the same engine the daemon runs."""

import doctest
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import edgert
from edgert import pipeline as pl
from edgert.data import itsc_recording

FAULT, HEALTHY = "SC_A3_B0_C0_001", "SC_HLT_005"


@pytest.fixture(scope="module")
def pipe():
    p = edgert.Pipeline("motor-ae", backend="cpu")
    yield p
    p.close()


def test_module_doctest_runs():
    res = doctest.testmod(pl, verbose=False)
    assert res.attempted >= 1 and res.failed == 0


def test_score_flags_the_fault_not_the_unseen_healthy(pipe):
    f = pipe.score(itsc_recording(FAULT))
    h = pipe.score(itsc_recording(HEALTHY))
    assert len(f) == len(h) == (1000 - 64) // 16 + 1
    assert f.anomaly.mean() >= 0.9 and h.anomaly.mean() <= 0.02
    assert (f.top_channel[f.anomaly] == "ia").mean() >= 0.9  # the faulty phase (attribution)
    assert np.allclose(f.threshold, pipe.model.threshold, rtol=1e-6)  # float32 thresholds
    assert np.all(np.diff(f.t_start) == 16 * 1_000_000)


def test_push_in_blocks_gives_the_same_decisions_as_score(pipe):
    x = itsc_recording(FAULT)
    offline = pipe.score(x)
    got = []
    for seq, a in enumerate(range(0, len(x), 64)):
        got += pipe.push("m1", x[a:a + 64], a * 1_000_000, 1_000_000)
    got += pipe.flush()
    assert [d.t_start for d in got] == offline.t_start.tolist()
    assert np.allclose([d.score for d in got], offline.score, rtol=0, atol=0)
    assert [d.anomaly for d in got] == offline.anomaly.tolist()
    d = got[-1]
    assert d.sensor == "m1" and len(d.contributions) == 3 and d.top_channels[0] in pipe.model.channels


def test_a_refused_block_raises_naming_sensor_and_reason_and_is_counted(pipe):
    before = pipe.stats()["drops_by_reason"].get("channels", 0)
    with pytest.raises(ValueError, match=r"'bad\\n': block refused \(channels\)"):
        pipe.push("bad\n", np.zeros((64, 4), np.float32), 0, 1_000_000)
    assert pipe.stats()["drops_by_reason"]["channels"] == before + 1
    with pytest.raises(ValueError, match="nonfinite"):
        pipe.push("nan", np.full((64, 3), np.nan), 0, 1_000_000)


def test_events_go_to_any_sink():
    class ListSink:
        def __init__(self):
            self.events = []

        def publish(self, kind, sensor, payload):
            payload["v"] = 1
            self.events.append((kind, sensor, payload))

        def close(self):
            pass

    sink = ListSink()
    from edgert.events import EventSink

    assert isinstance(sink, EventSink)
    p = edgert.Pipeline("motor-ae", backend="cpu", sink=sink)
    try:
        p.score(itsc_recording(FAULT))
    finally:
        p.close()
    anomalies = [e for e in sink.events if e[0] == "anomaly"]
    assert len(anomalies) >= 50 and all(e[2]["v"] == 1 and e[2]["top_channels"] for e in anomalies)


def test_swap_model_checks_and_rebases(tmp_path, pipe):
    from edgert import models

    src = models.resolve("motor-ae")
    good = tmp_path / "good"
    shutil.copytree(src, good)
    m = json.loads((good / "manifest.json").read_text())
    m["threshold"] = m["threshold"] * 2
    (good / "manifest.json").write_text(json.dumps(m))
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    m["threshold"] = 1e9
    (bad / "manifest.json").write_text(json.dumps(m))
    old = pipe.model.threshold
    assert pipe.swap_model(bad) == "refused" and pipe.model.threshold == old
    assert pipe.swap_model(good) == "swapped" and pipe.model.threshold == pytest.approx(2 * old)
    assert pipe.score(itsc_recording(HEALTHY)).threshold[0] == pytest.approx(2 * old)
    assert pipe.swap_model(src) == "swapped"  # and back


def test_unknown_settings_are_refused():
    with pytest.raises(TypeError, match="max_bacth"):
        edgert.Pipeline("motor-ae", max_bacth=8)


def test_import_edgert_stays_light():
    out = subprocess.run([sys.executable, "-c", "import sys, edgert; print('numpy' in sys.modules, "
                          "'numba' in sys.modules, 'zmq' in sys.modules)"], capture_output=True, text=True)
    assert out.stdout.split() == ["False", "False", "False"], out


def test_the_daemon_is_transport_around_one_pipeline(tmp_path):
    import zmq

    from edgert import config
    from edgert.daemon import Daemon

    c = config.load(None, listen=f"ipc://{tmp_path}/s", events=f"ipc://{tmp_path}/e")
    ctx = zmq.Context()
    try:
        d = Daemon(c, ctx=ctx)
        assert isinstance(d.pipeline, edgert.Pipeline) and d.model is d.pipeline.model
        d.bind()
        assert d.pipeline.sink is d.events
        d.close()
    finally:
        ctx.destroy(linger=0)
