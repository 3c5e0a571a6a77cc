"""Contact sheets of the suggested review clips (``clips.csv`` of `medmtl audit --label-issues`):
three frames per clip (first, middle, last) in a row, each row headed by the clip's review order
and id only (not its label nor the suggestion, so that the judgement is blind). How the trusted
labels of docs/label-noise/trusted-by-eye.csv were looked at.

    .venv/bin/python benchmarks/contact_sheet.py runs/label-noise-real/audit/clips.csv \\
        --data runs/label-noise-real/split/data.yaml --out runs/label-noise-real/sheets
    .venv/bin/python benchmarks/contact_sheet.py - --split test \\
        --data runs/label-noise-real/split/data.yaml --out runs/label-noise-real/heldout
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import cv2
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clips_csv", help="clips.csv of the audit, or - with --split")
    ap.add_argument("--split", default=None, help="every clip of this split of --data instead "
                    "(e.g. test: the held-out patients, to judge an evaluation set)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-sheet", type=int, default=5)
    ap.add_argument("--side", type=int, default=220)
    a = ap.parse_args()
    from medmtl.data.groups import clip_of
    from medmtl.labelissues.oof import load_pool

    pool = load_pool(a.data, [a.split] if a.split else None)
    frames: dict[str, list[Path]] = {}
    for r in pool.records:
        frames.setdefault(clip_of(r.path), []).append(r.path)
    if a.split:
        rows = [{"clip": c, "review_order": str(i)} for i, c in enumerate(sorted(frames), 1)]
    else:
        with open(a.clips_csv, newline="") as f:
            rows = sorted((r for r in csv.DictReader(f) if r["review_order"]),
                          key=lambda r: int(r["review_order"]))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    s = a.side
    for start in range(0, len(rows), a.per_sheet):
        chunk = rows[start:start + a.per_sheet]
        sheet = np.full((len(chunk) * (s + 24), 3 * s + 8, 3), 255, np.uint8)
        for i, r in enumerate(chunk):
            fs = sorted(frames[r["clip"]], key=lambda p: p.name)
            pick = [fs[0], fs[len(fs) // 2], fs[-1]]
            y = i * (s + 24)
            cv2.putText(sheet, f"{r['review_order']}. {r['clip']}", (4, y + 17),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
            for j, p in enumerate(pick):
                img = cv2.resize(cv2.imread(str(p)), (s, s), interpolation=cv2.INTER_AREA)
                sheet[y + 24:y + 24 + s, j * (s + 4):j * (s + 4) + s] = img
        path = out / f"sheet-{start // a.per_sheet + 1}.jpg"
        cv2.imwrite(str(path), sheet, [cv2.IMWRITE_JPEG_QUALITY, 80])
        print(path)


if __name__ == "__main__":
    main()
