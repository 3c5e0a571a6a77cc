"""Issue #24.10 and #24.12: patient leakage between train and val named at the start of a run,
in metrics.json and in the report; the view-abstention threshold measured on val, stored in the
checkpoint and applied by `medmtl predict`, and blank images that get no view."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medmtl.data import load_data_yaml
from medmtl.data.dataset_yaml import list_split_images
from medmtl.data.splits import (
    data_leakage,
    group_of,
    leakage_line,
    split_by_group,
    write_file_lists,
)
from medmtl.evaluation.abstention import abstention_threshold, is_blank

pytestmark = pytest.mark.usefixtures("one_thread")


def _main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`medmtl ARGS` in this process: (exit status, stdout + stderr)."""
    from _cli import run_cli

    code, out, err = run_cli(args, capsys)
    return code, out + err


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medmtl.data.synth import generate

    return generate(tmp_path_factory.mktemp("d"), n_train=40, n_val=16, imgsz=64, seed=7)


def _leaky(synth: Path, out: Path) -> Path:
    """A frame split of train+val: every 4th image to val, so patients sit on both sides."""
    spec = load_data_yaml(synth)
    pool = sorted(list_split_images(spec, "train") + list_split_images(spec, "val"))
    val = pool[::4]
    train = [p for p in pool if p not in set(val)]
    return write_file_lists(out, {"train": train, "val": val}, spec, {}, "# frame split\n")


def _train(data: Path, run: Path, capsys: pytest.CaptureFixture[str]) -> str:
    code, text = _main(["train", "--data", str(data), "--out", str(run), "--epochs", "1",
                        "--imgsz", "64", "--batch", "8", "--workers", "0", "--device", "cpu",
                        "--no-progress"], capsys)
    assert code == 0, text
    return text


class _Capture:
    """stdout and stderr of a module-scoped run (capsys is per test)."""

    def __init__(self) -> None:
        import io

        self.out, self.err = io.StringIO(), io.StringIO()

    def text(self) -> str:
        return self.out.getvalue() + self.err.getvalue()


