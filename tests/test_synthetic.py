"""Synthetic generators (ptolemy_rt.synthetic) and the shipped default model set (models/)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptolemy_rt.synthetic import (
    HOLE_DEFECTS,
    LATTICE_KINDS,
    SQUARE_KINDS,
    AtlasTruth,
    MedmagTruth,
    lattice_basis,
    make_atlas,
    make_medmag,
)

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
SMALL_ATLAS = (320, 384)
SMALL_MEDMAG = (256, 352)


def _same_truth(a, b) -> None:
    assert type(a) is type(b)
    for key, value in vars(a).items():
        other = getattr(b, key)
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, other)
        else:
            assert value == other, key


# ------------------------------------------------------------------------------------------------- atlas


def test_atlas_default_shape_dtype_and_range():
    image, truth = make_atlas(0)
    assert image.shape == (1024, 1024) and image.dtype == np.int16
    assert image.min() >= 0
    assert isinstance(truth, AtlasTruth) and truth.shape == (1024, 1024)
    assert truth.n > 10
    # Bars are dark and squares bright, as in a real atlas.
    bars = np.percentile(image, 10)
    inside = [image[int(round(y)), int(round(x))] for x, y in truth.centers[truth.collectable]]
    assert np.median(inside) > 4 * max(bars, 1)


def test_atlas_is_deterministic():
    a, ta = make_atlas(5, SMALL_ATLAS)
    b, tb = make_atlas(5, SMALL_ATLAS)
    np.testing.assert_array_equal(a, b)
    _same_truth(ta, tb)
    c, _ = make_atlas(6, SMALL_ATLAS)
    assert not np.array_equal(a, c)


def _check_atlas_truth(truth: AtlasTruth) -> None:
    n = truth.n
    assert truth.vertices.shape == (n, 4, 2) and truth.centers.shape == (n, 2)
    assert len(truth.kinds) == n and set(truth.kinds) <= set(SQUARE_KINDS)
    np.testing.assert_allclose(truth.vertices.mean(axis=1), truth.centers, atol=1e-6)
    # Each outline is a square of the stated side, its first edge along the grid angle.
    edges = np.diff(np.concatenate([truth.vertices, truth.vertices[:, :1]], axis=1), axis=1)
    np.testing.assert_allclose(np.hypot(edges[..., 0], edges[..., 1]), truth.side_px, rtol=1e-6)
    if n:
        first = np.degrees(np.arctan2(-edges[:, 0, 1], edges[:, 0, 0])) % 90
        assert np.allclose(np.minimum(abs(first - truth.angle_deg), 90 - abs(first - truth.angle_deg)), 0, atol=1e-6)
    assert np.all((truth.visible_fraction > 0) & (truth.visible_fraction <= 1))
    # Collectable means whole, ok-kind and moderate ice: never broken, covered, cut...
    kinds = np.array(truth.kinds)
    assert np.all(kinds[truth.collectable] == "ok")
    assert np.all(truth.visible_fraction[truth.collectable] >= 0.98)
    assert np.all(truth.detectable <= (kinds != "covered"))
    h, w = truth.shape
    c = truth.centers
    assert np.all((c[:, 0] > -truth.pitch_px) & (c[:, 0] < w + truth.pitch_px))
    assert np.all((c[:, 1] > -truth.pitch_px) & (c[:, 1] < h + truth.pitch_px))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**63 - 1), rows=st.integers(96, 400), cols=st.integers(96, 400))
def test_atlas_truth_consistent(seed, rows, cols):
    image, truth = make_atlas(seed, (rows, cols))
    assert image.shape == (rows, cols) and image.dtype == np.int16
    _check_atlas_truth(truth)


def test_atlas_options():
    _, truth = make_atlas(1, SMALL_ATLAS, pitch_px=150.0, angle_deg=100.0)
    assert truth.pitch_px == 150.0 and truth.angle_deg == pytest.approx(10.0)
    # Neighbouring centres are one pitch apart.
    d = np.hypot(*(truth.centers[:, None] - truth.centers[None]).transpose(2, 0, 1))
    d[d == 0] = np.inf
    np.testing.assert_allclose(d.min(axis=1), 150.0, rtol=1e-9)


# ------------------------------------------------------------------------------------------------ medmag


def test_medmag_default_shape_dtype():
    image, truth = make_medmag(0)
    assert image.shape == (1024, 1440) and image.dtype == np.float32
    assert np.isfinite(image).all() and image.min() >= 0
    assert isinstance(truth, MedmagTruth) and truth.shape == (1024, 1440)
    assert 40 <= truth.spacing_px <= 400


def test_medmag_is_deterministic():
    a, ta = make_medmag(9, SMALL_MEDMAG)
    b, tb = make_medmag(9, SMALL_MEDMAG)
    np.testing.assert_array_equal(a, b)
    _same_truth(ta, tb)


def _check_medmag_truth(truth: MedmagTruth) -> None:
    n = truth.n
    h, w = truth.shape
    c = truth.centers
    assert c.shape == (n, 2) and truth.good.shape == (n,) and truth.visible.shape == (n,)
    assert np.all((c[:, 0] >= -0.5) & (c[:, 0] <= w - 0.5) & (c[:, 1] >= -0.5) & (c[:, 1] <= h - 0.5))
    assert set(truth.defects) <= set(HOLE_DEFECTS)
    assert np.array_equal(truth.good, np.array([d == "" for d in truth.defects], dtype=bool))
    # Hidden holes are under a bar; holes cut by the image edge are never good.
    assert all(truth.defects[i] == "bar" for i in np.flatnonzero(~truth.visible))
    r = truth.radius_px
    cut = (c[:, 0] - r < -0.5) | (c[:, 0] + r > w - 0.5) | (c[:, 1] - r < -0.5) | (c[:, 1] + r > h - 0.5)
    assert not np.any(truth.good & cut)
    assert 0.15 * truth.spacing_px - 1e-9 <= r <= 0.35 * truth.spacing_px + 1e-9
    # Centres sit on the stated lattice.
    u, v = lattice_basis(truth.spacing_px, truth.angle_deg)
    np.testing.assert_allclose(truth.basis, (u, v))
    coef = np.linalg.solve(np.stack([u, v], axis=1), (c - np.array(truth.origin)).T)
    np.testing.assert_allclose(coef, np.round(coef), atol=1e-6)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**63 - 1), rows=st.integers(64, 400), cols=st.integers(64, 400),
       spacing=st.one_of(st.none(), st.floats(40, 400)))
def test_medmag_truth_consistent(seed, rows, cols, spacing):
    image, truth = make_medmag(seed, (rows, cols), spacing_px=spacing)
    assert image.shape == (rows, cols) and image.dtype == np.float32 and np.isfinite(image).all()
    if spacing is not None:
        assert truth.spacing_px == spacing
    _check_medmag_truth(truth)


def test_medmag_holes_are_visible_in_the_image():
    """Without defects, each hole's interior differs from the film ring around it, with one sign per image,
    beyond the noise (a local comparison, so smooth gain and ice gradients cancel)."""
    yy, xx = np.mgrid[0:384, 0:512]
    for seed in range(6):
        image, truth = make_medmag(seed, (384, 512), spacing_px=80.0, defects=False)
        r = truth.radius_px
        diffs = []
        for x, y in truth.centers:
            if not (2 * r <= x < 512 - 2 * r and 2 * r <= y < 384 - 2 * r):
                continue
            d = np.hypot(xx - x, yy - y)
            diffs.append(image[d < 0.7 * r].mean() - image[(d > 1.3 * r) & (d < 1.6 * r)].mean())
        diffs = np.array(diffs)
        assert len(diffs) >= 5
        assert abs(diffs.mean()) > 3 * diffs.std() / np.sqrt(len(diffs)), seed
        assert set(truth.defects) <= {"", "edge"}


def test_medmag_lattice_matches_nearest_neighbours():
    _, truth = make_medmag(3, (512, 640), spacing_px=70.0, angle_deg=30.0)
    c = truth.centers
    d = np.hypot(*(c[:, None] - c[None]).transpose(2, 0, 1))
    d[d == 0] = np.inf
    np.testing.assert_allclose(d.min(axis=1), 70.0, rtol=1e-9)
    assert truth.angle_deg == 30.0


def test_medmag_default_options_leave_the_image_unchanged():
    """The options draw from their own stream: spelling out their defaults gives the same bytes (goldens and
    training sets made before the options existed stay valid)."""
    for seed in (0, 5):
        a, ta = make_medmag(seed, SMALL_MEDMAG)
        b, tb = make_medmag(seed, SMALL_MEDMAG, lattice="square", view="holes", vignetting=0.0, epu_contrast=False,
                            jpeg_quality=None)
        np.testing.assert_array_equal(a, b)
        _same_truth(ta, tb)


def _nearest_neighbour_distances(c: np.ndarray) -> np.ndarray:
    d = np.hypot(*(c[:, None] - c[None]).transpose(2, 0, 1))
    d[d == 0] = np.inf
    return d.min(axis=1)


@settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**63 - 1), kind=st.sampled_from(LATTICE_KINDS), spacing=st.floats(30, 120),
       view=st.sampled_from(("holes", "square", "square+rim")))
def test_medmag_lattice_kinds_truth(seed, kind, spacing, view):
    """Any lattice kind: centres on origin + i u + j v, u a shortest vector (spacing_px, angle_deg), holes
    smaller than half the nearest-neighbour distance, hidden holes only under bars, good holes never cut."""
    shape = (192, 256)
    rim = view == "square+rim"
    view = "square" if rim else view
    image, truth = make_medmag(seed, shape, spacing_px=spacing / 3 if view == "square" else spacing, lattice=kind,
                               view=view, rim=rim)
    assert set(truth.defects) <= set(HOLE_DEFECTS) and (rim or "thick" not in truth.defects)
    assert image.shape == shape and np.isfinite(image).all()
    assert truth.lattice == kind and truth.view == view
    u, v = np.array(truth.basis)
    assert np.hypot(*u) == pytest.approx(truth.spacing_px) and np.hypot(*u) <= np.hypot(*v) + 1e-9
    assert abs(u @ v) <= 0.5 * (u @ u) + 1e-6  # reduced: u and v are nearest neighbours
    t = np.deg2rad(truth.angle_deg)
    np.testing.assert_allclose(u, truth.spacing_px * np.array([np.cos(t), -np.sin(t)]), atol=1e-6)
    c = truth.centers
    coef = np.linalg.solve(np.stack([u, v], axis=1), (c - np.array(truth.origin)).T)
    np.testing.assert_allclose(coef, np.round(coef), atol=1e-6)
    assert truth.radius_px <= 0.35 * truth.spacing_px + 1e-9
    assert all(truth.defects[i] == "bar" for i in np.flatnonzero(~truth.visible))
    r = truth.radius_px
    h, w = shape
    cut = (c[:, 0] - r < -0.5) | (c[:, 0] + r > w - 0.5) | (c[:, 1] - r < -0.5) | (c[:, 1] + r > h - 0.5)
    assert not np.any(truth.good & cut)
    if kind == "square":
        np.testing.assert_allclose(v, [-u[1], u[0]], atol=1e-6)


def test_medmag_hexagonal_and_skewed_geometry():
    _, hexa = make_medmag(4, (400, 520), spacing_px=60.0, lattice="hexagonal")
    np.testing.assert_allclose(_nearest_neighbour_distances(hexa.centers), 60.0, rtol=1e-6)
    u, v = np.array(hexa.basis)
    assert np.degrees(np.arccos(abs(u @ v) / (u @ u))) == pytest.approx(60.0)
    # Six neighbours at one distance in the interior.
    c = hexa.centers
    d = np.hypot(*(c[:, None] - c[None]).transpose(2, 0, 1))
    middle = np.argmin(np.hypot(c[:, 0] - 260, c[:, 1] - 200))
    assert np.sum(np.abs(d[middle] - 60.0) < 1e-6) == 6
    for seed in range(5):
        _, sk = make_medmag(seed, (256, 320), spacing_px=80.0, lattice="skewed")
        u, v = np.array(sk.basis)
        ratio = np.hypot(*v) / np.hypot(*u)
        angle = np.degrees(np.arccos(abs(u @ v) / np.hypot(*u) / np.hypot(*v)))
        assert 1.0 <= ratio <= 1.09 and 86.0 <= angle <= 90.0 and abs(ratio - 1) + (90 - angle) > 0.01


def test_medmag_square_view_has_dark_bars_hiding_holes():
    """A whole grid-square view: bars hide some holes (those are the dark pixels), the rest lie on film."""
    for seed in range(4):
        image, truth = make_medmag(seed, (364, 512), spacing_px=11.0, view="square", defects=False)
        assert truth.n > 500 and 0 < truth.visible.sum() < truth.n, seed
        xy = np.rint(truth.centers).astype(int)
        xy = xy[(xy[:, 0] >= 0) & (xy[:, 0] < 512) & (xy[:, 1] >= 0) & (xy[:, 1] < 364)]
        values = image[xy[:, 1], xy[:, 0]]
        hidden = ~truth.visible[: len(values)]
        assert values[hidden].mean() < 0.3 * values[~hidden].mean(), seed


def test_medmag_rim_softens_the_bars_and_marks_thick_ice_along_them():
    """`rim` (grid-square views): same lattice; `rim=False` spelled out changes nothing; the bars' soft edge puts
    more visible holes partly under a bar; "thick" holes are visible, darker than the good ones, and lie in the
    band along the bars (nearer a hidden hole than the typical good hole)."""
    shape, more_bar, thick_dark, thick_near = (364, 512), 0, [], []
    for seed in range(6):
        plain, tp = make_medmag(seed, shape, spacing_px=11.0, view="square", defects=False)
        again, ta = make_medmag(seed, shape, spacing_px=11.0, view="square", defects=False, rim=False)
        np.testing.assert_array_equal(plain, again)
        _same_truth(tp, ta)
        image, tr = make_medmag(seed, shape, spacing_px=11.0, view="square", defects=False, rim=True)
        np.testing.assert_array_equal(tr.centers, tp.centers)
        assert "thick" not in tp.defects
        defects = np.array(tr.defects)
        bar_seen = lambda t: int(np.sum((np.array(t.defects) == "bar") & t.visible))  # noqa: E731
        more_bar += bar_seen(tr) - bar_seen(tp)
        thick = defects == "thick"
        if not thick.any():
            continue
        assert tr.visible[thick].all()
        xy = np.clip(np.rint(tr.centers).astype(int), 0, [shape[1] - 1, shape[0] - 1])
        value = image[xy[:, 1], xy[:, 0]]
        thick_dark.append(value[thick].mean() < value[tr.good].mean())
        hidden = tr.centers[~tr.visible]
        near = np.hypot(*(tr.centers[:, None] - hidden[None]).transpose(2, 0, 1)).min(axis=1)
        thick_near.append(np.median(near[thick]) < np.median(near[tr.good]))
    assert more_bar > 0
    assert len(thick_dark) >= 2 and all(thick_dark) and all(thick_near)
    with pytest.raises(ValueError, match="rim"):
        make_medmag(0, (64, 64), rim=True)


def test_medmag_epu_and_jpeg_output_is_8_bit_and_keeps_the_holes():
    base, truth = make_medmag(2, (256, 352), spacing_px=60.0, defects=False, film="gold")
    for options in ({"epu_contrast": True}, {"jpeg_quality": 60}, {"jpeg_quality": 90, "vignetting": 0.4}):
        image, t2 = make_medmag(2, (256, 352), spacing_px=60.0, defects=False, film="gold", **options)
        np.testing.assert_array_equal(t2.centers, truth.centers)
        assert image.min() >= 0 and image.max() <= 255 and np.array_equal(image, np.rint(image))
        # Still the same picture: strongly correlated with the counts image.
        assert np.corrcoef(image.ravel(), base.ravel())[0, 1] > 0.8, options
    again, _ = make_medmag(2, (256, 352), spacing_px=60.0, jpeg_quality=60)
    np.testing.assert_array_equal(again, make_medmag(2, (256, 352), spacing_px=60.0, jpeg_quality=60)[0])


def test_medmag_vignetting_darkens_the_corners():
    flat, _ = make_medmag(7, (256, 256), spacing_px=50.0, defects=False)
    vig, _ = make_medmag(7, (256, 256), spacing_px=50.0, defects=False, vignetting=0.5)
    ratio = vig / np.maximum(flat, 1)
    corners = np.concatenate([ratio[:20, :20].ravel(), ratio[-20:, -20:].ravel(), ratio[:20, -20:].ravel(),
                              ratio[-20:, :20].ravel()])
    assert np.median(corners) < np.median(ratio[108:148, 108:148]) - 0.1


def test_medmag_rejects_unknown_options():
    with pytest.raises(ValueError, match="lattice"):
        make_medmag(0, (64, 64), lattice="triangular")
    with pytest.raises(ValueError, match="view"):
        make_medmag(0, (64, 64), view="atlas")


def test_train_and_test_seeds_are_disjoint():
    datasets = pytest.importorskip("export.datasets")
    for stream in range(3):
        seeds = datasets.train_seeds(0, 1000, stream)
        assert seeds.max() < datasets.TEST_SEED_BASE
    assert min(datasets.test_seeds(10)) >= datasets.TEST_SEED_BASE


def test_read_points_formats(tmp_path):
    datasets = pytest.importorskip("export.datasets")
    (tmp_path / "a.csv").write_text("x,y,label\n1.5,2,1\n3,4,0\n")
    (tmp_path / "b.csv").write_text("10 ,20\n30,40\n".replace(" ", ""))
    (tmp_path / "c.json").write_text(json.dumps({"targets": [{"center": [5, 6], "score": 0.3}]}))
    pts, labels = datasets.read_points(tmp_path / "a.csv")
    np.testing.assert_array_equal(pts, [[1.5, 2], [3, 4]])
    np.testing.assert_array_equal(labels, [1, 0])
    pts, labels = datasets.read_points(tmp_path / "b.csv")
    assert pts.shape == (2, 2) and labels is None
    pts, labels = datasets.read_points(tmp_path / "c.json")
    np.testing.assert_array_equal(pts, [[5, 6]])
    (tmp_path / "c.png").write_bytes(b"")
    assert datasets.labelled_pairs(tmp_path) == [(tmp_path / "c.png", tmp_path / "c.json")]


# ------------------------------------------------------------------------------------- default model set


def _manifest() -> dict:
    path = MODELS / "manifest.json"
    if not path.is_file():
        pytest.skip("models/manifest.json not present yet")
    return json.loads(path.read_text(encoding="utf-8"))


def test_default_set_manifest_hashes_and_licence():
    manifest = _manifest()
    assert manifest["format"] == 1
    assert set(manifest["models"]) == {"square_cnn", "hole_unet", "hole_cnn"}
    licences = [manifest["licence"]] + [m["licence"] for m in manifest["models"].values()]
    for licence in licences:
        assert licence == "BSD-3-Clause"
        assert "NC" not in licence.upper().replace("-", " ").split()
    total = (MODELS / "manifest.json").stat().st_size
    for task, spec in manifest["models"].items():
        path = MODELS / spec["file"]
        blob = path.read_bytes()
        total += len(blob)
        assert hashlib.sha256(blob).hexdigest() == spec["sha256"], task
        assert spec["task"] == task
        assert spec["bn"] in ("none", "running")
        assert spec["input"] == "image" and spec["output"] == "logit"
        prov = spec["provenance"]
        assert prov["seed"] == int(prov["seed"]) and "generator_version" in prov
        assert "published" not in prov.get("source", "")
    assert total < 10 * 1024 * 1024
    unet = manifest["models"]["hole_unet"]
    assert unet["scale"] == {"spacing_px": 64.0, "max_upscale": 1.3} and 0 < unet["threshold"] < 1
    square = manifest["models"]["square_cnn"]
    # The median square (at least crop_min_side crop px across, at most 2 crop_min_side unless at the largest
    # factor) fits the canvas, and the canvas at the largest factor spans the training atlases' squares (<= 160 px).
    assert 2 * square.get("crop_min_side", 0) <= square["crop_size"]
    assert square["crop_size"] * square.get("crop_scale", 1) >= 160
    assert square["input_shape"] == ["N", 1, square["crop_size"], square["crop_size"]]
    assert manifest["models"]["hole_cnn"]["min_size"] >= 1


def test_default_set_graphs_opset_and_shapes():
    manifest = _manifest()
    onnx = pytest.importorskip("onnx")
    from ptolemy_rt.models import load_models

    for spec in manifest["models"].values():
        model = onnx.load(MODELS / spec["file"])
        opsets = {o.domain: o.version for o in model.opset_import}
        assert opsets.get("", opsets.get("ai.onnx")) == spec["opset"] >= 17
    models = load_models(MODELS, provider="cpu", threads=1)
    rng = np.random.default_rng(0)
    m = manifest["models"]["hole_unet"]["multiple"]
    out = models.run("hole_unet", rng.standard_normal((1, 1, 2 * m, 3 * m)).astype(np.float32))
    assert out.shape == (1, 1, 2 * m, 3 * m)
    side = manifest["models"]["square_cnn"]["crop_size"]
    crops = rng.standard_normal((3, 1, side, side)).astype(np.float32)
    scores = models.run("square_cnn", crops)
    assert scores.shape == (3, 1)
    # Batch-independent: a crop scores the same alone as in a batch.
    np.testing.assert_allclose(models.run("square_cnn", crops[1:2]), scores[1:2], rtol=1e-4, atol=1e-4)
    for side in (20, 63, 270):
        assert models.run("hole_cnn", rng.standard_normal((1, 1, side, side)).astype(np.float32)).shape == (1, 1)
