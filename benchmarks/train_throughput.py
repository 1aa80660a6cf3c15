"""Training throughput of one wmh_ensemble member: slices per second and peak memory, float32
versus mixed precision, printed as figures and a ratio.

    python benchmarks/train_throughput.py [--batch 30] [--steps 5] [--size 200] [--policy auto]

``--policy auto`` compares float32 with ``mixed_float16`` on a GPU and ``mixed_bfloat16`` on a
CPU. Each configuration runs in a fresh subprocess (so peak memory is its own): one warm-up
step, then the median of ``--steps`` timed steps on random data of the card's input shape.
Peak memory is the process's maximum resident set (CPU) or TensorFlow's peak GPU allocation.
"""

from __future__ import annotations

import argparse

from _timed_steps import run_timed

SETUP = r"""
if cfg["policy"] != "float32":
    keras.mixed_precision.set_dtype_policy(cfg["policy"])
from zoo.architectures.unet2d import build_unet2d
from zoo.training.losses import SoftDiceLoss
s, b = cfg["size"], cfg["batch"]
net = build_unet2d((s, s, cfg["channels"]))
net.compile(optimizer=keras.optimizers.Adam(2e-4, epsilon=1e-8), loss=SoftDiceLoss())
rng = np.random.default_rng(0)
x = rng.normal(size=(b, s, s, cfg["channels"])).astype("float32")
y = (rng.random((b, s, s, 1)) > 0.97).astype("float32")
"""


def run(cfg: dict) -> dict:
    return run_timed(SETUP, cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=30, help="slices per step (recipe: 30)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--size", type=int, default=200, help="in-plane size (200 = the card's slices)")
    ap.add_argument("--channels", type=int, default=2, help="2 = FLAIR+T1, 1 = FLAIR only")
    ap.add_argument("--policy", default="auto", help="mixed_float16 | mixed_bfloat16 | auto")
    args = ap.parse_args()
    base = {"batch": args.batch, "steps": args.steps, "size": args.size, "channels": args.channels}
    fp32 = run({**base, "policy": "float32"})
    policy = args.policy
    if policy == "auto":
        policy = "mixed_float16" if fp32["device"] == "GPU" else "mixed_bfloat16"
    mixed = run({**base, "policy": policy})
    for name, r in (("float32", fp32), (policy, mixed)):
        print(f"{name:>15}: {args.batch / r['step_s']:8.2f} slices/s  ({r['step_s']:.3f} s/step of {args.batch}, "
              f"{args.size}x{args.size}x{args.channels}, {r['device']}), peak memory {r['peak_mib']:.0f} MiB")
    print(f"speed-up {policy} / float32: {fp32['step_s'] / mixed['step_s']:.2f}x; "
          f"memory ratio: {mixed['peak_mib'] / fp32['peak_mib']:.2f}")


if __name__ == "__main__":
    main()
