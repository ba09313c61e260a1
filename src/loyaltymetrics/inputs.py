"""Reading orders and merchants (SPEC §2) into zero-copy column views.

Orders are read one record batch at a time, so memory holds the batch in
flight and nothing that grows with the number of rows: an Arrow IPC file is
memory-mapped and its buffers are handed to the kernel as they are, a
Parquet file is streamed row group by row group, a few row groups decoded
ahead by worker threads (``_parquet_batches``).
"""
import ctypes
import errno
import itertools
import mmap
import os
import stat
import sys
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import errors
from .errors import (
    CorruptInputError,
    DuplicateMerchantError,
    InputChangedError,
    InputError,
    NegativeAmountError,
    NullValueError,
    SchemaError,
)
from . import periods
from .periods import UNITS_PER_DAY

ORDER_COLUMNS = ("merchant_id", "customer_id", "order_ts", "amount", "reward")
REQUIRED_ORDER_COLUMNS = ORDER_COLUMNS[:4]
PARQUET_BATCH_ROWS = 1 << 20
# Record batches of fewer rows than SMALL_BATCH_ROWS are merged (copied) with their
# neighbours into batches of about COALESCE_ROWS: each batch costs the driver and
# the kernel tens of microseconds, a copy costs a few nanoseconds a row.
SMALL_BATCH_ROWS = 1 << 13
COALESCE_ROWS = 1 << 16
IN_MEMORY = "<table>"
UNKNOWN = "unknown"

_KEY_DTYPES = {pa.int32(): np.dtype(np.int32), pa.int64(): np.dtype(np.int64)}
# Integer amount types that widen to int64 without loss (int64 itself is read zero-copy).
_WIDENING_INTS = (pa.int8(), pa.int16(), pa.int32(), pa.uint8(), pa.uint16(), pa.uint32())


@dataclass(frozen=True)
class OrderBatch:
    """One record batch of orders as the kernel reads it."""

    source: str          # file name, or "<table>" for in-memory input
    first_row: int       # row index of this batch's row 0 within `source`
    merchant_id: np.ndarray
    customer_id: np.ndarray
    order_ts: np.ndarray  # raw int64 timestamp or int32 date32 values
    amount: np.ndarray
    reward_bits: np.ndarray  # LSB bitmap, nulls cleared
    reward_offset: int
    units_per_day: int
    mapped: object = None  # the _MappedFile the columns point into, if any
    # order_ts holds calendar dates (date32, date64): the same date in every time zone, so
    # their periods are the UTC ones whatever the merchant's zone (periods.py).
    dates: bool = False

    def __len__(self):
        return len(self.merchant_id)

    def populate(self, lo=0, hi=None, columns=("merchant_id", "customer_id", "order_ts", "amount", "reward_bits")):
        """Map the pages of rows ``[lo, hi)`` in one call, before the kernel reads them.

        Raises ``InputChangedError`` if the file was truncated or replaced
        since it was opened: reading pages past its new end would kill the
        process with SIGBUS.
        """
        if self.mapped is not None:
            hi = len(self) if hi is None else hi
            bit_lo, bit_hi = (self.reward_offset + lo) // 8, (self.reward_offset + hi + 7) // 8
            arrays = [self.reward_bits[bit_lo:bit_hi] if c == "reward_bits" else getattr(self, c)[lo:hi]
                      for c in columns]
            self.mapped.populate(arrays, self.first_row + lo)

    def check(self, row=0):
        """Raise ``InputChangedError`` if the file was truncated or replaced since it was opened."""
        if self.mapped is not None:
            self.mapped.check(self.first_row + row)

    def release(self, lo=0, hi=None, exact=False):
        """Let go of the memory-mapped pages of rows ``[lo, hi)``: with the 2 MiB around them while no thread
        scans them, or (``exact``) only the pages they are on."""
        if self.mapped is not None:
            hi = len(self) if hi is None else hi
            bit_lo, bit_hi = (self.reward_offset + lo) // 8, (self.reward_offset + hi + 7) // 8
            self.mapped.release(
                [(a[lo:hi]) for a in (self.merchant_id, self.customer_id, self.order_ts, self.amount)]
                + [self.reward_bits[bit_lo:bit_hi]], exact
            )

    def lanes(self):
        """``(start, end, bytes a row)`` of each column the kernel reads that lies in the map, in address order
        (``inputs.Sweep``); the reward bitmap's bytes a row is 1/8."""
        lanes = []
        for array in (self.merchant_id, self.customer_id, self.order_ts, self.amount, self.reward_bits):
            start = array.__array_interface__["data"][0]
            if self.mapped is not None and array.nbytes and self.mapped.holds(start):
                lanes.append((start, start + array.nbytes, array.itemsize if array is not self.reward_bits else None))
        return sorted(lanes)


def source_label(orders):
    """How errors name an input: its path, or "<table>"."""
    return str(orders) if isinstance(orders, (str, os.PathLike)) else IN_MEMORY


def rereadable(orders):
    """Whether ``orders`` can be read a second time (not a one-shot stream)."""
    return not isinstance(orders, pa.RecordBatchReader) and (
        isinstance(orders, (str, os.PathLike, pa.Table, pa.RecordBatch)) or not hasattr(orders, "__arrow_c_stream__")
        or type(orders).__module__.startswith(("pandas", "polars"))
    )


def count_rows(orders):
    """Rows in ``orders`` when its metadata says so cheaply (for a progress bar's total), else None.

    Arrow IPC files and Parquet files or directories are counted from their
    footers, tables by their length; a stream or a one-shot reader is not
    read ahead, and an unreadable file is left for the scan to report.
    """
    if isinstance(orders, (pa.Table, pa.RecordBatch)):
        return orders.num_rows
    if type(orders).__module__.startswith(("pandas", "polars")) and hasattr(orders, "shape"):
        return int(orders.shape[0])
    if not isinstance(orders, (str, os.PathLike)):
        return None
    path = Path(orders)
    files = _directory_files(path) if path.is_dir() else [path]
    total = 0
    try:
        for file in files:
            kind = _file_kind(file)
            if kind == "parquet":
                import pyarrow.parquet as pq

                total += pq.ParquetFile(str(file)).metadata.num_rows
            elif kind == "ipc_file":
                # Mapped and guarded as the scan's map is: a file truncated meanwhile is no SIGBUS.
                watch = _Watch(str(file), _open_regular(file))
                reader = pa.ipc.open_file(_MappedFile(str(file), watch).buffer)
                total += sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
                watch.check(0)
            else:
                return None
    except (pa.ArrowException, OSError, InputError):
        return None
    return total


