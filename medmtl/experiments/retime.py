"""`medmtl report --retime` and the end of `compare`: re-time the finished runs' models (and
their compressed graphs) together in one process, interleaved, so the report's latencies compare
like with like (runs trained in parallel timed each other's noise)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from medmtl.fileio import atomic_write_text


def compressed_graphs(run: Path, threads: int) -> list[tuple[Path, Any]]:
    """(metrics.json, ONNX Runtime predictor) of each compressed graph of ``run`` whose
    `weights` file still exists."""
    from medmtl.inference.export import OnnxPredictor
    from medmtl.report.collect import COMPRESSED_DIR  # here: medmtl.report loads matplotlib

    out = []
    for f in sorted((run / COMPRESSED_DIR).glob("*/metrics.json")):
        weights = Path(str(json.loads(f.read_text()).get("weights") or ""))
        if weights.suffix == ".onnx" and weights.is_file():
            out.append((f, OnnxPredictor.from_file(weights, "cpu", threads=threads)))
    return out


def _write_efficiency(path: Path, values: dict[str, Any]) -> None:
    """Replace the end-to-end figures of metrics.json ``path`` (superseded as a whole) and set
    ``values`` in its `efficiency` block (atomic write)."""
    m = json.loads(path.read_text())
    eff = m.setdefault("efficiency", {})
    for key in [k for k in eff if k.startswith("latency_e2e")]:
        del eff[key]
    eff.update(values)
    atomic_write_text(path, json.dumps(m, indent=2))


def remeasure_latency(run_dirs: list[Path], console: Console | None = None,
                      threads: int | None = None, rounds: int = 3, ort: bool = True) -> None:
    """Re-time every finished run's best model in this one process, interleaved over `rounds`
    rounds, so the report's latencies compare like with like: runs trained in parallel timed
    each other's noise. Forward only (`ms_per_image`, the best median per model is kept) and end
    to end (decode + letterbox + forward + NMS: `latency_e2e_ms`, `latency_e2e_ort_ms` with
    ONNX Runtime; the calls of all rounds pooled). With ``ort``, each compressed graph of a run
    (`compressed_graphs`) is re-timed end to end in the same rounds. Updates the `efficiency`
    block of each metrics.json (atomic write)."""
    from contextlib import ExitStack

    import torch

    from medmtl.inference.efficiency import measure_latency
    from medmtl.inference.latency import E2ETimer
    from medmtl.models.checkpoint import model_from_checkpoint

    threads = threads or torch.get_num_threads()
    best: dict[Path, dict[str, float]] = {}
    e2e: dict[Path, dict[str, Any]] = {}
    graphs: dict[Path, Any] = {}  # compressed/<kind>/metrics.json -> its timer
    with ExitStack() as stack:
        models = {}
        for run in run_dirs:
            if (run / "weights" / "best.pt").exists():
                model, cfg, ck = model_from_checkpoint(run / "weights" / "best.pt", "cpu")
                timer = stack.enter_context(E2ETimer(model, cfg.imgsz, ck.get("names"),
                                                     ck.get("cls_names"), threads=threads,
                                                     ort=ort))
                models[run] = (model, cfg.imgsz, timer)
                for f, graph in compressed_graphs(run, threads) if ort else []:
                    graphs[f] = stack.enter_context(E2ETimer(None, cfg.imgsz, threads=threads,
                                                             predictors={"_ort": graph}))
        for _ in range(rounds):
            for run, (model, imgsz, timer) in models.items():
                lat = measure_latency(model, imgsz, batch=1, device="cpu", threads=threads,
                                      warmup=3, iters=10)
                if run not in best or lat["ms_per_image"] < best[run]["ms_per_image"]:
                    best[run] = lat
                timer.run(iters=10, warmup=2)
            for timer in graphs.values():
                timer.run(iters=10, warmup=2)
        e2e = {run: timer.results() for run, (_, _, timer) in models.items()}
        for f, timer in graphs.items():
            _write_efficiency(f, {**timer.results(), "latency_e2e_context": (
                f"re-timed after all runs, interleaved over {rounds} rounds with the float "
                "models, the calls of all rounds pooled")})
    for run, lat in best.items():
        no_ort = {} if ort else {"latency_e2e_ort_skipped": (
            "not measured by this re-timing; `medmtl report DIR --retime` measures it")}
        _write_efficiency(run / "metrics.json", {
            "ms_per_image": round(lat["ms_per_image"], 3),
            "images_per_s": round(lat["images_per_s"], 2), "latency_device": "cpu",
            "latency_threads": threads,
            "latency_context": f"re-timed after all runs, interleaved, best median of {rounds} "
                               "rounds",
            **e2e[run], **no_ort,
            "latency_e2e_context": f"re-timed after all runs, interleaved over {rounds} rounds, "
                                   "the calls of all rounds pooled"})
    if console is not None and best:
        skipped = {v for r in e2e.values() for k, v in r.items() if k.endswith("_ort_skipped")}
        console.print(f"re-timed {len(best)} models and {len(graphs)} compressed graphs on the "
                      f"CPU ({threads} threads, {rounds} interleaved rounds; forward only, and "
                      "end to end with PyTorch"
                      + ("; ONNX Runtime skipped: " + "; ".join(sorted(skipped)) if skipped
                         else " and ONNX Runtime" if ort else "") + ")")


__all__ = ["compressed_graphs", "remeasure_latency"]
