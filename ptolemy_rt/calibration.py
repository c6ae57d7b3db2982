"""Score calibration: a monotone map from a model set's scores onto another tool's scale, fitted on paired targets.

A facility that has used the original Ptolemy has score thresholds (in Leginon, say) on the original's scale.
Our models' scores rank targets but are on their own scale. `fit` takes the two tools' scores for the same
targets (paired by position: `pair_targets`) and fits an isotonic (non-decreasing) least-squares map; `apply`
interpolates it linearly between its knots, constant beyond the ends, clipped to [0, 1]. Because the map never
decreases, a calibrated run keeps the order of the targets (ties may appear where the map is flat).

A calibration belongs to the model set it was fitted with: it records the set's name, version and the sha256
of every graph, and `check_models` refuses another set. It is fitted by each facility on its own images and
its own run of the original (which it is licensed to do); nothing fitted on the CC BY-NC reference outputs is
shipped.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .errors import InputError
from .manifest import TASKS_OF_KIND

__all__ = [
    "CALIBRATION_FORMAT",
    "Calibration",
    "CalibrationError",
    "apply_calibration",
    "calibrate_images",
    "fit",
    "isotonic",
    "pair_targets",
    "read_calibration",
    "read_original_targets",
    "task_for",
]

CALIBRATION_FORMAT = "ptolemy-rt-calibration"
VERSION = 1
KINDS = tuple(TASKS_OF_KIND)  # squares, holes
# The graph whose output each score is (one of its kind's, TASKS_OF_KIND): a calibration is bound to its bytes.
SCORE_TASKS = {("squares", "score"): ("square_cnn",), ("holes", "cnn"): ("hole_cnn",),
               ("holes", "unet"): ("hole_unet",)}


# A calibration holds a few hundred knots (kilobytes); the original's output a few thousand targets. Larger files
# (or /dev/zero, a FIFO) are refused before they are read.
MAX_CALIBRATION_BYTES = 16 * 1024 * 1024
MAX_TARGETS_BYTES = 16 * 1024 * 1024  # ~250 MB parsed at worst (dicts of a centre and a score)


class CalibrationError(InputError):
    """A calibration file that cannot be read or does not fit the run (exit code 2: an option to change)."""


def task_for(kind: str, score: str) -> tuple[str, ...]:
    """The model tasks a score of `kind` comes from (squares: the square CNN; holes: cnn or unet)."""
    try:
        return SCORE_TASKS[(kind, score)]
    except KeyError:
        raise CalibrationError(f"no score '{score}' for {kind} (squares: score; holes: cnn or unet)") from None


def isotonic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knots (xs strictly increasing, ys non-decreasing) of the least-squares non-decreasing fit of y on x.

    Equal x values are pooled first (their mean y, weighted by count), then adjacent violators are pooled
    (weighted means) until the block values never decrease. Each block gives a knot at its smallest and its
    largest x, both at the block's value, so that linear interpolation between the knots is the isotonic fit
    itself at every data point (a step function, with straight ramps between blocks)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape or x.size == 0:
        raise ValueError("isotonic needs two non-empty arrays of the same length")
    order = np.lexsort((y, x))  # deterministic whatever the input order
    xs, ys = x[order], y[order]
    ux, start, counts = np.unique(xs, return_index=True, return_counts=True)
    sums = np.add.reduceat(ys, start)
    # Blocks as a stack: weight, sum of y * weight, first and last x (pool adjacent violators).
    w: list[float] = []
    sy: list[float] = []
    lo: list[float] = []
    hi: list[float] = []
    for xv, c, s in zip(ux, counts, sums):
        w.append(float(c))
        sy.append(float(s))
        lo.append(float(xv))
        hi.append(float(xv))
        while len(w) > 1 and sy[-2] / w[-2] > sy[-1] / w[-1]:
            w[-2] += w[-1]
            sy[-2] += sy[-1]
            hi[-2] = hi[-1]
            del w[-1], sy[-1], lo[-1], hi[-1]
    values = np.maximum.accumulate(np.array(sy) / np.array(w))  # accumulate: rounding only
    knots_x: list[float] = []
    knots_y: list[float] = []
    for a, b, v in zip(lo, hi, values):
        knots_x += [a] if a == b else [a, b]
        knots_y += [float(v)] if a == b else [float(v), float(v)]
    return np.array(knots_x), np.array(knots_y)


@dataclass(frozen=True)
class Calibration:
    """A monotone map of one score (kind + score name) for one model set, as knots (ours -> target).

    `ours` strictly increasing, `target` non-decreasing, both in [0, 1]; `models`: the ids of the model set it
    was fitted with (name, version, per task file and sha256); `pairs`: how many paired targets it was fitted
    on; `against`: what the target scale is (free text, e.g. "original Ptolemy")."""

    kind: str
    score: str
    ours: tuple[float, ...]
    target: tuple[float, ...]
    models: dict[str, Any] = field(default_factory=dict)
    pairs: int = 0
    against: str = "original Ptolemy"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise CalibrationError(f"calibration kind '{self.kind}': expected squares or holes")
        task_for(self.kind, self.score)
        a, b = np.asarray(self.ours, np.float64), np.asarray(self.target, np.float64)
        if a.ndim != 1 or a.size == 0 or a.shape != b.shape:
            raise CalibrationError("calibration knots: 'ours' and 'target' must be two non-empty lists of one length")
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
            raise CalibrationError("calibration knots must be finite numbers")
        if np.any(np.diff(a) <= 0) or np.any(np.diff(b) < 0):
            raise CalibrationError("calibration knots: 'ours' must increase strictly and 'target' never decrease")
        if a.min() < 0 or a.max() > 1 or b.min() < 0 or b.max() > 1:
            raise CalibrationError("calibration knots must lie in [0, 1]")
        try:  # its identity (sha256) is its strict JSON: NaN or Infinity anywhere in it is no calibration
            json.dumps(self.models, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise CalibrationError(f"calibration 'models' is not plain finite JSON ({exc})") from None

    def __call__(self, scores: Any) -> np.ndarray:
        """The calibrated scores (float64 array, in [0, 1]); NaN stays NaN."""
        s = np.asarray(scores, dtype=np.float64)
        xp, fp = np.asarray(self.ours), np.asarray(self.target)
        out = np.interp(s, xp, fp)
        # np.interp's slope overflows between knots closer than ~1e-308 apart (subnormal gaps): each value is
        # kept between its two knots' targets, which is what interpolation gives wherever it does not overflow
        j = np.clip(np.searchsorted(xp, s, side="right") - 1, 0, len(xp) - 1)
        out = np.clip(out, fp[j], fp[np.minimum(j + 1, len(xp) - 1)])
        return np.where(np.isnan(s), np.nan, np.clip(out, 0.0, 1.0))

    def map(self, score: float | None) -> float | None:
        """One calibrated score (None stays None)."""
        if score is None or not math.isfinite(score):
            return score
        return float(self(np.array([score]))[0])

    def tasks(self) -> tuple[str, ...]:
        """The model tasks whose output this calibration maps."""
        return task_for(self.kind, self.score)

    def check_models(self, ids: dict[str, Any], where: str = "the calibration") -> None:
        """Refuse (CalibrationError, exit 2) a model set other than the one it was fitted with: the graphs
        whose output it maps must have the recorded sha256."""
        for task in self.tasks():
            want = (self.models.get(task) or {}).get("sha256")
            have = (ids.get(task) or {}).get("sha256")
            if want is None or want != have:
                raise CalibrationError(
                    f"{where}: fitted for model set '{self.models.get('name')}' ({task} sha256 "
                    f"{str(want)[:12]}...), not the set in use '{ids.get('name')}' ({task} sha256 {str(have)[:12]}"
                    "...); fit one for this set with `ptolemy-rt calibrate`, or pass the --models it was made for")

    def sha256(self) -> str:
        """Its identity: sha256 of its dict as sorted JSON (named in a calibrated result; part of a batch's key)."""
        import hashlib

        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, allow_nan=False).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the calibration file's content)."""
        return {
            "format": CALIBRATION_FORMAT,
            "version": VERSION,
            "kind": self.kind,
            "score": self.score,
            "against": self.against,
            "pairs": int(self.pairs),
            "models": self.models,
            "ours": [float(v) for v in self.ours],
            "target": [float(v) for v in self.target],
        }

    @classmethod
    def from_dict(cls, data: Any) -> Calibration:
        """Parse a calibration file's content (CalibrationError naming the problem)."""
        if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
            raise CalibrationError(f"not a ptolemy-rt calibration (no \"format\": \"{CALIBRATION_FORMAT}\")")
        if data.get("version") != VERSION:
            raise CalibrationError(f"calibration version {data.get('version')!r}: this ptolemy-rt reads {VERSION}")
        try:
            return cls(kind=str(data["kind"]), score=str(data["score"]),
                       ours=tuple(float(v) for v in data["ours"]), target=tuple(float(v) for v in data["target"]),
                       models=dict(data.get("models") or {}), pairs=int(data.get("pairs", 0)),
                       against=str(data.get("against", "")))
        except CalibrationError:  # the knots' own words: "field missing or ill-typed (CalibrationError: ...)" hid them
            raise
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise CalibrationError(f"calibration field missing or ill-typed ({type(exc).__name__}: {exc})") from None


