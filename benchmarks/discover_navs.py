"""Discovery of hostile SerialEM sessions (sessions.discover) by this tree against another checkout, interleaved.

    python -m benchmarks.discover_navs --against /work/main [--rounds 3] [--scale 1.0]

Each case is a .nav (and files) built in a temporary folder: a MapFile of thousands of folders (10 map items),
thousands of map items naming the sections of one 3-section stack, a stack of maps with a large .mdoc (one
[ZValue] block per map), and a header claiming 100000 sections of a 3-section file. Each round runs discover()
in a fresh process for both trees in alternating order; reported: the median CPU seconds (user + system) of the
call and its ratio to the other tree's, and the items and notes each found. Timings only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.harness import machine_line, print_markdown  # noqa: E402

_CHILD = (
    "import json, resource, sys, warnings\n"
    "warnings.simplefilter('ignore')\n"
    "from ptolemy_rt.sessions import discover\n"
    "r = resource.getrusage(resource.RUSAGE_SELF); t = r.ru_utime + r.ru_stime\n"
    "try:\n"
    "    items, notes = discover([sys.argv[1]]); out = f'{len(items)} items, {len(notes)} note(s)'\n"
    "except Exception as exc:\n"
    "    out = type(exc).__name__\n"
    "r = resource.getrusage(resource.RUSAGE_SELF)\n"
    "print(json.dumps([r.ru_utime + r.ru_stime - t, out]))\n"
)


def _stack(path: Path, sections: int, claimed: int | None = None) -> None:
    import mrcfile
    import numpy as np

    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.zeros((sections, 8, 8), np.float32))
    if claimed is not None:
        raw = bytearray(path.read_bytes())
        raw[8:12] = np.int32(claimed).tobytes()
        path.write_bytes(bytes(raw))


def _items(n: int, stored: str, sections: bool = True) -> str:
    return "AdocVersion = 2.00\n\n" + "".join(
        f"[Item = {k}]\nType = 2\nMapFile = {stored}\n" + (f"MapSection = {k % 3 if sections else 0}\n\n")
        for k in range(n))


def build(root: Path, scale: float) -> dict[str, Path]:
    """The cases' .nav files, built under `root`."""
    cases = {}
    deep = root / "deep"
    deep.mkdir()
    (deep / "x.mrc").write_bytes(b"x")
    folders = int(8000 * scale)
    (deep / "s.nav").write_text(_items(10, "a\\" * folders + "x.mrc", sections=False))
    cases[f"MapFile of {folders} folders (10 items)"] = deep / "s.nav"
    shared = root / "shared"
    shared.mkdir()
    _stack(shared / "m.mrc", 3)
    n = int(20000 * scale)
    (shared / "s.nav").write_text(_items(n, "m.mrc"))
    cases[f"{n} items on 3 sections of one file"] = shared / "s.nav"
    mdoc = root / "mdoc"
    mdoc.mkdir()
    maps = int(200 * scale)
    _stack(mdoc / "M.mrc", maps)
    block = "X = 1\n" * int(3000 * scale)
    (mdoc / "M.mrc.mdoc").write_text("".join(f"[ZValue = {z}]\nMagnification = 2250\n{block}" for z in range(maps)))
    (mdoc / "s.nav").write_text("AdocVersion = 2.00\n\n" + "".join(
        f"[Item = {z}]\nType = 2\nMapFile = M.mrc\nMapSection = {z}\n\n" for z in range(maps)))
    size = (mdoc / "M.mrc.mdoc").stat().st_size
    cases[f"{maps} maps of one stack, {size / 1e6:.1f} MB .mdoc"] = mdoc / "s.nav"
    lie = root / "lie"
    lie.mkdir()
    _stack(lie / "m.mrc", 3, claimed=100000)
    (lie / "s.nav").write_text("AdocVersion = 2.00\n\n" + "".join(
        f"[Item = {z}]\nType = 2\nMapFile = m.mrc\nMapSection = {z}\n\n" for z in range(1000)))
    cases["1000 items, header claims nz=100000 of 3"] = lie / "s.nav"
    return cases


def run(nav: Path, tree: Path) -> tuple[float, str]:
    """(CPU s, what was found) of discover() on `nav` in a fresh process importing ptolemy_rt from `tree`."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, "-c", _CHILD, str(nav)], capture_output=True, text=True, env=env,
                         cwd=str(tree), check=True)
    cpu, found = json.loads(out.stdout)
    return cpu, found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=Path, required=True, metavar="DIR", help="the other checkout")
    parser.add_argument("--rounds", type=int, default=3, help="processes per case and tree (median)")
    parser.add_argument("--scale", type=float, default=1.0, help="size of the cases (1: the defaults above)")
    args = parser.parse_args(argv)
    trees = {"this tree": REPO, "against": args.against.resolve()}
    rows = []
    with tempfile.TemporaryDirectory(prefix="ptolemy-discover-") as tmp:
        for case, nav in build(Path(tmp), args.scale).items():
            cpu: dict[str, list[float]] = {k: [] for k in trees}
            found: dict[str, str] = {}
            for r in range(args.rounds):
                for name in (list(trees) if r % 2 == 0 else list(trees)[::-1]):
                    seconds, found[name] = run(nav, trees[name])
                    cpu[name].append(seconds)
            mine, other = (statistics.median(cpu[k]) for k in trees)
            rows.append([case, f"{mine:.3f}", f"{other:.3f}", f"{other / max(mine, 1e-3):.1f}x",
                         found["this tree"], found["against"]])
    print(machine_line())
    print(f"against: {trees['against']}, median of {args.rounds} rounds, CPU seconds of discover()")
    print_markdown([["case", "this tree (s)", "against (s)", "against / this", "this tree found", "against found"],
                    *rows])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
