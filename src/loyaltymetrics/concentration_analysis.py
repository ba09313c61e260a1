"""Revenue concentration (SPEC §9): the share of revenue from the top store-customers.

Exact top-k sums in bounded memory, by histogram refinement:

1. First pass: per (merchant, period), the merchant's orders (for ``size``)
   and a histogram of its store-customer-period revenues over
   exact-boundary bins (``_analyses.bin_offsets``: one bin per value below
   64, above that 64 bins per power of two, so a bin spans at most 1/64 of
   its values), with the count and the int64 sum of each bin. Only
   non-empty bins are kept.
2. Merchants are grouped (``finalize.group_codes``, as ``compute``
   groups them) and their bins added per (group, period). Walking bins from
   the top, the bin where the count reaches k = ceil(top × customers) is
   the threshold bin: everything above it is in the top k (its sum is
   known exactly); if the whole threshold bin is taken, or it holds one
   value, the top-k sum is known.
3. Otherwise a targeted pass reads the input again and looks only at the
   revenues inside each open group-period's threshold bin: it collects them
   when they fit in the collection budget (then the top r of them are
   summed exactly), or else histograms them again with bins of
   (value − bin start), a 128-fold refinement at least. Repeat until every
   group-period is settled (each pass at least 128 times narrower, so at
   most 8 refinements even for adversarial revenues; in practice one
   collection pass settles everything).

With refunds (SPEC §2) a store-customer-period's revenue may be negative:
the first pass puts those in one extra bin, ``NEGATIVE_BIN`` = [INT64_MIN,
-1], below every other, refined like any bin (its offsets from INT64_MIN
fit int64); and the revenue of store-customers with only refunds in the
period, who are no customers, in ``REFUND_BIN`` with a count of 0, so it is
in the group-period's revenue but never ranked.
"""
import itertools
import os
import tempfile

import numpy as np
import pyarrow as pa

from . import parallel, periods
from . import progress as _progress
from ._types import ColumnMap, DateLike, Engine, GroupKeys, Merchants, Orders, Period, SizeEdges
from .analyses import (
    NEGATIVE_BIN,
    HistKernel,
    Targets,
    check_top,
    engine_module,
    merchant_zones,
    run,
    top_count,
)
from .arrays import bool_array, numeric_array
from ._analyses import bin_offsets
from .cohort_analysis import _group_starts
from .errors import InputChangedError, reporting_resource_errors
from .finalize import (DEFAULT_SIZE_EDGES, check_by, check_observation, check_size_edges, group_codes, key_columns,
                       observation_window, period_complete, sum_groups)
from .inputs import _in_memory, count_rows, order_batches, read_merchants, resolve_columns, source_label
from .scan import rescan

# Revenues a refinement pass may collect (two int64 each: 32 MiB); beyond it, it histograms.
COLLECT_BUDGET = 1 << 21
INT64_MIN = np.iinfo(np.int64).min
COLUMNS = ("period_start", "period_complete", "customers", "top_customers", "revenue", "top_revenue", "top_share")


