"""prepare() turns messy exports into the canonical layout, exactly, and accounts for every row."""
import datetime
import re
import sys
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import loyaltymetrics as lm
from loyaltymetrics.cli import main
from loyaltymetrics import MissingDependencyError

COLUMNS = {"merchant_id": "shop", "customer_id": "email", "order_ts": "created_at", "amount": "total",
           "reward": "discount_used"}
ZONES = ["UTC", "America/New_York", "Asia/Kolkata", "Europe/Berlin"]
# Bad rows injected into the export: the column they spoil, the value, and the reason prepare must give.
BAD = [
    ("shop", None, "null_merchant_id"),
    ("created_at", "31/02/2023 noon", "unparsable_order_ts"),
    ("created_at", "1969-12-31T23:59:59Z", "order_ts_out_of_range"),
    ("total", "12,50", "unparsable_amount"),
    ("total", "-3.10", "negative_amount"),
    ("total", None, "null_amount"),
    ("discount_used", "maybe", "unparsable_reward"),
    ("total", "1e30", "amount_out_of_range"),
]
# Rows that are not rejected but excluded (SPEC §10): a guest checkout has no customer key.
EXCLUDED = [("email", None, "guest_checkout")]


def natural(key):
    """Natural order of text keys: shop-2 before shop-10 (SPEC §10: joins stay right)."""
    parts = re.split(r"(\d+)", key)
    return [(int(p), p) if i % 2 else p for i, p in enumerate(parts)]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A canonical network (the truth) and its merchants."""
    folder = tmp_path_factory.mktemp("clean")
    made = lm.generate(folder / "orders.arrow", rows=30_000, seed=4, merchants_count=15)
    return pa.ipc.open_file(made.orders_path).read_all(), made.merchants_path


def _messy(clean_table, seed=0, bad_every=997):
    """The clean orders as a raw export: string ids, shuffled, decimal text, zoned text timestamps."""
    rng = np.random.default_rng(seed)
    df = clean_table.to_pandas()
    raw = pd.DataFrame({
        "order_number": np.arange(len(df)),
        "shop": ["shop-" + format(m * 7919 % 10007, "x") for m in df["merchant_id"]],
        "email": [f"customer{c}@example.com" for c in df["customer_id"]],
        "created_at": [ts.tz_convert(ZONES[i % len(ZONES)]).isoformat() for i, ts in enumerate(df["order_ts"])],
        "total": [f"{a // 100}.{a % 100:02d}" for a in df["amount"]],
        "discount_used": np.where(df["reward"], "yes", np.where(rng.random(len(df)) < 0.5, "no", "")),
    })
    raw = raw.sample(frac=1, random_state=seed).reset_index(drop=True)
    # Each bad row is a spoiled copy of a good one, put in among the others: every clean row stays.
    for k, (column, value, _) in enumerate(BAD + EXCLUDED):
        row = raw.iloc[[(k + 1) * bad_every % len(raw)]].copy()
        row[column] = value
        at = (k + 1) * 31
        raw = pd.concat([raw.iloc[:at], row, raw.iloc[at:]], ignore_index=True)
    return raw


def _by_hand(raw):
    """An independent preparation in pandas: what prepare() must equal."""
    df = raw.copy()
    ts = pd.to_datetime(df["created_at"], utc=True, errors="coerce", format="ISO8601")
    cents = [None if not isinstance(t, str) else _cents(t) for t in df["total"]]
    reward_ok = df["discount_used"].isin(["yes", "no", ""]) | df["discount_used"].isna()
    ok = (df["shop"].notna() & df["email"].notna() & ts.notna() & (ts >= pd.Timestamp("1970-01-01", tz="UTC"))
          & pd.Series([c is not None and 0 <= c < 2**63 for c in cents]) & reward_ok)
    df = df[ok].assign(order_ts=ts[ok], amount=[cents[i] for i in np.flatnonzero(ok)])
    merchants = {key: i + 1 for i, key in enumerate(sorted(df["shop"].unique(), key=natural))}
    customers = {key: i + 1 for i, key in enumerate(sorted(df["email"].unique()))}
    df = df.assign(merchant_id=df["shop"].map(merchants), customer_id=df["email"].map(customers),
                   reward=df["discount_used"] == "yes")
    df = df.sort_values(["merchant_id", "customer_id", "order_ts"], kind="stable")  # ties keep file order
    return pa.table({
        "merchant_id": pa.array(df["merchant_id"], pa.int32()),
        "customer_id": pa.array(df["customer_id"], pa.int64()),
        "order_ts": pa.array(df["order_ts"].dt.as_unit("us"), pa.timestamp("us", tz="UTC")),
        "amount": pa.array(df["amount"], pa.int64()),
        "reward": pa.array(df["reward"], pa.bool_()),
    })


def _cents(text):
    try:
        return int((Decimal(text.strip()) * 100).to_integral_value(rounding=ROUND_HALF_UP))
    except ArithmeticError:  # not a number
        return None


@pytest.fixture(scope="module")
def messy_csv(clean, tmp_path_factory):
    folder = tmp_path_factory.mktemp("messy")
    raw = _messy(clean[0])
    path = folder / "export.csv"
    raw.to_csv(path, index=False)
    return path, raw


def test_csv_export_equals_preparing_by_hand(messy_csv, tmp_path):
    path, raw = messy_csv
    report = lm.prepare(path, tmp_path / "orders.arrow", columns=COLUMNS, memory_limit="200MB", threads=1)
    ours = pa.ipc.open_file(str(tmp_path / "orders.arrow")).read_all()
    hand = _by_hand(pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""]))
    assert ours.equals(hand)
    for by in ([], ["merchant"]):
        assert lm.compute(str(tmp_path / "orders.arrow"), by=by, period="month").equals(
            lm.compute(hand, by=by, period="month"))
    assert report.rows_read == len(raw)
    assert report.rows_written == hand.num_rows
    assert {reason: r.count for reason, r in report.rejected.items()} == {reason: 1 for _, _, reason in BAD}
    assert {reason: r.count for reason, r in report.excluded.items()} == {reason: 1 for _, _, reason in EXCLUDED}


def test_network_metrics_equal_the_clean_data(clean, messy_csv, tmp_path):
    """Whatever the integer ids, the metrics are the clean network's (ids map one to one)."""
    path, _ = messy_csv
    lm.prepare(path, tmp_path / "orders.arrow", columns=COLUMNS)
    clean_table, merchants = clean
    assert lm.compute(str(tmp_path / "orders.arrow"), period="quarter").equals(
        lm.compute(clean_table, period="quarter"))


