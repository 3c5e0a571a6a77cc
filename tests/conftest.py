"""Shared fixtures: small synthetic data sets made once per session, and the real data's path."""

from __future__ import annotations

from pathlib import Path

import pytest

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "regurgitation" / "data.yaml"


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
