"""Architecture of the Li et al. 2018 U-Net: parameter counts (spec §5 targets), shapes, crops."""

import numpy as np
import pytest

from zoo.architectures.unet2d import _crop_amounts, build_unet2d


def _trainable(model) -> int:
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


@pytest.mark.parametrize("channels,batch_norm,expected", [
    (2, False, 8_742_209),   # released code, FLAIR + T1
    (1, False, 8_740_609),   # FLAIR only
    (2, True, 8_748_609),    # the paper's count (BN after 18 convolutions)
])
def test_parameter_counts(channels, batch_norm, expected):
    assert _trainable(build_unet2d((200, 200, channels), batch_norm=batch_norm)) == expected


def test_batchnorm_moving_statistics_are_non_trainable():
    assert build_unet2d((200, 200, 2), batch_norm=True).count_params() == 8_755_009


def test_softmax_head_adds_65_parameters():
    assert _trainable(build_unet2d((200, 200, 2), head="softmax2")) == 8_742_274


def test_parameter_count_does_not_depend_on_input_size():
    assert _trainable(build_unet2d((180, 180, 1))) == 8_740_609


def test_output_shape_equals_input_shape():
    model = build_unet2d((200, 200, 2))
    y = model.predict_on_batch(np.zeros((2, 200, 200, 2), np.float32))
    assert y.shape == (2, 200, 200, 1)
    assert ((y >= 0) & (y <= 1)).all()


def test_crop_rule_and_decoder_sizes():
    assert _crop_amounts(25, 24) == (0, 1)
    assert _crop_amounts(50, 48) == (1, 1)
    assert _crop_amounts(100, 96) == (2, 2)
    assert _crop_amounts(200, 192) == (4, 4)
    model = build_unet2d((200, 200, 2))
    assert model.get_layer("dec4_crop").output.shape[1:3] == (24, 24)
    assert model.get_layer("dec1_conv2").output.shape[1:3] == (192, 192)
    assert model.get_layer("enc4_conv2").kernel.shape == (4, 4, 256, 256)
    assert model.get_layer("enc1_conv1").kernel.shape == (5, 5, 2, 64)


def test_outer_ring_depends_only_on_head_bias():
    """Spec §5 quirk: the final zero-pad makes the 4-pixel ring constant = sigmoid(head bias)."""
    model = build_unet2d((200, 200, 1))
    x = np.random.default_rng(0).normal(size=(1, 200, 200, 1)).astype(np.float32)
    y = model.predict_on_batch(x)[0, ..., 0]
    bias = float(model.get_layer("head").bias.numpy()[0])
    ring = np.concatenate([y[:4].ravel(), y[-4:].ravel(), y[:, :4].ravel(), y[:, -4:].ravel()])
    np.testing.assert_allclose(ring, 1 / (1 + np.exp(-bias)), atol=1e-6)
    assert np.ptp(y[4:-4, 4:-4]) > 0  # the interior does depend on the input


def test_concatenation_order_is_upsampled_then_skip():
    model = build_unet2d((200, 200, 2))
    concat = model.get_layer("dec4_concat")
    names = [t._keras_history[0].name for t in concat._inbound_nodes[0].input_tensors]
    assert names == ["dec4_up", "dec4_crop"]


def test_layer_order_matches_released_keras2_models():
    """Released .h5 files load by layer order: the 19 convolutions must come in this order."""
    model = build_unet2d((200, 200, 2))
    convs = [l.name for l in model.layers if l.weights]
    assert convs == ([f"enc{i}_conv{j}" for i in range(1, 5) for j in (1, 2)]
                     + ["bottleneck_conv1", "bottleneck_conv2"]
                     + [f"dec{i}_conv{j}" for i in (4, 3, 2, 1) for j in (1, 2)] + ["head"])


def test_bad_head_rejected():
    with pytest.raises(ValueError):
        build_unet2d((200, 200, 2), head="softmax3")


def test_released_keras2_weight_layout_converts_into_the_unet(tmp_path):
    """Spec §14/§15: the authors' Keras 2 .h5 files load by layer order and every weight is
    consumed. The file is written here in the Keras 2 layout (layer_names / weight_names)."""
    import h5py
    import keras

    from zoo import weights

    model = build_unet2d((200, 200, 2))
    rng = np.random.default_rng(0)
    legacy, n_conv = [], 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if layer.weights:
            n_conv += 1
            name = f"conv2d_{n_conv}"
            arrays = [(f"{name}/kernel:0", rng.normal(size=layer.kernel.shape).astype("float32")),
                      (f"{name}/bias:0", rng.normal(size=layer.bias.shape).astype("float32"))]
        else:
            name, arrays = f"{layer.__class__.__name__.lower()}_{len(legacy)}", []
        legacy.append((name, arrays))
    assert n_conv == 19
    h5 = tmp_path / "0.h5"
    with h5py.File(h5, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n, _ in legacy])
        f.attrs["keras_version"] = b"2.0.8"
        f.attrs["backend"] = b"tensorflow"
        for name, arrays in legacy:
            g = f.create_group(name)
            g.attrs["weight_names"] = np.array([w.encode() for w, _ in arrays], dtype="S64")
            for wname, arr in arrays:
                g.create_dataset(wname, data=arr)
    digest = weights.convert_keras2_h5(model, h5, tmp_path / "member0.npz")
    fresh = build_unet2d((200, 200, 2))
    weights.load_weights(fresh, tmp_path / "member0.npz", sha256=digest)
    conv_layers = [l for l in fresh.layers if l.weights]
    for (name, arrays), layer in zip([x for x in legacy if x[1]], conv_layers):
        np.testing.assert_array_equal(layer.kernel.numpy(), arrays[0][1].astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(layer.bias.numpy(), arrays[1][1].astype(np.float16).astype(np.float32))
