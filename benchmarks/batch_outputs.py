"""Whether two checkouts' `ptolemy-rt batch` write the same output trees on the same images (speed work must not
change a bit).

    python -m benchmarks.batch_outputs --compare TREE [--images 50] [--image-cache DIR] [--workers 2] [--keep DIR]
                                       [--may-differ images/] [--image-set synthetic|real|physical]

Runs `batch IMAGES -o OUT --kind holes --workers N` with this checkout's package and with TREE's (on the images of
benchmarks.batch's `--image-set`), then compares
every file of the two trees byte for byte: results/*.json, images/*.jpg, index.html, summary.json; summary.csv
and .state/*.json with their timing (the `seconds` column and field) left out, the only thing that may differ.
Prints one line per kind of file and exits 1 when anything differs (the first differences are named) but the
kinds named by --may-differ (the previews, when a change means to redraw them).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.batch import REPO, _block, _compile, _env, make_images, make_physical_images, make_real_images


def _without_seconds(path: Path) -> bytes:
    """The file's bytes with its timing taken out (summary.csv's column, a state file's row field)."""
    if path.name == "summary.csv":
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
        at = rows[0].index("seconds")
        return json.dumps([r[:at] + r[at + 1:] for r in rows]).encode()
    if ".state" in path.parts:  # .state/<id>.json, the id's folders included (a session's Atlas/...)
        state = json.loads(path.read_text(encoding="utf-8"))
        state["row"].pop("seconds", None)
        return json.dumps(state, sort_keys=True).encode()
    return path.read_bytes()


def _kind(rel: Path) -> str:
    return rel.parts[0] + "/" if len(rel.parts) > 1 else rel.name


def compare_trees(a: Path, b: Path) -> tuple[dict[str, list[int]], list[str]]:
    """{kind: [same, differing]} over the union of both trees' files, and the first differences named."""
    files = sorted({p.relative_to(a) for p in a.rglob("*") if p.is_file()}
                   | {p.relative_to(b) for p in b.rglob("*") if p.is_file()})
    counts: dict[str, list[int]] = {}
    differences: list[str] = []
    for rel in files:
        pa, pb = a / rel, b / rel
        same = pa.is_file() and pb.is_file() and _without_seconds(pa) == _without_seconds(pb)
        counts.setdefault(_kind(rel), [0, 0])[0 if same else 1] += 1
        if not same and len(differences) < 10:
            differences.append(str(rel) if pa.is_file() and pb.is_file() else f"{rel} (in one tree only)")
    return counts, differences


def run_batch(tree: Path, block: Path, out: Path, workers: int) -> None:
    """`python -m ptolemy_rt batch` with `tree`'s package (this checkout's bytecode written first; TREE only read)."""
    if tree == REPO:
        _compile(tree)
    cmd = [sys.executable, "-m", "ptolemy_rt", "batch", str(block), "-o", str(out), "--kind", "holes",
           "--no-progress", "--workers", str(workers)]
    r = subprocess.run(cmd, env=_env(tree), cwd=tree, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{tree}: batch exited {r.returncode}: {r.stderr[-800:]}")


def main(argv=None) -> int:
    """Run both trees' batch on the same images and compare what they wrote."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compare", metavar="TREE", required=True, help="the other checkout (main, say)")
    p.add_argument("--images", type=int, default=50)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--image-cache", metavar="DIR", help="keep the generated images here for the next run")
    p.add_argument("--image-set", choices=("synthetic", "real", "physical"), default="synthetic",
                   help="the images (see benchmarks.batch --image-set; default synthetic)")
    p.add_argument("--keep", metavar="DIR", help="write the two output trees here (default: a temporary folder)")
    p.add_argument("--may-differ", action="append", default=[], metavar="KIND",
                   help="a kind of file (images/, index.html, ...) whose differences are reported, not failed")
    a = p.parse_args(argv)
    other = Path(a.compare).resolve()
    if not (other / "ptolemy_rt" / "__init__.py").is_file():
        p.error(f"--compare {a.compare}: no ptolemy_rt package there")
    with tempfile.TemporaryDirectory(prefix="ptolemy-batch-outputs-") as tmp:
        root = Path(a.keep).resolve() if a.keep else Path(tmp)
        source = Path(a.image_cache).resolve() if a.image_cache else Path(tmp) / "images"
        makers = {"real": make_real_images, "physical": make_physical_images, "synthetic": make_images}
        block = _block(Path(tmp) / "in", makers[a.image_set](source, a.images))
        outs = {REPO: root / "this", other: root / "other"}
        for tree, out in outs.items():
            run_batch(tree, block, out, a.workers)
        counts, differences = compare_trees(outs[REPO], outs[other])
    print(f"`batch --kind holes --workers {a.workers}` on {a.images} {a.image_set} images: {REPO} against {other}")
    for kind, (same, differ) in counts.items():
        print(f"  {kind:14s} {same} identical, {differ} differing")
    for name in differences:
        print(f"  differs: {name}")
    failing = [k for k, (_, differ) in counts.items() if differ and k not in a.may_differ]
    return 1 if failing else 0


if __name__ == "__main__":
    raise SystemExit(main())
