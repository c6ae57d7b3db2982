"""Squares on real-looking atlases (issue 12): recall, precision and the worst image per category on the
held-out set (benchmarks/atlas_sets.py), and how well mesh.detect_mesh measures pitch, bar width and angle.

    python -m benchmarks.squares_accuracy_real [--per-category 4] [--large] [--blocks] [--prototype]

Runs ptolemy_rt.find_squares(models=False) (geometry only: recall and precision do not depend on the CNN)
on every atlas as it is (since the wiring, the mesh-driven default: mesh, disc, seams, lattice). With --blocks
it also runs it on the atlas after the issue-12 building blocks a
pipeline could apply first (remove_seams; for montages, assembling the raw pieces with per-tile gains),
to show what they change before any wiring; with --prototype, a sketch of the wiring built around
find_squares from outside (mesh-set grouping window and area limits, disc filter, lattice fill; see
prototype()), and with both, the two together. A found square is a true positive when its centre lies within
0.35 pitch of a truth square (one to one); recall counts truth squares at least half visible. Prints
Markdown tables; asserts nothing.
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

from benchmarks.atlas_sets import CATEGORIES, SEED_BASE, heldout_cases, make_heldout_atlas  # noqa: E402
from benchmarks.harness import machine_line, print_markdown  # noqa: E402

# A truth square at least this visible is whole (centre error and ranking are measured on these).
WHOLE = 0.98


def match(pred: np.ndarray, truth: np.ndarray, tol: float) -> np.ndarray:
    """Greedy one-to-one matching by distance (KD-tree): index of the matched pred per truth, or -1."""
    from scipy.spatial import cKDTree

    out = np.full(len(truth), -1, dtype=np.int64)
    if len(pred) == 0 or len(truth) == 0:
        return out
    tree = cKDTree(pred)
    pairs = tree.query_ball_point(truth, r=tol)
    cand = [(float(np.hypot(*(truth[t] - pred[p]))), t, p) for t, ps in enumerate(pairs) for p in ps]
    cand.sort()
    used = np.zeros(len(pred), dtype=bool)
    for _, t, p in cand:
        if out[t] < 0 and not used[p]:
            out[t] = p
            used[p] = True
    return out


def score(pred: np.ndarray, truth, edge: np.ndarray | None = None, classes: list | None = None) -> dict:
    """Recall over counted squares, precision over all found ones, precision over the found ones not
    flagged `edge` (under half visible at the image edge), and how many truth "ok" and "thick" squares found
    got that class (`classes`: the found squares' classes)."""
    tol = 0.35 * truth.pitch_px
    idx = match(pred, truth.centers, tol)
    flag = np.zeros(len(pred), dtype=bool) if edge is None else np.asarray(edge, dtype=bool)
    matched = np.zeros(len(pred), dtype=bool)
    matched[idx[idx >= 0]] = True
    counted = truth.counted
    found = (idx >= 0) & counted
    n_true = int(counted.sum())
    tp = int((idx >= 0).sum())
    kinds = np.array(truth.kinds)
    per_kind = {k: (int((found & (kinds == k)).sum()), int((counted & (kinds == k)).sum())) for k in set(truth.kinds)}
    return {
        "n_truth": n_true,
        "n_found": int(found.sum()),
        "n_pred": len(pred),
        "tp": tp,
        "recall": found.sum() / max(n_true, 1),
        "precision": tp / max(len(pred), 1),
        "per_kind": per_kind,
        "class_ok": [sum(1 for t in np.flatnonzero(found & (kinds == k)) if classes[idx[t]] == k)
                     for k in ("ok", "thick")] if classes is not None else [0, 0],
        "class_n": [int((found & (kinds == k)).sum()) for k in ("ok", "thick")],
        "n_edge": int(flag.sum()),
        "tp_t": int((matched & ~flag).sum()),
        "n_pred_t": int((~flag).sum()),
        # Centre error of found whole squares (visible >= WHOLE), in pitches: an edge-cut square's box centre is
        # off its lattice point by design.
        "centre_err": [float(np.hypot(*(truth.centers[t] - pred[idx[t]])) / truth.pitch_px)
                       for t in np.flatnonzero((idx >= 0) & (truth.visible >= WHOLE))],
    }


def run_squares(image, models=False) -> tuple[np.ndarray, float, str | None, np.ndarray, list]:
    """Centres found by find_squares(models=False), its time, its reason, the squares' edge flags and classes."""
    return _run(image, models)[:5]


def _run(image, models=False) -> tuple:
    """run_squares' values, the CNN scores (None without models) and a digest of the result's to_dict."""
    import hashlib
    import json

    from ptolemy_rt import find_squares

    t0 = time.perf_counter()
    res = find_squares(image, models=models)
    dt = time.perf_counter() - t0
    pred = np.array([(s.x, s.y) for s in res.squares], dtype=np.float64).reshape(-1, 2)
    digest = hashlib.sha256(json.dumps(res.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
    # getattr: the script also runs on trees from before the edge flag (a before/after comparison).
    return (pred, dt, res.reason, np.array([bool(getattr(s, "edge", False)) for s in res.squares], dtype=bool),
            [s.square_class for s in res.squares], np.array([np.nan if s.score is None else s.score
                                                             for s in res.squares]), digest)


def ranking(pred: np.ndarray, scores: np.ndarray, truth) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ok labels) of the found squares matched to whole truth squares (as benchmarks.squares_ranking)."""
    idx = match(pred, truth.centers, 0.35 * truth.pitch_px)
    keep = np.flatnonzero((idx >= 0) & (truth.visible >= WHOLE))
    return scores[idx[keep]], np.array(truth.kinds)[keep] == "ok"


def montage_blocks(image: np.ndarray, pieces) -> dict:
    """Seam finding against the artefacts the generator drew, and per-tile gains against the true ones."""
    from ptolemy_rt.montage import remove_seams, tile_gains

    t0 = time.perf_counter()
    _, seams = remove_seams(image)
    t_seams = time.perf_counter() - t0
    arts = pieces.artefacts
    hit = [any(s.axis == ax and s.start < pos + w + 1 and s.stop > pos - 1 for s in seams) for ax, pos, w, _ in arts]
    false = [s for s in seams if not any(s.axis == ax and s.start < pos + w + 1 and s.stop > pos - 1
                                         for ax, pos, w, _ in arts)]
    # Gains are judged on tiles that show the grid (a tile off the disc has no gain to speak of), relative
    # to their geometric mean.
    means = np.array([float(t[::4, ::4].mean()) / g for t, g in zip(pieces.tiles, pieces.gains)])
    lit = means >= 0.25 * means.max()
    true = pieces.gains[lit] / np.exp(np.log(pieces.gains[lit]).mean())
    errs = {}
    for key, pos in (("true", pieces.true_positions), ("nominal", pieces.positions)):
        g = tile_gains(list(pieces.tiles), pos)[lit]
        e = np.abs(g / np.exp(np.log(g).mean()) / true - 1)
        errs[key] = (float(np.median(e)), float(np.max(e)))
    return {"artefacts": len(arts), "found": int(sum(hit)), "false": len(false), "t_seams": t_seams,
            "missed": [kind for (_, _, _, kind), h in zip(arts, hit) if not h], "gain_err": errs,
            "tiles": len(pieces.tiles)}


def with_blocks(image: np.ndarray, pieces, truth) -> np.ndarray:
    """The atlas after the building blocks: montage pieces assembled with gains (at their nominal positions,
    as the stitch had them), then seams removed."""
    from ptolemy_rt.montage import assemble, remove_seams

    img = image.astype(np.float32)
    if pieces is not None:
        m = assemble(list(pieces.tiles), pieces.positions)
        img = m.image
        if img.shape != image.shape:
            full = np.zeros(image.shape, np.float32)
            full[: img.shape[0], : img.shape[1]] = img[: image.shape[0], : image.shape[1]]
            img = full
    cleaned, _ = remove_seams(img)
    return np.rint(np.clip(cleaned, 0, 65535)).astype(np.uint16)


def prototype(image: np.ndarray) -> np.ndarray:
    """What wiring the building blocks into find_squares could give, without touching it: the mesh sets the
    grouping window and area limits (find_squares' own parameters), squares off the disc or larger than
    one square are dropped, centres off the lattice are dropped, and lattice points with no square are
    added (found_by: lattice)."""
    from ptolemy_rt import find_squares
    from ptolemy_rt.atlas_classes import disc_mask
    from ptolemy_rt.mesh import detect_mesh, fit_square_lattice

    det = detect_mesh(image)
    if det.mesh is None:
        return run_squares(image)[0]
    m = det.mesh
    # The original pipeline (compat) with the mesh's parameters: the sketch as it was before the wiring.
    res = find_squares(image, models=False, compat=True, window=m.grouping_window, min_area=m.min_square_area)
    disc = disc_mask(image, scale_px=3 * m.pitch_px)
    keep = [s for s in res.squares if s.area <= m.max_square_area
            and disc[min(max(round(s.y), 0), disc.shape[0] - 1), min(max(round(s.x), 0), disc.shape[1] - 1)]]
    centres = np.array([(s.x, s.y) for s in keep], dtype=np.float64).reshape(-1, 2)
    fit = fit_square_lattice(centres, m, shape=image.shape, disc=disc)
    on = fit.rows >= 0
    return np.vstack([centres[on], fit.missing])


def scaling(sizes: list[int], repeat: int) -> None:
    """Warm timings of the building blocks and of find_squares(models=False) against atlas size, with the
    process's peak RSS after each size (sizes ascending, so it is that size's peak or less) and the growth
    exponent of time against pixels."""
    import dataclasses

    from benchmarks.atlas_sets import _case
    from benchmarks.harness import peak_rss_mb, time_it
    from ptolemy_rt import find_squares
    from ptolemy_rt.atlas_classes import disc_mask
    from ptolemy_rt.mesh import detect_mesh
    from ptolemy_rt.montage import remove_seams
    from ptolemy_rt.squares import may_have_seams

    stages = ["detect_mesh", "disc_mask", "may_have_seams", "remove_seams", "find_squares(models=False)",
              "find_squares compat (baseline)"]
    times: dict[str, list[float]] = {k: [] for k in stages}
    table = [["size"] + [f"{k} ms" for k in stages] + ["peak RSS MB"]]
    for size in sorted(sizes):
        # One scene scaled with the size: the same mesh seen at a finer pixel size.
        base = _case("large", 912_777, 0, 4096)
        case = dataclasses.replace(base, size=size, pitch_px=base.pitch_px * size / 4096,
                                   bar_px=min(40.0, base.bar_px * size / 4096),
                                   disc_radius_px=base.disc_radius_px * size / 4096,
                                   disc_centre=(base.disc_centre[0] * size / 4096, base.disc_centre[1] * size / 4096))
        image, _, _ = make_heldout_atlas(case)
        mesh = detect_mesh(image).mesh
        fns = {
            "detect_mesh": lambda im=image: detect_mesh(im),
            "disc_mask": lambda im=image: disc_mask(im),
            "remove_seams": lambda im=image, me=mesh: remove_seams(im, mesh=me),
            "may_have_seams": lambda im=image, me=mesh: may_have_seams(im, me),
            "find_squares(models=False)": lambda im=image: find_squares(im, models=False),
            "find_squares compat (baseline)": lambda im=image: find_squares(im, models=False, compat=True),
        }
        row = [f"{size}²"]
        for k in stages:
            t = time_it(k, fns[k], repeat=repeat, warmup=1)
            times[k].append(t.median)
            row.append(f"{t.median:.0f}")
        row.append(f"{peak_rss_mb():.0f}")
        table.append(row)
        del image, fns
    px = np.log(np.array(sorted(sizes), dtype=np.float64) ** 2)
    slopes = [f"{np.polyfit(px, np.log(times[k]), 1)[0]:.2f}" for k in stages]
    table.append(["exponent (time ~ pixels^k)"] + slopes + [""])
    ratio = [f"{a / b:.2f}" for a, b in zip(times["find_squares(models=False)"],
                                            times["find_squares compat (baseline)"])]
    table.append(["find_squares / compat"] + [""] * 4 + [" / ".join(ratio), "", ""])
    print("\n## Scaling, warm (median of repeats)")
    print_markdown(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-category", type=int, default=4)
    parser.add_argument("--large", action="store_true", help="add an 8192² atlas to the large category")
    parser.add_argument("--blocks", action="store_true", help="also score after seam removal / montage assembly")
    parser.add_argument("--only", default=None, help="comma-separated categories")
    parser.add_argument("--prototype", action="store_true",
                        help="also score a prototype wiring of mesh + disc + lattice around find_squares")
    parser.add_argument("--scaling", action="store_true", help="only the scaling table (1024² to 8192²)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed-base", type=int, default=None, metavar="N",
                        help="draw a fresh set from this seed base (default: atlas_sets.SEED_BASE, the usual set)")
    parser.add_argument("--rank", action="store_true",
                        help="score with the shipped models and report the ranking of ok squares (AUC)")
    parser.add_argument("--json", type=Path, default=None,
                        help="write per-atlas numbers and a digest of each result (to count changed outputs)")
    args = parser.parse_args(argv)
    if args.scaling:
        scaling([1024, 2048, 4096, 8192], args.repeat)
        print(f"\nmachine: {machine_line()}")
        return 0

    from ptolemy_rt.mesh import detect_mesh

    try:
        cases = heldout_cases(args.per_category, large=args.large,
                              seed_base=SEED_BASE if args.seed_base is None else args.seed_base)
    except ValueError as e:
        parser.error(str(e))
    if args.only:
        keep = set(args.only.split(","))
        cases = [c for c in cases if c.category in keep]
    rows = []
    for case in cases:
        t0 = time.perf_counter()
        image, truth, pieces = make_heldout_atlas(case)
        t_gen = time.perf_counter() - t0
        pred, t_sq, reason, edge, classes, scores, digest = _run(image, None if args.rank else False)
        base = score(pred, truth, edge, classes)
        if args.rank:
            base["rank"] = ranking(pred, scores, truth)
        t1 = time.perf_counter()
        det = detect_mesh(image)
        t_mesh = time.perf_counter() - t1
        m = det.mesh
        row = {
            "case": case, "base": base, "t_sq": t_sq, "t_mesh": t_mesh, "t_gen": t_gen, "reason": reason,
            "mesh": m, "mesh_reason": det.reason, "digest": digest,
        }
        if pieces is not None:
            row["montage"] = montage_blocks(image, pieces)
        img2 = None
        if args.blocks:
            img2 = with_blocks(image, pieces, truth)
            pred2 = run_squares(img2)[0]
            row["blocks"] = score(pred2, truth)
        if args.prototype:
            row["proto"] = score(prototype(image), truth)
            if img2 is not None:
                row["all"] = score(prototype(img2), truth)
        rows.append(row)
        pe = "-" if m is None else f"{100 * (m.pitch_px / case.pitch_px - 1):+.2f} %"
        print(f"{case.name:18s} {case.size:5d}² tiles {case.tiles} pitch {case.pitch_px:6.1f} bar {case.bar_px:5.1f} "
              f"angle {case.angle_deg:5.1f}: recall {base['recall']:.3f} precision {base['precision']:.3f} "
              f"({base['n_found']}/{base['n_truth']}, {base['n_pred']} found) squares {t_sq:.2f} s; mesh pitch {pe}",
              file=sys.stderr)

    def agg(sel: list[dict], key: str) -> list[str]:
        n_truth = sum(r[key]["n_truth"] for r in sel)
        n_found = sum(r[key]["n_found"] for r in sel)
        n_pred = sum(r[key]["n_pred"] for r in sel)
        tp = sum(r[key]["tp"] for r in sel)
        worst = min(sel, key=lambda r: min(r[key]["recall"], r[key]["precision"]))
        tp_t = sum(r[key].get("tp_t", r[key]["tp"]) for r in sel)
        n_t = sum(r[key].get("n_pred_t", r[key]["n_pred"]) for r in sel)
        n_edge = sum(r[key].get("n_edge", 0) for r in sel)
        c_ok = np.sum([r[key].get("class_ok", [0, 0]) for r in sel], axis=0)
        c_n = np.sum([r[key].get("class_n", [0, 0]) for r in sel], axis=0)
        err = np.concatenate([r[key].get("centre_err", []) for r in sel] + [np.zeros(0)])
        fp = n_pred - tp
        return [
            str(len(sel)), str(n_truth), f"{n_found / max(n_truth, 1):.3f}", f"{tp / max(n_pred, 1):.3f}",
            f"{worst['case'].name} (R {worst[key]['recall']:.3f}, P {worst[key]['precision']:.3f})",
            f"{tp_t / max(n_t, 1):.3f}", str(n_edge),
            f"{c_ok[0] / max(c_n[0], 1):.2f} / {c_ok[1] / max(c_n[1], 1):.2f}",
            str(fp), f"{100 * np.median(err):.2f} / {100 * np.percentile(err, 95):.2f}" if err.size else "-",
        ] + ([_auc_cell([r[key]["rank"] for r in sel])] if args.rank and key == "base" else [])

    cats = [c for c in CATEGORIES if any(r["case"].category == c for r in rows)]
    for key, title in [("base", "find_squares(models=False) as it is (baseline)")] + (
            [("blocks", "after montage assembly with gains + remove_seams")] if args.blocks else []) + (
            [("proto", "prototype wiring: mesh-set window/areas, disc, lattice fill")] if args.prototype else []) + (
            [("all", "montage assembly + remove_seams, then the prototype wiring")] if args.prototype and args.blocks
            else []):
        table = [["category", "atlases", "truth squares", "recall", "precision", "worst atlas (recall, precision)",
                  "precision without edge-flagged", "edge-flagged", "class right: ok / thick", "false positives",
                  "centre error % of pitch, whole squares (median / p95)"] + (["ok AUC (pooled / per-atlas mean)"]
                                                                            if args.rank and key == "base" else [])]
        for c in cats:
            table.append([c] + agg([r for r in rows if r["case"].category == c], key))
        table.append(["all"] + agg(rows, key))
        print(f"\n## Held-out atlases: {title}")
        print_markdown(table)

    # Recall by square kind (baseline).
    kinds: dict[str, list[int]] = {}
    for r in rows:
        for k, (f, n) in r["base"]["per_kind"].items():
            kinds.setdefault(k, [0, 0])
            kinds[k][0] += f
            kinds[k][1] += n
    print("\n## Baseline recall by square kind")
    by_kind = [[k, f"{f}/{n}", f"{f / max(n, 1):.3f}"] for k, (f, n) in sorted(kinds.items())]
    print_markdown([["kind", "found / truth", "recall"]] + by_kind)

    table = [["category", "meshes found", "pitch error % (median / max)", "bar width error px (median / max)",
              "angle error deg (max)", "detect_mesh ms (median)"]]
    for c in cats + ["all"]:
        sel = [r for r in rows if c == "all" or r["case"].category == c]
        ok = [r for r in sel if r["mesh"] is not None]
        if ok:
            pe = [abs(100 * (r["mesh"].pitch_px / r["case"].pitch_px - 1)) for r in ok]
            be = [abs(r["mesh"].bar_width_px - r["case"].bar_px) for r in ok]
            ae = [abs(((r["mesh"].angle_deg - r["case"].angle_deg) + 45) % 90 - 45) for r in ok]
            table.append([c, f"{len(ok)}/{len(sel)}", f"{np.median(pe):.3f} / {max(pe):.3f}",
                          f"{np.median(be):.2f} / {max(be):.2f}", f"{max(ae):.3f}",
                          f"{1e3 * np.median([r['t_mesh'] for r in sel]):.0f}"])
        else:
            table.append([c, f"0/{len(sel)}", "-", "-", "-", "-"])
    print("\n## Mesh measurement (detect_mesh) against the generator's pitch, bar width and angle")
    print_markdown(table)

    mont = [r for r in rows if "montage" in r]
    if mont:
        table = [["atlas", "tiles", "artefacts", "seams found", "missed (kind)",
                  "false seams", "remove_seams ms", "gain error, true positions", "gain error, nominal positions"]]
        for r in mont:
            mb = r["montage"]
            table.append([r["case"].name, str(mb["tiles"]), str(mb["artefacts"]), f"{mb['found']}/{mb['artefacts']}",
                          ", ".join(mb["missed"]) or "-", str(mb["false"]), f"{1e3 * mb['t_seams']:.0f}",
                          "{:.1f} / {:.1f} %".format(*(100 * np.array(mb["gain_err"]["true"]))),
                          "{:.1f} / {:.1f} %".format(*(100 * np.array(mb["gain_err"]["nominal"])))])
        print("\n## Montage building blocks: remove_seams against the drawn artefacts, tile_gains against the true"
              " gains (tiles on the disc; median / max error; the generator also vignettes each tile by up to"
              " 25 %, which a gain alone cannot undo)")
        print_markdown(table)

    table = [["size", "atlases", "find_squares s (median / max)", "detect_mesh ms (median)"]]
    for size in sorted({r["case"].size for r in rows}):
        sel = [r for r in rows if r["case"].size == size]
        ts = [r["t_sq"] for r in sel]
        table.append([f"{size}²", str(len(sel)), f"{np.median(ts):.2f} / {max(ts):.2f}",
                      f"{1e3 * np.median([r['t_mesh'] for r in sel]):.0f}"])
    print("\n## Time per atlas (this machine, shared)")
    print_markdown(table)
    print(f"\nmachine: {machine_line()}")
    if args.json is not None:
        import json

        from benchmarks.accuracy import auc  # of ok squares by CNN score on one atlas (None: one class absent)

        args.json.write_text(json.dumps([{
            "name": r["case"].name, "seed": r["case"].seed, "digest": r["digest"], "recall": r["base"]["recall"],
            "precision": r["base"]["precision"], "n_pred": r["base"]["n_pred"], "tp": r["base"]["tp"],
            "n_found": r["base"]["n_found"], "n_truth": r["base"]["n_truth"], "reason": r["reason"],
            "centre_err_median": float(np.median(r["base"]["centre_err"])) if r["base"]["centre_err"] else None,
            "category": r["case"].category, "class_ok": r["base"]["class_ok"], "class_n": r["base"]["class_n"],
            "n_edge": r["base"]["n_edge"], "tp_t": r["base"]["tp_t"], "n_pred_t": r["base"]["n_pred_t"],
            "centre_err": r["base"]["centre_err"],
            "auc": auc(*r["base"]["rank"]) if "rank" in r["base"] else None,
        } for r in rows], indent=1))
    return 0


def _auc_cell(pairs: list[tuple[np.ndarray, np.ndarray]]) -> str:
    """Pooled AUC of ok squares by CNN score and the mean of per-atlas AUCs."""
    from benchmarks.accuracy import auc

    s = np.concatenate([p[0] for p in pairs] + [np.zeros(0)])
    y = np.concatenate([p[1] for p in pairs] + [np.zeros(0, dtype=bool)])
    a = auc(s, y)
    per = [v for v in (auc(*p) for p in pairs) if v is not None]
    return f"{'-' if a is None else f'{a:.3f}'} / {f'{np.mean(per):.3f}' if per else '-'}"


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    raise SystemExit(main())
