"""Issue #13: staged training (--init-from, --freeze-trunk-epochs), initial task weights
(--init-weights) and knowledge distillation (--teacher), on tiny synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medmtl.engine.trainer import Trainer, train
from medmtl.methods import build_config
from medmtl.models.checkpoint import load_checkpoint, model_from_checkpoint
from tests._cli import run_main

_TINY = {"epochs": 1, "imgsz": 64, "batch": 16, "workers": 0, "seed": 0, "device": "cpu",
         "diag_steps": 0}


def _cfg(method: str, data: Path, out: Path, **over: object) -> object:
    return build_config(method, {**_TINY, "data": str(data), "out": str(out), **over})


@pytest.fixture(scope="module")
def dual_run(synth_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch dual run: the source / teacher of the tests below."""
    out = tmp_path_factory.mktemp("hyb") / "dual"
    torch.set_num_threads(1)
    return train(_cfg("dual", synth_tiny, out, epochs=2), progress=False)


def _det_path(run: Path) -> dict[str, torch.Tensor]:
    """The detection path of the run's best model (EMA), keyed as a shared model's."""
    src, _, _ = model_from_checkpoint(run / "weights" / "best.pt")
    out = {}
    for k, v in src.state_dict().items():
        if k.startswith("det_body."):
            out["trunk." + k[len("det_body."):]] = v
        elif k.startswith(("neck.", "detect_head.")):
            out[k] = v
    return out


def test_init_from_loads_exactly_the_source_detector(synth_tiny: Path, dual_run: Path,
                                                     tmp_path: Path, one_thread: None) -> None:
    want = _det_path(dual_run)
    assert sum(k.startswith("trunk.") for k in want) > 100
    cfg = _cfg("staged", synth_tiny, tmp_path / "staged", init_from=str(dual_run),
               freeze_trunk_epochs=1)
    t = Trainer(cfg, progress=False)
    try:
        got = t.model.state_dict()
        for k, v in want.items():
            assert torch.equal(got[k], v), k
        # the view head starts fresh: it is no copy of the dual run's
        src = load_checkpoint(dual_run / "weights" / "best.pt")["ema"]["module"]
        k = next(k for k in got if k.startswith("classify_head.") and k.endswith("weight"))
        assert not torch.equal(got[k], src[k])
        t.fit()
    finally:
        t.close()
    # the frozen epoch left the trunk (weights and BatchNorm statistics) exactly as loaded,
    # while the neck trained
    after = load_checkpoint(tmp_path / "staged" / "weights" / "last.pt")["model"]
    trunk = [k for k in want if k.startswith("trunk.")]
    assert all(torch.equal(after[k], want[k]) for k in trunk)
    neck = [k for k in want if k.startswith("neck.") and want[k].is_floating_point()]
    assert any(not torch.equal(after[k], want[k]) for k in neck)

    # both stages in the run folder, and the cost of both
    out = tmp_path / "staged"
    rows = (out / "history.csv").read_text().splitlines()
    assert rows[1].split(",")[rows[0].split(",").index("stage")] == "frozen-trunk"
    tr = json.loads((out / "metrics.json").read_text())["training"]
    src = json.loads((dual_run / "metrics.json").read_text())["training"]
    assert [s["stage"] for s in tr["stages"]] == ["init-from", "this run"]
    assert tr["stages"][0]["seconds"] == src["seconds"] > 0
    assert tr["seconds_total"] == pytest.approx(src["seconds"] + tr["seconds"], abs=0.011)
    assert (out / "stages" / "dual" / "history.csv").read_text() == \
        (dual_run / "history.csv").read_text()
    from medmtl.report.collect import extract

    assert extract({"training": tr})["train_seconds"] == tr["seconds_total"]


def test_init_from_fills_split_pieces_by_stage_index(synth_tiny: Path, dual_run: Path,
                                                     tmp_path: Path, one_thread: None) -> None:
    """split2: the trunk takes stages 0-2 of the source detector, both tails stages 3-4."""
    src, _, _ = model_from_checkpoint(dual_run / "weights" / "best.pt")
    s = src.state_dict()
    cfg = _cfg("split2", synth_tiny, tmp_path / "s2", init_from=str(dual_run))
    t = Trainer(cfg, progress=False)
    try:
        got = t.model.state_dict()
        first = t.model.det_body.first
        assert first == 3
        for k, v in got.items():
            if k.startswith("trunk.stages."):
                assert torch.equal(v, s["det_body." + k[len("trunk."):]]), k
            for piece in ("det_body.", "cls_body."):
                if k.startswith(piece + "stages."):
                    i, rest = k[len(piece) + len("stages."):].split(".", 1)
                    assert torch.equal(v, s[f"det_body.stages.{int(i) + first}.{rest}"]), k
    finally:
        t.close()


