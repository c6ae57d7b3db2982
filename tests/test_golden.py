"""No behaviour change: the CLI's outputs on fixed images are byte-identical to those recorded in tests/golden.

Regenerate (only for an intended change of behaviour, said so in the commit) with
`python -m tests.golden_cases --record --published`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import reference_root
from .golden_cases import GOLDEN, PUBLISHED_CASES, SAME_AS, SHIPPED_CASES, image_path, run_case, sha256

# A few cases cover each pipeline in the fast suite; the rest run with the slow tests.
FAST = {"atlas3_squares", "medmag1_holes", "medmag1_holes_compat"}


@pytest.fixture(scope="module")
def golden_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("golden")


def _reference() -> Path | None:
    root = reference_root()
    return root if root.is_dir() else None


@pytest.mark.parametrize(
    "name,key,args",
    [pytest.param(*case, marks=() if case[0] in FAST else pytest.mark.slow, id=case[0]) for case in SHIPPED_CASES],
)
def test_shipped_models_outputs_unchanged(name, key, args, golden_tmp):
    expected = GOLDEN / f"{SAME_AS.get(name, name)}.txt"
    path = image_path(key, golden_tmp, _reference())
    if path is None or not expected.is_file():
        pytest.skip(f"{name}: image or golden output absent")
    assert run_case(args, path, None, golden_tmp) == expected.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("name,key,args", PUBLISHED_CASES, ids=[c[0] for c in PUBLISHED_CASES])
def test_published_weights_outputs_unchanged(name, key, args, converted_models, reference_dir, golden_tmp):
    digests = json.loads((GOLDEN / "published_sha256.json").read_text())
    path = image_path(key, golden_tmp, reference_dir)
    assert sha256(run_case(args, path, converted_models, golden_tmp)) == digests[SAME_AS.get(name, name)]
