"""SPEC §9 cohorts and concentration against the pure-Python reference, on both engines.

Also: the chunk interface (pieces of the input on several states, combined
by addition), record-batch sizes, input formats and spooled streams,
unmodified inputs, bad input raising what compute raises, option errors,
and the command line.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_analyses import (
    COHORT_COLUMNS,
    CONCENTRATION_COLUMNS,
    assert_rows_match,
    reference_cohorts,
    reference_concentration,
)
from strategies import (
    ALL_BY_KEYS,
    bys,
    orders_and_merchants,
    orders_tables,
    rebatch,
    recent_instants_ns,
    zoned_instants_ns,
    zoned_merchants,
)

import loyaltymetrics as lm
import loyaltymetrics.cohort_analysis as cohorts_module
import loyaltymetrics.concentration_analysis as concentration_module
from loyaltymetrics import analyses, inputs
from loyaltymetrics.cli import main

ENGINES = ("cython", "numba")
GROUPINGS = [list(c) for k in range(len(ALL_BY_KEYS) + 1) for c in itertools.combinations(ALL_BY_KEYS, k)]
GROUPINGS += [["size", "merchant"], ["country", "industry"]]
KEY_NAMES = {"merchant": "merchant_id", "industry": "industry", "country": "country", "size": "size"}

# Amounts whose store-customer sums share histogram bins and tie: exercises the refinement passes.
CLOSE_AMOUNTS = st.sampled_from([0, 1, 63, 64, 65, 1000, 1001, 1003, 1007, 4096, 4100, 10**12, 10**12 + 1]) | \
    st.integers(0, 3000)
TOPS = st.sampled_from([0.05, 1.0, 0.5, 0.07, 1e-12, 0.999, Fraction(1, 3), 0.25]) | \
    st.floats(min_value=1e-6, max_value=1.0)


def _ids(by):
    return ",".join(by) or "network"


def cohort_data(**kwargs):
    return orders_and_merchants(instants=recent_instants_ns(), **kwargs)


def key_names(by, merchants=None):
    """Group-key columns; ``merchant_name`` follows ``merchant_id`` when the merchants have names."""
    names = []
    for b in by:
        names.append(KEY_NAMES[b])
        if b == "merchant" and merchants is not None and "name" in merchants.column_names:
            names.append("merchant_name")
    return names


def check_cohorts(orders, merchants, by, period, engine, **kwargs):
    actual = lm.cohorts(orders, merchants, by=by, period=period, engine=engine, **kwargs)
    ref_kwargs = {k: v for k, v in kwargs.items() if k in ("size_edges", "refunds", "timezone")}
    expected = reference_cohorts(orders, merchants, by=by, period=period, **ref_kwargs)
    assert_rows_match(actual, expected, key_names(by, merchants) + COHORT_COLUMNS)
    return actual


def record_passes(monkeypatch):
    """A list that gets the `targets` of each concentration pass's kernel as the pass starts."""
    passes = []
    real_run = concentration_module.run

    def counting_run(kernel, batches, *args):
        passes.append(kernel.targets)
        return real_run(kernel, batches, *args)

    monkeypatch.setattr(concentration_module, "run", counting_run)
    return passes


def check_concentration(orders, merchants, by, period, top, engine, **kwargs):
    actual = lm.concentration(orders, merchants, by=by, period=period, top=top, engine=engine, **kwargs)
    ref_kwargs = {k: v for k, v in kwargs.items() if k in ("size_edges", "refunds", "timezone")}
    expected = reference_concentration(orders, merchants, by=by, period=period, top=top, **ref_kwargs)
    assert_rows_match(actual, expected, key_names(by, merchants) + CONCENTRATION_COLUMNS)
    return actual


# --- against the reference ---------------------------------------------------------

@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("by", GROUPINGS, ids=_ids)
@pytest.mark.parametrize("period", ["month", "quarter", "year"])
@settings(deadline=None, max_examples=15)
@given(data=cohort_data())
def test_cohorts_match_reference(data, period, by, engine):
    orders, merchants = data
    check_cohorts(orders, merchants, by, period, engine)


@pytest.mark.parametrize("engine", ENGINES)
@settings(deadline=None)
@given(data=orders_and_merchants(), by=bys())
def test_cohorts_by_year_over_the_whole_timestamp_range(data, by, engine):
    orders, merchants = data
    check_cohorts(orders, merchants, by, "year", engine, size_edges=(0.5, 2))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("by", GROUPINGS, ids=_ids)
@pytest.mark.parametrize("period", ["year", "quarter", "month", "all"])
@settings(deadline=None, max_examples=15)
@given(data=orders_and_merchants(amounts=CLOSE_AMOUNTS), top=TOPS)
def test_concentration_matches_reference(data, top, period, by, engine):
    orders, merchants = data
    check_concentration(orders, merchants, by, period, top, engine)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("budget", [0, 3])
@pytest.mark.parametrize("refunds", [False, True], ids=["orders", "refunds"])
@settings(deadline=None)
@given(data=st.data(), by=bys(), top=TOPS, period=st.sampled_from(["year", "all"]))
def test_concentration_refines_by_histogram_when_collection_is_over_budget(data, by, top, period, budget, refunds,
                                                                          engine):
    # With refunds, store-customers of negative revenue go to the negative bin, refined alike.
    amounts = CLOSE_REFUNDS if refunds else CLOSE_AMOUNTS
    orders, merchants = data.draw(orders_and_merchants(amounts=amounts, max_customers=6))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(concentration_module, "COLLECT_BUDGET", budget)
        check_concentration(orders, merchants, by, period, top, engine, refunds=refunds)


