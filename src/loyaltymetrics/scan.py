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
    period: np.ndarray        # int32[n] period index (see periods.py)
    counts: np.ndarray        # int64[n, len(PARTIAL_COLUMNS)]
    month_range: tuple | None  # (first, last) month of any order (period="all" only), else None
    day_range: tuple | None = None  # (first, last) UTC day since 1970-01-01 of any order, None without orders

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

    def __init__(self, engine="cython", period="year", refunds=False):
        self.module = scan_module(engine)
        self.period = period
        self.refunds = refunds
        self.units_per_day = None
        self.ts_range = None    # (earliest, latest) order_ts, kept for period="all" only
        self.day_range = None   # (earliest, latest) UTC order day (SPEC §3 observation window)
        self.lock = threading.Lock()

    def new_state(self):
        return self.module.ScanState(periods.n_periods(self.period), allow_negative=self.refunds)

    def scan(self, state, batch, start, stop):
        upd = self.units_per_day = batch.units_per_day
        table, shift, ts_max = periods.period_table(self.period, upd), periods.bucket_shift(upd), periods.ts_max(upd)
        row = start
        while True:
            status, row = self.module.scan(
                state, batch.merchant_id, batch.customer_id, batch.order_ts, batch.amount,
                batch.reward_bits, batch.reward_offset, table, shift, ts_max, row, stop,
            )
            if status == Status.OK:
                break
            if status != Status.NEED_SPACE:
                raise _stop_error(status, batch, row, state)
            state.grow()
        days = _order_day_range(batch, start, stop, self.refunds)  # replaced by the kernel's tracking at merge
        if days is not None:
            with self.lock:
                self.day_range = _merge_ranges(self.day_range, days)
        if self.period == "all" and stop > start:
            # "all" reports its first month and counts its months (SPEC §3, §6): the
            # kernel does not track them row by row for the other periods' sake.
            ts = batch.order_ts[start:stop]
            if self.refunds:        # a refund is not an order (SPEC §2): it starts no month
                ts = ts[batch.amount[start:stop] >= 0]
                if len(ts) == 0:
                    return
            lo, hi = int(ts.min()), int(ts.max())
            with self.lock:
                self.ts_range = (lo, hi) if self.ts_range is None else (
                    min(lo, self.ts_range[0]), max(hi, self.ts_range[1]))

    def end_chunk(self, state):
        return None  # partials accumulate in the state

    def finish(self, state):
        merchant_id, period_index, counts = state.finish()
        months = None if self.ts_range is None else tuple(periods.month_of(t, self.units_per_day) for t in self.ts_range)
        return Partials(merchant_id, period_index, counts, months, self.day_range)


# replaced by the kernel's tracking at merge
def _order_day_range(batch, start, stop, refunds):
    """(first, last) UTC day since 1970-01-01 of the orders in rows [start, stop) of ``batch``; None if none.

    A refund row (``refunds``, negative amount) is not an order (SPEC §2).
    Called after the kernel accepted the rows, so every timestamp is valid.
    """
    ts = batch.order_ts[start:stop]
    if refunds:
        ts = ts[batch.amount[start:stop] >= 0]
    if len(ts) == 0:
        return None
    return int(ts.min()) // batch.units_per_day, int(ts.max()) // batch.units_per_day


def _merge_ranges(a, b):
    """The smallest range covering two (first, last) ranges, either of which may be None."""
    if a is None or b is None:
        return a if b is None else b
    return min(a[0], b[0]), max(a[1], b[1])


def scan_orders(batches, period, refunds=False, engine="cython", threads=None,
                chunk_rows=parallel.DEFAULT_CHUNK_ROWS, progress=None):
    """One pass of the kernel over ``batches`` (``inputs.OrderBatch``); returns ``Partials``.

    With several threads the partials of one (merchant, period) may come in
    pieces from several states; ``finalize.combine`` adds them up.
    """
    kernel = ComputeKernel(engine, period, refunds)
    parts = list(parallel.run(batches, kernel, threads, chunk_rows, progress))
    ranges = [p.month_range for p in parts if p.month_range is not None]
    day_range = None
    for p in parts:
        day_range = _merge_ranges(day_range, p.day_range)
    return Partials(
        np.concatenate([p.merchant_id for p in parts]),
        np.concatenate([p.period for p in parts]),
        np.concatenate([p.counts for p in parts]),
        (min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else None,
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
            "rows must be sorted ascending by (merchant_id, customer_id, order_ts)",
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
