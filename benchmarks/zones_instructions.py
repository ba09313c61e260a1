"""One kernel pass (``scan_orders``, one thread) for counting its instructions under callgrind.

Timings on a shared machine are noisy; instruction counts of the row loop are
not. Run under valgrind, collecting only inside the Cython kernel (the row
loop is inlined into the fused ``scan`` wrappers), once per build:

    PYTHONPATH=src valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.new \\
        --toggle-collect='*__pyx_fuse_*scan*' python benchmarks/zones_instructions.py --zones 20
    callgrind_annotate /tmp/cg.new | head -20      # "PROGRAM TOTALS": instructions in the kernel

``--zones 0``: a merchants table without ``timezone``; ``--zones N``: merchants
round-robin over N zones of ``zones_bench.ZONES`` (a build without zones
ignores the column).
"""
import argparse
import inspect
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
from datagen import data_file_name, default_merchants, write_orders_file  # noqa: E402
from zones_bench import ZONES  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=float, default=2e6)
    parser.add_argument("--zones", type=int, default=0)
    parser.add_argument("--period", default="month")
    parser.add_argument("--refunds", action="store_true")
    parser.add_argument("--data", default="/tmp/lm-zones-bench")
    args = parser.parse_args()

    from loyaltymetrics.inputs import order_batches, read_merchants
    from loyaltymetrics.scan import scan_orders

    rows = int(args.rows)
    folder = Path(args.data)
    folder.mkdir(parents=True, exist_ok=True)
    orders = folder / data_file_name(rows)
    write_orders_file(orders, rows)
    ids = list(range(default_merchants(rows) + 2))
    columns = {"merchant_id": pa.array(ids, pa.int64())}
    if args.zones:
        columns["timezone"] = pa.array([ZONES[i % args.zones] for i in ids])
    merchants = folder / f"merchants-{args.zones}-zones.parquet"
    pq.write_table(pa.table(columns), merchants)
    extra = {}
    if "zones" in inspect.signature(scan_orders).parameters:
        extra["zones"] = read_merchants(str(merchants)).zones()
    partials = scan_orders(order_batches(str(orders)), args.period, refunds=args.refunds, threads=1, **extra)
    print(len(partials.merchant_id), "partial rows,", len(ids), "merchants", file=sys.stderr)


if __name__ == "__main__":
    main()
