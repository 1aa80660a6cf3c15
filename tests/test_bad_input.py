"""Bad input for every registered entry, through the API and the CLI (issue 6, part 1).

A battery of broken inputs (missing, empty, truncated, not an image, 2D, 4D, NaN/Inf,
constant, zero/negative spacing, sheared affine, over the memory budget, unknown or missing
modality, inputs on different grids) is fed to each entry's reference input. Each must raise
its :mod:`zoo.errors` type with a message naming the file and what to do; the CLI must exit 1
with one ``zoo: error:`` line (no traceback) and leave no output file; in a batch
(``--input-list``) every case is reported and a good case still completes. Entry-level
errors (unknown entry or variant, a card failing its schema, weights with a wrong sha256)
are checked per entry too.

The input cases fail before any network runs, so the API/CLI checks use the entry's card and
module without building its members; an entry whose module is not importable yet is skipped
with the reason.
"""

from __future__ import annotations

import importlib
import struct
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import yaml

import zoo
from conftest import REPO, axial_slab
from zoo import errors, registry
from zoo.card import ModelCard
from zoo.cli import main
from zoo.model import ZooModel

ENTRIES = sorted(registry.ENTRIES)
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def entry_module(name: str):
    try:
        return importlib.import_module(registry.ENTRIES[name])
    except ImportError as exc:
        pytest.skip(f"entry {name} is not importable yet ({exc})")


def light_model(name: str, variant: str | None = None) -> ZooModel:
    """The entry's ZooModel without networks: input errors are raised before any member runs."""
    card = zoo.card(name)
    variant = variant or card["default_variant"]
    return ZooModel(card, variant, [], entry_module(name), None)


def _save(path, data, affine=AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def _noise(shape=(16, 16, 8), seed=0):
    return np.random.default_rng(seed).uniform(0, 100, shape).astype(np.float32)


def _bad_pixdim(path, value):
    """An uncompressed NIfTI whose pixdim[1] (spacing of voxel axis i) is ``value`` on disk
    (nibabel's writer would repair it; pixdim is float32[8] at byte 76 of the header)."""
    _save(path, _noise())
    raw = bytearray(path.read_bytes())
    raw[80:84] = struct.pack("<f", value)
    path.write_bytes(bytes(raw))
    return path


def make_case(case: str, tmp):
    """Write one broken input file; returns its path."""
    p = tmp / f"{case}.nii.gz"
    if case == "missing":
        return tmp / "missing.nii.gz"
    if case == "empty":
        p.write_bytes(b"")
    elif case == "truncated":
        _save(tmp / "good.nii.gz", _noise())
        data = (tmp / "good.nii.gz").read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif case == "text":
        p.write_text("subject,flair\nthis is not an image\n", encoding="utf-8")
    elif case == "2d":
        _save(p, _noise((16, 16)))
    elif case == "4d":
        _save(p, _noise((16, 16, 8, 3)))
    elif case == "nan":
        a = _noise()
        a[3, 4, 5] = np.nan
        _save(p, a)
    elif case == "inf":
        a = _noise()
        a[1, 2, 3] = np.inf
        _save(p, a)
    elif case == "constant":
        _save(p, np.full((16, 16, 8), 7.0, np.float32))
    elif case in ("zero_spacing", "negative_spacing"):
        p = _bad_pixdim(tmp / f"{case}.nii", 0.0 if case == "zero_spacing" else -1.0)
    elif case == "sheared":
        aff = AFFINE.copy()
        aff[0, 1] = 0.5
        _save(p, _noise(), aff)
    elif case == "too_large":
        _save(p, _noise((32, 32, 16)))  # 16,384 voxels; the tests set ZOO_MAX_VOXELS=10000
    else:
        raise ValueError(case)
    return p


#: case -> (expected error, a word of the fix the message must contain).
CASES = {
    "missing": (errors.InputNotFoundError, "check the path"),
    "empty": (errors.UnreadableImageError, "re-"),
    "truncated": (errors.UnreadableImageError, "re-"),
    "text": (errors.UnreadableImageError, "give a"),
    "2d": (errors.DimensionError, "3D volume"),
    "4d": (errors.DimensionError, "split"),
    "nan": (errors.NonFiniteError, "replace"),
    "inf": (errors.NonFiniteError, "replace"),
    "constant": (errors.ConstantImageError, "give the"),
    "zero_spacing": (errors.GeometryError, "fix the header"),
    "negative_spacing": (errors.GeometryError, "fix the header"),
    "sheared": (errors.GeometryError, "reslice"),
    "too_large": (errors.VolumeTooLargeError, "ZOO_MAX_VOXELS"),
}


@pytest.fixture
def budget(monkeypatch):
    monkeypatch.setenv("ZOO_MAX_VOXELS", "10000")


def reference_input(model: ZooModel) -> str:
    return model.input_names[0]


def _extra_inputs(model: ZooModel, tmp) -> dict:
    """Valid files for the variant's other required inputs (so only the case under test fails)."""
    if model.card.variant(model.variant).get("any_subset"):
        return {}
    return {n: str(_save(tmp / f"ok_{n}.nii.gz", _noise(seed=i + 1)))
            for i, n in enumerate(model.input_names[1:])}


# --- the API -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ENTRIES)
@pytest.mark.parametrize("case", list(CASES))
def test_api_input_battery(name, case, tmp_path, budget):
    model = light_model(name)
    path = make_case(case, tmp_path)
    inputs = {reference_input(model): str(path), **_extra_inputs(model, tmp_path)}
    err_type, fix = CASES[case]
    with pytest.raises(err_type) as info:
        model.predict(inputs)
    msg = str(info.value)
    assert isinstance(info.value, errors.InputError)
    assert path.name in msg, msg  # names the file
    assert fix in msg, msg  # and what to do


@pytest.mark.parametrize("name", ENTRIES)
def test_api_unknown_and_missing_modality(name, tmp_path):
    model = light_model(name)
    good = str(_save(tmp_path / "ok.nii.gz", _noise()))
    with pytest.raises(errors.MissingModalityError, match="no input 'pet'.*takes"):
        model.predict({reference_input(model): good, "pet": good})
    for variant, rec in model.card["variants"].items():
        if len(rec["inputs"]) > 1 and not rec.get("any_subset"):
            two = light_model(name, variant)
            with pytest.raises(errors.MissingModalityError, match=f"needs \\['{rec['inputs'][1]}'\\]"):
                two.predict({rec["inputs"][0]: good})


def _grid_variants(name):
    card = zoo.card(name)
    return [v for v, rec in card["variants"].items() if len(rec["inputs"]) > 1]


@pytest.mark.parametrize("name", ENTRIES)
def test_api_inputs_on_different_grids(name, tmp_path):
    variants = _grid_variants(name)
    if not variants:
        pytest.skip(f"{name} takes one image input per variant: no grids to mismatch")
    model = light_model(name, variants[0])
    a, b = model.input_names[:2]
    inputs = {a: str(_save(tmp_path / f"{a}.nii.gz", _noise((16, 16, 8)))),
              b: str(_save(tmp_path / f"{b}.nii.gz", _noise((20, 18, 8), seed=3)))}
    with pytest.raises(errors.GridMismatchError) as info:
        model.predict(inputs)
    assert "resample" in str(info.value)


# --- entry level: names, cards, weights ---------------------------------------------------------
@pytest.mark.parametrize("name", ENTRIES)
def test_unknown_entry_and_variant(name, tmp_path, capsys):
    with pytest.raises(errors.UnknownEntryError, match="available entries"):
        zoo.load(name + "_nope")
    with pytest.raises(errors.UnknownVariantError):
        zoo.load(name, variant="nope", weights=None)
    good = str(_save(tmp_path / "ok.nii.gz", _noise()))
    out = tmp_path / "out"
    for argv in (["predict", name + "_nope"], ["predict", name, "--variant", "nope"]):
        assert main([*argv, "--untrained", "--input", f"x={good}", "-o", str(out)]) == 1
    _assert_one_line_errors(capsys.readouterr().err, 2)
    assert not out.exists()


def _broken_card(name, tmp_path):
    data = yaml.safe_load((REPO / "cards" / f"{name}.yaml").read_text(encoding="utf-8"))
    del data["inputs"]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ENTRIES)
