"""loyaltymetrics against DuckDB, Polars, chDB and DataFusion on the same SPEC §4 base counts.

    python benchmarks/peers.py --rows 50000000 --data-dir /data/bench
    python benchmarks/peers.py --rows 5e6 --repeat 3 --markdown
    python benchmarks/peers.py --rows 2e7 --inputs snappy,zstd --engines lm-cython-1,lm-cython-2,polars
    python benchmarks/peers.py --rows 5e7 --small-engines datafusion,chdb --small-rows 5e6

A peer too slow to run at ``--rows`` (DataFusion takes minutes a run at
5e7 rows here) can be named in ``--small-engines``: it runs on a data set of
``--small-rows`` rows generated the same way, its row in the table says so,
its ratio is of rows/s, and its result is compared with loyaltymetrics' on
those rows.

One table per input (``--inputs``, default all four):

- ``arrow``: the sorted uncompressed Arrow IPC file below, from the page cache
  (``--page-cache``: by default dropped and read back once first, so it sits
  in the page cache as a file read from disk does, in large folios; ``as-is``
  keeps the pages it has, 4 KiB ones for a file just written by pyarrow: see
  ``warm_page_cache``);
- ``snappy`` / ``zstd``: the same rows in a Parquet file of that compression,
  sorted, written with pyarrow's defaults: one row group per record batch of
  the Arrow file (about 874,000 rows; pyarrow's maximum is 2^20), dictionary
  encoding, 1 MiB pages. Polars' ``sink_parquet`` would write zstd row groups
  of about 125,000 rows and DuckDB snappy ones of 122,880, mostly plain:
  neither ran faster on its own layout (README, Performance);
- ``unsorted``: the same rows shuffled (a random permutation), in a snappy
  Parquet file: loyaltymetrics runs ``compute(path, presorted=False)`` (shown
  as n/a where ``compute`` has no ``presorted=``), every peer its direct
  aggregation (no formulation that relies on order).

The derived files are written beside the Arrow file from it (streamed, except
the shuffle, which holds the columns in memory once) and reused.

Generates one data set (or reuses the file from an earlier run with the same
parameters): ``--rows`` orders sorted by (merchant_id, customer_id, order_ts),
int32 keys, timestamp[us, UTC], int64 amount, bool reward, streamed to an
uncompressed Arrow IPC file in ``--data-dir``. Then every engine computes the
SPEC §4 base counts per (merchant_id, year):

- loyaltymetrics ``compute(path, by=["merchant"], period="year")``, with the
  Cython engine on 1 and 2 threads and the Numba engine on 2 threads (rows
  whose ``engine=`` / ``threads=`` keywords this version of ``compute`` lacks
  are shown as n/a);
- DuckDB over the memory-mapped file (pyarrow ``memory_map`` + Arrow scan),
  or its own ``read_parquet``;
- Polars lazy over ``pl.scan_ipc`` / ``pl.scan_parquet``;
- chDB (ClickHouse in-process) over ``file(path, Arrow|Parquet)``;
- DataFusion over the memory-mapped Arrow batches or ``register_parquet``.

The formulations are in ``duckdb_base_counts``, ``polars_base_counts``,
``chdb_base_counts`` and ``datafusion_base_counts`` below; their docstrings
say why they are written that way. A peer that is not installed is shown as
n/a (``pip install 'loyaltymetrics[bench]'`` installs them all).

Every run is a fresh child process (so its peak RSS is its own), warmed up on
a tiny file first (imports, JIT compilation, thread pools), then timed from
opening the file to holding the result as an Arrow table, in wall seconds
and in the process's CPU seconds (all its threads: on a busy machine the
steadier of the two). Runs are
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


INPUTS = {
    "arrow": "sorted Arrow IPC, page cache",
    "snappy": "sorted Parquet, snappy",
    "zstd": "sorted Parquet, zstd",
    "unsorted": "unsorted Parquet (shuffled rows, snappy)",
}
PARQUET_ROW_GROUP_ROWS = 1 << 20


@dataclass(frozen=True)
class Engine:
    name: str            # what the table shows
    kind: str            # "loyaltymetrics", "duckdb", "polars", "chdb", "datafusion"
    threads: int
    lm_engine: str | None = None  # loyaltymetrics' engine= keyword


ENGINES = (
    Engine("loyaltymetrics cython", "loyaltymetrics", 1, "cython"),
    Engine("loyaltymetrics cython", "loyaltymetrics", 2, "cython"),
    Engine("loyaltymetrics numba", "loyaltymetrics", 2, "numba"),
    Engine("DuckDB", "duckdb", 2),
    Engine("Polars", "polars", 2),
    Engine("chDB", "chdb", 2),
    Engine("DataFusion", "datafusion", 2),
)
BASELINE = ENGINES[1]  # ratios are against loyaltymetrics cython, 2 threads


# --- the formulations ---------------------------------------------------------

def loyaltymetrics_base_counts(path, engine, threads, keywords, input_kind="arrow"):
    """compute(by=["merchant"], period="year"); engine= / threads= only where compute() takes them.

    Unsorted input: ``presorted=False`` (the caller has checked that compute() takes it).
    """
    import loyaltymetrics as lm

    extra = {}
    if input_kind == "unsorted":
        extra["presorted"] = False
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


def duckdb_base_counts(path, threads, input_kind="arrow"):
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

    Parquet: DuckDB's own ``read_parquet``; its TIMESTAMPTZ ``order_ts`` is
    cast to a plain TIMESTAMP under ``TimeZone = 'UTC'`` (the UTC wall
    time), for the reason above. The query needs no order, so unsorted
    input runs the same query.
    """
    import duckdb
    import pyarrow as pa

    # Output order does not matter (results are sorted before comparing); DuckDB's
    # documentation recommends dropping it for large aggregations, to save memory.
    con = duckdb.connect(config={"threads": threads, "preserve_insertion_order": False})
    if input_kind != "arrow":
        con.execute("SET TimeZone = 'UTC'")
        # A view cannot take a prepared parameter: the path is quoted as an SQL string literal.
        con.execute("CREATE VIEW orders AS SELECT merchant_id, customer_id, order_ts::TIMESTAMP AS order_ts, "
                    f"amount, reward FROM read_parquet({_sql_string(path)})")
        result = con.sql(DUCKDB_SQL)
        return (getattr(result, "to_arrow_table", None) or result.arrow)()
    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    ts = table.schema.get_field_index("order_ts")
    naive = pa.timestamp(table.schema.field(ts).type.unit)
    table = table.set_column(ts, "order_ts", pa.chunked_array(
        [chunk.view(naive) for chunk in table.column(ts).chunks], naive))
    con.register("orders", table)
    result = con.sql(DUCKDB_SQL)
    # DuckDB >= 1.4 names it to_arrow_table; older releases arrow().
    return (getattr(result, "to_arrow_table", None) or result.arrow)()


