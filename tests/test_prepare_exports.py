"""prepare() on realistic Shopify and WooCommerce exports: the metrics equal an independent ground truth.

The exports are built here from a list of true orders (line items, partial and full refunds, voided,
cancelled, failed and test orders, guests, e-mail case variants, two time zones, two currencies with
dated FX rates, discount codes). The ground truth is computed from that list in plain Python —
decimal arithmetic, SPEC §4 definitions — never through prepare.
"""
import csv
import datetime
import os
import random
import stat
from collections import defaultdict
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import loyaltymetrics as lm
from loyaltymetrics.cli import main

UTC = datetime.timezone.utc
FX = [("EUR", datetime.date(2021, 1, 1), Decimal("1.1013")), ("EUR", datetime.date(2023, 1, 1), Decimal("1.0857")),
      ("EUR", datetime.date(2023, 7, 1), Decimal("1.0925")), ("GBP", datetime.date(2021, 1, 1), Decimal("1.2671"))]


def rate_at(currency, when):
    if currency == "USD":
        return Decimal(1)
    day = when.astimezone(UTC).date()
    return max((r for r in FX if r[0] == currency and r[1] <= day), key=lambda r: r[1])[2]


def cents(value):
    return int((value * 100).to_integral_value(rounding=ROUND_HALF_UP))


def make_orders(seed, shops, platform):
    """True orders: dicts with the shop, number, e-mail (None for guests), time, money and fate."""
    rng = random.Random(seed)
    orders = []
    for shop, zone, currency in shops:
        people = [f"person{i}@example.com" for i in range(rng.randint(25, 40))]
        number = 1000
        for _ in range(rng.randint(150, 220)):
            number += 1
            guest = rng.random() < 0.08
            when = datetime.datetime(2022, 1, 1, tzinfo=UTC) + datetime.timedelta(
                seconds=rng.randrange(2 * 365 * 86400))
            # Orders around New Year in local time land in the other UTC year: keep a few on purpose.
            if rng.random() < 0.05:
                when = datetime.datetime(2022, 12, 31, 23, rng.randrange(60), tzinfo=ZoneInfo(zone))
            total = Decimal(rng.randrange(500, 40000)) / 100
            fate = rng.choices(["ok", "partial", "full", "voided", "cancelled", "test", "failed", "pending"],
                               [70, 8, 5, 4, 4, 2, 3, 4])[0]
            if platform == "shopify" and fate in ("failed", "pending"):
                fate = "ok"  # Shopify: a pending payment is still an order (README)
            refunded = Decimal(0)
            if fate == "partial":
                refunded = (total * Decimal(rng.randrange(5, 95)) / 100).quantize(Decimal("0.01"))
            elif fate == "full":
                refunded = total
            code = rng.choice(["", "", "", "SUMMER10", "LOYAL-" + str(rng.randrange(100)), "loyal-vip",
                               "WELCOME5"])
            email = None if guest else rng.choice(people)
            orders.append(dict(shop=shop, zone=zone, currency=currency, number=number, email=email, when=when,
                               total=total, refunded=refunded, fate=fate, code=code,
                               items=rng.choice([1, 1, 1, 2, 3, 5]), email_everywhere=rng.random() < 0.5))
    return orders


def variant(email, rng):
    """How a customer typed their e-mail this time."""
    return rng.choice([email, email.upper(), " " + email.title() + " ", email.capitalize()])


def ground_truth(orders):
    """{(shop, year): counts} from the true orders, by SPEC §4 (years in UTC)."""
    kept = [o for o in orders if o["fate"] in ("ok", "partial") and o["email"] is not None]
    cells = defaultdict(lambda: dict(orders=0, revenue=0, customers=set(), per_customer=defaultdict(int),
                                     reward_orders=0))
    for o in kept:
        cell = cells[(o["shop"], o["when"].astimezone(UTC).year)]
        cell["orders"] += 1
        cell["revenue"] += cents((o["total"] - o["refunded"]) * rate_at(o["currency"], o["when"]))
        cell["customers"].add(o["email"])
        cell["per_customer"][o["email"]] += 1
        cell["reward_orders"] += o["code"].lower().startswith("loyal-")
    return {key: dict(orders=c["orders"], revenue=c["revenue"], customers=len(c["customers"]),
                      repeat_customers=sum(n >= 2 for n in c["per_customer"].values()),
                      reward_orders=c["reward_orders"]) for key, c in cells.items()}


SHOPIFY_HEADER = ["Name", "Email", "Financial Status", "Paid at", "Fulfillment Status", "Fulfilled at",
                  "Accepts Marketing", "Currency", "Subtotal", "Shipping", "Taxes", "Total", "Discount Code",
                  "Discount Amount", "Shipping Method", "Created at", "Lineitem quantity", "Lineitem name",
                  "Lineitem price", "Lineitem sku", "Billing Name", "Billing Address1", "Notes", "Cancelled at",
                  "Payment Method", "Refunded Amount", "Vendor", "Id", "Tags", "Source"]


def shopify_time(when, zone):
    return when.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S %z")


