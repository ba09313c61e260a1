"""What ``lm.compute(table, by=["merchant"])`` spends outside the kernel, two builds side by side (issue 16).

Over a sorted Arrow file read into memory once (a ``pyarrow.Table``), each
worker process times, after one warm-up call of each:

``compute``    the whole ``lm.compute(table, by=["merchant"], period=..., threads=...)``;
``scan``       ``scan.scan_orders`` over the same table: the kernel, the chunk driver and the
               threads, with no combine or finalize;
``finalize``   ``finalize.finalize`` of that scan's partials (combine included);

each the median of ``--repeat`` calls, on the wall clock and the process's
CPU clock (all threads; steadier on a loaded machine). ``compute - scan`` is
what the call adds to the kernel pass. Workers of the builds run
interleaved (old, new, old, new, ...); the table shows medians over
``--runs`` processes:

    python benchmarks/compute_overhead.py --file /tmp/pq-bench/orders-50000000-seed0-int32.arrow \\
        --build old=/work/main/src --build new=src --threads 1 --threads 2
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PARTS = ("compute", "scan", "finalize")


def worker(path, threads, period, repeat):
    import pyarrow as pa

    import loyaltymetrics as lm
    from loyaltymetrics.finalize import finalize
    from loyaltymetrics.inputs import order_batches, read_merchants
    from loyaltymetrics.scan import scan_orders

    with pa.OSFile(path) as source:     # a copy in memory, not a mapping of the file
        table = pa.ipc.open_file(source).read_all()
    merchants = read_merchants(None)
    state = {}

    def scan():
        state["partials"] = scan_orders(order_batches(table, threads=threads), period, threads=threads)

    calls = {
        "compute": lambda: lm.compute(table, by=["merchant"], period=period, threads=threads),
        "scan": scan,
        "finalize": lambda: finalize(state["partials"], merchants, ("merchant",), period),
    }
    out = {"rows": table.num_rows}
    for part in PARTS:
        calls[part]()
        wall, cpu = [], []
        for _ in range(repeat):
            w, c = time.perf_counter(), time.process_time()
            calls[part]()
            cpu.append(time.process_time() - c)
            wall.append(time.perf_counter() - w)
        out[part] = {"wall": statistics.median(wall), "cpu": statistics.median(cpu)}
    print(json.dumps(out))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", required=True, help="a sorted Arrow IPC file of orders")
    parser.add_argument("--build", action="append", default=[], metavar="NAME=SRC",
                        help="a build to measure (repeatable): a src folder with the kernels built in place")
    parser.add_argument("--threads", action="append", type=int)
    parser.add_argument("--period", default="year")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    threads_list = args.threads or [1, 2]
    if args.worker:
        return worker(args.file, threads_list[0], args.period, args.repeat)

    builds = [b.split("=", 1) for b in args.build] or [["this", os.path.join(os.path.dirname(__file__), "..", "src")]]
    load = os.getloadavg()[0]
    results = {}
    for threads in threads_list:
        for _ in range(args.runs):
            for name, src in builds:
                env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
                cmd = [sys.executable, __file__, "--worker", "--file", args.file, "--threads", str(threads),
                       "--period", args.period, "--repeat", str(args.repeat)]
                line = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
                results.setdefault((threads, name), []).append(json.loads(line))
    print(f"{args.file}, period={args.period}; ms, median of {args.runs} processes x median of {args.repeat} calls; "
          f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"{'threads':>7} {'build':>8}" + "".join(f"{p + ' ' + c:>15}" for p in PARTS for c in ("wall", "cpu"))
          + f"{'extra wall':>12}{'extra cpu':>11}{'M rows/s':>10}")
    for (threads, name), runs in results.items():
        med = {(p, c): statistics.median(r[p][c] for r in runs) * 1e3 for p in PARTS for c in ("wall", "cpu")}
        rows = runs[0]["rows"]
        print(f"{threads:>7} {name:>8}" + "".join(f"{med[(p, c)]:>15.1f}" for p in PARTS for c in ("wall", "cpu"))
              + f"{med[('compute', 'wall')] - med[('scan', 'wall')]:>12.1f}"
              + f"{med[('compute', 'cpu')] - med[('scan', 'cpu')]:>11.1f}"
              + f"{rows / med[('compute', 'wall')] / 1e3:>10.1f}")


if __name__ == "__main__":
    main()
