"""Architecture plug-ins: an architecture defined entirely here registers itself, builds through
`build_model`, and trains through the real trainer; the registry's name patterns, unregistering,
and the automatic discovery of files in `medmtl/models/archs/`."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from medmtl.config import ModelConfig
from medmtl.engine.trainer import Trainer
from medmtl.methods import build_config
from medmtl.models import (
    ARCHS,
    ClassifyHead,
    DetectHead,
    MultiTaskNet,
    build_model,
    parameters_of,
)
from medmtl.models import archs as archs_pkg
from medmtl.registry import Registry


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out),
                         nn.SiLU())


class ToyNet(MultiTaskNet):
    """A stride-8 conv trunk shared by both tasks; the detect branch downsamples twice more and
    runs a DetectHead on the three maps, the classify branch is a ClassifyHead on the trunk."""

    def __init__(self, cfg: ModelConfig, arch: str, width: int) -> None:
        super().__init__(cfg, arch)
        self.trunk = nn.Sequential(_conv(3, width), _conv(width, width), _conv(width, width))
        self.down = nn.ModuleList([_conv(width, width), _conv(width, width)])
        self.detect_head = DetectHead([width] * 3, cfg.num_classes, cfg.reg_max, self.strides)
        self.classify_head = ClassifyHead(width, cfg.num_views, hidden=width)

    def forward(self, images: Tensor) -> dict[str, Tensor | list[Tensor]]:
        p3 = self.trunk(images - 0.5)
        p4 = self.down[0](p3)
        p5 = self.down[1](p4)
        return {"detect": self.detect_head([p3, p4, p5]), "classify": self.classify_head(p3)}

    def task_reach(self, task: str) -> list[nn.Parameter]:
        self.check_task(task)
        if task == "detect":
            return parameters_of(self.trunk, self.down, self.detect_head)
        return parameters_of(self.trunk, self.classify_head)


def toy(cfg: ModelConfig, width: int | str = 8) -> ToyNet:
    """`toy` (width 8) or `toy<width>`, e.g. `toy12`."""
    if len(cfg.tasks) != 2:
        raise ValueError("toy takes both tasks")
    return ToyNet(cfg, cfg.arch, int(width))


@pytest.fixture(scope="module", autouse=True)
def _toy_registered() -> Iterator[None]:
    ARCHS.register("toy", pattern=r"toy(?P<width>\d+)")(toy)
    yield
    ARCHS.unregister("toy")


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Tiny tensors: one intra-op thread (see conftest)."""


def _ids(params: list[nn.Parameter]) -> set[int]:
    return {id(p) for p in params}


