"""The partials kernel of ``kernels/_scan.pyx`` as plain Numba loops (``engine="numba"``).

Same algorithm, same signatures, same statuses, same results: the module is
a drop-in for ``loyaltymetrics._scan``. It compiles on first use in a
process (once per key/timestamp type combination; the machine code is
cached on disk), so the Cython engine stays the default; it is here for
changing the algorithm quickly (edit, re-run, no rebuild) and as a second,
independently compiled implementation that the tests hold the first to.
"""
import numpy as np
from llvmlite import ir
from numba import config, njit, types
from numba.core.extending import intrinsic

from ._scan import PARTIAL_COLUMNS, Status
from .periods import check_merchant_zones, check_period_table

N_COUNTS = len(PARTIAL_COLUMNS)
(ORDERS, REVENUE, CUSTOMERS, NEW_CUSTOMERS, REPEAT_CUSTOMERS, ORDERS_FROM_REPEAT_CUSTOMERS,
 RETAINED_CUSTOMERS, REWARD_ORDERS, REWARD_REVENUE, REWARD_CUSTOMERS, MEMBER_ORDERS,
 MEMBER_REVENUE, MEMBER_REPEAT_CUSTOMERS) = range(N_COUNTS)
ACC_STRIDE = 16
INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min

# The cursor: what the Cython kernel keeps in its Cursor struct, as int64 slots.
(STARTED, PREV_MERCHANT, PREV_CUSTOMER, PREV_TS, RUN_PERIOD, RUN_ORDERS, RUN_REWARD_ORDERS,
 RUN_REVENUE, LAST_ORDER_PERIOD, ACC_LO, ACC_HI, OUT_ROWS, ORDER_LO, ORDER_HI,
 # The earliest and latest order of the merchants flushed so far, and their merchants.
 FIRST_TS, FIRST_MERCHANT, LAST_TS, LAST_MERCHANT,
 # Rows the block path took (for tests and benchmarks: no result depends on it).
 BLOCK_ROWS, N_CURSOR) = range(20)

OK, NEED_SPACE, UNSORTED, NEGATIVE_AMOUNT, TIMESTAMP_RANGE, AMOUNT_OVERFLOW = (
    int(Status.OK), int(Status.NEED_SPACE), int(Status.UNSORTED), int(Status.NEGATIVE_AMOUNT),
    int(Status.TIMESTAMP_RANGE), int(Status.AMOUNT_OVERFLOW),
)


