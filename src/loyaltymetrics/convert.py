"""``prepare()``: a raw order export → the canonical sorted layout (SPEC §2).

Two passes, neither of which holds the data in memory:

1. **Parse** (streamed, batch by batch): the export — CSV, a Parquet file or
   a directory of Parquet files, rows in any order — is read in record
   batches; each value is converted with DuckDB's exact casts (amounts to
   int64 cents, timestamps to UTC microseconds, reward flags to bool) and
   every row either passes or gets one reason it was rejected. Passing rows
   go to a temporary Parquet file with their original ids; rejected rows are
   counted by reason (and written to ``rejects`` if asked for). No row is
   dropped silently: read = written + rejected.
2. **Map and sort** (DuckDB, out of core): original merchant and customer
   ids get dense integer ids in the ascending order of the originals, both
   mappings are written as Parquet, and the rows are sorted by
   ``(merchant_id, customer_id, order_ts, original row)`` with DuckDB's
   external sort under ``memory_limit``, spilling to ``temp_directory``,
   and streamed into an uncompressed Arrow IPC file.

Amounts are exact: text and decimals are read as decimals, floats through
their shortest decimal representation (0.285 is 0.285, not
0.28499999999999998), then multiplied by 100 and rounded half away from zero
(12.345 → 1235 cents, -0.125 → -13), as SQL's ROUND and most commerce
systems do.
"""
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import progress as _progress
from .errors import CorruptInputError, InputError, SchemaError
from .inputs import ORDER_COLUMNS, REQUIRED_ORDER_COLUMNS, resolve_columns

BATCH_ROWS = 1 << 20
REASONS = (
    "null_merchant_id", "null_customer_id", "null_order_ts", "null_amount",
    "unparsable_amount", "amount_out_of_range", "negative_amount",
    "unparsable_order_ts", "order_ts_out_of_range", "unparsable_reward", "malformed_csv_row",
)
TRUE_WORDS = ("true", "t", "yes", "y", "1")
FALSE_WORDS = ("false", "f", "no", "n", "0", "")
AMOUNT_UNITS = {"major": 100, "minor": 1}

ORDERS_SCHEMA = pa.schema([
    ("merchant_id", pa.int32()),
    ("customer_id", pa.int64()),
    ("order_ts", pa.timestamp("us", tz="UTC")),
    ("amount", pa.int64()),
    ("reward", pa.bool_()),
])


class MissingDependencyError(ImportError):
    """An optional dependency a feature needs is not installed."""


@dataclass
class Rejected:
    """Rows rejected for one reason: how many, and the first one (file, row, values)."""

    count: int = 0
    first_source: str = ""
    first_row: int = -1
    first_values: dict = field(default_factory=dict)

    def example(self):
        values = ", ".join(f"{k}={v!r}" for k, v in self.first_values.items())
        return f"{self.first_source}: row {self.first_row}: {values}"


@dataclass
class PrepareReport:
    """What ``prepare()`` read, wrote and rejected, and where it wrote it."""

    output: str
    merchant_ids: str
    customer_ids: str
    rejects: str | None
    rows_read: int
    rows_written: int
    rejected: dict        # reason -> Rejected
    merchants: int
    customers: int
    seconds: float

    @property
    def rows_rejected(self):
        return sum(r.count for r in self.rejected.values())

    def summary(self):
        lines = [
            f"read {self.rows_read:,} rows, wrote {self.rows_written:,} to {self.output} "
            f"({self.merchants:,} merchants, {self.customers:,} customers), "
            f"rejected {self.rows_rejected:,}" + (f" (written to {self.rejects})" if self.rejects else ""),
        ]
        for reason, rejected in sorted(self.rejected.items(), key=lambda item: -item[1].count):
            lines.append(f"  {rejected.count:,} {reason}; first: {rejected.example()}")
        lines.append(f"id mappings: {self.merchant_ids}, {self.customer_ids}")
        return "\n".join(lines)


