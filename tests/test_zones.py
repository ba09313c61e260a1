"""Per-merchant time zones (SPEC §3), worked examples.

Every expected value is derived by hand in the comments (offsets from the
IANA database) and checked against both the library and the reference.
"""
import datetime as dt
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

import loyaltymetrics as lm
from loyaltymetrics import periods
from loyaltymetrics.errors import SchemaError
from loyaltymetrics.inputs import order_batches
from loyaltymetrics.scan import scan_orders
from reference import reference_compute

UTC = dt.timezone.utc
ENGINES = ["cython", "numba"]


def _ts(*args):
    """A UTC wall time as a naive datetime (Arrow reads it as UTC)."""
    return dt.datetime(*args)


def _orders(rows, unit="s"):
    """rows: (merchant_id, customer_id, order_ts datetime or date); amount 100 each; sorted here."""
    rows = sorted(rows, key=lambda r: (r[0], r[1], r[2]))
    ts_type = pa.date32() if rows and isinstance(rows[0][2], dt.date) and not isinstance(rows[0][2], dt.datetime) \
        else pa.timestamp(unit)
    return pa.table({
        "merchant_id": pa.array([r[0] for r in rows], pa.int64()),
        "customer_id": pa.array([r[1] for r in rows], pa.int64()),
        "order_ts": pa.array([r[2] for r in rows], ts_type),
        "amount": pa.array([100] * len(rows), pa.int64()),
    })


def _merchants(zones):
    """A merchants table: {merchant_id: timezone or None}."""
    ids = list(zones)
    return pa.table({
        "merchant_id": pa.array(ids, pa.int64()),
        "industry": pa.array(["retail"] * len(ids)),
        "country": pa.array(["XX"] * len(ids)),
        "annual_fee": pa.array([0] * len(ids), pa.int64()),
        "timezone": pa.array([zones[m] for m in ids], pa.string()),
    })


def _rows(orders, merchants=None, by=(), period="month", timezone=None, engine="cython"):
    """(keys..., period_start, orders) of the library's table, after checking the reference agrees."""
    table = lm.compute(orders, merchants, by=list(by), period=period, timezone=timezone, engine=engine)
    expected = reference_compute(orders, merchants, by=list(by), period=period, timezone=timezone)
    keys = [{"merchant": "merchant_id"}.get(b, b) for b in by]
    got = [tuple(r[k] for k in keys) + (r["period_start"], r["orders"]) for r in table.to_pylist()]
    want = [tuple(r[k] for k in keys) + (r["period_start"], r["orders"]) for r in expected]
    assert got == want
    return got


@pytest.mark.parametrize("engine", ENGINES)
def test_fall_back_day_orders_at_0130_twice(engine):
    # New York, 2023-11-05: at 02:00 EDT (-4) clocks go back to 01:00 EST (-5), so 01:30 happens
    # twice: 05:30Z (EDT) and 06:30Z (EST). Both are November 5 locally. 2023-11-01 03:30Z is
    # 2023-10-31 23:30 EDT: October. In UTC all three would be November.
    orders = _orders([(1, 1, _ts(2023, 11, 5, 5, 30)), (1, 1, _ts(2023, 11, 5, 6, 30)),
                      (1, 2, _ts(2023, 11, 1, 3, 30))])
    zoned = _rows(orders, _merchants({1: "America/New_York"}), engine=engine)
    assert zoned == [(dt.date(2023, 10, 1), 1), (dt.date(2023, 11, 1), 2)]
    assert _rows(orders, engine=engine) == [(dt.date(2023, 11, 1), 3)]
    # timezone= applies to merchants the table does not place: the same answer.
    assert _rows(orders, timezone="America/New_York", engine=engine) == zoned


