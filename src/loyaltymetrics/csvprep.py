"""``prepare()``'s fast path for CSV order exports with an order key (SPEC §10) — Shopify's "Export orders",
WooCommerce's order CSV, generic CSVs with ``order_id`` —: the general path's outputs without DuckDB's
staging.

These exports write each order's line items on neighbouring rows, the order-level fields (total,
e-mail, status, ...) on the first (or on every one). Here each file is read with the general path's
pyarrow CSV settings (the same rows, row numbers and nulls; smaller blocks), the files in parallel,
and per batch:

- ``_csvparse.order_runs`` cuts the rows into runs of one order key (trimmed) and hashes each run's
  (merchant, key); at the end no two runs may share a hash, so each order key is one run — the
  general path's "order key → one order wherever its rows are" holds (an equal hash, even a
  collision, sends the export to the general path);
- ``_csvparse.run_heads`` finds each run's head (its first carrier: a row with the order total) and
  the row of its customer (the first carrier with an e-mail, else the first row with one), as
  ``convert._classify`` chooses them;
- ``_csvparse.parse_carriers`` reads every carrier's timestamp and amounts in the fixed forms the
  general path reads by position (``convert._ts_sql``), to exact cents;
- the low-cardinality fields (status, payment method, currency, discount code) and the e-mails go
  through the general path's own SQL expressions, evaluated by DuckDB once per distinct value.

Heads are excluded as the general path excludes them (test, cancelled, status, full refund, guest), the
other rows counted as line items, each reason with its count and first example. Customer ids number the
distinct written customers in DuckDB's order of their keys; the rows are sorted and written by
``fastprep``'s writer, the mapping files by the same DuckDB ``COPY``.

Anything the general path would reject (an unparsable or unusual timestamp or amount, a negative amount,
a null key or currency, an order without a total, a malformed CSV line), anything outside this case
(a merchant or reward column, a boolean test column, FX, --keep-guests, amounts in minor units, naive
times outside UTC, an order key in two places, several currencies) or rows beyond ``memory_limit`` make :func:`prepare_csv` return None before
writing anything: ``prepare`` then takes the general path, which reports such rows by reason.
"""
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import convert as _convert
from . import fastprep as _fastprep
from . import progress as _progress

# The roles this path reads (a merchant column or a reward column: the general path).
ROLES_READ = ("order_id", "customer_id", "order_ts", "amount", "refunded", "currency", "status", "cancelled_at",
              "discount_code", "test")
# Bytes a written order holds until it is written (time, cents, reward, merchant id, customer id, the run
# hash) and grouped_order's 64 a row while sorting; the e-mails' bytes are counted as read.
BYTES_PER_ORDER = 40 + _fastprep.BYTES_PER_ROW


def prepare_csv(a):
    """The PrepareReport of ``prepare`` (its checked options ``a``, a ``convert._Options``), or None when
    the general path must run."""
    if a.fx_table is not None or a.keep_guests or a.scale != 100:
        return None
    plan = _plan(a)
    if plan is None:
        return None
    limit = _fastprep._bytes(a.memory_limit)
    if limit is None:
        return None
    con = _fastprep._session(a)
    if con is None:
        return None
    try:
        try:   # a zone DuckDB does not know: the general path's error
            con.execute(f"SET TimeZone = '{_convert._sql_text(a.timezone)}'")
        except Exception:  # noqa: BLE001 - any refusal sends the run to the general path
            return None
        return _prepare(a, plan, con, limit)
    finally:
        con.close()


# --- which files and columns ---------------------------------------------------------

def _plan(a):
    """[(path, {role: column}, merchant key)] or None (the general path)."""
    plan = []
    for path in a.files:
        try:
            if not _convert._is_csv(path):
                return None
            header = _convert._csv_header(path, _convert._delimiter(path))
        except Exception:  # noqa: BLE001 - the general path says what is wrong with the file
            return None
        merchant = a.merchant if a.filename_re is None else _convert._filename_merchant(a.filename_re, path.name)
        if merchant is None:   # a merchant column, or a file name the pattern does not match: the general path
            return None
        names = _select(header, a.columns, a.format)
        if names is None:
            return None
        plan.append((path, names, merchant))
    return plan