def _duckdb():
    try:
        import duckdb
    except ImportError as e:
        raise MissingDependencyError(
            "prepare needs DuckDB for its out-of-core sort: pip install 'loyaltymetrics[prepare]' "
            "(or pip install duckdb)"
        ) from e
    return duckdb


def prepare(raw, output, *, columns=None, refunds=False, rejects=None, timezone="UTC", amount_unit="major",
            memory_limit="4GB", temp_directory=None, threads=None, progress=False):
    """Convert a raw order export into the canonical sorted Arrow IPC file (SPEC §2).

    Parameters
    ----------
    raw : path
        A CSV file (header row; ``.csv``, ``.tsv`` or ``.txt``), a Parquet file, or a directory of
        Parquet files (read in sorted path order). Rows in any order.
    output : path
        The Arrow IPC file to write: ``merchant_id`` int32, ``customer_id`` int64, ``order_ts``
        timestamp[us, UTC], ``amount`` int64 cents, ``reward`` bool, sorted. Beside it,
        ``<stem>_merchant_ids.parquet`` and ``<stem>_customer_ids.parquet`` map the original ids
        (``merchant_key``, ``customer_key``) to the integer ids.
    columns : dict, optional
        Canonical name → the export's column name, e.g. ``{"customer_id": "email", "reward":
        "discount_used"}``. ``reward`` is optional unless mapped.
    refunds : bool
        Keep negative amounts (refunds); by default they are rejected.
    rejects : path, optional
        Also write the rejected rows (``file``, ``row``, ``reason`` and the raw values as text) as
        CSV or Parquet, by the suffix.
    timezone : str
        Zone of timestamps written without one (naive text or timestamps, dates); default UTC.
    amount_unit : {"major", "minor"}
        Amounts in major units (dollars: × 100) or already in minor units (cents).
    memory_limit, temp_directory, threads
        DuckDB's limits for the sort; ``temp_directory`` defaults to a fresh directory beside
        ``output``, removed at the end.
    progress : bool
        Show a progress bar with rows/s on stderr (when it is a terminal).

    Returns
    -------
    PrepareReport
        Rows read, written and rejected by reason (with the first rejected row of each), and the paths.
    """
    started = time.perf_counter()
    duckdb = _duckdb()
    if amount_unit not in AMOUNT_UNITS:
        raise ValueError(f"amount_unit must be 'major' or 'minor'; got {amount_unit!r}")
    names = resolve_columns(columns)
    required = REQUIRED_ORDER_COLUMNS + (("reward",) if "reward" in (columns or {}) else ())
    raw, output = Path(raw), Path(output)
    merchant_ids = output.with_name(output.stem + "_merchant_ids.parquet")
    customer_ids = output.with_name(output.stem + "_customer_ids.parquet")
    if not raw.exists():
        raise FileNotFoundError(f"{raw}: no such file or directory")
    if output.resolve() == raw.resolve():
        raise ValueError("the output must not overwrite the raw export")

    own_temp = temp_directory is None
    work = Path(tempfile.mkdtemp(prefix=".prepare-", dir=output.parent if own_temp else temp_directory))
    try:
        con = duckdb.connect(str(work / "prepare.duckdb"))
        settings = [("memory_limit", memory_limit), ("temp_directory", str(work / "spill")),
                    ("preserve_insertion_order", "false"), ("TimeZone", timezone)]
        if threads:
            settings.append(("threads", int(threads)))
        for name, value in settings:
            try:
                con.execute(f"SET {name} = '{_sql_text(value)}'")
            except duckdb.Error as e:
                raise ValueError(f"bad {name} {value!r}: {e}") from e

        valid_path = work / "valid.parquet"
        rejected = {}
        rows_read = rows_valid = 0
        writer = None
        with _Rejects(rejects) as reject_sink, _progress.bar(None, progress, desc="prepare: parse") as bar:
            malformed = {}
            for source, batch in _raw_batches(raw, names, required, malformed):
                parsed = _parse(con, batch, refunds, AMOUNT_UNITS[amount_unit])
                ok = pc.is_null(parsed.column("reason"))
                valid = parsed.filter(ok).select(VALID_COLUMNS)
                if writer is None:
                    import pyarrow.parquet as pq

                    valid_schema = _valid_schema(valid.schema)
                    writer = pq.ParquetWriter(str(valid_path), valid_schema)
                writer.write_table(valid.cast(valid_schema))
                rows_valid += valid.num_rows
                if valid.num_rows < parsed.num_rows:
                    _count_rejects(rejected, source, names, parsed, pc.invert(ok), reject_sink)
                rows_read += batch.num_rows
                bar.update(batch.num_rows)
            for source, invalid_rows in malformed.items():
                for invalid in invalid_rows:
                    _count_malformed(rejected, source, invalid, reject_sink)
                    rows_read += 1
        if writer is not None:
            writer.close()
        else:
            _empty_valid(valid_path)

        n_merchants, n_customers = _write_mappings(con, valid_path, merchant_ids, customer_ids)
        rows_written = _write_sorted(con, valid_path, output, rows_valid, progress)
        con.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert rows_read == rows_written + sum(r.count for r in rejected.values())
    return PrepareReport(
        output=str(output), merchant_ids=str(merchant_ids), customer_ids=str(customer_ids),
        rejects=str(rejects) if rejects else None, rows_read=rows_read, rows_written=rows_written,
        rejected=rejected, merchants=n_merchants, customers=n_customers,
        seconds=time.perf_counter() - started,
    )


