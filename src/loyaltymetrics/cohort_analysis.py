"""Acquisition cohorts (SPEC §9): from cells per (merchant, cohort, period_index) to the table."""
from typing import Literal

import numpy as np
import pyarrow as pa

from . import parallel, periods
from . import progress as _progress
from ._types import ColumnMap, DateLike, Engine, GroupKeys, Merchants, Orders, SizeEdges
from .analyses import CohortKernel, engine_module, merchant_zones, run
from .arrays import bool_array, numeric_array
from .errors import AmountOverflowError, reporting_resource_errors
from .finalize import (DEFAULT_SIZE_EDGES, INT64, check_by, check_observation, check_size_edges, group_codes,
                       key_columns, observation_window, period_complete, sum_groups)
from .inputs import count_rows, order_batches, read_merchants, rereadable, source_label
from .scan import rescan

COHORT_PERIODS = ("month", "quarter", "year")
COLUMNS = (
    "cohort_start", "period_index", "period_start", "period_complete", "cohort_customers", "active_customers",
    "orders", "revenue", "cumulative_revenue", "retention", "cumulative_revenue_per_customer",
)


@reporting_resource_errors
def cohorts(orders: Orders, merchants: Merchants | None = None, *, by: GroupKeys = (),
            period: Literal["month", "quarter", "year"] = "month", columns: ColumnMap | None = None,
            size_edges: SizeEdges = DEFAULT_SIZE_EDGES, refunds: bool = False, engine: Engine = "cython",
            threads: int | None = None, chunk_rows: int = parallel.DEFAULT_CHUNK_ROWS,
            progress: bool = False, observation_start: DateLike | None = None,
            observation_end: DateLike | None = None, timezone: str | None = None, presorted: bool = True,
            memory_limit: int | None = None) -> pa.Table:
    """Acquisition cohorts per group (SPEC §9).

    A store-customer's cohort is the period of its rank-1 order. For each
    group, cohort and ``period_index`` k (0 = the acquisition period) one row
    describes what the cohort's store-customers did in period cohort + k.

    Parameters
    ----------
    orders, merchants, columns
        As for ``compute``.
    by : list of str
        Group keys from ``"merchant"``, ``"industry"``, ``"country"``,
        ``"size"``. ``size`` is the merchant's size bucket (SPEC §6) **in the
        cohort's acquisition period**: a cohort is acquired once, so each
        cohort belongs to one group and its retention is a ratio within it.
    period : {"month", "quarter", "year"}
        Calendar periods of the cohorts and of the period index, in each
        merchant's own time zone (``"all"`` has no index, so it is rejected).
    size_edges : sequence of numbers
        As for ``compute``.
    refunds : bool
        As for ``compute`` (SPEC §2): a row with a negative amount is a
        refund, not an order. It is added to the ``revenue`` (and cumulative
        revenue) of its store-customer's cell for its period, makes no one
        active, and plays no part in choosing the cohort (the period of the
        first row that is an order). A refund in a period before its
        store-customer's first order, of a store-customer without orders,
        or after the period of the input's latest order is in no cell.
        By default a negative amount is a ``NegativeAmountError``.
    timezone : str, optional
        IANA zone of the merchants whose ``timezone`` the merchants table
        does not give (SPEC §3); default UTC. Each store-customer's orders
        fall in the local periods of its merchant's zone.
    engine : {"cython", "numba"}
    threads, chunk_rows
        As for ``compute``: threads scanning chunks of the input side by side
        (default: the CPUs this process may use) and rows per chunk and
        thread. Results are identical for every thread count and chunk size.
    progress : bool
        Show a progress bar with rows/s on stderr while the input is
        scanned, when stderr is a terminal.
    observation_start, observation_end : datetime.date or "YYYY-MM-DD", optional
        The observation window of SPEC §3, as for ``compute``: it sets
        ``period_complete``.

    Returns
    -------
    pyarrow.Table
        Sorted by the group keys (``size`` in bucket order), ``cohort_start``,
        ``period_index``:

        * group keys as in ``compute``;
        * ``cohort_start`` (date32): first day of the cohort period;
        * ``period_index`` (int32): k, periods since the cohort period;
        * ``period_start`` (date32): first day of period cohort + k;
        * ``period_complete`` (bool): period cohort + k (the cell's calendar
          period) lies wholly inside the observation window (SPEC §3), so
          its activity is all observed; a cohort was acquired over a whole
          period when its k = 0 row is complete;
        * ``cohort_customers`` (int64): store-customers of the cohort;
        * ``active_customers`` (int64): of those, with ≥1 order in period k;
        * ``orders``, ``revenue`` (int64): their orders and amount in period k;
        * ``cumulative_revenue`` (int64): their amount in periods 0..k;
        * ``retention`` (float64): active_customers / cohort_customers;
        * ``cumulative_revenue_per_customer`` (float64):
          cumulative_revenue / cohort_customers.

        Every observable cell is present, inactive ones with zeros: a cell
        is observable when period cohort + k is not after the period of the
        latest order of the whole input (the input's horizon, the same for
        every group: the latest local period of any order, each in its
        merchant's zone, so that no order's cell is cut off). Later cells
        are absent.

    Raises
    ------
    loyaltymetrics.InputError
        For bad input, as ``compute`` does (negative amounts included,
        unless ``refunds=True``).
    ValueError
        For bad options.
    """
    by = check_by(by)
    if period not in COHORT_PERIODS:
        raise ValueError(f"period must be one of {', '.join(COHORT_PERIODS)} for cohorts; got {period!r}")
    size_edges = check_size_edges(size_edges)
    check_observation(observation_start, observation_end)
    engine_module(engine)
    threads = parallel.resolve_threads(threads)
    chunk_rows = parallel.check_chunk_rows(chunk_rows)
    merchant_table = read_merchants(merchants)
    if not presorted:   # SPEC §8: sorted first, then read as sorted rows (see compute)
        from . import unsorted

        return unsorted.run_sorted(
            lambda rows: cohorts(rows, merchants, by=by, period=period, size_edges=size_edges, refunds=refunds,
                                 engine=engine, threads=threads, chunk_rows=chunk_rows, progress=progress,
                                 observation_start=observation_start, observation_end=observation_end,
                                 timezone=timezone),
            orders, columns, refunds, memory_limit)
    kernel = CohortKernel(period, engine, refunds, merchant_zones(merchant_table, timezone))
    total = count_rows(orders) if _progress.shown(progress) else None

    def compute(threads):
        with _progress.bar(total, progress, desc="cohorts") as bar:
            partials = run(kernel, order_batches(orders, columns, threads=threads), threads, chunk_rows, bar.update)
        return cohorts_table(partials, merchant_table, by, period, size_edges, source=source_label(orders),
                             observation_start=observation_start, observation_end=observation_end)

    return rescan(compute, threads, rereadable(orders), refunds)