def _select(header, columns, fmt):
    """{role: column} as ``_Stage._select`` chooses them (the merchant given), or None unless every chosen
    role is one this path reads and the order key is among them."""
    by_lower = {}
    for name in header:
        by_lower.setdefault(name.strip().lstrip("\ufeff").lower(), name)
    preset = _convert.PRESETS[fmt]
    chosen = {}
    for role in _convert.ROLES:
        if role in columns:
            if columns[role] in header:
                chosen[role] = columns[role]
            continue
        for candidate in preset.get(role, ()):
            if candidate.lower() in by_lower:
                chosen[role] = by_lower[candidate.lower()]
                break
    chosen.pop("merchant_id", None)
    required = set(_convert.REQUIRED) | set(columns) | {"order_id"}
    if not required <= set(chosen) or not set(chosen) <= set(ROLES_READ):
        return None
    if "test" in chosen and (fmt != "shopify" or "test" in columns):   # a boolean, not Shopify's payment method
        return None
    if any(header.count(name) > 1 for name in chosen.values()):
        return None
    return chosen


# --- the general path's expressions on distinct values ---------------------------------------

class _Lookup:
    """The value of one of the general path's SQL expressions over a text column ``x``, for each row of an
    Arrow array: evaluated by DuckDB once per distinct value (cached)."""

    def __init__(self, con, expression):
        self.con, self.expression, self.cache = con, expression, {}

    def __call__(self, values):
        """A NumPy object array: the expression's value for each row of ``values`` (a string array)."""
        table, indices = self.coded(values)
        return table[indices]

    def coded(self, values):
        """(the expression's values, a NumPy object array, and each row's index into it)."""
        encoded = pc.dictionary_encode(values)
        dictionary = encoded.dictionary.to_pylist()
        missing = [v for v in dictionary + [None] if v not in self.cache]
        if missing:
            table = pa.table({"i": pa.array(range(len(missing)), pa.int64()), "x": pa.array(missing, pa.string())})
            self.con.register("lookup_arrow", table)
            try:
                got = self.con.execute(f"SELECT i, {self.expression} FROM lookup_arrow ORDER BY i").fetchall()
            finally:
                self.con.unregister("lookup_arrow")
            for (_, result), value in zip(got, missing):
                self.cache[value] = result
        table = np.array([self.cache[v] for v in dictionary] + [self.cache[None]], dtype=object)
        indices = encoded.indices.fill_null(len(dictionary)).to_numpy(zero_copy_only=False)
        return table, indices


# The general path's customer key of a text customer column (the e-mail trimmed and lower-cased).
CUSTOMER_SQL = _convert._customer_key_sql("x", _convert._email_sql("x"))


def _lookups(con, a):
    out = {
        "currency": _Lookup(con, _convert._currency_sql("x")),
        "status": _Lookup(con, _convert._status_sql(a.format, "lower(trim(CAST(x AS VARCHAR)))")),
        "test": _Lookup(con, _convert._test_payment_sql("x")),
    }
    if a.code_re is not None:
        out["reward"] = _Lookup(con, _convert._reward_code_sql(a.code_re, "x"))
    return out


# --- reading -----------------------------------------------------------------------------

