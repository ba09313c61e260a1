"""Merchant benchmarks (SPEC §9): how merchants compare within their group.

Finalize work only, over the per-merchant partials of one kernel pass (the
scan ``compute`` makes; no second scan):

1. ``finalize.finalize(partials, by=["merchant"])`` gives every merchant's
   SPEC §5 metrics per period (and ``period_complete``), exactly as
   ``compute(by=["merchant"])`` returns them.
2. Each merchant-period gets the ``by`` keys with ``finalize.group_codes``
   (industry and country from the merchants table, ``size`` the merchant's
   own bucket in that period), as every other output groups merchants.
3. Per group, period and metric, over the merchants whose value is not
   null: ``merchants`` (how many), ``mean`` (``math.fsum`` of the values,
   correctly rounded, divided by ``merchants``), and ``p10`` … ``p90``, the
   percentiles NumPy's ``np.percentile`` returns with its default
   ``method="linear"`` (the same floating-point operations, vectorised over
   the groups, so the numbers are identical bit for bit).
4. With ``per_merchant=True``: each merchant's ``value`` and ``percentile``
   = ``100 * (below + 0.5 * equal) / merchants`` (``equal`` counts the
   merchant itself), null where its value is null.

A group-period in which no merchant has a value for a metric (e.g.
``retention_rate`` in the first period) still has its row, with
``merchants`` 0 and null statistics, so the table has one row for every
(group, period, metric).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pyarrow as pa

from . import parallel, periods
from ._types import ColumnMap, DateLike, Engine, GroupKeys, Merchants, Orders, Period, SizeEdges
from .arrays import bool_array, numeric_array, string_array
from .errors import reporting_resource_errors
from .finalize import (DEFAULT_SIZE_EDGES, DERIVED_COLUMNS, check_by, check_size_edges, combine,
                       finalize, group_codes, key_columns)
from .api import check_scan_options, scan_partials
from .inputs import read_merchants, source_label

# SPEC §5 metrics in SPEC order, then their year-over-year changes in the same order.
METRICS = DERIVED_COLUMNS + tuple(f"{name}_yoy" for name in DERIVED_COLUMNS)
DEFAULT_METRICS = DERIVED_COLUMNS
PERCENTILES = (10, 25, 50, 75, 90)
STAT_COLUMNS = ("mean", "p10", "p25", "median", "p75", "p90")


def check_metrics(metrics):
    """``metrics`` as a tuple of SPEC §5 names in SPEC order (default: every §5 metric).

    A string is one name or a comma-separated list; ``x_yoy`` of a §5
    metric is allowed; anything else is a ``ValueError`` listing the
    choices.
    """
    if metrics is None:
        return DEFAULT_METRICS
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    try:
        metrics = list(metrics)
    except TypeError:
        raise TypeError(f"metrics= must be a list of SPEC §5 metric names or a comma-separated string; "
                        f"got {type(metrics).__name__} {metrics!r}") from None
    unknown = [m for m in metrics if not isinstance(m, str) or m not in METRICS]
    if unknown:
        raise ValueError(f"metrics= has unknown name(s) {unknown}; choose from the SPEC §5 metrics "
                         f"{', '.join(DERIVED_COLUMNS)} (or any of them with _yoy)")
    if not metrics:
        raise ValueError("metrics= names no metric; leave it out for every SPEC §5 metric")
    chosen = set(metrics)
    return tuple(m for m in METRICS if m in chosen)


def _check_benchmark_by(by):
    by = check_by(by)
    if "merchant" in by:
        raise ValueError("by= cannot hold 'merchant' for benchmarks: they compare merchants within groups of "
                         "industry, country and size (per_merchant=True gives each merchant's own value)")
    return by


@reporting_resource_errors
def benchmarks(orders: Orders, merchants: Merchants | None = None, *, by: GroupKeys = (), period: Period = "year",
               metrics: str | Sequence[str] | None = None, per_merchant: bool = False, columns: ColumnMap | None = None,
               size_edges: SizeEdges = DEFAULT_SIZE_EDGES, refunds: bool = False, timezone: str | None = None,
               observation_start: DateLike | None = None, observation_end: DateLike | None = None,
               engine: Engine = "cython", threads: int | None = None,
               chunk_rows: int = parallel.DEFAULT_CHUNK_ROWS, progress: bool = False) -> pa.Table:
    """How merchants compare within their group, per period and SPEC §5 metric (SPEC §9).

    Parameters
    ----------
    orders, merchants, period, columns, size_edges, refunds, timezone, observation_start, observation_end, engine, threads, chunk_rows, progress
        As for ``compute``.
    by : list of str
        Group keys from ``"industry"``, ``"country"``, ``"size"`` (the
        merchant's own bucket in the period); empty for the whole network.
        ``"merchant"`` is not allowed.
    metrics : list of str or comma-separated str, optional
        SPEC §5 metric names (``"aov"``, ``"retention_rate"``, …, or
        ``"aov_yoy"``); default every §5 metric. Rows follow SPEC §5 order
        whatever the order given.
    per_merchant : bool
        Return one row per merchant, period and metric with the merchant's
        ``value`` and ``percentile`` within its group instead of the
        distribution.

    Returns
    -------
    pyarrow.Table
        The distribution: group keys, ``period_start``, ``period_complete``,
        ``metric``, ``merchants``, ``mean``, ``p10``, ``p25``, ``median``,
        ``p75``, ``p90``; or with ``per_merchant`` the group keys,
        ``merchant_id`` (``merchant_name`` when the merchants table has
        names), ``period_start``, ``period_complete``, ``metric``,
        ``value``, ``percentile``. The distribution's rows are sorted by the
        keys (``size`` in bucket order), ``period_start``, then the metric in
        SPEC §5 order; per-merchant rows by the keys, ``period_start``,
        ``merchant_id``, then the metric, so each comparison is together.
        A group-period where no merchant has a value for a metric has its
        row with ``merchants`` 0 and null statistics; a merchant without a
        value has its row with null ``value`` and ``percentile``.
    """
    by = _check_benchmark_by(by)
    metrics = check_metrics(metrics)
    size_edges, threads, chunk_rows = check_scan_options(period, timezone, size_edges, observation_start,
                                                         observation_end, engine, threads, chunk_rows)
    merchant_table = read_merchants(merchants)
    partials = scan_partials(orders, columns, period, refunds, engine, threads, chunk_rows, progress,
                             merchant_table.zones(timezone), "benchmarks")
    return benchmark_tables(partials, merchant_table, by, period, metrics, size_edges, per_merchant=per_merchant,
                            source=source_label(orders), observation_start=observation_start,
                            observation_end=observation_end)


def benchmark_tables(partials, merchant_table, by=(), period="year", metrics=None, size_edges=DEFAULT_SIZE_EDGES,
                     *, per_merchant=False, source="orders", observation_start=None, observation_end=None,
                     merchant_metrics=None):
    """The benchmarks table from one scan's per-(merchant, period) ``Partials`` (finalize work only).

    ``partials``: what ``scan.scan_orders`` returns (combined or not);
    ``merchant_table``: an ``inputs.Merchants`` (``inputs.read_merchants``);
    ``by``, ``period``, ``metrics``, ``size_edges``, ``per_merchant``, the
    observation window: as for :func:`benchmarks`. ``merchant_metrics``: the
    ``finalize(partials, by=["merchant"])`` table when the caller has it
    already (e.g. a report that shows it too), so it is not made twice.
    A report can so build ``compute`` tables, the per-merchant table and
    both benchmark tables from the partials of one pass.
    """
    by = _check_benchmark_by(by)
    metrics = check_metrics(metrics)
    size_edges = check_size_edges(size_edges)
    p = combine(partials, source)
    if merchant_metrics is None:
        merchant_metrics = finalize(p, merchant_table, ("merchant",), period, size_edges, source=source,
                                    observation_start=observation_start, observation_end=observation_end)
    first_month, last_month = p.month_range or (0, 0)
    months = (last_month - first_month + 1) if period == "all" else periods.MONTHS_PER_PERIOD[period]
    return _benchmark(merchant_metrics, merchant_table, by, months, metrics, size_edges, per_merchant)


def _column(table, name):
    """(float64 values, validity) of a column; nulls are 0 in the values."""
    arr = table.column(name).combine_chunks()
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    values = np.asarray(arr.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.float64)
    return values, valid


def _benchmark(table, merchant_table, by, months, metrics, size_edges, per_merchant):
    merchant_id = np.asarray(table.column("merchant_id").to_numpy(zero_copy_only=False), dtype=np.int64)
    n = len(merchant_id)
    day = np.asarray(table.column("period_start").cast(pa.int32()).to_numpy(zero_copy_only=False), dtype=np.int64)
    complete = np.asarray(table.column("period_complete").to_numpy(zero_copy_only=False), dtype=bool)
    orders = np.asarray(table.column("orders").to_numpy(zero_copy_only=False), dtype=np.int64)
    codes, decode = group_codes(merchant_id, orders, months, merchant_table, by, size_edges)

    # Group-periods: rows sorted by the keys (size in bucket order) then period_start.
    order = np.lexsort([merchant_id, day] + codes[::-1]) if n else np.zeros(0, np.int64)
    new = np.zeros(n, dtype=bool)
    new[:1] = True
    for c in codes + [day]:
        c = c[order]
        new[1:] |= c[1:] != c[:-1]
    gp_sorted = np.cumsum(new) - 1
    gp = np.empty(n, dtype=np.int64)
    gp[order] = gp_sorted
    heads = order[new]  # one row of each group-period, in output order
    n_gp = len(heads)

    values = {name: _column(table, name) for name in metrics}
    # The key columns of each group-period, taken by index into each output row (no string per row).
    group_keys = key_columns(by, [c[heads] for c in codes], decode, merchant_table)
    if per_merchant:
        return _per_merchant(table, group_keys, order, gp, day, complete, metrics, values)

    m = len(metrics)
    rows = n_gp * m
    columns = _take(group_keys, np.repeat(np.arange(n_gp), m))
    columns["period_start"] = numeric_array(np.repeat(day[heads], m).astype(np.int32), pa.date32())
    columns["period_complete"] = bool_array(np.repeat(complete[heads], m))
    columns["metric"] = string_array(metrics).take(numeric_array(np.tile(np.arange(m), n_gp), pa.int64()))
    count = np.zeros(rows, dtype=np.int64)
    stats = {name: np.zeros(rows) for name in STAT_COLUMNS}
    for j, name in enumerate(metrics):
        v, valid = values[name]
        sorted_values, _, _, starts, counts = _sorted_by_group(v, valid, gp, n_gp)
        out = np.arange(n_gp) * m + j
        count[out] = counts
        has = counts > 0
        s, c = starts[has], counts[has]
        listed = sorted_values.tolist()
        stats["mean"][out[has]] = [math.fsum(listed[a:a + k]) / k for a, k in zip(s.tolist(), c.tolist())]
        for q, stat in zip(PERCENTILES, STAT_COLUMNS[1:]):
            stats[stat][out[has]] = percentile_sorted(sorted_values, s, c, q)
    columns["merchants"] = numeric_array(count, pa.int64())
    valid = count > 0
    for stat in STAT_COLUMNS:
        columns[stat] = numeric_array(stats[stat], pa.float64(), valid)
    return pa.table(columns)


def _sorted_by_group(values, valid, gp, n_gp):
    """The non-null values sorted by (group-period, value): ``(values, group-periods, their rows, starts,
    counts)``, the rows being indexes into ``values`` and each group-period's start and count there."""
    keep = np.flatnonzero(valid)
    v, g = values[keep], gp[keep]
    order = np.lexsort((v, g))
    v, g, rows = v[order], g[order], keep[order]
    counts = np.bincount(g, minlength=n_gp).astype(np.int64)
    starts = np.zeros(n_gp, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    return v, g, rows, starts, counts


def percentile_sorted(sorted_values, starts, counts, q):
    """``np.percentile(x, q)`` (``method="linear"``) of each run ``sorted_values[start:start + count]``.

    The same floating-point steps as NumPy's ``_quantile``: virtual index
    ``(n - 1) * (q / 100)``; at or past the last index the last value; else
    ``a + (b - a) * g`` for a fraction ``g < 0.5`` and ``b - (b - a) * (1 - g)``
    otherwise (NumPy's ``_lerp``), ``a`` and ``b`` the values either side.
    Every count must be at least 1.
    """
    n = counts.astype(np.float64)
    virtual = (n - 1) * (np.float64(q) / 100)
    previous = np.floor(virtual)
    above = virtual >= n - 1
    lo = np.where(above, counts - 1, previous.astype(np.int64))
    hi = np.where(above, counts - 1, lo + 1)
    gamma = np.where(above, virtual - (-1.0), virtual - previous)  # NumPy's gamma there is moot: a == b
    a = sorted_values[starts + lo]
    b = sorted_values[starts + hi]
    diff = b - a
    result = a + diff * gamma
    high = gamma >= 0.5
    result[high] = (b - diff * (1 - gamma))[high]
    return result


def _take(columns, index):
    """Each Arrow array of ``columns`` (a dict) taken at the int64 ``index``."""
    index = numeric_array(np.asarray(index, dtype=np.int64), pa.int64())
    return {name: column.take(index) for name, column in columns.items()}


def _per_merchant(table, group_keys, order, gp, day, complete, metrics, values):
    """One row per merchant, period and metric: the value and its percentile within its group-period."""
    n = len(gp)
    m = len(metrics)
    n_gp = int(gp.max()) + 1 if n else 0
    # Row order: keys, period_start, merchant_id (``order``), then metric: one comparison together.
    rows = np.repeat(order, m)
    metric_index = np.tile(np.arange(m), n)
    value = np.zeros(n * m)
    pct = np.zeros(n * m)
    ok = np.zeros(n * m, dtype=bool)
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    for j, name in enumerate(metrics):
        v, valid = values[name]
        sorted_values, group, back, starts, counts = _sorted_by_group(v, valid, gp, n_gp)
        rank = percentile_ranks(sorted_values, group, starts, counts)
        out = position * m + j
        value[out] = v
        ok[out] = valid
        pct[out[back]] = rank
    columns = _take(group_keys, gp[rows])
    names = ["merchant_id"] + (["merchant_name"] if "merchant_name" in table.column_names else [])
    columns.update(_take({name: table.column(name).combine_chunks() for name in names}, rows))
    columns["period_start"] = numeric_array(day[rows].astype(np.int32), pa.date32())
    columns["period_complete"] = bool_array(complete[rows])
    columns["metric"] = string_array(metrics).take(numeric_array(metric_index, pa.int64()))
    columns["value"] = numeric_array(value, pa.float64(), ok)
    columns["percentile"] = numeric_array(pct, pa.float64(), ok)
    return pa.table(columns)


def percentile_ranks(sorted_values, group, starts, counts):
    """``100 * (below + 0.5 * equal) / n`` of each value within its group (values sorted by group, value)."""
    k = len(sorted_values)
    if k == 0:
        return np.zeros(0)
    new_run = np.ones(k, dtype=bool)
    new_run[1:] = (group[1:] != group[:-1]) | (sorted_values[1:] != sorted_values[:-1])
    run_start = np.flatnonzero(new_run)
    run_len = np.diff(np.append(run_start, k))
    run_of = np.cumsum(new_run) - 1
    below = run_start[run_of] - starts[group]
    equal = run_len[run_of]
    return 100 * (below + 0.5 * equal) / counts[group]


def format_benchmarks(table, by=(), currency=None, width=None):
    """The terminal summary: keys in ``by`` order, the period (``*`` where not complete), the metric,
    then the statistics (or the merchant's value and percentile), each formatted by the metric's
    display kind (money in major units, rates as percentages; ``display.kind``)."""
    from .display import INCOMPLETE_NOTE, _key_text, _money_note, _render, _with_period, format_value, key_columns
    from .display import kind as display_kind

    keys = key_columns(table, by)
    if "merchant_id" in table.column_names:
        keys += [k for k in ("merchant_id", "merchant_name") if k in table.column_names and k not in keys]
    view, incomplete = _with_period(table)
    per_merchant = "percentile" in table.column_names
    stats = ("value",) if per_merchant else STAT_COLUMNS
    header = keys + ["period", "metric"] + ([] if per_merchant else ["merchants"]) + list(stats) + (
        ["percentile"] if per_merchant else [])
    lines = []
    for row in view.to_pylist():
        k = display_kind(row["metric"])
        line = [_key_text(row[c]) for c in keys] + [row["period"], row["metric"]]
        if not per_merchant:
            line.append(format_value(row["merchants"], "count"))
        line += [format_value(row[s], k, currency) for s in stats]
        if per_merchant:
            line.append("-" if row["percentile"] is None else f"{row['percentile']:.1f}")
        lines.append(line)
    notes = [f"{table.num_rows} row{'' if table.num_rows == 1 else 's'}", _money_note(currency)]
    if not per_merchant:
        notes.append("merchants: those with a value; mean and percentiles over them")
    out = _render(header, lines, len(keys) + 2) + [f"({'; '.join(notes)})"]
    if incomplete:
        out.append(INCOMPLETE_NOTE)
    return "\n".join(out)
