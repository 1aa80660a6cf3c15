"""Evaluate an entry's weights on labelled subjects with the entry's own metrics.

For every subject: predict with the public API (the same path a user takes), score it with
the entry module's ``score(subject, prediction, model) -> {column: value}`` (its columns in
``EVAL_COLUMNS``; ``wmh_ensemble`` uses :func:`zoo.metrics.wmh_challenge`), optionally save
the prediction and a PNG overlay. Per-case rows and the aggregate (mean, SD, median, IQR, n and
NaN count; ``specs/metrics.md`` §7) are written as CSV and JSON; an entry with an
``aggregate(table) -> dict`` adds statistics over all cases (e.g. the spine Bland–Altman
volume agreement) as ``"agreement"``.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from zoo import metrics, registry
from zoo.io import atomic_write_text, read_volume

log = logging.getLogger(__name__)

def columns(name: str) -> tuple[str, ...]:
    """The metric columns of entry ``name``'s per-case table (specs/metrics.md names)."""
    return tuple(importlib.import_module(registry.ENTRIES[name]).EVAL_COLUMNS)


def evaluate(name: str, subjects: Sequence[Any], out_dir: str | Path, *, variant: str | None = None,
             weights: Any = "default", options: Mapping[str, Any] | None = None,
             save_predictions: bool = False, overlays: bool = False) -> dict[str, Any]:
    """Predict and score ``subjects`` (adapter records with ``images`` and ``label``).

    Returns:
        ``{"cases": [...], "summary": {metric: summarise(...)}}`` (plus ``"agreement"`` for
        entries with an ``aggregate``), also written to
        ``out_dir/metrics.csv`` and ``out_dir/summary.json``.
    """
    import pandas as pd

    model = registry.load(name, variant=variant, weights=weights, options=options)
    entry = importlib.import_module(registry.ENTRIES[name])
    cols = tuple(entry.EVAL_COLUMNS)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in subjects:
        # required inputs and optional ones the subject has (a given brain_mask: the z-score
        # region the weights were trained with, zoo.training.ms_clinical)
        inputs = {k: str(v) for k, v in s.images.items()
                  if k in model.input_names or k in model.optional_inputs}
        pred = model.predict(inputs)
        label_name = next(o["name"] for o in model.card["outputs"] if o["kind"] == "label")
        scores = entry.score(s, pred, model)
        row = {"subject": s.id, **{c: scores[c] for c in cols},
               "volume_ml": pred.volumes_ml.get(label_name), "flags": ";".join(scores.get("flags", []))}
        rows.append(row)
        log.info("%s: %s", s.id, {c: round(float(row[c]), 4) for c in cols})
        if save_predictions:
            pred.save(out / "predictions" / s.id.replace("/", "_"))
        if overlays:
            from zoo.overlay import overlay_png

            ref = read_volume(str(s.label), "label")
            overlay_png(read_volume(inputs[model.input_names[0]]), pred.images[label_name].get_fdata(),
                        out / f"overlay_{s.id.replace('/', '_')}.png", reference=ref.array == 1)
    table = pd.DataFrame(rows)
    summary = {c: metrics.summarise(table[c].to_numpy(dtype=float)) for c in cols}
    result = {"entry": name, "variant": model.variant, "weights": model.weights_source,
              "columns": list(cols), "cases": rows, "summary": summary}
    if hasattr(entry, "aggregate"):
        result["agreement"] = entry.aggregate(table)
    atomic_write_text(out / "metrics.csv", table.to_csv(index=False))
    atomic_write_text(out / "summary.json", json.dumps(result, indent=2, default=float) + "\n")
    return result
