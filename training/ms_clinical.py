"""Adapters for the clinical MS cohort (``shared/data/wmh_ms_clinical``) and the combined
clinical + open_ms MNI subject list used to cross-validate and retrain ``wmh_ensemble``
(issue 20).

The clinical layout (``data/README.md``, section ``wmh_ms_clinical``)::

    <root>/subjects.csv                   subject, source, has_t1, has_t2, has_brain_mask, ...
    <root>/<id>/flair.nii.gz              FLAIR the masks were drawn on, slice-wise 0-1 by the source
    <root>/<id>/flair_raw.nii.gz          the same scan in scanner intensities (11 of 12 subjects)
    <root>/<id>/lesion.nii.gz             MS lesions (abWMH), 0/1 -- the training label
    <root>/<id>/nwmh.nii.gz               normal periventricular hyperintensity (5 subjects)
    <root>/<id>/t1.nii.gz, t2.nii.gz      co-registered onto the FLAIR grid (11 / 6 subjects)
    <root>/<id>/brain_mask.nii.gz         automatic brain mask of the source (6 subjects)
    <heads>/bashiri_<id>_flair/brain_mask.nii.gz   silver-standard brain mask, same grid

Decisions (stated here, tested in ``tests/test_ms_clinical.py``):

* **FLAIR file.** ``flair_raw.nii.gz`` (scanner intensities, what users give the model) when it
  exists; the source-normalised ``flair.nii.gz`` only for a subject without it (102313), marked
  ``meta["flair_file"] = "normalised"``. ``flair="normalised"`` takes ``flair.nii.gz`` always.
* **nWMH.** Background. ``lesion.nii.gz`` (abWMH only) is the label, so normal periventricular
  hyperintensity is 0 in the training target: the model is taught not to call caps and rims
  lesions, as the reference it is scored against. The file is kept as ``meta["nwmh"]`` for
  reporting false positives on it.
* **Brain mask for the z-score** (exposed as ``images["brain_mask"]``, the card's optional
  ``brain_mask`` input, so training and ``predict``/``zoo evaluate`` use the same mask): the
  source's ``brain_mask.nii.gz`` if present, else the silver mask of
  ``heads/bashiri_<id>_flair``; ``meta["brain_mask_source"]`` says which (``"given"`` or
  ``"silver:<case>"``). Subjects with neither (104252 and 105074: their silver FLAIR masks were
  rejected at QC) are skipped by default (``missing_mask="skip"``) or kept without a mask
  (``"keep"``: the card's ``mask_method`` then decides, e.g. a brain-extraction method).
* **Geometry.** Every file of a subject carries the FLAIR header; four subjects have a wrong
  world origin, so files are matched by voxel grid (shape and affine equal to the FLAIR's),
  never by world position.
* **Missing contrasts.** A subject without an input asked for (102313 has no T1/T2) is skipped
  with a logged warning: it serves the FLAIR-only variant only.

Nothing is read here except NIfTI headers (for the grid check) and ``subjects.csv``.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Sequence

from zoo import errors
from zoo.training.datasets import Subject, _existing_dir, _finish, _natural_key, kfold

log = logging.getLogger(__name__)

#: The card's optional brain-mask input (``zoo.preprocessing.pipeline.MASK_INPUT``).
MASK_KEY = "brain_mask"
#: Site of the clinical cohort (one 1.5 T scanner, Tabriz) and of the open_ms MNI cases.
CLINICAL_SITE, MNI_SITE = "tabriz", "ljubljana"
_LAYOUT = ("<root>/<id>/{flair_raw|flair, lesion, [t1, t2, brain_mask, nwmh]}.nii.gz "
           "+ <root>/subjects.csv (shared/data/wmh_ms_clinical)")
_CONTRASTS = ("flair", "t1", "t2")
MISSING_MASK_POLICIES = ("skip", "keep", "error")


def silver_mask(heads_root: str | Path | None, subject: str) -> Path | None:
    """The silver-standard FLAIR brain mask of clinical subject ``subject`` in ``heads/``
    (``heads/bashiri_<subject>_flair/brain_mask.nii.gz``), or ``None`` when absent."""
    if heads_root is None:
        return None
    path = Path(heads_root) / f"bashiri_{subject}_flair" / "brain_mask.nii.gz"
    return path if path.is_file() else None


def _same_voxel_grid(path: Path, ref: Path) -> bool:
    """True when ``path`` has the shape and affine (1e-4 mm) of ``ref`` (headers only)."""
    import nibabel as nib
    import numpy as np

    a, b = nib.load(str(path)), nib.load(str(ref))
    return tuple(a.shape[:3]) == tuple(b.shape[:3]) and np.allclose(a.affine, b.affine, atol=1e-4)


def wmh_ms_clinical(root: str | Path, inputs: Sequence[str] = ("flair", "t1"), *,
                    heads_root: str | Path | None = "auto", flair: str = "raw",
                    missing_mask: str = "skip") -> list[Subject]:
    """List the labelled subjects of ``shared/data/wmh_ms_clinical`` (see the module docstring).

    Args:
        root: the ``wmh_ms_clinical`` folder.
        inputs: contrasts in channel order, among ``flair``, ``t1``, ``t2``.
        heads_root: the ``heads`` folder with the silver masks; ``"auto"`` = ``root/../heads``
            when it exists; ``None`` = use given masks only.
        flair: ``"raw"`` (``flair_raw.nii.gz``, falling back to ``flair.nii.gz`` where absent)
            or ``"normalised"`` (``flair.nii.gz``, the source's slice-wise 0-1 FLAIR).
        missing_mask: what to do with a subject that has no brain mask: ``"skip"`` (logged),
            ``"keep"`` (no ``brain_mask`` image) or ``"error"``.

    Returns:
        Subjects sorted by ID; ``images`` holds ``inputs`` (+ ``brain_mask``), ``label`` is
        ``lesion.nii.gz``, ``site`` ``"tabriz"``, ``meta`` holds ``label_values``,
        ``brain_mask_source``, ``flair_file`` (``raw``/``normalised``), ``nwmh`` (path or
        None), ``source``, ``slice_thickness_mm`` (float, from ``subjects.csv``).

    Raises:
        InputNotFoundError: ``root`` or ``subjects.csv`` missing, or a listed subject's FLAIR or
            label missing.
        MissingModalityError: an input other than flair/t1/t2.
        GeometryError: a file is not on its subject's FLAIR voxel grid.
        InputError: ``missing_mask="error"`` and a subject has no mask; bad option values;
            no subject left.
    """
    unknown = [c for c in inputs if c not in _CONTRASTS]
    if unknown or not inputs or inputs[0] != "flair":
        raise errors.MissingModalityError(
            f"wmh_ms_clinical inputs must start with 'flair' and be among {_CONTRASTS}; got {list(inputs)}")
    if flair not in ("raw", "normalised"):
        raise errors.InputError(f"flair must be 'raw' or 'normalised', got {flair!r}")
    if missing_mask not in MISSING_MASK_POLICIES:
        raise errors.InputError(f"missing_mask must be one of {MISSING_MASK_POLICIES}, got {missing_mask!r}")
    root = _existing_dir(root, "wmh_ms_clinical", _LAYOUT)
    table = root / "subjects.csv"
    if not table.is_file():
        raise errors.InputNotFoundError(f"{table} not found; expected the layout {_LAYOUT}")
    if heads_root == "auto":
        heads_root = root.parent / "heads" if (root.parent / "heads").is_dir() else None
    with table.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    subjects = []
    for row in rows:
        sid = str(row["subject"]).strip()
        d = root / sid
        flair_path = d / "flair_raw.nii.gz"
        flair_file = "raw"
        if flair == "normalised" or not flair_path.is_file():
            flair_path, flair_file = d / "flair.nii.gz", "normalised"
        label = d / "lesion.nii.gz"
        for p in (flair_path, label):
            if not p.is_file():
                raise errors.InputNotFoundError(f"subject {sid}: {p} not found; expected the layout {_LAYOUT}")
        images = {"flair": flair_path}
        absent = [c for c in inputs[1:] if not (d / f"{c}.nii.gz").is_file()]
        if absent:
            log.warning("wmh_ms_clinical: skipping %s: no %s (usable for %s only)", sid, absent,
                        [c for c in inputs if c not in absent])
            continue
        images.update({c: d / f"{c}.nii.gz" for c in inputs[1:]})
        mask, mask_source = d / "brain_mask.nii.gz", "given"
        if not mask.is_file():
            mask, mask_source = silver_mask(heads_root, sid), f"silver:bashiri_{sid}_flair"
        if mask is None:
            msg = f"wmh_ms_clinical: subject {sid} has no brain mask (none given, no silver mask in {heads_root})"
            if missing_mask == "error":
                raise errors.InputError(msg + "; pass missing_mask='skip' or 'keep'")
            if missing_mask == "skip":
                log.warning("%s; skipped", msg)
                continue
            mask_source = None
        else:
            images[MASK_KEY] = mask
        nwmh = d / "nwmh.nii.gz"
        for name, p in [*images.items(), ("label", label), *([("nwmh", nwmh)] if nwmh.is_file() else [])]:
            if p != flair_path and not _same_voxel_grid(p, flair_path):
                raise errors.GeometryError(
                    f"subject {sid}: {p} is not on the voxel grid of {flair_path} (shape/affine differ); "
                    "every file of a subject must carry the FLAIR header (data/README.md)")
        subjects.append(Subject(sid, images, label, CLINICAL_SITE, {
            "label_values": {1: "lesion"}, "brain_mask_source": mask_source, "flair_file": flair_file,
            "nwmh": nwmh if nwmh.is_file() else None, "source": row.get("source"),
            "slice_thickness_mm": float(row["slice_thickness_mm"]) if row.get("slice_thickness_mm") else None,
            "nwmh_policy": "background"}))
    subjects.sort(key=lambda s: _natural_key(s.id))
    return _finish(subjects, f"wmh_ms_clinical folder {root}", _LAYOUT)


def wmh_cv_subjects(clinical_root: str | Path, open_ms_root: str | Path,
                    inputs: Sequence[str] = ("flair", "t1"), **kwargs) -> list[Subject]:
    """The clinical subjects (:func:`wmh_ms_clinical`) and the open_ms MNI subjects
    (:func:`zoo.training.datasets.open_ms`; skull-stripped, so no ``brain_mask`` image: the
    card's ``nonzero`` mask applies, ``meta["brain_mask_source"] = "nonzero"``) in one list,
    clinical first. ``kwargs`` go to :func:`wmh_ms_clinical`.

    Raises: everything the two adapters raise; InputError for an ID in both.
    """
    from zoo.training.datasets import open_ms

    clinical = wmh_ms_clinical(clinical_root, inputs, **kwargs)
    mni = [Subject(s.id, s.images, s.label, MNI_SITE, {**s.meta, "brain_mask_source": "nonzero"})
           for s in open_ms(open_ms_root, tuple(inputs))]
    return _finish(clinical + mni, f"{clinical_root} + {open_ms_root}", _LAYOUT)


def cv_folds(subjects: Sequence[Subject], k: int = 5, seed: int = 0) -> list[tuple[list[Subject], list[Subject]]]:
    """``k``-fold CV by subject, stratified by site (clinical vs MNI), so the two MNI subjects
    land in different folds (:func:`zoo.training.datasets.kfold`)."""
    return kfold(subjects, k, seed=seed, stratify_by="site")


def write_subjects_csv(subjects: Sequence[Subject], path: str | Path,
                       columns: Sequence[str] = ("flair", "t1", MASK_KEY)) -> Path:
    """Write ``subjects`` as a CSV that :func:`zoo.training.datasets.from_csv` reads back
    (``zoo train/evaluate --data <csv>``): ``subject, site, <columns>, label,
    brain_mask_source``; absolute paths; an empty cell where a subject lacks an image.

    Raises:
        ValueError: no subjects.
    """
    if not subjects:
        raise ValueError("write_subjects_csv: no subjects")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ["subject", "site", *columns, "label", "brain_mask_source"]
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for s in subjects:
            w.writerow([s.id, s.site or "", *[str(Path(s.images[c]).resolve()) if c in s.images else ""
                                              for c in columns],
                        str(Path(s.label).resolve()) if s.label else "", s.meta.get("brain_mask_source") or ""])
    tmp.replace(path)
    return path
