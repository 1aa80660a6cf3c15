"""The invertible 3D pipeline of the volumetric entries (``spine_vertebrae``): one subject's
volume -> the network grid, and network-grid outputs -> the input's own grid.

    Volume (I, J, K) in the file's voxel order
    -> reorient (permutation/flips only)          e.g. RAS+: (X: L->R, Y: P->A, Z: I->S)
    -> resample to the card's spacing in mm       linear (labels: nearest); skipped within tolerance
    -> z-score over all voxels                    before crop/pad (spec spine_vertebrae.md §2, §4)
    -> crop/pad to the card's size                pad value from the card (0)
       (``large_inputs: sliding_window`` pads only, so a larger volume keeps its extent and is
       tiled by :func:`zoo.inference.sliding_window.sliding_window`); centred, or with
       ``anchor: head_top`` placed on the head found in the image (``skull_stripping``)

:meth:`VolumePipeline.invert` applies the exact inverse chain in reverse order (crop/pad
inverse, resampling back to the reoriented input grid, inverse reorientation), so outputs come
back on the input's shape, affine and header. The numbers come from the card's
``preprocessing.steps`` (``reorient``, ``resample``, ``zscore``, ``crop_pad``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

from zoo import errors
from zoo.io import Volume
from zoo.preprocessing.brainmask import head_mask
from zoo.preprocessing.cropping import AnchoredCropPadND, CenterCropPadND
from zoo.preprocessing.intensity import zscore
from zoo.preprocessing.orientation import Reorientation
from zoo.preprocessing.resampling import Resampling, TorchioResampling

LARGE_INPUTS = ("sliding_window", "crop")
#: Where a crop/pad window sits: the centre of the resampled grid, or on the head (in-plane
#: centre of the head's bounding box, top ``margin_vox`` voxels above the vertex).
ANCHORS = ("centre", "head_top")


@dataclass(frozen=True)
class VolumeState:
    """What :meth:`VolumePipeline.invert` needs to map an output back (one per subject).

    Attributes:
        reorientation: input voxel order -> the card's axis codes.
        resampling: reoriented grid -> network spacing, or ``None`` when skipped.
        crop: centred crop/pad of the resampled grid to the network array.
        grid_affine: 4x4 affine (mm) of the resampled grid before crop/pad.
        org_shape: the input's ``(I, J, K)``.
    """

    reorientation: Reorientation
    resampling: Resampling | TorchioResampling | None
    crop: CenterCropPadND
    grid_affine: np.ndarray
    org_shape: tuple[int, int, int]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing of the network grid in mm."""
        return tuple(float(s) for s in np.sqrt((self.grid_affine[:3, :3] ** 2).sum(axis=0)))

    @property
    def network_affine(self) -> np.ndarray:
        """4x4 affine (mm) of the network array (the resampled grid shifted by the crop/pad)."""
        src, dst = self.crop._regions()
        shift = np.array([s.start - d.start for s, d in zip(src, dst)], float)
        aff = self.grid_affine.copy()
        aff[:3, 3] = self.grid_affine[:3, :3] @ shift + self.grid_affine[:3, 3]
        return aff


