"""Where frames come from: an image file, a folder, a glob, a video (mp4/avi/...) or DICOM.

`resolve_sources(source)` -> sorted list of media files; `open_media(path)` -> `Media` (kind, fps,
frame count when known, and a `frames()` iterator of (H, W, 3) uint8 RGB arrays); `iter_frames`
walks every frame of every file, reports the files it cannot read (`Problem`: file and reason;
a warning on stderr by default) and goes on with the rest.

DICOM needs pydicom (``pip install medmtl[dicom]``): single images and multi-frame cine loops;
RGB, YBR_FULL / YBR_FULL_422 (converted to RGB), MONOCHROME1/2 and PALETTE COLOR; data deeper
than 8 bits are scaled from their stored bit depth to 0-255.
"""

from __future__ import annotations

import glob
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medmtl.data.dataset_yaml import IMG_EXTS
from medmtl.data.transforms import load_image

VIDEO_EXTS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm"})
DICOM_EXTS = frozenset({".dcm", ".dicom", ".dic"})
MEDIA_EXTS = IMG_EXTS | VIDEO_EXTS | DICOM_EXTS
DICOM_HINT = "reading DICOM needs pydicom: pip install medmtl[dicom]"

Kind = Literal["image", "video", "dicom"]


class MediaError(RuntimeError):
    """A file that cannot be read as an image, a video or a DICOM object."""


@dataclass
class Problem:
    file: str
    reason: str


@dataclass
class Frame:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    source: str
    index: int  # frame index within its file (0 for a still image)


def warn_problem(p: Problem) -> None:
    print(f"warning: skipped {p.file}: {p.reason}", file=sys.stderr)


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def media_kind(path: str | Path) -> Kind | None:
    """By extension; an unknown extension is DICOM when it has the "DICM" preamble, else None."""
    p = Path(path)
    ext = p.suffix.lower()
    if ext in IMG_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    if ext in DICOM_EXTS or _is_dicom(p):
        return "dicom"
    return None


def resolve_sources(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """A file (any extension), a folder (its media files, sorted, not recursive), a glob pattern
    (``**`` recursive; media files only) or a list of these -> the files, in order."""
    if isinstance(source, (list, tuple)):
        return [f for s in source for f in resolve_sources(s)]
    s = str(source)
    p = Path(s)
    if p.is_dir():
        return sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in MEDIA_EXTS)
    if p.is_file():
        return [p]
    if any(c in s for c in "*?["):
        return [Path(f) for f in sorted(glob.glob(s, recursive=True))
                if Path(f).is_file() and media_kind(f) is not None]
    raise FileNotFoundError(f"source not found: {s} (expected an image, video or DICOM file, a "
                            "folder or a glob pattern)")


@dataclass
class Media:
    path: Path
    kind: Kind
    fps: float | None = None  # frames per second of a clip (None: unknown / still image)
    num_frames: int | None = None  # when the container says (may be approximate for video)
    _dicom: Any = None

    @property
    def is_clip(self) -> bool:
        return self.kind == "video" or (self.kind == "dicom" and (self.num_frames or 1) > 1)

    def frames(self) -> Iterator[np.ndarray]:
        """(H, W, 3) uint8 RGB frames; raises `MediaError` when nothing can be decoded."""
        if self.kind == "image":
            yield load_image(self.path)
        elif self.kind == "video":
            yield from _video_frames(self.path)
        else:
            yield from _dicom_frames(self._dicom)


def open_media(path: str | Path) -> Media:
    """Inspect a file: kind, fps and frame count (DICOM headers are read here)."""
    p = Path(path)
    kind = media_kind(p) or "image"  # an explicit file of unknown type: let PIL try
    if kind == "video":
        import cv2

        cap = cv2.VideoCapture(str(p))
        try:
            if not cap.isOpened():
                raise MediaError("cannot open video (corrupt file or unsupported codec)")
            fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        finally:
            cap.release()
        return Media(p, "video", fps if fps > 0 else None, n if n > 0 else None)
    if kind == "dicom":
        ds = _read_dicom(p)
        return Media(p, "dicom", _dicom_fps(ds), int(getattr(ds, "NumberOfFrames", 1) or 1), ds)
    return Media(p, "image", None, 1)