@pytest.mark.parametrize("engine", ENGINES)
def test_concentration_many_close_values_takes_several_passes(engine, monkeypatch):
    # 300 clusters of 10 revenues (tied in pairs) 2**20 apart, all in one first-pass bin
    # (width 2**34 at 2**40); k = ceil(0.0483 × 3000) = 145 ends mid-cluster. Refinement bins of
    # (value - 2**40) < 2**29 are 2**22 wide at the top (4 clusters, 40 values: collected if the
    # budget allows), then 2**15 (one cluster), then exact.
    i, j = np.divmod(np.arange(3000), 10)
    values = 2**40 + i * 2**20 + j // 2
    n = len(values)
    orders = pa.table({"merchant_id": pa.array(np.zeros(n, np.int64)), "customer_id": pa.array(np.arange(n)),
                       "order_ts": pa.array(np.full(n, 19000, np.int32), pa.date32()), "amount": pa.array(values)})
    passes = record_passes(monkeypatch)
    for budget, kinds in ((1 << 21, ["collect"]), (100, ["histogram", "collect"]), (0, ["histogram"] * 3)):
        passes.clear()
        monkeypatch.setattr(concentration_module, "COLLECT_BUDGET", budget)
        check_concentration(orders, None, [], "year", 0.0483, engine)
        assert passes[0] is None
        assert ["collect" if t.collect.all() else "histogram" for t in passes[1:]] == kinds


@pytest.mark.parametrize("engine", ENGINES)
def test_cohorts_and_concentration_of_empty_input(engine):
    empty = pa.table({"merchant_id": pa.array([], pa.int64()), "customer_id": pa.array([], pa.int64()),
                      "order_ts": pa.array([], pa.timestamp("us")), "amount": pa.array([], pa.int64())})
    c = lm.cohorts(empty, by=["merchant", "size"], engine=engine)
    assert c.num_rows == 0 and c.column_names == ["merchant_id", "size"] + COHORT_COLUMNS
    k = lm.concentration(empty, by=["industry"], engine=engine)
    assert k.num_rows == 0 and k.column_names == ["industry"] + CONCENTRATION_COLUMNS


# --- refunds (SPEC §2 "Refunds") -----------------------------------------------------------

# Close amounts and refunds: revenues that tie, straddle 0 and fall in the negative bin together.
CLOSE_REFUNDS = CLOSE_AMOUNTS | st.sampled_from([-1, -2, -63, -64, -65, -1000, -1001, -10**12]) | \
    st.integers(-3000, -1)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("by", [[], ["merchant"], ["size"], ["industry", "size"], ["country", "merchant"]],
                         ids=_ids)
@pytest.mark.parametrize("period", ["month", "quarter", "year"])
@settings(deadline=None, max_examples=25)
@given(data=cohort_data(amounts=CLOSE_REFUNDS))
def test_cohorts_with_refunds_match_reference(data, period, by, engine):
    orders, merchants = data
    check_cohorts(orders, merchants, by, period, engine, refunds=True)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("by", [[], ["merchant"], ["size"], ["industry", "size"], ["country", "merchant"]],
                         ids=_ids)
@pytest.mark.parametrize("period", ["year", "quarter", "month", "all"])
@settings(deadline=None, max_examples=25)
@given(data=orders_and_merchants(amounts=CLOSE_REFUNDS), top=TOPS)
def test_concentration_with_refunds_matches_reference(data, top, period, by, engine):
    orders, merchants = data
    check_concentration(orders, merchants, by, period, top, engine, refunds=True)


@pytest.mark.parametrize("engine", ENGINES)
@settings(deadline=None, max_examples=30)
@given(data=cohort_data(amounts=CLOSE_REFUNDS), by=bys(), top=TOPS, k=st.integers(1, 9),
       threads=st.integers(1, 3), chunk_rows=st.sampled_from([1, 2, 3, 7, 1 << 20]))
def test_refunds_threads_chunk_and_batch_sizes_match_reference(data, by, top, k, threads, chunk_rows, engine):
    orders, merchants = data
    orders = rebatch(orders, k, empty_batches=k % 3 == 0)
    many = dict(engine=engine, threads=threads, chunk_rows=chunk_rows, refunds=True)
    check_cohorts(orders, merchants, by, "quarter", engine, **{k: v for k, v in many.items() if k != "engine"})
    for budget in (0, 1 << 21):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(concentration_module, "COLLECT_BUDGET", budget)
            actual = lm.concentration(orders, merchants, by=by, top=top, **many)
            expected = reference_concentration(orders, merchants, by=by, top=top, refunds=True)
            assert_rows_match(actual, expected, key_names(by, merchants) + CONCENTRATION_COLUMNS)


def _refund_table(rows):
    """rows: (merchant, customer, "YYYY-MM-DD", amount), sorted."""
    return pa.table({
        "merchant_id": pa.array([r[0] for r in rows], pa.int64()),
        "customer_id": pa.array([r[1] for r in rows], pa.int64()),
        "order_ts": pa.array([dt.date.fromisoformat(r[2]) for r in rows], pa.date32()),
        "amount": pa.array([r[3] for r in rows], pa.int64()),
    })


REFUND_EXAMPLE = [
    (1, 1, "2022-01-05", -7),      # a refund before customer 1's first order (same month)
    (1, 1, "2022-01-20", 100),
    (1, 1, "2022-03-02", -30),     # a refund in a month without orders: revenue, nobody active
    (1, 2, "2021-12-30", -50),     # a refund before customer 2's cohort period: in no cell
    (1, 2, "2022-02-01", 40),
    (1, 2, "2022-02-02", -60),     # customer 2's February revenue is -20
    (1, 3, "2022-02-10", -5),      # only refunds: no cohort, no customer
    (1, 4, "2022-03-01", 10),      # the latest order: March 2022 is the horizon
    (1, 4, "2022-04-01", -1),      # after the horizon: in no cell
]


