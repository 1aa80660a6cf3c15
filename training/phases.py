"""Progressive training: a recipe's ``phases`` run in order by one command.

A phase changes what the card options, the learning rate, the frozen layers and the number of
epochs are, and starts from the previous phase's weights (the first phase from the run's own
start weights, or a fresh initialisation). The canonical case is progressive resizing
(``lung_nodule``, spec ``specs/lung_nodule.md`` §5):

    phase1  options pad_shape 88x92x62, downsample 2 (input 44x46x31), 20 epochs, lr 1e-3
    phase2a options pad_shape 88x91x62, downsample 1 (input 88x91x62), 10 epochs, lr 6e-4,
            conv groups frozen
    phase2b same input, 12 epochs, lr 5e-5, all layers trainable

Layout of the run folder ``OUT``::

    OUT/<phase name>/       one ordinary run (member{i}.npz, logs, checkpoints, run_record.json)
    OUT/member{i}.npz       the last phase's weights (what ``zoo.training.release`` ships)
    OUT/run_record.json     {"phases": [per-phase records], "final_options": {...}, ...}

Re-running the same command resumes: a phase whose ``run_record.json`` exists is skipped, and
an interrupted phase resumes from its BackupAndRestore state (:func:`trainer.train`).

``lr_div_early`` (fastai's ``slice(lr / div, lr)``, discriminative learning rates) is recorded
but not applied: Keras 3 optimizers have one learning rate per optimizer, so every trainable
layer uses ``learning_rate`` (a documented deviation, listed in the run record).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from zoo import errors
from zoo.card import ModelCard


def phase_recipe(recipe: Mapping[str, Any], phase: Mapping[str, Any]) -> dict[str, Any]:
    """The single-run recipe of ``phase``: ``epochs``, ``optimizer.learning_rate`` and
    ``finetune.freeze`` replaced by the phase's values (others kept); ``phases`` removed."""
    rec = copy.deepcopy(dict(recipe))
    rec["phases"] = None
    rec["epochs"] = int(phase["epochs"])
    if "learning_rate" in phase:
        rec["optimizer"]["learning_rate"] = float(phase["learning_rate"])
    rec["finetune"] = {**rec.get("finetune", {}), "freeze": list(phase.get("freeze", []))}
    return rec


def phase_card(card: ModelCard, phase: Mapping[str, Any]) -> ModelCard:
    """``card`` with the phase's ``options`` applied (on top of the options it already has).
    Raises CardError for an option the card does not define."""
    options = dict(phase.get("options") or {})
    return card.with_options(options) if options else card


def train_phases(card: ModelCard, recipe: Mapping[str, Any], out_dir: str | Path,
                 run: Callable[..., dict[str, Any]], *, epochs: int | None = None,
                 init_from: Sequence[str | Path] | None = None, stop_after: str | None = None) -> dict[str, Any]:
    """Run every phase of ``recipe["phases"]`` in order.

    Args:
        card: the entry card (the user's options; each phase adds its own on top).
        recipe: a resolved recipe with a non-empty ``phases`` list.
        out_dir: the run folder (layout in the module docstring).
        run: ``run(card, recipe, out_dir, init_from=..., epochs=...) -> run record``: one
            ordinary training run (the caller binds data, strategy, members...).
        epochs: overrides every phase's epochs (a CPU budget); None keeps the recipe's.
        init_from: start weights of the first phase (one file per member), or None.
        stop_after: the name of the last phase to run now (e.g. ``phase1``, to evaluate it
            before spending the later phases' compute); the same call without it resumes
            with the next phase. None runs every phase.
    Returns:
        The combined record, also written to ``out_dir/run_record.json``; ``member{i}.npz``
        in ``out_dir`` are copies of the last phase's.
    Raises:
        RecipeError: no phases, two phases with the same name, or ``stop_after`` names none.
    """
    phases = list(recipe.get("phases") or [])
    if not phases:
        raise errors.RecipeError(f"recipe {recipe.get('id')!r} has no phases")
    names = [p["name"] for p in phases]
    if len(set(names)) != len(names):
        raise errors.RecipeError(f"recipe {recipe.get('id')!r}: phase names repeat: {names}")
    if stop_after is not None:
        if stop_after not in names:
            raise errors.RecipeError(f"recipe {recipe.get('id')!r} has no phase {stop_after!r}; phases: {names}")
        phases = phases[: names.index(stop_after) + 1]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records, start = [], list(init_from) if init_from else None
    for phase in phases:
        pdir = out / phase["name"]
        done = pdir / "run_record.json"
        if done.is_file():
            record = json.loads(done.read_text(encoding="utf-8"))
        else:
            rec = phase_recipe(recipe, phase)
            record = run(phase_card(card, phase), rec, pdir, init_from=start, epochs=epochs)
        record["phase"] = {k: v for k, v in phase.items()}
        records.append(record)
        start = [pdir / m["weights"]["file"] for m in record["members"]]
    for path in start:
        tmp = out / f".{path.name}.tmp"
        shutil.copyfile(path, tmp)
        tmp.replace(out / path.name)
    last = records[-1]
    combined = {
        "entry": last["entry"], "card_version": last["card_version"], "variant": last["variant"],
        "task": last["task"], "recipe": dict(recipe), "command": last.get("command"),
        "phases": [{"name": r["phase"]["name"], "options": r["phase"].get("options", {}),
                    "epochs": r["members"][0]["epochs"], "seconds": sum(m["seconds"] for m in r["members"]),
                    "record": f"{r['phase']['name']}/run_record.json"} for r in records],
        "final_options": dict(phases[-1].get("options") or {}),
        "deviations": (["lr_div_early not applied: one learning rate for every trainable layer"]
                       if any("lr_div_early" in p for p in phases) else []),
        "members": [{**m, "weights": {**m["weights"], "file": Path(m["weights"]["file"]).name}}
                    for m in last["members"]],
        "data": last.get("data"), "environment": last.get("environment"),
        "trained_options": last.get("trained_options", {}),
    }
    from zoo.training.trainer import _atomic_json

    _atomic_json(out / "run_record.json", combined)
    return combined
