"""Tests for ``training/losses.py``: the soft Dice of spec ``wmh_ensemble.md`` §6."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from zoo.training.losses import SoftDiceLoss


def hand_dice_loss(g: np.ndarray, p: np.ndarray, s: float = 1.0) -> float:
    """1 − (2Σpg + s)/(Σp + Σg + s) over all elements, in float64."""
    g = g.astype(np.float64)
    p = p.astype(np.float64)
    return 1.0 - (2.0 * np.sum(p * g) + s) / (np.sum(p) + np.sum(g) + s)


@pytest.fixture
def batch():
    rng = np.random.default_rng(7)
    g = (rng.random((4, 6, 5, 1)) > 0.6).astype(np.float32)
    p = rng.random((4, 6, 5, 1)).astype(np.float32)
    return g, p


def test_batch_value_equals_hand_formula(batch):
    g, p = batch
    value = SoftDiceLoss()(g, p)
    assert value.shape == ()
    assert value.dtype == tf.float32
    np.testing.assert_allclose(float(value), hand_dice_loss(g, p), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(float(SoftDiceLoss(smooth=0.5)(g, p)), hand_dice_loss(g, p, 0.5),
                               rtol=1e-6, atol=1e-7)


def test_batch_global_is_not_mean_of_slices():
    # Slice 0: a large lesion predicted perfectly. Slice 1: no lesion, a small false positive.
    g = np.zeros((2, 8, 8, 1), np.float32)
    p = np.zeros((2, 8, 8, 1), np.float32)
    g[0, :6, :6] = 1.0
    p[0, :6, :6] = 1.0
    p[1, 0, :4] = 1.0
    batch_value = hand_dice_loss(g, p)                                   # 1 - 73/77
    per_slice = np.mean([hand_dice_loss(g[i], p[i]) for i in range(2)])  # (0 + 0.8) / 2
    assert abs(batch_value - per_slice) > 0.3
    np.testing.assert_allclose(float(SoftDiceLoss()(g, p)), batch_value, rtol=1e-6)
    np.testing.assert_allclose(float(SoftDiceLoss(reduction_mode="per_sample")(g, p)), per_slice,
                               rtol=1e-6)


@pytest.mark.parametrize("reduction", [None, "none", "sum", "sum_over_batch_size", "mean"])
def test_keras_reduction_does_not_change_the_value(batch, reduction):
    g, p = batch
    value = SoftDiceLoss(reduction=reduction)(g, p)
    assert value.shape == ()
    np.testing.assert_allclose(float(value), hand_dice_loss(g, p), rtol=1e-6, atol=1e-7)


def test_perfect_prediction_gives_exactly_zero(batch):
    g, _ = batch
    assert g.sum() > 0
    assert float(SoftDiceLoss()(g, g.copy())) == 0.0
    assert float(SoftDiceLoss(reduction_mode="per_sample")(g, g.copy())) == 0.0


def test_empty_prediction_and_empty_truth_give_zero():
    z = np.zeros((3, 4, 4, 1), np.float32)
    assert float(SoftDiceLoss()(z, z)) == 0.0
    assert float(SoftDiceLoss(reduction_mode="per_sample")(z, z)) == 0.0


def test_channel_layouts_agree(batch):
    g, p = batch
    expected = hand_dice_loss(g, p)
    softmax = np.concatenate([1.0 - p, p], axis=-1)
    one_hot = np.concatenate([1.0 - g, g], axis=-1)
    loss = SoftDiceLoss()
    for y_true, y_pred in [(g, softmax), (one_hot, p), (one_hot, softmax), (g[..., 0], p)]:
        np.testing.assert_allclose(float(loss(y_true, y_pred)), expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="channel"):
        loss(np.zeros((1, 4, 4, 3)), np.zeros((1, 4, 4, 3)))


def test_gradient_is_finite_and_nonzero(batch):
    g, p = batch
    logits = tf.Variable(np.log(p / (1 - p)))
    with tf.GradientTape() as tape:
        value = SoftDiceLoss()(g, tf.sigmoid(logits))
    grad = tape.gradient(value, logits).numpy()
    assert np.all(np.isfinite(grad))
    assert np.abs(grad).max() > 0
    # Empty prediction and empty truth: still finite.
    z = tf.Variable(np.full((2, 4, 4, 1), -20.0, np.float32))
    with tf.GradientTape() as tape:
        value = SoftDiceLoss()(np.zeros((2, 4, 4, 1), np.float32), tf.sigmoid(z))
    assert np.all(np.isfinite(tape.gradient(value, z).numpy()))


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_low_precision_inputs_give_float32(batch, dtype):
    g, p = batch
    loss = SoftDiceLoss()
    value = loss(tf.constant(g, dtype), tf.constant(p, dtype))
    assert value.dtype == tf.float32
    expected = hand_dice_loss(g, tf.cast(tf.constant(p, dtype), tf.float32).numpy())
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)
    assert loss.call(tf.constant(g, dtype), tf.constant(p, dtype)).dtype == tf.float32


def test_sample_weight_is_rejected(batch):
    g, p = batch
    with pytest.raises(ValueError, match="batch-global"):
        SoftDiceLoss()(g, p, sample_weight=np.ones(4, np.float32))


def test_invalid_arguments():
    with pytest.raises(ValueError, match="reduction_mode"):
        SoftDiceLoss(reduction_mode="per_class")
    with pytest.raises(ValueError, match="smooth"):
        SoftDiceLoss(smooth=0.0)
    with pytest.raises(ValueError, match="float32"):
        SoftDiceLoss(dtype="float16")


def test_config_round_trip(batch):
    g, p = batch
    loss = SoftDiceLoss(smooth=2.0, reduction_mode="per_sample", name="dice")
    config = loss.get_config()
    assert config["smooth"] == 2.0 and config["reduction_mode"] == "per_sample"
    again = SoftDiceLoss.from_config(config)
    assert float(again(g, p)) == pytest.approx(float(loss(g, p)))
    revived = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(revived, SoftDiceLoss)
    assert revived.smooth == 2.0 and revived.reduction_mode == "per_sample"


def test_compile_and_fit_one_step(batch):
    g, _ = batch
    x = np.random.default_rng(0).random((4, 6, 5, 2)).astype(np.float32)
    inputs = keras.Input((6, 5, 2), name="x")
    outputs = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=SoftDiceLoss())
    expected = hand_dice_loss(g, model.predict(x, verbose=0))
    # evaluate on the whole batch equals the hand formula over the whole batch
    assert model.evaluate(x, g, batch_size=4, verbose=0) == pytest.approx(expected, rel=1e-5)
    history = model.fit(x, g, batch_size=4, epochs=1, verbose=0)
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-5)
