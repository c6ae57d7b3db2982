"""montage: .mdoc parsing, montage assembly round trip (MRC stack + .mdoc), the pixel budget, seam removal."""

from __future__ import annotations

import warnings

import mrcfile
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from ptolemy_rt.errors import CorruptFileError, TooLargeError
from ptolemy_rt.montage import (
    Seam,
    assemble,
    flatten_tile_offsets,
    montage_extent,
    parse_mdoc,
    read_mdoc,
    read_montage,
    remove_seams,
    square_tile_grid,
    tile_boundaries,
    tile_gains,
    tile_steps,
)
from tests.conftest import examples

MDOC = """PixelSpacing = 656.139
ImageFile = LMM.mrc
ImageSize = 64 48
Montage = 1

[T = SerialEM: Titan Krios   25-Mar-21 16:59:53]

[ZValue = 0]
PieceCoordinates = 0 0 0
MinMaxMean = -23 1110 2.48245
PixelSpacing = 656.139
AlignedPieceCoordsVS = 38 -65 0

[ZValue = 1]
PieceCoordinates = 58 0 0
AlignedPieceCoordsVS = 95 -60 0

[ZValue = 2]
PieceCoordinates = 0 44 1
"""


def test_parse_mdoc():
    md = parse_mdoc(MDOC, "x.mdoc")
    assert md.pixel_size_A == pytest.approx(656.139)
    assert md.is_montage
    assert [s.z for s in md.sections] == [0, 1, 2]
    assert md.sections[0].piece == (0, 0, 0) and md.sections[0].aligned == (38, -65, 0)
    assert md.sections[1].piece == (58, 0, 0)
    assert md.sections[2].piece == (0, 44, 1) and md.sections[2].aligned is None
    assert md.header["ImageSize"] == "64 48"
    assert md.sections[0].fields["MinMaxMean"] == "-23 1110 2.48245"


def test_bad_mdoc_names_the_file(tmp_path):
    p = tmp_path / "bad.mdoc"
    p.write_text("[ZValue = 0]\nPieceCoordinates = a b 0\n")
    with pytest.raises(CorruptFileError, match="bad.mdoc"):
        read_mdoc(p)


def cut(image: np.ndarray, nx: int, ny: int, tile: tuple[int, int], rng: np.random.Generator, jitter: int = 0):
    """Overlapping tiles covering `image` with random gains; positions (x, y) of each tile's data[0, 0]."""
    h, w = image.shape
    th, tw = tile
    xs = np.linspace(0, w - tw, nx).round().astype(int)
    ys = np.linspace(0, h - th, ny).round().astype(int)
    tiles, pos, gains = [], [], []
    for y in ys:
        for x in xs:
            x1 = int(np.clip(x + rng.integers(-jitter, jitter + 1), 0, w - tw)) if jitter else int(x)
            y1 = int(np.clip(y + rng.integers(-jitter, jitter + 1), 0, h - th)) if jitter else int(y)
            g = float(np.exp(rng.normal(0, 0.25)))
            tiles.append((image[y1 : y1 + th, x1 : x1 + tw] * g).astype(np.float32))
            pos.append((x1, y1))
            gains.append(g)
    return tiles, np.array(pos), np.array(gains)


def write_stack(tmp_path, tiles, pos, aligned=None, name="mont.mrc", dtype=np.float32,
                header=("PixelSpacing = 1234.5",)):
    """A SerialEM montage stack of `tiles` (as dtype) and its .mdoc: `header` lines, then each piece's
    PieceCoordinates (and AlignedPieceCoords when `aligned` is given)."""
    path = tmp_path / name
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.stack(tiles).astype(dtype))
    lines = [*header, "Montage = 1", ""]
    for z, (x, y) in enumerate(pos):
        lines += [f"[ZValue = {z}]", f"PieceCoordinates = {x} {y} 0"]
        if aligned is not None:
            lines.append(f"AlignedPieceCoords = {aligned[z][0]} {aligned[z][1]} 0")
        lines.append("")
    (tmp_path / (name + ".mdoc")).write_text("\n".join(lines))
    return path


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(nx=st.integers(2, 4), ny=st.integers(2, 4), seed=st.integers(0, 2**16), jitter=st.integers(0, 6))
def test_montage_round_trip(tmp_path, nx, ny, seed, jitter):
    rng = np.random.default_rng(seed)
    h, w = 150 + 20 * ny, 170 + 20 * nx
    image = rng.uniform(20, 200, (h, w)).astype(np.float32)
    th, tw = int(h / ny * 1.25), int(w / nx * 1.25)
    tiles, pos, gains = cut(image, nx, ny, (th, tw), rng, jitter)
    path = write_stack(tmp_path, tiles, pos)
    m = read_montage(path)
    assert m.pixel_size_A == pytest.approx(1234.5)
    x0, y0 = pos.min(axis=0)
    ref = image[y0 : y0 + m.image.shape[0], x0 : x0 + m.image.shape[1]]
    assert m.image.shape == ref.shape
    cov = m.coverage
    # Every covered pixel is the original up to one common factor (the gains' geometric mean).
    ratio = m.image[cov] / ref[cov]
    assert np.allclose(ratio, np.median(ratio), rtol=1e-4)
    # The gains found are the true ones up to that factor.
    est = m.gains / np.exp(np.mean(np.log(m.gains)))
    true = gains / np.exp(np.mean(np.log(gains)))
    assert np.allclose(est, true, rtol=1e-3)


