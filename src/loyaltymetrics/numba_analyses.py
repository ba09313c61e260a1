"""The SPEC §9 analysis kernels as plain Numba loops: the twin of ``kernels/_analyses.pyx``.

Same algorithms, same state arrays, same statuses, same entry points
(``cohort_scan``, ``cohort_end``, ``hist_scan``, ``hist_end``), so the
drivers in ``analyses.py`` run either engine unchanged and the tests compare
them row for row. Read the Cython file for the commentary; this one only
notes where Numba needs something different.
"""
import numpy as np
from numba import njit

from . import _analyses
from .numba_scan import zone_of

CURSOR_FIELDS = (
    "started", "prev_merchant", "prev_customer", "prev_ts", "run_period", "run_orders",
    "run_revenue", "cohort", "month_lo", "month_hi", "period", "first_month", "last_month",
    "n_slots", "n_rows", "n_bin_rows", "n_values", "target_lo", "target_hi", "need", "need_count",
    "refunds", "cust_revenue", "zone", "month", "early_ts", "early_merchant", "late_ts", "late_merchant",
)
(STARTED, PREV_MERCHANT, PREV_CUSTOMER, PREV_TS, RUN_PERIOD, RUN_ORDERS, RUN_REVENUE, COHORT,
 MONTH_LO, MONTH_HI, PERIOD, FIRST_MONTH, LAST_MONTH, N_SLOTS, N_ROWS, N_BIN_ROWS, N_VALUES,
 TARGET_LO, TARGET_HI, NEED, NEED_COUNT, REFUNDS, CUST_REVENUE, ZONE, MONTH,
 EARLY_TS, EARLY_MERCHANT, LATE_TS, LATE_MERCHANT) = range(len(CURSOR_FIELDS))
assert CURSOR_FIELDS == _analyses.CURSOR_FIELDS
N_CURSOR = len(CURSOR_FIELDS)

OK, NEED_SPACE, UNSORTED, NEGATIVE_AMOUNT, TIMESTAMP_RANGE, AMOUNT_OVERFLOW, TOTAL_OVERFLOW = range(7)
NEED_SLOTS, NEED_ROWS, NEED_VALUES = 1, 2, 3
SAME_RUN, NEXT_PERIOD, NEXT_CUSTOMER, NEXT_MERCHANT = range(4)
ACTIVE, ORDERS, REVENUE, N_CELLS = 0, 1, 2, 3
MANTISSA_BITS = 6
MANTISSA = 1 << MANTISSA_BITS
N_BINS = (64 - MANTISSA_BITS) * MANTISSA
# The two refund columns after the bins, and the bin indexes they are emitted as (see _analyses).
NEGATIVE_COLUMN, REFUND_COLUMN, HIST_COLUMNS = N_BINS, N_BINS + 1, N_BINS + 2
NEGATIVE_BIN, REFUND_BIN = -1, -2
INT32_MAX = 2**31 - 1

# The bins are a contract between the kernels and analyses.py: one definition.
bin_offsets = _analyses.bin_offsets


@njit(nogil=True, cache=True)
def _add_overflows(a, b):
    """``(a + b, overflowed)``: int64 addition wraps in Numba, so test the signs."""
    r = a + b
    return r, ((a ^ r) & (b ^ r)) < 0


@njit(nogil=True, cache=True)
def _bin_of(x):
    if x < MANTISSA:
        return x
    length = 0
    y = x
    while y:                 # no count-leading-zeros intrinsic in Numba; at most 63 steps per run
        y >>= 1
        length += 1
    return (length - MANTISSA_BITS) * MANTISSA + ((x >> (length - 1 - MANTISSA_BITS)) & (MANTISSA - 1))


