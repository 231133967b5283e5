"""Model directories: the shipped model verifies; every kind of mismatch is refused by name."""

import json
import shutil

import numpy as np
import pytest

from edgert import models
from edgert.backends import create


@pytest.fixture
def model_dir(tmp_path):
    src = models.resolve("motor-ae")
    dst = tmp_path / "motor-ae"
    shutil.copytree(src, dst)
    return dst


def edit(d, fn):
    p = d / "manifest.json"
    m = json.loads(p.read_text())
    fn(m)
    p.write_text(json.dumps(m))


def test_shipped_model_loads_and_runs():
    assert "motor-ae" in models.shipped()
    m = models.load("motor-ae")
    assert m.kind == "autoencoder" and m.threshold > 0
    assert m.variants["dynamic"].input.shape == (-1, 1, m.window, m.n_channels)
    be = create("cpu", m, max_batch=8)
    buf = be.input_buffer()
    assert buf.shape == (8, 1, m.window, m.n_channels) and buf.dtype == np.int8
    out = be.run(3)
    assert out.shape[1:] == (1, m.window, m.n_channels)
    be.close()


def test_load_by_path_and_manifest_path(model_dir):
    assert models.load(model_dir).name == "motor-ae"
    assert models.load(model_dir / "manifest.json").name == "motor-ae"


def test_corrupt_file_refused_by_sha(model_dir):
    f = model_dir / models.load(model_dir).variants["dynamic"].path.name
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(models.ModelError, match=f"{f.name}: sha256"):
        models.load(model_dir)


def test_garbage_model_with_matching_sha_refused(model_dir):
    name = models.load(model_dir).variants["dynamic"].path.name
    (model_dir / name).write_bytes(b"not a flatbuffer" * 10)
    edit(model_dir, lambda m: m["files"].__setitem__(name, models.sha256(model_dir / name)))
    with pytest.raises(models.ModelError, match="not a loadable TFLite model"):
        models.load(model_dir)


def test_missing_file_refused(model_dir):
    name = models.load(model_dir).variants["dynamic"].path.name
    (model_dir / name).unlink()
    with pytest.raises(models.ModelError, match="missing"):
        models.load(model_dir)


@pytest.mark.parametrize("change, field", [
    (lambda m: m.pop("threshold"), "threshold"),
    (lambda m: m.__setitem__("kind", "regressor"), "kind"),
    (lambda m: m.__setitem__("window", 0), "window"),
    (lambda m: m["normalization"].__setitem__("mean", [0.0]), "normalization.mean"),
    (lambda m: m["normalization"].__setitem__("std", [1.0, -1.0, 1.0]), "normalization.std"),
    (lambda m: m.__setitem__("channels", []), "channels"),
    (lambda m: m["variants"]["dynamic"]["input"].__setitem__("dtype", "float32"), "dtype"),
    (lambda m: m["variants"]["dynamic"]["input"].__setitem__("scale", 0), "scale"),
    (lambda m: m.__setitem__("files", {}), "files"),
    (lambda m: m["variants"]["dynamic"].__setitem__("file", "../x.tflite"), "file"),
])
def test_manifest_field_errors_name_the_field(model_dir, change, field):
    edit(model_dir, change)
    with pytest.raises(models.ModelError, match="manifest.json") as ei:
        models.load(model_dir)
    assert field.split(".")[-1] in str(ei.value)


def test_wrong_shape_model_refused(model_dir):
    """A manifest whose window disagrees with the .tflite tensors (a wrong-shape model)."""
    def change(m):
        m["window"] = m["window"] * 2
        for v in m["variants"].values():
            v["input"]["shape"][2] *= 2
    edit(model_dir, change)
    with pytest.raises(models.ModelError, match="input shape"):
        models.load(model_dir)


def test_quantization_mismatch_refused(model_dir):
    edit(model_dir, lambda m: m["variants"]["dynamic"]["output"].__setitem__(
        "scale", m["variants"]["dynamic"]["output"]["scale"] * 1.5))
    with pytest.raises(models.ModelError, match="output quantization"):
        models.load(model_dir)


