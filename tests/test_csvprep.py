"""prepare()'s fast path for Shopify CSV exports (csvprep.py) writes what the general DuckDB path writes.

Every case runs ``prepare`` twice on the same files — the general path forced (``convert.FAST_PATH =
False``) and the default — and compares the output, mapping and rejects files byte for byte and the
reports field by field (``test_prepfast.run_both``). Whether the fast path ran is observed, not assumed:
exports it covers must take it, and exports with a row to reject, a malformed line, an order key in two
places, a timestamp form it does not read or two currencies must not.
"""
import csv
import datetime

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loyaltymetrics import convert, csvprep
from test_prepfast import run_both, spy_on

HEADER = ["Name", "Email", "Financial Status", "Paid at", "Fulfillment Status", "Currency", "Subtotal", "Total",
          "Discount Code", "Created at", "Lineitem quantity", "Lineitem name", "Cancelled at", "Payment Method",
          "Refunded Amount"]
ORDER_FIELDS = ("Email", "Financial Status", "Paid at", "Currency", "Subtotal", "Total", "Discount Code",
                "Cancelled at", "Payment Method", "Refunded Amount")
EPOCH = datetime.datetime(2022, 1, 1, tzinfo=datetime.timezone.utc)


@pytest.fixture
def spy(monkeypatch):
    """Records whether each prepare() call was answered by the CSV fast path."""
    return spy_on(monkeypatch, csvprep, "prepare_csv")


def created_at(rng, form):
    """A Shopify-style time of one of the fixed-width forms (or a form only the general path reads)."""
    when = EPOCH + datetime.timedelta(seconds=int(rng.integers(0, 3 * 365 * 86400)))
    if form == "offset":   # Shopify's own: "2023-05-01 10:15:00 -0400"
        zone = datetime.timezone(datetime.timedelta(minutes=int(rng.choice([-240, -300, 330, 0, 60]))))
        return when.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %z")
    if form == "iso":
        zone = datetime.timezone(datetime.timedelta(minutes=int(rng.choice([-240, 120, 0]))))
        return when.astimezone(zone).isoformat()
    if form == "z":
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")
    if form == "naive":
        return when.strftime("%Y-%m-%d %H:%M:%S")
    return when.strftime("%Y-%m-%d %H:%M")   # "short": no seconds (TS_PATTERN, not a fixed form)


