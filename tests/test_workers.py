"""Worker threads (ptolemy_rt._workers): the hole finder's crops and its period search beside the view tests run
on a second core, and must give the bits the calling thread alone gives (issue 17)."""

from __future__ import annotations

import contextlib
import os
import pickle
import threading
import time
from concurrent.futures import CancelledError

import cv2
import numpy as np
import pytest

from ptolemy_rt import _workers
from ptolemy_rt.crops import hole_crop_inputs, hole_crops
from ptolemy_rt.holes import find_holes
from ptolemy_rt.models import load_models
from ptolemy_rt.scoring import unet_scores

from .conftest import synthetic_medmag


@contextlib.contextmanager
def serial():
    """Every piece of work in the calling thread (the reference the threaded runs must match)."""
    before = _workers.ENABLED
    _workers.ENABLED = False
    try:
        yield
    finally:
        _workers.ENABLED = before


def test_run_all_keeps_order_and_runs_in_place_when_asked(two_threads, monkeypatch):
    names: dict[int, str] = {}

    def part(i, slot=0):
        names[i] = threading.current_thread().name
        return i * i

    # parts slow enough that the worker takes some before the calling thread has taken them all
    slow = lambda i, slot: (time.sleep(0.002), part(i))[1]  # noqa: E731
    assert _workers.run_all(slow, 20) == [i * i for i in range(20)]
    assert any(n.startswith("ptolemy-rt") for n in names.values())
    monkeypatch.setattr(_workers, "ENABLED", False)
    names.clear()
    assert _workers.run_all(part, 5) == [i * i for i in range(5)]
    assert set(names.values()) == {threading.current_thread().name}
    assert _workers.submit(part, 3).result() == 9 and names[3] == threading.current_thread().name


def test_run_all_is_serial_at_one_opencv_thread():
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        main = threading.current_thread().name
        assert _workers.workers() == 1
        assert _workers.run_all(lambda i, slot: (threading.current_thread().name, slot), 4) == [(main, 0)] * 4
    finally:
        cv2.setNumThreads(before)


def test_run_all_reraises_after_every_part_ran(two_threads):
    done = []

    def part(i, slot=0):
        if i == 2:
            raise ValueError("part 2")
        done.append(i)
        return i

    with pytest.raises(ValueError, match="part 2"):
        _workers.run_all(part, 60)
    # the parts taken before the error ran; none started after it (a part takes microseconds, so few did)
    assert {0, 1} <= set(done) and len(done) < 59
    assert _workers.submit(part, 2).exception() is not None


def test_work_submitted_from_a_worker_runs_in_place(two_threads):
    # a worker that waited for another would deadlock a full pool: nested work runs where it is submitted
    def outer(i, slot):
        here = threading.current_thread().name
        inner = _workers.run_all(lambda j, s: threading.current_thread().name, 3)
        return here, inner

    for here, inner in _workers.run_all(outer, 2):
        assert inner == [here] * 3


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_pool(two_threads):
    assert _workers.run_all(lambda i, s: i, 4) == [0, 1, 2, 3]  # the parent's pool has threads now
    pid = os.fork()
    if pid == 0:  # child: the parent's pool threads do not exist here; hanging would time the test out
        try:
            ok = _workers.run_all(lambda i, s: i + 1, 4) == [1, 2, 3, 4] and _workers.submit(abs, -2).result(5) == 2
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0


@pytest.mark.parametrize("spacing, n", [(290.0, 17), (45.0, 300)])  # the large-crop path and the batched one
@pytest.mark.parametrize("mode", ["centred", "ptolemy"])
def test_threaded_crops_and_unet_scores_are_the_serial_ones_to_the_bit(spacing, n, mode, two_threads):
    rng = np.random.default_rng(n)
    image = (rng.random((700, 900)) * 800.0 + 10.0).astype(np.float32)
    prob = cv2.GaussianBlur(rng.random((700, 900), dtype=np.float32), (0, 0), 2)
    points = rng.random((n, 2)) * [960.0, 760.0] - 30.0  # some off the image's edge
    geometry = hole_crops(points, 31.0, spacing, image.shape, mode)
    shape = geometry.shapes[0]
    same = [i for i, s in enumerate(geometry.shapes) if s == shape]
    matrices = [geometry.matrices[i] for i in same]
    threaded = hole_crop_inputs(image, matrices, [shape] * len(same), 16), unet_scores(prob, geometry)
    with serial():
        alone = hole_crop_inputs(image, matrices, [shape] * len(same), 16), unet_scores(prob, geometry)
    assert np.array_equal(threaded[0].view(np.uint32), alone[0].view(np.uint32))
    assert np.array_equal(threaded[1], alone[1])


