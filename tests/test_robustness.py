"""Odd inputs found in review: each must give a clear error or an empty result, quickly and without a crash."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import cv2
import mrcfile
import numpy as np
import pytest

from ptolemy_rt import find_holes, find_squares
from ptolemy_rt.cli import main
from ptolemy_rt.errors import NonFiniteError, OutputError, ShapeError
from ptolemy_rt.io import Image, as_image, read_image
from ptolemy_rt.models import default_models_dir, load_models
from ptolemy_rt.outputs import atomic_write, write_set

from .conftest import synthetic_medmag


def _default_models():
    if not (default_models_dir() / "manifest.json").is_file():
        pytest.skip("no shipped model set")
    models = load_models()
    if not models.has("hole_unet"):
        pytest.skip("shipped set has no hole_unet")
    return models


def test_user_built_image_is_validated():
    bad = np.ones((300, 300), np.float32)
    bad[5, 5] = np.nan
    with pytest.raises(NonFiniteError):
        find_squares(Image(data=bad, source="mine.mrc"), models=False)
    with pytest.raises(ShapeError):
        as_image(Image(data=np.ones((2, 300, 300), np.float32)))
    fixed = as_image(Image(data=np.ones((300, 300), np.int16)))
    assert fixed.data.dtype == np.float32


def test_rgb_array_is_grey_not_a_stack():
    rgb = np.zeros((300, 320, 3), np.uint8)
    rgb[..., 1] = 90
    img = as_image(rgb)
    assert img.shape == (300, 320) and float(img.data[0, 0]) == pytest.approx(30.0)


def test_multipage_tiff_pages_of_different_sizes(tmp_path):
    p = tmp_path / "mixed.tif"
    assert cv2.imwritemulti(str(p), [np.zeros((40, 50), np.uint16), np.ones((60, 70), np.uint16)])
    assert read_image(p, section=1).shape == (60, 70)
    with pytest.warns(UserWarning):
        assert read_image(p).shape == (40, 50)


def test_pixel_level_pattern_gives_no_holes_and_bounded_unet_inputs(monkeypatch):
    from ptolemy_rt import unet

    models = _default_models()
    if models.spec("hole_unet").scale is None:
        pytest.skip("the shipped U-Net runs at native scale")
    sizes = []
    real = unet._padded_probability  # every U-Net run goes through it, with the unpadded input's shape

    def spy(padded, shape, *args):
        sizes.append(shape[0] * shape[1])
        return real(padded, shape, *args)

    monkeypatch.setattr(unet, "_padded_probability", spy)
    yy, xx = np.mgrid[:512, :512]
    checker = (((xx + yy) % 2) * 200).astype(np.int16)
    result = find_holes(checker, models=models)
    assert result.holes == () and result.reason
    # No period is measured, so the U-Net tries the ladder of periods; a 1.4 px "period" taken at its word
    # would have made its input ~2000x the image.
    assert sizes and max(sizes) <= 1.3**2 * checker.size + 16 * 1024


def test_huge_integer_values_are_rescaled():
    from ptolemy_rt.mixture import count_scale

    rng = np.random.default_rng(0)
    data = rng.integers(0, 16_000_000, size=(256, 256)).astype(np.float32)
    assert not count_scale(data, "int32").integer
    small = rng.integers(0, 60_000, size=(256, 256)).astype(np.float32)
    assert count_scale(small, "uint16").integer


def test_find_holes_without_models_is_a_clear_error():
    with pytest.raises(ValueError, match="hole_unet"):
        find_holes(np.ones((300, 300), np.float32), models=False)


@pytest.mark.parametrize("kind", ["poisson", "gauss", "gradient"])
def test_noise_gives_no_holes_with_the_shipped_set(kind):
    # With no measurable period the shipped U-Net is tried at every period of the ladder; it fires on pure
    # noise (probabilities ~0.99), and a lattice through 26 such blobs once passed for 12 holes.
    models = _default_models()
    rng = np.random.default_rng(0)
    image = {
        "poisson": lambda: rng.poisson(50, (1024, 1440)),
        "gauss": lambda: rng.normal(0, 1, (1024, 1440)),
        "gradient": lambda: np.add.outer(np.arange(1024), np.arange(1440)),
    }[kind]().astype(np.float32)
    result = find_holes(image, models=models)
    assert result.holes == () and "no hole lattice" in result.reason


def test_huge_values_do_not_overflow_the_histogram_index():
    # Issue 13: a count past 2**63 wrapped to a negative bin index and wrote outside the histogram (a segfault).
    # Run in a child process: before the fix this killed the interpreter.
    code = (
        "import numpy as np\n"
        "from ptolemy_rt.mixture import segment, histogram, count_scale\n"
        "rng = np.random.default_rng(1)\n"
        "for v in (1e18, 9.3e18, 1.8e19, 3e38):\n"
        "    d = (rng.random((256, 256)) * 100).astype(np.float32)\n"
        "    d.ravel()[rng.integers(0, d.size, 40)] = v\n"
        "    s = count_scale(d)\n"
        "    h = histogram(d, s)\n"
        "    assert h.sum() == d.size and h[-1] >= 40, (v, h[-1])\n"
        "    segment(d)\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


# --- issue 13: exit codes, options, special paths, output sets, signals -------------------------------------

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_mrc(tmp_path_factory) -> Path:
    from ptolemy_rt.synthetic import make_atlas

    data, _ = make_atlas(3, shape=(384, 384))
    path = tmp_path_factory.mktemp("img") / "atlas.mrc"
    with mrcfile.new(path) as m:
        m.set_data(data)
    return path


def _cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("args,option", [
    (["holes", "x.mrc", "--threshold", "nan"], "--threshold"),
    (["holes", "x.mrc", "--threshold", "2"], "--threshold"),
    (["holes", "x.mrc", "--threshold", "-1"], "--threshold"),
    (["holes", "x.mrc", "--threshold", "0"], "--threshold"),
    (["holes", "x.mrc", "--edge-tolerance", "nan"], "--edge-tolerance"),
    (["holes", "x.mrc", "--edge-tolerance", "-inf"], "--edge-tolerance"),
    (["squares", "x.mrc", "--window", "1e9"], "--window"),
    (["squares", "x.mrc", "--window", "1000000000"], "--window"),
    (["squares", "x.mrc", "--threads", "100000"], "--threads"),
    (["squares", "x.mrc", "--threads", "0"], "--threads"),
    (["squares", "x.mrc", "--min-area", "nan"], "--min-area"),
    (["squares", "x.mrc", "--min-area", "-1"], "--min-area"),
    (["squares", "x.mrc", "--section", "-1"], "--section"),
    (["squares", "x.mrc", "--max-pixels", "0"], "--max-pixels"),
])
def test_options_are_refused_at_parse_time_with_their_range(args, option, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and option in err and ("[" in err or "(" in err)


def test_negative_numbers_parse_without_equals():
    from ptolemy_rt.argv import join_negative_numbers
    from ptolemy_rt.cli import build_parser

    for text, value in (("-10", -10.0), ("-1e3", -1000.0), ("-.5", -0.5)):
        args = build_parser().parse_args(join_negative_numbers(["holes", "x.mrc", "--edge-tolerance", text]))
        assert args.edge_tolerance == value


def test_every_numeric_option_takes_a_negative_number():
    """Each option of any command whose value is a number is in argv.NUMERIC_OPTIONS, so `--opt -1e3` reaches
    its range check instead of argparse's "expected one argument" (calibrate's --tolerance was missing)."""
    import argparse

    from ptolemy_rt.argv import NUMERIC_OPTIONS
    from ptolemy_rt.cli import build_parser

    numeric = set()
    parsers = [build_parser()]
    while parsers:
        for action in parsers.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif action.option_strings and action.type is not None:
                value = None
                for probe in ("1", "0.5"):  # --threshold takes (0, 1) only
                    try:
                        value = action.type(probe)
                        break
                    except (argparse.ArgumentTypeError, TypeError, ValueError):
                        continue
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    numeric.update(o for o in action.option_strings if o.startswith("--"))
    assert numeric == NUMERIC_OPTIONS


def test_empty_output_and_single_file_for_several_inputs_are_refused(tmp_path, small_mrc, capsys):
    with pytest.raises(SystemExit) as e:
        main(["squares", str(small_mrc), "-o", ""])
    assert e.value.code == 2 and "empty" in capsys.readouterr().err
    out = tmp_path / "result.json"
    code, _, err = _cli(["squares", small_mrc, small_mrc, "-o", out, "--no-score"], capsys)
    assert code == 2 and "directory" in err and not out.exists()


@pytest.mark.parametrize("argv, said", [
    (["batch", "{blank}", "-o", "{out}"], "PATH"),
    (["batch", "{image}", "-o", "{blank}"], "-o/--output"),
    (["batch", "{image}", "-o", "{out}", "--models", "{blank}"], "--models"),
    (["batch", "{image}", "-o", "{out}", "--calibration", "{blank}"], "--calibration"),
    (["squares", "{blank}", "--no-score"], "IMAGE"),
    (["squares", "{image}", "{blank}", "--no-score"], "IMAGE"),
    (["squares", "{image}", "--no-score", "-o", "{blank}"], "-o/--output"),
    (["squares", "{image}", "--no-score", "--nav", "{blank}"], "--nav"),
    (["squares", "{image}", "--no-score", "--nav-out", "{blank}"], "--nav-out"),
    (["squares", "{image}", "--no-score", "--overlay", "{blank}"], "--overlay"),
    (["squares", "{image}", "--no-score", "--models", "{blank}"], "--models"),
    (["squares", "{image}", "--no-score", "--calibration", "{blank}"], "--calibration"),
    (["holes", "{image}", "--models", "{blank}"], "--models"),
    (["calibrate", "squares", "{image}", "--against", "{blank}", "-o", "{out}"], "--against"),
    (["calibrate", "squares", "{blank}", "--against", "{image}", "-o", "{out}"], "IMAGE"),
    (["models", "--validate", "{blank}"], "--validate"),
    (["models", "--models", "{blank}"], "--models"),
    (["leginon-script", "--models", "{blank}"], "--models"),
    (["leginon-script", "--calibration", "{blank}"], "--calibration"),
    (["demo", "--models", "{blank}", "-o", "{out}"], "--models"),
    (["doctor", "--models", "{blank}"], "--models"),
    (["batch", "{image}", "--kind", "squares", "--dask", "{blank}", "-o", "{out}"], "--dask"),
])
@pytest.mark.parametrize("blank", ["", " ", "\t \n"])
def test_an_empty_path_is_refused_as_such(tmp_path, small_mrc, capsys, monkeypatch, argv, said, blank):
    """Hand-made fuzz 14: an empty path (a shell variable not set) ran `batch` on the current folder, was ignored
    for --nav and --calibration, read the current folder as --models (exit 3) and was refused as ".: not a regular
    file" for an IMAGE. A blank one (`--nav " "`) got through the first mend. Exit 2, one line naming the option,
    and nothing written."""
    monkeypatch.chdir(small_mrc.parent)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:  # argparse refuses it (the option's type), before any command runs
        _cli([a.format(out=out, image=small_mrc, blank=blank) for a in argv], capsys)
    err = capsys.readouterr().err
    what = "address" if said == "--dask" else "path"
    assert e.value.code == 2 and not out.exists()
    assert err.count("\n") == 1 and err.endswith(f": error: argument {said}: an empty {what} was given (see --help)\n")


def test_overlay_format_follows_its_extension(tmp_path, small_mrc, capsys):
    for ext, magic in ((".jpg", b"\xff\xd8"), (".jpeg", b"\xff\xd8"), (".tif", b"II*\x00"), (".png", b"\x89PNG")):
        path = tmp_path / f"o{ext}"
        code, _, err = _cli(["squares", small_mrc, "--overlay", path, "--no-score", "-o", tmp_path / "r.json"],
                            capsys)
        assert code == 0, err
        assert path.read_bytes()[:len(magic)] == magic
    code, _, err = _cli(["squares", small_mrc, "--overlay", tmp_path / "o.gif", "--no-score"], capsys)
    assert code == 2 and ".gif" in err and not (tmp_path / "o.gif").exists()


def test_special_destinations_are_refused(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="FIFO"):
        atomic_write(fifo, "x")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    with pytest.raises(OutputError, match="device"):
        atomic_write("/dev/null", "x")
    with pytest.raises(OutputError, match="directory"):
        atomic_write(tmp_path, "x")
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    with pytest.raises(OutputError, match="symbolic link"):
        atomic_write(link, "new")
    assert os.path.islink(link) and real.read_text() == "old"
    atomic_write(link, "new", follow_symlinks=True)
    assert os.path.islink(link) and real.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "link.json", "real.json"]


def test_existing_file_keeps_its_mode(tmp_path):
    target = tmp_path / "secret.json"
    target.write_text("old")
    os.chmod(target, 0o600)
    atomic_write(target, "new")
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600 and target.read_text() == "new"


def test_output_set_is_whole_or_nothing(tmp_path, monkeypatch):
    from ptolemy_rt import outputs

    a, b = tmp_path / "a.png", tmp_path / "b.json"
    a.write_bytes(b"old overlay")
    real = os.replace
    calls = []

    def flaky(src, dst):
        calls.append(dst)
        if str(dst) == str(b):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(outputs.os, "replace", flaky)
    with pytest.raises(OutputError, match="b.json"):
        write_set([(a, b"new overlay"), (b, "{}")])
    monkeypatch.setattr(outputs.os, "replace", real)
    assert a.read_bytes() == b"old overlay" and not b.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
    # a new overlay with a failing JSON: neither file is left
    a.unlink()
    monkeypatch.setattr(outputs.os, "replace", flaky)
    with pytest.raises(OutputError):
        write_set([(a, b"new overlay"), (b, "{}")])
    monkeypatch.setattr(outputs.os, "replace", real)
    assert list(tmp_path.iterdir()) == []


def test_cli_leaves_no_overlay_when_the_json_cannot_be_written(tmp_path, small_mrc, capsys):
    png = tmp_path / "o.png"
    fifo = tmp_path / "r.json"
    os.mkfifo(fifo)
    code, _, err = _cli(["squares", small_mrc, "--overlay", png, "-o", fifo, "--no-score"], capsys)
    assert code == 4 and "FIFO" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"] and stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_malformed_manifest_is_a_model_error(tmp_path, small_mrc, capsys):
    for text in ("{not json", "[1, 2]", '"x"'):
        bad = tmp_path / "set"
        bad.mkdir(exist_ok=True)
        (bad / "manifest.json").write_text(text)
        code, _, err = _cli(["squares", small_mrc, "--models", bad], capsys)
        assert code == 3, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_sigterm_leaves_no_temporary_file(tmp_path):
    # The child parks inside the atomic writer, between writing its temporary file and renaming it.
    code = (
        "import sys, time, faulthandler\n"
        # a run that misses the signal shows where it waits (one CI run of 2026-12-07 timed out here, unrepeated)
        "faulthandler.dump_traceback_later(25, exit=True)\n"
        "import ptolemy_rt.outputs as o\n"
        "real = o.os.replace\n"
        "def slow(a, b):\n"
        "    print('ready', flush=True); time.sleep(30); real(a, b)\n"
        "o.os.replace = slow\n"
        "from ptolemy_rt.cli import main\n"
        f"sys.argv = ['ptolemy-rt', 'leginon-script', 'squares']\n"
        "from ptolemy_rt.cli import _install_signal_handlers, Terminated\n"
        "_install_signal_handlers()\n"
        "try:\n"
        f"    o.atomic_write({str(tmp_path / 'out.json')!r}, 'x' * 100000)\n"
        "except Terminated:\n"
        "    sys.exit(143)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    assert p.stdout.readline().strip() == b"ready"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 143, err.decode(errors="replace")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM)])
def test_sigterm_during_a_cli_run_exits_130_and_cleans(tmp_path, small_mrc, signum):
    """SIGTERM, and SIGHUP (the terminal or ssh session gone: it killed the run where it stood, a temporary
    file could stay behind), unwind the run: 130, no temporary file."""
    import shutil

    images = []
    for k in range(6):
        images.append(str(tmp_path / f"a{k}.mrc"))
        shutil.copy(small_mrc, images[-1])
    p = subprocess.Popen([sys.executable, "-m", "ptolemy_rt", "squares", *images,
                          "-o", str(tmp_path / "out") + "/", "--overlay", str(tmp_path / "ov") + "/", "--no-score"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    # mid-run: once the first image's result is written (a fixed 1 s let all six finish first here: exit 0)
    deadline = time.monotonic() + 60
    while p.poll() is None and time.monotonic() < deadline and not any((tmp_path / "out").glob("*.json")):
        time.sleep(0.01)
    p.send_signal(signum)
    _, err = p.communicate(timeout=60)
    # 0 only when the run ended before the signal came (a starved poll): then every result is there
    assert p.returncode == 130 or (p.returncode == 0 and len(list((tmp_path / "out").glob("*.json"))) == 6), err
    assert b"Traceback" not in err
    leftovers = [q.name for q in tmp_path.rglob("*") if q.name.startswith(".")]
    assert leftovers == []


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_a_hangup_unwinds_unless_it_was_ignored_from_the_start():
    """main() turns SIGHUP into the unwinding SIGTERM gets (it killed the run where it stood); a SIGHUP ignored
    when the run starts (nohup) stays ignored, and the handlers are put back as they were."""
    import ptolemy_rt.cli as cli

    before = signal.getsignal(signal.SIGHUP)
    try:
        for start, expected in ((signal.SIG_DFL, cli._on_sigterm), (signal.SIG_IGN, signal.SIG_IGN)):
            signal.signal(signal.SIGHUP, start)
            previous = cli._install_signal_handlers()
            assert signal.getsignal(signal.SIGHUP) == expected
            cli._restore_signal_handlers(previous)
            assert signal.getsignal(signal.SIGHUP) == start
    finally:
        signal.signal(signal.SIGHUP, before)


def test_the_quiet_start_handler_comes_before_any_import_of_the_package():
    """Fuzz campaign 12 (batch_signals 90000026): `import signal` came first in the package, before its Ctrl-C
    handler, and builds enums for 2 ms: a SIGINT then printed a KeyboardInterrupt traceback from enum.py (exit 1).
    The handler is now set with the interpreter's own _signal, before the package imports anything."""
    launcher = ("import sys, _signal\n"
                "events = []\n"
                "sys.addaudithook(lambda e, a: events.append((a[0], _signal.getsignal(_signal.SIGINT) is "
                "_signal.default_int_handler)) if e == 'import' else None)\n"
                "sys.argv = ['-m']\n"  # as `python -m ptolemy_rt` has it while the package loads
                "import ptolemy_rt\n"
                "names = [n for n, _ in events]\n"
                "print(events[names.index('ptolemy_rt') + 1:][:3])\n")
    done = subprocess.run([sys.executable, "-c", launcher], capture_output=True, text=True, env=_env(), timeout=60)
    after = eval(done.stdout)  # noqa: S307 -- our own print of a list of (name, bool)
    assert after and all(not default for _, default in after), after


