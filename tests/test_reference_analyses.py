"""Hand-worked examples that check the SPEC §9 reference itself (no library involved)."""
import datetime as dt
from fractions import Fraction

import pyarrow as pa
import pytest
from reference_analyses import exact_top, reference_cohorts, reference_concentration


def table(rows):
    """rows: (merchant, customer, "YYYY-MM-DD", amount), already sorted."""
    return pa.table({
        "merchant_id": pa.array([r[0] for r in rows], pa.int64()),
        "customer_id": pa.array([r[1] for r in rows], pa.int64()),
        "order_ts": pa.array([dt.date.fromisoformat(r[2]) for r in rows], pa.date32()),
        "amount": pa.array([r[3] for r in rows], pa.int64()),
    })


D = dt.date


def test_concentration_top_fifth_of_ten_customers():
    # Ten store-customers at merchant 1 in 2022 with revenues 10, 20, ..., 100
    # (customer 10 orders twice: 60 + 40): top ceil(0.2 × 10) = 2 are 100 + 90.
    rows = [(1, c, "2022-03-01", 10 * c) for c in range(1, 10)]
    rows += [(1, 10, "2022-04-01", 60), (1, 10, "2022-12-31", 40)]
    [row] = reference_concentration(table(rows), top=0.2)
    # Observed from the first order (2022-03-01) only: 2022 is incomplete (SPEC §3).
    assert row == {"period_start": D(2022, 1, 1), "period_complete": False, "customers": 10, "top_customers": 2, "revenue": 550,
                   "top_revenue": 190, "top_share": 190 / 550}


def test_concentration_store_customers_and_periods():
    # Customer 7 at two merchants is two store-customers; by year, 2023 stands alone.
    rows = [(1, 7, "2022-01-01", 5), (1, 7, "2023-01-01", 1), (2, 7, "2022-06-01", 3), (2, 8, "2022-06-02", 0)]
    out = reference_concentration(table(rows), top=0.5, by=["merchant"])
    assert [(r["merchant_id"], r["period_start"], r["customers"], r["top_customers"], r["top_revenue"])
            for r in out] == [(1, D(2022, 1, 1), 1, 1, 5), (1, D(2023, 1, 1), 1, 1, 1), (2, D(2022, 1, 1), 2, 1, 3)]
    network = reference_concentration(table(rows), top=0.5, period="all")
    # One period starting in the first order's month; 3 store-customers, top 2: 6 (5 + 1) and 3.
    assert network == [{"period_start": D(2022, 1, 1), "period_complete": True, "customers": 3, "top_customers": 2, "revenue": 9,
                        "top_revenue": 9, "top_share": 1.0}]


def test_concentration_zero_revenue_share_is_null_and_ties():
    rows = [(1, c, "2022-01-01", 0) for c in range(3)]
    [row] = reference_concentration(table(rows), top=1.0)
    assert row["top_customers"] == 3 and row["top_revenue"] == 0 and row["top_share"] is None
    tied = [(1, c, "2022-01-01", 50) for c in range(4)]
    [row] = reference_concentration(table(tied), top=0.5)
    assert row["top_revenue"] == 100


def test_concentration_size_is_the_bucket_in_the_period():
    # With the single edge 2: merchant 1 has 24 orders in 2022 (2 a month: "2+") and 1 in 2023 ("<2").
    # Sizes sort in bucket order, smallest first (SPEC §7).
    rows = [(1, c, "2022-05-01", 1) for c in range(24)] + [(1, 99, "2023-01-01", 1)]
    out = reference_concentration(table(rows), by=["size"], size_edges=(2,))
    assert [(r["size"], r["period_start"]) for r in out] == [("<2", D(2023, 1, 1)), ("2+", D(2022, 1, 1))]