class ScanState:
    """Everything a scan carries between calls, and the partials it emitted."""

    def __init__(self, n_periods, allow_negative=False, capacity=1024):
        if n_periods <= 0:
            raise ValueError("n_periods must be positive")
        self.n_periods = n_periods
        self.acc = np.zeros((n_periods, ACC_STRIDE), dtype=np.int64)
        self.min_amount = INT64_MIN if allow_negative else 0
        self.cur = np.zeros(N_CURSOR, dtype=np.int64)
        self.cur[RUN_PERIOD] = -2
        self.cur[LAST_ORDER_PERIOD] = -2
        self.cur[ACC_LO], self.cur[ACC_HI] = INT64_MAX, -1
        self.cur[ORDER_LO], self.cur[ORDER_HI] = INT64_MAX, -1
        self.cur[FIRST_TS], self.cur[LAST_TS] = INT64_MAX, -1
        self._checked_table = None
        self._checked_zones = None
        self.out_merchant = np.empty(0, np.int64)
        self.out_period = np.empty(0, np.int32)
        self.out_counts = np.empty((0, N_COUNTS), np.int64)
        self._allocate(max(capacity, 1))

    def _allocate(self, capacity):
        rows = self.cur[OUT_ROWS]
        merchant = np.empty(capacity, dtype=np.int64)
        period = np.empty(capacity, dtype=np.int32)
        counts = np.empty((capacity, N_COUNTS), dtype=np.int64)
        merchant[:rows] = self.out_merchant[:rows]
        period[:rows] = self.out_period[:rows]
        counts[:rows] = self.out_counts[:rows]
        self.out_merchant, self.out_period, self.out_counts = merchant, period, counts

    def grow(self):
        """Double the output capacity (after a scan returned NEED_SPACE)."""
        self._allocate(2 * len(self.out_merchant))

    def check_table(self, table, ts_max):
        """Check once per table that every period it yields up to ``ts_max`` indexes ``acc``."""
        if table is not self._checked_table:
            check_period_table(table, ts_max, self.n_periods)
            self._checked_table = table

    def check_zones(self, zone_merchant, zone_index, n_tables):
        """Check once per array that merchants are sorted and their zones index the stacked tables."""
        checked = self._checked_zones
        if checked is None or not (checked[0] is zone_merchant and checked[1] is zone_index and checked[2] == n_tables):
            check_merchant_zones(zone_merchant, zone_index, n_tables)
            self._checked_zones = (zone_merchant, zone_index, n_tables)

    @property
    def order_range(self):
        """``((first_ts, its merchant), (last_ts, its merchant))`` of the orders scanned, or None."""
        if self.cur[LAST_TS] < 0:
            return None
        return ((int(self.cur[FIRST_TS]), int(self.cur[FIRST_MERCHANT])),
                (int(self.cur[LAST_TS]), int(self.cur[LAST_MERCHANT])))

    @property
    def block_rows(self):
        """How many of the rows scanned the block path took (the rest went row by row)."""
        return int(self.cur[BLOCK_ROWS])

    @property
    def last_row_keys(self):
        """(merchant_id, customer_id, order_ts) of the last row scanned, or None."""
        if not self.cur[STARTED]:
            return None
        return int(self.cur[PREV_MERCHANT]), int(self.cur[PREV_CUSTOMER]), int(self.cur[PREV_TS])

    def finish(self):
        """Flush the last merchant; return ``(merchant_id, period, counts)`` in scan order."""
        while self.cur[OUT_ROWS] + self.cur[ACC_HI] - self.cur[ACC_LO] + 1 > len(self.out_merchant):
            self.grow()
        if self.cur[STARTED]:
            _flush_merchant(self.cur, self.acc, self.out_merchant, self.out_period, self.out_counts)
            _fold_orders(self.cur)
        n = self.cur[OUT_ROWS]
        return self.out_merchant[:n], self.out_period[:n], self.out_counts[:n]   # views: the scan is over


def scan(state, merchant_id, customer_id, order_ts, amount, reward_bits, reward_offset,
         period_tables, shift, ts_max, zone_merchant, zone_index, start=0, stop=-1):
    """Scan rows ``start:stop`` of one record batch; return ``(status, row)`` (see ``_scan.scan``)."""
    n = len(merchant_id)
    if len(customer_id) != n or len(order_ts) != n or len(amount) != n:
        raise ValueError("columns of one batch must have the same length")
    if stop < 0:
        stop = n
    if not 0 <= start <= stop <= n:
        raise ValueError("rows out of range")
    if (reward_offset + n + 7) // 8 > len(reward_bits):
        raise ValueError("reward bitmap is shorter than the batch")
    tables = np.ascontiguousarray(period_tables, dtype=np.int64)
    if (tables.ndim != 3 or len(tables) < 1 or tables.shape[2] != 2 or not 0 <= shift < 63 or ts_max < 0
            or (ts_max >> shift) >= tables.shape[1]):
        raise ValueError("ts_max is outside the period table")
    state.check_table(period_tables, ts_max)
    state.check_zones(zone_merchant, zone_index, len(tables))
    rows = _scan_rows_refunds if state.min_amount < 0 else _scan_rows
    status, row = rows(
        state.cur, state.acc, state.out_merchant, state.out_period, state.out_counts, state.min_amount,
        merchant_id, customer_id, order_ts, amount, reward_bits, reward_offset,
        tables.reshape(len(tables), -1), shift, ts_max, zone_merchant, zone_index, start, stop,
    )
    return Status(status), row


@njit(nogil=True, cache=True)
def _add_overflows(a, b):
    """``(a + b, overflowed)`` with two's-complement wrap-around, as __builtin_add_overflow."""
    total = np.int64(np.uint64(a) + np.uint64(b))
    return total, ((a ^ total) & (b ^ total)) < 0


@njit(nogil=True, cache=True)
def zone_of(m, zone_merchant, zone_index):
    """Zone of merchant ``m``: its entry in the sorted ``zone_merchant``, else the default zone 0
    (the Numba kernels' one lookup, made when the merchant changes)."""
    i = np.searchsorted(zone_merchant, m)
    if i < len(zone_merchant) and zone_merchant[i] == m:
        return np.int64(zone_index[i])
    return np.int64(0)


