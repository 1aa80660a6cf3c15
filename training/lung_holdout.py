"""A held-out validation part of a ``lidc_voi`` folder: a seeded fraction of the **patients**
(never of the nodules), stratified by "has a malignant nodule" (issue 17; spec
``specs/lung_nodule.md`` §2 "Splits", ``practices.md`` §3).

    python -m zoo.training.lung_holdout --data ../shared/data/lidc_voi --out runs/lung-holdout/manifest.json

writes, atomically:

* ``manifest.json``: ``{"holdout": {"train": [patient ids], "val": [patient ids]}}``, the
  project's manifest format (:func:`zoo.training.datasets.read_manifest`), which
  ``zoo train --split`` and ``zoo evaluate --manifest`` read;
* ``manifest_nodules.csv`` beside it: one row per nodule of the split patients (``part``,
  ``patient``, ``case``, ``malignancy`` 1-5, ``label`` 0/1 or empty for rating 3);
* ``manifest_summary.json``: seed, fraction, label source, patients and nodules per part and
  stratum.

The split depends only on the patient IDs, their stratum and the seed (not on file order):
:func:`zoo.training.datasets.holdout` (largest-remainder quota per stratum, seeded shuffle).
Patients whose nodules are all rated 3 carry no label and are in neither part.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from zoo.io import atomic_write_text
from zoo.training import datasets as ds

#: The fraction of patients held out (issue 17: "hold out 20% of the patients").
FRACTION = 0.2
#: The project's split seed (spec lung_nodule.md §2: RNG state 42).
SEED = 42
#: The manifest's fold name.
FOLD = "holdout"


def split_patients(subjects: Sequence[ds.Subject], fraction: float = FRACTION,
                   seed: int = SEED) -> tuple[list[ds.Subject], list[ds.Subject]]:
    """``(train, val)`` patients: ``round(fraction x n)`` patients (at least 1) held out,
    stratified by ``meta["has_malignant"]`` (:func:`zoo.training.datasets.holdout`).

    Raises:
        ValueError: ``fraction`` not in (0, 1), or fewer than 2 patients.
    """
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    n_val = max(1, int(round(float(fraction) * len(subjects))))
    return ds.holdout(subjects, min(n_val, len(subjects) - 1), seed=seed, stratify_by="has_malignant")


def nodule_rows(parts: dict[str, Sequence[ds.Subject]]) -> list[dict[str, Any]]:
    """One row per nodule: ``part, patient, case, malignancy, label`` (label None = rating 3)."""
    return [{"part": part, "patient": s.id, "case": n["case"], "malignancy": n["malignancy"],
             "label": n["label"]}
            for part, subjects in parts.items() for s in subjects for n in s.meta["nodules"]]


def write_holdout(data: str | Path, out: str | Path, *, fraction: float = FRACTION, seed: int = SEED,
                  label_source: str = "rating") -> dict[str, Any]:
    """Split ``data`` (a ``lidc_voi`` folder) and write the manifest, the nodule list and the
    summary (module docstring). Returns the summary.

    Raises:
        InputNotFoundError, InputError: an unreadable ``lidc_voi`` folder;
        ValueError: ``out`` is not a ``.json`` file, or a bad ``fraction``.
    """
    import pandas as pd

    out = Path(out)
    if out.suffix.lower() != ".json":
        raise ValueError(f"{out}: the manifest must be a .json file")
    subjects = ds.lidc_voi(data, label_source=label_source)
    train, val = split_patients(subjects, fraction, seed)
    manifest = {FOLD: {"train": [s.id for s in train], "val": [s.id for s in val]}}
    ds.check_disjoint(manifest)
    rows = nodule_rows({"train": train, "val": val})
    table = pd.DataFrame(rows, columns=["part", "patient", "case", "malignancy", "label"])
    table["label"] = table["label"].astype("Int64")
    summary: dict[str, Any] = {"data": str(data), "fraction": float(fraction), "seed": int(seed),
                               "label_source": label_source, "stratify_by": "has_malignant", "fold": FOLD,
                               "parts": {}}
    for part, subjects_ in (("train", train), ("val", val)):
        labelled = table[(table["part"] == part) & table["label"].notna()]
        summary["parts"][part] = {
            "patients": len(subjects_),
            "patients_with_malignant": sum(bool(s.meta["has_malignant"]) for s in subjects_),
            "nodules_labelled": int(len(labelled)), "nodules_malignant": int((labelled["label"] == 1).sum()),
            "nodules_rating3": int(((table["part"] == part) & table["label"].isna()).sum())}
    atomic_write_text(out.with_name(out.stem + "_nodules.csv"), table.to_csv(index=False))
    atomic_write_text(out.with_name(out.stem + "_summary.json"), json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out, json.dumps(manifest, indent=2) + "\n")  # last: its presence means done
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of :func:`write_holdout`."""
    ap = argparse.ArgumentParser(prog="python -m zoo.training.lung_holdout", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="a lidc_voi folder")
    ap.add_argument("--out", required=True, type=Path, help="the manifest (.json) to write")
    ap.add_argument("--fraction", type=float, default=FRACTION, help="fraction of patients held out (0.2)")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--label-source", choices=["rating", "diagnosis"], default="rating")
    a = ap.parse_args(argv)
    s = write_holdout(a.data, a.out, fraction=a.fraction, seed=a.seed, label_source=a.label_source)
    for part, p in s["parts"].items():
        print(f"{part}: {p['patients']} patients ({p['patients_with_malignant']} with a malignant nodule), "
              f"{p['nodules_labelled']} labelled nodules ({p['nodules_malignant']} malignant)")
    print(f"manifest: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
