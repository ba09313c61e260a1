"""Slow, obviously-correct reference implementation of SPEC §3–§7.

This module is the test oracle. It is written straight from the SPEC text
with plain loops, dicts, sets and Python ints; the only pyarrow it uses is to
read the input columns. It must never import the library.

Decisions where SPEC is silent follow the team's list (see
tests/test_reference.py for hand-worked examples of each one):

* output columns: group keys in ``by`` order, ``period_start``,
  ``period_complete``, base counts, derived metrics, then ``<x>_yoy`` for
  every base and derived column;
* rows sorted by the group keys' values (``size`` in bucket order, smallest
  first, SPEC §7) then ``period_start``;
* ``fees = (sum_fee * months) / 12``, null for ``period="all"``;
* size buckets closed on the left, ``orders / months >= edge`` as SPEC §6
  writes it.
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from fractions import Fraction

import pyarrow as pa

__all__ = [
    "BASE_COLUMNS",
    "DERIVED_COLUMNS",
    "YOY_COLUMNS",
    "KEY_COLUMN_NAMES",
    "DEFAULT_SIZE_EDGES",
    "reference_columns",
    "format_edge",
    "size_labels",
    "reference_compute",
    "assert_tables_match",
]

# §4, in output order (returning_customers right after new_customers).
BASE_COLUMNS = [
    "merchants",
    "orders",
    "revenue",
    "customers",
    "new_customers",
    "returning_customers",
    "repeat_orders",
    "repeat_customers",
    "orders_from_repeat_customers",
    "retained_customers",
    "reward_orders",
    "reward_revenue",
    "reward_customers",
    "fees",
    "member_orders",
    "member_revenue",
    "member_repeat_customers",
]

# §5, in output order.
DERIVED_COLUMNS = [
    "aov",
    "reward_aov",
    "purchase_frequency",
    "reward_purchase_frequency",
    "clv",
    "reward_clv",
    "repeat_customer_rate",
    "repeat_order_share",
    "retention_rate",
    "strict_retention_rate",
    "loyalty_roi",
    "member_repeat_lift",
    "member_aov_lift",
    "member_frequency_lift",
]

YOY_COLUMNS = [name + "_yoy" for name in BASE_COLUMNS + DERIVED_COLUMNS]

KEY_COLUMN_NAMES = {
    "merchant": "merchant_id",
    "industry": "industry",
    "country": "country",
    "size": "size",
}

DEFAULT_SIZE_EDGES = (30, 300, 3000, 30000)

PERIODS = ("year", "quarter", "month", "all")

INT_COLUMNS = frozenset(c for c in BASE_COLUMNS if c != "fees")
FLOAT_COLUMNS = frozenset(["fees", *DERIVED_COLUMNS, *YOY_COLUMNS])
STRING_KEY_COLUMNS = frozenset(["industry", "country", "size", "merchant_name"])

MONTHS_IN_PERIOD = {"year": 12, "quarter": 3, "month": 1}

UNKNOWN = "unknown"

_EPOCH = dt.date(1970, 1, 1)
_UNITS_PER_DAY = {
    "s": 86400,
    "ms": 86400 * 10**3,
    "us": 86400 * 10**6,
    "ns": 86400 * 10**9,
}


def reference_columns(by=(), merchant_names=False) -> list[str]:
    """The output column names, in order, for a given ``by``.

    ``merchant_names``: the merchants table has a ``name`` column, so
    ``merchant_name`` follows ``merchant_id`` (SPEC §7).
    """
    keys = []
    for b in by:
        keys.append(KEY_COLUMN_NAMES[b])
        if b == "merchant" and merchant_names:
            keys.append("merchant_name")
    return (
        keys
        + ["period_start", "period_complete"]
        + BASE_COLUMNS
        + DERIVED_COLUMNS
        + YOY_COLUMNS
    )


# ---------------------------------------------------------------------------
# Size buckets (§6)


def _plain_number(q: Fraction) -> str:
    if q.denominator == 1:
        return str(q.numerator)
    return repr(float(q))


def format_edge(edge) -> str:
    """30 -> "30", 3000 -> "3k", 1500 -> "1.5k", 2_000_000 -> "2M", 2.5 -> "2.5".

    ``k``/``M`` are used when the edge is at least a thousand/million and a
    multiple of a hundred/hundred thousand ("divides evenly enough");
    otherwise the number is written out.
    """
    q = Fraction(edge)
    if q >= 10**6 and q % (10**5) == 0:
        return _plain_number(q / 10**6) + "M"
    if q >= 10**3 and q % 100 == 0:
        return _plain_number(q / 10**3) + "k"
    return _plain_number(q)


def size_labels(edges=DEFAULT_SIZE_EDGES) -> list[str]:
    """["<e0", "e0-e1", ..., "e_last+"]; index i is the bucket index."""
    names = [format_edge(e) for e in edges]
    labels = ["<" + names[0]]
    for lo, hi in zip(names, names[1:]):
        labels.append(lo + "-" + hi)
    labels.append(names[-1] + "+")
    return labels


def _size_bucket(orders: int, months: int, edges) -> int:
    """Bucket index: the number of edges e with orders / months >= e.

    Intervals are closed on the left (§6: exactly 30 orders a month is
    "30-300").
    """
    index = 0
    for e in edges:
        if orders / months >= e:
            index += 1
    return index


# ---------------------------------------------------------------------------
# Periods (§3)


def _add_months(day: dt.date, n: int) -> dt.date:
    k = day.year * 12 + (day.month - 1) + n
    return dt.date(k // 12, k % 12 + 1, 1)


def _period_start(day: dt.date, period: str) -> dt.date:
    if period == "year":
        return dt.date(day.year, 1, 1)
    if period == "quarter":
        return dt.date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)
    if period == "month":
        return dt.date(day.year, day.month, 1)
    raise ValueError(period)


def _previous_period(start: dt.date, period: str) -> dt.date:
    """The period just before (for retention, §4 and §5)."""
    return _add_months(start, -MONTHS_IN_PERIOD[period])


def _year_earlier(start: dt.date) -> dt.date:
    """The same year / quarter / month one year earlier (for YoY, §5)."""
    return _add_months(start, -12)


# ---------------------------------------------------------------------------
# Reading the input


def _column_values(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist()


def _order_dates(column: pa.ChunkedArray) -> list[dt.date]:
    """UTC calendar date of every order (§2: tz-aware is converted to UTC).

    Arrow stores tz-aware timestamps as UTC instants, so the tz only affects
    display: the integer is read as is.
    """
    typ = column.type
    if pa.types.is_timestamp(typ):
        per_day = _UNITS_PER_DAY[typ.unit]
        raw = [v for chunk in column.chunks for v in chunk.cast(pa.int64()).to_pylist()]
    elif pa.types.is_date32(typ):
        per_day = 1
        raw = [v for chunk in column.chunks for v in chunk.cast(pa.int32()).to_pylist()]
    elif pa.types.is_date64(typ):
        per_day = _UNITS_PER_DAY["ms"]
        raw = [v for chunk in column.chunks for v in chunk.cast(pa.int64()).to_pylist()]
    else:
        raise TypeError(f"order_ts has unsupported type {typ}")
    return [_EPOCH + dt.timedelta(days=v // per_day) for v in raw]


def _order_instants(column: pa.ChunkedArray):
    """Every order as ``("date", date)`` (date32/date64: a calendar date, the same in every zone)
    or ``("instant", whole UTC seconds since 1970)`` (timestamps; every zone's offset is whole
    seconds, so a timestamp's local date is that of its second)."""
    typ = column.type
    if pa.types.is_timestamp(typ):
        per_second = _UNITS_PER_DAY[typ.unit] // 86400
        raw = [v for chunk in column.chunks for v in chunk.cast(pa.int64()).to_pylist()]
        return [("instant", v // per_second) for v in raw]
    return [("date", d) for d in _order_dates(column)]


def _local_date(order, zone: str) -> dt.date:
    """SPEC §3: the calendar date of an order on its merchant's wall clocks (``zoneinfo``)."""
    kind, value = order
    if kind == "date":
        return value
    utc = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=value)
    return utc.astimezone(zoneinfo.ZoneInfo(zone)).date()


def merchant_timezones(merchants: pa.Table | None, timezone: str | None = None):
    """merchant_id -> IANA zone (SPEC §2, §3), and the zone of every merchant not in it:
    the merchants table's ``timezone``, else ``timezone``, else UTC."""
    default = timezone or "UTC"
    zones = {}
    if merchants is not None and "timezone" in merchants.column_names:
        for m, z in zip(_column_values(merchants, "merchant_id"), _column_values(merchants, "timezone")):
            zones[m] = default if z is None or z == "" else z
    return zones, default


def _text_or_unknown(value):
    """SPEC §2: a null or empty industry/country is "unknown"."""
    return UNKNOWN if value is None or value == "" else value


def merchant_names(merchants: pa.Table | None):
    """merchant_id -> name (None for a null or empty name), or None when there is no ``name`` column."""
    if merchants is None or "name" not in merchants.column_names:
        return None
    return {m: (n if n != "" else None)
            for m, n in zip(_column_values(merchants, "merchant_id"), _column_values(merchants, "name"))}


def _read_merchants(merchants: pa.Table | None) -> dict:
    """merchant_id -> (industry, country, annual_fee), nulls and empty strings replaced."""
    info = {}
    if merchants is None:
        return info
    names = merchants.column_names
    n = merchants.num_rows
    ids = _column_values(merchants, "merchant_id")
    industries = _column_values(merchants, "industry") if "industry" in names else [None] * n
    countries = _column_values(merchants, "country") if "country" in names else [None] * n
    fees = _column_values(merchants, "annual_fee") if "annual_fee" in names else [None] * n
    for m, ind, ctry, fee in zip(ids, industries, countries, fees):
        info[m] = (
            _text_or_unknown(ind),
            _text_or_unknown(ctry),
            0 if fee is None else fee,
        )
    return info


# ---------------------------------------------------------------------------
# The computation


class _StoreCustomerPeriod:
    """One store-customer's activity inside one period."""

    __slots__ = ("orders", "revenue", "reward_orders", "reward_revenue", "has_rank1", "rank2_orders")

    def __init__(self):
        self.orders = 0
        self.revenue = 0
        self.reward_orders = 0
        self.reward_revenue = 0
        self.has_rank1 = False
        self.rank2_orders = 0


def _div(a, b):
    """a / b, or None where b is 0 or either side is null (§5)."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def _lift(num_a, num_b, den_a, den_b):
    """(num_a / num_b) / (den_a / den_b), null where any denominator is 0."""
    if num_b == 0 or den_b == 0:
        return None
    denominator = den_a / den_b
    if denominator == 0:
        return None
    return (num_a / num_b) / denominator


def reference_compute(
    orders: pa.Table,
    merchants: pa.Table | None = None,
    by=(),
    period: str = "year",
    size_edges=DEFAULT_SIZE_EDGES,
    refunds: bool = False,
    observation_start: dt.date | None = None,
    observation_end: dt.date | None = None,
    timezone: str | None = None,
) -> list[dict]:
    """Rows of the SPEC §7 output table as dicts (see module docstring).

    ``observation_start``/``observation_end``: the observation window of
    SPEC §3 "Complete periods" (see ``_observation_window``); its defaults
    are UTC dates of the earliest and latest order, whatever the zones.

    Periods are calendar periods in each merchant's zone (SPEC §3): the
    merchants table's ``timezone``, else ``timezone``, else UTC; an order's
    period is the one holding its local date (date32/date64 values are
    dates: the same in every zone). ``period_start`` is the period's first
    local day.

    ``refunds=True`` (SPEC §2 "Refunds"): a row with a negative amount is a
    refund, not an order. It adds its amount to the revenue sums of its
    period (``revenue``; ``reward_revenue`` if its reward flag is true;
    ``member_revenue`` if its store-customer is a participant in that
    period) and counts in nothing else; it has no rank. A merchant with only
    refunds in a period is not one of its ``merchants`` (and pays no fee
    then); a group-period without orders is no row (SPEC §3).
    """
    by = list(by)
    for b in by:
        if b not in KEY_COLUMN_NAMES:
            raise ValueError(f"unknown grouping key {b!r}")
    if len(set(by)) != len(by):
        raise ValueError(f"duplicate grouping key in {by!r}")
    if period not in PERIODS:
        raise ValueError(f"unknown period {period!r}")
    size_edges = tuple(size_edges)
    labels = size_labels(size_edges)

    n = orders.num_rows
    if n == 0:
        return []
    merchant_ids = _column_values(orders, "merchant_id")
    customer_ids = _column_values(orders, "customer_id")
    instants = _order_instants(orders.column("order_ts"))
    zones, default_zone = merchant_timezones(merchants, timezone)
    days = [_local_date(o, zones.get(m, default_zone)) for o, m in zip(instants, merchant_ids)]
    amounts = _column_values(orders, "amount")
    if "reward" in orders.column_names:
        rewards = [v is True for v in _column_values(orders, "reward")]  # null = false
    else:
        rewards = [False] * n
    is_order = [not (refunds and a < 0) for a in amounts]
    if not any(is_order):
        return []

    merchant_info = _read_merchants(merchants)
    names = merchant_names(merchants)

    def industry(m):
        return merchant_info.get(m, (UNKNOWN, UNKNOWN, 0))[0]

    def country(m):
        return merchant_info.get(m, (UNKNOWN, UNKNOWN, 0))[1]

    def annual_fee(m):
        return merchant_info.get(m, (UNKNOWN, UNKNOWN, 0))[2]

    utc_days = _order_dates(orders.column("order_ts"))  # SPEC §3: the window's defaults are UTC dates
    window = _observation_window(utc_days, is_order, observation_start, observation_end)

    # §3: the period of every order.
    if period == "all":
        # The input's earliest and latest order (SPEC §3), each in its own merchant's zone. Two
        # orders at one instant (or on one date) in different merchants: the smaller merchant_id
        # is the earlier one and the larger the later one (the SPEC is silent; the library's rule).
        ts = orders.column("order_ts")
        as_int = pa.int32() if pa.types.is_date32(ts.type) else pa.int64()
        raw = [v for chunk in ts.chunks for v in chunk.cast(as_int).to_pylist()]
        when = [(t, m, d) for t, m, d, is_o in zip(raw, merchant_ids, days, is_order) if is_o]
        first_day = min(when)[2]
        last_day = max(when)[2]
        all_start = dt.date(first_day.year, first_day.month, 1)
        months = (last_day.year * 12 + last_day.month) - (first_day.year * 12 + first_day.month) + 1
        # Zones far apart can put the latest order's local month before the earliest's (a day
        # apart, across a month end): "all" then spans one month, never none.
        months = max(months, 1)
        periods = [all_start] * n
    else:
        months = MONTHS_IN_PERIOD[period]
        periods = [_period_start(d, period) for d in days]

    # §4: rank = 1-based position among the store-customer's orders in the
    # whole input, file order (ties in order_ts keep file order).
    orders_seen = {}
    activity = {}  # (merchant, customer, period_start) -> _StoreCustomerPeriod
    active_periods = {}  # (merchant, customer) -> set of period_start
    merchant_period_orders = {}  # (merchant, period_start) -> orders
    for i in range(n):
        store_customer = (merchant_ids[i], customer_ids[i])
        p = periods[i]
        key = (merchant_ids[i], customer_ids[i], p)
        a = activity.get(key)
        if a is None:
            a = activity[key] = _StoreCustomerPeriod()
        if not is_order[i]:  # a refund: revenue sums only
            a.revenue += amounts[i]
            if rewards[i]:
                a.reward_revenue += amounts[i]
            continue
        rank = orders_seen.get(store_customer, 0) + 1
        orders_seen[store_customer] = rank
        a.orders += 1
        a.revenue += amounts[i]
        if rewards[i]:
            a.reward_orders += 1
            a.reward_revenue += amounts[i]
        if rank == 1:
            a.has_rank1 = True
        else:
            a.rank2_orders += 1
        active_periods.setdefault(store_customer, set()).add(p)
        mp = (merchant_ids[i], p)
        merchant_period_orders[mp] = merchant_period_orders.get(mp, 0) + 1

    # §6: the group of a merchant in a period; keys sort by their values,
    # the size key by its label.
    def group_key(m, p):
        key = []
        for b in by:
            if b == "merchant":
                key.append(m)
            elif b == "industry":
                key.append(industry(m))
            elif b == "country":
                key.append(country(m))
            else:
                key.append(labels[_size_bucket(merchant_period_orders.get((m, p), 0), months, size_edges)])
        return tuple(key)

    groups = {}  # (group key, period_start) -> dict of base counts + merchant set
    for (m, c, p), a in activity.items():
        gp = (group_key(m, p), p)
        g = groups.get(gp)
        if g is None:
            g = groups[gp] = {name: 0 for name in BASE_COLUMNS if name not in ("merchants", "fees")}
            g["_merchants"] = set()
        g["revenue"] += a.revenue
        g["reward_revenue"] += a.reward_revenue
        if a.orders == 0:  # only refunds: no customer, no merchant with orders
            continue
        g["_merchants"].add(m)
        g["orders"] += a.orders
        g["customers"] += 1
        if a.has_rank1:
            g["new_customers"] += 1
        g["repeat_orders"] += a.rank2_orders
        if a.orders >= 2:
            g["repeat_customers"] += 1
            g["orders_from_repeat_customers"] += a.orders
        if period != "all" and _previous_period(p, period) in active_periods[(m, c)]:
            g["retained_customers"] += 1
        g["reward_orders"] += a.reward_orders
        if a.reward_orders >= 1:
            g["reward_customers"] += 1
            g["member_orders"] += a.orders
            g["member_revenue"] += a.revenue
            if a.orders >= 2:
                g["member_repeat_customers"] += 1

    # Base counts in output order.
    base = {}
    for gp, g in groups.items():
        if g["orders"] == 0:
            continue
        row = {}
        for name in BASE_COLUMNS:
            if name == "merchants":
                row[name] = len(g["_merchants"])
            elif name == "returning_customers":
                row[name] = g["customers"] - g["new_customers"]
            elif name == "fees":
                if period == "all":
                    row[name] = None
                else:
                    sum_fee = sum(annual_fee(m) for m in g["_merchants"])
                    row[name] = (sum_fee * months) / 12
            else:
                row[name] = g[name]
        base[gp] = row

    # §5 derived metrics.
    derived = {}
    for (key, p), r in base.items():
        if period == "all":
            customers_prev = None
        else:
            prev = base.get((key, _previous_period(p, period)))
            customers_prev = None if prev is None else prev["customers"]
        fees = r["fees"]
        d = {
            "aov": _div(r["revenue"], r["orders"]),
            "reward_aov": _div(r["reward_revenue"], r["reward_orders"]),
            "purchase_frequency": _div(r["orders"], r["customers"]),
            "reward_purchase_frequency": _div(r["reward_orders"], r["reward_customers"]),
            "clv": _div(r["revenue"], r["customers"]),
            "reward_clv": _div(r["reward_revenue"], r["reward_customers"]),
            "repeat_customer_rate": _div(r["repeat_customers"], r["customers"]),
            "repeat_order_share": _div(r["orders_from_repeat_customers"], r["orders"]),
            "retention_rate": None,
            "strict_retention_rate": None,
            "loyalty_roi": None,
            "member_repeat_lift": _lift(
                r["member_repeat_customers"],
                r["reward_customers"],
                r["repeat_customers"] - r["member_repeat_customers"],
                r["customers"] - r["reward_customers"],
            ),
            "member_aov_lift": _lift(
                r["member_revenue"],
                r["member_orders"],
                r["revenue"] - r["member_revenue"],
                r["orders"] - r["member_orders"],
            ),
            "member_frequency_lift": _lift(
                r["member_orders"],
                r["reward_customers"],
                r["orders"] - r["member_orders"],
                r["customers"] - r["reward_customers"],
            ),
        }
        if customers_prev:  # None (no row) or 0 -> null
            d["retention_rate"] = (r["customers"] - r["new_customers"]) / customers_prev * 100
            d["strict_retention_rate"] = r["retained_customers"] / customers_prev * 100
        if fees is not None and fees != 0:
            d["loyalty_roi"] = (r["reward_revenue"] - fees) / fees * 100
        derived[(key, p)] = d

    # YoY and assembly.
    def values(gp):
        return {**base[gp], **derived[gp]}

    out = []
    for gp in base:
        key, p = gp
        current = values(gp)
        prev_gp = None if period == "all" else (key, _year_earlier(p))
        previous = values(prev_gp) if prev_gp in base else None
        row = {}
        for b, k in zip(by, key):
            row[KEY_COLUMN_NAMES[b]] = k
            if b == "merchant" and names is not None:
                row["merchant_name"] = names.get(k)
        row["period_start"] = p
        row["period_complete"] = _period_complete(p, period, window)
        row.update(current)
        compared = row["period_complete"] and prev_gp is not None and _period_complete(prev_gp[1], period, window)
        for name in BASE_COLUMNS + DERIVED_COLUMNS:
            x = current[name]
            x_prev = None if previous is None else previous[name]
            if x is None or x_prev is None or x_prev == 0 or not compared:
                row[name + "_yoy"] = None
            else:
                row[name + "_yoy"] = (x - x_prev) / x_prev * 100
        out.append((key, p, row))

    out.sort(key=lambda t: (_key_order(by, t[0], labels), t[1]))
    return [row for _, _, row in out]


def _key_order(by, key, labels):
    """Sort key of a group key (SPEC §7): values, except ``size`` in bucket order, smallest first."""
    return tuple(labels.index(k) if b == "size" else k for b, k in zip(by, key))


def _observation_window(days, is_order, observation_start=None, observation_end=None):
    """SPEC §3: ``[observation_start, observation_end)``, by default the UTC date of the
    earliest order and the day after the UTC date of the latest order (refunds are no orders)."""
    order_days = [d for d, o in zip(days, is_order) if o]
    start = min(order_days) if observation_start is None else observation_start
    end = max(order_days) + dt.timedelta(days=1) if observation_end is None else observation_end
    return start, end


def _period_complete(start: dt.date, period: str, window) -> bool:
    """SPEC §3: the period's first day is on or after the window's start and the day after
    its last day on or before the window's end; ``period="all"`` is always complete."""
    if period == "all":
        return True
    return start >= window[0] and _add_months(start, MONTHS_IN_PERIOD[period]) <= window[1]


# ---------------------------------------------------------------------------
# Comparison helper shared by the property tests


def _is_string_type(typ) -> bool:
    return (
        pa.types.is_string(typ)
        or pa.types.is_large_string(typ)
        or (hasattr(pa.types, "is_string_view") and pa.types.is_string_view(typ))
    )


def _expected_type_ok(name: str, typ) -> bool:
    if name == "merchant_id":
        return typ == pa.int64()
    if name in STRING_KEY_COLUMNS:
        return _is_string_type(typ)
    if name == "period_start":
        return typ == pa.date32()
    if name == "period_complete":
        return typ == pa.bool_()
    if name in INT_COLUMNS:
        return typ == pa.int64()
    if name in FLOAT_COLUMNS:
        return typ == pa.float64()
    return False


def assert_tables_match(actual: pa.Table, expected: list[dict], columns=None) -> None:
    """Assert that ``actual`` (library output) equals ``expected`` (reference).

    Same column names in the same order (``columns`` gives them when
    ``expected`` is empty), same types (§7 and the team's decisions), same
    rows in the same order; ints, strings and dates exactly equal; floats
    null in the same places and otherwise ``math.isclose(rel_tol=1e-12)``.
    """
    assert isinstance(actual, pa.Table), f"expected a pyarrow.Table, got {type(actual)!r}"
    names = actual.column_names
    if columns is not None:
        assert names == list(columns), f"column names differ:\n  actual   {names}\n  expected {list(columns)}"
    if expected:
        exp_names = list(expected[0].keys())
        assert names == exp_names, f"column names differ:\n  actual   {names}\n  expected {exp_names}"
    for field in actual.schema:
        assert _expected_type_ok(field.name, field.type), f"column {field.name!r} has type {field.type}"
    assert actual.num_rows == len(expected), f"{actual.num_rows} rows, expected {len(expected)}"

    key_names = [c for c in names if c in ("merchant_id", "industry", "country", "size", "period_start")]
    for i, (a_row, e_row) in enumerate(zip(actual.to_pylist(), expected)):
        where = f"row {i} " + repr({k: e_row.get(k) for k in key_names})
        for name in names:
            a = a_row[name]
            e = e_row[name]
            if name in FLOAT_COLUMNS:
                if e is None:
                    assert a is None, f"{where}: {name} = {a!r}, expected null"
                else:
                    assert a is not None, f"{where}: {name} is null, expected {e!r}"
                    assert isinstance(a, float) and not math.isnan(a), f"{where}: {name} = {a!r}"
                    assert math.isclose(a, e, rel_tol=1e-12, abs_tol=0), (
                        f"{where}: {name} = {a!r}, expected {e!r}"
                    )
            elif name == "merchant_name" and e is None:  # a merchant without a name
                assert a is None, f"{where}: {name} = {a!r}, expected null"
            else:
                assert e is not None, f"{where}: reference produced null for {name}"
                assert a == e and type(a) is type(e), f"{where}: {name} = {a!r}, expected {e!r}"