def _sql_text(text):
    return str(text).replace("'", "''")


# --- reading -------------------------------------------------------------------

def _is_csv(path):
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PAR1":
        return False
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        return True
    if not head:
        raise CorruptInputError(str(path), None, "the file is empty")
    raise CorruptInputError(str(path), None, f"not a CSV (.csv/.tsv/.txt) or Parquet file (starts with {head!r})")


def _raw_files(raw):
    if raw.is_dir():
        files = sorted(p for p in raw.rglob("*") if p.is_file()
                       and not any(part.startswith(("_", ".")) for part in p.relative_to(raw).parts))
        if not files:
            raise InputError(str(raw), None, "the directory holds no files")
        if any(_is_csv(f) for f in files):
            raise InputError(str(raw), None, "a directory is read as Parquet files only; pass a CSV file by itself")
        return files
    return [raw]


def _raw_batches(raw, names, required, malformed):
    """Yield ``(source, RecordBatch)`` with canonical column names, ``file_row`` and ``src_row``.

    ``file_row`` is each row's 0-based index within its file (data rows, not counting a CSV
    header); ``src_row`` numbers rows across all files, for a stable tie order. Malformed CSV
    rows the reader skips are collected in ``malformed`` (path → rows) for the caller to report.
    """
    offset = 0
    key_kinds = {}
    for path in _raw_files(raw):
        source = str(path)
        try:
            batches = _csv_batches(path, malformed) if _is_csv(path) else _parquet_batches(path)
            schema, batches = next(batches), batches
            wanted = _select(source, schema, names, required, key_kinds)
            file_row = 0
            for batch in batches:
                rows = _file_rows(malformed.get(source), file_row, batch.num_rows)
                file_row += batch.num_rows
                arrays = {canonical: batch.column(actual) for canonical, actual in wanted.items()}
                arrays = {k: _normalise(k, v) for k, v in arrays.items()}
                arrays["src_row"] = pa.array(offset + rows, pa.int64())
                arrays["file_row"] = pa.array(rows, pa.int64())
                yield source, pa.RecordBatch.from_pydict(arrays)
            offset += file_row + len(malformed.get(source, ()))
        except (pa.ArrowInvalid, pa.ArrowIOError, pa.ArrowNotImplementedError, UnicodeDecodeError) as e:
            if isinstance(e, (FileNotFoundError, PermissionError)):
                raise
            raise CorruptInputError(source, None, f"cannot read: {e}") from e


