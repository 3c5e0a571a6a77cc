"""Read a compare directory: one run directory per method x seed (``DIR/runs/<method>-s<seed>/``).

Nothing here interprets numbers; it only loads and validates what the trainer wrote. A run is
*finished* only when its ``metrics.json`` exists; unfinished runs are returned too (``metrics`` is
None) so that the report lists them instead of dropping them silently.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medmtl.errors import InputError
from medmtl.yamlio import load_yaml

_RUN_NAME = re.compile(r"^(?P<method>.+)-s(?P<seed>\d+)$")

# metrics.json sections whose listed fields must be numbers (or null) when present.
_NUMERIC_FIELDS: dict[str, tuple[str, ...]] = {
    "detection": ("map50", "map50_95", "precision", "recall", "f1"),
    "classification": ("accuracy", "macro_f1", "accuracy_clip_majority_labels",
                       "clip_accuracy"),
    "val_loss": ("detect", "classify"),
    "efficiency": ("params", "gflops", "ms_per_image", "images_per_s", "imgsz", "weights_mb",
                   *(f"latency_e2e{rt}_{k}" for rt in ("", "_ort", "_cuda")
                     for k in ("ms", "p90_ms", "noise_ms"))),
    "training": ("seconds", "seconds_total", "epochs", "peak_mem_mb", "best_epoch", "seed"),
}


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    path: tuple[str, ...]  # location inside metrics.json
    higher_is_better: bool
    kind: str  # metric (0-1) | loss | weight | seconds | ms | mb | params | gflops | rate
    first: tuple[str, ...] | None = None  # read before `path` when present


METRICS: tuple[Metric, ...] = (
    Metric("map50", "mAP@0.5", ("detection", "map50"), True, "metric"),
    Metric("map50_95", "mAP@0.5:0.95", ("detection", "map50_95"), True, "metric"),
    Metric("precision", "precision", ("detection", "precision"), True, "metric"),
    Metric("recall", "recall", ("detection", "recall"), True, "metric"),
    Metric("f1", "F1", ("detection", "f1"), True, "metric"),
    Metric("accuracy", "view accuracy", ("classification", "accuracy"), True, "metric"),
    Metric("macro_f1", "view macro-F1", ("classification", "macro_f1"), True, "metric"),
    Metric("accuracy_clip_labels", "view accuracy vs clip-majority labels",
           ("classification", "accuracy_clip_majority_labels"), True, "metric"),
    Metric("clip_accuracy", "view accuracy per clip", ("classification", "clip_accuracy"), True,
           "metric"),
    # the loss on the scored split (test when held out; the key keeps its historical name)
    Metric("val_loss_detect", "loss (detect)", ("val_loss", "detect"), False, "loss"),
    Metric("val_loss_classify", "loss (classify)", ("val_loss", "classify"), False, "loss"),
    Metric("weight_detect", "final weight (detect)", ("training", "final_weights", "detect"),
           True, "weight"),
    Metric("weight_classify", "final weight (classify)",
           ("training", "final_weights", "classify"), True, "weight"),
    # a run that starts from other runs (staged, distill) costs their training time too
    Metric("train_seconds", "training time (s)", ("training", "seconds"), False, "seconds",
           first=("training", "seconds_total")),
    Metric("peak_mem_mb", "peak memory (MB)", ("training", "peak_mem_mb"), False, "mb"),
    Metric("params", "parameters", ("efficiency", "params"), False, "params"),
    Metric("gflops", "GFLOPs", ("efficiency", "gflops"), False, "gflops"),
    Metric("ms_per_image", "inference ms/image", ("efficiency", "ms_per_image"), False, "ms"),
    Metric("images_per_s", "images/s", ("efficiency", "images_per_s"), True, "rate"),
    Metric("weights_mb", "weights (MB)", ("efficiency", "weights_mb"), False, "mb"),
)
METRIC_BY_KEY = {m.key: m for m in METRICS}


def extract(metrics: dict[str, Any]) -> dict[str, float | None]:
    """The report's metrics from one metrics.json (None where absent)."""
    out: dict[str, float | None] = {}
    for m in METRICS:
        v: Any = None
        for path in (m.first, m.path):
            if v is None and path is not None:
                v = metrics
                for part in path:
                    v = v.get(part) if isinstance(v, dict) else None
        out[m.key] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
    return out


class ReportError(InputError):
    """A run file that cannot be read, or a folder that is no compare folder; the message names
    the file (the command line prints it in one line, exit status 2)."""


