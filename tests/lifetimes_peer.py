"""lifetimes' own ``summary_data_from_transaction_data``, called on canonical orders, as a peer for ``rfm``.

pandas ≥ 2 cannot divide a timedelta by ``np.timedelta64(1, "M")`` (it
raises "Unit M is not supported"), so lifetimes 0.11.3 — the last release —
fails at its very last step for ``freq="M"``. pandas < 2 converted NumPy's
month to its fixed length, 2,629,746 s (365.2425 / 12 days), which is also
NumPy's own conversion of the unit. Where pandas cannot divide by a month,
``lifetimes_summary`` gives lifetimes' module a view of NumPy whose
``timedelta64(n, "M")`` is that length in seconds, for the duration of the
call; everything else in lifetimes runs unchanged (its period truncation,
grouping, filtering and means). Checked against pandas 1.5.3, where
lifetimes runs unpatched: the same summary of CDNOW for D, W and M.
"""
import contextlib
from unittest import mock

import numpy as np
import pandas as pd
import pyarrow as pa


def _pandas_divides_by_months():
    try:
        pd.Series(pd.to_timedelta([31], unit="D")) / np.timedelta64(1, "M")
    except (TypeError, ValueError):
        return False
    return True


class _NumpyWithFixedMonth:
    """NumPy, except that a month timedelta is NumPy's fixed month length in seconds."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def timedelta64(value, unit=None, *args):
        if unit == "M":
            return np.timedelta64(value, "M").astype("timedelta64[s]")
        return np.timedelta64(value, unit, *args) if unit is not None else np.timedelta64(value)


@contextlib.contextmanager
def _months_compatible(freq):
    import lifetimes.utils

    if freq == "M" and not _pandas_divides_by_months():
        with mock.patch.object(lifetimes.utils, "np", _NumpyWithFixedMonth()):
            yield
    else:
        yield


def lifetimes_summary(frame, customer_col, datetime_col, monetary_value_col, *, freq="D",
                      observation_end=None, include_first_transaction=False):
    """lifetimes' summary of a pandas frame of transactions (the frame is not modified)."""
    from lifetimes.utils import summary_data_from_transaction_data

    with _months_compatible(freq):
        return summary_data_from_transaction_data(
            frame, customer_col, datetime_col, monetary_value_col,
            observation_period_end=observation_end, freq=freq,
            include_first_transaction=include_first_transaction,
        )


def orders_frame(orders):
    """Canonical orders (``pa.Table``) → a lifetimes transactions frame.

    ``customer`` is the store-customer (merchant_id, customer_id) as one
    sortable string key, ``date`` the naive UTC ``order_ts``, ``amount`` the
    cents as int64 (so sums and means are exact in float64).
    """
    ts = orders.column("order_ts")
    if pa.types.is_timestamp(ts.type):
        values = ts.cast(pa.int64()).to_numpy().astype(f"datetime64[{ts.type.unit}]")
    else:
        values = ts.cast(pa.int32()).to_numpy().astype("datetime64[D]")
    merchant = orders.column("merchant_id").to_pylist()
    customer = orders.column("customer_id").to_pylist()
    return pd.DataFrame({
        # Zero-padded so that string order is (merchant, customer) order, as lifetimes sorts by the key.
        "customer": [f"{m:020d}:{c:020d}" for m, c in zip(merchant, customer)],
        "date": values.astype("datetime64[us]"),
        "amount": orders.column("amount").to_numpy(),
    })


def key_of(merchant_id, customer_id):
    return f"{merchant_id:020d}:{customer_id:020d}"
