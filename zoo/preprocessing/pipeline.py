"""Invertible preprocessing for slice-wise 2D models, driven by the card's ordered step list.

Steps (card ``preprocessing.steps``, applied in order; each is exactly inverted on outputs):

=================== =========================================================== ==========
step                parameters                                                  inverse
=================== =========================================================== ==========
``reorient``        ``codes`` e.g. ``[L, A, S]`` (permutation/flips only)        exact
``resample_inplane`` ``spacing_mm`` ``[si, sj]`` or null (native spacing)        linear
``brain_mask``      ``method`` threshold|nonzero|otsu|skull_stripping, ``thresholds``  none needed
                    per input, ``largest_cc``, ``fill_holes``, ``shared`` (one mask for all)
``zscore``          statistics inside the brain mask, per input (``region:        none needed
                    input``: over every voxel of the input as given, e.g. before
                    a ``com_crop``)
``slices``          ``axis``: voxel axis that indexes the 2D slices              exact
``crop_pad``        ``size`` ``[H, W]``, ``pad_value`` min|zero                  exact (0 fill)
``resample``        ``spacing_mm`` ``[si, sj, sk]`` (3D), ``order`` (3 = cubic)    linear
``denoise``         ``method`` none|patch_based (SimpleITK), ``params``           none needed
``minmax``          ``percentiles`` ``[lo, hi]`` inside the brain mask -> [-1, 1],  state.scaling
                    clipped; ``mask_background``: -1 outside the mask
``com_crop``        ``size`` ``[I, J, K]``: keep at most ``size`` voxels per axis,  exact (0 fill)
                    a window around the floor of the reference input's
                    intensity centre of mass (:func:`com_window`)
``reference_grid``  ``size`` ``[I, J, K]``: linear resampling onto a 1 mm LPS grid    linear
                    centred on the brain mask's centre of mass (a given mask, else
                    the reference input != 0); the mask is resampled the same way
                    and kept where >= 0.5 (:mod:`zoo.preprocessing.reference_grid`)
=================== =========================================================== ==========

``zscore`` with ``zero_outside: true`` sets voxels outside the brain mask to 0 afterwards.
``crop_pad`` also takes ``odd`` (``zoo`` | ``antspynet``: the side of the extra pixel of an odd
size difference) and ``inverse`` (``exact`` | ``recentre``), see
:mod:`zoo.preprocessing.cropping`. A ``slices`` step may give ``flips`` (view name -> in-plane
axes ``1`` rows / ``2`` columns of ``(N, H, W)`` to mirror after crop/pad; undone on outputs).

Multi-view (``claustrum_multiview.md`` §4): a ``slices`` step may name ``views`` (view name ->
voxel axis of the reoriented grid, e.g. ``{axial: 2, coronal: 1}``) and ``view`` (the view that
:meth:`SlicePipeline.apply` cuts, e.g. for training); :meth:`SlicePipeline.apply_views` runs the
volume steps once and cuts every view. ``brain_mask`` with ``apply_given: true`` also zeroes the
image outside a given brain mask (skull stripping by the user's mask). ``method:
skull_stripping`` runs the ``skull_stripping`` entry on the reference input (its own grid)
when no mask is given, uses its mask like a given one, zeroes the image outside it and records
the run in ``PipelineState.mask_record``.

A user-given brain mask (input ``brain_mask``) replaces the computed one. Volumes enter as
``(I, J, K)`` arrays; the network input leaves as ``(N, H, W, C)`` float32 with channels in
the card's order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from zoo import errors
from zoo.io import Volume
from zoo.preprocessing import brainmask
from zoo.preprocessing.cropping import CenterCropPad
from zoo.preprocessing.intensity import MinMaxScaling, zscore
from zoo.preprocessing.orientation import Reorientation
from zoo.preprocessing.resampling import InplaneResampling, Resampling

MASK_INPUT = "brain_mask"
KNOWN_STEPS = ("reorient", "resample_inplane", "resample", "brain_mask", "denoise", "zscore", "slices",
               "crop_pad", "minmax", "com_crop", "reference_grid")


@dataclass
class PipelineState:
    """What the forward pass recorded so that outputs can be mapped back to the input grid."""

    reference: Volume
    reorientation: Reorientation | None = None
    resampling: InplaneResampling | None = None
    slice_order: tuple[int, int, int] | None = None
    crop: CenterCropPad | None = None
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    network_shape: tuple[int, ...] = ()
    #: 4x4 voxel-to-world affine (RAS, mm) of the 3D grid the slices are cut from (after
    #: reorientation and resampling); ``resampling`` may also hold a 3D :class:`Resampling`.
    grid_affine: np.ndarray | None = None
    view: str | None = None
    #: Per-input :class:`MinMaxScaling` of a ``minmax`` step (its inverse maps [-1, 1] back).
    scaling: dict[str, MinMaxScaling] = field(default_factory=dict)
    #: How the brain mask was made when another entry made it (``mask_method=skull_stripping``:
    #: entry, card version, brain volume in mL, its QC flags), else ``None``.
    mask_record: dict | None = None
    #: ``com_crop``: the kept window ``((start, stop), ...)`` per axis and the grid shape before.
    window: tuple[tuple[int, int], ...] | None = None
    window_of: tuple[int, ...] | None = None
    #: In-plane axes of ``(N, H, W)`` mirrored before the network (``slices`` step ``flips``).
    flips: tuple[int, ...] = ()
    #: ``reference_grid``: the brain mask on the input grid (for output masking).
    input_mask: np.ndarray | None = None

    def brain_slices(self) -> np.ndarray:
        """Boolean ``(N,)``: slices of the network input that contain brain-mask voxels."""
        if not self.masks or self.slice_order is None:
            return np.ones(self.network_shape[0], dtype=bool)
        union = np.logical_or.reduce([m for m in self.masks.values()])
        axis = self.slice_order[0]
        other = tuple(a for a in range(3) if a != axis)
        return union.any(axis=other)


class SlicePipeline:
    """Preprocess co-registered volumes into 2D slices for a slice-wise network, and invert.

    Args:
        steps: the card's ordered list of ``{"step": name, ...parameters}``.
        channels: input names in channel order (``["flair", "t1"]``).
    Raises:
        ValueError: an unknown step name (cards are schema-validated before this).
    """

    def __init__(self, steps: Sequence[Mapping[str, Any]], channels: Sequence[str]):
        self.steps = [dict(s) for s in steps]
        self.channels = list(channels)
        for s in self.steps:
            if s["step"] not in KNOWN_STEPS:
                raise ValueError(f"unknown preprocessing step {s['step']!r}; known: {KNOWN_STEPS}")

    def apply(self, volumes: Mapping[str, Volume]) -> tuple[np.ndarray, PipelineState]:
        """Run the steps on volumes that already share one grid (see ``grid.align_inputs``).

        A ``slices`` step with ``views`` cuts its ``view`` (default: its first view), else its
        ``axis``.

        Args:
            volumes: name -> Volume for every channel, plus optionally ``"brain_mask"``.
        Returns:
            ``(x, state)``: ``x`` float32 ``(N, H, W, C)``; ``state`` for :meth:`invert`.
        Raises:
            ConstantImageError: empty brain mask or constant intensities.
            NonFiniteError: a denoising step produced non-finite values.
        """
        cut = next((i for i, s in enumerate(self.steps) if s["step"] == "slices"), None)
        if cut is None:
            raise ValueError("the preprocessing steps must include 'slices'")
        if any(s["step"] == "crop_pad" for s in self.steps[:cut]):
            raise ValueError("crop_pad must come after slices")
        step = self.steps[cut]
        data, state = self._volume_steps(volumes, self.steps[:cut])
        views = step.get("views")
        if views:
            state.view = step.get("view") or next(iter(views))
            if state.view not in views:
                raise ValueError(f"slices view {state.view!r} is not one of {sorted(views)}")
            axis = int(views[state.view])
        else:
            axis = int(step["axis"])
        return self._apply_slices(data, state, axis)

    def apply_views(self, volumes: Mapping[str, Volume],
                    views: Sequence[str]) -> dict[str, tuple[np.ndarray, PipelineState]]:
        """Run the volume steps once, then cut each of ``views`` (names of the ``slices`` step's
        ``views``, e.g. ``axial`` = voxel axis k, ``coronal`` = j of the RAS grid) and crop/pad
        it (spec ``claustrum_multiview.md`` §4 steps 4-5).

        Returns:
            view -> ``(x, state)`` as :meth:`apply` gives for that view; the states share the
            volume-level records (reorientation, resampling, masks, ``grid_affine``).
        Raises:
            ValueError: a view the ``slices`` step does not define.
        """
        cut = next((i for i, s in enumerate(self.steps) if s["step"] == "slices"), None)
        known = dict(self.steps[cut].get("views") or {}) if cut is not None else {}
        unknown = [v for v in views if v not in known]
        if unknown:
            raise ValueError(f"views {unknown} are not defined by the slices step (it has {sorted(known)})")
        data, state = self._volume_steps(volumes, self.steps[:cut])
        out = {}
        for view in views:
            vstate = PipelineState(**{**state.__dict__, "view": view})
            out[view] = self._apply_slices(data, vstate, int(known[view]))
        return out

    def _volume_steps(self, volumes: Mapping[str, Volume],
                      steps: Sequence[Mapping[str, Any]]) -> tuple[dict[str, np.ndarray], PipelineState]:
        """The steps before ``slices``: ``(I, J, K)`` volumes per channel and the state."""
        ref = volumes[self.channels[0]]
        state = PipelineState(reference=ref, grid_affine=np.asarray(ref.affine, float))
        data = {name: np.asarray(volumes[name].array) for name in self.channels}
        given_mask = volumes.get(MASK_INPUT)
        mask = None if given_mask is None else np.asarray(given_mask.array) > 0
        mask_step = next((s for s in steps if s["step"] == "brain_mask"), {})
        chained = mask is None and mask_step.get("method") == "skull_stripping"
        if chained:  # the skull_stripping entry on the reference input, on its own grid
            from zoo.entries.skull_stripping import brain_mask_for

            mask, state.mask_record = brain_mask_for(ref, weights=mask_step.get("mask_weights", "default"))
            _check_chained_mask(mask, data[self.channels[0]], state.mask_record, ref.source)
        spacing = ref.spacing
        sources = {name: volumes[name].source for name in self.channels}
        for step in steps:
            kind = step["step"]
            if kind == "reorient":
                r = Reorientation.between(ref.affine, ref.shape, step["codes"])
                state.reorientation = r
                state.grid_affine = r.target_affine(state.grid_affine)
                data = {k: r.forward(v) for k, v in data.items()}
                mask = None if mask is None else r.forward(mask)
                spacing = _reoriented_spacing(spacing, r)
            elif kind in ("resample_inplane", "resample"):
                target = step.get("spacing_mm")
                if target is None:
                    continue
                shape = tuple(next(iter(data.values())).shape)
                if kind == "resample_inplane":
                    rs = InplaneResampling(shape, (float(spacing[0]), float(spacing[1])),
                                           (float(target[0]), float(target[1])))
                else:
                    rs = Resampling(shape, tuple(float(v) for v in spacing),
                                    tuple(None if t is None else float(t) for t in target))
                state.resampling = rs
                state.grid_affine = rs.out_affine(state.grid_affine)
                order = int(step.get("order", 1))
                data = {k: rs.forward(v, order=order) for k, v in data.items()}
                mask = None if mask is None else rs.forward(mask.astype(np.float32), order=0) > 0.5
                out_spacing = np.asarray(rs.out_spacing, float)
                spacing = out_spacing if kind == "resample" else np.array([*out_spacing[:2], spacing[2]])
            elif kind == "brain_mask":
                if mask is not None and (step.get("apply_given", False) or chained):
                    data = {k: np.where(mask, v, 0).astype(np.float32) for k, v in data.items()}
                state.masks = self._masks(step, data, mask)
            elif kind == "denoise":
                from zoo.preprocessing.denoise import denoise

                data = {k: denoise(v, step, spacing_mm=spacing, source=sources[k]) for k, v in data.items()}
            elif kind == "zscore" and step.get("region") == "input":
                data = {k: zscore(v, source=sources[k], stats_from=volumes[k].array) for k, v in data.items()}
            elif kind == "zscore":
                data = {k: zscore(v, state.masks.get(k), source=sources[k]) for k, v in data.items()}
                if step.get("zero_outside") and state.masks:
                    data = {k: np.where(state.masks[k], v, 0).astype(np.float32) for k, v in data.items()}
            elif kind == "reference_grid":
                from zoo.preprocessing.reference_grid import ReferenceGrid

                base = mask if mask is not None else np.asarray(data[self.channels[0]]) != 0
                rg = ReferenceGrid.centred_on(state.grid_affine, base, step["size"])
                state.input_mask = base
                state.resampling = rg
                state.grid_affine = rg.out_affine()
                data = {k: rg.forward(v, order=int(step.get("order", 1))) for k, v in data.items()}
                mask = rg.forward(base.astype(np.float32)) >= 0.5
                state.masks = {k: mask for k in data}
                spacing = np.ones(3)
            elif kind == "com_crop":
                ref_data = data[self.channels[0]]
                window = com_window(ref_data, step["size"])
                state.window, state.window_of = window, tuple(ref_data.shape)
                region = tuple(slice(a, b) for a, b in window)
                data = {k: np.ascontiguousarray(v[region]) for k, v in data.items()}
                mask = None if mask is None else mask[region]
                state.masks = {k: m[region] for k, m in state.masks.items()}
                start = np.array([a for a, _ in window], float)
                state.grid_affine = state.grid_affine.copy()
                state.grid_affine[:3, 3] = state.grid_affine[:3, :3] @ start + state.grid_affine[:3, 3]
            elif kind == "minmax":
                state.scaling = {k: MinMaxScaling.fit(v, state.masks.get(k), tuple(step.get("percentiles", (0, 100))),
                                                      source=sources[k]) for k, v in data.items()}
                data = {k: state.scaling[k].forward(v, state.masks.get(k) if step.get("mask_background") else None)
                        for k, v in data.items()}
        return data, state

    def _apply_slices(self, data: Mapping[str, np.ndarray], state: PipelineState,
                      axis: int) -> tuple[np.ndarray, PipelineState]:
        """Cut ``(I, J, K)`` volumes along voxel ``axis`` and run the steps after ``slices``."""
        order = (axis, *[a for a in (2, 1, 0) if a != axis])
        state.slice_order = order
        slices = np.stack([np.transpose(data[c], order) for c in self.channels], axis=-1)
        cut = next(i for i, s in enumerate(self.steps) if s["step"] == "slices")
        start = cut + 1
        for step in self.steps[start:]:
            if step["step"] == "crop_pad":
                slices = self._crop_pad(step, slices, state)
        state.flips = tuple(int(a) for a in (self.steps[cut].get("flips") or {}).get(state.view, ()))
        if state.flips:  # after crop/pad, as the reference rotates the cropped slice
            slices = np.flip(slices, axis=state.flips)
        x = np.ascontiguousarray(slices, dtype=np.float32)
        state.network_shape = x.shape
        return x, state

    @staticmethod
    def _crop_pad(step: Mapping[str, Any], slices: np.ndarray, state: PipelineState) -> np.ndarray:
        size = tuple(int(s) for s in step["size"])
        crop = CenterCropPad(tuple(slices.shape[1:3]), size, rule=step.get("odd", "zoo"),
                             inverse_rule=step.get("inverse", "exact"))
        state.crop = crop
        if step.get("pad_value", "min") == "min":
            pad = slices.reshape(-1, slices.shape[-1]).min(axis=0)
        else:
            pad = np.zeros(slices.shape[-1], dtype=slices.dtype)
        return crop.forward(slices, pad)

    def _masks(self, step: Mapping[str, Any], data: Mapping[str, np.ndarray],
               given: np.ndarray | None) -> dict[str, np.ndarray]:
        if given is not None:
            return {k: given for k in data}
        method = step.get("method", "threshold")
        if method == "nonzero":
            masks = {k: brainmask.nonzero_mask(v) for k, v in data.items()}
        elif method == "otsu":
            masks = {k: brainmask.otsu_mask(v, int(step.get("erode_voxels", 6))) for k, v in data.items()}
        elif method == "threshold":
            thresholds = step["thresholds"]
            masks = {k: brainmask.threshold_mask(v, float(thresholds[k]),
                                                 largest_cc=bool(step.get("largest_cc", True)),
                                                 fill_holes=bool(step.get("fill_holes", True)))
                     for k, v in data.items()}
        else:
            raise ValueError(f"brain_mask method {method!r} needs a '{MASK_INPUT}' input")
        if step.get("shared", False) == "intersection":
            common = np.logical_and.reduce([masks[k] for k in self.channels])
            masks = {k: common for k in masks}
        elif step.get("shared", False):
            first = masks[self.channels[0]]
            masks = {k: first for k in masks}
        return masks

    def forward_label(self, labels: np.ndarray, state: PipelineState) -> np.ndarray:
        """Map a label volume ``(I, J, K)`` on the reference grid into network space
        ``(N, H, W)`` with the geometry recorded by :meth:`apply`: the same reorientation,
        nearest-neighbour in-plane resampling, slicing and crop/pad (padded with 0). Used by
        training, so training and prediction share one pipeline (no drift)."""
        out = np.asarray(labels)
        if state.reorientation is not None:
            out = state.reorientation.forward(out)
        if state.resampling is not None:
            out = state.resampling.forward(out.astype(np.float32), order=0)
        if state.slice_order is not None:
            out = np.transpose(out, state.slice_order)
        if state.crop is not None:
            out = state.crop.forward(out, 0)
        return np.ascontiguousarray(out)

    def invert(self, maps: np.ndarray, state: PipelineState, fill_value: float = 0.0) -> np.ndarray:
        """Map network-space maps ``(N, H, W)`` back to the reference input's grid ``(I, J, K)``.

        Cropped-away regions get ``fill_value``; in-plane resampling is undone linearly;
        reorientation and slicing exactly.
        """
        return self.grid_to_input(self.slices_to_grid(maps, state, fill_value), state)

    @staticmethod
    def slices_to_grid(maps: np.ndarray, state: PipelineState, fill_value: float = 0.0) -> np.ndarray:
        """Network-space maps ``(N, H, W)`` -> the 3D grid the slices were cut from (reoriented
        and resampled, ``state.grid_affine``): crop/pad inverted (cropped-away regions get
        ``fill_value``) and the slicing transposed back, both exact."""
        out = np.asarray(maps, dtype=np.float32)
        if state.flips:
            out = np.flip(out, axis=state.flips)
        if state.crop is not None:
            out = state.crop.inverse(out, fill_value)
        if state.slice_order is not None:
            out = np.transpose(out, np.argsort(state.slice_order))
        return out

    @staticmethod
    def grid_to_input(volume: np.ndarray, state: PipelineState) -> np.ndarray:
        """A map on the slicing grid (``state.grid_affine``) -> the reference input's grid
        ``(I, J, K)``: resampling undone linearly, reorientation exactly."""
        out = np.asarray(volume, dtype=np.float32)
        if state.window is not None:
            full = np.zeros(state.window_of, dtype=np.float32)
            full[tuple(slice(a, b) for a, b in state.window)] = out
            out = full
        if state.resampling is not None:
            out = state.resampling.inverse(out)
        if state.reorientation is not None:
            out = state.reorientation.inverse(out)
        return np.ascontiguousarray(out)


def com_window(array: np.ndarray, size) -> tuple[tuple[int, int], ...]:
    """The window ``((start, stop), ...)`` of at most ``size[a]`` voxels per axis around the
    intensity centre of mass of ``array``.

    ``c = floor(sum(x * v) / sum(v))`` per axis (voxel units, every voxel weighted by its value,
    as ITK's image moments); with ``n = size[a]`` and ``h = floor((n - 1) / 2)`` the window is
    ``[max(c - h, 0), min(c - h + n, N))``: the voxels that land in an ``n``-voxel grid whose
    centre voxel ``h`` is put on ``c`` (ANTsPyNet 0.3.2 ``sysu_media_wmh_segmentation``:
    a 256^3 reference grid, both centres floored, nearest-neighbour translation, then cropped to
    the image's support). Axes no longer than ``n`` are kept whole only when ``c`` is central
    enough, exactly as the reference.

    Raises:
        ConstantImageError: the intensities sum to 0 (no centre of mass).
    """
    from zoo import errors

    x = np.asarray(array, dtype=np.float64)
    total = x.sum()
    if not np.isfinite(total) or total == 0:
        raise errors.ConstantImageError("the image's intensities sum to 0; it has no centre of mass")
    window = []
    for axis, n in enumerate(size):
        other = tuple(a for a in range(x.ndim) if a != axis)
        profile = x.sum(axis=other)
        c = int(np.floor((profile * np.arange(x.shape[axis])).sum() / total))
        centre = (int(n) - 1) // 2
        window.append((max(c - centre, 0), min(c - centre + int(n), x.shape[axis])))
    return tuple(window)


def _check_chained_mask(mask: np.ndarray, reference: np.ndarray, record: Mapping[str, Any], source: str) -> None:
    """Refuse a ``mask_method=skull_stripping`` brain mask that holds none of the reference's
    signal: the whole-head model found no brain (a scan that does not cover the head, e.g. a slab
    of a few slices, gives an empty or misplaced mask), so the z-score inside it cannot work.

    Args:
        mask: bool ``(I, J, K)`` brain mask on the reference grid; reference: its ``(I, J, K)`` array.
        record: the skull_stripping record (brain volume in mL, QC flags); source: the input's name.
    Raises:
        NoHeadError: no voxel of the mask is non-zero in the reference.
    """
    if not np.any(mask & (reference != 0)):
        flags = "; ".join(record.get("flags", [])) or "no flags"
        raise errors.NoHeadError(
            f"{source}: the brain mask of the skull_stripping entry ({record.get('brain_ml', 0.0):.1f} mL; "
            f"{flags}) holds none of the image's signal. skull_stripping is a whole-head model: give a "
            "scan that covers the head, a brain_mask input, or mask_method=nonzero for a skull-stripped scan")


def _reoriented_spacing(spacing: np.ndarray, r: Reorientation) -> np.ndarray:
    out = np.empty(3)
    for src_axis, (dst_axis, _) in enumerate(r.transform):
        out[int(dst_axis)] = spacing[src_axis]
    return out
