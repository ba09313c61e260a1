"""Rows in any order (SPEC §8 ``presorted=False`` / ``--unsorted``).

The kernels need each store-customer's rows together and in time order,
ties in file order. This module turns an input in any order into a stream
sorted by ``(merchant_id, customer_id, order_ts)`` — stably, so ties keep
their input order — and the drivers read that stream as they read a sorted
input: results are bit-identical to the presorted path by construction.

The bucket path (``bucketed_input``; the default)
--------------------------------------------------
* Bounds of merchant_id and customer_id come from the Parquet statistics
  (else from a pass over the two key columns of a table or Arrow file), so
  that ``(merchant_id - mlo) << cbits | (customer_id - clo)`` packs every
  key into 64 bits, monotone in (merchant_id, customer_id).
* One streaming pass over the input (Parquet row groups decoded by the
  reader's threads, ahead of this one): the Cython ``scatter`` checks each
  row's amount and order_ts in input order (the first bad row of the input
  is named, as the presorted path names it; nulls are ``order_batches``')
  and counting-sorts the rows into about ``rows / BUCKET_ROWS`` range
  buckets of the packed key, starting at quantiles of a sample of the
  first batch's keys (so a heavy merchant spreads over many buckets),
  found through a table of 2**16 cells of the key (a binary search only in
  cells that hold several buckets). A row takes 21 bytes (int32 ids): the
  key less its bucket's first key in 32 bits (when every bucket's span
  fits, else 64), order_ts, amount and a reward byte. Each batch's bucketed
  copy is a *part*; no row index.
* Parts beyond ``memory_limit`` less ``OVERHEAD_BYTES`` are spilled, the
  oldest first (a quarter of that budget at a time), as *runs* appended to
  one private temporary file (in a directory of mode 0700 under
  ``tempfile.gettempdir()``, removed when the call returns, also on an
  error or KeyboardInterrupt), each column bucket after bucket. So peak
  RSS stays about ``memory_limit`` (measured: 0.96 GiB for 5e7 rows at
  1 GiB; not below about 450 MB), whatever the input's size; plan disk for
  one copy of the order columns.
* Consecutive buckets of about ``UNIT_ROWS`` rows (a *unit*, a few MB) are
  gathered — runs first, then parts, so each store-customer's rows are in
  input order — and sorted in cache by ``sort_unit`` (LSD radix on the
  packed key less the unit's least key with the row index below it, then
  each store-customer's rows by order_ts), ``threads`` units at a time,
  and streamed in key order to the drivers as a ``RecordBatchReader``:
  no sorted copy is written.
* An error the drivers meet on the sorted stream (an int64 overflow: the
  checks above leave no other) is raised by running the copy path below,
  whose sorted copy knows each row's place in the input.
* Inputs the bucket path cannot take — a one-shot stream, keys whose range
  does not pack into 64 bits, key or timestamp types that change between
  files, keys outside the Parquet statistics — take the copy path.

The copy path (``sorted_input``: ``rfm``, and the fallback above)
-----------------------------------------------------------------
* Input whose order columns plus a 12-byte original row index and source
  fit in ``memory_limit`` / 4 (a sort holds about four times its data) is
  read into memory and sorted stably (``_sort``: the Cython kernels of
  ``kernels/_sort.pyx``, else Arrow's stable ``sort_indices``).
* Larger input is partitioned by *ranges* of ``(merchant_id,
  customer_id)`` (splitters are quantiles of the first memory-sized part
  of the input) into pieces spilled to private temporary Arrow IPC files;
  each piece is then read back, sorted in memory (a piece still too large
  is partitioned again) and appended to one sorted Arrow IPC file, which
  the drivers memory-map. Range pieces rather than hash pieces: their
  concatenation is globally sorted, so every driver (the two-pass
  concentration, the streaming rfm, the earliest/latest order tracking,
  the order checks) works unchanged. Partitioning keeps input order within
  a piece, so the sort stays stable.
* Errors keep naming the input: nulls, negative amounts (without refunds)
  and timestamps outside 1970..2262 are checked in input order before
  anything is sorted; other errors met by the drivers on the sorted copy
  (an int64 overflow) are translated back to the input's file and row.
"""
import collections
import contextlib
import mmap
import os
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import periods
from .errors import InputError
from .inputs import (IN_MEMORY, _directory_files, _file_kind, _physical_memory, count_rows, order_batches,
                     rereadable, resolve_columns, source_label)

try:
    from . import _sort as _radix
except ImportError:   # not built: Arrow's sort, slower
    _radix = None

# Bytes per row of the sorted copy beyond the order columns: the original row index and source.
_ROW_BYTES = 12
# Peak memory of an in-memory sort per byte of input columns (measured about 4 at 5e6 rows): the
# columns, the packed keys and permutations of the radix sort, the sorted copy.
_SORT_FACTOR = 4.0
SAMPLE_ROWS = 1 << 17    # keys sampled from the head to choose range splitters
MAX_PIECES = 256          # spill files open at once
OUTPUT_BATCH_ROWS = 1 << 20
_UNIT_OF = {v: k for k, v in periods.UNITS_PER_DAY.items()}