@pytest.mark.parametrize("engine", ENGINES)
def test_refunds_hand_worked_cohorts(engine):
    out = lm.cohorts(_refund_table(REFUND_EXAMPLE), period="month", refunds=True, engine=engine).to_pylist()
    cells = {(r["cohort_start"].month, r["period_index"]): (r["cohort_customers"], r["active_customers"],
                                                            r["orders"], r["revenue"], r["cumulative_revenue"])
             for r in out}
    # Cohort 2022-01: customer 1 (its January refund is not its rank-1 order, and is in its cell).
    assert cells[(1, 0)] == (1, 1, 1, 100 - 7, 93)
    assert cells[(1, 1)] == (1, 0, 0, 0, 93)
    assert cells[(1, 2)] == (1, 0, 0, -30, 63)        # March: a refund, nobody active
    # Cohort 2022-02: customer 2 (December's refund is before its cohort: in no cell).
    assert cells[(2, 0)] == (1, 1, 1, 40 - 60, -20)
    assert cells[(2, 1)] == (1, 0, 0, 0, -20)
    # Cohort 2022-03: customer 4; its April refund is after the horizon (March), in no cell.
    assert cells[(3, 0)] == (1, 1, 1, 10, 10)
    assert len(cells) == 6
    assert out == reference_cohorts(_refund_table(REFUND_EXAMPLE), period="month", refunds=True)


@pytest.mark.parametrize("engine", ENGINES)
def test_refunds_hand_worked_concentration(engine):
    out = lm.concentration(_refund_table(REFUND_EXAMPLE), period="year", top=0.5, refunds=True,
                           engine=engine).to_pylist()
    # 2022: customers 1 (93 - 30 = 63), 2 (40 - 60 = -20), 4 (10 - 1 = 9); customer 3 has only
    # refunds (-5): not a customer, but in revenue. k = ceil(0.5 × 3) = 2: 63 + 9 = 72.
    # 2021: customer 2's refund only: no customers, no row.
    assert [(r["period_start"].year, r["customers"], r["top_customers"], r["revenue"], r["top_revenue"])
            for r in out] == [(2022, 3, 2, 63 - 20 + 9 - 5, 72)]
    # k = 3 takes the negative customer too.
    (row,) = lm.concentration(_refund_table(REFUND_EXAMPLE), top=1, refunds=True, engine=engine).to_pylist()
    assert row["top_revenue"] == 63 - 20 + 9


@pytest.mark.parametrize("analysis", ["cohorts", "concentration"])
def test_negative_amount_error_names_the_refunds_flag(analysis):
    with pytest.raises(lm.NegativeAmountError, match="refunds=True / --refunds"):
        getattr(lm, analysis)(_refund_table(REFUND_EXAMPLE))


# --- the chunk interface: pieces on several states, combined by addition ------------------

def _pieces(batch, cuts):
    """Cut one OrderBatch at store-customer boundaries ``cuts`` (row indices)."""
    bounds = [0] + sorted(cuts) + [len(batch)]
    return list(zip(bounds[:-1], bounds[1:]))


def _round_robin_run(n_states, draw_cuts):
    """A run() that hands pieces of the input to ``n_states`` states in turn, as a chunk-parallel driver does."""
    def run(kernel, batches, *args):
        states = [kernel.new_state() for _ in range(n_states)]
        turn = 0
        for batch in batches:
            keys = np.stack([batch.merchant_id.astype(np.int64), batch.customer_id.astype(np.int64)])
            boundaries = np.flatnonzero((keys[:, 1:] != keys[:, :-1]).any(axis=0)) + 1
            cuts = draw_cuts(boundaries.tolist())
            for start, stop in _pieces(batch, cuts):
                state = states[turn % n_states]
                # Each piece in two scan calls: the store-customer carries across them.
                middle = (start + stop) // 2
                kernel.scan(state, batch, start, middle)
                kernel.scan(state, batch, middle, stop)
                assert kernel.end_chunk(state) is None
                turn += 1
        return kernel.combine(kernel.finish(s) for s in states)
    return run


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("n_states", [1, 2, 3])
@settings(deadline=None, max_examples=30)
@given(data=cohort_data(amounts=CLOSE_AMOUNTS), by=bys(), top=TOPS, st_data=st.data())
def test_pieces_on_several_states_give_identical_tables(data, by, top, n_states, engine, st_data):
    orders, merchants = data
    whole_cohorts = lm.cohorts(orders, merchants, by=by, period="quarter", engine=engine)
    whole_conc = lm.concentration(orders, merchants, by=by, period="quarter", top=top, engine=engine)

    def draw_cuts(boundaries):
        return st_data.draw(st.lists(st.sampled_from(boundaries), unique=True)) if boundaries else []

    run = _round_robin_run(n_states, draw_cuts)
    table = pa.Table.from_batches([orders.combine_chunks().to_batches()[0]]) if orders.num_rows else orders
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cohorts_module, "run", run)
        patch.setattr(concentration_module, "run", run)
        patch.setattr(concentration_module, "COLLECT_BUDGET", st_data.draw(st.sampled_from([0, 2, 1 << 21])))
        assert lm.cohorts(table, merchants, by=by, period="quarter", engine=engine).equals(whole_cohorts)
        assert lm.concentration(table, merchants, by=by, period="quarter", top=top, engine=engine).equals(whole_conc)


@pytest.mark.parametrize("engine", ENGINES)
@settings(deadline=None, max_examples=30)
@given(data=cohort_data(amounts=CLOSE_AMOUNTS), by=bys(), top=TOPS, k=st.integers(1, 9),
       threads=st.integers(1, 3), chunk_rows=st.sampled_from([1, 2, 3, 7, 1 << 20]))
def test_threads_and_chunk_sizes_give_identical_tables(data, by, top, k, threads, chunk_rows, engine):
    # SPEC §8: identical, bit for bit, whatever the thread count or chunk size.
    orders, merchants = data
    orders = rebatch(orders, k)
    one = dict(engine=engine, threads=1)
    many = dict(engine=engine, threads=threads, chunk_rows=chunk_rows)
    assert lm.cohorts(orders, merchants, by=by, period="quarter", **many).equals(
        lm.cohorts(orders, merchants, by=by, period="quarter", **one))
    for budget in (0, 1 << 21):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(concentration_module, "COLLECT_BUDGET", budget)
            assert lm.concentration(orders, merchants, by=by, top=top, **many).equals(
                lm.concentration(orders, merchants, by=by, top=top, **one))


# --- engines, batch sizes, formats, inputs ----------------------------------------------

@settings(deadline=None)
@given(data=cohort_data(amounts=CLOSE_AMOUNTS), by=bys(), k=st.integers(1, 9), top=TOPS,
       period=st.sampled_from(["month", "year"]))
