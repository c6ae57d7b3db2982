"""Model sets: manifest checks, hash verification, providers, session reuse."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx", reason="onnx is a dev extra (pip install -e '.[dev,cpu]')")

from ptolemy_rt import models as M  # noqa: E402
from ptolemy_rt.errors import ModelError  # noqa: E402

from .tiny_models import make_tiny_set  # noqa: E402


@pytest.fixture()
def tiny(tmp_path):
    return make_tiny_set(tmp_path / "tiny")


def test_load_run_predict(tiny):
    ms = M.ModelSet(tiny, provider="cpu", threads=1)
    assert ms.name == "tiny-test-set" and ms.has("hole_cnn") and ms.threads == 1
    x = np.full((3, 1, 240, 240), 2.0, np.float32)
    np.testing.assert_allclose(ms.run("square_cnn", x), np.full((3, 1), 2.0))
    np.testing.assert_allclose(ms.predict("square_cnn", x), 1 / (1 + np.exp(-2.0)), rtol=1e-6)
    assert ms.session("square_cnn") is ms.session("square_cnn")
    assert ms.provider == "cpu"
    assert set(ms.ids) >= {"name", "version", "square_cnn", "hole_unet", "hole_cnn"}


def test_tampered_graph_is_refused(tiny):
    path = tiny / "hole_cnn.onnx"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ModelError, match="sha256.*does not match"):
        M.ModelSet(tiny)


def test_missing_graph_manifest_and_dir(tiny, tmp_path):
    (tiny / "hole_unet.onnx").unlink()
    with pytest.raises(ModelError, match="missing"):
        M.ModelSet(tiny)
    with pytest.raises(ModelError, match="not found"):
        M.ModelSet(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="no manifest"):
        M.ModelSet(empty)


def test_bad_manifest(tiny):
    manifest = json.loads((tiny / "manifest.json").read_text())
    manifest["models"]["mystery"] = manifest["models"].pop("hole_cnn")
    (tiny / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="unknown task 'mystery'"):
        M.ModelSet(tiny)
    (tiny / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="unreadable manifest"):
        M.ModelSet(tiny)


def test_missing_task_spec(tiny):
    manifest = json.loads((tiny / "manifest.json").read_text())
    del manifest["models"]["hole_cnn"]
    (tiny / "manifest.json").write_text(json.dumps(manifest))
    ms = M.ModelSet(tiny)
    assert not ms.has("hole_cnn")
    with pytest.raises(ModelError, match="no 'hole_cnn' model"):
        ms.spec("hole_cnn")


def test_provider_choice(tiny, monkeypatch):
    with pytest.raises(ModelError, match="unknown provider"):
        M.ModelSet(tiny, provider="tpu")
    monkeypatch.setattr(M, "available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ModelError, match="no CUDA provider"):
        M.ModelSet(tiny, provider="cuda").session("hole_cnn")
    ms = M.ModelSet(tiny, provider="auto")
    ms.session("hole_cnn")
    assert ms.provider == "cpu"


def test_auto_reports_silent_cuda_fallback(tiny, monkeypatch, caplog):
    # onnxruntime falls back to CPU silently when CUDA libraries are missing: we must notice.
    monkeypatch.setattr(M, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    ort = M._ort()
    real = ort.InferenceSession

    def fake(path, options, providers):
        return real(path, options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", fake)
    ms = M.ModelSet(tiny, provider="auto")
    with caplog.at_level("WARNING"):
        ms.session("hole_cnn")
    assert ms.provider == "cpu"
    assert "CUDA provider unavailable" in caplog.text
    with pytest.raises(ModelError, match="could not start"):
        M.ModelSet(tiny, provider="cuda").session("hole_cnn")


def test_load_models_caches_per_process(tiny, tmp_path):
    a = M.load_models(tiny, provider="cpu")
    assert M.load_models(tiny, provider="cpu") is a
    other = shutil.copytree(tiny, tmp_path / "copy")
    assert M.load_models(other, provider="cpu") is not a
    assert M.resolve_models(a) is a


def test_sigmoid_stable():
    x = np.array([-1000, -10, 0, 10, 1000], np.float32)
    y = M.sigmoid(x)
    assert np.all(np.isfinite(y)) and y[2] == 0.5 and y[0] == 0.0 and y[-1] == 1.0


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_physical_cores_honours_the_affinity_mask():
    # Pinned to one CPU, the process may use one core, whatever the machine has.
    code = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
            "from ptolemy_rt.models import physical_cores; print(physical_cores())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.stdout.strip() == "1"
    assert 1 <= M.physical_cores() <= (os.cpu_count() or 1)
