"""Calendar periods in each merchant's own time zone (SPEC §3) as the lookup tables the kernels use.

Every period kind is a union of calendar months, and a local month is an
interval of UTC instants: ``local_month_starts`` lists where each begins,
computed once per zone with the standard library's ``zoneinfo``. The kernel
finds a timestamp's period without a division or a branch:
``period_table`` cuts the time axis into buckets of ``2**shift`` units (at
most 28 days, so at most ~26.1 days, and no local month is shorter than 27
days: a bucket holds at most one period boundary) and stores for each
bucket the period of its start and where that period ends if the next one
begins inside the bucket. A table has a few thousand entries and stays in
cache; ``period_tables`` stacks one per zone, and the kernel switches table
when the merchant changes (``MerchantZones``), so its row loop does the
same work in any zone.

Period indexes count from 1969-01 *local*: years since 1969, quarters since
1969-Q1, months since 1969-01, through 2263 inclusive; ``"all"`` has the
single index 0. Valid timestamps are 1970-01-01 .. 2262-12-31 UTC
(unchanged), and each of them has a local period in every zone: 00:30 UTC
on 1970-01-01 is 1969-12-31 in New York, 23:00 UTC on 2262-12-31 is
2263-01-01 in Tokyo.

A date32 ``order_ts`` is a calendar date with no time of day: it is that date
in whatever zone, so its period is the one containing that date and the
tables of every zone for date32 (``units_per_day == 1``) are the UTC table.
"""
import datetime
import zoneinfo
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

PERIODS = ("year", "quarter", "month", "all")
FIRST_YEAR = 1969  # period index base (local calendar)
END_YEAR = 2264  # exclusive: local periods run through 2263
N_MONTHS = (END_YEAR - FIRST_YEAR) * 12
# Valid timestamps: 1970-01-01 .. 2262-12-31 UTC.
UTC_FIRST_YEAR = 1970
UTC_END_YEAR = 2263  # exclusive
N_DAYS = (datetime.date(UTC_END_YEAR, 1, 1) - datetime.date(UTC_FIRST_YEAR, 1, 1)).days
EPOCH_MONTH = (UTC_FIRST_YEAR - FIRST_YEAR) * 12  # month index of 1970-01
INT64_MAX = np.iinfo(np.int64).max
DEFAULT_ZONE = "UTC"

MONTHS_PER_PERIOD = {"year": 12, "quarter": 3, "month": 1}
# Periods between a period and the same period one year earlier (YoY).
PERIODS_PER_YEAR = {"year": 1, "quarter": 4, "month": 12}
# Units of a timestamp column in one day.
UNITS_PER_DAY = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}


def check_period(period):
    if period not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}; got {period!r}")
    return period


# ---------------------------------------------------------------- zones


@lru_cache(maxsize=1)
def _zone_names():
    # "localtime" is a machine's own setting where the system database has one, not an IANA name.
    return (frozenset(zoneinfo.available_timezones()) - {"localtime", "posixrules"}) | {"UTC"}


def check_zone(name):
    """The IANA zone ``name`` (``"UTC"`` included) as the library keys it, else ValueError naming it.

    Only names of the IANA database count (``zoneinfo.available_timezones()``),
    not the machine's ``localtime`` or a path, so a name means the same on
    every machine that has the database.
    """
    if not isinstance(name, str) or name not in _zone_names():
        raise ValueError(f"unknown time zone {name!r}: expected an IANA name such as 'America/New_York' or 'UTC'")
    zoneinfo.ZoneInfo(name)  # loadable
    return name


_UTC = datetime.timezone.utc
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=_UTC)


def _local_date(zone, seconds):
    return (_EPOCH + datetime.timedelta(seconds=seconds)).astimezone(zone).date()


def _month_start_seconds(zone, year, month):
    """The first UTC second whose local date in ``zone`` is on or after ``year-month-01``.

    Local midnight normally; when midnight falls in a gap (clocks spring
    forward over it), the instant the gap ends; when it is repeated (clocks
    fall back over it), its first occurrence.
    """
    first = datetime.date(year, month, 1)
    wall = datetime.datetime(year, month, 1)
    c0 = int(wall.replace(tzinfo=zone, fold=0).timestamp())
    c1 = int(wall.replace(tzinfo=zone, fold=1).timestamp())
    lo, hi = min(c0, c1), max(c0, c1)
    if _local_date(zone, lo) >= first:
        return lo
    # A gap over midnight: the first instant of the new date lies in (lo, hi].
    assert _local_date(zone, hi) >= first
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _local_date(zone, mid) >= first:
            hi = mid
        else:
            lo = mid
    return hi