_SIGNAL_IN_A_FINALIZER = """
import os, signal, sys, weakref
import ptolemy_rt.argv
from ptolemy_rt.cli import main

real = ptolemy_rt.argv.join_negative_numbers


class Lock:
    pass


def cleanup(ref):  # as importlib's module locks are cleaned up: a weakref callback
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    for _ in range(1000):  # the handler runs here, inside the callback
        pass


def join(argv):
    lock = Lock()
    keep = weakref.ref(lock, cleanup)
    del lock
    return real(argv)


ptolemy_rt.argv.join_negative_numbers = join
signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as a terminal starts it: a test run under nohup ignores SIGHUP
code = main(["models"])
print("exit", code, flush=True)
"""


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_a_signal_whose_handler_runs_in_a_finalizer_still_interrupts_quietly(signame):
    """Fuzz campaign 12 (batch_races 80000032): a hangup whose handler ran inside a weakref callback (an import
    lock's clean-up) raised there, where Python cannot raise: "Exception ignored in ..." and its traceback were
    printed and the interrupt dropped. It is now delivered again outside the finalizer: 130, one line."""
    done = subprocess.run([sys.executable, "-c", _SIGNAL_IN_A_FINALIZER, signame], capture_output=True, text=True,
                          env=_env(), timeout=60)
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert done.stdout.strip() == "exit 130" and done.stderr.strip().endswith(("interrupted", "terminated")), (
        done.stdout, done.stderr)


