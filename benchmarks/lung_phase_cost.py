"""Training cost of each progressive-resizing phase of lung_nodule on this machine: seconds per
nodule per optimiser step, peak memory, and the projected time of one epoch and of the phase.

    python benchmarks/lung_phase_cost.py [--batch 4] [--steps 3] [--samples 738]
        [--precision float32 --precision mixed_bfloat16] [--phases phase1,phase2a,phase2b]
        [--campaign-samples 599,738] [--json cost.json]

Each phase of the bundled recipe (training/recipes/lung_nodule.yaml, spec lung_nodule.md §5)
runs in a fresh subprocess (its own peak memory): the network at the phase's input shape
(pad_shape / downsample, ceil), one warm-up step, then the median of ``--steps`` timed
``train_on_batch`` steps on random data with the phase's frozen layers, under the Keras dtype
policy ``--precision`` (``mixed_bfloat16`` is measured only where the CPU has AVX512-BF16/AMX:
elsewhere it is emulated and says nothing). ``--samples`` is the length of one epoch in nodules
(lidc_voi: 527 labelled + 211 malignant seen twice = 738). Without ``--phases`` the last line
compares the CPU-budget frame of the shipped weights (32^3 / 2 = 16^3).

``--campaign-samples N,M,...`` adds, per phase, the projected hours of a run whose epoch holds
N (then M, ...) nodules (issue 17: the hold-out training part, then all patients), and the
cheapest precision of phase 1; ``--json`` writes every row (training/campaigns/lung_issue17.sh).
Validation passes (forward only, about a third of a step per validation nodule) are not counted.
"""

from __future__ import annotations

import argparse
import json

from _timed_steps import run_timed
from predict_latency import bf16_supported

SETUP = r"""
if cfg["precision"] != "float32":
    keras.mixed_precision.set_dtype_policy(cfg["precision"])
from zoo.architectures.nodule_cnn3d import build_nodule_cnn3d
from zoo.training.trainer import freeze_layers
net = build_nodule_cnn3d((*cfg["shape"], 1))
freeze_layers(net, cfg["freeze"])
net.compile(optimizer=keras.optimizers.AdamW(1e-4), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
rng = np.random.default_rng(0)
x = rng.random((cfg["batch"], *cfg["shape"], 1)).astype("float32")
y = rng.integers(0, 2, cfg["batch"]).astype("int32")
"""


def main() -> None:
    from zoo.training.recipe import load_recipe

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4, help="nodules per timed step (recipe: 128 on a GPU)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--samples", type=int, default=738, help="nodules per epoch")
    ap.add_argument("--precision", action="append", choices=["float32", "mixed_bfloat16"], default=None,
                    help="Keras dtype policy (repeatable; default float32)")
    ap.add_argument("--phases", default=None, help="comma-separated phase names (default: all + the CPU-budget frame)")
    ap.add_argument("--campaign-samples", default=None, metavar="N,M", help="epoch lengths to project runs for")
    ap.add_argument("--json", default=None, metavar="FILE", help="write the rows as JSON")
    args = ap.parse_args()
    rec = load_recipe("lung_nodule")
    rows = [(p["name"], p["options"]["pad_shape"], p["options"]["downsample"], p.get("freeze", []), p["epochs"])
            for p in rec["phases"]]
    if args.phases:
        wanted = args.phases.split(",")
        rows = [r for r in rows if r[0] in wanted]
    else:
        rows.append(("cpu_budget", [32, 32, 32], 2, [], 1))
    campaign = [int(n) for n in args.campaign_samples.split(",")] if args.campaign_samples else []
    hw_bf16 = bf16_supported()
    precisions = args.precision or ["float32"]
    print(f"bfloat16 in hardware (AVX512-BF16/AMX): {hw_bf16}; batch {args.batch}, median of {args.steps} steps")
    results = []
    for precision in precisions:
        if precision == "mixed_bfloat16" and not hw_bf16:
            print("mixed_bfloat16 not measured: no AVX512-BF16/AMX on this CPU (it would be emulated)")
            continue
        base = None
        for name, pad, ds, freeze, epochs in rows:
            shape = [-(-int(s) // int(ds)) for s in pad]
            r = run_timed(SETUP, {"shape": shape, "freeze": freeze, "batch": args.batch, "steps": args.steps,
                                  "precision": precision})
            per = r["step_s"] / args.batch
            base = base or per
            epoch_min = per * args.samples / 60
            row = {"phase": name, "precision": precision, "input": shape, "epochs": epochs, "s_per_nodule": per,
                   "peak_mib": r["peak_mib"], "device": r["device"],
                   "runs_h": {str(n): per * n * epochs / 3600 for n in campaign}}
            results.append(row)
            extra = "".join(f", {n} nodules/epoch: {h:.2f} h" for n, h in zip(campaign, row["runs_h"].values()))
            print(f"{name:>10} {precision:>14}: input {'x'.join(map(str, shape)):>9} ({r['device']}), "
                  f"{per:7.3f} s/nodule/step, peak {r['peak_mib']:6.0f} MiB, epoch {epoch_min:7.1f} min, "
                  f"phase ({epochs} epochs) {epoch_min * epochs / 60:6.2f} h, cost ratio to the first "
                  f"{per / base:5.2f}{extra}")
    first = [r for r in results if r["phase"] == rows[0][0]] if rows else []
    best = min(first, key=lambda r: r["s_per_nodule"])["precision"] if first else "float32"
    print(f"cheapest precision for {rows[0][0] if rows else '-'}: {best}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"batch": args.batch, "steps": args.steps, "bf16_in_hardware": hw_bf16, "best_precision": best,
                       "campaign_samples": campaign, "rows": results}, fh, indent=2)


if __name__ == "__main__":
    main()
