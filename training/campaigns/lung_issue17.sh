#!/usr/bin/env bash
# lung_nodule trained at the paper's input frame with a held-out estimate (issue 17), resumable:
# start it (again) with
#
#   nohup bash training/campaigns/lung_issue17.sh > runs/lung_issue17.log 2>&1 &
#
# from the repository root, with the zoo installed (python -m zoo.cli ...; or set ZOO="zoo").
# Every step skips what is already done (its run_record.json / summary.json / file), and an
# interrupted phase resumes from its last epoch (BackupAndRestore in the phase folder), so killing
# and restarting loses at most one epoch.
#
# Steps:
#   1. split: 20% of the lidc_voi patients held out, stratified by has-a-malignant-nodule, seed 42
#      (python -m zoo.training.lung_holdout) -> $OUT/holdout/manifest.json (+ _nodules.csv, _summary.json)
#   2. cost: benchmarks/lung_phase_cost.py at BATCH for the phases to run, projected for an epoch of
#      the training part and of all patients; precision: float32, or mixed_bfloat16 when the CPU has
#      AVX512-BF16/AMX and it measures faster for phase 1 (PRECISION=float32|mixed_bfloat16 forces one)
#   3. phase 1 (44x46x31, the recipe's 20 epochs, one-cycle, oversampling, augmentation) on the
#      training part, the validation part held out -> $OUT/holdout/run/phase1
#   4. zoo evaluate on the validation part (nodule and patient level, bootstrap 95% intervals, ROC PNG)
#      -> $OUT/holdout/eval_phase1/summary.json
#   5. phase 1 on all patients, same epochs (the model to ship) -> $OUT/final/run/phase1
#   6. release (float16 files, sha256, the card records with trained_options = the frame)
#      -> $OUT/release/lung_nodule/default/member0.npz and $OUT/release/card_records.txt, and the
#      phase-1 model of the training part as variant holdout (the weights of the card's validation
#      figures, so anyone can rerun them) -> $OUT/release/lung_nodule/holdout/member0.npz
#   PHASE2=1 adds: 7. phases 2a + 2b (88x91x62) on the training part, each evaluated on the validation
#   part; 8. on all patients; 9. release -> $OUT/release_phase2/
#
# Then (by hand): copy the better phase's release into weights/lung_nodule/{default,holdout}/, put its card
# record (with trained_options) in cards/lung_nodule.yaml, set the card's pad_shape/downsample defaults
# to that frame, bump the version and add the validation figures of $OUT/holdout/eval_*/summary.json
# under metrics.measured (split_type validation) with the commands.
#
# Settings (environment): OUT, DATA, BATCH (16: the batch of the project's CPU runs and the card's
# cross-validation; 4 is 1.7x cheaper per nodule on the 2-core CPU but normalises over 4 nodules),
# EPOCHS (empty = the recipe's per phase; a number overrides every phase, e.g. for a smoke run),
# STEPS_PER_EPOCH (empty = one pass), PHASE2 (0/1), PRECISION (auto|float32|mixed_bfloat16),
# COST_STEPS (timed steps per phase, 2), COST=0 skips the measurement, DRY_RUN=1 prints the commands.
set -euo pipefail
OUT=${OUT:-runs/lung_issue17}
DATA=${DATA:-../shared/data/lidc_voi}
BATCH=${BATCH:-16}
EPOCHS=${EPOCHS:-}
STEPS_PER_EPOCH=${STEPS_PER_EPOCH:-}
PHASE2=${PHASE2:-0}
PRECISION=${PRECISION:-auto}
COST=${COST:-1}
COST_STEPS=${COST_STEPS:-2}
DRY_RUN=${DRY_RUN:-0}
ZOO=${ZOO:-python -m zoo.cli}
PY=${PY:-python}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
mkdir -p "$OUT"
manifest="$OUT/holdout/manifest.json"

say() { echo "== $(date -u +%FT%TZ) $*"; }
run() { echo "+ $*"; [ "$DRY_RUN" = 1 ] || "$@"; }

# 1. the hold-out split
if [ ! -f "$manifest" ]; then
  say "split: 20% of the patients held out"
  run $PY -m zoo.training.lung_holdout --data "$DATA" --out "$manifest"
fi

# nodules seen per epoch (labelled + malignant once more, spec section 5) of a manifest part, or all
epoch_nodules() {  # $1 part (train | all)
  if [ "$DRY_RUN" = 1 ] && [ ! -f "${manifest%.json}_summary.json" ]; then echo 0; return; fi
  $PY - "${manifest%.json}_summary.json" "$1" <<'EOF'
import json, sys
parts = json.load(open(sys.argv[1]))["parts"]
use = parts.values() if sys.argv[2] == "all" else [parts[sys.argv[2]]]
print(sum(p["nodules_labelled"] + p["nodules_malignant"] for p in use))
EOF
}
n_train=$(epoch_nodules train)
n_all=$(epoch_nodules all)

