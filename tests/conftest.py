"""Shared fixtures: small synthetic data sets made once per session, and the real data's path."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "regurgitation" / "data.yaml"
# torch intra-op threads of the tests that pin them (`make test THREADS=2` sets it; default 1)
TEST_THREADS = int(os.environ.get("MEDMTL_TEST_THREADS", "1"))


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 train / 60 val images at 128 px: enough for a size-n model to learn both tasks."""
    from medmtl.data.synth import generate

    return generate(tmp_path_factory.mktemp("synth_small"), n_train=200, n_val=60, imgsz=128,
                    seed=1)


@pytest.fixture(scope="session")
def synth_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 train / 32 val images at 64 px, for many short runs."""
    from medmtl.data.synth import generate

    return generate(tmp_path_factory.mktemp("synth_tiny"), n_train=96, n_val=32, imgsz=64, seed=2)


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not REAL_DATA.exists():
        pytest.skip(f"real data set not found at {REAL_DATA} (it lives in ../shared/data)")
    return REAL_DATA


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only contend on a shared 2-core machine (OpenMP threads
    waiting on a descheduled sibling can make a step 10x slower). One thread unless
    MEDMTL_TEST_THREADS says otherwise (to check that no assertion depends on the count)."""
    old = torch.get_num_threads()
    torch.set_num_threads(TEST_THREADS)
    yield
    torch.set_num_threads(old)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the fuzz suite's totals (tests/test_fuzz.py records them as a property, which
    pytest-xdist carries back from its workers)."""
    for rep in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", []):
        for key, value in getattr(rep, "user_properties", []):
            if key == "fuzz_totals":
                terminalreporter.write_line(str(value))
