"""Models: shapes for every arch x task set, parameter budget, gradient routing, info, pretrained errors.

CPU, random init, size n, 64 px images; torch runs single-threaded here (the CI box is shared).
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from _tol import assert_close_scaled
from torch import nn

from medmtl.config import ModelConfig
from medmtl.models import (
    ARCHS,
    MultiTaskModel,
    build_model,
    count_parameters,
    flatten_predictions,
    model_info,
)
from medmtl.models import backbone as backbone_mod

IMG = 64
ALL_ARCHS = [
    ("single", ("detect",), "backbone"),
    ("single", ("classify",), "backbone"),
    ("shared", ("detect", "classify"), "backbone"),
    ("shared", ("detect", "classify"), "neck8"),
    ("shared", ("detect", "classify"), "neck16"),
    ("shared", ("detect", "classify"), "neck32"),
    ("detach", ("detect", "classify"), "backbone"),
    ("dual", ("detect", "classify"), "backbone"),
    ("split1", ("detect", "classify"), "backbone"),
    ("split2", ("detect", "classify"), "backbone"),
    ("split3", ("detect", "classify"), "backbone"),
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("MEDMTL_TEST_THREADS", "1")))  # see conftest.py
    yield
    torch.set_num_threads(n)


@functools.cache
def _cached(
    arch: str, tasks: tuple[str, ...], kw: tuple[tuple[str, object], ...]
) -> MultiTaskModel:
    torch.manual_seed(0)
    return build_model(ModelConfig(arch=arch, tasks=tasks, size="n", **dict(kw)))


def _model(
    arch: str = "shared", tasks: tuple[str, ...] = ("detect", "classify"), **kw
) -> MultiTaskModel:
    """Size-n model, built once per configuration (tests must not change it: copy first)."""
    return _cached(arch, tasks, tuple(sorted(kw.items())))


def _grads_from(model: nn.Module, task: str) -> dict[int, torch.Tensor | None]:
    """Back-propagate a loss of `task` only; {id(param): grad}."""
    model.zero_grad(set_to_none=True)
    out = model(torch.rand(2, 3, IMG, IMG))
    if task == "classify":
        loss = nn.functional.cross_entropy(out["classify"], torch.tensor([0, 2]))
    else:
        loss = sum(f.float().square().mean() for f in out["detect"])
    loss.backward()
    return {id(p): p.grad for p in model.parameters()}


def _reached(grads: dict[int, torch.Tensor | None], params: list[nn.Parameter]) -> list[bool]:
    return [grads[id(p)] is not None for p in params]


def _ids(params: list[nn.Parameter]) -> set[int]:
    return {id(p) for p in params}


@pytest.mark.parametrize(("arch", "tasks", "view_source"), ALL_ARCHS)
def test_arch_forward_shapes_and_bookkeeping(
    arch: str, tasks: tuple[str, ...], view_source: str
) -> None:
    m = _model(arch, tasks, view_source=view_source)
    assert m.arch == arch and m.tasks == tasks and m.strides == [8, 16, 32]
    out = m(torch.rand(2, 3, IMG, IMG))
    assert list(out) == list(tasks)
    if "detect" in tasks:
        det = out["detect"]
        assert isinstance(det, list) and len(det) == 3
        for f, s in zip(det, m.strides, strict=True):
            assert f.shape == (2, 4 * m.reg_max + m.num_classes, IMG // s, IMG // s)
        box, cls = flatten_predictions(det, m.reg_max, m.num_classes)
        assert box.shape == (2, 84, 64) and cls.shape == (2, 84, 4)
    if "classify" in tasks:
        assert out["classify"].shape == (2, m.num_views)
    # every parameter belongs to some task; shared + task params partition each task's reach
    shared = _ids(m.shared_parameters())
    reach_all: set[int] = set()
    for t in tasks:
        own = _ids(m.task_parameters(t))
        assert not own & shared
        assert own | shared == _ids(m.task_reach(t)) | (shared if len(tasks) > 1 else set())
        reach_all |= _ids(m.task_reach(t))
    assert reach_all == _ids(list(m.parameters()))
    # stage groups cover exactly the shared parameters
    staged = [p for _, ps in m.shared_stages() for p in ps]
    assert _ids(staged) == shared and len(staged) == len(shared)
    last = m.last_shared_parameter()
    assert (last is None) == (not shared)
    if last is not None:
        assert id(last) in shared and last.dim() == 4


@pytest.mark.parametrize(
    ("arch", "view_source"),
    [
        ("shared", "backbone"),
        ("shared", "neck16"),
        ("detach", "backbone"),
        ("dual", "backbone"),
        ("split2", "backbone"),
    ],
)
def test_task_reach_matches_autograd(arch: str, view_source: str) -> None:
    m = _model(arch, view_source=view_source)
    for task in m.tasks:
        grads = _grads_from(m, task)
        got = {k for k, g in grads.items() if g is not None}
        assert got == _ids(m.task_reach(task)), task


def test_size_n_joint_model_under_2m_params() -> None:
    assert count_parameters(_model("shared")) < 2_000_000


def test_shared_classify_loss_reaches_shared_params() -> None:
    m = _model("shared")
    grads = _grads_from(m, "classify")
    shared = m.shared_parameters()
    assert shared and all(_reached(grads, shared))
    nonzero = [float(grads[id(p)].abs().sum()) > 0 for p in shared]  # type: ignore[union-attr]
    # timm zero-inits the last BN weight of each residual branch, so at init those branches'
    # inner conv/BN parameters get an exact zero gradient (but are connected: grad is not None)
    assert sum(nonzero) > 0.5 * len(shared)
    last = m.last_shared_parameter()
    assert last is not None and float(grads[id(last)].abs().sum()) > 0  # type: ignore[union-attr]
    assert last is m.trunk.stages[-1][-1].conv_transition.conv.weight  # type: ignore[index,union-attr]
    assert not any(_reached(grads, list(m.detect_head.parameters())))  # type: ignore[union-attr]
    assert not any(_reached(grads, list(m.neck.parameters())))  # type: ignore[union-attr]


def test_dual_classify_loss_leaves_detect_branch_alone() -> None:
    m = _model("dual")
    assert m.shared_parameters() == [] and m.last_shared_parameter() is None
    grads = _grads_from(m, "classify")
    assert not any(_reached(grads, m.task_parameters("detect")))
    assert all(_reached(grads, m.task_parameters("classify")))
    assert count_parameters(m.det_body) == count_parameters(m.cls_body)  # type: ignore[arg-type]


def test_detach_classify_loss_skips_backbone() -> None:
    m = _model("detach")
    assert m.shared_parameters() == [] and m.last_shared_parameter() is None
    grads = _grads_from(m, "classify")
    assert not any(_reached(grads, list(m.trunk.parameters())))  # type: ignore[union-attr]
    assert all(_reached(grads, list(m.classify_head.parameters())))  # type: ignore[union-attr]
    assert all(_reached(_grads_from(m, "detect"), list(m.trunk.parameters())))  # type: ignore[union-attr]


def test_split2_shares_stem_and_two_stages() -> None:
    m = _model("split2")
    trunk, det, cls = m.trunk, m.det_body, m.cls_body
    assert trunk is not None and det is not None and cls is not None
    assert len(trunk.stages) == 3 and len(det.stages) == len(cls.stages) == trunk.num_stages - 3
    assert [n for n, _ in m.shared_stages()] == ["backbone.stage0", "backbone.stage1",
                                                 "backbone.stage2"]
    grads = _grads_from(m, "classify")
    assert all(_reached(grads, list(trunk.parameters())))
    assert not any(_reached(grads, list(det.parameters())))
    assert all(_reached(grads, list(cls.parameters())))
    last = m.last_shared_parameter()
    assert last is not None and last is trunk.stages[2][-1].conv_transition.conv.weight  # type: ignore[index]
    assert float(grads[id(last)].abs().sum()) > 0  # type: ignore[union-attr]
    # duplicated stages are independent copies
    assert not _ids(list(det.parameters())) & _ids(list(cls.parameters()))


def test_neck8_view_routes_through_neck() -> None:
    m = _model("shared", view_source="neck8")
    neck = m.neck
    assert neck is not None
    grads = _grads_from(m, "classify")
    assert all(_reached(grads, neck.level_parameters(0)))
    bottom_up = [
        p for mod in (neck.down3, neck.bu4, neck.down4, neck.bu5) for p in mod.parameters()
    ]
    assert not any(_reached(grads, bottom_up))
    shared = _ids(m.shared_parameters())
    assert _ids(neck.level_parameters(0)) <= shared and not _ids(bottom_up) & shared
    last = m.last_shared_parameter()
    assert last is neck.td3.fuse.conv.weight
    assert float(grads[id(last)].abs().sum()) > 0  # type: ignore[union-attr]
    assert m.shared_stages()[-1][0] == "neck.neck8"


def test_channels_last_matches_contiguous() -> None:
    m = copy.deepcopy(_model("shared")).eval()
    x = torch.rand(1, 3, IMG, IMG)
    with torch.no_grad():
        ref = m(x)
        m = m.to(memory_format=torch.channels_last)
        out = m(x.to(memory_format=torch.channels_last))
    # another conv kernel order: the floor is scaled to the model's largest output (the view
    # logits are only ~0.07 at init)
    scale = max(float(t.abs().max()) for t in [*ref["detect"], ref["classify"]])
    for a, b in zip(out["detect"], ref["detect"], strict=True):
        assert_close_scaled(a, b, rtol=1e-4, scale=scale)
    assert_close_scaled(out["classify"], ref["classify"], rtol=1e-4, scale=scale)


def test_model_info_positive() -> None:
    m = _model("shared")
    m.train()
    info = model_info(m, 64)
    assert info["params"] == count_parameters(m) > 0 and info["gflops"] > 0
    assert m.training  # mode restored


def test_class_bias_prior_and_box_bias() -> None:
    m = _model("shared")
    head = m.detect_head
    assert head is not None
    for cls, box in zip(head.cls, head.box, strict=True):
        assert torch.sigmoid(cls[-1].bias).max() <= 0.0101
        assert torch.all(box[-1].bias == 1.0)


@pytest.mark.parametrize(
    ("kw", "err"),
    [
        ({"arch": "split0"}, "k must be in 1.."),
        ({"arch": "split4"}, "k must be in 1.."),
        ({"arch": "split2", "view_source": "neck8"}, "view_source must be 'backbone'"),
        ({"arch": "dual", "view_source": "neck16"}, "view_source must be 'backbone'"),
        ({"arch": "shared", "tasks": ("detect",)}, "use arch 'single'"),
        ({"arch": "single"}, "takes 1 task"),
        ({"arch": "shared", "backbone": "no_such_net"}, "unknown timm model"),
    ],
)
def test_bad_configs_raise(kw: dict, err: str) -> None:
    with pytest.raises(ValueError, match=err):
        build_model(ModelConfig(size="n", **kw))


def test_unknown_arch_lists_known() -> None:
    with pytest.raises(KeyError, match="shared"):
        build_model(ModelConfig(arch="nope"))
    assert {"single", "shared", "dual", "detach", "split"} <= set(ARCHS.names())


@pytest.mark.timeout(30)
def test_pretrained_offline_fails_fast_with_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(backbone_mod, "_weights_cached", lambda pcfg: False)  # even if cached here
    with pytest.raises(
        RuntimeError,
        match=r"could not download pretrained weights for cs3darknet_m: .*pretrained=False",
    ):
        build_model(ModelConfig(size="m", pretrained=True))


@pytest.mark.timeout(30)
def test_pretrained_download_error_is_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> nn.Module:
        raise OSError("network down")

    monkeypatch.setattr(backbone_mod, "_check_pretrained", lambda name: None)
    monkeypatch.setattr(backbone_mod.timm, "create_model", boom)
    with pytest.raises(
        RuntimeError, match="could not download pretrained weights for resnet18: network down"
    ):
        backbone_mod.create_features("resnet18", pretrained=True)


def test_pretrained_without_weights_is_explained() -> None:
    with pytest.raises(RuntimeError, match="no pretrained weights exist for the custom narrow"):
        build_model(ModelConfig(size="n", pretrained=True))
    with pytest.raises(RuntimeError, match="timm has no pretrained weights for 'cs3darknet_s'"):
        build_model(ModelConfig(size="s", pretrained=True))


def test_other_timm_backbone_and_opaque_extractor() -> None:
    m = _model("split2", backbone="resnet18")  # FeatureListNet: splittable
    assert m(torch.rand(1, 3, IMG, IMG))["classify"].shape == (1, 3)
    m = _model("shared", backbone="efficientnet_b0")
    out = m(torch.rand(1, 3, IMG, IMG))
    assert [f.shape[-1] for f in out["detect"]] == [8, 4, 2]
    assert m.last_shared_parameter() is not None
    # timm's EfficientNet extractor is hook-based; medmtl asks for the flattened sequential one,
    # so it splits too (issue 28: split<k> and auto on a pretrained EfficientNet-Lite)
    m = _model("split2", backbone="efficientnet_b0")
    assert m(torch.rand(1, 3, IMG, IMG))["classify"].shape == (1, 3)
    # an extractor that stays opaque (one stage) is refused by split<k> in one line
    from medmtl.models.backbone import Backbone

    opaque = Backbone([nn.Identity()], ["body"], [8, 16, 32], [8, 16, 32], [0, 1, 2], "x",
                      sequential=False)
    with pytest.raises(ValueError, match="cannot be separated"):
        opaque.split(1)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # legacy exporter: onnxscript not a dep
def test_onnx_export_opset17_matches_torch(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")

    class Flat(nn.Module):  # tuple outputs: detect levels then view logits
        def __init__(self, m: MultiTaskModel) -> None:
            super().__init__()
            self.m = m

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.m(x)
            return (*out["detect"], out["classify"])

    wrapped = Flat(copy.deepcopy(_model("split2"))).eval()  # eval first: export restores the mode
    x = torch.rand(1, 3, IMG, IMG)
    path = tmp_path / "m.onnx"
    torch.onnx.export(
        wrapped, (x,), str(path), opset_version=17, dynamo=False, input_names=["images"]
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref = wrapped(x)
    scale = max(float(b.abs().max()) for b in ref)  # as above: the largest output's magnitude
    for a, b in zip(got, ref, strict=True):
        assert_close_scaled(torch.from_numpy(a), b, rtol=1e-3, atol=1e-5, scale=scale)
