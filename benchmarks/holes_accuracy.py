"""Hole finding on the held-out set of benchmarks.holes_sets (issue 11): recall, precision, centre error per
category, the worst image's recall, and why images came back empty.

    python -m benchmarks.holes_accuracy [--n 8] [--categories square,hexagonal] [--models DIR] [--json out.json]
    python -m benchmarks.holes_accuracy --n 12 --seed-base 9200000   # a fresh held-out set (other seeds)
    python -m benchmarks.holes_accuracy --real-only --overlays DIR   # the real EPU view at 1x, 2x, 4x
    python -m benchmarks.holes_accuracy --seeds 9101010,9302011 --skip-real  # just these images

Runs the real find_holes (default options: general lattice, film mask, edge tolerance -10) with the shipped
model set (or --models). Grid-square views (whole_square) run at 1x, 2x and 4x (cv2 bicubic upsampling; 4x
only for the 512 x 364 views), as a user would upsample them. A returned hole is a true positive when it is
within 0.25 x spacing (single_hole: 0.25 x diameter) of a target (one-to-one, nearest first); returned holes
near an ambiguous hole (partly under a bar, torn film, contamination, or at the edge band) count neither way;
the rest are false positives. Centre error: distance of each true positive to its target, px (and in % of
the spacing). Also the real EPU grid-square view (../shared/real-epu, when present) at 1x, 2x and 4x: holes
on and off film (find_holes with keep_off_film=True), lattice, reason; --overlays DIR writes each scale's
overlay there (PNG: off-film areas tinted red, holes on film green, off film red). Prints tables; asserts
nothing.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.accuracy import match_unique  # noqa: E402
from benchmarks.harness import machine_line, print_markdown  # noqa: E402
from benchmarks.holes_sets import CATEGORIES, SEED0, Sample, make_sample, upsample  # noqa: E402

TOL_SPACING = 0.25
REAL = REPO.parent / "shared" / "real-epu" / "smartem_gs8999138.jpg"


def real_view(models, overlays: Path | None) -> list[list[str]]:
    """find_holes on the real EPU view at 1x, 2x, 4x (cv2 bicubic): holes on / off film, lattice, reason."""
    import cv2

    from ptolemy_rt.film import film_mask
    from ptolemy_rt.holes import find_holes

    real = cv2.imread(str(REAL), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    table = [["scale", "size", "holes on film", "off film", "kind", "spacing a / b px", "angle a-b", "seconds",
              "reason"]]
    for f in (1, 2, 4):
        im = real if f == 1 else cv2.resize(real, None, fx=f, fy=f, interpolation=cv2.INTER_CUBIC)
        t = time.perf_counter()
        res = find_holes(im, models, keep_off_film=True)
        seconds = time.perf_counter() - t
        on = sum(1 for h in res.holes if h.on_film)
        lat = res.lattice
        table.append([f"{f}x", f"{im.shape[1]}x{im.shape[0]}", str(on), str(len(res.holes) - on),
                      lat.kind if lat else "-", f"{lat.spacing_a:.2f} / {lat.spacing_b:.2f}" if lat else "-",
                      f"{lat.angle_ab_deg:.1f}" if lat else "-", f"{seconds:.2f}", res.reason or ""])
        if overlays is not None:
            overlays.mkdir(parents=True, exist_ok=True)
            rgb = cv2.cvtColor(np.clip(im, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
            if lat is not None:
                film = film_mask(im, lat.spacing_px)
                rgb[~film] = (0.6 * rgb[~film] + [0, 0, 100]).astype(np.uint8)
            r = max(2, round(0.15 * (lat.spacing_px if lat else 10)))
            for h in res.holes:
                cv2.circle(rgb, (round(h.x), round(h.y)), r, (0, 200, 0) if h.on_film else (0, 0, 255), -1)
            cv2.imwrite(str(overlays / f"epu_holes_{f}x.png"), rgb)
    return table


def seed_image(seed: int) -> tuple[str, int, int]:
    """(category, index, seed base) of the held-out image with this seed (holes_sets.make_sample's scheme)."""
    base, rest = seed - seed % 10_000, seed % 10_000
    if base < SEED0 or rest // 1000 >= len(CATEGORIES):
        raise ValueError(f"{seed} is no held-out image's seed (seed base >= {SEED0} + 1000 x category index + i)")
    return CATEGORIES[rest // 1000], rest % 1000, base


def evaluate(sample: Sample, models) -> dict:
    """find_holes on one sample against its truth: counts, errors, reason, seconds."""
    from ptolemy_rt.holes import find_holes

    t = time.perf_counter()
    res = find_holes(sample.image, models)
    seconds = time.perf_counter() - t
    pred = np.array([[h.x, h.y] for h in res.holes], dtype=np.float64).reshape(-1, 2)
    scale = 2 * sample.radius_px if sample.category == "single_hole" else sample.spacing_px
    tol = TOL_SPACING * scale if scale > 0 else 10.0
    idx, dist = match_unique(pred, sample.targets, tol)
    tp = int((idx >= 0).sum())
    used = np.zeros(len(pred), dtype=bool)
    used[idx[idx >= 0]] = True
    rest = pred[~used]
    if len(rest) and len(sample.ambiguous):
        d = np.hypot(rest[:, None, 0] - sample.ambiguous[None, :, 0], rest[:, None, 1] - sample.ambiguous[None, :, 1])
        ignored = int((d.min(axis=1) <= tol).sum())
    else:
        ignored = 0
    fp = len(rest) - ignored
    lat = res.lattice
    return {
        "category": sample.category, "variant": sample.variant, "seed": sample.seed,
        "shape": list(sample.image.shape), "spacing_px": sample.spacing_px, "targets": len(sample.targets),
        "returned": len(pred), "tp": tp, "fp": fp, "ignored": ignored,
        "errors_px": [float(v) for v in dist[idx >= 0]],
        "recall": tp / len(sample.targets) if len(sample.targets) else None,
        "precision": tp / (tp + fp) if tp + fp else None,
        "reason": res.reason, "seconds": seconds,
        "lattice": None if lat is None else {"kind": lat.kind, "spacing_a": lat.spacing_a, "spacing_b": lat.spacing_b,
                                             "angle_ab_deg": lat.angle_ab_deg},
    }


def _short_reason(reason: str | None) -> str:
    """A reason with its numbers masked, to count alike reasons together."""
    if not reason:
        return ""
    return re.sub(r"\d+(\.\d+)?", "#", reason)[:90]


def summarise(rows: list[dict]) -> list[list[str]]:
    """One table row per group: images, targets, returned, recall, precision, centre error, worst recall."""
    table = [["group", "images", "targets", "returned", "TP", "FP", "recall", "precision", "centre err px mean / p95",
              "err % spacing", "worst recall", "images R<0.9", "empty images", "median s"]]
    groups: dict[str, list[dict]] = collections.defaultdict(list)
    for r in rows:
        groups[r["group"]].append(r)
    for g, rs in groups.items():
        targets = sum(r["targets"] for r in rs)
        tp = sum(r["tp"] for r in rs)
        fp = sum(r["fp"] for r in rs)
        errs = np.array([e for r in rs for e in r["errors_px"]])
        rel = np.array([e / r["spacing_px"] * 100 for r in rs for e in r["errors_px"] if r["spacing_px"] > 0])
        recalls = [r["recall"] for r in rs if r["recall"] is not None]
        table.append([
            g, str(len(rs)), str(targets), str(sum(r["returned"] for r in rs)), str(tp), str(fp),
            f"{tp / targets:.3f}" if targets else "-", f"{tp / (tp + fp):.3f}" if tp + fp else "-",
            f"{errs.mean():.2f} / {np.percentile(errs, 95):.2f}" if len(errs) else "-",
            f"{rel.mean():.2f}" if len(rel) else "-",
            f"{min(recalls):.3f}" if recalls else "-", str(sum(1 for v in recalls if v < 0.9)),
            str(sum(1 for r in rs if r["returned"] == 0)), f"{np.median([r['seconds'] for r in rs]):.2f}",
        ])
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="images per category (default 8)")
    parser.add_argument("--categories", default=",".join(CATEGORIES))
    parser.add_argument("--scales", default="1,2,4", help="upsampling factors for whole_square views")
    parser.add_argument("--models", default=None, help="model set directory (default: the shipped set)")
    parser.add_argument("--json", type=Path, default=None, help="write the per-image rows here")
    parser.add_argument("--overlays", type=Path, default=None, help="write the real view's overlays here")
    parser.add_argument("--real-only", action="store_true", help="only the real EPU view")
    parser.add_argument("--seed-base", type=int, default=SEED0,
                        help=f"first seed of the set (default {SEED0}); another multiple of 10000 draws a fresh set")
    parser.add_argument("--skip-real", action="store_true", help="leave out the real EPU view")
    parser.add_argument("--seeds", default=None,
                        help="only these images, by seed (comma-separated; each names its set, category and index: "
                             "seed base + 1000 x category index + i), instead of --n / --categories / --seed-base")
    args = parser.parse_args(argv)
    from ptolemy_rt.models import resolve_models

    models = resolve_models(args.models)
    scales = [int(s) for s in args.scales.split(",")]
    print(machine_line())
    if REAL.exists() and not args.skip_real:
        print(f"\n## Real EPU view {REAL.name} (find_holes, keep_off_film=True)\n")
        print_markdown(real_view(models, args.overlays))
    if args.real_only:
        return 0
    rows = []
    if args.seeds:
        try:
            picks = [seed_image(int(t)) for t in args.seeds.split(",")]
        except ValueError as e:
            parser.error(f"--seeds: {e}")
    else:
        picks = [(c, i, args.seed_base) for c in args.categories.split(",") for i in range(args.n)]
    for category, i, seed_base in picks:
        sample = make_sample(category, i, seed_base)
        for f in scales if category == "whole_square" else [1]:
            if f == 4 and max(sample.image.shape) > 600:
                continue  # 4x of 1024 x 1440 is 24 Mpx: not what anyone would do
            r = evaluate(upsample(sample, f), models)
            r["group"] = f"{category} @{f}x" if category == "whole_square" else category
            if category == "whole_square":
                r["group"] += " 512x364" if sample.image.shape[0] < 500 else " 1024x1440"
            rows.append(r)
            print(f"  {r['group']:28s} seed {r['seed']} {r['variant']:28s} targets {r['targets']:5d} returned "
                  f"{r['returned']:5d} tp {r['tp']:5d} fp {r['fp']:4d} {r['seconds']:.2f}s "
                  f"{(r['lattice'] or {}).get('kind', '')} {r['reason'] or ''}", flush=True)
    rows.sort(key=lambda r: (CATEGORIES.index(r["category"]), r["group"]))
    origin = f"seeds {args.seeds}" if args.seeds else f"seeds from {args.seed_base}"
    print(f"\n## Held-out set (benchmarks.holes_sets, {origin}), find_holes defaults, shipped models\n")
    print_markdown(summarise(rows))
    reasons = collections.Counter((r["group"], _short_reason(r["reason"])) for r in rows if r["reason"])
    if reasons:
        print("\n## Reasons given\n")
        print_markdown([["group", "reason (numbers masked)", "images"]]
                       + [[g, m, str(n)] for (g, m), n in sorted(reasons.items())])
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
