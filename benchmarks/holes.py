"""Med-mag pipeline timings per stage, beside the original tool's (a table; no asserts).

    python -m benchmarks.holes [--models DIR] [--repeat N] [--threads N]
    python -m benchmarks.holes --cost [--repeat N]    # issue 11's cost goals, shipped models

--cost times find_holes on the views issue 11 names (held-out images without a lattice, 512x364 whole
grid-square views at 1x, synthetic and the real EPU one, and the 1024x1440 reference), median of --repeat,
each interleaved with a 1024x1024 float32 matrix product (the yardstick latency.py uses), with the stages.

Without --models, the published checkpoints in ../shared/ptolemy-reference are converted into a temporary
directory (needs torch; never inside the repository). The networks are also timed bare (one onnxruntime
session.run on exactly the inputs the pipeline feeds them), so the pipeline's own overhead shows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.harness import Timing, machine_line, print_table, time_it  # noqa: E402

REFERENCE = REPO.parent / "shared" / "ptolemy-reference"
MEDMAG = REFERENCE / "images" / "medmag_readme_1024x1440.mrc"

# The original tool on this image (ptolemy-reference/README.md: 2-core x86, torch 2.13, 2 threads, warm).
ORIGINAL = {
    "read": "-",
    "normalise": "(in U-Net)",
    "unet": "3300-3350 (onnxruntime: 1430)",
    "centroids": "~300 (other mask work)",
    "lattice": "1080-1160 (85 pairs)",
    "crops": "(in other mask work)",
    "cnn": "1600-1630 (17 crops)",
    "find_holes": "6400-6500",
}


def synthetic_centroids(n: int = 100, shape=(1024, 1440), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n centroids: a lattice (20 % missing, 3 % jitter) plus ~30 % strays, and their square-blob mask."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    # lattice points kept (80 %) ~ n / 1.3, the rest strays
    spacing = np.sqrt(rows * cols * 0.8 * 1.3 / n)
    a = np.radians(23.0)
    u = spacing * np.array([np.cos(a), -np.sin(a)])
    v = np.array([-u[1], u[0]])
    ab = np.array([(i, j) for i in range(-20, 21) for j in range(-20, 21)], dtype=float)
    pts = np.array([cols / 2, rows / 2]) + ab @ np.stack([u, v])
    pts = pts[(pts[:, 0] > 0) & (pts[:, 0] < cols - 1) & (pts[:, 1] > 0) & (pts[:, 1] < rows - 1)]
    pts = pts[rng.random(len(pts)) >= 0.2]
    pts = (pts + rng.normal(0, 0.03 * spacing, pts.shape))[:n]
    strays = rng.uniform([0, 0], [cols - 1, rows - 1], (n - len(pts), 2))
    c = np.concatenate([pts, strays])
    mask = np.zeros(shape, dtype=bool)
    r = int(0.08 * spacing)
    for x, y in c:
        xi, yi = int(round(x)), int(round(y))
        mask[max(yi - r, 0) : yi + r + 1, max(xi - r, 0) : xi + r + 1] = True
    return c, mask


def paired(name_a: str, fn_a, name_b: str, fn_b, repeat: int) -> tuple[Timing, Timing]:
    """Time two callables alternately (a, b, a, b, ...) after one warm-up each."""
    from benchmarks.harness import peak_rss_mb

    times: dict[str, list[float]] = {name_a: [], name_b: []}
    first = {}
    for k in range(repeat + 1):
        for name, fn in ((name_a, fn_a), (name_b, fn_b)):
            start = time.perf_counter()
            fn()
            ms = (time.perf_counter() - start) * 1000
            if k == 0:
                first[name] = ms
            else:
                times[name].append(ms)
    return tuple(Timing(name=n, times_ms=tuple(times[n]), first_ms=first[n], rss_mb=peak_rss_mb())
                 for n in (name_a, name_b))  # type: ignore[return-value]


REAL_EPU = REPO.parent / "shared" / "real-epu" / "smartem_gs8999138.jpg"
# Issue 11 item 6: (goal ms, what) per kind of view.
COST_GOALS = {"no_lattice": 300.0, "whole_square": 400.0, "reference": 150.0}


def cost_table(models: str | None, repeat: int) -> None:
    """Issue 11's cost goals: find_holes per view kind, median ms and as a ratio to the matrix-product yardstick."""
    from benchmarks.holes_sets import make_sample
    from ptolemy_rt.holes import find_holes
    from ptolemy_rt.io import read_image
    from ptolemy_rt.models import load_models

    ms = load_models(models)
    views = [("no_lattice", f"no_lattice {i} ({make_sample('no_lattice', i).variant})",
              make_sample("no_lattice", i).image) for i in range(4)]
    for i in range(4):
        sample = make_sample("whole_square", i)
        if sample.image.shape == (364, 512):
            views.append(("whole_square", f"whole_square {i} 512x364 @1x", sample.image))
    if REAL_EPU.is_file():
        views.append(("whole_square", "real EPU 512x364 @1x", read_image(REAL_EPU).data))
    if MEDMAG.is_file():
        views.append(("reference", "reference 1024x1440", read_image(MEDMAG).data))
    a = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
    b = np.random.default_rng(1).random((1024, 1024), dtype=np.float32)
    find_holes(views[-1][2], ms)  # sessions
    rows = [["view", "holes", "median ms", "yardstick ms", "x yardstick", "goal ms", "stages (ms, last run)", "reason"]]
    for kind, name, image in views:
        times, yard = [], []
        for _ in range(repeat):
            t = time.perf_counter()
            a @ b
            yard.append(time.perf_counter() - t)
            t = time.perf_counter()
            res = find_holes(image, ms)
            times.append(time.perf_counter() - t)
        med, ymed = float(np.median(times)) * 1e3, float(np.median(yard)) * 1e3
        stages = ", ".join(f"{k} {v * 1e3:.0f}" for k, v in res.timings.items() if v * 1e3 >= 0.5)
        rows.append([name, str(len(res.holes)), f"{med:.0f}", f"{ymed:.1f}", f"{med / ymed:.1f}",
                     f"< {COST_GOALS[kind]:.0f}", stages, (res.reason or "")[:50]])
    print(f"# Issue 11 cost goals, find_holes warm, median of {repeat}, each run after a 1024² float32 matmul; "
          f"{machine_line()}; load average {__import__('os').getloadavg()[0]:.1f}")
    from benchmarks.harness import print_markdown

    print_markdown(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="model set directory (default: convert the published one)")
    parser.add_argument("--repeat", type=int, default=5, help="timed repeats of the fast stages")
    parser.add_argument("--net-repeat", type=int, default=3, help="timed repeats of the network stages")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: physical cores)")
    parser.add_argument("--cost", action="store_true", help="issue 11's cost table (shipped models unless --models)")
    args = parser.parse_args(argv)
    if args.cost:
        cost_table(None if args.models is None else str(args.models), args.repeat)
        return 0

    from ptolemy_rt.crops import hole_crop_input, hole_crops
    from ptolemy_rt.holes import cnn_scores, find_holes, hole_centroids, unet_scores
    from ptolemy_rt.io import read_image
    from ptolemy_rt.lattice import fit_lattice
    from ptolemy_rt.models import load_models
    from ptolemy_rt.unet import normalise_image, probability_map, unet_pad_shape

    tmp = None
    models_dir = args.models
    if models_dir is None:
        from export.convert_ptolemy import convert

        tmp = tempfile.TemporaryDirectory(prefix="ptolemy-converted-")
        print(f"converting the published checkpoints into {tmp.name} ...", file=sys.stderr)
        models_dir = convert(REFERENCE / "weights", Path(tmp.name), bn="batch")
    ms = load_models(models_dir, threads=args.threads)
    spec = ms.spec("hole_unet")

    image = read_image(MEDMAG)
    norm = normalise_image(image.data)
    # warm everything once: sessions, cv2
    t0 = time.perf_counter()
    warm = find_holes(image, ms, score="cnn")
    first = time.perf_counter() - t0
    if spec.scale is not None:
        # A scale-normalised U-Net (the shipped set): the stages live inside find_holes, so report its timings.
        runs = [find_holes(image, ms, score="cnn") for _ in range(args.repeat)]
        print(f"# Med-mag pipeline, {MEDMAG.name}, {len(warm.holes)} holes, model set {ms.name}, "
              f"first call {first * 1000:.0f} ms; {machine_line()}")
        print("| stage | median ms | min ms |\n|---|---|---|")
        for key in runs[0].timings:
            vals = sorted(r.timings[key] * 1000 for r in runs)
            print(f"| {key} | {vals[len(vals) // 2]:.2f} | {vals[0]:.2f} |")
        total = time_it("find_holes end to end", lambda: find_holes(image, ms, score="cnn"), repeat=args.repeat)
        print(f"| find_holes end to end | {total.median:.2f} | {total.min:.2f} |")
        return 0
    prob = probability_map(norm, ms)
    mask = prob > spec.threshold
    centroids = hole_centroids(mask)
    lattice = fit_lattice(centroids, mask)
    points = lattice.points(image.shape, -10.0)
    geometry = hole_crops(points, lattice.angle_deg, lattice.spacing_px, image.shape)

    rows: list[Timing] = []
    rows.append(time_it("read", lambda: read_image(MEDMAG), repeat=args.repeat))
    rows.append(time_it("normalise", lambda: normalise_image(image.data), repeat=args.repeat))
    rows.append(time_it("centroids", lambda: hole_centroids(prob > spec.threshold), repeat=args.repeat))
    rows.append(time_it("lattice", lambda: fit_lattice(centroids, mask), repeat=args.repeat))

    def crops_stage():
        g = hole_crops(lattice.points(image.shape, -10.0), lattice.angle_deg, lattice.spacing_px, image.shape)
        unet_scores(prob, g)

    rows.append(time_it("crops", crops_stage, repeat=args.repeat))
    rows.append(time_it("find_holes", lambda: find_holes(image, ms, score="cnn"), repeat=args.net_repeat,
                        warmup=1))

    # Networks: the pipeline stage and bare onnxruntime on the same inputs, run alternately so that
    # other load on the machine hits both alike.
    sess_u = ms.session("hole_unet")
    pr, pc = unet_pad_shape(image.shape, spec.multiple)
    padded = np.zeros((1, 1, pr, pc), dtype=np.float32)
    padded[0, 0, : image.shape[0], : image.shape[1]] = norm
    feed_u = {sess_u.get_inputs()[0].name: padded}
    unet, bare_unet = paired("unet", lambda: probability_map(norm, ms), "unet (bare ort)",
                             lambda: sess_u.run(None, feed_u), args.net_repeat)
    sess_c = ms.session("hole_cnn")
    min_size = ms.spec("hole_cnn").min_size
    crops = [hole_crop_input(image.data, m, s, min_size)[None, None]
             for m, s in zip(geometry.matrices, geometry.shapes)]
    name_c = sess_c.get_inputs()[0].name
    cnn, bare_cnn = paired("cnn", lambda: cnn_scores(image.data, geometry, ms), "cnn (bare ort)",
                           lambda: [sess_c.run(None, {name_c: x}) for x in crops], args.net_repeat)
    rows[2:2] = [unet]
    rows[6:6] = [cnn]

    # Lattice search alone, 100 centroids on a 1024 x 1440 mask.
    c100, m100 = synthetic_centroids(100)
    lat100 = time_it(f"lattice, {len(c100)} centroids", lambda: fit_lattice(c100, m100), repeat=max(args.repeat, 20))
    lat100_off = time_it(f"lattice, {len(c100)} centroids, no refinement",
                         lambda: fit_lattice(c100, m100, refine=False), repeat=max(args.repeat, 20))

    print(f"# Med-mag pipeline, {MEDMAG.name} ({image.shape[0]}x{image.shape[1]}), "
          f"{len(warm.holes)} holes, provider {ms.provider}, {ms.threads} threads")
    print(f"# {machine_line()}")
    print(f"# first find_holes call in this process (sessions, cv2/ORT warm-up): {first * 1000:.0f} ms")
    print_table(rows + [bare_unet, bare_cnn, lat100, lat100_off], title="stages (ms)")
    non_net = sum(r.median for r in rows if r.name in ("read", "normalise", "centroids", "lattice", "crops"))
    by = {r.name: r for r in rows}
    print("\n## beside the original (ms, medians)")
    print("| stage | ptolemy-rt | original |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r.name} | {r.median:.1f} | {ORIGINAL.get(r.name, '-')} |")
    print(f"\nall stages but the two networks: {non_net:.1f} ms (target < 50 ms)")
    print(f"lattice search, {len(c100)} centroids: {lat100.median:.2f} ms "
          f"(no refinement {lat100_off.median:.2f} ms; target < 5 ms; original 1100 ms for 17)")
    for net, bare, note in ((by["unet"], bare_unet, "pad, sigmoid, crop back"),
                            (by["cnn"], bare_cnn, "crop sampling and normalisation")):
        print(f"{net.name}: {net.median:.0f} ms (min {net.min:.0f}) vs bare onnxruntime {bare.median:.0f} ms "
              f"(min {bare.min:.0f}): {net.min / bare.min - 1:+.1%} on the minima (target within 10 %; ours adds "
              f"{note})")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
