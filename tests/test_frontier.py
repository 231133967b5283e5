"""The size frontier (issue 15): ``edgert bench --only frontier`` (bench/frontier.py) and
``edgert train --filters``."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys

import pytest

from edgert import models
from edgert.bench import frontier
from edgert.train.cli import add_arguments, canonical_command
from edgert.train.config import parse_filters

try:
    from edgert import tflite

    tflite.find()
    HAVE_RUNTIME = True
except ImportError:
    HAVE_RUNTIME = False

needs_runtime = pytest.mark.skipif(not HAVE_RUNTIME, reason="no TFLite runtime (pip install ai-edge-litert)")


def test_op_macs_rules():
    """Each op's rule on shapes counted by hand."""
    # CONV_2D: out [1, 1, 32, 16], weights [16, 1, 5, 3] -> 32*16 outputs x 5*3 taps
    assert frontier.op_macs("CONV_2D", [(1, 1, 64, 3), (16, 1, 5, 3), (16,)], (1, 1, 32, 16)) == 7680
    # DEPTHWISE: out [1, 1, 8, 4], weights [1, 1, 3, 4] -> 32 outputs x 3 taps
    assert frontier.op_macs("DEPTHWISE_CONV_2D", [(1, 1, 8, 4), (1, 1, 3, 4), (4,)], (1, 1, 8, 4)) == 96
    # TRANSPOSE_CONV: input [1, 1, 8, 16] scattered through weights [16, 1, 5, 16] -> 128 x 80
    assert frontier.op_macs("TRANSPOSE_CONV", [(4,), (16, 1, 5, 16), (1, 1, 8, 16), None],
                            (1, 1, 16, 16)) == 10240
    # FULLY_CONNECTED: out [2, 5], weights [5, 48] -> 10 outputs x 48
    assert frontier.op_macs("FULLY_CONNECTED", [(2, 48), (5, 48), (5,)], (2, 5)) == 480
    with pytest.raises(ValueError, match="RESHAPE"):
        frontier.op_macs("RESHAPE", [(1, 4)], (4,))
    with pytest.raises(ValueError, match="rank"):
        frontier.op_macs("CONV_2D", [(1, 64, 3), (16, 5, 3)], (1, 32, 16))


@needs_runtime
def test_macs_of_the_shipped_autoencoder_by_hand():
    """motor-ae (filters 16,16,16, W 64, C 3), counted by hand from its manifest's architecture.

    b1 (TRANSPOSE_CONV decoder): enc 32*16*15 + 16*16*80 + 8*16*80 = 38,400; code 3*8*16 = 384;
    dec_expand 1*3 inputs * 8 * 16 = 384; dec0/1/2 8/16/32 * 16 inputs * 5 * 16 = 10,240 +
    20,480 + 40,960; recon 64*3 * 3*16 = 9,216 -> 120,064.
    dynamic (sub-pixel decoder): the expand as a 1x1 conv to 128 = 384; dec0/1/2 as k=3 convs to
    32 channels: 8/16/32 * 32 * 48 = 12,288 + 24,576 + 49,152 -> 134,400.
    """
    m = models.load("motor-ae")
    b1 = frontier.count_macs(m.variants["b1"].path)
    dyn = frontier.count_macs(m.variants["dynamic"].path)
    assert b1["macs_per_window"] == 38400 + 384 + 384 + 10240 + 20480 + 40960 + 9216 == 120064
    assert dyn["macs_per_window"] == 38400 + 384 + 384 + 12288 + 24576 + 49152 + 9216 == 134400
    assert [o["op"] for o in b1["ops"]].count("TRANSPOSE_CONV") == 4
    assert b1["weights"] == m.manifest["training"]["params"] == 7606  # the graph has every weight
    packed = m.variants["packed"]
    assert frontier.count_macs(packed.path)["macs_per_window"] == 120064  # per row of [1, B, W, C]


def _tiny_tflite(tmp_path):
    """A tiny int8 model with one op of each counted kind (needs TensorFlow)."""
    tf = pytest.importorskip("tensorflow", reason="building the tiny model needs TensorFlow (edgert[train])")
    import numpy as np

    inp = tf.keras.Input((1, 16, 2), batch_size=1)
    x = tf.keras.layers.Conv2D(4, (1, 3), strides=(1, 2), padding="same", activation="relu")(inp)
    x = tf.keras.layers.DepthwiseConv2D((1, 3), padding="same")(x)
    x = tf.keras.layers.Conv2DTranspose(3, (1, 3), strides=(1, 2), padding="same")(x)
    x = tf.keras.layers.Flatten()(x)
    out = tf.keras.layers.Dense(5)(x)
    km = tf.keras.Model(inp, out)
    conv = tf.lite.TFLiteConverter.from_keras_model(km)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    rng = np.random.default_rng(0)
    conv.representative_dataset = lambda: ([rng.normal(size=(1, 1, 16, 2)).astype("float32")] for _ in range(8))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    path = tmp_path / "tiny.tflite"
    path.write_bytes(conv.convert())
    return path


