"""Model sets at run time: the graphs a manifest lists, verified by sha256 and run with onnxruntime (CPU or CUDA).

What a manifest may say is defined in manifest.py; this module turns a parsed manifest into sessions.
"""

from __future__ import annotations

import logging
import operator
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from .errors import ModelError, OptionError
from .manifest import TASKS, Manifest, ModelSpec, check_model_directory, read_manifest, read_verified
from .options import MAX_THREADS

if TYPE_CHECKING:
    import numpy as np
# numpy is imported where arrays are handled, not here: `ptolemy-rt batch`'s own process checks the model set
# (load_models) but runs no image, and importing numpy cost it 60-100 ms of CPU beside its workers.

__all__ = [
    "TASKS",
    "ModelSet",
    "ModelSpec",
    "Manifest",
    "load_models",
    "resolve_models",
    "default_models_dir",
    "available_providers",
    "physical_cores",
    "sigmoid",
    "session_options",
]

log = logging.getLogger(__name__)

PROVIDERS = ("auto", "cpu", "cuda")
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


def _ort() -> Any:
    """Import onnxruntime (its telemetry off unless the user turned it on), or explain which extra installs it."""
    # onnxruntime >= 1.29 starts a telemetry client at import on Linux and macOS too: it writes a device id and
    # an SQLite store under ~/.cache/Microsoft/DeveloperTools/.onnxruntime and, where HOME is read-only, warns
    # and falls back to an in-memory store (leaving a ':memory:.ses' file in the working directory on macOS).
    # An acquisition PC has no use for it: off unless ORT_DISABLE_TELEMETRY is set otherwise.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    try:
        import onnxruntime
    except ImportError:
        raise ModelError(
            "onnxruntime is not installed: pip install 'ptolemy-rt[cpu]' (CPU) or 'ptolemy-rt[gpu]' (CUDA)"
        ) from None
    if os.environ.get("ORT_DISABLE_TELEMETRY") == "1" and hasattr(onnxruntime, "disable_telemetry_events"):
        onnxruntime.disable_telemetry_events()  # imported earlier by someone else: at least stop the events
    return onnxruntime


def default_models_dir() -> Path:
    """The model set shipped with the package (installed as ptolemy_rt/model_data, or ./models in a checkout)."""
    here = Path(__file__).resolve().parent
    installed = here / "model_data"
    if (installed / "manifest.json").is_file():
        return installed
    return here.parent / "models"


def physical_cores() -> int:
    """Physical CPU cores this process may use (SMT siblings counted once; affinity/cgroup masks honoured)."""
    logical = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        logical = max(1, min(logical, len(os.sched_getaffinity(0))))
    try:
        cores = set()
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            phys = core = None
            for line in fh:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                elif not line.strip():
                    if core is not None:
                        cores.add((phys, core))
                    phys = core = None
        if cores:
            return max(1, min(len(cores), logical))
    except OSError:
        pass
    return max(1, logical)


