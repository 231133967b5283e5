"""Edge TPU compatibility: the offline checker (``edgert check-model``), the compiler-log
parser and the ``edgert compile`` flow with a fake ``edgetpu_compiler`` (the real one only
exists for x86-64 Debian/Ubuntu from Coral's apt repository).

The .tflite fixtures in tests/data/check_model/ are built by make_fixtures.py (TensorFlow);
these tests only read them. The compiler logs in tests/data/compiler_logs/ follow the
compiler's output format (see the README there).
"""

import argparse
import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgert import compiler, edgetpu_check, models
from edgert.edgetpu_check import CheckError

DATA = Path(__file__).parent / "data"
FIX = DATA / "check_model"
LOGS = DATA / "compiler_logs"


def run_cli(capsys, *argv):
    """Run a command through parsers built by the modules' add_parsers (as cli.py does)."""
    p = argparse.ArgumentParser(prog="edgert")
    sub = p.add_subparsers(dest="cmd", required=True)
    edgetpu_check.add_parsers(sub)
    compiler.add_parsers(sub)
    args = p.parse_args([str(a) for a in argv])
    rc = args.fn(args)
    out, err = capsys.readouterr()
    return rc, out, err


def check_json(capsys, path, *extra):
    rc, out, err = run_cli(capsys, "check-model", path, "--json", *extra)
    return rc, json.loads(out.strip().splitlines()[-1]), out, err


def shipped(fname):
    return models.resolve("motor-ae") / fname


# ---------------------------------------------------------------------------------------------
# check-model on the fixtures
# ---------------------------------------------------------------------------------------------

def test_fixtures_are_small():
    files = sorted(FIX.glob("*.tflite"))
    assert len(files) == 8
    assert all(f.stat().st_size <= 50_000 for f in files)