def test_an_interrupt_is_delivered_again_only_once_the_hook_has_returned():
    """A CI run under load: the interrupt delivered again reached the main thread while the unraisable hook was
    still starting the thread that sends it (Thread.start() waits for the thread to run), so its handler ran in
    the hook: "Exception ignored in sys.unraisablehook" and a traceback. The hook here takes 0.3 s to return."""
    slow_start = ("import threading, time\n"
                  "real_start = threading.Thread.start\n"
                  "def start(self):\n"
                  "    real_start(self)\n"
                  "    if threading.current_thread() is threading.main_thread():\n"
                  "        time.sleep(0.3)\n"
                  "threading.Thread.start = start\n")
    done = subprocess.run([sys.executable, "-c", slow_start + _SIGNAL_IN_A_FINALIZER, "SIGINT"], capture_output=True,
                          text=True, env=_env(), timeout=60)
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert done.stdout.strip() == "exit 130" and done.stderr.strip() == "interrupted", (done.stdout, done.stderr)


_SIGNAL_IN_A_FINALIZER_THEN_A_SLOW_CLEAN_UP = """
import os, signal, sys, time, weakref
import ptolemy_rt.cli as cli
import ptolemy_rt.outputs as outputs


class Lock:
    pass


def cleanup(ref):
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(1000):
        pass


real_flush, real_remove = cli._flush_stdout, outputs.remove_temporaries


def flush():  # the interrupt's handler runs in a finalizer as the result is flushed
    lock = Lock()
    keep = weakref.ref(lock, cleanup)
    del lock
    return real_flush()


def remove():  # main()'s clean-up runs while it would be delivered again
    time.sleep(float(sys.argv[1]))
    return real_remove()


cli._flush_stdout, outputs.remove_temporaries = flush, remove
hook = sys.unraisablehook
code = cli.main(["models"])
print("exit", code, sys.unraisablehook is hook, signal.getsignal(signal.SIGINT) is signal.default_int_handler,
      flush=True)
time.sleep(0.1)
print("caller still running", flush=True)
"""


@pytest.mark.parametrize("delay", [0.0, 0.05])
def test_an_interrupt_delivered_again_during_the_clean_up_leaves_the_caller_as_it_was(delay):
    """Review of fuzz12: the interrupt delivered again (from a finalizer) used _thread.interrupt_main, which
    ignores the signal mask of main()'s clean-up: its KeyboardInterrupt skipped putting the caller's handlers and
    unraisable hook back, and "interrupted" was printed twice."""
    done = subprocess.run([sys.executable, "-c", _SIGNAL_IN_A_FINALIZER_THEN_A_SLOW_CLEAN_UP, str(delay)],
                          capture_output=True, text=True, env=_env(), timeout=60)
    assert done.stdout.splitlines()[-2:] == ["exit 130 True True", "caller still running"], (done.stdout,
                                                                                              done.stderr)
    assert done.stderr.count("interrupted") == 1 and "Traceback" not in done.stderr, done.stderr


def test_an_interrupt_while_the_handlers_are_installed_leaves_no_hook_behind(monkeypatch, capsys):
    """Review of fuzz12: a KeyboardInterrupt inside _install_signal_handlers, after it set its unraisable hook,
    left main() nothing to put back: the hook stayed replaced in a library caller."""
    import ptolemy_rt.cli as cli

    hook, handlers = sys.unraisablehook, {s: signal.getsignal(s) for s in cli._STOP_SIGNALS}
    real = signal.signal
    calls = []

    def interrupted_once(sig, handler):
        calls.append(sig)
        if len(calls) == 2:  # the hook is set, SIGINT's handler too
            raise KeyboardInterrupt
        return real(sig, handler)

    monkeypatch.setattr(signal, "signal", interrupted_once)
    assert cli.main(["models"]) == 130
    monkeypatch.undo()
    assert sys.unraisablehook is hook and {s: signal.getsignal(s) for s in cli._STOP_SIGNALS} == handlers
    assert capsys.readouterr().err.strip() == "interrupted"


def test_sigint_during_start_up_prints_no_traceback(tmp_path):
    # Ctrl-C while ptolemy_rt and its command line load (after the interpreter's own start-up, which no
    # program controls): a quiet exit 130, or a finished run, never a traceback.
    launcher = ("import sys, runpy, importlib.util; importlib.util.find_spec('ptolemy_rt'); "
                "sys.argv = ['ptolemy-rt', 'models']; print('up', flush=True); "
                "runpy.run_module('ptolemy_rt', run_name='__main__')")
    for delay in (0.005, 0.02, 0.05, 0.2):
        p = subprocess.Popen([sys.executable, "-c", launcher], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=_env())
        assert p.stdout.readline().strip() == b"up"
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
        assert b"Traceback" not in err, err.decode()
        assert p.returncode in (0, 130), (delay, p.returncode, err)


def test_closed_stdout_exits_4_quietly(small_mrc):
    r = subprocess.run(f"{sys.executable} -m ptolemy_rt squares {small_mrc} --no-score -f txt | head -c 0",
                       shell=True, capture_output=True, env=_env(), timeout=60, executable="/bin/bash", check=False)
    script = f"{sys.executable} -m ptolemy_rt squares {small_mrc} --no-score | true; echo ${{PIPESTATUS[0]}}"
    r2 = subprocess.run(["bash", "-c", script], capture_output=True, env=_env(), timeout=60, check=False)
    code = int(r2.stdout.strip().splitlines()[-1])
    assert code in (0, 4), r2.stderr
    assert b"Traceback" not in r.stderr + r2.stderr and b"Exception ignored" not in r.stderr + r2.stderr


def test_numpy_runtime_warnings_do_not_reach_stderr(tmp_path, capsys):
    data = np.zeros((300, 300), np.float32)
    data[100:200, 100:200] = 1e-40  # denormal: the statistics underflow
    path = tmp_path / "den.mrc"
    with mrcfile.new(path) as m:
        m.set_data(data)
    code, _, err = _cli(["squares", path, "--no-score"], capsys)
    assert code in (0, 2) and "RuntimeWarning" not in err and "encountered" not in err


