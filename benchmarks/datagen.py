"""Fast synthetic orders for benchmarks, generated already sorted (no sort pass)."""
import numpy as np
import pyarrow as pa

START = np.datetime64("2020-01-01", "us").astype(np.int64)
END = np.datetime64("2024-01-01", "us").astype(np.int64)


def synthetic_orders(n_rows, seed=0, n_merchants=None):
    """~n_rows orders sorted by (merchant_id, customer_id, order_ts), as a pyarrow Table."""
    rng = np.random.default_rng(seed)
    orders_per_customer = rng.geometric(0.6, int(n_rows / 1.6) + 1)
    cut = np.searchsorted(np.cumsum(orders_per_customer), n_rows)
    orders_per_customer = orders_per_customer[: cut + 1]
    orders_per_customer[-1] -= orders_per_customer.sum() - n_rows
    orders_per_customer = orders_per_customer[orders_per_customer > 0]
    n_customers = len(orders_per_customer)
    n_merchants = n_merchants or max(1, n_customers // 2000)
    # Heavy-tailed merchant sizes; customers numbered in order, so ids ascend within a merchant.
    weights = rng.pareto(1.2, n_merchants) + 1
    merchant_of_customer = np.sort(rng.choice(n_merchants, n_customers, p=weights / weights.sum())).astype(np.int64)
    row_customer = np.repeat(np.arange(n_customers, dtype=np.int64), orders_per_customer)
    # Each customer's first order uniform over the window, later ones after exponential gaps.
    gaps = rng.exponential(120 * 86_400e6, n_rows).astype(np.int64)
    starts = np.cumsum(orders_per_customer) - orders_per_customer
    gaps[starts] = 0
    within = np.cumsum(gaps)
    within -= np.repeat(within[starts], orders_per_customer)
    first = rng.integers(START, END, n_customers)
    ts = np.minimum(np.repeat(first, orders_per_customer) + within, END - 1)
    return pa.table({
        "merchant_id": pa.array(merchant_of_customer[row_customer] + 1, pa.int64()),
        "customer_id": pa.array(row_customer * 7 + 3, pa.int64()),
        "order_ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "amount": pa.array(rng.integers(500, 25_000, n_rows), pa.int64()),
        "reward": pa.array(rng.random(n_rows) < 0.15, pa.bool_()),
    })


def write_arrow(table, path, batch_rows=1 << 20):
    """Uncompressed Arrow IPC file (memory-mappable, zero-copy)."""
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=batch_rows)
    return str(path)
