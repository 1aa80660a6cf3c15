"""skull_stripping: architecture, head-anchored window and its inverse, post-processing, loss,
grouped folds, the heads adapter, bad inputs and chaining (fast; real heads where marked)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from zoo import errors, registry
from zoo.io import Volume
from zoo.preprocessing.cropping import AnchoredCropPadND, CenterCropPadND


def _volume(array, affine=None, source="test.nii.gz"):
    affine = np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else np.asarray(affine, float)
    img = nib.Nifti1Image(np.asarray(array), affine)
    return Volume(np.asarray(array), img.affine.copy(), img.header.copy(), source=source)


def _head(shape=(60, 70, 50), centre=(30, 33, 20), radius=(20, 24, 18), value=100.0):
    """An ellipsoidal 'head' (bright shell) with a darker 'brain' inside, on a 0 background."""
    grid = np.indices(shape).astype(float)
    r = np.sqrt(sum(((g - c) / rr) ** 2 for g, c, rr in zip(grid, centre, radius)))
    noise = np.random.default_rng(0).normal(0.0, 5.0, shape)
    arr = np.where(r <= 1.0, value + noise, 0.0) + np.where(r <= 0.8, -40.0, 0.0)
    return arr.astype(np.float32), r <= 0.8


# --- architecture ---------------------------------------------------------------------------
def test_parameter_count_and_anisotropic_strides():
    card = registry.card("skull_stripping")
    from zoo.entries import skull_stripping as entry

    net = entry.build_member(card, "head", 0)
    assert net.count_params() == card["model_details"]["parameters"]["head"] == 4_806_481
    assert net.input_shape == (None, 160, 160, 92, 1)
    assert net.output_shape == (None, 160, 160, 92, 2)
    assert sum("dropout" in layer.name for layer in net.layers) > 0  # Table 1: dropout 0.5
    small = entry.build_member(card, "head", 0, patch_size=(32, 32, 8))
    out = np.asarray(small(np.zeros((1, 32, 32, 8, 1), np.float32), training=False))
    assert out.shape == (1, 32, 32, 8, 2) and np.all(np.isfinite(out))


def test_resunet3d_rejects_sizes_not_divisible_per_axis():
    from zoo.architectures.resunet3d import build_resunet3d

    strides = [(2, 2, 2), (2, 2, 2), (2, 2, 1), (2, 2, 1)]
    build_resunet3d((32, 32, 4, 1), strides=strides)
    with pytest.raises(ValueError):
        build_resunet3d((32, 32, 6, 1), strides=strides)  # 6 is not divisible by 4 along z


# --- geometry -----------------------------------------------------------------------------------
@pytest.mark.parametrize("start", [(-3, 2, 0), (4, -5, 7), (0, 0, -10)])
def test_anchored_crop_pad_inverse(start):
    in_size, size = (12, 9, 20), (8, 14, 16)
    a = np.arange(np.prod(in_size), dtype=np.float32).reshape(in_size) + 1
    c = AnchoredCropPadND(in_size, size, start=start)
    out = c.forward(a, pad_value=0)
    assert out.shape == size
    # output voxel (i, j, k) is input voxel start + (i, j, k) where that exists
    for idx in [(0, 0, 0), (5, 7, 3), (7, 13, 15)]:
        src = tuple(s + i for s, i in zip(start, idx))
        expect = a[src] if all(0 <= v < n for v, n in zip(src, in_size)) else 0
        assert out[idx] == expect
    back = c.inverse(out, fill_value=-1)
    kept = back != -1
    np.testing.assert_array_equal(back[kept], a[kept])


def test_anchored_crop_pad_none_start_is_centred():
    in_size, size = (12, 9, 20), (8, 14, 16)
    a = np.random.default_rng(0).random(in_size).astype(np.float32)
    np.testing.assert_array_equal(AnchoredCropPadND(in_size, size, start=(None, None, None)).forward(a),
                                  CenterCropPadND(in_size, size).forward(a))


def test_window_sits_on_the_head_and_round_trips():
    """Top of the window 4 voxels above the vertex, centred in-plane; invert returns the input
    grid exactly (shape) and maps a network-grid mask back onto the head."""
    from zoo.preprocessing.volume_pipeline import VolumePipeline

    steps = [{"step": "reorient", "codes": ["R", "A", "S"]},
             {"step": "zscore", "region": "head"},
             {"step": "crop_pad", "size": [32, 32, 16], "pad_value": 0, "large_inputs": "crop",
              "anchor": "head_top", "margin_vox": 4}]
    arr, _ = _head()
    vol = _volume(arr)
    pipe = VolumePipeline(steps)
    x, state = pipe.apply(vol)
    assert x.shape == (32, 32, 16)
    top = 20 + 18  # vertex at k = 38
    assert state.crop.start[2] == top + 4 + 1 - 16
    # the in-plane window is centred on the head's bounding box
    assert abs(state.crop.start[0] + 16 - 30.5) <= 1 and abs(state.crop.start[1] + 16 - 33.5) <= 1
    # z-score over the head: the head's voxels have mean 0 in the window's complete rows
    head = pipe.apply_label((arr > 0).astype(np.uint8), state) > 0
    assert abs(float(x[head].mean())) < 0.2
    back = pipe.invert(np.ones(x.shape, np.float32), state, order=0)
    assert back.shape == arr.shape
    assert back[30, 33, top] == 1 and back[30, 33, top - 20] == 0  # below the window: 0


def test_no_head_is_a_typed_error():
    from zoo.preprocessing.volume_pipeline import VolumePipeline

    card = registry.card("skull_stripping")
    pipe = VolumePipeline(card["preprocessing"]["steps"])
    with pytest.raises(errors.NoHeadError):
        pipe.head_start(np.zeros((4, 4, 4), bool), _volume(np.zeros((4, 4, 4))))


def test_head_top_needs_s_axis_and_crop():
    from zoo.preprocessing.volume_pipeline import VolumePipeline

    with pytest.raises(errors.CardError):
        VolumePipeline([{"step": "crop_pad", "size": [8, 8, 8], "anchor": "head_top", "large_inputs": "crop"}])
    with pytest.raises(errors.CardError):
        VolumePipeline([{"step": "reorient", "codes": ["R", "A", "S"]},
                        {"step": "crop_pad", "size": [8, 8, 8], "anchor": "head_top"}])


# --- post-processing and prediction -------------------------------------------------------------
def test_clean_mask_keeps_largest_component_and_fills_holes():
    from zoo.entries.skull_stripping import clean_mask

    prob = np.zeros((20, 20, 20), np.float32)
    prob[2:12, 2:12, 2:12] = 0.9
    prob[6, 6, 6] = 0.1  # a hole
    prob[16:18, 16:18, 16:18] = 0.9  # a second, smaller component
    mask = clean_mask(prob, 0.5)
    assert mask[6, 6, 6] and not mask[17, 17, 17]
    assert mask.sum() == 1000
    assert not clean_mask(np.zeros((5, 5, 5)), 0.5).any()


def test_predict_outputs_on_input_grid_and_empty_mask_is_an_error(monkeypatch):
    """Untrained network (geometry only): outputs on the input's shape, affine and header,
    `brain` is the masked input; a network that finds no brain raises NoHeadError."""
    import zoo
    from zoo.entries import skull_stripping as entry

    arr, inner = _head(shape=(50, 60, 40), centre=(25, 30, 18), radius=(18, 22, 15))
    aff = np.array([[-1.2, 0, 0, 30], [0, 1.1, 0, -20], [0, 0, 2.5, 10], [0, 0, 0, 1]])
    model = zoo.load("skull_stripping", weights=None)
    net_shape = tuple(model.card.variant("head")["architecture"]["input_shape"][:3])

    def fake_prob(m, x):
        assert x.shape == net_shape
        return (x > -0.5).astype(np.float32) * 0.9  # "brain" = the z-scored head

    monkeypatch.setattr(entry, "network_probability", fake_prob)
    pred = model.predict((arr, aff))
    for name in ("brain_mask", "brain_probability", "brain"):
        img = pred.images[name]
        assert img.shape == arr.shape
        np.testing.assert_allclose(img.affine, aff, atol=1e-5)
    mask = np.asarray(pred.images["brain_mask"].dataobj)
    assert mask.dtype == np.uint8 and mask.any()
    brain = np.asarray(pred.images["brain"].dataobj)
    np.testing.assert_array_equal(brain[mask == 0], 0)
    np.testing.assert_array_equal(brain[mask == 1], arr[mask == 1])
    assert pred.volumes_ml["brain"] == pytest.approx(mask.sum() * 1.2 * 1.1 * 2.5 / 1000, rel=1e-6)
    assert any("brain_volume_implausible" in f for f in pred.qc["flags"])  # a 30 mL toy head

    monkeypatch.setattr(entry, "network_probability", lambda m, x: np.zeros(x.shape, np.float32))
    with pytest.raises(errors.NoHeadError):
        model.predict((arr, aff))


def test_2d_image_is_a_typed_error():
    import zoo

    model = zoo.load("skull_stripping", weights=None)
    with pytest.raises(errors.DimensionError):
        model.predict((np.ones((20, 20), np.float32), np.eye(4)))


# --- training pieces ----------------------------------------------------------------------------
def test_soft_jaccard_loss():
    from zoo.training.losses import SoftJaccardLoss

    g = np.zeros((2, 4, 4, 4, 1), np.float32)
    g[:, :2] = 1
    perfect = np.concatenate([np.where(g > 0, -20.0, 20.0), np.where(g > 0, 20.0, -20.0)], axis=-1)
    assert float(SoftJaccardLoss()(g, perfect)) == pytest.approx(0.0, abs=1e-6)
    # half the brain predicted with certainty: J = 0.5
    half = perfect.copy()
    half[:, 1, ..., 0], half[:, 1, ..., 1] = 20.0, -20.0
    assert float(SoftJaccardLoss()(g, half)) == pytest.approx(0.5, abs=1e-4)


def test_stripped_twins_are_the_head_stripped_by_its_label_and_drawn_at_their_rate(tmp_path):
    """Recipe data.stripped_input_probability: build_volumes adds each head's stripped twin
    (input zeroed outside the label, then the card's own z-score and window), and the sampler
    draws twins at about the asked rate (never at 0, always at 1)."""
    from zoo.training.tasks import segmentation3d as task
    from zoo.training.datasets import Subject

    arr, inner = _head(shape=(60, 70, 50), centre=(30, 33, 20), radius=(20, 24, 18))
    aff = np.diag([1.5, 1.5, 2.0, 1.0])
    nib.save(nib.Nifti1Image(arr, aff), tmp_path / "image.nii.gz")
    nib.save(nib.Nifti1Image(inner.astype(np.uint8), aff), tmp_path / "brain_mask.nii.gz")
    subject = Subject("h", {"image": tmp_path / "image.nii.gz"}, tmp_path / "brain_mask.nii.gz")
    card = registry.card("skull_stripping")
    vols = task.build_volumes([subject], card, "head", stripped_twins=True)
    (timg,), (tlab,) = vols.twins
    assert timg.shape == vols.images[0].shape == (160, 160, 92)
    assert tlab.sum() == vols.labels[0].sum() == inner.sum()  # 1.5 x 1.5 x 2 mm: the grid is kept
    def stripped(x, y):  # outside the brain only the z-scored 0 and the window's pad value 0
        return np.unique(np.round(x[y == 0], 5)).size <= 2

    assert stripped(timg, tlab) and not stripped(vols.images[0], vols.labels[0])
    inside = timg[tlab == 1]
    assert abs(float(inside.mean())) < 0.2  # z-scored over the stripped head, i.e. the brain
    assert not np.allclose(timg, vols.images[0])
    assert task.build_volumes([subject], card, "head").twins is None

    def twin_share(p, n=40):
        ds = task.make_dataset(vols, (160, 160, 92), 1, 0, foreground_fraction=1.0, augmentation=None,
                               stripped_probability=p)
        return np.mean([float(stripped(x.numpy()[0], y.numpy()[0])) for x, y in ds.take(n)])

    assert twin_share(0.0) == 0.0 and twin_share(1.0) == 1.0
    assert 0.1 < twin_share(0.5) < 0.9
    with pytest.raises(ValueError):
        task.make_dataset(task.build_volumes([subject], card, "head"), (160, 160, 92), 1, 0,
                          foreground_fraction=1.0, augmentation=None, stripped_probability=0.5)


def test_kfold_grouped_keeps_a_person_in_one_fold():
    from zoo.training.datasets import Subject, kfold_grouped

    subjects = [Subject(id=f"p{p}_{c}", images={"image": "x"}, site="s",
                        meta={"subject": f"p{p}", "contrast": c})
                for p in range(7) for c in ("T1w", "FLAIR")]
    folds = kfold_grouped(subjects, 5, seed=0)
    assert len(folds) == 5
    seen = []
    for train, val in folds:
        assert not {s.meta["subject"] for s in train} & {s.meta["subject"] for s in val}
        seen += [s.id for s in val]
    assert sorted(seen) == sorted(s.id for s in subjects)
    assert folds == kfold_grouped(subjects, 5, seed=0)
    with pytest.raises(ValueError):
        kfold_grouped([Subject(id="a", images={"image": "x"})], 2)


@pytest.mark.realdata
def test_heads_adapter_and_layout(shared_data):
    from zoo.training import datasets
    from zoo.training.run import detect_layout

    root = shared_data / "heads"
    assert detect_layout(root) == "heads"
    subjects = datasets.heads(root)
    assert len(subjects) == 41
    assert {s.meta["contrast"] for s in subjects} == {"T1w", "T2w", "FLAIR"}
    assert len({s.meta["subject"] for s in subjects}) == 18
    assert all(s.label.name == "brain_mask.nii.gz" and s.images["image"].is_file() for s in subjects)
    assert len(datasets.heads(root, contrasts=["T2w"])) == 10


@pytest.mark.realdata
def test_real_head_brain_inside_the_window(shared_data):
    """On real heads of both geometries (1 mm isotropic with neck, 0.9 x 0.9 x 7 mm clinical)
    the whole silver brain mask lands inside the head-anchored network window."""
    from zoo.entries import skull_stripping as entry
    from zoo.io import read_volume

    card = registry.card("skull_stripping")
    pipe = entry.pipeline(card)
    for case in ("brainchop_t1crop_t1w", "bashiri_104670_flair"):
        vol = read_volume(str(shared_data / "heads" / case / "image.nii.gz"), "image")
        lab = read_volume(str(shared_data / "heads" / case / "brain_mask.nii.gz"), "label")
        x, state = pipe.apply(vol)
        y = pipe.apply_label((lab.array > 0).astype(np.uint8), state)
        ml_in = y.sum() * np.prod(state.spacing) / 1000
        ml_ref = (lab.array > 0).sum() * np.prod(lab.spacing) / 1000
        assert x.shape == (160, 160, 92)
        assert ml_in == pytest.approx(ml_ref, rel=0.02), case


# --- chaining -----------------------------------------------------------------------------------
def test_mask_method_skull_stripping_is_a_card_option_of_the_brain_mask_entries():
    for name in ("wmh_ensemble", "claustrum_multiview", "neonatal_claustrum"):
        card = registry.card(name).with_options({"mask_method": "skull_stripping"})
        assert card.step("brain_mask")["method"] == "skull_stripping"


def test_chained_mask_is_used_applied_and_recorded(monkeypatch):
    """mask_method=skull_stripping runs the skull_stripping entry on the reference input: its
    mask drives the z-score and zeroes the background, and the state records the run."""
    from zoo.entries import skull_stripping as entry
    from zoo.preprocessing.pipeline import SlicePipeline

    arr, inner = _head(shape=(40, 40, 12), centre=(20, 20, 6), radius=(16, 16, 8))
    calls, seen_weights = [], []

    def fake(volume, options=None, weights="default"):
        calls.append(volume.shape)
        seen_weights.append(weights)
        return inner.copy(), {"mask_method": "skull_stripping", "brain_ml": float(inner.sum()) / 1000}

    monkeypatch.setattr(entry, "brain_mask_for", fake)
    steps = [{"step": "brain_mask", "method": "skull_stripping"}, {"step": "zscore"},
             {"step": "slices", "axis": 2}]
    x, state = SlicePipeline(steps, ["flair"]).apply({"flair": _volume(arr)})
    assert calls == [arr.shape] and seen_weights == ["default"]
    steps[0]["mask_weights"] = "runs/ss-cv/fold0/member0.npz"  # the card option mask_weights
    SlicePipeline(steps, ["flair"]).apply({"flair": _volume(arr)})
    assert seen_weights[-1] == "runs/ss-cv/fold0/member0.npz"
    assert state.mask_record["brain_ml"] == pytest.approx(inner.sum() / 1000)
    np.testing.assert_array_equal(state.masks["flair"], inner)
    vol = np.transpose(x[..., 0], (2, 1, 0))  # slices (K, J, I) back to (I, J, K)
    assert np.unique(np.round(vol[~inner], 5)).size == 1  # background zeroed, then z-scored
    inside = vol[inner]
    assert abs(float(inside.mean())) < 1e-4 and float(inside.std()) == pytest.approx(1.0, rel=1e-3)


def test_chained_mask_outside_the_signal_is_a_no_head_error(monkeypatch):
    """A skull_stripping mask that holds none of the reference's signal (what the whole-head
    model gives on a slab of a few slices) is a NoHeadError naming the way out, not a z-score
    failure; a mask that overlaps the signal passes."""
    from zoo.entries import skull_stripping as entry
    from zoo.preprocessing.pipeline import SlicePipeline

    arr, inner = _head(shape=(40, 40, 12), centre=(20, 20, 6), radius=(16, 16, 8))
    arr[0:3] = 0  # a background strip the wrong mask falls on
    outside = np.zeros_like(inner)
    outside[0:3] = True
    monkeypatch.setattr(entry, "brain_mask_for", lambda volume, options=None, weights="default": (
        outside.copy(), {"brain_ml": 0.4, "flags": ["brain_volume_implausible: 0 mL"]}))
    steps = [{"step": "brain_mask", "method": "skull_stripping", "apply_given": True}, {"step": "zscore"},
             {"step": "slices", "axis": 2}]
    with pytest.raises(errors.NoHeadError, match="whole-head model.*mask_method=nonzero") as info:
        SlicePipeline(steps, ["flair"]).apply({"flair": _volume(arr)})
    assert "brain_volume_implausible" in str(info.value)
    monkeypatch.setattr(entry, "brain_mask_for", lambda volume, options=None, weights="default": (
        inner.copy(), {"brain_ml": 1.0}))
    SlicePipeline(steps, ["flair"]).apply({"flair": _volume(arr)})


def test_mask_cleaned_on_the_network_grid_equals_the_input_grid_rule():
    """mask_on_input_grid (cleaning on the 160 x 160 x 92 grid) gives the mask of the old rule
    (threshold, largest component and holes on the input grid) for a brain with a hole, a
    separate blob, and a bright padding region outside the input's field of view."""
    from scipy import ndimage

    from zoo.entries import skull_stripping as entry

    card = registry.card("skull_stripping")
    pipe = entry.pipeline(card)
    arr, _ = _head(shape=(120, 130, 70), centre=(60, 62, 35), radius=(50, 55, 30))
    vol = _volume(arr, np.diag([1.2, 1.2, 1.8, 1.0]))
    x, state = pipe.apply(vol)
    grid = np.indices(x.shape).astype(float)
    c = np.array(x.shape, float) / 2
    r = np.sqrt(sum(((g - cc) / 25.0) ** 2 for g, cc in zip(grid, c)))
    prob = np.where(r <= 1.0, 0.9, 0.05).astype(np.float32)
    prob[r <= 0.3] = 0.2  # a hole inside the brain
    box = state.crop.valid_box()
    corner = tuple(slice(s.start + 2, s.start + 6) for s in box)
    prob[corner] = 0.95  # a separate blob inside the field of view
    outside = np.ones(x.shape, bool)
    outside[box] = False
    prob[outside] = 0.99  # padding the network calls brain: outside the input, never kept
    native = pipe.invert(prob, state, order=1, fill_value=0.0).astype(np.float32)
    got = entry.mask_on_input_grid(pipe, state, prob, native, 0.5)
    want = entry.clean_mask(native, 0.5)
    assert want.sum() > 1000 and ndimage.label(native > 0.5)[1] >= 2
    assert (got != want).sum() <= 0.001 * want.sum()