def available_providers() -> list[str]:
    """onnxruntime execution providers offered by the installed build."""
    return list(_ort().get_available_providers())


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable float32 logistic function (a new C-contiguous array).

    1 / (1 + exp(-x)) where x >= 0 and exp(x) / (1 + exp(x)) elsewhere are both e = exp(-|x|) over (1 + e):
    one exp over the whole array, without boolean gathers and scatters (3-4x faster on the 2.5 Mpx U-Net map
    of an upscaled 1024x1440 image; the same float32 operations on the same values, so the same bits)."""
    import numpy as np

    x = np.asarray(x, dtype=np.float32)
    e = np.abs(x)
    np.negative(e, out=e)
    np.exp(e, out=e)
    # The numerator, 1 where x >= 0 and e elsewhere, as max(x >= 0, e) (e lies in [+0, 1]; a NaN x gives a NaN
    # quotient whatever the numerator): np.where cost 4 ns a pixel where its mask is mixed on the AMD EPYC (AVX2),
    # these two passes 0.7 (a 1024x1440 image's U-Net maps: 6.4 -> 5.8 ms). tests/test_fastpath_bits.py.
    num = np.greater_equal(x, np.float32(0.0), out=np.empty(x.shape, dtype=np.float32))
    np.maximum(num, e, out=num)
    np.add(e, np.float32(1.0), out=e)
    return np.divide(num, e, out=e)


class ModelSet:
    """A verified model set; onnxruntime sessions are created on first use and reused."""

    def __init__(self, directory: str | os.PathLike[str], provider: str = "auto", threads: int | None = None):
        if provider not in PROVIDERS:
            raise ModelError(f"unknown provider '{provider}' (choose from {', '.join(PROVIDERS)})")
        # realpath, not Path.resolve: a symlink loop raises RuntimeError there (it is a missing set here)
        self.directory = Path(os.path.realpath(check_model_directory(directory)))
        self.manifest: Manifest = read_manifest(self.directory)
        self.requested_provider = provider
        try:  # an int, or a numpy integer (__index__), without loading numpy; a float is no count
            count = None if threads is None else operator.index(threads)
        except TypeError:
            count = -1
        if count is not None and not 0 <= count <= MAX_THREADS:
            # onnxruntime would start every one of them (100,000 took 16 GB) or fail on a negative count.
            raise OptionError(f"threads must be a whole number from 1 to {MAX_THREADS} (0 or None: physical "
                              f"cores), got {threads!r}")
        self.threads = count or physical_cores()
        self._sessions: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._providers_used: dict[str, list[str]] = {}
        self._verify_hashes()

    def _verify_hashes(self) -> None:
        """Refuse, at load, any graph whose bytes differ from the manifest's sha256 (checked again at use)."""
        for spec in self.manifest.models.values():
            read_verified(self.directory, spec)

    @property
    def name(self) -> str:
        """The set's name from its manifest."""
        return self.manifest.name

    @property
    def ids(self) -> dict[str, Any]:
        """What identifies this set in results: name, version and per-task file and sha256."""
        return {
            "name": self.name,
            "version": self.manifest.version,
            **{
                task: {"file": spec.file, "sha256": spec.sha256}
                for task, spec in sorted(self.manifest.models.items())
            },
        }

    def has(self, task: str) -> bool:
        """Whether the set holds a graph for `task`."""
        return task in self.manifest.models

    def spec(self, task: str) -> ModelSpec:
        """The typed manifest entry of `task` (ModelError when the set has none)."""
        try:
            return self.manifest.models[task]
        except KeyError:
            raise ModelError(f"{self.directory}: the model set has no '{task}' model") from None

    def _provider_list(self) -> list[str]:
        available = available_providers()
        if self.requested_provider == "cpu":
            return [_CPU]
        if self.requested_provider == "cuda":
            if _CUDA not in available:
                raise ModelError(
                    "provider 'cuda' requested but this onnxruntime build has no CUDA provider "
                    "(pip uninstall onnxruntime; pip install 'ptolemy-rt[gpu]')"
                )
            return [_CUDA, _CPU]
        return [_CUDA, _CPU] if _CUDA in available else [_CPU]

    def session(self, task: str) -> Any:
        """The onnxruntime InferenceSession of `task` (created once, then reused)."""
        with self._lock:
            sess = self._sessions.get(task)
            if sess is not None:
                return sess
            ort = _ort()
            spec = self.spec(task)
            options = session_options(self.threads)
            wanted = self._provider_list()
            # onnxruntime gets the very bytes that were hashed: a file replaced after load cannot slip in.
            blob = read_verified(self.directory, spec)
            try:
                sess = ort.InferenceSession(blob, options, providers=wanted)
            except Exception as exc:  # onnxruntime raises its own exception types
                raise ModelError(f"{self.directory / spec.file}: cannot create session ({exc})") from None
            got = sess.get_providers()
            # onnxruntime silently falls back to CPU when CUDA libraries are missing: say so.
            if _CUDA in wanted and _CUDA not in got:
                if self.requested_provider == "cuda":
                    raise ModelError(
                        "provider 'cuda' requested but onnxruntime could not start it "
                        "(CUDA/cuDNN libraries missing?); use --provider cpu"
                    )
                log.warning("CUDA provider unavailable at run time; running %s on CPU", task)
            self._providers_used[task] = list(got)
            self._sessions[task] = sess
            return sess

    @property
    def provider(self) -> str:
        """'cuda' if any created session runs on CUDA, else 'cpu' (what we actually run on)."""
        for task in self._sessions:
            if _CUDA in self._providers_used.get(task, []):
                return "cuda"
        return "cpu"

    def run(self, task: str, x: np.ndarray) -> np.ndarray:
        """Run the graph of `task` on an NCHW float32 batch and return its logits."""
        import numpy as np

        sess = self.session(task)
        spec = self.spec(task)
        feed = {spec.input or sess.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)}
        try:
            out = sess.run([spec.output or sess.get_outputs()[0].name], feed)[0]
        except Exception as exc:
            raise ModelError(f"{task}: inference failed on input of shape {tuple(x.shape)} ({exc})") from None
        out = np.asarray(out, dtype=np.float32)
        # A graph whose hash matches the manifest can still answer in another shape than its task's: refused
        # here as a bad model set, not left to fail as an indexing error downstream.
        want = tuple(x.shape) if task == "hole_unet" else (len(x), 1)
        if out.shape != want and not (task != "hole_unet" and out.shape == (len(x),)):
            raise ModelError(f"{self.directory}: {task} answered an input of shape {tuple(x.shape)} with shape "
                             f"{out.shape}, not {want}")
        return out

    def predict(self, task: str, x: np.ndarray) -> np.ndarray:
        """Run the graph of `task` and return sigmoid probabilities."""
        return sigmoid(self.run(task, x))

    def __repr__(self) -> str:
        return f"ModelSet({str(self.directory)!r}, provider={self.requested_provider!r}, threads={self.threads})"


