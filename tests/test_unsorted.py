"""Rows in any order (SPEC §8 ``presorted=False``): bit-identical to the presorted path.

The oracle is the presorted path (itself tested against the reference in
test_engines / test_analyses / test_rfm) run on the shuffled rows sorted by
Python's stable ``sorted`` — so ties keep the shuffled input's order, the
order ``presorted=False`` must keep. Memory limits from tiny (every batch
spills, pieces are partitioned again) to the default (in memory).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import loyaltymetrics as lm
from loyaltymetrics import unsorted
from strategies import REFUND_AMOUNTS, bys, orders_and_merchants, orders_tables, rebatch

ENGINES = ["cython", "numba"]
THREADS = [1, 2, 3]
# 50 bytes: every batch spills and pieces are partitioned again; 3000: some pieces; None: in memory.
MEMORY_LIMITS = st.sampled_from([50, 600, 3000, None])


def _stable_sorted(table):
    """``table`` sorted by (merchant_id, customer_id, order_ts) with Python's stable sort."""
    keys = list(zip(*(table.column(c).cast(pa.int64() if c != "order_ts" else pa.int64()).to_pylist()
                      if c != "order_ts" else _raw(table.column(c)) for c in ("merchant_id", "customer_id", "order_ts"))))
    order = sorted(range(table.num_rows), key=lambda i: keys[i])
    return table.take(pa.array(order, pa.int64()))


def _raw(column):
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    width = column.type.bit_width
    return column.view(pa.int64() if width == 64 else pa.int32()).to_pylist()


@st.composite
def shuffled(draw, **kwargs):
    """(shuffled orders, the same rows sorted stably, merchants or None, permutation)."""
    orders, merchants = draw(orders_and_merchants(**kwargs))
    perm = draw(st.permutations(range(orders.num_rows)))
    shuffled = orders.take(pa.array(perm, pa.int64())) if orders.num_rows else orders
    shuffled = rebatch(shuffled, draw(st.integers(1, 40)))
    return shuffled, _stable_sorted(shuffled) if orders.num_rows else orders, merchants


@pytest.fixture
def spill_dir(tmp_path, monkeypatch):
    """TMPDIR of the test: must be empty again after every call."""
    spill = tmp_path / "spill"
    spill.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill))
    yield spill
    assert os.listdir(spill) == []


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("engine", ENGINES)
@settings(deadline=None, max_examples=25)
@given(data=shuffled(max_customers=6), by=bys(), period=st.sampled_from(["year", "month", "all"]),
       memory_limit=MEMORY_LIMITS, refunds=st.booleans(), small=st.booleans())
def test_compute_of_shuffled_rows_is_the_presorted_result(data, by, period, memory_limit, refunds, small, engine,
                                                          threads):
    rows, sorted_rows, merchants = data
    if not refunds and rows.num_rows and pa.compute.any(pa.compute.less(rows["amount"], 0)).as_py():
        return
    expected = lm.compute(sorted_rows, merchants, by=by, period=period, refunds=refunds, threads=1)
    # small: buckets and units of a few rows, no allowance for the interpreter in memory_limit (600 and
    # 3000 bytes then hold some batches in memory beside spilled ones).
    with _small_buckets(small):
        actual = lm.compute(rows, merchants, by=by, period=period, refunds=refunds, engine=engine, threads=threads,
                            chunk_rows=7, presorted=False, memory_limit=memory_limit)
    assert actual.equals(expected)


@contextlib.contextmanager
def _small_buckets(small=True):
    if not small:
        yield
        return
    with mock.patch.multiple(unsorted, BUCKET_ROWS=3, UNIT_ROWS=5, OVERHEAD_BYTES=0, COPY_BYTES=64):
        yield


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("engine", ENGINES)
@settings(deadline=None, max_examples=20)
@given(data=shuffled(max_customers=6, amounts=REFUND_AMOUNTS), by=bys(), memory_limit=MEMORY_LIMITS,
       analysis=st.sampled_from(["cohorts", "concentration"]), small=st.booleans())
def test_analyses_of_shuffled_rows_are_the_presorted_results(data, by, memory_limit, analysis, small, engine, threads):
    rows, sorted_rows, merchants = data
    function = getattr(lm, analysis)
    period = "month" if analysis == "cohorts" else "year"
    expected = function(sorted_rows, merchants, by=by, period=period, refunds=True, threads=1)
    with _small_buckets(small):
        actual = function(rows, merchants, by=by, period=period, refunds=True, engine=engine, threads=threads,
                          chunk_rows=5, presorted=False, memory_limit=memory_limit)
    assert actual.equals(expected)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("engine", ENGINES)
