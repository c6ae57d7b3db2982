"""Train the default model set on synthetic data (CPU, 2 threads) and write it as ONNX + manifest.json.

    python -m export.train unet   --out models/ --seed 0    # hole U-Net, ~15 min on 2 cores
    python -m export.train square --out models/ --seed 0    # square CNN, ~6 min
    python -m export.train hole   --out models/ --seed 0    # hole CNN, ~5 min

Each command trains one model from a fixed seed (torch.manual_seed, numpy generators seeded from it,
torch.set_num_threads(2), deterministic algorithms) and replaces that model's entry in OUT/manifest.json,
so rerunning a command rewrites byte-identical files. Training images come from ptolemy_rt.synthetic with seeds
drawn by export.datasets.train_seeds, all below export.datasets.TEST_SEED_BASE (the benchmark's test seeds).
`--real DIR` adds a facility's own labelled images (image + same-stem .csv/.json of selected points) to the
square or hole CNN's training data. The published Ptolemy weights are never read here.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import datasets as data
from .edge_nets import EdgeHoleCNN, EdgeSquareCNN, EdgeUNet, conv_macs, fold_batchnorm
from .to_onnx import INPUT_NAME, MIN_OPSET, OUTPUT_NAME, export_onnx, write_atomic

LICENCE = "BSD-3-Clause"
SET_NAME = "ptolemy-rt-default"
SET_VERSION = "1.0"
OPSET = MIN_OPSET

# Recipes: one place for every number that decides what a training run produces. The U-Net's threshold (0.5,
# written to the manifest, not the graph): trained on the widened mix it marks faint noise blobs at 0.3-0.5 on
# low-contrast carbon film, enough to sink the lattice fit of 2 of the 32 synthetic test images at 0.3.
UNET = {"steps": 1500, "batch": 8, "patch": 160, "pool_images": 400, "lr": 3e-3, "pos_weight": 20.0,
        "target_sigma": data.TARGET_SIGMA, "widths": (4, 8, 16, 32), "enc_convs": 2, "dec_convs": 1,
        "stem_stride": 2, "last_bias": -4.0, "threshold": 0.5, "bad_hole_target": data.BAD_HOLE_TARGET}
# The square CNN: fine_share of its atlases have finer meshes than the generator's own (0.5 of 50 atlases
# ranked the held-out coarse meshes' squares slightly worse than the first set; 0.3 of 70 does not).
SQUARE = {"epochs": 8, "batch": 32, "lr": 3e-3, "atlases": 70, "widths": (8, 16, 24, 32),
          "crop_size": data.SQUARE_CROP_SIZE, "crop_scale": data.SQUARE_CROP_SCALE,
          "crop_min_side": data.SQUARE_CROP_MIN_SIDE, "fine_share": 0.3,
          "fine_pitch": (24.0, 110.0)}
# The runtime enlarges images at most this much for the U-Net (periods below CANONICAL_SPACING / 1.3 run at
# that scale, down to ptolemy_rt.unet.MIN_UNET_PERIOD_FRACTION of it): the U-Net then costs <= 1.3^2 x its
# native 1.7 GFLOP on 1024x1440 (134 ms on two cores); its training images include such periods.
UNET_MAX_UPSCALE = data.UNET_MAX_UPSCALE
HOLE = {"epochs": 12, "batch": 64, "lr": 3e-3, "images": 360, "max_per_image": 200, "widths": (16, 32, 48),
        "side": 32, "min_size": 16}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def setup(seed: int, threads: int) -> None:
    """Make a run reproducible: seeds, thread count, deterministic kernels."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def cosine_lr(step: int, total: int, base: float, warmup: int = 50) -> float:
    """Linear warm-up, then cosine decay to 2 % of `base`."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


# ------------------------------------------------------------------------------------------------ U-Net


def train_unet(seed: int, steps: int | None = None, threads: int = 2) -> tuple[nn.Module, dict[str, Any]]:
    """The hole U-Net at the canonical lattice period (see UNET for the recipe)."""
    r = dict(UNET)
    if steps is not None:
        r["steps"] = steps
    setup(seed, threads)
    t0 = time.perf_counter()
    pool = data.unet_pool(seed, r["pool_images"])
    log(f"unet: {len(pool)} training images in {time.perf_counter() - t0:.0f} s")
    model = EdgeUNet(r["widths"], r["enc_convs"], r["dec_convs"], r["stem_stride"])
    nn.init.constant_(model.last.bias, r["last_bias"])
    opt = torch.optim.Adam(model.parameters(), lr=r["lr"])
    pos_weight = torch.tensor(r["pos_weight"])
    rng = np.random.default_rng([seed, 100])
    model.train()
    running = 0.0
    for step in range(r["steps"]):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, r["steps"], r["lr"])
        x, y = data.sample_unet_batch(rng, pool, r["batch"], r["patch"])
        logits = model(torch.from_numpy(x))
        loss = F.binary_cross_entropy_with_logits(logits, torch.from_numpy(y), pos_weight=pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if step % 100 == 0 or step == r["steps"] - 1:
            log(f"unet step {step}/{r['steps']} loss {running:.4f} ({time.perf_counter() - t0:.0f} s)")
    info = {
        "recipe": {k: list(v) if isinstance(v, tuple) else v for k, v in r.items()} | {"mix": data.UNET_MIX},
        "seconds": time.perf_counter() - t0,
    }
    return model, info


# ------------------------------------------------------------------------------------------------- CNNs


def _fit_classifier(model: nn.Module, forward, x: torch.Tensor, y: torch.Tensor, epochs: int, batch: int, lr: float,
                    seed: int, name: str, augment=None) -> float:
    """Adam + cosine schedule + BCE on a fixed tensor dataset; returns seconds spent."""
    t0 = time.perf_counter()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    n = x.shape[0]
    steps_per_epoch = max(1, n // batch)
    total = epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(seed)
    pos = float(y.sum())
    pos_weight = torch.tensor((n - pos) / max(pos, 1.0))
    step = 0
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        running = 0.0
        for b in range(steps_per_epoch):
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, total, lr, warmup=min(50, total // 10))
            idx = order[b * batch:(b + 1) * batch]
            xb = x[idx]
            if augment is not None:
                xb = augment(xb, gen)
            loss = F.binary_cross_entropy_with_logits(forward(xb).flatten(), y[idx], pos_weight=pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.item()
            step += 1
        log(f"{name} epoch {epoch + 1}/{epochs} loss {running / steps_per_epoch:.4f} "
            f"({time.perf_counter() - t0:.0f} s)")
    return time.perf_counter() - t0


def _dihedral(xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random rotation by a multiple of 90 degrees and flip, one per batch (cheap, label-preserving)."""
    k = int(torch.randint(4, (1,), generator=gen))
    xb = torch.rot90(xb, k, dims=(2, 3))
    if int(torch.randint(2, (1,), generator=gen)):
        xb = torch.flip(xb, dims=(3,))
    return xb


