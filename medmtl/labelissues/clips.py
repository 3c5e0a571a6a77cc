"""The clip-level view ranking of `medmtl audit --label-issues` (issue #27): clip table from the
pool and its out-of-sample probabilities, the corruption matrix (from ``--trusted`` clips, else
cleanlab's confident joint), the ranking and the suggested review list, written as
``clips.csv`` and, with trusted clips, ``corruption.json`` (what ``medmtl train --view-labels
forward --corruption`` reads). The maths is in `medmtl.labelissues.noise`."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from medmtl.data.dataset_yaml import DataError
from medmtl.data.groups import GroupPattern
from medmtl.data.trusted import TrustedSet, conditioning_note
from medmtl.labelissues.noise import (
    ClipTable,
    CorruptionEstimate,
    appearance_disagreement,
    build_clip_table,
    confident_joint_corruption,
    estimate_corruption,
    rank_clips,
    suggest_review,
)
from medmtl.labelissues.oof import OOF, Pool

CLIP_COLUMNS = ["rank", "clip", "patient", "given", "suggested", "score", "uncertainty",
                "frames", "agree", "trusted", "review_order"]


def read_features(path: Path, pool: Pool) -> dict[str, np.ndarray]:
    """``--features FILE.npz``: arrays ``stems`` (N,) and ``features`` (N, D), e.g. pretrained
    embeddings of the frames (``benchmarks/label_noise_real.py`` writes one)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            stems, feats = [str(s) for s in z["stems"]], np.asarray(z["features"], np.float64)
    except FileNotFoundError:
        raise DataError(f"{path}: features file not found") from None
    except (KeyError, ValueError, OSError) as e:
        raise DataError(f"{path}: not a features file ({e}); expected an .npz with 'stems' "
                        "and 'features'") from None
    if feats.ndim != 2 or len(feats) != len(stems):
        raise DataError(f"{path}: 'features' must be (N, D) with one row per stem")
    index = pool.index
    return {s: f for s, f in zip(stems, feats, strict=True) if s in index}


def _table(pool: Pool, oof: OOF, pattern: GroupPattern) -> ClipTable:
    idx = [i for i, r in enumerate(pool.records)
           if r.view is not None and pool.stems[i] in oof.view_probs]
    if not idx:
        raise DataError(f"{pool.spec.yaml_path}: no view-labelled image has out-of-sample "
                        "probabilities; nothing to rank by clip")
    return build_clip_table([pattern.clip_of(pool.records[i].path) for i in idx],
                            [pattern.patient_of(pool.records[i].path) for i in idx],
                            [int(pool.records[i].view) for i in idx],  # type: ignore[arg-type]
                            np.stack([oof.view_probs[pool.stems[i]] for i in idx]),
                            stems=[pool.stems[i] for i in idx],
                            num_views=len(pool.spec.cls_names))


