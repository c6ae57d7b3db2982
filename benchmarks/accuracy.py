"""Accuracy (and speed) of model sets, side by side: a fixed synthetic test set and the real examples.

    python -m benchmarks.accuracy                       # the default set, plus the published one if its weights exist
    python -m benchmarks.accuracy --models A --models B  # any sets (directories with manifest.json)
    python -m benchmarks.accuracy --no-published --n-medmag 6 --n-atlas 4 --json out.json

Synthetic test set: ptolemy_rt.synthetic images with seeds from export.datasets.test_seeds (>= 2**40; training
never draws them). Holes: find_holes (edge tolerance -10) against the truth holes at least 10 px inside the
image; a hole is found when a lattice point lies within 0.1 x spacing; recall, precision, mean centre error
(in % of the spacing) and the ranking AUC of truth-good holes among the found ones, by the hole CNN and by the
U-Net score. Squares: find_squares against the truth squares a segmenter can see (not covered, >= 30 %
visible; centre within 0.35 x pitch); recall and the AUC of collectable squares among the found ones.

Real examples (../shared/ptolemy-reference): medmag_readme_1024x1440.mrc with the reference's 24 holes at
edge tolerance 100 (also the image resampled to 0.5x and 2x, with the tolerance scaled), and its 17 holes at
the default -10; 20may08a_16760340.mrc with the reference's 48 squares (matched by centre within a quarter
of the square's side) and the Spearman correlation of our scores with the reference's. The reference is
what the original tool printed with the published weights: agreement, not truth.

Speed: warm find_squares on the real atlas and find_holes on the real med-mag image (median of --repeat),
each model set in the same process, same threads. The published set is converted into a temporary
directory (CC BY-NC: never inside the repository) by export.convert_ptolemy when the weights are present.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "ptolemy-reference"


# --------------------------------------------------------------------------------------------- metrics


def auc(scores, labels) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties counted half); None without both classes."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    keep = np.isfinite(s)
    s, y = s[keep], y[keep]
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return None
    from scipy.stats import rankdata

    ranks = rankdata(s)
    return float((ranks[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def match_unique(pred: np.ndarray, truth: np.ndarray, tol: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy one-to-one matching by distance: (index of the matched pred per truth or -1, distances)."""
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 2)
    truth = np.asarray(truth, dtype=np.float64).reshape(-1, 2)
    out = np.full(len(truth), -1, dtype=np.int64)
    dist = np.full(len(truth), np.nan)
    if len(pred) == 0 or len(truth) == 0:
        return out, dist
    tol = np.broadcast_to(np.asarray(tol, dtype=np.float64), (len(truth),))
    d = np.hypot(truth[:, None, 0] - pred[None, :, 0], truth[:, None, 1] - pred[None, :, 1])
    pairs = np.argwhere(d <= tol[:, None])
    order = np.argsort(d[pairs[:, 0], pairs[:, 1]], kind="stable")
    used = np.zeros(len(pred), dtype=bool)
    for t, p in pairs[order]:
        if out[t] < 0 and not used[p]:
            out[t] = p
            dist[t] = d[t, p]
            used[p] = True
    return out, dist


# ------------------------------------------------------------------------------------------- synthetic


