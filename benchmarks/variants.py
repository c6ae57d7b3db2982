"""Network variants (issue 17, item 3): the shipped fp32 graphs against a pre-optimised graph, IO binding and
int8 (static QDQ quantisation), on the very inputs the pipelines feed them (a table; no asserts).

    python -m benchmarks.variants [--models DIR] [--repeat N] [--calibration N] [--held-out N] [--no-int8]

Inputs are recorded from find_holes / find_squares (ModelSet.run, the one funnel to onnxruntime) on: the
reference images where ../shared is present, and held-out synthetic images (export.datasets.test_seeds, never
trained on). int8 graphs are calibrated on synthetic training-seed images only (export.datasets.train_seeds;
no published weights or outputs), per channel, QDQ, uint8 activations and int8 weights; they need the dev
extras (onnx; onnxruntime.quantization). Each variant is timed on one and on two onnxruntime threads with the
shipped session options (models.ModelSet.session), median of --repeat, variants interleaved; beside the time,
how far its logits are from the shipped graph's (max |difference|) and how many decisions flip (U-Net pixels
across the 0.5 probability threshold, CNN crops across 0.5).

Session creation is timed too: a pre-optimised graph (saved by onnxruntime at ORT_ENABLE_ALL, loaded with
optimisation off) only pays off if creating the sessions is a visible share of a process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.harness import machine_line, print_markdown  # noqa: E402

REFERENCE = REPO.parent / "shared" / "ptolemy-reference" / "images"
REFERENCE_IMAGES = {"hole": REFERENCE / "medmag_readme_1024x1440.mrc", "square": REFERENCE / "20may08a_16760340.mrc"}
TASKS = ("hole_unet", "hole_cnn", "square_cnn")


def record(model_dir: Path, images: dict[str, list[np.ndarray]]) -> dict[str, list[np.ndarray]]:
    """Every input ModelSet.run is given while both finders run on `images` ({"hole": [...], "square": [...]})."""
    from ptolemy_rt.holes import find_holes
    from ptolemy_rt.models import ModelSet
    from ptolemy_rt.squares import find_squares

    models = ModelSet(model_dir, provider="cpu")
    seen: dict[str, list[np.ndarray]] = {t: [] for t in TASKS}
    run = models.run

    def recording(task: str, x: np.ndarray) -> np.ndarray:
        seen.setdefault(task, []).append(np.array(x, dtype=np.float32))
        return run(task, x)

    models.run = recording  # type: ignore[method-assign]
    for image in images.get("hole", []):
        find_holes(image, models)
    for image in images.get("square", []):
        find_squares(image, models)
    return seen


def synthetic(seeds: list[int]) -> dict[str, list[np.ndarray]]:
    """Med-mag and atlas images of the project's generator for these seeds."""
    from ptolemy_rt.synthetic import make_atlas, make_medmag

    return {"hole": [np.asarray(make_medmag(int(s))[0], np.float32) for s in seeds],
            "square": [np.asarray(make_atlas(int(s))[0], np.float32) for s in seeds]}


def session_options(threads: int, optimise: bool = True):
    """The shipped session options (models.session_options); optimisation off for a graph saved optimised."""
    import onnxruntime as ort

    from ptolemy_rt.models import session_options as shipped

    options = shipped(threads)
    if not optimise:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


def pre_optimise(src: Path, dst: Path) -> None:
    """Save onnxruntime's ORT_ENABLE_ALL graph of `src` (specific to this machine's instruction set)."""
    import onnxruntime as ort

    options = session_options(1)
    options.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])


