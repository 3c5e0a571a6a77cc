"""The fuzz suite's generator: a small valid data set (`base_case`) and the seeded mutations of its
label, image and YAML files (`make_case`). medmtl/data/fuzz.py runs each case and checks the
outcome against the reliability contract."""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from medmtl.yamlio import load_yaml

MAX_BOXES = 40  # low, so that the box-limit mutation stays cheap
_TOKENS = ["nan", "inf", "-inf", "-1", "7", "0.5", "1e309", "-0", "1.5", "", "x", "0x1F", "١",
           "9" * 400, "\x00", "1,5", "+1", "--", "0" * 50 + "1", "1e-320"]


@dataclass
class Case:
    """One mutated data set: where it is and what was done to it."""

    root: Path
    yaml: Path
    mutations: list[str] = field(default_factory=list)


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
    raw: dict[str, Any] = load_yaml(c.yaml, "dataset YAML")
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


__all__ = ["MAX_BOXES", "MUTATIONS", "Case", "base_case", "make_case"]
