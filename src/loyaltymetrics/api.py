"""The public entry points."""
from . import parallel, periods  # first: NumPy loads before pyarrow, as limits.adapt() expects
from . import progress as _progress
from .finalize import DEFAULT_SIZE_EDGES, check_by, check_observation, check_size_edges, combine, finalize
from ._types import ColumnMap, DateLike, Engine, GroupKeys, Merchants, Orders, Period, SizeEdges

import pyarrow as pa  # noqa: E402 - after NumPy (see above)
from .inputs import count_rows, order_batches, read_merchants, rereadable, source_label
from .errors import reporting_resource_errors
from .scan import rescan, scan_module, scan_orders
from . import unsorted


@reporting_resource_errors
def compute(orders: Orders, merchants: Merchants | None = None, *, by: GroupKeys = (), period: Period = "year",
            columns: ColumnMap | None = None, size_edges: SizeEdges = DEFAULT_SIZE_EDGES, refunds: bool = False,
            engine: Engine = "cython", threads: int | None = None, chunk_rows: int = parallel.DEFAULT_CHUNK_ROWS,
            progress: bool = False,
            observation_start: DateLike | None = None, observation_end: DateLike | None = None,
            timezone: str | None = None, presorted: bool = True, memory_limit: int | None = None) -> pa.Table:
    """Loyalty and retention metrics per group and period (SPEC §4-7).

    Parameters
    ----------
    orders : path or table
        Order rows sorted by (merchant_id, customer_id, order_ts): an Arrow
        IPC file (memory-mapped, zero-copy), a Parquet file or directory, a
        ``pyarrow.Table`` / ``RecordBatch`` / ``RecordBatchReader``, or a
        pandas / polars DataFrame. Columns per SPEC §2.
    merchants : path or table, optional
        One row per merchant: ``merchant_id``, ``industry``, ``country``,
        ``annual_fee``, optionally ``name`` (then ``by=["merchant"]`` output
        has ``merchant_name`` after ``merchant_id``) and ``timezone``.
        Merchants missing from it, and null or empty industries and
        countries, are ``"unknown"`` (fee 0). A column named like one of
        these but for case, spaces, hyphens or underscores is a
        ``SchemaError``.
    by : list of str
        Group keys from ``"merchant"``, ``"industry"``, ``"country"``,
        ``"size"``; empty for the whole network. Output keys keep this order.
    period : {"year", "quarter", "month", "all"}
    columns : dict, optional
        Canonical name → the input's name, e.g. ``{"amount": "total_cents"}``.
    size_edges : sequence of numbers
        Orders-per-month edges of the merchant-size buckets (SPEC §6).
    refunds : bool
        A row with a negative amount is a refund, not an order (SPEC §2):
        its amount is added to ``revenue`` (``reward_revenue`` when its
        ``reward`` is true, ``member_revenue`` when its store-customer is a
        participant in the period) and it counts in no order or customer
        count and has no rank. By default a negative amount is a
        ``NegativeAmountError``.
    engine : {"cython", "numba"}
        The kernel: ``"cython"`` is compiled ahead of time and starts at
        once; ``"numba"`` runs the same algorithm compiled by Numba on first
        use in a process (a few seconds per key/timestamp type combination,
        cached on disk). Results are identical.
    threads : int, optional
        Threads scanning chunks of the input side by side; default: the
        CPUs this process may use (``OMP_NUM_THREADS`` if set, else its CPU
        affinity). Results are identical for every thread count.
    chunk_rows : int
        Rows per chunk and thread in one round (memory in flight is about
        ``threads * chunk_rows`` rows of the input). Results are identical
        for every chunk size.
    progress : bool
        Show a progress bar with rows/s on stderr while the input is
        scanned, when stderr is a terminal.
    observation_start, observation_end : datetime.date or "YYYY-MM-DD", optional
        The observation window ``[observation_start, observation_end)``
        (SPEC §3): a period is ``period_complete`` when it lies wholly
        inside it, and every ``_yoy`` is null unless both periods compared
        are complete. Defaults: the UTC date of the earliest order, and the
        day after the UTC date of the latest order.
    timezone : str, optional
        IANA time zone (``"America/New_York"``) of every merchant without a
        ``timezone`` in the merchants table; default UTC. Periods are
        calendar periods in each merchant's own zone (SPEC §3); a date32
        ``order_ts`` is its own local date in every zone.
    presorted : bool
        True (default): rows come sorted (SPEC §2) and are read in one pass;
        unsorted rows are an ``UnsortedInputError``. False: rows may come in
        any order; they are sorted first (stably: ties keep input order) in
        memory, or through private temporary Arrow files in ``TMPDIR`` when
        they exceed ``memory_limit`` (SPEC §8). Results are bit-identical.
    memory_limit : int, optional
        About the peak memory (RSS) of the sort of ``presorted=False``, in
        bytes (the per-merchant results come on top); default a quarter of
        physical memory, at most 1.75 GiB. Larger input is spilled to disk.

    Returns
    -------
    pyarrow.Table
        One row per (group, period), sorted by the group keys (``size`` in
        bucket order, smallest first) then ``period_start``; columns per
        SPEC §7 (``period_complete`` right after ``period_start``).

    Raises
    ------
    loyaltymetrics.InputError
        (a subclass naming the file, row and values) for bad input.
    """
    by = check_by(by)
    size_edges, threads, chunk_rows = check_scan_options(period, timezone, size_edges, observation_start,
                                                         observation_end, engine, threads, chunk_rows)
    merchant_table = read_merchants(merchants)
    if not presorted:
        return unsorted.run_sorted(
            lambda rows: compute(rows, merchants, by=by, period=period, size_edges=size_edges, refunds=refunds,
                                 engine=engine, threads=threads, chunk_rows=chunk_rows, progress=progress,
                                 observation_start=observation_start, observation_end=observation_end,
                                 timezone=timezone),
            orders, columns, refunds, memory_limit, threads=threads)
    partials = scan_partials(orders, columns, period, refunds, engine, threads, chunk_rows, progress,
                             merchant_table.zones(timezone), "compute")
    return finalize(partials, merchant_table, by, period, size_edges, source=source_label(orders),
                    observation_start=observation_start, observation_end=observation_end, threads=threads)


def check_scan_options(period, timezone, size_edges, observation_start, observation_end, engine, threads,
                       chunk_rows):
    """Check the options of one kernel pass before any input is read; ``(size_edges, threads, chunk_rows)``
    as the pass takes them (``compute`` and ``benchmarks``)."""
    periods.check_period(period)
    if timezone is not None:
        periods.check_zone(timezone)
    size_edges = check_size_edges(size_edges)
    check_observation(observation_start, observation_end)
    scan_module(engine)
    return size_edges, parallel.resolve_threads(threads), parallel.check_chunk_rows(chunk_rows)


def scan_partials(orders, columns, period, refunds, engine, threads, chunk_rows, progress, zones, desc):
    """The combined per-(merchant, period) partials of one kernel pass over ``orders`` (``compute`` and
    ``benchmarks``); ``desc`` names the pass on the progress bar."""
    source = source_label(orders)
    total = count_rows(orders) if _progress.shown(progress) else None

    def scan(threads):
        with _progress.bar(total, progress, desc=desc) as bar:
            batches = order_batches(orders, columns, threads=threads)
            parts = scan_orders(batches, period, refunds, engine, threads, chunk_rows, bar.update, zones)
        # Adding the threads' pieces may overflow where no row is known: see rescan_for_row.
        return combine(parts, source)

    return rescan(scan, threads, rereadable(orders), refunds)
