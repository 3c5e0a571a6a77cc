"""The heavier fuzz run of issue #14 (tests/test_fuzz.py runs 300 cases of one seed): many seeded
cases of mutated label, image and YAML files through `medmtl audit`'s code, and the totals.

    python benchmarks/fuzz.py --cases 2000 --seeds 0,1,2 [--keep-failures DIR] [--json out.json]

Exit status 1 when any case ends in a traceback, a silent drop or an error that names no file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from medmtl.data.fuzz import run_fuzz, summary_line


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=2000, help="cases per seed")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--keep-failures", type=Path, default=None,
                    help="folder to keep the failing cases in (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=None, help="write the totals here")
    args = ap.parse_args()
    results = []
    bad = 0
    for seed in (int(s) for s in args.seeds.split(",") if s.strip()):
        with tempfile.TemporaryDirectory() as tmp:
            work = args.keep_failures / f"seed{seed}" if args.keep_failures else Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            t = run_fuzz(args.cases, seed, work)
            t["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"{summary_line(t)} in {t['seconds']} s", flush=True)
        for f in t["failures"]:
            print(f"  {f['status']}: {f['case']} {f['mutations']}: {f['detail']}")
        bad += t["tracebacks"] + t["silent_drops"] + t["unnamed_errors"]
        results.append(t)
    total = {k: sum(r[k] for r in results) for k in ("cases", "clean", "raised", "warnings",
                                                     "errors", "cases_with_warnings",
                                                     "cases_with_errors", "tracebacks",
                                                     "silent_drops", "unnamed_errors")}
    print("total: " + ", ".join(f"{k} {v}" for k, v in total.items()))
    if args.json:
        args.json.write_text(json.dumps({"total": total, "runs": results}, indent=2))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