@lru_cache(maxsize=None)
def _local_month_start_seconds(zone_name):
    zone = zoneinfo.ZoneInfo(zone_name)
    return tuple(
        _month_start_seconds(zone, FIRST_YEAR + m // 12, m % 12 + 1) for m in range(N_MONTHS + 1)
    )


@lru_cache(maxsize=None)
def local_month_starts(zone, units_per_day):
    """int64[N_MONTHS + 1]: the UTC instant, in the given units, at which each local month of ``zone`` begins.

    Index ``m`` is the month ``m`` months after 1969-01 (the last entry: 2264-01).
    Starts after the last valid timestamp are clamped to ``ts_max + 1``, or to
    INT64_MAX for nanoseconds (which run out in April 2262; no real start is
    INT64_MAX): no valid timestamp reaches them. ``units_per_day == 1``
    (date32) gives the UTC month starts in days whatever the zone (a date is
    the same date in every zone). The one primitive every kernel table is built
    from.
    """
    units_per_day = int(units_per_day)
    check_zone(zone)
    if units_per_day == 1:
        zone = DEFAULT_ZONE
        seconds = [s // 86_400 for s in _local_month_start_seconds(zone)]
        scale = 1
    else:
        if units_per_day % 86_400:
            raise ValueError(f"units_per_day must be 1 or a multiple of 86400; got {units_per_day}")
        seconds = _local_month_start_seconds(zone)
        scale = units_per_day // 86_400
    cap = min(ts_max(units_per_day) + 1, INT64_MAX)
    starts = np.array([min(s * scale, cap) for s in seconds], dtype=np.int64)
    starts.setflags(write=False)
    return starts


def month_index(starts, ts):
    """Local month index of a valid raw timestamp ``ts`` given ``local_month_starts`` ``starts``."""
    ts = int(ts)
    if ts == INT64_MAX:  # nanoseconds: entries clamped to INT64_MAX are no boundary
        return int(np.searchsorted(starts, ts, "left")) - 1
    return int(np.searchsorted(starts, ts, "right")) - 1


def local_month_of(ts, units_per_day, zone=DEFAULT_ZONE):
    """Month index (months since 1969-01, local to ``zone``) of a valid raw timestamp."""
    return month_index(local_month_starts(zone, units_per_day), ts)


@dataclass(frozen=True, eq=False)
class MerchantZones:
    """Each merchant's time zone: ``zones[zone[i]]`` is merchant ``merchant_id[i]``'s.

    ``zones[0]`` is the default zone (the ``timezone=`` argument, else UTC),
    used for every merchant not listed; ``merchant_id`` is sorted ascending
    and lists only merchants outside the default zone, so the kernel's
    binary search on a merchant change is short and all-default input has an
    empty one.
    """

    zones: tuple
    merchant_id: np.ndarray  # int64[k], sorted, unique
    zone: np.ndarray  # int32[k], 1 <= zone < len(zones)

    def __post_init__(self):
        merchant_id = np.ascontiguousarray(self.merchant_id, dtype=np.int64)
        zone = np.ascontiguousarray(self.zone, dtype=np.int32)
        if merchant_id.shape != zone.shape or merchant_id.ndim != 1:
            raise ValueError("merchant_id and zone must be 1-d arrays of one length")
        if len(merchant_id) > 1 and not np.all(merchant_id[1:] > merchant_id[:-1]):
            raise ValueError("MerchantZones.merchant_id must be sorted and unique")
        if len(zone) and not (0 <= zone.min() and zone.max() < len(self.zones)):
            raise ValueError("MerchantZones.zone indexes outside zones")
        if not self.zones:
            raise ValueError("MerchantZones needs a default zone")
        for name in self.zones:
            check_zone(name)
        merchant_id.setflags(write=False)
        zone.setflags(write=False)
        object.__setattr__(self, "zones", tuple(self.zones))
        object.__setattr__(self, "merchant_id", merchant_id)
        object.__setattr__(self, "zone", zone)

    @classmethod
    def utc(cls):
        return cls.default(DEFAULT_ZONE)

    @classmethod
    def default(cls, zone=None):
        """Every merchant in ``zone`` (None: UTC)."""
        return cls((check_zone(zone or DEFAULT_ZONE),), np.empty(0, np.int64), np.empty(0, np.int32))

    @classmethod
    def from_names(cls, merchant_id, names, default=None):
        """From merchant ids and their zone names (None or ``""``: the default zone), names already checked.

        ``merchant_id`` must be unique. The default zone gets index 0 and its
        merchants are left out of the lists.
        """
        default = check_zone(default or DEFAULT_ZONE)
        zones = [default]
        index = {default: 0}
        ids, zone = [], []
        for m, name in zip(np.asarray(merchant_id, dtype=np.int64).tolist(), names):
            if name is None or name == "" or name == default:
                continue
            z = index.get(name)
            if z is None:
                z = index[name] = len(zones)
                zones.append(check_zone(name))
            ids.append(m)
            zone.append(z)
        ids = np.array(ids, dtype=np.int64)
        zone = np.array(zone, dtype=np.int32)
        order = np.argsort(ids, kind="stable")
        return cls(tuple(zones), ids[order], zone[order])

    def zone_of(self, merchant_id):
        """Zone index (into ``zones``) of one merchant."""
        i = int(np.searchsorted(self.merchant_id, merchant_id))
        if i < len(self.merchant_id) and self.merchant_id[i] == merchant_id:
            return int(self.zone[i])
        return 0

    def zone_name(self, merchant_id):
        return self.zones[self.zone_of(merchant_id)]

    def __repr__(self):
        return f"MerchantZones(zones={self.zones!r}, merchants={len(self.merchant_id)})"


# ---------------------------------------------------------------- tables


@lru_cache(maxsize=None)
def day_month():
    """int32[N_DAYS]: month index (months since 1969-01) of each UTC day since 1970-01-01."""
    starts = local_month_starts(DEFAULT_ZONE, 1)[EPOCH_MONTH:]
    first_days = np.minimum(starts, N_DAYS)
    months = np.repeat(np.arange(EPOCH_MONTH, N_MONTHS, dtype=np.int32), np.diff(first_days))
    return months


@lru_cache(maxsize=None)
def month_period(period):
    """int32[N_MONTHS]: period index of each month."""
    months = np.arange(N_MONTHS, dtype=np.int32)
    if period == "all":
        return np.zeros_like(months)
    return months // MONTHS_PER_PERIOD[period]


def n_periods(period):
    return 1 if period == "all" else N_MONTHS // MONTHS_PER_PERIOD[period]


def bucket_shift(units_per_day):
    """log2 of the bucket width of ``period_table``: the largest power of two not above 28 days."""
    return (28 * int(units_per_day)).bit_length() - 1


@lru_cache(maxsize=None)
def period_table(period, units_per_day, zone=DEFAULT_ZONE):
    """int64[n, 2] for bucket ``b = ts >> bucket_shift(units_per_day)``, local to ``zone``.

    ``[b, 0]`` is the period index of the bucket's first timestamp and
    ``[b, 1]`` the last timestamp of that period if the next period starts
    inside the bucket, else INT64_MAX; so ``period(ts) = [b, 0] + (ts > [b, 1])``.
    Covers every timestamp from 0 to ``ts_max(units_per_day)``.
    """
    check_period(period)
    shift = bucket_shift(units_per_day)
    top = ts_max(units_per_day)
    starts = np.arange((top >> shift) + 1, dtype=np.int64) << shift
    ends = starts + ((1 << shift) - 1)
    table = np.empty((len(starts), 2), dtype=np.int64)
    table[:, 1] = INT64_MAX
    if period == "all":
        table[:, 0] = 0
    else:
        month_starts = local_month_starts(zone, units_per_day)
        # Bucket starts are < INT64_MAX, so 'right' never counts a clamped entry.
        month = np.searchsorted(month_starts, starts, "right") - 1
        index = month_period(period)[month].astype(np.int64)
        table[:, 0] = index
        mpp = MONTHS_PER_PERIOD[period]
        following = month_starts[(index + 1) * mpp]
        real = (following <= top) & (following < INT64_MAX)
        inside = (following <= ends) & real
        table[inside, 1] = following[inside] - 1
        # At most one boundary per bucket: the period after the next starts past it.
        after = month_starts[np.minimum((index + 2) * mpp, N_MONTHS)]
        if np.any(inside & (after <= ends) & (after <= top) & (after < INT64_MAX)):
            raise AssertionError(f"{zone}: a local {period} shorter than a bucket of 2**{shift} units")
    table.setflags(write=False)
    return table


@lru_cache(maxsize=None)
def _period_tables(period, units_per_day, zone_names):
    tables = np.stack([period_table(period, units_per_day, z) for z in zone_names])
    tables.setflags(write=False)
    return tables


def period_tables(period, units_per_day, zones):
    """int64[z, n_buckets, 2]: ``period_table`` of each zone of ``zones`` (a ``MerchantZones``).

    The kernel uses ``[zones.zone_of(merchant)]`` for a merchant's rows.
    """
    return _period_tables(period, int(units_per_day), tuple(zones.zones))


def check_period_table(table, ts_max, n_periods):
    """ValueError unless every period ``table`` yields for timestamps up to ``ts_max`` is in [0, n_periods).

    ``table`` is one ``period_table`` or a stack of them (``period_tables``).
    The kernels index their accumulators with these periods unchecked.
    """
    table = np.asarray(table).reshape(-1, 2)
    reachable = table[:, 0] + (table[:, 1] < ts_max)
    if len(table) and not (0 <= np.min(table[:, 0]) and np.max(reachable) < n_periods):
        raise ValueError("period_table yields periods outside [0, n_periods)")


def check_merchant_zones(merchant_id, zone, n_tables):
    """ValueError unless ``merchant_id`` (int64) is sorted and unique and every ``zone`` (int32, as long) indexes one of ``n_tables``.

    The kernels binary-search ``merchant_id`` and index the stacked tables with ``zone`` unchecked.
    """
    merchant_id, zone = np.asarray(merchant_id), np.asarray(zone)
    if merchant_id.dtype != np.int64 or zone.dtype != np.int32 or merchant_id.shape != zone.shape or zone.ndim != 1:
        raise ValueError("zone merchants (int64) and zone indexes (int32) must be 1-d arrays of one length")
    if len(zone) and not (0 <= zone.min() and zone.max() < n_tables):
        raise ValueError("zone index outside the stacked period tables")
    if len(merchant_id) > 1 and not np.all(merchant_id[1:] > merchant_id[:-1]):
        raise ValueError("zone merchants must be sorted and unique")


def ts_max(units_per_day):
    """The last valid timestamp (end of 2262 UTC, or the end of int64)."""
    return min(N_DAYS * units_per_day - 1, INT64_MAX)


def period_start(period, index, first_month=EPOCH_MONTH):
    """datetime64[D] first (local) day of each period index (``"all"``: of month ``first_month``).

    Month numbers count from 1969-01, as period indexes do.
    """
    index = np.asarray(index, dtype=np.int64)
    if period == "all":
        months = np.full(index.shape, first_month, dtype=np.int64)
    else:
        months = index * MONTHS_PER_PERIOD[period]
    return (months - EPOCH_MONTH).astype("datetime64[M]").astype("datetime64[D]")


def format_timestamp(value, units_per_day):
    """Human-readable UTC timestamp of a raw value, for error messages."""
    unit = {v: k for k, v in UNITS_PER_DAY.items()}.get(units_per_day, "D")
    if int(value) == np.iinfo(np.int64).min:  # NumPy's NaT
        return f"{value} ({unit} since 1970)"
    try:
        return str(np.datetime64(int(value), unit)) + ("" if unit == "D" else "Z")
    except (OverflowError, ValueError):
        return f"{value} ({unit} since 1970)"


def merchant_zones(merchant_id, names, default=None, source="<table>"):
    """``MerchantZones`` from a merchants table's ``merchant_id`` and ``timezone`` columns (SPEC §2, §3).

    A null or empty ``timezone`` is the default zone; a name that is not an
    IANA zone is a ``SchemaError`` naming ``source``, the row and the value.
    """
    from .errors import SchemaError

    names = list(names)
    checked = {None, ""}
    for row, name in enumerate(names):
        if name in checked:  # each name is loaded once, not once per merchant
            continue
        try:
            check_zone(name)
        except ValueError:
            raise SchemaError(source, row, f"timezone {name!r} is not an IANA time zone name "
                                           "(such as 'America/New_York' or 'UTC')") from None
        checked.add(name)
    return MerchantZones.from_names(merchant_id, names, default)
