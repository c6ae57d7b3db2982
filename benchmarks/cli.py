"""Cold start of the command line: wall time and peak RSS of `ptolemy-rt squares|holes IMAGE`, each in a new process.

    python -m benchmarks.cli [--models DIR] [--repeat N] [--atlas MRC] [--medmag MRC]

Rows: the first run with an empty bytecode cache (a fresh PYTHONPYCACHEPREFIX: Python compiles every module, as
after a source install without compileall), then runs with that cache warm. Nothing else is compiled or cached
(no Numba). Defaults: the real examples from ../shared when present, else synthetic images.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "ptolemy-reference" / "images"


def _child(cmd: list[str], env: dict) -> tuple[float, float]:
    """Run `cmd` in a fresh interpreter; return (wall seconds, peak RSS MB of that child)."""
    script = (
        "import resource, subprocess, sys, time, json\n"
        "t = time.perf_counter(); r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
        "w = time.perf_counter() - t\n"
        "print(json.dumps([r.returncode, w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, *cmd], capture_output=True, text=True, env=env, check=True)
    import json

    code, wall, rss = json.loads(out.stdout)
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {code}")
    return wall, rss


def main() -> None:
    """Print cold-start wall times and peak memory for both finders."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="model set (default: shipped)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--atlas", type=Path, default=REFERENCE / "20may08a_16760340.mrc")
    parser.add_argument("--medmag", type=Path, default=REFERENCE / "medmag_readme_1024x1440.mrc")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        images = {"squares": args.atlas, "holes": args.medmag}
        if not args.atlas.is_file() or not args.medmag.is_file():
            from ptolemy_rt.demo import write_mrc
            from ptolemy_rt.synthetic import make_atlas, make_medmag

            images = {"squares": Path(tmp) / "atlas.mrc", "holes": Path(tmp) / "medmag.mrc"}
            write_mrc(images["squares"], make_atlas(0)[0])
            write_mrc(images["holes"], make_medmag(0)[0])
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update({"PYTHONPYCACHEPREFIX": str(Path(tmp) / "pycache"),
                    "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")})
        extra = ["--models", args.models] if args.models else []
        print("| command | bytecode cache | wall s (median) | min s | peak RSS MB |")
        print("|---|---|---|---|---|")
        for finder, image in images.items():
            cmd = [sys.executable, "-m", "ptolemy_rt", finder, str(image), *extra]
            first = _child(cmd, env)
            print(f"| {finder} {image.name} | empty (compiles) | {first[0]:.2f} | {first[0]:.2f} | {first[1]:.0f} |")
            runs = [_child(cmd, env) for _ in range(args.repeat)]
            walls = sorted(w for w, _ in runs)
            print(f"| {finder} {image.name} | warm | {walls[len(walls) // 2]:.2f} | {walls[0]:.2f} | "
                  f"{max(r for _, r in runs):.0f} |")
        print("\nOriginal Ptolemy (../shared/ptolemy-reference/README.md): low-mag CLI wall 6.9 s, 2.8 GB peak.")


if __name__ == "__main__":
    main()