@njit(nogil=True, cache=True, inline="always")
def _advance(cur, m, cust, t, a, month_table, month_starts, zone_merchant, zone_index, month_period, shift,
             ts_max, refunds):
    if a < 0 and not refunds:
        return -NEGATIVE_AMOUNT
    if cur[STARTED] and m == cur[PREV_MERCHANT]:
        if cust == cur[PREV_CUSTOMER]:
            move = -UNSORTED if t < cur[PREV_TS] else SAME_RUN
        elif cust > cur[PREV_CUSTOMER]:
            move = NEXT_CUSTOMER
        else:
            move = -UNSORTED
    elif not cur[STARTED] or m > cur[PREV_MERCHANT]:
        move = NEXT_MERCHANT
        cur[ZONE] = zone_of(m, zone_merchant, zone_index)    # a new merchant: its zone, an empty cache
        cur[MONTH_LO] = 0
        cur[MONTH_HI] = 0
    else:
        move = -UNSORTED
    if t < cur[MONTH_LO] or t >= cur[MONTH_HI]:
        if t < 0 or t > ts_max:
            return -TIMESTAMP_RANGE
        z = cur[ZONE]
        b = t >> shift
        month = month_table[z, b, 0] + np.int64(t > month_table[z, b, 1])
        cur[MONTH] = month
        cur[PERIOD] = month_period[month]
        if a < 0:                # a refund widens no month range and leaves the cache empty
            cur[MONTH_LO] = 0
            cur[MONTH_HI] = 0
        else:
            cur[MONTH_LO] = month_starts[z, month]
            cur[MONTH_HI] = month_starts[z, month + 1]
            if month > cur[LAST_MONTH]:
                cur[LAST_MONTH] = month
    if move == SAME_RUN and cur[PERIOD] != cur[RUN_PERIOD]:
        return NEXT_PERIOD
    return move


@njit(nogil=True, cache=True)
def _advance_called(cur, m, cust, t, a, month_table, month_starts, zone_merchant, zone_index, month_period, shift,
                    ts_max, refunds):
    """``_advance`` out of line, for the concentration loop: inlined there it runs ~20% slower
    (2M rows, one thread: 0.79 s against 0.67 s called), while the cohorts loop gains from inlining."""
    return _advance(cur, m, cust, t, a, month_table, month_starts, zone_merchant, zone_index, month_period, shift,
                    ts_max, refunds)


@njit(nogil=True, cache=True)
def _track_early(cur, m, t):
    if t < cur[EARLY_TS] or (t == cur[EARLY_TS] and m < cur[EARLY_MERCHANT]):
        cur[EARLY_TS] = t
        cur[EARLY_MERCHANT] = m
        cur[FIRST_MONTH] = cur[MONTH]


@njit(nogil=True, cache=True)
def _track_late(cur, m, t):
    if t > cur[LATE_TS] or (t == cur[LATE_TS] and m > cur[LATE_MERCHANT]):
        cur[LATE_TS] = t
        cur[LATE_MERCHANT] = m


@njit(nogil=True, cache=True)
def _track_last_row(cur):
    """Without refunds, the row before a store-customer boundary is its latest order (see _analyses)."""
    if cur[STARTED] and not cur[REFUNDS]:
        _track_late(cur, cur[PREV_MERCHANT], cur[PREV_TS])


@njit(nogil=True, cache=True)
def _add_order(cur, move, m, cust, t, a, refunds):
    if move != SAME_RUN:
        cur[RUN_PERIOD] = cur[PERIOD]
        if move != NEXT_PERIOD:
            cur[COHORT] = -1 if refunds else cur[PERIOD]
            if not refunds:      # the order range at store-customer boundaries only (see _analyses)
                _track_early(cur, m, t)
                _track_last_row(cur)
    cur[STARTED] = 1
    cur[PREV_MERCHANT] = m
    cur[PREV_CUSTOMER] = cust
    cur[PREV_TS] = t
    if a >= 0:                   # without refunds every row is an order
        cur[RUN_ORDERS] += 1
        if cur[COHORT] < 0:
            cur[COHORT] = cur[PERIOD]
        if refunds:
            _track_early(cur, m, t)
            _track_late(cur, m, t)


@njit(nogil=True, cache=True)
def _need(cur, what, count):
    cur[NEED] = what
    cur[NEED_COUNT] = count
    return NEED_SPACE


