"""Low-mag pipeline stage timings on the example atlas (warm), beside a straightforward per-pixel NumPy EM.

    python -m benchmarks.squares [--image PATH] [--models DIR] [--repeat N]

The first table times the original's stages (mixture, regions, angle, crops); the second the default pipeline's
own (mesh: autocorrelation and fold, disc, the seam look, the grid-angle refinement, scan against Brent) and
both pipelines whole, beside a 1024² float32 matrix product timed alternately (the yardstick of
benchmarks/latency.py). Prints tables; asserts nothing. Without --models the CNN is skipped (a model set
converted from the published weights, e.g. /tmp/ptolemy_converted, gives the original's network; never commit one).

    python -m benchmarks.squares --atlases [--compare ../main] [--sizes 4096,8192] [--rounds 3] [--repeat 3]

--atlases: whole find_squares with the shipped models, stage by stage, on large atlases (issue 12 item 5): one
held-out scene scaled to each size (~2,900 squares at every size, as benchmarks.squares_accuracy_real
--scaling makes it), the dense held-out 4096² montage (montage-0: 8x8 tiles, 2,699 squares), and the 1024²
reference atlas. Each measurement is a fresh process (warm-up call, then --repeat timed calls; medians of
wall time, of CPU time (all threads) and of each stage, and the 1024² matmul yardstick timed between
calls), with peak RSS. With --compare TREE, the same in a process importing ptolemy_rt from TREE (e.g. the
main checkout), alternated with this tree's process round by round so that both see the same load.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.harness import machine_line, print_markdown, print_table, time_it  # noqa: E402

DEFAULT_IMAGE = REPO.parent / "shared" / "ptolemy-reference" / "images" / "20may08a_16760340.mrc"


def per_pixel_em(x: np.ndarray) -> np.ndarray:
    """The textbook per-pixel EM (ptolemy_rt.mixture.per_pixel_em); returns the flat bright mask."""
    from ptolemy_rt.mixture import per_pixel_em as reference

    return reference(x)[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--models", type=Path, default=None, help="model set for the CNN stage (optional)")
    parser.add_argument("--repeat", type=int, default=None, help="timed calls (default 20; --atlases 3)")
    parser.add_argument("--atlases", action="store_true", help="large atlases, whole pipeline with models, per stage")
    parser.add_argument("--compare", type=Path, default=None, help="with --atlases: another tree to alternate with")
    parser.add_argument("--sizes", default="1024,4096,8192", help="with --atlases: sizes of the scaled scene")
    parser.add_argument("--rounds", type=int, default=3, help="with --atlases: alternations per atlas")
    parser.add_argument("--only", default=None, help="with --atlases: comma-separated atlas names")
    args = parser.parse_args(argv)
    if args.atlases:
        return atlases(args)
    args.repeat = args.repeat or 20

    from ptolemy_rt import mixture, regions, squares
    from ptolemy_rt.io import read_image

    image = read_image(args.image)
    data = image.data
    seg = mixture.segment(data, image.dtype)
    reg = regions.find_regions(seg.mask)
    theta = squares.grid_angle(reg.hulls, method="brent")  # the original's stages: its search
    # Crops as the model set's square CNN takes them (without one: the original's 240x240).
    crop_args: dict = {}
    if args.models is not None:
        from ptolemy_rt.models import load_models

        spec = load_models(args.models, provider="cpu").spec("square_cnn")
        crop_args = {"size": spec.crop_size, "scale": spec.crop_scale, "min_side": spec.crop_min_side}
    side = crop_args.get("size", 240)

    def stage_crops():
        mean, std = squares.class_stats(data, seg.mask)
        return squares.square_crops(data, reg.hulls, theta, mean, std, **crop_args)

    def all_but_cnn():
        img = read_image(args.image)
        s = mixture.segment(img.data, img.dtype)
        r = regions.find_regions(s.mask)
        regions.region_means(r, s.mask, img.data)
        t = squares.grid_angle(r.hulls, method="brent")
        squares.boxes_at_angle(r.hulls, t)
        mean, std = squares.class_stats(img.data, s.mask)
        return squares.square_crops(img.data, r.hulls, t, mean, std, **crop_args)

    rep = args.repeat
    rows = [
        time_it("read (MRC -> float32)", lambda: read_image(args.image), rep),
        time_it("mixture (histogram EM + mask)", lambda: mixture.segment(data, image.dtype), rep),
        time_it("regions (+ brightness)", lambda: regions.region_means(regions.find_regions(seg.mask), seg.mask, data),
                rep),
        time_it("angle (+ boxes, Brent)",
                lambda: squares.boxes_at_angle(reg.hulls, squares.grid_angle(reg.hulls, method="brent")),
                rep),
        time_it(f"crops ({len(reg)} x {side}x{side}, normalised)", stage_crops, rep),
        time_it("all stages but the CNN (read..crops)", all_but_cnn, rep),
        time_it("find_squares(models=False)", lambda: squares.find_squares(args.image, models=False), rep),
        time_it("per-pixel NumPy EM (mask only)", lambda: per_pixel_em(data), max(3, rep // 5), warmup=1),
    ]
    same = np.array_equal(per_pixel_em(data), seg.mask.astype(bool).ravel())
    extra = [
        ("image", f"{args.image.name} {image.shape[0]}x{image.shape[1]} {image.dtype}, {len(reg)} squares"),
        ("histogram EM mask == per-pixel EM mask", str(same)),
        ("machine", machine_line()),
        ("threads", f"cv2 {__import__('cv2').getNumThreads()}, no compiled kernels"),
        ("original (README)", "mixture 0.94-1.01 s + mask processing 0.46 s = ~1.4 s; CNN 2.45-2.64 s"),
    ]
    cnn = False  # the default-pipeline table runs without the CNN unless a model set is given
    if args.models is not None:
        from ptolemy_rt.models import load_models

        models = cnn = load_models(args.models, provider="cpu")
        rows.append(time_it("find_squares(models) end to end", lambda: squares.find_squares(args.image, models=models),
                            max(3, rep // 4), warmup=1))
        last = squares.find_squares(args.image, models=models)
        extra.append(("last end-to-end stages (ms)", ", ".join(f"{k} {v * 1e3:.1f}" for k, v in last.timings.items())))
        # The CNN stage against bare onnxruntime on the same batch, alternated so load hits both alike.
        batch = np.ascontiguousarray(stage_crops(), dtype=np.float32).reshape(-1, 1, side, side)
        sess = models.session("square_cnn")
        name = sess.get_inputs()[0].name
        n = max(3, rep // 4)
        stage_ms, bare_ms = [], []
        for _ in range(n):
            stage_ms.append(squares.find_squares(args.image, models=models).timings["cnn"] * 1e3)
            t0 = time.perf_counter()
            sess.run(None, {name: batch})
            bare_ms.append((time.perf_counter() - t0) * 1e3)
        st, bt = float(np.median(stage_ms)), float(np.median(bare_ms))
        extra.append(("CNN stage vs bare onnxruntime (same batch)",
                      f"{st:.1f} ms vs {bt:.1f} ms median ({(st / bt - 1) * 100:+.1f} %; target within 10 %)"))
    print_table(rows, title="Low-mag squares, warm", baseline="per-pixel NumPy EM (mask only)", extra=extra)
    mesh_stages(image, cnn, rep)
    return 0


def mesh_stages(image, models, rep: int) -> None:
    """The default (mesh-driven) pipeline's stages, each timed alone, and both pipelines whole; the matrix
    product yardstick timed between them so that the ratios hold on a loaded machine."""
    from ptolemy_rt import atlas_classes, mesh, squares

    data = image.data
    found = mesh.detect_mesh(data).mesh
    if found is None:
        print("\n(no mesh in this image: no default-pipeline table)")
        return
    valid = atlas_classes.disc_mask(data)
    f = max(1, -(-max(data.shape) // mesh._ACF_SIDE))
    small = mesh._binned(data, f)
    vsmall = mesh._binned(valid.view(np.uint8) * np.uint8(255), f) >= 255 if f > 1 else valid
    acf, _ = mesh._normalised_acf(small, vsmall)
    a, b = np.asarray(found.basis[0]), np.asarray(found.basis[1])
    side = int(min(mesh._FOLD_SIDE_MAX, max(512, 12 * found.pitch_px)))
    y0, x0 = mesh._window_origin(valid, side)
    win, vwin = data[y0 : y0 + side, x0 : x0 + side], valid[y0 : y0 + side, x0 : x0 + side]
    nb = int(np.clip(min(np.ceil(found.pitch_px), np.sqrt(max(float(vwin.sum()), 1.0) / 20.0)), 16, 256))
    hulls = squares.find_squares(image, models=False).squares
    boxes = [np.asarray(q.vertices) for q in hulls]
    theta0 = (-found.angle_deg) % 90.0
    x = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
    y = np.random.default_rng(1).random((1024, 1024), dtype=np.float32)
    calls = [
        ("yardstick: 1024² float32 matmul", lambda: x @ y),
        ("mesh: detect_mesh (all of it)", lambda: mesh.detect_mesh(data)),
        ("  disc_mask (image side / 6)", lambda: atlas_classes.disc_mask(data)),
        (f"  autocorrelation ({small.shape[0]}x{small.shape[1]}, cv2 DFT)",
         lambda: mesh._normalised_acf(small, vsmall)),
        ("  lattice from the autocorrelation peaks", lambda: mesh._lattice_from_acf(acf, 0.3)),
        (f"  fold ({win.shape[0]}x{win.shape[1]} px into {nb}x{nb} bins)",
         lambda: mesh._fold(win, vwin, a, b, x0, y0, nb)),
        ("disc: disc_mask (3 pitches)", lambda: atlas_classes.disc_mask(data, scale_px=3 * found.pitch_px)),
        ("seams: may_have_seams", lambda: squares.may_have_seams(data, found)),
        (f"angle: scan refinement ({len(boxes)} boxes)", lambda: squares.grid_angle(boxes, around=theta0)),
        ("angle: bounded Brent (compat)", lambda: squares.grid_angle(boxes, around=theta0, method="brent")),
        ("find_squares, default pipeline", lambda: squares.find_squares(image, models=models)),
        ("find_squares, --compat ptolemy", lambda: squares.find_squares(image, models=models, compat=True)),
    ]
    times: dict[str, list[float]] = {name: [] for name, _ in calls}
    for _, fn in calls:
        fn()
    for _ in range(rep):
        for name, fn in calls:
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) * 1e3)
    base = float(np.median(times[calls[0][0]]))
    print(f"\n## Default (mesh) pipeline stages, warm, median of {rep}, interleaved "
          f"({'CNN included' if models is not False else 'no CNN'}; load average {os.getloadavg()[0]:.1f})")
    table = [["stage", "median ms", "min ms", "x yardstick"]]
    for name, vals in times.items():
        table.append([name, f"{np.median(vals):.2f}", f"{min(vals):.2f}", f"{np.median(vals) / base:.2f}"])
    print_markdown(table)


# ---------------------------------------------------------------------------------------------------
# Large atlases, whole pipeline, this tree against another


_ATLAS_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from ptolemy_rt.squares import find_squares
from ptolemy_rt.models import load_models
ms = load_models(None)
data = np.load(sys.argv[2])
x = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
y = np.random.default_rng(1).random((1024, 1024), dtype=np.float32)
r = find_squares(data, ms)
walls, cpus, yard, stages = [], [], [], {}
for _ in range(int(sys.argv[3])):
    t = time.perf_counter(); x @ y; yard.append(time.perf_counter() - t)
    t, c = time.perf_counter(), time.process_time()
    r = find_squares(data, ms)
    walls.append(time.perf_counter() - t); cpus.append(time.process_time() - c)
    for k, v in r.timings.items():
        stages.setdefault(k, []).append(v)
with open("/proc/self/status") as fh:
    hwm = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM")) / 1024
print(json.dumps({"wall": walls, "cpu": cpus, "yard": yard, "stages": stages, "n": len(r.squares), "rss": hwm}))
"""

