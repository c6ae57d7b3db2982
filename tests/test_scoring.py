"""Batching crops for a classifier (ptolemy_rt.scoring): the original's batches for batch-statistics graphs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptolemy_rt.scoring import HOLE_BATCHES, BatchPolicy, classify, plan_batches


class _Recorder:
    """Just enough of a ModelSet: records batch sizes, returns each crop's mean as its probability."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def predict(self, task: str, x: np.ndarray) -> np.ndarray:
        self.batches.append(len(x))
        return x.mean(axis=(1, 2, 3)).reshape(-1, 1).astype(np.float32)


SQUARES = BatchPolicy(original_batch=None, max_batch=256, independent_batch=16)


def test_square_batches_follow_the_original_for_batch_statistics():
    with pytest.warns(UserWarning, match="batches of 256"):
        plan = plan_batches([(240, 240)] * 300, SQUARES, batch_statistics=True)
    assert [len(b) for b in plan] == [256, 44]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = plan_batches([(240, 240)] * 200, SQUARES, batch_statistics=True)
    assert [len(b) for b in plan] == [200]  # one image, one batch: as the original
    plan = plan_batches([(240, 240)] * 70, SQUARES, batch_statistics=False)
    assert [len(b) for b in plan] == [16, 16, 16, 16, 6]  # batch-independent: small batches bound memory


def test_hole_batches_one_crop_each_for_batch_statistics():
    shapes = [(30, 30), (0, 5), (30, 31), (30, 30)]
    assert plan_batches(shapes, HOLE_BATCHES, batch_statistics=True) == [[0], [2], [3]]
    # independent: grouped by shape (so a batch stacks), empty crops left out
    assert plan_batches(shapes, HOLE_BATCHES, batch_statistics=False) == [[0, 3], [2]]


@settings(max_examples=50, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 600), st.integers(0, 600)), max_size=60), st.booleans(),
       st.integers(1, 64))
def test_every_nonempty_crop_is_in_exactly_one_batch(shapes, stats, min_size):
    for policy in (HOLE_BATCHES, SQUARES):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan = plan_batches(shapes, policy, batch_statistics=stats, min_size=min_size)
        flat = sorted(i for b in plan for i in b)
        assert flat == [i for i, s in enumerate(shapes) if min(s) >= 1]
        for b in plan:
            assert b
            if not stats:
                assert len({shapes[i] for i in b}) == 1
                if policy.independent_pixels and len(b) > 1:
                    area = max(shapes[b[0]][0], min_size) * max(shapes[b[0]][1], min_size)
                    assert len(b) * area <= policy.independent_pixels
            elif policy.original_batch == 1:
                assert len(b) == 1


def test_classify_puts_each_score_at_its_crop_and_nan_elsewhere():
    rec = _Recorder()
    timings: dict[str, float] = {}
    out = classify(rec, "hole_cnn", 5, [[3, 0], [4]],  # type: ignore[arg-type]
                   lambda idx: np.stack([np.full((1, 2, 2), float(i), np.float32) for i in idx]), timings)
    assert rec.batches == [2, 1]
    assert out[0] == 0.0 and out[3] == 3.0 and out[4] == 4.0 and np.isnan(out[1]) and np.isnan(out[2])
    assert set(timings) == {"crops", "cnn"}