def _sql_string(value):
    """``value`` as an SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def polars_base_counts(path, engine="streaming", input_kind="arrow"):
    """SPEC §4 base counts per (merchant_id, year) with Polars, lazily over ``pl.scan_ipc`` / ``scan_parquet``.

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

    Unsorted input has no runs: that hash ``group_by`` over the three keys,
    then a sort of the (much smaller) aggregate by them, after which the
    same shifts find new and retained store-customers.
    """
    import polars as pl

    scan = pl.scan_ipc if input_kind == "arrow" else pl.scan_parquet
    orders = scan(path).with_columns(
        # Arrow stores UTC: dropping the zone keeps the UTC wall time (SPEC §3).
        year=pl.col("order_ts").dt.replace_time_zone(None).dt.year(),
        reward=pl.col("reward").fill_null(False),
    )
    sums = dict(
        n=pl.len(),
        rev=pl.col("amount").sum(),
        rn=pl.col("reward").sum(),
        rr=pl.col("amount").filter(pl.col("reward")).sum(),
    )
    if input_kind == "unsorted":
        runs = orders.group_by("merchant_id", "customer_id", "year").agg(**sums).sort(
            "merchant_id", "customer_id", "year")
    else:
        runs = (
            orders.with_columns(run=pl.struct("merchant_id", "customer_id", "year").rle_id().set_sorted())
            .group_by("run", maintain_order=True)
            .agg(pl.col("merchant_id").first(), pl.col("customer_id").first(), pl.col("year").first(), **sums)
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


CHDB_SQL = """
WITH store_customer_years AS (
    SELECT merchant_id, customer_id, toInt32(toYear(order_ts)) AS year,
           count() AS n, sum(amount) AS rev,
           countIf(ifNull(reward, false)) AS rn,
           sumIf(amount, ifNull(reward, false)) AS rr
    FROM file({path}, {format})
    GROUP BY merchant_id, customer_id, year
),
flagged AS (
    SELECT *, lagInFrame(year, 1, -1) OVER (
        PARTITION BY merchant_id, customer_id ORDER BY year
        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS prev_year
    FROM store_customer_years
)
SELECT merchant_id, year,
       sum(n) AS orders,
       sum(rev) AS revenue,
       count() AS customers,
       countIf(prev_year = -1) AS new_customers,
       countIf(n >= 2) AS repeat_customers,
       sumIf(n, n >= 2) AS orders_from_repeat_customers,
       countIf(prev_year = year - 1) AS retained_customers,
       sum(rn) AS reward_orders,
       sum(rr) AS reward_revenue,
       countIf(rn > 0) AS reward_customers,
       sumIf(n, rn > 0) AS member_orders,
       sumIf(rev, rn > 0) AS member_revenue,
       countIf(rn > 0 AND n >= 2) AS member_repeat_customers
FROM flagged
GROUP BY merchant_id, year
SETTINGS max_threads = {threads}
"""


def chdb_base_counts(path, threads, input_kind="arrow"):
    """SPEC §4 base counts per (merchant_id, year) in chDB (ClickHouse SQL, ``CHDB_SQL``).

    The shape of ``DUCKDB_SQL`` in ClickHouse's dialect: ``file()`` reads
    the Arrow IPC or Parquet file with ClickHouse's own readers; the UTC
    ``order_ts`` arrives as ``DateTime64(.., 'UTC')``, so ``toYear`` is the
    UTC year; ``lagInFrame`` over an explicit frame is ClickHouse's ``lag``.
    A null reward counts as false (``ifNull``), as SPEC §2 says. The query
    needs no order, so unsorted input runs the same query.
    """
    import chdb

    sql = CHDB_SQL.format(path=_sql_string(Path(path).resolve()), threads=int(threads),
                          format="Arrow" if input_kind == "arrow" else "Parquet")
    return chdb.query(sql, "ArrowTable")


DATAFUSION_SQL = """
WITH store_customer_years AS (
    SELECT merchant_id, customer_id, CAST(date_part('year', order_ts) AS INT) AS year,
           count(*) AS n, sum(amount) AS rev,
           sum(CASE WHEN reward THEN 1 ELSE 0 END) AS rn,
           sum(CASE WHEN reward THEN amount ELSE 0 END) AS rr
    FROM orders
    GROUP BY merchant_id, customer_id, CAST(date_part('year', order_ts) AS INT)
),
flagged AS (
    SELECT *, lag(year, 1, -1) OVER (PARTITION BY merchant_id, customer_id ORDER BY year) AS prev_year
    FROM store_customer_years
)
SELECT merchant_id, year,
       sum(n) AS orders,
       sum(rev) AS revenue,
       count(*) AS customers,
       sum(CASE WHEN prev_year = -1 THEN 1 ELSE 0 END) AS new_customers,
       sum(CASE WHEN n >= 2 THEN 1 ELSE 0 END) AS repeat_customers,
       sum(CASE WHEN n >= 2 THEN n ELSE 0 END) AS orders_from_repeat_customers,
       sum(CASE WHEN prev_year = year - 1 THEN 1 ELSE 0 END) AS retained_customers,
       sum(rn) AS reward_orders,
       sum(rr) AS reward_revenue,
       sum(CASE WHEN rn > 0 THEN 1 ELSE 0 END) AS reward_customers,
       sum(CASE WHEN rn > 0 THEN n ELSE 0 END) AS member_orders,
       sum(CASE WHEN rn > 0 THEN rev ELSE 0 END) AS member_revenue,
       sum(CASE WHEN rn > 0 AND n >= 2 THEN 1 ELSE 0 END) AS member_repeat_customers
FROM flagged
GROUP BY merchant_id, year
"""


def datafusion_base_counts(path, threads, input_kind="arrow"):
    """SPEC §4 base counts per (merchant_id, year) in DataFusion SQL (``DATAFUSION_SQL``).

    The shape of ``DUCKDB_SQL`` with ``CASE`` sums for the filtered
    aggregates. Parquet is DataFusion's own reader (``register_parquet``);
    the Arrow IPC file is memory-mapped by pyarrow (zero-copy) and its
    record batches registered as ``threads`` partitions, so the scan runs
    on every thread. ``date_part`` on the UTC timestamp is the UTC year. The
    query needs no order, so unsorted input runs the same query.
    """
    import pyarrow as pa
    from datafusion import SessionConfig, SessionContext

    ctx = SessionContext(SessionConfig().with_target_partitions(int(threads)))
    if input_kind == "arrow":
        batches = pa.ipc.open_file(pa.memory_map(str(path))).read_all().to_batches()
        parts = [batches[i::threads] for i in range(threads)]
        ctx.register_record_batches("orders", [p for p in parts if p] or [batches])
    else:
        ctx.register_parquet("orders", str(path))
    return ctx.sql(DATAFUSION_SQL).to_arrow_table()


BASE_COUNT_FUNCTIONS = {"duckdb": duckdb_base_counts, "chdb": chdb_base_counts,
                        "datafusion": datafusion_base_counts}


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
    kind, threads, input_kind = args.child, args.threads, args.input_kind
    if kind == "polars":
        os.environ["POLARS_MAX_THREADS"] = str(threads)  # read once, at import
    if kind == "loyaltymetrics":
        import inspect

        import loyaltymetrics as lm

        keywords = set(inspect.signature(lm.compute).parameters)

        def base_counts(path):
            return loyaltymetrics_base_counts(path, args.lm_engine, threads, keywords, input_kind)
    elif kind in BASE_COUNT_FUNCTIONS:
        def base_counts(path):
            return BASE_COUNT_FUNCTIONS[kind](path, threads, input_kind)
    elif kind == "polars":
        def base_counts(path):
            return polars_base_counts(path, input_kind=input_kind)
    else:
        raise SystemExit(f"unknown engine {kind!r}")
    if args.check:
        # The edge cases the benchmark data lacks; a process of its own, so no run's RSS includes it.
        check_small_inputs(base_counts, Path(args.out).parent, input_kind)
        print(json.dumps({"checked": True}))
        return
    base_counts(args.warmup)  # imports, JIT compilation, thread pools
    reset_peak_rss()
    rss_before, _ = memory_status()
    start, cpu_start = time.perf_counter(), time.process_time()
    result = base_counts(args.file)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    _, peak = memory_status()
    import pyarrow as pa

    table = normalized(result)
    with pa.OSFile(args.out, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_rss": peak, "rss_before": rss_before}))


def check_small_inputs(base_counts, folder, input_kind="arrow"):
    """Compare this engine with the tests' independent SQL peer on small hostile inputs: year-edge
    instants, equal timestamps, null rewards, int64 keys, customer ids shared by several merchants,
    record batches (row groups) of 97 rows; for ``unsorted``, the rows shuffled.

    The benchmark data has none of these, so a formulation could agree on it and still be wrong.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    sys.path.insert(0, str(HERE.parent / "tests"))
    from sql_peer import duckdb_base_counts as sql_peer_base_counts, make_orders

    for seed in range(3):
        orders = make_orders(seed, n_customers=400, n_merchants=7)
        path = Path(folder) / f"check-{os.getpid()}-{seed}.{'arrow' if input_kind == 'arrow' else 'parquet'}"
        if input_kind == "arrow":
            with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, orders.schema) as writer:
                writer.write_table(orders, max_chunksize=97)
        else:
            shuffled = orders.take(np.random.default_rng(seed).permutation(orders.num_rows)) \
                if input_kind == "unsorted" else orders
            pq.write_table(shuffled, path, row_group_size=97,
                           compression="zstd" if input_kind == "zstd" else "snappy")
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
    cpu_seconds: list = field(default_factory=list)   # the process's CPU time (all its threads) a run
    peak_rss: list = field(default_factory=list)
    note: str | None = None       # "n/a ...", "did not finish ...", "failed ..."
    difference: str | None = None
    unchecked: bool = False       # no loyaltymetrics result to compare with
    rows: int | None = None       # rows of the data set this engine ran on (--small-engines: fewer)

    @property
    def ran(self):
        return bool(self.seconds) and self.note is None