def test_engines_and_record_batch_sizes_give_identical_tables(data, by, k, top, period):
    orders, merchants = data
    cohorts = lm.cohorts(orders, merchants, by=by, period=period)
    conc = lm.concentration(orders, merchants, by=by, period=period, top=top)
    for engine in ENGINES:
        small = rebatch(orders, k, empty_batches=True)
        assert lm.cohorts(small, merchants, by=by, period=period, engine=engine).equals(cohorts)
        assert lm.concentration(small, merchants, by=by, period=period, top=top, engine=engine).equals(conc)


def _write_ipc(table, path, max_chunksize=None):
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max_chunksize)
    return str(path)


@settings(deadline=None, max_examples=25)
@given(data=cohort_data(amounts=CLOSE_AMOUNTS), by=bys(), top=TOPS)
def test_input_formats_and_one_shot_streams_give_identical_tables(data, by, top, tmp_path_factory):
    import pandas as pd
    import polars as pl

    orders, merchants = data
    orders = orders.append_column("note", pa.array(["x"] * orders.num_rows))   # a column the spool skips
    conc = check_concentration(orders, merchants, by, "year", top, "cython")
    cohorts = lm.cohorts(orders, merchants, by=by, period="month")
    tmp = tmp_path_factory.mktemp("formats")
    arrow, parquet = _write_ipc(orders, tmp / "o.arrow", 3), str(tmp / "o.parquet")
    pq.write_table(orders, parquet)
    digests = {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in (arrow, parquet)}
    df = orders.to_pandas(date_as_object=False)
    if "reward" in df.columns:
        df["reward"] = df["reward"].astype("boolean")
    df_before = df.copy(deep=True)
    sources = [arrow, parquet, df, pl.from_arrow(orders),
               lambda: pa.RecordBatchReader.from_batches(orders.schema, orders.to_batches(max_chunksize=2))]
    for source in sources:
        fresh = source() if callable(source) else source
        assert lm.concentration(fresh, merchants, by=by, top=top).equals(conc)
        fresh = source() if callable(source) else source
        assert lm.cohorts(fresh, merchants, by=by, period="month").equals(cohorts)
    assert digests == {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in digests}
    pd.testing.assert_frame_equal(df, df_before)


def test_spooled_stream_is_read_twice_and_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    rows = 2000
    orders = pa.table({"merchant_id": pa.array(np.zeros(rows, np.int64)),
                       "customer_id": pa.array(np.arange(rows, dtype=np.int64)),
                       "order_ts": pa.array(np.full(rows, 19000, np.int32), pa.date32()),
                       "amount": pa.array(np.arange(rows, dtype=np.int64) * 7 + 10_000)})
    passes = record_passes(monkeypatch)
    reader = pa.RecordBatchReader.from_batches(orders.schema, orders.to_batches(max_chunksize=64))
    out = lm.concentration(reader, top=0.1)
    assert len(passes) == 2                              # the stream was read again, from the spool
    assert out.equals(lm.concentration(orders, top=0.1))
    assert list(tmp_path.iterdir()) == []                # and the spool is gone


@settings(deadline=None, max_examples=25)
@given(data=cohort_data(), by=bys(), k=st.integers(1, 5))
def test_inputs_are_not_modified(data, by, k):
    orders, merchants = data
    orders = rebatch(orders, k)
    before = orders.to_pylist(), None if merchants is None else merchants.to_pylist()
    lm.cohorts(orders, merchants, by=by, period="quarter")
    lm.concentration(orders, merchants, by=by, period="quarter", top=0.3)
    assert (orders.to_pylist(), None if merchants is None else merchants.to_pylist()) == before


# --- bad input: the same typed errors as compute --------------------------------------------

UTC = dt.timezone.utc


def _orders(merchant, customer, when, amount, ts_type=pa.timestamp("us", tz="UTC")):
    return pa.table({"merchant_id": pa.array(merchant, pa.int64()), "customer_id": pa.array(customer, pa.int64()),
                     "order_ts": pa.array(when, ts_type), "amount": pa.array(amount, pa.int64())})


T = dt.datetime(2022, 1, 1, tzinfo=UTC)
BAD = {
    "unsorted merchant": _orders((2, 1, 3), (1, 1, 1), [T] * 3, (1, 2, 3)),
    "unsorted customer": _orders((1, 1, 1), (5, 4, 6), [T] * 3, (1, 2, 3)),
    "unsorted time": _orders((1, 1), (1, 1), [T, T - dt.timedelta(seconds=1)], (1, 2)),
    "negative amount": _orders((1, 1, 1), (1, 2, 3), [T] * 3, (1, -2, 3)),
    "negative and unsorted": _orders((1, 1), (2, 1), [T] * 2, (1, -2)),
    "before 1970": _orders((1, 1), (1, 2), [T, -5], (1, 2)),
    "null amount": _orders((1, 1), (1, 2), [T, T], (1, None)),
    "float amount": _orders((1,), (1,), [T], (1,)).set_column(3, "amount", pa.array([1.5])),
    "missing column": _orders((1,), (1,), [T], (1,)).drop_columns(["customer_id"]),
    "run overflow": _orders((1, 1), (1, 1), [T, T], (2**63 - 5, 10)),
}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("analysis", ["cohorts", "concentration"])
@pytest.mark.parametrize("name", list(BAD))
@pytest.mark.parametrize("as_file", [False, True])
def test_bad_input_raises_what_compute_raises(name, analysis, engine, as_file, tmp_path):
    table = BAD[name]
    source = _write_ipc(table, tmp_path / "bad.arrow", 1) if as_file else table
    with pytest.raises(lm.InputError) as expected:
        lm.compute(source)
    with pytest.raises(lm.InputError) as got:
        getattr(lm, analysis)(source, engine=engine)
    assert type(got.value) is type(expected.value)
    assert str(got.value) == str(expected.value)
    assert (got.value.source, got.value.row) == (expected.value.source, expected.value.row)


