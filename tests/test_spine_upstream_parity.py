"""The authors' MONAI spine network through the zoo (issue 15): the MONAI ``UNet`` state_dict
converter, the builder's ``padding="pytorch"`` graph and the ``fastmonai`` preprocessing
profile reproduce the reference (MONAI 1.6.1, torch 2.13 CPU, TorchIO 0.18.86) within 1e-4 in
probability, without torch, MONAI or a network; and the ``spine_vertebrae`` upstream preset
(``zoo fetch spine_vertebrae --upstream --from-dir``, ``zoo.load(..., weights="upstream")``) gets
there end to end from extracted ``.npz`` state_dicts.

Fixture ``tests/fixtures/spine_parity`` (made once by ``tools/make_spine_parity_fixture.py`` in a
throwaway environment): seed 1515 for :func:`zoo.converters.monai_unet.seeded_state_dict` (the
same random weights on both sides), MONAI's real state_dict keys and shapes, and the reference
foreground probabilities of (a) seeded noise of 16 x 32 x 48 voxels (the network alone) and (b)
Chu et al. case02 through fastMONAI's inference preprocessing (sub-volumes of the 16 x 400 x 400
network grid) with random projections of the reference network input.
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


def write_extracted_folder(folder: Path, seeds: list[int], suffixes: list[str] | None = None) -> Path:
    """The three state_dicts as a user's one-off extraction leaves them (the card's
    ``how_to_offline``): ``{i}.npz`` = ``np.savez`` of the arrays keyed by MONAI names (here the
    seeded weights, :func:`seeded_state_dict`), or ``.safetensors`` where asked."""
    from zoo.converters.monai_unet import seeded_state_dict

    folder.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds):
        state = seeded_state_dict(seed)
        suffix = (suffixes or [".npz"] * len(seeds))[i]
        if suffix == ".npz":
            np.savez(folder / f"{i}.npz", **state)
        else:
            import safetensors.numpy

            safetensors.numpy.save_file(state, str(folder / f"{i}{suffix}"))
    return folder


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
def test_upstream_preset_end_to_end_matches_reference_on_chu_case(fx, shared_data, tmp_path, capsys):
    """The preset as a user runs it: ``zoo fetch spine_vertebrae --upstream --from-dir`` of the
    extracted ``.npz`` state_dicts (the seeded weights of the fixture), then
    ``zoo.load("spine_vertebrae", weights="upstream")`` (the card's fastmonai profile and the
    MONAI graph, chosen by the card) and ``predict`` on case02: the network-grid probability
    equals the reference (MONAI + TorchIO) within 1e-4. All three members hold the fixture's
    weights, so the logit-mean ensemble must give the single reference network's probability."""
    import zoo
    from zoo import cli
    from zoo.entries import spine_vertebrae as entry
    from zoo.io import read_volume

    record, ref = fx
    image = shared_data / record["image"]
    if not image.is_file():
        pytest.skip(f"{image} not available")
    folder = write_extracted_folder(tmp_path / "extracted", [record["seed"]] * 3)
    assert cli.main(["fetch", "spine_vertebrae", "--upstream", "--from-dir", str(folder)]) == 0
    assert capsys.readouterr().out.count("recorded sha256") == 3

    model = zoo.load("spine_vertebrae", weights="upstream")
    assert model.card.profile == "fastmonai" and model.card["inference"]["graph"] == "monai"
    assert len(model.models) == 3
    assert any(type(layer).__name__ == "ZeroPadding3D" for layer in model.models[0].layers)  # PyTorch padding
    vol = read_volume(image)

    x, state = entry.pipeline(model.card).apply(vol)
    assert tuple(state.resampling.out_shape) == tuple(record["resampled_shape"])
    assert input_rms_difference(x[:, ::record["stride"], ::record["stride"]], ref, record) <= 1e-5

    pred = model.predict({"t2": vol})
    prob = pred.network_grid["probability"]
    assert prob.shape == tuple(record["size"])
    s = record["stride"]
    block = tuple(slice(a, b) for a, b in record["block"])
    d_strided = np.abs(prob[:, ::s, ::s] - ref["probability_strided"]).max()
    d_block = np.abs(prob[block] - ref["probability_block"]).max()
    print(f"spine upstream preset: max |prob diff| strided {d_strided:.3g}, block {d_block:.3g}")
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
    with pytest.raises(ConversionError, match=r"never unpickles.*load_learner\('0_learner\.pkl', cpu=True\).*"
                                              r"np\.savez\('0\.npz', \*\*\{k: v\.numpy\(\) for k, v in "
                                              r"learn\.model\.state_dict\(\)\.items\(\)\}\)"):
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
    from zoo import registry
    from zoo.entries import spine_vertebrae as entry
    from zoo.errors import CardError

    card = registry.card("spine_vertebrae").with_profile("fastmonai")
    card.data["inference"]["graph"] = "torch"
    with pytest.raises(CardError, match="graph 'torch'"):
        entry.build_member(card, "t2", 0)