def _read_ahead(items):
    """The items of an iterator, the next one taken on a second thread meanwhile (it must release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    done = object()
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(next, items, done)
        while True:
            item = pending.result()
            if item is done:
                return
            pending = pool.submit(next, items, done)
            yield item

BLOCK_BYTES = 4 << 20   # pyarrow holds ~40 blocks' worth while reading (620 MB at the general path's 16 MB)
READER_BYTES = 48 * BLOCK_BYTES   # a file's reader (measured: peak 155 MB at 4 MB blocks), one a worker


def _continuing(tail, batch, key, most=256):
    """How many rows at the start of ``batch`` go on with the order of ``tail`` (one order's rows: the same
    ``key`` column value, spaces trimmed as ``_csvparse.order_runs`` trims them), or None where that is not
    simple to tell (a null or non-ASCII key, or more than ``most`` rows)."""
    def trimmed(value):
        return value.strip(" ") if value is not None and value.isascii() else None

    order = trimmed(tail.column(key)[0].as_py())
    if order is None:
        return None
    keys = batch.column(key).slice(0, most + 1).to_pylist()
    for i, value in enumerate(keys):
        value = trimmed(value)
        if value is None:
            return None
        if value != order:
            return i
    return len(keys) if len(keys) <= most else None


def _buffers(array, valid=True):
    """(int32 offsets of the rows, data bytes, 0/1 validity bytes — or None without ``valid``) of a string
    array, for the kernel."""
    buffers = array.buffers()
    n = len(array)
    offsets = np.frombuffer(buffers[1], dtype=np.int32)[array.offset:array.offset + n + 1]
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None and buffers[2].size else \
        np.zeros(1, np.uint8)
    return offsets, data, _valid(array) if valid else None


def _valid(array):
    """0/1 bytes: which rows of ``array`` are not null (its validity bitmap unpacked, not a compute call)."""
    bitmap = array.buffers()[0]
    if array.null_count == 0 or bitmap is None:
        return np.full(len(array), 0 if array.null_count else 1, np.uint8)
    bits = np.frombuffer(bitmap, dtype=np.uint8)
    return np.unpackbits(bits, count=array.offset + len(array), bitorder="little")[array.offset:]


EXCLUDED = _convert.EXCLUSIONS   # code = index + 1; 0: written


class _Budget:
    """The bytes the readers of all files hold (against ``memory_limit``), and whether one of them has
    found a reason for the general path (the others then stop)."""

    def __init__(self, limit):
        import threading

        self.limit, self.held, self.stop = limit, _fastprep.BASE_BYTES, False
        self.lock = threading.Lock()

    def add(self, nbytes):
        """False once the readers hold more than the limit (or another reader has stopped)."""
        with self.lock:
            self.held += nbytes
            if self.held > self.limit:
                self.stop = True
            return not self.stop


class _Reader:
    """Reads one file window by window, keeping its written orders and its accounts."""

    def __init__(self, a, con, budget, file_idx, names, merchant, seed):
        self.a, self.budget = a, budget
        self.file_idx, self.names, self.merchant, self.seed = file_idx, names, merchant, seed
        self.lookups = _lookups(con, a)
        self.naive_ok = a.timezone.upper() in ("UTC", "ETC/UTC")
        self.hashes, self.ts, self.cents, self.reward, self.emails, self.merchants = [], [], [], [], [], []
        self.counts, self.first = {}, {}   # reason -> rows; reason -> (file, row, merchant, order, raw customer)
        self.currencies = set()
        self.read = self.written = 0

    def run(self, path, read_ahead, bar):
        """Read the file; False if the general path must run."""
        invalid = []
        names, file_idx, merchant, seed = self.names, self.file_idx, self.merchant, self.seed
        columns = sorted(set(names.values()))
        try:
            # The general path's reader (the same rows, row numbers and nulls) in smaller blocks: a quarter of
            # the memory (a row larger than a block is an error here: the general path reads it).
            batches = _convert._csv_batches(path, invalid, columns, block_size=BLOCK_BYTES)
            next(batches)   # the schema
            if read_ahead:   # the next batch is parsed by pyarrow while this one is accounted for
                batches = _read_ahead(batches)
            tail, row = None, 0
            for batch in batches:
                if invalid or self.budget.stop:
                    return False
                window = batch
                if tail is not None and tail.num_rows:
                    # The last batch's last order, with its rows at the start of this one, on its own: not the
                    # whole batch copied behind it.
                    k = _continuing(tail, batch, names["order_id"])
                    if k is None or k == batch.num_rows:
                        window = pa.concat_batches([tail, batch])
                    else:
                        head = pa.concat_batches([tail, batch.slice(0, k)]) if k else tail
                        used = self._window(head, file_idx, row, names, merchant, seed, final=True)
                        if used is None:
                            return False
                        bar.update(used)
                        row += used
                        window = batch.slice(k)
                used = self._window(window, file_idx, row, names, merchant, seed, final=False)
                if used is None:
                    return False
                bar.update(used)
                tail, row = window.slice(used), row + used
            if invalid:
                return False
            if tail is not None and tail.num_rows:
                if self._window(tail, file_idx, row, names, merchant, seed, final=True) is None:
                    return False
        except (pa.ArrowInvalid, pa.ArrowIOError, pa.ArrowNotImplementedError, UnicodeDecodeError):
            return False  # read again by the general path, which says what is wrong
        return True

    def _window(self, win, file_idx, base, names, merchant, seed, final):
        """Account for the complete orders of ``win`` (rows from file row ``base``): all of them if ``final``,
        else all but the last run, which may go on in the next batch. Returns the rows used, or None (the
        general path)."""
        from . import _csvparse

        n = win.num_rows
        col = {role: win.column(name) for role, name in names.items()}
        off, data, valid = _buffers(col["order_id"])
        starts = np.empty(n + 1, np.int64)
        hashes = np.empty(n, np.uint64)
        runs, bad = _csvparse.order_runs(off, data, valid, seed, starts, hashes)
        if bad >= 0:
            return None
        if not final:
            runs -= 1   # the last run may go on in the next batch
            if runs <= 0:
                return 0
        end = n if final else int(starts[runs])
        starts[runs] = end
        carrier = _valid(col["amount"])
        has_customer = _valid(col["customer_id"])
        heads = np.empty(runs, np.int64)
        custs = np.empty(runs, np.int64)
        if _csvparse.run_heads(starts, runs, end, carrier, has_customer, heads, custs) >= 0:
            return None   # an order without a total: rejected
        ts_off, ts_data, ts_valid = _buffers(col["order_ts"])
        am_off, am_data, _ = _buffers(col["amount"], valid=False)   # its validity: ``carrier``
        has_refund = "refunded" in col
        rf_off, rf_data, rf_valid = _buffers(col["refunded"]) if has_refund else (off, data, valid)
        ts_us = np.empty(n, np.int64)
        cents = np.empty(n, np.int64)
        full = np.zeros(n, np.uint8)
        if _csvparse.parse_carriers(carrier, end, ts_off, ts_data, ts_valid, am_off, am_data, rf_off, rf_data, rf_valid,
                                    has_refund, self.naive_ok, ts_us, cents, full) >= 0:
            return None
        take = pa.array(heads)
        currency = None
        if "currency" in col:   # every carrier needs one (null_currency): the heads, and any other carrier
            carriers = np.flatnonzero(carrier[:end])
            at = take if len(carriers) == runs else pa.array(carriers)
            table, indices = self.lookups["currency"].coded(col["currency"].take(at))
            known = np.array([v is not None for v in table])
            if not known[indices].all():
                return None
            currency = (table, indices if len(carriers) == runs else indices[np.searchsorted(carriers, heads)])
        self.hashes.append(hashes[:runs].copy())

        k = runs
        code = np.where(custs < 0, EXCLUDED.index("guest_checkout") + 1, 0).astype(np.int8)
        code[full[heads].astype(np.bool_)] = EXCLUDED.index("refunded_in_full") + 1
        if "status" in col:
            table, indices = self.lookups["status"].coded(col["status"].take(take))
            reason_code = np.array([0 if r is None else EXCLUDED.index(r) + 1 for r in table], np.int8)[indices]
            np.copyto(code, reason_code, where=reason_code != 0)
        if "cancelled_at" in col:
            code[col["cancelled_at"].take(take).is_valid().to_numpy(zero_copy_only=False)] = \
                EXCLUDED.index("cancelled") + 1
        if "test" in col:
            table, indices = self.lookups["test"].coded(col["test"].take(take))
            code[np.array(table, np.bool_)[indices]] = EXCLUDED.index("test") + 1
        counts = np.bincount(code, minlength=len(EXCLUDED) + 1)
        order_keys = col["order_id"]
        emails = col["customer_id"]

        def example(reason, row, run):
            if reason in self.first:
                return
            cust = int(custs[run])
            self.first[reason] = (file_idx, base + row, merchant, order_keys[row].as_py().strip(" "),
                                  emails[cust].as_py() if cust >= 0 else None)

        for c in np.flatnonzero(counts[1:]) + 1:
            reason = EXCLUDED[c - 1]
            self.counts[reason] = self.counts.get(reason, 0) + int(counts[c])
            if reason not in self.first:
                run = int(np.argmax(code == c))
                example(reason, int(heads[run]), run)
        items = end - k
        if items:
            self.counts["line_item"] = self.counts.get("line_item", 0) + items
            if "line_item" not in self.first:
                is_head = np.zeros(end, np.bool_)
                is_head[heads] = True
                row = int(np.argmin(is_head))
                example("line_item", row, int(np.searchsorted(starts[:runs], row, side="right")) - 1)
        kept = np.flatnonzero(code == 0)
        held = 0
        if len(kept):
            rows = heads[kept]
            self.ts.append(ts_us[rows])
            self.cents.append(cents[rows])
            if "reward" in self.lookups and "discount_code" in col:
                table, indices = self.lookups["reward"].coded(col["discount_code"].take(pa.array(rows)))
                self.reward.append(np.array(table, np.bool_)[indices])
            else:
                self.reward.append(np.zeros(len(rows), np.bool_))
            self.merchants.append((merchant, len(rows)))
            email = emails.take(pa.array(custs[kept]))
            self.emails.append(email)
            if currency is not None:
                table, indices = currency
                self.currencies |= set(table[np.unique(indices[kept])])
            self.written += len(rows)
            held += len(rows) * BYTES_PER_ORDER + email.nbytes
        held += 8 * k
        self.read += end
        if not self.budget.add(held):
            return None
        return end



def _prepare(a, plan, con, limit):
    import duckdb

    reader = _read(a, plan, con, limit)
    if reader is None:
        return None
    try:
        if reader.written == 0:
            return None
        hashes = np.concatenate(reader.hashes)
        reader.hashes = None
        hashes.sort()
        if len(hashes) > 1 and bool((hashes[1:] == hashes[:-1]).any()):
            return None   # an order key in two places (or a hash collision): the general path groups them
        del hashes
        currency = _currency(a, reader, plan)
        if currency is False:
            return None
        ts, cents, reward = (_concatenate(reader, name) for name in ("ts", "cents", "reward"))
        customer_ids, n_customers = _customers(con, reader)
        merchant_keys, merchant_ids = _merchants(reader.merchants, reader.written)
        order = _fastprep._order(merchant_ids, customer_ids, ts)
    except (pa.ArrowException, OSError, MemoryError, duckdb.Error):
        return None
    _fastprep.register_merchants(con, merchant_keys, int_keys=False)
    _fastprep.copy_mappings(con, a)
    _fastprep.write_sorted(a, merchant_ids, customer_ids, ts, cents, reward, order, currency)
    warnings = []
    merchants_table = None
    if a.merchants_table is not None:
        merchants_table = _convert._write_merchants(con, a.merchants_table, a.merchants, a.merchants_out,
                                                    a.inputs, warnings)
    if a.rejects:
        _write_no_rejects(con, {role for _, names, _ in plan for role in names}, a)
    return _convert.PrepareReport(
        output=str(a.output), merchant_ids=str(a.merchant_ids), customer_ids=str(a.customer_ids),
        rejects=str(a.rejects) if a.rejects else None, rows_read=reader.read, rows_written=reader.written,
        rejected={}, excluded=_excluded(reader, a, con), warnings=warnings, merchants=len(merchant_keys),
        customers=n_customers, merchants_table=merchants_table, files=[str(f) for f in a.files],
        likely_line_items=0, seconds=time.perf_counter() - a.started, currency=currency)


def _read(a, plan, con, limit):
    """Every file read (up to two a thread at a time), their accounts merged in file order, or None."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    seeds = {}
    for _, _, merchant in plan:
        seeds.setdefault(merchant, len(seeds))
    threads = a.threads or os.cpu_count() or 1
    # More files than threads: all read at once (up to two a thread), each parsed by pyarrow a batch ahead,
    # so no thread idles once its files are done while another still reads a third one.
    workers = 1 if threads == 1 else min(len(plan), 2 * threads)
    budget = _Budget(limit - workers * READER_BYTES)
    cursors = []
    with _progress.bar(None, a.progress, desc="prepare: read") as bar:
        def work(index):
            path, names, merchant = plan[index]
            cursor = con if workers == 1 else con.cursor()   # DuckDB connections serve one thread each
            if cursor is not con:
                cursors.append(cursor)
            reader = _Reader(a, cursor, budget, index, names, merchant, seeds[merchant])
            try:
                ok = reader.run(path, read_ahead=threads > 1, bar=bar)
            except Exception:  # noqa: BLE001 - e.g. DuckDB refusing a --reward-codes expression: the general
                ok = False     # path raises its own error for it
            if not ok:
                budget.stop = True
            return reader if ok else None

        try:
            if workers == 1:
                readers = []
                for index in range(len(plan)):
                    readers.append(work(index))
                    if readers[-1] is None:
                        return None
            else:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    readers = list(pool.map(work, range(len(plan))))
        finally:
            for cursor in cursors:
                cursor.close()
    if any(r is None for r in readers):
        return None
    merged = readers[0]
    for r in readers[1:]:
        for name in ("hashes", "ts", "cents", "reward", "emails", "merchants"):
            getattr(merged, name).extend(getattr(r, name))
        for reason, count in r.counts.items():
            merged.counts[reason] = merged.counts.get(reason, 0) + count
        for reason, first in r.first.items():
            if reason not in merged.first or first[:2] < merged.first[reason][:2]:
                merged.first[reason] = first
        merged.currencies |= r.currencies
        merged.read += r.read
        merged.written += r.written
    return merged


