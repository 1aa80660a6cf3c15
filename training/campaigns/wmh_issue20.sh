#!/usr/bin/env bash
# The wmh_ensemble retraining campaign of issue 20, resumable: start it (again) with
#
#   nohup bash training/campaigns/wmh_issue20.sh > runs/issue20.log 2>&1 &
#
# from the repository root, with the zoo installed (python -m zoo.cli ...; or set ZOO="zoo").
# Every stage skips what is already done (member*.npz, metrics.csv), and an interrupted member
# resumes from its last epoch (BackupAndRestore in the run folder), so killing and restarting
# loses at most one epoch (STEPS_PER_EPOCH steps) of one member.
#
# Stages:
#   0. cost: benchmarks/train_throughput.py --campaign prints the expected cost first, per precision;
#      the campaign trains in the cheapest (training/campaigns/precision.sh)
#   1. prepare: subject CSVs per variant + 5-fold manifest (training/campaigns/wmh_issue20_prepare.py)
#   2. CV: per variant and fold, one member (seed 0) on the other folds' subjects, validated on the fold
#   3. evaluate every fold on its held-out subjects (zoo evaluate, overlays), pool per site into
#      $OUT/cv_subjects.csv (both variants; commit it as training/results/wmh_ensemble_cv.csv)
#   4. final: 3 members per variant on all subjects, one process per member (seeds 0, 1, 2),
#      assembled into runs/issue20/final/<variant>/member{0,1,2}.npz for the card
#
# Settings (environment): PATCH (square patch side, px; the U-Net is fully convolutional, the
# weights load into the 200x200 model), BATCH (>= 24), EPOCHS x STEPS_PER_EPOCH (>= 1,000 steps),
# PRECISION (auto: float32, or mixed_bfloat16 where the CPU has AVX512-BF16/AMX and the benchmark
# measures it cheaper; or float32 | mixed_bfloat16 | mixed_float16 (a GPU) as given),
# OPTIONS (card options of training and evaluation, space-separated KEY=VALUE; default
# "apply_mask=true mask_method=skull_stripping": every input is zeroed outside its brain mask, the
# given one, else the skull_stripping entry's, so MNI and clinical heads reach the network alike),
# VARIANTS (default "flair_t1 flair") and STAGES (default "cv final"): the variants and stages to run,
# e.g. STAGES=final on another session's machine once the CV table is committed,
# MASK_DIR (brain masks for the clinical subjects that have none, <dir>/<id>/brain_mask.nii.gz; default:
# $OUT/masks, written by the shipped skull_stripping weights, stage 0b).
set -euo pipefail
OUT=${OUT:-runs/issue20}
DATA=${DATA:-../shared/data}
PATCH=${PATCH:-128}
BATCH=${BATCH:-24}
EPOCHS=${EPOCHS:-10}
STEPS_PER_EPOCH=${STEPS_PER_EPOCH:-100}
FOLDS=${FOLDS:-5}
VARIANTS=${VARIANTS:-flair_t1 flair}
STAGES=${STAGES:-cv final}
PRECISION=${PRECISION:-auto}
ZOO=${ZOO:-python -m zoo.cli}
PY=${PY:-python}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
mkdir -p "$OUT"
steps=$((EPOCHS * STEPS_PER_EPOCH))
[ "$steps" -ge 1000 ] || { echo "EPOCHS x STEPS_PER_EPOCH = $steps < 1000 (issue 20 budget)"; exit 2; }
[ "$BATCH" -ge 24 ] || { echo "BATCH=$BATCH < 24 (issue 20 budget)"; exit 2; }
out_abs="$(cd "$OUT" && pwd)"

# 0. expected cost, printed before anything trains; the precision
source "$(dirname "$0")/precision.sh"
precision_candidates "$PRECISION"
if [ ! -f "$OUT/cost.txt" ]; then
  (cd benchmarks && $PY train_throughput.py --campaign --batch "$BATCH" --size "$PATCH" --steps 3 \
      --campaign-steps "$steps" --folds "$FOLDS" --final-members 3 "${candidates[@]}" \
      --json "$out_abs/cost.json") | tee "$OUT/cost.txt.tmp"
  mv "$OUT/cost.txt.tmp" "$OUT/cost.txt"
else
  cat "$OUT/cost.txt"
fi
PRECISION=$(chosen_precision "$PRECISION" "$OUT/cost.json")
echo "== $(date -u +%FT%TZ) precision: $PRECISION"
mp=(); [ "$PRECISION" != float32 ] && mp=(--mixed-precision "$PRECISION")
OPTIONS=${OPTIONS-apply_mask=true mask_method=skull_stripping}
opts=(); for o in $OPTIONS; do opts+=(--option "$o"); done
echo "== card options: ${OPTIONS:-none}"
common=(--batch-size "$BATCH" --epochs "$EPOCHS" --steps-per-epoch "$STEPS_PER_EPOCH"
        --set "data.patch_size=$PATCH" "${mp[@]}" "${opts[@]}")

