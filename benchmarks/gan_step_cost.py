"""Cost of one DiamondGAN training step (issue 18): seconds per step in float32 and, on hardware
that has it, in mixed precision, and the cost of a whole training run.

    python benchmarks/gan_step_cost.py [--batch 5] [--size 128] [--steps 3] [--total-steps 4000]
        [--subset-schedule all|random_one]
        [--precision float32 --precision mixed_bfloat16] [--json cost.json]

One step is one ``DiamondGANTrainer.train_step`` of the recipe (``training/recipes/diamondgan.yaml``)
on a batch of ``--batch`` aligned pairs of ``--size`` square patches (240 = whole slices): with
``--subset-schedule all`` (the recipe's D10 default) it updates D_S and D_T twice and G1+G2 once
for each of the 3 input subsets of the FLAIR variant; with ``random_one``, for one subset drawn
at random. Each ``--precision`` is measured (default: float32 and the native
mixed precision); a mixed precision runs only where it is native: ``mixed_float16`` on a GPU,
``mixed_bfloat16`` on a CPU with AVX512-BF16/AMX (``/proc/cpuinfo``; as
benchmarks/predict_latency.py); elsewhere it would be emulated and slower. The cheapest is
printed, and ``--json`` writes it as ``best_precision`` with the rows
(training/campaigns/diamondgan_issue18.sh reads it through training/campaigns/precision.sh). Each configuration
runs in a fresh subprocess: graph tracing and one warm-up step, then the median of ``--steps``
timed steps on random data. The CPU seconds per step (all threads) and the wall time they
imply on this machine's cores when idle are printed as well, since a shared CPU's wall time
measures its load.
"""

from __future__ import annotations

import argparse
import json
import os

from _timed_steps import measured_precisions, run_timed

SETUP = r"""
if cfg["policy"] != "float32":
    keras.mixed_precision.set_dtype_policy(cfg["policy"])
from zoo import registry
from zoo.training.recipe import load_recipe
from zoo.training.tasks import gan_synthesis as task
card = registry.card("diamondgan")
rec = load_recipe("diamondgan", "flair", {"data": {"patch_size": cfg["size"]}, "batch_size": cfg["batch"],
                                          "gan": {"subset_schedule": cfg["schedule"]}})
_, net = task.build(card, "flair", rec, 0, 0)
b, s = cfg["batch"], cfg["size"]
rng = np.random.default_rng(0)
x = (rng.uniform(-1, 1, (b, s, s, 3)).astype("float32"), rng.uniform(-1, 1, (b, s, s, 3)).astype("float32"),
     np.tile([[0.0, 1.0, 1.0]], (b, 1)).astype("float32"))
y = np.zeros((b,), "float32")
"""


def bf16_supported() -> bool:
    from predict_latency import bf16_supported as check

    return check()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=5, help="aligned pairs per step (recipe: 5)")
    ap.add_argument("--size", type=int, default=128, help="square patch side, multiple of 16 (240 = whole slices)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--subset-schedule", default="all", choices=["all", "random_one"],
                    help="recipe gan.subset_schedule (D10): all = the 3 subsets per step, random_one = one")
    ap.add_argument("--total-steps", type=int, default=4000, help="steps of the training run to cost")
    ap.add_argument("--precision", action="append", default=None,
                    choices=["float32", "mixed_bfloat16", "mixed_float16"],
                    help="a precision to measure, repeatable (default: float32 and the native mixed precision)")
    ap.add_argument("--json", default=None, metavar="FILE", help="write the rows and best_precision as JSON")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    cpu_bf16 = bf16_supported()
    print(f"bfloat16 in hardware (AVX512-BF16/AMX): {cpu_bf16}; {cores} CPU cores; "
          f"load average {os.getloadavg()[0]:.1f}")
    base = {"batch": args.batch, "size": args.size, "steps": args.steps, "schedule": args.subset_schedule}
    rows, last = [], {}

    def device() -> str:  # from the last timed run, else a one-step float32 run
        return last.get("device") or run_timed(SETUP, {**base, "policy": "float32", "steps": 1})["device"]

    for policy in measured_precisions(args.precision or ["float32", "native"], device, cpu_bf16):
        r = run_timed(SETUP, {**base, "policy": policy})
        last["device"] = r["device"]
        idle = r["step_s"] if r["device"] == "GPU" else r["cpu_s"] / cores
        rows.append({"precision": policy, "device": r["device"], "step_s": r["step_s"], "cpu_s": r["cpu_s"],
                     "peak_mib": r["peak_mib"], "total_h": r["step_s"] * args.total_steps / 3600,
                     "idle_h": idle * args.total_steps / 3600})
        print(f"{policy}: {r['step_s']:.2f} s per step measured ({r['cpu_s']:.2f} CPU s, {idle:.2f} s on {cores} idle "
              f"cores; batch {args.batch}, {args.size}x{args.size}, {r['device']}, peak {r['peak_mib']:.0f} MiB); "
              f"{args.total_steps} steps: {r['step_s'] * args.total_steps / 3600:.1f} h measured, "
              f"{idle * args.total_steps / 3600:.1f} h idle")
    best = min(rows, key=lambda row: row["step_s"])["precision"] if rows else "float32"
    print(f"cheapest precision: {best}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"batch": args.batch, "size": args.size, "subset_schedule": args.subset_schedule,
                       "total_steps": args.total_steps,
                       "bf16_in_hardware": cpu_bf16, "best_precision": best, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
