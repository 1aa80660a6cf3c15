"""In-plane resampling of ``(I, J, K)`` volumes to a target pixel spacing, and back.

Only the two in-plane axes (i, j) are resampled; the slice axis k is left untouched so slice
indices keep their meaning. Voxel edges of the field of view are aligned (the first and last
voxel edges coincide), so a round trip returns to the same physical positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class InplaneResampling:
    """Linear resampling of the i and j axes from ``spacing`` to ``target`` mm."""

    in_shape: tuple[int, int, int]
    spacing: tuple[float, float]
    target: tuple[float, float]

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (max(1, int(round(self.in_shape[0] * self.spacing[0] / self.target[0]))),
                max(1, int(round(self.in_shape[1] * self.spacing[1] / self.target[1]))),
                self.in_shape[2])

    def _map(self, shape_from, shape_to):
        # output index v -> input index u, aligning the outer voxel edges
        scale = np.array([shape_from[0] / shape_to[0], shape_from[1] / shape_to[1], 1.0])
        offset = 0.5 * scale - 0.5
        offset[2] = 0.0
        return scale, offset

    def forward(self, array: np.ndarray, order: int = 1) -> np.ndarray:
        """``(I, J, K)`` at ``spacing`` -> ``out_shape`` at ``target`` (linear by default)."""
        if self.is_identity:
            return array
        scale, offset = self._map(self.in_shape, self.out_shape)
        return ndimage.affine_transform(np.asarray(array, dtype=np.float32), scale, offset,
                                        output_shape=self.out_shape, order=order, mode="nearest")

    def inverse(self, array: np.ndarray, order: int = 1) -> np.ndarray:
        """``out_shape`` -> the input grid ``in_shape`` (linear for probabilities)."""
        if self.is_identity:
            return array
        scale, offset = self._map(self.out_shape, self.in_shape)
        return ndimage.affine_transform(np.asarray(array, dtype=np.float32), scale, offset,
                                        output_shape=self.in_shape, order=order, mode="nearest")

    @property
    def is_identity(self) -> bool:
        return self.out_shape == tuple(self.in_shape)
