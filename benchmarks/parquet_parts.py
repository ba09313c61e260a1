"""Where Parquet input spends its time: decoding row groups alone vs. compute() on Parquet and on Arrow IPC.

    python benchmarks/parquet_parts.py DATA.arrow DATA.snappy.parquet [--threads 1,2] [--repeat 3]

Prints wall and CPU seconds (user + sys of this process) for: decoding every
row group of the Parquet file with pyarrow (one reader per thread,
``use_threads=False``, row groups dealt round-robin), ``compute()`` over the
Arrow IPC file (the kernel alone, page cache warm), and ``compute()`` over
the Parquet file, at each thread count. Medians of ``--repeat`` runs.
"""
import argparse
import os
import statistics
import threading
import time

import pyarrow.parquet as pq

import loyaltymetrics as lm


def timed(fn, repeat):
    walls, cpus = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), os.times()
        fn()
        c1 = os.times()
        walls.append(time.perf_counter() - t0)
        cpus.append(c1.user - c0.user + c1.system - c0.system)
    return statistics.median(walls), statistics.median(cpus)


def decode_all(path, threads, columns=None, **read_options):
    meta = pq.ParquetFile(path).metadata
    groups = list(range(meta.num_row_groups))

    def work(mine):
        reader = pq.ParquetFile(path, memory_map=False, **read_options)
        for g in mine:
            reader.read_row_group(g, columns=columns, use_threads=False)

    workers = [threading.Thread(target=work, args=(groups[i::threads],)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("arrow")
    parser.add_argument("parquet")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    lm.compute(args.parquet, by=["merchant"], period="year", threads=1)   # warm-up: imports, page cache
    for threads in map(int, args.threads.split(",")):
        for label, fn in (
            ("decode only", lambda: decode_all(args.parquet, threads)),
            ("compute arrow", lambda: lm.compute(args.arrow, by=["merchant"], period="year", threads=threads)),
            ("compute parquet", lambda: lm.compute(args.parquet, by=["merchant"], period="year", threads=threads)),
        ):
            wall, cpu = timed(fn, args.repeat)
            print(f"threads={threads} {label:<16} wall {wall:.3f} s  cpu {cpu:.3f} s", flush=True)


if __name__ == "__main__":
    main()