def test_toy_builds_by_name_and_by_pattern() -> None:
    m = build_model(ModelConfig(arch="toy"))
    assert isinstance(m, ToyNet) and m.arch == "toy" and m.trunk[0][0].out_channels == 8
    assert m.tasks == ("detect", "classify") and m.strides == [8, 16, 32]
    out = m(torch.rand(2, 3, 64, 64))
    assert [f.shape for f in out["detect"]] == [(2, 4 * 16 + 4, 64 // s, 64 // s) for s in (8, 16, 32)]
    assert out["classify"].shape == (2, 3)
    m12 = build_model(ModelConfig(arch="toy12"))
    assert m12.arch == "toy12" and m12.trunk[0][0].out_channels == 12  # type: ignore[index]
    assert "toy12" in ARCHS and "toy" in ARCHS.names()
    with pytest.raises(KeyError, match=r"known: .*split<k>, toy<width>"):
        build_model(ModelConfig(arch="toyx"))


def test_toy_parameter_groups_follow_task_reach() -> None:
    torch.manual_seed(0)
    m = build_model(ModelConfig(arch="toy"))
    assert isinstance(m, ToyNet)
    trunk, down = list(m.trunk.parameters()), list(m.down.parameters())
    det_head, cls_head = list(m.detect_head.parameters()), list(m.classify_head.parameters())
    assert _ids(m.shared_parameters()) == _ids(trunk)
    assert _ids(m.task_parameters("detect")) == _ids(down + det_head)
    assert _ids(m.task_parameters("classify")) == _ids(cls_head)
    # the defaults of the interface
    assert m.last_shared_parameter() is m.trunk[-1][0].weight  # last shared conv weight
    assert m.shared_stages() == [] and not m.shared_boundary_valid()
    assert m.take_shared_features() is None
    # and task_reach itself is what autograd says
    for task in m.tasks:
        m.zero_grad(set_to_none=True)
        out = m(torch.rand(2, 3, 64, 64))
        loss = (sum(f.square().mean() for f in out["detect"]) if task == "detect"
                else nn.functional.cross_entropy(out["classify"], torch.tensor([0, 2])))
        loss.backward()
        reached = {id(p) for p in m.parameters() if p.grad is not None}
        assert reached == _ids(m.task_reach(task)), task


@pytest.mark.parametrize("balancer", ["fixed", "gradnorm"])
def test_toy_trains_one_step_through_the_trainer(synth_tiny: Path, tmp_path: Path,
                                                 balancer: str) -> None:
    out = tmp_path / "run"
    cfg = build_config("fixed", {"data": str(synth_tiny), "out": str(out), "epochs": 1,
                                 "imgsz": 64, "batch": 96, "workers": 0, "val_every": 1,
                                 "diag_steps": 1, "model": {"arch": "toy"},
                                 "balancer": {"name": balancer}})
    tr = Trainer(cfg, progress=False)
    assert isinstance(tr.model, ToyNet) and tr.steps_per_epoch == 1
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    tr.fit()
    after = dict(tr.model.named_parameters())
    for prefix in ("trunk.", "down.", "detect_head.", "classify_head."):
        assert any(not torch.equal(before[n], after[n].detach())
                   for n in before if n.startswith(prefix)), prefix
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["training"]["arch"] == "toy" and metrics["training"]["balancer"] == balancer


def test_archs_folder_is_discovered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file dropped into the archs package registers its arch; `_`-files are skipped."""
    assert {"single", "shared", "detach", "dual", "split"} <= set(archs_pkg.MODULES)
    (tmp_path / "zz_drop_in.py").write_text(
        "from medmtl.models.base import ARCHS\n\n"
        "@ARCHS.register('zz_drop_in')\n"
        "def build(cfg):\n    raise NotImplementedError\n")
    (tmp_path / "_zz_private.py").write_text("raise RuntimeError('must not be imported')\n")
    monkeypatch.setattr(archs_pkg, "__path__", [*archs_pkg.__path__, str(tmp_path)])
    try:
        found = archs_pkg._discover()
        assert "zz_drop_in" in found and "_zz_private" not in found
        assert "zz_drop_in" in ARCHS
    finally:
        ARCHS.unregister("zz_drop_in")
        sys.modules.pop(f"{archs_pkg.__name__}.zz_drop_in", None)


def test_registry_patterns_and_unregister() -> None:
    reg: Registry[str] = Registry("thing")
    reg.register("plain")(lambda: "plain")
    reg.register("fam", pattern=r"fam(?P<n>\d+)x(?P<m>\d+)")(lambda n="1", m="1": f"fam {n} {m}")
    assert reg.create("plain") == "plain" and reg.create("fam") == "fam 1 1"
    assert reg.create("fam3x4") == "fam 3 4"
    assert "fam3x4" in reg and "fam3" not in reg and 3 not in reg
    assert reg.names() == ["fam", "plain"] and reg.usage() == ["fam<n>x<m>", "plain"]
    with pytest.raises(KeyError, match=r"unknown thing 'fam3'; known: fam<n>x<m>, plain"):
        reg.get("fam3")
    with pytest.raises(KeyError, match="registered twice"):
        reg.register("plain")(lambda: "again")
    reg.unregister("fam")
    assert "fam3x4" not in reg and reg.names() == ["plain"]
    reg.unregister("fam")  # already gone: a no-op
