"""Methods as plug-ins (issue 23): a toy hybrid registered in this one file trains through the
ordinary trainer and CLI; the trainer names no method; plug-ins of installed packages are found
through the `medmtl.plugins` entry-point group."""

from __future__ import annotations

import ast
import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from medmtl import methods
from medmtl.engine.plugin_api import PLUGINS, MethodPlugin, TrainStep
from medmtl.engine.trainer import Trainer
from medmtl.errors import PluginError
from medmtl.methods import build_config, register_method, unregister_method
from tests._cli import run_main

_TINY = {"epochs": 2, "imgsz": 64, "batch": 16, "workers": 0, "seed": 0, "device": "cpu",
         "diag_steps": 0}


class Anchor(MethodPlugin):
    """The toy hybrid: an L2-SP-style term that keeps the shared trunk near its starting weights,
    weighed by the balancer as a task of its own, with a stage name per epoch."""

    name = "toy-anchor"

    def setup(self, step: TrainStep) -> None:
        self.start = [p.detach().clone() for p in step.model.trunk.parameters()]
        self.epochs_started: list[int] = []

    def extra_tasks(self) -> tuple[str, ...]:
        return ("anchor",)

    def on_epoch_start(self, step: TrainStep, epoch: int) -> None:
        assert step.model.training  # after model.train()
        self.epochs_started.append(epoch)

    def extra_losses(self, step: TrainStep, images: torch.Tensor, batch: dict[str, Any],
                     out: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"anchor": sum(((p - s) ** 2).sum()
                              for p, s in zip(step.model.trunk.parameters(), self.start,
                                              strict=True))}

    def stage(self, epoch: int) -> str:
        return f"anchored{epoch + 1}"

    def record(self, run_dir: Path) -> dict[str, Any]:
        return {"toy_anchor": {"epochs_started": self.epochs_started}}


@pytest.fixture
def toy() -> Iterator[str]:
    PLUGINS.register("toy-anchor")(Anchor)
    register_method("toy-anchor", {"model": {"arch": "shared"}, "balancer": {"name": "fixed"},
                                   "plugins": ["toy-anchor"]})
    yield "toy-anchor"
    PLUGINS.unregister("toy-anchor")
    unregister_method("toy-anchor")


def test_a_toy_hybrid_registered_in_one_file_trains(toy: str, synth_tiny: Path, tmp_path: Path,
                                                    one_thread: None) -> None:
    cfg = build_config(toy, {**_TINY, "data": str(synth_tiny), "out": str(tmp_path / "run")})
    assert cfg.plugins == ["toy-anchor"] and cfg.method == toy
    t = Trainer(cfg, progress=False)
    try:
        [plugin] = t.plugins
        assert isinstance(plugin, Anchor)
        assert t.balancer.tasks == ["detect", "classify", "anchor"]
        t.fit()
    finally:
        t.close()
    assert plugin.epochs_started == [0, 1]
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert [r["stage"] for r in rows] == ["anchored1", "anchored2"]
    anchor = [float(r["loss/anchor"]) for r in rows]
    # the trunk moves away from its start, so the term grows (measured 0.27 -> 0.80)
    assert 0 < anchor[0] < anchor[1], anchor
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["toy_anchor"] == {"epochs_started": [0, 1]}
    assert set(m["training"]["final_weights"]) == {"detect", "classify", "anchor"}
    assert m["training"]["method"] == toy


def test_the_toy_hybrid_through_the_command_line(toy: str, synth_tiny: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 one_thread: None) -> None:
    code, err = run_main(["train", "--data", str(synth_tiny), "--method", toy, "--imgsz", "64",
                          "--epochs", "1", "--batch", "16", "--workers", "0", "--no-progress",
                          "--out", str(tmp_path / "cli")], capsys)
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "cli" / "history.csv").open()))
    assert rows[0]["stage"] == "anchored1" and float(rows[0]["loss/anchor"]) > 0


