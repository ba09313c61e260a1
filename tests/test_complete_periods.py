"""Complete periods (SPEC §3) and the size bucket order (SPEC §7), across compute and the analyses.

The observation window ``[observation_start, observation_end)`` decides which
periods are ``period_complete``; every ``_yoy`` is null unless both periods
compared are complete. Expected values come from the pure-Python reference
(``reference.py``, ``reference_analyses.py``) or are worked out in comments.
"""
from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import (
    YOY_COLUMNS,
    _observation_window,
    _order_dates,
    assert_tables_match,
    reference_columns,
    reference_compute,
)
from reference_analyses import (
    COHORT_COLUMNS,
    CONCENTRATION_COLUMNS,
    assert_rows_match,
    reference_cohorts,
    reference_concentration,
)
from strategies import REFUND_AMOUNTS, bys, orders_and_merchants, periods, recent_instants_ns

import loyaltymetrics as lm
from loyaltymetrics.cli import main

D = dt.date
T = dt.datetime
ENGINES = ("cython", "numba")
SIZE_ORDER = ["<30", "30-300", "300-3k", "3k-30k", "30k+"]


# --- strategies -----------------------------------------------------------------

# Window ends near the generated orders (2018 .. 2025), often on period boundaries.
_DATES = st.one_of(
    st.builds(D, st.integers(2017, 2026), st.sampled_from([1, 1, 4, 7, 10]), st.just(1)),
    st.builds(D, st.integers(2017, 2026), st.integers(1, 12), st.integers(1, 28)),
)


@st.composite
def windows(draw):
    """``observation_start``/``observation_end`` keyword arguments, either or both left to default."""
    start = draw(st.none() | _DATES)
    end = draw(st.none() | _DATES)
    if start is not None and end is not None and end <= start:
        start, end = end, start + dt.timedelta(days=1) if end == start else start
    return {k: v for k, v in (("observation_start", start), ("observation_end", end)) if v is not None}


def window_is_empty(orders, refunds, window):
    """True when the window, defaults filled in from the orders, holds no day (a ValueError, not a table)."""
    days = _order_dates(orders.column("order_ts")) if orders.num_rows else []
    amounts = orders.column("amount").to_pylist()
    is_order = [not (refunds and a < 0) for a in amounts]
    if not any(is_order):
        return False  # no rows to flag: nothing needs the defaults
    start, end = _observation_window(days, is_order, window.get("observation_start"), window.get("observation_end"))
    return end <= start


# --- compute against the reference ---------------------------------------------------

@pytest.mark.parametrize("engine", ENGINES)
@settings(deadline=None, max_examples=60)
@given(data=orders_and_merchants(amounts=REFUND_AMOUNTS), by=bys(), period=periods(), window=windows(),
       refunds=st.booleans(), threads=st.integers(1, 3), chunk_rows=st.sampled_from([1, 2, 5, 1 << 20]))
def test_compute_with_a_window_matches_the_reference(data, by, period, window, refunds, threads, chunk_rows, engine):
    orders, merchants = data
    if not refunds:
        orders = orders.set_column(orders.schema.get_field_index("amount"), "amount",
                                   pa.array([abs(a) for a in orders.column("amount").to_pylist()], pa.int64()))
    options = dict(by=by, period=period, refunds=refunds, **window)
    if window_is_empty(orders, refunds, window):
        with pytest.raises(ValueError, match="holds no day"):
            lm.compute(orders, merchants, engine=engine, threads=threads, chunk_rows=chunk_rows, **options)
        return
    actual = lm.compute(orders, merchants, engine=engine, threads=threads, chunk_rows=chunk_rows, **options)
    assert_tables_match(actual, reference_compute(orders, merchants, **options), columns=reference_columns(by))
    # Bit for bit the one-thread table (SPEC §8).
    assert actual.equals(lm.compute(orders, merchants, engine="cython", threads=1, **options))


@pytest.mark.parametrize("engine", ENGINES)
@settings(deadline=None, max_examples=40)
@given(data=orders_and_merchants(instants=recent_instants_ns(), amounts=REFUND_AMOUNTS), by=bys(),
       window=windows(), period=st.sampled_from(["month", "quarter", "year"]), top=st.sampled_from([0.05, 0.5, 1]),
       threads=st.integers(1, 3), chunk_rows=st.sampled_from([1, 3, 1 << 20]))