@pytest.mark.parametrize("engine", ENGINES)
def test_30_and_45_minute_zones(engine):
    # Kolkata is +5:30: 2023-12-31 18:29:59Z is 23:59:59 local (2023), 18:30:00Z is 2024-01-01 00:00.
    # Kathmandu is +5:45: 18:14:59Z is 2023, 18:15:00Z is 2024.
    orders = _orders([
        (1, 1, _ts(2023, 12, 31, 18, 29, 59)), (1, 2, _ts(2023, 12, 31, 18, 30, 0)),
        (2, 1, _ts(2023, 12, 31, 18, 14, 59)), (2, 2, _ts(2023, 12, 31, 18, 15, 0)),
    ])
    merchants = _merchants({1: "Asia/Kolkata", 2: "Asia/Kathmandu"})
    assert _rows(orders, merchants, by=["merchant"], period="year", engine=engine) == [
        (1, dt.date(2023, 1, 1), 1), (1, dt.date(2024, 1, 1), 1),
        (2, dt.date(2023, 1, 1), 1), (2, dt.date(2024, 1, 1), 1),
    ]


@pytest.mark.parametrize("engine", ENGINES)
def test_zones_whose_offset_changed(engine):
    # Apia was -10 (DST) until 2011-12-29 24:00 local, then +14: 2011-12-30 never happened there.
    # 2011-12-31 09:59:59Z is 23:59:59 on Dec 31 (+14): 2011; 10:00:00Z is 2012-01-01 00:00.
    # 2011-12-30 09:59:59Z is Dec 29 23:59:59 (-10): 2011 too. In UTC all three are 2011.
    # Caracas went from -4 to -4:30 on 2007-12-09: 2008 began there at 04:30Z (not 04:00Z), so
    # 2008-01-01 04:15Z is still 2007-12-31 23:45 local; 2007 began at 04:00Z (-4): 04:15Z is 2007.
    orders = _orders([
        (1, 1, _ts(2011, 12, 30, 9, 59, 59)), (1, 2, _ts(2011, 12, 31, 9, 59, 59)),
        (1, 3, _ts(2011, 12, 31, 10, 0, 0)),
        (2, 1, _ts(2007, 1, 1, 4, 15)), (2, 2, _ts(2008, 1, 1, 4, 15)), (2, 3, _ts(2008, 1, 1, 4, 30)),
    ])
    merchants = _merchants({1: "Pacific/Apia", 2: "America/Caracas"})
    assert _rows(orders, merchants, by=["merchant"], period="year", engine=engine) == [
        (1, dt.date(2011, 1, 1), 2), (1, dt.date(2012, 1, 1), 1),
        (2, dt.date(2007, 1, 1), 2), (2, dt.date(2008, 1, 1), 1),
    ]


@pytest.mark.parametrize("unit", ["s", "ms", "us"])
def test_zone_boundaries_at_1970_and_2262(unit):
    # 1970-01-01 00:30Z is 1969-12-31 19:30 in New York (-5): its year is 1969. 2262-12-31 23:00Z is
    # 2263-01-01 08:00 in Tokyo (+9): 2263. Both timestamps are valid (1970 .. 2262 UTC).
    orders = _orders([(1, 1, _ts(1970, 1, 1, 0, 30)), (2, 1, _ts(2262, 12, 31, 23, 0))], unit=unit)
    merchants = _merchants({1: "America/New_York", 2: "Asia/Tokyo"})
    assert _rows(orders, merchants, by=["merchant"], period="year") == [
        (1, dt.date(1969, 1, 1), 1), (2, dt.date(2263, 1, 1), 1)]
    assert _rows(orders, merchants, by=["merchant"], period="quarter") == [
        (1, dt.date(1969, 10, 1), 1), (2, dt.date(2263, 1, 1), 1)]