def synthetic_holes(models, n: int) -> dict:
    """Hole detection and ranking on the synthetic med-mag test set."""
    from export.datasets import test_seeds
    from ptolemy_rt.holes import find_holes
    from ptolemy_rt.synthetic import make_medmag

    n_truth = n_found = n_pred = n_pred_ok = 0
    errors: list[float] = []
    good: list[bool] = []
    cnn: list[float] = []
    unet: list[float] = []
    failed = 0
    per_image: dict[str, list[float]] = {"cnn": [], "unet": []}
    seconds: list[float] = []
    top_good = top_images = 0
    for seed in test_seeds(n, stream=0):
        image, truth = make_medmag(seed)
        h, w = image.shape
        c = np.asarray(truth.centers)
        inside = (c[:, 0] >= 10) & (c[:, 0] <= w - 11) & (c[:, 1] >= 10) & (c[:, 1] <= h - 11)
        t0 = time.perf_counter()
        result = find_holes(image.astype(np.float32), models, edge_tolerance=-10.0)
        seconds.append(time.perf_counter() - t0)
        pred = np.array([(x.x, x.y) for x in result.holes]).reshape(-1, 2)
        if not result.holes:
            failed += 1
        idx, dist = match_unique(pred, c[inside], 0.1 * truth.spacing_px)
        n_truth += int(inside.sum())
        n_found += int((idx >= 0).sum())
        # A prediction is correct when it lies on any truth hole (including those < 10 px from the edge).
        any_idx, _ = match_unique(pred, c, 0.1 * truth.spacing_px)
        n_pred += len(pred)
        n_pred_ok += int((any_idx >= 0).sum())
        errors += list(dist[idx >= 0] / truth.spacing_px)
        start = len(good)
        for t, p in zip(np.flatnonzero(inside), idx):
            if p >= 0:
                hole = result.holes[p]
                good.append(bool(truth.good[t]))
                cnn.append(np.nan if hole.scores.get("cnn") is None else hole.scores["cnn"])
                unet.append(hole.scores["unet"])
        # The hole an operator would take first: the best by the set's own ranking score.
        ranked = [(result.holes[p].score, bool(truth.good[t])) for t, p in zip(np.flatnonzero(inside), idx)
                  if p >= 0 and result.holes[p].score is not None]
        if ranked:
            top_images += 1
            top_good += max(ranked, key=lambda r: r[0])[1]
        for key, values in (("cnn", cnn), ("unet", unet)):
            a = auc(values[start:], good[start:])
            if a is not None:
                per_image[key].append(a)
    return {
        "images": n,
        "empty_results": failed,
        "truth_holes": n_truth,
        "recall": n_found / max(n_truth, 1),
        "precision": n_pred_ok / max(n_pred, 1),
        "centre_error_pct": 100 * float(np.mean(errors)) if errors else None,
        "auc_good_cnn": auc(cnn, good),
        "auc_good_unet": auc(unet, good),
        # Pooled: one ranking over all images (what a script comparing holes across squares sees). Per image:
        # the AUC within each image, averaged (what an operator choosing holes in one square sees). A model
        # set without a scale-normalised U-Net sums probabilities over input pixels, which grows with the
        # lattice period: for it only the per-image U-Net AUC means anything.
        "auc_good_cnn_per_image": float(np.mean(per_image["cnn"])) if per_image["cnn"] else None,
        "auc_good_unet_per_image": float(np.mean(per_image["unet"])) if per_image["unet"] else None,
        "good_fraction": float(np.mean(good)) if good else None,
        "top_hole_good": f"{top_good} / {top_images}",
        "find_holes_ms_median": 1e3 * statistics.median(seconds),
        "find_holes_ms_max": 1e3 * max(seconds),
    }


def synthetic_squares(models, n: int) -> dict:
    """Square detection and collectable ranking on the synthetic atlas test set."""
    from export.datasets import test_seeds
    from ptolemy_rt.squares import find_squares
    from ptolemy_rt.synthetic import make_atlas

    n_truth = n_found = n_pred = n_pred_ok = 0
    labels: list[bool] = []
    scores: list[float] = []
    per_image: list[float] = []
    for seed in test_seeds(n, stream=1):
        image, truth = make_atlas(seed)
        result = find_squares(image, models)
        pred = np.array([(s.x, s.y) for s in result.squares]).reshape(-1, 2)
        det = np.asarray(truth.detectable)
        tol = 0.35 * truth.pitch_px
        idx, _ = match_unique(pred, truth.centers[det], tol)
        n_truth += int(det.sum())
        n_found += int((idx >= 0).sum())
        all_idx, _ = match_unique(pred, truth.centers, tol)
        n_pred += len(pred)
        n_pred_ok += int((all_idx >= 0).sum())
        start = len(labels)
        for t, p in enumerate(all_idx):
            if p >= 0 and result.squares[p].score is not None:
                labels.append(bool(truth.collectable[t]))
                scores.append(result.squares[p].score)
        a = auc(scores[start:], labels[start:])
        if a is not None:
            per_image.append(a)
    return {
        "images": n,
        "truth_squares": n_truth,
        "recall": n_found / max(n_truth, 1),
        "precision": n_pred_ok / max(n_pred, 1),
        "auc_collectable": auc(scores, labels),
        "auc_collectable_per_image": float(np.mean(per_image)) if per_image else None,
        "collectable_fraction": float(np.mean(labels)) if labels else None,
    }


# ------------------------------------------------------------------------------------------------ real


def _ref_centres(items: list[dict]) -> np.ndarray:
    # The original's coordinates are ours + 0.5 (it measured from the top-left pixel's corner).
    return np.array([np.mean(np.asarray(t["vertices"], dtype=np.float64), axis=0) - 0.5 for t in items])


