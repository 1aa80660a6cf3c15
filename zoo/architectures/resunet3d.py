"""Residual 3D U-Net (the MONAI ``UNet`` with residual units) for ``spine_vertebrae``.

Spec ``specs/spine_vertebrae.md`` §5: channels 16-32-64-128-256, four stride-2 levels, two
residual units (conv units) per encoder level, one per decoder level, 2-channel output.
Conv3D with bias, kernel 3; instance norm without affine parameters (eps 1e-5); PReLU with one
shared parameter per layer (init 0.25); order conv -> norm -> activation; no activation after a
residual add. 4,806,481 trainable parameters for one input channel and two output channels.

Arrays are channels-last ``(D, H, W, C)`` = (sagittal slice axis X, Y, Z, channel) of the RAS+
network grid. The model returns **logits**; the softmax is applied by the caller (so that an
ensemble averages logits, spec §9 D4).

Padding (``padding=``, spec §14). ``"keras"`` (default; the zoo's own trained weights) uses
Keras ``'same'`` padding: a stride-2 convolution on an even size pads 0 voxels before and 1 after,
and a stride-2 transposed convolution keeps the first ``2n`` voxels of its ``2n + 1`` full
output. ``"pytorch"`` reproduces MONAI/PyTorch exactly (``padding=1``; transposed convolution
``padding=1, output_padding=1``): 1 zero voxel on both sides before each stride-2 convolution
(``ZeroPadding3D(1)`` then ``'valid'``), and the transposed convolution's full output cropped by
1 voxel at the **start** of each axis. Both variants hold the same weight variables (same layer
names and shapes), so one weights file loads into either; only the authors' converted MONAI
weights (:mod:`zoo.converters.monai_unet`) need ``"pytorch"``. Stride-1 convolutions (kernel 3,
'same' = 1 voxel each side; kernel 1) are identical in both.
"""

from __future__ import annotations

from typing import Sequence

import keras
from keras import layers

#: Spec §5 defaults.
CHANNELS = (16, 32, 64, 128, 256)
STRIDES = (2, 2, 2, 2)

#: ``padding`` values of :func:`build_resunet3d` (module docstring).
PADDINGS = ("keras", "pytorch")


def _strided(strides) -> bool:
    return any(s != 1 for s in _per_axis(strides))


def _per_axis(strides) -> tuple[int, int, int]:
    """``2`` -> ``(2, 2, 2)``; a per-axis sequence is kept (MONAI accepts both)."""
    return tuple(int(s) for s in strides) if isinstance(strides, (list, tuple)) else (int(strides),) * 3


