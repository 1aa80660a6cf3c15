"""Pool the per-fold ``zoo evaluate`` tables of the issue-20 cross-validation: one row per
held-out subject, then the mean / median per site (clinical ``tabriz``, MNI ``ljubljana``)
and over all subjects, with the predicted-to-reference lesion volume ratio and whether it is
within a factor of 1.5 (``volume_within_1_5x``, 1/0: its mean is the share of subjects, the
issue's target; the card metric of the same name).

    python training/campaigns/wmh_issue20_pool.py --subjects runs/issue20/subjects_flair.csv \
        runs/issue20/eval/flair/fold*/metrics.csv [--json runs/issue20/cv_flair.json] \
        [--table-out training/results/wmh_ensemble_cv.csv --variant flair]

``--table-out`` keeps the per-subject rows in one CSV for both variants (the variant's earlier
rows replaced), the table the card's measured rows are computed from (``zoo.training.card_rows
--where variant=flair --by site``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from zoo.io import atomic_write_text, read_volume

METRICS = ("dsc", "h95_wmh_mm", "abs_vol_diff_pct", "lesion_recall", "lesion_f1")
#: Columns of the committed per-subject table (--table-out).
TABLE_COLUMNS = ("variant", "fold", "subject", "site", *METRICS, "volume_ml", "reference_ml", "volume_ratio",
                 "volume_within_1_5x")


def reference_ml(label: str) -> float:
    """Lesion volume (mL) of a 0/1 label file: voxel count x voxel volume (header spacing)."""
    vol = read_volume(label, "label")
    return float((np.asarray(vol.array) > 0.5).sum() * np.prod(vol.spacing) / 1000.0)


def pool(subjects_csv: Path, tables: list[Path]) -> tuple[pd.DataFrame, dict]:
    """Per-subject rows (``fold`` = the table's folder name) and summaries per site and overall.

    Raises:
        ValueError: a subject is held out in two folds, or is not in ``subjects_csv``.
    """
    info = pd.read_csv(subjects_csv, dtype={"subject": str}).set_index("subject")
    rows = []
    for t in tables:
        df = pd.read_csv(t, dtype={"subject": str})
        df["fold"] = Path(t).parent.name
        rows.append(df)
    table = pd.concat(rows, ignore_index=True)
    if table["subject"].duplicated().any():
        raise ValueError(f"subjects held out twice: {sorted(table.loc[table['subject'].duplicated(), 'subject'])}")
    unknown = sorted(set(table["subject"]) - set(info.index))
    if unknown:
        raise ValueError(f"subjects not in {subjects_csv}: {unknown}")
    table["site"] = [info.loc[s, "site"] for s in table["subject"]]
    base = Path(subjects_csv).parent
    table["reference_ml"] = [reference_ml(str(base / info.loc[s, "label"])) for s in table["subject"]]
    table["volume_ratio"] = table["volume_ml"] / table["reference_ml"]
    within = (table["volume_ratio"] >= 1 / 1.5) & (table["volume_ratio"] <= 1.5)
    table["volume_within_1_5x"] = within.astype(int)  # 1/0, so a card row's mean is the share
    summary = {}
    for name, part in [*table.groupby("site"), ("all", table)]:
        summary[name] = {"n": int(len(part)),
                         **{f"mean_{m}": float(part[m].mean()) for m in METRICS},
                         "median_dsc": float(part["dsc"].median()),
                         "share_volume_within_1_5x": float(part["volume_within_1_5x"].mean())}
    return table, summary


def write_table(table: pd.DataFrame, variant: str, path: Path) -> pd.DataFrame:
    """Put ``variant``'s per-subject rows into the CSV at ``path`` (its other variants' rows kept,
    this variant's earlier rows replaced), written atomically; returns the whole table."""
    rows = table.assign(variant=variant)[list(TABLE_COLUMNS)]
    if path.is_file():
        old = pd.read_csv(path, dtype={"subject": str})
        rows = pd.concat([old[old["variant"] != variant], rows], ignore_index=True)
    atomic_write_text(path, rows.round(6).to_csv(index=False))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=Path, required=True, help="the variant's subjects CSV")
    ap.add_argument("tables", type=Path, nargs="+", help="metrics.csv of every fold")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--table-out", type=Path, default=None, help="per-subject CSV of both variants (with --variant)")
    ap.add_argument("--variant", default=None, help="the variant of these tables (flair_t1 | flair)")
    args = ap.parse_args()
    if args.table_out and not args.variant:
        ap.error("--table-out needs --variant")
    table, summary = pool(args.subjects, args.tables)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table[["fold", "subject", "site", "dsc", "h95_wmh_mm", "lesion_recall", "lesion_f1",
                     "volume_ml", "reference_ml", "volume_ratio"]].to_string(index=False, float_format="%.3f"))
    for name, s in summary.items():
        print(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in s.items()))
    if args.json:
        args.json.write_text(json.dumps({"cases": table.to_dict("records"), "summary": summary},
                                        indent=2, default=str) + "\n")
    if args.table_out:
        write_table(table, args.variant, args.table_out)


if __name__ == "__main__":
    main()
