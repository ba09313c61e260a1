"""``lm.rfm`` (SPEC §9) against lifetimes itself, the pure-Python reference, and bad input.

1. CDNOW, the real order log shipped with lifetimes: ``rfm`` equals
   lifetimes' ``summary_data_from_transaction_data`` column by column, for
   every freq, both include_first_transaction settings, observation end
   given and defaulted, both engines.
2. Hypothesis: both engines, any thread count, chunk size, record-batch
   size and output capacity equal ``reference_rfm``; and the reference
   equals lifetimes on the same random orders.
3. Bad input raises the typed errors ``compute`` raises.
"""
import datetime as dt
import hashlib
from functools import lru_cache

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

import loyaltymetrics as lm
from loyaltymetrics.inputs import order_batches
from loyaltymetrics.rfm_summary import HOLDOUT_SCHEMA, SCHEMA, RfmKernel, observation_day, output_batches

from cdnow import cdnow_frame, cdnow_orders
from lifetimes_peer import key_of, lifetimes_summary, orders_frame
from reference_rfm import order_days, order_instants, reference_rfm
from strategies import orders_tables, rebatch

ENGINES = ("cython", "numba")
FREQS = ("D", "W", "M")
UTC = dt.timezone.utc

# --- 1. CDNOW against lifetimes -------------------------------------------------

# None: lifetimes' default, the latest order (1998-06-30). 1997-09-30: the
# usual CDNOW calibration end. 1997-02-15: inside the acquisition quarter, so
# later-acquired customers are absent and later orders dropped.
CDNOW_ENDS = (None, "1997-09-30", "1997-02-15")


@lru_cache(maxsize=None)
def cdnow_table():
    return cdnow_orders()


@lru_cache(maxsize=None)
def cdnow_lifetimes(freq, observation_end, include_first, value_column):
    return lifetimes_summary(cdnow_frame(), "customer_id", "date", value_column, freq=freq,
                             observation_end=observation_end, include_first_transaction=include_first)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("observation_end", CDNOW_ENDS)
@pytest.mark.parametrize("include_first", [False, True])
@pytest.mark.parametrize("freq", FREQS)
def test_cdnow_equals_lifetimes(freq, include_first, observation_end, engine):
    ours = lm.rfm(cdnow_table(), freq, observation_end, include_first, engine=engine).read_all()
    theirs = cdnow_lifetimes(freq, observation_end, include_first, "cents")
    assert ours.schema == SCHEMA
    assert len(ours) == len(theirs) > 0
    assert set(ours.column("merchant_id").to_pylist()) == {1}
    np.testing.assert_array_equal(ours.column("customer_id").to_numpy(), theirs.index.to_numpy())
    # Given the amounts in cents, lifetimes' float sums and means are of
    # integers below 2**53, hence exact: every column is equal bit for bit.
    for column in ("frequency", "recency", "T", "monetary_value"):
        np.testing.assert_array_equal(ours.column(column).to_numpy().astype(np.float64),
                                      theirs[column].to_numpy(), err_msg=column)


@pytest.mark.parametrize("observation_end", CDNOW_ENDS)
@pytest.mark.parametrize("include_first", [False, True])
@pytest.mark.parametrize("freq", FREQS)
def test_cdnow_monetary_value_in_dollars_as_lifetimes_users_compute_it(freq, include_first, observation_end):
    """lifetimes given CDNOW's dollar values: monetary_value / 100 agrees to a few ulp.

    lifetimes sums binary approximations of decimal dollars (each off by up
    to half an ulp), in two compensated float sums (per period, then the
    mean), and divides; rfm sums exact cents and divides twice (by the
    count, then by 100 here). Every value is ≥ 0, so each step's relative
    error is at most about one ulp (2**-53 ≈ 1.1e-16) and the two results
    differ by at most ~8 ulp relative: rtol 1e-15. (CDNOW shows ≤ 4.4e-16.)
    """
    ours = lm.rfm(cdnow_table(), freq, observation_end, include_first).read_all()
    theirs = cdnow_lifetimes(freq, observation_end, include_first, "dollar_value")
    np.testing.assert_array_equal(ours.column("customer_id").to_numpy(), theirs.index.to_numpy())
    dollars = ours.column("monetary_value").to_numpy() / 100
    np.testing.assert_allclose(dollars, theirs["monetary_value"].to_numpy(), rtol=1e-15, atol=0)
    np.testing.assert_array_equal(dollars == 0, theirs["monetary_value"].to_numpy() == 0)


