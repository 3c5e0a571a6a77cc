"""The report's tuning section, from `<compare dir>/tune.json` (written by `medmtl tune`): the
search space, the tuned values and the search trace of every method."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

Block = tuple[Any, ...]


def load_tuning(directory: Path) -> dict[str, Any] | None:
    path = directory / "tune.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) and isinstance(data.get("methods"), dict) else None


def trace_plot(tuning: dict[str, Any], path: Path) -> Path:
    """Best val score so far against the trial number, one line per method (failed trials are
    skipped), with every trial's own score as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for method, r in tuning["methods"].items():
        done = [t for t in r["trials"] if t["state"] == "COMPLETE" and t["value"] is not None]
        xs = [t["number"] for t in done]
        ys = [t["value"] for t in done]
        best = [max(ys[: i + 1]) for i in range(len(ys))]
        (line,) = ax.step(xs, best, where="post", label=method)
        ax.plot(xs, ys, "o", ms=3, alpha=0.5, color=line.get_color())
    ax.set_xlabel("trial")
    ax.set_ylabel("val selection score (best so far)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _sampler_words(tuning: dict[str, Any]) -> str:
    """Which sampler drew the configurations, as tune.json records it (a budget within TPE's
    random start-up trials is a random search, and says so)."""
    recs = {m: r["sampler"] for m, r in tuning["methods"].items() if isinstance(r.get("sampler"),
                                                                              dict)}
    if not recs:  # a tune.json of an older medmtl
        return "Optuna's TPE sampler"
    k = max(int(s.get("n_startup_trials", 0)) for s in recs.values())
    return (f"Optuna's TPE sampler, whose first {k} trials are random draws ("
            + "; ".join(f"{m}: {s.get('text', s.get('name'))}" for m, s in recs.items()) + ")")


def tuning_blocks(directory: Path) -> list[Block]:
    tuning = load_tuning(directory)
    if tuning is None:
        return []
    n = tuning.get("trials_per_method")
    rows = []
    for method, r in tuning["methods"].items():
        done = [t for t in r["trials"] if t["state"] == "COMPLETE"]
        distinct = len({tuple(sorted(t["params"].items())) for t in done})
        failed = len(r["trials"]) - len(done)
        params = ", ".join(f"{k} = {v:.4g}" for k, v in r["best"]["params"].items())
        space = ", ".join(f"{k} in [{lo:.3g}, {hi:.3g}]{' (log)' if log else ''}"
                          for k, (lo, hi, log) in r["space"].items())
        rows.append([f"{method}@tuned", str(distinct), str(len(done)), str(failed),
                     f"{r['best']['value']:.4f}", params, space])
    plot = trace_plot(tuning, directory / "plots" / "tune_trace.png")
    return [("h", 2, "Tuning"),
            ("p", f"Every method had the same budget: {n} distinct configurations, each trained "
                  f"for the same length, searched by {_sampler_words(tuning)} on the val split "
                  "(objective: the val selection score of the trial's best checkpoint). A "
                  "configuration completed twice (a search resumed by an older medmtl) counts "
                  "once; a failed trial (e.g. killed) does not count. The `@tuned` rows of the "
                  "tables above are the best trial's configuration, re-trained over the seeds."),
            ("table", ["method", "configurations", "trials completed", "trials failed",
                       "best val score", "tuned values", "search space"], rows),
            ("img", "Search trace: best val score so far per trial (dots: each trial)",
             plot.relative_to(directory), plot)]


__all__ = ["load_tuning", "trace_plot", "tuning_blocks"]
