"""Hand-worked examples that test the reference implementation itself.

Every expected number is derived in the comments from the SPEC definitions
(§3–§7) and the team's decisions, not from running the reference.
"""

from __future__ import annotations

import datetime as dt
import math

import pyarrow as pa
import pytest


from reference import (  # noqa: E402
    BASE_COLUMNS,
    DERIVED_COLUMNS,
    YOY_COLUMNS,
    assert_tables_match,
    format_edge,
    reference_columns,
    reference_compute,
    size_labels,
)

UTC_EPOCH = dt.datetime(1970, 1, 1)


def _to_unit(ts, unit):
    """A naive UTC datetime (or a date) as an integer in ``unit``."""
    if isinstance(ts, int):
        return ts
    if not isinstance(ts, dt.datetime):
        ts = dt.datetime(ts.year, ts.month, ts.day)
    us = (ts - UTC_EPOCH) // dt.timedelta(microseconds=1)
    if unit == "s":
        return us // 10**6
    if unit == "ms":
        return us // 10**3
    if unit == "us":
        return us
    if unit == "ns":
        return us * 10**3
    if unit == "date32":
        return us // (86400 * 10**6)
    raise ValueError(unit)


def make_orders(rows, unit="us", tz=None, id_type=pa.int64(), reward="column"):
    """rows: (merchant_id, customer_id, ts, amount[, reward]) in file order.

    ts is a naive UTC datetime/date, or a raw integer in ``unit``.
    """
    cols = {
        "merchant_id": pa.array([r[0] for r in rows], id_type),
        "customer_id": pa.array([r[1] for r in rows], id_type),
    }
    values = [_to_unit(r[2], unit) for r in rows]
    typ = pa.date32() if unit == "date32" else pa.timestamp(unit, tz=tz)
    cols["order_ts"] = pa.array(values, typ)
    cols["amount"] = pa.array([r[3] for r in rows], pa.int64())
    if reward == "column":
        cols["reward"] = pa.array([r[4] if len(r) > 4 else None for r in rows], pa.bool_())
    return pa.table(cols)


def make_merchants(rows):
    """rows: (merchant_id, industry, country, annual_fee)."""
    return pa.table(
        {
            "merchant_id": pa.array([r[0] for r in rows], pa.int64()),
            "industry": pa.array([r[1] for r in rows], pa.string()),
            "country": pa.array([r[2] for r in rows], pa.string()),
            "annual_fee": pa.array([r[3] for r in rows], pa.int64()),
        }
    )


def close(a, b):
    return a is not None and math.isclose(a, b, rel_tol=1e-12, abs_tol=0)


def rows_by_period(result):
    return {r["period_start"]: r for r in result}


D = dt.date
T = dt.datetime


# ---------------------------------------------------------------------------
# Column layout


def test_column_order_and_types_of_values():
    t = make_orders([(1, 1, T(2022, 5, 1), 100)])
    [row] = reference_compute(t, by=["size", "merchant", "country", "industry"])
    assert list(row) == (["size", "merchant_id", "country", "industry", "period_start", "period_complete"]
                         + BASE_COLUMNS + DERIVED_COLUMNS + YOY_COLUMNS)
    assert list(row) == reference_columns(["size", "merchant", "country", "industry"])
    assert YOY_COLUMNS[0] == "merchants_yoy" and YOY_COLUMNS[-1] == "member_frequency_lift_yoy"
    assert len(YOY_COLUMNS) == 17 + 14
    assert row["period_start"] == D(2022, 1, 1) and type(row["period_start"]) is dt.date
    # Default window [2022-05-01, 2022-05-02): 2022 begins before it -> incomplete.
    assert row["period_complete"] is False
    for name in BASE_COLUMNS:
        if name != "fees":
            assert type(row[name]) is int, name
    assert type(row["fees"]) is float and type(row["aov"]) is float
    # 1 order a year = 1/12 a month -> "<30"; no merchants table -> unknown.
    assert (row["size"], row["merchant_id"], row["country"], row["industry"]) == ("<30", 1, "unknown", "unknown")


def test_empty_input_gives_no_rows():
    t = make_orders([])
    for period in ("year", "quarter", "month", "all"):
        assert reference_compute(t, period=period, by=["merchant", "size"]) == []


# ---------------------------------------------------------------------------
# Retention and YoY over years


