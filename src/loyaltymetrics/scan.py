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
        raise _total_overflow(state, batch, len(batch) - 1) from None
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
        return _total_overflow(state, batch, row - 1)
    if status == _scan.Status.UNSORTED:
        m, c, t = state.last_row_keys
        previous = f"row {where[1] - 1}" if where[1] else "the last row of the previous file"
        return UnsortedInputError(
            *where,
            f"(merchant_id, customer_id, order_ts) = ({batch.merchant_id[row]}, {batch.customer_id[row]}, {ts}) "
            f"comes after ({m}, {c}, {periods.format_timestamp(t, batch.units_per_day)}) at {previous}; "
            "rows must be sorted ascending by (merchant_id, customer_id, order_ts)",
        )
    raise AssertionError(f"unexpected kernel status {status}")


def _total_overflow(state, batch, last):
    """The store-customer just scanned, ending at row ``last`` of ``batch`` (-1: the
    batch before), overflowed its merchant's totals."""
    m, c, _ = state.last_row_keys
    last_row = batch.first_row + last
    if last >= 0:
        where = f"row {last_row} (amount {batch.amount[last]})"
    else:
        where = f"row {last_row}" if last_row >= 0 else "the last row of the previous file"
    return AmountOverflowError(
        batch.source, max(last_row, 0),
        f"the orders of store-customer (merchant_id {m}, customer_id {c}), ending at {where}, "
        f"make a revenue total of merchant {m} overflow int64 (more than 9.2e18 minor units)",
    )