def resolve_columns(columns):
    """Map canonical column names to the input's names (``columns={"amount": "total_cents"}``)."""
    columns = dict(columns or {})
    unknown = set(columns) - set(ORDER_COLUMNS)
    if unknown:
        raise ValueError(
            f"columns= maps unknown names {sorted(unknown)}; the canonical names are {', '.join(ORDER_COLUMNS)}"
        )
    names = {name: columns.get(name, name) for name in ORDER_COLUMNS}
    for a, b in itertools.combinations(ORDER_COLUMNS, 2):
        if names[a] == names[b]:
            raise ValueError(f"columns= reads both {a} and {b} from the input column {names[a]!r}")
    return names


def order_batches(orders, columns=None, threads=None):
    """Yield the orders as ``OrderBatch`` es, checking schema and nulls.

    ``orders``: a path to an Arrow IPC file or stream, a Parquet file or a
    directory of Parquet files (read in sorted path order); a
    ``pyarrow.Table``, ``RecordBatch`` or ``RecordBatchReader``; a pandas or
    polars DataFrame; or any object exporting an Arrow C stream. ``reward``
    is optional unless ``columns`` names it. ``threads`` (None: the CPUs
    this process may run on, as ``parallel.resolve_threads``): how many
    threads decode a Parquet file's row groups side by side.
    """
    names = resolve_columns(columns)
    required = REQUIRED_ORDER_COLUMNS + (("reward",) if "reward" in (columns or {}) else ())
    units_per_day = None
    for source, first_row, batch, mapped in _record_batches(orders, names, required, threads):
        if batch.num_rows == 0:
            continue
        order_batch = _order_batch(batch, names, source, first_row, mapped)
        if units_per_day is None:
            units_per_day = order_batch.units_per_day
        elif order_batch.units_per_day != units_per_day:
            # The kernel compares timestamps across batches: one unit per input (time zones may differ).
            ts_type = batch.schema.field(names["order_ts"]).type
            raise SchemaError(
                source, first_row,
                f"column {names['order_ts']!r} is {ts_type} here, in another unit than in earlier rows",
            )
        yield order_batch


_EXPECTED_TYPES = {
    "merchant_id": ("int32 or int64", lambda t: t in _KEY_DTYPES),
    "customer_id": ("int32 or int64", lambda t: t in _KEY_DTYPES),
    "order_ts": (
        "a timestamp (any unit, any time zone), date32 or date64",
        lambda t: pa.types.is_timestamp(t) or t in (pa.date32(), pa.date64()),
    ),
    "amount": (
        "int64 minor units (cents); convert decimal or float major units first, e.g. round(x * 100)",
        lambda t: t == pa.int64() or t in _WIDENING_INTS,
    ),
    "reward": ("bool (null counts as false)", lambda t: t == pa.bool_() or pa.types.is_null(t)),
}


def _select(source, schema, names, required):
    """The input's names of the order columns it has, after checking the schema (SPEC §2)."""
    present = set(schema.names)
    missing = [names[c] for c in required if names[c] not in present]
    if missing:
        raise SchemaError(
            source, None,
            f"missing column(s) {', '.join(map(repr, missing))}; the input has {', '.join(map(repr, schema.names))}"
            " (map other names with columns={...} / --columns)",
        )
    for canonical in ORDER_COLUMNS:
        name = names[canonical]
        if name not in present:
            continue
        label = repr(name) if name == canonical else f"{name!r} (mapped to {canonical})"
        if len(schema.get_all_field_indices(name)) > 1:
            raise SchemaError(source, None, f"column {label} appears more than once")
        expected, accepts = _EXPECTED_TYPES[canonical]
        if not accepts(schema.field(name).type):
            raise SchemaError(source, None, f"column {label} has type {schema.field(name).type}; expected {expected}"
                              + _prepare_hint(schema.field(name).type))
    return [names[c] for c in ORDER_COLUMNS if names[c] in present]


def _prepare_hint(arrow_type):
    """For text where ids, timestamps or amounts belong: name the command that converts raw orders."""
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if not (pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or _is_string_view(arrow_type)):
        return ""
    return ("; raw orders with text ids, timestamps or amounts are converted (integer ids, mappings written "
            "beside the output, UTC timestamps, int64 cents, sorted) by: loyaltymetrics prepare RAW -o orders.arrow "
            "(for a DataFrame: write it to Parquet or CSV first)")


def _non_null(batch, name, source, first_row):
    arr = batch.column(name)
    if arr.null_count:
        row = pc.index(arr.is_null(), True).as_py()
        raise NullValueError(source, first_row + row, f"null in column {name!r}, which must have no nulls")
    return arr


def _order_batch(batch, names, source, first_row, mapped=None):
    """Null checks and zero-copy views of one record batch whose schema passed ``_select``."""
    merchant, customer, ts, amount = (
        _non_null(batch, names[c], source, first_row) for c in REQUIRED_ORDER_COLUMNS
    )
    reward = batch.column(names["reward"]) if names["reward"] in batch.schema.names else None
    if pa.types.is_timestamp(ts.type):
        units_per_day, ts_values = UNITS_PER_DAY[ts.type.unit], _values(ts, np.int64)
    elif ts.type == pa.date64():
        units_per_day, ts_values = UNITS_PER_DAY["ms"], _values(ts, np.int64)
    else:
        units_per_day, ts_values = 1, _values(ts, np.int32)
    if amount.type != pa.int64():
        amount = amount.cast(pa.int64())
    reward_bits, reward_offset = _reward_bitmap(reward, len(merchant))
    return OrderBatch(
        source=source,
        first_row=first_row,
        merchant_id=_values(merchant, _KEY_DTYPES[merchant.type]),
        customer_id=_values(customer, _KEY_DTYPES[customer.type]),
        order_ts=ts_values,
        amount=_values(amount, np.int64),
        reward_bits=reward_bits,
        reward_offset=reward_offset,
        units_per_day=units_per_day,
        mapped=mapped,
        dates=not pa.types.is_timestamp(ts.type),
    )


