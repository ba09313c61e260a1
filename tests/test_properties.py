"""Property tests: loyaltymetrics.compute against the pure-Python reference.

Example counts come from the Hypothesis profiles registered in conftest.py
("dev", "ci"); only the deadline is set here (the first call may compile or
warm up an engine).
"""

from __future__ import annotations

import itertools
import pathlib
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st


import loyaltymetrics  # noqa: E402
from reference import assert_tables_match, reference_columns, reference_compute  # noqa: E402
from strategies import (  # noqa: E402
    ALL_BY_KEYS,
    PERIODS,
    REFUND_AMOUNTS,
    batch_sizes,
    bys,
    orders_and_merchants,
    periods,
    rebatch,
    rebatched,
    size_edges,
)

# Every subset of the grouping keys (in SPEC order) plus a few permutations.
GROUPINGS = [list(c) for k in range(len(ALL_BY_KEYS) + 1) for c in itertools.combinations(ALL_BY_KEYS, k)]
GROUPINGS += [["size", "merchant"], ["country", "industry"], ["size", "country", "industry", "merchant"]]


def _ids(by):
    return ",".join(by) or "network"


def _deep_copy(table: pa.Table) -> pa.Table:
    """An independent copy (own buffers) via an IPC round trip."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return pa.ipc.open_stream(sink.getvalue()).read_all()


def _check(orders, merchants, by, period, **kwargs):
    actual = loyaltymetrics.compute(orders, merchants=merchants, by=by, period=period, **kwargs)
    expected = reference_compute(orders, merchants, by=by, period=period, **kwargs)
    assert_tables_match(actual, expected, columns=reference_columns(by))
    return actual


@pytest.mark.parametrize("by", GROUPINGS, ids=_ids)
@pytest.mark.parametrize("period", PERIODS)
@settings(deadline=None)
@given(data=orders_and_merchants())
def test_matches_reference_every_period_and_grouping(data, period, by):
    orders, merchants = data
    _check(orders, merchants, by, period)


@settings(deadline=None)
@given(data=orders_and_merchants(), by=bys(), period=periods())
def test_matches_reference_any_grouping_order(data, by, period):
    orders, merchants = data
    _check(orders, merchants, by, period)


@settings(deadline=None)
@given(data=orders_and_merchants(), by=bys(), period=periods(), edges=size_edges())
def test_custom_size_edges(data, by, period, edges):
    orders, merchants = data
    if "size" not in by:
        by = [*by, "size"]
    _check(orders, merchants, by, period, size_edges=edges)


@settings(deadline=None)
@given(data=orders_and_merchants(), by=bys(), period=periods(), k1=batch_sizes(), k2=batch_sizes(), st_data=st.data())
def test_record_batch_size_does_not_change_result(data, by, period, k1, k2, st_data):
    # SPEC §8: identical, bit for bit, whatever the record-batch size.
    orders, merchants = data
    whole = _check(orders, merchants, by, period)
    a = loyaltymetrics.compute(rebatch(orders, k1), merchants=merchants, by=by, period=period)
    b = loyaltymetrics.compute(
        st_data.draw(rebatched(orders)),
        merchants=None if merchants is None else rebatch(merchants, k2),
        by=by,
        period=period,
    )
    assert a.equals(whole)
    assert b.equals(whole)


@settings(deadline=None)
@given(data=orders_and_merchants(), by=bys(), period=periods(), k=batch_sizes())
def test_input_is_not_modified(data, by, period, k):
    # SPEC §2: inputs are never modified.
    orders, merchants = data
    orders = rebatch(orders, k)
    orders_before = _deep_copy(orders)
    merchants_before = None if merchants is None else _deep_copy(merchants)
    loyaltymetrics.compute(orders, merchants=merchants, by=by, period=period)
    assert orders.equals(orders_before, check_metadata=True)
    assert orders.schema.equals(orders_before.schema, check_metadata=True)
    if merchants is not None:
        assert merchants.equals(merchants_before, check_metadata=True)


def _write_ipc_file(table: pa.Table, path: pathlib.Path) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _to_pandas(table: pa.Table):
    # Dates as datetime64 (not objects) so that an empty frame keeps a typed
    # column; a nullable reward as pandas' "boolean" (an all-None object
    # column would have no type at all).
    df = table.to_pandas(date_as_object=False)
    if "reward" in df.columns:
        df["reward"] = df["reward"].astype("boolean")
    return df


@settings(deadline=None)
@given(data=orders_and_merchants(), by=bys(), period=periods())
def test_input_formats_give_identical_tables(data, by, period):
    # SPEC §8: identical, bit for bit, whatever the input format.
    import pandas as pd
    import polars as pl

    orders, merchants = data
    expected = _check(orders, merchants, by, period)

    def run(source, merchants_source=merchants):
        return loyaltymetrics.compute(source, merchants=merchants_source, by=by, period=period)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        arrow_path = tmp / "orders.arrow"
        parquet_path = tmp / "orders.parquet"
        _write_ipc_file(orders, arrow_path)
        pq.write_table(orders, str(parquet_path))
        arrow_bytes = arrow_path.read_bytes()
        parquet_bytes = parquet_path.read_bytes()

        assert run(str(arrow_path)).equals(expected)
        assert run(str(parquet_path)).equals(expected)
        if merchants is not None:
            merchants_path = tmp / "merchants.parquet"
            pq.write_table(merchants, str(merchants_path))
            assert run(str(arrow_path), str(merchants_path)).equals(expected)

        # Input files are never modified (SPEC §2).
        assert arrow_path.read_bytes() == arrow_bytes
        assert parquet_path.read_bytes() == parquet_bytes

    reader = pa.RecordBatchReader.from_batches(orders.schema, orders.to_batches(max_chunksize=3))
    assert run(reader).equals(expected)

    df = _to_pandas(orders)
    df_before = df.copy(deep=True)
    assert run(df).equals(expected)
    pd.testing.assert_frame_equal(df, df_before)

    plf = pl.from_arrow(orders)
    plf_before = plf.clone()
    assert run(plf).equals(expected)
    assert plf.equals(plf_before)


# --- refunds (SPEC §2 "Refunds") ---------------------------------------------------

REFUND_ENGINES = ["cython", "numba"]


@pytest.mark.parametrize("by", GROUPINGS, ids=_ids)
@pytest.mark.parametrize("period", PERIODS)
@settings(deadline=None)
@given(data=orders_and_merchants(amounts=REFUND_AMOUNTS))
def test_refunds_match_reference_every_period_and_grouping(data, period, by):
    orders, merchants = data
    _check(orders, merchants, by, period, refunds=True)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("engine", REFUND_ENGINES)
@settings(deadline=None)
@given(data=orders_and_merchants(max_customers=6, amounts=REFUND_AMOUNTS), by=bys(), period=periods(),
       chunk_rows=st.integers(1, 40), batch_rows=st.integers(1, 70))
def test_refunds_every_engine_thread_count_chunk_and_batch_size_match_the_reference(
        data, by, period, chunk_rows, batch_rows, engine, threads):
    orders, merchants = data
    orders = rebatch(orders, batch_rows, empty_batches=batch_rows % 3 == 0)
    actual = loyaltymetrics.compute(orders, merchants, by=by, period=period, refunds=True, engine=engine,
                                    threads=threads, chunk_rows=chunk_rows)
    assert_tables_match(actual, reference_compute(orders, merchants, by=by, period=period, refunds=True),
                        columns=reference_columns(by))


@settings(deadline=None)
@given(data=orders_and_merchants(), by=bys(), period=periods())
def test_refunds_flag_changes_nothing_without_negative_amounts(data, by, period):
    orders, merchants = data
    plain = loyaltymetrics.compute(orders, merchants, by=by, period=period)
    assert loyaltymetrics.compute(orders, merchants, by=by, period=period, refunds=True).equals(plain)
    assert loyaltymetrics.compute(orders, merchants, by=by, period=period, refunds=True,
                                  engine="numba").equals(plain)


@pytest.mark.parametrize("engine", REFUND_ENGINES)
@pytest.mark.parametrize("by", [[], ["merchant"], ["size"], ["industry", "merchant"]], ids=_ids)
@pytest.mark.parametrize("period", PERIODS)
def test_refunds_hand_worked_example_every_engine(engine, by, period):
    # The hand-worked refunds example of test_reference.py, through every engine and chunking.
    from test_reference import _refund_orders, make_merchants

    orders = _refund_orders()
    merchants = make_merchants([(1, "food", "DE", 1200), (2, "food", "DE", 600)])
    expected = reference_compute(orders, merchants, by=by, period=period, refunds=True)
    for threads, chunk_rows in ((1, 1 << 20), (2, 1), (3, 2)):
        actual = loyaltymetrics.compute(orders, merchants, by=by, period=period, refunds=True, engine=engine,
                                        threads=threads, chunk_rows=chunk_rows)
        assert_tables_match(actual, expected, columns=reference_columns(by))



# --- merchant names (SPEC §2, §7) -------------------------------------------------------

@settings(deadline=None)
@given(data=orders_and_merchants(merchant_names=True), by=bys(), period=periods())
def test_merchant_name_follows_merchant_id(data, by, period):
    orders, merchants = data
    actual = loyaltymetrics.compute(orders, merchants, by=by, period=period)
    expected = reference_compute(orders, merchants, by=by, period=period)
    names = merchants is not None and "name" in merchants.column_names
    assert_tables_match(actual, expected, columns=reference_columns(by, merchant_names=names))


# --- time zones (SPEC §3: each merchant's local calendar) ----------------------------

ZONE_DEFAULTS = [None, "America/New_York", "Pacific/Kiritimati", "Asia/Kathmandu"]


@pytest.mark.parametrize("period", PERIODS)
@settings(deadline=None)
@given(data=orders_and_merchants(timezones=True, max_merchants=5), by=bys(),
       timezone=st.sampled_from(ZONE_DEFAULTS))
def test_zones_match_reference(data, period, by, timezone):
    orders, merchants = data
    _check(orders, merchants, by, period, timezone=timezone)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("engine", REFUND_ENGINES)
@settings(deadline=None)
@given(data=orders_and_merchants(timezones=True, max_customers=6), by=bys(), period=periods(),
       timezone=st.sampled_from(ZONE_DEFAULTS), refunds=st.booleans(),
       chunk_rows=st.integers(1, 40), batch_rows=st.integers(1, 70))
def test_zones_every_engine_thread_count_chunk_and_batch_size_match_the_reference(
        data, by, period, timezone, refunds, chunk_rows, batch_rows, engine, threads):
    # SPEC §8: bit for bit whatever the engine, threads, chunk and batch size, with zones too.
    orders, merchants = data
    if refunds:  # some rows refunds: negate a deterministic share of the amounts
        amount = [-(a + 1) if i % 3 == 1 else a for i, a in enumerate(orders.column("amount").to_pylist())]
        orders = orders.set_column(orders.column_names.index("amount"), "amount", pa.array(amount, pa.int64()))
    expected = _check(orders, merchants, by, period, refunds=refunds, timezone=timezone)
    actual = loyaltymetrics.compute(rebatch(orders, batch_rows), merchants=merchants, by=by, period=period,
                                    refunds=refunds, timezone=timezone, engine=engine, threads=threads,
                                    chunk_rows=chunk_rows)
    assert actual.equals(expected)
