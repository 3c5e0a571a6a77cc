#!/usr/bin/env bash
# Issue 27 on the real data with the medmtl model: the pretrained joint model of
# docs/study-pretrained's budget (tf_efficientnet_lite0 from the installed package, stem and first
# stage frozen, 128 px, 8 epochs, batch 16, fixed weights), trained on the file labels (as-is) and
# with --view-labels forward (the corruption matrix and the trusted clips of docs/label-noise/),
# seeds 0-2; scored on the 10 held-out patients against the file labels and against the views
# judged by eye (docs/label-noise/heldout-judged-by-eye.csv; not clinical truth).
#
#   bash benchmarks/forward_correction_real.sh      # 6 runs, about 1.5 h of this 2-core CPU
set -euo pipefail
cd "$(dirname "$0")/.."
MEDMTL=${MEDMTL:-.venv/bin/medmtl}
SPLIT=runs/study/split
[[ -f ../shared/data/regurgitation/data.yaml ]] || { echo "forward_correction_real: ../shared/data not found; nothing to do" >&2; exit 0; }
[[ -f $SPLIT/data.yaml ]] || "$MEDMTL" split --data ../shared/data/regurgitation/data.yaml --out $SPLIT --val 0.2 --seed 0
COMMON=(--data $SPLIT/data.yaml --method fixed --backbone tf_efficientnet_lite0 --pretrained
        --freeze-stages 2 --epochs 8 --imgsz 128 --batch 16 --workers 0 --test-split grouped
        --test-fraction 0.2 --split-seed 0 --no-progress)
for s in 0 1 2; do
  [[ -f runs/fc/asis-s$s/metrics.json ]] || "$MEDMTL" train "${COMMON[@]}" --seed $s --out runs/fc/asis-s$s
  [[ -f runs/fc/forward-s$s/metrics.json ]] || "$MEDMTL" train "${COMMON[@]}" --seed $s \
    --view-labels forward --corruption docs/label-noise/corruption.json \
    --trusted docs/label-noise/trusted-by-eye.csv --out runs/fc/forward-s$s
done
.venv/bin/python benchmarks/score_judged.py docs/label-noise/heldout-judged-by-eye.csv --versus 3 \
  runs/fc/asis-s0 runs/fc/asis-s1 runs/fc/asis-s2 runs/fc/forward-s0 runs/fc/forward-s1 runs/fc/forward-s2