def test_last_nanosecond_in_kiritimati():
    # ns timestamps end at INT64_MAX = 2262-04-11 23:47:16.854775807Z, 2262-04-12 13:47 at +14.
    top = np.iinfo(np.int64).max
    orders = pa.table({"merchant_id": pa.array([1, 2], pa.int64()), "customer_id": pa.array([1, 1], pa.int64()),
                       "order_ts": pa.array([top, top], pa.timestamp("ns")), "amount": pa.array([1, 1], pa.int64())})
    merchants = _merchants({1: "Pacific/Kiritimati", 2: "Pacific/Pago_Pago"})
    # Pago Pago (-11): 2262-04-11 12:47 local, April too.
    assert _rows(orders, merchants, by=["merchant"], period="month") == [
        (1, dt.date(2262, 4, 1), 1), (2, dt.date(2262, 4, 1), 1)]


@pytest.mark.parametrize("engine", ENGINES)
def test_merchants_of_several_zones_in_one_group(engine):
    # Each merchant has one order at 2024-01-01 03:00Z: UTC 2024; New York 2023-12-31 22:00 (2023);
    # Tokyo 2024-01-01 12:00 (2024). The network's 2023 is New York's order, its 2024 the other two.
    orders = _orders([(1, 1, _ts(2024, 1, 1, 3)), (2, 1, _ts(2024, 1, 1, 3)), (3, 1, _ts(2024, 1, 1, 3))])
    merchants = _merchants({1: "UTC", 2: "America/New_York", 3: "Asia/Tokyo"})
    table = lm.compute(orders, merchants, by=["industry"], period="year", engine=engine)
    rows = [(r["industry"], r["period_start"], r["merchants"], r["orders"]) for r in table.to_pylist()]
    assert rows == [("retail", dt.date(2023, 1, 1), 1, 1), ("retail", dt.date(2024, 1, 1), 2, 2)]
    assert _rows(orders, merchants, by=["industry"], period="year", engine=engine) == [
        ("retail", dt.date(2023, 1, 1), 1), ("retail", dt.date(2024, 1, 1), 2)]


def test_table_zone_wins_over_default_and_null_or_empty_is_the_default():
    # Merchant 1: New York from the table; 2: null → Tokyo (the default); 3: "" → Tokyo;
    # 4: not in the table → Tokyo. Orders at 2024-01-01 03:00Z: NY 2023, Tokyo 2024.
    orders = _orders([(m, 1, _ts(2024, 1, 1, 3)) for m in (1, 2, 3, 4)])
    merchants = _merchants({1: "America/New_York", 2: None, 3: ""})
    assert _rows(orders, merchants, by=["merchant"], period="year", timezone="Asia/Tokyo") == [
        (1, dt.date(2023, 1, 1), 1), (2, dt.date(2024, 1, 1), 1), (3, dt.date(2024, 1, 1), 1),
        (4, dt.date(2024, 1, 1), 1)]


def test_all_starts_in_the_earliest_orders_month_in_its_zone():
    # Earliest order: merchant 2 (New York) at 2024-01-01 03:00Z = 2023-12-31 22:00 local, so "all"
    # starts 2023-12-01 although merchant 1 (UTC) has no December order. Latest: merchant 1 at
    # 2024-03-05Z, March. Months Dec..Mar = 4. With the size edge 12: merchant 2 has 39 orders,
    # 39/4 = 9.75 → "<12", merchant 1 1/4 → "<12": one "<12" row of 40 orders. All in UTC, "all"
    # starts 2024-01-01 and spans Jan..Mar = 3 months: 39/3 = 13 → "12+", 1/3 → "<12".
    rows = [(2, c, _ts(2024, 1, 1, 3)) for c in range(39)] + [(1, 1, _ts(2024, 3, 5))]
    orders = _orders(rows)
    merchants = _merchants({1: "UTC", 2: "America/New_York"})
    table = lm.compute(orders, merchants, by=["size"], period="all", size_edges=[12])
    assert [(r["size"], r["period_start"], r["orders"]) for r in table.to_pylist()] == [
        ("<12", dt.date(2023, 12, 1), 40)]
    expected = reference_compute(orders, merchants, by=["size"], period="all", size_edges=[12])
    assert [(r["size"], r["period_start"], r["orders"]) for r in expected] == [("<12", dt.date(2023, 12, 1), 40)]
    utc = lm.compute(orders, None, by=["size"], period="all", size_edges=[12])
    assert sorted((r["size"], r["period_start"], r["orders"]) for r in utc.to_pylist()) == sorted([
        ("<12", dt.date(2024, 1, 1), 1), ("12+", dt.date(2024, 1, 1), 39)])