def money(cents, rng):
    text = f"{cents // 100}.{cents % 100:02d}"
    if cents % 10 == 0 and rng.random() < 0.3:
        text = text[:-1]       # "12.3"
    if cents % 100 == 0 and rng.random() < 0.3:
        text = str(cents // 100)
    return text


def shopify_orders(rng, n, first_number, emails, currency, forms):
    """The rows of ``n`` orders: lists of {column: text} per order, the order fields on one carrier row."""
    orders = []
    for k in range(n):
        name = f"#{first_number + k}"
        total = int(rng.integers(0, 40_000))
        fate = rng.choice(["paid"] * 5 + ["partially_refunded", "partially_refunded", "refunded", "voided",
                                          " Voided ", "expired", "pending", "PAID"])
        refunded = {"partially_refunded": total * int(rng.integers(1, 90)) // 100, "refunded": total}.get(fate, 0)
        email = emails[int(rng.integers(0, len(emails)))]
        lines = int(rng.choice([1, 1, 2, 3]))
        ts = created_at(rng, rng.choice(forms))
        head = {
            "Name": name if rng.random() < 0.9 else f" {name} ",
            "Email": email or "",
            "Financial Status": fate,
            "Paid at": ts,
            "Currency": currency if rng.random() < 0.8 else f" {currency.lower()}",
            "Subtotal": money(total, rng),
            "Total": money(total, rng),
            "Discount Code": rng.choice(["", "", "SUMMER10", "LOYAL-7", "loyal-vip, SUMMER", "code:LOYAL-1|x",
                                         "Loyal-", " LOYAL-2 "]),
            "Cancelled at": ts if rng.random() < 0.05 else "",
            "Payment Method": rng.choice(["Shopify Payments"] * 6 + ["bogus", "Bogus Gateway", ""]),
            "Refunded Amount": "" if refunded == 0 and rng.random() < 0.3 else money(refunded, rng),
        }
        rows = []
        for line in range(lines):
            row = {"Name": head["Name"] if line == 0 else name, "Created at": ts, "Lineitem quantity": "1",
                   "Lineitem name": "Thing, blue", "Fulfillment Status": "fulfilled"}
            rows.append(row)
        carrier = 0 if rng.random() < 0.85 else lines - 1   # the order fields on another line at times
        rows[carrier].update(head)
        if lines > 1 and rng.random() < 0.1:   # a second carrier: a line item of the first one's order
            other = 1 - carrier if carrier in (0, 1) else 0
            rows[other].update({"Total": money(int(rng.integers(0, 500)), rng), "Currency": currency})
        if not email and lines > 1 and rng.random() < 0.3:   # the customer only on a line item
            rows[(carrier + 1) % lines]["Email"] = emails[1] or "late@example.com"
        orders.append(rows)
    return orders


def write_csv(path, orders):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=HEADER)
        writer.writeheader()
        for rows in orders:
            for row in rows:
                writer.writerow({c: row.get(c, "") for c in HEADER})


EMAILS = ["ann@example.com", "Ann@Example.com", " ann@example.com ", "bob@example.com", "BOB@EXAMPLE.COM",
          "carol@example.com", "dan@example.com", "customer 7", None, None]
FAULTS = ("reject", "malformed", "split_order", "short_ts", "two_currencies", "negative", "bad_refund")


@st.composite
def shopify_exports(draw):
    """(files {name: orders}, prepare options, the fault injected or None)."""
    n_files = draw(st.integers(1, 3))
    fault = draw(st.sampled_from([None] * 8 + list(FAULTS)))
    timezone = draw(st.sampled_from(["UTC", "UTC", "America/New_York"]))
    forms = ["offset", "offset", "iso", "z"] + (["naive"] if draw(st.booleans()) else [])
    names = draw(st.lists(st.sampled_from(["shop-1", "shop-2", "shop-10"]), min_size=n_files, max_size=n_files))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    files = {}
    number = 1001
    for f, shop in enumerate(names):
        n = draw(st.integers(0 if f else 1, 25))
        orders = shopify_orders(rng, n, number, EMAILS, "USD", forms)
        number += n   # the same shop in two files: other order numbers (each order in one file)
        files[f"{shop}_orders_export_{f}.csv"] = orders
    last = list(files)[-1]
    orders = files[last]
    at = draw(st.integers(0, len(orders) - 1)) if orders else 0
    if fault and orders:
        row = orders[at][0] if "Total" in orders[at][0] else next(r for r in orders[at] if "Total" in r)
        if fault == "reject":
            row["Created at"] = "2023-02-30 10:00:00 -0400"
        elif fault == "malformed":
            row["Lineitem name"] = None   # written as a line with one field too many (below)
        elif fault == "split_order":   # a line of that order elsewhere, another order between
            line = [{**orders[at][0], "Total": "", "Email": ""}]
            if at > 0:
                orders.insert(0, line)
            elif len(orders) > 1:
                orders.append(line)
            else:
                fault = None
        elif fault == "short_ts":
            row["Created at"] = "2023-05-01 10:15"
        elif fault == "two_currencies":
            for rows in orders[at:]:
                for r in rows:
                    if "Total" in r:
                        r["Currency"] = "EUR"
        elif fault == "negative":
            row["Total"] = "-5.00"
        elif fault == "bad_refund":
            row["Refunded Amount"] = "1,000.00"
    elif fault:
        fault = None
    options = {"format": "shopify", "merchant_from_filename": r"^(shop-\d+)_",
               "reward_codes": draw(st.sampled_from([None, "loyal-*", "LOYAL-?", "re:^loyal"])),
               "rejects": draw(st.sampled_from([None, "rejects.csv", "rejects.parquet"])),
               "currency": draw(st.sampled_from([None, None, "usd"])),
               "threads": draw(st.sampled_from([None, 1, 2])), "timezone": timezone}
    naive_elsewhere = "naive" in forms and timezone != "UTC"
    return files, options, fault, naive_elsewhere


def write_files(folder, files, fault):
    folder.mkdir(exist_ok=True)
    for name, orders in files.items():
        write_csv(folder / name, orders)
        if fault == "malformed":
            text = (folder / name).read_text()
            if "\n" in text.strip():
                lines = text.split("\n")
                lines[1] = lines[1] + ",extra"
                (folder / name).write_text("\n".join(lines))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None,
          max_examples=60)
