"""Balancers on tiny CPU problems: the contract (accumulation, AMP scale, partial labels, state) for
every registered method, and each method's defining property from its paper."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
from _tol import assert_close_scaled, dot_tol
from torch import Tensor, nn

from medmtl.balancing import BALANCERS, create_balancer
from medmtl.balancing.cagrad import cagrad_coefficients, cagrad_dual
from medmtl.balancing.dwa import dwa_weights
from medmtl.balancing.pcgrad import pcgrad_project
from medmtl.config import BalancerConfig

TASKS = ("detect", "classify")
NAMES = ["cagrad", "dwa", "famo", "fixed", "gradnorm", "pcgrad", "uncertainty"]


pytestmark = pytest.mark.usefixtures("one_thread")


class Toy(nn.Module):
    """A shared linear trunk and one linear head per task."""

    def __init__(self, d_in: int = 8, d_h: int = 16) -> None:
        super().__init__()
        self.trunk = nn.Linear(d_in, d_h)
        self.heads = nn.ModuleDict({t: nn.Linear(d_h, 1) for t in TASKS})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = torch.tanh(self.trunk(x))
        return {t: head(h).squeeze(-1) for t, head in self.heads.items()}

    def shared(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())


def make_data(seed: int = 0, n: int = 64, d: int = 8, hard: float = 1.0) -> tuple[Tensor, dict]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    wa, wb = torch.randn(d, generator=g), torch.randn(d, generator=g)
    y = {"detect": torch.tanh(x @ wa / 3), "classify": torch.sin(hard * x @ wb / 3)}
    return x, y


def task_losses(model: Toy, x: Tensor, y: dict, gains: dict | None = None) -> dict[str, Tensor]:
    out = model(x)
    gains = gains or {}
    return {t: gains.get(t, 1.0) * ((out[t] - y[t]) ** 2).mean() for t in TASKS}


@torch.no_grad()
def loss_floats(model: Toy, x: Tensor, y: dict) -> dict[str, float]:
    return {t: float(v) for t, v in task_losses(model, x, y).items()}


def make(name: str, **kw) -> object:
    return create_balancer(TASKS, BalancerConfig(name=name, **kw))


def grads_of(model: nn.Module) -> dict[str, Tensor]:
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in model.named_parameters()}


def step(bal, model: Toy, x: Tensor, y: dict, scale: float = 1.0, tasks=TASKS) -> dict:
    losses = task_losses(model, x, y)
    losses = {t: losses[t] for t in tasks}
    return bal.backward(losses, model.shared(), model.trunk.weight, scale=scale)


def test_registry() -> None:
    assert BALANCERS.names() == NAMES
    with pytest.raises(KeyError):
        create_balancer(TASKS, BalancerConfig(name="nope"))
    assert create_balancer(TASKS).name == "fixed"


@pytest.mark.parametrize("name", NAMES)
def test_log_and_scale(name: str) -> None:
    """scale=1024 writes 1024x the scale=1 gradients, reads the same values, logs weight/<task>."""
    torch.manual_seed(0)
    x, y = make_data()
    m1, b1 = Toy(), make(name)
    m2, b2 = copy.deepcopy(m1), copy.deepcopy(b1)
    for _ in range(3):  # a few steps so learned weights move
        for m in (m1, m2):
            m.zero_grad(set_to_none=True)
        log1 = step(b1, m1, x, y, scale=1.0)
        log2 = step(b2, m2, x, y, scale=1024.0)
        b1.after_step(loss_floats(m1, x, y))
        b2.after_step(loss_floats(m2, x, y))
    g1, g2 = grads_of(m1), grads_of(m2)
    for k in g1:
        assert_close_scaled(g2[k] / 1024.0, g1[k])
    for k in log1:  # weights, cosines, norms: O(1), so abs is ~8 float32 ulps at 1 (cos near 0)
        assert log1[k] == pytest.approx(log2[k], rel=1e-5, abs=1e-6, nan_ok=True), k
    assert {f"weight/{t}" for t in TASKS} <= set(log1)
    assert log1["backward_passes"] == b1.backward_passes
    assert b1.weights() == pytest.approx(b2.weights())


@pytest.mark.parametrize("name", NAMES)
def test_accumulation(name: str) -> None:
    """Two backward calls add up: grad after both == grad(call 1) + grad(call 2 alone)."""
    torch.manual_seed(1)
    (x1, y1), (x2, y2) = make_data(1), make_data(2)
    m, b = Toy(), make(name)
    step(b, m, x1, y1)
    g1 = grads_of(m)
    mc, bc = copy.deepcopy(m), copy.deepcopy(b)
    mc.zero_grad(set_to_none=True)
    step(bc, mc, x2, y2)
    g2 = grads_of(mc)
    step(b, m, x2, y2)
    for k, g in grads_of(m).items():  # the sum may cancel: tolerance scaled to its two terms
        scale = max(float(g1[k].abs().max()), float(g2[k].abs().max()))
        assert_close_scaled(g, g1[k] + g2[k], scale=scale)


# the weight a lone task's loss is back-propagated with
LONE = {"pcgrad": lambda b, t: 1.0, "cagrad": lambda b, t: 1.0, "famo": lambda b, t: 1.0}


@pytest.mark.parametrize("name", NAMES)
def test_partial_labels(name: str) -> None:
    """Only one task in the batch: its loss with its current weight; learned weights unchanged."""
    torch.manual_seed(2)
    x, y = make_data(3)
    m, b = Toy(), make(name, weights={"detect": 0.7, "classify": 0.2})
    for _ in range(3):
        step(b, m, x, y)
        b.after_step(loss_floats(m, x, y))
    for task in TASKS:
        before = b.weights()
        w = LONE.get(name, lambda bb, t: bb.weights()[t])(b, task)
        m.zero_grad(set_to_none=True)
        log = step(b, m, x, y, tasks=(task,))
        b.after_step({task: 0.1})
        assert b.weights() == pytest.approx(before)
        assert log[f"weight/{task}"] == pytest.approx(before[task])
        other = [t for t in TASKS if t != task][0]
        assert m.heads[other].weight.grad is None
        ref = copy.deepcopy(m)
        ref.zero_grad(set_to_none=True)
        (w * task_losses(ref, x, y)[task]).backward()
        for k, g in grads_of(m).items():
            assert_close_scaled(g, grads_of(ref)[k])


@pytest.mark.parametrize("name", NAMES)
def test_trains_toy(name: str) -> None:
    """~100 steps on the toy two-task model: both task losses fall."""
    torch.manual_seed(3)
    x, y = make_data(4)
    m, b = Toy(), make(name)
    opt = torch.optim.Adam(list(m.parameters()) + b.parameters(), lr=1e-2)
    first = loss_floats(m, x, y)
    for i in range(100):
        opt.zero_grad(set_to_none=True)
        log = step(b, m, x, y)
        assert all(math.isfinite(v) for k, v in log.items() if k.startswith("weight/"))
        opt.step()
        new = loss_floats(m, x, y)
        b.after_step(new)
        if i % 10 == 9:
            b.on_epoch_end(new)
    for t in TASKS:
        assert new[t] < 0.5 * first[t], (t, first[t], new[t])


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_roundtrip(name: str) -> None:
    torch.manual_seed(4)
    x, y = make_data(5)
    m, b = Toy(), make(name)
    for i in range(4):
        step(b, m, x, y)
        b.after_step({t: 0.5 / (i + 1) for t in TASKS})
        b.on_epoch_end({"detect": 1.0 / (i + 1), "classify": 1.0})
    buf = io.BytesIO()
    torch.save(b.state_dict(), buf)
    buf.seek(0)
    b2 = make(name)
    b2.load_state_dict(torch.load(buf, weights_only=True))
    assert b2.weights() == pytest.approx(b.weights())
    m2 = copy.deepcopy(m)
    for mm in (m, m2):
        mm.zero_grad(set_to_none=True)
    step(b, m, x, y)
    step(b2, m2, x, y)
    for k, g in grads_of(m).items():
        assert_close_scaled(grads_of(m2)[k], g)


# --- fixed ---------------------------------------------------------------------------------------
def test_fixed_weights() -> None:
    x, y = make_data()
    m, b = Toy(), make("fixed", weights={"detect": 1.0, "classify": 0.1})
    log = step(b, m, x, y)
    assert log["weight/classify"] == 0.1 and log["backward_passes"] == 1
    ref = copy.deepcopy(m)
    ref.zero_grad(set_to_none=True)
    ls = task_losses(ref, x, y)
    (ls["detect"] + 0.1 * ls["classify"]).backward()
    for k, g in grads_of(m).items():
        assert_close_scaled(g, grads_of(ref)[k])


# --- uncertainty ---------------------------------------------------------------------------------
def test_uncertainty_closed_form() -> None:
    """With constant losses, SGD on s converges to s* = log L (weight exp(-s*) = 1/L)."""
    b = make("uncertainty")
    target = {"detect": 2.5, "classify": 0.3}
    opt = torch.optim.SGD(b.parameters(), lr=0.1)
    for _ in range(400):
        opt.zero_grad()
        losses = {t: torch.tensor(v, requires_grad=True) for t, v in target.items()}
        log = b.backward(losses, [])
        opt.step()
    for t, v in target.items():
        assert log[f"log_var/{t}"] == pytest.approx(math.log(v), abs=1e-3)
        assert b.weights()[t] == pytest.approx(1.0 / v, rel=1e-2)


# --- dwa -----------------------------------------------------------------------------------------
def test_dwa_formula() -> None:
    b = make("dwa", temperature=2.0)
    assert b.weights() == {"detect": 1.0, "classify": 1.0}
    b.on_epoch_end({"detect": 1.0, "classify": 2.0})
    assert b.weights() == {"detect": 1.0, "classify": 1.0}  # first two epochs: equal
    b.on_epoch_end({"detect": 0.5, "classify": 1.8})
    e = [math.exp(0.5 / 2), math.exp(0.9 / 2)]
    expected = {"detect": 2 * e[0] / sum(e), "classify": 2 * e[1] / sum(e)}
    assert b.weights() == pytest.approx(expected)
    assert sum(b.weights().values()) == pytest.approx(2.0)
    b.on_epoch_end({"detect": 0.25, "classify": 1.8})  # now epochs 2 and 3: r = 0.5, 1.0
    e = [math.exp(0.25), math.exp(0.5)]
    assert b.weights()["classify"] == pytest.approx(2 * e[1] / sum(e))
    assert dwa_weights({"detect": 1.0}, {}, TASKS, 2.0) == pytest.approx({"detect": 1, "classify": 1})


# --- gradnorm ------------------------------------------------------------------------------------
def test_gradnorm_sum_and_slow_task_gains() -> None:
    """Weights sum to K after every step; the harder, smaller-gradient task's weight rises above 1."""
    torch.manual_seed(5)
    x, y = make_data(6, hard=3.0)
    m, b = Toy(), make("gradnorm", lr=0.025, alpha=1.5)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    gains = {"classify": 0.1}
    for _ in range(60):
        opt.zero_grad(set_to_none=True)
        losses = task_losses(m, x, y, gains)
        log = b.backward(losses, m.shared(), m.trunk.weight)
        opt.step()
        assert sum(b.weights().values()) == pytest.approx(2.0, abs=1e-5)
        assert log["gradnorm_active"] == 1.0 and log["backward_passes"] == 3
    assert b.weights()["classify"] > 1.2 > 0.8 > b.weights()["detect"]