class VolumePipeline:
    """Card-driven reorient -> resample -> z-score -> crop/pad, with its exact inverse.

    Args:
        steps: the card's ``preprocessing.steps`` (records with ``step`` = ``reorient``
            (``codes``), ``resample`` (``spacing_mm``, ``tolerance_mm``, ``grid``), ``zscore``
            (``region: all | head``: all voxels or the Otsu head, ``ddof``), ``crop_pad``
            (``size``, ``pad_value``, ``large_inputs``, ``odd``, ``anchor`` centre | head_top,
            ``margin_vox``)).

    Reference-profile keys (defaults = the zoo's own profile): ``resample.grid`` ``"edges"``
    (:class:`Resampling`: outer edges aligned, skipped within ``tolerance_mm``) or
    ``"torchio"`` (:class:`TorchioResampling`: TorchIO's grid, image minimum outside the field
    of view, integer inputs stay integer, skipped only when every axis is ``np.isclose`` to the
    target, as fastMONAI); ``zscore.ddof`` 0 (population std) or 1 (torch's sample std);
    ``crop_pad.odd`` ``"end"`` or ``"start"`` (:class:`CenterCropPadND`).
        large_inputs: override the card's ``crop_pad.large_inputs`` (``"sliding_window"``
            pads only; ``"crop"`` crops to ``size`` as the authors' code).
    Raises:
        CardError: an unknown step or value.
    """

    def __init__(self, steps: Sequence[Mapping[str, Any]], large_inputs: str | None = None):
        self.codes: tuple[str, ...] | None = None
        self.spacing: tuple[float, ...] | None = None
        self.tolerance = 1e-3
        self.normalise = False
        self.size: tuple[int, ...] | None = None
        self.pad_value = 0.0
        self.large_inputs = "sliding_window"
        self.anchor, self.margin_vox = "centre", 4
        self.zscore_region = "all"
        self.grid = "edges"
        self.ddof = 0
        self.odd = "end"
        for s in steps:
            kind = s["step"]
            if kind == "reorient":
                self.codes = tuple(s["codes"])
            elif kind == "resample":
                self.spacing = tuple(float(v) for v in s["spacing_mm"])
                self.tolerance = float(s.get("tolerance_mm", 1e-3))
                self.grid = str(s.get("grid", "edges"))
                if self.grid not in ("edges", "torchio"):
                    raise errors.CardError(f"volume pipeline: resample grid {self.grid!r} is not 'edges' or 'torchio'")
            elif kind == "zscore":
                if s.get("region", "all") not in ("all", "head"):
                    raise errors.CardError(f"volume pipeline: zscore region {s.get('region')!r} is not 'all' or 'head'")
                self.normalise = True
                self.zscore_region = str(s.get("region", "all"))
                self.ddof = int(s.get("ddof", 0))
            elif kind == "crop_pad":
                self.size = tuple(int(v) for v in s["size"])
                self.pad_value = float(s.get("pad_value", 0.0))
                self.large_inputs = str(s.get("large_inputs", "sliding_window"))
                self.anchor = str(s.get("anchor", "centre"))
                self.margin_vox = int(s.get("margin_vox", 4))
                self.odd = str(s.get("odd", "end"))
                if self.odd not in ("end", "start"):
                    raise errors.CardError(f"volume pipeline: crop_pad odd {self.odd!r} is not 'end' or 'start'")
            else:
                raise errors.CardError(f"volume pipeline: unknown preprocessing step {kind!r}")
        if large_inputs is not None:
            self.large_inputs = large_inputs
        if self.large_inputs not in LARGE_INPUTS:
            raise errors.CardError(f"large_inputs must be one of {LARGE_INPUTS}; got {self.large_inputs!r}")
        if self.anchor not in ANCHORS:
            raise errors.CardError(f"crop_pad anchor must be one of {ANCHORS}; got {self.anchor!r}")
        if self.anchor == "head_top" and (self.codes is None or "S" not in self.codes or self.size is None
                                          or self.large_inputs != "crop"):
            raise errors.CardError("crop_pad anchor head_top needs reorient codes with S, a size and "
                                   "large_inputs crop")

    # --- forward -------------------------------------------------------------------------------
    def state(self, vol: Volume) -> VolumeState:
        """The geometry of ``vol``'s mapping to the network array (no voxel data touched)."""
        codes = self.codes or tuple(vol.axcodes)
        reo = Reorientation.between(vol.affine, vol.shape, codes)
        aff = reo.target_affine(vol.affine)
        shape = tuple(int(n) for n in reo.forward(np.empty(vol.shape, np.uint8)).shape)
        spacing = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
        res = None
        if self.spacing is not None and self.grid == "torchio":
            if TorchioResampling.needed(spacing, self.spacing):
                res = TorchioResampling(shape, tuple(float(s) for s in spacing), self.spacing)
        elif self.spacing is not None and np.any(np.abs(spacing - np.array(self.spacing)) > self.tolerance):
            res = Resampling(shape, tuple(float(s) for s in spacing), self.spacing)
        if res is not None:
            aff, shape = res.out_affine(aff), res.out_shape
        if self.size is None:
            target: tuple[int | None, ...] = (None, None, None)
        elif self.large_inputs == "crop":
            target = self.size
        else:
            target = tuple(max(t, n) for t, n in zip(self.size, shape))
        return VolumeState(reo, res, CenterCropPadND(tuple(shape), target, odd=self.odd), aff, vol.shape)

    def apply(self, vol: Volume) -> tuple[np.ndarray, VolumeState]:
        """``vol`` -> the network array.

        Returns:
            ``(x, state)``: ``x`` float32 of shape ``state.crop.out_size`` in the card's axis
            order (RAS+: (X, Y, Z)), z-scored over all resampled voxels, padded with
            ``pad_value``; ``state`` for :meth:`invert` / :meth:`apply_label`.
        Raises:
            ConstantImageError: the resampled image is constant.
        """
        st = self.state(vol)
        if isinstance(st.resampling, TorchioResampling):  # integer inputs stay integer (TorchIO)
            x = st.reorientation.forward(np.asarray(vol.array))
            x = st.resampling.forward(x, order=1, dtype=x.dtype)
        else:
            x = st.reorientation.forward(np.asarray(vol.array, dtype=np.float32))
            if st.resampling is not None:
                x = st.resampling.forward(x, order=1)
        head = head_mask(x) if "head" in (self.anchor, self.zscore_region) else None
        if self.anchor == "head_top":
            st = replace(st, crop=AnchoredCropPadND(st.crop.in_size, st.crop.size, st.crop.odd,
                                                    start=self.head_start(head, vol)))
        if self.normalise:
            x = zscore(x, head if self.zscore_region == "head" else None, source=vol.source, ddof=self.ddof)
        return st.crop.forward(np.asarray(x, np.float32), self.pad_value), st

    def head_start(self, head: np.ndarray, vol: Volume) -> tuple[int, ...]:
        """Start indices of the window on the resampled grid (card axis order) for
        ``anchor: head_top``, from ``head``, the
        :func:`~zoo.preprocessing.brainmask.head_mask` of the resampled image; on each axis but S the window is centred on the head's bounding box; along S its top lies
        ``margin_vox`` voxels above the highest head voxel (the vertex), so a window shorter than
        the head keeps the brain and drops the neck.

        Raises:
            NoHeadError: no foreground was found (e.g. an empty or constant volume).
        """
        if not head.any():
            raise errors.NoHeadError(
                f"{vol.source or 'input'}: no head found (the Otsu foreground is empty); expected a head "
                "or brain MRI volume")
        axis_s = self.codes.index("S")
        start = []
        for axis, t in enumerate(self.size):
            idx = np.nonzero(head.any(axis=tuple(a for a in range(head.ndim) if a != axis)))[0]
            lo, hi = int(idx[0]), int(idx[-1])
            if axis == axis_s:
                start.append(hi + self.margin_vox + 1 - t)
            else:
                start.append(int(np.floor((lo + hi + 1) / 2.0 - t / 2.0)))
        return tuple(start)

    def apply_label(self, label: np.ndarray, state: VolumeState) -> np.ndarray:
        """A label map on the input grid ``(I, J, K)`` -> the network array (nearest
        neighbour, pad 0, no normalisation), uint8."""
        if tuple(label.shape) != tuple(state.org_shape):
            raise errors.GridMismatchError(f"label shape {label.shape} differs from the image {state.org_shape}")
        y = state.reorientation.forward(np.asarray(label))
        if state.resampling is not None:
            y = state.resampling.forward(y, order=0)
        return state.crop.forward(np.rint(y).astype(np.uint8), 0)

    # --- inverse -------------------------------------------------------------------------------
    def invert(self, array: np.ndarray, state: VolumeState, *, order: int = 1,
               fill_value: float = 0.0) -> np.ndarray:
        """A network-grid array ``state.crop.out_size`` -> the input grid ``(I, J, K)``.

        Undo the crop/pad (``fill_value`` where the input was cropped away), resample back
        (``order`` 1 linear for probabilities, 0 nearest for labels), undo the reorientation.
        Returns float32 (order 1) or the input dtype (order 0).
        """
        y = state.crop.inverse(np.asarray(array), fill_value)
        if state.resampling is not None:
            y = state.resampling.inverse(y, order=order)
        return np.ascontiguousarray(state.reorientation.inverse(y))