def test_an_unknown_plugin_is_one_line(synth_tiny: Path, tmp_path: Path) -> None:
    cfg = build_config("fixed", {**_TINY, "data": str(synth_tiny), "out": str(tmp_path / "x"),
                                 "plugins": ["nosuch"]})
    with pytest.raises(ValueError, match=r"unknown method plug-in\(s\) 'nosuch'; registered: "
                                         r"auto, distill, staged"):
        Trainer(cfg, progress=False)


def test_the_trainer_names_no_method() -> None:
    """The training core has no method-specific branch: staged, distill and auto live in their
    plug-ins (stages.py, teacher.py, autobranch.py); the core neither names their config fields
    nor imports those modules (comments and docstrings aside)."""
    root = Path(__file__).resolve().parents[1] / "medmtl" / "engine"
    banned = {"init_from", "teacher", "freeze_trunk_epochs", "DISTILL", "AUTO", "frozen",
              "_optimizer_step", "student_tap", "probe_epochs", "run_auto", "Teacher"}
    for name in ("trainer.py", "loop.py", "history.py", "optim.py", "run_state.py"):
        tree = ast.parse((root / name).read_text())
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        used |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                    for a in n.names} | {n.module or "" for n in ast.walk(tree)
                                         if isinstance(n, ast.ImportFrom)}
        assert not used & banned, (name, used & banned)
        assert not {"medmtl.engine.autobranch", "medmtl.engine.teacher", "autobranch",
                    "teacher"} & imported, (name, imported)


def test_plugins_of_installed_packages_are_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 synth_tiny: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A package that declares `[project.entry-points."medmtl.plugins"]` is imported on first
    use: its method is then a preset like any other; one that fails to import is named."""
    (tmp_path / "medmtl_toyplug.py").write_text(
        "from medmtl.engine.plugin_api import PLUGINS, MethodPlugin\n"
        "from medmtl.methods import register_method\n"
        "@PLUGINS.register('toyplug')\n"
        "class Toy(MethodPlugin):\n"
        "    name = 'toyplug'\n"
        "    def stage(self, epoch):\n"
        "        return 'toy'\n"
        "register_method('toyplug', {'model': {'arch': 'dual'}, 'plugins': ['toyplug']})\n")
    dist = tmp_path / "medmtl_toyplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: medmtl-toyplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[medmtl.plugins]\ntoyplug = medmtl_toyplug\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(methods, "_entry_points_loaded", False)
    try:
        cfg = build_config("toyplug", {**_TINY, "data": str(synth_tiny)})
        assert (cfg.model.arch, cfg.plugins) == ("dual", ["toyplug"])
        assert "toyplug" in PLUGINS
    finally:
        PLUGINS.unregister("toyplug")
        unregister_method("toyplug")
        sys.modules.pop("medmtl_toyplug", None)
    (tmp_path / "medmtl_toyplug.py").write_text("raise RuntimeError('broken on purpose')\n")
    monkeypatch.setattr(methods, "_entry_points_loaded", False)
    with pytest.raises(PluginError, match=r"method plug-in 'toyplug' \(medmtl_toyplug, entry "
                                          r"point group medmtl.plugins\) failed to import: "
                                          r"RuntimeError: broken on purpose"):
        methods.presets()
    monkeypatch.setattr(methods, "_entry_points_loaded", False)  # the CLI: one line, exit 2
    code, err = run_main(["train", "--data", str(synth_tiny), "--method", "fixed", "--out",
                          str(tmp_path / "never")], capsys)
    assert code == 2 and err.strip().splitlines() == [
        "error: method plug-in 'toyplug' (medmtl_toyplug, entry point group medmtl.plugins) "
        "failed to import: RuntimeError: broken on purpose; fix or uninstall that package"]
    sys.modules.pop("medmtl_toyplug", None)
    monkeypatch.setattr(methods, "_entry_points_loaded", True)
