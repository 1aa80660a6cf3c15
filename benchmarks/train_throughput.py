"""Training throughput of one wmh_ensemble member: slices per second and peak memory, float32
versus mixed precision, printed as figures and a ratio; and the cost of a whole training
campaign.

    python benchmarks/train_throughput.py [--batch 30] [--steps 5] [--size 200] [--policy auto]
    python benchmarks/train_throughput.py --campaign --batch 24 --size 128 --campaign-steps 1000

``--policy auto`` compares float32 with ``mixed_float16`` on a GPU and with ``mixed_bfloat16``
on a CPU that has bfloat16 in hardware (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo); elsewhere
bfloat16 would be emulated and slower, so only float32 is run (the check is printed).
Each configuration runs in a fresh subprocess (so peak memory is its own): one warm-up
step, then the median of ``--steps`` timed steps on random data of the card's input shape.
Peak memory is the process's maximum resident set (CPU) or TensorFlow's peak GPU allocation.

``--campaign`` (issue 20): times one optimizer step of each variant (FLAIR+T1: 2 channels,
FLAIR: 1) at ``--batch`` and ``--size`` in the fastest precision the hardware supports, and
prints the cost of the retraining campaign: per variant ``--folds`` cross-validation members
plus ``--final-members`` members on all subjects, ``--campaign-steps`` steps each
(preprocessing and validation are not included).
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


def bf16_supported() -> bool:
    """True when the CPU advertises AVX512-BF16 or AMX-BF16 (as benchmarks/predict_latency.py)."""
    from predict_latency import bf16_supported as check

    return check()


def campaign_runs(folds: int, final_members: int) -> int:
    """Members trained per variant: one per cross-validation fold plus the final members."""
    return int(folds) + int(final_members)


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def campaign(args: argparse.Namespace) -> None:
    """Print the step cost per variant and the campaign's total (see the module docstring).

    On a CPU shared with other jobs the wall time of a step says more about the load than about
    the step, so the CPU seconds of the step (all threads) are printed too, with the wall time
    they imply on this machine's cores when nothing else runs (``cpu_s / cores``; an estimate
    that assumes the step keeps every core busy), and the load average at the start."""
    import os

    cpu_bf16 = bf16_supported()
    cores = os.cpu_count() or 1
    print(f"bfloat16 in hardware (AVX512-BF16/AMX): {cpu_bf16}; {cores} CPU cores; "
          f"load average {os.getloadavg()[0]:.1f} at the start")
    runs = campaign_runs(args.folds, args.final_members)
    total = idle_total = 0.0
    for variant, channels in (("flair_t1", 2), ("flair", 1)):
        base = {"batch": args.batch, "steps": args.steps, "size": args.size, "channels": channels}
        best = ("float32", run({**base, "policy": "float32"}))
        if best[1]["device"] == "GPU" or cpu_bf16:
            mixed = "mixed_float16" if best[1]["device"] == "GPU" else "mixed_bfloat16"
            r = run({**base, "policy": mixed})
            print(f"  {variant}: float32 {best[1]['step_s']:.3f} s/step, {mixed} {r['step_s']:.3f} s/step")
            if r["step_s"] < best[1]["step_s"]:
                best = (mixed, r)
        policy, r = best
        cost = r["step_s"] * args.campaign_steps * runs
        total += cost
        idle = r.get("cpu_s", r["step_s"]) / cores if r["device"] == "CPU" else r["step_s"]
        idle_total += idle * args.campaign_steps * runs
        print(f"{variant}: {r['step_s']:.3f} s per optimizer step measured (batch {args.batch}, {args.size}x{args.size}x"
              f"{channels}, {policy}, {r['device']}, peak {r['peak_mib']:.0f} MiB; {r.get('cpu_s', float('nan')):.2f} CPU s, "
              f"{idle:.2f} s on {cores} idle cores); {runs} members ({args.folds} folds + {args.final_members} final) "
              f"x {args.campaign_steps} steps = {hours(cost)} measured, {hours(idle * args.campaign_steps * runs)} idle")
    print(f"campaign (2 variants): {2 * runs} members, {2 * runs * args.campaign_steps} steps: "
          f"{hours(total)} at the measured step times, {hours(idle_total)} on this machine's cores when idle "
          f"(one run at a time)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=30, help="slices per step (recipe: 30)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--size", type=int, default=200, help="in-plane size (200 = the card's slices)")
    ap.add_argument("--channels", type=int, default=2, help="2 = FLAIR+T1, 1 = FLAIR only")
    ap.add_argument("--policy", default="auto", help="mixed_float16 | mixed_bfloat16 | auto")
    ap.add_argument("--campaign", action="store_true", help="print the cost of the issue-20 campaign")
    ap.add_argument("--campaign-steps", type=int, default=1000, help="optimizer steps per member")
    ap.add_argument("--folds", type=int, default=5, help="cross-validation members per variant")
    ap.add_argument("--final-members", type=int, default=3, help="members trained on all subjects")
    args = ap.parse_args()
    if args.campaign:
        campaign(args)
        return
    base = {"batch": args.batch, "steps": args.steps, "size": args.size, "channels": args.channels}
    fp32 = run({**base, "policy": "float32"})
    policy = args.policy
    if policy == "auto":
        policy = "mixed_float16" if fp32["device"] == "GPU" else "mixed_bfloat16"
        if policy == "mixed_bfloat16" and not bf16_supported():
            print(f"float32: {args.batch / fp32['step_s']:8.2f} slices/s ({fp32['step_s']:.3f} s/step); "
                  "mixed_bfloat16 not run: no AVX512-BF16/AMX on this CPU (it would be emulated)")
            return
    mixed = run({**base, "policy": policy})
    for name, r in (("float32", fp32), (policy, mixed)):
        print(f"{name:>15}: {args.batch / r['step_s']:8.2f} slices/s  ({r['step_s']:.3f} s/step of {args.batch}, "
              f"{args.size}x{args.size}x{args.channels}, {r['device']}), peak memory {r['peak_mib']:.0f} MiB")
    print(f"speed-up {policy} / float32: {fp32['step_s'] / mixed['step_s']:.2f}x; "
          f"memory ratio: {mixed['peak_mib'] / fp32['peak_mib']:.2f}")


if __name__ == "__main__":
    main()