def test_card_failing_its_schema(name, tmp_path, monkeypatch, capsys):
    path = _broken_card(name, tmp_path)
    with pytest.raises(errors.CardError) as info:
        ModelCard.from_file(path)
    assert str(path) in str(info.value) and "inputs" in str(info.value)
    monkeypatch.setattr(ModelCard, "bundled", classmethod(lambda cls, entry_id: cls.from_file(path)))
    with pytest.raises(errors.CardError):
        zoo.load(name, weights=None)
    assert main(["card", name]) == 1
    _assert_one_line_errors(capsys.readouterr().err, 1)


@pytest.mark.parametrize("name", ENTRIES)
def test_weights_with_wrong_sha256(name, tmp_path, monkeypatch, capsys):
    """A weights file whose sha256 differs from the card's: ChecksumError naming the file,
    before any weight is loaded (the card gets records if the entry ships none)."""
    mod = entry_module(name)
    card = zoo.card(name)
    data = card.to_dict()
    variant = data["default_variant"]
    records = data["variants"][variant]["weights"] or [{"file": f"{name}/{variant}/member0.npz", "member": 0}]
    records = [{**{k: v for k, v in r.items() if k != "size"}, "sha256": "0" * 64} for r in records]
    data["variants"][variant]["weights"] = records  # the card names a digest no file has
    n = len(records)
    card_path = tmp_path / f"{name}.yaml"
    card_path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    monkeypatch.setattr(ModelCard, "bundled", classmethod(lambda cls, entry_id: cls.from_file(card_path)))
    stub = SimpleNamespace(weights=[], name="stub")  # no network needed: the digest fails first
    monkeypatch.setattr(mod, "build_members", lambda c, v: [stub] * n)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for rec in records:
        (mirror / rec["file"].split("/")[-1]).write_bytes(b"not the weights the card names")
    url = mirror.as_uri() + "/"
    with pytest.raises(errors.ChecksumError) as info:
        zoo.load(name, weights=url)
    assert "member0.npz" in str(info.value) and "sha256" in str(info.value)
    good = str(_save(tmp_path / "ok.nii.gz", _noise()))
    out = tmp_path / "out"
    assert main(["predict", name, "--weights", url, "--input", f"x={good}", "-o", str(out)]) == 1
    _assert_one_line_errors(capsys.readouterr().err, 1)
    assert not out.exists()


