"""Slow, obviously-correct reference of the SPEC §9 analyses (test oracle).

Plain loops, dicts and Python ints, straight from SPEC §9 and the README's
decisions; it never imports the library. Grouping and periods reuse the
§3/§6 helpers of ``reference.py`` (also library-free).

Decisions it encodes (README, "Further analyses"):

* concentration: k = ceil(top × customers) with ``top`` read as the decimal
  it prints as; ``top_share`` null where revenue is 0; ``size`` is the
  merchant's bucket in the period, as in ``compute``;
* cohorts: a cell (cohort, k) is observable when period cohort + k is not
  after the period of the input's latest order; every observable cell is
  present (zeros where nobody was active); ``size`` is the merchant's bucket
  in the cohort period.

Time zones (SPEC §3): every order's period is the calendar period of its
local time in its merchant's zone — the merchants table's ``timezone``
(null or empty: not given), else the ``timezone`` argument, else UTC —
found per row with ``zoneinfo`` (``local_dates``); a date32 or date64
``order_ts`` is a calendar date, the same in every zone. Where one number must
stand for the whole input:

* ``period="all"`` starts on the first day of the local month of the
  input's earliest order (the earliest instant; on a tie, the smallest
  merchant_id, i.e. the first in file order) in its merchant's zone, and
  its length in months (for ``size``) runs to the local month of the
  latest order (the latest instant, ties to the larger merchant_id), at
  least one, as ``compute`` counts them;
* the cohorts' horizon is the latest local period of any order, each in
  its merchant's zone, so that no order's cell is cut off.

With ``refunds=True`` (SPEC §2) a row with a negative amount is a refund,
not an order: it adds to its store-customer's revenue in its period and to
nothing else. Concentration: a store-customer with only refunds in a period
is not a customer (not ranked) but its refunds are in ``revenue``; a
group-period without customers is no row. Cohorts: the cohort is the period
of the first order; a refund adds to the revenue of the cell of its
period when its store-customer has a cohort and the period is observable
(so not a refund in a period before the first order's, nor after the
input's latest order), and makes no one active.
"""
from __future__ import annotations

import datetime as dt
import math
from zoneinfo import ZoneInfo

import pyarrow as pa
from decimal import Decimal
from fractions import Fraction

from reference import (
    DEFAULT_SIZE_EDGES,
    KEY_COLUMN_NAMES,
    MONTHS_IN_PERIOD,
    UNKNOWN,
    _column_values,
    _key_order,
    _observation_window,
    _period_complete,
    _order_dates,
    _period_start,
    _read_merchants,
    _size_bucket,
    merchant_names,
    size_labels,
)

CONCENTRATION_COLUMNS = ["period_start", "period_complete", "customers", "top_customers", "revenue", "top_revenue", "top_share"]
COHORT_COLUMNS = [
    "cohort_start", "period_index", "period_start", "period_complete", "cohort_customers", "active_customers", "orders",
    "revenue", "cumulative_revenue", "retention", "cumulative_revenue_per_customer",
]


def exact_top(top) -> Fraction:
    if isinstance(top, (Fraction, int, Decimal)):
        return Fraction(top)
    return Fraction(str(top))


def _month_number(day: dt.date) -> int:
    return day.year * 12 + day.month - 1


# --- local time (SPEC §3), per row with zoneinfo ----------------------------------

_UTC_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_EPOCH = dt.date(1970, 1, 1)
_SECONDS_PER_UNIT = {"s": 1, "ms": 1000, "us": 10**6, "ns": 10**9}


def zone_of_merchant(merchants=None, timezone=None):
    """merchant_id -> ZoneInfo: the merchants table's ``timezone``, else ``timezone``, else UTC."""
    default = timezone or "UTC"
    named = {}
    if merchants is not None and "timezone" in merchants.column_names:
        for m, zone in zip(_column_values(merchants, "merchant_id"), _column_values(merchants, "timezone")):
            if zone not in (None, ""):
                named[m] = zone
    return lambda m: ZoneInfo(named.get(m, default))


