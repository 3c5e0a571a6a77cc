"""Seeded fault injection for the data layer: small data sets with mutated label, image and YAML
files, run through `audit_dataset`, each outcome checked against the reliability contract.

Every case must end in one of: clean, counted problems (warnings / errors, each naming its file
and line), or one raised `MedmtlError` whose first line names a file. A traceback (any other
exception) or a silent drop (a file under images/ or labels/, or a label line, that was neither
used nor named in a problem) is a failure. `run_fuzz(n, seed, root)` returns the totals
(tests/test_fuzz.py: a few hundred cases; benchmarks/fuzz.py: many more)."""

from __future__ import annotations

import random
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medmtl.data.audit import audit_dataset
from medmtl.data.dataset_yaml import load_data_yaml
from medmtl.data.fuzz_cases import MAX_BOXES, Case, base_case, make_case
from medmtl.data.labels import SplitIndex, scan_split
from medmtl.errors import MedmtlError

_DROP_WARNINGS = {"degenerate", "view_duplicate"}  # warnings whose line is not used


@dataclass
class Outcome:  # status: clean | problems | raised | traceback | silent_drop | unnamed_error
    status: str
    detail: str = ""
    warnings: int = 0
    errors: int = 0


# --- the contract -----------------------------------------------------------------------------------

_OPS = {"line", "label", "image", "discovery", "yaml"}  # mutation names with a sub-operation
_LINE = re.compile(r"view lines (\d+) and (\d+)")
_EXCESS = re.compile(r"the last (\d+) skipped")


def _dropped_lines(idx: SplitIndex, label: Path) -> tuple[set[int], int]:
    """Line numbers of `label` that a problem says were not used, and the boxes skipped in bulk."""
    lines: set[int] = set()
    bulk = 0
    for p in idx.problems:
        if p.file != str(label) or p.line is None:
            continue
        if p.kind == "too_many_boxes":
            bulk += int(_EXCESS.search(p.message).group(1))  # type: ignore[union-attr]
        elif p.severity == "error" or p.kind in _DROP_WARNINGS:
            lines.add(p.line)
            m = _LINE.search(p.message)
            if m:
                lines.update(int(g) for g in m.groups())
    return lines, bulk


def silent_drops(root: Path, indexes: list[SplitIndex], sources: list[Path]) -> list[str]:
    """Files in the scanned split folders (``sources`` and their labels/ twins) and label lines
    that were neither used nor named by a problem."""
    used_images = {r.path.resolve() for idx in indexes for r in idx.records}
    named = {Path(p.file).resolve() for idx in indexes for p in idx.problems}
    said = " ".join(p.message for idx in indexes for p in idx.problems)
    out = []
    for src in sources:
        if not src.is_dir() or src.name != "images" or root.resolve() not in src.parents:
            continue
        split_dir = src.parent
        for sub in ("images", "labels"):
            folder = split_dir / sub
            if not folder.is_dir():
                continue
            for f in sorted(folder.rglob("*")):
                if not f.is_file():
                    continue
                rf = f.resolve()
                if rf in used_images or rf in named or str(f) in said:
                    continue
                if sub == "labels":
                    img_dir = split_dir / "images"
                    owners = [p for p in img_dir.glob(f"{f.stem}.*")] if img_dir.is_dir() else []
                    if any(o.resolve() in named or o.resolve() in used_images for o in owners):
                        continue  # its image was skipped (named) or used it
                out.append(str(f))
    for idx in indexes:  # label lines: used + named drops == non-blank lines
        for r in idx.records:
            if r.label_path is None:
                continue
            lines, bulk = _dropped_lines(idx, r.label_path)
            used = len(r.boxes) + (r.view is not None)
            n = sum(1 for ln in r.label_path.read_text(encoding="utf-8-sig").splitlines()
                    if ln.strip())
            if used + len(lines) + bulk != n:
                out.append(f"{r.label_path}: {n} lines, {used} used, {len(lines) + bulk} named")
    return out


