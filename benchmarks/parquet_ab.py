"""Side-by-side wall and CPU seconds of compute() on a Parquet file: two source trees, interleaved fresh processes.

    python benchmarks/parquet_ab.py DATA.parquet OLD_SRC NEW_SRC [--threads 1,2] [--rounds 5]

Each run is a fresh process (``PYTHONPATH`` = the tree's ``src``), warmed up
on a tiny Parquet file written beside ``DATA``, then timed on
``compute(DATA, by=["merchant"], period="year", threads=T)``. Runs alternate
between the trees, so a machine busy with other work slows both alike;
medians and minimums are printed per tree and thread count.
"""
import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, os, sys, time
import pyarrow as pa, pyarrow.parquet as pq
import loyaltymetrics as lm
path, threads = sys.argv[1], int(sys.argv[2])
warm = path + ".warmup.parquet"
if not os.path.exists(warm):
    pq.write_table(pq.ParquetFile(path).read_row_group(0).slice(0, 20000), warm + ".tmp")
    os.replace(warm + ".tmp", warm)
lm.compute(warm, by=["merchant"], period="year", threads=threads)
c0, t0 = os.times(), time.perf_counter()
lm.compute(path, by=["merchant"], period="year", threads=threads)
wall, c1 = time.perf_counter() - t0, os.times()
print(json.dumps({"wall": wall, "cpu": c1.user - c0.user + c1.system - c0.system}))
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("parquet")
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results = {}
    for _ in range(args.rounds):
        for threads in map(int, args.threads.split(",")):
            for label, src in (("old", args.old), ("new", args.new)):
                out = subprocess.run([sys.executable, "-c", CHILD, args.parquet, str(threads)], check=True,
                                     capture_output=True, text=True, env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"})
                results.setdefault((label, threads), []).append(json.loads(out.stdout))
    for (label, threads), runs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        walls, cpus = [r["wall"] for r in runs], [r["cpu"] for r in runs]
        print(f"{label} threads={threads}: wall median {statistics.median(walls):.3f} s (min {min(walls):.3f}), "
              f"cpu median {statistics.median(cpus):.3f} s")


if __name__ == "__main__":
    main()
