"""Intensity normalisation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zoo import errors


def zscore(array: np.ndarray, mask: np.ndarray | None = None, *, source: str = "image",
           ddof: int = 0, stats_from: np.ndarray | None = None) -> np.ndarray:
    """Gaussian normalisation ``(x - mean(x[m])) / std(x[m])`` with the population std (``ddof``
    0; ``ddof=1`` is the sample std of torch's ``Tensor.std()``, as TorchIO ``ZNormalization``).

    Spec ``wmh_ensemble.md`` §4 step 3: statistics from the brain mask, computed on the native
    volume before crop/pad, applied to the whole volume.

    Args:
        array: ``(I, J, K)`` intensities.
        mask: boolean ``(I, J, K)`` region for the statistics (``None``: all voxels).
        source: name of the input for messages.
        stats_from: take the statistics from these values instead (any shape; ``mask`` is then
            ignored), e.g. the whole input volume when ``array`` is a crop of it.
    Returns:
        float32 array of the same shape.
    Raises:
        ConstantImageError: the mask is empty or the intensities inside it are constant.
    """
    x = np.asarray(array, dtype=np.float64)
    if stats_from is not None:
        values = np.asarray(stats_from, dtype=np.float64).ravel()
    else:
        values = x if mask is None else x[mask]
    if values.size == 0:
        raise errors.ConstantImageError(
            f"{source}: the brain mask is empty, so the image cannot be normalised; check the "
            "intensities (the threshold mask expects the paper's scanner units) or pass a mask")
    mean = values.mean()
    std = values.std(ddof=ddof)
    if not np.isfinite(std) or std <= 1e-12 * max(1.0, abs(mean)):
        raise errors.ConstantImageError(
            f"{source}: intensities inside the brain mask are constant ({mean:g}); a real scan "
            "is expected")
    return ((x - mean) / std).astype(np.float32)


@dataclass(frozen=True)
class MinMaxScaling:
    """Linear map of ``[low, high]`` (scanner units) onto ``[out_min, out_max]`` with clipping,
    and its inverse (spec ``diamondgan.md`` §2 and §11 D12: each contrast rescaled to [-1, 1]).

    Attributes:
        low, high: the input values mapped to ``out_min`` / ``out_max`` (``high > low``).
        out_min, out_max: the output range (default [-1, 1]).
    """

    low: float
    high: float
    out_min: float = -1.0
    out_max: float = 1.0

    @classmethod
    def fit(cls, array: np.ndarray, mask: np.ndarray | None = None,
            percentiles: tuple[float, float] = (0.0, 100.0), *, source: str = "image",
            out_range: tuple[float, float] = (-1.0, 1.0)) -> "MinMaxScaling":
        """Scaling from the ``percentiles`` (``(0, 100)`` = plain min-max) of the voxels in
        ``mask`` (``None``: all voxels) of an ``(I, J, K)`` volume.

        Raises:
            ConstantImageError: the mask is empty or the range is (numerically) zero.
        """
        x = np.asarray(array, dtype=np.float64)
        values = x if mask is None else x[np.asarray(mask, bool)]
        if values.size == 0:
            raise errors.ConstantImageError(
                f"{source}: the brain mask is empty, so the image cannot be rescaled; a "
                "skull-stripped scan with a zero background (or a brain_mask input) is expected")
        lo, hi = (float(v) for v in np.percentile(values, [float(percentiles[0]), float(percentiles[1])]))
        if not np.isfinite(hi - lo) or hi - lo <= 1e-12 * max(1.0, abs(hi)):
            raise errors.ConstantImageError(
                f"{source}: intensities inside the brain mask are constant ({lo:g}); a real scan is expected")
        return cls(lo, hi, float(out_range[0]), float(out_range[1]))

    def forward(self, array: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Scaled float32 array, clipped to ``[out_min, out_max]``; voxels outside ``mask``
        (when given) get ``out_min`` (the background value)."""
        x = (np.asarray(array, dtype=np.float64) - self.low) / (self.high - self.low)
        y = np.clip(self.out_min + x * (self.out_max - self.out_min), self.out_min, self.out_max)
        if mask is not None:
            y = np.where(np.asarray(mask, bool), y, self.out_min)
        return y.astype(np.float32)

    def inverse(self, array: np.ndarray) -> np.ndarray:
        """Map ``[out_min, out_max]`` back to ``[low, high]`` (float32; clipping is not undone)."""
        y = (np.asarray(array, dtype=np.float64) - self.out_min) / (self.out_max - self.out_min)
        return (self.low + y * (self.high - self.low)).astype(np.float32)
