"""`medmtl audit --label-issues`: out-of-sample predictions (K fold runs, given runs or a CSV) ->
view and box rankings -> ``label_issues.csv``, ``review.html`` and ``label_issues.json``."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medmtl.data.groups import GroupPattern
from medmtl.labelissues.clips import clip_views, read_features, write_clip_outputs
from medmtl.labelissues.oof import OOF, Pool, load_pool, plural, read_probs_csv, read_runs
from medmtl.labelissues.rank import rank_boxes, rank_views, write_csv
from medmtl.labelissues.review import clip_items, review_items, write_review_page


def _fold_predictions(pool: Pool, out: Path, pattern: GroupPattern, settings: dict[str, Any],
                      log: Callable[[str], None]) -> OOF:
    from medmtl.labelissues.folds import assign_folds, fold_plan, train_folds

    fold_of = assign_folds(pool, settings["folds"], pattern)
    manifest = {"settings": settings, "folds": dict(zip(pool.stems, fold_of.tolist(),
                                                          strict=True))}
    mpath = out / "folds" / "folds.json"
    if mpath.is_file():
        old = json.loads(mpath.read_text())
        if old != manifest:
            raise ValueError(f"{mpath}: the fold runs there were made with other settings or "
                             "images; choose another --out or delete that folder")
    mpath.parent.mkdir(parents=True, exist_ok=True)
    mpath.write_text(json.dumps(manifest, indent=1))
    fold_corr = None
    if pool.corrections is not None:  # the fold runs train and score on the corrected labels
        from medmtl.data.corrections import subset_corrections

        fold_corr = subset_corrections(pool.corrections, set(pool.stems),
                                       out / "folds" / "corrections.csv")
    plan, est = fold_plan(pool, fold_of, out / "folds", task=settings["task"],
                          epochs=settings["epochs"], imgsz=settings["imgsz"],
                          size=settings["size"], batch=settings["batch"],
                          device=settings["device"])
    log(plan)
    runs = train_folds(pool, fold_of, out / "folds", task=settings["task"],
                       epochs=settings["epochs"], imgsz=settings["imgsz"], size=settings["size"],
                       batch=settings["batch"], seed=settings["seed"], device=settings["device"],
                       workers=settings["workers"], log=log, estimate=est,
                       corrections=fold_corr)
    return read_runs(runs, pool)


WEAK_MARGIN = 0.05  # out-of-sample accuracy must beat the majority-class rate by this much


def model_strength(pool: Pool, oof: OOF, acc: float | None,
                   margin: float = WEAK_MARGIN) -> dict[str, Any] | None:
    """Whether the models behind the view probabilities learnt enough for their flags to mean
    much: out-of-sample view accuracy against the majority-class rate (the share of the
    commonest given view among the frames with probabilities) plus ``margin``. ``weak`` and a
    ``text`` for the summary and the review page; None without probabilities."""
    views = [r.view for s, r in zip(pool.stems, pool.records, strict=True)
             if r.view is not None and s in oof.view_probs]
    if acc is None or not views:
        return None
    majority = max(Counter(views).values()) / len(views)
    weak = not acc > majority + margin
    text = (f"the models behind the view probabilities are weak: out-of-sample view accuracy "
            f"{acc:.3f} is not above the majority-class rate {majority:.3f} + {margin:g}, so "
            "their flags (flagged by: model) mean little; the clip flags do not depend on them. "
            "Train the folds longer (--epochs, --imgsz) or give better runs (--runs)"
            if weak else f"out-of-sample view accuracy {acc:.3f} is above the majority-class "
            f"rate {majority:.3f} + {margin:g}")
    return {"out_of_sample_accuracy": acc, "majority_rate": majority, "margin": margin,
            "weak": weak, "text": text}


def label_issues(yaml_path: str | Path, out: str | Path, *, pattern: GroupPattern | None = None,
                 clip_threshold: float = 0.5, probs: Path | None = None,
                 runs: Sequence[Path] | None = None, folds: int = 5, task: str = "classify",
                 epochs: int = 3, imgsz: int = 128, size: str = "n", batch: int = 16,
                 seed: int = 0, device: str = "auto", workers: int = 0, box_conf: float = 0.25,
                 review_max: int = 400, adjust: bool = True, trusted: Path | None = None,
                 features: Path | None = None, review_budget: int = 20,
                 corrections: Path | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Rank likely label errors of every image but the test split's and write ``out/``:
    ``label_issues.csv`` (all ranked rows), ``clips.csv`` (the clip ranking under the estimated
    corruption, `medmtl.labelissues.clips`), ``corruption.json`` (with ``trusted``),
    ``review.html`` (the suggested clips first, then the flagged rows) and ``label_issues.json``
    (settings, counts, notes). ``corrections``: a corrections CSV applied to the labels before
    anything is ranked, and to the fold runs' training and held-out labels, so corrected frames
    are not flagged again. Returns that summary."""
    from medmtl.data.trusted import load_trusted

    pattern = pattern or GroupPattern()
    out = Path(out)
    pool = load_pool(yaml_path, corrections=corrections)
    tset = load_trusted(trusted, list(pool.spec.cls_names)) if trusted is not None else None
    feats = read_features(Path(features), pool) if features is not None else None
    settings = {"folds": folds, "task": task, "epochs": epochs, "imgsz": imgsz, "size": size,
                "batch": batch, "seed": seed, "device": device, "workers": workers,
                "patient_regex": pattern.patient,
                "corrections": None if pool.corrections is None else {
                    "file": str(corrections), "sha256": pool.corrections.sha256,
                    "rows": len(pool.corrections)}}
    if probs is not None and runs:
        raise ValueError("give --probs or --runs, not both")
    if probs is not None:
        oof, source = read_probs_csv(Path(probs), pool), f"probabilities of {probs}"
    elif runs:
        oof, source = read_runs([Path(r) for r in runs], pool), f"{len(runs)} given run(s)"
    else:
        workers_note = "" if workers == 0 else f", {workers} loader workers"
        log(f"training {folds} folds ({task}, {plural(epochs, 'epoch')}, {imgsz} px, size {size}"
            f"{workers_note}) for out-of-fold predictions under {out / 'folds'}")
        oof = _fold_predictions(pool, out, pattern, settings, log)
        source = (f"{folds}-fold out-of-fold predictions ({task}, {plural(epochs, 'epoch')}, "
                  f"{imgsz} px)")
    view_rows, view_sum = rank_views(pool, oof, pattern, clip_threshold, adjust)
    box_rows, box_sum = rank_boxes(pool, oof, pattern, box_conf)
    csv_path = write_csv(view_rows + box_rows, out / "label_issues.csv")
    clips = clip_views(pool, oof, pattern, tset, feats, review_budget, seed)
    clip_files = write_clip_outputs(clips, out, tset, str(pool.spec.yaml_path))
    boxes_of = {s: r.boxes for s, r in zip(pool.stems, pool.records, strict=True)}
    items = review_items(view_rows + box_rows, boxes_of, review_max)
    paths_of = {s: r.path for s, r in zip(pool.stems, pool.records, strict=True)}
    citems = clip_items(clips["suggested"], clips["names"], paths_of)
    csum = clips["summary"]
    cor = csum["corruption"]
    flagged = view_sum["issues"] + box_sum.get("issues", 0)
    acc = view_sum["out_of_sample_accuracy"]
    lines = [f"{pool.spec.yaml_path}: {len(pool.records)} images; source: {source}",
             f"views: {view_sum['issues']} flagged of {view_sum['ranked']} ranked (model "
             f"{view_sum['model_issues']}, clip {view_sum['clip_issues']}, both "
             f"{view_sum['both']}); out-of-sample view accuracy "
             f"{'-' if acc is None else f'{acc:.3f}'}",
             f"boxes: {box_sum.get('issues', 0)} flagged of {box_sum['ranked']} ranked"
             + (f" ({box_sum['skipped']})" if "skipped" in box_sum else ""),
             f"clips: {csum['clips']} ranked under a corruption matrix from "
             + (f"{csum['trusted_clips_used']} trusted clips" if cor["source"] == "trusted"
                else "the noisy model alone (no trusted clip)")
             + f"; {csum['likely_wrong']} clips likely mislabelled "
             f"({', '.join(f'{k} {v}' for k, v in csum['likely_wrong_by_pair'].items()) or '-'});"
             f" {len(citems)} suggested for review first",
             f"shown here: {len(items)} rows (views flagged or with a different suggestion, "
             f"boxes flagged; highest score first, at most {review_max} per field); every row "
             f"is in {csv_path.name}"]
    strength = model_strength(pool, oof, acc)
    warnings = [strength["text"]] if strength and strength["weak"] else []
    page = write_review_page(out / "review.html", items, list(pool.spec.cls_names),
                             f"Label review: {Path(yaml_path).name}", lines, citems,
                             warnings=warnings)
    summary = {"data": str(pool.spec.yaml_path), "images": len(pool.records),
               "source": source, "sources": oof.sources, "settings": settings,
               "clip_regex": pattern.clip, "clip_threshold": clip_threshold,
               "adjust_probs": adjust,
               "views": view_sum, "boxes": box_sum, "flagged": flagged,
               "clips": csum, "trusted": tset.record() if tset else None,
               "suggested_review": [{"order": r["review_order"], "clip": r["clip"],
                                     "patient": r["patient"],
                                     "given": clips["names"][r["given"]],
                                     "suggested": clips["names"][r["suggested"]],
                                     "score": round(r["score"], 4)}
                                    for r in clips["suggested"]],
               "review_rows": len(items), "model_strength": strength, "warnings": warnings,
               "notes": oof.notes + view_sum["notes"] + ([box_sum["note"]] if "note" in box_sum
                                                         else []) + csum["notes"],
               "csv": str(csv_path), "review": str(page)}
    (out / "label_issues.json").write_text(json.dumps(summary, indent=2))
    for line in lines[1:4] + [f"note: {n}" for n in summary["notes"]] \
            + [f"warning: {w}" for w in warnings]:
        log(line)
    log(f"wrote {csv_path}, {', '.join(str(p) for p in clip_files)} and {page}")
    return summary


__all__ = ["WEAK_MARGIN", "label_issues", "model_strength"]
