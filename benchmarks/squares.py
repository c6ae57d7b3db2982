"""Low-mag pipeline stage timings on the example atlas (warm), beside a straightforward per-pixel NumPy EM.

    python -m benchmarks.squares [--image PATH] [--models DIR] [--repeat N]

Prints a table; asserts nothing. Without --models the CNN is skipped (a model set converted from the
published weights, e.g. /tmp/ptolemy_converted, gives the original's network; never commit one).
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

from benchmarks.harness import machine_line, print_table, time_it  # noqa: E402

DEFAULT_IMAGE = REPO.parent / "shared" / "ptolemy-reference" / "images" / "20may08a_16760340.mrc"


def per_pixel_em(x: np.ndarray) -> np.ndarray:
    """The textbook per-pixel EM (ptolemy_rt.mixture.per_pixel_em); returns the flat bright mask."""
    from ptolemy_rt.mixture import per_pixel_em as reference

    return reference(x)[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--models", type=Path, default=None, help="model set for the CNN stage (optional)")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)

    from ptolemy_rt import mixture, regions, squares
    from ptolemy_rt.io import read_image

    image = read_image(args.image)
    data = image.data
    seg = mixture.segment(data, image.dtype)
    reg = regions.find_regions(seg.mask)
    theta = squares.grid_angle(reg.hulls)

    def stage_crops():
        mean, std = squares.class_stats(data, seg.mask)
        return squares.square_crops(data, reg.hulls, theta, mean, std)

    def all_but_cnn():
        img = read_image(args.image)
        s = mixture.segment(img.data, img.dtype)
        r = regions.find_regions(s.mask)
        regions.region_means(r, s.mask, img.data)
        t = squares.grid_angle(r.hulls)
        squares.boxes_at_angle(r.hulls, t)
        mean, std = squares.class_stats(img.data, s.mask)
        return squares.square_crops(img.data, r.hulls, t, mean, std)

    rep = args.repeat
    rows = [
        time_it("read (MRC -> float32)", lambda: read_image(args.image), rep),
        time_it("mixture (histogram EM + mask)", lambda: mixture.segment(data, image.dtype), rep),
        time_it("regions (+ brightness)", lambda: regions.region_means(regions.find_regions(seg.mask), seg.mask, data),
                rep),
        time_it("angle (+ boxes)", lambda: squares.boxes_at_angle(reg.hulls, squares.grid_angle(reg.hulls)), rep),
        time_it(f"crops ({len(reg)} x 240x240, normalised)", stage_crops, rep),
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
    if args.models is not None:
        from ptolemy_rt.models import load_models

        models = load_models(args.models, provider="cpu")
        rows.append(time_it("find_squares(models) end to end", lambda: squares.find_squares(args.image, models=models),
                            max(3, rep // 4), warmup=1))
        last = squares.find_squares(args.image, models=models)
        extra.append(("last end-to-end stages (ms)", ", ".join(f"{k} {v * 1e3:.1f}" for k, v in last.timings.items())))
        # The CNN stage against bare onnxruntime on the same batch, alternated so load hits both alike.
        batch = np.ascontiguousarray(stage_crops(), dtype=np.float32).reshape(-1, 1, 240, 240)
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
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    raise SystemExit(main())
