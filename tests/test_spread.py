"""A memory-mapped file scanned as one window of many pieces taken by free threads (parallel.py, scan.py)."""
import threading

import numpy as np
import pyarrow as pa
import pytest

import loyaltymetrics as lm
from loyaltymetrics import parallel
from test_faults import orders_table, write


@pytest.fixture
def small_pieces(monkeypatch):
    """Pieces of a few hundred rows, and a record of how many pieces each round was cut into."""
    monkeypatch.setattr(parallel, "SPREAD_MIN_ROWS", 1)
    monkeypatch.setattr(parallel, "SPREAD_PIECES", 8)
    planned = []
    plan = parallel._plan

    def traced(window, n, **options):
        planned.append(n if isinstance(n, int) else len(n))   # pieces: a count, or their sizes
        return plan(window, n, **options)

    monkeypatch.setattr(parallel, "_plan", traced)
    return planned


@pytest.mark.parametrize("threads", [2, 3, 5])
@pytest.mark.parametrize("period", ["year", "month", "all"])
def test_many_pieces_give_the_one_thread_table(tmp_path, small_pieces, threads, period):
    table = orders_table(40_000, customers_per_merchant=7)
    path = write(table, tmp_path / "orders.arrow", batch_rows=9_000)
    expected = lm.compute(table, by=["merchant"], period=period, threads=1)
    got = lm.compute(str(path), by=["merchant"], period=period, threads=threads, chunk_rows=1_000)
    assert got.equals(expected)
    assert max(small_pieces) >= threads * 8   # one window of many pieces, not rounds of `threads` chunks
    # Whole network: every merchant's partials added up however the pieces fell.
    assert lm.compute(str(path), period=period, threads=threads).equals(lm.compute(table, period=period, threads=1))


@pytest.mark.parametrize("rows, threads, piece", [(10**6, 2, 31_250), (5 * 10**7, 2, 1_562_500), (10**7, 3, 208_334),
                                                  (700_000, 2, 65_536), (131_073, 2, 65_536), (40_000, 3, 1_000)])
