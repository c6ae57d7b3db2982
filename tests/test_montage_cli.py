"""SerialEM montage stacks end to end: io assembles them, and `squares` (JSON, CSV, overlay, --nav) and `batch`
work on the whole montage, with the .mdoc's pixel size and the pixel budget checked on the assembled size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import mrcfile
import numpy as np
import pytest

from ptolemy_rt.cli import main
from ptolemy_rt.errors import TooLargeError
from ptolemy_rt.io import montage_mdoc, read_image
from ptolemy_rt.navigator import map_frame, parse_nav

from .test_montage import write_stack
from .test_squares_mesh import mesh_atlas

REPO = Path(__file__).resolve().parents[1]
TILE = 320
POSITIONS = [(0, 0), (280, 0), (0, 280), (280, 280)]  # 40 px overlaps: a 600 x 600 montage
PIXEL_A = 20000.0


def write_montage(folder: Path, name: str = "mont.mrc", positions=POSITIONS, aligned=None, seed: int = 7):
    """A 2 x 2 montage stack of a 600² mesh atlas (pieces with random gains) and its .mdoc; the truth centres."""
    image, truth, _, _ = mesh_atlas(600, 80.0, 16.0, 12.0, seed=seed)
    rng = np.random.default_rng(seed)
    tiles = []
    for x, y in POSITIONS:  # pieces cut from the scene where they belong, stored at `positions`
        tiles.append(image[y : y + TILE, x : x + TILE] * np.float32(np.exp(rng.normal(0, 0.2))))
    header = (f"PixelSpacing = {PIXEL_A}", "Magnification = 135", f"ImageSize = {TILE} {TILE}")
    path = write_stack(folder, [np.rint(t) for t in tiles], positions, aligned, name, np.int16, header)
    return path, truth


@pytest.fixture(scope="module")
def montage(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mont")
    return write_montage(folder)


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def recall(truth: np.ndarray, found: np.ndarray, tol: float) -> float:
    d = np.hypot(*(truth[:, None, :] - found[None, :, :]).transpose(2, 0, 1)).min(axis=1)
    return float((d < tol).mean())


def test_read_image_assembles_a_montage_stack(montage):
    path, _ = montage
    assert montage_mdoc(path) == path.with_name(path.name + ".mdoc")
    image = read_image(path)
    assert image.shape == (600, 600) and image.pieces == 4 and image.section is None
    assert image.pixel_size_A == pytest.approx(PIXEL_A)
    piece = read_image(path, section=2)
    assert piece.shape == (TILE, TILE) and piece.pieces == 0 and piece.section == 2


def test_a_plain_mdoc_is_not_a_montage(tmp_path):
    path = tmp_path / "stack.mrc"
    with mrcfile.new(path) as m:
        m.set_data(np.zeros((2, 300, 300), np.int16))
    (tmp_path / "stack.mrc.mdoc").write_text("PixelSpacing = 5\n\n[ZValue = 0]\nMagnification = 135\n")
    assert montage_mdoc(path) is None
    with pytest.warns(UserWarning, match="stack of 2 sections"):
        assert read_image(path).shape == (300, 300)


def test_assembled_size_is_checked_against_the_budget_before_allocating(tmp_path, capsys):
    # Four small pieces spread a million pixels apart: the stack is 4 x 320² px, its montage 10^12.
    far = [(0, 0), (1_000_000, 0), (0, 1_000_000), (1_000_000, 1_000_000)]
    path, _ = write_montage(tmp_path, "far.mrc", positions=far)
    with pytest.raises(TooLargeError, match="far.mrc.*assembled montage.*--max-pixels"):
        read_image(path)
    code, _, err = run(["squares", path, "--no-score"], capsys)
    assert code == 2 and "far.mrc" in err and "assembled montage" in err and len(err.strip().splitlines()) == 1


def test_cli_squares_on_a_montage_stack(montage, tmp_path, capsys):
    path, truth = montage
    out, csv_out, png = tmp_path / "sq.json", tmp_path / "sq.csv", tmp_path / "sq.png"
    code, _, err = run(["squares", path, "--no-score", "-o", out, "--overlay", png], capsys)
    assert code == 0, err
    assert "stack of" not in err  # the montage, not section 0 with a warning
    result = json.loads(out.read_text())
    assert result["image"]["shape"] == [600, 600]
    assert result["image"]["pixel_size_A"] == pytest.approx(PIXEL_A) and result["image"]["pixel_size_source"] == "mdoc"
    found = np.array([(t["x"], t["y"]) for t in result["targets"]])
    assert recall(truth, found, 0.35 * 80) >= 0.98
    drawn = cv2.imread(str(png))
    assert drawn.shape[1] == 600 and drawn.shape[0] >= 600  # the whole montage (and the legend below it)
    code, _, err = run(["squares", path, "--no-score", "-o", csv_out, "--format", "csv"], capsys)
    assert code == 0, err
    assert len(csv_out.read_text().splitlines()) == len(result["targets"]) + 1
    # One piece on request.
    code, _, err = run(["squares", path, "--no-score", "--section", "0", "-o", out], capsys)
    assert code == 0, err
    assert json.loads(out.read_text())["image"]["shape"] == [TILE, TILE]


def _montage_nav(path: Path, map_file: str) -> Path:
    # The map's overview is the 600² montage binned by 2 (300 x 300), as SerialEM shows a montage map.
    text = ("AdocVersion = 2.00\n\n[Item = 1]\nColor = 2\nStageXYZ = 10 -20 3\nNumPts = 5\nRegis = 2\nType = 2\n"
            f"MapFile = C:\\maps\\{map_file}\nMapID = 100001\nMapMontage = 1\nMapSection = 0\n"
            "MapScaleMat = 0.5 0.1 0.05 -0.5\nMapWidthHeight = 300 300\n")
    path.write_text(text)
    return path


def test_cli_nav_on_a_montage_stack_is_in_the_montage_map(montage, tmp_path, capsys):
    path, _ = montage
    nav = _montage_nav(tmp_path / "grid.nav", path.name)
    out, nav_out = tmp_path / "sq.json", tmp_path / "grid_out.nav"
    code, _, err = run(["squares", path, "--no-score", "-o", out, "--nav", nav, "--nav-out", nav_out], capsys)
    assert code == 0, err
    targets = json.loads(out.read_text())["targets"]
    parsed = parse_nav(nav_out.read_text())
    frame = map_frame(parsed.item("1"))
    points = [it for it in parsed.items if it.get("Type") == "0"]
    assert len(points) == len(targets) > 10
    for item, t in zip(points, targets):
        x, y, _ = item.numbers("StageXYZ")
        # Montage pixels scale onto the overview (its half-size map): the point is the target's.
        assert frame.pixel(x, y, (600, 600)) == pytest.approx((t["x"], t["y"]), abs=1e-3)
        assert item.get("CoordsInMap") is None
    # One piece of the montage is not the montage map: refused, as before.
    code, _, err = run(["squares", path, "--no-score", "--section", "0", "-o", out, "--nav", nav, "--nav-out",
                        nav_out], capsys)
    assert code == 2 and "stitched" in err


def test_aligned_pieces_stay_in_the_nominal_frame(tmp_path):
    # SerialEM's aligned coordinates have their own origin: the assembled montage keeps the nominal size.
    aligned = [(x + 40 + dx, y - 65 + dy) for (x, y), (dx, dy) in zip(POSITIONS, [(1, 0), (-1, 2), (0, -1), (0, -1)])]
    path, _ = write_montage(tmp_path, "ali.mrc", aligned=aligned)
    image = read_image(path)
    assert image.shape == (600, 600)


@pytest.mark.slow
def test_batch_on_a_montage_stack(montage, tmp_path):
    path, truth = montage
    out = tmp_path / "out"
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "ptolemy_rt", "batch", str(path), "-o", str(out), "--workers", "1",
                        "--threads", "1", "--no-report"], capture_output=True, text=True, env=env, timeout=900,
                       check=False)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    row = summary["images"][0]
    assert row["kind"] == "squares" and row["status"] == "ok"
    result = json.loads((out / "results" / f"{row['id']}.json").read_text())
    assert result["image"]["shape"] == [600, 600]
    found = np.array([(t["x"], t["y"]) for t in result["targets"]])
    assert recall(truth, found, 0.35 * 80) >= 0.98
