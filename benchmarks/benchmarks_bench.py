"""What ``lm.benchmarks`` costs on top of the scan ``compute`` makes (finalize work only).

    PYTHONPATH=src python benchmarks/benchmarks_bench.py [ROWS] [MERCHANTS]

Generates a synthetic network (``lm.generate``) in a temporary directory,
then times, with one thread, ``compute(by=["industry", "size"])``,
``benchmarks(by=["industry", "size"])`` (every SPEC §5 metric) and the
same with ``per_merchant=True``; and the finalize step alone
(``benchmark_tables`` over one scan's partials) for the network's merchants.
"""
import sys
import tempfile
import time
from pathlib import Path

import loyaltymetrics as lm
from loyaltymetrics import benchmark_analysis as bm
from loyaltymetrics.inputs import order_batches, read_merchants
from loyaltymetrics.scan import scan_orders


def best(f, repeat=3):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t)
    return min(times), out


def main(rows=1_000_000, merchants=2_000):
    with tempfile.TemporaryDirectory() as d:
        orders = Path(d) / "orders.arrow"
        lm.generate(orders, rows=rows, merchants_count=merchants, seed=1)
        merchant_file = Path(d) / "orders_merchants.parquet"
        by = ["industry", "size"]
        t_compute, _ = best(lambda: lm.compute(orders, merchant_file, by=by, threads=1))
        t_bench, table = best(lambda: lm.benchmarks(orders, merchant_file, by=by, threads=1))
        t_per, per = best(lambda: lm.benchmarks(orders, merchant_file, by=by, threads=1, per_merchant=True))
        m = read_merchants(merchant_file)
        partials = scan_orders(order_batches(str(orders), None), "year", False, "cython", 1, 1 << 20, None,
                               m.zones(None))
        t_fin, _ = best(lambda: bm.benchmark_tables(partials, m, by, "year"))
        t_fin_per, _ = best(lambda: bm.benchmark_tables(partials, m, by, "year", per_merchant=True))
        print(f"{rows:,} rows, {merchants:,} merchants, by industry,size, year, 1 thread (best of 3):")
        print(f"  compute            {t_compute:.3f} s")
        print(f"  benchmarks         {t_bench:.3f} s  ({table.num_rows:,} rows)")
        print(f"  per_merchant       {t_per:.3f} s  ({per.num_rows:,} rows)")
        print(f"  finalize only      {t_fin:.3f} s distribution, {t_fin_per:.3f} s per merchant")


if __name__ == "__main__":
    main(*(int(float(a)) for a in sys.argv[1:3]))
