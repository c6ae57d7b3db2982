"""leginon-script: options and models checked when the script is written; the script run as Leginon runs it.

Smart-Leginon runs `source SCRIPT JOB_BASENAME INPUT.mrc OUTDIR` in its own working directory (bash, or
csh for a .csh script), ignores the exit status, has no timeout, and reads the first line of
OUTDIR/JOB_BASENAME.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mrcfile
import pytest

from ptolemy_rt.errors import InputError
from ptolemy_rt.leginon import leginon_script, validate_extra
from ptolemy_rt.models import default_models_dir

from .conftest import REPO, need, synthetic_medmag
from .tiny_models import make_tiny_set


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    shipped = default_models_dir()
    if (shipped / "manifest.json").is_file():
        return shipped
    pytest.importorskip("onnx")
    return make_tiny_set(tmp_path_factory.mktemp("tiny"))


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "ptolemy_rt", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300, check=False)


@pytest.mark.parametrize("extra, message", [
    ("--edge-tolerence 100", "unrecognized arguments: --edge-tolerence"),  # a typo
    ("--edge-tolerance", "expected one argument"),
    ("--score best", "invalid choice: 'best'"),
    ("--top -3", "expected a count >= 0"),
    ("-o out.json", "-o/--output is set by the script"),
    ("--format csv", "-f/--format is set by the script"),
    ("--compat ptolemy", "--compat is set by the script"),
    ("--pretty", "--pretty is set by the script"),
    ("--models /x", "--models"),
    ("other.mrc", "names input files (other.mrc)"),
    ("--help", "asks for help"),
    ("--edge-tolerance '100", "cannot split"),
])
def test_extra_is_parsed_with_the_finders_parser(extra, message):
    with pytest.raises(InputError) as exc:
        validate_extra("holes", extra)
    assert message in str(exc.value)


def test_valid_extra_is_kept_and_quoted():
    args = validate_extra("holes", "--edge-tolerance 100 --score unet --min-score 0.5")
    assert args.edge_tolerance == 100 and args.score == "unet" and args.min_score == 0.5
    script = leginon_script("squares", extra="--min-area 200 --overlay '/data/over lays/'", validate=False)
    assert "--min-area 200 --overlay '/data/over lays/'" in script
    with pytest.raises(InputError, match="unrecognized arguments: --edge-tolerance"):
        validate_extra("squares", "--edge-tolerance 100")  # a holes option given to squares


def _main(capsys, monkeypatch, *args: str) -> subprocess.CompletedProcess:
    """The command line in this process (exit code, stdout, stderr), as a new process would run it: no model set
    loaded before. The end-to-end runs (test_cli.test_leginon_external_finder, the scripts below) start one."""
    from ptolemy_rt import models
    from ptolemy_rt.cli import main

    monkeypatch.setattr(models, "_CACHE", {})
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def test_cli_refuses_and_prints_no_script(tmp_path, models_dir, capsys, monkeypatch):
    def cli(*args):
        return _main(capsys, monkeypatch, *args)

    r = cli("leginon-script", "holes", "--models", str(models_dir), "--extra", "--edge-tolerence 100")
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "--edge-tolerence" in r.stderr
    r = cli("leginon-script", "squares", "--models", str(tmp_path / "nowhere"))
    assert r.returncode == 3 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1
    # a model set without the hole CNN: refused for --compat ptolemy's cnn score, fine with --score unet
    partial = tmp_path / "partial"
    shutil.copytree(models_dir, partial)
    manifest = json.loads((partial / "manifest.json").read_text())
    del manifest["models"]["hole_cnn"]
    (partial / "manifest.json").write_text(json.dumps(manifest))
    r = cli("leginon-script", "holes", "--models", str(partial))
    assert r.returncode == 3 and "hole_cnn" in r.stderr and r.stdout == ""
    r = cli("leginon-script", "holes", "--models", str(partial), "--extra", "--score unet")
    assert r.returncode == 0 and "--score unet" in r.stdout
    # a tampered graph is caught now, not inside Leginon
    graph = next(partial.glob("hole_unet*.onnx"))
    graph.write_bytes(graph.read_bytes() + b"x")
    r = cli("leginon-script", "holes", "--models", str(partial), "--extra", "--score unet")
    assert r.returncode == 3 and "sha256" in r.stderr


@pytest.fixture(scope="module")
def leginon_dirs(tmp_path_factory, models_dir):
    """Leginon's working directory, an image and an output directory, all with spaces in their paths."""
    root = tmp_path_factory.mktemp("leginon")
    data, _ = synthetic_medmag(1)
    images = root / "rawdata dir"
    images.mkdir()
    image = images / "24jan01a_00012gr_00003sq_v01_00004hl.mrc"
    with mrcfile.new(image) as m:
        m.set_data(data)
    cwd = root / "leginon cwd"
    cwd.mkdir()
    return root, image, cwd


