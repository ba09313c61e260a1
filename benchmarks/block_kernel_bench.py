"""The scan kernel alone (no file mapping, no threads): M rows/s of two builds side by side.

``kernel_bench.py`` times ``scan_orders`` over a memory-mapped file, whose
page faults (each pass maps its pages again) cost as much as the kernel. Here
every worker reads the file into memory once, turns it into ``OrderBatch``es,
and times only ``ComputeKernel.scan`` over them and ``finish`` (one state, one
thread): the number the block kernel's targets are about. Fresh processes per
build, interleaved; each reports the median of ``--repeat`` passes, the table
the median over ``--runs`` processes, by CPU seconds of the process (steadier
than wall time on a shared machine) unless ``--clock wall``:

    python benchmarks/block_kernel_bench.py --rows 2e7 --build old=../old/src --build new=src
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def worker(path, period, repeat, clock, refunds=False):
    import pyarrow as pa

    from loyaltymetrics.inputs import order_batches
    from loyaltymetrics.scan import ComputeKernel

    with pa.OSFile(path) as source:
        table = pa.ipc.open_file(source).read_all()
    batches = list(order_batches(table))
    rows = sum(len(b.merchant_id) for b in batches)
    timer = time.process_time if clock == "cpu" else time.perf_counter

    def once():
        kernel = ComputeKernel("cython", period, refunds=refunds)
        state = kernel.new_state()
        for b in batches:
            kernel.scan(state, b, 0, len(b.merchant_id))
        return kernel.finish(state)

    first = once()
    times = []
    for _ in range(repeat):
        start = timer()
        again = once()
        times.append(timer() - start)
    assert (again.counts == first.counts).all()
    print(json.dumps({"rows": rows, "seconds": statistics.median(times), "best": min(times),
                      "checksum": int(first.counts.sum() % (1 << 61))}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=float, default=2e7)
    parser.add_argument("--data", default="/tmp/lm-zones-bench")
    parser.add_argument("--build", action="append", default=[], metavar="NAME=SRC")
    parser.add_argument("--period", action="append", choices=("year", "quarter", "month", "all"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    parser.add_argument("--refunds", action="store_true",
                        help="the refunds mode's row loop (no block path) instead")
    parser.add_argument("--each", action="store_true",
                        help="also print each process's median and fastest pass (M rows/s), in run order")
    parser.add_argument("--worker", nargs=2, metavar=("PATH", "PERIOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker[0], args.worker[1], args.repeat, args.clock, args.refunds)

    sys.path.insert(0, str(Path(__file__).parent))
    from datagen import cached_orders_file

    path = cached_orders_file(args.data, args.rows, warm=False)
    builds = [b.split("=", 1) for b in args.build] or [["this", str(Path(__file__).parent.parent / "src")]]
    periods = args.period or ["year", "month"]
    results, checks = {}, {}
    for period in periods:
        for _ in range(args.runs):
            for name, src in builds:
                env = dict(os.environ, PYTHONPATH=str(Path(src).resolve()))
                command = [sys.executable, __file__, "--worker", path, period, "--repeat", str(args.repeat),
                           "--clock", args.clock] + ["--refunds"] * args.refunds
                out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                results.setdefault((period, name), []).append(r["rows"] / r["seconds"])
                results.setdefault((period, name, "best"), []).append(r["rows"] / r["best"])
                checks.setdefault(period, set()).add(r["checksum"])
    print(f"{int(args.rows):,} rows{', refunds mode' * args.refunds}; kernel M rows/s ({args.clock} clock), median of {args.runs} processes x "
          f"median of {args.repeat} passes; load average {os.getloadavg()[0]:.1f}")
    print("(best: the fastest pass of all processes, nearest an unloaded machine)")
    print(f"{'period':<10}" + "".join(f"{name:>12}{name + ' best':>14}" for name, _ in builds) + "   same partials")
    for period in periods:
        print(f"{period:<10}" + "".join(f"{statistics.median(results[(period, name)]) / 1e6:>12.1f}"
                                        f"{max(results[(period, name, 'best')]) / 1e6:>14.1f}"
                                        for name, _ in builds) + f"   {len(checks[period]) == 1}")
    if args.each:       # interleaved runs: old and new of one run saw about the same load
        for period in periods:
            for name, _ in builds:
                print(f"{period:<10}{name:>8} median " + " ".join(f"{v / 1e6:6.1f}" for v in results[(period, name)])
                      + "  fastest " + " ".join(f"{v / 1e6:6.1f}" for v in results[(period, name, "best")]))


if __name__ == "__main__":
    main()
