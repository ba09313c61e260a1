"""Calendar periods in UTC (SPEC §3) as the lookup tables the kernel uses.

Every period kind is a union of calendar months. The kernel finds a
timestamp's period without a division or a branch: ``period_table`` cuts the
time axis into buckets of ``2**shift`` units (at most 28 days, the shortest
month, so a bucket holds at most one period boundary) and stores for each
bucket the period of its start and where that period ends if the next one
begins inside the bucket. The table has a few thousand entries and stays in
cache.
Period indexes count from 1970: years since 1970, quarters since 1970-Q1,
months since 1970-01; ``"all"`` has the single index 0.
"""
import datetime
from functools import lru_cache

import numpy as np

PERIODS = ("year", "quarter", "month", "all")
FIRST_YEAR = 1970
END_YEAR = 2263  # exclusive: timestamps run from 1970-01-01 to the end of 2262
N_MONTHS = (END_YEAR - FIRST_YEAR) * 12
N_DAYS = (datetime.date(END_YEAR, 1, 1) - datetime.date(FIRST_YEAR, 1, 1)).days
INT64_MAX = np.iinfo(np.int64).max

MONTHS_PER_PERIOD = {"year": 12, "quarter": 3, "month": 1}
# Periods between a period and the same period one year earlier (YoY).
PERIODS_PER_YEAR = {"year": 1, "quarter": 4, "month": 12}
# Units of a timestamp column in one day.
UNITS_PER_DAY = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}


def check_period(period):
    if period not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}; got {period!r}")
    return period


@lru_cache(maxsize=None)
def day_month():
    """int32[N_DAYS]: month index of each day since 1970-01-01."""
    first_days = np.arange(N_MONTHS + 1).astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)
    return np.repeat(np.arange(N_MONTHS, dtype=np.int32), np.diff(first_days))


@lru_cache(maxsize=None)
def month_period(period):
    """int32[N_MONTHS]: period index of each month."""
    months = np.arange(N_MONTHS, dtype=np.int32)
    if period == "all":
        return np.zeros_like(months)
    return months // MONTHS_PER_PERIOD[period]


def n_periods(period):
    return 1 if period == "all" else N_MONTHS // MONTHS_PER_PERIOD[period]


@lru_cache(maxsize=None)
def month_start(units_per_day):
    """int64[N_MONTHS + 1]: first timestamp of each month in the given units.

    Clamped to INT64_MAX, where nanoseconds run out in April 2262.
    """
    days = np.arange(N_MONTHS + 1).astype("datetime64[M]").astype("datetime64[D]").astype(np.int64).tolist()
    return np.array([min(d * units_per_day, INT64_MAX) for d in days], dtype=np.int64)


def bucket_shift(units_per_day):
    """log2 of the bucket width of ``period_table``: the largest power of two not above 28 days."""
    return (28 * int(units_per_day)).bit_length() - 1


@lru_cache(maxsize=None)
def period_table(period, units_per_day):
    """int64[n, 2] for bucket ``b = ts >> bucket_shift(units_per_day)``.

    ``[b, 0]`` is the period index of the bucket's first timestamp and
    ``[b, 1]`` the last timestamp of that period if the next period starts
    inside the bucket, else INT64_MAX; so ``period(ts) = [b, 0] + (ts > [b, 1])``.
    Covers every timestamp from 0 to ``ts_max(units_per_day)``.
    """
    shift = bucket_shift(units_per_day)
    starts = np.arange((ts_max(units_per_day) >> shift) + 1, dtype=np.int64) << shift
    index = month_period(period)[day_month()[starts // units_per_day]].astype(np.int64)
    table = np.empty((len(starts), 2), dtype=np.int64)
    table[:, 0] = index
    table[:, 1] = INT64_MAX
    if period != "all":
        # The next period starts at month (index + 1) * months-per-period; month_start
        # has an entry for the month after the last, clamped to INT64_MAX (no boundary).
        following = month_start(units_per_day)[(index + 1) * MONTHS_PER_PERIOD[period]]
        inside = (following <= starts + ((1 << shift) - 1)) & (following < INT64_MAX)
        table[inside, 1] = following[inside] - 1
    table.setflags(write=False)
    return table


def check_period_table(table, ts_max, n_periods):
    """ValueError unless every period ``table`` yields for timestamps up to ``ts_max`` is in [0, n_periods).

    The kernels index their accumulators with these periods unchecked.
    """
    table = np.asarray(table)
    reachable = table[:, 0] + (table[:, 1] < ts_max)
    if len(table) and not (0 <= np.min(table[:, 0]) and np.max(reachable) < n_periods):
        raise ValueError("period_table yields periods outside [0, n_periods)")


def month_of(ts, units_per_day):
    """Month index (months since 1970-01) of a valid raw timestamp."""
    return int(day_month()[int(ts) // units_per_day])


def ts_max(units_per_day):
    """The last valid timestamp (end of 2262, or the end of int64)."""
    return min(N_DAYS * units_per_day - 1, INT64_MAX)


def period_start(period, index, first_month=0):
    """datetime64[D] first day of each period index (``"all"``: of ``first_month``)."""
    index = np.asarray(index, dtype=np.int64)
    if period == "all":
        months = np.full(index.shape, first_month, dtype=np.int64)
    else:
        months = index * MONTHS_PER_PERIOD[period]
    return months.astype("datetime64[M]").astype("datetime64[D]")


def format_timestamp(value, units_per_day):
    """Human-readable UTC timestamp of a raw value, for error messages."""
    unit = {v: k for k, v in UNITS_PER_DAY.items()}.get(units_per_day, "D")
    if int(value) == np.iinfo(np.int64).min:  # NumPy's NaT
        return f"{value} ({unit} since 1970)"
    try:
        return str(np.datetime64(int(value), unit)) + ("" if unit == "D" else "Z")
    except (OverflowError, ValueError):
        return f"{value} ({unit} since 1970)"