# --- the spine_vertebrae upstream preset: fetch, digests, refusals, profile pairing ---------------
def test_fetch_from_dir_converts_every_member_with_the_monai_graph(tmp_path, capsys, monkeypatch):
    """``zoo fetch spine_vertebrae --upstream --from-dir`` of extracted ``.npz`` state_dicts:
    each member is converted exactly (float32) in member order, built with the MONAI graph of
    the fastmonai profile; the recorded digest is that of the state_dict's arrays, so the same
    weights in another container are accepted and other weights refused."""
    import json

    import zoo
    from zoo import cli, errors, presets, weights
    from zoo.converters.monai_unet import seeded_state_dict, source_digest
    from zoo.entries import spine_vertebrae as entry

    graphs = []
    real_build = entry.build_member

    def spy(card, variant, member, *args, **kwargs):
        graphs.append(card["inference"].get("graph"))
        return real_build(card, variant, member, *args, **kwargs)

    monkeypatch.setattr(entry, "build_member", spy)
    folder = write_extracted_folder(tmp_path / "extracted", [21, 22, 23])
    assert cli.main(["fetch", "spine_vertebrae", "--upstream", "--from-dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert graphs == ["monai"] * 3
    digests = [source_digest(folder / f"{i}.npz") for i in range(3)]
    assert len(set(digests)) == 3 and all(f"recorded sha256 {d} for {i}_learner" in out for i, d in enumerate(digests))
    records = json.loads((weights.zoo_home() / "upstream" / "sha256.json").read_text())
    url0 = "https://huggingface.co/skaliy/spine-segmentation/resolve/main/0_learner.pkl"
    assert records[url0 + "#content"]["sha256"] == digests[0] and url0 not in records

    converted = presets.converted_dir("spine_vertebrae", "t2")
    for i, seed in enumerate((21, 22, 23)):
        with np.load(converted / f"member{i}.npz") as npz:
            kernel = next(npz[k] for k in npz.files if k.endswith("down1_conv0/kernel"))
        assert kernel.dtype == np.float32
        assert np.array_equal(kernel, np.transpose(seeded_state_dict(seed)["model.0.conv.unit0.conv.weight"],
                                                   (2, 3, 4, 1, 0)))

    # the same weights saved again (other bytes: np.savez stamps the time) -> same content digest, reused
    again = tmp_path / "again"
    again.mkdir()
    for i, seed in enumerate((21, 22, 23)):
        state = seeded_state_dict(seed)
        np.savez(again / f"{i}.npz", **dict(reversed(list(state.items()))))  # other order, other bytes
    assert (again / "0.npz").read_bytes() != (folder / "0.npz").read_bytes()
    before = (converted / presets.MANIFEST).stat().st_mtime_ns
    presets.fetch("spine_vertebrae", "t2", source=again)
    assert (converted / presets.MANIFEST).stat().st_mtime_ns == before  # nothing converted again

    # other weights for member 1 are refused; the conversion in the cache stays as it was
    np.savez(again / "1.npz", **seeded_state_dict(99))
    with pytest.raises(errors.UpstreamHashChangedError, match=r"1\.npz.*state_dict's arrays.*1_learner"):
        presets.fetch("spine_vertebrae", "t2", source=again)
    assert presets.manifest_checksums(converted, 3) == [
        m["sha256"] for m in json.loads((converted / presets.MANIFEST).read_text())["members"]]
    assert zoo.card("spine_vertebrae").variant("t2")["upstream"]["profiles"] == ["fastmonai"]


def test_safetensors_extraction_has_the_same_digest_as_the_npz(tmp_path, capsys):
    """``zoo fetch --from-dir`` also takes ``{i}.safetensors`` (optional extra); the digest
    recorded is the content's, so the .npz of the same weights is then accepted as it is."""
    pytest.importorskip("safetensors.numpy")
    from zoo import cli, presets
    from zoo.converters.monai_unet import source_digest

    st = write_extracted_folder(tmp_path / "st", [31, 32, 33], [".safetensors"] * 3)
    assert cli.main(["fetch", "spine_vertebrae", "--upstream", "--from-dir", str(st)]) == 0
    npz = write_extracted_folder(tmp_path / "npz", [31, 32, 33])
    assert source_digest(st / "0.safetensors") == source_digest(npz / "0.npz")
    paths, _ = presets.fetch("spine_vertebrae", "t2", source=npz)
    assert [p.name for p in paths] == ["member0.npz", "member1.npz", "member2.npz"]


def test_online_fetch_refuses_with_the_extraction_commands(server, capsys):
    """Without --from-dir the zoo neither downloads nor unpickles the learners: a typed error
    with the exact commands; no request reaches the server."""
    import zoo
    from zoo import cli, errors, presets

    code = cli.main(["fetch", "spine_vertebrae", "--upstream", "--mirror", server.url])
    err = capsys.readouterr().err
    assert code == 1 and server.requests == []
    for needle in ("huggingface-cli download skaliy/spine-segmentation 0_learner.pkl 1_learner.pkl "
                   "2_learner.pkl --revision main",
                   "load_learner('2_learner.pkl', cpu=True)",
                   "np.savez('2.npz', **{k: v.numpy() for k, v in learn.model.state_dict().items()})",
                   "zoo fetch spine_vertebrae --upstream --from-dir"):
        assert needle in " ".join(err.split()), needle
    with pytest.raises(errors.UpstreamExtractionRequiredError, match="never downloads or unpickles"):
        presets.fetch("spine_vertebrae")
    with pytest.raises(errors.UpstreamExtractionRequiredError):
        zoo.load("spine_vertebrae", weights="upstream")


def test_learner_pickles_in_from_dir_are_refused_before_anything_is_recorded(tmp_path):
    from zoo import presets, weights

    folder = tmp_path / "learners"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}_learner.pkl").write_bytes(b"\x80\x04never unpickled")
    with pytest.raises(ConversionError, match=r"0_learner\.pkl.*never unpickles.*np\.savez\('0\.npz'"):
        presets.fetch("spine_vertebrae", "t2", source=folder)
    assert not (weights.zoo_home() / "upstream" / "sha256.json").exists()
    assert not presets.converted_dir("spine_vertebrae", "t2").exists()


def test_zoo_npz_given_as_a_state_dict_is_a_typed_error(tmp_path):
    from zoo.converters.monai_unet import read_state_dict
    from zoo.weights import META_KEY

    f = tmp_path / "0.npz"
    np.savez(f, **{"a/kernel": np.zeros(3, np.float32), META_KEY: np.zeros(2, np.uint8)})
    with pytest.raises(ConversionError, match="already converted"):
        read_state_dict(f)
    (tmp_path / "1.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ConversionError, match=r"1\.npz: not a readable \.npz"):
        read_state_dict(tmp_path / "1.npz")


def test_weights_and_profiles_must_belong_together():
    """The card pairs the zoo's weights with the zoo profile and the authors' with fastmonai;
    any other pairing is a typed error before anything is built or fetched."""
    import zoo
    from zoo.errors import ProfileMismatchError

    with pytest.raises(ProfileMismatchError, match="profile 'fastmonai' does not belong to the card weights"):
        zoo.load("spine_vertebrae", profile="fastmonai")
    with pytest.raises(ProfileMismatchError, match="profile 'zoo' does not belong to the upstream weights"):
        zoo.load("spine_vertebrae", weights="upstream", profile="zoo")


def test_default_weights_keep_the_card_sections_and_the_zoo_graph():
    """The zoo's own weights load as before the profiles existed: no profile applied (the
    card's sections unchanged) and the Keras-padded zoo graph. (Measured once: the shipped
    ensemble's probability on the cropped case02 is bit-identical before and after this change.)"""
    import zoo
    from zoo import registry

    model = zoo.load("spine_vertebrae")
    card = registry.card("spine_vertebrae")
    assert model.card.profile is None
    for section in ("preprocessing", "inference", "postprocessing"):
        assert model.card[section] == card[section]
    assert "graph" not in model.card["inference"]
    assert not any(type(layer).__name__ == "ZeroPadding3D" for layer in model.models[0].layers)
    assert [p.rsplit("/", 3)[-3:] for p in model.weights_source] == [
        ["spine_vertebrae", "t2", f"member{i}.npz"] for i in range(3)]
