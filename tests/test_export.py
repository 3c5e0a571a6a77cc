"""ONNX export: graph outputs, parity with PyTorch after the same NMS, dynamic batch, fp16 guard."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from medmtl.config import ModelConfig, TrainConfig  # noqa: E402
from medmtl.engine.checkpoint import save_checkpoint  # noqa: E402
from medmtl.evaluation.postprocess import postprocess  # noqa: E402
from medmtl.inference import checkpoint_dict, load_model, select_detections  # noqa: E402
from medmtl.inference.export import OnnxPredictor, export_command  # noqa: E402
from medmtl.models import build_model  # noqa: E402

NAMES, VIEWS = ["AR", "MR", "PR", "TR"], ["A4C", "PLAX", "PSAX"]
IMGSZ = 64


pytestmark = pytest.mark.usefixtures("one_thread")


def make_checkpoint(path: Path, arch: str = "shared", seed: int = 0, **model_kw) -> Path:
    """A random tiny model with non-trivial outputs, saved in the project checkpoint format."""
    torch.manual_seed(seed)
    cfg = TrainConfig(imgsz=IMGSZ, model=ModelConfig(arch=arch, size="n", **model_kw))
    model = build_model(cfg.model).eval()
    # rescale the last layers so that their outputs vary (std ~1.5) from image to image and anchor
    # to anchor: varied boxes, some scores > 0.3, view logits that differ between images
    last: list[torch.nn.Module] = []
    if model.detect_head is not None:
        last += [*(b[-1] for b in model.detect_head.box), *(c[-1] for c in model.detect_head.cls)]
    if model.classify_head is not None:
        last.append(model.classify_head.linear)
    stds: dict[int, float] = {}
    hooks = [m.register_forward_hook(lambda m, i, o: stds.__setitem__(id(m), float(i[0].std())))
             for m in last]
    with torch.no_grad():
        model(torch.rand(2, 3, IMGSZ, IMGSZ))
    for h in hooks:
        h.remove()
    for m in last:
        fan_in = m.weight[0].numel()
        torch.nn.init.normal_(m.weight, std=1.5 / (stds[id(m)] * fan_in ** 0.5 + 1e-12))
    if model.detect_head is not None:
        with torch.no_grad():
            for b, c in zip(model.detect_head.box, model.detect_head.cls, strict=True):
                c[-1].bias.fill_(-1.0)
                b[-1].bias.copy_(-0.4 * torch.arange(cfg.model.reg_max).repeat(4))  # short sides
    save_checkpoint(checkpoint_dict(model, cfg, NAMES, VIEWS), path)
    return path


def images() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    out = []
    for h, w in ((90, 150), (64, 64), (120, 70)):
        a = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        a[h // 4: h // 2, w // 3: w // 2] = (255, 40, 40)  # a "jet"
        out.append(a)
    return out


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> Callable[[str], tuple[Path, Path]]:
    """arch -> (checkpoint, exported graph), built once per module. shared: a --dynamic graph
    (batch, H, W); dual, split2: static graphs (batch 1)."""
    cache: dict[str, tuple[Path, Path]] = {}

    def get(arch: str) -> tuple[Path, Path]:
        if arch not in cache:
            ck = make_checkpoint(tmp_path_factory.mktemp(arch) / "best.pt", arch)
            cache[arch] = ck, export_command(ck, dynamic=arch == "shared")
        return cache[arch]

    return get


ARCHS = ["shared", "dual", "split2"]


@pytest.mark.parametrize("arch", ARCHS)
def test_default_path_and_outputs(graph, arch: str) -> None:
    ck, onnx_path = graph(arch)
    assert onnx_path == ck.with_suffix(".onnx") and onnx_path.is_file()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["images"]
    assert [o.name for o in sess.get_outputs()] == ["boxes", "scores", "view_logits"]
    n = sum((IMGSZ // s) ** 2 for s in (8, 16, 32))
    boxes, scores, logits = sess.run(None, {"images": np.zeros((1, 3, IMGSZ, IMGSZ), np.float32)})
    assert boxes.shape == (1, n, 4) and scores.shape == (1, n, 4) and logits.shape == (1, 3)
    assert 0 <= scores.min() and scores.max() <= 1


@pytest.mark.parametrize("arch", ARCHS)
def test_parity_with_pytorch(graph, arch: str) -> None:
    ck, onnx_path = graph(arch)
    pt, ox = load_model(ck), load_model(onnx_path)
    assert isinstance(ox, OnnxPredictor) and ox.names == NAMES and ox.cls_names == VIEWS
    imgs = images()
    # raw graph outputs on the same letterboxed input
    x = np.random.default_rng(2).random((1, 3, IMGSZ, IMGSZ)).astype(np.float32)
    (b1, s1, v1), (b2, s2, v2) = pt._forward(x), ox._forward(x)
    # boxes (pixels, up to ~200) and view logits: relative to their largest magnitude (ORT and
    # torch differ by ~1e-6 of it); scores are probabilities, already of scale 1
    assert float((b1 - b2).abs().max()) < 1e-5 * float(b1.abs().max())
    assert float((s1 - s2).abs().max()) < 1e-4
    assert float((v1 - v2).abs().max()) < 1e-4 * max(float(v1.abs().max()), 1.0)
    r_pt = pt.predict_batch(imgs, conf=0.4, iou=0.6, max_det=50)
    r_ox = ox.predict_batch(imgs, conf=0.4, iou=0.6, max_det=50)  # static graph: one at a time
    total = 0
    for a, b in zip(r_pt, r_ox, strict=True):
        assert a.image_size == b.image_size
        assert [d.cls for d in a.detections] == [d.cls for d in b.detections]
        if a.detections:
            ba = np.array([d.box for d in a.detections])
            bb = np.array([d.box for d in b.detections])
            assert np.abs(ba - bb).max() <= 1e-3 * max(a.image_size)
            assert np.abs(np.array([d.score for d in a.detections])
                          - np.array([d.score for d in b.detections])).max() < 1e-4
        assert a.view == b.view and a.view is not None
        assert max(abs(a.view_probs[k] - b.view_probs[k]) for k in VIEWS) < 1e-4
        total += len(a.detections)
    assert total > 0  # the comparison saw real detections


def test_dynamic_batch(graph) -> None:
    _, path = graph("shared")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).random((2, 3, IMGSZ, IMGSZ)).astype(np.float32)
    boxes, scores, logits = sess.run(None, {"images": x})
    assert boxes.shape[0] == scores.shape[0] == logits.shape[0] == 2
    one = sess.run(None, {"images": x[1:]})  # batch 2 row 1 == batch 1 alone
    assert np.abs(one[1][0] - scores[1]).max() < 1e-5
    big = sess.run(None, {"images": np.zeros((1, 3, 96, 128), np.float32)})  # dynamic H/W
    assert big[0].shape == (1, sum((96 // s) * (128 // s) for s in (8, 16, 32)), 4)
    ox = load_model(path)
    assert ox.fixed_batch is None and len(ox.predict_batch(images(), conf=0.3)) == 3


def test_single_task_graphs(tmp_path) -> None:
    det = make_checkpoint(tmp_path / "det.pt", "single", tasks=("detect",))
    cls = make_checkpoint(tmp_path / "cls.pt", "single", tasks=("classify",))
    s_det = ort.InferenceSession(str(export_command(det)), providers=["CPUExecutionProvider"])
    s_cls = ort.InferenceSession(str(export_command(cls)), providers=["CPUExecutionProvider"])
    assert [o.name for o in s_det.get_outputs()] == ["boxes", "scores"]
    assert [o.name for o in s_cls.get_outputs()] == ["view_logits"]
    r = load_model(cls.with_suffix(".onnx")).predict(images()[0])
    assert r.detections == [] and r.view_name in VIEWS


def test_half_graph_and_format(graph, tmp_path) -> None:
    """--half writes <stem>.half.onnx beside the float graph (no CUDA needed): fp16 weights,
    float32 input/outputs; its accuracy on a trained model: tests/test_compress.py."""
    import onnx

    ck, _ = graph("dual")
    half = export_command(ck, out=tmp_path / "d.onnx", half=True)
    assert half == tmp_path / "d.half.onnx" and (tmp_path / "d.onnx").is_file()
    proto = onnx.load(str(half))
    types = {t.data_type for t in proto.graph.initializer if len(t.dims) == 4}  # conv weights
    assert types == {onnx.TensorProto.FLOAT16}
    assert half.stat().st_size < 0.6 * (tmp_path / "d.onnx").stat().st_size
    sess = ort.InferenceSession(str(half), providers=["CPUExecutionProvider"])
    assert {i.type for i in sess.get_inputs()} == {"tensor(float)"}
    out = sess.run(None, {"images": np.zeros((1, 3, IMGSZ, IMGSZ), np.float32)})
    assert all(o.dtype == np.float32 for o in out)
    with pytest.raises(ValueError, match="format"):
        export_command(ck, format="tflite")


def test_select_detections_matches_postprocess() -> None:
    torch.manual_seed(0)
    nc, reg_max = 4, 16
    preds = [torch.randn(2, 4 * reg_max + nc, IMGSZ // s, IMGSZ // s) for s in (8, 16, 32)]
    from medmtl.evaluation.postprocess import decode_predictions

    boxes, scores = decode_predictions(preds, [8, 16, 32], reg_max, nc)
    ours = select_detections(boxes, scores, (IMGSZ, IMGSZ), conf=0.3, iou=0.5, max_det=20)
    ref = postprocess(preds, [8, 16, 32], reg_max, nc, conf=0.3, iou=0.5, max_det=20)
    for a, b in zip(ours, ref, strict=True):
        assert a.shape == b.shape and torch.allclose(a, b)


def test_predict_command_with_onnx_weights(graph, tmp_path) -> None:
    from PIL import Image

    from medmtl.inference import predict_command

    ck, onnx_path = graph("dual")
    for i, a in enumerate(images()):
        Image.fromarray(a).save(tmp_path / f"{i}.png")
    s_pt = predict_command(ck, tmp_path, tmp_path / "pt", conf=0.4, device="cpu")
    s_ox = predict_command(onnx_path, tmp_path, tmp_path / "ox", conf=0.4, device="cpu")
    assert s_pt["frames"] == s_ox["frames"] == 3 and s_pt["view"]["vote_counts"] == \
        s_ox["view"]["vote_counts"]
    assert {k: v["frames"] for k, v in s_pt["jets"].items()} == \
        {k: v["frames"] for k, v in s_ox["jets"].items()}


def test_onnx_predictor_threads_do_not_spin(graph) -> None:
    """The predictor's pipeline decodes, letterboxes and runs NMS between graph runs in the same
    process: busy-waiting ORT threads starved that work until the next scheduler tick (end to end
    8.0 ms instead of 5.4 ms on 2 cores, docs/benchmarks.md), so spinning is off."""
    from medmtl.inference.export import OnnxPredictor

    pred = OnnxPredictor.from_file(graph("shared")[1], "cpu", threads=2)
    opts = pred.session.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.intra_op_num_threads == 2