# The sets loaded last, most recent at the end. A bounded few: each holds its onnxruntime sessions (24 MB of
# address space a set, their threads' stacks), and a process that went through hundreds of sets (an evaluation
# over checkpoints, the fuzz worker) ran out of address space under a limit (ulimit -v) at about 250.
_CACHE: dict[tuple[str, str, int | None], ModelSet] = {}
_CACHE_SETS = 8
# Two locks: the cache's (held for a lookup or an update, microseconds) and the loads' (held while a set loads,
# seconds, so that a set is not loaded twice at once): a thread finding its set cached never waits for a load.
_CACHE_LOCK = threading.Lock()
_LOAD_LOCK = threading.Lock()


def _remember(key: tuple[str, str, int | None], models: ModelSet) -> None:
    """Keep `models` as the most recently used set, forgetting the oldest beyond _CACHE_SETS."""
    _CACHE.pop(key, None)
    _CACHE[key] = models
    while len(_CACHE) > _CACHE_SETS:
        del _CACHE[next(iter(_CACHE))]


def session_options(threads: int) -> Any:
    """The onnxruntime SessionOptions every model set's sessions are created with (ModelSet.session)."""
    ort = _ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # The arena keeps every activation's peak allocation for the session's lifetime: the published U-Net at
    # 1024x1536 then holds 4.8 GB instead of 2.1 GB, at the same speed.
    options.enable_cpu_mem_arena = False
    # onnxruntime's pool threads spin after each run by default: on 2 cores they then compete with the numpy/cv2
    # stages between the runs (crops right after the U-Net took 3x as long), and with other processes. Identical
    # outputs either way.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def load_models(
    path: str | os.PathLike[str] | None = None, provider: str = "auto", threads: int | None = None
) -> ModelSet:
    """Load (once per process) and verify a model set; None means the set shipped with the package."""
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"models: expected a ModelSet, a model-set folder or None, got {type(path).__name__}")
    if path is not None:
        # A set loaded before is reused even if its folder has gone since (a batch's later images: the sessions
        # hold the graphs); only a first load checks the folder.
        try:
            cached = _cached((os.path.realpath(path), provider, threads))
        except (OSError, ValueError):  # a NUL in the name: check_model_directory names it
            cached = None
        if cached is not None:
            return cached
    directory = check_model_directory(path) if path is not None else default_models_dir()
    if path is None and not (directory / "manifest.json").is_file():
        raise ModelError(f"the default model set is missing ({directory}); reinstall ptolemy-rt or pass --models DIR")
    key = (os.path.realpath(directory), provider, threads)
    cached = _cached(key)
    if cached is not None:
        return cached
    with _LOAD_LOCK:
        cached = _cached(key)  # another thread may have loaded it while this one waited
        if cached is None:
            cached = ModelSet(directory, provider=provider, threads=threads)
            with _CACHE_LOCK:
                _remember(key, cached)
        return cached


def _cached(key: tuple[str, str, int | None]) -> ModelSet | None:
    """The cached set of `key`, made the most recently used; None if not cached."""
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            _remember(key, cached)
        return cached


ModelsLike = Union[ModelSet, str, os.PathLike[str], None]


def resolve_models(models: ModelsLike, provider: str = "auto", threads: int | None = None) -> ModelSet:
    """Accept a ModelSet, a directory or None (the default set) and return a ModelSet."""
    if isinstance(models, ModelSet):
        return models
    return load_models(models, provider=provider, threads=threads)
