"""End-to-end latency (medmtl.inference.latency): finite positive figures for a tiny model, NMS
counted in every timed call, ONNX Runtime skipped with a reason when it is missing."""

from __future__ import annotations

import importlib.util
import math
import time

import pytest

from medmtl.config import ModelConfig
from medmtl.inference import latency as e2e
from medmtl.models import build_model


@pytest.fixture(scope="module")
def tiny_model():  # noqa: ANN201
    import torch

    torch.manual_seed(0)
    return build_model(ModelConfig(size="n")).eval()


def _count_nms(monkeypatch: pytest.MonkeyPatch, sleep_s: float = 0.0) -> dict[str, int]:
    import medmtl.inference.base as base

    calls = {"n": 0}
    real = base.select_detections

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        time.sleep(sleep_s)
        return real(*args, **kwargs)

    monkeypatch.setattr(base, "select_detections", counting)
    return calls


def test_summarize() -> None:
    s = e2e.summarize([0.001, 0.002, 0.003, 0.004])
    assert s["ms"] == pytest.approx(2.5) and s["n"] == 4
    assert s["noise_ms"] == pytest.approx((3.25 - 1.75) / 2)
    assert s["p90_ms"] == pytest.approx(3.7)
    assert e2e.summarize([0.002] * 5)["noise_ms"] == pytest.approx(e2e.CLOCK_RES_MS)


def test_e2e_latency_is_finite_positive_and_counts_nms(tiny_model, one_thread,  # noqa: ANN001
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    calls = _count_nms(monkeypatch)
    out = e2e.measure_e2e(tiny_model, 64, warmup=1, iters=3, threads=1, cuda=False)
    for rt in ("", "_ort"):
        for key in ("ms", "p90_ms", "noise_ms"):
            v = out[f"latency_e2e{rt}_{key}"]
            assert isinstance(v, float) and math.isfinite(v) and v > 0, (rt, key, v)
        assert out[f"latency_e2e{rt}_n"] == 3
        assert out[f"latency_e2e{rt}_p90_ms"] >= out[f"latency_e2e{rt}_ms"]
    assert calls["n"] == 2 * (1 + 3)  # NMS ran in every call, warm-up included, both runtimes
    inc = out["latency_e2e_includes"]
    assert inc.startswith("read + decode a 430x320 JPEG file") and "NMS" in inc
    assert "letterbox to 64" in inc and "forward" in inc and out["latency_e2e_threads"] == 1


def test_nms_time_is_inside_the_measurement(tiny_model, one_thread,  # noqa: ANN001
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_nms(monkeypatch, sleep_s=0.03)
    out = e2e.measure_e2e(tiny_model, 64, warmup=0, iters=3, threads=1, ort=False, cuda=False)
    assert calls["n"] == 3 and out["latency_e2e_ms"] >= 30.0
    assert "latency_e2e_ort_ms" not in out


def test_ort_skipped_with_a_reason(tiny_model, one_thread,  # noqa: ANN001
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(e2e.importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    out = e2e.measure_e2e(tiny_model, 64, warmup=0, iters=2, threads=1, cuda=False)
    assert out["latency_e2e_ort_skipped"].startswith("onnxruntime not installed")
    assert "latency_e2e_ort_ms" not in out and out["latency_e2e_ms"] > 0
