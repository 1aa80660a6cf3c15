"""Intensity normalisation."""

from __future__ import annotations

import numpy as np

from zoo import errors


def zscore(array: np.ndarray, mask: np.ndarray | None = None, *, source: str = "image") -> np.ndarray:
    """Gaussian normalisation ``(x - mean(x[m])) / std(x[m])`` with the population std (ddof 0).

    Spec ``wmh_ensemble.md`` §4 step 3: statistics from the brain mask, computed on the native
    volume before crop/pad, applied to the whole volume.

    Args:
        array: ``(I, J, K)`` intensities.
        mask: boolean ``(I, J, K)`` region for the statistics (``None``: all voxels).
        source: name of the input for messages.
    Returns:
        float32 array of the same shape.
    Raises:
        ConstantImageError: the mask is empty or the intensities inside it are constant.
    """
    x = np.asarray(array, dtype=np.float64)
    values = x if mask is None else x[mask]
    if values.size == 0:
        raise errors.ConstantImageError(
            f"{source}: the brain mask is empty, so the image cannot be normalised; check the "
            "intensities (the threshold mask expects the paper's scanner units) or pass a mask")
    mean = values.mean()
    std = values.std()
    if not np.isfinite(std) or std <= 1e-12 * max(1.0, abs(mean)):
        raise errors.ConstantImageError(
            f"{source}: intensities inside the brain mask are constant ({mean:g}); a real scan "
            "is expected")
    return ((x - mean) / std).astype(np.float32)
