"""The training engine (``zoo.training.slices``, ``zoo.training.trainer``, ``zoo train``).

Spec ``wmh_ensemble.md`` §4 step 6 (slice band, labels), §7 (collapse guard), §8.1 (static
mirror); ``practices.md`` §3-§5. Everything runs on tiny synthetic subjects written in the
``open_ms`` layout, on 48x48 patches (the U-Net is fully convolutional: the weights are those of
the 200x200 prediction model), batch 2, one member, 1-3 one-step epochs.

CPU budget: in this module Keras' ``tf.function`` steps run eagerly
(``tf.config.run_functions_eagerly``), which skips ~10 s of graph tracing per ``fit``; the
trainer's logic (callbacks, resume, collapse guard, freezing, records) is the same. The graph
path is exercised by the MirroredStrategy test, which trains in a subprocess in graph mode.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf

import zoo
from zoo import errors
from zoo import weights as weights_mod
from zoo.training import datasets, trainer
from zoo.training.tasks import segmentation2d as seg2d
from zoo.training.recipe import load_recipe
from zoo.training.slices import SliceSet, band_keep, build_slices, label_to_target

pytestmark = [
    # run_functions_eagerly does not apply to tf.data (intended), and fit() notes that it does not
    # shuffle a tf.data stream (make_dataset shuffles with the member seed)
    pytest.mark.filterwarnings("ignore:Even though the `tf.config.experimental_run_functions_eagerly`"),
    pytest.mark.filterwarnings("ignore:`shuffle=True` was passed"),
]

# --- synthetic subjects ------------------------------------------------------------------------
SHAPE = (48, 56, 8)                                   # (i, j, k); axial slices along k
AFFINE = np.diag([-1.0, 1.0, 1.0, 1.0])              # LAS, the card's reference codes
BRAIN = (slice(8, 40), slice(10, 46), slice(0, 8))
LESION = (slice(12, 20), slice(16, 28), slice(2, 6))  # label 1, bright on FLAIR
OTHER = (slice(28, 34), slice(34, 40), slice(3, 5))   # label 2 (other pathology), not bright
LESION_VOXELS = 8 * 12 * 4
N_KEPT = SHAPE[2] - 2 * round(0.1 * SHAPE[2])         # band 0.1 of 8 slices: 1 dropped per end
FAST = {"batch_size": 2, "data": {"patch_size": 48}, "collapse_guard": {"loss_above": 2.0}}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def recipe(variant: str, **overrides) -> dict:
    """The bundled recipe at a CPU-test size (patch 48, batch 2, collapse guard off)."""
    return load_recipe("wmh_ensemble", variant, _merge(FAST, overrides))


def write_subject(folder: Path, seed: int, ornt=None) -> None:
    """``folder/{flair,t1,lesion}.nii.gz``: zero background, a noisy "brain" block, a lesion block
    (label 1) brighter on FLAIR and a label-2 block of normal intensity. ``ornt`` stores the
    same world-space images with permuted/flipped voxel axes."""
    rng = np.random.default_rng(seed)
    flair = np.zeros(SHAPE, np.float32)
    t1 = np.zeros(SHAPE, np.float32)
    label = np.zeros(SHAPE, np.uint8)
    brain_shape = tuple(s.stop - s.start for s in BRAIN)
    flair[BRAIN] = 100 + rng.uniform(-5, 5, brain_shape)
    t1[BRAIN] = 60 + rng.uniform(-5, 5, brain_shape)
    flair[LESION] += 150
    t1[LESION] -= 20
    label[LESION] = 1
    label[OTHER] = 2
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in (("flair", flair), ("t1", t1), ("lesion", label)):
        img = nib.Nifti1Image(array, AFFINE)
        if ornt is not None:
            img = img.as_reoriented(np.asarray(ornt))
        nib.save(img, folder / f"{name}.nii.gz")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("open_ms")
    for n in (1, 2, 3):
        write_subject(root / f"patient{n:02d}", seed=n)
    return root


@pytest.fixture(scope="module")
def subjects(data_root):
    return datasets.open_ms(data_root)


@pytest.fixture(scope="module")
def card():
    return zoo.card("wmh_ensemble").with_options({"mask_method": "nonzero"})


@pytest.fixture(scope="module", autouse=True)
def _eager_steps():
    previous = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(previous)


def _log_epochs(path: Path) -> list[int]:
    with path.open() as fh:
        return [int(row["epoch"]) for row in csv.DictReader(fh)]


# --- band and labels -----------------------------------------------------------------------------
def test_band_keep_matches_the_challenge_counts():
    keep = band_keep(48, 0.1)  # Utrecht/Singapore: 5 of 48 at each end -> 38
    assert keep.dtype == bool and keep.sum() == 38
    assert not keep[:5].any() and not keep[-5:].any() and keep[5:43].all()
    keep = band_keep(83, 0.12)  # GE3T: 10 of 83 -> 63
    assert keep.sum() == 63 and not keep[:10].any() and not keep[-10:].any() and keep[10:73].all()
    assert band_keep(8, 0.1).tolist() == [False] + [True] * 6 + [False]
    assert band_keep(10, 0.0).all()


def test_label_to_target_label2_is_background():
    values = np.array([0, 1, 2, 1, 0, 2], np.uint8)
    target = label_to_target(values, [1])
    assert target.dtype == np.float32
    assert target.tolist() == [0, 1, 0, 1, 0, 0]  # 1 -> 1, 2 -> 0 (D7), 0 -> 0
    as_float = label_to_target(values.astype(np.float32) + np.float32(1e-4), [1])
    np.testing.assert_array_equal(as_float, target)
    np.testing.assert_array_equal(label_to_target(np.array([0.9999, 1.0001, 1.9999]), [1]), [1, 1, 0])


# --- slices ----------------------------------------------------------------------------------------
def _centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0)


@pytest.mark.parametrize("variant, channels", [("flair_t1", 2), ("flair", 1)])
def test_build_slices_shape_band_and_label_geometry(subjects, card, variant, channels):
    rec = load_recipe("wmh_ensemble", variant)
    s = build_slices(subjects[:2], card, variant, rec)
    n = 2 * N_KEPT
    assert s.images.shape == (n, 200, 200, channels) and s.images.dtype == np.float32
    assert s.masks.shape == (n, 200, 200, 1) and s.masks.dtype == np.float32
    assert len(s) == n and s.subject_ids == ["patient01", "patient02"]
    assert s.subject_index.tolist() == [0] * N_KEPT + [1] * N_KEPT
    assert set(np.unique(s.masks)) == {0.0, 1.0}
    # label 1 only: the label-2 block is background (D7); every lesion slice survives the band
    assert s.masks[:N_KEPT].sum() == LESION_VOXELS
    # the label went through the image geometry: mask foreground == the bright block of channel 0
    mask = s.masks[..., 0] > 0
    bright = s.images[..., 0] > 2.0
    assert bright.any()
    np.testing.assert_allclose(_centroid(mask), _centroid(bright), atol=1.0)
    assert (mask & bright).sum() / max(mask.sum(), bright.sum()) > 0.99


def test_build_slices_is_orientation_invariant(subjects, card, tmp_path):
    """The same world-space subject stored with permuted and flipped voxel axes gives the
    identical SliceSet (reorientation to the card's codes, labels included)."""
    write_subject(tmp_path / "patient09", seed=1, ornt=[[1, -1], [2, 1], [0, -1]])
    permuted = datasets.open_ms(tmp_path)
    assert nib.aff2axcodes(nib.load(permuted[0].images["flair"]).affine) != ("L", "A", "S")
    assert nib.load(permuted[0].images["flair"]).shape != SHAPE
    rec = load_recipe("wmh_ensemble", "flair_t1")
    a = build_slices(subjects[:1], card, "flair_t1", rec)
    b = build_slices(permuted, card, "flair_t1", rec)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.subject_index, b.subject_index)


