"""timm feature backbones wrapped so that their stages can be shared or duplicated per task.

`create_backbone(name, pretrained)` builds any timm model with `features_only=True`; the narrow
size-`n` CSP-Darknet is built from timm's CspNet with a smaller width/depth (`narrow_cspdarknet`).

`Backbone.stages` is an `nn.ModuleList`: for timm's `FeatureListNet`/`FeatureDictNet` extractors
(CSP-Darknet, ResNet, ConvNeXt, ...) stage `i` holds the children up to and including the module
that emits timm feature `i` (for CSP-Darknet: stage 0 = stem (stride 2), stages 1..4 = timm's
`stages.0..3` (strides 4, 8, 16, 32)). Running the stages in order is exactly what timm's
extractor does, so a `Backbone` can be cut at stage `k` (`split(k)`) and the tail duplicated.
Extractors that are not a plain module sequence (hook- or getter-based: EfficientNet, ViT, ...)
are kept as one opaque stage; they work for `shared`/`dual`/`detach`/`single`, not `split<k>`.
"""

from __future__ import annotations

import os
import socket
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import FeatureDictNet, build_model_with_cfg, get_pretrained_cfg
from torch import Tensor, nn

from .layers import last_conv
from .pretrained import PACKAGED, PretrainedError, missing_source_hint, report_once, resolve_weights

OUT_STRIDES = (8, 16, 32)
_HINT = "train with pretrained=False or pre-populate the HF/torch cache"


class Backbone(nn.Module):
    """A run of feature stages. `first` is the global index of `stages[0]` in the full backbone;
    `out_indices` are the global indices of the stages whose outputs are the stride 8/16/32 maps."""

    def __init__(
        self,
        stages: Sequence[nn.Module],
        stage_names: Sequence[str],
        reductions: Sequence[int],
        channels: Sequence[int],
        out_indices: Sequence[int],
        name: str,
        first: int = 0,
        sequential: bool = True,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
    ) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.stage_names = list(stage_names)  # global, all stages of the full backbone
        self.reductions = list(reductions)  # global: output stride of each stage / feature
        self.channels = list(channels)  # global: output channels of each stage / feature
        self.out_indices = list(out_indices)
        self.name = name
        self.first = first
        self.sequential = sequential
        self.mean, self.std = tuple(mean), tuple(std)  # input normalisation the weights expect
        # where the weights came from (medmtl.models.pretrained): metrics.json and the header
        self.weights_source: dict[str, object] = {"kind": "random"}

    # --- structure -------------------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        """Stages of the full backbone (not only of this piece)."""
        return len(self.stage_names)

    @property
    def out_channels(self) -> list[int]:
        return [self.channels[i] for i in self.out_indices]

    @property
    def last_channels(self) -> int:
        return self.channels[-1]

    def global_indices(self) -> list[int]:
        return list(range(self.first, self.first + len(self.stages))) if self.sequential else [0]

    def split(self, k: int) -> tuple[Backbone, Backbone]:
        """(stages < k, stages >= k), sharing the modules (no copy)."""
        if not self.sequential:
            raise ValueError(
                f"backbone {self.name!r} is a hook/getter-based timm feature extractor whose stages "
                "cannot be separated; split<k> needs a FeatureListNet backbone (CSP-Darknet, ResNet, "
                "ConvNeXt, ...); use arch shared/dual/detach with this backbone"
            )
        if self.first != 0 or not 1 <= k <= self.num_stages - 1:
            raise ValueError(
                f"split{k}: k must be in 1..{self.num_stages - 1} for backbone {self.name!r} "
                f"({self.num_stages} stages: {', '.join(self.stage_names)})"
            )
        meta = (self.stage_names, self.reductions, self.channels, self.out_indices, self.name)
        norm = {"mean": self.mean, "std": self.std}
        head = Backbone(list(self.stages[:k]), *meta, first=0, **norm)
        tail = Backbone(list(self.stages[k:]), *meta, first=k, **norm)
        head.weights_source = tail.weights_source = self.weights_source
        return head, tail

    def stage_parameters(self) -> list[tuple[str, list[nn.Parameter]]]:
        if not self.sequential:
            return [("backbone", list(self.parameters()))]
        return [
            (f"backbone.stage{g}", list(stage.parameters()))
            for g, stage in zip(self.global_indices(), self.stages, strict=True)
        ]

    def last_conv_weight(self) -> nn.Parameter | None:
        """Weight of the last conv of this piece's last stage."""
        conv = last_conv(self.stages[-1])
        return None if conv is None else conv.weight

    # --- forward ---------------------------------------------------------------------------------
    def run(self, x: Tensor, feats: dict[int, Tensor]) -> Tensor:
        """Run this piece's stages on `x`, storing the outputs of output stages in `feats` (by global
        index); returns the last stage's output."""
        if not self.sequential:
            outs = self.stages[0](x)
            if isinstance(outs, dict):
                outs = list(outs.values())
            for i in self.out_indices:
                feats[i] = outs[i]
            return outs[-1]
        for g, stage in zip(self.global_indices(), self.stages, strict=True):
            x = stage(x)
            if g in self.out_indices:
                feats[g] = x
        return x

    def forward(self, x: Tensor) -> list[Tensor]:
        """Full backbone only: the stride 8, 16, 32 maps."""
        feats: dict[int, Tensor] = {}
        self.run(x, feats)
        return [feats[i] for i in self.out_indices]


