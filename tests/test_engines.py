"""Every engine, thread count, chunk size and batch size gives the reference's table, bit for bit (SPEC §8).

Bad input gives the same typed error, at the same row, whatever the engine,
thread count and chunk size: the error a one-thread scan meets first.
"""
from __future__ import annotations

import os
import pathlib
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, reject, settings
from hypothesis import strategies as st

import loyaltymetrics as lm
from loyaltymetrics import parallel
from reference import assert_tables_match, reference_columns, reference_compute
from strategies import bys, orders_and_merchants, orders_tables, periods, rebatch

ENGINES = ["cython", "numba"]
THREADS = [1, 2, 3]
# Small chunks so that a few dozen rows are cut into many chunks and rounds.
CHUNK_ROWS = st.integers(1, 40)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("engine", ENGINES)
@settings(deadline=None)
@given(data=orders_and_merchants(max_customers=6), by=bys(), period=periods(), chunk_rows=CHUNK_ROWS,
       batch_rows=st.integers(1, 70))
def test_every_engine_thread_count_chunk_and_batch_size_matches_the_reference(
        data, by, period, chunk_rows, batch_rows, engine, threads):
    orders, merchants = data
    orders = rebatch(orders, batch_rows, empty_batches=batch_rows % 3 == 0)
    actual = lm.compute(orders, merchants, by=by, period=period, engine=engine, threads=threads,
                        chunk_rows=chunk_rows)
    assert_tables_match(actual, reference_compute(orders, merchants, by=by, period=period),
                        columns=reference_columns(by))
    assert actual.equals(lm.compute(orders, merchants, by=by, period=period, threads=1))


def _parquet(orders, folder, row_group_rows):
    """``orders`` written to a Parquet file of ``row_group_rows``-row row groups; its path."""
    path = pathlib.Path(folder) / "orders.parquet"
    pq.write_table(orders, path, row_group_size=row_group_rows)
    return str(path)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("engine", ENGINES)
@settings(deadline=None, max_examples=40)
@given(data=orders_and_merchants(max_customers=6), by=bys(), period=periods(), chunk_rows=CHUNK_ROWS,
       row_group_rows=st.sampled_from([1, 2, 7, 64]))
def test_parquet_row_groups_decoded_by_threads_match_the_reference(
        data, by, period, chunk_rows, row_group_rows, engine, threads):
    # Row groups decoded side by side by worker threads (inputs._parquet_batches), then cut into
    # chunks: the reference's table, and the one-thread table from memory, bit for bit.
    orders, merchants = data
    with tempfile.TemporaryDirectory() as folder:
        path = _parquet(orders, folder, row_group_rows)
        actual = lm.compute(path, merchants, by=by, period=period, engine=engine, threads=threads,
                            chunk_rows=chunk_rows)
    assert_tables_match(actual, reference_compute(orders, merchants, by=by, period=period),
                        columns=reference_columns(by))
    assert actual.equals(lm.compute(orders, merchants, by=by, period=period, threads=1))


def _error(orders, **kwargs):
    try:
        lm.compute(orders, **kwargs)
    except lm.InputError as error:
        return type(error), error.row, str(error)
    return None


@st.composite
def broken_orders(draw):
    """A valid orders table with one defect at a random row: out of order, negative, out of range."""
    orders = draw(orders_tables(max_merchants=5, max_customers=5, allow_empty=False))
    n = orders.num_rows
    row = draw(st.integers(0, n - 1))
    kind = draw(st.sampled_from(["swap", "negative", "late", "early_key"]))
    columns = {name: orders.column(name).to_pylist() for name in orders.column_names}
    if kind == "swap" and n > 1:
        other = draw(st.integers(0, n - 1))
        for values in columns.values():
            values[row], values[other] = values[other], values[row]
    elif kind == "negative":
        columns["amount"][row] = -draw(st.integers(1, 10**6))
    elif kind == "late" and pa.types.is_timestamp(orders.schema.field("order_ts").type):
        columns["order_ts"][row] = None  # replaced below by a raw value past 2262
    else:
        columns["merchant_id"][row] = 0 if columns["merchant_id"][row] else 1
    arrays = []
    for field in orders.schema:
        values = columns[field.name]
        if field.name == "order_ts" and None in values:
            raw = orders.column("order_ts").cast(pa.int64()).to_pylist()
            raw[row] = np.iinfo(np.int64).max
            arrays.append(pa.array(raw, pa.int64()).cast(field.type))
        else:
            arrays.append(pa.array(values, field.type))
    return pa.table(arrays, schema=orders.schema)


