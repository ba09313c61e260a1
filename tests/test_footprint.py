"""What compute() costs beyond the kernel: no copy of a memory-mapped file, no pandas import."""
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest


def test_compute_on_a_memory_mapped_file_allocates_far_less_than_the_file(tmp_path):
    n = 2_000_000
    rng = np.random.default_rng(0)
    customers = np.sort(rng.integers(0, n // 2, n))
    reward = pa.array(rng.random(n) < 0.2).to_pylist()
    reward[::7] = [None] * len(reward[::7])  # nulls make the reader build a cleared bitmap (n / 8 bytes)
    table = pa.table({
        "merchant_id": pa.array(customers // 5000, pa.int64()),
        "customer_id": pa.array(customers, pa.int64()),
        "order_ts": pa.array(np.full(n, 1_650_000_000_000_000), pa.timestamp("us", tz="UTC")),
        "amount": pa.array(rng.integers(0, 10_000, n), pa.int64()),
        "reward": pa.array(reward, pa.bool_()),
    })
    path = tmp_path / "orders.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=250_000)
    file_bytes = path.stat().st_size
    script = textwrap.dedent(f"""
        import tracemalloc
        import pyarrow as pa, loyaltymetrics as lm
        tracemalloc.start()  # NumPy reports its allocations here; Arrow's pool counts its own
        out = lm.compute({str(path)!r}, by=["merchant"], period="month")
        assert sum(out.column("orders").to_pylist()) == {n}
        print(pa.default_memory_pool().max_memory(), tracemalloc.get_traced_memory()[1])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    arrow_peak, python_peak = map(int, result.stdout.split())
    # The data is ~66 MB in batches of ~8 MB; what is allocated is the cleared
    # reward bitmaps, the kernel's accumulator and the small output.
    assert arrow_peak < file_bytes / 20, (arrow_peak, file_bytes)
    assert python_peak < file_bytes / 20, (python_peak, file_bytes)


def test_compute_does_not_import_pandas(tmp_path):
    """pyarrow imports pandas on the first pa.array(); that alone costs more than 10M rows of kernel."""
    import pyarrow.parquet as pq

    from loyaltymetrics.synthetic import generate

    made = generate(tmp_path / "generated.arrow", rows=30_000, seed=1, merchants_count=8)
    orders = pa.ipc.open_file(made.orders_path).read_all()
    merchants = pq.read_table(made.merchants_path)
    reward = orders.column("reward").to_pylist()
    reward[::3] = [None] * len(reward[::3])
    orders = orders.set_column(4, "reward", pa.array(reward, pa.bool_()))
    with pa.OSFile(str(tmp_path / "o.arrow"), "wb") as sink, pa.ipc.new_file(sink, orders.schema) as writer:
        writer.write_table(orders, max_chunksize=1000)
    pq.write_table(merchants, tmp_path / "m.parquet")
    script = textwrap.dedent(f"""
        import sys, loyaltymetrics as lm
        for period in ("year", "all"):
            lm.compute({str(tmp_path / "o.arrow")!r}, {str(tmp_path / "m.parquet")!r},
                       by=["merchant", "industry", "country", "size"], period=period)
        # Optional heavy libraries are imported only by the features that need them: SciPy
        # (lm.clv) also hangs at start-up under an address-space limit (test_faults.py).
        print([name for name in ("pandas", "scipy", "matplotlib", "duckdb") if name in sys.modules])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc/self/status")
@pytest.mark.parametrize("threads", [1, 2])
def test_rss_stays_flat_while_a_memory_mapped_file_is_scanned(tmp_path, threads):
    """Pages of rows already scanned are let go: RSS holds the rows in flight, not the file.

    In flight are ``threads * chunk_rows`` rows (here 200,000 rows, ~6 MB at most).
    """
    n = 4_000_000
    table = pa.table({
        "merchant_id": pa.array(np.arange(n) // 40_000, pa.int64()),
        "customer_id": pa.array(np.arange(n), pa.int64()),
        "order_ts": pa.array(np.full(n, 1_650_000_000_000_000), pa.timestamp("us", tz="UTC")),
        "amount": pa.array(np.ones(n, np.int64), pa.int64()),
    })
    path = tmp_path / "orders.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=100_000)
    file_bytes = path.stat().st_size
    script = textwrap.dedent(f"""
        import loyaltymetrics as lm
        def peak():  # VmHWM: this process's own high-water mark (ru_maxrss carries the parent's over exec)
            line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
            return int(line.split()[1]) * 1024
        before = peak()
        out = lm.compute({str(path)!r}, threads={threads}, chunk_rows=100_000)
        assert out.column("orders").to_pylist() == [{n}]
        print(before, peak())
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    before, after = map(int, result.stdout.split())
    # ~128 MB file in batches of ~3 MB: growth is the rows in flight and the kernel state.
    assert after - before < file_bytes / 4, (after - before, file_bytes)
