"""Held-out evaluation of ``diamondgan`` (FLAIR target) against two honest baselines, on the
same slices (issue 18, spec ``diamondgan.md`` §9, ``metrics.md`` §5).

    python -m zoo.training.synthesis_heldout train --shared ../shared/data \
        --holdout patient07 --holdout tcga_fg_6692 --holdout 110218 --out runs/diamondgan-i18 \
        --epochs 40 --steps-per-epoch 100 --set data.patch_size=128
    python -m zoo.training.synthesis_heldout evaluate --shared ../shared/data \
        --holdout patient07 --holdout tcga_fg_6692 --holdout 110218 \
        --weights runs/diamondgan-i18 -o runs/diamondgan-i18-eval
    python -m zoo.training.synthesis_heldout margins training/results/diamondgan_heldout.csv
    python -m zoo.training.synthesis_heldout card-rows training/results/diamondgan_heldout.csv \
        --set "command=..." --set "dataset=..."

``margins`` prints, per input subset, the model's mean minus each baseline's over the held-out
subjects (:func:`margins`; issue 18's release rule: the model beats the linear baseline on PSNR
and SSIM for T1 + T2).

Subjects: :func:`zoo.training.synthesis_data.synthesis_subjects` (MNI, multicontrast and
clinical; each with the contrasts it has). Every subject goes through the entry's own pipeline
(:func:`zoo.training.tasks.gan_synthesis.build_synthesis_slices`: reorient, brain mask,
[-1, 1] inside it, 240x240 axial slices on the subject's own grid), so model and baselines see
exactly the network's slices. Scores are on the [0, 1] scale ``(x + 1) / 2`` with R = 1,
inside the brain (pixels that are not background in the real FLAIR), per input subset
(T1 + T2, T1 only, T2 only), on the held-out slices that have every source of the subset:

* ``model``: G1 with the subset's condition, absent sources -1 (as ``predict``);
* ``linear``: least squares ``FLAIR ~ a . sources + b`` per subset, fitted on the brain pixels
  of the **training** subjects only (every 7th pixel, deterministic), never on the test subject;
* ``identity``: the subset's source contrast closest to FLAIR on the training subjects
  (lowest mean absolute difference), taken as it is.

Writes ``results.json`` (per subject, subset and method: PSNR, SSIM, MAE inside the brain, and
the number of slices), ``table.csv`` and one PNG per held-out subject (columns: T1, T2, real
FLAIR, synthetic FLAIR, linear baseline, absolute error of the synthetic FLAIR).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from zoo import errors, metrics, registry
from zoo.io import atomic_write_text

#: Input subsets scored (source names), largest first.
SUBSETS: tuple[tuple[str, ...], ...] = (("t1", "t2"), ("t1",), ("t2",))
#: Pixel stride of the least-squares fit over the training brain pixels.
FIT_STRIDE = 7


@dataclass
class Baselines:
    """The two baselines of one subset, fitted on training subjects.

    Attributes:
        subset: source names.
        coefficients: ``a`` per source then ``b`` (linear baseline, [-1, 1] scale).
        identity: the source taken as the identity baseline.
        identity_mae: its training MAE ([-1, 1] scale) to the target.
        n_pixels: training pixels of the fit.
        subjects: the training subjects whose slices entered the fit.
    """

    subset: tuple[str, ...]
    coefficients: np.ndarray
    identity: str
    identity_mae: float
    n_pixels: int
    subjects: tuple[str, ...] = ()


def _brain(data) -> np.ndarray:
    """``(N, H, W)`` brain pixels of a SynthesisSet: the real target is not background (-1)."""
    return data.targets > -1.0


def _subset_rows(data, channels: Sequence[str], subset: Sequence[str]) -> np.ndarray:
    """Slices of ``data`` that have every source of ``subset``."""
    cols = [channels.index(c) for c in subset]
    return np.all(data.available[:, cols] > 0, axis=1)


def fit_baselines(train, channels: Sequence[str], subset: Sequence[str], stride: int = FIT_STRIDE) -> Baselines:
    """Least-squares linear map and closest source for ``subset`` on the training slices.

    Args:
        train: a :class:`~zoo.training.tasks.gan_synthesis.SynthesisSet` of training subjects.
        channels: the card's source channel order.
        subset: source names.
        stride: every ``stride``-th brain pixel enters the fit (memory).
    Raises:
        InputError: no training slice has every source of ``subset``.
    """
    rows = _subset_rows(train, channels, subset)
    if not rows.any():
        raise errors.InputError(f"no training slice has every source of {list(subset)}; cannot fit the baseline")
    brain = _brain(train)[rows]
    cols = [channels.index(c) for c in subset]
    x = train.sources[rows][brain][:, cols][::stride].astype(np.float64)
    y = train.targets[rows][brain][::stride].astype(np.float64)
    design = np.column_stack([x, np.ones(len(x))])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    maes = {c: float(np.mean(np.abs(x[:, j] - y))) for j, c in enumerate(subset)}
    best = min(maes, key=maes.get)
    used = tuple(sorted(set(np.asarray(train.subject_ids)[rows].tolist())))
    return Baselines(tuple(subset), coef, best, maes[best], int(len(y)), used)


def apply_linear(b: Baselines, sources: np.ndarray, channels: Sequence[str]) -> np.ndarray:
    """The linear baseline on ``(N, H, W, C)`` sources -> ``(N, H, W)`` in [-1, 1] (clipped)."""
    cols = [channels.index(c) for c in b.subset]
    y = sources[..., cols].astype(np.float64) @ b.coefficients[:-1] + b.coefficients[-1]
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def _unit(x: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """[-1, 1] -> [0, 1], 0 outside the brain."""
    return np.where(brain, (np.asarray(x, np.float32) + 1.0) / 2.0, 0.0).astype(np.float32)


def score(real: np.ndarray, pred: np.ndarray, brain: np.ndarray) -> dict[str, float]:
    """PSNR/SSIM/MAE inside the brain (metrics.md §5) of ``(N, H, W)`` [-1, 1] slices, on the
    [0, 1] scale with R = 1, slices along axis 0."""
    m = metrics.synthesis_metrics(_unit(real, brain), _unit(pred, brain), 1.0, brain, axis=0)
    return {"psnr_db": float(m["psnr_db_brain"]), "ssim": float(m["ssim_brain"]),
            "mae": float(m["mae_brain"]), "n_slices": int(m["n_slices"])}


def synthesise_subset(model, data, channels: Sequence[str], subset: Sequence[str]) -> np.ndarray:
    """G1's synthetic target on ``data``'s slices from ``subset`` (other sources -1), [-1, 1]."""
    from zoo.architectures.diamondgan import condition_maps
    from zoo.entries.diamondgan import synthesise

    card, variant = model.card, model.variant
    s = np.where(np.isin(np.arange(len(channels)), [channels.index(c) for c in subset])[None, None, None, :],
                 data.sources, -1.0).astype(np.float32)
    code = tuple(int(c in subset) for c in channels)
    cond = condition_maps(code, s.shape[1:3], card.variant(variant)["architecture"]["condition_encoding"])
    inf = card["inference"]
    return synthesise(model.models[0], s, cond, output_channel=inf["output_channel"],
                      batch_size=int(inf.get("batch_size", 4)))


def _take(data, rows: np.ndarray):
    from zoo.training.tasks.gan_synthesis import SynthesisSet

    return SynthesisSet(data.sources[rows], data.targets[rows], data.available[rows], data.subject_ids[rows])


def evaluate_heldout(shared: str | Path, holdouts: Sequence[str], weights: Any, out_dir: str | Path, *,
                     variant: str = "flair", max_slices: int | None = None,
                     subjects: Sequence[Any] | None = None) -> dict[str, Any]:
    """Score the model and both baselines on every held-out subject and subset; write
    ``results.json``, ``table.csv`` and ``<subject>.png`` under ``out_dir``.

    Args:
        shared: the shared data folder.
        holdouts: held-out subject IDs (never in the baselines' fit).
        weights: G1 weights (run folder, ``member0.npz``) or None (untrained, for tests).
        out_dir: output folder.
        max_slices: score at most this many held-out slices per subject, evenly spread (a CPU
            budget; None = all).
        subjects: the subject list (default :func:`synthesis_subjects` of ``shared``).
    Raises:
        InputError: a held-out ID is not a subject.
    """
    from zoo.training.synthesis_data import synthesis_subjects
    from zoo.training.tasks.gan_synthesis import build_synthesis_slices

    model = registry.load("diamondgan", variant=variant, weights=weights)
    card = model.card
    channels = list(card.variant(variant)["source_channels"])
    subjects = list(subjects) if subjects is not None else synthesis_subjects(shared)
    ids = [s.id for s in subjects]
    missing = [h for h in holdouts if h not in ids]
    if missing:
        raise errors.InputError(f"held-out subjects {missing} not among {ids}")
    train = build_synthesis_slices([s for s in subjects if s.id not in holdouts], card, variant)
    base = {"+".join(sub): fit_baselines(train, channels, sub) for sub in SUBSETS}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, results = [], {}
    for sid in holdouts:
        subject = next(s for s in subjects if s.id == sid)
        data = build_synthesis_slices([subject], card, variant)
        if max_slices and len(data) > max_slices:
            data = _take(data, np.unique(np.linspace(0, len(data) - 1, max_slices).astype(int)))
        brain = _brain(data)
        results[sid] = {"kind": subject.meta.get("kind"), "subsets": {}}
        shown = {}
        for sub in SUBSETS:
            name = "+".join(sub)
            sel = _subset_rows(data, channels, sub)
            if not sel.any():
                results[sid]["subsets"][name] = None
                continue
            part = _take(data, sel)
            b = base[name]
            preds = {"model": synthesise_subset(model, part, channels, sub),
                     "linear": apply_linear(b, part.sources, channels),
                     "identity": part.sources[..., channels.index(b.identity)]}
            results[sid]["subsets"][name] = {k: score(part.targets, v, brain[sel]) for k, v in preds.items()}
            for method, r in results[sid]["subsets"][name].items():
                rows.append({"subject": sid, "kind": subject.meta.get("kind"), "subset": name, "method": method,
                             **r, "identity_source": b.identity if method == "identity" else ""})
            if not shown:
                shown = {"subset": name, "data": part, "model": preds["model"], "linear": preds["linear"],
                         "brain": brain[sel]}
        if shown:
            write_panel(out / f"{sid.replace('/', '_')}.png", shown, channels)
    record = {"holdouts": list(holdouts), "weights": model.weights_source, "variant": variant,
              "scale": "[0, 1] = (x + 1) / 2, R = 1, inside the brain", "max_slices": max_slices,
              "baselines": {k: {"coefficients": [float(c) for c in b.coefficients], "identity": b.identity,
                                "identity_train_mae_pm1": b.identity_mae, "n_pixels": b.n_pixels,
                                "fitted_on": list(b.subjects)} for k, b in base.items()},
              "results": results}
    import pandas as pd

    atomic_write_text(out / "results.json", json.dumps(record, indent=2, default=float) + "\n")
    atomic_write_text(out / "table.csv", pd.DataFrame(rows).to_csv(index=False))
    return record


#: Metrics of the table and whether larger is better.
HIGHER_IS_BETTER = {"psnr_db": True, "ssim": True, "mae": False}


def margins(table, baseline: str = "linear") -> list[dict[str, Any]]:
    """Model minus ``baseline`` per input subset, on the held-out subjects that have the subset.

    Args:
        table: the evaluation's ``table.csv`` as a pandas DataFrame (one row per subject,
            subset and method; columns ``psnr_db``, ``ssim``, ``mae``).
        baseline: ``linear`` or ``identity``.
    Returns:
        One dict per subset of :data:`SUBSETS` present in the table, largest first:
        ``subset``, ``baseline``, ``n`` (subjects), per metric ``<metric>_model``,
        ``<metric>_<baseline>`` (means over the subjects, 4 decimals), ``<metric>_margin``
        (model minus baseline; a positive PSNR/SSIM margin and a negative MAE margin favour the
        model), ``<metric>_wins`` (subjects on which the model is better) and ``beats`` (the model is
        better on the means of PSNR and SSIM: issue 18's release rule for ``t1+t2``).
    Raises:
        KeyError: a metric column is missing.
        ValueError: a subject has the model's row but not the baseline's (or the reverse).
    """
    out = []
    for sub in SUBSETS:
        name = "+".join(sub)
        part = table[table["subset"] == name]
        if part.empty:
            continue
        m = part[part["method"] == "model"].set_index("subject")
        b = part[part["method"] == baseline].set_index("subject")
        if set(m.index) != set(b.index):
            raise ValueError(f"subset {name}: model rows for {sorted(m.index)}, {baseline} rows for {sorted(b.index)}")
        b = b.loc[m.index]
        row: dict[str, Any] = {"subset": name, "baseline": baseline, "n": int(len(m))}
        for metric, higher in HIGHER_IS_BETTER.items():
            mv, bv = m[metric].astype(float), b[metric].astype(float)
            row[f"{metric}_model"] = round(float(mv.mean()), 4)
            row[f"{metric}_{baseline}"] = round(float(bv.mean()), 4)
            row[f"{metric}_margin"] = round(float(mv.mean() - bv.mean()), 4)
            row[f"{metric}_wins"] = int(((mv > bv) if higher else (mv < bv)).sum())
        row["beats"] = bool(row["psnr_db_margin"] > 0 and row["ssim_margin"] > 0)
        out.append(row)
    return out


#: How the card names each method's rows (``subset`` text after the input subset).
METHOD_TEXT = {
    "model": "synthetic FLAIR (G1)",
    "linear": "BASELINE, not the model: least-squares linear fit of FLAIR on the sources, fitted on the training subjects",
    "identity": "BASELINE, not the model: the source contrast closest to FLAIR on the training subjects, as it is",
}


def card_rows(table, table_path: str, common: Mapping[str, Any]) -> tuple[list[dict], list[dict]]:
    """The card's ``metrics.measured`` and ``metrics.comparisons`` rows of a held-out table.

    Args:
        table: the evaluation's ``table.csv`` (pandas DataFrame).
        table_path: where the table is committed (repository-relative), named by every row so
            that tests recompute them (:func:`zoo.training.card_rows.check`, :func:`margins`).
        common: fields of every measured row (``variant``, ``dataset``, ``command``, ...).
    Returns:
        ``(measured, comparisons)``: per subset (:data:`SUBSETS` order) and method (model,
        linear, identity) the means of PSNR, SSIM and MAE over the held-out subjects that have
        the subset (with SD and n); then per baseline and subset the :func:`margins` row.
    """
    from zoo.training.card_rows import rows

    measured = []
    for sub in SUBSETS:
        name = "+".join(sub)
        for method in ("model", "linear", "identity"):
            if table[(table["subset"] == name) & (table["method"] == method)].empty:
                continue
            label = f"from {' + '.join(c.upper() for c in sub)}: {METHOD_TEXT[method]}"
            measured += rows(table, list(HIGHER_IS_BETTER), None,
                             {"split_type": "test", **common, "subset": label, "table": table_path},
                             where={"subset": name, "method": method}, statistic="mean over the held-out subjects")
    comparisons = [{"what": f"model minus {m['baseline']} baseline, {m['subset']}", "table": table_path, **m}
                   for baseline in ("linear", "identity") for m in margins(table, baseline)]
    return measured, comparisons


def write_panel(path: Path, shown: Mapping[str, Any], channels: Sequence[str], n_rows: int = 3) -> Path:
    """PNG of ``n_rows`` slices (spread over the half of the slices with the most brain) x
    columns T1, T2, real FLAIR, synthetic FLAIR, linear baseline, |synthetic - real| (the error
    on the [0, 1] scale, shown 0-0.5); everything inside the brain only (black outside),
    radiological display (anterior up, patient left on the image right)."""
    from PIL import Image, ImageDraw

    from zoo.io import publish
    from zoo.overlay import _font

    data = shown["data"]
    brain = shown["brain"]
    order = np.argsort(-brain.sum(axis=(1, 2)))[: max(min(n_rows, len(brain)), len(brain) // 2)]
    picks = sorted(order[np.linspace(0, len(order) - 1, min(n_rows, len(order))).astype(int)])
    cols = [("T1", lambda k: data.sources[k, ..., channels.index("t1")], 2.0),
            ("T2", lambda k: data.sources[k, ..., channels.index("t2")], 2.0),
            ("real FLAIR", lambda k: data.targets[k], 2.0),
            (f"synthetic FLAIR ({shown['subset']})", lambda k: shown["model"][k], 2.0),
            ("linear baseline", lambda k: shown["linear"][k], 2.0),
            ("|synthetic - real| (0-0.5)", lambda k: np.abs(shown["model"][k] - data.targets[k]) / 2.0, 0.5)]
    h, w = data.targets.shape[1:3]
    font = _font(16)
    head = 26
    canvas = Image.new("RGB", (len(cols) * (w + 4), head + len(picks) * (h + 4)), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for c, (title, get, span) in enumerate(cols):
        draw.text((c * (w + 4) + 4, 4), title, fill=(255, 255, 255), font=font)
        for r, k in enumerate(picks):
            img = get(k)
            g = np.where(brain[k], img / span if span == 0.5 else (img + 1.0) / 2.0, 0.0)
            # network slices are (row = j, column = i) of the LAS grid: anterior up, patient left on the right
            tile = Image.fromarray((np.clip(g[::-1], 0, 1) * 255).astype(np.uint8))
            canvas.paste(tile.convert("RGB"), (c * (w + 4), head + r * (h + 4)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    canvas.save(tmp, format="PNG")
    publish(tmp, path)
    return path


def train(shared: str | Path, holdouts: Sequence[str], out: str | Path, *, epochs: int | None, steps: int | None,
          overrides: Mapping[str, Any], command: str, mixed_precision: str | None = None,
          init: str | Path | None = None) -> dict[str, Any]:
    """Train the flair variant on every synthesis subject except ``holdouts`` (resumable: the
    engine's BackupAndRestore in ``out``).

    ``init``: G1 weights to start from (a run's ``member0.npz``; e.g. a patch-trained
    run continued on whole slices: G1 is fully convolutional). G2, D_S, D_T and the optimiser
    states start fresh, as in the engine's fine-tuning (``trainer.train(init_from=...)``).
    """
    from zoo.training.recipe import load_recipe
    from zoo.training.synthesis_data import synthesis_subjects
    from zoo.training.trainer import train as run_train

    rec = load_recipe("diamondgan", "flair", dict(overrides))
    subjects = [s for s in synthesis_subjects(shared) if s.id not in set(holdouts)]
    return run_train(registry.card("diamondgan"), rec, subjects, out, epochs=epochs, steps_per_epoch=steps,
                     command=command, mixed_precision=mixed_precision, init_from=[init] if init else None,
                     verbose=2)


def main(argv: Sequence[str] | None = None) -> int:
    from zoo.training.synthesis_eval import _overrides

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("train", "evaluate", "margins", "card-rows"))
    ap.add_argument("table", nargs="?", default=None, help="margins, card-rows: the evaluation's table.csv")
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--holdout", action="append", default=[])
    ap.add_argument("--out", default="runs/diamondgan-i18")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--steps-per-epoch", type=int)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="train: a recipe override; card-rows: a field of every measured row")
    ap.add_argument("--mixed-precision", default=None)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--init", default=None, help="train: G1 weights to start from (a run's member0.npz)")
    ap.add_argument("--max-slices", type=int, default=None)
    ap.add_argument("-o", "--output", default="runs/diamondgan-i18-eval")
    a = ap.parse_args(argv)
    if a.command == "margins":
        import pandas as pd

        if not a.table:
            ap.error("margins needs the evaluation's table.csv")
        table = pd.read_csv(a.table)
        for baseline in ("linear", "identity"):
            for row in margins(table, baseline):
                print(json.dumps(row))
        return 0
    if a.command == "card-rows":
        import pandas as pd

        from zoo.training.card_rows import yaml_item

        if not a.table:
            ap.error("card-rows needs the committed table.csv")
        measured, comparisons = card_rows(pd.read_csv(a.table), a.table, dict(kv.split("=", 1) for kv in a.set))
        for head, items in (("measured", measured), ("comparisons", comparisons)):
            print(f"  {head}:")
            for row in items:
                print(yaml_item(row))
        return 0
    if not a.holdout:
        ap.error(f"{a.command} needs at least one --holdout")
    command = " ".join(["python -m zoo.training.synthesis_heldout", *(argv if argv is not None else sys.argv[1:])])
    if a.command == "train":
        rec = train(a.shared, a.holdout, a.out, epochs=a.epochs, steps=a.steps_per_epoch,
                    overrides=_overrides(a.set), command=command, mixed_precision=a.mixed_precision,
                    init=a.init)
        print(json.dumps(rec["members"][0]["history"], indent=1))
        return 0
    result = evaluate_heldout(a.shared, a.holdout, a.weights, a.output, max_slices=a.max_slices)
    result["command"] = command
    atomic_write_text(Path(a.output) / "results.json", json.dumps(result, indent=2, default=float) + "\n")
    for sid, r in result["results"].items():
        for subset, methods in r["subsets"].items():
            if methods:
                print(f"{sid} {subset}: " + "; ".join(f"{m} PSNR {v['psnr_db']:.2f} SSIM {v['ssim']:.3f} MAE {v['mae']:.4f}"
                                                      for m, v in methods.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
