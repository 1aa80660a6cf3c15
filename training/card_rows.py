"""Card ``metrics.measured`` rows from a per-case cross-validation table, so a card's figures are
computed from the table rather than typed, and a test can recompute them.

    python -m zoo.training.card_rows training/results/skull_stripping_cv.csv --metric dsc \\
        --metric jaccard --metric hd95_mm --by contrast --set variant=head --set split_type=cv \\
        --set "dataset=..." --set "subset=..." --set "source=..." --set "command=..."

The table is ``metrics.csv`` of :mod:`zoo.training.crossval` (one row per out-of-fold case, the
metric columns and the ``--by`` column). Each row of the output is the mean over the cases
(``statistic: mean over the out-of-fold cases``) with its sample SD (ddof 1) and ``n``, pooled
and then per value of ``--by``; the ``subset`` of a per-value row ends with ``"; <value> only"``
and the pooled one with ``"; all <by> values"``. Values are rounded to 4 decimals. With
``--set table=training/results/NAME.csv`` (the table committed), per-value rows carry
``cases: {<by>: <value>}`` and :func:`check` recomputes every such card row (tests/test_card_rows.py).
``--where COLUMN=VALUE`` (repeatable) keeps the cases with that value first (one table holding
several variants: ``--where variant=flair_t1``); every row's ``cases`` then names it too.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping, Sequence

STATISTIC = "mean over the out-of-fold cases"


def rows(table, metrics: Sequence[str], by: str | None, common: Mapping[str, Any], *,
         order: Sequence[str] | None = None, where: Mapping[str, str] | None = None,
         statistic: str = STATISTIC) -> list[dict[str, Any]]:
    """The card rows of ``table`` (a pandas DataFrame, one row per case): for every metric the
    pooled row, then per value of ``by`` (in ``order``, else sorted) every metric.

    Args:
        table: per-case table with the ``metrics`` columns (and ``by``).
        metrics: metric column names (the card's metric names, e.g. ``dsc``, ``hd95_mm``).
        by: a column to report separately (``contrast``), or None.
        common: fields every row carries (``split_type``, ``variant``, ``dataset``, ``subset``,
            ``source``, ``command``...); ``subset`` gets the group suffix.
        order: the ``by`` values in the card's order.
        where: ``{column: value}`` the cases must have (compared as text); with ``table`` in
            ``common`` every row's ``cases`` carries it.
        statistic: the rows' ``statistic`` text (default :data:`STATISTIC`; a held-out table
            says ``mean over the held-out subjects``).
    Returns:
        A list of card metric rows (dicts).
    Raises:
        KeyError: a metric, ``by`` or ``where`` column is not in the table.
        ValueError: no case is left after ``where``.
    """
    from zoo.training.crossval import summarise

    where = {k: str(v) for k, v in (where or {}).items()}
    table = _cases(table, where)
    if where and table.empty:
        raise ValueError(f"no case has {where}")

    summary = summarise(table, metrics, by)
    groups = [(None, summary["pooled"])]
    if by:
        per = summary[f"by_{by}"]
        groups += [(key, per[key]) for key in (order or sorted(per))]
    out = []
    for key, stats in groups:
        subset = str(common.get("subset", ""))
        suffix = f"all {by} values" if key is None and by else (f"{key} only" if key is not None else "")
        for m in metrics:
            s = stats[m]
            row = {"name": m, "value": round(s["mean"], 4)}
            if s["sd"] is not None:
                row["sd"] = round(s["sd"], 4)
            row.update({"statistic": statistic, **{k: v for k, v in common.items() if k != "subset"},
                        "n": s["n"]})
            if subset or suffix:
                row["subset"] = "; ".join(part for part in (subset, suffix) if part)
            if "table" in common and (key is not None or where):
                row["cases"] = {**where, **({by: key} if key is not None else {})}
            out.append(row)
    return out


def yaml_item(row: Mapping[str, Any]) -> str:
    """One card row as the flow-style YAML list item of a card's metric list (one line, keys in
    their order, 4-space indent)."""
    import yaml

    return "    - " + yaml.safe_dump(dict(row), default_flow_style=True, sort_keys=False, width=10**6).strip()


def _cases(table, cases: Mapping[str, Any]):
    """The rows of ``table`` whose columns hold the values of ``cases`` (compared as text)."""
    for column, value in cases.items():
        table = table[table[column].astype(str) == str(value)]
    return table


def check(row: Mapping[str, Any], root: Path) -> list[str]:
    """Recompute a card row that names its ``table`` (relative to the repository ``root``):
    the mean, SD and n of the row's metric over the row's ``cases``. Returns the differences
    (empty when the row matches to its 4 decimals)."""
    import pandas as pd

    table = _cases(pd.read_csv(root / row["table"]), row.get("cases") or {})
    values = table[row["name"]].astype(float).dropna()
    found = {"value": round(float(values.mean()), 4), "n": int(len(values))}
    if len(values) > 1:
        found["sd"] = round(float(values.std(ddof=1)), 4)
    return [f"{row['name']} {row.get('cases') or 'all'}: {k} {row.get(k)} in the card, {v} from {row['table']}"
            for k, v in found.items() if row.get(k) != v]


def main(argv: Sequence[str] | None = None) -> int:
    import pandas as pd

    p = argparse.ArgumentParser(prog="python -m zoo.training.card_rows", description=__doc__.split("\n\n")[0])
    p.add_argument("table", type=Path, help="per-case metrics.csv of a cross-validation")
    p.add_argument("--metric", action="append", required=True)
    p.add_argument("--by", default=None)
    p.add_argument("--order", action="append", default=None, help="a --by value, in the card's order (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a field of every row")
    p.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE",
                   help="keep only the cases with this value (repeatable)")
    p.add_argument("--statistic", default=STATISTIC, help=f"the rows' statistic (default: {STATISTIC!r})")
    args = p.parse_args(argv)
    common = dict(kv.split("=", 1) for kv in args.set)
    where = dict(kv.split("=", 1) for kv in args.where)
    for row in rows(pd.read_csv(args.table), args.metric, args.by, common, order=args.order, where=where,
                     statistic=args.statistic):
        print(yaml_item(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