def write_shopify(folder, orders, seed):
    rng = random.Random(seed)
    paths = {}
    for shop in sorted({o["shop"] for o in orders}):
        path = folder / f"{shop}_orders_export.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(SHOPIFY_HEADER)
            mine = [o for o in orders if o["shop"] == shop]
            rng.shuffle(mine)  # exports need not be in any order
            for o in mine:
                status = {"ok": "paid", "partial": "partially_refunded", "full": "refunded", "voided": "voided",
                          "cancelled": "refunded", "test": "paid"}[o["fate"]]
                if o["fate"] == "ok" and rng.random() < 0.1:
                    status = rng.choice(["pending", "authorized", "partially_paid"])
                email = "" if o["email"] is None else variant(o["email"], rng)
                created = shopify_time(o["when"], o["zone"])
                for item in range(o["items"]):
                    row = dict.fromkeys(SHOPIFY_HEADER, "")
                    row.update({"Name": f"#{o['number']}", "Created at": created, "Lineitem quantity": "1",
                                "Lineitem name": f"Thing, size {item}", "Lineitem price": "9.99",
                                "Lineitem sku": f"SKU-{item}"})
                    if item == 0 or o["email_everywhere"]:
                        row["Email"] = email
                    if item == 0:
                        row.update({
                            "Financial Status": status, "Paid at": created, "Fulfillment Status": "fulfilled",
                            "Accepts Marketing": "no", "Currency": o["currency"], "Subtotal": str(o["total"]),
                            "Shipping": "0.00", "Taxes": "0.00", "Total": f"{o['total']:.2f}",
                            "Discount Code": o["code"], "Discount Amount": "1.00" if o["code"] else "0.00",
                            "Billing Name": "Jo \"JJ\" Doe", "Billing Address1": "1 Main St, Apt 2",
                            "Notes": "leave at the door,\nplease" if rng.random() < 0.05 else "",
                            "Cancelled at": created if o["fate"] == "cancelled" else "",
                            "Payment Method": "bogus" if o["fate"] == "test" else "Shopify Payments",
                            "Refunded Amount": f"{o['refunded']:.2f}" if o["refunded"] or o["fate"] == "cancelled"
                            else "0.00",
                            "Id": str(5_000_000_000 + o["number"]), "Source": "web",
                        })
                        if o["fate"] == "cancelled":
                            row["Refunded Amount"] = f"{o['total']:.2f}"
                    w.writerow([row[c] for c in SHOPIFY_HEADER])
        paths[shop] = path
    return paths


WOO_HEADER = ["Order Number", "Order Status", "Order Date", "Customer Note", "First Name (Billing)",
              "Billing Email", "Order Currency", "Payment Method Title", "Coupons Used", "Order Refund",
              "Order Total", "Item #", "Item Name", "Quantity", "Item Cost"]
WOO_STATUS = {"ok": "Completed", "partial": "Completed", "full": "Refunded", "voided": "Cancelled",
              "cancelled": "Cancelled", "test": "Failed", "failed": "Failed", "pending": "Pending payment"}


def write_woo(folder, orders, seed, zone):
    rng = random.Random(seed)
    paths = {}
    for k, shop in enumerate(sorted({o["shop"] for o in orders})):
        path = folder / f"{shop}-orders-2024.csv"
        repeat_fields = k % 2 == 0  # the plugin's "fill order columns on every product row", on or off
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(WOO_HEADER)
            for o in orders:
                if o["shop"] != shop:
                    continue
                status = WOO_STATUS[o["fate"]]
                if o["fate"] == "ok" and rng.random() < 0.15:
                    status = rng.choice(["Processing", "On hold"])
                local = o["when"].astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S")
                order_fields = {"Order Number": str(o["number"]), "Order Status": status, "Order Date": local,
                                "First Name (Billing)": "Jo",
                                "Billing Email": "" if o["email"] is None else variant(o["email"], rng),
                                "Order Currency": o["currency"], "Payment Method Title": "Stripe",
                                "Coupons Used": ", ".join(c for c in (o["code"], "FREESHIP") if c and rng.random() < 0.9),
                                "Order Refund": f"{o['refunded']:.2f}" if o["refunded"] else "0",
                                "Order Total": f"{o['total']:.2f}"}
                if o["code"].lower().startswith("loyal-") and o["code"] not in order_fields["Coupons Used"]:
                    order_fields["Coupons Used"] = o["code"]
                o["code"] = o["code"] if o["code"] in order_fields["Coupons Used"] else ""
                for item in range(o["items"]):
                    row = dict.fromkeys(WOO_HEADER, "")
                    if item == 0 or repeat_fields:
                        row.update(order_fields)
                    row.update({"Order Number": str(o["number"]), "Item #": str(item + 1),
                                "Item Name": f"Mug {item}", "Quantity": "1", "Item Cost": "4.50"})
                    w.writerow([row[c] for c in WOO_HEADER])
        paths[shop] = path
    return paths


def write_fx(path):
    with open(path, "w") as f:
        f.write("currency,date,rate\n")
        for currency, day, rate in FX:
            f.write(f"{currency},{day.isoformat()},{rate}\n")


