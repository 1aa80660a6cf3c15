"""Tests of ``zoo.training.datasets``: adapters list subjects (never slices) with their paths,
and every split is at subject level, disjoint and deterministic (``practices.md`` §3,
``wmh_ensemble.md`` §3). Fast: fake trees of empty placeholder files in ``tmp_path`` (nothing
is loaded); the real-data tests only list ``../shared/data``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest

from zoo import errors
from zoo.training import datasets as ds
from zoo.training.datasets import Subject

SITES = {"Utrecht": ["0", "2", "10", "11"], "Singapore": ["50", "51", "52"], "GE3T": ["100", "101", "126"]}


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


@pytest.fixture
def challenge(tmp_path) -> Path:
    """A fake challenge tree: 3 sites, 10 subjects, plus folders that are not subjects."""
    root = tmp_path / "wmh"
    for site, ids in SITES.items():
        for sid in ids:
            for rel in ("pre/FLAIR.nii.gz", "pre/T1.nii.gz", "orig/FLAIR.nii.gz", "wmh.nii.gz"):
                _touch(root / site / sid / rel)
    # not subjects: no wmh.nii.gz
    _touch(root / "Utrecht" / "99" / "pre" / "FLAIR.nii.gz")
    _touch(root / "Singapore" / "scratch" / "notes.txt")
    (root / "GE3T" / "empty").mkdir()
    return root


def _subjects(counts: dict[str, int]) -> list[Subject]:
    return [Subject(id=f"{site}/{i}", images={"flair": Path(f"/x/{site}/{i}.nii.gz")}, label=None,
                    site=site)
            for site, n in counts.items() for i in range(n)]


# --- Subject -------------------------------------------------------------------------------
def test_subject_is_frozen_hashable_by_id_and_coerces_paths():
    a = Subject(id="s1", images={"flair": "a/f.nii.gz"}, label="a/l.nii.gz", site="x")
    b = Subject(id="s1", images={"flair": Path("other.nii.gz")}, label=None)
    assert a.images["flair"] == Path("a/f.nii.gz") and a.label == Path("a/l.nii.gz")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != Subject(id="s2", images={"flair": "a/f.nii.gz"}, label=None)
    with pytest.raises(AttributeError):
        a.id = "s3"  # type: ignore[misc]
    with pytest.raises(ValueError):
        Subject(id="", images={}, label=None)


# --- WMH challenge -------------------------------------------------------------------------
def test_wmh_challenge_lists_subjects_with_site_and_paths(challenge):
    subjects = ds.wmh_challenge(challenge)
    expected = [f"{site}/{sid}" for site in sorted(SITES) for sid in SITES[site]]
    assert [s.id for s in subjects] == expected  # sorted by site, numerically by subject
    assert "Utrecht/99" not in {s.id for s in subjects}
    for s in subjects:
        site, sid = s.id.split("/")
        d = challenge / site / sid
        assert s.site == site
        assert s.images == {"flair": d / "pre/FLAIR.nii.gz", "t1": d / "pre/T1.nii.gz"}
        assert list(s.images) == ["flair", "t1"]
        assert s.label == d / "wmh.nii.gz"
        assert s.meta["label_values"] == {1: "WMH", 2: "other pathology"}
    assert subjects[0].meta is not subjects[1].meta  # no shared mutable dict


def test_wmh_challenge_inputs_order_and_unknown(challenge):
    subjects = ds.wmh_challenge(challenge, inputs=("t1",))
    assert list(subjects[0].images) == ["t1"]
    assert list(ds.wmh_challenge(challenge, inputs=("t1", "flair"))[0].images) == ["t1", "flair"]
    with pytest.raises(errors.MissingModalityError, match="t2"):
        ds.wmh_challenge(challenge, inputs=("flair", "t2"))


def test_wmh_challenge_single_site_folder(challenge):
    subjects = ds.wmh_challenge(challenge / "Singapore")
    assert [s.id for s in subjects] == ["Singapore/50", "Singapore/51", "Singapore/52"]


def test_wmh_challenge_missing_input_and_skip(challenge, caplog):
    (challenge / "GE3T" / "101" / "pre" / "T1.nii.gz").unlink()
    with pytest.raises(errors.InputNotFoundError) as exc:
        ds.wmh_challenge(challenge)
    assert "GE3T/101" in str(exc.value) and "pre/T1.nii.gz" in str(exc.value)
    assert [s.id for s in ds.wmh_challenge(challenge, inputs=("flair",))][:2] == ["GE3T/100", "GE3T/101"]
    with caplog.at_level(logging.WARNING):
        subjects = ds.wmh_challenge(challenge, skip_incomplete=True)
    assert len(subjects) == 9 and "GE3T/101" not in {s.id for s in subjects}
    assert "GE3T/101" in caplog.text


def test_wmh_challenge_bad_root(tmp_path):
    with pytest.raises(errors.InputNotFoundError, match="nowhere"):
        ds.wmh_challenge(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(errors.InputError, match="wmh.nii.gz"):
        ds.wmh_challenge(tmp_path / "empty")


@pytest.mark.parametrize("spacing, site", [
    ((0.95833, 0.9583, 3.0), "Utrecht"),
    ((1.0, 1.0, 3.0), "Singapore"),
    ((0.99999, 1.00001, 3.0004), "Singapore"),
    ((1.2, 0.97656, 3.0), "GE3T"),
    ((0.977, 1.2, 3.0), None),     # axes swapped: not the rule
    ((1.0, 1.0, 1.0), None),
    ((0.958, 0.958, 3.01), None),
])
def test_site_from_spacing(spacing, site):
    assert ds.site_from_spacing(spacing) == site


def test_site_from_spacing_needs_three_values():
    with pytest.raises(ValueError):
        ds.site_from_spacing((1.0, 1.0))


# --- generic folder ------------------------------------------------------------------------
@pytest.fixture
def ms_tree(tmp_path) -> Path:
    root = tmp_path / "ms"
    for p in ("patient01", "patient02", "patient10"):
        for f in ("flair.nii.gz", "t1_mprage.nii.gz", "lesion.nii.gz"):
            _touch(root / p / f)
    _touch(root / "README.txt")
    (root / ".cache").mkdir()
    return root


def test_folder_names_and_globs(ms_tree):
    subjects = ds.folder(ms_tree, {"flair": "flair.nii.gz", "t1": "t1*.nii.gz"}, "lesion.nii.gz",
                         site="here", meta={"k": 1})
    assert [s.id for s in subjects] == ["patient01", "patient02", "patient10"]
    s = subjects[1]
    assert s.images == {"flair": ms_tree / "patient02/flair.nii.gz",
                        "t1": ms_tree / "patient02/t1_mprage.nii.gz"}
    assert s.label == ms_tree / "patient02/lesion.nii.gz" and s.site == "here"
    assert s.meta == {"k": 1} and subjects[0].meta is not subjects[1].meta
    unlabelled = ds.folder(ms_tree, {"flair": "flair.nii.gz"}, None, subject_glob="patient0*")
    assert [s.id for s in unlabelled] == ["patient01", "patient02"]
    assert all(s.label is None for s in unlabelled)


def test_folder_missing_file_names_subject_and_file(ms_tree, caplog):
    (ms_tree / "patient02" / "lesion.nii.gz").unlink()
    with pytest.raises(errors.InputNotFoundError) as exc:
        ds.folder(ms_tree, {"flair": "flair.nii.gz"}, "lesion.nii.gz")
    assert "patient02" in str(exc.value) and "lesion.nii.gz" in str(exc.value)
    assert "patient01" not in str(exc.value)
    with caplog.at_level(logging.WARNING):
        subjects = ds.folder(ms_tree, {"flair": "flair.nii.gz"}, "lesion.nii.gz",
                             skip_incomplete=True)
    assert [s.id for s in subjects] == ["patient01", "patient10"]
    assert "patient02" in caplog.text and "lesion.nii.gz" in caplog.text


def test_folder_glob_errors(ms_tree):
    with pytest.raises(errors.InputNotFoundError, match=r"t2\*"):
        ds.folder(ms_tree, {"t2": "t2*.nii.gz"}, None)
    _touch(ms_tree / "patient10" / "t1_other.nii.gz")
    with pytest.raises(errors.InputError, match="patient10.*several files"):
        ds.folder(ms_tree, {"t1": "t1*.nii.gz"}, None)


def test_folder_bad_root_and_no_subjects(tmp_path, ms_tree):
    with pytest.raises(errors.InputNotFoundError, match="missing_root"):
        ds.folder(tmp_path / "missing_root", {"flair": "flair.nii.gz"}, None)
    with pytest.raises(errors.InputError, match="case"):
        ds.folder(ms_tree, {"flair": "flair.nii.gz"}, None, subject_glob="case*")
    with pytest.raises(errors.InputError, match="not a folder"):
        ds.folder(ms_tree / "README.txt", {"flair": "flair.nii.gz"}, None)


# --- CSV -----------------------------------------------------------------------------------
def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(",".join(r) for r in rows) + "\n")
    return path


def test_from_csv_resolves_relative_paths_against_csv_folder(tmp_path, monkeypatch):
    data = tmp_path / "data"
    _touch(data / "a" / "flair.nii.gz"), _touch(data / "a" / "t1.nii.gz"), _touch(data / "a" / "seg.nii.gz")
    absolute = _touch(tmp_path / "elsewhere" / "flair_b.nii.gz")
    _touch(data / "b" / "t1.nii.gz")
    csv_path = _write_csv(data / "lists" / "subjects.csv", [
        ["subject", "site", "flair", "t1", "label", "age"],
        ["a", "utrecht", "../a/flair.nii.gz", "../a/t1.nii.gz", "../a/seg.nii.gz", "70"],
        ["b", "", str(absolute), "../b/t1.nii.gz", "", "65"],
    ])
    monkeypatch.chdir(tmp_path / "elsewhere")  # the cwd must not matter
    subjects = ds.from_csv(csv_path, inputs=["flair", "t1"])
    a, b = subjects
    assert a.id == "a" and a.site == "utrecht" and a.meta == {"age": "70"}
    assert a.images["flair"].resolve() == (data / "a" / "flair.nii.gz").resolve()
    assert a.label.resolve() == (data / "a" / "seg.nii.gz").resolve()
    assert b.images["flair"] == absolute and b.label is None and b.site is None
    assert list(a.images) == ["flair", "t1"]


def test_from_csv_missing_columns_and_files(tmp_path, caplog):
    _touch(tmp_path / "x.nii.gz")
    csv_path = _write_csv(tmp_path / "s.csv", [["subject", "flair", "label"],
                                               ["s1", "x.nii.gz", "x.nii.gz"],
                                               ["s2", "gone.nii.gz", "x.nii.gz"]])
    with pytest.raises(errors.InputError, match=r"\['site'\].*found \['subject', 'flair', 'label'\]"):
        ds.from_csv(csv_path, inputs=["flair"])
    with pytest.raises(errors.InputError, match="t1"):
        ds.from_csv(csv_path, inputs=["flair", "t1"], site_column=None)
    with pytest.raises(errors.InputNotFoundError) as exc:
        ds.from_csv(csv_path, inputs=["flair"], site_column=None)
    assert "s2" in str(exc.value) and "gone.nii.gz" in str(exc.value)
    with caplog.at_level(logging.WARNING):
        subjects = ds.from_csv(csv_path, inputs=["flair"], site_column=None, skip_incomplete=True)
    assert [s.id for s in subjects] == ["s1"] and "gone.nii.gz" in caplog.text
    with pytest.raises(errors.InputNotFoundError, match="nope.csv"):
        ds.from_csv(tmp_path / "nope.csv", inputs=["flair"])


def test_from_csv_rejects_duplicate_ids(tmp_path):
    _touch(tmp_path / "x.nii.gz")
    csv_path = _write_csv(tmp_path / "s.csv", [["subject", "flair"], ["s1", "x.nii.gz"],
                                               ["s1", "x.nii.gz"]])
    with pytest.raises(errors.InputError, match="s1"):
        ds.from_csv(csv_path, inputs=["flair"], label_column=None, site_column=None)


# --- real data -----------------------------------------------------------------------------
@pytest.mark.realdata
def test_open_ms_real(shared_data):
    subjects = ds.open_ms(shared_data / "open_ms" / "mni")
    assert [s.id for s in subjects] == ["patient07", "patient19"]
    for s in subjects:
        assert list(s.images) == ["flair", "t1"] and s.site == "ljubljana"
        assert all(p.is_file() for p in [*s.images.values(), s.label])
        assert s.label.name == "lesion.nii.gz" and s.images["flair"].name == "flair.nii.gz"


@pytest.mark.realdata
def test_spine_chu_real(shared_data):
    subjects = ds.spine_chu(shared_data / "spine_chu")
    ids = [s.id for s in subjects]
    assert ids == [f"case{n:02d}" for n in (2, 4, 6, 7, 8, 9, 10, 13, 14, 16, 17, 19, 20)]
    for s in subjects:
        assert s.images["t2"].name == "image.nii.gz" and s.label.name == "mask_th12_l5.nii.gz"
        assert s.site == "chu2015" and s.images["t2"].is_file() and s.label.is_file()
        assert s.meta["vertebra_labels"].is_file()


@pytest.mark.realdata
def test_kfold_on_spine_cases(shared_data):
    subjects = ds.spine_chu(shared_data / "spine_chu")
    folds = ds.kfold(subjects, k=3, seed=0)
    assert len(folds) == 3
    val_counts = Counter(s.id for _, val in folds for s in val)
    assert set(val_counts) == {s.id for s in subjects} and set(val_counts.values()) == {1}
    for train, val in folds:
        assert not {s.id for s in train} & {s.id for s in val}
        assert len(train) + len(val) == 13
    assert sorted(len(val) for _, val in folds) == [4, 4, 5]
    ds.check_disjoint(folds)


# --- splits --------------------------------------------------------------------------------
def test_kfold_stratifies_by_site():
    subjects = _subjects({"A": 10, "B": 7, "C": 5})
    folds = ds.kfold(subjects, k=4, seed=3)
    per_site = [Counter(s.site for s in val) for _, val in folds]
    for site, n in (("A", 10), ("B", 7), ("C", 5)):
        counts = [c[site] for c in per_site]
        assert sum(counts) == n and max(counts) - min(counts) <= 1, (site, counts)
    sizes = [len(val) for _, val in folds]
    assert max(sizes) - min(sizes) <= 1
    for train, val in folds:  # input order kept, partitions complementary
        assert set(train) | set(val) == set(subjects) and not set(train) & set(val)
        assert train == [s for s in subjects if s in set(train)]


def test_kfold_deterministic_and_order_independent():
    subjects = _subjects({"A": 6, "B": 6, "C": 4})
    ids = lambda folds: [sorted(s.id for s in val) for _, val in folds]  # noqa: E731
    assert ids(ds.kfold(subjects, 4, seed=7)) == ids(ds.kfold(subjects, 4, seed=7))
    assert ids(ds.kfold(list(reversed(subjects)), 4, seed=7)) == ids(ds.kfold(subjects, 4, seed=7))
    assert ids(ds.kfold(subjects, 4, seed=7)) != ids(ds.kfold(subjects, 4, seed=8))
    plain = ds.kfold(subjects, 4, seed=7, stratify_by=None)
    assert sorted(len(v) for _, v in plain) == [4, 4, 4, 4]


def test_kfold_argument_errors():
    subjects = _subjects({"A": 3})
    for k in (1, 4):
        with pytest.raises(ValueError, match="k must"):
            ds.kfold(subjects, k)
    with pytest.raises(ValueError, match="duplicate"):
        ds.kfold(subjects + subjects[:1], 2)


def test_holdout_proportional_per_site():
    subjects = _subjects({"Utrecht": 20, "Singapore": 20, "GE3T": 20})
    train, val = ds.holdout(subjects, n_val=12, seed=0)
    assert len(train) == 48 and Counter(s.site for s in val) == {"Utrecht": 4, "Singapore": 4, "GE3T": 4}
    assert not set(train) & set(val) and set(train) | set(val) == set(subjects)
    assert ds.holdout(subjects, 12, seed=0) == (train, val)
    assert ds.holdout(subjects, 12, seed=1)[1] != val
    _, val = ds.holdout(_subjects({"A": 10, "B": 5}), n_val=3, seed=0)
    assert Counter(s.site for s in val) == {"A": 2, "B": 1}
    with pytest.raises(ValueError):
        ds.holdout(subjects, n_val=60)


def test_leave_one_out_and_leave_one_site_out():
    subjects = _subjects({"A": 3, "B": 2, "C": 1})
    loo = ds.leave_one_out(subjects)
    assert len(loo) == 6
    for s, (train, val) in zip(subjects, loo):
        assert val == [s] and len(train) == 5 and s not in train
    loso = ds.leave_one_site_out(subjects)
    assert [val[0].site for _, val in loso] == ["A", "B", "C"]
    assert [(len(train), len(val)) for train, val in loso] == [(3, 3), (4, 2), (5, 1)]
    for train, val in loso:
        assert {s.site for s in val} & {s.site for s in train} == set()
    with pytest.raises(ValueError, match="2 sites"):
        ds.leave_one_site_out(_subjects({"A": 3}))
    with pytest.raises(ValueError, match="without a site"):
        ds.leave_one_site_out([Subject(id="x", images={}, label=None), *_subjects({"A": 1, "B": 1})])


def test_splits_on_fake_challenge(challenge):
    subjects = ds.wmh_challenge(challenge)
    loso = ds.leave_one_site_out(subjects)
    assert [[s.id for s in val] for _, val in loso] == [
        [f"{site}/{i}" for i in SITES[site]] for site in sorted(SITES)]
    folds = ds.kfold(subjects, k=3, seed=0)
    for _, val in folds:
        assert set(Counter(s.site for s in val)) == set(SITES)  # every site in every val fold


# --- manifests -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["splits.json", "splits.yaml"])
def test_manifest_round_trip(tmp_path, name):
    subjects = _subjects({"A": 4, "B": 3}) + [Subject(id="007", images={}, label=None, site="B")]
    folds = ds.kfold(subjects, k=3, seed=1)
    path = ds.write_manifest(tmp_path / "recipe" / name, folds)
    manifest = ds.read_manifest(path)
    assert list(manifest) == ["fold0", "fold1", "fold2"]
    for (train, val), fold in zip(folds, manifest.values()):
        assert fold == {"train": [s.id for s in train], "val": [s.id for s in val]}
    assert "007" in sum((f["val"] for f in manifest.values()), [])  # stays a string
    assert ds.select(subjects, manifest["fold1"]["val"]) == folds[1][1]
    with pytest.raises(errors.InputError, match="ghost"):
        ds.select(subjects, ["ghost"])
    if name.endswith(".json"):
        assert json.loads(path.read_text()) == manifest


def test_manifest_named_splits_and_holdout(tmp_path):
    subjects = _subjects({"A": 4, "B": 4})
    train, val = ds.holdout(subjects, 2)
    path = ds.write_manifest(tmp_path / "m.yml", {"holdout": {"train": train, "val": val, "test": ["t1"]}})
    assert ds.read_manifest(path) == {"holdout": {"train": [s.id for s in train],
                                                  "val": [s.id for s in val], "test": ["t1"]}}


def test_check_disjoint_catches_overlap(tmp_path):
    ok = {"fold0": {"train": ["a", "b"], "val": ["c"]}, "fold1": {"train": ["a", "c"], "val": ["b"]}}
    ds.check_disjoint(ok)  # the same ID in different folds is fine
    bad = {"fold0": {"train": ["a", "b"], "val": ["c"]}, "fold1": {"train": ["a", "b"], "val": ["b"]}}
    with pytest.raises(ValueError, match=r"fold1.*\['b'\].*'train'.*'val'"):
        ds.check_disjoint(bad)
    with pytest.raises(ValueError, match="twice"):
        ds.check_disjoint({"fold0": {"train": ["a", "a"], "val": ["c"]}})
    with pytest.raises(ValueError):
        ds.write_manifest(tmp_path / "bad.json", bad)
    assert not (tmp_path / "bad.json").exists()
    (tmp_path / "leaky.yaml").write_text("fold0: {train: [a, b], val: [b]}\n")
    with pytest.raises(ValueError, match="'b'"):
        ds.read_manifest(tmp_path / "leaky.yaml")
    assert ds.read_manifest(tmp_path / "leaky.yaml", check=False)["fold0"]["val"] == ["b"]


def test_read_manifest_errors(tmp_path):
    with pytest.raises(errors.InputNotFoundError):
        ds.read_manifest(tmp_path / "none.json")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(errors.RecipeError, match="fold"):
        ds.read_manifest(tmp_path / "list.yaml")
    (tmp_path / "flat.yaml").write_text("fold0: [a, b]\n")
    with pytest.raises(errors.RecipeError, match="fold0"):
        ds.read_manifest(tmp_path / "flat.yaml")
