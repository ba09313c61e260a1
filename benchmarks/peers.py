"""loyaltymetrics against DuckDB and Polars on the same SPEC §4 base counts.

    python benchmarks/peers.py --rows 50000000 --data-dir /data/bench
    python benchmarks/peers.py --rows 5e6 --repeat 3 --markdown

Generates one data set (or reuses the file from an earlier run with the same
parameters): ``--rows`` orders sorted by (merchant_id, customer_id, order_ts),
int32 keys, timestamp[us, UTC], int64 amount, bool reward, streamed to an
uncompressed Arrow IPC file in ``--data-dir``. Then every engine computes the
SPEC §4 base counts per (merchant_id, year):

- loyaltymetrics ``compute(path, by=["merchant"], period="year")``, with the
  Cython engine on 1 and 2 threads and the Numba engine on 2 threads (rows
  whose ``engine=`` / ``threads=`` keywords this version of ``compute`` lacks
  are shown as n/a);
- DuckDB over the memory-mapped file (pyarrow ``memory_map`` + Arrow scan);
- Polars lazy over ``pl.scan_ipc``.

The formulations are in ``duckdb_base_counts`` and ``polars_base_counts``
below; their docstrings say why they are written that way.

Every run is a fresh child process (so its peak RSS is its own), warmed up on
a tiny file first (imports, JIT compilation, thread pools), then timed from
opening the file to holding the result as an Arrow table. Runs are
interleaved across engines (repeat r of every engine before repeat r + 1), so
a noisy neighbour slows every engine alike. Every run's full per-(merchant,
year) table is compared, cell for cell, with loyaltymetrics' first result,
and before timing each engine is checked against the tests' independent SQL
peer (tests/sql_peer.py) on small hostile inputs the benchmark data lacks: a
benchmark of different answers is worthless, so any difference is printed
and makes the command exit with status 1.

The same command also measures the machine's memory-read bandwidth (NumPy
sum over an int64 array already in memory, on 1 and 2 threads) and prints
loyaltymetrics' throughput as a share of it: the columns it reads take
24.125 bytes a row, so bandwidth / 24.125 rows/s is the ceiling of any
single pass over them.
"""
import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from datagen import data_file_name, estimated_file_bytes, write_orders_file  # noqa: E402

# SPEC §4 base counts the kernel emits; the rest (merchants, returning
# customers, repeat orders) are differences of these.
BASE_COUNTS = (
    "orders", "revenue", "customers", "new_customers", "repeat_customers",
    "orders_from_repeat_customers", "retained_customers", "reward_orders",
    "reward_revenue", "reward_customers", "member_orders", "member_revenue",
    "member_repeat_customers",
)
KEYS = ("merchant_id", "year")
WARMUP_ROWS = 20_000


@dataclass(frozen=True)
class Engine:
    name: str            # what the table shows
    kind: str            # "loyaltymetrics", "duckdb", "polars"
    threads: int
    lm_engine: str | None = None  # loyaltymetrics' engine= keyword


ENGINES = (
    Engine("loyaltymetrics cython", "loyaltymetrics", 1, "cython"),
    Engine("loyaltymetrics cython", "loyaltymetrics", 2, "cython"),
    Engine("loyaltymetrics numba", "loyaltymetrics", 2, "numba"),
    Engine("DuckDB", "duckdb", 2),
    Engine("Polars", "polars", 2),
)
BASELINE = ENGINES[1]  # ratios are against loyaltymetrics cython, 2 threads


# --- the formulations ---------------------------------------------------------

def loyaltymetrics_base_counts(path, engine, threads, keywords):
    """compute(by=["merchant"], period="year"); engine= / threads= only where compute() takes them."""
    import loyaltymetrics as lm

    extra = {}
    if "engine" in keywords:
        extra["engine"] = engine
    if "threads" in keywords:
        extra["threads"] = threads
    return lm.compute(path, by=["merchant"], period="year", **extra)


