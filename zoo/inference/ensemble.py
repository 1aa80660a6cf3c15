"""Fusing ensemble members into one Keras graph, so one batch runs through all of them in one call."""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
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
        fused model's weights too. Members that are not Keras models (the ONNX backend's
        :class:`~zoo.onnx_backend.OnnxMember`) give a :class:`MeanOfMembers` with the same calls.
    """
    if not members:
        raise ValueError("an ensemble needs at least one member")
    if len(members) == 1:
        return members[0]
    if not all(isinstance(m, keras.Model) for m in members):  # e.g. ONNX members
        return MeanOfMembers(members, name=name)
    inp = keras.Input(shape=tuple(members[0].inputs[0].shape[1:]), name="image")
    outs = [m(inp) for m in members]
    out = layers.Average(name="ensemble_mean", dtype="float32")(outs)
    return keras.Model(inp, out, name=name)


class MeanOfMembers:
    """The mean of several callable members' outputs, called like a Keras model
    (``f(x, training=False)``, ``f.predict_on_batch(x)``, ``f.predict(x)``).

    Used for members that cannot join one Keras graph (onnxruntime sessions); each member maps
    ``(B, ...)`` to ``(B, ..., K)`` and the result is their float32 mean (the same rule as
    :func:`fuse_members`).
    """

    def __init__(self, members: Sequence, name: str = "ensemble"):
        self.members = list(members)
        self.name = name

    def __call__(self, x, training: bool = False) -> np.ndarray:
        out = np.asarray(self.members[0](x, training=False), dtype=np.float32).copy()
        for m in self.members[1:]:
            out += np.asarray(m(x, training=False), dtype=np.float32)
        return out / np.float32(len(self.members))

    def predict_on_batch(self, x) -> np.ndarray:
        return self(x)

    def predict(self, x, batch_size: int = 32, verbose=0) -> np.ndarray:
        n = len(x)
        return np.concatenate([self(x[i:i + batch_size]) for i in range(0, n, batch_size)])
