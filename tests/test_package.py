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
    seen = []

    def writable(path):
        seen.append(path)
        return "definitely" not in str(path)

    monkeypatch.setattr(n, "_writable", writable)
    chosen = n._choose_cache_dir()
    assert "definitely" not in chosen and len(seen) == 2


def test_license_is_bsd3():
    text = (REPO / "LICENSE").read_text()
    assert "BSD 3-Clause" in text


@pytest.mark.parametrize("needle", ["torch", "import onnx\n", "from onnx"])
def test_runtime_never_imports_dev_only_packages(needle):
    for path in (REPO / "ptolemy_rt").rglob("*.py"):
        assert needle not in path.read_text(), f"{path} imports a dev-only package"
