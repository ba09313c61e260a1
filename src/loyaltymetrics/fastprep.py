"""``prepare()``'s fast path for typed warehouse Parquet (SPEC §10): the same outputs without DuckDB's staging.

The common warehouse export — Parquet files with an integer merchant column (or the merchant from
``--merchant`` / the file name), an integer customer column, a timestamp (or date) ``order_ts``, an
integer or decimal ``amount`` and a boolean (or 0/1) ``reward`` or none, with ``--format generic`` and
none of the columns or options that need the general path's SQL (order keys, statuses, refunds,
currencies, FX, reward codes, a zone other than UTC for naive times) — has nothing to parse, group or
exclude: every row is an order. Here it is read with pyarrow, checked vectorised, mapped to dense ids
(a lookup table where the keys' range is small, a sort otherwise), sorted by (merchant_id,
customer_id, order_ts, input order) with ``_sort.grouped_order`` and written in the record batches the
general path writes, the mapping files (and an empty rejects file) by the same DuckDB ``COPY``: the
outputs are the general path's — byte for byte but for the unused bits after the last row of a
boolean bitmap, which DuckDB leaves set and pyarrow clears — and so is the report.

Whenever a row would be rejected or excluded (a null, a negative amount without ``refunds``, an
amount or timestamp out of range, a reward that is not 0/1, a guest), or a file or option is outside
this case, or the rows would not fit ``memory_limit``, :func:`prepare_fast` returns None before writing
anything and ``prepare`` takes the general path, which accounts for such rows by reason.
"""
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from . import convert as _convert
from . import progress as _progress
from .outputs import atomic_output
from .synthetic import ORDERS_SCHEMA

FAST_ROLES = ("merchant_id", "customer_id", "order_ts", "amount", "reward")
WRITE_ROWS = 122_880   # the rows per record batch DuckDB's sorted stream yields in the general path
# Peak memory a row, in grouped_order: the columns kept for the output (ids 4 + 4, order_ts 8, amount 8,
# reward 1) and the sort's packed key, permutation, gathered order_ts and bucketed customer key (8 each).
BYTES_PER_ROW = 64
BASE_BYTES = 64 << 20  # besides the rows: DuckDB's session for the mapping files, Arrow's pools
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
UNITS = {"s": 1_000_000, "ms": 1_000, "us": 1}


def prepare_fast(a):
    """The PrepareReport of ``prepare`` (its checked options ``a``, a ``convert._Options``), or None when
    the general path must run."""
    if (a.format != "generic" or a.code_re is not None or a.fx_table is not None
            or a.timezone.upper() not in ("UTC", "ETC/UTC")):
        return None
    plan = _plan(a)
    if plan is None:
        return None
    n = sum(rows for _, _, _, _, rows in plan)
    limit = _bytes(a.memory_limit)
    if n == 0 or limit is None or n * BYTES_PER_ROW + BASE_BYTES > limit:
        return None
    con = _session(a)
    if con is None:
        return None
    try:
        return _prepare(a, plan, n, con)
    finally:
        con.close()


def _session(a):
    """A DuckDB connection with the general path's settings (its COPY then writes the same Parquet bytes), or
    None if DuckDB refuses one of them: the general path says which."""
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        con.execute("SET preserve_insertion_order = false")
        con.execute(f"SET memory_limit = '{_convert._sql_text(a.memory_limit)}'")
        if a.threads:
            con.execute(f"SET threads = {int(a.threads)}")
        con.execute("SELECT 1").fetchall()
    except duckdb.Error:
        con.close()
        return None
    return con


def _prepare(a, plan, n, con):
    try:
        data = _read(plan, n, a)
        if data is None:
            return None
        merchant_keys, merchant_ids, customer, ts, amount, reward, offsets = data
        del data
        customer_keys, customer_ids = _dense_rank(customer)
        # The raw keys' array, no longer needed, holds the sort key: no fresh pages to fault in.
        order = _order(merchant_ids, customer_ids, ts, scratch=customer)
        del customer
    except (pa.ArrowException, OSError, MemoryError):
        # Nothing is written yet: an unreadable file gets the general path's error (CorruptInputError
        # naming it), and memory short here the general path's spilling sort.
        return None
    return _write(a, con, plan, offsets, merchant_keys, merchant_ids, customer_keys, customer_ids, ts, amount,
                  reward, order)


