"""SPEC §2 "Bad input": one test per kind, each asserting the error type and
that the message names the source, the row and the offending values."""
import datetime as dt
import hashlib
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import loyaltymetrics as lm

UTC = dt.timezone.utc


def ts(*args):
    return dt.datetime(*args, tzinfo=UTC)


def orders(merchant=(1, 1, 2), customer=(1, 2, 1), when=None, amount=(100, 200, 300), reward=None,
           ts_type=pa.timestamp("us", tz="UTC")):
    when = when or [ts(2022, 1, 1), ts(2022, 2, 1), ts(2022, 3, 1)]
    columns = {
        "merchant_id": pa.array(merchant, pa.int64()),
        "customer_id": pa.array(customer, pa.int64()),
        "order_ts": pa.array(when, ts_type),
        "amount": pa.array(amount, pa.int64()),
    }
    if reward is not None:
        columns["reward"] = pa.array(reward, pa.bool_())
    return pa.table(columns)


def write_arrow(table, path, max_chunksize=None):
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max_chunksize)
    return str(path)


def test_good_input_passes():
    assert lm.compute(orders()).column("orders").to_pylist() == [3]


@pytest.mark.parametrize(
    "merchant, customer, when, bad_row",
    [
        ((2, 1, 3), (1, 1, 1), None, 1),                                       # merchant goes back
        ((1, 1, 1), (5, 4, 6), None, 1),                                       # customer goes back
        ((1, 1, 1), (1, 1, 1), [ts(2022, 5, 1), ts(2022, 4, 1), ts(2022, 6, 1)], 1),  # time goes back
    ],
)
def test_unsorted_rows_name_the_row_and_both_keys(merchant, customer, when, bad_row):
    table = orders(merchant, customer, when)
    with pytest.raises(lm.UnsortedInputError) as err:
        lm.compute(table)
    assert err.value.row == bad_row
    message = str(err.value)
    assert f"row {bad_row}" in message and f"row {bad_row - 1}" in message
    bad = table.slice(bad_row, 1).to_pylist()[0]
    assert f"({bad['merchant_id']}, {bad['customer_id']}, " in message


def test_unsorted_across_a_record_batch_boundary_names_the_global_row(tmp_path):
    table = orders((1, 1, 1, 1), (1, 2, 3, 2), [ts(2022, 1, 1)] * 4, (1, 2, 3, 4))
    path = write_arrow(table, tmp_path / "o.arrow", max_chunksize=3)   # row 3 starts batch 2
    with pytest.raises(lm.UnsortedInputError, match=r"o\.arrow: row 3: .*\(1, 2, .*at row 2") as err:
        lm.compute(path)
    assert err.value.source == path and err.value.row == 3


def test_unsorted_across_files_of_a_parquet_directory(tmp_path):
    pq.write_table(orders((5, 5, 5), (1, 2, 3)), tmp_path / "part-0.parquet")
    pq.write_table(orders((1, 1, 1), (1, 2, 3)), tmp_path / "part-1.parquet")
    with pytest.raises(lm.UnsortedInputError, match=r"part-1\.parquet: row 0: .*previous file") as err:
        lm.compute(str(tmp_path))
    assert err.value.row == 0


@pytest.mark.parametrize("column", ["merchant_id", "customer_id", "order_ts", "amount"])
def test_null_in_a_key_column(column):
    table = orders(merchant=(1, 1, 1, 1), customer=(1, 2, 3, 4), amount=(1, 2, 3, 4),
                   when=[ts(2022, 1, 1)] * 4)
    values = table.column(column).to_pylist()
    values[2] = None
    table = table.set_column(table.schema.get_field_index(column), column, pa.array(values, table.schema.field(column).type))
    with pytest.raises(lm.NullValueError, match=rf"<table>: row 2: null in column '{column}'") as err:
        lm.compute(table)
    assert err.value.row == 2


