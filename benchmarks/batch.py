"""Throughput of `ptolemy-rt batch` against one `ptolemy-rt holes` process per image, in images per second.

    python -m benchmarks.batch [--images 200] [--rounds 4] [--separate N] [--workers 1 2] [--no-dask]

Makes `--images` synthetic med-mag images (1024x1440 MRC, seeds 0..N-1) in `--rounds` equal blocks, then, block
by block, runs every mode over that block, the order of the modes turning each round, so that every mode sees
the same load on a shared machine (each mode's time is spread over the whole run, not bunched at one end). Each
run is a whole process started from here (wall clock: imports, model loading and writing are in):
- the baseline: `ptolemy-rt holes IMAGE -o OUT.json`, one process per image (`--separate` of them in all,
  spread over the blocks);
- `ptolemy-rt batch BLOCK -o OUT --kind holes --workers N` (report and previews included);
- the same with `--dask` on a LocalCluster of 2 single-thread worker processes, when the dask extra is
  installed. The cluster is started before and closed after each of its runs, neither counted (it stands for
  an existing cluster): left up, its idle scheduler and workers took CPU from every other mode (batch CPU per
  image 0.73 s instead of 0.29 s at load 3-6).
A batch is started once per block, so its start (interpreter, workers, model load) is counted `--rounds` times:
the batch figures are what `--images / --rounds` images in one batch reach, a lower bound for one batch of all.
CPU s/image (user + system of the process and its workers) depends less on the machine's load than wall clock
does; the load average is printed beside the table. Where the kernel's autogroup scheduling is on (Linux
desktops and many shared hosts), each session (terminal) gets an equal share of the CPUs: on a busy machine this
benchmark's processes share one slice however many there are, so `--workers 2` runs no faster than
`--workers 1` there and the ratio to separate processes falls to the ratio of CPU time per image.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import print_markdown

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict:
    env = dict(os.environ)
    deps = REPO / ".deps"  # a developer's private install of the optional extras (see tests/test_batch.py)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *([str(deps)] if deps.is_dir() else []),
                                         env.get("PYTHONPATH", "")])
    return env


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _run(cmd: list[str]) -> tuple[float, float]:
    """(wall s, CPU s of the process and its children) of one command, which must succeed."""
    cpu = _children_cpu()
    start = time.perf_counter()
    r = subprocess.run(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    wall = time.perf_counter() - start
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... exited {r.returncode}: {r.stderr[-500:]}")
    return wall, _children_cpu() - cpu


def make_images(folder: Path, n: int, first: int = 0) -> list[Path]:
    """n synthetic 1024x1440 med-mag images as MRC files (seeds first..first+n-1)."""
    from ptolemy_rt.demo import write_mrc
    from ptolemy_rt.synthetic_session import make_medmag

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(first, first + n):
        data, _ = make_medmag(seed)
        path = folder / f"medmag_{seed:04d}.mrc"
        write_mrc(path, data)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    """Print the throughput table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=20, help="images in all (the issue asks for 200)")
    p.add_argument("--rounds", type=int, default=2, help="blocks the images are split into (modes interleaved)")
    p.add_argument("--separate", type=int, default=None, help="images run one process each (default: --images)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--no-dask", action="store_true")
    p.add_argument("--models", metavar="DIR")
    a = p.parse_args(argv)
    rounds = max(1, min(a.rounds, a.images))
    separate = min(a.separate or a.images, a.images)
    py = sys.executable
    models = ["--models", a.models] if a.models else []
    modes: list[str] = ["separate", *[f"workers {n}" for n in a.workers]]
    if not a.no_dask:
        try:
            import distributed  # noqa: F401
        except ImportError:
            print("(no Dask row: pip install 'ptolemy-rt[dask]')", file=sys.stderr)
        else:
            modes.append("dask")
    totals = {m: [0, 0.0, 0.0] for m in modes}  # images, wall s, CPU s
    per_round: dict[str, list[float]] = {m: [] for m in modes}  # images/s of each round
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="ptolemy-batch-bench-") as tmp:
        tmp_path = Path(tmp)
        bounds = [round(k * a.images / rounds) for k in range(rounds + 1)]
        blocks = [make_images(tmp_path / f"in{k}", bounds[k + 1] - bounds[k], bounds[k]) for k in range(rounds)]
        sep_bounds = [round(k * separate / rounds) for k in range(rounds + 1)]
        # One warm-up process: the model files and the package in the page cache for every mode alike.
        _run([py, "-m", "ptolemy_rt", "holes", str(blocks[0][0]), "-o", str(tmp_path / "warm.json"), *models])
        for k, block in enumerate(blocks):
            order = modes[k % len(modes):] + modes[:k % len(modes)]
            for mode in order:
                if mode == "separate":
                    chosen = block[:sep_bounds[k + 1] - sep_bounds[k]]
                    runs = [_run([py, "-m", "ptolemy_rt", "holes", str(img), "-o",
                                  str(tmp_path / "sep" / f"{img.stem}.json"), *models]) for img in chosen]
                    wall, cpu = sum(r[0] for r in runs), sum(r[1] for r in runs)
                    n = len(chosen)
                else:
                    out = tmp_path / f"{mode.replace(' ', '')}_{k}"
                    cmd = [py, "-m", "ptolemy_rt", "batch", str(block[0].parent), "-o", str(out), "--kind",
                           "holes", "--no-progress", *models]
                    if mode == "dask":
                        from distributed import LocalCluster

                        # Up only while its batch runs: an idle cluster's scheduler and workers take a
                        # share of the CPUs (in this session's slice) from every other mode.
                        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                          dashboard_address=None, silence_logs=40) as cluster:
                            wall, cpu = _run([*cmd, "--dask", cluster.scheduler_address])
                    else:
                        wall, cpu = _run([*cmd, "--workers", mode.split()[1]])
                    n = len(block)
                if n:
                    totals[mode][0] += n
                    totals[mode][1] += wall
                    totals[mode][2] += cpu
                    per_round[mode].append(n / wall)
                loads.append(os.getloadavg()[0])
    base = totals["separate"][0] / totals["separate"][1]
    names = {"separate": "separate `ptolemy-rt holes` processes",
             "dask": "`batch --dask` (LocalCluster, 2 workers x 1 thread)"}
    table = [["mode", "images", "wall s", "images/s", "vs separate processes", "per round (images/s)",
              "CPU s/image"]]
    for mode in modes:
        n, wall, cpu = totals[mode]
        rate = n / wall
        # Dask's workers are not waited for by this process: their CPU time is not seen here.
        cpu_text = "-" if mode == "dask" else f"{cpu / n:.3f}"
        table.append([names.get(mode, f"`batch --{mode}`"),
                      str(n), f"{wall:.1f}", f"{rate:.2f}", f"{rate / base:.2f}x",
                      " ".join(f"{r:.2f}" for r in per_round[mode]), cpu_text])
    try:
        autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        autogroup = False
    print(f"ptolemy-rt batch throughput, 1024x1440 synthetic med-mag MRC, {os.cpu_count()} CPUs, "
          f"{a.images} images in {rounds} interleaved rounds (wall clock of whole processes); "
          f"1-min load average {min(loads):.1f}..{max(loads):.1f}"
          + ("; kernel autogroup on (one CPU share per session)" if autogroup else ""))
    print_markdown(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
