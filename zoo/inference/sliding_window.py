"""Sliding-window inference with overlap blending for volumes larger than the network window."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

BLENDS = ("constant", "gaussian")


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start indices of windows of length ``window`` covering ``[0, size)`` with the given
    fractional ``overlap`` (step ``max(1, floor(window·(1 − overlap)))``; the last window ends
    at ``size``). Raises ValueError when ``size < window`` (pad first)."""
    if size < window:
        raise ValueError(f"axis of size {size} is smaller than the window {window}; pad it first")
    step = max(1, int(window * (1.0 - overlap)))
    starts = list(range(0, size - window + 1, step))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def blend_weights(window: Sequence[int], blend: str = "constant", sigma_scale: float = 0.125) -> np.ndarray:
    """Per-voxel weights ``window`` of one window: ones (``constant``) or a separable Gaussian
    centred on the window with sigma ``sigma_scale · window`` per axis (``gaussian``, the
    MONAI/nnU-Net choice), scaled to max 1 and floored at 1e-3 so every voxel counts."""
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}; got {blend!r}")
    if blend == "constant":
        return np.ones(tuple(window), np.float32)
    w = np.ones((), np.float64)
    for n in window:
        c = (n - 1) / 2.0
        g = np.exp(-0.5 * ((np.arange(n) - c) / max(sigma_scale * n, 1e-6)) ** 2)
        w = np.multiply.outer(w, g)
    return np.maximum(w / w.max(), 1e-3).astype(np.float32)


def sliding_window(predict: Callable[[np.ndarray], np.ndarray], volume: np.ndarray, window: Sequence[int],
                   overlap: float = 0.25, blend: str = "constant", batch_size: int = 1) -> np.ndarray:
    """Predict a ``(D, H, W, C)`` volume window by window and blend the overlaps.

    Args:
        predict: maps a batch ``(N, *window, C)`` to ``(N, *window, K)`` (e.g. logits).
        volume: ``(D, H, W, C)`` float32, at least ``window`` along each spatial axis.
        window: ``(d, h, w)`` network window (``spine_vertebrae``: 16 x 400 x 400).
        overlap: fraction of the window shared by neighbouring windows (0 <= overlap < 1).
        blend: ``constant`` (plain mean of overlapping windows) or ``gaussian``.
        batch_size: windows per call of ``predict``.
    Returns:
        ``(D, H, W, K)`` float32: the weighted mean of the window outputs at each voxel. A
        volume equal to the window is one call, output identical to ``predict``'s.
    Raises:
        ValueError: the volume is smaller than the window, or overlap outside [0, 1).
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1); got {overlap}")
    window = tuple(int(w) for w in window)
    starts = [window_starts(n, w, overlap) for n, w in zip(volume.shape[:3], window)]
    corners = [(a, b, c) for a in starts[0] for b in starts[1] for c in starts[2]]
    weights = blend_weights(window, blend)[..., None]
    out = None
    norm = np.zeros((*volume.shape[:3], 1), np.float32)
    for i in range(0, len(corners), batch_size):
        chunk = corners[i:i + batch_size]
        batch = np.stack([volume[a:a + window[0], b:b + window[1], c:c + window[2]] for a, b, c in chunk])
        pred = np.asarray(predict(batch), np.float32)
        if out is None:
            out = np.zeros((*volume.shape[:3], pred.shape[-1]), np.float32)
        for (a, b, c), p in zip(chunk, pred):
            region = (slice(a, a + window[0]), slice(b, b + window[1]), slice(c, c + window[2]))
            out[region] += p * weights
            norm[region] += weights
    return out / norm
