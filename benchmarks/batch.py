"""Throughput of `ptolemy-rt batch` against one `ptolemy-rt holes` process per image, in images per second.

    python -m benchmarks.batch [--images 200] [--rounds 4] [--separate N] [--workers 1 2] [--no-dask]
                               [--quick] [--image-cache DIR] [--image-set synthetic|real|physical]
                               [--compare TREE]

Makes `--images` med-mag images (1024x1440 MRC, seeds 0..N-1; kept in `--image-cache` for the next run):
`--image-set synthetic` (default) the generator's dense lattices, 80-880 holes each, most of them enlarged 1.3x
for the U-Net (the costly case); `--image-set real` variants of the real reference image (make_real_images:
windows, flips, gain, offset, noise; 9-17 holes, as on the reference); `--image-set physical` square, skewed and
hexagonal views of benchmarks.holes_sets, whose image formation is modelled independently of the generator
(make_physical_images; 40-160 px periods, 50-900 holes). It splits them in `--rounds` equal blocks,
then, block by block, runs every mode over that block, the order of the modes turning each round, so that
every mode sees the same load on a shared machine (each mode's time is spread over the whole run, not bunched
at one end). Each run is a whole process started from here (wall clock: imports,
model loading and writing are in):
- the baseline: `ptolemy-rt holes IMAGE -o OUT.json`, one process per image (`--separate` of them in all,
  spread over the blocks);
- `ptolemy-rt batch BLOCK -o OUT --kind holes --workers N` (report and previews included);
- the same with `--dask` on a LocalCluster of 2 single-thread worker processes, when the dask extra is
  installed. The cluster is started before and closed after each of its runs, neither counted (it stands for
  an existing cluster): left up, its idle scheduler and workers took CPU from every other mode. It runs from a
  helper process, so that its workers import the tree under test (see --compare).
`--compare TREE` runs every batch mode a second time with another checkout's package (PYTHONPATH=TREE), in
the same rounds: before/after figures under the same load (TREE is only read: a warning says when its bytecode
is stale). `--quick`: 40 images in 2 rounds, 20 separate. The tree under test gets its stale bytecode written
first, as an installed package has it: with PYTHONDONTWRITEBYTECODE set, an edited checkout's processes
otherwise compile its modules at every start (0.07 s CPU each: a separate process per image, a batch per worker).

A batch is started once per block, so its start (interpreter, workers, model load) is counted `--rounds` times:
the batch figures are what `--images / --rounds` images in one batch reach, a lower bound for one batch of all.
CPU s/image (user + system of the process and its workers; for Dask, of the batch process, the cluster's
workers and its scheduler) depends less on the machine's load than wall clock does; "CPU ratio" is separate
CPU per image over the mode's: what the wall-clock ratio falls to when this benchmark gets one core's share.
Each round's figures go to stderr as they are measured; the table, the load average and whether the kernel's
autogroup scheduling is on go to stdout at the end. With autogroup (Linux desktops, many shared hosts), each
session gets an equal share of the CPUs: on a busy machine this benchmark's processes share one slice however
many there are, so `--workers 2` runs no faster than `--workers 1` there and the wall-clock ratio falls to the
CPU ratio. Measure on a quiet machine for the wall-clock figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import print_markdown

REPO = Path(__file__).resolve().parents[1]

# Run with the tree under test on PYTHONPATH: starts a LocalCluster, runs the batch command against it and
# prints {"wall", "cpu"}: the batch process's CPU, the workers' (asked of them before and after: their start
# and model load are in, as for a pool) and the scheduler's (this helper's own, less the cluster's start).
_DASK_HELPER = r"""
import json, resource, subprocess, sys, time
from distributed import Client, LocalCluster

def usage():
    import resource
    return sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))

def own():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

def children():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime

if __name__ == "__main__":
    cmd = json.loads(sys.argv[1])
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=40) as cluster, Client(cluster.scheduler_address) as client:
        workers0, own0, kids0 = sum(client.run(usage).values()), own(), children()
        start = time.perf_counter()
        r = subprocess.run([*cmd, "--dask", cluster.scheduler_address], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, check=False)
        wall = time.perf_counter() - start
        workers1, own1, kids1 = sum(client.run(usage).values()), own(), children()
    if r.returncode != 0:
        sys.exit(f"exited {r.returncode}: {r.stderr[-500:]}")
    print(json.dumps({"wall": wall, "cpu": (workers1 - workers0) + (own1 - own0) + (kids1 - kids0)}))
"""


def _env(tree: Path = REPO) -> dict:
    env = dict(os.environ)
    deps = REPO / ".deps"  # a developer's private install of the optional extras (see tests/test_batch.py)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), *([str(deps)] if deps.is_dir() else []),
                                         env.get("PYTHONPATH", "")])
    return env


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _run(cmd: list[str], tree: Path = REPO) -> tuple[float, float]:
    """(wall s, CPU s of the process and its children) of one command, which must succeed."""
    cpu = _children_cpu()
    start = time.perf_counter()
    # cwd: `python -m` puts the working directory first on sys.path; run in the tree under test, or a checkout
    # there would shadow it (--compare measured one tree twice before this).
    r = subprocess.run(cmd, env=_env(tree), cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True, check=False)
    wall = time.perf_counter() - start
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... exited {r.returncode}: {r.stderr[-500:]}")
    return wall, _children_cpu() - cpu


def _run_dask(cmd: list[str], tree: Path) -> tuple[float, float]:
    """(wall s, CPU s) of a batch on a fresh LocalCluster whose workers import `tree`."""
    r = subprocess.run([sys.executable, "-c", _DASK_HELPER, json.dumps(cmd)], env=_env(tree), cwd=tree,
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"dask run exited {r.returncode}: {r.stderr[-800:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return float(out["wall"]), float(out["cpu"])


def make_images(folder: Path, n: int, first: int = 0) -> list[Path]:
    """n synthetic 1024x1440 med-mag images as MRC files (seeds first..first+n-1); existing files are kept."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(first, first + n):
        path = folder / f"medmag_{seed:04d}.mrc"
        if not path.is_file():  # the generator is seeded: a file of that name holds those bytes
            from ptolemy_rt.demo import write_mrc
            from ptolemy_rt.synthetic_session import make_medmag

            data, _ = make_medmag(seed)
            write_mrc(path, data)
        paths.append(path)
    return paths


# The real 1024x1440 med-mag image the "real" set is made from (the published Ptolemy example, CC BY-NC: the
# variants stay in a temporary or cache folder, never in the repository).
REFERENCE_MEDMAG = Path(os.environ.get("PTOLEMY_REFERENCE") or REPO.parent / "shared" / "ptolemy-reference") / (
    "images/medmag_readme_1024x1440.mrc")