def test_what_runs_beside_other_opencv_work_does_not_depend_on_opencvs_thread_count():
    # Two OpenCV calls at once: the second runs its parallel loop in one piece (as at one thread). So whatever the
    # workers run beside the calling thread must give the same bits at any thread count: the view tests, the
    # period search, the normalisation, the film mask and the crops' bicubic warps.
    from ptolemy_rt import film, spacing, unet, views
    from ptolemy_rt.crops import sample_affine

    image = synthetic_medmag(1)[0]
    rng = np.random.default_rng(0)

    def everything():
        warps = [sample_affine(image, np.array([[0.8, 0.6, x], [-0.6, 0.8, y]]), (300, 300))
                 for x, y in rng.uniform(-100, 1000, (3, 2))]
        return pickle.dumps((views.large_holes(image), views.atlas_reason(image), views._split(image, 256),
                             views._split(image, 512), list(spacing.period_estimates(image)),
                             unet.normalise_image(image), film.film_mask(image, 120.0), warps,
                             unet.resample(image, 0.37), film.film_working_copy(image, 60.0)))

    before = cv2.getNumThreads()
    try:
        runs = []
        for threads in (1, 2, 4):
            cv2.setNumThreads(threads)
            rng = np.random.default_rng(0)
            runs.append(everything())
    finally:
        cv2.setNumThreads(before)
    assert runs[1] == runs[0] and runs[2] == runs[0]


def _everything(result):
    out = result.to_dict()
    out.pop("timings", None)
    return repr(out)


def _compare(image, **options):
    models = load_models(None)
    threaded = find_holes(image, models, **options)
    with serial():
        alone = find_holes(image, models, **options)
    assert _everything(threaded) == _everything(alone)
    return threaded


def test_find_holes_with_workers_is_the_serial_result(two_threads):
    assert len(_compare(synthetic_medmag(1)[0]).holes) > 0


@pytest.mark.slow
def test_find_holes_with_workers_is_the_serial_result_more(two_threads):
    from benchmarks.holes_sets import make_sample

    _compare(synthetic_medmag(1)[0], keep_off_film=True, crop_mode="ptolemy")
    for category in ("whole_square", "single_hole", "no_lattice"):
        _compare(make_sample(category, 0).image)


@pytest.mark.slow
def test_find_holes_with_workers_is_the_serial_result_reference(medmag_path, two_threads):
    from ptolemy_rt.io import read_image

    image = read_image(medmag_path)
    assert len(_compare(image).holes) == 17
    _compare(image, keep_off_film=True, crop_mode="ptolemy")


def test_chain_runs_its_jobs_in_order_on_one_worker(two_threads):
    gate = threading.Event()
    seen: list[tuple[int, str]] = []

    def job(i):
        def run():
            if i == 0:
                gate.wait(5)
            seen.append((i, threading.current_thread().name))
            if i == 2:
                raise ValueError("two")
            return i * 10
        return run

    futures = _workers.chain(*(job(i) for i in range(4)))
    assert futures[1].cancel()  # not started yet (the first waits): it never runs
    gate.set()
    assert futures[0].result(5) == 0 and futures[3].result(5) == 30
    with pytest.raises(ValueError, match="two"):
        futures[2].result()
    assert [i for i, _ in seen] == [0, 2, 3]
    assert len({name for _, name in seen}) == 1 and seen[0][1].startswith("ptolemy-rt")
    with serial():  # in place, at once
        assert [f.result() for f in _workers.chain(lambda: threading.current_thread().name)] == [
            threading.current_thread().name]


