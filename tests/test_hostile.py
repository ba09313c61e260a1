"""Hostile inputs (SPEC §2 "Bad input", §8): extremes, odd layouts and odd
sources that must give the reference's numbers or a typed error naming the
source, the row and the values — never a crash, a wrapped sum or a modified
input.

Not a copy of test_bad_input.py: that file covers one plain case per error
kind; this one goes after the edges (int64 limits, sums across runs,
merchants and years, overflowing intermediate formulas, unrepresentable
timestamps, offsets, chunking, stream/compressed/nested sources, column
mapping collisions, merchants tables from CSV / string_view / uint64).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyarrow import ipc
from reference import assert_tables_match, reference_columns, reference_compute

import loyaltymetrics as lm

UTC = dt.timezone.utc
I64_MAX = 2**63 - 1
I64_MIN = -(2**63)
I32_MAX = 2**31 - 1
I32_MIN = -(2**31)
D2022 = dt.datetime(2022, 1, 1, tzinfo=UTC)
D2023 = dt.datetime(2023, 1, 1, tzinfo=UTC)


def orders(merchant, customer, when, amount, reward=None, *, mt=pa.int64(), ct=pa.int64(),
           tt=pa.timestamp("us", tz="UTC")):
    columns = {
        "merchant_id": pa.array(merchant, mt),
        "customer_id": pa.array(customer, ct),
        "order_ts": pa.array(when, tt),
        "amount": pa.array(amount, pa.int64()),
    }
    if reward is not None:
        columns["reward"] = pa.array(reward, pa.bool_())
    return pa.table(columns)


def check(table, merchants=None, *, by=(), period="year", size_edges=(30, 300, 3000, 30000), source=None,
          refunds=False):
    """compute(source or table) equals reference_compute(table)."""
    by_tuple = (by,) if isinstance(by, str) else tuple(by)
    out = lm.compute(table if source is None else source, merchants, by=by, period=period,
                     size_edges=size_edges, refunds=refunds)
    ref_merchants = merchants if merchants is None or isinstance(merchants, pa.Table) else None
    expected = reference_compute(table, ref_merchants, by=by_tuple, period=period, size_edges=size_edges)
    assert_tables_match(out, expected, columns=reference_columns(by_tuple))
    return out


def random_orders(n=300, seed=0, *, mt=pa.int64(), ct=pa.int64(), reward="mixed", ids=(-3, 3), cust=(-5, 5),
                  years=5):
    """Sorted random orders around 2022 with negative ids, ties and null/true/false rewards."""
    rnd = np.random.default_rng(seed)
    m = rnd.integers(ids[0], ids[1] + 1, n)
    c = rnd.integers(cust[0], cust[1] + 1, n)
    t = rnd.integers(0, years * 366 * 86400, n) + 52 * 365 * 86400
    t[rnd.random(n) < 0.2] = 52 * 365 * 86400  # many ties
    a = rnd.integers(0, 1000, n)
    order = np.lexsort((t, c, m))
    r = rnd.random(n) < 0.5
    valid = rnd.random(n) >= 0.3
    rewards = [bool(x) if (v or reward == "nonull") else None for x, v in zip(r[order], valid[order])]
    return orders(m[order].tolist(), c[order].tolist(), (t[order] * 10**6).tolist(), a[order].tolist(),
                  rewards, mt=mt, ct=ct)


def write_arrow(table, path, max_chunksize=None, compression=None, stream=False):
    options = ipc.IpcWriteOptions(compression=compression)
    with pa.OSFile(str(path), "wb") as sink:
        new = ipc.new_stream if stream else ipc.new_file
        with new(sink, table.schema, options=options) as writer:
            writer.write_table(table, max_chunksize=max_chunksize)
    return str(path)


# --- int64 / int32 extremes ---------------------------------------------------

@pytest.mark.parametrize("mt, ct", [(pa.int32(), pa.int32()), (pa.int32(), pa.int64()),
                                    (pa.int64(), pa.int32()), (pa.int64(), pa.int64())])
def test_id_extremes_and_customer_ids_shared_across_merchants(mt, ct):
    mlo, mhi = (I32_MIN, I32_MAX) if mt == pa.int32() else (I64_MIN, I64_MAX)
    clo, chi = (I32_MIN, I32_MAX) if ct == pa.int32() else (I64_MIN, I64_MAX)
    # The same customer ids (min, 0, max) at every merchant: each pair is its own store-customer.
    merchant, customer, when = [], [], []
    for m in (mlo, -1, 0, mhi):
        for c in (clo, 0, chi):
            for t in (D2022, D2022, D2023):
                merchant.append(m), customer.append(c), when.append(t)
    table = orders(merchant, customer, when, range(len(merchant)), [i % 3 == 0 for i in range(len(merchant))],
                   mt=mt, ct=ct)
    out = check(table, by=("merchant",))
    assert out.column("merchant_id").to_pylist() == [mlo, mlo, -1, -1, 0, 0, mhi, mhi]
    assert out.column("customers").to_pylist() == [3] * 8
    check(table, by=(), period="all")


def test_unsorted_at_id_extremes_names_both_rows():
    table = orders([I64_MAX, I64_MIN], [1, 1], [D2022, D2022], [1, 2])
    with pytest.raises(lm.UnsortedInputError) as err:
        lm.compute(table)
    assert err.value.row == 1
    assert f"({I64_MIN}, 1, " in str(err.value) and f"({I64_MAX}, 1, " in str(err.value)
    assert "at row 0" in str(err.value)


def test_int32_customer_wraparound_is_unsorted_not_a_new_customer():
    table = orders([5, 5], [I32_MAX, I32_MIN], [D2022, D2022], [1, 1], mt=pa.int32(), ct=pa.int32())
    with pytest.raises(lm.UnsortedInputError, match=rf"row 1: .*\(5, {I32_MIN}, .*\(5, {I32_MAX}, .*at row 0"):
        lm.compute(table)


# --- timestamps at the edges -------------------------------------------------

def test_first_and_last_representable_nanoseconds():
    # 1970-01-01T00:00:00 and 2262-04-11T23:47:16.854775807, the last ns timestamp.
    table = orders([1, 1, 2], [1, 1, 1], [0, I64_MAX, I64_MAX], [10, 20, 30], [None, True, False],
                   tt=pa.timestamp("ns"))
    for period in ("year", "quarter", "month", "all"):
        check(table, by=("merchant", "size"), period=period)


@pytest.mark.parametrize("unit, per_second", [("s", 1), ("ms", 10**3), ("us", 10**6)])
def test_last_second_of_2262_in_coarse_units(unit, per_second):
    last = int(np.datetime64("2262-12-31T23:59:59", "s").astype(np.int64)) * per_second
    table = orders([1, 1, 1], [1, 2, 2], [0, last, last + per_second - 1], [1, 2, 3], [True, None, True],
                   tt=pa.timestamp(unit, tz="Pacific/Chatham"))
    check(table, by=("merchant",), period="quarter")
    check(table, period="all")
    beyond = orders([1, 1, 1], [1, 2, 2], [0, last, last + per_second], [1, 2, 3], tt=pa.timestamp(unit))
    with pytest.raises(lm.TimestampRangeError, match=r"row 2: order_ts 2263-01-01T00:00:00") as err:
        lm.compute(beyond)
    assert err.value.row == 2


def test_date64_order_ts():
    last_ms = (int(np.datetime64("2262-12-31", "D").astype(np.int64)) * 86400 + 86399) * 1000
    table = orders([1, 1, 1], [1, 1, 2], [0, 86_400_000 * 400, last_ms], [5, 6, 7], tt=pa.date64())
    for period in ("year", "month", "all"):
        check(table, by=("merchant",), period=period)


def test_odd_time_zones_are_utc_underneath():
    # 2022-12-31T21:00Z is 2023-01-01T02:45 in Kathmandu: still 2022 in UTC.
    when = [dt.datetime(2022, 12, 31, 21, tzinfo=UTC), dt.datetime(2022, 12, 31, 23, 59, 59, tzinfo=UTC),
            dt.datetime(2023, 1, 1, tzinfo=UTC)]
    for tz in ("Asia/Kathmandu", "America/St_Johns", "Pacific/Kiritimati", "+05:45"):
        table = orders([1, 1, 1], [1, 1, 1], when, [1, 2, 3], tt=pa.timestamp("ms", tz=tz))
        out = check(table, period="month")
        assert out.column("orders").to_pylist() == [2, 1]


@pytest.mark.parametrize("tt", [pa.timestamp("s"), pa.timestamp("ms"), pa.timestamp("us"), pa.timestamp("ns"),
                                pa.date64()])
def test_int64_min_timestamp_is_reported_with_its_value_not_nat(tt):
    # INT64_MIN is numpy's NaT: the message must show the stored value, not "NaT".
    table = orders([1, 1], [1, 2], [0, I64_MIN], [1, 1], tt=tt)
    with pytest.raises(lm.TimestampRangeError) as err:
        lm.compute(table)
    assert err.value.row == 1
    assert "NaT" not in str(err.value), str(err.value)
    assert str(I64_MIN) in str(err.value), str(err.value)


# --- amounts: overflow, refunds --------------------------------------------------

def test_amounts_summing_to_exactly_int64_max_are_fine():
    a = I64_MAX // 2
    table = orders([1, 1, 2], [1, 2, 1], [D2022, D2022, D2022], [a, a, 1])  # a + a + 1 == INT64_MAX
    out = check(table)
    assert out.column("revenue").to_pylist() == [I64_MAX]
    check(orders([1], [1], [D2022], [I64_MAX], [True]), by=("merchant",))


def test_overflow_in_the_last_store_customer_is_an_error_not_a_wrapped_sum():
    # Two store-customers of one merchant, 6e18 each, in 2022: 1.2e19 does not fit int64.
    # The overflow happens when the last run is closed at the end of the input.
    table = orders([1, 1], [1, 2], [D2022, D2022], [6 * 10**18, 6 * 10**18])
    with pytest.raises(lm.AmountOverflowError) as err:
        lm.compute(table)
    assert err.value.row == 1 and "6000000000000000000" in str(err.value)


def test_overflow_in_the_last_reward_run_is_an_error():
    table = orders([1, 1], [1, 2], [D2022, D2022], [6 * 10**18, 6 * 10**18], [True, True])
    with pytest.raises(lm.AmountOverflowError):
        lm.compute(table, by="merchant")


def test_overflow_error_names_the_row_whose_amount_overflows():
    # Row 1 (amount 6e18) makes merchant 1's 2022 revenue overflow; row 2's amount 5 is
    # innocent (the kernel only notices when it closes customer 2's run at row 2).
    table = orders([1, 1, 1], [1, 2, 3], [D2022] * 3, [6 * 10**18, 6 * 10**18, 5])
    with pytest.raises(lm.AmountOverflowError) as err:
        lm.compute(table)
    assert err.value.row == 1, str(err.value)
    assert "amount 6000000000000000000" in str(err.value)


def test_refund_overflow_below_int64_min_is_an_error():
    table = orders([1, 1], [1, 2], [D2022, D2022], [I64_MIN, -1])
    with pytest.raises(lm.AmountOverflowError) as err:
        lm.compute(table, refunds=True)
    assert err.value.row == 1


def test_network_revenue_that_overflows_across_merchants_is_an_error():
    # Each merchant's 2022 revenue fits (6e18), the network's (1.2e19) does not: SPEC §2 says a
    # revenue sum that would overflow int64 is an AmountOverflowError, never a wrong number.
    table = orders([1, 2], [1, 1], [D2022, D2022], [6 * 10**18, 6 * 10**18])
    out = check(table, by="merchant")  # per merchant every sum fits
    assert out.column("revenue").to_pylist() == [6 * 10**18] * 2
    with pytest.raises(lm.AmountOverflowError):
        lm.compute(table)


def test_refunds_revenue_yoy_with_mixed_signs():
    # Merchant 1: an order of 0 and a refund of -5e18 in 2022 (revenue -5e18), +5e18 in 2023
    # (refunds=True; a refund is no order, so 2022 needs its order of 0 to be a row). Both fit
    # int64; revenue_yoy = (5e18 - -5e18) / -5e18 * 100 = -200 (SPEC §5), not a wrapped difference.
    table = orders([1, 1, 1], [1, 1, 1], [D2022, D2022, D2023], [0, -5 * 10**18, 5 * 10**18])
    # Both years observed whole (SPEC §3), so they are compared.
    window = dict(observation_start=dt.date(2022, 1, 1), observation_end=dt.date(2024, 1, 1))
    out = lm.compute(table, by="merchant", refunds=True, **window)
    assert out.column("revenue").to_pylist() == [-5 * 10**18, 5 * 10**18]
    assert out.column("revenue_yoy").to_pylist() == [None, -200.0]
    assert_tables_match(out, reference_compute(table, by=("merchant",), refunds=True, **window))


def test_refunds_member_aov_lift_with_mixed_signs():
    # Member customer 1: a reward order of 0 and a refund of -5e18 (one order, revenue -5e18);
    # non-members 2 and 3: +5e18 each. revenue = 5e18, member_revenue = -5e18, both fit;
    # non-member AOV = 1e19 / 2 = 5e18, member AOV = -5e18 / 1, so member_aov_lift = -1.0.
    # revenue - member_revenue = 1e19 must not wrap in int64.
    table = orders([1, 1, 1, 1], [1, 1, 2, 3], [D2022] * 4, [0, -5 * 10**18, 5 * 10**18, 5 * 10**18],
                   [True, False, False, False])
    out = lm.compute(table, refunds=True)
    assert out.column("revenue").to_pylist() == [5 * 10**18]
    assert out.column("member_revenue").to_pylist() == [-5 * 10**18]
    assert out.column("member_aov_lift").to_pylist() == [-1.0]
    assert_tables_match(out, reference_compute(table, refunds=True))


@pytest.mark.parametrize("period", ["year", "quarter", "month"])
def test_huge_annual_fee_gives_the_right_fees_or_a_typed_error(period):
    # annual_fee = 2**62 minor units: fees = 2**62 * months / 12 (SPEC §4), exactly
    # representable in float64; 2**62 * 12 wraps to 0 in int64.
    table = orders([1], [1], [D2022], [5], [True])
    merchants = pa.table({"merchant_id": [1], "annual_fee": [2**62]})
    try:
        out = lm.compute(table, merchants, period=period)
    except lm.AmountOverflowError:
        return
    months = {"year": 12, "quarter": 3, "month": 1}[period]
    assert out.column("fees").to_pylist() == [float(2**62 * months / 12)]
    assert_tables_match(out, reference_compute(table, merchants, period=period))


# --- size edges --------------------------------------------------------------

def test_size_edges_too_large_for_int64_thresholds():
    # Edges are "positive, finite numbers"; 1e18 orders a month is absurd but allowed,
    # and by=() does not even output the size key: no OverflowError.
    table = random_orders(50, seed=3)
    for period in ("year", "all"):
        check(table, period=period, size_edges=(30, 1e18))


def test_size_labels_of_close_edges_match_the_reference():
    # One order in a month with edges (1, 1.0000001) is in bucket [1, 1.0000001); "1-1" hides the edge.
    table = orders([1], [1], [D2022], [5])
    check(table, by="size", period="month", size_edges=(1, 1.0000001))


def test_distinct_size_buckets_never_share_a_label():
    # Merchant 1: 1,000,000 orders in Jan 2022, merchant 2: 1,000,001. With edges
    # (1e6, 1e6+0.5, 1e6+1.5) they are in buckets [1e6, 1e6+0.5) and [1e6+0.5, 1e6+1.5):
    # two groups, so two rows of one merchant each (SPEC §6), with two different labels.
    n1, n2 = 1_000_000, 1_000_001
    ts = int(np.datetime64("2022-01-15", "s").astype(np.int64))
    table = pa.table({
        "merchant_id": np.repeat(np.array([1, 2], np.int64), [n1, n2]),
        "customer_id": np.zeros(n1 + n2, np.int64),
        "order_ts": pa.array(np.full(n1 + n2, ts, np.int64), pa.timestamp("s")),
        "amount": np.ones(n1 + n2, np.int64),
    })
    out = lm.compute(table, by="size", period="month", size_edges=(1_000_000, 1_000_000.5, 1_000_001.5))
    assert out.num_rows == 2, out.select(["size", "merchants", "orders"]).to_pylist()
    assert sorted(out.column("orders").to_pylist()) == [n1, n2]
    assert out.column("merchants").to_pylist() == [1, 1]
    assert len(set(out.column("size").to_pylist())) == 2


# --- layouts: offsets, chunks, batches ----------------------------------------

@pytest.mark.parametrize("reward", ["mixed", "nonull"])
def test_sliced_tables_with_unaligned_reward_bitmaps(reward):
    table = random_orders(260, seed=1, reward=reward)
    for start in (0, 1, 3, 7, 8, 9, 13, 63, 64, 65):
        for length in (1, 7, 9, 100, 260 - start):
            check(table.slice(start, length), by="merchant", period="quarter")


def test_reward_bits_under_nulls_count_as_false():
    # A bool array whose data bits are 1 under its nulls: null = false (SPEC §2), at any offset.
    n = 20
    valid = np.array([i % 3 != 0 for i in range(n)])
    reward = pa.Array.from_buffers(pa.bool_(), n, [pa.py_buffer(np.packbits(valid, bitorder="little")),
                                                   pa.py_buffer(np.packbits(np.ones(n, bool), bitorder="little"))])
    table = orders([1] * n, range(n), [D2022] * n, range(n)).append_column("reward", reward)
    for start in range(11):
        out = check(table.slice(start))
        assert out.column("reward_orders").to_pylist() == [int(valid[start:].sum())]


def test_all_null_reward_bool_column_at_an_offset():
    table = orders([1] * 20, range(20), [D2022] * 20, range(20)).append_column("reward", pa.nulls(20, pa.bool_()))
    out = check(table.slice(5))
    assert out.column("reward_orders").to_pylist() == [0]


def test_null_typed_reward_column_is_all_false():
    # pandas turns an all-None column into Arrow's null type; null = false (SPEC §2).
    table = orders([1, 1], [1, 2], [D2022, D2022], [1, 2]).append_column("reward", pa.nulls(2))
    out = lm.compute(table)
    assert out.column("reward_orders").to_pylist() == [0]
    assert out.column("orders").to_pylist() == [2]


def test_columns_chunked_at_different_boundaries():
    table = random_orders(300, seed=2)
    rnd = np.random.default_rng(7)
    columns = {}
    for i, name in enumerate(table.column_names):
        arr = table.column(name).combine_chunks()
        cuts = sorted(rnd.choice(np.arange(1, len(arr)), 5 + i, replace=False).tolist())
        bounds = list(zip([0] + cuts, cuts + [len(arr)]))
        columns[name] = pa.chunked_array([arr.slice(a, b - a) for a, b in bounds], type=arr.type)
    chunked = pa.table(columns)
    assert len({tuple(len(c) for c in chunked.column(n).chunks) for n in chunked.column_names}) == 5
    for period in ("year", "quarter", "month", "all"):
        check(chunked, by=("merchant", "size"), period=period)


def test_record_batch_reader_with_empty_batches_everywhere():
    table = random_orders(200, seed=4)
    empty = pa.RecordBatch.from_arrays([pa.array([], f.type) for f in table.schema], schema=table.schema)
    batches = [empty] + [x for b in table.to_batches(max_chunksize=17) for x in (b, empty, empty)]
    check(table, source=pa.RecordBatchReader.from_batches(table.schema, batches), by="merchant")


def test_record_batch_reader_with_zero_batches_and_empty_tables():
    schema = random_orders(5).schema
    for by in ((), ("merchant",), ("industry", "size"), ("country",)):
        out = lm.compute(pa.RecordBatchReader.from_batches(schema, []), by=by)
        assert_tables_match(out, [], columns=reference_columns(by))
        out = lm.compute(random_orders(5).slice(0, 0), by=by, period="all")
        assert_tables_match(out, [], columns=reference_columns(by))


def test_sliced_record_batch():
    batch = random_orders(50, seed=5).to_batches()[0]
    sliced = batch.slice(3, 40)
    check(pa.Table.from_batches([sliced]), source=sliced, by="merchant")


def test_errors_in_a_reader_name_the_global_row_after_empty_batches():
    table = orders([1] * 10, range(10), [D2022] * 10, [1, 2, 3, 4, 5, 6, 7, -3, 9, 10])
    empty = pa.RecordBatch.from_arrays([pa.array([], f.type) for f in table.schema], schema=table.schema)
    reader = pa.RecordBatchReader.from_batches(table.schema, [empty] + table.to_batches(max_chunksize=3))
    with pytest.raises(lm.NegativeAmountError, match=r"<table>: row 7: negative amount -3") as err:
        lm.compute(reader)
    assert err.value.row == 7


# --- files --------------------------------------------------------------------

def test_arrow_ipc_stream_and_compressed_files(tmp_path):
    table = random_orders(300, seed=6)
    sources = [
        write_arrow(table, tmp_path / "s.arrows", max_chunksize=50, stream=True),
        write_arrow(table, tmp_path / "z.arrow", max_chunksize=50, compression="zstd"),
        write_arrow(table, tmp_path / "l.arrow", max_chunksize=7, compression="lz4"),
        write_arrow(table, tmp_path / "zs.arrows", max_chunksize=64, compression="zstd", stream=True),
    ]
    for source in sources:
        check(table, source=source, by="merchant", period="month")
    for stream in (False, True):
        empty = write_arrow(table.slice(0, 0), tmp_path / f"empty{stream}.arrow", stream=stream)
        assert lm.compute(empty).num_rows == 0


def test_parquet_directory_with_nested_hidden_underscore_and_empty_files(tmp_path):
    table = random_orders(300, seed=7)
    root = tmp_path / "orders"
    for d in ("a/b", ".hidden", "_temporary/0", "a/.spark"):
        (root / d).mkdir(parents=True)
    pq.write_table(table.slice(0, 100), root / "a" / "0.parquet", row_group_size=13)
    pq.write_table(table.slice(100, 0), root / "a" / "1.parquet")        # zero rows
    pq.write_table(table.slice(100, 100), root / "a" / "b" / "2.parquet")  # nested
    pq.write_table(table.slice(200), root / "a" / "c.parquet")
    junk = orders([-100], [1], [D2022], [10**9])  # would be unsorted and change the numbers
    for hidden in (".hidden/x.parquet", "_temporary/0/x.parquet", "a/.x.parquet", "a/.spark/y.parquet",
                   "a/_tmp.parquet"):
        pq.write_table(junk, root / hidden)
    (root / "_SUCCESS").write_bytes(b"")
    (root / "a" / "_SUCCESS").write_bytes(b"")
    (root / "a" / ".part-0.parquet.crc").write_bytes(b"\x00crc")
    check(table, source=str(root), by="merchant", period="quarter")
    check(table, source=root, period="all")  # a PathLike


def test_parquet_directory_null_error_row_counts_from_the_start_of_its_file(tmp_path):
    good = orders([1, 1, 1], [1, 2, 3], [D2022] * 3, [1, 2, 3])
    bad = orders([2, 2, 2, 2], [1, 2, 3, 4], [D2022] * 4, [1, 2, None, 4])
    pq.write_table(good, tmp_path / "p0.parquet")
    pq.write_table(bad, tmp_path / "p1.parquet", row_group_size=2)
    with pytest.raises(lm.NullValueError, match=r"p1\.parquet: row 2: null in column 'amount'") as err:
        lm.compute(str(tmp_path))
    assert err.value.row == 2


def test_parquet_directory_files_in_different_time_zones(tmp_path):
    # SPEC §2: any unit, tz-aware is converted to UTC. Two files of one input that store the
    # same instants with a different display zone are valid input with one set of numbers.
    a = orders([1, 1], [1, 2], [D2022, D2023], [1, 2], tt=pa.timestamp("us", tz="UTC"))
    b = orders([2, 2], [1, 2], [D2022, D2023], [3, 4], tt=pa.timestamp("us", tz="Asia/Kolkata"))
    pq.write_table(a, tmp_path / "0.parquet")
    pq.write_table(b, tmp_path / "1.parquet")
    out = lm.compute(str(tmp_path), by="merchant")
    assert out.column("revenue").to_pylist() == [1, 2, 3, 4]


def test_files_are_not_modified_even_on_errors(tmp_path):
    table = orders([1, 1, 2], [1, 1, 1], [D2022, D2023, D2022], [6 * 10**18, 5, 6 * 10**18], [None, True, False])
    paths = [write_arrow(table, tmp_path / "o.arrow"), write_arrow(table, tmp_path / "o.arrows", stream=True),
             write_arrow(table, tmp_path / "z.arrow", compression="zstd")]
    pq.write_table(table, tmp_path / "o.parquet")
    paths.append(str(tmp_path / "o.parquet"))
    digest = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}
    for p in paths:
        os.chmod(p, 0o444)  # read-only files must be readable (they are only ever read)
    mtimes = {p: os.stat(p).st_mtime_ns for p in paths}
    for p in paths:
        for period in ("year", "all"):
            try:
                lm.compute(p, period=period, by="merchant")
            except lm.InputError:
                pass
    assert digest == {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}
    assert mtimes == {p: os.stat(p).st_mtime_ns for p in paths}


# --- scale --------------------------------------------------------------------

def test_200k_merchants_with_one_order_each():
    # Every merchant has one order (one customer, id -1) in month k % 3516: the output
    # grows far past its initial capacity. By merchant and month each row is 1 order of
    # amount k; by network and "all" it is the sums.
    n = 200_000
    k = np.arange(n, dtype=np.int64)
    merchant = k * 7 - 700_000
    months = (k % 3516).astype("datetime64[M]").astype("datetime64[s]").astype(np.int64)
    table = pa.table({"merchant_id": merchant, "customer_id": np.full(n, -1, np.int64),
                      "order_ts": pa.array(months, pa.timestamp("s")), "amount": k})
    out = lm.compute(table, by="merchant", period="month")
    assert out.num_rows == n
    assert out.column("merchant_id").to_pylist() == merchant.tolist()
    assert out.column("revenue").to_pylist() == k.tolist()
    assert out.column("new_customers").to_pylist() == [1] * n
    assert out.column("period_start").to_pylist()[:2] == [dt.date(1970, 1, 1), dt.date(1970, 2, 1)]
    total = lm.compute(table, period="all")
    assert total.select(["period_start", "merchants", "orders", "revenue", "customers"]).to_pylist() == [
        {"period_start": dt.date(1970, 1, 1), "merchants": n, "orders": n, "revenue": int(k.sum()), "customers": n}
    ]


def test_one_merchant_one_customer_every_month_1970_to_2262():
    # Merchant 5: one customer with an order in each of the 3,516 months (the accumulator's full
    # width, flushed at the end of the input); merchant 6: a new customer every month (flushed
    # in the middle of a scan, past the initial output capacity); merchant 7: one 1970 order.
    n = 3516
    days = np.arange(n).astype("datetime64[M]").astype("datetime64[D]").astype(np.int32)
    table = pa.table({
        "merchant_id": pa.array(np.r_[np.full(n, 5), np.full(n, 6), [7]], pa.int32()),
        "customer_id": pa.array(np.r_[np.full(n, I32_MIN), np.arange(n), [I32_MAX]], pa.int32()),
        "order_ts": pa.array(np.r_[days, days, [0]].astype(np.int32), pa.date32()),
        "amount": np.arange(2 * n + 1, dtype=np.int64) * 3 + 1,
        "reward": pa.array([i % 3 == 0 for i in range(2 * n + 1)]),
    })
    for period in ("month", "quarter", "year", "all"):
        check(table, by=("merchant", "size"), period=period)
    check(table, period="month")


# --- column mapping and schemas ------------------------------------------------------

@pytest.mark.parametrize("mapping", [{"customer_id": "merchant_id"}, {"amount": "customer_id"}])
def test_two_canonical_names_mapped_to_one_column(mapping):
    # Either the numbers of the input read through the mapping, or a clear ValueError:
    # not a KeyError from pyarrow.
    table = orders([1, 1, 2], [1, 2, 3], [D2022] * 3, [5, 6, 7])
    mapped = pa.table({c: table.column(mapping.get(c, c)) for c in table.column_names})
    try:
        out = lm.compute(table, columns=mapping)
    except ValueError as e:
        assert next(iter(mapping.values())) in str(e)
        return
    assert_tables_match(out, reference_compute(mapped))


def test_duplicate_column_names_in_the_input_are_a_schema_error():
    base = orders([1], [1], [D2022], [5])
    table = pa.Table.from_arrays(list(base.columns) + [pa.array([7])],
                                 names=["merchant_id", "customer_id", "order_ts", "amount", "amount"])
    with pytest.raises(lm.SchemaError, match="amount"):
        lm.compute(table)
    # Duplicates among columns the library does not read are harmless.
    other = pa.Table.from_arrays(list(base.columns) + [pa.array([7]), pa.array([8])],
                                 names=["merchant_id", "customer_id", "order_ts", "amount", "x", "x"])
    assert lm.compute(other).column("revenue").to_pylist() == [5]


def test_empty_input_with_a_wrong_type_is_still_a_schema_error():
    # SPEC §2: wrong types get a typed error; a missing column does even with zero rows,
    # so must a float amount column.
    table = pa.table({"merchant_id": pa.array([], pa.int64()), "customer_id": pa.array([], pa.int64()),
                      "order_ts": pa.array([], pa.timestamp("us")), "amount": pa.array([], pa.float64())})
    with pytest.raises(lm.SchemaError, match="amount"):
        lm.compute(table)


# --- pandas / polars -----------------------------------------------------------------

def test_pandas_frames_nat_nullable_categorical_and_index():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({
        "merchant_id": pd.array([1, 1, 2], dtype="Int64"),
        "customer_id": pd.array([-1, 2, -1], dtype="Int32"),
        "order_ts": pd.to_datetime(["2022-01-01 00:00", "2022-12-31 23:30", "2023-01-01 00:00"]).tz_localize("America/St_Johns"),
        "amount": [1, 2, 3],
        "reward": pd.array([True, None, False], dtype="boolean"),
    }, index=[10, 20, 30])
    before = frame.copy(deep=True)
    check(pa.Table.from_pandas(frame, preserve_index=False), source=frame, by="merchant", period="month")
    pd.testing.assert_frame_equal(frame, before)

    nat = frame.copy()
    nat.loc[20, "order_ts"] = pd.NaT
    with pytest.raises(lm.NullValueError, match=r"row 1: null in column 'order_ts'"):
        lm.compute(nat)
    na = frame.copy()
    na["amount"] = pd.array([1, 2, None], dtype="Int64")
    with pytest.raises(lm.NullValueError, match=r"row 2: null in column 'amount'"):
        lm.compute(na)
    cat = frame.copy()
    cat["merchant_id"] = cat["merchant_id"].astype("category")
    with pytest.raises(lm.InputError, match="merchant_id"):
        lm.compute(cat)


def test_pandas_all_none_reward_column_is_all_false():
    # pandas stores an all-None column as object; Arrow reads it as the null type. null = false.
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"merchant_id": [1, 1], "customer_id": [1, 2],
                          "order_ts": pd.to_datetime(["2022-01-01", "2023-01-01"]), "amount": [1, 2],
                          "reward": [None, None]})
    out = lm.compute(frame)
    assert out.column("reward_orders").to_pylist() == [0, 0]
    assert out.column("orders").to_pylist() == [1, 1]


def test_polars_frames():
    pl = pytest.importorskip("polars")
    frame = pl.DataFrame({
        "merchant_id": pl.Series([1, 1, 2, 2], dtype=pl.Int32),
        "customer_id": pl.Series([I64_MIN, I64_MIN, 0, I64_MAX], dtype=pl.Int64),
        "order_ts": pl.Series([dt.datetime(2022, 12, 31, 22), dt.datetime(2023, 1, 1, 1),
                               dt.datetime(1970, 1, 1), dt.datetime(2262, 4, 11)])
        .dt.replace_time_zone("UTC").dt.convert_time_zone("Asia/Kathmandu"),
        "amount": pl.Series([0, I64_MAX, 3, 4], dtype=pl.Int64),
        "reward": pl.Series([None, True, False, None], dtype=pl.Boolean),
    })
    for period in ("year", "month", "all"):
        check(frame.to_arrow(), source=frame, by="merchant", period=period)
    merchants = pl.DataFrame({"merchant_id": [2, 1], "industry": ["b", "a"], "annual_fee": [24, 12]})
    out = lm.compute(frame.to_arrow(), merchants, by="industry")
    assert_tables_match(out, reference_compute(frame.to_arrow(), merchants.to_arrow(), by=("industry",)))


# --- merchants tables ---------------------------------------------------------------------

def test_merchants_int32_ids_nulls_extra_columns_absent_ids_and_by_forms():
    table = random_orders(200, seed=8, ids=(0, 5))
    merchants = pa.table({
        "merchant_id": pa.array([3, 1, 99, 0, -7], pa.int32()),
        "industry": ["c", None, "z", "unknown", "x"],
        "country": pa.array(["C", "A", None, "A", "x"]).dictionary_encode(),
        "annual_fee": pa.array([36, None, 12, 0, 1], pa.int32()),
        "extra": [1, 2, 3, 4, 5],
    })
    ref_merchants = merchants.set_column(2, "country", merchants.column("country").cast(pa.string()))
    for by in ("industry", ("industry",), ["country", "industry"], ("size", "country")):
        out = lm.compute(table, merchants, by=by, period="quarter")
        by_tuple = (by,) if isinstance(by, str) else tuple(by)
        assert_tables_match(out, reference_compute(table, ref_merchants, by=by_tuple, period="quarter"))
    assert lm.compute(table, merchants, by="industry").equals(lm.compute(table, merchants, by=("industry",)))


def test_merchants_string_ids_and_duplicates():
    table = orders([1, 2], [1, 1], [D2022, D2022], [1, 2])
    with pytest.raises(lm.SchemaError, match="merchant_id"):
        lm.compute(table, pa.table({"merchant_id": ["1", "2"]}))
    with pytest.raises(lm.DuplicateMerchantError) as err:
        lm.compute(table, pa.table({"merchant_id": pa.array([5, 3, 5], pa.int32())}))
    assert err.value.row == 2 and "merchant_id 5" in str(err.value) and "first at row 0" in str(err.value)


@pytest.mark.skipif(not hasattr(pa, "string_view"), reason="pyarrow < 16 has no string_view type to test with")
def test_merchants_string_view_columns():
    # string_view is an Arrow string type (polars' newest compat level produces it).
    table = orders([1, 2], [1, 1], [D2022, D2022], [1, 2])
    merchants = pa.table({"merchant_id": [1, 2], "industry": pa.array(["a", "b"], pa.string_view()),
                          "country": pa.array(["DE", "FR"], pa.string_view())})
    out = lm.compute(table, merchants, by=("industry", "country"))
    assert out.select(["industry", "country", "orders"]).to_pylist() == [
        {"industry": "a", "country": "DE", "orders": 1}, {"industry": "b", "country": "FR", "orders": 1}]


def test_merchants_csv_with_a_blank_annual_fee_column(tmp_path):
    # README: "a missing or null annual_fee is 0". A CSV whose annual_fee cells are all blank is
    # read by pyarrow as a null-typed column: every fee is null, so 0.
    path = tmp_path / "m.csv"
    path.write_text("merchant_id,industry,country,annual_fee\n1,retail,DE,\n2,food,NA,\n")
    table = orders([1, 2], [1, 1], [D2022, D2022], [1, 2])
    out = lm.compute(table, str(path), by="country")
    assert out.select(["country", "fees"]).to_pylist() == [{"country": "DE", "fees": 0.0},
                                                            {"country": "NA", "fees": 0.0}]


def test_merchants_null_typed_annual_fee_column():
    table = orders([1, 2], [1, 1], [D2022, D2022], [1, 2])
    merchants = pa.table({"merchant_id": [1, 2], "annual_fee": pa.nulls(2)})
    out = lm.compute(table, merchants)
    assert out.column("fees").to_pylist() == [0.0]


def test_merchants_csv_with_numeric_industry_codes(tmp_path):
    # Industry as NAICS codes: the library reads the CSV itself, so "454110" is an industry
    # name (SPEC §2: industry is a string), not a type error.
    path = tmp_path / "m.csv"
    path.write_text("merchant_id,industry,country,annual_fee\n1,454110,840,12\n2,722511,276,24\n")
    table = orders([1, 2], [1, 1], [D2022, D2022], [1, 2])
    out = lm.compute(table, str(path), by=("industry", "country"))
    assert out.select(["industry", "country", "fees"]).to_pylist() == [
        {"industry": "454110", "country": "840", "fees": 12.0},
        {"industry": "722511", "country": "276", "fees": 24.0},
    ]


@pytest.mark.parametrize("column", ["merchant_id", "annual_fee"])
def test_merchants_uint64_beyond_int64_gets_a_typed_error_or_right_numbers(column):
    table = orders([1, 2], [1, 1], [D2022, D2022], [1, 2])
    merchants = pa.table({"merchant_id": pa.array([1, 2], pa.uint64()), "annual_fee": pa.array([12, 24], pa.uint64())})
    idx = merchants.schema.get_field_index(column)
    values = [2**63, 2] if column == "merchant_id" else [2**63, 24]
    merchants = merchants.set_column(idx, column, pa.array(values, pa.uint64()))
    try:
        out = lm.compute(table, merchants, by="merchant")
    except lm.InputError as e:
        assert "row 0" in str(e) or column in str(e)
        return
    # Accepted: merchant 1 either has no row (id 2**63) or the fee 2**63.
    expected = [0.0, 24.0] if column == "merchant_id" else [float(2**63), 24.0]
    assert out.column("fees").to_pylist() == expected


# --- options -------------------------------------------------------------------------------

def test_fraction_size_edges_are_accepted_and_labelled():
    # check_size_edges accepts fractions.Fraction; labelling 3000 as "3k" must not crash
    # (format(Fraction, "g") is a TypeError before Python 3.12).
    from fractions import Fraction

    table = random_orders(60, seed=9)
    check(table, by="size", period="month", size_edges=(Fraction(1, 2), Fraction(3000)))


def test_numpy_integer_size_edges_are_numbers():
    # np.float64 edges are accepted (a float subclass); np.int64 ones are numbers too.
    table = random_orders(60, seed=10)
    out = lm.compute(table, by="size", period="month", size_edges=np.array([1, 3]))
    assert out.equals(lm.compute(table, by="size", period="month", size_edges=(1, 3)))


def test_mapping_the_optional_reward_column_to_a_missing_name_is_an_error():
    # columns={"reward": "promo"} on an input without "promo": a typo that would silently
    # zero every reward metric; a mapped column that is absent is a SchemaError like
    # a mapped required one.
    table = orders([1, 1], [1, 2], [D2022, D2022], [1, 2], [True, True])
    with pytest.raises(lm.SchemaError, match="promo"):
        lm.compute(table, columns={"reward": "promo"})


def test_concurrent_calls_from_threads_agree_with_serial_ones():
    from concurrent.futures import ThreadPoolExecutor

    tables = [random_orders(400, seed=s, ids=(-50, 50)) for s in range(8)]
    serial = [lm.compute(t, by=("merchant", "size"), period="month") for t in tables]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda t: lm.compute(t, by=("merchant", "size"), period="month"), tables * 3))
    for i, out in enumerate(parallel):
        assert out.equals(serial[i % 8])


# --- corrupt files -------------------------------------------------------------------------
# Found by flipping single bytes of small files: every outcome must be the right numbers or
# an lm.InputError (SPEC §2: truncated or corrupt files get a typed error), never a
# UnicodeDecodeError or an ArrowMemoryError.

def _corrupt_sample(n=200):
    rnd = np.random.default_rng(0)
    return pa.table({
        "merchant_id": np.sort(rnd.integers(0, 5, n)), "customer_id": np.arange(n),
        "order_ts": pa.array(np.full(n, 1_650_000_000_000_000), pa.timestamp("us")),
        "amount": rnd.integers(0, 100, n), "reward": pa.array(rnd.random(n) < 0.5),
    })


def test_corrupt_zstd_buffer_length_is_a_corrupt_input_error(tmp_path):
    # Each compressed buffer starts with its uncompressed length (int64); a corrupt length
    # of 2**50 bytes must not surface as a failed petabyte malloc.
    path = tmp_path / "z.arrow"
    write_arrow(_corrupt_sample(), path, max_chunksize=100, compression="zstd")
    data = bytearray(path.read_bytes())
    frame = data.find(b"\x28\xb5\x2f\xfd")  # the first zstd frame
    assert frame > 8
    data[frame - 8: frame] = (2**50).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(lm.CorruptInputError, match=r"z\.arrow"):
        lm.compute(str(path))


@pytest.mark.parametrize("kind", ["arrow", "parquet"])
def test_field_name_that_is_not_utf8_is_a_corrupt_input_error(tmp_path, kind):
    path = tmp_path / f"names.{kind}"
    table = _corrupt_sample()
    if kind == "arrow":
        write_arrow(table, path)
        name = b"reward"                 # the footer's copy of the schema
    else:
        pq.write_table(table, path)
        name = b"merchant_id"            # the Parquet footer's schema element
    data = bytearray(path.read_bytes())
    if kind == "arrow":
        at = data.rfind(name)
    else:  # the first name in the footer (FileMetaData.schema), which precedes the row groups'
        footer = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
        at = data.find(name, footer)
    assert at > 0
    data[at] = 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(lm.CorruptInputError, match=rf"names\.{kind}"):
        lm.compute(str(path))