DUCKDB_SQL = """
WITH store_customer_years AS (
    -- one row per store-customer and year with an order
    SELECT merchant_id, customer_id, year(order_ts) AS year,
           count(*) AS n, sum(amount) AS rev,
           count(*) FILTER (WHERE reward) AS rn,
           coalesce(sum(amount) FILTER (WHERE reward), 0) AS rr
    FROM orders
    GROUP BY ALL
),
flagged AS (
    -- the store-customer's previous active year: none = its rank-1 order is
    -- in this year (new); the year just before = retained
    SELECT *, lag(year, 1, -1) OVER (PARTITION BY merchant_id, customer_id ORDER BY year) AS prev_year
    FROM store_customer_years
)
SELECT merchant_id, year,
       sum(n) AS orders,
       sum(rev) AS revenue,
       count(*) AS customers,
       count(*) FILTER (WHERE prev_year = -1) AS new_customers,
       count(*) FILTER (WHERE n >= 2) AS repeat_customers,
       coalesce(sum(n) FILTER (WHERE n >= 2), 0) AS orders_from_repeat_customers,
       count(*) FILTER (WHERE prev_year = year - 1) AS retained_customers,
       sum(rn) AS reward_orders,
       sum(rr) AS reward_revenue,
       count(*) FILTER (WHERE rn > 0) AS reward_customers,
       coalesce(sum(n) FILTER (WHERE rn > 0), 0) AS member_orders,
       coalesce(sum(rev) FILTER (WHERE rn > 0), 0) AS member_revenue,
       count(*) FILTER (WHERE rn > 0 AND n >= 2) AS member_repeat_customers
FROM flagged
GROUP BY ALL
"""


def duckdb_base_counts(path, threads):
    """SPEC §4 base counts per (merchant_id, year) in DuckDB SQL (``DUCKDB_SQL``).

    Reading: pyarrow memory-maps the IPC file (zero-copy) and DuckDB scans
    the Arrow table in parallel. ``order_ts`` is handed over as a naive
    timestamp view of the same buffer: Arrow stores UTC instants, so the
    naive value is the UTC wall time SPEC §3 periods use, and DuckDB's
    ``year()`` on a plain TIMESTAMP skips the time-zone conversion that on
    a TIMESTAMPTZ (even with TimeZone=UTC) made the whole query about 1.5x
    slower.

    Query: aggregate to one row per (store-customer, year), find each such
    row's previous active year with ``lag`` over the store-customer's years,
    then aggregate per (merchant, year). The window sees one row per
    store-customer-year rather than per order. Tried and slower on this
    machine: a self-join on year - 1 plus min(year) per store-customer (the
    peer the tests use), ``min(year) OVER (PARTITION BY store-customer)``
    over the orders, a union with shifted "shadow" years, and a streaming
    ``lag() OVER ()`` over the rows in file order with run ids by running
    sum (DuckDB cannot be told the input is sorted, and its streaming
    window runs on one thread). A window ordered by the pre-sorted output
    of an ORDER BY was about as fast, but leans on DuckDB keeping the order
    of a subquery, which SQL does not promise.
    """
    import duckdb
    import pyarrow as pa

    # Output order does not matter (results are sorted before comparing); DuckDB's
    # documentation recommends dropping it for large aggregations, to save memory.
    con = duckdb.connect(config={"threads": threads, "preserve_insertion_order": False})
    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    ts = table.schema.get_field_index("order_ts")
    naive = pa.timestamp(table.schema.field(ts).type.unit)
    table = table.set_column(ts, "order_ts", pa.chunked_array(
        [chunk.view(naive) for chunk in table.column(ts).chunks], naive))
    con.register("orders", table)
    result = con.sql(DUCKDB_SQL)
    # DuckDB >= 1.4 names it to_arrow_table; older releases arrow().
    return (getattr(result, "to_arrow_table", None) or result.arrow)()