def test_gap_year_is_not_retained():
    # Merchant 1.
    #   c10: 2021-03-01 100, 2023-05-01 200           (active 2021, 2023)
    #   c11: 2022-06-01 50, 2023-01-01 70, 2023-02-01 30  (active 2022, 2023)
    t = make_orders(
        [
            (1, 10, T(2021, 3, 1), 100),
            (1, 10, T(2023, 5, 1), 200),
            (1, 11, T(2022, 6, 1), 50),
            (1, 11, T(2023, 1, 1), 70),
            (1, 11, T(2023, 2, 1), 30),
        ]
    )
    # The orders only sample the years: observed from 2021-01-01 up to 2024-01-01 (SPEC §3),
    # so every year is complete and YoY compares them.
    result = reference_compute(t, observation_start=D(2021, 1, 1), observation_end=D(2024, 1, 1))
    assert [r["period_start"] for r in result] == [D(2021, 1, 1), D(2022, 1, 1), D(2023, 1, 1)]
    assert [r["period_complete"] for r in result] == [True, True, True]
    y21, y22, y23 = result

    # 2021: c10 rank 1. No 2020 row -> retention null; fees 0 -> roi null.
    assert (y21["merchants"], y21["orders"], y21["revenue"], y21["customers"]) == (1, 1, 100, 1)
    assert (y21["new_customers"], y21["returning_customers"], y21["repeat_orders"]) == (1, 0, 0)
    assert y21["retained_customers"] == 0
    assert y21["fees"] == 0.0 and y21["loyalty_roi"] is None
    assert y21["retention_rate"] is None and y21["strict_retention_rate"] is None
    assert y21["aov"] == 100.0 and y21["purchase_frequency"] == 1.0 and y21["clv"] == 100.0
    assert y21["repeat_customer_rate"] == 0.0 and y21["repeat_order_share"] == 0.0
    # No reward orders: reward_* ratios and lifts have a 0 denominator.
    for name in ("reward_aov", "reward_purchase_frequency", "reward_clv",
                 "member_repeat_lift", "member_aov_lift", "member_frequency_lift"):
        assert y21[name] is None, name
    assert all(y21[c] is None for c in YOY_COLUMNS)

    # 2022: only c11 (rank 1), new. customers_prev = 1 (2021).
    # retention = (1 - 1) / 1 * 100 = 0; strict = 0 / 1 * 100 = 0 (c11 had
    # no 2021 order).
    assert (y22["orders"], y22["revenue"], y22["customers"], y22["new_customers"]) == (1, 50, 1, 1)
    assert y22["retained_customers"] == 0
    assert y22["retention_rate"] == 0.0 and y22["strict_retention_rate"] == 0.0
    # YoY vs 2021: revenue (50-100)/100*100 = -50; orders (1-1)/1*100 = 0;
    # returning_customers prev is 0 -> null; aov (50-100)/100*100 = -50.
    assert y22["revenue_yoy"] == -50.0 and y22["orders_yoy"] == 0.0
    assert y22["returning_customers_yoy"] is None
    assert y22["aov_yoy"] == -50.0
    # retention_rate prev (2021) is null -> null.
    assert y22["retention_rate_yoy"] is None

    # 2023: c10 (rank 2) + c11 (ranks 2, 3) -> 3 orders, revenue 300,
    # customers 2, new 0, returning 2, repeat_orders 3, repeat_customers 1
    # (c11 has 2 orders in 2023), orders_from_repeat_customers 2.
    # retained: c11 (2022 and 2023) yes; c10 (2021 and 2023) NO -> 1.
    assert (y23["orders"], y23["revenue"], y23["customers"]) == (3, 300, 2)
    assert (y23["new_customers"], y23["returning_customers"], y23["repeat_orders"]) == (0, 2, 3)
    assert (y23["repeat_customers"], y23["orders_from_repeat_customers"]) == (1, 2)
    assert y23["retained_customers"] == 1
    # customers_prev = customers 2022 = 1: retention (2-0)/1*100 = 200,
    # strict 1/1*100 = 100.
    assert y23["retention_rate"] == 200.0 and y23["strict_retention_rate"] == 100.0
    assert y23["aov"] == 100.0 and y23["purchase_frequency"] == 1.5 and y23["clv"] == 150.0
    assert y23["repeat_customer_rate"] == 0.5 and close(y23["repeat_order_share"], 2 / 3)
    # YoY vs 2022: orders (3-1)/1*100 = 200, revenue (300-50)/50*100 = 500,
    # customers 100, new (0-1)/1*100 = -100, repeat_orders prev 0 -> null,
    # retained prev 0 -> null, aov (100-50)/50*100 = 100,
    # retention_rate prev 0.0 -> null, purchase_frequency (1.5-1)/1*100 = 50.
    assert y23["orders_yoy"] == 200.0 and y23["revenue_yoy"] == 500.0
    assert y23["customers_yoy"] == 100.0 and y23["new_customers_yoy"] == -100.0
    assert y23["repeat_orders_yoy"] is None and y23["retained_customers_yoy"] is None
    assert y23["aov_yoy"] == 100.0 and y23["purchase_frequency_yoy"] == 50.0
    assert y23["retention_rate_yoy"] is None and y23["strict_retention_rate_yoy"] is None
    assert y23["merchants_yoy"] == 0.0
    # fees are 0 both years -> fees_yoy null.
    assert y23["fees_yoy"] is None

    # Default window [2021-03-01, 2023-05-02): 2021 begins before it, 2023 ends after it; 2022
    # is complete but its year-earlier 2021 is not -> every YoY null (SPEC §3).
    default = reference_compute(t)
    assert [r["period_complete"] for r in default] == [False, True, False]
    assert all(r[c] is None for r in default for c in YOY_COLUMNS)
    # The counts and the other metrics do not depend on the window.
    for r, full in zip(default, result):
        assert {k: v for k, v in r.items() if k != "period_complete" and not k.endswith("_yoy")} == \
            {k: v for k, v in full.items() if k != "period_complete" and not k.endswith("_yoy")}


def test_same_person_at_two_merchants_is_two_store_customers():
    # Customer 7 at merchants 1 and 2, one order each in 2022: customers 2,
    # new 2, merchants 2, repeat_customers 0 (one order per store-customer).
    t = make_orders([(1, 7, T(2022, 1, 5), 10), (2, 7, T(2022, 1, 6), 20)])
    [row] = reference_compute(t)
    assert (row["merchants"], row["customers"], row["new_customers"], row["repeat_customers"]) == (2, 2, 2, 0)
    # by merchant: one row each, sorted by merchant_id.
    rows = reference_compute(t, by=["merchant"])
    assert [(r["merchant_id"], r["customers"], r["revenue"]) for r in rows] == [(1, 1, 10), (2, 1, 20)]