def test_aligned_coordinates_are_used_when_present(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.uniform(10, 100, (200, 260)).astype(np.float32)
    tiles, pos, _ = cut(image, 2, 2, (120, 150), rng)
    wrong = pos + np.array([[7, -3], [0, 5], [-4, 0], [2, 2]])
    path = write_stack(tmp_path, tiles, wrong, aligned=pos)
    m = read_montage(path)
    # The nominal frame (origin and size from PieceCoordinates), pieces where the aligned ones put them, less
    # the mean aligned-nominal offset.
    shift = np.rint((pos - wrong).mean(axis=0)).astype(int)
    assert np.array_equal(m.positions, pos - wrong.min(axis=0) - shift)
    assert m.image.shape == montage_extent(wrong, (120, 150))
    # Inside that frame the pieces agree with the scene: the stitch shows it shifted by the common offset.
    off = -(pos.min(axis=0) - wrong.min(axis=0) - shift)  # scene (x, y) at montage pixel (0, 0), less pos.min
    y0, x0 = pos.min(axis=0)[1] + off[1], pos.min(axis=0)[0] + off[0]
    ys, xs = np.nonzero(m.coverage)
    inside = (ys + y0 >= 0) & (ys + y0 < 200) & (xs + x0 >= 0) & (xs + x0 < 260)
    ratio = m.image[ys[inside], xs[inside]] / image[ys[inside] + y0, xs[inside] + x0]
    assert np.allclose(ratio, np.median(ratio), rtol=1e-4)
    nominal = read_montage(path, aligned=False)
    assert np.array_equal(nominal.positions, wrong - wrong.min(axis=0))


def test_pixel_budget_refused_before_allocating(tmp_path):
    rng = np.random.default_rng(1)
    tiles = [rng.uniform(0, 10, (40, 50)).astype(np.float32) for _ in range(2)]
    # Two tiles 10^6 px apart: a 40 x 1000050 montage would be 4e7 pixels.
    path = write_stack(tmp_path, tiles, [(0, 0), (1_000_000, 0)])
    with pytest.raises(TooLargeError, match="mont.mrc.*max_pixels"):
        read_montage(path, max_pixels=1_000_000)
    with pytest.raises(TooLargeError, match="max_pixels"):
        assemble(tiles, np.array([[0, 0], [1_000_000, 0]]), max_pixels=1_000_000)


def test_gaps_are_filled_and_marked_uncovered():
    rng = np.random.default_rng(2)
    tiles = [np.full((50, 60), 100.0, np.float32), np.full((50, 60), 100.0, np.float32)]
    m = assemble(tiles, np.array([[0, 0], [64, 0]]))  # a 4 px gap between the tiles
    assert m.image.shape == (50, 124)
    assert not m.coverage[:, 60:64].any() and m.coverage[:, :60].all()
    assert np.allclose(m.image[:, 60:64], 100.0)
    assert tile_gains(tiles, np.array([[0, 0], [64, 0]])) == pytest.approx([1.0, 1.0])
    del rng


def test_remove_seams_on_a_mesh():
    from tests.test_mesh import render_mesh

    clean = render_mesh(768, 41.0, 6.0, 13.0, seed=11, dose=300.0)
    seamed = clean.copy()
    seamed[300:302, :] *= 1.8  # bright seam
    seamed[:, 500:503] *= 0.3  # dark seam
    seamed[600:604, :] = 0.0  # gap
    seamed[:, 150:160] = 0.0  # a wide gap
    fixed, seams = remove_seams(seamed)
    rows = {(s.axis, s.start, s.stop) for s in seams}
    assert {(0, 300, 302), (1, 500, 503), (0, 600, 604), (1, 150, 160)} <= rows
    assert len(seams) == 4
    before = np.abs(seamed - clean).mean()
    after = np.abs(fixed - clean).mean()
    assert after < 0.25 * before
    # No seams in a clean mesh, at any angle, thin bars along the axes included.
    assert remove_seams(clean)[1] == ()
    assert remove_seams(render_mesh(768, 30.0, 3.0, 0.0, seed=12, dose=300.0))[1] == ()


# derandomize: a random draw found a tie the assumptions below do not exclude (cf 0.5, step 300, missing {0, 1, 3},
# extra 0.4375, no jitter: seams 292.5 (false), 750, 1350, 1650; a 450 px grid explains three of the four as well
# as the true 300 px one does), so CI runs these 30 fixed draws, as the other property tests do.
@settings(max_examples=30, deadline=None, derandomize=True)
@given(cf=st.floats(0.3, 0.9), step=st.floats(300, 700), missing=st.sets(st.integers(0, 5), max_size=3),
       extra=st.floats(0, 1), jitter=st.lists(st.floats(-2, 2), min_size=6, max_size=6))
@example(cf=0.5, step=300.0, missing={0, 1, 3}, extra=0.5, jitter=[0.0] * 6)  # on a half-step grid too
def test_tile_boundaries_complete_a_regular_grid(cf, step, missing, extra, jitter):
    # A first boundary cf x step into the image (a first tile under a quarter step is not told from the edge).
    c = cf * step
    size = int(c + 5 * step + cf * step)
    true = [c + k * step for k in range(6)]
    seen = [p + j for k, (p, j) in enumerate(zip(true, jitter)) if k not in missing]
    if len(seen) < 2 or not any(b - a < 1.5 * step for a, b in zip(seen, seen[1:])):
        return  # the spacing is then ambiguous (2x the true one fits as well): not asserted
    false_seam = c + (0.3 + 0.4 * extra) * step  # a seam that is not a tile boundary
    for m in (2, 3):
        # a grid of step / m through the false seam and every seen boundary explains them as well: not asserted
        assume(not all(abs((q - false_seam) / (step / m) - round((q - false_seam) / (step / m))) * step / m <= 4.0
                       for q in seen))
    found = tile_boundaries(seen + [false_seam], size)
    assert len(found) == 6
    # Boundaries beyond the seen ones are extrapolated: seams off by up to 2 px over a baseline of B steps put a
    # boundary d steps beyond them up to 2 + 4 d / B px off (cf 0.5, step 300, the first three missing, jitter
    # +2 and -1 on the seen ones: 6 px at the first), plus rounding.
    ks = [k for k in range(6) if k not in missing]
    base = max(ks) - min(ks)
    beyond = np.array([max(min(ks) - k, k - max(ks), 0) for k in range(6)])
    allowed = np.maximum(5.0, 3.0 + 4.0 * beyond / base)
    assert np.all(np.abs(np.array(found) - np.array(true)) <= allowed)


def test_flatten_tile_offsets_on_a_stitched_mesh():
    from tests.test_mesh import render_mesh

    clean = render_mesh(900, 41.0, 6.0, 13.0, seed=21, dose=300.0).astype(np.float32)
    gains = np.array([[1.0, 1.6, 0.7], [1.3, 0.8, 1.1], [0.6, 1.4, 1.0]])
    stitched = clean.copy()
    for i in range(3):
        for j in range(3):
            stitched[300 * i : 300 * (i + 1), 300 * j : 300 * (j + 1)] *= np.float32(gains[i, j])
    # The seams a finder reports at the tile boundaries.
    seams = [Seam(0, 299, 301, 0, 900, 0.2), Seam(0, 599, 601, 0, 900, 0.2), Seam(1, 299, 301, 0, 900, 0.2),
             Seam(1, 599, 601, 0, 900, 0.2)]
    flat, est = flatten_tile_offsets(stitched, seams, pitch_px=41.0)
    assert est.shape == (3, 3)
    true = gains / np.exp(np.log(gains).mean())
    assert np.abs(est / true - 1).max() < 0.12  # from ~14 squares a side of each boundary (ice varies)
    ratio = flat / np.maximum(clean, 1)
    tiles = [np.median(ratio[300 * i + 20 : 300 * i + 280, 300 * j + 20 : 300 * j + 280][clean[300 * i + 20 :
             300 * i + 280, 300 * j + 20 : 300 * j + 280] > 50]) for i in range(3) for j in range(3)]
    assert max(tiles) / min(tiles) < 1.25  # was 1.6 / 0.6 = 2.7
    # No seams: nothing to flatten, the image itself back.
    same, none = flatten_tile_offsets(clean, [], pitch_px=41.0)
    assert same is clean and none is None


def _stitched_3x3(seed: int, angle: float) -> tuple[np.ndarray, np.ndarray, object]:
    """A 1200 px mesh (30 px pitch) cut into 3 x 3 tiles of 400 px, each with its own gain; no seam drawn."""
    from ptolemy_rt.mesh import detect_mesh
    from tests.test_mesh import render_mesh

    clean = render_mesh(1200, 30.0, 5.0, angle, seed=seed, dose=300.0).astype(np.float32)
    gains = np.array([[1.0, 1.5, 0.7], [1.3, 0.8, 1.2], [0.6, 1.4, 1.0]])
    stitched = clean.copy()
    for i in range(3):
        for j in range(3):
            stitched[400 * i : 400 * (i + 1), 400 * j : 400 * (j + 1)] *= np.float32(gains[i, j])
    return stitched, gains, detect_mesh(clean).mesh


@pytest.mark.parametrize(("seed", "angle"), [(1, 13.0), (1, 37.0), (4, 37.0), (5, 37.0)])
def test_tile_steps_find_gain_steps_with_no_seam(seed, angle):
    """A tile boundary with no seam drawn (a gap inside a bar, a plain cut) is a brightness step: tile_steps finds
    the boundaries at 400 and 800 px on both axes, to a third of a pitch."""
    stitched, _, mesh = _stitched_3x3(seed, angle)
    for axis in (0, 1):
        found = [p for p, _ in tile_steps(stitched, mesh, axis)]
        assert len(found) == 2, (axis, found)
        assert np.abs(np.array(found) - [400, 800]).max() <= 10, (axis, found)


def test_tile_steps_give_none_on_data_below_zero():
    """Gain steps are ratios of brightness: a zero-mean (normalised) copy of the stitched mesh, whose ratios mean
    nothing, gives no steps on either axis (the raw one gives both boundaries); a valid mask covering all of the
    image gives the same steps as none."""
    stitched, _, mesh = _stitched_3x3(1, 13.0)
    centred = stitched - np.float32(stitched.mean())
    everywhere = np.ones(stitched.shape, bool)
    for axis in (0, 1):
        assert len(tile_steps(stitched, mesh, axis)) == 2
        assert tile_steps(stitched, mesh, axis, valid=everywhere) == tile_steps(stitched, mesh, axis)
        assert tile_steps(centred, mesh, axis) == []
    # a few negative noise pixels (a dark-subtracted atlas) change nothing (review: one pixel at -1 gave no steps)
    noisy = stitched.copy()
    noisy[::97, ::89] = -3.0
    for axis in (0, 1):
        assert [p for p, _ in tile_steps(noisy, mesh, axis)] == [p for p, _ in tile_steps(stitched, mesh, axis)]


@pytest.mark.parametrize(("seed", "angle"), [(1, 13.0), (4, 37.0), (5, 37.0)])
def test_flatten_tile_offsets_completes_boundaries_from_steps(seed, angle):
    """One seam found (at row 400) of the four tile boundaries: without the mesh's steps the seams give two cells;
    with them (mesh=) every boundary is found and the 3 x 3 gains come back to within 20 %."""
    stitched, gains, mesh = _stitched_3x3(seed, angle)
    seams = [Seam(0, 399, 401, 0, 1200, 0.2)]
    assert flatten_tile_offsets(stitched, seams, pitch_px=30.0)[1].shape == (2, 1)
    _, est = flatten_tile_offsets(stitched, seams, pitch_px=30.0, mesh=mesh)
    assert est.shape == (3, 3)
    true = gains / np.exp(np.log(gains).mean())
    assert np.abs(est / true - 1).max() < 0.2


def test_tile_boundaries_count_only_seams_at_their_grid_boundaries():
    """A seam within a quarter step of the image's edge is no boundary of that grid: the 661 px grid through 672
    and 1333 wins over a 1153 px one through 672 and 1825 that would give one boundary (672) only."""
    assert tile_boundaries([672, 1333, 1825], 2048, merge_px=103, tolerance_px=26) == [672, 1333]


def test_tile_boundaries_finer_grid_where_steps_may_be_missing():
    """Boundaries at 996 and 2986 of a 4096 px stitch: by default the 1990 px grid with no empty boundary (its first
    tile half a spacing wide); finer (gain steps, absent between tiles of like gain): the 995 px grid, whose 1991
    boundary holds nothing, since two of its three boundaries hold one. A finer grid held at two of its five
    boundaries is not taken, nor one through other seams (577 px through 672 and 1825 of the 661 px grid's 672 and
    1333)."""
    assert tile_boundaries([996, 2986], 4096, tolerance_px=10) == [996, 2986]
    assert tile_boundaries([996, 2986], 4096, tolerance_px=10, finer=True) == [996, 1991, 2986]
    assert tile_boundaries([1365, 2730], 4096, tolerance_px=10, finer=True) == [1365, 2730]
    assert tile_boundaries([1000, 3000], 6000, tolerance_px=10, finer=True) == [1000, 3000, 5000]
    assert tile_boundaries([672, 1333, 1825], 2048, merge_px=103, tolerance_px=26, finer=True) == [672, 1333]
    # every boundary of 600 px tiles found, plus a false line at a tile's middle: the edge tiles are a tile wide,
    # so no finer grid (review: 300 px, every tile split in two)
    assert tile_boundaries([600, 1200, 1800, 2400, 900], 3072, tolerance_px=15, merge_px=60,
                           finer=True) == [600, 1200, 1800, 2400]


def test_square_tile_grid_lends_a_spacing_to_the_sparse_axis():
    """Rows found on a 403 px grid, columns at two neighbouring boundaries of it only: the columns take the rows'
    spacing through them (their own positions kept); columns already complete, off the spacing, a single column
    seam, or a lender that is no regular grid of three keep their own."""
    rows = [403, 806, 1209, 1612]
    assert square_tile_grid(rows, [806, 1210], (2048, 2048)) == (rows, [404, 806, 1210, 1612])
    assert square_tile_grid([806, 1210], rows, (2048, 2048)) == ([404, 806, 1210, 1612], rows)
    # two spacings apart is enough; three is not (a 3.4 % non-square tile drifts 41 px over three)
    assert square_tile_grid(rows, [403, 1210], (2048, 2048)) == (rows, [403, 806, 1210, 1612])
    assert square_tile_grid(rows, [403, 1612], (2048, 2048)) == (rows, [403, 1612])
    assert square_tile_grid(rows, rows, (2048, 2048)) == (rows, rows)
    # rectangular tiles: two column boundaries 600 px apart are off a 403 px spacing
    assert square_tile_grid(rows, [600, 1200], (2048, 2048)) == (rows, [600, 1200])
    assert square_tile_grid([400, 800, 1500], [800, 1200], (2048, 2048)) == ([400, 800, 1500], [800, 1200])
    assert square_tile_grid([400, 800], [800, 1200], (2048, 2048)) == ([400, 800], [800, 1200])
    assert square_tile_grid(rows, [], (2048, 2048)) == (rows, [])
    # one seam says nothing about the columns' spacing (review: square tiles are assumed)
    assert square_tile_grid(rows, [1210], (2048, 2048)) == (rows, [1210])
    # the other axis's own extent: a wider stitch gets more boundaries, none within a quarter spacing of its edge
    assert square_tile_grid(rows, [806, 1209], (2048, 3000)) == (rows, [403, 806, 1209, 1612, 2015, 2418, 2821])


def test_square_tile_grid_replaces_a_grid_that_misses_its_own_seams():
    """Rows seamed at 801 and 1200 whose grid went through brightness steps (346, 871, 1396: 525 px, holding neither
    seam), columns on a 400 px grid: the rows take the 400 px grid through their seams, also where their own grid
    has as many boundaries as the lent one (the `missed` branch alone). Seams off the columns' spacing (rectangular
    tiles), or a grid that holds its seams, are kept."""
    cols = [402, 802, 1202, 1602]
    assert square_tile_grid([346, 871, 1396], cols, (2048, 2048), tolerance_px=26,
                            seams=([801, 1200], [402, 802])) == ([400, 801, 1200, 1600], cols)
    assert square_tile_grid([346, 871, 1396, 1921], cols, (2048, 2048), tolerance_px=26,
                            seams=([801, 1200], [402, 802])) == ([400, 801, 1200, 1600], cols)
    assert square_tile_grid([600, 1200], cols, (2048, 2048), tolerance_px=26,
                            seams=([600, 1200], [402, 802])) == ([600, 1200], cols)
    assert square_tile_grid([401, 801, 1201, 1601], cols, (2048, 2048), tolerance_px=26,
                            seams=([801, 1200], [402, 802])) == ([401, 801, 1201, 1601], cols)


def test_square_tile_grid_keeps_correct_and_rectangular_grids():
    """Review findings: a false seam, a seam at the image's edge, a rectangular tile's seams that fit the other
    axis's spacing, or a lender whose grid holds fewer than two drawn seams never replace an axis's grid."""
    grid = [400, 800, 1200, 1600]
    # one false seam on a complete 400 px grid (it gave 200, 600, ..., 1800)
    assert square_tile_grid(grid, grid, (2048, 2048), tolerance_px=26, seams=(grid, [1000])) == (grid, grid)
    # a seam within a quarter spacing of the edge (1990, on the grid through 800 and 1200 at 10 px) shifted it 10 px
    assert square_tile_grid(grid, grid, (2048, 2048), tolerance_px=26,
                            seams=(grid, [800, 1200, 1990])) == (grid, grid)
    # rectangular tiles: 300 px rows, 1200 px columns complete, their seams on the rows' spacing four apart
    rows = [300, 600, 900, 1200, 1500, 1800]
    assert square_tile_grid(rows, [400, 1600], (2048, 2048), tolerance_px=26,
                            seams=(rows, [400, 1600])) == (rows, [400, 1600])
    # 3.4 % non-square tiles (400 x 413.6 px): two seams a spacing apart are 13.6 px off the rows' spacing
    assert square_tile_grid(grid, [414, 828], (2048, 2048), tolerance_px=26,
                            seams=(grid, [414, 828])) == (grid, [414, 828])
    # the lender's grid from brightness steps (one drawn seam on it) lends nothing
    assert square_tile_grid(grid, [800], (2048, 2048), tolerance_px=26,
                            seams=([800], [800, 1200])) == (grid, [800])


@settings(max_examples=80, deadline=None)
@given(step=st.integers(200, 1100), off=st.integers(0, 1099), off2=st.integers(0, 1099),
       h=st.integers(1024, 4096), w=st.integers(1024, 4096), data=st.data())
def test_square_tile_grid_properties(step, off, off2, h, w, data):
    """Complete grids of one spacing on both axes (their boundaries their seams) are kept; the result is a fixed
    point (the same call on its output returns it)."""
    def complete(o: int, size: int) -> list[int]:
        return [p for p in range(o % step, size, step) if 0.25 * step <= p <= size - 0.25 * step]

    rows, cols = complete(off, h), complete(off2, w)
    assert square_tile_grid(rows, cols, (h, w), tolerance_px=26) == (rows, cols)
    srows = sorted(data.draw(st.lists(st.sampled_from(rows), unique=True))) if rows else []
    scols = sorted(data.draw(st.lists(st.integers(0, w), max_size=4, unique=True)))
    some = (srows, scols)
    once = square_tile_grid(rows, scols, (h, w), tolerance_px=26, seams=some)
    assert square_tile_grid(*once, (h, w), tolerance_px=26, seams=some) == once


def test_flatten_tile_offsets_lends_the_row_grid_to_columns():
    """A 4 x 4 stitch of 400 px tiles with seams at every row boundary and at two neighbouring column boundaries
    (the third between tiles of unlike gain, with nothing drawn): the columns take the rows' grid, so all 16 gains
    come back to within 20 % (the columns' two seams alone gave 4 x 3 cells)."""
    from tests.test_mesh import render_mesh

    clean = render_mesh(1600, 41.0, 6.0, 13.0, seed=21, dose=300.0).astype(np.float32)
    gains = np.exp(np.random.default_rng(3).normal(0, 0.35, (4, 4)))
    stitched = clean.copy()
    for i in range(4):
        for j in range(4):
            stitched[400 * i : 400 * (i + 1), 400 * j : 400 * (j + 1)] *= np.float32(gains[i, j])
    seams = [Seam(0, 399, 401, 0, 1600, 0.2), Seam(0, 799, 801, 0, 1600, 0.2), Seam(0, 1199, 1201, 0, 1600, 0.2),
             Seam(1, 399, 401, 0, 1600, 0.2), Seam(1, 799, 801, 0, 1600, 0.2)]
    _, est = flatten_tile_offsets(stitched, seams, pitch_px=41.0)
    assert est.shape == (4, 4)
    true = gains / np.exp(np.log(gains).mean())
    assert np.abs(est / true - 1).max() < 0.2


@pytest.mark.slow
def test_montage_square_classes_with_unseamed_tile_boundaries():
    """A held-out montage (benchmarks/atlas_sets.py, 3 x 3 tiles of 2048 px, per-tile gains, seams at only some
    boundaries): ordinary ice squares read "ok" in at least 80 % of cases (26 % when only seams bounded tiles)."""
    from benchmarks.atlas_sets import _case, make_heldout_atlas
    from benchmarks.squares_accuracy_real import match
    from ptolemy_rt import find_squares

    case = _case("montage", 7_903_002, 2, None)
    image, truth, _ = make_heldout_atlas(case)
    res = find_squares(image, models=False)
    pred = np.array([(s.x, s.y) for s in res.squares])
    idx = match(pred, truth.centers, 0.35 * truth.pitch_px)
    found = (idx >= 0) & truth.counted
    kinds = np.array(truth.kinds)[found]
    classes = np.array([res.squares[i].square_class for i in idx[found]])
    assert (kinds == "ok").sum() > 200
    assert (classes[kinds == "ok"] == "ok").mean() >= 0.8
    assert (classes[kinds == "thick"] == "thick").mean() >= 0.95


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(1, 6), cols=st.integers(1, 40), seed=st.integers(0, 2**32 - 1),
       ties=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]), nan=st.booleans())