def test_chain_in_place_raises_an_interrupt_and_stores_only_errors():
    # Run in the calling thread (workers off), a job's KeyboardInterrupt is the caller's: raised from chain, not
    # stored in a Future the caller may only drop (the later jobs do not run); an Exception is stored.
    ran = []

    def interrupted():
        raise KeyboardInterrupt

    with serial():
        with pytest.raises(KeyboardInterrupt):
            _workers.chain(lambda: ran.append(0), interrupted, lambda: ran.append(2))
        assert ran == [0]
        with pytest.raises(SystemExit):
            _workers.chain(lambda: (_ for _ in ()).throw(SystemExit(3)))
        failed, after = _workers.chain(lambda: 1 / 0, lambda: 7)
        assert isinstance(failed.exception(), ZeroDivisionError) and after.result() == 7


def test_chain_on_a_worker_hands_a_systemexit_over_and_cancels_the_rest(two_threads):
    # On a worker nothing can be raised to the caller: the Future holds it, and no later Future waits forever.
    gate = threading.Event()
    first, stopped, later = _workers.chain(lambda: gate.wait(5), lambda: (_ for _ in ()).throw(SystemExit(4)),
                                           lambda: 9)
    gate.set()
    assert first.result(5) is True
    with pytest.raises(SystemExit):
        stopped.result(5)
    with pytest.raises(CancelledError):
        later.result(5)  # cancelled by the worker (waits for it, not forever)


@pytest.fixture
def jobs_taken_by_the_worker(monkeypatch):
    """find_holes's jobs beside its own work awaited as if the worker had started each already (their Futures
    refuse to cancel), and the first U-Net input made only once the calling thread has handed over the
    normalised image: the paths that use what the worker made, whatever the machine's timing (a race else)."""
    from ptolemy_rt import holes

    real_chain, real_first = _workers.chain, holes._first_input

    def chain(*jobs):
        futures = real_chain(*jobs)
        for future in futures:
            future.cancel = lambda: False  # type: ignore[method-assign]
        return futures

    def first_input(given, *args):
        deadline = time.monotonic() + 30
        while "normalised" not in given and time.monotonic() < deadline:
            time.sleep(0.001)
        return real_first(given, *args)

    monkeypatch.setattr(_workers, "chain", chain)
    monkeypatch.setattr(holes, "_first_input", first_input)


def test_find_holes_uses_the_film_copy_made_beside_the_fit(two_threads, jobs_taken_by_the_worker, monkeypatch):
    # The working copy for the estimated period is made on the worker; the mask it gives is the one made alone.
    from ptolemy_rt import holes

    used = []
    real = holes.film_mask

    def film_mask(image, spacing, *, finite=False, working=None):
        mask = real(image, spacing, finite=finite, working=working)
        used.append(working is not None and np.array_equal(mask, real(image, spacing, finite=finite)))
        return mask

    monkeypatch.setattr(holes, "film_mask", film_mask)
    assert len(_compare(synthetic_medmag(1)[0]).holes) > 0
    assert used == [True, False]  # the threaded run used the copy (the same mask); the serial one made its own


@pytest.mark.parametrize("delay", [0.0, 0.05])  # 50 ms after normalising: the worker is done with the period
def test_find_holes_uses_the_unet_input_made_beside_the_view_tests(two_threads, jobs_taken_by_the_worker,
                                                                   monkeypatch, delay):
    # The worker that estimates the period makes the first try's U-Net input; it is the one made here.
    from ptolemy_rt import holes, unet

    models = load_models(None)
    used = []
    real, real_normalise = holes.scaled_probability_map, holes.normalise_image

    def scaled_probability_map(normalised, models, factor, padding="minimal", *, prepared=None):
        if prepared is not None:
            alone = unet.scaled_unet_input(normalised, factor, models.spec("hole_unet").multiple, padding)
            used.append(np.array_equal(prepared[0], alone[0]) and prepared[1] == alone[1])
        return real(normalised, models, factor, padding, prepared=prepared)

    def normalise_image(data, *args, **kwargs):
        out = real_normalise(data, *args, **kwargs)
        time.sleep(delay)
        return out

    monkeypatch.setattr(holes, "scaled_probability_map", scaled_probability_map)
    monkeypatch.setattr(holes, "normalise_image", normalise_image)
    assert len(find_holes(synthetic_medmag(1)[0], models).holes) > 0
    assert used == [True]


