"""DiamondGAN generator and discriminator (Li, Paetzold et al., MICCAI 2019; spec
``specs/diamondgan.md`` §4-§5, §11, §13).

Pure Keras 3 Functional builders, channels-last, no Lambda layers. Instance normalisation is
``keras.layers.GroupNormalization(groups=-1, epsilon=1e-5)`` (learned per-channel gamma/beta,
instance statistics in training and inference; no tensorflow-addons). Reflection padding is the
small :class:`ReflectionPad2D` layer.

Trainable parameters (spec §4-§5, asserted by the tests):

* generator, ``code_patterns`` condition (k = 1 channel), 9 residual blocks: **7,218,987**;
* generator, ``mask_channels`` condition (k = 3), 9 blocks: **7,223,691**;
* generator, 6 blocks, k = 1 (paper text): **4,974,315**;
* discriminator (240x240x3 -> 15x15x1): **2,766,529**.

The condition encodings (spec §11 D7) are :func:`condition_maps`: ``mask_channels`` gives n
constant binary maps (1 where source i is present); ``code_patterns`` gives one binary stripe
image per subset (a clean-room pattern, not the authors' ``domain_matrix.npy``; any fixed set of
distinct binary images plays the same role).
"""

from __future__ import annotations

from itertools import product
from typing import Sequence

import keras
import numpy as np
from keras import layers

#: Filters of the generator stages (spec §4 table): c7, d1, d2 (= residual width), u1, u2.
G_FILTERS = (48, 72, 144, 72, 48)
#: Filters of the discriminator layers 1-4 (spec §5 table); layer 5 has 1.
D_FILTERS = (64, 128, 256, 512)
#: Instance-norm epsilon (spec §4).
IN_EPSILON = 1e-5
CONDITION_ENCODINGS = ("mask_channels", "code_patterns")
#: Stripe width (pixels) of the ``code_patterns`` condition images.
STRIPE_PX = 8


@keras.saving.register_keras_serializable(package="zoo")
class ReflectionPad2D(layers.Layer):
    """Reflection padding of the two spatial axes of ``(N, H, W, C)`` by ``pad`` pixels, as
    ``numpy.pad(mode="reflect")`` (edge pixel not repeated). Spec §4 ``RP3``."""

    def __init__(self, pad: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.pad = int(pad)

    def call(self, x):
        p = self.pad
        return keras.ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], mode="reflect")

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        return (n, None if h is None else h + 2 * self.pad, None if w is None else w + 2 * self.pad, c)

    def get_config(self):
        return {**super().get_config(), "pad": self.pad}


def _norm(name: str) -> layers.Layer:
    return layers.GroupNormalization(groups=-1, epsilon=IN_EPSILON, name=name)


def _conv_in_relu(x, filters: int, kernel: int, strides: int, name: str, *, reflect: int = 0):
    if reflect:
        x = ReflectionPad2D(reflect, name=f"{name}_pad")(x)
    x = layers.Conv2D(filters, kernel, strides=strides, padding="valid" if reflect else "same",
                      name=f"{name}_conv")(x)
    x = _norm(f"{name}_in")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _residual(x, filters: int, name: str):
    """Conv 3x3 -> IN -> ReLU -> Conv 3x3 -> IN, plus the input; no activation after the add."""
    y = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv1")(x)
    y = _norm(f"{name}_in1")(y)
    y = layers.ReLU(name=f"{name}_relu")(y)
    y = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv2")(y)
    y = _norm(f"{name}_in2")(y)
    return layers.Add(name=f"{name}_add")([x, y])


def _encoder(x, prefix: str, n_res_blocks: int):
    c7, d1, d2 = G_FILTERS[:3]
    x = _conv_in_relu(x, c7, 7, 1, f"{prefix}_c7", reflect=3)
    x = _conv_in_relu(x, d1, 3, 2, f"{prefix}_d1")
    x = _conv_in_relu(x, d2, 3, 2, f"{prefix}_d2")
    for i in range(n_res_blocks):
        x = _residual(x, d2, f"{prefix}_res{i + 1}")
    return x


def condition_channels(encoding: str, n_sources: int = 3) -> int:
    """Channels k of the condition input: ``n_sources`` for ``mask_channels``, 1 for
    ``code_patterns`` (spec §4, §11 D7). Raises ValueError for an unknown encoding."""
    if encoding == "mask_channels":
        return int(n_sources)
    if encoding == "code_patterns":
        return 1
    raise ValueError(f"unknown condition encoding {encoding!r}; choose one of {CONDITION_ENCODINGS}")


