"""Kernel speed with per-merchant time zones against the same code without (issue 13).

Times ``scan_orders`` (the kernel pass) and ``compute`` in-process on one
memory-mapped Arrow file of generated orders, median of ``--rounds`` after a
warm-up, for two merchants tables: no ``timezone`` column (every merchant
UTC) and merchants spread round-robin over 20 IANA zones. Run it once per
build and compare the lines, e.g.:

    PYTHONPATH=../old/src python benchmarks/zones_bench.py --label old  (../old: the old commit, built in place)
    PYTHONPATH=src            python benchmarks/zones_bench.py --label new

A build without zones ignores the ``timezone`` column (and ``scan_orders``
there takes no ``zones``): its two lines time the same work. Nothing here
asserts a time.
"""
import argparse
import inspect
import json
import statistics
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
from datagen import data_file_name, default_merchants, write_orders_file  # noqa: E402

ZONES = (
    "UTC", "America/New_York", "America/Los_Angeles", "America/Chicago", "America/Sao_Paulo",
    "America/Caracas", "Europe/London", "Europe/Berlin", "Europe/Moscow", "Africa/Lagos",
    "Asia/Kolkata", "Asia/Kathmandu", "Asia/Shanghai", "Asia/Tokyo", "Australia/Sydney",
    "Australia/Lord_Howe", "Pacific/Auckland", "Pacific/Apia", "Pacific/Kiritimati", "Pacific/Pago_Pago",
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=float, default=2e7)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--period", default="month")
    parser.add_argument("--data", default="/tmp/lm-zones-bench", help="folder of the data files (reused)")
    parser.add_argument("--label", default="")
    args = parser.parse_args()

    import loyaltymetrics as lm
    from loyaltymetrics.inputs import order_batches
    from loyaltymetrics.scan import scan_orders

    rows = int(args.rows)
    folder = Path(args.data)
    folder.mkdir(parents=True, exist_ok=True)
    orders = folder / data_file_name(rows)
    write_orders_file(orders, rows)
    n_merchants = default_merchants(rows)
    ids = list(range(0, n_merchants + 2))
    base = {"merchant_id": pa.array(ids, pa.int64()), "industry": pa.array(["retail"] * len(ids)),
            "country": pa.array(["US"] * len(ids)), "annual_fee": pa.array([0] * len(ids), pa.int64())}
    plain = folder / "merchants-utc.parquet"
    zoned = folder / "merchants-20-zones.parquet"
    pq.write_table(pa.table(base), plain)
    pq.write_table(pa.table({**base, "timezone": pa.array([ZONES[i % len(ZONES)] for i in ids])}), zoned)

    has_zones = "zones" in inspect.signature(scan_orders).parameters
    for name, merchants in (("utc", plain), ("20 zones", zoned)):
        zones = None
        if has_zones:
            zones = lm.inputs.read_merchants(str(merchants)).zones()

        def kernel():
            extra = {"zones": zones} if has_zones else {}
            return scan_orders(order_batches(str(orders)), args.period, threads=args.threads, **extra)

        def compute():
            return lm.compute(str(orders), str(merchants), by=["industry"], period=args.period,
                              threads=args.threads)

        for what, run in (("scan_orders", kernel), ("compute", compute)):
            run()  # warm-up: page cache, period tables
            times = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            median = statistics.median(times)
            print(json.dumps({"label": args.label, "merchants": name, "what": what, "rows": rows,
                              "threads": args.threads, "median_s": round(median, 4),
                              "rows_per_s_M": round(rows / median / 1e6, 1),
                              "min_s": round(min(times), 4)}), flush=True)


if __name__ == "__main__":
    main()