# --- cohorts -------------------------------------------------------------------

@njit(nogil=True, cache=True)
def _cohort_close_run(cur, slot_of, slot_cohort, slot_last, cells):
    n = cur[RUN_ORDERS]
    if n == 0 and cur[RUN_REVENUE] == 0:
        return OK
    if cur[COHORT] < 0:          # refunds before the store-customer's first order: in no cell
        cur[RUN_REVENUE] = 0
        return OK
    cohort = cur[COHORT]
    k = cur[RUN_PERIOD] - cohort
    slot = slot_of[cohort]
    if slot < 0:
        if cur[N_SLOTS] == slot_cohort.shape[0]:
            return _need(cur, NEED_SLOTS, 1)
        slot = cur[N_SLOTS]
        cur[N_SLOTS] += 1
        slot_of[cohort] = slot
        slot_cohort[slot] = cohort
        slot_last[slot] = -1
    revenue, overflow = _add_overflows(cells[slot, k, REVENUE], cur[RUN_REVENUE])
    if overflow:
        return TOTAL_OVERFLOW
    cells[slot, k, REVENUE] = revenue
    cells[slot, k, ACTIVE] += np.int64(n != 0)
    cells[slot, k, ORDERS] += n
    if k > slot_last[slot]:
        slot_last[slot] = k
    cur[RUN_ORDERS] = 0
    cur[RUN_REVENUE] = 0
    return OK


@njit(nogil=True, cache=True)
def _cohort_flush_merchant(cur, slot_of, slot_cohort, slot_last, cells, out_merchant, out_cohort, out_index,
                           out_cells):
    row = cur[N_ROWS]
    needed = 0
    for slot in range(cur[N_SLOTS]):
        needed += slot_last[slot] + 1
    if row + needed > out_merchant.shape[0]:
        return _need(cur, NEED_ROWS, row + needed - out_merchant.shape[0])
    for slot in range(cur[N_SLOTS]):
        for k in range(slot_last[slot] + 1):
            if cells[slot, k, ACTIVE] == 0 and cells[slot, k, REVENUE] == 0:
                continue
            out_merchant[row] = cur[PREV_MERCHANT]
            out_cohort[row] = slot_cohort[slot]
            out_index[row] = k
            for c in range(N_CELLS):
                out_cells[row, c] = cells[slot, k, c]
                cells[slot, k, c] = 0
            row += 1
        slot_of[slot_cohort[slot]] = -1
    cur[N_ROWS] = row
    cur[N_SLOTS] = 0
    return OK


@njit(nogil=True, cache=True)
def _cohort_rows(cur, slot_of, slot_cohort, slot_last, cells, out_merchant, out_cohort, out_index, out_cells,
                 merchant_id, customer_id, order_ts, amount, month_table, month_starts, zone_merchant,
                 zone_index, month_period, shift, ts_max, start, stop):
    status = OK
    refunds = cur[REFUNDS] != 0
    i = start
    while i < stop:
        m = np.int64(merchant_id[i])
        cust = np.int64(customer_id[i])
        t = np.int64(order_ts[i])
        a = amount[i]
        move = _advance(cur, m, cust, t, a, month_table, month_starts, zone_merchant, zone_index, month_period,
                        shift, ts_max, refunds)
        if move < 0:
            status = -move
            break
        if move != SAME_RUN:
            status = _cohort_close_run(cur, slot_of, slot_cohort, slot_last, cells)
            if status != OK:
                break
            if move == NEXT_MERCHANT and cur[STARTED]:
                status = _cohort_flush_merchant(cur, slot_of, slot_cohort, slot_last, cells, out_merchant,
                                                out_cohort, out_index, out_cells)
                if status != OK:
                    break
        _add_order(cur, move, m, cust, t, a, refunds)
        if move >= NEXT_CUSTOMER:
            cur[CUST_REVENUE] = 0
        revenue, overflow = _add_overflows(cur[RUN_REVENUE], a)
        customer_revenue, customer_overflow = _add_overflows(cur[CUST_REVENUE], a)
        if overflow or customer_overflow:
            status = AMOUNT_OVERFLOW
            break
        cur[RUN_REVENUE] = revenue
        cur[CUST_REVENUE] = customer_revenue
        i += 1
    return status, i


