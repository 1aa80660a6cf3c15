"""zoo.training.release: a run's weights copied into weights/ with verified sha256, and a
one-member run shipped as a chosen member (ensembles assembled from fold runs)."""

from __future__ import annotations

import json

import pytest

from zoo import errors
from zoo.training.release import ship
from zoo.weights import sha256_file


def _run(tmp_path, n_members=1, corrupt=False):
    run = tmp_path / "run"
    run.mkdir(parents=True)
    members = []
    for i in range(n_members):
        f = run / f"member{i}.npz"
        f.write_bytes(f"weights {i}".encode())
        members.append({"member": i, "weights": {"file": f.name, "sha256": sha256_file(f)}})
    if corrupt:
        (run / "member0.npz").write_bytes(b"changed")
    record = {"entry": "spine_vertebrae", "variant": "t2", "members": members}
    (run / "run_record.json").write_text(json.dumps(record), encoding="utf-8")
    return run


def test_ship_as_member(tmp_path):
    run = _run(tmp_path)
    recs = ship(run, "spine_vertebrae", "t2", tmp_path / "w", member=2)
    assert recs == [{"file": "spine_vertebrae/t2/member2.npz", "sha256": sha256_file(run / "member0.npz"),
                     "size": 9, "member": 2}]
    assert (tmp_path / "w" / "spine_vertebrae" / "t2" / "member2.npz").read_bytes() == b"weights 0"
    assert not (tmp_path / "w" / "spine_vertebrae" / "t2" / "member0.npz").exists()


def test_ship_refuses_wrong_checksum_entry_and_member_of_ensemble(tmp_path):
    with pytest.raises(errors.ChecksumError):
        ship(_run(tmp_path / "a", corrupt=True), "spine_vertebrae", "t2", tmp_path / "w")
    run = _run(tmp_path / "b", n_members=2)
    with pytest.raises(errors.ZooError, match="one-member"):
        ship(run, "spine_vertebrae", "t2", tmp_path / "w", member=1)
    with pytest.raises(errors.ZooError, match="not lung_nodule"):
        ship(run, "lung_nodule", "default", tmp_path / "w")
    assert [r["member"] for r in ship(run, "spine_vertebrae", "t2", tmp_path / "w")] == [0, 1]


def test_ship_as_another_variant_of_the_same_architecture(tmp_path):
    """lung_nodule's holdout model is a run of variant default shipped as variant holdout."""
    run = _run(tmp_path)
    record = json.loads((run / "run_record.json").read_text(encoding="utf-8"))
    record.update(entry="lung_nodule", variant="default", trained_options={"pad_shape": [88, 92, 62], "downsample": 2})
    (run / "run_record.json").write_text(json.dumps(record), encoding="utf-8")
    recs = ship(run, "lung_nodule", "default", tmp_path / "w", as_variant="holdout")
    assert recs[0]["file"] == "lung_nodule/holdout/member0.npz" and recs[0]["trained_options"]["downsample"] == 2
    assert (tmp_path / "w" / "lung_nodule" / "holdout" / "member0.npz").read_bytes() == b"weights 0"
    with pytest.raises(errors.ZooError, match="not a variant"):
        ship(run, "lung_nodule", "default", tmp_path / "w", as_variant="phase9")