def _currency(a, reader, plan):
    """``convert._check_one_currency``'s answer, or False where it raises (the general path does)."""
    if not any("currency" in names for _, names, _ in plan):
        return a.currency.upper() if a.currency else None
    found = reader.currencies
    if a.currency:
        return a.currency.upper() if found <= {a.currency.upper()} else False
    if len(found) > 1:
        return False
    return found.pop() if found else None


def _concatenate(reader, name):
    """The reader's list of arrays ``name`` as one array, the list freed as it is copied."""
    parts = getattr(reader, name)
    setattr(reader, name, None)
    out = np.empty(sum(len(p) for p in parts), parts[0].dtype)
    at = 0
    while parts:
        part = parts.pop(0)
        out[at:at + len(part)] = part
        at += len(part)
    return out


def _customers(con, reader):
    """(each written order's customer id, int32, the customers): ids number the distinct customer keys
    (the general path's expression of the raw e-mail) in DuckDB's order, as ``_write_mappings`` does; the
    table customer_map is left in ``con``."""
    emails = pa.chunked_array(reader.emails, pa.string())
    reader.emails = None
    encoded = pc.dictionary_encode(emails)
    del emails
    if isinstance(encoded, pa.ChunkedArray):   # one dictionary over all chunks: the last chunk's is every value
        dictionary = encoded.chunk(encoded.num_chunks - 1).dictionary
        indices = np.concatenate([chunk.indices.to_numpy() for chunk in encoded.chunks])
    else:
        dictionary, indices = encoded.dictionary, encoded.indices.to_numpy()
    del encoded
    con.register("raw_customers", pa.table({"i": pa.array(np.arange(len(dictionary)), pa.int64()),
                                            "x": dictionary}))
    try:
        con.execute(f"""CREATE TABLE customer_keys AS
                       SELECT i, {CUSTOMER_SQL} AS k FROM raw_customers""")
    finally:
        con.unregister("raw_customers")
    con.execute("""
        CREATE TABLE customer_map AS
        SELECT customer_key, CAST(row_number() OVER (ORDER BY customer_key) AS BIGINT) AS customer_id
        FROM (SELECT DISTINCT k AS customer_key FROM customer_keys WHERE k IS NOT NULL)""")
    ids = con.execute("""SELECT m.customer_id FROM customer_keys k JOIN customer_map m ON k.k = m.customer_key
                         ORDER BY k.i""").fetchnumpy()["customer_id"]
    n_customers = con.execute("SELECT count(*) FROM customer_map").fetchall()[0][0]
    if len(ids) != len(dictionary):
        raise MemoryError("a written order without a customer key")   # cannot happen: the general path decides
    small = np.int32 if n_customers < 1 << 31 else np.int64
    return ids.astype(small)[indices], n_customers