def cohort_scan(state, merchant_id, customer_id, order_ts, amount, month_table, month_starts, zone_merchant,
                zone_index, month_period, shift, ts_max, start, stop):
    """Scan rows ``[start, stop)`` of one batch into a ``CohortState``; return ``(status, row)``."""
    state.check(month_period)
    _check_batch(merchant_id, customer_id, order_ts, amount, start, stop, month_table, month_starts,
                 zone_merchant, zone_index, month_period, shift, ts_max)
    s = state
    return _cohort_rows(s.cur, s.slot_of, s.slot_cohort, s.slot_last, s.cells, s.out_merchant, s.out_cohort,
                        s.out_index, s.out_cells, merchant_id, customer_id, order_ts, amount, month_table,
                        month_starts, zone_merchant, zone_index, month_period, shift, ts_max, start, stop)


def cohort_end(state, flush):
    """Close the open store-customer (and, with ``flush``, the merchant); return a status."""
    state.check()
    s = state
    status = _cohort_close_run(s.cur, s.slot_of, s.slot_cohort, s.slot_last, s.cells)
    _track_last_row(s.cur)
    if status == OK and flush and s.cur[STARTED]:
        status = _cohort_flush_merchant(s.cur, s.slot_of, s.slot_cohort, s.slot_last, s.cells, s.out_merchant,
                                        s.out_cohort, s.out_index, s.out_cells)
    return status


# --- concentration ---------------------------------------------------------------

@njit(nogil=True, cache=True)
def _hist_close_run(cur, first_pass, slot_of, slot_period, slot_orders, slot_bins, hist_count, hist_sum,
                    value_target, value, target_low, target_high, target_collect, period_target):
    n = cur[RUN_ORDERS]
    if n == 0 and cur[RUN_REVENUE] == 0:
        return OK
    p = cur[RUN_PERIOD]
    v = cur[RUN_REVENUE]
    low = 0
    if n == 0 and not first_pass:    # refunds only: no customer to rank
        cur[RUN_REVENUE] = 0
        return OK
    if not first_pass:
        target = period_target[p]
        if target < 0 or v < target_low[target] or v > target_high[target]:
            cur[RUN_ORDERS] = 0
            cur[RUN_REVENUE] = 0
            return OK
        low = target_low[target]
        if target_collect[target]:
            k = cur[N_VALUES]
            if k == value.shape[0]:
                return _need(cur, NEED_VALUES, 1)
            value_target[k] = target
            value[k] = v
            cur[N_VALUES] = k + 1
            cur[RUN_ORDERS] = 0
            cur[RUN_REVENUE] = 0
            return OK
    slot = slot_of[p]
    if slot < 0:
        if cur[N_SLOTS] == slot_period.shape[0]:
            return _need(cur, NEED_SLOTS, 1)
        slot = cur[N_SLOTS]
        cur[N_SLOTS] += 1
        slot_of[p] = slot
        slot_period[slot] = p
        slot_orders[slot] = 0
        slot_bins[slot, 0] = INT32_MAX
        slot_bins[slot, 1] = -1
    if n == 0:
        b = REFUND_COLUMN
    elif v < low:
        b = NEGATIVE_COLUMN
    else:
        b = _bin_of(np.int64(np.uint64(v) - np.uint64(low)))
    total, overflow = _add_overflows(hist_sum[slot, b], v)
    if overflow:
        return TOTAL_OVERFLOW
    hist_sum[slot, b] = total
    hist_count[slot, b] += np.int64(n != 0)
    slot_orders[slot] += n
    if b < NEGATIVE_COLUMN:
        if b < slot_bins[slot, 0]:
            slot_bins[slot, 0] = b
        if b > slot_bins[slot, 1]:
            slot_bins[slot, 1] = b
    cur[RUN_ORDERS] = 0
    cur[RUN_REVENUE] = 0
    return OK


