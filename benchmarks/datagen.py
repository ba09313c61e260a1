"""Fast synthetic orders for benchmarks, generated already sorted (no sort pass).

``synthetic_orders`` builds a table in memory; ``write_orders_file`` streams
any number of rows to an uncompressed Arrow IPC file a block at a time, in
bounded memory, and reuses an existing file made with the same parameters.
"""
import json
import os
from pathlib import Path

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


# --- streaming generator ------------------------------------------------------

# Bump when the streamed rows change for the same parameters, so stale files are rebuilt.
GENERATOR = "loyaltymetrics-benchmarks/streamed-orders/1"
METADATA_KEY = b"loyaltymetrics.benchmark"
ORDERS_PER_CUSTOMER_P = 0.6       # geometric: mean 1 / 0.6 ≈ 1.67 orders per store-customer
CUSTOMERS_PER_MERCHANT = 2000     # on average
MEAN_GAP_DAYS = 120               # between a store-customer's consecutive orders
REWARD_SHARE = 0.15


def orders_schema(key_type=pa.int32()):
    """SPEC §2 canonical layout: int32/int64 keys, timestamp[us, UTC], int64 cents, bool reward."""
    return pa.schema([
        ("merchant_id", key_type),
        ("customer_id", key_type),
        ("order_ts", pa.timestamp("us", tz="UTC")),
        ("amount", pa.int64()),
        ("reward", pa.bool_()),
    ])


def default_merchants(n_rows):
    """About 2,000 store-customers a merchant: merchants grow with the rows, as in a real network."""
    return max(1, round(int(n_rows) * ORDERS_PER_CUSTOMER_P / CUSTOMERS_PER_MERCHANT))


def streamed_orders(n_rows, seed=0, customers_per_block=1 << 19, key_type=pa.int32(), n_merchants=None):
    """Yield record batches of exactly ``n_rows`` orders in total, sorted by (merchant_id, customer_id, order_ts).

    Memory is bounded by one block (``customers_per_block`` store-customers,
    about 1.67 times as many rows) plus one weight per merchant, whatever
    ``n_rows`` is. Merchant sizes are heavy-tailed (Pareto weights over
    ``n_merchants`` merchants, by default ``default_merchants(n_rows)``); a
    store-customer belongs to the merchant whose share of the rows holds its
    first order, so merchants ascend through the file. ``customer_id`` counts from 1 within each
    merchant, so the same id recurs at many merchants (different
    store-customers, SPEC §4). Orders run over 2020-2023 UTC; each
    store-customer has 1 + a geometric number of further orders at
    exponential gaps (some land on the same clipped last instant, i.e. tie).
    """
    n_rows = int(n_rows)
    key_dtype = np.dtype(key_type.to_pandas_dtype())
    rng = np.random.default_rng([seed, 0])
    n_merchants = int(n_merchants or default_merchants(n_rows))
    weights = rng.pareto(1.2, n_merchants) + 1
    # Merchant m owns rows [row_edge[m-1], row_edge[m]) of the file.
    row_edge = np.cumsum(weights / weights.sum() * n_rows)
    first_customer = np.full(n_merchants, -1, dtype=np.int64)  # global index of each merchant's first customer
    if np.iinfo(key_dtype).max < n_merchants:
        raise ValueError(f"{n_merchants:,} merchants do not fit in {key_type}")
    schema = orders_schema(key_type)
    rows_done = customers_done = 0
    block = 0
    while rows_done < n_rows:
        block += 1
        rng = np.random.default_rng([seed, block])
        per_customer = rng.geometric(ORDERS_PER_CUSTOMER_P, customers_per_block)
        ends = np.cumsum(per_customer)
        if rows_done + ends[-1] >= n_rows:  # last block: cut to exactly n_rows
            keep = int(np.searchsorted(ends, n_rows - rows_done)) + 1
            per_customer = per_customer[:keep]
            per_customer[-1] -= rows_done + per_customer.sum() - n_rows
            ends = np.cumsum(per_customer)
        n_customers, n = len(per_customer), int(ends[-1])
        starts = ends - per_customer                      # first row of each customer, within the block
        global_customer = customers_done + np.arange(n_customers, dtype=np.int64)
        merchant = np.minimum(np.searchsorted(row_edge, rows_done + starts, side="right"), n_merchants - 1)
        new = np.flatnonzero(first_customer[merchant] < 0)
        if len(new):  # merchants whose first customer is in this block
            m, at = np.unique(merchant[new], return_index=True)
            first_customer[m] = global_customer[new[at]]
        customer_id = global_customer - first_customer[merchant] + 1
        if customer_id.max() > np.iinfo(key_dtype).max:
            raise ValueError(f"a merchant has more customers than {key_type} holds; use int64 keys")

        gaps = rng.exponential(MEAN_GAP_DAYS * 86_400e6, n).astype(np.int64)
        gaps[starts] = 0
        within = np.cumsum(gaps)
        within -= np.repeat(within[starts], per_customer)
        first_ts = rng.integers(START, END, n_customers)
        ts = np.minimum(np.repeat(first_ts, per_customer) + within, END - 1)
        yield pa.RecordBatch.from_arrays([
            pa.array(np.repeat(merchant + 1, per_customer).astype(key_dtype)),
            pa.array(np.repeat(customer_id, per_customer).astype(key_dtype)),
            pa.array(ts, pa.timestamp("us", tz="UTC")),
            pa.array(rng.integers(500, 25_000, n), pa.int64()),
            pa.array(rng.random(n) < REWARD_SHARE),
        ], schema=schema)
        rows_done += n
        customers_done += n_customers


