"""The fuzzing campaign's one oracle (issue 18): every case ends as a clear error with a non-zero exit,
or as a correct result. Anything else is a failure: a traceback, an error that is not one line, a
hang, a bad input accepted or a wrong result, leftovers (an output made on error, a staging folder,
a file in $TMPDIR), or data loss (a user's file changed). Counts per family and outcome are kept for
the session and printed at its end (conftest.pytest_terminal_summary)."""
from __future__ import annotations

from collections import Counter, defaultdict
import contextlib
from dataclasses import dataclass
import io
import os
from pathlib import Path
import signal
import tempfile
import traceback

from moa_edge.cli import main

CLEAN, CORRECT = "clean error", "correct result"
UNVERIFIED = "accepted, outputs not run (build budget)"
OK_OUTCOMES = (CLEAN, CORRECT, UNVERIFIED)
COUNTS: dict[str, Counter] = defaultdict(Counter)
# family -> (kind of failure, group of cases) -> (case, detail): the shortest case of each is kept
FAILURES: dict[str, dict[tuple[str, str], tuple[str, str]]] = defaultdict(dict)


class Hang(BaseException):
    """Raised by SIGALRM: not an Exception, so that nothing in the CLI swallows it."""


@dataclass
class Result:
    code: int | None
    stdout: str
    stderr: str
    crash: str | None = None  # an exception that escaped main(), formatted
    hung: bool = False


def _alarm(signum, frame):
    raise Hang()


def run_cli(argv, tmpdir: Path, cwd: Path | None = None, timeout: int = 120) -> Result:
    """moa_edge.cli.main(argv) in this process, with $TMPDIR (and tempfile's cached copy) pointed at
    tmpdir, stdout and stderr captured, and a time limit."""
    argv = [str(a) for a in argv]
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_tempdir, saved_cwd = os.environ.get("TMPDIR"), tempfile.tempdir, os.getcwd()
    os.environ["TMPDIR"], tempfile.tempdir = str(tmpdir), str(tmpdir)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    code, crash, hung = None, None, False
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 1
    except Hang:
        hung = True
    except BaseException:  # noqa: BLE001 - any escape is the finding
        crash = traceback.format_exc()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        os.chdir(saved_cwd)
        tempfile.tempdir = saved_tempdir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
    return Result(code, out.getvalue(), err.getvalue(), crash, hung)


def snapshot(folder: Path) -> dict:
    """Every entry under folder: file bytes, link targets, None for folders (links not followed)."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            rel = p.relative_to(folder).as_posix()
            out[rel] = ("link", os.readlink(p)) if p.is_symlink() else None if p.is_dir() else p.read_bytes()
    return out


def _one_clear_error(stderr: str) -> bool:
    """One `moa-edge: error:` (or `interrupted`) message after any progress lines; it may go on over
    further lines (a board file's problems, one a line) but holds no second message. argparse's
    usage plus its one error line counts too. (split on \\n only: a path may hold other line breaks.)"""
    lines = [line for line in stderr.split("\n") if line.strip() and not line.startswith("  .. ")]
    if lines and lines[0].startswith("usage:"):
        return ": error:" in lines[-1]
    return (bool(lines) and lines[0].startswith(("moa-edge: error:", "moa-edge: interrupted ("))
            and not any(line.startswith("moa-edge:") for line in lines[1:]))


def leftovers(tmpdir: Path, parents: list[Path]) -> list[str]:
    """Files in $TMPDIR, and convert's staging or set-aside folders beside its output."""
    found = [f"$TMPDIR/{p.name}" for p in Path(tmpdir).iterdir()]
    for parent in parents:
        if parent.is_dir():
            found += [str(p) for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]
    return found


def judge(family: str, case: str, r: Result, *, group: str = "", tmpdir: Path, precious: dict[Path, dict] = {},
          absent_on_error: list[Path] = (), staging_parents: list[Path] = (), check=None) -> str:
    """Classify one case, count it, and keep it if it failed. precious: folder -> snapshot taken before
    the call, which must be unchanged (on error always; on success too, for folders the verb does not
    write). check() is called on exit 0: None (correct), UNVERIFIED, or what is wrong. group: the
    kind of case (a failure is kept per kind of failure and group)."""
    problems = []
    for folder, before in precious.items():
        after = snapshot(folder)
        lost = sorted(k for k in before if after.get(k, "?") != before[k])  # new entries are not a loss
        if lost:
            problems.append(("data loss", f"{folder}: changed or removed {lost[:5]}"))
    if r.hung:
        problems.append(("hang", "no exit within the time limit"))
    elif r.crash or "Traceback" in r.stderr:
        problems.append(("traceback", (r.crash or r.stderr).strip().splitlines()[-1]))
    elif r.code == 0:
        try:
            verdict = check() if check else None
        except Exception as exc:  # noqa: BLE001 - the result could not even be read back
            verdict = f"the oracle could not check the result: {type(exc).__name__}: {exc}"
        if verdict not in (None, UNVERIFIED):
            problems.append(("accepted but wrong", verdict))
    elif not _one_clear_error(r.stderr):
        problems.append(("unclear error", f"exit {r.code}, stderr {r.stderr.strip()[-300:]!r}"))
    else:
        made = [str(p) for p in absent_on_error if os.path.lexists(p)]
        if made:
            problems.append(("output left on error", ", ".join(made)))
    left = leftovers(tmpdir, list(staging_parents))
    if left:
        problems.append(("leftovers", ", ".join(left[:5])))
    if problems:
        for kind, detail in problems:
            kept = FAILURES[family].get((kind, group))
            if kept is None or len(case) < len(kept[0]):
                FAILURES[family][(kind, group)] = (case, detail)
        outcome = "FAILED: " + problems[0][0]
    elif r.code == 0:
        outcome = UNVERIFIED if (check and verdict == UNVERIFIED) else CORRECT
    else:
        outcome = CLEAN
    COUNTS[family][outcome] += 1
    return outcome


def failure_report(family: str) -> str:
    """What went wrong in a family: one (shortest) example per kind of failure and group of cases."""
    counts = ", ".join(f"{n} {o}" for o, n in sorted(COUNTS[family].items()))
    lines = [f"fuzz {family}: {counts}"]
    for (kind, _), (case, detail) in sorted(FAILURES[family].items()):
        lines.append(f"  {kind}: {case}\n      -> {detail}")
    return "\n".join(lines)


def summary_lines() -> list[str]:
    lines = []
    for family in sorted(COUNTS):
        counts = COUNTS[family]
        ok = sum(counts[o] for o in OK_OUTCOMES)
        parts = ", ".join(f"{n} {o}" for o, n in sorted(counts.items()))
        lines.append(f"{family}: {sum(counts.values())} cases, {ok} ok ({parts})")
    return lines