# ---------------------------------------------------------------------------
# Period boundaries, units and time zones


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
@pytest.mark.parametrize("tz", [None, "UTC", "America/New_York", "Europe/Berlin"])
def test_new_year_boundary(unit, tz):
    # jan1 - 1 is the last instant of 2021 in the unit (Dec 31 23:59:59,
    # .999, .999999 or .999999999) vs 2022-01-01 00:00 UTC.
    jan1 = _to_unit(T(2022, 1, 1), unit)
    t = make_orders([(1, 1, jan1 - 1, 5), (1, 1, jan1, 7)], unit=unit, tz=tz)
    # year: 2021 has the rank-1 order, 2022 the rank-2 order; the customer is
    # retained in 2022 (orders in 2021 and 2022).
    y21, y22 = reference_compute(t, period="year")
    assert (y21["period_start"], y21["orders"], y21["revenue"], y21["new_customers"]) == (D(2021, 1, 1), 1, 5, 1)
    assert (y22["period_start"], y22["orders"], y22["revenue"], y22["new_customers"]) == (D(2022, 1, 1), 1, 7, 0)
    assert y22["retained_customers"] == 1 and y22["repeat_orders"] == 1
    # customers_prev = 1: retention (1-0)/1*100 = 100, strict 1/1*100 = 100.
    assert y22["retention_rate"] == 100.0 and y22["strict_retention_rate"] == 100.0
    # quarter: 2021-10-01 and 2022-01-01 are consecutive quarters.
    q4, q1 = reference_compute(t, period="quarter")
    assert (q4["period_start"], q1["period_start"]) == (D(2021, 10, 1), D(2022, 1, 1))
    assert q1["retained_customers"] == 1 and q1["retention_rate"] == 100.0
    # month: 2021-12-01 then 2022-01-01.
    dec, jan = reference_compute(t, period="month")
    assert (dec["period_start"], jan["period_start"]) == (D(2021, 12, 1), D(2022, 1, 1))
    assert jan["retained_customers"] == 1
    # all: one row starting 2021-12-01; months = Dec 2021..Jan 2022 = 2.
    [a] = reference_compute(t, period="all")
    assert a["period_start"] == D(2021, 12, 1) and a["orders"] == 2 and a["new_customers"] == 1


def test_dec31_235959_999999_is_previous_year():
    t = make_orders(
        [(1, 1, T(2021, 12, 31, 23, 59, 59, 999999), 1), (1, 2, T(2022, 1, 1, 0, 0, 0), 2)], unit="us"
    )
    y21, y22 = reference_compute(t)
    assert (y21["period_start"], y21["revenue"]) == (D(2021, 1, 1), 1)
    assert (y22["period_start"], y22["revenue"]) == (D(2022, 1, 1), 2)
    # Different customers: nobody retained; customers_prev 1 -> retention
    # (1 - 1)/1*100 = 0.
    assert y22["retained_customers"] == 0 and y22["retention_rate"] == 0.0


def test_timezone_is_only_display_utc_decides():
    # 2022-01-01 00:30 in Berlin is 2021-12-31 23:30 UTC -> year 2021.
    # 2021-12-31 20:00 in New York is 2022-01-01 01:00 UTC -> year 2022.
    berlin = make_orders([(1, 1, T(2021, 12, 31, 23, 30), 3)], unit="ms", tz="Europe/Berlin")
    assert [r["period_start"] for r in reference_compute(berlin)] == [D(2021, 1, 1)]
    ny = make_orders([(1, 1, T(2022, 1, 1, 1, 0), 3)], unit="s", tz="America/New_York")
    assert [r["period_start"] for r in reference_compute(ny)] == [D(2022, 1, 1)]


def test_date32_and_int32_ids_and_extreme_dates():
    # date32: the int is days. 1970-01-01 and 2262-04-10 are valid.
    t = make_orders(
        [(2147483647, 2147483647, D(1970, 1, 1), 0), (2147483647, 2147483647, D(2262, 4, 10), 9)],
        unit="date32",
        id_type=pa.int32(),
    )
    rows = reference_compute(t, by=["merchant"], period="month")
    assert [(r["merchant_id"], r["period_start"], r["orders"]) for r in rows] == [
        (2147483647, D(1970, 1, 1), 1),
        (2147483647, D(2262, 4, 1), 1),
    ]
    # 1970 row: revenue 0 -> aov 0.0; 2262 row: not retained (previous month
    # is March 2262), new 0, no row a year earlier -> yoy null.
    assert rows[0]["aov"] == 0.0
    assert rows[1]["retained_customers"] == 0 and rows[1]["new_customers"] == 0
    assert rows[1]["retention_rate"] is None and rows[1]["orders_yoy"] is None
    # all: one row from 1970-01-01; Jan 1970 .. Apr 2262 = 3508 months, so 2
    # orders are far below 30 a month.
    [a] = reference_compute(t, period="all", by=["size"])
    assert (a["period_start"], a["size"], a["orders"]) == (D(1970, 1, 1), "<30", 2)


def test_ties_in_order_ts_keep_file_order():
    # c1 has three orders at the same instant; the first row is rank 1.
    # Orders 2 and 3 (ranks 2, 3) are repeat orders; the reward is on the
    # second row. c2 orders at the same instant too.
    same = T(2022, 7, 1, 12)
    t = make_orders(
        [(1, 1, same, 10, False), (1, 1, same, 20, True), (1, 1, same, 30, None), (1, 2, same, 40, None)]
    )
    [row] = reference_compute(t, period="quarter")
    assert row["period_start"] == D(2022, 7, 1)
    assert (row["orders"], row["customers"], row["new_customers"], row["repeat_orders"]) == (4, 2, 2, 2)
    assert (row["repeat_customers"], row["orders_from_repeat_customers"]) == (1, 3)
    assert (row["reward_orders"], row["reward_revenue"], row["reward_customers"]) == (1, 20, 1)
    # member = c1: 3 orders, revenue 60, repeat.
    assert (row["member_orders"], row["member_revenue"], row["member_repeat_customers"]) == (3, 60, 1)


