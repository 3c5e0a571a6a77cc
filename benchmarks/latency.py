"""Inference latency of the shared and dual architectures per size: PyTorch CPU, ONNX Runtime CPU,
and CUDA (PyTorch, and ONNX Runtime when onnxruntime-gpu is installed) where available.

    python benchmarks/latency.py --sizes n            # ~2 minutes on a 2-core CPU
    python benchmarks/latency.py --sizes n,s,m --out docs/latency.md

Random-initialised models (latency does not depend on the weights), fp32, input (B, 3, S, S).
"ms/img" is the median wall-clock time of one forward pass at batch 1; "img/s" is the throughput
at batch ``--batch``. PyTorch timings are `medmtl.inference.efficiency.measure_latency` (model
outputs, before box decoding); the ONNX graph also decodes boxes (cheap); neither includes NMS,
letterboxing or image decoding. The "e2e" columns do (`medmtl.inference.latency.measure_e2e`,
the figures the report's Pareto front uses): read + decode a 430x320 JPEG, letterbox, forward,
box decoding, NMS at ``--conf`` (0.25, as `medmtl predict`), boxes back to original pixels,
view softmax; batch 1, median of
``--iters`` calls with the noise band (half the interquartile range) after ``--warmup``. "dets"
is the number of detections the random-init model leaves after NMS on that frame (NMS time
depends on it). Prints a Markdown table with the machine, its load average and the date.

Run it on an otherwise idle machine: when another process holds a core, PyTorch's OpenMP threads
wait on each other and batch-1 latencies grow tenfold or more; ``--threads 1`` avoids that.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    import medmtl  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medmtl.config import ModelConfig  # noqa: E402
from medmtl.inference.efficiency import measure_latency  # noqa: E402
from medmtl.inference.latency import E2ETimer  # noqa: E402
from medmtl.models import build_model, model_info  # noqa: E402

NAMES, VIEWS = ["AR", "MR", "PR", "TR"], ["A4C", "PLAX", "PSAX"]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ort_latency(path: Path, imgsz: int, batch: int, warmup: int, iters: int,
                provider: str = "CPUExecutionProvider", threads: int | None = None) -> dict[str, float]:
    """Median ms per batch of an ONNX Runtime session, same protocol as `measure_latency`."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=[provider])
    x = np.random.default_rng(0).random((batch, 3, imgsz, imgsz), dtype=np.float32)
    for _ in range(warmup):
        sess.run(None, {"images": x})
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        sess.run(None, {"images": x})
        times.append(time.perf_counter() - t)
    med = sorted(times)[len(times) // 2]
    return {"ms_per_image": 1000 * med / batch, "images_per_s": batch / med}


def bench_one(size: str, arch: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, size=size)).eval()
    info = model_info(model, args.imgsz)
    row: dict[str, Any] = {"size": size, "arch": arch, "params (M)": info["params"] / 1e6,
                           "GFLOPs": info["gflops"]}
    s, b, w, n, nb = args.imgsz, args.batch, args.warmup, args.iters, args.batch_iters
    row["torch CPU ms/img"] = measure_latency(model, s, 1, "cpu", w, n, args.threads)["ms_per_image"]
    row["torch CPU img/s"] = measure_latency(model, s, b, "cpu", 1, nb, args.threads)["images_per_s"]
    if not args.no_onnx:
        import onnxruntime as ort

        from medmtl.inference.export import export_onnx

        path = tmp / f"{arch}_{size}.onnx"
        export_onnx(model, path, s, NAMES, VIEWS, dynamic=True, verify=False)
        row["ORT CPU ms/img"] = ort_latency(path, s, 1, w, n, threads=args.threads)["ms_per_image"]
        row["ORT CPU img/s"] = ort_latency(path, s, b, 1, nb, threads=args.threads)["images_per_s"]
        if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
            row["ORT CUDA ms/img"] = ort_latency(path, s, 1, w, n * 5, "CUDAExecutionProvider")[
                "ms_per_image"]
            row["ORT CUDA img/s"] = ort_latency(path, s, b, w, n, "CUDAExecutionProvider")[
                "images_per_s"]
    if torch.cuda.is_available() and not args.no_cuda:
        row["torch CUDA ms/img"] = measure_latency(model, s, 1, "cuda", w, n * 5)["ms_per_image"]
        row["torch CUDA img/s"] = measure_latency(model, s, b, "cuda", w, n)["images_per_s"]
    if not args.no_e2e:
        row.update(e2e_columns(model, s, args))
    return row