@pytest.mark.parametrize("engine", ENGINES)
def test_totals_that_overflow_are_typed_errors(engine):
    # Two store-customers of one merchant and period: each fits, their sum does not.
    table = _orders((1, 1), (1, 2), [T, T], (2**62, 2**62 + 2**61 + 2**60 + 2**59))
    table = pa.concat_tables([table, _orders((1, 1), (3, 4), [T, T], (2**62, 2**62))])
    with pytest.raises(lm.AmountOverflowError):
        lm.concentration(table, engine=engine)
    with pytest.raises(lm.AmountOverflowError):
        lm.cohorts(table, engine=engine)
    # Across merchants only the group sum overflows: still typed.
    spread = _orders((1, 2, 3), (1, 1, 1), [T] * 3, (2**62, 2**62, 2**62))
    with pytest.raises(lm.AmountOverflowError):
        lm.concentration(spread, engine=engine)
    with pytest.raises(lm.AmountOverflowError):
        lm.cohorts(spread, engine=engine)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("engine", ENGINES)
def test_overflow_met_only_adding_thread_pieces_names_the_row(engine, threads):
    # Merchant 1's revenue overflows int64 only over all its store-customers: with small chunks
    # every thread's piece fits, and a one-thread rescan names the row a one-thread scan names.
    orders = _orders([1] * 10, range(10), [T] * 10, [10**18] * 10)
    for analysis in (lm.cohorts, lm.concentration):
        with pytest.raises(lm.AmountOverflowError) as one:
            analysis(orders, engine=engine, threads=1)
        assert one.value.row == 9
        with pytest.raises(lm.AmountOverflowError) as many:
            analysis(orders, engine=engine, threads=threads, chunk_rows=2)
        assert (many.value.row, str(many.value)) == (9, str(one.value))
    # A one-shot stream cannot be read again for cohorts (no row); concentration spools it anyway.
    stream = pa.RecordBatchReader.from_batches(orders.schema, orders.to_batches())
    with pytest.raises(lm.AmountOverflowError) as err:
        lm.cohorts(stream, engine=engine, threads=threads, chunk_rows=2)
    assert err.value.row is None
    stream = pa.RecordBatchReader.from_batches(orders.schema, orders.to_batches())
    with pytest.raises(lm.AmountOverflowError) as err:
        lm.concentration(stream, engine=engine, threads=threads, chunk_rows=2)
    assert err.value.row == 9


def test_input_that_changes_between_passes_is_detected(tmp_path, monkeypatch):
    rows = 500
    orders = pa.table({"merchant_id": pa.array(np.zeros(rows, np.int64)),
                       "customer_id": pa.array(np.arange(rows, dtype=np.int64)),
                       "order_ts": pa.array(np.full(rows, 19000, np.int32), pa.date32()),
                       "amount": pa.array(np.arange(rows, dtype=np.int64) + 5000)})
    path = _write_ipc(orders, tmp_path / "o.arrow")
    real = concentration_module._Rereadable.batches
    calls = []

    def batches(self):
        calls.append(1)
        if len(calls) == 2:  # someone rewrites the file between the passes
            _write_ipc(orders.set_column(3, "amount", pa.array(np.full(rows, 5000, np.int64))), path)
        return real(self)

    monkeypatch.setattr(concentration_module._Rereadable, "batches", batches)
    with pytest.raises(lm.InputChangedError, match="read differently"):
        lm.concentration(path, top=0.1)


@pytest.mark.parametrize("call, match", [
    (lambda t: lm.concentration(t, top=0), "top"),
    (lambda t: lm.concentration(t, top=1.5), "top"),
    (lambda t: lm.concentration(t, top=-0.1), "top"),
    (lambda t: lm.concentration(t, top=float("nan")), "top"),
    (lambda t: lm.concentration(t, top="5%"), "top"),
    (lambda t: lm.concentration(t, top=True), "top"),
    (lambda t: lm.concentration(t, period="week"), "period"),
    (lambda t: lm.concentration(t, engine="fortran"), "engine"),
    (lambda t: lm.concentration(t, threads=0), "threads"),
    (lambda t: lm.cohorts(t, period="all"), "period"),
    (lambda t: lm.cohorts(t, by=["region"]), "unknown key"),
    (lambda t: lm.cohorts(t, engine="numpy"), "engine"),
    (lambda t: lm.cohorts(t, size_edges=(3, 1)), "strictly increasing"),
])
def test_bad_options_are_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(_orders((1,), (1,), [T], (1,)))


# --- engine internals and the command line --------------------------------------------------

def test_engines_share_the_state_layout_and_bins():
    from loyaltymetrics import _analyses, numba_analyses

    assert numba_analyses.CURSOR_FIELDS == _analyses.CURSOR_FIELDS
    assert numba_analyses.N_BINS == _analyses.N_BINS
    values = np.array([0, 1, 63, 64, 65, 127, 128, 129, 1000, 2**40 + 12345, 2**62, 2**63 - 1], dtype=np.int64)
    bins = _analyses.bins_of(values)
    assert [numba_analyses._bin_of(int(v)) for v in values] == bins.tolist()
    lower, width = _analyses.bin_offsets(bins)
    assert np.all((lower <= values) & (values - lower < width))          # each value lies in its bin
    every = np.arange(_analyses.N_BINS)
    lower, width = _analyses.bin_offsets(every)
    assert lower[0] == 0 and np.all(lower[1:] == lower[:-1] + width[:-1])  # bins tile [0, 2**63)
    assert int(lower[-1]) + int(width[-1]) == 2**63


