"""3D residual CNN for benign vs malignant nodule classification (Kaliyugarasan et al., IJIMAI 2021).

Pure Keras 3 Functional builder, channels-last, spec ``specs/lung_nodule.md`` §4:

    CBR(1->64) -> MaxPool -> CR(64->64) -> CR(64->64) -> MaxPool -> CR(64->128) -> MaxPool
    -> CR(128->256) -> MaxPool -> CR(256->512)
    -> concat[GlobalMaxPool3D, GlobalAvgPool3D] (1024)
    -> BN -> Dropout(0.2) -> Dense 512 -> ReLU -> BN -> Dropout(0.4) -> Dense 2 (logits)

``CBR`` = Conv3D(k3, 'same', bias) -> BN -> ReLU; ``Res(n)`` = x + [CBR(n->n) -> Conv3D -> BN]
with no ReLU after the add; ``CR`` = CBR -> Res. 24,427,906 trainable parameters at any
input size (global pooling). The network outputs logits; the softmax is applied by the entry
(``p_malignant = softmax[1]``, spec §1).
"""

from __future__ import annotations

from typing import Sequence

import keras
from keras import layers

#: Trainable parameters of the network, spec §4 ("unit-test target").
N_TRAINABLE = 24_427_906
#: (filters, max-pool before the block) of the CR blocks after the stem, spec §4 table.
BLOCKS = ((64, False), (64, False), (128, True), (256, True), (512, True))
#: Layer-name prefixes of the spec's two layer groups (D3): the conv body and the head.
HEAD_PREFIX = "head_"

_BN = {"epsilon": 1e-5, "momentum": 0.9}  # PyTorch parity, spec §4


def _cbr(x, filters: int, name: str, init: str, relu: bool = True):
    x = layers.Conv3D(filters, 3, padding="same", use_bias=True, kernel_initializer=init,
                      name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn", **_BN)(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _cr(x, filters: int, name: str, init: str):
    x = _cbr(x, filters, f"{name}_a", init)
    r = _cbr(x, filters, f"{name}_b", init)
    r = _cbr(r, filters, f"{name}_c", init, relu=False)
    return layers.Add(name=f"{name}_add")([x, r])


def build_nodule_cnn3d(input_shape: Sequence[int] = (88, 91, 62, 1), *, dropout: Sequence[float] = (0.2, 0.4),
                       kernel_initializer: str = "he_normal", name: str = "nodule_cnn3d") -> keras.Model:
    """Build the 3D residual CNN of spec §4.

    Args:
        input_shape: ``(rows, cols, slices, 1)`` channels-last; the spec's sizes are
            ``(88, 91, 62, 1)`` (phase 2 / inference) and ``(44, 46, 31, 1)`` (phase 1). Each
            spatial size must be >= 16 (four floor max-pools).
        dropout: the head's two dropout rates (spec D10: code 0.2/0.4 default; paper 0.4/0.4).
        kernel_initializer: conv and dense initialiser (spec D8: ``he_normal``).
        name: model name.
    Returns:
        A Functional ``keras.Model`` mapping ``(B, *input_shape)`` float32 in [0, 1] to
        ``(B, 2)`` float32 logits (benign, malignant). The last Dense runs in float32 under
        mixed precision (spec §5).
    Raises:
        ValueError: a spatial size below 16.
    """
    if any(int(s) < 16 for s in input_shape[:3]):
        raise ValueError(f"every spatial size must be >= 16 (four max-pools), got {tuple(input_shape)}")
    inp = keras.Input(tuple(input_shape), name="ct_crop")
    x = _cbr(inp, 64, "stem", kernel_initializer)
    x = layers.MaxPool3D(2, strides=2, padding="valid", name="pool1")(x)
    pools = 1
    for i, (filters, pool) in enumerate(BLOCKS):
        if pool:
            pools += 1
            x = layers.MaxPool3D(2, strides=2, padding="valid", name=f"pool{pools}")(x)
        x = _cr(x, filters, f"cr{i + 1}", kernel_initializer)
    x = layers.Concatenate(name=f"{HEAD_PREFIX}concat")([layers.GlobalMaxPooling3D(name=f"{HEAD_PREFIX}gmp")(x),
                                                        layers.GlobalAveragePooling3D(name=f"{HEAD_PREFIX}gap")(x)])
    x = layers.BatchNormalization(name=f"{HEAD_PREFIX}bn1", **_BN)(x)
    x = layers.Dropout(float(dropout[0]), name=f"{HEAD_PREFIX}drop1")(x)
    x = layers.Dense(512, kernel_initializer=kernel_initializer, name=f"{HEAD_PREFIX}dense1")(x)
    x = layers.ReLU(name=f"{HEAD_PREFIX}relu")(x)
    x = layers.BatchNormalization(name=f"{HEAD_PREFIX}bn2", **_BN)(x)
    x = layers.Dropout(float(dropout[1]), name=f"{HEAD_PREFIX}drop2")(x)
    out = layers.Dense(2, kernel_initializer=kernel_initializer, dtype="float32", name=f"{HEAD_PREFIX}logits")(x)
    return keras.Model(inp, out, name=name)