def test_gradnorm_without_last_shared_is_fixed() -> None:
    x, y = make_data()
    m, b = Toy(), make("gradnorm")
    log = b.backward(task_losses(m, x, y), [], None)
    assert log["gradnorm_active"] == 0.0 and log["backward_passes"] == 1
    assert b.weights() == {"detect": 1.0, "classify": 1.0}


# --- pcgrad --------------------------------------------------------------------------------------
def test_pcgrad_projection_property() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        grads = torch.randn(2, 20, generator=g)
        if grads[0] @ grads[1] >= 0:
            grads[1] = -grads[1]
        proj = pcgrad_project(grads, g)
        # >= 0 up to float32 rounding, bounded by the magnitudes of the inputs (a dot of ~6 can
        # come out at -1e-6 on some CPUs); an unprojected conflict is ~ -0.2 * |g0| * |g1|
        tol = dot_tol(grads[0], grads[1])
        assert proj[0] @ grads[1] >= -tol and proj[1] @ grads[0] >= -tol
    # no conflict at all (K = 3): nothing moves
    grads = torch.rand(3, 10, generator=g)
    torch.testing.assert_close(pcgrad_project(grads, g), grads)


def test_pcgrad_no_conflict_equals_sum() -> None:
    """With aligned task gradients (one loss a multiple of the other) PCGrad == plain sum."""
    x, y = make_data()
    m, b = Toy(), make("pcgrad")
    out = m(x)
    base = ((out["detect"] - y["detect"]) ** 2).mean()
    log = b.backward({"detect": base, "classify": 3 * base}, m.shared(), None)
    assert log["cos"] == pytest.approx(1.0, abs=1e-5) and log["backward_passes"] == 2
    ref = copy.deepcopy(m)
    ref.zero_grad(set_to_none=True)
    (4 * ((ref(x)["detect"] - y["detect"]) ** 2).mean()).backward()
    for k, gr in grads_of(m).items():
        assert_close_scaled(gr, grads_of(ref)[k])


