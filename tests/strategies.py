"""Hypothesis strategies for hostile small order sets (SPEC §2 canonical layout).

Orders are generated as exact UTC instants in integer nanoseconds, clustered
on period boundaries, then floored to the drawn storage unit. Rows are sorted
by (merchant_id, customer_id, stored order_ts) with a stable sort, so equal
timestamps keep their drawing order (that is the file order of ties).
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pyarrow as pa
from hypothesis import strategies as st

__all__ = [
    "ALL_BY_KEYS",
    "PERIODS",
    "SAFE_SIZE_EDGES",
    "instants_ns",
    "zone_instants_ns",
    "MERCHANT_ZONES",
    "recent_instants_ns",
    "orders_tables",
    "REFUND_AMOUNTS",
    "merchants_tables",
    "orders_and_merchants",
    "bys",
    "periods",
    "size_edges",
    "batch_sizes",
    "rebatch",
    "rebatched",
    "ANALYSIS_ZONES",
    "zoned_instants_ns",
    "zoned_merchants",
]

ALL_BY_KEYS = ("merchant", "industry", "country", "size")
PERIODS = ("year", "quarter", "month", "all")

NS_PER_UNIT = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
NS_PER_DAY = 86400 * 10**9
TIME_ZONES = (None, "UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe")

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1

# Edges whose labels and comparisons are unambiguous: integers, or binary
# fractions (exact as float64). Small ones matter for small inputs.
SAFE_SIZE_EDGES = (0.25, 0.5, 1, 2, 2.5, 5, 10, 30, 300, 1500, 3000, 30000, 2_000_000)

INDUSTRIES = ("retail", "food", "fashion", "Électronique", "", "unknown", "Food")
COUNTRIES = ("DE", "US", "FR", "de", "ÅL")


def _ns(year, month=1, day=1, hour=0, minute=0, second=0):
    delta = dt.datetime(year, month, day, hour, minute, second) - dt.datetime(1970, 1, 1)
    return (delta.days * 86400 + delta.seconds) * 10**9


# Latest allowed instant: before 2262-04-11 (ns timestamps end at
# 2262-04-11T23:47:16.854775807); kept for every unit so that all units can
# represent every drawn instant.
MAX_NS = _ns(2262, 4, 11) - 1

# Offsets around a period boundary: exact, one ns/us/ms/s before and after,
# an hour (time-zone sized), a day.
_BOUNDARY_OFFSETS = (
    0, -1, 1, -10**3, -10**6, -10**9, 10**9 - 1, 10**9, -3600 * 10**9, 3600 * 10**9,
    -NS_PER_DAY, NS_PER_DAY - 1,
)

_YEARS = st.integers(2019, 2024) | st.sampled_from([2018, 2025])


@st.composite
def _boundary_instants(draw):
    year = draw(_YEARS)
    # Year and quarter starts are over-represented; any month start works.
    month = draw(st.sampled_from([1, 1, 1, 4, 7, 10]) | st.integers(1, 12))
    offset = draw(st.sampled_from(_BOUNDARY_OFFSETS))
    return min(max(_ns(year, month) + offset, 0), MAX_NS)


_SPECIAL_INSTANTS = st.sampled_from(
    [
        0,  # 1970-01-01 00:00:00
        1,
        NS_PER_DAY - 1,  # 1970-01-01 23:59:59.999999999
        _ns(1970, 2, 1) - 1,
        _ns(2262, 1, 1),
        _ns(2262, 4, 10, 23, 59, 59),
        MAX_NS,
    ]
)


# Merchant time zones (SPEC §3): DST (New York, Berlin; Lord Howe's 30-minute DST), 30- and
# 45-minute offsets (Kolkata, Kathmandu), offsets changed in history (Caracas: -4 → -4:30 in
# 2007 → -4 in 2016; Apia: -11 → +13 by skipping 2011-12-30; Kiritimati: -10 → +14 by skipping
# 1994-12-31), the extremes +14 and -11 (Kiritimati, Pago Pago), and UTC.
MERCHANT_ZONES = (
    "UTC", "America/New_York", "Europe/Berlin", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Lord_Howe",
    "America/Caracas", "Pacific/Apia", "Pacific/Kiritimati", "Pacific/Pago_Pago",
)
# Wall-clock moments where zones are interesting: DST changes (fall-back days at 01:30 twice),
# historical offset changes, and month starts.
_ZONE_MOMENTS = (
    ("America/New_York", (2023, 11, 5, 1, 30)), ("America/New_York", (2023, 3, 12, 3, 0)),
    ("America/New_York", (2023, 12, 31, 22, 0)), ("Europe/Berlin", (2023, 10, 29, 2, 30)),
    ("Australia/Lord_Howe", (2023, 4, 2, 1, 45)), ("Australia/Lord_Howe", (2023, 10, 1, 2, 0)),
    ("America/Caracas", (2007, 12, 9, 2, 45)), ("America/Caracas", (2016, 5, 1, 2, 30)),
    ("Pacific/Apia", (2011, 12, 31, 0, 0)), ("Pacific/Apia", (2011, 12, 29, 23, 0)),
    ("Pacific/Kiritimati", (1995, 1, 1, 0, 0)), ("Pacific/Kiritimati", (1994, 12, 30, 23, 0)),
    ("Pacific/Pago_Pago", (2024, 1, 1, 0, 0)), ("Asia/Kathmandu", (2024, 1, 1, 0, 0)),
    ("Asia/Kolkata", (2023, 4, 1, 0, 0)),
)
# Timestamps end at 2262-12-31 UTC, but nanoseconds at INT64_MAX (2262-04-11T23:47:16.85...).
END_NS = _ns(2263, 1, 1) - 1


def _zone_ns(zone, wall, fold=0):
    local = dt.datetime(*wall, tzinfo=zoneinfo.ZoneInfo(zone), fold=fold)
    return (local - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1) * 1000


_ZONE_INSTANTS = sorted({_zone_ns(z, w, f) for z, w in _ZONE_MOMENTS for f in (0, 1)})


@st.composite
def _zone_month_starts(draw):
    """Around a local month start of one of MERCHANT_ZONES (any year 1970 .. 2262)."""
    zone = draw(st.sampled_from(MERCHANT_ZONES))
    year = draw(st.integers(2019, 2024) | st.sampled_from([1970, 1994, 1995, 2007, 2011, 2016, 2262]))
    month = draw(st.sampled_from([1, 1, 4, 12]) | st.integers(1, 12))
    offset = draw(st.sampled_from(_BOUNDARY_OFFSETS))
    return min(max(_zone_ns(zone, (year, month, 1)) + offset, 0), END_NS)


def zone_instants_ns():
    """UTC instants in ns for merchants in MERCHANT_ZONES: DST changes, offset changes, local month
    starts, the first hours of 1970 (1969 in the Americas) and the last of 2262 (2263 in the
    Pacific). Instants past INT64_MAX become INT64_MAX for nanosecond columns (orders_tables)."""
    return st.one_of(
        st.sampled_from(_ZONE_INSTANTS).flatmap(lambda t: st.sampled_from([t, t - 1, t + 1, t + 3600 * 10**9])),
        _zone_month_starts(),
        st.integers(0, 15 * 3600 * 10**9),
        st.integers(END_NS - 15 * 3600 * 10**9, END_NS),
        instants_ns(),
    )


def recent_instants_ns():
    """UTC instants in 2018 .. 2025, clustered on period boundaries (short cohort grids)."""
    return st.one_of(_boundary_instants(), st.integers(_ns(2019), _ns(2025) - 1))


def instants_ns():
    """UTC instants in integer nanoseconds, 1970-01-01 .. 2262-04-10."""
    return st.one_of(
        _boundary_instants(),
        st.integers(_ns(2019), _ns(2025) - 1),
        _SPECIAL_INSTANTS,
    )


def _ids(dtype):
    top = INT32_MAX if dtype == pa.int32() else INT64_MAX
    return st.one_of(st.integers(0, 12), st.integers(0, top), st.just(top))


_AMOUNTS = st.one_of(st.just(0), st.integers(0, 10_000), st.integers(0, 10**12))

# With refunds=True (SPEC §2): orders and refund rows mixed, refunds often a
# store-customer's first row in a period or in the input, or all its rows.
REFUND_AMOUNTS = st.one_of(
    st.just(0), st.integers(0, 10_000), st.integers(0, 10**12), st.integers(-10_000, -1),
    st.integers(-10**12, -1), st.just(-1),
)


@st.composite
def orders_tables(draw, max_merchants=4, max_customers=4, max_orders=5, allow_empty=True, amounts=None,
                  instants=None):
    """A canonical-layout orders ``pa.Table``, sorted, ties allowed.

    ``amounts`` / ``instants``: strategies to use instead of the default
    amounts and ``instants_ns()``.
    """
    amounts = _AMOUNTS if amounts is None else amounts
    instants = instants_ns() if instants is None else instants
    merchant_type = draw(st.sampled_from([pa.int32(), pa.int64()]))
    customer_type = draw(st.sampled_from([pa.int32(), pa.int64()]))
    unit = draw(st.sampled_from(["s", "ms", "us", "ns", "date32"]))
    tz = None if unit == "date32" else draw(st.sampled_from(TIME_ZONES))
    reward_mode = draw(st.sampled_from(["absent", "all_null", "mixed", "bool"]))

    empty = allow_empty and draw(st.integers(0, 15)) == 0
    merchant_ids = [] if empty else draw(
        st.lists(_ids(merchant_type), min_size=1, max_size=max_merchants, unique=True)
    )
    # A small shared pool: the same customer id at several merchants.
    customer_pool = draw(st.lists(_ids(customer_type), min_size=1, max_size=6, unique=True))
    # Few anchors per example: equal timestamps across and within customers.
    anchors = draw(st.lists(instants, min_size=1, max_size=6))
    instant = st.one_of(st.sampled_from(anchors), instants)

    rows = []  # (merchant, customer, stored ts, amount, reward)
    for m in merchant_ids:
        customers = draw(
            st.lists(st.sampled_from(customer_pool), min_size=1, max_size=max_customers, unique=True)
        )
        for c in customers:
            n = draw(st.integers(1, max_orders))
            for _ in range(n):
                ns = min(draw(instant), INT64_MAX) if unit == "ns" else draw(instant)
                stored = ns // NS_PER_DAY if unit == "date32" else ns // NS_PER_UNIT[unit]
                amount = draw(amounts)
                if reward_mode == "mixed":
                    reward = draw(st.sampled_from([True, False, None]))
                elif reward_mode == "bool":
                    reward = draw(st.booleans())
                else:
                    reward = None
                rows.append((m, c, stored, amount, reward))
    # Stable: ties in (merchant, customer, stored ts) keep drawing order.
    rows.sort(key=lambda r: (r[0], r[1], r[2]))

    ts_type = pa.date32() if unit == "date32" else pa.timestamp(unit, tz=tz)
    columns = {
        "merchant_id": pa.array([r[0] for r in rows], merchant_type),
        "customer_id": pa.array([r[1] for r in rows], customer_type),
        "order_ts": pa.array([r[2] for r in rows], ts_type),
        "amount": pa.array([r[3] for r in rows], pa.int64()),
    }
    if reward_mode != "absent":
        columns["reward"] = pa.array([r[4] for r in rows], pa.bool_())
    return pa.table(columns)


NAMES = ("shop-1", "shop-10", "Shop-1", "", "ünï.example", "a,b")


@st.composite
def merchants_tables(draw, merchant_ids, names=False, timezones=False):
    """A merchants table covering a subset of ``merchant_ids`` plus strangers.

    ``names``: also a ``name`` column (SPEC §2), nulls and empty strings included.
    ``timezones``: also a ``timezone`` column of MERCHANT_ZONES, nulls and empty strings included.
    """
    merchant_ids = list(dict.fromkeys(merchant_ids))
    ids = [m for m in merchant_ids if draw(st.integers(0, 3)) > 0]
    extras = draw(st.lists(st.integers(0, INT64_MAX) | st.integers(0, 12), max_size=2))
    for m in extras:
        if m not in ids and m not in merchant_ids:
            ids.append(m)
    ids = draw(st.permutations(ids))
    industry = st.sampled_from(INDUSTRIES) | st.none()
    country = st.sampled_from(COUNTRIES) | st.none()
    fee = st.one_of(st.none(), st.just(0), st.integers(0, 10**6), st.integers(0, 10**12))
    columns = {
        "merchant_id": pa.array(ids, pa.int64()),
        "industry": pa.array([draw(industry) for _ in ids], pa.string()),
        "country": pa.array([draw(country) for _ in ids], pa.string()),
        "annual_fee": pa.array([draw(fee) for _ in ids], pa.int64()),
    }
    if names:
        name = st.sampled_from(NAMES) | st.none() | st.text(max_size=5)
        columns["name"] = pa.array([draw(name) for _ in ids], pa.string())
    if timezones:
        zone = st.sampled_from(MERCHANT_ZONES) | st.sampled_from(["", None])
        columns["timezone"] = pa.array([draw(zone) for _ in ids], pa.string())
    return pa.table(columns)


@st.composite
def orders_and_merchants(draw, merchant_names=False, timezones=False, **kwargs):
    """(orders, merchants or None); ``merchant_names``: merchants tables with a ``name`` column.

    ``timezones``: merchants tables with a ``timezone`` column, orders at zone-interesting instants.
    """
    if timezones:
        kwargs.setdefault("instants", zone_instants_ns())
    orders = draw(orders_tables(**kwargs))
    if draw(st.integers(0, 4 if not timezones else 9)) == 0:
        return orders, None
    merchants = draw(merchants_tables(orders.column("merchant_id").to_pylist(), names=merchant_names,
                                      timezones=timezones))
    return orders, merchants


def bys():
    """Any subset of the grouping keys, in any order, including empty."""
    return st.permutations(ALL_BY_KEYS).flatmap(
        lambda keys: st.integers(0, len(keys)).map(lambda k: list(keys[:k]))
    )


def periods():
    return st.sampled_from(PERIODS)


def size_edges():
    """Ascending, distinct edges from SAFE_SIZE_EDGES."""
    return st.lists(st.sampled_from(SAFE_SIZE_EDGES), min_size=1, max_size=5, unique=True).map(
        lambda edges: tuple(sorted(edges))
    )


def batch_sizes():
    return st.integers(1, 70)


def rebatch(table: pa.Table, max_chunksize: int, empty_batches: bool = False) -> pa.Table:
    """The same table cut into record batches of at most ``max_chunksize`` rows.

    With ``empty_batches`` an empty batch is put before, between and after
    the batches (hostile, but a valid Arrow table).
    """
    batches = table.to_batches(max_chunksize=max_chunksize)
    if empty_batches:
        empty = pa.RecordBatch.from_pylist([], schema=table.schema)
        spaced = [empty]
        for b in batches:
            spaced += [b, empty]
        batches = spaced
    return pa.Table.from_batches(batches, schema=table.schema)


@st.composite
def rebatched(draw, table: pa.Table) -> pa.Table:
    return rebatch(table, draw(batch_sizes()), empty_batches=draw(st.booleans()))


# --- per-merchant time zones of the analyses (SPEC §3; cohorts, concentration, rfm) -----------
# Kept apart from the compute strategies above so that the two zone branches merge cleanly.

# 30- and 45-minute offsets, DST north and south, a half-hour DST (Lord Howe), a zone that
# skipped a day (Apia, 2011-12-30) and one whose standard offset changed twice (Moscow 2011, 2014).
ANALYSIS_ZONES = ("UTC", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu", "Pacific/Apia", "Asia/Tokyo",
                  "Australia/Lord_Howe", "Europe/Moscow", "America/Sao_Paulo")
# Minutes east of UTC around which local periods turn over in those zones.
_ZONE_OFFSETS_MIN = (-300, -240, -180, -120, 330, 345, 540, 600, 630, 660, 780, 840, 180, 240)


@st.composite
def _local_boundary_instants(draw):
    """Near a local month start in some zone: a UTC month start minus a zone offset, give or take 1 ns/s/h."""
    year = draw(st.integers(2010, 2025) | st.sampled_from([1970, 2262]))
    month = draw(st.integers(1, 12) if year < 2262 else st.integers(1, 3))
    offset = draw(st.sampled_from(_ZONE_OFFSETS_MIN)) * 60 * 10**9
    nudge = draw(st.sampled_from([0, -1, 1, -10**9, 10**9, -3600 * 10**9, 3600 * 10**9]))
    return min(max(_ns(year, month) - offset + nudge, 0), MAX_NS)


# DST changes (New York's fall-back 2023-11-05 06:00Z: 01:30 local happens twice; spring-forward
# 2023-03-12 07:00Z; Apia's skipped day; Moscow's 2014-10-26 change), each give or take two hours.
_TRANSITIONS = (_ns(2023, 11, 5, 6), _ns(2023, 3, 12, 7), _ns(2011, 12, 30, 10), _ns(2014, 10, 25, 22),
                _ns(2011, 3, 26, 23))


def zoned_instants_ns():
    """``instants_ns()`` plus instants on local period boundaries and around DST and offset changes."""
    near_transition = st.builds(lambda t, d: t + d, st.sampled_from(_TRANSITIONS),
                                st.integers(-2 * 3600, 2 * 3600).map(lambda s: s * 10**9))
    return st.one_of(instants_ns(), _local_boundary_instants(), near_transition)


@st.composite
def zoned_merchants(draw, orders, names=False):
    """(merchants table with a ``timezone`` column or None, default ``timezone`` or None) for ``orders``.

    Some merchants get a zone, some a null or empty one, some none at all
    (absent from the table); the default zone applies to all but the first.
    """
    timezone = draw(st.none() | st.sampled_from(ANALYSIS_ZONES))
    if draw(st.integers(0, 4)) == 0:
        return None, timezone
    merchants = draw(merchants_tables(orders.column("merchant_id").to_pylist(), names=names))
    zone = st.sampled_from(ANALYSIS_ZONES) | st.sampled_from([None, ""])
    zones = pa.array([draw(zone) for _ in range(merchants.num_rows)], pa.string())
    return merchants.append_column("timezone", zones), timezone
