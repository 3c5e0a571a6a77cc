"""Compare runs: tables, paired tests, Δm, recommendations and plots (md + html + json + csv).

Typical use::

    from medmtl.report import write_report
    paths = write_report("runs/compare")   # reads runs/compare/runs/<method>-s<seed>/
"""

from medmtl.report.collect import ReportError, Run, collect_runs, load_run
from medmtl.report.render import build_summary, write_report
from medmtl.report.stats import (
    aggregate,
    betainc,
    compare,
    delta_m,
    paired_ttest,
    recommend,
    t_cdf,
    t_two_sided_p,
)

__all__ = [
    "ReportError",
    "Run",
    "aggregate",
    "betainc",
    "build_summary",
    "collect_runs",
    "compare",
    "delta_m",
    "load_run",
    "paired_ttest",
    "recommend",
    "t_cdf",
    "t_two_sided_p",
    "write_report",
]