@needs_runtime
def test_macs_of_a_tiny_int8_model_by_hand(tmp_path):
    """conv 8 out x 4 ch x 3 taps x 2 in = 192; depthwise 8 x 4 x 3 = 96; transpose 8 x 4 in x 3
    taps x 3 out = 288; dense 5 x 48 = 240 -> 816."""
    r = frontier.count_macs(_tiny_tflite(tmp_path))
    by_op = {o["op"]: o["macs"] for o in r["ops"]}
    assert by_op == {"CONV_2D": 192, "DEPTHWISE_CONV_2D": 96, "TRANSPOSE_CONV": 288, "FULLY_CONNECTED": 240}
    assert r["macs_per_window"] == 816 and r["windows_per_invoke"] == 1


def test_count_macs_names_an_unreadable_file(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    if not HAVE_RUNTIME:
        pytest.skip("no TFLite runtime")
    with pytest.raises(ValueError, match="bad.tflite"):
        frontier.count_macs(bad)


@needs_runtime
def test_section_smoke_on_the_shipped_models(tmp_path):
    """Seconds: both shipped models and a copy of motor-ae, timed in interleaved rounds; the
    copy's ratio is against the shipped motor-ae measured in the same run."""
    copy = tmp_path / "ae-copy"
    shutil.copytree(models.resolve("motor-ae"), copy)
    r = frontier.measure([str(copy), "motor-cnn"], rounds=2, target_s=0.01, batch=32)
    rows = {m["dir"]: m for m in r["models"]}
    assert len(r["models"]) == 3  # the shipped motor-ae joined as the reference
    c = rows[str(copy)]
    assert c["reference"] == "motor-ae" and c["in_list"] and c["macs_over_reference"] == 1.0
    assert c["macs_per_window"] == 134400 and c["params"] == 7606 and c["filters"] == [16, 16, 16]
    ref = next(m for m in r["models"] if m["name"] == "motor-ae" and not m["in_list"])
    assert ref["speedup_wall"] == 1.0 and ref["speedup_cpu"] == 1.0
    for m in r["models"]:
        assert len(m["us_per_window_rounds"]) == 2 and m["us_per_window"] > 0 and m["cpu_us_per_window"] > 0
        assert m["speedup_cpu"] > 0
    assert r["backend"].startswith("cpu") and r["batch"] == 32
    assert r["machine"]["cpu"] and "kind" in r["machine"]["int8"]
    assert "motor-cnn" in "\n".join(frontier.render_lines(r))
    json.dumps(r)


@needs_runtime
def test_bench_cli_frontier_quick(tmp_path):
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, "-m", "edgert", "bench", "--only", "frontier", "--quick",
                        "--no-baseline", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["errors"] == {}
    assert {m["name"] for m in res["frontier"]["models"]} == {"motor-ae", "motor-cnn"}
    assert "size frontier" in p.stdout


@pytest.mark.parametrize("make", ["missing", "broken"])
def test_bad_model_dir_is_one_line(tmp_path, make):
    d = tmp_path / "nomodel"
    if make == "broken":
        d.mkdir()
        (d / "manifest.json").write_text("{not json")
    p = subprocess.run([sys.executable, "-m", "edgert", "bench", "--only", "frontier",
                        "--frontier-models", f"motor-ae,{d}"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and str(d) in lines[0] and "Traceback" not in p.stderr, p.stderr
    with pytest.raises(ValueError, match="nomodel"):
        frontier.load_models([str(d)])


def test_train_filters_option():
    assert parse_filters("8,8,8") == (8, 8, 8) and parse_filters(" 4, 4 ,4") == (4, 4, 4)
    for bad in ("", "8,x", "0,8", "8,8,99999", ",".join(["4"] * 9)):
        with pytest.raises(ValueError, match="--filters"):
            parse_filters(bad)
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--out", "m", "--filters", "8,8,8"])
    assert canonical_command(args, 150, 5).endswith("--rows 16 --filters 8,8,8")
    assert "--filters" not in canonical_command(p.parse_args(["--out", "m"]), 150, 5)