# --- construction ----------------------------------------------------------------------------------
def _pick_out_indices(reductions: Sequence[int], name: str) -> list[int]:
    out = []
    for r in OUT_STRIDES:
        idx = [i for i, red in enumerate(reductions) if red == r]
        if not idx:
            raise ValueError(
                f"backbone {name!r} gives feature strides {list(reductions)}; need 8, 16 and 32"
            )
        out.append(idx[-1])
    return out


def wrap_features(fnet: nn.Module, name: str) -> Backbone:
    """Turn a timm `features_only` model into a `Backbone`."""
    info = fnet.feature_info
    reductions, channels = list(info.reduction()), list(info.channels())
    out_indices = _pick_out_indices(reductions, name)
    last = out_indices[-1]
    pcfg = getattr(fnet, "pretrained_cfg", None) or {}
    norm = {
        "mean": pcfg.get("mean", IMAGENET_DEFAULT_MEAN),
        "std": pcfg.get("std", IMAGENET_DEFAULT_STD),
    }
    fmt = str(getattr(getattr(fnet, "output_fmt", None), "value", "NCHW"))
    if not isinstance(fnet, FeatureDictNet) or getattr(fnet, "concat", False) or fmt != "NCHW":
        return Backbone(
            [fnet], ["body"], reductions, channels, out_indices, name, sequential=False, **norm
        )
    groups: list[OrderedDict[str, nn.Module]] = []
    names: list[str] = []
    current: OrderedDict[str, nn.Module] = OrderedDict()
    for child_name, child in fnet.items():
        current[child_name] = child
        if child_name in fnet.return_layers:
            groups.append(current)
            names.append(child_name)
            current = OrderedDict()
    groups, names = groups[: last + 1], names[: last + 1]
    stages = [nn.Sequential(g) for g in groups]
    return Backbone(
        stages, names, reductions[: last + 1], channels[: last + 1], out_indices, name, **norm
    )


