"""Latency tables for both finders (issue 17): in process, per process, imports, first run, scaling.

    python -m benchmarks.latency [--models DIR] [--repeat 15] [--proc-repeat 7]
                                 [--only inproc,imports,process,first,scaling] [--scaling-max 8192]
                                 [--against DIR [--rounds 4] [--cpu]]

Every figure is printed beside a yardstick timed in the same run, alternating with it, because the machines
are shared and noisy (the same run varies by +-30 %): in process a 1024x1024 float32 numpy matrix product,
per process `python -c "import numpy"` in the same interpreter. The ratio is what counts:

- inproc:  find_holes on the 1024x1440 reference image and find_squares on the 1024² reference atlas, warm,
           median of --repeat runs, interleaved with the matrix product (goal <= 1.6x); the stages of each.
- imports: what each command imports (`python -X importtime`, cumulative ms by top-level package) and what the
           first call in a process costs beyond a warm one (sessions, lazy imports), each in a fresh process.
- process: `python -m ptolemy_rt holes|squares IMAGE -o OUT`, warm caches, wall and peak RSS, interleaved with
           `python -c "import numpy"` (goal <= 0.4 s, <= 3.5x, <= 250 MiB).
- first:   the same commands from a fresh copy of the package (its modules not yet compiled to bytecode, as
           after a source install; dependencies as installed; nothing else is cached, there is no Numba),
           then warm from that copy (goal: first <= 1.2x warm).

Child processes run with bytecode caching on whatever the calling shell says (PYTHONDONTWRITEBYTECODE is
dropped): an installed package has its .pyc files, and without them every import recompiles (~0.2 s).
- --against DIR: the in-process figures of this tree and of another checkout (main's worktree, say), whole
           processes alternating; --cpu counts process CPU time with every pool at one thread, which a shared
           machine's load barely moves (wall time there varies by +-30 %).
- scaling: wall and peak RSS of find_squares on synthetic atlases 1024²..8192² and of find_holes on synthetic
           med-mag images 512x364..4096x5760, one fresh process per size; growth exponent of time in pixels.

Without the reference images (../shared/ptolemy-reference) synthetic ones of the same sizes are used.
Timings only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.harness import machine_line, print_markdown  # noqa: E402

REFERENCE = Path(os.environ.get("PTOLEMY_REFERENCE", REPO.parent / "shared" / "ptolemy-reference")) / "images"
ATLAS = REFERENCE / "20may08a_16760340.mrc"
MEDMAG = REFERENCE / "medmag_readme_1024x1440.mrc"
SECTIONS = ("inproc", "imports", "process", "first", "scaling")
# The original Ptolemy CLIs on the same images, one process each (issue 17's table: 2 cores, torch 2.13 CPU).
ORIGINAL_PROCESS = {"holes": "12.0 s, 3,654 MiB", "squares": "7.1 s, 2,760 MiB"}
# Packages whose import cost the import table reports (the rest is summed as "other").
PACKAGES = ("numpy", "scipy", "cv2", "numba", "llvmlite", "onnxruntime", "mrcfile", "ptolemy_rt")


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def _images(tmp: Path) -> dict[str, Path]:
    """The reference images, or synthetic stand-ins of the same sizes written to `tmp`."""
    if ATLAS.is_file() and MEDMAG.is_file():
        return {"squares": ATLAS, "holes": MEDMAG}
    from ptolemy_rt.demo import write_mrc
    from ptolemy_rt.synthetic import make_atlas, make_medmag

    out = {"squares": tmp / "atlas.mrc", "holes": tmp / "medmag.mrc"}
    write_mrc(out["squares"], make_atlas(0)[0])
    write_mrc(out["holes"], make_medmag(0)[0])
    return out


def _median(values) -> float:
    return float(statistics.median(values))


# ---------------------------------------------------------------------------------------------------
# In process


def in_process(images: dict[str, Path], models: str | None, repeat: int, settle: float = 0.0) -> None:
    """Warm find_holes / find_squares, interleaved with the matrix-product yardstick; stage medians.

    Each call starts after `settle` seconds of sleep: OpenBLAS's threads spin for ~0.1 s after a matrix product
    and would otherwise take one of two cores from the call after it (find_holes' first stages doubled)."""
    import numpy as np

    from ptolemy_rt.holes import find_holes
    from ptolemy_rt.io import read_image
    from ptolemy_rt.models import load_models
    from ptolemy_rt.squares import find_squares

    ms = load_models(models)
    medmag, atlas = read_image(images["holes"]), read_image(images["squares"])
    a = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
    b = np.random.default_rng(1).random((1024, 1024), dtype=np.float32)
    calls = {
        "yardstick: 1024² float32 matmul": lambda: a @ b,
        "find_holes 1024x1440": lambda: find_holes(medmag, ms),
        "find_squares 1024²": lambda: find_squares(atlas, ms),
    }
    t0 = time.perf_counter()
    for fn in calls.values():
        fn()
    first_ms = (time.perf_counter() - t0) * 1e3
    for fn in calls.values():  # a second warm-up: thread pools, page faults
        fn()
    times: dict[str, list[float]] = {k: [] for k in calls}
    stages: dict[str, dict[str, list[float]]] = {"find_holes 1024x1440": {}, "find_squares 1024²": {}}
    for _ in range(repeat):
        for name, fn in calls.items():
            time.sleep(settle)
            t = time.perf_counter()
            out = fn()
            times[name].append((time.perf_counter() - t) * 1e3)
            if name in stages:
                for key, sec in out.timings.items():
                    stages[name].setdefault(key, []).append(sec * 1e3)
    base = _median(times["yardstick: 1024² float32 matmul"])
    print(f"\n## In process, warm, median of {repeat}, interleaved, {settle:g} s pause before each call ({ms.name}, "
          f"provider {ms.provider}, {ms.threads} threads; first calls {first_ms:.0f} ms)")
    table = [["call", "median ms", "min ms", "max ms", "x yardstick", "goal"]]
    for name, vals in times.items():
        goal = "" if name.startswith("yardstick") else "<= 40 ms, <= 1.6x"
        table.append([name, f"{_median(vals):.1f}", f"{min(vals):.1f}", f"{max(vals):.1f}",
                      f"{_median(vals) / base:.2f}", goal])
    print_markdown(table)
    for name, st in stages.items():
        print(f"\n{name}, stages (median ms): " + ", ".join(f"{k} {_median(v):.1f}" for k, v in st.items()
                                                          if k != "total"))


# ---------------------------------------------------------------------------------------------------
# Two trees, interleaved

# Run in a child whose PYTHONPATH is one tree: warm find_holes / find_squares interleaved with the yardstick,
# wall or (single-threaded) CPU ms per call and the stages' wall ms, as JSON on the last line. Only the public
# API both trees share is used, so any revision of the package can be the other tree.
_TREE_CHILD = r"""
import json, os, sys, time
cpu = os.environ.get("PTOLEMY_BENCH_CPU") == "1"
if cpu:
    import cv2
    cv2.setNumThreads(1)
import numpy as np
from ptolemy_rt.holes import find_holes
from ptolemy_rt.io import read_image
from ptolemy_rt.models import load_models
from ptolemy_rt.squares import find_squares
models, medmag, atlas, repeat = sys.argv[1] or None, sys.argv[2], sys.argv[3], int(sys.argv[4])
ms = load_models(models, threads=1) if cpu else load_models(models)
medmag, atlas = read_image(medmag), read_image(atlas)
a = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
b = np.random.default_rng(1).random((1024, 1024), dtype=np.float32)
calls = {"yardstick": lambda: a @ b, "holes": lambda: find_holes(medmag, ms),
         "squares": lambda: find_squares(atlas, ms)}
clock = time.process_time if cpu else time.perf_counter
for _ in range(2):
    for fn in calls.values():
        fn()
out = {k: [] for k in calls}
stages = {"holes": {}, "squares": {}}
for _ in range(repeat):
    for name, fn in calls.items():
        t = clock()
        r = fn()
        out[name].append((clock() - t) * 1e3)
        if name in stages:
            for key, sec in r.timings.items():
                stages[name].setdefault(key, []).append(sec * 1e3)
print(json.dumps({"calls": out, "stages": stages}))
"""


def compare_trees(images: dict[str, Path], models: str | None, repeat: int, rounds: int, other: Path,
                  cpu: bool) -> None:
    """In-process medians of this tree and `other` (another checkout of the package), whole processes alternating
    (ABBA...) so that both see the same load; with `cpu`, process CPU time with every pool at one thread (cv2,
    onnxruntime, BLAS), which the other engineers' load barely moves."""
    trees = {"this": REPO, "other": other.resolve()}
    env_extra = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                 "PTOLEMY_BENCH_CPU": "1"} if cpu else {}
    runs: dict[str, list[dict]] = {k: [] for k in trees}
    loads = []
    for r in range(rounds):
        order = list(trees) if r % 2 == 0 else list(trees)[::-1]
        for name in order:
            env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PTOLEMY_BENCH_CPU")}
            env.update(env_extra)
            env["PYTHONPATH"] = str(trees[name])
            proc = subprocess.run([sys.executable, "-c", _TREE_CHILD, models or "", str(images["holes"]),
                                   str(images["squares"]), str(repeat)], env=env, cwd=str(trees[name]),
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{name} tree ({trees[name]}) failed:\n{proc.stderr[-2000:]}")
            runs[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            loads.append(os.getloadavg()[0])
    unit = "CPU ms, one thread" if cpu else "wall ms"
    print(f"\n## This tree against {other} ({unit}), {rounds} processes each alternating, {repeat} calls each; "
          f"median of all calls; load average {min(loads):.1f}-{max(loads):.1f}")
    table = [["call", "this", "other", "this / other", "this x yardstick", "other x yardstick"]]
    med = {name: {call: _median([v for run in runs[name] for v in run["calls"][call]])
                  for call in ("yardstick", "holes", "squares")} for name in trees}
    for call in ("yardstick", "holes", "squares"):
        a, b = med["this"][call], med["other"][call]
        table.append([call, f"{a:.1f}", f"{b:.1f}", f"{a / b:.2f}", f"{a / med['this']['yardstick']:.2f}",
                      f"{b / med['other']['yardstick']:.2f}"])
    print_markdown(table)
    for call in ("holes", "squares"):
        keys = list(dict.fromkeys(k for name in trees for run in runs[name] for k in run["stages"][call]))
        rows = [["stage (wall ms)", "this", "other"]]
        for key in keys:
            vals = [_median([v for run in runs[name] for v in run["stages"][call].get(key, [])] or [0.0])
                    for name in trees]
            rows.append([key, f"{vals[0]:.1f}", f"{vals[1]:.1f}"])
        print(f"\n{call}, stages:")
        print_markdown(rows)


# ---------------------------------------------------------------------------------------------------
# Imports and first call


_IMPORT_LINE = re.compile(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)")


def import_costs(stderr: str) -> dict[str, float]:
    """Import ms per top-level package from `-X importtime` output: the self time of every module summed by its
    package (so the table adds up to the whole import time, and numpy pulled in by scipy counts as numpy)."""
    out: dict[str, float] = {}
    for line in stderr.splitlines():
        m = _IMPORT_LINE.match(line)
        if m:
            root = m.group(4).split(".")[0]
            key = root if root in PACKAGES else "other"
            out[key] = out.get(key, 0.0) + int(m.group(1)) / 1e3
    return out


_FIRST_CALL = r"""
import json, sys, time
t0 = time.perf_counter()
import ptolemy_rt.cli  # what the command imports before it runs a finder
from ptolemy_rt.io import read_image
from ptolemy_rt.models import load_models
t1 = time.perf_counter()
finder, path, models = sys.argv[1], sys.argv[2], (sys.argv[3] or None)
if finder == "holes":
    from ptolemy_rt.holes import find_holes as find
    tasks = ["hole_unet", "hole_cnn"]
else:
    from ptolemy_rt.squares import find_squares as find
    tasks = ["square_cnn"]
t2 = time.perf_counter()
ms = load_models(models)
t3 = time.perf_counter()
sessions = {}
for task in tasks:
    t = time.perf_counter(); ms.session(task); sessions[task] = (time.perf_counter() - t) * 1e3
image = read_image(path)
t = time.perf_counter(); find(image, ms); first = time.perf_counter() - t
t = time.perf_counter(); find(image, ms); second = time.perf_counter() - t
print(json.dumps({"import cli": (t1 - t0) * 1e3, "import pipeline": (t2 - t1) * 1e3,
                  "load model set (hashes)": (t3 - t2) * 1e3,
                  **{f"session {k}": v for k, v in sessions.items()},
                  "first call": first * 1e3, "second call": second * 1e3}))
"""


def imports(images: dict[str, Path], models: str | None, repeat: int) -> None:
    """Import table per command (-X importtime, median over runs) and the first-call costs."""
    with tempfile.TemporaryDirectory() as tmp:
        cost: dict[str, list[dict[str, float]]] = {}
        first: dict[str, list[dict[str, float]]] = {}
        for _ in range(repeat):
            for finder, image in images.items():
                cmd = [sys.executable, "-X", "importtime", "-m", "ptolemy_rt", finder, str(image),
                       "-o", str(Path(tmp) / f"{finder}.json")] + (["--models", models] if models else [])
                r = subprocess.run(cmd, capture_output=True, text=True, env=_env())
                cost.setdefault(finder, []).append(import_costs(r.stderr))
                r = subprocess.run([sys.executable, "-c", _FIRST_CALL, finder, str(image), models or ""],
                                   capture_output=True, text=True, env=_env(), check=True)
                first.setdefault(finder, []).append(json.loads(r.stdout.strip().splitlines()[-1]))
    print(f"\n## Imports per command (python -X importtime, self ms summed by package, median of {repeat} processes)")
    keys = [k for k in (*PACKAGES, "other") if any(k in c for runs in cost.values() for c in runs)]
    table = [["package"] + list(cost)]
    for key in keys:
        table.append([key] + [f"{_median([c.get(key, 0.0) for c in cost[f]]):.0f}" for f in cost])
    table.append(["total"] + [f"{_median([sum(c.values()) for c in cost[f]]):.0f}" for f in cost])
    print_markdown(table)
    print(f"\n## First call in a fresh process beyond imports (ms, median of {repeat})")
    names = list(next(iter(first.values()))[0])
    names += [k for runs in first.values() for k in runs[0] if k not in names]
    table = [["step"] + list(first)]
    for key in names:
        table.append([key] + [f"{_median([r[key] for r in first[f]]):.0f}" if key in first[f][0] else "-"
                              for f in first])
    print_markdown(table)
    print("(first call - second call = what the first image pays for cv2/ORT warm-up and lazy imports)")


# ---------------------------------------------------------------------------------------------------
# Per process


_CHILD = (
    "import resource, subprocess, sys, time, json\n"
    "t = time.perf_counter(); r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "w = time.perf_counter() - t\n"
    "print(json.dumps([r.returncode, w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]))\n"
)


def run_child(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of `cmd` in a fresh process (measured by a small parent of its own)."""
    out = subprocess.run([sys.executable, "-c", _CHILD, *cmd], capture_output=True, text=True, env=env, check=True)
    code, wall, rss = json.loads(out.stdout)
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {code}")
    return wall, rss


def _commands(images: dict[str, Path], models: str | None, tmp: Path) -> dict[str, list[str]]:
    extra = ["--models", models] if models else []
    return {f"ptolemy-rt {finder}": [sys.executable, "-m", "ptolemy_rt", finder, str(image), "-o",
                                     str(tmp / f"{finder}.json"), *extra] for finder, image in images.items()}


def per_process(images: dict[str, Path], models: str | None, repeat: int, env_extra: dict[str, str] | None = None,
                title: str = "") -> dict[str, float]:
    """Warm per-process wall and peak RSS of both commands, interleaved with `python -c "import numpy"`."""
    env = _env(env_extra)
    with tempfile.TemporaryDirectory() as tmp:
        cmds = {'yardstick: python -c "import numpy"': [sys.executable, "-c", "import numpy"],
                **_commands(images, models, Path(tmp))}
        for cmd in cmds.values():  # warm caches (and the OS page cache)
            run_child(cmd, env)
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in cmds}
        for _ in range(repeat):
            for name, cmd in cmds.items():
                runs[name].append(run_child(cmd, env))
    base = _median([w for w, _ in runs['yardstick: python -c "import numpy"']])
    print(f"\n## {title or 'One process per image, warm caches'} (median of {repeat}, interleaved)")
    table = [["command", "wall s", "min s", "peak RSS MiB", "x yardstick", "goal", "original"]]
    medians = {}
    for name, vals in runs.items():
        walls = [w for w, _ in vals]
        medians[name] = _median(walls)
        goal = "" if name.startswith("yardstick") else "<= 0.4 s, <= 3.5x, <= 250 MiB"
        table.append([name, f"{_median(walls):.3f}", f"{min(walls):.3f}", f"{max(r for _, r in vals):.0f}",
                      f"{_median(walls) / base:.2f}", goal, ORIGINAL_PROCESS.get(name.split()[-1], "")])
    print_markdown(table)
    return medians


def first_run(images: dict[str, Path], models: str | None, repeat: int) -> None:
    """Each command from a fresh copy of the package (no bytecode of its own yet), then warm from that copy.

    The copy stands for a fresh install: its dependencies keep their compiled files (pip compiles on install)
    and nothing else is cached any more (no Numba); the first run compiles ptolemy_rt's own modules, which a
    pip install would have done already, so this is the worst case of a source or editable install."""
    import shutil

    rows = [["command", "first run s (fresh copy)", "warm s (median)", "first / warm", "goal"]]
    with tempfile.TemporaryDirectory() as tmp:
        firsts: dict[str, list[float]] = {}
        warms: dict[str, list[float]] = {}
        for k in range(repeat):
            src = Path(tmp) / f"copy{k}"
            shutil.copytree(REPO / "ptolemy_rt", src / "ptolemy_rt",
                            ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copytree(REPO / "models", src / "models")
            env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
            env["PYTHONPATH"] = str(src)
            for name, cmd in _commands(images, models, Path(tmp)).items():
                firsts.setdefault(name, []).append(run_child(cmd, env)[0])
                warms.setdefault(name, []).append(run_child(cmd, env)[0])
        for name in firsts:
            f, w = _median(firsts[name]), _median(warms[name])
            rows.append([name, f"{f:.3f}", f"{w:.3f}", f"{f / w:.2f}", "<= 1.2x, < 3 s"])
    print(f"\n## First run from a fresh copy of the package vs warm (median of {repeat} pairs; each pair a new copy)")
    print_markdown(rows)


# ---------------------------------------------------------------------------------------------------
# Scaling


_SCALE_CHILD = r"""
import json, sys, time
import numpy as np
kind, path, models = sys.argv[1], sys.argv[2], (sys.argv[3] or None)

def hwm():
    # VmHWM is this process's own peak (ru_maxrss survives exec and would include the parent's).
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM")) / 1024

from ptolemy_rt.models import load_models
ms = load_models(models)
if kind == "squares":
    from ptolemy_rt.squares import find_squares as find
else:
    from ptolemy_rt.holes import find_holes as find
find(np.zeros((512, 512), np.float32) + np.arange(512, dtype=np.float32), ms)  # load kernels and sessions
before = hwm()
data = np.load(path)
times = []
for _ in range(int(sys.argv[4])):
    t = time.perf_counter(); r = find(data, ms); times.append(time.perf_counter() - t)
n = len(r.squares) if kind == "squares" else len(r.holes)
stages = {k: round(v, 3) for k, v in r.timings.items()}
print(json.dumps([min(times), hwm(), before, n, stages]))
"""


def scaling(models: str | None, largest: int) -> None:
    """Time and peak memory against image size, one fresh process per size, and the growth exponent."""
    import numpy as np

    from ptolemy_rt.synthetic import make_atlas, make_medmag

    cases = [("squares", (s, s)) for s in (1024, 2048, 4096, 8192) if s <= largest]
    cases += [("holes", s) for s in ((364, 512), (720, 1024), (1024, 1440), (2048, 2880), (4096, 5760))
              if max(s) <= max(largest, 5760) and (largest >= 8192 or max(s) <= largest)]
    rows = [["finder", "image", "Mpx", "targets", "wall s (min)", "ms / Mpx", "peak RSS MiB",
             "peak - before image MiB"]]
    fits: dict[str, list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, shape in cases:
            # Sizes scale the synthetic scene with the image: more squares / holes, the same pitch.
            if kind == "squares":
                data = make_atlas(0, shape=shape)[0]
            else:
                data = make_medmag(1, shape=shape, spacing_px=120.0)[0]
            path = Path(tmp) / "image.npy"
            np.save(path, data.astype(np.float32))
            del data
            reps = 3 if shape[0] * shape[1] <= 4_200_000 else 1
            r = subprocess.run([sys.executable, "-c", _SCALE_CHILD, kind, str(path), models or "", str(reps)],
                               capture_output=True, text=True, env=_env())
            if r.returncode != 0:
                rows.append([kind, f"{shape[0]}x{shape[1]}", "", "", "failed: " + r.stderr.strip()[-80:], "", "", ""])
                continue
            wall, rss, before, n, stages = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"# {kind} {shape[0]}x{shape[1]}: " + ", ".join(f"{k} {v:.3f}" for k, v in stages.items()),
                  file=sys.stderr)
            mpx = shape[0] * shape[1] / 1e6
            fits.setdefault(kind, []).append((mpx, wall, rss - before))
            rows.append([kind, f"{shape[0]}x{shape[1]}", f"{mpx:.2f}", str(n), f"{wall:.3f}",
                         f"{wall * 1e3 / mpx:.0f}", f"{rss:.0f}", f"{rss - before:.0f}"])
    print("\n## Scaling (synthetic images, one process per size, warm, min of up to 3)")
    print_markdown(rows)
    for kind, pts in fits.items():
        if len(pts) >= 2:
            x = np.log([p[0] for p in pts])
            slope = float(np.polyfit(x, np.log([p[1] for p in pts]), 1)[0])
            big = [p for p in pts if p[0] >= 1.0]
            mem = float(np.polyfit(np.log([p[0] for p in big]), np.log([max(p[2], 1.0) for p in big]), 1)[0]) \
                if len(big) >= 2 else math.nan
            print(f"{kind}: time grows as pixels^{slope:.2f}, RSS growth as pixels^{mem:.2f} (1 = linear)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="model set (default: the shipped one)")
    parser.add_argument("--repeat", type=int, default=15, help="in-process repeats (median)")
    parser.add_argument("--proc-repeat", type=int, default=7, help="per-process repeats (median)")
    parser.add_argument("--only", default="inproc,imports,process,first",
                        help=f"comma-separated sections of {','.join(SECTIONS)} (scaling is opt-in: it takes minutes)")
    parser.add_argument("--settle", type=float, default=0.0,
                        help="pause before each in-process call, s (default 0, as issue 17 measured; 0.2 lets "
                        "OpenBLAS threads stop spinning after the yardstick)")
    parser.add_argument("--scaling-max", type=int, default=8192, help="largest atlas side in the scaling table")
    parser.add_argument("--against", type=Path, metavar="DIR",
                        help="another checkout of the package (e.g. a worktree of main): its in-process figures "
                        "beside this tree's, whole processes alternating (replaces the sections)")
    parser.add_argument("--rounds", type=int, default=4, help="processes per tree with --against")
    parser.add_argument("--cpu", action="store_true",
                        help="with --against: process CPU time with every thread pool at one thread")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")
    print(f"# ptolemy-rt latency, {time.strftime('%Y-%m-%d %H:%M')}; {machine_line()}; "
          f"load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        images = _images(Path(tmp))
        print("# images: " + ", ".join(f"{k} {v.name}" for k, v in images.items()))
        if args.against is not None:
            if not (args.against / "ptolemy_rt" / "__init__.py").is_file():
                parser.error(f"--against {args.against}: no ptolemy_rt package there")
            compare_trees(images, args.models, args.repeat, args.rounds, args.against, args.cpu)
            return 0
        if "inproc" in only:
            in_process(images, args.models, args.repeat, args.settle)
        if "imports" in only:
            imports(images, args.models, max(1, args.proc_repeat // 2))
        if "process" in only:
            per_process(images, args.models, args.proc_repeat)
        if "first" in only:
            first_run(images, args.models, max(1, args.proc_repeat // 2))
        if "scaling" in only:
            scaling(args.models, args.scaling_max)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