# ---------------------------------------------------------------------------
# Member lifts, fees, loyalty ROI


def _lift_orders():
    # Merchant 5, year 2022:
    #   c1: 100 (reward), 200, 300 -> member, 3 orders, revenue 600, repeat
    #   c2: 50 (reward)            -> member, 1 order
    #   c3: 100, 100               -> non-member, repeat
    #   c4: 40 (reward null)       -> non-member
    #   c5: 60                     -> non-member
    return make_orders(
        [
            (5, 1, T(2022, 2, 1), 100, True),
            (5, 1, T(2022, 3, 1), 200, False),
            (5, 1, T(2022, 4, 1), 300, None),
            (5, 2, T(2022, 5, 1), 50, True),
            (5, 3, T(2022, 5, 2), 100, False),
            (5, 3, T(2022, 5, 3), 100, False),
            (5, 4, T(2022, 6, 1), 40, None),
            (5, 5, T(2022, 6, 2), 60, False),
        ]
    )


def test_member_lifts_fees_and_roi():
    merchants = make_merchants([(5, "retail", "DE", 1200)])
    [r] = reference_compute(_lift_orders(), merchants, by=["industry"])
    assert r["industry"] == "retail"
    # orders 8, revenue 600+50+200+40+60 = 950, customers 5, all new.
    assert (r["orders"], r["revenue"], r["customers"], r["new_customers"]) == (8, 950, 5, 5)
    # repeat: c1, c3 -> 2 customers, 3+2 = 5 orders; repeat_orders 8-5 = 3.
    assert (r["repeat_customers"], r["orders_from_repeat_customers"], r["repeat_orders"]) == (2, 5, 3)
    # reward: 2 orders (100, 50) -> 150, by c1 and c2.
    assert (r["reward_orders"], r["reward_revenue"], r["reward_customers"]) == (2, 150, 2)
    # members c1, c2: 4 orders, 650, one repeat member (c1).
    assert (r["member_orders"], r["member_revenue"], r["member_repeat_customers"]) == (4, 650, 1)
    # fees: 1200 * 12 / 12 = 1200; roi (150 - 1200)/1200*100 = -87.5.
    assert r["fees"] == 1200.0 and r["loyalty_roi"] == -87.5
    assert r["aov"] == 118.75 and r["reward_aov"] == 75.0
    assert r["purchase_frequency"] == 1.6 and r["reward_purchase_frequency"] == 1.0
    assert r["clv"] == 190.0 and r["reward_clv"] == 75.0
    assert r["repeat_customer_rate"] == 0.4 and r["repeat_order_share"] == 0.625
    # repeat lift: (1/2) / ((2-1)/(5-2)) = 0.5 / (1/3) = 1.5
    assert close(r["member_repeat_lift"], 1.5)
    # aov lift: (650/4) / ((950-650)/(8-4)) = 162.5 / 75 = 2.1666…
    assert close(r["member_aov_lift"], 162.5 / 75)
    # frequency lift: (4/2) / ((8-4)/(5-2)) = 2 / (4/3) = 1.5
    assert close(r["member_frequency_lift"], 1.5)


def test_fees_by_period_length_and_all():
    merchants = make_merchants([(5, "retail", "DE", 1200)])
    # quarter 2022-01 (c1's Feb/Mar orders): fees 1200*3/12 = 300,
    # reward_revenue 100 -> roi (100-300)/300*100 = -66.66…
    q = rows_by_period(reference_compute(_lift_orders(), merchants, period="quarter"))
    assert q[D(2022, 1, 1)]["fees"] == 300.0
    assert close(q[D(2022, 1, 1)]["loyalty_roi"], (100 - 300) / 300 * 100)
    # month 2022-05: c2 (reward 50), c3 x2 -> fees 1200*1/12 = 100, roi
    # (50-100)/100*100 = -50. member_repeat_lift: members c2 (1 order) -> 0
    # member repeaters; non-members: c3 repeat of 2 -> (0/1)/((1-0)/(2-1)) = 0.
    m = rows_by_period(reference_compute(_lift_orders(), merchants, period="month"))
    may = m[D(2022, 5, 1)]
    assert may["fees"] == 100.0 and may["loyalty_roi"] == -50.0
    assert may["member_repeat_lift"] == 0.0
    # frequency lift: (1/1) / ((3-1)/(2-1)) = 0.5; aov lift: (50/1)/((250-50)/2) = 0.5
    assert may["member_frequency_lift"] == 0.5 and may["member_aov_lift"] == 0.5
    # month 2022-06: c4 reward null, c5 False -> no members -> lifts null.
    jun = m[D(2022, 6, 1)]
    assert jun["reward_customers"] == 0 and jun["member_repeat_lift"] is None
    assert jun["member_aov_lift"] is None and jun["member_frequency_lift"] is None
    # month 2022-02: c1 only, a member -> customers - reward_customers = 0 -> null.
    feb = m[D(2022, 2, 1)]
    assert feb["member_frequency_lift"] is None and feb["member_repeat_lift"] is None
    # all: fees and roi null, retention null, retained 0.
    [a] = reference_compute(_lift_orders(), merchants, period="all")
    assert a["fees"] is None and a["loyalty_roi"] is None and a["retained_customers"] == 0
    assert a["period_start"] == D(2022, 2, 1)


