"""An independent peer of loyaltymetrics' base counts, written in DuckDB SQL.

The library computes SPEC §4 in one streaming pass over sorted rows; this
module computes the same integers the way an analyst with a SQL engine would:
window-function ranks, GROUP BY per store-customer and period, and a self-join
for retention. The two share no code, so agreement is real evidence.

Also holds the seeded order generator (`make_orders`, `make_merchants`) that
the DuckDB cross-check tests and the benchmarks both use.
"""

from __future__ import annotations

import datetime as _dt
from typing import Sequence

import duckdb
import numpy as np
import pyarrow as pa

PERIODS = ("year", "quarter", "month", "all")

# SPEC §4 integer base counts, in SPEC §7 output order (after `merchants`).
BASE_COUNT_COLUMNS = (
    "orders",
    "revenue",
    "customers",
    "new_customers",
    "returning_customers",
    "repeat_orders",
    "repeat_customers",
    "orders_from_repeat_customers",
    "retained_customers",
    "reward_orders",
    "reward_revenue",
    "reward_customers",
    "member_orders",
    "member_revenue",
    "member_repeat_customers",
)

# SPEC §6 grouping key -> output column name (SPEC §7).
_KEY_COLUMN = {"merchant": "merchant_id", "industry": "industry", "country": "country"}

# The calendar period just before P (SPEC §4 retained_customers); "all" has none.
_PREVIOUS_PERIOD = {"year": "1 year", "quarter": "3 months", "month": "1 month"}


# --------------------------------------------------------------------------
# DuckDB peer
# --------------------------------------------------------------------------


def _utc_timestamp_sql(ts_type: pa.DataType) -> str:
    """SQL turning the registered `order_ts` column into a naive UTC TIMESTAMP.

    tz-aware Arrow timestamps arrive as TIMESTAMPTZ (or TIMESTAMPTZ_NS, which
    DuckDB 2.0 cannot cast to TIMESTAMP directly), so they go through
    TIMESTAMPTZ; with the session TimeZone set to UTC that yields UTC wall
    time whatever zone the Arrow type names. Naive timestamps (any unit) are
    already UTC by SPEC §2; date32 is midnight UTC.
    """
    if pa.types.is_timestamp(ts_type):
        if ts_type.tz is not None:
            return "CAST(CAST(order_ts AS TIMESTAMPTZ) AS TIMESTAMP)"
        return "CAST(order_ts AS TIMESTAMP)"
    if pa.types.is_date32(ts_type):
        return "CAST(order_ts AS TIMESTAMP)"
    raise TypeError(f"order_ts must be a timestamp or date32, got {ts_type}")


