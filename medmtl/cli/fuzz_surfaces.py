"""The fuzz suite of the command line's newer surfaces (issue #24): hostile `train --config` YAMLs
(an alias bomb among them), `tune --storage` URLs, `.onnx` files given as `val --weights`,
`--teacher` runs, corrections and trusted-label CSVs, method specs and checkpoints holding code.

Each `SurfaceCase` (built by `medmtl.cli.fuzz_surface_cases`) is a `medmtl` command line that
must be refused the way every bad input is: exit status 2 and one ``error:`` line that names the
input (the file, or the option), never a traceback, never a hang (a timer in this process, or a
fresh process with a hard timeout for a case that could hang where a signal cannot interrupt it),
never silently accepted. `run_surfaces` returns the totals and the failing cases
(tests/test_fuzz_surfaces.py)."""

from __future__ import annotations

import contextlib
import io
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from medmtl.cli import main

STATUSES = ("refused", "traceback", "hang", "accepted", "unnamed", "wrong_exit", "not_one_line")


@dataclass
class SurfaceCase:
    """A hostile input on one surface: the command line, and what its error line must say."""

    surface: str  # config | storage | onnx | teacher | corrections | trusted | spec | checkpoint
    name: str
    args: list[str]
    names: list[str]  # the error line must hold one of these (the file, or the option)
    must: list[str] = field(default_factory=list)  # ... and all of these
    must_not: list[str] = field(default_factory=list)  # ... and none of these
    fresh_process: bool = False  # run as `python -m medmtl` under a hard timeout


@dataclass
class SurfaceOutcome:
    status: str  # one of STATUSES
    code: int | None = None
    line: str = ""
    seconds: float = 0.0


class _Hang(BaseException):
    """Raised by the timer in a case that ran past its time (BaseException: no `except
    Exception` in medmtl swallows it)."""


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Raise `_Hang` after `seconds` (SIGALRM; only in the main thread, elsewhere no timer)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _fire(_sig: int, _frame: Any) -> None:
        raise _Hang()

    old = signal.signal(signal.SIGALRM, _fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _in_process(args: list[str], timeout: float) -> tuple[int | None, str, str | None]:
    """(exit status, stderr, what went wrong: "traceback" | "hang" | None) of `medmtl ARGS`."""
    err, out = io.StringIO(), io.StringIO()
    code: int | None = 0
    problem = None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            with _deadline(timeout):
                main(args)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except _Hang:
            code, problem = None, "hang"
        except Exception as e:  # noqa: BLE001 -- exactly what the contract forbids
            code, problem = None, "traceback"
            err.write(f"Traceback: {type(e).__name__}: {str(e)[:300]}\n")
    return code, err.getvalue(), problem


def _fresh(args: list[str], timeout: float) -> tuple[int | None, str, str | None]:
    try:
        p = subprocess.run([sys.executable, "-m", "medmtl", *args], capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "", "hang"
    return p.returncode, p.stderr, "traceback" if "Traceback" in p.stderr else None


def judge(case: SurfaceCase, code: int | None, stderr: str, problem: str | None,
          ) -> SurfaceOutcome:
    """The outcome of one run against the contract (see the module docstring)."""
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    line = errors[-1] if errors else ""
    if problem is not None:
        return SurfaceOutcome(problem, code, (stderr.strip().splitlines() or [""])[-1][:300])
    if code == 0:
        return SurfaceOutcome("accepted", code, stderr[-300:])
    if code != 2:
        return SurfaceOutcome("wrong_exit", code, line or stderr[-300:])
    if len(errors) != 1 or stderr.strip().splitlines()[-1] != line:
        return SurfaceOutcome("not_one_line", code, stderr[-300:])
    if not any(n in line for n in case.names) or not all(m in line for m in case.must) or \
            any(m in line for m in case.must_not):
        return SurfaceOutcome("unnamed", code, line[:400])
    return SurfaceOutcome("refused", code, line)


def run_case(case: SurfaceCase, timeout: float = 90.0) -> SurfaceOutcome:
    import time

    t0 = time.perf_counter()
    run = _fresh if case.fresh_process else _in_process
    out = judge(case, *run(case.args, timeout))
    out.seconds = time.perf_counter() - t0
    return out


def run_surfaces(cases: list[SurfaceCase], timeout: float = 90.0) -> dict[str, Any]:
    """Every case once; the totals per status and surface, and the failures (all of them)."""
    totals: Counter[str] = Counter()
    per_surface: Counter[str] = Counter()
    failures: list[dict[str, Any]] = []
    seconds = 0.0
    for c in cases:
        out = run_case(c, timeout)
        totals[out.status] += 1
        per_surface[c.surface] += 1
        seconds += out.seconds
        if out.status != "refused":
            failures.append({"surface": c.surface, "case": c.name, "status": out.status,
                             "exit": out.code, "line": out.line})
    return {"cases": len(cases), **{s: totals[s] for s in STATUSES},
            "surfaces": dict(per_surface), "seconds": round(seconds, 1), "failures": failures}


def summary_line(t: dict[str, Any]) -> str:
    per = ", ".join(f"{k} {v}" for k, v in t["surfaces"].items())
    return (f"surface fuzz: {t['cases']} cases ({per}): {t['refused']} refused in one named "
            f"line, {t['traceback']} tracebacks, {t['hang']} hangs, {t['accepted']} accepted, "
            f"{t['unnamed'] + t['wrong_exit'] + t['not_one_line']} other failures in "
            f"{t['seconds']:.0f} s")


__all__ = ["STATUSES", "SurfaceCase", "SurfaceOutcome", "judge", "run_case", "run_surfaces",
           "summary_line"]
