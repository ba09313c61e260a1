"""The compute kernel at 64-row block edges (issue 16: a block kernel).

A kernel that works on blocks of 64 rows (masks one bit a row, a scalar
fallback for blocks with a new merchant or a bad row) has its edge cases
where these tables put them: merchant changes, run and store-customer
boundaries, period changes, huge amounts and bad rows at rows 63/64/65 and
127/128, blocks of one store-customer or of all-distinct ones. The result
must be the reference's and the Numba twin's (which scans row by row), and
a bad row's error (type, row) the one at the defect's row.
"""
from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import loyaltymetrics as lm
from reference import assert_tables_match, reference_columns, reference_compute

EDGES = [1, 62, 63, 64, 65, 66, 127, 128, 129, 191, 192]
UNIT_PER_S = {"s": 1, "ms": 1000, "us": 10**6}
# Period boundaries nearby (year, quarter, month), so runs cross periods inside a block.
ANCHORS = [dt.datetime(2021, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc),
           dt.datetime(2022, 3, 31, 12, tzinfo=dt.timezone.utc),
           dt.datetime(2022, 1, 2, 23, 59, 58, tzinfo=dt.timezone.utc)]
GAPS_S = [0, 0, 1, 3600, 86_400, 40 * 86_400, 400 * 86_400]


@st.composite
def block_orders(draw):
    """A sorted orders table of 1..260 rows whose boundaries fall on block edges."""
    n = draw(st.sampled_from([63, 64, 65, 127, 128, 129, 192, 193, 256]) | st.integers(1, 260))
    key_type = draw(st.sampled_from([pa.int32(), pa.int64()]))
    customer_type = draw(st.sampled_from([pa.int32(), pa.int64()]))
    unit = draw(st.sampled_from(["s", "ms", "us", "date32"]))
    shape = draw(st.sampled_from(["one", "distinct", "mixed", "edges"]))
    cuts = sorted(set(draw(st.lists(st.sampled_from(EDGES) | st.integers(1, n), max_size=3))) - {n})
    cuts = [c for c in cuts if 0 < c < n]
    # Store-customer starts.
    if shape == "one":
        starts = set()
    elif shape == "distinct":
        starts = set(range(n))
    elif shape == "edges":
        starts = set(draw(st.lists(st.sampled_from(EDGES), max_size=4)))
    else:
        starts, row = set(), 0
        while row < n:
            starts.add(row)
            row += draw(st.integers(1, 6))
    starts |= set(cuts) | {0}
    rewards = draw(st.sampled_from(["none", "all", "mixed", "nulls"]))
    huge = draw(st.sampled_from([False, False, True]))
    merchant, customer, ts, amount, reward = [], [], [], [], []
    m, c, t = 5, 1000, ANCHORS[0]
    for row in range(n):
        if row in cuts:
            m += draw(st.integers(1, 3))
            c = 1000
        if row in starts:
            c += draw(st.integers(1, 3)) if row not in cuts else 0
            t = draw(st.sampled_from(ANCHORS)) + dt.timedelta(seconds=draw(st.sampled_from(GAPS_S)) - 86_400)
        else:
            t = t + dt.timedelta(seconds=draw(st.sampled_from(GAPS_S)))
        merchant.append(m)
        customer.append(c)
        ts.append(t)
        if huge and draw(st.integers(0, 5)) == 0:
            amount.append(draw(st.sampled_from([2**56 - 1, 2**56, 2**60, 2**62, 2**63 - 1])))
        else:
            amount.append(draw(st.integers(0, 10_000)))
        if rewards == "mixed":
            reward.append(draw(st.booleans()))
        elif rewards == "nulls":
            reward.append(draw(st.sampled_from([True, False, None])))
        else:
            reward.append(rewards == "all")
    if unit == "date32":
        ts_array = pa.array([x.date() for x in ts], pa.date32())
    else:
        ts_array = pa.array([int(x.timestamp()) * UNIT_PER_S[unit] for x in ts], pa.int64()).cast(
            pa.timestamp(unit, tz="UTC"))
    return pa.table({
        "merchant_id": pa.array(merchant, key_type),
        "customer_id": pa.array(customer, customer_type),
        "order_ts": ts_array,
        "amount": pa.array(amount, pa.int64()),
        "reward": pa.array(reward, pa.bool_()),
    })