@njit(nogil=True, cache=True)
def _zone_table(tables, zone_merchant, zone_index, m):
    """The period table of merchant ``m``'s zone."""
    return tables[zone_of(m, zone_merchant, zone_index)]


@njit(nogil=True, cache=True)
def _fold_orders(cur):
    """Fold the current merchant's earliest and latest order into the state's (ties: smaller merchant first)."""
    lo, hi, m = cur[ORDER_LO], cur[ORDER_HI], cur[PREV_MERCHANT]
    if lo <= hi:
        if lo < cur[FIRST_TS] or (lo == cur[FIRST_TS] and m < cur[FIRST_MERCHANT]):
            cur[FIRST_TS], cur[FIRST_MERCHANT] = lo, m
        if hi > cur[LAST_TS] or (hi == cur[LAST_TS] and m > cur[LAST_MERCHANT]):
            cur[LAST_TS], cur[LAST_MERCHANT] = hi, m
    cur[ORDER_LO], cur[ORDER_HI] = INT64_MAX, -1


@njit(nogil=True, cache=True)
def _flush_merchant(cur, acc, out_merchant, out_period, out_counts):
    """Move the current merchant's touched periods to the output (capacity checked by caller)."""
    for p in range(cur[ACC_LO], cur[ACC_HI] + 1):
        # A period of only refunds has no orders but revenue (never 0: every refund is < 0).
        if acc[p, ORDERS] == 0 and acc[p, REVENUE] == 0:
            continue
        row = cur[OUT_ROWS]
        out_merchant[row] = cur[PREV_MERCHANT]
        out_period[row] = p
        # A run's orders all come from a repeat customer unless the run has one order.
        acc[p, ORDERS_FROM_REPEAT_CUSTOMERS] = acc[p, ORDERS] - acc[p, CUSTOMERS] + acc[p, REPEAT_CUSTOMERS]
        for k in range(N_COUNTS):
            out_counts[row, k] = acc[p, k]
            acc[p, k] = 0
        cur[OUT_ROWS] = row + 1
    cur[ACC_LO] = INT64_MAX
    cur[ACC_HI] = -1


# --- the block path (issue 16) -------------------------------------------------------------------
#
# Where 64 rows of one merchant start with a run (a store-customer's consecutive
# orders in one period), the row loop takes the complete runs among them at
# once: each row's facts (new store-customer, new run, reward, ...) are one bit
# of a uint64 mask, counts are popcounts of mask combinations per period, and
# amounts sums per period. A run's partials depend only on its own rows, so the
# sums over complete runs are the row loop's, and no state is carried from block
# to block. A block that could end otherwise (a bad row, an overflow, a new
# merchant, periods 64 or more apart, no complete run) is left to the row loop,
# which stops at the exact row with the exact status as before.

BLOCK = 64
ONE = np.uint64(1)


@intrinsic
def _popcount(typingctx, x):
    """Set bits of an integer (llvm.ctpop: one popcnt instruction where the CPU has it)."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])
    return x(x), codegen


@intrinsic
def _trailing_zeros(typingctx, x):
    """Index of the lowest set bit (llvm.cttz; the width for 0)."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 0))
    return x(x), codegen


