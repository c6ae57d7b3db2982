"""Convert the published Ptolemy checkpoints into an ONNX model set (three graphs + manifest.json).

    python -m export.convert_ptolemy WEIGHTS_DIR OUT_DIR [--bn batch|running] [--opset 17]

The published weights are CC BY-NC 4.0: the converted set is for local, non-commercial use, is not to be
redistributed, and must never be written inside this repository.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from .nets import HoleCNN, SquareCNN, UNet
from .to_onnx import INPUT_NAME, MIN_OPSET, OUTPUT_NAME, export_onnx, sha256_file, write_atomic

CONVERTER_VERSION = "1.0"
LICENCE = "CC BY-NC 4.0"
LICENCE_NOTE = (
    "Converted from the published Ptolemy checkpoints (SMLC-NYSBC/ptolemy, CC BY-NC 4.0): non-commercial use "
    "only, attribution to Kim, Noble, Cheng, Bepler (IUCrJ 10(1), 2023); not for redistribution, not to be "
    "shipped with ptolemy-rt, not to be used to train, label or distil other models."
)
CITATION = (
    "Kim, Noble, Cheng, Bepler. Learning to automate cryo-electron microscopy data collection with Ptolemy. "
    "IUCrJ 10(1), 2023."
)
# The published U-Net's probabilities on real data stay below ~0.02; the original thresholds at 1e-4.
UNET_THRESHOLD = 1e-4
# Above this many pixels the runtime tiles: onnxruntime (arena off) needs ~1.4-1.7 kB per pixel for the 9x64
# U-Net (2.1-2.7 GB at 1024x1536), so 1024x1536 tiles keep the whole pipeline under 4 GB and 1024x1440 in one.
UNET_MAX_PIXELS = 1024 * 1536


@dataclass(frozen=True)
class Published:
    """One published checkpoint: its file, how to build its module, and what the manifest says about it."""

    task: str
    file: str
    build: Callable[[str], nn.Module]
    architecture: dict[str, Any]
    normalisation: str


PUBLISHED: dict[str, Published] = {
    "square_cnn": Published(
        task="square_cnn",
        file="211215_lowmag_64x5_defaultadam_tightw_e2.torchmodel",
        build=lambda bn: SquareCNN(channels=64, kernels=(5, 5, 3, 3, 3), crop=240, bn=bn),  # type: ignore[arg-type]
        architecture={
            "net": "SquareCNN",
            "channels": 64,
            "kernels": [5, 5, 3, 3, 3],
            "crop": 240,
            "block": "conv(valid, no bias) -> ReLU -> BN -> MaxPool(3, 2, pad 1); 6x6 conv -> logit",
        },
        normalisation=(
            "per image: each square's upright crop, centred in 240x240 (cut, or zero-padded), then "
            "(crop - m) / s with m, s the mean and population std (ddof 0) of all square-class pixels of the "
            "image; padding is applied before normalising, as the original does. With bn=batch feed all "
            "crops of one image as one batch."
        ),
    ),
    "hole_unet": Published(
        task="hole_unet",
        file="211026_unet_9x64_ep6.torchmodel",
        build=lambda bn: UNet(depth=9, width=64, blocks_per_level=1),
        architecture={
            "net": "UNet",
            "depth": 9,
            "width": 64,
            "blocks_per_level": 1,
            "block": "conv3x3(pad 1) + ReLU; MaxPool 2 down; nearest resize to skip size, concat [up, skip] up; "
            "last conv3x3 -> logit",
        },
        normalisation=(
            "per image: (image - mean) / std over the whole image (population std, ddof 0), then pad at the "
            "bottom and right with 0 (the normalised mean) to multiples of `multiple`; run; crop the logits "
            "back to the image; sigmoid."
        ),
    ),
    "hole_cnn": Published(
        task="hole_cnn",
        file="211214_medmag_128x4_avgpool_e5.torchmodel",
        build=lambda bn: HoleCNN(channels=128, blocks=4, first_kernel=5, kernel=3, bn=bn),  # type: ignore[arg-type]
        architecture={
            "net": "HoleCNN",
            "channels": 128,
            "blocks": 4,
            "first_kernel": 5,
            "kernel": 3,
            "block": "conv(valid, no bias) -> BN -> ReLU -> MaxPool(3, 2); mean over H, W; linear -> logit",
        },
        normalisation=(
            "per crop: (crop - mean) / std of the crop itself (population std, ddof 0), after resizing crops "
            "smaller than min_size up. With bn=batch feed one crop per run (batch of 1)."
        ),
    ),
}


def load_published(task: str, weights_dir: str | os.PathLike[str], bn: str = "batch") -> nn.Module:
    """Build the module for a published task and load its checkpoint with strict=True (returned in eval mode)."""
    spec = PUBLISHED[task]
    model = spec.build(bn)
    state = torch.load(Path(weights_dir) / spec.file, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _repo_root() -> Path | None:
    root = Path(__file__).resolve().parents[1]
    return root if (root / "ptolemy_rt").is_dir() or (root / ".git").exists() else None


def _refuse_inside_repo(out_dir: Path) -> None:
    # Licence rule: converted published weights never land in the repository, where they could be committed.
    root = _repo_root()
    if root is None:
        return
    target = out_dir.resolve()
    if target == root or root in target.parents:
        raise ValueError(f"{out_dir}: refusing to write converted CC BY-NC weights inside the repository ({root})")


def _export_examples() -> dict[str, tuple[torch.Tensor, dict[int, str], dict[int, str]]]:
    # Small, seeded, deliberately non-square examples: tracing fixes nothing that depends on them, and a
    # non-square U-Net example would expose an H/W mix-up. Batch 2 for the CNNs keeps N symbolic.
    g = torch.Generator().manual_seed(0)
    return {
        "square_cnn": (torch.randn(2, 1, 240, 240, generator=g), {0: "N"}, {0: "N"}),
        "hole_unet": (
            torch.randn(1, 1, 256, 384, generator=g),
            {0: "N", 2: "H", 3: "W"},
            {0: "N", 2: "H", 3: "W"},
        ),
        "hole_cnn": (
            torch.randn(2, 1, 70, 90, generator=g),
            {0: "N", 2: "H", 3: "W"},
            {0: "N"},
        ),
    }


def _task_keys(task: str, model: nn.Module) -> dict[str, Any]:
    if task == "square_cnn":
        assert isinstance(model, SquareCNN)
        return {"crop_size": model.crop, "input_shape": ["N", 1, model.crop, model.crop], "output_shape": ["N", 1]}
    if task == "hole_unet":
        assert isinstance(model, UNet)
        return {
            "multiple": model.multiple,
            "threshold": UNET_THRESHOLD,
            "scale": None,
            "max_pixels": UNET_MAX_PIXELS,
            "input_shape": ["N", 1, "H", "W"],
            "output_shape": ["N", 1, "H", "W"],
        }
    if task == "hole_cnn":
        assert isinstance(model, HoleCNN)
        return {"min_size": model.min_size, "input_shape": ["N", 1, "H", "W"], "output_shape": ["N", 1]}
    raise KeyError(task)


def convert(
    weights_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    bn: str = "batch",
    opset: int = MIN_OPSET,
) -> Path:
    """Convert the three published checkpoints into a model set in out_dir and return out_dir."""
    if bn not in ("batch", "running"):
        raise ValueError(f"bn must be 'batch' or 'running', got {bn!r}")
    weights_dir = Path(weights_dir)
    out_dir = Path(out_dir)
    _refuse_inside_repo(out_dir)
    missing = [s.file for s in PUBLISHED.values() if not (weights_dir / s.file).is_file()]
    if missing:
        raise FileNotFoundError(f"{weights_dir}: missing checkpoint(s) {', '.join(missing)}")
    out_dir.mkdir(parents=True, exist_ok=True)

    versions = {"torch": torch.__version__, "onnx": onnx.__version__}
    examples = _export_examples()
    models: dict[str, dict[str, Any]] = {}
    for task, spec in PUBLISHED.items():
        model = load_published(task, weights_dir, bn)
        task_bn = bn if task != "hole_unet" else "none"  # the U-Net has no normalisation layers
        source_sha = sha256_file(weights_dir / spec.file)
        provenance = {
            "source": f"SMLC-NYSBC/ptolemy weights/{spec.file}",
            "source_file": spec.file,
            "source_sha256": source_sha,
            "citation": CITATION,
            "converter": "export.convert_ptolemy",
            "converter_version": CONVERTER_VERSION,
            **versions,
            "opset": opset,
            "bn": task_bn,
            "architecture": spec.architecture,
            "note": LICENCE_NOTE,
        }
        example, in_axes, out_axes = examples[task]
        file = f"{task}.onnx"
        sha = export_onnx(
            model,
            example,
            out_dir / file,
            input_axes=in_axes,
            output_axes=out_axes,
            opset=opset,
            metadata={
                "task": task,
                "bn": task_bn,
                "licence": LICENCE,
                "source_file": spec.file,
                "source_sha256": source_sha,
                "converter_version": CONVERTER_VERSION,
            },
        )
        models[task] = {
            "file": file,
            "sha256": sha,
            "task": task,
            "input": INPUT_NAME,
            "output": OUTPUT_NAME,
            "bn": task_bn,
            "opset": opset,
            "normalisation": spec.normalisation,
            **_task_keys(task, model),
            "provenance": provenance,
            "licence": LICENCE,
        }

    manifest = {
        "format": 1,
        "name": f"ptolemy-published-bn-{bn}",
        "version": f"{CONVERTER_VERSION}+bn.{bn}",
        "licence": LICENCE,
        "provenance": {
            "source": "SMLC-NYSBC/ptolemy (main at a3b7d22), weights/",
            "citation": CITATION,
            "converter": "export.convert_ptolemy",
            "converter_version": CONVERTER_VERSION,
            **versions,
            "opset": opset,
            "bn": bn,
            "note": LICENCE_NOTE,
        },
        "models": models,
    }
    # The manifest goes last, so a set with a manifest is a complete set.
    write_atomic(out_dir / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m export.convert_ptolemy",
        description="Convert the published Ptolemy checkpoints into an ONNX model set (CC BY-NC 4.0, "
        "not for redistribution; never write it inside the repository).",
    )
    parser.add_argument("weights_dir", type=Path, help="directory holding the three .torchmodel files")
    parser.add_argument("out_dir", type=Path, help="directory to write the model set into")
    parser.add_argument(
        "--bn",
        choices=("batch", "running"),
        default="batch",
        help="batch: batch statistics, as the original tool (default); running: the saved running statistics",
    )
    parser.add_argument("--opset", type=int, default=MIN_OPSET,
                        help=f"ONNX opset (>= {MIN_OPSET}, default %(default)s)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        out = convert(args.weights_dir, args.out_dir, bn=args.bn, opset=args.opset)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out / 'manifest.json'} (bn={args.bn}, {time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
