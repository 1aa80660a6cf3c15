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
FLAIR: 1) at ``--batch`` and ``--size`` in each ``--precision`` (default: float32, plus the
native mixed precision: ``mixed_float16`` on a GPU, ``mixed_bfloat16`` on a CPU with
AVX512-BF16/AMX; a mixed precision that is not native is not measured), and prints the cost of
the retraining campaign: per variant ``--folds`` cross-validation members plus
``--final-members`` members on all subjects, ``--campaign-steps`` steps each (preprocessing
and validation are not included). The cheapest precision is the one with the lowest campaign
total over both variants; ``--json`` writes it as ``best_precision`` with every row
(training/campaigns/wmh_issue20.sh reads it through training/campaigns/precision.sh).

    python benchmarks/train_throughput.py --campaign --batch 24 --size 128 \
        --precision float32 --precision mixed_bfloat16 --json cost.json
"""

from __future__ import annotations

import argparse
import json

from _timed_steps import measured_precisions, run_timed

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


def campaign(args: argparse.Namespace) -> dict:
    """Print the step cost per variant and precision and the campaign's total (module
    docstring); returns ``{"best_precision", "bf16_in_hardware", "rows"}``.

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
    rows = []
    totals: dict[str, list[float]] = {}
    for variant, channels in (("flair_t1", 2), ("flair", 1)):
        base = {"batch": args.batch, "steps": args.steps, "size": args.size, "channels": channels}
        last: dict = {}

        def device() -> str:  # from this variant's last timed run, else a one-step float32 run
            return last.get("device") or run({**base, "policy": "float32", "steps": 1})["device"]

        for policy in measured_precisions(args.precision or ["float32", "native"], device, cpu_bf16,
                                          lambda why: print(f"  {variant}: {why}")):
            r = run({**base, "policy": policy})
            last["device"] = r["device"]
            cost = r["step_s"] * args.campaign_steps * runs
            idle = r.get("cpu_s", r["step_s"]) / cores if r["device"] == "CPU" else r["step_s"]
            idle_cost = idle * args.campaign_steps * runs
            t = totals.setdefault(policy, [0.0, 0.0, 0])
            t[0] += cost
            t[1] += idle_cost
            t[2] += 1
            rows.append({"variant": variant, "channels": channels, "precision": policy, "device": r["device"],
                         "step_s": r["step_s"], "cpu_s": r.get("cpu_s"), "peak_mib": r["peak_mib"],
                         "members": runs, "campaign_h": cost / 3600, "idle_h": idle_cost / 3600})
            print(f"{variant}: {r['step_s']:.3f} s per optimizer step measured (batch {args.batch}, {args.size}x"
                  f"{args.size}x{channels}, {policy}, {r['device']}, peak {r['peak_mib']:.0f} MiB; "
                  f"{r.get('cpu_s', float('nan')):.2f} CPU s, {idle:.2f} s on {cores} idle cores); {runs} members "
                  f"({args.folds} folds + {args.final_members} final) x {args.campaign_steps} steps = "
                  f"{hours(cost)} measured, {hours(idle_cost)} idle")
    complete = {p: t for p, t in totals.items() if t[2] == 2}  # measured for both variants
    best = min(complete, key=lambda p: complete[p][0]) if complete else "float32"
    for policy, (total, idle_total, _) in complete.items():
        print(f"campaign (2 variants, {policy}): {2 * runs} members, {2 * runs * args.campaign_steps} steps: "
              f"{hours(total)} at the measured step times, {hours(idle_total)} on this machine's cores when idle "
              f"(one run at a time)")
    print(f"cheapest precision: {best}")
    return {"best_precision": best, "bf16_in_hardware": cpu_bf16, "batch": args.batch, "size": args.size,
            "campaign_steps": args.campaign_steps, "folds": args.folds, "final_members": args.final_members,
            "rows": rows}


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
    ap.add_argument("--precision", action="append", default=None,
                    choices=["float32", "mixed_bfloat16", "mixed_float16"],
                    help="with --campaign: a precision to measure, repeatable (default: float32 and the native "
                         "mixed precision); a mixed precision that is not native here is skipped")
    ap.add_argument("--json", default=None, metavar="FILE", help="with --campaign: write the rows and best_precision")
    args = ap.parse_args()
    if args.campaign:
        result = campaign(args)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(result, fh, indent=2)
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
