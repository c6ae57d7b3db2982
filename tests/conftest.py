"""Shared fixtures: the reference material in ../shared and a model set converted from it."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"

try:
    from hypothesis import settings as _hypothesis_settings
except ImportError:  # hypothesis is a dev extra; tests that need it import it themselves
    pass
else:
    # CI explores the same examples on every run (a red CI is then a real change, not a new draw); local runs
    # keep drawing new ones, which is where hypothesis finds things.
    _hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
    if IN_CI:
        _hypothesis_settings.load_profile("ci")


def reference_root() -> Path:
    """Where the Ptolemy reference material is: $PTOLEMY_REFERENCE or ../shared/ptolemy-reference."""
    env = os.environ.get("PTOLEMY_REFERENCE")
    return Path(env) if env else REPO.parent / "shared" / "ptolemy-reference"


def need(condition: bool, reason: str) -> None:
    """Skip with `reason` when `condition` fails, except under CI=true, where it fails the test."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def need_torch():
    """Import torch, or skip (fail in CI) with the install command."""
    try:
        import torch  # noqa: F401
    except ImportError:
        need(False, "torch is not installed (pip install -e '.[dev,cpu]')")
    import torch

    return torch


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The ../shared/ptolemy-reference folder (skipped where absent, e.g. a user's clone)."""
    root = reference_root()
    need(root.is_dir(), f"Ptolemy reference material not found at {root} (set PTOLEMY_REFERENCE)")
    return root


@pytest.fixture(scope="session")
def converted_models(reference_dir: Path, tmp_path_factory) -> Path:
    """A model set converted from the published checkpoints, bn=batch (built once per session)."""
    need_torch()
    from export.convert_ptolemy import convert

    out = tmp_path_factory.mktemp("converted_batch")
    return convert(reference_dir / "weights", out, bn="batch")


@pytest.fixture(scope="session")
def converted_models_running(reference_dir: Path, tmp_path_factory) -> Path:
    """A model set converted from the published checkpoints, bn=running."""
    need_torch()
    from export.convert_ptolemy import convert

    out = tmp_path_factory.mktemp("converted_running")
    return convert(reference_dir / "weights", out, bn="running")


@pytest.fixture(scope="session")
def published_unet_map(converted_models: Path, medmag_path: Path):
    """The published U-Net's probability map of the real med-mag example, padded as the reference was
    (1024 x 1536): the published U-Net runs once per session for every test that needs its map."""
    from ptolemy_rt.io import read_image
    from ptolemy_rt.models import load_models
    from ptolemy_rt.unet import normalise_image, probability_map

    image = read_image(medmag_path)
    return probability_map(normalise_image(image.data), load_models(converted_models), pad_shape=(1024, 1536))


# Tests that need the published weights (converted once per session, seconds each) are slow by definition:
# the default run leaves them out, `.ci/run` runs them.
_SLOW_FIXTURES = {"converted_models", "converted_models_running", "published_unet_map"}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if _SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    _run_fast_twins(items)


# A property test whose examples are each costly draws fewer of them in the default run, never none:
# `@examples(n, settings(...), given(...))` in place of its @settings and @given collects it twice, as test[fast]
# drawing n examples in the default run and as test[full] (marked slow, so CI runs it) drawing the count of its
# settings. Hypothesis fixes a test's settings when @settings decorates it, and only once, so the two are two tests
# built from the one function with public API alone: its given(...) applied twice, one under `settings` and one
# under settings(settings, max_examples=n). @example lines stay below, on the plain function; both twins take them.
def examples(n: int, full: Any, given: Callable[[Callable], Callable]) -> Callable[[Callable], Callable]:
    """A @given test as two: [fast] with max_examples=n (the default run), [full] with `full`'s (slow)."""
    from hypothesis import settings

    def twins(test: Callable) -> Callable:
        if not 0 < n < full.max_examples:
            raise ValueError(f"{test.__name__}: examples({n}) must be between 1 and the {full.max_examples} of its "
                             "settings")
        whole = full(given(test))
        whole.fast_twin = settings(full, max_examples=n)(given(test))
        return pytest.mark.examples(n)(whole)

    return twins


def pytest_generate_tests(metafunc) -> None:
    if metafunc.definition.get_closest_marker("examples") is None:
        return
    if getattr(metafunc.function, "fast_twin", None) is None:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: mark it with tests.conftest.examples(n, "
                                "settings(...), given(...)), not with pytest.mark.examples")
    # An @example above examples(...) would decorate the [full] twin alone: the [fast] run would skip it.
    explicit = "hypothesis_explicit_examples"
    if getattr(metafunc.function, explicit, None) != getattr(metafunc.function.fast_twin, explicit, None):
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: put @example lines below examples(...)")
    metafunc.parametrize("_examples", [pytest.param("fast", id="fast"),
                                       pytest.param("full", id="full", marks=pytest.mark.slow)], indirect=True)


def _run_fast_twins(items) -> None:
    """A test[fast] item calls the test built with max_examples=n (examples)."""
    for item in items:
        if getattr(item, "callspec", None) is not None and item.callspec.params.get("_examples") == "fast":
            if hasattr(item.obj, "__self__"):  # a method: pytest binds it to a new instance; the twin is a function
                raise pytest.UsageError(f"{item.nodeid}: examples(...) takes module-level tests only")
            item.obj = getattr(item.obj, "fast_twin", item.obj)  # once, even if this hook ran twice


@pytest.fixture(autouse=True)
def _process_state():
    """numpy's error state and OpenCV's thread count restored after each test: cli.main run in this process (the
    in-process CLI tests) sets both for the process it takes to be its own, which silenced numpy's warnings and
    changed OpenCV's threads for every later test."""
    import cv2
    import numpy as np

    err, threads = np.geterr(), cv2.getNumThreads()
    yield
    np.seterr(**err)
    if cv2.getNumThreads() != threads:
        cv2.setNumThreads(threads)


@pytest.fixture(autouse=True)
def _examples(request):
    """Which twin of an `examples` test runs ("fast" or "full"; the item calls that test); otherwise None."""
    return getattr(request, "param", None)


def synthetic_medmag(*args, **kwargs):
    """ptolemy_rt.synthetic.make_medmag(*args, **kwargs), made once per session (a dozen tests take the same few
    images, 0.1-0.2 s each): its arrays are read-only, so a test that changes one works on a copy."""
    return _synthetic("make_medmag", args, tuple(sorted(kwargs.items())))


def synthetic_atlas(*args, **kwargs):
    """ptolemy_rt.synthetic.make_atlas(*args, **kwargs), made once per session, read-only as synthetic_medmag's."""
    return _synthetic("make_atlas", args, tuple(sorted(kwargs.items())))


@functools.lru_cache(maxsize=None)
def _synthetic(maker: str, args: tuple, kwargs: tuple):
    import numpy as np

    from ptolemy_rt import synthetic

    data, truth = getattr(synthetic, maker)(*args, **dict(kwargs))
    for array in (data, *vars(truth).values()):
        if isinstance(array, np.ndarray):
            array.flags.writeable = False
    return data, truth


@pytest.fixture(scope="session")
def lowmag_path(reference_dir: Path) -> Path:
    """The real low-mag example atlas."""
    return reference_dir / "images" / "20may08a_16760340.mrc"


@pytest.fixture(scope="session")
def medmag_path(reference_dir: Path) -> Path:
    """The real med-mag example."""
    return reference_dir / "images" / "medmag_readme_1024x1440.mrc"


@pytest.fixture
def two_threads(monkeypatch):
    """OpenCV (and so ptolemy_rt._workers' pool) at two threads, even on a one-CPU machine, restored after."""
    import cv2

    from ptolemy_rt import _workers

    monkeypatch.setattr(_workers, "_cpus", lambda: 2)
    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        yield
    finally:
        cv2.setNumThreads(before)