def test_median_rows_is_numpys_median(rows, cols, seed, ties, dtype, nan):
    """The seam search's fast row median gives np.median's values to the bit: odd and even lengths, ties,
    both float widths, NaN rows."""
    from ptolemy_rt.montage import _median_rows

    rng = np.random.default_rng(seed)
    d = (rng.integers(-3, 4, (rows, cols)) if ties else rng.standard_normal((rows, cols)) * 100).astype(dtype)
    if nan:
        d[rng.integers(rows), rng.integers(cols)] = np.nan
    want = np.median(d, axis=1)
    got = _median_rows(d)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    if not nan:
        np.testing.assert_array_equal(_median_rows(d, finite=True), want)


@pytest.mark.parametrize("shape", [(260, 300), (300, 2100), (2100, 260)])
def test_row_residual_matches_the_plain_medians(shape):
    """The residual from contiguous per-phase samples equals the per-shift np.median over strided views (the
    former code), for both axes, shifts either way, and sample steps of 1 and 2."""
    from ptolemy_rt.montage import _row_residual

    rng = np.random.default_rng(7)
    img = (rng.standard_normal(shape) * 10 + 100).astype(np.float32)
    img[:, 5] = np.inf if shape == (260, 300) else img[:, 5]  # a non-finite column: the checked path
    h, w = img.shape
    shifts = [(17, 5), (-17, -5), (34, -11), (-34, 11), (3, 40), (-3, -40)]
    for axis in (0, 1):
        want = _plain_row_residual(img, shifts, axis)
        got = _row_residual(img, shifts, axis)
        np.testing.assert_array_equal(got, want)
        assert got.tobytes() == want.tobytes()