def real_holes(models, reference: Path) -> dict:
    """Agreement with the original's holes on the real med-mag example at 1x, 0.5x and 2x."""
    import cv2

    from ptolemy_rt.holes import find_holes
    from ptolemy_rt.io import read_image

    image = read_image(reference / "images" / "medmag_readme_1024x1440.mrc").data
    out: dict = {}
    for name, tol_edge in (("edgetol100", 100.0), ("default", -10.0)):
        ref_file = "medmag_readme_edgetol100.json" if name == "edgetol100" else "medmag_readme.json"
        ref = json.loads((reference / "reference-outputs" / ref_file).read_text())
        centres = _ref_centres(ref)
        side = float(np.sqrt(ref[0]["area"]))
        spacing = side + 20.0  # crops are spacing - 20 wide
        scales = (1.0, 0.5, 2.0) if name == "edgetol100" else (1.0,)
        for f in scales:
            if f == 1.0:
                img = image
            else:
                size = (int(round(image.shape[1] * f)), int(round(image.shape[0] * f)))
                img = cv2.resize(image, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC)
            sx, sy = img.shape[1] / image.shape[1], img.shape[0] / image.shape[0]
            ref_f = np.stack([(centres[:, 0] + 0.5) * sx - 0.5, (centres[:, 1] + 0.5) * sy - 0.5], axis=1)
            result = find_holes(img, models, edge_tolerance=tol_edge * f)
            pred = np.array([(h.x, h.y) for h in result.holes]).reshape(-1, 2)
            idx, dist = match_unique(pred, ref_f, 0.1 * spacing * f)
            out[f"{name}@{f:g}x"] = {
                "reference": len(ref_f),
                "found": int((idx >= 0).sum()),
                "ours": len(pred),
                "max_error_pct": None if not (idx >= 0).any() else float(100 * np.nanmax(dist) / (spacing * f)),
                "spacing_px": result.spacing_px,
                "reason": result.reason,
            }
    return out


def real_squares(models, reference: Path) -> dict:
    """Agreement with the original's 48 squares on the real atlas, and Spearman of the scores."""
    from scipy.stats import spearmanr

    from ptolemy_rt.squares import find_squares

    ref = json.loads((reference / "reference-outputs" / "lowmag_20may08a_16760340.json").read_text())
    centres = _ref_centres(ref)
    result = find_squares(reference / "images" / "20may08a_16760340.mrc", models)
    pred = np.array([(s.x, s.y) for s in result.squares]).reshape(-1, 2)
    tol = 0.25 * np.sqrt(np.array([t["area"] for t in ref]))
    idx, _ = match_unique(pred, centres, tol)
    ok = idx >= 0
    ours = np.array([result.squares[p].score for p in idx[ok]], dtype=np.float64)
    theirs = np.array([t["score"] for t in ref], dtype=np.float64)[ok]
    rho = float(spearmanr(ours, theirs).statistic) if ok.sum() > 2 else None
    return {"reference": len(ref), "found": int(ok.sum()), "ours": len(pred), "spearman": rho}


# ----------------------------------------------------------------------------------------------- speed


def speed(models, reference: Path, repeat: int, holes: bool = True, squares: bool = True) -> dict:
    """Warm end-to-end times (ms, median of `repeat`) on the real examples."""
    from ptolemy_rt.holes import find_holes
    from ptolemy_rt.io import read_image
    from ptolemy_rt.squares import find_squares

    atlas = read_image(reference / "images" / "20may08a_16760340.mrc")
    medmag = read_image(reference / "images" / "medmag_readme_1024x1440.mrc")
    out = {}
    for name, fn, wanted in (("find_squares_ms", lambda: find_squares(atlas, models), squares),
                             ("find_holes_ms", lambda: find_holes(medmag, models), holes)):
        if not wanted:
            continue
        fn()
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t))
        out[name] = statistics.median(times)
    return out


# ------------------------------------------------------------------------------------------------ main


@dataclass
class Column:
    name: str
    path: Path
    results: dict = field(default_factory=dict)