def narrow_cspdarknet(width: float, depth: float) -> nn.Module:
    """timm CspNet with the CS3-Darknet layout scaled by `width`/`depth` (each stage >= 1 block),
    as a features_only extractor. Randomly initialised: timm has no weights for custom widths."""
    from timm.models.cspnet import CspNet, _cs3_cfg

    cfg = _cs3_cfg(width_multiplier=width, depth_multiplier=depth)
    cfg = replace(cfg, stages=replace(cfg.stages, depth=tuple(max(1, d) for d in cfg.stages.depth)))
    return build_model_with_cfg(
        CspNet,
        "cs3darknet_s",
        False,
        model_cfg=cfg,
        features_only=True,
        feature_cfg={"flatten_sequential": True, "out_indices": (0, 1, 2, 3, 4)},
    )


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _offline() -> bool:
    if _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _weights_cached(pcfg: object) -> bool:
    file = getattr(pcfg, "file", None)
    if file:
        return Path(file).exists()
    hub_id = getattr(pcfg, "hf_hub_id", None)
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, rev = hub_id.partition("@")
        for fname in ("model.safetensors", "pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(repo, fname, revision=rev or None), str):
                return True
    url = getattr(pcfg, "url", None)
    if url:
        return (Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name).exists()
    return False


def _weights_url(pcfg: object) -> str:
    if getattr(pcfg, "hf_hub_id", None):
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    return str(getattr(pcfg, "url", "") or "")


def _probe(url: str, timeout: float = 3.0) -> str | None:
    """None if the weights host accepts a TCP connection, else the reason (skipped behind a proxy,
    where a direct connection says nothing)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    parsed = urlparse(url)
    if not parsed.hostname:
        return None
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError as e:
        return f"cannot reach {parsed.hostname}:{port} ({e})"
    return None


def _check_pretrained(name: str) -> None:
    """Fail fast (before timm's retrying download) when the weights cannot be had."""
    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        return
    pcfg = get_pretrained_cfg(name)
    has = pcfg is not None and any(getattr(pcfg, a, None) for a in ("url", "hf_hub_id", "file"))
    if not has:
        alt = (
            " (cs3darknet_focus_s has ImageNet weights)" if name.startswith("cs3darknet_s") else ""
        )
        raise PretrainedError(
            f"timm has no pretrained weights for {name!r}{alt}; use pretrained=False, a backbone "
            "with weights (timm.list_models(pretrained=True)) or --backbone-weights FILE"
        )
    if _weights_cached(pcfg):
        return
    if _offline():
        raise PretrainedError(
            f"could not download pretrained weights for {name}: offline mode (HF_HUB_OFFLINE) and "
            f"the weights are not in the local cache; {missing_source_hint(name)}; or {_HINT}"
        )
    reason = _probe(_weights_url(pcfg))
    if reason:
        raise PretrainedError(f"could not download pretrained weights for {name}: {reason}; "
                              f"{missing_source_hint(name)}; or {_HINT}")


def _features_model(name: str) -> nn.Module:
    """timm `features_only` model, randomly initialised. Where timm's default extractor is not a
    module sequence (EfficientNet's, MobileNet's), the flattened one is asked for, so that its
    stages can be cut (split<k>, auto); its tensors are the same modules under flattened names."""
    fnet = timm.create_model(name, pretrained=False, features_only=True)
    if isinstance(fnet, FeatureDictNet) or name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        return fnet
    try:
        flat = timm.create_model(name, pretrained=False, features_only=True,
                                 feature_cfg={"flatten_sequential": True})
    except Exception:  # noqa: BLE001 -- a model timm cannot flatten: keep its own extractor
        return fnet
    same = list(flat.feature_info.reduction()) == list(fnet.feature_info.reduction())
    return flat if isinstance(flat, FeatureDictNet) and same else fnet


def create_features(name: str, pretrained: bool, weights_file: str | Path | None = None
                    ) -> tuple[nn.Module, dict[str, object]]:
    """timm `features_only` model by name and the record of where its weights came from
    (`medmtl.models.pretrained`: a file, an installed package, timm's hub, or random); pretrained
    errors become one clear `PretrainedError`."""
    if not name.startswith(("hf-hub:", "hf_hub:", "local-dir:")) and not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}")
    if not pretrained and weights_file is None:
        return _features_model(name), {"kind": "random"}
    if weights_file is not None or name in PACKAGED:
        fnet = _features_model(name)
        source = resolve_weights(fnet, name, weights_file, pretrained)
        if source is not None:
            report_once(name, source)
            return fnet, source
    _check_pretrained(name)
    try:
        fnet = timm.create_model(name, pretrained=True, features_only=True)
    except Exception as e:  # download / cache / hub errors of many types
        raise PretrainedError(f"could not download pretrained weights for {name}: {e}; "
                              f"{missing_source_hint(name)}; or {_HINT}") from e
    pcfg = get_pretrained_cfg(name)
    source = {"kind": "timm", "name": name,
              "hub": getattr(pcfg, "hf_hub_id", None) or getattr(pcfg, "url", None)}
    report_once(name, source)
    return fnet, source


def create_backbone(
    name: str, pretrained: bool = False, width: float | None = None, depth: float | None = None,
    weights_file: str | Path | None = None,
) -> Backbone:
    """`name` is a timm model; with `width`/`depth`, `name` must be a CS3-Darknet and the narrow
    variant is built (no pretrained weights exist for it). `weights_file`: the backbone's weights
    from a file (`medmtl.models.pretrained`)."""
    if width is None and depth is None:
        fnet, source = create_features(name, pretrained, weights_file)
        bb = wrap_features(fnet, name)
        bb.weights_source = source
        return bb
    label = f"{name}[width={width}, depth={depth}]"
    if pretrained or weights_file is not None:
        raise PretrainedError(
            f"no pretrained weights exist for the custom narrow CSP-Darknet {label} (size 'n'); "
            "use pretrained=False, size 's'/'m', or set model.backbone to a timm model with weights"
        )
    if not name.startswith("cs3darknet"):
        raise ValueError(f"width/depth scaling is only implemented for cs3darknet, not {name!r}")
    return wrap_features(narrow_cspdarknet(width or 1.0, depth or 1.0), label)