@njit(nogil=True, cache=True)
def _hist_flush_merchant(cur, first_pass, slot_of, slot_period, slot_orders, slot_bins, hist_count, hist_sum,
                         out_merchant, out_period, out_orders, bin_key, bin_index, bin_count, bin_sum,
                         target_period, period_target):
    row = cur[N_ROWS]
    binrow = cur[N_BIN_ROWS]
    needed = 0
    for slot in range(cur[N_SLOTS]):
        needed += slot_bins[slot, 1] - slot_bins[slot, 0] + 1 + 2
    if first_pass and row + cur[N_SLOTS] > out_merchant.shape[0]:
        return _need(cur, NEED_ROWS, cur[N_SLOTS])
    if binrow + needed > bin_key.shape[0]:
        return _need(cur, NEED_ROWS, needed)
    for slot in range(cur[N_SLOTS]):
        p = slot_period[slot]
        if first_pass:
            out_merchant[row] = cur[PREV_MERCHANT]
            out_period[row] = p
            out_orders[row] = slot_orders[slot]
            key = row
            row += 1
        else:
            key = period_target[p]
        for b in range(slot_bins[slot, 0], slot_bins[slot, 1] + 1):
            if hist_count[slot, b] == 0:
                continue
            bin_key[binrow] = key
            bin_index[binrow] = b
            bin_count[binrow] = hist_count[slot, b]
            bin_sum[binrow] = hist_sum[slot, b]
            hist_count[slot, b] = 0
            hist_sum[slot, b] = 0
            binrow += 1
        for b in range(NEGATIVE_COLUMN, HIST_COLUMNS):
            if hist_count[slot, b] == 0 and hist_sum[slot, b] == 0:
                continue
            bin_key[binrow] = key
            bin_index[binrow] = NEGATIVE_BIN if b == NEGATIVE_COLUMN else REFUND_BIN
            bin_count[binrow] = hist_count[slot, b]
            bin_sum[binrow] = hist_sum[slot, b]
            hist_count[slot, b] = 0
            hist_sum[slot, b] = 0
            binrow += 1
        slot_of[p] = -1
    cur[N_ROWS] = row
    cur[N_BIN_ROWS] = binrow
    cur[N_SLOTS] = 0
    for j in range(cur[TARGET_LO], cur[TARGET_HI]):
        period_target[target_period[j]] = -1
    cur[TARGET_LO] = 0
    cur[TARGET_HI] = 0
    return OK


@njit(nogil=True, cache=True)
def _hist_open_merchant(cur, m, target_merchant, target_period, period_target):
    lo = np.searchsorted(target_merchant, m)
    j = lo
    while j < target_merchant.shape[0] and target_merchant[j] == m:
        period_target[target_period[j]] = j
        j += 1
    cur[TARGET_LO] = lo
    cur[TARGET_HI] = j


@njit(nogil=True, cache=True)
def _hist_rows(cur, first_pass, slot_of, slot_period, slot_orders, slot_bins, hist_count, hist_sum,
               out_merchant, out_period, out_orders, bin_key, bin_index, bin_count, bin_sum, value_target, value,
               target_merchant, target_period, target_low, target_high, target_collect, period_target,
               merchant_id, customer_id, order_ts, amount, month_table, month_starts, zone_merchant,
               zone_index, month_period, shift, ts_max, start, stop):
    status = OK
    refunds = cur[REFUNDS] != 0
    i = start
    while i < stop:
        m = np.int64(merchant_id[i])
        cust = np.int64(customer_id[i])
        t = np.int64(order_ts[i])
        a = amount[i]
        move = _advance_called(cur, m, cust, t, a, month_table, month_starts, zone_merchant, zone_index, month_period,
                        shift, ts_max, refunds)
        if move < 0:
            status = -move
            break
        if move != SAME_RUN:
            status = _hist_close_run(cur, first_pass, slot_of, slot_period, slot_orders, slot_bins, hist_count,
                                     hist_sum, value_target, value, target_low, target_high, target_collect,
                                     period_target)
            if status != OK:
                break
            if move == NEXT_MERCHANT:
                if cur[STARTED]:
                    status = _hist_flush_merchant(cur, first_pass, slot_of, slot_period, slot_orders, slot_bins,
                                                  hist_count, hist_sum, out_merchant, out_period, out_orders,
                                                  bin_key, bin_index, bin_count, bin_sum, target_period,
                                                  period_target)
                    if status != OK:
                        break
                if not first_pass:
                    _hist_open_merchant(cur, m, target_merchant, target_period, period_target)
        _add_order(cur, move, m, cust, t, a, refunds)
        revenue, overflow = _add_overflows(cur[RUN_REVENUE], a)
        if overflow:
            status = AMOUNT_OVERFLOW
            break
        cur[RUN_REVENUE] = revenue
        i += 1
    return status, i


