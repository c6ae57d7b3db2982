"""`ptolemy-rt demo`: synthetic atlas and med-mag image through both pipelines, with results on disk."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

from .io import Image, atomic_write

__all__ = ["run_demo", "write_mrc"]


def write_mrc(path: Path, data: np.ndarray, pixel_size_A: float | None = None) -> None:
    """Write a 2-D array as an MRC file atomically (so the CLI can be rerun on it), the same bytes for the same
    array: mrcfile's "Created by" label carries the time of day, so it is written without one."""
    import tempfile

    import mrcfile

    from .errors import OutputError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            tmp_path = Path(tmp) / path.name
            with mrcfile.new(tmp_path, overwrite=True) as mrc:
                mrc.set_data(data)
                if pixel_size_A is not None:
                    mrc.voxel_size = pixel_size_A
                mrc.header.label[0] = b"Created by ptolemy-rt"
            atomic_write(path, tmp_path.read_bytes())
    except OutputError:
        raise
    except OSError as exc:  # a read-only or full disk under an existing folder was exit 70
        raise OutputError(f"{path}: cannot be written ({exc.strerror or exc})") from None


def _make_output_dir(out_dir: Path) -> None:
    """Create the output folder, before any work: a file, device or FIFO there was a FileExistsError (exit 70)."""
    from .errors import InputError, OutputError

    if os.path.lexists(out_dir) and not out_dir.is_dir():
        raise InputError(f"-o {out_dir}: exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"-o {out_dir}: cannot create the folder ({exc.strerror or exc})") from None


def run_demo(out_dir: Path, models=None, provider: str = "auto", threads: int | None = None, seed: int = 0,
             verbose: bool = False) -> int:
    """Make a synthetic atlas and med-mag image, find squares and holes, write JSON and overlays to `out_dir`."""
    from .holes import find_holes
    from .models import load_models
    from .overlay import write_overlay
    from .results import summary_line, write_result
    from .squares import find_squares
    from .synthetic import make_atlas, make_medmag

    _make_output_dir(out_dir)
    model_set = load_models(models, provider=provider, threads=threads)
    atlas, _ = make_atlas(seed)
    medmag, _ = make_medmag(seed)
    write_mrc(out_dir / "atlas.mrc", atlas)
    write_mrc(out_dir / "medmag.mrc", medmag)

    lines = []
    for name, data, finder in (("atlas", atlas, find_squares), ("medmag", medmag, find_holes)):
        image = Image(data=np.ascontiguousarray(data, dtype=np.float32), source=str(out_dir / f"{name}.mrc"),
                      dtype=str(data.dtype))
        # The first call pays session creation and any kernel compilation; the second is what each further
        # image of a session costs. Both are reported, labelled.
        start = time.perf_counter()
        finder(image, models=model_set)
        first = (time.perf_counter() - start) * 1000
        start = time.perf_counter()
        result = finder(image, models=model_set)
        elapsed = (time.perf_counter() - start) * 1000
        write_result(result, out_dir / f"{name}.json")
        write_overlay(out_dir / f"{name}.png", image.data, result)
        lines.append(f"{name}: {len(result.targets)} {result.kind} in {elapsed:.0f} ms warm "
                     f"(first call in this process {first:.0f} ms)")
        if verbose:  # the same one line per image as the finders' -v (results.summary_line)
            print(summary_line(name, result, elapsed / 1000, model_set.provider), file=sys.stderr)
    print(f"ptolemy-rt demo ({model_set.name}, {model_set.provider}): " + "; ".join(lines)
          + f". Results in {out_dir}/ (atlas.json, atlas.png, medmag.json, medmag.png)")
    return 0
