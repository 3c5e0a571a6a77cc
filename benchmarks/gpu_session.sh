#!/usr/bin/env bash
# The GPU figures of issue 7 in one go, for a session that is lent a CUDA machine.
#
#   1. step throughput per architecture x balancer (GradNorm's overhead over fixed, dual vs shared)
#   2. the target run: joint `shared` (fixed weights), size n, 416 px, all 1042 training images,
#      100 epochs with validation every epoch; wall-clock seconds, and its metrics.json
#
# Usage (from the repo root, the data copied into .data/ (git-ignored), named in the device tool's carry):
#   DATA=.data/regurgitation/data.yaml OUT=/tmp/out bash benchmarks/gpu_session.sh
# A dry run of the same commands on a CPU, small:
#   DEVICE=cpu EPOCHS=1 IMGSZ=64 BATCH=8 STEP_IMGSZ=64 STEP_BATCH=4 DATA=... OUT=/tmp/o bash benchmarks/gpu_session.sh
# The device image (2026-11) has torch, timm, typer, rich, opencv and matplotlib but not pydantic
# (+ pydantic-core, annotated-types, typing-inspection) nor faster-coco-eval: those travel as wheels
# in .whl/ (git-ignored), fetched here with
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
#     faster-coco-eval==1.8.0
# and on the device, with carry [".data", ".whl"]:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site && \
#     DATA=.data/regurgitation/data.yaml OUT=$OUT bash benchmarks/gpu_session.sh
set -euo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # medmtl from this checkout, uninstalled
DATA=${DATA:?set DATA to the dataset YAML}
OUT=${OUT:?set OUT to an output folder}
DEVICE=${DEVICE:-cuda}
EPOCHS=${EPOCHS:-100}
IMGSZ=${IMGSZ:-416}
BATCH=${BATCH:-64}
WORKERS=${WORKERS:-12}
STEP_IMGSZ=${STEP_IMGSZ:-416}
STEP_BATCH=${STEP_BATCH:-64}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

{ date -u; "$PY" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__,
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
} | tee "$OUT/machine.txt"

"$PY" benchmarks/train_speed.py --device "$DEVICE" --sizes n --imgsz "$STEP_IMGSZ" \
  --batch "$STEP_BATCH" --steps 20 --warmup 5 --archs shared,dual,split2 \
  --balancers fixed,gradnorm,pcgrad | tee "$OUT/train_speed.md"

start=$(date +%s.%N)
"$PY" -m medmtl train --method fixed --data "$DATA" --epochs "$EPOCHS" --imgsz "$IMGSZ" --size n \
  --batch "$BATCH" --workers "$WORKERS" --device "$DEVICE" --out "$OUT/fixed" --no-progress \
  2>&1 | tail -n 5
end=$(date +%s.%N)
"$PY" - "$start" "$end" "$OUT" <<'EOF' | tee "$OUT/target.md"
import json, sys
start, end, out = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
m = json.load(open(f"{out}/fixed/metrics.json"))
t = m["training"]
print(f"wall clock, process start to metrics.json: {end - start:.1f} s "
      f"(training epochs without validation: {t['seconds']:.1f} s over {t['epochs']} epochs, "
      f"peak {t['peak_mem_mb']:.0f} MB, device {t['device']})")
d, c = m.get("detection") or {}, m.get("classification") or {}
print(f"val mAP@0.5 {d.get('map50')}, mAP@0.5:0.95 {d.get('map50_95')}, "
      f"view accuracy {c.get('accuracy')}")
EOF
cp "$OUT/fixed/metrics.json" "$OUT/metrics_fixed.json"
cp "$OUT/fixed/history.csv" "$OUT/history_fixed.csv"