def _plain_row_residual(img: np.ndarray, shifts: list[tuple[int, int]], axis: int) -> np.ndarray:
    """The seam statistic as defined: per line, np.median over every step-th sample of the image minus its shifted
    copy, for each shift on its own, then the NaN-median over the shifts (where a shift fits either way)."""
    h, w = img.shape
    step = max(1, (w if axis == 0 else h) // 1024)
    n = h if axis == 0 else w
    per = np.full((len(shifts), n), np.nan)
    for k, (dy, dx) in enumerate(shifts):
        r0, r1 = max(0, -dy), min(h, h - dy)
        c0, c1 = max(0, -dx), min(w, w - dx)
        if r1 - r0 < 8 or c1 - c0 < 8:
            continue
        with np.errstate(invalid="ignore"):
            if axis == 0:
                per[k, r0:r1] = np.median(img[r0:r1, c0:c1:step] - img[r0 + dy : r1 + dy, c0 + dx : c1 + dx : step],
                                          axis=1)
            else:
                per[k, c0:c1] = np.median(img[r0:r1:step, c0:c1] - img[r0 + dy : r1 + dy : step, c0 + dx : c1 + dx],
                                          axis=0)
    fin = np.isfinite(per)
    both = fin[0::2].any(axis=0) & fin[1::2].any(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.where(both, np.nanmedian(per, axis=0), np.nan)


@examples(20, settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow]),
          given(h=st.integers(24, 140), w=st.integers(24, 140), seed=st.integers(0, 2**32 - 1), ties=st.booleans(),
                bad=st.sampled_from(["none", "nan", "inf"]), axis=st.sampled_from([0, 1]),
                vectors=st.lists(st.tuples(st.integers(-60, 60), st.integers(-60, 60)), min_size=1, max_size=3),
                paired=st.booleans(), long=st.booleans()))
