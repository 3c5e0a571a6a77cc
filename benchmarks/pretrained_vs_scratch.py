"""Pretrained against scratch at the same budget: the per-seed figures of two `medmtl report`
summaries (docs/study-scratch's scratch runs and benchmarks/study_pretrained.sh's), side by side per
method and metric, with the mean difference over seeds and its 95 % t interval (seeds paired by
number: the same split, held-out patients and data order). Three seeds give a wide interval; it
is printed, not hidden.

    python benchmarks/pretrained_vs_scratch.py docs/study-scratch/summary.json docs/study-pretrained/summary.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from scipy import stats

METRICS = (("map50", "mAP@0.5"), ("map50_95", "mAP@0.5:0.95"), ("accuracy", "view accuracy"),
           ("macro_f1", "view macro-F1"), ("clip_accuracy", "view accuracy per clip"))


def per_seed(summary: dict, method: str, key: str) -> dict[int, float]:
    return {int(r["seed"]): float(r["metrics"][key]) for r in summary["runs"]
            if r["method"] == method and r["metrics"].get(key) is not None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scratch", type=Path)
    ap.add_argument("pretrained", type=Path)
    ap.add_argument("--methods", default="detect,classify,fixed")
    a = ap.parse_args()
    s, p = (json.loads(x.read_text()) for x in (a.scratch, a.pretrained))
    print("| method | metric | scratch (mean ± sd) | pretrained (mean ± sd) | difference | 95 % "
          "interval over seeds | seeds |")
    print("|---|---|---|---|---|---|---|")
    for m in a.methods.split(","):
        for key, label in METRICS:
            xs, ys = per_seed(s, m, key), per_seed(p, m, key)
            seeds = sorted(set(xs) & set(ys))
            if not seeds:
                continue
            d = [ys[k] - xs[k] for k in seeds]
            n = len(d)
            mean = sum(d) / n

            def ms(v: list[float]) -> str:
                mu = sum(v) / len(v)
                sd = math.sqrt(sum((x - mu) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0
                return f"{mu:.3f} ± {sd:.3f}"

            if n > 1:
                sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
                h = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
                ci = f"{mean - h:+.3f} to {mean + h:+.3f}"
            else:
                ci = "one seed: none"
            print(f"| {m} | {label} | {ms([xs[k] for k in seeds])} | {ms([ys[k] for k in seeds])} "
                  f"| {mean:+.3f} | {ci} | {n} |")


if __name__ == "__main__":
    main()
