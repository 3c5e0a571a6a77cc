"""`--view-labels forward` (issue #27): the view loss of untrusted frames forward-corrected by an
estimated corruption matrix (Hendrycks et al. 2018), trusted clip labels (`--trusted`) trained on
as they are; config and command-line errors; the run records both."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from _cli import run_main
from rich.console import Console

from medmtl.config import LossConfig
from medmtl.data import clip_of, collate, load_data_yaml, scan_split
from medmtl.distributed import LOCAL
from medmtl.engine.data_setup import RunData
from medmtl.losses import MultiTaskCriterion
from medmtl.losses.classify import ViewLoss
from medmtl.methods import build_config

C3 = torch.tensor([[0.7, 0.2, 0.1],
                   [0.1, 0.8, 0.1],
                   [0.3, 0.0, 0.7]])


def _example() -> tuple[torch.Tensor, ...]:
    logits = torch.tensor([[2.0, 0.5, -1.0],
                           [0.1, 0.3, 0.2],
                           [-0.5, 1.5, 0.0],
                           [1.0, -2.0, 0.5],
                           [0.0, 0.0, 3.0]])
    view = torch.tensor([1, 0, 2, 1, 2])
    mask = torch.tensor([True, True, True, False, True])  # row 3: no view label
    trusted = torch.tensor([False, True, False, True, True])
    return logits, view, mask, trusted


def test_loss_matches_hand_computation() -> None:
    logits, view, mask, trusted = _example()
    p = logits.softmax(-1)
    q = p @ C3
    # untrusted labelled rows 0, 2: -log (p C)[y]; trusted labelled rows 1, 4: -log p[y]
    rows = [-torch.log(q[0, 1] + 1e-12), -torch.log(p[1, 0]), -torch.log(q[2, 2] + 1e-12),
            -torch.log(p[4, 2])]
    hand = torch.stack(rows).mean()
    loss = ViewLoss(3, LossConfig(), corruption=C3.numpy())(logits, view, mask, trusted=trusted)
    torch.testing.assert_close(loss, hand, rtol=1e-6, atol=1e-7)
    assert abs(float(loss) - 1.0316) < 5e-4  # the number itself, written out
    # the sync-free path (present=True, also the data-parallel one) gives the same loss
    torch.testing.assert_close(ViewLoss(3, LossConfig(), corruption=C3)(
        logits, view, mask, present=True, trusted=trusted), hand, rtol=1e-6, atol=1e-7)
    # class weights: PyTorch's weighted mean, each row weighed by its label's weight
    w = torch.tensor([2.0, 1.0, 0.5])
    hand_w = (torch.stack(rows) * w[view[mask]]).sum() / w[view[mask]].sum()
    got = ViewLoss(3, LossConfig(view_class_weights=w.tolist()), corruption=C3)(
        logits, view, mask, trusted=trusted)
    torch.testing.assert_close(got, hand_w, rtol=1e-6, atol=1e-7)
    # no trusted rows: every labelled row is corrected; no labelled row: None
    all_fwd = torch.stack([-torch.log(q[i, view[i]] + 1e-12) for i in (0, 1, 2, 4)]).mean()
    torch.testing.assert_close(ViewLoss(3, corruption=C3)(logits, view, mask), all_fwd,
                               rtol=1e-6, atol=1e-7)
    assert ViewLoss(3, corruption=C3)(logits, view, torch.zeros(5, dtype=torch.bool)) is None
    # the gradient reaches the logits of labelled rows only
    z = logits.clone().requires_grad_(True)
    ViewLoss(3, corruption=C3)(z, view, mask, trusted=trusted).backward()
    assert z.grad is not None and z.grad[3].abs().sum() == 0 and z.grad[0].abs().sum() > 0


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 0.5]])
def test_identity_corruption_is_plain_cross_entropy(smoothing: float,
                                                    weights: list[float] | None) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 3, generator=g) * 2
    view = torch.randint(0, 3, (16,), generator=g)
    mask = torch.rand(16, generator=g) > 0.2
    trusted = torch.rand(16, generator=g) > 0.5
    cfg = LossConfig(label_smoothing=smoothing, view_class_weights=weights)
    ref = F.cross_entropy(logits[mask], view[mask], label_smoothing=smoothing,
                          weight=None if weights is None else torch.tensor(weights))
    for present in (False, True):
        got = ViewLoss(3, cfg, corruption=np.eye(3))(logits, view, mask, present=present,
                                                      trusted=trusted)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
        assert got is not None
    # and the loss without a corruption matrix ignores `trusted`
    torch.testing.assert_close(ViewLoss(3, cfg)(logits, view, mask, trusted=trusted), ref,
                               rtol=1e-5, atol=1e-6)


def test_bad_matrix_refused() -> None:
    with pytest.raises(ValueError, match="must be 3x3"):
        ViewLoss(3, corruption=np.eye(4))
    with pytest.raises(ValueError, match="rows summing to 1"):
        ViewLoss(3, corruption=np.full((3, 3), 0.5))


def _recall0(flip: float, corrected: bool) -> float:
    """A linear classifier of three 8-D Gaussian classes whose class-0 labels are flipped to
    class 1 with probability `flip`; returns its class-0 recall on clean test points."""
    g = torch.Generator().manual_seed(3)
    means = torch.zeros(3, 8)
    means[0, 0] = means[1, 1] = means[2, 2] = 3.0

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(3).repeat_interleave(n)
        return means[y] + torch.randn(3 * n, 8, generator=g), y

    x, y = draw(400)
    given = y.clone()
    given[(y == 0) & (torch.rand(len(y), generator=g) < flip)] = 1
    c = torch.tensor([[1 - flip, flip, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    loss_fn = ViewLoss(3, corruption=c if corrected else None)
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    mask = torch.ones(len(y), dtype=torch.bool)
    for _ in range(300):
        opt.zero_grad()
        loss = loss_fn(model(x), given, mask)
        assert loss is not None
        loss.backward()
        opt.step()
    xt, yt = draw(300)
    with torch.no_grad():
        pred = model(xt).argmax(-1)  # inference reads the plain softmax: the clean view
    return float((pred[yt == 0] == 0).float().mean())


def test_known_truth_simulation_recovers_class_0(one_thread: None) -> None:
    """Against the reference of the same classifier trained on the clean labels (what the noise
    takes away): plain CE loses most of class 0's recall, forward correction wins it back."""
    clean = _recall0(0.0, corrected=False)
    plain, forward = _recall0(0.6, corrected=False), _recall0(0.6, corrected=True)
    assert plain < clean - 0.4, (plain, clean)  # plain CE learns the noisy labels
    assert forward > clean - 0.1, (forward, clean)
    assert forward > plain + 0.3