def test_row_residual_is_the_plain_statistic_to_the_bit(h, w, seed, ties, bad, axis, vectors, paired, long):
    """The seam search's residual (each -v shift's medians taken from its +v twin, differences in one scratch
    array) equals the per-shift np.median definition byte for byte: shifts in +-pairs or not, shifts that do not
    fit, integer counts (ties, zero medians) or noise, NaN and inf pixels."""
    from ptolemy_rt.montage import _row_residual

    rng = np.random.default_rng(seed)
    if long:  # lines over 2048 px: every second (third) pixel sampled
        h, w = (h, 2048 + 16 * w) if axis == 0 else (2048 + 16 * h, w)
    img = (rng.integers(0, 6, (h, w)) if ties else rng.standard_normal((h, w)) * 10 + 100).astype(np.float32)
    if bad != "none":
        img[rng.integers(h), rng.integers(w)] = np.nan if bad == "nan" else np.inf
    shifts = [s for dy, dx in vectors for s in ((dy, dx), (-dy, -dx))] if paired else list(vectors)
    if len(shifts) % 2:
        shifts.append((0, 0))  # the residual pairs the list's entries (+k, -k)
    want = _plain_row_residual(img, shifts, axis)
    got = _row_residual(img, shifts, axis)
    assert got.dtype == want.dtype and got.tobytes() == want.tobytes()


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_row_residual_on_threads_is_the_same_bits(monkeypatch, threads):
    """Lines cut into spans, one per thread, each in its own part of the scratch array: the plain statistic's
    bytes whatever the thread count (lines long enough to be cut, samples every second pixel)."""
    import ptolemy_rt.montage as montage

    rng = np.random.default_rng(11)
    img = rng.integers(0, 2000, (900, 2100)).astype(np.float32)
    shifts = [(37, 12), (-37, -12), (74, 24), (-74, -24), (-20, 45), (20, -45)]
    from ptolemy_rt import _workers

    monkeypatch.setattr(_workers, "_cpus", lambda: threads)
    monkeypatch.setattr(_workers, "workers", lambda: threads)
    for axis in (0, 1):
        want = _plain_row_residual(img, shifts, axis)
        assert montage._row_residual(img, shifts, axis).tobytes() == want.tobytes()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), h=st.integers(20, 2500), w=st.integers(20, 2500), axis=st.sampled_from([0, 1]),
       data=st.data())
