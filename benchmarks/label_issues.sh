#!/usr/bin/env bash
# `medmtl audit --label-issues` on the real data (issue #17): the audit with its clip-consistency
# block, then 5 patient-grouped folds of short joint runs (views + boxes) over train+valid, whose
# out-of-fold predictions cleanlab ranks; writes label_issues.csv, review.html,
# label_issues.json and audit.json under $OUT and prints the figures.
#
#   bash benchmarks/label_issues.sh                  # 5 folds x 3 epochs, 128 px, size n, joint
#   EPOCHS=1 IMGSZ=64 OUT=/tmp/li bash benchmarks/label_issues.sh   # a quick dry run
#
# Sized for ~15 min on 2 busy CPU cores. Resumable: finished folds under $OUT/folds are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/regurgitation/data.yaml}
OUT=${OUT:-runs/label_issues}
MEDMTL=${MEDMTL:-.venv/bin/medmtl}
PY=${PY:-.venv/bin/python}
FOLDS=${FOLDS:-5} EPOCHS=${EPOCHS:-3} IMGSZ=${IMGSZ:-128} TASK=${TASK:-joint}
WORKERS=${WORKERS:-1}
if [[ ! -f "$DATA" ]]; then
  echo "label_issues: $DATA not found (the real data lives in ../shared/data); nothing to do" >&2
  exit 0
fi
mkdir -p "$OUT"
start=$(date +%s)
"$MEDMTL" audit --data "$DATA" --json "$OUT/audit.json" --label-issues --out "$OUT" \
  --folds "$FOLDS" --epochs "$EPOCHS" --imgsz "$IMGSZ" --task "$TASK" --size n --batch 16 \
  --workers "$WORKERS" --device cpu | tee "$OUT/audit.txt"
echo "label_issues: $(( $(date +%s) - start )) s"
OUT="$OUT" "$PY" - <<'EOF'
import csv, json, os
out = os.environ["OUT"]
a = json.load(open(f"{out}/audit.json"))["consistency"]
s = json.load(open(f"{out}/label_issues.json"))
rows = list(csv.DictReader(open(f"{out}/label_issues.csv")))
mixed = {m["clip"] for m in a["mixed"]}
v = [r for r in rows if r["field"] == "view"]
flag = [r for r in v if r["issue"] == "1"]
print(f"mixed clips {a['mixed_clips']} of {a['clips']} ({a['frames_in_mixed_clips']} of "
      f"{a['frames_with_view']} frames); leave-one-frame-out agreement "
      f"{a['loo']['agreement']:.3f}")
vs = s["views"]
print(f"views: out-of-fold accuracy {vs['out_of_sample_accuracy']:.3f}; flagged {vs['issues']} "
      f"(model {vs['model_issues']}, clip {vs['clip_issues']}, both {vs['both']}); "
      f"{sum(r['clip'] in mixed for r in flag)} of the flagged are in mixed clips; "
      f"suggestions by given view: {vs['issues_by_given']}")
top = v[:50]
print(f"top 50 view rows: {sum(r['clip'] in mixed for r in top)} in mixed clips, "
      f"{sum(r['suggested'] != r['given'] for r in top)} with a different suggestion")
b = s["boxes"]
print("boxes:", {k: b[k] for k in b if k != "notes"})
print(f"review page: {s['review_rows']} rows, {os.path.getsize(s['review']) / 1e6:.1f} MB")
EOF
