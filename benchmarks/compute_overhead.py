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

``--timeline``: instead, the phases of ``lm.compute(path, by=["merchant"])`` over the file itself
(memory-mapped), in this process and this tree, medians over ``--repeat`` calls: the time to the
first chunk scanned (open, map, record batch metadata, planning), the scan (first chunk start to
last chunk end), how far apart the threads end, the states' ``finish``, ``combine``, ``finalize``
and what follows it (unmapping, the table handed back):

    PYTHONPATH=src python benchmarks/compute_overhead.py --timeline --file ... --threads 2 --repeat 7
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


def timeline(path, threads, period, repeat):
    import collections
    import threading

    import loyaltymetrics as lm
    from loyaltymetrics import api, parallel, scan

    events, t0 = [], [0.0]

    def stamp(name):
        events.append((time.perf_counter() - t0[0], threading.current_thread().name, name))

    def wrap(owner, attr, label):
        original = getattr(owner, attr)

        def wrapped(*args, **kwargs):
            stamp(label + ">")
            try:
                return original(*args, **kwargs)
            finally:
                stamp(label + "<")
        setattr(owner, attr, wrapped)

    for owner, attr in ((parallel, "_run_chunk"), (parallel, "_plan"), (api, "finalize"), (api, "combine"),
                        (scan.ComputeKernel, "finish")):
        wrap(owner, attr, attr.strip("_"))
    phases = collections.defaultdict(list)
    lm.compute(path, by=["merchant"], period=period, threads=threads)   # warm-up
    for _ in range(repeat):
        events.clear()
        t0[0] = time.perf_counter()
        lm.compute(path, by=["merchant"], period=period, threads=threads)
        stamp("end")
        at = {name: t for t, _, name in events}
        starts = [t for t, _, name in events if name == "run_chunk>"]
        ends = {}
        for t, thread, name in events:
            if name == "run_chunk<":
                ends[thread] = max(ends.get(thread, 0), t)
        span = lambda a, b: sum(t for t, _, n in events if n == b) - sum(t for t, _, n in events if n == a)
        phases["to first chunk"].append(min(starts))
        phases["plan"].append(span("plan>", "plan<"))
        phases["scan"].append(max(ends.values()) - min(starts))
        phases["threads end apart"].append(max(ends.values()) - min(ends.values()))
        phases["scan end to combine"].append(at["combine>"] - max(ends.values()))
        phases["finish (all states)"].append(span("finish>", "finish<"))
        phases["combine"].append(at["combine<"] - at["combine>"])
        phases["finalize"].append(at["finalize<"] - at["finalize>"])
        phases["after finalize"].append(at["end"] - at["finalize<"])
        phases["total"].append(at["end"])
    print(f"{path}, period={period}, threads={threads}; ms, median of {repeat} calls; "
          f"load average {os.getloadavg()[0]:.1f}")
    for name, values in phases.items():
        print(f"{name:>22} {statistics.median(values) * 1e3:8.2f}  (min {min(values) * 1e3:.2f})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", required=True, help="a sorted Arrow IPC file of orders")
    parser.add_argument("--build", action="append", default=[], metavar="NAME=SRC",
                        help="a build to measure (repeatable): a src folder with the kernels built in place")
    parser.add_argument("--threads", action="append", type=int)
    parser.add_argument("--period", default="year")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--timeline", action="store_true", help="phases of compute(path) in this process")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    threads_list = args.threads or [1, 2]
    if args.timeline:
        return timeline(args.file, threads_list[0], args.period, args.repeat)
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
