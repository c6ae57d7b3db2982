"""Check that re-recorded golden outputs differ from a base revision only by intended changes (issue 11).

    python -m tests.golden_diff [--base REV]

Intended: every hole says on_film; the lattice object gains a, b, spacing_a/b(_um), angle_deg, angle_ab_deg,
kind; the default (non-original) cases fit the general lattice (both vectors refined: small shifts of
centres, angle and spacing, and the scores that follow) and drop the lattice points off the film. Cases run
with the original's options (`--original`, `--compat ptolemy`) must be otherwise identical, and the compat
files and published compat digests must not change at all. Re-runs each default case with
--keep-off-film to show that every target it drops is a lattice point off the film. Prints a table; exit 1
on an unintended change.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .golden_cases import GOLDEN, SHIPPED_CASES, image_path, published_digests, run_case

ADDED_LATTICE = {"a", "b", "spacing_a", "spacing_b", "spacing_a_um", "spacing_b_um", "angle_deg", "angle_ab_deg",
                 "kind"}
# Default cases: a refined general lattice moves centres by its noise (sub-pixel; up to 1 % of a period far
# from the origin, where a slight anisotropy the square model could not fit adds up) and angle and spacing
# by a fraction of a percent.
MAX_SHIFT_PX = 2.0
MAX_SHIFT_PERIODS = 0.01
MAX_SPACING_CHANGE = 0.01
MAX_ANGLE_CHANGE_DEG = 0.5


def _old(base: str, name: str) -> str | None:
    try:
        return subprocess.run(["git", "show", f"{base}:tests/golden/{name}"], check=True, capture_output=True,
                              text=True, cwd=GOLDEN.parents[1]).stdout
    except subprocess.CalledProcessError:
        return None


def _body(text: str):
    code, _, rest = text.partition("\n")
    return code, (json.loads(rest) if rest.strip().startswith("{") else rest)


def _without_additions(d: dict) -> dict:
    d = json.loads(json.dumps(d))
    if d.get("lattice"):
        for k in ADDED_LATTICE:
            d["lattice"].pop(k, None)
    for t in d.get("targets", []):
        t.pop("on_film", None)
    return d


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="main")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest import reference_root

    reference = reference_root() if reference_root().is_dir() else None
    bad = []
    rows = [("case", "old n", "new n", "kept matched", "max shift px", "spacing change", "angle change",
             "dropped", "dropped off film", "verdict")]
    old_digests, new_digests = published_digests(_old(args.base, "digests.json") or "{}"), published_digests()
    if old_digests is None or new_digests is None:  # the base was recorded on another CPU (or none is here)
        print("published digests: not recorded for this platform at both revisions; not compared")
        old_digests = new_digests = {}
    for name in sorted(set(old_digests) | set(new_digests)):
        if old_digests.get(name) != new_digests.get(name):
            ok = "compat" not in name
            rows.append((name, "", "", "", "", "", "", "", "", "digest changed" + ("" if ok else ": UNINTENDED")))
            if not ok:
                bad.append(name)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name, key, case_args in SHIPPED_CASES:
            path = GOLDEN / f"{name}.txt"
            old_text = _old(args.base, path.name)
            if not path.is_file() or old_text is None:
                continue
            new_text = path.read_text()
            if new_text == old_text:
                continue
            (old_code, old), (new_code, new) = _body(old_text), _body(new_text)
            if old_code != new_code or not isinstance(old, dict) or not isinstance(new, dict) or \
                    "--compat" in case_args:
                rows.append((name, "", "", "", "", "", "", "", "", "UNINTENDED (format or exit code)"))
                bad.append(name)
                continue
            if "--original" in case_args:
                same = _without_additions(new) == old
                films = {t.get("on_film") for t in new["targets"]}
                verdict = "additions only" if same and films <= {True, False} else "UNINTENDED"
                rows.append((name, len(old["targets"]), len(new["targets"]), "", "0", "0", "0", "0", "", verdict))
                if verdict != "additions only":
                    bad.append(name)
                continue
            tol = max(MAX_SHIFT_PX, MAX_SHIFT_PERIODS * ((old.get("lattice") or {}).get("spacing_px") or 0.0))
            o = np.array([[t["x"], t["y"]] for t in old["targets"]]).reshape(-1, 2)
            n = np.array([[t["x"], t["y"]] for t in new["targets"]]).reshape(-1, 2)
            # every new target should be an old one, moved a little
            d = np.hypot(*(n[:, None, :] - o[None, :, :]).transpose(2, 0, 1)) if len(o) and len(n) else None
            matched = int((d.min(axis=1) <= tol).sum()) if d is not None else 0
            shift = float(d.min(axis=1).max()) if d is not None else 0.0
            ol, nl = old.get("lattice") or {}, new.get("lattice") or {}
            ds = abs(nl.get("spacing_px", 0) / ol["spacing_px"] - 1) if ol.get("spacing_px") else 0.0
            da = abs((new["angle_deg"] or 0) - (old["angle_deg"] or 0))
            da = min(da, abs(da - 90), abs(da - 180))  # the same square lattice may be reported along b
            dropped = o[d.min(axis=0) > tol] if d is not None else o
            # which of the dropped ones are off film: the same case with --keep-off-film
            full = _body(run_case([*case_args, "--keep-off-film"], image_path(key, tmp, reference), None, tmp))[1]
            off = np.array([[t["x"], t["y"]] for t in full["targets"] if t["on_film"] is False]).reshape(-1, 2)
            dropped_off = 0
            if len(dropped) and len(off):
                dd = np.hypot(*(dropped[:, None, :] - off[None, :, :]).transpose(2, 0, 1))
                dropped_off = int((dd.min(axis=1) <= tol).sum())
            ok = (matched == len(n) and shift <= tol and ds <= MAX_SPACING_CHANGE
                  and da <= MAX_ANGLE_CHANGE_DEG and dropped_off == len(dropped)
                  and all(t["on_film"] is True for t in new["targets"]))
            rows.append((name, len(o), len(n), matched, f"{shift:.3f}", f"{ds:.5f}", f"{da:.4f}", len(dropped),
                         dropped_off, "intended" if ok else "UNINTENDED"))
            if not ok:
                bad.append(name)
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)))
    print("unintended: " + (", ".join(bad) if bad else "none"))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