def test_internal_errors_exit_70_with_one_line(tmp_path, small_mrc, capsys, monkeypatch):
    from ptolemy_rt import squares

    def boom(*a, **k):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(squares, "find_squares", boom)
    code, out, err = _cli(["squares", small_mrc, "--no-score"], capsys)
    assert code == 70 and len(err.strip().splitlines()) == 1 and "report" in err
    assert json.loads(out or "null") is None  # nothing half-written to stdout either


def test_public_api_lets_only_ptolemy_errors_out():
    import ptolemy_rt
    from ptolemy_rt.errors import (
        InternalError,
        ModelError,
        OptionError,
        TooLargeError,
        public_api,
    )

    def failing(exc):
        def f():
            raise exc
        return f

    with pytest.raises(InternalError) as info:
        public_api(failing(ZeroDivisionError("x")))()
    assert isinstance(info.value.__cause__, ZeroDivisionError) and info.value.exit_code == 70
    with pytest.raises(OptionError):
        public_api(failing(ValueError("bad score")))()
    with pytest.raises(TooLargeError):
        public_api(failing(MemoryError()))()
    with pytest.raises(ModelError):
        public_api(failing(AttributeError("'list' object has no attribute 'get'")), ModelError)()
    with pytest.raises(TypeError):
        public_api(failing(TypeError("wrong type")))()
    # the package's entry points are wrapped
    for name in ("find_squares", "find_holes", "fit_lattice", "load_models"):
        assert getattr(ptolemy_rt, name).__wrapped__ is not None
    with pytest.raises(ModelError):
        ptolemy_rt.load_models("/nonexistent/model/set")


@pytest.fixture(scope="module")
def clean_holes():
    """The holes of the clean image (found once for the cases below), with no warning on the way."""
    import warnings

    from ptolemy_rt import find_holes

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return find_holes(synthetic_medmag(1)[0])


@pytest.mark.parametrize("case", ["hot_pixel", "scaled_1e-30", "denormal", "scaled_1e30"])
def test_extreme_values_find_the_same_holes(case, clean_holes):
    """A 3.4e38 hot pixel, or an image scaled to 1e-30, 1e-41 (denormal) or 1e30, finds the clean image's holes."""
    import warnings

    from ptolemy_rt import find_holes

    clean, _ = synthetic_medmag(1)
    data = clean.astype(np.float64)
    if case == "hot_pixel":
        data[5, 5] = 3.4e38
    else:
        data = data * {"scaled_1e-30": 1e-30, "denormal": 1e-41, "scaled_1e30": 1e30}[case]
    expected = clean_holes
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow or underflow warning on the way
        got = find_holes(data.astype(np.float32))
    assert got.reason is None
    assert len(got.holes) == len(expected.holes) > 20
    best = {(round(h.x), round(h.y)) for h in expected.holes}
    assert sum((round(h.x), round(h.y)) in best for h in got.holes) >= 0.95 * len(best)


def test_batch_refuses_more_threads_than_squares_accepts(tmp_path, small_mrc, capsys):
    """`batch --threads 100000` started 32,000 onnxruntime threads (16 GB) before the kernel killed it."""
    out = tmp_path / "out"
    code, _, err = _cli(["batch", small_mrc, "-o", out, "--threads", "100000", "--workers", "1"], capsys)
    assert code == 2 and "--threads 100000" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


class _FullStderr:
    """A stderr on a full disk: every write fails."""

    def write(self, text):
        raise OSError(27, "File too large")

    def flush(self):
        raise OSError(27, "File too large")


@pytest.mark.parametrize("args,code", [(["-o", "/dev/null"], 4), (["--top", "-1"], 2), ([], 0)])
def test_exit_code_survives_a_stderr_that_cannot_be_written(tmp_path, small_mrc, monkeypatch, args, code):
    """Fuzz (full_disk, seed 5): with stderr on a full disk the message's print raised, and exit 4 became 70."""
    monkeypatch.chdir(tmp_path)
    full = _FullStderr()
    monkeypatch.setattr(sys, "stderr", full)
    if code == 2:  # argparse's usage error: SystemExit(2)
        with pytest.raises(SystemExit) as exc:
            main(["squares", str(small_mrc), "--no-score", "-o", "r.json", *args])
        assert exc.value.code == 2
    else:
        assert main(["squares", str(small_mrc), "--no-score", "-o", "r.json", *args]) == code
    assert sys.stderr is full


def _address_space(limit: int):
    """A child's memory limit: reading a 3 GB file whole then fails (MemoryError) instead of passing slowly."""
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def _hostile(tmp_path: Path, kind: str) -> Path:
    """/dev/zero behind a link, a FIFO, or a sparse file of gigabytes, under a plausible name."""
    path = tmp_path / f"hostile-{kind}"
    if kind == "zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        with open(path, "wb") as fh:
            fh.truncate(3 << 30)
    return path


@pytest.mark.parametrize("kind", ["zero", "fifo", "sparse"])
@pytest.mark.parametrize("where", ["calibration", "nav", "session_nav", "manifest", "mdoc"])
def test_small_files_that_are_devices_fifos_or_huge_are_refused_unread(tmp_path, small_mrc, kind, where):
    """`--calibration /dev/zero` read until the kernel killed the process; a FIFO named *.nav in a session folder
    blocked `batch`; a sparse .mdoc or manifest of gigabytes was read into memory. Each is refused, named, exit 2
    (3 for a model set), without reading it."""
    image = tmp_path / "img.mrc"
    image.write_bytes(small_mrc.read_bytes())
    out = tmp_path / "out"
    if where == "calibration":
        args, code = ["squares", image, "--calibration", _hostile(tmp_path, kind), "-o", out / "r.json"], 2
        name = f"hostile-{kind}"
    elif where == "nav":
        args, code = ["squares", image, "--no-score", "--nav", _hostile(tmp_path, kind), "-o", out / "r.json"], 2
        name = f"hostile-{kind}"
    elif where == "session_nav":
        session = tmp_path / "session"
        session.mkdir()
        (session / "map.mrc").write_bytes(small_mrc.read_bytes())
        _hostile(tmp_path, kind).rename(session / "s.nav")
        args, code, name = ["batch", session, "-o", out, "--workers", "1", "--no-report"], 2, "s.nav"
    elif where == "manifest":
        models = tmp_path / "set"
        models.mkdir()
        _hostile(tmp_path, kind).rename(models / "manifest.json")
        args, code, name = ["squares", image, "--models", models, "-o", out / "r.json"], 3, "manifest.json"
    else:  # a stack with a hostile .mdoc: one that is not a file is not looked at (the stack's sections are read)
        with mrcfile.new(tmp_path / "stack.mrc") as m:
            m.set_data(np.stack([mrcfile.read(small_mrc)] * 2))
        _hostile(tmp_path, kind).rename(tmp_path / "stack.mrc.mdoc")
        args, name = ["squares", tmp_path / "stack.mrc", "--no-score", "-o", out / "r.json"], "stack.mrc.mdoc"
        code = 2 if kind == "sparse" else 0
    out.mkdir(exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "ptolemy_rt", *map(str, args)], capture_output=True, text=True,
                       env=_env(), timeout=120, check=False, preexec_fn=_address_space(2 << 30))
    assert r.returncode == code, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert (errors and name in errors[-1]) if code else not errors, r.stderr


def test_deeply_nested_manifest_and_resume_state_are_refused_not_raised(tmp_path, small_mrc, capsys):
    """json raises RecursionError (not ValueError) for arrays nested 100,000 deep: a manifest like that is a model
    set error (exit 3), a --resume state file like that means 'run the image again'."""
    deep = "[" * 100000 + "]" * 100000
    models = tmp_path / "set"
    models.mkdir()
    (models / "manifest.json").write_text(deep)
    code, _, err = _cli(["squares", small_mrc, "--models", models, "-o", tmp_path / "r.json"], capsys)
    assert code == 3 and "manifest.json" in err and "internal" not in err
    out = tmp_path / "out"
    args = ["batch", small_mrc, "-o", out, "--kind", "squares", "--workers", "1", "--no-report", "--resume"]
    assert _cli(args, capsys)[0] == 0
    for state in (out / ".state").glob("*.json"):
        state.write_text(deep)
    for result in (out / "results").glob("*.json"):
        result.write_text(deep)
    code, _, err = _cli(args, capsys)
    assert code == 0, err