def polars_base_counts(path, engine="streaming"):
    """SPEC §4 base counts per (merchant_id, year) with Polars, lazily over ``pl.scan_ipc``.

    Exploits the sort instead of hashing three keys: rows of one
    store-customer and year are consecutive in the file, so
    ``rle_id()`` over (merchant_id, customer_id, year) numbers these runs
    in one linear pass and the run id is sorted (flagged with
    ``set_sorted``), which lets ``group_by`` take its sorted path
    (contiguous slices, no hash table). The aggregated runs come out in
    file order, so a store-customer's previous active year is simply the
    previous run's year when the previous run has the same store-customer:
    no window, no join. A hash ``group_by`` over the three keys followed by
    a sort was about 3x slower and took 2.5x the memory on 5e6 rows.
    """
    import polars as pl

    orders = pl.scan_ipc(path).with_columns(
        # Arrow stores UTC: dropping the zone keeps the UTC wall time (SPEC §3).
        year=pl.col("order_ts").dt.replace_time_zone(None).dt.year(),
        reward=pl.col("reward").fill_null(False),
    )
    runs = (
        orders.with_columns(run=pl.struct("merchant_id", "customer_id", "year").rle_id().set_sorted())
        .group_by("run", maintain_order=True)
        .agg(
            pl.col("merchant_id").first(), pl.col("customer_id").first(), pl.col("year").first(),
            n=pl.len(),
            rev=pl.col("amount").sum(),
            rn=pl.col("reward").sum(),
            rr=pl.col("amount").filter(pl.col("reward")).sum(),
        )
    )
    same_store_customer = (
        (pl.col("merchant_id") == pl.col("merchant_id").shift())
        & (pl.col("customer_id") == pl.col("customer_id").shift())
    ).fill_null(False)
    runs = runs.with_columns(
        new=~same_store_customer,
        retained=same_store_customer & (pl.col("year").shift() == pl.col("year") - 1),
    )
    n, rn, rev = pl.col("n"), pl.col("rn"), pl.col("rev")
    member = rn > 0
    counts = runs.group_by("merchant_id", "year").agg(
        orders=n.sum(),
        revenue=rev.sum(),
        customers=pl.len(),
        new_customers=pl.col("new").sum(),
        repeat_customers=(n >= 2).sum(),
        orders_from_repeat_customers=n.filter(n >= 2).sum(),
        retained_customers=pl.col("retained").sum(),
        reward_orders=rn.sum(),
        reward_revenue=pl.col("rr").sum(),
        reward_customers=member.sum(),
        member_orders=n.filter(member).sum(),
        member_revenue=rev.filter(member).sum(),
        member_repeat_customers=(member & (n >= 2)).sum(),
    )
    return counts.collect(engine=engine).to_arrow()


def normalized(table):
    """merchant_id int64, year int32, the base counts as int64, sorted: the shape every engine is compared in."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if "period_start" in table.column_names:  # loyaltymetrics
        table = table.append_column("year", pc.year(table.column("period_start")))
    schema = pa.schema([("merchant_id", pa.int64()), ("year", pa.int32())] + [(c, pa.int64()) for c in BASE_COUNTS])
    table = table.select(schema.names)
    for i, f in enumerate(schema):
        # SUM in DuckDB is HUGEINT (arrives as decimal128(38, 0)): cast back, checked, to int64.
        table = table.set_column(i, f.name, pc.cast(table.column(i), f.type, safe=True))
    return table.sort_by([(k, "ascending") for k in KEYS]).combine_chunks()


def first_difference(expected, actual):
    """A readable description of where two normalized tables differ, or None if they are equal."""
    if expected.equals(actual):
        return None
    if expected.num_rows != actual.num_rows:
        return f"{actual.num_rows} (merchant, year) rows instead of {expected.num_rows}"
    for name in expected.column_names:
        a, b = expected.column(name).to_pylist(), actual.column(name).to_pylist()
        bad = [i for i in range(len(a)) if a[i] != b[i]]
        if bad:
            i = bad[0]
            key = ", ".join(f"{k}={expected.column(k)[i].as_py()}" for k in KEYS)
            return (f"{name} differs in {len(bad)} of {len(a)} rows; first at ({key}): "
                    f"expected {a[i]}, got {b[i]}")
    return "tables differ in type or layout"


# --- child process: one engine, one timed run -----------------------------------

def memory_status():
    """(VmRSS, VmHWM) in bytes from /proc/self/status; HWM falls back to ru_maxrss elsewhere."""
    values = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    if "VmHWM" not in values:
        import resource

        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        values["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return values.get("VmRSS"), values["VmHWM"]


def reset_peak_rss():
    """Start VmHWM afresh from the current RSS (Linux >= 4.0), so the peak is the timed run's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # elsewhere the peak also covers the imports and the warm-up on a tiny file


