"""The public entry points."""
from . import periods
from .finalize import DEFAULT_SIZE_EDGES, check_by, check_size_edges, finalize
from .inputs import order_batches, read_merchants, source_label
from .scan import scan_orders


def compute(orders, merchants=None, *, by=(), period="year", columns=None,
            size_edges=DEFAULT_SIZE_EDGES, refunds=False):
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
        ``annual_fee``. Merchants missing from it are ``"unknown"`` with fee 0.
    by : list of str
        Group keys from ``"merchant"``, ``"industry"``, ``"country"``,
        ``"size"``; empty for the whole network. Output keys keep this order.
    period : {"year", "quarter", "month", "all"}
    columns : dict, optional
        Canonical name → the input's name, e.g. ``{"amount": "total_cents"}``.
    size_edges : sequence of numbers
        Orders-per-month edges of the merchant-size buckets (SPEC §6).
    refunds : bool
        Accept negative amounts (refunds) and add them to revenue; by
        default a negative amount is a ``NegativeAmountError``.

    Returns
    -------
    pyarrow.Table
        One row per (group, period), sorted by the group keys then
        ``period_start``; columns per SPEC §7.

    Raises
    ------
    loyaltymetrics.InputError
        (a subclass naming the file, row and values) for bad input.
    """
    by = check_by(by)
    periods.check_period(period)
    size_edges = check_size_edges(size_edges)
    merchant_table = read_merchants(merchants)
    partials = scan_orders(order_batches(orders, columns), period, refunds=refunds)
    return finalize(partials, merchant_table, by, period, size_edges, source=source_label(orders))