def test_kernel_stops_at_a_full_state_and_resumes(monkeypatch):
    # Tiny initial buffers force every NEED_SPACE path; the result must not change.
    orders = pa.table({"merchant_id": pa.array(np.repeat(np.arange(5), 40)),
                       "customer_id": pa.array(np.tile(np.arange(40), 5)),
                       "order_ts": pa.array(np.tile(np.arange(40) * 9, 5).astype(np.int32) + 18000, pa.date32()),
                       "amount": pa.array(np.arange(200) * 37 % 5000)})
    want = (lm.cohorts(orders, by=["merchant"]), lm.concentration(orders, by=["merchant"], period="month"))
    for cls in (analyses.CohortState, analyses.HistState):
        init = cls.__init__
        monkeypatch.setattr(cls, "__init__", lambda self, *a, _init=init, **k: _init(self, *a, slots=1, rows=1))
    for engine in ENGINES:
        assert lm.cohorts(orders, by=["merchant"], engine=engine).equals(want[0])
        assert lm.concentration(orders, by=["merchant"], period="month", engine=engine).equals(want[1])


def test_inconsistent_state_arrays_are_refused():
    from loyaltymetrics import _analyses, numba_analyses, periods

    kernel = analyses.CohortKernel("month")
    [batch] = list(inputs.order_batches(_orders((1,), (1,), [T], (1,))))
    for module in (_analyses, numba_analyses):
        state = kernel.new_state()
        state.cells = np.zeros((len(state.slot_cohort), 10, 3), np.int64)   # too few periods
        month_table, month_starts, shift, zones = kernel.tables(batch.units_per_day)
        with pytest.raises(ValueError, match="inconsistent"):
            module.cohort_scan(state, batch.merchant_id, batch.customer_id, batch.order_ts, batch.amount,
                               month_table, month_starts, zones.merchant_id, zones.zone, periods.month_period("month"),
                               shift, periods.ts_max(batch.units_per_day), 0, 1)
        state = kernel.new_state()
        with pytest.raises(ValueError, match="zone tables"):       # a zone index without its table
            module.cohort_scan(state, batch.merchant_id, batch.customer_id, batch.order_ts, batch.amount,
                               month_table, month_starts, np.array([1], np.int64), np.array([1], np.int32),
                               periods.month_period("month"), shift, periods.ts_max(batch.units_per_day), 0, 1)


def test_cli_cohorts_and_concentration_write_what_the_api_returns(tmp_path, capsys):
    from loyaltymetrics.synthetic import generate

    made = generate(tmp_path / "o.arrow", tmp_path / "m.parquet", rows=20_000, seed=2, merchants_count=6)
    path, mpath = str(made.orders_path), str(made.merchants_path)
    assert main(["cohorts", path, "--merchants", mpath, "--by", "industry", "--period", "quarter",
                 "-o", str(tmp_path / "c.parquet")]) == 0
    assert pq.read_table(tmp_path / "c.parquet").equals(lm.cohorts(path, mpath, by=["industry"], period="quarter"))
    assert main(["concentration", path, "--by", "size", "--top", "0.1", "--engine", "numba",
                 "-o", str(tmp_path / "k.json")]) == 0
    rows = json.loads((tmp_path / "k.json").read_text())
    want = lm.concentration(path, by=["size"], top=0.1)
    assert [r["top_revenue"] for r in rows] == want.column("top_revenue").to_pylist()
    capsys.readouterr()
    assert main(["concentration", path]) == 0
    printed = capsys.readouterr().out.splitlines()
    network = lm.concentration(path)
    # The period is one column, its start marked "*" when not complete (SPEC §3).
    assert printed[0].split() == ["period"] + [c for c in CONCENTRATION_COLUMNS if not c.startswith("period_")]
    # header, rule, one line per row, the note (money in major units: tests/test_display.py), and a
    # footnote when a period is marked
    incomplete = not all(network.column("period_complete").to_pylist())
    assert len(printed) == network.num_rows + 3 + incomplete
    assert printed[network.num_rows + 2].startswith(f"({network.num_rows} rows;")
    assert [line.split()[0].endswith("*") for line in printed[2:network.num_rows + 2]] == [
        not c for c in network.column("period_complete").to_pylist()]
    with pytest.raises(SystemExit):                      # cohorts have no period "all"
        main(["cohorts", path, "--period", "all"])
    bad = _write_ipc(_orders((2, 1), (1, 1), [T, T], (1, 1)), tmp_path / "bad.arrow")
    assert main(["cohorts", bad]) == 1
    assert "bad.arrow: row 1:" in capsys.readouterr().err


def test_cli_refunds_flag_on_every_command(tmp_path, capsys):
    # SPEC §2: --refunds is accepted by compute, cohorts, concentration and report alike, and
    # the negative-amount error of each names that flag.
    path = _write_ipc(_refund_table(REFUND_EXAMPLE), tmp_path / "refunds.arrow")
    for command in ("compute", "cohorts", "concentration"):
        capsys.readouterr()
        assert main([command, path]) == 1
        err = capsys.readouterr().err
        assert "refunds.arrow: row 0:" in err and "--refunds" in err, err
        out = tmp_path / f"{command}.parquet"
        assert main([command, path, "--refunds", "-q", "-o", str(out)]) == 0
        api = getattr(lm, command)
        assert pq.read_table(out).equals(api(path, refunds=True))
    html = tmp_path / "report.html"
    capsys.readouterr()
    assert main(["report", path, "-o", str(html)]) == 1
    assert "--refunds" in capsys.readouterr().err and not html.exists()
    # By month: the orders (2022-01-20 .. 2022-03-01) hold no whole year, but February is whole (SPEC §3).
    assert main(["report", path, "--refunds", "--period", "month", "-o", str(html)]) == 0
    assert html.exists()


# --- merchant names (SPEC §2, §7) -------------------------------------------------------

@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("by", [["merchant"], ["size", "merchant"], ["industry"]], ids=_ids)
@settings(deadline=None, max_examples=20)
@given(data=cohort_data(merchant_names=True, amounts=CLOSE_REFUNDS), top=TOPS)
def test_merchant_name_follows_merchant_id_in_cohorts_and_concentration(data, top, by, engine):
    orders, merchants = data
    check_cohorts(orders, merchants, by, "quarter", engine, refunds=True)
    check_concentration(orders, merchants, by, "year", top, engine, refunds=True)


