"""prepare()'s fast path for typed Parquet (fastprep.py) writes what the general DuckDB path writes.

Every case runs ``prepare`` twice on the same files — the general path forced (``convert.FAST_PATH =
False``) and the default — and compares the output and mapping files byte for byte and the reports
field by field. Whether the fast path ran is observed, not assumed: inputs it covers must take it, and
inputs with a row to reject or exclude, or columns and options outside it, must not.
"""
import datetime
import filecmp
import re
from dataclasses import asdict
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import loyaltymetrics as lm
from loyaltymetrics import convert, fastprep

OUTPUTS = ("orders.arrow", "orders_merchant_ids.parquet", "orders_customer_ids.parquet", "orders_merchants.parquet",
           "rejects.csv", "rejects.parquet")
BASE_US = 1_672_531_200_000_000  # 2023-01-01 UTC


def spy_on(monkeypatch, module, name):
    """A list that records, for each call of the fast path ``module.name``, whether it answered (not None)."""
    taken = []
    real = getattr(module, name)

    def watched(options):
        report = real(options)
        taken.append(report is not None)
        return report

    monkeypatch.setattr(module, name, watched)
    return taken


@pytest.fixture
def spy(monkeypatch):
    """Records whether each prepare() call was answered by the fast path."""
    return spy_on(monkeypatch, fastprep, "prepare_fast")


def _report(report, folder):
    fields = asdict(report)
    fields.pop("seconds")
    for name in ("output", "merchant_ids", "customer_ids", "merchants_table", "rejects"):
        if fields[name]:
            fields[name] = Path(fields[name]).relative_to(folder).as_posix()
    return fields


def run_both(tmp_path, raw, monkeypatch, **options):
    """(general report, fast-path-enabled report) after checking that their files are identical; either may
    instead be the exception both raised (its type and message must match)."""
    results = {}
    for name, fast in (("general", False), ("default", True)):
        folder = tmp_path / name
        folder.mkdir()
        monkeypatch.setattr(convert, "FAST_PATH", fast)
        try:
            mine = dict(options)
            if mine.get("rejects"):  # a file name: beside each run's output
                mine["rejects"] = folder / mine["rejects"]
            results[name] = _report(lm.prepare(raw, folder / "orders.arrow", **mine), folder)
        except Exception as e:  # noqa: BLE001 - compared below
            results[name] = (type(e), str(e).split(" DuckDB: ")[0])  # DuckDB's own words vary run to run
    assert results["general"] == results["default"]
    for out in OUTPUTS:
        a, b = tmp_path / "general" / out, tmp_path / "default" / out
        assert a.exists() == b.exists(), out
        if a.exists() and out.endswith(".arrow"):
            _same_ipc(a, b)
        elif a.exists():
            assert filecmp.cmp(a, b, shallow=False), out
    return results["general"]


def _same_ipc(a, b):
    """The same schema (with its metadata), record batches of the same sizes and the same values; the same
    bytes when every batch's length is a multiple of 8 (otherwise the unused bits after the last row of a
    boolean bitmap differ: DuckDB leaves them set, pyarrow clears them; no reader sees them)."""
    fa, fb = pa.ipc.open_file(str(a)), pa.ipc.open_file(str(b))
    assert fa.schema.equals(fb.schema, check_metadata=True)
    sizes = [fa.get_batch(i).num_rows for i in range(fa.num_record_batches)]
    assert sizes == [fb.get_batch(i).num_rows for i in range(fb.num_record_batches)]
    assert fa.read_all().equals(fb.read_all())
    if all(size % 8 == 0 for size in sizes):
        assert filecmp.cmp(a, b, shallow=False)


# --- generated typed exports ------------------------------------------------------------

TS_TYPES = [pa.timestamp("s"), pa.timestamp("ms"), pa.timestamp("us"), pa.timestamp("ns"),
            pa.timestamp("us", tz="UTC"), pa.timestamp("ms", tz="America/New_York"), pa.date32(), pa.date64()]
UNIT_US = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 0}


