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
import warnings
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
    ap.add_argument("--versus", type=int, default=0, metavar="N",
                    help="the first N runs against the next N, seed by seed: mean difference "
                    "(second minus first) with a 95 %% interval from resampling the held-out "
                    "clips (2,000 draws)")
    a = ap.parse_args()
    from medmtl.data.trusted import load_trusted

    rows = []
    per_run: list = []
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
        per_run.append((imgs, jj, names, judged))
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


    if a.versus:
        versus(per_run, a.versus)


def _clip_level(imgs: list[dict], truth_of) -> dict[str, tuple[list[int], list[int]]]:
    """clip -> (frame predictions, frame truths) for frames with a truth."""
    out: dict[str, tuple[list[int], list[int]]] = {}
    for r in imgs:
        t = truth_of(r)
        if t is None:
            continue
        p, tr = out.setdefault(r["clip"], ([], []))
        p.append(r["pred"])
        tr.append(t)
    return out


def _metrics(clips: dict[str, tuple[list[int], list[int]]], pick: list[str]) -> dict[str, float]:
    pred = [p for c in pick for p in clips[c][0]]
    tru = [t for c in pick for t in clips[c][1]]
    p, t = np.asarray(pred), np.asarray(tru)
    a4c = t == 0
    return {"accuracy": float((p == t).mean()),
            "recall_A4C": float((p[a4c] == 0).mean()) if a4c.any() else float("nan")}


def _diff(tabs: list, n: int, pick: list[str]) -> dict[str, float]:
    """Mean over the n seed pairs of (run n+i) - (run i), on the clips `pick`."""
    d = [{k: _metrics(tabs[n + i], pick)[k] - _metrics(tabs[i], pick)[k]
          for k in ("accuracy", "recall_A4C")} for i in range(n)]
    with warnings.catch_warnings():  # a draw without an A4C frame: nan, left out
        warnings.simplefilter("ignore", RuntimeWarning)
        return {k: float(np.nanmean([x[k] for x in d])) for k in d[0]}


def versus(per_run: list, n: int) -> None:
    """Seed-paired differences, clips resampled (frames of a clip are not independent)."""
    rng = np.random.default_rng(0)
    for label, truth in (("file labels", lambda r, j: r["view"] if r.get("view", -1) >= 0
                          else None),
                         ("judged views", lambda r, j: j.view_of(r["clip"]))):
        tabs = [_clip_level(imgs, lambda r, j=judged, f=truth: f(r, j))
                for imgs, _, _, judged in per_run]
        clips = sorted(set.intersection(*(set(t) for t in tabs)))
        point = _diff(tabs, n, clips)
        boots = [_diff(tabs, n, list(rng.choice(clips, len(clips)))) for _ in range(2000)]
        for k in point:
            lo, hi = np.nanpercentile([b[k] for b in boots], [2.5, 97.5])
            print(f"versus, {label}, {k}: {point[k]:+.3f} [{lo:+.3f}, {hi:+.3f}] "
                  f"({n} seed pairs, {len(clips)} clips resampled)")


if __name__ == "__main__":
    main()
