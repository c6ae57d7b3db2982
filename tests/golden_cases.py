"""Golden outputs: the CLI's JSON on fixed images, recorded before a refactor and compared after it.

`python -m tests.golden_cases --record [--published]` rewrites tests/golden/*.txt from the current code.
Outputs are the CLI's own files with timings removed and image paths reduced to their file names. Outputs
made with the published (CC BY-NC) weights are stored only as sha256 digests, never as text.

The bytes are the same run after run on one machine, but not across machines: numpy, OpenCV, ONNX Runtime and
Numba choose kernels by the CPU's vector extensions (AVX2, AVX-512, AMX), and their sums round differently
(a Xeon with AVX-512 and an EPYC with AVX2 differ by ~1e-7 in scores and ~1e-5 px in vertices, nothing else).
So tests/golden/digests.json holds, per platform (`platform_key()`: those extensions and the libraries'
versions), the sha256 of every case's text: where this platform is recorded the test is byte-exact; elsewhere
a shipped case must match its text in structure, strings and integers, with floats within FLOAT_TOLERANCE.
`--record-digests` adds this platform's digests, after checking that its outputs match the texts so.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).resolve().parent / "golden"
DIGESTS = GOLDEN / "digests.json"
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


# The CPU flags whose kernels change float rounding in the libraries we call, and the libraries themselves.
_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
          "avx512_fp16", "amx_tile")
_LIBRARIES = ("numpy", "scipy", "opencv-python-headless", "onnxruntime", "numba", "mrcfile")

# A shipped case's floats on another platform: |a - b| <= FLOAT_TOLERANCE * (1 + max(|a|, |b|)). Seen between
# an AVX-512 Xeon and an AVX2 EPYC on every case: up to 7e-7 in scores, 4.4e-7 relative in areas (3e-7 fails,
# 1e-6 passes); 2e-6 lets a 1000 px coordinate move 0.002 px, a score 4e-6.
FLOAT_TOLERANCE = 2e-6


def platform_key() -> str:
    """The machine as the golden bytes see it: architecture, vector extensions, library versions."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.partition(":")[2].split())
                    break
    except OSError:
        pass
    isa = "+".join(f for f in _FLAGS if f in flags) or platform.processor() or "unknown"
    versions = []
    for name in _LIBRARIES:
        try:
            versions.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name}==absent")
    return " ".join([platform.machine(), isa, *versions])


def recorded_digests(text: str | None = None) -> dict[str, str] | None:
    """This platform's digests (case name -> sha256) from digests.json's text, None where it is not recorded."""
    if text is None:
        text = DIGESTS.read_text() if DIGESTS.is_file() else "{}"
    return json.loads(text).get(platform_key())


def published_digests(text: str | None = None) -> dict[str, str] | None:
    """This platform's published-weights digests (recorded_digests' pub_ cases), None where it is not recorded."""
    mine = recorded_digests(text)
    return None if mine is None else {k: v for k, v in mine.items() if k.startswith("pub_")}


def differences(expected: str, actual: str) -> list[str]:
    """Where a case's text differs from the recorded one beyond another platform's rounding (empty: it matches)."""
    (code_e, _, body_e), (code_a, _, body_a) = expected.partition("\n"), actual.partition("\n")
    if code_e != code_a:
        return [f"status {code_e!r} != {code_a!r}"]
    try:
        e, a = json.loads(body_e) if body_e.strip() else None, json.loads(body_a) if body_a.strip() else None
    except json.JSONDecodeError:
        return [] if body_e == body_a else ["the output is not JSON and differs"]
    found: list[str] = []
    _walk(e, a, "", found)
    return found


def _walk(e: Any, a: Any, where: str, found: list[str]) -> None:
    if len(found) >= 20:  # enough to see what changed
        return
    if isinstance(e, dict) and isinstance(a, dict):
        if e.keys() != a.keys():
            found.append(f"{where or '.'}: keys {sorted(e.keys() ^ a.keys())} differ")
        for k in e.keys() & a.keys():
            _walk(e[k], a[k], f"{where}.{k}", found)
    elif isinstance(e, list) and isinstance(a, list):
        if len(e) != len(a):
            found.append(f"{where}: {len(e)} items != {len(a)}")
        for i, (x, y) in enumerate(zip(e, a)):
            _walk(x, y, f"{where}[{i}]", found)
    elif isinstance(e, float) and isinstance(a, float):
        close = (math.isnan(e) and math.isnan(a)) or \
            abs(e - a) <= FLOAT_TOLERANCE * (1.0 + max(abs(e), abs(a)))
        if not close:
            found.append(f"{where}: {e!r} != {a!r}")
    elif type(e) is not type(a) or e != a:
        found.append(f"{where}: {e!r} != {a!r}")


def _outputs(published: bool) -> tuple[dict[str, str], dict[str, str]]:
    """Every case's text from the current code: (shipped cases by name, published-weights cases by name)."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest import reference_root

    reference = reference_root() if reference_root().is_dir() else None
    shipped: dict[str, str] = {}
    pub: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name, key, args in SHIPPED_CASES:
            path = image_path(key, tmp, reference)
            if path is None:
                print(f"skip {name}: image missing", file=sys.stderr)
                continue
            if name not in SAME_AS:
                shipped[name] = run_case(args, path, None, tmp)
                print(name, file=sys.stderr)
        if published and reference is not None:
            from export.convert_ptolemy import convert

            converted = convert(reference / "weights", tmp / "converted", bn="batch")
            for name, key, args in PUBLISHED_CASES:
                if name not in SAME_AS:
                    pub[name] = run_case(args, image_path(key, tmp, reference), converted, tmp)
                    print(name, file=sys.stderr)
    return shipped, pub


def _write_digests(digests: dict[str, dict[str, str]]) -> None:
    DIGESTS.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")


def record(published: bool) -> None:
    """Rewrite tests/golden from the current code: the texts, and digests for this platform only (the others'
    are dropped: they were of the old behaviour; `--record-digests` on those machines adds them again)."""
    GOLDEN.mkdir(exist_ok=True)
    shipped, pub = _outputs(published)
    for name, text in shipped.items():
        (GOLDEN / f"{name}.txt").write_text(text)
    mine = {name: sha256(text) for name, text in shipped.items()}
    if not published:
        mine.update(published_digests() or {})
    mine.update({name: sha256(text) for name, text in pub.items()})
    _write_digests({platform_key(): mine})


def record_digests() -> int:
    """Add this platform's digests, once its shipped outputs match the recorded texts within the tolerance."""
    shipped, pub = _outputs(True)
    bad = 0
    for name, text in shipped.items():
        for line in differences((GOLDEN / f"{name}.txt").read_text(), text):
            print(f"{name}: {line}", file=sys.stderr)
            bad += 1
    if bad:
        print("not recorded: this platform's outputs differ from the texts beyond rounding", file=sys.stderr)
        return 1
    digests = json.loads(DIGESTS.read_text()) if DIGESTS.is_file() else {}
    digests[platform_key()] = {name: sha256(text) for name, text in {**shipped, **pub}.items()}
    _write_digests(digests)
    print(f"recorded {len(digests[platform_key()])} digests for {platform_key()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--record", action="store_true", help="rewrite the texts (an intended change of behaviour)")
    mode.add_argument("--record-digests", action="store_true", help="add this platform's digests")
    parser.add_argument("--published", action="store_true", help="also the published-weights digests")
    args = parser.parse_args()
    if args.record_digests:
        sys.exit(record_digests())
    record(args.published)
