"""A slow, obviously-correct RFM summary, written from SPEC §9 and lifetimes' documented semantics.

lifetimes' ``summary_data_from_transaction_data`` (0.11.3), which SPEC §9
defers to:

1. The observation end (default: the latest transaction) and every
   transaction's time are truncated to the start of their ``freq`` period:
   the day; the Monday of the week (pandas ``W`` = ``W-SUN``, weeks ending
   on Sunday); the first of the month.
2. Transactions whose period starts after the observation period's start
   are dropped; a customer with none left is absent.
3. A customer's transactions in the same period are merged into one whose
   value is their sum.
4. ``frequency`` is the number of periods minus the first (all of them with
   ``include_first_transaction``); ``recency`` the time from the first
   period to the last, ``T`` from the first period to the observation
   period, both divided by ``np.timedelta64(1, freq)`` — for months NumPy's
   fixed 365.2425 / 12 days; ``monetary_value`` the mean value over the
   periods ``frequency`` counts, 0 if it counts none.

With a calibration end, lifetimes' ``calibration_and_holdout_data``:

5. The summary above of the transactions at or before the calibration end
   (raw times compared with the instant; a date is its midnight), with the
   calibration end as its observation end; only those customers appear.
6. Their transactions after the calibration end and at or before the
   observation end (default: all later ones) are the holdout:
   ``frequency_holdout`` their distinct periods, ``monetary_value_holdout``
   the mean value per transaction (not per period), 0 without any;
   ``duration_holdout`` the periods from the calibration end's period to the
   observation end's (default: the latest transaction's, or the calibration
   end's if later: lifetimes raises on an empty holdout).

Time zones (SPEC §3): lifetimes sees each order's local wall-clock time in
its merchant's zone (the merchants table's ``timezone``, else the
``timezone`` argument, else UTC), as naive timestamps; so every day, week
and month above is local, and ``observation_end`` / ``calibration_end`` are
wall-clock dates and times read in each merchant's zone (an aware datetime
is first converted to UTC, and its UTC wall clock is used). Local times are
found per row with ``zoneinfo`` (``reference_analyses.local_offsets``).

Here the customer is the store-customer (SPEC §4), times are local, values
are the integer ``amount`` (cents), and all arithmetic is on Python ints
and dates: the only floats are the final quotients, which Python rounds
correctly — as float64 division of exact operands does.
"""
import datetime as dt
from fractions import Fraction

import pyarrow as pa
from reference_analyses import local_offsets, zone_of_merchant

EPOCH = dt.date(1970, 1, 1)
SECONDS_PER_DAY = 86_400
# np.timedelta64(1, freq) in seconds; a Gregorian year is 365.2425 days.
SECONDS_PER_UNIT = {
    "D": SECONDS_PER_DAY,
    "W": 7 * SECONDS_PER_DAY,
    "M": int(Fraction(3652425, 10000) * SECONDS_PER_DAY / 12),
}
assert Fraction(3652425, 10000) * SECONDS_PER_DAY / 12 == SECONDS_PER_UNIT["M"]
UNITS_PER_DAY = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}


def period_start(day, freq):
    """First day of the ``freq`` period holding ``day`` (a ``datetime.date``)."""
    if freq == "D":
        return day
    if freq == "W":
        return day - dt.timedelta(days=day.weekday())   # Monday
    if freq == "M":
        return day.replace(day=1)
    raise ValueError(freq)


def _offsets(orders, merchants, timezone):
    """Each order's UTC offset in seconds in its merchant's zone (all 0 without zones)."""
    if merchants is None and timezone is None:
        return [0] * orders.num_rows
    return local_offsets(orders, zone_of_merchant(merchants, timezone))


