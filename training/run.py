"""``zoo train`` and ``zoo finetune`` as a library call: data layout, recipe, card options,
start weights and the trainer put together."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Mapping, Sequence

from zoo import errors, registry, weights as weights_mod
from zoo.training import datasets
from zoo.training.recipe import dotted_overrides, load_recipe

#: Card options applied for each dataset layout unless the user sets them (skull-stripped
#: public data with a zero background cannot use the paper's scanner-unit thresholds).
LAYOUT_OPTIONS: dict[str, dict[str, Any]] = {"open_ms": {"mask_method": "nonzero"}}


def detect_layout(data: Path) -> str:
    """Guess the dataset layout of ``data`` (a folder or a CSV).

    Returns one of ``csv``, ``lidc_voi`` (``nodules.csv`` with ``case, patient_id, malignancy``
    + ``<case>/{image,mask}.nii.gz``), ``wmh_challenge`` (``<site>/<subject>/wmh.nii.gz``), ``open_ms``
    (``<subject>/flair.nii.gz`` + ``lesion.nii.gz``), ``wmh_ms_clinical`` (``subjects.csv`` +
    ``<subject>/flair_raw.nii.gz``), ``spine_chu``
    (``<case>/mask_th12_l5.nii.gz``). Raises InputError when none matches.
    """
    if data.suffix.lower() == ".csv":
        return "csv"
    if not data.is_dir():
        raise errors.InputNotFoundError(f"training data not found: {data}")
    if (data / "cases.csv").is_file() and any(data.glob("*/brain_mask.nii.gz")):
        return "heads"
    if any(data.glob("*/*/wmh.nii.gz")):
        return "wmh_challenge"
    if (data / "subjects.csv").is_file() and any(data.glob("*/flair_raw.nii.gz")):
        return "wmh_ms_clinical"
    if any(data.glob("*/lesion.nii.gz")) and any(data.glob("*/flair.nii.gz")):
        return "open_ms"
    if any(data.glob("*/mask_th12_l5.nii.gz")):
        return "spine_chu"
    if (data / "nodules.csv").is_file() and any(data.glob("*/mask.nii.gz")) and \
            {"case", "patient_id", "malignancy"} <= set(
                (data / "nodules.csv").read_text(encoding="utf-8").splitlines()[0].split(",")):
        return "lidc_voi"
    if any(data.glob("*/flair.nii.gz")) and any(data.glob("*/t2.nii.gz")):
        return "multicontrast"
    if any(data.glob("img/*.nii*")) and (data / "seg").is_dir():
        return "chu2015"
    raise errors.InputError(
        f"{data}: unknown dataset layout; expected <site>/<subject>/wmh.nii.gz (WMH challenge), "
        "<subject>/{flair,t1,lesion}.nii.gz (open_ms), <case>/{image,mask_th12_l5}.nii.gz "
        "(spine_chu) or a CSV; or pass --layout")


def load_subjects(data: Path, layout: str, inputs: Sequence[str]) -> list:
    """Subjects of a dataset folder/CSV through the adapters of :mod:`zoo.training.datasets`."""
    layout = detect_layout(data) if layout == "auto" else layout
    if layout == "csv":
        return datasets.from_csv(data, inputs)
    if layout == "wmh_challenge":
        return datasets.wmh_challenge(data, inputs=tuple(inputs))
    if layout == "open_ms":
        return datasets.open_ms(data, tuple(inputs))
    if layout == "heads":
        return datasets.heads(data)
    if layout == "wmh_ms_clinical":
        from zoo.training.ms_clinical import wmh_ms_clinical

        return wmh_ms_clinical(data, tuple(i for i in inputs if i != "brain_mask"))
    if layout == "spine_chu":
        return datasets.spine_chu(data)
    if layout == "lidc_voi":
        return datasets.lidc_voi(data)
    if layout == "multicontrast":
        return datasets.multicontrast(data, tuple(inputs))
    if layout == "chu2015":
        return datasets.chu2015(data)
    raise errors.InputError(f"unknown layout {layout!r}")


def start_weights(init_from: str | Path, variant: str) -> list[Path]:
    """Weights to fine-tune from: a registered entry's weights (its ``variant`` if it has one,
    else its default), ``ENTRY:upstream`` (the authors' published weights of that entry, fetched
    or found in the cache and converted: :func:`zoo.presets.fetch`), a folder of
    ``member{i}.npz`` files, or one file."""
    name = str(init_from)
    source, _, kind = name.partition(":")
    if kind == "upstream" and source in registry.ENTRIES:
        from zoo import presets

        card = registry.card(source)
        own = variant if variant in card["variants"] and card["variants"][variant].get("upstream") else None
        return presets.fetch(source, own)[0]
    if name in registry.ENTRIES:
        card = registry.card(name)
        rec = card["variants"].get(variant) or card.variant(None)
        if not rec["weights"]:
            raise errors.WeightsNotAvailableError(f"{name} ships no weights to fine-tune from")
        return list(weights_mod.resolve(rec["weights"], name, variant))
    path = Path(name)
    if path.is_dir():
        files = sorted(path.glob("member*.npz"))
        if not files:
            raise errors.WeightsNotAvailableError(f"{path} holds no member*.npz weights")
        return files
    if path.is_file():
        return [path]
    raise errors.WeightsNotAvailableError(f"{init_from} is neither a registered entry nor a weights path")


def train_entry(name: str, data: str | Path, *, layout: str = "auto", recipe: str | None = None,
                variant: str | None = None, out_dir: str | Path | None = None, epochs: int | None = None,
                steps_per_epoch: int | None = None, members: int | None = None,
                batch_size: int | None = None, strategy: str = "auto", mixed_precision: str | None = None,
                val_ids: Sequence[str] = (), options: Mapping[str, Any] | None = None,
                resample: bool = False, init_from: str | Path | None = None,
                recipe_set: Mapping[str, Any] | None = None, command: str | None = None,
                phases: bool = True, split: str | Path | None = None, split_fold: str | None = None,
                stop_after: str | None = None, verbose: Any = "auto") -> dict[str, Any]:
    """Train (or, with ``init_from``, fine-tune) entry ``name`` on ``data``.

    ``split`` (a manifest, :func:`zoo.training.datasets.read_manifest`; its fold ``split_fold``,
    default its only fold) trains on the subjects of its ``train`` partition only and validates
    on its ``val`` partition (instead of ``val_ids``); subjects in neither are not used.
    ``stop_after`` ends a phased run after that phase (:func:`zoo.training.phases.train_phases`).

    ``recipe_set`` overrides recipe values by dotted key (``{"data.patch_size": 104}``).
    A recipe with ``phases`` (progressive resizing) runs them all in order
    (:func:`zoo.training.phases.train_phases`; ``epochs`` then overrides every phase's); with
    ``phases=False`` it is one run with the card's own options and the recipe's ``epochs``.
    Returns the run record (see :func:`zoo.training.trainer.train`) with ``out_dir`` added.
    Raises RecipeError, CardError, InputError subclasses, WeightsError.
    """
    from zoo.training.trainer import train

    data = Path(data)
    # --batch-size and --members are recipe values: set before the recipe is checked (a one-member
    # run with one seed, --members 1 --set seeds=[2], is valid)
    given = {"batch_size": batch_size, "members": members}
    overrides = dotted_overrides(recipe_set, {k: int(v) for k, v in given.items() if v is not None})
    rec = load_recipe(recipe or name, variant, overrides)
    detected = detect_layout(data) if layout == "auto" else layout
    layout_opts = {k: v for k, v in LAYOUT_OPTIONS.get(detected, {}).items() if k in registry.card(name)["options"]}
    card = registry.card(name).with_options({**layout_opts, **dict(options or {})})
    inputs = list(card.variant(rec["variant"])["inputs"])
    target = card.variant(rec["variant"]).get("target")  # synthesis entries also read their target image
    if target and target not in inputs:
        inputs.append(target)
    subjects = load_subjects(data, detected, inputs)
    if split is not None:
        if val_ids:
            raise errors.InputError("give either validation subjects (--val) or a split manifest (--split), not both")
        from zoo.training import datasets

        train_ids = datasets.manifest_part(split, "train", split_fold)
        val_ids = datasets.manifest_part(split, "val", split_fold)
        subjects = datasets.select(subjects, [*train_ids, *val_ids])
    val = [s for s in subjects if s.id in set(val_ids)]
    unknown = set(val_ids) - {s.id for s in subjects}
    if unknown:
        raise errors.InputError(f"validation subjects not in {data}: {sorted(unknown)}")
    train_subjects = [s for s in subjects if s.id not in set(val_ids)]
    init = start_weights(init_from, rec["variant"]) if init_from is not None else None
    entry = importlib.import_module(registry.ENTRIES[name])
    if init and hasattr(entry, "select_start_weights"):  # e.g. multi-view: the run's view only
        init = entry.select_start_weights(card, init)
    out = Path(out_dir) if out_dir else Path("runs") / f"{name}-{rec['variant']}"

    # every run_recipe derives from rec (phase_recipe copies it), so --members is already in it
    def run(run_card, run_recipe, run_out, *, init_from=None, epochs=None):
        return train(run_card, run_recipe, train_subjects, run_out, val_subjects=val,
                     epochs=epochs, steps_per_epoch=steps_per_epoch, strategy=strategy,
                     mixed_precision=mixed_precision, init_from=init_from, resample=resample,
                     command=command, verbose=verbose)

    if phases and rec.get("phases"):
        from zoo.training.phases import train_phases

        record = train_phases(card, rec, out, run, epochs=epochs, init_from=init, stop_after=stop_after)
    else:
        record = run(card, {**rec, "phases": None}, out, init_from=init, epochs=epochs)
    record["out_dir"] = str(out)
    return record
