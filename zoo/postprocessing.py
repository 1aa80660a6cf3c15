"""Post-processing of segmentation outputs: end-slice band removal, thresholds, volumes."""

from __future__ import annotations

import numpy as np


def end_slice_band(n_slices: int, fraction: float, legacy: bool = False) -> np.ndarray:
    """Boolean ``(n_slices,)``: True for slices whose detections are removed (spec
    ``wmh_ensemble.md`` §10 step 2, decision D6).

    Default: the first and last ``k = floor(fraction * N)`` slices (k = 6 of 48 and 10 of 83
    at 0.125). ``legacy=True`` reproduces the challenge code, which zeroed slices
    ``[0, k)`` and ``[N - k - 1, N - 2]`` (an off-by-one: the last slice is never zeroed).
    """
    band = np.zeros(n_slices, dtype=bool)
    k = int(np.floor(fraction * n_slices + 1e-9))
    if k <= 0:
        return band
    band[:k] = True
    if legacy:
        band[max(0, n_slices - k - 1):n_slices - 1] = True
    else:
        band[n_slices - k:] = True
    return band


def binarise(probability: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 mask ``probability > threshold`` (strict, spec §9)."""
    return (np.asarray(probability) > threshold).astype(np.uint8)


def volume_ml(mask: np.ndarray, spacing_mm) -> float:
    """Volume of the non-zero voxels of ``mask`` in millilitres (voxel volume from the spacing in mm)."""
    voxel_mm3 = float(np.prod(np.asarray(spacing_mm, dtype=np.float64)))
    return float(np.count_nonzero(mask)) * voxel_mm3 / 1000.0


# --- 3D connected components (spine_vertebrae, spec spine_vertebrae.md §10) -----------------
def component_structure(connectivity: int) -> np.ndarray:
    """3x3x3 structuring element: ``6`` (faces), ``18`` (faces + edges) or ``26`` (all)."""
    from scipy import ndimage

    rank = {6: 1, 18: 2, 26: 3}.get(int(connectivity))
    if rank is None:
        raise ValueError(f"connectivity must be 6, 18 or 26; got {connectivity}")
    return ndimage.generate_binary_structure(3, rank)


def remove_small_components(mask: np.ndarray, spacing_mm, *, min_ml: float | None = None,
                            min_voxels: float | None = None,
                            connectivity: int = 6) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Drop the 3D connected components of ``mask`` smaller than a size threshold.

    The threshold is ``min_voxels`` voxels of this grid when given, else ``min_ml`` millilitres
    converted with this grid's voxel volume (so the same rule holds on any grid; spec
    ``spine_vertebrae.md`` D3: 0.2 × 10,437 voxels × 2.677 mm³ = 5.59 mL). A component is kept
    when its size is not smaller than the threshold.

    Args:
        mask: ``(I, J, K)`` binary mask.
        spacing_mm: voxel spacing along ``(i, j, k)`` in mm.
        min_ml, min_voxels: the threshold (neither: keep every component).
        connectivity: 6 (default, spec §10), 18 or 26.
    Returns:
        ``(kept_mask uint8, labels int32, volumes_ml)``: labels 1..n number the kept components
        in scipy's scan order, ``volumes_ml[i]`` is the volume of label ``i + 1`` in mL.
    """
    from scipy import ndimage

    labels, n = ndimage.label(np.asarray(mask) > 0, structure=component_structure(connectivity))
    voxel_ml = float(np.prod(np.asarray(spacing_mm, np.float64))) / 1000.0
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    if min_voxels is not None:
        threshold = float(min_voxels)
    elif min_ml is not None:
        threshold = float(min_ml) / voxel_ml
    else:
        threshold = 0.0
    keep = np.flatnonzero(counts >= threshold) + 1
    lookup = np.zeros(n + 1, np.int32)
    lookup[keep] = np.arange(1, len(keep) + 1)
    kept = lookup[labels]
    return (kept > 0).astype(np.uint8), kept, [float(counts[k - 1]) * voxel_ml for k in keep]


def order_by_world_axis(labels: np.ndarray, affine: np.ndarray, axis: int = 2,
                        descending: bool = True) -> list[int]:
    """Label values 1..n of ``labels`` sorted by the mean world coordinate (mm) of their voxels
    along world ``axis`` (RAS: 0 = R, 1 = A, 2 = S); ``descending`` puts the most superior
    (largest S) first."""
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return []
    idx = np.nonzero(labels)
    vals = labels[idx]
    world = np.asarray(affine, float)[axis, :3] @ np.vstack(idx).astype(float) + float(affine[axis, 3])
    means = np.bincount(vals, weights=world, minlength=n + 1)[1:] / np.maximum(
        np.bincount(vals, minlength=n + 1)[1:], 1)
    order = np.argsort(-means if descending else means, kind="stable")
    return [int(i) + 1 for i in order]


def midline_x_mm(mask: np.ndarray, affine: np.ndarray) -> float:
    """World x (RAS, mm) of the centre of mass of ``mask`` ``(I, J, K)`` on the grid ``affine``:
    the left-right midline used to split a bilateral structure when the spec names none
    (claustrum entries). Raises ValueError for an empty mask."""
    idx = np.argwhere(np.asarray(mask) > 0)
    if not len(idx):
        raise ValueError("cannot place the midline: the mask is empty")
    centre = idx.mean(axis=0)
    return float((np.asarray(affine, float) @ np.array([*centre, 1.0]))[0])


def split_hemispheres(mask: np.ndarray, affine: np.ndarray, midline_x: float,
                      left: int = 1, right: int = 2) -> np.ndarray:
    """Label map ``(I, J, K)`` uint8: ``left`` where ``mask`` is set and the voxel centre's world
    x (RAS, mm, from ``affine``) is below ``midline_x`` (patient left), ``right`` elsewhere in
    the mask, 0 outside it."""
    m = np.asarray(mask) > 0
    a = np.asarray(affine, float)
    shape = m.shape
    x = (a[0, 0] * np.arange(shape[0])[:, None, None] + a[0, 1] * np.arange(shape[1])[None, :, None]
         + a[0, 2] * np.arange(shape[2])[None, None, :] + a[0, 3])
    out = np.zeros(shape, dtype=np.uint8)
    out[m & (x < midline_x)] = left
    out[m & (x >= midline_x)] = right
    return out