def _csv_batches(path, malformed):
    """First the schema (every column as text), then the record batches of a CSV file."""
    import pyarrow.csv as pacsv

    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    probe_options = pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=lambda row: "skip")
    with pacsv.open_csv(str(path), parse_options=probe_options,
                        read_options=pacsv.ReadOptions(block_size=1 << 16)) as probe:
        header = probe.schema.names
    invalid = malformed.setdefault(str(path), [])

    def skip(row):
        invalid.append(row)
        return "skip"

    reader = pacsv.open_csv(
        str(path),
        read_options=pacsv.ReadOptions(block_size=16 << 20, use_threads=False),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=skip),
        # Ids stay text ("007" is not 7); empty fields and the usual null markers are nulls.
        convert_options=pacsv.ConvertOptions(column_types={name: pa.string() for name in header},
                                             strings_can_be_null=True),
    )
    yield reader.schema
    with reader:
        yield from reader


def _parquet_batches(path):
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(str(path))
    yield parquet.schema_arrow
    yield from parquet.iter_batches(batch_size=BATCH_ROWS)


def _file_rows(invalid, first, n):
    """Row indices in the file of n delivered rows, skipping malformed CSV rows the reader dropped."""
    delivered = np.arange(first, first + n, dtype=np.int64)
    if not invalid:
        return delivered
    skipped = np.array(sorted(_malformed_row_index(r) for r in invalid), dtype=np.int64)
    # A delivered row d sits at file row d + (skipped rows before it).
    at = skipped - np.arange(len(skipped))
    return delivered + np.searchsorted(at, delivered, side="right")


def _malformed_row_index(invalid_row):
    # The reader numbers lines from 1 and the header is line 1: data row = line - 2.
    return (invalid_row.number or 0) - 2




_KEY_KINDS = {"int": "an integer", "text": "text"}


def _select(source, schema, names, required, key_kinds):
    """{canonical: the export's column}; SchemaError for missing columns or unusable types."""
    present = set(schema.names)
    missing = [names[c] for c in required if names[c] not in present]
    if missing:
        raise SchemaError(
            source, None,
            f"missing column(s) {', '.join(map(repr, missing))}; the export has "
            f"{', '.join(map(repr, schema.names))} (map other names with columns={{...}} / --columns)",
        )
    wanted = {}
    for canonical in ORDER_COLUMNS:
        name = names[canonical]
        if name not in present:
            continue
        label = repr(name) if name == canonical else f"{name!r} (mapped to {canonical})"
        if len(schema.get_all_field_indices(name)) > 1:
            raise SchemaError(source, None, f"column {label} appears more than once")
        kind = _kind(canonical, schema.field(name).type)
        if kind is None:
            raise SchemaError(source, None, f"column {label} has type {schema.field(name).type}, "
                                            f"which prepare cannot read as {canonical}")
        if canonical in ("merchant_id", "customer_id"):
            earlier = key_kinds.setdefault(canonical, kind)
            if earlier != kind:
                raise SchemaError(source, None, f"column {label} is {_KEY_KINDS[kind]} here but "
                                                f"{_KEY_KINDS[earlier]} in earlier files")
        wanted[canonical] = name
    return wanted


def _is_text(t):
    return pa.types.is_string(t) or pa.types.is_large_string(t) or \
        (pa.types.is_dictionary(t) and (pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)))


def _kind(canonical, t):
    """How a column of Arrow type ``t`` is read, or None if it cannot be."""
    if pa.types.is_null(t):
        return "null"
    if _is_text(t):
        return "text"
    if canonical in ("merchant_id", "customer_id"):
        return "int" if pa.types.is_integer(t) else None
    if canonical == "amount":
        if pa.types.is_integer(t) or pa.types.is_decimal(t):
            return "decimal"
        return "float" if pa.types.is_floating(t) else None
    if canonical == "order_ts":
        return "timestamp" if pa.types.is_timestamp(t) or pa.types.is_date(t) else None
    if canonical == "reward":
        if pa.types.is_boolean(t):
            return "bool"
        return "int" if pa.types.is_integer(t) else None
    return None