def make_real_images(folder: Path, n: int, source: Path = REFERENCE_MEDMAG) -> list[Path]:
    """n 1024x1440 variants of a real med-mag image (seeds 0..n-1; existing files are kept): each a random window
    of 1/1.0 to 1/1.4 of the image enlarged back to full size (bicubic; fewer, larger holes: 9-17 on the
    reference), flipped at random along either axis, with a random gain (0.7-1.4), offset (-20..20 % of the
    mean) and Gaussian noise of 0-100 % of the image's own pixel-to-pixel noise. Real content, varied.
    The variants derive from a CC BY-NC image: a folder inside the repository is refused (exit 2)."""
    import cv2
    import mrcfile
    import numpy as np

    from ptolemy_rt.demo import write_mrc

    folder = folder.resolve()
    if folder == REPO or REPO in folder.parents:
        print(f"error: {folder} is inside the repository; keep the real set's variants elsewhere", file=sys.stderr)
        raise SystemExit(2)
    paths = [folder / f"real_{seed:04d}.mrc" for seed in range(n)]
    missing = [seed for seed, path in enumerate(paths) if not path.is_file()]  # seeded: a name holds its bytes
    if not missing:
        return paths
    if not source.is_file():
        print(f"error: --image-set real needs {source} (PTOLEMY_REFERENCE: the ptolemy-reference folder)",
              file=sys.stderr)
        raise SystemExit(2)
    with mrcfile.open(source, permissive=True) as mrc:
        base = np.asarray(mrc.data, dtype=np.float32)
    rows, cols = base.shape
    # The pixel-to-pixel noise: the std of neighbour differences over sqrt(2).
    noise = float(np.std(np.diff(base, axis=1))) / np.sqrt(2.0)
    folder.mkdir(parents=True, exist_ok=True)
    for seed in missing:
        rng = np.random.default_rng([seed, 1440])
        zoom = float(rng.uniform(1.0, 1.4))
        h, w = rows / zoom, cols / zoom
        y0, x0 = float(rng.uniform(0, rows - h)), float(rng.uniform(0, cols - w))
        m = np.array([[1 / zoom, 0, x0], [0, 1 / zoom, y0]], dtype=np.float64)
        img = cv2.warpAffine(base, m, (cols, rows), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REFLECT_101)
        if rng.random() < 0.5:
            img = img[:, ::-1]
        if rng.random() < 0.5:
            img = img[::-1, :]
        mean = float(img.mean())
        img = img * rng.uniform(0.7, 1.4) + mean * rng.uniform(-0.2, 0.2)
        img = img + rng.normal(0.0, noise * rng.uniform(0.0, 1.0), img.shape)
        write_mrc(paths[seed], np.ascontiguousarray(img, dtype=np.float32))
    return paths


# The physical set's seeds: a base of benchmarks.holes_sets disjoint from the accuracy sets' (9_100_000, 9_200_000).
PHYSICAL_SEED0 = 9_500_000
PHYSICAL_CATEGORIES = ("square", "skewed", "hexagonal")


def make_physical_images(folder: Path, n: int) -> list[Path]:
    """n 1024x1440 med-mag views of benchmarks.holes_sets (image formation modelled independently of
    ptolemy_rt.synthetic: ice, film, defocus fringes, Poisson counts, detector blur, 8-bit JPEG), the
    categories square, skewed and hexagonal in turn. The set draws a quarter of its views at 512x720; those are
    skipped, so image k is the next 1024x1440 view of its category (seeds PHYSICAL_SEED0 + 1000 x category
    index + i). Existing files are kept: each has its seed in a `.seed` file beside it."""
    import numpy as np

    from benchmarks.holes_sets import CATEGORIES, make_sample
    from ptolemy_rt.demo import write_mrc

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    next_index = {c: 0 for c in PHYSICAL_CATEGORIES}
    for k in range(n):
        category = PHYSICAL_CATEGORIES[k % len(PHYSICAL_CATEGORIES)]
        base = PHYSICAL_SEED0 + 1000 * CATEGORIES.index(category)
        path, marker = (folder / f"physical_{k:04d}_{category}{suffix}" for suffix in (".mrc", ".seed"))
        if path.is_file() and marker.is_file():
            next_index[category] = int(marker.read_text()) - base + 1
        else:
            while True:
                i = next_index[category]
                next_index[category] += 1
                sample = make_sample(category, i, PHYSICAL_SEED0)
                if sample.image.shape == (1024, 1440):
                    break
            write_mrc(path, np.ascontiguousarray(sample.image, dtype=np.float32))
            marker.write_text(f"{base + i}\n")
        paths.append(path)
    return paths


def _block(folder: Path, images: list[Path]) -> Path:
    """A folder holding exactly `images` (hard links where it can: plain files to the batch), for one batch."""
    folder.mkdir(parents=True, exist_ok=True)
    for img in images:
        link = folder / img.name
        if not link.exists():
            try:
                os.link(img, link)
            except OSError:  # another file system
                link.write_bytes(img.read_bytes())
    return folder


