"""Plug-ins from a test file alone: a toy balancer with an option of its own trains a step through
the real trainer, gets a preset and a generated CLI flag; balancer options are validated per
balancer, and configs written before options were per balancer still load."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch
from pydantic import Field
from torch import Tensor
from torch.nn import Parameter

from medmtl.balancing import BALANCERS, Balancer, BalancerOptions, resolve_config
from medmtl.balancing.base import weighted_backward
from medmtl.config import BalancerConfig, TrainConfig


class ToyOptions(BalancerOptions):
    boost: float = Field(2.0, gt=0, description="Weight of the view loss")


class ToyBalancer(Balancer):
    """Weights the classify loss by `boost`; counts its calls."""

    name = "toy"
    Options = ToyOptions

    def __init__(self, tasks: Sequence[str], cfg: BalancerConfig) -> None:
        super().__init__(tasks, cfg)
        self.calls = 0

    def weights(self) -> dict[str, float]:
        return {t: (self.opts.boost if t == "classify" else 1.0) for t in self.tasks}

    def backward(self, losses: dict[str, Tensor], shared: Sequence[Parameter],
                 last_shared: Parameter | None = None, scale: float = 1.0) -> dict[str, float]:
        self.calls += 1
        present = self._present(losses)
        passes = weighted_backward({t: losses[t] for t in present}, self.weights(), scale)
        return self._log(passes=passes)


@pytest.fixture
def toy() -> Iterator[type[ToyBalancer]]:
    BALANCERS.register("toy")(ToyBalancer)
    try:
        yield ToyBalancer
    finally:
        BALANCERS.unregister("toy")


def test_toy_balancer_trains_a_step(toy: type[ToyBalancer], synth_tiny: Path,
                                    tmp_path: Path) -> None:
    from medmtl.engine.loop import train_one_epoch
    from medmtl.engine.trainer import Trainer
    from medmtl.methods import build_config, method_names

    assert "toy" in method_names()  # a preset of its own: shared backbone + toy
    cfg = build_config("toy", {"data": str(synth_tiny), "out": str(tmp_path / "run"), "epochs": 1,
                               "imgsz": 64, "batch": 32, "workers": 0, "diag_steps": 0,
                               "balancer": {"boost": 3.0}})
    assert cfg.model.arch == "shared" and cfg.balancer.model_dump()["boost"] == 3.0
    t = Trainer(cfg, progress=False)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    row = train_one_epoch(t)
    assert t.balancer.calls == 3 and t.state.step_in_epoch == 3  # 96 images / 32
    assert row["weight/classify"] == 3.0 and row["weight/detect"] == 1.0
    changed = [k for k, v in t.model.state_dict().items()
               if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert any(k.startswith("trunk.") for k in changed)
    t.fit()  # the rest of the run (validation, checkpoints, metrics.json) works as well
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "name: toy" in saved and "boost: 3.0" in saved
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["training"]["balancer"] \
        == "toy"


def test_toy_balancer_gets_a_cli_flag(toy: type[ToyBalancer]) -> None:
    from medmtl.cli.options import config_options, config_overrides

    opts = {o.flag: o for o in config_options()}
    assert opts["--toy-boost"].balancer == "toy" and opts["--toy-boost"].default == 2.0
    over, given = config_overrides({"toy_boost": 0.5, "epochs": 3}, list(opts.values()))
    assert over == {"balancer": {"boost": 0.5}, "epochs": 3} and [o.flag for o in given] == \
        ["--toy-boost"]


def test_options_belong_to_their_balancer() -> None:
    cfg = resolve_config(BalancerConfig(name="cagrad", c=0.2))  # the short alias
    assert cfg.model_dump() == {"name": "cagrad", "weights": {"detect": 1.0, "classify": 1.0},
                                "cagrad_c": 0.2}
    with pytest.raises(ValueError, match=r"balancer 'fixed' has no option 'alpha' \(an option "
                                         r"of gradnorm\); its options: none"):
        resolve_config(BalancerConfig(name="fixed", alpha=0.5), strict=True)
    with pytest.raises(ValueError, match="balancer 'gradnorm' has no option 'alfa'; its options: "
                                         "alpha, lr"):
        resolve_config(BalancerConfig(name="gradnorm", alfa=0.5))
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        resolve_config(BalancerConfig(name="cagrad", cagrad_c=-1))


def test_config_of_the_flat_layout_still_loads() -> None:
    """config.yaml before per-balancer options held every balancer's options in one block."""
    old = TrainConfig().model_dump(mode="json")
    old["balancer"] = {"name": "gradnorm", "weights": {"detect": 1.0, "classify": 1.0},
                       "alpha": 0.7, "lr": 0.01, "temperature": 2.0, "cagrad_c": 0.4,
                       "famo_gamma": 0.01}
    cfg = TrainConfig.model_validate(old)
    assert resolve_config(cfg.balancer).model_dump() == {
        "name": "gradnorm", "weights": {"detect": 1.0, "classify": 1.0}, "alpha": 0.7, "lr": 0.01}


def test_cli_bad_values_fail_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medmtl.cli import app

    runner = CliRunner()
    for args, needle in ((["--batch", "0"], "--batch"), (["--imgsz", "50"], "multiple of 32"),
                         (["--method", "fixed", "--alpha", "0.5"], "option of balancer"),
                         (["--task-weights", "detect"], "name=number pairs")):
        res = runner.invoke(app, ["train", "--data", str(tmp_path / "d.yaml"),
                                  "--out", str(tmp_path / "r"), *args])
        assert res.exit_code == 2, (args, res.output)
        assert needle in " ".join(res.output.replace("│", " ").split()), (args, res.output)
        assert not (tmp_path / "r").exists()
