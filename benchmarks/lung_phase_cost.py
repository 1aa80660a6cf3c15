"""Training cost of each progressive-resizing phase of lung_nodule on this machine: seconds per
nodule per optimiser step, peak memory, and the projected time of one epoch and of the phase.

    python benchmarks/lung_phase_cost.py [--batch 4] [--steps 3] [--samples 738]

Each phase of the bundled recipe (training/recipes/lung_nodule.yaml, spec lung_nodule.md §5)
runs in a fresh subprocess (its own peak memory): the network at the phase's input shape
(pad_shape / downsample, ceil), one warm-up step, then the median of ``--steps`` timed
``train_on_batch`` steps on random data with the phase's frozen layers. ``--samples`` is the
length of one epoch in nodules (lidc_voi: 527 labelled + 211 malignant seen twice = 738).
The last line compares the CPU-budget frame of the shipped weights (32^3 / 2 = 16^3).
"""

from __future__ import annotations

import argparse

from _timed_steps import run_timed

SETUP = r"""
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
    args = ap.parse_args()
    rec = load_recipe("lung_nodule")
    rows = [(p["name"], p["options"]["pad_shape"], p["options"]["downsample"], p.get("freeze", []), p["epochs"])
            for p in rec["phases"]]
    rows.append(("cpu_budget", [32, 32, 32], 2, [], 1))
    base = None
    for name, pad, ds, freeze, epochs in rows:
        shape = [-(-int(s) // int(ds)) for s in pad]
        r = run_timed(SETUP, {"shape": shape, "freeze": freeze, "batch": args.batch, "steps": args.steps})
        per = r["step_s"] / args.batch
        base = base or per
        epoch_min = per * args.samples / 60
        print(f"{name:>10}: input {'x'.join(map(str, shape)):>9} ({r['device']}), {per:7.3f} s/nodule/step, "
              f"peak {r['peak_mib']:6.0f} MiB, epoch {epoch_min:7.1f} min, phase ({epochs} epochs) "
              f"{epoch_min * epochs / 60:6.2f} h, cost ratio to phase1 {per / base:5.2f}")


if __name__ == "__main__":
    main()
