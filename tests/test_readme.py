"""The README's examples as a new user runs them: its Python snippet on the shipped example images, and every
`ptolemy-rt` command line it shows parsed by the CLI (an option renamed or dropped fails here, not for a user)."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
import textwrap

import pytest

from ptolemy_rt.argv import join_negative_numbers
from ptolemy_rt.cli import build_parser

from .conftest import REPO, need, reference_root

README = (REPO / "README.md").read_text(encoding="utf-8")


def _blocks(language: str) -> list[str]:
    """The README's fenced code blocks in `language` (indented ones, inside a list, included)."""
    return [textwrap.dedent(b) for b in re.findall(rf"^[ \t]*```{language}\n(.*?)^[ \t]*```", README, re.M | re.S)]


def _command_lines() -> list[str]:
    """Every `ptolemy-rt ...` line of the README's bash blocks, without its comment and shell redirection."""
    lines = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            line = line.strip()
            # a command after `&&` on the first line (`... && ptolemy-rt demo`) counts too
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("ptolemy-rt "):
                    words = shlex.split(part, comments=True)
                    if ">" in words:
                        words = words[:words.index(">")]
                    lines.append(shlex.join(words))
    return lines


def test_the_readme_shows_commands_and_a_python_snippet():
    assert len(_command_lines()) >= 25
    assert len(_blocks("python")) == 1


@pytest.mark.parametrize("line", _command_lines())
def test_every_readme_command_line_parses(line):
    words = shlex.split(line)[1:]
    try:
        args = build_parser().parse_args(join_negative_numbers(words))
    except SystemExit as exc:  # argparse's refusal: an option the README shows that the CLI does not take
        pytest.fail(f"`{line}`: refused by the CLI's parser (exit {exc.code})")
    assert callable(args.func)


def test_readme_python_snippet_runs_on_the_example_images(tmp_path, monkeypatch):
    images = reference_root() / "images"
    atlas, square = images / "20may08a_16760340.mrc", images / "medmag_readme_1024x1440.mrc"
    need(atlas.is_file() and square.is_file(), f"the example images are not in {images}")
    shutil.copyfile(atlas, tmp_path / "atlas.mrc")
    shutil.copyfile(square, tmp_path / "square.mrc")
    monkeypatch.chdir(tmp_path)
    (snippet,) = _blocks("python")
    names: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(snippet, "README.md", "exec"), names)  # noqa: S102 - the README's own code
    lines = out.getvalue().splitlines()
    # five squares (x y score), then the holes' record as a dict
    assert len(lines) == 6
    for line in lines[:5]:
        x, y, score = (float(v) for v in line.split())
        assert 0 <= score <= 1
    assert lines[5].startswith("{") and "'targets'" in lines[5]
    assert names["original"].holes and names["holes"].holes


def test_the_fuzz_run_the_readme_names_has_its_case_count():
    from .fuzz.generators import schedule

    (stated,) = re.findall(r"`python -m tests\.fuzz` runs .*?\((\d+) cases;", README, re.S)
    assert int(stated) == len(schedule(500))
