"""DiamondGAN entry (spec specs/diamondgan.md): architecture counts, conditions, pool, losses,
preprocessing round trip, predict on real scans, the training step and resume."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest

import zoo
from zoo import errors
from zoo.architectures.diamondgan import (ReflectionPad2D, all_subsets, build_discriminator, build_generator,
                                          condition_maps, source_stack)
from zoo.preprocessing.intensity import MinMaxScaling


# --- architecture (spec §4-§5, §13) -------------------------------------------------------------
@pytest.mark.parametrize("encoding,blocks,expected", [
    ("code_patterns", 9, 7_218_987), ("mask_channels", 9, 7_223_691), ("code_patterns", 6, 4_974_315)])
def test_generator_parameter_counts(encoding, blocks, expected):
    g = build_generator((240, 240, 3), condition_encoding=encoding, n_res_blocks=blocks)
    assert g.count_params() == expected
    assert sum(int(np.prod(w.shape)) for w in g.trainable_weights) == expected
    assert g.output_shape == (None, 240, 240, 3)
    assert set(g.input) == {"sources", "condition"}


def test_discriminator_parameter_count_and_patch_map():
    d = build_discriminator((240, 240, 3))
    assert d.count_params() == 2_766_529
    assert d.output_shape == (None, 15, 15, 1)
    assert build_discriminator((240, 240, 3), d_output="linear").count_params() == 2_766_529


def test_generator_output_range_and_card_builds_default():
    g = build_generator((32, 32, 3), n_res_blocks=1)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype("float32") * 50
    y = np.asarray(g({"sources": x, "condition": np.ones((2, 32, 32, 1), "float32")}))
    assert y.shape == (2, 32, 32, 3) and np.all(np.abs(y) < 1.0)
    m = zoo.load("diamondgan", weights=None)
    assert m.models[0].count_params() == 7_218_987  # card default: code_patterns, 9 blocks


def test_reflection_pad_equals_numpy():
    x = np.random.default_rng(1).normal(size=(2, 9, 7, 3)).astype("float32")
    ref = np.pad(x, [(0, 0), (3, 3), (3, 3), (0, 0)], mode="reflect")
    np.testing.assert_array_equal(np.asarray(ReflectionPad2D(3)(x)), ref)


# --- conditions and the source stack -----------------------------------------------------------
@pytest.mark.parametrize("encoding,k", [("code_patterns", 1), ("mask_channels", 3)])
def test_conditions_distinct_binary_per_subset(encoding, k):
    codes = all_subsets(3)
    assert len(codes) == 7 and (0, 0, 0) not in codes
    maps = [condition_maps(c, (48, 48), encoding) for c in codes]
    assert all(m.shape == (48, 48, k) and set(np.unique(m)) <= {0.0, 1.0} for m in maps)
    assert len({m.tobytes() for m in maps}) == 7
    with pytest.raises(ValueError):
        condition_maps((0, 0, 0), (8, 8), encoding)


def test_mask_channels_are_the_presence_flags():
    m = condition_maps((0, 1, 1), (4, 5), "mask_channels")
    np.testing.assert_array_equal(m[..., 0], 0)
    np.testing.assert_array_equal(m[..., 1:], 1)


def test_absent_sources_are_exactly_minus_one():
    t1 = np.full((2, 4, 4), 0.3, np.float32)
    s = source_stack([None, t1, None])
    assert s.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(s[..., 0], -1.0)
    np.testing.assert_array_equal(s[..., 2], -1.0)
    np.testing.assert_array_equal(s[..., 1], t1)


def test_allowed_codes_of_flair_variant_exclude_the_target():
    from zoo.entries import diamondgan as entry

    card = zoo.card("diamondgan")
    assert entry.allowed_codes(card, "flair") == [(0, 0, 1), (0, 1, 0), (0, 1, 1)]
    assert len(entry.allowed_codes(card, "dir")) == 7


# --- pool and losses (spec §6-§7) --------------------------------------------------------------
def test_pool_returns_new_images_while_filling_then_half_old():
    from zoo.training.tasks.gan_synthesis import ImagePool

    pool = ImagePool(5, (2, 2, 1), seed=3)
    for i in range(5):
        img = np.full((1, 2, 2, 1), float(i), np.float32)
        np.testing.assert_array_equal(np.asarray(pool.query(img)), img)
    assert int(pool.count.numpy()) == 5
    old = 0
    n = 400
    for i in range(n):
        out = float(np.asarray(pool.query(np.full((1, 2, 2, 1), 1000.0 + i, np.float32)))[0, 0, 0, 0])
        old += out != 1000.0 + i
    assert 0.4 < old / n < 0.6


def test_generator_loss_weights_and_real_label():
    import tensorflow as tf

    from zoo.training.tasks.gan_synthesis import generator_loss, lsgan

    s = tf.zeros((1, 4, 4, 3))
    cyc = tf.fill((1, 4, 4, 3), 0.5)  # |S - G2(G1(S))| = 0.5, |T3 - G1(G2(T3))| = 0.5
    d = tf.fill((1, 1, 1, 1), 0.2)
    total, c, adv = generator_loss(s, s, cyc, cyc, d, d, lambda_cycle=8.0, real_label=0.95)
    assert math.isclose(float(c), 1.0, rel_tol=1e-6)
    assert math.isclose(float(adv), 2 * 0.75 ** 2, rel_tol=1e-6)
    assert math.isclose(float(total), 8.0 + 2 * 0.75 ** 2, rel_tol=1e-6)
    assert math.isclose(float(lsgan(d, 0.0)), 0.04, rel_tol=1e-6)


def test_paired_l1_weighs_only_supporting_samples():
    import tensorflow as tf

    from zoo.training.tasks.gan_synthesis import paired_l1

    t3 = tf.zeros((2, 4, 4, 3))
    fake = tf.concat([tf.fill((1, 4, 4, 3), 0.5), tf.fill((1, 4, 4, 3), -1.0)], axis=0)
    assert math.isclose(float(paired_l1(t3, fake)), 0.75, rel_tol=1e-6)
    assert math.isclose(float(paired_l1(t3, fake, tf.constant([1.0, 0.0]))), 0.5, rel_tol=1e-6)


def test_lambda_paired_adds_the_paired_term_to_the_generator_loss():
    """Same networks, same batch: the logged generator loss with ``gan.lambda_paired`` = 10
    exceeds the paper's (0) by 10 x the logged paired L1 (which is logged either way); one
    subset per step, so nothing is updated before the loss is taken."""
    import keras
    import tensorflow as tf

    from zoo.training.recipe import load_recipe
    from zoo.training.tasks import gan_synthesis

    card = zoo.card("diamondgan").with_options({"n_res_blocks": 1})
    rng = np.random.default_rng(0)
    x = tuple(tf.constant(v) for v in (rng.uniform(-1, 1, (1, 32, 32, 3)).astype("float32"), rng.uniform(-1, 1, (1, 32, 32, 3)).astype("float32"),
         np.ones((1, 3), "float32")))
    logs = {}
    for lam in (0.0, 10.0):
        rec = load_recipe("diamondgan", "flair", {"data": {"patch_size": 32}, "batch_size": 1,
                                                  "gan": {"pool_size": 2, "lambda_paired": lam, "run_eagerly": True,
                                                          "subset_schedule": "random_one"}})
        keras.utils.set_random_seed(3)
        _, trainer = gan_synthesis.build(card, "flair", rec, 0, 3)
        logs[lam] = trainer.train_on_batch(x, np.zeros((1,), "float32"), return_dict=True)
    assert logs[0.0]["paired"] > 0
    assert math.isclose(logs[10.0]["paired"], logs[0.0]["paired"], rel_tol=1e-5)
    assert math.isclose(logs[10.0]["loss"] - logs[0.0]["loss"], 10.0 * logs[0.0]["paired"], rel_tol=1e-4)


# --- metrics (metrics.md §5) --------------------------------------------------------------------
def test_psnr_constant_offset_and_scale_invariance():
    from zoo import metrics

    y = np.random.default_rng(0).uniform(0, 1, (32, 32))
    assert math.isclose(metrics.psnr_db(y, y + 0.1, 1.0), 10 * math.log10(1 / 0.01), rel_tol=1e-9)
    assert math.isclose(metrics.psnr_db(y, y + 0.1, 1.0), metrics.psnr_db(2 * y - 1, 2 * (y + 0.1) - 1, 2.0),
                        rel_tol=1e-9)
    assert metrics.psnr_db(y, y, 1.0) == math.inf
    assert math.isclose(metrics.mae(y, y - 0.25), 0.25, rel_tol=1e-9)
    assert math.isclose(metrics.mae(2 * y - 1, 2 * (y - 0.25) - 1), 0.5, rel_tol=1e-9)
    mask = np.zeros_like(y, bool)
    mask[:8] = True
    z = y.copy()
    z[8:] += 0.5  # errors only outside the mask
    assert metrics.psnr_db(y, z, 1.0, mask) == math.inf and metrics.mae(y, z, mask) == 0.0
    with pytest.raises(errors.MetricError):
        metrics.psnr_db(y, y[:4], 1.0)


def test_ssim_identical_and_constant_images():
    from zoo import metrics

    y = np.random.default_rng(2).uniform(0, 1, (40, 40))
    assert math.isclose(metrics.ssim(y, y, 1.0), 1.0, rel_tol=1e-12)
    a, b = 0.3, 0.6
    c1 = (0.01 * 1.0) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)  # variances 0: the contrast term is 1
    got = metrics.ssim(np.full((20, 20), a), np.full((20, 20), b), 1.0)
    assert math.isclose(got, expected, rel_tol=1e-9)
    assert metrics.ssim(y, 1 - y, 1.0) < 0.0
    mask = np.zeros_like(y, bool)
    mask[10:20, 10:20] = True
    assert math.isclose(metrics.ssim(y, y, 1.0, mask), 1.0, rel_tol=1e-12)


def test_synthesis_metrics_per_slice_mean():
    from zoo import metrics

    ref = np.zeros((16, 16, 3))
    syn = ref.copy()
    syn[..., 0] += 0.1
    syn[..., 1] += 0.01
    out = metrics.synthesis_metrics(ref, syn, 1.0)
    assert out["n_slices"] == 3 and out["n_inf_psnr"] == 1
    assert math.isclose(out["psnr_db"], (20.0 + 40.0) / 2, rel_tol=1e-9)
    assert math.isclose(out["mae"], 0.11 / 3, rel_tol=1e-9)


# --- preprocessing ------------------------------------------------------------------------------
def test_minmax_scaling_forward_inverse():
    x = np.linspace(0, 100, 1001).reshape(7, 11, 13)
    sc = MinMaxScaling.fit(x, None, (0, 100))
    y = sc.forward(x)
    assert y.min() == -1.0 and y.max() == 1.0
    np.testing.assert_allclose(sc.inverse(y), x, atol=1e-4)
    mask = x > 50
    y2 = MinMaxScaling.fit(x, mask, (0, 100)).forward(x, mask)
    assert np.all(y2[~mask] == -1.0)
    with pytest.raises(errors.ConstantImageError):
        MinMaxScaling.fit(np.ones((3, 3, 3)))


def _slab(img, k0, k1):
    from conftest import axial_slab

    return axial_slab(img, k0, k1)


@pytest.fixture(scope="module")
def tiny_model():
    return zoo.load("diamondgan", weights=None, options={"n_res_blocks": 1})


@pytest.mark.realdata
def test_predict_real_t1_t2_and_t1_alone_in_input_grid(shared_data, tiny_model):
    d = shared_data / "open_ms" / "mni" / "patient07"
    t1 = _slab(nib.load(d / "t1.nii.gz"), 88, 90)
    t2 = _slab(nib.load(d / "t2.nii.gz"), 88, 90)
    for inputs in ({"t1": t1, "t2": t2}, {"t1": t1}):
        pred = tiny_model.predict(inputs, target="flair")
        img = pred.images["synthetic_flair"]
        assert img.shape == t1.shape
        np.testing.assert_allclose(img.affine, t1.affine)
        assert int(img.header["qform_code"]) == int(t1.header["qform_code"])
        y = np.asarray(img.dataobj)
        brain = np.asarray(t1.dataobj) != 0
        assert y.min() >= 0.0 and y.max() <= 1.0
        assert np.all(y[~brain] == 0.0) and y[brain].std() > 0
        assert pred.qc["condition_code"] == ([0, 1, 1] if "t2" in inputs else [0, 1, 0])


def test_predict_bad_inputs(tiny_model):
    rng = np.random.default_rng(0)
    a = rng.uniform(1, 2, (12, 12, 2)).astype("float32")
    aff = np.eye(4)
    with pytest.raises(errors.GridMismatchError):
        tiny_model.predict({"t1": (a, aff), "t2": (a[:10], aff)})
    with pytest.raises(errors.MissingModalityError):
        tiny_model.predict({})
    with pytest.raises(errors.MissingModalityError):
        tiny_model.predict({"flair": (a, aff)})  # the target is not a source of this variant
    with pytest.raises(errors.MissingModalityError, match="variant 'dir'"):
        tiny_model.predict({"t1": (a, aff)}, target="dir")


def test_preprocess_fills_absent_channels(tiny_model):
    from zoo.entries import diamondgan as entry
    from zoo.io import read_volume

    a = np.zeros((20, 20, 2), np.float32)
    a[5:15, 5:15] = np.random.default_rng(0).uniform(1, 2, (10, 10, 2))
    s, cond, code, pipe, state, names = entry.preprocess(tiny_model.card, "flair",
                                                         {"t2": read_volume((a, np.eye(4)), "t2")})
    assert code == (0, 0, 1) and names == ["t2"]
    assert s.shape == (2, 240, 240, 3)
    np.testing.assert_array_equal(s[..., :2], -1.0)
    assert s[..., 2].max() == 1.0 and s[..., 2].min() == -1.0
    back = pipe.invert(s[..., 2], state, fill_value=-1.0)
    assert back.shape == a.shape and np.all(back[a == 0] == -1.0)


# --- training (engine + task) -------------------------------------------------------------------
def _write_subjects(root, n=2):
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"s{i}"
        d.mkdir(parents=True)
        base = np.zeros((24, 24, 3), np.float32)
        base[4:20, 4:20] = rng.uniform(1, 2, (16, 16, 3))
        for j, c in enumerate(("flair", "t1", "t2")):
            nib.save(nib.Nifti1Image(base * (j + 1), np.eye(4)), d / f"{c}.nii.gz")


def test_two_step_training_interrupted_and_resumed(tmp_path):
    """Two training steps through the engine (one per epoch), interrupted after the first
    epoch; the re-run resumes from the BackupAndRestore state instead of restarting."""
    import json

    import keras

    from zoo.training import datasets
    from zoo.training.recipe import load_recipe
    from zoo.training.trainer import train

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                raise RuntimeError("simulated interruption")

    _write_subjects(tmp_path / "data")
    subjects = datasets.multicontrast(tmp_path / "data")
    card = zoo.card("diamondgan").with_options({"n_res_blocks": 1})
    rec = load_recipe("diamondgan", "flair", {"data": {"patch_size": 32}, "batch_size": 1,
                                              "gan": {"run_eagerly": True, "pool_size": 3}})
    out = tmp_path / "run"
    kwargs = dict(epochs=2, steps_per_epoch=1, strategy="none", verbose=0)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        train(card, rec, subjects, out, callbacks=[Interrupt()], **kwargs)
    assert (out / "member0" / "backup").is_dir()
    record = train(card, rec, subjects, out, **kwargs)
    member = record["members"][0]
    assert member["resumed_from_epoch"] == 1 and member["epochs"] == 2
    hist = member["history"]
    assert set(hist) >= {"loss", "cycle", "adversarial", "d_s_loss", "d_t_loss"}
    assert all(np.isfinite(v[0]) for v in hist.values())
    assert json.loads((out / "run_record.json").read_text(encoding="utf-8"))["task"] == "gan_synthesis"
    m = zoo.load("diamondgan", weights=str(out), options={"n_res_blocks": 1})
    assert m.models[0].output_shape == (None, 240, 240, 3)


def test_trainer_restores_every_network_and_optimizer(tmp_path):
    """BackupAndRestore state = save_weights of the trainer: G1, G2, D_S, D_T, the pools and all
    three optimisers must be in it."""
    from zoo.training.recipe import load_recipe
    from zoo.training.tasks import gan_synthesis

    card = zoo.card("diamondgan").with_options({"n_res_blocks": 1})
    rec = load_recipe("diamondgan", "flair", {"data": {"patch_size": 32}, "gan": {"pool_size": 2}})
    _, a = gan_synthesis.build(card, "flair", rec, 0, 1)
    _, b = gan_synthesis.build(card, "flair", rec, 0, 2)
    for opt in (a.g_optimizer, a.ds_optimizer, a.dt_optimizer):
        opt.iterations.assign(7)
    a.pool_s.count.assign(2)
    path = tmp_path / "t.weights.h5"
    a.save_weights(path)
    b.load_weights(path)
    for x, y in ((a.g2, b.g2), (a.d_s, b.d_s), (a.d_t, b.d_t), (a.g1, b.g1)):
        np.testing.assert_array_equal(x.weights[0].numpy(), y.weights[0].numpy())
    assert [int(o.iterations.numpy()) for o in (b.g_optimizer, b.ds_optimizer, b.dt_optimizer)] == [7, 7, 7]
    assert int(b.pool_s.count.numpy()) == 2


def test_card_schema_requires_output_channel_for_synthesis():
    from zoo.card import validate

    data = zoo.card("diamondgan").to_dict()
    validate(data)
    del data["inference"]["output_channel"]
    with pytest.raises(errors.CardError):
        validate(data)


def test_load_without_weights_says_so():
    with pytest.raises(errors.WeightsNotAvailableError, match="ships no trained weights"):
        zoo.load("diamondgan", variant="dir")