def utc_seconds(column):
    """Whole seconds since 1970-01-01 UTC (floored) of each order_ts; a date is its UTC midnight."""
    typ = column.type
    if pa.types.is_timestamp(typ):
        per = _SECONDS_PER_UNIT[typ.unit]
        return [v // per for v in column.cast(pa.int64()).to_pylist()]
    if pa.types.is_date64(typ):
        return [v // 1000 for v in column.cast(pa.int64()).to_pylist()]
    return [v * 86_400 for v in column.cast(pa.int32()).to_pylist()]


def local_offsets(orders, zone_of):
    """UTC offset in seconds of each order's instant in its merchant's zone (zone offsets change on whole seconds).

    A date32 or date64 ``order_ts`` is a calendar date with no time of day: the same date in every zone
    (offset 0).
    """
    merchants = _column_values(orders, "merchant_id")
    if not pa.types.is_timestamp(orders.column("order_ts").type):
        return [0] * len(merchants)
    seconds = utc_seconds(orders.column("order_ts"))
    return [int((_UTC_EPOCH + dt.timedelta(seconds=s)).astimezone(zone_of(m)).utcoffset().total_seconds())
            for m, s in zip(merchants, seconds)]


def local_dates(orders, merchants=None, timezone=None):
    """The local calendar date of each order in its merchant's zone."""
    zone_of = zone_of_merchant(merchants, timezone)
    return [_EPOCH + dt.timedelta(days=(s + off) // 86_400)
            for s, off in zip(utc_seconds(orders.column("order_ts")), local_offsets(orders, zone_of))]


def _read_orders(orders, merchants=None, timezone=None):
    merchants_ids = _column_values(orders, "merchant_id")
    customers = _column_values(orders, "customer_id")
    days = local_dates(orders, merchants, timezone) if orders.num_rows else []
    amounts = _column_values(orders, "amount")
    return list(zip(merchants_ids, customers, days, amounts))


def _order_range_dates(orders, rows, refunds):
    """Local dates of the input's earliest and latest order: the earliest instant (ties: the smallest
    merchant_id) and the latest (ties: the largest)."""
    ts = orders.column("order_ts")
    raw = ts.cast(pa.int32() if pa.types.is_date32(ts.type) else pa.int64()).to_pylist()   # one unit: comparable
    candidates = [(t, r[0], r[2]) for t, r in zip(raw, rows) if not (refunds and r[3] < 0)]
    return min(candidates)[2], max(candidates)[2]


def _key_columns(by, key, names):
    """The group-key columns of a row; ``merchant_name`` after ``merchant_id`` when there are names."""
    row = {}
    for b, v in zip(by, key):
        row[KEY_COLUMN_NAMES[b]] = v
        if b == "merchant" and names is not None:
            row["merchant_name"] = names.get(v)
    return row


def _group_key(by, merchant_info, labels, edges, m, orders_in_period, months):
    key = []
    for b in by:
        if b == "merchant":
            key.append(m)
        elif b == "industry":
            key.append(merchant_info.get(m, (UNKNOWN, UNKNOWN, 0))[0])
        elif b == "country":
            key.append(merchant_info.get(m, (UNKNOWN, UNKNOWN, 0))[1])
        else:
            key.append(labels[_size_bucket(orders_in_period, months, edges)])
    return tuple(key)


def _window(orders, rows, refunds, observation_start, observation_end):
    """SPEC §3's observation window of the order rows (refunds are no orders); its defaults are
    the UTC dates of the earliest and latest order, whatever the merchants' zones."""
    return _observation_window(_order_dates(orders.column("order_ts")), [not (refunds and r[3] < 0) for r in rows],
                               observation_start, observation_end)


def reference_concentration(orders, merchants=None, by=(), period="year", top=0.05,
                            size_edges=DEFAULT_SIZE_EDGES, refunds=False, observation_start=None,
                            observation_end=None, timezone=None) -> list[dict]:
    rows = _read_orders(orders, merchants, timezone)
    order_rows = [r for r in rows if not (refunds and r[3] < 0)]
    if not order_rows:
        return []
    info = _read_merchants(merchants)
    labels = size_labels(size_edges)
    if period == "all":
        first, last = _order_range_dates(orders, rows, refunds)
        months = max(_month_number(last) - _month_number(first) + 1, 1)
        start = dt.date(first.year, first.month, 1)
        period_of = lambda day: start  # noqa: E731
    else:
        months = MONTHS_IN_PERIOD[period]
        period_of = lambda day: _period_start(day, period)  # noqa: E731

    revenue = {}            # (merchant, customer, period) -> revenue in the period
    sc_orders = {}          # (merchant, customer, period) -> orders in the period
    merchant_orders = {}    # (merchant, period) -> orders
    for m, c, day, amount in rows:
        p = period_of(day)
        is_order = not (refunds and amount < 0)
        revenue[(m, c, p)] = revenue.get((m, c, p), 0) + amount
        sc_orders[(m, c, p)] = sc_orders.get((m, c, p), 0) + is_order
        merchant_orders[(m, p)] = merchant_orders.get((m, p), 0) + is_order

    groups = {}             # (key, period) -> store-customer revenues
    refund_only = {}        # (key, period) -> revenue of store-customers with only refunds
    for (m, c, p), value in revenue.items():
        key = _group_key(by, info, labels, size_edges, m, merchant_orders[(m, p)], months)
        if sc_orders[(m, c, p)]:
            groups.setdefault((key, p), []).append(value)
        else:
            refund_only[(key, p)] = refund_only.get((key, p), 0) + value

    fraction = exact_top(top)
    window = _window(orders, rows, refunds, observation_start, observation_end)
    out = []
    for (key, p), values in sorted(groups.items(), key=lambda g: (_key_order(by, g[0][0], labels), g[0][1])):
        k = math.ceil(fraction * len(values))
        top_revenue = sum(sorted(values, reverse=True)[:k])
        total = sum(values) + refund_only.get((key, p), 0)
        row = _key_columns(by, key, merchant_names(merchants))
        row.update(period_start=p, period_complete=_period_complete(p, period, window), customers=len(values), top_customers=k, revenue=total,
                   top_revenue=top_revenue, top_share=None if total == 0 else top_revenue / total)
        out.append(row)
    return out


def reference_cohorts(orders, merchants=None, by=(), period="month", size_edges=DEFAULT_SIZE_EDGES,
                      refunds=False, observation_start=None, observation_end=None, timezone=None) -> list[dict]:
    """``period_complete`` is that of the cell's calendar period (period_start)."""
    rows = _read_orders(orders, merchants, timezone)
    if not any(not (refunds and r[3] < 0) for r in rows):
        return []
    info = _read_merchants(merchants)
    labels = size_labels(size_edges)
    step = MONTHS_IN_PERIOD[period]

    def index(day):            # a number that counts periods, of the period holding `day`
        return _month_number(day) // step

    def start_of(i):
        months = i * step
        return dt.date(months // 12, months % 12 + 1, 1)

    cohort = {}              # store-customer -> period index of its rank-1 order
    merchant_orders = {}     # (merchant, period index) -> orders
    activity = {}            # (merchant, customer, period index) -> [orders, revenue]
    for m, c, day, amount in rows:  # in file order: the first order of a store-customer is rank 1
        p = index(day)
        is_order = not (refunds and amount < 0)
        cell = activity.setdefault((m, c, p), [0, 0])
        cell[1] += amount
        if not is_order:
            continue
        cohort.setdefault((m, c), p)
        merchant_orders[(m, p)] = merchant_orders.get((m, p), 0) + 1
        cell[0] += 1
    last = max(index(r[2]) for r in rows if not (refunds and r[3] < 0))

    def group(m, c):
        p = cohort[(m, c)]
        return _group_key(by, info, labels, size_edges, m, merchant_orders[(m, p)], step), p

    size = {}                # (key, cohort) -> store-customers
    cells = {}               # (key, cohort, k) -> [active, orders, revenue]
    for (m, c), p in cohort.items():
        g = group(m, c)
        size[g] = size.get(g, 0) + 1
    for (m, c, p), (n, amount) in activity.items():
        if (m, c) not in cohort:        # only refunds: in no cohort
            continue
        key, q = group(m, c)
        if not q <= p <= last:          # a refund before the cohort period or after the horizon
            continue
        cell = cells.setdefault((key, q, p - q), [0, 0, 0])
        cell[0] += n > 0
        cell[1] += n
        cell[2] += amount

    window = _window(orders, rows, refunds, observation_start, observation_end)
    out = []
    for (key, q), customers in sorted(size.items(), key=lambda g: (_key_order(by, g[0][0], labels), g[0][1])):
        cumulative = 0
        for k in range(last - q + 1):
            active, n, amount = cells.get((key, q, k), [0, 0, 0])
            cumulative += amount
            if not -2**63 <= cumulative < 2**63:
                raise OverflowError(f"cumulative_revenue {cumulative} is outside int64 (SPEC §2: a typed error)")
            row = _key_columns(by, key, merchant_names(merchants))
            row.update(cohort_start=start_of(q), period_index=k, period_start=start_of(q + k),
                       period_complete=_period_complete(start_of(q + k), period, window),
                       cohort_customers=customers, active_customers=active, orders=n, revenue=amount,
                       cumulative_revenue=cumulative, retention=active / customers,
                       cumulative_revenue_per_customer=cumulative / customers)
            out.append(row)
    return out


FLOAT_COLUMNS = {"top_share", "retention", "cumulative_revenue_per_customer"}


def assert_rows_match(actual, expected, columns):
    """Library table == reference rows: names, order, exact ints/strings/dates, floats to 1e-12."""
    assert actual.column_names == list(columns), (actual.column_names, list(columns))
    got = actual.to_pylist()
    assert len(got) == len(expected), f"{len(got)} rows, expected {len(expected)}"
    for i, (a, e) in enumerate(zip(got, expected)):
        for name in columns:
            if name in FLOAT_COLUMNS and e[name] is not None:
                assert a[name] is not None and math.isclose(a[name], e[name], rel_tol=1e-12), (i, name, a, e)
            else:
                assert a[name] == e[name] and type(a[name]) is type(e[name]), (i, name, a[name], e[name])