def dataset_parameters(n_rows, seed=0, key_type=pa.int32(), n_merchants=None):
    """What identifies a streamed data set: a file with the same parameters is reused."""
    return {"generator": GENERATOR, "rows": int(n_rows), "seed": int(seed), "key_type": str(key_type),
            "merchants": int(n_merchants or default_merchants(n_rows))}


def file_parameters(path):
    """The parameters stored in a streamed file's schema metadata, or None if absent or unreadable."""
    try:
        with pa.memory_map(str(path)) as source:
            metadata = pa.ipc.open_file(source).schema.metadata or {}
        parameters = json.loads(metadata[METADATA_KEY])
    except (OSError, pa.ArrowInvalid, KeyError, ValueError):
        return None
    # Files written before the merchant count was a parameter used the default (same rows).
    parameters.setdefault("merchants", default_merchants(parameters.get("rows", 0)))
    return parameters


def data_file_name(n_rows, seed=0, n_merchants=None):
    """The file name a data set is kept under in a data folder (the default merchant count is left out)."""
    merchants = f"-m{n_merchants}" if n_merchants else ""
    return f"orders-{int(n_rows)}{merchants}-seed{seed}-int32.arrow"


def estimated_file_bytes(n_rows, key_type=pa.int32()):
    """Size of the streamed Arrow IPC file: column bytes plus a little per-batch framing."""
    key = key_type.bit_width // 8
    return int(n_rows * (2 * key + 8 + 8 + 1 / 8) * 1.002) + (1 << 20)


def cached_orders_file(folder, n_rows, warm=True):
    """The path of ``n_rows`` generated orders in ``folder`` (written once, reused), read through once
    when ``warm`` so that timed passes find it in the page cache."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = str(folder / data_file_name(int(n_rows)))
    write_orders_file(path, int(n_rows))
    if warm:
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    return path


def write_orders_file(path, n_rows, seed=0, key_type=pa.int32(), log=None, n_merchants=None):
    """Stream ``n_rows`` orders to an uncompressed Arrow IPC file at ``path``; reuse it if it matches.

    Returns ``(path, reused)``. The file is written under a temporary name
    and renamed when complete, so a stopped run never leaves a file that
    looks finished.
    """
    path = Path(path)
    parameters = dataset_parameters(n_rows, seed, key_type, n_merchants)
    if path.exists() and file_parameters(path) == parameters:
        return str(path), True
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    schema = orders_schema(key_type).with_metadata({METADATA_KEY: json.dumps(parameters, sort_keys=True)})
    rows = 0
    with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for batch in streamed_orders(n_rows, seed, key_type=key_type, n_merchants=n_merchants):
            writer.write_batch(batch)
            rows += batch.num_rows
            if log is not None:
                log(rows)
    os.replace(partial, path)
    return str(path), False