def fit(ours: Any, theirs: Any, kind: str, score: str, models: dict[str, Any] | None = None,
        against: str = "original Ptolemy") -> Calibration:
    """The isotonic map from `ours` to `theirs` (paired scores, same length), clipped to [0, 1].

    Pure and deterministic: the same pairs in any order give the same calibration. Pairs with a NaN are
    left out; at least two are needed."""
    a = np.asarray(ours, dtype=np.float64).ravel()
    b = np.asarray(theirs, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"fit needs paired scores: {a.size} ours, {b.size} theirs")
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = np.clip(a[ok], 0.0, 1.0), np.clip(b[ok], 0.0, 1.0)
    if a.size < 2:
        raise CalibrationError(f"{a.size} paired target(s): a calibration needs at least 2")
    xs, ys = isotonic(a, b)
    return Calibration(kind=kind, score=score, ours=tuple(float(v) for v in xs),
                       target=tuple(float(v) for v in np.clip(ys, 0.0, 1.0)), models=dict(models or {}),
                       pairs=int(a.size), against=against)


def pair_targets(ours_xy: Any, theirs_xy: Any, tolerance: float) -> list[tuple[int, int]]:
    """Index pairs (i ours, j theirs) of targets at the same place: nearest first, each used once, at most
    `tolerance` px apart; sorted by i."""
    a = np.asarray(ours_xy, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(theirs_xy, dtype=np.float64).reshape(-1, 2)
    if len(a) == 0 or len(b) == 0:
        return []
    d = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])
    i, j = np.nonzero(d <= tolerance)
    order = np.lexsort((j, i, d[i, j]))  # nearest first; ties by index, so the pairing is deterministic
    used_a: set[int] = set()
    used_b: set[int] = set()
    pairs = []
    for k in order:
        p, q = int(i[k]), int(j[k])
        if p not in used_a and q not in used_b:
            used_a.add(p)
            used_b.add(q)
            pairs.append((p, q))
    return sorted(pairs)