def clip_views(pool: Pool, oof: OOF, pattern: GroupPattern, trusted: TrustedSet | None = None,
               features: dict[str, np.ndarray] | None = None, budget: int = 20,
               seed: int = 0) -> dict[str, Any]:
    """Rank the pool's clips; returns rows, the suggested list, the estimate and a summary."""
    names = list(pool.spec.cls_names)
    k = len(names)
    table = _table(pool, oof, pattern)
    notes: list[str] = []
    tmap: dict[str, int] = {}
    if trusted is not None:
        tmap = {c: t.view for c, t in trusted.labels.items() if c in set(table.clips)}
        unmatched = len(trusted) - len(tmap)
        if unmatched:
            notes.append(f"{unmatched} of {len(trusted)} trusted clips of {trusted.path} have no "
                         "ranked frame here (another data set, or no probabilities): not used")
    if tmap:
        at = [table.row[c] for c in sorted(tmap)]
        est = estimate_corruption(table.probs[at], table.given[at],
                                  np.asarray([tmap[c] for c in sorted(tmap)]), k, seed=seed)
    else:
        labs = [int(pool.records[pool.index[s]].view) for st in table.stems for s in st]
        fp = np.stack([oof.view_probs[s] for st in table.stems for s in st])
        est = confident_joint_corruption(np.asarray(labs), fp, k)
        notes.append("no trusted clip: the corruption matrix comes from the noisy model alone "
                     "(confident joint); a systematic error the model learned stays hidden. "
                     "Review the suggested clips and give them with --trusted")
    notes += est.notes
    warn = conditioning_note(est.matrix, names)
    if warn:
        notes.append(warn)
    rows = rank_clips(table, est, tmap)
    disagree: dict[str, float] = {}
    if features:
        have = [j for j, st in enumerate(table.stems) if any(s in features for s in st)]
        if len(have) >= 4:
            mean = np.stack([np.mean([features[s] for s in table.stems[j] if s in features], 0)
                             for j in have])
            tr = np.asarray([tmap.get(table.clips[j], -1) for j in have])
            d = appearance_disagreement(mean, table.given[have], k, seed=seed, trusted=tr)
            disagree = {table.clips[j]: float(v) for j, v in zip(have, d, strict=True)}
        notes.append(f"appearance disagreement from features of {len(have)} of {len(table)} "
                     "clips")
    looked = set(trusted.unsure) if trusted is not None else set()
    if looked:
        notes.append(f"{len(looked & set(table.clips))} clips judged \"can't tell\" in "
                     f"{trusted.path} are left out of the suggested review list")
    picked = suggest_review([r for r in rows if r["clip"] not in looked], budget, disagree)
    order = {r["clip"]: r["review_order"] for r in picked}
    at_row, index = table.row, pool.index
    for i, r in enumerate(rows, start=1):
        st = table.stems[at_row[r["clip"]]]
        r.update(rank=i, review_order=order.get(r["clip"], ""),
                 disagreement=disagree.get(r["clip"]), stems=st,
                 image=str(pool.records[index[st[len(st) // 2]]].path))
    by_clip = {r["clip"]: r for r in rows}
    picked = [by_clip[p["clip"]] | {"review_value": p["review_value"]} for p in picked]
    summary = {"clips": len(table), "frames": int(table.frames.sum()),
               "trusted_clips_used": len(tmap), "corruption": est.record(names),
               "suggested": len(picked), "budget": budget,
               "likely_wrong": sum(r["score"] > 0.5 and not r["trusted"] for r in rows),
               "likely_wrong_by_pair": _pairs(rows, names), "notes": notes}
    return {"rows": rows, "suggested": picked, "estimate": est, "summary": summary,
            "names": names}


def _pairs(rows: list[dict[str, Any]], names: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        if r["score"] > 0.5 and not r["trusted"]:
            key = f"{names[r['given']]}->{names[r['suggested']]}"
            out[key] = out.get(key, 0) + 1
    return out


def write_clip_outputs(res: dict[str, Any], out: Path, trusted: TrustedSet | None,
                       data: str) -> list[Path]:
    """``clips.csv`` always; ``corruption.json`` when trusted clips estimated the matrix."""
    names = res["names"]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "clips.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, CLIP_COLUMNS + [f"p_{n}" for n in names], extrasaction="ignore")
        w.writeheader()
        for r in res["rows"]:
            w.writerow(r | {"given": names[r["given"]], "suggested": names[r["suggested"]],
                            "score": round(r["score"], 4),
                            "uncertainty": round(r["uncertainty"], 4),
                            "agree": round(r["agree"], 4), "trusted": int(r["trusted"])}
                       | {f"p_{n}": r["posterior"][i] for i, n in enumerate(names)})
    written = [path]
    est: CorruptionEstimate = res["estimate"]
    if est.source == "trusted" and trusted is not None:
        doc = est.record(names) | {"data": data, "trusted": trusted.record(),
                                   "clips_ranked": res["summary"]["clips"]}
        cpath = out / "corruption.json"
        cpath.write_text(json.dumps(doc, indent=2))
        written.append(cpath)
    return written


__all__ = ["CLIP_COLUMNS", "clip_views", "read_features", "write_clip_outputs"]