# 0b. brain masks for the clinical subjects that have none (neither the source's nor a silver mask
# in heads/: 104252 and 105074), made by the shipped skull_stripping weights, unless MASK_DIR is set
if [ -z "${MASK_DIR:-}" ]; then
  MASK_DIR="$OUT/masks"
  for d in "$DATA"/wmh_ms_clinical/*/; do
    id=$(basename "$d")
    [ -f "$d/brain_mask.nii.gz" ] || [ -f "$DATA/heads/bashiri_${id}_flair/brain_mask.nii.gz" ] && continue
    [ -f "$MASK_DIR/$id/brain_mask.nii.gz" ] && continue
    flair="$d/flair_raw.nii.gz"; [ -f "$flair" ] || flair="$d/flair.nii.gz"
    echo "== $(date -u +%FT%TZ) brain mask of $id (skull_stripping, shipped weights)"
    $ZOO predict skull_stripping --input "image=$flair" -o "$MASK_DIR/$id"
  done
fi

# 1. subjects and folds
if [ ! -f "$OUT/folds.json" ]; then
  $PY training/campaigns/wmh_issue20_prepare.py --out "$OUT" --data "$DATA" --folds "$FOLDS" \
      ${MASK_DIR:+--mask-dir "$MASK_DIR"}
fi

# IDs of fold k's validation partition that are in the variant's subject CSV
val_ids() {  # $1 variant, $2 fold index
  $PY - "$OUT" "$1" "$2" <<'EOF'
import csv, json, sys
out, variant, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
have = {r["subject"] for r in csv.DictReader(open(f"{out}/subjects_{variant}.csv"))}
print(" ".join(i for i in json.load(open(f"{out}/folds.json"))[f"fold{k}"]["val"] if i in have))
EOF
}

# 2 + 3. cross-validation, one member per fold
for variant in $VARIANTS; do
  [[ " $STAGES " == *" cv "* ]] || break
  for k in $(seq 0 $((FOLDS - 1))); do
    run="$OUT/cv/$variant/fold$k"
    ids=$(val_ids "$variant" "$k")
    [ -n "$ids" ] || { echo "fold$k has no $variant subject; skipped"; continue; }
    val=(); subj=(); for i in $ids; do val+=(--val "$i"); subj+=(--subject "$i"); done
    if [ ! -f "$run/member0.npz" ]; then
      echo "== $(date -u +%FT%TZ) train $variant fold$k (val: $ids)"
      $ZOO train wmh_ensemble --data "$OUT/subjects_$variant.csv" --variant "$variant" --members 1 \
          "${common[@]}" "${val[@]}" --out "$run"
    fi
    if [ ! -f "$OUT/eval/$variant/fold$k/metrics.csv" ]; then
      echo "== $(date -u +%FT%TZ) evaluate $variant fold$k"
      $ZOO evaluate wmh_ensemble --data "$OUT/subjects_$variant.csv" --variant "$variant" --weights "$run" \
          --option n_members=1 "${opts[@]}" "${subj[@]}" --overlays -o "$OUT/eval/$variant/fold$k"
    fi
  done
  $PY training/campaigns/wmh_issue20_pool.py --subjects "$OUT/subjects_$variant.csv" \
      "$OUT"/eval/"$variant"/fold*/metrics.csv --json "$OUT/cv_$variant.json" \
      --table-out "$OUT/cv_subjects.csv" --variant "$variant" | tee "$OUT/cv_$variant.txt"
done

# 4. final members on all subjects (one process per member, so a finished member is never redone)
for variant in $VARIANTS; do
  [[ " $STAGES " == *" final "* ]] || break
  for m in 0 1 2; do
    run="$OUT/final/$variant/run_member$m"
    if [ ! -f "$OUT/final/$variant/member$m.npz" ]; then
      echo "== $(date -u +%FT%TZ) train $variant final member $m"
      $ZOO train wmh_ensemble --data "$OUT/subjects_$variant.csv" --variant "$variant" --members 1 \
          --set "seeds=[$m]" "${common[@]}" --out "$run"
      cp "$run/member0.npz" "$OUT/final/$variant/member$m.npz.tmp"
      mv "$OUT/final/$variant/member$m.npz.tmp" "$OUT/final/$variant/member$m.npz"
    fi
  done
  sha256sum "$OUT"/final/"$variant"/member?.npz | tee "$OUT/final/$variant/SHA256SUMS"
done
echo "== $(date -u +%FT%TZ) done; card: version bump, measured <- $OUT/cv_*.json, weights <- $OUT/final/*/member*.npz"