def read_original_targets(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Centres (n, 2) and scores (n,) from the original Ptolemy CLI's `-f json` output (a list of records
    with "center" [x, y] and "score"; `--compat ptolemy` writes the same); unscored (null) targets are skipped."""
    from .smallfiles import read_small, text_of

    raw = read_small(path, MAX_TARGETS_BYTES, "JSON file of the original's targets", CalibrationError)
    try:
        data = json.loads(text_of(raw, "strict"))
    except (ValueError, RecursionError) as exc:  # RecursionError: arrays nested thousands deep
        raise CalibrationError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, list):
        raise CalibrationError(f"{path}: expected the original Ptolemy's JSON, a list of targets")
    centres, scores = [], []
    for k, rec in enumerate(data):
        if isinstance(rec, dict) and "score" in rec and rec["score"] is None:
            continue  # unscored (a crop wholly outside the image): nothing to pair
        try:
            x, y = (float(v) for v in rec["center"])
            s = float(rec["score"])
        except (KeyError, TypeError, ValueError):
            raise CalibrationError(f"{path}: target {k} has no numeric \"center\" [x, y] and \"score\"") from None
        centres.append((x, y))
        scores.append(s)
    return np.array(centres, dtype=np.float64).reshape(-1, 2), np.array(scores, dtype=np.float64)


def read_calibration(path: str | os.PathLike) -> Calibration:
    """Read a calibration file (CalibrationError naming the file and the problem)."""
    from .smallfiles import read_small, text_of

    raw = read_small(path, MAX_CALIBRATION_BYTES, "calibration file", CalibrationError)
    try:
        return Calibration.from_dict(json.loads(text_of(raw, "strict")))
    except (ValueError, RecursionError) as exc:  # RecursionError: arrays nested thousands deep (was exit 70)
        raise CalibrationError(f"--calibration {path}: {exc}") from None


def result_score_name(result: Any) -> str:
    """Which score ranks a result's targets: "score" for squares, "cnn" or "unet" for holes."""
    if result.kind == "squares":
        return "score"
    for t in result.targets:
        for name, value in t.scores.items():
            if value is not None and value == t.score:
                return name
    return "cnn"


