"""Progressive training (training/phases.py): phases in order, weights chained, options and
frozen layers per phase, resume by phase; and a real two-phase lung_nodule run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from zoo import errors, registry
from zoo.training import datasets
from zoo.training.phases import phase_card, phase_recipe, train_phases
from zoo.training.recipe import load_recipe


def _fake_run(calls):
    """A stand-in for one training run: records its arguments and writes a weights file."""
    def run(card, recipe, out, *, init_from=None, epochs=None):
        out.mkdir(parents=True, exist_ok=True)
        (out / "member0.npz").write_bytes(out.name.encode())
        calls.append({"out": out.name, "init": [p.name if hasattr(p, "name") else p for p in init_from or []],
                      "init_parent": [p.parent.name for p in init_from or []],
                      "pad_shape": card.option_value("pad_shape"), "downsample": card.option_value("downsample"),
                      "epochs": epochs or recipe["epochs"], "lr": recipe["optimizer"]["learning_rate"],
                      "freeze": recipe["finetune"]["freeze"], "phases": recipe["phases"]})
        record = {"entry": card.id, "card_version": card.version, "variant": recipe["variant"],
                  "task": recipe["task"], "command": "test",
                  "members": [{"member": 0, "epochs": epochs or recipe["epochs"], "seconds": 1.0,
                               "steps_per_epoch": 1, "history": {"loss": [0.5]},
                               "weights": {"file": "member0.npz", "sha256": "x", "size": 1}}]}
        (out / "run_record.json").write_text(json.dumps(record), encoding="utf-8")
        return record
    return run


def test_recipe_phases_follow_the_spec():
    """lung_nodule.yaml: 44x46x31 (88x92x62 / 2), then 88x91x62 frozen convs, then all layers."""
    rec = load_recipe("lung_nodule")
    p1, p2a, p2b = rec["phases"]
    assert (p1["options"], p1["epochs"]) == ({"pad_shape": [88, 92, 62], "downsample": 2}, 20)
    assert (p2a["options"], p2a["epochs"], p2a["learning_rate"]) == ({"pad_shape": [88, 91, 62], "downsample": 1}, 10, 6e-4)
    assert (p2b["epochs"], p2b["learning_rate"], p2b.get("freeze", [])) == (12, 5e-5, [])


def test_phases_run_in_order_chaining_weights(tmp_path):
    card, rec = registry.card("lung_nodule"), load_recipe("lung_nodule")
    calls = []
    record = train_phases(card, rec, tmp_path / "run", _fake_run(calls))
    assert [c["out"] for c in calls] == ["phase1", "phase2a", "phase2b"]
    assert calls[0]["init"] == [] and calls[1]["init_parent"] == ["phase1"] and calls[2]["init_parent"] == ["phase2a"]
    assert [(c["pad_shape"], c["downsample"]) for c in calls] == [([88, 92, 62], 2), ([88, 91, 62], 1), ([88, 91, 62], 1)]
    assert [c["epochs"] for c in calls] == [20, 10, 12]
    assert [c["lr"] for c in calls] == [rec["optimizer"]["learning_rate"], 6e-4, 5e-5]
    assert calls[1]["freeze"] == ["stem_conv", "cr*_conv"] and calls[2]["freeze"] == []
    assert all(c["phases"] is None for c in calls)
    assert (tmp_path / "run" / "member0.npz").read_bytes() == b"phase2b"  # the last phase's weights
    assert record["final_options"] == {"pad_shape": [88, 91, 62], "downsample": 1}
    assert [p["name"] for p in record["phases"]] == ["phase1", "phase2a", "phase2b"]
    assert record["deviations"]  # lr_div_early is recorded as not applied
    assert json.loads((tmp_path / "run" / "run_record.json").read_text(encoding="utf-8"))["phases"]


def test_phases_resume_skips_finished_phases_and_epochs_override(tmp_path):
    card, rec = registry.card("lung_nodule"), load_recipe("lung_nodule")
    train_phases(card, rec, tmp_path / "run", _fake_run([]), epochs=1)
    (tmp_path / "run" / "phase2b" / "run_record.json").unlink()  # phase2b "interrupted"
    calls = []
    train_phases(card, rec, tmp_path / "run", _fake_run(calls), epochs=1)
    assert [c["out"] for c in calls] == ["phase2b"] and calls[0]["epochs"] == 1
    assert calls[0]["init_parent"] == ["phase2a"]


def test_stop_after_runs_the_first_phases_and_resumes(tmp_path):
    """stop_after=phase1 runs phase 1 only (the top-level weights are its); the same call
    without it resumes with phases 2a and 2b."""
    card, rec, calls = registry.card("lung_nodule"), load_recipe("lung_nodule"), []
    record = train_phases(card, rec, tmp_path / "run", _fake_run(calls), stop_after="phase1")
    assert [c["out"] for c in calls] == ["phase1"] and [p["name"] for p in record["phases"]] == ["phase1"]
    assert record["final_options"] == {"pad_shape": [88, 92, 62], "downsample": 2}
    assert (tmp_path / "run" / "member0.npz").read_bytes() == b"phase1"
    train_phases(card, rec, tmp_path / "run", _fake_run(calls))
    assert [c["out"] for c in calls] == ["phase1", "phase2a", "phase2b"]
    with pytest.raises(errors.RecipeError, match="phase3"):
        train_phases(card, rec, tmp_path / "other", _fake_run([]), stop_after="phase3")


def test_phase_errors():
    card, rec = registry.card("lung_nodule"), load_recipe("lung_nodule")
    with pytest.raises(errors.RecipeError, match="no phases"):
        train_phases(card, {**rec, "phases": None}, "unused", _fake_run([]))
    with pytest.raises(errors.RecipeError, match="repeat"):
        train_phases(card, {**rec, "phases": [rec["phases"][0]] * 2}, "unused", _fake_run([]))
    with pytest.raises(errors.CardError, match="unknown option"):
        phase_card(card, {"name": "x", "epochs": 1, "options": {"no_such_option": 1}})
    assert phase_recipe(rec, {"name": "x", "epochs": 3})["optimizer"] == rec["optimizer"]


def test_two_phase_lung_training_freezes_convs_and_chains(shared_data, tmp_path):
    """Real data, two tiny phases through `zoo train`: phase b starts from phase a's weights,
    its frozen convolutions stay bit-identical while its BatchNorms keep updating (trainable)."""
    from zoo.cli import main

    phases = ("[{name: a, epochs: 1, options: {pad_shape: [32, 32, 32], downsample: 2}}, "
              "{name: b, epochs: 1, options: {pad_shape: [32, 32, 32], downsample: 1}, learning_rate: 1.0e-4, "
              "freeze: [stem_conv, 'cr*_conv']}]")
    data = tmp_path / "voi"
    data.mkdir()
    src = shared_data / "lidc_voi"
    cases = []
    for s in datasets.lidc_voi(src):  # patients until 4 labelled nodules
        cases += [n["case"] for n in s.meta["nodules"]]
        if sum(n["label"] is not None for n in s.meta["nodules"]) and len(cases) >= 4:
            break
    lines = (src / "nodules.csv").read_text(encoding="utf-8").splitlines()
    keep = [lines[0]] + [ln for ln in lines[1:] if ln.split(",")[lines[0].split(",").index("case")] in cases]
    (data / "nodules.csv").write_text("\n".join(keep) + "\n", encoding="utf-8")
    for c in cases:
        (data / c).symlink_to(src / c)
    out = tmp_path / "run"
    rc = main(["train", "lung_nodule", "--data", str(data), "--set", f"phases={phases}", "--batch-size", "2",
               "--steps-per-epoch", "2", "--strategy", "none", "--out", str(out)])
    assert rc == 0
    record = json.loads((out / "run_record.json").read_text(encoding="utf-8"))
    assert [p["name"] for p in record["phases"]] == ["a", "b"]
    assert record["final_options"] == {"pad_shape": [32, 32, 32], "downsample": 1}
    assert record["trained_options"] == {"pad_shape": [32, 32, 32], "downsample": 1}  # the frame, for zoo.load
    b = json.loads((out / "b" / "run_record.json").read_text(encoding="utf-8"))
    a = json.loads((out / "a" / "run_record.json").read_text(encoding="utf-8"))
    assert a["trained_options"] == {"pad_shape": [32, 32, 32], "downsample": 2}
    assert b["init_from"] == [str(out / "a" / "member0.npz")]
    assert b["data"]["input_shape"] == [32, 32, 32, 1]
    assert any(n.startswith("cr5_c_conv") for n in b["members"][0]["frozen_layers"])
    assert not any("_bn" in n for n in b["members"][0]["frozen_layers"])
    assert math.isfinite(b["members"][0]["history"]["loss"][0])
    wa, wb = np.load(out / "a" / "member0.npz"), np.load(out / "b" / "member0.npz")
    conv = [k for k in wa.files if "cr3_b_conv" in k and "kernel" in k]
    bn = [k for k in wa.files if "cr3_b_bn" in k and "moving_mean" in k]
    assert conv and bn
    assert all(np.array_equal(wa[k], wb[k]) for k in conv)
    assert any(not np.array_equal(wa[k], wb[k]) for k in bn)
    assert (out / "member0.npz").read_bytes() == (out / "b" / "member0.npz").read_bytes()