def run_case(c: Case, max_boxes: int = MAX_BOXES) -> Outcome:
    """Audit one case and judge it against the contract."""
    try:
        audit_dataset(c.yaml, decode=True, max_boxes=max_boxes)
        spec = load_data_yaml(c.yaml)
        indexes = [scan_split(spec, s, decode=True, max_boxes=max_boxes) for s in spec.splits]
    except MedmtlError as e:
        first = str(e).splitlines()[0] if str(e) else ""
        if str(c.root) not in first and str(c.root.resolve()) not in first:
            return Outcome("unnamed_error", first[:300])
        if len(first) > 600:
            return Outcome("unnamed_error", f"message of {len(first)} characters")
        return Outcome("raised", first[:300])
    except Exception as e:  # noqa: BLE001 -- exactly what the contract forbids
        return Outcome("traceback", f"{type(e).__name__}: {str(e)[:300]}")
    problems = [p for idx in indexes for p in idx.problems]
    for p in problems:
        if not p.message.startswith(p.file) or len(p.message) > 600:
            return Outcome("unnamed_error", p.message[:300])
    drops = silent_drops(c.root, indexes, list(spec.splits.values()))
    if drops:
        return Outcome("silent_drop", "; ".join(drops[:3]))
    w = sum(p.severity == "warning" for p in problems)
    e = sum(p.severity == "error" for p in problems)
    return Outcome("problems" if problems else "clean", "", w, e)


def run_fuzz(n: int, seed: int, workdir: Path, keep: bool = False) -> dict[str, Any]:
    """``n`` seeded cases under ``workdir``; the totals and the failing cases (at most 20)."""
    rng = random.Random(seed)
    totals: Counter[str] = Counter()
    failures: list[dict[str, Any]] = []
    mutations: Counter[str] = Counter()
    for i in range(n):
        root = workdir / f"case{i:04d}"
        case = make_case(root, rng)
        out = run_case(case)
        totals[out.status] += 1
        totals["cases_with_warnings"] += out.warnings > 0
        totals["cases_with_errors"] += out.errors > 0 or out.status == "raised"
        totals["warnings"] += out.warnings
        totals["errors"] += out.errors
        mutations.update(" ".join(m.split()[:2 if m.split()[0] in _OPS else 1])
                         for m in case.mutations)
        if out.status in ("traceback", "silent_drop", "unnamed_error") and len(failures) < 20:
            failures.append({"case": str(root), "mutations": case.mutations,
                             "status": out.status, "detail": out.detail})
        if not keep and out.status not in ("traceback", "silent_drop", "unnamed_error"):
            for d in (root, root.parent / f"{root.name}_outside"):
                shutil.rmtree(d, ignore_errors=True)
    return {"cases": n, "seed": seed, "clean": totals["clean"],
            "with_problems": totals["problems"], "raised": totals["raised"],
            "cases_with_warnings": totals["cases_with_warnings"],
            "cases_with_errors": totals["cases_with_errors"],
            "warnings": totals["warnings"], "errors": totals["errors"],
            "tracebacks": totals["traceback"], "silent_drops": totals["silent_drop"],
            "unnamed_errors": totals["unnamed_error"], "mutations": dict(mutations),
            "failures": failures}


def summary_line(t: dict[str, Any]) -> str:  # the totals in one line
    return (f"fuzz: {t['cases']} cases (seed {t['seed']}): {t['clean']} clean, "
            f"{t['cases_with_warnings']} with warnings ({t['warnings']} warnings), "
            f"{t['cases_with_errors']} with errors ({t['errors']} counted, {t['raised']} raised), "
            f"{t['tracebacks']} tracebacks, {t['silent_drops']} silent drops, "
            f"{t['unnamed_errors']} unnamed errors")


__all__ = ["Case", "Outcome", "base_case", "make_case", "run_case", "run_fuzz", "silent_drops",
           "summary_line"]
