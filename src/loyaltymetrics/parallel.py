"""Chunk-parallel driver: any kernel, any number of threads, one result.

The row stream is cut into chunks whose edges are moved forward to the next
store-customer boundary (a row whose ``(merchant_id, customer_id)`` differs
from the row before), so no store-customer is split between two kernel
states. Each thread owns one state; the chunks of a round run side by side,
one per thread, while the GIL is released inside the kernels. The last chunk
of a round ends where the rows read so far end, so its store-customer may go
on in the next round: the next round's first chunk goes to the same state.

The rows of a memory-mapped file, for a kernel whose states accumulate
(``spread_mapped``), are one window cut into many pieces that the threads
take in row order as each finishes its last (``_run_jobs``): no thread waits
for the others every ``threads * chunk_rows`` rows, and the threads end
within about a piece of each other.

A state therefore sees its rows in increasing key order, with gaps where
other states took rows; combining what the states emit is the kernel's
business (for partial sums, addition). Every pair of adjacent rows is
checked for order either by a kernel or, at chunk edges, here, so unsorted
input is always reported, and at the row a one-thread scan would name.

A kernel is any object with:

``new_state()``
    a fresh state, one per thread;
``scan(state, batch, start, stop)``
    scan rows ``[start, stop)`` of an ``inputs.OrderBatch``, carrying the
    open store-customer across calls; raise an ``InputError`` for a bad row;
``end_chunk(state)``
    the rows given so far end at a store-customer boundary: close what is
    open and return this chunk's output (or None);
``finish(state)``
    return the state's accumulated output (or None);
``flush(state)`` (optional)
    return the output of the store-customers closed so far without closing
    the open one (or None): a kernel that emits rows as it scans has it, so
    that its output streams at every thread count (also with one thread,
    whose only chunk of a round never ends at a known boundary).
"""
import bisect
import itertools
import os
import threading

import numpy as np

from .errors import AmountOverflowError, NegativeAmountError, TimestampRangeError, UnsortedInputError, resource_error
from .outputs import check_stop
from .periods import format_timestamp

DEFAULT_CHUNK_ROWS = 1 << 21


def resolve_threads(threads):
    """The thread count to use: ``threads``, or the CPUs this process may run on.

    ``None`` respects ``OMP_NUM_THREADS`` when it is set, else the process's
    CPU affinity (as set by ``taskset``, cgroups or a batch scheduler).
    """
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
        if env.isdigit() and int(env) > 0:
            return int(env)
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            return os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive integer or None; got {threads!r}")
    return int(threads)


def rescan_for_row(compute, threads, rereadable):
    """``compute(threads)``, naming the row of an int64 overflow that only the threads' sums met.

    A sum that fits in every thread's partials but not once they are added
    is found where no row is known (``AmountOverflowError.row is None``). A
    one-thread run meets it in its kernel, at the row a one-thread scan
    names, so ``compute(1)`` is run to raise that error, when the input can
    be read again. An overflow that has no row in any case (a sum over a
    group of merchants) is raised as it was.
    """
    try:
        return compute(threads)
    except AmountOverflowError as error:
        if error.row is not None or threads == 1 or not rereadable:
            raise
        compute(1)
        raise error from None  # one thread did not overflow: should not happen, keep the error


def check_chunk_rows(chunk_rows):
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer; got {chunk_rows!r}")
    return int(chunk_rows)


def run(batches, kernel, threads=None, chunk_rows=DEFAULT_CHUNK_ROWS, progress=None):
    """Run ``kernel`` over ``batches`` (``inputs.OrderBatch``); yield its outputs in input order.

    Yields every non-None ``end_chunk`` output in row order, then every
    non-None ``finish`` output (one per state). ``progress(rows)`` is called
    as rows are done. Each thread maps the pages of its rows before scanning
    them and lets them go after.
    """
    threads = resolve_threads(threads)
    chunk_rows = check_chunk_rows(chunk_rows)
    try:
        yield from _run(batches, kernel, threads, chunk_rows, progress)
    except Exception as error:
        # Out of memory or threads (a thread that cannot start, an array that cannot be
        # allocated) is a ResourceError, whatever raised it: never corrupt input (SPEC §2).
        typed = resource_error(error)
        if typed is None or typed is error:
            raise
        raise typed from error


# A kernel whose ``spread_mapped`` is true (its outputs accumulate in its states: ``end_chunk``
# returns None) is given the rows of a memory-mapped file as one window, cut into pieces of about
# 1 / SPREAD_PIECES of a thread's share (at most ``chunk_rows``, at least SPREAD_MIN_ROWS rows), which
# the threads take in row order as each finishes its last: no thread waits for another at the end of
# every round of ``threads * chunk_rows`` rows, and they end within about a piece of each other. Memory
# stays bounded: each thread maps the pages of the rows it scans and lets them go after
# (``OrderBatch.populate``, ``inputs.Sweep``); the window holds views, not rows.
SPREAD_PIECES = 16
SPREAD_MIN_ROWS = 1 << 16


