"""The Numba kernel's block path (issue 16) against its own row loop and the Cython kernel.

``numba_scan`` takes 64 rows of one merchant at once where they start with a
run, and leaves everything else to its row loop. A scan call whose ``stop``
is its ``start`` + 1 never has 64 rows ahead, so scanning row by row (one
call a row, the state carried) is the row loop alone: the reference here.
Each case scans the same rows whole (blocks) and row by row and requires the
same statuses and error rows, the same accumulators and cursor after every
batch (block to block nothing is carried, so the cursor after a block must
be the row loop's), and the same partials and order window at the end; the
Cython kernel (``_scan``) must agree as well. The rows put merchant changes,
store-customer and run starts, period changes, reward bits, huge amounts and
bad rows at block edges (rows 0, 1, 62, 63, 64, 65, ...), periods 64 or more
apart inside a block, and sums that overflow inside a block.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loyaltymetrics import _scan, numba_scan, periods

EDGES = [0, 1, 2, 62, 63, 64, 65, 66, 126, 127, 128, 129, 191, 192]
INT64_MAX = 2**63 - 1
DAY_UNITS = {1: np.int32, 86_400: np.int64, 1_000_000 * 86_400: np.int64}   # date32, s, us
HUGE = [2**56 - 1, 2**56, 2**60, 2**62 - 1, 2**62, INT64_MAX]
# Timestamps from 2000-01-01 (days since 1970); "wide" data spreads store-customers over 30 years,
# so one block holds months more than 64 apart.
BASE_DAY = 10_957


@st.composite
def block_cases(draw):
    """Columns of 1..300 sorted rows (as the kernel takes them) with edges where blocks have theirs."""
    n = draw(st.sampled_from([64, 65, 66, 127, 128, 129, 130, 192, 200, 256]) | st.integers(1, 300))
    upd = draw(st.sampled_from(sorted(DAY_UNITS)))
    period = draw(st.sampled_from(["year", "quarter", "month", "all"]))
    edge = st.sampled_from(EDGES) | st.integers(0, n)
    merchant_cuts = set(draw(st.lists(edge, max_size=3))) - {0}
    shape = draw(st.sampled_from(["one", "distinct", "runs", "runs", "runs", "edges"]))
    if shape == "one":
        customer_starts = set()
    elif shape == "distinct":
        customer_starts = set(range(n))
    elif shape == "edges":
        customer_starts = set(draw(st.lists(edge, max_size=6)))
    else:
        customer_starts, row = set(), 0
        while row < n:
            customer_starts.add(row)
            row += draw(st.integers(1, 5))
    customer_starts |= merchant_cuts | {0}
    wide = draw(st.sampled_from([False, False, False, True]))
    gaps = draw(st.lists(st.sampled_from([0, 0, 1, 31, 400]), min_size=1, max_size=4))
    merchant, customer, day, second = [], [], [], []
    m, c, d, s = 7, 100, BASE_DAY, 0
    seconds = st.sampled_from([0, 1, 86_399] if upd > 1 else [0])
    for row in range(n):
        if row in merchant_cuts:
            m += draw(st.integers(1, 2))
            c = 100
        if row in customer_starts:
            c += draw(st.integers(1, 3)) if row not in merchant_cuts else 0
            d = BASE_DAY + draw(st.integers(0, 30 * 365 if wide else 700))
            s = draw(seconds)
        elif gaps[row % len(gaps)]:
            d += gaps[row % len(gaps)]
            s = draw(seconds)
        merchant.append(m)
        customer.append(c)
        day.append(d)
        second.append(s)
    ts = np.array(day, np.int64) * upd + np.array(second, np.int64) * (upd // 86_400)
    amounts = draw(st.sampled_from(["small", "small", "small", "huge", "near"]))
    amount = np.array([draw(st.integers(0, 10_000)) for _ in range(n)], np.int64)
    if amounts == "huge":       # single rows, or a few in a row (whose sum wraps around 2**64)
        for row in draw(st.lists(edge, max_size=3)):
            amount[row:row + draw(st.integers(1, 6))] = draw(st.sampled_from(HUGE))
    elif amounts == "near":     # a period's revenue close to INT64_MAX before a block that adds more
        for row in draw(st.lists(edge, min_size=1, max_size=2)):
            if row < n:
                amount[row] = INT64_MAX - draw(st.integers(0, 300_000))
    rewards = draw(st.sampled_from(["none", "all", "mixed", "edges"]))
    if rewards == "edges":
        reward = np.zeros(n, bool)
        reward[[r for r in draw(st.lists(edge, min_size=1, max_size=4)) if r < n]] = True
    else:
        reward = np.array([rewards == "all" or (rewards == "mixed" and draw(st.booleans())) for _ in range(n)])
    bad = draw(st.sampled_from([None, None, None, None, "negative", "late", "early", "unsorted"]))
    if bad is not None:
        row = min(draw(edge), n - 1)
        if bad == "negative":
            amount[row] = -draw(st.sampled_from([1, 2**62]))
        elif bad == "late":
            ts[row] = periods.ts_max(upd) + 1 if upd > 1 else np.iinfo(np.int32).max
        elif bad == "early":
            ts[row] = -1
        elif row > 0:
            if merchant[row] != merchant[row - 1]:
                merchant[row] = merchant[row - 1] - 1
            elif customer[row] != customer[row - 1]:
                customer[row] = customer[row - 1] - 1
            else:               # back by one unit, or by a year (a new run)
                ts[row] = ts[row - 1] - draw(st.sampled_from([1, 400 * upd]))
    key_types = draw(st.sampled_from([(np.int64, np.int64), (np.int32, np.int32), (np.int32, np.int64)]))
    # Rewards as an LSB bitmap from bit `offset`, with random bits around the rows' own.
    offset = draw(st.integers(0, 17))
    bits = np.array(draw(st.lists(st.booleans(), min_size=offset + n + 16, max_size=offset + n + 16)))
    bits[offset:offset + n] = reward
    bitmap = np.packbits(bits, bitorder="little")
    bitmap = bitmap[:max(1, (offset + n + 7) // 8 + draw(st.integers(0, 1)))]
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, n - 1)), max_size=draw(st.sampled_from([0, 0, 1, 2]))))) - {n})
    return {
        "merchant_id": np.array(merchant, key_types[0]), "customer_id": np.array(customer, key_types[1]),
        "order_ts": ts.astype(DAY_UNITS[upd]), "amount": amount, "reward_bits": bitmap,
        "reward_offset": offset, "upd": upd, "period": period, "batches": [0, *cuts, n],
    }


def _run(module, case, one_row_a_call=False):
    """Scan the case batch by batch (each batch its own arrays); return what a caller sees.

    Returns ``(outcome, cursor and accumulators after each batch, block rows)``:
    ``outcome`` is ``(status, row)`` of an input error or ``finish()``'s
    partials and the order window.
    """
    upd, period = case["upd"], case["period"]
    zones = periods.MerchantZones.utc()
    tables = periods.period_tables(period, upd, zones)
    shape = (tables, periods.bucket_shift(upd), periods.ts_max(upd), zones.merchant_id, zones.zone)
    state = module.ScanState(periods.n_periods(period), capacity=1)
    states = []
    edges = case["batches"]
    for lo, hi in zip(edges, edges[1:]):
        offset = case["reward_offset"] + lo
        bitmap = case["reward_bits"][offset // 8:]
        columns = [case[name][lo:hi].copy() for name in ("merchant_id", "customer_id", "order_ts", "amount")]
        columns += [bitmap.copy(), offset % 8]
        row = 0
        while row < hi - lo:
            stop = row + 1 if one_row_a_call else hi - lo
            status, row = module.scan(state, *columns, *shape, row, stop)
            if status == module.Status.NEED_SPACE:
                state.grow()
            elif status != module.Status.OK:
                states.append(_cursor(state))
                return (int(status), lo + row), states, getattr(state, "block_rows", None)
        states.append(_cursor(state))
    merchant_id, period_index, counts = state.finish()
    return ((merchant_id.tolist(), period_index.tolist(), counts.tolist()), state.order_range), states, \
        getattr(state, "block_rows", None)


def _cursor(state):
    """The Numba state's cursor (but its count of block rows) and accumulators (None for Cython's)."""
    if not isinstance(state, numba_scan.ScanState):
        return None
    cursor = state.cur.copy()
    cursor[numba_scan.BLOCK_ROWS] = 0
    return cursor, state.acc.copy()


def _check(case):
    blocks, block_states, block_rows = _run(numba_scan, case)
    rows, row_states, no_block_rows = _run(numba_scan, case, one_row_a_call=True)
    assert no_block_rows == 0
    assert blocks == rows
    assert len(block_states) == len(row_states)
    for (cursor, acc), (row_cursor, row_acc) in zip(block_states, row_states):
        np.testing.assert_array_equal(cursor, row_cursor)
        np.testing.assert_array_equal(acc, row_acc)
    cython, _, _ = _run(_scan, case)
    assert blocks == cython
    return block_rows


@settings(deadline=None, max_examples=300)
@given(case=block_cases())
def test_blocks_scan_as_the_row_loop_and_the_cython_kernel(case):
    _check(case)


def _regular_case(n=256, upd=86_400, period="month"):
    """Store-customers of 1-3 orders, a month apart, over 5 years, one merchant: blocks all along."""
    rng = np.random.default_rng(n)
    per = rng.integers(1, 4, n)
    customer = np.repeat(np.arange(n), per)[:n] + 1
    starts = np.r_[True, customer[1:] != customer[:-1]]
    day = np.where(starts, BASE_DAY + rng.integers(0, 5 * 365, n), 31)
    for row in range(1, n):
        if not starts[row]:
            day[row] += day[row - 1]
    reward = rng.random(n) < 0.3
    offset = 3
    bits = np.zeros(offset + n + 8, bool)
    bits[offset:offset + n] = reward
    return {
        "merchant_id": np.full(n, 9, np.int64), "customer_id": customer.astype(np.int64),
        "order_ts": (day * upd).astype(DAY_UNITS[upd]), "amount": rng.integers(0, 10_000, n),
        "reward_bits": np.packbits(bits, bitorder="little"), "reward_offset": offset, "upd": upd,
        "period": period, "batches": [0, n],
    }


@pytest.mark.parametrize("period", ["year", "quarter", "month", "all"])
@pytest.mark.parametrize("upd", sorted(DAY_UNITS))
def test_regular_rows_go_through_blocks(period, upd):
    case = _regular_case(1000, upd, period)
    block_rows = _check(case)
    assert block_rows > 900


@pytest.mark.parametrize("at", [0, 1, 62, 63, 64, 65, 127, 128])
@pytest.mark.parametrize("event", ["merchant", "customer", "period", "reward", "no-reward", "huge", "huge-rows", "near",
                                   "negative", "late", "unsorted", "wide"])
def test_an_event_at_a_block_edge(at, event):
    case = _regular_case(320)
    row = 128 + at              # blocks run from row 1 on (row 0 is the merchant's first) up to the event
    if event == "merchant":
        case["merchant_id"][row:] += 1
    elif event == "customer":
        case["customer_id"][row:] += 1000
    elif event == "period":
        case["order_ts"][row:] += 40 * 86_400
    elif event in ("reward", "no-reward"):
        bit = case["reward_offset"] + row
        case["reward_bits"][bit // 8] ^= np.uint8(1 << (bit % 8))
    elif event == "huge":
        case["amount"][row] = 2**62
    elif event == "huge-rows":      # five amounts whose sum wraps around 2**64 to about 2**62
        case["period"] = "all"
        case["amount"][row:row + 5] = 2**62 - 1
    elif event == "near":
        case["period"] = "all"          # one period, whose revenue passes INT64_MAX at row `row`
        case["amount"][row] = max(case["amount"][row], 1)
        case["amount"][0] = INT64_MAX - int(case["amount"][1:row + 1].sum()) + 1
    elif event == "negative":
        case["amount"][row] = -1
    elif event == "late":
        case["order_ts"][row] = periods.ts_max(86_400) + 1
    elif event == "unsorted":
        case["order_ts"][row] = case["order_ts"][row - 1] - 1
        case["customer_id"][row] = case["customer_id"][row - 1]
    elif event == "wide":       # this store-customer's next order 70 months later, inside a block
        case["order_ts"][row:] += 70 * 31 * 86_400
        case["customer_id"][row] = case["customer_id"][row - 1]
        case["customer_id"][row + 1:] += 1000
    assert _check(case) > 0


@pytest.mark.parametrize("key", ["customer", "order_ts"])
@pytest.mark.parametrize("row, batches", [(1, [0, 320]), (128, [0, 128, 320]), (129, [0, 128, 320])])
def test_an_unsorted_row_where_a_block_can_start(row, batches, key):
    """A block may start at a merchant's second row or a batch's first: checked against the cursor."""
    case = _regular_case(320)
    case["batches"] = batches
    if key == "customer":
        case["customer_id"][row] = case["customer_id"][row - 1] - 1
    else:                       # the same store-customer, a year back: a new run, so a block could start
        case["customer_id"][row] = case["customer_id"][row - 1]
        case["order_ts"][row] = case["order_ts"][row - 1] - 400 * 86_400
    case["customer_id"][row + 1:] += 1000
    _check(case)
    outcome, _, _ = _run(numba_scan, case)
    assert outcome == (int(numba_scan.Status.UNSORTED), row)


def test_the_block_path_runs_as_plain_python_too():
    """NUMBA_DISABLE_JIT=1 (README: step through the kernel in a debugger) runs the same code, intrinsics included."""
    script = (
        "import sys; sys.path.insert(0, 'tests'); import test_numba_block as t;"
        "case = t._regular_case(200); outcome, _, blocks = t._run(t.numba_scan, case); print(repr(outcome)); print(blocks)"
    )
    root = Path(__file__).parent.parent
    # The loyaltymetrics this process imported (built in place under src/, or installed: src/ then has no kernels).
    package_parent = Path(numba_scan.__file__).parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(package_parent), os.environ.get("PYTHONPATH", "")]))
    outputs = []
    for disable in ("0", "1"):
        run = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True,
                             env=dict(env, NUMBA_DISABLE_JIT=disable), check=True)
        outputs.append(run.stdout)
    assert outputs[0] == outputs[1]
    assert int(outputs[0].split()[-1]) > 150       # rows taken by blocks
