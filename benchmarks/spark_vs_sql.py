"""``loyaltymetrics.spark.compute`` against Spark SQL alone, on the same Parquet data.

    python benchmarks/spark_vs_sql.py --rows 4e6 --repeat 3
    python benchmarks/spark_vs_sql.py --rows 1e7 --repeat 5 --partitions 16 --data-dir /data/bench

Generates an order network with ``loyaltymetrics generate`` (or reuses the
files of an earlier run with the same ``--rows`` and ``--seed``) and copies
it to Parquet, batch by batch: the canonical layout of SPEC §2 as Spark
reads it. Then, in one local Spark session, two formulations compute the
SPEC §4 base counts per (merchant_id, year) from ``spark.read.parquet``:

- ``spark.compute(orders, by=["merchant"], period="year")``: range
  repartition, sort within partitions, the Cython kernel in ``mapInArrow``,
  partials summed by Spark, finalize on the driver;
- ``SQL_BASE_COUNTS``: one aggregate per store-customer and year, a window
  over each store-customer's years (first year, previous year), one
  aggregate per merchant and year: how the counts are written in Spark SQL.

For scale, ``lm.compute`` reads the same Parquet file on one machine
without Spark (with its default threads: the CPUs the process may use).

Each is run once untimed (JVM warm-up, Python workers), then ``--repeat``
times, interleaved, each timed from reading the Parquet files to holding
the result on the driver. The medians (min - max) and rows/s are printed.
Every run's counts must equal spark.compute's, cell for cell: a benchmark
of different answers is worthless, so a difference exits with status 1.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import loyaltymetrics as lm
from loyaltymetrics.synthetic import parse_rows

BASE_COUNTS = (
    "orders", "revenue", "customers", "new_customers", "repeat_customers",
    "orders_from_repeat_customers", "retained_customers", "reward_orders",
    "reward_revenue", "reward_customers", "member_orders", "member_revenue",
    "member_repeat_customers",
)

# Years in UTC: the session's time zone is set to UTC.
SQL_BASE_COUNTS = """
WITH store_customer_years AS (
    SELECT merchant_id, customer_id, year(order_ts) AS year,
           count(*) AS orders,
           sum(amount) AS revenue,
           count_if(reward) AS reward_orders,
           sum(CASE WHEN reward THEN amount ELSE 0 END) AS reward_revenue
    FROM orders
    GROUP BY merchant_id, customer_id, year(order_ts)
), ranked AS (
    SELECT *,
           year = min(year) OVER (PARTITION BY merchant_id, customer_id) AS is_new,
           lag(year) OVER (PARTITION BY merchant_id, customer_id ORDER BY year) = year - 1 AS is_retained
    FROM store_customer_years
)
SELECT CAST(merchant_id AS BIGINT) AS merchant_id, year,
       sum(orders) AS orders,
       sum(revenue) AS revenue,
       count(*) AS customers,
       count_if(is_new) AS new_customers,
       count_if(orders >= 2) AS repeat_customers,
       sum(CASE WHEN orders >= 2 THEN orders ELSE 0 END) AS orders_from_repeat_customers,
       count_if(is_retained) AS retained_customers,
       sum(reward_orders) AS reward_orders,
       sum(reward_revenue) AS reward_revenue,
       count_if(reward_orders > 0) AS reward_customers,
       sum(CASE WHEN reward_orders > 0 THEN orders ELSE 0 END) AS member_orders,
       sum(CASE WHEN reward_orders > 0 THEN revenue ELSE 0 END) AS member_revenue,
       count_if(reward_orders > 0 AND orders >= 2) AS member_repeat_customers
