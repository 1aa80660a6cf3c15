"""BIDS in and out: find each subject's inputs in a BIDS dataset and write BIDS-derivative outputs.

    zoo predict wmh_ensemble --bids /data/ds -o /data/ds/derivatives/zoo --participant-label 01 02

Inputs are found with pybids (the optional extra ``bids``: ``pip install 'keras-medzoo[bids]'``)
by subject, session, datatype ``anat`` and suffix: each required input of the entry's variant is
looked up by the card's ``modality`` (``FLAIR``, ``T1w``, ``T2w``... are BIDS suffixes).
Outputs follow the BIDS-derivatives conventions (BIDS 1.9, "Derivatives"):

    DERIV/dataset_description.json                       DatasetType derivative, GeneratedBy
    DERIV/sub-01/ses-1/anat/sub-01_ses-1_space-orig_desc-wmh_mask.nii.gz      (+ .json sidecar)
    DERIV/sub-01/ses-1/anat/sub-01_ses-1_space-orig_desc-wmh_probseg.nii.gz   (+ .json sidecar)

``space-orig``: the outputs are on the grid of the reference input (e.g. the FLAIR), with its
affine and header. A binary label output is a ``mask``, a label output with more labels a
``dseg``, a probability a ``probseg``; ``desc`` is the output's name without ``_probability``.
Each sidecar names the source files, the entry, its variant and card version, the sha256 of each
weights file, the options and the backend.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from zoo import errors

#: BIDS version the derivative names and dataset_description.json follow.
BIDS_VERSION = "1.9.0"
#: Anatomical suffixes of BIDS (specification 1.9, "Anatomy imaging data") an input can have.
ANAT_SUFFIXES = ("T1w", "T2w", "FLAIR", "PDw", "T2starw", "PD", "T1map", "T2map", "inplaneT1", "inplaneT2", "angio")
NIFTI_EXTENSIONS = (".nii.gz", ".nii")


def require() -> Any:
    """Import pybids' ``BIDSLayout``; raise MissingDependencyError naming the install line."""
    try:
        from bids import BIDSLayout
    except ImportError:
        raise errors.MissingDependencyError(
            "--bids needs pybids, which is not installed; install the optional extra: "
            "pip install 'keras-medzoo[bids]' (or pip install pybids)") from None
    return BIDSLayout


@dataclass
class BidsCase:
    """One subject (and session) of a BIDS dataset.

    Attributes:
        subject, session: BIDS labels without prefix (``"01"``, ``"1"`` or None).
        inputs: entry input name -> absolute path of the NIfTI file found.
        problem: why the case cannot run (a missing or ambiguous input), or None.
    """

    subject: str
    session: str | None
    inputs: dict[str, str] = field(default_factory=dict)
    problem: Exception | None = None

    @property
    def id(self) -> str:
        """``sub-01`` or ``sub-01_ses-1``: the case name in the report and the file-name prefix."""
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")

    @property
    def folder(self) -> Path:
        """The derivative folder relative to the dataset root (``sub-01/ses-1/anat``)."""
        return Path(f"sub-{self.subject}", *([f"ses-{self.session}"] if self.session else []), "anat")


def input_suffixes(card: Any, variant: str | None) -> dict[str, str]:
    """Entry input name -> BIDS suffix for the variant's required inputs (card ``modality``).

    Raises:
        InputError: an input's modality is not an anatomical BIDS suffix (e.g. CT).
    """
    names = card.variant(variant)["inputs"]
    modality = {i["name"]: i["modality"] for i in card["inputs"]}
    out = {}
    for name in names:
        if modality.get(name) not in ANAT_SUFFIXES:
            raise errors.InputError(
                f"{card.id}: input {name!r} has modality {modality.get(name)!r}, which is not a BIDS "
                f"anatomical suffix ({', '.join(ANAT_SUFFIXES)}); use --input or --input-list")
        out[name] = modality[name]
    return out


