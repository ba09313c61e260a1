"""periods.py: local month starts and the kernel's lookup tables against zoneinfo, brute force.

The expected values here come from ``datetime``/``zoneinfo`` directly (an
instant's local date), never from the table builder's own code path.
"""
import datetime as dt
import random
import zoneinfo

import numpy as np
import pytest

from loyaltymetrics import periods
from loyaltymetrics.errors import SchemaError

ZONES = [
    "UTC", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Lord_Howe",
    "America/Caracas", "Pacific/Apia", "Pacific/Kiritimati", "Pacific/Pago_Pago", "Asia/Tokyo",
]
UNITS = periods.UNITS_PER_DAY  # s, ms, us, ns
UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)


def local_date(seconds, zone):
    """The calendar date of a UTC instant (whole seconds since 1970) on the wall clocks of ``zone``."""
    return (EPOCH + dt.timedelta(seconds=seconds)).astimezone(zoneinfo.ZoneInfo(zone)).date()


def month_number(date):
    """Months since 1969-01 (the period index base)."""
    return (date.year - 1969) * 12 + date.month - 1


def expected_period(seconds_floor, zone, period, units_per_day):
    """Period index of a raw timestamp whose instant falls in second ``seconds_floor``, straight from zoneinfo."""
    if units_per_day == 1:  # date32: the date itself, in every zone
        date = dt.date(1970, 1, 1) + dt.timedelta(days=seconds_floor)
    else:
        date = local_date(seconds_floor, zone)
    m = month_number(date)
    return 0 if period == "all" else m // periods.MONTHS_PER_PERIOD[period]


def table_period(table, shift, ts):
    row = table[ts >> shift]
    return int(row[0] + (ts > row[1]))


def test_index_base_and_edges():
    assert periods.N_MONTHS == (2264 - 1969) * 12
    assert periods.n_periods("year") == 2263 - 1969 + 1
    # 1970-01-01T00:30Z is 1969-12-31 in New York; 2262-12-31T23:00Z is 2263-01-01 in Tokyo.
    ny = periods.local_month_of(30 * 60, 86_400, "America/New_York")
    assert ny == 11  # 1969-12
    late = int(dt.datetime(2262, 12, 31, 23, tzinfo=UTC).timestamp())
    assert periods.local_month_of(late, 86_400, "Asia/Tokyo") == (2263 - 1969) * 12
    assert periods.local_month_of(late, 86_400, "UTC") == (2263 - 1969) * 12 - 1
    assert str(periods.period_start("year", [0, 1])[1]) == "1970-01-01"
    assert str(periods.period_start("quarter", [5])[0]) == "1970-04-01"
    assert str(periods.period_start("all", [0], 11)[0]) == "1969-12-01"
    assert str(periods.period_start("month", [periods.N_MONTHS - 1])[0]) == "2263-12-01"


