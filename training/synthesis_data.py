"""Every co-registered subject of the shared data for ``diamondgan`` (issue 18), with the
contrasts it has.

Sources (``data/README.md``):

* ``open_ms/mni/patient*``: FLAIR, T1, T2 on the 1 mm MNI grid, skull-stripped (the card's
  ``nonzero`` mask applies; no ``brain_mask`` image); ``meta["kind"] = "mni"``.
* ``multicontrast/*``: FLAIR, T1, T2 on the 1 mm SRI-24 grid, skull-stripped; ``"multicontrast"``.
* ``wmh_ms_clinical/*``: FLAIR (``flair_raw.nii.gz``, scanner units) with T1 (and T2 for 6) on
  the FLAIR's thick-slice grid, skull on; the brain mask is the source's or the silver mask of
  ``heads/`` (:func:`zoo.training.ms_clinical.wmh_ms_clinical`), given as ``images["brain_mask"]``
  so the card's ``minmax`` step scales inside it and sets -1 outside it; ``"clinical"``.
  Subjects without a source (102313) or without a brain mask (104252, 105074) are left out.

Mixed slice thickness (1 mm MNI/SRI against 6.4-8.1 mm clinical): the recipe is 2D. Every
subject is cut into axial slices on its **own** grid, with no through-plane resampling; in plane
the card has no resampling step, so 1 mm and 0.9 mm pixels are used as they are (a 10 % scale
difference, within what the convolutions see across subjects). Thick slices carry partial-volume
blur that the 1 mm ones do not; both kinds are in training and in the held-out evaluation.

A subject that lacks a source trains only the input subsets it supports
(``SynthesisSet.available``, spec ``diamondgan.md`` §3).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from zoo.training.datasets import Subject, _finish, folder
from zoo.training.ms_clinical import wmh_ms_clinical

#: Kinds of subject, for the held-out choice (one of each) and the per-kind tables.
KINDS = ("mni", "multicontrast", "clinical")


def synthesis_subjects(shared: str | Path, contrasts: Sequence[str] = ("flair", "t1", "t2"),
                       kinds: Sequence[str] = KINDS) -> list[Subject]:
    """Every subject of ``kinds`` with the target (first of ``contrasts``) and at least one of
    the other contrasts; ``images`` holds the contrasts each has (+ ``brain_mask`` for clinical
    subjects); ``meta["kind"]`` and ``meta["contrasts"]`` say which.

    Raises:
        InputNotFoundError / InputError: a folder is missing or holds no subject.
        ValueError: an unknown kind.
    """
    root = Path(shared)
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown subject kinds {unknown}; known: {KINDS}")
    target, sources = contrasts[0], list(contrasts[1:])
    out: list[Subject] = []
    for kind in kinds:
        if kind == "clinical":
            base = wmh_ms_clinical(root / "wmh_ms_clinical", (target,))
            subjects = []
            for s in base:
                have = {c: s.label.parent / f"{c}.nii.gz" for c in sources
                        if (s.label.parent / f"{c}.nii.gz").is_file()}
                if have:
                    subjects.append(Subject(s.id, {target: s.images[target], **have, "brain_mask": s.images["brain_mask"]},
                                            None, s.site, {**s.meta}))
        else:
            where = root / ("open_ms/mni" if kind == "mni" else "multicontrast")
            subjects = [s for s in folder(where, {c: f"{c}.nii.gz" for c in contrasts}, None,
                                          "patient*" if kind == "mni" else "*", skip_incomplete=True)]
        for s in subjects:
            out.append(Subject(s.id, s.images, None, s.site or kind,
                               {**s.meta, "kind": kind, "contrasts": [c for c in contrasts if c in s.images]}))
    return _finish(out, f"shared data {root} ({', '.join(kinds)})", "synthesis subjects")
