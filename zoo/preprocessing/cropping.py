"""Centred crop/pad of 2D slices to a fixed in-plane size, with its exact inverse."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


#: Odd-pixel rules of :class:`CenterCropPad`: where the extra pixel goes when a size difference
#: is odd. ``zoo`` (spec ``wmh_ensemble.md`` §4 step 4): crop ``floor(d/2)`` at the start, pad
#: ``floor(d/2)`` before (the extra pixel after). ``antspynet`` (ANTsPyNet 0.3.2's
#: ``pad_or_crop_image_to_size``: symmetric zero padding of every axis by an even amount, then a
#: centred crop starting at ``floor(d/2)``): output pixel ``o`` takes input pixel
#: ``o + floor((s - t) / 2)`` on every axis, i.e. crop ``floor(d/2)`` at the start, pad
#: ``ceil(d/2)`` before (the extra pixel before).
ODD_RULES = ("zoo", "antspynet")
#: Inverse rules: ``exact`` maps every kept pixel back where it came from; ``recentre`` undoes the
#: crop/pad with a second, independent centred crop/pad from ``size`` back to ``in_size`` under
#: the same odd rule (what ANTsPyNet does when it restacks predictions): for an odd size
#: difference this lands one pixel off the forward mapping, and the reference profiles keep it.
INVERSE_RULES = ("exact", "recentre")


def _offset(s: int, t: int, rule: str) -> int:
    """Output pixel ``o`` of a centred crop/pad from length ``s`` to ``t`` takes input pixel
    ``o + offset`` (negative offset = padding before)."""
    if rule == "antspynet":
        return (s - t) // 2
    return (s - t) // 2 if s >= t else -((t - s) // 2)


def _axis_regions(s: int, t: int, off: int) -> tuple[slice, slice]:
    """``(input_region, output_region)`` of one axis for ``out[o] = in[o + off]``."""
    src0, dst0 = max(off, 0), max(-off, 0)
    length = max(0, min(s - src0, t - dst0))
    return slice(src0, src0 + length), slice(dst0, dst0 + length)


@dataclass(frozen=True)
class CenterCropPad:
    """Centre crop or pad each in-plane axis of ``(N, H, W, ...)`` slices to ``size`` (spec
    ``wmh_ensemble.md`` §4 step 4).

    For an axis of length ``s`` and target ``t``: if ``s > t`` crop starting at
    ``floor((s - t) / 2)``; if ``s < t`` pad ``floor((t - s) / 2)`` before and the rest after
    (``rule="zoo"``), or ``ceil((t - s) / 2)`` before (``rule="antspynet"``, see ``ODD_RULES``).
    ``inverse_rule`` (``INVERSE_RULES``): ``exact`` (default) or ``recentre``.
    """

    in_size: tuple[int, int]
    size: tuple[int, int]
    rule: str = "zoo"
    inverse_rule: str = "exact"

    def __post_init__(self) -> None:
        if self.rule not in ODD_RULES:
            raise ValueError(f"crop_pad odd rule must be one of {ODD_RULES}, got {self.rule!r}")
        if self.inverse_rule not in INVERSE_RULES:
            raise ValueError(f"crop_pad inverse must be one of {INVERSE_RULES}, got {self.inverse_rule!r}")

    def _offsets(self, axis: int) -> tuple[int, int]:
        off = _offset(self.in_size[axis], self.size[axis], self.rule)
        return max(off, 0), max(-off, 0)  # crop start, pad before

    def _regions(self, inverse: bool = False) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """``(input_region, output_region)``: the index tuples of the kept pixels (for the
        ``recentre`` inverse with ``inverse=True``: of the size -> in_size mapping, as
        ``(region in size, region in in_size)``)."""
        src, dst = [slice(None)], [slice(None)]
        for axis in (0, 1):
            s, t = self.in_size[axis], self.size[axis]
            if inverse:
                s, t = t, s
            a, b = _axis_regions(s, t, _offset(s, t, self.rule))
            src.append(a)
            dst.append(b)
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
        if self.inverse_rule == "recentre":
            src, dst = self._regions(inverse=True)
            out[dst] = slices[src]
            return out
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

    def valid_box(self) -> tuple[slice, ...]:
        """Slices of the output grid that hold input voxels (everything else is padding)."""
        return self._regions()[1]

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