# 2. cost of each phase, printed before anything trains; the precision
phases=phase1; [ "$PHASE2" = 1 ] && phases=phase1,phase2a,phase2b
cost="$OUT/cost_${phases//,/_}"  # measured again when PHASE2 adds phases
source "$(dirname "$0")/precision.sh"
precision_candidates "$PRECISION"
if [ "$COST" = 1 ] && [ ! -f "$cost.txt" ]; then
  say "cost: batch $BATCH, phases $phases, $n_train nodules per epoch (training part), $n_all (all patients)"
  if [ "$DRY_RUN" = 1 ]; then
    run $PY benchmarks/lung_phase_cost.py --batch "$BATCH" --steps "$COST_STEPS" --phases "$phases" "${candidates[@]}"
  else
    cost_json="$(cd "$OUT" && pwd)/$(basename "$cost").json"  # absolute: the benchmark runs in benchmarks/
    (cd benchmarks && $PY lung_phase_cost.py --batch "$BATCH" --steps "$COST_STEPS" --phases "$phases" \
        --samples "$n_all" --campaign-samples "$n_train,$n_all" "${candidates[@]}" --json "$cost_json") | tee "$cost.txt.tmp"
    mv "$cost.txt.tmp" "$cost.txt"
  fi
elif [ -f "$cost.txt" ]; then
  cat "$cost.txt"
fi
PRECISION=$(chosen_precision "$PRECISION" "$cost.json")
say "precision: $PRECISION"

common=(--data "$DATA" --batch-size "$BATCH" --strategy none)
[ -n "$EPOCHS" ] && common+=(--epochs "$EPOCHS")
[ -n "$STEPS_PER_EPOCH" ] && common+=(--steps-per-epoch "$STEPS_PER_EPOCH")
[ "$PRECISION" != float32 ] && common+=(--mixed-precision "$PRECISION")

evaluate() {  # $1 phase
  local res="$OUT/holdout/eval_$1"
  if [ ! -f "$res/summary.json" ]; then
    say "evaluate $1 on the validation part"
    run $ZOO evaluate lung_nodule --data "$DATA" --manifest "$manifest" --part val \
        --weights "$OUT/holdout/run/$1" --out "$res"
  else
    $PY -c "import json,sys; s=json.load(open(sys.argv[1])); print(sys.argv[2], {l: {k: round(s[l][k], 3) for k in ('roc_auc','accuracy','precision','recall')} for l in ('nodule','patient')})" "$res/summary.json" "$1"
  fi
}

release() {  # $1 phase, $2 folder
  if [ ! -f "$2/card_records.txt" ]; then
    say "release $1 (float16, sha256) -> $2"
    if [ "$DRY_RUN" = 1 ]; then
      run $PY -m zoo.training.release "$OUT/final/run/$1" lung_nodule default --weights-dir "$2"
      run $PY -m zoo.training.release "$OUT/holdout/run/$1" lung_nodule default --as-variant holdout --weights-dir "$2"
    else
      { $PY -m zoo.training.release "$OUT/final/run/$1" lung_nodule default --weights-dir "$2"
        $PY -m zoo.training.release "$OUT/holdout/run/$1" lung_nodule default --as-variant holdout --weights-dir "$2"
      } | tee "$2.records.tmp"
      mv "$2.records.tmp" "$2/card_records.txt"
    fi
  else
    cat "$2/card_records.txt"
  fi
}

# 3 + 4. phase 1 on the training part, evaluated on the held-out part
if [ ! -f "$OUT/holdout/run/phase1/run_record.json" ]; then
  say "train phase1 on the training part ($n_train nodules per epoch)"
  run $ZOO train lung_nodule "${common[@]}" --split "$manifest" --stop-after phase1 --out "$OUT/holdout/run"
fi
evaluate phase1

# 5 + 6. phase 1 on all patients: the model to ship
if [ ! -f "$OUT/final/run/phase1/run_record.json" ]; then
  say "train phase1 on all patients ($n_all nodules per epoch)"
  run $ZOO train lung_nodule "${common[@]}" --stop-after phase1 --out "$OUT/final/run"
fi
release phase1 "$OUT/release"

# 7-9. phases 2a and 2b (88x91x62), optional
if [ "$PHASE2" = 1 ]; then
  if [ ! -f "$OUT/holdout/run/phase2b/run_record.json" ]; then
    say "train phases 2a + 2b on the training part"
    run $ZOO train lung_nodule "${common[@]}" --split "$manifest" --out "$OUT/holdout/run"
  fi
  evaluate phase2a
  evaluate phase2b
  if [ ! -f "$OUT/final/run/phase2b/run_record.json" ]; then
    say "train phases 2a + 2b on all patients"
    run $ZOO train lung_nodule "${common[@]}" --out "$OUT/final/run"
  fi
  release phase2b "$OUT/release_phase2"
fi
say "done; card: the better phase's release + its validation summary ($OUT/holdout/eval_*/summary.json)"
