"""Packaging promises: a light import, a clear message without onnxruntime, no Numba (nothing compiled at run time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from .conftest import synthetic_atlas, synthetic_medmag

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, cwd=str(REPO), timeout=120)


def test_import_is_light():
    # No heavy libraries at import: they load when a pipeline first runs.
    r = _python("""
        import sys, ptolemy_rt
        heavy = [m for m in ("numba", "torch", "onnx", "cv2", "scipy", "onnxruntime") if m in sys.modules]
        print(",".join(heavy))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""


def test_import_without_onnxruntime_names_both_extras():
    r = _python("""
        import sys
        sys.modules["onnxruntime"] = None   # as if neither onnxruntime nor onnxruntime-gpu were installed
        import ptolemy_rt
    """)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "ptolemy-rt[cpu]" in last and "ptolemy-rt[gpu]" in last


# Modules a finder's run must not import: Numba (no JIT, nothing compiled at run time) and numpy.ma (~8 ms a
# process; np.percentile, np.median and a plain np.unique import it: the pipelines use _orderstats instead).
NOT_IMPORTED = ("numba", "llvmlite", "numpy.ma")
# Modules a plain `holes` or `squares` run has no use for (the batch command's, --nav's, --overlay's, sidecar XML).
NOT_USED = ("ptolemy_rt.batch", "ptolemy_rt.sessions", "ptolemy_rt.navigator", "ptolemy_rt.overlay",
            "xml.etree.ElementTree", "scipy.ndimage", "torch", "onnx")


def _finder_run(finder: str, tmp_path: Path, watch: tuple[str, ...]) -> list[str]:
    """Run `ptolemy-rt FINDER` on a small synthetic image in a process of its own (as Leginon starts it), with
    no writable home or temp dir; the modules of `watch` it left loaded."""
    from ptolemy_rt.models import default_models_dir

    if not (default_models_dir() / "manifest.json").is_file():
        pytest.skip("no shipped model set")

    mrcfile = pytest.importorskip("mrcfile")
    image = tmp_path / f"{finder}.mrc"
    data = synthetic_medmag(0, shape=(512, 720), spacing_px=120.0)[0] if finder == "holes" else synthetic_atlas(0)[0]
    with mrcfile.new(str(image)) as m:
        m.set_data(data.astype(np.float32))
    out = tmp_path / f"{finder}.json"
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(HOME="/proc/ptolemy-no-home", TMPDIR=str(blocker), PYTHONPATH=str(REPO))
    code = textwrap.dedent(f"""
        import json, sys
        from ptolemy_rt.cli import main
        code = main([{finder!r}, {str(image)!r}, "-o", {str(out)!r}])
        print(json.dumps([code, [m for m in {watch!r} if m in sys.modules]]))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                       cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    code, loaded = json.loads(r.stdout.strip().splitlines()[-1])
    assert code == 0, r.stderr
    assert out.is_file() and out.stat().st_size > 0
    return loaded


@pytest.fixture(scope="module", params=["holes", "squares"])
def finder_loaded(request, tmp_path_factory) -> list[str]:
    """The modules of NOT_IMPORTED and NOT_USED that a `holes` or `squares` run left loaded: one process per
    finder for both tests below."""
    return _finder_run(request.param, tmp_path_factory.mktemp(request.param), NOT_IMPORTED + NOT_USED)


def test_a_finder_run_imports_no_numba_nor_numpy_ma(finder_loaded):
    # The pipelines compile nothing and never import Numba, and leave numpy.ma unloaded (where _orderstats has
    # numpy's arithmetic: before numpy 2.4 it defers to numpy, and numpy 1.x imports numpy.ma with itself).
    from ptolemy_rt._orderstats import _SAME_AS_NUMPY

    watch = NOT_IMPORTED if _SAME_AS_NUMPY else tuple(m for m in NOT_IMPORTED if m != "numpy.ma")
    assert [m for m in finder_loaded if m in watch] == []


def test_a_finder_run_imports_only_what_it_uses(finder_loaded):
    assert [m for m in finder_loaded if m in NOT_USED] == []


def test_no_runtime_module_imports_numba():
    # Numba is no runtime dependency any more: no module of the package may import it.
    offenders = [p.name for p in (REPO / "ptolemy_rt").rglob("*.py")
                 if "import numba" in p.read_text() or "from numba" in p.read_text()]
    assert offenders == []


def test_license_is_bsd3():
    text = (REPO / "LICENSE").read_text()
    assert "BSD 3-Clause" in text


@pytest.mark.parametrize("needle", ["torch", "import onnx\n", "from onnx"])
def test_runtime_never_imports_dev_only_packages(needle):
    for path in (REPO / "ptolemy_rt").rglob("*.py"):
        assert needle not in path.read_text(), f"{path} imports a dev-only package"


@pytest.mark.parametrize("user, expected", [(None, "1"), ("3", "3")])
def test_the_command_line_starts_openblas_with_one_thread_unless_told(user, expected):
    # OpenBLAS's threads spin on the second core after numpy loads, where the pipelines' own threads run.
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if user is not None:
        env["OPENBLAS_NUM_THREADS"] = user
    env["PYTHONPATH"] = str(REPO)
    code = textwrap.dedent("""
        import os, sys
        from ptolemy_rt import cli
        assert "numpy" not in sys.modules  # the command line loads numpy only when a command needs it
        cli._one_blas_thread()
        print(os.environ["OPENBLAS_NUM_THREADS"])
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == expected


def test_a_library_user_keeps_openblas_threads():
    # Only the ptolemy-rt script changes the setting: importing or calling main() leaves the user's process alone.
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    env["PYTHONPATH"] = str(REPO)
    code = textwrap.dedent("""
        import os
        from ptolemy_rt.cli import main
        assert main(["holes", "/nonexistent/ptolemy-image.mrc", "-o", "/nonexistent/out.json"]) == 2
        print(os.environ.get("OPENBLAS_NUM_THREADS"))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "None"