def test_analyses_with_a_window_match_the_reference(data, by, window, period, top, threads, chunk_rows, engine):
    orders, merchants = data
    options = dict(by=by, period=period, refunds=True, **window)
    run = dict(engine=engine, threads=threads, chunk_rows=chunk_rows)
    if window_is_empty(orders, True, window):
        for analysis in (lm.cohorts, lm.concentration):
            with pytest.raises(ValueError, match="holds no day"):
                analysis(orders, merchants, **options, **run)
        return
    names = [{"merchant": "merchant_id"}.get(b, b) for b in by]
    if merchants is not None and "name" in merchants.column_names and "merchant" in by:
        names.insert(names.index("merchant_id") + 1, "merchant_name")
    cohorts = lm.cohorts(orders, merchants, **options, **run)
    assert_rows_match(cohorts, reference_cohorts(orders, merchants, **options), names + COHORT_COLUMNS)
    conc = lm.concentration(orders, merchants, top=top, **options, **run)
    assert_rows_match(conc, reference_concentration(orders, merchants, top=top, **options),
                      names + CONCENTRATION_COLUMNS)


# --- hand-worked examples ------------------------------------------------------------

def orders_table(rows, unit="us"):
    """rows: (merchant_id, customer_id, datetime, amount), sorted."""
    return pa.table({
        "merchant_id": pa.array([r[0] for r in rows], pa.int64()),
        "customer_id": pa.array([r[1] for r in rows], pa.int64()),
        "order_ts": pa.array([r[2] for r in rows], pa.timestamp(unit)),
        "amount": pa.array([r[3] for r in rows], pa.int64()),
    })


# 2023 observed whole (first order 2023-01-01, last 2023-12-31); 2024 has only begun (2024-01-02).
BEGUN = orders_table([
    (1, 1, T(2023, 1, 1, 0, 5), 100), (1, 1, T(2023, 12, 31, 23, 59), 300), (1, 1, T(2024, 1, 2, 9), 50),
    (1, 2, T(2023, 6, 1), 200),
])


@pytest.mark.parametrize("engine", ENGINES)
def test_a_year_that_has_only_begun_gets_no_yoy(engine):
    # Default window [2023-01-01, 2024-01-03): 2023 complete, 2024 (to 2025-01-01) not.
    y23, y24 = lm.compute(BEGUN, engine=engine).to_pylist()
    assert (y23["period_complete"], y24["period_complete"]) == (True, False)
    assert (y23["orders"], y24["orders"]) == (3, 1)
    assert all(y24[c] is None for c in YOY_COLUMNS)
    # Observed up to 2025-01-01, 2024 is whole: orders (1 - 3) / 3 × 100, revenue (50 - 600) / 600 × 100.
    y23, y24 = lm.compute(BEGUN, engine=engine, observation_end="2025-01-01").to_pylist()
    assert (y23["period_complete"], y24["period_complete"]) == (True, True)
    assert y24["orders_yoy"] == pytest.approx((1 - 3) / 3 * 100, rel=1e-15)
    assert y24["revenue_yoy"] == pytest.approx((50 - 600) / 600 * 100, rel=1e-15)
    # The window changes the flags and the YoY only.
    default = lm.compute(BEGUN, engine=engine)
    drop = ["period_complete"] + YOY_COLUMNS
    assert lm.compute(BEGUN, engine=engine, observation_end="2025-01-01").drop(drop).equals(default.drop(drop))


def test_the_default_window_is_the_orders_utc_dates():
    # Earliest order 2023-01-01 00:05 UTC, latest 2023-12-31 23:59 UTC: window [2023-01-01, 2024-01-01).
    one_year = BEGUN.slice(0, 2)
    [row] = lm.compute(one_year).to_pylist()
    assert row["period_complete"] is True
    # A second later the latest order is 2024-01-01: 2024 begins, 2023 still whole.
    later = orders_table([(1, 1, T(2023, 1, 1), 1), (1, 1, T(2024, 1, 1, 0, 0, 1), 1)])
    assert [r["period_complete"] for r in lm.compute(later).to_pylist()] == [True, False]
    # The first order on 2023-01-02: 2023 begins before the window.
    late_start = orders_table([(1, 1, T(2023, 1, 2), 1), (1, 1, T(2023, 12, 31), 1)])
    assert [r["period_complete"] for r in lm.compute(late_start).to_pylist()] == [False]
    # Every unit and date32 give the same dates.
    for unit in ("s", "ms", "ns"):
        assert lm.compute(BEGUN.cast(BEGUN.schema.set(2, pa.field("order_ts", pa.timestamp(unit))))).equals(
            lm.compute(BEGUN))
    # Refunds are no orders: a refund on 2023-01-01 before the first order (2023-01-05) starts no window.
    refunded = orders_table([(1, 1, T(2023, 1, 1), -5), (1, 1, T(2023, 1, 5), 10), (1, 1, T(2023, 12, 31), 1)])
    assert [r["period_complete"] for r in lm.compute(refunded, refunds=True).to_pylist()] == [False]
    assert [r["period_complete"] for r in lm.compute(refunded, refunds=True, observation_start=D(2023, 1, 1))
            .to_pylist()] == [True]