@settings(deadline=None, max_examples=20)
@given(data=shuffled(max_customers=6), memory_limit=MEMORY_LIMITS, freq=st.sampled_from(["D", "W", "M"]),
       include_first=st.booleans())
def test_rfm_of_shuffled_rows_is_the_presorted_result(data, memory_limit, freq, include_first, engine, threads):
    rows, sorted_rows, _ = data
    expected = lm.rfm(sorted_rows, freq, "2262-01-01", include_first, threads=1).read_all()
    actual = lm.rfm(rows, freq, "2262-01-01", include_first, engine=engine, threads=threads, chunk_rows=5,
                    presorted=False, memory_limit=memory_limit).read_all()
    assert actual.equals(expected)


@settings(deadline=None, max_examples=30)
@given(orders=orders_tables(max_merchants=5, max_customers=5, allow_empty=False), data=st.data(),
       memory_limit=MEMORY_LIMITS)
def test_a_bad_row_is_named_by_its_row_in_the_input(orders, data, memory_limit):
    """The first bad row *of the input* (not of the sorted copy) is named, as the presorted path would."""
    n = orders.num_rows
    perm = data.draw(st.permutations(range(n)))
    rows = orders.take(pa.array(perm, pa.int64()))
    columns = {name: rows.column(name).to_pylist() for name in rows.column_names}
    bad = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=3))
    kind = data.draw(st.sampled_from(["negative", "late"]))
    for row in bad:
        if kind == "negative":
            columns["amount"][row] = -1 - row
    if kind == "late":   # before 1970-01-01 UTC, whatever the unit
        ts_type = rows.schema.field("order_ts").type
        raw = _raw(rows.column("order_ts"))
        for row in bad:
            raw[row] = -1 - row
        storage = pa.int32() if ts_type == pa.date32() else pa.int64()
        columns["order_ts"] = pa.array(raw, storage).view(ts_type)
    table = pa.table(columns, schema=rows.schema)
    first = min(bad)
    with pytest.raises(lm.InputError) as presorted_error:   # the presorted path, on the same rows
        lm.compute(table)
    with tempfile.TemporaryDirectory() as tmp:
        old, tempfile.tempdir = tempfile.tempdir, tmp
        try:
            with pytest.raises((lm.errors.NegativeAmountError, lm.errors.TimestampRangeError)) as error:
                lm.compute(table, presorted=False, memory_limit=memory_limit)
        finally:
            tempfile.tempdir = old
        assert os.listdir(tmp) == []
    assert error.value.row == first
    assert error.value.source == "<table>"
    assert str(table.column("amount")[first].as_py()) in str(error.value) or kind == "late"
    if presorted_error.value.row == first:   # the default path met that row first too: the same error
        assert str(error.value) == str(presorted_error.value)


def test_an_overflow_names_the_row_of_the_input(spill_dir):
    """An int64 overflow found on the sorted copy names that row's index in the input."""
    big = 2**62
    rows = pa.table({
        "merchant_id": pa.array([2, 1, 1, 1, 2], pa.int64()),
        "customer_id": pa.array([5, 5, 5, 5, 6], pa.int64()),
        "order_ts": pa.array([1, 2, 3, 4, 5], pa.timestamp("s")),
        "amount": pa.array([1, big, big, big, 1], pa.int64()),
    })
    # Sorted: input rows 1, 2, 3 (merchant 1) come first; the second of them, input row 2 at sorted
    # position 1, makes the sum 2**63, one past int64: naming the sorted position would say row 1.
    for limit in (None, 50):
        with pytest.raises(lm.errors.AmountOverflowError) as error:
            lm.compute(rows, threads=1, presorted=False, memory_limit=limit)
        assert error.value.row == 2 and error.value.source == "<table>"


