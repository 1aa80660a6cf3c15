"""Resampling of ``(I, J, K)`` volumes to a target voxel spacing, and back.

:class:`Resampling` resamples any subset of the three voxel axes (an axis whose target is
``None`` is left untouched, so e.g. slice indices keep their meaning); :class:`InplaneResampling`
is the in-plane case (i, j) used by the slice-wise 2D entries. The outer voxel edges of the
field of view are aligned (the first and last voxel edges coincide), so a round trip returns to
the same physical positions; the new spacing is the field of view divided by the new voxel
count, within half a voxel of the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Resampling:
    """Resampling of the voxel axes of an ``(I, J, K)`` volume from ``spacing`` to ``target`` mm.

    Attributes:
        in_shape: ``(I, J, K)`` of the input grid.
        spacing: voxel spacing of the input in mm, ``(si, sj, sk)``.
        target: target spacing in mm per axis; ``None`` keeps that axis as it is.
    """

    in_shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    target: tuple[float | None, float | None, float | None]

    @property
    def out_shape(self) -> tuple[int, int, int]:
        """Voxel counts after resampling: ``round(n * spacing / target)`` per resampled axis."""
        return tuple(n if t is None else max(1, int(round(n * s / t)))
                     for n, s, t in zip(self.in_shape, self.spacing, self.target))

    @property
    def out_spacing(self) -> tuple[float, float, float]:
        """The exact spacing of the resampled grid in mm (field of view / voxel count)."""
        return tuple(s * n / m for s, n, m in zip(self.spacing, self.in_shape, self.out_shape))

    @property
    def is_identity(self) -> bool:
        return self.out_shape == tuple(self.in_shape)

    def out_affine(self, affine: np.ndarray) -> np.ndarray:
        """The 4x4 voxel-to-world affine of the resampled grid, given the input's ``affine``
        (outer voxel edges aligned: voxel centre v maps to input index ``(v + 0.5) * n/m - 0.5``)."""
        scale = np.array(self.in_shape, float) / np.array(self.out_shape, float)
        step = np.diag([*scale, 1.0])
        step[:3, 3] = 0.5 * scale - 0.5
        return np.asarray(affine, float) @ step

    @staticmethod
    def _map(shape_from: Sequence[int], shape_to: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        # output index v -> input index u = scale * v + offset, aligning the outer voxel edges
        scale = np.array(shape_from, float) / np.array(shape_to, float)
        offset = 0.5 * scale - 0.5
        offset[scale == 1.0] = 0.0
        return scale, offset

    def _apply(self, array: np.ndarray, shape_from, shape_to, order: int) -> np.ndarray:
        if self.is_identity:
            return array
        scale, offset = self._map(shape_from, shape_to)
        return ndimage.affine_transform(np.asarray(array, dtype=np.float32), scale, offset,
                                        output_shape=tuple(shape_to), order=order, mode="nearest")

    def forward(self, array: np.ndarray, order: int = 1) -> np.ndarray:
        """``(I, J, K)`` at ``spacing`` -> ``out_shape`` at ``target`` (linear by default;
        ``order=0`` for label maps)."""
        return self._apply(array, self.in_shape, self.out_shape, order)

    def inverse(self, array: np.ndarray, order: int = 1) -> np.ndarray:
        """``out_shape`` -> the input grid ``in_shape`` (linear for probabilities)."""
        return self._apply(array, self.out_shape, self.in_shape, order)


class InplaneResampling(Resampling):
    """Linear resampling of the i and j axes from ``spacing`` to ``target`` mm; k is kept.

    ``InplaneResampling(in_shape, (si, sj), (ti, tj))``.
    """

    def __init__(self, in_shape: tuple[int, int, int], spacing: tuple[float, float],
                 target: tuple[float, float]):
        super().__init__(tuple(in_shape), (float(spacing[0]), float(spacing[1]), 1.0),
                         (float(target[0]), float(target[1]), None))
