"""Reading and writing volumes: one internal type, :class:`Volume`, for every input format.

NIfTI (``.nii``, ``.nii.gz``) is read with nibabel; DICOM series (a folder), MetaImage
(``.mha``/``.mhd``) and NRRD with SimpleITK. Inside the package every array keeps nibabel's
voxel axis order ``(i, j, k)`` and every affine maps voxel indices to RAS world coordinates in
mm (nibabel's convention). SimpleITK's LPS geometry and ``(z, y, x)`` arrays are converted at
this edge and nowhere else.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import nibabel as nib
import numpy as np

from zoo import errors

log = logging.getLogger(__name__)

#: Default memory budget for one input volume, in voxels (env ``ZOO_MAX_VOXELS``).
#: 2**28 voxels are 1 GiB as float32: far above any brain MRI (a 0.5 mm isotropic head is
#: about 512**3 = 2**27 voxels) and below what a 24 GiB machine can process with a model.
DEFAULT_MAX_VOXELS = 2**28

_SITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr", ".dcm")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class Volume:
    """A 3D image: voxel array, voxel-to-world affine and the NIfTI header it came with.

    Attributes:
        array: voxel values, shape ``(I, J, K)`` in nibabel's voxel axis order (not
            SimpleITK's ``(z, y, x)``). Floating inputs keep their dtype; others are kept
            as read until a pipeline casts them.
        affine: ``(4, 4)`` float64 map from voxel indices ``(i, j, k, 1)`` to RAS world
            coordinates in mm.
        header: the NIfTI header of the source (copied), or a fresh one for non-NIfTI
            inputs. Outputs are written with a copy of it, so qform/sform codes survive.
        source: a human-readable origin (the file path, or ``"<array>"``) used in messages.
        path: the file path when read from disk, else ``None`` (used to refuse overwriting).
    """

    array: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    source: str = "<array>"
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel spacing in mm along the voxel axes ``(i, j, k)``: the affine's column norms."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    @property
    def axcodes(self) -> tuple[str, str, str]:
        """Orientation codes of the voxel axes, e.g. ``('L', 'A', 'S')`` (nibabel convention)."""
        return nib.aff2axcodes(self.affine)

    def with_array(self, array: np.ndarray) -> "Volume":
        """A new Volume on the same grid (affine, header) holding ``array`` of the same shape."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array shape {array.shape} differs from the grid {self.shape}")
        return Volume(array, self.affine.copy(), self.header.copy(), self.source, self.path,
                      dict(self.meta))

    def to_image(self, array: np.ndarray | None = None, dtype: Any = None) -> nib.Nifti1Image:
        """A NIfTI image on this volume's grid with a copy of its header.

        Args:
            array: data of shape ``self.shape`` (defaults to ``self.array``).
            dtype: on-disk dtype (e.g. ``np.uint8`` for label maps, ``np.float32`` for
                probabilities). The header's scaling (scl_slope/inter) is reset so values are
                stored as given.
        Returns:
            ``nibabel.Nifti1Image`` (``Nifti2Image`` for NIfTI-2 sources) whose affine, qform
            and sform (codes included) equal the source's.
        """
        data = self.array if array is None else np.asarray(array)
        if tuple(data.shape[:3]) != self.shape:
            raise ValueError(f"array shape {data.shape} differs from the grid {self.shape}")
        header = self.header.copy()
        if dtype is not None:
            data = data.astype(dtype, copy=False)
        header.set_data_dtype(data.dtype)  # the shape is set by nibabel only if it differs
        slope, inter = header.get_slope_inter()
        if slope not in (None, 1.0) or inter not in (None, 0.0):
            header.set_slope_inter(1.0, 0.0)  # outputs are stored unscaled
        cls = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        return cls(data, self.affine.copy(), header)