def _counts_sql(
    orders_view: str,
    merchants_view: str | None,
    by: Sequence[str],
    period: str,
    ts_sql: str,
    reward_sql: str,
) -> str:
    if period == "all":
        # SPEC §3: one period, starting on the first day of the month of the
        # input's earliest order (input-wide, not per group).
        period_start_sql = (
            "(SELECT CAST(date_trunc('month', min(ts_utc)) AS DATE) FROM ranked)"
        )
    else:
        period_start_sql = f"CAST(date_trunc('{period}', ts_utc) AS DATE)"

    if period == "all":
        # No period before "all": nobody is retained. Keep the column shape.
        with_prev = "SELECT a.*, FALSE AS active_prev FROM activity a"
    else:
        with_prev = f"""
        SELECT a.*, (prev.customer_id IS NOT NULL) AS active_prev
        FROM activity a
        LEFT JOIN activity prev
          ON prev.merchant_id = a.merchant_id
         AND prev.customer_id = a.customer_id
         AND prev.period_start = CAST(a.period_start - INTERVAL '{_PREVIOUS_PERIOD[period]}' AS DATE)
        """

    key_select = []
    for key in by:
        if key == "merchant":
            key_select.append("s.merchant_id AS merchant_id")
        else:
            # SPEC §2: merchants missing from the table (or with a null
            # value) fall in "unknown".
            col = "m." + key if merchants_view is not None else "NULL"
            key_select.append(f"COALESCE({col}, 'unknown') AS {key}")
    key_names = [_KEY_COLUMN[k] for k in by]
    merchants_join = (
        f"LEFT JOIN {merchants_view} m ON CAST(m.merchant_id AS BIGINT) = s.merchant_id"
        if merchants_view is not None
        else ""
    )
    group_by = ", ".join(key_names + ["period_start"])
    order_by = group_by
    keys_out = "".join(f"{k}, " for k in key_names)

    def big(expr: str) -> str:
        # SUM over BIGINT is HUGEINT in DuckDB, and NULL over no rows.
        return f"CAST(COALESCE({expr}, 0) AS BIGINT)"

    return f"""
    WITH ranked AS (
        -- SPEC §4 rank: 1-based position among the store-customer's orders
        -- in the whole input; equal order_ts keep file order (SPEC §2).
        SELECT
            CAST(merchant_id AS BIGINT) AS merchant_id,
            CAST(customer_id AS BIGINT) AS customer_id,
            {ts_sql} AS ts_utc,
            CAST(amount AS BIGINT) AS amount,
            {reward_sql} AS reward,
            row_number() OVER (
                PARTITION BY merchant_id, customer_id
                ORDER BY order_ts, _row_position
            ) AS rank
        FROM {orders_view}
    ),
    dated AS (
        SELECT *, {period_start_sql} AS period_start FROM ranked
    ),
    activity AS (
        -- one row per store-customer and period with at least one order
        SELECT
            merchant_id, customer_id, period_start,
            count(*) AS n_orders,
            sum(amount) AS revenue,
            count(*) FILTER (WHERE rank = 1) AS n_first_orders,
            count(*) FILTER (WHERE rank >= 2) AS n_repeat_orders,
            count(*) FILTER (WHERE reward) AS n_reward_orders,
            COALESCE(sum(amount) FILTER (WHERE reward), 0) AS reward_revenue
        FROM dated
        GROUP BY merchant_id, customer_id, period_start
    ),
    activity_prev AS ({with_prev}),
    store_customer_periods AS (
        SELECT {", ".join(key_select + ["s.*"])}
        FROM activity_prev s
        {merchants_join}
    )
    SELECT
        {keys_out}period_start,
        CAST(count(DISTINCT merchant_id) AS BIGINT) AS merchants,
        {big("sum(n_orders)")} AS orders,
        {big("sum(revenue)")} AS revenue,
        CAST(count(*) AS BIGINT) AS customers,
        CAST(count(*) FILTER (WHERE n_first_orders > 0) AS BIGINT) AS new_customers,
        -- = customers - new_customers: active in P, first order before P
        CAST(count(*) FILTER (WHERE n_first_orders = 0) AS BIGINT) AS returning_customers,
        {big("sum(n_repeat_orders)")} AS repeat_orders,
        CAST(count(*) FILTER (WHERE n_orders >= 2) AS BIGINT) AS repeat_customers,
        {big("sum(n_orders) FILTER (WHERE n_orders >= 2)")} AS orders_from_repeat_customers,
        CAST(count(*) FILTER (WHERE active_prev) AS BIGINT) AS retained_customers,
        {big("sum(n_reward_orders)")} AS reward_orders,
        {big("sum(reward_revenue)")} AS reward_revenue,
        CAST(count(*) FILTER (WHERE n_reward_orders > 0) AS BIGINT) AS reward_customers,
        -- members: the reward_customers of P; all their orders in P count
        {big("sum(n_orders) FILTER (WHERE n_reward_orders > 0)")} AS member_orders,
        {big("sum(revenue) FILTER (WHERE n_reward_orders > 0)")} AS member_revenue,
        CAST(count(*) FILTER (WHERE n_reward_orders > 0 AND n_orders >= 2) AS BIGINT)
            AS member_repeat_customers
    FROM store_customer_periods
    GROUP BY {group_by}
    ORDER BY {order_by}
    """


