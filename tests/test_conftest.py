"""The suite's own machinery (tests/conftest.py): what the default run and CI's slow step really run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter

from .conftest import REPO

TWIN_TEST = '''
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import examples


@examples(3, settings(max_examples=7, database=None, derandomize=True), given(st.integers(0, 10**9)))
def test_counted(x):
    twin = os.environ["PYTEST_CURRENT_TEST"].split("[", 1)[1].split("]", 1)[0]
    with open(os.environ["TWIN_COUNTS"], "a") as fh:
        fh.write(twin + "\\n")
'''


def test_examples_twins_draw_their_own_counts(tmp_path):
    """Closing note 10: examples(n) set Hypothesis's private _hypothesis_internal_use_settings; had Hypothesis
    stopped reading it, the [fast] twins would quietly have drawn the full count. Built from public API now; a
    test with examples(3) and max_examples=7 is called 3 times in the default run and 7 in the slow step."""
    (tmp_path / "conftest.py").write_text("from tests.conftest import _examples, pytest_collection_modifyitems, "
                                          "pytest_generate_tests  # noqa: F401\n")
    (tmp_path / "test_twins.py").write_text(textwrap.dedent(TWIN_TEST))
    counts = tmp_path / "counts.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "TWIN_COUNTS": str(counts)}
    seen = {}
    for step, selection in (("default", "not slow"), ("slow", "slow")):
        counts.write_text("")
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", selection,
                              "test_twins.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        seen[step] = Counter(counts.read_text().split())
    assert seen == {"default": {"fast": 3}, "slow": {"full": 7}}


EXAMPLE_ABOVE = '''
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.conftest import examples


@example(5)
@examples(2, settings(max_examples=4, database=None), given(st.integers(0, 10)))
def test_misplaced(x):
    pass
'''


def test_an_example_above_examples_is_refused(tmp_path):
    """An @example above examples(...) decorates the [full] twin alone (the default run would never try it):
    collection stops and says where it goes."""
    (tmp_path / "conftest.py").write_text("from tests.conftest import _examples, pytest_collection_modifyitems, "
                                          "pytest_generate_tests  # noqa: F401\n")
    (tmp_path / "test_above.py").write_text(textwrap.dedent(EXAMPLE_ABOVE))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_above.py"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "put @example lines below examples(...)" in run.stdout + run.stderr