def e2e_columns(model: torch.nn.Module, imgsz: int, args: argparse.Namespace) -> dict[str, Any]:
    cuda = torch.cuda.is_available() and not args.no_cuda
    with E2ETimer(model, imgsz, NAMES, VIEWS, threads=args.threads, ort=not args.no_onnx,
                  cuda=cuda, conf=args.conf) as timer:
        timer.run(args.iters, args.warmup)
        res = timer.results()
        dets = len(timer.predictors[""].predict(timer.image, **timer.kw).detections)
    cols: dict[str, Any] = {"dets": str(dets)}
    for key, name in (("", "torch CPU"), ("_ort", "ORT CPU"), ("_cuda", "torch CUDA")):
        if f"latency_e2e{key}_ms" in res:
            cols[f"{name} e2e ms/img"] = res[f"latency_e2e{key}_ms"]
            cols[f"{name} e2e noise ms"] = res[f"latency_e2e{key}_noise_ms"]
        elif f"latency_e2e{key}_skipped" in res:
            print(f"{name} e2e skipped: {res[f'latency_e2e{key}_skipped']}", file=sys.stderr)
    return cols


def machine_line(threads: int | None) -> str:
    th = f"threads {threads} (torch and ORT)" if threads else \
        f"torch threads {torch.get_num_threads()}, ORT default threads"
    load = ", load average {:.1f} / {:.1f} / {:.1f} (1/5/15 min)".format(*os.getloadavg()) \
        if hasattr(os, "getloadavg") else ""
    parts = [f"CPU: {cpu_name()}, {os.cpu_count()} logical cores{load}, {th}",
             f"torch {torch.__version__}"]
    try:
        import onnxruntime as ort

        parts.append(f"onnxruntime {ort.__version__}")
    except ImportError:
        parts.append("onnxruntime not installed")
    if torch.cuda.is_available():
        parts.append(f"GPU: {torch.cuda.get_device_name(0)}")
    parts.append(f"Python {platform.python_version()}")
    return "; ".join(parts)


def render(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    fmt = {"params (M)": "{:.2f}", "GFLOPs": "{:.2f}", "torch CPU e2e noise ms": "{:.2f}",
           "ORT CPU e2e noise ms": "{:.2f}", "torch CUDA e2e noise ms": "{:.2f}"}
    lines = [f"Inference latency, imgsz {args.imgsz}, fp32; ms/img at batch 1 (median of "
             f"{args.iters}), img/s at batch {args.batch} (median of {args.batch_iters}); "
             + ("" if args.no_e2e else f"e2e NMS conf {args.conf}; ")
             + f"{dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}", "",
             machine_line(args.threads), "",
             "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append("-" if v is None else v if isinstance(v, str) else
                         fmt.get(c, "{:.1f}").format(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="n,s,m", help="comma-separated sizes (n, s, m)")
    ap.add_argument("--archs", default="shared,dual", help="comma-separated archs")
    ap.add_argument("--imgsz", type=int, default=416)
    ap.add_argument("--batch", type=int, default=32, help="batch for the throughput column")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10, help="timed runs at batch 1")
    ap.add_argument("--batch-iters", type=int, default=2, help="timed runs at --batch")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime")
    ap.add_argument("--no-cuda", action="store_true", help="skip CUDA even when available")
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end columns")
    ap.add_argument("--conf", type=float, default=0.25, help="e2e: NMS score threshold")
    ap.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    args = ap.parse_args(argv)
    torch.set_flush_denormal(True)  # as the trainer does on the CPU
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
            for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
                t = time.perf_counter()
                rows.append(bench_one(size, arch, args, Path(tmp)))
                print(f"{size}/{arch} done in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    table = render(rows, args)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
