"""Fusing ensemble members into one Keras graph, so one batch runs through all of them in one call."""

from __future__ import annotations

from typing import Sequence

import keras
from keras import layers


def fuse_members(members: Sequence[keras.Model], name: str = "ensemble") -> keras.Model:
    """One Functional model whose output is the mean of the members' probability maps.

    Args:
        members: models with identical input shapes ``(H, W, C)`` and outputs ``(H, W, K)``
            (K = 1 sigmoid or 2 softmax; the foreground is the last channel).
        name: the fused model's name.
    Returns:
        ``keras.Model`` mapping ``(N, H, W, C)`` to the channel-wise ensemble mean
        ``(N, H, W, K)`` in float32 (spec ``wmh_ensemble.md`` §9: mean of the members' maps).
        The members' layers are shared, not copied: weights loaded into a member are the
        fused model's weights too.
    """
    if not members:
        raise ValueError("an ensemble needs at least one member")
    if len(members) == 1:
        return members[0]
    inp = keras.Input(shape=tuple(members[0].inputs[0].shape[1:]), name="image")
    outs = [m(inp) for m in members]
    out = layers.Average(name="ensemble_mean", dtype="float32")(outs)
    return keras.Model(inp, out, name=name)
