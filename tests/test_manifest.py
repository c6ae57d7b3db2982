"""The typed manifest (ptolemy_rt.manifest) and `ptolemy-rt models --validate`: every problem listed, exit 3."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptolemy_rt.cli import main
from ptolemy_rt.errors import ModelError
from ptolemy_rt.manifest import ModelSpec, UnetScale, parse_manifest, read_manifest, validate_model_set
from ptolemy_rt.models import ModelSet, default_models_dir

from .conftest import examples

pytest.importorskip("onnx", reason="onnx is a dev extra (pip install -e '.[dev,cpu]')")

from .tiny_models import make_tiny_set  # noqa: E402


@pytest.fixture()
def tiny(tmp_path) -> Path:
    return make_tiny_set(tmp_path / "tiny")


def edit(directory: Path, change) -> Path:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    return directory


def validate_cli(directory: Path, capsys) -> tuple[int, list[str]]:
    code = main(["models", "--validate", str(directory)])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith("error: ")]


def test_shipped_set_is_clean(capsys):
    shipped = default_models_dir()
    if not (shipped / "manifest.json").is_file():
        pytest.skip("no shipped model set in this checkout")
    assert validate_model_set(shipped) == []
    code = main(["models", "--validate", str(shipped)])
    assert code == 0 and "OK" in capsys.readouterr().out


def test_typed_values_and_defaults(tiny):
    manifest = read_manifest(tiny)
    unet = manifest.models["hole_unet"]
    assert isinstance(unet, ModelSpec) and unet.multiple == 16 and unet.threshold == 0.5 and unet.scale is None
    assert manifest.hole_score == "unet" and manifest.name == "tiny-test-set"
    edit(tiny, lambda m: (m["models"]["hole_unet"].update(scale={"spacing_px": 64}),
                          m["models"]["hole_cnn"].pop("bn")))
    manifest = read_manifest(tiny)
    assert manifest.models["hole_unet"].scale == UnetScale(64.0, None)
    # A missing bn means batch statistics, in squares and holes alike (it once meant eval-mode in holes).
    assert manifest.models["hole_cnn"].bn == "batch" and manifest.models["hole_cnn"].batch_statistics


def test_every_problem_is_listed_with_its_field(tiny, tmp_path, capsys):
    def break_it(m):
        del m["models"]["square_cnn"]["sha256"]  # missing field
        m["models"]["hole_unet"]["threshold"] = "0.3"  # wrong type
        m["models"]["hole_unet"]["crop_size"] = 240  # a square_cnn field
        m["models"]["square_cnn"]["bn"] = "eval"  # out of range
        m["colour"] = "blue"  # unknown top-level field

    edit(tiny, break_it)
    (tiny / "hole_cnn.onnx").write_bytes(b"tampered")  # bad hash, on an entry that parses
    code, lines = validate_cli(tiny, capsys)
    assert code == 3
    text = "\n".join(lines)
    for field in ("models.square_cnn.sha256: missing", "models.hole_unet.threshold: must be a number",
                  "models.hole_unet.crop_size: unknown field (a square_cnn field)",
                  "models.square_cnn.bn: must be one of",
                  "colour: unknown field", "hole_cnn.onnx: sha256"):
        assert field in text, field
    assert len(lines) == 6
    # Loading refuses the same set with one line naming the fields (exit 3 through the CLI).
    with pytest.raises(ModelError, match="models.hole_unet.threshold"):
        ModelSet(tiny)


@pytest.mark.parametrize("file", ["../outside.onnx", "/etc/passwd", "sub/../../outside.onnx"])
def test_file_outside_the_directory_is_refused(tiny, capsys, file):
    edit(tiny, lambda m: m["models"]["hole_cnn"].update(file=file))
    code, lines = validate_cli(tiny, capsys)
    assert code == 3 and len(lines) == 1 and "models.hole_cnn.file" in lines[0] and "inside" in lines[0]
    with pytest.raises(ModelError, match="models.hole_cnn.file"):
        ModelSet(tiny)


def test_symlink_leading_out_is_refused(tiny, tmp_path, capsys):
    outside = tmp_path / "elsewhere.onnx"
    shutil.copy(tiny / "hole_cnn.onnx", outside)
    (tiny / "hole_cnn.onnx").unlink()
    os.symlink(outside, tiny / "hole_cnn.onnx")
    code, lines = validate_cli(tiny, capsys)
    assert code == 3 and len(lines) == 1 and "leads outside" in lines[0]
    with pytest.raises(ModelError, match="leads outside"):
        ModelSet(tiny)


def test_missing_file_and_graph_names(tiny, capsys):
    (tiny / "square_cnn.onnx").unlink()
    edit(tiny, lambda m: m["models"]["hole_unet"].update(input="pixels"))
    code, lines = validate_cli(tiny, capsys)
    assert code == 3 and len(lines) == 2
    assert any("square_cnn" in line and "missing" in line for line in lines)
    assert any("input 'pixels' is not an input of the graph" in line for line in lines)


def test_malformed_manifest_exits_3(tiny, capsys):
    (tiny / "manifest.json").write_text("{not json")
    code, lines = validate_cli(tiny, capsys)
    assert code == 3 and "unreadable manifest" in lines[0]
    code = main(["models", "--models", str(tiny)])
    assert code == 3


def test_graph_changed_after_load_is_refused(tiny):
    # onnxruntime gets the bytes that were hashed; a file swapped between load and first use is caught.
    ms = ModelSet(tiny, provider="cpu")
    (tiny / "hole_cnn.onnx").write_bytes((tiny / "square_cnn.onnx").read_bytes())
    with pytest.raises(ModelError, match="does not match"):
        ms.session("hole_cnn")


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=5),
                    st.lists(st.integers(), max_size=2),
                    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@examples(50, settings(max_examples=200, deadline=None, derandomize=True),
          given(st.sampled_from(["square_cnn", "hole_unet", "hole_cnn"]),
                st.sampled_from(["bn", "threshold", "multiple", "scale", "max_pixels", "min_size", "crop_size",
                                 "crop_scale", "crop_min_side", "opset", "input", "sha256", "file", "pixel_size_A"]),
                _VALUES))
def test_any_field_value_parses_or_is_refused_by_name(task, key, value):
    base = {"format": 1, "name": "x", "models": {task: {"file": "a.onnx", "sha256": "0" * 64, key: value}}}
    problems: list[str] = []
    manifest = parse_manifest(base, problems)
    if manifest is None:
        assert problems and all(p.startswith(f"models.{task}.") for p in problems)
        assert any(f".{key}" in p for p in problems)
    else:
        assert problems == [] and isinstance(manifest.models[task], ModelSpec)


def test_square_crop_scale_defaults_to_one_and_must_be_a_positive_integer():
    """crop_scale (input pixels per crop pixel): absent in a converted set, whose crops stay at full resolution."""
    def parse(extra):
        problems: list[str] = []
        entry = {"file": "a.onnx", "sha256": "0" * 64, "crop_size": 60, **extra}
        manifest = parse_manifest({"format": 1, "name": "x", "models": {"square_cnn": entry}}, problems)
        return manifest, problems

    manifest, problems = parse({})
    assert problems == [] and manifest.models["square_cnn"].crop_scale == 1
    manifest, problems = parse({"crop_scale": 4})
    assert problems == [] and manifest.models["square_cnn"].crop_scale == 4
    for bad in (0, 2.5, "4", True):
        manifest, problems = parse({"crop_scale": bad})
        assert manifest is None and any("models.square_cnn.crop_scale" in p for p in problems), bad


@pytest.mark.parametrize(("extra", "why"), [
    ({"crop_scale": 4, "crop_min_side": 61}, "at most crop_size (60)"),
    ({"crop_min_side": 20}, "needs crop_scale > 1"),
    ({"crop_scale": 1, "crop_min_side": 20}, "needs crop_scale > 1"),
])
def test_square_crop_min_side_beyond_the_canvas_or_without_a_factor_to_lower_is_refused(extra, why):
    """crop_min_side over crop_size cannot be met; at crop_scale 1 it has nothing to lower: both refused by name."""
    entry = {"file": "a.onnx", "sha256": "0" * 64, "crop_size": 60, **extra}
    problems: list[str] = []
    assert parse_manifest({"format": 1, "name": "x", "models": {"square_cnn": entry}}, problems) is None
    assert len(problems) == 1 and problems[0].startswith("models.square_cnn.crop_min_side: ") and why in problems[0]
    entry.update(crop_scale=4, crop_min_side=60)
    manifest = parse_manifest({"format": 1, "name": "x", "models": {"square_cnn": entry}})
    assert manifest.models["square_cnn"].crop_min_side == 60


def test_a_model_file_in_a_symlink_loop_is_a_model_error(tiny, capsys):
    """Path.resolve raised RuntimeError on a symlink loop (an internal error, exit 70, in batch)."""
    (tiny / "hole_cnn.onnx").unlink()
    os.symlink(tiny / "hole_cnn.onnx", tiny / "hole_cnn.onnx")
    code, lines = validate_cli(tiny, capsys)
    assert code == 3 and lines and "hole_cnn" in lines[0]
    with pytest.raises(ModelError, match="hole_cnn"):
        ModelSet(tiny)


def _replace_graph(directory: Path, task: str, in_shape, out_shape, out_type=None) -> None:
    import hashlib

    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["image"], ["logit"]) if out_type is None else \
        helper.make_node("Cast", ["image"], ["logit"], to=out_type)
    graph = helper.make_graph([node], task, [helper.make_tensor_value_info("image", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("logit", out_type or TensorProto.FLOAT, out_shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    blob = model.SerializeToString()
    (directory / f"{task}.onnx").write_bytes(blob)
    edit(directory, lambda m: m["models"][task].update(sha256=hashlib.sha256(blob).hexdigest()))


@pytest.mark.parametrize("task,in_shape,out_shape,int_out,what", [
    ("square_cnn", ["N", 1, 240, 240], ["N", 1, 240, 240], False, "one logit per image"),
    ("square_cnn", ["N", 1, 60, 60], ["N", 1], False, "crops of crop_size 240 x 240 are fed"),  # review fuzz16
    ("hole_cnn", ["N", 1, "H", "W"], ["N", 1, "H", "W"], False, "one logit per image"),
    ("hole_unet", ["N", 3, "H", "W"], ["N", 3, "H", "W"], False, "[N, 1, H, W] batch"),
    ("hole_unet", ["N", 1, "H", "W"], ["N", 1, "H", "W"], True, "float logits"),
])
def test_graph_shapes_that_do_not_fit_the_task_are_listed(tiny, capsys, task, in_shape, out_shape, int_out, what):
    """Fuzz (model_graphs): a square_cnn declaring [N, 1, 240, 240] logits passed --validate, then every run ended
    in an internal error."""
    from onnx import TensorProto

    _replace_graph(tiny, task, in_shape, out_shape, TensorProto.INT64 if int_out else None)
    code, lines = validate_cli(tiny, capsys)
    assert code == 3 and lines and all(f"models.{task}" in line for line in lines), lines
    assert any(what in line for line in lines), lines


def test_a_manifest_saved_with_a_byte_order_mark_is_read(tiny, capsys):
    """A manifest edited in a Windows editor (its name, its notes) begins with a byte-order mark: json refused it
    ('Unexpected UTF-8 BOM', exit 3 for a set that is whole). The mark names the encoding and is dropped."""
    text = (tiny / "manifest.json").read_text()
    for encoding in ("utf-8-sig", "utf-16"):
        (tiny / "manifest.json").write_bytes(text.encode(encoding))
        assert read_manifest(tiny).name == "tiny-test-set"
        assert validate_cli(tiny, capsys) == (0, [])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="an address-space limit in a child process (POSIX)")
def test_a_model_set_loads_under_an_address_space_limit_of_a_cluster_job():
    """Found by hand (fuzz13): each graph was read with fh.read(2 GiB), which reserves 2 GiB of address space for
    a 10 MB file: under `ulimit -v 2000000` (a batch system's usual job limit) every scored squares/holes run was
    "unusable model set (MemoryError: )", exit 3. The read asks for the size the stat gave."""
    import subprocess
    import sys

    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (1500 << 20, 1500 << 20)); "
            "from ptolemy_rt.manifest import read_manifest, read_verified; from ptolemy_rt.models import "
            "default_models_dir; d = default_models_dir(); "
            "print(sum(len(read_verified(d, s)) > 0 for s in read_manifest(d).models.values()))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                       check=False)
    assert r.returncode == 0 and int(r.stdout) >= 2, r.stderr[-2000:]


@pytest.mark.parametrize("task,extra,said", [
    ("square_cnn", {"crop_size": 10**9}, "models.square_cnn.crop_size: must be an integer from 1 to 1024"),
    ("square_cnn", {"crop_size": 64, "input_shape": ["N", 1, 60, 60]},
     r"models.square_cnn.crop_size: 64 does not fit input_shape \['N', 1, 60, 60\]"),
    ("hole_unet", {"multiple": 10**6}, "models.hole_unet.multiple: must be an integer from 1 to 256"),
    ("hole_unet", {"scale": {"spacing_px": 1e300}}, r"models.hole_unet.scale: spacing_px must be a number in \(0, "
                                                    r"256\]"),
    ("hole_unet", {"scale": {"spacing_px": 64, "max_upscale": 1e300}},
     r"models.hole_unet.scale: max_upscale must be a number in \(0, 4\]"),
    ("hole_cnn", {"min_size": 10**5}, "models.hole_cnn.min_size: must be an integer from 1 to 1024"),
    ("hole_cnn", {"file": "a\0b.onnx"}, r"models.hole_cnn.file: must be a file name \(it holds a NUL byte\)")])
def test_a_size_no_graph_could_use_or_a_file_name_of_a_nul_byte_is_refused_by_name(task, extra, said):
    """Found by hand (fuzz16): a crop_size or min_size of 1e9 or a multiple of 1e6 failed every image as 'not enough
    memory for this image' (exit 2, the image blamed), a spacing_px of 1e300 as an internal error (OverflowError,
    exit 70), a crop_size other than the graph's declared input at inference naming the image, a file name holding a
    NUL byte as an internal error (os.stat's ValueError, exit 70). The manifest refuses each by name (exit 3); the
    shipped and trained values (crops of 60 to 240, padding to 16, a 64 px period enlarged 1.3x) parse."""
    entry = {"file": "a.onnx", "sha256": "0" * 64, **extra}
    problems: list[str] = []
    assert parse_manifest({"format": 1, "name": "x", "models": {task: entry}}, problems) is None
    assert len(problems) == 1 and re.match(said, problems[0]), problems
    fine = {"square_cnn": {"crop_size": 240, "input_shape": ["N", 1, 240, 240]},
            "hole_unet": {"multiple": 16, "scale": {"spacing_px": 64, "max_upscale": 1.3}},
            "hole_cnn": {"min_size": 16}}[task]
    assert parse_manifest({"format": 1, "name": "x", "models": {task: {"file": "a.onnx", "sha256": "0" * 64,
                                                                       **fine}}}) is not None


@pytest.mark.parametrize("declared", [[-1, 1, -1, -1], [0, 1, 0, 0], ["N", 1, "H", 240]])
def test_a_dynamic_input_shape_fits_any_crop_size(declared):
    """Review of fuzz16: the crop_size check took -1 and 0 as sizes, where the graph check (_static) takes them as
    dynamic (ONNX's dim_value 0, the -1 of some exporters): a set of input_shape [-1, 1, -1, -1] that main read
    exited 3."""
    entry = {"file": "a.onnx", "sha256": "0" * 64, "crop_size": 240, "input_shape": declared}
    problems: list[str] = []
    assert parse_manifest({"format": 1, "name": "x", "models": {"square_cnn": entry}}, problems) is not None, problems


def test_a_model_file_name_of_a_nul_byte_exits_3_in_one_line(tiny, capsys):
    """The same NUL byte through the command line: `squares --models` looked the set's files up (so that no output
    replaces one) before the manifest was checked, and os.stat raised (exit 70)."""
    edit(tiny, lambda m: m["models"]["square_cnn"].update(file="a\0b.onnx"))
    code = main(["squares", str(tiny / "nothing.mrc"), "--models", str(tiny)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1 and "models.square_cnn.file: must be a file name" in err[0], err