@pytest.mark.parametrize("engine", ENGINES)
def test_concentration_negative_revenues_refined_over_several_passes(engine, monkeypatch):
    # 3000 store-customers, each an order of 0 and a refund: revenues -(2**40 + i * 2**20 + j // 2)
    # in 300 clusters of 10, plus 10 customers at +1. k = ceil(0.5 × 3010) = 1505 ends inside the
    # negative bin [INT64_MIN, -1]: with no collection budget it is refined by histograms from
    # INT64_MIN until exact, with a budget it is collected; both give the reference's sum.
    i, j = np.divmod(np.arange(3000), 10)
    values = -(2**40 + i * 2**20 + j // 2)
    customers = np.repeat(np.arange(3000), 2)
    amounts = np.column_stack([np.zeros(3000, np.int64), values]).reshape(-1)
    customers = np.concatenate([customers, np.arange(3000, 3010)])
    amounts = np.concatenate([amounts, np.ones(10, np.int64)])
    n = len(amounts)
    orders = pa.table({"merchant_id": pa.array(np.zeros(n, np.int64)), "customer_id": pa.array(customers),
                       "order_ts": pa.array(np.full(n, 19000, np.int32), pa.date32()),
                       "amount": pa.array(amounts)})
    passes = record_passes(monkeypatch)
    for budget in (1 << 21, 100, 0):
        passes.clear()
        monkeypatch.setattr(concentration_module, "COLLECT_BUDGET", budget)
        check_concentration(orders, None, [], "year", 0.5, engine, refunds=True)
        assert passes[0] is None and len(passes) >= 2
        assert passes[1].low.tolist() == [np.iinfo(np.int64).min] and passes[1].high.tolist() == [-1]


# --- time zones (SPEC §3): each merchant's local calendar ---------------------------------

@st.composite
def zoned_data(draw, amounts=CLOSE_REFUNDS):
    orders = draw(orders_tables(instants=zoned_instants_ns(), amounts=amounts))
    merchants, timezone = draw(zoned_merchants(orders))
    return orders, merchants, timezone


@settings(deadline=None, max_examples=60)
@given(data=zoned_data(), by=bys(), top=TOPS, refunds=st.booleans(), engine=st.sampled_from(ENGINES),
       k=st.integers(1, 9), threads=st.integers(1, 3), chunk_rows=st.sampled_from([1, 2, 3, 7, 1 << 20]),
       cohort_period=st.sampled_from(["month", "quarter", "year"]),
       period=st.sampled_from(["month", "quarter", "year", "all"]))
def test_zones_every_engine_thread_count_chunk_and_batch_size_match_the_reference(
        data, by, top, refunds, engine, k, threads, chunk_rows, cohort_period, period):
    orders, merchants, timezone = data
    if not refunds and any(a < 0 for a in orders.column("amount").to_pylist()):
        orders = orders.set_column(3, "amount", pa.array([abs(a) for a in orders.column("amount").to_pylist()],
                                                         pa.int64()))
    orders = rebatch(orders, k)
    options = dict(refunds=refunds, timezone=timezone, threads=threads, chunk_rows=chunk_rows)
    if not any(not (refunds and a < 0) for a in orders.column("amount").to_pylist()):
        return      # no orders: an empty table (test_cohorts_and_concentration_of_empty_input)
    check_cohorts(orders, merchants, by, cohort_period, engine, **options)
    check_concentration(orders, merchants, by, period, top, engine, **options)


def _zoned(rows):
    return pa.table({
        "merchant_id": pa.array([r[0] for r in rows], pa.int64()),
        "customer_id": pa.array([r[1] for r in rows], pa.int64()),
        "order_ts": pa.array([dt.datetime.fromisoformat(r[2]) for r in rows], pa.timestamp("ns", tz="UTC")),
        "amount": pa.array([r[3] for r in rows], pa.int64()),
    })


def _zone_table(zones):
    ids = list(zones)
    return pa.table({"merchant_id": pa.array(ids, pa.int64()), "industry": ["x"] * len(ids),
                     "country": ["x"] * len(ids), "annual_fee": pa.array([0] * len(ids), pa.int64()),
                     "timezone": pa.array([zones[m] for m in ids], pa.string())})


ZONED_EXAMPLE = [
    (1, 1, "2023-11-05T05:30:00", 10),   # New York, the first 01:30 of the fall-back day
    (1, 1, "2023-11-05T06:30:00", 20),   # the second 01:30
    (1, 2, "1970-01-01T00:30:00", 5),    # 1969-12-31 in New York
    (1, 2, "2023-12-01T04:59:59", 1),    # 2023-11-30 23:59:59 EST
    (2, 1, "2023-01-31T18:14:00", 7),    # Kathmandu: 2023-01-31 23:59
    (2, 1, "2023-01-31T18:15:00", 8),    # 2023-02-01 00:00
    (3, 1, "1970-01-01T00:30:00", 9),    # UTC (no zone given): the same instant as merchant 1's, a later merchant
    (4, 1, "2011-12-30T09:59:59", 2),    # Apia: 2011-12-29 23:59:59 (-10)
    (4, 1, "2011-12-30T10:00:00", 3),    # 2011-12-31 00:00 (+14): Samoa skipped 2011-12-30
    (5, 1, "2014-10-25T21:59:59", 4),    # Moscow: 2014-10-26 01:59:59 (+4), before the change to +3
]
ZONED_MERCHANTS = {1: "America/New_York", 2: "Asia/Kathmandu", 3: None, 4: "Pacific/Apia", 5: "Europe/Moscow"}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("by", [[], ["merchant"]], ids=_ids)
def test_zones_hand_worked_example(engine, by):
    orders, merchants = _zoned(ZONED_EXAMPLE), _zone_table(ZONED_MERCHANTS)
    for period in ("month", "quarter", "year"):
        check_cohorts(orders, merchants, by, period, engine)
    for period in ("month", "year", "all"):
        check_concentration(orders, merchants, by, period, 1, engine)
    # The earliest order (1970-01-01 00:30Z, merchant 1 before merchant 3) starts "all" in New York's 1969-12.
    [row] = lm.concentration(orders, merchants, period="all", top=1, engine=engine).to_pylist()
    assert row["period_start"] == dt.date(1969, 12, 1)
    months = lm.cohorts(orders, merchants, by=["merchant"], engine=engine).to_pylist()
    first = [(r["cohort_start"], r["period_index"], r["revenue"]) for r in months if r["merchant_id"] == 1][:1]
    assert first == [(dt.date(1969, 12, 1), 0, 5)]
    # The default zone for merchant 3 moves its order to 1969 too.
    by_year = lm.concentration(orders, merchants, by=["merchant"], top=1, engine=engine,
                               timezone="America/Los_Angeles").to_pylist()
    assert [r["period_start"] for r in by_year if r["merchant_id"] == 3] == [dt.date(1969, 1, 1)]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_zones_at_the_ends_of_the_timestamp_range(engine, unit):
    # 1970-01-01 00:00:00Z is 1969-12-31 in New York; the last valid instant of the unit is
    # 2263-01-01 in Tokyo (2262-04-11 for nanoseconds, where they run out).
    per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit]
    end = (dt.datetime(2263, 1, 1) - dt.datetime(1970, 1, 1)).days * 86400 * per_second - 1
    last = min(end, np.iinfo(np.int64).max)
    orders = pa.table({"merchant_id": pa.array([1, 2, 2], pa.int64()), "customer_id": pa.array([1, 1, 2], pa.int64()),
                       "order_ts": pa.array([0, 0, last], pa.timestamp(unit)),
                       "amount": pa.array([1, 2, 3], pa.int64())})
    merchants = _zone_table({1: "America/New_York", 2: "Asia/Tokyo"})
    for period in ("month", "quarter", "year"):
        check_cohorts(orders, merchants, ["merchant"], period, engine)
        check_concentration(orders, merchants, ["merchant"], period, 0.5, engine)
    check_concentration(orders, merchants, [], "all", 0.5, engine)