def test_the_worker_made_unet_input_is_let_go_after_the_unet_run(two_threads, jobs_taken_by_the_worker, monkeypatch):
    # As large as the U-Net's input (256 MB at 8192x8192): no Future may keep it to the end of find_holes.
    import gc
    import weakref

    from ptolemy_rt import holes

    made, alive = [], []
    real_input, real_film = holes.scaled_unet_input, holes.film_mask

    def scaled_unet_input(*args, **kwargs):
        out = real_input(*args, **kwargs)
        made.append(weakref.ref(out[0]))
        return out

    def film_mask(*args, **kwargs):
        gc.collect()
        alive.append([ref() is not None for ref in made])
        return real_film(*args, **kwargs)

    monkeypatch.setattr(holes, "scaled_unet_input", scaled_unet_input)
    monkeypatch.setattr(holes, "film_mask", film_mask)
    assert len(find_holes(synthetic_medmag(1)[0], load_models(None)).holes) > 0
    assert alive == [[False]]  # made once (by the worker, for the first try), gone by the film mask


def test_find_holes_makes_what_a_worker_failed_to_make(two_threads, jobs_taken_by_the_worker, monkeypatch):
    # The worker's jobs are speculative: a MemoryError there leaves them to this thread, as without workers.
    from ptolemy_rt import holes

    failed = []

    def fails(name):
        def job(*args, **kwargs):
            failed.append(name)
            raise MemoryError(name)
        return job

    for name in ("_first_input", "summed_area_table", "film_working_copy"):
        monkeypatch.setattr(holes, name, fails(name))
    assert len(_compare(synthetic_medmag(1)[0]).holes) > 0
    assert sorted(failed) == ["_first_input", "film_working_copy", "summed_area_table"]


def test_an_interrupt_between_parts_is_raised_not_lost(two_threads, monkeypatch):
    # KeyboardInterrupt can arrive in the calling thread outside any part: run_all must raise it, not return
    # a list with parts missing
    calls = {"n": 0}
    real_count = _workers.itertools.count

    def count():
        inner = real_count()

        class Interrupting:
            def __next__(self):
                calls["n"] += 1
                if threading.current_thread() is threading.main_thread() and calls["n"] > 3:
                    raise KeyboardInterrupt
                return next(inner)

        return Interrupting()

    monkeypatch.setattr(_workers.itertools, "count", count)
    with pytest.raises(KeyboardInterrupt):
        _workers.run_all(lambda i, s: (time.sleep(0.001), i)[1], 50)


@pytest.mark.slow
def test_find_squares_on_a_stitched_atlas_is_the_same_at_any_opencv_thread_count(monkeypatch):
    # The square finder's threaded pieces (seam search, class sums, histograms, contours beside labelling: cv2's
    # dilate, connectedComponents, findContours, calcHist run concurrently) at 1 (all in the calling thread), 2
    # and 4 OpenCV threads: the same result to the bit.
    from benchmarks.atlas_sets import heldout_cases, make_heldout_atlas
    from ptolemy_rt.montage import remove_seams
    from ptolemy_rt.squares import find_squares

    monkeypatch.setattr(_workers, "_cpus", lambda: 4)
    case = next(c for c in heldout_cases(2) if c.category == "montage" and c.size >= 2048)
    atlas = make_heldout_atlas(case)[0]
    assert remove_seams(atlas.astype(np.float32))[1], "the montage should have seams to remove"
    before = cv2.getNumThreads()
    runs = []
    try:
        for threads in (1, 2, 4):
            cv2.setNumThreads(threads)
            result = find_squares(atlas, None).to_dict()
            result.pop("timings", None)
            runs.append(pickle.dumps(result))
    finally:
        cv2.setNumThreads(before)
    assert runs[1] == runs[0] and runs[2] == runs[0]


def test_work_runs_in_place_once_the_interpreter_is_shutting_down(tmp_path):
    # atexit handlers run after concurrent.futures stops taking work: the pipelines must still run there.
    import subprocess
    import sys

    script = ("import atexit\n"
              "from ptolemy_rt import _workers\n"
              "_workers._cpus = lambda: 2\n"
              "import cv2; cv2.setNumThreads(2)\n"
              "def late():\n"
              "    print(_workers.run_all(lambda i, s: i * i, 4), _workers.submit(sum, [1, 2]).result())\n"
              "atexit.register(late)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[0,", "1,", "4,", "9]", "3"]
