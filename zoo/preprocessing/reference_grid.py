"""Resampling onto a fixed reference grid centred on a mask's centre of mass (the claustrum
reference profile: ANTsPyNet 0.3.2 ``claustrum_segmentation``).

The reference grid has ``size`` voxels of 1 mm along the ITK/ANTs physical axes (LPS: ``+x`` to
the left, ``+y`` posterior, ``+z`` superior) with its origin at 0. It is translated by
``t = com(mask) - (size - 1) / 2`` (both in LPS mm; the mask's centre of mass is its mean voxel
centre in world coordinates): reference voxel ``p`` takes the image at world point ``p + t``
(LPS), interpolated linearly, 0 outside the image. The inverse takes each input voxel's world
point ``x`` and interpolates the reference-grid map at ``x - t`` (0 outside the grid).

Arrays are ``(I, J, K)`` in the input's voxel order; affines are 4x4 voxel-to-world RAS in mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zoo import errors
from zoo.preprocessing import threaded

_LPS = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS (its own inverse)

__all__ = ["ReferenceGrid"]


@dataclass(frozen=True)
class ReferenceGrid:
    """Input grid (``in_affine`` RAS, ``in_shape``) <-> a 1 mm LPS-aligned grid of ``size``
    voxels translated by ``translation`` (LPS mm)."""

    in_affine: np.ndarray
    in_shape: tuple[int, int, int]
    size: tuple[int, int, int]
    translation: np.ndarray

    @classmethod
    def centred_on(cls, affine: np.ndarray, mask: np.ndarray, size) -> "ReferenceGrid":
        """The grid whose centre ``(size - 1) / 2`` falls on the centre of mass of ``mask``
        (boolean ``(I, J, K)`` on the grid of ``affine``). Raises ConstantImageError for an
        empty mask."""
        idx = np.argwhere(np.asarray(mask) > 0)
        if idx.size == 0:
            raise errors.ConstantImageError("the brain mask is empty; no centre of mass to put the reference grid on")
        com_vox = idx.mean(axis=0)
        com_lps = _LPS @ (np.asarray(affine, float)[:3, :3] @ com_vox + np.asarray(affine, float)[:3, 3])
        size = tuple(int(s) for s in size)
        return cls(np.asarray(affine, float), tuple(int(s) for s in np.shape(mask)), size,
                   com_lps - (np.array(size, float) - 1.0) / 2.0)

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return self.size

    def out_affine(self, _affine: np.ndarray | None = None) -> np.ndarray:
        """4x4 RAS affine of the reference grid: voxel ``p`` -> RAS ``diag(-1, -1, 1) (p + t)``."""
        aff = np.eye(4)
        aff[:3, :3] = _LPS
        aff[:3, 3] = _LPS @ self.translation
        return aff

    def _lps_index_map(self) -> tuple[np.ndarray, np.ndarray]:
        """``(M, b)`` with input continuous index ``= M p + b`` for reference voxel ``p``."""
        inv = np.linalg.inv(self.in_affine)
        m = inv[:3, :3] @ _LPS
        return m, inv[:3, :3] @ (_LPS @ self.translation) + inv[:3, 3]

    def forward(self, volume: np.ndarray, order: int = 1) -> np.ndarray:
        """``(I, J, K)`` on the input grid -> ``size`` on the reference grid (float32; linear
        for ``order=1``, nearest for 0); 0 outside the input."""
        m, b = self._lps_index_map()
        return _resample(np.asarray(volume, np.float32), m, b, self.size, order)

    def inverse(self, volume: np.ndarray, order: int = 1) -> np.ndarray:
        """A map on the reference grid -> the input grid ``in_shape`` (float32, 0 outside)."""
        m, b = self._lps_index_map()
        m_inv = np.linalg.inv(m)
        return _resample(np.asarray(volume, np.float32), m_inv, -m_inv @ b, self.in_shape, order)


def _resample(volume: np.ndarray, matrix: np.ndarray, offset: np.ndarray, shape, order: int) -> np.ndarray:
    """``out[p] = volume(matrix @ p + offset)``; points more than half a voxel outside ``volume``
    get 0, points within it take the edge value (as ITK's linear interpolator)."""
    out = threaded.affine_transform(volume, matrix, offset=offset, output_shape=tuple(shape), order=order,
                                    mode="nearest", prefilter=False)
    inside = np.ones(tuple(shape), dtype=bool)
    grids = np.indices(tuple(shape), sparse=True)
    for axis in range(3):
        coord = sum(matrix[axis, a] * grids[a] for a in range(3)) + offset[axis]
        inside &= (coord >= -0.5) & (coord <= volume.shape[axis] - 0.5)
    out[~inside] = 0.0
    return out.astype(np.float32)
