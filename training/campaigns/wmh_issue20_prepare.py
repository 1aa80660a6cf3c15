"""Prepare the wmh_ensemble retraining campaign of issue 20: subject CSVs per variant and the
5-fold manifest (by subject, stratified by site so the two MNI subjects land in different folds).

    python training/campaigns/wmh_issue20_prepare.py --out runs/issue20 \
        [--data ../shared/data] [--mask-dir DIR] [--folds 5] [--seed 0]

Writes ``<out>/subjects_flair_t1.csv``, ``<out>/subjects_flair.csv`` (read by
``zoo train/evaluate --data``; column ``brain_mask`` = the z-score mask) and
``<out>/folds.json`` (fold -> train/val subject IDs over the FLAIR-only list, the superset).
A subject that lacks T1 is in the FLAIR-only list only. ``--mask-dir`` adds brain masks for
clinical subjects without any (``<dir>/<id>/brain_mask.nii.gz``, e.g. written by the
skull-stripping entry); without it those subjects (104252, 105074) are left out and listed.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from zoo.training.datasets import write_manifest
from zoo.training.ms_clinical import MASK_KEY, cv_folds, wmh_cv_subjects, write_subjects_csv


def with_mask_dir(subjects, mask_dir: Path | None):
    """Subjects, those without a brain mask given one from ``mask_dir`` when it has it."""
    out = []
    for s in subjects:
        extra = None if mask_dir is None else mask_dir / s.id / "brain_mask.nii.gz"
        if s.site == "tabriz" and MASK_KEY not in s.images and extra is not None and extra.is_file():
            s = replace(s, images={**s.images, MASK_KEY: extra}, meta={**s.meta, "brain_mask_source": f"file:{extra}"})
        out.append(s)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "data")
    ap.add_argument("--mask-dir", type=Path, default=None)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    clinical, mni = args.data / "wmh_ms_clinical", args.data / "open_ms" / "mni"
    lists = {}
    for variant, inputs in (("flair", ("flair",)), ("flair_t1", ("flair", "t1"))):
        subjects = with_mask_dir(wmh_cv_subjects(clinical, mni, inputs, missing_mask="keep"), args.mask_dir)
        dropped = [s.id for s in subjects if s.site == "tabriz" and MASK_KEY not in s.images]
        subjects = [s for s in subjects if s.id not in dropped]
        lists[variant] = subjects
        write_subjects_csv(subjects, args.out / f"subjects_{variant}.csv", columns=(*inputs, MASK_KEY))
        print(f"{variant}: {len(subjects)} subjects ({sum(s.site == 'tabriz' for s in subjects)} clinical); "
              f"left out for lack of a brain mask: {dropped or 'none'}")
    folds = cv_folds(lists["flair"], args.folds, seed=args.seed)
    write_manifest(args.out / "folds.json", folds)
    for k, (_, val) in enumerate(folds):
        print(f"fold{k}: val {[s.id for s in val]}")
    (args.out / "prepare.json").write_text(json.dumps(
        {"data": str(args.data), "mask_dir": str(args.mask_dir) if args.mask_dir else None,
         "folds": args.folds, "seed": args.seed}, indent=2) + "\n")


if __name__ == "__main__":
    main()