def test_mappable_model_maps_entirely(capsys):
    rc, j, out, _ = check_json(capsys, FIX / "mappable.tflite")
    assert rc == 0 and j["mappable"] is True
    assert [o["op"] for o in j["ops"]] == ["CONV_2D", "CONV_2D", "ADD", "CONCATENATION",
                                           "MAX_POOL_2D", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX"]
    assert all(o["ok"] and o["reason"] is None for o in j["ops"])
    assert j["first_unmapped"] is None and j["problems"] == []
    assert j["cpu_ops"] == 0 and j["tpu_ops"] == 8
    assert "all 8 ops map to the Edge TPU" in out


def test_json_shape(capsys):
    _, j, _, _ = check_json(capsys, FIX / "cpu_middle.tflite")
    assert {"path", "mappable", "ops", "first_unmapped", "problems"} <= set(j)
    for o in j["ops"]:
        assert {"index", "op", "version", "ok", "reason"} <= set(o) <= {"index", "op", "version",
                                                                      "ok", "reason", "notes"}
    assert {"index", "op", "version", "reason", "inputs", "outputs"} <= set(j["first_unmapped"])


def test_float32_model_fails_at_the_first_op(capsys):
    rc, j, out, _ = check_json(capsys, FIX / "float32.tflite")
    assert rc == 1 and not j["mappable"]
    f = j["first_unmapped"]
    assert (f["index"], f["op"]) == (0, "CONV_2D")
    assert "float32" in f["reason"] and "int8/uint8" in f["reason"]
    assert "serving_default_x:0" in f["inputs"]
    assert not any(o["ok"] for o in j["ops"])
    assert all("after op #0" in o["reason"] for o in j["ops"][1:])
    assert "first op on the CPU: #0 CONV_2D" in out
    assert "that op and every op after it (#0..#7) run on the CPU" in out


def test_dynamic_batch_model_fails_on_dynamic_shape_and_shape_op(capsys):
    rc, j, _, _ = check_json(capsys, FIX / "dynamic_batch.tflite")
    assert rc == 1 and not j["mappable"]
    f = j["first_unmapped"]
    assert f["index"] == 0 and "dynamic" in f["reason"] and "[-1, 1, 16, 3]" in f["reason"]
    shape_ops = [o for o in j["ops"] if o["op"] == "SHAPE"]
    assert shape_ops and all(not o["ok"] for o in shape_ops)
    assert all("SHAPE is not in the Edge TPU's supported operations" in o["reason"]
               for o in shape_ops)
    assert any("op #1 SHAPE" in p for p in j["problems"])
    # the reshape whose shape comes from SHAPE/STRIDED_SLICE/PACK is not constant
    assert any("RESHAPE" in p and "computed at run time" in p for p in j["problems"])


def test_rank4_batch2_model_fails_on_dimensions(capsys):
    rc, j, _, _ = check_json(capsys, FIX / "rank4.tflite")
    assert rc == 1
    f = j["first_unmapped"]
    assert f["index"] == 0 and "[2, 4, 8, 3]" in f["reason"]
    assert "only the 3" in f["reason"] and "innermost" in f["reason"]


def test_unsupported_op_in_the_middle_sends_the_rest_to_the_cpu(capsys):
    rc, j, out, _ = check_json(capsys, FIX / "cpu_middle.tflite")
    assert rc == 1
    ok = [o["ok"] for o in j["ops"]]
    assert ok == [True, False, False, False]
    f = j["first_unmapped"]
    assert (f["index"], f["op"]) == (1, "LEAKY_RELU")
    assert "not in the Edge TPU's supported operations" in f["reason"]
    assert f["whole_model"] is False
    for o in j["ops"][2:]:
        assert o["op"] == "CONV_2D" and "after op #1 LEAKY_RELU" in o["reason"]
    assert (j["tpu_ops"], j["cpu_ops"]) == (1, 3)
    assert "that op and every op after it (#1..#3) run on the CPU" in out


def test_transpose_conv_with_fused_relu_is_refused(capsys):
    rc, j, out, _ = check_json(capsys, FIX / "tconv_relu_v4.tflite")
    assert rc == 1 and j["compiler_refuses"] is True
    f = j["first_unmapped"]
    assert (f["op"], f["version"], f["whole_model"]) == ("TRANSPOSE_CONV", 4, True)
    assert "newer than edgetpu_compiler 16" in f["reason"]
    assert "fused activation" in f["reason"] and "ReLU in its own layer" in f["reason"]
    assert not any(o["ok"] for o in j["ops"])  # the compiler does not produce a model at all
    assert "cannot parse this model, so all 3 ops run on the CPU" in out


def test_float_io_model_keeps_the_middle_on_the_tpu(capsys):
    rc, j, _, _ = check_json(capsys, FIX / "float_io.tflite")
    assert rc == 1 and not j["mappable"]
    ops = j["ops"]
    assert (ops[0]["op"], ops[-1]["op"]) == ("QUANTIZE", "DEQUANTIZE")
    assert not ops[0]["ok"] and not ops[-1]["ok"] and all(o["ok"] for o in ops[1:-1])
    assert "before the Edge TPU segment" in ops[0]["reason"]
    assert "after the Edge TPU segment" in ops[-1]["reason"]
    assert j["first_unmapped"] is None
    assert len(j["problems"]) == 2


def test_compiled_model_is_recognised(capsys):
    rc, j, out, _ = check_json(capsys, FIX / "compiled_edgetpu.tflite")
    assert rc == 0 and j["mappable"] and j["compiled"]
    assert [o["op"] for o in j["ops"]] == ["CUSTOM(edgetpu-custom-op)"]
    assert "already compiled for the Edge TPU" in out


# ---------------------------------------------------------------------------------------------
# the shipped model
# ---------------------------------------------------------------------------------------------

def test_shipped_b1_maps_entirely(capsys):
    path = shipped("motor-ae_b1.tflite")
    rc, j, out, _ = check_json(capsys, path)
    assert rc == 0 and j["mappable"], out
    assert j["required_runtime"] == 13  # TRANSPOSE_CONV
    recorded = models.load("motor-ae", verify=False).manifest["training"].get("ops", {}).get("b1")
    if recorded:  # the op list the training script recorded
        assert [f"{o['op']}/v{o['version']}" for o in j["ops"]] == recorded


def test_shipped_b1_needs_runtime_13(capsys):
    rc, j, _, _ = check_json(capsys, shipped("motor-ae_b1.tflite"), "--min-runtime", "12")
    assert rc == 1
    f = j["first_unmapped"]
    assert f["op"] == "TRANSPOSE_CONV" and "runtime >= 13" in f["reason"]


def test_shipped_dynamic_variant_fails_on_dynamic_shape(capsys):
    rc, j, out, _ = check_json(capsys, shipped("motor-ae_dyn.tflite"))
    assert rc == 1 and not j["mappable"] and j["tpu_ops"] == 0
    f = j["first_unmapped"]
    assert f["index"] == 0 and "dynamic shapes" in f["reason"] and "-1" in f["reason"]
    assert "export a fixed-batch model" in f["reason"]


def test_io_specs_match_the_manifest():
    m = models.load("motor-ae", verify=False)
    v = m.variants["b1"]
    spec = edgetpu_check.io_specs(v.path)
    assert spec["input"]["shape"] == list(v.input.shape)
    assert spec["input"]["dtype"] == v.input.dtype
    assert spec["input"]["scale"] == pytest.approx(v.input.scale, rel=1e-6)
    assert spec["output"]["zero_point"] == v.output.zero_point
    assert edgetpu_check.io_specs(m.variants["dynamic"].path)["input"]["shape"][0] == -1


# ---------------------------------------------------------------------------------------------
# unreadable input
# ---------------------------------------------------------------------------------------------

def test_truncated_file_exits_2_naming_the_path(tmp_path, capsys):
    data = (FIX / "mappable.tflite").read_bytes()
    bad = tmp_path / "truncated.tflite"
    bad.write_bytes(data[:len(data) // 2])
    rc, out, err = run_cli(capsys, "check-model", bad)
    assert rc == 2 and str(bad) in err and "truncated" in err


def test_non_flatbuffer_exits_2_naming_the_path(tmp_path, capsys):
    bad = tmp_path / "notes.tflite"
    bad.write_text("this is not a model\n" * 20)
    rc, out, err = run_cli(capsys, "check-model", bad, "--json")
    assert rc == 2 and str(bad) in err and "not a TFLite model" in err
    j = json.loads(out.strip().splitlines()[-1])
    assert j["mappable"] is False and str(bad) in j["error"]


def test_missing_and_empty_files_exit_2(tmp_path, capsys):
    rc, _, err = run_cli(capsys, "check-model", tmp_path / "nope.tflite")
    assert rc == 2 and "nope.tflite" in err
    (tmp_path / "empty.tflite").write_bytes(b"")
    rc, _, err = run_cli(capsys, "check-model", tmp_path / "empty.tflite")
    assert rc == 2 and "empty.tflite" in err


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=4263), flips=st.lists(
    st.tuples(st.integers(min_value=0, max_value=4263), st.integers(min_value=1, max_value=255)),
    max_size=4))
def test_damaged_files_give_a_report_or_checkerror(tmp_path, cut, flips):
    data = bytearray((FIX / "mappable.tflite").read_bytes())
    for pos, x in flips:
        if pos < len(data):
            data[pos] ^= x
    p = tmp_path / "damaged.tflite"
    p.write_bytes(bytes(data[:cut] if cut else data))
    try:
        r = edgetpu_check.check(p)
    except CheckError as exc:
        assert str(p) in str(exc)
    else:
        assert isinstance(r.mappable, bool)
        json.dumps(r.as_json())


# ---------------------------------------------------------------------------------------------
# schema modules and rule table
# ---------------------------------------------------------------------------------------------

def test_both_schema_modules_agree():
    names = []
    for n in edgetpu_check.SCHEMA_MODULES:
        try:
            edgetpu_check.load_schema((n,))
            names.append(n)
        except CheckError:
            pass
    if len(names) < 2:
        pytest.skip(f"only {names} importable")
    for f in [*sorted(FIX.glob("*.tflite")), shipped("motor-ae_b1.tflite")]:
        a, b = (edgetpu_check.check(f, schema_names=(n,)).as_json() for n in names)
        a.pop("schema"), b.pop("schema")
        assert a == b, f


def test_no_schema_module_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setattr(edgetpu_check, "SCHEMA_MODULES", ("no_such_schema_module",))
    rc, _, err = run_cli(capsys, "check-model", FIX / "mappable.tflite")
    assert rc == 2 and "ai-edge-litert" in err and "tflite" in err


def test_rule_tables_name_real_ops():
    S, _ = edgetpu_check.load_schema()
    ops = {k for k in vars(S.BuiltinOperator) if not k.startswith("_")}
    assert set(edgetpu_check.SUPPORTED_OPS) <= ops
    assert set(edgetpu_check.COMPILER_MAX_VERSION) <= ops
    assert S.BuiltinOperator.HASHTABLE_SIZE == edgetpu_check.COMPILER_LAST_OPCODE
    for name, rule in edgetpu_check.SUPPORTED_OPS.items():
        assert not rule.check or rule.check in edgetpu_check._CHECKS, name
    assert compiler.DEFAULT_MIN_RUNTIME == edgetpu_check.DEFAULT_MIN_RUNTIME


# ---------------------------------------------------------------------------------------------
# compiler log parsing
# ---------------------------------------------------------------------------------------------

def log(name):
    return compiler.parse_log((LOGS / name).read_text())


def test_parse_fully_mapped_log():
    c = log("full.log")
    assert c.success and c.version == "16.0.384591198" and c.compile_ms == 212 and not c.errors
    (m,) = c.models
    assert Path(m.input).name == "motor-ae_b1.tflite"
    assert m.output.endswith("motor-ae_b1_edgetpu.tflite")
    assert m.mapped == {"CONV_2D": 5, "TRANSPOSE_CONV": 4, "RELU": 4}
    assert (m.tpu_ops, m.cpu_ops, m.total_ops, m.tpu_subgraphs) == (13, 0, 13, 1)
    assert m.fully_mapped and m.unmapped == []
    assert m.on_chip_bytes == round(19.5 * 1024) and m.off_chip_bytes == 0
    assert m.on_chip_remaining_bytes == round(6.97 * 1024 * 1024)
    assert c.model("/elsewhere/motor-ae_b1.tflite") is m


def test_parse_partially_mapped_log():
    c = log("partial.log")
    assert c.success
    (m,) = c.models
    assert (m.tpu_ops, m.cpu_ops) == (1, 3) and not m.fully_mapped
    assert m.mapped == {"CONV_2D": 1}
    assert [(u.op, u.count, u.status) for u in m.unmapped] == [
        ("CONV_2D", 2, "More than one subgraph is not supported"),
        ("LEAKY_RELU", 1, "Operation not supported")]
    d = compiler.parse_log((LOGS / "partial_dynamic.log").read_text()).models[0]
    shape = [u for u in d.unmapped if u.op == "SHAPE"][0]
    assert shape.count == 2 and shape.status.startswith("Operation is otherwise supported, but "
                                                        "not mapped due to some unspecified")
    assert d.tpu_ops + d.cpu_ops == d.total_ops == 15
    assert sum(r.count for r in d.operators) == 15


def test_parse_failed_log():
    c = log("failed.log")
    assert not c.success and c.version == "16.0.384591198" and c.models == []
    assert any("TRANSPOSE_CONV" in e and "version '4'" in e for e in c.errors)
    assert "Model could not be parsed" in c.errors


def test_parse_cocompiled_log():
    c = log("cocompiled.log")
    assert c.success and c.compile_ms == 301 and len(c.models) == 2
    a, b = c.model("motor-ae_b1.tflite"), c.model("tiny-clf_b1.tflite")
    assert a.tpu_ops == 13 and b.tpu_ops == 8 and a.fully_mapped and b.fully_mapped
    assert b.on_chip_bytes == round(2.75 * 1024)


def test_parse_operation_log_file_and_sizes():
    text = ("Edge TPU Compiler version 16.0.384591198\nInput: m.tflite\nOutput: m_edgetpu.tflite\n\n"
            "Operator                       Count      Status\n\n"
            "CONV_2D                        3          Mapped to Edge TPU\n"
            "TILE                           1          Operation not supported\n")
    (m,) = compiler.parse_log(text).models
    assert m.input == "m.tflite" and (m.tpu_ops, m.cpu_ops) == (3, 1)
    assert compiler.parse_size("0.00B") == 0
    assert compiler.parse_size("1.23MiB") == round(1.23 * 2 ** 20)
    assert compiler.parse_size("5.75KiB") == round(5.75 * 1024)
    assert compiler.parse_size("n/a") is None


@pytest.mark.parametrize("model,logname", [
    (shipped("motor-ae_b1.tflite"), "full.log"),
    (FIX / "cpu_middle.tflite", "partial.log"),
    (FIX / "tconv_relu_v4.tflite", "failed.log"),
])
def test_offline_verdict_matches_the_compiler_report(model, logname):
    r = edgetpu_check.check(model)
    c = log(logname)
    if not c.success:
        assert r.compiler_refuses
        return
    (m,) = c.models
    assert r.tpu_ops == m.tpu_ops and len(r.ops) - r.tpu_ops == m.cpu_ops
    assert Counter(v.op for v in r.ops if v.ok) == Counter(m.mapped)
    assert r.mappable == m.fully_mapped


# ---------------------------------------------------------------------------------------------
# edgert compile
# ---------------------------------------------------------------------------------------------

FAKE_COMPILER = """#!{python}
import json, os, shutil, sys
from pathlib import Path
args = sys.argv[1:]
Path(os.environ["FAKE_ARGV"]).write_text(json.dumps(args))
out = Path(args[args.index("-o") + 1])
sys.stdout.write(Path(os.environ["FAKE_LOG"]).read_text())
rc = int(os.environ.get("FAKE_RC", "0"))
if rc == 0:
    for m in args[args.index("-o") + 2:]:
        stem = Path(m).name[:-len(".tflite")]
        shutil.copyfile(m, out / (stem + "_edgetpu.tflite"))  # stands in for the compiled model
        (out / (stem + "_edgetpu.log")).write_text("operation log")
sys.exit(rc)
"""


@pytest.fixture
def fake_compiler(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "edgetpu_compiler"
    exe.write_text(FAKE_COMPILER.format(python=sys.executable))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_ARGV", str(tmp_path / "argv.json"))

    def use(logname, rc=0):
        monkeypatch.setenv("FAKE_LOG", str(LOGS / logname))
        monkeypatch.setenv("FAKE_RC", str(rc))
        return tmp_path / "argv.json"
    return use


def make_model_dir(root: Path, name: str, src: Path, fname: str) -> Path:
    """A classifier model directory around a fixture .tflite (its I/O read from the file)."""
    d = root / name
    d.mkdir()
    shutil.copyfile(src, d / fname)
    spec = edgetpu_check.io_specs(d / fname)
    _, _, w, c = spec["input"]["shape"]
    m = {"schema": 1, "name": name, "kind": "classifier", "window": w, "hop": w,
         "channels": [f"c{i}" for i in range(c)],
         "normalization": {"mean": [0.0] * c, "std": [1.0] * c},
         "class_names": ["a", "b", "c", "d"],
         "variants": {"b1": {"file": fname, "batch": 1, **spec}},
         "files": {fname: models.sha256(d / fname)}}
    (d / "manifest.json").write_text(json.dumps(m, indent=2))
    models.load(d)  # a valid directory
    return d


@pytest.fixture
def two_dirs(tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    ae = root / "motor-ae"
    shutil.copytree(models.resolve("motor-ae"), ae, ignore=shutil.ignore_patterns("__pycache__"))
    # the fake compiler's log reports one fixed-batch model per directory: keep b1 only
    m = json.loads((ae / "manifest.json").read_text())
    v = m["variants"].pop("packed", None)
    if v:
        m["files"].pop(v["file"])
        (ae / "manifest.json").write_text(json.dumps(m))
    clf = make_model_dir(root, "tiny-clf", FIX / "mappable.tflite", "tiny-clf_b1.tflite")
    return ae, clf


def test_compile_without_compiler_exits_2_with_advice(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert compiler.find_compiler() is None
    rc, out, err = run_cli(capsys, "compile", models.resolve("motor-ae"))
    assert rc == 2
    for words in ("edgetpu_compiler", "Coral's apt repository", "x86-64", "edgetpu-compiler",
                  "check-model"):
        assert words in err, words


def test_compile_flow_with_a_fake_compiler(tmp_path, fake_compiler, two_dirs, capsys):
    ae, clf = two_dirs
    argv_file = fake_compiler("cocompiled.log")
    out_dir = tmp_path / "out"
    rc, out, err = run_cli(capsys, "compile", ae, clf, "--min-runtime", "13", "--out", out_dir,
                           "--json")
    assert rc == 0, err
    args = json.loads(argv_file.read_text())
    assert args == ["-s", "-m", "13", "-o", str(out_dir), str(ae / "motor-ae_b1.tflite"),
                    str(clf / "tiny-clf_b1.tflite")]
    assert (out_dir / "edgetpu_compiler.log").read_text().startswith("Edge TPU Compiler version")
    expect = {ae: ("motor-ae_b1_edgetpu.tflite", 13, round(19.5 * 1024)),
              clf: ("tiny-clf_b1_edgetpu.tflite", 8, round(2.75 * 1024))}
    for d, (fname, tpu_ops, on_chip) in expect.items():
        assert (d / fname).is_file()
        m = json.loads((d / "manifest.json").read_text())
        e = m["variants"]["edgetpu"]
        assert e["file"] == fname and e["batch"] == 1 and e["source_variant"] == "b1"
        assert e["compiler_version"] == "16.0.384591198" and e["min_runtime"] == 13
        assert (e["tpu_ops"], e["cpu_ops"], e["unmapped"]) == (tpu_ops, 0, [])
        assert e["on_chip_memory_bytes"] == on_chip and e["off_chip_memory_bytes"] == 0
        assert e["input"] == m["variants"]["b1"]["input"]
        assert len(e["co_compiled_with"]) == 1
        assert m["files"][fname] == models.sha256(d / fname)
        loaded = models.load(d)  # sha and tensors of the new variant verify
        assert loaded.variants["edgetpu"].batch == 1
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["all_mapped"] is True and len(summary["models"]) == 2
    assert "check-model predicts all ops map" in out


def test_compile_failure_writes_nothing(tmp_path, fake_compiler, two_dirs, capsys):
    ae, clf = two_dirs
    before = {d: (d / "manifest.json").read_bytes() for d in (ae, clf)}
    fake_compiler("failed.log", rc=1)
    rc, out, err = run_cli(capsys, "compile", ae, clf)
    assert rc == 1
    assert "TRANSPOSE_CONV" in err and "Nothing was written" in err
    for d in (ae, clf):
        assert (d / "manifest.json").read_bytes() == before[d]
        assert not list(d.glob("*_edgetpu.tflite"))


def test_compile_partial_mapping_is_recorded_and_exits_1(tmp_path, fake_compiler, capsys):
    d = make_model_dir(tmp_path, "cpu-mid", FIX / "cpu_middle.tflite", "cpu_middle.tflite")
    fake_compiler("partial.log")
    rc, out, err = run_cli(capsys, "compile", d)
    assert rc == 1 and "some ops run on the CPU" in err
    assert "check-model predicts 1/4 ops map, first on the CPU: #1 LEAKY_RELU" in out
    e = json.loads((d / "manifest.json").read_text())["variants"]["edgetpu"]
    assert (e["tpu_ops"], e["cpu_ops"]) == (1, 3)
    assert {u["op"] for u in e["unmapped"]} == {"CONV_2D", "LEAKY_RELU"}
    assert models.load(d).variants["edgetpu"].path.name == "cpu_middle_edgetpu.tflite"


def test_compile_refuses_a_directory_without_fixed_batch_variant(tmp_path, fake_compiler, capsys):
    d = tmp_path / "dyn-only"
    shutil.copytree(models.resolve("motor-ae"), d, ignore=shutil.ignore_patterns("__pycache__"))
    m = json.loads((d / "manifest.json").read_text())
    for name in ("b1", "packed"):
        v = m["variants"].pop(name, None)
        if v:
            m["files"].pop(v["file"])
    (d / "manifest.json").write_text(json.dumps(m))
    fake_compiler("full.log")
    rc, _, err = run_cli(capsys, "compile", d)
    assert rc == 2 and "no fixed-batch variant" in err


def test_update_manifest(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(models.resolve("motor-ae"), d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(d / "motor-ae_b1.tflite", d / "x_edgetpu.tflite")
    b1 = json.loads((d / "manifest.json").read_text())["variants"]["b1"]
    m = compiler.update_manifest(d, {"edgetpu": {**b1, "file": "x_edgetpu.tflite"}})
    assert m["files"]["x_edgetpu.tflite"] == models.sha256(d / "x_edgetpu.tflite")
    assert json.loads((d / "manifest.json").read_text()) == m
    assert not (d / "manifest.json.tmp").exists()
    with pytest.raises(models.ModelError, match="missing"):
        compiler.update_manifest(d, {"edgetpu": {**b1, "file": "absent_edgetpu.tflite"}})


def test_cli_wiring(capsys):
    from edgert import cli

    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    if "check-model" not in sub.choices:
        pytest.skip("edgert.cli does not register check-model/compile yet")
    assert "compile" in sub.choices
    assert cli.main(["check-model", str(FIX / "mappable.tflite")]) == 0
    assert cli.main(["check-model", str(FIX / "cpu_middle.tflite")]) == 1
