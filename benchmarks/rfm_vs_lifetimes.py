"""Rows/s and peak memory of ``lm.rfm`` and of lifetimes' ``summary_data_from_transaction_data``.

    python benchmarks/rfm_vs_lifetimes.py --rows 1e7 --freq D --timeout 600 --memory-gib 8

The data is CDNOW (shipped with lifetimes, 69,659 orders) replicated with
new customer ids until it has ``--rows`` rows, sorted, written once as an
uncompressed Arrow IPC file. Each measurement runs in its own subprocess
under the same budget — a wall-clock timeout and an address-space limit —
and reports the time of the summary alone (for lifetimes, after its
DataFrame is built; for ``rfm``, the whole output stream read from the
memory-mapped file, a second call in the process; the first call is shown
too) and the subprocess's peak RSS. ``rfm`` uses the threads the process
may use (``OMP_NUM_THREADS`` or its CPU affinity); lifetimes uses one. Where lifetimes does not
finish within the budget, the output says so. When both finish, their
outputs are compared (cents in, so they must be equal).
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from cdnow import cdnow_orders  # noqa: E402

# Run in a fresh interpreter: prints one JSON line {"seconds", "rows_out", "digest"}.
RFM_JOB = """
import hashlib, json, resource, time, numpy as np, loyaltymetrics as lm
COLUMNS = ("customer_id", "frequency", "recency", "T", "monetary_value")
def run(consume):
    t0 = time.perf_counter()
    for batch in lm.rfm({path!r}, {freq!r}, {end!r}, engine={engine!r}):
        consume(batch)
    return time.perf_counter() - t0
rows_out = []
cold = run(lambda batch: None)   # also builds period tables (and, for numba, compiles or loads the kernel)
seconds = run(lambda batch: rows_out.append(batch.num_rows))
h = hashlib.sha256()   # untimed: row-major, so the digest does not depend on how the output is batched
run(lambda batch: h.update(np.column_stack([batch.column(c).to_numpy().astype(np.float64) for c in COLUMNS]).tobytes()))
print(json.dumps({{"seconds": seconds, "cold_seconds": cold, "rows_out": sum(rows_out), "digest": h.hexdigest(),
                  "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""

LIFETIMES_JOB = """
import hashlib, time, warnings, numpy as np, pyarrow as pa
warnings.simplefilter("ignore")
from lifetimes_peer import lifetimes_summary
with pa.memory_map({path!r}) as source:
    table = pa.ipc.open_file(source).read_all()
table = table.set_column(2, "order_ts", table.column("order_ts").cast(pa.timestamp("s")))
frame = table.select(["customer_id", "order_ts", "amount"]).to_pandas()
del table
t0 = time.perf_counter()
summary = lifetimes_summary(frame, "customer_id", "order_ts", "amount", freq={freq!r}, observation_end={end!r})
seconds = time.perf_counter() - t0
h = hashlib.sha256()
h.update(np.column_stack([np.asarray(summary.index, dtype=np.float64)]
                         + [summary[c].to_numpy().astype(np.float64) for c in ("frequency", "recency", "T", "monetary_value")]
                         ).tobytes())
print(__import__("json").dumps({{"seconds": seconds, "rows_out": len(summary), "digest": h.hexdigest(), "peak_kib":
      __import__("resource").getrusage(__import__("resource").RUSAGE_SELF).ru_maxrss}}))
"""


def run_job(code, timeout, memory_bytes):
    """Run ``code`` in a subprocess under the budget; (result dict or None, why not)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    try:
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                              timeout=timeout, preexec_fn=limit, cwd=ROOT / "tests")
    except subprocess.TimeoutExpired:
        return None, f"did not finish within {timeout:g} s"
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["(no message)"]
        if "MemoryError" in done.stderr or "bad_alloc" in done.stderr or "Unable to allocate" in done.stderr:
            return None, f"ran out of memory (limit {memory_bytes / 2**30:g} GiB): {tail[0]}"
        return None, f"failed: {tail[0]}"
    return json.loads(done.stdout.strip().splitlines()[-1]), None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=float, default=1e7, help="rows of replicated CDNOW (default 1e7)")
    parser.add_argument("--freq", choices=("D", "W", "M"), default="D")
    parser.add_argument("--observation-end", default=None, help="ISO date (default: the latest order)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per measurement (default 600)")
    parser.add_argument("--memory-gib", type=float, default=8, help="address-space limit per measurement")
    parser.add_argument("--skip-lifetimes", action="store_true")
    parser.add_argument("--dir", help="where to write the data (default: a temporary directory)")
    args = parser.parse_args()

    import pyarrow as pa

    replicas = -(-int(args.rows) // len(cdnow_orders()))
    table = cdnow_orders(replicas).slice(0, int(args.rows))
    rows = len(table)
    budget = dict(timeout=args.timeout, memory_bytes=int(args.memory_gib * 2**30))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = str(Path(tmp) / "cdnow.arrow")
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=1 << 20)
        del table
        Path(path).read_bytes()   # page cache warm-up
        print(f"CDNOW x{replicas}: {rows:,} rows, {Path(path).stat().st_size / 2**20:,.0f} MiB Arrow IPC file; "
              f"freq={args.freq}, observation_end={args.observation_end or 'latest order'}; "
              f"budget {args.timeout:g} s and {args.memory_gib:g} GiB per run")
        results = {}
        jobs = [(f"lm.rfm engine={engine}", RFM_JOB, dict(engine=engine)) for engine in ("cython", "numba")]
        if not args.skip_lifetimes:
            jobs.append(("lifetimes summary_data_from_transaction_data", LIFETIMES_JOB, {}))
        for label, job, extra in jobs:
            code = job.format(path=path, freq=args.freq, end=args.observation_end, **extra)
            result, why_not = run_job(code, **budget)
            if result is None:
                print(f"{label:<46} {why_not}")
                continue
            results[label] = result
            cold = f", first call {result['cold_seconds']:.2f} s" if "cold_seconds" in result else ""
            print(f"{label:<46} {result['seconds']:8.2f} s {rows / result['seconds'] / 1e6:8.2f} M rows/s"
                  f"  peak RSS {result['peak_kib'] / 1024:,.0f} MiB  ({result['rows_out']:,} store-customers{cold})")
        digests = {r["digest"] for r in results.values()}
        if len(results) > 1:
            print("outputs equal" if len(digests) == 1 else "OUTPUTS DIFFER")


if __name__ == "__main__":
    main()
