#!/usr/bin/env bash
# The diamondgan (FLAIR target) training and held-out evaluation of issue 18, resumable:
#
#   nohup bash training/campaigns/diamondgan_issue18.sh > runs/diamondgan-i18.log 2>&1 &
#
# from the repository root with the zoo installed. Training resumes from its last epoch
# (BackupAndRestore in $OUT); a finished run (member0.npz) is not redone.
# Held out (never trained on, never in the baselines' fit): one MNI 1 mm subject (patient07),
# one multicontrast glioma subject (tcga_fg_6692), one clinical thick-slice subject with T1 and
# T2 (110218) and one clinical subject with T1 only (105755).
# Settings (environment): PATCH (square patch side, multiple of 16; 240 = whole slices),
# EPOCHS x STEPS_PER_EPOCH generator steps (>= 4,000: 100x the 40 steps of the first weights),
# BATCH (aligned pairs per step; recipe 5), SUBSETS (gan.subset_schedule, D10: all = the 3 input
# subsets per step, the recipe's default; random_one = one drawn per step, as the first weights),
# PAIRED (gan.lambda_paired: weight of the paired L1 term |T3 - G1(S)|; 0 = the paper and the
# released code, the recipe's default; 100 = pix2pix's L1 weight),
# PRECISION (auto: float32, or mixed_bfloat16 where the CPU has AVX512-BF16/AMX and
# benchmarks/gan_step_cost.py measures it cheaper; or float32 | mixed_bfloat16 | mixed_float16 as given),
# WHOLE_EPOCHS (default 0): after the patch phase (then in $OUT/phase1), G1 goes on for
# WHOLE_EPOCHS x STEPS_PER_EPOCH more steps on whole 240x240 slices (--init; fresh G2, D_S, D_T),
# so that its instance normalisation sees at training what it sees at inference (whole slices,
# background included); the budget counts both phases.
set -euo pipefail
OUT=${OUT:-runs/diamondgan-i18}
DATA=${DATA:-../shared/data}
PATCH=${PATCH:-128}
EPOCHS=${EPOCHS:-40}
STEPS_PER_EPOCH=${STEPS_PER_EPOCH:-100}
PRECISION=${PRECISION:-auto}
WHOLE_EPOCHS=${WHOLE_EPOCHS:-0}
BATCH=${BATCH:-5}
SUBSETS=${SUBSETS:-all}
PAIRED=${PAIRED:-0}
PY=${PY:-python}
HOLD=(--holdout patient07 --holdout tcga_fg_6692 --holdout 110218 --holdout 105755)
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
steps=$((EPOCHS * STEPS_PER_EPOCH))
whole_steps=$((WHOLE_EPOCHS * STEPS_PER_EPOCH))
total=$((steps + whole_steps))
[ "$total" -ge 4000 ] || { echo "(EPOCHS + WHOLE_EPOCHS) x STEPS_PER_EPOCH = $total < 4000 (issue 18 budget)"; exit 2; }
mkdir -p "$OUT"
out_abs="$(cd "$OUT" && pwd)"
first="$OUT"; [ "$WHOLE_EPOCHS" -gt 0 ] && first="$OUT/phase1"
source "$(dirname "$0")/precision.sh"
precision_candidates "$PRECISION"
if [ ! -f "$OUT/cost.txt" ]; then
  (cd benchmarks && $PY gan_step_cost.py --batch "$BATCH" --size "$PATCH" --steps 3 --subset-schedule "$SUBSETS" --total-steps "$steps" \
      "${candidates[@]}" --json "$out_abs/cost.json") | tee "$OUT/cost.txt.tmp"
  if [ "$WHOLE_EPOCHS" -gt 0 ]; then
    (cd benchmarks && $PY gan_step_cost.py --batch "$BATCH" --size 240 --steps 3 --subset-schedule "$SUBSETS" --total-steps "$whole_steps" \
        "${candidates[@]}") | tee -a "$OUT/cost.txt.tmp"
  fi
  mv "$OUT/cost.txt.tmp" "$OUT/cost.txt"
else
  cat "$OUT/cost.txt"
fi
PRECISION=$(chosen_precision "$PRECISION" "$OUT/cost.json")
echo "== $(date -u +%FT%TZ) precision: $PRECISION"
mp=(); [ "$PRECISION" != float32 ] && mp=(--mixed-precision "$PRECISION")
common=(--shared "$DATA" "${HOLD[@]}" --steps-per-epoch "$STEPS_PER_EPOCH" --set "batch_size=$BATCH"
        --set "gan.subset_schedule=$SUBSETS" --set "gan.lambda_paired=$PAIRED" "${mp[@]}")
if [ ! -f "$first/member0.npz" ]; then
  echo "== $(date -u +%FT%TZ) train ($steps steps, ${PATCH}px patches)"
  $PY -m zoo.training.synthesis_heldout train "${common[@]}" --out "$first" --epochs "$EPOCHS" --set "data.patch_size=$PATCH"
fi
if [ "$WHOLE_EPOCHS" -gt 0 ] && [ ! -f "$OUT/member0.npz" ]; then
  echo "== $(date -u +%FT%TZ) train ($whole_steps steps, whole 240x240 slices, from $first/member0.npz)"
  $PY -m zoo.training.synthesis_heldout train "${common[@]}" --out "$OUT" --epochs "$WHOLE_EPOCHS" \
      --set "data.patch_size=null" --init "$first/member0.npz"
fi
if [ ! -f "$OUT/eval/results.json" ]; then
  echo "== $(date -u +%FT%TZ) evaluate"
  $PY -m zoo.training.synthesis_heldout evaluate --shared "$DATA" "${HOLD[@]}" --weights "$OUT" -o "$OUT/eval"
fi
echo "== $(date -u +%FT%TZ) done: $OUT/eval/table.csv (model vs linear vs identity per subject and subset), $OUT/eval/*.png"
