"""A hostile environment (issue 12, SPEC §2 "Bad input"): faults injected for real.

- a file truncated or replaced while a child process reads it;
- an address-space limit (RLIMIT_AS) on a child process;
- ``rfm`` with one thread, reading a stream that records how far it was read;
- ``generate`` asked for more rows than memory or the disk can hold;
- a FIFO given as ORDERS or MERCHANTS;
- hundreds of thousands of one-row record batches;
- a cohort whose cumulative revenue leaves int64 while each cell fits.

Every class of failure here failed on the code before issue 12: a SIGBUS, a
traceback or SIGSEGV, a whole input read before the first output, a plan
that ran for minutes, a hang, one kernel call per row, a negative revenue.
"""
import datetime as dt
import errno
import mmap
import os
import resource
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import loyaltymetrics as lm
from loyaltymetrics import inputs
from reference_analyses import reference_cohorts

SRC = str(Path(lm.__file__).resolve().parents[1])
CHILD_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
T0 = dt.datetime(2022, 1, 1)
SIGNALLED = "killed by a signal"


def orders_table(n, customers_per_merchant=50, seed=0):
    """``n`` sorted order rows: merchants of ``customers_per_merchant`` customers, a few orders each."""
    rng = np.random.default_rng(seed)
    key = np.sort(rng.integers(0, max(n // 3, 1), n))
    merchant = key // customers_per_merchant + 1
    customer = key % customers_per_merchant + 1
    ts = np.datetime64("2022-01-01", "us") + np.sort(rng.integers(0, 700 * 86_400 * 10**6, n)).astype("timedelta64[us]")
    order = np.lexsort((ts, customer, merchant))
    return pa.table({
        "merchant_id": pa.array(merchant[order], pa.int64()),
        "customer_id": pa.array(customer[order], pa.int64()),
        "order_ts": pa.array(ts[order], pa.timestamp("us", tz="UTC")),
        "amount": pa.array(rng.integers(0, 20_000, n), pa.int64()),
        "reward": pa.array(rng.random(n) < 0.1),
    })


def write(table, path, kind="ipc_file", batch_rows=None):
    batches = table.to_batches(max_chunksize=batch_rows) if batch_rows else table.to_batches()
    if kind == "parquet":
        pq.write_table(table, path, row_group_size=batch_rows)
    else:
        new = pa.ipc.new_file if kind == "ipc_file" else pa.ipc.new_stream
        with pa.OSFile(str(path), "wb") as sink, new(sink, table.schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
    return path


def run_child(code, *args, limit_mb=None, timeout=60, stdin=None):
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit_mb << 20, limit_mb << 20))

    return subprocess.run([sys.executable, *(["-c", textwrap.dedent(code)] if code else []), *map(str, args)],
                          env=CHILD_ENV, capture_output=True, text=True, timeout=timeout, input=stdin,
                          preexec_fn=limit if limit_mb else None)


# --- 1. a file truncated or replaced while it is read -----------------------------------

READ_THEN_WAIT = """
    import sys
    import loyaltymetrics as lm
    from loyaltymetrics.inputs import order_batches
    from loyaltymetrics.scan import scan_orders

    path, threads, chunk_rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rounds = []

    def progress(rows):   # after the first round: let the parent change the file, then go on
        if not rounds:
            rounds.append(rows)
            print("read", flush=True)
            sys.stdin.readline()

    try:
        scan_orders(order_batches(path, threads=threads), "year", False, "cython", threads, chunk_rows, progress)
    except lm.InputError as error:
        print(type(error).__name__, error.source, error.row, error, flush=True)
        sys.exit(3)
    print("finished", flush=True)
"""


def _change(path, how, tmp_path):
    if how == "truncate":
        os.truncate(path, os.path.getsize(path) // 3)
    elif how == "truncate_to_zero":
        os.truncate(path, 0)
    else:  # replaced by another file under the same name, as a producer's rename would
        other = tmp_path / "other"
        other.write_bytes(path.read_bytes())
        os.replace(other, path)


@pytest.mark.parametrize("kind, threads, how", [
    ("ipc_file", 1, "truncate"), ("ipc_file", 2, "truncate"), ("ipc_file", 1, "truncate_to_zero"),
    ("ipc_file", 2, "replace"), ("ipc_stream", 1, "truncate"), ("parquet", 1, "truncate"),
    # Two threads: row groups decoded by worker threads, each with a reader opened at the start.
    ("parquet", 2, "truncate"), ("parquet", 2, "truncate_to_zero"), ("parquet", 2, "replace"),
    ("parquet", 3, "truncate"),
])
def test_file_changed_while_a_child_reads_it_is_input_changed_error(tmp_path, kind, threads, how):
    # Batches of 20,000 rows, chunks of 5,000: the child stops after its first round (5,000 rows per
    # thread), the parent changes the file, the child goes on into pages that may be gone.
    path = write(orders_table(300_000), tmp_path / f"orders.{kind}", kind, batch_rows=20_000)
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(READ_THEN_WAIT), str(path), str(threads), "5000"],
                             env=CHILD_ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline() == "read\n", child.stderr.read()
        _change(path, how, tmp_path)
        out, err = child.communicate("go\n", timeout=120)
    finally:
        child.kill()
    assert child.returncode >= 0, f"{SIGNALLED} {-child.returncode} (SIGBUS is 7): {err}"
    assert child.returncode == 3, out + err
    assert out.startswith(f"InputChangedError {path} "), out
    assert "while it was being read" in out


TRUNCATE_MID_SCAN = """
    import os, sys
    import loyaltymetrics as lm
    from loyaltymetrics.scan import ComputeKernel

    path, threads, engine = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    scan, done = ComputeKernel.scan, []

    def truncating_scan(self, state, batch, start, stop):
        # After the driver checked the file and populated these pages, before the kernel reads
        # them: the window no check can close. The kernel then reads pages that are gone.
        if not done and batch.first_row + start >= 100_000:
            done.append(True)
            os.truncate(path, 4096)
        return scan(self, state, batch, start, stop)

    ComputeKernel.scan = truncating_scan
    try:
        lm.compute(path, threads=threads, chunk_rows=50_000, engine=engine)
    except lm.InputError as error:
        print(type(error).__name__, error.source, error.row, error, flush=True)
        sys.exit(3)
    print("finished", done, flush=True)
"""


@pytest.mark.parametrize("threads, engine", [(1, "cython"), (2, "cython"), (2, "numba")])
def test_file_truncated_under_the_kernel_is_input_changed_error(tmp_path, threads, engine):
    path = write(orders_table(400_000), tmp_path / "orders.arrow", batch_rows=200_000)
    child = run_child(TRUNCATE_MID_SCAN, path, threads, engine)
    assert child.returncode >= 0, f"{SIGNALLED} {-child.returncode} (SIGBUS is 7): {child.stderr[-2000:]}"
    assert child.returncode == 3, child.stdout + child.stderr[-2000:]
    assert child.stdout.startswith(f"InputChangedError {path} "), child.stdout


def test_populate_reports_pages_past_the_end_instead_of_faulting(tmp_path):
    # The second defence: MADV_POPULATE_READ answers EFAULT for pages a read would SIGBUS on.
    path = write(orders_table(100_000), tmp_path / "orders.arrow")
    batch = next(inputs.order_batches(path))
    os.truncate(path, mmap.PAGESIZE)
    arrays = [batch.amount[-1000:]]
    result = batch.mapped._populate_pages(arrays)
    if result == errno.EINVAL:
        pytest.skip("MADV_POPULATE_READ needs Linux 5.14")
    assert result == errno.EFAULT
    with pytest.raises(lm.InputChangedError, match="truncated") as error:
        batch.populate(len(batch) - 1000)
    assert (error.value.source, error.value.row) == (str(path), len(batch) - 1000)


# --- 2. out of memory or threads under RLIMIT_AS ----------------------------------------

@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("generated")
    made = lm.generate(folder / "orders.arrow", rows=200_000, seed=3)
    return Path(made.orders_path), Path(made.merchants_path)


def _unlimited(args):
    return run_child(None, "-m", "loyaltymetrics", *args)


@pytest.mark.parametrize("limit_mb", [150, 220, 300, 450, 700])
@pytest.mark.parametrize("command", ["compute", "cohorts", "rfm"])
def test_address_space_limit_is_a_clean_truthful_error(generated, tmp_path, limit_mb, command):
    orders, merchants = generated
    args = [command, orders, "-q", "--threads", "4"]
    if command == "compute":
        args += ["--merchants", merchants, "--by", "industry"]
    out = tmp_path / "out.parquet"
    if command == "rfm":
        args += ["-o", out]
    child = run_child(None, "-m", "loyaltymetrics", *args, limit_mb=limit_mb)
    assert child.returncode >= 0, f"{SIGNALLED} {-child.returncode}: {child.stderr[-2000:]}"
    assert "Traceback" not in child.stderr and "Corrupt" not in child.stderr and "corrupt" not in child.stderr
    if child.returncode == 0:
        if command == "rfm":
            got = pq.read_table(out)
            expected = lm.rfm(orders).read_all()
            assert got.equals(expected)
        else:
            assert child.stdout == _unlimited(args).stdout
    else:
        assert child.returncode == 1, child.stderr
        lines = child.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("loyaltymetrics: error: "), child.stderr
        assert "out of memory" in lines[0] or "out of threads" in lines[0], lines[0]


API_UNDER_LIMIT = """
    import resource, sys
    try:
        import loyaltymetrics as lm
    except MemoryError:
        print("import"); sys.exit(0)
    if len(sys.argv) > 2:   # a limit set after the libraries loaded: so many MB above what is mapped now
        mapped = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        limit = mapped + (int(sys.argv[2]) << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    orders = sys.argv[1]
    for name, call in (("compute", lambda: lm.compute(orders, threads=1)),
                       ("compute", lambda: lm.compute(orders, threads=8)),
                       ("cohorts", lambda: lm.cohorts(orders, threads=4)),
                       ("rfm", lambda: lm.rfm(orders, threads=4).read_all())):
        try:
            call()
            print("ok", name)
        except lm.ResourceError as error:
            print("ResourceError", isinstance(error, MemoryError), error)
        except lm.InputError as error:
            print("InputError", type(error).__name__, error)
"""


@pytest.mark.parametrize("limit_mb, after_import_mb", [(260, None), (330, None), (450, None), (None, 10),
                                                      (None, 60), (None, 150)])
def test_address_space_limit_in_the_api_is_a_resource_error(generated, limit_mb, after_import_mb):
    args = [generated[0]] + ([after_import_mb] if after_import_mb is not None else [])
    child = run_child(API_UNDER_LIMIT, *args, limit_mb=limit_mb)
    assert child.returncode == 0, f"{child.returncode}: {child.stderr[-2000:]}"
    for line in child.stdout.splitlines():
        assert line.startswith(("import", "ok ", "ResourceError True")), child.stdout


def test_arrow_allocation_failures_are_told_apart():
    # An allocation the machine could give is out of memory; one larger than the machine holds
    # comes from a corrupt length in the file (the byte-flip tests in test_hostile.py).
    small = pa.ArrowMemoryError("malloc of size 1048576 failed")
    absurd = pa.ArrowMemoryError(f"malloc of size {1 << 60} failed")
    assert isinstance(inputs.read_error(small, "f.arrow", 7, "cannot read"), lm.ResourceError)
    assert isinstance(inputs.read_error(absurd, "f.arrow", 7, "cannot read"), lm.CorruptInputError)
    thread = pa.ArrowException("Unknown error: Failed to launch worker thread")
    assert "out of threads" in str(inputs.read_error(thread, "f.parquet", 0, "cannot read"))
    assert isinstance(lm.errors.resource_error(RuntimeError("can't start new thread")), lm.ResourceError)
    assert lm.errors.resource_error(RuntimeError("something else")) is None


# --- 3. rfm streams with one thread --------------------------------------------------

class CountingStream:
    """A RecordBatchReader over a generator that records how many rows it handed out."""

    def __init__(self, table, batch_rows):
        self.table, self.batch_rows, self.rows_read = table, batch_rows, 0

    def reader(self):
        def batches():
            for batch in self.table.to_batches(max_chunksize=self.batch_rows):
                self.rows_read += batch.num_rows
                yield batch

        return pa.RecordBatchReader.from_batches(self.table.schema, batches())


@pytest.mark.parametrize("engine", ["cython", "numba"])
@pytest.mark.parametrize("threads", [1, 2])
def test_rfm_output_starts_before_the_input_ends(threads, engine):
    table = orders_table(400_000)
    stream = CountingStream(table, batch_rows=10_000)
    reader = lm.rfm(stream.reader(), observation_end="2024-01-01", threads=threads, chunk_rows=20_000,
                    engine=engine)
    first = reader.read_next_batch()
    assert first.num_rows > 0
    assert stream.rows_read <= 200_000 < table.num_rows   # a fraction of the input, not all of it
    rest = reader.read_all()
    whole = lm.rfm(table, observation_end="2024-01-01", threads=1, engine=engine).read_all()
    assert pa.concat_tables([pa.Table.from_batches([first], schema=rest.schema), rest]).equals(whole)


# --- 4. generate fails fast when memory or disk cannot hold the rows -----------------------

def test_generate_too_many_rows_fails_fast(tmp_path):
    # Before: minutes of planning, then the OOM killer. Now: one line, before any planning.
    out = tmp_path / "orders.arrow"
    child = run_child(None, "-m", "loyaltymetrics", "generate", out, "--rows", "1e12", "-q", timeout=60)
    assert child.returncode == 1, child.stderr
    line, = child.stderr.strip().splitlines()
    assert "on disk" in line or "of memory" in line, line
    assert not list(tmp_path.iterdir())   # nothing written


def test_generate_checks_the_plans_memory_up_front(tmp_path):
    child = run_child("""
        import sys, loyaltymetrics as lm
        try:
            lm.generate(sys.argv[1], rows=10**11)
        except lm.ResourceError as error:
            print(error)
    """, tmp_path / "orders.arrow", limit_mb=700, timeout=60)
    assert child.returncode == 0, child.stderr[-2000:]
    assert "GiB of memory" in child.stdout, child.stdout
    assert not list(tmp_path.iterdir())


def test_generate_checks_the_disk_up_front(tmp_path):
    with pytest.raises(lm.ResourceError, match="on disk") as error:
        lm.generate(tmp_path / "orders.arrow", rows=10**13, merchants_count=10)
    assert error.value.source == str(tmp_path / "orders.arrow")
    with pytest.raises(ValueError, match="int32"):
        lm.generate(tmp_path / "orders.arrow", rows=10**15)
    assert not list(tmp_path.iterdir())


# --- 5. a FIFO (or any non-regular file) is refused, never waited on ------------------------

@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "orders.fifo"
    os.mkfifo(path)
    done = threading.Event()

    def unblock():   # a reader stuck on the FIFO gets EOF after a while: the test fails, not hangs
        if not done.wait(20):
            with open(path, "wb"):
                pass

    watchdog = threading.Thread(target=unblock, daemon=True)
    watchdog.start()
    yield path
    done.set()
    watchdog.join()


def test_fifo_orders_or_merchants_are_refused(fifo, generated):
    for call in (lambda: lm.compute(fifo), lambda: lm.compute(generated[0], fifo),
                 lambda: lm.rfm(fifo, observation_end="2024-01-01").read_all(), lambda: lm.cohorts(fifo)):
        with pytest.raises(lm.InputError, match="FIFO") as error:
            call()
        assert error.value.source == str(fifo)
        assert not isinstance(error.value, lm.CorruptInputError)


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_devices_are_refused(device):
    with pytest.raises(lm.InputError, match="character device"):
        lm.compute(device)


def test_sockets_are_refused(tmp_path):
    import socket

    path = tmp_path / "orders.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        with pytest.raises(lm.InputError, match="a socket, not a regular file"):
            lm.compute(path)
        orders = write(orders_table(100), tmp_path / "orders.arrow")
        with pytest.raises(lm.InputError, match="a socket") as error:
            lm.compute(orders, path)
        assert error.value.source == str(path)


def test_fifo_at_the_command_line_is_one_line(fifo):
    child = run_child(None, "-m", "loyaltymetrics", "compute", fifo, "-q", timeout=60)
    assert child.returncode == 1
    line, = child.stderr.strip().splitlines()
    assert "is a FIFO (named pipe), not a regular file" in line


# --- 6. small record batches are coalesced ---------------------------------------------

@pytest.mark.parametrize("source", ["ipc_file", "ipc_stream", "table", "reader"])
def test_one_row_batches_reach_the_kernel_coalesced(tmp_path, source):
    table = orders_table(30_000)
    if source in ("ipc_file", "ipc_stream"):
        orders = write(table, tmp_path / "small", source, batch_rows=1)
    elif source == "table":
        orders = pa.Table.from_batches(table.to_batches(max_chunksize=1))
    else:
        orders = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=1))
    batches = list(inputs.order_batches(orders))
    assert len(batches) <= -(-table.num_rows // inputs.COALESCE_ROWS) + 1   # was one per row
    assert [b.first_row for b in batches] == list(np.cumsum([0] + [len(b) for b in batches[:-1]]))
    assert np.array_equal(np.concatenate([b.amount for b in batches]), table.column("amount").to_numpy())


def test_coalesced_batches_give_the_same_results_and_errors(tmp_path):
    table = orders_table(40_000)
    one = write(table, tmp_path / "one.arrow")
    small = write(table, tmp_path / "small.arrow", batch_rows=3)
    mixed = tmp_path / "mixed.arrow"
    sizes = [1, 2, 9000, 1, 1, 20_000, 5] * 2   # small runs between batches too large to merge
    edges = np.minimum(np.cumsum([0] + sizes), table.num_rows)
    with pa.OSFile(str(mixed), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        for lo, hi in zip(edges, edges[1:]):
            if hi > lo:
                writer.write_table(table.slice(lo, hi - lo))
    for threads in (1, 2):
        expected = lm.compute(one, threads=threads, by=["merchant"], period="month")
        for path in (small, mixed):
            assert lm.compute(path, threads=threads, by=["merchant"], period="month", chunk_rows=7000).equals(expected)
            assert lm.cohorts(path, threads=threads).equals(lm.cohorts(one, threads=threads))
    # An error inside a merged batch names its row in the file.
    amount = table.column("amount").to_numpy().copy()
    amount[12_345] = -1
    bad = write(table.set_column(3, "amount", pa.array(amount)), tmp_path / "bad.arrow", batch_rows=1)
    with pytest.raises(lm.NegativeAmountError) as error:
        lm.compute(bad)
    assert (error.value.source, error.value.row) == (str(bad), 12_345)


# --- 7. cumulative revenue that leaves int64 ----------------------------------------------

def _orders(merchant, customer, ts, amount):
    return pa.table({
        "merchant_id": pa.array(merchant, pa.int64()), "customer_id": pa.array(customer, pa.int64()),
        "order_ts": pa.array(ts, pa.timestamp("us", tz="UTC")), "amount": pa.array(amount, pa.int64()),
    })


BIG = 5 * 10**18   # fits int64 (9.2e18); two of them do not
T22, T23 = dt.datetime(2022, 3, 1), dt.datetime(2023, 3, 1)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("engine", ["cython", "numba"])
def test_cumulative_revenue_overflow_is_a_typed_error(engine, threads):
    # One store-customer, one order a year: each cell fits, its running sum does not.
    # The kernel names the row, as compute does for its sums.
    one = _orders([1, 1], [7, 7], [T22, T23], [BIG, BIG])
    with pytest.raises(OverflowError):
        reference_cohorts(one, period="year")
    with pytest.raises(lm.AmountOverflowError) as error:
        lm.cohorts(one, period="year", engine=engine, threads=threads, chunk_rows=1)
    assert error.value.row == 1 and str(BIG) in str(error.value)
    # Two store-customers of one cohort: only the cohort's cumulative sum overflows, no row does.
    two = _orders([1, 1, 1], [1, 2, 2], [T22, T22, T23], [BIG, 1, BIG])
    with pytest.raises(OverflowError):
        reference_cohorts(two, period="year")
    with pytest.raises(lm.AmountOverflowError, match="cumulative_revenue"):
        lm.cohorts(two, period="year", engine=engine, threads=threads, chunk_rows=1)
    # Just below the limit it is exact, and equal to the reference.
    fits = _orders([1, 1], [7, 7], [T22, T23], [BIG, 2**63 - 1 - BIG])
    got = lm.cohorts(fits, period="year", engine=engine, threads=threads).column("cumulative_revenue").to_pylist()
    assert got == [row["cumulative_revenue"] for row in reference_cohorts(fits, period="year")]
    assert got[-1] == 2**63 - 1


@pytest.mark.parametrize("threads", [2, 3])
def test_corrupt_parquet_row_group_gives_the_one_thread_error(tmp_path, threads):
    # Garbage in the compressed pages of row group 5 (of 15): whether worker threads decode it
    # ahead of the scan or one thread streams it, the error is the same, at the group's first row,
    # after every row before it was scanned.
    table = orders_table(300_000)
    path = tmp_path / "orders.parquet"
    pq.write_table(table, path, row_group_size=20_000, compression="snappy")
    column = pq.ParquetFile(path).metadata.row_group(5).column(2)   # order_ts
    start = column.data_page_offset + column.total_compressed_size // 2
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(bytes(range(256)) * 16)

    def error(threads):
        with pytest.raises(lm.InputError) as caught:
            lm.compute(str(path), threads=threads, chunk_rows=7_000)
        return type(caught.value), caught.value.row, str(caught.value)

    expected = error(1)
    assert expected[0] is lm.CorruptInputError and expected[1] == 100_000, expected
    assert error(threads) == expected


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_parquet_decoding_runs_a_bounded_number_of_rows_ahead(tmp_path, monkeypatch, threads):
    # Worker threads decode row groups ahead of the batches taken, up to a round of the driver
    # (threads * PARQUET_AHEAD_ROWS rows) or `threads` row groups, whichever is more: memory
    # holds that many decoded rows beyond the batch in hand, however large the file, and the
    # batches come in file order, whole.
    table = orders_table(300_000)
    path = tmp_path / "orders.parquet"
    pq.write_table(table, path, row_group_size=10_000)   # 30 row groups, none coalesced
    monkeypatch.setattr(inputs, "PARQUET_AHEAD_ROWS", 15_000)
    started, lock = [], threading.Lock()
    read_group = inputs._read_group

    def traced(reader, group, columns):
        with lock:
            started.append(group)
        return read_group(reader, group, columns)

    monkeypatch.setattr(inputs, "_read_group", traced)
    ahead = max(threads if threads > 1 else 0, -(-threads * 15_000 // 10_000))   # row groups beyond
    rows = []
    for batch in inputs.order_batches(str(path), threads=threads):
        group = batch.first_row // 10_000
        with lock:
            assert max(started) <= group + ahead, (started, group)
        rows.append((batch.first_row, len(batch)))
    assert rows == [(g * 10_000, 10_000) for g in range(30)]
    assert sorted(started) == list(range(30))
    assert lm.compute(str(path), threads=threads).equals(lm.compute(table, threads=1))
