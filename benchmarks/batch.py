"""Throughput of `ptolemy-rt batch` against one `ptolemy-rt holes` process per image, in images per second.

    python -m benchmarks.batch [--images 200] [--separate 200] [--workers 1 2] [--no-dask]

Makes `--images` synthetic med-mag images (1024x1440 MRC, seeds 0..N-1), then times, each as whole processes
started from this script (wall clock, so imports, model loading and writing are in):
- the baseline: `ptolemy-rt holes IMAGE -o OUT.json`, one process per image, over the first `--separate` images;
- `ptolemy-rt batch DIR -o OUT --kind holes --workers N` over all images (report and previews included);
- the same with `--dask` on a LocalCluster of 2 single-thread worker processes (cluster start not counted: it
  stands for an existing cluster), when the dask extra is installed.
Rates are compared as images/s, so `--separate` may be smaller than `--images` on a busy machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import print_markdown

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _run(cmd: list[str]) -> float:
    start = time.perf_counter()
    r = subprocess.run(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    wall = time.perf_counter() - start
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... exited {r.returncode}: {r.stderr[-500:]}")
    return wall


def make_images(folder: Path, n: int) -> list[Path]:
    """n synthetic 1024x1440 med-mag images as MRC files."""
    from ptolemy_rt.demo import write_mrc
    from ptolemy_rt.synthetic_session import make_medmag

    paths = []
    for seed in range(n):
        data, _ = make_medmag(seed)
        path = folder / f"medmag_{seed:04d}.mrc"
        write_mrc(path, data)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    """Print the throughput table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=20, help="images in the batch (the issue asks for 200)")
    p.add_argument("--separate", type=int, default=None, help="images run one process each (default: --images)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--no-dask", action="store_true")
    p.add_argument("--models", metavar="DIR")
    a = p.parse_args(argv)
    separate = a.separate or a.images
    py = sys.executable
    models = ["--models", a.models] if a.models else []
    with tempfile.TemporaryDirectory(prefix="ptolemy-batch-bench-") as tmp:
        tmp_path = Path(tmp)
        images = make_images(tmp_path / "in", a.images)
        # One warm-up process so that every mode finds the Numba cache filled.
        _run([py, "-m", "ptolemy_rt", "holes", str(images[0]), "-o", str(tmp_path / "warm.json"), *models])
        rows: list[tuple[str, int, float]] = []
        wall = sum(_run([py, "-m", "ptolemy_rt", "holes", str(img), "-o", str(tmp_path / "sep" / f"{img.stem}.json"),
                         *models]) for img in images[:separate])
        rows.append((f"{separate} separate `ptolemy-rt holes` processes", separate, wall))
        for n in a.workers:
            out = tmp_path / f"batch{n}"
            wall = _run([py, "-m", "ptolemy_rt", "batch", str(tmp_path / "in"), "-o", str(out), "--kind", "holes",
                         "--workers", str(n), *models])
            rows.append((f"`batch --workers {n}`", a.images, wall))
        if not a.no_dask:
            try:
                from distributed import LocalCluster
            except ImportError:
                print("(no Dask row: pip install 'ptolemy-rt[dask]')", file=sys.stderr)
            else:
                with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster:
                    wall = _run([py, "-m", "ptolemy_rt", "batch", str(tmp_path / "in"), "-o", str(tmp_path / "dask"),
                                 "--kind", "holes", "--dask", cluster.scheduler_address, *models])
                rows.append(("`batch --dask` (LocalCluster, 2 workers x 1 thread)", a.images, wall))
    base = rows[0][1] / rows[0][2]
    table = [["mode", "images", "wall s", "images/s", "vs separate processes"]]
    for name, n, wall in rows:
        rate = n / wall
        table.append([name, str(n), f"{wall:.1f}", f"{rate:.2f}", f"{rate / base:.1f}x"])
    print(f"ptolemy-rt batch throughput, 1024x1440 synthetic med-mag MRC, {os.cpu_count()} CPUs "
          f"(wall clock of whole processes, Numba cache warm)")
    print_markdown(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
