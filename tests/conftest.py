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
def no_retime(monkeypatch: pytest.MonkeyPatch) -> list[list[Path]]:
    """`compare` without its closing re-timing of every model (an ONNX export and interleaved
    timed rounds per run: about 10 s a run here), for the tests of what compare trains and in
    which order. Returns the run folders compare asked to re-time, one list per call. The
    re-timing itself is tests/test_compare.py's and test_compress.py's."""
    import medmtl.experiments.compare as compare

    calls: list[list[Path]] = []
    monkeypatch.setattr(compare, "remeasure_latency",
                        lambda runs, *args, **kwargs: calls.append(list(runs)))
    return calls


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only contend on a shared 2-core machine (OpenMP threads
    waiting on a descheduled sibling can make a step 10x slower). One thread unless
    MEDMTL_TEST_THREADS says otherwise (to check that no assertion depends on the count)."""
    old = torch.get_num_threads()
    torch.set_num_threads(TEST_THREADS)
    yield
    torch.set_num_threads(old)


# The longest test files, longest first (their seconds on an idle 2-core machine are in
# docs/benchmarks.md, "Demo and tests on this machine"). `make test` hands whole files to its 2
# workers in collection order (-n 2 --dist loadfile --no-loadscope-reorder; xdist's own order
# sorts by the number of tests, which put the long files with few tests last): with these first,
# each worker's last file is a short one and neither waits long for the other at the end.
LONGEST_FIRST = (
    "test_joint.py",
    "test_tune.py",
    "test_compare.py",
    "test_distributed.py",
    "test_train.py",
    "test_hybrids.py",
    "test_autobranch.py",
    "test_pretrained_methods.py",
    "test_compress.py",
    "test_tune_postgres.py",
    "test_methods.py",
    "test_fuzz_surfaces.py",
    "test_heldout.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The files of LONGEST_FIRST first, in its order; every other file after them as collected
    (the order of the tests within a file is kept). A random order asked for
    (--random-order-seed, --random-order-bucket) stands as it is."""
    try:
        from random_order.config import Config as RandomOrder
    except ImportError:  # pragma: no cover - pytest-random-order is a dev dependency
        RandomOrder = None  # noqa: N806
    if RandomOrder is not None and RandomOrder(config).is_enabled:
        return
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the fuzz suite's totals (tests/test_fuzz.py records them as a property, which
    pytest-xdist carries back from its workers)."""
    for rep in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", []):
        for key, value in getattr(rep, "user_properties", []):
            if key == "fuzz_totals":
                terminalreporter.write_line(str(value))