@intrinsic
def _leading_zeros(typingctx, x):
    """Zero bits above the highest set bit (llvm.ctlz; the width for 0)."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.ctlz(args[0], ir.Constant(ir.IntType(1), 0))
    return x(x), codegen


if config.DISABLE_JIT:       # NUMBA_DISABLE_JIT=1 (stepping through in a debugger): plain Python
    def _popcount(x):
        return np.uint64(bin(int(x)).count("1"))

    def _trailing_zeros(x):
        x = int(x)
        return np.uint64((x & -x).bit_length() - 1 if x else 64)

    def _leading_zeros(x):
        return np.uint64(64 - int(x).bit_length())


@njit(nogil=True, cache=True)
def _count(x):
    return np.int64(_popcount(x))


@njit(nogil=True, cache=True)
def _run_fill(r, nr):
    """The bits of every run (``nr``: the bits of run starts) that holds a bit of ``r``.

    Segmented prefix ORs (Kogge-Stone, six doublings) up and down from each
    bit of ``r``, stopped at run starts: a bit gets those of its run below it
    and above it.
    """
    up = r
    go = ~nr                        # bit j may take bit j-1's: j starts no run
    down = r
    back = ~(nr >> ONE)             # bit j may take bit j+1's: j+1 starts no run
    for k in (1, 2, 4, 8, 16, 32):
        s = np.uint64(k)
        up |= (up << s) & go
        go &= go << s
        down |= (down >> s) & back
        back &= back >> s
    return up | down


@njit(nogil=True, cache=True, inline="always")
def _block(acc, merchant_id, customer_id, order_ts, amount, reward_bits, reward_offset, table, shift, ts_max,
           i, prev_merchant, prev_customer, prev_ts, run_period, period, sums):
    """Rows ``i:i+64`` (all before ``stop``) as a block; see above.

    Returns ``(n, cursor)``. ``n`` > 0: rows ``i:i+n`` (complete runs) were
    added to ``acc``, and ``cursor`` is ``(prev_customer, prev_ts,
    run_period)`` after them, then the lowest and highest period and
    timestamp of the rows. ``n`` <= 0: ``acc`` is untouched; leave the next
    ``-n`` rows to the row loop. ``period`` (int64[64]) and ``sums``
    (int64[64, 4], zeros, left zeros) are scratch.

    Every index is unsigned: Numba then omits the wrap-around of negative
    indices, which would turn the loops over the block's rows into gathers.
    """
    z = np.int64(0)
    none = (z, z, z, z, z, z, z)
    u = np.uint64(i)
    # The checks of the row loop, for all 64 rows (row i against the cursor's last row):
    # any failure leaves the block to the row loop, which stops at the row.
    c0 = np.int64(customer_id[u])
    t0 = np.int64(order_ts[u])
    bad = np.int64(c0 < prev_customer) | (np.int64(c0 == prev_customer) & np.int64(t0 < prev_ts))
    big = z
    for j in range(BLOCK):
        k = u + np.uint64(j)
        t = np.int64(order_ts[k])
        bad |= np.int64(np.int64(merchant_id[k]) != prev_merchant) | np.int64(t < 0) | np.int64(t > ts_max)
        big |= amount[k]                # 64 amounts below 2**56 add up below 2**62 (and none is < 0)
    for j in range(1, BLOCK):
        k = u + np.uint64(j)
        c, cp = np.int64(customer_id[k]), np.int64(customer_id[k - ONE])
        bad |= np.int64(c < cp) | (np.int64(c == cp) & np.int64(np.int64(order_ts[k]) < np.int64(order_ts[k - ONE])))
    if bad | (big >> 56):
        return -BLOCK, none
    # Each row's period (every timestamp is in the table's range now); then the masks: nc new
    # store-customer, nr new run, ret retained (a new run of the same store-customer in the
    # period after its last one). Loops of a fixed count, one job each, so they vectorize.
    for j in range(BLOCK):
        t = np.int64(order_ts[u + np.uint64(j)])
        b = np.uint64((t >> shift) * 2)
        period[np.uint64(j)] = table[b] + np.int64(t > table[b + ONE])
    p = period[0]
    nc = np.uint64(c0 != prev_customer)
    nr = nc | np.uint64(p != run_period)
    ret = (ONE - nc) & np.uint64(run_period + 1 == p)
    for j in range(1, BLOCK):
        k = u + np.uint64(j)
        nc |= np.uint64(customer_id[k] != customer_id[k - ONE]) << np.uint64(j)
    for j in range(1, BLOCK):
        p, pp = period[np.uint64(j)], period[np.uint64(j - 1)]
        nr |= np.uint64(p != pp) << np.uint64(j)
        ret |= np.uint64(pp + 1 == p) << np.uint64(j)
    nr |= nc
    ret &= ~nc
    rest = nr & ~ONE
    if not nr & ONE:                    # row i goes on with a run of the cursor's: row loop to the next run
        return -(np.int64(_trailing_zeros(rest)) if rest else BLOCK), none
    if not rest:                        # one run over the whole block (or longer)
        return -BLOCK, none
    n = np.int64(63 - _leading_zeros(rest))   # the last run start: rows i:i+n are complete runs
    w = (ONE << np.uint64(n)) - ONE
    # The periods and the order window of rows i:i+n (a fixed count of rows again: the
    # rows from n on count as row 0).
    p_lo = p_hi = p0 = period[0]
    t_lo = t_hi = t0
    for j in range(BLOCK):
        inside = j < n
        p = period[np.uint64(j)] if inside else p0
        t = np.int64(order_ts[u + np.uint64(j)]) if inside else t0
        p_lo = min(p_lo, p)
        p_hi = max(p_hi, p)
        t_lo = min(t_lo, t)
        t_hi = max(t_hi, t)
    if p_hi - p_lo >= BLOCK:
        return -n, none
    # The reward bits of rows i:i+64, from the bitmap's bytes (the ninth read only if needed:
    # it then holds row i+63's bit, so it is in the bitmap).
    bit = np.uint64(reward_offset + i)
    byte, off = bit >> np.uint64(3), bit & np.uint64(7)
    word = np.uint64(0)
    for k in range(8):
        word |= np.uint64(reward_bits[byte + np.uint64(k)]) << np.uint64(8 * k)
    r = word >> off
    if off:
        r |= np.uint64(reward_bits[byte + np.uint64(8)]) << (np.uint64(64) - off)
    nr, nc, ret, r = nr & w, nc & w, ret & w, r & w
    mr = _run_fill(r, nr) & w   # member runs: all rows of a run with a reward order
    second = ~nr & (nr << ONE) & w      # a run's second row: its store-customer repeats
    # Per period: its rows (a mask) and their amount sums: one pass scatters the rows to their
    # periods, the rewarded and the member rows follow by their bits. (A pass over the block
    # per period, comparing and summing with masks, is slower even for a block of "year" with
    # its handful of periods: 67 instead of 60 instructions a row.)
    present = np.uint64(0)
    for j in range(n):
        bj = np.uint64(j)
        q = np.uint64(period[bj] - p_lo)
        present |= ONE << q
        sums[q, 0] |= np.int64(ONE << bj)
        sums[q, 1] += amount[u + bj]
    rest = r
    while rest:
        bj = _trailing_zeros(rest)
        rest &= rest - ONE
        sums[np.uint64(period[bj] - p_lo), 2] += amount[u + bj]
    rest = mr
    while rest:
        bj = _trailing_zeros(rest)
        rest &= rest - ONE
        sums[np.uint64(period[bj] - p_lo), 3] += amount[u + bj]
    # A sum that could pass INT64_MAX: the row loop finds the row (each partial amount is a
    # sum of some of its period's amounts, none below 0, so revenue bounds the others).
    ok = True
    rest = present
    while rest:
        q = _trailing_zeros(rest)
        rest &= rest - ONE
        ok &= acc[np.uint64(p_lo) + q, REVENUE] <= INT64_MAX - sums[q, 1]
    rest = present
    while rest:
        q = _trailing_zeros(rest)
        rest &= rest - ONE
        if ok:
            rows = np.uint64(sums[q, 0])
            pq = np.uint64(p_lo) + q
            acc[pq, ORDERS] += _count(rows)
            acc[pq, REVENUE] += sums[q, 1]
            acc[pq, CUSTOMERS] += _count(rows & nr)
            acc[pq, NEW_CUSTOMERS] += _count(rows & nc)
            acc[pq, REPEAT_CUSTOMERS] += _count(rows & second)
            acc[pq, RETAINED_CUSTOMERS] += _count(rows & ret)
            acc[pq, REWARD_ORDERS] += _count(rows & r)
            acc[pq, REWARD_REVENUE] += sums[q, 2]
            acc[pq, REWARD_CUSTOMERS] += _count(rows & nr & mr)
            acc[pq, MEMBER_ORDERS] += _count(rows & mr)
            acc[pq, MEMBER_REVENUE] += sums[q, 3]
            acc[pq, MEMBER_REPEAT_CUSTOMERS] += _count(rows & second & mr)
        sums[q, 0] = sums[q, 1] = sums[q, 2] = sums[q, 3] = 0
    if not ok:
        return -n, none
    # The cursor after row i+n-1. Its run ends there (row i+n, in this call, starts one), so the
    # row loop resets the run's counts at row i+n whatever they are: they are not returned.
    last = u + np.uint64(n - 1)
    return n, (np.int64(customer_id[last]), np.int64(order_ts[last]), period[np.uint64(n - 1)],
               p_lo, p_hi, t_lo, t_hi)


@njit(nogil=True, cache=True)
def _scan_rows(cur, acc, out_merchant, out_period, out_counts, min_amount,
               merchant_id, customer_id, order_ts, amount, reward_bits, reward_offset,
               tables, shift, ts_max, zone_merchant, zone_index, start, stop):
    capacity = len(out_merchant)
    started = cur[STARTED]
    prev_merchant, prev_customer, prev_ts = cur[PREV_MERCHANT], cur[PREV_CUSTOMER], cur[PREV_TS]
    run_period, run_orders, run_reward_orders = cur[RUN_PERIOD], cur[RUN_ORDERS], cur[RUN_REWARD_ORDERS]
    run_revenue, acc_lo, acc_hi = cur[RUN_REVENUE], cur[ACC_LO], cur[ACC_HI]
    order_lo, order_hi = cur[ORDER_LO], cur[ORDER_HI]
    # One period table per zone; a merchant's rows use its zone's, switched on a new merchant.
    table = _zone_table(tables, zone_merchant, zone_index, prev_merchant) if started else tables[0]
    status = OK
    period = np.empty(BLOCK, np.int64)          # the block path's scratch
    sums = np.zeros((BLOCK, 4), np.int64)
    row_loop_until = start                      # rows before this one go row by row
    i = start
    while i < stop:
        if i >= row_loop_until:
            if i + BLOCK > stop:
                row_loop_until = stop
            elif not started or np.int64(merchant_id[i]) != prev_merchant:
                row_loop_until = i + 1          # a merchant's first row (and its flush): the row loop
            elif np.int64(merchant_id[i + BLOCK - 1]) != prev_merchant:
                k = i + 1                       # the next merchant starts in the block: row loop up to it
                while np.int64(merchant_id[k]) == prev_merchant:
                    k += 1
                row_loop_until = k + 1
            else:
                n, cursor = _block(acc, merchant_id, customer_id, order_ts, amount, reward_bits, reward_offset,
                                   table, shift, ts_max, i, prev_merchant, prev_customer, prev_ts, run_period,
                                   period, sums)
                if n > 0:
                    prev_customer, prev_ts, run_period, p_lo, p_hi, t_lo, t_hi = cursor
                    acc_lo = min(acc_lo, p_lo)
                    acc_hi = max(acc_hi, p_hi)
                    order_lo = min(order_lo, t_lo)
                    order_hi = max(order_hi, t_hi)
                    cur[BLOCK_ROWS] += n
                    i += n
                    continue
                row_loop_until = i - n
        m = np.int64(merchant_id[i])
        cust = np.int64(customer_id[i])
        t = np.int64(order_ts[i])
        a = amount[i]
        same_merchant = started & np.int64(m == prev_merchant)
        same_customer = same_merchant & np.int64(cust == prev_customer)
        unsorted = started & np.int64(
            (m < prev_merchant) | (same_merchant & (cust < prev_customer)) | (same_customer & (t < prev_ts))
        )
        if (a < min_amount) | (t < 0) | (t > ts_max) | unsorted:
            if a < min_amount:
                status = NEGATIVE_AMOUNT
            elif t < 0 or t > ts_max:
                status = TIMESTAMP_RANGE
            else:
                status = UNSORTED
            break
        if not same_merchant:                   # next merchant: emit the last one's partials
            if started:
                if cur[OUT_ROWS] + (acc_hi - acc_lo + 1) > capacity:
                    status = NEED_SPACE
                    break
                cur[PREV_MERCHANT], cur[ACC_LO], cur[ACC_HI] = prev_merchant, acc_lo, acc_hi
                _flush_merchant(cur, acc, out_merchant, out_period, out_counts)
                acc_lo, acc_hi = cur[ACC_LO], cur[ACC_HI]
                cur[ORDER_LO], cur[ORDER_HI] = order_lo, order_hi
                _fold_orders(cur)
                order_lo, order_hi = cur[ORDER_LO], cur[ORDER_HI]
            started = 1
            table = _zone_table(tables, zone_merchant, zone_index, m)
        bucket = (t >> shift) * 2
        p = table[bucket] + np.int64(t > table[bucket + 1])
        bit = reward_offset + i
        r = np.int64((reward_bits[bit >> 3] >> (bit & 7)) & 1)
        # The row's place in its store-customer's history, as 0/1 facts (SPEC §4).
        new_run = (1 - same_customer) | np.int64(p != run_period)
        keep = new_run - 1                      # all ones while the run goes on, else 0
        was_member_repeat = np.int64(run_reward_orders != 0) & np.int64(run_orders >= 2) & keep
        acc[p, CUSTOMERS] += new_run
        acc[p, NEW_CUSTOMERS] += 1 - same_customer
        acc[p, RETAINED_CUSTOMERS] += same_customer & new_run & np.int64(run_period + 1 == p)
        run_period = p
        run_orders = (run_orders & keep) + 1
        run_reward_orders = (run_reward_orders & keep) + r
        run_revenue, overflow = _add_overflows(run_revenue & keep, a)
        acc[p, ORDERS] += 1
        acc[p, REVENUE], o = _add_overflows(acc[p, REVENUE], a)
        overflow |= o
        # The second order of a run makes its store-customer a repeat customer
        # (orders_from_repeat_customers is derived when the merchant is flushed).
        acc[p, REPEAT_CUSTOMERS] += np.int64(run_orders == 2)
        acc[p, REWARD_ORDERS] += r
        acc[p, REWARD_REVENUE], o = _add_overflows(acc[p, REWARD_REVENUE], a & -r)
        overflow |= o
        # A run's first reward order makes it a member run and brings its earlier
        # orders and revenue with it; later orders of a member run add themselves.
        first_reward = r & np.int64(run_reward_orders == 1)
        member = np.int64(run_reward_orders != 0)
        acc[p, REWARD_CUSTOMERS] += first_reward
        acc[p, MEMBER_ORDERS] += member + ((run_orders - 1) & -first_reward)
        acc[p, MEMBER_REVENUE], o = _add_overflows(
            acc[p, MEMBER_REVENUE], (a & -member) + ((run_revenue - a) & -first_reward))
        overflow |= o
        acc[p, MEMBER_REPEAT_CUSTOMERS] += member & np.int64(run_orders >= 2) & (1 - was_member_repeat)
        if overflow:
            status = AMOUNT_OVERFLOW
            break
        acc_lo = min(acc_lo, p)
        acc_hi = max(acc_hi, p)
        order_lo = min(order_lo, t)             # the merchant's earliest and latest order
        order_hi = max(order_hi, t)
        prev_merchant, prev_customer, prev_ts = m, cust, t
        i += 1
    cur[STARTED] = started
    cur[PREV_MERCHANT], cur[PREV_CUSTOMER], cur[PREV_TS] = prev_merchant, prev_customer, prev_ts
    cur[RUN_PERIOD], cur[RUN_ORDERS], cur[RUN_REWARD_ORDERS] = run_period, run_orders, run_reward_orders
    cur[RUN_REVENUE], cur[ACC_LO], cur[ACC_HI] = run_revenue, acc_lo, acc_hi
    cur[ORDER_LO], cur[ORDER_HI] = order_lo, order_hi
    return status, i


@njit(nogil=True, cache=True)
def _scan_rows_refunds(cur, acc, out_merchant, out_period, out_counts, min_amount,
                       merchant_id, customer_id, order_ts, amount, reward_bits, reward_offset,
                       tables, shift, ts_max, zone_merchant, zone_index, start, stop):
    """``_scan_rows`` with refunds enabled (SPEC §2 "Refunds"): see ``_scan.refund_row``.

    A separate loop rather than a flag inside the row loop (branch on modes
    outside it). A negative amount is a refund, not an order: it adds to the
    revenue sums and to no count, and it has no rank; a run is still a
    store-customer's rows in one period, refunds included, but only its first
    order makes a customer.
    """
    capacity = len(out_merchant)
    started = cur[STARTED]
    prev_merchant, prev_customer, prev_ts = cur[PREV_MERCHANT], cur[PREV_CUSTOMER], cur[PREV_TS]
    run_period, run_orders, run_reward_orders = cur[RUN_PERIOD], cur[RUN_ORDERS], cur[RUN_REWARD_ORDERS]
    run_revenue, acc_lo, acc_hi = cur[RUN_REVENUE], cur[ACC_LO], cur[ACC_HI]
    order_lo, order_hi = cur[ORDER_LO], cur[ORDER_HI]
    # One period table per zone; a merchant's rows use its zone's, switched on a new merchant.
    table = _zone_table(tables, zone_merchant, zone_index, prev_merchant) if started else tables[0]
    last_order_period = cur[LAST_ORDER_PERIOD]
    status = OK
    i = start
    while i < stop:
        m = np.int64(merchant_id[i])
        cust = np.int64(customer_id[i])
        t = np.int64(order_ts[i])
        a = amount[i]
        same_merchant = started & np.int64(m == prev_merchant)
        same_customer = same_merchant & np.int64(cust == prev_customer)
        unsorted = started & np.int64(
            (m < prev_merchant) | (same_merchant & (cust < prev_customer)) | (same_customer & (t < prev_ts))
        )
        if (t < 0) | (t > ts_max) | unsorted:
            status = TIMESTAMP_RANGE if (t < 0 or t > ts_max) else UNSORTED
            break
        if not same_merchant:                   # next merchant: emit the last one's partials
            if started:
                if cur[OUT_ROWS] + (acc_hi - acc_lo + 1) > capacity:
                    status = NEED_SPACE
                    break
                cur[PREV_MERCHANT], cur[ACC_LO], cur[ACC_HI] = prev_merchant, acc_lo, acc_hi
                _flush_merchant(cur, acc, out_merchant, out_period, out_counts)
                acc_lo, acc_hi = cur[ACC_LO], cur[ACC_HI]
                cur[ORDER_LO], cur[ORDER_HI] = order_lo, order_hi
                _fold_orders(cur)
                order_lo, order_hi = cur[ORDER_LO], cur[ORDER_HI]
            started = 1
            table = _zone_table(tables, zone_merchant, zone_index, m)
        bucket = (t >> shift) * 2
        p = table[bucket] + np.int64(t > table[bucket + 1])
        bit = reward_offset + i
        r = np.int64((reward_bits[bit >> 3] >> (bit & 7)) & 1)
        is_order = np.int64(a >= 0)
        reward_order = r & is_order
        lop = last_order_period if same_customer else np.int64(-2)
        new_run = (1 - same_customer) | np.int64(p != run_period)
        keep = new_run - 1
        was_member_repeat = np.int64(run_reward_orders != 0) & np.int64(run_orders >= 2) & keep
        first_order = is_order & np.int64(lop != p)       # the run's first order: a customer
        acc[p, CUSTOMERS] += first_order
        acc[p, NEW_CUSTOMERS] += is_order & np.int64(lop == -2)
        acc[p, RETAINED_CUSTOMERS] += first_order & np.int64(lop + 1 == p)
        last_order_period = p if is_order else lop
        run_period = p
        run_orders = (run_orders & keep) + is_order
        run_reward_orders = (run_reward_orders & keep) + reward_order
        run_revenue, overflow = _add_overflows(run_revenue & keep, a)
        acc[p, ORDERS] += is_order
        acc[p, REVENUE], o = _add_overflows(acc[p, REVENUE], a)
        overflow |= o
        acc[p, REPEAT_CUSTOMERS] += is_order & np.int64(run_orders == 2)
        acc[p, REWARD_ORDERS] += reward_order
        acc[p, REWARD_REVENUE], o = _add_overflows(acc[p, REWARD_REVENUE], a & -r)
        overflow |= o
        first_reward = reward_order & np.int64(run_reward_orders == 1)
        member = np.int64(run_reward_orders != 0)
        acc[p, REWARD_CUSTOMERS] += first_reward
        acc[p, MEMBER_ORDERS] += (member & is_order) + ((run_orders - 1) & -first_reward)
        acc[p, MEMBER_REVENUE], o = _add_overflows(
            acc[p, MEMBER_REVENUE], (a & -member) + ((run_revenue - a) & -first_reward))
        overflow |= o
        acc[p, MEMBER_REPEAT_CUSTOMERS] += member & np.int64(run_orders >= 2) & (1 - was_member_repeat)
        if overflow:
            status = AMOUNT_OVERFLOW
            break
        acc_lo = min(acc_lo, p)
        acc_hi = max(acc_hi, p)
        if is_order:                            # a refund is no order
            order_lo = min(order_lo, t)
            order_hi = max(order_hi, t)
        prev_merchant, prev_customer, prev_ts = m, cust, t
        i += 1
    cur[STARTED] = started
    cur[PREV_MERCHANT], cur[PREV_CUSTOMER], cur[PREV_TS] = prev_merchant, prev_customer, prev_ts
    cur[RUN_PERIOD], cur[RUN_ORDERS], cur[RUN_REWARD_ORDERS] = run_period, run_orders, run_reward_orders
    cur[RUN_REVENUE], cur[ACC_LO], cur[ACC_HI] = run_revenue, acc_lo, acc_hi
    cur[ORDER_LO], cur[ORDER_HI] = order_lo, order_hi
    cur[LAST_ORDER_PERIOD] = last_order_period
    return status, i