def train_hole(seed: int, epochs: int | None = None, threads: int = 2, real: Path | None = None):
    """The hole CNN on lattice-frame crops (see HOLE)."""
    r = dict(HOLE)
    if epochs is not None:
        r["epochs"] = epochs
    setup(seed, threads)
    t0 = time.perf_counter()
    model = EdgeHoleCNN(r["widths"], r["side"], r["min_size"])
    crops, labels, _ = data.hole_examples(seed, r["images"], r["max_per_image"], min_size=model.min_size)
    # The graph's own resize is applied once here, so training batches have one size.
    with torch.no_grad():
        x = torch.cat([model.resize(torch.from_numpy(c)[None, None]) for c in crops])
    y = torch.from_numpy(labels)
    if real is not None:
        xr, yr = real_hole_examples(real, model)
        x, y = torch.cat([x, xr]), torch.cat([y, yr])
    log(f"hole: {x.shape[0]} crops ({int(y.sum())} good) in {time.perf_counter() - t0:.0f} s")

    secs = _fit_classifier(model, model.classify, x, y, r["epochs"], r["batch"], r["lr"], seed, "hole", _dihedral)
    info = {"recipe": {k: list(v) if isinstance(v, tuple) else v for k, v in r.items()}
            | {"mix": data.HOLE_MIX, "rim": data.HOLE_RIM},
            "examples": int(x.shape[0]), "positives": int(y.sum()), "seconds": time.perf_counter() - t0,
            "fit_seconds": secs}
    return model, info


def train_square(seed: int, epochs: int | None = None, threads: int = 2, real: Path | None = None):
    """The square CNN on crops made by ptolemy_rt.squares from synthetic atlases (see SQUARE)."""
    r = dict(SQUARE)
    if epochs is not None:
        r["epochs"] = epochs
    setup(seed, threads)
    t0 = time.perf_counter()
    xs, ys = data.square_examples(seed, r["atlases"], size=r["crop_size"], scale=r["crop_scale"],
                                  min_side=r["crop_min_side"], fine_share=r["fine_share"],
                                  fine_pitch=tuple(r["fine_pitch"]))
    if real is not None:
        xr, yr = data.real_square_examples(real, r["crop_size"], r["crop_scale"], r["crop_min_side"])
        xs, ys = np.concatenate([xs, xr]), np.concatenate([ys, yr])
    x = torch.from_numpy(xs)
    y = torch.from_numpy(ys)
    log(f"square: {x.shape[0]} crops ({int(y.sum())} collectable) in {time.perf_counter() - t0:.0f} s")
    model = EdgeSquareCNN(r["widths"], crop=r["crop_size"], pool=1)
    secs = _fit_classifier(model, model.classify, x, y, r["epochs"], r["batch"], r["lr"], seed, "square", _dihedral)
    info = {"recipe": {k: list(v) if isinstance(v, tuple) else v for k, v in r.items()}, "examples": int(x.shape[0]),
            "positives": int(y.sum()), "seconds": time.perf_counter() - t0, "fit_seconds": secs}
    return model, info


