"""``prepare`` on Shopify-style CSV exports against two DuckDB baselines.

Generates Shopify "Export orders" CSVs (one row per line item, ~2.4 lines per order, order fields on
the first line only, `Created at` like ``2023-05-01 10:15:00 -0400``, refunds, voided/cancelled/test
orders, guests, e-mail case variants, discount codes) for three shops, then times:

1. ``prepare --format shopify`` (and ``prepare`` + ``compute --by merchant``);
2. a plain DuckDB ``ORDER BY`` of the same CSVs into an Arrow IPC file (the cost of reading and
   sorting alone, without any of prepare's checks);
3. hand-written DuckDB SQL computing orders, customers, revenue, repeat customers and reward orders
   per (shop, year) straight from the CSVs — and checks that (1) gives the same numbers.

Then, for a generic Parquet file of shuffled orders with integer ids (no line items; ``--parquet-rows``,
written by the benchmark itself), times ``prepare`` against a plain DuckDB ``ORDER BY`` of the same file
into Arrow IPC, and checks that both hold the same rows in the same order.

    python benchmarks/prepare_bench.py --lines 2e6 --threads 2 --repeat 3 --parquet-rows 5e6
"""
import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

import loyaltymetrics as lm

SHOPS = ("shop-1", "shop-2", "shop-10")


PART_LINES = 4_000_000  # lines generated at a time: memory stays ~2 GB whatever --lines is


