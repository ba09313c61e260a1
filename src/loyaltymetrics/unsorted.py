"""Rows in any order (SPEC §8 ``presorted=False`` / ``--unsorted``).

The kernels need each store-customer's rows together and in time order,
ties in file order. This module turns an input in any order into one
sorted by ``(merchant_id, customer_id, order_ts)`` — stably, so ties keep
their input order — and the drivers then read that as they read a sorted
input: results are bit-identical to the presorted path by construction.

Method
------
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
  the order checks) works unchanged, whereas hash pieces would each need
  fresh kernel states and every analysis's merge to tolerate a merchant in
  several pieces. Partitioning keeps input order within a piece, so the
  sort stays stable.
* Spill files live in a private directory (mode 0700) under
  ``tempfile.gettempdir()`` (``TMPDIR``) and are removed when the call
  returns, also on an error or KeyboardInterrupt. Plan disk space for about
  two copies of the order columns.

Errors keep naming the input: nulls, negative amounts (without refunds)
and timestamps outside 1970..2262 are checked here, in input order, before
anything is sorted, so the row named is the first bad row of the input, as
the presorted path names it. Other errors met by the drivers on the sorted
copy (an int64 overflow) are translated back to the input's file and row.
"""
import contextlib
import os
import shutil
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import periods
from .errors import InputError
from .inputs import _physical_memory, count_rows, order_batches, source_label

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


def default_memory_limit():
    """A quarter of this machine's physical memory (the default ``memory_limit``)."""
    return max(64 << 20, _physical_memory() // 4)


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


def run_sorted(call, orders, columns=None, refunds=False, memory_limit=None):
    """``call(sorted_orders)`` on ``orders`` sorted (``sorted_input``); its errors name the input's rows.

    ``call`` reads the sorted copy with canonical column names (``columns=None``)
    and ``presorted=True``. Read the merchants table before: an error about it
    must not be taken for one about the sorted copy.
    """
    with sorted_input(orders, columns, refunds, memory_limit) as sorted_orders, sorted_orders.translated_errors():
        return call(sorted_orders.orders)