def test_lift_null_when_denominator_ratio_is_zero():
    # 2022: c1 member with 2 orders (10, 10); c2 non-member, 1 order of 0.
    # repeat lift: repeat_customers 1 (c1), member_repeat 1 ->
    # denominator (1 - 1) / (2 - 1) = 0 -> null.
    # aov lift: denominator (20 - 20) / (3 - 2) = 0 -> null.
    # frequency lift: (2/1) / ((3-2)/(2-1)) = 2.
    t = make_orders([(1, 1, T(2022, 1, 1), 10, True), (1, 1, T(2022, 1, 2), 10), (1, 2, T(2022, 1, 3), 0)])
    [r] = reference_compute(t)
    assert r["member_repeat_lift"] is None and r["member_aov_lift"] is None
    assert r["member_frequency_lift"] == 2.0


def test_reward_column_absent_or_all_null():
    rows = [(1, 1, T(2022, 1, 1), 10), (1, 1, T(2022, 1, 2), 10)]
    for t in (make_orders(rows, reward="absent"), make_orders(rows)):
        [r] = reference_compute(t)
        assert (r["reward_orders"], r["reward_revenue"], r["reward_customers"], r["member_orders"]) == (0, 0, 0, 0)
        assert r["reward_aov"] is None and r["member_aov_lift"] is None
    assert "reward" not in make_orders(rows, reward="absent").column_names


# ---------------------------------------------------------------------------
# Grouping and the merchants table


def test_merchants_table_unknowns_and_sort_order():
    # m1: retail/DE fee 100; m2: retail/null country/null fee; m3 missing;
    # m9 in the table but without orders (no effect).
    merchants = make_merchants(
        [(2, "retail", None, None), (9, "food", "FR", 5), (1, "retail", "DE", 100)]
    )
    t = make_orders(
        [(1, 1, T(2022, 3, 1), 10), (2, 1, T(2022, 3, 1), 20), (3, 1, T(2022, 3, 1), 40)]
    )
    rows = reference_compute(t, merchants, by=["industry", "country"])
    # Sorted by industry then country: ("retail","DE"), ("retail","unknown"),
    # ("unknown","unknown").
    assert [(r["industry"], r["country"], r["revenue"]) for r in rows] == [
        ("retail", "DE", 10),
        ("retail", "unknown", 20),
        ("unknown", "unknown", 40),
    ]
    # fees: m1 100*12/12 = 100; m2 null fee -> 0; m3 missing -> 0.
    assert [r["fees"] for r in rows] == [100.0, 0.0, 0.0]
    # by country: "DE" (m1) and "unknown" (m2 + m3: merchants 2, revenue 60).
    rows = reference_compute(t, merchants, by=["country"])
    assert [(r["country"], r["merchants"], r["revenue"], r["fees"]) for r in rows] == [
        ("DE", 1, 10, 100.0),
        ("unknown", 2, 60, 0.0),
    ]
    # by country then merchant: keys in the order given.
    rows = reference_compute(t, merchants, by=["country", "merchant"])
    assert [(r["country"], r["merchant_id"]) for r in rows] == [("DE", 1), ("unknown", 2), ("unknown", 3)]
    assert list(rows[0])[:3] == ["country", "merchant_id", "period_start"]
    # Whole network: fees = (100 + 0 + 0) * 12 / 12 = 100; roi (0-100)/100*100 = -100.
    [net] = reference_compute(t, merchants)
    assert net["merchants"] == 3 and net["fees"] == 100.0 and net["loyalty_roi"] == -100.0


# ---------------------------------------------------------------------------
# Size buckets


def test_size_labels():
    assert size_labels() == ["<30", "30-300", "300-3k", "3k-30k", "30k+"]
    assert [format_edge(e) for e in (30, 300, 3000, 30000, 1500, 2_000_000, 2.5)] == [
        "30", "300", "3k", "30k", "1.5k", "2M", "2.5",
    ]
    assert size_labels((2.5, 1500, 2_000_000)) == ["<2.5", "2.5-1.5k", "1.5k-2M", "2M+"]


def _many_orders(merchant, n, month, year=2022):
    # n orders of one merchant in one month, one customer each.
    return [(merchant, c, T(year, month, 1 + c % 28), 1) for c in range(n)]


def test_size_edge_exactly_30_orders_a_month():
    # month: merchant 1 has 30 orders in Jan 2022 (30/1 >= 30 -> "30-300"),
    # merchant 2 has 29 (-> "<30"). Sizes sort in bucket order (SPEC §7): "<30" first.
    t = make_orders(_many_orders(1, 30, 1) + _many_orders(2, 29, 1))
    rows = reference_compute(t, by=["size"], period="month")
    assert [(r["size"], r["merchants"], r["orders"]) for r in rows] == [("<30", 1, 29), ("30-300", 1, 30)]
    # year: 30 orders / 12 months = 2.5 a month -> "<30" for both.
    rows = reference_compute(t, by=["size"], period="year")
    assert [(r["size"], r["merchants"], r["orders"]) for r in rows] == [("<30", 2, 59)]
    # custom edge 2.5: 30/12 = 2.5 >= 2.5 -> "2.5+"; 29/12 < 2.5 -> "<2.5".
    rows = reference_compute(t, by=["merchant", "size"], period="year", size_edges=(2.5,))
    assert [(r["merchant_id"], r["size"]) for r in rows] == [(1, "2.5+"), (2, "<2.5")]


