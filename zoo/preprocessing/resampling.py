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

from zoo.preprocessing import threaded


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
        return threaded.affine_transform(np.asarray(array, dtype=np.float32), scale, offset,
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


def _lerp_axis(array: np.ndarray, axis: int, coords: np.ndarray, fill: float) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation of ``array`` along ``axis`` at continuous indices ``coords``.

    Inside ``[-0.5, n - 0.5)`` the index is clamped to the first/last voxel centre; the value
    is ``a + (b - a) * w`` (exact where neighbours are equal). Returns the interpolated array
    and a boolean ``(len(coords),)`` inside-mask (outside positions hold ``fill``)."""
    n = array.shape[axis]
    inside = (coords >= -0.5) & (coords < n - 0.5)
    u = np.clip(coords, 0.0, n - 1.0)
    lo = np.floor(u).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    w = u - lo
    shape = [1] * array.ndim
    shape[axis] = len(coords)
    a = np.take(array, lo, axis=axis)
    b = np.take(array, hi, axis=axis)
    out = a + (b - a) * w.reshape(shape)
    out = np.where(inside.reshape(shape), out, fill)
    return out, inside


@dataclass(frozen=True)
class TorchioResampling:
    """Resampling to a target spacing on TorchIO's grid: the ``Resample(spacing)`` of fastMONAI's
    preprocessing (TorchIO 0.18.86 with SimpleITK; behaviour measured on that release by
    ``tools/make_spine_parity_fixture.py``), written here with numpy.

    Grid: the spacing becomes exactly ``target``; ``ceil(n * spacing / target)`` voxels per axis
    (a singleton axis stays 1); the first voxel's outer edge stays where the input's was (output
    voxel ``v`` sits at input index ``(v + 0.5) * target / spacing - 0.5``), so the far edge may
    overshoot the input's field of view by up to one target voxel. Values: linear interpolation
    (axis 0, then 1, then 2), indices within half a voxel of the border clamped to the edge voxel,
    positions beyond that get ``pad_value`` (TorchIO's default: the image minimum). An integer
    input keeps its dtype: the interpolated value is truncated towards zero and clipped to the
    dtype's range (SimpleITK's cast), e.g. an 8-bit image stays 8-bit.
    Attributes: as :class:`Resampling` (no ``None`` targets).
    """

    in_shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    target: tuple[float, float, float]

    @staticmethod
    def needed(spacing, target) -> bool:
        """fastMONAI's rule: resample unless every axis is ``np.isclose`` to the target."""
        return not bool(np.all(np.isclose(np.asarray(spacing, float), np.asarray(target, float))))

    @property
    def _ratio(self) -> np.ndarray:
        return np.array(self.target, float) / np.array(self.spacing, float)

    @property
    def out_shape(self) -> tuple[int, int, int]:
        """``ceil(n * spacing / target)`` per axis (1 stays 1)."""
        return tuple(1 if n == 1 else int(np.ceil(n * s / t))
                     for n, s, t in zip(self.in_shape, self.spacing, self.target))

    @property
    def out_spacing(self) -> tuple[float, float, float]:
        return tuple(float(t) for t in self.target)

    @property
    def is_identity(self) -> bool:
        return False

    def out_affine(self, affine: np.ndarray) -> np.ndarray:
        """The 4x4 affine of the resampled grid (first outer voxel edge kept)."""
        r = self._ratio
        step = np.diag([*r, 1.0])
        step[:3, 3] = 0.5 * r - 0.5
        return np.asarray(affine, float) @ step

    def _coords_forward(self) -> list[np.ndarray]:
        return [(np.arange(m) + 0.5) * r - 0.5 for m, r in zip(self.out_shape, self._ratio)]

    def _coords_inverse(self) -> list[np.ndarray]:
        return [(np.arange(n) + 0.5) / r - 0.5 for n, r in zip(self.in_shape, self._ratio)]

    @staticmethod
    def _interpolate(array: np.ndarray, coords: list[np.ndarray], order: int, fill: float) -> np.ndarray:
        out = np.asarray(array, np.float64)
        if order == 0:
            for axis, c in enumerate(coords):
                n = out.shape[axis]
                inside = (c >= -0.5) & (c < n - 0.5)
                idx = np.clip(np.floor(c + 0.5), 0, n - 1).astype(np.int64)
                out = np.take(out, idx, axis=axis)
                shape = [1] * out.ndim
                shape[axis] = len(c)
                out = np.where(inside.reshape(shape), out, fill)
            return out
        for axis, c in enumerate(coords):
            out, _ = _lerp_axis(out, axis, c, fill)
        return out

    def forward(self, array: np.ndarray, order: int = 1, *, pad_value: float | None = None,
                dtype=None) -> np.ndarray:
        """``(I, J, K)`` -> ``out_shape`` (linear, or nearest for ``order=0``).

        Args:
            pad_value: value beyond the field of view (default: the array's minimum).
            dtype: the input's original dtype; an integer dtype is kept (truncation, clipping).
        Returns:
            float32, or ``dtype`` when it is an integer type.
        """
        fill = float(np.min(array)) if pad_value is None else float(pad_value)
        out = self._interpolate(array, self._coords_forward(), order, fill)
        if dtype is not None and np.issubdtype(np.dtype(dtype), np.integer):
            info = np.iinfo(dtype)
            return np.clip(np.trunc(out), info.min, info.max).astype(dtype)
        return out.astype(np.float32)

    def inverse(self, array: np.ndarray, order: int = 1, *, fill_value: float = 0.0) -> np.ndarray:
        """``out_shape`` -> the input grid (linear for probabilities, nearest for labels);
        positions beyond the resampled field of view get ``fill_value``. float32."""
        return self._interpolate(array, self._coords_inverse(), order, fill_value).astype(np.float32)