def test_spread_pieces_get_smaller_at_the_end(rows, threads, piece):
    # The threads take the last rows in pieces that get smaller, so they end close together.
    sizes = parallel._spread_sizes(rows, threads, piece)
    assert sum(sizes) == rows
    assert sizes[0] == piece and all(a >= b for a, b in zip(sizes, sizes[1:]))
    assert sizes[-1] <= max(min(parallel.SPREAD_MIN_ROWS, piece), piece // (2 * threads))
    assert all(s >= min(parallel.SPREAD_MIN_ROWS, piece) for s in sizes[:-1])
    assert len(sizes) <= -(-rows // piece) + 12 * threads
    assert parallel._spread_sizes(threads * piece, threads, piece) == threads   # no more than a piece a thread


def _with_bad_rows(table, negative_at=None, unsorted_at=None):
    amount = table["amount"].to_numpy().copy()
    customer = table["customer_id"].to_numpy().copy()
    if negative_at is not None:
        amount[negative_at] = -5
    if unsorted_at is not None:
        customer[unsorted_at] = customer[unsorted_at - 1] - 1 if customer[unsorted_at - 1] > 1 else 0
        # another merchant's customer: keys go back
        merchant = table["merchant_id"].to_numpy().copy()
        merchant[unsorted_at] = merchant[unsorted_at - 1] - 1
        table = table.set_column(0, "merchant_id", pa.array(merchant))
    table = table.set_column(table.schema.get_field_index("amount"), "amount", pa.array(amount))
    return table.set_column(1, "customer_id", pa.array(customer))


def _error(orders, threads):
    with pytest.raises(lm.InputError) as info:
        lm.compute(orders, threads=threads, chunk_rows=1_000)
    return type(info.value), info.value.row, str(info.value).split(": ", 1)[-1]


@pytest.mark.parametrize("negative_at, unsorted_at", [
    (None, 27_001), (25_000, None), (4_321, 27_001), (37_500, 9_999), (39_999, None), (None, 1), (9_000, None),
])
@pytest.mark.parametrize("threads", [2, 3])
def test_the_first_bad_row_is_named_as_one_thread_names_it(tmp_path, small_pieces, negative_at, unsorted_at,
                                                           threads):
    table = _with_bad_rows(orders_table(40_000, customers_per_merchant=7), negative_at, unsorted_at)
    path = write(table, tmp_path / "orders.arrow", batch_rows=9_000)
    expected = _error(str(path), 1)   # one thread: no pieces, the rows in file order
    assert expected[1] == min(r for r in (negative_at, unsorted_at) if r is not None)
    assert expected[0] is (lm.NegativeAmountError if expected[1] == negative_at else lm.UnsortedInputError)
    assert _error(str(path), threads) == expected
    assert max(small_pieces) > threads


def test_progress_counts_every_row_once(tmp_path, small_pieces):
    table = orders_table(40_000)
    path = write(table, tmp_path / "orders.arrow", batch_rows=9_000)
    seen = []
    kernel = lm.scan.ComputeKernel()
    batches = lm.inputs.order_batches(str(path))
    list(parallel.run(batches, kernel, threads=3, chunk_rows=1_000, progress=seen.append))
    assert sum(seen) == 40_000 and min(seen) > 0


def test_threads_that_cannot_start_leave_their_pieces_to_the_others(tmp_path, small_pieces, monkeypatch):
    table = orders_table(40_000)
    path = write(table, tmp_path / "orders.arrow", batch_rows=9_000)
    expected = lm.compute(table, by=["merchant"], threads=1)

    def refuse(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    assert lm.compute(str(path), by=["merchant"], threads=3).equals(expected)


def test_a_piece_per_state_in_row_order(tmp_path, small_pieces, monkeypatch):
    # Each state sees its pieces in increasing row order (its kernel checks order across them).
    table = orders_table(40_000)
    path = write(table, tmp_path / "orders.arrow", batch_rows=9_000)
    seen = {}
    run_chunk = parallel._run_chunk

    def traced(kernel, state, chunk, closes):
        segments, _ = chunk
        if segments:
            seen.setdefault(id(state), []).append(segments[0][0].first_row + segments[0][1])
        return run_chunk(kernel, state, chunk, closes)

    monkeypatch.setattr(parallel, "_run_chunk", traced)
    lm.compute(str(path), threads=3)
    assert sum(len(v) for v in seen.values()) > 3
    assert all(v == sorted(v) for v in seen.values())
    assert sorted(np.concatenate(list(seen.values())).tolist()) == sorted(set(np.concatenate(list(seen.values())).tolist()))


def _resident(address):
    """Resident bytes of the mapping holding ``address`` (/proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "Rss:":
                return int(line.split()[1]) * 1024
    raise AssertionError("no mapping")


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_getaffinity"), reason="Linux /proc")
def test_planning_and_reading_let_the_pages_they_map_go(tmp_path):
    # The keys read at every cut (and each batch's metadata) map pages of the file (2 MiB at a time
    # where it sits in large folios): with many pieces they must not stay resident until scanned.
    table = orders_table(400_000)
    path = write(table, tmp_path / "orders.arrow", batch_rows=20_000)
    batches = list(lm.inputs.order_batches(str(path)))
    window = [(b, 0, len(b)) for b in batches]
    address = batches[0].mapped.buffer.address
    after_reading = _resident(address)
    parallel._plan(window, 64)
    kept = _resident(address)
    for batch, lo, hi in window:
        batch.release(lo, hi)
    parallel._plan(window, 64, let_go=True)
    let_go = _resident(address)
    assert kept > 64 * 4096 and let_go < kept / 4, (after_reading, kept, let_go)
    assert after_reading < kept, (after_reading, kept)
    # The same cuts and cut errors either way.
    assert [(s, e) for s, e in parallel._plan(window, 64)] == [(s, e) for s, e in parallel._plan(window, 64, let_go=True)]


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_getaffinity"), reason="Linux /proc")
@pytest.mark.parametrize("batch_rows", [None, 300_000])
def test_the_scan_lets_go_of_the_pages_behind_the_pieces_done(tmp_path, monkeypatch, batch_rows):
    # inputs.Sweep: the pages of the rows before the first piece not yet done are let go as pieces are
    # done, within one record batch too (None: the whole file is one batch of five columns).
    table = orders_table(4_000_000)
    path = write(table, tmp_path / "orders.arrow", batch_rows=batch_rows)
    resident, run_chunk = [], parallel._run_chunk

    def traced(kernel, state, chunk, closes):
        batch = chunk[0][0][0]
        resident.append(_resident(batch.mapped.buffer.address))
        return run_chunk(kernel, state, chunk, closes)

    expected = lm.compute(table, threads=1)
    monkeypatch.setattr(parallel, "_run_chunk", traced)
    assert lm.compute(str(path), threads=2).equals(expected)
    size = path.stat().st_size
    assert len(resident) >= 16 and max(resident) < size / 3, (max(resident), size)


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_getaffinity"), reason="Linux /proc")
def test_a_thread_held_up_does_not_hold_the_pages_of_the_pieces_done_after_it(tmp_path, monkeypatch):
    # inputs.Sweep lets pages go up to the first piece not yet done; the pieces another thread does in
    # the meantime let go of their own pages, or a stalled thread would keep the file resident.
    table = orders_table(4_000_000)
    path = write(table, tmp_path / "orders.arrow", batch_rows=100_000)
    expected = lm.compute(table, threads=1)
    resident, run_chunk, first = [], parallel._run_chunk, []

    def traced(kernel, state, chunk, closes):
        batch, lo, _ = chunk[0][0]
        if not first:
            first.append(batch.first_row + lo)
        if batch.first_row + lo == first[0]:     # the first piece: its thread is held up
            import time
            time.sleep(1.0)
        resident.append(_resident(batch.mapped.buffer.address))
        return run_chunk(kernel, state, chunk, closes)

    monkeypatch.setattr(parallel, "_run_chunk", traced)
    assert lm.compute(str(path), threads=2, chunk_rows=100_000).equals(expected)
    size = path.stat().st_size
    assert len(resident) >= 16 and max(resident) < size / 4, (max(resident), size)
