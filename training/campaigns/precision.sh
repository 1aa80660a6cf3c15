# Precision choice shared by the campaign scripts (sourced; needs $PY). bfloat16 is measured only
# where the CPU has it in hardware (AVX512-BF16/AMX; elsewhere it is emulated and says nothing).

# precision_candidates PRECISION: the --precision flags of the cost benchmark, in the array
# `candidates` (auto: float32, plus mixed_bfloat16 on a CPU with AVX512-BF16/AMX).
precision_candidates() {
  if [ "$1" != auto ]; then candidates=(--precision "$1")
  elif grep -qE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null; then candidates=(--precision float32 --precision mixed_bfloat16)
  else candidates=(--precision float32); fi
}

# chosen_precision PRECISION COST_JSON: prints the precision to train with (auto: the benchmark's
# best_precision when its JSON exists, else float32).
chosen_precision() {
  if [ "$1" != auto ]; then echo "$1"
  elif [ -f "$2" ]; then $PY -c "import json,sys; print(json.load(open(sys.argv[1]))['best_precision'])" "$2"
  else echo float32; fi
}
