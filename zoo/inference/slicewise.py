"""Slice-wise batched prediction of 2D networks over a stack of slices."""

from __future__ import annotations

import keras
import numpy as np


def predict_slices(model: keras.Model, slices: np.ndarray, batch_size: int = 8,
                   only: np.ndarray | None = None, fill_value: float = 0.0) -> np.ndarray:
    """Run a 2D model over ``(N, H, W, C)`` slices in batches.

    Args:
        model: maps ``(B, H, W, C)`` to ``(B, H, W, 1)`` probabilities (e.g. a fused ensemble).
        slices: float32 network input.
        batch_size: slices per call.
        only: optional boolean ``(N,)``; slices where it is False are not run and get
            ``fill_value`` (e.g. slices without brain). None runs every slice.
    Returns:
        float32 ``(N, H, W)`` foreground probabilities.
    """
    n = slices.shape[0]
    out = np.full((n, *slices.shape[1:3]), fill_value, dtype=np.float32)
    idx = np.arange(n) if only is None else np.nonzero(only)[0]
    for start in range(0, len(idx), batch_size):
        sel = idx[start:start + batch_size]
        y = model.predict_on_batch(slices[sel])  # compiled once per model, then reused
        out[sel] = np.asarray(y)[..., -1]
    return out
