"""CT nodule preprocessing: Hounsfield-unit checks, HU window, mask dilation, masked tight crop,
centred pad and the spherical mask of a nodule given by centre and diameter.

Spec ``specs/lung_nodule.md`` §2 steps 5-8 and §3. All arrays are ``(i, j, k)`` voxel order of
the native grid (row, col, slice for the LIDC crops); no resampling (D5).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from scipy import ndimage

from zoo import errors
from zoo.preprocessing.cropping import CenterCropPadND

log = logging.getLogger(__name__)

#: HU window of spec §2 step 7: [-1200, +600] HU -> [0, 1].
HU_WINDOW = (-1200.0, 600.0)
#: Dilation iterations of the nodule mask (spec §2 step 6, full 3x3x3 structuring element).
DILATION_ITERATIONS = 3
#: Plausible CT values in HU: scanners store -1024..3071 (12 bit), some pad with -2048/-3024;
#: metal streaks reach a few 10^4 in 16-bit data.
HU_PLAUSIBLE = (-3100.0, 32767.0)
#: A CT region holding lung must reach below this value (air/lung parenchyma is -1000..-500 HU);
#: a [0, 1] or z-scored image never does.
HU_AIR_BELOW = -300.0


def check_hounsfield(array: np.ndarray, name: str = "ct") -> None:
    """Refuse an image whose intensities cannot be Hounsfield units.

    A thoracic CT (or a crop around a lung nodule) in HU contains lung or air, so its minimum is
    below ``HU_AIR_BELOW`` (-300 HU), and every value lies in ``HU_PLAUSIBLE``. Normalised
    images ([0, 1], z-scores, [0, 255]) fail the first test.

    Args:
        array: CT voxels, any shape.
        name: input name for the message.
    Raises:
        NotHounsfieldError: the values cannot be HU; the message says how to declare an
            already normalised input (``intensity="normalised"``).
        NonFiniteError: NaN or infinite values.
    """
    a = np.asarray(array)
    if a.size == 0:
        raise errors.InputError(f"{name}: empty image")
    if not np.all(np.isfinite(a)):
        raise errors.NonFiniteError(f"{name}: NaN or infinite voxel values")
    lo, hi = float(a.min()), float(a.max())
    if lo > HU_AIR_BELOW or lo < HU_PLAUSIBLE[0] or hi > HU_PLAUSIBLE[1]:
        raise errors.NotHounsfieldError(
            f"{name}: intensities [{lo:.4g}, {hi:.4g}] cannot be CT Hounsfield units (a lung CT "
            f"reaches below {HU_AIR_BELOW:g} HU and stays within {HU_PLAUSIBLE}). Give the CT in HU "
            "(DICOM series are read with RescaleSlope/RescaleIntercept applied), or, if it is already "
            "scaled to the model's [0, 1] window, declare it with intensity='normalised'")


def rescale_to_hu(stored: np.ndarray, slope: float = 1.0, intercept: float = 0.0) -> np.ndarray:
    """DICOM stored values to HU: ``HU = stored * RescaleSlope + RescaleIntercept`` (DICOM PS3.3
    C.11.1.1.2). Returns float32 of the same shape."""
    return np.asarray(stored, dtype=np.float32) * np.float32(slope) + np.float32(intercept)


def window(hu: np.ndarray, lo: float = HU_WINDOW[0], hi: float = HU_WINDOW[1]) -> np.ndarray:
    """``clip((HU - lo) / (hi - lo), 0, 1)`` as float32 (spec §2 step 7: -1200 -> 0, 600 -> 1,
    -300 -> 0.5)."""
    return np.clip((np.asarray(hu, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)


def dilate(mask: np.ndarray, iterations: int = DILATION_ITERATIONS) -> np.ndarray:
    """Binary dilation with the full 3x3x3 structuring element (26-connectivity), ``iterations``
    times (spec §2 step 6; one voxel becomes a 7x7x7 cube after 3). Voxels beyond the array's
    edge are not created: a mask touching the edge of a tight crop dilates only inwards."""
    m = np.asarray(mask) > 0
    if iterations <= 0:
        return m
    return ndimage.binary_dilation(m, ndimage.generate_binary_structure(3, 3), iterations=int(iterations))


def bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Index slices of the tight bounding box of the non-zero voxels of a 3D ``mask``.

    Raises:
        InputError: the mask is empty.
    """
    idx = np.argwhere(np.asarray(mask) > 0)
    if not len(idx):
        raise errors.InputError("nodule mask is empty; give a mask with at least one voxel")
    lo, hi = idx.min(0), idx.max(0) + 1
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def nodule_crop(scaled: np.ndarray, mask: np.ndarray, pad_shape: Sequence[int], *,
                iterations: int = DILATION_ITERATIONS, downsample: int = 1) -> tuple[np.ndarray, dict]:
    """The network input of one nodule (spec §2 step 8 and §3).

    ``scaled`` (already windowed to [0, 1]) is zeroed outside the dilated ``mask``, cropped to the
    tight bounding box of the dilated mask, then centre zero-padded to ``pad_shape`` (odd
    remainders at the end; larger crops are centre-cropped with a warning). With
    ``downsample=2`` the padded crop is subsampled by nearest neighbour (every second voxel,
    spec §5 phase 1: 88x92x62 -> 44x46x31).

    When the dilated box would reach beyond the image (a tight crop such as the ``lidc_voi``
    volumes, where the nodule touches the first or last slice), the dilation stops at the edge
    and the missing part is simply more zero padding: the same as zero-filled voxels outside
    the dilated mask.

    Args:
        scaled: ``(I, J, K)`` float intensities in [0, 1].
        mask: ``(I, J, K)`` nodule mask (non-zero = nodule), same grid.
        pad_shape: ``(P, Q, R)`` padded size on the native grid.
        iterations: dilation iterations.
        downsample: 1 (none) or an integer stride.
    Returns:
        ``(crop, info)``: float32 ``(P // downsample ..., )`` array (ceil division) and
        ``{"box": [[start, stop] x3], "box_shape": [...], "cropped": bool}``.
    Raises:
        InputError: empty mask; GridMismatchError: shapes differ.
    """
    if scaled.shape != mask.shape:
        raise errors.GridMismatchError(f"CT {scaled.shape} and nodule mask {mask.shape} differ in shape")
    dil = dilate(mask, iterations)
    box = bounding_box(dil)
    crop = np.where(dil[box], scaled[box], 0.0).astype(np.float32)
    cropped = any(s > int(t) for s, t in zip(crop.shape, pad_shape))
    if cropped:
        log.warning("nodule box %s exceeds the pad shape %s; centre-cropped (spec section 3)",
                    crop.shape, tuple(pad_shape))
    out = CenterCropPadND(crop.shape, tuple(int(t) for t in pad_shape)).forward(crop, 0.0)
    if downsample > 1:
        out = out[::downsample, ::downsample, ::downsample]
    return np.ascontiguousarray(out), {"box": [[s.start, s.stop] for s in box],
                                      "box_shape": list(crop.shape), "cropped": bool(cropped)}