def _reward_bitmap(reward, n):
    """``(bitmap, bit_offset)`` of the reward flags with nulls cleared (null = false, SPEC §2)."""
    if reward is None or reward.null_count == n:  # absent, or all null (Arrow type null included)
        return np.zeros((n + 7) // 8, np.uint8), 0
    validity, data = reward.buffers()[:2]
    data = np.frombuffer(data, dtype=np.uint8)
    if not reward.null_count:
        return data, reward.offset
    first, stop = reward.offset // 8, (reward.offset + n + 7) // 8
    return data[first:stop] & np.frombuffer(validity, dtype=np.uint8)[first:stop], reward.offset % 8


def _values(arr, dtype):
    """Zero-copy (read-only) NumPy view of a primitive Arrow array's values."""
    dtype = np.dtype(dtype)
    return np.frombuffer(arr.buffers()[1], dtype=dtype, count=len(arr), offset=arr.offset * dtype.itemsize)


# --- sources ---------------------------------------------------------------

def _record_batches(orders, names, required, threads=None):
    """Yield ``(source, first_row, RecordBatch, mapped file or None)`` holding just the order columns.

    Runs of small record batches come merged (``_coalesced``). ``threads``:
    how many threads decode Parquet row groups (``_parquet_batches``).
    """
    return _coalesced(_source_batches(orders, names, required, threads))


def _coalesced(items):
    """Merge runs of record batches under ``SMALL_BATCH_ROWS`` rows into batches of about ``COALESCE_ROWS``.

    ``items`` are ``(source, first_row, batch, mapped, wanted)``: the order
    columns ``wanted`` are selected here, once per merged batch (selecting
    costs microseconds a batch). A merged batch is a copy (``mapped`` None)
    starting at its first part's row; batches of other sources (files of a
    directory) are never merged. Rows, their order and so every result stay
    the same.
    """
    pending, rows = [], 0

    def selected(item):
        source, first_row, batch, mapped, wanted = item
        return source, first_row, batch if batch.schema.names == wanted else batch.select(wanted), mapped

    def merged():
        if len(pending) == 1:
            return selected(pending[0])
        source, first_row, _, mapped, wanted = pending[0]
        if mapped is not None:
            mapped.check(first_row)   # the copy reads the mapped pages: the file must still be whole
        table = pa.Table.from_batches([item[2] for item in pending]).select(wanted).combine_chunks()
        return source, first_row, table.to_batches()[0], None

    items = iter(items)
    while True:
        try:
            item = next(items, None)
        except Exception:
            if pending:   # the rows before a bad batch first: their errors come first in a scan
                yield merged()
            raise
        if item is None:
            break
        n = item[2].num_rows
        if n == 0:
            continue
        if pending and (n >= SMALL_BATCH_ROWS or item[0] != pending[0][0]):
            yield merged()
            pending, rows = [], 0
        if n >= SMALL_BATCH_ROWS:
            yield selected(item)
            continue
        pending.append(item)
        rows += n
        if rows >= COALESCE_ROWS:
            yield merged()
            pending, rows = [], 0
    if pending:
        yield merged()


def _source_batches(orders, names, required, threads=None):
    if isinstance(orders, (str, os.PathLike)):
        yield from _file_batches(Path(orders), names, required, threads)
        return
    table = _in_memory(orders)
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    wanted = _select(IN_MEMORY, table.schema, names, required)
    # A RecordBatchReader is streamed, never materialised.
    batches = table.select(wanted).to_batches() if isinstance(table, pa.Table) else table
    row = 0
    for batch in batches:
        yield IN_MEMORY, row, batch, None, wanted
        row += batch.num_rows


def _in_memory(obj):
    if isinstance(obj, (pa.Table, pa.RecordBatch, pa.RecordBatchReader)):
        return obj
    module = type(obj).__module__
    if module.startswith("pandas") and hasattr(obj, "columns"):
        return pa.Table.from_pandas(obj, preserve_index=False)
    if module.startswith("polars") and hasattr(obj, "to_arrow"):
        return obj.to_arrow()
    if hasattr(obj, "__arrow_c_stream__"):
        return pa.RecordBatchReader.from_stream(obj)
    raise TypeError(
        "orders must be a file or directory path, a pyarrow Table/RecordBatch/RecordBatchReader, "
        f"or a pandas/polars DataFrame; got {type(obj).__name__}"
    )


_NOT_REGULAR = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"),
)


