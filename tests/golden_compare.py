"""Which golden outputs changed between two recordings, and whether every change is an intended one.

    cp -r tests/golden /tmp/golden_old && python -m tests.golden_cases --record --published
    python -m tests.golden_compare /tmp/golden_old tests/golden --intended atlas0_squares,pub_lowmag_squares

Lists each case (text files and published-weights digests) as same or CHANGED; exits 1 when a case outside
--intended changed, or when any compat case did.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _digests(folder: Path) -> dict[str, str] | None:
    """This platform's published-weights digests in a recording, None where it has none."""
    from .golden_cases import published_digests

    path = folder / "digests.json"
    return published_digests(path.read_text() if path.is_file() else "{}")


def compare(old: Path, new: Path, intended: set[str]) -> list[str]:
    """Print every case as same/CHANGED; return the unintended changes (compat cases are never intended)."""
    bad = []
    for f in sorted(new.glob("*.txt")):
        before = (old / f.name).read_text() if (old / f.name).exists() else None
        changed = f.read_text() != before
        print(f"{f.stem:48s} {'CHANGED' if changed else 'same'}")
        if changed and (f.stem not in intended or "compat" in f.stem):
            bad.append(f.stem)
    do, dn = _digests(old), _digests(new)
    if do is None or dn is None:  # recorded on another CPU: its digests cannot be compared with this one's
        print("published digests: not recorded for this platform in both recordings; not compared")
        do = dn = {}
    for k in sorted(set(do) | set(dn)):
        changed = do.get(k) != dn.get(k)
        print(f"{k:48s} {'CHANGED' if changed else 'same'} (published digest)")
        if changed and (k not in intended or "compat" in k):
            bad.append(k)
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--intended", default="", help="comma-separated case names expected to change")
    args = parser.parse_args(argv)
    bad = compare(args.old, args.new, {s for s in args.intended.split(",") if s})
    print("unintended changes:", ", ".join(bad) or "none")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