def spherical_mask(shape: Sequence[int], affine: np.ndarray, center_mm: Sequence[float],
                   diameter_mm: float) -> np.ndarray:
    """A ball of ``diameter_mm`` around world point ``center_mm`` on a voxel grid.

    Args:
        shape: ``(I, J, K)`` grid shape.
        affine: 4x4 voxel-to-world (RAS, mm) affine of the grid.
        center_mm: ``(x, y, z)`` world coordinates in mm (RAS, the affine's space).
        diameter_mm: ball diameter in mm (> 0).
    Returns:
        bool ``(I, J, K)``; voxel centres within ``diameter_mm / 2`` of the centre. The voxel
        nearest the centre is always set when it lies inside the grid (a ball smaller than a
        voxel still marks one voxel).
    Raises:
        InputError: non-positive diameter, or a centre outside the grid.
    """
    if not np.isfinite(diameter_mm) or diameter_mm <= 0:
        raise errors.InputError(f"nodule_diameter_mm must be > 0, got {diameter_mm}")
    c = np.asarray(center_mm, dtype=float).reshape(3)
    ijk = np.indices(tuple(int(s) for s in shape)).reshape(3, -1).astype(float)
    world = affine[:3, :3] @ ijk + affine[:3, 3:4]
    inside = (np.sum((world - c[:, None]) ** 2, axis=0) <= (diameter_mm / 2.0) ** 2).reshape(tuple(shape))
    centre_vox = np.rint(np.linalg.solve(affine, np.append(c, 1.0))[:3]).astype(int)
    if np.any(centre_vox < 0) or np.any(centre_vox >= np.asarray(shape)):
        raise errors.InputError(f"nodule centre {tuple(c)} mm lies outside the CT grid (voxel {tuple(centre_vox)})")
    inside[tuple(centre_vox)] = True
    return inside
