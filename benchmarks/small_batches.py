"""Many tiny record batches against one batch of the same rows (issue 12).

    python benchmarks/small_batches.py --batches 200000 --data-dir /tmp/bench

Writes ``--batches`` rows of a generated network to an Arrow IPC file as
one-row record batches, and the same rows as one batch, then times
``lm.compute`` on each (median of ``--runs``, after one warm-up; wall and
CPU time) and checks that both give the same table. Runs of small batches
are merged before the kernel (``inputs.COALESCE_ROWS``); before that, each
batch cost about 65 microseconds. Timings are printed, never asserted.
"""
import argparse
import statistics
import time
from pathlib import Path

import pyarrow as pa

import loyaltymetrics as lm


def timed(path, runs):
    table = lm.compute(path, threads=2)
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        assert lm.compute(path, threads=2).equals(table)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return table, statistics.median(wall), statistics.median(cpu)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=Path("."))
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    generated = lm.generate(args.data_dir / "small_batches_source.arrow", rows=args.batches, seed=1)
    rows = pa.ipc.open_file(generated.orders_path).read_all().combine_chunks()
    tiny, one = args.data_dir / "tiny_batches.arrow", args.data_dir / "one_batch.arrow"
    for path, chunk in ((tiny, 1), (one, None)):
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, rows.schema) as writer:
            for batch in rows.to_batches(max_chunksize=chunk):
                writer.write_batch(batch)
    results = {}
    for name, path in (("one-row batches", tiny), ("one batch", one)):
        table, wall, cpu = timed(path, args.runs)
        results[name] = table
        print(f"{name:16s} {args.batches:,} rows  wall {wall:.3f} s  cpu {cpu:.3f} s  (median of {args.runs})")
    assert results["one-row batches"].equals(results["one batch"])


if __name__ == "__main__":
    main()