@reporting_resource_errors
def concentration(orders: Orders, merchants: Merchants | None = None, *, by: GroupKeys = (), period: Period = "year",
                  top: float = 0.05, columns: ColumnMap | None = None, size_edges: SizeEdges = DEFAULT_SIZE_EDGES,
                  refunds: bool = False, engine: Engine = "cython", threads: int | None = None,
                  chunk_rows: int = parallel.DEFAULT_CHUNK_ROWS, progress: bool = False,
                  observation_start: DateLike | None = None, observation_end: DateLike | None = None,
                  timezone: str | None = None, presorted: bool = True,
                  memory_limit: int | None = None) -> pa.Table:
    """Share of revenue from the top store-customers, per group and period (SPEC §9).

    Parameters
    ----------
    orders, merchants, by, period, columns, size_edges
        As for ``compute`` (``size`` is the merchant's bucket in the period,
        as there; ``period="all"`` is one period). Periods are calendar
        periods in each merchant's own time zone (SPEC §3); ``"all"``
        starts on the first day of the local month of the input's earliest
        order, in its merchant's zone, and its length in months (for
        ``size``) runs to the latest order's local month, as in ``compute``
        (at least one).
    top : number in (0, 1]
        The fraction of store-customers at the top: k = ceil(top ×
        customers). A float counts as the decimal it prints as (0.07 is
        7/100), a ``Fraction`` or ``Decimal`` exactly.
    refunds : bool
        As for ``compute`` (SPEC §2): a row with a negative amount is a
        refund, not an order. It is added to its store-customer's revenue in
        the period (which may then be negative, and ranks below every
        positive one) and to ``revenue``; a store-customer with only refunds
        in a period is not one of its ``customers`` (its refunds still count
        in ``revenue``). By default a negative amount is a
        ``NegativeAmountError``.
    timezone : str, optional
        IANA zone of the merchants whose ``timezone`` the merchants table
        does not give (SPEC §3); default UTC.
    engine : {"cython", "numba"}
    threads, chunk_rows
        As for ``compute``: threads scanning chunks of the input side by side
        (default: the CPUs this process may use) and rows per chunk and
        thread. Results are identical for every thread count and chunk size.
    progress : bool
        Show a progress bar with rows/s on stderr for each pass over the
        input, when stderr is a terminal.
    observation_start, observation_end : datetime.date or "YYYY-MM-DD", optional
        The observation window of SPEC §3, as for ``compute``: it sets
        ``period_complete``.

    Returns
    -------
    pyarrow.Table
        One row per group and period with orders, sorted by the group keys
        then ``period_start``:

        * group keys (``size`` in bucket order), ``period_start`` (date32)
          and ``period_complete`` (bool) as in ``compute``;
        * ``customers`` (int64): store-customers with ≥1 order in the period;
        * ``top_customers`` (int64): k = ceil(top × customers), ≥ 1;
        * ``revenue`` (int64): sum of amount in the period;
        * ``top_revenue`` (int64, exact): sum of the revenue in the period
          of the k store-customers with the most of it (ties arbitrary: the
          sum is the same);
        * ``top_share`` (float64): top_revenue / revenue, null where revenue
          is 0.

    Method and memory
    -----------------
    Exact, by histogram refinement (see this module's docstring): a first
    pass builds, per (merchant, period), the histogram of store-customer-
    period revenue over exact-boundary bins (counts and int64 sums); a
    second pass, only if some group-period's threshold bin holds several
    distinct values, collects exactly the revenues in those bins (refining
    with finer bins first if they hold more than ``COLLECT_BUDGET`` = 2²¹
    revenues in all). Memory does not grow with the number of rows: one
    row per (merchant, period) and at most 3,712 non-empty bins per
    (merchant, period) (never more than its store-customers), plus the
    current merchant's dense bins (3,712 × 16 bytes per period it has
    orders in), plus at most 2²¹ collected revenues.

    The input is read once or twice (rarely more): a path, a table or a
    DataFrame is simply read again. A one-shot ``RecordBatchReader`` (or
    other Arrow stream) is spooled as it is read to an uncompressed Arrow
    file of the order columns in the temporary directory (``TMPDIR``),
    removed before returning: plan disk space for one copy of those columns.

    Raises
    ------
    loyaltymetrics.InputError
        For bad input, as ``compute`` does (negative amounts included,
        unless ``refunds=True``);
        ``InputChangedError`` if the input reads differently on a later pass.
    ValueError
        For bad options (``top`` outside (0, 1], unknown keys, ...).
    """
    by = check_by(by)
    periods.check_period(period)
    size_edges = check_size_edges(size_edges)
    top = check_top(top)
    check_observation(observation_start, observation_end)
    engine_module(engine)
    threads = parallel.resolve_threads(threads)
    chunk_rows = parallel.check_chunk_rows(chunk_rows)
    merchant_table = read_merchants(merchants)
    if not presorted:   # SPEC §8: sorted first, then read as sorted rows (see compute)
        from . import unsorted

        return unsorted.run_sorted(
            lambda rows: concentration(rows, merchants, by=by, period=period, top=top, size_edges=size_edges,
                                       refunds=refunds, engine=engine, threads=threads, chunk_rows=chunk_rows,
                                       progress=progress, observation_start=observation_start,
                                       observation_end=observation_end, timezone=timezone),
            orders, columns, refunds, memory_limit)
    zones = merchant_zones(merchant_table, timezone)
    total = count_rows(orders) if _progress.shown(progress) else None
    passes = itertools.count(1)

    with _Rereadable(orders, columns) as source:

        def compute(threads):
            def scan(kernel):
                with _progress.bar(total, progress, desc=f"concentration: pass {next(passes)}") as bar:
                    return run(kernel, source.batches(), threads, chunk_rows, bar.update)

            return concentration_table(scan(HistKernel(period, engine, refunds=refunds, zones=zones)),
                                       merchant_table, by, period, top,
                                       lambda targets: scan(HistKernel(period, engine, targets, refunds, zones)),
                                       size_edges, source=source_label(orders),
                                       observation_start=observation_start, observation_end=observation_end)

        # Always readable again: a one-shot stream is spooled on the first pass.
        return rescan(compute, threads, True, refunds)