def test_files_keep_their_names_and_rows_and_spill_files_go(tmp_path, spill_dir, monkeypatch):
    spills = []   # the calls' partitions that spilled (bucket path; the copy path must not be needed)
    spill = unsorted._Buckets.spill
    monkeypatch.setattr(unsorted._Buckets, "spill", lambda self, size: spills.append(self) or spill(self, size))
    monkeypatch.setattr(unsorted, "_spill_sort", None)
    rng = np.random.default_rng(7)
    n = 30_000
    table = pa.table({
        "merchant_id": rng.integers(0, 5, n), "customer_id": rng.integers(0, 500, n),
        "order_ts": pa.array(rng.integers(1_500_000_000, 1_700_000_000, n), pa.timestamp("s")),
        "amount": rng.integers(0, 10_000, n),
    })
    amount = table.column("amount").to_numpy().copy()
    amount[20_000] = -5
    bad = table.set_column(3, "amount", pa.array(amount))
    directory = tmp_path / "orders"
    directory.mkdir()
    pq.write_table(table.slice(0, 10_000), directory / "a.parquet", row_group_size=3000)
    pq.write_table(bad.slice(10_000), directory / "b.parquet", row_group_size=3000)
    with pytest.raises(lm.errors.NegativeAmountError) as error:
        lm.compute(directory, presorted=False, memory_limit=200_000)
    assert error.value.source == str(directory / "b.parquet") and error.value.row == 10_000
    good = tmp_path / "good.parquet"
    pq.write_table(table, good, row_group_size=4000)
    expected = lm.compute(_stable_sorted(table), by=["merchant"])
    for limit in (100_000, 400_000, None):
        assert lm.compute(good, by=["merchant"], presorted=False, memory_limit=limit).equals(expected)
    assert len({id(s) for s in spills}) == 3   # the bad directory and both limits spilled; the default sorts in memory


def test_the_default_path_names_the_option_for_unsorted_rows():
    rows = pa.table({"merchant_id": [2, 1], "customer_id": [1, 1],
                     "order_ts": pa.array([0, 0], pa.timestamp("s")), "amount": [1, 1]})
    with pytest.raises(lm.errors.UnsortedInputError, match="presorted=False / --unsorted"):
        lm.compute(rows)


def test_memory_limit_is_checked():
    for bad in (0, -1, 1.5, True, "1G"):
        with pytest.raises(ValueError, match="memory_limit"):
            unsorted.check_memory_limit(bad)
    assert unsorted.parse_size("4G") == 4 << 30 and unsorted.parse_size("512M") == 512 << 20
    assert unsorted.parse_size("1000") == 1000


KEYS = st.one_of(st.integers(-3, 3), st.integers(-2**63, 2**63 - 1), st.sampled_from([-2**63, 2**63 - 1, 0]))


@settings(deadline=None, max_examples=200)
@given(rows=st.lists(st.tuples(KEYS, st.integers(-3, 3) | st.integers(-2**31, 2**31 - 1), KEYS), max_size=300),
       long_runs=st.booleans())
def test_the_radix_kernels_sort_stably_as_lexsort(rows, long_runs):
    """``_sort.grouped_order`` and ``stable_order`` are ``numpy.lexsort`` (stable) of the three keys."""
    from loyaltymetrics import _sort

    if long_runs:   # store-customers of more than 64 rows: the runs numpy sorts
        rows = [(0, c % 2, t) for _, c, t in rows]
    m = np.array([r[0] for r in rows], np.int64)
    c = np.array([r[1] for r in rows], np.int32)
    t = np.array([r[2] for r in rows], np.int64)
    expected = np.lexsort((t, c, m))
    assert np.array_equal(_sort.stable_order([m, c, t]), expected)
    grouped = _sort.grouped_order(m, c, t)
    if grouped is not None:
        assert np.array_equal(grouped, expected)
    # The packed keys written over an int64 customer column (fastprep's scratch): the same order.
    c64 = c.astype(np.int64)
    overwritten = _sort.grouped_order(m, c64, t, overwrite=True)
    assert (overwritten is None) == (grouped is None)
    if grouped is not None:
        assert np.array_equal(overwritten, expected)


@pytest.mark.parametrize("radix", [True, False])
def test_the_arrow_fallback_sorts_as_the_radix_kernel(radix, monkeypatch):
    rng = np.random.default_rng(3)
    n = 5000
    table = pa.table({"merchant_id": rng.integers(0, 3, n), "customer_id": rng.integers(0, 50, n),
                      "order_ts": pa.array(rng.integers(0, 30, n), pa.timestamp("s")),
                      "amount": rng.integers(0, 100, n), "reward": rng.random(n) < 0.5})
    if not radix:
        monkeypatch.setattr(unsorted, "_radix", None)
    expected = lm.cohorts(_stable_sorted(table), by=["merchant"])
    assert lm.cohorts(table, by=["merchant"], presorted=False).equals(expected)


