"""finalize's fast paths against the slow, obvious computation they replace.

``combine``/``finalize`` skip work when partials are already sorted with
one row per (merchant, period) (one state's output; ``by=["merchant"]``),
sum only the groups of more than one row (the merchants split between
threads), sort a few sorted runs with one stable argsort, and find the
previous period by looking a few rows back. Each is checked here against
``np.lexsort`` / ``np.add.reduceat`` / a dict lookup, and the whole table
against the same partials taken apart (shuffled, split into pieces) so that
every slow path runs too. The end-to-end oracle (``reference.py`` at 1-3
threads and any chunk size) is in test_properties.py.
"""
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

import loyaltymetrics as lm
from loyaltymetrics import finalize as fin
from loyaltymetrics.errors import AmountOverflowError
from loyaltymetrics.inputs import read_merchants
from loyaltymetrics.scan import PARTIAL_COLUMNS, Partials

from reference import assert_tables_match, reference_columns, reference_compute
from strategies import orders_and_merchants

ORDERS = PARTIAL_COLUMNS.index("orders")


def _starts(sizes):
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)


@given(sizes=st.lists(st.sampled_from([1, 1, 1, 1, 2, 3, 7]), min_size=1, max_size=60),
       width=st.sampled_from([None, 1, 3]), shuffle=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_sum_groups_is_reduceat(sizes, width, shuffle, seed):
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    values = rng.integers(-10**6, 10**6, n if width is None else (n, width))
    starts = _starts(sizes)
    order = rng.permutation(n) if shuffle else None
    grouped = values if order is None else values[order]
    expected = np.add.reduceat(grouped, starts, axis=0)
    actual = fin.sum_groups(values, starts, "orders", order)
    assert actual.dtype == expected.dtype and np.array_equal(actual, expected)


@pytest.mark.parametrize("sizes", [[1] * 36 + [4], [4] * 10, [1, 1, 4, 1, 1, 1, 1, 1, 1]])
@pytest.mark.parametrize("overflows", [False, True])
def test_sum_groups_raises_exactly_when_a_sum_leaves_int64(sizes, overflows):
    """Groups of four rows of 2**61: 2**63 is one past int64; with one row 2**61 - 1 the sum is int64's max."""
    n = sum(sizes)
    values = np.full((n, 2), 2**61, dtype=np.int64)
    values[:, 1] = -(2**61)
    if not overflows:
        values[_starts(sizes) + np.array(sizes) - 1, 0] = 2**61 - 1
    expected = [[sum(int(v) for v in values[a:a + s, k]) for k in range(2)] for a, s in zip(_starts(sizes), sizes)]
    assert any(not -2**63 <= e < 2**63 for row in expected for e in row) == overflows
    if overflows:
        with pytest.raises(AmountOverflowError):
            fin.sum_groups(values, _starts(sizes), "orders")
    else:
        assert fin.sum_groups(values, _starts(sizes), "orders").tolist() == expected


def test_sum_groups_of_one_row_each_never_overflows():
    values = np.array([[2**63 - 1, -2**63]] * 5, dtype=np.int64)
    assert np.array_equal(fin.sum_groups(values, np.arange(5), "orders"), values)


def test_sum_groups_of_nothing():
    assert fin.sum_groups(np.zeros((0, 3), np.int64), np.zeros(0, np.intp), "orders").shape == (0, 3)


@given(keys=st.lists(st.tuples(st.integers(-3, 3), st.integers(0, 3)), max_size=40),
       huge=st.booleans(), presort=st.booleans())
def test_sort_order_is_lexsort(keys, huge, presort):
    if presort:
        keys = sorted(keys)
    a = np.array([k[0] for k in keys], dtype=np.int64) * (2**61 if huge else 1)   # huge: no single key
    b = np.array([k[1] for k in keys], dtype=np.int32)
    order = fin.sort_order((a, b))
    expected = np.lexsort((b, a))
    if order is None:
        assert np.array_equal(expected, np.arange(len(keys)))
    else:
        assert np.array_equal(order, expected)
    if presort:
        assert order is None


def _random_partials(rng, n_merchants=30, n_periods=6, period_base=51):
    rows = [(m, p) for m in range(n_merchants) for p in range(n_periods) if rng.random() < 0.6]
    merchant = np.array([r[0] * 7 for r in rows], dtype=np.int64)
    period = np.array([period_base + r[1] for r in rows], dtype=np.int32)
    counts = rng.integers(0, 40, (len(rows), len(PARTIAL_COLUMNS))).astype(np.int64)
    counts[rng.random(len(rows)) < 0.1, ORDERS] = 0   # refund-only merchant-periods
    return Partials(merchant, period, counts, (612, 659), (18262, 19722))


def _pieces(rng, p, n_pieces):
    """``p`` as the concatenated output of ``n_pieces`` states: each sorted, their counts adding up to ``p``'s."""
    owner = rng.integers(0, n_pieces, len(p.counts))     # the state with the rest of the row's counts
    takes = [(owner == k) | (rng.random(len(p.counts)) < 0.3) for k in range(n_pieces)]
    parts = [np.where(takes[k][:, None] & (owner != k)[:, None], rng.integers(-5, 5, p.counts.shape), 0)
             for k in range(n_pieces)]
    for k in range(n_pieces):
        parts[k][owner == k] = (p.counts - sum(parts))[owner == k]
    return Partials(np.concatenate([p.merchant_id[t] for t in takes]), np.concatenate([p.period[t] for t in takes]),
                    np.concatenate([c[t] for c, t in zip(parts, takes)]), p.month_range, p.day_range)


def _tables_equal(a, b):
    assert a.schema == b.schema and a.num_rows == b.num_rows
    for name in a.column_names:
        x, y = a.column(name).combine_chunks(), b.column(name).combine_chunks()
        assert x.equals(y), name
        if pa.types.is_floating(x.type):   # the same bits, not only the same values
            assert np.array_equal(np.asarray(x.fill_null(0)).view(np.int64), np.asarray(y.fill_null(0)).view(np.int64))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n_pieces", [1, 2, 3])
def test_combine_adds_the_pieces_of_states(seed, n_pieces):
    rng = np.random.default_rng(seed)
    whole = _random_partials(rng)
    combined = fin.combine(_pieces(rng, whole, n_pieces))
    assert np.array_equal(combined.merchant_id, whole.merchant_id)
    assert np.array_equal(combined.period, whole.period)
    assert np.array_equal(combined.counts, whole.counts)
    assert fin.combine(combined) is combined   # sorted, one row each: nothing to do


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("by", [("merchant",), (), ("industry",), ("size", "merchant"), ("country", "size")])
@pytest.mark.parametrize("period", ["year", "quarter", "month", "all"])
def test_finalize_same_table_by_every_path(seed, by, period):
    """Sorted one-row-per-group partials (the fast paths) give the table of shuffled and split ones."""
    rng = np.random.default_rng(seed)
    base = {"year": 51, "quarter": 204, "month": 612, "all": 0}[period]
    whole = _random_partials(rng, n_periods=1 if period == "all" else 14, period_base=base)
    ids = np.unique(whole.merchant_id)
    merchants = read_merchants(pa.table({
        "merchant_id": pa.array(ids[::2], pa.int64()),
        "industry": pa.array([f"i{k % 3}" for k in range(len(ids[::2]))]),
        "country": pa.array([["US", "DE"][k % 2] for k in range(len(ids[::2]))]),
        "annual_fee": pa.array(rng.integers(0, 10**5, len(ids[::2])), pa.int64()),
    }))
    expected = fin.finalize(whole, merchants, by, period, observation_start="2020-01-01")
    shuffled = rng.permutation(len(whole.merchant_id))
    for other in (Partials(whole.merchant_id[shuffled], whole.period[shuffled], whole.counts[shuffled],
                           whole.month_range, whole.day_range),
                  _pieces(rng, whole, 2), _pieces(rng, whole, 3)):
        _tables_equal(fin.finalize(other, merchants, by, period, observation_start="2020-01-01"), expected)


@given(rows=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 30)), max_size=50, unique=True),
       lag=st.sampled_from([1, 4, 12]))