def lm_keywords():
    import inspect

    import loyaltymetrics as lm

    return set(inspect.signature(lm.compute).parameters)


def unavailable(engine, keywords, input_kind="arrow"):
    """Why this engine cannot run on this input here, or None."""
    if engine.kind in ("duckdb", "polars", "chdb", "datafusion"):
        import importlib.util

        return None if importlib.util.find_spec(engine.kind) else f"n/a: {engine.kind} is not installed"
    if input_kind == "unsorted" and "presorted" not in keywords:
        return "n/a: presorted=False not available (compute() has no presorted= here)"
    if engine.threads != 1 and "threads" not in keywords:
        return "n/a: compute() has no threads= here"
    if engine.lm_engine != "cython" and "engine" not in keywords:
        return "n/a: compute() has no engine= here"
    if engine.lm_engine == "numba":
        import importlib.util

        if importlib.util.find_spec("numba") is None:
            return "n/a: numba is not installed"
    return None


PAGE_CACHE_STATES = ("reread", "as-is")


def warm_page_cache(path, state="reread"):
    """Read the file once so every engine starts from the page cache, if it fits in memory.

    How a file sits in the page cache decides what mapping it costs (and
    loyaltymetrics maps an Arrow file, Polars and DuckDB too): read from
    disk, it sits in large folios (Linux readahead allocates up to 2 MiB
    folios on filesystems that support them, ext4 since 6.x), which a
    mapping takes a huge page at a time; written a few KiB per ``write``
    (as pyarrow's IPC writer writes small buffers), it sits in 4 KiB pages,
    each mapped and unmapped on its own: about 0.17 s of CPU for 1.2 GB
    here (``benchmarks/mmap_bench.py``). ``state`` ``"reread"`` first drops
    the file's pages (``POSIX_FADV_DONTNEED``: the file is clean, nothing is
    lost) so the read brings it back as a read from disk does; ``"as-is"``
    keeps the pages it already has (a file just written keeps the folios
    of its writes).
    """
    size = Path(path).stat().st_size
    available = meminfo().get("MemAvailable")
    if available is not None and size > 0.8 * available:
        return False
    with open(path, "rb", buffering=0) as f:
        if state == "reread" and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
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
           "--file", path, "--warmup", warmup, "--out", out, "--input-kind", args.input_kind]
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
    outcome.cpu_seconds.append(report["cpu_seconds"])
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
    for name in ("loyaltymetrics", "duckdb", "polars", "chdb", "datafusion", "numba"):
        try:
            versions[name] = __import__(name).__version__
        except (ImportError, AttributeError):
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
    """Cells of one table; an engine run on fewer rows (``--small-engines``) is named with its row count
    and compared by rows/s."""
    header = ["engine", "threads", "wall (median)", "min – max", "CPU (median)", "rows/s", "peak RSS",
              "vs baseline", "result"]
    lines = []
    base_rate = (baseline.rows or rows) / statistics.median(baseline.seconds) if baseline and baseline.ran else None
    for o in outcomes:
        n = o.rows or rows
        cells = [o.engine.name + (f" (at {n:,} rows)" if n != rows else ""), str(o.engine.threads)]
        if o.ran:
            med = statistics.median(o.seconds)
            cells += [f"{med:,.3f} s", f"{min(o.seconds):,.3f} – {max(o.seconds):,.3f} s",
                      f"{statistics.median(o.cpu_seconds):,.3f} s", rate(n / med),
                      mib(statistics.median(o.peak_rss)),
                      f"{n / med / base_rate:.2f}x" if base_rate else "n/a",
                      "DIFFERENT" if o.difference else "not compared" if o.unchecked else "equal"]
        else:
            cells += ["-"] * 6 + [o.note or "not run"]
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