def test_cdnow_cases_are_not_trivial():
    """The CDNOW comparisons see repeat buyers, fractional months and means, and truncation."""
    months = lm.rfm(cdnow_table(), "M").read_all()
    assert (months.column("frequency").to_numpy() > 0).sum() > 5000
    assert np.any(months.column("recency").to_numpy() % 1 != 0)
    assert np.any(months.column("monetary_value").to_numpy() % 1 != 0)
    early = lm.rfm(cdnow_table(), "D", "1997-02-15").read_all()
    assert 0 < len(early) < 23570


# --- 2. reference and properties --------------------------------------------------

def rows(reader_or_table):
    table = reader_or_table.read_all() if isinstance(reader_or_table, pa.RecordBatchReader) else reader_or_table
    return table.to_pylist()


@st.composite
def observation_ends(draw, table):
    """None, any date, or a date near the orders (on and around period boundaries)."""
    kind = draw(st.sampled_from(["none", "any", "near"]))
    if kind == "none" or (kind == "near" and len(table) == 0):
        return None
    if kind == "any":
        return draw(st.dates(dt.date(1970, 1, 1), dt.date(2262, 12, 31)))
    day = draw(st.sampled_from(order_days(table)))
    return min(max(day + dt.timedelta(days=draw(st.integers(-40, 40))), dt.date(1970, 1, 1)), dt.date(2262, 12, 31))


@given(st.data())
def test_rfm_equals_reference(data):
    table = data.draw(orders_tables())
    batched = rebatch(table, data.draw(st.integers(1, 70)), empty_batches=data.draw(st.booleans()))
    freq = data.draw(st.sampled_from(FREQS))
    include_first = data.draw(st.booleans())
    end = data.draw(observation_ends(table))
    engine = data.draw(st.sampled_from(ENGINES))
    threads = data.draw(st.sampled_from([1, 2, 3]))
    chunk_rows = data.draw(st.integers(1, 30))
    expected = reference_rfm(table, freq, end, include_first)
    got = lm.rfm(batched, freq, end, include_first, engine=engine, threads=threads, chunk_rows=chunk_rows)
    assert rows(got) == expected


def pieces(batches, lo, hi):
    """(batch, start, stop) covering global rows [lo, hi) of ``batches``."""
    offset = 0
    for batch in batches:
        start, stop = max(lo - offset, 0), min(hi - offset, len(batch))
        if start < stop:
            yield batch, start, stop
        offset += len(batch)


@given(st.data())
def test_chunked_kernel_equals_reference(data):
    """The chunk-parallel shape: chunks cut at store-customer boundaries, each its own state.

    Within a chunk, rows arrive in arbitrary [start, stop) slices of the
    record batches; the output capacity is tiny, so the kernel stops for
    space mid-batch and at chunk ends.
    """
    table = data.draw(orders_tables(allow_empty=False))
    batches = list(order_batches(rebatch(table, data.draw(st.integers(1, 20)))))
    freq = data.draw(st.sampled_from(FREQS))
    include_first = data.draw(st.booleans())
    end = data.draw(observation_ends(table))
    engine = data.draw(st.sampled_from(ENGINES))
    capacity = data.draw(st.integers(1, 4))
    day = observation_day(max(order_days(table)) if end is None else end)
    kernel = RfmKernel(freq, day, include_first, engine=engine, capacity=capacity)

    keys = list(zip(table.column("merchant_id").to_pylist(), table.column("customer_id").to_pylist()))
    boundaries = [i for i in range(1, len(keys)) if keys[i] != keys[i - 1]]
    cuts = sorted(data.draw(st.sets(st.sampled_from(boundaries))) if boundaries else [])
    edges = [0, *cuts, len(keys)]
    out = []
    for lo, hi in zip(edges, edges[1:]):
        state = kernel.new_state()
        for batch, start, stop in pieces(batches, lo, hi):
            # Split each piece once more at a drawn row: calls need not end at batch ends.
            mid = data.draw(st.integers(start, stop))
            kernel.scan(state, batch, start, mid)
            kernel.scan(state, batch, mid, stop)
        out += kernel.end_chunk(state) or []
    assert all(b.schema == SCHEMA and b.num_rows <= capacity for b in out)
    assert pa.Table.from_batches(out, SCHEMA).to_pylist() == reference_rfm(table, freq, end, include_first)


@given(st.data())
def test_reference_equals_lifetimes(data):
    """The oracle itself agrees with lifetimes on random orders (store-customer as lifetimes' customer)."""
    table = data.draw(orders_tables(allow_empty=False))
    freq = data.draw(st.sampled_from(FREQS))
    include_first = data.draw(st.booleans())
    end = data.draw(observation_ends(table))
    expected = reference_rfm(table, freq, end, include_first)
    theirs = lifetimes_summary(orders_frame(table), "customer", "date", "amount", freq=freq,
                               observation_end=None if end is None else pd.Timestamp(end),
                               include_first_transaction=include_first)
    assert list(theirs.index) == [key_of(r["merchant_id"], r["customer_id"]) for r in expected]
    for column in ("frequency", "recency", "T", "monetary_value"):
        assert theirs[column].tolist() == [float(r[column]) for r in expected], column