@pytest.mark.parametrize("command", ["compute", "cohorts", "concentration", "rfm"])
def test_the_cli_reads_unsorted_rows_with_the_flag(command, tmp_path, spill_dir, capsys):
    from loyaltymetrics.cli import main

    rng = np.random.default_rng(11)
    n = 4000
    table = pa.table({"merchant_id": rng.integers(0, 4, n), "customer_id": rng.integers(0, 300, n),
                      "order_ts": pa.array(rng.integers(1_500_000_000, 1_700_000_000, n), pa.timestamp("s")),
                      "amount": rng.integers(0, 10_000, n)})
    rows, ordered = tmp_path / "rows.parquet", tmp_path / "sorted.parquet"
    pq.write_table(table, rows, row_group_size=1000)
    pq.write_table(_stable_sorted(table), ordered)
    extra = ["--observation-end", "2024-01-01"] if command == "rfm" else ["--by", "merchant"]
    assert main([command, str(ordered), "-o", str(tmp_path / "a.parquet"), "-q"] + extra) == 0
    assert main([command, str(rows), "--unsorted", "--memory-limit", "64K", "-o", str(tmp_path / "b.parquet"),
                 "-q"] + extra) == 0
    assert pq.read_table(tmp_path / "b.parquet").equals(pq.read_table(tmp_path / "a.parquet"))
    capsys.readouterr()
    # The sorted path refuses the rows, naming the flag.
    assert main([command, str(rows), "-o", str(tmp_path / "c.parquet"), "-q"] + extra) != 0
    assert "--unsorted" in capsys.readouterr().err


KEY_TYPES = st.sampled_from([np.int32, np.int64])


@settings(deadline=None, max_examples=200)
@given(data=st.data(), m_type=KEY_TYPES, c_type=KEY_TYPES, ts_type=KEY_TYPES, long_runs=st.booleans(),
       wide=st.booleans())
def test_the_unit_sort_is_a_stable_lexsort(data, m_type, c_type, ts_type, long_runs, wide):
    """``_sort.sort_unit`` (with the long runs sorted after it): every column permuted as ``numpy.lexsort``."""
    def ints(dtype, small):
        info = np.iinfo(dtype)
        return st.integers(-3, 3) if small else st.integers(int(info.min), int(info.max))

    n = data.draw(st.integers(0, 300))
    m = np.array(data.draw(st.lists(ints(m_type, not wide), min_size=n, max_size=n)), m_type)
    c = np.array(data.draw(st.lists(ints(c_type, not wide), min_size=n, max_size=n)), c_type)
    if long_runs:   # store-customers of more than 64 rows: sorted by ts after the kernel
        m, c = m % 2, np.zeros(n, c_type)
    ts = np.array(data.draw(st.lists(ints(ts_type, True) | ints(ts_type, False), min_size=n, max_size=n)), ts_type)
    amount = np.arange(n, dtype=np.int64) * 7 - 5
    reward = (np.arange(n) % 3 == 0).astype(np.uint8)
    columns = [m, c, ts, amount, reward]
    order = np.lexsort((ts, c, m))
    for actual, column in zip(unsorted._sort_columns(columns), columns):
        assert actual.dtype == column.dtype and np.array_equal(actual, column[order])