# --- the CLI -----------------------------------------------------------------------------------------
def _assert_one_line_errors(err: str, n: int) -> None:
    from zoo.terminal import is_device_line

    lines = [line for line in err.splitlines() if line.strip() and not is_device_line(line)]
    assert len(lines) == n, err
    assert all(line.startswith("zoo: error: ") for line in lines), err
    assert "Traceback" not in err


@pytest.fixture
def light_load(monkeypatch):
    """``zoo.load`` in the CLI returns the network-less model (input errors come first)."""
    monkeypatch.setattr(zoo, "load", lambda name, variant=None, weights=None, options=None:
                        light_model(name, variant))


@pytest.mark.parametrize("name", ENTRIES)
def test_cli_one_subject_battery(name, tmp_path, capsys, budget, light_load):
    model = light_model(name)
    ref = reference_input(model)
    extra = [f"{k}={v}" for k, v in _extra_inputs(model, tmp_path).items()]
    for case in CASES:
        path = make_case(case, tmp_path)
        out = tmp_path / f"out_{case}"
        argv = ["predict", name, "--untrained", "--input", f"{ref}={path}",
                *[a for e in extra for a in ("--input", e)], "-o", str(out)]
        assert main(argv) == 1, case
        err = capsys.readouterr().err
        _assert_one_line_errors(err, 1)
        assert path.name in err, (case, err)
        assert not out.exists() or not any(out.rglob("*")), case  # nothing left behind
    with pytest.raises(CASES["nan"][0]):  # --debug shows the exception itself
        main(["predict", name, "--untrained", "--input", f"{ref}={make_case('nan', tmp_path)}",
              *[a for e in extra for a in ("--input", e)], "-o", str(tmp_path / "dbg"), "--debug"])


@pytest.mark.parametrize("name", ENTRIES)
def test_cli_batch_reports_every_failure(name, tmp_path, capsys, budget, light_load):
    import pandas as pd

    model = light_model(name)
    ref = reference_input(model)
    extra = _extra_inputs(model, tmp_path)
    rows = [{"subject": case, ref: str(make_case(case, tmp_path)), **extra} for case in CASES]
    pd.DataFrame(rows).to_csv(tmp_path / "cohort.csv", index=False)
    out = tmp_path / "out"
    assert main(["predict", name, "--untrained", "--input-list", str(tmp_path / "cohort.csv"),
                 "-o", str(out)]) == 1
    captured = capsys.readouterr()
    assert f"0 ok, {len(CASES)} failed" in captured.out
    assert "Traceback" not in captured.err
    report = pd.read_csv(out / "report.csv", keep_default_na=False)
    assert list(report["subject"]) == list(CASES)
    assert (report["status"] == "failed").all()
    assert list(report["error_type"]) == [CASES[c][0].__name__ for c in CASES]
    assert sorted(p.name for p in out.iterdir()) == ["report.csv"]  # no partial outputs


@pytest.mark.realdata
def test_cli_batch_good_case_completes_among_bad_ones(tmp_path, capsys, budget, shared_data, monkeypatch):
    """wmh_ensemble (one untrained member, a real 8-slice slab): the good subject is written,
    every bad one is in the report, exit status 1."""
    import pandas as pd

    monkeypatch.setenv("ZOO_MAX_VOXELS", str(2**28))
    slab = axial_slab(nib.load(str(shared_data / "open_ms" / "mni" / "patient19" / "flair.nii.gz")), 88, 96)
    good = tmp_path / "good_flair.nii.gz"
    nib.save(slab, str(good))
    bad = ["missing", "truncated", "nan", "sheared", "constant"]
    rows = [{"subject": "good", "flair": str(good)}]
    rows += [{"subject": c, "flair": str(make_case(c, tmp_path))} for c in bad]
    pd.DataFrame(rows).to_csv(tmp_path / "cohort.csv", index=False)
    out = tmp_path / "out"
    rc = main(["predict", "wmh_ensemble", "--variant", "flair", "--untrained", "--option", "n_members=1",
               "--input-list", str(tmp_path / "cohort.csv"), "-o", str(out)])
    assert rc == 1
    assert "1 ok, 5 failed" in capsys.readouterr().out
    report = pd.read_csv(out / "report.csv", keep_default_na=False).set_index("subject")
    assert report.loc["good", "status"] == "ok"
    assert [report.loc[c, "error_type"] for c in bad] == [CASES[c][0].__name__ for c in bad]
    assert {"wmh.nii.gz", "wmh_probability.nii.gz"} <= {p.name for p in (out / "good").iterdir()}
    assert sorted(p.name for p in out.iterdir()) == ["good", "report.csv"]
