"""Public sample scans (``zoo.samples``) and ``zoo demo``.

The offline mirror is ``../shared/data`` (byte-identical copies of the upstream files); the
download path is exercised against a local HTTP server on 127.0.0.1 serving the same files,
a corrupted copy and an interrupted transfer. Small LIDC nodule volumes keep transfers tiny.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from zoo import cli, errors, samples, weights

NODULE = "lidc_voi/LIDC-IDRI-0001_R_1"


def _no_internet(monkeypatch, server_url: str | None = None):
    """Only ``$ZOO_SAMPLES_URL`` (a local server, or a closed local port) is ever contacted."""
    monkeypatch.setenv(samples.URL_ENV, server_url or "http://127.0.0.1:9")
    monkeypatch.setattr(samples.SampleFile, "urls",
                        lambda self: [samples.os.environ[samples.URL_ENV].rstrip("/") + "/" + self.file])
    monkeypatch.delenv(samples.MIRROR_ENV, raising=False)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)


def test_registry_pins_sources_and_checksums():
    ids = samples.list_samples()
    assert {"open_ms_mni/patient07", "open_ms_mni/patient19", "ixi/IXI002"} <= set(ids)
    assert len(samples.list_samples("lidc_voi")) == 812
    files = samples.sample_files("open_ms_mni/patient19")
    assert set(files) == {"flair", "t1", "t2", "t1post", "lesion"}
    for f in files.values():
        assert f.repo == "muschellij2/open_ms_data"
        assert f.commit == "65704901f60650824565aa5a4818611aa89716f4"
        assert f.upstream_path.startswith("cross_sectional/MNI/patient19/")
        assert len(f.sha256) == 64
        assert f.urls()[-2] == (f"https://raw.githubusercontent.com/muschellij2/open_ms_data/"
                                f"65704901f60650824565aa5a4818611aa89716f4/{f.upstream_path}")
    info = samples.info("open_ms_mni/patient19")
    assert "CC-BY" in info["licence"] and "Lesjak" in info["attribution"]


def test_unknown_sample_names_close_matches():
    with pytest.raises(errors.SampleNotFoundError, match="open_ms_mni/patient19"):
        samples.sample_files("open_ms_mni/patient9")
    with pytest.raises(errors.SampleNotFoundError, match="has no file"):
        samples.fetch("open_ms_mni/patient19", ["dwi"])


def test_registry_matches_the_shared_manifest(shared_data):
    """Every registered file has the manifest's sha256 (the registry was generated from it)."""
    import csv

    manifest = {r["path"]: r["sha256"] for r in csv.DictReader(open(shared_data / "manifest.csv", encoding="utf-8"))}
    for sample in samples.list_samples():
        for f in samples.sample_files(sample).values():
            assert manifest[f.file] == f.sha256, f.file


def test_offline_mirror_in_the_shared_layout(shared_data, monkeypatch):
    monkeypatch.setenv(samples.MIRROR_ENV, str(shared_data))
    paths = samples.fetch("open_ms_mni/patient19", ["flair", "lesion"])
    assert paths["flair"] == shared_data / "open_ms" / "mni" / "patient19" / "flair.nii.gz"
    assert not (weights.zoo_home() / "samples").exists()  # used in place, nothing copied


def test_offline_mirror_in_the_upstream_layout_and_a_wrong_file(shared_data, tmp_path):
    f = samples.sample_files(NODULE)["image"]
    dest = tmp_path / f.upstream_path
    dest.parent.mkdir(parents=True)
    shutil.copyfile(shared_data / f.file, dest)
    assert samples.fetch(NODULE, ["image"], mirror=tmp_path)["image"] == dest
    dest.write_bytes(b"not the scan")
    with pytest.raises(errors.ChecksumError, match="sha256"):
        samples.fetch(NODULE, ["image"], mirror=tmp_path)


