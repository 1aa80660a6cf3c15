#!/usr/bin/env bash
# skull_stripping: the next cross-validation chunk towards out-of-fold DSC >= 0.95 (issue 16),
# resumable: start it (again) with
#
#   nohup bash training/campaigns/skull_stripping_issue16.sh > runs/ss_issue16.log 2>&1 &
#
# from the repository root, with the zoo installed. Every step skips what is already done: a fold
# whose eval/metrics.csv exists, a final model whose member0.npz exists, a table that exists.
#
# Steps:
#   1. cost: benchmarks/skull_stripping_step_cost.py (one optimiser step of the 3D U-Net on a whole
#      160 x 160 x 92 window, fp32, and mixed_bfloat16 where the CPU has AVX512-BF16/AMX), printed
#      with the cost of the chunk (K fold models + the final model) before anything trains
#   2. K-fold CV grouped by person + the final model on all heads (zoo.training.crossval), every
#      model continuing from the same fold's model of FROM (--init-from) when FROM exists, else from
#      scratch; the bundled recipe (0.2.0: stripped twins) -> $OUT/{fold*,final}, metrics.csv, summary.json
#   3. already-stripped scans no model trained on, with the final model
#      (zoo.training.stripped_input_check) -> $OUT/stripped_check.csv
#   4. wmh_ensemble on raw clinical FLAIRs with each person's held-out fold mask against the given
#      brain mask (zoo.training.chained_mask_eval) -> $OUT/chain-eval
#
# Then (by hand, only when $OUT/summary.json beats the card's measured DSC): python -m
# zoo.training.release $OUT/final skull_stripping head, the card's weights record, version and
# measured table (README "Training").
#
# Settings (environment): OUT (runs/ss-cv800), FROM (runs/ss-cv400; absent = from scratch), DATA,
# K (5), EPOCHS x STEPS_PER_EPOCH (20 x 20 = 400 steps per model), PRECISION (auto|float32|
# mixed_bfloat16), FINAL_ONLY=1 (step 2 trains only the final model, with the folds' settings, and
# step 4 is skipped: the folds ran in an earlier session, maybe on another machine), PY,
# DRY_RUN=1 prints the commands.
set -euo pipefail
OUT=${OUT:-runs/ss-cv800}
FROM=${FROM:-runs/ss-cv400}
DATA=${DATA:-../shared/data/heads}
K=${K:-5}
EPOCHS=${EPOCHS:-20}
STEPS_PER_EPOCH=${STEPS_PER_EPOCH:-20}
PRECISION=${PRECISION:-auto}
PY=${PY:-python}
DRY_RUN=${DRY_RUN:-0}
FINAL_ONLY=${FINAL_ONLY:-0}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
mkdir -p "$OUT"
out_abs="$(cd "$OUT" && pwd)"

say() { echo "== $(date -u +%FT%TZ) $*"; }
run() { echo "+ $*"; [ "$DRY_RUN" = 1 ] || "$@"; }

# 1. cost, printed before anything trains; the precision
source "$(dirname "$0")/precision.sh"
precision_candidates "$PRECISION"
cost="$OUT/cost"
if [ ! -f "$cost.txt" ]; then
  say "cost: $K fold models + the final model, $((EPOCHS * STEPS_PER_EPOCH)) steps each, batch 1"
  if [ "$DRY_RUN" = 1 ]; then
    run $PY benchmarks/skull_stripping_step_cost.py --folds "$K" --steps-per-model $((EPOCHS * STEPS_PER_EPOCH)) "${candidates[@]}"
  else
    (cd benchmarks && $PY skull_stripping_step_cost.py --folds "$K" --steps-per-model $((EPOCHS * STEPS_PER_EPOCH)) \
        "${candidates[@]}" --json "$out_abs/cost.json") | tee "$cost.txt.tmp"
    mv "$cost.txt.tmp" "$cost.txt"
  fi
else
  cat "$cost.txt"
fi
PRECISION=$(chosen_precision "$PRECISION" "$cost.json")
say "precision: $PRECISION"

# 2. the cross-validation chunk and the final model
cv=(--data "$DATA" --k "$K" --group subject --group-by contrast --out "$OUT" --batch-size 1
    --set "epochs=$EPOCHS" --set "data.steps_per_epoch=$STEPS_PER_EPOCH")
if [ "$FINAL_ONLY" = 1 ]; then cv+=(--final-only); else cv+=(--final); fi
[ "$PRECISION" != float32 ] && cv+=(--mixed-precision "$PRECISION")
if [ -d "$FROM" ]; then cv+=(--init-from "$FROM"); say "every model continues from $FROM"
else say "$FROM not found: every model starts from scratch"; fi
if [ "$FINAL_ONLY" = 1 ]; then say "final model only -> $OUT/final"; else say "cross-validation chunk -> $OUT"; fi
run $PY -m zoo.training.crossval skull_stripping "${cv[@]}"

# 3. already-stripped scans, final model
if [ ! -f "$OUT/stripped_check.csv" ]; then
  say "already-stripped scans (final model)"
  run $PY -m zoo.training.stripped_input_check --weights "$OUT/final/member0.npz" --csv "$OUT/stripped_check.csv"
fi

# 4. the chain into wmh_ensemble, each person's held-out fold model
if [ "$FINAL_ONLY" = 1 ]; then
  say "chain check skipped (FINAL_ONLY: it needs the fold models)"
elif [ ! -f "$OUT/chain-eval/summary.json" ]; then
  say "wmh_ensemble with the held-out fold masks on raw clinical FLAIRs"
  run $PY -m zoo.training.chained_mask_eval --data "$(dirname "$DATA")/wmh_ms_clinical" --variant flair \
      --cv "$OUT" --out "$OUT/chain-eval"
fi
say "done: $OUT/summary.json, $OUT/stripped_check.csv, $OUT/chain-eval/summary.json"