# --- the tf.data stream -------------------------------------------------------------------------
def _small_set(m: int = 5, size: int = 16) -> SliceSet:
    rng = np.random.default_rng(0)
    images = rng.random((m, size, size, 2)).astype(np.float32)
    masks = np.zeros((m, size, size, 1), np.float32)
    for i in range(0, m, 2):  # slices 0, 2, 4 hold a small lesion near a corner
        masks[i, 1 + i:3 + i, 11:13] = 1
    return SliceSet(images, masks, np.zeros(m, np.int32), ["s"])


def _items(ds, n):
    return [(x.numpy(), y.numpy()) for x, y in ds.unbatch().take(n)]


def test_make_dataset_mirror_appends_column_flipped_slices():
    s = _small_set()
    m = len(s)
    items = _items(seg2d.make_dataset(s, 3, seed=0, flip_lr=True, shuffle=False), 2 * m + 1)
    for i in range(m):
        np.testing.assert_array_equal(items[i][0], s.images[i])
        np.testing.assert_array_equal(items[i][1], s.masks[i])
        np.testing.assert_array_equal(items[m + i][0], s.images[i][:, ::-1])  # column (x) axis
        np.testing.assert_array_equal(items[m + i][1], s.masks[i][:, ::-1])
    np.testing.assert_array_equal(items[2 * m][0], s.images[0])  # endless: next pass starts over
    no_flip = _items(seg2d.make_dataset(s, 2, seed=0, flip_lr=False, shuffle=False), m + 1)
    np.testing.assert_array_equal(no_flip[m][0], s.images[0])


