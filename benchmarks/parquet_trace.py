"""Where the threads of a Parquet compute() spend their wall time: decoding, scanning, or neither.

    python benchmarks/parquet_trace.py DATA.parquet [--threads 2] [--repeat 3]

Wraps the reader's ``inputs._read_group`` (one row group) and the driver's
``parallel._run_chunk`` with timers, runs ``compute(by=["merchant"],
period="year")`` and prints, per run: wall seconds, the seconds spent
decoding and scanning (summed over threads), and the share of
``threads x wall`` in which no thread was decoding or scanning (time lost
to waiting, Python between row groups, or a machine busy with other work).
"""
import argparse
import threading
import time

import loyaltymetrics as lm
from loyaltymetrics import inputs, parallel

events = []
lock = threading.Lock()


def traced(kind, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            with lock:
                events.append((kind, start, time.perf_counter()))
    return wrapper


def busy_seconds(intervals):
    """Length of the union of ``intervals``."""
    total, end = 0.0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("parquet")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    inputs._read_group = traced("decode", inputs._read_group)
    parallel._run_chunk = traced("scan", parallel._run_chunk)
    for _ in range(args.repeat + 1):
        events.clear()
        start = time.perf_counter()
        lm.compute(args.parquet, by=["merchant"], period="year", threads=args.threads)
        wall = time.perf_counter() - start
        decode = sum(b - a for k, a, b in events if k == "decode")
        scan = sum(b - a for k, a, b in events if k == "scan")
        # Sample the number of threads at work every 0.5 ms: idle = threads - working, clipped at 0.
        step, idle, t = 5e-4, 0.0, start
        while t < start + wall:
            working = sum(1 for _, a, b in events if a <= t < b)
            idle += max(0, args.threads - working) * step
            t += step
        print(f"wall {wall:.3f} s  decode {decode:.3f} s  scan {scan:.3f} s  "
              f"idle {idle / (args.threads * wall):.0%} of threads x wall", flush=True)


if __name__ == "__main__":
    main()