@given(shopify_exports())
def test_fast_path_equals_the_general_path(tmp_path_factory, monkeypatch, spy, case):
    files, options, fault, naive_elsewhere = case
    tmp_path = tmp_path_factory.mktemp("csvprep")
    write_files(tmp_path / "raw", files, fault)
    spy.clear()
    report = run_both(tmp_path, str(tmp_path / "raw" / "*.csv"), monkeypatch, **options)
    assert len(spy) == 1
    if fault == "two_currencies" and isinstance(report, dict):
        pass   # the orders of one currency were all excluded: no mix, either path may answer
    elif fault:
        assert spy == [False], fault
    elif not naive_elsewhere and isinstance(report, dict) and report["rows_written"] > 0:
        assert spy == [True]


def _base(tmp_path, n=40, seed=3):
    rng = np.random.default_rng(seed)
    files = {"shop-1_orders_export.csv": shopify_orders(rng, n, 1001, EMAILS, "USD", ["offset", "iso", "z"]),
             "shop-10_orders_export.csv": shopify_orders(rng, n, 1001, EMAILS, "USD", ["offset"])}
    return files


OPTIONS = {"format": "shopify", "merchant_from_filename": r"^(shop-\d+)_", "reward_codes": "loyal-*"}


def test_the_benchmarks_export_takes_the_fast_path(tmp_path, monkeypatch, spy):
    """A generated export of many batches (runs of an order cut by batch ends) and every exclusion."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import prepare_bench

    (tmp_path / "raw").mkdir()
    prepare_bench.make_exports(tmp_path / "raw", 300_000)
    report = run_both(tmp_path, str(tmp_path / "raw" / "*.csv"), monkeypatch, **OPTIONS, rejects="rejects.csv")
    assert spy == [True]
    assert set(report["excluded"]) == {"line_item", "refunded_in_full", "voided", "guest_checkout", "cancelled",
                                       "test"}
    assert report["rows_read"] == report["rows_written"] + sum(e["count"] for e in report["excluded"].values())


@pytest.mark.parametrize("change", ["reject", "malformed", "split_order", "short_ts", "two_currencies", "negative",
                                    "order_without_total", "merchant_keys_shared", "non_ascii_key"])
def test_exports_outside_the_fast_path_take_the_general_path(tmp_path, monkeypatch, spy, change):
    files = _base(tmp_path)
    orders = files["shop-10_orders_export.csv"]
    carrier = next(r for r in orders[5] if "Total" in r)
    fault = None
    if change == "reject":   # DuckDB reads 24:00:00 as the next day: decided by the general path
        carrier["Created at"] = "2023-01-01 24:00:00 -0400"
    elif change == "short_ts":
        carrier["Created at"] = "2023-05-01T10:15Z"
    elif change == "negative":
        carrier["Total"] = "-1.00"
    elif change == "malformed":
        fault = "malformed"
    elif change == "split_order":
        orders.insert(9, [{"Name": orders[5][0]["Name"].strip(), "Created at": carrier["Created at"]}])
    elif change == "two_currencies":
        for rows in orders:
            for r in rows:
                if "Total" in r:
                    r["Currency"] = "EUR"
    elif change == "order_without_total":
        for r in orders[5]:
            r["Total"] = ""
    elif change == "merchant_keys_shared":   # shop-1's order #1001 also in a second shop-1 file
        files["shop-1_orders_export_b.csv"] = [files["shop-1_orders_export.csv"][0]]
    elif change == "non_ascii_key":
        for r in orders[5]:
            r["Name"] = "#1\u00e9"
    write_files(tmp_path / "raw", files, fault)
    run_both(tmp_path, str(tmp_path / "raw" / "*.csv"), monkeypatch, **OPTIONS)
    assert spy == [False]


def test_naive_times_take_the_fast_path_in_utc_only(tmp_path, monkeypatch, spy):
    rng = np.random.default_rng(5)
    files = {"shop-1_orders_export.csv": shopify_orders(rng, 30, 1001, EMAILS, "USD", ["naive", "offset"])}
    write_files(tmp_path / "raw", files, None)
    run_both(tmp_path / "raw", str(tmp_path / "raw" / "*.csv"), monkeypatch, **OPTIONS)
    (tmp_path / "ny").mkdir()
    run_both(tmp_path / "ny", str(tmp_path / "raw" / "*.csv"), monkeypatch, **OPTIONS, timezone="America/New_York")
    assert spy == [True, False]


def test_merchants_table_and_cli_match(tmp_path, monkeypatch, spy):
    files = _base(tmp_path)
    write_files(tmp_path / "raw", files, None)
    merchants = tmp_path / "merchants.csv"
    merchants.write_text("merchant_id,industry,country\nshop-1,apparel,US\nshop-10,toys,DE\nshop-99,food,FR\n")
    report = run_both(tmp_path, str(tmp_path / "raw" / "*.csv"), monkeypatch, **OPTIONS, merchants=merchants)
    assert spy == [True]
    assert report["merchants"] == 2 and len(report["warnings"]) == 1


def test_rows_beyond_the_memory_limit_take_the_general_path(tmp_path, monkeypatch, spy):
    """The readers' and the written orders' bytes are counted against memory_limit as they are read."""
    files = _base(tmp_path)
    write_files(tmp_path / "raw", files, None)
    monkeypatch.setattr(csvprep, "BYTES_PER_ORDER", 1 << 20)   # a MB an order: 40 orders do not fit 300 MB
    run_both(tmp_path, str(tmp_path / "raw" / "*.csv"), monkeypatch, **OPTIONS, memory_limit="300MB", threads=1)
    (tmp_path / "fits").mkdir()
    monkeypatch.setattr(csvprep, "BYTES_PER_ORDER", 100)
    run_both(tmp_path / "fits", str(tmp_path / "raw" / "*.csv"), monkeypatch, **OPTIONS, memory_limit="300MB",
             threads=1)
    assert spy == [False, True]


@pytest.mark.parametrize("seed", [21, 22])
def test_woocommerce_exports_take_the_fast_path(tmp_path, monkeypatch, spy, seed):
    """WooCommerce's order CSV (order fields on the first or on every product row: several carriers an order,
    the first the head), naive times in UTC; with --timezone elsewhere the general path converts them."""
    from test_prepare_exports import make_orders, write_woo

    shops = [("alpha.example", "UTC", "USD"), ("beta.example", "UTC", "USD")]
    orders = make_orders(seed, shops, "woocommerce")
    (tmp_path / "raw").mkdir()
    write_woo(tmp_path / "raw", orders, seed + 1, "UTC")
    options = {"format": "woocommerce", "merchant_from_filename": r"^(.+)-orders-\d+\.csv$",
               "reward_codes": "re:loyal-(\\d+|vip)", "rejects": "rejects.csv"}
    report = run_both(tmp_path, str(tmp_path / "raw" / "*-orders-2024.csv"), monkeypatch, **options)
    assert report["rows_written"] > 0 and "line_item" in report["excluded"]
    (tmp_path / "chicago").mkdir()
    run_both(tmp_path / "chicago", str(tmp_path / "raw" / "*-orders-2024.csv"), monkeypatch, **options,
             timezone="America/Chicago")
    assert spy == [True, False]


def test_generic_csv_with_an_order_key_takes_the_fast_path(tmp_path, monkeypatch, spy):
    raw = tmp_path / "orders.csv"
    raw.write_text("order_id,customer_id,order_ts,amount,status,refunded,currency\n"
                   "A1,a@x.com,2023-05-01 09:00:00,10.00,paid,,usd\n"
                   "A1,,2023-05-01 09:00:00,,,,\n"
                   "A2,A@X.com ,2023-05-02T09:00:00Z,7.5,Cancelled,,USD\n"
                   "A3,b@x.com,2023-05-03 09:00:00+02:00,8,paid,8,USD\n"
                   "A4,b@x.com,2023-05-04 09:00:00,8,test,0,USD\n"
                   "A5,b@x.com,2023-05-05 09:00:00,12.25,void,0,USD\n"
                   "A6,c@x.com,2023-05-06 09:00:00,3.10,,1.05,USD\n")
    report = run_both(tmp_path, str(raw), monkeypatch, merchant="shop", rejects="rejects.parquet")
    assert spy == [True]
    assert report["rows_written"] == 2 and set(report["excluded"]) == {
        "line_item", "cancelled", "refunded_in_full", "test", "voided"}
    (tmp_path / "with_reward").mkdir()
    (tmp_path / "with_reward" / "raw").mkdir()
    raw2 = tmp_path / "with_reward" / "raw" / "orders.csv"
    raw2.write_text(raw.read_text().replace(",currency\n", ",reward\n", 1))   # a reward column: general path
    run_both(tmp_path / "with_reward", str(raw2), monkeypatch, merchant="shop")
    assert spy == [True, False]


def test_a_reward_pattern_duckdb_refuses_gets_the_general_paths_error(tmp_path, monkeypatch, spy):
    """Python's re accepts a lookahead, RE2 does not: both paths end in the same error."""
    write_files(tmp_path / "raw", _base(tmp_path, n=5), None)
    report = run_both(tmp_path, str(tmp_path / "raw" / "*.csv"), monkeypatch,
                      **{**OPTIONS, "reward_codes": "re:loyal(?=-)"})
    assert isinstance(report, tuple) and spy == [False]


