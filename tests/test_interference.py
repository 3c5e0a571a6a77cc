"""gradient_interference: cosine / norm ratio between the task gradients on the shared parameters."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medmtl.evaluation.interference import gradient_interference

pytestmark = pytest.mark.usefixtures("one_thread")


def toy() -> tuple[nn.Linear, nn.Linear, nn.Linear, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Linear(6, 8), nn.Linear(8, 1), nn.Linear(8, 1), torch.randn(32, 6)


def test_identical_and_opposite() -> None:
    trunk, head, _, x = toy()
    loss = head(torch.tanh(trunk(x))).pow(2).mean()
    shared = list(trunk.parameters())
    same = gradient_interference({"detect": loss, "classify": 2 * loss}, shared)
    assert same["grad_cos"] == pytest.approx(1.0, abs=1e-6)
    assert same["grad_norm_ratio"] == pytest.approx(0.5, rel=1e-5)
    opp = gradient_interference({"detect": loss, "classify": -loss}, shared)
    assert opp["grad_cos"] == pytest.approx(-1.0, abs=1e-6)
    assert opp["grad_norm_ratio"] == pytest.approx(1.0, rel=1e-5)


def test_orthogonal_and_norms() -> None:
    p = nn.Parameter(torch.tensor([1.0, 2.0]))
    out = gradient_interference({"detect": 3 * p[0], "classify": 5 * p[1] ** 2}, [p])
    assert out["grad_cos"] == pytest.approx(0.0, abs=1e-7)
    assert out["grad_norm/detect"] == pytest.approx(3.0)
    assert out["grad_norm/classify"] == pytest.approx(20.0)
    assert out["grad_norm_ratio"] == pytest.approx(0.15)


def test_matches_manual_and_scale() -> None:
    trunk, ha, hb, x = toy()
    h = torch.tanh(trunk(x))
    losses = {"classify": hb(h).sin().mean(), "detect": ha(h).pow(2).mean()}
    shared = list(trunk.parameters())
    ga = torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses["detect"], shared, retain_graph=True)])
    gb = torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses["classify"], shared, retain_graph=True)])
    out = gradient_interference(losses, shared)
    # reference in float64: a float32 dot's rounding (~n ulps) would eat the tolerance (8 ulps at
    # 1, the cosine's scale; the library sums float32 products in float64)
    ga, gb = ga.double(), gb.double()
    assert out["grad_cos"] == pytest.approx(float(ga @ gb / (ga.norm() * gb.norm())), abs=1e-6)
    assert out["grad_norm_ratio"] == pytest.approx(float(ga.norm() / gb.norm()), rel=1e-5)
    scaled = gradient_interference(losses, shared, scale=1024.0)
    for k, v in out.items():  # a cosine and norms: O(1), abs ~8 float32 ulps at 1
        assert scaled[k] == pytest.approx(v, rel=1e-5, abs=1e-6)


def test_no_grad_side_effects_and_graph_kept() -> None:
    trunk, ha, hb, x = toy()
    h = torch.tanh(trunk(x))
    losses = {"detect": ha(h).pow(2).mean(), "classify": hb(h).pow(2).mean()}
    trunk.bias.grad = torch.ones_like(trunk.bias)
    gradient_interference(losses, list(trunk.parameters()))
    assert trunk.weight.grad is None and ha.weight.grad is None
    assert torch.equal(trunk.bias.grad, torch.ones_like(trunk.bias))
    (losses["detect"] + losses["classify"]).backward()  # the graph is still there
    assert trunk.weight.grad is not None


def test_degenerate_cases() -> None:
    trunk, ha, hb, x = toy()
    h = torch.tanh(trunk(x))
    det = ha(h).pow(2).mean()
    assert gradient_interference({"detect": det}, list(trunk.parameters())) == {}
    assert gradient_interference({"detect": det, "classify": det}, []) == {}
    frozen = nn.Parameter(torch.ones(3), requires_grad=False)
    assert gradient_interference({"detect": det, "classify": det}, [frozen]) == {}
    # the classify loss does not reach the shared trunk (detach architecture): cosine undefined
    cls = hb(h.detach()).pow(2).mean()
    out = gradient_interference({"detect": det, "classify": cls}, list(trunk.parameters()))
    assert math.isnan(out["grad_cos"]) and math.isnan(out["grad_norm_ratio"])
    assert out["grad_norm/classify"] == 0.0 and out["grad_norm/detect"] > 0
    # a loss that does not require grad at all behaves the same
    const = torch.tensor(1.0)
    out = gradient_interference({"detect": det, "classify": const}, list(trunk.parameters()))
    assert math.isnan(out["grad_cos"])


def test_per_stage() -> None:
    a = nn.Parameter(torch.tensor([1.0, 0.0]))
    b = nn.Parameter(torch.tensor([1.0, 1.0]))
    # stage "a": g_det = (1, 0), g_cls = (1, 0) -> cos 1; stage "b": (1, 0) vs (-1, 0) -> cos -1
    det = a[0] + b[0]
    cls = a[0] - b[0]
    out = gradient_interference({"detect": det, "classify": cls}, [a, b],
                                stages=[("a", [a]), ("b", [b])])
    assert out["grad_cos/a"] == pytest.approx(1.0)
    assert out["grad_cos/b"] == pytest.approx(-1.0)
    assert out["grad_cos"] == pytest.approx(0.0, abs=1e-7)


def test_pair_order_and_other_names() -> None:
    p = nn.Parameter(torch.tensor([1.0, 1.0]))
    out = gradient_interference({"classify": 4 * p[0], "detect": p[0]}, [p])
    assert out["grad_norm_ratio"] == pytest.approx(0.25)  # detect / classify whatever the order
    out = gradient_interference({"a": p[0], "b": -p[0]}, [p])
    assert out["grad_cos"] == pytest.approx(-1.0) and "grad_norm/a" in out