class _ShiftNet:
    """A stand-in for the fused network: the brain logit of a voxel is the input one voxel to its
    left along X (not mirror-symmetric), the background logit 0."""

    def __init__(self, card):
        self.card = card
        self.calls = []

    def fused(self, batch, training=False):
        self.calls.append(batch.shape)
        brain = np.roll(batch[..., 0], 1, axis=1)
        return np.stack([np.zeros_like(brain), brain], axis=-1)


@pytest.mark.parametrize("tta", ["none", "flip_x"])
def test_flip_tta_averages_the_mirrored_logits(tta):
    from zoo.entries.skull_stripping import network_probability

    card = registry.card("skull_stripping").with_options({"tta": tta})
    net = _ShiftNet(card)
    x = np.random.default_rng(0).normal(size=(8, 6, 4)).astype(np.float32)
    prob = network_probability(net, x)
    left = np.roll(x, 1, axis=0)
    # mirrored, shifted, mirrored back: the input one voxel to the right
    logit = left if tta == "none" else (left + np.roll(x, -1, axis=0)) / 2
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-logit)), rtol=1e-5, atol=1e-6)
    assert net.calls == [(1 if tta == "none" else 2, 8, 6, 4, 1)]  # one network call either way


def test_unknown_tta_is_a_card_error():
    from zoo.entries.skull_stripping import network_probability

    card = registry.card("skull_stripping").with_options({"tta": "rotate"})
    with pytest.raises(errors.CardError, match="tta"):
        network_probability(_ShiftNet(card), np.zeros((4, 4, 4), np.float32))
