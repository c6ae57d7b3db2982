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
from ptolemy_rt.errors import ModelError, one_line  # noqa: E402

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


def _identity_set(tiny: Path, task: str, out_shape: list) -> Path:
    """The tiny set with `task`'s graph replaced by one that answers in `out_shape` (hash updated: a set whose
    manifest is right but whose graph is not what its task needs)."""
    import hashlib

    from onnx import TensorProto, helper

    if out_shape == ["N"]:  # one value per image, without the channel axis the classifiers give
        nodes = [helper.make_node("ReduceMean", ["image", "axes"], ["logit"], keepdims=0)]
        inits = [helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3])]
    else:
        nodes, inits = [helper.make_node("Identity", ["image"], ["logit"])], []
    in_shape = ["N", 1, 240, 240] if task == "square_cnn" else ["N", 1, "H", "W"]
    graph = helper.make_graph(nodes, task, [helper.make_tensor_value_info("image", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("logit", TensorProto.FLOAT, out_shape)],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="tests")
    model.ir_version = 8
    blob = model.SerializeToString()
    (tiny / f"{task}.onnx").write_bytes(blob)
    manifest = json.loads((tiny / "manifest.json").read_text())
    manifest["models"][task]["sha256"] = hashlib.sha256(blob).hexdigest()
    (tiny / "manifest.json").write_text(json.dumps(manifest))
    return tiny


@pytest.mark.parametrize("task, out_shape, ok", [
    ("square_cnn", ["N", 1, 240, 240], False),  # a whole image where one logit per crop is due
    ("hole_cnn", ["N", 1, "H", "W"], False),
    ("hole_cnn", ["N"], True),  # one logit per crop without the channel axis: taken
    ("hole_unet", ["N"], False),  # one value where a map is due
])
def test_a_graph_answering_in_the_wrong_shape_is_a_model_error(tiny, task, out_shape, ok):
    ms = M.ModelSet(_identity_set(tiny, task, out_shape), provider="cpu", threads=1)
    x = np.ones((3, 1, 240, 240) if task == "square_cnn" else (3, 1, 32, 48), np.float32)
    if ok:
        assert ms.run(task, x).shape == (3,)
        return
    with pytest.raises(ModelError, match=f"{task} answered an input of shape .* with shape"):
        ms.run(task, x)


def test_a_wrong_shaped_graph_ends_the_cli_with_exit_3(tiny, tmp_path):
    from ptolemy_rt.cli import main
    from ptolemy_rt.demo import write_mrc

    models = _identity_set(tiny, "hole_unet", ["N"])
    image = tmp_path / "med.mrc"
    write_mrc(image, np.random.default_rng(0).normal(100, 10, (256, 256)).astype(np.float32))
    assert main(["holes", str(image), "--models", str(models), "--score", "unet",
                 "-o", str(tmp_path / "r.json")]) == 3
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("threads", [-1, 100_000, 2.5, 2.0, np.float64(3), "4", M.MAX_THREADS + 1])
def test_threads_out_of_range_are_refused(tiny, threads):
    from ptolemy_rt.errors import OptionError

    with pytest.raises(OptionError, match="threads must be a whole number"):
        M.ModelSet(tiny, threads=threads)


def test_threads_zero_or_none_mean_the_physical_cores(tiny):
    assert M.ModelSet(tiny, threads=0).threads == M.ModelSet(tiny).threads == M.physical_cores()
    assert M.ModelSet(tiny, threads=np.int64(3)).threads == 3


@pytest.mark.parametrize("what", ["long_name", "nul", "file", "through_a_link"])
def test_a_model_set_path_that_is_no_directory_is_a_model_error_naming_it(tmp_path, what):
    """load_models, ModelSet and validate_model_set refuse a path that is no directory in the words of every
    command (manifest.check_model_directory), naming it as given: a name longer than the system takes raised
    OSError (ENAMETOOLONG) from Path.is_dir and a NUL ValueError from os.path.realpath (the API raises only
    PtolemyError); a missing set behind a symlinked folder was named by its resolved path."""
    from ptolemy_rt.manifest import validate_model_set

    if what == "long_name":
        path = tmp_path / ("x" * 300)
    elif what == "nul":
        path = str(tmp_path / "se\0t")
    elif what == "file":
        path = tmp_path / "manifest.json"
        path.write_text("{}")
    else:
        (tmp_path / "real").mkdir()
        (tmp_path / "link").symlink_to(tmp_path / "real")
        path = tmp_path / "link" / "set"
    message = f"{path}: model set directory not found"
    with pytest.raises(ModelError) as exc:
        M.load_models(path)
    assert str(exc.value) == one_line(message)
    with pytest.raises(ModelError) as exc:
        M.ModelSet(path)
    assert str(exc.value) == one_line(message)
    assert validate_model_set(path) == [one_line(message)]


def test_a_loaded_set_is_reused_after_its_folder_is_gone(tiny, tmp_path):
    """load_models checks the folder on a first load only: a batch's later images reuse the loaded set (its
    sessions hold the graphs) when the folder was renamed meanwhile, as before the check moved into it."""
    directory = tmp_path / "set"
    shutil.copytree(tiny, directory)
    first = M.load_models(directory)
    directory.rename(tmp_path / "moved")
    assert M.load_models(directory) is first
    with pytest.raises(ModelError, match="model set directory not found"):
        M.load_models(directory, threads=1)  # not loaded before: checked


def test_an_empty_model_set_path_is_the_current_folder(tmp_path, monkeypatch):
    """"" is the current folder, as Path("") is: "no manifest.json" in it, not a message naming nothing."""
    from ptolemy_rt.manifest import check_model_directory

    monkeypatch.chdir(tmp_path)
    assert check_model_directory("") == Path("")
    with pytest.raises(ModelError, match="no manifest.json"):
        M.load_models("")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_graph_swapped_for_a_fifo_is_refused_not_waited_on(tiny, tmp_path, monkeypatch):
    """read_verified checked the graph with is_file() and then read it by name: a FIFO swapped in between
    blocked the load until a writer came. It reads from the descriptor it checked (smallfiles.open_regular)."""
    import threading

    from ptolemy_rt import manifest

    root = tmp_path / "set"
    shutil.copytree(tiny, root)
    spec = M.read_manifest(root).models["hole_unet"]
    graph = manifest.model_path(root, spec)
    real_is_file = Path.is_file

    def is_file_then_swap(self):
        found = real_is_file(self)
        if found and self == graph:
            graph.unlink()
            os.mkfifo(graph)
        return found

    monkeypatch.setattr(Path, "is_file", is_file_then_swap)
    out: dict = {}

    def load():
        try:
            manifest.read_verified(root, spec)
        except BaseException as exc:  # noqa: BLE001 -- handed back to the test
            out["error"] = exc

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():
        os.close(os.open(graph, os.O_WRONLY | os.O_NONBLOCK))  # let it go
        thread.join(5)
        pytest.fail("read_verified waited on a FIFO")
    assert isinstance(out.get("error"), ModelError) and "not a regular file" in str(out["error"]), out


@pytest.mark.parametrize("size", [3 << 30, 160 << 20])
def test_a_huge_sparse_graph_is_refused_without_holding_it(tiny, tmp_path, size):
    """read_verified read a graph whole before hashing it: a sparse file of gigabytes named in a manifest took
    its size in memory (here a 160 MB one under a 96 MB address-space cap: MemoryError, exit 70). Over 2 GiB it
    is refused from its size; under, a file over 64 MiB is hashed in passes first and refused on the mismatch."""
    root = tmp_path / "set"
    shutil.copytree(tiny, root)
    spec = M.read_manifest(root).models["hole_unet"]
    with open(root / spec.file, "r+b") as fh:
        fh.truncate(size)
    script = ("import resource, sys\n"
              "resource.setrlimit(resource.RLIMIT_AS, (96 << 20, 96 << 20))\n"
              "from ptolemy_rt import manifest\n"
              "from ptolemy_rt.errors import ModelError\n"
              f"spec = manifest.read_manifest(manifest.Path({str(root)!r})).models['hole_unet']\n"
              "try:\n"
              f"    manifest.read_verified(manifest.Path({str(root)!r}), spec)\n"
              "except ModelError as exc:\n"
              "    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stderr[-500:]
    want = "more than a graph holds" if size > (1 << 31) - 1 else "does not match the manifest"
    assert want in done.stdout and str(root / spec.file) in done.stdout, done.stdout


def test_a_graph_hashed_in_passes_is_the_one_loaded(tiny, monkeypatch):
    """A graph over the hash-first size is hashed in passes, then read whole and hashed again: a genuine one
    loads and runs as before."""
    from ptolemy_rt import manifest

    monkeypatch.setattr(manifest, "_HASH_FIRST_BYTES", 0)
    ms = M.ModelSet(tiny, provider="cpu", threads=1)
    x = np.full((2, 1, 240, 240), 2.0, np.float32)
    np.testing.assert_allclose(ms.run("square_cnn", x), np.full((2, 1), 2.0))


def test_a_model_set_path_in_a_symlink_loop_is_a_model_error(tmp_path):
    """Path.resolve raised RuntimeError on a loop (an internal error for a library caller)."""
    loop = tmp_path / "set"
    loop.symlink_to(loop)
    with pytest.raises(ModelError):
        M.load_models(loop)
    with pytest.raises(ModelError):
        M.ModelSet(loop)


def test_a_cached_set_is_returned_while_another_loads(tiny, tmp_path, monkeypatch):
    """A thread whose set is cached does not wait for another thread's load of another set (seconds for a large
    set): the cache's lock is held for lookups only."""
    import threading

    monkeypatch.setattr(M, "_CACHE", {})
    shutil.copytree(tiny, tmp_path / "a")
    shutil.copytree(tiny, tmp_path / "b")
    first = M.load_models(str(tmp_path / "a"))
    entered, release = threading.Event(), threading.Event()
    real = M.ModelSet

    def slow_set(*args, **kwargs):
        entered.set()
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(M, "ModelSet", slow_set)
    loader = threading.Thread(target=M.load_models, args=(str(tmp_path / "b"),))
    loader.start()
    try:
        assert entered.wait(30)
        got = []
        hit = threading.Thread(target=lambda: got.append(M.load_models(str(tmp_path / "a"))))
        hit.start()
        hit.join(5)
        assert got == [first]  # returned while the other set was still loading
    finally:
        release.set()
        loader.join(30)
    assert len(M._CACHE) == 2


def test_the_cache_keeps_a_bounded_number_of_recent_sets(tiny, tmp_path, monkeypatch):
    """Every set ever loaded stayed cached with its sessions (24 MB of address space each): a process going
    through hundreds of sets (an evaluation over checkpoints; fuzz model_graphs seed 60000280, its 280th set)
    ran out of address space under a limit. The few used last are kept, the one in use is never dropped."""
    monkeypatch.setattr(M, "_CACHE", {})
    sets = []
    for k in range(M._CACHE_SETS + 3):
        shutil.copytree(tiny, tmp_path / f"s{k}")
        sets.append(M.load_models(str(tmp_path / f"s{k}")))
        assert M.load_models(str(tmp_path / "s0")) is sets[0]  # used again: kept as the most recent
    assert len(M._CACHE) == M._CACHE_SETS
    assert M.load_models(str(tmp_path / "s1")) is not sets[1]  # the least recently used: loaded again
    assert M.load_models(str(tmp_path / f"s{len(sets) - 1}")) is sets[-1]