def iter_frames(source: str | Path | Sequence[str | Path],
                on_problem: Callable[[Problem], None] | None = warn_problem) -> Iterator[Frame]:
    """Every frame of every file of ``source``; unreadable files go to ``on_problem`` and are
    skipped. A missing pydicom is an error (ImportError), not a skipped file."""
    for path in resolve_sources(source):
        try:
            for i, img in enumerate(open_media(path).frames()):
                yield Frame(img, str(path), i)
        except ImportError:
            raise
        except Exception as e:  # noqa: BLE001 -- any decoder failure: report, skip, go on
            if on_problem is not None:
                on_problem(Problem(str(path), describe_error(e)))


def describe_error(e: BaseException) -> str:
    msg = str(e).strip() or type(e).__name__
    return msg if isinstance(e, MediaError) else f"{type(e).__name__}: {msg}"


# --- video ------------------------------------------------------------------------------------------
def _video_frames(path: Path) -> Iterator[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise MediaError("cannot open video (corrupt file or unsupported codec)")
    n = 0
    try:
        while True:
            ok, bgr = cap.read()
            if not ok or bgr is None:
                break
            n += 1
            if bgr.ndim == 2:
                bgr = np.repeat(bgr[:, :, None], 3, axis=2)
            yield np.ascontiguousarray(bgr[:, :, 2::-1])
    finally:
        cap.release()
    if n == 0:
        raise MediaError("no frame could be decoded (corrupt or empty video)")


# --- DICOM ------------------------------------------------------------------------------------------
def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError as e:
        raise ImportError(DICOM_HINT) from e
    return pydicom


def _read_dicom(path: Path) -> Any:
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as e:  # InvalidDicomError, truncated file, ...
        raise MediaError(f"not a readable DICOM file: {e}") from e
    if "PixelData" not in ds:
        raise MediaError("DICOM object has no pixel data")
    return ds


def _dicom_fps(ds: Any) -> float | None:
    for key, conv in (("FrameTime", lambda v: 1000.0 / v), ("CineRate", float),
                      ("RecommendedDisplayFrameRate", float)):
        v = getattr(ds, key, None)
        try:
            if v is not None and float(v) > 0:
                return float(conv(float(v)))
        except (TypeError, ValueError):
            continue
    return None


def _dicom_frames(ds: Any) -> Iterator[np.ndarray]:
    """All frames of a DICOM object as (H, W, 3) uint8 RGB."""
    pydicom = _pydicom()
    try:
        from pydicom.pixels import apply_color_lut, convert_color_space
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_color_lut, convert_color_space

    arr = np.asarray(ds.pixel_array)
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    spp = int(ds.get("SamplesPerPixel", 1))
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if n == 1:
        arr = arr[None]
    if (spp > 1 and arr.ndim != 4) or (spp == 1 and arr.ndim != 3):
        raise MediaError(f"unexpected pixel array shape {arr.shape} for {n} frame(s), "
                         f"{spp} sample(s) per pixel")
    major = int(pydicom.__version__.split(".")[0])
    if spp == 3 and pi in ("YBR_FULL", "YBR_FULL_422"):
        # pydicom >= 3 returns RGB already (pixel_array's as_rgb=True); 2.x does not for native data
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if major < 3 and (ts is None or not ts.is_compressed):
            arr = convert_color_space(arr, pi, "RGB")
    bits = int(ds.get("BitsStored", 8) or 8)
    if pi == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        desc = ds.get("RedPaletteColorLookupTableDescriptor")
        bits = int(desc[2]) if desc is not None and len(desc) > 2 else 16  # LUT entry depth
    if arr.dtype != np.uint8:
        a = arr.astype(np.float32)
        if int(ds.get("PixelRepresentation", 0)) == 1 and pi != "PALETTE COLOR":  # signed: shift to 0..2^bits-1
            a += 2 ** (bits - 1)
        top = float(2 ** bits - 1)
        arr = np.rint(np.clip(a, 0, top) * (255.0 / top)).astype(np.uint8)
    if pi == "MONOCHROME1":
        arr = 255 - arr
    for f in arr:
        yield np.ascontiguousarray(np.repeat(f[:, :, None], 3, axis=2) if f.ndim == 2 else f[:, :, :3])
