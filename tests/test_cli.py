"""Tests of ``zoo.cli``: ``main([...])`` in-process (capsys), one subprocess smoke test.

Inputs are tiny synthetic NIfTI volumes (40, 40, 2) in ``(i, j, k)`` order with affine
diag(1, 1, 3, 1); the untrained FLAIR-only variant with ``mask_method=nonzero`` needs no weights,
so each prediction costs about a second on CPU.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

import zoo
from zoo import cli

AFFINE = np.diag([1.0, 1.0, 3.0, 1.0])
UNTRAINED = ["--untrained", "--variant", "flair", "--option", "mask_method=nonzero"]


def write_volume(path: Path, seed: int = 0) -> Path:
    """A (40, 40, 2) float32 volume: zeros around a non-zero "brain" block of random values."""
    rng = np.random.default_rng(seed)
    data = np.zeros((40, 40, 2), np.float32)
    data[8:32, 6:34, :] = 50.0 + 20.0 * rng.random((24, 28, 2), dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))
    return path


@pytest.fixture(scope="module")
def shared_model():
    """One untrained FLAIR-only model shared by the prediction tests (building the members and
    tracing the fused ensemble cost seconds on CPU; reusing them keeps the module fast)."""
    model = zoo.load("wmh_ensemble", variant="flair", weights=None, options={"mask_method": "nonzero"})
    model.fused  # build the fused graph now so that the shallow copies below share it
    return model


@pytest.fixture
def cached_load(monkeypatch, shared_model):
    """Make ``zoo.load`` return a shallow copy of ``shared_model`` whose card carries the options
    the CLI passed (so option values still reach the prediction); records every call."""
    calls = []

    def fake_load(name, variant=None, weights="default", options=None):
        calls.append({"name": name, "variant": variant, "weights": weights, "options": options})
        assert (name, variant, weights) == ("wmh_ensemble", "flair", None)
        assert options["mask_method"] == "nonzero"
        model = copy.copy(shared_model)
        model.card = zoo.card(name).with_options(options)
        return model

    monkeypatch.setattr(zoo, "load", fake_load)
    return calls


def error_lines(err: str) -> list[str]:
    """Non-empty stderr lines other than the one device line (``zoo: CPU, 2 threads, float32 ...``)."""
    return [line for line in err.splitlines()
            if line.strip() and not re.match(r"zoo: (CPU|GPU x\d+), ", line)]


# --- list / card ----------------------------------------------------------------------------
def test_list_prints_table(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    header, *rows = out.splitlines()
    assert header.split()[:2] == ["name", "task"]
    assert any(r.split()[0] == "wmh_ensemble" for r in rows)


def test_card_markdown_yaml_json(capsys):
    assert cli.main(["card", "wmh_ensemble"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("# ") and "Li et al. 2018 Table 3" in md

    assert cli.main(["card", "wmh_ensemble", "--format", "yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == zoo.card("wmh_ensemble").to_dict()

    assert cli.main(["card", "wmh_ensemble", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == "wmh_ensemble"


def test_unknown_entry_is_one_line_exit_1(capsys):
    assert cli.main(["card", "no_such_entry"]) == 1
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1
    assert err.startswith("zoo: error: ") and "unknown entry" in err and "Traceback" not in err


def test_unknown_entry_in_predict(tmp_path, capsys):
    flair = write_volume(tmp_path / "flair.nii.gz")
    rc = cli.main(["predict", "no_such_entry", "--untrained", "--input", f"flair={flair}",
                   "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1 and len(error_lines(err)) == 1 and "unknown entry" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_debug_reraises():
    with pytest.raises(zoo.errors.UnknownEntryError):
        cli.main(["card", "no_such_entry", "--debug"])


# --- usage errors ----------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [
    ["--input-list", "c.csv", "--shard", "3/2"],
    ["--input-list", "c.csv", "--shard", "0/2"],
    ["--input-list", "c.csv", "--shard", "two"],
    ["--input", "flair"],                                  # not NAME=PATH
    ["--input", "flair=a", "--input-list", "c.csv"],       # both sources
    [],                                                    # no source
    ["--input", "flair=a", "--input", "flair=b"],          # same input twice
    ["--input", "flair=a", "--shard", "1/2"],              # --shard needs --input-list
    ["--input", "flair=a", "--weights", "w", "--untrained"],
    ["--input", "flair=a", "--option", "threshold=[0.5"],  # not YAML
])
def test_usage_errors_exit_2(tmp_path, capsys, monkeypatch, extra):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["predict", "wmh_ensemble", "-o", "out", *extra]) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and err.startswith("zoo: error: ")
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_no_command_and_help(capsys):
    assert cli.main([]) == 2
    assert capsys.readouterr().err.startswith("zoo: error: ")
    assert cli.main(["--help"]) == 0
    assert "predict" in capsys.readouterr().out


def test_option_values_are_yaml():
    args = cli.build_parser().parse_args(
        ["predict", "x", "--input", "flair=f", "-o", "o", "--option", "threshold=0.45",
         "--option", "mask_method=nonzero", "--option", "inplane_spacing_mm=[1.0,1.0]"])
    assert dict(args.option) == {"threshold": 0.45, "mask_method": "nonzero",
                                 "inplane_spacing_mm": [1.0, 1.0]}


# --- predict: one subject ------------------------------------------------------------------------
def test_predict_one_subject_with_option(tmp_path, capsys, cached_load):
    flair = write_volume(tmp_path / "in" / "flair.nii.gz")
    out = tmp_path / "out"
    assert cli.main(["predict", "wmh_ensemble", *UNTRAINED, "--option", "threshold=0.9",
                     "--input", f"flair={flair}", "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    # the option reached zoo.load (parsed as YAML: a float), and the model's card used it
    assert cached_load == [{"name": "wmh_ensemble", "variant": "flair", "weights": None,
                            "options": {"mask_method": "nonzero", "threshold": 0.9}}]
    for name in ("wmh.nii.gz", "wmh_probability.nii.gz"):
        img = nib.load(str(out / name))
        assert img.shape == (40, 40, 2)
        np.testing.assert_allclose(img.affine, AFFINE)
        assert str(out / name) in stdout
    prob = np.asarray(nib.load(str(out / "wmh_probability.nii.gz")).dataobj)
    mask = np.asarray(nib.load(str(out / "wmh.nii.gz")).dataobj)
    np.testing.assert_array_equal(mask, (prob > 0.9).astype(np.uint8))
    summary = json.loads((out / "prediction.json").read_text())
    assert f"wmh: {summary['volumes_ml']['wmh']:.3f} mL" in stdout.splitlines()


def test_weights_flag_is_passed(tmp_path, monkeypatch):
    seen = {}

    def fake_load(name, variant=None, weights="default", options=None):
        seen.update(weights=weights)
        raise zoo.errors.WeightsNotAvailableError("stop here")

    monkeypatch.setattr(zoo, "load", fake_load)
    base = ["predict", "wmh_ensemble", "--input", "flair=f.nii.gz", "-o", str(tmp_path / "o")]
    assert cli.main([*base, "--weights", "https://example.org/w.npz"]) == 1
    assert seen["weights"] == "https://example.org/w.npz"
    assert cli.main(base) == 1
    assert seen["weights"] == "default"


def test_missing_input_file_leaves_no_output(tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["predict", "wmh_ensemble", *UNTRAINED, "--input",
                   f"flair={tmp_path / 'missing.nii.gz'}", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and len(error_lines(err)) == 1 and "missing.nii.gz" in err
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_refuses_to_overwrite_an_input(tmp_path, capsys, cached_load):
    folder = tmp_path / "subject"
    flair = write_volume(folder / "wmh.nii.gz")
    before = flair.read_bytes()
    rc = cli.main(["predict", "wmh_ensemble", *UNTRAINED, "--input", f"flair={flair}",
                   "-o", str(folder)])
    err = capsys.readouterr().err
    assert rc == 1 and len(error_lines(err)) == 1 and "overwrite" in err
    assert flair.read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["wmh.nii.gz"]


# --- predict: cohort -------------------------------------------------------------------------------
def write_cohort(tmp_path: Path, n: int, bad: tuple[int, ...] = ()) -> Path:
    """``cohort/cohort.csv`` with ``n`` subjects s0..s{n-1} and relative paths; the subjects
    in ``bad`` get a text file named like a NIfTI (they fail fast, without a network call)."""
    folder = tmp_path / "cohort"
    rows = []
    for i in range(n):
        rel = Path(f"s{i}") / "flair.nii.gz"
        if i in bad:
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text("this is not a NIfTI file\n")
        else:
            write_volume(folder / rel, seed=i)
        rows.append({"subject": f"s{i}", "flair": str(rel)})
    pd.DataFrame(rows).to_csv(folder / "cohort.csv", index=False)
    return folder / "cohort.csv"


def test_input_list_continues_past_a_failure(tmp_path, capsys, cached_load):
    csv = write_cohort(tmp_path, 3, bad=(1,))
    out = tmp_path / "out"
    rc = cli.main(["predict", "wmh_ensemble", *UNTRAINED, "--input-list", str(csv), "-o", str(out)])
    captured = capsys.readouterr()
    assert rc == 1 and len(cached_load) == 1            # the model is loaded once
    assert "2 ok, 1 failed" in captured.out
    report = pd.read_csv(out / "report.csv", keep_default_na=False)
    assert list(report.columns) == cli.REPORT_COLUMNS
    assert list(report["subject"]) == ["s0", "s1", "s2"]
    assert list(report["status"]) == ["ok", "failed", "ok"]
    failed = report.iloc[1]
    assert failed["error_type"] == "UnreadableImageError" and "flair.nii.gz" in failed["error"]
    assert "\n" not in failed["error"]
    for i in (0, 2):
        row = report.iloc[i]
        assert Path(row["outputs"]) == out / f"s{i}"
        assert (out / f"s{i}" / "wmh.nii.gz").is_file()
        assert set(json.loads(row["volumes_ml"])) == {"wmh"} and row["seconds"] > 0
    assert not (out / "s1" / "wmh.nii.gz").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_input_list_custom_report(tmp_path, capsys, cached_load):
    csv = write_cohort(tmp_path, 1, bad=(0,))
    report = tmp_path / "reports" / "mine.csv"
    rc = cli.main(["predict", "wmh_ensemble", *UNTRAINED, "--input-list", str(csv),
                   "-o", str(tmp_path / "out"), "--report", str(report)])
    captured = capsys.readouterr()
    assert rc == 1 and "0 ok, 1 failed" in captured.out and "s0 failed" in captured.err
    assert list(pd.read_csv(report)["status"]) == ["failed"]
    assert not (tmp_path / "out" / "report.csv").exists()


def test_shards_are_disjoint_and_cover_all_rows(tmp_path, capsys, cached_load):
    csv = write_cohort(tmp_path, 3, bad=(0, 2))         # one real prediction keeps this fast
    out = tmp_path / "out"
    done, codes = [], []
    for i in (1, 2):
        codes.append(cli.main(["predict", "wmh_ensemble", *UNTRAINED, "--input-list", str(csv),
                               "-o", str(out), "--shard", f"{i}/2"]))
        done.append(list(pd.read_csv(out / f"report_shard{i}of2.csv")["subject"]))
    assert done == [["s0", "s2"], ["s1"]]              # round robin on the row position
    assert codes == [1, 0]
    summaries = [line for line in capsys.readouterr().out.splitlines() if " failed" in line]
    assert summaries == ["0 ok, 2 failed", "1 ok, 0 failed"]
    assert not (out / "report.csv").exists()
    assert (out / "s1" / "wmh.nii.gz").is_file()


def test_read_input_list_columns_and_paths(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "list.csv").write_text("id,flair,brain_mask\na,a/f.nii.gz,\nb,/abs/f.nii.gz,m.nii.gz\n")
    rows = cli.read_input_list(folder / "list.csv")
    base = folder.resolve()
    assert rows == [("a", {"flair": str(base / "a" / "f.nii.gz")}),
                    ("b", {"flair": "/abs/f.nii.gz", "brain_mask": str(base / "m.nii.gz")})]
    assert cli.read_input_list(folder / "list.csv", shard=(2, 2)) == rows[1:]


@pytest.mark.parametrize("text, match", [
    ("name,flair\na,f.nii.gz\n", "subject column"),
    ("subject,flair\na,f.nii.gz\na,g.nii.gz\n", "more than once"),
    ("subject,flair\n../x,f.nii.gz\n", "folder name"),
])
def test_bad_input_list_fails_before_loading(tmp_path, capsys, monkeypatch, text, match):
    monkeypatch.setattr(zoo, "load", lambda *a, **k: pytest.fail("model loaded"))
    (tmp_path / "c.csv").write_text(text)
    rc = cli.main(["predict", "wmh_ensemble", "--untrained", "--input-list",
                   str(tmp_path / "c.csv"), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1 and len(error_lines(err)) == 1 and match in err


def test_unknown_column_and_report_over_input(tmp_path, capsys, cached_load):
    csv = write_cohort(tmp_path, 1)
    text = csv.read_text()
    rc = cli.main(["predict", "wmh_ensemble", *UNTRAINED, "--input-list", str(csv),
                   "-o", str(tmp_path / "out"), "--report", str(csv)])
    assert rc == 1 and "refusing to overwrite" in capsys.readouterr().err
    assert csv.read_text() == text
    csv.write_text("subject,flair,flar\ns0,s0/flair.nii.gz,x\n")
    rc = cli.main(["predict", "wmh_ensemble", *UNTRAINED, "--input-list", str(csv),
                   "-o", str(tmp_path / "out")])
    assert rc == 1 and "'flar'" in capsys.readouterr().err
    csv.write_text("subject,brain_mask\ns0,s0/flair.nii.gz\n")
    rc = cli.main(["predict", "wmh_ensemble", *UNTRAINED, "--input-list", str(csv),
                   "-o", str(tmp_path / "out")])
    assert rc == 1 and "required column(s) ['flair']" in capsys.readouterr().err
    assert not (tmp_path / "out" / "s0").exists()


# --- smoke test of the installed entry point ----------------------------------------------------
def test_console_entry_point_subprocess():
    proc = subprocess.run([sys.executable, "-m", "zoo.cli", "list"], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr
    assert "wmh_ensemble" in proc.stdout
