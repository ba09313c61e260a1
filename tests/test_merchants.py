"""The merchants table (SPEC §2, §7): strict column names, unknowns whatever the format, names.

Expected values are derived in the comments from SPEC, not from running the library.
"""
from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import loyaltymetrics as lm
from loyaltymetrics.cli import main
from reference import assert_tables_match, reference_columns, reference_compute

ORDERS = pa.table({
    "merchant_id": pa.array([1, 2, 3, 3], pa.int64()),
    "customer_id": pa.array([1, 1, 1, 2], pa.int64()),
    "order_ts": pa.array([dt.date(2022, 5, 1)] * 4, pa.date32()),
    "amount": pa.array([100, 200, 300, 400], pa.int64()),
})


def _write_csv(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("header, bad, expected", [
    ("merchant_id,Industry,country,annual_fee", "Industry", "industry"),
    ("merchant_id,industry,Country,annual_fee", "Country", "country"),
    ("merchant_id,industry,country,Annual Fee", "Annual Fee", "annual_fee"),
    ("merchant_id,industry,country,annual-fee", "annual-fee", "annual_fee"),
    ("merchant-id,industry,country,annual_fee", "merchant-id", "merchant_id"),
    ("MerchantID,industry,country,annual_fee", "MerchantID", "merchant_id"),
    ("merchant_id,industry,country,annual_fee,Name", "Name", "name"),
    ("merchant_id,industry,country,annual_fee,time_zone", "time_zone", "timezone"),
])
def test_near_miss_column_names_are_schema_errors(tmp_path, header, bad, expected):
    # SPEC §2: a column whose name differs only in case, spaces, hyphens or underscores is a
    # SchemaError naming it and the expected name, never a silently ignored column.
    row = "1,food,DE,1200" + (",x" if header.count(",") == 4 else "")
    path = _write_csv(tmp_path / "merchants.csv", f"{header}\n{row}\n")
    with pytest.raises(lm.SchemaError) as err:
        lm.compute(ORDERS, path, by=["industry"])
    message = str(err.value)
    assert repr(bad) in message and repr(expected) in message and "merchants.csv" in message
    # Every command reads the merchants table alike.
    with pytest.raises(lm.SchemaError):
        lm.cohorts(ORDERS, path)
    with pytest.raises(lm.SchemaError):
        lm.concentration(ORDERS, path)


def test_near_miss_in_an_in_memory_table_and_cli_exit_status(tmp_path, capsys):
    table = pa.table({"merchant_id": [1], "industry": ["food"], "Annual Fee": [5]})
    with pytest.raises(lm.SchemaError, match="'Annual Fee' should be named 'annual_fee'"):
        lm.compute(ORDERS, table)
    path = _write_csv(tmp_path / "m.csv", "merchant_id,Industry,Country,Annual Fee\n1,food,DE,1200\n")
    orders = tmp_path / "o.parquet"
    pq.write_table(ORDERS, orders)
    assert main(["compute", str(orders), "--merchants", path, "--by", "industry"]) == 1
    assert "'Industry' should be named 'industry'" in capsys.readouterr().err


def test_unrelated_extra_columns_are_ignored():
    table = pa.table({"merchant_id": [1], "industry": ["food"], "region": ["EU"], "notes": ["x"]})
    out = lm.compute(ORDERS, table, by=["industry"])
    assert out.column("industry").to_pylist() == ["food", "unknown"]


@pytest.mark.parametrize("fmt", ["csv", "parquet", "table"])
def test_null_or_empty_industry_and_country_are_unknown_whatever_the_format(tmp_path, fmt):
    # Merchant 1: empty industry, empty country; merchant 2: null (CSV: nothing can be null but an
    # empty field, so both are the same there); merchant 3: "food", "DE".
    table = pa.table({"merchant_id": pa.array([1, 2, 3], pa.int64()),
                      "industry": pa.array(["", None, "food"], pa.string()),
                      "country": pa.array(["", None, "DE"], pa.string()),
                      "annual_fee": pa.array([1, 2, 3], pa.int64())})
    if fmt == "csv":
        source = _write_csv(tmp_path / "m.csv", "merchant_id,industry,country,annual_fee\n1,,,1\n2,,,2\n3,food,DE,3\n")
    elif fmt == "parquet":
        source = str(tmp_path / "m.parquet")
        pq.write_table(table, source)
    else:
        source = table
    out = lm.compute(ORDERS, source, by=["industry", "country"]).to_pylist()
    # Merchants 1 and 2 are one "unknown"/"unknown" group (orders 100 + 200), merchant 3 its own.
    assert [(r["industry"], r["country"], r["orders"], r["revenue"]) for r in out] == [
        ("food", "DE", 2, 700), ("unknown", "unknown", 2, 300)]
    assert_tables_match(lm.compute(ORDERS, source, by=["industry", "country"]),
                        reference_compute(ORDERS, table, by=["industry", "country"]),
                        columns=reference_columns(["industry", "country"]))


def test_timezone_column_is_accepted():
    # SPEC §2 allows a `timezone` column; periods in merchant zones come with another issue,
    # so for now it is read without error and changes nothing.
    table = pa.table({"merchant_id": [1, 2], "industry": ["a", "b"], "timezone": ["America/New_York", None]})
    with_zone = lm.compute(ORDERS, table, by=["merchant"])
    without = lm.compute(ORDERS, table.drop_columns(["timezone"]), by=["merchant"])
    assert with_zone.equals(without)


def test_merchant_name_right_after_merchant_id(tmp_path):
    # SPEC §7: with merchant_id comes merchant_name when the merchants table has names; a
    # merchant missing from the table (3) or with an empty name (2) has a null name.
    merchants = pa.table({"merchant_id": pa.array([2, 1], pa.int64()), "industry": ["b", "a"],
                          "name": ["", "shop-1.example"]})
    out = lm.compute(ORDERS, merchants, by=["industry", "merchant"])
    assert out.column_names[:4] == ["industry", "merchant_id", "merchant_name", "period_start"]
    assert out.column("merchant_name").to_pylist() == ["shop-1.example", None, None]
    assert out.schema.field("merchant_name").type == pa.string()
    # Not grouped by merchant: no merchant_name; no name column: none either.
    assert "merchant_name" not in lm.compute(ORDERS, merchants, by=["industry"]).column_names
    assert "merchant_name" not in lm.compute(ORDERS, merchants.drop_columns(["name"]),
                                             by=["merchant"]).column_names
    for analysis in (lm.cohorts, lm.concentration):
        table = analysis(ORDERS, merchants, by=["merchant"])
        assert table.column_names[:2] == ["merchant_id", "merchant_name"]
        assert set(table.column("merchant_name").to_pylist()) == {"shop-1.example", None}


def test_numeric_names_in_a_csv_stay_text(tmp_path, capsys):
    # A raw key like "007" must not become the integer 7.
    path = _write_csv(tmp_path / "m.csv", "merchant_id,name,industry\n1,007,food\n2,shop-2,\n")
    orders = tmp_path / "o.parquet"
    pq.write_table(ORDERS, orders)
    out = lm.compute(str(orders), path, by=["merchant"])
    assert out.column("merchant_name").to_pylist() == ["007", "shop-2", None]
    assert main(["compute", str(orders), "--merchants", path, "--by", "merchant"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split()[:3] == ["merchant_id", "merchant_name", "period"]
    assert printed[2].split()[:2] == ["1", "007"] and printed[4].split()[:2] == ["3", "-"]