def test_an_explicit_window_by_quarter_and_period_all():
    rows = [(1, 1, T(2023, m, 15), m) for m in range(1, 13)]
    table = orders_table(rows)
    quarters = lm.compute(table, period="quarter", observation_start="2023-04-01", observation_end=D(2023, 7, 1))
    # Only Q2 [04-01, 07-01) lies in [2023-04-01, 2023-07-01).
    assert quarters.column("period_complete").to_pylist() == [False, True, False, False]
    # By default [2023-01-15, 2023-12-16): Q2 and Q3 lie in it, Q1 begins before it, Q4 ends after it.
    assert lm.compute(table, period="quarter").column("period_complete").to_pylist() == [False, True, True, False]
    # An end on a month's last day leaves that month out: [.., 2023-12-31) misses 12-31.
    months = lm.compute(table, period="month", observation_start="2023-01-01", observation_end="2023-12-31")
    assert months.column("period_complete").to_pylist() == [True] * 11 + [False]
    # period="all" is always complete, whatever the window.
    for window in ({}, dict(observation_start="2023-06-01"), dict(observation_end="2023-02-01")):
        assert lm.compute(table, period="all", **window).column("period_complete").to_pylist() == [True]


@pytest.mark.parametrize("window, message", [
    (dict(observation_start="2023-05-01", observation_end="2023-05-01"), "must be after observation_start"),
    (dict(observation_start=D(2024, 1, 1), observation_end=D(2023, 1, 1)), "must be after observation_start"),
    (dict(observation_start="2023-13-01"), "not an ISO date"),
    (dict(observation_end="yesterday"), "not an ISO date"),
    (dict(observation_start=T(2023, 1, 1, 12)), "not a date"),
    (dict(observation_start="1969-12-31"), "outside 1970-01-01"),
    (dict(observation_start="2024-06-01"), "holds no day"),      # after the latest order; the end defaults
    (dict(observation_end="2023-01-01"), "holds no day"),        # before the earliest order
])
def test_bad_windows_are_value_errors(window, message):
    with pytest.raises(ValueError, match=message):
        lm.compute(BEGUN, **window)
    with pytest.raises(ValueError, match=message):
        lm.cohorts(BEGUN, **window)
    with pytest.raises(ValueError, match=message):
        lm.concentration(BEGUN, **window)


def test_a_bad_window_is_refused_before_the_orders_are_read(tmp_path):
    with pytest.raises(TypeError, match="observation_start must be a datetime.date"):
        lm.compute(tmp_path / "missing.arrow", observation_start=20230101)
    with pytest.raises(ValueError, match="must be after"):
        lm.cohorts(tmp_path / "missing.arrow", observation_start="2023-02-01", observation_end="2023-01-01")


def test_a_window_ending_after_2262_is_allowed():
    table = orders_table([(1, 1, T(2262, 3, 1), 1)], unit="s")
    [row] = lm.compute(table, observation_end="2263-01-01").to_pylist()
    assert row["period_complete"] is False   # 2262 began before the window (2262-03-01)
    [row] = lm.compute(table, observation_start="2262-01-01", observation_end="2263-01-01").to_pylist()
    assert row["period_complete"] is True