def _group_starts(keys):
    """Sort order of rows by ``keys`` (most significant first) and where each distinct key starts."""
    n = len(keys[0]) if keys else 0
    order = np.lexsort(keys[::-1]) if keys else np.arange(0)
    new = np.zeros(n, dtype=bool)
    new[:1] = True
    for k in keys:
        k = k[order]
        new[1:] |= k[1:] != k[:-1]
    return order, np.flatnonzero(new)


def _dense(merchant_id, period, n_periods):
    """One int64 key per (merchant, period), ordered like the pair."""
    _, code = np.unique(merchant_id, return_inverse=True)
    return code.reshape(-1).astype(np.int64) * n_periods + period


def cohorts_table(partials, merchants, by, period, size_edges=DEFAULT_SIZE_EDGES, source="orders",
                  observation_start=None, observation_end=None):
    """The cohorts table from ``CohortPartials`` of any number of states (summed here)."""
    p = partials
    window = observation_window(p.day_range, observation_start, observation_end)
    n_periods = periods.n_periods(period)
    merchant = p.merchant_id
    cohort = p.cohort.astype(np.int64)
    index = p.period_index.astype(np.int64)

    # Cells of the same (merchant, cohort, k) from several states add up.
    order, starts = _group_starts([merchant, cohort, index])
    merchant, cohort, index = merchant[order][starts], cohort[order][starts], index[order][starts]
    cells = sum_groups(p.cells[order], starts, source)
    last_period = 0
    if p.horizon_month is not None:
        last_period = int(periods.month_period(period)[p.horizon_month])
    # Refunds after the period of the input's latest order are in no observable cell.
    observable = cohort + index <= last_period
    if not observable.all():
        merchant, cohort, index, cells = merchant[observable], cohort[observable], index[observable], cells[observable]

    # size (SPEC §6) in the cohort period: the merchant's orders in that period, from every cohort.
    orders_in_cohort_period = np.zeros(len(merchant), dtype=np.int64)
    if "size" in by and len(merchant):
        activity = _dense(merchant, cohort + index, n_periods)
        act_order, act_starts = _group_starts([activity])
        keys = activity[act_order][act_starts]
        totals = sum_groups(cells[act_order, 1], act_starts, source)
        wanted = _dense(merchant, cohort, n_periods)
        orders_in_cohort_period = totals[np.searchsorted(keys, wanted)]  # k = 0 cells: always present
    months = periods.MONTHS_PER_PERIOD[period]
    codes, decode = group_codes(merchant, orders_in_cohort_period, months, merchants, by, size_edges)

    # Sum merchants into groups: one row per (group, cohort, k).
    order, starts = _group_starts(codes + [cohort, index])
    codes = [c[order][starts] for c in codes]
    cohort, index = cohort[order][starts], index[order][starts]
    cells = sum_groups(cells[order], starts, source)

    # One grid row per observable (group, cohort, k): k = 0 .. last period - cohort.
    first = np.zeros(len(cohort), dtype=bool)
    first[:1] = True
    for key in codes + [cohort]:
        first[1:] |= key[1:] != key[:-1]
    cohort_rows = np.flatnonzero(first)                 # sorted by k: the k = 0 row
    lengths = last_period - cohort[cohort_rows] + 1
    grid_start = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(grid_start[-1])
    cohort_of_row = np.cumsum(first) - 1
    grid_cohort = np.repeat(np.arange(len(cohort_rows)), lengths)
    grid_index = np.arange(n, dtype=np.int64) - grid_start[grid_cohort]
    grid_cells = np.zeros((n, 3), dtype=np.int64)
    grid_cells[grid_start[cohort_of_row] + index] = cells

    cohort_customers = cells[cohort_rows, 0][grid_cohort]
    revenue = grid_cells[:, 2]
    # Cumulative revenue per cohort: a running sum that restarts at each cohort. int64 sums wrap
    # modulo 2**64, so the difference of two running sums is exact whenever the true value fits;
    # a cohort whose cells may add up past int64 (each cell fits) is checked exactly.
    running = np.cumsum(revenue.view(np.uint64), dtype=np.uint64)
    before = np.concatenate([[np.uint64(0)], running])[grid_start[:-1]][grid_cohort]
    cumulative = (running - before).view(np.int64)
    _check_cumulative(revenue, grid_start, source)

    grid_codes = [c[cohort_rows][grid_cohort] for c in codes]
    grid_cohort_period = cohort[cohort_rows][grid_cohort]
    table = key_columns(by, grid_codes, decode, merchants)
    table["cohort_start"] = _dates(period, grid_cohort_period)
    table["period_index"] = numeric_array(grid_index.astype(np.int32), pa.int32())
    table["period_start"] = _dates(period, grid_cohort_period + grid_index)
    table["period_complete"] = bool_array(period_complete(period, grid_cohort_period + grid_index, window))
    table["cohort_customers"] = numeric_array(cohort_customers, pa.int64())
    table["active_customers"] = numeric_array(np.ascontiguousarray(grid_cells[:, 0]), pa.int64())
    table["orders"] = numeric_array(np.ascontiguousarray(grid_cells[:, 1]), pa.int64())
    table["revenue"] = numeric_array(np.ascontiguousarray(revenue), pa.int64())
    table["cumulative_revenue"] = numeric_array(cumulative, pa.int64())
    customers = cohort_customers.astype(np.float64)    # >= 1: every cohort has its k = 0 customers
    table["retention"] = numeric_array(grid_cells[:, 0] / customers, pa.float64())
    table["cumulative_revenue_per_customer"] = numeric_array(cumulative / customers, pa.float64())
    return pa.table(table)


def _check_cumulative(revenue, grid_start, source):
    """AmountOverflowError if a cohort's running sum of revenue leaves int64 (its cells each fit)."""
    if not len(revenue):
        return
    suspect = np.add.reduceat(np.abs(revenue.astype(np.float64)), grid_start[:-1]) > 2.0**62
    for c in np.flatnonzero(suspect):
        total = 0
        for value in revenue[grid_start[c]:grid_start[c + 1]]:
            total += int(value)
            if not INT64.min <= total <= INT64.max:
                raise AmountOverflowError(
                    source, None,
                    f"a cohort's cumulative_revenue reaches {total}, outside int64 (about ±9.2e18 minor units)",
                )


def _dates(period, index):
    return numeric_array(periods.period_start(period, index).astype(np.int32), pa.date32())