def find_cases(dataset: str | Path, card: Any, variant: str | None,
               participant_labels: Sequence[str] | None = None,
               sessions: Sequence[str] | None = None) -> list[BidsCase]:
    """Every (subject, session) of ``dataset`` with the paths of the entry's inputs.

    Args:
        dataset: a BIDS dataset root (``dataset_description.json``, ``sub-*/``).
        card, variant: the entry's card and variant (which inputs, which suffixes).
        participant_labels: subject labels to keep (``01`` or ``sub-01``); None: all.
        sessions: session labels to keep (``1`` or ``ses-1``); None: all.
    Returns:
        Cases sorted by subject and session. A case whose input is missing or ambiguous (several
        files with one suffix, e.g. two runs) carries a MissingModalityError / InputError in
        ``problem`` instead of failing the whole dataset.
    Raises:
        MissingDependencyError: pybids is not installed.
        InputNotFoundError: ``dataset`` is not a folder.
        InputError: not a BIDS dataset, or a requested participant or session is not in it.
    """
    BIDSLayout = require()
    root = Path(dataset)
    if not root.is_dir():
        raise errors.InputNotFoundError(f"BIDS dataset {root} not found; give the dataset's root folder")
    if not (root / "dataset_description.json").is_file():
        raise errors.InputError(f"{root} is not a BIDS dataset: it has no dataset_description.json")
    suffixes = input_suffixes(card, variant)
    layout = BIDSLayout(str(root), validate=False)
    subjects = sorted(layout.get_subjects())
    if participant_labels:
        wanted = [_label(p, "sub") for p in participant_labels]
        missing = sorted(set(wanted) - set(subjects))
        if missing:
            raise errors.InputError(f"BIDS dataset {root} has no participant(s) {missing}; it has {subjects}")
        subjects = [s for s in subjects if s in wanted]
    wanted_sessions = [_label(s, "ses") for s in sessions] if sessions else None
    if wanted_sessions:
        unknown = sorted(set(wanted_sessions) - set(layout.get_sessions()))
        if unknown:
            raise errors.InputError(f"BIDS dataset {root} has no session(s) {unknown}; "
                                    f"it has {sorted(layout.get_sessions())}")
    cases = []
    for sub in subjects:
        sess = sorted(layout.get_sessions(subject=sub)) or [None]
        for ses in sess:
            if wanted_sessions is not None and ses not in wanted_sessions:
                continue
            cases.append(_case(layout, root, sub, ses, suffixes))
    return cases


def _label(text: str, prefix: str) -> str:
    text = str(text).strip()
    return text[len(prefix) + 1:] if text.startswith(f"{prefix}-") else text


def _case(layout: Any, root: Path, sub: str, ses: str | None, suffixes: dict[str, str]) -> BidsCase:
    case = BidsCase(sub, ses)
    query: dict[str, Any] = {"subject": sub, "datatype": "anat", "extension": list(NIFTI_EXTENSIONS),
                             "return_type": "filename"}
    if ses is not None:
        query["session"] = ses
    for name, suffix in suffixes.items():
        found = sorted(layout.get(suffix=suffix, **query))
        if not found:
            case.problem = errors.MissingModalityError(
                f"{case.id}: no {suffix} image (input {name!r}) in {root / case.folder}; "
                f"expected e.g. {case.id}_{suffix}.nii.gz")
            return case
        if len(found) > 1:
            case.problem = errors.InputError(
                f"{case.id}: {len(found)} {suffix} images ({', '.join(Path(f).name for f in found)}); "
                f"expected one per subject and session (keep one, or use --input-list)")
            return case
        case.inputs[name] = str(Path(found[0]).resolve())
    return case


# --- outputs ------------------------------------------------------------------------------------
def _entity(name: str) -> str:
    """A BIDS label from an output name: alphanumerics only (``wmh_probability`` -> ``wmh``)."""
    return re.sub(r"[^A-Za-z0-9]", "", re.sub(r"_probability$", "", name))


def output_suffix(spec: Mapping[str, Any]) -> str:
    """BIDS-derivative suffix of a card output: ``mask`` (label, 0/1), ``dseg`` (more labels),
    ``probseg`` (probability); an image output keeps its card ``modality`` (default ``image``)."""
    kind = spec["kind"]
    if kind == "label":
        labels = spec.get("labels") or {}
        return "mask" if len(labels) <= 2 else "dseg"
    if kind == "probability":
        return "probseg"
    return str(spec.get("modality") or "image")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_destination(out_dir: str | Path, dataset: str | Path) -> None:
    """Refuse an output folder that is the raw dataset itself or another pipeline's derivatives
    (a ``dataset_description.json`` not generated by the zoo). Raises OutputError."""
    out_dir, dataset = Path(out_dir), Path(dataset)
    if out_dir.resolve() == dataset.resolve():
        raise errors.OutputError(
            f"-o {out_dir} is the raw BIDS dataset; write derivatives to their own folder, "
            f"e.g. {dataset / 'derivatives' / 'zoo'}")
    path = out_dir / "dataset_description.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
        names = {str(g.get("Name")) for g in old.get("GeneratedBy", []) if isinstance(g, dict)}
        if old.get("DatasetType") != "derivative" or names - {"zoo"}:
            raise errors.OutputError(
                f"{path} exists and was not written by the zoo (GeneratedBy {sorted(names)}); "
                f"give the zoo's outputs their own folder, e.g. {out_dir / 'zoo'}")


