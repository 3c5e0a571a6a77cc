"""The report's opening: what was run (data, splits and their sizes, epochs, image size, model
size, device, versions, date), the single-seed banner, the per-class AP table, and withholding the
advice when no detector learnt anything (every mAP@0.5 zero)."""

from __future__ import annotations

import datetime as _dt
import platform
from collections.abc import Sequence
from typing import Any

from medmtl.report.collect import Run

Block = tuple[Any, ...]


def _split_sizes(data: str) -> str:
    """"train 240, val 80" from the data YAML (image files counted); "" when it cannot be read."""
    try:
        from medmtl.data.dataset_yaml import list_split_images, load_data_yaml

        spec = load_data_yaml(data)  # folders or .txt lists (a `medmtl split` YAML)
        return ", ".join(f"{k} {len(list_split_images(spec, k))}" for k in spec.splits)
    except Exception:  # noqa: BLE001 -- the data moved since: the header says so, nothing else
        return "not readable now"


def setup_blocks(runs: Sequence[Run]) -> list[Block]:
    done = [r for r in runs if r.finished] or list(runs)
    if not done:
        return []
    # describe a joint run when there is one (a single-task classifier has no detector)
    done.sort(key=lambda r: len((r.config.get("model") or {}).get("tasks") or []) == 1)
    cfg, m = done[0].config, done[0].metrics or {}
    # with --test-split grouped the run trained and was scored on <run>/split/data.yaml
    held = done[0].path / "split" / "data.yaml"
    data = str(held) if held.is_file() else str(cfg.get("data", ""))
    model = cfg.get("model") or {}
    tr, eff = m.get("training") or {}, m.get("efficiency") or {}
    import torch

    import medmtl

    params = eff.get("params")
    rows = [
        ["data", str(cfg.get("data", "n/a"))],
        ["splits (images)", _split_sizes(data)],
        ["scored on", f"{m.get('split', 'n/a')} ({m.get('images', 'n/a')} images)"],
        ["patient leakage (train/val)", _leakage_cell(run_leakage(done))],
        ["epochs", str(cfg.get("epochs", "n/a"))],
        ["image size", f"{cfg.get('imgsz', 'n/a')} px"],
        ["model size", f"{model.get('size', 'n/a')}"
         + (f" ({params / 1e6:.2f}M parameters in {done[0].method}; every method's under "
            "Efficiency)" if params else "")],
        ["backbone", _backbone_line(done)],
        ["batch", str(cfg.get("batch", "n/a"))],
        ["device", str(tr.get("device") or cfg.get("device", "n/a"))],
        ["versions", f"medmtl {medmtl.__version__}, torch {torch.__version__}, "
                     f"Python {platform.python_version()}"],
        ["report written", _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")],
    ]
    return [("h", 2, "Setup"), ("table", ["", "value"], rows)]


def run_leakage(runs: Sequence[Run]) -> dict[str, Any] | None:
    """metrics.json's ``data.leakage`` (patients in both train and val) of the first finished
    run that recorded it (every run of a comparison reads the same data)."""
    for r in runs:
        rec = ((r.val_metrics or r.metrics or {}).get("data") or {}).get("leakage")
        if isinstance(rec, dict):
            return rec
    return None


def _leakage_cell(rec: dict[str, Any] | None) -> str:
    if rec is None:
        return "not recorded (runs from an older medmtl)"
    if not rec.get("shared_patients"):
        return f"none: no patient in both (group regex {rec.get('group_regex')!r})"
    return (f"{rec['shared_patients']} patient(s) in both; {rec['val_images_shared']} of "
            f"{rec['val_images']} val images are of them")


def leakage_banner(summary: dict[str, Any]) -> list[Block]:
    """A banner when train and val share patients: the val scores flatter every method."""
    rec = summary.get("leakage")
    if not rec or not rec.get("shared_patients"):
        return []
    return [("banner", f"Patient leakage: {rec['shared_patients']} of {rec['val_patients']} val "
                       f"patient(s) also have training images ({rec['val_images_shared']} of "
                       f"{rec['val_images']} val images), so val scores flatter every method. "
                       "`medmtl split --data D --out DIR` writes a patient-grouped split.")]


def _backbone_line(runs: Sequence[Run]) -> str:
    """The backbone and where its weights came from (metrics.json's ``backbone_weights``), once
    per distinct source over the runs."""
    from medmtl.models.pretrained import describe

    seen: list[str] = []
    for r in runs:
        model = r.config.get("model") or {}
        name = model.get("backbone") or f"the size's CSP-Darknet ({model.get('size', 'n/a')})"
        src = (r.metrics or {}).get("backbone_weights")
        line = f"{name}: {describe(src)}" if src else f"{name}: weights not recorded"
        if line not in seen:
            seen.append(line)
    return "; ".join(seen) or "n/a"


def single_seed_banner(summary: dict[str, Any]) -> list[Block]:
    """One sentence instead of a '± —' in every cell when methods ran one seed."""
    single = [m for m, e in summary["methods"].items() if e["n"] == 1]
    if not single:
        return []
    who = "Every method" if len(single) == len(summary["methods"]) else \
        "These methods: " + ", ".join(single) + ";"
    return [("banner", f"{who} ran a single seed, so no spread (±) and no significance can be "
                       "given: a difference between single runs is not evidence. Run "
                       "`medmtl compare --seeds 3` (or more) for both.")]


def withheld(summary: dict[str, Any]) -> str | None:
    """The reason to give no recommendation: no method detected anything (every mAP@0.5 0)."""
    means = [e["metrics"]["map50"]["mean"] for e in summary["methods"].values()
             if e["metrics"].get("map50", {}).get("mean") is not None]
    if means and all(v == 0 for v in means):
        return ("No recommendation: every method's mAP@0.5 is 0, so no detector learnt anything "
                "to compare (too few epochs or images, or labels that do not match the images: "
                "`medmtl audit --data D`). Train longer and report again.")
    return None


def per_class_ap_blocks(runs: Sequence[Run], methods: Sequence[str]) -> list[Block]:
    """AP@0.5 per jet class (AR, MR, PR, TR) and method, mean over finished seeds."""
    return _per_class_blocks(runs, methods, "detection", "ap50", "AP@0.5 per class (mean over "
                             "seeds; n/a: no such jet in the scored split)")


def per_class_recall_blocks(runs: Sequence[Run], methods: Sequence[str]) -> list[Block]:
    """View recall per class (A4C, PLAX, PSAX) and method, mean over finished seeds: accuracy
    alone hides a class the model never predicts."""
    return _per_class_blocks(runs, methods, "classification", "recall", "View recall per class "
                             "(mean over seeds; n/a: no such view in the scored split)")


def _per_class_blocks(runs: Sequence[Run], methods: Sequence[str], section: str, field: str,
                      title: str) -> list[Block]:
    def per_class(r: Run) -> dict[str, Any]:
        return ((r.metrics or {}).get(section) or {}).get("per_class") or {}

    names: list[str] = []
    for r in runs:
        names += [n for n in per_class(r) if n not in names]
    if not names:
        return []
    rows = []
    for m in methods:
        cells = []
        for n in names:
            xs = [per_class(r).get(n, {}).get(field) for r in runs
                  if r.method == m and r.finished]
            xs = [x for x in xs if x is not None]
            cells.append(f"{sum(xs) / len(xs):.3f}" if xs else "n/a")
        if any(c != "n/a" for c in cells):
            rows.append([m, *cells])
    return [("h", 3, title), ("table", ["method", *names], rows)] if rows else []


def class_name(key: str, names: Sequence[str]) -> str:
    """A class index as saved in eval/pr_curves.json ("0") -> its name ("AR")."""
    return names[int(key)] if key.isdigit() and int(key) < len(names) else key


__all__ = ["class_name", "leakage_banner", "per_class_ap_blocks", "run_leakage", "per_class_recall_blocks", "setup_blocks",
           "single_seed_banner", "withheld"]
