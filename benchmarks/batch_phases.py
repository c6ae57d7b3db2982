"""Where a batch's CPU goes per 1024x1440 med-mag image: each step of `batch.process_one`, a worker's start, the
batch process's own share.

    python -m benchmarks.batch_phases [--images 50] [--workers 2] [--rounds 2] [--image-cache DIR] [--compare TREE]

Per image (one worker process, one thread, as `batch --workers 2` runs on 2 cores): the steps of process_one
timed one by one with getrusage (user + system CPU), after the worker's start; the steps' files are checked
against process_one's own bytes on the first images, so the figures are of the work a batch does. Per block
(`batch BLOCK --workers N` run as a whole): the batch process's own CPU (start, discovery, writing, summaries,
report) and its workers' (their start included), each over the block's images. `--compare TREE` measures
another checkout the same way, the trees alternating `--rounds` times (same load for both).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.batch import REPO, _block, _compile, _env, make_images
from benchmarks.harness import print_markdown

# Runs in a fresh interpreter with the tree under test first on sys.path; prints one JSON line.
_WORKER = r"""
import json, resource, sys, time

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

started = cpu()  # the interpreter's own start
from ptolemy_rt.batch import BatchConfig, _preview_jpeg, _sha256, init_worker, process_one
from ptolemy_rt.sessions import discover

import ptolemy_rt
from ptolemy_rt.holesize import with_hole_diameter
from ptolemy_rt.io import read_image
from ptolemy_rt.metadata import pixel_size_for
from ptolemy_rt.models import load_models
from ptolemy_rt.results import format_result, with_pixel_size

items, _ = discover([sys.argv[1]], kind="holes")
try:  # a batch of holes images: its workers start the holes pipeline's sessions only
    config = BatchConfig(None, "auto", 1, None, kinds=["holes"])
except TypeError:  # a tree from before BatchConfig(kinds=...): every session
    config = BatchConfig(None, "auto", 1, None)
init_worker(config, ignore_sigint=False, own_process=True)
start = cpu()
phases = {}
checked = 0

def step(name, f, *args):
    c = cpu()
    out = f(*args)
    phases[name] = phases.get(name, 0.0) + cpu() - c
    return out

for item in items:
    step("input sha256 (--resume)", _sha256, item.path)
    image = step("read the MRC (mrcfile, validated)", read_image, item.path)
    models = load_models(None, provider="auto", threads=1)
    result = step("find_holes", ptolemy_rt.find_holes, image, models)
    result = step("hole diameters (holesize)", with_hole_diameter, result, image.data)

    def pixel_size(result=result, image=image, path=item.path):
        pixel = pixel_size_for(path, image)
        return with_pixel_size(result, pixel.angstrom, pixel.source)

    result = step("pixel size (metadata)", pixel_size)
    text = step("result JSON", format_result, result, "json")
    jpeg = step("preview JPEG (report)", _preview_jpeg, image.data)
    if checked < 3:  # the same bytes as the batch's own step: the figures are of the batch's work
        _, files = process_one(item, config)
        ok = files.get(f"results/{item.id}.json") == text.encode() and files.get(f"images/{item.id}.jpg") == jpeg
        if not ok:
            sys.exit(f"{item.id}: these steps no longer write what process_one does: update batch_phases.py")
        checked += 1
print(json.dumps({"n": len(items), "start": start, "phases": phases}))
"""

# Runs `ptolemy-rt batch` in this interpreter (the pool's spawned workers are its children); prints one JSON line.
_BATCH = r"""
import json, resource, sys
if __name__ == "__main__":
    from ptolemy_rt.cli import main
    code = main(sys.argv[1:])
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"code": code, "main": own.ru_utime + own.ru_stime, "workers": kids.ru_utime + kids.ru_stime}))
"""


def _json_run(cmd: list[str], tree: Path) -> dict:
    r = subprocess.run(cmd, env=_env(tree), cwd=tree, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {r.returncode}: {r.stderr[-800:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def measure(tree: Path, block: Path, out: Path, workers: int) -> dict[str, float]:
    """CPU ms per image of each phase for `tree` over the images of `block`."""
    py = sys.executable
    w = _json_run([py, "-c", _WORKER, str(block)], tree)
    n = w["n"]
    rows = {name: 1000 * s / n for name, s in w["phases"].items()}
    rows["worker start (Python, imports, model set), per image of the block"] = 1000 * w["start"] / n
    b = _json_run([py, "-c", _BATCH, "batch", str(block), "-o", str(out), "--kind", "holes", "--no-progress",
                   "--workers", str(workers)], tree)
    if b["code"] != 0:
        raise RuntimeError(f"batch exited {b['code']}")
    rows[f"`batch --workers {workers}`: the batch process (start, writing, summaries, report)"] = 1000 * b["main"] / n
    rows[f"`batch --workers {workers}`: all its workers (start included)"] = 1000 * b["workers"] / n
    rows[f"`batch --workers {workers}`: in all"] = 1000 * (b["main"] + b["workers"]) / n
    return rows


def main(argv=None) -> int:
    """Print the table of CPU ms per image by phase."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=50, help="images (one batch block; default 50, as benchmarks.batch "
                   "--images 200 --rounds 4)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="measurements of each tree, alternating (default 2)")
    p.add_argument("--image-cache", metavar="DIR", help="keep the generated images here for the next run")
    p.add_argument("--compare", metavar="TREE", help="also measure this checkout's package")
    a = p.parse_args(argv)
    trees = {REPO.name: REPO}
    if a.compare:
        other = Path(a.compare).resolve()
        if not (other / "ptolemy_rt" / "__init__.py").is_file():
            p.error(f"--compare {a.compare}: no ptolemy_rt package there")
        trees[other.name if other.name != REPO.name else str(other)] = other
    _compile(REPO)  # as an installed package starts (see benchmarks.batch)
    sums: dict[str, dict[str, float]] = {name: {} for name in trees}
    with tempfile.TemporaryDirectory(prefix="ptolemy-batch-phases-") as tmp:
        tmp_path = Path(tmp)
        source = Path(a.image_cache).resolve() if a.image_cache else tmp_path / "images"
        block = _block(tmp_path / "in", make_images(source, a.images))
        for k in range(a.rounds):
            names = list(trees) if k % 2 == 0 else list(trees)[::-1]
            for name in names:
                rows = measure(trees[name], block, tmp_path / f"out_{k}_{len(sums[name])}", a.workers)
                for key, v in rows.items():
                    sums[name][key] = sums[name].get(key, 0.0) + v / a.rounds
                print(f"round {k + 1}/{a.rounds} {name}: {rows[next(reversed(rows))]:.1f} CPU ms/image in all, "
                      f"load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    first = next(iter(sums.values()))
    table = [["phase (CPU ms per image)", *trees]]
    for key in first:
        table.append([key, *(f"{sums[name].get(key, float('nan')):.1f}" for name in trees)])
    print(f"CPU per 1024x1440 synthetic med-mag image by phase, {a.images} images (seeds 0..{a.images - 1}), "
          f"mean of {a.rounds} round(s); 1-min load average {os.getloadavg()[0]:.1f}")
    print_markdown(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