class _Rereadable:
    """The orders as something to read more than once; one-shot streams are spooled to disk."""

    def __init__(self, orders, columns):
        self.columns = columns
        self.reader = None
        self.spool = None
        self._tmp = None
        if isinstance(orders, (str, os.PathLike)):
            self.orders = orders
        else:
            self.orders = _in_memory(orders)   # a DataFrame is converted once, not once per pass
            if isinstance(self.orders, pa.RecordBatchReader):
                self.reader, self.orders = self.orders, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._tmp is not None:
            self._tmp.cleanup()

    def batches(self):
        if self.reader is not None:
            reader, self.reader = self.reader, None
            return order_batches(self._tee(reader), self.columns)
        return order_batches(self.orders if self.spool is None else self.spool, self.columns)

    def _tee(self, reader):
        """``reader``, writing each batch's order columns to a spool file as it goes by."""
        names = set(resolve_columns(self.columns).values())
        keep = [i for i, field in enumerate(reader.schema) if field.name in names]
        schema = pa.schema([reader.schema.field(i) for i in keep])
        self._tmp = tempfile.TemporaryDirectory(prefix="loyaltymetrics-")
        self.spool = os.path.join(self._tmp.name, "orders.arrow")

        def batches():
            with pa.OSFile(self.spool, "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
                for batch in reader:
                    batch = pa.RecordBatch.from_arrays([batch.column(i) for i in keep], schema=schema)
                    writer.write_batch(batch)
                    yield batch

        return pa.RecordBatchReader.from_batches(schema, batches())


def _rank_within(starts, n):
    """For rows grouped at ``starts``: each row's group number."""
    first = np.zeros(n, dtype=np.int64)
    first[starts] = 1
    return np.cumsum(first) - 1


def _merge_bins(gp, bins, count, total, source):
    """Add bins per (group-period, bin); rows sorted by group-period, then bin descending."""
    order, starts = _group_starts([gp, -bins.astype(np.int64)])
    count = np.add.reduceat(count[order], starts) if len(order) else count[:0]
    total = sum_groups(total[order], starts, source)
    return gp[order][starts], bins[order][starts], count, total


def _threshold(gp, bins, count, total, need, low):
    """Settle the top-``need`` sum of each group-period whose bins are given (see module docstring).

    ``need`` and ``low`` are per group-period (indexed by ``gp``); rows come
    from ``_merge_bins``. Returns ``(gps, settled, top_sum, left, lo, hi, n_in)``:
    per group-period present, whether its sum is settled, the sum (or, if
    not, the sum above the threshold bin), and for unsettled ones the
    count still needed from the threshold bin's values ``[lo, hi]`` and how
    many values it holds.
    """
    n = len(gp)
    first = np.ones(n, dtype=bool)
    first[1:] = gp[1:] != gp[:-1]
    firsts = np.flatnonzero(first)
    gps = gp[firsts]
    cum_count = np.cumsum(count)
    # Running sums wrap modulo 2**64; differences are exact as the true values fit int64.
    cum_sum = np.cumsum(total.view(np.uint64), dtype=np.uint64)
    count_before = cum_count[firsts] - count[firsts]
    sum_before = cum_sum[firsts] - total[firsts].view(np.uint64)
    wanted = need[gps]
    thr = np.searchsorted(cum_count, count_before + wanted, side="left")
    ends = np.append(firsts[1:], n)
    if np.any(thr >= ends) or np.any(wanted < 1):
        raise AssertionError("top count outside the group-period's histogram")
    above_count = cum_count[thr] - count[thr] - count_before
    above_sum = (cum_sum[thr] - total[thr].view(np.uint64) - sum_before).view(np.int64)
    left = wanted - above_count
    # The negative bin (refunds, first pass only) is the range [INT64_MIN, -1], refined from INT64_MIN.
    negative = bins[thr] == NEGATIVE_BIN
    offset, width = bin_offsets(np.where(negative, 0, bins[thr]))
    lo = np.where(negative, INT64_MIN, low[gps] + offset)
    hi = np.where(negative, -1, lo + (width - 1))
    whole = left == count[thr]
    settled = whole | ((width == 1) & ~negative)
    top_sum = above_sum + np.where(whole, total[thr], np.where(settled & ~negative, left * lo, 0))
    return gps, settled, top_sum, left, lo, hi, count[thr]


def concentration_table(first, merchants, by, period, top, rerun, size_edges=DEFAULT_SIZE_EDGES,
                        source="orders", observation_start=None, observation_end=None):
    """The concentration table from first-pass ``HistPartials``; ``rerun(targets)`` runs a later pass."""
    p = first
    window = observation_window(p.day_range, observation_start, observation_end)
    # (merchant, period) rows from several states add up.
    order, starts = _group_starts([p.merchant_id, p.period.astype(np.int64)])
    mp_of_row = np.empty(len(order), dtype=np.int64)
    mp_of_row[order] = _rank_within(starts, len(order))
    merchant, mp_period = p.merchant_id[order][starts], p.period[order][starts].astype(np.int64)
    orders = sum_groups(p.orders[order], starts, source)

    first_month, last_month = p.month_range or (0, 0)
    # "all": the local months from the earliest order's to the latest's, as compute counts them (at
    # least one: zones far apart can put the latest order's month before the earliest's).
    months = max(last_month - first_month + 1, 1) if period == "all" else periods.MONTHS_PER_PERIOD[period]
    codes, decode = group_codes(merchant, orders, months, merchants, by, size_edges)

    # Group-periods: merchants in the same group and period.
    gorder, gstarts = _group_starts(codes + [mp_period])
    gp_of_mp = np.empty(len(merchant), dtype=np.int64)
    gp_of_mp[gorder] = _rank_within(gstarts, len(gorder))
    n_gp = len(gstarts)

    gp, bins, count, total = _merge_bins(gp_of_mp[mp_of_row[p.bin_key]], p.bin_index, p.bin_count,
                                         p.bin_sum, source)
    first_bin = np.ones(len(gp), dtype=bool)
    first_bin[1:] = gp[1:] != gp[:-1]
    bin_starts = np.flatnonzero(first_bin)
    customers = np.add.reduceat(count, bin_starts) if len(gp) else np.zeros(0, np.int64)
    revenue = sum_groups(total, bin_starts, source)
    top_customers = top_count(customers, top)

    top_revenue = np.zeros(n_gp, dtype=np.int64)
    low = np.zeros(n_gp, dtype=np.int64)
    # With refunds a group-period may hold only refund-only runs: no customers, so no row
    # (SPEC §9: groups and periods with orders) and nothing to rank.
    ranked = customers[gp] > 0
    gps, settled, top_sum, left, lo, hi, n_in = _threshold(gp[ranked], bins[ranked], count[ranked],
                                                           total[ranked], top_customers, low)
    top_revenue[gps] = top_sum
    while not settled.all():
        open_ = ~settled
        gps, left, lo, hi, n_in = gps[open_], left[open_], lo[open_], hi[open_], n_in[open_]
        # Collect the smallest threshold bins up to the budget; histogram the rest again.
        by_size = np.argsort(n_in, kind="stable")
        collect = np.zeros(len(gps), dtype=bool)
        collect[by_size[np.cumsum(n_in[by_size]) <= COLLECT_BUDGET]] = True
        need = np.zeros(n_gp, dtype=np.int64)
        expected = np.zeros(n_gp, dtype=np.int64)
        gp_low = np.zeros(n_gp, dtype=np.int64)
        gp_high = np.zeros(n_gp, dtype=np.int64)
        gp_collect = np.zeros(n_gp, dtype=np.uint8)
        is_open = np.zeros(n_gp, dtype=bool)
        need[gps], expected[gps], gp_low[gps], gp_high[gps] = left, n_in, lo, hi
        gp_collect[gps], is_open[gps] = collect, True

        targeted = np.flatnonzero(is_open[gp_of_mp])        # (merchant, period) rows: sorted by both
        target_gp = gp_of_mp[targeted]
        part = rerun(Targets(merchant[targeted], mp_period[targeted].astype(np.int32), gp_low[target_gp],
                             gp_high[target_gp], gp_collect[target_gp]))

        # Collected revenues: the top `need` of each group-period, summed exactly.
        vgp = target_gp[part.value_target]
        values = part.value
        seen = np.bincount(vgp, minlength=n_gp).astype(np.int64)
        hgp = target_gp[part.bin_key]
        np.add.at(seen, hgp, part.bin_count)
        if np.any(seen[gps] != n_in):
            raise InputChangedError(source, None, "the orders read differently on a later pass than on the "
                                    "first (was the file changed while it was being read?)")
        if len(values):
            vorder = np.lexsort((-values, vgp))
            vgp, values = vgp[vorder], values[vorder]
            vfirst = np.ones(len(vgp), dtype=bool)
            vfirst[1:] = vgp[1:] != vgp[:-1]
            vstarts = np.flatnonzero(vfirst)
            rank = np.arange(len(vgp)) - np.repeat(vstarts, np.diff(np.append(vstarts, len(vgp))))
            take = rank < need[vgp]
            tgp, tvalues = vgp[take], values[take]
            tfirst = np.ones(len(tgp), dtype=bool)
            tfirst[1:] = tgp[1:] != tgp[:-1]
            tstarts = np.flatnonzero(tfirst)
            top_revenue[tgp[tstarts]] += sum_groups(tvalues, tstarts, source)

        # Histogrammed ones: another threshold, inside the previous bin.
        gp2, bins2, count2, total2 = _merge_bins(hgp, part.bin_index, part.bin_count, part.bin_sum, source)
        gps, settled, top_sum, left, lo, hi, n_in = _threshold(gp2, bins2, count2, total2, need, gp_low)
        top_revenue[gps] += top_sum

    keep = customers > 0
    if not keep.all():
        customers, top_customers, revenue, top_revenue = (
            x[keep] for x in (customers, top_customers, revenue, top_revenue))
    table = key_columns(by, [c[gorder][gstarts][keep] for c in codes], decode, merchants)
    gp_period = mp_period[gorder][gstarts][keep]
    table["period_start"] = numeric_array(
        periods.period_start(period, gp_period, first_month).astype(np.int32), pa.date32())
    table["period_complete"] = bool_array(period_complete(period, gp_period, window, first_month))
    table["customers"] = numeric_array(customers, pa.int64())
    table["top_customers"] = numeric_array(top_customers, pa.int64())
    table["revenue"] = numeric_array(revenue, pa.int64())
    table["top_revenue"] = numeric_array(top_revenue, pa.int64())
    share = np.zeros(len(customers))
    has_revenue = revenue != 0
    np.divide(top_revenue, revenue, out=share, where=has_revenue)
    table["top_share"] = numeric_array(share, pa.float64(), has_revenue)
    return pa.table(table)
