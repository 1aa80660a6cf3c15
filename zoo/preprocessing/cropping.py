"""Centred crop/pad of 2D slices to a fixed in-plane size, with its exact inverse."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CenterCropPad:
    """Centre crop or pad each in-plane axis of ``(N, H, W, ...)`` slices to ``size`` (spec
    ``wmh_ensemble.md`` §4 step 4).

    For an axis of length ``s`` and target ``t``: if ``s > t`` crop starting at
    ``floor((s - t) / 2)``; if ``s < t`` pad ``floor((t - s) / 2)`` before and the rest after.
    """

    in_size: tuple[int, int]
    size: tuple[int, int]

    def _offsets(self, axis: int) -> tuple[int, int]:
        s, t = self.in_size[axis], self.size[axis]
        if s >= t:
            return (s - t) // 2, 0  # crop start, pad before
        return 0, (t - s) // 2

    def _regions(self) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """``(input_region, output_region)``: the index tuples of the kept pixels."""
        src, dst = [slice(None)], [slice(None)]
        for axis in (0, 1):
            crop, pad = self._offsets(axis)
            length = min(self.in_size[axis], self.size[axis])
            src.append(slice(crop, crop + length))
            dst.append(slice(pad, pad + length))
        return tuple(src), tuple(dst)

    def forward(self, slices: np.ndarray, pad_value: float | np.ndarray = 0.0) -> np.ndarray:
        """``(N, H, W, ...)`` -> ``(N, size[0], size[1], ...)``; padding takes ``pad_value``
        (a scalar, or one value per trailing channel)."""
        n = slices.shape[0]
        out_shape = (n, *self.size, *slices.shape[3:])
        out = np.empty(out_shape, dtype=slices.dtype)
        out[...] = pad_value
        src, dst = self._regions()
        out[dst] = slices[src]
        return out

    def inverse(self, slices: np.ndarray, fill_value: float = 0.0) -> np.ndarray:
        """``(N, size[0], size[1], ...)`` -> ``(N, H, W, ...)``; regions that were cropped away
        get ``fill_value`` (probability 0, spec §10 step 1)."""
        n = slices.shape[0]
        out = np.full((n, *self.in_size, *slices.shape[3:]), fill_value, dtype=slices.dtype)
        src, dst = self._regions()
        out[src] = slices[dst]
        return out


@dataclass(frozen=True)
class CenterCropPadND:
    """Centre crop or pad the leading ``len(size)`` axes of an array to ``size`` (any number of
    axes, e.g. ``(X, Y, Z)`` volumes of the 3D entries; trailing channel axes are carried along).

    Per axis with ``diff = t − s``: ``odd="end"`` (default; spec ``spine_vertebrae.md`` §4 and
    the zoo's own weights) pads ``floor(diff/2)`` before and the rest after and crops
    ``floor(|diff|/2)`` at the start, the same rule as :class:`CenterCropPad` on the in-plane
    axes. ``odd="start"`` puts the odd voxel at the start: pad ``ceil(diff/2)`` before, crop
    ``ceil(|diff|/2)`` at the start; this is what TorchIO 0.18.86 ``CropOrPad`` (fastMONAI's
    ``PadOrCrop``) does, measured by ``tools/make_spine_parity_fixture.py`` (7 -> 10 pads 2
    before; 11 -> 8 drops 2 at the start). A target of ``None`` keeps that axis.
    """

    in_size: tuple[int, ...]
    size: tuple[int | None, ...]
    odd: str = "end"

    @property
    def out_size(self) -> tuple[int, ...]:
        return tuple(s if t is None else int(t) for s, t in zip(self.in_size, self.size))

    def _regions(self) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        src, dst = [], []
        if self.odd not in ("end", "start"):
            raise ValueError(f"odd must be 'end' or 'start'; got {self.odd!r}")
        half = (lambda d: -(-d // 2)) if self.odd == "start" else (lambda d: d // 2)
        for s, t in zip(self.in_size, self.out_size):
            crop, pad = (half(s - t), 0) if s >= t else (0, half(t - s))
            length = min(s, t)
            src.append(slice(crop, crop + length))
            dst.append(slice(pad, pad + length))
        return tuple(src), tuple(dst)

    def forward(self, array: np.ndarray, pad_value: float = 0.0) -> np.ndarray:
        """``(*in_size, ...)`` -> ``(*out_size, ...)``; padding takes ``pad_value``."""
        if tuple(array.shape[:len(self.in_size)]) != tuple(self.in_size):
            raise ValueError(f"array shape {array.shape} does not start with {self.in_size}")
        out = np.full((*self.out_size, *array.shape[len(self.in_size):]), pad_value, dtype=array.dtype)
        src, dst = self._regions()
        out[dst] = array[src]
        return out

    def inverse(self, array: np.ndarray, fill_value: float = 0.0) -> np.ndarray:
        """``(*out_size, ...)`` -> ``(*in_size, ...)``; cropped-away regions get ``fill_value``."""
        out = np.full((*self.in_size, *array.shape[len(self.in_size):]), fill_value, dtype=array.dtype)
        src, dst = self._regions()
        out[src] = array[dst]
        return out


@dataclass(frozen=True)
class AnchoredCropPadND(CenterCropPadND):
    """Crop or pad the leading axes of an array to ``size`` from explicit start indices: output
    voxel 0 of axis ``a`` is input voxel ``start[a]`` (negative = padding before, beyond the
    end = padding after). Same interface and exact inverse as :class:`CenterCropPadND`; a
    ``start`` of ``None`` keeps that axis centred.

    Used by ``skull_stripping`` to place a fixed 160 x 160 x 92 window on the head rather than
    on the centre of the field of view (:meth:`VolumePipeline.apply`, ``anchor: head_top``).
    """

    start: tuple[int | None, ...] = ()

    def _regions(self) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        centred = super()._regions()
        src, dst = list(centred[0]), list(centred[1])
        for axis, (s, t) in enumerate(zip(self.in_size, self.out_size)):
            st = self.start[axis] if axis < len(self.start) else None
            if st is None:
                continue
            lo, hi = max(int(st), 0), min(int(st) + t, s)
            hi = max(hi, lo)
            src[axis] = slice(lo, hi)
            dst[axis] = slice(lo - int(st), hi - int(st))
        return tuple(src), tuple(dst)
