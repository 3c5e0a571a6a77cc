"""Score finished runs' held-out view predictions against views judged by a person (a trusted
CSV of the held-out clips, e.g. docs/label-noise/heldout-judged-by-eye.csv) beside the file
labels: frame accuracy and per-view recall, and per clip (majority vote of the frame
predictions). Clips judged "?" and clips not in the file are left out of the judged columns.

    .venv/bin/python benchmarks/score_judged.py docs/label-noise/heldout-judged-by-eye.csv \\
        runs/balance/none runs/forward-real

Reads ``<run>/eval/test/view_predictions.json`` (written by any run with --test-split), or
``<folder>/view_predictions.json`` (``medmtl val --out``, e.g. the shipped model's runs/ship/heldout).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np


def score(preds: list[int], truth: list[int], clips: list[str], names: list[str]) -> dict:
    p, t = np.asarray(preds), np.asarray(truth)
    out: dict = {"frames": len(t), "accuracy": float((p == t).mean()) if len(t) else float("nan")}
    for i, n in enumerate(names):
        m = t == i
        out[f"recall_{n}"] = float((p[m] == i).mean()) if m.any() else float("nan")
    votes: dict[str, Counter] = {}
    want: dict[str, int] = {}
    for c, a, b in zip(clips, p.tolist(), t.tolist(), strict=True):
        votes.setdefault(c, Counter())[a] += 1
        want[c] = b
    got = {c: v.most_common(1)[0][0] for c, v in votes.items()}
    out["clips"] = len(got)
    out["clip_accuracy"] = float(np.mean([got[c] == want[c] for c in got])) if got else np.nan
    a4c = [c for c in got if want[c] == 0]
    out["clip_recall_A4C"] = float(np.mean([got[c] == 0 for c in a4c])) if a4c else np.nan
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("judged")
    ap.add_argument("runs", nargs="+")
    a = ap.parse_args()
    from medmtl.data.trusted import load_trusted

    rows = []
    for run in a.runs:
        cand = [Path(run) / "eval" / "test" / "view_predictions.json",
                Path(run) / "view_predictions.json"]  # a run, or a `medmtl val` output
        path = next((c for c in cand if c.is_file()), None)
        if path is None:
            raise SystemExit(f"score_judged: {run}: no eval/test/view_predictions.json (train "
                             "with --test-split) nor view_predictions.json (medmtl val --out)")
        doc = json.loads(path.read_text())
        names = list(doc["labels"])
        judged = load_trusted(a.judged, names)
        imgs = [r for r in doc["images"] if r.get("view") is not None and r["view"] >= 0]
        files = score([r["pred"] for r in imgs], [r["view"] for r in imgs],
                      [r["clip"] for r in imgs], names)
        jj = [r for r in doc["images"] if judged.view_of(r["clip"]) is not None]
        eye = score([r["pred"] for r in jj], [judged.view_of(r["clip"]) for r in jj],
                    [r["clip"] for r in jj], names)
        rows.append((run, files, eye))
    keys = ["accuracy", "recall_A4C", "recall_PLAX", "recall_PSAX", "clip_accuracy",
            "clip_recall_A4C"]
    print(f"judged views: {a.judged} ({len(judged)} clips judged, {len(judged.unsure)} can't "
          f"tell; per class {judged.per_class()})")
    print("| run | against | frames | clips | " + " | ".join(keys) + " |")
    print("|---|---|---|---|" + "---|" * len(keys))
    for run, files, eye in rows:
        for label, s in (("file labels", files), ("judged views", eye)):
            print(f"| {run} | {label} | {s['frames']} | {s['clips']} | "
                  + " | ".join(f"{s[k]:.3f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