def duckdb_counts(
    con_or_none: duckdb.DuckDBPyConnection | None,
    orders: pa.Table,
    merchants: pa.Table | None = None,
    by: Sequence[str] = (),
    period: str = "year",
) -> pa.Table:
    """SPEC §4 base counts plus `merchants` per (group keys, period_start).

    `by` is drawn from "merchant", "industry", "country" (SPEC §6 without
    "size"). Output columns: the key columns (merchant_id int64, industry /
    country string), period_start (date32), merchants, then
    BASE_COUNT_COLUMNS (int64), sorted by keys then period_start.

    If a connection is passed, its TimeZone is set to UTC (the conversion of
    tz-aware timestamps depends on it) and the temporary views are removed
    afterwards.
    """
    if period not in PERIODS:
        raise ValueError(f"period must be one of {PERIODS}, got {period!r}")
    by = list(by)
    for key in by:
        if key not in _KEY_COLUMN:
            raise ValueError(f"by keys must be in {sorted(_KEY_COLUMN)}, got {key!r}")
    if len(set(by)) != len(by):
        raise ValueError(f"repeated key in by={by}")

    # Row position from the Arrow table's order: the tie-break for equal
    # order_ts (SPEC §2). append_column returns a new table; input untouched.
    n = orders.num_rows
    orders_in = orders.append_column(
        "_row_position", pa.array(np.arange(n, dtype=np.int64))
    )
    if "reward" in orders.column_names:
        reward_sql = "COALESCE(reward, FALSE)"  # SPEC §2: null = false
    else:
        reward_sql = "FALSE"
    ts_sql = _utc_timestamp_sql(orders.schema.field("order_ts").type)

    if merchants is not None:
        ids = merchants.column("merchant_id").to_numpy(zero_copy_only=False)
        if len(np.unique(ids)) != len(ids):
            raise ValueError("merchants table has duplicate merchant_id")
        for key in by:
            if key != "merchant" and key not in merchants.column_names:
                raise ValueError(f"merchants table has no column {key!r}")

    own_con = con_or_none is None
    con = duckdb.connect() if own_con else con_or_none
    suffix = f"{id(orders_in):x}"
    orders_view = f"lm_peer_orders_{suffix}"
    merchants_view = f"lm_peer_merchants_{suffix}" if merchants is not None else None
    try:
        con.execute("SET TimeZone='UTC'")
        con.register(orders_view, orders_in)
        if merchants_view is not None:
            con.register(merchants_view, merchants)
        sql = _counts_sql(orders_view, merchants_view, by, period, ts_sql, reward_sql)
        relation = con.sql(sql)
        # duckdb >= 1.4 names it to_arrow_table; older releases arrow().
        to_arrow = getattr(relation, "to_arrow_table", None) or relation.arrow
        result = to_arrow()
    finally:
        if own_con:
            con.close()
        else:
            con.unregister(orders_view)
            if merchants_view is not None:
                con.unregister(merchants_view)

    fields = []
    for key in by:
        name = _KEY_COLUMN[key]
        fields.append(pa.field(name, pa.int64() if key == "merchant" else pa.string()))
    fields.append(pa.field("period_start", pa.date32()))
    fields.append(pa.field("merchants", pa.int64()))
    fields.extend(pa.field(c, pa.int64()) for c in BASE_COUNT_COLUMNS)
    schema = pa.schema(fields)
    return result.select(schema.names).cast(schema)


def duckdb_base_counts(
    con_or_none: duckdb.DuckDBPyConnection | None,
    orders: pa.Table,
    merchants: pa.Table | None,
    period: str,
) -> pa.Table:
    """Per (merchant_id, period_start): SPEC §4 base counts, all int64."""
    table = duckdb_counts(con_or_none, orders, merchants, by=["merchant"], period=period)
    return table.select(["merchant_id", "period_start", *BASE_COUNT_COLUMNS])


def duckdb_network_counts(
    con_or_none: duckdb.DuckDBPyConnection | None,
    orders: pa.Table,
    merchants: pa.Table | None = None,
    period: str = "year",
    by: Sequence[str] = (),
) -> pa.Table:
    """Whole network (`by=[]`) or `by=["industry"]` (or ["country"]):
    [key,] period_start, merchants, base counts."""
    if "merchant" in by:
        raise ValueError("use duckdb_base_counts for by=['merchant']")
    return duckdb_counts(con_or_none, orders, merchants, by=by, period=period)


