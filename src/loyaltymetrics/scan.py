"""Drive the kernel over a stream of order batches and turn its stops into errors."""
from dataclasses import dataclass

import numpy as np

from . import _scan, periods
from .errors import AmountOverflowError, NegativeAmountError, TimestampRangeError, UnsortedInputError

PARTIAL_COLUMNS = _scan.PARTIAL_COLUMNS


@dataclass(frozen=True)
class Partials:
    """int64 partial sums per (merchant, period): what a scan emits (SPEC §4).

    Adding two Partials of disjoint store-customers gives the Partials of
    their union, which is all that combining chunks needs.
    """

    merchant_id: np.ndarray   # int64[n]
    period: np.ndarray        # int32[n] period index (see periods.py)
    counts: np.ndarray        # int64[n, len(PARTIAL_COLUMNS)]
    month_range: tuple | None  # (first, last) month index of any order, None if no orders

    def column(self, name):
        return self.counts[:, PARTIAL_COLUMNS.index(name)]


def scan_orders(batches, period, refunds=False):
    """One pass of the kernel over ``batches`` (``inputs.OrderBatch``); returns ``Partials``."""
    state = _scan.ScanState(
        periods.day_month(), periods.month_period(period), periods.n_periods(period), allow_negative=refunds
    )
    batch = None
    for batch in batches:
        month_start = periods.month_start(batch.units_per_day)
        ts_max = periods.ts_max(batch.units_per_day)
        row = 0
        while True:
            status, row = _scan.scan(
                state, batch.merchant_id, batch.customer_id, batch.order_ts, batch.amount,
                batch.reward_bits, batch.reward_offset, month_start, batch.units_per_day, ts_max, row,
            )
            if status == _scan.Status.OK:
                break
            if status != _scan.Status.NEED_SPACE:
                raise _stop_error(status, batch, row, state)
            state.grow()
    try:
        merchant_id, period_index, counts = state.finish()
    except OverflowError:
        raise _total_overflow(state, batch, len(batch)) from None
    return Partials(merchant_id, period_index, counts, state.month_range)


def _stop_error(status, batch, row, state):
    """The typed error for a kernel stop at ``row`` of ``batch``, naming the values."""
    where = (batch.source, batch.first_row + row)
    ts = periods.format_timestamp(batch.order_ts[row], batch.units_per_day)
    amount = int(batch.amount[row])
    if status == _scan.Status.NEGATIVE_AMOUNT:
        return NegativeAmountError(*where, f"negative amount {amount} (pass refunds=True / --refunds to accept refunds)")
    if status == _scan.Status.TIMESTAMP_RANGE:
        return TimestampRangeError(*where, f"order_ts {ts} is outside 1970-01-01 .. 2262-12-31 UTC")
    if status == _scan.Status.AMOUNT_OVERFLOW:
        return AmountOverflowError(
            *where, f"amount {amount} makes a revenue sum overflow int64 (more than 9.2e18 minor units)"
        )
    if status == _scan.Status.TOTAL_OVERFLOW:
        return _total_overflow(state, batch, row)
    if status == _scan.Status.UNSORTED:
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


def _total_overflow(state, batch, row):
    """The store-customer scanned just before ``row`` of ``batch`` overflowed its merchant's totals."""
    m, c, _ = state.last_row_keys
    where = _row_before(batch, row) + (f" (amount {batch.amount[row - 1]})" if row > 0 else "")
    return AmountOverflowError(
        batch.source, max(batch.first_row + row - 1, 0),
        f"the orders of store-customer (merchant_id {m}, customer_id {c}), ending at {where}, "
        f"make a revenue total of merchant {m} overflow int64 (more than 9.2e18 minor units)",
    )
