"""``zoo demo``: run an entry on a public sample scan and show the result.

The sample comes from :mod:`zoo.samples` (offline mirror, cache or a checksummed download);
the entry runs through the public API (``zoo.load(...).predict(...)``) exactly as on a user's
scan; outputs are written as NIfTI on the sample's own grid, with a PNG overlay of a few
slices and a JSON summary.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo import errors, samples
from zoo.io import atomic_write_text, read_volume


@dataclass(frozen=True)
class Demo:
    """What ``zoo demo NAME`` runs.

    Attributes:
        sample: sample id (:func:`zoo.samples.list_samples`).
        inputs: entry input name -> sample file role (e.g. ``{"flair": "flair", "t1": "t1"}``).
        reference: sample role of a reference label drawn in green in the overlay, or None.
        note: one line printed with the result (what the sample is).
    """

    sample: str
    inputs: dict[str, str]
    reference: str | None = None
    note: str = ""
    options: dict[str, Any] = field(default_factory=dict)


#: Entry -> its demo. Patient 19 of the Ljubljana MS scans (open_ms MNI; 49.8 mL of consensus
#: lesions): skull-stripped with a zero background, hence ``mask_method=nonzero``.
DEMOS: dict[str, Demo] = {
    "wmh_ensemble": Demo(
        sample="open_ms_mni/patient19", inputs={"flair": "flair", "t1": "t1"}, reference="lesion",
        note="Ljubljana MS patient 19 (MNI 1 mm; a training subject of the shipped weights, not a held-out result: see the card's cross-validation); overlay against the consensus lesion mask: true positives green, false positives red, false negatives blue",
        options={"mask_method": "nonzero"}),
}


def _variant_with_weights(name: str, variant: str | None) -> str:
    """``variant``, or the card's default variant if it ships weights, else the first that does."""
    from zoo import registry

    card = registry.card(name)
    if variant is not None:
        return variant
    default = card["default_variant"]
    if card.variant(default)["weights"]:
        return default
    shipped = [v for v, rec in card["variants"].items() if rec["weights"]]
    if not shipped:
        raise errors.WeightsNotAvailableError(f"{name} ships no trained weights; the demo needs them")
    return shipped[0]


def run_demo(name: str = "wmh_ensemble", out_dir: str | os.PathLike | None = None, *,
             variant: str | None = None, mirror: str | os.PathLike | None = None) -> dict[str, Any]:
    """Fetch ``name``'s demo sample, predict, write outputs, an overlay PNG and ``summary.json``.

    Args:
        name: entry with a demo (:data:`DEMOS`).
        out_dir: output folder (default ``./zoo-demo/<name>``); outputs are written atomically and
            never over the sample files.
        variant: entry variant (default: the card's default variant if it ships weights, else
            the first variant that does).
        mirror: offline sample folder (default ``$ZOO_SAMPLES_DIR``).
    Returns:
        The summary: entry, variant, sample with licence and attribution, input and output
        paths, volumes in mL, the overlay path, timing in seconds.
    Raises:
        UnknownEntryError (no such entry), SampleError (no demo, or the sample cannot be had),
        ChecksumError, WeightsError, InputError subclasses.
    """
    import zoo
    from zoo import registry

    registry.card(name)  # UnknownEntryError for a misspelt entry
    if name not in DEMOS:
        raise errors.SampleError(f"no demo for {name!r}; demos exist for {sorted(DEMOS)}")
    demo = DEMOS[name]
    out = Path(out_dir) if out_dir is not None else Path("zoo-demo") / name
    paths = samples.fetch(demo.sample, sorted(set(demo.inputs.values()) | ({demo.reference} - {None})),
                          mirror=mirror)
    variant = _variant_with_weights(name, variant)
    model = zoo.load(name, variant=variant, options=demo.options or None)
    inputs = {k: str(paths[role]) for k, role in demo.inputs.items() if k in model.input_names}
    pred = model.predict(inputs)
    written = pred.save(out)
    label = next(o["name"] for o in model.card["outputs"] if o["kind"] == "label")
    overlay = None
    try:
        from zoo.overlay import overlay_png

        ref = None if demo.reference is None else read_volume(str(paths[demo.reference])).array > 0
        overlay = overlay_png(read_volume(inputs[model.input_names[0]]), pred.images[label].get_fdata(),
                              out / f"overlay_{label}.png", reference=ref)
    except errors.ZooError as exc:  # Pillow missing: the NIfTI outputs still stand
        print(f"zoo: note: no overlay ({exc})")
    summary = {"entry": name, "variant": variant, "card_version": model.card.version,
               "sample": samples.info(demo.sample), "note": demo.note,
               "inputs": inputs, "outputs": {k: str(v) for k, v in written.items()},
               "overlay": None if overlay is None else str(overlay),
               "volumes_ml": pred.volumes_ml, "timing_s": pred.timing_s}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    summary["summary"] = str(out / "summary.json")
    return summary