def test_size_buckets_sort_in_bucket_order_and_yoy_is_bucket_to_bucket():
    # Merchant 1: 360 orders in 2022 (30/month -> "30-300"), 1 order in 2021
    # ("<30"). Merchant 2: 1 order in 2021 and 1 in 2022 ("<30" both years).
    rows = _many_orders(1, 1, 6, year=2021)
    for month in range(1, 13):
        rows += [(1, 1000 + month * 100 + c, T(2022, month, 1), 1) for c in range(30)]
    rows += [(2, 1, T(2021, 6, 1), 5), (2, 1, T(2022, 6, 1), 5)]
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    t = make_orders(rows)
    # Observed over both whole years (the first order is on 2021-06-01).
    result = reference_compute(t, by=["size"], observation_start=D(2021, 1, 1), observation_end=D(2023, 1, 1))
    # Sizes sort in bucket order, smallest first (SPEC §7), then by period.
    assert [(r["size"], r["period_start"], r["merchants"], r["orders"]) for r in result] == [
        ("<30", D(2021, 1, 1), 2, 2),
        ("<30", D(2022, 1, 1), 1, 1),
        ("30-300", D(2022, 1, 1), 1, 360),
    ]
    lt30_2022 = result[1]
    # "<30" 2022 vs "<30" 2021: merchants (1-2)/2*100 = -50, orders -50.
    assert lt30_2022["merchants_yoy"] == -50.0 and lt30_2022["orders_yoy"] == -50.0
    # retention for "<30" 2022: customers_prev = 2 ("<30" 2021), customers 1
    # (m2 c1, returning) -> (1-0)/2*100 = 50; retained 1 -> strict 50.
    assert lt30_2022["retention_rate"] == 50.0 and lt30_2022["strict_retention_rate"] == 50.0
    # "30-300" 2022 has no "30-300" 2021 row: yoy and retention null.
    big = result[2]
    assert big["orders_yoy"] is None and big["retention_rate"] is None
    # ...but its store-customers are still counted as retained by their own
    # orders: none of the 360 customers ordered in 2021 -> 0.
    assert big["retained_customers"] == 0


def test_period_all_months_span_whole_input():
    # First order 2021-03-15, last 2022-02-10 -> Mar 2021..Feb 2022 = 12
    # months. Merchant 1 has 360 orders -> 30/month -> "30-300"; merchant 2
    # has 2 orders -> "<30". period_start = 2021-03-01.
    rows = [(1, c, T(2021, 3, 15) + dt.timedelta(days=c % 300), 1) for c in range(359)]
    rows += [(1, 359, T(2022, 2, 10), 1)]
    rows += [(2, 1, T(2021, 6, 1), 3), (2, 1, T(2021, 7, 1), 4)]
    t = make_orders(rows)
    result = reference_compute(t, by=["merchant", "size"], period="all")
    assert [(r["merchant_id"], r["size"], r["period_start"], r["orders"]) for r in result] == [
        (1, "30-300", D(2021, 3, 1), 360),
        (2, "<30", D(2021, 3, 1), 2),
    ]
    m2 = result[1]
    # m2: clv = lifetime revenue 7 / 1 customer; repeat customer.
    assert m2["clv"] == 7.0 and m2["repeat_customers"] == 1 and m2["repeat_orders"] == 1
    for r in result:
        assert r["fees"] is None and r["loyalty_roi"] is None and r["retained_customers"] == 0
        assert r["retention_rate"] is None and r["strict_retention_rate"] is None
        assert all(r[c] is None for c in YOY_COLUMNS)
    # One order fewer for merchant 1 -> 359/12 < 30 -> "<30".
    t2 = make_orders(rows[:358] + rows[359:])
    result = reference_compute(t2, by=["merchant", "size"], period="all")
    assert [r["size"] for r in result] == ["<30", "<30"]


# ---------------------------------------------------------------------------
# YoY for quarters and months


def test_quarter_and_month_yoy_compare_same_period_a_year_earlier():
    # c1: 2021-05-10 (Q2) 100; 2022-02-01 (Q1) 40; 2022-05-20 (Q2) 300.
    t = make_orders(
        [(1, 1, T(2021, 5, 10), 100), (1, 1, T(2022, 2, 1), 40), (1, 1, T(2022, 5, 20), 300)]
    )
    # Observed over the whole of 2021 and 2022 (SPEC §3), so every quarter and month is complete.
    window = dict(observation_start=D(2021, 1, 1), observation_end=D(2023, 1, 1))
    q = rows_by_period(reference_compute(t, period="quarter", **window))
    # By default the window is [2021-05-10, 2022-05-21): 2021Q2 (from 04-01) and 2022Q2 (to 07-01)
    # are incomplete, 2022Q1 complete; no YoY between incomplete quarters.
    default = rows_by_period(reference_compute(t, period="quarter"))
    assert [default[s]["period_complete"] for s in sorted(default)] == [False, True, False]
    assert default[D(2022, 4, 1)]["revenue_yoy"] is None
    assert sorted(q) == [D(2021, 4, 1), D(2022, 1, 1), D(2022, 4, 1)]
    # 2022Q2 vs 2021Q2: revenue (300-100)/100*100 = 200.
    assert q[D(2022, 4, 1)]["revenue_yoy"] == 200.0
    # 2022Q1: no 2021Q1 row -> null.
    assert q[D(2022, 1, 1)]["revenue_yoy"] is None
    # 2022Q2 retention vs 2022Q1 (the quarter just before): customers_prev 1,
    # returning 1 -> 100; retained (ordered in 2022Q1) -> strict 100.
    assert q[D(2022, 4, 1)]["retention_rate"] == 100.0
    assert q[D(2022, 4, 1)]["strict_retention_rate"] == 100.0
    # 2022Q1: previous quarter 2021Q4 has no row -> null; not retained.
    assert q[D(2022, 1, 1)]["retention_rate"] is None and q[D(2022, 1, 1)]["retained_customers"] == 0
    # Months: 2022-05 vs 2021-05: revenue 200%; 2022-05 previous month
    # (April) has no row -> retention null; retained 0 (no April order).
    m = rows_by_period(reference_compute(t, period="month", **window))
    assert m[D(2022, 5, 1)]["revenue_yoy"] == 200.0
    assert m[D(2022, 5, 1)]["retention_rate"] is None and m[D(2022, 5, 1)]["retained_customers"] == 0
    assert m[D(2022, 2, 1)]["revenue_yoy"] is None
    # aov yoy on months: (300 - 100)/100*100 = 200; new_customers 0 vs 1 -> -100.
    assert m[D(2022, 5, 1)]["aov_yoy"] == 200.0 and m[D(2022, 5, 1)]["new_customers_yoy"] == -100.0