# --- reading -----------------------------------------------------------------------------------
def read_volume(obj: Any, name: str = "input", *, max_voxels: int | None = None) -> Volume:
    """Read one 3D image from any supported source into a validated :class:`Volume`.

    Args:
        obj: a path (``str``/``Path``) to a NIfTI, MHA/MHD, NRRD file or a DICOM series
            folder; a nibabel image; a SimpleITK image; a ``(ndarray, affine)`` tuple with the
            array in ``(i, j, k)`` order and a 4x4 RAS affine; or a :class:`Volume`.
        name: what the input is (``"flair"``, ``"t1"``) for messages.
        max_voxels: memory budget in voxels (default env ``ZOO_MAX_VOXELS`` or
            :data:`DEFAULT_MAX_VOXELS`). Checked from the header before any data is read.
    Returns:
        A :class:`Volume` with a finite, 3D array and a usable affine.
    Raises:
        InputNotFoundError, UnreadableImageError, DimensionError, NonFiniteError,
        GeometryError, VolumeTooLargeError: as their names say; each message names the file.
    """
    budget = max_voxels if max_voxels is not None else int(
        os.environ.get("ZOO_MAX_VOXELS", DEFAULT_MAX_VOXELS))
    if isinstance(obj, Volume):
        vol = obj
    elif isinstance(obj, (str, os.PathLike)):
        vol = _read_path(Path(obj), name, budget)
    elif isinstance(obj, nib.spatialimages.SpatialImage):
        _check_budget(obj.shape, f"{name} image", budget)
        vol = _from_nibabel(obj, f"<{name} nibabel image>", None, name)
    elif _is_sitk_image(obj):
        _check_budget(obj.GetSize(), f"{name} image", budget)
        vol = _from_sitk(obj, f"<{name} SimpleITK image>", None)
    elif isinstance(obj, tuple) and len(obj) == 2:
        array, affine = np.asarray(obj[0]), np.asarray(obj[1], dtype=np.float64)
        if affine.shape != (4, 4):
            raise errors.GeometryError(
                f"{name}: the affine of an (array, affine) input must be 4x4, got {affine.shape}")
        _check_budget(array.shape, f"{name} array", budget)
        header = nib.Nifti1Header()
        try:
            header.set_qform(affine, code=1)
            header.set_sform(affine, code=1)
        except (nib.spatialimages.HeaderDataError, np.linalg.LinAlgError):
            pass  # degenerate affine (zero column, NaN): _validate raises GeometryError below
        vol = Volume(array, affine, header, f"<{name} array>")
    else:
        raise errors.InputError(
            f"{name}: unsupported input type {type(obj).__name__}; give a file path, a nibabel "
            "or SimpleITK image, or an (ndarray, affine) tuple")
    _validate(vol, name)
    return vol


def _check_budget(shape: Iterable[int], where: str, budget: int) -> None:
    n = int(np.prod([int(s) for s in shape], dtype=np.int64))
    if n > budget:
        raise errors.VolumeTooLargeError(
            f"{where}: {n:,} voxels (shape {tuple(shape)}) exceed the memory budget of "
            f"{budget:,} voxels; crop or downsample the image, or raise ZOO_MAX_VOXELS")


def _read_path(path: Path, name: str, budget: int) -> Volume:
    if not path.exists():
        raise errors.InputNotFoundError(f"{name}: file not found: {path}; check the path")
    if path.is_dir():
        return _read_dicom_series(path, name, budget)
    if path.stat().st_size == 0:
        raise errors.UnreadableImageError(
            f"{name}: {path} is empty (0 bytes); re-export or re-copy the image")
    lower = path.name.lower()
    if lower.endswith(_SITK_SUFFIXES):
        return _read_sitk_file(path, name, budget)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for non-images
        raise errors.UnreadableImageError(
            f"{name}: {path} is not a readable NIfTI image ({type(exc).__name__}: {exc}); "
            "give a .nii/.nii.gz file, a DICOM folder, or an .mha/.nrrd file") from None
    _check_budget(img.shape, f"{name} {path}", budget)
    vol = _from_nibabel(img, str(path), path, name)
    raw = _raw_pixdim(img)
    if raw is not None:
        vol.meta["raw_pixdim"] = raw
    return vol