def test_make_dataset_patches_with_foreground():
    s = _small_set()
    ds = seg2d.make_dataset(s, 4, seed=1, flip_lr=True, shuffle=False, patch_size=8,
                              foreground_fraction=1.0)
    assert ds.element_spec[0].shape.as_list() == [None, 8, 8, 2]
    items = _items(ds, 2 * len(s))
    for idx, (x, y) in enumerate(items):
        assert x.shape == (8, 8, 2) and y.shape == (8, 8, 1)
        j = idx % len(s)
        if s.masks[j].any():
            assert y.sum() > 0, f"patch {idx} of a lesion slice holds no label voxel"
        # the patch is a window of the (mirrored) slice: image and mask cut together
        src_x = s.images[j] if idx < len(s) else s.images[j][:, ::-1]
        src_y = s.masks[j] if idx < len(s) else s.masks[j][:, ::-1]
        hits = [(r, c) for r in range(9) for c in range(9)
                if np.array_equal(src_x[r:r + 8, c:c + 8], x)]
        assert len(hits) == 1
        r, c = hits[0]
        np.testing.assert_array_equal(src_y[r:r + 8, c:c + 8], y)


def test_make_dataset_seeded_order():
    s = _small_set(m=12)

    def first(seed):
        x, y = next(iter(seg2d.make_dataset(s, 4, seed=seed, flip_lr=True, patch_size=8)))
        return x.numpy(), y.numpy()

    a, b, c = first(7), first(7), first(8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_epoch_steps_is_the_papers_four_fold_set():
    rec = load_recipe("wmh_ensemble", "flair_t1")
    for m in (2780, 100, 7, 1):
        assert seg2d.epoch_steps(m, rec) == math.ceil(2 * m / 0.5 / 30)
    assert seg2d.epoch_steps(2780, rec) == 371  # 11,120 slices per epoch in batches of 30
    no_affine = _merge(rec, {"augmentation": {"affine_probability": 0.0}})
    assert seg2d.epoch_steps(2780, no_affine) == math.ceil(5560 / 30)


# --- train() -----------------------------------------------------------------------------------------
_SMOKE: dict[str, tuple[dict, Path]] = {}


def smoke_run(variant, card, subjects, tmp_path_factory) -> tuple[dict, Path]:
    """One member, one epoch of one step on two subjects; ``flair_t1`` also validates on the
    third subject. Cached: the validation and fine-tuning tests reuse these runs."""
    if variant not in _SMOKE:
        out = tmp_path_factory.mktemp(f"smoke_{variant}")
        val = subjects[2:3] if variant == "flair_t1" else ()
        record = trainer.train(card, recipe(variant), subjects[:2], out, val_subjects=val, members=1,
                               epochs=1, steps_per_epoch=1, strategy="none", verbose=0)
        _SMOKE[variant] = (record, out)
    return _SMOKE[variant]


_NETS: dict[str, keras.Model] = {}


def prediction_net(variant: str) -> keras.Model:
    """The member of the untrained 200x200 prediction model ``zoo.load`` builds for a one-member
    ensemble (card option ``n_members``; cached)."""
    if variant not in _NETS:
        model = zoo.load("wmh_ensemble", variant=variant, weights=None, options={"n_members": 1})
        _NETS[variant] = model.models[0]
    return _NETS[variant]


@pytest.mark.slow
@pytest.mark.parametrize("variant, channels", [("flair", 1), ("flair_t1", 2)])
def test_train_smoke_writes_weights_and_record(variant, channels, card, subjects, tmp_path_factory):
    record, out = smoke_run(variant, card, subjects, tmp_path_factory)
    member = record["members"][0]
    wpath = out / "member0.npz"
    assert wpath.is_file() and member["weights"]["file"] == "member0.npz"
    assert weights_mod.sha256_file(wpath) == member["weights"]["sha256"]
    assert member["weights"]["size"] == wpath.stat().st_size
    assert json.loads((out / "run_record.json").read_text(encoding="utf-8")) == json.loads(json.dumps(record, default=str))
    # record contents
    assert record["entry"] == "wmh_ensemble" and record["variant"] == variant
    assert record["recipe"]["variant"] == variant and record["recipe"]["data"]["patch_size"] == 48
    assert record["replicas"] == 1 and record["mixed_precision"] is None
    assert [s["id"] for s in record["data"]["train"]] == ["patient01", "patient02"]
    assert record["data"]["n_train_slices"] == 2 * N_KEPT
    env = record["environment"]
    assert env["tensorflow"] == tf.__version__ and env["keras"] == keras.__version__
    assert env["python"] and env["numpy"] == np.__version__
    assert member["seed"] == record["recipe"]["seeds"][0]
    assert member["epochs"] == 1 and member["steps_per_epoch"] == 1 and member["resumed_from_epoch"] is None
    assert set(member["history"]) >= {"loss", "dice"} and len(member["history"]["loss"]) == 1
    assert all(math.isfinite(v) for v in member["history"]["loss"])
    # the collapse guard at 2.0 never fires (a Dice loss is at most 1)
    assert member["attempts"] == 1 and not list((out / "member0").glob("log_attempt*"))
    # logs, checkpoints; the backup is removed once the run has finished
    mdir = out / "member0"
    assert _log_epochs(mdir / "log.csv") == [0]
    assert (mdir / "checkpoints" / "epoch001.npz").is_file()  # the net only, zoo float16 format
    assert (mdir / "tensorboard").is_dir() and not (mdir / "backup").exists()
    # patch-trained weights (final and per-epoch checkpoint) fit the 200x200 prediction model
    weights_mod.load_weights(prediction_net(variant), mdir / "checkpoints" / "epoch001.npz")
    net = prediction_net(variant)
    assert tuple(net.inputs[0].shape) == (None, 200, 200, channels)
    weights_mod.load_weights(net, wpath, sha256=member["weights"]["sha256"])
    with np.load(wpath) as stored:
        kernel = next(v for v in net.weights if v.path.endswith("kernel"))
        np.testing.assert_array_equal(kernel.numpy(), stored[kernel.path].astype(np.float32))


@pytest.mark.slow
def test_validation_subjects(card, subjects, tmp_path, tmp_path_factory):
    record, _ = smoke_run("flair_t1", card, subjects, tmp_path_factory)  # validated on patient03
    assert [s["id"] for s in record["data"]["validation"]] == ["patient03"]
    assert "patient03" not in [s["id"] for s in record["data"]["train"]]
    assert record["data"]["n_val_slices"] == N_KEPT
    history = record["members"][0]["history"]
    assert "val_loss" in history and math.isfinite(history["val_loss"][0])
    with pytest.raises(errors.ZooError, match="patient02"):
        trainer.train(card, recipe("flair"), subjects[:2], tmp_path / "overlap", val_subjects=[subjects[1]],
                      members=1, epochs=1, steps_per_epoch=1, verbose=0)
    assert not (tmp_path / "overlap" / "member0").exists()


class _Interrupt(keras.callbacks.Callback):
    """Raises at the end of epoch ``at`` (after the backup and the CSV row were written)."""

    def __init__(self, at: int):
        super().__init__()
        self.at = at

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at:
            raise RuntimeError("simulated interruption")


@pytest.mark.slow
def test_interrupted_run_resumes(card, subjects, tmp_path):
    rec, out = recipe("flair"), tmp_path / "run"
    kwargs = dict(members=1, epochs=3, steps_per_epoch=1, strategy="none", verbose=0)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        trainer.train(card, rec, subjects[:1], out, callbacks=[_Interrupt(at=1)], **kwargs)
    mdir = out / "member0"
    assert (mdir / "backup").is_dir()
    assert _log_epochs(mdir / "log.csv") == [0, 1]
    assert not (out / "member0.npz").exists() and not (out / "run_record.json").exists()
    assert keras.config.dtype_policy().name == "float32"

    record = trainer.train(card, rec, subjects[:1], out, **kwargs)
    member = record["members"][0]
    assert _log_epochs(mdir / "log.csv") == [0, 1, 2]  # continued, not restarted at epoch 0
    assert member["epochs"] == 3 and member["resumed_from_epoch"] == 2
    assert len(member["history"]["loss"]) == 1  # this call ran only the last epoch
    assert not (mdir / "backup").exists() and (out / "member0.npz").is_file()
    assert sorted(p.name for p in (mdir / "checkpoints").iterdir()) == [
        "epoch001.npz", "epoch002.npz", "epoch003.npz"]


@pytest.mark.slow
def test_collapse_guard_restarts_then_gives_up(card, subjects, tmp_path):
    rec = recipe("flair", collapse_guard={"loss_above": -1.0, "max_restarts": 1})
    with pytest.raises(errors.ZooError, match="collapsed"):
        trainer.train(card, rec, subjects[:1], tmp_path, members=1, epochs=2, steps_per_epoch=1,
                      strategy="none", verbose=0)
    mdir = tmp_path / "member0"
    assert _log_epochs(mdir / "log_attempt1_collapsed.csv") == [0]  # stopped after epoch 1
    assert (mdir / "log_attempt2_collapsed.csv").is_file()
    assert not (mdir / "backup").exists() and not (tmp_path / "member0.npz").exists()


@pytest.mark.slow
def test_finetune_freezes_the_encoder(card, subjects, tmp_path, tmp_path_factory):
    _, smoke_out = smoke_run("flair", card, subjects, tmp_path_factory)
    start = smoke_out / "member0.npz"
    record = trainer.train(card, recipe("flair"), subjects[:2], tmp_path, members=1, epochs=1,
                           steps_per_epoch=1, strategy="none", init_from=[start], freeze=["enc"], verbose=0)
    member = record["members"][0]
    assert record["init_from"] == [str(start)]
    assert member["frozen_layers"] and all(n.startswith("enc") for n in member["frozen_layers"])
    with np.load(start) as before, np.load(tmp_path / "member0.npz") as after:
        keys = [k for k in before.files if k != "__meta__"]
        assert sorted(keys) == sorted(k for k in after.files if k != "__meta__")
        enc = [k for k in keys if k.split("/")[0].startswith("enc")]
        dec = [k for k in keys if k.split("/")[0].startswith("dec")]
        assert enc and dec
        assert {k.split("/")[0] for k in enc} == set(member["frozen_layers"])
        for k in enc:
            np.testing.assert_array_equal(after[k], before[k], err_msg=k)
        assert any(not np.array_equal(after[k], before[k]) for k in dec)


MIRRORED = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import zoo
    from zoo.training import datasets, trainer
    from zoo.training.recipe import load_recipe
    card = zoo.card("wmh_ensemble").with_options({"mask_method": "nonzero"})
    rec = load_recipe("wmh_ensemble", "flair", {"batch_size": 4, "data": {"patch_size": 48},
                                                "collapse_guard": {"loss_above": 2.0}})
    subjects = datasets.open_ms(sys.argv[1])[:1]
    record = trainer.train(card, rec, subjects, sys.argv[2], members=1, epochs=1, steps_per_epoch=2,
                           strategy="mirrored", verbose=0)
    print(json.dumps({"replicas": record["replicas"],
                      "loss": record["members"][0]["history"]["loss"]}))
""")


@pytest.fixture(scope="module", autouse=True)
def mirrored_run(request, data_root, tmp_path_factory):
    """The MirroredStrategy training runs in its own process (logical devices must be set before
    TensorFlow starts); it is started with the module so that it overlaps the other tests (and
    not at all when its test is deselected)."""
    if not any(item.originalname == "test_mirrored_strategy_on_two_logical_cpus"
               for item in request.session.items):
        yield None
        return
    out = tmp_path_factory.mktemp("mirrored") / "run"
    proc = subprocess.Popen([sys.executable, "-c", MIRRORED, str(data_root), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    yield proc, out
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


# --- the command line ---------------------------------------------------------------------------------
CLI_FAST = ["--variant", "flair", "--epochs", "1", "--steps-per-epoch", "1", "--members", "1",
            "--batch-size", "2", "--set", "data.patch_size=48",
            "--set", "collapse_guard.loss_above=2.0"]  # an untrained 1-step net may sit above 0.99


@pytest.fixture(scope="module")
def cli_runs(data_root, tmp_path_factory) -> dict:
    """``zoo train`` then ``zoo finetune --from <that run>`` (freezing the encoder, in
    mixed_bfloat16): exit codes, printed lines and run folders."""
    from zoo.cli import main

    base = tmp_path_factory.mktemp("cli")
    runs = {}
    for name, out, argv in (
            ("train", base / "run",
             ["train", "wmh_ensemble", "--data", str(data_root), *CLI_FAST, "--val", "patient03"]),
            ("finetune", base / "tuned",
             ["finetune", "wmh_ensemble", "--from", str(base / "run"), "--data", str(data_root), *CLI_FAST,
              "--set", "finetune.freeze=[enc]", "--mixed-precision", "mixed_bfloat16"])):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = main([*argv, "--out", str(out)])
        runs[name] = {"code": code, "out": printed.getvalue(), "dir": out,
                      "policy_after": keras.config.dtype_policy().name}
    return runs


@pytest.mark.slow
def test_cli_train(cli_runs):
    run = cli_runs["train"]
    out = run["dir"]
    assert run["code"] == 0
    assert f"{out}/member0.npz" in run["out"] and f"{out}/run_record.json" in run["out"]
    record = json.loads((out / "run_record.json").read_text(encoding="utf-8"))
    assert record["variant"] == "flair" and record["recipe"]["batch_size"] == 2
    assert record["recipe"]["data"]["patch_size"] == 48
    assert [s["id"] for s in record["data"]["train"]] == ["patient01", "patient02"]
    assert [s["id"] for s in record["data"]["validation"]] == ["patient03"]
    assert list(record["data"]["train"][0]["images"]) == ["flair"]  # only the variant's inputs
    assert weights_mod.sha256_file(out / "member0.npz") == record["members"][0]["weights"]["sha256"]


@pytest.mark.slow
def test_cli_finetune(cli_runs):
    run, start = cli_runs["finetune"], cli_runs["train"]["dir"] / "member0.npz"
    assert run["code"] == 0 and f"{run['dir']}/member0.npz" in run["out"]
    record = json.loads((run["dir"] / "run_record.json").read_text(encoding="utf-8"))
    assert record["init_from"] == [str(start)]
    assert record["recipe"]["finetune"]["freeze"] == ["enc"]  # from --set finetune.freeze=[enc]
    frozen = record["members"][0]["frozen_layers"]
    assert frozen and all(n.startswith("enc") for n in frozen)


@pytest.mark.slow
def test_mixed_bfloat16_step(cli_runs):
    """One mixed_bfloat16 step (the CLI fine-tuning run): finite loss, float32 weights file that
    loads into the float32 prediction model, and the global policy restored afterwards."""
    run = cli_runs["finetune"]
    record = json.loads((run["dir"] / "run_record.json").read_text(encoding="utf-8"))
    assert record["mixed_precision"] == "mixed_bfloat16"
    loss = record["members"][0]["history"]["loss"]
    assert len(loss) == 1 and math.isfinite(loss[0]) and 0.0 <= loss[0] <= 1.0
    assert run["policy_after"] == "float32" and keras.config.dtype_policy().name == "float32"
    weights_mod.load_weights(prediction_net("flair"), run["dir"] / "member0.npz")


@pytest.mark.parametrize("setting, named", [("optimizer.nam=adam", "nam"), ("epochs=0", "epochs"),
                                            ("data.patch_size=16", "patch_size")])
def test_cli_bad_recipe_setting(data_root, tmp_path, capsys, setting, named):
    from zoo.cli import main

    assert main(["train", "wmh_ensemble", "--data", str(data_root), "--set", setting,
                 "--out", str(tmp_path / "run")]) == 1
    from zoo.terminal import is_device_line

    err = "\n".join(x for x in capsys.readouterr().err.strip().splitlines() if not is_device_line(x))
    assert err.count("\n") == 0 and err.startswith("zoo: error:")
    assert "recipe schema" in err and named in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(mirrored_run):
    proc, out = mirrored_run
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the MirroredStrategy run took more than 300 s")
    assert proc.returncode == 0, stderr[-3000:]
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    # a Dice loss lies in [0, 1]: Keras multiplies the logged loss by the replica count, so
    # the loss must divide by it (it skips that for scalar losses)
    assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in result["loss"])
    assert (out / "member0.npz").is_file()


def test_epoch_and_step_overrides_size_the_schedule(monkeypatch, tmp_path):
    """zoo train --epochs 20 --steps-per-epoch 20 on a segmentation3d recipe: the task builds
    with a recipe whose one-cycle spans the 400 steps trained (it spanned the recipe's 50 x 5)."""
    from types import SimpleNamespace

    from zoo import registry
    from zoo.training import trainer
    from zoo.training.recipe import load_recipe
    from zoo.training.tasks import Prepared, segmentation3d

    seen = []
    fake_task = SimpleNamespace(prepare=lambda *a, **k: Prepared([], None, {}))
    monkeypatch.setattr(trainer, "get_task", lambda name: fake_task)
    monkeypatch.setattr(trainer, "train_member",
                        lambda task, card, variant, recipe, *a, **k: seen.append(recipe) or {"member": 0})
    recipe = load_recipe("skull_stripping")
    assert segmentation3d.total_steps(recipe) == 250
    trainer.train(registry.card("skull_stripping"), recipe, [], tmp_path, epochs=20, steps_per_epoch=20)
    assert segmentation3d.total_steps(seen[0]) == 400
    trainer.train(registry.card("skull_stripping"), recipe, [], tmp_path)
    assert segmentation3d.total_steps(seen[1]) == 250
