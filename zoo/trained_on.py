"""Which subjects a variant's card weights were trained on (``variants.<name>.trained_on`` in the
card), so that an evaluation on a dataset folder can say when its figures are not held-out.

A card lists, per variant, the dataset folders of ``shared/data`` its weights saw::

    trained_on:
      - {dataset: lidc_voi}                                            # every subject
      - {dataset: lidc_voi, split: lung_nodule_holdout, part: train}   # one partition of a
                                                                       # training/splits/ manifest

A dataset folder is matched by its name (``Path(data).name``); data given in another form (a
subjects CSV, a renamed copy) cannot be matched and gives no overlap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

def _splits_dir() -> Path:
    """``training/splits`` of the package (``zoo.training`` is the repository's ``training/``)."""
    from zoo import training

    return Path(training.__file__).resolve().parent / "splits"


def _record_ids(record: Mapping[str, Any]) -> set[str] | None:
    """The subject IDs one ``trained_on`` record names; None = every subject of its dataset."""
    if "split" not in record:
        return None
    from zoo.training.datasets import manifest_part

    return set(manifest_part(_splits_dir() / f"{record['split']}.json", record.get("part", "train"),
                             record.get("fold")))


def overlap(records: Sequence[Mapping[str, Any]] | None, data: str | Path, subject_ids: Iterable[str]) -> list[str]:
    """The IDs among ``subject_ids`` (subjects of the dataset folder ``data``) that the weights
    described by ``records`` (a variant's ``trained_on`` list) were trained on, in input order.

    Args:
        records: the variant's ``trained_on`` (None or empty: the card says nothing; no overlap).
        data: the dataset folder being evaluated; matched to a record by its folder name.
        subject_ids: the evaluated subjects' IDs.
    Returns:
        The trained-on IDs; empty when none, or when no record names this dataset.
    Raises:
        RecipeError: a record's split or part is not in ``training/splits`` (a card error).
    """
    name = Path(data).resolve().name
    ids = list(subject_ids)
    seen: set[str] = set()
    for record in records or ():
        if record["dataset"] != name:
            continue
        named = _record_ids(record)
        seen.update(ids if named is None else named.intersection(ids))
    return [i for i in ids if i in seen]


def warning(entry: str, variant: str, overlapping: Sequence[str], n_evaluated: int) -> str:
    """The one-line warning for an evaluation whose subjects the weights trained on."""
    shown = ", ".join(overlapping[:5]) + (", ..." if len(overlapping) > 5 else "")
    return (f"warning: the {entry} weights of variant {variant} were trained on {len(overlapping)} of the "
            f"{n_evaluated} evaluated subjects ({shown}; card: variants.{variant}.trained_on): these figures "
            "are not held-out. Evaluate weights that did not train on them (a card variant trained on a split, "
            "or --weights of a cross-validation fold).")