def _normalise(canonical, array):
    """Dictionary text → plain text; large text → text; keys of any integer width → int64."""
    t = array.type
    if pa.types.is_dictionary(t) or pa.types.is_large_string(t):
        return array.cast(pa.string())
    if canonical in ("merchant_id", "customer_id") and pa.types.is_integer(t) and t != pa.int64():
        return array.cast(pa.int64())  # uint64 beyond int64 fails here, named by the caller
    return array


# --- parsing -------------------------------------------------------------------

def _amount_sql(t):
    if pa.types.is_null(t):
        return "NULL::DECIMAL(38, 16)", "NULL"
    if _is_text(t):
        raw = "trim(amount)"
    elif pa.types.is_floating(t):
        raw = "CAST(amount AS VARCHAR)"  # shortest decimal that reads back as the same float
    else:
        raw = "amount"
    return f"TRY_CAST({raw} AS DECIMAL(38, 16))", f"TRY_CAST({raw} AS DOUBLE)"


def _ts_sql(t):
    if pa.types.is_null(t):
        return "NULL::TIMESTAMPTZ"
    if _is_text(t):
        return "TRY_CAST(trim(order_ts) AS TIMESTAMPTZ)"
    return "CAST(order_ts AS TIMESTAMPTZ)"  # naive timestamps and dates are read in the session zone


def _reward_sql(batch):
    if "reward" not in batch.schema.names:
        return "false", "false"
    t = batch.schema.field("reward").type
    if pa.types.is_null(t):
        return "false", "false"
    if pa.types.is_boolean(t):
        return "coalesce(reward, false)", "false"
    if pa.types.is_integer(t):
        return "coalesce(reward = 1, false)", "reward IS NOT NULL AND reward NOT IN (0, 1)"
    words = "lower(trim(reward))"
    true_list = ", ".join(f"'{w}'" for w in TRUE_WORDS)
    known = ", ".join(f"'{w}'" for w in TRUE_WORDS + FALSE_WORDS)
    return (f"coalesce({words} IN ({true_list}), false)",
            f"reward IS NOT NULL AND {words} NOT IN ({known})")


def _parse(con, batch, refunds, scale):
    """Parsed columns, the raw values as text, and a ``reason`` (null for rows that pass) of a batch."""
    decimal, as_double = _amount_sql(batch.schema.field("amount").type)
    ts = _ts_sql(batch.schema.field("order_ts").type)
    reward, bad_reward = _reward_sql(batch)
    raw_reward = "CAST(reward AS VARCHAR)" if "reward" in batch.schema.names else "NULL::VARCHAR"
    negative = "false" if refunds else "cents < 0"
    in_range = "ts >= TIMESTAMPTZ '1970-01-01 00:00:00+00' AND ts < TIMESTAMPTZ '2263-01-01 00:00:00+00'"
    # A decimal beyond ±1e19 would overflow the multiplication; TRY_CAST catches what int64 cannot hold.
    query = f"""
        WITH parsed AS (
            SELECT *, {decimal} AS dec, {ts} AS ts, {reward} AS reward_flag, ({bad_reward}) AS bad_reward
            FROM raw_batch
        ), cents AS (
            SELECT *, CASE WHEN abs(dec) < 1e19 THEN TRY_CAST(ROUND(dec * {scale}) AS BIGINT) END AS cents
            FROM parsed
        )
        SELECT merchant_id AS merchant_key, customer_id AS customer_key,
               CASE WHEN {in_range} THEN epoch_us(ts) END AS ts_us,
               cents AS amount, reward_flag AS reward, src_row, file_row,
               CASE
                   WHEN merchant_id IS NULL THEN 'null_merchant_id'
                   WHEN customer_id IS NULL THEN 'null_customer_id'
                   WHEN order_ts IS NULL THEN 'null_order_ts'
                   WHEN amount IS NULL THEN 'null_amount'
                   WHEN dec IS NULL AND isfinite({as_double}) THEN 'amount_out_of_range'
                   WHEN dec IS NULL THEN 'unparsable_amount'
                   WHEN cents IS NULL THEN 'amount_out_of_range'
                   WHEN {negative} THEN 'negative_amount'
                   WHEN ts IS NULL THEN 'unparsable_order_ts'
                   WHEN NOT ({in_range}) THEN 'order_ts_out_of_range'
                   WHEN bad_reward THEN 'unparsable_reward'
               END AS reason,
               CAST(merchant_id AS VARCHAR) AS raw_merchant_id, CAST(customer_id AS VARCHAR) AS raw_customer_id,
               CAST(order_ts AS VARCHAR) AS raw_order_ts, CAST(amount AS VARCHAR) AS raw_amount,
               {raw_reward} AS raw_reward
        FROM cents
    """
    con.register("raw_batch", batch)
    try:
        return _arrow_table(con.sql(query))
    finally:
        con.unregister("raw_batch")