# The default memory_limit at most: 5e7 rows of int32 keys (25 bytes a row partitioned) stay under 2 GB of RSS.
DEFAULT_MEMORY_LIMIT = 7 << 28   # 1.75 GiB


def default_memory_limit():
    """A quarter of this machine's physical memory, at most ``DEFAULT_MEMORY_LIMIT`` (the default ``memory_limit``)."""
    return max(64 << 20, min(DEFAULT_MEMORY_LIMIT, _physical_memory() // 4))


def check_memory_limit(memory_limit):
    if memory_limit is None:
        return default_memory_limit()
    # Any positive size is accepted (a tiny one spills nearly every batch: the tests use that).
    if isinstance(memory_limit, bool) or not isinstance(memory_limit, (int, np.integer)) or memory_limit < 1:
        raise ValueError(f"memory_limit must be a positive number of bytes or None; got {memory_limit!r}")
    return int(memory_limit)


def parse_size(text):
    """``"4G"``, ``"512M"``, ``"1000000"`` → bytes (for ``--memory-limit``); binary multiples."""
    text = str(text).strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in "KMGT" else text
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (e.g. 4G, 512M or a number of bytes)") from None
    return int(value * scale)


class _Checker:
    """Checks each batch in input order (the checks the kernel makes on a row by itself)."""

    def __init__(self, refunds, stop_error=None):
        self.refunds = refunds
        self.stop_error = stop_error

    def __call__(self, batch):
        from .scan import Status, _stop_error

        stop_error = self.stop_error or _stop_error

        t, a = batch.order_ts, batch.amount
        ts_bad = (t < 0) | (t > periods.ts_max(batch.units_per_day))
        bad = ts_bad if self.refunds else ts_bad | (a < 0)
        if bad.any():
            row = int(np.argmax(bad))
            # The kernel checks the amount first (SPEC §2 errors: the presorted path's message).
            status = Status.NEGATIVE_AMOUNT if not self.refunds and a[row] < 0 else Status.TIMESTAMP_RANGE
            raise stop_error(status, batch, row, None)


def _ts_type(batch):
    if batch.dates:
        return pa.date32() if batch.units_per_day == 1 else pa.date64()
    return pa.timestamp(_UNIT_OF[batch.units_per_day])


def _to_record_batch(batch, src_index):
    """An ``OrderBatch`` as a RecordBatch of the canonical columns plus ``_row`` / ``_src``."""
    n = len(batch)
    reward = pa.Array.from_buffers(pa.bool_(), n, [None, pa.py_buffer(np.ascontiguousarray(batch.reward_bits))],
                                   offset=batch.reward_offset)
    return pa.record_batch({
        "merchant_id": batch.merchant_id,
        "customer_id": batch.customer_id,
        "order_ts": pa.Array.from_buffers(_ts_type(batch), n, [None, pa.py_buffer(np.ascontiguousarray(batch.order_ts))]),
        "amount": batch.amount,
        "reward": reward,
        "_row": np.arange(batch.first_row, batch.first_row + n, dtype=np.int64),
        "_src": np.full(n, src_index, np.int32),
    })


def _sort(table):
    """``table`` sorted stably by (merchant_id, customer_id, order_ts), as one chunk per column."""
    if table.num_rows == 0:
        return table
    table = table.combine_chunks()
    if _radix is not None:
        # kernels/_sort.pyx: a stable radix sort of the packed (merchant_id, customer_id), then each
        # store-customer's rows by order_ts. 5e6 random rows: 0.5 s, against 1.1 s for a radix sort
        # over the three keys, 2.8 s for Arrow's sort_indices and 6.4 s for numpy.lexsort.
        keys = [_raw_values(table.column(c).chunk(0)) for c in ("merchant_id", "customer_id", "order_ts")]
        order = _radix.grouped_order(*keys)
        if order is None:   # (merchant_id, customer_id) do not pack into 64 bits
            order = _radix.stable_order(keys)
    else:   # Arrow's sort_indices is stable too: equal keys keep their order (ties keep input order)
        order = pc.sort_indices(table, [("merchant_id", "ascending"), ("customer_id", "ascending"),
                                        ("order_ts", "ascending")])
    return table.take(order).combine_chunks()


def _raw_values(arr):
    """The integers of a primitive Arrow array without nulls (timestamps and dates as their raw numbers)."""
    dtype = np.int64 if arr.type.bit_width == 64 else np.int32
    return np.frombuffer(arr.buffers()[1], dtype=dtype, count=len(arr), offset=arr.offset * np.dtype(dtype).itemsize)


def _keys(table):
    return (np.asarray(table.column("merchant_id").combine_chunks()).astype(np.int64, copy=False),
            np.asarray(table.column("customer_id").combine_chunks()).astype(np.int64, copy=False))


def _piece_of(m, c, sm, sc):
    """Index of the range piece of each key (m, c): the number of splitters (sm, sc) at or below it."""
    piece = np.searchsorted(sm, m, "left")
    hi = np.searchsorted(sm, m, "right")
    equal = hi > piece
    if equal.any():
        for merchant in np.unique(m[equal]):
            rows = np.flatnonzero(m == merchant)
            lo_j = np.searchsorted(sm, merchant, "left")
            hi_j = np.searchsorted(sm, merchant, "right")
            piece[rows] = lo_j + np.searchsorted(sc[lo_j:hi_j], c[rows], "right")
    return piece


class SortedInput:
    """The input sorted into a Table or an Arrow IPC file, and how to name its rows in the input."""

    def __init__(self, orders, sources, label, memory_limit, refunds):
        self.label = label
        self.sources = sources
        self.orders = orders       # pa.Table or path
        self.memory_limit = memory_limit
        self._rows = None

    def original(self, position):
        """(source, row) in the input of row ``position`` of the sorted copy."""
        if isinstance(self.orders, pa.Table):
            row = self.orders.column("_row")[position].as_py()
            src = self.orders.column("_src")[position].as_py()
        else:
            with pa.memory_map(self.orders) as f:
                reader = pa.ipc.open_file(f)
                for i in range(reader.num_record_batches):
                    batch = reader.get_batch(i)
                    if position < batch.num_rows:
                        row, src = batch.column("_row")[position].as_py(), batch.column("_src")[position].as_py()
                        break
                    position -= batch.num_rows
                else:
                    return self.label, None
        return self.sources[src], row

    @contextlib.contextmanager
    def translated_errors(self):
        """Errors about the sorted copy name the input's file and row instead."""
        try:
            yield
        except InputError as error:
            inner = self.orders if isinstance(self.orders, pa.Table) else str(self.orders)
            if error.source != source_label(inner):
                raise
            source, row = (self.label, None) if error.row is None else self.original(error.row)
            raise type(error)(source, row, error.detail) from error


@contextlib.contextmanager
def sorted_input(orders, columns=None, refunds=False, memory_limit=None, stop_error=None):
    """Context manager: ``SortedInput`` of ``orders`` (any input ``order_batches`` reads) in sorted order.

    Temporary files are removed on exit, whatever happened. ``stop_error(status,
    batch, row, None)`` words the error of a bad row (default: ``scan._stop_error``).
    """
    memory_limit = check_memory_limit(memory_limit)
    label = source_label(orders)
    tmp = None
    try:
        sources, table, rest = _read(orders, columns, refunds, memory_limit, stop_error)
        if rest is None:
            yield SortedInput(_sort(table), sources, label, memory_limit, refunds)
            return
        tmp = tempfile.mkdtemp(prefix="loyaltymetrics-unsorted-")   # mode 0700: private
        path = os.path.join(tmp, "sorted.arrow")
        total = count_rows(orders)
        _spill_sort(table, rest, path, tmp, memory_limit, total)
        yield SortedInput(path, sources, label, memory_limit, refunds)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _budget_bytes(memory_limit):
    return int(memory_limit / _SORT_FACTOR)


def _read(orders, columns, refunds, memory_limit, stop_error):
    """Read and check batches until they exceed the in-memory budget.

    Returns ``(sources, table, rest)``: ``rest`` None when the whole input
    is in ``table``, else an iterator of the remaining RecordBatches.
    """
    check = _Checker(refunds, stop_error)
    sources, index = [], {}
    budget = _budget_bytes(memory_limit)

    def record_batches():
        for batch in order_batches(orders, columns):
            check(batch)
            if batch.source not in index:
                index[batch.source] = len(sources)
                sources.append(batch.source)
            yield _to_record_batch(batch, index[batch.source])

    stream = record_batches()
    held, size = [], 0
    for rb in stream:
        held.append(rb)
        size += rb.nbytes
        if size > budget:
            return sources, pa.Table.from_batches(held), stream
    schema = held[0].schema if held else _empty_schema()
    return sources, pa.Table.from_batches(held, schema=schema), None


def _empty_schema():
    return pa.schema([("merchant_id", pa.int64()), ("customer_id", pa.int64()), ("order_ts", pa.timestamp("us")),
                      ("amount", pa.int64()), ("reward", pa.bool_()), ("_row", pa.int64()), ("_src", pa.int32())])


def _spill_sort(head, rest, path, tmp, memory_limit, total):
    """Sort ``head`` then ``rest`` (RecordBatches) into the Arrow IPC file ``path`` through range pieces."""
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, head.schema) as writer:
        _partition_sort(head, rest, writer, tmp, memory_limit, total, depth=0)


def _partition_sort(head, rest, writer, tmp, memory_limit, total, depth):
    """Write ``head`` + ``rest`` sorted to ``writer``: partitioned by key ranges sampled from ``head``."""
    budget_rows = max(1, int(head.num_rows * _budget_bytes(memory_limit) / max(1, head.nbytes)))
    expected = total if total else head.num_rows * 64
    n_pieces = int(min(MAX_PIECES, max(2, -(-2 * expected // budget_rows))))
    m, c = _keys(head)
    step = max(1, len(m) // SAMPLE_ROWS)   # splitters from a sample: a pass, not a sort, over the head
    m, c = m[::step], c[::step]
    order = np.lexsort((c, m))
    picks = order[(np.arange(1, n_pieces) * len(order)) // n_pieces]
    sm, sc = m[picks], c[picks]
    keep = np.ones(len(sm), bool)
    keep[1:] = (sm[1:] != sm[:-1]) | (sc[1:] != sc[:-1])
    sm, sc = sm[keep], sc[keep]
    if depth >= 4 or len(sm) == 0:   # one store-customer fills the piece: it can only be sorted as it is
        table = pa.concat_tables([head] + [pa.Table.from_batches([rb]) for rb in rest])
        _write(_sort(table), writer)
        return
    names = [os.path.join(tmp, f"piece-{depth}-{i}.arrows") for i in range(len(sm) + 1)]
    piece_writers = {}
    sizes = [0] * len(names)
    try:
        def spill(table):
            mm, cc = _keys(table)
            piece = _piece_of(mm, cc, sm, sc)
            order = np.argsort(piece, kind="stable")   # stable: input order kept within a piece
            bounds = np.searchsorted(piece[order], np.arange(len(names) + 1))
            table = table.take(order)
            for i in range(len(names)):
                lo, hi = int(bounds[i]), int(bounds[i + 1])
                if hi > lo:
                    part = table.slice(lo, hi - lo)
                    if i not in piece_writers:
                        sink = pa.OSFile(names[i], "wb")
                        piece_writers[i] = (sink, pa.ipc.new_stream(sink, table.schema))
                    piece_writers[i][1].write_table(part)
                    sizes[i] += part.nbytes

        spill(head)
        del head
        for rb in rest:
            spill(pa.Table.from_batches([rb]))
        for sink, w in piece_writers.values():
            w.close()
            sink.close()
        piece_writers.clear()
        for i, name in enumerate(names):
            if not sizes[i]:
                continue
            with pa.OSFile(name) as f:
                reader = pa.ipc.open_stream(f)
                if sizes[i] <= _budget_bytes(memory_limit):
                    _write(_sort(reader.read_all()), writer)
                else:   # skewed: partition this piece again, on key ranges of its own
                    batches = iter(reader)
                    first, held = [], 0
                    for rb in batches:
                        first.append(rb)
                        held += rb.nbytes
                        if held > _budget_bytes(memory_limit):
                            break
                    _partition_sort(pa.Table.from_batches(first), batches, writer, tmp, memory_limit,
                                    None, depth + 1)
            os.remove(name)
    finally:
        for sink, w in piece_writers.values():
            with contextlib.suppress(Exception):
                w.close()
            sink.close()
        for name in names:
            with contextlib.suppress(OSError):
                os.remove(name)


def _write(table, writer):
    for batch in table.to_batches(max_chunksize=OUTPUT_BATCH_ROWS):
        writer.write_batch(batch)


# --- the bucket path ----------------------------------------------------------------------------

CELL_BITS = 16            # the bucket of a row is table[packed key >> shift], a table of 2**16 cells
BUCKET_ROWS = 1 << 16     # rows a bucket is planned to hold (a 1.6 MB sort)
MAX_BUCKETS = 4096
UNIT_ROWS = 1 << 16       # consecutive buckets are sorted and fed together up to this many rows
COPY_BYTES = 16 << 20     # spill files are written in pieces of this size
# Peak RSS beyond the rows held (measured): the interpreter and libraries, row groups being decoded, units being
# sorted and the driver's window. memory_limit minus this is what the partitioned rows may take before they spill.
OVERHEAD_BYTES = 448 << 20


def _mapped_empty(n, dtype):
    """An uninitialised array in an anonymous mapping of its own (unmapped when the array goes).

    Not ``numpy.empty``: NumPy asks for transparent huge pages for arrays of 4 MB or more, and where
    the kernel then compacts memory on the first touch of each (``defrag`` = ``madvise``) the
    partition spent 0.6 s of system time a 2e7-row input against 0.25 s in plain pages.
    """
    dtype = np.dtype(dtype)
    if n * dtype.itemsize < 4 << 20:   # NumPy's threshold (and no mapping a small array: there are 65530)
        return np.empty(n, dtype)
    mapping = mmap.mmap(-1, n * dtype.itemsize, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)   # not shared memory
    return np.frombuffer(mapping, dtype, count=n)


class _Fallback(Exception):
    """The bucket path cannot take this input (keys that do not pack, a stream, mixed types): the copy path."""


def _key_bounds(orders, columns):
    """``(mlo, mhi, clo, chi)``: bounds of merchant_id and customer_id (Parquet statistics or a pass), or None."""
    names = resolve_columns(columns)
    if isinstance(orders, (str, os.PathLike)):
        try:
            path = Path(orders)
            files = _directory_files(path) if path.is_dir() else [path]
            if files and all(_file_kind(f) == "parquet" for f in files):
                bounds = _parquet_bounds(files, names["merchant_id"], names["customer_id"])
                if bounds is not None:
                    return bounds
        except (InputError, OSError, pa.ArrowException):
            return None   # the copy path reports it
    bounds = None
    try:   # tables and Arrow files: zero-copy, a pass over two columns
        for batch in order_batches(orders, columns):
            m, c = batch.merchant_id, batch.customer_id
            here = (int(m.min()), int(m.max()), int(c.min()), int(c.max()))
            bounds = here if bounds is None else (min(bounds[0], here[0]), max(bounds[1], here[1]),
                                                  min(bounds[2], here[2]), max(bounds[3], here[3]))
    except (InputError, OSError, pa.ArrowException):
        return None   # bad input: the copy path names the first bad row
    return bounds


def _parquet_bounds(files, merchant, customer):
    import pyarrow.parquet as pq

    lo = [None, None]
    hi = [None, None]
    for file in files:
        metadata = pq.ParquetFile(str(file), memory_map=False).metadata
        index = {metadata.schema.column(j).path: j for j in range(metadata.num_columns)}
        if merchant not in index or customer not in index:
            return None
        for g in range(metadata.num_row_groups):
            group = metadata.row_group(g)
            if group.num_rows == 0:
                continue
            for k, name in enumerate((merchant, customer)):
                stats = group.column(index[name]).statistics
                if stats is None or not stats.has_min_max or not isinstance(stats.min, int):
                    return None
                lo[k] = stats.min if lo[k] is None else min(lo[k], stats.min)
                hi[k] = stats.max if hi[k] is None else max(hi[k], stats.max)
    if lo[0] is None:
        return None
    return lo[0], hi[0], lo[1], hi[1]


class _Plan:
    """How rows map to range buckets of their packed key ``(m - mlo) << cbits | (c - clo)`` (see ``_sort.scatter``)."""

    def __init__(self, bounds, sample, total):
        self.mlo, self.mhi, self.clo, self.chi = bounds
        self.cbits = (self.chi - self.clo).bit_length()
        bits = (self.mhi - self.mlo).bit_length() + self.cbits
        if bits > 64:
            raise _Fallback
        self.shift = max(0, bits - CELL_BITS)
        cells = (((self.mhi - self.mlo) << self.cbits | (self.chi - self.clo)) >> self.shift) + 1
        self.buckets = int(min(MAX_BUCKETS, max(1, -(-(total or 0) // BUCKET_ROWS))))
        step = max(1, len(sample) // SAMPLE_ROWS)
        m, c = sample.merchant_id[::step], sample.customer_id[::step]
        inside = (m >= self.mlo) & (m <= self.mhi) & (c >= self.clo) & (c <= self.chi)
        m, c = m[inside].astype(np.int64), c[inside].astype(np.int64)
        keys = (((m.view(np.uint64) - np.uint64(self.mlo % (1 << 64))) << np.uint64(self.cbits))
                | (c.view(np.uint64) - np.uint64(self.clo % (1 << 64))))
        # Buckets start at quantiles of the sample's keys (distinct: one store-customer is never split),
        # so a heavy merchant's customers spread over many buckets. Any increasing bases sort correctly;
        # good ones balance the buckets.
        keys = np.unique(np.sort(keys)[(np.arange(1, self.buckets) * len(keys)) // self.buckets]) if len(keys) \
            else np.zeros(0, np.uint64)
        self.bases = np.concatenate([[0], keys[keys > 0]]).astype(np.uint64)
        self.buckets = len(self.bases)
        # Cell c (keys [c << shift, (c + 1) << shift)) lies in buckets first[c] .. last[c].
        edges = np.arange(cells, dtype=np.uint64) << np.uint64(self.shift)
        self.first = (np.searchsorted(self.bases, edges, "right") - 1).astype(np.uint16)
        ends = edges + np.uint64((1 << self.shift) - 1)
        self.last = (np.searchsorted(self.bases, ends, "right") - 1).astype(np.uint16)
        top = ((self.mhi - self.mlo) << self.cbits | (self.chi - self.clo)) + 1   # one past the largest key
        span = max(int(b) - int(a) for a, b in zip(self.bases, list(self.bases[1:]) + [top]))
        self.rel_dtype = np.dtype(np.uint32 if span <= 1 << 32 else np.uint64)
        self.key_dtypes = (sample.merchant_id.dtype, sample.customer_id.dtype, sample.order_ts.dtype)
        self.units_per_day, self.dates = sample.units_per_day, sample.dates
        # The partitioned columns: relative key, order_ts, amount, reward (one byte).
        self.dtypes = (self.rel_dtype, self.key_dtypes[2], np.dtype(np.int64), np.dtype(np.uint8))
        ts_type = (pa.date32() if self.units_per_day == 1 else pa.date64()) if self.dates else \
            pa.timestamp(_UNIT_OF[self.units_per_day])
        key_type = {np.dtype(np.int32): pa.int32(), np.dtype(np.int64): pa.int64()}
        self.schema = pa.schema([("merchant_id", key_type[self.key_dtypes[0]]),
                                 ("customer_id", key_type[self.key_dtypes[1]]), ("order_ts", ts_type),
                                 ("amount", pa.int64()), ("reward", pa.bool_())])


class _Part:
    """The rows of one input batch, grouped by bucket (input order within a bucket)."""

    __slots__ = ("columns", "offsets")

    def __init__(self, columns, offsets):
        self.columns, self.offsets = columns, offsets


class _Run:
    """Parts spilled to the spill file: each column bucket after bucket, each bucket's rows in input order.

    Every run is appended to one file (``spill``, a binary file object; its descriptor read with
    ``pread``): one descriptor however many runs there are.
    """

    def __init__(self, spill, parts, plan):
        offsets = np.stack([p.offsets for p in parts])
        counts = (offsets[:, 1:] - offsets[:, :-1]).sum(axis=0)
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        rows = int(self.starts[-1])
        self.bases = []
        self.spill = spill
        base = spill.seek(0, os.SEEK_END)
        for k, dtype in enumerate(plan.dtypes):
            self.bases.append(base)
            width = dtype.itemsize
            addresses = np.array([p.columns[k].ctypes.data for p in parts], np.uint64)
            b = 0
            while b < plan.buckets:
                # Buckets [b, e): at most COPY_BYTES, at least one bucket.
                e = max(b + 1, int(np.searchsorted(self.starts, self.starts[b] + COPY_BYTES // width, "right")) - 1)
                e = min(e, plan.buckets)
                piece = _mapped_empty(int(self.starts[e] - self.starts[b]) * width, np.uint8)
                _radix.copy_ranges(piece, addresses, offsets, width, b, e, True)
                spill.write(piece)
                b = e
            base += rows * width
        spill.flush()

    def rows(self, b0, b1):
        return int(self.starts[b1] - self.starts[b0])

    def read(self, k, width, b0, b1, out):
        """Column ``k`` of buckets ``[b0, b1)`` into ``out`` (bytes)."""
        offset = self.bases[k] + int(self.starts[b0]) * width
        view = memoryview(out)
        done = 0
        while done < len(view):
            got = os.preadv(self.spill.fileno(), [view[done:]], offset + done)
            if got <= 0:
                raise OSError(f"spill file {self.spill.name} ended early")
            done += got


def _bucket_fits(plan, batch):
    return (batch.merchant_id.dtype, batch.customer_id.dtype, batch.order_ts.dtype) == plan.key_dtypes and (
        batch.units_per_day, batch.dates) == (plan.units_per_day, plan.dates)


class _Buckets:
    """The input partitioned into range buckets: in memory (``parts``) and spilled (``runs``)."""

    def __init__(self, orders, columns, refunds, stop_error, threads, memory_limit, tmp):
        self.parts, self.runs, self.plan = [], [], None
        self.tmp, self.spill_file = tmp, None
        self._local = threading.local()
        try:
            self._partition(orders, columns, refunds, stop_error, threads, memory_limit)
        except BaseException:
            self.close()
            raise

    def _partition(self, orders, columns, refunds, stop_error, threads, memory_limit):
        check = _Checker(refunds, stop_error)
        bounds = _key_bounds(orders, columns)
        if bounds is None:
            raise _Fallback
        total = count_rows(orders)
        budget = max(0, memory_limit - OVERHEAD_BYTES)
        held = 0
        bucket_of = None
        for batch in order_batches(orders, columns, threads=threads):
            # The scatter checks each row's amount and order_ts in input order (the checker words the error
            # of the first bad one): the first bad row of the input is named.
            if self.plan is None:
                self.plan = _Plan(bounds, batch, total)
            elif not _bucket_fits(self.plan, batch):
                raise _Fallback
            plan = self.plan
            n = len(batch)
            if bucket_of is None or len(bucket_of) < n:
                bucket_of = np.empty(n, np.uint16)
            out = [_mapped_empty(n, dtype) for dtype in plan.dtypes]
            offsets = np.empty(plan.buckets + 1, np.int64)
            bad = _radix.scatter(batch.merchant_id, batch.customer_id, batch.order_ts, batch.amount,
                                 batch.reward_bits, batch.reward_offset, plan.mlo, plan.mhi, plan.clo, plan.chi,
                                 plan.cbits, plan.shift, plan.first, plan.last, plan.bases, bucket_of[:n], *out,
                                 offsets,
                                 periods.ts_max(batch.units_per_day), refunds)
            if bad >= 0:
                if bad % 2 == 0:   # a bad row, the first of the input: the checker words its error
                    check(batch)
                raise _Fallback   # a key outside the file's statistics
            self.parts.append(_Part(out, offsets))
            held += sum(a.nbytes for a in out)
            if held > budget:
                held -= self.spill(max(1, budget // 4))

    def spill(self, size):
        """Spill the oldest parts, at least ``size`` bytes, to a run file; returns the bytes spilled.

        The oldest: runs hold earlier input rows than the parts left in memory, and ``sorted_unit``
        takes runs first, so every bucket keeps input order.
        """
        if self.tmp is None:
            self.tmp = tempfile.mkdtemp(prefix="loyaltymetrics-unsorted-")   # mode 0700: private
            self.spill_file = open(os.path.join(self.tmp, "runs.bin"), "w+b")
        count, spilled = 0, 0
        while count < len(self.parts) and spilled < size:
            spilled += sum(a.nbytes for a in self.parts[count].columns)
            count += 1
        self.runs.append(_Run(self.spill_file, self.parts[:count], self.plan))
        del self.parts[:count]
        return spilled

    def close(self):
        """Close and remove the spill file (idempotent)."""
        if self.spill_file is not None:
            with contextlib.suppress(OSError):
                self.spill_file.close()
            self.spill_file = None
        self.runs, self.parts = [], []
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def units(self):
        """``(b0, b1)`` ranges of consecutive buckets of about UNIT_ROWS rows."""
        plan = self.plan
        counts = np.zeros(plan.buckets, np.int64)
        for part in self.parts:
            counts += part.offsets[1:] - part.offsets[:-1]
        for run in self.runs:
            counts += run.starts[1:] - run.starts[:-1]
        ends = np.concatenate([[0], np.cumsum(counts)])
        b0 = 0
        while b0 < plan.buckets:
            b1 = max(b0 + 1, int(np.searchsorted(ends, ends[b0] + UNIT_ROWS, "left")))
            b1 = min(b1, plan.buckets)
            if ends[b1] > ends[b0]:
                yield b0, b1, int(ends[b1] - ends[b0])
            b0 = b1

    def _scratch(self, n):
        """This thread's gather arrays (key, order_ts, amount, reward, relative keys) and radix arrays for
        ``n`` rows, reused from unit to unit.

        Fresh arrays for every unit cost page faults (a third of the sort's time on a VM whose free
        memory is handed back to the host); the sorted columns themselves are new, the drivers keep them.
        """
        local = self._local
        if getattr(local, "capacity", -1) < n:
            local.capacity = capacity = max(n, int(getattr(local, "capacity", 0) * 1.5))
            dtypes = (np.uint64,) + self.plan.dtypes[1:] + (self.plan.rel_dtype,)
            local.columns = [np.empty(capacity, dtype) for dtype in dtypes]
            local.work = (np.empty(capacity, np.uint64), np.empty(capacity, np.uint64))
        return [a[:n] for a in local.columns], tuple(a[:n] for a in local.work)

    def sorted_unit(self, b0, b1, n, addresses, offsets):
        """Buckets ``[b0, b1)`` sorted stably by (merchant_id, customer_id, order_ts), as a RecordBatch.

        Gathered bucket after bucket, each bucket's rows from the runs (in spill order) then from the
        parts (in input order): every store-customer's rows in input order.
        """
        plan = self.plan
        (key, *columns, relative), work = self._scratch(n)
        width = plan.rel_dtype.itemsize
        pos = 0
        for run in self.runs:   # spilled rows came first in the input
            k = run.rows(b0, b1)
            run.read(0, width, b0, b1, relative[:k].view(np.uint8))
            _radix.rebase(key[pos:pos + k], relative[:k], run.starts, plan.bases, b0, b1)
            for j, (column, dtype) in enumerate(zip(columns, plan.dtypes[1:]), 1):
                run.read(j, dtype.itemsize, b0, b1, column[pos:pos + k].view(np.uint8))
            pos += k
        if self.parts:
            k = n - pos
            _radix.copy_ranges(relative[:k].view(np.uint8), addresses[0], offsets, width, b0, b1, True)
            starts = np.concatenate([[0], np.cumsum((offsets[:, b0 + 1:b1 + 1] - offsets[:, b0:b1]).sum(axis=0))])
            _radix.rebase(key[pos:], relative[:k], np.concatenate([np.zeros(b0, np.int64), starts]),
                          plan.bases, b0, b1)
            for j, (column, dtype) in enumerate(zip(columns, plan.dtypes[1:]), 1):
                _radix.copy_ranges(column[pos:].view(np.uint8), addresses[j], offsets, dtype.itemsize, b0, b1, True)
        out = _sort_keys(key, *columns, plan, work)
        out[4] = np.packbits(out[4], bitorder="little")
        return pa.RecordBatch.from_arrays([
            pa.Array.from_buffers(field.type, n, [None, pa.py_buffer(values)])
            for field, values in zip(plan.schema, out)
        ], schema=plan.schema)

    def batches(self, threads):
        """The sorted units in key order, sorted ``threads`` at a time ahead of the one taken."""
        addresses = [np.array([p.columns[j].ctypes.data for p in self.parts], np.uint64) for j in range(4)]
        offsets = np.stack([p.offsets for p in self.parts]) if self.parts else None
        units = self.units()
        if threads <= 1:
            for b0, b1, n in units:
                yield self.sorted_unit(b0, b1, n, addresses, offsets)
            return
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="loyaltymetrics-sort") as pool:
            pending = collections.deque()
            try:
                for unit in units:
                    pending.append(pool.submit(self.sorted_unit, *unit, addresses, offsets))
                    if len(pending) > threads:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:
                for future in pending:
                    future.cancel()


def _sort_keys(key, ts, amount, reward, packing, work=None):
    """(merchant_id, customer_id, order_ts, amount, reward) of the rows sorted stably by (key, ts), new arrays.

    ``key``: uint64 ``(merchant_id - mlo) << cbits | (customer_id - clo)`` by ``packing`` (a ``_Plan``:
    its ``mlo``, ``clo``, ``cbits`` and the ids' ``key_dtypes``). ``work``: two uint64 arrays of the
    rows' length for the radix sort, else new ones.
    """
    n = len(key)
    m_dtype, c_dtype = packing.key_dtypes[:2]
    out = [np.empty(n, m_dtype), np.empty(n, c_dtype)] + [np.empty(n, a.dtype) for a in (ts, amount, reward)]
    long_runs = np.empty(2 * (n // 65 + 1), np.int64)
    work = work or (np.empty(n, np.uint64), np.empty(n, np.uint64))
    found = _radix.sort_unit(key, ts, amount, reward, *out, *work, long_runs, packing.mlo, packing.clo,
                             packing.cbits)
    if found < 0:   # the key span and the row index do not pack into 64 bits
        m = (key >> np.uint64(packing.cbits) if packing.cbits < 64 else np.zeros(n, np.uint64)).view(np.int64)
        c = (key & np.uint64((1 << packing.cbits) - 1)).view(np.int64)
        m, c = (m + packing.mlo).astype(m_dtype), (c + packing.clo).astype(c_dtype)
        order = _radix.grouped_order(m, c, ts)
        if order is None:
            order = _radix.stable_order([m, c, ts])
        return [np.take(a, order) for a in (m, c, ts, amount, reward)]
    for k in range(found):   # store-customers of over 64 rows: by ts, stably
        a, b = long_runs[2 * k], long_runs[2 * k + 1]
        within = np.argsort(out[2][a:b], kind="stable")
        for column in out:
            column[a:b] = column[a:b][within]
    return out


def _sort_columns(columns):
    """(merchant_id, customer_id, order_ts, amount, reward) sorted stably by the first three, as new arrays."""
    import types

    m, c, ts, amount, reward = columns
    if not len(m):
        return [a.copy() for a in columns]
    mlo, clo = int(m.min()), int(c.min())
    cbits = (int(c.max()) - clo).bit_length()
    if (int(m.max()) - mlo).bit_length() + cbits > 64:
        order = _radix.stable_order([m, c, ts])
        return [np.take(a, order) for a in columns]
    key = ((m.astype(np.int64).view(np.uint64) - np.uint64(mlo % (1 << 64))) << np.uint64(cbits)) | (
        c.astype(np.int64).view(np.uint64) - np.uint64(clo % (1 << 64)))
    packing = types.SimpleNamespace(mlo=mlo, clo=clo, cbits=cbits, key_dtypes=(m.dtype, c.dtype))
    return _sort_keys(key, ts, amount, reward, packing)


@contextlib.contextmanager
def bucketed_input(orders, columns=None, refunds=False, memory_limit=None, stop_error=None, threads=None):
    """Context manager: a ``RecordBatchReader`` of ``orders`` sorted stably, through range buckets.

    Raises ``_Fallback`` (before yielding) when the input does not suit the
    bucket path. Spill files are removed on exit, whatever happened.
    """
    from .parallel import resolve_threads

    if _radix is None or not rereadable(orders):
        raise _Fallback
    memory_limit = check_memory_limit(memory_limit)
    threads = resolve_threads(threads)
    buckets = None
    try:
        buckets = _Buckets(orders, columns, refunds, stop_error, threads, memory_limit, None)
        if buckets.plan is None:   # no rows
            raise _Fallback
        batches = buckets.batches(threads)
        try:
            yield pa.RecordBatchReader.from_batches(buckets.plan.schema, batches)
        finally:
            # Its sort threads are joined before the parts they copy from are let go.
            batches.close()
    finally:
        if buckets is not None:
            buckets.close()


def run_sorted(call, orders, columns=None, refunds=False, memory_limit=None, threads=None):
    """``call(sorted_orders)`` on ``orders`` sorted; its errors name the input's rows.

    ``call`` reads the sorted rows with canonical column names (``columns=None``)
    and ``presorted=True``. Read the merchants table before: an error about it
    must not be taken for one about the sorted rows. The bucket path first; an
    error about the sorted rows (an int64 overflow) is raised by running the
    copy path, whose sorted copy knows every row's place in the input.
    """
    try:
        with bucketed_input(orders, columns, refunds, memory_limit, threads=threads) as reader:
            try:
                return call(reader)
            except InputError as error:
                if error.source != IN_MEMORY:
                    raise
                # About the sorted stream (an int64 overflow, at a row of it or in the threads' sums): the
                # copy path below meets it again and names the input's row, as it always has.
    except _Fallback:
        pass
    with sorted_input(orders, columns, refunds, memory_limit) as sorted_orders, sorted_orders.translated_errors():
        return call(sorted_orders.orders)