@st.composite
def fixed_timestamps(draw):
    """A time in one of the fixed-width forms the kernel reads, fields anywhere in their ranges (leap days,
    month ends, offsets up to ±14:59), as text."""
    year = draw(st.integers(1971, 2261))
    month = draw(st.integers(1, 12))
    days = [31, 29 if (year % 4 == 0 and year % 100) or year % 400 == 0 else 28, 31, 30, 31, 30, 31, 31, 30, 31,
            30, 31][month - 1]
    day = draw(st.integers(1, days))
    clock = f"{draw(st.integers(0, 23)):02d}:{draw(st.integers(0, 59)):02d}:{draw(st.integers(0, 59)):02d}"
    sign = draw(st.sampled_from("+-"))
    zh, zm = draw(st.integers(0, 14)), draw(st.integers(0, 59))
    form = draw(st.sampled_from(["shopify", "iso", "z", "naive"]))
    sep = "T" if form in ("iso", "z") or draw(st.booleans()) else " "
    text = f"{year:04d}-{month:02d}-{day:02d}{sep}{clock}"
    return text + {"shopify": f" {sign}{zh:02d}{zm:02d}", "iso": f"{sign}{zh:02d}:{zm:02d}", "z": "Z",
                   "naive": ""}[form]


def _amount(cents, style):
    whole, part = divmod(cents, 100)
    return {"2": f"{whole}.{part:02d}", "1": f"{whole}.{part // 10}" if part % 10 == 0 else f"{whole}.{part:02d}",
            "0": str(whole) if part == 0 else f"{whole}.{part:02d}", "lead0": f"{whole:05d}.{part:02d}"}[style]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None, max_examples=25)
