"""Golden outputs: the CLI's JSON on fixed images, recorded before a refactor and compared after it.

`python -m tests.golden_cases --record [--published]` rewrites tests/golden/*.json from the current code.
Outputs are the CLI's own files with timings removed and image paths reduced to their file names. Outputs
made with the published (CC BY-NC) weights are stored only as sha256 digests, never as text.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).resolve().parent / "golden"
REAL_EPU = Path(__file__).resolve().parents[1].parent / "shared" / "real-epu" / "smartem_gs8999138.jpg"

# (name, image key, CLI arguments after the image)
SHIPPED_CASES: list[tuple[str, str, list[str]]] = [
    ("atlas0_squares", "atlas0", ["squares"]),
    ("atlas0_squares_compat", "atlas0", ["squares", "--compat", "ptolemy"]),
    ("atlas3_squares", "atlas3", ["squares"]),
    ("atlas3_squares_noscore", "atlas3", ["squares", "--no-score"]),
    ("medmag0_holes", "medmag0", ["holes"]),
    ("medmag1_holes", "medmag1", ["holes"]),
    ("medmag1_holes_unet_edge100", "medmag1", ["holes", "--score", "unet", "--edge-tolerance", "100"]),
    ("medmag1_holes_norefine", "medmag1", ["holes", "--no-refine"]),
    ("medmag1_holes_compat", "medmag1", ["holes", "--compat", "ptolemy"]),
    ("medmag1_holes_original", "medmag1", ["holes", "--original"]),
    ("medmag1_holes_original_compat", "medmag1", ["holes", "--original", "--compat", "ptolemy"]),
    ("medmag2_holes", "medmag2", ["holes"]),
    ("epu_squares", "epu", ["squares"]),
    ("epu_holes", "epu", ["holes"]),
    ("ref_lowmag_squares", "ref_lowmag", ["squares"]),
    ("ref_medmag_holes", "ref_medmag", ["holes"]),
    ("ref_medmag_holes_original", "ref_medmag", ["holes", "--original", "--edge-tolerance", "100"]),
]

# Run with a model set converted from the published weights: only their sha256 is stored.
PUBLISHED_CASES: list[tuple[str, str, list[str]]] = [
    ("pub_lowmag_squares_compat", "ref_lowmag", ["squares", "--compat", "ptolemy"]),
    ("pub_lowmag_squares", "ref_lowmag", ["squares"]),
    ("pub_medmag_holes", "ref_medmag", ["holes"]),
    ("pub_medmag_holes_original_compat", "ref_medmag",
     ["holes", "--original", "--compat", "ptolemy", "--edge-tolerance", "100"]),
    ("pub_medmag_holes_compat", "ref_medmag", ["holes", "--compat", "ptolemy"]),
    ("pub_medmag_holes_original_compat_edge_default", "ref_medmag", ["holes", "--original", "--compat", "ptolemy"]),
]


# Intended changes since the recording, each a case that must now give what another case gave then:
# `--compat ptolemy` alone selects the original's behaviour too (issue 10), as `--original --compat ptolemy` did.
SAME_AS = {
    "medmag1_holes_compat": "medmag1_holes_original_compat",
    "pub_medmag_holes_compat": "pub_medmag_holes_original_compat_edge_default",
}


def image_path(key: str, tmp: Path, reference: Path | None) -> Path | None:
    """The file of image `key`: synthetic ones are written to `tmp`; None when the material is absent."""
    if key.startswith(("atlas", "medmag")):
        path = tmp / f"{key}.mrc"
        if not path.exists():
            from ptolemy_rt.demo import write_mrc
            from ptolemy_rt.synthetic import make_atlas, make_medmag

            seed = int(key.removeprefix("atlas").removeprefix("medmag"))
            data, _ = (make_atlas if key.startswith("atlas") else make_medmag)(seed)
            write_mrc(path, data)
        return path
    if key == "epu":
        return REAL_EPU if REAL_EPU.is_file() else None
    if reference is None:
        return None
    name = {"ref_lowmag": "20may08a_16760340.mrc", "ref_medmag": "medmag_readme_1024x1440.mrc"}[key]
    path = reference / "images" / name
    return path if path.is_file() else None


def _strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k == "timings":
                continue
            if k == "path" and isinstance(v, str):
                v = Path(v).name
            out[k] = _strip(v)
        return out
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def run_case(args: list[str], image: Path, models: Path | None, tmp: Path) -> str:
    """The CLI's output file for one case, canonicalised (timings removed, paths reduced to names)."""
    import warnings

    from ptolemy_rt.cli import main

    out = tmp / "out.json"
    if out.exists():
        out.unlink()
    argv = [args[0], str(image), *args[1:], "-o", str(out)]
    if models is not None:
        argv += ["--models", str(models)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(argv)
    text = out.read_text() if out.exists() else ""
    if text.startswith("["):  # the original's one-line format: kept as written
        return f"exit {code}\n{text}"
    body = json.dumps(_strip(json.loads(text)), indent=1, sort_keys=True) if text else ""
    return f"exit {code}\n{body}\n"


def sha256(text: str) -> str:
    """Hex digest of a case's canonical text."""
    return hashlib.sha256(text.encode()).hexdigest()


def record(published: bool) -> None:
    """Rewrite tests/golden from the current code."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest import reference_root

    reference = reference_root() if reference_root().is_dir() else None
    GOLDEN.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name, key, args in SHIPPED_CASES:
            path = image_path(key, tmp, reference)
            if path is None:
                print(f"skip {name}: image missing", file=sys.stderr)
                continue
            if name in SAME_AS:
                continue
            (GOLDEN / f"{name}.txt").write_text(run_case(args, path, None, tmp))
            print(name, file=sys.stderr)
        if published and reference is not None:
            from export.convert_ptolemy import convert

            converted = convert(reference / "weights", tmp / "converted", bn="batch")
            digests = {}
            for name, key, args in PUBLISHED_CASES:
                if name in SAME_AS:
                    continue
                path = image_path(key, tmp, reference)
                digests[name] = sha256(run_case(args, path, converted, tmp))
                print(name, file=sys.stderr)
            (GOLDEN / "published_sha256.json").write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--record", action="store_true", required=True)
    parser.add_argument("--published", action="store_true", help="also the published-weights digests")
    record(parser.parse_args().published)