@pytest.mark.parametrize("extra,what", [
    (["--nav-out", "{image}"], "an input image"),
    (["--nav-out", "{cal}", "--calibration", "{cal}"], "--calibration file"),
    (["-o", "{nav}"], "--nav file"),
    (["--nav-out", "{models}/manifest.json", "--models", "{models}"], "model set"),
])
def test_no_output_replaces_a_file_the_command_reads(tmp_path, small_mrc, capsys, extra, what):
    """`--nav-out IMAGE.mrc` wrote the navigator copy over the input image (exit 0); -o guarded images only."""
    image = tmp_path / "atlas.mrc"
    image.write_bytes(small_mrc.read_bytes())
    nav = tmp_path / "s.nav"
    nav.write_text("AdocVersion = 2.00\n[Item = 1]\nType = 2\nMapFile = atlas.mrc\nMapID = 5\nStageXYZ = 0 0 0\n"
                   "MapScaleMat = 1 0 0 -1\nMapWidthHeight = 384 384\n")
    cal, models = tmp_path / "cal.json", tmp_path / "set"
    cal.write_text("{}")
    models.mkdir()
    (models / "manifest.json").write_text("{}")
    before = {p: p.read_bytes() for p in (image, nav, cal, models / "manifest.json")}
    args = [a.format(image=image, cal=cal, nav=nav, models=models) for a in extra]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "r.json")]
    code, _, err = _cli(["squares", image, "--no-score", "--nav", nav, *args], capsys)
    assert code == 2 and "would overwrite" in err and what in err, err
    assert {p: p.read_bytes() for p in before} == before


def test_calibrate_output_does_not_replace_its_inputs(tmp_path, small_mrc, capsys):
    against = tmp_path / "original.json"
    against.write_text('[{"center": [10, 20], "score": 0.5}]')
    for target, what in ((against, "--against file"), (small_mrc, "an input image")):
        before = target.read_bytes()
        code, _, err = _cli(["calibrate", "squares", small_mrc, "--against", against, "-o", target], capsys)
        assert code == 2 and what in err and target.read_bytes() == before, err


@pytest.mark.parametrize("what", ["missing", "file", "loop"])
@pytest.mark.parametrize("command", ["batch", "leginon-script", "squares", "holes", "models", "calibrate", "demo"])
def test_a_models_path_that_is_no_directory_is_exit_3_in_every_command(tmp_path, small_mrc, capsys, command, what):
    """A --models path that is missing, a file or a symlink loop: exit 3 and the same one line in every command
    (manifest.check_model_directory, reached through models.load_models); batch and leginon-script reported a
    loop as an internal error (exit 70; Path.resolve raised RuntimeError in models.load_models)."""
    path = tmp_path / "set"
    if what == "file":
        path.write_text("{}")
    elif what == "loop":
        path.symlink_to(path)
    args = {"batch": ["batch", small_mrc, "-o", tmp_path / "out", "--kind", "squares", "--workers", "1"],
            "leginon-script": ["leginon-script", "squares"],
            "squares": ["squares", small_mrc, "-o", tmp_path / "r.json"],
            "holes": ["holes", small_mrc, "-o", tmp_path / "r.json"], "models": ["models"],
            "calibrate": ["calibrate", "squares", small_mrc, "--against", small_mrc, "-o", tmp_path / "c.json"],
            "demo": ["demo", "-o", tmp_path / "demo"],
            }[command]
    code, out, err = _cli([*args, "--models", path], capsys)
    assert (code, out, err) == (3, "", f"error: {path}: model set directory not found\n")


@pytest.mark.parametrize("option,code", [("-o", 4), ("--calibration", 2), ("--nav", 2), ("--overlay", 4)])
def test_a_symlink_loop_given_as_a_file_is_named_not_raised(tmp_path, small_mrc, capsys, option, code):
    """Fuzz (small_files, seed 2000241): comparing outputs with inputs resolved a symlink loop with Path.resolve,
    which raised RuntimeError (exit 70)."""
    loop = tmp_path / ("loop.png" if option == "--overlay" else "loop.json")
    loop.symlink_to(loop)
    args = ["squares", small_mrc, "--no-score", option, loop]
    if option == "--calibration":
        args.remove("--no-score")
    code_got, _, err = _cli(args, capsys)
    assert code_got == code and "internal" not in err and "loop" in err, err