@pytest.mark.parametrize("top, k", [(0.07, 7), (0.05, 5), (1e-9, 1), (1, 100), (Fraction(1, 3), 34)])
def test_top_is_read_as_its_decimal(top, k):
    assert -((-100 * exact_top(top).numerator) // exact_top(top).denominator) == k


def test_cohorts_month_grid_to_the_input_horizon():
    # Merchant 1: customer 1 buys in Jan and Mar 2022, customer 2 in Feb (twice).
    # Merchant 2's last order (Apr) sets the horizon for everyone.
    rows = [(1, 1, "2022-01-05", 10), (1, 1, "2022-03-01", 20), (1, 2, "2022-02-01", 30),
            (1, 2, "2022-02-02", 40), (2, 5, "2022-04-30", 7)]
    out = reference_cohorts(table(rows), by=["merchant"])
    got = [(r["merchant_id"], r["cohort_start"], r["period_index"], r["period_start"], r["cohort_customers"],
            r["active_customers"], r["orders"], r["revenue"], r["cumulative_revenue"]) for r in out]
    assert got == [
        (1, D(2022, 1, 1), 0, D(2022, 1, 1), 1, 1, 1, 10, 10),
        (1, D(2022, 1, 1), 1, D(2022, 2, 1), 1, 0, 0, 0, 10),
        (1, D(2022, 1, 1), 2, D(2022, 3, 1), 1, 1, 1, 20, 30),
        (1, D(2022, 1, 1), 3, D(2022, 4, 1), 1, 0, 0, 0, 30),
        (1, D(2022, 2, 1), 0, D(2022, 2, 1), 1, 1, 2, 70, 70),
        (1, D(2022, 2, 1), 1, D(2022, 3, 1), 1, 0, 0, 0, 70),
        (1, D(2022, 2, 1), 2, D(2022, 4, 1), 1, 0, 0, 0, 70),
        (2, D(2022, 4, 1), 0, D(2022, 4, 1), 1, 1, 1, 7, 7),
    ]
    assert [r["retention"] for r in out[:4]] == [1.0, 0.0, 1.0, 0.0]
    assert out[2]["cumulative_revenue_per_customer"] == 30.0
    # The cell's month is complete when it lies in [2022-01-05, 2022-05-01) (SPEC §3: from the
    # first order's date to the day after the last's): January begins before it, April just fits.
    assert [(r["period_start"], r["period_complete"]) for r in out[:4]] == [
        (D(2022, 1, 1), False), (D(2022, 2, 1), True), (D(2022, 3, 1), True), (D(2022, 4, 1), True)]
    assert all(r["period_complete"] for r in out[4:])
    # An explicit window: only February and March lie in [2022-02-01, 2022-04-01).
    window = reference_cohorts(table(rows), by=["merchant"], observation_start=D(2022, 2, 1),
                               observation_end=D(2022, 4, 1))
    assert [r["period_start"].month for r in window if r["period_complete"]] == [2, 3, 2, 3]


def test_cohorts_network_quarters_and_size_in_cohort_period():
    # Quarterly: customers 1, 2 acquired in 2022-Q1, customer 3 in Q2; customer 1 returns in Q2.
    rows = [(1, 1, "2022-01-01", 1), (1, 1, "2022-04-01", 2), (1, 2, "2022-03-31", 4), (1, 3, "2022-05-01", 8)]
    out = reference_cohorts(table(rows), period="quarter")
    assert [(r["cohort_start"], r["period_index"], r["cohort_customers"], r["active_customers"], r["revenue"],
             r["retention"]) for r in out] == [
        (D(2022, 1, 1), 0, 2, 2, 5, 1.0), (D(2022, 1, 1), 1, 2, 1, 2, 0.5), (D(2022, 4, 1), 0, 1, 1, 8, 1.0)]
    # Edges (0.5, 1): Q1 and Q2 each have 2 orders, 2/3 a month, in [0.5, 1): "0.5-1". Both Q1
    # cohort rows take the Q1 bucket (the cohort period), not the bucket of the period they describe.
    sized = reference_cohorts(table(rows), period="quarter", by=["size"], size_edges=(0.5, 1))
    assert [(r["size"], r["cohort_start"], r["period_index"]) for r in sized] == [
        ("0.5-1", D(2022, 1, 1), 0), ("0.5-1", D(2022, 1, 1), 1), ("0.5-1", D(2022, 4, 1), 0)]


# --- refunds (SPEC §2) --------------------------------------------------------------

REFUND_ROWS = [
    (1, 1, "2022-01-05", -7),      # before customer 1's first order, same month: in its cohort cell
    (1, 1, "2022-01-20", 100),
    (1, 1, "2022-03-02", -30),     # March: revenue in cell k = 2, nobody active
    (1, 2, "2021-12-30", -50),     # before customer 2's cohort month: in no cell
    (1, 2, "2022-02-01", 40),
    (1, 2, "2022-02-02", -60),
    (1, 3, "2022-02-10", -5),      # only refunds: no cohort, no customer
    (1, 4, "2022-03-01", 10),      # the latest order: the horizon is March 2022
    (1, 4, "2022-04-01", -1),      # after the horizon: in no cell
]


def test_cohorts_with_refunds():
    out = reference_cohorts(table(REFUND_ROWS), period="month", refunds=True)
    got = [(r["cohort_start"], r["period_index"], r["cohort_customers"], r["active_customers"], r["orders"],
            r["revenue"], r["cumulative_revenue"]) for r in out]
    assert got == [
        (D(2022, 1, 1), 0, 1, 1, 1, 93, 93),      # 100 - 7
        (D(2022, 1, 1), 1, 1, 0, 0, 0, 93),
        (D(2022, 1, 1), 2, 1, 0, 0, -30, 63),
        (D(2022, 2, 1), 0, 1, 1, 1, -20, -20),    # 40 - 60
        (D(2022, 2, 1), 1, 1, 0, 0, 0, -20),
        (D(2022, 3, 1), 0, 1, 1, 1, 10, 10),
    ]
    assert out[2]["retention"] == 0 and out[2]["cumulative_revenue_per_customer"] == 63


def test_concentration_with_refunds():
    # 2022: customer 1: 100 - 7 - 30 = 63; customer 2: 40 - 60 = -20; customer 4: 10 - 1 = 9;
    # customer 3 (-5) has no order: not ranked, but in revenue. 2021: only a refund: no row.
    out = reference_concentration(table(REFUND_ROWS), top=Fraction(2, 3), refunds=True)
    # Observed from the first order (2022-01-20, refunds are no orders): 2022 is incomplete.
    assert out == [{"period_start": D(2022, 1, 1), "period_complete": False, "customers": 3, "top_customers": 2,
                    "revenue": 63 - 20 + 9 - 5, "top_revenue": 72, "top_share": 72 / 47}]
    # Every customer: the negative one too.
    [row] = reference_concentration(table(REFUND_ROWS), top=1, refunds=True)
    assert row["top_revenue"] == 52
    # period="all" starts at the first order's month (2022-01), not the 2021 refund's.
    [row] = reference_concentration(table(REFUND_ROWS), top=1, period="all", refunds=True)
    assert row["period_start"] == D(2022, 1, 1) and row["revenue"] == 47 - 50


# --- time zones (SPEC §3): hand-worked, the reference alone ----------------------------

def zoned_table(rows):
    """rows: (merchant, customer, "YYYY-MM-DDTHH:MM:SS" UTC, amount), already sorted."""
    return pa.table({
        "merchant_id": pa.array([r[0] for r in rows], pa.int64()),
        "customer_id": pa.array([r[1] for r in rows], pa.int64()),
        "order_ts": pa.array([dt.datetime.fromisoformat(r[2]) for r in rows], pa.timestamp("us", tz="UTC")),
        "amount": pa.array([r[3] for r in rows], pa.int64()),
    })


def zones_of(**zones):
    """A merchants table naming merchant m's zone as m<m>="Zone/Name" (None: no zone given)."""
    ids = [int(k[1:]) for k in zones]
    return pa.table({"merchant_id": pa.array(ids, pa.int64()), "industry": ["x"] * len(ids),
                     "country": ["x"] * len(ids), "annual_fee": pa.array([0] * len(ids), pa.int64()),
                     "timezone": pa.array(list(zones.values()), pa.string())})


def test_local_dates_across_dst_offsets_and_history():
    from reference_analyses import local_dates

    rows = [
        (1, 1, "2023-11-05T05:30:00", 1),   # New York, fall-back day: the first 01:30 (EDT, -4)
        (1, 1, "2023-11-05T06:30:00", 1),   # the second 01:30 (EST, -5): the same local day
        (1, 2, "1970-01-01T00:30:00", 1),   # 1969-12-31 19:30 in New York
        (2, 1, "2023-01-31T18:14:00", 1),   # Kathmandu +05:45: 2023-01-31 23:59
        (2, 1, "2023-01-31T18:15:00", 1),   # 2023-02-01 00:00
        (3, 1, "2023-01-31T18:29:00", 1),   # Kolkata +05:30: 23:59
        (3, 1, "2023-01-31T18:30:00", 1),   # 00:00 the next day
        (4, 1, "2011-12-30T09:59:59", 1),   # Apia, -10 until Samoa skipped 2011-12-30: Dec 29 23:59:59
        (4, 1, "2011-12-30T10:00:00", 1),   # then +14: Dec 31 00:00
        (5, 1, "2262-12-31T23:00:00", 1),   # Tokyo +9: 2263-01-01 08:00
        (6, 1, "2023-06-01T03:00:00", 1),   # no zone in the table: the default, here Los Angeles (PDT, -7)
    ]
    merchants = zones_of(m1="America/New_York", m2="Asia/Kathmandu", m3="Asia/Kolkata", m4="Pacific/Apia",
                         m5="Asia/Tokyo", m6=None)
    got = local_dates(zoned_table(rows), merchants, "America/Los_Angeles")
    assert got == [D(2023, 11, 5), D(2023, 11, 5), D(1969, 12, 31), D(2023, 1, 31), D(2023, 2, 1),
                   D(2023, 1, 31), D(2023, 2, 1), D(2011, 12, 29), D(2011, 12, 31), D(2263, 1, 1),
                   D(2023, 5, 31)]
    # Without zones every date is the UTC one.
    assert local_dates(zoned_table(rows))[2] == D(1970, 1, 1)


def test_cohorts_in_local_months_of_several_zones():
    # Merchant 1 (New York): customer 1 orders on 2023-12-31 22:00 local (2024-01-01 03:00Z), in
    # December locally, and on 2024-01-15. Merchant 2 (Kathmandu): customer 1 orders at 2024-01-31 23:59
    # local (18:14Z), in January, and at 2024-02-01 00:00 local (18:15Z), the latest local month of all.
    rows = [(1, 1, "2024-01-01T03:00:00", 10), (1, 1, "2024-01-15T12:00:00", 20),
            (2, 1, "2024-01-31T18:14:00", 5), (2, 1, "2024-01-31T18:15:00", 7)]
    merchants = zones_of(m1="America/New_York", m2="Asia/Kathmandu")
    out = reference_cohorts(zoned_table(rows), merchants, by=["merchant"])
    got = [(r["merchant_id"], r["cohort_start"], r["period_index"], r["active_customers"], r["revenue"])
           for r in out]
    # The horizon is February (Kathmandu's last order), so New York's December cohort runs to k = 2.
    assert got == [(1, D(2023, 12, 1), 0, 1, 10), (1, D(2023, 12, 1), 1, 1, 20), (1, D(2023, 12, 1), 2, 0, 0),
                   (2, D(2024, 1, 1), 0, 1, 5), (2, D(2024, 1, 1), 1, 1, 7)]
    # The network: both merchants add up their own months.
    network = reference_cohorts(zoned_table(rows), merchants)
    assert [(r["cohort_start"], r["period_index"], r["cohort_customers"], r["revenue"]) for r in network] == [
        (D(2023, 12, 1), 0, 1, 10), (D(2023, 12, 1), 1, 1, 20), (D(2023, 12, 1), 2, 1, 0),
        (D(2024, 1, 1), 0, 1, 5), (D(2024, 1, 1), 1, 1, 7)]
    # In UTC everything is 2024: one January cohort of two store-customers.
    assert reference_cohorts(zoned_table(rows))[0]["cohort_customers"] == 2


def test_concentration_in_local_years_and_the_all_period():
    # 1970-01-01 00:30Z is 1969-12-31 in New York: its own local year 1969, and the "all" period's
    # start (the earliest order, in its merchant's zone), although merchant 2 (UTC) orders at the same instant.
    rows = [(1, 1, "1970-01-01T00:30:00", 3), (1, 2, "1970-06-01T00:00:00", 4), (2, 1, "1970-01-01T00:30:00", 5)]
    merchants = zones_of(m1="America/New_York")
    out = reference_concentration(zoned_table(rows), merchants, top=1, by=["merchant"])
    assert [(r["merchant_id"], r["period_start"], r["revenue"]) for r in out] == [
        (1, D(1969, 1, 1), 3), (1, D(1970, 1, 1), 4), (2, D(1970, 1, 1), 5)]
    [row] = reference_concentration(zoned_table(rows), merchants, top=1, period="all")
    assert row["period_start"] == D(1969, 12, 1) and row["revenue"] == 12
    # The default zone applies to merchants without one: Tokyo puts the last instant in 2263.
    late = [(1, 1, "2262-12-31T23:00:00", 1)]
    [row] = reference_concentration(zoned_table(late), timezone="Asia/Tokyo")
    assert row["period_start"] == D(2263, 1, 1)