def make_exports(folder, lines, seed=0):
    """The three shops' exports of ``lines`` lines in all, generated ``PART_LINES`` at a time (one part, as
    for --lines up to 4e6, is the same data as before parts existed). Returns (paths, lines written)."""
    n_orders = int(lines / 2.4)
    parts = max(1, -(-lines // PART_LINES))
    paths = [folder / f"{name}_orders_export.csv" for name in SHOPS]
    writers, written, first_order = [None] * len(SHOPS), 0, 0
    try:
        for part in range(parts):
            orders = n_orders // parts + (1 if part < n_orders % parts else 0)
            tables = _export_part(orders, first_order, seed if part == 0 else (seed, part))
            first_order += orders
            for s, table in enumerate(tables):
                if writers[s] is None:
                    writers[s] = pacsv.CSVWriter(str(paths[s]), table.schema)
                writers[s].write_table(table)
                written += table.num_rows
    finally:
        for writer in writers:
            if writer is not None:
                writer.close()
    return paths, written


def _export_part(n_orders, first_order, seed):
    """One table per shop: the lines of ``n_orders`` orders numbered from ``first_order`` + 1001."""
    rng = np.random.default_rng(seed)
    items = rng.choice([1, 1, 2, 3, 5], size=n_orders)
    shop = rng.integers(0, len(SHOPS), n_orders)
    customer = rng.zipf(1.6, n_orders) % 200_000
    utc = 1_640_995_200 + rng.integers(0, 2 * 365 * 86400, n_orders)
    local = pa.array(utc - 4 * 3600, pa.timestamp("s"))
    created = pc.binary_join_element_wise(pc.strftime(local, "%Y-%m-%d %H:%M:%S"), pa.scalar(" -0400"), "")
    total_cents = rng.integers(500, 40_000, n_orders)
    fate = rng.choice(["paid", "paid", "paid", "paid", "paid", "paid", "partially_refunded", "refunded", "voided",
                       "pending"], size=n_orders)
    refunded = np.where(fate == "partially_refunded", total_cents * rng.integers(5, 95, n_orders) // 100,
                        np.where(fate == "refunded", total_cents, 0))
    cancelled = rng.random(n_orders) < 0.02
    test = rng.random(n_orders) < 0.005
    guest = rng.random(n_orders) < 0.05
    email = pc.binary_join_element_wise(pa.scalar("person"), pa.array(customer).cast(pa.string()),
                                        pa.scalar("@example.com"), "")
    email = pc.if_else(pa.array(rng.random(n_orders) < 0.2), pc.utf8_upper(email), email)
    email = pc.if_else(pa.array(guest), pa.scalar(None, pa.string()), email)
    code = pa.array(rng.choice(["", "", "", "SUMMER10", "LOYAL-7", "LOYAL-VIP"], size=n_orders))

    def money(c):
        c = np.asarray(c)
        return pc.binary_join_element_wise(pa.array(c // 100).cast(pa.string()),
                                           pc.utf8_lpad(pa.array(c % 100).cast(pa.string()), 2, "0"), ".")

    order_of_line = np.repeat(np.arange(n_orders), items)
    first = np.r_[True, order_of_line[1:] != order_of_line[:-1]]
    carry = pa.array(first)

    def on_first(values):
        taken = pa.array(values).take(pa.array(order_of_line))
        return pc.if_else(carry, taken, pa.scalar(None, taken.type))

    tables = []
    for s, name in enumerate(SHOPS):
        mine = np.flatnonzero(shop[order_of_line] == s)
        table = pa.table({
            "Name": pc.binary_join_element_wise(pa.scalar("#"), pa.array(order_of_line + first_order + 1001)
                                                .cast(pa.string()), ""),
            "Email": on_first(email),
            "Financial Status": on_first(fate),
            "Fulfillment Status": on_first(np.full(n_orders, "fulfilled")),
            "Currency": on_first(np.full(n_orders, "USD")),
            "Subtotal": on_first(money(total_cents)),
            "Total": on_first(money(total_cents)),
            "Discount Code": on_first(code),
            "Created at": pa.array(created).take(pa.array(order_of_line)),
            "Lineitem quantity": pa.array(np.ones(len(order_of_line), np.int64)).cast(pa.string()),
            "Lineitem name": pa.array(np.full(len(order_of_line), "Thing, blue")),
            "Cancelled at": on_first(pc.if_else(pa.array(cancelled), created, pa.scalar(None, pa.string()))),
            "Payment Method": on_first(np.where(test, "bogus", "Shopify Payments")),
            "Refunded Amount": on_first(money(refunded)),
        }).take(pa.array(mine))
        tables.append(table)
    return tables


HAND_SQL = r"""
WITH raw AS (
    SELECT regexp_extract(filename, '(shop-\d+)_orders', 1) AS shop, *
    FROM read_csv('{glob}', all_varchar = true, header = true, filename = true)
), orders AS (
    SELECT shop, lower(trim("Email")) AS email,
           strptime("Created at", '%Y-%m-%d %H:%M:%S %z') AS ts,
           CAST("Total" AS DECIMAL(18, 2)) - coalesce(CAST("Refunded Amount" AS DECIMAL(18, 2)), 0) AS net,
           "Financial Status" AS status, "Cancelled at" AS cancelled, "Payment Method" AS gateway,
           coalesce(regexp_full_match(lower("Discount Code"), 'loyal-.*'), false) AS reward
    FROM raw WHERE "Total" IS NOT NULL
), valid AS (
    SELECT * FROM orders
    WHERE cancelled IS NULL AND status NOT IN ('voided', 'refunded') AND coalesce(gateway, '') <> 'bogus'
      AND email IS NOT NULL AND net > 0
), per_customer AS (
    SELECT shop, year(timezone('UTC', ts)) AS year, email, count(*) AS n,
           sum(CAST(round(net * 100) AS BIGINT)) AS revenue, sum(CAST(reward AS INTEGER)) AS rewards
    FROM valid GROUP BY ALL
)
SELECT shop, year, sum(n) AS orders, count(*) AS customers, sum(revenue) AS revenue,
       count(*) FILTER (WHERE n >= 2) AS repeat_customers, sum(rewards) AS reward_orders
FROM per_customer GROUP BY ALL ORDER BY ALL
"""


def make_parquet(path, rows, seed=1):
    """Shuffled canonical-like orders with integer ids, amounts in cents (int64), a reward flag."""
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    table = pa.table({
        "merchant_id": pa.array(rng.integers(1, 201, rows), pa.int64()),
        "customer_id": pa.array(rng.zipf(1.6, rows) % 2_000_000, pa.int64()),
        "order_ts": pa.array(1_640_995_200_000_000 + rng.integers(0, 2 * 365 * 86400 * 10**6, rows),
                             pa.timestamp("us", tz="UTC")),
        "amount": pa.array(rng.integers(500, 40_000, rows), pa.int64()),
        "reward": pa.array(rng.random(rows) < 0.1),
    })
    pq.write_table(table, path, row_group_size=1 << 20)


def timed(fn, cpu=None):
    """(wall seconds, result), or with a list ``cpu``, also appends the CPU seconds (all threads)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    result = fn()
    if cpu is not None:
        cpu.append(time.process_time() - cpu_started)
    return time.perf_counter() - started, result


CPU = {}  # name -> median CPU seconds (process time: every thread of this process, DuckDB's included)


def median_runs(steps, repeat):
    """{name: (median seconds of ``repeat`` runs, the last result)} for each (name, fn) of ``steps``,
    the runs of the steps interleaved (a load that changes during the run weighs on all alike)."""
    times, cpus, results = {}, {}, {}
    for _ in range(repeat):
        for name, fn in steps:
            os.sync()   # untimed: no step pays for writing back the files an earlier step wrote
            seconds, results[name] = timed(fn, cpus.setdefault(name, []))
            times.setdefault(name, []).append(seconds)
    for name, _ in steps:
        CPU[name] = float(np.median(cpus[name]))
    return {name: (float(np.median(times[name])), results[name]) for name, _ in steps}


def duckdb_session(duckdb, args):
    """A DuckDB connection with the benchmark's threads and memory limit, as prepare gets them."""
    con = duckdb.connect()
    con.execute(f"SET threads = {args.threads}; SET memory_limit = '{args.memory_limit}'")
    return con


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=float, default=2e6, help="CSV lines over all shops (default 2e6)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-limit", default="2GB")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the median is shown")
    parser.add_argument("--parquet-rows", type=float, default=5e6,
                        help="rows of the generic Parquet case (default 5e6; 0 skips it)")
    parser.add_argument("--general", action="store_true",
                        help="force prepare's general DuckDB path (no fast path for typed Parquet or CSV exports)")
    args = parser.parse_args()
    if args.general:
        lm.convert.FAST_PATH = False
    import duckdb

    work = Path(tempfile.mkdtemp(prefix="prepare-bench-"))
    try:
        if args.lines:
            csv_case(duckdb, work, args)
        if args.parquet_rows:
            parquet_case(duckdb, work, int(args.parquet_rows), args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def csv_case(duckdb, work, args):
    seconds, (files, lines) = timed(lambda: make_exports(work, int(args.lines)))
    size = sum(f.stat().st_size for f in files) / 1e6
    print(f"{lines:,} CSV lines ({size:,.0f} MB, 3 shops) generated in {seconds:.1f} s")
    glob = str(work / "*_orders_export.csv")

    def prepare():
        return lm.prepare(glob, work / "orders.arrow", format="shopify", merchant_from_filename=r"^(shop-\d+)_",
                          reward_codes="loyal-*", threads=args.threads, memory_limit=args.memory_limit)

    def compute():
        return lm.compute(str(work / "orders.arrow"), by=["merchant"], threads=args.threads)

    def plain_sort():
        con = duckdb_session(duckdb, args)
        rel = con.sql(f"SELECT * FROM read_csv('{glob}', all_varchar = true, header = true) "
                      f"ORDER BY \"Email\", \"Created at\"")
        reader = rel.to_arrow_reader(1 << 20) if hasattr(rel, "to_arrow_reader") else rel.fetch_arrow_reader()
        with pa.OSFile(str(work / "sorted.arrow"), "wb") as sink, \
                pa.ipc.new_file(sink, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch)

    def hand_sql():
        con = duckdb_session(duckdb, args)
        return con.sql(HAND_SQL.format(glob=glob)).fetchall()

    runs = median_runs((("prepare", prepare), ("compute", compute), ("duckdb ORDER BY -> IPC", plain_sort),
                        ("hand-written DuckDB SQL", hand_sql)), args.repeat)

    report = runs["prepare"][1]
    ids = {v: k for k, v in zip(*lm.convert._read_table(report.merchant_ids).to_pydict().values())}
    ours = sorted((ids[r["merchant_id"]], r["period_start"].year, r["orders"], r["customers"], r["revenue"],
                   r["repeat_customers"], r["reward_orders"]) for r in runs["compute"][1].to_pylist())
    theirs = sorted(tuple(int(v) if not isinstance(v, str) else v for v in row) for row in runs["hand-written DuckDB SQL"][1])
    print(f"prepare: read {report.rows_read:,}, wrote {report.rows_written:,} orders, excluded "
          f"{report.rows_excluded:,}, rejected {report.rows_rejected:,}")
    print(f"per (shop, year) numbers equal the hand-written SQL's: {ours == theirs}")
    base, base_cpu = runs["duckdb ORDER BY -> IPC"][0], CPU["duckdb ORDER BY -> IPC"]
    print("\n| step | seconds | CPU seconds | vs DuckDB ORDER BY (seconds, CPU) |\n|---|---:|---:|---:|")
    for name, (seconds, _) in runs.items():
        print(f"| {name} | {seconds:.2f} | {CPU[name]:.2f} | {seconds / base:.2f}x, {CPU[name] / base_cpu:.2f}x |")
    both, both_cpu = runs["prepare"][0] + runs["compute"][0], CPU["prepare"] + CPU["compute"]
    print(f"| prepare + compute | {both:.2f} | {both_cpu:.2f} | {both / base:.2f}x, {both_cpu / base_cpu:.2f}x |")
    hand, hand_cpu = runs["hand-written DuckDB SQL"][0], CPU["hand-written DuckDB SQL"]
    print(f"\nprepare + compute / hand-written SQL: {both / hand:.2f}x seconds, {both_cpu / hand_cpu:.2f}x CPU")
    if ours != theirs:
        raise SystemExit("MISMATCH between prepare + compute and the hand-written SQL")


def parquet_case(duckdb, work, rows, args):
    source = work / "orders.parquet"
    seconds, _ = timed(lambda: make_parquet(source, rows))
    print(f"\n{rows:,} shuffled orders with integer ids in Parquet "
          f"({source.stat().st_size / 1e6:,.0f} MB) generated in {seconds:.1f} s")

    def prepare():
        return lm.prepare(str(source), work / "p_orders.arrow", amount_unit="minor", threads=args.threads,
                          memory_limit=args.memory_limit)

    def plain_sort():
        con = duckdb_session(duckdb, args)
        rel = con.sql(f"SELECT * FROM read_parquet('{source}') ORDER BY merchant_id, customer_id, order_ts")
        reader = rel.to_arrow_reader(1 << 20) if hasattr(rel, "to_arrow_reader") else rel.fetch_arrow_reader()
        with pa.OSFile(str(work / "p_sorted.arrow"), "wb") as sink, pa.ipc.new_file(sink, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch)

    runs = median_runs((("prepare (generic Parquet)", prepare), ("duckdb ORDER BY -> IPC", plain_sort)), args.repeat)
    report = runs["prepare (generic Parquet)"][1]
    ours = pa.ipc.open_file(str(work / "p_orders.arrow")).read_all()
    theirs = pa.ipc.open_file(str(work / "p_sorted.arrow")).read_all()
    # Integer keys get dense ids in key order: mapped back, the rows must be the plain sort's, in its order
    # (ties on (merchant, customer, order_ts) may differ in order; compare the multiset within the sort key).
    m_ids = lm.convert._read_table(report.merchant_ids)
    c_ids = lm.convert._read_table(report.customer_ids)
    m_keys = pc.take(m_ids.column("merchant_key"), pc.subtract(ours.column("merchant_id").cast(pa.int64()), 1))
    c_keys = pc.take(c_ids.column("customer_key"), pc.subtract(ours.column("customer_id"), 1))
    mine = pa.table({"m": m_keys, "c": c_keys, "t": ours.column("order_ts").cast(pa.int64()),
                     "a": ours.column("amount"), "r": ours.column("reward")})
    other = pa.table({"m": theirs.column("merchant_id"), "c": theirs.column("customer_id"),
                      "t": theirs.column("order_ts").cast(pa.int64()), "a": theirs.column("amount"),
                      "r": theirs.column("reward")})
    keys = [(c, "ascending") for c in ("m", "c", "t", "a", "r")]
    same = (report.rows_written == rows and mine.select(["m", "c", "t"]).equals(other.select(["m", "c", "t"]))
            and mine.sort_by(keys).equals(other.sort_by(keys)))
    print(f"prepare: read {report.rows_read:,}, wrote {report.rows_written:,}; same rows in the same order as the "
          f"plain sort: {same}")
    base, base_cpu = runs["duckdb ORDER BY -> IPC"][0], CPU["duckdb ORDER BY -> IPC"]
    print("\n| step | seconds | CPU seconds | vs DuckDB ORDER BY (seconds, CPU) |\n|---|---:|---:|---:|")
    for name, (seconds, _) in runs.items():
        print(f"| {name} | {seconds:.2f} | {CPU[name]:.2f} | {seconds / base:.2f}x, {CPU[name] / base_cpu:.2f}x |")
    if not same:
        raise SystemExit("MISMATCH between prepare and the plain sort of the Parquet file")


if __name__ == "__main__":
    main()