def _stale_bytecode(tree: Path) -> list[Path]:
    """The package's modules whose cached bytecode is missing or older than the source (compiled at each start)."""
    import importlib.util

    stale = []
    for source in sorted((tree / "ptolemy_rt").rglob("*.py")):
        cached = Path(importlib.util.cache_from_source(str(source)))
        try:
            head = cached.read_bytes()[:16]
        except OSError:
            stale.append(source)
            continue
        st = source.stat()
        # A timestamp pyc's header: magic, flags, the source's mtime and size (PEP 552).
        if (head[:4] != importlib.util.MAGIC_NUMBER or int.from_bytes(head[4:8], "little") != 0
                or int.from_bytes(head[8:12], "little") != int(st.st_mtime) & 0xFFFFFFFF
                or int.from_bytes(head[12:16], "little") != st.st_size & 0xFFFFFFFF):
            stale.append(source)
    return stale


def _compile(tree: Path) -> int:
    """Write the bytecode of the package's stale modules, as pip does at install; return how many.

    Where PYTHONDONTWRITEBYTECODE is set (or the tree is read-only), a checkout's edited modules are otherwise
    compiled again by every process: 0.07 s CPU per process for this package, which a separate process pays
    per image and a batch per worker.
    """
    import py_compile

    stale = _stale_bytecode(tree)
    for source in stale:
        try:
            py_compile.compile(str(source), doraise=True)
        except (OSError, py_compile.PyCompileError):
            pass
    return len(stale)


def _autogroup() -> bool:
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return False


