"""What a person reads in a terminal: the summaries the commands print (SPEC §7).

Output files keep exact values (money in integer minor units, rates as
fractions or as the percentages SPEC defines them); only the terminal
converts, here, from one table of column kinds (:data:`KINDS`) that every
command uses:

========== ============================= ======================
kind        in files                      in the terminal
========== ============================= ======================
count       integer                       ``12,345``
money       minor units (cents)           ``1,234.56 USD``
fraction    0–1                           ``12.3%``
percent     already × 100                 ``12.3%``
change      YoY, already × 100            ``+12.3%``
lift        ratio                         ``1.56×``
number      float                         ``1.57``
========== ============================= ======================

The reporting currency is the orders' schema metadata key
``loyaltymetrics.currency`` (``prepare --currency`` writes it), or the
``--currency`` display option; with neither, money is shown in major units
without a code.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import pyarrow as pa

from .finalize import GROUP_KEYS

CURRENCY_KEY = b"loyaltymetrics.currency"

KINDS = {
    # compute (SPEC §4-5)
    "merchants": "count", "orders": "count", "customers": "count", "new_customers": "count",
    "returning_customers": "count", "repeat_orders": "count", "repeat_customers": "count",
    "orders_from_repeat_customers": "count", "retained_customers": "count", "reward_orders": "count",
    "reward_customers": "count", "member_orders": "count", "member_repeat_customers": "count",
    "revenue": "money", "reward_revenue": "money", "fees": "money", "member_revenue": "money",
    "aov": "money", "reward_aov": "money", "clv": "money", "reward_clv": "money",
    "purchase_frequency": "number", "reward_purchase_frequency": "number",
    "repeat_customer_rate": "fraction", "repeat_order_share": "fraction",
    "retention_rate": "percent", "strict_retention_rate": "percent", "loyalty_roi": "percent",
    "member_repeat_lift": "lift", "member_aov_lift": "lift", "member_frequency_lift": "lift",
    # cohorts (SPEC §9)
    "period_index": "count", "cohort_customers": "count", "active_customers": "count",
    "cumulative_revenue": "money", "retention": "fraction", "cumulative_revenue_per_customer": "money",
    # concentration (SPEC §9)
    "top_customers": "count", "top_revenue": "money", "top_share": "fraction",
    # rfm (SPEC §9): frequency, recency, T and durations count periods of ``freq``
    "frequency": "number", "recency": "number", "T": "number", "monetary_value": "money",
    "frequency_holdout": "number", "monetary_value_holdout": "money", "duration_holdout": "number",
    # clv predictions (SPEC §11)
    "expected_orders": "number", "probability_alive": "fraction", "expected_spend": "money",
}


def kind(name: str) -> str | None:
    """The display kind of column ``name`` (``*_yoy`` are changes in percent), or None when unknown."""
    if name.endswith("_yoy"):
        return "change"
    return KINDS.get(name)


def reporting_currency(orders: Any) -> str | None:
    """The currency code in the orders' schema metadata (``loyaltymetrics.currency``), or None.

    Reads only a schema (a file's footer or header, a table's schema); an
    input that cannot be read so is left for the computation to report.
    """
    try:
        schema = _schema(orders)
    except Exception:  # noqa: BLE001 - display only: the scan reports a bad input with its own error
        return None
    value = (schema.metadata or {}).get(CURRENCY_KEY) if schema is not None else None
    if not value:
        return None
    code = value.decode("utf-8", "replace").strip().upper()
    return code or None


def _schema(orders):
    if isinstance(orders, (pa.Table, pa.RecordBatch, pa.RecordBatchReader)):
        return orders.schema
    if not isinstance(orders, (str, os.PathLike)):
        return None
    from .inputs import _directory_files, _file_kind

    path = Path(orders)
    files = _directory_files(path) if path.is_dir() else [path]
    if not files:
        return None
    kind_ = _file_kind(files[0])
    if kind_ == "parquet":
        import pyarrow.parquet as pq

        return pq.read_schema(str(files[0]))
    if kind_ == "ipc_file":
        with pa.memory_map(str(files[0])) as source:
            return pa.ipc.open_file(source).schema
    if kind_ == "ipc_stream":
        with pa.OSFile(str(files[0])) as source:
            return pa.ipc.open_stream(source).schema
    return None


def format_value(value: Any, kind_: str | None, currency: str | None = None) -> str:
    """One cell as the terminal shows it (``-`` for null or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if kind_ == "money":
        text = f"{value / 100:,.2f}"
        return f"{text} {currency}" if currency else text
    if kind_ == "fraction":
        return f"{value * 100:.1f}%"
    if kind_ == "percent":
        return f"{value:,.1f}%"
    if kind_ == "change":
        return f"{value:+,.1f}%"
    if kind_ == "lift":
        return f"{value:.2f}×"
    if kind_ == "number":
        return f"{value:,.2f}"
    if kind_ == "count" or isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def terminal_width() -> int | None:
    """Columns to fit: ``COLUMNS`` if set, else the terminal's width; None (no limit) when
    standard output is not a terminal, so a file or a pager gets every summary column."""
    try:
        return max(int(os.environ["COLUMNS"]), 40)
    except (KeyError, ValueError):
        pass
    try:
        if sys.stdout.isatty():
            return max(os.get_terminal_size(sys.stdout.fileno()).columns, 40)
    except (AttributeError, ValueError, OSError):
        pass
    return None


def key_columns(table: pa.Table, by: Sequence[str] = (), before: str = "period_start") -> list[str]:
    """The group-key columns of ``table`` in ``by`` order (``merchant_name`` after ``merchant_id``).

    Columns before ``before`` that ``by`` does not name keep their place, after those it names.
    """
    names = table.column_names
    present = names[:names.index(before)] if before in names else []
    keys = []
    for key in by:
        column = GROUP_KEYS.get(key, key)
        for name in (column, "merchant_name") if column == "merchant_id" else (column,):
            if name in present and name not in keys:
                keys.append(name)
    return keys + [name for name in present if name not in keys]


# The compute summary: (column, title), in the order shown; and which to drop first when the
# terminal is too narrow (the last first). ``-o`` writes every column.
SUMMARY = (
    ("merchants", "merchants"), ("orders", "orders"), ("orders_yoy", "orders YoY"), ("revenue", "revenue"),
    ("revenue_yoy", "revenue YoY"), ("aov", "AOV"), ("purchase_frequency", "frequency"), ("clv", "CLV"),
    ("repeat_customer_rate", "repeat rate"), ("repeat_customer_rate_yoy", "repeat YoY"),
    ("retention_rate", "retention"), ("reward_revenue", "reward value"), ("loyalty_roi", "loyalty ROI"),
)
SUMMARY_PRIORITY = (
    "orders", "revenue", "aov", "repeat_customer_rate", "retention_rate", "revenue_yoy", "merchants", "clv",
    "purchase_frequency", "orders_yoy", "repeat_customer_rate_yoy", "reward_revenue", "loyalty_roi",
)


def _render(header, lines, n_left):
    widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, h in enumerate(header)]

    def render(cells):
        return "  ".join(c.ljust(w) if i < n_left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [render(header), render(["-" * w for w in widths])] + [render(line) for line in lines]


def _key_text(value):
    return "-" if value is None else str(value)


def _money_note(currency):
    return f"money in {currency}" if currency else "money in major units"


def format_table(table: pa.Table, keys: Sequence[str], columns: Sequence[tuple[str, str]],
                 currency: str | None = None, *, width: int | None = None,
                 priority: Iterable[str] | None = None) -> tuple[list[str], int]:
    """Rows of ``table`` as aligned text: ``keys`` left-aligned, then ``columns`` ((name, title))
    right-aligned and formatted by their kind. Columns are dropped, last in ``priority`` first,
    until the lines fit ``width``. Returns the lines and how many columns were left out."""
    rows = table.to_pylist()
    key_cells = [[_key_text(row[k]) for k in keys] for row in rows]
    shown = list(columns)
    cells = {name: [format_value(row[name], kind(name), currency) for row in rows] for name, _ in shown}
    width = terminal_width() if width is None else width
    order = list(priority) if priority is not None else [name for name, _ in shown]
    dropped = 0

    def total():
        cols = [max([len(k)] + [len(c[i]) for c in key_cells]) for i, k in enumerate(keys)]
        cols += [max([len(title)] + [len(c) for c in cells[name]]) for name, title in shown]
        return sum(cols) + 2 * (len(cols) - 1)

    while width is not None and len(shown) > 1 and total() > width:
        victim = next((n for n in reversed(order) if any(n == s for s, _ in shown)), shown[-1][0])
        shown = [(n, t) for n, t in shown if n != victim]
        dropped += 1
    header = list(keys) + [title for _, title in shown]
    lines = [kc + [cells[name][i] for name, _ in shown] for i, kc in enumerate(key_cells)]
    return _render(header, lines, len(keys)), dropped


INCOMPLETE_NOTE = "* period not complete: the observation window starts or ends inside it"


def _with_period(table):
    """``table`` with a text column ``period``: its start, marked ``*`` where ``period_complete``
    is false (SPEC §3); and whether any is."""
    starts = [str(p) for p in table.column("period_start").to_pylist()]
    marks = table.column("period_complete").to_pylist() if "period_complete" in table.column_names else []
    period = [f"{p}*" if m is False else p for p, m in zip(starts, marks)] if marks else starts
    return table.append_column("period", pa.array(period, pa.string())), any(m is False for m in marks)


def format_summary(table: pa.Table, by: Sequence[str] = (), currency: str | None = None,
                   width: int | None = None) -> str:
    """The ``compute`` summary: group keys in ``by`` order, the period, the headline metrics."""
    keys = key_columns(table, by)
    view, incomplete = _with_period(table)
    shown = [(name, title) for name, title in SUMMARY if name in table.column_names]
    lines, dropped = format_table(view, keys + ["period"], shown, currency, width=width,
                                  priority=[n for n in SUMMARY_PRIORITY if n in dict(shown)])
    notes = [f"{table.num_rows} row{'' if table.num_rows == 1 else 's'}", _money_note(currency)]
    if dropped:
        notes.append(f"{dropped} columns left out to fit the terminal")
    notes.append(f"-o OUT.parquet writes all {table.num_columns} columns")
    out = lines + [f"({'; '.join(notes)})"]
    if incomplete:
        out.append(INCOMPLETE_NOTE)
    return "\n".join(out)


def format_concentration(table: pa.Table, by: Sequence[str] = (), currency: str | None = None,
                         width: int | None = None) -> str:
    """The ``concentration`` table: keys in ``by`` order, period, counts, money, the top share."""
    keys = key_columns(table, by)
    view, incomplete = _with_period(table)
    shown = [(name, name) for name in table.column_names if name not in keys + ["period_start", "period_complete"]]
    lines, dropped = format_table(view, keys + ["period"], shown, currency, width=width)
    notes = [f"{table.num_rows} row{'' if table.num_rows == 1 else 's'}", _money_note(currency)]
    if dropped:
        notes.append(f"{dropped} columns left out to fit the terminal; -o writes all")
    return "\n".join(lines + [f"({'; '.join(notes)})"] + ([INCOMPLETE_NOTE] if incomplete else []))


MAX_COHORT_ROWS = 36  # the most recent cohorts of each group; -o writes all
COHORT_WIDTH = 200


def format_cohorts(table: pa.Table, by: Sequence[str] = (), width: int | None = None,
                   max_cohorts: int = MAX_COHORT_ROWS) -> str:
    """A retention triangle per group: one line per cohort (its start and size), one column per
    period index k = 0, 1, … with the retention in percent; blank where not yet observable."""
    if width is None:  # a triangle wider than this is not read at a glance, even in a file
        width = terminal_width() or COHORT_WIDTH
    keys = key_columns(table, by, before="cohort_start")
    rows = table.select(keys + ["cohort_start", "period_index", "cohort_customers", "retention"]).to_pylist()
    groups: dict[tuple, dict] = {}
    for row in rows:
        group = groups.setdefault(tuple(row[k] for k in keys), {})
        cohort = group.setdefault(row["cohort_start"], {"size": row["cohort_customers"], "cells": {}})
        cohort["cells"][row["period_index"]] = row["retention"]
    out = []
    for group, cohorts in groups.items():
        if keys:
            out.append(", ".join(f"{k}={_key_text(v)}" for k, v in zip(keys, group)))
        starts = sorted(cohorts)
        hidden_rows = max(0, len(starts) - max_cohorts)
        starts = starts[hidden_rows:]
        last_k = max((k for start in starts for k in cohorts[start]["cells"]), default=0)
        sizes = [f"{cohorts[s]['size']:,}" for s in starts]
        fixed = max(len("cohort"), *(len(str(s)) for s in starts)) + 2 + max(len("customers"), *map(len, sizes))
        ks, used = [], fixed
        for k in range(last_k + 1):  # as many period indexes as fit the width
            cells = [format_value(cohorts[s]["cells"].get(k), "fraction") for s in starts]
            used += 2 + max(len(str(k)), *map(len, cells))
            if ks and width is not None and used > width:
                break
            ks.append(k)
        header = ["cohort", "customers"] + [str(k) for k in ks]
        lines = [[str(s), size] + [format_value(cohorts[s]["cells"].get(k), "fraction")
                                   if k in cohorts[s]["cells"] else "" for k in ks]
                 for s, size in zip(starts, sizes)]
        out.extend(_render(header, lines, 1))
        notes = []
        if hidden_rows:
            notes.append(f"{hidden_rows} earlier cohorts not shown")
        if last_k + 1 > len(ks):
            notes.append(f"period indexes {len(ks)}..{last_k} not shown")
        if notes:
            out.append(f"({'; '.join(notes)}; -o OUT.parquet writes every cell)")
        out.append("")
    out.append(f"(retention in % of each cohort's customers by period index k; {table.num_rows} cells; "
               "-o OUT.parquet writes orders and revenue too)")
    return "\n".join(out)