def _outcome(orders, **kwargs):
    try:
        return lm.compute(orders, **kwargs)
    except lm.InputError as error:
        return type(error), error.row


PERIODS = st.sampled_from(["year", "quarter", "month", "all"])


@settings(deadline=None, max_examples=150)
@given(orders=block_orders(), period=PERIODS)
def test_blocks_match_the_reference_and_the_row_by_row_twin(orders, period):
    actual = _outcome(orders, period=period, threads=1)
    twin = _outcome(orders, period=period, threads=1, engine="numba")
    if isinstance(actual, pa.Table):
        assert isinstance(twin, pa.Table) and actual.equals(twin)
        assert_tables_match(actual, reference_compute(orders, None, period=period),
                            columns=reference_columns(()))
    else:
        assert actual == twin


@settings(deadline=None, max_examples=100)
@given(orders=block_orders(), period=PERIODS, by=st.sampled_from([[], ["merchant"]]))
def test_blocks_grouped_by_merchant_match_the_reference(orders, period, by):
    actual = _outcome(orders, period=period, by=by, threads=1)
    if isinstance(actual, pa.Table):
        assert_tables_match(actual, reference_compute(orders, None, by=by, period=period),
                            columns=reference_columns(by))


@settings(deadline=None, max_examples=150)
@given(orders=block_orders(), row=st.sampled_from([0, 1, 62, 63, 64, 65, 127, 128, 129]),
       kind=st.sampled_from(["negative", "late", "unsorted"]), period=PERIODS)
def test_a_bad_row_at_a_block_edge_is_reported_at_its_row(orders, row, kind, period):
    n = orders.num_rows
    if row >= n or max(orders.column("amount").to_pylist()) >= 2**56:
        return
    columns = {name: orders.column(name).to_pylist() for name in orders.column_names}
    types = {field.name: field.type for field in orders.schema}
    if kind == "negative":
        columns["amount"][row] = -1
        expected = lm.NegativeAmountError
    elif kind == "late":
        if types["order_ts"] == pa.date32():
            columns["order_ts"][row] = dt.date(1969, 12, 31)
        else:
            columns["order_ts"][row] = None
        expected = lm.TimestampRangeError
    else:
        if row == 0:
            return
        if columns["merchant_id"][row] != columns["merchant_id"][row - 1]:
            columns["merchant_id"][row] = columns["merchant_id"][row - 1] - 1
        elif columns["customer_id"][row] != columns["customer_id"][row - 1]:
            columns["customer_id"][row] = columns["customer_id"][row - 1] - 1
        else:
            columns["order_ts"][row] = columns["order_ts"][row - 1] - dt.timedelta(days=1)
        expected = lm.UnsortedInputError
    arrays = []
    for name, values in columns.items():
        if name == "order_ts" and None in values:
            raw = orders.column("order_ts").cast(pa.int64()).to_pylist()
            raw[row] = 2**63 - 1
            arrays.append(pa.array(raw, pa.int64()).cast(types[name]))
        else:
            arrays.append(pa.array(values, types[name]))
    bad = pa.table(arrays, names=list(columns))
    actual = _outcome(bad, period=period, threads=1)
    assert actual == (expected, row)
    assert _outcome(bad, period=period, threads=1, engine="numba") == actual


@pytest.mark.parametrize("n", [63, 64, 65, 127, 128, 129, 1000])
@pytest.mark.parametrize("period", ["year", "month"])
def test_one_customer_and_all_distinct_customers_over_whole_blocks(n, period):
    start = int(dt.datetime(2021, 6, 1, tzinfo=dt.timezone.utc).timestamp())
    for customers in ([7] * n, list(range(n))):
        orders = pa.table({
            "merchant_id": pa.array([3] * n, pa.int64()),
            "customer_id": pa.array(customers, pa.int64()),
            "order_ts": pa.array([start + 86_400 * 9 * i for i in range(n)], pa.timestamp("s", tz="UTC")),
            "amount": pa.array([i % 97 for i in range(n)], pa.int64()),
            "reward": pa.array([i % 5 == 0 for i in range(n)], pa.bool_()),
        })
        actual = lm.compute(orders, period=period, threads=1)
        assert_tables_match(actual, reference_compute(orders, None, period=period),
                            columns=reference_columns(()))
        assert actual.equals(lm.compute(orders, period=period, threads=1, engine="numba"))


