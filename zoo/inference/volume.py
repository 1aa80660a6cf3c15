"""One volume through an invertible 3D pipeline and a network, back onto the input grid: the
shared skeleton of the volumetric entries (``spine_vertebrae``, ``skull_stripping``)."""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np


def probability_on_input_grid(pipe: Any, ref: Any, network: Callable[[np.ndarray], np.ndarray]):
    """``ref`` -> ``pipe.apply`` -> ``network`` -> ``pipe.invert`` (linear, 0 outside the window).

    Args:
        pipe: a :class:`~zoo.preprocessing.volume_pipeline.VolumePipeline`.
        ref: the input :class:`~zoo.io.Volume` ``(I, J, K)``.
        network: network array ``(X, Y, Z)`` -> foreground probability ``(X, Y, Z)``.
    Returns:
        ``(x, state, prob, prob_native, timing)``: the network array, its
        :class:`~zoo.preprocessing.volume_pipeline.VolumeState`, the network-grid probability,
        the probability on the input grid (float32 ``(I, J, K)``) and the seconds of the
        ``preprocess`` and ``network`` stages.
    """
    timing = {}
    t0 = time.perf_counter()
    x, state = pipe.apply(ref)
    timing["preprocess"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    prob = network(x)
    timing["network"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    prob_native = pipe.invert(prob, state, order=1, fill_value=0.0).astype(np.float32)
    timing["invert"] = time.perf_counter() - t0
    return x, state, prob, prob_native, timing
