"""Synthetic colour-Doppler echocardiography frames in the real data set's on-disk format.

This is the built-in data of the demo and the tests: a small CNN must learn both tasks from a few
hundred frames in minutes on a CPU, so the signal is deliberately clear while the pictures still
look like colour-Doppler echo:

* a sector-shaped fan (apex at the top centre) on black, filled with smoothed, laterally
  elongated multiplicative speckle, depth attenuation and a bright near field;
* one of three views with distinct chamber layouts (dark blood pools, bright walls):
  ``A4C`` four chambers in a 2x2 arrangement (ventricles on top, pointing at the apex),
  ``PLAX`` a right-ventricle band on top, an elongated left ventricle, the aorta and the left
  atrium on the right, and a bright posterior pericardium line at the bottom,
  ``PSAX`` a round aortic ring with a dark centre and a three-cusp valve, wrapped by the RV
  outflow tract, with the pulmonary artery, right and left atrium around it;
* one regurgitation jet (rarely two): a tapered flame of turbulent, aliased colour (a mosaic of
  red / yellow / blue / cyan) starting at a valve. Its class is the valve it starts at, so it is
  decided by where it sits relative to the view's anatomy (see ``synth_scene.SITES``); the
  dominant colour follows the flow direction (towards the probe: red/yellow, away: blue/cyan).
  The label box is the jet's enclosing box;
* distractors that are not labelled: smaller, smooth, dark red/blue laminar flow patches, the
  colour-box outline, depth ticks; plus random gain, depth (zoom), fan size and probe tilt.

File names are ``<patient>-unnamed_1_<clip>.mp4-<frame>``; a patient has 1-3 clips of 2-5
frames (``clip_frames``). `plant_view_flips` changes the view label of a fraction of the frames
afterwards (label noise with a known answer, for the clip-consistency audit's tests). A clip keeps its view, valve, anatomy, gain and depth; the frames vary the jet and the
speckle. Patients never cross splits. Views cycle over the clips (balanced); the jet class cycles
over the valves each view shows, which gives roughly AR 34 %, MR 30 %, TR 25 %, PR 11 %.

Every frame is drawn from its own generator, seeded by ``(seed, split, patient, clip, frame)``,
so a frame does not depend on how many frames are asked for: the same seed gives byte-identical
files and a larger set extends a smaller one. Only numpy and Pillow are used.

This module draws the data set's composition (patients, clips, frames, views, jet classes) and
writes the files; :mod:`medmtl.data.synth_scene` holds the anatomy and jet sites in canonical
coordinates and a clip's fixed draw, :mod:`medmtl.data.synth_render` turns a clip into pixels.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from medmtl.data.synth_render import render
from medmtl.data.synth_scene import A4C, AR, MR, NAMES, PLAX, PR, PSAX, TR, VIEWS, make_clip

__all__ = ["NAMES", "VIEWS", "generate", "plant_view_flips"]

_MARKER = "# medmtl synthetic colour-Doppler echo data set"
_SPLITS: tuple[tuple[str, int], ...] = (("train", 1), ("valid", 2), ("test", 3))
_TAG_SPLIT, _TAG_PATIENT, _TAG_CLIP, _TAG_FRAME, _TAG_DEFECT = 11, 12, 13, 14, 15
_TAG_NO_JET = 17
_JPEG_QUALITY = 90
_ID_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"))

# Jet class of successive clips of a view (the start is random per split).
_CLASS_CYCLE: dict[int, tuple[int, ...]] = {
    A4C: (MR, TR, AR, TR, MR),
    PLAX: (AR, MR),
    PSAX: (PR, AR, TR, PR, AR, TR),
}


# --------------------------------------------------------------------------------------------
# data set


def _patient_id(rng: np.random.Generator) -> str:
    return "".join(rng.choice(_ID_ALPHABET, size=12).tolist())


def _label_text(
    labels: Sequence[tuple[int, tuple[float, float, float, float]]],
    view: int,
    yolo: bool,
    with_view: bool,
) -> str:
    lines = []
    for cls, (x1, y1, x2, y2) in labels:
        if yolo:
            vals = ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)
        else:
            vals = (x1, y1, x2, y1, x2, y2, x1, y2)
        lines.append(" ".join([str(cls)] + [f"{min(max(v, 0.0), 1.0):.6f}" for v in vals]))
    text = "\n".join(lines or ["none"]) + "\n"  # "none": looked at, no jet (a negative)
    if with_view:
        text += "\n" + " ".join("1" if i == view else "0" for i in range(len(VIEWS)))
    return text


def _write_split(
    root: Path,
    split: str,
    code: int,
    n: int,
    size: int,
    seed: int,
    no_view: set[int],
    used_ids: set[str],
    view_flips: float = 0.0,
    clip_frames: tuple[int, int] = (2, 5),
    no_jet: float = 0.0,
) -> None:
    img_dir, lbl_dir = root / split / "images", root / split / "labels"
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    srng = np.random.default_rng([seed, _TAG_SPLIT, code])
    view_off = int(srng.integers(3))
    class_pos = {v: int(srng.integers(len(c))) for v, c in _CLASS_CYCLE.items()}
    count, patient, clip_no = 0, 0, 0
    while count < n:
        prng = np.random.default_rng([seed, _TAG_PATIENT, code, patient])
        pid = _patient_id(prng)
        while pid in used_ids:  # astronomically rare; stays deterministic
            pid = _patient_id(prng)
        used_ids.add(pid)
        n_clips = int(prng.integers(1, 4))
        clip_ids = sorted(prng.choice(np.arange(1, 10), size=n_clips, replace=False).tolist())
        for ci, clip_id in enumerate(clip_ids):
            if count >= n:
                break
            view = (clip_no + view_off) % 3
            cycle = _CLASS_CYCLE[view]
            cls = cycle[class_pos[view] % len(cycle)]
            class_pos[view] += 1
            clip_no += 1
            crng = np.random.default_rng([seed, _TAG_CLIP, code, patient, ci])
            clip = make_clip(view, cls, crng)
            n_frames = int(crng.integers(clip_frames[0], clip_frames[1] + 1))
            frames = sorted(crng.choice(np.arange(1, 60), size=n_frames, replace=False).tolist())
            # flips stay a minority of the frames written (the last clip may be cut short)
            flips, max_flips = 0, (min(n_frames, n - count) - 1) // 2
            for fi, frame in enumerate(frames):
                if count >= n:
                    break
                frng = np.random.default_rng([seed, _TAG_FRAME, code, patient, ci, fi])
                jet_free = no_jet > 0 and bool(np.random.default_rng(
                    [seed, _TAG_NO_JET, code, patient, ci, fi]).random() < no_jet)
                image, labels = render(clip, size, frng, with_jets=not jet_free)
                yolo = bool(frng.random() < 0.2)
                label_view = view
                if view_flips > 0 and flips < max_flips and frng.random() < view_flips:
                    label_view = (view + 1 + int(frng.integers(2))) % 3
                    flips += 1
                stem = f"{pid}-unnamed_1_{clip_id}.mp4-{frame}"
                Image.fromarray(image, "RGB").save(img_dir / f"{stem}.jpg", quality=_JPEG_QUALITY)
                (lbl_dir / f"{stem}.txt").write_text(
                    _label_text(labels, label_view, yolo, with_view=count not in no_view),
                    encoding="utf-8",
                    newline="\n",
                )
                count += 1
        patient += 1


def _prepare(out: Path, overwrite: bool) -> None:
    """Refuse to clobber data that this module did not write (unless ``overwrite``)."""
    yaml_path = out / "data.yaml"
    ours = yaml_path.is_file() and yaml_path.read_text(encoding="utf-8").startswith(_MARKER)
    existing = [out / name for name, _ in _SPLITS if (out / name).exists()]
    if (existing or yaml_path.exists()) and not (ours or overwrite):
        raise FileExistsError(
            f"{out} already holds a data set not written by medmtl synth; "
            "choose an empty folder or pass overwrite=True"
        )
    for p in existing:
        shutil.rmtree(p)
    if yaml_path.exists():
        yaml_path.unlink()


def generate(
    out: str | Path,
    n_train: int = 300,
    n_val: int = 100,
    imgsz: int = 256,
    seed: int = 0,
    n_test: int = 0,
    *,
    defects: bool = False,
    overwrite: bool = False,
    view_flips: float = 0.0,
    clip_frames: tuple[int, int] = (2, 5),
    no_jet: float = 0.0,
) -> Path:
    """Write a synthetic data set in the real on-disk format; return the path of its data.yaml.

    ``out/{train,valid[,test]}/{images,labels}``: square ``imgsz`` JPEG frames (quality 90) and
    label files with one detection line per jet (a 4-point polygon, or for ~20 % of the files a
    plain YOLO ``cls cx cy w h`` line), a blank line, then the one-hot view line.
    ``defects=True`` drops the view line of 1-2 train files, like the real data.
    ``view_flips`` (0-1) plants view-label noise like the real data's: each frame of a clip is,
    with this probability, labelled with another view than the one drawn, in every split, but
    never more than (frames - 1) // 2 frames of a clip, so that the clip majority stays the true
    view (clips of 2 frames are never flipped). The images are unchanged.
    ``no_jet`` (0-1): the probability that a frame is jet-free (diastole): its colour box and
    laminar flow are drawn, its jet is not, and its label file says ``none`` (looked at, no jet:
    a negative for detection). 0 keeps the bytes of earlier versions.
    ``clip_frames``: the least and most frames per clip (at most 59; the default keeps the bytes
    of earlier versions).
    An ``out`` folder that already holds a data set written here is regenerated; any other
    existing data set there raises ``FileExistsError`` unless ``overwrite=True``.
    """
    for name, val in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test), ("seed", seed)):
        if int(val) < 0:
            raise ValueError(f"{name} must be >= 0, got {val}")
    if not 0 <= view_flips <= 1:
        raise ValueError(f"view_flips must be in [0, 1], got {view_flips}")
    if not 0 <= no_jet < 1:
        raise ValueError(f"no_jet must be in [0, 1), got {no_jet}")
    if imgsz < 32:
        raise ValueError(f"imgsz must be >= 32, got {imgsz}")
    if not 1 <= clip_frames[0] <= clip_frames[1] <= 59:
        raise ValueError(f"clip_frames must be (least, most) with 1 <= least <= most <= 59, got "
                         f"{clip_frames}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    _prepare(root, overwrite)

    no_view: set[int] = set()
    if defects and n_train > 0:
        drng = np.random.default_rng([seed, _TAG_DEFECT])
        k = min(n_train, 1 + int(drng.integers(2)))
        no_view = {int(i) for i in drng.choice(n_train, size=k, replace=False)}
    used: set[str] = set()
    counts = {"train": n_train, "valid": n_val, "test": n_test}
    for split, code in _SPLITS:
        if split == "test" and n_test == 0:
            continue
        _write_split(
            root,
            split,
            code,
            counts[split],
            imgsz,
            seed,
            no_view if split == "train" else set(),
            used,
            view_flips,
            clip_frames,
            no_jet,
        )

    lines = [
        _MARKER,
        f"# generated by medmtl.data.synth: seed={seed}, imgsz={imgsz}, defects={defects}"
        + (f", view_flips={view_flips}" if view_flips else "")
        + (f", no_jet={no_jet}" if no_jet else ""),
        "path: .",
        "train: train/images",
        "val: valid/images",
    ]
    if n_test > 0:
        lines.append("test: test/images")
    lines += [
        f"names: [{', '.join(NAMES)}]",
        f"cls_names: [{', '.join(VIEWS)}]",
    ]
    yaml_path = root / "data.yaml"
    yaml_path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")
    return yaml_path


def plant_view_flips(yaml_path: str | Path, fraction: float, seed: int = 0,
                     splits: Sequence[str] = ("train", "valid")) -> dict[str, tuple[int, int]]:
    """Give ``round(fraction * n)`` of the view-labelled frames of ``splits`` (of a data set
    written by `generate`) another view, drawn uniformly; rewrites their label files and returns
    ``{stem: (old view, new view)}``. Deterministic for ``seed``."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    root = Path(yaml_path).parent
    files = sorted(f for s in splits for f in (root / s / "labels").glob("*.txt"))
    labelled = []
    for f in files:
        lines = f.read_text(encoding="utf-8").splitlines()
        if lines and lines[-1].split().count("1") == 1 and set(lines[-1].split()) <= {"0", "1"}:
            labelled.append((f, lines))
    rng = np.random.default_rng([seed, 16])
    k = int(round(fraction * len(labelled)))
    flipped: dict[str, tuple[int, int]] = {}
    for i in sorted(rng.choice(len(labelled), size=k, replace=False).tolist()):
        f, lines = labelled[i]
        onehot = lines[-1].split()
        old = onehot.index("1")
        new = int(rng.choice([v for v in range(len(onehot)) if v != old]))
        lines[-1] = " ".join("1" if j == new else "0" for j in range(len(onehot)))
        f.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")
        flipped[f.stem] = (old, new)
    return flipped
