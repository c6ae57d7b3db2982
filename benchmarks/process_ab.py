"""Per-process latency of this tree against another checkout (issue 17's per-process line), interleaved.

    python -m benchmarks.process_ab --against /work/main [--rounds 7] [--models DIR]

Each round runs, for both trees in alternating order, `python -c "import numpy"` (the yardstick) and
`python -m ptolemy_rt holes|squares IMAGE -o OUT` as whole processes (PYTHONPATH = the tree, bytecode caching on),
so that both trees and the yardstick see the same load. Reported: median wall seconds, median of the per-round
ratios to the yardstick (goal <= 3.5x), peak RSS, and the child's CPU seconds (user + system), which a shared
machine's load moves less than wall time. Timings only; nothing is asserted. The outputs of both trees are
compared byte for byte as a side check (they must be equal for a change meant to keep results).
"""

from __future__ import annotations

import argparse
import json
import os
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
from benchmarks.latency import ATLAS, MEDMAG  # noqa: E402

# Run `cmd` in a child of a small parent of its own: wall seconds, peak RSS (MiB), CPU seconds, exit code.
_CHILD = (
    "import resource, subprocess, sys, time, json\n"
    "t = time.perf_counter(); r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "w = time.perf_counter() - t\n"
    "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print(json.dumps([r.returncode, w, u.ru_maxrss / 1024, u.ru_utime + u.ru_stime]))\n"
)


def run_child(cmd: list[str], tree: Path) -> tuple[float, float, float]:
    """(wall s, peak RSS MiB, CPU s) of `cmd` in a fresh process importing ptolemy_rt from `tree`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(tree)
    out = subprocess.run([sys.executable, "-c", _CHILD, *cmd], capture_output=True, text=True, env=env,
                         cwd=str(tree), check=True)
    code, wall, rss, cpu = json.loads(out.stdout)
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} (PYTHONPATH={tree}) exited {code}")
    return wall, rss, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=Path, required=True, metavar="DIR", help="the other checkout")
    parser.add_argument("--rounds", type=int, default=7, help="processes per command and tree (median)")
    parser.add_argument("--models", help="model set (default: the shipped one)")
    args = parser.parse_args(argv)
    if not (MEDMAG.is_file() and ATLAS.is_file()):
        parser.error(f"reference images not found ({MEDMAG.parent})")
    trees = {"this": REPO, "other": args.against.resolve()}
    extra = ["--models", args.models] if args.models else []
    print(f"# per-process A/B, {time.strftime('%Y-%m-%d %H:%M')}; {machine_line()}; this {trees['this']}, "
          f"other {trees['other']}")
    with tempfile.TemporaryDirectory() as tmp:
        def commands(name: str) -> dict[str, list[str]]:
            return {"yardstick": [sys.executable, "-c", "import numpy"],
                    "holes": [sys.executable, "-m", "ptolemy_rt", "holes", str(MEDMAG), "-o",
                              f"{tmp}/{name}_holes.json", *extra],
                    "squares": [sys.executable, "-m", "ptolemy_rt", "squares", str(ATLAS), "-o",
                                f"{tmp}/{name}_squares.json", *extra]}

        for name, tree in trees.items():  # warm caches, bytecode and the OS page cache
            for cmd in commands(name).values():
                run_child(cmd, tree)
        runs: dict[str, dict[str, list[tuple[float, float, float]]]] = {n: {} for n in trees}
        loads = []
        for r in range(args.rounds):
            for name in (list(trees) if r % 2 == 0 else list(trees)[::-1]):
                for call, cmd in commands(name).items():
                    runs[name].setdefault(call, []).append(run_child(cmd, trees[name]))
            loads.append(os.getloadavg()[0])
        same = {call: Path(f"{tmp}/this_{call}.json").read_bytes() == Path(f"{tmp}/other_{call}.json").read_bytes()
                for call in ("holes", "squares")}
    print(f"\n## {args.rounds} rounds, trees alternating; load average {min(loads):.1f}-{max(loads):.1f}")
    table = [["command", "tree", "wall s (median)", "min s", "x yardstick (median of rounds)", "CPU s (median)",
              "peak RSS MiB"]]
    for call in ("yardstick", "holes", "squares"):
        for name in trees:
            vals = runs[name][call]
            ratios = [v[0] / y[0] for v, y in zip(vals, runs[name]["yardstick"])]
            table.append([call, name, f"{statistics.median(v[0] for v in vals):.3f}", f"{min(v[0] for v in vals):.3f}",
                          "" if call == "yardstick" else f"{statistics.median(ratios):.2f}",
                          f"{statistics.median(v[2] for v in vals):.3f}", f"{max(v[1] for v in vals):.0f}"])
    print_markdown(table)
    for call in ("holes", "squares"):
        a = statistics.median(v[0] for v in runs["this"][call])
        b = statistics.median(v[0] for v in runs["other"][call])
        ca = statistics.median(v[2] for v in runs["this"][call])
        cb = statistics.median(v[2] for v in runs["other"][call])
        print(f"{call}: this / other wall {a / b:.3f}, CPU {ca / cb:.3f}; outputs byte-identical: {same[call]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