def _arrow_table(relation):
    """A DuckDB relation as a pyarrow Table (``to_arrow_table`` from DuckDB 1.4, ``arrow`` before)."""
    return relation.to_arrow_table() if hasattr(relation, "to_arrow_table") else relation.arrow()


def _arrow_reader(relation, batch_rows):
    """A DuckDB relation streamed as a RecordBatchReader."""
    if hasattr(relation, "to_arrow_reader"):
        return relation.to_arrow_reader(batch_rows)
    return relation.fetch_arrow_reader(batch_rows)


# --- rejects -------------------------------------------------------------------

class _Rejects:
    """Writes rejected rows (file, row, reason, raw values as text) to CSV or Parquet, if asked."""

    def __init__(self, path):
        self.path = Path(path) if path else None
        self.writer = None

    def __enter__(self):
        if self.path is not None:
            if self.path.suffix.lower() == ".csv":
                import pyarrow.csv as pacsv

                self.writer = pacsv.CSVWriter(str(self.path), REJECTS_SCHEMA)
            else:
                import pyarrow.parquet as pq

                self.writer = pq.ParquetWriter(str(self.path), REJECTS_SCHEMA)
        return self

    def write(self, table):
        if self.writer is not None:
            self.writer.write_table(table)

    def __exit__(self, *exc):
        if self.writer is not None:
            self.writer.close()
        return False


RAW_COLUMNS = ("merchant_id", "customer_id", "order_ts", "amount", "reward")
REJECTS_SCHEMA = pa.schema([("file", pa.string()), ("row", pa.int64()), ("reason", pa.string())]
                           + [(name, pa.string()) for name in RAW_COLUMNS])


def _count_rejects(rejected, source, names, parsed, bad, sink):
    bad_rows = parsed.filter(bad)
    reasons = bad_rows.column("reason")
    raw = {canonical: bad_rows.column("raw_" + canonical).cast(pa.string()) for canonical in RAW_COLUMNS}
    for reason in pc.unique(reasons).to_pylist():
        where = pc.equal(reasons, reason)
        entry = rejected.setdefault(reason, Rejected())
        if entry.count == 0:
            first = pc.index(where, True).as_py()
            entry.first_source, entry.first_row = source, bad_rows.column("file_row")[first].as_py()
            entry.first_values = {names[c]: raw[c][first].as_py() for c in RAW_COLUMNS
                                  if c != "reward" or raw[c].null_count < len(raw[c])}
        entry.count += pc.sum(where).as_py()
    sink.write(pa.table([pa.array([source] * bad_rows.num_rows, pa.string()), bad_rows.column("file_row"),
                         reasons.cast(pa.string())] + [raw[c] for c in RAW_COLUMNS], schema=REJECTS_SCHEMA))


