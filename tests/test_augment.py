"""Tests for ``training/augment.py``: spec ``wmh_ensemble.md`` §8 and practices §4."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import tensorflow as tf

from zoo.training.augment import (
    AffineParams,
    AugmentConfig,
    affine_matrices,
    affine_to_keras_transform,
    apply_affine,
    augment_batch,
    flip_lr,
    sample_affine_params,
    sample_affines,
)

H, W = 37, 52  # non-square and odd/even, so a row/column swap cannot pass


def params(theta_deg=0.0, shear=0.0, zr=1.0, zc=1.0) -> AffineParams:
    return AffineParams(*(tf.constant([float(v)]) for v in (math.radians(theta_deg), shear, zr, zc)))


def input_coords(matrix: np.ndarray, h: int, w: int) -> np.ndarray:
    """(2, h, w) float64 input (row, col) of every output pixel."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    grid = np.stack([rows, cols, np.ones_like(rows)]).reshape(3, -1).astype(np.float64)
    return (matrix.astype(np.float64) @ grid)[:2].reshape(2, h, w)


@pytest.fixture
def images():
    return np.random.default_rng(3).random((3, H, W, 2)).astype(np.float32)


def test_keras_transform_layout():
    a = np.arange(9, dtype=np.float32).reshape(3, 3)
    t = affine_to_keras_transform(a[None]).numpy()
    # [a0, a1, a2, b0, b1, b2, c0, c1] = [A11, A10, A12, A01, A00, A02, 0, 0]
    np.testing.assert_array_equal(t, [[4, 3, 5, 1, 0, 2, 0, 0]])
    assert affine_to_keras_transform(a).shape == (8,)


def test_row_translation_is_not_a_column_translation(images):
    shift = np.array([[1, 0, 3], [0, 1, 0], [0, 0, 1]], np.float32)  # out[r, c] = in[r + 3, c]
    out, _ = apply_affine(images, images[..., :1], np.repeat(shift[None], 3, 0))
    np.testing.assert_array_equal(out.numpy()[:, : H - 3], images[:, 3:])


@pytest.mark.parametrize("centre", ["keras2", "geometric"])
def test_nearest_matches_scipy_order0(images, centre):
    matrices = sample_affines(11, 3, H, W, shear_rad=0.3142, centre=centre).numpy()
    out, _ = apply_affine(images, images[..., :1] > 0.5, matrices, "nearest", "nearest")
    out = out.numpy()
    for b in range(3):
        coords = input_coords(matrices[b], H, W)
        not_tie = np.all(np.abs(np.abs(coords - np.floor(coords)) - 0.5) > 1e-3, axis=0)
        assert not_tie.mean() > 0.9
        for ch in range(2):
            ref = ndi.affine_transform(images[b, ..., ch].astype(np.float64), matrices[b, :2, :2],
                                       offset=matrices[b, :2, 2], order=0, mode="nearest")
            assert np.mean(ref == out[b, ..., ch]) >= 0.99
            np.testing.assert_array_equal(ref[not_tie], out[b, ..., ch][not_tie])


def test_bilinear_matches_scipy_order1(images):
    matrices = sample_affines(5, 3, H, W).numpy()
    out, _ = apply_affine(images, images[..., :1], matrices, "bilinear", "nearest")
    for b in range(3):
        ref = ndi.affine_transform(images[b, ..., 0].astype(np.float64), matrices[b, :2, :2],
                                   offset=matrices[b, :2, 2], order=1, mode="nearest")
        np.testing.assert_allclose(out.numpy()[b, ..., 0], ref, atol=1e-4)


def test_identity_is_exact(images):
    masks = (images[..., :1] > 0.5).astype(np.float32)
    for interpolation in ("nearest", "bilinear"):
        out, out_m = apply_affine(images, masks, np.eye(3, dtype=np.float32), interpolation)
        np.testing.assert_array_equal(out.numpy(), images)
        np.testing.assert_array_equal(out_m.numpy(), masks)