def test_null_reward_is_false_not_an_error():
    table = orders(reward=[None, True, None])
    out = lm.compute(table)
    assert out.column("reward_orders").to_pylist() == [1]
    # An all-null column arrives as Arrow type null (e.g. pandas [None, None, None]).
    all_null = orders().append_column("reward", pa.nulls(3))
    out = lm.compute(all_null)
    assert out.column("reward_orders").to_pylist() == [0] and out.column("orders").to_pylist() == [3]


@pytest.mark.parametrize(
    "column, array, expected",
    [
        ("amount", pa.array([1.5, 2.0, 3.0]), "double"),
        ("amount", pa.array(["1", "2", "3"]), "string"),
        ("merchant_id", pa.array(["a", "b", "c"]), "string"),
        ("customer_id", pa.array([1.0, 2.0, 3.0]), "double"),
        ("order_ts", pa.array(["2022-01-01"] * 3), "string"),
        ("reward", pa.array([0, 1, 0]), "int64"),
    ],
)
def test_wrong_types(column, array, expected, tmp_path):
    table = orders(reward=[False, True, False])
    table = table.set_column(table.schema.get_field_index(column), column, array)
    path = str(tmp_path / "typed.parquet")
    pq.write_table(table, path)
    with pytest.raises(lm.SchemaError, match=rf"typed\.parquet: column '{column}' has type {expected}"):
        lm.compute(path)


def test_missing_column_lists_what_is_there():
    table = orders().drop_columns(["amount"]).append_column("total_cents", pa.array([1, 2, 3], pa.int64()))
    with pytest.raises(lm.SchemaError, match=r"missing column\(s\) 'amount'.*'total_cents'"):
        lm.compute(table)
    # ...and columns= maps it.
    out = lm.compute(table, columns={"amount": "total_cents"})
    assert out.column("revenue").to_pylist() == [6]


def test_negative_amount_unless_refunds():
    table = orders(amount=(100, -40, 300))
    with pytest.raises(lm.NegativeAmountError, match=r"<table>: row 1: negative amount -40") as err:
        lm.compute(table)
    assert err.value.row == 1
    out = lm.compute(table, refunds=True)
    assert out.column("revenue").to_pylist() == [360]


@pytest.mark.parametrize(
    "value, unit, shown",
    [
        (-1, "us", "1969-12-31T23:59:59.999999"),
        (int(np.datetime64("2263-01-01", "s").astype(np.int64)), "s", "2263-01-01T00:00:00"),
        (-86_400, "s", "1969-12-31T00:00:00"),
    ],
)
def test_timestamps_outside_1970_to_2262(value, unit, shown):
    base = int(np.datetime64("2022-01-01", unit).astype(np.int64))
    table = orders(merchant=(1, 1, 1), customer=(1, 2, 3), when=[base, value, base],
                   ts_type=pa.timestamp(unit, tz="UTC"))
    with pytest.raises(lm.TimestampRangeError, match=rf"row 1: order_ts {shown}") as err:
        lm.compute(table)
    assert err.value.row == 1


def test_last_valid_days_are_accepted():
    when = [dt.date(1970, 1, 1), dt.date(2262, 12, 31), dt.date(2262, 12, 31)]
    out = lm.compute(orders(merchant=(1, 1, 2), customer=(1, 1, 1), when=when, ts_type=pa.date32()), period="all")
    assert out.column("orders").to_pylist() == [3]


def test_amount_overflow_is_an_error_not_a_wrapped_sum():
    big = np.iinfo(np.int64).max - 10
    table = orders(merchant=(1, 1, 1), customer=(1, 1, 1), amount=(big, 20, 1), when=[ts(2022, 1, 1)] * 3)
    with pytest.raises(lm.AmountOverflowError, match=r"row 1: amount 20"):
        lm.compute(table)


def test_truncated_arrow_file(tmp_path):
    path = write_arrow(orders(), tmp_path / "cut.arrow")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(lm.CorruptInputError, match=r"cut\.arrow.*cannot read ipc file"):
        lm.compute(path)


