"""Rows/s of the kernel and of compute() on a memory-mapped Arrow IPC file.

    python benchmarks/compute_rows.py --rows 10000000 --repeat 7

Prints the median and min/max over the repeats of (a) the kernel alone —
one pass of scan_orders over the memory-mapped batches — and (b) compute()
end to end (open, scan, finalize) for a few groupings. The file is read
once before timing so it is in the page cache.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from datagen import synthetic_orders, write_arrow  # noqa: E402

import loyaltymetrics as lm  # noqa: E402
from loyaltymetrics.inputs import order_batches  # noqa: E402
from loyaltymetrics.scan import scan_orders  # noqa: E402


def timed(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def report(label, rows, times):
    med = statistics.median(times)
    print(f"{label:<44} median {med * 1e3:8.1f} ms  ({min(times) * 1e3:.1f}-{max(times) * 1e3:.1f})"
          f"  {rows / med / 1e6:8.1f} M rows/s")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=float, default=1e7)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--dir", help="where to write the data (default: a temporary directory)")
    args = parser.parse_args()
    rows = int(args.rows)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = write_arrow(synthetic_orders(rows, seed=1), Path(tmp) / "orders.arrow")
        print(f"{rows:,} rows, {Path(path).stat().st_size / 2**20:,.0f} MiB Arrow IPC file, memory-mapped; "
              f"{args.repeat} runs each, one thread")
        lm.compute(path)  # page cache warm-up
        for period in ("year", "month"):
            report(f"kernel only, period={period}", rows,
                   timed(lambda: scan_orders(order_batches(path), period), args.repeat))
        for by in ([], ["merchant"], ["size"]):
            report(f"compute(by={by}, period='year')", rows,
                   timed(lambda: lm.compute(path, by=by), args.repeat))


if __name__ == "__main__":
    main()
