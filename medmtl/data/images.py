"""Image files: discovery under a split folder (every file is accounted for), the header / full
decode check that `scan_split` and `medmtl audit` run, and EXIF orientation.

Discovery returns the images it will use and a `FileNote` for every other file it met (unsupported
extension, an image whose label file another image already claims), so nothing under ``images/``
disappears silently. EXIF orientation is applied when an image is decoded, and the size reported
for it is the displayed (rotated) one: labels are read in the orientation a viewer shows.

A full decode catches what a header check cannot: a truncated file, a broken data stream, and a
JPEG cut short whose end marker was put back (PIL then fills the rest with grey without a word;
libjpeg's "Corrupt JPEG data" warnings, which OpenCV prints on stderr, are captured and make it an
error).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMG_EXTS = frozenset({".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})
_ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_EXIF_ORIENTATION = 0x0112
_CV2_FAILED = "OpenCV could not decode it"
_JPEG_WARNINGS = (b"Corrupt JPEG data", b"Premature end of JPEG", b"Invalid JPEG", b"Bogus")


@dataclass(frozen=True)
class FileNote:
    """A file under a split's image folder that discovery did not take as an image, and why."""

    file: str
    kind: str  # unsupported_file | duplicate_stem
    message: str
    severity: str  # warning | error


def label_path_for(image: Path) -> Path:
    """``.../images/x.jpg`` -> ``.../labels/x.txt`` (last ``images`` component); same folder if none."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def discover(folder: Path) -> tuple[list[Path], list[FileNote]]:
    """Every file under ``folder`` (recursively, symlinked folders not followed): the images to
    use, sorted, and a note for each other file. Two images sharing a label file (``x.jpg`` and
    ``x.png``) keep the first in sorted order; the others are skipped with an error note."""
    images: list[Path] = []
    notes: list[FileNote] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            ext = p.suffix.lower()
            if ext in IMG_EXTS and p.is_file():
                images.append(p)
            elif ext == ".txt" and p.parent.name == "labels":
                continue  # a labels/ folder nested inside the images folder
            else:
                what = f"extension {ext!r}" if ext else "no extension"
                notes.append(FileNote(str(p), "unsupported_file", f"{p}: not an image type medmtl "
                                      f"reads ({what}; readable: {', '.join(sorted(IMG_EXTS))}); "
                                      "file ignored", "warning"))
    images.sort()
    return dedupe_stems(images, notes)


def dedupe_stems(images: list[Path], notes: list[FileNote] | None = None,
                 ) -> tuple[list[Path], list[FileNote]]:
    """Keep one image per label file; the others get an error note and are left out."""
    notes = list(notes or [])
    claimed: dict[Path, Path] = {}
    kept: list[Path] = []
    for p in images:
        lbl = label_path_for(p)
        first = claimed.get(lbl)
        if first is None:
            claimed[lbl] = p
            kept.append(p)
        else:
            notes.append(FileNote(str(p), "duplicate_stem", f"{p}: shares the label file {lbl} "
                                  f"with {first.name}; image skipped (rename one of them)",
                                  "error"))
    return kept, notes


def exif_rotated(im: Image.Image) -> bool:
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1)) in _ROTATED
    except Exception:  # noqa: BLE001 -- a broken EXIF block: no orientation
        return False


@contextlib.contextmanager
def _stderr_to(tmp: object) -> Iterator[None]:
    """Point file descriptor 2 at ``tmp`` (libjpeg writes its warnings there, not to Python)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        os.dup2(tmp.fileno(), 2)  # type: ignore[attr-defined]
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def jpeg_warnings(path: Path) -> str | None:
    """libjpeg's complaint about a JPEG's data (None when it decodes cleanly)."""
    import cv2

    data = np.fromfile(str(path), dtype=np.uint8)
    with tempfile.TemporaryFile() as tmp:
        with _stderr_to(tmp):
            out = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        tmp.seek(0)
        said = tmp.read(4096)
    lines = [ln.strip() for ln in said.splitlines() if ln.strip()]
    bad = [ln for ln in lines if ln.startswith(_JPEG_WARNINGS)]
    if bad:
        return bad[0].decode(errors="replace")[:200]
    return _CV2_FAILED if out is None else None


def check_image(path: Path, decode: bool = True) -> tuple[int, int] | str:
    """(width, height) as displayed (EXIF orientation applied), or why the file is unusable.

    ``decode=False`` reads the header only (PIL ``verify()``, and a decode of a JPEG whose end
    marker is missing); ``decode=True`` decodes every pixel."""
    try:
        with Image.open(path) as im:
            size, fmt = im.size, im.format
            im.verify()
        with Image.open(path) as im:
            rotated = exif_rotated(im)
            if decode and fmt != "JPEG":
                im.load()
        if decode and fmt == "JPEG":  # one decode, by libjpeg through OpenCV, warnings captured
            complaint = jpeg_warnings(path)
            if complaint == _CV2_FAILED:  # a JPEG flavour OpenCV lacks: PIL decides
                with Image.open(path) as im:
                    im.load()
            elif complaint:
                return f"corrupt JPEG data: {complaint}"
        elif fmt == "JPEG":  # verify() does not see a truncated JPEG; decode when the EOI is absent
            with path.open("rb") as f:
                f.seek(-2, 2)
                tail = f.read(2)
            if tail != b"\xff\xd9":
                with Image.open(path) as im:
                    im.load()
    except Exception as e:  # any decoder failure means "unreadable image"
        return f"{type(e).__name__}: {str(e)[:200]}"
    if size[0] <= 0 or size[1] <= 0:
        return f"empty image size {size}"
    return (size[1], size[0]) if rotated else size


__all__ = ["IMG_EXTS", "FileNote", "check_image", "dedupe_stems", "discover", "exif_rotated",
           "jpeg_warnings", "label_path_for"]
