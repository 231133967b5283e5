"""Backends beyond the CPU: TFLite external delegates, the Edge TPU path, the child-process probe,
the packed [1, B, W, C] layout and the fallback chain.

The delegates are real shared libraries built here, inside the test run, with the machine's C
compiler from tests/delegates/test_delegate.c (a minimal TFLite external delegate whose Prepare
claims no node, so the CPU kernels run the model): a passthrough one, one whose create returns
NULL, one that abort()s in create, and a stand-in for libedgetpu that implements its device
selection ("device": "usb:0" …) over $FAKE_EDGETPU_DEVICES. No Edge TPU is needed; what only a
real TPU can show is listed in docs/coral.md.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgert import backends, config, models
from edgert.backends import edgetpu, probe, report, spec
from edgert.backends.base import BackendError
from edgert.backends.cpu import _Slot
from edgert.backends.packed import PackedBackend
from edgert.data import itsc_recording
from edgert.scoring import ReconstructionScorer

HERE = Path(__file__).resolve().parent
SRC = HERE / "delegates" / "test_delegate.c"
SHIPPED = models.models_root() / "motor-ae"
ROWS = 8  # rows of the packed variant derived here when the shipped manifest has none yet
FAULT = "SC_A3_B0_C0_001"
HEALTHY = "SC_HLT_005"

VARIANTS = {  # file name -> extra compiler flags
    "passthrough.so": [],
    "fail_create.so": ["-DEDGERT_FAIL_CREATE"],
    "abort_create.so": ["-DEDGERT_ABORT_CREATE"],
    "fake_edgetpu.so": ["-DEDGERT_FAKE_EDGETPU"],
    "fake_edgetpu_list.so": ["-DEDGERT_FAKE_EDGETPU", "-DEDGERT_FAKE_EDGETPU_LIST"],
}


# --------------------------------------------------------------------------- fixtures
def _compiler():
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return shutil.which(cc)
    return None


@pytest.fixture(scope="session")
def libs(tmp_path_factory):
    """The test delegates, compiled now from tests/delegates/test_delegate.c."""
    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler (cc/gcc/clang) on this machine: the test delegates cannot be built")
    out = tmp_path_factory.mktemp("delegates")
    built = {}
    for name, flags in VARIANTS.items():
        cmd = [cc, "-shared", "-fPIC", "-O1", "-Wall", "-fvisibility=hidden", *flags,
               "-I", str(SRC.parent), "-o", str(out / name), str(SRC)]
        cp = subprocess.run(cmd, capture_output=True, text=True)
        assert cp.returncode == 0, f"{' '.join(cmd)}\n{cp.stderr}"
        built[name.removesuffix(".so")] = str(out / name)
    return built


@pytest.fixture(scope="session")
def model():
    return models.load("motor-ae")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for k in ("EDGERT_EDGETPU_LIB", "FAKE_EDGETPU_DEVICES", "FAKE_EDGETPU_LOG", "FAKE_EDGETPU_FAIL",
              "FAKE_EDGETPU_VERSION", "EDGERT_PROBE_TIMEOUT"):
        monkeypatch.delenv(k, raising=False)


def derive_packed(src: Path, dst: Path, rows: int) -> None:
    """A [1, rows, W, C] model from a [1, 1, W, C] one with the same weights.

    The b1 model is CONV_2D / TRANSPOSE_CONV with (1, k) kernels, so widening the second
    dimension of every activation (and of TRANSPOSE_CONV's constant output shape) gives the
    packed layout; the rows stay independent. Done on the flatbuffer, without TensorFlow.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    m = schema.ModelT.InitFromPackedBuf(bytearray(src.read_bytes()), 0)
    for t in m.subgraphs[0].tensors:
        buf = m.buffers[t.buffer]
        const = buf.data is not None and len(buf.data) > 0
        shape = [int(s) for s in t.shape]
        if len(shape) == 4 and shape[:2] == [1, 1] and not const:
            t.shape = np.array([1, rows, *shape[2:]], dtype=np.int32)
            if t.shapeSignature is not None:
                t.shapeSignature = np.array([1, rows, *shape[2:]], dtype=np.int32)
        elif const and t.type == schema.TensorType.INT32 and shape == [4]:
            v = np.frombuffer(bytes(bytearray(buf.data)), dtype="<i4").copy()
            if v[0] == 1 and v[1] == 1:
                v[1] = rows
                buf.data = np.frombuffer(v.tobytes(), dtype=np.uint8)
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    dst.write_bytes(bytes(b.Output()))


def shipped_packed():
    """The shipped manifest's 'packed' variant entry, or None (a colleague is adding it)."""
    man = json.loads((SHIPPED / "manifest.json").read_text())
    return man["variants"].get("packed")


@pytest.fixture(scope="session")
def packed_dir(tmp_path_factory, model):
    """motor-ae plus 'packed' and 'edgetpu' variants ([1, B, 64, 3]).

    Uses the shipped 'packed' variant when the manifest has one, else derives it from b1.
    The 'edgetpu' variant is that same (uncompiled) file: the fake libedgetpu runs it on the CPU.
    """
    d = tmp_path_factory.mktemp("motor-ae-packed")
    man = json.loads((SHIPPED / "manifest.json").read_text())
    for f in man["files"]:
        shutil.copy(SHIPPED / f, d / f)
    pv = man["variants"].get("packed")
    if pv is None:
        pfile = "motor-ae_packed.tflite"
        derive_packed(SHIPPED / man["variants"]["b1"]["file"], d / pfile, ROWS)
        pv = json.loads(json.dumps(man["variants"]["b1"]))
        pv.update(file=pfile, batch=1, layout="packed", rows=ROWS)
        pv["input"]["shape"] = pv["output"]["shape"] = [1, ROWS, model.window, model.n_channels]
        man["variants"]["packed"] = pv
        man["files"][pfile] = models.sha256(d / pfile)
    if "edgetpu" not in man["variants"]:
        shutil.copy(d / pv["file"], d / "motor-ae_edgetpu.tflite")
        ev = json.loads(json.dumps(pv))
        ev["file"] = "motor-ae_edgetpu.tflite"
        man["variants"]["edgetpu"] = ev
        man["files"]["motor-ae_edgetpu.tflite"] = models.sha256(d / "motor-ae_edgetpu.tflite")
    (d / "manifest.json").write_text(json.dumps(man, indent=1))
    return d


@pytest.fixture(scope="session")
def packed_model(packed_dir):
    return models.load(packed_dir)


def quantized_windows(m, names=(HEALTHY, FAULT)) -> np.ndarray:
    """Real ITSC windows, normalized and quantized as the daemon's kernel does: int8 [N, 1, W, C]."""
    spec_in = m.variants["dynamic"].input
    out = []
    for name in names:
        x = itsc_recording(name).astype(np.float64)
        for s in range(0, len(x) - m.window + 1, m.hop):
            w = (x[s:s + m.window] - m.mean) * m.inv_std / spec_in.scale + spec_in.zero_point
            out.append(np.clip(np.rint(w), -128, 127).astype(np.int8))
    return np.stack(out)[:, None]


def run_all(backend, q: np.ndarray, k: int) -> np.ndarray:
    """Every window of q through `backend`, k at a time (the last batch partial)."""
    buf = backend.input_buffer()
    res = []
    for j in range(0, len(q), k):
        n = min(k, len(q) - j)
        buf[:n] = q[j:j + n]
        res.append(np.array(backend.run(n)[:n]))
    return np.concatenate(res)


def b1_reference(m, q: np.ndarray) -> np.ndarray:
    """One invoke per window on the b1 model: the ground truth for the packed layout."""
    from edgert.backends import _litert

    Interpreter = _litert.find()[0]
    it = Interpreter(model_path=str(m.variants["b1"].path), num_threads=1)
    it.allocate_tensors()
    i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    res = []
    for row in q:
        it.set_tensor(i, row[None])
        it.invoke()
        res.append(it.get_tensor(o)[0].copy())
    return np.stack(res)


def log_lines(path) -> list[str]:
    return Path(path).read_text().splitlines() if Path(path).exists() else []


# ------------------------------------------------------------------------------ spec
def test_spec_parsing():
    assert [s.kind for s in spec.parse("auto")] == ["edgetpu", "cpu"]
    assert all(s.auto for s in spec.parse("auto"))
    (s,) = spec.parse("delegate:/usr/lib/libedgetpu.so.1:device=usb:0,Performance=Max")
    assert s.path == "/usr/lib/libedgetpu.so.1"
    assert s.options == {"device": "usb:0", "Performance": "Max"}
    (s,) = spec.parse("delegate:/opt/a:b/lib.so")  # a ':' not followed by key= stays in the path
    assert s.path == "/opt/a:b/lib.so" and s.options == {}
    (s,) = spec.parse("edgetpu:device=pci:0,Usb.AlwaysDfu=False")
    assert s.options == {"device": "pci:0", "Usb.AlwaysDfu": "False"}
    chain = spec.parse("delegate:/x.so:k=v|edgetpu|cpu")
    assert [c.kind for c in chain] == ["delegate", "edgetpu", "cpu"] and not any(c.auto for c in chain)
    for bad, word in (("gpu", "unknown backend"), ("delegate:", "delegate:PATH"), ("cpu:x=1", "no options"),
                      ("delegate:/x.so:k=v,oops", "not key=value"), ("auto:device=usb", "no options"),
                      ("cpu|", "empty backend")):
        with pytest.raises(ValueError, match=word):
            spec.parse(bad)
    with pytest.raises(BackendError, match="unknown backend"):
        backends.create("gpu", None)


# ------------------------------------------------------------------------- delegates
def test_delegate_loads_and_options_reach_it(libs, model, tmp_path):
    log = tmp_path / "delegate.log"
    b = backends.create(f"delegate:{libs['passthrough']}:log={log},mode=fast,device=usb:0", model, max_batch=8)
    try:
        assert b.name.startswith("delegate:passthrough.so:ai-edge-litert-") or b.name.startswith(
            "delegate:passthrough.so:tflite-runtime-")
        assert b.fallbacks == []
        assert b.info["variant"] == "dynamic"
        lines = log_lines(log)
        creates = [ln for ln in lines if " create " in ln]
        # every create got exactly the options written in the spec
        assert creates and all(ln.endswith(f"create log={log} mode=fast device=usb:0") for ln in creates)
        pids = {int(ln.split()[0].removeprefix("pid=")) for ln in creates}
        assert os.getpid() in pids, "loaded in this process"
        assert len(pids - {os.getpid()}) == 1, "and first in one probe child"
        # Prepare saw the whole graph (13 ops of motor-ae's dynamic model) and claimed none
        assert any("prepare nodes=13 " in ln for ln in lines if f"pid={os.getpid()} " in ln)
        child = (pids - {os.getpid()}).pop()
        assert f"pid={child} destroy" in lines, "the probe child destroyed its delegate"
    finally:
        b.close()


def test_delegate_results_equal_cpu(libs, model):
    q = quantized_windows(model)
    cpu = backends.create("cpu", model, max_batch=32)
    dlg = backends.create(f"delegate:{libs['passthrough']}", model, max_batch=32)
    try:
        for k in (32, 13, 1):
            a, b = run_all(cpu, q, k), run_all(dlg, q, k)
            assert a.shape == b.shape == q.shape
            assert np.array_equal(a, b), k
        # and so the scores the daemon computes are identical
        sc = ReconstructionScorer(model, 32)
        for j in range(0, len(q), 32):
            n = min(32, len(q) - j)
            cpu.input_buffer()[:n] = q[j:j + n]
            dlg.input_buffer()[:n] = q[j:j + n]
            s1 = sc.score(cpu.input_buffer(), cpu.run(n), n)[0].copy()
            s2 = sc.score(dlg.input_buffer(), dlg.run(n), n)[0].copy()
            assert np.array_equal(s1, s2)
    finally:
        cpu.close()
        dlg.close()


def test_failing_delegate_falls_back_with_cause(libs, model, caplog):
    caplog.set_level(logging.INFO, logger="edgert")
    b = backends.create(f"delegate:{libs['fail_create']}|cpu", model, max_batch=4)
    assert b.name.startswith("cpu:")
    (fb,) = b.fallbacks
    assert fb["cause"] == "delegate failed"
    assert "refusing to create" in fb["reason"]  # the delegate's own report_error text
    recs = [r for r in caplog.records if "not used" in r.getMessage()]
    assert len(recs) == 1 and recs[0].levelno == logging.WARNING
    msg = recs[0].getMessage()
    assert "\n" not in msg and libs["fail_create"] in msg and "refusing to create" in msg and b.name in msg
    b.close()


def test_failing_delegate_explicit_raises(libs, model):
    with pytest.raises(BackendError) as ei:
        backends.create(f"delegate:{libs['fail_create']}", model)
    e = ei.value
    assert e.cause == "delegate failed"
    assert "refusing to create" in str(e) and "Failed to load delegate" in str(e)
    assert "runtime ai-edge-litert" in str(e) or "runtime tflite-runtime" in str(e)


def test_aborting_delegate_is_contained(libs, model, caplog):
    # explicit: a clear error naming the signal; this process (the daemon's) is untouched
    with pytest.raises(BackendError) as ei:
        backends.create(f"delegate:{libs['abort_create']}", model)
    e = ei.value
    assert e.cause == "delegate crashed"
    assert "SIGABRT" in str(e) and e.details["signal"] == "SIGABRT"
    assert "load_delegate" in e.details["stage"]
    assert libs["abort_create"] in str(e) and "runtime " in str(e)
    # in a chain: the CPU takes over, one log line says why
    caplog.set_level(logging.INFO, logger="edgert")
    b = backends.create(f"delegate:{libs['abort_create']}|cpu", model, max_batch=4)
    assert b.name.startswith("cpu:") and b.fallbacks[0]["cause"] == "delegate crashed"
    assert sum("SIGABRT" in r.getMessage() for r in caplog.records) == 1
    b.close()


def test_segfaulting_delegate_is_contained(libs, model):
    # crashes with a real invalid memory access inside Prepare (ModifyGraphWithDelegate)
    with pytest.raises(BackendError) as ei:
        backends.create(f"delegate:{libs['passthrough']}:crash=segv", model)
    assert ei.value.cause == "delegate crashed"
    assert "SIGSEGV" in str(ei.value) and "interpreter" in ei.value.details["stage"]


def test_delegate_that_rejects_the_graph(libs, model):
    with pytest.raises(BackendError) as ei:
        backends.create(f"delegate:{libs['passthrough']}:prepare=error", model)
    assert ei.value.cause == "delegate failed"
    assert "dynamic variant" in str(ei.value) and "b1 variant" in str(ei.value)


def test_delegate_runs_a_b1_only_classifier(libs, tmp_path):
    """A model with only a b1 variant and a [1, classes] output (a classifier) runs through a
    delegate one window per invoke; rows equal plain single invokes."""
    from edgert.backends import _litert

    Interpreter = _litert.find()[0]
    src = HERE / "data" / "check_model" / "mappable.tflite"  # int8 [1, 1, 16, 3] -> [1, 4]
    shutil.copy(src, tmp_path / "clf_b1.tflite")
    it = Interpreter(model_path=str(src))
    det = {"input": it.get_input_details()[0], "output": it.get_output_details()[0]}
    tspec = {k: {"shape": [int(x) for x in d["shape"]], "dtype": np.dtype(d["dtype"]).name,
                 "scale": float(d["quantization"][0]), "zero_point": int(d["quantization"][1])}
             for k, d in det.items()}
    man = {"schema": 1, "name": "tiny-clf", "kind": "classifier", "window": 16, "hop": 8,
           "channels": ["a", "b", "c"], "normalization": {"mean": [0, 0, 0], "std": [1, 1, 1]},
           "class_names": ["w", "x", "y", "z"],
           "variants": {"b1": {"file": "clf_b1.tflite", "batch": 1, **tspec}},
           "files": {"clf_b1.tflite": models.sha256(tmp_path / "clf_b1.tflite")}}
    (tmp_path / "manifest.json").write_text(json.dumps(man))
    m = models.load(tmp_path)
    b = backends.create(f"delegate:{libs['passthrough']}", m, max_batch=6)
    try:
        assert b.info["variant"] == "b1" and b.rows == 1
        q = np.random.default_rng(5).integers(-128, 128, size=(20, 1, 16, 3), dtype=np.int8)
        got = run_all(b, q, 6)
        assert got.shape == (20, 4)
        it.allocate_tensors()
        ref = []
        for row in q:
            it.set_tensor(det["input"]["index"], row[None])
            it.invoke()
            ref.append(it.get_tensor(det["output"]["index"])[0].copy())
        assert np.array_equal(got, np.stack(ref))
    finally:
        b.close()


def test_missing_delegate_library(model, tmp_path):
    with pytest.raises(BackendError) as ei:
        backends.create(f"delegate:{tmp_path}/nope.so", model)
    assert ei.value.cause == "library absent"
    assert "cannot open shared object file" in str(ei.value)


def test_probe_timeout(libs, model, monkeypatch):
    monkeypatch.setenv("EDGERT_PROBE_TIMEOUT", "1")
    with pytest.raises(BackendError) as ei:
        backends.create(f"delegate:{libs['passthrough']}:hang_ms=20000", model)
    assert ei.value.cause == "probe timed out"
    assert "load_delegate" in ei.value.details["stage"]


def test_daemon_serves_through_a_delegate(libs, tmp_path):
    from edgert.daemon import Daemon

    cfg = config.load(None, listen=f"ipc://{tmp_path}/s", events=f"ipc://{tmp_path}/e",
                      backend=f"delegate:{libs['passthrough']}|cpu", max_batch=8)
    d = Daemon(cfg)
    try:
        assert d.backend.name.startswith("delegate:passthrough.so:")
        assert d.stats()["backend"] == d.backend.name
        # the batcher writes into the backend's buffer and scores come out
        q = quantized_windows(d.model, (FAULT,))[:8]
        d.backend.input_buffer()[:8] = q
        scores, _ = d.scorer.score(d.backend.input_buffer(), d.backend.run(8), 8)
        assert (scores[:8] > d.model.threshold).any()
    finally:
        d.backend.close()


# ------------------------------------------------------------------ edgetpu fallbacks
def test_auto_without_libedgetpu_falls_back_to_cpu(packed_model, caplog):
    """libedgetpu.so.1 is absent here: check that, then that auto says so and runs the CPU."""
    if edgetpu.locate_library(edgetpu.DEFAULT_LIB):
        pytest.skip("libedgetpu.so.1 is installed on this machine; this test needs it absent")
    pr = probe.probe_edgetpu(edgetpu.DEFAULT_LIB)
    assert not pr.ok and pr.result["cause"] == "library absent"
    assert "libedgetpu.so.1: cannot open shared object file" in pr.result["error"]
    caplog.set_level(logging.INFO, logger="edgert")
    b = backends.create("auto", packed_model, max_batch=8)  # this model HAS an edgetpu variant
    assert b.name.startswith("cpu:")
    (fb,) = b.fallbacks
    assert fb["backend"] == "edgetpu" and fb["cause"] == "library absent"
    assert "libedgetpu.so.1: cannot open shared object file" in fb["reason"]
    recs = [r for r in caplog.records if "not used" in r.getMessage()]
    assert len(recs) == 1 and recs[0].levelno == logging.INFO and "library absent" in recs[0].getMessage()
    with pytest.raises(BackendError) as ei:
        backends.create("edgetpu", packed_model)
    assert ei.value.cause == "library absent"
    b.close()


def test_auto_with_a_model_without_edgetpu_variant(model):
    b = backends.create("auto", model, max_batch=4)
    assert b.name.startswith("cpu:")
    assert b.fallbacks[0]["cause"] == "no variant"
    assert "no compiled 'edgetpu' variant" in b.fallbacks[0]["reason"]
    b.close()


def _fake_tpu(monkeypatch, lib, devices, tmp_path, fail=None, version=None):
    monkeypatch.setenv("EDGERT_EDGETPU_LIB", lib)
    monkeypatch.setenv("FAKE_EDGETPU_DEVICES", devices)
    monkeypatch.setenv("FAKE_EDGETPU_LOG", str(tmp_path / "tpu.log"))
    if fail:
        monkeypatch.setenv("FAKE_EDGETPU_FAIL", fail)
    if version:
        monkeypatch.setenv("FAKE_EDGETPU_VERSION", version)


def test_edgetpu_two_devices_round_robin(libs, packed_model, monkeypatch, tmp_path):
    _fake_tpu(monkeypatch, libs["fake_edgetpu"], "usb:0,pci:0", tmp_path)
    b = backends.create("auto", packed_model, max_batch=32)
    try:
        assert b.name.endswith("[usb:0,pci:0]") and b.name.startswith("edgetpu:")
        assert b.fallbacks == []
        assert b.info["devices"] == ["usb:0", "pci:0"]
        assert b.info["rows_per_invoke"] == packed_model.variants["edgetpu"].input.shape[1] == b.rows
        assert "probing" in b.info["enumeration"]
        assert "RuntimeVersion" in b.info["libedgetpu_version"]
        B = b.rows
        q = quantized_windows(packed_model)
        ref = b1_reference(packed_model, q)
        before = list(b.invokes_per_slot)
        for k in (32, 13, B, 1):
            assert np.array_equal(run_all(b, q, k), ref), k
        used = [a - c for a, c in zip(b.invokes_per_slot, before)]
        assert min(used) > 0 and abs(used[0] - used[1]) <= 1  # invokes alternate between the TPUs
        # one interpreter per device, each with its own delegate opened on that device
        mine = [ln for ln in log_lines(tmp_path / "tpu.log") if ln.startswith(f"pid={os.getpid()} create")]
        assert sorted(ln.split("create ")[1] for ln in mine) == ["device=pci:0", "device=usb:0"]
    finally:
        b.close()


def test_edgetpu_one_device_is_zero_copy(libs, packed_model, monkeypatch, tmp_path):
    _fake_tpu(monkeypatch, libs["fake_edgetpu_list"], "usb:0,usb:1", tmp_path)
    B = packed_model.variants["edgetpu"].input.shape[1]
    b = backends.create("edgetpu:device=usb:1", packed_model, max_batch=B)
    try:
        assert b.name.endswith("[usb:1]") and b.zero_copy
        assert b.info["enumeration"] == "libedgetpu edgetpu_list_devices()"
        q = quantized_windows(packed_model)[:B]
        b.input_buffer()[:] = q
        assert np.shares_memory(b.input_buffer(), b._slots[0].inp)  # kernels write into the tensor
        out = b.run(B)
        assert np.array_equal(out, b1_reference(packed_model, q))
        assert np.array_equal(run_all(b, quantized_windows(packed_model), 3),
                              b1_reference(packed_model, quantized_windows(packed_model)))
    finally:
        b.close()
    with pytest.raises(BackendError) as ei:
        backends.create("edgetpu:device=pci:0", packed_model)
    assert ei.value.cause == "no device" and "pci:0 not found" in str(ei.value)


def test_edgetpu_picks_the_packed_compiled_variant(libs, packed_dir, monkeypatch, tmp_path):
    """`edgert compile` names the compiled variants edgetpu_<source> when a model has several
    fixed-batch ones: the packed one (most windows per invoke) is chosen over edgetpu_b1."""
    d = tmp_path / "m"
    shutil.copytree(packed_dir, d)
    man = json.loads((d / "manifest.json").read_text())
    v = man["variants"]
    v["edgetpu_packed"] = dict(v.pop("edgetpu"), source_variant="packed", backend="edgetpu",
                               min_runtime=13, compiler_version="16.0.384591198")
    shutil.copy(d / v["b1"]["file"], d / "motor-ae_b1_edgetpu.tflite")
    v["edgetpu_b1"] = dict(v["b1"], file="motor-ae_b1_edgetpu.tflite", source_variant="b1", backend="edgetpu")
    man["files"]["motor-ae_b1_edgetpu.tflite"] = models.sha256(d / "motor-ae_b1_edgetpu.tflite")
    (d / "manifest.json").write_text(json.dumps(man))
    m = models.load(d)
    assert edgetpu.compiled_variants(m)[0] == "edgetpu_packed"
    _fake_tpu(monkeypatch, libs["fake_edgetpu"], "usb:0", tmp_path)
    b = backends.create("edgetpu", m, max_batch=16)
    assert b.info["variant"] == "edgetpu_packed" and b.rows == m.variants["packed"].input.shape[1]
    q = quantized_windows(m)
    assert np.array_equal(run_all(b, q, 16), b1_reference(m, q))
    b.close()
    # the compiled model's provenance is named when the runtime refuses it
    monkeypatch.setenv("FAKE_EDGETPU_FAIL", "version")
    with pytest.raises(BackendError) as ei:
        backends.create("edgetpu", m)
    assert ei.value.cause == "version mismatch"
    assert "edgetpu_compiler 16.0.384591198, Edge TPU runtime >= 13" in str(ei.value)


@pytest.mark.parametrize("devices,fail,cause,words", [
    ("", None, "no device", ["no Edge TPU was found"]),
    ("usb:0", "version", "version mismatch", ["Package requires runtime version (14)", "edgetpu_compiler -m"]),
    ("usb:0", "segv", "delegate crashed", ["SIGSEGV", "RuntimeVersion(13)", "device usb:0"]),
    ("usb:0", "abort", "delegate crashed", ["SIGABRT"]),
])
def test_edgetpu_failures_fall_back(libs, packed_model, monkeypatch, tmp_path, caplog, devices, fail, cause, words):
    _fake_tpu(monkeypatch, libs["fake_edgetpu"], devices, tmp_path, fail=fail,
              version="BuildLabel(fake), RuntimeVersion(13)")
    caplog.set_level(logging.INFO, logger="edgert")
    b = backends.create("auto", packed_model, max_batch=8)
    assert b.name.startswith("cpu:")
    (fb,) = b.fallbacks
    assert fb["cause"] == cause, fb
    for w in words:
        assert w in fb["reason"], (w, fb["reason"])
    assert len([r for r in caplog.records if "not used" in r.getMessage()]) == 1
    b.close()
    with pytest.raises(BackendError) as ei:
        backends.create("edgetpu", packed_model)
    assert ei.value.cause == cause


# ------------------------------------------------------------------ the packed layout
@pytest.mark.parametrize("max_batch,devices", [(32, 1), (32, 3), (ROWS, 1), (5, 1)])
def test_packed_equals_single_invokes(packed_model, max_batch, devices):
    """B windows per invoke in [1, B, W, C] (copy path, round-robin, zero-copy view, max_batch < B)
    give exactly the rows of one b1 invoke per window."""
    from edgert.backends import _litert

    Interpreter, _, runtime, version = _litert.find()
    v = packed_model.variants["packed"]
    slots = [_Slot(Interpreter, str(v.path), 1, 1, dynamic=False) for _ in range(devices)]
    b = PackedBackend(packed_model, v, max_batch, slots, f"packed:{runtime}-{version}", runtime)
    try:
        B = b.rows
        assert b.zero_copy == (devices == 1 and max_batch <= B)
        q = quantized_windows(packed_model)
        ref = b1_reference(packed_model, q)
        for k in sorted({max_batch, max(1, max_batch // 2 + 1), 1}):
            assert np.array_equal(run_all(b, q, k), ref), k
        if devices > 1:
            assert all(n > 0 for n in b.invokes_per_slot)
        # a partial last invoke is zero-padded
        b.input_buffer()[:1] = q[:1]
        b.run(1)
        assert not b._slots[(b._rr - 1) % len(slots)].inp[0, 1:].any()
    finally:
        b.close()


def test_shipped_manifest_packed_variant():
    """The colleague's packed variant, once it is in compiled_models/motor-ae/manifest.json."""
    pv = shipped_packed()
    if pv is None:
        pytest.skip("compiled_models/motor-ae/manifest.json has no 'packed' variant yet; the packed "
                    "layout is tested on one derived from b1 here")
    m = models.load("motor-ae")
    from edgert.backends.packed import packed_rows

    v = m.variants["packed"]
    assert packed_rows(m, v) == pv.get("rows", v.input.shape[1])
    from edgert.backends import _litert

    Interpreter, _, runtime, _ = _litert.find()
    b = PackedBackend(m, v, 32, [_Slot(Interpreter, str(v.path), 1, 1, dynamic=False)], "packed", runtime)
    q = quantized_windows(m)
    assert np.array_equal(run_all(b, q, 32), b1_reference(m, q))
    b.close()


def test_packed_rows_refuses_wrong_layouts(model, packed_model):
    from edgert.backends.packed import packed_rows

    assert packed_rows(model, model.variants["b1"]) == 1
    assert packed_rows(packed_model, packed_model.variants["packed"]) == packed_model.variants["packed"].input.shape[1]
    with pytest.raises(BackendError, match="not"):
        packed_rows(model, model.variants["dynamic"])


# ----------------------------------------------------------------------- the report
def test_backends_report(model):
    rep = report.collect("motor-ae")
    assert rep["cpu"]["available"] and rep["cpu"]["model"]["ok"]
    e = rep["edgetpu"]
    assert e["pycoral"]["present"] in (True, False)
    if not edgetpu.locate_library(edgetpu.DEFAULT_LIB):
        assert e["loadable"] is False and "cannot open shared object file" in e["load_error"]
        assert e["cause"] == "library absent"
    assert rep["auto"]["runs"] in ("cpu", "edgetpu")
    text = report.format_text(rep)
    for word in ("cpu ", "edgetpu ", "delegate ", "auto ", "pycoral"):
        assert word in text
    json.dumps(rep, default=str)


def test_backends_report_with_a_fake_tpu(libs, packed_dir, monkeypatch, tmp_path):
    _fake_tpu(monkeypatch, libs["fake_edgetpu"], "usb:0", tmp_path)
    rep = report.collect(str(packed_dir))
    assert rep["edgetpu"]["available"] and rep["edgetpu"]["devices"] == ["usb:0"]
    assert rep["edgetpu"]["invoke"]["usb:0"]["ok"]
    assert rep["auto"]["runs"] == "edgetpu"


def test_backends_command():
    """`edgert backends --json` (once the subcommand is wired into edgert/cli.py)."""
    from edgert import cli

    choices = next(a for a in cli.build_parser()._actions if a.dest == "cmd").choices
    if "backends" not in choices:
        pytest.skip("`edgert backends` is not wired into edgert/cli.py yet")
    cp = subprocess.run([sys.executable, "-m", "edgert", "backends", "--json"], capture_output=True, text=True,
                        timeout=120)
    assert cp.returncode == 0, cp.stderr
    rep = json.loads(cp.stdout.strip().splitlines()[-1])
    assert rep["cpu"]["available"] and "edgetpu" in rep and "delegate" in rep
