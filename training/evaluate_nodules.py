"""``zoo evaluate`` for nodule classification (``lung_nodule``): score a folder laid out like
``lidc_voi`` at the nodule and at the patient level (issue 17; ``specs/metrics.md`` §6).

    zoo evaluate lung_nodule --data DIR [--manifest M --part val] --out OUT [--weights W]

Every labelled nodule (rating 3 is excluded, as in training) goes through the public API,
``model.predict({"ct": image, "nodule_mask": mask > 0})``, i.e. the card's preprocessing at the
frame of the weights (:mod:`zoo.trained_options`). Then:

* nodule level: ROC AUC (Mann-Whitney, ties 1/2), accuracy, precision, recall, specificity
  at the card's threshold (:func:`zoo.metrics.classification_metrics`);
* patient level: a patient is malignant if one of its nodules is, and scores the maximum of its
  nodules' p_malignant (:func:`zoo.metrics.group_max`), so it is predicted malignant iff one of
  its nodules is (spec §7);
* 95 % percentile bootstrap intervals of every figure, resampling patients
  (:func:`zoo.metrics.cluster_bootstrap`, ``n_resamples`` and ``seed`` stated in the summary).

Writes (all computed first, then written atomically; ``summary.json`` last)::

    OUT/nodules.csv      one row per nodule: patient, case, malignancy, label, p_malignant, predicted_class, ...
    OUT/patients.csv     one row per patient: label, score (max p), predicted_class, n_nodules
    OUT/roc_curve.csv    the ROC points of both levels
    OUT/roc.png          both ROC curves with their AUC and interval (needs Pillow)
    OUT/summary.json     the figures, intervals, counts, weights, frame and command
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from zoo import errors, metrics, registry
from zoo.io import atomic_write_text, read_volume
from zoo.trained_options import weights_options

log = logging.getLogger(__name__)

#: The figures reported at each level (metrics.md §6), in display order.
FIGURES = ("roc_auc", "accuracy", "precision", "recall", "specificity")
#: metrics.md §6: 2,000 resamples; the project's seed.
N_RESAMPLES, SEED = 2000, 42


def predict_nodules(model: Any, subjects: Sequence[Any]) -> list[dict[str, Any]]:
    """One row per labelled nodule of ``subjects`` (``lidc_voi`` patients: ``meta["nodules"]``):
    ``patient, case, malignancy, label, p_malignant, box_shape, cropped``.

    The nodule mask is binarised (``mask > 0``: one nodule per crop, as in training).
    Raises InputError (and subclasses) for unreadable or mismatched files.
    """
    rows = []
    for s in subjects:
        for n in s.meta.get("nodules", ()):
            if n["label"] is None:
                continue
            mask = read_volume(str(n["mask"]), "nodule_mask")
            binary = (np.asarray(mask.array) > 0).astype(np.uint8)
            pred = model.predict({"ct": str(n["image"]), "nodule_mask": (binary, mask.affine)})
            t = pred.table.iloc[0]
            rows.append({"patient": s.id, "case": n["case"], "malignancy": n.get("malignancy"),
                         "label": int(n["label"]), "p_malignant": float(t["p_malignant"]),
                         "box_shape": t["box_shape"], "cropped": bool(t["cropped"])})
    return rows


def score(rows: Sequence[Mapping[str, Any]], threshold: float = 0.5, n_resamples: int = N_RESAMPLES,
          seed: int = SEED) -> dict[str, Any]:
    """Nodule- and patient-level figures with patient-bootstrap intervals.

    Args:
        rows: one mapping per nodule with ``patient``, ``label`` (0/1) and ``p_malignant``.
        threshold: malignant iff ``p_malignant > threshold`` (the card's ``inference.threshold``; metrics.md §6).
    Returns:
        ``{"nodule": {figure: value, ..., counts, "n"}, "patient": {...},
        "intervals": {"nodule": {figure: {low, high, n_valid}}, "patient": {...}}, "bootstrap": {...},
        "patients": per-patient table (dict of lists), "roc": {"nodule": curve, "patient": curve}}``.
    Raises:
        MetricError: fewer than 2 patients, or labels other than 0/1.
    """
    patients = [r["patient"] for r in rows]
    y = np.array([int(r["label"]) for r in rows])
    p = np.array([float(r["p_malignant"]) for r in rows])
    pat = metrics.group_max(patients, y, p)
    rows_of = [np.flatnonzero(np.asarray(patients, dtype=object) == g) for g in pat["group"]]

    def figures(yy: np.ndarray, ss: np.ndarray) -> dict[str, float]:
        m = metrics.classification_metrics(yy, ss, threshold)
        return {k: m[k] for k in FIGURES}

    def statistic(draw: np.ndarray) -> dict[str, float]:
        idx = np.concatenate([rows_of[i] for i in draw])
        nod = figures(y[idx], p[idx])
        pt = figures(pat["y_true"][draw], pat["score"][draw])
        return {**{f"nodule.{k}": v for k, v in nod.items()}, **{f"patient.{k}": v for k, v in pt.items()}}

    boot = metrics.cluster_bootstrap(len(pat["group"]), statistic, n_resamples, seed)
    intervals: dict[str, dict[str, Any]] = {"nodule": {}, "patient": {}}
    for key, ci in boot.pop("intervals").items():
        level, name = key.split(".", 1)
        intervals[level][name] = ci
    nodule = {**metrics.classification_metrics(y, p, threshold), "n": int(len(y))}
    patient = {**metrics.classification_metrics(pat["y_true"], pat["score"], threshold), "n": int(len(pat["group"]))}
    roc = {}
    for level, (yy, ss) in (("nodule", (y, p)), ("patient", (pat["y_true"], pat["score"]))):
        roc[level] = metrics.roc_curve(yy, ss) if 0 < yy.sum() < len(yy) else None
    table = {"patient": [str(g) for g in pat["group"]], "label": pat["y_true"].tolist(),
             "score": pat["score"].tolist(), "predicted_class": metrics.malignant(pat["score"], threshold).tolist(),
             "n_nodules": pat["n"].tolist()}
    return {"nodule": nodule, "patient": patient, "intervals": intervals, "bootstrap": boot,
            "patients": table, "roc": roc, "threshold": float(threshold)}


def _fmt(value: float, ci: Mapping[str, float] | None) -> str:
    text = "nan" if not np.isfinite(value) else f"{value:.3f}"
    return text + (f" [{ci['low']:.3f}, {ci['high']:.3f}]" if ci and np.isfinite(ci["low"]) else "")


def summary_lines(result: Mapping[str, Any]) -> list[str]:
    """Two printable lines (nodule, patient): each figure with its 95 % interval."""
    out = []
    for level in ("nodule", "patient"):
        r, ci = result[level], result["intervals"][level]
        out.append(f"{level} level (n {r['n']}): " + ", ".join(f"{k} {_fmt(r[k], ci.get(k))}" for k in FIGURES[:4]))
    return out


def evaluate_nodules(name: str, subjects: Sequence[Any], out_dir: str | Path, *, variant: str | None = None,
                     weights: Any = "default", options: Mapping[str, Any] | None = None,
                     n_resamples: int = N_RESAMPLES, seed: int = SEED, data: str | None = None,
                     manifest: str | None = None, part: str | None = None,
                     command: str | None = None) -> dict[str, Any]:
    """Predict and score every labelled nodule of ``subjects`` (module docstring).

    Args:
        name: a classification entry (``lung_nodule``).
        subjects: ``lidc_voi`` patients (:func:`zoo.training.datasets.lidc_voi`), e.g. one
            manifest partition.
        out_dir: the output folder (layout in the module docstring).
        weights, variant, options: as :func:`zoo.load` (the frame comes from the weights).
        n_resamples, seed: the patient bootstrap.
        data, manifest, part, command: recorded in the summary.
    Returns:
        The summary (also ``out_dir/summary.json``).
    Raises:
        InputError: no labelled nodule, or only one patient; WeightsError (OptionMismatchError...)
        from loading; ImportError: Pillow missing (the ROC PNG).
    """
    import importlib.util

    import pandas as pd

    from zoo.roc_plot import roc_png

    if importlib.util.find_spec("PIL") is None:  # before any work: no CSVs without their ROC PNG
        raise ImportError("zoo evaluate of a classification entry writes a ROC curve PNG, which needs "
                          "Pillow: pip install 'keras-medzoo[viz]'")
    t0 = time.perf_counter()
    model = registry.load(name, variant=variant, weights=weights, options=options)
    rows = predict_nodules(model, subjects)
    if len({r["patient"] for r in rows}) < 2:
        raise errors.InputError(f"{data or 'the data'}: {len(rows)} labelled nodule(s) of "
                                f"{len({r['patient'] for r in rows})} patient(s); scoring needs at least 2 patients")
    threshold = float(model.card["inference"].get("threshold", 0.5))
    result = score(rows, threshold, n_resamples, seed)
    for r, c in zip(rows, metrics.malignant([r["p_malignant"] for r in rows], threshold)):
        r["predicted_class"] = int(c)
    frame = weights_options(model.card)  # the input frame the weights saw (zoo.trained_options)
    n_excluded = sum(n["label"] is None for s in subjects for n in s.meta.get("nodules", ()))
    summary = {
        "entry": name, "variant": model.variant, "card_version": model.card.version,
        "weights": model.weights_source, "frame": frame, "data": data, "manifest": manifest, "part": part,
        "n_patients": result["patient"]["n"], "n_nodules": result["nodule"]["n"],
        "n_nodules_excluded_rating3": int(n_excluded), "threshold": threshold,
        "nodule": result["nodule"], "patient": result["patient"], "intervals": result["intervals"],
        "bootstrap": result["bootstrap"], "command": command,
        "patient_rule": "malignant if >= 1 nodule is; patient score = max nodule p_malignant",
        "seconds": None,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    curves, points = {}, []
    for level in ("nodule", "patient"):
        c = result["roc"][level]
        if c is None:
            continue
        auc = _fmt(result[level]["roc_auc"], result["intervals"][level].get("roc_auc"))
        curves[f"{level} level (n {result[level]['n']}), ROC AUC {auc}"] = (c["fpr"], c["tpr"])
        points += [{"level": level, "threshold": th, "fpr": f, "tpr": t}
                   for th, f, t in zip(c["threshold"], c["fpr"], c["tpr"])]
    atomic_write_text(out / "nodules.csv", pd.DataFrame(rows).to_csv(index=False))
    atomic_write_text(out / "patients.csv", pd.DataFrame(result["patients"]).to_csv(index=False))
    atomic_write_text(out / "roc_curve.csv", pd.DataFrame(points, columns=["level", "threshold", "fpr", "tpr"])
                      .to_csv(index=False))
    if curves:
        roc_png(curves, out / "roc.png", title=f"{name} {model.card.version}: {data or ''} {part or ''}".strip())
    summary["roc_png"] = str(out / "roc.png") if curves else None
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    log.info("\n".join(summary_lines(result)))
    return summary