class DerivativeWriter:
    """Writes one model's outputs into a BIDS-derivative dataset.

    Args:
        out_dir: the derivative dataset root (e.g. ``DATASET/derivatives/zoo``).
        dataset: the raw BIDS dataset the inputs come from.
        model: the loaded :class:`~zoo.model.ZooModel`.
        options: the card options given by the user (recorded in every sidecar).
        resample: whether inputs were resampled onto the reference grid (recorded).
    Raises:
        OutputError: :func:`check_destination` refuses ``out_dir``.
    """

    def __init__(self, out_dir: str | Path, dataset: str | Path, model: Any,
                 options: Mapping[str, Any] | None = None, resample: bool = False):
        self.out_dir, self.dataset, self.model = Path(out_dir), Path(dataset), model
        check_destination(out_dir, dataset)
        self.options = dict(options or {})
        self.resample = resample
        self.weights = [{"file": Path(p).name, "sha256": sha256_file(p)}
                        for p in (model.weights_source or [])]

    def generated_by(self) -> dict[str, Any]:
        """The ``GeneratedBy`` record of this run (BIDS 1.9, dataset_description.json)."""
        import zoo

        c = self.model.card
        return {"Name": "zoo", "Version": zoo.__version__,
                "Description": f"entry {c.id} (card {c.version}), variant {self.model.variant}, "
                               f"backend {getattr(self.model, 'backend', 'keras')}"}

    def write_description(self) -> Path:
        """Write ``dataset_description.json`` (atomically); refuse one of another pipeline
        (:func:`check_destination`)."""
        from zoo.io import atomic_write_text

        path = self.out_dir / "dataset_description.json"
        check_destination(self.out_dir, self.dataset)
        c = self.model.card
        desc = {"Name": f"zoo {c.id} derivatives", "BIDSVersion": BIDS_VERSION,
                "DatasetType": "derivative", "GeneratedBy": [self.generated_by()],
                "SourceDatasets": [{"URL": self.dataset.resolve().as_uri()}],
                "DatasetLinks": {"raw": self.dataset.resolve().as_uri()}}
        return atomic_write_text(path, json.dumps(desc, indent=2) + "\n")

    def names(self, case: BidsCase, pred: Any) -> dict[str, str]:
        """Output name -> BIDS-derivative file name for ``pred``'s images."""
        specs = {o["name"]: o for o in self.model.card["outputs"]}
        out = {}
        for name in pred.images:
            spec = specs.get(name, {"kind": "image"})
            out[name] = f"{case.id}_space-orig_desc-{_entity(name)}_{output_suffix(spec)}.nii.gz"
        if len(set(out.values())) != len(out):
            raise errors.OutputError(f"{self.model.card.id}: outputs {sorted(out)} map to clashing "
                                     f"BIDS names {sorted(out.values())}")
        return out

    def sidecar(self, case: BidsCase, name: str, pred: Any) -> dict[str, Any]:
        """The JSON sidecar of one output file."""
        c = self.model.card
        spec = next((o for o in c["outputs"] if o["name"] == name), {})
        side: dict[str, Any] = {
            "Description": f"{name} of zoo entry {c.id} ({spec.get('kind', 'image')})",
            "Sources": [f"bids:raw:{Path(p).relative_to(self.dataset.resolve()).as_posix()}"
                        if Path(p).is_relative_to(self.dataset.resolve()) else str(p)
                        for p in case.inputs.values()],
            "SpatialReference": "orig: the grid, affine and header of the reference input",
            "zoo": {"entry": c.id, "variant": self.model.variant, "card_version": c.version,
                    "weights": self.weights, "options": self.options, "resample": self.resample,
                    "backend": getattr(self.model, "backend", "keras")},
        }
        if spec.get("labels"):
            side["Labels"] = {str(k): v for k, v in spec["labels"].items()}
        if name in pred.volumes_ml:
            side["VolumeML"] = pred.volumes_ml[name]
        return side

    def save(self, case: BidsCase, pred: Any) -> Path:
        """Write ``pred``'s images and their sidecars into ``OUT/sub-*/[ses-*/]anat/`` in one
        all-or-nothing step (:meth:`zoo.prediction.Prediction.save`); returns the folder."""
        folder = self.out_dir / case.folder
        names = self.names(case, pred)
        sidecars = {fn.replace(".nii.gz", ".json"): json.dumps(self.sidecar(case, name, pred), indent=2,
                                                              default=str) + "\n"
                    for name, fn in names.items()}
        pred.save(folder, filenames=names, sidecars=sidecars, summary=False)
        return folder