@pytest.fixture(scope="module")
def grouped_run(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("grouped")
    data = split_by_group(synth, val_fraction=0.3, seed=0, out_dir=root / "split")
    run = root / "cmp" / "runs" / "fixed-s0"
    mp = pytest.MonkeyPatch()
    cap = _Capture()
    with mp.context() as m:
        m.setattr("sys.stdout", cap.out)
        m.setattr("sys.stderr", cap.err)
        from medmtl.cli import main

        try:
            main(["train", "--data", str(data), "--out", str(run), "--epochs", "1", "--imgsz",
                  "64", "--batch", "8", "--workers", "0", "--device", "cpu", "--no-progress"])
        except SystemExit as e:
            assert not e.code, cap.text()
    return run, cap.text()


# --- #24.10 patient leakage -----------------------------------------------------------------

def test_leaky_split_is_named_at_the_start_in_metrics_and_in_the_report(
        synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medmtl.report import write_report

    data = _leaky(synth, tmp_path / "split")
    spec = load_data_yaml(data)
    train, val = list_split_images(spec, "train"), list_split_images(spec, "val")
    shared = {group_of(p) for p in train} & {group_of(p) for p in val}
    n_val_shared = sum(group_of(p) in shared for p in val)
    assert shared and len(val) == 14
    rec = data_leakage(data)  # what `compare` prints before its runs
    assert rec is not None and rec["shared_patients"] == len(shared)
    assert rec["val_images_shared"] == n_val_shared and rec["val_images"] == 14
    line = leakage_line(rec, data)
    assert line == (f"warning: patient leakage: {len(shared)} of {rec['val_patients']} val "
                    f"patient(s) also have training images ({n_val_shared} of 14 val images, "
                    f"{100 * n_val_shared / 14:.0f} %; group regex '^([^-]+)-' on the file "
                    f"name), so the val scores flatter the model; `medmtl split --data {data} "
                    "--out DIR` writes a patient-grouped split (DIR/data.yaml)")
    run = tmp_path / "cmp" / "runs" / "fixed-s0"
    text = _train(data, run, capsys)
    assert text.count(line) == 1  # one line, before the first epoch
    assert text.index(line) < text.index("epoch 1/1")
    got = json.loads((run / "metrics.json").read_text())["data"]["leakage"]
    assert got == rec
    paths = write_report(tmp_path / "cmp", plots=False)
    md = paths["md"].read_text()
    setup = md.split("## Setup")[1].split("\n## ")[0]
    assert (f"| patient leakage (train/val) | {len(shared)} patient(s) in both; {n_val_shared} "
            "of 14 val images are of them |") in setup
    assert f"> **Note:** Patient leakage: {len(shared)} of {rec['val_patients']} val" in md
    assert json.loads(paths["json"].read_text())["leakage"] == rec


def test_grouped_split_shows_no_leakage(grouped_run: tuple[Path, str]) -> None:
    from medmtl.report import write_report

    run, text = grouped_run
    assert "patient leakage" not in text
    rec = json.loads((run / "metrics.json").read_text())["data"]["leakage"]
    assert rec["shared_patients"] == 0 and rec["val_images_shared"] == 0
    md = write_report(run.parents[1], plots=False)["md"].read_text()
    assert "| patient leakage (train/val) | none: no patient in both" in md
    assert "Patient leakage" not in md


# --- #24.12 view abstention -----------------------------------------------------------------

def test_abstention_threshold_by_hand() -> None:
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    c = np.array([1, 1, 0, 1, 0], bool)
    # accuracy of the frames at or above each value: 1, 1, 2/3, 3/4, 3/5
    r = abstention_threshold(p, c, target=0.75)
    assert (r["threshold"], r["accepted"], r["coverage"]) == (0.6, 4, 0.8)
    assert r["accuracy_accepted"] == 0.75 and r["reached"] and r["accuracy_all"] == 0.6
    assert abstention_threshold(p, c, target=1.0)["threshold"] == 0.8
    # ties are accepted together: at 0.9 both tied frames (one wrong) come in
    tie = abstention_threshold(np.array([0.9, 0.9, 0.5]), np.array([1, 0, 1], bool), 0.9)
    assert (tie["threshold"], tie["reached"], tie["accepted"]) == (1.0, False, 0)
    assert abstention_threshold(np.array([0.9, 0.9, 0.5]), np.array([1, 0, 1], bool),
                                0.6)["threshold"] == 0.5
    assert is_blank(np.zeros((64, 64, 3), np.uint8)) and is_blank(np.full((8, 8, 3), 128))
    noise = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    assert not is_blank(noise)


def test_run_stores_the_threshold_and_predict_abstains(
        grouped_run: tuple[Path, str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from medmtl.inference import load_model
    from medmtl.models.checkpoint import load_checkpoint

    run, _ = grouped_run
    rec = json.loads((run / "metrics.json").read_text())["view_abstention"]
    rows = [r for r in json.loads((run / "eval" / "view_predictions.json").read_text())["images"]
            if r["view"] is not None]
    # by hand: the lowest max probability whose accepted frames are >= 90 % right
    best_t, best_n = 1.0, 0
    for t in sorted({max(r["probs"]) for r in rows}, reverse=True):
        acc = [r["pred"] == r["view"] for r in rows if max(r["probs"]) >= t]
        if np.mean(acc) >= 0.9:
            best_t, best_n = t, len(acc)
    assert rec["frames"] == len(rows) and rec["target"] == 0.9 and rec["split"] == "val"
    assert rec["threshold"] == pytest.approx(best_t) and rec["accepted"] == best_n
    assert load_checkpoint(run / "weights" / "best.pt")["view_abstention"] == rec
    blank = tmp_path / "blank.png"
    Image.new("RGB", (64, 64), (0, 0, 0)).save(blank)
    noise = tmp_path / "noise.png"
    Image.fromarray((np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)
                    ).save(noise)
    weights = str(run / "weights" / "best.pt")
    out = tmp_path / "p"
    code, text = _main(["predict", "--source", str(tmp_path), "--weights", weights, "--out",
                        str(out), "--device", "cpu", "--no-save-media"], capsys)
    assert code == 0, text
    assert f"{blank}: view uncertain: blank image" in text
    t = rec["threshold"]
    assert f"view abstention: threshold {t:.2f} from the checkpoint" in text
    p = next(max(json.loads(ln)["view_probs"].values()) for ln in
             (out / "predictions.jsonl").read_text().splitlines() if "noise" in ln)
    line = next(ln for ln in text.splitlines() if ln.startswith(f"{noise}: "))
    if p >= t:
        assert line.startswith(f"{noise}: view ") and "uncertain" not in line
    else:
        assert "view uncertain (p=" in line and "< threshold" in line
    # an explicit --view-min-prob wins over the checkpoint's
    code, text = _main(["predict", "--source", str(noise), "--weights", weights, "--out",
                        str(tmp_path / "q"), "--device", "cpu", "--no-save-media",
                        "--view-min-prob", "1"], capsys)
    assert code == 0 and f"{noise}: view uncertain (p=" in text and "< threshold 1.00)" in text
    r = load_model(weights, device="cpu").predict(np.zeros((64, 64, 3), np.uint8))
    assert r.view is None and r.view_uncertain == "blank image" and r.view_probs


def test_checkpoint_without_threshold_still_refuses_blank(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str],
                                                          ) -> None:
    """A model from before the threshold (like the shipped one) keeps its views but says so;
    a blank image gets no view from it either."""
    from test_inference import make_checkpoint

    from medmtl.inference import predict_command

    ck = make_checkpoint(tmp_path / "old.pt")
    Image.new("RGB", (64, 64), (200, 200, 200)).save(tmp_path / "blank.png")
    s = predict_command(ck, tmp_path / "blank.png", tmp_path / "out", device="cpu",
                        save_media=False)
    assert s["abstention"]["source"] == "none" and s["thresholds"]["view_min_prob"] == 0.0
    assert s["per_image"][0]["text"].startswith("view uncertain: blank image")
    assert s["view"]["uncertain_frames"] == 1 and s["view"]["name"] is None