def test_all_when_the_latest_orders_month_is_before_the_earliest():
    # Kiritimati (+14): 2023-01-31 10:00Z is 2023-02-01 00:00, February. Pago Pago (-11): 11:00Z is
    # 2023-01-31 00:00, January. Earliest (10:00Z) is February, latest (11:00Z) January: "all"
    # starts 2023-02-01 and spans one month (never zero): 2 orders a month → "<30".
    orders = _orders([(1, 1, _ts(2023, 1, 31, 10)), (2, 1, _ts(2023, 1, 31, 11))])
    merchants = _merchants({1: "Pacific/Kiritimati", 2: "Pacific/Pago_Pago"})
    assert _rows(orders, merchants, by=["size"], period="all") == [("<30", dt.date(2023, 2, 1), 2)]


def test_ties_at_one_instant_go_to_the_smaller_merchant_first():
    # Both orders at 2023-01-31 10:00Z: merchant 1 Kiritimati (Feb 1 local), merchant 2 Pago Pago
    # (Jan 30 23:00 local). Earliest = the smaller merchant_id = 1: "all" starts in February; the
    # latest = merchant 2 (January), before it: one month.
    orders = _orders([(1, 1, _ts(2023, 1, 31, 10)), (2, 1, _ts(2023, 1, 31, 10))])
    merchants = _merchants({1: "Pacific/Kiritimati", 2: "Pacific/Pago_Pago"})
    assert _rows(orders, merchants, period="all") == [(dt.date(2023, 2, 1), 2)]
    swapped = _merchants({2: "Pacific/Kiritimati", 1: "Pacific/Pago_Pago"})
    assert _rows(orders, swapped, period="all") == [(dt.date(2023, 1, 1), 2)]


def test_dates_are_the_same_date_in_every_zone():
    # A date32 (or date64) order_ts has no time of day: 2024-01-01 is 2024 in New York too.
    orders = _orders([(1, 1, dt.date(2024, 1, 1)), (1, 2, dt.date(2023, 12, 31))])
    merchants = _merchants({1: "America/New_York"})
    assert _rows(orders, merchants, period="year") == [(dt.date(2023, 1, 1), 1), (dt.date(2024, 1, 1), 1)]
    date64 = orders.set_column(2, "order_ts", orders.column("order_ts").cast(pa.date64()))
    assert _rows(date64, merchants, period="year") == [(dt.date(2023, 1, 1), 1), (dt.date(2024, 1, 1), 1)]


def test_day_range_is_utc_and_skips_refunds():
    # Orders 2023-12-31 23:00Z (UTC day 19722) and 2024-01-02 01:00Z (day 19724); a refund on
    # 2024-02-01 is no order. In New York the first is December 31 and the last January 1, but
    # day_range is UTC: (19722, 19724). month_range is local: Dec 2023 = (2023-1969)*12+11 = 659,
    # Jan 2024 = 660.
    t = pa.table({
        "merchant_id": pa.array([1, 1, 1], pa.int64()), "customer_id": pa.array([1, 1, 1], pa.int64()),
        "order_ts": pa.array([_ts(2023, 12, 31, 23), _ts(2024, 1, 2, 1), _ts(2024, 2, 1)], pa.timestamp("s")),
        "amount": pa.array([5, 5, -3], pa.int64())})
    assert (dt.date(2023, 12, 31) - dt.date(1970, 1, 1)).days == 19722
    zones = periods.MerchantZones.default("America/New_York")
    for engine in ENGINES:
        for threads in (1, 2):
            p = scan_orders(order_batches(t), "year", refunds=True, engine=engine, threads=threads,
                            chunk_rows=1, zones=zones)
            assert p.day_range == (19722, 19724)
            assert p.month_range == (659, 660)


