"""Compare runs: tables, paired tests, Δm, recommendations and plots (md + html + json + csv).

Typical use::

    from medmtl.report import write_report
    paths = write_report("runs/compare")   # reads runs/compare/runs/<method>-s<seed>/
"""

from medmtl.report.collect import ReportError, Run, collect_runs, load_run
from medmtl.report.render import build_summary, write_report
from medmtl.report.stats import (
    aggregate,
    compare,
    delta_m,
    holm,
    paired_ttest,
    recommend,
)

__all__ = [
    "ReportError",
    "Run",
    "aggregate",
    "build_summary",
    "collect_runs",
    "compare",
    "delta_m",
    "holm",
    "load_run",
    "paired_ttest",
    "recommend",
    "write_report",
]