def test_band_means_over_a_whole_boundary_are_each_cells(seed, h, w, axis, data):
    """flatten_tile_offsets takes each boundary's band means (float64, per position) along its whole length once
    and gives each cell its part: the same bits as the band means of the cell's part alone (what it computed
    per cell before), for row and column boundaries (the latter over the transposed view)."""
    rng = np.random.default_rng(seed)
    img = (rng.random((h, w), dtype=np.float32) * 3000).astype(np.float32)
    view = img if axis == 0 else img.T
    n, m = view.shape
    n0 = data.draw(st.integers(0, n - 2))
    n1 = data.draw(st.integers(n0 + 1, n))
    lo = data.draw(st.integers(0, m - 1))
    hi = data.draw(st.integers(lo + 1, m))
    whole = view[n0:n1].mean(axis=0, dtype=np.float64)[lo:hi]
    assert whole.tobytes() == view[n0:n1, lo:hi].mean(axis=0, dtype=np.float64).tobytes()


def test_flatten_in_place_is_the_same_image():
    """in_place=True divides the caller's float32 image itself: the same bytes as the copy it returns otherwise."""
    rng = np.random.default_rng(4)
    img = rng.poisson(800.0, (600, 600)).astype(np.float32)
    img[:300, :300] *= np.float32(1.4)
    img[300:, 300:] *= np.float32(0.7)
    seams = [Seam(0, 299, 301, 0, 600, 0.3), Seam(1, 299, 301, 0, 600, 0.3)]
    want, gains = flatten_tile_offsets(img, seams, pitch_px=30.0)
    assert want is not img and gains is not None
    mine = img.copy()
    got, gains2 = flatten_tile_offsets(mine, seams, pitch_px=30.0, in_place=True)
    assert got is mine and got.tobytes() == want.tobytes() and gains2.tobytes() == gains.tobytes()
    # Not float32 (or not writeable): a new image, the input untouched.
    ro = img.copy()
    ro.flags.writeable = False
    assert flatten_tile_offsets(ro, seams, pitch_px=30.0, in_place=True)[0].tobytes() == want.tobytes()


def test_piece_coordinates_spread_far_beyond_the_pieces_are_refused(tmp_path):
    """Two 64 px pieces 16,000 px apart (a 33 kB stack and a lying .mdoc) were assembled into a 1 GB image:
    6.6 GB of memory and a minute of gap filling. Refused from the coordinates, naming the .mdoc."""
    import mrcfile

    from ptolemy_rt.errors import CorruptFileError
    from ptolemy_rt.io import read_image

    path = tmp_path / "mont.mrc"
    with mrcfile.new(path) as m:
        m.set_data(np.ones((2, 64, 64), np.float32))
    mdoc = tmp_path / "mont.mrc.mdoc"
    mdoc.write_text("[ZValue = 0]\nPieceCoordinates = 0 0 0\n[ZValue = 1]\nPieceCoordinates = 16000 16000 0\n")
    with pytest.raises(CorruptFileError, match="mont.mrc.mdoc.*times their area"):
        read_image(path)
    mdoc.write_text("[ZValue = 0]\nPieceCoordinates = 0 0 0\n[ZValue = 1]\nPieceCoordinates = 60 0 0\n")
    assert read_image(path).shape == (64, 124)
    # A thin diagonal polygon montage (20 pieces of 128 px, each 120 px right and down of the last) spreads over
    # 18 times its pieces' area: a layout SerialEM makes, accepted (review: refused at a limit of 16).
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.ones((20, 128, 128), np.float32))
    mdoc.write_text("".join(f"[ZValue = {k}]\nPieceCoordinates = {120 * k} {120 * k} 0\n" for k in range(20)))
    assert read_image(path).shape == (2408, 2408)


