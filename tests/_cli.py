"""Run the `medmtl` entry point in this process (the one-line error path included)."""

from __future__ import annotations

import pytest

from medmtl.cli import main


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`medmtl ARGS` in this process: (exit status, stderr)."""
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err
