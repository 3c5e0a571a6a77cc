"""Seeded fault injection for the data layer: small data sets with mutated label, image and YAML
files, run through `audit_dataset`, each outcome checked against the reliability contract.

Every case must end in one of: clean, counted problems (warnings / errors, each naming its file
and line), or one raised `MedmtlError` whose first line names a file. A traceback (any other
exception) or a silent drop (a file under images/ or labels/, or a label line, that was neither
used nor named in a problem) is a failure. `run_fuzz(n, seed, root)` returns the totals
(tests/test_fuzz.py: a few hundred cases; benchmarks/fuzz.py: many more)."""

from __future__ import annotations

import io
import random
import re
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from medmtl.data.audit import audit_dataset
from medmtl.data.dataset_yaml import load_data_yaml
from medmtl.data.labels import SplitIndex, scan_split
from medmtl.errors import MedmtlError

MAX_BOXES = 40  # low, so that the box-limit mutation stays cheap
_DROP_WARNINGS = {"degenerate", "view_duplicate"}  # warnings whose line is not used
_TOKENS = ["nan", "inf", "-inf", "-1", "7", "0.5", "1e309", "-0", "1.5", "", "x", "0x1F", "١",
           "9" * 400, "\x00", "1,5", "+1", "--", "0" * 50 + "1", "1e-320"]


@dataclass
class Case:
    """One mutated data set: where it is and what was done to it."""

    root: Path
    yaml: Path
    mutations: list[str] = field(default_factory=list)


@dataclass
class Outcome:  # status: clean | problems | raised | traceback | silent_drop | unnamed_error
    status: str
    detail: str = ""
    warnings: int = 0
    errors: int = 0


def _image_bytes(rng: random.Random, fmt: str, size: int = 32) -> bytes:
    a = np.random.default_rng(rng.randrange(2**31)).integers(0, 255, (size, size, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, fmt)
    return buf.getvalue()


def _label(rng: random.Random, nc: int = 2, nv: int = 3) -> str:
    lines = [f"{rng.randrange(nc)} {rng.uniform(.3, .7):.3f} {rng.uniform(.3, .7):.3f} "
             f"{rng.uniform(.05, .3):.3f} {rng.uniform(.05, .3):.3f}" for _ in range(rng.randint(1, 3))]
    view = ["0"] * nv
    view[rng.randrange(nv)] = "1"
    return "\n".join(lines) + "\n\n" + " ".join(view) + "\n"


def base_case(root: Path, rng: random.Random) -> Case:
    """3 train images (PNG and JPEG) and 1 val image, 32 px, with labels; a valid data.yaml."""
    for split, stems in (("train", ["a", "b", "c"]), ("val", ["v"])):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for s in stems:
            ext = rng.choice([".png", ".jpg"])
            data = _image_bytes(rng, "PNG" if ext == ".png" else "JPEG")
            (root / split / "images" / f"{s}{ext}").write_bytes(data)
            (root / split / "labels" / f"{s}.txt").write_text(_label(rng))
    cfg = {"path": ".", "train": "train/images", "val": "val/images", "names": ["AR", "MR"],
           "cls_names": ["A4C", "PLAX", "PSAX"]}
    (root / "data.yaml").write_text(yaml.safe_dump(cfg))
    return Case(root, root / "data.yaml")


def _labels(c: Case) -> list[Path]:
    return sorted((c.root / "train" / "labels").glob("*.txt"))


def _images(c: Case) -> list[Path]:
    return sorted(p for p in (c.root / "train" / "images").iterdir() if p.is_file())


def _edit_line(c: Case, rng: random.Random, edit: Any) -> str:
    """Replace the tokens of a random line of a random label file by `edit(tokens)`, which
    returns (new tokens, what it did); returns 'what file:line'."""
    f = rng.choice(_labels(c))
    lines = f.read_text().splitlines()
    i = rng.randrange(len(lines))
    toks, what = edit(lines[i].split())
    lines[i] = " ".join(toks)
    f.write_text("\n".join(lines) + "\n")
    return f"{what} {f.name}:{i + 1}"


def m_token(c: Case, rng: random.Random) -> str:
    def edit(toks: list[str]) -> tuple[list[str], str]:
        toks = toks or ["0"]
        toks[rng.randrange(len(toks))] = rng.choice(_TOKENS)
        return toks, "token"

    return _edit_line(c, rng, edit)


def m_line_shape(c: Case, rng: random.Random) -> str:
    return _edit_line(c, rng, lambda toks: _reshape(toks, rng))


def _reshape(toks: list[str], rng: random.Random) -> tuple[list[str], str]:
    op = rng.choice(["drop", "dup", "polygon", "blank", "swap_view"])
    if op == "drop" and toks:
        toks.pop(rng.randrange(len(toks)))
    elif op == "dup" and toks:
        toks.insert(rng.randrange(len(toks)), rng.choice(toks))
    elif op == "polygon":
        toks = ["0"] + [f"{rng.random():.3f}" for _ in range(rng.choice([4, 5, 6, 8, 9]))]
    elif op == "blank":
        toks = []
    else:
        toks = [rng.choice("01") for _ in range(rng.randint(1, 5))]
    return toks, f"line {op}"


def m_view_conflict(c: Case, rng: random.Random) -> str:
    f = rng.choice(_labels(c))
    lines = f.read_text().splitlines()
    extra = rng.choice(["1 0 0", "0 1 0", "0 0 1", "1 1 0"])
    lines.insert(rng.randrange(len(lines)), extra)
    f.write_text("\n".join(lines) + "\n")
    return f"view line {f.name}"


def m_label_file(c: Case, rng: random.Random) -> str:
    f = rng.choice(_labels(c))
    op = rng.choice(["empty", "delete", "binary", "bom_crlf", "tabs", "orphan", "many"])
    if op == "empty":
        f.write_text("")
    elif op == "delete":
        f.unlink()
    elif op == "binary":
        f.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randint(1, 200))))
    elif op == "bom_crlf":
        f.write_bytes(b"\xef\xbb\xbf" + f.read_text().replace("\n", "\r\n").encode())
    elif op == "tabs":
        f.write_text(f.read_text().replace(" ", "\t"))
    elif op == "orphan":
        (f.parent / f"zz_orphan{rng.randrange(99)}.txt").write_text(_label(rng))
    else:
        f.write_text("0 0.5 0.5 0.1 0.1\n" * rng.randint(MAX_BOXES + 1, MAX_BOXES + 30) + "\n0 1 0\n")
    return f"label {op} {f.name}"