def architecture(model: nn.Module, recipe: dict[str, Any]) -> str:
    """The manifest's `architecture`: the class and what rebuilds it (the square CNN: widths, crop and pool)."""
    args: dict[str, Any] = {k: recipe[k] for k in ("widths",) if k in recipe}
    if isinstance(model, EdgeSquareCNN):
        args.update(crop=model.crop, pool=model.pool)
    return type(model).__name__ + " " + json.dumps(args)


def real_hole_examples(folder: Path, model: EdgeHoleCNN) -> tuple[torch.Tensor, torch.Tensor]:
    """Hole crops from a facility's labelled med-mag images (see export.datasets.real_hole_examples)."""
    crops, labels = data.real_hole_examples(folder, min_size=model.min_size)
    with torch.no_grad():
        if not crops:
            return torch.zeros(0, 1, model.side, model.side), torch.zeros(0)
        x = torch.cat([model.resize(torch.from_numpy(c)[None, None]) for c in crops])
    return x, torch.from_numpy(np.asarray(labels, np.float32))


# ----------------------------------------------------------------------------------------------- export


NORMALISATION = {
    "hole_unet": (
        "per image: (image - mean) / std over the whole image (population std), then resample so the lattice "
        "period is scale.spacing_px (area averaging when shrinking, bicubic when enlarging, by at most "
        "scale.max_upscale; ptolemy_rt.unet.unet_factor), "
        "pad at the bottom and right with 0 to multiples of `multiple`; run; crop and resample the map back; "
        "sigmoid; regions above `threshold` mark hole centres (Gaussian blobs, sigma 2 px at the canonical "
        "scale; peak ~1 for good holes, lower for bad ones, so the summed probability ranks holes)."
    ),
    "square_cnn": (
        "per image: the image averaged over f x f blocks (cv2 INTER_AREA, a last partial block dropped), f = "
        "crop_scale, or with crop_min_side the largest whole f <= crop_scale that keeps the median square's box "
        "side / f >= crop_min_side (ptolemy_rt.crops.square_crop_scale), rotated by the grid angle; each "
        "square's upright box in it, centred in crop_size x crop_size "
        "(cut, or padded with 0), then (crop - m) / s with m, s the mean and population std of all square-class "
        "pixels of the full image (ptolemy_rt.crops.square_crops, ptolemy_rt.squares); batch-independent (any "
        "batch composition gives the same scores)."
    ),
    "hole_cnn": (
        "per crop: lattice-frame square crop of half-side ptolemy_rt.crops.crop_half_side(spacing) "
        "(floor(spacing / 2) - 10, at least floor(0.45 spacing)), (crop - mean) / std of the crop itself; any size "
        ">= min_size (the graph resizes every crop to 32x32 internally); batch-independent."
    ),
}


