"""Calendar periods in UTC (SPEC §3) as the lookup tables the kernel uses.

Every period kind is a union of calendar months, so the kernel maps a
timestamp to its month (one division and a table lookup, cached while rows
stay in the same month) and the month to its period index.
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
    days = np.arange(N_DAYS).astype("datetime64[D]")
    return days.astype("datetime64[M]").astype(np.int32)


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
