"""K-fold cross-validation of a segmentation entry as one resumable command: split by subject
(grouped by person where the dataset has several scans per person), train one model per fold on
the other folds, score the held-out fold with the entry's own ``score``, pool the out-of-fold
cases, then optionally train the final model on every subject.

    python -m zoo.training.crossval skull_stripping --data ../shared/data/heads --k 5 \\
        --group subject --epochs 8 --steps-per-epoch 10 --batch-size 2 --out runs/ss-cv [--final]

Output under ``--out``: ``manifest.json`` (the folds' subject IDs), ``fold{i}/`` (the run:
``member0.npz``, logs, checkpoints), ``fold{i}/eval/metrics.csv``, ``metrics.csv`` (every
out-of-fold case with its fold and ``group_by`` column, e.g. the contrast), ``summary.json``
(mean, sd, median, min, max per metric, pooled and per ``group_by`` value) and, with
``--final``, ``final/member0.npz``. A fold whose ``eval/metrics.csv`` exists is skipped, an
interrupted training resumes (BackupAndRestore), so the same command continues a campaign.
``--final-only`` trains just the final model with the same settings (the folds in one session,
the final model in the next, on the same machine or a fresh one). ``--option KEY=VALUE --tag
TAG`` scores the same fold models again with a card option (e.g. ``tta=flip_x``) into
``fold{i}/eval-TAG``, ``metrics-TAG.csv`` and ``summary-TAG.json``.

``--init-from RUN`` continues an earlier cross-validation in chunks that each fit a session:
fold ``i`` starts from ``RUN/fold{i}/member0.npz`` (and ``final`` from ``RUN/final``) with a
new schedule of its own, after checking that ``RUN/manifest.json`` holds the same folds, so a
fold model never starts from weights that saw its held-out subjects.

    python -m zoo.training.crossval skull_stripping ... --out runs/ss-cv-b --init-from runs/ss-cv-a
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)


def folds_for(subjects: Sequence[Any], k: int, seed: int, group: str | None):
    """``k`` (train, val) splits: :func:`~zoo.training.datasets.kfold_grouped` when ``group``
    names a ``meta`` key every subject has, else :func:`~zoo.training.datasets.kfold`."""
    from zoo.training import datasets

    if group:
        return datasets.kfold_grouped(subjects, k, seed, group=group)
    return datasets.kfold(subjects, k, seed)


def summarise(table, metrics: Sequence[str], by: str | None) -> dict[str, Any]:
    """Mean, sd (ddof 1), median, min, max and n of each metric, pooled and per value of ``by``."""
    def stats(frame) -> dict[str, Any]:
        out = {}
        for m in metrics:
            v = frame[m].astype(float).dropna()
            out[m] = {"mean": float(v.mean()) if len(v) else None, "sd": float(v.std(ddof=1)) if len(v) > 1 else None,
                      "median": float(v.median()) if len(v) else None, "min": float(v.min()) if len(v) else None,
                      "max": float(v.max()) if len(v) else None, "n": int(len(v))}
        return out

    result = {"pooled": stats(table)}
    if by and by in table:
        result[f"by_{by}"] = {str(key): stats(part) for key, part in table.groupby(by)}
    return result


def run(name: str, data: str | Path, out: str | Path, *, k: int = 5, seed: int = 0, group: str | None = None,
        group_by: str | None = None, final: bool = False, train_kwargs: dict | None = None,
        init_from: str | Path | None = None, options: dict[str, Any] | None = None,
        tag: str | None = None) -> dict[str, Any]:
    """Run (or continue) the cross-validation of entry ``name`` on ``data`` (module docstring).

    Args:
        name: a registered entry with ``score`` and ``EVAL_COLUMNS``.
        data: the dataset folder (layout auto-detected, :func:`zoo.training.run.detect_layout`).
        out: the campaign folder.
        k, seed: folds and the split seed.
        group: ``meta`` key that keeps a person's scans in one fold (``"subject"`` for heads).
        group_by: ``meta`` key reported separately in the summary (``"contrast"``).
        final: also train the final model on every subject into ``out/final``.
        train_kwargs: passed to :func:`zoo.training.run.train_entry` (epochs, steps_per_epoch,
            batch_size, recipe_set, ...).
        init_from: an earlier cross-validation folder of the same folds to continue from
            (module docstring).
        options: card options for scoring the held-out folds (e.g. ``{"tta": "flip_x"}``);
            the fold models are the same.
        tag: score into ``fold{i}/eval-TAG``, ``metrics-TAG.csv`` and ``summary-TAG.json``
            instead (a fold model that exists is not retrained), so another scoring setting
            of the same models sits beside the first.
    Returns:
        The summary (also ``out/summary.json``, or ``out/summary-TAG.json``).
    Raises:
        InputError: ``init_from``'s folds differ from this split; ``options`` without ``tag``.
        InputNotFoundError: a fold model of ``init_from`` is missing.
    """
    import pandas as pd

    from zoo import errors, registry
    from zoo.training import datasets
    from zoo.training.evaluate import evaluate
    from zoo.training.run import detect_layout, load_subjects, train_entry

    if options and not tag:
        raise errors.InputError("scoring options need a tag, so that they never mix with the untagged scores")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    card = registry.card(name)
    variant = card["default_variant"]
    subjects = load_subjects(Path(data), detect_layout(Path(data)), card.variant(variant)["inputs"])
    splits = folds_for(subjects, k, seed, group)
    datasets.write_manifest(out / "manifest.json", splits)
    if init_from is not None:
        check_same_folds(Path(init_from) / "manifest.json", out / "manifest.json")
    kwargs = dict(train_kwargs or {})
    tables = []
    suffix = f"-{tag}" if tag else ""
    for i, (train_part, val_part) in enumerate(splits):
        fold = out / f"fold{i}"
        metrics_csv = fold / f"eval{suffix}" / "metrics.csv"
        if not metrics_csv.is_file():
            if not (fold / "member0.npz").is_file():  # written last, atomically, by the trainer
                log.info("fold %d: training on %d, holding out %d", i, len(train_part), len(val_part))
                start = None if init_from is None else _start_weights(Path(init_from) / f"fold{i}")
                train_entry(name, data, out_dir=fold, val_ids=[s.id for s in val_part], init_from=start, **kwargs)
            evaluate(name, val_part, metrics_csv.parent, weights=str(fold / "member0.npz"), options=options)
        table = pd.read_csv(metrics_csv)
        table.insert(0, "fold", i)
        if group_by:
            meta = {s.id: s.meta.get(group_by) for s in val_part}
            table.insert(2, group_by, table["subject"].map(meta))
        tables.append(table)
    pooled = pd.concat(tables, ignore_index=True)
    pooled.to_csv(out / f"metrics{suffix}.csv", index=False)
    metrics = list(importlib.import_module(registry.ENTRIES[name]).EVAL_COLUMNS)
    summary = {"entry": name, "k": k, "seed": seed, "group": group, "options": dict(options or {}),
               "n_cases": int(len(pooled)), **summarise(pooled, metrics, group_by)}
    (out / f"summary{suffix}.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if final:
        train_final(name, data, out, train_kwargs=kwargs, init_from=init_from)
    return summary


def train_final(name: str, data: str | Path, out: str | Path, *, train_kwargs: dict | None = None,
                init_from: str | Path | None = None) -> Path:
    """Train (or resume, or skip when done) the final model of a cross-validation on every
    subject of ``data`` into ``out/final`` with the folds' settings, and return its
    ``member0.npz``. On its own (``--final-only``) it lets the final model run in a later
    session than the folds, on another machine. ``init_from``: an earlier cross-validation
    folder whose ``final`` model it continues.

    Raises:
        InputNotFoundError: ``init_from`` has no final model.
    """
    from zoo.training.run import train_entry

    weights = Path(out) / "final" / "member0.npz"
    if not weights.is_file():
        start = None if init_from is None else _start_weights(Path(init_from) / "final")
        train_entry(name, data, out_dir=Path(out) / "final", init_from=start, **dict(train_kwargs or {}))
    return weights


def check_same_folds(earlier: Path, current: Path) -> None:
    """Raise InputError unless two crossval manifests hold the same subjects in every fold."""
    from zoo import errors

    if not earlier.is_file():
        raise errors.InputNotFoundError(f"{earlier} not found; --init-from needs an earlier crossval folder")
    a, b = (json.loads(p.read_text(encoding="utf-8")) for p in (earlier, current))
    norm = lambda m: {f: {part: sorted(ids) for part, ids in parts.items()} for f, parts in m.items()}  # noqa: E731
    if norm(a) != norm(b):
        raise errors.InputError(f"{earlier} holds other folds than {current} (k, seed, group or data differ): "
                                "a fold model would start from weights that saw its held-out subjects")


def _start_weights(run: Path) -> str:
    from zoo import errors

    weights = run / "member0.npz"
    if not weights.is_file():
        raise errors.InputNotFoundError(f"{weights} not found: the earlier run has not finished this fold")
    return str(weights)


def main(argv: Sequence[str] | None = None) -> int:

    p = argparse.ArgumentParser(prog="python -m zoo.training.crossval", description=__doc__.split("\n\n")[0])
    p.add_argument("name")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--group", default=None, help="meta key grouping one person's scans (heads: subject)")
    p.add_argument("--group-by", default=None, help="meta key reported separately (heads: contrast)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--mixed-precision", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--final", action="store_true", help="after the folds, train the final model on every subject")
    p.add_argument("--final-only", action="store_true",
                   help="train only the final model (the folds' settings), e.g. in a later session than the folds")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="card option for scoring the held-out folds (e.g. tta=flip_x); use with --tag")
    p.add_argument("--tag", default=None, help="score into fold*/eval-TAG, metrics-TAG.csv, summary-TAG.json")
    p.add_argument("--init-from", default=None, metavar="RUN",
                   help="an earlier crossval folder with the same folds: fold i starts from its fold i model")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import yaml

    recipe_set = {kv.split("=", 1)[0]: yaml.safe_load(kv.split("=", 1)[1]) for kv in args.set}
    # as recipe values, so that the learning-rate schedule (one-cycle, flat-cos) spans the run
    if args.epochs is not None:
        recipe_set["epochs"] = args.epochs
    if args.steps_per_epoch is not None:
        recipe_set["data.steps_per_epoch"] = args.steps_per_epoch
    kwargs = {"batch_size": args.batch_size,
              "mixed_precision": args.mixed_precision, "recipe_set": recipe_set or None, "verbose": 2}
    if args.final_only:
        print(train_final(args.name, args.data, args.out, train_kwargs=kwargs, init_from=args.init_from))
        return 0
    summary = run(args.name, args.data, args.out, k=args.k, seed=args.seed, group=args.group,
                  group_by=args.group_by, final=args.final, train_kwargs=kwargs, init_from=args.init_from,
                  options={kv.split("=", 1)[0]: yaml.safe_load(kv.split("=", 1)[1]) for kv in args.option} or None,
                  tag=args.tag)
    print(json.dumps(summary["pooled"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
