"""The fuzz suite of issue #14: a few hundred seeded data sets with mutated label, image and YAML
files (medmtl/data/fuzz.py), each audited. Every case must end clean, in counted problems naming
file and line, or in one raised error naming a file: 0 tracebacks, 0 silent drops.
benchmarks/fuzz.py runs the heavier version (more cases and seeds)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from medmtl.data import load_data_yaml, scan_split
from medmtl.data.fuzz import base_case, run_fuzz, silent_drops, summary_line

CASES, SEED = 300, 14


def test_fuzz_cases_end_in_counted_problems_or_one_named_error(
        tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    t0 = time.perf_counter()
    totals = run_fuzz(CASES, SEED, tmp_path)
    seconds = time.perf_counter() - t0
    # printed at the end of the run by conftest.py (also under pytest-xdist)
    record_property("fuzz_totals", f"{summary_line(totals)} in {seconds:.1f} s")
    assert totals["failures"] == [], totals["failures"]
    assert (totals["tracebacks"], totals["silent_drops"], totals["unnamed_errors"]) == (0, 0, 0)
    assert totals["cases"] == CASES == (totals["clean"] + totals["with_problems"]
                                        + totals["raised"])
    # the generator reaches every outcome, and most cases are broken somehow
    assert totals["raised"] >= 10 and totals["cases_with_warnings"] >= 50
    assert totals["cases_with_errors"] >= CASES // 2 and totals["clean"] < CASES // 4
    assert {"yaml alias_bomb", "image truncate_eoi", "discovery dup_stem",
            "label many"} <= set(totals["mutations"])


def test_the_checker_sees_a_silent_drop(tmp_path: Path) -> None:
    """The contract check is not vacuous: a record or a box that vanishes without a problem is
    reported."""
    import random

    case = base_case(tmp_path / "c", random.Random(3))
    spec = load_data_yaml(case.yaml)
    idx = [scan_split(spec, s) for s in spec.splits]
    sources = list(spec.splits.values())
    assert silent_drops(case.root, idx, sources) == []
    gone = idx[0].records.pop(0)  # an image dropped without a word
    assert silent_drops(case.root, idx, sources) == [str(gone.path), str(gone.label_path)]
    idx[0].records.insert(0, gone)
    gone.boxes = gone.boxes[1:]  # a label line dropped without a word
    (msg,) = silent_drops(case.root, idx, sources)
    assert msg.startswith(f"{gone.label_path}: ") and "used" in msg
