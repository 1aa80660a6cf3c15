"""Training cost of skull_stripping on this machine: seconds per optimiser step of the card's 3D
U-Net on whole 160 x 160 x 92 windows, peak memory, and the projected time of a
cross-validation chunk (``--folds`` fold models plus the final model, ``--steps-per-model``
steps each).

    python benchmarks/skull_stripping_step_cost.py [--batch 1] [--steps 3] [--folds 5]
        [--steps-per-model 400] [--precision float32 --precision mixed_bfloat16] [--json cost.json]

The network is built from the card (``zoo.entries.skull_stripping.build_member``) and compiled
with the recipe's loss and optimizer (``training/recipes/skull_stripping.yaml``) in a fresh
subprocess (its own peak memory): one warm-up step, then the median of ``--steps`` timed
``train_on_batch`` steps on random data, under the Keras dtype policy ``--precision``
(``mixed_bfloat16`` only where the CPU has AVX512-BF16/AMX: elsewhere it is emulated and says
nothing). Not counted: reading and preprocessing the heads (about 15 s per fold for 41 heads,
twice that with stripped twins) and scoring the held-out fold (about 4 s per head).
"""

from __future__ import annotations

import argparse
import json

from _timed_steps import run_timed
from predict_latency import bf16_supported

SETUP = r"""
if cfg["precision"] != "float32":
    keras.mixed_precision.set_dtype_policy(cfg["precision"])
from zoo import registry
from zoo.entries.skull_stripping import build_member
from zoo.training.recipe import load_recipe
from zoo.training.tasks.segmentation3d import make_loss
from zoo.training.optim import make_optimizer
card = registry.card("skull_stripping")
recipe = load_recipe("skull_stripping")
net = build_member(card, "head", 0)
net.compile(optimizer=make_optimizer(recipe["optimizer"], "constant"), loss=make_loss(recipe["loss"]))
rng = np.random.default_rng(0)
shape = tuple(card.variant("head")["architecture"]["input_shape"][:3])
x = rng.normal(size=(cfg["batch"], *shape, 1)).astype("float32")
y = (rng.random((cfg["batch"], *shape, 1)) < 0.3).astype("float32")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1, help="heads per step (CPU runs: 1; the paper: 8)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--folds", type=int, default=5, help="fold models in the chunk (0: the final model only)")
    ap.add_argument("--steps-per-model", type=int, default=400)
    ap.add_argument("--precision", action="append", choices=["float32", "mixed_bfloat16"], default=None)
    ap.add_argument("--json", default=None, metavar="FILE", help="write the rows as JSON")
    args = ap.parse_args()
    hw_bf16 = bf16_supported()
    models = args.folds + 1
    print(f"bfloat16 in hardware (AVX512-BF16/AMX): {hw_bf16}; batch {args.batch}, median of {args.steps} steps; "
          f"chunk: {args.folds} fold models + the final model, {args.steps_per_model} steps each")
    rows = []
    for precision in args.precision or ["float32"]:
        if precision == "mixed_bfloat16" and not hw_bf16:
            print("mixed_bfloat16 not measured: no AVX512-BF16/AMX on this CPU (it would be emulated)")
            continue
        r = run_timed(SETUP, {"batch": args.batch, "steps": args.steps, "precision": precision})
        model_h = r["step_s"] * args.steps_per_model / 3600
        rows.append({"precision": precision, "step_s": r["step_s"], "peak_mib": r["peak_mib"], "device": r["device"],
                     "model_h": model_h, "chunk_h": model_h * models})
        print(f"{precision:>14} ({r['device']}): {r['step_s']:6.2f} s/step, peak {r['peak_mib']:6.0f} MiB, "
              f"one model {model_h * 60:5.1f} min, chunk of {models} models {model_h * models:5.2f} h")
    best = min(rows, key=lambda r: r["step_s"])["precision"] if rows else "float32"
    print(f"cheapest precision: {best}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"batch": args.batch, "bf16_in_hardware": hw_bf16, "best_precision": best,
                       "folds": args.folds, "steps_per_model": args.steps_per_model, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
