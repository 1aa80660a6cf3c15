"""DiamondGAN on the shared data: train on every subject but a held-out one, then evaluate the
synthetic FLAIR on the held-out subject against a simple baseline (spec ``diamondgan.md`` §9,
``metrics.md`` §5).

    python -m zoo.training.synthesis_eval train --shared ../shared/data --holdout patient07 \
        --out runs/diamondgan-flair --epochs 1 --steps-per-epoch 40 --set data.patch_size=96
    python -m zoo.training.synthesis_eval evaluate --shared ../shared/data --holdout patient07 \
        --weights runs/diamondgan-flair -o runs/diamondgan-eval.json

Subjects: ``multicontrast/*`` and ``open_ms/mni/patient*`` (FLAIR, T1 and T2 on one grid each).
Evaluation (axial slices with brain, inside the brain mask common to the real FLAIR, T1 and T2,
[0, 1] scale, R = 1): the synthetic FLAIR from T1+T2, T1 and T2, and the baseline: a
per-subject least-squares linear map ``a * T2 + b`` to the scaled real FLAIR inside that mask
(fitted on the held-out subject itself, so the baseline is optimistic), clipped to [0, 1].
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from zoo import errors, metrics, registry
from zoo.io import atomic_write_text, read_volume
from zoo.training import datasets

SUBSETS = (("t1", "t2"), ("t1",), ("t2",))


def shared_subjects(shared: str | Path, contrasts: Sequence[str] = ("flair", "t1", "t2")) -> list:
    """Every subject of ``multicontrast`` and ``open_ms/mni`` with the given contrasts."""
    root = Path(shared)
    return (datasets.multicontrast(root / "multicontrast", tuple(contrasts))
            + datasets.open_ms(root / "open_ms" / "mni", tuple(contrasts)))


def split(subjects: Sequence[Any], holdout: str) -> tuple[list, Any]:
    """``(train, held_out)``; InputError when ``holdout`` is not a subject."""
    held = [s for s in subjects if s.id == holdout]
    if not held:
        raise errors.InputError(f"held-out subject {holdout!r} not among {[s.id for s in subjects]}")
    return [s for s in subjects if s.id != holdout], held[0]


def linear_baseline(source: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Least-squares ``a * source + b`` fitted to ``reference`` inside ``mask`` (both ``(I, J, K)``),
    clipped to [0, 1], 0 outside the mask."""
    x = np.asarray(source, np.float64)[mask]
    a, b = np.polyfit(x, np.asarray(reference, np.float64)[mask], 1)
    return np.where(mask, np.clip(a * np.asarray(source, np.float64) + b, 0.0, 1.0), 0.0)


def axial_slab(vol, slab: tuple[int, int] | None):
    """Axial voxel slices ``k0:k1`` of a Volume as a Volume whose affine keeps them in place."""
    if slab is None:
        return vol
    k0, k1 = slab
    aff = np.array(vol.affine, dtype=float)
    aff[:3, 3] = vol.affine[:3, :3] @ [0, 0, k0] + vol.affine[:3, 3]
    from zoo.io import Volume

    return Volume(np.ascontiguousarray(np.asarray(vol.array)[:, :, k0:k1]), aff, vol.header.copy(),
                  f"{vol.source} (axial slices {k0}:{k1})")


