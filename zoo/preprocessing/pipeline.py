"""Invertible preprocessing for slice-wise 2D models, driven by the card's ordered step list.

Steps (card ``preprocessing.steps``, applied in order; each is exactly inverted on outputs):

=================== =========================================================== ==========
step                parameters                                                  inverse
=================== =========================================================== ==========
``reorient``        ``codes`` e.g. ``[L, A, S]`` (permutation/flips only)        exact
``resample_inplane`` ``spacing_mm`` ``[si, sj]`` or null (native spacing)        linear
``brain_mask``      ``method`` threshold|nonzero, ``thresholds`` per input,      none needed
                    ``largest_cc``, ``fill_holes``, ``shared`` (one mask for all)
``zscore``          statistics inside the brain mask, per input                  none needed
``slices``          ``axis``: voxel axis that indexes the 2D slices              exact
``crop_pad``        ``size`` ``[H, W]``, ``pad_value`` min|zero                  exact (0 fill)
=================== =========================================================== ==========

A user-given brain mask (input ``brain_mask``) replaces the computed one. Volumes enter as
``(I, J, K)`` arrays; the network input leaves as ``(N, H, W, C)`` float32 with channels in
the card's order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from zoo.io import Volume
from zoo.preprocessing import brainmask
from zoo.preprocessing.cropping import CenterCropPad
from zoo.preprocessing.intensity import zscore
from zoo.preprocessing.orientation import Reorientation
from zoo.preprocessing.resampling import InplaneResampling

MASK_INPUT = "brain_mask"
KNOWN_STEPS = ("reorient", "resample_inplane", "brain_mask", "zscore", "slices", "crop_pad")


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

        Args:
            volumes: name -> Volume for every channel, plus optionally ``"brain_mask"``.
        Returns:
            ``(x, state)``: ``x`` float32 ``(N, H, W, C)``; ``state`` for :meth:`invert`.
        Raises:
            ConstantImageError: empty brain mask or constant intensities.
        """
        ref = volumes[self.channels[0]]
        state = PipelineState(reference=ref)
        data = {name: np.asarray(volumes[name].array) for name in self.channels}
        given_mask = volumes.get(MASK_INPUT)
        mask = None if given_mask is None else np.asarray(given_mask.array) > 0
        spacing = ref.spacing
        sources = {name: volumes[name].source for name in self.channels}
        slices = None
        for step in self.steps:
            kind = step["step"]
            if kind == "reorient":
                r = Reorientation.between(ref.affine, ref.shape, step["codes"])
                state.reorientation = r
                data = {k: r.forward(v) for k, v in data.items()}
                mask = None if mask is None else r.forward(mask)
                spacing = _reoriented_spacing(spacing, r)
            elif kind == "resample_inplane":
                target = step.get("spacing_mm")
                if target is None:
                    continue
                shape = next(iter(data.values())).shape
                rs = InplaneResampling(tuple(shape), (float(spacing[0]), float(spacing[1])),
                                       (float(target[0]), float(target[1])))
                state.resampling = rs
                data = {k: rs.forward(v) for k, v in data.items()}
                mask = None if mask is None else rs.forward(mask.astype(np.float32), order=0) > 0.5
            elif kind == "brain_mask":
                state.masks = self._masks(step, data, mask)
            elif kind == "zscore":
                data = {k: zscore(v, state.masks.get(k), source=sources[k]) for k, v in data.items()}
            elif kind == "slices":
                axis = int(step["axis"])
                order = (axis, *[a for a in (2, 1, 0) if a != axis])
                state.slice_order = order
                slices = np.stack([np.transpose(data[c], order) for c in self.channels], axis=-1)
            elif kind == "crop_pad":
                if slices is None:
                    raise ValueError("crop_pad must come after slices")
                size = tuple(int(s) for s in step["size"])
                crop = CenterCropPad(tuple(slices.shape[1:3]), size)
                state.crop = crop
                if step.get("pad_value", "min") == "min":
                    pad = slices.reshape(-1, slices.shape[-1]).min(axis=0)
                else:
                    pad = np.zeros(slices.shape[-1], dtype=slices.dtype)
                slices = crop.forward(slices, pad)
        if slices is None:
            raise ValueError("the preprocessing steps must include 'slices'")
        x = np.ascontiguousarray(slices, dtype=np.float32)
        state.network_shape = x.shape
        return x, state

    def _masks(self, step: Mapping[str, Any], data: Mapping[str, np.ndarray],
               given: np.ndarray | None) -> dict[str, np.ndarray]:
        if given is not None:
            return {k: given for k in data}
        method = step.get("method", "threshold")
        if method == "nonzero":
            masks = {k: brainmask.nonzero_mask(v) for k, v in data.items()}
        elif method == "threshold":
            thresholds = step["thresholds"]
            masks = {k: brainmask.threshold_mask(v, float(thresholds[k]),
                                                 largest_cc=bool(step.get("largest_cc", True)),
                                                 fill_holes=bool(step.get("fill_holes", True)))
                     for k, v in data.items()}
        else:
            raise ValueError(f"brain_mask method {method!r} needs a '{MASK_INPUT}' input")
        if step.get("shared", False):
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
        out = np.asarray(maps, dtype=np.float32)
        if state.crop is not None:
            out = state.crop.inverse(out, fill_value)
        if state.slice_order is not None:
            out = np.transpose(out, np.argsort(state.slice_order))
        if state.resampling is not None:
            out = state.resampling.inverse(out)
        if state.reorientation is not None:
            out = state.reorientation.inverse(out)
        return np.ascontiguousarray(out)


def _reoriented_spacing(spacing: np.ndarray, r: Reorientation) -> np.ndarray:
    out = np.empty(3)
    for src_axis, (dst_axis, _) in enumerate(r.transform):
        out[int(dst_axis)] = spacing[src_axis]
    return out