@given(st.lists(st.tuples(fixed_timestamps(), st.integers(0, 10**15 - 1), st.integers(0, 100),
                          st.sampled_from(["2", "1", "0", "lead0"])), min_size=1, max_size=40))
def test_times_and_amounts_read_by_the_kernel_are_the_general_paths(tmp_path_factory, monkeypatch, spy, rows):
    """Every fixed-width time and plain amount the kernel accepts gives the general path's microseconds and
    cents (13-digit totals, refunds of any share, leap days, extreme offsets)."""
    tmp_path = tmp_path_factory.mktemp("kernel")
    (tmp_path / "raw").mkdir()
    with open(tmp_path / "raw" / "shop-1_orders_export.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Name", "Email", "Created at", "Total", "Refunded Amount", "Currency"])
        for k, (created, total, share, style) in enumerate(rows):
            refund = total * share // 100
            writer.writerow([f"#{k}", f"c{k % 3}@x.com", created, _amount(total, style),
                             _amount(refund, style) if share else "", "USD"])
    spy.clear()
    report = run_both(tmp_path, str(tmp_path / "raw" / "*.csv"), monkeypatch, **OPTIONS)
    assert spy == [report["rows_written"] > 0]


@pytest.mark.parametrize("created", ["2023-02-29 10:00:00 -0400", "2024-04-31 10:00:00", "2023-01-01 24:00:00",
                                     "2023-01-01 10:60:00 +0000", "2023-01-01 10:00:60Z", "2023-01-01 10:00:00 +1500",
                                     "2023-01-01 10:00:00+05:60", "1970-01-01 00:30:00 +0100",
                                     "2262-12-31 23:59:59 -1400", "2023-01-01 10:00:00 0400", "2023-1-01 10:00:00",
                                     "2023-01-01  10:00:00", "2023-01-01 10:00:00.5", " 2023-01-01 10:00:00"])
@pytest.mark.parametrize("total", ["10.00"])
def test_times_the_kernel_does_not_read_go_to_the_general_path(tmp_path, monkeypatch, spy, created, total):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "shop-1_orders_export.csv").write_text(
        "Name,Email,Created at,Total\n#1,a@x.com,2023-01-01 10:00:00 -0400,5.00\n"
        f"#2,b@x.com,{created},{total}\n")
    run_both(tmp_path, str(tmp_path / "raw" / "*.csv"), monkeypatch, **OPTIONS)
    assert spy == [False]


