"""`ptolemy-rt doctor`: providers tried on real sessions, CUDA/cuDNN libraries, the Numba cache, --warm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ptolemy_rt.doctor import CUDA_LIBRARIES, diagnose

REPO = Path(__file__).resolve().parents[1]


def _doctor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "ptolemy_rt", "doctor", *args], capture_output=True, text=True,
                          env=full_env, timeout=300)


def test_report_tries_the_cpu_provider_and_lists_the_cuda_libraries():
    report = diagnose()
    cpu = next(p for p in report.providers if p["provider"] == "CPUExecutionProvider")
    assert cpu["offered"] and cpu["runs"], cpu
    assert cpu["session_ms"] >= 0 and cpu["run_ms"] >= 0
    assert [lib["library"] for lib in report.cuda_libraries] == [name for name, _, _ in CUDA_LIBRARIES]
    assert all(isinstance(lib["loads"], bool) for lib in report.cuda_libraries)
    assert report.versions["ptolemy-rt"] and report.versions["python"]
    assert not report.problems


def test_json_output_and_exit_code(tmp_path):
    r = _doctor("--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    # Nothing is compiled at run time any more: no Numba section, no Numba among the versions.
    assert "numba" not in data and "numba" not in data["versions"]
    assert data["versions"]["onnxruntime"]


def test_bad_model_set_is_a_problem(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    r = _doctor("--models", str(tmp_path))
    assert r.returncode == 3
    assert "problem" in r.stdout


@pytest.mark.slow
def test_warm_runs_both_finders_without_numba():
    r = _doctor("--warm", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert set(data["warm"]) == {"holes", "squares"}
    assert all(w["first_s"] >= 0 and w["again_s"] >= 0 for w in data["warm"].values())


def test_a_model_set_path_in_a_symlink_loop_is_a_problem_not_a_crash(tmp_path, capsys):
    """A --models path in a symlink loop is a reported problem (exit 3), not an internal error (was exit 70)."""
    from ptolemy_rt.cli import main

    loop = tmp_path / "set"
    loop.symlink_to(loop)
    assert main(["doctor", "--warm", "--models", str(loop)]) == 3
    out, err = capsys.readouterr()
    assert "unusable model set" in out and "internal" not in err