def _open_regular(path):
    """A read-only descriptor of ``path``, refused unless it is a regular file.

    Opened non-blocking, so a FIFO does not wait for a writer (it would hang
    forever), then checked with ``fstat`` on what was opened, so nothing can
    be swapped in between the check and the read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        if e.errno != errno.ENXIO:   # a UNIX socket cannot be opened at all
            raise
        fd, mode = None, os.stat(path).st_mode
    else:
        mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        if fd is not None:
            os.close(fd)
        kind = next((name for test, name in _NOT_REGULAR if test(mode)), "not a regular file")
        raise InputError(
            str(path), None,
            f"is {kind}, not a regular file; inputs are read by seeking and memory-mapping, "
            "so write the data to a file first",
        )
    return fd


def _file_kind(path, fd=None):
    if fd is None:
        fd = _open_regular(path)
        try:
            head = os.pread(fd, 8, 0)
        finally:
            os.close(fd)
    else:
        head = os.pread(fd, 8, 0)
    if head[:6] == b"ARROW1":
        return "ipc_file"
    if head[:4] == b"\xff\xff\xff\xff":
        return "ipc_stream"
    if head[:4] == b"PAR1":
        return "parquet"
    if path.suffix.lower() in (".csv", ".tsv", ".txt", ".json", ".jsonl"):
        raise CorruptInputError(
            str(path), None,
            f"{path.suffix} files are not read directly; convert the export to Arrow IPC or Parquet "
            "in the canonical layout (SPEC §2) first, e.g. with: loyaltymetrics prepare RAW -o orders.arrow",
        )
    if not head:
        raise CorruptInputError(str(path), None, "the file is empty")
    raise CorruptInputError(str(path), None, f"not an Arrow IPC or Parquet file (starts with {head!r})")


def _directory_files(path):
    """The data files of a directory, in sorted path order (hidden and ``_``-prefixed entries skipped)."""
    return sorted(
        p for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(("_", ".")) for part in p.relative_to(path).parts)
    )


def _file_batches(path, names, required, threads=None):
    if path.is_dir():
        files = _directory_files(path)
        if not files:
            raise InputError(str(path), None, "the directory holds no Parquet files")
        for file in files:
            yield from _file_batches(file, names, required, threads)
        return
    source = str(path)
    watch = _Watch(source, _open_regular(path))
    yield from _read_file(source, _file_kind(path, watch.fd), watch, names, required, threads)


def _read_file(source, kind, watch, names, required, threads=None):
    row = 0
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            # Read, not mapped: decoded batches are copies anyway, and mapped
            # pages would pile up in RSS as the file is streamed.
            parquet = pq.ParquetFile(source, memory_map=False)
            wanted = _select(source, parquet.schema_arrow, names, required)
            batches = _parquet_batches(source, parquet, wanted, threads)
            mapped = None
        else:
            try:
                mapped = _MappedFile(source, watch)
                data = mapped.buffer
            except OSError as e:
                if e.errno != errno.ENOMEM:
                    raise
                # No address space for the whole map (RLIMIT_AS): read batch by batch instead, if
                # there is room for a batch at all (Arrow's reader may crash where an allocation fails).
                pa.allocate_buffer(_FALLBACK_HEADROOM)
                mapped, data = None, pa.OSFile(source)
            if kind == "ipc_file":
                reader = pa.ipc.open_file(data)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            else:
                reader = batches = pa.ipc.open_stream(data)
            wanted = _select(source, reader.schema, names, required)
        batches = iter(batches)
        checked = -SMALL_BATCH_ROWS
        while True:
            # Before a batch's pages are touched (at least every SMALL_BATCH_ROWS
            # rows, a check costs microseconds): a file truncated since it was
            # mapped would end this process with SIGBUS.
            if row - checked >= SMALL_BATCH_ROWS:
                watch.check(row, quick=True)
                checked = row
            batch = next(batches, None)
            if batch is None:
                break
            batch.validate()  # buffer sizes agree with lengths: the kernel reads them unchecked
            if mapped is not None:
                mapped.let_go_through(batch)
            yield source, row, batch, mapped, wanted
            row += batch.num_rows
        watch.check(row)   # replaced or changed while the last rows were read
    except (pa.ArrowInvalid, pa.ArrowIOError, pa.ArrowNotImplementedError, pa.ArrowMemoryError,
            UnicodeDecodeError, OSError, MemoryError) as e:
        if isinstance(e, (FileNotFoundError, PermissionError)):
            raise
        watch.check(row)   # a file that changed under the reader reads as corrupt: say what happened
        raise read_error(e, source, row, f"cannot read {kind.replace('_', ' ')}") from e
    except (pa.ArrowException, RuntimeError) as e:   # Arrow's "Failed to launch worker thread", ...
        typed = resource_error(e, source, row)
        if typed is None:
            raise
        raise typed from e


# Row groups of at most this many rows are decoded whole, several side by side; a file with
# larger ones is streamed PARQUET_BATCH_ROWS at a time (memory stays bounded either way).
PARQUET_GROUP_ROWS = 1 << 21
# Decoded rows kept ready beyond the row group being taken, per thread: the driver (parallel.py)
# takes threads * chunk_rows rows a round and scans them on every thread; with a round's worth
# decoded ahead, the next round is decoded while this one is scanned (not before or after it).
PARQUET_AHEAD_ROWS = 1 << 21
PARQUET_AHEAD_GROUPS = 64   # and at most this many row groups (small row groups: few rows each)


def _decode_pool():
    """The memory pool row groups are decoded into: the system allocator (malloc).

    Arrow's default pool (mimalloc) lets go of the freed pages of decoded
    row groups and faults fresh ones in for the next, zeroing transparent
    huge pages of 2 MiB at a time; with two threads on a busy machine that
    up to a third of compute()'s CPU time. ``benchmarks/parquet_ab.py`` on
    5e7 rows, mimalloc -> malloc, medians of 4 interleaved fresh processes
    on a machine at load 8-10 (so read CPU seconds more than wall):
    snappy 1 thread 1.58 -> 1.20 CPU s, 2 threads 1.49 -> 1.48; zstd 1
    thread 2.01 -> 1.65, 2 threads 2.12 -> 1.91 (wall 6.25 -> 5.39 s).
    """
    return pa.system_memory_pool()


def _open_groups(source, metadata):
    """A row-group reader of the Parquet file ``source`` (footer ``metadata``) decoding into ``_decode_pool``."""
    try:
        from pyarrow._parquet import ParquetReader
    except ImportError:   # pyarrow's internal reader moved: its public one, with the default pool
        import pyarrow.parquet as pq

        return pq.ParquetFile(source, memory_map=False, metadata=metadata).reader
    reader = ParquetReader(memory_pool=_decode_pool())
    reader.open(source, use_memory_map=False, metadata=metadata, pre_buffer=False)
    return reader


def _read_group(reader, group, columns):
    """Row group ``group`` of ``reader`` (``_open_groups``): a Table of the column indices ``columns``."""
    return reader.read_row_group(group, column_indices=columns, use_threads=False)


def _parquet_batches(source, parquet, wanted, threads):
    """The record batches of ``parquet`` in row order, row groups decoded by ``threads`` threads.

    Each of up to ``threads`` worker threads decodes whole row groups with
    a reader of its own (pyarrow releases the GIL while it decodes), at most
    ``threads + 1`` row groups ahead of the batches taken: memory holds a
    few row groups, however large the file, and decoding overlaps the
    kernel's scan. Rows come in file order, so every result is the same as
    with one thread (which decodes here, one row group at a time). An error
    met decoding a row group is raised when that row group's turn comes,
    naming its first row, after the rows before it: the same error at every
    thread count. Decoding runs ahead of the batches taken by at least
    ``workers`` row groups and ``threads * PARQUET_AHEAD_ROWS`` rows (a
    round of the driver at its default chunk size; at most
    ``PARQUET_AHEAD_GROUPS`` row groups), so a round is decoded while the
    round before it is scanned. A file with row groups over ``PARQUET_GROUP_ROWS`` rows
    is streamed ``PARQUET_BATCH_ROWS`` rows at a time instead, one row
    group after another, its columns decoded side by side (pyarrow's
    threads) when ``threads`` > 1.
    """
    from concurrent.futures import ThreadPoolExecutor
    import queue

    import pyarrow.parquet as pq
    from .parallel import resolve_threads

    threads = resolve_threads(threads)
    metadata = parquet.metadata
    groups = metadata.num_row_groups
    if any(metadata.row_group(g).num_rows > PARQUET_GROUP_ROWS for g in range(groups)):
        for group in range(groups):   # batches never span two row groups: errors name the same rows
            yield from parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group], columns=wanted,
                                            use_threads=threads > 1)
        return
    workers = min(threads, groups) if threads > 1 else 0
    # One reader per worker, opened now (beside the watch's descriptor) and reused: no reader
    # is shared by two threads at once, and none opens the path later, when it may name another file.
    readers = queue.SimpleQueue()
    opened = [_open_groups(source, metadata) for _ in range(max(workers, 1))]
    columns = [opened[0].column_name_idx(name) for name in wanted]
    for reader in opened:
        readers.put(reader)

    def decode(group):
        reader = readers.get()
        try:
            table = _read_group(reader, group, columns)
        finally:
            readers.put(reader)
        return table.to_batches(max_chunksize=PARQUET_BATCH_ROWS)

    if not workers:
        for group in range(groups):
            yield from decode(group)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="loyaltymetrics-parquet")
    pending = []
    # ends[g]: rows of row groups [0, g); ends[ahead] - ends[group + 1]: rows submitted beyond the one taken.
    ends = list(itertools.accumulate((metadata.row_group(g).num_rows for g in range(groups)), initial=0))
    ahead_rows = threads * PARQUET_AHEAD_ROWS
    try:
        ahead = 0   # row groups submitted
        for group in range(groups):
            while ahead < groups and (ahead <= group + workers or (
                    ends[ahead] - ends[group + 1] < ahead_rows and ahead <= group + PARQUET_AHEAD_GROUPS)):
                pending.append(pool.submit(decode, ahead))
                ahead += 1
            batches = pending.pop(0).result()
            yield from batches
            del batches
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)
        for reader in opened:
            reader.close()


def read_error(error, source, row, what):
    """The typed error for an exception met while reading ``source``: corrupt input, or no memory/threads.

    Out of memory or threads (MemoryError, an Arrow allocation the machine
    could satisfy, a thread that could not start) is a ``ResourceError``:
    the file may be sound. An Arrow allocation larger than this machine's
    memory can only come from a corrupt length in the file.
    """
    resource = resource_error(error, source, row)
    return resource if resource is not None else CorruptInputError(source, row, f"{what}: {error}")


def resource_error(error, source=None, row=None):
    """``ResourceError`` if ``error`` means out of memory or threads (see ``read_error``), else None."""
    if isinstance(error, pa.ArrowMemoryError):
        size = _requested_bytes(str(error))
        if size is not None and size > _physical_memory():
            return None   # a corrupt length asked for more than the machine has
    return errors.resource_error(error, source, row)


def _requested_bytes(message):
    """The allocation size in an Arrow out-of-memory message ("malloc of size 123 failed"), or None."""
    import re

    sizes = [int(m) for m in re.findall(r"size (\d+)", message)]
    return max(sizes) if sizes else None


def _physical_memory():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


class _Watch:
    """Notices a file that is truncated, rewritten or replaced while it is read (SPEC §2).

    ``fd`` is the descriptor the file was opened with (the watch owns it and
    closes it when the last batch that may check it is gone): its size and
    modification time must not change, and ``source`` must still name it.
    """

    def __init__(self, source, fd):
        self.source, self.fd = source, fd
        st = os.fstat(fd)
        self.identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        self.slot = -1

    def guard(self, mapping, address, size):
        """Turn a SIGBUS in the pages of ``mapping`` into zeros read and a change noticed (``_guard``)."""
        if _guard is not None and _guard.install():
            self.slot = _guard.guard(address, size)
            if self.slot >= 0:
                weakref.finalize(mapping, _guard.unguard, self.slot)   # before its addresses can be reused

    def __del__(self):
        os.close(self.fd)

    def changed(self, quick=False):
        """What changed, or None; ``quick``: only whether the open file changed (one ``fstat``)."""
        if self.slot >= 0 and _guard.faults(self.slot):
            return "pages of the file vanished while it was being read (truncated?)"
        st = os.fstat(self.fd)
        now = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if now != self.identity:
            if st.st_size < self.identity[2]:
                return f"the file was truncated while it was being read ({self.identity[2]} bytes, now {st.st_size})"
            if st.st_size > self.identity[2]:
                return f"the file grew while it was being read ({self.identity[2]} bytes, now {st.st_size})"
            return "the file was rewritten while it was being read (its modification time changed)"
        if quick:
            return None
        try:
            st = os.stat(self.source)
        except OSError:
            return "the file was removed or renamed while it was being read"
        if (st.st_dev, st.st_ino) != self.identity[:2]:
            return "the file was replaced by another file while it was being read"
        return None

    def check(self, row, quick=False):
        detail = self.changed(quick)
        if detail is not None:
            raise InputChangedError(self.source, row, f"{detail}; read it again once it is complete")


_FALLBACK_HEADROOM = 64 << 20   # bytes that must be free to read an unmappable file batch by batch
_MADV_DONTNEED = 4
_MADV_POPULATE_READ = 22  # Linux >= 5.14; older kernels answer EINVAL, and pages fault in as usual


def _libc_madvise():
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = (ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int)
    madvise.restype = ctypes.c_int
    return madvise


_madvise = _libc_madvise() if sys.platform.startswith("linux") else None
try:
    from . import _guard
except ImportError:   # not built for this platform: the checks before each batch and chunk remain
    _guard = None


def _read_missing_in_huge_folios(mapping):
    """Have pages of ``mapping`` missing from the page cache read in 2 MiB folios (``MADV_HUGEPAGE``).

    A page-cache miss in a memory map that no readahead covers (the first
    page of each column's rows, the metadata pyarrow reads before each
    batch) is read around the fault, ``read_ahead_kb`` each side, in 4 KiB
    pages, and those stay in the page cache as such: every later call maps
    and unmaps them one by one. A 5e7-row file read cold by ``compute()``
    was left 51% in 4 KiB pages and 10% in 2 MiB folios, and later calls
    over it took 0.43 CPU s instead of 0.33. With this advice the faults
    read 2 MiB folios (on filesystems with large folios: ext4, xfs on Linux
    6.x). Pages already cached stay as they are, what is read is the same
    bytes, and where the kernel lacks the advice nothing changes.
    """
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None and hasattr(mapping, "madvise"):
        try:
            mapping.madvise(advice)
        except OSError:
            pass


# Pages are let go in whole 2 MiB ranges, aligned: where the file sits in 2 MiB folios the kernel
# maps them 2 MiB at a time, and dropping part of one splits it (a TLB flush on every core) and maps
# the rest again 4 KiB at a time.
HUGE_PAGE = 2 << 20


class Sweep:
    """Lets go of a map's pages as the rows before a point are done, in whole aligned 2 MiB ranges.

    ``upto(batch, row)`` says every row before ``row`` of ``batch`` (and of the
    batches before it) is done. A batch's columns lie one after another in the
    file, so what is not done yet is a range of each column (its rows from
    ``row`` on); the pages between those ranges are dropped, but not the 2 MiB
    range holding either end of one, which a later call drops. Threads call it
    as pieces in row order are done (``parallel._run_jobs``): what stays
    resident is about the rows being scanned, however large the file or its
    batches.
    """

    def __init__(self, mapped):
        self.mapped = mapped
        self._batch, self._lanes = None, []
        self._done = [mapped.buffer.address // HUGE_PAGE * HUGE_PAGE]   # dropped up to here, per lane
        self._lock = threading.Lock()

    def upto(self, batch, row):
        drops = []
        with self._lock:
            if batch is not self._batch:   # the batch before is done
                self._batch, self._lanes = batch, batch.lanes()
                self._done = self._done[:1] + [-(-end // HUGE_PAGE) * HUGE_PAGE for _, end, _ in self._lanes[:-1]]
            for k, (start, end, width) in enumerate(self._lanes):
                here = end if row == len(batch) else start + (
                    row * width if width else (batch.reward_offset + row) // 8)
                top = here // HUGE_PAGE * HUGE_PAGE
                if top > self._done[k]:
                    drops.append((self._done[k], top))
                    self._done[k] = top
        for start, end in drops:
            self.mapped._drop(start, end)


class _MappedFile:
    """A read-only memory map whose pages are let go once rows have been scanned.

    The batches' buffers point into the map (zero-copy). Pages the kernel has
    read stay in the page cache but are dropped from this process's resident
    set, so RSS stays flat however large the file. Dropping a page that is
    read again later only costs a page fault: the map is read-only.

    A mapped file that shrinks turns a read of its lost pages into SIGBUS,
    which no exception handler survives. So ``watch`` (``_Watch``) checks the
    file before the pages of each batch and each chunk are touched, and the
    pages are populated (``MADV_POPULATE_READ``) before the kernel reads
    them, which fails with EFAULT instead of SIGBUS for pages past the end.
    """

    def __init__(self, path, watch):
        self.watch = watch
        self._map = mmap.mmap(watch.fd, 0, access=mmap.ACCESS_READ)
        _read_missing_in_huge_folios(self._map)
        self.buffer = pa.py_buffer(self._map)
        watch.guard(self._map, self.buffer.address, self.buffer.size)
        self._let_go = self.buffer.address   # pages before this address were let go (let_go_through)
        self._end = -(-(self.buffer.address + self.buffer.size) // mmap.PAGESIZE) * mmap.PAGESIZE

    def check(self, row):
        self.watch.check(row)

    def populate(self, arrays, row):
        """Map the pages of the NumPy views ``arrays`` ahead of reading them (MADV_POPULATE_READ).

        One call per column instead of a page fault every few pages; the GIL
        is released (ctypes), so threads populate side by side. Raises
        ``InputChangedError`` (``row`` is the first row of ``arrays``) if the
        file changed since it was opened, or its pages cannot be read.
        """
        self.watch.check(row)
        if self._populate_pages(arrays) == errno.EFAULT:
            self.watch.check(row)
            raise InputChangedError(
                self.watch.source, row,
                "the file's pages cannot be read (truncated while it was being read?); "
                "read it again once it is complete",
            )

    def holds(self, address):
        return self.buffer.address <= address < self.buffer.address + self.buffer.size

    def let_go_through(self, batch):
        """Drop the pages mapped so far up to the end of ``batch`` (a record batch in the map).

        Reading a batch's metadata maps the pages around it (2 MiB at a time
        where the file sits in large folios); the kernel's rows are populated
        again before they are read. Without this, a driver that reads many
        batches ahead (``parallel._rounds``) holds the pages of all of them.
        """
        end = self._let_go
        for column in batch.columns:
            for buffer in column.buffers():
                if buffer is not None and self.holds(buffer.address):
                    end = max(end, buffer.address + buffer.size)
        start, end = self._let_go, end // HUGE_PAGE * HUGE_PAGE
        if end > start:
            self._let_go = end
            self._drop(start, end)

    def sweep(self):
        """A ``Sweep`` over this map's pages from its start."""
        return Sweep(self)

    def release(self, arrays, exact=False):
        """Drop the pages of the NumPy views ``arrays`` (those that point into the map), widened to whole
        2 MiB (for pages no thread reads now), or (``exact``) only the pages they are on."""
        unit = mmap.PAGESIZE if exact else HUGE_PAGE
        for array in arrays:
            address = array.__array_interface__["data"][0]
            if array.nbytes and self.holds(address):  # compressed files decode elsewhere
                self._drop(address // unit * unit, -(-(address + array.nbytes) // unit) * unit)

    def _drop(self, start, end):
        """MADV_DONTNEED ``[start, end)`` clipped to the map (the GIL is released)."""
        base = self.buffer.address // mmap.PAGESIZE * mmap.PAGESIZE
        start, end = max(start, base), min(end, self._end)
        if _madvise is not None and end > start:
            _madvise(start, end - start, _MADV_DONTNEED)

    def _populate_pages(self, arrays):
        """MADV_POPULATE_READ the pages of ``arrays`` (those in the map); the errno of the first failure, or 0."""
        if _madvise is None:
            return 0
        for array in arrays:
            address = array.__array_interface__["data"][0]
            if array.nbytes and self.holds(address):  # compressed files decode elsewhere
                start = address // mmap.PAGESIZE * mmap.PAGESIZE
                if _madvise(start, address + array.nbytes - start, _MADV_POPULATE_READ) != 0:
                    return ctypes.get_errno()   # EINVAL on kernels before 5.14: pages fault in as usual
        return 0


def _read_table(path):
    """A whole (small) Arrow IPC or Parquet file as a Table."""
    kind = _file_kind(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(str(path)).read()  # not pq.read_table: its dataset layer imports pandas
    with pa.OSFile(str(path)) as source:   # read, not mapped: a small table, and no SIGBUS if it shrinks
        reader = pa.ipc.open_file(source) if kind == "ipc_file" else pa.ipc.open_stream(source)
        return reader.read_all()


# --- merchants ---------------------------------------------------------------

def _is_string_view(arrow_type):
    is_string_view = getattr(pa.types, "is_string_view", None)  # pyarrow >= 16
    return bool(is_string_view and is_string_view(arrow_type))


def _int64_values(column, source, name):
    """A merchants column as Python ints (nulls as None); SchemaError if a value does not fit int64."""
    try:
        return column.cast(pa.int64()).to_pylist()
    except pa.ArrowInvalid as e:
        raise SchemaError(source, None, f"merchants column {name!r} has values outside int64: {e}") from e


def _utf8_values(column, source, name):
    """A string column as Python str (nulls as None); CorruptInputError naming the row of bytes that are not UTF-8.

    Parquet and Arrow IPC files do not guarantee that their string columns hold UTF-8.
    """
    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        for row, raw in enumerate(column.cast(pa.binary()).to_pylist()):
            try:
                raw is None or raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CorruptInputError(
                    source, row, f"merchants column {name!r} holds {raw[:40]!r}, which is not UTF-8 text ({e.reason} "
                    f"at byte {e.start})") from None
        raise


@dataclass(frozen=True)
class Merchants:
    """The merchants table, sorted by merchant_id, nulls resolved (SPEC §2)."""

    merchant_id: np.ndarray  # int64, sorted, unique
    industry: np.ndarray     # object (str)
    country: np.ndarray      # object (str)
    annual_fee: np.ndarray   # int64 minor units
    source: str = "merchants"  # the file (or "<table>") named in errors about these values
    name: np.ndarray | None = None   # object (str or None) when the table has a `name` column
    timezone: np.ndarray | None = None  # object (IANA name, or None: the default) with a `timezone` column

    def zones(self, default=None):
        """``periods.MerchantZones``: each merchant's ``timezone``, else ``default`` (None: UTC) (SPEC §3)."""
        if self.timezone is None:
            return periods.MerchantZones.default(default)
        return periods.MerchantZones.from_names(self.merchant_id, self.timezone, default)

    @classmethod
    def empty(cls):
        return cls(np.empty(0, np.int64), np.empty(0, object), np.empty(0, object), np.empty(0, np.int64))

    def names(self, merchant_id):
        """The ``name`` of each of ``merchant_id`` (None where missing or null), or None without names."""
        if self.name is None:
            return None
        found, idx = self._find(np.asarray(merchant_id, dtype=np.int64))
        out = np.full(len(found), None, dtype=object)
        out[found] = self.name[idx]
        return out

    def _find(self, merchant_id):
        """(whether each of ``merchant_id`` is in the table, the table rows of those that are)."""
        idx = np.searchsorted(self.merchant_id, merchant_id)
        found = idx < len(self.merchant_id)
        found[found] = self.merchant_id[idx[found]] == merchant_id[found]
        return found, idx[found]

    def annual_fees(self, merchant_id):
        """The ``annual_fee`` of each of ``merchant_id``; missing → 0."""
        found, idx = self._find(merchant_id)
        fee = np.zeros(len(merchant_id), np.int64)
        fee[found] = self.annual_fee[idx]
        return fee

    def lookup(self, merchant_id):
        """(industry, country) arrays for ``merchant_id``; missing → "unknown"."""
        found, idx = self._find(merchant_id)
        industry = np.full(len(merchant_id), UNKNOWN, dtype=object)
        country = industry.copy()
        industry[found] = self.industry[idx]
        country[found] = self.country[idx]
        return industry, country


MERCHANT_COLUMNS = ("merchant_id", "industry", "country", "annual_fee", "name", "timezone")
_TEXT_COLUMNS = ("industry", "country", "name", "timezone")


def _column_key(name):
    """A column name without case, spaces, hyphens and underscores: how near-misses are recognised."""
    return "".join(ch for ch in str(name).lower() if ch not in " -_\t")


def _check_merchant_column_names(source, names):
    """SPEC §2: a column that is a near-miss of an expected name is an error, never silently ignored."""
    expected = {_column_key(c): c for c in MERCHANT_COLUMNS}
    for name in names:
        if name in MERCHANT_COLUMNS:
            continue
        wanted = expected.get(_column_key(name))
        if wanted is not None:
            raise SchemaError(source, None, f"merchants column {name!r} should be named {wanted!r} "
                                            "(column names are exact: lower case, with underscores)")


def read_merchants(merchants):
    """Read and check a merchants table: a path (Parquet, Arrow IPC, CSV) or a table/DataFrame.

    ``industry``/``country`` absent, null or empty → "unknown"; ``annual_fee``
    absent or null → 0 (as for a merchant missing from the table). ``name``
    (optional) is kept for ``merchant_name`` (null or empty → null);
    ``timezone`` (optional) is each merchant's IANA time zone (null or empty:
    the default zone; a name that is not one is a ``SchemaError`` naming the
    row and the value). A column whose name differs
    from one of these only in case, spaces, hyphens or underscores is a
    ``SchemaError`` (SPEC §2).
    """
    if merchants is None:
        return Merchants.empty()
    if isinstance(merchants, (str, os.PathLike)):
        source = str(merchants)
        path = Path(merchants)
        os.close(_open_regular(path))   # a FIFO would hang the reader
        try:
            if path.suffix.lower() == ".csv":
                import pyarrow.csv as pacsv

                # Industry, country and name are text even when they look like numbers (NAICS, ISO
                # codes, numeric shop ids).
                text_columns = {name: pa.string() for name in _TEXT_COLUMNS}
                table = pacsv.read_csv(source, convert_options=pacsv.ConvertOptions(column_types=text_columns))
            else:
                table = _read_table(path)
        except (pa.ArrowInvalid, pa.ArrowIOError, pa.ArrowMemoryError, MemoryError) as e:
            raise read_error(e, source, None, "cannot read merchants table") from e
    else:
        source = IN_MEMORY
        table = _in_memory(merchants)
        if isinstance(table, pa.RecordBatchReader):
            table = table.read_all()
        elif isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
    names = table.schema.names
    _check_merchant_column_names(source, names)
    if "merchant_id" not in names:
        raise SchemaError(source, None, f"merchants table has no 'merchant_id' column; it has {', '.join(map(repr, names))}")
    ids = table.column("merchant_id")
    # A header-only CSV has no rows to infer types from (null type): an empty table, as in Parquet.
    if not (pa.types.is_integer(ids.type) or (pa.types.is_null(ids.type) and table.num_rows == 0)):
        raise SchemaError(source, None, f"merchants column 'merchant_id' has type {ids.type}; expected an integer")
    if ids.null_count:
        row = pc.index(ids.is_null(), True).as_py()
        raise NullValueError(source, row, "null in merchants column 'merchant_id'")
    ids = np.array(_int64_values(ids, source, "merchant_id"), dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    if len(dup):
        first, second = sorted(order[dup[0]: dup[0] + 2])
        raise DuplicateMerchantError(
            source, int(second), f"merchant_id {sorted_ids[dup[0]]} appears again (first at row {first})"
        )

    def text(column):
        if column not in names:
            return np.full(len(ids), UNKNOWN, dtype=object)
        col = table.column(column)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or _is_string_view(col.type)
                or pa.types.is_dictionary(col.type) or pa.types.is_null(col.type)):
            raise SchemaError(source, None, f"merchants column {column!r} has type {col.type}; expected string")
        # Null or empty is "unknown" whatever the file format (a CSV writes a null as an empty field).
        values = [UNKNOWN if v is None or v == "" else v
                  for v in _utf8_values(col.cast(pa.string()), source, column)]
        return np.array(values, dtype=object)[order]

    def optional_name():
        if "name" not in names:
            return None
        col = table.column("name")
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or _is_string_view(col.type)
                or pa.types.is_dictionary(col.type) or pa.types.is_null(col.type) or pa.types.is_integer(col.type)):
            raise SchemaError(source, None, f"merchants column 'name' has type {col.type}; expected string")
        values = [None if v is None or v == "" else v for v in col.cast(pa.string()).to_pylist()]
        return np.array(values, dtype=object)[order]

    if "timezone" in names:
        col = table.column("timezone")
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or _is_string_view(col.type)
                or pa.types.is_dictionary(col.type) or pa.types.is_null(col.type)):
            raise SchemaError(source, None, f"merchants column 'timezone' has type {col.type}; expected string")
        zone_names = list(_utf8_values(col.cast(pa.string()), source, "timezone"))
        periods.merchant_zones(ids, zone_names, source=source)   # checks each name, naming its row
        zone_names = np.array([None if v == "" else v for v in zone_names], dtype=object)[order]
    else:
        zone_names = None

    if "annual_fee" in names:
        fee_col = table.column("annual_fee")
        if not (pa.types.is_integer(fee_col.type) or pa.types.is_null(fee_col.type)):
            raise SchemaError(
                source, None, f"merchants column 'annual_fee' has type {fee_col.type}; expected int64 minor units"
            )
        fee = np.array([v or 0 for v in _int64_values(fee_col, source, "annual_fee")], dtype=np.int64)
        if (fee < 0).any():
            row = int(np.flatnonzero(fee < 0)[0])
            raise NegativeAmountError(source, row, f"negative annual_fee {fee[row]}")
        fee = fee[order]
    else:
        fee = np.zeros(len(ids), np.int64)
    return Merchants(sorted_ids, text("industry"), text("country"), fee, source, optional_name(), zone_names)
