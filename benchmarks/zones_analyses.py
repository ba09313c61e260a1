"""Cohorts, concentration and rfm with every merchant in UTC against merchants in several zones (issue 13).

The per-zone tables are switched on a merchant change, so the zoned runs
should cost about what the UTC ones do. Synthetic orders (``generate``),
each analysis timed as the median of ``--repeat`` calls after one warm-up
call (which builds the zone tables), one thread by default.

    PYTHONPATH=src python benchmarks/zones_analyses.py --rows 2e6
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import loyaltymetrics as lm
from loyaltymetrics.synthetic import generate

ZONES = ("America/New_York", "Asia/Kolkata", "Asia/Kathmandu", "Europe/Berlin", "Australia/Lord_Howe")


def median_time(call, repeat):
    call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=float, default=2e6)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--engine", default="cython")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        made = generate(Path(tmp) / "o.arrow", Path(tmp) / "m.parquet", rows=int(args.rows), seed=1)
        merchants = pq.read_table(made.merchants_path)
        zones = [ZONES[i % len(ZONES)] for i in range(merchants.num_rows)]
        zoned = merchants.append_column("timezone", pa.array(zones, pa.string()))
        orders = str(made.orders_path)
        options = dict(engine=args.engine, threads=args.threads)
        runs = {
            "cohorts": lambda m: lm.cohorts(orders, m, by=["industry"], **options),
            "concentration": lambda m: lm.concentration(orders, m, by=["industry"], **options),
            "rfm D": lambda m: lm.rfm(orders, "D", "2023-12-31", merchants=m, **options).read_all(),
        }
        print(f"{int(args.rows):,} rows, {merchants.num_rows} merchants, engine {args.engine}, "
              f"{args.threads} thread(s); median of {args.repeat}")
        for name, run in runs.items():
            utc = median_time(lambda: run(merchants), args.repeat)
            local = median_time(lambda: run(zoned), args.repeat)
            print(f"{name:14s} UTC {utc:7.3f} s   {len(ZONES)} zones {local:7.3f} s   ({local / utc - 1:+.1%})")


if __name__ == "__main__":
    main()
