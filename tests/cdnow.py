"""CDNOW, the real order log that ships with lifetimes, in the canonical orders layout (SPEC §2).

``lifetimes/datasets/CDNOW_master.txt``: 69,659 orders of 23,570 customers
of the CD retailer CDNOW, 1997-01-01 .. 1998-06-30; whitespace-separated
columns customer id, date (yyyymmdd), number of CDs, dollar value.

It lives with the tests rather than in the package: the file comes with
lifetimes, which is a test dependency only, and both users of it — the
equality test against lifetimes and ``benchmarks/rfm_vs_lifetimes.py`` —
are development tools (STYLE: no test code in the installed package).
The file is located without importing ``lifetimes.datasets``, which needs
``pkg_resources`` (absent from recent setuptools and from fresh venvs).
"""
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa

MERCHANT_ID = 1   # CDNOW is one store


def cdnow_path():
    spec = importlib.util.find_spec("lifetimes")
    if spec is None:
        raise ModuleNotFoundError("lifetimes is not installed (pip install '.[test]')")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "CDNOW_master.txt"


def _cents(dollar_text):
    """Exact integer cents of a decimal dollar string such as "11.77" or "12" (no float rounding)."""
    whole, _, fraction = dollar_text.partition(".")
    if len(fraction) > 2 or not (whole + fraction).isdigit():
        raise ValueError(f"not a dollar amount with at most two decimals: {dollar_text!r}")
    return int(whole) * 100 + int(fraction.ljust(2, "0"))


@lru_cache(maxsize=None)
def _columns():
    """(customer_id int64, day int32 since 1970-01-01, dollars float64, cents int64), file order."""
    with open(cdnow_path()) as f:
        header = f.readline().split()
        assert header == ["customer_id", "date", "number_of_cds", "dollar_value"], header
        raw = np.loadtxt(f, dtype=str)
    customer_id = raw[:, 0].astype(np.int64)
    dates = raw[:, 1]
    day = np.array([f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in dates], dtype="datetime64[D]").astype(np.int32)
    dollars = raw[:, 3].astype(np.float64)   # what lifetimes users read
    cents = np.array([_cents(text) for text in raw[:, 3]], dtype=np.int64)   # exact, from the decimal text
    # Sorted by customer then date; a stable sort keeps file order for ties (SPEC §2).
    order = np.lexsort((day, customer_id))
    return customer_id[order], day[order], dollars[order], cents[order]


def cdnow_frame():
    """pandas DataFrame as lifetimes users read CDNOW: customer_id, date (datetime64), dollar_value, cents."""
    import pandas as pd

    customer_id, day, dollars, cents = _columns()
    return pd.DataFrame({
        "customer_id": customer_id,
        "date": day.astype("datetime64[D]").astype("datetime64[s]"),
        "dollar_value": dollars,
        "cents": cents,
    })


def cdnow_orders(replicas=1):
    """CDNOW as a canonical orders ``pyarrow.Table``: one merchant, date32 ``order_ts``, ``amount`` in cents.

    ``replicas`` > 1 repeats the whole log with new customer ids (copy k
    adds k × (max id + 1)), so the rows stay sorted by (merchant_id,
    customer_id, order_ts): for benchmarks at scale.
    """
    customer_id, day, _, cents = _columns()
    n = len(customer_id)
    stride = int(customer_id.max()) + 1
    offsets = np.repeat(np.arange(replicas, dtype=np.int64) * stride, n)
    return pa.table({
        "merchant_id": pa.array(np.full(n * replicas, MERCHANT_ID, np.int64)),
        "customer_id": pa.array(np.tile(customer_id, replicas) + offsets),
        "order_ts": pa.array(np.tile(day, replicas), pa.date32()),
        "amount": pa.array(np.tile(cents, replicas)),
    })