def test_unknown_zone_in_merchants_table_names_row_and_value(tmp_path):
    merchants = _merchants({1: "UTC", 2: "Europe/Atlantis"})
    with pytest.raises(SchemaError, match="row 1.*Europe/Atlantis"):
        lm.compute(_orders([(1, 1, _ts(2024, 1, 1))]), merchants)
    path = tmp_path / "merchants.csv"
    path.write_text("merchant_id,industry,country,annual_fee,timezone\n1,a,b,0,UTC\n2,a,b,0,Mars/Base\n")
    with pytest.raises(SchemaError) as e:
        lm.compute(_orders([(1, 1, _ts(2024, 1, 1))]), str(path))
    assert e.value.source == str(path) and e.value.row == 1 and "Mars/Base" in str(e.value)
    with pytest.raises(ValueError, match="Nowhere/City"):
        lm.compute(_orders([(1, 1, _ts(2024, 1, 1))]), timezone="Nowhere/City")


def test_cli_timezone(tmp_path):
    import pyarrow.parquet as pq

    orders = _orders([(1, 1, _ts(2024, 1, 1, 3))])
    path = tmp_path / "orders.parquet"
    pq.write_table(orders, path)
    out = tmp_path / "out.csv"
    run = [sys.executable, "-m", "loyaltymetrics", "compute", str(path), "-o", str(out), "-q"]
    # 2024-01-01 03:00Z is 2023-12-31 22:00 in New York.
    subprocess.run(run + ["--timezone", "America/New_York"], check=True, capture_output=True)
    assert out.read_text().splitlines()[1].startswith("2023-01-01,")
    bad = subprocess.run(run + ["--timezone", "Mars/Base"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Mars/Base" in bad.stderr


@pytest.mark.parametrize("engine", ENGINES)
def test_kernel_switches_tables_and_checks_zone_arrays(engine):
    from loyaltymetrics.scan import scan_module

    module = scan_module(engine)
    upd = 86_400
    zones = periods.MerchantZones.from_names([5], ["Asia/Tokyo"])
    tables = periods.period_tables("year", upd, zones)
    # Merchant 4 (UTC) and 5 (Tokyo), each one order at 1970-01-01 00:00Z: 1970 in both
    # (09:00 in Tokyo); merchant 5's second order at 1970-12-31 16:00Z is 1971-01-01 01:00 in Tokyo.
    merchant = np.array([4, 5, 5], np.int64)
    columns = (merchant, np.array([1, 1, 1], np.int64), np.array([0, 0, 364 * upd + 16 * 3600], np.int64),
               np.array([1, 1, 1], np.int64), np.zeros(1, np.uint8), 0)
    shape = (tables, periods.bucket_shift(upd), periods.ts_max(upd))
    for bad in [(np.array([5], np.int64), np.array([2], np.int32)),          # no table 2
                (np.array([7, 5], np.int64), np.array([1, 1], np.int32)),    # not sorted
                (np.array([5], np.int64), np.array([1, 1], np.int32)),       # lengths differ
                (np.array([5], np.int32), np.array([1], np.int32))]:         # not int64
        with pytest.raises(ValueError):
            module.scan(module.ScanState(periods.n_periods("year")), *columns, *shape, *bad)
    state = module.ScanState(periods.n_periods("year"))
    status, row = module.scan(state, *columns, *shape, zones.merchant_id, zones.zone)
    assert (status, row) == (module.Status.OK, 3)
    merchant_id, period, counts = state.finish()
    # Year index = years since 1969: 1970 → 1, 1971 → 2.
    assert list(zip(merchant_id.tolist(), period.tolist())) == [(4, 1), (5, 1), (5, 2)]
    assert state.order_range == ((0, 4), (364 * upd + 16 * 3600, 5))
