"""Worker threads for the pipelines' GIL-free work: hole crops sampled and standardised, the view tests run
beside the period estimate (and the first U-Net input made after it), the lattice fit's summed-area table and the
film mask's working copy made beside the centroids and the fit; the square finder's seam search, class sums,
histograms and region contours, and the mesh's mask autocorrelation (cv2.dft; tested in
tests/test_mesh_fastpath.py).

OpenCV spreads a large call over its threads, but numpy never does, and small calls and the Python between
calls run on one core: the crops' standardisation, the view tests and the period search left the second core
idle (on the 1024x1440 reference, at rest: 72 ms a call serial, 60 with these threads). Here independent
pieces of work run at once, each with exactly the operations it ran alone (the same bits).

As many workers as OpenCV's thread count (cv2.setNumThreads): a batch worker pinned to one thread (batch.py),
or the benchmark's one-thread CPU count, runs everything in the calling thread as before. Work submitted from a
worker also runs in place (no worker waits for another). After a fork the child starts its own pool (the
parent's threads do not exist there).

Concurrent OpenCV calls run their parallel loops in one piece (OpenCV's nested-loop rule), which is what they
compute at one thread: only calls whose results do not depend on the thread count may run here (tested per
function in tests/test_workers.py; cv2.warpAffine's bilinear rows do depend on it, see
scoring._opencv_threads). When the interpreter is shutting down (no new threads), work runs in place.
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, TypeVar

__all__ = ["workers", "submit", "chain", "run_all"]

T = TypeVar("T")

# No more threads than this, whatever OpenCV's count (the work splits into a few large pieces).
_MAX_WORKERS = 8

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_local = threading.local()
# Tests set this to False to run everything in the calling thread (the reference the threaded runs must match).
ENABLED = True


def workers() -> int:
    """How many pieces of work may run at once: OpenCV's thread count (capped), 1 inside a worker or disabled."""
    if not workers_allowed() > 1:
        return 1
    import cv2

    return max(1, min(int(cv2.getNumThreads()), _cpus()))


def workers_allowed() -> int:
    """The most threads run_all may use here whatever it is asked: 1 inside a worker or when disabled."""
    if not ENABLED or getattr(_local, "inside", False):
        return 1
    return _cpus()


def _cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the system has one), at most _MAX_WORKERS."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, _MAX_WORKERS))


def _mark_worker() -> None:
    _local.inside = True


def _executor() -> ThreadPoolExecutor:
    """The process's pool (its threads start as work first needs them)."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_cpus(),
                                       thread_name_prefix="ptolemy-rt", initializer=_mark_worker)
        return _pool


def _forget_pool() -> None:
    """In a forked child: the parent's worker threads are gone, so its pool would queue work forever."""
    global _pool, _lock
    _lock = threading.Lock()
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def submit(fn: Callable[..., T], *args) -> Future:
    """fn(*args) on a worker thread (a Future); run at once in the calling thread when workers() is 1."""
    if workers() > 1:
        try:
            return _executor().submit(fn, *args)
        except RuntimeError:  # the interpreter is shutting down (an atexit handler): no new threads
            pass
    done: Future = Future()
    try:
        done.set_result(fn(*args))
    except Exception as exc:  # handed over through the Future, as a worker's would be
        done.set_exception(exc)
    return done


def chain(*jobs: Callable[[], T]) -> list[Future]:
    """The jobs one after another on one worker thread (one core beside the caller's, however many jobs): a Future
    each, done as soon as its job is, so the first can be awaited while the next runs. A job whose Future is
    cancelled before its turn does not run. In the calling thread, at once, when workers() is 1.

    A job's Exception goes to its Future. KeyboardInterrupt or SystemExit run in place is raised here (it is the
    caller's, and a dropped Future would lose it); on a worker it goes to its Future and the later jobs are
    cancelled (none waits forever). The worker lets go of each job (its closure) and its Future once it has run,
    so a Future the caller dropped frees its result at once."""
    futures: list[Future] = [Future() for _ in jobs]
    queue = collections.deque(zip(futures, jobs))
    caller = threading.get_ident()

    def run() -> None:
        while queue:
            future, job = queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except Exception as exc:  # handed over through its Future
                future.set_exception(exc)
            except BaseException as exc:
                if threading.get_ident() == caller:
                    raise  # in place: the caller's interrupt, not stored
                future.set_exception(exc)
                while queue:
                    queue.popleft()[0].cancel()
            finally:
                del future, job  # this job's closure and result: held by the caller's Future alone

    submit(run)
    return futures


def run_all(fn: Callable[[int, int], T], parts: int, threads: int | None = None) -> list[T]:
    """[fn(0, slot), ..., fn(parts - 1, slot)] on up to `threads` threads at once (default workers()): the
    calling thread and workers, each taking the next part not yet taken, so that a thread the system leaves
    waiting (a shared, loaded machine) holds up no more than the part in its hands. slot (0 .. threads - 1)
    names the thread, for buffers of its own. One by one in the calling thread (slot 0) when that is 1.
    The first exception raised is re-raised once every thread has stopped; no part starts after it."""
    n = min(workers() if threads is None else min(threads, workers_allowed()), parts)
    if n <= 1:
        return [fn(i, 0) for i in range(parts)]
    results: list = [None] * parts
    taken = itertools.count()  # next() on a count is atomic under the GIL
    errors: list[BaseException] = []

    def share(slot: int) -> None:
        while not errors:
            i = next(taken)
            if i >= parts:
                return
            try:
                results[i] = fn(i, slot)
            except BaseException as exc:
                errors.append(exc)
                raise

    futures: list[Future] = []
    for slot in range(1, n):
        try:
            futures.append(_executor().submit(share, slot))
        except RuntimeError:  # the interpreter is shutting down: the threads started (or this one) take all
            break
    _local.inside = True  # work this thread's parts submit runs in place, as a worker's does
    error: BaseException | None = None
    try:
        share(0)
    except BaseException as exc:  # a part's error, or one raised between parts (KeyboardInterrupt)
        error = exc
        errors.append(exc)  # the workers take no further part
    finally:
        _local.inside = False
    for f in futures:
        if not f.cancel():  # a worker that had not started yet is not waited for
            f.exception()
    if error is None and errors:
        error = errors[0]
    if error is not None:
        raise error
    return results