FROM ranked
GROUP BY merchant_id, year
"""


def parquet_orders(rows, seed, data_dir):
    """The Parquet copy of a generated network with ``rows`` orders (made once, then reused)."""
    parquet = data_dir / f"spark_orders_{rows}_{seed}.parquet"
    if not parquet.exists():
        made = lm.generate(data_dir / f"spark_orders_{rows}_{seed}.arrow", rows=rows, seed=seed)
        partial = parquet.with_name(parquet.name + ".partial")
        with pa.memory_map(made.orders_path) as source:
            reader = pa.ipc.open_file(source)
            with pq.ParquetWriter(partial, reader.schema) as writer:
                for i in range(reader.num_record_batches):
                    writer.write_batch(reader.get_batch(i))
        os.replace(partial, parquet)
        os.remove(made.orders_path)
        os.remove(made.merchants_path)
    return str(parquet)


def spark_session(master, partitions, driver_memory):
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable  # workers need this interpreter's loyaltymetrics
    warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas", FutureWarning)
    session = (
        SparkSession.builder.master(master)
        .appName("loyaltymetrics-spark-vs-sql")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", driver_memory)
        .config("spark.sql.shuffle.partitions", str(partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    return session


def run_loyaltymetrics(spark, path):
    from loyaltymetrics import spark as lms

    return by_merchant_year(lms.compute(spark.read.parquet(path), by=["merchant"], period="year").toArrow())


def by_merchant_year(table):
    years = pa.array([d.year for d in table.column("period_start").to_pylist()], pa.int32())
    return table.select(["merchant_id", *BASE_COUNTS]).add_column(1, "year", years)


def run_local(spark, path):
    return by_merchant_year(lm.compute(path, by=["merchant"], period="year"))


def run_sql(spark, path):
    spark.read.parquet(path).createOrReplaceTempView("orders")
    return spark.sql(SQL_BASE_COUNTS).toArrow()


def canonical(table):
    """Sorted by (merchant_id, year), int64 counts: the form both results are compared in."""
    table = table.sort_by([("merchant_id", "ascending"), ("year", "ascending")])
    return pa.table({name: table.column(name).cast(pa.int64()) for name in ("merchant_id", "year", *BASE_COUNTS)})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=parse_rows, default=4_000_000, help="orders (default 4e6)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each (default 3)")
    parser.add_argument("--master", default="local[*]", help="Spark master (default local[*])")
    parser.add_argument("--partitions", type=int, default=8, help="spark.sql.shuffle.partitions (default 8)")
    parser.add_argument("--driver-memory", default="4g", help="spark.driver.memory (default 4g)")
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the data files are made and reused (default: the temp directory)")
    args = parser.parse_args(argv)

    args.data_dir.mkdir(parents=True, exist_ok=True)
    path = parquet_orders(args.rows, args.seed, args.data_dir)
    spark = spark_session(args.master, args.partitions, args.driver_memory)
    runners = {"loyaltymetrics.spark.compute": run_loyaltymetrics, "Spark SQL": run_sql,
               "lm.compute, no Spark": run_local}
    expected = canonical(run_loyaltymetrics(spark, path))
    times = {name: [] for name in runners}
    for attempt in range(args.repeat + 1):  # attempt 0 warms up and is not timed
        for name, run in runners.items():
            start = time.perf_counter()
            result = run(spark, path)
            seconds = time.perf_counter() - start
            if not canonical(result).equals(expected):
                print(f"{name}: the base counts differ from loyaltymetrics.spark.compute's", file=sys.stderr)
                return 1
            if attempt:
                times[name].append(seconds)

    print(f"{args.rows:,} orders ({expected.num_rows:,} merchant-years), Parquet; Spark {spark.version}, "
          f"master {args.master}, {args.partitions} shuffle partitions; medians of {args.repeat} runs")
    print(f"{'formulation':<30} {'median':>9} {'min - max':>17} {'rows/s':>9}")
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(f"{name:<30} {median:8.2f}s {min(seconds):7.2f} - {max(seconds):5.2f}s "
              f"{args.rows / median / 1e6:7.2f} M")
    print("results: equal")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
