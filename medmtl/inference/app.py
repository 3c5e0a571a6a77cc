"""The `medmtl predict` application: `predict_command` runs a predictor over image, folder, glob,
video and DICOM sources (`medmtl.inference.sources`), draws the results (`draw`), saves annotated
media (`writers`) and writes predictions.jsonl and summary.json, with per-clip and overall tallies
(`_Tally`). The top of `medmtl.inference`: nothing in the package imports it but ``__init__``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from medmtl.errors import MedmtlError, NonFiniteError, clip_text
from medmtl.fileio import atomic_write_text
from medmtl.inference.draw import annotate
from medmtl.inference.loader import load_model
from medmtl.inference.results import FrameResult
from medmtl.inference.sources import (
    Problem,
    describe_error,
    open_media,
    resolve_sources,
    warn_problem,
)
from medmtl.inference.writers import MediaWriter


class _Tally:
    """Running counts over frames (a clip or the whole run) for summary.json."""

    def __init__(self, cls_names: Sequence[str]) -> None:
        self.cls_names = list(cls_names)
        self.frames = self.with_view = self.uncertain = 0
        self.votes: dict[str, int] = {}
        self.prob_sum = np.zeros(len(self.cls_names))
        self.jets: dict[str, dict[str, Any]] = {}

    def add(self, r: FrameResult) -> None:
        self.frames += 1
        if r.view_probs:
            self.with_view += 1
            self.prob_sum += np.array([r.view_probs.get(n, 0.0) for n in self.cls_names])
            if r.view_name is None:
                self.uncertain += 1
            else:
                self.votes[r.view_name] = self.votes.get(r.view_name, 0) + 1
        best: dict[str, float] = {}
        for d in r.detections:
            best[d.name] = max(best.get(d.name, 0.0), d.score)
            j = self.jets.setdefault(d.name, {"frames": 0, "detections": 0, "max_score": 0.0})
            j["detections"] += 1
        for name, s in best.items():
            self.jets[name]["frames"] += 1
            self.jets[name]["max_score"] = round(max(self.jets[name]["max_score"], s), 5)

    def to_dict(self) -> dict[str, Any]:
        view = None
        if self.with_view:
            mean = {n: round(float(p) / self.with_view, 5) for n, p in zip(self.cls_names, self.prob_sum, strict=True)}
            top = max(self.votes, key=lambda n: (self.votes[n], mean.get(n, 0.0))) if self.votes else None
            votes = self.votes.get(top, 0) if top else 0
            tied = sorted(n for n, v in self.votes.items() if v == votes) if top else []
            text = (f"view {top or 'uncertain'} ({votes}/{self.with_view} frames, "
                    f"{100 * votes / self.with_view:.0f} %)")
            if len(tied) > 1:  # the vote does not decide: say so, and what broke the tie
                text = (f"view tied between {' and '.join(tied)} ({votes}/{self.with_view} "
                        f"frames each); {top} has the higher mean probability "
                        f"({mean.get(top, 0.0):.2f})")
            view = {"name": top, "votes": votes,
                    "mean_prob": mean.get(top) if top else None, "vote_counts": dict(self.votes),
                    "mean_probs": mean, "uncertain_frames": self.uncertain,
                    # how unanimous: the share of the frames with a view output that voted for it
                    "agreement": round(votes / self.with_view, 5),
                    "tie": tied if len(tied) > 1 else None, "text": text}
        return {"frames": self.frames, "view": view, "jets": dict(sorted(self.jets.items())),
                "jets_text": self.jets_text()}

    def jets_text(self) -> str:
        """``jets MR in 30/45 frames (max 0.91), TR in 2/45 frames (max 0.40)``."""
        if not self.jets:
            return "no jets found"
        ranked = sorted(self.jets.items(), key=lambda kv: (-kv[1]["frames"], kv[0]))
        return "jets " + ", ".join(f"{n} in {j['frames']}/{self.frames} frames (max "
                                   f"{j['max_score']:.2f})" for n, j in ranked)


def image_line(r: FrameResult) -> dict[str, Any]:
    """One image's entry of summary.json's ``per_image``: its own view and jets."""
    best: dict[str, float] = {}
    for d in r.detections:
        best[d.name] = max(best.get(d.name, 0.0), d.score)
    view = r.view_text
    jets = ("jets " + ", ".join(f"{n} {v:.2f}" for n, v in sorted(best.items(),
                                                                    key=lambda kv: -kv[1]))
            if best else "no jets found")
    return {"source": r.source, "view": r.view_name,
            "view_prob": None if r.view_prob is None else round(r.view_prob, 5),
            "view_uncertain": r.view_uncertain,
            "jets": {n: round(v, 5) for n, v in sorted(best.items())},
            "text": "; ".join(t for t in (view, jets) if t)}


def describe_abstention(predictor: Any, view_min_prob: float | None) -> dict[str, Any]:
    """The view threshold a predict run applies, where it came from, and a one-line ``text``."""
    rec = getattr(predictor, "abstention", None)
    if view_min_prob is not None:
        return {"threshold": float(view_min_prob), "source": "--view-min-prob",
                "text": f"view abstention: --view-min-prob {view_min_prob:g}; blank images "
                        "get no view"}
    if rec:
        acc = rec.get("accuracy_accepted")
        how = (f"val accuracy {acc:.2f} on the {100 * rec['coverage']:.0f} % of val frames "
               f"it accepts, target {rec['target']:g}" if rec.get("reached") else
               f"no share of val reached accuracy {rec['target']:g}: every view is uncertain")
        return {"threshold": float(rec["threshold"]), "source": "checkpoint", "measured": rec,
                "text": f"view abstention: threshold {rec['threshold']:.2f} from the checkpoint "
                        f"({how}); blank images get no view"}
    return {"threshold": 0.0, "source": "none",
            "text": "view abstention: this model records no threshold (trained before medmtl "
                    "measured one, or an .onnx graph): views are reported at any probability "
                    "but blank images get none; --view-min-prob P sets one"}


def predict_command(weights: str | Path | None, source: str | Path, out: str | Path = "runs/predict",
                    conf: float = 0.25, iou: float = 0.6, max_det: int = 100,
                    imgsz: int | None = None, device: str = "auto", save_media: bool = True,
                    view_min_prob: float | None = None, allow_backbone_path: bool = False,
                    ) -> dict[str, Any]:
    """Detect jets and classify the view on images, a folder, a glob, videos or DICOM files.

    WEIGHTS: a checkpoint (.pt) or an exported graph (.onnx); None: the shipped echo model
    (weights/medmtl-echo.pt). Writes to OUT: one annotated image
    per image (boxes with class and score, the view and its probability in a corner) or an
    annotated mp4 per video/DICOM clip (--no-save-media: none); predictions.jsonl, one line per
    frame (source, frame, image size, boxes in original pixels with class and score, view
    probabilities, view); summary.json (frames, view by majority vote with vote counts and mean
    probability, how unanimous the frames were (`agreement`, and `text` such as "view PLAX (41/45
    frames, 91 %)"), jets per class: frames and max score, per clip and overall; thresholds;
    skipped files). Unreadable files are reported and skipped. A view whose probability is below
    VIEW_MIN_PROB is reported as uncertain (view null, ``view_uncertain`` says why); None: the
    checkpoint's abstention threshold, measured on val (`medmtl.evaluation.abstention`; 0 when
    it has none, which summary.json's ``abstention`` says). A blank image gets no view. When no input could be read at all, it
    raises `MedmtlError` with the count (after writing summary.json); non-finite model outputs
    raise `NonFiniteError` (never "no detections")."""
    predictor = load_model(weights, device=device, imgsz=imgsz,
                           allow_backbone_path=allow_backbone_path)
    abstention = describe_abstention(predictor, view_min_prob)
    view_min_prob = abstention["threshold"]
    files = resolve_sources(source)
    if not files:
        raise FileNotFoundError(f"no image, video or DICOM file in {source}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    total = _Tally(predictor.cls_names)
    clips: list[dict[str, Any]] = []
    problems: list[Problem] = []
    used: set[str] = set()
    n_images = 0
    images: list[dict[str, Any]] = []
    with open(out / "predictions.jsonl", "w") as jf:
        for path in files:
            stem, k = path.stem, 1
            while stem in used:
                stem, k = f"{path.stem}_{k}", k + 1
            used.add(stem)
            tally, writer, done = _Tally(predictor.cls_names), None, 0
            try:
                media = open_media(path)
                ext = path.suffix.lower() if path.suffix.lower() in (".jpg", ".jpeg", ".png") else ".png"
                target = out / (stem + (".mp4" if media.is_clip else ext))
                writer = MediaWriter(target, media.is_clip, media.fps) if save_media else None
                frames = enumerate(media.frames())
                while chunk := list(islice(frames, predictor.max_batch)):
                    idx, arrays = [c[0] for c in chunk], [c[1] for c in chunk]
                    results = predictor.predict_batch(arrays, conf, iou, max_det, view_min_prob,
                                                      [str(path)] * len(arrays), idx)
                    for a, r in zip(arrays, results, strict=True):
                        jf.write(json.dumps(r.to_dict(ndigits=2), allow_nan=False) + "\n")
                        tally.add(r)
                        total.add(r)
                        if not media.is_clip:
                            images.append(image_line(r))
                        if writer is not None:
                            writer.write(annotate(a, r))
                    done += len(arrays)
            except (ImportError, NonFiniteError):  # broken weights: every file would fail
                raise
            except Exception as e:  # noqa: BLE001 -- report the file, go on with the rest
                reason = describe_error(e) + (f" (after {done} frames)" if done else "")
                problems.append(Problem(str(path), reason))
                warn_problem(problems[-1])
                if not done:
                    continue
            finally:
                if writer is not None:
                    writer.close()
            if media.is_clip:
                clips.append({"source": str(path), "fps": media.fps,
                              "output": str(writer.path) if writer else None,
                              "codec": writer.codec if writer else None, **tally.to_dict()})
            else:
                n_images += 1
    summary = {"weights": str(weights), "source": str(source), "out": str(out),
               "thresholds": {"conf": conf, "iou": iou, "max_det": max_det,
                              "view_min_prob": view_min_prob, "imgsz": predictor.imgsz},
               "abstention": abstention,
               "files": len(files), "images": n_images, "clips": len(clips), **total.to_dict(),
               "per_clip": clips, "per_image": images, "skipped": len(problems),
               "problems": [{"file": p.file, "reason": p.reason} for p in problems]}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, allow_nan=False))
    if problems and total.frames == 0:
        raise MedmtlError(f"{clip_text(source, 200)}: none of the {len(files)} input file(s) could "
                          f"be read ({len(problems)} failed; first: {clip_text(problems[0].file, 200)}"
                          f": {clip_text(problems[0].reason, 200)}); see {out / 'summary.json'}")
    return summary