def build_generator(input_shape: Sequence[int] = (240, 240, 3), *, condition_encoding: str = "code_patterns",
                    n_res_blocks: int = 9, n_outputs: int = 3, name: str = "generator") -> keras.Model:
    """The two-stream generator G of spec §4 (image stream + condition stream, merged before
    the decoder).

    Args:
        input_shape: ``(H, W, C)`` of the source stack, channels (FLAIR, T1, T2), values in
            [-1, 1] with -1 for absent sources; H and W divisible by 4 (240x240 in the spec;
            the network is fully convolutional, so smaller tiles work for tests/patches).
        condition_encoding: ``code_patterns`` (k = 1) or ``mask_channels`` (k = C), D7.
        n_res_blocks: residual blocks per stream (9 code / 6 paper, D1).
        n_outputs: output channels (3: the replicated target, spec §2).
    Returns:
        ``keras.Model`` with inputs ``sources`` (N, H, W, C) and ``condition`` (N, H, W, k) and
        one output (N, H, W, n_outputs) in (-1, 1) (tanh, float32).
    """
    h, w, c = (int(v) for v in input_shape)
    k = condition_channels(condition_encoding, c)
    sources = keras.Input((h, w, c), name="sources")
    condition = keras.Input((h, w, k), name="condition")
    img = _encoder(sources, "img", n_res_blocks)
    cond = _encoder(condition, "cond", n_res_blocks)
    x = layers.Concatenate(name="merge")([img, cond])
    for i, f in enumerate(G_FILTERS[3:]):
        x = layers.Conv2DTranspose(f, 3, strides=2, padding="same", name=f"u{i + 1}_convT")(x)
        x = _norm(f"u{i + 1}_in")(x)
        x = layers.ReLU(name=f"u{i + 1}_relu")(x)
    x = ReflectionPad2D(3, name="out_pad")(x)
    x = layers.Conv2D(n_outputs, 7, padding="valid", name="out_conv")(x)
    out = layers.Activation("tanh", dtype="float32", name="out_tanh")(x)
    return keras.Model({"sources": sources, "condition": condition}, out, name=name)


def build_discriminator(input_shape: Sequence[int] = (240, 240, 3), *, d_output: str = "sigmoid",
                        name: str = "discriminator") -> keras.Model:
    """The PatchGAN-variant discriminator of spec §5 (D_S and D_T are two instances).

    Args:
        input_shape: ``(H, W, 3)`` image in [-1, 1].
        d_output: ``sigmoid`` (released code, D5) or ``linear`` (least-squares GAN as written).
    Returns:
        ``keras.Model`` (N, H, W, 3) -> (N, H/16, W/16, 1) float32 (15x15 for 240x240).
    """
    if d_output not in ("sigmoid", "linear"):
        raise ValueError(f"d_output must be 'sigmoid' or 'linear', got {d_output!r}")
    x_in = keras.Input(tuple(int(v) for v in input_shape), name="image")
    x = x_in
    for i, f in enumerate(D_FILTERS):
        x = layers.Conv2D(f, 4, strides=2, padding="same", name=f"d{i + 1}_conv")(x)
        if i:
            x = _norm(f"d{i + 1}_in")(x)
        x = layers.LeakyReLU(0.2, name=f"d{i + 1}_lrelu")(x)
    x = layers.Conv2D(1, 4, strides=1, padding="same", name="d5_conv")(x)
    out = layers.Activation(d_output, dtype="float32", name=f"d5_{d_output}")(x)
    return keras.Model(x_in, out, name=name)


# --- conditions --------------------------------------------------------------------------------
def all_subsets(n_sources: int = 3) -> list[tuple[int, ...]]:
    """The 2^n - 1 non-empty presence codes, e.g. ``(1, 0, 1)`` = sources 0 and 2 present,
    in increasing binary order (spec §1: c in {0,1}^3 without 000)."""
    return [c for c in product((0, 1), repeat=n_sources) if any(c)][::1]


def condition_maps(code: Sequence[int], shape: Sequence[int], encoding: str = "code_patterns") -> np.ndarray:
    """The condition image of one subset.

    Args:
        code: presence flags per source channel, e.g. ``(0, 1, 1)`` = T1 + T2.
        shape: ``(H, W)``.
        encoding: ``mask_channels``: k = len(code) constant maps equal to the flags;
            ``code_patterns``: one binary image of vertical stripes of ``STRIPE_PX`` pixels in
            which stripe ``s`` is 1 when source ``s mod n`` is present (distinct for every
            non-empty subset; a fixed pattern per subset, spec §11 D7).
    Returns:
        float32 ``(H, W, k)`` with values in {0, 1}.
    Raises:
        ValueError: an empty code or an unknown encoding.
    """
    code = tuple(int(bool(v)) for v in code)
    if not any(code):
        raise ValueError("the condition needs at least one present source")
    h, w = (int(v) for v in shape)
    if encoding == "mask_channels":
        return np.broadcast_to(np.asarray(code, np.float32), (h, w, len(code))).copy()
    if encoding == "code_patterns":
        stripe = (np.arange(w) // STRIPE_PX) % len(code)
        row = np.asarray(code, np.float32)[stripe]
        return np.broadcast_to(row[None, :, None], (h, w, 1)).copy()
    raise ValueError(f"unknown condition encoding {encoding!r}; choose one of {CONDITION_ENCODINGS}")


def source_stack(channels: Sequence[np.ndarray | None], fill: float = -1.0) -> np.ndarray:
    """Stack per-source ``(N, H, W)`` arrays into ``(N, H, W, n)``; an absent source (``None``)
    becomes the constant ``fill`` (-1, the background value; spec §2). At least one source must
    be present (ValueError otherwise)."""
    present = [c for c in channels if c is not None]
    if not present:
        raise ValueError("at least one source must be present")
    ref = np.asarray(present[0], dtype=np.float32)
    out = np.full((*ref.shape, len(channels)), fill, dtype=np.float32)
    for i, c in enumerate(channels):
        if c is not None:
            out[..., i] = c
    return out