# The block path (kernels/_scan.pyx lm_block) takes 64 rows of one merchant that start with a
# run, adds rows [0, L) where L is where the last run of the 64 starts, and gives the rows back
# to the row loop on a bad row, an overflow, or one run over all 64. These tables put runs of
# 1, 2, 62, 63, 64 and 65 rows, rewards and period changes where those decisions fall.
SEGMENT_LENGTHS = [1, 1, 2, 3, 62, 63, 64, 65]
MONTH_S = 31 * 86_400


@st.composite
def run_segments(draw):
    """A sorted table (one or two merchants) built from segments of one store-customer each.

    A segment is ``length`` orders of one customer, all in one month ("run"), each in its own
    month ("spread": a run a row) or months apart and years apart ("far": more than 64
    periods between neighbours in a block). Rewards: none, all, at the segment's first or
    last row, or random. Amounts: small, or near 2^63 / 64 in one segment, so that a revenue
    sum overflows inside a block.
    """
    segments = draw(st.lists(st.tuples(st.sampled_from(SEGMENT_LENGTHS),
                                       st.sampled_from(["run", "spread", "far"]),
                                       st.sampled_from(["none", "all", "first", "last", "random"])),
                             min_size=1, max_size=8))
    start = draw(st.integers(0, 3))              # rows of an earlier merchant, to shift block edges
    huge = draw(st.sampled_from([None, None, 2**57, 2**58 + 1, 2**62]))
    huge_segment = draw(st.integers(0, len(segments) - 1))
    base = int(dt.datetime(2015, 1, 1, tzinfo=dt.timezone.utc).timestamp())
    merchant, customer, ts, amount, reward = [], [], [], [], []
    for row in range(start):
        merchant.append(1)
        customer.append(row)
        ts.append(base + row)
        amount.append(row)
        reward.append(False)
    for number, (length, shape, rewards) in enumerate(segments):
        month0 = draw(st.integers(0, 100))
        for k in range(length):
            if shape == "run":
                t = base + month0 * MONTH_S + k
            elif shape == "spread":
                t = base + (month0 + k) * MONTH_S
            else:
                t = base + (month0 + 70 * k) * MONTH_S // 4
            merchant.append(2)
            customer.append(10 + number)
            ts.append(t)
            amount.append(huge if huge and number == huge_segment else draw(st.integers(0, 1000)))
            reward.append({"none": False, "all": True, "first": k == 0, "last": k == length - 1}.get(
                rewards, None) if rewards != "random" else draw(st.booleans()))
    return pa.table({
        "merchant_id": pa.array(merchant, pa.int64()),
        "customer_id": pa.array(customer, draw(st.sampled_from([pa.int32(), pa.int64()]))),
        "order_ts": pa.array(ts, pa.timestamp("s", tz="UTC")),
        "amount": pa.array(amount, pa.int64()),
        "reward": pa.array(reward, pa.bool_()),
    })


@settings(deadline=None, max_examples=200)
@given(orders=run_segments(), period=PERIODS)
def test_runs_at_block_edges_match_the_reference_and_the_twin(orders, period):
    actual = _outcome(orders, period=period, threads=1)
    twin = _outcome(orders, period=period, threads=1, engine="numba")
    if isinstance(actual, pa.Table):
        assert isinstance(twin, pa.Table) and actual.equals(twin)
        # Amounts near 2^57 leave ratios like aov_yoy at float round-off (1e-14 against an exact
        # 7e-14): finalize's floats, not the kernel's partials; the twin checks those exactly.
        if max(orders.column("amount").to_pylist()) < 2**40:
            assert_tables_match(actual, reference_compute(orders, None, period=period),
                                columns=reference_columns(()))
    else:
        assert actual == twin


@settings(deadline=None, max_examples=300)
@given(prefix=st.integers(0, 70), row=st.integers(0, 130),
       kind=st.sampled_from(["negative", "late", "early", "customer", "order_ts", "merchant"]),
       period=st.sampled_from(["year", "month"]))