ROWS = [
    ("synthetic holes: recall", ("holes", "recall"), "{:.4f}"),
    ("synthetic holes: precision", ("holes", "precision"), "{:.4f}"),
    ("synthetic holes: centre error % spacing", ("holes", "centre_error_pct"), "{:.2f}"),
    ("synthetic holes: AUC good (cnn)", ("holes", "auc_good_cnn"), "{:.3f}"),
    ("synthetic holes: AUC good (unet)", ("holes", "auc_good_unet"), "{:.3f}"),
    ("synthetic holes: AUC good per image (cnn)", ("holes", "auc_good_cnn_per_image"), "{:.3f}"),
    ("synthetic holes: AUC good per image (unet)", ("holes", "auc_good_unet_per_image"), "{:.3f}"),
    ("synthetic holes: empty results", ("holes", "empty_results"), "{}"),
    ("synthetic holes: top-ranked hole good (images)", ("holes", "top_hole_good"), "{}"),
    ("synthetic holes: find_holes median ms", ("holes", "find_holes_ms_median"), "{:.0f}"),
    ("synthetic holes: find_holes max ms", ("holes", "find_holes_ms_max"), "{:.0f}"),
    ("synthetic squares: recall", ("squares", "recall"), "{:.4f}"),
    ("synthetic squares: precision", ("squares", "precision"), "{:.4f}"),
    ("synthetic squares: AUC collectable", ("squares", "auc_collectable"), "{:.3f}"),
    ("synthetic squares: AUC collectable per image", ("squares", "auc_collectable_per_image"), "{:.3f}"),
    ("real med-mag 1x, tol 100: found / 24", ("real_holes", "edgetol100@1x", "found"), "{}"),
    ("real med-mag 0.5x, tol 50: found / 24", ("real_holes", "edgetol100@0.5x", "found"), "{}"),
    ("real med-mag 2x, tol 200: found / 24", ("real_holes", "edgetol100@2x", "found"), "{}"),
    ("real med-mag 1x: holes we report (tol 100)", ("real_holes", "edgetol100@1x", "ours"), "{}"),
    ("real med-mag 1x, tol -10: found / 17", ("real_holes", "default@1x", "found"), "{}"),
    ("real atlas: squares found / 48", ("real_squares", "found"), "{}"),
    ("real atlas: squares we report", ("real_squares", "ours"), "{}"),
    ("real atlas: Spearman vs reference scores", ("real_squares", "spearman"), "{:.3f}"),
    ("speed: find_squares 1024x1024 (ms)", ("speed", "find_squares_ms"), "{:.0f}"),
    ("speed: find_holes 1024x1440 (ms)", ("speed", "find_holes_ms"), "{:.0f}"),
]


def _get(d: dict, keys: tuple) -> object:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def print_table(columns: list[Column], file=sys.stdout) -> None:
    header = ["metric"] + [c.name for c in columns]
    table = [header]
    for label, keys, fmt in ROWS:
        row = [label]
        for c in columns:
            v = _get(c.results, keys)
            row.append("-" if v is None else fmt.format(v))
        table.append(row)
    from benchmarks.harness import print_markdown

    print_markdown(table, file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", action="append", type=Path, default=None,
                        help="a model set directory (repeatable; default: the shipped set)")
    parser.add_argument("--published", type=Path, default=None,
                        help="an already converted published set (default: convert into a temp dir)")
    parser.add_argument("--no-published", action="store_true", help="skip the published set")
    parser.add_argument("--reference", type=Path, default=REFERENCE)
    parser.add_argument("--n-medmag", type=int, default=12)
    parser.add_argument("--n-atlas", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", action="append", default=[], choices=("holes", "squares", "real", "speed"))
    parser.add_argument("--json", type=Path, default=None, help="also write all numbers here")
    args = parser.parse_args(argv)

    from ptolemy_rt.models import default_models_dir, load_models

    columns = [Column("default" if p is None else p.name, p or default_models_dir()) for p in (args.models or [None])]
    tmp = None
    if not args.no_published:
        if args.published is not None:
            columns.append(Column("published (converted)", args.published))
        elif (args.reference / "weights").is_dir():
            from export.convert_ptolemy import convert

            tmp = tempfile.TemporaryDirectory(prefix="ptolemy_converted_")
            columns.append(Column("published (converted)",
                                  convert(args.reference / "weights", Path(tmp.name) / "set", bn="batch")))
    try:
        for col in columns:
            models = load_models(col.path, provider="cpu", threads=args.threads)
            t = time.perf_counter()
            holes = models.has("hole_unet")
            squares = models.has("square_cnn")
            if "holes" not in args.skip and holes:
                col.results["holes"] = synthetic_holes(models, args.n_medmag)
            if "squares" not in args.skip and squares:
                col.results["squares"] = synthetic_squares(models, args.n_atlas)
            if "real" not in args.skip and args.reference.is_dir():
                if holes:
                    col.results["real_holes"] = real_holes(models, args.reference)
                if squares:
                    col.results["real_squares"] = real_squares(models, args.reference)
            if "speed" not in args.skip and args.reference.is_dir():
                col.results["speed"] = speed(models, args.reference, args.repeat, holes, squares)
            print(f"{col.name}: evaluated in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(f"\nAccuracy ({args.n_medmag} synthetic med-mag images, {args.n_atlas} synthetic atlases, "
          f"{args.threads} threads)\n")
    print_table(columns)
    if args.json is not None:
        args.json.write_text(json.dumps({c.name: c.results for c in columns}, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