def _run(batches, kernel, threads, chunk_rows, progress):
    states = [kernel.new_state() for _ in range(threads)]
    spread = threads > 1 and getattr(kernel, "spread_mapped", False)
    tail = 0        # the state holding the store-customer open at the end of the last round
    for window, last_round in _rounds(batches, threads * chunk_rows, spread):
        check_stop()  # SIGINT/SIGTERM whose exception was lost (see outputs.py)
        _check_files(window)   # _plan reads keys at the cut points: a mapped file must still be whole
        pieces = threads
        if spread and window and all(b.mapped is not None for b, _, _ in window):
            rows = sum(hi - lo for _, lo, hi in window)
            piece = min(chunk_rows, max(SPREAD_MIN_ROWS, -(-rows // (threads * SPREAD_PIECES))))
            pieces = _spread_sizes(rows, threads, piece)
        chunks = _plan(window, pieces, let_go=not isinstance(pieces, int))
        # Chunk 0 continues the last round's tail: the tail's state takes it; the others are taken
        # in row order by whichever thread is free, so each state sees its rows in increasing order.
        # A spread kernel's states are finished on their threads as each runs out of chunks.
        finished = {} if spread and last_round else None
        results, owners = _run_jobs(kernel, [states[(tail + t) % threads] for t in range(threads)], chunks,
                                    last_round, progress, finished)
        _check_files(window)   # before any result of the round is used: were its pages whole?
        _raise_first_error(chunks, results)
        if chunks:
            tail = (tail + owners[-1]) % threads
        for output, _ in results:
            if output is not None:
                yield output
    for state in states:
        output, error = (finished or {}).get(id(state)) or (kernel.finish(state), None)
        if error is not None:
            raise error
        if output is not None:
            yield output


def _run_jobs(kernel, states, chunks, last_round, progress=None, finished=None):
    """Run the chunks of a round side by side on ``len(states)`` threads: this one and one per other state.

    ``states[0]`` (this thread) takes chunk 0, then every thread takes the next chunk not yet taken,
    in row order, until none is left: each state sees its rows in increasing order. Returns
    ``(results, owners)``: ``(output, error)`` per chunk in chunk order, and the index of the state
    that scanned each. Chunks after the first one whose order or scan failed are not scanned (their
    results are ``(None, None)``): the first error is what is raised. A thread that cannot be
    started, or that runs out of memory before it takes a chunk, takes none: the others scan its
    share, and the results are the same, only later. ``progress(rows)`` is called on this thread as
    chunks are done. ``finished`` (a dict; the last round of a kernel whose states accumulate): each
    thread that runs out of chunks finishes its state, ``finished[id(state)] = (output, error)``.
    """
    n = len(chunks)
    results, owners = [None] * n, [None] * n
    # Chunks after a chunk whose first row is out of order need no scan: its error comes first.
    stop = [next((i for i, (_, cut_error) in enumerate(chunks) if cut_error is not None), n)]
    taken = itertools.count(1)
    done, reported = [0], [0]
    lock = threading.Lock()
    # The pages of a memory-mapped file are let go up to the first chunk not yet done.
    sweeps = {id(b.mapped): b.mapped.sweep() for segments, _ in chunks for b, _, _ in segments if b.mapped is not None}
    finished_chunks, swept = [False] * n, [0]

    def sweep(i):
        """Chunk ``i`` is done: let go of the pages of the chunks done before any not yet done.

        A chunk done far ahead of them (a thread held up: the others go on) lets go of its own pages
        at once, page by page, so what stays resident is bounded whatever the wait.
        """
        with lock:
            finished_chunks[i] = True
            first = swept[0]
            while swept[0] < n and finished_chunks[swept[0]]:
                swept[0] += 1
            last = swept[0]
        if i - last > len(states):
            for batch, lo, hi in chunks[i][0]:
                batch.release(lo, hi, exact=True)
        for segments, _ in chunks[first:last]:
            for batch, _, hi in segments:
                if batch.mapped is not None:
                    sweeps[id(batch.mapped)].upto(batch, hi)

    def report():
        if progress is not None:
            with lock:
                rows, reported[0] = done[0] - reported[0], done[0]
            if rows:
                progress(rows)

    def work(t, i=None):
        i = next(taken) if i is None else i
        while i < n:
            owners[i] = t
            try:
                if i > stop[0]:
                    results[i] = (None, None)
                    break
                if t == 0:
                    check_stop()  # SIGINT/SIGTERM whose exception was lost (see outputs.py)
                results[i] = _run_chunk(kernel, states[t], chunks[i], last_round or i < n - 1)
            except BaseException as error:   # out of memory building the result: reported in row order
                results[i] = (None, error)
            with lock:
                if results[i][1] is not None:
                    stop[0] = min(stop[0], i)
                done[0] += sum(hi - lo for _, lo, hi in chunks[i][0])
            if sweeps:
                sweep(i)
            if t == 0:
                report()
            i = next(taken)
        if finished is not None and stop[0] == n:
            try:
                finished[id(states[t])] = (kernel.finish(states[t]), None)
            except BaseException as error:
                finished[id(states[t])] = (None, error)

    started = []
    for t in range(1, min(len(states), n)):
        thread = threading.Thread(target=work, args=(t,), name=f"loyaltymetrics-chunk-{t}", daemon=True)
        try:
            thread.start()
        except RuntimeError:   # can't start new thread: the others take its chunks
            continue
        started.append(thread)
    if n:
        work(0, 0)
    for thread in started:
        thread.join()
    for i in range(n):
        if results[i] is None:   # taken by a thread that died before it could say so: out of memory
            results[i] = (None, None) if i > stop[0] else (None, MemoryError("a scanning thread died"))
    report()
    return results, owners


def _check_files(window):
    """InputChangedError if a memory-mapped file of ``window`` changed since it was opened."""
    for batch, lo in {id(b.mapped): (b, lo) for b, lo, _ in reversed(window) if b.mapped is not None}.values():
        batch.check(lo)


def _rounds(batches, round_rows, spread=False):
    """Yield ``(window, is_last)``: lists of ``(batch, lo, hi)`` row ranges of about ``round_rows`` rows.

    ``spread``: the rows of one memory-mapped file count for nothing (the window holds views, and
    the threads let pages go as they scan): they come in one window, ended where another file's
    rows or rows that are not mapped follow.
    """
    window, rows = [], 0
    for batch in batches:
        if spread and window and window[-1][0].mapped is not None and batch.mapped is not window[-1][0].mapped:
            yield window, False
            window, rows = [], 0
        if spread and batch.mapped is not None:
            if len(batch):
                window.append((batch, 0, len(batch)))
            continue
        lo = 0
        while lo < len(batch):
            hi = min(len(batch), lo + round_rows - rows)
            window.append((batch, lo, hi))
            rows += hi - lo
            lo = hi
            if rows >= round_rows:
                yield window, False
                window, rows = [], 0
    # The last window may be empty: the states still get end_chunk for their open store-customer.
    yield window, True


def _spread_sizes(rows, threads, piece):
    """The rows of each piece of a spread window: ``piece`` rows each, then smaller and smaller ones.

    Once fewer rows are left than two pieces for each thread, each piece is
    1 / (2 * threads) of the rows left (at least SPREAD_MIN_ROWS): the threads
    take the last rows in smaller and smaller pieces, so they end close together. An int (``threads``) when the
    window is no more than one piece a thread.
    """
    if rows <= threads * piece:
        return threads
    sizes = []
    while rows > 0:
        size = piece if rows >= 2 * threads * piece else min(piece, max(SPREAD_MIN_ROWS, rows // (2 * threads)))
        sizes.append(min(size, rows))
        rows -= sizes[-1]
    return sizes


def _plan(window, threads, let_go=False):
    """Cut ``window`` into at most ``threads`` chunks of about equal rows at store-customer boundaries.

    ``threads`` may be a list of the rows each chunk should have (``_spread_sizes``): the cuts are then
    at the store-customer boundaries at or after their sums.

    Returns a list of ``(segments, cut_error)``: ``segments`` a list of
    ``(batch, lo, hi)``; ``cut_error`` the UnsortedInputError at the chunk's
    first row if it is not after the row before it (None if it is, and for
    the first chunk, whose first row the kernel checks against its state).
    ``let_go``: the pages of a memory-mapped file read at each cut are let go
    before the next cut is sought (2 MiB at a time in large folios: a window
    of many chunks would hold them all until their chunks are scanned).
    """
    starts = np.cumsum([0] + [hi - lo for _, lo, hi in window]).tolist()
    total = starts[-1]
    if isinstance(threads, int):
        size = -(-total // threads)
        targets = [j * size for j in range(1, threads)]
    else:
        targets = np.cumsum(threads[:-1]).tolist()
    cuts, errors = [], []
    sweeps = {id(b.mapped): b.mapped.sweep() for b, _, _ in window if b.mapped is not None} if let_go else {}
    for target in targets:
        cut = _next_boundary(window, starts, max(target, cuts[-1] + 1 if cuts else 1))
        if cut is None:
            break
        cuts.append(cut)
        errors.append(_cut_error(_slice(window, starts, cut - 1, cut), _slice(window, starts, cut, cut + 1)))
        if let_go:
            # Up to the rows read for this cut: a Sweep keeps the 2 MiB around them until the next cut.
            for batch, lo, _ in _slice(window, starts, cut, cut + 1):
                if batch.mapped is not None:
                    sweeps[id(batch.mapped)].upto(batch, lo)
    edges = [0] + cuts + [total]
    chunks = [_slice(window, starts, a, b) for a, b in zip(edges, edges[1:])]
    return [(segments, errors[i - 1] if i else None) for i, segments in enumerate(chunks)]


def _next_boundary(window, starts, position):
    """The first position at or after ``position`` (> 0) where a store-customer starts, or None."""
    k = bisect.bisect_right(starts, position) - 1
    while k < len(window):
        batch, lo, hi = window[k]
        row = lo + position - starts[k]
        if row == lo:  # compare with the last row of the segment before
            prev_batch, _, prev_hi = window[k - 1]
            if _keys(prev_batch, prev_hi - 1) != _keys(batch, lo):
                return position
            row += 1
        found = _first_change(batch, row, hi)
        if found is not None:
            return starts[k] + found - lo
        k += 1
        position = starts[k]
    return None


def _slice(window, starts, a, b):
    """The ``(batch, lo, hi)`` segments of positions ``[a, b)`` (``starts``: each segment's first position)."""
    segments = []
    for k in range(max(bisect.bisect_right(starts, a) - 1, 0), len(window)):
        (batch, lo, hi), s = window[k], starts[k]
        if s >= b:
            break
        first, last = max(a, s), min(b, s + hi - lo)
        if first < last:
            segments.append((batch, lo + first - s, lo + last - s))
    return segments


def _keys(batch, row):
    return int(batch.merchant_id[row]), int(batch.customer_id[row])


def _first_change(batch, start, stop):
    """First row in ``[start, stop)`` whose store-customer differs from the row before, or None."""
    m, c = batch.merchant_id, batch.customer_id
    width = 256
    while start < stop:
        end = min(stop, start + width)
        change = (m[start:end] != m[start - 1:end - 1]) | (c[start:end] != c[start - 1:end - 1])
        hit = int(np.argmax(change))
        if change[hit]:
            return start + hit
        start, width = end, width * 4
    return None


def _cut_error(before, segments):
    """UnsortedInputError if the first row of ``segments`` is not after the last row of ``before``."""
    if not before or not segments:
        return None
    prev_batch, _, prev_hi = before[-1]
    batch, row, _ = segments[0]
    prev, here = _keys(prev_batch, prev_hi - 1), _keys(batch, row)
    if here > prev:
        return None
    ts = format_timestamp(batch.order_ts[row], batch.units_per_day)
    prev_ts = format_timestamp(prev_batch.order_ts[prev_hi - 1], prev_batch.units_per_day)
    return UnsortedInputError(
        batch.source, batch.first_row + row,
        f"(merchant_id, customer_id, order_ts) = ({here[0]}, {here[1]}, {ts}) comes after "
        f"({prev[0]}, {prev[1]}, {prev_ts}) at row {prev_batch.first_row + prev_hi - 1}"
        + ("" if prev_batch.source == batch.source else f" of the previous file {prev_batch.source}")
        + "; rows must be sorted ascending by (merchant_id, customer_id, order_ts) (or pass presorted=False / --unsorted)",
    )


def _run_chunk(kernel, state, chunk, closes):
    """Scan one chunk; return ``(output, error)``."""
    segments, _ = chunk
    try:
        for batch, lo, hi in segments:
            batch.populate(lo, hi)
            kernel.scan(state, batch, lo, hi)
        if closes:
            return kernel.end_chunk(state), None
        flush = getattr(kernel, "flush", None)
        return (flush(state) if flush is not None else None), None
    except Exception as error:  # reported in row order by _raise_first_error
        return None, error


def _raise_first_error(chunks, results):
    """Raise the error a one-thread scan would have met first, if any."""
    for (segments, cut_error), (_, error) in zip(chunks, results):
        if cut_error is not None:
            # A bad amount or timestamp of the chunk's first row is found before its order.
            batch, row, _ = segments[0]
            if not (isinstance(error, (NegativeAmountError, TimestampRangeError))
                    and error.row == batch.first_row + row):
                raise cut_error
        if error is not None:
            raise error