def main(argv=None) -> int:
    """Print the throughput table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=None, help="images in all (the issue asks for 200; default 20)")
    p.add_argument("--rounds", type=int, default=None, help="blocks the images are split into (modes "
                   "interleaved; default 2)")
    p.add_argument("--separate", type=int, default=None, help="images run one process each (default: --images)")
    p.add_argument("--quick", action="store_true", help="40 images in 2 rounds, 20 of them separately")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--no-dask", action="store_true")
    p.add_argument("--models", metavar="DIR")
    p.add_argument("--image-cache", metavar="DIR", help="keep the generated images here for the next run")
    p.add_argument("--image-set", choices=("synthetic", "real", "physical"), default="synthetic",
                   help="synthetic: the generator's dense lattices (80-880 holes); real: variants of the real "
                   "1024x1440 reference image (10-20 holes; needs ../shared/ptolemy-reference); physical: "
                   "benchmarks.holes_sets' independently modelled square, skewed and hexagonal views")
    p.add_argument("--compare", metavar="TREE", help="also run every batch mode with this checkout's package")
    a = p.parse_args(argv)
    images = a.images or (40 if a.quick else 20)
    rounds = max(1, min(a.rounds or 2, images))
    separate = min(a.separate or (images // 2 if a.quick else images), images)
    py = sys.executable
    models = ["--models", str(Path(a.models).resolve())] if a.models else []  # the runs' cwd is their tree
    trees = {"": REPO}
    if a.compare:
        other = Path(a.compare).resolve()
        if not (other / "ptolemy_rt" / "__init__.py").is_file():
            p.error(f"--compare {a.compare}: no ptolemy_rt package there")
        trees[f" [{other.name}]"] = other
    # The tree under test starts as an installed package would (bytecode written); another tree is only read.
    compiled = _compile(REPO)
    if compiled:
        print(f"(compiled {compiled} stale module(s) of {REPO})", file=sys.stderr)
    for tree in trees.values():
        stale = _stale_bytecode(tree) if tree != REPO else []
        if stale:
            print(f"warning: --compare {tree}: {len(stale)} module(s) without up-to-date "
                  "bytecode: its processes compile them at every start", file=sys.stderr)
    batch_modes = [f"workers {n}" for n in a.workers]
    if not a.no_dask:
        deps = REPO / ".deps"  # where the runs find the dask extra (_env): this check looks there too
        if deps.is_dir() and str(deps) not in sys.path:
            sys.path.append(str(deps))
        try:
            import distributed  # noqa: F401
        except ImportError:
            print("(no Dask row: pip install 'ptolemy-rt[dask]')", file=sys.stderr)
        else:
            batch_modes.append("dask")
    modes: list[tuple[str, str, Path]] = [("separate", "separate", REPO)]
    modes += [(m + suffix, m, tree) for m in batch_modes for suffix, tree in trees.items()]
    totals = {label: [0, 0.0, 0.0] for label, _, _ in modes}  # images, wall s, CPU s
    per_round: dict[str, list[float]] = {label: [] for label, _, _ in modes}  # images/s of each round
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="ptolemy-batch-bench-") as tmp:
        tmp_path = Path(tmp)
        source = Path(a.image_cache).resolve() if a.image_cache else tmp_path / "images"
        makers = {"real": make_real_images, "physical": make_physical_images, "synthetic": make_images}
        all_images = makers[a.image_set](source, images)
        bounds = [round(k * images / rounds) for k in range(rounds + 1)]
        blocks = [_block(tmp_path / f"in{k}", all_images[bounds[k]:bounds[k + 1]]) for k in range(rounds)]
        block_images = [all_images[bounds[k]:bounds[k + 1]] for k in range(rounds)]
        sep_bounds = [round(k * separate / rounds) for k in range(rounds + 1)]
        # One warm-up process: the model files and the package in the page cache for every mode alike.
        _run([py, "-m", "ptolemy_rt", "holes", str(all_images[0]), "-o", str(tmp_path / "warm.json"), *models])
        for k, block in enumerate(blocks):
            order = modes[k % len(modes):] + modes[:k % len(modes)]
            for label, mode, tree in order:
                if mode == "separate":
                    chosen = block_images[k][:sep_bounds[k + 1] - sep_bounds[k]]
                    runs = [_run([py, "-m", "ptolemy_rt", "holes", str(img), "-o",
                                  str(tmp_path / "sep" / f"{img.stem}.json"), *models]) for img in chosen]
                    wall, cpu = sum(r[0] for r in runs), sum(r[1] for r in runs)
                    n = len(chosen)
                else:
                    out = tmp_path / f"{label.replace(' ', '_')}_{k}"
                    cmd = [py, "-m", "ptolemy_rt", "batch", str(block), "-o", str(out), "--kind", "holes",
                           "--no-progress", *models]
                    if mode == "dask":
                        wall, cpu = _run_dask(cmd, tree)
                    else:
                        wall, cpu = _run([*cmd, "--workers", mode.split()[1]], tree)
                    n = len(block_images[k])
                if n:
                    totals[label][0] += n
                    totals[label][1] += wall
                    totals[label][2] += cpu
                    per_round[label].append(n / wall)
                loads.append(os.getloadavg()[0])
                if n:
                    print(f"round {k + 1}/{rounds} {label}: {n} images, {n / wall:.2f} images/s, "
                          f"{cpu / n:.3f} CPU s/image, load {loads[-1]:.1f}", file=sys.stderr, flush=True)
    base_n, base_wall, base_cpu = totals["separate"]
    base = base_n / base_wall
    names = {"separate": "separate `ptolemy-rt holes` processes"}
    table = [["mode", "images", "wall s", "images/s", "vs separate processes", "per round (images/s)",
              "CPU s/image", "CPU ratio"]]
    for label, mode, _ in modes:
        n, wall, cpu = totals[label]
        rate = n / wall
        name = names.get(label) or ("`batch --dask` (LocalCluster, 2 workers x 1 thread)" if mode == "dask"
                                    else f"`batch --{mode}`") + label[len(mode):]
        table.append([name, str(n), f"{wall:.1f}", f"{rate:.2f}", f"{rate / base:.2f}x",
                      " ".join(f"{r:.2f}" for r in per_round[label]), f"{cpu / n:.3f}",
                      f"{(base_cpu / base_n) / (cpu / n):.2f}x"])
    print(f"ptolemy-rt batch throughput, 1024x1440 {a.image_set} med-mag MRC, {os.cpu_count()} CPUs, "
          f"{images} images in {rounds} interleaved rounds (wall clock of whole processes); "
          f"1-min load average {min(loads):.1f}..{max(loads):.1f}"
          + ("; kernel autogroup on (one CPU share per session)" if _autogroup() else ""))
    print_markdown(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