def test_fees_yoy_and_roi_yoy():
    # Merchant 1 fee 1200. 2021: reward order 600; 2022: reward order 2400.
    # fees 1200 both years -> fees_yoy 0; roi 2021 (600-1200)/1200*100 = -50,
    # 2022 (2400-1200)/1200*100 = 100 -> roi_yoy (100 - -50)/-50*100 = -300.
    merchants = make_merchants([(1, "x", "y", 1200)])
    t = make_orders([(1, 1, T(2021, 1, 1), 600, True), (1, 1, T(2022, 1, 1), 2400, True)])
    y21, y22 = reference_compute(t, merchants, observation_end=D(2023, 1, 1))  # starts 2021-01-01
    assert y21["loyalty_roi"] == -50.0 and y22["loyalty_roi"] == 100.0
    assert y22["fees_yoy"] == 0.0 and y22["loyalty_roi_yoy"] == -300.0
    # reward_revenue_yoy (2400-600)/600*100 = 300.
    assert y22["reward_revenue_yoy"] == 300.0


# ---------------------------------------------------------------------------
# The comparison helper itself


def _as_table(expected, by):
    """Build a table of the declared types from reference rows."""
    types = {"merchant_id": pa.int64(), "industry": pa.string(), "country": pa.string(),
             "size": pa.string(), "period_start": pa.date32(), "period_complete": pa.bool_()}
    fields = []
    for name in reference_columns(by):
        if name in types:
            fields.append(pa.field(name, types[name]))
        elif name in BASE_COLUMNS and name != "fees":
            fields.append(pa.field(name, pa.int64()))
        else:
            fields.append(pa.field(name, pa.float64()))
    return pa.Table.from_pylist(expected, schema=pa.schema(fields))


def test_assert_tables_match_accepts_equal_and_rejects_different():
    merchants = make_merchants([(5, "retail", "DE", 1200)])
    by = ["merchant", "size"]
    expected = reference_compute(_lift_orders(), merchants, by=by, period="month")
    table = _as_table(expected, by)
    assert_tables_match(table, expected, columns=reference_columns(by))

    # A float off by 1e-9 relative fails; by one ulp passes.
    rows = [dict(r) for r in expected]
    rows[0]["aov"] = rows[0]["aov"] * (1 + 1e-9)
    with pytest.raises(AssertionError):
        assert_tables_match(_as_table(rows, by), expected)
    rows[0]["aov"] = math.nextafter(expected[0]["aov"], math.inf)
    assert_tables_match(_as_table(rows, by), expected)
    # An int off by one fails.
    rows = [dict(r) for r in expected]
    rows[-1]["orders"] += 1
    with pytest.raises(AssertionError):
        assert_tables_match(_as_table(rows, by), expected)
    # Null vs value fails.
    rows = [dict(r) for r in expected]
    rows[0]["fees"] = None
    with pytest.raises(AssertionError):
        assert_tables_match(_as_table(rows, by), expected)
    # Row order matters.
    with pytest.raises(AssertionError):
        assert_tables_match(_as_table(expected[::-1], by), expected)
    # Column order matters.
    with pytest.raises(AssertionError):
        assert_tables_match(_as_table(expected, by).select(reference_columns(by)[::-1]), expected)
    # A period_complete flipped fails.
    rows = [dict(r) for r in expected]
    rows[0]["period_complete"] = not rows[0]["period_complete"]
    with pytest.raises(AssertionError):
        assert_tables_match(_as_table(rows, by), expected)
    # Wrong type (int32 count) fails.
    t = table.set_column(table.schema.get_field_index("orders"), "orders", table["orders"].cast(pa.int32()))
    with pytest.raises(AssertionError):
        assert_tables_match(t, expected)
    # Empty.
    assert_tables_match(_as_table([], by), [], columns=reference_columns(by))


# --- refunds (SPEC §2 "Refunds") ---------------------------------------------------