def test_id_mappings_translate_back(clean, messy_csv, tmp_path):
    path, raw = messy_csv
    report = lm.prepare(path, tmp_path / "orders.arrow", columns=COLUMNS)
    merchant_map = pq.read_table(report.merchant_ids).to_pydict()
    assert merchant_map["merchant_key"] == sorted(merchant_map["merchant_key"], key=natural)
    assert merchant_map["merchant_id"] == list(range(1, len(merchant_map["merchant_id"]) + 1))
    customer_map = pq.read_table(report.customer_ids)
    assert customer_map.num_rows == report.customers == raw["email"].dropna().nunique()
    # Per merchant, by original id: the same metrics as the clean data.
    clean_table, merchants = clean
    ours = lm.compute(str(tmp_path / "orders.arrow"), by=["merchant"]).to_pandas()
    key_of = dict(zip(merchant_map["merchant_id"], merchant_map["merchant_key"]))
    original = {"shop-" + format(m * 7919 % 10007, "x"): m for m in range(1, 16)}
    ours["merchant_id"] = [original[key_of[m]] for m in ours["merchant_id"]]
    theirs = lm.compute(clean_table, by=["merchant"]).to_pandas()
    cols = ["merchant_id", "period_start", "orders", "revenue", "customers", "repeat_customers", "reward_orders"]
    ours = ours.sort_values(["merchant_id", "period_start"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(ours[cols], theirs[cols])


def test_rejects_file_names_rows_and_values(messy_csv, tmp_path):
    path, raw = messy_csv
    report = lm.prepare(path, tmp_path / "o.arrow", columns=COLUMNS, rejects=tmp_path / "rejects.csv")
    rejects = pacsv.read_csv(tmp_path / "rejects.csv", convert_options=pacsv.ConvertOptions(
        column_types={c: pa.string() for c in COLUMNS}, strings_can_be_null=True)).to_pylist()
    assert len(rejects) == report.rows_rejected == len(BAD)
    for entry in rejects:
        source_row = raw.iloc[entry["row"]]
        assert entry["file"] == str(path)
        column, value, _ = next(b for b in BAD if b[2] == entry["reason"])
        canonical = next(k for k, v in COLUMNS.items() if v == column)
        assert entry[canonical] == value
        assert (None if pd.isna(source_row[column]) else source_row[column]) == value
        first = report.rejected[entry["reason"]]
        assert (first.first_source, first.first_row) == (str(path), entry["row"])
        assert first.first_values[column] == value


def test_amounts_round_half_away_from_zero_exactly(tmp_path):
    texts = ["0.125", "-0.125", "12.345", "0.005", "-0.005", "2.675", "1e3", " 7.1 ", "19.99", "0.285"]
    floats = [0.125, 2.675, 0.285, 1.005, 19.99, 1e-3]
    n = len(texts) + len(floats)
    base = datetime.datetime(2023, 5, 1, tzinfo=datetime.timezone.utc)
    text_table = pa.table({"merchant_id": ["m"] * len(texts), "customer_id": [f"c{i}" for i in range(len(texts))],
                           "order_ts": [base] * len(texts), "amount": texts})
    float_table = pa.table({"merchant_id": ["m"] * len(floats), "customer_id": [f"d{i}" for i in range(len(floats))],
                            "order_ts": [base] * len(floats), "amount": pa.array(floats, pa.float64())})
    decimal_table = pa.table({"merchant_id": ["m"], "customer_id": ["e"], "order_ts": [base],
                              "amount": pa.array([Decimal("2.675")], pa.decimal128(10, 3))})
    got = {}
    for name, table in (("text", text_table), ("float", float_table), ("decimal", decimal_table)):
        pq.write_table(table, tmp_path / f"{name}.parquet")
        report = lm.prepare(tmp_path / f"{name}.parquet", tmp_path / f"{name}.arrow", refunds=True)
        ids = pq.read_table(report.customer_ids).to_pydict()
        key = dict(zip(ids["customer_id"], ids["customer_key"]))
        out = pa.ipc.open_file(str(tmp_path / f"{name}.arrow")).read_all().to_pydict()
        got.update({key[c]: a for c, a in zip(out["customer_id"], out["amount"])})
    # Floats are read through their shortest decimal text (repr), as a person reads them.
    expected = {f"c{i}": _cents(t) for i, t in enumerate(texts)}
    expected |= {f"d{i}": _cents(repr(f)) for i, f in enumerate(floats)}
    expected["e"] = _cents("2.675")
    assert got == expected
    assert len(got) == n + 1
    assert expected["c1"] == -13 and expected["d2"] == 29  # half away from zero; 0.285 is not 0.28499…


def test_parquet_export_with_typed_columns(clean, tmp_path):
    """Integer merchant ids, float amounts, zoned and naive typed timestamps, an integer reward flag."""
    clean_table, _ = clean
    df = clean_table.to_pandas().sample(frac=1, random_state=3)
    export = pa.table({
        "store": pa.array(df["merchant_id"] * 10, pa.int64()),
        "buyer": [f"b{c}" for c in df["customer_id"]],
        "placed": pa.array(df["order_ts"].dt.tz_convert("Asia/Tokyo")).cast(pa.timestamp("ns", tz="Asia/Tokyo")),
        "grand_total": pa.array(df["amount"] / 100, pa.float64()),
        "promo": pa.array(df["reward"].astype(int), pa.int8()),
    })
    pq.write_table(export, tmp_path / "export.parquet", row_group_size=7_000)
    columns = {"merchant_id": "store", "customer_id": "buyer", "order_ts": "placed", "amount": "grand_total",
               "reward": "promo"}
    report = lm.prepare(tmp_path / "export.parquet", tmp_path / "orders.arrow", columns=columns)
    assert report.rows_rejected == 0 and report.rows_written == clean_table.num_rows
    merchant_keys = pq.read_table(report.merchant_ids)
    assert merchant_keys.column("merchant_key").type == pa.int64()
    # Integer keys sort as numbers: store 10·m gets id m, so per-merchant metrics line up directly.
    assert merchant_keys.column("merchant_key").to_pylist() == [10 * m for m in range(1, 16)]
    assert lm.compute(str(tmp_path / "orders.arrow"), by=["merchant"], period="month").equals(
        lm.compute(clean_table, by=["merchant"], period="month"))


def test_naive_timestamps_take_the_given_zone(tmp_path):
    raw = tmp_path / "naive.csv"
    raw.write_text("merchant_id,customer_id,order_ts,amount\nm,c,2023-07-05 10:00:00,1.00\nm,c,2023-01-05,2.00\n")
    lm.prepare(raw, tmp_path / "o.arrow", timezone="Europe/Berlin")
    got = pa.ipc.open_file(str(tmp_path / "o.arrow")).read_all().column("order_ts").to_pylist()
    berlin = ZoneInfo("Europe/Berlin")
    want = sorted(datetime.datetime(*parts, tzinfo=berlin).astimezone(datetime.timezone.utc)
                  for parts in ((2023, 7, 5, 10), (2023, 1, 5)))
    assert got == want


def test_ties_keep_file_order(tmp_path):
    raw = tmp_path / "ties.csv"
    raw.write_text("merchant_id,customer_id,order_ts,amount,reward\n"
                   "m,c,2023-01-01T00:00:00Z,3.00,no\nm,c,2023-01-01T00:00:00Z,1.00,yes\n"
                   "m,c,2022-06-01T00:00:00Z,2.00,no\n")
    lm.prepare(raw, tmp_path / "o.arrow")
    out = pa.ipc.open_file(str(tmp_path / "o.arrow")).read_all()
    assert out.column("amount").to_pylist() == [200, 300, 100]
    assert out.column("reward").to_pylist() == [False, False, True]


def test_malformed_csv_rows_are_rejected_not_dropped(tmp_path):
    raw = tmp_path / "ragged.csv"
    raw.write_text("merchant_id,customer_id,order_ts,amount\nm,a,2023-01-01,1.00\nm,b,2023-01-01\n"
                   "m,c,2023-01-01,3.00\n")
    report = lm.prepare(raw, tmp_path / "o.arrow", rejects=tmp_path / "r.parquet")
    assert report.rows_read == 3 and report.rows_written == 2
    assert report.rejected["malformed_csv_row"].first_row == 1
    assert pq.read_table(tmp_path / "r.parquet").column("row").to_pylist() == [1]
    ids = pq.read_table(report.customer_ids).column("customer_key").to_pylist()
    assert ids == ["a", "c"]


def test_structural_errors_are_typed(tmp_path):
    raw = tmp_path / "x.csv"
    raw.write_text("shop,email,when,total\nm,c,2023-01-01,1.00\n")
    with pytest.raises(lm.SchemaError, match=r"x\.csv: missing column\(s\) 'merchant_id'"):
        lm.prepare(raw, tmp_path / "o.arrow")
    with pytest.raises(lm.SchemaError, match="missing column.*'promo'"):
        lm.prepare(raw, tmp_path / "o.arrow", columns={"merchant_id": "shop", "customer_id": "email",
                                                       "order_ts": "when", "amount": "total", "reward": "promo"})
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01garbage")
    with pytest.raises(lm.CorruptInputError, match="junk.bin"):
        lm.prepare(junk, tmp_path / "o.arrow")
    pq.write_table(pa.table({"merchant_id": [1.5], "customer_id": ["c"], "order_ts": ["2023-01-01"],
                             "amount": ["1"]}), tmp_path / "f.parquet")
    with pytest.raises(lm.SchemaError, match="'merchant_id' has type double"):
        lm.prepare(tmp_path / "f.parquet", tmp_path / "o.arrow")
    with pytest.raises(ValueError, match="TimeZone"):
        lm.prepare(raw, tmp_path / "o.arrow", timezone="Mars/Olympus",
                   columns={"merchant_id": "shop", "customer_id": "email", "order_ts": "when", "amount": "total"})
    assert not (tmp_path / "o.arrow").exists()
    assert not list(tmp_path.glob(".prepare-*"))  # the working directory is removed


def test_missing_duckdb_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "duckdb", None)
    with pytest.raises(MissingDependencyError, match=r"loyaltymetrics\[prepare\]"):
        lm.prepare(tmp_path / "x.csv", tmp_path / "o.arrow")


def test_command_line(messy_csv, tmp_path, capsys):
    path, raw = messy_csv
    spec = ",".join(f"{k}={v}" for k, v in COLUMNS.items())
    out = tmp_path / "cli.arrow"
    assert main(["prepare", str(path), "-o", str(out), "--columns", spec, "--memory-limit", "256MB"]) == 0
    report = capsys.readouterr().err
    n_out = len(raw) - len(BAD) - len(EXCLUDED)
    assert f"read {len(raw):,} rows from 1 file(s) = wrote {n_out:,} orders" in report
    assert f"excluded {len(EXCLUDED)} + rejected {len(BAD)}" in report
    for _, _, reason in BAD:
        assert f"rejected 1 {reason}; first: {path}: row " in report
    assert sum(lm.compute(str(out)).column("orders").to_pylist()) == n_out
    # --quiet still reports rejects: nothing is dropped silently.
    assert main(["prepare", str(path), "-o", str(out), "--columns", spec, "--quiet"]) == 0
    assert f"rejected {len(BAD)}" in capsys.readouterr().err
    assert main(["prepare", str(tmp_path / "missing.csv"), "-o", str(out)]) == 1
    assert "missing.csv" in capsys.readouterr().err


@pytest.mark.parametrize("unit", ["major", "minor"])
def test_net_amounts_exact_on_the_64_bit_and_the_38_digit_paths(tmp_path, unit):
    # Totals and refunds with at most the unit's decimals take 64-bit arithmetic, others the exact
    # DECIMAL(38, 16) path; around the 64-bit bound (DECIMAL(15, k)) both meet. Expected values: Python's
    # Decimal, net = total - |refunded|, × the unit, rounded half away from zero.
    totals = ["19.99", "12.345", "1e3", "0.005", "9999999999999.99", "10000000000000.01", "999999999999999",
              "1000000000000000", "123456789012.3456", "5", "2.675", "40.00"]
    refunds = ["", "0", "1.01", "0.005", "-2.50", "0.0000000000000001", "4.999"]
    rows = [(t, r) for t in totals for r in refunds]
    table = pa.table({"merchant_id": ["m"] * len(rows), "customer_id": [f"c{i}" for i in range(len(rows))],
                      "order_ts": ["2023-05-01T10:15:00Z"] * len(rows), "amount": [t for t, _ in rows],
                      "refunded": [r or None for _, r in rows]})
    pacsv.write_csv(table, tmp_path / "x.csv")
    report = lm.prepare(tmp_path / "x.csv", tmp_path / "x.arrow", amount_unit=unit)
    ids = pq.read_table(report.customer_ids).to_pydict()
    key = dict(zip(ids["customer_id"], ids["customer_key"]))
    out = pa.ipc.open_file(str(tmp_path / "x.arrow")).read_all().to_pydict()
    got = {key[c]: a for c, a in zip(out["customer_id"], out["amount"])}
    scale = 100 if unit == "major" else 1
    expected, excluded = {}, 0
    for i, (t, r) in enumerate(rows):
        total, refunded = Decimal(t), abs(Decimal(r or "0"))
        if refunded > 0 and refunded >= total:
            excluded += 1  # refunded in full
            continue
        expected[f"c{i}"] = int(((total - refunded) * scale).to_integral_value(rounding=ROUND_HALF_UP))
    assert got == expected
    assert report.excluded["refunded_in_full"].count == excluded and report.rows_rejected == 0


def test_likely_line_items_counted_in_the_sorted_stream_as_by_grouping():
    # prepare counts rows sharing (merchant, customer, order_ts) while it writes the sorted output, batch by
    # batch; the counts must equal grouping all rows at once, wherever the batches are cut.
    from loyaltymetrics.convert import _Duplicates

    rng = np.random.default_rng(7)
    for _ in range(500):
        n = int(rng.integers(1, 40))
        keys = sorted(zip(rng.integers(0, 2, n), rng.integers(0, 3, n), rng.integers(0, 3, n), rng.permutation(n)))
        m, c, t, s = (np.array(x) for x in zip(*keys))
        groups = {}
        for i in range(n):
            groups.setdefault((m[i], c[i], t[i]), []).append(int(s[i]))
        repeated = [g for g in groups.values() if len(g) > 1]
        expected = (len(repeated), sum(map(len, repeated)), min((min(g) for g in repeated), default=None))
        cuts = sorted(rng.choice(np.arange(1, n), size=min(n - 1, int(rng.integers(0, 6))), replace=False)) \
            if n > 1 else []
        found = _Duplicates()
        for lo, hi in zip([0, *cuts], [*cuts, n]):
            found.add(m[lo:hi], c[lo:hi], t[lo:hi], s[lo:hi])
        assert (found.groups, found.rows, found.first) == expected


@pytest.mark.parametrize("timezone", ["UTC", "America/New_York"])
def test_fixed_width_timestamps_read_by_position_as_by_the_general_pattern(tmp_path, timezone):
    # The fixed-width forms are read by position, anything else (here: the same text with a leading space)
    # by the general pattern: both must give the instant Python derives, and reject the same impossible ones.
    zone = ZoneInfo(timezone)
    forms = {
        "2023-05-01 10:15:00 -0400": datetime.datetime(2023, 5, 1, 14, 15, tzinfo=datetime.timezone.utc),
        "2023-05-01T10:15:00+05:30": datetime.datetime(2023, 5, 1, 4, 45, tzinfo=datetime.timezone.utc),
        "2023-05-01 10:15:00 +1459": datetime.datetime(2023, 4, 30, 19, 16, tzinfo=datetime.timezone.utc),
        "2023-05-01T10:15:00Z": datetime.datetime(2023, 5, 1, 10, 15, tzinfo=datetime.timezone.utc),
        "2023-05-01 10:15:00": datetime.datetime(2023, 5, 1, 10, 15, tzinfo=zone),
        "2023-12-01T23:59:59": datetime.datetime(2023, 12, 1, 23, 59, 59, tzinfo=zone),
        "2023-05-01 10:15:00 +1500": None, "2023-05-01T10:15:00-00:60": None, "2023-02-30 10:15:00 -0400": None,
        "2023-05-01 25:15:00 -0400": None,
    }
    texts = [t for t in forms for _ in (0, 1)]
    padded = [t if i % 2 == 0 else " " + t for i, t in enumerate(texts)]
    table = pa.table({"merchant_id": ["m"] * len(padded), "customer_id": [f"c{i}" for i in range(len(padded))],
                      "order_ts": padded, "amount": ["1.00"] * len(padded)})
    pacsv.write_csv(table, tmp_path / "x.csv")
    report = lm.prepare(tmp_path / "x.csv", tmp_path / "x.arrow", rejects=tmp_path / "rej.csv", timezone=timezone)
    ids = pq.read_table(report.customer_ids).to_pydict()
    key = dict(zip(ids["customer_id"], ids["customer_key"]))
    out = pa.ipc.open_file(str(tmp_path / "x.arrow")).read_all().to_pydict()
    got = {key[c]: ts for c, ts in zip(out["customer_id"], out["order_ts"])}
    expected = {f"c{i}": forms[t] for i, t in enumerate(texts) if forms[t] is not None}
    assert got == expected
    rejected = sorted(r["customer_id"] for r in pacsv.read_csv(tmp_path / "rej.csv").to_pylist())
    assert rejected == sorted(f"c{i}" for i, t in enumerate(texts) if forms[t] is None)
    assert set(report.rejected) == {"unparsable_order_ts"}