def test_a_bad_row_anywhere_in_a_block_is_reported_at_its_row(prefix, row, kind, period):
    """Every row position of the first two blocks (after ``prefix`` rows of another merchant)."""
    n = prefix + 140
    base = int(dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc).timestamp())
    merchant = [1] * prefix + [2] * (n - prefix)
    customer = list(range(prefix)) + [100 + k // 3 for k in range(n - prefix)]
    ts = [base + k for k in range(prefix)] + [base + 86_400 * 13 * (k % 3) + k for k in range(n - prefix)]
    amount = [k % 50 for k in range(n)]
    row = prefix + row if prefix + row < n else n - 1
    if kind == "negative":
        amount[row] = -1
        expected = lm.NegativeAmountError
    elif kind == "late":
        ts[row] = 2**62
        expected = lm.TimestampRangeError
    elif kind == "early":
        ts[row] = -86_400
        expected = lm.TimestampRangeError
    else:
        if row == 0:
            return
        expected = lm.UnsortedInputError
        if kind == "merchant" or merchant[row] != merchant[row - 1]:
            merchant[row] = merchant[row - 1] - 1
        elif kind == "customer" or customer[row] != customer[row - 1]:
            customer[row] = customer[row - 1] - 1
        else:
            ts[row] = ts[row - 1] - 1
    orders = pa.table({
        "merchant_id": pa.array(merchant, pa.int64()),
        "customer_id": pa.array(customer, pa.int64()),
        "order_ts": pa.array(ts, pa.int64()).cast(pa.timestamp("s", tz="UTC")),
        "amount": pa.array(amount, pa.int64()),
        "reward": pa.array([k % 7 == 0 for k in range(n)], pa.bool_()),
    })
    actual = _outcome(orders, period=period, threads=1)
    assert actual == (expected, row)
    assert _outcome(orders, period=period, threads=1, engine="numba") == actual


# The few-period block (kernels/_scan.pyx lm_block_body, `few`): a block whose timestamps lie in
# at most four periods finds each row's period by comparing it with the ends of the block's
# first three periods (ScanState.ends, from period_ends) and does its counts as popcounts, its
# revenue as masked sums, in an AVX2 copy and a scalar one. These tables put every row on a
# local period boundary (the last unit of a period, the first of the next) in zones with odd
# offsets and DST, with blocks over 1 to 6 periods and amounts at the 2^57 gate. Blocks over more
# periods (month boundaries every month: 6 to 16 and more periods a block) take the many-period
# block path, whose packed words are computed four rows a step in AVX2 (lm_packed_avx2) or row by
# row in the scalar copy; rewards on the first or last row of each customer's orders put member
# runs at run and block edges.
EDGE_ZONES = ["UTC", "America/New_York", "Asia/Tokyo", "Australia/Lord_Howe", "Pacific/Chatham",
              "Asia/Kathmandu", "Pacific/Kiritimati", "America/St_Johns"]
UNITS_PER_S = {"s": 1, "ms": 1000, "us": 10**6}


def _local_starts(zone, unit, years, months):
    """The first unit (in `unit`, since the epoch) of each local month `months` of `years` in `zone`."""
    import zoneinfo

    starts = []
    for year in years:
        for month in months:
            if unit == "date32":        # a date is its own period in every zone (UTC tables)
                starts.append((dt.date(year, month, 1) - dt.date(1970, 1, 1)).days)
            else:
                local = dt.datetime(year, month, 1, tzinfo=zoneinfo.ZoneInfo(zone))
                starts.append(int(local.timestamp()) * UNITS_PER_S[unit])
    return starts


@st.composite
def period_edge_orders(draw):
    """(orders, merchants): one or two merchants, each in its zone, timestamps on local boundaries."""
    unit = draw(st.sampled_from(["s", "ms", "us", "date32"]))
    n = draw(st.sampled_from([64, 65, 127, 128, 129, 200]) | st.integers(1, 260))
    split = draw(st.sampled_from([0, 0, 1, 63, 64, 65]) | st.integers(0, n))
    zones = {1: draw(st.sampled_from(EDGE_ZONES)), 2: draw(st.sampled_from(EDGE_ZONES))}
    year0 = draw(st.integers(2019, 2022))
    span = draw(st.sampled_from([0, 1, 1, 2, 3, 4, 5]))     # years of boundaries: 1..6 periods a block
    months = draw(st.sampled_from([[1], [1], [1, 4, 7, 10], [1, 3, 11], list(range(1, 13))]))
    huge = draw(st.sampled_from([False, False, True]))
    rewards = draw(st.sampled_from(["none", "mixed", "all", "edges"]))
    merchant, customer, ts, amount, reward = [], [], [], [], []
    points = {}
    for m, zone in zones.items():
        starts = _local_starts(zone, unit, range(year0, year0 + span + 1), months)
        near = [b + d for b in starts for d in (-1, 0, 1)]
        points[m] = sorted(set(near + [starts[0] - 2, starts[-1] + 5]))
    row, c = 0, 100
    while row < n:
        m = 1 if row < split else 2
        length = min(draw(st.sampled_from([1, 1, 2, 3, 5, 8, 63, 64, 65])), n - row)
        if row < split:
            length = min(length, split - row)
        c += 1
        for k, t in enumerate(sorted(draw(st.lists(st.sampled_from(points[m]), min_size=length,
                                                   max_size=length)))):
            merchant.append(m)
            customer.append(c)
            ts.append(t)
            if huge and draw(st.integers(0, 4)) == 0:
                amount.append(draw(st.sampled_from([2**56, 2**57 - 1, 2**57, 2**58])))
            else:
                amount.append(draw(st.integers(0, 10_000)))
            reward.append(rewards == "all" or (rewards == "mixed" and draw(st.booleans()))
                          or (rewards == "edges" and k in (0, length - 1)))
        row += length
    if unit == "date32":
        ts_array = pa.array(ts, pa.int32()).cast(pa.date32())
    else:
        ts_array = pa.array(ts, pa.int64()).cast(pa.timestamp(unit, tz="UTC"))
    orders = pa.table({
        "merchant_id": pa.array(merchant, pa.int64()),
        "customer_id": pa.array(customer, draw(st.sampled_from([pa.int32(), pa.int64()]))),
        "order_ts": ts_array,
        "amount": pa.array(amount, pa.int64()),
        "reward": pa.array(reward, pa.bool_()),
    })
    merchants = pa.table({
        "merchant_id": pa.array([1, 2], pa.int64()),
        "industry": pa.array(["retail"] * 2),
        "country": pa.array(["XX"] * 2),
        "annual_fee": pa.array([0, 0], pa.int64()),
        "timezone": pa.array([zones[1], zones[2]], pa.string()),
    })
    return orders, merchants


@settings(deadline=None, max_examples=150)
@given(case=period_edge_orders(), period=st.sampled_from(["year", "year", "quarter", "month"]))
def test_blocks_on_local_period_boundaries_match_the_twin_and_the_reference(case, period):
    orders, merchants = case
    _agrees_with_the_scalar_copy_the_twin_and_the_reference(orders, merchants, period)


def _agrees_with_the_scalar_copy_the_twin_and_the_reference(orders, merchants, period):
    """The table (or the error) of the block kernel equals the scalar copy's (``_use_avx2(False)``), the
    Numba twin's and, where no sum nears int64's edge, the reference's."""
    from loyaltymetrics import _scan

    actual = _outcome(orders, merchants=merchants, period=period, threads=1)
    twin = _outcome(orders, merchants=merchants, period=period, threads=1, engine="numba")
    was = _scan._use_avx2(False)          # the scalar copy of the mask functions
    try:
        scalar = _outcome(orders, merchants=merchants, period=period, threads=1)
    finally:
        _scan._use_avx2(was)
    if isinstance(actual, pa.Table):
        assert isinstance(twin, pa.Table) and actual.equals(twin) and actual.equals(scalar)
        if max(orders.column("amount").to_pylist()) < 2**40:
            assert_tables_match(actual, reference_compute(orders, merchants, period=period),
                                columns=reference_columns(()))
    else:
        assert actual == twin == scalar


@pytest.mark.parametrize("units_per_day", [1, 86_400, 86_400_000, 86_400_000_000])
@pytest.mark.parametrize("period", ["year", "quarter", "month", "all"])
def test_period_ends_give_every_timestamp_the_tables_period(units_per_day, period):
    import numpy as np

    from loyaltymetrics import _scan, periods

    zones = periods.MerchantZones(tuple(EDGE_ZONES), np.arange(len(EDGE_ZONES), dtype=np.int64),
                                  np.arange(len(EDGE_ZONES), dtype=np.int32))
    tables = periods.period_tables(period, units_per_day, zones)
    shift, ts_max = periods.bucket_shift(units_per_day), periods.ts_max(units_per_day)
    ends = _scan.period_ends(tables, shift, ts_max, periods.n_periods(period))
    assert ends is not None
    rng = np.random.default_rng(16)
    for z, zone in enumerate(EDGE_ZONES):
        # Each local month start and the unit before it, the first and last valid unit, random units.
        starts = np.array([s for s in _local_starts(zone, "s", range(1970, 2262), range(1, 13))], np.int64)
        starts = starts * units_per_day // 86_400
        t = np.concatenate([starts, starts - 1, [0, ts_max], rng.integers(0, ts_max, 5000)])
        t = t[(t >= 0) & (t <= ts_max)]
        b = (t >> shift)
        expected = tables[z, b, 0] + (t > tables[z, b, 1])
        assert np.array_equal(np.searchsorted(ends[z], t, "left"), expected)
    # A table the ends cannot reproduce gets no ends (the block path then looks periods up).
    bad = tables.copy()
    bad[0, 100, 0] = bad[0, 100, 0] + 1
    assert _scan.period_ends(bad, shift, ts_max, periods.n_periods(period) + 1) is None


@st.composite
def member_heavy_orders(draw):
    """A sorted table of one merchant whose blocks are few-period blocks full of member runs.

    Customers of 1 to 3 runs (1 to 5 orders each) in years 2019..2023 (1 to 5 "year" periods a
    block), each run a member run with probability `density` (its reward rows: all, the first,
    the last or random), so a period of a block has 0 to 60 member rows and reward rows: the
    AVX2 copy sums them eight (members) or four (rewards) set bits a step, and steps past the
    last bit are taken back. Amounts small, or all just under 2^57 (the few-period path's gate:
    a period's member sum near 2^63), or mixed.
    """
    n = draw(st.sampled_from([64, 65, 128, 129, 200]) | st.integers(64, 260))
    density = draw(st.sampled_from([0.0, 1.0, 1.0, 0.9, 0.5, 0.1]))
    years = draw(st.sampled_from([[2021], [2020, 2021], [2019, 2021, 2023], [2019, 2020, 2021, 2022, 2023]]))
    amounts = draw(st.sampled_from(["small", "huge", "mixed"]))
    merchant, customer, ts, amount, reward = [], [], [], [], []
    c = 100
    while len(ts) < n:
        c += draw(st.integers(1, 2))
        runs = sorted(draw(st.lists(st.sampled_from(years), min_size=1, max_size=3, unique=True)))
        for year in runs:
            length = draw(st.integers(1, 5))
            member = draw(st.floats(0, 1)) < density
            where = draw(st.sampled_from(["all", "first", "last", "random"]))
            t0 = int(dt.datetime(year, 1, 1, tzinfo=dt.timezone.utc).timestamp()) + draw(st.integers(0, 10**6))
            for k in range(length):
                merchant.append(7)
                customer.append(c)
                ts.append(t0 + 86_400 * k)
                if amounts == "huge" or (amounts == "mixed" and draw(st.booleans())):
                    amount.append(2**57 - 1 - draw(st.integers(0, 3)))
                else:
                    amount.append(draw(st.integers(0, 10_000)))
                reward.append(member and {"all": True, "first": k == 0, "last": k == length - 1}.get(
                    where, draw(st.booleans()) or k == 0))
    return pa.table({
        "merchant_id": pa.array(merchant, pa.int64()),
        "customer_id": pa.array(customer, draw(st.sampled_from([pa.int32(), pa.int64()]))),
        "order_ts": pa.array(ts, pa.int64()).cast(pa.timestamp("s", tz="UTC")),
        "amount": pa.array(amount, pa.int64()),
        "reward": pa.array(reward, pa.bool_()),
    })


@settings(deadline=None, max_examples=200)
@given(orders=member_heavy_orders(), period=st.sampled_from(["year", "year", "quarter"]))
def test_member_and_reward_revenue_of_few_period_blocks_match_the_scalar_copy_and_the_twin(orders, period):
    """Member and reward revenue as sums over set bits (AVX2 copy) against the scalar copy's
    bit loops, the row-by-row twin and the reference, with 0 to all rows members and rewards."""
    _agrees_with_the_scalar_copy_the_twin_and_the_reference(orders, None, period)
