"""Run fuzz cases and count defects per class.

In-process cases run in worker processes (a segfault kills the worker, not the run: the parent sees which
case was in flight, records it, and starts a new worker after it). Command-line cases run one subprocess each.
Per case: no segfault, no traceback, no foreign exception, no hang (> 60 s), peak RSS < 1.5 GB, the right exit
code, no temporary or partial file left, no special file written through, the same bytes when run again.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HANG_S = 60.0
RSS_LIMIT_MB = 1536.0
# Every process the fuzzer starts gets this much address space: a case that reads without bound fails with a
# MemoryError (and is reported as "memory") instead of taking the shared machine's memory.
ADDRESS_SPACE = 6 << 30


def _limits(fsize: int | None = None, close_stdout: bool = False):
    """preexec_fn for a child: the address-space cap, and a file-size limit when asked (a disk filling up);
    `close_stdout`: start it with descriptor 1 closed (`>&-`)."""
    def apply() -> None:
        import resource

        # as a terminal's shell starts it: a fuzz run started under nohup would hand down an ignored SIGHUP
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
        if fsize:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        if close_stdout:
            os.close(1)

    return apply
DEFECTS = ("segfault", "traceback", "foreign", "hang", "memory", "wrong_exit", "leftovers", "special_written",
           "nondeterministic", "bad_message", "wrong_value")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


# ---------------------------------------------------------------------------------------------- worker side


def _reset_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _no_nan(result) -> None:
    json.dumps(result.to_dict(), allow_nan=False)  # ValueError (a foreign exception) when NaN is written


def _api(case: dict) -> tuple[int | None, str]:
    """Run one in-process case: (exit code it maps to, or None for a foreign exception; detail)."""
    import numpy as np

    from ptolemy_rt.errors import PtolemyError

    call = case["call"]
    try:
        with contextlib.redirect_stderr(io.StringIO()), np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if call == "read_segment":
                    from ptolemy_rt import find_squares, read_image
                    from ptolemy_rt.mixture import segment

                    image = read_image(case["path"], section=case.get("section"),
                                       permissive=case.get("permissive", False))
                    if min(image.shape) >= 256:
                        _no_nan(find_squares(image, models=False))
                    else:
                        segment(image.data)
                elif call == "array_squares":
                    from ptolemy_rt import find_squares

                    data = np.load(case["path"])
                    first = find_squares(data, models=False)
                    _no_nan(first)
                    again = find_squares(data.copy(), models=False)
                    if json.dumps(first.to_dict()) != json.dumps(again.to_dict()):
                        return 0, "nondeterministic"
                elif call == "load_models":
                    from ptolemy_rt.models import load_models

                    load_models(case["path"])
                elif call == "main":
                    return _main_case(case)
                elif call == "api_kwargs":
                    from .surfaces_api import run_kwargs_case

                    return run_kwargs_case(case)
                elif call == "facility":
                    from .surfaces_facility import run_facility_case

                    return run_facility_case(case)
                elif call == "decoders":
                    from .surfaces_decoders import run_decoder_case

                    return run_decoder_case(case)
                elif call == "api_array":
                    from .surfaces_api import run_array_case

                    return run_array_case(case)
                elif call == "parse":
                    from ptolemy_rt.argv import join_negative_numbers
                    from ptolemy_rt.cli import build_parser

                    try:
                        build_parser().parse_args(join_negative_numbers(case["argv"]))
                    except SystemExit as exc:
                        return int(exc.code or 0), ""
                else:
                    raise AssertionError(call)
        return 0, ""
    except PtolemyError as exc:
        message = str(exc)
        if case.get("named") and (Path(case["path"]).name not in message or "\n" in message):
            return exc.exit_code, f"!bad_message: {message[:300]!r}"
        return exc.exit_code, message[:200]
    except Exception as exc:  # noqa: BLE001 -- what the fuzzer looks for
        return None, f"{type(exc).__name__}: {str(exc)[:200]}"


def _leftovers(folder: Path) -> list[str]:
    """Temporary or half-written files an interrupted or failed write left behind."""
    return [p.name for p in folder.rglob("*") if p.name.startswith(".") and p.name.endswith((".tmp", ".old"))]


def _run_main(argv: list[str]) -> tuple[int, str, str]:
    """cli.main(argv) in this process: (exit code, stdout, stderr)."""
    from ptolemy_rt.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return int(code), out.getvalue(), err.getvalue()


def _tamper(edits: list[dict]) -> None:
    """Damage files an earlier run wrote: set a field of a JSON row, or replace the bytes."""
    import glob

    for edit in edits:
        for path in sorted(glob.glob(edit["glob"])):
            if "special" in edit:  # a FIFO, /dev/zero behind a link, a folder in the file's place
                with contextlib.suppress(OSError):
                    os.unlink(path)
                    {"fifo": os.mkfifo, "dir": os.mkdir,
                     "zero": lambda p: os.symlink("/dev/zero", p)}[edit["special"]](path)
                continue
            if "text" in edit:
                Path(path).write_text(edit["text"])
                continue
            try:
                data = json.loads(Path(path).read_text())
                target = data.get("row", data) if isinstance(data, dict) else data
                if isinstance(target, dict):
                    target[edit["field"]] = edit["value"]
                Path(path).write_text(json.dumps(data))
            except (OSError, ValueError, RecursionError):
                pass


def _refuse_constant(name: str):
    raise ValueError(f"{name} written in the JSON output")


def _close(got, want) -> bool:
    """Equal, floats (and lists of them) to 1e-9."""
    import math

    if isinstance(got, list) and isinstance(want, list):
        return len(got) == len(want) and all(_close(g, w) for g, w in zip(got, want))
    if isinstance(got, float) and isinstance(want, float):
        return math.isclose(got, want, rel_tol=1e-9)
    return got == want


def _json_values(checks: list) -> str:
    """'' when each [file, keys, value] holds (the JSON file's value at keys is value, to 1e-9), else what differs."""

    for path, keys, want in checks:
        try:
            got = json.loads(Path(path).read_text())
            for key in keys:
                got = got[key]
        except (OSError, ValueError, LookupError, TypeError) as exc:
            return f"{path}: no {keys} ({type(exc).__name__}: {exc})"
        if not _close(got, want):
            return f"{path}: {keys} is {got!r}, not {want!r}"
    return ""


def _main_case(case: dict) -> tuple[int | None, str]:
    """Run an in-process command line and check what it left: (exit code, detail; '!outcome: ...' on a defect)."""
    argv = case["argv"]
    if case.get("before"):  # an earlier run whose outputs are then damaged (tamper)
        _run_main(case["before"])
        _tamper(case.get("tamper", []))
    code, out, err = _run_main(argv)
    if "Traceback" in err or "Exception ignored" in err:
        return code, "!traceback: " + err.strip()[-300:]
    if code not in case["expect"]:
        return code, f"exit {code}: {err.strip()[-300:]}"
    # batch: a line per failed image; doctor: a report on stdout; models --validate: a line per problem
    if code != 0 and argv[0] not in ("batch", "doctor") and "--validate" not in argv:
        errors = [line for line in err.splitlines() if line.startswith("error:") or ": error: " in line]
        if len(errors) != 1:
            return code, f"!bad_message: {len(errors)} error lines: {err.strip()[-300:]!r}"
        if case.get("names") and case["names"] not in errors[0]:
            return code, f"!bad_message: the error does not name {case['names']}: {errors[0][-300:]!r}"
    if case.get("outdir"):
        left = _leftovers(Path(case["outdir"]))
        if left:
            return code, f"!leftovers: {left}"
    for path in case.get("absent", []):
        if os.path.lexists(path):
            return code, f"!leftovers: {path} exists"
    together = case.get("together", [])
    if code == 0 or together:
        present = [os.path.exists(p) for p in together]
        if any(present) and not all(present):
            return code, f"!leftovers: part of a set written: {dict(zip(together, present))}"
    batch = case.get("batch_out")
    if batch and code in (0, 2) and os.path.isdir(batch):
        try:
            json.loads((Path(batch) / "summary.json").read_text())
        except (OSError, ValueError) as exc:
            return code, f"!wrong_exit: summary.json unreadable after exit {code} ({exc})"
        left = _leftovers(Path(batch))
        if left:
            return code, f"!leftovers: {left}"
    for path in case.get("rerun", []):
        if path.endswith(".json") and os.path.exists(path):
            try:
                json.loads(Path(path).read_text(), parse_constant=_refuse_constant)
            except ValueError as exc:
                return code, f"!wrong_exit: {path}: {exc}"
    if code == 0:
        wrong = _json_values(case.get("expect_json", []))
        if wrong:
            return code, "!wrong_value: " + wrong
    rerun = [p for p in case.get("rerun", []) if os.path.exists(p)]
    if code == 0 and (rerun or case.get("rerun") is not None):
        first = [Path(p).read_bytes() for p in rerun]
        code2, out2, _ = _run_main(argv)
        if code2 != code or out2 != out or first != [Path(p).read_bytes() for p in rerun]:
            return code, f"!nondeterministic: rerun exit {code2}, outputs differ"
    return code, ""


def worker(stream=sys.stdin, out=sys.stdout) -> None:
    """Read cases (JSON lines) and print one result line per case, after a 'start' line."""
    for line in stream:
        case = json.loads(line)
        print(json.dumps({"start": case["id"]}), file=out, flush=True)
        _reset_peak()
        t0 = time.perf_counter()
        code, detail = _api(case)
        outcome = _judge_code(case, code, detail)
        print(json.dumps({"id": case["id"], "outcome": outcome, "code": code, "detail": detail,
                          "rss_mb": _peak_mb(), "seconds": time.perf_counter() - t0}), file=out, flush=True)


def _judge_code(case: dict, code: int | None, detail: str) -> str:
    if code is None:
        return "foreign"
    if detail == "nondeterministic":
        return "nondeterministic"
    if detail.startswith("!"):
        return detail[1:].split(":", 1)[0]
    return "ok" if code in case["expect"] else "wrong_exit"


# ---------------------------------------------------------------------------------------------- CLI cases


def _spawn(argv: list[str], d: Path, tag: str, fsize: int | None = None, stdout: str | None = None,
           env: dict | None = None, group: bool = False) -> tuple[subprocess.Popen, Path, Path]:
    """Start the command line; `fsize`: a file-size limit (a disk that fills up), `stdout`: where stdout goes (a
    path, "closed" or "pipe": a pipe whose reader is gone), `env`: variables set (or replaced) for it, `group`:
    in a process group of its own (a signal to the group reaches its workers too)."""
    special = stdout in ("closed", "pipe")
    out, err = Path(d / f"{tag}.stdout" if special or not stdout else stdout), d / f"{tag}.stderr"
    variables = {**_env(), **(env or {})}
    with open(out, "wb") as fo, open(err, "wb") as fe:
        p = subprocess.Popen([sys.executable, "-m", "ptolemy_rt", *argv],
                             stdout=subprocess.PIPE if stdout == "pipe" else fo, stderr=fe, env=variables,
                             stdin=subprocess.DEVNULL, cwd=d, start_new_session=group,
                             preexec_fn=_limits(fsize, close_stdout=stdout == "closed"))
    if stdout == "pipe":
        assert p.stdout
        p.stdout.close()
    return p, out, err


def _wait(p: subprocess.Popen, deadline: float) -> tuple[int | None, float]:
    """Wait with a deadline; (exit code as Popen reports it or None on a hang, peak RSS in MB)."""
    while True:
        try:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        except ChildProcessError:  # already reaped by subprocess itself
            return p.returncode, 0.0
        if pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            return p.returncode, usage.ru_maxrss / 1024.0
        if time.monotonic() > deadline:
            p.kill()
            _, status, usage = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            return None, usage.ru_maxrss / 1024.0
        time.sleep(0.02)


def _reference(image: str, cache: dict) -> bytes:
    if image not in cache:
        r = subprocess.run([sys.executable, "-m", "ptolemy_rt", "squares", image, "--no-score"],
                           capture_output=True, env=_env(), timeout=120, check=False)
        cache[image] = r.stdout
    return cache[image]


def _mutate(changes: list[dict], image: str | None) -> None:
    """Change input files under a running command: remove, cut, overwrite with garbage, replace by a folder, a
    FIFO or a symlink loop, append to, or add a file beside."""
    for change in changes:
        path = Path(change["path"])
        op = change["op"]
        if op in ("dir", "fifo", "loop"):
            with contextlib.suppress(OSError):
                path.unlink()
        if op in ("truncate", "garbage", "grow") and (path.is_symlink() or not path.is_file()):
            continue  # an earlier change made it a FIFO (the open would wait for a reader), a folder or a loop
        with contextlib.suppress(OSError):
            if op == "unlink":
                path.unlink()
            elif op == "truncate":
                os.truncate(path, 1500)
            elif op == "garbage":
                path.write_bytes(b"\xff" * 4096)
            elif op == "dir":
                path.mkdir()
            elif op == "fifo":
                os.mkfifo(path)
            elif op == "loop":
                path.symlink_to(path)
            elif op == "grow":
                with open(path, "ab") as fh:
                    fh.write(b"\0" * 65536)
            elif op == "new" and image:
                shutil.copyfile(image, path.with_name("added_" + path.name))


# What site.py prints for a .pth file whose line failed (here: an import the Ctrl-C broke), before it goes on.
_SITE_BLOCK = re.compile(r"Error processing line \d+ of [^\n]*\.pth:\n.*?\nRemainder of file ignored\n?", re.S)


# A frame of the package's own code: a file in its folder.
_OWN_FRAME = re.compile(r"[/\\]ptolemy_rt[/\\]")


def _interpreter_start_up(err: str) -> bool:
    """Whether stderr is the interpreter's own, interrupted while it started (fuzz signals 130000000): exit 1 with
    "Fatal Python error: init_import_site" (or init_sys_streams), or -2 with a KeyboardInterrupt traceback of
    frozen start-up modules alone (runpy finding the package). Python's SIGINT handler is in place before any
    program's code runs, so no package can answer it there (as -2/-15 before it)."""
    lines = err.strip().splitlines()
    if not lines or lines[-1] != "KeyboardInterrupt":
        return False
    frames = [line for line in lines if line.lstrip().startswith('File "')]
    # runpy's _run_code runs the package's __main__, after the package set its own handler: not start-up
    if any("_run_code" in f for f in frames):
        return False
    # the package's own code is a file in its folder; setuptools' editable finder that site runs from a .pth while
    # the interpreter starts (site-packages/__editable___ptolemy_rt_0_1_0_finder.py) is not (fuzz robust15)
    return bool(frames) and all('File "<frozen ' in f for f in frames) \
        or lines[0].startswith("Fatal Python error: init_") and not any(_OWN_FRAME.search(f) for f in frames)


def run_cli(case: dict, d: Path, image: str, golden_cache: dict) -> dict:
    """Run one command-line case and judge it."""
    t0 = time.perf_counter()
    if case.get("lone"):  # a run alone first: what the case's own runs must write
        lone, _, _ = _spawn(case["lone"], d, "lone", env=case.get("env"))
        _wait(lone, time.monotonic() + HANG_S)
    writers = int(case.get("writers", 1))
    procs = [_spawn(case["argv"], d, f"p{k}", case.get("fsize"), case.get("stdout"), case.get("env"),
                    bool(case.get("group"))) for k in range(writers)]
    if "mutate" in case:  # the input folder changes under the running command
        time.sleep(case["delay"])
        _mutate(case["mutate"], case.get("image"))
    if "signal" in case:
        time.sleep(case["delay"])
        with contextlib.suppress(ProcessLookupError):
            if case.get("group"):  # the whole process group, as a terminal's hangup reaches it
                os.killpg(procs[0][0].pid, getattr(signal, case["signal"]))
            else:
                os.kill(procs[0][0].pid, getattr(signal, case["signal"]))  # not send_signal: it would reap
    deadline = time.monotonic() + HANG_S
    results = [_wait(p, deadline) for p, _, _ in procs]
    problems: list[str] = []
    detail = ""
    rss = max(r[1] for r in results)
    for (code, _), (_, _, errf) in zip(results, procs):
        err = errf.read_bytes().decode("utf-8", "replace")
        if case.get("signal") == "SIGINT":
            err = _SITE_BLOCK.sub("", err)  # an import of a .pth file broken by the Ctrl-C: site says so, goes on
            if code in (1, -2) and _interpreter_start_up(err) and not os.path.lexists(case.get("started", "")):
                continue  # Ctrl-C while the interpreter itself started: before any of the package's code ran
        if code is None:
            problems.append("hang")
        elif code in (-11, -6, -7, -4, -8, 139, 134):
            problems.append("segfault")
        elif code not in case["expect"]:
            problems.append("wrong_exit")
            detail = f"exit {code}: {err.strip()[-200:]}"
        elif code in case.get("early", []) and os.path.lexists(case.get("started", "")):
            # killed by the signal, which is right only before Python started the package, but the run had begun
            problems.append("wrong_exit")
            detail = f"exit {code} (killed by the signal) after the run had started ({case['started']} exists)"
        if "Traceback" in err or "Exception ignored" in err:
            problems.append("traceback")
            detail = err.strip()[-300:]
        errors = [line for line in err.splitlines() if line.startswith("error:") or ": error: " in line]
        if code not in (0, None) and case.get("one_error_line") and len(errors) != 1:
            problems.append("bad_message")
            detail = f"{len(errors)} error lines: {err.strip()[-200:]!r}"
        if code == 4 and case.get("stdout_line") and (len(errors) != 1 or "standard output" not in errors[0]):
            problems.append("bad_message")
            detail = f"exit 4 without one line naming standard output: {err.strip()[-200:]!r}"
    if rss > RSS_LIMIT_MB:
        problems.append("memory")
    outdir = Path(case["outdir"])
    leftovers = _leftovers(outdir)
    if leftovers:
        problems.append("leftovers")
        detail = f"left: {leftovers}"
    for path in case.get("special", []):
        import stat

        if not stat.S_ISFIFO(os.lstat(path).st_mode):
            problems.append("special_written")
    for path in case.get("links", []):
        if not os.path.islink(path):
            problems.append("special_written")
    for path, text in case.get("unchanged", {}).items():
        if Path(path).read_text() != text:
            problems.append("special_written")
    for path in case.get("absent", []):
        if os.path.lexists(path):
            problems.append("leftovers")
            detail = f"{path} exists"
    for path, mode in case.get("modes", {}).items():
        if os.path.exists(path) and (os.stat(path).st_mode & 0o7777) != mode:
            problems.append("wrong_exit")
            detail = f"{path}: mode {oct(os.stat(path).st_mode & 0o7777)}"
    for path, magic in case.get("magic", {}).items():
        if not Path(path).is_file() or Path(path).read_bytes()[: len(magic) // 2].hex() != magic:
            problems.append("wrong_exit")
            detail = f"{path}: not the format its extension names"
    batch = case.get("batch_out")
    summary = Path(batch or ".") / "summary.json"
    # An interrupted batch may stop before (or while) writing its summary: then none, never half of one.
    if batch and os.path.isdir(batch) and (results[0][0] in (0, 2) or summary.exists()):
        try:
            json.loads(summary.read_text())
        except (OSError, ValueError) as exc:
            problems.append("leftovers")
            detail = f"summary.json unreadable after exit {results[0][0]} ({exc})"
    if case.get("golden") and all(r[0] == 0 for r in results) \
            and Path(case["golden"]).read_bytes() != _reference(case.get("golden_image", image), golden_cache):
        problems.append("nondeterministic")
        detail = "output differs from the reference run"
    if all(r[0] == 0 for r in results):
        for mine, lone_path in case.get("same_files", []):
            if not (os.path.isfile(mine) and os.path.isfile(lone_path)) \
                    or Path(mine).read_bytes() != Path(lone_path).read_bytes():
                problems.append("nondeterministic")
                detail = f"{mine} is not what a lone run wrote"
    outcome = problems[0] if problems else "ok"
    return {"id": case["id"], "outcome": outcome, "code": results[0][0], "detail": detail, "rss_mb": rss,
            "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------- parent side


class _Worker:
    def __init__(self, cwd: Path = REPO) -> None:
        # cwd: the run's scratch folder, so that a relative path in a case can never land in the repository
        self.p = subprocess.Popen([sys.executable, "-m", "tests.fuzz", "--worker"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_env(), cwd=cwd,
                                  bufsize=0, preexec_fn=_limits())
        self.buffer = b""

    def _line(self, deadline: float) -> bytes | None:
        """One line from the worker (b"" when it died), or None when none came before the deadline.

        Read straight from the pipe: select() cannot see what a buffered reader has already taken in."""
        assert self.p.stdout
        fd = self.p.stdout.fileno()
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return b""
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line + b"\n"

    def run(self, case: dict) -> dict:
        """Send one case, wait for its result; a dead or silent worker is judged here."""
        assert self.p.stdin and self.p.stdout
        t0 = time.perf_counter()
        try:
            self.p.stdin.write((json.dumps(case) + "\n").encode())
        except BrokenPipeError:
            pass
        deadline = time.monotonic() + HANG_S + 30  # + worker start-up and first compilation
        while True:
            line = self._line(deadline)
            if line is None:
                self.kill()
                return {"id": case["id"], "outcome": "hang", "detail": "no answer in time",
                        "seconds": time.perf_counter() - t0}
            if not line:
                code = self.p.wait()
                return {"id": case["id"], "outcome": "segfault" if code < 0 else "traceback",
                        "detail": f"worker died with {code}", "seconds": time.perf_counter() - t0}
            msg = json.loads(line)
            if "start" in msg:
                continue
            if msg.get("rss_mb", 0) > RSS_LIMIT_MB and msg["outcome"] == "ok":
                msg["outcome"] = "memory"
            return msg

    def alive(self) -> bool:
        return self.p.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.p.kill()
        self.p.wait()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.p.stdin
            self.p.stdin.close()
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


def _image(base: Path) -> str:
    import mrcfile

    from ptolemy_rt.synthetic import make_atlas

    data, _ = make_atlas(3, shape=(320, 320))
    path = base / "atlas.mrc"
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data)
    return str(path)


def run(schedule: list[tuple[str, int]], progress=None) -> list[dict]:
    """Run every (class, seed) of `schedule`; return one result dict per case (with cls, seed)."""
    from .generators import make_case

    results: list[dict] = []
    golden: dict = {}
    with tempfile.TemporaryDirectory(prefix="ptolemy-fuzz-") as tmp:
        base = Path(tmp)
        image = _image(base)
        w = _Worker(base)
        try:
            for n, (cls, seed) in enumerate(schedule):
                d = base / f"c{n}"
                d.mkdir()
                case = make_case(cls, seed, d, Path(image))
                case["id"] = n
                if case["kind"] == "api":
                    if not w.alive():
                        w = _Worker(base)
                    r = w.run(case)
                    if r["outcome"] in ("segfault", "hang", "traceback") and not w.alive():
                        w = _Worker(base)
                else:
                    r = run_cli(case, d, image, golden)
                r.update(cls=cls, seed=seed)
                results.append(r)
                if progress:
                    progress(n, r)
                shutil.rmtree(d, ignore_errors=True)
        finally:
            w.close()
    return results


def table(results: list[dict]) -> str:
    """Markdown table: cases and defects per class."""
    from .generators import CLASSES

    head = "| class | cases | " + " | ".join(DEFECTS) + " |"
    rows = [head, "|" + "---|" * (len(DEFECTS) + 2)]
    totals = [0] * (len(DEFECTS) + 1)
    for cls in CLASSES:
        mine = [r for r in results if r["cls"] == cls]
        counts = [len(mine)] + [sum(r["outcome"] == d for r in mine) for d in DEFECTS]
        totals = [a + b for a, b in zip(totals, counts)]
        rows.append(f"| {cls} | " + " | ".join(map(str, counts)) + " |")
    rows.append("| **all** | " + " | ".join(map(str, totals)) + " |")
    return "\n".join(rows)