@dataclass
class Run:
    """One run directory, loaded."""

    method: str
    seed: int
    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float | None]] = field(default_factory=list)
    metrics: dict[str, Any] | None = None  # the scores the report uses (test when held out)
    pr_curves: dict[str, Any] | None = None
    split: str | None = None  # the split `metrics` come from: "test" or "val"
    val_metrics: dict[str, Any] | None = None  # metrics.json as written (val at the top level)

    @property
    def finished(self) -> bool:
        return self.metrics is not None

    @property
    def name(self) -> str:
        return f"{self.method}-s{self.seed}"

    @property
    def arch(self) -> str | None:
        model = self.config.get("model")
        if isinstance(model, dict) and model.get("arch") is not None:
            return str(model["arch"])
        if self.metrics:
            arch = (self.metrics.get("training") or {}).get("arch")
            return str(arch) if arch is not None else None
        return None

    def column(self, name: str) -> tuple[list[float], list[float]]:
        """(epochs, values) of one history column, skipping empty cells."""
        xs: list[float] = []
        ys: list[float] = []
        for i, row in enumerate(self.history):
            v = row.get(name)
            if v is None or not math.isfinite(v):
                continue
            ep = row.get("epoch")
            xs.append(float(ep) if ep is not None else float(i))
            ys.append(v)
        return xs, ys


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# history.csv columns that hold words, not numbers (left out of the rows read here): `stage`
# (frozen-trunk | joint | distill) of runs that start from other runs
TEXT_COLUMNS = frozenset({"stage"})


def read_history(path: Path) -> list[dict[str, float | None]]:
    """history.csv -> one dict per epoch; empty cells become None; `TEXT_COLUMNS` left out."""
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                return []
            if "epoch" not in reader.fieldnames:
                raise ReportError(f"{path}: malformed history.csv: no 'epoch' column "
                                  f"(columns: {', '.join(reader.fieldnames)})")
            rows: list[dict[str, float | None]] = []
            for line_no, raw in enumerate(reader, start=2):
                row: dict[str, float | None] = {}
                for key, cell in raw.items():
                    if key is None:
                        raise ReportError(f"{path}: malformed history.csv: line {line_no} has "
                                          "more cells than the header")
                    text = (cell or "").strip()
                    if key in TEXT_COLUMNS:
                        continue
                    if text == "":
                        row[key] = None
                        continue
                    try:
                        row[key] = float(text)
                    except ValueError:
                        raise ReportError(f"{path}: malformed history.csv: line {line_no}, column "
                                          f"{key!r}: {text!r} is not a number") from None
                rows.append(row)
            return rows
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        if isinstance(e, ReportError):
            raise
        raise ReportError(f"{path}: cannot read history.csv: {e}") from e


def read_metrics(path: Path) -> dict[str, Any]:
    """metrics.json, with the numeric fields the report uses checked to be numbers or null."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"{path}: malformed metrics.json: {e}") from e
    if not isinstance(data, dict):
        raise ReportError(f"{path}: malformed metrics.json: top level must be an object, "
                          f"got {type(data).__name__}")
    for section, keys in _NUMERIC_FIELDS.items():
        sub = data.get(section)
        if sub is None:
            continue
        if not isinstance(sub, dict):
            raise ReportError(f"{path}: malformed metrics.json: '{section}' must be an object "
                              f"or null, got {type(sub).__name__}")
        for key in keys:
            v = sub.get(key)
            if v is not None and not _is_number(v):
                raise ReportError(f"{path}: malformed metrics.json: '{section}.{key}' must be a "
                                  f"number, got {v!r}")
    weights = (data.get("training") or {}).get("final_weights")
    if weights is not None and not (isinstance(weights, dict)
                                    and all(_is_number(w) or w is None for w in weights.values())):
        raise ReportError(f"{path}: malformed metrics.json: 'training.final_weights' must map "
                          f"task -> number, got {weights!r}")
    conf = (data.get("classification") or {}).get("confusion")
    if conf is not None and not (isinstance(conf, list) and all(
            isinstance(r, list) and all(_is_number(c) for c in r) for r in conf)):
        raise ReportError(f"{path}: malformed metrics.json: 'classification.confusion' must be "
                          "a list of rows of numbers")
    return data


def _read_config(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = load_yaml(path, "config.yaml", ReportError)  # the guarded reader (limits)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ReportError(f"{path}: malformed config.yaml: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ReportError(f"{path}: malformed config.yaml: top level must be a mapping")
    return data


def _read_pr_curves(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"{path}: malformed pr_curves.json: {e}") from e
    if not (isinstance(data, dict) and isinstance(data.get("recall"), list)
            and isinstance(data.get("per_class"), dict)):
        raise ReportError(f"{path}: malformed pr_curves.json: expected "
                          "{'recall': [...], 'per_class': {name: [...]}}")
    return data


def load_run(path: str | Path) -> Run:
    """Load one run directory. Method and seed come from config.yaml, else from the folder name."""
    path = Path(path)
    config = _read_config(path / "config.yaml")
    match = _RUN_NAME.match(path.name)
    method = config.get("method") or (match.group("method") if match else path.name)
    seed_raw = config.get("seed", match.group("seed") if match else 0)
    try:
        seed = int(seed_raw)
    except (TypeError, ValueError):
        raise ReportError(f"{path / 'config.yaml'}: seed {seed_raw!r} is not an integer") from None
    hist_path = path / "history.csv"
    history = read_history(hist_path) if hist_path.exists() else []
    metrics_path = path / "metrics.json"
    raw = read_metrics(metrics_path) if metrics_path.exists() else None
    metrics, split = scored_view(raw) if raw is not None else (None, None)
    eval_dir = path / "eval" / ("test" if split == "test" else "")
    pr = _read_pr_curves(eval_dir / "pr_curves.json")
    return Run(method=str(method), seed=seed, path=path, config=config, history=history,
               metrics=metrics, pr_curves=pr, split=split, val_metrics=raw)


def scored_view(metrics: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The metrics a report scores a run by, and their split: the held-out `test` block when the
    run has one (its checkpoint was chosen on val), else the top-level (val) scores. Every
    quantity a verdict is drawn on comes from that block, the losses too (a test block without
    losses leaves them out rather than fall back on val, the split that chose the checkpoint).
    Other keys (efficiency, training) are the run's own either way."""
    test = metrics.get("test")
    if isinstance(test, dict) and (test.get("detection") or test.get("classification")):
        view = dict(metrics)
        for k in ("split", "images", "detection", "classification", "val_loss"):
            view[k] = test.get(k)
        return view, "test"
    return metrics, str(metrics.get("split") or "val")