def test_kernel_stops_for_space_at_every_row():
    """Output capacity 1: a stop for space before every store-customer, same rows."""
    table = cdnow_table().slice(0, 500)
    for engine in ENGINES:
        kernel = RfmKernel("W", observation_day("1998-06-30"), engine=engine, capacity=1)
        out = list(output_batches(order_batches(table), kernel, threads=1))
        assert all(b.num_rows == 1 for b in out)
        assert pa.Table.from_batches(out).to_pylist() == reference_rfm(table, "W", dt.date(1998, 6, 30))


def test_output_is_streamed_in_bounded_batches():
    table = cdnow_orders(replicas=3)    # 70,710 store-customers, 208,977 rows
    reader = lm.rfm(table, "D", "1998-06-30", threads=1)
    assert isinstance(reader, pa.RecordBatchReader) and reader.schema == SCHEMA
    batches = list(reader)
    assert [b.num_rows for b in batches] == [65536, 70710 - 65536]
    # Two threads, chunks of 30,000 rows: more, smaller batches; the same rows.
    chunked = list(lm.rfm(table, "D", "1998-06-30", threads=2, chunk_rows=30_000))
    assert len(chunked) > 2 and max(b.num_rows for b in chunked) < 30_000
    assert pa.Table.from_batches(chunked).equals(pa.Table.from_batches(batches))


@pytest.mark.parametrize("engine", ENGINES)
def test_a_negative_amount_is_bad_input(engine):
    # SPEC §9: rfm takes no refunds; the error names the row and value and no flag rfm lacks.
    table = pa.table({
        "merchant_id": pa.array([1, 1, 1, 1], pa.int64()),
        "customer_id": pa.array([5, 5, 5, 5], pa.int64()),
        "order_ts": pa.array([dt.date(2023, 1, 1), dt.date(2023, 1, 2), dt.date(2023, 1, 2), dt.date(2023, 1, 9)],
                             pa.date32()),
        "amount": pa.array([100, 250, -300, -7], pa.int64()),
    })
    with pytest.raises(lm.NegativeAmountError, match="row 2: negative amount -300") as error:
        lm.rfm(table, engine=engine).read_all()
    assert "--refunds" not in str(error.value)
    with pytest.raises(TypeError):
        lm.rfm(table, engine=engine, refunds=True)


@pytest.mark.parametrize(
    "value",
    ["1998-01-01", "1998-01-01T23:59:59", dt.date(1998, 1, 1), dt.datetime(1998, 1, 1, 12),
     dt.datetime(1998, 1, 2, 1, tzinfo=dt.timezone(dt.timedelta(hours=2))),   # 1998-01-01 23:00 UTC
     np.datetime64("1998-01-01T18:00"), pd.Timestamp("1998-01-01 08:00")],
)
def test_observation_end_forms_are_the_same_utc_day(value):
    assert observation_day(value) == (dt.date(1998, 1, 1) - dt.date(1970, 1, 1)).days


@pytest.mark.parametrize("value, error", [
    ("1969-12-31", ValueError), ("2263-01-01", ValueError), ("01/02/1998", ValueError),
    (np.datetime64("NaT"), ValueError), (19980101, TypeError),
])
def test_bad_observation_end(value, error):
    with pytest.raises(error):
        lm.rfm(cdnow_table(), observation_end=value)


@pytest.mark.parametrize("bad", [dict(freq="Q"), dict(engine="c"), dict(threads=0), dict(chunk_rows=0)])
def test_bad_arguments(bad):
    with pytest.raises(ValueError):
        lm.rfm(cdnow_table(), **bad)


def test_one_shot_stream_needs_an_observation_end():
    table = cdnow_table().slice(0, 1000)
    with pytest.raises(ValueError, match="observation_end"):
        lm.rfm(pa.RecordBatchReader.from_batches(table.schema, table.to_batches(100)))
    stream = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(100))
    assert rows(lm.rfm(stream, "M", "1998-06-30")) == rows(lm.rfm(table, "M", "1998-06-30"))


def test_inputs_are_not_modified(tmp_path):
    table = cdnow_table().slice(0, 2000)
    frame = table.to_pandas()
    before = frame.copy(deep=True)
    path = tmp_path / "o.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=300)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    expected = reference_rfm(table, "W")
    for engine in ENGINES:
        assert rows(lm.rfm(frame, "W", engine=engine)) == expected
        assert rows(lm.rfm(str(path), "W", engine=engine)) == expected
    pd.testing.assert_frame_equal(frame, before)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_columns_mapping_and_parquet_input(tmp_path):
    table = cdnow_table().slice(0, 3000).rename_columns(["merchant_id", "customer_id", "created_at", "total_cents"])
    pq.write_table(table, tmp_path / "o.parquet", row_group_size=700)
    got = rows(lm.rfm(str(tmp_path / "o.parquet"), "M", columns={"order_ts": "created_at", "amount": "total_cents"}))
    assert got == rows(lm.rfm(cdnow_table().slice(0, 3000), "M"))