# --- cagrad --------------------------------------------------------------------------------------
def test_cagrad_c0_is_plain_sum() -> None:
    x, y = make_data()
    m = Toy()
    ref = copy.deepcopy(m)
    make("cagrad", cagrad_c=0.0).backward(task_losses(m, x, y), m.shared())
    make("fixed").backward(task_losses(ref, x, y), ref.shared())
    for k, g in grads_of(m).items():
        assert_close_scaled(g, grads_of(ref)[k])
    alpha, lam = cagrad_coefficients(np.eye(2), 0.0)
    assert alpha == [1.0, 1.0] and lam == 0.0  # exact: c = 0 sets lambda to 0, alpha = 1 / 1


def _f(w: np.ndarray, gram: np.ndarray, c: float) -> float:
    g0 = math.sqrt(gram.mean())
    return float(w @ gram.mean(1) + c * g0 * math.sqrt(w @ gram @ w))


def test_cagrad_dual_solver() -> None:
    rng = np.random.default_rng(0)
    for k in (2, 3):
        for _ in range(10):
            g = rng.normal(size=(k, 6))
            gram = g @ g.T
            w = cagrad_dual(gram, 0.5)
            assert w.min() >= 0 and w.sum() == pytest.approx(1.0)
            samples = rng.dirichlet(np.ones(k), size=2000)
            best = min(_f(s, gram, 0.5) for s in samples)
            assert _f(w, gram, 0.5) <= best + 1e-6
            if k == 2:  # the bisection fast path agrees with the general solver
                w_gen = cagrad_dual(gram, 0.5, bisect_two=False)
                assert _f(w, gram, 0.5) == pytest.approx(_f(w_gen, gram, 0.5), abs=1e-7)


