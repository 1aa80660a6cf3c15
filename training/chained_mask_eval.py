"""``wmh_ensemble`` on raw clinical FLAIRs (skull on) with the brain mask of ``skull_stripping``
(``mask_method=skull_stripping``) against the same scans with their given brain mask: the
acceptance check of the skull-stripping chain (issue 16).

    python -m zoo.training.chained_mask_eval --data ../shared/data/wmh_ms_clinical \\
        --variant flair --cv runs/ss-cv400 --out runs/chain-eval

Subjects: those of ``wmh_ms_clinical`` with a given brain mask (the source's automatic mask)
and a raw FLAIR (scanner intensities). Per subject, two predictions of the same WMH weights:

* ``given``: inputs ``flair`` (and ``t1``) plus the subject's ``brain_mask`` (z-score region and
  background, as a user who has a mask);
* ``chained``: the same inputs without a mask and the card options
  ``mask_method=skull_stripping`` plus ``mask_weights``: with ``--cv RUN`` the fold model of that
  ``zoo.training.crossval`` run which held out every head of this person (``bashiri_<id>_*``;
  honest: the mask model never saw the scan), otherwise the shipped weights (which may have
  trained on these heads; the output says so).

Writes ``<out>/chained_mask_eval.csv`` (per subject: lesion Dice, HD95, lesion volumes of both,
the brain-mask Dice of the chained mask against the given one, both brain volumes in mL, the
mask weights used) and ``summary.json`` (means), and prints the table.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
from pathlib import Path

import numpy as np

from zoo import errors

log = logging.getLogger(__name__)


def fold_weights_for(cv_run: str | Path, person: str) -> Path:
    """The fold model of a cross-validation run that held out every case of ``person``.

    Args:
        cv_run: a ``zoo.training.crossval`` output folder (``manifest.json``,
            ``fold{i}/member0.npz``).
        person: the case-name prefix of one person in the heads data (e.g. ``bashiri_101228``).
    Raises:
        InputNotFoundError: no manifest, or no fold holds the person out, or its model is missing.
        InputError: the person's cases are split over several folds (the run was not grouped).
    """
    run = Path(cv_run)
    manifest = run / "manifest.json"
    if not manifest.is_file():
        raise errors.InputNotFoundError(f"{manifest} not found; expected a zoo.training.crossval run folder")
    folds = json.loads(manifest.read_text(encoding="utf-8"))
    held = [name for name, f in folds.items() if any(c.startswith(person + "_") for c in f["val"])]
    trained = [name for name, f in folds.items() if any(c.startswith(person + "_") for c in f["train"])]
    if not held:
        raise errors.InputNotFoundError(f"{manifest}: no fold holds out {person}")
    if len(held) > 1 or set(held) & set(trained):
        raise errors.InputError(f"{manifest}: {person} is in the training part of a fold that holds it out "
                                "(the folds are not grouped by person)")
    weights = run / held[0] / "member0.npz"
    if not weights.is_file():
        raise errors.InputNotFoundError(f"{weights} not found: fold {held[0]} of {run} has not finished")
    return weights


def evaluate(data: str | Path, variant: str = "flair", cv_run: str | Path | None = None) -> list[dict]:
    """Per-subject rows of the comparison (module docstring); see :func:`main` for the files."""
    import zoo
    from zoo import metrics, postprocessing
    from zoo.entries import skull_stripping
    from zoo.io import read_volume
    from zoo.training.ms_clinical import wmh_ms_clinical

    inputs = ("flair", "t1") if variant == "flair_t1" else ("flair",)
    subjects = [s for s in wmh_ms_clinical(data, inputs, heads_root=None)
                if s.meta["brain_mask_source"] == "given" and s.meta["flair_file"] == "raw"]
    if not subjects:
        raise errors.InputError(f"{data}: no subject with a raw FLAIR and a given brain mask")
    given_model = zoo.load("wmh_ensemble", variant=variant)
    weights_of = {s.id: str(fold_weights_for(cv_run, f"bashiri_{s.id}")) if cv_run else "default" for s in subjects}
    subjects.sort(key=lambda s: (weights_of[s.id], s.id))  # one mask model in memory at a time
    chained_model, loaded = None, None
    rows = []
    for s in subjects:
        weights = weights_of[s.id]
        if weights != loaded:
            chained_model = loaded = None
            skull_stripping._MODELS.clear()  # the previous fold's mask model
            gc.collect()
            chained_model = zoo.load("wmh_ensemble", variant=variant, options={
                "mask_method": "skull_stripping", "mask_weights": weights})
            loaded = weights
        given = given_model.predict({k: str(s.images[k]) for k in (*inputs, "brain_mask")})
        chained = chained_model.predict({k: str(s.images[k]) for k in inputs})
        m_given = metrics.wmh_challenge(str(s.label), given.images["wmh"])
        m_chained = metrics.wmh_challenge(str(s.label), chained.images["wmh"])
        mask_given = read_volume(str(s.images["brain_mask"]), "brain_mask")
        record = chained.qc["skull_stripping"]
        ss_mask = _chained_mask(chained_model, s)
        g = np.asarray(mask_given.array) > 0
        rows.append({
            "subject": s.id, "variant": variant, "mask_weights": weights,
            "mask_model_saw_scan": None if cv_run else "possibly (shipped weights)",
            "dsc_given": m_given["dsc"], "dsc_chained": m_chained["dsc"],
            "dsc_difference": m_chained["dsc"] - m_given["dsc"],
            "hd95_mm_given": m_given["hd95"], "hd95_mm_chained": m_chained["hd95"],
            "lesion_ml_ref": postprocessing.volume_ml(np.asarray(read_volume(str(s.label), "label").array) > 0,
                                                      mask_given.spacing),
            "lesion_ml_given": given.volumes_ml["wmh"], "lesion_ml_chained": chained.volumes_ml["wmh"],
            "brain_dsc_chained_vs_given": metrics.dice(g, ss_mask),
            "brain_ml_given": postprocessing.volume_ml(g, mask_given.spacing),
            "brain_ml_chained": record["brain_ml"], "mask_flags": ";".join(record["flags"]),
        })
        log.info("%s: lesion Dice given %.3f, chained %.3f", s.id, m_given["dsc"], m_chained["dsc"])
    return rows


def _chained_mask(model, subject) -> np.ndarray:
    """The skull_stripping mask the chained prediction used, on the FLAIR grid (bool)."""
    from zoo.entries.skull_stripping import brain_mask_for
    from zoo.io import read_volume

    step = next(s for s in model.card["preprocessing"]["steps"] if s["step"] == "brain_mask")
    mask, _ = brain_mask_for(read_volume(str(subject.images["flair"]), "flair"), weights=step["mask_weights"])
    return mask


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zoo.training.chained_mask_eval",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the wmh_ms_clinical folder")
    p.add_argument("--variant", default="flair", choices=["flair", "flair_t1"])
    p.add_argument("--cv", default=None, help="a skull_stripping crossval run: use the fold that held each person out")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    import pandas as pd

    rows = evaluate(args.data, args.variant, args.cv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    table.to_csv(out / "chained_mask_eval.csv", index=False)
    numeric = table.select_dtypes("number")
    summary = {"command": " ".join(["python -m zoo.training.chained_mask_eval", *(argv or sys.argv[1:])]),
               "n": len(table), "mean": numeric.mean().round(4).to_dict()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table[["subject", "dsc_given", "dsc_chained", "dsc_difference", "lesion_ml_ref", "lesion_ml_given",
                     "lesion_ml_chained", "brain_dsc_chained_vs_given", "brain_ml_given",
                     "brain_ml_chained"]].round(3).to_string(index=False))
    print(f"mean lesion Dice: given mask {summary['mean']['dsc_given']:.3f}, "
          f"skull_stripping mask {summary['mean']['dsc_chained']:.3f} (difference {summary['mean']['dsc_difference']:+.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
