"""Data-set audit: counts, label problems, sizes, patient leakage, and the view labels' clip
consistency (`medmtl.data.consistency`)."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Group
from rich.table import Table

from medmtl.data.consistency import DEFAULT_CLIP_THRESHOLD, clip_consistency, render_consistency
from medmtl.data.corrections import Corrections, load_corrections
from medmtl.data.dataset_yaml import load_data_yaml
from medmtl.data.groups import DEFAULT_CLIP_REGEX, GroupPattern
from medmtl.data.labels import MAX_BOXES, SplitIndex, scan_split
from medmtl.data.splits import DEFAULT_GROUP_REGEX, group_of


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    return {"min": float(a.min()), "median": float(np.median(a)), "max": float(a.max())}


def _split_report(idx: SplitIndex, first: int) -> dict[str, Any]:
    recs = idx.records
    bw = [float(b[2] - b[0]) for r in recs for b in r.boxes]
    bh = [float(b[3] - b[1]) for r in recs for b in r.boxes]
    rel = [float((b[2] - b[0]) * (b[3] - b[1]) / (r.width * r.height)) for r in recs for b in r.boxes]
    kinds = Counter(p.kind for p in idx.problems)
    return {
        "images": idx.summary["images"],
        "images_used": idx.summary["images_used"],
        "boxes": idx.summary["boxes"],
        "boxes_per_class": dict(idx.summary["boxes_per_class"]),
        "views_per_class": dict(idx.summary["views_per_class"]),
        "images_without_view": [r.label_path.name if r.label_path else r.path.name
                                for r in recs if r.view is None],
        "images_without_boxes": [r.path.name for r in recs if not r.det_labelled],
        "images_no_jet": sum(r.no_jet for r in recs),
        "problems": {"counts": dict(kinds.most_common()),
                     "error_counts": dict(Counter(p.kind for p in idx.problems
                                                  if p.severity == "error").most_common()),
                     "first": [str(p) for p in idx.problems[:first]],
                     "first_errors": [str(p) for p in idx.problems
                                      if p.severity == "error"][:first]},
        "image_sizes": dict(Counter(f"{r.width}x{r.height}" for r in recs).most_common()),
        "box_sizes": {"width_px": _stats(bw), "height_px": _stats(bh), "rel_area": _stats(rel)},
        "summary": dict(idx.summary),
    }


def _leakage(groups: dict[str, Counter[str]], group_regex: str) -> dict[str, Any]:
    pairs: dict[str, Any] = {}
    for a, b in itertools.combinations(groups, 2):
        shared = sorted(set(groups[a]) & set(groups[b]))
        pairs[f"{a}/{b}"] = {
            "shared_groups": len(shared),
            "images": {a: sum(groups[a][g] for g in shared), b: sum(groups[b][g] for g in shared)},
            "examples": shared[:10],
        }
    return {"group_regex": group_regex,
            "groups_per_split": {s: len(g) for s, g in groups.items()},
            "pairs": pairs,
            "leaks": any(p["shared_groups"] > 0 for p in pairs.values())}


def check_corrections(data_yaml: str | Path, path: str | Path) -> Corrections:
    """Load a corrections file against `data_yaml` and apply it to every split (raising
    `CorrectionError` on a stale row), so a command that starts several runs fails once, up
    front."""
    spec = load_data_yaml(data_yaml)
    corr = load_corrections(path, spec)
    for split in spec.splits:
        scan_split(spec, split, corrections=corr)
    return corr


def audit_dataset(yaml_path: str | Path, group_regex: str = DEFAULT_GROUP_REGEX,
                  first_problems: int = 10,
                  corrections: str | Path | None = None, decode: bool = True,
                  max_boxes: int = MAX_BOXES, clip_regex: str = DEFAULT_CLIP_REGEX,
                  clip_threshold: float = DEFAULT_CLIP_THRESHOLD) -> dict[str, Any]:
    """JSON-serialisable audit of every split of a dataset YAML (see the module docstring), with
    a corrections file (`medmtl.data.corrections`) applied on top of the labels when given.
    ``decode``: decode every image (corrupt files are named); False checks headers only.
    ``consistency``: the clips whose frames carry different view labels, over all splits pooled
    (`medmtl.data.consistency.clip_consistency`)."""
    pattern = GroupPattern(patient=group_regex, clip=clip_regex)
    spec = load_data_yaml(yaml_path)
    corr = load_corrections(corrections, spec) if corrections is not None else None
    splits: dict[str, Any] = {}
    groups: dict[str, Counter[str]] = {}
    views: list[tuple[str, Path, int | None]] = []
    for name, src in spec.splits.items():
        idx = scan_split(spec, name, corrections=corr, decode=decode, max_boxes=max_boxes)
        rep = _split_report(idx, first_problems)
        rep["source"] = str(src)
        splits[name] = rep
        groups[name] = Counter(group_of(r.path, group_regex) for r in idx.records)
        views += [(name, r.path, r.view) for r in idx.records]
    return {"yaml": str(spec.yaml_path), "root": str(spec.root), "names": spec.names,
            "cls_names": spec.cls_names, "splits": splits,
            "leakage": _leakage(groups, group_regex),
            "corrections": corr.record() if corr is not None else None,
            "consistency": clip_consistency(views, spec.cls_names, pattern, clip_threshold)}


def audit_errors(report: dict[str, Any]) -> tuple[int, dict[str, int]]:
    """(count, kinds): the audit's problems of severity "error" (an image, box or view that was
    skipped: a corrupt image, an unreadable or malformed label file), over every split."""
    kinds: Counter[str] = Counter()
    for rep in report["splits"].values():
        kinds.update(rep["problems"].get("error_counts") or {})
    total = sum(int(rep["summary"].get("errors", 0)) for rep in report["splits"].values())
    return total, dict(kinds)


def next_step(report: dict[str, Any], data: str | Path) -> str:
    """The audit's last line: what to run next (fix the files in error; make a patient-grouped
    split when train and val share patients; else train)."""
    n, kinds = audit_errors(report)
    leak = report["leakage"]["pairs"].get("train/val") or {}
    shared = int(leak.get("shared_groups", 0))
    if n:
        what = ", ".join(f"{k}={v}" for k, v in sorted(kinds.items())) or "see above"
        return (f"next step: fix or remove what the {n} error(s) name ({what}; 'Label problems' "
                f"above, every one in --json), then run `medmtl audit --data {data}` again "
                "(--allow-errors accepts them: the items are skipped in training)")
    if shared:
        return (f"next step: `medmtl split --data {data} --out DIR` for a patient-grouped split "
                f"({shared} patient(s) are in both train and val), then `medmtl train --data "
                "DIR/data.yaml`")
    return f"next step: `medmtl train --data {data}` (or `medmtl compare --data {data}`)"


def _fmt(st: dict[str, float] | None, digits: int = 1) -> str:
    if st is None:
        return "-"
    return f"{st['min']:.{digits}f} / {st['median']:.{digits}f} / {st['max']:.{digits}f}"


def render_audit(report: dict[str, Any]) -> Group:
    """Rich tables of an `audit_dataset` report, for the CLI."""
    splits = report["splits"]
    names = list(splits)
    t = Table(title=f"Data set {report['yaml']}")
    t.add_column("")
    for s in names:
        t.add_column(s, justify="right")
    rows: list[tuple[str, list[str]]] = [
        ("images", [str(splits[s]["images"]) for s in names]),
        ("images used", [str(splits[s]["images_used"]) for s in names]),
        ("images skipped", [str(splits[s]["summary"].get("images_skipped", 0)) for s in names]),
        ("other files (ignored)", [str(splits[s]["summary"].get("files_ignored", 0))
                                   for s in names]),
        ("boxes", [str(splits[s]["boxes"]) for s in names]),
    ]
    rows += [(f"box {c}", [str(splits[s]["boxes_per_class"].get(c, 0)) for s in names])
             for c in report["names"]]
    rows += [(f"view {c}", [str(splits[s]["views_per_class"].get(c, 0)) for s in names])
             for c in report["cls_names"]]
    rows += [
        ("no view line", [str(len(splits[s]["images_without_view"])) for s in names]),
        ("no boxes (unlabelled)", [str(len(splits[s]["images_without_boxes"])) for s in names]),
        ("no jet ('none')", [str(splits[s]["images_no_jet"]) for s in names]),
        ("label problems", [str(sum(splits[s]["problems"]["counts"].values())) for s in names]),
        ("image sizes", [", ".join(f"{k}:{v}" for k, v in splits[s]["image_sizes"].items())
                         for s in names]),
        ("box w px min/med/max", [_fmt(splits[s]["box_sizes"]["width_px"]) for s in names]),
        ("box h px min/med/max", [_fmt(splits[s]["box_sizes"]["height_px"]) for s in names]),
        ("box rel. area", [_fmt(splits[s]["box_sizes"]["rel_area"], 4) for s in names]),
    ]
    for label, vals in rows:
        t.add_row(label, *vals)
    parts: list[Any] = [t]
    corr = report.get("corrections")
    if corr:
        per = ", ".join(f"{s} {n}" for s, n in corr["applied"].items()) or "none"
        parts.append(f"Corrections {corr['file']} (sha256 {corr['sha256'][:12]}): "
                     f"{sum(corr['applied'].values())} of {corr['rows']} applied ({per})")

    probs = Table(title="Label problems (first messages)")
    probs.add_column("split")
    probs.add_column("kinds")
    probs.add_column("first messages", overflow="fold")
    for s in names:
        p = splits[s]["problems"]
        kinds = ", ".join(f"{k}={v}" for k, v in p["counts"].items()) or "none"
        errs = p.get("first_errors") or []  # errors first: they decide the exit status
        msgs = errs + [m for m in p["first"] if m not in errs]
        probs.add_row(s, kinds, "\n".join(msgs[:5]) or "-")
    parts.append(probs)

    leak = report["leakage"]
    lt = Table(title=f"Group leakage (group = {leak['group_regex']!r} on the file name)")
    lt.add_column("splits")
    lt.add_column("shared groups", justify="right")
    lt.add_column("images involved", justify="right")
    lt.add_column("examples", overflow="fold")
    for pair, info in leak["pairs"].items():
        imgs = ", ".join(f"{k}: {v}" for k, v in info["images"].items())
        style = "bold red" if info["shared_groups"] else None
        lt.add_row(pair, str(info["shared_groups"]), imgs, ", ".join(info["examples"][:5]),
                   style=style)
    parts.append(lt)
    if "consistency" in report:
        parts += render_consistency(report["consistency"])
    return Group(*parts)