def _refund_orders():
    # Merchant 1 (fee 1200), year 2022 unless said otherwise:
    #   customer 1: refund -50 (Jan, reward) BEFORE its first order, order 100 (Feb),
    #               order 40 (Mar, reward), refund -30 (Apr)
    #   customer 2: refund -20 (2021-12), then order 70 (2022-05), order 0 (2022-06)
    #   customer 3: only refunds: -5 (Jul), -6 (Aug, reward)
    #   customer 4: order 10 (2021-03), refund -10 (2022-02): no 2022 order
    # Merchant 2 (fee 600): only a refund -9 in 2022, orders in 2021.
    return make_orders(
        [
            (1, 1, dt.datetime(2022, 1, 3), -50, True),
            (1, 1, dt.datetime(2022, 2, 3), 100),
            (1, 1, dt.datetime(2022, 3, 3), 40, True),
            (1, 1, dt.datetime(2022, 4, 3), -30),
            (1, 2, dt.datetime(2021, 12, 3), -20),
            (1, 2, dt.datetime(2022, 5, 3), 70),
            (1, 2, dt.datetime(2022, 6, 3), 0),
            (1, 3, dt.datetime(2022, 7, 3), -5),
            (1, 3, dt.datetime(2022, 8, 3), -6, True),
            (1, 4, dt.datetime(2021, 3, 3), 10),
            (1, 4, dt.datetime(2022, 2, 3), -10),
            (2, 1, dt.datetime(2021, 3, 3), 25),
            (2, 1, dt.datetime(2022, 3, 3), -9),
        ]
    )


def test_refund_rows_add_to_revenue_sums_only():
    orders = _refund_orders()
    merchants = make_merchants([(1, "food", "DE", 1200), (2, "food", "DE", 600)])
    out = {r["period_start"].year: r for r in reference_compute(orders, merchants, by=["merchant"], refunds=True)
           if r["merchant_id"] == 1}
    y22 = out[2022]
    # Orders in 2022: customer 1's 100 and 40, customer 2's 70 and 0 (an amount of 0 is an order).
    assert y22["orders"] == 4
    # Revenue: 100 + 40 + 70 + 0 and every 2022 refund of merchant 1: -50 - 30 - 5 - 6 - 10.
    assert y22["revenue"] == 210 - 101 == 109
    # Customers: 1 and 2 ordered; 3 (only refunds) and 4 (refund, no order) are not active.
    assert y22["customers"] == 2
    # New: customer 1's rank-1 order is Feb 2022 (its January refund has no rank); customer 2's
    # rank-1 order is May 2022 (its 2021 refund is no order).
    assert y22["new_customers"] == 2 and y22["returning_customers"] == 0
    # Retained: nobody ordered in both 2021 and 2022 (customer 4's 2022 row is a refund).
    assert y22["retained_customers"] == 0
    assert y22["repeat_customers"] == 2 and y22["orders_from_repeat_customers"] == 4
    assert y22["repeat_orders"] == 4 - 2
    # Reward orders: customer 1's 40 only (reward refunds are no orders); reward revenue adds the
    # reward refunds of the year: 40 - 50 (customer 1) - 6 (customer 3).
    assert y22["reward_orders"] == 1 and y22["reward_revenue"] == 40 - 50 - 6 == -16
    assert y22["reward_customers"] == 1
    # Members: customer 1 is a participant in 2022, so all its 2022 rows count: orders 2,
    # revenue -50 + 100 + 40 - 30 = 60 (its refund before its first order included).
    assert y22["member_orders"] == 2 and y22["member_revenue"] == 60
    assert y22["member_repeat_customers"] == 1
    assert y22["merchants"] == 1 and y22["fees"] == 1200
    # 2021: customer 4's order 10 and customer 2's refund -20: one order, one customer.
    y21 = out[2021]
    assert (y21["orders"], y21["revenue"], y21["customers"], y21["new_customers"]) == (1, -10, 1, 1)


def test_refund_only_merchant_period_adds_revenue_but_no_merchant():
    orders = _refund_orders()
    merchants = make_merchants([(1, "food", "DE", 1200), (2, "food", "DE", 600)])
    by_merchant = reference_compute(orders, merchants, by=["merchant"], refunds=True)
    # Merchant 2 has no order in 2022: no (merchant 2, 2022) row.
    assert [(r["merchant_id"], r["period_start"].year) for r in by_merchant] == [
        (1, 2021), (1, 2022), (2, 2021)]
    network = {r["period_start"].year: r for r in reference_compute(orders, merchants, refunds=True)}
    # Network 2022: merchant 1's 109 plus merchant 2's refund -9; one merchant with orders, one fee.
    assert network[2022]["revenue"] == 100
    assert network[2022]["merchants"] == 1 and network[2022]["fees"] == 1200
    # Network 2021: orders 10 and 25, refund -20; two merchants.
    assert (network[2021]["orders"], network[2021]["revenue"], network[2021]["merchants"]) == (2, 15, 2)


def test_refunds_do_not_start_the_all_period_nor_count_toward_size():
    # period="all": the earliest *order* is 2022-03 (the 2021 refund is no order), so
    # period_start is 2022-03-01 and the months span 2022-03 .. 2022-04 = 2 months.
    orders = make_orders(
        [
            (1, 1, dt.datetime(2021, 6, 1), -5),
            (1, 1, dt.datetime(2022, 3, 1), 10),
            (1, 2, dt.datetime(2022, 4, 1), 20),
            (1, 2, dt.datetime(2022, 4, 2), -1),
            (1, 2, dt.datetime(2022, 4, 3), -1),
            (1, 2, dt.datetime(2022, 4, 4), -1),
        ]
    )
    (row,) = reference_compute(orders, by=["size"], period="all", size_edges=(1, 2), refunds=True)
    assert row["period_start"] == dt.date(2022, 3, 1)
    # 2 orders over 2 months = 1 a month: bucket "1-2" (the 4 refunds are not orders).
    assert row["size"] == "1-2"
    assert (row["orders"], row["revenue"], row["customers"]) == (2, 10 + 20 - 5 - 3, 2)


def test_only_refunds_gives_no_rows():
    orders = make_orders([(1, 1, dt.datetime(2022, 3, 1), -5)])
    assert reference_compute(orders, refunds=True) == []
