"""`ptolemy-rt demo`: both pipelines on synthetic images, results and overlays on disk, one summary line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import mrcfile
import numpy as np
import pytest

from ptolemy_rt.cli import main
from ptolemy_rt.models import default_models_dir
from ptolemy_rt.synthetic import make_atlas, make_medmag


def test_demo_writes_results_that_match_its_images(tmp_path, capsys):
    if not (default_models_dir() / "manifest.json").is_file():
        pytest.skip("no shipped model set")
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--seed", "0", "--threads", "1"]) == 0
    stdout = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "atlas.json", "atlas.mrc", "atlas.png", "medmag.json", "medmag.mrc", "medmag.png"]
    assert stdout.count("\n") == 1 and "squares in" in stdout and "holes in" in stdout
    assert stdout.count(" ms warm (first call in this process ") == 2
    # The images are the seed's synthetic ones, and the results are for them.
    for name, make in (("atlas", make_atlas), ("medmag", make_medmag)):
        with mrcfile.open(out / f"{name}.mrc") as m:
            data = m.data.copy()
        assert np.array_equal(data, make(0)[0])
        result = json.loads((out / f"{name}.json").read_text())
        assert result["image"]["shape"] == list(data.shape) and len(result["targets"]) > 5
        picture = cv2.imread(str(out / f"{name}.png"))
        # the image, then the legend strip below it (overlay.layout)
        assert picture.shape[1] == data.shape[1] and data.shape[0] < picture.shape[0] < 1.2 * data.shape[0]
        assert not np.array_equal(picture[..., 0], picture[..., 2])  # coloured boxes were drawn
    squares = json.loads((out / "atlas.json").read_text())["targets"]
    _, truth = make_atlas(0)
    # Most found squares sit on a true square centre.
    centres = np.asarray(truth.centers)
    near = [np.hypot(*(centres - (s["x"], s["y"])).T).min() < 0.35 * truth.pitch_px for s in squares]
    assert np.mean(near) > 0.8


@pytest.mark.parametrize("kind,code", [("file", 2), ("fifo", 2), ("device", 2), ("under_a_file", 4)])
def test_demo_output_that_cannot_be_a_folder_is_refused_before_work(tmp_path, capsys, kind, code):
    """`demo -o FILE` (or a FIFO, /dev/null) was a FileExistsError from mkdir: an internal error, exit 70."""
    target = tmp_path / "out"
    if kind == "file":
        target.write_text("keep")
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "device":
        target = Path("/dev/null")
    else:
        (tmp_path / "f").write_text("keep")
        target = tmp_path / "f" / "sub"
    assert main(["demo", "-o", str(target)]) == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(target) in err


def test_write_mrc_gives_the_same_bytes_for_the_same_array(tmp_path, monkeypatch):
    """mrcfile labels a new file with the time of day: the demo's and the synthetic session's images were
    other bytes on every run."""
    import datetime

    import mrcfile
    import mrcfile.mrcobject

    from ptolemy_rt.demo import write_mrc

    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_mrc(tmp_path / "a.mrc", data, 2.5)

    class Later(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime(2031, 5, 6, 7, 8, 9)

    monkeypatch.setattr(mrcfile.mrcobject, "datetime", Later)
    write_mrc(tmp_path / "b.mrc", data, 2.5)
    assert (tmp_path / "a.mrc").read_bytes() == (tmp_path / "b.mrc").read_bytes()
    with mrcfile.open(tmp_path / "a.mrc") as mrc:
        assert mrc.header.label[0] == b"Created by ptolemy-rt" and mrc.voxel_size.x == 2.5


@pytest.mark.parametrize("errno_, text", [(30, "Read-only file system"), (28, "No space left on device"),
                                          (2, "No such file or directory")])
def test_demo_into_a_folder_it_cannot_write_is_an_output_error(tmp_path, capsys, monkeypatch, errno_, text):
    """Fuzz (stdout_commands, demo): an existing output folder on a read-only or full disk (or /proc/self) made
    write_mrc's temporary folder raise a bare OSError: exit 70. Now exit 4 naming the file."""
    import tempfile

    def fail(*args, **kwargs):
        raise OSError(errno_, text)

    monkeypatch.setattr(tempfile, "TemporaryDirectory", fail)
    out = tmp_path / "demo"
    out.mkdir()
    assert main(["demo", "-o", str(out), "--threads", "1"]) == 4
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and f"{out / 'atlas.mrc'}: cannot be written ({text})" in err, err