_RUN_FILES = ("metrics.json", "config.yaml", "history.csv")


def runs_root(directory: str | Path) -> Path:
    """``DIR/runs`` when it exists, else DIR itself (a folder of run directories)."""
    directory = Path(directory)
    return directory / "runs" if (directory / "runs").is_dir() else directory


def _is_run_dir(p: Path) -> bool:
    return p.is_dir() and any((p / f).exists() for f in _RUN_FILES)


def check_compare_folder(directory: str | Path) -> None:
    """Refuse, in one line, what is no compare folder: a missing folder, and one run's own folder
    (its metrics.json / config.yaml at the top, no ``runs/``), which holds no runs to compare."""
    d = Path(directory)
    want = "medmtl report wants a compare folder (the --out of medmtl compare, holding runs/)"
    if not d.is_dir():
        raise ReportError(f"{d}: no such folder; {want}")
    if (d / "runs").is_dir() or not _is_run_dir(d):
        return
    held = ", ".join(f for f in _RUN_FILES if (d / f).exists())
    hint = f"; this run's compare folder is {d.parent.parent}" if d.parent.name == "runs" else ""
    raise ReportError(f"{d} is a single run's folder ({held}); {want}{hint}")


def collect_runs(directory: str | Path) -> list[Run]:
    """Every run directory under ``DIR/runs`` (finished or not), sorted by method then seed."""
    check_compare_folder(directory)
    root = runs_root(directory)
    runs = [load_run(p) for p in sorted(root.iterdir()) if _is_run_dir(p)]
    seen: dict[tuple[str, int], Path] = {}
    for r in runs:
        key = (r.method, r.seed)
        if key in seen:
            raise ReportError(f"{r.path}: method {r.method!r} seed {r.seed} also in {seen[key]}")
        seen[key] = r.path
    return sorted(runs, key=lambda r: (r.method, r.seed))


COMPRESSED_DIR = "compressed"


def compressed_runs(runs: Sequence[Run]) -> list[Run]:
    """Compressed variants of the finished runs, as runs of their own: each
    ``<run>/compressed/<kind>/metrics.json`` (written by ``medmtl val --weights
    <run>/weights/best.<kind>.onnx --split <the run's split> --out <run>/compressed/<kind>``)
    becomes a run of method ``<method>+<kind>``, same seed. A file scored on another split than
    the run's scores is left out (it would not be comparable)."""
    out: list[Run] = []
    for r in runs:
        if not r.finished or not (r.path / COMPRESSED_DIR).is_dir():
            continue
        for d in sorted((r.path / COMPRESSED_DIR).iterdir()):
            f = d / "metrics.json"
            if not f.is_file():
                continue
            m = read_metrics(f)
            if str(m.get("split")) != r.split:
                continue
            out.append(Run(method=f"{r.method}+{d.name}", seed=r.seed, path=d, config=r.config,
                           metrics=m, split=r.split, val_metrics=m))
    return out