def test_bad_json_and_unknown_model(model_dir, tmp_path):
    (model_dir / "manifest.json").write_text("{not json")
    with pytest.raises(models.ModelError, match="not valid JSON"):
        models.load(model_dir)
    with pytest.raises(models.ModelError, match="no-such"):
        models.load(tmp_path / "no-such")


def test_backend_survives_model_file_replaced_on_disk(model_dir):
    """The interpreter runs verified bytes, not a mapping of the file: rewriting the file in
    place (a retrain writing over it) cannot crash a running backend (SIGBUS)."""
    m = models.load(model_dir)
    be = create("cpu", m, max_batch=4)
    be.input_buffer()[:] = 7
    before = be.run(4).copy()
    f = m.variants["dynamic"].path
    f.write_bytes(b"\0" * 10)  # truncated in place
    be.input_buffer()[:] = 7
    assert np.array_equal(be.run(4), before)
    be.close()
    with pytest.raises(Exception, match="sha256"):
        create("cpu", m, max_batch=4)


def _rename_file(m, old, new):
    m["files"][new] = m["files"].pop(old)


BAD_NAMES = ["../../x", "a/b", "..", ".x", "", "a\x00b", "a\nb", "a\\b", "n" * 101, 7]
NAME_FIELDS = ["name", "variants.dynamic.file", "files", "float_model.file"]


@pytest.mark.parametrize("field, bad", [(f, b) for f in NAME_FIELDS for b in BAD_NAMES
                                        if isinstance(b, str) or f != "files"])  # keys: str
def test_names_that_become_file_names_must_be_plain(model_dir, bad, field):
    """``name`` and every file name a manifest lists become paths (the reservoir's
    ``<name>.bin``, the files read and sha256-verified): ``../../x`` would reach outside the
    directory. Refused naming the manifest and the field."""
    def change(m):
        if field == "name":
            m["name"] = bad
        elif field == "variants.dynamic.file":
            m["variants"]["dynamic"]["file"] = bad
        elif field == "files":
            m["files"][bad] = "0" * 64
        else:
            m["float_model"]["file"] = bad
    edit(model_dir, change)
    with pytest.raises(models.ModelError) as ei:
        models.load(model_dir, verify=False)
    msg = str(ei.value)
    assert f"{model_dir / 'manifest.json'}" in msg
    want = {"variants.dynamic.file": "variants.dynamic: field 'file'"}.get(field, f"field '{field}'")
    assert want in msg
    assert "plain file name" in msg or "wrong type" in msg


def test_plain_names_accepted(model_dir):
    for ok in ("motor-ae", "m.v2", "Motor_AE 3", "ü" * 50):
        assert models.check_plain_name(ok, "w", "name") == ok
    edit(model_dir, lambda m: m.__setitem__("name", "motor-ae.v2"))
    assert models.load(model_dir).name == "motor-ae.v2"


# ---------------------------------------------------------------- the one manifest writer
def _manifest_dirs():
    """Every shipped model directory with a manifest (the models and their CV folds)."""
    return sorted(p.parent for p in models.models_root().rglob("manifest.json"))


@pytest.mark.parametrize("src", _manifest_dirs(), ids=lambda p: str(p.relative_to(models.models_root())))
def test_writer_reproduces_shipped_manifests_byte_for_byte(src, tmp_path):
    """The writer and the reader share one format: writing a shipped manifest's fields (with
    ``files`` recomputed from the files) gives the shipped bytes, and the result loads."""
    dst = tmp_path / src.name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("folds", "__pycache__", "*.py"))
    shipped = (src / "manifest.json").read_bytes()
    m = json.loads(shipped)
    m["files"] = {name: "0" * 64 for name in m["files"]}  # stale digests: the writer recomputes them
    models.write_manifest(dst, m)
    assert (dst / "manifest.json").read_bytes() == shipped
    models.load(dst)


