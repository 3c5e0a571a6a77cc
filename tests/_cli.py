"""Run the `medmtl` entry point in this process (the one-line error path included)."""

from __future__ import annotations

import pytest

from medmtl.cli import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`medmtl ARGS` in this process: (exit status, stdout, stderr)."""
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`medmtl ARGS` in this process: (exit status, stderr)."""
    code, _, err = run_cli(args, capsys)
    return code, err
