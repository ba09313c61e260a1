"""Drive the kernel over a stream of order batches and turn its stops into errors."""
import threading
from dataclasses import dataclass

import numpy as np

from . import _scan, parallel, periods
from .errors import AmountOverflowError, NegativeAmountError, TimestampRangeError, UnsortedInputError

PARTIAL_COLUMNS = _scan.PARTIAL_COLUMNS
Status = _scan.Status


@dataclass(frozen=True)
class Partials:
    """int64 partial sums per (merchant, period): what a scan emits (SPEC §4).

    Adding two Partials of disjoint store-customers gives the Partials of
    their union, which is all that combining chunks needs.
    """

    merchant_id: np.ndarray   # int64[n]
    period: np.ndarray        # int32[n] period index (local to each merchant's zone; see periods.py)
    counts: np.ndarray        # int64[n, len(PARTIAL_COLUMNS)]
    # (first, last): the local month (months since 1969-01) of the input's earliest order in
    # its merchant's zone, and of its latest order in that one's; None when there is no order.
    month_range: tuple | None
    # (first, last): the UTC day number (days since 1970-01-01) of the earliest and the latest
    # order; None when there is no order (SPEC §3 "Complete periods").
    day_range: tuple | None = None

    def column(self, name):
        return self.counts[:, PARTIAL_COLUMNS.index(name)]


ENGINES = ("cython", "numba")


def scan_module(engine):
    """The kernel module of an engine: ``ScanState``, ``scan`` and ``Status`` with the same signatures.

    ``"cython"`` (the default) is compiled ahead of time; ``"numba"`` compiles
    the same algorithm on first use, once per key/timestamp type combination.
    """
    if engine == "cython":
        return _scan
    if engine == "numba":
        from . import numba_scan

        return numba_scan
    raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")


class ComputeKernel:
    """The partials kernel (SPEC §4) in the shape ``parallel.run`` drives."""

    spread_mapped = True   # partials accumulate in the states: a mapped file is one window (parallel.py)

    def __init__(self, engine="cython", period="year", refunds=False, zones=None):
        self.module = scan_module(engine)
        self.period = period
        self.refunds = refunds
        self.zones = zones or periods.MerchantZones.utc()
        self.units_per_day = None
        # ((ts, merchant), (ts, merchant)) of the earliest and latest order of the states finished.
        self.order_range = None
        self.lock = threading.Lock()

    def new_state(self):
        return self.module.ScanState(periods.n_periods(self.period), allow_negative=self.refunds)

    def scan(self, state, batch, start, stop):
        upd = self.units_per_day = batch.units_per_day
        if batch.dates:     # a date is the same date in every zone: UTC tables (periods.py)
            self.zones = periods.MerchantZones.utc()
        # One table per zone.
        tables = periods.period_tables(self.period, upd, self.zones)
        shift, ts_max = periods.bucket_shift(upd), periods.ts_max(upd)
        row = start
        while True:
            status, row = self.module.scan(
                state, batch.merchant_id, batch.customer_id, batch.order_ts, batch.amount,
                batch.reward_bits, batch.reward_offset, tables, shift, ts_max,
                self.zones.merchant_id, self.zones.zone, row, stop,
            )
            if status == Status.OK:
                break
            if status != Status.NEED_SPACE:
                raise _stop_error(status, batch, row, state)
            state.grow()

    def end_chunk(self, state):
        return None  # partials accumulate in the state

    def finish(self, state):
        """The state's partials; its earliest and latest order go to ``self.order_range`` (see ``window``)."""
        merchant_id, period_index, counts = state.finish()
        with self.lock:
            self.order_range = merge_order_ranges(self.order_range, state.order_range)
        return Partials(merchant_id, period_index, counts, None, None)

    def window(self):
        """``(month_range, day_range)`` of ``Partials`` for every state finished so far."""
        return order_window(self.order_range, self.units_per_day, self.zones)


def merge_order_ranges(a, b):
    """The earliest and latest of two ``((ts, merchant), (ts, merchant))`` (or None).

    Ties in ts go to the smaller merchant_id first and the larger last, so the
    result is the same however rows were split among states (SPEC §8).
    """
    if a is None or b is None:
        return a if b is None else b
    return (min(a[0], b[0]), max(a[1], b[1]))