def order_days(orders, merchants=None, timezone=None):
    """Local calendar day of each order (``order_ts`` stored values are UTC for any time zone)."""
    if merchants is not None or timezone is not None:
        instants = order_instants(orders, merchants, timezone)
        return [EPOCH + dt.timedelta(days=t // (SECONDS_PER_DAY * 10**9)) for t in instants]
    ts = orders.column("order_ts")
    if pa.types.is_timestamp(ts.type):
        per_day = UNITS_PER_DAY[ts.type.unit]
        return [EPOCH + dt.timedelta(days=v // per_day) for v in ts.cast(pa.int64()).to_pylist()]
    if ts.type == pa.date64():
        return [EPOCH + dt.timedelta(days=v // 86_400_000) for v in ts.cast(pa.int64()).to_pylist()]
    return [EPOCH + dt.timedelta(days=v) for v in ts.cast(pa.int32()).to_pylist()]


def order_instants(orders, merchants=None, timezone=None):
    """Nanoseconds since 1970-01-01 of each order's local wall-clock time (a date is its UTC midnight)."""
    ts = orders.column("order_ts")
    offsets = _offsets(orders, merchants, timezone)
    if pa.types.is_timestamp(ts.type):
        per_ns = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[ts.type.unit]
        utc = [v * per_ns for v in ts.cast(pa.int64()).to_pylist()]
    else:
        utc = [(d - EPOCH).days * SECONDS_PER_DAY * 10**9 for d in order_days(orders)]
    return [t + off * 10**9 for t, off in zip(utc, offsets)]


def instant(value):
    """Nanoseconds since 1970-01-01 UTC of a date (its midnight) or a datetime (naive = UTC)."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return (value - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1) * 1000
    return (value - EPOCH).days * SECONDS_PER_DAY * 10**9


def as_date(value):
    return value.date() if isinstance(value, dt.datetime) else value


def period_index(day, freq):
    """A number that counts ``freq`` periods: days, weeks (of their Mondays), months."""
    start = period_start(day, freq)
    if freq == "M":
        return start.year * 12 + start.month
    return (start - EPOCH).days // (7 if freq == "W" else 1)


def _in_units(days, freq):
    return days * SECONDS_PER_DAY / SECONDS_PER_UNIT[freq]   # int / int: correctly rounded


def reference_rfm(orders, freq="D", observation_end=None, include_first_transaction=False, calibration_end=None,
                  merchants=None, timezone=None):
    """Rows ``{merchant_id, customer_id, frequency, recency, T, monetary_value}`` in input order.

    ``orders`` is a canonical ``pa.Table`` (sorted); ``observation_end`` a
    ``datetime.date`` (local) or None for the latest order. With
    ``calibration_end`` (a date or datetime, local) the rows are the
    calibration summary with the holdout columns (module docstring).
    """
    if calibration_end is not None:
        return _calibration_and_holdout(orders, freq, observation_end, include_first_transaction, calibration_end,
                                        merchants, timezone)
    days = order_days(orders, merchants, timezone)
    if not days:
        return []
    end = period_start(max(days) if observation_end is None else as_date(observation_end), freq)
    merchants = orders.column("merchant_id").to_pylist()
    customers = orders.column("customer_id").to_pylist()
    amounts = orders.column("amount").to_pylist()
    # store-customer -> {period start: summed amount}; dicts keep insertion (input) order.
    periods = {}
    for m, c, day, amount in zip(merchants, customers, days, amounts):
        start = period_start(day, freq)
        if start > end:
            continue
        sums = periods.setdefault((m, c), {})
        sums[start] = sums.get(start, 0) + amount
    rows = []
    for (m, c), sums in periods.items():
        starts = sorted(sums)
        counted = starts if include_first_transaction else starts[1:]
        rows.append({
            "merchant_id": m,
            "customer_id": c,
            "frequency": len(counted),
            "recency": _in_units((starts[-1] - starts[0]).days, freq),
            "T": _in_units((end - starts[0]).days, freq),
            "monetary_value": sum(sums[s] for s in counted) / len(counted) if counted else 0.0,
        })
    return rows


def _calibration_and_holdout(orders, freq, observation_end, include_first_transaction, calibration_end,
                             merchants, timezone):
    instants = order_instants(orders, merchants, timezone)
    if not instants:
        return []
    cut = instant(calibration_end)
    limit = None if observation_end is None else instant(observation_end)
    before = pa.array([t <= cut for t in instants])
    rows = reference_rfm(orders.filter(before), freq, as_date(calibration_end), include_first_transaction,
                         merchants=merchants, timezone=timezone)
    # lifetimes raises when the holdout is empty; here a calibration end after the latest order
    # (no observation end given) has a holdout of 0 periods.
    days = order_days(orders, merchants, timezone)
    latest = max(max(days), as_date(calibration_end))
    end_day = latest if observation_end is None else as_date(observation_end)
    duration = float(period_index(end_day, freq) - period_index(as_date(calibration_end), freq))
    holdout = {}
    keys = zip(orders.column("merchant_id").to_pylist(), orders.column("customer_id").to_pylist())
    for key, t, day, amount in zip(keys, instants, days, orders.column("amount").to_pylist()):
        if t > cut and (limit is None or t <= limit):
            periods, values = holdout.setdefault(key, (set(), []))
            periods.add(period_start(day, freq))
            values.append(amount)
    for row in rows:
        periods, values = holdout.get((row["merchant_id"], row["customer_id"]), (set(), []))
        row["frequency_holdout"] = len(periods)
        row["monetary_value_holdout"] = sum(values) / len(values) if values else 0.0
        row["duration_holdout"] = duration
    return rows