_STAGE_ORDER = ("read", "mesh", "disc", "seams", "mixture", "regions", "lattice", "angle", "classes", "crops", "cnn")


def _large_atlases(sizes: list[int], tmp: Path, only: set[str] | None) -> list[tuple[str, Path]]:
    """The atlases of --atlases as .npy files in tmp: (name, path)."""
    import dataclasses

    from benchmarks.atlas_sets import _case, heldout_cases, make_heldout_atlas

    out = []
    wanted = [(f"scene {s}²", s) for s in sizes] + [("montage-0 4096²", 0)]
    if DEFAULT_IMAGE.is_file():
        wanted.append(("reference 1024²", -1))
    for name, size in wanted:
        if only and not any(o in name for o in only):
            continue
        path = tmp / f"atlas{len(out)}.npy"
        if size > 0:
            # One scene scaled with the size (benchmarks.squares_accuracy_real.scaling): the same mesh seen at a
            # finer pixel size, so the number of squares stays ~2,900.
            base = _case("large", 912_777, 0, 4096)
            case = dataclasses.replace(base, size=size, pitch_px=base.pitch_px * size / 4096,
                                       bar_px=min(40.0, base.bar_px * size / 4096),
                                       disc_radius_px=base.disc_radius_px * size / 4096,
                                       disc_centre=(base.disc_centre[0] * size / 4096,
                                                    base.disc_centre[1] * size / 4096))
            image = make_heldout_atlas(case)[0]
        elif size == 0:
            case = next(c for c in heldout_cases(1) if c.name == "montage-0")
            image = make_heldout_atlas(case)[0]
        else:
            from ptolemy_rt.io import read_image

            image = read_image(DEFAULT_IMAGE).data
        np.save(path, image)
        out.append((name, path))
    return out