def _bytes(limit):
    """DuckDB's memory_limit text ("4GB", "512MiB", "2 GB") in bytes, or None if not understood."""
    import re

    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*", str(limit).lower())
    if not found:
        return None
    unit = found.group(2).rstrip("b")
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30,
             "ti": 1 << 40}.get(unit)
    return None if scale is None else float(found.group(1)) * scale


# --- which files and columns ---------------------------------------------------------

def _plan(a):
    """[(path, ParquetFile, {role: column}, merchant key or None, rows)] or None (the general path)."""
    import pyarrow.parquet as pq

    plan = []
    for path in a.files:
        try:
            if _convert._is_csv(path):
                return None
            parquet = pq.ParquetFile(str(path))
            schema = parquet.schema_arrow
        except Exception:  # the general path says what is wrong with the file
            return None
        merchant = a.merchant
        if a.filename_re is not None:
            merchant = _convert._filename_merchant(a.filename_re, path.name)
            if merchant is None:
                return None
        names = _select(schema, a.columns, merchant)
        if names is None:
            return None
        plan.append((path, parquet, names, merchant, parquet.metadata.num_rows))
    return plan


def _select(schema, columns, merchant):
    """{role: column} as ``_Stage._select`` chooses them for --format generic, or None unless every chosen
    role is one this path reads, with a type it reads."""
    by_lower = {}
    for name in schema.names:
        by_lower.setdefault(name.strip().lstrip("\ufeff").lower(), name)
    chosen = {}
    for role in _convert.ROLES:
        if role in columns:
            if columns[role] in schema.names:
                chosen[role] = columns[role]
            continue
        if role.lower() in by_lower:
            chosen[role] = by_lower[role.lower()]
    if merchant is not None:
        chosen.pop("merchant_id", None)
    required = set(_convert.REQUIRED) | set(columns) | ({"merchant_id"} if merchant is None else set())
    if merchant is not None:
        required.discard("merchant_id")
    if not required <= set(chosen) or not set(chosen) <= set(FAST_ROLES):
        return None
    for role, name in chosen.items():
        if len(schema.get_all_field_indices(name)) > 1:
            return None
        t = schema.field(name).type
        if role in ("merchant_id", "customer_id"):
            ok = pa.types.is_integer(t)
        elif role == "amount":   # decimals whose unscaled values fit int64 and that DECIMAL(38, 16) holds exactly
            ok = pa.types.is_integer(t) or (pa.types.is_decimal128(t) and t.precision <= 18 and t.scale <= 16)
        elif role == "order_ts":
            ok = pa.types.is_timestamp(t) or pa.types.is_date32(t) or pa.types.is_date64(t)
        else:
            ok = pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_null(t)
        if not ok:
            return None
    return chosen


# --- reading and checking ----------------------------------------------------------