def derived_file(arrow_path, input_kind, seed=0):
    """The Parquet file of ``input_kind`` holding the rows of ``arrow_path``, written once and reused.

    Sorted files are streamed record batch by record batch; the shuffled one
    takes a random permutation of all rows in memory. Written under a
    temporary name and renamed when complete.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow_path = Path(arrow_path)
    path = arrow_path.with_name(f"{arrow_path.stem}.{input_kind}.parquet")
    with pa.memory_map(str(arrow_path)) as source:
        reader = pa.ipc.open_file(source)
        rows = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
        if path.exists():
            try:
                if pq.ParquetFile(path).metadata.num_rows == rows:
                    return path, True
            except (pa.ArrowException, OSError):
                pass
        partial = path.with_name(path.name + ".partial")
        compression = "zstd" if input_kind == "zstd" else "snappy"
        with pq.ParquetWriter(str(partial), reader.schema, compression=compression) as writer:
            if input_kind == "unsorted":
                table = reader.read_all()
                table = table.take(np.random.default_rng(seed).permutation(table.num_rows))
                writer.write_table(table, row_group_size=PARQUET_ROW_GROUP_ROWS)
                del table
            else:
                for i in range(reader.num_record_batches):
                    writer.write_table(pa.Table.from_batches([reader.get_batch(i)]),
                                       row_group_size=PARQUET_ROW_GROUP_ROWS)
    os.replace(partial, path)
    return path, False


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
    parser.add_argument("--repeat-peers", type=int,
                        help="runs per engine other than loyaltymetrics (default: --repeat); the tables say "
                             "how many runs each median is of")
    parser.add_argument("--engines", default="all",
                        help="comma-separated subset of: lm-cython-1, lm-cython-2, lm-numba-2, duckdb, polars, "
                             "chdb, datafusion")
    parser.add_argument("--inputs", default=",".join(INPUTS),
                        help=f"comma-separated subset of: {', '.join(INPUTS)} (default: all; one table each)")
    parser.add_argument("--time-limit", type=float, default=1800,
                        help="seconds a peer's run may take before it is stopped and reported as "
                             "not finished (default: %(default)s)")
    parser.add_argument("--bandwidth-mib", type=int, default=1024,
                        help="size of the in-memory array the bandwidth is measured on (default: %(default)s)")
    parser.add_argument("--bandwidth-repeat", type=int, default=7)
    parser.add_argument("--small-engines", default="",
                        help="comma-separated engines (as --engines) run on a data set of --small-rows rows "
                             "instead, for peers too slow for --rows; their rows are marked with the row count "
                             "and compared by rows/s, their results with loyaltymetrics' on the same rows")
    parser.add_argument("--small-rows", type=float, default=5e6,
                        help="rows of the data set --small-engines run on (default: %(default)g)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip checking each engine against the tests' SQL peer on small hostile inputs first")
    parser.add_argument("--page-cache", choices=PAGE_CACHE_STATES, default="reread",
                        help="how each input file is brought into the page cache before its runs: 'reread' "
                             "drops its cached pages and reads it back (as a file read from disk sits: large "
                             "folios), 'as-is' reads it keeping the pages it has (a file just written sits in "
                             "the folios of its writes, 4 KiB pages for small writes) (default: %(default)s)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (for the README)")
    # Internal: one timed run of one engine in a child process.
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--lm-engine", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input-kind", default="arrow", choices=list(INPUTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "bandwidth":
        return bandwidth_child(args)
    if args.child:
        return run_child(args)

    rows = int(args.rows)
    engine_ids = {"lm-cython-1": ENGINES[0], "lm-cython-2": ENGINES[1], "lm-numba-2": ENGINES[2],
                  "duckdb": ENGINES[3], "polars": ENGINES[4], "chdb": ENGINES[5], "datafusion": ENGINES[6]}
    if args.engines == "all":
        engines = list(ENGINES)
    else:
        unknown = [e for e in args.engines.split(",") if e not in engine_ids]
        if unknown:
            parser.error(f"unknown engines {unknown}; choose from {', '.join(engine_ids)}")
        engines = [engine_ids[e] for e in args.engines.split(",")]
    small = [e for e in args.small_engines.split(",") if e]
    unknown = [e for e in small if e not in engine_ids]
    if unknown:
        parser.error(f"unknown small engines {unknown}; choose from {', '.join(engine_ids)}")
    small = {engine_ids[e] for e in small}
    small_rows = int(args.small_rows)
    peer_repeat = args.repeat if args.repeat_peers is None else args.repeat_peers
    input_kinds = args.inputs.split(",")
    unknown = [k for k in input_kinds if k not in INPUTS]
    if unknown:
        parser.error(f"unknown inputs {unknown}; choose from {', '.join(INPUTS)}")

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
    files = {}
    for kind in input_kinds:
        if kind == "arrow":
            files[kind] = path
            continue
        start = time.perf_counter()
        files[kind], reused = derived_file(path, kind, args.seed)
        print(f"data:     {files[kind]} ({mib(Path(files[kind]).stat().st_size)}, "
              + ("reused" if reused else f"written in {time.perf_counter() - start:,.1f} s") + ")")
    small_files, small_path = {}, None
    if small & set(engines) and small_rows != rows:
        small_path, _ = write_orders_file(data_dir / data_file_name(small_rows, args.seed, args.merchants),
                                          small_rows, args.seed, n_merchants=args.merchants)
        for kind in input_kinds:
            small_files[kind] = small_path if kind == "arrow" else derived_file(small_path, kind, args.seed)[0]
        print(f"data:     {small_path} and its derived files ({small_rows:,} rows) for "
              + ", ".join(e.name for e in engines if e in small))

    keywords = lm_keywords()
    # The reference is loyaltymetrics' first result on any input: every input holds the same rows,
    # so every engine's table on every input must equal it. Results met before it wait for it.
    reference, waiting = None, []
    tables = []
    with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
        small_reference = None
        if small_files:
            # What the engines run on fewer rows must equal: loyaltymetrics (untimed) on those rows.
            args.input_kind = "arrow"
            small_reference = run_once(BASELINE, Outcome(BASELINE), args, str(small_path), warmup,
                                       os.path.join(tmp, "result-small.arrow"))
        for kind in input_kinds:
            args.input_kind = kind
            warm = warm_page_cache(files[kind], args.page_cache)
            how = ("dropped from the page cache and read back once before timing (page cache warm, as after "
                   "a read from disk)" if args.page_cache == "reread"
                   else "read once before timing, keeping the pages it had (page cache warm, as it was)")
            print(f"input:    {INPUTS[kind]}: " + (how if warm
                                                   else "file larger than available memory: engines read it from disk"))
            warmup_file = warmup if kind == "arrow" else derived_file(warmup, kind, args.seed)[0]
            outcomes = [Outcome(e, note=unavailable(e, keywords, kind)) for e in engines]
            if "engine" not in keywords and "threads" not in keywords:
                for o in outcomes:
                    if o.engine == ENGINES[0] and o.note is None:
                        o.engine = Engine("loyaltymetrics (default)", "loyaltymetrics", 1, "cython")
            if not args.no_check:
                for o in outcomes:
                    if o.note is None:
                        check_engine(o.engine, o, args, tmp)
            for r in range(max(args.repeat, peer_repeat)):
                for i, o in enumerate(outcomes):
                    if o.note is not None or (o.engine.kind != "loyaltymetrics" and r >= peer_repeat):
                        continue
                    out = os.path.join(tmp, f"result-{kind}-{i}-{r}.arrow")
                    if small_files and o.engine in small:
                        o.rows = small_rows
                        result = run_once(o.engine, o, args, str(small_files[kind]), warmup_file, out)
                        if result is not None:
                            problem = first_difference(small_reference, result)
                            o.difference = o.difference or problem
                            print(f"  {kind} run {r + 1} {o.engine.name} threads={o.engine.threads} "
                                  f"at {small_rows:,} rows: {o.seconds[-1]:,.3f} s, peak RSS {mib(o.peak_rss[-1])}"
                                  + (f"  RESULT DIFFERS: {problem}" if problem else ""), flush=True)
                        continue
                    result = run_once(o.engine, o, args, files[kind], warmup_file, out)
                    if result is None:
                        continue
                    if reference is None and o.engine.kind == "loyaltymetrics":
                        reference = result
                        for waiting_outcome, waiting_result in waiting:
                            problem = first_difference(reference, waiting_result)
                            if problem and not waiting_outcome.difference:
                                waiting_outcome.difference = problem
                        waiting = []
                    problem = None
                    if reference is None:
                        waiting.append((o, result))
                    else:
                        problem = first_difference(reference, result)
                    if problem and not o.difference:
                        o.difference = problem
                    print(f"  {kind} run {r + 1} {o.engine.name} threads={o.engine.threads}: "
                          f"{o.seconds[-1]:,.3f} s, peak RSS {mib(o.peak_rss[-1])}"
                          + (f"  RESULT DIFFERS: {problem}" if problem else ""), flush=True)
            tables.append((kind, outcomes))
        for o, _ in waiting:   # no loyaltymetrics run to compare with
            o.unchecked = True

        bw = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "bandwidth",
                             "--bandwidth-mib", str(args.bandwidth_mib),
                             "--bandwidth-repeat", str(args.bandwidth_repeat)],
                            capture_output=True, text=True, check=True)
        bandwidth = {int(k): v for k, v in json.loads(bw.stdout).items()}

    for kind, outcomes in tables:
        baseline = next((o for o in outcomes if o.engine == BASELINE and o.ran), None)
        if baseline is None:
            baseline = next((o for o in outcomes if o.engine.kind == "loyaltymetrics" and o.ran), None)
        header, lines = table_rows(outcomes, rows, baseline)
        if baseline is not None:
            header[header.index("vs baseline")] = f"vs {baseline.engine.name.replace('loyaltymetrics', 'lm')} x{baseline.engine.threads}"
        print()
        runs = f"{args.repeat} run(s)" if peer_repeat == args.repeat else \
            f"{args.repeat} run(s) of loyaltymetrics and {peer_repeat} of each other engine"
        print(f"{INPUTS[kind]}: SPEC §4 base counts by (merchant_id, year), {rows:,} rows, medians of "
              f"{runs} (min – max), each run a fresh process:")
        print(render_markdown(header, lines) if args.markdown else render_text(header, lines))
        if any(o.unchecked for o in outcomes):
            print("(results not compared: no loyaltymetrics run to compare them with)")
        ran = {o.engine: o for o in outcomes if o.ran}
        if ENGINES[0] in ran and ENGINES[1] in ran:
            speedup = statistics.median(ran[ENGINES[0]].seconds) / statistics.median(ran[ENGINES[1]].seconds)
            print(f"loyaltymetrics cython on 2 threads: {speedup:.2f}x its speed on 1 thread (medians)")
    outcomes = [o for _, group in tables for o in group]
    kind_of = {id(o): kind for kind, group in tables for o in group}
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
            print(f"  {INPUTS[kind_of[id(o)]]}, {o.engine.name} threads={o.engine.threads}: {rate(rows_per_s)} rows/s = "
                  f"{rows_per_s / limit:.0%} of the bandwidth limit")
    wrong = [o for o in outcomes if o.difference]
    for o in wrong:
        print(f"RESULT DIFFERS: {o.engine.name} threads={o.engine.threads}: {o.difference}", file=sys.stderr)
    failed = [o for o in outcomes if o.note and o.note.startswith("failed")]
    return 1 if wrong or failed else 0


if __name__ == "__main__":
    sys.exit(main())
