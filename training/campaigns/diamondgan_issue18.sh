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
# benchmarks/gan_step_cost.py measures it cheaper; or float32 | mixed_bfloat16 | mixed_float16 as given).
set -euo pipefail
OUT=${OUT:-runs/diamondgan-i18}
DATA=${DATA:-../shared/data}
PATCH=${PATCH:-128}
EPOCHS=${EPOCHS:-40}
STEPS_PER_EPOCH=${STEPS_PER_EPOCH:-100}
PRECISION=${PRECISION:-auto}
BATCH=${BATCH:-5}
SUBSETS=${SUBSETS:-all}
PAIRED=${PAIRED:-0}
PY=${PY:-python}
HOLD=(--holdout patient07 --holdout tcga_fg_6692 --holdout 110218 --holdout 105755)
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
steps=$((EPOCHS * STEPS_PER_EPOCH))
[ "$steps" -ge 4000 ] || { echo "EPOCHS x STEPS_PER_EPOCH = $steps < 4000 (issue 18 budget)"; exit 2; }
mkdir -p "$OUT"
out_abs="$(cd "$OUT" && pwd)"
source "$(dirname "$0")/precision.sh"
precision_candidates "$PRECISION"
if [ ! -f "$OUT/cost.txt" ]; then
  (cd benchmarks && $PY gan_step_cost.py --batch "$BATCH" --size "$PATCH" --steps 3 --subset-schedule "$SUBSETS" --total-steps "$steps" \
      "${candidates[@]}" --json "$out_abs/cost.json") | tee "$OUT/cost.txt.tmp"
  mv "$OUT/cost.txt.tmp" "$OUT/cost.txt"
else
  cat "$OUT/cost.txt"
fi
PRECISION=$(chosen_precision "$PRECISION" "$OUT/cost.json")
echo "== $(date -u +%FT%TZ) precision: $PRECISION"
mp=(); [ "$PRECISION" != float32 ] && mp=(--mixed-precision "$PRECISION")
if [ ! -f "$OUT/member0.npz" ]; then
  echo "== $(date -u +%FT%TZ) train ($steps steps)"
  $PY -m zoo.training.synthesis_heldout train --shared "$DATA" "${HOLD[@]}" --out "$OUT" \
      --epochs "$EPOCHS" --steps-per-epoch "$STEPS_PER_EPOCH" --set "data.patch_size=$PATCH" \
      --set "batch_size=$BATCH" --set "gan.subset_schedule=$SUBSETS" --set "gan.lambda_paired=$PAIRED" "${mp[@]}"
fi
if [ ! -f "$OUT/eval/results.json" ]; then
  echo "== $(date -u +%FT%TZ) evaluate"
  $PY -m zoo.training.synthesis_heldout evaluate --shared "$DATA" "${HOLD[@]}" --weights "$OUT" -o "$OUT/eval"
fi
echo "== $(date -u +%FT%TZ) done: $OUT/eval/table.csv (model vs linear vs identity per subject and subset), $OUT/eval/*.png"