def evaluate(shared: str | Path, holdout: str, weights: Any, variant: str = "flair",
             slab: tuple[int, int] | None = (80, 100)) -> dict[str, Any]:
    """Metrics (``*_brain`` and whole-slice) of the model per input subset and of the baseline,
    on the axial slices ``slab`` of the held-out subject (None: all; a CPU budget)."""
    from zoo.entries import diamondgan as entry

    model = registry.load("diamondgan", variant=variant, weights=weights)
    _, subject = split(shared_subjects(shared), holdout)
    real = axial_slab(read_volume(str(subject.images["flair"]), "flair"), slab)
    sources = {n: axial_slab(read_volume(str(subject.images[n]), n), slab) for n in ("t1", "t2")}
    mask = entry.evaluation_mask(real, list(sources.values()))
    ref = entry.scaled_reference(model.card, real, mask)
    rows = {}
    for subset in SUBSETS:
        t0 = time.perf_counter()
        pred = model.predict({n: (sources[n].array, sources[n].affine) for n in subset}, target="flair")
        syn = np.asarray(pred.images["synthetic_flair"].dataobj, np.float32)
        rows["+".join(subset)] = {**metrics.synthesis_metrics(ref, syn, 1.0, mask),
                                  **_whole(ref, syn), "seconds": round(time.perf_counter() - t0, 1)}
    base = linear_baseline(sources["t2"].array, ref, mask)
    rows["baseline_linear_t2"] = {**metrics.synthesis_metrics(ref, base, 1.0, mask), **_whole(ref, base)}
    return {"subject": subject.id, "slab": list(slab) if slab else "all", "weights": model.weights_source, "variant": variant,
            "scale": "[0, 1], R = 1", "mask": "non-zero in real FLAIR, T1 and T2", "results": rows}


def _whole(ref: np.ndarray, syn: np.ndarray) -> dict[str, float]:
    m = metrics.synthesis_metrics(ref, syn, 1.0, None)
    return {"psnr_db_whole_slice": m["psnr_db"], "ssim_whole_slice": m["ssim"], "mae_whole_slice": m["mae"]}


def train(shared: str | Path, holdout: str, out: str | Path, *, epochs: int | None, steps: int | None,
          overrides: dict[str, Any], command: str, budget_minutes: float | None = None) -> dict[str, Any]:
    """Train the flair variant on every subject but ``holdout`` (the engine's run folder)."""
    from zoo.training.recipe import load_recipe
    from zoo.training.trainer import train as run_train

    rec = load_recipe("diamondgan", "flair", overrides)
    subjects, _ = split(shared_subjects(shared), holdout)
    callbacks = [TimeBudget(budget_minutes * 60.0)] if budget_minutes else []
    return run_train(registry.card("diamondgan"), rec, subjects, out, epochs=epochs, steps_per_epoch=steps,
                     command=command, callbacks=callbacks, verbose=2)


class TimeBudget:  # a keras.callbacks.Callback, built lazily so that importing this module stays light
    """Stops ``fit`` after the batch during which ``seconds`` of training have passed."""

    def __new__(cls, seconds: float):
        import keras

        class _Budget(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.t0 = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                if time.perf_counter() - self.t0 > seconds:
                    self.model.stop_training = True

        return _Budget()


def _overrides(pairs: Sequence[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("train", "evaluate"))
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--holdout", default="patient07")
    ap.add_argument("--out", default="runs/diamondgan-flair")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--steps-per-epoch", type=int)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--budget-minutes", type=float, help="stop training after this wall time")
    ap.add_argument("--slab", default="80:100", help="axial slices k0:k1 of the held-out subject to evaluate ('all': every slice)")
    ap.add_argument("--weights", default=None, help="run folder / member0.npz; omit for the untrained net")
    ap.add_argument("-o", "--output", default=None, help="write the evaluation JSON here")
    a = ap.parse_args(argv)
    command = " ".join(["python -m zoo.training.synthesis_eval", *(argv if argv is not None else sys.argv[1:])])
    if a.command == "train":
        rec = train(a.shared, a.holdout, a.out, epochs=a.epochs, steps=a.steps_per_epoch,
                    overrides=_overrides(a.set), command=command, budget_minutes=a.budget_minutes)
        print(json.dumps(rec["members"][0]["history"], indent=1))
        return 0
    slab = None if a.slab == "all" else tuple(int(v) for v in a.slab.split(":"))
    result = evaluate(a.shared, a.holdout, a.weights, slab=slab)
    result["command"] = command
    text = json.dumps(result, indent=2, default=float)
    if a.output:
        atomic_write_text(Path(a.output), text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