@pytest.mark.parametrize("n", [8, 9])
def test_rotation_90_about_geometric_centre_is_rot90_clockwise(n):
    img = np.arange(n * n, dtype=np.float32).reshape(1, n, n, 1)
    img[0, 0, 1] = 500.0  # asymmetric
    matrix = affine_matrices(params(theta_deg=90.0), n, n, centre="geometric")
    out, _ = apply_affine(img, img, matrix)
    # theta = +90 degrees (output -> input, rows pointing down) turns the picture clockwise.
    np.testing.assert_array_equal(out.numpy()[0, ..., 0], np.rot90(img[0, ..., 0], k=-1))
    assert not np.array_equal(out.numpy()[0, ..., 0], np.rot90(img[0, ..., 0], k=1))


@pytest.mark.parametrize("centre, point", [("keras2", (H / 2 + 0.5, W / 2 + 0.5)),
                                           ("geometric", ((H - 1) / 2, (W - 1) / 2))])
def test_centre_maps_to_itself(centre, point):
    matrices = sample_affines(2, 20, H, W, shear_rad=0.3142, centre=centre).numpy()
    p = np.array([point[0], point[1], 1.0])
    np.testing.assert_allclose(matrices @ p, np.tile(p, (20, 1)), atol=1e-4)
    np.testing.assert_allclose(matrices[:, 2], np.tile([0, 0, 1], (20, 1)))


def test_composite_is_r_s_z():
    th, sh, zr, zc = math.radians(10.0), 0.07, 0.93, 1.06
    r = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    s = np.array([[1.0, -math.sin(sh)], [0.0, math.cos(sh)]])
    z = np.diag([zr, zc])
    matrix = affine_matrices(params(10.0, sh, zr, zc), H, W, centre="keras2").numpy()[0]
    np.testing.assert_allclose(matrix[:2, :2], r @ s @ z, atol=1e-6)


def test_masks_stay_binary_and_keep_dtype(images):
    rng = np.random.default_rng(1)
    masks = (rng.random((3, H, W, 1)) > 0.7).astype(np.float32)
    config = {"rotation_deg": 15, "shear_rad": 0.3142, "zoom": [0.9, 1.1],
              "interpolation_image": "bilinear", "fill_mode": "nearest"}
    out, out_m = augment_batch(images, masks, 4, config)
    assert set(np.unique(out_m.numpy())) <= {0.0, 1.0}
    assert out_m.dtype == tf.float32 and out.dtype == tf.float32
    _, out_b = augment_batch(images, masks.astype(bool), 4, config)
    assert out_b.dtype == tf.bool
    np.testing.assert_array_equal(out_b.numpy(), out_m.numpy() > 0.5)
    _, out_u = augment_batch(images, masks.astype(np.uint8), 4, config)
    assert out_u.dtype == tf.uint8


def test_image_and_mask_stay_aligned():
    img = np.zeros((4, 64, 64, 2), np.float32)
    masks = np.zeros((4, 64, 64, 1), np.float32)
    img[:, 12:22, 36:48, :] = 1.0  # off-centre, so rotation and zoom move it
    masks[:, 12:22, 36:48, :] = 1.0
    matrices = sample_affines([9, 1], 4, 64, 64, shear_rad=0.3142).numpy()
    out, out_m = apply_affine(img, masks, matrices, "bilinear", "constant")
    before = np.array([16.5, 41.5, 1.0])
    for b in range(4):
        weights_img = out.numpy()[b, ..., 0]
        weights_mask = out_m.numpy()[b, ..., 0]
        rows, cols = np.indices(weights_img.shape)
        c_img = np.array([np.sum(rows * weights_img), np.sum(cols * weights_img)]) / weights_img.sum()
        c_mask = np.array([np.sum(rows * weights_mask), np.sum(cols * weights_mask)]) / weights_mask.sum()
        assert np.linalg.norm(c_img - c_mask) < 1.0
        # and both sit where the forward map (the inverse of output->input) sends the square
        expected = (np.linalg.inv(matrices[b].astype(np.float64)) @ before)[:2]
        assert np.linalg.norm(c_mask - expected) < 1.0