def run_child(args):
    kind, threads = args.child, args.threads
    if kind == "polars":
        os.environ["POLARS_MAX_THREADS"] = str(threads)  # read once, at import
    if kind == "loyaltymetrics":
        import inspect

        import loyaltymetrics as lm

        keywords = set(inspect.signature(lm.compute).parameters)

        def base_counts(path):
            return loyaltymetrics_base_counts(path, args.lm_engine, threads, keywords)
    elif kind == "duckdb":
        def base_counts(path):
            return duckdb_base_counts(path, threads)
    elif kind == "polars":
        def base_counts(path):
            return polars_base_counts(path)
    else:
        raise SystemExit(f"unknown engine {kind!r}")
    if args.check:
        # The edge cases the benchmark data lacks; a process of its own, so no run's RSS includes it.
        check_small_inputs(base_counts, Path(args.out).parent)
        print(json.dumps({"checked": True}))
        return
    base_counts(args.warmup)  # imports, JIT compilation, thread pools
    reset_peak_rss()
    rss_before, _ = memory_status()
    start = time.perf_counter()
    result = base_counts(args.file)
    seconds = time.perf_counter() - start
    _, peak = memory_status()
    import pyarrow as pa

    table = normalized(result)
    with pa.OSFile(args.out, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    print(json.dumps({"seconds": seconds, "peak_rss": peak, "rss_before": rss_before}))


def check_small_inputs(base_counts, folder):
    """Compare this engine with the tests' independent SQL peer on small hostile inputs: year-edge
    instants, equal timestamps, null rewards, int64 keys, customer ids shared by several merchants,
    record batches of 97 rows.

    The benchmark data has none of these, so a formulation could agree on it and still be wrong.
    """
    import pyarrow as pa

    sys.path.insert(0, str(HERE.parent / "tests"))
    from sql_peer import duckdb_base_counts as sql_peer_base_counts, make_orders

    for seed in range(3):
        orders = make_orders(seed, n_customers=400, n_merchants=7)
        path = Path(folder) / f"check-{os.getpid()}-{seed}.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, orders.schema) as writer:
            writer.write_table(orders, max_chunksize=97)
        try:
            expected = normalized(sql_peer_base_counts(None, orders, None, "year"))
            problem = first_difference(expected, normalized(base_counts(str(path))))
        finally:
            path.unlink()
        if problem:
            raise SystemExit(f"check on small hostile input (seed {seed}) failed: {problem}")


# --- memory bandwidth ---------------------------------------------------------------

def bandwidth_child(args):
    """Read bandwidth in bytes/s: median NumPy sum over an int64 array in memory, 1 and 2 threads."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    values = np.ones(args.bandwidth_mib * 2**20 // 8, dtype=np.int64)  # written, so every page is resident
    halves = np.array_split(values, 2)
    result = {}
    with ThreadPoolExecutor(2) as pool:
        for threads in (1, 2):
            times = []
            for _ in range(args.bandwidth_repeat):
                start = time.perf_counter()
                if threads == 1:
                    total = values.sum()
                else:  # NumPy releases the GIL inside sum: the two halves run at once
                    total = sum(pool.map(np.sum, halves))
                times.append(time.perf_counter() - start)
                assert total == len(values)
            result[threads] = values.nbytes / statistics.median(times)
    print(json.dumps(result))


# --- parent: data, runs, table --------------------------------------------------------

@dataclass
class Outcome:
    engine: Engine
    seconds: list = field(default_factory=list)
    peak_rss: list = field(default_factory=list)
    note: str | None = None       # "n/a ...", "did not finish ...", "failed ..."
    difference: str | None = None

    @property
    def ran(self):
        return bool(self.seconds) and self.note is None


def lm_keywords():
    import inspect

    import loyaltymetrics as lm

    return set(inspect.signature(lm.compute).parameters)


def unavailable(engine, keywords):
    """Why this engine cannot run here, or None."""
    if engine.kind != "loyaltymetrics":
        return None
    if engine.threads != 1 and "threads" not in keywords:
        return "n/a: compute() has no threads= here"
    if engine.lm_engine != "cython" and "engine" not in keywords:
        return "n/a: compute() has no engine= here"
    if engine.lm_engine == "numba":
        import importlib.util

        if importlib.util.find_spec("numba") is None:
            return "n/a: numba is not installed"
    return None


def warm_page_cache(path):
    """Read the file once so every engine starts from the page cache, if it fits in memory."""
    size = Path(path).stat().st_size
    available = meminfo().get("MemAvailable")
    if available is not None and size > 0.8 * available:
        return False
    with open(path, "rb", buffering=0) as f:
        while f.read(16 << 20):
            pass
    return True


def meminfo():
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def child_command(engine, args, path, warmup, out, check):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", engine.kind, "--threads", str(engine.threads),
           "--file", path, "--warmup", warmup, "--out", out]
    if engine.lm_engine:
        cmd += ["--lm-engine", engine.lm_engine]
    if check:
        cmd.append("--check")
    return cmd


def check_engine(engine, outcome, args, tmp):
    """Check the engine against the tests' SQL peer on small hostile inputs, in a child of its own (untimed)."""
    proc = subprocess.run(child_command(engine, args, "", "", os.path.join(tmp, "check"), check=True),
                          capture_output=True, text=True, timeout=max(args.time_limit, 600))
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        outcome.difference = f"on small hostile inputs: {last}"
        outcome.note = "failed the small-input check"
    print(f"  check {engine.name} threads={engine.threads}: "
          + ("equal on small hostile inputs" if proc.returncode == 0 else f"FAILED: {outcome.difference}"), flush=True)


def run_once(engine, outcome, args, path, warmup, out):
    limit = None if engine.kind == "loyaltymetrics" else args.time_limit
    try:
        proc = subprocess.run(child_command(engine, args, path, warmup, out, check=False),
                              capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:  # subprocess.run has killed the child
        outcome.note = f"did not finish in {args.time_limit:g} s"
        return None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        outcome.note = f"failed: {last}"
        return None
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    outcome.seconds.append(report["seconds"])
    outcome.peak_rss.append(report["peak_rss"])
    import pyarrow as pa

    with pa.memory_map(out) as source:
        return pa.ipc.open_file(source).read_all()


def machine_info():
    import numpy
    import pyarrow

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or cpu
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = {"python": platform.python_version(), "numpy": numpy.__version__, "pyarrow": pyarrow.__version__}
    for name in ("loyaltymetrics", "duckdb", "polars", "numba"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = "not installed"
    total = meminfo().get("MemTotal")
    return {
        "cpu": cpu,
        "cores": f"{os.cpu_count()} logical, {usable} usable by this process",
        "memory": f"{total / 2**30:.1f} GiB" if total else "unknown",
        "os": platform.platform(),
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "commit": git_commit(),
    }


def git_commit():
    try:
        out = subprocess.run(["git", "-C", str(HERE), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def mib(n):
    return f"{n / 2**20:,.0f} MiB"


def rate(rows_per_s):
    return f"{rows_per_s / 1e6:,.1f} M"


def table_rows(outcomes, rows, baseline):
    header = ["engine", "threads", "wall (median)", "min – max", "rows/s", "peak RSS", "vs baseline", "result"]
    lines = []
    base_rate = rows / statistics.median(baseline.seconds) if baseline and baseline.ran else None
    for o in outcomes:
        cells = [o.engine.name, str(o.engine.threads)]
        if o.ran:
            med = statistics.median(o.seconds)
            cells += [f"{med:,.3f} s", f"{min(o.seconds):,.3f} – {max(o.seconds):,.3f} s", rate(rows / med),
                      mib(statistics.median(o.peak_rss)),
                      f"{rows / med / base_rate:.2f}x" if base_rate else "n/a",
                      "DIFFERENT" if o.difference else "equal"]
        else:
            cells += ["-"] * 5 + [o.note or "not run"]
        lines.append(cells)
    return header, lines


def render_text(header, lines):
    widths = [max(len(header[i]), *(len(l[i]) for l in lines)) for i in range(len(header))]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(l) for l in lines])


def render_markdown(header, lines):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "--:"] + ["--:"] * (len(header) - 2)) + "|"]
    for l in lines:
        out.append("| " + " | ".join(l) + " |")
    return "\n".join(out)