def _count_malformed(rejected, source, invalid, sink):
    entry = rejected.setdefault("malformed_csv_row", Rejected())
    row = _malformed_row_index(invalid)
    if entry.count == 0:
        entry.first_source, entry.first_row = source, row
        entry.first_values = {"line": invalid.text}
    entry.count += 1
    sink.write(pa.table([pa.array([source]), pa.array([row], pa.int64()), pa.array(["malformed_csv_row"])]
                        + [pa.nulls(1, pa.string())] * len(RAW_COLUMNS), schema=REJECTS_SCHEMA))


# --- mapping and sorting ---------------------------------------------------------

VALID_COLUMNS = ["merchant_key", "customer_key", "ts_us", "amount", "reward", "src_row"]


def _valid_schema(schema):
    """Fixed types for the parsed rows: DuckDB may hand text back as string_view."""
    def key(name):
        t = schema.field(name).type
        return pa.int64() if pa.types.is_integer(t) else pa.string()

    return pa.schema([("merchant_key", key("merchant_key")), ("customer_key", key("customer_key")),
                      ("ts_us", pa.int64()), ("amount", pa.int64()), ("reward", pa.bool_()),
                      ("src_row", pa.int64())])


def _empty_valid(path):
    import pyarrow.parquet as pq

    pq.write_table(pa.table({
        "merchant_key": pa.array([], pa.string()), "customer_key": pa.array([], pa.string()),
        "ts_us": pa.array([], pa.int64()), "amount": pa.array([], pa.int64()),
        "reward": pa.array([], pa.bool_()), "src_row": pa.array([], pa.int64()),
    }), str(path))


def _write_mappings(con, valid_path, merchant_ids, customer_ids):
    valid = f"read_parquet('{_sql_text(valid_path)}')"
    con.execute(f"""
        CREATE TABLE merchant_map AS
        SELECT merchant_key, CAST(row_number() OVER (ORDER BY merchant_key) AS INTEGER) AS merchant_id
        FROM (SELECT DISTINCT merchant_key FROM {valid})
    """)
    con.execute(f"""
        CREATE TABLE customer_map AS
        SELECT customer_key, CAST(row_number() OVER (ORDER BY customer_key) AS BIGINT) AS customer_id
        FROM (SELECT DISTINCT customer_key FROM {valid})
    """)
    for table, key, path in (("merchant_map", "merchant_id", merchant_ids), ("customer_map", "customer_id", customer_ids)):
        partial = path.with_name(path.name + ".partial")
        con.execute(f"COPY (SELECT * FROM {table} ORDER BY {key}) TO '{_sql_text(partial)}' (FORMAT PARQUET)")
        os.replace(partial, path)
    n_merchants = con.execute("SELECT count(*) FROM merchant_map").fetchall()[0][0]
    n_customers = con.execute("SELECT count(*) FROM customer_map").fetchall()[0][0]
    return n_merchants, n_customers


def _write_sorted(con, valid_path, output, total, progress):
    valid = f"read_parquet('{_sql_text(valid_path)}')"
    relation = con.sql(f"""
        SELECT m.merchant_id, c.customer_id, v.ts_us, v.amount, v.reward
        FROM {valid} v
        JOIN merchant_map m USING (merchant_key)
        JOIN customer_map c USING (customer_key)
        ORDER BY m.merchant_id, c.customer_id, v.ts_us, v.src_row
    """)
    reader = _arrow_reader(relation, BATCH_ROWS)
    partial = output.with_name(output.name + ".partial")
    written = 0
    try:
        with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_file(sink, ORDERS_SCHEMA) as writer, \
                _progress.bar(total, progress, desc="prepare: sort and write") as bar:
            for batch in reader:
                if batch.num_rows == 0:
                    continue
                writer.write_batch(pa.record_batch([
                    batch.column(0).cast(pa.int32()),
                    batch.column(1).cast(pa.int64()),
                    batch.column(2).cast(pa.int64()).view(pa.timestamp("us", tz="UTC")),
                    batch.column(3).cast(pa.int64()),
                    batch.column(4).cast(pa.bool_()),
                ], schema=ORDERS_SCHEMA))
                written += batch.num_rows
                bar.update(batch.num_rows)
        os.replace(partial, output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return written