@pytest.mark.parametrize("threads", [1, 2])
def test_keys_too_wide_for_the_buckets_or_the_units(threads, spill_dir):
    """Keys that pack into 64 bits only without a row index (units sort another way), or not at all."""
    rng = np.random.default_rng(5)
    n = 3000
    for merchants, customers in (([0, 2**40], 2**23 - 1), ([-2**62, 2**62], 2**40)):
        table = pa.table({
            "merchant_id": pa.array(rng.choice(merchants, n), pa.int64()),
            "customer_id": pa.array(rng.integers(0, 4, n) * (customers // 3), pa.int64()),
            "order_ts": pa.array(rng.integers(0, 10, n), pa.timestamp("s")),
            "amount": rng.integers(0, 100, n),
        })
        expected = lm.compute(_stable_sorted(table), by=["merchant"], period="all")
        for limit in (None, 5000):
            actual = lm.compute(table, by=["merchant"], period="all", presorted=False, threads=threads,
                                memory_limit=limit)
            assert actual.equals(expected)


@pytest.mark.parametrize("statistics", [True, False])
def test_parquet_with_and_without_statistics_uses_the_buckets(statistics, tmp_path, spill_dir, monkeypatch):
    """The bucket path takes Parquet key bounds from the statistics, else from a pass over the keys."""
    rng = np.random.default_rng(9)
    n = 20_000
    table = pa.table({
        "merchant_id": pa.array(rng.integers(-5, 5, n), pa.int32()),
        "customer_id": pa.array(rng.integers(0, 2000, n), pa.int64()),
        "order_ts": pa.array(rng.integers(0, 30_000, n).astype(np.int32), pa.int32()).view(pa.date32()),
        "amount": rng.integers(0, 100, n), "reward": rng.random(n) < 0.3,
    })
    path = tmp_path / "rows.parquet"
    pq.write_table(table, path, row_group_size=3000, write_statistics=statistics)
    monkeypatch.setattr(unsorted, "sorted_input", None)   # the copy path must not be needed
    expected = lm.compute(_stable_sorted(table), by=["merchant"], period="month")
    with _small_buckets():
        for limit in (None, 100_000):
            assert lm.compute(path, by=["merchant"], period="month", presorted=False,
                              memory_limit=limit).equals(expected)


@pytest.mark.parametrize("threads", [1, 2])
def test_an_overflow_late_in_the_stream_names_the_input_row(threads, spill_dir):
    """An overflow met after many sorted units (sort threads still running) names its input row; nothing is left."""
    rng = np.random.default_rng(13)
    n = 20_000
    merchant = rng.integers(0, 50, n)
    amount = rng.integers(0, 100, n)
    big = np.flatnonzero(merchant == 49)[:3]
    amount[big] = 2**62   # the third of these overflows merchant 49's revenue, late in key order
    table = pa.table({"merchant_id": merchant, "customer_id": rng.integers(0, 100, n),
                      "order_ts": pa.array(rng.integers(0, 10**6, n), pa.timestamp("s")), "amount": amount})
    # Expected: the presorted path on the stably sorted rows, its row mapped back through the sort.
    order = sorted(range(n), key=lambda i: (int(merchant[i]), int(table["customer_id"][i].as_py()),
                                            int(table["order_ts"][i].value)))
    with pytest.raises(lm.errors.AmountOverflowError) as presorted:
        lm.compute(table.take(pa.array(order)), threads=1)
    for limit in (None, 5000):
        with _small_buckets(), pytest.raises(lm.errors.AmountOverflowError) as error:
            lm.compute(table, threads=threads, presorted=False, memory_limit=limit)
        assert error.value.source == "<table>" and error.value.row == order[presorted.value.row]


def test_a_heavy_merchant_spreads_over_many_buckets(spill_dir, monkeypatch):
    """Bucket bases are quantiles of the keys: one merchant with most rows gets many buckets, not one cell."""
    rng = np.random.default_rng(17)
    n = 20_000
    # Merchant 3: 80% of the rows, all its customers in one cell of 2**16 (merchant ids span 2**20 too).
    merchant = np.where(rng.random(n) < 0.8, 3, rng.integers(0, 1 << 20, n))
    table = pa.table({"merchant_id": pa.array(merchant, pa.int32()),
                      "customer_id": pa.array(rng.integers(0, 1 << 20, n), pa.int32()),
                      "order_ts": pa.array(rng.integers(0, 10**6, n), pa.timestamp("s")),
                      "amount": rng.integers(0, 100, n)})
    plans = []
    plan = unsorted._Plan
    monkeypatch.setattr(unsorted, "_Plan", lambda *args: plans.append(plan(*args)) or plans[-1])
    monkeypatch.setattr(unsorted, "BUCKET_ROWS", 500)
    expected = lm.compute(_stable_sorted(table), by=["merchant"], period="all")
    for limit in (None, 5000):
        assert lm.compute(table, by=["merchant"], period="all", presorted=False,
                          memory_limit=limit).equals(expected)
    used = plans[-1]
    heavy = (used.bases >> np.uint64(used.cbits)) + np.uint64(used.mlo) == 3   # buckets starting in merchant 3
    assert used.buckets >= 30 and heavy.sum() >= 0.6 * used.buckets
