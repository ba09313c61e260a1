"""Rows per second of the compute kernel, two builds side by side (issue 16, the block kernel).

Cases, over a sorted uncompressed Arrow file read from the page cache:
``kernel-year`` / ``kernel-month``: ``scan.scan_orders`` on one thread (the
kernel alone, plus the zero-copy batch reads); ``compute-2t``:
``lm.compute(by=["merchant"], threads=2)`` in-process over the file (which
maps its pages again each call); ``table-1t`` / ``table-2t``: the same
``compute`` over the file's rows read into memory once, as a pyarrow Table.

Each measurement is a fresh process per build, interleaved (old, new, old,
new, ...), each timing ``--repeat`` calls after one warm-up and reporting
their median; the table shows the median over ``--runs`` processes. A build
is a ``src`` folder with the compiled kernels in place:

    python benchmarks/kernel_bench.py --rows 2e7 --build old=../old/src --build new=src

Timings on a shared machine are noisy: compare builds measured in one run
only, and count instructions with ``zones_instructions.py`` under callgrind.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = ("kernel-year", "kernel-month", "compute-2t", "table-1t", "table-2t")


def worker(path, case, repeat, clock="wall"):
    import loyaltymetrics as lm
    from loyaltymetrics.inputs import order_batches
    from loyaltymetrics.scan import scan_orders

    import pyarrow as pa
    with pa.OSFile(path) as source:     # a copy in memory, not a mapping of the file
        table = pa.ipc.open_file(source).read_all()
    rows = table.num_rows

    def once():
        if case == "compute-2t":
            return lm.compute(path, by=["merchant"], threads=2).num_rows
        if case.startswith("table-"):
            return lm.compute(table, by=["merchant"], threads=int(case[-2])).num_rows
        return len(scan_orders(order_batches(path), case.split("-")[1], threads=1).merchant_id)

    once()
    timer = time.process_time if clock == "cpu" else time.perf_counter
    times = []
    for _ in range(repeat):
        start = timer()
        once()
        times.append(timer() - start)
    print(json.dumps({"rows": rows, "seconds": statistics.median(times)}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=float, default=2e7)
    parser.add_argument("--data", default="/tmp/lm-zones-bench")
    parser.add_argument("--build", action="append", default=[], metavar="NAME=SRC",
                        help="a build to measure (repeatable); default: this checkout's src")
    parser.add_argument("--case", action="append", choices=CASES)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: the process's CPU seconds (steadier on a loaded machine; for one thread)")
    parser.add_argument("--worker", nargs=2, metavar=("PATH", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker[0], args.worker[1], args.repeat, args.clock)

    sys.path.insert(0, str(Path(__file__).parent))
    from datagen import cached_orders_file

    path = cached_orders_file(args.data, args.rows)
    builds = [b.split("=", 1) for b in args.build] or [["this", str(Path(__file__).parent.parent / "src")]]
    cases = args.case or list(CASES)
    results = {}
    for case in cases:
        for _ in range(args.runs):
            for name, src in builds:
                env = dict(os.environ, PYTHONPATH=str(Path(src).resolve()))
                out = subprocess.run([sys.executable, __file__, "--worker", path, case, "--repeat", str(args.repeat),
                                      "--clock", args.clock],
                                     env=env, capture_output=True, text=True, check=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                results.setdefault((case, name), []).append(r["rows"] / r["seconds"])
    print(f"{int(args.rows):,} rows, {path}; M rows/s ({args.clock} clock), median of {args.runs} processes "
          f"x median of {args.repeat} calls; load average {os.getloadavg()[0]:.1f}")
    print(f"{'case':<14}" + "".join(f"{name:>12}" for name, _ in builds))
    for case in cases:
        print(f"{case:<14}" + "".join(f"{statistics.median(results[(case, name)]) / 1e6:>12.1f}"
                                      for name, _ in builds))


if __name__ == "__main__":
    main()
