"""The authors' MONAI spine network through the zoo (issue 15): the MONAI ``UNet`` state_dict
converter, the builder's ``padding="pytorch"`` graph and the ``fastmonai`` preprocessing
profile reproduce the reference (MONAI 1.6.1, torch 2.13 CPU, TorchIO 0.18.86) within 1e-4 in
probability, without torch, MONAI or a network.

Fixture ``tests/fixtures/spine_parity`` (made once by ``tools/make_spine_parity_fixture.py`` in a
throwaway environment): seed 1515 for :func:`zoo.converters.monai_unet.seeded_state_dict` (the
same random weights on both sides), MONAI's real state_dict keys and shapes, and the reference
foreground probabilities of (a) seeded noise of 16 x 32 x 48 voxels (the network alone) and (b)
Chu et al. case02 through fastMONAI's inference preprocessing (sub-volumes of the 16 x 400 x 400
network grid) with a strided sample of the reference network input.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from zoo.errors import ConversionError

FIXTURE = Path(__file__).parent / "fixtures" / "spine_parity"
TOL = 1e-4


@pytest.fixture(scope="module")
def fx():
    ref = np.load(FIXTURE / "reference.npz")
    return json.loads((FIXTURE / "fixture.json").read_text()), {k: ref[k] for k in ref.files}


def _softmax_fg(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e[..., 1] / e.sum(axis=-1)


def fastmonai_profile_card(n_members: int = 1):
    """The spine card with the ``fastmonai`` reference profile applied: fastMONAI's inference
    preprocessing (TorchIO grid resampling, sample std, odd voxel at the start) and the MONAI
    graph of the converted weights (PyTorch padding, precise instance norm). Integrator: the same keys as the card's
    ``profiles.fastmonai`` (``ModelCard.with_profile("fastmonai")``)."""
    from zoo import registry
    from zoo.card import ModelCard

    base = registry.card("spine_vertebrae")
    data = base.to_dict()
    data["preprocessing"]["steps"] = [
        {"step": "reorient", "codes": ["R", "A", "S"], "invertible": True},
        {"step": "resample", "spacing_mm": [4.4, 0.78, 0.78], "grid": "torchio", "invertible": True},
        {"step": "zscore", "region": "all", "ddof": 1, "invertible": True},
        {"step": "crop_pad", "size": [16, 400, 400], "pad_value": 0, "large_inputs": "crop", "odd": "start",
         "invertible": True},
    ]
    data["inference"].update(n_members=n_members, graph="monai")
    return ModelCard(data, base.source)


def test_expected_layout_is_monais_state_dict(fx):
    from zoo.converters.monai_unet import expected_layout

    record, _ = fx
    ours = [[k, list(shape)] for k, (_, shape) in expected_layout().items()]
    assert ours == record["state_dict"]  # key names, order and shapes of the real MONAI UNet


def test_network_parity_on_noise(fx):
    """The converted network alone: the 'pytorch' padding matches MONAI; Keras 'same' does not."""
    from zoo.architectures.resunet3d import build_resunet3d
    from zoo.converters.monai_unet import convert_state_dict, seeded_state_dict

    record, ref = fx
    state = seeded_state_dict(record["seed"])
    x = np.random.default_rng(record["seed"]).standard_normal(record["noise_shape"]).astype(np.float32)
    diffs = {}
    for padding in ("pytorch", "keras"):
        model = convert_state_dict(build_resunet3d((None, None, None, 1), padding=padding, norm="staged"), state)
        prob = _softmax_fg(np.asarray(model(x[None, ..., None], training=False), np.float64)[0])
        diffs[padding] = float(np.abs(prob - ref["noise_probability"]).max())
    assert diffs["pytorch"] <= TOL, diffs
    assert diffs["keras"] > 0.1, diffs  # the padding difference is real (measured 0.99)


def test_builder_graphs_share_weights_and_parameter_count():
    from zoo.architectures.resunet3d import build_resunet3d

    a = build_resunet3d((16, 32, 32, 1), padding="pytorch", norm="staged")
    b = build_resunet3d((16, 32, 32, 1))
    assert a.count_params() == b.count_params() == 4_806_481
    assert [v.path for v in a.weights] == [v.path for v in b.weights]
    assert a.output_shape == b.output_shape == (None, 16, 32, 32, 2)
    x = np.random.default_rng(0).standard_normal((1, 16, 32, 32, 16)).astype(np.float32) * 3 + 5
    staged = np.asarray(a.get_layer("down1_unit0_in")(x))
    group = np.asarray(b.get_layer("down1_unit0_in")(x))
    assert np.abs(staged - group).max() < 1e-4  # the same function on a small volume
    with pytest.raises(ValueError, match="padding"):
        build_resunet3d((16, 32, 32, 1), padding="same")
    with pytest.raises(ValueError, match="norm"):
        build_resunet3d((16, 32, 32, 1), norm="batch")


def input_rms_difference(x_strided: np.ndarray, ref, record: dict) -> float:
    """Root mean square difference between ``x_strided`` and the reference network input, from
    the fixture's random projections of that input (the fixture stores no image voxels: a copy
    of the shared scan must not be committed). With rows of unit expected norm,
    ``mean_k (R_k . d)^2`` estimates ``mean(d^2)`` (measured: 0.241 vs 0.246 for the zoo profile)."""
    cfg = record["input_projection"]
    v = np.asarray(x_strided, np.float64).ravel()
    rows = np.random.default_rng(cfg["seed"]).standard_normal((cfg["n"], v.size)) / np.sqrt(v.size)
    return float(np.sqrt(np.mean((rows @ v - ref["input_projection"]) ** 2)))


@pytest.mark.realdata
def test_predict_fastmonai_profile_matches_reference_on_chu_case(fx, shared_data):
    """End to end through the entry's ``predict``: case02 with the fastmonai profile and the
    converted seeded weights gives the reference network-grid probability within 1e-4."""
    from zoo.entries import spine_vertebrae as entry
    from zoo.converters.monai_unet import convert_state_dict, seeded_state_dict
    from zoo.io import read_volume
    from zoo.model import ZooModel

    record, ref = fx
    image = shared_data / record["image"]
    if not image.is_file():
        pytest.skip(f"{image} not available")
    card = fastmonai_profile_card()
    models = entry.build_members(card, "t2")
    convert_state_dict(models[0], seeded_state_dict(record["seed"]))
    model = ZooModel(card, "t2", models, entry, None)
    vol = read_volume(image)

    x, state = entry.pipeline(card).apply(vol)
    assert tuple(state.resampling.out_shape) == tuple(record["resampled_shape"])
    assert input_rms_difference(x[:, ::record["stride"], ::record["stride"]], ref, record) <= 1e-5

    pred = entry.predict(model, {"t2": vol})
    prob = pred.network_grid["probability"]
    assert prob.shape == tuple(record["size"])
    s = record["stride"]
    block = tuple(slice(a, b) for a, b in record["block"])
    d_strided = np.abs(prob[:, ::s, ::s] - ref["probability_strided"]).max()
    d_block = np.abs(prob[block] - ref["probability_block"]).max()
    assert max(d_strided, d_block) <= TOL, (d_strided, d_block)
    assert pred.images["vertebral_bodies_probability"].shape == vol.shape


@pytest.mark.realdata
def test_zoo_profile_feeds_the_network_another_input(fx, shared_data):
    """The zoo's own profile differs from fastMONAI's (grid, odd voxel, std): so the profile
    matters for the upstream weights (measured max |input diff| 2.7 on case02)."""
    from zoo import registry
    from zoo.entries import spine_vertebrae as entry
    from zoo.io import read_volume

    record, ref = fx
    image = shared_data / record["image"]
    if not image.is_file():
        pytest.skip(f"{image} not available")
    x, _ = entry.pipeline(registry.card("spine_vertebrae")).apply(read_volume(image))
    s = record["stride"]
    assert input_rms_difference(x[:, ::s, ::s], ref, record) > 0.1  # measured 0.24 (max |diff| 2.7)


def test_wrong_shape_names_key_layer_and_shapes():
    from zoo.architectures.resunet3d import build_resunet3d
    from zoo.converters.monai_unet import convert_state_dict, seeded_state_dict

    model = build_resunet3d((16, 32, 32, 1), padding="pytorch")
    before = [np.array(v.numpy()) for v in model.weights]
    state = seeded_state_dict(0)
    key = "model.1.submodule.0.conv.unit1.conv.weight"
    state[key] = np.zeros((32, 16, 3, 3, 3), np.float32)
    with pytest.raises(ConversionError) as exc:
        convert_state_dict(model, state)
    msg = str(exc.value)
    assert key in msg and "down2_conv1" in msg and "(32, 16, 3, 3, 3)" in msg and "(32, 32, 3, 3, 3)" in msg
    # nothing assigned
    assert all(np.array_equal(a, np.asarray(v.numpy())) for a, v in zip(before, model.weights))


def test_missing_and_unexpected_keys_name_the_layer():
    from zoo.architectures.resunet3d import build_resunet3d
    from zoo.converters.monai_unet import convert_state_dict, seeded_state_dict

    model = build_resunet3d((16, 32, 32, 1), padding="pytorch")
    state = seeded_state_dict(0)
    del state["model.2.0.adn.A.weight"]
    with pytest.raises(ConversionError, match=r"model\.2\.0\.adn\.A\.weight.*up1_up_prelu"):
        convert_state_dict(model, state)
    state = seeded_state_dict(0)
    state["model.3.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ConversionError, match=r"unexpected.*model\.3\.weight"):
        convert_state_dict(model, state)
    # a DataParallel-style prefix is accepted
    state = {f"module.{k}": v for k, v in seeded_state_dict(0).items()}
    convert_state_dict(model, state)


def test_convert_files_all_or_nothing(tmp_path):
    """A bad member leaves the output folder empty; a good set is stored float32, exactly."""
    from zoo.architectures.resunet3d import build_resunet3d
    from zoo.converters import convert_files
    from zoo.converters.monai_unet import seeded_state_dict
    from zoo.weights import load_weights

    bad = seeded_state_dict(4)
    bad["model.0.residual.bias"] = np.zeros(15, np.float32)
    out = tmp_path / "out"

    def build():
        return build_resunet3d((16, 32, 32, 1), padding="pytorch", norm="staged")

    with pytest.raises(ConversionError, match=r"model\.0\.residual\.bias.*down1_residual"):
        convert_files("monai_unet", build, [seeded_state_dict(3), bad], out)
    assert not any(out.iterdir())
    records = convert_files("monai_unet", build, [seeded_state_dict(3)], out)
    assert records[0]["file"] == "member0.npz" and len(records[0]["sha256"]) == 64
    model = build()
    meta = load_weights(model, out / "member0.npz", sha256=records[0]["sha256"])
    assert meta["storage"] == "float32"
    kernel = np.transpose(seeded_state_dict(3)["model.0.conv.unit0.conv.weight"], (2, 3, 4, 1, 0))
    assert np.array_equal(model.get_layer("down1_conv0").kernel.numpy(), kernel)


def test_safetensors_file_is_read_without_torch(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    from zoo.converters.monai_unet import read_state_dict, seeded_state_dict

    state = seeded_state_dict(5)
    f = tmp_path / "0.safetensors"
    safetensors_numpy.save_file(state, str(f))
    back = read_state_dict(f)
    assert sorted(back) == sorted(state) and all(np.array_equal(back[k], state[k]) for k in state)
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ConversionError, match="bad.safetensors"):
        read_state_dict(tmp_path / "bad.safetensors")


def test_pt_file_without_torch_is_a_typed_error(tmp_path, monkeypatch):
    import builtins

    from zoo.converters.monai_unet import read_state_dict

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    f = tmp_path / "0.pt"
    f.write_bytes(b"not a torch file")
    with pytest.raises(ConversionError, match="needs torch"):
        read_state_dict(f)
    with pytest.raises(ConversionError, match="not found"):
        read_state_dict(tmp_path / "missing.pt")
    pkl = tmp_path / "0_learner.pkl"
    pkl.write_bytes(b"\x80\x04never unpickled")
    with pytest.raises(ConversionError, match=r"never unpickles.*torch\.save\(learn\.model\.state_dict\(\), '0\.pt'\)"):
        read_state_dict(pkl)


def test_torchio_resampling_matches_measured_torchio_values():
    """TorchIO 0.18.86 ``Resample((0.3, 1, 1))`` of a uint8 ramp [0, 3, 10, 255] at 1 mm gave
    [0 0 0 1 2 4 6 8 22 95 169 242 255 0] (uint8) with origin -0.35 mm (measured once in the
    throwaway environment): ceil(4 / 0.3) = 14 voxels, first edge kept, linear values truncated,
    the last voxel beyond the field of view gets the image minimum."""
    from zoo.preprocessing.resampling import TorchioResampling

    ramp = np.array([0, 3, 10, 255], np.uint8).reshape(4, 1, 1)
    res = TorchioResampling((4, 1, 1), (1.0, 1.0, 1.0), (0.3, 1.0, 1.0))
    out = res.forward(ramp, dtype=ramp.dtype)
    assert out.dtype == np.uint8 and res.out_shape == (14, 1, 1)
    assert out[:, 0, 0].tolist() == [0, 0, 0, 1, 2, 4, 6, 8, 22, 95, 169, 242, 255, 0]
    assert np.isclose(res.out_affine(np.eye(4))[0, 3], -0.35)
    assert TorchioResampling.needed((1.0, 1.0, 1.0), (0.3, 1.0, 1.0))
    assert not TorchioResampling.needed((0.78, 0.78, 4.4), (0.78, 0.78, 4.4))


def test_crop_pad_odd_voxel_side():
    """TorchIO 0.18.86 CropOrPad (measured): 7 -> 10 pads 2 before and 1 after; 11 -> 8 drops 2
    voxels at the start and 1 at the end. The zoo's default keeps the odd voxel at the end."""
    from zoo.preprocessing.cropping import CenterCropPadND

    seven = np.arange(1, 8, dtype=np.float32)
    eleven = np.arange(1, 12, dtype=np.float32)
    assert CenterCropPadND((7,), (10,), odd="start").forward(seven).tolist() == [0, 0, 1, 2, 3, 4, 5, 6, 7, 0]
    assert CenterCropPadND((11,), (8,), odd="start").forward(eleven)[0] == 3
    assert CenterCropPadND((7,), (10,)).forward(seven).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 0, 0]
    assert CenterCropPadND((11,), (8,)).forward(eleven)[0] == 2
    crop = CenterCropPadND((11,), (8,), odd="start")
    assert crop.inverse(crop.forward(eleven)).tolist() == [0, 0, *range(3, 11), 0]


def test_unknown_graph_is_a_card_error():
    from zoo.entries import spine_vertebrae as entry
    from zoo.errors import CardError

    card = fastmonai_profile_card()
    card.data["inference"]["graph"] = "torch"
    with pytest.raises(CardError, match="graph 'torch'"):
        entry.build_member(card, "t2", 0)