def prepared_cells(orders_path, merchant_ids):
    """{(shop, year): counts} from prepare's output through lm.compute(by=["merchant"])."""
    keys = dict(zip(*pq.read_table(merchant_ids).to_pydict().values()))  # merchant_key -> merchant_id
    shop_of = {v: k for k, v in keys.items()}
    table = lm.compute(str(orders_path), by=["merchant"]).to_pylist()
    return {(shop_of[r["merchant_id"]], r["period_start"].year): dict(
        orders=r["orders"], revenue=r["revenue"], customers=r["customers"],
        repeat_customers=r["repeat_customers"], reward_orders=r["reward_orders"]) for r in table}


@pytest.fixture(scope="module")
def shopify(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shopify")
    shops = [("shop-1", "America/New_York", "USD"), ("shop-2", "Europe/Berlin", "EUR"),
             ("shop-10", "America/New_York", "USD")]
    orders = make_orders(11, shops, "shopify")
    paths = write_shopify(folder, orders, 12)
    write_fx(folder / "rates.csv")
    return folder, orders, paths


def test_shopify_export_gives_the_ground_truth(shopify, tmp_path):
    folder, orders, paths = shopify
    out = tmp_path / "orders.arrow"
    report = lm.prepare(str(folder / "*_orders_export.csv"), out, format="shopify",
                        merchant_from_filename=r"^(shop-\d+)_orders", currency="USD", fx=folder / "rates.csv",
                        reward_codes="loyal-*")
    truth = ground_truth(orders)
    assert prepared_cells(out, report.merchant_ids) == truth
    # Every row is accounted for, by reason.
    n_rows = sum(o["items"] for o in orders)
    assert report.rows_read == n_rows
    assert report.rows_read == report.rows_written + report.rows_excluded + report.rows_rejected
    assert report.rows_rejected == 0
    expected = defaultdict(int)
    for o in orders:
        expected["line_item"] += o["items"] - 1
        reason = {"full": "refunded_in_full", "voided": "voided", "cancelled": "cancelled", "test": "test"}.get(o["fate"])
        if reason:
            expected[reason] += 1
        elif o["email"] is None:
            expected["guest_checkout"] += 1
    assert {k: v.count for k, v in report.excluded.items()} == dict(expected)
    # Merchant ids in natural order: shop-1, shop-2, shop-10.
    assert pq.read_table(report.merchant_ids).to_pydict() == {
        "merchant_key": ["shop-1", "shop-2", "shop-10"], "merchant_id": [1, 2, 3]}


def test_shopify_keep_guests_counts_each_guest_once(shopify, tmp_path):
    folder, orders, _ = shopify
    out = tmp_path / "orders.arrow"
    report = lm.prepare(sorted(folder.glob("*_orders_export.csv")), out, format="shopify",
                        merchant_from_filename=r"^(shop-\d+)_", currency="USD", fx=folder / "rates.csv",
                        keep_guests=True)
    kept = [o for o in orders if o["fate"] in ("ok", "partial")]
    assert report.rows_written == len(kept)
    customers = {(o["shop"], o["email"] or ("guest", o["number"])) for o in kept}
    table = pa.ipc.open_file(str(out)).read_all()
    assert len(set(zip(table.column("merchant_id").to_pylist(), table.column("customer_id").to_pylist()))) \
        == len(customers)


def test_woocommerce_export_gives_the_ground_truth(tmp_path):
    shops = [("alpha.example", "America/Chicago", "USD"), ("beta.example", "America/Chicago", "GBP")]
    orders = make_orders(21, shops, "woocommerce")
    write_woo(tmp_path, orders, 22, "America/Chicago")
    write_fx(tmp_path / "rates.csv")
    out = tmp_path / "orders.arrow"
    code = main(["prepare", str(tmp_path / "*-orders-2024.csv"), "-o", str(out), "--format", "woocommerce",
                 "--merchant-from-filename", r"^(.+)-orders-\d+\.csv$", "--timezone", "America/Chicago",
                 "--currency", "usd", "--fx", str(tmp_path / "rates.csv"), "--reward-codes", "re:loyal-(\\d+|vip)",
                 "-q"])
    assert code == 0
    assert prepared_cells(out, tmp_path / "orders_merchant_ids.parquet") == ground_truth(orders)


def test_refund_rows_of_an_order_are_netted_by_its_refund_column(tmp_path):
    """Some WooCommerce exports list a refund as its own row (negative total, the parent's number), maybe first."""
    raw = tmp_path / "shop-orders-2024.csv"
    raw.write_text("Order Number,Order Status,Order Date,Billing Email,Order Currency,Order Refund,Order Total\n"
                   "7,Refunded,2023-05-02 09:00:00,a@x.com,USD,,-4.00\n"
                   "7,Completed,2023-05-01 09:00:00,A@X.com,USD,4.00,10.00\n"
                   "8,Completed,2023-05-03 09:00:00,a@x.com,USD,0,5.00\n")
    report = lm.prepare(raw, tmp_path / "o.arrow", format="woocommerce", merchant="shop")
    assert report.rows_written == 2 and report.excluded["refund_row"].count == 1 and not report.rejected
    table = pa.ipc.open_file(str(tmp_path / "o.arrow")).read_all()
    assert table.column("amount").to_pylist() == [600, 500]
    assert table.column("customer_id").to_pylist() == [1, 1]


def test_merchants_table_is_rekeyed_so_industries_stay_attached(shopify, tmp_path):
    folder, orders, _ = shopify
    merchants = tmp_path / "merchants.csv"
    merchants.write_text("merchant_id,industry,country,annual_fee\nshop-10,apparel,US,100000\n"
                         "shop-2,toys,DE,50000\nshop-1,food,US,70000\nshop-99,garden,FR,1\n")
    out = tmp_path / "orders.arrow"
    report = lm.prepare(list(folder.glob("*_orders_export.csv")), out, format="shopify",
                        merchant_from_filename=r"^(shop-\d+)_", currency="USD", fx=folder / "rates.csv",
                        merchants=merchants)
    rekeyed = pq.read_table(report.merchants_table).to_pydict()
    assert rekeyed["merchant_id"] == [1, 2, 3]
    assert rekeyed["name"] == ["shop-1", "shop-2", "shop-10"]
    assert rekeyed["industry"] == ["food", "toys", "apparel"]
    assert any("shop-99" not in w and "no written order" in w for w in report.warnings)
    by_industry = {r["industry"]: r["orders"] for r in
                   lm.compute(str(out), merchants=report.merchants_table, by=["industry"], period="all").to_pylist()}
    truth = ground_truth(orders)
    industry = {"shop-1": "food", "shop-2": "toys", "shop-10": "apparel"}
    expected = defaultdict(int)
    for (shop, _), cell in truth.items():
        expected[industry[shop]] += cell["orders"]
    assert by_industry == dict(expected)


# --- failures: a non-zero exit and a clear message, never a wrong number ---------------------

def generic_csv(path, rows, header="merchant_id,customer_id,order_ts,amount"):
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return path


def test_everything_rejected_exits_non_zero(tmp_path, capsys):
    raw = generic_csv(tmp_path / "x.csv", ["m,a,05/01/2023 10:15,1.00", "m,b,05/02/2023 10:15,2.00"])
    assert main(["prepare", str(raw), "-o", str(tmp_path / "o.arrow")]) == 1
    err = capsys.readouterr().err
    assert "no order was written" in err and "unparsable_order_ts" in err and "x.csv: row 0" in err


def test_everything_excluded_exits_non_zero(tmp_path, capsys):
    raw = generic_csv(tmp_path / "x.csv", ["m,,2023-05-01T10:15:00Z,1.00"])
    assert main(["prepare", str(raw), "-o", str(tmp_path / "o.arrow")]) == 1
    assert "guest_checkout" in capsys.readouterr().err


def test_rejects_above_max_rejects_exit_non_zero(tmp_path, capsys):
    rows = [f"m,c{i},2023-05-01T10:15:00Z,1.00" for i in range(97)] + ["m,x,2023-05-01T10:15:00Z,1_000"] * 3
    raw = generic_csv(tmp_path / "x.csv", rows)
    assert main(["prepare", str(raw), "-o", str(tmp_path / "o.arrow")]) == 1
    err = capsys.readouterr().err
    assert "3 rows rejected" in err and "--max-rejects" in err and "unparsable_amount" in err
    assert main(["prepare", str(raw), "-o", str(tmp_path / "o.arrow"), "--max-rejects", "3"]) == 0
    assert main(["prepare", str(raw), "-o", str(tmp_path / "o.arrow"), "--max-rejects", "5%"]) == 0
    assert main(["prepare", str(raw), "-o", str(tmp_path / "o.arrow"), "--max-rejects", "2"]) == 1


def test_impossible_values_are_rejected_not_guessed(tmp_path):
    raw = generic_csv(tmp_path / "x.csv", [
        "m,a,2023-05-01 10:15:00+25:00,1.00", "m,b,epoch,1.00", "m,c,2023-05-01T10:15:00Z,1_000",
        "m,d,2023-05-01 10:15:00 +0561,1.00", "m,e,2023-02-30 10:00:00,1.00", "m,f,now,1.00",
        "m,g,2023-05-01 10:15:00 -0400,1.00", "m,h,2023-05-01T10:15:00.5+05:30,$5", "m,i,2023-05-01,1,000.00",
    ])
    report = lm.prepare(raw, tmp_path / "o.arrow", rejects=tmp_path / "r.csv")
    import pyarrow.csv as pacsv

    got = {r["customer_id"] or None: r["reason"] for r in pacsv.read_csv(tmp_path / "r.csv").to_pylist()}
    assert got == {"a": "unparsable_order_ts", "b": "unparsable_order_ts", "c": "unparsable_amount",
                   "d": "unparsable_order_ts", "e": "unparsable_order_ts", "f": "unparsable_order_ts",
                   "h": "unparsable_amount", None: "malformed_csv_row"}
    written = pa.ipc.open_file(str(tmp_path / "o.arrow")).read_all()
    assert written.num_rows == 1  # only g, in Shopify's own form: 14:15 UTC
    assert written.column("order_ts")[0].as_py() == datetime.datetime(2023, 5, 1, 14, 15, tzinfo=UTC)
    assert {k: v.count for k, v in report.rejected.items()} == {
        "unparsable_order_ts": 5, "unparsable_amount": 2, "malformed_csv_row": 1}


def test_several_currencies_without_fx_is_an_error(shopify, tmp_path, capsys):
    folder, _, _ = shopify
    code = main(["prepare", str(folder / "*_orders_export.csv"), "-o", str(tmp_path / "o.arrow"),
                 "--format", "shopify", "--merchant-from-filename", r"^(shop-\d+)_"])
    assert code == 1
    err = capsys.readouterr().err
    assert "EUR" in err and "USD" in err and "--fx" in err
    assert not (tmp_path / "o.arrow").exists()
    # An FX table without a rate for a currency rejects its orders, by reason.
    (tmp_path / "usd_only.csv").write_text("currency,rate\nGBP,1.25\n")
    report = lm.prepare(str(folder / "*_orders_export.csv"), tmp_path / "o.arrow", format="shopify",
                        merchant_from_filename=r"^(shop-\d+)_", currency="USD", fx=tmp_path / "usd_only.csv")
    assert report.rejected["no_fx_rate"].count > 0


def test_missing_merchant_and_bad_filename_regex_are_clear(shopify, tmp_path, capsys):
    folder, _, paths = shopify
    assert main(["prepare", str(paths["shop-1"]), "-o", str(tmp_path / "o.arrow"), "--format", "shopify"]) == 1
    assert "--merchant" in capsys.readouterr().err
    assert main(["prepare", str(paths["shop-1"]), "-o", str(tmp_path / "o.arrow"), "--format", "shopify",
                 "--merchant-from-filename", r"^(store-\d+)"]) == 1
    assert "does not match the file name" in capsys.readouterr().err
    assert main(["prepare", str(paths["shop-1"]), "-o", str(tmp_path / "o.arrow"), "--format", "shopify",
                 "--merchant", "shop-1", "-q"]) == 0


def test_line_items_without_an_order_key_are_reported(tmp_path, capsys):
    raw = generic_csv(tmp_path / "x.csv", ["m,a,2023-05-01T10:15:00Z,1.00", "m,a,2023-05-01T10:15:00Z,2.00",
                                           "m,b,2023-05-01T10:15:00Z,3.00"])
    assert main(["prepare", str(raw), "-o", str(tmp_path / "o.arrow"), "-q", "--max-rejects", "1"]) == 0
    assert "likely line items" in capsys.readouterr().err
    # Beyond --max-rejects, likely line items fail the run: counted as orders they inflate every metric.
    assert main(["prepare", str(raw), "-o", str(tmp_path / "o.arrow"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "1 written rows repeat" in err and "--columns order_id" in err
    raw = generic_csv(tmp_path / "y.csv", ["m,a,2023-05-01T10:15:00Z,5.00,#1", "m,a,2023-05-01T10:15:00Z,,#1",
                                           "m,b,2023-05-01T10:15:00Z,3.00,#2"],
                      header="merchant_id,customer_id,order_ts,amount,order_id")
    report = lm.prepare(raw, tmp_path / "o.arrow")
    assert report.rows_written == 2 and report.excluded["line_item"].count == 1 and not report.warnings



def test_an_orders_head_and_customer_whichever_row_carries_them(tmp_path):
    """Order 3: one row with the total and the customer, a line item after it. Order 1: the total on a row
    without a customer, the customer on its line item. Order 2: no row with the total. Order 4: two rows
    with a total, the refund (negative) first. Each order's customer is its first total row's, else the
    first one on any of its rows; the line item reported first names its order's customer."""
    raw = generic_csv(tmp_path / "x.csv", [
        "m,3,d@x.com,2023-01-03T00:00:00Z,5.00", "m,3,,2023-01-03T00:00:00Z,",
        "m,1,,2023-01-01T00:00:00Z,10.00", "m,1,B@x.com,2023-01-01T00:00:00Z,",
        "m,2,c@x.com,2023-01-02T00:00:00Z,", "m,2,c@x.com,2023-01-02T00:00:00Z,",
        "m,4,,2023-01-04T00:00:00Z,-1.00", "m,4,e@x.com,2023-01-04T00:00:00Z,7.00"],
        header="merchant_id,order_id,customer_id,order_ts,amount")
    report = lm.prepare(raw, tmp_path / "o.arrow", rejects=tmp_path / "r.csv")
    assert report.rows_read == 8 and report.rows_written == 3
    assert {k: v.count for k, v in report.excluded.items()} == {"line_item": 3, "refund_row": 1}
    assert {k: v.count for k, v in report.rejected.items()} == {"order_without_total": 1}
    first = report.excluded["line_item"]
    assert first.first_row == 1 and first.first_values == {"merchant": "m", "order": "3", "customer": "d@x.com"}
    assert report.rejected["order_without_total"].first_row == 4
    assert report.excluded["refund_row"].first_row == 6
    keys = pq.read_table(report.customer_ids).to_pydict()
    assert keys == {"customer_key": ["b@x.com", "d@x.com", "e@x.com"], "customer_id": [1, 2, 3]}
    table = pa.ipc.open_file(str(tmp_path / "o.arrow")).read_all()
    assert table.column("customer_id").to_pylist() == [1, 2, 3]
    assert table.column("amount").to_pylist() == [1000, 500, 700]
    with open(tmp_path / "r.csv") as f:
        assert [(r["row"], r["reason"], r["order_id"]) for r in csv.DictReader(f)] == \
            [("4", "order_without_total", "2")]


def test_the_reporting_currency_is_in_the_output_schema(shopify, tmp_path):
    """Under b"loyaltymetrics.currency": --currency, else the one currency of the orders, else nothing."""
    def currency_of(path):
        return (pa.ipc.open_file(str(path)).schema.metadata or {}).get(b"loyaltymetrics.currency")

    folder, _, _ = shopify
    out = tmp_path / "fx.arrow"
    report = lm.prepare(str(folder / "*_orders_export.csv"), out, format="shopify",
                        merchant_from_filename=r"^(shop-\d+)_orders", currency="usd", fx=folder / "rates.csv")
    assert currency_of(out) == b"USD" and report.currency == "USD"
    one = generic_csv(tmp_path / "one.csv", ["m,a,2023-05-01T10:15:00Z,1.00, eur", "m,b,2023-05-02T10:15:00Z,2.00,EUR"],
                      header="merchant_id,customer_id,order_ts,amount,currency")
    assert lm.prepare(one, tmp_path / "one.arrow").currency == "EUR" and currency_of(tmp_path / "one.arrow") == b"EUR"
    none = generic_csv(tmp_path / "none.csv", ["m,a,2023-05-01T10:15:00Z,1.00"])
    assert lm.prepare(none, tmp_path / "none.arrow").currency is None and currency_of(tmp_path / "none.arrow") is None
    assert lm.prepare(none, tmp_path / "given.arrow", currency="chf").currency == "CHF"
    assert currency_of(tmp_path / "given.arrow") == b"CHF"
    # compute reads the file with its metadata as any other: 2 orders, 1.00 + 2.00.
    rows = lm.compute(str(tmp_path / "one.arrow")).to_pylist()
    assert sum(r["orders"] for r in rows) == 2 and sum(r["revenue"] for r in rows) == 300


def test_status_words_read_as_by_their_normal_form(tmp_path):
    """A status is excluded by its normal form — trimmed, lower case, a leading "wc-" dropped, each run of
    spaces and "_" one "-" — looked up in the format's words (derived here with Python's re)."""
    import re

    from loyaltymetrics.convert import STATUS_WORDS

    statuses = ["Voided", " VOIDED ", "wc-voided", "wc-wc-voided", "void_ed", "voided_", "_voided", "refunded",
                "Re funded", "cancelled", "wc-Cancelled", "CANCELED", "test", "failed ", "paid", "partially_refunded",
                "wc-failed", "wc-", "void", "wc-void ", "te st", "TEST_"]
    rows = [f"m,c{i}@x.com,2023-05-01T10:15:00Z,1.00,{status}" for i, status in enumerate(statuses)]
    raw = generic_csv(tmp_path / "x.csv", rows, header="merchant_id,customer_id,order_ts,amount,status")
    report = lm.prepare(raw, tmp_path / "o.arrow")
    expected = defaultdict(int)
    for status in statuses:
        normal = re.sub(r"[ _]+", "-", re.sub(r"^wc-", "", status.strip().lower()))
        if normal in STATUS_WORDS["generic"]:
            expected[STATUS_WORDS["generic"][normal]] += 1
    assert {k: v.count for k, v in report.excluded.items()} == dict(expected)
    assert report.rows_written == len(statuses) - sum(expected.values()) > 0

# --- issue 12: outputs never clobber inputs; hostile text -------------------------------------

def test_outputs_that_are_inputs_are_refused(tmp_path, capsys):
    raw = generic_csv(tmp_path / "x.csv", ["m,a,2023-05-01T10:15:00Z,1.00"])
    before = raw.read_bytes()
    for extra in (["--rejects", str(raw)], []):
        out = str(raw) if not extra else str(tmp_path / "o.arrow")
        assert main(["prepare", str(raw), "-o", out] + extra) == 1
        assert "refusing to overwrite an input" in capsys.readouterr().err
        assert raw.read_bytes() == before
    # The id mappings' names, derived from the output's, may not replace the export either.
    mapping = tmp_path / "o_customer_ids.parquet"
    pq.write_table(pa.table({"merchant_id": ["m"], "customer_id": ["a"], "order_ts": ["2023-05-01"],
                             "amount": ["1"]}), mapping)
    before = mapping.read_bytes()
    os.link(mapping, tmp_path / "hard.parquet")
    assert main(["prepare", str(tmp_path / "hard.parquet"), "-o", str(tmp_path / "o.arrow")]) == 1
    assert mapping.read_bytes() == before
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".*.tmp"))


def test_mappings_and_rejects_are_private(tmp_path):
    raw = generic_csv(tmp_path / "x.csv", ["m,a@x.com,2023-05-01T10:15:00Z,1.00", "m,b@x.com,bad,1.00"])
    report = lm.prepare(raw, tmp_path / "o.arrow", rejects=tmp_path / "r.parquet")
    for path in (report.merchant_ids, report.customer_ids, report.rejects):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    assert stat.S_IMODE(os.stat(tmp_path / "o.arrow").st_mode) != 0o600 or os.umask(0o022) == 0o177


def test_a_stray_quote_costs_one_line(tmp_path):
    rows = [f"m,c{i},2023-05-01T10:15:00Z,{i}.00" for i in range(1000)]
    raw = tmp_path / "q.csv"
    raw.write_text("merchant_id,customer_id,order_ts,amount\n" + 'm,"c-bad,2023-05-01T10:15:00Z,1.00\n'
                   + "".join(r + "\n" for r in rows))
    report = lm.prepare(raw, tmp_path / "o.arrow", rejects=tmp_path / "r.parquet")
    assert report.rows_written == 1000 and report.rows_read == 1001
    bad = report.rejected["malformed_csv_row"]
    assert bad.count == 1 and bad.first_row == 0 and bad.first_values["physical line"] == 2
    rejects = pq.read_table(tmp_path / "r.parquet").to_pylist()
    assert rejects[0]["line"] == 'm,"c-bad,2023-05-01T10:15:00Z,1.00' and rejects[0]["row"] == 0
    assert rejects[0]["line_number"] == 2


def test_quoted_newlines_survive_a_bad_line(tmp_path):
    """Values spanning lines inside quotes are one record, also when another line is broken."""
    raw = tmp_path / "n.csv"
    raw.write_text('merchant_id,customer_id,order_ts,amount,note\n'
                   'm,a,2023-05-01T10:15:00Z,1.00,"first\nsecond, line"\n'
                   'm,b,2023-05-01T10:15:00Z\n'
                   'm,"c,2023-05-01T10:15:00Z,3.00,x\n'
                   'm,d,2023-05-01T10:15:00Z,4.00,"x ""quoted"""\n')
    report = lm.prepare(raw, tmp_path / "o.arrow", rejects=tmp_path / "r.parquet")
    assert report.rows_written == 2 and report.rows_read == 4
    rejects = pq.read_table(tmp_path / "r.parquet").to_pylist()
    assert [(r["row"], r["line_number"]) for r in rejects] == [(1, 4), (2, 5)]
    amounts = pa.ipc.open_file(str(tmp_path / "o.arrow")).read_all().column("amount").to_pylist()
    assert sorted(amounts) == [100, 400]


def test_a_huge_first_row_is_read(tmp_path):
    raw = tmp_path / "big.csv"
    note = "x" * 200_000
    raw.write_text("merchant_id,customer_id,order_ts,amount,note\n"
                   f"m,a,2023-05-01T10:15:00Z,1.00,{note}\nm,b,2023-05-01T10:15:00Z,2.00,short\n")
    report = lm.prepare(raw, tmp_path / "o.arrow")
    assert report.rows_written == 2 and report.rows_rejected == 0


def test_out_of_range_parquet_timestamps_are_rejects_not_crashes(tmp_path):
    values = [1_683_000_000_000, 9_000_000_000_000_000, -9_000_000_000_000_000, 2**62]
    pq.write_table(pa.table({"merchant_id": ["m"] * 4, "customer_id": ["a", "b", "c", "d"],
                             "order_ts": pa.array(values, pa.int64()).view(pa.timestamp("ms")),
                             "amount": ["1.00"] * 4}), tmp_path / "t.parquet")
    report = lm.prepare(tmp_path / "t.parquet", tmp_path / "o.arrow")
    assert report.rows_written == 1
    assert report.rejected["order_ts_out_of_range"].count == 3


def test_memory_limit_too_small_is_a_clean_error(shopify, tmp_path, capsys):
    folder, _, paths = shopify
    code = main(["prepare", str(paths["shop-1"]), "-o", str(tmp_path / "o.arrow"), "--format", "shopify",
                 "--merchant", "shop-1", "--memory-limit", "1MB", "-q"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code:
        assert "memory" in err.lower()
    assert not list(tmp_path.glob(".prepare-*"))


@pytest.mark.parametrize("pattern", ["LOYAL-*", "loyal-?", "re:loyal-\\d"])
def test_reward_codes_match_each_code_of_a_list(tmp_path, pattern):
    raw = generic_csv(tmp_path / "x.csv", ["m,a,2023-05-01,1,code:LOYAL-5|amount:5.00", 'm,b,2023-05-01,1,"SAVE, loyal-7"',
                                           "m,c,2023-05-01,1,XLOYAL-5", "m,d,2023-05-01,1,", "m,e,2023-05-01,1,LOYAL-5X"],
                      header="merchant_id,customer_id,order_ts,amount,discount_code")
    lm.prepare(raw, tmp_path / "o.arrow", reward_codes=pattern)
    got = pa.ipc.open_file(str(tmp_path / "o.arrow")).read_all().column("reward").to_pylist()
    assert got == [True, True, False, False, pattern == "LOYAL-*"]


def test_an_order_exported_in_two_files_counts_once(shopify, tmp_path):
    """Exports of one shop split by date overlap: the same order key of the same shop is one order."""
    folder, orders, paths = shopify
    lines = paths["shop-10"].read_text().splitlines(keepends=True)
    header, body = lines[0], lines[1:]
    (tmp_path / "shop-10_orders_export_1.csv").write_text(header + "".join(body[: len(body) * 2 // 3]))
    (tmp_path / "shop-10_orders_export_2.csv").write_text(header + "".join(body[len(body) // 3:]))
    report = lm.prepare(str(tmp_path / "shop-10_orders_export_*.csv"), tmp_path / "o.arrow", format="shopify",
                        merchant_from_filename=r"^(shop-\d+)_", reward_codes="LOYAL-*")
    truth = {k: v for k, v in ground_truth(orders).items() if k[0] == "shop-10"}

    got = prepared_cells(tmp_path / "o.arrow", report.merchant_ids)
    assert got == truth
    assert report.rows_rejected == 0 or set(report.rejected) == {"malformed_csv_row"}


def test_invalid_utf8_costs_one_line(tmp_path):
    raw = tmp_path / "u.csv"
    rows = b"".join(b"m,c%d@x.com,2023-05-01T10:15:00Z,1.00\n" % i for i in range(500))
    raw.write_bytes(b"merchant_id,customer_id,order_ts,amount\n" + rows + b"m,\xff\xfe@x.com,2023-05-01,1.00\n"
                    + b"m,last@x.com,2023-05-01T10:15:00Z,2.00\n")
    report = lm.prepare(raw, tmp_path / "o.arrow", rejects=tmp_path / "r.parquet")
    assert report.rows_read == 502 and report.rows_written == 501
    bad = pq.read_table(tmp_path / "r.parquet").to_pylist()
    assert [(r["reason"], r["line_number"]) for r in bad] == [("malformed_csv_row", 502)]
    assert "\\xff" in bad[0]["line"]


def test_line_items_without_a_key_are_rejected_once_with_their_values(tmp_path):
    """Rows without the order total are staged by their keys alone; those missing the merchant or order key
    are rejected (each once, not also a line item), with their raw values in the report and rejects."""
    raw = generic_csv(tmp_path / "x.csv", [
        "m,1,a@x.com,2023-01-01T00:00:00Z,5.00", "m,1,,2023-01-01T00:00:00Z,",
        "m,,z@x.com,2023-01-01T00:00:00Z,", ",2,b@x.com,2023-01-02T00:00:00Z,",
        "m,2,B@x.com,2023-01-02T00:00:00Z,7.00", "m,2,,2023-01-02T00:00:00Z,"],
        header="merchant_id,order_id,customer_id,order_ts,amount")
    report = lm.prepare(raw, tmp_path / "o.arrow", rejects=tmp_path / "r.csv")
    assert report.rows_read == 6 and report.rows_written == 2
    assert {k: (v.count, v.first_row) for k, v in report.excluded.items()} == {"line_item": (2, 1)}
    assert {k: (v.count, v.first_row) for k, v in report.rejected.items()} == \
        {"null_order_id": (1, 2), "null_merchant_id": (1, 3)}
    assert report.rejected["null_order_id"].first_values["customer_id"] == "z@x.com"
    assert report.rejected["null_merchant_id"].first_values["order_id"] == "2"
    with open(tmp_path / "r.csv") as f:
        assert [(r["row"], r["reason"], r["customer_id"]) for r in csv.DictReader(f)] == \
            [("2", "null_order_id", "z@x.com"), ("3", "null_merchant_id", "b@x.com")]
    assert pq.read_table(report.customer_ids).to_pydict()["customer_key"] == ["a@x.com", "b@x.com"]
    table = pa.ipc.open_file(str(tmp_path / "o.arrow")).read_all()
    assert table.column("amount").to_pylist() == [500, 700]


def test_a_stray_quote_in_a_line_item_export_costs_one_line(tmp_path):
    """Read again line by line after a stray quote, the rows already staged (orders and line items) are
    replaced, not added twice."""
    rows = [r for i in range(1, 301) for r in (f"m,{i},c{i}@x.com,2023-05-01T10:15:00Z,{i}.00",
                                               f"m,{i},,2023-05-01T10:15:00Z,")]
    raw = tmp_path / "q.csv"
    raw.write_text("merchant_id,order_id,customer_id,order_ts,amount\n"
                   + "".join(r + "\n" for r in rows[:100]) + 'm,"999,c@x.com,2023-05-01T10:15:00Z,1.00\n'
                   + "".join(r + "\n" for r in rows[100:]))
    report = lm.prepare(raw, tmp_path / "o.arrow")
    assert report.rows_read == 601 and report.rows_written == 300
    assert report.excluded["line_item"].count == 300
    assert report.rejected["malformed_csv_row"].first_row == 100
    amounts = pa.ipc.open_file(str(tmp_path / "o.arrow")).read_all().column("amount").to_pylist()
    assert sorted(amounts) == [i * 100 for i in range(1, 301)]