def test_cagrad_improves_worst_task() -> None:
    grads = torch.tensor([[1.0, 0.0], [-0.8, 0.3]])
    g0 = grads.mean(0)
    assert (grads @ g0).min() < 0  # the average hurts task 2
    alpha, _ = cagrad_coefficients((grads @ grads.T).double().numpy(), 0.4)
    d = torch.tensor(alpha, dtype=torch.float32) @ grads  # the update written (sum convention)
    assert (grads @ d).min() > 2 * (grads @ g0).min()  # better than the plain sum 2*g0
    assert (grads @ d).min() > (grads @ g0).min()


# --- famo ----------------------------------------------------------------------------------------
def test_famo_slow_task_gains_weight() -> None:
    b = make("famo", lr=0.025)
    p = torch.zeros((), requires_grad=True)
    loss = {"detect": 1.0, "classify": 1.0}
    for _ in range(30):
        log = b.backward({t: p + v for t, v in loss.items()}, [p])
        assert sum(log[f"weight/{t}"] for t in TASKS) == pytest.approx(2.0, abs=1e-5)
        loss = {"detect": loss["detect"] * 0.9, "classify": loss["classify"] * 0.99}
        b.after_step(loss)
    w = b.weights()
    assert w["classify"] > 1.0 > w["detect"]
    assert sum(w.values()) == pytest.approx(2.0, abs=1e-5)


def test_famo_gradient_weights() -> None:
    """The model gradient is K * c * z_i / L_i * grad L_i; uniform z -> weights 2 L_j / (L_1 + L_2)."""
    b = make("famo")
    p = torch.ones(2, requires_grad=True)
    log = b.backward({"detect": 2.0 * p[0], "classify": 0.5 * p[1]}, [p])
    # L = (2, 0.5): w_i = 2 * (1/L_i) / (1/2 + 2) -> detect 0.4, classify 1.6
    torch.testing.assert_close(p.grad, torch.tensor([2.0 * 0.4, 0.5 * 1.6]))
    assert log["grad_weight/detect"] == pytest.approx(0.4)


def test_famo_own_losses_defer_to_next_batch() -> None:
    """A trainer that hands after_step the step's own losses still gets FAMO's update (deferred to
    the next backward, whose losses play L(new)) instead of a silent no-op."""
    b = make("famo", lr=0.025)
    p = torch.zeros((), requires_grad=True)
    loss = {"detect": 1.0, "classify": 1.0}
    for _ in range(30):
        b.backward({t: p + v for t, v in loss.items()}, [p])
        b.after_step(dict(loss))
        loss = {"detect": loss["detect"] * 0.9, "classify": loss["classify"] * 0.99}
    w = b.weights()
    assert w["classify"] > 1.0 > w["detect"]