# --- 3. bad input: the errors compute raises ---------------------------------------

def _orders(merchant=(1, 1, 2), customer=(1, 2, 1), when=None, amount=(100, 200, 300), ts_type=pa.timestamp("us")):
    when = when or [dt.datetime(2022, 1, 1), dt.datetime(2022, 2, 1), dt.datetime(2022, 3, 1)]
    return pa.table({
        "merchant_id": pa.array(merchant, pa.int64()),
        "customer_id": pa.array(customer, pa.int64()),
        "order_ts": pa.array(when, ts_type),
        "amount": pa.array(amount, pa.int64()),
    })


BAD_TABLES = {
    "merchant goes back": _orders((2, 1, 3), (1, 1, 1)),
    "customer goes back": _orders((1, 1, 1), (5, 4, 6)),
    "time goes back": _orders((1, 1, 1), (1, 1, 1), [dt.datetime(2022, 5, 1), dt.datetime(2022, 4, 1),
                                                     dt.datetime(2022, 6, 1)]),
    "negative amount": _orders(amount=(100, -1, 300)),
    "before 1970": _orders(when=[dt.datetime(2022, 1, 1), dt.datetime(1969, 12, 31), dt.datetime(2022, 3, 1)]),
    "null key": _orders().set_column(1, "customer_id", pa.array([1, None, 1], pa.int64())),
    "float amount": _orders().set_column(3, "amount", pa.array([1.5, 2.0, 3.0])),
    "missing column": _orders().drop_columns(["amount"]),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("observation_end", [None, "2022-12-31"])
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_bad_input_raises_what_compute_raises(case, engine, observation_end, threads):
    table = BAD_TABLES[case]
    with pytest.raises(lm.InputError) as expected:
        lm.compute(table, threads=1)
    with pytest.raises(lm.InputError) as got:
        # One-row chunks: with two threads, order checks at chunk edges are the driver's.
        lm.rfm(table, observation_end=observation_end, engine=engine, threads=threads, chunk_rows=1).read_all()
    assert type(got.value) is type(expected.value)
    if case == "negative amount":  # the same file, row and value; compute's hint names --refunds, rfm has none
        assert str(got.value) == str(expected.value).split(" (pass refunds=True")[0] + ": rfm takes no refunds; " \
            "net them into their orders first (loyaltymetrics prepare does)"
    else:
        assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("engine", ENGINES)
def test_unsorted_across_record_batches_of_a_file(tmp_path, engine):
    table = _orders((1, 1, 1, 1), (1, 2, 3, 2), [dt.datetime(2022, 1, 1)] * 4, (1, 2, 3, 4))
    path = tmp_path / "o.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=3)
    with pytest.raises(lm.UnsortedInputError) as err:
        lm.rfm(str(path), engine=engine).read_all()
    assert err.value.source == str(path) and err.value.row == 3


@pytest.mark.parametrize("engine", ENGINES)
def test_corrupt_file(tmp_path, engine):
    path = tmp_path / "o.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, _orders().schema) as writer:
        writer.write_table(_orders())
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(lm.CorruptInputError):
        lm.rfm(str(path), observation_end="2022-12-31", engine=engine).read_all()


@pytest.mark.parametrize("include_first", [False, True])
@pytest.mark.parametrize("engine", ENGINES)
def test_sum_overflow_is_an_error_not_a_wrapped_number(engine, include_first):
    big = 2**62
    months = [dt.datetime(2022, m, 1) for m in (1, 2, 3)]
    table = _orders((1, 1, 1), (7, 7, 7), months, (big, big, big))
    with pytest.raises(lm.AmountOverflowError) as err:
        lm.rfm(table, "M", engine=engine, include_first_transaction=include_first).read_all()
    # The first period's amount is not summed unless included: the overflow comes a row later.
    assert err.value.row == (1 if include_first else 2)
    assert str(big) in str(err.value)


# --- the command line --------------------------------------------------------------

def test_cli_writes_parquet_equal_to_rfm(tmp_path):
    from loyaltymetrics.cli import main

    table = cdnow_table().slice(0, 5000).rename_columns(["merchant_id", "customer_id", "day", "cents"])
    source = tmp_path / "orders.parquet"
    pq.write_table(table, source)
    out = tmp_path / "rfm.parquet"
    assert main(["rfm", str(source), "-o", str(out), "--freq", "W", "--observation-end", "1997-12-31",
                 "--include-first-transaction", "--columns", "order_ts=day,amount=cents",
                 "--engine", "numba", "--threads", "2"]) == 0
    expected = lm.rfm(cdnow_table().slice(0, 5000), "W", "1997-12-31", True).read_all()
    assert pq.read_table(out).equals(expected)


def test_cli_bad_input_exits_1_and_leaves_no_partial_file(tmp_path, capsys):
    from loyaltymetrics.cli import main

    # Many store-customers, then an unsorted row far in: output batches are written before the error.
    good = cdnow_orders(replicas=2)
    bad = pa.concat_tables([good, good.slice(0, 1)])
    source = tmp_path / "orders.arrow"
    with pa.OSFile(str(source), "wb") as sink, pa.ipc.new_file(sink, bad.schema) as writer:
        writer.write_table(bad, max_chunksize=10_000)
    out = tmp_path / "rfm.parquet"
    out.write_bytes(b"an older result")
    assert main(["rfm", str(source), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"row {len(good)}" in err and "Traceback" not in err
    assert out.read_bytes() == b"an older result"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([source.name, out.name])


# --- calibration and holdout (lifetimes' calibration_and_holdout_data) -------------------

HOLDOUT_COLUMNS = (("frequency", "frequency_cal"), ("recency", "recency_cal"), ("T", "T_cal"),
                   ("monetary_value", "monetary_value_cal"), ("frequency_holdout", "frequency_holdout"),
                   ("monetary_value_holdout", "monetary_value_holdout"), ("duration_holdout", "duration_holdout"))


@lru_cache(maxsize=None)
def cdnow_holdout_lifetimes(freq, calibration_end, observation_end, include_first):
    from lifetimes.utils import calibration_and_holdout_data

    from lifetimes_peer import _months_compatible

    with _months_compatible(freq):
        return calibration_and_holdout_data(cdnow_frame(), "customer_id", "date", calibration_end,
                                            observation_period_end=observation_end, freq=freq,
                                            monetary_value_col="cents", include_first_transaction=include_first)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("calibration_end, observation_end", [
    ("1997-09-30", None), ("1997-09-30", "1998-03-31"), ("1997-02-15", "1997-06-01"), ("1998-06-29", None)])
@pytest.mark.parametrize("include_first", [False, True])
@pytest.mark.parametrize("freq", FREQS)
def test_cdnow_holdout_equals_lifetimes(freq, include_first, calibration_end, observation_end, engine):
    """Every column bit for bit, for D, W and M (M with lifetimes_peer's month division)."""
    ours = lm.rfm(cdnow_table(), freq, observation_end, include_first, calibration_end=calibration_end,
                  engine=engine).read_all()
    theirs = cdnow_holdout_lifetimes(freq, calibration_end, observation_end, include_first)
    assert ours.schema == HOLDOUT_SCHEMA
    assert len(ours) == len(theirs) > 0
    np.testing.assert_array_equal(ours.column("customer_id").to_numpy(), theirs.index.to_numpy())
    for column, their_column in HOLDOUT_COLUMNS:
        np.testing.assert_array_equal(ours.column(column).to_numpy().astype(np.float64),
                                      theirs[their_column].to_numpy(), err_msg=column)


def test_cdnow_holdout_cases_are_not_trivial():
    table = lm.rfm(cdnow_table(), "W", "1998-03-31", calibration_end="1997-09-30").read_all()
    holdout = table.column("frequency_holdout").to_numpy()
    assert 0 < (holdout > 0).sum() < len(table)
    assert np.any(table.column("monetary_value_holdout").to_numpy() % 1 != 0)
    # Customers first seen after the calibration end are absent.
    early = lm.rfm(cdnow_table(), "D", calibration_end="1997-02-15").read_all()
    assert 0 < len(early) < 23570


@st.composite
def calibration_ends(draw, table):
    """A calibration end near the orders (a date or a datetime within a day), and an observation end after it."""
    days = order_days(table)
    day = draw(st.sampled_from(days)) + dt.timedelta(days=draw(st.integers(-10, 10)))
    day = min(max(day, dt.date(1970, 1, 2)), dt.date(2262, 1, 1))
    if draw(st.booleans()):
        end = dt.datetime.combine(day, dt.time()) + dt.timedelta(seconds=draw(st.integers(0, 86_399)))
    else:
        end = day
    observation = None
    if draw(st.booleans()):
        base = end if isinstance(end, dt.datetime) else dt.datetime.combine(end, dt.time())
        observation = base + dt.timedelta(seconds=draw(st.integers(0, 60 * 86_400)))
        observation = min(observation, dt.datetime(2262, 12, 31))
        if draw(st.booleans()):
            observation = observation.date() if observation.date() >= (
                end.date() if isinstance(end, dt.datetime) else end) + dt.timedelta(days=1) else observation
    return end, observation


@given(st.data())
def test_holdout_equals_reference(data):
    table = data.draw(orders_tables(allow_empty=False))
    batched = rebatch(table, data.draw(st.integers(1, 70)), empty_batches=data.draw(st.booleans()))
    freq = data.draw(st.sampled_from(FREQS))
    include_first = data.draw(st.booleans())
    calibration_end, observation_end = data.draw(calibration_ends(table))
    engine = data.draw(st.sampled_from(ENGINES))
    expected = reference_rfm(table, freq, observation_end, include_first, calibration_end)
    got = lm.rfm(batched, freq, observation_end, include_first, calibration_end=calibration_end, engine=engine,
                 threads=data.draw(st.sampled_from([1, 2])), chunk_rows=data.draw(st.integers(1, 30)))
    assert rows(got) == expected


@given(st.data())
def test_holdout_reference_equals_lifetimes(data):
    """The oracle agrees with lifetimes' calibration_and_holdout_data on random orders."""
    from lifetimes.utils import calibration_and_holdout_data

    from lifetimes_peer import _months_compatible

    table = data.draw(orders_tables(allow_empty=False))
    ts_type = table.column("order_ts").type
    if pa.types.is_timestamp(ts_type) and ts_type.unit == "ns":
        # orders_frame gives lifetimes microseconds: compare the instants both sides see (1 ns after a
        # midnight calibration end is after it; the same order in microseconds is not).
        ts = pa.array(table.column("order_ts").cast(pa.int64()).to_numpy() // 1000 * 1000, pa.int64())
        table = table.set_column(table.schema.get_field_index("order_ts"), "order_ts", ts.cast(ts_type))
    freq = data.draw(st.sampled_from(FREQS))
    include_first = data.draw(st.booleans())
    calibration_end, observation_end = data.draw(calibration_ends(table))
    expected = reference_rfm(table, freq, observation_end, include_first, calibration_end)
    frame = orders_frame(table)
    latest = max(order_days(table))
    last = pd.Timestamp(frame["date"].max()) if observation_end is None else pd.Timestamp(observation_end)
    if not ((frame["date"] > pd.Timestamp(calibration_end)) & (frame["date"] <= last)).any():
        # lifetimes raises on an empty holdout; rfm reports zeros (and duration from the later end)
        event("empty holdout")
        assert all(r["frequency_holdout"] == 0 for r in expected)
        return
    assert latest is not None
    with _months_compatible(freq):
        theirs = calibration_and_holdout_data(frame, "customer", "date", pd.Timestamp(calibration_end),
                                              observation_period_end=None if observation_end is None
                                              else pd.Timestamp(observation_end),
                                              freq=freq, monetary_value_col="amount",
                                              include_first_transaction=include_first)
    assert list(theirs.index) == [key_of(r["merchant_id"], r["customer_id"]) for r in expected]
    for column, their_column in HOLDOUT_COLUMNS:
        assert theirs[their_column].tolist() == [float(r[column]) for r in expected], column


def test_holdout_kernel_stops_for_space_and_chunks():
    table = cdnow_table().slice(0, 3000)
    expected = reference_rfm(table, "W", dt.date(1998, 1, 1), False, dt.date(1997, 6, 30))
    for engine in ENGINES:
        got = lm.rfm(table, "W", "1998-01-01", calibration_end="1997-06-30", engine=engine, threads=2,
                     chunk_rows=97)
        assert rows(got) == expected


def test_holdout_arguments():
    with pytest.raises(ValueError, match="before calibration_end"):
        lm.rfm(cdnow_table(), observation_end="1997-01-01", calibration_end="1997-09-30")
    with pytest.raises(ValueError, match="calibration_end"):
        lm.rfm(cdnow_table(), calibration_end="30/09/1997")


def test_cli_calibration_end(tmp_path):
    from loyaltymetrics.cli import main

    source = tmp_path / "orders.parquet"
    pq.write_table(cdnow_table(), source)
    out = tmp_path / "rfm.parquet"
    assert main(["rfm", str(source), "-o", str(out), "--freq", "W", "--calibration-end", "1997-09-30",
                 "--observation-end", "1998-03-31", "-q"]) == 0
    expected = lm.rfm(cdnow_table(), "W", "1998-03-31", calibration_end="1997-09-30").read_all()
    assert pq.read_table(out).equals(expected)


# --- 4. time zones (SPEC §3): local days, weeks and months ------------------------------

def _zoned(rows):
    """rows: (merchant, customer, "YYYY-MM-DDTHH:MM:SS" UTC, amount), sorted."""
    return pa.table({
        "merchant_id": pa.array([r[0] for r in rows], pa.int64()),
        "customer_id": pa.array([r[1] for r in rows], pa.int64()),
        "order_ts": pa.array([dt.datetime.fromisoformat(r[2]) for r in rows], pa.timestamp("us", tz="UTC")),
        "amount": pa.array([r[3] for r in rows], pa.int64()),
    })


def _merchant_zones(zones):
    """A merchants table: merchant id -> IANA zone (None: no zone given)."""
    ids = list(zones)
    return pa.table({"merchant_id": pa.array(ids, pa.int64()), "industry": ["x"] * len(ids),
                     "country": ["x"] * len(ids), "annual_fee": pa.array([0] * len(ids), pa.int64()),
                     "timezone": pa.array([zones[m] for m in ids], pa.string())})


# New York, around the 2023 fall-back (06:00Z): 2023-11-04 23:30 EDT; the second 01:30 (EST) of
# 2023-11-05; 2023-11-05 23:30 EST. Local days: Nov 4, 5, 5; UTC days: Nov 5, 5, 6.
FALL_BACK = [(1, 1, "2023-11-05T03:30:00", 100), (1, 1, "2023-11-05T06:30:00", 20),
             (1, 1, "2023-11-06T04:30:00", 3)]


def test_reference_local_days_by_hand():
    ny = _merchant_zones({1: "America/New_York"})
    [local] = reference_rfm(_zoned(FALL_BACK), "D", merchants=ny)
    # Two local days: Nov 4 (100), Nov 5 (20 + 3); the observation end is the latest local day, Nov 5.
    assert local == {"merchant_id": 1, "customer_id": 1, "frequency": 1, "recency": 1.0, "T": 1.0,
                     "monetary_value": 23.0}
    [utc] = reference_rfm(_zoned(FALL_BACK), "D")
    assert utc["monetary_value"] == 3.0         # UTC days: Nov 5 (100 + 20), Nov 6 (3)
    assert reference_rfm(_zoned(FALL_BACK), "D", timezone="America/New_York") == [local]
    # Calibration end 2023-11-05 (local midnight): only the Nov 4 order is in calibration, the two
    # others are its holdout (one local day, two orders).
    [cal] = reference_rfm(_zoned(FALL_BACK), "D", calibration_end=dt.date(2023, 11, 5), merchants=ny)
    assert (cal["frequency"], cal["T"], cal["frequency_holdout"], cal["monetary_value_holdout"],
            cal["duration_holdout"]) == (0, 1.0, 1, 11.5, 0.0)


def _local_frame(table, merchants, timezone):
    """lifetimes' frame of ``table`` with each order's local wall-clock time (pandas' own zone conversion)."""
    frame = orders_frame(table)
    zones = {}
    if merchants is not None:
        zones = {m: z for m, z in zip(merchants.column("merchant_id").to_pylist(),
                                      merchants.column("timezone").to_pylist()) if z}
    merchant = table.column("merchant_id").to_pylist()
    local = []
    date32 = not pa.types.is_timestamp(table.column("order_ts").type)   # a calendar date: the same in every zone
    for m, when in zip(merchant, frame["date"]):
        zone = "UTC" if date32 else zones.get(m, timezone or "UTC")
        local.append(pd.Timestamp(when).tz_localize("UTC").tz_convert(zone).tz_localize(None))
    frame["date"] = pd.to_datetime(pd.Series(local, dtype="datetime64[us]"))
    return frame


@given(st.data())
def test_zoned_reference_equals_lifetimes_on_local_times(data):
    """lifetimes sees naive local times: the zoned reference is its summary of the same orders so shifted."""
    from strategies import zoned_instants_ns, zoned_merchants

    table = data.draw(orders_tables(allow_empty=False, instants=zoned_instants_ns()))
    merchants, timezone = data.draw(zoned_merchants(table))
    freq = data.draw(st.sampled_from(FREQS))
    include_first = data.draw(st.booleans())
    end = data.draw(st.none() | st.sampled_from(order_days(table, merchants, timezone)))
    expected = reference_rfm(table, freq, end, include_first, merchants=merchants, timezone=timezone)
    theirs = lifetimes_summary(_local_frame(table, merchants, timezone), "customer", "date", "amount", freq=freq,
                               observation_end=None if end is None else pd.Timestamp(end),
                               include_first_transaction=include_first)
    assert list(theirs.index) == [key_of(r["merchant_id"], r["customer_id"]) for r in expected]
    for column in ("frequency", "recency", "T", "monetary_value"):
        assert theirs[column].tolist() == [float(r[column]) for r in expected], column


@pytest.mark.parametrize("engine", ENGINES)
def test_local_days_by_hand_every_engine(engine):
    ny = _merchant_zones({1: "America/New_York"})
    table = _zoned(FALL_BACK)
    assert rows(lm.rfm(table, "D", merchants=ny, engine=engine)) == reference_rfm(table, "D", merchants=ny)
    assert rows(lm.rfm(table, "D", merchants=ny, engine=engine))[0]["monetary_value"] == 23.0
    assert rows(lm.rfm(table, "D", timezone="America/New_York", engine=engine))[0]["monetary_value"] == 23.0
    assert rows(lm.rfm(table, "D", engine=engine))[0]["monetary_value"] == 3.0
    [cal] = rows(lm.rfm(table, "D", calibration_end="2023-11-05", merchants=ny, engine=engine))
    assert (cal["frequency"], cal["frequency_holdout"], cal["monetary_value_holdout"]) == (0, 1, 11.5)


@pytest.mark.parametrize("engine", ENGINES)
def test_calibration_end_in_the_repeated_hour(engine):
    # New York, 2023-11-05: 01:45 EDT (05:45Z) is after a calibration end of 01:30, the second 01:15
    # (EST, 06:15Z) before it. lifetimes compares wall-clock times: the later instant is in calibration,
    # the earlier one in the holdout of the same store-customer.
    table = _zoned([(1, 1, "2023-11-05T05:45:00", 5), (1, 1, "2023-11-05T06:15:00", 7)])
    ny = _merchant_zones({1: "America/New_York"})
    end = dt.datetime(2023, 11, 5, 1, 30)
    expected = reference_rfm(table, "D", calibration_end=end, merchants=ny)
    assert [(r["frequency_holdout"], r["monetary_value_holdout"]) for r in expected] == [(1, 5.0)]
    assert rows(lm.rfm(table, "D", calibration_end=end, merchants=ny, engine=engine)) == expected


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_local_days_at_the_ends_of_the_timestamp_range(engine, unit):
    # 1970-01-01 00:00Z is 1969-12-31 in New York; the last valid instant of the unit is 2263-01-01 in Tokyo.
    per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit]
    last = min((dt.datetime(2263, 1, 1) - dt.datetime(1970, 1, 1)).days * 86400 * per_second - 1, 2**63 - 1)
    table = pa.table({"merchant_id": pa.array([1, 1, 2, 2], pa.int64()), "customer_id": pa.array([1, 1, 1, 1], pa.int64()),
                      "order_ts": pa.array([0, 3600 * per_second, 0, last], pa.timestamp(unit)),
                      "amount": pa.array([1, 2, 3, 4], pa.int64())})
    zones = _merchant_zones({1: "America/New_York", 2: "Asia/Tokyo"})
    for freq in FREQS:
        expected = reference_rfm(table, freq, merchants=zones)
        assert rows(lm.rfm(table, freq, merchants=zones, engine=engine)) == expected, freq


@given(st.data())
def test_zoned_rfm_equals_the_zoned_reference(data):
    """Every engine, thread count, chunk and batch size, in merchants' zones, plain and calibration/holdout."""
    from strategies import zoned_instants_ns, zoned_merchants

    table = data.draw(orders_tables(allow_empty=False, instants=zoned_instants_ns()))
    merchants, timezone = data.draw(zoned_merchants(table))
    batched = rebatch(table, data.draw(st.integers(1, 70)), empty_batches=data.draw(st.booleans()))
    freq = data.draw(st.sampled_from(FREQS))
    include_first = data.draw(st.booleans())
    options = dict(engine=data.draw(st.sampled_from(ENGINES)), threads=data.draw(st.sampled_from([1, 2, 3])),
                   chunk_rows=data.draw(st.integers(1, 30)), merchants=merchants, timezone=timezone)
    days = order_days(table, merchants, timezone)
    if data.draw(st.booleans()):
        end = data.draw(st.none() | st.sampled_from(days).map(lambda d: min(max(d, dt.date(1970, 1, 1)),
                                                                             dt.date(2262, 12, 31))))
        expected = reference_rfm(table, freq, end, include_first, merchants=merchants, timezone=timezone)
        assert rows(lm.rfm(batched, freq, end, include_first, **options)) == expected
    else:
        # A wall-clock calibration end near the local times of the orders (seconds: the repeated hour too).
        instants = order_instants(table, merchants, timezone)
        base = data.draw(st.sampled_from(instants)) // 10**9 + data.draw(st.integers(-7200, 7200))
        base = min(max(base, 86_400), (dt.date(2262, 1, 1) - dt.date(1970, 1, 1)).days * 86_400)
        calibration_end = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=base)
        expected = reference_rfm(table, freq, None, include_first, calibration_end, merchants=merchants,
                                 timezone=timezone)
        assert rows(lm.rfm(batched, freq, None, include_first, calibration_end=calibration_end, **options)) == expected
