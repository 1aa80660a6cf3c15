"""Spatial augmentation of 2D training slices, applied jointly to image channels and mask.

Spec ``wmh_ensemble.md`` §8 (static left-right mirror, per-epoch random affine) and
``practices.md`` §4 (one transform for image and label; labels nearest, so they stay binary).
Everything here is TensorFlow ops, so it runs in a ``tf.data`` ``map`` (graph mode) or inside
a model, on the accelerator when there is one.

Conventions used throughout this module
---------------------------------------
* Arrays are ``(B, H, W, C)`` channels-last; ``H`` counts rows, ``W`` columns. Masks are
  ``(B, H, W, 1)``.
* A 3x3 matrix ``A`` is homogeneous in **(row, col)** order and maps **output** pixel
  coordinates to **input** coordinates, as ``scipy.ndimage.affine_transform(img, A[:2, :2],
  offset=A[:2, 2])`` reads it: ``out[r, c] = in[A @ (r, c, 1)]``. Pixel ``i`` has its centre
  at coordinate ``i``.
* ``A = T(c) · R(θ) · S(s) · Z(zx, zy) · T(−c)``, i.e. the linear part ``M = R·S·Z`` acts
  about the point ``c`` (which maps to itself), and ``A[:2, 2] = c − M c``, with

  - ``R(θ) = [[cos θ, −sin θ], [sin θ, cos θ]]``; θ in radians (sampled from degrees).
    With rows pointing down, θ = +90° turns the displayed image clockwise:
    the output equals ``np.rot90(img, k=-1)`` for the geometric centre;
  - ``S(s) = [[1, −sin s], [0, cos s]]``; s in radians;
  - ``Z = diag(zx, zy)``; ``zx`` scales rows, ``zy`` columns. Because ``A`` maps output to
    input, a zoom > 1 shrinks the content (zoom out) and < 1 enlarges it.

* The centre ``c`` (option ``centre``):

  - ``"keras2"`` (default; spec §8.2 "offset = size/2 + 0.5", as Keras 2.0
    ``transform_matrix_offset_center`` did): ``c = (H/2 + 0.5, W/2 + 0.5)``. In the pixel-centre
    convention above this is **not** the array centre: it lies one pixel below and to the right
    of it (for H = 200: row 100.5, whereas the middle of the array is row 99.5). The result
    equals the geometric version followed by a shift of ``(I − M)·(1, 1)`` pixels, at most
    about 0.4 px for the spec's ranges. Kept because the released weights were trained so.
  - ``"geometric"``: ``c = ((H − 1)/2, (W − 1)/2)``, the true centre of the pixel grid; a 90°
    rotation then equals ``np.rot90`` exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import keras
import tensorflow as tf

CENTRES = ("keras2", "geometric")
INTERPOLATIONS = ("nearest", "bilinear")
FILL_MODES = ("nearest", "constant", "reflect", "wrap")
_INTERPOLATION_ALIASES = {"nearest": "nearest", "bilinear": "bilinear", "linear": "bilinear"}
# Dtypes ImageProjectiveTransformV3 takes as they are; others are moved through float32.
_TRANSFORM_DTYPES = (tf.uint8, tf.int32, tf.int64, tf.float16, tf.bfloat16, tf.float32, tf.float64)


@dataclass(frozen=True)
class AffineParams:
    """Per-slice affine parameters, each a float32 tensor of shape ``(n,)``.

    Attributes:
        rotation_rad: θ in radians.
        shear_rad: s in radians.
        zoom_row: zx, the zoom of the row axis.
        zoom_col: zy, the zoom of the column axis.
    """

    rotation_rad: tf.Tensor
    shear_rad: tf.Tensor
    zoom_row: tf.Tensor
    zoom_col: tf.Tensor


@dataclass(frozen=True)
class AugmentConfig:
    """The affine augmentation settings of a recipe (spec §8.2; defaults as the released code).

    Attributes:
        rotation_deg: θ ~ U(−rotation_deg, rotation_deg), in degrees.
        shear_rad: s ~ U(−shear_rad, shear_rad), in radians (0.1 code; 0.3142 = 18° paper, D4).
        zoom: (low, high); zx and zy ~ U(low, high), drawn independently.
        interpolation_image: ``"nearest"`` (order 0, as Keras 2.0) or ``"bilinear"``
            (``"linear"`` is read as ``"bilinear"``). Masks are always nearest.
        fill_mode: ``"nearest"`` (spec), ``"constant"`` (0), ``"reflect"`` or ``"wrap"``.
        centre: ``"keras2"`` or ``"geometric"``; see the module docstring.
    """

    rotation_deg: float = 15.0
    shear_rad: float = 0.1
    zoom: tuple[float, float] = (0.9, 1.1)
    interpolation_image: str = "nearest"
    fill_mode: str = "nearest"
    centre: str = "keras2"
    translate: float = 0.0
    interpolation_mask: str = "nearest"

    # Recipe keys that belong to the dataset builder, not to this function.
    _CALLER_KEYS = ("flip_lr", "affine_probability", *("intensity_" + k for k in
                                                       ("probability", "scale", "shift", "gamma")))

    def __post_init__(self) -> None:
        _check_ranges(self.rotation_deg, self.shear_rad, self.zoom)
        object.__setattr__(self, "zoom", (float(self.zoom[0]), float(self.zoom[1])))
        object.__setattr__(self, "interpolation_image", _interpolation(self.interpolation_image))
        _check_choice("fill_mode", self.fill_mode, FILL_MODES)
        _check_choice("centre", self.centre, CENTRES)
        if not 0.0 <= float(self.translate) < 1.0:
            raise ValueError(f"translate must be a fraction of the slice size in [0, 1); got {self.translate}")

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any] | None) -> "AugmentConfig":
        """Read a recipe's ``augmentation`` dict. Missing keys take the defaults; ``flip_lr``
        and ``affine_probability`` are accepted and ignored (the dataset builder applies them);
        ``interpolation_mask`` must be ``"nearest"``; any other key raises ``ValueError``."""
        config = dict(config or {})
        mask_interp = config.pop("interpolation_mask", "nearest")
        if mask_interp not in ("nearest", "bilinear", "linear"):
            raise ValueError(f"augmentation.interpolation_mask is {mask_interp!r}; use 'nearest' (masks "
                             "stay binary, practices §4) or 'bilinear' (soft mask edges, the neonatal "
                             "claustrum code, neonatal_claustrum.md §8 D6)")
        config["interpolation_mask"] = _INTERPOLATION_ALIASES[mask_interp]
        for key in cls._CALLER_KEYS:
            config.pop(key, None)
        known = {"rotation_deg", "shear_rad", "zoom", "interpolation_image", "fill_mode", "centre",
                 "translate", "interpolation_mask"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown augmentation key(s) {unknown}; expected a subset of "
                             f"{sorted(known | set(cls._CALLER_KEYS))}")
        if "zoom" in config:
            config["zoom"] = tuple(config["zoom"])
        return cls(**config)


def sample_affine_params(seed: Any, n: int | tf.Tensor, rotation_deg: float = 15.0,
                         shear_rad: float = 0.1,
                         zoom: Sequence[float] = (0.9, 1.1)) -> AffineParams:
    """Draw ``n`` independent parameter sets with stateless TF random ops (spec §8.2).

    Args:
        seed: an int, or an int tensor of shape ``(2,)`` (e.g. ``(member_seed, epoch)``);
            the same seed gives the same draws, eagerly or in graph mode.
        n: number of slices (a Python int or a scalar int tensor).
        rotation_deg: θ ~ U(−rotation_deg, rotation_deg) degrees (returned in radians).
        shear_rad: s ~ U(−shear_rad, shear_rad) radians; must be < π/2.
        zoom: (low, high); zx and zy ~ U(low, high) independently; 0 < low ≤ high.
    Returns:
        :class:`AffineParams` of float32 ``(n,)`` tensors.
    """
    _check_ranges(rotation_deg, shear_rad, zoom)
    u = tf.random.stateless_uniform(tf.stack([tf.cast(n, tf.int32), 4]), seed=_as_seed(seed),
                                    dtype=tf.float32)
    rot = math.radians(float(rotation_deg))
    lo, hi = float(zoom[0]), float(zoom[1])
    return AffineParams(
        rotation_rad=-rot + 2.0 * rot * u[:, 0],
        shear_rad=-float(shear_rad) + 2.0 * float(shear_rad) * u[:, 1],
        zoom_row=lo + (hi - lo) * u[:, 2],
        zoom_col=lo + (hi - lo) * u[:, 3],
    )


def affine_matrices(params: AffineParams, height: int | tf.Tensor, width: int | tf.Tensor,
                    centre: str = "keras2") -> tf.Tensor:
    """Compose ``A = T(c)·R·S·Z·T(−c)`` for each parameter set.

    Args:
        params: from :func:`sample_affine_params` (or built by hand, float32 ``(n,)`` each).
        height, width: slice size ``H`` (rows) and ``W`` (columns).
        centre: ``"keras2"`` (c = size/2 + 0.5, spec §8.2) or ``"geometric"``
            (c = (size − 1)/2); see the module docstring.
    Returns:
        float32 ``(n, 3, 3)``: output (row, col) -> input (row, col), homogeneous.
    """
    _check_choice("centre", centre, CENTRES)
    theta = tf.convert_to_tensor(params.rotation_rad, tf.float32)
    shear = tf.convert_to_tensor(params.shear_rad, tf.float32)
    zr = tf.convert_to_tensor(params.zoom_row, tf.float32)
    zc = tf.convert_to_tensor(params.zoom_col, tf.float32)
    zero, one = tf.zeros_like(theta), tf.ones_like(theta)

    def stack(rows):  # [[a, b], [c, d]] of (n,) -> (n, 2, 2)
        return tf.stack([tf.stack(r, axis=-1) for r in rows], axis=-2)

    rotation = stack([[tf.cos(theta), -tf.sin(theta)], [tf.sin(theta), tf.cos(theta)]])
    shearing = stack([[one, -tf.sin(shear)], [zero, tf.cos(shear)]])
    zooming = stack([[zr, zero], [zero, zc]])
    linear = rotation @ shearing @ zooming                                     # (n, 2, 2)

    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    if centre == "keras2":
        c = tf.stack([h / 2.0 + 0.5, w / 2.0 + 0.5])
    else:
        c = tf.stack([(h - 1.0) / 2.0, (w - 1.0) / 2.0])
    offset = c[None, :] - tf.linalg.matvec(linear, tf.broadcast_to(c, tf.shape(linear)[:-1]))
    top = tf.concat([linear, offset[:, :, None]], axis=-1)                    # (n, 2, 3)
    bottom = tf.broadcast_to(tf.constant([[0.0, 0.0, 1.0]]), tf.stack([tf.shape(top)[0], 1, 3]))
    return tf.concat([top, bottom], axis=-2)


def sample_affines(seed: Any, n: int | tf.Tensor, height: int | tf.Tensor,
                   width: int | tf.Tensor, rotation_deg: float = 15.0, shear_rad: float = 0.1,
                   zoom: Sequence[float] = (0.9, 1.1), centre: str = "keras2") -> tf.Tensor:
    """:func:`sample_affine_params` then :func:`affine_matrices`: float32 ``(n, 3, 3)``
    (row, col) matrices mapping output to input coordinates (spec §8.2)."""
    params = sample_affine_params(seed, n, rotation_deg, shear_rad, zoom)
    return affine_matrices(params, height, width, centre)


def affine_to_keras_transform(matrices: Any) -> tf.Tensor:
    """Convert (row, col) output->input matrices to ``keras.ops.image.affine_transform``'s
    8-vectors.

    Keras maps the output point ``(x, y) = (col, row)`` to the input point
    ``(a0 x + a1 y + a2, b0 x + b1 y + b2)`` (with ``c0 = c1 = 0``). From
    ``row_in = A00 row + A01 col + A02`` and ``col_in = A10 row + A11 col + A12``:
    ``[a0, a1, a2, b0, b1, b2, c0, c1] = [A11, A10, A12, A01, A00, A02, 0, 0]``.

    Args:
        matrices: ``(n, 3, 3)`` or ``(n, 2, 3)`` (a single ``(3, 3)``/``(2, 3)`` gives ``(8,)``).
    Returns:
        float32 ``(n, 8)`` (or ``(8,)``).
    """
    a = tf.convert_to_tensor(matrices, tf.float32)
    if a.shape.rank not in (2, 3) or a.shape[-1] != 3 or a.shape[-2] not in (2, 3):
        raise ValueError(f"affine matrices must have shape (n, 3, 3) or (n, 2, 3); got {a.shape}")
    zero = tf.zeros_like(a[..., 0, 0])
    return tf.stack([a[..., 1, 1], a[..., 1, 0], a[..., 1, 2],
                     a[..., 0, 1], a[..., 0, 0], a[..., 0, 2], zero, zero], axis=-1)


def apply_affine(images: Any, masks: Any, matrices: Any, interpolation_image: str = "nearest",
                 fill_mode: str = "nearest", *,
                 interpolation_mask: str = "nearest") -> tuple[tf.Tensor, tf.Tensor]:
    """Warp images and masks with the same per-slice matrices (spec §8.2, practices §4).

    Args:
        images: ``(B, H, W, C)``, float (dtype kept).
        masks: ``(B, H, W, 1)`` (or any channel count); dtype kept; always nearest, so a
            binary mask stays binary.
        matrices: ``(B, 3, 3)`` (row, col) output->input matrices (see the module docstring),
            or one ``(3, 3)`` matrix for the whole batch.
        interpolation_image: ``"nearest"`` (spec default, order 0) or ``"bilinear"``
            (``"linear"`` accepted as an alias).
        fill_mode: how points outside the input are filled: ``"nearest"`` (spec),
            ``"constant"`` (0), ``"reflect"`` or ``"wrap"``; the same for images and masks.
        interpolation_mask: ``"nearest"`` (default: binary masks stay binary) or ``"bilinear"``
            (soft edges in [0, 1]; the neonatal claustrum code, ``neonatal_claustrum.md`` §8).
    Returns:
        ``(images, masks)`` warped, same shapes and dtypes.
    """
    interpolation_image = _interpolation(interpolation_image)
    _check_choice("fill_mode", fill_mode, FILL_MODES)
    images = tf.convert_to_tensor(images)
    masks = tf.convert_to_tensor(masks)
    if images.shape.rank != 4 or masks.shape.rank != 4:
        raise ValueError(f"images and masks must be (B, H, W, C); got {images.shape} and "
                         f"{masks.shape}")
    transform = affine_to_keras_transform(matrices)
    if transform.shape.rank == 1:
        transform = tf.tile(transform[None, :], tf.stack([tf.shape(images)[0], 1]))

    def warp(x: tf.Tensor, interpolation: str) -> tf.Tensor:
        dtype = x.dtype
        if dtype not in _TRANSFORM_DTYPES:
            x = tf.cast(x, tf.float32)
        y = keras.ops.image.affine_transform(x, transform, interpolation=interpolation,
                                             fill_mode=fill_mode, fill_value=0,
                                             data_format="channels_last")
        return tf.cast(y, dtype)

    return warp(images, interpolation_image), warp(masks, _interpolation(interpolation_mask))


def flip_lr(images: Any, masks: Any) -> tuple[tf.Tensor, tf.Tensor]:
    """Mirror images ``(B, H, W, C)`` and masks ``(B, H, W, 1)`` along the column axis
    (``W``, axis 2): the static left-right mirror of spec §8.1 (decision D12)."""
    return tf.reverse(images, axis=[2]), tf.reverse(masks, axis=[2])


def augment_batch(images: Any, masks: Any, seed: Any,
                  config: Mapping[str, Any] | AugmentConfig | None = None,
                  ) -> tuple[tf.Tensor, tf.Tensor]:
    """Draw one random affine per slice and apply it to images and masks (spec §8.2).

    Args:
        images: ``(B, H, W, C)`` float.
        masks: ``(B, H, W, 1)``.
        seed: int or int ``(2,)`` tensor; use a fresh one per epoch (e.g. ``(member_seed,
            epoch)``) to get the spec's per-epoch redraw.
        config: a recipe's ``augmentation`` dict (keys ``rotation_deg``, ``shear_rad``,
            ``zoom``, ``interpolation_image``, ``fill_mode``, optionally ``centre``; see
            :meth:`AugmentConfig.from_mapping`) or an :class:`AugmentConfig`; ``None`` gives
            the spec defaults.
    Returns:
        ``(images, masks)`` augmented, same shapes and dtypes.
    """
    if not isinstance(config, AugmentConfig):
        config = AugmentConfig.from_mapping(config)
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    matrices = sample_affines(seed, shape[0], shape[1], shape[2], config.rotation_deg,
                              config.shear_rad, config.zoom, config.centre)
    if config.translate > 0.0:
        matrices = translate_matrices(matrices, _as_seed(seed) + 7, shape[1], shape[2], config.translate)
    return apply_affine(images, masks, matrices, config.interpolation_image, config.fill_mode,
                        interpolation_mask=config.interpolation_mask)


def intensity_batch(images: Any, seed: Any, scale: Sequence[float] = (1.0, 1.0),
                    shift: Sequence[float] = (0.0, 0.0), gamma: Sequence[float] = (1.0, 1.0)) -> tf.Tensor:
    """Random intensity variation per slice and channel (training only; masks unchanged).

    For each slice ``b`` and channel ``c`` independently, with ``lo``/``hi`` the min/max of
    that channel of that slice: ``u = (x - lo) / (hi - lo)``; ``x' = lo + (hi - lo) u**g``
    (gamma, ``g ~ U(gamma)``), then ``x'' = s x' + t`` (``s ~ U(scale)``, ``t ~ U(shift)``).
    On z-scored inputs this imitates what the z-score leaves of scanner differences: contrast
    (gamma), gain per slice (the clinical source normalised slice by slice, data/README.md)
    and offset. Ranges are recipe values (``augmentation.intensity_*``); ``(1, 1)``,
    ``(0, 0)``, ``(1, 1)`` is the identity.

    Args:
        images: ``(B, H, W, C)`` float.
        seed: int or int ``(2,)`` tensor (stateless ops).
        scale, shift, gamma: ``(low, high)`` ranges; gamma and scale must be > 0.
    Returns:
        ``(B, H, W, C)`` float32.
    Raises:
        ValueError: a range is not ``(low, high)`` with ``low <= high``, or gamma/scale <= 0.
    """
    for name, (lo, hi), positive in (("scale", scale, True), ("shift", shift, False), ("gamma", gamma, True)):
        if not lo <= hi or (positive and lo <= 0):
            raise ValueError(f"intensity_{name} must be (low, high) with low <= high"
                             f"{' and low > 0' if positive else ''}; got {(lo, hi)}")
    x = tf.cast(tf.convert_to_tensor(images), tf.float32)
    seed = _as_seed(seed)
    shape = tf.stack([tf.shape(x)[0], 1, 1, tf.shape(x)[3]])

    def draw(k: int, lo_hi: Sequence[float]) -> tf.Tensor:
        u = tf.random.stateless_uniform(shape, seed=seed + k, dtype=tf.float32)
        return float(lo_hi[0]) + (float(lo_hi[1]) - float(lo_hi[0])) * u

    lo = tf.reduce_min(x, axis=(1, 2), keepdims=True)
    span = tf.maximum(tf.reduce_max(x, axis=(1, 2), keepdims=True) - lo, 1e-6)
    x = lo + span * tf.pow(tf.clip_by_value((x - lo) / span, 0.0, 1.0), draw(11, gamma))
    return x * draw(13, scale) + draw(17, shift)


def translate_matrices(matrices: Any, seed: Any, height: Any, width: Any, fraction: float) -> tuple:
    """Add a random shift to output->input ``(n, 3, 3)`` matrices: the content moves by
    ``(dr, dc)`` pixels with ``dr ~ U(-f H, f H)`` and ``dc ~ U(-f W, f W)`` independently
    (imgaug ``translate_percent``; ``neonatal_claustrum.md`` §8: ±10 %)."""
    m = tf.convert_to_tensor(matrices, tf.float32)
    n = tf.shape(m)[0]
    u = tf.random.stateless_uniform(tf.stack([n, 2]), seed=_as_seed(seed), dtype=tf.float32)
    size = tf.stack([tf.cast(height, tf.float32), tf.cast(width, tf.float32)])
    shift = (2.0 * u - 1.0) * float(fraction) * size[None, :]               # (n, 2) content shift
    # out[p] = in[A p] with the content moved by +shift: A' p = A (p - shift)
    offset = -tf.linalg.matvec(m[:, :2, :2], shift)
    delta = tf.concat([tf.zeros_like(m[:, :2, :2]), offset[:, :, None]], axis=-1)
    return m + tf.concat([delta, tf.zeros_like(m[:, 2:, :])], axis=1)


# --- helpers -------------------------------------------------------------------------------
def _as_seed(seed: Any) -> tf.Tensor:
    """An int or an int ``(2,)`` tensor -> int64 ``(2,)`` seed for stateless ops."""
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer:
        raise ValueError(f"seed must be an int or an int tensor of shape (2,); got dtype {seed.dtype}")
    seed = tf.cast(seed, tf.int64)
    if seed.shape.rank == 0:
        return tf.stack([seed, tf.zeros_like(seed)])
    if seed.shape.as_list() != [2]:
        raise ValueError(f"seed must be an int or an int tensor of shape (2,); got shape {seed.shape}")
    return seed


def _check_ranges(rotation_deg: float, shear_rad: float, zoom: Sequence[float]) -> None:
    if not rotation_deg >= 0:
        raise ValueError(f"rotation_deg must be >= 0 (degrees); got {rotation_deg}")
    if not 0 <= shear_rad < math.pi / 2:
        raise ValueError(f"shear_rad must be in [0, pi/2) radians; got {shear_rad} (for degrees, "
                         "convert first: 18 degrees = 0.3142 rad)")
    if len(zoom) != 2 or not 0 < zoom[0] <= zoom[1]:
        raise ValueError(f"zoom must be (low, high) with 0 < low <= high; got {zoom}")


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}; got {value!r}")


def _interpolation(value: str) -> str:
    if value not in _INTERPOLATION_ALIASES:
        raise ValueError(f"interpolation_image must be 'nearest' or 'bilinear' ('linear' is an "
                         f"alias); got {value!r}")
    return _INTERPOLATION_ALIASES[value]


# --- 3D volumes (lung_nodule) ------------------------------------------------------------------
def augment_volumes(volumes: Any, seed: Any, rotation_deg: float = 35.0, scale: Sequence[float] = (1.0, 1.1),
                    p_rotation: float = 0.5, p_scale: float = 0.5) -> tf.Tensor:
    """Shape-preserving 3D augmentation of ``(B, H, W, D, C)`` crops (spec ``lung_nodule.md`` §6).

    Per sample, with probability ``p_rotation``: rotation by θ ~ U(−rotation_deg, rotation_deg)
    in the plane of array axes (0, 1), i.e. about the slice axis; with probability ``p_scale``:
    isotropic scaling by s ~ U(scale) about the centre, output size kept (content enlarged and
    centre-cropped for s > 1). Nearest interpolation, constant fill 0. Rotation and in-plane
    scaling are one in-plane affine (about the geometric centre) applied to every slice; the
    slice axis is rescaled by nearest index lookup ``k_in = round(c + (k − c)/s)``.

    Args:
        volumes: float ``(B, H, W, D, C)``.
        seed: int or int ``(2,)`` tensor (stateless ops).
        rotation_deg, scale, p_rotation, p_scale: the ranges and probabilities above.
    Returns:
        ``(B, H, W, D, C)`` tensor of the input dtype.
    """
    x = tf.convert_to_tensor(volumes)
    dtype = x.dtype
    shape = tf.shape(x)
    b, h, w, d, c = shape[0], shape[1], shape[2], shape[3], shape[4]
    u = tf.random.stateless_uniform(tf.stack([b, 4]), seed=_as_seed(seed), dtype=tf.float32)
    rot = math.radians(float(rotation_deg))
    theta = tf.where(u[:, 0] < p_rotation, -rot + 2.0 * rot * u[:, 1], 0.0)
    s = tf.where(u[:, 2] < p_scale, float(scale[0]) + (float(scale[1]) - float(scale[0])) * u[:, 3], 1.0)
    params = AffineParams(rotation_rad=theta, shear_rad=tf.zeros_like(theta), zoom_row=1.0 / s, zoom_col=1.0 / s)
    transform = affine_to_keras_transform(affine_matrices(params, h, w, "geometric"))
    flat = tf.reshape(tf.cast(x, tf.float32), tf.stack([b, h, w, d * c]))
    flat = keras.ops.image.affine_transform(flat, transform, interpolation="nearest", fill_mode="constant",
                                            fill_value=0, data_format="channels_last")
    x = tf.reshape(flat, shape)
    centre = (tf.cast(d, tf.float32) - 1.0) / 2.0
    k = tf.cast(tf.range(d), tf.float32)
    k_in = tf.round(centre + (k[None, :] - centre) / s[:, None])                       # (B, D)
    valid = (k_in >= 0) & (k_in <= tf.cast(d, tf.float32) - 1.0)
    idx = tf.cast(tf.clip_by_value(k_in, 0.0, tf.cast(d, tf.float32) - 1.0), tf.int32)
    x = tf.gather(x, idx, axis=3, batch_dims=1)
    x = x * tf.cast(valid, x.dtype)[:, None, None, :, None]
    return tf.cast(x, dtype)