def test_cohort_cells_and_concentration_carry_period_complete():
    # Month cohorts: the cell's month is complete when it lies in [2023-01-01, 2024-01-03).
    cells = lm.cohorts(BEGUN, period="month").to_pylist()
    assert {(c["period_start"], c["period_complete"]) for c in cells} == (
        {(D(2023, m, 1), True) for m in range(1, 13)} | {(D(2024, 1, 1), False)})
    conc = lm.concentration(BEGUN).to_pylist()
    assert [(r["period_start"], r["period_complete"]) for r in conc] == [(D(2023, 1, 1), True),
                                                                       (D(2024, 1, 1), False)]


# --- size in bucket order ----------------------------------------------------------------

def _merchants_of_sizes(counts, month=1):
    """One merchant per count, with that many orders (one customer each) in January 2023."""
    rows = [(m, c, T(2023, month, 1 + c % 28), 1) for m, n in enumerate(counts) for c in range(n)]
    return orders_table(rows)


def test_size_in_bucket_order_everywhere():
    # Orders a month 1, 30, 300, 3000, 30000 (period month): one merchant in each default bucket,
    # put in reverse merchant order so that neither merchant_id nor the label strings give the order.
    table = _merchants_of_sizes([30000, 3000, 300, 30, 1])
    assert lm.compute(table, by=["size"], period="month").column("size").to_pylist() == SIZE_ORDER
    assert lm.concentration(table, by=["size"], period="month").column("size").to_pylist() == SIZE_ORDER
    assert lm.cohorts(table, by=["size"], period="month").column("size").to_pylist() == SIZE_ORDER
    # size then period: a merchant that moves bucket comes under each bucket in turn.
    by_size_merchant = lm.compute(table, by=["size", "merchant"], period="month")
    assert by_size_merchant.column("size").to_pylist() == SIZE_ORDER
    assert by_size_merchant.column("merchant_id").to_pylist() == [4, 3, 2, 1, 0]


def test_size_in_bucket_order_with_custom_edges():
    # Edges (2, 5, 10): labels <2, 2-5, 5-10, 10+ (as strings "10+" < "2-5" < "5-10" < "<2").
    table = _merchants_of_sizes([10, 5, 2, 1])
    edges = (2, 5, 10)
    want = ["<2", "2-5", "5-10", "10+"]
    assert lm.compute(table, by=["size"], period="month", size_edges=edges).column("size").to_pylist() == want
    assert lm.concentration(table, by=["size"], period="month", size_edges=edges).column(
        "size").to_pylist() == want
    # Within another key, sizes still in bucket order: industry a holds merchants 1 (5 orders, "5-10")
    # and 3 (1, "<2"), industry b merchants 0 (10, "10+") and 2 (2, "2-5").
    merchants = pa.table({"merchant_id": pa.array([0, 1, 2, 3], pa.int64()), "industry": ["b", "a", "b", "a"],
                          "country": ["x"] * 4, "annual_fee": pa.array([0] * 4, pa.int64())})
    rows = lm.compute(table, merchants, by=["industry", "size"], period="month", size_edges=edges).to_pylist()
    assert [(r["industry"], r["size"]) for r in rows] == [("a", "<2"), ("a", "5-10"), ("b", "2-5"), ("b", "10+")]


# --- command line ------------------------------------------------------------------------

@pytest.fixture()
def begun_file(tmp_path):
    path = tmp_path / "orders.parquet"
    pq.write_table(BEGUN, path)
    return str(path)


@pytest.mark.parametrize("command", ["compute", "cohorts", "concentration"])
def test_cli_observation_flags(command, begun_file, tmp_path, capsys):
    out = tmp_path / "out.parquet"
    assert main([command, begun_file, "--observation-end", "2025-01-01", "-o", str(out), "-q"]) == 0
    api = {"compute": lm.compute, "cohorts": lm.cohorts, "concentration": lm.concentration}[command]
    assert pq.read_table(out).equals(api(begun_file, observation_end=D(2025, 1, 1)))
    assert not pq.read_table(out).equals(api(begun_file))
    # Start after end: the library's error, exit 1, nothing written.
    out.unlink()
    assert main([command, begun_file, "--observation-start", "2024-01-01", "--observation-end", "2023-01-01",
                 "-o", str(out), "-q"]) == 1
    assert "must be after observation_start" in capsys.readouterr().err
    assert not out.exists()
    # Not a date: argparse's usage error.
    with pytest.raises(SystemExit) as exit_:
        main([command, begun_file, "--observation-start", "2024-02-30"])
    assert exit_.value.code == 2
    assert "expected an ISO date YYYY-MM-DD" in capsys.readouterr().err