def _read(plan, n, a):
    """The checked columns of every file in file order (= src_row order), or None if a row would be rejected
    or excluded: merchant keys and ids (int32), customer keys (int64), UTC microseconds and amounts in minor
    units (int64) and reward flags (bool), NumPy arrays of n rows.

    Row group by row group into arrays allocated once: Arrow's pool holds two row groups at a time (one
    converted, the next decoded), not the decoded file beside its copy."""
    merchant_from_column = plan[0][3] is None
    customer = np.empty(n, np.int64)
    ts = np.empty(n, np.int64)
    amount = np.empty(n, np.int64)
    reward = np.empty(n, np.bool_)
    merchant = np.empty(n, np.int64) if merchant_from_column else None
    outs = (("customer_id", customer),) + ((("merchant_id", merchant),) if merchant_from_column else ())
    offsets, file_keys = [0], []
    at = 0
    filled = [0] * len(plan)
    with _progress.bar(n, a.progress, desc="prepare: read") as bar:
        for index, table in _row_groups(plan, a.threads):
            names = plan[index][2]
            end = at + table.num_rows
            if end > n:
                return None
            if end == at:
                continue
            for role, out in outs:
                values = _integers(table.column(names[role]))
                if values is None:
                    return None
                out[at:end] = values
            cents = _cents(table.column(names["amount"]), a.scale)
            if cents is None:
                return None
            amount[at:end] = cents
            us = _timestamps(table.column(names["order_ts"]))
            if us is None:
                return None
            ts[at:end] = us
            if "reward" in names:
                flag = _flags(table.column(names["reward"]))
                if flag is None:
                    return None
                reward[at:end] = flag.to_numpy(zero_copy_only=False)
            else:
                reward[at:end] = False
            filled[index] += end - at
            bar.update(end - at)
            at = end
            del table
    for (_, _, _, key, rows), got in zip(plan, filled):
        if got != rows:
            return None
        offsets.append(offsets[-1] + rows)
        file_keys.append(key)
    pa.default_memory_pool().release_unused()
    if not a.refunds and amount.min() < 0:
        return None    # rejected as negative_amount
    if merchant_from_column:
        merchant_keys, merchant_ids = _dense_rank(merchant)
        del merchant
        if merchant_ids.dtype != np.int32:
            return None   # merchant_id is int32
    else:
        merchant_keys, merchant_ids = _text_merchants(file_keys, offsets, n)
    return merchant_keys, merchant_ids, customer, ts, amount, reward, offsets


def _row_groups(plan, threads):
    """(index in plan, the row group's columns) of every row group in file order; unless ``threads`` is 1,
    the next one is decoded (its columns in parallel) on a second thread while the caller converts this one."""
    jobs = [(index, group) for index, (_, parquet, _, _, _) in enumerate(plan)
            for group in range(parquet.metadata.num_row_groups)]

    def load(job):
        index, group = job
        parquet, names = plan[index][1], plan[index][2]
        return index, parquet.read_row_group(group, columns=list(dict.fromkeys(names.values())),
                                             use_threads=threads != 1)

    if threads == 1:
        yield from map(load, jobs)
        return
    yield from _ahead(load, jobs)


def _ahead(work, items):
    """``map(work, items)`` with the next item's work done on a second thread (it must release the GIL)."""
    if not items:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(work, items[0])
        for k in range(len(items)):
            result = pending.result()
            if k + 1 < len(items):
                pending = pool.submit(work, items[k + 1])
            yield result


def _integers(column):
    """int64 values of an integer column without nulls, or None (a null, or beyond int64)."""
    if column.null_count:
        return None
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if array.type != pa.int64():
        try:
            array = array.cast(pa.int64())
        except pa.ArrowInvalid:
            return None
    return array.to_numpy()


def _cents(column, scale):
    """The amounts in minor units as the general path computes them — ROUND(amount × scale), half away from
    zero, exact — or None (a null, or cents beyond int64: rejected as null_amount / amount_out_of_range)."""
    if column.null_count:
        return None
    t = column.type
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_decimal128(t):
        # The unscaled values: the low 64-bit words of the 128-bit ones (the high words are their sign).
        words = np.frombuffer(array.buffers()[1], dtype=np.int64).reshape(-1, 2)[array.offset:array.offset + len(array)]
        unscaled = words[:, 0]
        if not np.array_equal(words[:, 1], unscaled >> 63):
            return None
        value, digits = unscaled, t.scale
    else:
        value = _integers(column)
        if value is None:
            return None
        digits = 0
    # cents = value × scale / 10**digits: a multiplication when that is whole, else a division rounded half
    # away from zero (|value| < 10**18: no overflow on the way).
    power = 10 ** digits
    if scale % power == 0:
        unit = scale // power
        lo, hi = int(value.min()), int(value.max())
        if lo * unit < INT64_MIN or hi * unit > INT64_MAX:
            return None
        return value * unit if unit != 1 else value
    divisor = power // scale
    quotient, remainder = np.divmod(np.abs(value), divisor)
    quotient += 2 * remainder >= divisor
    return np.where(value < 0, -quotient, quotient)


