"""Cost of the report's paired bootstrap over test images on a compare folder: the seconds
build_summary takes with and without it, and the size of each run's exports.

    python benchmarks/report_bootstrap.py runs/compare [--map 200] [--view 2000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from medmtl.report.bootstrap import BootstrapSettings
from medmtl.report.collect import collect_runs
from medmtl.report.render import build_summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--map", type=int, default=200, help="resamples for mAP")
    ap.add_argument("--view", type=int, default=2000, help="resamples for the view metrics")
    ap.add_argument("--baseline", default=None)
    a = ap.parse_args()
    runs = collect_runs(a.folder)
    for r in runs:
        ev = r.path / "eval"
        if (ev / "predictions.json").exists():
            gt = json.loads((ev / "ground_truth.json").read_text())
            dets = json.loads((ev / "predictions.json").read_text())
            print(f"{r.name}: {len(gt['images'])} images, {len(gt['annotations'])} boxes, "
                  f"{len(dets)} detections")
    build_summary(runs, a.baseline, bootstrap=BootstrapSettings(0, 0))  # warm imports
    t0 = time.perf_counter()
    build_summary(runs, a.baseline, bootstrap=BootstrapSettings(0, 0))
    t1 = time.perf_counter()
    only_view = build_summary(runs, a.baseline, bootstrap=BootstrapSettings(0, a.view))
    t2 = time.perf_counter()
    full = build_summary(runs, a.baseline, bootstrap=BootstrapSettings(a.map, a.view))
    t3 = time.perf_counter()
    base = t1 - t0
    print(f"summary without bootstrap: {base:.2f} s")
    print(f"+ view metrics ({a.view} resamples): {t2 - t1 - base:.2f} s")
    print(f"+ mAP and view metrics ({a.map} / {a.view} resamples): {t3 - t2 - base:.2f} s")
    for summary in (only_view, full):
        for m, e in summary["methods"].items():
            for k, sig in e["significance"].items():
                b = sig.get("bootstrap")
                if b and summary is full:
                    print(f"  {m} {k}: " + (f"diff {b['diff']:+.4f}, 95% [{b['ci_low']:+.4f}, "
                                            f"{b['ci_high']:+.4f}]" if b["available"]
                                            else f"n/a: {b['reason']}"))


if __name__ == "__main__":
    main()