def test_write_model_dir_round_trips_through_load(tmp_path):
    """write_model_dir writes the files and the manifest with their sha256; load verifies it."""
    src = models.load("motor-ae")
    m = json.loads((src.dir / "manifest.json").read_text())
    del m["files"], m["float_model"]
    m["variants"] = {"dynamic": m["variants"]["dynamic"]}
    content = src.variants["dynamic"].path.read_bytes()
    written = models.write_model_dir(tmp_path / "copy", m, {m["variants"]["dynamic"]["file"]: content},
                                     indent=1)
    got = models.load(tmp_path / "copy")
    name = got.variants["dynamic"].path.name
    assert got.manifest["files"] == {name: models.sha256(src.variants["dynamic"].path)}
    assert got.variants["dynamic"].sha256 == written.variants["dynamic"].sha256 == got.manifest["files"][name]
    assert (tmp_path / "copy" / "manifest.json").read_text().startswith('{\n "schema"')  # indent=1
    assert [v.layout for v in got.variants.values()] == ["NHWC"]


def test_writer_refuses_what_the_reader_would(tmp_path):
    """A manifest load would refuse is not written: no manifest.json is left behind."""
    src = models.load("motor-ae")
    m = json.loads((src.dir / "manifest.json").read_text())
    content = {v.path.name: v.path.read_bytes() for v in src.variants.values()}
    del m["float_model"], m["files"]
    bad = json.loads(json.dumps(m))
    bad["kind"] = "regressor"  # a field the reader checks
    with pytest.raises(models.ModelError, match="field 'kind'"):
        models.write_model_dir(tmp_path / "a", bad, content)
    assert not (tmp_path / "a" / "manifest.json").exists()
    missing = json.loads(json.dumps(m))  # a file referenced but not written
    missing["float_model"] = {"file": "motor-ae_float.keras"}
    with pytest.raises(models.ModelError, match="_float.keras: named in the manifest .* but missing"):
        models.write_model_dir(tmp_path / "b", missing, content)
    assert not (tmp_path / "b" / "manifest.json").exists()
    wrong = json.loads(json.dumps(m))
    wrong["variants"]["dynamic"]["input"]["scale"] *= 2  # quantization the file does not have
    with pytest.raises(models.ModelError, match="quantization"):
        models.write_model_dir(tmp_path / "c", wrong, content)
    assert not (tmp_path / "c" / "manifest.json").exists()


def test_variant_carries_layout_rows_and_source():
    """The shipped motor-ae packed variant: layout, rows and digest from the manifest."""
    m = models.load("motor-ae")
    raw = json.loads((m.dir / "manifest.json").read_text())
    p = m.variants["packed"]
    assert p.layout == "packed" and p.rows == raw["variants"]["packed"]["rows"] > 1
    assert p.input.shape == (1, p.rows, m.window, m.n_channels) and p.source is None
    assert p.sha256 == raw["files"][p.path.name]
    for name in ("dynamic", "b1"):
        assert (m.variants[name].layout, m.variants[name].rows) == ("NHWC", 1)


def test_compiled_variant_inherits_layout_and_rows_from_its_source(model_dir):
    """A variant compiled from the packed one (``source_variant``) is packed with its rows."""
    def add(m):
        e = {k: v for k, v in m["variants"]["packed"].items() if k not in ("layout", "rows")}
        m["variants"]["copy"] = {**e, "source_variant": "packed"}
    edit(model_dir, add)
    m = models.load(model_dir)
    c = m.variants["copy"]
    assert (c.layout, c.rows, c.source) == ("packed", m.variants["packed"].rows, "packed")
    edit(model_dir, lambda m: m["variants"]["copy"].__setitem__("source_variant", ["packed"]))
    with pytest.raises(models.ModelError, match="variants.copy: field 'source_variant'"):
        models.load(model_dir)


def test_unknown_layout_refused(model_dir):
    edit(model_dir, lambda m: m["variants"]["b1"].__setitem__("layout", "NCHW"))
    with pytest.raises(models.ModelError, match="variants.b1: field 'layout' must be one of"):
        models.load(model_dir)
