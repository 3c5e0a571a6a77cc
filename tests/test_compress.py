"""Compressed ONNX graphs: `medmtl export --int8 / --half / --nms`, `medmtl val` on .onnx graphs
(same split, same COCO scorer, same end-to-end timer), and NMS in the graph agreeing with
`medmtl predict`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from _cli import run_main  # noqa: E402
from test_export import images, make_checkpoint  # noqa: E402

from medmtl.engine.trainer import Trainer  # noqa: E402
from medmtl.inference import load_model  # noqa: E402
from medmtl.inference.compress import graph_meta  # noqa: E402
from medmtl.inference.export import OnnxPredictor  # noqa: E402
from medmtl.methods import build_config  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(synth_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """A shared model trained 6 epochs on the tiny synthetic set, and the mAP@0.5 of its untrained
    start (the trained one detects better, so a compression loss would show)."""
    out = tmp_path_factory.mktemp("compress") / "run"
    cfg = build_config("fixed", {"data": str(synth_tiny), "out": str(out), "epochs": 6,
                                 "imgsz": 64, "batch": 16, "lr": 0.01, "warmup_epochs": 0.5,
                                 "workers": 0, "val_every": 6})
    t = Trainer(cfg, progress=False)
    try:
        initial = t.validate()["detection"]["map50"]
        run = t.fit()
    finally:
        t.close()
    return run / "weights" / "best.pt", initial


def _val(weights: Path, data: Path, out: Path) -> dict:
    from medmtl.engine.validate import validate_checkpoint

    return validate_checkpoint(weights, data, out=out, workers=0, plots=False, latency_iters=3)


@pytest.mark.slow
def test_int8_and_half_scored_by_val(trained: tuple[Path, float], synth_tiny: Path,
                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logging.getLogger().setLevel(logging.ERROR)  # the quantiser's per-node warnings
    trained, initial = trained
    code, err = run_main(["export", "--weights", str(trained), "--int8", "--half",
                          "--calib-n", "16"], capsys)
    assert code == 0, err
    w = trained.parent
    assert graph_meta(w / "best.int8.onnx")["compression"]["calib_images"] == 16
    assert graph_meta(w / "best.half.onnx")["compression"]["kind"] == "fp16"
    i8_dir = w.parent / "compressed" / "int8"  # where the report looks for it
    code, err = run_main(["val", "--weights", str(w / "best.int8.onnx"), "--data",
                          str(synth_tiny), "--out", str(i8_dir), "--workers", "0",
                          "--latency-iters", "3"], capsys)
    assert code == 0, err
    i8 = json.loads((i8_dir / "metrics.json").read_text())
    assert (i8_dir / "predictions.json").is_file()
    pt = _val(trained, synth_tiny, tmp_path / "pt")
    fp = _val(w / "best.onnx", synth_tiny, tmp_path / "fp")
    hf = _val(w / "best.half.onnx", synth_tiny, tmp_path / "hf")
    base = pt["detection"]["map50"]
    # a model that detects better than its untrained start, so that a loss would be visible (a
    # relation, not a level: 0.051 to ~0.2 across machines, the CPU's rounding moves a 6-epoch
    # mAP that much)
    assert base > initial, (initial, pt["detection"])
    # the float graph through ONNX Runtime scores as the checkpoint does (same split, scorer)
    assert abs(fp["detection"]["map50"] - base) < 1e-3
    assert fp["classification"]["accuracy"] == pt["classification"]["accuracy"]
    print(f"map50: pt {base:.4f}, onnx {fp['detection']['map50']:.4f}, "
          f"int8 {i8['detection']['map50']:.4f}, half {hf['detection']['map50']:.4f}")
    # INT8 loses at most a quarter of the mAP (measured: +0.007 on 0.219), fp16 a tenth
    assert i8["detection"]["map50"] >= 0.75 * base
    assert hf["detection"]["map50"] >= 0.9 * base
    for m in (i8, hf):
        assert m["classification"]["accuracy"] >= pt["classification"]["accuracy"] - 0.1
        assert m["efficiency"]["latency_e2e_ort_ms"] > 0 and m["efficiency"]["latency_e2e_ort_n"] == 3
    assert i8["onnx"]["compression"]["kind"] == "int8" and fp["onnx"]["compression"]["kind"] == "fp32"
    assert i8["split"] == pt["split"] and i8["images"] == pt["images"]
    # `report --retime` re-times the compressed graph with the float model, in the same rounds
    from medmtl.experiments.retime import remeasure_latency

    remeasure_latency([w.parent], threads=1, rounds=2)
    eff = json.loads((i8_dir / "metrics.json").read_text())["efficiency"]
    assert eff["latency_e2e_ort_n"] == 20 and eff["latency_e2e_ort_ms"] > 0
    assert "re-timed after all runs" in eff["latency_e2e_context"]
    assert json.loads((i8_dir / "metrics.json").read_text())["detection"] == i8["detection"]
    run_eff = json.loads((w.parent / "metrics.json").read_text())["efficiency"]
    assert run_eff["latency_e2e_ort_n"] == 20 and "re-timed" in run_eff["latency_e2e_context"]


def test_nms_in_graph_matches_predict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--nms: the graph's final boxes equal `medmtl predict`'s (PyTorch + select_detections),
    for a static and a dynamic graph, at two thresholds, per-image max_det included; then
    `medmtl predict` itself on the checkpoint and on the graph; --int8 without calibration data
    is a one-line error."""
    ck = make_checkpoint(tmp_path / "m.pt")
    pt = load_model(ck)
    imgs = images()
    worst = 0.0
    for dynamic in (False, True):
        path = tmp_path / f"nms{dynamic}.onnx"
        code, err = run_main(["export", "--weights", str(ck), "--nms", "--max-det", "8",
                              "--out", str(path)] + (["--dynamic"] if dynamic else []), capsys)
        assert code == 0, err
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == ["images", "conf", "iou"]
        assert [o.name for o in sess.get_outputs()] == ["detections", "view_logits"]
        ox = load_model(path)
        assert isinstance(ox, OnnxPredictor) and ox.nms_in_graph
        total = 0
        for conf, iou in ((0.3, 0.5), (0.5, 0.7)):
            for a, b in zip(pt.predict_batch(imgs, conf, iou, max_det=8),
                            ox.predict_batch(imgs, conf, iou, max_det=8), strict=True):
                assert [d.cls for d in a.detections] == [d.cls for d in b.detections]
                assert len(a.detections) <= 8
                if a.detections:
                    ba, bb = (np.array([d.box for d in r.detections]) for r in (a, b))
                    sa, sb = (np.array([d.score for d in r.detections]) for r in (a, b))
                    worst = max(worst, float(np.abs(ba - bb).max()))
                    assert np.abs(sa - sb).max() < 1e-3
                assert a.view == b.view
                total += len(a.detections)
        assert total > 10  # real detections were compared, some images hit max_det
    print(f"NMS graph vs predict: max |box difference| {worst:.2e} px")
    assert worst < 1e-3
    from PIL import Image

    for i, a in enumerate(imgs):
        Image.fromarray(a).save(tmp_path / f"{i}.png")
    outs = {}
    for name, w in (("pt", ck), ("ox", tmp_path / "nmsFalse.onnx")):
        code, err = run_main(["predict", "--weights", str(w), "--source", str(tmp_path / "*.png"),
                              "--out", str(tmp_path / name), "--conf", "0.4", "--max-det", "8", "--no-save-media",
                              "--device", "cpu"], capsys)
        assert code == 0, err
        outs[name] = [json.loads(x) for x in (tmp_path / name / "predictions.jsonl").open()]
    assert len(outs["pt"]) == 3
    for a, b in zip(outs["pt"], outs["ox"], strict=True):
        assert [d["cls"] for d in a["detections"]] == [d["cls"] for d in b["detections"]]
        for da, db in zip(a["detections"], b["detections"], strict=True):
            assert np.abs(np.array(da["box"]) - np.array(db["box"])).max() <= 0.011  # 2 decimals
    # --int8 without a data YAML to calibrate on: one line naming the checkpoint
    code, err = run_main(["export", "--weights", str(ck), "--int8"], capsys)
    assert code != 0 and "m.pt" in err and "--calib-data" in err


