"""Dataset adapters and subject-level splits for training.

An adapter turns a dataset folder (or a CSV) into a list of :class:`Subject` records: one per
subject (patient), each with the paths of its input images and of its label. Nothing is read
here: loading, resampling and normalisation are the pipeline's job, so that training and
``predict`` cannot preprocess differently (``STYLE.md``, DLTK).

Splits are made at subject level only, never over slices, patches or nodules
(``practices.md`` §3). Every split function is deterministic given its seed and independent of
the order of the input list (subjects are sorted by ID before the seeded shuffle). Split
manifests (subject IDs per partition) are written with :func:`write_manifest`, read back with
:func:`read_manifest` and checked with :func:`check_disjoint`.

Adapters:

* :func:`wmh_challenge` -- the MICCAI 2017 WMH challenge layout (``wmh_ensemble.md`` §3);
* :func:`folder` -- one sub-folder per subject, files named or globbed inside it;
* :func:`from_csv` -- one row per subject, paths relative to the CSV;
* :func:`open_ms`, :func:`spine_chu` -- the layouts of ``shared/data`` (``data/README.md``).

Splits: :func:`kfold`, :func:`holdout`, :func:`leave_one_out`, :func:`leave_one_site_out`;
:func:`select` maps manifest IDs back to subjects.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Union

import yaml

from zoo import errors

log = logging.getLogger(__name__)

#: One split: ``(train, val)`` lists of subjects.
Split = tuple[list["Subject"], list["Subject"]]
#: A manifest: fold name -> partition name -> subject IDs, e.g.
#: ``{"fold0": {"train": ["a", "b"], "val": ["c"]}}``.
Manifest = dict[str, dict[str, list[str]]]
#: What a stratified split groups by: a :class:`Subject` attribute or ``meta`` key, a function
#: of the subject, or ``None`` (no stratification).
StratifyBy = Union[str, Callable[["Subject"], Any], None]

_GLOB_CHARS = re.compile(r"[*?\[]")


# --- the record ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Subject:
    """One subject (patient) of a dataset: where its images are, not the images themselves.

    Attributes:
        id: unique within a dataset; the unit of every split. For the WMH challenge
            ``"<site>/<subject-folder>"`` (e.g. ``"Utrecht/0"``), for :func:`folder` the
            subject folder's name, for :func:`from_csv` the subject column.
        images: input name -> file, e.g. ``{"flair": Path(...), "t1": Path(...)}``, in the order
            the inputs were asked for.
        label: the label file, or ``None`` for unlabelled data.
        site: scanner / centre, the stratification unit of the splits; ``None`` if unknown.
        meta: free-form extras (e.g. ``label_values``, extra CSV columns).

    Equality and hashing use ``id`` only (``images`` and ``meta`` are dicts), so subjects can be
    put in sets and compared across folds. The record is frozen; do not mutate its dicts.
    """

    id: str
    images: dict[str, Path] = field(compare=False)
    label: Path | None = field(default=None, compare=False)
    site: str | None = field(default=None, compare=False)
    meta: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"Subject id must be a non-empty string, got {self.id!r}")
        object.__setattr__(self, "images", {str(k): Path(v) for k, v in self.images.items()})
        if self.label is not None:
            object.__setattr__(self, "label", Path(self.label))


# --- helpers -------------------------------------------------------------------------------
def _natural_key(text: str) -> tuple:
    """Sort key that orders ``"2"`` before ``"10"`` (challenge subject folders are numbers)."""
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text))


def _existing_dir(root: str | Path, what: str, layout: str) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise errors.InputNotFoundError(
            f"{what} folder {root} does not exist; expected the layout {layout}. "
            "Check the path (or set it in the recipe).")
    if not root.is_dir():
        raise errors.InputError(
            f"{what} root {root} is a file, not a folder; expected the layout {layout}.")
    return root


def _check_unique(subjects: Sequence[Subject], where: str) -> None:
    counts = Counter(s.id for s in subjects)
    dups = sorted((i for i, n in counts.items() if n > 1), key=_natural_key)
    if dups:
        raise errors.InputError(f"{where}: subject IDs must be unique, found duplicates {dups}.")


def _finish(subjects: list[Subject], where: str, layout: str) -> list[Subject]:
    if not subjects:
        raise errors.InputError(
            f"no subjects found in {where}; expected the layout {layout}. Check the path, "
            "the file names and the subject pattern.")
    _check_unique(subjects, where)
    return subjects


# --- MICCAI 2017 WMH challenge -------------------------------------------------------------
#: Input name -> file inside a challenge subject folder (``wmh_ensemble.md`` §3).
WMH_FILES: dict[str, str] = {"flair": "pre/FLAIR.nii.gz", "t1": "pre/T1.nii.gz"}
#: Label values of ``wmh.nii.gz``; 0 is background.
WMH_LABEL_VALUES: dict[int, str] = {1: "WMH", 2: "other pathology"}
_WMH_LAYOUT = "<root>/<site>/<subject-id>/{pre/FLAIR.nii.gz, pre/T1.nii.gz, wmh.nii.gz}"
#: FLAIR voxel spacing (x, y, z) in mm, rounded to 3 decimals -> site, as in the authors' code.
WMH_SITE_SPACINGS: dict[tuple[float, float, float], str] = {
    (0.958, 0.958, 3.0): "Utrecht",
    (1.0, 1.0, 3.0): "Singapore",
    (1.2, 0.977, 3.0): "GE3T",
}


def wmh_challenge(root: str | Path, inputs: Sequence[str] = ("flair", "t1"), *,
                  skip_incomplete: bool = False) -> list[Subject]:
    """List the subjects of a MICCAI 2017 WMH Segmentation Challenge folder.

    Layout (``wmh_ensemble.md`` §3)::

        <root>/<site>/<subject-id>/pre/FLAIR.nii.gz   bias-corrected FLAIR (reference grid)
        <root>/<site>/<subject-id>/pre/T1.nii.gz      T1 on the FLAIR grid
        <root>/<site>/<subject-id>/orig/...           unprocessed originals (ignored)
        <root>/<site>/<subject-id>/wmh.nii.gz         labels 0 background, 1 WMH, 2 other pathology

    A subject is a folder that holds ``wmh.nii.gz``; folders without it are ignored. The
    search is recursive, so a subject folder may also sit deeper (a release that groups scanners
    under a centre folder) or ``root`` may be a single site folder: the site is always the name
    of the subject folder's parent.

    Label 2 ("other pathology") is left in the file: the training pipeline maps it to
    background (D7) and evaluation removes predictions on it (``metrics.md``). Each subject
    carries ``meta["label_values"] = {1: "WMH", 2: "other pathology"}`` to say so.

    Args:
        root: the challenge folder (e.g. the one holding ``Utrecht/``, ``Singapore/``, ``GE3T/``).
        inputs: input names to collect, from ``"flair"`` (``pre/FLAIR.nii.gz``) and ``"t1"``
            (``pre/T1.nii.gz``), in channel order.
        skip_incomplete: skip a subject whose input file is missing (with a logged warning)
            instead of raising.

    Returns:
        Subjects sorted by site, then numerically by subject folder; ``id`` is
        ``"<site>/<subject-id>"``, ``site`` the parent folder name, ``label`` ``wmh.nii.gz``.

    Raises:
        InputNotFoundError: ``root`` does not exist, or a subject lacks an input file (unless
            ``skip_incomplete``); the message names the subject and the file.
        MissingModalityError: an input name other than ``flair`` / ``t1``.
        InputError: ``root`` is a file, holds no ``wmh.nii.gz`` at all, or two subject folders
            give the same ``<site>/<subject-id>``.
    """
    unknown = [name for name in inputs if name not in WMH_FILES]
    if unknown or not inputs:
        raise errors.MissingModalityError(
            f"WMH challenge inputs must be among {sorted(WMH_FILES)}, got {list(inputs)}.")
    root = _existing_dir(root, "WMH challenge", _WMH_LAYOUT)
    subjects = []
    for label in sorted(root.rglob("wmh.nii.gz")):
        subject_dir = label.parent
        if subject_dir.name in ("pre", "orig") or not label.is_file():
            continue
        site = subject_dir.parent.name
        sid = f"{site}/{subject_dir.name}"
        images = {name: subject_dir / WMH_FILES[name] for name in inputs}
        missing = [str(p.relative_to(subject_dir)) for p in images.values() if not p.is_file()]
        if missing:
            msg = (f"WMH subject {sid} ({subject_dir}) has wmh.nii.gz but lacks {missing}; "
                   f"expected the layout {_WMH_LAYOUT}.")
            if skip_incomplete:
                log.warning("skipping %s", msg)
                continue
            raise errors.InputNotFoundError(
                msg + " Restore the files or pass skip_incomplete=True.")
        subjects.append(Subject(id=sid, images=images, label=label, site=site,
                                meta={"label_values": dict(WMH_LABEL_VALUES)}))
    subjects.sort(key=lambda s: (_natural_key(s.site or ""), _natural_key(s.id)))
    return _finish(subjects, f"WMH challenge folder {root}", _WMH_LAYOUT)


def site_from_spacing(spacing_xyz: Sequence[float]) -> str | None:
    """The challenge site of a FLAIR scan from its voxel spacing, by the authors' rule.

    The spacing ``(x, y, z)`` in mm (nibabel's ``header.get_zooms()[:3]`` order) is rounded to
    3 decimals and looked up in :data:`WMH_SITE_SPACINGS`: Utrecht ``(0.958, 0.958, 3.0)``,
    Singapore ``(1.0, 1.0, 3.0)``, GE3T ``(1.2, 0.977, 3.0)`` (``wmh_ensemble.md`` §3).

    Returns:
        ``"Utrecht"``, ``"Singapore"``, ``"GE3T"``, or ``None`` for any other spacing (unseen
        scanners, resampled images).

    Raises:
        ValueError: ``spacing_xyz`` does not have 3 values.
    """
    values = tuple(float(v) for v in spacing_xyz)
    if len(values) != 3:
        raise ValueError(f"spacing_xyz must have 3 values (x, y, z), got {values}")
    return WMH_SITE_SPACINGS.get(tuple(round(v, 3) + 0.0 for v in values))


# --- generic folder and CSV ----------------------------------------------------------------
def _find(subject_dir: Path, pattern: str) -> tuple[Path | None, str]:
    """The file ``pattern`` names inside ``subject_dir`` (a name or a glob matching one file)."""
    if not _GLOB_CHARS.search(pattern):
        path = subject_dir / pattern
        return (path if path.is_file() else None), "missing"
    matches = sorted(p for p in subject_dir.glob(pattern) if p.is_file())
    if len(matches) == 1:
        return matches[0], ""
    if not matches:
        return None, "no file matches"
    names = [str(p.relative_to(subject_dir)) for p in matches]
    return None, f"several files match ({names})"


def folder(root: str | Path, inputs: Mapping[str, str], label: str | None,
           subject_glob: str = "*", *, site: str | None = None, meta: Mapping | None = None,
           skip_incomplete: bool = False) -> list[Subject]:
    """List the subjects of a folder with one sub-folder per subject.

    Layout::

        <root>/<subject>/<inputs[name]>     for every input name, e.g. flair.nii.gz
        <root>/<subject>/<label>            e.g. lesion.nii.gz

    Args:
        root: the dataset folder.
        inputs: input name -> file name, or glob pattern, relative to the subject folder, e.g.
            ``{"flair": "flair.nii.gz", "t1": "t1*.nii.gz"}``. A pattern must match exactly one
            file. The order is the channel order.
        label: the label file name or pattern, or ``None`` for unlabelled data.
        subject_glob: which sub-folders of ``root`` are subjects (e.g. ``"patient*"``); hidden
            folders and files are never subjects.
        site: site of every subject (``None`` if unknown).
        meta: extras copied into every subject's ``meta``.
        skip_incomplete: skip a subject with a missing file (with a logged warning) instead of
            raising.

    Returns:
        Subjects sorted naturally by folder name; ``id`` is the folder name.

    Raises:
        InputNotFoundError: ``root`` does not exist, or a subject lacks a file (unless
            ``skip_incomplete``); the message names the subject and the file.
        InputError: ``root`` is a file, a pattern matches several files in a subject, no
            sub-folder matches ``subject_glob``, or every subject was skipped.
        ValueError: ``inputs`` is empty.
    """
    if not inputs:
        raise ValueError("folder(): inputs must name at least one input file")
    wanted = dict(inputs) | ({"label": label} if label is not None else {})
    layout = "<root>/<subject>/{" + ", ".join(wanted.values()) + "}"
    root = _existing_dir(root, "dataset", layout)
    dirs = sorted((d for d in root.glob(subject_glob) if d.is_dir() and not d.name.startswith(".")),
                  key=lambda d: _natural_key(d.name))
    subjects = []
    for subject_dir in dirs:
        found, problems = {}, []
        for name, pattern in wanted.items():
            path, why = _find(subject_dir, pattern)
            if path is None:
                problems.append((why, pattern))
            found[name] = path
        if problems:
            what = "; ".join(f"{pattern}: {why}" for why, pattern in problems)
            msg = (f"subject {subject_dir.name} ({subject_dir}): {what}; expected the layout "
                   f"{layout}.")
            if skip_incomplete:
                log.warning("skipping %s", msg)
                continue
            err = (errors.InputNotFoundError if all(w in ("missing", "no file matches")
                                                    for w, _ in problems) else errors.InputError)
            raise err(msg + " Add the files, fix the patterns, or pass skip_incomplete=True.")
        label_path = found.pop("label") if label is not None else None
        subjects.append(Subject(id=subject_dir.name, images=found, label=label_path, site=site,
                                meta=dict(meta or {})))
    return _finish(subjects, f"dataset folder {root} (subjects {subject_glob!r})", layout)


def from_csv(csv_path: str | Path, inputs: Sequence[str], label_column: str | None = "label",
             subject_column: str = "subject", site_column: str | None = "site", *,
             skip_incomplete: bool = False,
             optional_images: Sequence[str] = ("brain_mask",)) -> list[Subject]:
    """List subjects from a CSV file with one row per subject.

    Layout: a header row, then one row per subject, e.g.::

        subject,site,flair,t1,label
        s01,utrecht,s01/FLAIR.nii.gz,s01/T1.nii.gz,s01/wmh.nii.gz

    Relative paths are resolved against the CSV's folder; absolute paths are kept. The input
    columns are named by ``inputs`` (the column name is the input name). An empty label cell
    gives ``label=None``; an empty site cell ``site=None``. Other columns go to ``meta`` as
    strings.

    Args:
        csv_path: the CSV file (comma separated, UTF-8).
        inputs: input column names, in channel order.
        label_column: the label column, or ``None`` for unlabelled data.
        subject_column: the subject ID column.
        site_column: the site column, or ``None`` if the CSV has none.
        skip_incomplete: skip a row whose file is missing (with a logged warning) instead of
            raising.
        optional_images: columns that, when present and non-empty in a row, add an image of
            that name (default ``brain_mask``: the card's optional brain-mask input, so the
            z-score mask of training and prediction is the same file).

    Returns:
        Subjects in row order.

    Raises:
        InputNotFoundError: the CSV does not exist, or a listed file does not (unless
            ``skip_incomplete``); the message names the subject, the column and the path.
        InputError: a required column is missing (the message lists the columns found), an ID
            or input cell is empty, IDs repeat, or the CSV has no rows.
        ValueError: ``inputs`` is empty.
    """
    if not inputs:
        raise ValueError("from_csv(): inputs must name at least one input column")
    csv_path = Path(csv_path).expanduser()
    required = [subject_column, *inputs] + [c for c in (label_column, site_column) if c]
    layout = "a CSV with the columns " + ", ".join(required)
    if not csv_path.is_file():
        raise errors.InputNotFoundError(
            f"subject CSV {csv_path} does not exist (or is not a file); expected {layout}.")
    base = csv_path.parent
    with csv_path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in required if c not in columns]
        if missing:
            raise errors.InputError(
                f"subject CSV {csv_path} lacks the column(s) {missing}; found {columns}. "
                "Rename the columns or pass the column names (inputs=, label_column=, "
                "subject_column=, site_column=; None for no label or site).")
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    subjects = []
    for line, row in enumerate(rows, start=2):
        sid = row[subject_column]
        if not sid:
            raise errors.InputError(
                f"subject CSV {csv_path} line {line}: empty {subject_column!r}.")
        empty = [c for c in inputs if not row[c]]
        if empty:
            raise errors.InputError(
                f"subject CSV {csv_path} line {line}: subject {sid} has empty input "
                f"cell(s) {empty}.")
        paths = {c: base / row[c] for c in inputs}
        paths.update({c: base / row[c] for c in optional_images if c not in inputs and row.get(c)})
        label_path = base / row[label_column] if label_column and row[label_column] else None
        listed = {**paths, **({label_column: label_path} if label_path else {})}
        absent = [f"{c}={p}" for c, p in listed.items() if not p.is_file()]
        if absent:
            msg = f"subject CSV {csv_path} line {line}: subject {sid}: file(s) not found: {absent}."
            if skip_incomplete:
                log.warning("skipping %s", msg)
                continue
            raise errors.InputNotFoundError(
                msg + " Paths are relative to the CSV's folder; fix them or pass "
                "skip_incomplete=True.")
        extra = {k: v for k, v in row.items() if k and k not in required and k not in paths}
        subjects.append(Subject(id=sid, images=paths, label=label_path,
                                site=(row[site_column] or None) if site_column else None,
                                meta=extra))
    return _finish(subjects, f"subject CSV {csv_path}", layout)


# --- the shared data -----------------------------------------------------------------------
def open_ms(root: str | Path, inputs: Sequence[str] = ("flair", "t1"), **kwargs) -> list[Subject]:
    """The Ljubljana MS patients in MNI space (``shared/data/open_ms/mni``, ``data/README.md``).

    Layout: ``<root>/patientNN/{flair,t1,t2,t1post,lesion}.nii.gz``, all on one grid; the
    label ``lesion.nii.gz`` is 0/1 (``meta["label_values"] = {1: "lesion"}``). Site is
    ``"ljubljana"``.

    Args:
        root: the ``open_ms/mni`` folder.
        inputs: which of ``flair``, ``t1``, ``t2``, ``t1post`` to collect, in channel order.
        **kwargs: passed to :func:`folder` (e.g. ``skip_incomplete``).

    Returns:
        One subject per ``patient*`` folder, ``id`` the folder name (e.g. ``"patient07"``).

    Raises:
        Everything :func:`folder` raises.
    """
    return folder(root, {name: f"{name}.nii.gz" for name in inputs}, "lesion.nii.gz",
                  subject_glob="patient*", site="ljubljana",
                  meta={"label_values": {1: "lesion"}}, **kwargs)


def spine_chu(root: str | Path, **kwargs) -> list[Subject]:
    """The Chu et al. 2015 lumbar spine cases (``shared/data/spine_chu``, ``data/README.md``).

    Layout: ``<root>/caseNN/{image,labels,mask_th12_l5}.nii.gz``. The input ``t2`` is
    ``image.nii.gz`` (sagittal T2w, 8 bit); the label is ``mask_th12_l5.nii.gz`` (0/1, T12-L5).
    The per-vertebra labels stay available as ``meta["vertebra_labels"]`` (1..7 = T11..L5).
    Site is ``"chu2015"``.

    Args:
        root: the ``spine_chu`` folder.
        **kwargs: passed to :func:`folder` (e.g. ``skip_incomplete``).

    Returns:
        One subject per ``case*`` folder, ``id`` the folder name (e.g. ``"case02"``).

    Raises:
        Everything :func:`folder` raises.
    """
    subjects = folder(root, {"t2": "image.nii.gz"}, "mask_th12_l5.nii.gz", subject_glob="case*",
                      site="chu2015", meta={"label_values": {1: "T12-L5"}}, **kwargs)
    out = []
    for s in subjects:
        labels = s.label.parent / "labels.nii.gz"
        extra = {"vertebra_labels": labels} if labels.is_file() else {}
        out.append(replace(s, meta={**s.meta, **extra}))
    return out


def heads(root: str | Path, contrasts: Sequence[str] | None = None) -> list[Subject]:
    """Raw head MRIs with silver-standard brain masks (``shared/data/heads``, ``data/README.md``):
    the ``skull_stripping`` training data.

    Layout: ``<root>/cases.csv`` (columns ``case, subject, source, contrast, ...``) and
    ``<root>/<case>/{image,brain_mask}.nii.gz``. One record per **case** (one contrast of one
    scan): input ``image``, label ``brain_mask.nii.gz``; ``meta`` holds ``subject`` (the person:
    contrasts of one person are separate cases, so split with :func:`kfold_grouped` by
    ``meta["subject"]``), ``contrast`` (T1w, T2w, FLAIR) and ``label_values``. ``site`` is the
    source prefix of the case name (``openms``, ``bashiri``, ...).

    Args:
        root: the ``heads`` folder.
        contrasts: keep only these contrasts (``None``: all).
    Raises:
        InputNotFoundError: ``root`` or ``cases.csv`` or a case file is missing.
        InputError: ``cases.csv`` lacks the ``case``/``subject``/``contrast`` columns.
    """
    import pandas as pd

    root = _existing_dir(root, "heads dataset", "<root>/cases.csv + <root>/<case>/{image,brain_mask}.nii.gz")
    table_path = root / "cases.csv"
    if not table_path.is_file():
        raise errors.InputNotFoundError(f"{table_path} not found; the heads layout needs cases.csv")
    table = pd.read_csv(table_path, dtype=str)
    missing = {"case", "subject", "contrast"} - set(table.columns)
    if missing:
        raise errors.InputError(f"{table_path}: missing columns {sorted(missing)}")
    out = []
    for row in table.itertuples(index=False):
        if contrasts is not None and row.contrast not in contrasts:
            continue
        case_dir = root / row.case
        image, label = case_dir / "image.nii.gz", case_dir / "brain_mask.nii.gz"
        for f in (image, label):
            if not f.is_file():
                raise errors.InputNotFoundError(f"case {row.case}: {f} not found (heads layout)")
        out.append(Subject(id=row.case, images={"image": image}, label=label, site=row.case.split("_")[0],
                           meta={"subject": row.subject, "contrast": row.contrast,
                                 "label_values": {1: "brain"}}))
    return _finish(out, f"heads dataset {root}", "<root>/<case>/{image,brain_mask}.nii.gz")


# --- splits --------------------------------------------------------------------------------
def _stratum(subject: Subject, by: StratifyBy) -> Any:
    if by is None:
        return None
    if callable(by):
        return by(subject)
    if by in ("site", "id", "label"):
        return getattr(subject, by)
    return subject.meta.get(by)


def _strata(subjects: Sequence[Subject], by: StratifyBy, rng: random.Random) -> list[list[Subject]]:
    """Subjects grouped by stratum (strata sorted), each group sorted by ID, then shuffled."""
    groups: dict[str, list[Subject]] = {}
    for s in sorted(subjects, key=lambda s: _natural_key(s.id)):
        groups.setdefault(str(_stratum(s, by)), []).append(s)
    out = []
    for key in sorted(groups, key=_natural_key):
        group = groups[key]
        rng.shuffle(group)
        out.append(group)
    return out


def _checked(subjects: Sequence[Subject], min_n: int, what: str) -> list[Subject]:
    subjects = list(subjects)
    _check_unique(subjects, what)
    if len(subjects) < min_n:
        raise ValueError(f"{what} needs at least {min_n} subjects, got {len(subjects)}")
    return subjects


def _in_order(subjects: Sequence[Subject], ids: set[str]) -> list[Subject]:
    return [s for s in subjects if s.id in ids]


def kfold(subjects: Sequence[Subject], k: int, seed: int = 0,
          stratify_by: StratifyBy = "site") -> list[Split]:
    """K-fold cross-validation at subject level (``practices.md`` §3).

    Subjects are grouped by stratum (default: ``site``; the scanner is the stratification unit,
    ``wmh_ensemble.md`` §3), each group is sorted by ID and shuffled with ``seed``, then the
    groups are dealt round-robin into ``k`` folds with one running counter. So each fold's
    count of every site differs from any other fold's by at most one, and so do the fold sizes.

    Args:
        subjects: the subjects; IDs must be unique. Their order does not affect the split.
        k: number of folds, ``2 <= k <= len(subjects)``.
        seed: seed of the shuffle; the same seed gives the same folds.
        stratify_by: ``"site"``, another :class:`Subject` attribute or ``meta`` key, a function
            of the subject, or ``None`` for no stratification.

    Returns:
        ``k`` pairs ``(train, val)``; every subject is in exactly one ``val``; both lists keep
        the input order.

    Raises:
        ValueError: ``k`` out of range, or duplicate subject IDs (``InputError``).
    """
    subjects = _checked(subjects, 2, "kfold")
    if not isinstance(k, int) or not 2 <= k <= len(subjects):
        raise ValueError(f"kfold: k must be an integer in [2, {len(subjects)}], got {k!r}")
    rng = random.Random(seed)
    val_ids: list[set[str]] = [set() for _ in range(k)]
    i = 0
    for group in _strata(subjects, stratify_by, rng):
        for s in group:
            val_ids[i % k].add(s.id)
            i += 1
    return [(_in_order(subjects, {s.id for s in subjects} - ids), _in_order(subjects, ids))
            for ids in val_ids]


def kfold_grouped(subjects: Sequence[Subject], k: int, seed: int = 0, group: str = "subject",
                  stratify_by: StratifyBy = "site") -> list[Split]:
    """K-fold cross-validation with every group (a person's scans: ``meta[group]``) in one fold.

    The groups are split with :func:`kfold` (one stand-in record per group, stratified by the
    ``stratify_by`` value of its first record, same seed rule), then expanded back to their
    records, so no person is in the training and the validation part of one fold (e.g. the
    T1w, T2w and FLAIR cases of one subject of ``heads``).

    Returns:
        ``k`` pairs ``(train, val)`` of the records, input order kept.
    Raises:
        ValueError: fewer groups than ``k``; a record without ``meta[group]``.
    """
    subjects = list(subjects)
    members: dict[str, list[Subject]] = {}
    for s in subjects:
        if group not in s.meta:
            raise ValueError(f"kfold_grouped: subject {s.id} has no meta[{group!r}]")
        members.setdefault(str(s.meta[group]), []).append(s)
    stand_ins = [replace(recs[0], id=gid, meta={**recs[0].meta}) for gid, recs in members.items()]
    folds = []
    for _, val_groups in kfold(stand_ins, k, seed, stratify_by):
        val_ids = {s.id for g in val_groups for s in members[g.id]}
        folds.append((_in_order(subjects, {s.id for s in subjects} - val_ids), _in_order(subjects, val_ids)))
    return folds


def holdout(subjects: Sequence[Subject], n_val: int, seed: int = 0,
            stratify_by: StratifyBy = "site") -> Split:
    """One train/validation split at subject level, stratified (``practices.md`` §3).

    ``n_val`` is shared among the strata in proportion to their size (largest remainder; ties
    go to the larger, then the first stratum), and each stratum's validation subjects are drawn
    after a seeded shuffle. E.g. 60 challenge subjects, 20 per site, ``n_val=12`` give 4 per
    site (``wmh_ensemble.md`` §3).

    Args:
        subjects: the subjects; IDs must be unique. Their order does not affect the split.
        n_val: number of validation subjects, ``1 <= n_val < len(subjects)``.
        seed: seed of the shuffle.
        stratify_by: as in :func:`kfold`.

    Returns:
        ``(train, val)``, both in input order.

    Raises:
        ValueError: ``n_val`` out of range, or duplicate subject IDs (``InputError``).
    """
    subjects = _checked(subjects, 2, "holdout")
    n = len(subjects)
    if not isinstance(n_val, int) or not 1 <= n_val < n:
        raise ValueError(f"holdout: n_val must be an integer in [1, {n - 1}], got {n_val!r}")
    groups = _strata(subjects, stratify_by, random.Random(seed))
    quotas = [n_val * len(g) // n for g in groups]
    order = sorted(range(len(groups)),
                   key=lambda j: (-(n_val * len(groups[j]) % n), -len(groups[j]), j))
    for j in order[: n_val - sum(quotas)]:
        quotas[j] += 1
    val_ids = {s.id for g, q in zip(groups, quotas) for s in g[:q]}
    return _in_order(subjects, {s.id for s in subjects} - val_ids), _in_order(subjects, val_ids)


def leave_one_out(subjects: Sequence[Subject]) -> list[Split]:
    """Leave-one-subject-out cross-validation.

    Returns:
        One ``(train, [subject])`` pair per subject, in input order.

    Raises:
        ValueError: fewer than 2 subjects, or duplicate subject IDs (``InputError``).
    """
    subjects = _checked(subjects, 2, "leave_one_out")
    return [([t for t in subjects if t.id != s.id], [s]) for s in subjects]


def leave_one_site_out(subjects: Sequence[Subject]) -> list[Split]:
    """Leave-one-site-out cross-validation, for generalisation claims (``practices.md`` §3).

    Returns:
        One ``(train, val)`` pair per site, sites in sorted order; ``val`` holds all subjects of
        that site, ``train`` all others, both in input order.

    Raises:
        ValueError: a subject has no site, fewer than 2 sites, or duplicate subject IDs
            (``InputError``).
    """
    subjects = _checked(subjects, 2, "leave_one_site_out")
    no_site = [s.id for s in subjects if s.site is None]
    if no_site:
        raise ValueError(f"leave_one_site_out: subjects without a site: {no_site[:10]}")
    sites = sorted({s.site for s in subjects}, key=_natural_key)
    if len(sites) < 2:
        raise ValueError(f"leave_one_site_out needs at least 2 sites, got {sites}")
    return [([s for s in subjects if s.site != site], [s for s in subjects if s.site == site])
            for site in sites]


def select(subjects: Iterable[Subject], ids: Iterable[str]) -> list[Subject]:
    """The subjects with the given IDs, in the order of ``ids`` (e.g. one manifest partition).

    Raises:
        InputError: an ID is not among ``subjects`` (the manifest and the data disagree).
    """
    by_id = {s.id: s for s in subjects}
    ids = list(ids)
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise errors.InputError(
            f"{len(unknown)} subject ID(s) of the manifest are not in the dataset: {unknown[:10]}. "
            "Check that the manifest belongs to this dataset folder.")
    return [by_id[i] for i in ids]


# --- manifests -----------------------------------------------------------------------------
def _ids(part: Iterable[Subject | str]) -> list[str]:
    return [p.id if isinstance(p, Subject) else str(p) for p in part]


def _as_manifest(splits: Any) -> Manifest:
    """Normalise splits (a list of ``(train, val[, test])`` or a mapping) into a manifest."""
    if isinstance(splits, Mapping):
        items = list(splits.items())
    elif isinstance(splits, Sequence) and not isinstance(splits, str):
        items = [(f"fold{i}", split) for i, split in enumerate(splits)]
    else:
        raise ValueError(f"splits must be a list of (train, val) pairs or a mapping, "
                         f"got {type(splits).__name__}")
    manifest: Manifest = {}
    for name, split in items:
        if isinstance(split, Mapping):
            manifest[str(name)] = {str(p): _ids(v) for p, v in split.items()}
        elif isinstance(split, Sequence) and len(split) in (2, 3):
            manifest[str(name)] = dict(zip(("train", "val", "test"), map(_ids, split)))
        else:
            raise ValueError(f"split {name!r} must be (train, val), (train, val, test) or a "
                             f"mapping partition -> IDs, got {type(split).__name__}")
    return manifest


def check_disjoint(manifest: Any) -> None:
    """Check that no subject is in two partitions of one fold (``practices.md`` §3).

    Args:
        manifest: a manifest (``{"fold0": {"train": [...], "val": [...]}}``), or splits as
            accepted by :func:`write_manifest`.

    Raises:
        ValueError: an ID is in two partitions of a fold, or twice in one partition; the
            message names the fold, the partitions and the IDs.
    """
    for fold, parts in _as_manifest(manifest).items():
        where: dict[str, str] = {}
        for part, ids in parts.items():
            dups = sorted({i for i in ids if ids.count(i) > 1})
            if dups:
                raise ValueError(f"manifest fold {fold!r}: partition {part!r} lists {dups} twice")
            for i in ids:
                if i in where:
                    clash = sorted(set(ids) & set(parts[where[i]]))
                    raise ValueError(f"manifest fold {fold!r}: subject(s) {clash[:10]} are in "
                                     f"both {where[i]!r} and {part!r}; splits must be at "
                                     "subject level with disjoint partitions")
                where[i] = part


def write_manifest(path: str | Path, splits: Any) -> Path:
    """Write a split manifest: the subject IDs of each partition of each fold.

    Format (JSON for ``.json``, YAML for ``.yaml``/``.yml``)::

        fold0: {train: [id, ...], val: [id, ...]}
        fold1: ...

    Args:
        path: the file to write (its folder is created).
        splits: the output of :func:`kfold` / :func:`leave_one_out` / :func:`leave_one_site_out`
            (folds named ``fold0``, ``fold1``, ...), ``[holdout(...)]``, or a mapping fold name
            -> ``(train, val)`` or partition -> subjects. Subjects or ID strings.

    Returns:
        ``path``.

    Raises:
        ValueError: the splits are malformed or not disjoint (see :func:`check_disjoint`), or
            the suffix is not ``.json``, ``.yaml`` or ``.yml``.
    """
    path = Path(path)
    manifest = _as_manifest(splits)
    check_disjoint(manifest)
    suffix = path.suffix.lower()
    if suffix == ".json":
        text = json.dumps(manifest, indent=2) + "\n"
    elif suffix in (".yaml", ".yml"):
        text = yaml.safe_dump(manifest, sort_keys=False, default_flow_style=None, width=100)
    else:
        raise ValueError(f"manifest {path}: use a .json, .yaml or .yml file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def read_manifest(path: str | Path, check: bool = True) -> Manifest:
    """Read a manifest written by :func:`write_manifest` (JSON or YAML, chosen by content).

    Args:
        path: the manifest file.
        check: also run :func:`check_disjoint`.

    Returns:
        ``{fold: {partition: [subject IDs]}}`` with IDs as strings, in file order.

    Raises:
        InputNotFoundError: the file does not exist.
        RecipeError: the file is not valid YAML/JSON or not fold -> partition -> list of IDs.
        ValueError: ``check`` and the partitions of a fold overlap.
    """
    path = Path(path)
    if not path.is_file():
        raise errors.InputNotFoundError(f"split manifest {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # YAML reads JSON too
    except yaml.YAMLError as exc:
        raise errors.RecipeError(f"split manifest {path} is not valid YAML/JSON: {exc}") from exc
    shape = "{fold: {partition: [subject IDs]}}"
    if not isinstance(data, dict) or not data:
        raise errors.RecipeError(
            f"split manifest {path}: expected {shape}, got {type(data).__name__}")
    manifest: Manifest = {}
    for fold, parts in data.items():
        if not isinstance(parts, dict) or not all(isinstance(v, list) for v in parts.values()):
            raise errors.RecipeError(f"split manifest {path}: fold {fold!r} is not {shape}")
        manifest[str(fold)] = {str(p): [str(i) for i in ids] for p, ids in parts.items()}
    if check:
        check_disjoint(manifest)
    return manifest


#: Partition names a manifest may use for the held-out part (``val`` is the project's own).
VALIDATION_NAMES = ("val", "validation")


def manifest_part(path: str | Path, part: str, fold: str | None = None) -> list[str]:
    """The subject IDs of one partition of one fold of a manifest (:func:`read_manifest`).

    Args:
        path: the manifest file.
        part: ``train``, ``val`` (alias ``validation``) or another partition name.
        fold: the fold; None takes the manifest's only fold.
    Raises:
        RecipeError: ``fold`` is None and the manifest has several folds, or the fold/partition
            is not in the manifest (the message lists what is).
    """
    manifest = read_manifest(path)
    if fold is None:
        if len(manifest) != 1:
            raise errors.RecipeError(f"split manifest {path} has folds {list(manifest)}; name one")
        fold = next(iter(manifest))
    if fold not in manifest:
        raise errors.RecipeError(f"split manifest {path} has no fold {fold!r}; it has {list(manifest)}")
    parts = manifest[fold]
    names = VALIDATION_NAMES if part in VALIDATION_NAMES else (part,)
    for name in names:
        if name in parts:
            return list(parts[name])
    raise errors.RecipeError(f"split manifest {path}, fold {fold!r}: no partition {part!r}; it has {list(parts)}")


# --- Chu et al. 2015, the authors' mirror layout (spec spine_vertebrae.md §3) -------------------
#: ``meta["label_rule"]`` of subjects whose label still holds Th11 (removed when it is read).
DROP_TH11 = "drop_th11"


def chu2015(root: str | Path) -> list[Subject]:
    """The Chu et al. 2015 lumbar spine set in the layout of the authors' fastMONAI mirror::

        <root>/img/<name>.nii.gz     sagittal T2w image
        <root>/seg/<name>.nii.gz     label with the same file name (Th11-L5, per-vertebra or binary)

    The subject id is the text after the last ``_`` of the name (``Img_07`` -> ``"07"``), the
    input is ``t2``, and ``meta["label_rule"] = "drop_th11"``: :func:`th12_l5_mask` removes Th11
    when the label is read (spec §3 adapter rule). Site ``"chu2015"``.

    Raises:
        InputNotFoundError: ``root/img`` is missing; InputError: an image without its label,
        or duplicate ids.
    """
    base = _existing_dir(root, "Chu et al. 2015 dataset", "chu2015")
    img_dir, seg_dir = base / "img", base / "seg"
    if not img_dir.is_dir():
        raise errors.InputNotFoundError(f"{base}: no img/ folder (layout img/<name>.nii.gz + seg/<name>.nii.gz)")
    subjects = []
    for img in sorted(img_dir.glob("*.nii*"), key=lambda p: _natural_key(p.name)):
        seg = seg_dir / img.name
        if not seg.is_file():
            raise errors.InputError(f"{img}: no label {seg} (same file name under seg/)")
        stem = img.name.split(".nii")[0]
        subjects.append(Subject(stem.rsplit("_", 1)[-1], {"t2": img}, seg, "chu2015",
                                {"label_values": {1: "T12-L5"}, "label_rule": DROP_TH11}))
    return _finish(subjects, str(base), "chu2015")


def th12_l5_mask(label: Any, affine: Any, rule: str | None = DROP_TH11) -> tuple[Any, dict]:
    """The T12-L5 vertebral-body mask from a Th11-L5 label (spec ``spine_vertebrae.md`` §3).

    * Per-vertebra labels (more than one non-zero value): drop the most cranial label (largest
      mean world S coordinate, i.e. Th11), then binarise.
    * Binary labels: 3D connected components (26-connectivity); drop the component with the
      largest mean S coordinate.
    * ``rule=None``: the label is already T12-L5; binarise only.

    Args:
        label: ``(I, J, K)`` label array; ``affine``: its 4x4 voxel-to-RAS affine (mm).
    Returns:
        ``(mask uint8 (I, J, K), info)`` with ``info["n_bodies"]`` (components left,
        26-connectivity) and ``info["flags"]`` (``"visual_qc: n_bodies != 6"`` when not 6).
    """
    import numpy as np
    from scipy import ndimage

    lab = np.rint(np.asarray(label)).astype(np.int32)
    aff = np.asarray(affine, float)
    s_of = lambda idx: aff[2, :3] @ np.vstack(idx).astype(float) + aff[2, 3]  # noqa: E731
    if rule == DROP_TH11:
        values = [v for v in np.unique(lab) if v != 0]
        if len(values) > 1:
            top = max(values, key=lambda v: s_of(np.nonzero(lab == v)).mean())
            lab = np.where(lab == top, 0, lab)
        else:
            comps, n = ndimage.label(lab > 0, structure=np.ones((3, 3, 3), bool))
            if n:
                top = max(range(1, n + 1), key=lambda c: s_of(np.nonzero(comps == c)).mean())
                lab = np.where(comps == top, 0, lab)
    elif rule is not None:
        raise errors.InputError(f"unknown label rule {rule!r}; known: {DROP_TH11!r} or None")
    mask = (lab > 0).astype(np.uint8)
    n_bodies = int(ndimage.label(mask, structure=np.ones((3, 3, 3), bool))[1])
    flags = [] if n_bodies == 6 else [f"visual_qc: {n_bodies} vertebral bodies, expected 6"]
    return mask, {"n_bodies": n_bodies, "flags": flags}


def multicontrast(root: str | Path, inputs: Sequence[str] = ("flair", "t1", "t2"), **kwargs) -> list[Subject]:
    """Co-registered multi-contrast subjects without labels (``shared/data/multicontrast``,
    ``data/README.md``; the layout of spec ``diamondgan.md`` §3).

    Layout: ``<root>/<subject>/{flair,t1,t2,t1c,...}.nii.gz``, every contrast of a subject on
    one grid (checked when the images are read). No label (``label=None``); site unknown.

    Args:
        root: the dataset folder (e.g. ``multicontrast``).
        inputs: which contrasts to collect, in channel order.
        **kwargs: passed to :func:`folder` (e.g. ``skip_incomplete``).
    Returns:
        One subject per sub-folder, ``id`` the folder name.
    Raises:
        Everything :func:`folder` raises.
    """
    return folder(root, {name: f"{name}.nii.gz" for name in inputs}, None, **kwargs)


# --- LIDC-IDRI nodules (lung_nodule) --------------------------------------------------------
#: Malignancy label values (spec ``lung_nodule.md`` §1): benign 0, malignant 1.
BENIGN, MALIGNANT = 0, 1


def malignancy_label(scores: Sequence[float] | float) -> int | None:
    """Nodule label from radiologists' malignancy ratings (1-5), spec ``lung_nodule.md`` §2 step 4.

    The median of the ratings: < 3 -> benign (0), > 3 -> malignant (1), exactly 3 -> ``None``
    (dropped). Medians of even counts can be x.5 (2.5 benign, 3.5 malignant). A single value is
    one rating (the max-voted rating of ``lidc_voi``: 1-2 benign, 4-5 malignant, 3 excluded).

    Raises:
        ValueError: no ratings, or a rating outside [1, 5].
    """
    values = [float(scores)] if isinstance(scores, (int, float)) else [float(s) for s in scores]
    if not values or any(not 1.0 <= v <= 5.0 for v in values):
        raise ValueError(f"malignancy ratings must be 1-5 (at least one), got {scores!r}")
    values.sort()
    n = len(values)
    median = values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])
    if median < 3.0:
        return BENIGN
    if median > 3.0:
        return MALIGNANT
    return None


def lidc_voi(root: str | Path, label_source: str = "rating", keep_unlabelled: bool = False) -> list[Subject]:
    """LIDC-IDRI nodule volumes of interest (``shared/data/lidc_voi``, ``data/README.md``).

    Layout: ``<root>/<patient>_R_<nodule>/{image,mask}.nii.gz`` (int16 HU crop and 0/1 nodule
    mask) and ``<root>/nodules.csv`` (one row per nodule: ``case, patient_id, nodule_id,
    malignancy, label, diagnosis, diameter_mm, ...``). One :class:`Subject` per **patient** (the
    split unit, spec §2 "Splits"); its nodules are in ``meta["nodules"]``, a list of dicts with
    ``case, image, mask, malignancy, diagnosis, diameter_mm, label`` (0 benign, 1 malignant,
    ``None`` excluded). ``images`` maps each nodule's case name to its image file.

    Args:
        root: the ``lidc_voi`` folder.
        label_source: ``"rating"`` (:func:`malignancy_label` of the max-voted rating: 1-2
            benign, 4-5 malignant, 3 excluded) or ``"diagnosis"`` (the source's own 0/1 call).
        keep_unlabelled: keep patients whose nodules are all excluded (default: dropped).
    Returns:
        Patients sorted by ID; ``meta["n_malignant"]`` / ``meta["n_benign"]`` count their labelled
        nodules and ``meta["has_malignant"]`` is the stratum of the k-fold splits.
    Raises:
        InputNotFoundError, InputError: missing folder, CSV or files; unknown ``label_source``.
    """
    import pandas as pd

    if label_source not in ("rating", "diagnosis"):
        raise errors.InputError(f"label_source must be 'rating' or 'diagnosis', got {label_source!r}")
    layout = "<case>/{image,mask}.nii.gz + nodules.csv (lidc_voi)"
    root = _existing_dir(root, "lidc_voi", layout)
    table_path = root / "nodules.csv"
    if not table_path.is_file():
        raise errors.InputNotFoundError(f"{table_path} not found; expected the layout {layout}")
    table = pd.read_csv(table_path, dtype={"case": str, "patient_id": str})
    patients: dict[str, list[dict]] = {}
    for row in table.itertuples(index=False):
        image, mask = root / row.case / "image.nii.gz", root / row.case / "mask.nii.gz"
        if not image.is_file() or not mask.is_file():
            raise errors.InputNotFoundError(f"{root / row.case}: image.nii.gz or mask.nii.gz missing")
        label = (malignancy_label(float(row.malignancy)) if label_source == "rating"
                 else int(row.diagnosis))
        patients.setdefault(str(row.patient_id), []).append(
            {"case": str(row.case), "image": image, "mask": mask, "malignancy": int(row.malignancy),
             "diagnosis": int(row.diagnosis), "diameter_mm": float(row.diameter_mm), "label": label})
    subjects = []
    for pid in sorted(patients, key=_natural_key):
        nodules = patients[pid]
        n_mal = sum(n["label"] == MALIGNANT for n in nodules)
        n_ben = sum(n["label"] == BENIGN for n in nodules)
        if not keep_unlabelled and n_mal + n_ben == 0:
            continue
        subjects.append(Subject(pid, {n["case"]: n["image"] for n in nodules}, None, "lidc",
                                {"nodules": nodules, "n_malignant": n_mal, "n_benign": n_ben,
                                 "has_malignant": n_mal > 0, "label_source": label_source}))
    return _finish(subjects, f"lidc_voi folder {root}", layout)


def export_lidc_pylidc(out_dir: str | Path, *, margin_vox: int = 20, min_rating_agreement: int = 1) -> Path:
    """Export LIDC-IDRI DICOM scans with pylidc annotations into the :func:`lidc_voi` layout.

    For users with the full collection (spec ``lung_nodule.md`` §2): pylidc must be configured
    with the DICOM root (``~/.pylidcrc``, section ``[dicom]``, key ``path``). For every scan,
    ``scan.to_volume()`` gives HU (checked: air median about -1000 HU), ``scan.cluster_annotations()``
    the nodules; each nodule's mask is the union of its readers' masks and its label the
    median of their malignancy ratings (:func:`malignancy_label`). A crop of ``margin_vox`` voxels
    around each nodule is written as ``<out_dir>/<patient>_R_<n>/{image,mask}.nii.gz`` (HU, LPS
    affine from the scan's spacing) plus ``nodules.csv`` (``malignancy`` = rounded-up median, so
    the rating rule of :func:`lidc_voi` reproduces the median rule; ``ratings`` lists them all).

    Args:
        out_dir: destination folder (created).
        margin_vox: voxels kept around each nodule's bounding box (in plane and in z).
        min_rating_agreement: minimum readers per nodule.
    Returns:
        ``out_dir``.
    Raises:
        ImportError: pylidc is not installed (``pip install 'keras-medzoo[lidc]'``).
    """
    try:
        import pylidc as pl  # noqa: F401
    except ImportError:
        raise ImportError("the LIDC-IDRI DICOM adapter needs pylidc: pip install 'keras-medzoo[lidc]' "
                          "(or pip install pylidc), then configure ~/.pylidcrc with the DICOM path") from None
    import math

    import nibabel as nib
    import numpy as np
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for scan in pl.query(pl.Scan):
        vol = scan.to_volume(verbose=False).astype(np.float32)
        air = vol[vol < -500]
        if not air.size or abs(float(np.median(air)) + 1000.0) > 150.0:
            raise errors.InputError(f"{scan.patient_id}: air is not near -1000 HU; check RescaleSlope/Intercept")
        spacing = (float(scan.pixel_spacing), float(scan.pixel_spacing), float(scan.slice_spacing))
        affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS voxel axes -> RAS
        for n, cluster in enumerate(scan.cluster_annotations(), start=1):
            if len(cluster) < min_rating_agreement:
                continue
            ratings = [int(a.malignancy) for a in cluster]
            mask = np.zeros(vol.shape, bool)
            for ann in cluster:
                mask[ann.bbox()] |= ann.boolean_mask()
            idx = np.argwhere(mask)
            lo = np.maximum(idx.min(0) - margin_vox, 0)
            hi = np.minimum(idx.max(0) + 1 + margin_vox, vol.shape)
            box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
            case = f"{scan.patient_id}_R_{n}"
            (out / case).mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(vol[box].astype(np.int16), affine), out / case / "image.nii.gz")
            nib.save(nib.Nifti1Image(mask[box].astype(np.uint8), affine), out / case / "mask.nii.gz")
            median = float(np.median(ratings))
            rows.append({"case": case, "patient_id": scan.patient_id, "nodule_id": n,
                         "malignancy": int(math.ceil(median)) if median != 2.5 else 2,
                         "ratings": " ".join(map(str, ratings)), "diagnosis": -1,
                         "diameter_mm": float(max(a.diameter for a in cluster)),
                         "seriesuid": scan.series_instance_uid})
    pd.DataFrame(rows).to_csv(out / "nodules.csv", index=False)
    return out