def test_staged_errors_are_one_line(synth_tiny: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    base = ["train", "--data", str(synth_tiny), "--imgsz", "64", "--epochs", "1",
            "--out", str(tmp_path / "x")]
    code, err = run_main([*base, "--method", "staged"], capsys)
    assert code == 2 and "--init-from RUN_DIR" in err and len(err.strip().splitlines()) <= 2
    code, err = run_main([*base, "--method", "fixed", "--freeze-trunk-epochs", "2"], capsys)
    assert code == 2 and "init_from" in err
    code, err = run_main([*base, "--method", "staged", "--init-from", str(tmp_path / "nope")],
                         capsys)
    assert code != 0 and "nope" in err and "no finished run" in err


@pytest.mark.parametrize(("name", "want"), [("gradnorm", {"detect": 4 / 3, "classify": 2 / 3}),
                                            ("famo", {"detect": 4 / 3, "classify": 2 / 3}),
                                            ("uncertainty", {"detect": 1.0, "classify": 0.5})])
def test_init_weights_set_where_learned_weights_start(name: str, want: dict[str, float]) -> None:
    from medmtl.balancing import create_balancer

    cfg = build_config(name, {"balancer": {"init_weights": {"detect": 1.0, "classify": 0.5}}})
    assert cfg.balancer.model_dump()["init_weights"] == {"detect": 1.0, "classify": 0.5}
    got = create_balancer(("detect", "classify"), cfg.balancer).weights()
    assert got == pytest.approx(want, rel=1e-6)
    # a third task (distillation) not named starts at 1 (before scaling)
    got3 = create_balancer(("detect", "classify", "distill"), cfg.balancer).weights()
    assert got3["detect"] / got3["distill"] == pytest.approx(1.0, rel=1e-6)
    assert got3["classify"] / got3["distill"] == pytest.approx(0.5, rel=1e-6)
    # unset: the block is as before (no init_weights key) and weights start equal
    plain = build_config(name)
    assert "init_weights" not in plain.balancer.model_dump()
    assert set(create_balancer(("detect", "classify"), plain.balancer).weights().values()) == {1.0}


def test_init_weights_errors(synth_tiny: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    base = ["train", "--data", str(synth_tiny), "--imgsz", "64", "--epochs", "1",
            "--out", str(tmp_path / "x")]
    code, err = run_main([*base, "--method", "pcgrad", "--init-weights", "detect=1,classify=0.5"],
                         capsys)
    assert code == 2 and "'pcgrad' does not learn task weights" in err and "gradnorm" in err
    code, err = run_main([*base, "--method", "gradnorm", "--init-weights", "detect=1,view=2"],
                         capsys)
    assert code == 2 and "unknown task(s) view" in err
    code, err = run_main([*base, "--method", "gradnorm", "--init-weights", "detect=0"], capsys)
    assert code == 2 and "> 0" in err


def _agreement(model: torch.nn.Module, teacher: object, loader: object) -> tuple[float, float,
                                                                                  float]:
    """(view argmax agreement with the teacher, mean view KL, mean class-score KL) on `loader`.
    The student runs on batch statistics (train mode, its BatchNorm buffers restored after): a
    few dozen steps leave its running statistics mostly at their initial values."""
    from medmtl.losses.distill import bernoulli_kl, softmax_kl
    from medmtl.models.anchors import flatten_predictions

    saved = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    same, n, kl_view, kl_cls = 0, 0, 0.0, 0.0
    with torch.no_grad():
        for batch in loader:
            x = batch["images"].float() / 255
            s, t = model(x), teacher.forward(x)
            same += int((s["classify"].argmax(1) == t["classify"].argmax(1)).sum())
            kl_view += float(softmax_kl(s["classify"], t["classify"], 1.0).sum())
            sc = flatten_predictions(s["detect"], 16, model.num_classes)[1]
            tc = flatten_predictions(t["detect"], 16, model.num_classes)[1]
            kl_cls += float(bernoulli_kl(sc, tc.sigmoid()).sum((1, 2)).sum())
            n += len(x)
    model.load_state_dict(saved)
    return same / n, kl_view / n, kl_cls / n


def test_distillation_loss_falls_and_agreement_rises(synth_tiny: Path, dual_run: Path,
                                                     tmp_path: Path, one_thread: None) -> None:
    """Only the distillation task weighs (fixed weights 0, 0, 1): the student learns the
    teacher. Augmentation off: the teacher's outputs come from the per-image cache. A 2-epoch
    teacher at this scale still outputs about its initial priors, so its heads are sharpened
    (view logits x10, class-logit weights x3) to give it a clear, input-dependent
    function to imitate."""
    aug = {k: 0.0 for k in ("scale", "translate", "hsv_h", "hsv_s", "hsv_v", "brightness",
                            "contrast", "fliplr", "mosaic")}
    cfg = _cfg("distill", synth_tiny, tmp_path / "kd", teacher=str(dual_run), epochs=4,
               warmup_epochs=0.0, lr=1e-2, ema=False, augment=aug,
               balancer={"name": "fixed", "weights": {"detect": 0.0, "classify": 0.0,
                                                      "distill": 1.0}})
    t = Trainer(cfg, progress=False)
    try:
        assert t.balancer.tasks == ["detect", "classify", "distill"]
        [kd] = t.plugins  # the distill plug-in holds the teacher
        teacher = kd.teacher
        teacher_net = teacher.models[0][0]
        with torch.no_grad():
            teacher_net.classify_head.linear.weight.mul_(10)
            teacher_net.classify_head.linear.bias.mul_(10)
            for cls in teacher_net.detect_head.cls:
                cls[-1].weight.mul_(3)
        loader = t.data.eval_loader("val")
        before = _agreement(t.model, teacher, loader)
        # the cache gives what a forward gives
        batch = next(iter(loader))
        x = batch["images"].float() / 255
        ids = [m["image_id"] + 10**6 for m in batch["meta"]]
        fresh = teacher(x, ids)
        cached = teacher(x, ids)
        assert torch.equal(fresh["classify"], cached["classify"])
        assert all(torch.equal(a, b) for a, b in zip(fresh["detect"], cached["detect"],
                                                      strict=True))
        teacher.cache = {k: v for k, v in teacher.cache.items() if k < 10**6}
        t.fit()
        after = _agreement(t.model, teacher, loader)
    finally:
        t.close()
    rows = (tmp_path / "kd" / "history.csv").read_text().splitlines()
    col = rows[0].split(",").index("loss/distill")
    losses = [float(r.split(",")[col]) for r in rows[1:]]
    # measured: distillation loss 0.152 -> 0.005; view agreement 0.16 -> 1.0, view KL
    # 0.150 -> 0.012, class-score KL 0.0101 -> 0.0017
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < 0.2 * losses[0], losses
    assert after[0] > before[0] + 0.25, (before, after)  # the view agreement rises
    assert after[1] < 0.3 * before[1], (before, after)
    assert after[2] < 0.5 * before[2], (before, after)
    assert len(teacher.cache) == 96  # every training image once
    m = json.loads((tmp_path / "kd" / "metrics.json").read_text())
    assert set(m["training"]["final_weights"]) == {"detect", "classify", "distill"}
    assert [s["stage"] for s in m["training"]["stages"]] == ["teacher", "this run"]


@pytest.mark.parametrize("name", ["fixed", "gradnorm", "uncertainty", "dwa", "pcgrad", "cagrad",
                                  "famo"])
def test_every_balancer_weighs_a_third_task(name: str, one_thread: None) -> None:
    """With detect, classify and distill on a shared linear trunk, each balancer writes finite
    gradients that move every loss down over a few steps, and reports a weight per task."""
    from medmtl.balancing import create_balancer
    from medmtl.config import BalancerConfig

    tasks = ("detect", "classify", "distill")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    ys = [torch.tanh(x @ torch.randn(8, generator=g) / 3) for _ in tasks]
    trunk = torch.nn.Linear(8, 16)
    heads = torch.nn.ModuleList(torch.nn.Linear(16, 1) for _ in tasks)
    params = [*trunk.parameters(), *heads.parameters()]
    bal = create_balancer(tasks, BalancerConfig(name=name))
    opt = torch.optim.Adam([*params, *bal.parameters()], lr=0.02)

    def losses() -> dict[str, torch.Tensor]:
        h = torch.tanh(trunk(x))
        return {t: ((hd(h).squeeze(-1) - y) ** 2).mean()
                for t, hd, y in zip(tasks, heads, ys, strict=True)}

    first = {t: float(v.detach()) for t, v in losses().items()}
    for _ in range(30):
        opt.zero_grad(set_to_none=True)
        bal.backward(losses(), list(trunk.parameters()), trunk.weight)
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
        opt.step()
        with torch.no_grad():
            bal.after_step({t: v.detach() for t, v in losses().items()})
    last = {t: float(v.detach()) for t, v in losses().items()}
    assert all(last[t] < 0.8 * first[t] for t in tasks), (first, last)
    assert set(bal.weights()) == set(tasks)


def test_teacher_must_fit_the_student(synth_tiny: Path, dual_run: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(["train", "--data", str(synth_tiny), "--method", "distill", "--teacher",
                          str(dual_run), "--imgsz", "96", "--epochs", "1", "--workers", "0",
                          "--device", "cpu", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "--teacher" in err and "imgsz 64 vs 96" in err, err
    assert str(dual_run) in err


@pytest.mark.slow
def test_compare_trains_the_source_first_and_counts_both_stages(
        synth_tiny: Path, tmp_path: Path, no_retime: list[list[Path]]) -> None:
    """`compare --methods staged`: the dual run of the seed is added and trained first; staged
    starts from it; the report's training time is both runs'. (distill's source is planned the
    same way, test_plan_adds_the_source_method...; its teacher stage is recorded as
    test_distillation_loss_falls... shows. Latencies are not asserted here: compare's re-timing
    is skipped, see conftest.py.)"""
    from medmtl.experiments.compare import run_compare
    from medmtl.report.collect import collect_runs, extract

    out = tmp_path / "cmp"
    over = {"epochs": 1, "imgsz": 64, "batch": 16, "workers": 0, "diag_steps": 0}
    run_compare(str(synth_tiny), ["staged"], [0], out, overrides=over, jobs=2, report=False)
    report_runs = {r.name: r for r in collect_runs(out)}
    runs = out / "runs"
    assert {p.name for p in runs.iterdir() if p.is_dir()} == {"dual-s0", "staged-s0"}
    dual = json.loads((runs / "dual-s0" / "metrics.json").read_text())["training"]
    for name, kind, stage in (("staged", "init-from", "joint"),):
        run = runs / f"{name}-s0"
        tr = json.loads((run / "metrics.json").read_text())["training"]
        assert tr["stages"][0]["stage"] == kind
        assert tr["stages"][0]["run"] == str((runs / "dual-s0").resolve())
        assert tr["seconds_total"] == pytest.approx(dual["seconds"] + tr["seconds"], abs=0.011)
        rows = (run / "history.csv").read_text().splitlines()
        assert rows[1].split(",")[rows[0].split(",").index("stage")] == stage
        # what the report reads as the method's training time
        assert extract(report_runs[f"{name}-s0"].metrics)["train_seconds"] == tr["seconds_total"]
    # the source finished training before its dependents started (metrics.json is rewritten
    # by the re-timing at the end: its last history row is the mark)
    assert (runs / "dual-s0" / "history.csv").stat().st_mtime < \
        (runs / "staged-s0" / "config.yaml").stat().st_mtime
    assert [sorted(p.name for p in c) for c in no_retime] == \
        [["dual-s0", "staged-s0"]]  # both would be re-timed, once


def test_plan_adds_the_source_method_and_points_each_seed_at_its_run(synth_tiny: Path,
                                                                      tmp_path: Path) -> None:
    from medmtl.experiments.compare import plan_runs

    plan = plan_runs(str(synth_tiny), ["staged:freeze_trunk_epochs=2", "distill", "fixed"],
                     [0, 1], tmp_path)
    by = {r.name: r.cfg for r in plan}
    assert list(by) == ["dual-s0", "dual-s1", "staged_freeze_trunk_epochs=2-s0",
                        "staged_freeze_trunk_epochs=2-s1", "distill-s0", "distill-s1", "fixed-s0",
                        "fixed-s1"]
    for s in (0, 1):
        src = str((tmp_path / "runs" / f"dual-s{s}").resolve())
        staged = by[f"staged_freeze_trunk_epochs=2-s{s}"]
        assert (staged.init_from, staged.freeze_trunk_epochs, staged.teacher) == (src, 2, None)
        assert by[f"distill-s{s}"].teacher == src and by[f"distill-s{s}"].init_from is None
        assert by[f"fixed-s{s}"].init_from is None and by[f"fixed-s{s}"].teacher is None


def _fake_run(path: Path, method: str, names: list[str], cls_names: list[str]) -> Path:
    """A finished run folder holding a freshly initialised model of `method`."""
    from medmtl.engine.checkpoint import save_checkpoint
    from medmtl.models import build_model
    from medmtl.models.checkpoint import checkpoint_dict

    cfg = build_config(method, {"imgsz": 64})
    cfg.model.num_classes, cfg.model.num_views = len(names), len(cls_names)
    save_checkpoint(checkpoint_dict(build_model(cfg.model), cfg, names, cls_names),
                    path / "weights" / "best.pt")
    (path / "metrics.json").write_text(json.dumps({"training": {"seconds": 2.5}}))
    return path


def test_teacher_pair_and_the_distillation_terms(tmp_path: Path, one_thread: None) -> None:
    """--teacher DETECT_RUN,CLASSIFY_RUN: each task from its run; the loss is 0 on the teacher's
    own outputs; feature imitation and localisation distillation add what they should."""
    from medmtl.engine.teacher import Teacher
    from medmtl.losses.distill import DistillLoss

    names, views = ["a", "b"], ["v1", "v2", "v3"]
    det = _fake_run(tmp_path / "det", "detect", names, views)
    cls = _fake_run(tmp_path / "cls", "classify", names, views)
    cfg = build_config("distill", {"imgsz": 64, "teacher": f"{det},{cls}",
                                   "loss": {"distill_feature": 2.0}})
    teacher = Teacher(cfg, names, views, ("detect", "classify"), torch.device("cpu"))
    assert teacher.cache is None  # augmentation is on by default: batch by batch
    x = torch.rand(2, 3, 64, 64)
    out = teacher(x, [0, 1])
    ref_det, _, _ = model_from_checkpoint(det / "weights" / "best.pt")
    ref_cls, _, _ = model_from_checkpoint(cls / "weights" / "best.pt")
    with torch.no_grad():
        assert torch.equal(out["classify"], ref_cls(x)["classify"])
        assert all(torch.equal(a, b) for a, b in zip(out["detect"], ref_det(x)["detect"],
                                                      strict=True))
    assert len(out["neck"]) == 3
    loss = DistillLoss(len(names), 16, cfg.loss)
    fg = torch.zeros(2, 84, dtype=torch.bool)
    fg[0, 5] = True
    assert float(loss(out, out, fg)) == pytest.approx(0.0, abs=1e-5)
    moved = {**out, "neck": [f + 0.5 for f in out["neck"]]}
    loss(moved, out, fg)
    assert float(loss.parts["feature"]) == pytest.approx(2.0 * 0.25, rel=1e-5)
    # a changed box distribution counts only at the assigned anchor (image 0, anchor 5)
    shifted = [p.clone() for p in out["detect"]]
    shifted[0][1, :64] += torch.randn(64, 8, 8)  # image 1: no positives
    loss({**out, "detect": shifted}, out, fg)
    assert float(loss.parts["box"]) == pytest.approx(0.0, abs=1e-6)
    shifted[0][0, :16, 0, 5] += 3 * torch.arange(16.0)  # image 0, anchor 5 (row 0, col 5)
    loss({**out, "detect": shifted}, out, fg)
    assert float(loss.parts["box"]) > 0.01
    # a pair missing a task is refused in one line
    bad = build_config("distill", {"imgsz": 64, "teacher": str(det)})
    with pytest.raises(ValueError, match="no teacher for classify"):
        Teacher(bad, names, views, ("detect", "classify"), torch.device("cpu"))