def _merchants(merchants, n):
    """(merchant keys in natural order, each written order's merchant id, int32): ``_write_mappings``'s ids."""
    keys = sorted({key for key, _ in merchants}, key=_convert._natural_key)
    number = {key: i for i, key in enumerate(keys, start=1)}
    ids = np.empty(n, np.int32)
    at = 0
    for key, count in merchants:
        ids[at:at + count] = number[key]
        at += count
    return keys, ids


def _excluded(reader, a, con):
    """reason -> Rejected, in the order of their first rows, with ``_accounts``' example values."""
    customer = _Lookup(con, CUSTOMER_SQL)
    out = {}
    for reason, (file_idx, row, merchant, order, raw) in sorted(reader.first.items(), key=lambda kv: kv[1][:2]):
        key = customer(pa.array([raw], pa.string()))[0] if raw is not None else None
        entry = _convert.Rejected(count=reader.counts[reason], first_source=str(a.files[file_idx]), first_row=row)
        entry.first_values = {k: v for k, v in (("merchant", merchant), ("order", order), ("customer", key))
                              if v is not None}
        out[reason] = entry
    return out


def _write_no_rejects(con, roles, a):
    """The rejects file of a run that rejected nothing, by the general path's own query (``_write_rejects``)
    over stand-ins of its tables: the same columns, and the same Parquet bytes — the writer marks a column
    required where DuckDB's statistics say it holds no null, so the stand-in ``classified`` holds one
    written row (never selected) with the statistics of the general path's: row and outcome never null,
    the keys nullable."""
    from types import SimpleNamespace

    con.execute("""CREATE TABLE classified AS
                   SELECT 0::BIGINT AS src_row, 0::INTEGER AS file_idx, 0::BIGINT AS file_row,
                          NULL::VARCHAR AS merchant_key, NULL::VARCHAR AS order_key, NULL::VARCHAR AS customer_key,
                          'written'::VARCHAR AS outcome""")
    raw = ", ".join(f"NULL::VARCHAR AS raw_{role}" for role in _convert.ROLES)
    con.execute(f"CREATE TABLE rejected_raw AS SELECT 0::BIGINT AS src_row, 0::BIGINT AS line_number, "
                f"NULL::VARCHAR AS line, {raw} WHERE false")
    _convert._write_rejects(con, SimpleNamespace(roles=roles), a.files, a.rejects, a.inputs)