def atlases(args) -> int:
    """Stage tables of find_squares (shipped models) on large atlases, this tree against --compare."""
    import json
    import subprocess
    import tempfile

    trees = [("this tree", REPO)] + ([("compare", args.compare.resolve())] if args.compare else [])
    repeat = args.repeat or 3
    only = set(args.only.split(",")) if args.only else None
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    env.pop("PYTHONPATH", None)
    print(f"# find_squares with the shipped models, warm, {args.rounds} rounds x {repeat} calls per tree; "
          f"{machine_line()}")
    scene: dict[str, list[tuple[int, float, float]]] = {label: [] for label, _ in trees}
    with tempfile.TemporaryDirectory() as tmp:
        cases = _large_atlases([int(v) for v in args.sizes.split(",") if v], Path(tmp), only)
        for name, path in cases:
            runs: dict[str, list[dict]] = {label: [] for label, _ in trees}
            loads = []
            for _ in range(args.rounds):
                # Alternate which tree goes first, so neither always follows the other.
                for label, tree in (trees if len(loads) % 2 == 0 else trees[::-1]):
                    loads.append(os.getloadavg()[0])
                    r = subprocess.run([sys.executable, "-c", _ATLAS_CHILD, str(tree), str(path), str(repeat)],
                                       capture_output=True, text=True, env=env)
                    if r.returncode != 0:
                        print(f"{name} {label}: failed: {r.stderr.strip()[-300:]}")
                        return 1
                    runs[label].append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(f"\n## {name} (load average {min(loads):.1f}-{max(loads):.1f})")
            head = ["tree", "squares", "wall ms", "x yardstick", "CPU ms", "peak RSS MiB"]
            stages = [k for k in _STAGE_ORDER if any(k in run["stages"] for rs in runs.values() for run in rs)]
            table = [head + [f"{k} ms" for k in stages]]
            for label, tree in trees:
                rs = runs[label]
                wall = np.median([v for run in rs for v in run["wall"]])
                yard = np.median([v for run in rs for v in run["yard"]])
                cpu = np.median([v for run in rs for v in run["cpu"]])
                if name.startswith("scene"):
                    scene[label].append((int(name.split()[1].rstrip("²")) ** 2, float(wall), float(cpu)))
                row = [f"{label} ({tree.name})", str(rs[-1]["n"]), f"{wall * 1e3:.0f}", f"{wall / yard:.2f}",
                       f"{cpu * 1e3:.0f}", f"{max(run['rss'] for run in rs):.0f}"]
                for k in stages:
                    vals = [v for run in rs for v in run["stages"].get(k, [])]
                    row.append(f"{np.median(vals) * 1e3:.1f}" if vals else "")
                table.append(row)
            print_markdown(table)
    for label, pts in scene.items():
        if len(pts) >= 2:
            px = np.log([p[0] for p in pts])
            k_wall = np.polyfit(px, np.log([p[1] for p in pts]), 1)[0]
            k_cpu = np.polyfit(px, np.log([p[2] for p in pts]), 1)[0]
            print(f"\n{label}: the scaled scene's time grows as pixels^{k_wall:.2f} (wall), ^{k_cpu:.2f} (CPU) "
                  f"over {', '.join(f'{round(p[0] ** 0.5)}²' for p in pts)}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    raise SystemExit(main())