def test_truncated_parquet_file(tmp_path):
    path = tmp_path / "cut.parquet"
    pq.write_table(orders(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])
    with pytest.raises(lm.CorruptInputError, match=r"cut\.parquet.*cannot read parquet"):
        lm.compute(str(path))


@pytest.mark.parametrize("content", [b"", b"merchant_id,customer_id\n1,2\n", b"\x00garbage" * 50])
def test_not_an_orders_file(tmp_path, content):
    path = tmp_path / ("x.csv" if content.startswith(b"merchant") else "x.bin")
    path.write_bytes(content)
    with pytest.raises(lm.CorruptInputError, match=r"x\.(csv|bin)"):
        lm.compute(str(path))


def test_arrow_file_whose_metadata_lies_about_lengths_is_rejected(tmp_path):
    """A record batch claiming more rows than its buffers hold must not be read past its end."""
    n = 77  # the batch and field-node lengths are the only int64 77s in the file
    table = orders(merchant=[1] * n, customer=range(1000, 1000 + n), amount=[5] * n,
                   when=[ts(2022, 1, 1)] * n)
    path = tmp_path / "lying.arrow"
    write_arrow(table, path)
    data = path.read_bytes()
    pattern = n.to_bytes(8, "little")
    assert data.count(pattern) >= 2
    path.write_bytes(data.replace(pattern, (10**6).to_bytes(8, "little")))
    with pytest.raises(lm.CorruptInputError, match=r"lying\.arrow: row 0: cannot read ipc file"):
        lm.compute(str(path))


def test_merchants_table_with_duplicate_ids(tmp_path):
    merchants = pa.table({"merchant_id": [7, 1, 7], "industry": ["a", "b", "c"]})
    path = tmp_path / "m.parquet"
    pq.write_table(merchants, path)
    with pytest.raises(lm.DuplicateMerchantError, match=r"m\.parquet: row 2: merchant_id 7 appears again \(first at row 0\)"):
        lm.compute(orders(), merchants=str(path))


def test_merchants_table_null_id_and_negative_fee():
    with pytest.raises(lm.NullValueError, match=r"row 1"):
        lm.compute(orders(), merchants=pa.table({"merchant_id": pa.array([1, None], pa.int64())}))
    with pytest.raises(lm.NegativeAmountError, match=r"row 0: negative annual_fee -5"):
        lm.compute(orders(), merchants=pa.table({"merchant_id": [1], "annual_fee": [-5]}))


def test_bad_options_are_value_errors():
    with pytest.raises(ValueError, match="period"):
        lm.compute(orders(), period="week")
    with pytest.raises(ValueError, match="unknown key"):
        lm.compute(orders(), by=["region"])
    with pytest.raises(ValueError, match="twice"):
        lm.compute(orders(), by=["size", "size"])
    with pytest.raises(ValueError, match="strictly increasing"):
        lm.compute(orders(), size_edges=(300, 30))
    with pytest.raises(ValueError, match="unknown names"):
        lm.compute(orders(), columns={"total": "amount"})


def test_input_files_and_tables_are_not_modified(tmp_path):
    table = orders(amount=(100, -40, 300), reward=[None, True, False])
    arrow = write_arrow(table, tmp_path / "o.arrow")
    parquet = tmp_path / "o.parquet"
    pq.write_table(table, parquet)
    digests = {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in (arrow, str(parquet))}
    before = table.to_pylist()
    for source in (arrow, str(parquet), table):
        lm.compute(source, refunds=True)
        with pytest.raises(lm.NegativeAmountError):
            lm.compute(source)
    assert table.to_pylist() == before
    assert digests == {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in digests}


def test_cli_prints_the_error_without_a_traceback(tmp_path):
    path = write_arrow(orders((2, 1, 3), (1, 1, 1)), tmp_path / "bad.arrow")
    result = subprocess.run([sys.executable, "-m", "loyaltymetrics.cli", "compute", path],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("loyaltymetrics: error: ") and "bad.arrow: row 1:" in result.stderr
