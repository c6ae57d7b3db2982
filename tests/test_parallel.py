"""_parallel: the thread budget follows OpenCV's pool, thread_map keeps order, spans cover their range."""

from __future__ import annotations

import threading

import cv2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ptolemy_rt._parallel import spans, thread_count, thread_map


def test_thread_count_follows_opencv():
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(1)
        assert thread_count() == 1
        cv2.setNumThreads(3)
        assert thread_count() == 3
    finally:
        cv2.setNumThreads(before)


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_thread_map_is_map_in_order(threads):
    names: set[str] = set()

    def f(i: int) -> int:
        names.add(threading.current_thread().name)
        return i * i

    assert thread_map(f, range(20), threads) == [i * i for i in range(20)]
    assert thread_map(f, [], threads) == []
    # One thread: the caller's own, no pool started.
    names.clear()
    thread_map(f, range(3), 1)
    assert names == {threading.current_thread().name}


def test_thread_map_raises_a_pieces_error():
    def f(i: int) -> int:
        if i == 3:
            raise ValueError("piece 3")
        return i

    with pytest.raises(ValueError, match="piece 3"):
        thread_map(f, range(6), 2)


@given(start=st.integers(-50, 50), length=st.integers(0, 5000), pieces=st.integers(1, 9), min_size=st.integers(1, 900))
def test_spans_cut_the_range_into_contiguous_pieces(start, length, pieces, min_size):
    got = spans(start, start + length, pieces, min_size)
    flat = [i for lo, hi in got for i in range(lo, hi)]
    assert flat == list(range(start, start + length))
    assert len(got) <= pieces
    assert all(hi - lo >= min_size for lo, hi in got) or len(got) <= 1