def test_shift_finds_the_same_group_lag_periods_earlier(rows, lag):
    rows = sorted(rows)
    group = np.array([r[0] for r in rows], dtype=np.int64)
    period = np.array([r[1] for r in rows], dtype=np.int64)
    where = {r: i for i, r in enumerate(rows)}
    expected = [where.get((g, p - lag), -1) for g, p in rows]
    assert fin._shift(group, period, lag, "month").tolist() == expected


def test_ratio_is_zero_and_invalid_where_the_denominator_is_zero():
    values, ok = fin._ratio(np.array([1, 0, -3, 5]), np.array([0, 0, 2, 4]))
    assert ok.tolist() == [False, False, True, True]
    assert values.tolist() == [0.0, 0.0, -1.5, 1.25] and not np.signbit(values[:2]).any()


@pytest.mark.parametrize("threads", [1, 2, 3])
@given(data=orders_and_merchants(max_merchants=3, max_customers=3, max_orders=4), chunk_rows=st.integers(1, 5))
def test_tiny_tables_by_merchant_any_threads(threads, data, chunk_rows):
    """The by=["merchant"] fast paths at every thread count on tiny inputs, merchants split between threads."""
    orders, merchants = data
    for period in ("year", "month"):
        actual = lm.compute(orders, merchants, by=["merchant"], period=period, threads=threads, chunk_rows=chunk_rows)
        expected = reference_compute(orders, merchants, by=["merchant"], period=period)
        assert_tables_match(actual, expected, columns=reference_columns(["merchant"]))