def test_parameters_lie_in_range_and_span_it():
    p = sample_affine_params(123, 1000, rotation_deg=15.0, shear_rad=0.1, zoom=(0.9, 1.1))
    for values, lo, hi in [(p.rotation_rad, -math.radians(15), math.radians(15)),
                           (p.shear_rad, -0.1, 0.1), (p.zoom_row, 0.9, 1.1), (p.zoom_col, 0.9, 1.1)]:
        v = values.numpy()
        assert v.shape == (1000,)
        assert v.min() >= lo - 1e-6 and v.max() <= hi + 1e-6
        span = hi - lo
        assert v.min() < lo + 0.05 * span and v.max() > hi - 0.05 * span
        assert abs(v.mean() - (lo + hi) / 2) < 0.05 * span
    # zx and zy are drawn independently
    assert abs(np.corrcoef(p.zoom_row.numpy(), p.zoom_col.numpy())[0, 1]) < 0.1


def test_sampling_is_reproducible_and_seed_dependent():
    a = sample_affines(5, 16, H, W).numpy()
    np.testing.assert_array_equal(a, sample_affines(5, 16, H, W).numpy())
    np.testing.assert_array_equal(a, sample_affines(tf.constant([5, 0]), 16, H, W).numpy())
    assert not np.allclose(a, sample_affines(6, 16, H, W).numpy())
    assert not np.allclose(a, sample_affines([5, 1], 16, H, W).numpy())
    # the 16 slices get different transforms
    assert len({tuple(m.ravel().round(6)) for m in a}) == 16


def test_paper_shear_is_accepted(images):
    shear = sample_affine_params(0, 1000, shear_rad=0.3142).shear_rad.numpy()
    assert np.abs(shear).max() <= 0.3142 + 1e-6 and np.abs(shear).max() > 0.3
    out, _ = augment_batch(images, images[..., :1], 0, {"shear_rad": 0.3142})
    assert out.shape == images.shape


def test_flip_lr(images):
    masks = (images[..., :1] > 0.5).astype(np.float32)
    f_img, f_mask = flip_lr(images, masks)
    np.testing.assert_array_equal(f_img.numpy(), images[:, :, ::-1])
    np.testing.assert_array_equal(f_mask.numpy(), masks[:, :, ::-1])
    back_img, back_mask = flip_lr(f_img, f_mask)
    np.testing.assert_array_equal(back_img.numpy(), images)
    np.testing.assert_array_equal(back_mask.numpy(), masks)


def test_runs_in_tf_data_map_like_eager(images):
    masks = (images[..., :1] > 0.5).astype(np.float32)
    config = {"rotation_deg": 15, "shear_rad": 0.1, "zoom": [0.9, 1.1],
              "interpolation_image": "nearest", "fill_mode": "nearest",
              # recipe keys handled by the dataset builder are accepted
              "flip_lr": True, "affine_probability": 0.5, "interpolation_mask": "nearest"}
    ds = tf.data.Dataset.from_tensor_slices((images, masks)).batch(3).repeat(2).enumerate()
    ds = ds.map(lambda epoch, xy: augment_batch(xy[0], xy[1], tf.stack([7, epoch]), config),
                num_parallel_calls=tf.data.AUTOTUNE)
    results = list(ds)
    assert len(results) == 2
    for epoch, (x, m) in enumerate(results):
        assert x.shape == images.shape and m.shape == masks.shape
        eager_x, eager_m = augment_batch(images, masks, tf.constant([7, epoch], tf.int64), config)
        np.testing.assert_array_equal(x.numpy(), eager_x.numpy())
        np.testing.assert_array_equal(m.numpy(), eager_m.numpy())
    assert not np.array_equal(results[0][0].numpy(), results[1][0].numpy())  # fresh per epoch


def test_config_validation():
    assert AugmentConfig.from_mapping({"interpolation_image": "linear"}).interpolation_image == "bilinear"
    assert AugmentConfig.from_mapping(None) == AugmentConfig()
    with pytest.raises(ValueError, match="unknown augmentation key"):
        AugmentConfig.from_mapping({"rotation": 15})
    with pytest.raises(ValueError, match="interpolation_mask"):
        AugmentConfig.from_mapping({"interpolation_mask": "cubic"})
    with pytest.raises(ValueError, match="shear_rad"):
        AugmentConfig(shear_rad=18.0)
    with pytest.raises(ValueError, match="zoom"):
        AugmentConfig(zoom=(1.1, 0.9))
    with pytest.raises(ValueError, match="fill_mode"):
        AugmentConfig(fill_mode="mirror")
    with pytest.raises(ValueError, match="centre"):
        AugmentConfig(centre="middle")
