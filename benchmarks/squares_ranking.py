"""How well the square CNN ranks squares on the held-out atlases (benchmarks/atlas_sets.py), per category.

    python -m benchmarks.squares_ranking [--per-category 2] [--models A --models B ...] [--large]

For each model set (default: the shipped one), find_squares on every held-out atlas; found squares are matched
to truth squares (centre within 0.35 pitch, one to one, as benchmarks.squares_accuracy_real) and those whose
truth square is whole (visible >= 0.98) are ranked by their CNN score. A square of kind "ok" is what an
operator would collect (the synthetic training set's "collectable"); thin, thick, empty and broken squares
are not. Reports, per category and pooled over all: the AUC of ok squares among the ranked ones (pooled over
the category's atlases, and the mean of per-atlas AUCs) and the share of ok squares among each atlas's top
quarter (what a session collecting the best quarter gets; the ok share of all ranked squares beside it).
The held-out set is never used for training. Prints Markdown tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.accuracy import auc  # noqa: E402
from benchmarks.atlas_sets import CATEGORIES, HeldoutTruth, heldout_cases, make_heldout_atlas  # noqa: E402
from benchmarks.harness import machine_line, print_markdown  # noqa: E402
from benchmarks.squares_accuracy_real import match  # noqa: E402
from ptolemy_rt.results import SquareResult  # noqa: E402

# A truth square at least this visible is whole: edge-cut squares are not ranked (their kind is moot).
WHOLE = 0.98


def ranked(result: SquareResult, truth: HeldoutTruth) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ok labels) of the found squares matched to whole truth squares."""
    pred = np.array([(s.x, s.y) for s in result.squares], dtype=np.float64).reshape(-1, 2)
    idx = match(pred, truth.centers, 0.35 * truth.pitch_px)
    kinds = np.array(truth.kinds)
    keep = np.flatnonzero((idx >= 0) & (truth.visible >= WHOLE))
    scores = np.array([result.squares[idx[t]].score for t in keep], dtype=np.float64)
    return scores, kinds[keep] == "ok"


def top_share(scores: np.ndarray, labels: np.ndarray, fraction: float = 0.25) -> float | None:
    """Share of ok squares among the top `fraction` by score (ties broken by order, stable)."""
    if len(scores) == 0:
        return None
    k = max(1, int(round(fraction * len(scores))))
    order = np.argsort(-scores, kind="stable")
    return float(labels[order[:k]].mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.squares_ranking", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", action="append", type=Path, default=None,
                        help="a model set directory (repeatable; default: the shipped set)")
    parser.add_argument("--per-category", type=int, default=2)
    parser.add_argument("--large", action="store_true", help="add an 8192² atlas to the large category")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default=None, help="comma-separated categories (default: all)")
    args = parser.parse_args(argv)

    from ptolemy_rt import find_squares
    from ptolemy_rt.models import default_models_dir, load_models

    paths = args.models or [default_models_dir()]
    sets = [load_models(p, provider="cpu", threads=args.threads) for p in paths]
    names = [str(p) for p in paths]
    # per set, per category: list of (scores, labels) per atlas
    runs: list[dict[str, list[tuple[np.ndarray, np.ndarray]]]] = [{c: [] for c in CATEGORIES} for _ in sets]
    seconds = [0.0 for _ in sets]
    only = set(args.only.split(",")) if args.only else None
    for case in heldout_cases(args.per_category, large=args.large):
        if only and case.category not in only:
            continue
        image, truth, _ = make_heldout_atlas(case)
        for k, models in enumerate(sets):
            t0 = time.perf_counter()
            result = find_squares(image, models)
            seconds[k] += time.perf_counter() - t0
            runs[k][case.category].append(ranked(result, truth))
    print(f"# square ranking on the held-out atlases ({args.per_category} per category); {machine_line()}\n")
    head = ["category", "ranked", "ok share"]
    for name in names:
        head += [f"AUC {name}", f"per-atlas AUC {name}", f"top-quarter ok {name}"]
    table = [head]
    for cat in CATEGORIES + ("all",):
        if cat != "all" and not runs[0][cat]:
            continue
        row: list[str] = []
        for k in range(len(sets)):
            pairs = [p for c in CATEGORIES for p in runs[k][c]] if cat == "all" else runs[k][cat]
            s = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros(0)
            y = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0, dtype=bool)
            if k == 0:
                row = [cat, str(len(s)), f"{y.mean():.3f}" if len(y) else "-"]
            a = auc(s, y)
            per = [v for v in (auc(*p) for p in pairs) if v is not None]
            tops = [v for v in (top_share(*p) for p in pairs) if v is not None]
            row += ["-" if a is None else f"{a:.3f}", f"{np.mean(per):.3f}" if per else "-",
                    f"{np.mean(tops):.3f}" if tops else "-"]
        table.append(row)
    print_markdown(table)
    print("\nfind_squares seconds, all atlases: " + ", ".join(f"{n} {s:.1f}" for n, s in zip(names, seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