def apply_calibration(result: Any, cal: Calibration, score: str | None = None) -> Any:
    """The result with every target's `score` mapped by `cal` and re-sorted (per-classifier `scores` kept);
    `models` gains the calibration's identity. `score` names the result's ranking score (holes: cnn | unet)."""
    from .results import sort_targets

    if cal.kind != result.kind:
        raise CalibrationError(f"the calibration is for {cal.kind}, this run finds {result.kind}")
    name = score or result_score_name(result)
    if name != cal.score:
        raise CalibrationError(f"the calibration maps the '{cal.score}' score; this run ranks by '{name}'"
                               + (" (--score)" if result.kind == "holes" else ""))
    cal.check_models(result.models)
    targets = sort_targets(replace(t, score=cal.map(t.score)) for t in result.targets)
    models = {**result.models, "calibration": {"against": cal.against, "pairs": cal.pairs,
                                               "sha256": cal.sha256()}}
    field_name = "squares" if result.kind == "squares" else "holes"
    return replace(result, **{field_name: targets, "models": models})


@dataclass(frozen=True)
class Fitted:
    """What calibrate_images returns: the calibration, and the paired scores it was fitted on."""

    calibration: Calibration
    ours: np.ndarray
    theirs: np.ndarray
    per_image: tuple[tuple[str, int, int, int], ...]  # (image, ours found, theirs listed, paired)

    @property
    def left_out(self) -> int:
        """How many pairs the fit left out: ours or theirs not a finite number (an original's Infinity, NaN)."""
        return int(np.count_nonzero(~self._used()))

    def _used(self) -> np.ndarray:
        return np.isfinite(self.ours) & np.isfinite(self.theirs)

    def mean_abs_error(self) -> tuple[float, float]:
        """Mean |ours - theirs| over the pairs the fit used, before and after calibration."""
        ours, theirs = self.ours[self._used()], self.theirs[self._used()]
        before = float(np.mean(np.abs(ours - theirs)))
        after = float(np.mean(np.abs(self.calibration(ours) - theirs)))
        return before, after


def calibrate_images(kind: str, images: list[str], originals: list[str], models: Any, *, tolerance: float = 20.0,
                     score: str | None = None, edge_tolerance: float = 100.0, section: int | None = None,
                     permissive: bool = False) -> Fitted:
    """Run our finder in the original's mode (`--compat ptolemy`) on each image, pair its targets with the
    original Ptolemy's output for that image (`originals`, same order) by centre, and fit the map.

    models: a loaded ModelSet. score (holes): "cnn" (the original's, default) or "unet". edge_tolerance (holes):
    how far outside the image our lattice points may lie, so that every target of the original's run, whatever
    edge tolerance it used, can find its partner (unpaired ones are ignored)."""
    from .io import read_image

    if len(images) != len(originals):
        raise CalibrationError(f"{len(images)} image(s) but {len(originals)} --against file(s): give one original "
                               "Ptolemy JSON per image, in the same order")
    if kind == "squares":
        from .options import SquareOptions
        from .squares import find_squares

        name = "score"

        def run(image: Any) -> Any:
            return find_squares(image, models=models, options=SquareOptions.ptolemy())
    else:
        from .holes import find_holes
        from .options import HoleOptions

        name = score or "cnn"

        def run(image: Any) -> Any:
            return find_holes(image, models=models,
                              options=HoleOptions.ptolemy(edge_tolerance=edge_tolerance, score=name))
    task_for(kind, name)
    ours_all: list[float] = []
    theirs_all: list[float] = []
    rows = []
    for image_path, original in zip(images, originals):
        centres, their_scores = read_original_targets(original)
        result = run(read_image(image_path, section=section, permissive=permissive))
        targets = [t for t in result.targets if t.score is not None]
        mine = np.array([t.compat_dict()["center"] for t in targets], dtype=np.float64).reshape(-1, 2)
        pairs = pair_targets(mine, centres, tolerance)
        ours_all += [float(targets[i].score) for i, _ in pairs]
        theirs_all += [float(their_scores[j]) for _, j in pairs]
        rows.append((str(image_path), len(targets), len(centres), len(pairs)))
    if len(ours_all) < 2:
        raise CalibrationError(f"{len(ours_all)} target(s) paired within {tolerance:g} px between our run and the "
                               "original's: are the images and --against files in the same order (and "
                               "--kind right)?")
    cal = fit(ours_all, theirs_all, kind, name, models=models.ids)
    return Fitted(cal, np.array(ours_all), np.array(theirs_all), tuple(rows))