def test_int8_graph_of_a_tf_padded_backbone_runs(synth_tiny: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """EfficientNet-Lite computes TF "same" padding from the input's shape inside the graph;
    quantising that arithmetic changed the pad widths and ONNX Runtime failed in the neck's
    concat ("Non concat axis dimensions must match"). The shape nodes stay float
    (`shape_nodes`), so the INT8 graph runs and its view probabilities follow the float graph's."""
    from medmtl.inference.compress import shape_nodes

    logging.getLogger().setLevel(logging.ERROR)
    ck = make_checkpoint(tmp_path / "lite.pt", backbone="tf_efficientnet_lite0")
    code, err = run_main(["export", "--weights", str(ck), "--int8", "--calib-data",
                          str(synth_tiny), "--calib-n", "8"], capsys)
    assert code == 0, err
    import onnx

    assert len(shape_nodes(onnx.load(str(tmp_path / "lite.onnx")))) > 10  # the pad arithmetic
    fp, i8 = (load_model(tmp_path / f"lite{s}.onnx") for s in ("", ".int8"))
    imgs = images()
    a, b = fp.predict_batch(imgs), i8.predict_batch(imgs)
    for ra, rb in zip(a, b, strict=True):
        pa, pb = (np.array(list(r.view_probs.values())) for r in (ra, rb))
        assert pb.shape == (3,) and np.isfinite(pb).all()
        assert np.abs(pa - pb).max() < 0.25, (pa, pb)  # 8-bit activations move them a little


def _main_fd(args: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`medmtl ARGS` in this process: (exit status, stdout, stderr) at the file-descriptor level,
    so that ONNX Runtime's C++ log would show too."""
    from medmtl.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capfd.readouterr()
    return code, out, err


def test_int8_export_and_val_keep_the_quantiser_quiet(synth_tiny: Path, tmp_path: Path,
                                                      capfd: pytest.CaptureFixture[str],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """#24.14d: ONNX Runtime's quantiser logs a WARNING per Conv whose bias is no initializer
    (the exporter shares equal biases through Identity nodes) and advice to pre-process, on the
    root logger (which then also gets a stderr handler for good). `export --int8` shows one
    summary line instead, whose count is that of such Convs in the float graph; `val` on the
    INT8 graph prints nothing of the quantiser or of ONNX Runtime either."""
    import re

    import onnx

    root = logging.getLogger()
    handlers = root.handlers[:]
    ck = make_checkpoint(tmp_path / "q.pt")
    code, out, err = _main_fd(["export", "--weights", str(ck), "--int8", "--calib-data",
                               str(synth_tiny), "--calib-n", "4"], capfd)
    assert code == 0, err
    g = onnx.load(str(tmp_path / "q.onnx"))
    inits = {i.name for i in g.graph.initializer}
    shared_bias = sum(1 for n in g.graph.node
                      if n.op_type == "Conv" and len(n.input) > 2 and n.input[2] not in inits)
    assert shared_bias > 0  # else this test checks nothing
    assert err.splitlines() == [
        f"int8: ONNX Runtime's quantiser warned {shared_bias} time(s): \"Expected bias '...' to "
        f"be an initializer\" ({shared_bias}x) (--debug shows each)"]
    assert "WARNING" not in err + out and "pre-processing" not in err + out
    assert not [r for r in caplog.records if "bias" in r.getMessage()]
    assert root.handlers == handlers  # no stderr handler left on the root logger
    assert re.search(r"exported \S+q\.int8\.onnx \(static INT8, calibrated on 4 training images",
                     out)
    code, out, err = _main_fd(["val", "--weights", str(tmp_path / "q.int8.onnx"), "--data",
                               str(synth_tiny), "--out", str(tmp_path / "v"), "--workers", "0",
                               "--latency-iters", "0"], capfd)
    assert (code, err) == (0, "") and "WARNING" not in out
    m = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert m["onnx"]["compression"]["kind"] == "int8"
    lat = m["val_latency"]  # a static graph runs one image at a time; 32 val images, batch 16
    assert (lat["device"], lat["batch"], lat["images_timed"]) == ("onnxruntime cpu", 1, 16)
    assert lat["forward_ms_per_image"] > 0
    assert (f"forward pass: {lat['forward_ms_per_image']:.2f} ms/image (onnxruntime cpu, "
            "batch 1; mean over 16 images, first batch left out)") in out.splitlines()
