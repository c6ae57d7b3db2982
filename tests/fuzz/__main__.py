"""`python -m tests.fuzz [--full | --cases N] [--seed-base N] [--only CLASSES]`: run the fuzz suite, print the
table of defects per class.

`--seed-base 1000000` runs cases no earlier run has (the default 0 is CI's schedule); `--cases N` gives the first
nine classes N cases and the later ones their share on top (500 -> 927).

Exits 1 when any case shows a defect (each is listed with its class, seed and detail), else 0.
"""

from __future__ import annotations

import argparse
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz")
    parser.add_argument("--full", action="store_true",
                        help="10,000 cases (default: the 500-case CI slice), plus the later classes' share")
    parser.add_argument("--cases", type=int, help="run this many cases instead")
    parser.add_argument("--only", help="comma-separated classes: the cases are spread over these alone")
    parser.add_argument("--seed-base", type=int, default=0, metavar="N",
                        help="add N to every seed: cases never run before (default 0, the CI schedule)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per case")
    args = parser.parse_args()
    if args.worker:
        from .runner import worker

        worker()
        return 0
    from .generators import CLASSES, schedule
    from .runner import run, table

    total = args.cases or (10_000 if args.full else 500)
    only = set(args.only.split(",")) if args.only else None
    unknown = sorted((only or set()) - set(CLASSES))
    if unknown:
        parser.error(f"--only: no class {', '.join(unknown)} (classes: {', '.join(CLASSES)})")
    plan = schedule(total, args.seed_base, only)
    start = time.perf_counter()

    def progress(n, r):
        if args.verbose or r["outcome"] != "ok":
            print(f"{n:5d} {r['cls']:15s} seed={r['seed']:<7d} {r['outcome']:16s} {r.get('detail', '')}",
                  file=sys.stderr, flush=True)
        elif n % 100 == 99:
            print(f"{n + 1} cases, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)

    results = run(plan, progress=progress)
    print(table(results))
    bad = [r for r in results if r["outcome"] != "ok"]
    print(f"\n{len(results)} cases in {time.perf_counter() - start:.0f} s; {len(bad)} with a defect")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
