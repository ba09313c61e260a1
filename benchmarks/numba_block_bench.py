"""Rows per second of the Numba compute kernel (engine="numba"), builds side by side (issue 16).

The kernel alone on one thread (``scan.scan_orders(..., threads=1,
engine="numba")`` over the zero-copy batches of a sorted uncompressed Arrow
file read from the page cache), for ``period="year"`` and ``"month"``. Each
measurement is a fresh process per build, interleaved (old, new, old, new,
...); a process compiles the kernel (warm-up call, not timed: Numba's JIT and
its on-disk cache, kept per build under ``--cache``), then times
``--repeat`` calls and reports their median; the table shows the median over
``--runs`` processes and each build's partials are checked equal to the
first build's:

    python benchmarks/numba_block_bench.py --rows 2e7 --build old=../old/src --build new=src

Timings on a shared machine are noisy: compare builds measured in one run only.
"""
import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = ("year", "month")


def worker(path, period, repeat):
    from loyaltymetrics.inputs import order_batches
    from loyaltymetrics.scan import scan_orders

    def once():
        return scan_orders(order_batches(path), period, threads=1, engine="numba")

    import pyarrow as pa
    with pa.memory_map(path) as source:
        rows = pa.ipc.open_file(source).read_all().num_rows
    partials = once()                         # compiles (or loads the cached machine code)
    digest = hashlib.sha256()
    for array in (partials.merchant_id, partials.period, partials.counts):
        digest.update(array.tobytes())
    times, cpu_times = [], []
    for _ in range(repeat):
        start, cpu_start = time.perf_counter(), time.process_time()
        once()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    print(json.dumps({"rows": rows, "seconds": statistics.median(times), "cpu_seconds": statistics.median(cpu_times),
                      "digest": digest.hexdigest()}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=float, default=2e7)
    parser.add_argument("--data", default="/tmp/lm-zones-bench")
    parser.add_argument("--cache", default="/tmp/lm-numba-bench-cache",
                        help="Numba cache folders (one per build), so no build's source folder is written")
    parser.add_argument("--build", action="append", default=[], metavar="NAME=SRC",
                        help="a build to measure (repeatable); default: this checkout's src")
    parser.add_argument("--case", action="append", choices=CASES)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--worker", nargs=2, metavar=("PATH", "PERIOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker[0], args.worker[1], args.repeat)

    sys.path.insert(0, str(Path(__file__).parent))
    from datagen import cached_orders_file

    path = cached_orders_file(args.data, args.rows)
    builds = [b.split("=", 1) for b in args.build] or [["this", str(Path(__file__).parent.parent / "src")]]
    cases = args.case or list(CASES)
    results, digests = {}, {}
    load = os.getloadavg()[0]
    for case in cases:
        for _ in range(args.runs):
            for name, src in builds:
                env = dict(os.environ, PYTHONPATH=str(Path(src).resolve()),
                           NUMBA_CACHE_DIR=str(Path(args.cache) / name))
                out = subprocess.run([sys.executable, __file__, "--worker", path, case, "--repeat", str(args.repeat)],
                                     env=env, capture_output=True, text=True, check=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                results.setdefault((case, name, "wall"), []).append(r["rows"] / r["seconds"])
                results.setdefault((case, name, "cpu"), []).append(r["rows"] / r["cpu_seconds"])
                digests.setdefault(case, set()).add(r["digest"])
    print(f"{int(args.rows):,} rows, {path}; Numba kernel, one thread; M rows per second (wall) and per "
          f"CPU second, median of {args.runs} processes x median of {args.repeat} calls; "
          f"load {load:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(f"{'period':<10}" + "".join(f"{name + ' ' + clock:>14}" for clock in ("wall", "cpu") for name, _ in builds)
          + "   partials")
    for case in cases:
        same = "identical" if len(digests[case]) == 1 else "DIFFER"
        print(f"{case:<10}" + "".join(f"{statistics.median(results[(case, name, clock)]) / 1e6:>14.1f}"
                                      for clock in ("wall", "cpu") for name, _ in builds) + f"   {same}")
    if any(len(d) != 1 for d in digests.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