def _timestamps(column):
    """UTC microseconds of a timestamp/date column, all in [1970, 2263), or None (a null, out of range, or
    naive values the zone would move: only UTC reaches here, where naive is UTC)."""
    if column.null_count:
        return None
    t = column.type
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_date32(t):
        raw, mult, div = array.view(pa.int32()).to_numpy(), 86_400_000_000, 1
    elif pa.types.is_date64(t):
        raw, mult, div = array.view(pa.int64()).to_numpy(), 1_000, 1
    elif t.unit == "ns":
        raw, mult, div = array.view(pa.int64()).to_numpy(), 1, 1_000
    else:
        raw, mult, div = array.view(pa.int64()).to_numpy(), UNITS[t.unit], 1
    lo, hi = int(raw.min()), int(raw.max())
    # The general path: in range when 0 <= us < MAX_US, us = raw * mult or floor(raw / 1000) for ns.
    if lo < 0 or (hi * mult) // div >= _convert.MAX_US:
        return None
    if div != 1:
        return raw // div
    return raw.astype(np.int64) * mult if mult != 1 else raw


def _flags(column):
    """Reward flags as an Arrow boolean array without nulls (bool: null is false; integers: 1 true, 0 or null
    false), or None (another integer: rejected as unparsable_reward)."""
    t = column.type
    if pa.types.is_null(t):
        return pa.array(np.zeros(len(column), np.bool_))
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_boolean(t):
        return array.fill_null(False) if array.null_count else array
    try:
        values = array.cast(pa.int64()).fill_null(0).to_numpy()
    except pa.ArrowInvalid:
        return None
    if values.min() < 0 or values.max() > 1:
        return None
    return pa.array(values == 1)


# --- ids and order -------------------------------------------------------------------

def _dense_rank(values):
    """(the distinct keys ascending as int64, each row's 1-based rank among them: int32 when it fits)."""
    n = len(values)
    lo, hi = int(values.min()), int(values.max())
    small = np.int32 if n < 1 << 31 else np.int64   # ranks are at most n
    if 0 <= lo and hi < max(2 * n, 1 << 16):
        # A presence table and its running count: two passes, no sort (keys index it directly).
        present = np.zeros(hi + 1, np.bool_)
        present[values] = True
        keys = np.flatnonzero(present)
        return keys.astype(np.int64, copy=False), np.cumsum(present, dtype=small)[values]
    if hi - lo < max(2 * n, 1 << 16):
        offset = values - np.int64(lo)
        present = np.zeros(hi - lo + 1, np.bool_)
        present[offset] = True
        keys = np.flatnonzero(present).astype(np.int64) + np.int64(lo)
        return keys, np.cumsum(present, dtype=small)[offset]
    keys = np.unique(values)
    ids = np.searchsorted(keys, values)
    ids += 1
    return keys, ids.astype(small, copy=False)


def _text_merchants(file_keys, offsets, n):
    """Merchant keys of --merchant / --merchant-from-filename: one per file, ids in natural order of the
    keys of the files with rows."""
    with_rows = {key for key, start, end in zip(file_keys, offsets, offsets[1:]) if end > start}
    keys = sorted(with_rows, key=_convert._natural_key)
    number = {key: i for i, key in enumerate(keys, start=1)}
    ids = np.empty(n, np.int32)
    for key, start, end in zip(file_keys, offsets, offsets[1:]):
        if end > start:
            ids[start:end] = number[key]
    return keys, ids


