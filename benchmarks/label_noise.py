"""Issue #27's synthetic benchmark: systematic, clip-level, class-conditional view-label noise
(``rate`` of the A4C clips labelled PLAX, whole clips, across patients, plus 3 % of single
frames flipped), and three finders side by side: today's (`rank_views`: confident learning +
clip consistency, per clip), the clip ranking with cleanlab's confident joint (no trusted
clip), and the same with a corruption matrix from trusted clips (gold loss correction).
Recall and precision of the planted clips in the top k, k = the number planted (trusted
clips left out of every list), over several simulation seeds.

    .venv/bin/python benchmarks/label_noise.py                 # 10 seeds, rate 0.7, 5 % trusted
    .venv/bin/python benchmarks/label_noise.py --rate 0.5 --trusted 0.10 --seeds 5

About 2 s per seed on a 2-core CPU. See docs/label-noise.md.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from medmtl.labelissues.simulate import run_benchmark


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--rate", type=float, default=0.7, help="share of A4C clips labelled PLAX")
    ap.add_argument("--trusted", type=float, default=0.05, help="share of clips trusted")
    ap.add_argument("--json", default=None, help="also write every seed's result here")
    a = ap.parse_args()
    res = [run_benchmark(seed=s, trusted_fraction=a.trusted, rate=a.rate)
           for s in range(a.seeds)]
    print(f"systematic noise: {a.rate:.0%} of A4C clips labelled PLAX (whole clips), 3 % of "
          f"frames flipped; {a.trusted:.0%} of clips trusted; {a.seeds} seeds")
    print(f"clips per seed {np.mean([r['clips'] for r in res]):.0f}, planted "
          f"{np.mean([r['planted'] for r in res]):.1f}, trusted "
          f"{np.mean([r['trusted_clips'] for r in res]):.1f}; out-of-fold accuracy against the "
          f"labels {np.mean([r['oof_accuracy_vs_labels'] for r in res]):.3f}, against the truth "
          f"{np.mean([r['oof_accuracy_vs_truth'] for r in res]):.3f}")
    print()
    print("| finder | unit | recall@k mean | min | max | precision@k mean |")
    print("|---|---|---|---|---|---|")
    for key, label, unit in (("today_frames", "today (rank_views)", "frame"),
                             ("today", "today (rank_views), mean score per clip", "clip"),
                             ("confident_joint", "clip ranking, confident joint (no trusted)",
                              "clip"),
                             ("trusted", f"clip ranking, {a.trusted:.0%} trusted clips (GLC)",
                              "clip")):
        rec = np.array([r[key]["recall"] for r in res])
        prec = np.array([r[key]["precision"] for r in res])
        print(f"| {label} | {unit} | {rec.mean():.3f} | {rec.min():.3f} | {rec.max():.3f} | "
              f"{prec.mean():.3f} |")
    est = np.array([r["estimate"]["matrix"][0] for r in res])
    true = np.array([r["true_matrix"][0] for r in res])
    cj = np.array([r["confident_joint_matrix"][0] for r in res])
    print()
    print(f"A4C row of C (P(label | true A4C): A4C, PLAX, PSAX), mean over seeds: planted "
          f"{np.round(true.mean(0), 3).tolist()}, trusted estimate "
          f"{np.round(est.mean(0), 3).tolist()}, confident joint "
          f"{np.round(cj.mean(0), 3).tolist()}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