# --------------------------------------------------------------------------
# Seeded order generator (shared with benchmarks)
# --------------------------------------------------------------------------

_EPOCH = _dt.datetime(1970, 1, 1)


def _us(d: _dt.datetime) -> int:
    return (d - _EPOCH) // _dt.timedelta(microseconds=1)


def _boundary_instants(first_year: int, last_year: int) -> tuple[np.ndarray, np.ndarray]:
    """Period edges inside [first_year, last_year] as int64 microseconds since
    epoch: (year edges, other month edges). An edge is a month's first
    microsecond (Jan 1 00:00:00.000000) or the last microsecond before it
    (Dec 31 23:59:59.999999)."""
    lo = _us(_dt.datetime(first_year, 1, 1))
    hi = _us(_dt.datetime(last_year + 1, 1, 1))
    year_edges, other_edges = [lo, hi - 1], []
    for year in range(first_year, last_year + 1):
        for month in range(1, 13):
            if (year, month) == (first_year, 1):
                continue
            start = _us(_dt.datetime(year, month, 1))
            (year_edges if month == 1 else other_edges).extend([start - 1, start])
    return np.array(year_edges, dtype=np.int64), np.array(other_edges, dtype=np.int64)


def make_orders(
    seed: int,
    n_customers: int = 1000,
    n_merchants: int = 20,
    *,
    first_year: int = 2021,
    last_year: int = 2024,
    max_orders_per_customer: int = 8,
    reward: bool = True,
) -> pa.Table:
    """Seeded, SPEC §2-valid orders, sorted stably by
    (merchant_id, customer_id, order_ts).

    About `n_customers` store-customers (duplicate (merchant, customer) draws
    merge) at `n_merchants` merchants with Zipf-like sizes; the same
    customer_id appears at several merchants. Each has 1..8 orders over a
    personal window inside [first_year, last_year], with on purpose:
    orders exactly at Jan 1 00:00:00 and Dec 31 23:59:59.999999 UTC (and
    at every other month edge), equal timestamps within a store-customer,
    amounts of 0 and large amounts, and `reward` true / false / null
    (column omitted when reward=False).

    Columns: merchant_id int64, customer_id int64,
    order_ts timestamp("us", tz="UTC"), amount int64, [reward bool].
    """
    rng = np.random.default_rng(seed)

    # Merchants: non-contiguous ids, Zipf-like customer shares.
    merchant_ids = 100 + 37 * np.arange(n_merchants, dtype=np.int64)
    weights = 1.0 / np.arange(1, n_merchants + 1)
    weights /= weights.sum()
    store_merchant = rng.choice(merchant_ids, size=n_customers, p=weights)
    # People drawn from a smaller pool so ids recur across merchants; large
    # ids so that int64 is needed.
    people = rng.integers(0, max(1, (n_customers * 2) // 3), size=n_customers)
    store_customer = people.astype(np.int64) * 1_000_003 + 3_000_000_000
    pairs = np.unique(np.stack([store_merchant, store_customer], axis=1), axis=0)
    store_merchant, store_customer = pairs[:, 0], pairs[:, 1]
    n_store = len(pairs)

    n_orders = rng.integers(1, max_orders_per_customer + 1, size=n_store)
    total = int(n_orders.sum())
    order_merchant = np.repeat(store_merchant, n_orders)
    order_customer = np.repeat(store_customer, n_orders)
    owner = np.repeat(np.arange(n_store), n_orders)

    lo = _us(_dt.datetime(first_year, 1, 1))
    hi = _us(_dt.datetime(last_year + 1, 1, 1))  # exclusive
    # Personal activity window: start uniform, length up to the whole range,
    # so some customers span consecutive periods (retained) and some skip one.
    window_start = rng.integers(lo, hi, size=n_store)
    window_len = (rng.random(n_store) ** 2 * (hi - lo)).astype(np.int64) + 1
    window_end = np.minimum(window_start + window_len, hi)
    u = rng.random(total)
    ts = window_start[owner] + (u * (window_end - window_start)[owner]).astype(np.int64)

    # Period edges: ~6% year edges, ~6% month/quarter edges.
    year_edges, other_edges = _boundary_instants(first_year, last_year)
    pick = rng.random(total)
    at_year_edge = pick < 0.06
    at_other_edge = (pick >= 0.06) & (pick < 0.12)
    ts[at_year_edge] = rng.choice(year_edges, size=int(at_year_edge.sum()))
    ts[at_other_edge] = rng.choice(other_edges, size=int(at_other_edge.sum()))
    ts = np.clip(ts, lo, hi - 1)

    # Sort within store-customer, then make ~10% of orders tie with the
    # previous order of the same store-customer.
    order = np.lexsort((ts, owner))
    ts = ts[order]
    same_owner_as_prev = np.zeros(total, dtype=bool)
    same_owner_as_prev[1:] = owner[1:] == owner[:-1]
    tie = same_owner_as_prev & (rng.random(total) < 0.10)
    # A run of ties takes the timestamp of the order that starts it.
    anchor = np.maximum.accumulate(np.where(tie, 0, np.arange(total)))
    ts = ts[anchor]

    amount = np.round(rng.lognormal(mean=8.0, sigma=1.2, size=total)).astype(np.int64)
    amount[rng.random(total) < 0.08] = 0
    big = rng.random(total) < 0.005
    amount[big] = rng.integers(10**9, 10**11, size=int(big.sum()))

    columns = {
        "merchant_id": order_merchant,
        "customer_id": order_customer,
        "order_ts": ts,
        "amount": amount,
    }
    reward_values = reward_mask = None
    if reward:
        r = rng.random(total)
        reward_values = r < 0.3
        reward_mask = r > 0.85  # ~15% null

    # Stable sort by (merchant_id, customer_id, order_ts): lexsort is stable.
    final = np.lexsort((columns["order_ts"], columns["customer_id"], columns["merchant_id"]))
    arrays = {
        "merchant_id": pa.array(columns["merchant_id"][final], pa.int64()),
        "customer_id": pa.array(columns["customer_id"][final], pa.int64()),
        "order_ts": pa.array(columns["order_ts"][final], pa.timestamp("us", tz="UTC")),
        "amount": pa.array(columns["amount"][final], pa.int64()),
    }
    if reward:
        arrays["reward"] = pa.array(
            reward_values[final], pa.bool_(), mask=reward_mask[final]
        )
    return pa.table(arrays)


def make_merchants(
    orders: pa.Table,
    seed: int,
    *,
    omit_fraction: float = 0.2,
    null_industry_fraction: float = 0.1,
) -> pa.Table:
    """A SPEC §2 merchants table for the merchants in `orders`, leaving out
    about `omit_fraction` of them (they become industry "unknown") and with
    a null industry for some others."""
    rng = np.random.default_rng(seed)
    ids = np.unique(orders.column("merchant_id").to_numpy())
    kept = ids[rng.random(len(ids)) >= omit_fraction]
    if len(kept) == len(ids) and len(ids) > 1:
        kept = kept[1:]  # always omit at least one merchant
    industries = np.array(["apparel", "beauty", "food", "home", "sports"])
    countries = np.array(["US", "GB", "DE", "JP", "BR"])
    industry = rng.choice(industries, size=len(kept))
    null_industry = rng.random(len(kept)) < null_industry_fraction
    perm = rng.permutation(len(kept))  # shuffled: join must not rely on order
    return pa.table(
        {
            "merchant_id": pa.array(kept[perm], pa.int64()),
            "industry": pa.array(industry[perm], pa.string(), mask=null_industry[perm]),
            "country": pa.array(rng.choice(countries, size=len(kept))[perm], pa.string()),
            "annual_fee": pa.array(rng.integers(0, 10**7, size=len(kept)), pa.int64()),
        }
    )
