"""Scoring crops: a classifier run over them in batches that honour its BatchNorm mode (square and hole CNNs
alike), and the hole scores (hole CNN, mean U-Net probability over the crop).

A graph that normalises with its batch's statistics (manifest bn = "batch", as the original ran its networks)
gives scores that depend on which crops share a batch, so such crops are batched exactly as the original
batched them. Any other graph gets batches sized for memory and speed alone, which change nothing else.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from . import _workers
from .crops import HoleCrops, hole_crop_input, hole_crop_inputs
from .models import ModelSet

__all__ = ["BatchPolicy", "plan_batches", "classify", "cnn_scores", "unet_scores", "HOLE_BATCHES"]


@dataclass(frozen=True)
class BatchPolicy:
    """How a task's crops are batched.

    original_batch: crops per batch in the original (None: all crops of an image in one batch), used for
    batch-statistics graphs, capped at max_batch (with a warning, since scores then differ from the
    original's). independent_batch / independent_pixels: most crops / input pixels per batch for the others,
    whose batches also hold crops of one shape only.
    """

    original_batch: int | None
    max_batch: int
    independent_batch: int | None = None
    independent_pixels: int | None = None


def plan_batches(
    shapes: Sequence[tuple[int, int]], policy: BatchPolicy, batch_statistics: bool, min_size: int = 1
) -> list[list[int]]:
    """Crop indices per batch; crops with an empty shape are left out (they get no score).

    min_size: crops are enlarged to at least this side before the network, which the pixel budget counts.
    """
    valid = [i for i, shape in enumerate(shapes) if min(shape) >= 1]
    if batch_statistics:
        per = policy.original_batch if policy.original_batch is not None else policy.max_batch
        per = max(1, min(per, policy.max_batch))
        if policy.original_batch is None and len(valid) > per:
            warnings.warn(
                f"{len(valid)} crops: scoring in batches of {per}; this graph normalises with batch statistics, "
                "so scores depend on the batch (the original scored all crops of an image in one batch)",
                stacklevel=3,
            )
        return [valid[a : a + per] for a in range(0, len(valid), per)]
    groups: dict[tuple[int, int], list[int]] = {}
    for i in valid:
        groups.setdefault(tuple(shapes[i]), []).append(i)  # type: ignore[arg-type]
    out: list[list[int]] = []
    for shape, idx in sorted(groups.items()):
        per = policy.independent_batch or len(idx)
        if policy.independent_pixels:
            area = max(shape[0], min_size) * max(shape[1], min_size)
            per = min(per, policy.independent_pixels // area)
        per = max(1, per)
        out.extend(idx[b : b + per] for b in range(0, len(idx), per))
    return out


def classify(
    models: ModelSet,
    task: str,
    n: int,
    batches: list[list[int]],
    inputs: Callable[[list[int]], np.ndarray],
    timings: dict[str, float] | None = None,
) -> np.ndarray:
    """Probabilities (n,) float64 of `task`'s graph, batch by batch; NaN for crops in no batch.

    inputs(indices) builds the (len(indices), 1, rows, cols) network input of one batch, so no more than one
    batch of crops is held at a time. timings["crops"] / ["cnn"] accumulate the seconds spent in each.
    """
    timings = {} if timings is None else timings
    out = np.full(n, np.nan, dtype=np.float64)
    for idx in batches:
        t0 = time.perf_counter()
        batch = inputs(idx)
        t1 = time.perf_counter()
        out[idx] = np.asarray(models.predict(task, batch), dtype=np.float32).reshape(-1)
        timings["crops"] = timings.get("crops", 0.0) + (t1 - t0)
        timings["cnn"] = timings.get("cnn", 0.0) + (time.perf_counter() - t1)
    return out


# ---------------------------------------------------------------------------------------------------
# Hole scores

# The original ran each hole crop alone; batch-independent graphs get batches of equal-sized crops holding at
# most this many input pixels (the first conv's 128 channels make ~0.5 KB of activations per input pixel)
# and at most 32 crops: the shipped CNN resizes every crop to 32x32 inside, and 920 small crops of a whole
# grid-square view ran 2.2x faster in batches of 32 than in one (activations that fit the cache; the same
# scores to the bit, the graph being batch-independent).
HOLE_BATCHES = BatchPolicy(original_batch=1, max_batch=1, independent_batch=32, independent_pixels=512 * 1024)


def unet_scores(prob: np.ndarray, crops: HoleCrops) -> np.ndarray:
    """Mean U-Net probability over each crop's square, in [0, 1] (bilinear samples of the map; pixels outside
    the image, or cut off the original's windows, count as 0).

    The paper's U-Net score is the probability summed over the crop. Dividing every sum of an image by the same
    area (the crop square's, crops.area) ranks the holes exactly as the sum does, keeps the score in [0, 1],
    and makes it independent of the scale the U-Net ran at (a sum in input pixels grows with the square of
    the period)."""
    src = np.ascontiguousarray(prob, dtype=np.float32)
    out = np.zeros(len(crops.matrices), dtype=np.float64)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, shape in enumerate(crops.shapes):
        if shape[0] >= 1 and shape[1] >= 1:
            groups.setdefault((int(shape[0]), int(shape[1])), []).append(i)
    # Crops of one shape in runs that worker threads take in turn (their number read before OpenCV is set to
    # one thread), each warped and summed as alone (the same bits).
    threads = _workers.workers()
    jobs = []
    for (rows, cols), idx in groups.items():
        per = max(1, _PART_PIXELS // (rows * cols))
        jobs.extend((rows, cols, idx[a : a + per]) for a in range(0, len(idx), per))
    with _opencv_threads(1):
        _workers.run_all(lambda j, _: _unet_sums(src, crops, *jobs[j], out), len(jobs), threads)
    return np.clip(out, 0.0, 1.0)  # bilinear samples of values in [0, 1] stay there; guard rounding only


@contextlib.contextmanager
def _opencv_threads(n: int):
    """OpenCV's thread count set to n inside, restored after.

    cv2.warpAffine's bilinear path rounds with OpenCV's thread count (its SIMD rows and scalar tails move with
    the stripes): a one-thread batch worker and a two-thread CLI gave other last bits for the same image. On
    one thread the warps give one answer, at about the same cost for crops this size. The count is
    process-wide, so two Python threads scoring at once take turns here."""
    import cv2

    with _OPENCV_THREADS_LOCK:  # the count is process-wide: callers on other threads wait, not interleave
        before = cv2.getNumThreads()
        if before == n:
            yield
            return
        cv2.setNumThreads(n)
        try:
            yield
        finally:
            cv2.setNumThreads(before)


_OPENCV_THREADS_LOCK = threading.RLock()


def _unet_sums(src: np.ndarray, crops: HoleCrops, rows: int, cols: int, idx: list[int], out: np.ndarray) -> None:
    """out[idx] = the mean bilinear sample of src over each of these crops of one shape."""
    import cv2

    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    # Crops of one shape are warped into one stack, a chunk at a time, and summed row by row: numpy reduces
    # each row of the stack as it reduces one crop (the same sums to the bit), without a call per crop.
    per = max(1, _SCORE_STACK_PIXELS // (rows * cols))
    stack = np.empty((min(per, len(idx)), rows, cols), dtype=np.float32)
    for a in range(0, len(idx), per):
        chunk = idx[a : a + per]
        for k, i in enumerate(chunk):
            dst = stack[k]
            s = cv2.warpAffine(src, crops.matrices[i], (cols, rows), dst=dst, flags=flags,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
            if s is not dst:  # cv2 wrote elsewhere (it should not; it hands back the array it wrote into)
                dst[...] = s
        sums = stack[: len(chunk)].reshape(len(chunk), rows * cols).sum(axis=1, dtype=np.float64)
        out[chunk] = sums / max(crops.area, float(rows * cols))


# cnn_scores builds every crop's input at once (one shape, at most this many pixels: 32 MiB of float32), else
# batch by batch.
_BUILD_AT_ONCE_PIXELS = 1 << 23

# unet_scores warps crops of one shape into stacks of at most this many pixels (or one crop) ...
_SCORE_STACK_PIXELS = 1 << 20
# ... and hands them to the threads in runs of about this many pixels (or one crop; ~0.2 ms of warps and sums).
_PART_PIXELS = 1 << 15


def cnn_scores(image: np.ndarray, crops: HoleCrops, models: ModelSet,
               timings: dict[str, float] | None = None) -> np.ndarray:
    """Hole CNN probability per crop (NaN for an empty crop), batched as the graph's BatchNorm mode requires."""
    spec = models.spec("hole_cnn")
    batches = plan_batches(crops.shapes, HOLE_BATCHES, spec.batch_statistics, spec.min_size)

    work: dict = {}  # sampling and normalisation buffers, shared by the batches
    built: list[np.ndarray] = []  # every crop's input, when they are built at once
    shapes = set(crops.shapes)
    at_once = False
    if len(shapes) == 1 and min(next(iter(shapes))) >= 1:  # one shape, no empty crop (centred crops)
        rows, cols = next(iter(shapes))
        at_once = len(crops.shapes) * max(rows, spec.min_size) * max(cols, spec.min_size) <= _BUILD_AT_ONCE_PIXELS

    def inputs(idx: list[int]) -> np.ndarray:
        if at_once:
            # All crops in one sweep of the worker threads (the batches' sweeps waited on their slowest
            # crop each), then batch by batch as before: the same inputs, the same batches.
            if not built:
                built.append(hole_crop_inputs(image, crops.matrices, crops.shapes, spec.min_size, work))
            if idx == list(range(idx[0], idx[-1] + 1)):
                return built[0][idx[0] : idx[-1] + 1]
            return built[0][idx]
        if len({crops.shapes[i] for i in idx}) == 1:
            return hole_crop_inputs(image, [crops.matrices[i] for i in idx], [crops.shapes[i] for i in idx],
                                    spec.min_size, work)
        return np.stack([hole_crop_input(image, crops.matrices[i], crops.shapes[i], spec.min_size)
                         for i in idx])[:, None]

    return classify(models, "hole_cnn", len(crops.matrices), batches, inputs, timings)