def test_error_lines_stay_one_line_whatever_the_file_name_holds(tmp_path, small_mrc, capsys):
    """A name with a newline or a terminal escape split the error over lines (or recoloured the terminal)."""
    from ptolemy_rt.errors import MissingFileError, one_line

    assert one_line("a\nb\x1b[31m\u202ec\td \u00e9\U0001f600") == "a\\nb\\x1b[31m\\u202ec\\td \u00e9\U0001f600"
    # review: the joiners of Persian, Indic and emoji names and the soft hyphen are no control characters
    assert one_line("\u0646\u0645\u0648\u0646\u0647\u200c\u0647\u0627 \U0001f469\u200d\U0001f52c so\u00adft\u2066") == (
        "\u0646\u0645\u0648\u0646\u0647\u200c\u0647\u0627 \U0001f469\u200d\U0001f52c so\u00adft\\u2066")
    assert str(MissingFileError("x\ny.mrc: no such file")) == "x\\ny.mrc: no such file"
    code, _, err = _cli(["squares", tmp_path / "no\nsuch\x1b[2J.mrc"], capsys)
    assert code == 2 and err.count("\n") == 1 and "no\\nsuch\\x1b[2J.mrc" in err
    session = tmp_path / "session"
    session.mkdir()
    (session / "atlas\nbad.mrc").write_bytes(b"x")
    (session / "atlas_ok.mrc").write_bytes(small_mrc.read_bytes())
    code, _, err = _cli(["batch", session, "-o", tmp_path / "out", "--workers", "1", "--no-report"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2 and lines[0].startswith("atlas\\nbad.mrc: "), err


@pytest.mark.parametrize("args", [
    ["squares", "{image}", "--no-score", "-o", "{long}.json"],
    ["squares", "{image}", "--no-score", "--overlay", "{long}.png"],
    ["squares", "{image}", "--no-score", "--nav", "{long}.nav"],
    ["squares", "{image}", "--models", "{long}"],
    ["batch", "{image}", "--kind", "squares", "-o", "{long}"],
    ["batch", "{long}.mrc", "-o", "{tmp}/out"],
    ["models", "--validate", "{long}"],
    ["demo", "-o", "{tmp}/{long}"],
    # a `..` after the long name: os.path.abspath folds it away, the kernel still looks the name up
    ["squares", "{image}", "--no-score", "-o", "{tmp}/{long}/../o.json"],
    ["squares", "{image}", "--no-score", "--overlay", "{tmp}/{long}/../o.png"],
    ["batch", "{tmp}/{long}/../img.mrc", "-o", "{tmp}/out", "--kind", "holes"],
    ["models", "--validate", "{tmp}/{long}/../nothing"],
])
def test_a_name_too_long_for_the_file_system_is_a_usage_error(tmp_path, small_mrc, capsys, args):
    """pathlib's is_dir() and exists() raise OSError (ENAMETOOLONG) on a 300-byte name: exit 70 before."""
    long = "a" * 300
    argv = [a.format(image=small_mrc, long=long, tmp=tmp_path) for a in args]
    code, _, err = _cli(argv, capsys)
    assert code == 2 and "longer than file systems take" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("answer", ["pathconf", "missing", "raises", "no_limit"])
def test_name_limits_come_from_the_file_system(tmp_path, small_mrc, capsys, monkeypatch, answer):
    """The limits are os.pathconf's for the nearest existing folder (a file system with 20-byte names refuses a
    30-byte one), else 255 bytes a name and 4095 a path (no pathconf, as on Windows; one that fails or gives no
    limit). They were always 255 and 4095, whatever the file system (macOS: 1024 a path)."""
    import argparse

    from ptolemy_rt import cli

    asked = []

    def pathconf(folder, name):
        asked.append((folder, name))
        if answer == "raises":
            raise OSError(22, "Invalid argument")
        return -1 if answer == "no_limit" else {"PC_NAME_MAX": 20, "PC_PATH_MAX": 200}[name]

    if answer == "missing":
        monkeypatch.delattr(os, "pathconf")
    else:
        monkeypatch.setattr(os, "pathconf", pathconf)
    name_max, path_max = (20, 199) if answer == "pathconf" else (255, 4095)
    for name, refused in (("a" * name_max + ".json", True), ("a" * (name_max - 5) + ".json", False)):
        target = tmp_path / "new" / name
        try:
            cli._check_path_lengths(argparse.Namespace(output=str(target)))
            assert not refused, name
        except cli.UsageError as exc:
            assert refused and f"({name_max} bytes a name, {path_max} a path)" in str(exc), exc
    deep = str(tmp_path) + ("/" + "b" * 15) * ((path_max - len(str(tmp_path))) // 16 + 1) + "/r.json"
    assert len(deep) > path_max
    with pytest.raises(cli.UsageError, match="longer than file systems take"):
        cli._check_path_lengths(argparse.Namespace(output=deep))
    if answer != "missing":
        assert asked and all(folder == str(tmp_path) for folder, _ in asked)  # the nearest existing folder
    code, _, err = _cli(["squares", small_mrc, "--no-score", "-o", str(tmp_path / ("c" * name_max + ".json"))],
                        capsys)
    assert code == 2 and f"({name_max} bytes a name" in err and len(err.strip().splitlines()) == 1, err


def test_an_image_name_too_long_fails_alone(tmp_path, small_mrc, capsys):
    code, _, err = _cli(["squares", "a" * 300 + ".mrc", small_mrc, "--no-score", "-o", f"{tmp_path}/"], capsys)
    assert code == 2 and (tmp_path / "atlas.json").is_file() and "internal" not in err


def test_a_legal_name_near_the_limit_is_read_and_written(tmp_path, small_mrc, capsys):
    """Fuzz campaign 12: names of 242-255 bytes are legal, but the names derived from them were not. The .mdoc
    probed beside a 254-byte image (NAME.mrc.mdoc) made Path.is_file raise ENAMETOOLONG: exit 70 for `squares`
    and for a batch's discovery. A 250-byte output's temporary file (.NAME.XXXXXXXX.tmp) was over the limit: exit
    4 for an output that could be written."""
    image = tmp_path / ("a" * 250 + ".mrc")
    shutil.copy(small_mrc, image)
    code, _, err = _cli(["squares", str(image), "--no-score", "-o", str(tmp_path / "o.json")], capsys)
    assert code == 0, err
    out = tmp_path / ("c" * 250 + ".json")
    code, _, err = _cli(["squares", small_mrc, "--no-score", "-o", str(out)], capsys)
    first, again = (json.loads(f.read_text()) for f in (tmp_path / "o.json", out))
    assert code == 0 and first["targets"] == again["targets"], err
    atomic_write(out, "again")  # and replaced
    assert out.read_text() == "again" and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))\
        == []
    for name in ("é" * 120 + ".json", "é" * 125 + ".json", "a" + "€" * 83 + ".json"):  # 245-255 bytes, multibyte
        atomic_write(tmp_path / name, "x")
        atomic_write(tmp_path / name, "y")
        write_set([(tmp_path / name, "z"), (tmp_path / "o.json", "{}")])  # its backup '.NAME.XXXXXXXX.tmp.old'
        assert (tmp_path / name).read_text() == "z"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    stack = tmp_path / ("s" * 250 + ".mrc")  # a stack: the montage .mdoc is probed for too
    with mrcfile.new(stack) as m:
        m.set_data(np.stack([read_image(small_mrc).data] * 2))
    assert read_image(stack, section=1).shape == read_image(small_mrc).shape
    with pytest.warns(UserWarning, match="using section 0"):
        read_image(stack)
    batch = tmp_path / "in"
    batch.mkdir()
    shutil.copy(small_mrc, batch / ("atlas" + "b" * 245 + ".mrc"))
    code, _, err = _cli(["batch", str(batch), "-o", str(tmp_path / "out"), "--workers", "1"], capsys)
    assert code == 0 and "internal" not in err, err  # its result's name is cut to fit: test_outputs_named_after...


def test_temporary_names_fit_a_folder_of_short_names(tmp_path, monkeypatch):
    """Review whole15 (1): the temporary names kept 200 bytes of the target's name whatever the folder took, so
    on eCryptfs (143 bytes a name) an output of 130 bytes or more (an id cut to 143) got a temporary name over
    the limit: ENAMETOOLONG, exit 4. They keep what the folder leaves beside '.XXXXXXXX.tmp.old'."""
    from ptolemy_rt import outputs

    monkeypatch.setattr(outputs, "name_limits", lambda folder: (143, 4095))
    seen = []

    def refusing(call):  # the file system of 143-byte names this machine does not have
        def checked(*paths, **kwargs):
            for path in paths[:2]:
                if isinstance(path, (str, os.PathLike)):
                    seen.append(os.path.basename(os.fspath(path)))
                    if len(os.fsencode(seen[-1])) > 143:
                        raise OSError(errno.ENAMETOOLONG, "File name too long", os.fspath(path))
            return call(*paths, **kwargs)
        return checked

    for name in ("open", "link", "replace"):
        monkeypatch.setattr(outputs.os, name, refusing(getattr(os, name)))
    folder = tmp_path / "short"
    big = folder / ("r" * 130 + ".json")  # 135 bytes
    assert len(os.fsencode(big.name)) == 135
    atomic_write(big, "x")
    atomic_write(big, "y")
    write_set([(big, "z"), (folder / "o.json", "{}")])  # with a backup '.NAME.XXXXXXXX.tmp.old' of each
    assert big.read_text() == "z" and sorted(p.name for p in folder.iterdir()) == sorted([big.name, "o.json"])
    assert any(n.endswith(".tmp.old") and len(os.fsencode(n)) == 143 for n in seen), seen


def test_outputs_named_after_an_input_near_the_name_limit_are_cut_to_fit(tmp_path, small_mrc, capsys, monkeypatch):
    """Found by hand (robust15): an input named near the 255-byte limit is legal, but the outputs named after it
    were not: `holes NAME.mrc -o DIR/` (NAME.json, a byte more than NAME.mrc) and a batch (results/NAME.mrc.json,
    .state/NAME.mrc.json) failed with ENAMETOOLONG, exit 4 for a valid input, and --nav's NAME_ptolemy.nav too.
    Such a name is cut, never half a character, and told apart by a hash of the whole (outputs.fitting_name); the
    file system's own limit is asked for (-o DIR/), a batch resumes it, and other names are as they were."""
    from ptolemy_rt import outputs
    from ptolemy_rt.navigator import default_nav_output
    from ptolemy_rt.outputs import fitting_name

    for stem, suffix in (("a" * 251, ".json"), ("é" * 126, ".json"), ("x" * 248, "_ptolemy.nav")):
        name = fitting_name(stem, suffix)
        assert len(os.fsencode(name)) <= 255 and name.endswith(suffix) and "~" in name
        assert name == fitting_name(stem, suffix) != fitting_name(stem + "b", suffix)
        assert os.fsdecode(os.fsencode(name))  # no half character
    assert fitting_name("atlas", ".json") == "atlas.json"
    assert len(fitting_name("a" * 40, ".json", limit=30)) == 30
    assert default_nav_output("/s/" + "n" * 250 + ".nav").name == fitting_name("n" * 250 + "_ptolemy", ".nav")
    assert default_nav_output("/s/nav.nav") == Path("/s/nav_ptolemy.nav")
    image = tmp_path / "in" / ("a" * 251 + ".mrc")
    image.parent.mkdir()
    shutil.copy(small_mrc, image)
    code, _, err = _cli(["squares", str(image), "--no-score", "-o", f"{tmp_path}/out/", "--overlay",
                         f"{tmp_path}/ov/"], capsys)
    assert code == 0, err
    [result] = (tmp_path / "out").iterdir()
    assert result.name == fitting_name("a" * 251, ".json") and (tmp_path / "ov" / ("a" * 251 + ".png")).is_file()
    for again in (False, True):
        code, _, err = _cli(["batch", str(tmp_path / "in"), "-o", str(tmp_path / "batch"), "--workers", "1",
                             "--kind", "squares", *(["--resume"] if again else [])], capsys)
        assert code == 0, err
        rows = json.loads((tmp_path / "batch" / "summary.json").read_text())["images"]
        assert [r["id"] for r in rows] == [fitting_name("a" * 251 + ".mrc", ".json").removesuffix(".json")]
    assert "1 resumed" in err
    # Review of robust15 (R3): a batch's ids were cut at 255 bytes whatever the file system; they are cut to the
    # output folder's NAME_MAX, asked as `-o DIR/` asks it (one helper), and a name that fits keeps its id (resume).
    monkeypatch.setattr(outputs, "name_limits", lambda folder: (100, 4095))  # a file system of 100-byte names
    # the .nav beside the .nav too (review whole15: it was cut at 255 bytes whatever the folder took)
    assert default_nav_output(tmp_path / ("n" * 95 + ".nav")).name == fitting_name("n" * 95 + "_ptolemy", ".nav", 100)
    code, _, err = _cli(["squares", str(image), "--no-score", "-o", f"{tmp_path}/small/"], capsys)
    assert code == 0 and [p.name for p in (tmp_path / "small").iterdir()] == [fitting_name("a" * 251, ".json", 100)]
    shutil.copy(small_mrc, tmp_path / "in" / "short.mrc")
    for again in (False, True):
        code, _, err = _cli(["batch", str(tmp_path / "in"), "-o", str(tmp_path / "small_batch"), "--workers", "1",
                             "--kind", "squares", *(["--resume"] if again else [])], capsys)
        assert code == 0, err
        rows = json.loads((tmp_path / "small_batch" / "summary.json").read_text())["images"]
        cut = fitting_name("a" * 251 + ".mrc", ".json", 100).removesuffix(".json")
        assert sorted(r["id"] for r in rows) == sorted([cut, "short.mrc"]) and len(os.fsencode(cut)) == 95
        for row in rows:
            assert (tmp_path / "small_batch" / "results" / f"{row['id']}.json").is_file()
    assert "2 resumed" in err
    # Review whole15: only an id's last part was cut; a folder part named past the output's limit stayed whole
    # (mkdir results/FOLDER/: ENAMETOOLONG on eCryptfs). Each part is cut; a folder that fits keeps its name.
    (tmp_path / "deep" / ("d" * 150)).mkdir(parents=True)
    (tmp_path / "deep" / "short").mkdir()
    shutil.copy(small_mrc, tmp_path / "deep" / ("d" * 150) / "x.mrc")
    shutil.copy(small_mrc, tmp_path / "deep" / "short" / "y.mrc")
    for again in (False, True):
        code, _, err = _cli(["batch", str(tmp_path / "deep"), "-o", str(tmp_path / "deep_batch"), "--workers", "1",
                             "--kind", "squares", *(["--resume"] if again else [])], capsys)
        assert code == 0, err
        rows = json.loads((tmp_path / "deep_batch" / "summary.json").read_text())["images"]
        assert sorted(r["id"] for r in rows) == sorted([fitting_name("d" * 150, "", 100) + "/x.mrc", "short/y.mrc"])
        for row in rows:
            assert all(len(os.fsencode(part)) <= 100 for part in row["id"].split("/"))
            assert (tmp_path / "deep_batch" / "results" / f"{row['id']}.json").is_file()
    assert "2 resumed" in err


def test_a_rerun_may_replace_its_own_output_in_the_model_set_folder(tmp_path, small_mrc, capsys):
    """Review: every file in the --models folder counted as the set's, so a second run refused to replace its own
    first output there; only the manifest and the graphs it lists are the set's."""
    from ptolemy_rt.models import default_models_dir

    models = tmp_path / "set"
    shutil.copytree(default_models_dir(), models)
    image = tmp_path / "atlas.mrc"
    image.write_bytes(small_mrc.read_bytes())
    for _ in range(2):
        code, _, err = _cli(["squares", image, "--models", models, "-o", models / "r.json"], capsys)
        assert code == 0, err
    graph = json.loads((models / "manifest.json").read_text())["models"]["square_cnn"]["file"]
    for target in ("manifest.json", graph):
        before = (models / target).read_bytes()
        code, _, err = _cli(["squares", image, "--models", models, "-o", models / target], capsys)
        assert code == 2 and "would overwrite a file of the model set" in err, err
        assert (models / target).read_bytes() == before


def test_a_closed_stderr_keeps_the_exit_code_and_stdout_clean(tmp_path, small_mrc):
    """Review: with file descriptor 2 closed (`2>&-`) sys.stderr is None: a successful run exited 1 (flush on
    None) and an error line went to stdout (print(file=None))."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    script = "import sys; from ptolemy_rt.cli import run; sys.argv[0] = 'ptolemy-rt'; run()"
    for args, code in ((f"squares {small_mrc} --no-score -o {tmp_path / 'r.json'}", 0),
                       (f"squares {tmp_path / 'missing.mrc'}", 2)):
        r = subprocess.run(["bash", "-c", f'"$0" -c "$1" {args} 2>&-', sys.executable, script],
                           capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == code and "error" not in r.stdout, (args, r.returncode, r.stdout)
    assert (tmp_path / "r.json").is_file()


class _FullStdout:
    """A stdout on a full disk: every write and flush fails with ENOSPC."""

    def write(self, text):
        raise OSError(28, "No space left on device")

    def flush(self):
        raise OSError(28, "No space left on device")


@pytest.mark.parametrize("args", [["doctor"], ["models"], ["leginon-script", "holes"], ["--version"],
                                  ["squares", "--help"], ["squares", "{image}", "--no-score"]])
def test_a_stdout_that_cannot_be_written_is_an_output_error(small_mrc, capsys, monkeypatch, args):
    """Fuzz (stdout_commands): doctor, models, leginon-script and demo print() their reports, whose OSError on a
    full disk (`>/dev/full`) was an internal error (exit 70); argparse swallowed it for --help and --version
    (exit 0, the text lost). Now exit 4 with one line naming standard output."""
    monkeypatch.setattr(sys, "stdout", _FullStdout())
    argv = [a.format(image=small_mrc) for a in args]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 4, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "standard output: cannot be written (No space left on device)" in lines[0], err


@pytest.mark.parametrize("args,code", [("doctor", 4), ("--version", 4), ("squares {image} --no-score", 4),
                                       ("squares {image} --no-score -o {out}", 0)])
def test_a_closed_stdout_is_an_output_error(tmp_path, small_mrc, args, code):
    """Fuzz (stdout_commands): with descriptor 1 closed (`>&-`) a result for stdout was an AttributeError on None
    (exit 70), a report silently dropped (exit 0). Now exit 4 naming standard output; a result for a file is
    written as before. (That /dev/null then holds the closed descriptors, so that no file takes their number:
    test_closed_standard_descriptors_are_opened_on_dev_null and the entries' wiring test.)"""
    out = tmp_path / "r.json"
    script = f'"$0" -m ptolemy_rt {args.format(image=small_mrc, out=out)} >&- 2>"$1"; echo $?'
    err = tmp_path / "err.txt"
    r = subprocess.run(["bash", "-c", script, sys.executable, str(err)], capture_output=True, text=True,
                       env=_env(), timeout=120, check=False)
    assert int(r.stdout.split()[0]) == code, (r.stdout, err.read_text())
    text = err.read_text()
    if code:
        assert text.count("error:") == 1 and "standard output: closed before the result was written" in text, text
    else:
        assert out.is_file() and not text


def test_closed_standard_descriptors_are_opened_on_dev_null(tmp_path, small_mrc):
    """The script entry (cli.run) opens a closed 1 or 2 on /dev/null before anything else opens a file."""
    script = ("import os, sys; from ptolemy_rt import cli; cli._open_standard_descriptors(); "
              "sys.stdin.close(); print(os.readlink('/proc/self/fd/1'), os.readlink('/proc/self/fd/2'), "
              "os.get_inheritable(2), file=open(sys.argv[1], 'w'))")
    report = tmp_path / "fds.txt"
    subprocess.run(["bash", "-c", '"$0" -c "$1" "$2" >&- 2>&-', sys.executable, script, str(report)],
                   env=_env(), timeout=60, check=True)
    assert report.read_text().split() == ["/dev/null", "/dev/null", "True"]


def test_the_command_line_entries_open_closed_descriptors_and_the_library_does_not(monkeypatch, capsys):
    """main() without argv (the process's command line: the ptolemy-rt script through run(), the Leginon script
    calling main() itself) opens closed descriptors 0-2 first; main(argv) from a library leaves them alone."""
    from ptolemy_rt import cli

    calls = []
    monkeypatch.setattr(cli, "_open_standard_descriptors", lambda: calls.append("opened"))
    monkeypatch.setattr(sys, "argv", ["ptolemy-rt", "models"])
    assert cli.main() == 0 and calls == ["opened"]
    assert cli.main(["models"]) == 0 and calls == ["opened"]
    monkeypatch.setattr(cli.os, "_exit", lambda code: calls.append(code))
    monkeypatch.setattr(cli, "_one_blas_thread", lambda: None)
    cli.run()
    assert calls == ["opened", "opened", 0]


_NAN, _INF = float("nan"), float("inf")


@pytest.mark.parametrize("kwargs,error,named", [
    ({"window": _NAN}, "OptionError", "window"), ({"window": _INF}, "OptionError", "window"),
    ({"window": 10**12}, "OptionError", "window"), ({"window": 0.5}, "OptionError", "window"),
    ({"window": 2.5}, "OptionError", "window"), ({"window": 10**400}, "OptionError", "window"),
    ({"window": "5"}, "TypeError", "window"), ({"window": True}, "TypeError", "window"),
    ({"min_area": _INF}, "OptionError", "min_area"), ({"min_area": "10"}, "TypeError", "min_area"),
    ({"batch_size": 0}, "OptionError", "batch_size"), ({"batch_size": _NAN}, "OptionError", "batch_size"),
    ({"compat": "yes"}, "TypeError", "compat"), ({"seams": None}, "TypeError", "seams"),
    ({"options": "x"}, "TypeError", "options"), ({"section": "0"}, "ShapeError", "section"),
    ({"section": True}, "ShapeError", "section"), ({"models": 123}, "TypeError", "models"),
])
def test_find_squares_names_a_bad_keyword(kwargs, error, named):
    """Fuzz (api_options): window=inf was exit 70 (OverflowError), NaN "cannot convert float NaN to integer",
    1e12 an allocation numpy refused; "5", True, "yes" and batch_size=0 were taken; options=HoleOptions()
    an AttributeError (70). Now a TypeError or an OptionError naming the argument, before any work."""
    import ptolemy_rt

    data = np.random.default_rng(0).poisson(50, (300, 300)).astype(np.float32)
    kwargs = {"models": False, **kwargs}
    if kwargs.get("options") == "x":
        kwargs["options"] = ptolemy_rt.HoleOptions()
    with pytest.raises((TypeError, ptolemy_rt.PtolemyError)) as info:
        ptolemy_rt.find_squares(data, **kwargs)
    assert type(info.value).__name__ == error and named in str(info.value), info.value
    assert len(str(info.value)) < 200


@pytest.mark.parametrize("kwargs,error,named", [
    ({"threshold": _NAN}, "OptionError", "threshold"), ({"threshold": -1}, "OptionError", "threshold"),
    ({"threshold": 2}, "OptionError", "threshold"), ({"threshold": "0.5"}, "TypeError", "threshold"),
    ({"edge_tolerance": _NAN}, "OptionError", "edge_tolerance"),
    ({"edge_tolerance": 1e308}, "OptionError", "edge_tolerance"),
    ({"edge_tolerance": 1e4}, "OptionError", "edge_tolerance"),
    ({"k": 0}, "OptionError", "k"), ({"k": 1.5}, "OptionError", "k"), ({"k": "6"}, "TypeError", "k"),
    ({"refine": "no"}, "TypeError", "refine"), ({"keep_off_film": "x"}, "TypeError", "keep_off_film"),
    ({"options": "square"}, "TypeError", "options"),
])
def test_find_holes_names_a_bad_keyword(kwargs, error, named):
    """Fuzz (api_options): threshold NaN, -1 or 2 gave an empty result, edge_tolerance NaN "cannot convert float
    NaN to integer", 1e308 a refused allocation and 1e4 24,470 holes in 31 s; k=1.5 a TypeError about slice
    indices, options=SquareOptions() exit 70. Now refused, named, before the U-Net runs."""
    import ptolemy_rt

    data = np.random.default_rng(0).poisson(50, (300, 300)).astype(np.float32)
    if kwargs.get("options") == "square":
        kwargs = {"options": ptolemy_rt.SquareOptions()}
    with pytest.raises((TypeError, ptolemy_rt.PtolemyError)) as info:
        ptolemy_rt.find_holes(data, **kwargs)
    assert type(info.value).__name__ == error and named in str(info.value), info.value


def test_option_values_in_range_are_taken_as_before():
    """What the command line accepts, the options accept: numpy scalars and whole floats included."""
    from ptolemy_rt import HoleOptions, SquareOptions

    SquareOptions(window=np.int64(1024), min_area=np.float32(0), batch_size=1, compat=np.bool_(True))
    SquareOptions(window=6.0, min_area=1e12)
    HoleOptions(threshold=1e-300, edge_tolerance=-1e6, k=np.int32(100), refine=np.bool_(False))
    HoleOptions.ptolemy(edge_tolerance=1000.0)
    # whole numbers are kept as int: k=6.0 passed the check, then failed as a slice index (fuzz api_options)
    assert type(HoleOptions(k=6.0).k) is int and type(SquareOptions(window=np.int64(6), batch_size=8.0).window) is int
    data = np.random.default_rng(0).poisson(50, (300, 300)).astype(np.float32)
    from ptolemy_rt import find_holes, fit_lattice

    assert find_holes(data, k=6.0).to_dict() == find_holes(data, k=6).to_dict()
    c = np.array([[20.0, 20.0], [60.0, 20.0], [20.0, 60.0], [60.0, 60.0]])
    mask = np.zeros((80, 80), bool)
    for x, y in c.astype(int):
        mask[y - 5:y + 6, x - 5:x + 6] = True
    assert fit_lattice(c, mask, k=3.0) == fit_lattice(c, mask, k=3)


def test_a_signal_handled_while_main_blocks_signals_does_not_escape(tmp_path, small_mrc, capsys, monkeypatch):
    """Fuzz (batch_signals, seed 20000138): SIGTERM arrived as main()'s clean-up blocked signals; its handler ran
    as pthread_sigmask returned and its Terminated escaped main() (a traceback, wrong exit code). The run's code
    stands (the work was done), the signal is recorded, and the mask is lifted again."""
    import ptolemy_rt.cli as cli

    real = signal.pthread_sigmask
    fired = []

    def late_signal(how, mask):
        result = real(how, mask)
        if how == signal.SIG_BLOCK and not fired:
            fired.append(how)
            cli._on_sigterm(signal.SIGTERM, None)  # the handler, run as the call returns
        return result

    monkeypatch.setattr(signal, "pthread_sigmask", late_signal)
    code = main(["squares", str(small_mrc), "--no-score", "-o", str(tmp_path / "r.json")])
    assert code == 0 and fired and (tmp_path / "r.json").is_file()
    assert signal.SIGTERM not in real(signal.SIG_BLOCK, set())  # unblocked again


def test_a_signal_handled_while_an_error_is_reported_exits_130(tmp_path, small_mrc, capsys, monkeypatch):
    """A signal whose handler runs in main()'s `except PtolemyError` branch (printing the error line) escaped
    main() past the other branches: a traceback. Now the clean-up runs and main() returns 130."""
    import ptolemy_rt.cli as cli

    real = cli._print_error
    fired = []

    def signal_while_printing(line):
        if not fired:
            fired.append(line)
            cli._on_sigterm(signal.SIGTERM, None)
        real(line)

    monkeypatch.setattr(cli, "_print_error", signal_while_printing)
    assert main(["squares", str(small_mrc), "--models", str(tmp_path / "none")]) == 130
    assert fired and "none" in fired[0] and "interrupted" in capsys.readouterr().err


def test_clean_text_makes_undecodable_file_name_bytes_text():
    from ptolemy_rt.errors import clean_text, one_line

    assert clean_text("plain été 😀") == "plain été 😀"
    assert clean_text("envt/\udcc3\udca9t\udcc3\udca9.mrc") == "envt/été.mrc"  # LANG=C's view of "été"
    assert clean_text("a\udcffb") == "a\\xffb" and clean_text("x\ud800y") == "x\\ud800y"
    assert one_line("error: \udcc3\udca9\n.mrc") == "error: é\\n.mrc"


def test_a_non_ascii_image_name_under_lang_c_gives_the_same_bytes(tmp_path, small_mrc):
    """Fuzz (environment): under LANG=C Python keeps a non-ASCII name as lone surrogates, which the JSON wrote as
    "\\udcc3\\udca9": another output than under a UTF-8 locale, and no valid Unicode."""
    image = tmp_path / "été atlas.mrc"
    image.write_bytes(small_mrc.read_bytes())
    outputs = []
    for locale in ("C.UTF-8", "C"):
        out = tmp_path / f"r-{locale}.json"
        env = {**_env(), "LANG": locale, "LC_ALL": locale, "PYTHONUTF8": "0"}
        subprocess.run([sys.executable, "-m", "ptolemy_rt", "squares", str(image), "--no-score", "-o", str(out)],
                       env=env, timeout=120, check=True)
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] and b"\\u00e9t\\u00e9 atlas.mrc" in outputs[0]


def test_every_json_the_package_writes_refuses_infinity_and_nan():
    """Python's json writes Infinity and NaN, which no JSON reader takes: every json.dump(s) in ptolemy_rt passes
    allow_nan=False (an error then, never an unreadable file), except an error message quoting a value."""
    import ast

    import ptolemy_rt

    quoting = {("manifest.py", "_check_fields")}  # `got NaN` in a one-line message is text, not a JSON file
    missing = []
    for path in sorted(Path(ptolemy_rt.__file__).parent.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        exempt = [range(f.lineno, f.end_lineno + 1) for f in ast.walk(tree)
                  if isinstance(f, ast.FunctionDef) and (path.name, f.name) in quoting]
        for call in ast.walk(tree):
            if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                    and call.func.attr in ("dump", "dumps") and isinstance(call.func.value, ast.Name)
                    and call.func.value.id == "json" and not any(call.lineno in r for r in exempt)):
                nan = [k for k in call.keywords if k.arg == "allow_nan"]
                if not (nan and isinstance(nan[0].value, ast.Constant) and nan[0].value.value is False):
                    missing.append(f"{path.relative_to(path.parents[1])}:{call.lineno}")
    assert missing == []


def test_a_signal_as_a_temporary_file_is_created_leaves_nothing(tmp_path, monkeypatch):
    """Fuzz (batch_signals, seed 70000009): a signal whose handler raised just after tempfile.mkstemp had created
    the temporary file, before its name came back, left it behind ('.atlas_7.mrc.jpg.5a81brl5.tmp'): nothing
    knew its name. The name is now registered before the file is created, and the clean-up removes it."""
    from ptolemy_rt import outputs

    real = os.open

    def open_then_interrupt(path, flags, *args, **kw):
        fd = real(path, flags, *args, **kw)
        if str(path).endswith(".tmp"):
            os.close(fd)
            raise KeyboardInterrupt  # the handler, run as the call returns
        return fd

    monkeypatch.setattr(os, "open", open_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "r.json", b"{}")
    monkeypatch.undo()
    outputs.remove_temporaries()
    assert list(tmp_path.iterdir()) == []
