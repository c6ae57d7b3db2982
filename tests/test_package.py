"""Packaging promises: a light import, a clear message without onnxruntime, a numba cache that always works."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, cwd=str(REPO), timeout=120)


def test_import_is_light():
    # No numba compilation, no heavy libraries at import: they load when a pipeline first runs.
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


def test_numba_cache_dir_respects_user_setting(tmp_path):
    r = _python("import ptolemy_rt._numba as n; print(n.cache_dir)", env={"NUMBA_CACHE_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path)


def test_numba_cache_without_home_compiles_and_caches(tmp_path):
    # A system-wide install with no HOME: we must still import numba and cache compiled kernels.
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    env["HOME"] = "/proc/ptolemy-no-home"  # cannot be created, even by root
    env["TMPDIR"] = str(tmp_path)
    env["PYTHONPATH"] = str(REPO)
    code = textwrap.dedent("""
        import os
        from ptolemy_rt._numba import numba, cache_dir
        @numba.njit(cache=True)
        def add(a, b):
            return a + b
        assert add(2, 3) == 5
        print(cache_dir)
    """)
    script = tmp_path / "probe_mod.py"
    script.write_text(code)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    cache = Path(r.stdout.strip())
    assert cache.is_relative_to(tmp_path)
    assert any(p.suffix in (".nbi", ".nbc") for p in cache.rglob("*"))


def test_numba_cache_dir_falls_back_when_unwritable(monkeypatch):
    import ptolemy_rt._numba as n

    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/definitely/not/writable")
    monkeypatch.setattr(n, "_writable", lambda path: "definitely" not in str(path))
    chosen = n._choose_cache_dir()
    assert chosen is not None and "definitely" not in chosen and f"ptolemy-rt-numba-{os.getuid()}" in chosen
    # Nothing writable at all: no cache (compile in memory) rather than a failing import.
    monkeypatch.setattr(n, "_writable", lambda path: False)
    assert n._choose_cache_dir() is None


def test_numba_temp_cache_dir_must_be_private(tmp_path, monkeypatch):
    import ptolemy_rt._numba as n

    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # world-writable: another user could plant a pickled cache index there
    assert not n._private(shared)
    mine = tmp_path / "mine"
    assert n._private(mine) and (mine.stat().st_mode & 0o777) == 0o700


def test_kernels_compile_without_any_cache_dir(tmp_path):
    # Nowhere to write: HOME unusable and the temp dir a file. The pipelines must still run (uncached).
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(HOME="/proc/ptolemy-no-home", TMPDIR=str(blocker), PYTHONPATH=str(REPO))
    code = textwrap.dedent(f"""
        import tempfile
        tempfile.tempdir = {str(blocker)!r}
        import numpy as np
        from ptolemy_rt import _numba
        from ptolemy_rt.lattice import fit_lattice
        assert _numba.CACHE is False
        mask = np.zeros((300, 300), bool)
        pts = np.array([(x, y) for x in range(30, 280, 50) for y in range(30, 280, 50)], float)
        for x, y in pts.astype(int):
            mask[y - 3 : y + 4, x - 3 : x + 4] = True
        print("ok", type(fit_lattice(pts, mask)).__name__)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok")


def test_license_is_bsd3():
    text = (REPO / "LICENSE").read_text()
    assert "BSD 3-Clause" in text


@pytest.mark.parametrize("needle", ["torch", "import onnx\n", "from onnx"])
def test_runtime_never_imports_dev_only_packages(needle):
    for path in (REPO / "ptolemy_rt").rglob("*.py"):
        assert needle not in path.read_text(), f"{path} imports a dev-only package"