def _export(task: str, model: nn.Module, out: Path, info: dict[str, Any], seed: int) -> dict[str, Any]:
    folded = fold_batchnorm(model)
    g = torch.Generator().manual_seed(0)
    if task == "hole_unet":
        example = torch.randn(1, 1, 256, 384, generator=g)
        in_axes, out_axes = {0: "N", 2: "H", 3: "W"}, {0: "N", 2: "H", 3: "W"}
    elif task == "square_cnn":
        side = model.crop if isinstance(model, EdgeSquareCNN) else 240
        example, in_axes, out_axes = torch.randn(2, 1, side, side, generator=g), {0: "N"}, {0: "N"}
    else:
        example, in_axes, out_axes = torch.randn(2, 1, 70, 90, generator=g), {0: "N", 2: "H", 3: "W"}, {0: "N"}
    with torch.no_grad():
        diff = float((folded(example) - model.eval()(example)).abs().max())
    if diff > 1e-3:
        raise RuntimeError(f"{task}: folding BatchNorm changed the output by {diff}")
    file = f"{task}.onnx"
    sha = export_onnx(folded, example, out / file, input_axes=in_axes, output_axes=out_axes, opset=OPSET,
                      metadata={"task": task, "bn": "none", "licence": LICENCE, "seed": str(seed),
                                "generator_version": data.GENERATOR_VERSION})
    recipe = info["recipe"]
    real = recipe.get("real_data")
    provenance = {
        "trainer": "export.train",
        "command": f"python -m export.train {dict(hole_unet='unet', square_cnn='square', hole_cnn='hole')[task]} "
                   f"--out models/ --seed {seed}" + (f" --real {real}" if real else "")
                   # CPU kernels sum in a thread-count-dependent order: another count gives other bytes.
                   + (f" --threads {info['threads']}" if info.get("threads", 2) != 2 else ""),
        "seed": seed,
        "data": ("synthetic only" if not real else f"the facility's labelled images in {real}, and synthetic")
                + ": ptolemy_rt.synthetic (make_medmag / make_atlas), image seeds from "
                "export.datasets.train_seeds(seed), all < 2**40 (test seeds start at 2**40); "
                "no published Ptolemy weights or outputs were used",
        "generator_version": data.GENERATOR_VERSION,
        **({"data_version": data.UNET_DATA_VERSION if task == "hole_unet" else data.DATA_VERSION,
            "lattice_mix": dict(data.LATTICE_MIX)} if task != "square_cnn" else {}),
        "recipe": recipe,
        "architecture": architecture(model, recipe),
        "torch": torch.__version__,
    }
    for key in ("examples", "positives"):
        if key in info:
            provenance[key] = info[key]
    entry: dict[str, Any] = {
        "file": file,
        "sha256": sha,
        "task": task,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "bn": "none",
        "opset": OPSET,
        "normalisation": NORMALISATION[task],
    }
    if task == "hole_unet":
        assert isinstance(model, EdgeUNet)
        entry.update({"multiple": model.multiple, "threshold": recipe["threshold"],
                      "scale": {"spacing_px": data.CANONICAL_SPACING, "max_upscale": UNET_MAX_UPSCALE},
                      "max_pixels": 4096 * 4096,
                      "input_shape": ["N", 1, "H", "W"], "output_shape": ["N", 1, "H", "W"]})
        provenance["gflop_1024x1440"] = round(2 * conv_macs(model, (1, 1, 1024, 1440)) / 1e9, 2)
    elif task == "square_cnn":
        side, scale = int(recipe["crop_size"]), int(recipe["crop_scale"])
        entry.update({"crop_size": side, "crop_scale": scale})
        if recipe.get("crop_min_side") is not None:
            entry["crop_min_side"] = int(recipe["crop_min_side"])
        entry.update({"input_shape": ["N", 1, side, side], "output_shape": ["N", 1]})
        provenance["mmac_per_square"] = round(conv_macs(model, (1, 1, side, side)) / 1e6, 2)
    else:
        assert isinstance(model, EdgeHoleCNN)
        entry.update({"min_size": model.min_size, "input_shape": ["N", 1, "H", "W"], "output_shape": ["N", 1]})
    entry["provenance"] = provenance
    entry["licence"] = LICENCE
    return entry


def write_entry(out: Path, task: str, entry: dict[str, Any]) -> None:
    """Replace `task` in OUT/manifest.json (creating the set if needed), written atomically."""
    path = out / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    models = dict(manifest.get("models", {}))
    models[task] = entry
    manifest = {
        "format": 1,
        "name": SET_NAME,
        "version": SET_VERSION,
        "licence": LICENCE,
        "provenance": {
            "trainer": "export.train",
            "data": "synthetic images from ptolemy_rt.synthetic; no real or published-model labels",
            "generator_version": data.GENERATOR_VERSION,
            "note": "the project's own models; reproduce with the command in each model's provenance",
        },
        # Our hole CNN ranks holes better than our U-Net's summed probability (ptolemy_rt.holes.default_score).
        "hole_score": "cnn",
        "models": {t: models[t] for t in ("square_cnn", "hole_unet", "hole_cnn") if t in models},
    }
    write_atomic(path, (json.dumps(manifest, indent=2) + "\n").encode())


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m export.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=("unet", "square", "hole"))
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="U-Net steps (default: the recipe's)")
    parser.add_argument("--epochs", type=int, default=None, help="CNN epochs (default: the recipe's)")
    parser.add_argument("--real", type=Path, default=None,
                        help="folder of labelled images of this model's kind (atlases for square, med-mag images for "
                             "hole), each with a same-stem .csv/.json of selected points, added to the synthetic data")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.task == "unet":
        model, info = train_unet(args.seed, args.steps, args.threads)
        task = "hole_unet"
    elif args.task == "square":
        model, info = train_square(args.seed, args.epochs, args.threads, args.real)
        task = "square_cnn"
    else:
        model, info = train_hole(args.seed, args.epochs, args.threads, args.real)
        task = "hole_cnn"
    if args.real is not None:
        info["recipe"]["real_data"] = str(args.real)
    info["threads"] = args.threads
    entry = _export(task, model, args.out, info, args.seed)
    write_entry(args.out, task, entry)
    log(f"{task}: wrote {args.out / entry['file']} sha256 {entry['sha256'][:12]} "
        f"in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
