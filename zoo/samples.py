"""Public sample scans: a registry of real scans with pinned sources, fetched and checked.

Every file of a sample is an unchanged copy of a file in a public GitHub repository at a
pinned commit (``owner/repo@commit:path``), with its sha256 (``zoo/sample_files.csv``,
generated from ``shared/data/manifest.csv``). :func:`fetch` finds each file, in order:

1. an offline mirror: ``mirror=`` or ``$ZOO_SAMPLES_DIR``, a folder laid out like
   ``shared/data`` (``open_ms/mni/patient19/flair.nii.gz``) or like the upstream repository
   (``cross_sectional/MNI/patient19/FLAIR_..._regtoMNI.nii.gz``); files are used in place;
2. the user cache ``$ZOO_HOME/samples/<file>`` (an earlier download);
3. a download, with the same atomic, checksummed, mirror-trying code as the weights
   (:func:`zoo.weights.download`): ``$ZOO_SAMPLES_URL/<file>`` when that variable is set, then
   GitHub's raw and LFS media URLs at the pinned commit.

Every file is sha256-checked wherever it comes from; a failed download leaves no file at its path
(a cut-off transfer keeps only the hidden staging file of :mod:`zoo.transfer`, and the next
fetch resumes it).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from zoo import errors, weights

#: Dataset -> licence and attribution (shared/data/README.md, per folder).
DATASETS: dict[str, dict[str, str]] = {
    "open_ms_mni": {
        "title": "Ljubljana MS lesion dataset, MNI space (patients 07, 19)",
        "licence": "CC-BY (cross_sectional/LICENSE.txt of muschellij2/open_ms_data)",
        "attribution": "Lesjak Z., Pernus F., Likar B., Spiclin Z. A Novel Public MR Image Dataset of "
                       "Multiple Sclerosis Patients With Lesion Segmentations Based on Multi-rater "
                       "Consensus. Neuroinformatics 2018;16:51-63, doi:10.1007/s12021-017-9348-7",
    },
    "open_ms_native": {
        "title": "Ljubljana MS longitudinal dataset, raw native scans (unlabelled)",
        "licence": "CC-BY (longitudinal/LICENSE.txt of muschellij2/open_ms_data)",
        "attribution": "Lesjak Z. et al. Validation of White-Matter Lesion Change Detection Methods on "
                       "a Novel Publicly Available MRI Image Database. Neuroinformatics 2016;14:403-420",
    },
    "ixi": {
        "title": "IXI002-Guys-0828, healthy adult T1 and T2 (HD-BET skull-stripped)",
        "licence": "CC BY-SA 3.0 (IXI dataset, brain-development.org); pipeline repo Apache-2.0",
        "attribution": "IXI dataset, brain-development.org; cai4cai/defacing_pipeline",
    },
    "neonatal_inputs": {
        "title": "Neonatal T2w template (0 months) and one fetal T2w",
        "licence": "MIT (DBC-Lab/Brain_MRI_Enhancement LICENSE)",
        "attribution": "Sun Y. et al. A foundation model for enhancing magnetic resonance images and "
                       "downstream segmentation, registration and diagnostic tasks. Nat. Biomed. Eng. "
                       "2025;9:521-538, doi:10.1038/s41551-024-01283-7",
    },
    "lidc_voi": {
        "title": "LIDC-IDRI nodule volumes of interest in Hounsfield units (812 nodules)",
        "licence": "CC BY 3.0 (TCIA, LIDC-IDRI collection, doi:10.7937/K9/TCIA.2015.LO9QL9SX)",
        "attribution": "Armato S.G. III et al. The Lung Image Database Consortium (LIDC) and Image "
                       "Database Resource Initiative (IDRI). Med. Phys. 2011;38:915-931; "
                       "PabloLION/ct-slicing",
    },
}

#: Environment variable naming an offline mirror folder.
MIRROR_ENV = "ZOO_SAMPLES_DIR"
#: Environment variable naming an extra download base URL (tried first).
URL_ENV = "ZOO_SAMPLES_URL"


@dataclass(frozen=True)
class SampleFile:
    """One file of a sample.

    Attributes:
        sample: sample id, ``<dataset>/<case>`` (e.g. ``open_ms_mni/patient19``).
        role: what the file is within the sample (``flair``, ``t1``, ``lesion``, ``image``...).
        file: its path in a mirror laid out like ``shared/data``.
        source: ``owner/repo@commit:path`` of the byte-identical upstream file.
        sha256: hex digest of the file.
        dataset: key of :data:`DATASETS` (licence and attribution).
    """

    sample: str
    role: str
    file: str
    source: str
    sha256: str
    dataset: str

    @property
    def repo(self) -> str:
        return self.source.split("@", 1)[0]

    @property
    def commit(self) -> str:
        return self.source.split("@", 1)[1].split(":", 1)[0]

    @property
    def upstream_path(self) -> str:
        return self.source.split(":", 1)[1]

    def urls(self) -> list[str]:
        """Download URLs in the order tried: ``$ZOO_SAMPLES_URL/<file>`` (if set), GitHub raw,
        GitHub LFS media, all at the pinned commit."""
        urls = []
        base = os.environ.get(URL_ENV)
        if base:
            urls.append(base.rstrip("/") + "/" + self.file)
        urls.append(f"https://raw.githubusercontent.com/{self.repo}/{self.commit}/{self.upstream_path}")
        urls.append(f"https://media.githubusercontent.com/media/{self.repo}/{self.commit}/{self.upstream_path}")
        return urls


@lru_cache(maxsize=1)
def _registry() -> dict[str, dict[str, SampleFile]]:
    text = resources.files("zoo").joinpath("sample_files.csv").read_text(encoding="utf-8")
    rows = csv.DictReader(io.StringIO("".join(line for line in text.splitlines(True)
                                              if not line.startswith("#"))))
    reg: dict[str, dict[str, SampleFile]] = {}
    for row in rows:
        reg.setdefault(row["sample"], {})[row["role"]] = SampleFile(**row)
    return reg


def list_samples(dataset: str | None = None) -> list[str]:
    """Sample ids (``<dataset>/<case>``), optionally of one dataset, sorted."""
    return sorted(s for s in _registry() if dataset is None or s.split("/", 1)[0] == dataset)


def sample_files(sample: str) -> dict[str, SampleFile]:
    """Role -> :class:`SampleFile` of ``sample``. Raises SampleNotFoundError (with close
    matches) for an unknown id."""
    reg = _registry()
    if sample not in reg:
        import difflib

        close = difflib.get_close_matches(sample, list(reg), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see zoo.samples.list_samples()"
        raise errors.SampleNotFoundError(f"unknown sample {sample!r}{hint}")
    return dict(reg[sample])


def info(sample: str) -> dict[str, str]:
    """Licence, attribution and sources of ``sample`` (to cite it)."""
    files = sample_files(sample)
    dataset = next(iter(files.values())).dataset
    return {"sample": sample, **DATASETS[dataset],
            "sources": "; ".join(f"{r}: {f.source}" for r, f in sorted(files.items()))}


def _mirror_candidates(mirror: Path, f: SampleFile) -> list[Path]:
    return [mirror / f.file, mirror / f.upstream_path, mirror / f.repo.split("/")[1] / f.upstream_path]


def _checked(path: Path, f: SampleFile, where: str) -> Path:
    digest = weights.sha256_file(path)
    if digest != f.sha256:
        raise errors.ChecksumError(
            f"{path} ({where}) is not sample file {f.sample}:{f.role}: sha256 {digest} != "
            f"{f.sha256}. Replace it with the file {f.source} (unchanged)")
    return path


def fetch_file(f: SampleFile, *, mirror: str | os.PathLike | None = None, timeout: float = 60) -> Path:
    """The local path of one sample file (mirror, cache or download; see the module docstring).

    Raises:
        ChecksumError: a mirror or cached file, or the downloaded bytes, have another sha256.
        SampleNotAvailableError: not in the mirror and the download failed (no network).
    """
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV)
    if mirror:
        for cand in _mirror_candidates(Path(mirror).expanduser(), f):
            if cand.is_file():
                return _checked(cand, f, f"offline mirror {MIRROR_ENV}")
    cached = weights.zoo_home() / "samples" / f.file
    if cached.is_file():
        return _checked(cached, f, "zoo cache")
    where = f"is not in the mirror {mirror} and " if mirror else ""
    hint = (f"Sample file {f.sample}:{f.role} {where}could not be downloaded: connect to the "
            f"internet, or point {MIRROR_ENV} (or --samples-dir) at a folder holding {f.file} "
            f"(laid out like shared/data) or {f.upstream_path} from {f.repo}@{f.commit[:8]}")
    try:
        return weights.download(f.urls(), cached, f.sha256, timeout=timeout, hint=hint)
    except errors.ChecksumError:
        raise
    except errors.DownloadError as exc:
        raise errors.SampleNotAvailableError(str(exc)) from None


def fetch(sample: str, roles: list[str] | None = None, *, mirror: str | os.PathLike | None = None,
          timeout: float = 60) -> dict[str, Path]:
    """Local paths of ``sample``'s files (all roles, or ``roles``), each sha256-checked.

    Args:
        sample: sample id, e.g. ``"open_ms_mni/patient19"`` (:func:`list_samples`).
        roles: the files wanted (e.g. ``["flair", "t1"]``); default all.
        mirror: offline mirror folder (default ``$ZOO_SAMPLES_DIR``).
    Returns:
        role -> path (NIfTI files as published upstream).
    Raises:
        SampleNotFoundError, ChecksumError, SampleNotAvailableError.
    """
    files = sample_files(sample)
    wanted = list(files) if roles is None else list(roles)
    unknown = [r for r in wanted if r not in files]
    if unknown:
        raise errors.SampleNotFoundError(f"sample {sample} has no file(s) {unknown}; it has {sorted(files)}")
    return {role: fetch_file(files[role], mirror=mirror, timeout=timeout) for role in wanted}