def test_criterion_uses_trusted_flags_and_validation_stays_plain() -> None:
    logits, view, mask, trusted = _example()
    crit = MultiTaskCriterion(("classify",), 4, 3, 16, [8, 16, 32], view_corruption=C3)
    targets = {"view": view, "view_mask": mask, "view_trusted": trusted}
    got = crit({"classify": logits}, targets, {"classify": True})["classify"]
    want = ViewLoss(3, corruption=C3)(logits, view, mask, trusted=trusted)
    torch.testing.assert_close(got, want)
    assert crit.view_eval.corruption is None  # the validation loss: plain cross-entropy
    torch.testing.assert_close(crit.view_eval(logits, view, mask),
                               F.cross_entropy(logits[mask], view[mask]))


# ---------------------------------------------------------------- config, files, run


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medmtl.data.synth import generate

    return generate(tmp_path_factory.mktemp("fwd"), n_train=48, n_val=16, imgsz=64, seed=7,
                    view_flips=0.5)


@pytest.fixture(scope="module")
def files(noisy: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A trusted CSV naming two training clips (with a view other than their frames'), one
    validation clip and one clip of no split; a corruption.json."""
    spec = load_data_yaml(noisy)
    names = list(spec.cls_names)
    train = scan_split(spec, "train").records
    val = scan_split(spec, "val").records
    by_clip: dict[str, list] = {}
    for r in train:
        by_clip.setdefault(clip_of(r.path), []).append(r)
    clips = sorted(by_clip)[:2]
    views = {c: (by_clip[c][0].view + 1) % 3 for c in clips}
    val_clip = clip_of(val[0].path)
    d = tmp_path_factory.mktemp("trusted")
    rows = [f"{c},{names[v]},tester,2024-05-01,by eye" for c, v in views.items()]
    rows += [f"{val_clip},{names[val[0].view]},tester,2024-05-01,by eye",
             "nosuchpatient-unnamed_1_9,PLAX,tester,2024-05-01,by eye"]
    trusted = d / "trusted.csv"
    trusted.write_text("clip,view,reviewer,date,how\n" + "\n".join(rows) + "\n")
    matrix = [[0.8, 0.1, 0.1], [0.15, 0.8, 0.05], [0.1, 0.1, 0.8]]
    corruption = d / "corruption.json"
    corruption.write_text(json.dumps({"classes": names, "matrix": matrix}))
    frames = sum(len(by_clip[c]) for c in clips)
    relabelled = sum(r.view != views[c] for c in clips for r in by_clip[c] if r.view is not None)
    return {"trusted": trusted, "corruption": corruption, "matrix": matrix, "clips": clips,
            "views": views, "frames": frames, "relabelled": relabelled, "val_clip": val_clip}


def _cfg(data: Path, out: Path, **kw: object):  # noqa: ANN202
    over = {"data": str(data), "out": str(out), "epochs": 1, "imgsz": 64, "batch": 16,
            "workers": 0, "diag_steps": 0, "cache": False}
    over.update(kw)
    return build_config("fixed", over)


def test_config_errors() -> None:
    with pytest.raises(ValueError, match=r"--view-labels forward needs --corruption FILE.*"
                                         r"medmtl audit --label-issues --trusted FILE"):
        build_config("fixed", {"view_labels": "forward"})
    for policy in ("as-is", "clip-majority", "drop-inconsistent"):
        with pytest.raises(ValueError, match=rf"--corruption is used only by --view-labels "
                                             rf"forward \(this run has --view-labels {policy}\)"):
            build_config("fixed", {"view_labels": policy, "corruption": "c.json"})
        # --trusted alone goes with any policy
        assert build_config("fixed", {"view_labels": policy, "trusted": "t.csv"}).trusted == "t.csv"
    cfg = build_config("fixed", {"view_labels": "forward", "corruption": "c.json"})
    assert (cfg.view_labels, cfg.corruption, cfg.trusted) == ("forward", "c.json", None)


def test_cli_errors_one_line_exit_2(noisy: Path, files: dict, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    base = ["train", "--data", str(noisy), "--epochs", "1", "--imgsz", "64", "--workers", "0",
            "--device", "cpu", "--out", str(tmp_path / "r")]
    code, err = run_main([*base, "--view-labels", "forward"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: Invalid value for --corruption: --view-labels forward needs "
                          "--corruption FILE")
    assert "run `medmtl audit --label-issues --trusted FILE` first" in err
    code, err = run_main([*base, "--corruption", str(files["corruption"])], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "--corruption is used only by --view-labels forward (this run has --view-labels " \
           "as-is)" in err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"classes": ["A4C", "PLAX", "PSAX"], "matrix": [[1, 0], [0, 1]]}))
    code, err = run_main([*base, "--view-labels", "forward", "--corruption", str(bad)], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.strip() == (f"error: Invalid value for --corruption: {bad}: matrix must be 3x3, "
                           "non-negative, rows summing to 1")
    code, err = run_main([*base, "--view-labels", "forward", "--corruption",
                          str(tmp_path / "missing.json")], capsys)
    assert code == 2 and "corruption file not found (medmtl audit --label-issues --trusted FILE " \
                         "writes one)" in err, err
    not_trusted = tmp_path / "t.csv"
    not_trusted.write_text("clip,view\nx,PLAX\n")
    code, err = run_main([*base, "--trusted", str(not_trusted)], capsys)
    assert code == 2 and "Invalid value for --trusted" in err and "missing column(s) reviewer, " \
                         "date, how" in err, err
    assert not (tmp_path / "r").exists()  # nothing started
    # compare: the same checks, before any run
    code, err = run_main(["compare", "--data", str(noisy), "--methods", "fixed", "--seeds", "1",
                          "--out", str(tmp_path / "cmp"), "--view-labels", "forward",
                          "--corruption", str(bad)], capsys)
    assert code == 2 and "Invalid value for --corruption" in err and "must be 3x3" in err, err
    assert not (tmp_path / "cmp" / "runs").exists()


def test_trusted_labels_in_the_training_data(noisy: Path, files: dict, tmp_path: Path) -> None:
    quiet = Console(quiet=True)
    cfg = _cfg(noisy, tmp_path / "a", view_labels="forward", corruption=str(files["corruption"]),
               trusted=str(files["trusted"]))
    data = RunData(cfg, LOCAL, torch.device("cpu"), quiet, tmp_path / "a")
    clips, views = files["clips"], files["views"]
    for r, orig in zip(data.train_set.records, data.train_index.records, strict=True):
        c = clip_of(r.path)
        assert r.view_trusted == (c in clips)
        assert r.view == (views[c] if c in clips else orig.view)  # forward: the files' labels
        assert not orig.view_trusted  # the split's own records are untouched
    assert any(r.view != o.view for r, o in zip(data.train_set.records, data.train_index.records,
                                                strict=True))
    assert not any(r.view_trusted for r in data.val_set.records)  # evaluation: the files
    rec = data.data_record()
    t = rec["trusted"]
    assert t["path"] == str(files["trusted"]) and t["clips"] == 4
    assert t["sha256"] == hashlib.sha256(files["trusted"].read_bytes()).hexdigest()
    assert t["frames_trusted"] == files["frames"] > 0 and t["clips_in_train"] == 2
    assert t["frames_relabelled"] == files["relabelled"] > 0
    assert t["clips_unmatched"] == 1 and t["unmatched"] == ["nosuchpatient-unnamed_1_9"]
    np.testing.assert_allclose(rec["corruption"]["matrix"], files["matrix"], atol=1e-12)
    assert rec["view_labels"]["policy"] == "forward"
    assert data.corruption_matrix.shape == (3, 3)
    # the batch carries the flag as a bool tensor
    idx = [i for i, r in enumerate(data.train_set.records) if r.view_trusted][:2] + [
        next(i for i, r in enumerate(data.train_set.records) if not r.view_trusted)]
    batch = collate([data.train_set[i] for i in idx])
    assert batch["view_trusted"].dtype == torch.bool
    assert batch["view_trusted"].tolist() == [True, True, False]
    # --trusted with another policy overrides its clips' labels too; --strict makes an unmatched
    # trusted clip an error
    major = RunData(_cfg(noisy, tmp_path / "b", view_labels="clip-majority",
                         trusted=str(files["trusted"])), LOCAL, torch.device("cpu"), quiet,
                    tmp_path / "b")
    assert all(r.view == views[clip_of(r.path)] for r in major.train_set.records
               if r.view_trusted)
    assert major.data_record()["corruption"] is None
    from medmtl.data.dataset_yaml import DataError

    with pytest.raises(DataError, match=r"1 trusted clip\(s\) match no frame .*"
                                        r"nosuchpatient-unnamed_1_9 \(--strict\)"):
        RunData(_cfg(noisy, tmp_path / "c", trusted=str(files["trusted"]), strict=True), LOCAL,
                torch.device("cpu"), quiet, tmp_path / "c")


def test_train_forward_end_to_end(noisy: Path, files: dict, tmp_path: Path, one_thread: None,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    from medmtl.cli import main

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", str(noisy), "--view-labels", "forward", "--corruption",
              str(files["corruption"]), "--trusted", str(files["trusted"]), "--epochs", "1",
              "--imgsz", "64", "--batch", "16", "--workers", "0", "--device", "cpu",
              "--no-cache", "--diag-steps", "0", "--no-progress", "--out", str(out)])
    cap = capsys.readouterr()
    assert e.value.code == 0, cap.err
    text = " ".join(cap.err.split())  # the training console (stderr), unwrapped
    assert "view labels forward:" in text and "forward-corrected (--corruption)" in text
    assert f"trusted view labels {files['trusted']}" in text
    assert f"{files['frames']} training frames of 2 clips take the trusted view" in text
    assert "warning:" in text and "1 trusted clip(s) match no frame" in text
    assert f"view loss forward-corrected by {files['corruption']}" in text
    m = json.loads((out / "metrics.json").read_text())
    data = m["data"]
    assert data["view_labels"]["policy"] == "forward"
    assert data["trusted"]["clips"] == 4 and data["trusted"]["frames_trusted"] == files["frames"]
    assert data["trusted"]["clips_in_train"] == 2 and data["trusted"]["clips_unmatched"] == 1
    assert data["trusted"]["frames_relabelled"] == files["relabelled"]
    corr = data["corruption"]
    np.testing.assert_allclose(corr["matrix"], files["matrix"], atol=1e-12)
    assert corr["classes"] == list(load_data_yaml(noisy).cls_names)
    assert corr["sha256"] == hashlib.sha256(files["corruption"].read_bytes()).hexdigest()
    assert corr["path"] == str(files["corruption"])
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["view_labels"] == "forward" and saved["corruption"] == str(files["corruption"])
    assert saved["trusted"] == str(files["trusted"])
    history = (out / "history.csv").read_text().splitlines()
    cols = dict(zip(history[0].split(","), history[1].split(","), strict=True))
    assert np.isfinite(float(cols["loss/classify"]))
