"""Cross-check loyaltymetrics' SPEC §4 base counts against DuckDB SQL.

`sql_peer` computes the counts with window functions, GROUP BY and a
self-join; the library computes them in one streaming pass. The two share no
code. The tests of the SQL itself (hand example, consistency) check the
peer before it is trusted as one.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sql_peer import (  # pytest puts tests/ on sys.path (rootdir-relative import mode)
    BASE_COUNT_COLUMNS,
    PERIODS,
    duckdb_base_counts,
    duckdb_network_counts,
    make_merchants,
    make_orders,
)

SEED = 20240229
N_CUSTOMERS = 1200  # ~5,000 order rows at 20 merchants


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm():
    """The library under test (a missing or broken install fails, never skips)."""
    import loyaltymetrics

    return loyaltymetrics


@pytest.fixture(scope="module")
def orders() -> pa.Table:
    return make_orders(SEED, N_CUSTOMERS)


@pytest.fixture(scope="module")
def merchants(orders) -> pa.Table:
    return make_merchants(orders, SEED + 1)


def _rows(table: pa.Table, columns: list[str]) -> list[tuple]:
    return [tuple(r[c] for c in columns) for r in table.select(columns).to_pylist()]


def assert_same_counts(got: pa.Table, want: pa.Table, keys: list[str], label: str) -> None:
    """`got` (library) has the same (keys, period_start) rows and the same
    values in every column of `want` (DuckDB), with int64 counts and date32
    period_start, sorted by keys then period_start (SPEC §7)."""
    key_cols = [*keys, "period_start"]
    value_cols = [c for c in want.column_names if c not in key_cols]
    missing = [c for c in key_cols + value_cols if c not in got.column_names]
    assert not missing, f"{label}: library output lacks columns {missing}; has {got.column_names}"

    bad_types = [
        f"{c}: {got.schema.field(c).type}"
        for c in value_cols
        if got.schema.field(c).type != pa.int64()
    ]
    if got.schema.field("period_start").type != pa.date32():
        bad_types.append(f"period_start: {got.schema.field('period_start').type}")
    assert not bad_types, f"{label}: wrong output types {bad_types}"

    got_keys = _rows(got, key_cols)
    assert got_keys == sorted(got_keys), f"{label}: library output is not sorted by {key_cols}"
    assert len(set(got_keys)) == len(got_keys), f"{label}: duplicate {key_cols} rows in library output"

    got_rows = sorted(_rows(got, key_cols + value_cols))
    want_rows = sorted(_rows(want, key_cols + value_cols))
    if got_rows == want_rows:
        return

    n_keys = len(key_cols)
    got_by_key = {r[:n_keys]: r[n_keys:] for r in got_rows}
    want_by_key = {r[:n_keys]: r[n_keys:] for r in want_rows}
    lines = [f"{label}: library != DuckDB ({len(got_rows)} vs {len(want_rows)} rows)"]
    only_lib = sorted(set(got_by_key) - set(want_by_key))
    only_sql = sorted(set(want_by_key) - set(got_by_key))
    if only_lib:
        lines.append(f"  {len(only_lib)} {key_cols} only in library, e.g. {only_lib[:5]}")
    if only_sql:
        lines.append(f"  {len(only_sql)} {key_cols} only in DuckDB, e.g. {only_sql[:5]}")
    differing = [k for k in sorted(set(got_by_key) & set(want_by_key)) if got_by_key[k] != want_by_key[k]]
    if differing:
        per_column: dict[str, int] = {}
        for k in differing:
            for c, g, w in zip(value_cols, got_by_key[k], want_by_key[k]):
                if g != w:
                    per_column[c] = per_column.get(c, 0) + 1
        lines.append(f"  {len(differing)} rows differ; differing rows per column: {per_column}")
        for k in differing[:10]:
            diffs = ", ".join(
                f"{c}: library={g} duckdb={w}"
                for c, g, w in zip(value_cols, got_by_key[k], want_by_key[k])
                if g != w
            )
            lines.append(f"  {dict(zip(key_cols, k))}: {diffs}")
    pytest.fail("\n".join(lines), pytrace=False)


# --------------------------------------------------------------------------
# the SQL on its own
# --------------------------------------------------------------------------


def _utc(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.timezone.utc)


# Six orders; C10 shops at both merchants (two store-customers).
HAND_ORDERS = pa.table(
    {
        "merchant_id": pa.array([1, 1, 1, 1, 2, 2], pa.int64()),
        "customer_id": pa.array([10, 10, 10, 11, 10, 10], pa.int64()),
        "order_ts": pa.array(
            [
                _utc(2022, 12, 31, 23, 59, 59, 999999),  # M1 C10 rank 1
                _utc(2023, 1, 1),  # M1 C10 rank 2 (tie with the next row)
                _utc(2023, 1, 1),  # M1 C10 rank 3
                _utc(2023, 6, 1, 12),  # M1 C11 rank 1
                _utc(2021, 3, 1),  # M2 C10 rank 1
                _utc(2023, 2, 1),  # M2 C10 rank 2
            ],
            pa.timestamp("us", tz="UTC"),
        ),
        "amount": pa.array([100, 0, 50, 200, 70, 30], pa.int64()),
        "reward": pa.array([True, None, True, False, False, True], pa.bool_()),
    }
)

# period="year", by merchant. Columns in BASE_COUNT_COLUMNS order:
#   orders, revenue, customers, new, returning, repeat_orders, repeat_customers,
#   orders_from_repeat, retained, reward_orders, reward_revenue,
#   reward_customers, member_orders, member_revenue, member_repeat_customers
HAND_YEAR_BY_MERCHANT = [
    # M1 2022: C10's Dec 31 23:59:59.999999 order, a reward order; C10 is new.
    (1, dt.date(2022, 1, 1), 1, 100, 1, 1, 0, 0, 0, 0, 0, 1, 100, 1, 1, 100, 0),
    # M1 2023: C10 (ranks 2, 3: 0 + 50, the 50 a reward, the null = false) and
    # C11 (new, 200, no reward). customers 2, new 1 (C11), returning 1,
    # repeat_orders 2, repeat_customers 1 (C10) with 2 orders, retained 1
    # (C10 was active at M1 in 2022). Members: C10 -> 2 orders, 50 cents,
    # and C10 repeats in 2023.
    (1, dt.date(2023, 1, 1), 3, 250, 2, 1, 1, 2, 1, 2, 1, 1, 50, 1, 2, 50, 1),
    # M2 2021: C10's first M2 order, no reward.
    (2, dt.date(2021, 1, 1), 1, 70, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
    # M2 2023: rank 2, so returning but not retained (no 2022 order at M2:
    # C10's 2022 order at M1 is another store-customer). A reward order.
    (2, dt.date(2023, 1, 1), 1, 30, 1, 0, 1, 1, 0, 0, 0, 1, 30, 1, 1, 30, 0),
]

# period="all": one period from 2021-03-01 (the earliest order's month).
HAND_ALL_BY_MERCHANT = [
    # M1: C10 (3 orders, 150, rewards 100 + 50) and C11 (1 order, 200).
    # both new; repeat_orders 2 (C10 ranks 2, 3); repeat_customers 1 (C10)
    # with 3 orders; nobody retained (no previous period); member C10.
    (1, dt.date(2021, 3, 1), 4, 350, 2, 2, 0, 2, 1, 3, 0, 2, 150, 1, 3, 150, 1),
    # M2: C10 (2 orders, 100; reward 30): a repeating member.
    (2, dt.date(2021, 3, 1), 2, 100, 1, 1, 0, 1, 1, 2, 0, 1, 30, 1, 2, 100, 1),
]

# period="year", whole network: columns period_start, merchants, then counts.
HAND_YEAR_NETWORK = [
    (dt.date(2021, 1, 1), 1, *HAND_YEAR_BY_MERCHANT[2][2:]),
    (dt.date(2022, 1, 1), 1, *HAND_YEAR_BY_MERCHANT[0][2:]),
    # 2023: M1 + M2 store-customers (3: M1C10, M1C11, M2C10), so the same
    # person C10 counts twice; every count is the sum of the merchant rows.
    (dt.date(2023, 1, 1), 2, 4, 280, 3, 1, 2, 3, 1, 2, 1, 2, 80, 2, 3, 80, 1),
]

# Retention across a year edge at month and quarter granularity:
# (merchant_id, period_start, retained_customers).
HAND_RETAINED = {
    # Dec 2022 -> Jan 2023 is the previous month, Q4 -> Q1 the previous quarter.
    "month": [
        (1, dt.date(2022, 12, 1), 0),
        (1, dt.date(2023, 1, 1), 1),
        (1, dt.date(2023, 6, 1), 0),
        (2, dt.date(2021, 3, 1), 0),
        (2, dt.date(2023, 2, 1), 0),
    ],
    "quarter": [
        (1, dt.date(2022, 10, 1), 0),
        (1, dt.date(2023, 1, 1), 1),
        (1, dt.date(2023, 4, 1), 0),
        (2, dt.date(2021, 1, 1), 0),
        (2, dt.date(2023, 1, 1), 0),
    ],
}


def test_sql_peer_hand_example():
    key = ["merchant_id", "period_start"]
    year = duckdb_base_counts(None, HAND_ORDERS, None, "year")
    assert year.column_names == [*key, *BASE_COUNT_COLUMNS]
    assert all(year.schema.field(c).type == pa.int64() for c in ["merchant_id", *BASE_COUNT_COLUMNS])
    assert year.schema.field("period_start").type == pa.date32()
    assert _rows(year, year.column_names) == HAND_YEAR_BY_MERCHANT

    everything = duckdb_base_counts(None, HAND_ORDERS, None, "all")
    assert _rows(everything, everything.column_names) == HAND_ALL_BY_MERCHANT

    network = duckdb_network_counts(None, HAND_ORDERS, None, "year")
    assert network.column_names == ["period_start", "merchants", *BASE_COUNT_COLUMNS]
    assert _rows(network, network.column_names) == HAND_YEAR_NETWORK

    for period, expected in HAND_RETAINED.items():
        table = duckdb_base_counts(None, HAND_ORDERS, None, period)
        assert _rows(table, [*key, "retained_customers"]) == expected, period

    # by industry: M2 is missing from the merchants table -> "unknown".
    merchants = pa.table({"merchant_id": pa.array([1], pa.int32()), "industry": ["food"]})
    industry = duckdb_network_counts(None, HAND_ORDERS, merchants, "year", by=["industry"])
    assert _rows(industry, ["industry", "period_start", "merchants", *BASE_COUNT_COLUMNS]) == [
        ("food", *HAND_YEAR_NETWORK[1][:2], *HAND_YEAR_BY_MERCHANT[0][2:]),
        ("food", dt.date(2023, 1, 1), 1, *HAND_YEAR_BY_MERCHANT[1][2:]),
        ("unknown", *HAND_YEAR_NETWORK[0][:2], *HAND_YEAR_BY_MERCHANT[2][2:]),
        ("unknown", dt.date(2023, 1, 1), 1, *HAND_YEAR_BY_MERCHANT[3][2:]),
    ]

    # Reward column absent = no reward orders, so no members either.
    no_reward = duckdb_base_counts(None, HAND_ORDERS.drop_columns(["reward"]), None, "year")
    reward_cols = [c for c in BASE_COUNT_COLUMNS if c.startswith(("reward", "member"))]
    assert all(v == 0 for c in reward_cols for v in no_reward.column(c).to_pylist())
    other = [c for c in year.column_names if c not in reward_cols]
    assert _rows(no_reward, other) == _rows(year, other)


@pytest.mark.parametrize(
    "ts_type",
    [
        pa.timestamp("ns", tz="Asia/Tokyo"),  # UTC+9: Dec 31 23:59 UTC is Jan 1 local
        pa.timestamp("us", tz="America/New_York"),
        pa.timestamp("ms", tz="UTC"),
        pa.timestamp("s"),  # naive = UTC
        pa.timestamp("ns"),
        pa.date32(),
    ],
    ids=str,
)
@pytest.mark.parametrize("period", PERIODS)
def test_sql_peer_timestamp_types(ts_type, period):
    """Periods are UTC calendar periods whatever the Arrow type of order_ts
    (the hand example stays in the same periods after truncation to s or
    to a date)."""
    ts = HAND_ORDERS.column("order_ts")
    if pa.types.is_date32(ts_type):
        converted = pc.cast(ts, ts_type)
    elif ts_type.tz is None:
        converted = pc.cast(pc.cast(ts, pa.timestamp("us")), ts_type, safe=False)
    else:
        converted = pc.cast(ts, ts_type, safe=False)
    variant = HAND_ORDERS.set_column(2, "order_ts", converted)
    want = duckdb_base_counts(None, HAND_ORDERS, None, period)
    got = duckdb_base_counts(None, variant, None, period)
    assert got.equals(want)


def test_sql_peer_accepts_connection_and_leaves_input_alone(orders):
    import duckdb

    before = orders.to_pylist()
    con = duckdb.connect()
    con.execute("SET TimeZone='Asia/Tokyo'")  # must be overridden to UTC
    try:
        got = duckdb_base_counts(con, orders, None, "year")
        assert con.execute("SELECT current_setting('TimeZone')").fetchone()[0] == "UTC"
        assert not [r for r in con.execute("SHOW TABLES").fetchall() if "lm_peer" in r[0]]
    finally:
        con.close()
    assert got.equals(duckdb_base_counts(None, orders, None, "year"))
    assert orders.to_pylist() == before


@pytest.mark.parametrize("period", PERIODS)
def test_sql_peer_consistency(orders, merchants, period):
    """SPEC identities, and merchants / industries add up to the network."""
    by_merchant = duckdb_base_counts(None, orders, merchants, period)
    network = duckdb_network_counts(None, orders, merchants, period)
    industry = duckdb_network_counts(None, orders, merchants, period, by=["industry"])

    for t in (by_merchant, network, industry):
        c = {name: np.asarray(t.column(name)) for name in BASE_COUNT_COLUMNS}
        assert (c["returning_customers"] == c["customers"] - c["new_customers"]).all()
        assert (c["repeat_orders"] == c["orders"] - c["new_customers"]).all()
        assert (c["repeat_customers"] <= c["customers"]).all()
        assert (c["orders_from_repeat_customers"] >= 2 * c["repeat_customers"]).all()
        assert (c["retained_customers"] <= c["returning_customers"]).all()
        assert (c["member_orders"] >= c["reward_orders"]).all()
        assert (c["member_revenue"] >= c["reward_revenue"]).all()
        assert (c["member_repeat_customers"] <= c["reward_customers"]).all()
        assert (c["orders"] >= c["customers"]).all() and (c["customers"] > 0).all()

    # Store-customers belong to one merchant, so every count is additive.
    for parts, key in ((by_merchant, "merchant_id"), (industry, "industry")):
        summed = parts.group_by("period_start").aggregate(
            [(c, "sum") for c in BASE_COUNT_COLUMNS] + [(key, "count")]
        )
        if key == "industry":
            merchant_count = parts.group_by("period_start").aggregate([("merchants", "sum")])
            assert sorted(_rows(merchant_count, ["period_start", "merchants_sum"])) == _rows(
                network, ["period_start", "merchants"]
            )
        else:
            assert sorted(_rows(summed, ["period_start", f"{key}_count"])) == _rows(
                network, ["period_start", "merchants"]
            )
        summed_rows = sorted(_rows(summed, ["period_start", *[f"{c}_sum" for c in BASE_COUNT_COLUMNS]]))
        assert summed_rows == _rows(network, ["period_start", *BASE_COUNT_COLUMNS])

    assert "unknown" in industry.column("industry").to_pylist()
    if period == "all":
        first = pc.min(orders.column("order_ts")).as_py()
        assert set(network.column("period_start").to_pylist()) == {dt.date(first.year, first.month, 1)}
    else:
        assert network.column("retained_customers").to_pylist()[0] == 0
        assert sum(network.column("retained_customers").to_pylist()) > 0


def test_generated_orders_have_the_hostile_cases(orders):
    ts = orders.column("order_ts")
    values = set(ts.to_pylist())
    for year in (2021, 2022, 2023):
        assert _utc(year, 12, 31, 23, 59, 59, 999999) in values
        assert _utc(year + 1, 1, 1) in values
    keys = _rows(orders, ["merchant_id", "customer_id", "order_ts"])
    assert keys == sorted(keys)
    assert len(set(keys)) < len(keys)  # equal timestamps within a store-customer
    reward = orders.column("reward")
    assert reward.null_count > 0 and pc.sum(reward).as_py() > 0 and pc.sum(pc.invert(reward)).as_py() > 0
    assert pc.min(orders.column("amount")).as_py() == 0
    assert pc.count_distinct(orders.column("merchant_id")).as_py() == 20
    assert 3000 <= orders.num_rows <= 8000


# --------------------------------------------------------------------------
# the library against the SQL
# --------------------------------------------------------------------------


@pytest.mark.parametrize("period", PERIODS)
def test_by_merchant_matches_duckdb(lm, orders, merchants, period):
    got = lm.compute(orders, merchants=merchants, by=["merchant"], period=period)
    want = duckdb_base_counts(None, orders, merchants, period)
    assert_same_counts(got, want, ["merchant_id"], f"by=['merchant'] period={period}")
    assert set(got.column("merchants").to_pylist()) == {1}


@pytest.mark.parametrize("period", PERIODS)
def test_network_matches_duckdb(lm, orders, merchants, period):
    got = lm.compute(orders, merchants=merchants, by=[], period=period)
    want = duckdb_network_counts(None, orders, merchants, period)
    assert_same_counts(got, want, [], f"by=[] period={period}")


@pytest.mark.parametrize("period", PERIODS)
def test_industry_matches_duckdb(lm, orders, merchants, period):
    # make_merchants omits some merchants and nulls some industries: "unknown".
    got = lm.compute(orders, merchants=merchants, by=["industry"], period=period)
    want = duckdb_network_counts(None, orders, merchants, period, by=["industry"])
    assert_same_counts(got, want, ["industry"], f"by=['industry'] period={period}")


def _variant(orders: pa.Table, name: str) -> pa.Table:
    ts_index = orders.schema.get_field_index("order_ts")
    if name == "no_reward":
        return orders.drop_columns(["reward"])
    if name == "ns_tokyo":  # same instants, another zone and unit
        return orders.set_column(
            ts_index, "order_ts", pc.cast(orders.column("order_ts"), pa.timestamp("ns", tz="Asia/Tokyo"))
        )
    if name == "naive_ms":  # naive = UTC; .999999 truncates to .999, same period
        naive = pc.cast(orders.column("order_ts"), pa.timestamp("us"))
        return orders.set_column(ts_index, "order_ts", pc.cast(naive, pa.timestamp("ms"), safe=False))
    if name == "date32":
        return orders.set_column(ts_index, "order_ts", pc.cast(orders.column("order_ts"), pa.date32()))
    if name == "int32_ids":
        return orders.set_column(0, "merchant_id", pc.cast(orders.column("merchant_id"), pa.int32()))
    raise ValueError(name)


@pytest.mark.parametrize("period", ["year", "month", "all"])
@pytest.mark.parametrize("variant", ["no_reward", "ns_tokyo", "naive_ms", "date32", "int32_ids"])
def test_input_variants_match_duckdb(lm, orders, merchants, variant, period):
    data = _variant(orders, variant)
    got = lm.compute(data, merchants=merchants, by=["merchant"], period=period)
    want = duckdb_base_counts(None, data, merchants, period)
    assert_same_counts(got, want, ["merchant_id"], f"{variant} by=['merchant'] period={period}")
    got = lm.compute(data, merchants=merchants, by=[], period=period)
    want = duckdb_network_counts(None, data, merchants, period)
    assert_same_counts(got, want, [], f"{variant} by=[] period={period}")