def m_image(c: Case, rng: random.Random) -> str:
    f = rng.choice(_images(c))
    data = bytearray(f.read_bytes())
    op = rng.choice(["truncate", "truncate_eoi", "flip", "zero", "garbage", "rename_ext"])
    if op == "truncate":
        data = data[: rng.randint(0, len(data) - 1)]
    elif op == "truncate_eoi":
        data = data[: rng.randint(len(data) // 3, len(data) - 3)] + b"\xff\xd9"
    elif op == "flip":
        at = rng.randint(len(data) // 4, len(data) - 1)
        for k in range(at, min(len(data), at + rng.randint(1, 64))):
            data[k] ^= 0xFF
    elif op == "zero":
        data = bytearray()
    elif op == "garbage":
        data = bytearray(rng.randrange(256) for _ in range(rng.randint(1, 300)))
    else:
        f.rename(f.with_suffix(".jpg" if f.suffix == ".png" else ".png"))
        return f"image {op} {f.name}"
    f.write_bytes(bytes(data))
    return f"image {op} {f.name}"


def m_discovery(c: Case, rng: random.Random) -> str:
    imgs = c.root / "train" / "images"
    op = rng.choice(["gif", "noext", "dup_stem", "folder", "exif", "text"])
    if op == "gif":
        buf = io.BytesIO()
        Image.new("P", (8, 8)).save(buf, "GIF")
        (imgs / "g.gif").write_bytes(buf.getvalue())
        (c.root / "train" / "labels" / "g.txt").write_text(_label(rng))
    elif op == "noext":
        (imgs / "n").write_bytes(_image_bytes(rng, "PNG"))
    elif op == "dup_stem":
        src = rng.choice(_images(c))
        other = ".png" if src.suffix != ".png" else ".jpg"
        (imgs / f"{src.stem}{other}").write_bytes(_image_bytes(rng, "PNG" if other == ".png"
                                                               else "JPEG"))
    elif op == "folder":
        (imgs / "fake.png").mkdir(exist_ok=True)
    elif op == "exif":
        exif = Image.Exif()
        exif[0x0112] = rng.choice([3, 6, 8])
        a = np.zeros((24, 40, 3), np.uint8)
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG", exif=exif)
        (imgs / "e.jpg").write_bytes(buf.getvalue())
        (c.root / "train" / "labels" / "e.txt").write_text("0 0.5 0.5 0.2 0.2\n\n1 0 0\n")
    else:
        (imgs / "README.txt").write_text("notes")
    return f"discovery {op}"


def m_yaml(c: Case, rng: random.Random) -> str:
    raw: dict[str, Any] = yaml.safe_load(c.yaml.read_text())
    op = rng.choice(["drop_key", "names_type", "names_nested", "names_dict", "cls_empty", "path",
                     "train_file", "syntax", "bytes", "alias_bomb", "deep", "escape", "list_file"])
    text: str | None = None
    if op == "drop_key":
        raw.pop(rng.choice(["train", "val", "names", "cls_names", "path"]), None)
    elif op == "names_type":
        raw["names"] = rng.choice([5, "AR", None, True, 1.5])
    elif op == "names_nested":
        raw["names"] = [["a", ["b"]], {"x": 1}]
    elif op == "names_dict":
        raw["names"] = rng.choice([{0: "a", 2: "b"}, {"x": "a"}, {0: ["a"]}, {}])
    elif op == "cls_empty":
        raw["cls_names"] = []
    elif op == "path":
        raw["path"] = rng.choice(["nope/nowhere", "data.yaml", "/dev/null", "x" * 5000])
    elif op == "train_file":
        raw["train"] = rng.choice(["data.yaml", "train/labels/a.txt", "../../" * 30 + "etc_none"])
    elif op == "syntax":
        text = "names: [a, b\ntrain: : :\n\t- x"
    elif op == "bytes":
        c.yaml.write_bytes(bytes(rng.randrange(256) for _ in range(300)))
        return f"yaml {op}"
    elif op == "alias_bomb":
        rows = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]']
        for prev, name in zip("abcdef", "bcdefg", strict=False):
            rows.append(f"{name}: &{name} [{','.join(['*' + prev] * 10)}]")
        text = "\n".join(rows) + "\nnames: *g\n"
    elif op == "deep":
        text = "names: " + "[" * 300 + "]" * 300 + "\n"
    elif op == "escape":  # a folder outside the data set, with no images (deterministic)
        out = c.root.parent / f"{c.root.name}_outside"
        out.mkdir(exist_ok=True)
        (out / "passwd").write_text("root:x:0:0")
        raw["train"] = f"../{out.name}"
    else:
        lst = c.root / "train.txt"
        lst.write_text("train/images/a.png\nmissing/x.png\n" + "z" * 3000 + "\n")
        raw["train"] = "train.txt"
    c.yaml.write_text(text if text is not None else yaml.safe_dump(raw))
    return f"yaml {op}"


MUTATIONS: list[tuple[Callable[[Case, random.Random], str], float]] = [
    (m_token, 3), (m_line_shape, 3), (m_view_conflict, 1.5), (m_label_file, 2), (m_image, 2.5),
    (m_discovery, 1.5), (m_yaml, 1.5)]


def make_case(root: Path, rng: random.Random) -> Case:
    c = base_case(root, rng)
    fns, weights = zip(*MUTATIONS, strict=True)
    for fn in rng.choices(fns, weights, k=rng.choice([1, 1, 2, 3])):
        try:
            c.mutations.append(fn(c, rng))
        except Exception:  # noqa: BLE001 -- the generator's own limits (nothing left to mutate)
            c.mutations.append(f"{fn.__name__} (no-op)")
    return c


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


__all__ = ["Case", "Outcome", "make_case", "run_case", "run_fuzz", "silent_drops",
           "summary_line"]