def _ts_array(us, t):
    """Microsecond values as a column of type t (dates: whole days)."""
    us = np.asarray(us, np.int64)
    if pa.types.is_date32(t):
        return pa.array(us // 86_400_000_000, pa.int32()).cast(t)
    if pa.types.is_date64(t):
        return pa.array(us // 86_400_000_000 * 86_400_000, pa.int64()).cast(t)
    unit = t.unit
    raw = us * 1000 + 7 if unit == "ns" else us // UNIT_US[unit]
    return pa.array(raw, pa.int64()).view(t) if raw.dtype == np.int64 else pa.array(raw).cast(t)


@st.composite
def typed_exports(draw):
    """(files as {name: table}, prepare options, the fault injected or None)."""
    n_files = draw(st.integers(1, 3))
    merchant_mode = draw(st.sampled_from(["column", "column", "constant", "filename"]))
    merchant_type = draw(st.sampled_from([pa.int64(), pa.int32(), pa.uint16()]))
    merchant_wide = draw(st.booleans())
    customer_type = draw(st.sampled_from([pa.int64(), pa.int32(), pa.uint32()]))
    customer_wide = draw(st.booleans())
    ts_type = draw(st.sampled_from(TS_TYPES))
    amount_type = draw(st.sampled_from([pa.int64(), pa.int32(), pa.int16(), pa.decimal128(10, 2),
                                        pa.decimal128(18, 0), pa.decimal128(12, 4), pa.decimal128(9, 1)]))
    reward_kind = draw(st.sampled_from(["bool", "bool_nulls", "int", "absent"]))
    refunds = draw(st.booleans())
    negatives = refunds and draw(st.booleans())
    fault = draw(st.sampled_from([None] * 6 + ["null_customer", "null_amount", "null_ts", "null_merchant",
                                               "negative", "ts_before_1970", "reward_2", "huge_amount"]))
    if fault == "negative" and refunds:
        fault = None
    if fault == "null_merchant" and merchant_mode != "column":
        fault = None
    if fault == "huge_amount" and amount_type not in (pa.int64(), pa.decimal128(18, 0)):
        fault = None
    files = {}
    shops = ["shop-10", "shop-2", "shop-1"]
    for f in range(n_files):
        rows = draw(st.integers(0 if f else 1, 30))
        seed = draw(st.integers(0, 2**32 - 1))
        rng = np.random.default_rng(seed)
        if merchant_wide and merchant_type == pa.int64():
            merchant = rng.choice([-(1 << 62), 5, 1 << 61, 77], rows)
        else:
            merchant = rng.integers(1, 5, rows)
        if customer_wide and customer_type == pa.int64():
            customer = rng.choice(np.array([-(1 << 62), -3, 0, 9, 1 << 40, (1 << 63) - 1]), rows)
        else:
            customer = rng.integers(0, 6, rows) * (1000 if customer_wide else 1)
        us = BASE_US + rng.integers(0, 4, rows) * draw(st.sampled_from([1, 1000, 86_400_000_000, 3_600_000_000]))
        low = -50 if negatives else 0
        amount = rng.integers(low, 1000, rows)
        columns = {}
        if merchant_mode == "column":
            columns["merchant_id"] = pa.array(merchant).cast(merchant_type)
        columns["customer_id"] = pa.array(customer).cast(customer_type)
        columns["order_ts"] = _ts_array(us, ts_type)
        columns["amount"] = _amounts(amount, amount_type, rng)
        if reward_kind == "bool":
            columns["reward"] = pa.array(rng.random(rows) < 0.3)
        elif reward_kind == "bool_nulls":
            columns["reward"] = pa.array([None if x < 0.2 else bool(x < 0.6) for x in rng.random(rows)], pa.bool_())
        elif reward_kind == "int":
            columns["reward"] = pa.array(rng.integers(0, 2, rows)).cast(pa.int8())
        name = f"{shops[f % len(shops)]}_export_{f}.parquet"
        files[name] = (pa.table(columns), draw(st.sampled_from([3, 7, 1000])))
    if fault:  # in the last file with rows
        name = [name for name, (table, _) in files.items() if table.num_rows][-1]
        table, group = files[name]
        files[name] = (_spoil(table, fault, draw(st.integers(0, table.num_rows - 1))), group)
    options = {"refunds": refunds, "amount_unit": draw(st.sampled_from(["minor", "major"])),
               "currency": draw(st.sampled_from([None, "eur"])), "keep_guests": draw(st.booleans()),
               "rejects": draw(st.sampled_from([None, "rejects.csv", "rejects.parquet"])),
               "threads": draw(st.sampled_from([None, 1, 2]))}
    if merchant_mode == "constant":
        options["merchant"] = "the-shop"
    elif merchant_mode == "filename":
        options["merchant_from_filename"] = r"^(shop-\d+)_"
    return files, options, fault


def _amounts(whole, t, rng):
    """Integers, or decimals with the given whole part and fractions that include half a cent and half a
    unit (rounded half away from zero, both signs)."""
    if not pa.types.is_decimal(t):
        return pa.array(whole).cast(t)
    power = 10 ** t.scale
    frac = rng.integers(0, power, len(whole))
    if t.scale >= 1:
        frac[1::3] = power // 2                 # half a unit
    if t.scale >= 3:
        frac[::3] = 5 * 10 ** (t.scale - 3)     # half a cent
    unscaled = [int(w) * power + (int(f) if w >= 0 else -int(f)) for w, f in zip(whole, frac)]
    return pa.array([Decimal(u).scaleb(-t.scale) for u in unscaled], t)


def _spoil(table, fault, row):
    def put(name, value, t=None):
        values = table.column(name).to_pylist()
        values[row] = value
        return table.set_column(table.schema.get_field_index(name), name,
                                pa.array(values, t or table.schema.field(name).type))

    if fault == "null_customer":
        return put("customer_id", None)
    if fault == "null_amount":
        return put("amount", None)
    if fault == "null_ts":
        return put("order_ts", None)
    if fault == "null_merchant":
        return put("merchant_id", None)
    if fault == "negative":
        return put("amount", -5)
    if fault == "ts_before_1970":  # one unit before the epoch (a day for dates)
        t = table.schema.field("order_ts").type
        storage = pa.int32() if pa.types.is_date32(t) else pa.int64()
        values = table.column("order_ts").combine_chunks().view(storage).to_pylist()
        values[row] = -86_400_000 if pa.types.is_date64(t) else -1
        return table.set_column(table.schema.get_field_index("order_ts"), "order_ts",
                                pa.array(values, storage).view(t))
    if fault == "reward_2":
        if "reward" in table.column_names and pa.types.is_integer(table.schema.field("reward").type):
            return put("reward", 2)
        return put("amount", None)
    if fault == "huge_amount":
        t = table.schema.field("amount").type
        return put("amount", Decimal(10**18 - 7).scaleb(-t.scale) if pa.types.is_decimal(t) else (1 << 63) - 7)
    raise AssertionError(fault)


def _write_files(folder, files):
    folder.mkdir()
    for name, (table, group) in files.items():
        pq.write_table(table, folder / name, row_group_size=group)
    return sorted(str(folder / name) for name in files)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)
@given(typed_exports())
def test_fast_path_equals_the_general_path(tmp_path_factory, monkeypatch, spy, case):
    files, options, fault = case
    tmp_path = tmp_path_factory.mktemp("case")
    raw = _write_files(tmp_path / "raw", files)
    spy.clear()
    general = run_both(tmp_path, raw, monkeypatch, **options)
    written = isinstance(general, dict) and general["rows_written"] > 0
    # The fast path answers exactly when no row is rejected or excluded (and something is written); a
    # fault makes it hand the files to the general path, which accounts for the row by reason.
    # (Guests kept with --keep-guests are written, but their ids are the general path's to give.)
    clean = written and not general["rejected"] and not general["excluded"] and fault != "null_customer"
    assert spy == [clean]
    if fault is not None and written:
        assert not clean or fault == "huge_amount" and options["amount_unit"] == "minor"


def test_many_batches_and_ties_are_byte_identical(tmp_path, monkeypatch, spy):
    """Over several of the general path's record batches, with ties on (merchant, customer, order_ts) kept
    in input order and reported as likely line items, and a merchants table re-keyed."""
    rng = np.random.default_rng(7)
    n = 300_000
    for part in range(2):
        table = pa.table({
            "merchant_id": pa.array(rng.integers(1, 40, n), pa.int64()),
            "customer_id": pa.array(rng.integers(0, 50_000, n) * 3, pa.int64()),
            "order_ts": pa.array(BASE_US + rng.integers(0, 2000, n) * 1_000_000, pa.timestamp("us", tz="UTC")),
            "amount": pa.array(rng.integers(1, 10_000, n), pa.int64()),
            "reward": pa.array(rng.random(n) < 0.1),
        })
        pq.write_table(table, tmp_path / f"part-{part}.parquet", row_group_size=100_000)
    merchants = tmp_path / "merchants.csv"
    merchants.write_text("merchant_id,industry,country\n" + "".join(f"{m},ind{m % 3},US\n" for m in range(5, 60)))
    report = run_both(tmp_path, [str(tmp_path / "part-*.parquet")], monkeypatch, amount_unit="minor",
                      merchants=merchants)
    assert spy == [True]
    assert report["rows_written"] == 2 * n and report["likely_line_items"] > 0 and report["warnings"]
    assert pa.ipc.open_file(str(tmp_path / "default" / "orders.arrow")).num_record_batches > 1


def test_large_key_ranges_are_ranked_by_sorting(tmp_path, monkeypatch, spy):
    """Keys spread over int64 (no lookup table fits): ranks from a sort, the same ids."""
    rng = np.random.default_rng(3)
    n = 5_000
    table = pa.table({
        "merchant_id": pa.array(rng.choice([-(1 << 63), 1 << 62, 0, 12], n), pa.int64()),
        "customer_id": pa.array(rng.integers(-(1 << 63), (1 << 63) - 1, n, dtype=np.int64)[rng.integers(0, 900, n)]),
        "order_ts": pa.array(BASE_US + rng.integers(0, 50, n), pa.timestamp("us")),
        "amount": pa.array(rng.integers(0, 100, n), pa.int64()),
    })
    pq.write_table(table, tmp_path / "x.parquet")
    run_both(tmp_path, str(tmp_path / "x.parquet"), monkeypatch)
    assert spy == [True]


def _simple(rows=5):
    return {
        "merchant_id": pa.array([1, 2, 1, 2, 3][:rows], pa.int64()),
        "customer_id": pa.array([5, 6, 5, 7, 8][:rows], pa.int64()),
        "order_ts": pa.array([BASE_US + i for i in range(rows)], pa.timestamp("us", tz="UTC")),
        "amount": pa.array([100, 200, 300, 400, 500][:rows], pa.int64()),
    }


@pytest.mark.parametrize("change, options", [
    ({"customer_id": pa.array(["a", "b", "a", "c", "d"])}, {}),                       # text keys
    ({"merchant_id": pa.array(["s1", "s2", "s1", "s2", "s3"])}, {}),
    ({"amount": pa.array([1.5, 2.0, 3.25, 4.0, 5.0])}, {}),                            # float amounts
    ({"amount": pa.array([1, 2, 3, 4, 5], pa.decimal128(19, 2))}, {}),                # wide decimals
    ({"amount": pa.array([1, 2, 3, 4, 5], pa.decimal128(18, 17))}, {}),
    ({"amount": pa.array(["1.00", "2", "3", "4", "5"])}, {}),
    ({"order_ts": pa.array(["2023-01-01 10:00:00"] * 5)}, {}),                         # text timestamps
    ({"reward": pa.array(["yes", "no", "yes", "no", "no"])}, {}),
    ({"order_id": pa.array([1, 2, 3, 4, 5])}, {}),                                     # an order key
    ({"status": pa.array(["paid", "cancelled", "paid", "paid", "paid"])}, {}),
    ({"currency": pa.array(["USD"] * 5)}, {}),
    ({"refunded": pa.array([0, 0, 10, 0, 0])}, {}),
    ({"test": pa.array([False] * 5)}, {}),
    ({"cancelled_at": pa.array([None] * 5, pa.timestamp("us"))}, {}),
    ({"discount_code": pa.array(["LOYAL-1", None, None, None, None])}, {"reward_codes": "LOYAL-*"}),
    ({}, {"timezone": "Europe/Berlin"}),                                                # naive times moved
    ({}, {"format": "shopify", "columns": {"customer_id": "customer_id", "order_ts": "order_ts",
                                           "amount": "amount", "merchant_id": "merchant_id"}}),
    ({}, {"memory_limit": "1KB"}),                                                      # does not fit
    ({}, {"memory_limit": "lots"}),                                                     # DuckDB's error
    ({}, {"threads": -1}),
    ({"merchant_id": pa.array([1, 2, 1, 2, (1 << 64) - 1], pa.uint64())}, {}),         # beyond int64
])
def test_inputs_outside_the_fast_path_take_the_general_path(tmp_path, monkeypatch, spy, change, options):
    table = pa.table({**_simple(), **change})
    pq.write_table(table, tmp_path / "x.parquet")
    options = {k: (str(tmp_path / "rejects.csv") if v == "REJECTS" else v) for k, v in options.items()}
    run_both(tmp_path, str(tmp_path / "x.parquet"), monkeypatch, **options)
    assert spy == [False]


def test_csv_and_fx_take_the_general_path(tmp_path, monkeypatch, spy):
    import pyarrow.csv as pacsv

    pacsv.write_csv(pa.table(_simple()), tmp_path / "x.csv")
    run_both(tmp_path, str(tmp_path / "x.csv"), monkeypatch)
    fx = tmp_path / "fx.csv"
    fx.write_text("currency,rate\nEUR,1.1\n")
    pq.write_table(pa.table(_simple()), tmp_path / "y.parquet")
    (tmp_path / "general").rename(tmp_path / "g1")
    (tmp_path / "default").rename(tmp_path / "d1")
    run_both(tmp_path, str(tmp_path / "y.parquet"), monkeypatch, fx=fx, currency="USD")
    assert spy == [False, False]


def test_typed_parquet_takes_the_fast_path_with_the_same_report(tmp_path, monkeypatch, spy):
    """The benchmark's shape (integer ids, UTC timestamps, cents, a reward flag), through the command line
    too: the same files and exit status."""
    table = pa.table({**_simple(), "reward": pa.array([True, False, None, True, False])})
    pq.write_table(table, tmp_path / "x.parquet")
    report = run_both(tmp_path, str(tmp_path / "x.parquet"), monkeypatch, amount_unit="minor")
    assert spy == [True]
    assert report["rows_read"] == report["rows_written"] == 5 and report["customers"] == 4
    from loyaltymetrics.cli import main

    for name, fast in (("cli-general", False), ("cli-default", True)):
        monkeypatch.setattr(convert, "FAST_PATH", fast)
        (tmp_path / name).mkdir()
        assert main(["prepare", str(tmp_path / "x.parquet"), "-o", str(tmp_path / name / "orders.arrow"),
                     "--amount-unit", "minor", "--quiet"]) == 0
    _same_ipc(tmp_path / "cli-general" / OUTPUTS[0], tmp_path / "cli-default" / OUTPUTS[0])
    for out in OUTPUTS[1:3]:
        assert filecmp.cmp(tmp_path / "cli-general" / out, tmp_path / "cli-default" / out, shallow=False)
    assert spy == [True, True]


def test_the_fast_path_never_writes_before_it_knows(tmp_path, monkeypatch, spy):
    """A fault in the last file is found before any output exists: the general path writes everything."""
    good = pa.table(_simple())
    bad = pa.table({**_simple(), "amount": pa.array([1, 2, None, 4, 5], pa.int64())})
    pq.write_table(good, tmp_path / "a.parquet")
    pq.write_table(bad, tmp_path / "b.parquet")
    monkeypatch.setattr(convert, "FAST_PATH", True)
    seen = []
    real = convert._run

    def general(con, duckdb, options):
        seen.append(sorted(p.name for p in tmp_path.glob("out*")))
        return real(con, duckdb, options)

    monkeypatch.setattr(convert, "_run", general)
    report = lm.prepare([tmp_path / "a.parquet", tmp_path / "b.parquet"], tmp_path / "out.arrow")
    assert spy == [False] and seen == [[]]
    assert report.rejected["null_amount"].count == 1
    assert re.search(r"b\.parquet$", report.rejected["null_amount"].first_source)


def test_memory_limit_text():
    assert fastprep._bytes("4GB") == 4e9 and fastprep._bytes("512MiB") == 512 << 20
    assert fastprep._bytes("2 gb") == 2e9 and fastprep._bytes("lots") is None
    assert datetime  # imported for the strategies' readers


@settings(deadline=None)
@given(st.integers(1, 400), st.sampled_from([1, 40, (1 << 31) - 1]), st.sampled_from([1, 7, 1 << 20, (1 << 31) - 1]),
       st.sampled_from([1, 1000, 1 << 62]), st.integers(0, 2**32 - 1))
def test_order_is_a_stable_sort_by_merchant_customer_and_time(n, merchants, customers, spread, seed):
    """Time buckets in the packed key or not (wide ids leave no spare bits), the order is lexsort's."""
    rng = np.random.default_rng(seed)
    mid = rng.choice(rng.integers(1, merchants, 4, endpoint=True), n).astype(np.int32)
    cid = rng.choice(rng.integers(1, customers, 6, endpoint=True), n).astype(np.int32)
    ts = rng.choice(rng.integers(0, spread, 5, endpoint=True), n).astype(np.int64)
    expected = np.lexsort((np.arange(n), ts, cid, mid))
    assert np.array_equal(fastprep._order(mid, cid, ts), expected)


@pytest.mark.parametrize("unit", ["major", "minor"])
def test_decimal_amounts_round_half_away_from_zero_as_the_general_path(tmp_path, monkeypatch, spy, unit):
    amounts = ["12.3450", "-0.1250", "0.0050", "-0.0050", "2.6750", "19.9900", "0.2850", "-7.5000", "0.4999"]
    n = len(amounts)
    table = pa.table({"merchant_id": pa.array([1] * n, pa.int64()), "customer_id": pa.array(range(n), pa.int64()),
                      "order_ts": pa.array([BASE_US] * n, pa.timestamp("us", tz="UTC")),
                      "amount": pa.array([Decimal(x) for x in amounts], pa.decimal128(12, 4))})
    pq.write_table(table, tmp_path / "x.parquet")
    run_both(tmp_path, str(tmp_path / "x.parquet"), monkeypatch, refunds=True, amount_unit=unit)
    assert spy == [True]
    written = pa.ipc.open_file(str(tmp_path / "default" / "orders.arrow")).read_all().column("amount").to_pylist()
    cents = [1235, -13, 1, -1, 268, 1999, 29, -750, 50] if unit == "major" else [12, 0, 0, 0, 3, 20, 0, -8, 0]
    assert written == cents  # customer ids follow the rows here: one merchant, keys 0..n-1, one order each


def test_an_unreadable_row_group_gets_the_general_paths_error(tmp_path, monkeypatch, spy):
    """A footer that reads but a data page that does not: the fast path steps aside before writing, and the
    general path names the file (CorruptInputError), as without the fast path."""
    n = 20_000
    table = pa.table({**{k: pa.array(np.resize(v.to_numpy(zero_copy_only=False), n)) for k, v in _simple().items()},
                      "amount": pa.array(np.arange(n), pa.int64())})
    pq.write_table(table, tmp_path / "x.parquet", compression="snappy", use_dictionary=False)
    raw = bytearray((tmp_path / "x.parquet").read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 64] = bytes(range(64))
    (tmp_path / "x.parquet").write_bytes(bytes(raw))
    error = run_both(tmp_path, str(tmp_path / "x.parquet"), monkeypatch, amount_unit="minor")
    assert error[0] is lm.CorruptInputError and spy == [False]