def _hist_args(s):
    return (s.cur, s.first_pass, s.slot_of, s.slot_period, s.slot_orders, s.slot_bins, s.hist_count, s.hist_sum)


def hist_scan(state, merchant_id, customer_id, order_ts, amount, month_table, month_starts, zone_merchant,
              zone_index, month_period, shift, ts_max, start, stop):
    """Scan rows ``[start, stop)`` of one batch into a ``HistState``; return ``(status, row)``."""
    state.check(month_period)
    _check_batch(merchant_id, customer_id, order_ts, amount, start, stop, month_table, month_starts,
                 zone_merchant, zone_index, month_period, shift, ts_max)
    s = state
    return _hist_rows(*_hist_args(s), s.out_merchant, s.out_period, s.out_orders, s.bin_key, s.bin_index,
                      s.bin_count, s.bin_sum, s.value_target, s.value, s.target_merchant, s.target_period,
                      s.target_low, s.target_high, s.target_collect, s.period_target, merchant_id, customer_id,
                      order_ts, amount, month_table, month_starts, zone_merchant, zone_index, month_period, shift,
                      ts_max, start, stop)


def hist_end(state, flush):
    """Close the open store-customer (and, with ``flush``, the merchant); return a status."""
    state.check()
    s = state
    status = _hist_close_run(*_hist_args(s), s.value_target, s.value, s.target_low, s.target_high,
                             s.target_collect, s.period_target)
    _track_last_row(s.cur)
    if status == OK and flush and s.cur[STARTED]:
        status = _hist_flush_merchant(*_hist_args(s), s.out_merchant, s.out_period, s.out_orders, s.bin_key,
                                      s.bin_index, s.bin_count, s.bin_sum, s.target_period, s.period_target)
    return status


def _check_batch(merchant_id, customer_id, order_ts, amount, start, stop, month_table, month_starts,
                 zone_merchant, zone_index, month_period, shift, ts_max):
    """What the Cython entry points check: the loops index these unchecked."""
    n = len(merchant_id)
    if len(customer_id) != n or len(order_ts) != n or len(amount) != n:
        raise ValueError("columns of one batch must have the same length")
    if not 0 <= start <= stop <= n:
        raise ValueError("start/stop out of range")
    _analyses.check_zone_tables(month_table, month_starts, zone_merchant, zone_index, month_period, shift, ts_max)
    for name, table, dtype, ndim in (("month_table", month_table, np.int64, 3), ("month_starts", month_starts, np.int64, 2),
                                     ("zone_merchant", zone_merchant, np.int64, 1),
                                     ("zone_index", zone_index, np.int32, 1)):
        if table.dtype != dtype or table.ndim != ndim:
            raise ValueError(f"{name} must be {np.dtype(dtype).name}[{ndim}-d]")
    for name, column, kinds in (("merchant_id", merchant_id, "ii"), ("customer_id", customer_id, "ii"),
                                ("order_ts", order_ts, "ii"), ("amount", amount, "q")):
        if column.dtype.char not in ("i", "l", "q") or (kinds == "q" and column.dtype != np.int64):
            raise ValueError(f"{name} has dtype {column.dtype}")