def test_zones_day_range_and_month_range_in_the_partials():
    from loyaltymetrics import periods

    orders, merchants = _zoned(ZONED_EXAMPLE), _zone_table(ZONED_MERCHANTS)
    zones = inputs.read_merchants(merchants).zones()
    for engine in ENGINES:
        for kernel in (analyses.CohortKernel("month", engine, zones=zones), analyses.HistKernel("year", engine, zones=zones)):
            parts = analyses.run(kernel, inputs.order_batches(orders), threads=2, chunk_rows=2)
            # UTC days of the earliest (1970-01-01) and latest (2023-12-01) order.
            assert parts.day_range == (0, (dt.date(2023, 12, 1) - dt.date(1970, 1, 1)).days)
            # Months since 1969-01: New York's 1969-12 (11); the latest local month is New York's 2023-11.
            assert parts.month_range == (11, (2023 - 1969) * 12 + 10)
            assert parts.first_order[:2] == (int(np.datetime64("1970-01-01T00:30", "ns").astype(np.int64)), 1)
            assert periods.period_start("all", [0], parts.month_range[0])[0] == np.datetime64("1969-12-01")


def test_zones_bad_names_are_refused_before_reading():
    orders = _zoned(ZONED_EXAMPLE)
    for call in (lambda **k: lm.cohorts(orders, **k), lambda **k: lm.concentration(orders, **k),
                 lambda **k: lm.rfm(orders, **k).read_all()):
        with pytest.raises(ValueError, match="Mars/Olympus"):
            call(timezone="Mars/Olympus")
        with pytest.raises(lm.SchemaError, match="Mars/Olympus"):
            call(merchants=_zone_table({1: "America/New_York", 2: "Mars/Olympus"}))


@pytest.mark.parametrize("engine", ENGINES)
def test_zones_calendar_dates_are_the_same_date_in_every_zone(engine):
    # date32 and date64 order_ts are dates, not instants: 2023-01-01 is in January in New York too.
    days = [dt.date(2023, 1, 1), dt.date(2023, 1, 31), dt.date(2023, 2, 1)]
    merchants = _zone_table({1: "America/New_York", 2: "Asia/Kathmandu"})
    for ts_type in (pa.date32(), pa.date64()):
        orders = pa.table({"merchant_id": pa.array([1, 1, 2], pa.int64()), "customer_id": pa.array([1, 1, 1], pa.int64()),
                           "order_ts": pa.array(days, ts_type), "amount": pa.array([1, 2, 3], pa.int64())})
        got = check_cohorts(orders, merchants, ["merchant"], "month", engine).to_pylist()
        assert [(r["merchant_id"], r["cohort_start"]) for r in got if r["period_index"] == 0] == [
            (1, dt.date(2023, 1, 1)), (2, dt.date(2023, 2, 1))]
        check_concentration(orders, merchants, ["merchant"], "all", 1, engine)
        rfm = lm.rfm(orders, "M", merchants=merchants, engine=engine).read_all().to_pylist()
        assert [r["recency"] for r in rfm] == [0.0, 0.0]    # both of merchant 1's orders in January


@pytest.mark.parametrize("engine", ENGINES)
def test_zones_latest_order_month_before_the_earliest(engine):
    # Tokyo's order at 15:30Z is 2024-02-01 local; New York's later one (16:00Z) is 2024-01-31 local.
    # "all" counts months from February to January: at least one, as compute does; the cohorts' horizon
    # is February (the latest local month of any order), so Tokyo's cohort has its cell.
    orders = _zoned([(1, 1, "2024-01-31T16:00:00", 5), (2, 1, "2024-01-31T15:30:00", 7)])
    merchants = _zone_table({1: "America/New_York", 2: "Asia/Tokyo"})
    zones = inputs.read_merchants(merchants).zones()
    parts = analyses.run(analyses.HistKernel("all", engine, zones=zones), inputs.order_batches(orders))
    feb, jan = (2024 - 1969) * 12 + 1, (2024 - 1969) * 12
    assert (parts.month_range, parts.horizon_month) == ((feb, jan), feb)
    for by in ([], ["size"], ["merchant", "size"]):
        check_concentration(orders, merchants, by, "all", 1, engine, size_edges=(1, 2))
        check_cohorts(orders, merchants, by, "month", engine, size_edges=(1, 2))
