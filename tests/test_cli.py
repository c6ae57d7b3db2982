"""End-to-end command line: outputs, exit codes, batches, bad input, Leginon's external-finder call."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from ptolemy_rt.cli import main
from ptolemy_rt.models import default_models_dir

from .conftest import synthetic_atlas, synthetic_medmag
from .tiny_models import make_tiny_set

REPO = Path(__file__).resolve().parents[1]


def _mrc(path: Path, data: np.ndarray) -> Path:
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data)
    return path


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """The shipped default set when present, else a tiny test set (the pipelines run either way)."""
    shipped = default_models_dir()
    if (shipped / "manifest.json").is_file():
        return shipped
    pytest.importorskip("onnx")
    return make_tiny_set(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def atlas(tmp_path_factory) -> Path:
    data, _ = synthetic_atlas(3)
    return _mrc(tmp_path_factory.mktemp("img") / "atlas.mrc", data)


@pytest.fixture(scope="module")
def medmag(tmp_path_factory) -> Path:
    data, _ = synthetic_medmag(1)
    return _mrc(tmp_path_factory.mktemp("img") / "medmag.mrc", data)


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_and_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "squares" in capsys.readouterr().out
    code, _, err = run([], capsys)
    assert code == 2
    with pytest.raises(SystemExit) as e:
        main(["squares", "x.mrc", "--format", "xml"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "xml" in err


def test_squares_json_file_and_overlay(tmp_path, atlas, models_dir, capsys):
    out, png = tmp_path / "sq.json", tmp_path / "sq.png"
    code, stdout, err = run(["squares", atlas, "-o", out, "--overlay", png, "--models", models_dir, "-v"], capsys)
    assert code == 0, err
    d = json.loads(out.read_text())
    assert d["kind"] == "squares" and d["image"]["shape"] == [1024, 1024] and len(d["targets"]) > 10
    assert "ms total" in err and stdout == ""
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # determinism: a second run writes the same bytes
    out2 = tmp_path / "sq2.json"
    assert run(["lowmag", atlas, "-o", out2, "--models", models_dir], capsys)[0] == 0
    assert out2.read_bytes() == out.read_bytes()


def test_squares_formats_and_compat(tmp_path, atlas, models_dir, capsys):
    code, out, _ = run(["squares", atlas, "--compat", "ptolemy", "--models", models_dir], capsys)
    assert code == 0
    first = out.splitlines()[0]
    recs = json.loads(first)
    assert list(recs[0]) == ["vertices", "center", "area", "brightness", "score"]
    code, out, _ = run(["squares", atlas, "-f", "csv", "--models", models_dir], capsys)
    assert code == 0 and out.startswith("x,y,score,area,brightness")
    code, out, _ = run(["squares", atlas, "-f", "txt", "--no-score"], capsys)
    assert code == 0 and out.splitlines()[0].split("\t")[:2] == ["x", "y"]  # a header line, then the rows


def test_holes_cli(tmp_path, medmag, models_dir, capsys):
    out = tmp_path / "h.json"
    code, _, err = run(["holes", medmag, "-o", out, "--models", models_dir, "--edge-tolerance", "100"], capsys)
    assert code == 0, err
    d = json.loads(out.read_text())
    assert d["kind"] == "holes"
    # the score that ranks the holes is the set's choice unless --score says otherwise
    chosen = json.loads((models_dir / "manifest.json").read_text()).get("hole_score", "unet")
    assert d["targets"] and all(t["score"] == t["scores"][chosen] for t in d["targets"])
    code, _, err = run(["holes", medmag, "-o", out, "--models", models_dir, "--score", "unet"], capsys)
    assert code == 0, err
    assert all(t["score"] == t["scores"]["unet"] for t in json.loads(out.read_text())["targets"])
    code, stdout, _ = run(["medmag", medmag, "--compat", "ptolemy", "--models", models_dir], capsys)
    assert code == 0
    recs = json.loads(stdout.splitlines()[0])
    assert all(list(r) == ["vertices", "center", "area", "score"] for r in recs)


@pytest.mark.parametrize("case", ["missing", "truncated", "nan", "small", "notimage", "onedim"])
def test_bad_input_exit_2_one_line_no_output(tmp_path, models_dir, capsys, case):
    path = tmp_path / f"{case}.mrc"
    if case == "truncated":
        _mrc(path, np.ones((512, 512), np.float32))
        path.write_bytes(path.read_bytes()[:-5000])
    elif case == "nan":
        data = np.ones((512, 512), np.float32)
        data[10, 10] = np.nan
        _mrc(path, data)
    elif case == "small":
        _mrc(path, np.ones((100, 512), np.int16))
    elif case == "notimage":
        path.write_text("hello, I am a text file")
    elif case == "onedim":
        _mrc(path, np.ones((1, 512), np.int16))
    out = tmp_path / "out.json"
    for cmd in ("squares", "holes"):
        code, stdout, err = run([cmd, path, "-o", out, "--models", models_dir], capsys)
        assert code == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and path.name in lines[0] and "Traceback" not in err
        assert not out.exists() and stdout == ""
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_constant_image_is_empty_with_reason(tmp_path, models_dir, capsys):
    path = _mrc(tmp_path / "flat.mrc", np.full((512, 600), 77, np.int16))
    for cmd in ("squares", "holes"):
        out = tmp_path / f"{cmd}.json"
        code, _, err = run([cmd, path, "-o", out, "--models", models_dir], capsys)
        assert code == 0, err
        d = json.loads(out.read_text())
        assert d["targets"] == [] and d["reason"]


def test_stack_uses_section_zero_with_warning(tmp_path, atlas, models_dir, capsys):
    with mrcfile.open(atlas) as m:
        one = m.data.copy()
    stack = _mrc(tmp_path / "stack.mrc", np.stack([one, np.zeros_like(one)]))
    code, out, err = run(["squares", stack, "--models", models_dir], capsys)
    assert code == 0 and "section 0" in err
    assert len(json.loads(out)["targets"]) > 0
    code, out, err = run(["squares", stack, "--section", "1", "--models", models_dir], capsys)
    assert code == 0 and json.loads(out)["targets"] == []


def test_batch_goes_on_and_reports_every_failure(tmp_path, atlas, models_dir, capsys):
    bad1, bad2 = tmp_path / "gone.mrc", tmp_path / "junk.mrc"
    bad2.write_text("junk")
    outdir = tmp_path / "res"
    code, _, err = run(["squares", bad1, atlas, bad2, "-o", outdir, "--models", models_dir], capsys)
    assert code == 2
    assert (outdir / "atlas.json").is_file() and sorted(p.name for p in outdir.iterdir()) == ["atlas.json"]
    assert "2 of 3" in err and "gone.mrc" in err and "junk.mrc" in err and "Traceback" not in err


def test_tampered_models_exit_3(tmp_path, atlas, models_dir, capsys):
    import shutil

    bad = Path(shutil.copytree(models_dir, tmp_path / "bad"))
    onnx_file = next(bad.glob("*.onnx"))
    onnx_file.write_bytes(onnx_file.read_bytes()[:-10] + b"0123456789")
    code, _, err = run(["squares", atlas, "--models", bad], capsys)
    assert code == 3 and "sha256" in err and "Traceback" not in err
    code, _, err = run(["holes", atlas, "--models", tmp_path / "none"], capsys)
    assert code == 3 and len(err.strip().splitlines()) == 1


def test_internal_error_exit_70_without_traceback(tmp_path, atlas, models_dir, capsys, monkeypatch):
    import ptolemy_rt.squares as sq

    def broken(*a, **k):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(sq, "find_squares", broken)
    code, _, err = run(["squares", atlas, "--models", models_dir], capsys)
    assert code == 70 and "boom" in err and "report" in err and "Traceback" not in err
    code, _, err = run(["squares", atlas, "--models", models_dir, "--debug"], capsys)
    assert code == 70 and "Traceback" in err


@pytest.mark.parametrize("finder", ["squares", "holes"])
def test_leginon_external_finder(tmp_path, atlas, medmag, models_dir, finder, capsys):
    """Run the script exactly as Smart-Leginon does: bash, `source SCRIPT JOB INPUT OUTDIR`, read line 1."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # the script is written in this process (the same interpreter and package path it names); it runs in its own
    code, script, err = run(["leginon-script", finder, "--models", models_dir], capsys)
    assert code == 0, err
    path = tmp_path / "sq_finding.sh"
    path.write_text(script)
    outdir = tmp_path / "out"
    outdir.mkdir()
    image = atlas if finder == "squares" else medmag
    r = subprocess.run(["bash", "-c", f'source "{path}" job1 "{image}" "{outdir}"; echo "still here $?"'],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "still here 0" in r.stdout  # the sourced script must not exit Leginon's shell
    with open(outdir / "job1.json") as fh:
        first = fh.readline()
    targets = json.loads(first)
    assert isinstance(targets, list) and targets
    keys = {"center", "vertices", "area", "brightness", "score"} if finder == "squares" else {"center", "score"}
    assert keys <= set(targets[0])
    assert all(len(t["center"]) == 2 for t in targets)


def test_cli_reproduces_original_outputs(tmp_path, converted_models, reference_dir, capsys):
    """`--compat ptolemy` (+ `--original` for holes) on the real examples gives the original's JSON."""
    refs = reference_dir / "reference-outputs"
    images = reference_dir / "images"
    cases = [
        (["squares", images / "20may08a_16760340.mrc"], refs / "lowmag_20may08a_16760340.json"),
        (["holes", images / "medmag_readme_1024x1440.mrc", "--original", "--edge-tolerance", "100"],
         refs / "medmag_readme_edgetol100.json"),
    ]
    for args, ref_path in cases:
        out = tmp_path / (ref_path.stem + ".json")
        code, _, err = run([*args, "--compat", "ptolemy", "--models", converted_models, "-o", out], capsys)
        assert code == 0, err
        text = out.read_text()
        assert text.count("\n") == 1
        ours, ref = json.loads(text), json.loads(ref_path.read_text())
        assert len(ours) == len(ref)
        assert [list(o) for o in ours] == [list(r) for r in ref]
        for r in ref:
            o = min(ours, key=lambda o: np.hypot(o["center"][0] - r["center"][0], o["center"][1] - r["center"][1]))
            assert np.abs(np.subtract(o["center"], r["center"])).max() <= 1
            np.testing.assert_allclose(o["vertices"], r["vertices"], atol=0.01)
            assert o["area"] == pytest.approx(r["area"], rel=1e-6)
            assert o["score"] == pytest.approx(r["score"], abs=0.01)


def test_batch_destination_problems_are_usage_errors(tmp_path, atlas, models_dir, capsys):
    other = tmp_path / "b"
    other.mkdir()
    twin = other / "atlas.mrc"
    twin.write_bytes(atlas.read_bytes())
    outdir = tmp_path / "res"
    code, _, err = run(["squares", atlas, twin, "-o", outdir, "--no-score"], capsys)
    assert code == 2 and "would both write" in err and not outdir.exists()
    # one image's -o and --overlay on one path: said as such (it was "atlas.mrc and atlas.mrc would both write")
    same = tmp_path / "same.png"
    code, _, err = run(["squares", atlas, "-o", same, "--overlay", same, "--no-score"], capsys)
    assert code == 2 and err.strip() == f"error: --overlay {same}: -o writes it too; give each its own path"
    assert not same.exists()
    # one image given twice, -o a folder: both would write one file (not "-o writes it too")
    code, _, err = run(["squares", atlas, atlas, "-o", outdir, "--no-score"], capsys)
    assert code == 2 and err.strip() == (f"error: -o: {atlas} is given twice and would write {outdir / 'atlas.json'} "
                                         "twice; give it once") and not outdir.exists()
    afile = tmp_path / "f.json"
    afile.write_text("keep me")
    code, _, err = run(["squares", atlas, tmp_path / "x.mrc", "-o", afile, "--no-score"], capsys)
    assert code == 2 and "directory" in err and afile.read_text() == "keep me"
    # an overlay that cannot be written: exit 4 (output), and no result file beside the failure
    out = tmp_path / "r.json"
    code, _, err = run(["squares", atlas, "-o", out, "--overlay", afile / "x.png", "--no-score"], capsys)
    assert code == 4 and "x.png" in err and not out.exists()


def test_outputs_get_normal_permissions(tmp_path, atlas, capsys):
    old = os.umask(0o022)
    try:
        out = tmp_path / "p.json"
        assert run(["squares", atlas, "-o", out, "--no-score"], capsys)[0] == 0
    finally:
        os.umask(old)
    assert (out.stat().st_mode & 0o777) == 0o644


def test_a_model_set_that_does_not_fit_in_memory_is_said_so(tmp_path, atlas, models_dir, capsys, monkeypatch):
    """Found by hand (fuzz13): onnxruntime's sessions reserve over 2 GB of address space; under `ulimit -v 2000000`
    squares and holes said "the shipped model set: unusable model set (MemoryError: )", blaming a sound set. The
    line says memory (exit 3: the models cannot run here)."""
    import ptolemy_rt.models as m

    def no_memory(*a, **k):
        raise MemoryError

    monkeypatch.setattr(m, "load_models", no_memory)
    code, _, err = run(["holes", atlas, "--models", models_dir], capsys)
    assert code == 3 and err.strip().splitlines() == [
        f"error: {models_dir}: not enough memory to load the models (is this process's memory limited? ulimit -v)"]