def _raw_pixdim(img: Any) -> np.ndarray | None:
    """pixdim[1:4] as stored in the file. nibabel's loader silently repairs zero (-> 1) and
    negative (-> abs) pixdims, which would hide a broken header from :func:`_validate`."""
    if not isinstance(img.header, nib.Nifti1Header):  # Nifti2Header is a subclass
        return None
    try:
        holder = img.file_map.get("header", img.file_map["image"])  # .hdr of a pair, else the .nii
        with nib.openers.ImageOpener(holder.filename) as f:
            raw = type(img.header).from_fileobj(f, check=False)
    except Exception:  # the file was readable a moment ago; keep nibabel's repaired values
        return None
    return np.asarray(raw["pixdim"][1:4], dtype=np.float64)


def _from_nibabel(img: Any, source: str, path: Path | None, name: str) -> Volume:
    try:
        array = np.asarray(img.dataobj)
        if img.dataobj.slope not in (None, 1.0) or img.dataobj.inter not in (None, 0.0):
            array = np.asarray(img.get_fdata(dtype=np.float32))
    except AttributeError:
        array = np.asarray(img.get_fdata(dtype=np.float32))
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise errors.UnreadableImageError(
            f"{name}: {source} is truncated or corrupt ({type(exc).__name__}: {exc}); "
            "re-download or re-export the file") from None
    header = img.header.copy() if isinstance(img.header, nib.Nifti1Header) else _nifti_header(img)
    affine = np.asarray(img.affine, dtype=np.float64)
    return Volume(array, affine, header, source, path)


def _nifti_header(img: Any) -> nib.Nifti1Header:
    header = nib.Nifti1Header()
    header.set_qform(img.affine, code=1)
    header.set_sform(img.affine, code=1)
    return header


def _is_sitk_image(obj: Any) -> bool:
    return type(obj).__module__.startswith("SimpleITK") and hasattr(obj, "GetDirection")


def _read_sitk_file(path: Path, name: str, budget: int) -> Volume:
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        _check_budget(reader.GetSize(), f"{name} {path}", budget)
        img = reader.Execute()
    except RuntimeError as exc:
        raise errors.UnreadableImageError(
            f"{name}: {path} could not be read by SimpleITK ({str(exc).strip().splitlines()[-1]})"
        ) from None
    return _from_sitk(img, str(path), path)


def _read_dicom_series(path: Path, name: str, budget: int) -> Volume:
    import SimpleITK as sitk

    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
    if not ids:
        raise errors.UnreadableImageError(
            f"{name}: {path} is a folder without a DICOM series; give a series folder or a file")
    if len(ids) > 1:
        raise errors.UnreadableImageError(
            f"{name}: {path} holds {len(ids)} DICOM series ({', '.join(ids)}); give a folder "
            "with exactly one series")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), ids[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise errors.UnreadableImageError(f"{name}: DICOM series in {path} failed: {exc}") from None
    _check_budget(img.GetSize(), f"{name} {path}", budget)
    return _from_sitk(img, str(path), path)


def _from_sitk(img: Any, source: str, path: Path | None) -> Volume:
    """Convert a SimpleITK image (LPS, ``(z, y, x)`` array) to a RAS ``(i, j, k)`` Volume."""
    import SimpleITK as sitk

    if img.GetNumberOfComponentsPerPixel() != 1:
        raise errors.DimensionError(
            f"{source}: multi-component (vector/RGB) image; give a scalar 3D image")
    array = sitk.GetArrayFromImage(img)
    array = np.ascontiguousarray(array.transpose(tuple(range(array.ndim))[::-1]))
    dim = img.GetDimension()
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)
    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)
    origin = np.asarray(img.GetOrigin(), dtype=np.float64)
    affine = np.eye(4)
    n = min(dim, 3)
    lin = np.eye(3)
    lin[:n, :n] = direction[:n, :n] @ np.diag(spacing[:n])
    off = np.zeros(3)
    off[:n] = origin[:n]
    affine[:3, :3] = _LPS_TO_RAS @ lin
    affine[:3, 3] = _LPS_TO_RAS @ off
    header = nib.Nifti1Header()
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    return Volume(array, affine, header, source, path)