def _merged(parts):
    """``_scan.merge_partials`` of ``parts`` (Partials): (merchant, period, counts) or None (-1)."""
    from loyaltymetrics import _scan

    rows = sum(len(p.merchant_id) for p in parts)
    out = np.empty(rows, np.int64), np.empty(rows, np.int32), np.empty((rows, len(PARTIAL_COLUMNS)), np.int64)
    n = _scan.merge_partials([p.merchant_id for p in parts], [p.period for p in parts],
                             [p.counts for p in parts], *out)
    return None if n < 0 else tuple(a[:n] for a in out)


@given(seed=st.integers(0, 2**32 - 1), n_pieces=st.integers(1, 5), empty=st.booleans())
def test_merge_partials_is_combine_of_the_states_pieces(seed, n_pieces, empty):
    # What scan_orders does with the states' outputs instead of concatenating them for combine.
    rng = np.random.default_rng(seed)
    whole = _random_partials(rng)
    pieces = _pieces(rng, whole, n_pieces)
    # _pieces concatenates the states' sorted runs: take them apart where the keys go back.
    key = pieces.merchant_id * 2**32 + pieces.period
    cuts = np.flatnonzero(key[1:] <= key[:-1]) + 1
    parts = [Partials(m, p, c, None) for m, p, c in zip(np.split(pieces.merchant_id, cuts),
                                                          np.split(pieces.period, cuts), np.split(pieces.counts, cuts))]
    if empty:
        parts.insert(int(rng.integers(0, len(parts) + 1)), Partials(whole.merchant_id[:0], whole.period[:0],
                                                                    whole.counts[:0], None))
    merged = _merged(parts)
    combined = fin.combine(pieces)
    assert merged is not None
    assert np.array_equal(merged[0], combined.merchant_id)
    assert np.array_equal(merged[1], combined.period)
    assert np.array_equal(merged[2], combined.counts)


def test_merge_partials_leaves_overflows_and_unsorted_parts_to_combine():
    counts = np.zeros((1, len(PARTIAL_COLUMNS)), np.int64)
    big = counts.copy()
    big[0, ORDERS] = 2**62
    one = lambda m, c: Partials(np.array([m], np.int64), np.array([0], np.int32), c, None)
    assert _merged([one(1, big), one(1, big - 1)]) is not None            # 2**63 - 1 fits
    assert _merged([one(1, big), one(1, big)]) is None                    # 2**63 does not
    with pytest.raises(AmountOverflowError):
        fin.combine(Partials(np.array([1, 1], np.int64), np.array([0, 0], np.int32), np.concatenate([big, big]), None))
    unsorted = Partials(np.array([2, 1], np.int64), np.array([0, 0], np.int32), np.zeros((2, len(PARTIAL_COLUMNS)), np.int64), None)
    assert _merged([unsorted, one(3, counts)]) is None
    repeated = Partials(np.array([1, 1], np.int64), np.array([0, 0], np.int32), np.zeros((2, len(PARTIAL_COLUMNS)), np.int64), None)
    assert _merged([repeated]) is None


@pytest.mark.parametrize("period", ["year", "month"])
def test_finalize_without_its_second_thread_and_with_an_error_on_it(period, monkeypatch):
    # The YoY columns are worked out on two threads; where the second cannot start this one does them
    # all, and an error on either is raised here (not lost with the thread).
    rng = np.random.default_rng(7)
    whole = _random_partials(rng, n_periods=14, period_base={"year": 51, "month": 612}[period])
    merchants = read_merchants(None)
    expected = fin.finalize(whole, merchants, ("merchant",), period)   # one thread
    _tables_equal(fin.finalize(whole, merchants, ("merchant",), period, threads=2), expected)
    started = []

    def refuse(self):
        started.append(self.name)
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(fin.threading.Thread, "start", refuse)
    _tables_equal(fin.finalize(whole, merchants, ("merchant",), period, threads=2), expected)
    assert started == ["loyaltymetrics-finalize"]
    monkeypatch.undo()
    yoy = fin._yoy

    def failing(values, *args):
        if values.dtype == np.int64:     # the base metrics (the second thread starts with them)
            raise MemoryError("no memory for the YoY")
        return yoy(values, *args)

    monkeypatch.setattr(fin, "_yoy", failing)
    for threads in (1, 2):
        with pytest.raises(MemoryError, match="no memory for the YoY"):
            fin.finalize(whole, merchants, ("merchant",), period, threads=threads)
