"""Residual 3D U-Net (the MONAI ``UNet`` with residual units) for ``spine_vertebrae``.

Spec ``specs/spine_vertebrae.md`` §5: channels 16-32-64-128-256, four stride-2 levels, two
residual units (conv units) per encoder level, one per decoder level, 2-channel output.
Conv3D with bias, kernel 3; instance norm without affine parameters (eps 1e-5); PReLU with one
shared parameter per layer (init 0.25); order conv -> norm -> activation; no activation after a
residual add. 4,806,481 trainable parameters for one input channel and two output channels.

Arrays are channels-last ``(D, H, W, C)`` = (sagittal slice axis X, Y, Z, channel) of the RAS+
network grid. The model returns **logits**; the softmax is applied by the caller (so that an
ensemble averages logits, spec §9 D4).
"""

from __future__ import annotations

from typing import Sequence

import keras
from keras import layers

#: Spec §5 defaults.
CHANNELS = (16, 32, 64, 128, 256)
STRIDES = (2, 2, 2, 2)


def _norm_act(x, name: str, dropout: float = 0.0):
    """Instance norm (no affine, eps 1e-5), dropout when ``dropout`` > 0, then a one-parameter
    PReLU (init 0.25): MONAI's default ``adn_ordering="NDA"``."""
    x = layers.GroupNormalization(groups=-1, center=False, scale=False, epsilon=1e-5,
                                  name=f"{name}_in")(x)
    if dropout:
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return layers.PReLU(alpha_initializer=keras.initializers.Constant(0.25),
                        shared_axes=[1, 2, 3, 4], name=f"{name}_prelu")(x)


def residual_unit(x, filters: int, strides, subunits: int, name: str, last_conv_only: bool = False,
                  dropout: float = 0.0):
    """MONAI ``ResidualUnit``: ``subunits`` x (Conv k3 -> IN -> [dropout] -> PReLU), the first
    with ``strides`` (an int or one per spatial axis); residual branch Conv k3 (stride != 1),
    Conv k1 (channel change) or identity.

    ``last_conv_only`` drops the norm/activation of the last conv unit (the output head).
    Args:
        x: ``(B, D, H, W, C_in)`` tensor.
    Returns:
        ``(B, D/strides, H/strides, W/strides, filters)`` tensor.
    """
    in_channels = x.shape[-1]
    y = x
    for i in range(subunits):
        y = layers.Conv3D(filters, 3, strides=strides if i == 0 else 1, padding="same",
                          name=f"{name}_conv{i}")(y)
        if not (last_conv_only and i == subunits - 1):
            y = _norm_act(y, f"{name}_unit{i}", dropout)
    if _strided(strides):
        res = layers.Conv3D(filters, 3, strides=strides, padding="same", name=f"{name}_residual")(x)
    elif in_channels != filters:
        res = layers.Conv3D(filters, 1, padding="same", name=f"{name}_residual")(x)
    else:
        res = x
    return layers.Add(name=f"{name}_add")([y, res])


def _strided(strides) -> bool:
    return any(s != 1 for s in _per_axis(strides))


def _per_axis(strides) -> tuple[int, int, int]:
    """``2`` -> ``(2, 2, 2)``; a per-axis sequence is kept (MONAI accepts both)."""
    return tuple(int(s) for s in strides) if isinstance(strides, (list, tuple)) else (int(strides),) * 3


def _up(x, filters: int, strides, name: str, is_top: bool, dropout: float = 0.0):
    """MONAI up layer: ConvTranspose k3 -> IN -> [dropout] -> PReLU, then RU(filters, s1, one
    conv unit)."""
    y = layers.Conv3DTranspose(filters, 3, strides=strides, padding="same", name=f"{name}_convT")(x)
    y = _norm_act(y, f"{name}_up", dropout)
    return residual_unit(y, filters, 1, 1, f"{name}_ru", last_conv_only=is_top, dropout=dropout)


def build_resunet3d(input_shape: Sequence[int | None] = (16, 400, 400, 1), out_channels: int = 2,
                    channels: Sequence[int] = CHANNELS, strides: Sequence[int] = STRIDES,
                    num_res_units: int = 2, dropout: float = 0.0, name: str = "resunet3d") -> keras.Model:
    """The residual 3D U-Net of spec §5 (Functional API, input named ``image``).

    Args:
        input_shape: ``(D, H, W, C)``; every spatial size must be divisible by the product
            of the ``strides`` along its axis (16 with the defaults) or be ``None``. Fully
            convolutional: weights built for a patch shape load into the full window.
        out_channels: output channels (2: background, foreground).
        channels, strides, num_res_units: MONAI ``UNet`` arguments (spec defaults); a stride
            is an int or one int per spatial axis (anisotropic, e.g. ``(2, 2, 1)``).
        dropout: MONAI ``UNet(dropout=...)``: element-wise dropout between each instance norm
            and PReLU (no weights; ``skull_stripping`` uses 0.5, Kaliyugarasan et al. 2020
            Table 1). 0 adds no layer.
    Returns:
        ``keras.Model`` mapping ``(B, D, H, W, C)`` to logits ``(B, D, H, W, out_channels)``
        (float32). 4,806,481 trainable parameters with the defaults.
    Raises:
        ValueError: a spatial size not divisible by the total stride along its axis.
    """
    for axis, n in enumerate(input_shape[:3]):
        total = 1
        for s in strides:
            total *= _per_axis(s)[axis]
        if n is not None and n % total:
            raise ValueError(f"spatial size {n} of {tuple(input_shape)} is not divisible by {total}")
    inp = keras.Input(shape=tuple(input_shape), name="image")
    skips, x = [], inp
    for level, (c, s) in enumerate(zip(channels[:-1], strides)):
        x = residual_unit(x, c, s, num_res_units, f"down{level + 1}", dropout=dropout)
        skips.append(x)
    x = residual_unit(x, channels[-1], 1, num_res_units, "bottom", dropout=dropout)
    # decoder output channels: level l outputs channels[l-1] (the top outputs out_channels)
    outs = [out_channels, *channels[:-2]]
    for level in range(len(skips), 0, -1):
        x = layers.Concatenate(name=f"skip{level}")([skips[level - 1], x])
        x = _up(x, outs[level - 1], strides[level - 1], f"up{level}", is_top=level == 1, dropout=dropout)
    out = layers.Activation("linear", dtype="float32", name="logits")(x)
    return keras.Model(inp, out, name=name)