def _conv(x, filters: int, kernel: int, strides, name: str, padding: str):
    """Conv3D with bias; ``padding="pytorch"`` pads ``kernel // 2`` zeros on both sides of
    every spatial axis before a strided convolution (PyTorch ``padding=kernel // 2``).
    ``strides``: an int or one int per spatial axis."""
    if padding == "pytorch" and _strided(strides) and kernel > 1:
        x = layers.ZeroPadding3D(kernel // 2, name=f"{name}_pad")(x)
        return layers.Conv3D(filters, kernel, strides=strides, padding="valid", name=name)(x)
    return layers.Conv3D(filters, kernel, strides=strides, padding="same", name=name)(x)


def _conv_transpose(x, filters: int, strides, name: str, padding: str):
    """Conv3DTranspose k3 with bias to ``strides`` x the input size; ``padding="pytorch"``
    crops the full ``(n - 1) * s + 3`` output to PyTorch's ``padding=1, output_padding=s - 1``
    (1 voxel off the start of each axis, ``s - 1`` kept at the end)."""
    if padding == "pytorch":
        y = layers.Conv3DTranspose(filters, 3, strides=strides, padding="valid", name=name)(x)
        # full length (n-1)s + 3; keep [1, 1 + n*s) on each axis
        return layers.Cropping3D(tuple((1, 3 - s - 1) for s in _per_axis(strides)), name=f"{name}_crop")(y)
    return layers.Conv3DTranspose(filters, 3, strides=strides, padding="same", name=name)(x)


#: ``norm`` values of :func:`build_resunet3d`.
NORMS = ("group", "staged")


@keras.saving.register_keras_serializable(package="zoo")
class StagedInstanceNorm(layers.Layer):
    """Instance norm without affine parameters (per sample and channel over the spatial axes,
    biased variance, ``epsilon`` 1e-5): the same function as ``GroupNormalization(groups=-1,
    center=False, scale=False)``, with the float32 means taken one spatial axis at a time
    (``mean(mean(mean(x, W), H), D)``, equal-sized groups, so the same value) and the variance
    as the mean of squared deviations. On a 16 x 400 x 400 volume the one-shot float32 mean of
    TensorFlow's CPU reduction drifts: the MONAI parity test measured 4.1e-4 in output
    probability with ``GroupNormalization`` and 2.4e-6 (vs torch float64) with moments in
    float64; this staged form keeps float32 memory. No weights.

    Input/output: ``(B, D, H, W, C)`` float32.
    """

    def __init__(self, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    @staticmethod
    def _mean(x):
        for axis in (3, 2, 1):
            x = keras.ops.mean(x, axis=axis, keepdims=True)
        return x

    def call(self, x):
        mean = self._mean(x)
        centred = x - mean
        var = self._mean(keras.ops.square(centred))
        return centred * keras.ops.rsqrt(var + self.epsilon)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


def _norm_act(x, name: str, norm: str = "group", dropout: float = 0.0):
    """Instance norm (no affine, eps 1e-5), dropout when ``dropout`` > 0, then a one-parameter
    PReLU (init 0.25): MONAI's default ``adn_ordering="NDA"``."""
    if norm == "staged":
        x = StagedInstanceNorm(epsilon=1e-5, name=f"{name}_in")(x)
    else:
        x = layers.GroupNormalization(groups=-1, center=False, scale=False, epsilon=1e-5,
                                      name=f"{name}_in")(x)
    if dropout:
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return layers.PReLU(alpha_initializer=keras.initializers.Constant(0.25),
                        shared_axes=[1, 2, 3, 4], name=f"{name}_prelu")(x)


def residual_unit(x, filters: int, strides, subunits: int, name: str, last_conv_only: bool = False,
                  padding: str = "keras", norm: str = "group", dropout: float = 0.0):
    """MONAI ``ResidualUnit``: ``subunits`` x (Conv k3 -> IN -> [dropout] -> PReLU), the first
    with ``strides`` (an int or one per spatial axis); residual branch Conv k3 (stride != 1),
    Conv k1 (channel change) or identity.

    ``last_conv_only`` drops the norm/activation of the last conv unit (the output head);
    ``padding`` and ``norm`` as :func:`build_resunet3d`.
    Args:
        x: ``(B, D, H, W, C_in)`` tensor.
    Returns:
        ``(B, D/strides, H/strides, W/strides, filters)`` tensor.
    """
    in_channels = x.shape[-1]
    y = x
    for i in range(subunits):
        y = _conv(y, filters, 3, strides if i == 0 else 1, f"{name}_conv{i}", padding)
        if not (last_conv_only and i == subunits - 1):
            y = _norm_act(y, f"{name}_unit{i}", norm, dropout)
    if _strided(strides):
        res = _conv(x, filters, 3, strides, f"{name}_residual", padding)
    elif in_channels != filters:
        res = _conv(x, filters, 1, 1, f"{name}_residual", padding)
    else:
        res = x
    return layers.Add(name=f"{name}_add")([y, res])


def _up(x, filters: int, strides, name: str, is_top: bool, padding: str, norm: str, dropout: float = 0.0):
    """MONAI up layer: ConvTranspose k3 -> IN -> [dropout] -> PReLU, then RU(filters, s1, one
    conv unit)."""
    y = _conv_transpose(x, filters, strides, f"{name}_convT", padding)
    y = _norm_act(y, f"{name}_up", norm, dropout)
    return residual_unit(y, filters, 1, 1, f"{name}_ru", last_conv_only=is_top, padding=padding, norm=norm,
                         dropout=dropout)


def build_resunet3d(input_shape: Sequence[int | None] = (16, 400, 400, 1), out_channels: int = 2,
                    channels: Sequence[int] = CHANNELS, strides: Sequence[int] = STRIDES,
                    num_res_units: int = 2, name: str = "resunet3d", padding: str = "keras",
                    norm: str = "group", dropout: float = 0.0) -> keras.Model:
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
        padding: ``"keras"`` (default, the zoo's own weights) or ``"pytorch"`` (exactly
            MONAI's padding, for the authors' converted weights; module docstring).
        norm: ``"group"`` (default, Keras ``GroupNormalization``, the zoo's own weights) or
            ``"staged"`` (:class:`StagedInstanceNorm`, the same function with more precise
            float32 moments; with ``padding="pytorch"`` it reproduces MONAI within 1e-5).
    Returns:
        ``keras.Model`` mapping ``(B, D, H, W, C)`` to logits ``(B, D, H, W, out_channels)``
        (float32). 4,806,481 trainable parameters with the defaults.
    Raises:
        ValueError: a spatial size not divisible by the total stride, or an unknown
            ``padding``.
    """
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}; got {padding!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}; got {norm!r}")
    for axis, n in enumerate(input_shape[:3]):
        total = 1
        for s in strides:
            total *= _per_axis(s)[axis]
        if n is not None and n % total:
            raise ValueError(f"spatial size {n} of {tuple(input_shape)} is not divisible by {total}")
    inp = keras.Input(shape=tuple(input_shape), name="image")
    skips, x = [], inp
    for level, (c, s) in enumerate(zip(channels[:-1], strides)):
        x = residual_unit(x, c, s, num_res_units, f"down{level + 1}", padding=padding, norm=norm,
                          dropout=dropout)
        skips.append(x)
    x = residual_unit(x, channels[-1], 1, num_res_units, "bottom", padding=padding, norm=norm, dropout=dropout)
    # decoder output channels: level l outputs channels[l-1] (the top outputs out_channels)
    outs = [out_channels, *channels[:-2]]
    for level in range(len(skips), 0, -1):
        x = layers.Concatenate(name=f"skip{level}")([skips[level - 1], x])
        x = _up(x, outs[level - 1], strides[level - 1], f"up{level}", is_top=level == 1, padding=padding,
                norm=norm, dropout=dropout)
    out = layers.Activation("linear", dtype="float32", name="logits")(x)
    return keras.Model(inp, out, name=name)
