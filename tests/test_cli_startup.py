"""`medmtl --help` is quick because building the CLI imports none of the heavy libraries: torch,
torchvision, timm, ONNX Runtime, Optuna, matplotlib and cleanlab load when a command runs. Each
check runs in a fresh interpreter, since this test process has long imported all of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

HEAVY = ("torch", "torchvision", "timm", "onnxruntime", "optuna", "matplotlib", "cleanlab")

# runs `medmtl ARGS` in a fresh interpreter, then prints the heavy modules it imported as JSON
_PROBE = """
import json, sys
from medmtl.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(json.dumps({{"code": code, "heavy": [m for m in {heavy!r} if m in sys.modules]}}))
"""


def _probe(args: list[str]) -> tuple[dict, str, float]:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=HEAVY), *args],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "120"})
    seconds = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr
    out = res.stdout.rstrip().splitlines()
    return json.loads(out[-1]), "\n".join(out[:-1]), seconds


@pytest.mark.parametrize("args, shown", [
    (["--help"], ("train", "compare", "predict", "export")),
    (["train", "--help"], ("--method", "--alpha", "--cagrad-c", "--famo-gamma", "--imgsz")),
    (["compare", "--help"], ("--methods", "--latency-runtime", "torch-cpu | ort-cpu")),
])
def test_help_imports_no_heavy_library(args: list[str], shown: tuple[str, ...]) -> None:
    result, text, seconds = _probe(args)
    assert result == {"code": 0, "heavy": []}
    flat = " ".join(text.replace("│", " ").split())
    for needle in shown:  # the generated options (every balancer's flags among them) are there
        assert needle in flat, needle
    assert seconds < 5.0, f"medmtl {' '.join(args)} took {seconds:.1f} s"  # ~1 s on 2 busy cores


def test_building_the_app_imports_no_heavy_library() -> None:
    code = ("import json, sys; from typer.main import get_command; from medmtl.cli import app; "
            "get_command(app); import medmtl.balancing; "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == []


def test_the_cli_runtime_names_are_the_reports() -> None:
    from medmtl.cli.train_cmds import _RUNTIMES
    from medmtl.report.pareto import RUNTIMES

    assert _RUNTIMES == tuple(RUNTIMES)