def _validate(vol: Volume, name: str) -> None:
    arr = vol.array
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise errors.DimensionError(
            f"{name}: {vol.source} has shape {vol.array.shape}; a 3D volume is expected (split "
            "4D series into 3D volumes, stack 2D slices into a volume)")
    vol.array = arr
    if arr.dtype.kind not in "biuf":
        raise errors.UnreadableImageError(
            f"{name}: {vol.source} has voxel type {arr.dtype}; a real-valued scalar image is expected")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        n_bad = int((~np.isfinite(arr)).sum())
        raise errors.NonFiniteError(
            f"{name}: {vol.source} has {n_bad:,} NaN/Inf voxels; replace them (e.g. with 0) "
            "before prediction")
    aff = vol.affine
    if aff.shape != (4, 4) or not np.isfinite(aff).all():
        raise errors.GeometryError(f"{name}: {vol.source} has a non-finite or malformed affine")
    spacing = vol.spacing
    pixdim = vol.meta.get("raw_pixdim")
    if pixdim is None:
        pixdim = np.asarray(vol.header.get_zooms()[:3], dtype=np.float64) if vol.path else spacing
    if (spacing <= 1e-6).any() or (pixdim <= 0).any() or not np.isfinite(pixdim).all():
        raise errors.GeometryError(
            f"{name}: {vol.source} has zero, negative or invalid voxel spacing "
            f"(header pixdim {tuple(np.round(pixdim, 4))} mm); fix the header (pixdim/affine)")
    cols = aff[:3, :3] / spacing
    gram = cols.T @ cols
    if not np.allclose(gram, np.eye(3), atol=1e-3):
        raise errors.GeometryError(
            f"{name}: {vol.source} has a non-orthogonal (sheared) affine; reslice it onto an "
            "orthogonal grid first (e.g. with SimpleITK or FSL flirt -applyxfm)")


def read_inputs(inputs: Mapping[str, Any], **kwargs: Any) -> dict[str, Volume]:
    """Read several named inputs with :func:`read_volume`; keys are the input names."""
    return {k: read_volume(v, k, **kwargs) for k, v in inputs.items()}


# --- writing -------------------------------------------------------------------------------------
def atomic_write_image(img: nib.Nifti1Image, path: str | os.PathLike,
                       protected: Iterable[Path] = ()) -> Path:
    """Write a NIfTI image atomically: to a temporary file in the same folder, then rename.

    Args:
        img: the image to write.
        path: destination (``.nii`` or ``.nii.gz``).
        protected: paths that must never be overwritten (the prediction's inputs).
    Returns:
        The destination path.
    Raises:
        OutputError: the destination is one of ``protected`` (an input file).
    """
    dest = Path(path)
    _refuse_protected(dest, protected)
    dest.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if dest.name.endswith(".gz") else ".nii"
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent)
    os.close(fd)
    try:
        nib.save(img, tmp)
        publish(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def publish(tmp: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Move a finished temporary file onto ``dest`` atomically (``os.replace``), first giving it
    the permissions of a normally created file (``0o666`` less the umask): ``mkstemp`` files are
    private (0600), which would make outputs unreadable to the rest of a research group."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, dest)


@contextlib.contextmanager
def staged_file(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Write ``path`` all or nothing: yields a hidden temporary file in the same folder (created,
    empty) for the caller to write; on a clean exit it is published onto ``path``
    (:func:`publish`), on an exception it is removed and ``path`` is left as it was. The folder
    is created. ``suffix``: the temporary file's ending, for writers that choose the format by
    it (``.png``, ``.nii.gz``)."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        publish(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str, protected: Iterable[Path] = ()) -> Path:
    """Write a text file (CSV, JSON, YAML) atomically: temporary file in the same folder, then
    rename, so readers never see a half-written file. Refuses ``protected`` paths (OutputError)."""
    dest = Path(path)
    _refuse_protected(dest, protected)
    with staged_file(dest) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")
    return dest


def _refuse_protected(dest: Path, protected: Iterable[Path]) -> None:
    target = dest.resolve()
    for p in protected:
        try:
            same = Path(p).resolve() == target
        except OSError:
            same = False
        if same:
            raise errors.OutputError(
                f"refusing to overwrite the input {p}; choose another output folder or name")