def quantise(src: Path, dst: Path, inputs: list[np.ndarray], work: Path) -> None:
    """Static per-channel QDQ int8 graph of `src`, calibrated (min-max) on `inputs`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(inputs)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {"image": x}

    pre = work / (src.stem + ".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def _io_bound(sess, x: np.ndarray):
    """A run through IO binding: the input bound once as an OrtValue, the output left to onnxruntime."""
    import onnxruntime as ort

    binding = sess.io_binding()
    binding.bind_ortvalue_input(sess.get_inputs()[0].name, ort.OrtValue.ortvalue_from_numpy(x))
    binding.bind_output(sess.get_outputs()[0].name)

    def run():
        sess.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    return run


def main() -> int:
    """Print the variants' table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=REPO / "models", help="model set (default: the shipped one)")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per variant and input (median)")
    parser.add_argument("--calibration", type=int, default=8, help="synthetic training-seed images for int8")
    parser.add_argument("--held-out", type=int, default=3, help="synthetic held-out images (test seeds)")
    parser.add_argument("--no-int8", action="store_true", help="leave out the int8 variant")
    args = parser.parse_args()

    import onnxruntime as ort

    from export.datasets import test_seeds, train_seeds
    from ptolemy_rt.io import read_image

    print(f"# Network variants, model set {args.models}; {machine_line()}; onnxruntime {ort.__version__}; "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    sets: dict[str, dict[str, list[np.ndarray]]] = {}
    if all(p.exists() for p in REFERENCE_IMAGES.values()):
        sets["reference"] = {k: [read_image(p).data] for k, p in REFERENCE_IMAGES.items()}
    else:
        print("(reference images absent: ../shared/ptolemy-reference/images; synthetic inputs only)")
    sets["held-out synthetic"] = synthetic(test_seeds(args.held_out, stream=2))
    recorded = {name: record(args.models, images) for name, images in sets.items()}

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        graphs: dict[str, dict[str, Path]] = {"shipped": {}, "pre-optimised": {}}
        for task in TASKS:
            src = args.models / f"{task}.onnx"
            graphs["shipped"][task] = src
            graphs["pre-optimised"][task] = work / f"{task}.opt.onnx"
            pre_optimise(src, graphs["pre-optimised"][task])
        if not args.no_int8:
            try:
                import onnx  # noqa: F401  (quantisation needs it: dev extras)
            except ImportError:
                print("(int8 left out: needs the dev extras, onnx)")
            else:
                seeds = [int(s) for s in train_seeds(0, args.calibration, 2)]
                calibration = record(args.models, synthetic(seeds))
                graphs["int8 QDQ"] = {}
                for task in TASKS:
                    graphs["int8 QDQ"][task] = work / f"{task}.int8.onnx"
                    quantise(args.models / f"{task}.onnx", graphs["int8 QDQ"][task], calibration[task][:16], work)

        rows = [["network", "inputs", "variant", "session ms", "1 thread ms", "2 threads ms",
                 "max |logit diff|", "decisions flipped"]]
        for task in TASKS:
            for set_name, inputs in recorded.items():
                xs = inputs[task]
                if not xs:
                    continue
                # one entry per variant and thread count: session, runner per input
                runners: dict[tuple[str, int], list] = {}
                created: dict[str, float] = {}
                outputs: dict[str, list[np.ndarray]] = {}
                for variant, paths in graphs.items():
                    for threads in (1, 2):
                        t = time.perf_counter()
                        options = session_options(threads, optimise=variant != "pre-optimised")
                        sess = ort.InferenceSession(str(paths[task]), options, providers=["CPUExecutionProvider"])
                        created.setdefault(variant, (time.perf_counter() - t) * 1e3)
                        name = sess.get_inputs()[0].name
                        runners[(variant, threads)] = [
                            (lambda s=sess, x=x, n=name: s.run(None, {n: x})[0]) for x in xs]
                        if variant == "shipped":
                            runners[("io binding", threads)] = [_io_bound(sess, x) for x in xs]
                    outputs[variant] = [r() for r in runners[(variant, 1)]]
                outputs["io binding"] = [r() for r in runners[("io binding", 1)]]
                times: dict[tuple[str, int], list[float]] = {key: [] for key in runners}
                for _ in range(args.repeat):  # interleaved: every variant sees the same load
                    for key, fns in runners.items():
                        t = time.perf_counter()
                        for fn in fns:
                            fn()
                        times[key].append((time.perf_counter() - t) * 1e3)
                base = outputs["shipped"]
                for variant in list(graphs) + ["io binding"]:
                    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(outputs[variant], base))
                    flips = sum(int(np.count_nonzero((a > 0) != (b > 0))) for a, b in zip(outputs[variant], base))
                    total = sum(a.size for a in base)
                    rows.append([task, f"{set_name} ({len(xs)} runs)", variant,
                                 f"{created[variant]:.1f}" if variant in created else "(shipped)",
                                 f"{statistics.median(times[(variant, 1)]):.2f}",
                                 f"{statistics.median(times[(variant, 2)]):.2f}",
                                 f"{diff:.3g}", f"{flips} of {total}"])
        print_markdown(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
