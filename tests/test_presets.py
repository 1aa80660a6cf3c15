"""``zoo fetch NAME --upstream`` against a local HTTP server (issue 15): download, sha256
recorded and printed, conversion (float32), cache reuse; a changed file is refused; an interrupted
download leaves nothing at the final path and the next fetch resumes it (HTTP Range). No network: the card's figshare URLs are served under their last path
part by the test server (``--mirror``)."""

from __future__ import annotations

import hashlib
import json
import shutil
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

import zoo
from zoo import cli, errors, presets, weights
from zoo.converters.keras2_h5 import write_keras2_h5
from zoo.converters.seeded import layout_spec_of, seeded_layout
from zoo.entries import wmh_ensemble

ENTRY, VARIANT = "wmh_ensemble", "flair"


@pytest.fixture(scope="module")
def upstream_bytes(tmp_path_factory) -> list[bytes]:
    """Three seeded FLAIR-only files in the authors' Keras 2 layout (the layout taken from the
    zoo's own builder: layer names differ from the authors', the converter goes by order)."""
    card = zoo.card(ENTRY)
    spec = layout_spec_of(wmh_ensemble.build_member(card, VARIANT, 0))
    folder = tmp_path_factory.mktemp("upstream_files")
    return [write_keras2_h5(folder / f"m{i}.h5", seeded_layout(spec, 700 + i)).read_bytes() for i in range(3)]


def _routes(server, blobs: list[bytes], mode: str = "ok") -> list[str]:
    """Serve ``blobs`` under the card URLs' last parts; return the card URLs."""
    rec = presets.upstream_record(zoo.card(ENTRY), VARIANT)
    urls = [f["url"] for f in sorted(rec["files"], key=lambda f: f["member"])]
    for url, blob in zip(urls, blobs):
        server.routes["/files/" + Path(urllib.parse.urlparse(url).path).name] = (mode, blob)
    return urls


def _fetch(server, capsys) -> tuple[int, str, str]:
    code = cli.main(["fetch", ENTRY, "--variant", VARIANT, "--upstream", "--mirror", server.url + "/files"])
    out, err = capsys.readouterr()
    return code, out, err


def test_fetch_upstream_records_converts_and_caches(server, upstream_bytes, capsys):
    urls = _routes(server, upstream_bytes)
    code, out, err = _fetch(server, capsys)
    assert code == 0, err
    digests = [hashlib.sha256(b).hexdigest() for b in upstream_bytes]
    for d in digests:
        assert f"recorded sha256 {d}" in out
    records = json.loads((weights.zoo_home() / "upstream" / "sha256.json").read_text())
    assert [records[u]["sha256"] for u in urls] == digests
    folder = presets.converted_dir(ENTRY, VARIANT)
    manifest = json.loads((folder / presets.MANIFEST).read_text())
    assert [m["upstream_sha256"] for m in manifest["members"]] == digests
    # float32 storage: exactly the upstream arrays
    with np.load(folder / "member0.npz") as npz:
        kernels = [npz[k] for k in npz.files if k.endswith("kernel")]
    assert all(k.dtype == np.float32 for k in kernels)
    # the cached conversion is reused: no new request, load works offline
    n_requests = len(server.requests)
    code, out, _ = _fetch(server, capsys)
    assert code == 0 and "recorded" not in out and len(server.requests) == n_requests
    model = zoo.load(ENTRY, variant=VARIANT, weights="upstream")
    assert model.card.profile == "antspynet" and len(model.models) == 3
    assert len(server.requests) == n_requests