@pytest.mark.parametrize("name", NAMES)
def test_quiet_log_changes_nothing_but_the_log(name: str) -> None:
    """detailed_log=False (the trainer's setting: no per-step host sync for the log) gives the
    same gradients and weights and returns only the pass count (+ cheap host-side flags)."""
    torch.manual_seed(0)
    x, y = make_data()
    m1, b1 = Toy(), make(name)
    m2, b2 = copy.deepcopy(m1), copy.deepcopy(b1)
    b2.detailed_log = False
    for _ in range(3):
        for m in (m1, m2):
            m.zero_grad(set_to_none=True)
        step(b1, m1, x, y)
        log2 = step(b2, m2, x, y)
        b1.after_step(loss_floats(m1, x, y))
        b2.after_step(loss_floats(m2, x, y))
    g1, g2 = grads_of(m1), grads_of(m2)
    for k in g1:  # exact: the same ops in the same process, only the log is skipped
        torch.testing.assert_close(g2[k], g1[k], rtol=0, atol=0)
    assert b1.weights() == b2.weights()
    assert log2["backward_passes"] == b2.backward_passes
    assert not any(k.startswith(("weight/", "grad_norm/")) for k in log2), log2


@pytest.mark.parametrize("arch", ["shared", "split2"])
@pytest.mark.parametrize("scale", [1.0, 1024.0])
def test_gradnorm_fast_path_equals_plain_path(arch: str, scale: float) -> None:
    """GradNorm through the trunk's output features (each head back-propagated once) gives the
    gradients and task weights of the plain path (autograd.grad to W, then a full backward)."""
    from medmtl.balancing.base import TaskSplit
    from medmtl.config import LossConfig, ModelConfig
    from medmtl.losses import DetectionLoss, ViewLoss
    from medmtl.models import build_model

    torch.manual_seed(0)
    plain = build_model(ModelConfig(arch=arch, size="n")).train()
    fast = copy.deepcopy(plain)
    fast.expose_shared = True
    assert fast.shared_boundary_valid()
    det, view = DetectionLoss(4, 16, list(plain.strides), LossConfig()), ViewLoss(3)
    g = torch.Generator().manual_seed(1)
    b = 4
    xy = torch.rand(b, 1, 2, generator=g) * 30
    batch = {"boxes": torch.cat([xy, xy + 20], -1), "box_classes": torch.randint(0, 4, (b, 1), generator=g),
             "box_mask": torch.ones(b, 1, dtype=torch.bool), "det_mask": torch.ones(b, dtype=torch.bool),
             "view": torch.randint(0, 3, (b,), generator=g), "view_mask": torch.ones(b, dtype=torch.bool)}
    balancers = [make("gradnorm"), make("gradnorm")]
    task_params = {t: fast.task_parameters(t) for t in fast.tasks}
    for _ in range(2):  # the second step uses the weights the first one learned
        x = torch.rand(b, 3, 64, 64, generator=g)
        logs = []
        for model, bal in zip((plain, fast), balancers, strict=True):
            model.zero_grad(set_to_none=True)
            out = model(x)
            feats = model.take_shared_features()
            assert (feats is not None) == (model is fast)
            losses = {"detect": det(out["detect"], batch)[0],
                      "classify": view(out["classify"], batch["view"], batch["view_mask"])}
            split = TaskSplit(list(feats), task_params) if feats is not None else None
            logs.append(bal.backward(losses, model.shared_parameters(),
                                     model.last_shared_parameter(), scale=scale, split=split))
        assert logs[0]["gradnorm_active"] == logs[1]["gradnorm_active"] == 1.0
        assert balancers[0].weights() == pytest.approx(balancers[1].weights(), rel=1e-5)
        # the floor is scaled to the model's largest gradient, not each tensor's: a BN bias that
        # feeds another BN has a zero gradient in exact arithmetic, so its ~1e-8 entries are
        # rounding of terms of the model's gradient magnitude (and differ 2x between the paths)
        gmax = max(float(p.grad.abs().max()) for p in plain.parameters() if p.grad is not None)
        for (name, p), q in zip(plain.named_parameters(), fast.parameters(), strict=True):
            assert (p.grad is None) == (q.grad is None), name
            if p.grad is not None:
                assert_close_scaled(q.grad, p.grad, rtol=1e-4, scale=gmax,
                                    msg=lambda m, n=name: f"{n}: {m}")
    assert balancers[1].weights()["detect"] != pytest.approx(1.0, abs=1e-6)
