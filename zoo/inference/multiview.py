"""Multi-view (2.5D) inference: one slice-wise ensemble per view, each mapped back to the 3D
grid, then fused voxel-wise (spec ``claustrum_multiview.md`` §8, ``neonatal_claustrum.md`` §9).

Used by both claustrum entries. Maps are ``(I, J, K)`` arrays on the common 3D grid the views
were cut from (see :meth:`zoo.preprocessing.pipeline.SlicePipeline.apply_views`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import keras
import numpy as np

from zoo import postprocessing
from zoo.inference.slicewise import predict_slices

BAND_FILLS = ("min", "nan_aware")


def predict_view(model: keras.Model, slices: np.ndarray, band_fraction: float,
                 batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Predict the in-band slices of one view with its (fused) ensemble.

    Args:
        model: maps ``(B, H, W, C)`` to ``(B, H, W, 1)`` probabilities (the view's members fused,
            i.e. the mean of their sigmoid maps, §8 step 1).
        slices: float32 ``(N, H, W, C)`` network input of the view.
        band_fraction: share of slices dropped at each end of the stacking axis: slices
            ``[int(f N), N - int(f N))`` are kept (§4 step 6; 0.20 adult, 0.25 neonatal).
        batch_size: slices per call.
    Returns:
        ``(probs, keep)``: float32 ``(N, H, W)`` probabilities, out-of-band slices filled with
        the minimum of the in-band predictions (the code's behaviour, §8 step 2), and the
        boolean ``(N,)`` in-band mask.
    """
    n = slices.shape[0]
    keep = ~postprocessing.end_slice_band(n, float(band_fraction))
    probs = predict_slices(model, slices, batch_size=batch_size, only=keep)
    if keep.any():
        probs[~keep] = float(probs[keep].min())
    return probs, keep


def fuse_views(maps: Sequence[np.ndarray], covered: Sequence[np.ndarray] | None = None,
               band_fill: str = "min") -> np.ndarray:
    """Equal-weight voxel-wise fusion of the views' probability maps (§8 step 3).

    Args:
        maps: one float ``(I, J, K)`` probability map per view, on one grid.
        covered: per view, a boolean ``(I, J, K)`` (or broadcastable) mask of the voxels its
            band covers; needed for ``band_fill="nan_aware"``.
        band_fill: ``"min"`` (default, the authors' code): plain mean of every view, so a voxel
            outside one view's band gets that view's fill value; ``"nan_aware"`` (deviation D7):
            the mean of the views that cover the voxel (0 where none does).
    Returns:
        float32 ``(I, J, K)`` fused probability.
    Raises:
        ValueError: no maps, shapes differ, unknown ``band_fill`` or ``covered`` missing.
    """
    if not maps:
        raise ValueError("fuse_views needs at least one view")
    shape = np.shape(maps[0])
    if any(np.shape(m) != shape for m in maps):
        raise ValueError(f"views must share one grid; got shapes {[np.shape(m) for m in maps]}")
    if band_fill not in BAND_FILLS:
        raise ValueError(f"band_fill must be one of {BAND_FILLS}, got {band_fill!r}")
    stack = np.stack([np.asarray(m, dtype=np.float32) for m in maps])
    if band_fill == "min":
        return stack.mean(axis=0).astype(np.float32)
    if covered is None or len(covered) != len(maps):
        raise ValueError("band_fill='nan_aware' needs one coverage mask per view")
    cov = np.stack([np.broadcast_to(np.asarray(c, bool), shape) for c in covered]).astype(np.float32)
    total = (stack * cov).sum(axis=0)
    count = cov.sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1.0), 0.0).astype(np.float32)


def band_coverage(keep: np.ndarray, slice_order: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Boolean ``(I, J, K)`` (broadcast view) of the voxels whose slice is in a view's band.

    Args:
        keep: boolean ``(N,)`` in-band slices of the view (from :func:`predict_view`).
        slice_order: the view's axis order (``state.slice_order``; its first axis is the
            stacking axis).
        shape: ``(I, J, K)`` of the grid.
    """
    axis = int(slice_order[0])
    view_shape = [1, 1, 1]
    view_shape[axis] = len(keep)
    return np.broadcast_to(np.asarray(keep, bool).reshape(view_shape), tuple(shape))


def view_members(models: Sequence[keras.Model], views: Sequence[str],
                 per_view: int) -> Mapping[str, list[keras.Model]]:
    """Split ensemble members in card order (all members of the first view, then the next)
    into ``{view: [members]}``. Raises ValueError when the counts do not match."""
    if len(models) != per_view * len(views):
        raise ValueError(f"{len(models)} members cannot be {per_view} per view for views {list(views)}")
    return {v: list(models[i * per_view:(i + 1) * per_view]) for i, v in enumerate(views)}