def bytes_per_row(path):
    """Bytes a row of the columns loyaltymetrics reads (booleans are bits)."""
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        schema = pa.ipc.open_file(source).schema
    return sum(f.type.bit_width for f in schema if f.name in (
        "merchant_id", "customer_id", "order_ts", "amount", "reward")) / 8


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=float, default=5e7, help="orders in the data set (default: 5e7)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--merchants", type=int,
                        help="merchants in the data set (default: about 2,000 store-customers a merchant, "
                             "so 15,000 for 5e7 rows)")
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "loyaltymetrics-bench"),
                        help="where the data file is written and reused (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per engine; medians are reported (default: 5)")
    parser.add_argument("--engines", default="all",
                        help="comma-separated subset of: lm-cython-1, lm-cython-2, lm-numba-2, duckdb, polars")
    parser.add_argument("--time-limit", type=float, default=1800,
                        help="seconds a DuckDB or Polars run may take before it is stopped and reported as "
                             "not finished (default: %(default)s)")
    parser.add_argument("--bandwidth-mib", type=int, default=1024,
                        help="size of the in-memory array the bandwidth is measured on (default: %(default)s)")
    parser.add_argument("--bandwidth-repeat", type=int, default=7)
    parser.add_argument("--no-check", action="store_true",
                        help="skip checking each engine against the tests' SQL peer on small hostile inputs first")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (for the README)")
    # Internal: one timed run of one engine in a child process.
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--lm-engine", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "bandwidth":
        return bandwidth_child(args)
    if args.child:
        return run_child(args)

    rows = int(args.rows)
    engine_ids = {"lm-cython-1": ENGINES[0], "lm-cython-2": ENGINES[1], "lm-numba-2": ENGINES[2],
                  "duckdb": ENGINES[3], "polars": ENGINES[4]}
    if args.engines == "all":
        engines = list(ENGINES)
    else:
        unknown = [e for e in args.engines.split(",") if e not in engine_ids]
        if unknown:
            parser.error(f"unknown engines {unknown}; choose from {', '.join(engine_ids)}")
        engines = [engine_ids[e] for e in args.engines.split(",")]

    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    free = os.statvfs(data_dir)
    path = data_dir / data_file_name(rows, args.seed, args.merchants)
    if not path.exists() and estimated_file_bytes(rows) > free.f_bavail * free.f_frsize:
        raise SystemExit(f"{data_dir} has {mib(free.f_bavail * free.f_frsize)} free; "
                         f"{rows:,} rows need about {mib(estimated_file_bytes(rows))}")

    print("$ " + shlex.join([sys.executable] + sys.argv))
    info = machine_info()
    for key, value in info.items():
        print(f"{key + ':':<10}{value}")
    start = time.perf_counter()
    path, reused = write_orders_file(path, rows, args.seed, n_merchants=args.merchants)
    warmup, _ = write_orders_file(data_dir / data_file_name(WARMUP_ROWS, args.seed), WARMUP_ROWS, args.seed)
    print(f"data:     {path} ({mib(Path(path).stat().st_size)}, {rows:,} rows, "
          + ("reused" if reused else f"written in {time.perf_counter() - start:,.1f} s") + ")")
    warm = warm_page_cache(path)
    print("cache:    " + ("file read once before timing (page cache warm)" if warm
                          else "file larger than available memory: engines read it from disk"))

    keywords = lm_keywords()
    outcomes = [Outcome(e, note=unavailable(e, keywords)) for e in engines]
    if "engine" not in keywords and "threads" not in keywords:
        for o in outcomes:
            if o.engine == ENGINES[0] and o.note is None:
                o.engine = Engine("loyaltymetrics (default)", "loyaltymetrics", 1, "cython")
    reference = None
    with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
        if not args.no_check:
            for o in outcomes:
                if o.note is None:
                    check_engine(o.engine, o, args, tmp)
        for r in range(args.repeat):
            for i, o in enumerate(outcomes):
                if o.note is not None:
                    continue
                out = os.path.join(tmp, f"result-{i}-{r}.arrow")
                result = run_once(o.engine, o, args, path, warmup, out)
                if result is None:
                    continue
                if reference is None:
                    if o.engine.kind != "loyaltymetrics":
                        raise SystemExit("the first engine run must be a loyaltymetrics one: it is the reference")
                    reference = result
                problem = first_difference(reference, result)
                if problem and not o.difference:
                    o.difference = problem
                print(f"  run {r + 1}/{args.repeat} {o.engine.name} threads={o.engine.threads}: "
                      f"{o.seconds[-1]:,.3f} s, peak RSS {mib(o.peak_rss[-1])}"
                      + (f"  RESULT DIFFERS: {problem}" if problem else ""), flush=True)

        bw = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "bandwidth",
                             "--bandwidth-mib", str(args.bandwidth_mib),
                             "--bandwidth-repeat", str(args.bandwidth_repeat)],
                            capture_output=True, text=True, check=True)
        bandwidth = {int(k): v for k, v in json.loads(bw.stdout).items()}

    baseline = next((o for o in outcomes if o.engine == BASELINE and o.ran), None)
    if baseline is None:
        baseline = next((o for o in outcomes if o.engine.kind == "loyaltymetrics" and o.ran), None)
    header, lines = table_rows(outcomes, rows, baseline)
    if baseline is not None:
        header[6] = f"vs {baseline.engine.name.replace('loyaltymetrics', 'lm')} x{baseline.engine.threads}"
    print()
    print(f"SPEC §4 base counts by (merchant_id, year), {rows:,} rows, medians of {args.repeat} run(s) "
          f"(min – max), each run a fresh process:")
    print(render_markdown(header, lines) if args.markdown else render_text(header, lines))
    per_row = bytes_per_row(path)
    print()
    print(f"memory-read bandwidth (NumPy int64 sum over {args.bandwidth_mib} MiB, median of {args.bandwidth_repeat}): "
          + ", ".join(f"{bandwidth[t] / 1e9:.1f} GB/s on {t} thread{'s' * (t > 1)}" for t in (1, 2)))
    print(f"loyaltymetrics reads {per_row:g} bytes a row, so one pass cannot beat "
          + ", ".join(f"{rate(bandwidth[t] / per_row)} rows/s on {t} thread{'s' * (t > 1)}" for t in (1, 2)) + ":")
    for o in outcomes:
        if o.engine.kind == "loyaltymetrics" and o.ran:
            rows_per_s = rows / statistics.median(o.seconds)
            # More threads can read no slower than fewer: a lower 2-thread figure is noise.
            limit = max(bandwidth[t] for t in bandwidth if t <= o.engine.threads) / per_row
            print(f"  {o.engine.name} threads={o.engine.threads}: {rate(rows_per_s)} rows/s = "
                  f"{rows_per_s / limit:.0%} of the bandwidth limit")
    wrong = [o for o in outcomes if o.difference]
    for o in wrong:
        print(f"RESULT DIFFERS: {o.engine.name} threads={o.engine.threads}: {o.difference}", file=sys.stderr)
    failed = [o for o in outcomes if o.note and o.note.startswith("failed")]
    return 1 if wrong or failed else 0


if __name__ == "__main__":
    sys.exit(main())
