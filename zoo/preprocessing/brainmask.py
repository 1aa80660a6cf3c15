"""Brain masks for intensity normalisation: threshold (+ per-slice largest component and hole
filling), non-zero voxels of skull-stripped inputs, an Otsu head mask with its rim eroded for
inputs that are not skull-stripped, or a mask given by the user.

Arrays are ``(I, J, K)`` with the slice axis last (K); per-slice operations work in the i-j
plane of each slice k.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: 2D 8-connectivity inside each slice k, no connection across slices.
_INPLANE_8 = np.zeros((3, 3, 3), dtype=bool)
_INPLANE_8[:, :, 1] = True
#: 2D 4-connectivity inside each slice (background connectivity for hole filling).
_INPLANE_4 = np.zeros((3, 3, 3), dtype=bool)
_INPLANE_4[1, :, 1] = True
_INPLANE_4[:, 1, 1] = True


def threshold_mask(array: np.ndarray, threshold: float, *, largest_cc: bool = True,
                   fill_holes: bool = True) -> np.ndarray:
    """Brain mask of Li et al. 2018 (spec ``wmh_ensemble.md`` §4 step 2).

    Args:
        array: ``(I, J, K)`` raw intensities (scanner units; the paper's thresholds are
            70 for FLAIR and 30 for T1 in the bias-corrected challenge data).
        threshold: voxels ``>= threshold`` are brain candidates.
        largest_cc: keep only the largest 2D connected component (8-connectivity) of each
            slice k (decision D3; the released code omits it).
        fill_holes: fill holes of each slice in 2D.
    Returns:
        Boolean mask ``(I, J, K)``.
    """
    mask = np.asarray(array) >= threshold
    if largest_cc:
        mask = largest_component_per_slice(mask)
    if fill_holes:
        mask = fill_holes_per_slice(mask)
    return mask


def nonzero_mask(array: np.ndarray) -> np.ndarray:
    """Mask of the voxels different from 0: the brain of skull-stripped inputs whose background
    is exactly 0 (e.g. the Ljubljana MS scans in MNI space)."""
    return np.asarray(array) != 0


def head_mask(array: np.ndarray) -> np.ndarray:
    """The head (foreground) of an MRI volume: Otsu threshold of the whole volume
    (SimpleITK), its largest 3D connected component, holes filled per slice k.

    Args:
        array: ``(I, J, K)`` intensities in any unit.
    Returns:
        Boolean ``(I, J, K)``; all False for a constant volume.
    """
    import SimpleITK as sitk

    arr = np.asarray(array, dtype=np.float32)
    if arr.max() <= arr.min():
        return np.zeros(arr.shape, dtype=bool)
    otsu = sitk.OtsuThreshold(sitk.GetImageFromArray(arr), 0, 1)
    mask = sitk.GetArrayFromImage(otsu).astype(bool)
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    mask = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    return fill_holes_per_slice(mask)


def otsu_mask(array: np.ndarray, erode_voxels: int = 6) -> np.ndarray:
    """Approximate brain mask of a scan that is not skull-stripped (zoo addition, not in the
    paper): the :func:`head_mask` (Otsu threshold, largest 3D connected component, holes
    filled per slice), then an in-plane erosion by ``erode_voxels`` voxels that strips most
    of the scalp and skull rim (6 voxels = 6 mm on the card's 1 mm in-plane grid).

    It is not a skull stripping (``mask_method=skull_stripping`` is): it only keeps the z-score
    statistics from being dominated by the scalp, as they are with the non-zero mask of a raw
    scan. Returns a boolean ``(I, J, K)``.
    """
    mask = head_mask(array)
    if erode_voxels > 0 and mask.any():
        disk = np.ones((2 * erode_voxels + 1, 2 * erode_voxels + 1, 1), dtype=bool)
        mask = ndimage.binary_erosion(mask, structure=disk)
    return mask


def largest_component_per_slice(mask: np.ndarray) -> np.ndarray:
    """Keep, in every slice k of a ``(I, J, K)`` mask, its largest 8-connected 2D component.

    Vectorised: one labelling of the whole volume with an in-plane structuring element, then
    the largest label of each slice is found with ``bincount``/``maximum.at``.
    """
    labels, n = ndimage.label(mask, structure=_INPLANE_8)
    if n == 0:
        return mask.copy()
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    k_of_label = np.zeros(n + 1, dtype=np.int64)
    fg = labels > 0
    k_index = np.broadcast_to(np.arange(mask.shape[2]), mask.shape)
    k_of_label[labels[fg]] = k_index[fg]
    best_size = np.zeros(mask.shape[2], dtype=np.int64)
    np.maximum.at(best_size, k_of_label[1:], sizes[1:])
    # a label wins if it is the largest of its slice; ties keep the lowest label, as argmax does
    is_best = sizes == best_size[k_of_label]
    is_best[0] = False
    first = np.full(mask.shape[2], n + 1, dtype=np.int64)
    cand = np.nonzero(is_best)[0]
    np.minimum.at(first, k_of_label[cand], cand)
    keep = np.zeros(n + 1, dtype=bool)
    keep[first[first <= n]] = True
    return keep[labels]


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of each slice k of a ``(I, J, K)`` mask in 2D (not across slices)."""
    return ndimage.binary_fill_holes(mask, structure=_INPLANE_4)
