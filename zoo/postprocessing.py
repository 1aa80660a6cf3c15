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