def test_read_montage_refuses_a_lying_header_before_reading(tmp_path):
    """Fuzz campaign 12 review: read_montage reads the stack (mrcfile.open, not a memory map, since a file cut short
    while mapped killed the process), and mrcfile allocates what the header claims before it reads: the claim is
    checked against the budget and the file's size first."""
    import tracemalloc

    path = tmp_path / "m.mrc"
    with mrcfile.new(path) as m:
        m.set_data(np.ones((2, 32, 32), np.float32))
    (tmp_path / "m.mrc.mdoc").write_text("[ZValue = 0]\nPieceCoordinates = 0 0 0\n\n[ZValue = 1]\n"
                                         "PieceCoordinates = 32 0 0\n")
    raw = bytearray(path.read_bytes())
    raw[8:12] = np.int32(60000).tobytes()  # nz: 60000 sections of 32x32, 245 MB claimed
    path.write_bytes(bytes(raw))
    tracemalloc.start()
    try:
        with pytest.raises(CorruptFileError, match=r"m\.mrc: truncated"):
            read_montage(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20
    raw[8:12] = np.int32(1 << 20).tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(TooLargeError, match="over the budget"):
        read_montage(path)


@settings(max_examples=80, deadline=None)
@given(pixel=st.floats(2.0, 5000.0), other=st.floats(2.0, 5000.0), in_header=st.booleans(),
       n=st.integers(1, 6), mont_first=st.booleans(), crlf=st.booleans())
def test_a_mont_section_is_neither_a_piece_nor_the_header(tmp_path_factory, pixel, other, in_header, n, mont_first,
                                                          crlf):
    """A SerialEM montage .mdoc: header keys, [T = ...] titles, one [ZValue = n] block per piece, and a
    [MontSection = n] block per montage with the montage's own keys (FullMontSize, its stage position; the key
    names are SerialEM's, KStoreADOC.h). Its keys went into the header, and its PixelSpacing replaced the
    header's: montage.read_montage's pixel size then differed from metadata.mdoc_pixel_size's for the same file."""
    from ptolemy_rt.metadata import mdoc_pixel_size

    assume(abs(other - pixel) > 1e-3 * pixel)
    head = (f"PixelSpacing = {pixel!r}\n" if in_header else "") + "ImageFile = LMM.mrc\nImageSize = 1024 1024\n" \
        "Montage = 1\n\n[T = SerialEM: Digitized on a Krios    07-Dec-26  10:00:00    ]\n\n" \
        "[T =     Tilt axis angle = 85.3, binning = 4  spot = 8  camera = 0]\n\n"
    mont = f"[MontSection = 0]\nTiltAngle = 0\nPixelSpacing = {other!r}\nMagnification = 6000\n" \
        "FullMontSize = 2900 2900\n\n"
    pieces = "".join(f"[ZValue = {i}]\nPieceCoordinates = {940 * (i % 3)} {940 * (i // 3)} 0\n"
                     f"PixelSpacing = {pixel!r}\nMagnification = 135\n\n" for i in range(n))
    text = head + (mont + pieces if mont_first else pieces + mont)
    if crlf:
        text = text.replace("\n", "\r\n")
    md = parse_mdoc(text, "LMM.mrc.mdoc")
    assert md.pixel_size_A == pytest.approx(pixel)
    assert [s.z for s in md.sections] == list(range(n)) and all(s.piece is not None for s in md.sections)
    assert "FullMontSize" not in md.header and md.header.get("ImageSize") == "1024 1024"
    path = tmp_path_factory.mktemp("mdoc") / "LMM.mrc.mdoc"
    path.write_bytes(text.encode())
    assert mdoc_pixel_size(path) == pytest.approx(md.pixel_size_A)


def test_aligned_vs_coordinates_win_when_a_section_has_both():
    """A section with both AlignedPieceCoords and AlignedPieceCoordsVS (in either order): the VS ones are taken,
    as public readers of SerialEM montages take them; the plain ones were taken before."""
    for order in (("AlignedPieceCoords = 1 2 0", "AlignedPieceCoordsVS = 5 -7 0"),
                  ("AlignedPieceCoordsVS = 5 -7 0", "AlignedPieceCoords = 1 2 0")):
        md = parse_mdoc("PixelSpacing = 100\n[ZValue = 0]\nPieceCoordinates = 0 0 0\n" + "\n".join(order) + "\n")
        assert md.sections[0].aligned == (5, -7, 0)
    md = parse_mdoc("[ZValue = 0]\nPieceCoordinates = 0 0 0\nAlignedPieceCoords = 1 2 0\n")
    assert md.sections[0].aligned == (1, 2, 0)


def test_a_stack_of_several_montages_says_which_one_it_reads(tmp_path):
    """A file of several montages (PieceCoordinates z = 0, 1: SerialEM appends montage maps to the open file)
    read without a frame: the first, with a warning naming how many there are; the second on request."""
    tile = np.arange(64 * 64, dtype=np.float32).reshape(64, 64) % 97
    with mrcfile.new(tmp_path / "MMM.mrc") as m:
        m.set_data(np.stack([tile, tile + 1, tile + 2, tile + 3]))
    (tmp_path / "MMM.mrc.mdoc").write_text("PixelSpacing = 80\n" + "".join(
        f"[ZValue = {z}]\nPieceCoordinates = {48 * (z % 2)} 0 {z // 2}\n" for z in range(4)))
    with pytest.warns(UserWarning, match="a stack of 2 montages .*using montage 0"):
        first = read_montage(tmp_path / "MMM.mrc", flatten=False)
    second = read_montage(tmp_path / "MMM.mrc", frame=1, flatten=False)
    assert first.image.shape == second.image.shape == (64, 112)
    assert second.image[0, 0] == pytest.approx(first.image[0, 0] + 2)


def test_a_mdoc_of_other_sized_pieces_is_refused(tmp_path):
    """A montage stack binned after SerialEM wrote it (newstack -bin 2) with the original .mdoc beside it: the
    piece coordinates are the unbinned ones and scattered the binned pieces over twice the extent, silently (a
    gapped, garbled atlas). SerialEM's ImageSize (its pieces' size) tells: refused, naming both sizes."""
    tile = np.ones((32, 32), np.float32)
    with mrcfile.new(tmp_path / "LMM.mrc") as m:
        m.set_data(np.stack([tile, tile * 2]))
    pieces = "[ZValue = 0]\nPieceCoordinates = 0 0 0\n\n[ZValue = 1]\nPieceCoordinates = 56 0 0\n"
    (tmp_path / "LMM.mrc.mdoc").write_text("PixelSpacing = 100\nImageSize = 64 64\nMontage = 1\n\n" + pieces)
    with pytest.raises(CorruptFileError, match=r"ImageSize 64 x 64 .*\(32 x 32\)"):
        read_montage(tmp_path / "LMM.mrc")
    (tmp_path / "LMM.mrc.mdoc").write_text("PixelSpacing = 100\nImageSize = 32 32\nMontage = 1\n\n" + pieces)
    assert read_montage(tmp_path / "LMM.mrc", flatten=False).image.shape == (32, 88)


@pytest.mark.parametrize("coordinate", ["1e308", "inf", "-inf", "nan", "2147483648", "-3e9"])
def test_piece_coordinates_no_writer_gives_name_the_mdoc(tmp_path, coordinate):
    """Found by hand (fuzz13): PieceCoordinates = 1e308 (or inf) raised OverflowError, which read_image turned into
    "NAME.mrc: not a readable image (OverflowError: Python int too large to convert to C long)": the stack named,
    not the .mdoc holding the lie. Coordinates beyond SerialEM's 32 bits are refused naming the .mdoc."""
    from ptolemy_rt.io import read_image

    tiles = [np.full((64, 64), 5, np.float32)] * 2
    path = write_stack(tmp_path, tiles, [(0, 0), (coordinate, 0)])
    with pytest.raises(CorruptFileError, match=r"mont\.mrc\.mdoc: PieceCoordinates = .* (is not|not a pixel)"):
        read_image(path)


def test_a_montage_of_more_pieces_than_assembled_is_refused_naming_the_mdoc(tmp_path, monkeypatch):
    """Hand-made fuzz 14: 2304 pieces of 32x32 px (a 4.7 MB stack, 48x48 montage) took 165 s and 700 MB, 4096 more
    than 5 minutes and 2 GB, and an 8 MB .mdoc names 180,000 pieces. Over montage.MAX_PIECES: refused (exit 2),
    before the stack is read; at the limit it is read."""
    from ptolemy_rt import montage
    from ptolemy_rt.io import read_image

    rng = np.random.default_rng(3)
    tiles = [rng.uniform(10, 20, (16, 16)).astype(np.float32) for _ in range(9)]
    path = write_stack(tmp_path, tiles, [(12 * (k % 3), 12 * (k // 3)) for k in range(9)])
    monkeypatch.setattr(montage, "MAX_PIECES", 8)
    with pytest.raises(TooLargeError, match=r"mont\.mrc\.mdoc: montage frame 0 has 9 pieces, more than the 8 "):
        read_image(path)
    # unflattened, the pieces are only pasted: no limit (assemble's flatten=False, as its refusal advises)
    assert montage.read_montage(path, flatten=False).image.shape == (40, 40)
    monkeypatch.setattr(montage, "MAX_PIECES", 9)
    assert read_image(path).shape == (40, 40)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 30), tile=st.integers(4, 24), spread=st.integers(4, 120), seed=st.integers(0, 2**16))
def test_overlapping_pairs_are_the_double_loop_s(n, tile, spread, seed):
    """tile_gains' pairs, one array operation per tile, are those (and in the order) of the double loop's test."""
    from ptolemy_rt.montage import _overlap, _overlapping_pairs

    rng = np.random.default_rng(seed)
    pos = rng.integers(-spread, spread, (n, 2))
    shape = (tile, int(rng.integers(4, 24)))
    want = [(i, j) for i in range(n) for j in range(i + 1, n) if _overlap(pos[i], pos[j], shape) is not None]
    assert list(_overlapping_pairs(pos, shape)) == want


@pytest.mark.parametrize("layout", ["grid", "scattered"])
def test_gains_of_many_pieces_by_the_normal_equations_are_lstsq_s(monkeypatch, layout):
    """Over montage.LSTSQ_PIECES the gains are solved by the normal equations (lstsq's SVD costs the cube of the
    pieces): the same gains, to rounding."""
    from ptolemy_rt import montage

    rng = np.random.default_rng(4)
    side = 7
    tiles = [rng.uniform(50, 150, (24, 24)).astype(np.float32) * rng.uniform(0.7, 1.4) for _ in range(side * side)]
    pos = (np.array([(20 * (k % side), 20 * (k // side)) for k in range(side * side)]) if layout == "grid" else
           rng.integers(0, 200, (side * side, 2)))
    by_lstsq = tile_gains(tiles, pos)
    monkeypatch.setattr(montage, "LSTSQ_PIECES", 0)
    assert np.allclose(tile_gains(tiles, pos), by_lstsq, rtol=1e-9, atol=0)


def test_pieces_piled_on_each_other_are_refused_naming_the_mdoc(tmp_path, monkeypatch):
    """Hand-made fuzz 14: an 8 MB stack of 1024 pieces of 64 px whose .mdoc puts them all at one place took 13 GB
    (lstsq's design matrix of 523,776 overlapping pairs) and minutes. More than montage.MAX_OVERLAPS overlapping
    pairs a piece (and montage.OVERLAPS_FLOOR): refused, naming the .mdoc; a grid of the same pieces is read."""
    from ptolemy_rt import montage
    from ptolemy_rt.io import read_image

    rng = np.random.default_rng(5)
    tiles = [rng.uniform(10, 20, (16, 16)).astype(np.float32) for _ in range(12)]
    monkeypatch.setattr(montage, "OVERLAPS_FLOOR", 8)
    monkeypatch.setattr(montage, "MAX_OVERLAPS", 3)  # 36 pairs: a grid of 12 (29 with its diagonals), not a pile
    piled = write_stack(tmp_path, tiles, [(k % 3, k % 2) for k in range(12)], name="piled.mrc")
    with pytest.raises(CorruptFileError, match=r"piled\.mrc\.mdoc: the piece coordinates pile 12 pieces of 16x16 px "
                                               r"on each other \(66 overlapping pairs, 11 a piece\)"):
        read_image(piled)
    grid = write_stack(tmp_path, tiles, [(12 * (k % 4), 12 * (k // 4)) for k in range(12)], name="grid.mrc")
    assert read_image(grid).shape == (40, 52)


def test_assemble_refuses_piled_tiles_as_read_montage_does(monkeypatch):
    """Leftover of robust14: the pile-up check lived in read_montage alone, so a library caller of assemble() with
    tiles piled on each other got seconds of tile_gains (and, at 1024 pieces, gigabytes) instead of a refusal. The
    same check (montage._check_pile) refuses them there, naming the montage; unflattened, they are pasted as they
    are (no gains are solved), and a grid of the same tiles is assembled."""
    from ptolemy_rt import montage
    from ptolemy_rt.montage import assemble

    rng = np.random.default_rng(7)
    tiles = [rng.uniform(10, 20, (16, 16)).astype(np.float32) for _ in range(12)]
    monkeypatch.setattr(montage, "OVERLAPS_FLOOR", 8)
    monkeypatch.setattr(montage, "MAX_OVERLAPS", 3)
    piled = np.array([(k % 3, k % 2) for k in range(12)])
    with pytest.raises(CorruptFileError, match=r"^heap: the piece coordinates pile 12 pieces of 16x16 px on each "
                                               r"other \(66 overlapping pairs, 11 a piece\)"):
        assemble(tiles, piled, name="heap")
    assert assemble(tiles, piled, flatten=False).image.shape == (17, 18)
    grid = np.array([(12 * (k % 4), 12 * (k // 4)) for k in range(12)])
    assert assemble(tiles, grid).image.shape == (40, 52)


def test_read_montage_checks_the_pile_before_reading_the_pieces(tmp_path, monkeypatch):
    """read_montage(flatten=True) checks the pieces' overlaps before the pieces are read (review of robust15, N3),
    and assemble checks them again (a private flag that skipped it saved milliseconds: review whole15). The image is
    the same; assemble() called by itself checks too."""
    from ptolemy_rt import montage

    rng = np.random.default_rng(8)
    tiles = [rng.uniform(10, 20, (16, 16)).astype(np.float32) for _ in range(12)]
    grid = [(12 * (k % 4), 12 * (k // 4)) for k in range(12)]
    path = write_stack(tmp_path, tiles, grid, name="grid.mrc")
    checks = []
    check = montage._check_pile
    monkeypatch.setattr(montage, "_check_pile", lambda *a: checks.append(a[2]) or check(*a))
    image = montage.read_montage(path).image
    assert checks == [f"{path}.mdoc", str(path)]
    assert np.array_equal(montage.assemble(tiles, np.array(grid), name="g").image, image) and checks[2:] == ["g"]


def test_a_section_given_for_two_pieces_is_refused_naming_the_mdoc(tmp_path):
    """Hand-made fuzz 14: a .mdoc giving the sections of a 16 MB stack (two of 2048 px) for 196 pieces took 4 GB, a
    float32 copy a piece: the stack's own size no longer bounded the montage's pieces. Refused, naming the .mdoc."""
    from ptolemy_rt.io import read_image

    rng = np.random.default_rng(6)
    tiles = [rng.uniform(10, 20, (16, 16)).astype(np.float32) for _ in range(3)]
    path = write_stack(tmp_path, tiles, [(0, 0), (12, 0), (24, 0)])
    mdoc = tmp_path / "mont.mrc.mdoc"
    mdoc.write_text(mdoc.read_text().replace("[ZValue = 2]", "[ZValue = 0]"))
    with pytest.raises(CorruptFileError, match=r"mont\.mrc\.mdoc: ZValue 0 is more than one piece of montage frame 0"):
        read_image(path)


def test_assemble_refuses_more_pieces_than_it_solves_gains_for():
    from ptolemy_rt.montage import MAX_PIECES, assemble

    n = MAX_PIECES + 1
    tiles = np.ones((n, 4, 4), dtype=np.float32)
    pos = np.stack([np.arange(n) % 100 * 4, np.arange(n) // 100 * 4], axis=1)
    with pytest.raises(TooLargeError, match="more than the"):
        assemble(tiles, pos, name="many")
    assert assemble(tiles, pos, flatten=False, fill_gaps=False).image.shape == (41 * 4, 400)


def test_gains_by_normal_equations_without_a_prior_take_the_least_norm_answer():
    from ptolemy_rt.montage import _gains_normal

    # two groups of tiles with no pair between them and no prior: singular normal equations
    sol = _gains_normal(4, [(0, 1, 0.2), (2, 3, -0.4)], [0.0] * 4, 0.0)
    assert np.all(np.isfinite(sol)) and abs(sol.mean()) < 1e-12
    assert sol[0] - sol[1] == pytest.approx(0.2) and sol[2] - sol[3] == pytest.approx(-0.4)