def test_fetch_upstream_refuses_a_changed_file(server, upstream_bytes, capsys):
    _routes(server, upstream_bytes)
    assert _fetch(server, capsys)[0] == 0
    # the published file changes: a fresh raw cache and conversion must refuse it
    blob = bytearray(upstream_bytes[0])
    blob[len(blob) // 2] ^= 0xFF  # one byte of a kernel changed
    changed = [bytes(blob), *upstream_bytes[1:]]

    shutil.rmtree(weights.zoo_home() / "upstream" / ENTRY)
    shutil.rmtree(presets.converted_dir(ENTRY, VARIANT))
    _routes(server, changed)
    code, out, err = _fetch(server, capsys)
    assert code == 1 and "no longer has the sha256" in err
    assert not (weights.zoo_home() / "upstream" / ENTRY / "sysuMediaWmhFlairOnlyModel0.h5").exists()
    with pytest.raises(errors.UpstreamHashChangedError):
        presets.fetch(ENTRY, VARIANT, mirror=server.url + "/files")


def test_fetch_upstream_interrupted_leaves_nothing_then_resumes(server, upstream_bytes, capsys):
    """A cut-off download: nothing at the final path, no digest recorded, no converted weights;
    only the hidden staging file. The next ``zoo fetch`` asks for the rest (``Range``), checks
    the sha256 of the whole file, records it and converts."""
    _routes(server, upstream_bytes, mode="cut")
    code, out, err = _fetch(server, capsys)
    assert code == 1 and "interrupted" in err and "resumes" in err
    raw = weights.zoo_home() / "upstream" / ENTRY
    name = "sysuMediaWmhFlairOnlyModel0.h5"
    assert not (raw / name).exists()
    assert sorted(p.name for p in raw.iterdir()) == [f".{name}.part", f".{name}.part.json"]
    staged = (raw / f".{name}.part").stat().st_size
    assert 0 < staged < len(upstream_bytes[0])
    assert not (weights.zoo_home() / "upstream" / "sha256.json").exists()
    converted = presets.converted_dir(ENTRY, VARIANT)
    assert not converted.exists() or not any(converted.glob("*.npz"))

    _routes(server, upstream_bytes)  # the server answers in full again, with Range support
    code, out, err = _fetch(server, capsys)
    assert code == 0, err
    assert [h["Range"] for h in server.headers if "Range" in h] == [f"bytes={staged}-"]
    assert f"recorded sha256 {hashlib.sha256(upstream_bytes[0]).hexdigest()}" in out
    assert (raw / name).read_bytes() == upstream_bytes[0]
    assert sorted(p.name for p in raw.iterdir()) == sorted(f"sysuMediaWmhFlairOnlyModel{i}.h5" for i in range(3))
    assert sorted(p.name for p in converted.glob("*.npz")) == [f"member{i}.npz" for i in range(3)]


def test_fetch_from_dir_offline_and_changed_local_file(tmp_path, upstream_bytes, capsys):
    folder = tmp_path / "copy"
    folder.mkdir()
    for i, blob in enumerate(upstream_bytes):
        (folder / f"sysuMediaWmhFlairOnlyModel{i}.h5").write_bytes(blob)
    assert cli.main(["fetch", ENTRY, "--variant", VARIANT, "--upstream", "--from-dir", str(folder)]) == 0
    assert "recorded sha256" in capsys.readouterr().out
    (folder / "sysuMediaWmhFlairOnlyModel1.h5").write_bytes(upstream_bytes[0])  # another file
    with pytest.raises(errors.UpstreamHashChangedError, match="sysuMediaWmhFlairOnlyModel1"):
        presets.fetch(ENTRY, VARIANT, source=folder)


def test_finetune_neonatal_from_the_adult_upstream_preset(tmp_path, capsys):
    """``zoo finetune neonatal_claustrum --from claustrum_multiview:upstream`` starts from the
    converted adult weights (here the seeded parity weights in the authors' layout): the coronal
    run starts from coronal member 0 = converted member3.npz, which holds the upstream arrays
    exactly (float32)."""
    from test_claustrum_transfer import _subjects
    from test_upstream_parity import load_fixture, write_upstream_folder

    from zoo.entries import claustrum_common as cc

    arrays, meta = load_fixture("claustrum_mni152")
    folder = write_upstream_folder(tmp_path / "upstream", meta)
    assert cli.main(["fetch", "claustrum_multiview", "--upstream", "--from-dir", str(folder)]) == 0
    converted = presets.converted_dir("claustrum_multiview", "multiview")
    model = cc.build_member(zoo.card("claustrum_multiview"), "multiview", 3)
    weights.load_weights(model, converted / "member3.npz")
    layers = [layer for layer in model.layers if layer.weights]
    expected = seeded_layout(meta["layout"], meta["seeds"][3])  # claustrum_coronal_0
    np.testing.assert_array_equal(np.asarray(layers[0].weights[0]), expected[0][1][0][1])

    data = _subjects(tmp_path)
    rc = cli.main(["finetune", "neonatal_claustrum", "--from", "claustrum_multiview:upstream",
                   "--data", str(data), "--option", "view=coronal", "--members", "1", "--epochs", "1",
                   "--steps-per-epoch", "1", "--batch-size", "4", "--set", "data.patch_size=64",
                   "--set", "collapse_guard.loss_above=1.0",
                   "--out", str(tmp_path / "run")])
    assert rc == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "run" / "run_record.json").read_text(encoding="utf-8"))
    assert record["init_from"] == [str(converted / "member3.npz")]


def test_predict_cli_refuses_a_profile_of_other_weights(tmp_path, capsys, shared_data):
    flair = shared_data / "open_ms" / "mni" / "patient19" / "flair.nii.gz"
    code = cli.main(["predict", ENTRY, "--variant", VARIANT, "--profile", "antspynet",
                     "--input", f"flair={flair}", "-o", str(tmp_path / "out")])
    assert code == 1 and "does not belong to the card weights" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
