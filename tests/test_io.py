"""Tests of ``zoo.io``: every input format gives the same :class:`Volume` (nibabel voxel order
``(i, j, k)``, voxel -> RAS mm affine), outputs keep the input header (spec ``practices.md`` §1,
``wmh_ensemble.md`` §10 step 4), and every bad input raises its specific ``zoo.errors`` type with
a message naming the file. CPU only, small synthetic volumes written to ``tmp_path``.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from zoo import errors
from zoo.io import atomic_write_image, read_volume

sitk = pytest.importorskip("SimpleITK")

RNG = np.random.default_rng(20240501)
#: A voxel -> RAS affine with a permutation, a flip (negative determinant, so qfac = -1),
#: anisotropic spacing and an offset; exactly representable as a NIfTI quaternion.
AFFINE = np.array([[-0.9, 0.0, 0.0, 90.0],
                   [0.0, 0.0, 1.2, -100.0],
                   [0.0, -3.0, 0.0, -50.0],
                   [0.0, 0.0, 0.0, 1.0]])
SHAPE = (6, 7, 8)


def _header_equal(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "f":
        return np.array_equal(a, b, equal_nan=True)
    return np.array_equal(a, b)


def _image(data: np.ndarray, affine: np.ndarray = AFFINE, *, qform: int = 1, sform: int = 1,
           dtype=np.float32) -> nib.Nifti1Image:
    """A NIfTI image with the given qform/sform codes (0 = unset) and pixdim from the affine."""
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape(data.shape)
    header.set_zooms(tuple(np.sqrt((affine[:3, :3] ** 2).sum(axis=0))))
    header.set_qform(affine if qform else None, code=qform)
    header.set_sform(affine if sform else None, code=sform)
    return nib.Nifti1Image(data.astype(dtype), None, header)


def _save(img, path: Path) -> Path:
    nib.save(img, str(path))
    return path


def _volume_data() -> np.ndarray:
    return (RNG.random(SHAPE) * 100).astype(np.float32)


def _patch_pixdim(path: Path, index: int, value: float) -> None:
    """Overwrite ``pixdim[index]`` of an uncompressed .nii on disk (nibabel's writer would
    refuse or repair a zero/negative value). pixdim is float32[8] at byte 76 of the header."""
    raw = bytearray(path.read_bytes())
    raw[76 + 4 * index: 80 + 4 * index] = struct.pack("<f", value)
    path.write_bytes(bytes(raw))


def _assert_names(exc_info, path) -> None:
    assert str(path) in str(exc_info.value), f"message does not name {path}: {exc_info.value}"


# --- NIfTI read and header round trip ------------------------------------------------------------
def test_nifti_read_equals_nibabel(tmp_path):
    data = _volume_data()
    path = _save(_image(data), tmp_path / "in.nii.gz")
    vol = read_volume(path, "flair")
    ref = nib.load(str(path))
    assert vol.shape == SHAPE
    np.testing.assert_array_equal(vol.array, ref.get_fdata(dtype=np.float32))
    np.testing.assert_array_equal(vol.affine, ref.affine)
    np.testing.assert_allclose(vol.affine, AFFINE, atol=1e-6)
    np.testing.assert_allclose(vol.spacing, [0.9, 3.0, 1.2], atol=1e-6)
    assert vol.axcodes == ("L", "I", "A")
    for key in ref.header.keys():
        assert _header_equal(vol.header[key], ref.header[key]), key
    assert vol.path == path and str(path) in vol.source


@pytest.mark.parametrize("qform, sform", [(1, 0), (0, 2)], ids=["qform1_sform0", "sform2_qform0"])
def test_to_image_uint8_keeps_every_header_field(tmp_path, qform, sform):
    src = _save(_image(_volume_data(), qform=qform, sform=sform), tmp_path / "in.nii.gz")
    original = nib.load(str(src))
    assert int(original.header["qform_code"]) == qform and int(original.header["sform_code"]) == sform

    vol = read_volume(src)
    label = (vol.array > 50).astype(np.float32)
    out = tmp_path / "out.nii.gz"
    nib.save(vol.to_image(label, np.uint8), str(out))
    back = nib.load(str(out))

    assert back.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(back.dataobj), label.astype(np.uint8))
    np.testing.assert_array_equal(back.affine, original.affine)
    q_back, q_code = back.header.get_qform(coded=True)
    s_back, s_code = back.header.get_sform(coded=True)
    assert (q_code, s_code) == (qform, sform)
    q_orig, _ = original.header.get_qform(coded=True)
    s_orig, _ = original.header.get_sform(coded=True)
    if qform:
        np.testing.assert_array_equal(q_back, q_orig)
    else:
        assert q_back is None
    if sform:
        np.testing.assert_array_equal(s_back, s_orig)
    else:
        assert s_back is None
    np.testing.assert_array_equal(back.header["pixdim"], original.header["pixdim"])
    np.testing.assert_array_equal(back.header["dim"], original.header["dim"])
    differing = {k for k in original.header.keys()
                 if not _header_equal(original.header[k], back.header[k])}
    assert differing == {"datatype", "bitpix"}


def test_scaled_int16_read_scaled_and_written_unscaled(tmp_path):
    raw = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    img = _image(raw, dtype=np.int16)
    img.header.set_slope_inter(2.0, 10.0)
    src = _save(img, tmp_path / "scaled.nii.gz")
    assert nib.load(str(src)).dataobj.slope == 2.0

    vol = read_volume(src)
    assert vol.array.dtype.kind == "f"
    # voxel (1, 2, 3) holds raw 1*56 + 2*8 + 3 = 75 -> 2*75 + 10 = 160
    assert raw[1, 2, 3] == 75 and vol.array[1, 2, 3] == 160.0
    np.testing.assert_array_equal(vol.array, 2.0 * raw.astype(np.float64) + 10.0)

    for dtype, data in ((np.float32, vol.array), (np.uint8, vol.array > 200)):
        out = tmp_path / f"out_{np.dtype(dtype).name}.nii.gz"
        nib.save(vol.to_image(data, dtype), str(out))
        back = nib.load(str(out))
        slope, inter = float(back.header["scl_slope"]), float(back.header["scl_inter"])
        assert np.isnan(slope) or slope in (0.0, 1.0), slope
        assert np.isnan(inter) or inter == 0.0, inter
        assert back.dataobj.slope == 1.0 and back.dataobj.inter == 0.0
        np.testing.assert_array_equal(back.dataobj.get_unscaled(), np.asarray(data).astype(dtype))


def test_to_image_rejects_wrong_shape():
    vol = read_volume((np.zeros(SHAPE, np.float32), AFFINE))
    with pytest.raises(ValueError):
        vol.to_image(np.zeros((6, 7, 9)), np.uint8)


# --- other formats and in-memory objects ---------------------------------------------------------
def _sitk_image() -> "sitk.Image":
    """A (z, y, x) = (5, 6, 7) SimpleITK image with a permuted and flipped direction."""
    arr = (RNG.random((5, 6, 7)) * 1000).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 1.5, 3.0))
    img.SetOrigin((10.0, -20.0, 30.0))
    img.SetDirection((0, 1, 0,
                      0, 0, -1,
                      -1, 0, 0))
    return img


@pytest.mark.parametrize("ext", ["mha", "nrrd"])
def test_sitk_file_formats_match_nifti(tmp_path, ext):
    img = _sitk_image()
    sitk.WriteImage(img, str(tmp_path / f"x.{ext}"))
    sitk.WriteImage(img, str(tmp_path / "x.nii.gz"))
    ref = nib.load(str(tmp_path / "x.nii.gz"))

    vol = read_volume(tmp_path / f"x.{ext}")
    assert vol.shape == (7, 6, 5)  # nibabel order (i, j, k) = SimpleITK (x, y, z)
    np.testing.assert_array_equal(vol.array, ref.get_fdata(dtype=np.float32))
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(img).transpose(2, 1, 0))
    np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-5)
    # world position of voxel (1, 2, 3): SimpleITK gives LPS, the Volume RAS
    lps = np.array(img.TransformIndexToPhysicalPoint((1, 2, 3)))
    ras = vol.affine @ [1, 2, 3, 1]
    np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-5)
    np.testing.assert_allclose(ras, ref.affine @ [1, 2, 3, 1], atol=1e-5)
    # hand-computed: origin (10,-20,30) + 1*0.8*(0,0,-1) + 2*1.5*(1,0,0) + 3*3*(0,-1,0) LPS
    np.testing.assert_allclose(ras[:3], [-13.0, 29.0, 29.2], atol=1e-5)
    np.testing.assert_allclose(vol.spacing, [0.8, 1.5, 3.0], atol=1e-6)


def test_in_memory_inputs_match_file(tmp_path):
    img = _sitk_image()
    sitk.WriteImage(img, str(tmp_path / "x.nii.gz"))
    ref = nib.load(str(tmp_path / "x.nii.gz"))
    ref_array = ref.get_fdata(dtype=np.float32)

    from_sitk = read_volume(img, "t1")
    np.testing.assert_array_equal(from_sitk.array, ref_array)
    np.testing.assert_allclose(from_sitk.affine, ref.affine, atol=1e-5)
    assert from_sitk.path is None

    from_tuple = read_volume((ref_array, ref.affine), "t1")
    np.testing.assert_array_equal(from_tuple.array, ref_array)
    np.testing.assert_array_equal(from_tuple.affine, ref.affine)
    assert from_tuple.header.get_sform(coded=True)[1] == 1

    from_nib = read_volume(nib.Nifti1Image(ref_array, ref.affine), "t1")
    np.testing.assert_array_equal(from_nib.array, ref_array)
    np.testing.assert_array_equal(from_nib.affine, ref.affine)

    assert read_volume(from_nib) is from_nib  # a Volume passes through


def test_unsupported_input_type():
    with pytest.raises(errors.InputError, match="unsupported input type"):
        read_volume([1, 2, 3], "flair")


def test_dicom_series_folder(tmp_path):
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)  # (z, y, x)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 0.9, 2.5))
    img.SetOrigin((1.0, 2.0, 3.0))
    series = "1.2.826.0.1.3680043.2.1125.1.424242"
    folder = tmp_path / "dicom"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    try:
        for k in range(img.GetDepth()):
            sl = img[:, :, k]
            tags = {
                "0008|0060": "MR",
                "0020|000d": series + ".0",
                "0020|000e": series,
                "0008|0018": f"{series}.{k + 1}",
                "0020|0037": "\\".join(["1", "0", "0", "0", "1", "0"]),
                "0020|0032": "\\".join(str(v) for v in img.TransformIndexToPhysicalPoint((0, 0, k))),
                "0020|0013": str(k + 1),
                "0028|0030": "0.9\\0.7",  # row spacing (y) \ column spacing (x)
                "0018|0050": "2.5",
            }
            for tag, value in tags.items():
                sl.SetMetaData(tag, value)
            writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
            writer.Execute(sl)
    except RuntimeError as exc:  # pragma: no cover - depends on the SimpleITK build
        pytest.skip(f"SimpleITK cannot write DICOM here: {exc}")

    vol = read_volume(folder, "flair")
    assert vol.shape == (6, 5, 4)
    np.testing.assert_allclose(vol.spacing, [0.7, 0.9, 2.5], atol=1e-5)
    np.testing.assert_array_equal(vol.array, arr.transpose(2, 1, 0))
    # identity direction in LPS -> RAS flips i and j; origin (1, 2, 3) LPS = (-1, -2, 3) RAS
    np.testing.assert_allclose(vol.affine, [[-0.7, 0, 0, -1.0], [0, -0.9, 0, -2.0],
                                            [0, 0, 2.5, 3.0], [0, 0, 0, 1]], atol=1e-5)


def test_folder_without_dicom(tmp_path):
    folder = tmp_path / "empty_folder"
    folder.mkdir()
    with pytest.raises(errors.UnreadableImageError) as exc:
        read_volume(folder)
    _assert_names(exc, folder)


# --- bad inputs ------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    path = tmp_path / "nope.nii.gz"
    with pytest.raises(errors.InputNotFoundError) as exc:
        read_volume(path, "flair")
    _assert_names(exc, path)
    assert isinstance(exc.value, FileNotFoundError)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.nii.gz"
    path.touch()
    with pytest.raises(errors.UnreadableImageError) as exc:
        read_volume(path)
    _assert_names(exc, path)


def test_truncated_gzip_nifti(tmp_path):
    full = _save(_image((RNG.random((20, 20, 20)) * 100).astype(np.float32)), tmp_path / "full.nii.gz")
    data = full.read_bytes()
    path = tmp_path / "truncated.nii.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(errors.UnreadableImageError) as exc:
        read_volume(path)
    _assert_names(exc, path)


def test_text_file_named_nifti(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_text("this is not an image\n")
    with pytest.raises(errors.UnreadableImageError) as exc:
        read_volume(path)
    _assert_names(exc, path)
    plain = tmp_path / "notes.nii"
    plain.write_text("this is not an image either\n" * 20)
    with pytest.raises(errors.UnreadableImageError) as exc:
        read_volume(plain)
    _assert_names(exc, plain)


def test_corrupt_mha(tmp_path):
    path = tmp_path / "bad.mha"
    path.write_text("not a metaimage\n")
    with pytest.raises(errors.UnreadableImageError) as exc:
        read_volume(path)
    _assert_names(exc, path)


def test_2d_image(tmp_path):
    path = _save(nib.Nifti1Image(np.ones((10, 12), np.float32), np.eye(4)), tmp_path / "slice.nii.gz")
    with pytest.raises(errors.DimensionError) as exc:
        read_volume(path)
    _assert_names(exc, path)


def test_4d_image_with_three_volumes(tmp_path):
    path = _save(nib.Nifti1Image(np.ones((4, 5, 6, 3), np.float32), np.eye(4)), tmp_path / "dwi.nii.gz")
    with pytest.raises(errors.DimensionError) as exc:
        read_volume(path)
    _assert_names(exc, path)


def test_4d_with_trailing_singleton_is_3d(tmp_path):
    data = RNG.random((4, 5, 6, 1)).astype(np.float32)
    path = _save(nib.Nifti1Image(data, AFFINE), tmp_path / "one.nii.gz")
    vol = read_volume(path)
    assert vol.shape == (4, 5, 6)
    np.testing.assert_array_equal(vol.array, data[..., 0])
    # and the same from an (array, affine) tuple
    assert read_volume((data, AFFINE)).shape == (4, 5, 6)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels(tmp_path, bad):
    data = _volume_data()
    data[1, 2, 3] = bad
    path = _save(_image(data), tmp_path / "nonfinite.nii.gz")
    with pytest.raises(errors.NonFiniteError) as exc:
        read_volume(path)
    _assert_names(exc, path)
    assert "1 NaN/Inf" in str(exc.value)
    with pytest.raises(errors.NonFiniteError):
        read_volume((data, AFFINE))


@pytest.mark.parametrize("value", [0.0, -3.0], ids=["zero", "negative"])
@pytest.mark.parametrize("qform, sform", [(1, 0), (0, 2)], ids=["qform", "sform"])
def test_bad_pixdim(tmp_path, value, qform, sform):
    path = _save(_image(_volume_data(), qform=qform, sform=sform), tmp_path / "pixdim.nii")
    _patch_pixdim(path, 2, value)  # pixdim[2]: spacing of voxel axis j
    with pytest.raises(errors.GeometryError) as exc:
        read_volume(path)
    _assert_names(exc, path)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # nibabel decomposing a degenerate affine
def test_zero_affine_column(tmp_path):
    affine = AFFINE.copy()
    affine[:3, 1] = 0.0
    header = nib.Nifti1Header()
    header.set_sform(affine, code=2)
    header.set_qform(None, code=0)
    path = _save(nib.Nifti1Image(_volume_data(), None, header), tmp_path / "zerocol.nii.gz")
    with pytest.raises(errors.GeometryError) as exc:
        read_volume(path)
    _assert_names(exc, path)
    with pytest.raises(errors.GeometryError):
        read_volume((_volume_data(), affine))


def test_sheared_affine(tmp_path):
    affine = np.eye(4)
    affine[0, 1] = 0.5  # column j is no longer orthogonal to column i
    header = nib.Nifti1Header()
    header.set_sform(affine, code=2)
    header.set_qform(None, code=0)
    path = _save(nib.Nifti1Image(_volume_data(), None, header), tmp_path / "shear.nii.gz")
    with pytest.raises(errors.GeometryError) as exc:
        read_volume(path)
    _assert_names(exc, path)
    with pytest.raises(errors.GeometryError):
        read_volume((_volume_data(), affine))


def test_oblique_but_orthogonal_affine_is_accepted():
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]) @ np.diag([1, 2, 3, 1])
    vol = read_volume((_volume_data(), affine))
    np.testing.assert_allclose(vol.spacing, [1, 2, 3])


def test_bad_affine_shape():
    with pytest.raises(errors.GeometryError):
        read_volume((_volume_data(), np.eye(3)))


def test_volume_too_large_before_loading(tmp_path, monkeypatch):
    # a truncated file: any attempt to read the data would raise UnreadableImageError instead
    full = _save(_image((RNG.random((20, 20, 20)) * 100).astype(np.float32)), tmp_path / "full.nii.gz")
    data = full.read_bytes()
    path = tmp_path / "big_truncated.nii.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(errors.VolumeTooLargeError) as exc:
        read_volume(path, max_voxels=7999)
    _assert_names(exc, path)
    assert "8,000" in str(exc.value)

    monkeypatch.setenv("ZOO_MAX_VOXELS", "7999")
    with pytest.raises(errors.VolumeTooLargeError) as exc:
        read_volume(path)
    _assert_names(exc, path)
    monkeypatch.setenv("ZOO_MAX_VOXELS", "8000")
    read_volume(full)  # exactly at the budget is fine
    with pytest.raises(errors.UnreadableImageError):
        read_volume(path)  # within budget, the truncation is found
    # an explicit budget wins over the environment
    read_volume(full, max_voxels=10_000)
    monkeypatch.delenv("ZOO_MAX_VOXELS")
    with pytest.raises(errors.VolumeTooLargeError):
        read_volume(full, max_voxels=100)


def test_volume_too_large_other_sources(tmp_path):
    img = _sitk_image()  # 7 * 6 * 5 = 210 voxels
    mha = tmp_path / "x.mha"
    sitk.WriteImage(img, str(mha), False)
    # cut the raw data: only the header is needed for the budget check
    raw = mha.read_bytes()
    cut = tmp_path / "cut.mha"
    cut.write_bytes(raw[: len(raw) - 400])
    with pytest.raises(errors.VolumeTooLargeError) as exc:
        read_volume(cut, max_voxels=209)
    _assert_names(exc, cut)
    with pytest.raises(errors.UnreadableImageError):
        read_volume(cut, max_voxels=210)
    with pytest.raises(errors.VolumeTooLargeError):
        read_volume(img, max_voxels=209)
    with pytest.raises(errors.VolumeTooLargeError):
        read_volume((np.zeros((7, 6, 5), np.float32), np.eye(4)), max_voxels=209)
    with pytest.raises(errors.VolumeTooLargeError):
        read_volume(nib.Nifti1Image(np.zeros((7, 6, 5), np.float32), np.eye(4)), max_voxels=209)


# --- writing ---------------------------------------------------------------------------------------
def _listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_atomic_write_image(tmp_path):
    vol = read_volume((_volume_data(), AFFINE))
    dest = tmp_path / "sub" / "mask.nii.gz"
    got = atomic_write_image(vol.to_image(vol.array > 50, np.uint8), dest)
    assert got == dest and dest.is_file()
    with gzip.open(dest) as f:  # really gzip-compressed
        assert len(f.read(348)) == 348
    back = nib.load(str(dest))
    np.testing.assert_array_equal(np.asarray(back.dataobj), (vol.array > 50).astype(np.uint8))
    assert _listing(dest.parent) == {"mask.nii.gz"}

    # overwriting a non-protected file replaces it and leaves nothing else
    atomic_write_image(vol.to_image(np.zeros(SHAPE), np.uint8), dest)
    assert np.asarray(nib.load(str(dest)).dataobj).max() == 0
    plain = atomic_write_image(vol.to_image(np.ones(SHAPE), np.uint8), tmp_path / "sub" / "m.nii")
    assert plain.read_bytes()[344:348] == b"n+1\x00"
    assert _listing(dest.parent) == {"mask.nii.gz", "m.nii"}


def test_atomic_write_refuses_protected(tmp_path):
    src = _save(_image(_volume_data()), tmp_path / "flair.nii.gz")
    before = src.read_bytes()
    vol = read_volume(src)
    out = vol.to_image(vol.array > 50, np.uint8)
    for spelling in (src, tmp_path / "sub" / ".." / "flair.nii.gz", str(src)):
        with pytest.raises(errors.OutputError) as exc:
            atomic_write_image(out, spelling, protected=[src])
        assert str(src) in str(exc.value)
    assert src.read_bytes() == before
    assert _listing(tmp_path) == {"flair.nii.gz"}


def test_atomic_write_failure_leaves_no_temp(tmp_path, monkeypatch):
    dest = tmp_path / "pred.nii.gz"
    dest.write_bytes(b"old content")

    def broken_save(img, filename):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    vol = read_volume((_volume_data(), AFFINE))
    with pytest.raises(OSError, match="disk full"):
        atomic_write_image(vol.to_image(np.zeros(SHAPE), np.uint8), dest)
    assert dest.read_bytes() == b"old content"
    assert _listing(tmp_path) == {"pred.nii.gz"}


def test_atomic_outputs_get_normal_file_permissions(tmp_path):
    """mkstemp files are private (0600); published outputs follow the umask like any file."""
    from zoo.io import atomic_write_text

    umask = os.umask(0o022)
    try:
        img = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4))
        a = atomic_write_image(img, tmp_path / "a.nii.gz")
        b = atomic_write_text(tmp_path / "b.csv", "x\n")
        for path in (a, b):
            assert path.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(umask)