@pytest.mark.parametrize("engine", ENGINES)
@settings(deadline=None)
@given(orders=broken_orders(), threads=st.sampled_from(THREADS), chunk_rows=CHUNK_ROWS,
       batch_rows=st.integers(1, 30))
def test_bad_input_gives_the_same_error_whatever_the_engine_threads_and_chunks(
        orders, threads, chunk_rows, batch_rows, engine):
    expected = _error(orders, threads=1)
    actual = _error(rebatch(orders, batch_rows), engine=engine, threads=threads, chunk_rows=chunk_rows)
    assert actual == expected


@pytest.mark.parametrize("engine", ENGINES)
@settings(deadline=None, max_examples=40)
@given(orders=broken_orders(), threads=st.sampled_from(THREADS), chunk_rows=CHUNK_ROWS,
       row_group_rows=st.sampled_from([1, 3, 10]))
def test_bad_parquet_input_gives_the_same_error_whatever_the_threads_and_row_groups(
        orders, threads, chunk_rows, row_group_rows, engine):
    in_memory = _error(orders, threads=1)
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = _parquet(orders, folder, row_group_rows)
        except pa.ArrowInvalid:   # a timestamp[s] past 2262 has no Parquet form (stored as ms)
            reject()
        expected = _error(path, threads=1, chunk_rows=1 << 20)
        actual = _error(path, engine=engine, threads=threads, chunk_rows=chunk_rows)
    # The same error, at the same row, as from memory (Parquet stores timestamp[s] as ms, and an
    # in-memory table's message says how to sort a frame: the messages differ, not what they name).
    assert (expected and expected[:2]) == (in_memory and in_memory[:2])
    assert actual == expected


@pytest.mark.parametrize("threads", [2, 3])
def test_overflow_found_only_when_adding_thread_pieces_names_the_row(threads):
    # Merchant 1's 2022 revenue overflows int64 only over all its store-customers;
    # with small chunks each thread's piece fits, and a one-thread rescan finds row 5.
    amounts = [10**18] * 10
    orders = pa.table({
        "merchant_id": pa.array([1] * 10, pa.int64()),
        "customer_id": pa.array(range(10), pa.int64()),
        "order_ts": pa.array([1_650_000_000] * 10, pa.timestamp("s")),
        "amount": pa.array(amounts, pa.int64()),
    })
    with pytest.raises(lm.AmountOverflowError) as err:
        lm.compute(orders, threads=threads, chunk_rows=2)
    assert err.value.row == 9 and "amount 1000000000000000000" in str(err.value)
    # A one-shot stream cannot be read again: the error still comes, naming no row.
    reader = pa.RecordBatchReader.from_batches(orders.schema, orders.to_batches())
    with pytest.raises(lm.AmountOverflowError) as err:
        lm.compute(reader, threads=threads, chunk_rows=2)
    assert err.value.row is None


def test_threads_none_uses_omp_num_threads_then_affinity(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert parallel.resolve_threads(None) == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert parallel.resolve_threads(None) == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_bad_threads_and_chunk_rows_are_clear_errors(bad):
    orders = pa.table({"merchant_id": [1], "customer_id": [1], "order_ts": pa.array([0], pa.timestamp("s")),
                       "amount": [1]})
    with pytest.raises(ValueError, match="threads"):
        lm.compute(orders, threads=bad)
    with pytest.raises(ValueError, match="chunk_rows"):
        lm.compute(orders, chunk_rows=bad)


def test_unknown_engine_is_a_clear_error():
    with pytest.raises(ValueError, match="engine must be one of cython, numba"):
        lm.compute(pa.table({"merchant_id": [1]}), engine="fortran")