def test_download_from_a_local_server_then_the_cache(shared_data, server, monkeypatch):
    _no_internet(monkeypatch, server.url)
    files = samples.sample_files(NODULE)
    for f in files.values():
        server.routes["/" + f.file] = ("ok", (shared_data / f.file).read_bytes())
    paths = samples.fetch(NODULE)
    for role, f in files.items():
        assert paths[role] == weights.zoo_home() / "samples" / f.file
        assert weights.sha256_file(paths[role]) == f.sha256
    n = len(server.requests)
    assert samples.fetch(NODULE) == paths  # from the cache: no new request
    assert len(server.requests) == n


def _leftovers(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_corrupted_download_leaves_nothing(shared_data, server, monkeypatch):
    _no_internet(monkeypatch, server.url)
    f = samples.sample_files(NODULE)["image"]
    body = bytearray((shared_data / f.file).read_bytes())
    body[len(body) // 2] ^= 0xFF
    server.routes["/" + f.file] = ("ok", bytes(body))
    with pytest.raises(errors.ChecksumError, match="sha256"):
        samples.fetch(NODULE, ["image"])
    assert _leftovers(weights.zoo_home() / "samples") == []


def test_interrupted_download_leaves_no_file_and_resumes(shared_data, server, monkeypatch):
    """A cut-off download leaves no sample file, only the hidden resumable staging pair
    (zoo.transfer); the next fetch resumes it with a Range request and verifies the whole file."""
    _no_internet(monkeypatch, server.url)
    f = samples.sample_files(NODULE)["image"]
    body = (shared_data / f.file).read_bytes()
    server.routes["/" + f.file] = ("truncated", body)
    with pytest.raises(errors.SampleNotAvailableError, match="ZOO_SAMPLES_DIR"):
        samples.fetch(NODULE, ["image"])
    folder = weights.zoo_home() / "samples"
    assert all(Path(name).name.startswith(".") for name in _leftovers(folder))  # nothing visible
    assert not (folder / f.file).exists()
    server.routes["/" + f.file] = ("ok", body)
    path = samples.fetch(NODULE, ["image"])["image"]
    assert path.read_bytes() == body
    assert server.headers[-1].get("Range", "").startswith("bytes=") and server.headers[-1]["Range"] != "bytes=0-"
    assert _leftovers(folder) == [Path(f.file).name]


def test_demo_offline_without_mirror_fails_with_one_line(monkeypatch, capsys, tmp_path):
    _no_internet(monkeypatch)
    assert cli.main(["demo", "-o", str(tmp_path / "out")]) == 1
    from zoo.terminal import is_device_line

    err = "\n".join(x for x in capsys.readouterr().err.strip().splitlines() if not is_device_line(x))
    assert len(err.splitlines()) == 1, err
    assert "ZOO_SAMPLES_DIR" in err and "open_ms/mni/patient19/flair.nii.gz" in err
    assert not (tmp_path / "out").exists()


def test_demo_unknown_entry(capsys):
    assert cli.main(["demo", "no_such_entry"]) == 1
    assert "unknown entry" in capsys.readouterr().err


@pytest.mark.realdata
def test_demo_with_the_shared_data_as_mirror(shared_data, monkeypatch, capsys, tmp_path):
    """``zoo demo`` end to end on patient 19 (full volume): NIfTI outputs on the sample's grid,
    an overlay PNG, a summary, and a lesion volume in the range of the consensus mask (49.8 mL)."""
    monkeypatch.setenv(samples.MIRROR_ENV, str(shared_data))
    out = tmp_path / "demo"
    assert cli.main(["demo", "wmh_ensemble", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wmh:" in printed and "overlay:" in printed and "CC-BY" in printed
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    flair = nib.load(shared_data / "open_ms" / "mni" / "patient19" / "flair.nii.gz")
    wmh = nib.load(out / "wmh.nii.gz")
    assert wmh.shape == flair.shape and np.allclose(wmh.affine, flair.affine)
    assert (out / "overlay_wmh.png").stat().st_size > 1000
    assert 10.0 < summary["volumes_ml"]["wmh"] < 250.0
    lesion = np.asarray(nib.load(shared_data / "open_ms" / "mni" / "patient19" / "lesion.nii.gz").dataobj) > 0
    pred = np.asarray(wmh.dataobj) > 0
    assert 2 * (pred & lesion).sum() / (pred.sum() + lesion.sum()) > 0.3