@pytest.mark.parametrize("total", ["12.345", "1e3", "+5.00", "5.", ".50", "1,000.00", "1_000", " 5.00", "5.00 ",
                                   "12345678901234.00", "-0.00", "0x10", "nan"])
def test_amounts_the_kernel_does_not_read_go_to_the_general_path(tmp_path, monkeypatch, spy, total):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "shop-1_orders_export.csv").write_text(
        "Name,Email,Created at,Total\n#1,a@x.com,2023-01-01 10:00:00 -0400,5.00\n"
        f"#2,b@x.com,2023-01-02 10:00:00 -0400,\"{total}\"\n")
    run_both(tmp_path, str(tmp_path / "raw" / "*.csv"), monkeypatch, **OPTIONS)
    assert spy == [False]


def test_orders_longer_than_a_batch(tmp_path, monkeypatch, spy):
    """Small blocks: orders of hundreds of lines span several batches (carried to the next window whole)."""
    rng = np.random.default_rng(9)
    orders = shopify_orders(rng, 30, 1001, EMAILS, "USD", ["offset"])
    for rows in orders[::7]:
        rows.extend({**rows[-1], "Total": "", "Email": "", "Financial Status": ""} for _ in range(300))
    write_files(tmp_path / "raw", {"shop-1_orders_export.csv": orders}, None)
    monkeypatch.setattr(csvprep, "BLOCK_BYTES", 4096)
    report = run_both(tmp_path, str(tmp_path / "raw" / "*.csv"), monkeypatch, **OPTIONS, threads=1)
    assert spy == [True] and report["excluded"]["line_item"]["count"] >= 5 * 300


def test_orders_across_batch_edges_with_keys_padded_differently(tmp_path, monkeypatch, spy):
    """Small blocks: an order whose lines straddle two batches is taken with the next batch's first lines
    (csvprep._continuing), its key with spaces around it on some lines, as the general path trims them."""
    rng = np.random.default_rng(11)
    orders = shopify_orders(rng, 400, 1001, EMAILS, "USD", ["offset"])
    for rows in orders:
        for row in rows:
            row["Name"] = " " * int(rng.integers(0, 3)) + row["Name"] + " " * int(rng.integers(0, 3))
    write_files(tmp_path / "raw", {"shop-1_orders_export.csv": orders}, None)
    monkeypatch.setattr(csvprep, "BLOCK_BYTES", 2048)
    seen = []
    continuing = csvprep._continuing
    monkeypatch.setattr(csvprep, "_continuing", lambda *args: seen.append(continuing(*args)) or seen[-1])
    report = run_both(tmp_path, str(tmp_path / "raw" / "*.csv"), monkeypatch, **OPTIONS, threads=1)
    assert spy == [True] and report["rows_written"] > 0
    assert any(k for k in seen) and 0 in seen      # orders that went on into the next batch, and that did not


def test_non_ascii_emails_are_keyed_and_ordered_as_duckdb_does(tmp_path, monkeypatch, spy):
    """Customer keys are DuckDB's lower(trim(e-mail)) and their ids DuckDB's order of them, also beyond ASCII
    (Unicode case mappings, a no-break space that trim strips, a byte order that is not Python's)."""
    rng = np.random.default_rng(4)
    emails = ["Zoë@Example.com", "zoë@example.com", "ÄNN@x.com", "änn@x.com", "\u00a0bob@x.com\u3000", "İlk@x.com",
              "ılk@x.com", "ẞ@x.com", "kelvin\u212a@x.com", "ann@x.com", "日本@x.jp", "Ωmega@x.gr", None]
    orders = shopify_orders(rng, 60, 1001, emails, "USD", ["offset"])
    write_files(tmp_path / "raw", {"shop-1_orders_export.csv": orders}, None)
    report = run_both(tmp_path, str(tmp_path / "raw" / "*.csv"), monkeypatch, **OPTIONS)
    assert spy == [True] and report["customers"] >= 5


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.one_of(st.none(), st.text(max_size=3)), max_size=70), offset=st.integers(0, 20),
       length=st.integers(0, 70))
def test_valid_bytes_are_the_arrays_validity(values, offset, length):
    """The kernels' 0/1 validity bytes, unpacked from the bitmap, at any slice offset (bits not byte-aligned)."""
    import pyarrow as pa

    array = pa.array(values, pa.string()).slice(min(offset, len(values)), length)
    got = csvprep._valid(array)
    assert got.dtype == np.uint8
    assert got.tolist() == [int(v is not None) for v in array.to_pylist()]