def order_window(order_range, units_per_day, zones):
    """``(month_range, day_range)`` from the earliest and latest order (None: no order).

    The months are local to each order's merchant's zone (SPEC §3: "all" starts
    in the month of the earliest order in that order's merchant's zone; the
    last is never before the first); the
    days are UTC days since 1970-01-01 (a date32 value is its own day).
    """
    if order_range is None:
        return None, None
    (first, first_merchant), (last, last_merchant) = order_range
    first_month = periods.local_month_of(first, units_per_day, zones.zone_name(first_merchant))
    last_month = periods.local_month_of(last, units_per_day, zones.zone_name(last_merchant))
    # Zones far apart can put the latest order's local month before the earliest's (a day apart,
    # across a month end): "all" then spans one month, never none (SPEC §6 divides by its months).
    return (first_month, max(first_month, last_month)), (first // units_per_day, last // units_per_day)


def scan_orders(batches, period, refunds=False, engine="cython", threads=None,
                chunk_rows=parallel.DEFAULT_CHUNK_ROWS, progress=None, zones=None):
    """One pass of the kernel over ``batches`` (``inputs.OrderBatch``); returns ``Partials``.

    ``zones`` (``periods.MerchantZones``, default all UTC) gives each
    merchant's zone, whose local calendar its periods follow (SPEC §3). With
    several threads the partials of one (merchant, period) may come in
    pieces from several states; ``finalize.combine`` adds them up.
    """
    kernel = ComputeKernel(engine, period, refunds, zones)
    parts = list(parallel.run(batches, kernel, threads, chunk_rows, progress))
    month_range, day_range = kernel.window()
    # The states' partials are their own arrays: one state's (one thread, or the only one with rows)
    # is used as it is; a copy of 60,000 rows costs more in page faults here than the copying.
    parts = [p for p in parts if len(p.merchant_id)] or parts[:1]
    if len(parts) == 1:
        return Partials(parts[0].merchant_id, parts[0].period, parts[0].counts, month_range, day_range)
    # The states' partials, each sorted with one row a (merchant, period), merged into one such (what
    # finalize.combine would make of them, without concatenating, sorting and summing).
    rows = sum(len(p.merchant_id) for p in parts)
    merged = np.empty(rows, np.int64), np.empty(rows, np.int32), np.empty((rows, len(PARTIAL_COLUMNS)), np.int64)
    n = _scan.merge_partials([p.merchant_id for p in parts], [p.period for p in parts], [p.counts for p in parts],
                             *merged)
    if n >= 0:
        return Partials(*(column[:n] for column in merged), month_range, day_range)
    return Partials(   # a sum that overflows (or a part not sorted): finalize.combine says where
        np.concatenate([p.merchant_id for p in parts]),
        np.concatenate([p.period for p in parts]),
        np.concatenate([p.counts for p in parts]),
        month_range,
        day_range,
    )


def _stop_error(status, batch, row, state):
    """The typed error for a kernel stop at ``row`` of ``batch``, naming the values."""
    where = (batch.source, batch.first_row + row)
    ts = periods.format_timestamp(batch.order_ts[row], batch.units_per_day)
    amount = int(batch.amount[row])
    if status == Status.NEGATIVE_AMOUNT:
        return NegativeAmountError(*where, f"negative amount {amount} (pass refunds=True / --refunds to accept refunds)")
    if status == Status.TIMESTAMP_RANGE:
        return TimestampRangeError(*where, f"order_ts {ts} is outside 1970-01-01 .. 2262-12-31 UTC")
    if status == Status.AMOUNT_OVERFLOW:
        return AmountOverflowError(
            *where, f"amount {amount} makes a revenue sum overflow int64 (more than 9.2e18 minor units)"
        )
    if status == Status.UNSORTED:
        m, c, t = state.last_row_keys
        return UnsortedInputError(
            *where,
            f"(merchant_id, customer_id, order_ts) = ({batch.merchant_id[row]}, {batch.customer_id[row]}, {ts}) "
            f"comes after ({m}, {c}, {periods.format_timestamp(t, batch.units_per_day)}) at {_row_before(batch, row)}; "
            "rows must be sorted ascending by (merchant_id, customer_id, order_ts) (or pass presorted=False / --unsorted)",
        )
    raise AssertionError(f"unexpected kernel status {status}")


def _row_before(batch, row):
    """How to name the row before ``row`` of ``batch``: it may be in an earlier batch or file."""
    before = batch.first_row + row - 1
    return f"row {before}" if before >= 0 else "the last row of the previous file"


def rescan(compute, threads, rereadable, refunds):
    """``compute(threads)`` with ``parallel.rescan_for_row``; with refunds, the one-thread result on overflow.

    Without refunds every partial sum is at most the total it is part of, so
    an overflow in any thread's piece is an overflow of the total. With
    refunds a piece can overflow where the whole does not (1e19 of orders in
    one chunk, -5e18 of refunds in another): results must not depend on the
    thread count (SPEC §8), so an overflow of a threaded run is settled by a
    one-thread run, which returns the table or raises the error it meets at
    its row. A one-shot stream cannot be read again: its error stands.
    """
    if not refunds:
        return parallel.rescan_for_row(compute, threads, rereadable)
    try:
        return compute(threads)
    except AmountOverflowError:
        if threads == 1 or not rereadable:
            raise
        return compute(1)