@pytest.mark.slow  # seconds each; CI runs the slow suite
@pytest.mark.parametrize("shell", ["bash", "csh"])
def test_script_runs_as_leginon_sources_it(shell, leginon_dirs, models_dir):
    if shell == "csh":
        need(shutil.which("csh") is not None, "csh is not installed (apt-get install -y tcsh)")
    need(shutil.which(shell) is not None, f"{shell} is not installed")
    root, image, cwd = leginon_dirs
    suffix = ".csh" if shell == "csh" else ".sh"
    r = _cli("leginon-script", "holes", "--models", str(models_dir), "--extra", "--edge-tolerance 100 --top 20")
    assert r.returncode == 0, r.stderr
    script = root / f"hl_finding{suffix}"
    script.write_text(r.stdout)
    outdir = root / f"out {shell}"
    outdir.mkdir()
    job = f"job_{shell}"
    # Leginon: its own CWD, `source SCRIPT JOB INPUT OUTDIR`, then on with the same shell
    command = f"source '{script}' {job} '{image}' '{outdir}'; echo still here"
    # Leginon's own PYTHONPATH must not reach the finder: here it would shadow numpy with a broken one
    poison = root / "leginon site"
    (poison / "numpy").mkdir(parents=True, exist_ok=True)
    (poison / "numpy" / "__init__.py").write_text("raise ImportError('the wrong numpy')\n")
    env = {**os.environ, "PYTHONPATH": f"{poison}{os.pathsep}{REPO}"}
    run = subprocess.run([shell, "-c", command], capture_output=True, text=True, cwd=cwd, env=env, timeout=300,
                         check=False)
    assert run.returncode == 0, run.stderr
    assert "still here" in run.stdout  # the sourced script must not exit Leginon's shell
    with open(outdir / f"{job}.json") as fh:
        first = fh.readline()  # all Leginon reads
    targets = json.loads(first)
    assert isinstance(targets, list) and 0 < len(targets) <= 20
    assert all({"center", "score"} <= set(t) and len(t["center"]) == 2 for t in targets)
    assert list(cwd.iterdir()) == []  # nothing written into Leginon's working directory


def test_extra_with_negative_numbers_is_read_as_the_script_runs_it():
    """Probe (this session): `--extra '--min-score -1e-3'` was refused ("expected one argument": argparse takes
    only -5 or -0.5 as values), though main(), which runs the script, joins a numeric option and its negative
    value; validate_extra now reads it the same."""
    args = validate_extra("holes", "--min-score -1e-3 --edge-tolerance -1e2")
    assert args.min_score == -1e-3 and args.edge_tolerance == -100.0
    with pytest.raises(InputError, match="unrecognized arguments"):
        validate_extra("squares", "--edge-tolerance -1e2")


def test_leginon_reads_words_with_the_commands_public_helper(monkeypatch):
    """Closing note 10: leginon.py imported cli's private `_join_negative_numbers`. The helper now lives in
    `argv.py`, public; validate_extra and main() both call that one function, and leginon.py imports no
    private name of another module."""
    import ast

    import ptolemy_rt.argv as argv_module
    from ptolemy_rt import cli, leginon

    tree = ast.parse(Path(leginon.__file__).read_text(encoding="utf-8"))
    private = [f"{node.module}.{alias.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               for alias in node.names if alias.name.startswith("_") and not alias.name.endswith("__")]
    assert private == []
    assert "join_negative_numbers" in argv_module.__all__
    seen: list[list[str]] = []
    real = argv_module.join_negative_numbers

    def spy(words):
        seen.append(list(words))
        return real(words)

    monkeypatch.setattr(argv_module, "join_negative_numbers", spy)
    validate_extra("holes", "--min-score -1e-3")
    assert seen == [["holes", "--min-score", "-1e-3", "--", "INPUT.mrc"]]
    with pytest.raises(SystemExit):
        cli.main(["holes", "--min-score", "-1e-3", "--help"])
    assert seen[-1] == ["holes", "--min-score", "-1e-3", "--help"]