@pytest.mark.parametrize("zone", ZONES)
def test_every_local_month_start_against_zoneinfo(zone):
    """Each start is the first second whose local date is in the month (brute force at start-1, start)."""
    starts = periods.local_month_starts(zone, 86_400)
    top = periods.ts_max(86_400)
    for m in range(periods.N_MONTHS + 1):
        first = dt.date(1969 + m // 12, m % 12 + 1, 1)
        s = int(starts[m])
        if s > top:  # clamped: the month starts after the last valid timestamp
            assert s == top + 1
            assert local_date(top, zone) < first
            continue
        assert local_date(s - 1, zone) < first <= local_date(s, zone), (zone, first, s)


@pytest.mark.parametrize("zone", ZONES)
def test_sample_month_starts_are_local_midnight(zone):
    """Where local midnight exists once, the start is ``datetime(y, m, 1, tzinfo=zone).timestamp()``."""
    starts = periods.local_month_starts(zone, 86_400)
    rng = random.Random(zone)
    for m in [0, 11, 12, 13, 600, 1000, 3527, 3528] + rng.sample(range(periods.N_MONTHS), 40):
        want = int(dt.datetime(1969 + m // 12, m % 12 + 1, 1, tzinfo=zoneinfo.ZoneInfo(zone)).timestamp())
        assert min(want, periods.ts_max(86_400) + 1) == starts[m]


@pytest.mark.parametrize("unit", list(UNITS))
@pytest.mark.parametrize("zone", ZONES)
def test_month_starts_in_every_unit(zone, unit):
    upd = UNITS[unit]
    seconds = periods.local_month_starts(zone, 86_400)
    starts = periods.local_month_starts(zone, upd)
    cap = min(periods.ts_max(upd) + 1, periods.INT64_MAX)
    want = [min(int(s) * (upd // 86_400), cap) for s in seconds]
    assert starts.tolist() == want


def _sample_timestamps(zone, upd, rng, n=400):
    """Random valid raw timestamps plus ones on and next to every local month boundary and the range edges."""
    top = periods.ts_max(upd)
    out = {0, 1, top, top - 1, upd - 1, upd, top - upd + 1}
    out.update(rng.randrange(0, top + 1) for _ in range(n))
    for s in periods.local_month_starts(zone, upd).tolist():
        for d in (-1, 0, 1):
            if 0 <= s + d <= top:
                out.add(s + d)
    return sorted(out)


@pytest.mark.parametrize("period", periods.PERIODS)
@pytest.mark.parametrize("unit", list(UNITS) + ["D"])
@pytest.mark.parametrize("zone", ZONES)
def test_period_table_against_brute_force(zone, unit, period):
    upd = 1 if unit == "D" else UNITS[unit]
    table = periods.period_table(period, upd, zone)
    shift = periods.bucket_shift(upd)
    rng = random.Random(f"{zone}{unit}{period}")
    for ts in _sample_timestamps(zone, upd, rng):
        seconds = ts if upd == 1 else ts // (upd // 86_400)  # floor: whole seconds carry every boundary
        want = expected_period(seconds, zone, period, upd)
        assert table_period(table, shift, ts) == want, (zone, unit, period, ts)
    periods.check_period_table(table, periods.ts_max(upd), periods.n_periods(period))


def test_date32_tables_are_utc_in_every_zone():
    for zone in ZONES:
        assert np.array_equal(periods.period_table("month", 1, zone), periods.period_table("month", 1, "UTC"))
        assert np.array_equal(periods.local_month_starts(zone, 1), periods.local_month_starts("UTC", 1))


def test_period_tables_stack_one_table_per_zone():
    zones = periods.MerchantZones.from_names([7, 3, 5, 9], ["Asia/Kolkata", None, "", "America/New_York"],
                                             "Pacific/Apia")
    assert zones.zones == ("Pacific/Apia", "Asia/Kolkata", "America/New_York")
    assert zones.merchant_id.tolist() == [7, 9]
    assert [zones.zone_name(m) for m in (3, 5, 7, 9, 100)] == [
        "Pacific/Apia", "Pacific/Apia", "Asia/Kolkata", "America/New_York", "Pacific/Apia"]
    stacked = periods.period_tables("quarter", 86_400_000, zones)
    assert stacked.shape[0] == 3
    for z, name in enumerate(zones.zones):
        assert np.array_equal(stacked[z], periods.period_table("quarter", 86_400_000, name))
    utc = periods.MerchantZones.utc()
    assert utc.zones == ("UTC",) and len(utc.merchant_id) == 0 and utc.zone_of(42) == 0


def test_check_zone():
    assert periods.check_zone("UTC") == "UTC"
    assert periods.check_zone("Asia/Kathmandu") == "Asia/Kathmandu"
    for bad in ["Mars/Olympus", "", "localtime", "/etc/localtime", "../UTC", None, 5]:
        with pytest.raises(ValueError, match="time zone"):
            periods.check_zone(bad)


def test_merchant_zones_names_file_row_value():
    with pytest.raises(SchemaError) as e:
        periods.merchant_zones([1, 2, 3], ["UTC", None, "Europe/Atlantis"], source="m.parquet")
    assert e.value.source == "m.parquet" and e.value.row == 2 and "Europe/Atlantis" in str(e.value)


def test_fall_back_day_in_new_york():
    """2023-11-05: clocks go back at 02:00 EDT to 01:00 EST; both 01:30s are still November 5."""
    first = int(dt.datetime(2023, 11, 5, 5, 30, tzinfo=UTC).timestamp())   # 01:30 EDT
    second = int(dt.datetime(2023, 11, 5, 6, 30, tzinfo=UTC).timestamp())  # 01:30 EST
    table = periods.period_table("month", 86_400, "America/New_York")
    shift = periods.bucket_shift(86_400)
    nov_2023 = (2023 - 1969) * 12 + 10
    assert table_period(table, shift, first) == table_period(table, shift, second) == nov_2023
    # 2023-12-01 00:00 EST is 05:00 UTC: 04:59:59 UTC is still November.
    dec = int(dt.datetime(2023, 12, 1, 5, tzinfo=UTC).timestamp())
    assert table_period(table, shift, dec - 1) == nov_2023
    assert table_period(table, shift, dec) == nov_2023 + 1
