"""``prepare`` of a typed Parquet file: this build against an older one and a plain DuckDB ``ORDER BY``.

The file is ``prepare_bench.make_parquet``'s (shuffled orders, integer merchant and customer ids, a UTC
timestamp, amounts in cents, a reward flag). Each step runs in its own process, interleaved (old, new,
new with the general path forced, DuckDB) ``--repeat`` times; the table shows the median wall and CPU
seconds (user + system, all threads; user alone in brackets) and the largest peak RSS. The outputs of every ``prepare`` run must
be byte-identical, and hold the plain sort's rows in its order (checked as ``prepare_bench`` does).

    python benchmarks/prepfast_bench.py --rows 5e6 --repeat 3 --old ../main/src [--compute]
"""
import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

STEP = r"""
import json, resource, sys, time
import pyarrow as pa
kind, source, out, threads, memory_limit = sys.argv[1:6]
started, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
if kind == "duckdb":
    import duckdb
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}; SET memory_limit = '{memory_limit}'")
    rel = con.sql(f"SELECT * FROM read_parquet('{source}') ORDER BY merchant_id, customer_id, order_ts")
    reader = rel.to_arrow_reader(1 << 20) if hasattr(rel, "to_arrow_reader") else rel.fetch_arrow_reader()
    with pa.OSFile(out, "wb") as sink, pa.ipc.new_file(sink, reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch)
elif kind == "compute":
    import loyaltymetrics as lm
    lm.compute(source, by=["merchant"], threads=int(threads))
else:
    import loyaltymetrics as lm
    from loyaltymetrics import convert
    if kind == "general":
        convert.FAST_PATH = False
    lm.prepare(source, out, amount_unit="minor", threads=int(threads), memory_limit=memory_limit)
wall = time.perf_counter() - started
end = resource.getrusage(resource.RUSAGE_SELF)
# Peak RSS from VmHWM: getrusage's ru_maxrss survives exec, so a child would report at least the peak
# of the benchmark process that forked it (which generated the data).
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"wall": wall, "cpu": end.ru_utime + end.ru_stime - cpu.ru_utime - cpu.ru_stime,
                  "user": end.ru_utime - cpu.ru_utime, "rss_mb": hwm / 1024}))
"""


def run(kind, src_path, source, out, args):
    env = dict(os.environ, PYTHONPATH=str(src_path))
    done = subprocess.run([sys.executable, "-c", STEP, kind, str(source), str(out), str(args.threads),
                           args.memory_limit], env=env, capture_output=True, text=True, check=True)
    at = done.stdout.rfind('{"wall"')  # after DuckDB's progress bar, if it drew one on stdout
    if at < 0:
        raise SystemExit(f"{kind}: no timing in its output: {done.stdout!r} {done.stderr!r}")
    return json.loads(done.stdout[at:].splitlines()[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=float, default=5e6)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-limit", default="4GB")
    parser.add_argument("--old", default=None, help="src directory of the old build (e.g. ../main/src)")
    parser.add_argument("--no-general", action="store_true", help="skip the run with the general path forced")
    parser.add_argument("--source", help="an existing Parquet file of the canonical columns instead of a generated one "
                                         "(e.g. peers.py's unsorted file, to set prepare + compute beside the peers)")
    parser.add_argument("--compute", action="store_true",
                        help="also time compute --by merchant on the new prepare's output (prepare + compute)")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from prepare_bench import make_parquet

    new_src = HERE.parent / "src"
    work = Path(tempfile.mkdtemp(prefix="prepfast-bench-"))
    try:
        if args.source:
            source = Path(args.source).resolve()
            import pyarrow.parquet as pq

            args.rows = pq.ParquetFile(source).metadata.num_rows
        else:
            source = work / "orders.parquet"
            make_parquet(source, int(args.rows))
        steps = [("new", "prepare", new_src)]
        if args.old:
            steps.insert(0, ("old", "prepare", Path(args.old).resolve()))
        if not args.no_general:
            steps.append(("new, general path forced", "general", new_src))
        steps.append(("duckdb ORDER BY -> IPC", "duckdb", new_src))
        results = {name: [] for name, _, _ in steps}
        for _ in range(args.repeat):
            for name, kind, src in steps:
                out = work / f"{kind}-{len(results[name])}-{name.split()[0].strip(',')}.arrow"
                results[name].append(run(kind, src, source, out, args))
        if args.compute:
            prepared = next(work.glob("prepare-*-new.arrow"))
            results["compute --by merchant (on new's output)"] = [run("compute", new_src, prepared, None, args)
                                                                  for _ in range(args.repeat)]
        outputs = sorted(p for p in work.glob("*.arrow") if not p.name.startswith("duckdb"))
        same = all(filecmp.cmp(outputs[0], p, shallow=False) for p in outputs[1:])
        for suffix in ("_merchant_ids.parquet", "_customer_ids.parquet"):
            maps = [p.with_name(p.stem + suffix) for p in outputs]
            same = same and all(filecmp.cmp(maps[0], p, shallow=False) for p in maps[1:])
        print(f"{int(args.rows):,} rows ({source.stat().st_size / 1e6:,.0f} MB Parquet), threads={args.threads}, "
              f"memory_limit={args.memory_limit}, median of {args.repeat}, interleaved; load average before: "
              f"{os.getloadavg()[0]:.1f}")
        print(f"every prepare output (and id mapping) byte-identical: {same}")
        base = np.median([r["cpu"] for r in results["duckdb ORDER BY -> IPC"]])
        base_wall = np.median([r["wall"] for r in results["duckdb ORDER BY -> IPC"]])
        print("\n| step | wall s | CPU s (user) | CPU vs DuckDB | wall vs DuckDB | peak RSS MB |\n"
              "|---|---:|---:|---:|---:|---:|")
        for name, rs in results.items():
            wall, cpu = np.median([r["wall"] for r in rs]), np.median([r["cpu"] for r in rs])
            user = np.median([r["user"] for r in rs])
            print(f"| {name} | {wall:.2f} | {cpu:.2f} ({user:.2f}) | {cpu / base:.2f}x | {wall / base_wall:.2f}x | "
                  f"{max(r['rss_mb'] for r in rs):,.0f} |")
        if args.compute:
            both = (np.median([r["wall"] for r in results["new"]])
                    + np.median([r["wall"] for r in results["compute --by merchant (on new's output)"]]))
            print(f"| new prepare + compute | {both:.2f} | | | {both / base_wall:.2f}x | |")
        if not same:
            raise SystemExit("MISMATCH between the prepare outputs")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