def _order(merchant_ids, customer_ids, ts, scratch=None):
    """Indices sorting rows stably by (merchant_id, customer_id, order_ts): ties keep input order.

    ``_sort.grouped_order`` sorts (merchant, customer, row) packed in 64 bits, then each store-customer's
    rows by order_ts: an insertion sort for short runs, NumPy's stable argsort for long ones — slow for
    the customers with thousands of orders real data has. The bits the packed key leaves free carry the
    top bits of order_ts (a time bucket, monotone in order_ts) below the customer, so that runs are rows
    of one customer in one bucket: short, and the order the same. ``scratch``: an int64 array of n rows
    free to overwrite (for that key; then the packed keys, and the order returned is a view of it).
    """
    from . import _sort

    n = len(ts)
    if n == 0:
        return np.empty(0, np.int64)
    mbits = (int(merchant_ids.max()) - int(merchant_ids.min())).bit_length()
    clo = int(customer_ids.min())
    cbits = (int(customer_ids.max()) - clo).bit_length()
    tlo = int(ts.min())
    tbits = (int(ts.max()) - tlo).bit_length()
    spare = min(64 - mbits - cbits - (n - 1).bit_length(), tbits)
    key = customer_ids
    if spare > 0:
        key = scratch if scratch is not None else np.empty(n, np.int64)
        np.copyto(key, customer_ids, casting="safe")
        key -= np.int64(clo)
        key <<= np.int64(spare)
        for start in range(0, n, 1 << 20):   # in slices: no second array of n rows
            bucket = ts[start:start + (1 << 20)] - np.int64(tlo)
            bucket >>= np.int64(tbits - spare)
            key[start:start + (1 << 20)] |= bucket
    order = _sort.grouped_order(merchant_ids, key, ts, overwrite=key is not customer_ids)
    if order is None:
        order = _sort.stable_order([merchant_ids, customer_ids, ts])
    return order


# --- writing -------------------------------------------------------------------------

def _write(a, con, plan, offsets, merchant_keys, merchant_ids, customer_keys, customer_ids, ts, amount, reward,
           order):
    n = len(order)
    files = a.files
    currency = a.currency.upper() if a.currency else None
    register_merchants(con, merchant_keys, int_keys=plan[0][3] is None)
    con.register("customer_arrow", pa.table({
        "customer_key": pa.array(customer_keys, pa.int64()),
        "customer_id": pa.array(np.arange(1, len(customer_keys) + 1, dtype=np.int64), pa.int64()),
    }))
    con.execute("CREATE TABLE customer_map AS SELECT * FROM customer_arrow")
    con.unregister("customer_arrow")
    copy_mappings(con, a)
    duplicates = _convert._Duplicates()
    write_sorted(a, merchant_ids, customer_ids, ts, amount, reward, order, currency, duplicates)
    warnings, likely = [], 0
    if duplicates.groups:
        file_idx = int(np.searchsorted(offsets, duplicates.first, side="right")) - 1
        file_row = duplicates.first - offsets[file_idx]
        warnings.append(
            f"{duplicates.rows:,} rows in {duplicates.groups:,} groups share merchant, customer and order_ts: "
            f"likely line items of one order each, counted here as separate orders; map an order key "
            f"(--columns order_id=...) to count each order once; first: {files[file_idx]}: row {file_row}")
        likely = duplicates.rows - duplicates.groups
    merchants_table = None
    if a.merchants_table is not None:
        merchants_table = _convert._write_merchants(con, a.merchants_table, a.merchants, a.merchants_out,
                                                    a.inputs, warnings)
    if a.rejects:
        _write_no_rejects(con, {role for _, _, names, _, _ in plan for role in names}, a)
    return _convert.PrepareReport(
        output=str(a.output), merchant_ids=str(a.merchant_ids), customer_ids=str(a.customer_ids),
        rejects=str(a.rejects) if a.rejects else None,
        rows_read=n, rows_written=n, rejected={}, excluded={}, warnings=warnings, merchants=len(merchant_keys),
        customers=len(customer_keys), merchants_table=merchants_table, files=[str(f) for f in files],
        likely_line_items=likely, seconds=time.perf_counter() - a.started, currency=currency)


