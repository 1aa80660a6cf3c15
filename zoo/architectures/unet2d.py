"""2D U-Net of Li et al., NeuroImage 2018 (WMH challenge winner), also used by the claustrum entries.

Pure Keras 3 Functional builder, channels-last. The layer order reproduces the authors'
released Keras 2 models so that their ``.h5`` weights load by layer order
(``specs/wmh_ensemble.md`` §5 and §15).
"""

from __future__ import annotations

from typing import Sequence

import keras
from keras import layers

#: Filters and kernel sizes of the encoder levels (spec §5 table). Level 4's second
#: convolution has a 4x4 kernel in the released code, kept as released.
ENCODER = ((64, (5, 5), (5, 5)), (96, (3, 3), (3, 3)), (128, (3, 3), (3, 3)),
           (256, (3, 3), (4, 4)))
BOTTLENECK = 512
DECODER = (256, 128, 96, 64)


def _crop_amounts(big: int, small: int) -> tuple[int, int]:
    """Crop ``big - small`` pixels: floor half at the start, the rest at the end (spec §5)."""
    diff = big - small
    if diff < 0:
        raise ValueError(f"cannot crop {big} to {small}")
    return diff // 2, diff - diff // 2


#: The claustrum variant (spec ``claustrum_multiview.md`` §5 and §14): half width, 3x3 first
#: kernels; 2,494,529 trainable parameters at any input size.
CLAUSTRUM_WIDTHS = (32, 64, 96, 128, 256)
CLAUSTRUM_FIRST_KERNEL = 3


def build_unet2d(input_shape: Sequence[int] = (200, 200, 2), *, batch_norm: bool = False,
                 head: str = "sigmoid1", name: str = "unet2d",
                 input_name: str = "image", widths: Sequence[int] | None = None,
                 first_kernel: int = 5) -> keras.Model:
    """Build the 19-convolution 2D U-Net of Li et al. (NeuroImage 2018), spec §5.

    Args:
        input_shape: ``(H, W, C)``; the crops are static, so the model is built for one
            in-plane size (200x200 for WMH, 180x180 for the adult claustrum). ``C`` is the
            number of channels (WMH: ch0 FLAIR, ch1 T1).
        batch_norm: BatchNormalization after each of the 18 non-head convolutions (the
            paper's parameter count, decision D1); off in the released code.
        head: ``"sigmoid1"`` (1x1 conv, 1 filter, sigmoid; released code) or ``"softmax2"``
            (2 filters, softmax; the paper's wording), decision D2.
        name: model name (ensemble members get unique names).
        input_name: name of the single input tensor.
        widths: filters of encoder levels 1-4 and the bottleneck; the decoder mirrors levels
            4-1. ``None`` = the WMH widths ``(64, 96, 128, 256, 512)``; the claustrum entries use
            :data:`CLAUSTRUM_WIDTHS` ``(32, 64, 96, 128, 256)`` (spec ``claustrum_multiview.md`` §5).
        first_kernel: kernel size of both level-1 convolutions (WMH 5, claustrum 3).
    Returns:
        A Functional ``keras.Model`` mapping ``(N, H, W, C)`` float32 slices to
        ``(N, H, W, 1)`` (sigmoid1) or ``(N, H, W, 2)`` (softmax2) probabilities, float32.
        Trainable parameters: 8,742,209 (C=2), 8,740,609 (C=1), 8,748,609 (C=2 with BN);
        spec §5 "Unit-test targets". Claustrum (``widths=CLAUSTRUM_WIDTHS, first_kernel=3``,
        C=1): 2,494,529 at 180x180 and 200x200 (``claustrum_multiview.md`` §5).
    Raises:
        ValueError: unknown ``head`` or an input too small for four poolings.
    """
    if head not in ("sigmoid1", "softmax2"):
        raise ValueError(f"head must be 'sigmoid1' or 'softmax2', got {head!r}")
    h, w, _ = (int(s) for s in input_shape)
    if min(h, w) < 32:
        raise ValueError(f"input {h}x{w} is too small for four 2x2 poolings")
    inputs = keras.Input(shape=tuple(int(s) for s in input_shape), name=input_name)
    if widths is None:
        encoder, bottleneck, decoder = ENCODER, BOTTLENECK, DECODER
    else:
        if len(widths) != 5:
            raise ValueError(f"widths must give 5 filter counts (4 levels + bottleneck), got {widths}")
        fk = (int(first_kernel), int(first_kernel))
        kernels = ((fk, fk), ((3, 3), (3, 3)), ((3, 3), (3, 3)), ((3, 3), (4, 4)))
        encoder = tuple((int(f), *k) for f, k in zip(widths[:4], kernels))
        bottleneck, decoder = int(widths[4]), tuple(int(f) for f in widths[3::-1])

    def conv(x, filters, kernel, lname):
        x = layers.Conv2D(filters, kernel, padding="same", activation=None if batch_norm else "relu",
                          name=lname)(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"{lname}_bn")(x)
            x = layers.Activation("relu", name=f"{lname}_relu")(x)
        return x

    x = inputs
    skips = []
    for level, (filters, k1, k2) in enumerate(encoder, start=1):
        x = conv(x, filters, k1, f"enc{level}_conv1")
        x = conv(x, filters, k2, f"enc{level}_conv2")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = conv(x, bottleneck, (3, 3), "bottleneck_conv1")
    x = conv(x, bottleneck, (3, 3), "bottleneck_conv2")

    for level, filters in zip((4, 3, 2, 1), decoder):
        skip = skips[level - 1]
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"dec{level}_up")(x)
        ch = _crop_amounts(skip.shape[1], x.shape[1])
        cw = _crop_amounts(skip.shape[2], x.shape[2])
        skip = layers.Cropping2D((ch, cw), name=f"dec{level}_crop")(skip)
        x = layers.Concatenate(axis=-1, name=f"dec{level}_concat")([x, skip])
        x = conv(x, filters, (3, 3), f"dec{level}_conv1")
        x = conv(x, filters, (3, 3), f"dec{level}_conv2")

    ph = _crop_amounts(h, x.shape[1])
    pw = _crop_amounts(w, x.shape[2])
    x = layers.ZeroPadding2D((ph, pw), name="final_pad")(x)
    if head == "sigmoid1":
        out = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="head")(x)
    else:
        out = layers.Conv2D(2, 1, activation="softmax", dtype="float32", name="head")(x)
    return keras.Model(inputs, out, name=name)


def foreground_probability(model_output):
    """Foreground probability ``(N, H, W)`` from either head: channel 0 (sigmoid1) or 1 (softmax2)."""
    return model_output[..., -1]
