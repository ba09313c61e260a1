"""Unsorted Parquet, end to end: ``compute(presorted=False)`` against DuckDB and Polars direct aggregation.

    python benchmarks/unsorted_bench.py --rows 5e6 --data-dir /tmp/unsorted_bench
    python benchmarks/unsorted_bench.py --rows 2e7 --memory-limit 512M
    python benchmarks/unsorted_bench.py --rows 1e9 --random --engines spill --memory-limit 1G

Generates ``--rows`` orders with ``datagen.streamed_orders`` (sorted), shuffles
them (a random permutation, as an export in arrival order would be), and
writes them to a snappy Parquet file (row groups of 1M rows) in
``--data-dir`` (reused when present). Then, each in a fresh process under
``/usr/bin/time -v`` (wall time and peak RSS of the whole process):

- loyaltymetrics ``compute(path, by=["merchant"], period="year",
  presorted=False)`` with the default ``memory_limit`` and with
  ``--memory-limit`` (which forces the spill path);
- DuckDB and Polars: per (merchant_id, year) orders, revenue and distinct
  customers straight from the Parquet file (a fair small peer query: what
  they do without sorting; loyaltymetrics computes all SPEC §4 counts).

Each peer's (merchant, year) orders / revenue / customers are checked equal
to loyaltymetrics' before any time is printed. ``--engines`` picks runs
among ``default,spill,duckdb,polars``.

``--random`` instead streams rows drawn independently (in random order
from the start: merchants by Pareto weight, customers uniform within
their merchant, instants uniform over 2020-2023), one row group at a time,
so that a file of a billion rows needs no memory to make (about 17 bytes
a row on disk; the spill path then needs about 25 bytes a row of TMPDIR).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CHILD = r"""
import json, sys, time
kind, path, limit, out = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
start = time.perf_counter()
if kind == "loyaltymetrics":
    import loyaltymetrics as lm
    t = lm.compute(path, by=["merchant"], period="year", presorted=False,
                   memory_limit=None if limit == "default" else int(limit))
    rows = sorted(zip(t["merchant_id"].to_pylist(), [d.year for d in t["period_start"].to_pylist()],
                      t["orders"].to_pylist(), t["revenue"].to_pylist(), t["customers"].to_pylist()))
elif kind == "duckdb":
    import duckdb
    con = duckdb.connect(config={"threads": 2})
    rows = con.execute(f'''SELECT merchant_id, year(order_ts AT TIME ZONE 'UTC') AS y, count(*), sum(amount)::BIGINT,
                           count(DISTINCT customer_id) FROM read_parquet('{path}') GROUP BY ALL ORDER BY ALL''').fetchall()
else:
    import polars as pl
    df = (pl.scan_parquet(path).group_by("merchant_id", pl.col("order_ts").dt.year().alias("y"))
          .agg(pl.len(), pl.col("amount").sum(), pl.col("customer_id").n_unique()).collect())
    rows = sorted(map(tuple, df.rows()))
elapsed = time.perf_counter() - start
json.dump({"seconds": elapsed, "rows": [list(map(int, r)) for r in rows]}, open(out, "w"))
"""


def make_data(rows, folder):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datagen import streamed_orders

    path = Path(folder) / f"shuffled-{rows}.parquet"
    if path.exists():
        return path
    Path(folder).mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_batches(list(streamed_orders(rows)))
    table = table.take(np.random.default_rng(1).permutation(rows))
    partial = path.with_name(path.name + ".partial")
    pq.write_table(table, partial, row_group_size=1 << 20, compression="snappy")
    os.replace(partial, path)
    return path


def make_random_data(rows, folder, group_rows=1 << 20):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datagen import default_merchants, orders_schema

    path = Path(folder) / f"random-{rows}.parquet"
    if path.exists():
        return path
    Path(folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    merchants = default_merchants(rows)
    weights = rng.pareto(1.2, merchants) + 1
    weights /= weights.sum()
    customers = np.maximum(1, np.round(weights * rows / 1.67)).astype(np.int64)   # store-customers a merchant
    start = np.datetime64("2020-01-01", "us").astype(np.int64)
    span = (np.datetime64("2024-01-01", "us") - np.datetime64("2020-01-01", "us")).astype(np.int64) // 10**6
    schema = orders_schema()
    partial = path.with_name(path.name + ".partial")
    with pq.ParquetWriter(partial, schema, compression="snappy") as writer:
        done = 0
        while done < rows:
            n = min(group_rows, rows - done)
            m = rng.choice(merchants, n, p=weights)
            batch = pa.record_batch([
                pa.array(m + 1, pa.int32()),
                pa.array(rng.integers(0, customers[m]) + 1, pa.int32()),
                pa.array(start + rng.integers(0, span, n) * 10**6, pa.int64()).view(schema.field("order_ts").type),
                pa.array(rng.integers(100, 50_000, n)),
                pa.array(rng.random(n) < 0.2),
            ], schema=schema)
            writer.write_batch(batch, row_group_size=group_rows)
            done += n
    os.replace(partial, path)
    return path


def run(kind, path, limit, out):
    command = ["/usr/bin/time", "-v", sys.executable, "-c", CHILD, kind, str(path), str(limit), out]
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="2"))
    if done.returncode:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-3000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
    h, m, s = wall.groups()
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    result = json.load(open(out))
    return (int(h or 0) * 3600 + int(m) * 60 + float(s)), result["seconds"], rss / 1024, result["rows"]


def main(argv=None):
    from loyaltymetrics.unsorted import parse_size

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=float, default=5e6)
    p.add_argument("--data-dir", default="/tmp/unsorted_bench")
    p.add_argument("--memory-limit", default="256M", help="a limit that forces the spill path")
    p.add_argument("--random", action="store_true", help="rows drawn in random order, streamed (see above)")
    p.add_argument("--engines", default="default,spill,duckdb,polars",
                   help="comma-separated among default, spill, duckdb, polars")
    args = p.parse_args(argv)
    rows = int(args.rows)
    t0 = time.perf_counter()
    path = (make_random_data if args.random else make_data)(rows, args.data_dir)
    print(f"data: {path} ({os.path.getsize(path) / 2**20:.0f} MiB, {time.perf_counter() - t0:.0f} s to make)")
    runs = {"default": ("loyaltymetrics", "default"), "spill": ("loyaltymetrics", parse_size(args.memory_limit)),
            "duckdb": ("duckdb", "-"), "polars": ("polars", "-")}
    runs = [runs[name] for name in args.engines.split(",")]
    expected = None
    print(f"{'engine':<34}{'wall s':>8}{'in-process s':>14}{'peak RSS MiB':>14}{'M rows/s':>10}")
    for kind, limit in runs:
        wall, inner, rss, result = run(kind, path, limit, os.path.join(args.data_dir, "result.json"))
        if expected is None:
            expected = result
        elif result != expected:
            print(f"  {kind}: results differ from loyaltymetrics'", file=sys.stderr)
            return 1
        label = kind if kind != "loyaltymetrics" else f"loyaltymetrics --unsorted (limit {limit})"
        print(f"{label:<34}{wall:>8.1f}{inner:>14.1f}{rss:>14.0f}{rows / wall / 1e6:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