# Shared with csvprep (the CSV fast path): the mapping files and the sorted output as the general path
# writes them.

def register_merchants(con, merchant_keys, int_keys):
    """The table merchant_map (merchant_key, merchant_id int32): ids 1.. in the order of ``merchant_keys``."""
    con.register("merchant_arrow", pa.table({
        "merchant_key": pa.array(merchant_keys, pa.int64() if int_keys else pa.string()),
        "merchant_id": pa.array(np.arange(1, len(merchant_keys) + 1, dtype=np.int32), pa.int32()),
    }))
    con.execute("CREATE TABLE merchant_map AS SELECT * FROM merchant_arrow")
    con.unregister("merchant_arrow")


def copy_mappings(con, a):
    """The id mapping files from the tables merchant_map and customer_map, by the general path's COPY."""
    _convert._copy_private(con, "SELECT * FROM merchant_map ORDER BY merchant_id", a.merchant_ids, a.inputs,
                           what="merchant id mapping")
    _convert._copy_private(con, "SELECT * FROM customer_map ORDER BY customer_id", a.customer_ids, a.inputs,
                           what="customer id mapping")


def write_sorted(a, merchant_ids, customer_ids, ts, amount, reward, order, currency, duplicates=None):
    """The output file: the rows in ``order``, in the general path's record batches; ``duplicates`` (a
    ``convert._Duplicates``) counts neighbours sharing (merchant, customer, order_ts) on the way."""
    n = len(order)
    schema = ORDERS_SCHEMA.with_metadata({_convert.CURRENCY_KEY: currency.encode()}) if currency \
        else ORDERS_SCHEMA
    utc = pa.timestamp("us", tz="UTC")
    rows_table = pa.Table.from_arrays([
        pa.array(merchant_ids, pa.int32()), pa.array(customer_ids), pa.array(ts, pa.int64()).view(utc),
        pa.array(amount, pa.int64()), pa.array(reward, pa.bool_())],
        names=schema.names)
    with atomic_output(a.output, inputs=a.inputs, what="output") as tmp, \
            pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer, \
            _progress.bar(n, a.progress, desc="prepare: sort and write") as bar:
        def gathered(start):
            rows = order[start:start + WRITE_ROWS]
            taken = rows_table.take(pa.array(rows))
            columns = [c.chunk(0) if c.num_chunks == 1 else c.combine_chunks() for c in taken.columns]
            columns[1] = columns[1].cast(pa.int64())   # int32 ids while sorting, int64 in the output
            return rows, columns

        # The next batch is gathered on a second thread while this one is written (both release the GIL).
        starts = list(range(0, n, WRITE_ROWS))
        for rows, columns in (map(gathered, starts) if a.threads == 1 else _ahead(gathered, starts)):
            writer.write_batch(pa.record_batch(columns, schema=schema))
            if duplicates is not None:
                duplicates.add(columns[0].to_numpy(), columns[1].to_numpy(),
                               columns[2].view(pa.int64()).to_numpy(), rows)
            bar.update(len(rows))


def _write_no_rejects(con, read, a):
    """The rejects file of a run that rejected nothing: ``_write_rejects``'s columns and types, no row
    (``read``: the roles read from any file)."""
    from pathlib import Path

    roles = [r for r in _convert.ROLES if r in read or r in ("merchant_id", "customer_id")]
    # As the general path's query, the Parquet writer marks every column optional (its ``row`` comes through
    # the ``staged`` view, whose statistics may hold a null).
    columns = ", ".join(["NULL::VARCHAR AS file", "NULL::BIGINT AS row", "NULL::VARCHAR AS reason",
                         "NULL::BIGINT AS line_number",
                         "NULL::VARCHAR AS line"] + [f"NULL::VARCHAR AS {role}" for role in roles])
    fmt = "CSV" if Path(a.rejects).suffix.lower() == ".csv" else "PARQUET"
    _convert._copy_private(con, f"SELECT {columns} WHERE false", a.rejects, a.inputs, fmt=fmt,
                           what="rejects file")
