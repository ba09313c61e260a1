# cython: freethreading_compatible = True
"""Single-pass kernels of the SPEC §9 analyses: acquisition cohorts and
revenue-concentration histograms.

Like ``_scan``, a kernel knows nothing about files, chunks or threads: it
walks rows sorted by (merchant_id, customer_id, order_ts), checks them as
``_scan`` does (same statuses, same order of checks), and adds int64
partials into caller-owned NumPy arrays. All of its state lives in those
arrays (``cur`` is the cursor, indexed by ``CURSOR_FIELDS``), so a call can
stop at any row and be resumed there, and the NumPy-only twin
``loyaltymetrics.numba_analyses`` runs on exactly the same state.

Periods are local to each merchant's time zone (SPEC §3): the caller
passes one month table per zone (``periods.period_tables("month", ...)``)
and each zone's local month starts (``periods.local_month_starts``), with
the merchants outside zone 0 (``periods.MerchantZones``). The kernel looks
the zone up when the merchant changes (a binary search, in the branch that
sees the change anyway) and empties its month cache then, so the row loop
does the same work in any zone.

The cursor also tracks the input's earliest and latest order (their
timestamp and merchant; ties: the smaller merchant is the earlier, the
larger the later, as in file order) and the local month of the earliest in
its merchant's zone, for the observation window and ``period="all"``
(SPEC §3): a compare per row, no extra pass.

With ``cur[REFUNDS]`` set (``refunds=True``, SPEC §2) a row with a negative
amount is a refund: it belongs to its store-customer's run (its amount is in
the run's revenue) but is no order, has no rank and widens no month range.

A call stops early with ``NEED_SPACE`` when a caller-owned array is full;
``cur[NEED]`` says which (``NEED_SLOTS``, ``NEED_ROWS``, ``NEED_VALUES``)
and ``cur[NEED_COUNT]`` how many entries are missing. Nothing has been
changed for the row it stopped at.
"""
import numpy as np

from libc.stdint cimport INT32_MAX, int32_t, int64_t, uint8_t, uint64_t
from _types cimport customer_key_t, merchant_key_t, order_ts_t

cdef extern from *:
    """
    #include <stdint.h>
    static inline int lm_analyses_add_overflows(int64_t a, int64_t b, int64_t *out) {
        return __builtin_add_overflow(a, b, out);
    }
    static inline int lm_bit_length(uint64_t x) {
        return x ? 64 - __builtin_clzll(x) : 0;
    }
    """
    bint add_overflows "lm_analyses_add_overflows"(int64_t a, int64_t b, int64_t *out) noexcept nogil
    int bit_length "lm_bit_length"(uint64_t x) noexcept nogil

# Statuses: the same values as ``_scan.Status`` so that one function turns
# a stop of any kernel into a typed error.
cdef enum:
    OK = 0
    NEED_SPACE = 1
    UNSORTED = 2
    NEGATIVE_AMOUNT = 3
    TIMESTAMP_RANGE = 4
    AMOUNT_OVERFLOW = 5
    TOTAL_OVERFLOW = 6

# The cursor: one int64 per field, in this order.
cdef enum:
    STARTED
    PREV_MERCHANT
    PREV_CUSTOMER
    PREV_TS
    RUN_PERIOD          # the open run: one store-customer's orders in one period
    RUN_ORDERS
    RUN_REVENUE
    COHORT              # period of the open store-customer's rank-1 order
    MONTH_LO            # order_ts -> month cache, [MONTH_LO, MONTH_HI) in timestamp units
    MONTH_HI
    PERIOD
    FIRST_MONTH         # local month of the earliest order (EARLY_TS), in its merchant's zone
    LAST_MONTH          # latest local month of any order, each in its merchant's zone
    N_SLOTS             # slots in use by the current merchant
    N_ROWS              # rows emitted
    N_BIN_ROWS          # histogram bins emitted (concentration)
    N_VALUES            # values collected (concentration refinement)
    TARGET_LO           # the current merchant's targets, [TARGET_LO, TARGET_HI)
    TARGET_HI
    NEED
    NEED_COUNT
    REFUNDS             # 1: a negative amount is a refund, not an order (SPEC §2); set by the caller
    CUST_REVENUE        # the open store-customer's amounts so far (cohorts: its cumulative revenue)
    ZONE                # zone index of PREV_MERCHANT (set by its first row)
    MONTH               # local month of the month cache (of the last cache miss)
    EARLY_TS            # the earliest order: timestamp (INT64_MAX: none yet) and merchant
    EARLY_MERCHANT
    LATE_TS             # the latest order: timestamp (-1: none yet) and merchant
    LATE_MERCHANT
    N_CURSOR

CURSOR_FIELDS = (
    "started", "prev_merchant", "prev_customer", "prev_ts", "run_period", "run_orders",
    "run_revenue", "cohort", "month_lo", "month_hi", "period", "first_month", "last_month",
    "n_slots", "n_rows", "n_bin_rows", "n_values", "target_lo", "target_hi", "need", "need_count",
    "refunds",
    "cust_revenue", "zone", "month", "early_ts", "early_merchant", "late_ts",
    "late_merchant",
)
assert len(CURSOR_FIELDS) == N_CURSOR

cdef enum:
    NEED_NOTHING = 0
    NEED_SLOTS = 1
    NEED_ROWS = 2
    NEED_VALUES = 3

NEEDS = {"slots": NEED_SLOTS, "rows": NEED_ROWS, "values": NEED_VALUES}

# Row transitions (>= 0) returned by `advance`; errors come back negated.
cdef enum:
    SAME_RUN
    NEXT_PERIOD
    NEXT_CUSTOMER
    NEXT_MERCHANT

# Cohort cells, SPEC §9.
cdef enum:
    ACTIVE = 0
    ORDERS = 1
    REVENUE = 2
    N_CELLS = 3

# Histogram bins (concentration): values below 2**MANTISSA_BITS get a bin
# each; above, a value's bit length and its next MANTISSA_BITS bits name the
# bin, so every bin is [lo, lo + 2**s) with a relative width <= 2**-6.
cdef enum:
    MANTISSA_BITS = 6
    MANTISSA = 64       # 2 ** MANTISSA_BITS
N_BINS = (64 - MANTISSA_BITS) * MANTISSA
assert MANTISSA == 1 << MANTISSA_BITS

# With refunds a store-customer-period's revenue can be negative, and a run
# of only refunds is no customer but still revenue (SPEC §2). The first pass
# keeps both in two extra histogram columns after the N_BINS bins, emitted
# with bin indexes below every bin: NEGATIVE_BIN (-1) holds the customers
# with revenue < 0 (the range [INT64_MIN, -1], refined like any bin from
# INT64_MIN), REFUND_BIN (-2) the revenue of refund-only runs with count 0.
cdef enum:
    NEGATIVE_COLUMN = (64 - MANTISSA_BITS) * MANTISSA
    REFUND_COLUMN = NEGATIVE_COLUMN + 1
    HIST_COLUMNS = NEGATIVE_COLUMN + 2
    NEGATIVE_INDEX = -1
    REFUND_INDEX = -2
NEGATIVE_BIN = NEGATIVE_INDEX
REFUND_BIN = REFUND_INDEX
HIST_WIDTH = HIST_COLUMNS
assert NEGATIVE_COLUMN == N_BINS


cdef inline int32_t bin_of(uint64_t x) noexcept nogil:
    """Bin of an offset ``x`` >= 0 from the target's lower end."""
    if x < MANTISSA:
        return <int32_t>x
    cdef int length = bit_length(x)
    return <int32_t>((length - MANTISSA_BITS) * MANTISSA
                     + ((x >> (length - 1 - MANTISSA_BITS)) & (MANTISSA - 1)))


def bin_offsets(bins):
    """``(lower end, width)`` of each bin as int64 offsets from the target's lower end."""
    bins = np.asarray(bins, dtype=np.int64)
    small = bins < MANTISSA
    length = np.where(small, 0, bins // MANTISSA + MANTISSA_BITS)
    shift = np.where(small, 0, length - 1 - MANTISSA_BITS)
    lower = np.where(small, bins, (MANTISSA + bins % MANTISSA) << shift)
    return lower.astype(np.int64), (np.int64(1) << shift).astype(np.int64)


def bins_of(values):
    """The kernel's bin of each offset (for tests and inspection)."""
    return np.array([bin_of(<uint64_t>v) for v in np.asarray(values, dtype=np.int64)], dtype=np.int32)


cdef struct Tables:
    # The zones' tables as plain pointers (checked by ``check_zone_tables``), passed by value: a
    # copy the compiler keeps in registers (no store to ``cur`` can alias it), and one small struct
    # instead of several memoryview structs.
    const int64_t* month_table      # [zone][bucket][2]: periods.period_table("month", ...) of each zone
    Py_ssize_t buckets
    const int64_t* month_starts     # [zone][month]: periods.local_month_starts of each zone
    Py_ssize_t months               # entries per zone (N_MONTHS + 1)
    const int64_t* zone_merchant    # sorted merchants outside zone 0, and their zones
    const int32_t* zone_index
    Py_ssize_t n_zone_merchants
    const int32_t* month_period
    int shift
    int64_t ts_max


cdef inline int64_t zone_of(int64_t m, const Tables* tb) noexcept nogil:
    """Zone of merchant ``m``: its entry in the sorted ``zone_merchant``, else the default zone 0."""
    cdef Py_ssize_t lo = 0, hi = tb.n_zone_merchants, mid
    while lo < hi:
        mid = (lo + hi) // 2
        if tb.zone_merchant[mid] < m:
            lo = mid + 1
        else:
            hi = mid
    if lo < tb.n_zone_merchants and tb.zone_merchant[lo] == m:
        return tb.zone_index[lo]
    return 0


cdef Tables tables_of(const int64_t[:, :, ::1] month_table, const int64_t[:, ::1] month_starts,
                      const int64_t[::1] zone_merchant, const int32_t[::1] zone_index,
                      const int32_t[::1] month_period, int shift, int64_t ts_max):
    """Pointers to tables ``_check_batch`` has checked (non-empty but for the zone lists)."""
    cdef Tables tb
    tb.month_table = &month_table[0, 0, 0]
    tb.buckets = month_table.shape[1]
    tb.month_starts = &month_starts[0, 0]
    tb.months = month_starts.shape[1]
    tb.n_zone_merchants = zone_merchant.shape[0]
    tb.zone_merchant = &zone_merchant[0] if zone_merchant.shape[0] else NULL
    tb.zone_index = &zone_index[0] if zone_index.shape[0] else NULL
    tb.month_period = &month_period[0]
    tb.shift = shift
    tb.ts_max = ts_max
    return tb


cdef struct Window:
    # The cursor fields the row loop reads or writes on a cache miss or a store-customer boundary, kept
    # in locals for the loop (``load_window`` at its start, ``store_window`` at every exit) so the
    # compiler holds them in registers: a store to ``cur`` or to the states' arrays cannot alias them.
    const int64_t* month_table      # the current merchant's zone's rows of tb.month_table, tb.month_starts
    const int64_t* month_starts
    bint started                    # cur[STARTED], cur[PREV_*]: read from here, written to both
    int64_t prev_merchant
    int64_t prev_customer
    int64_t prev_ts
    int64_t month                   # cur[MONTH]
    int64_t last_month              # cur[LAST_MONTH]
    int64_t first_month             # cur[FIRST_MONTH]
    int64_t early_ts                # cur[EARLY_TS], cur[EARLY_MERCHANT]
    int64_t early_merchant
    int64_t late_ts                 # cur[LATE_TS], cur[LATE_MERCHANT]
    int64_t late_merchant


cdef inline void load_window(int64_t[::1] cur, const Tables* tb, Window* w) noexcept nogil:
    cdef int64_t z = cur[ZONE]
    w.month_table = tb.month_table + 2 * z * tb.buckets
    w.month_starts = tb.month_starts + z * tb.months
    w.started = cur[STARTED] != 0
    w.prev_merchant = cur[PREV_MERCHANT]
    w.prev_customer = cur[PREV_CUSTOMER]
    w.prev_ts = cur[PREV_TS]
    w.month = cur[MONTH]
    w.last_month = cur[LAST_MONTH]
    w.first_month = cur[FIRST_MONTH]
    w.early_ts = cur[EARLY_TS]
    w.early_merchant = cur[EARLY_MERCHANT]
    w.late_ts = cur[LATE_TS]
    w.late_merchant = cur[LATE_MERCHANT]


cdef inline void store_window(int64_t[::1] cur, const Window* w) noexcept nogil:
    cur[MONTH] = w.month
    cur[LAST_MONTH] = w.last_month
    cur[FIRST_MONTH] = w.first_month
    cur[EARLY_TS] = w.early_ts
    cur[EARLY_MERCHANT] = w.early_merchant
    cur[LATE_TS] = w.late_ts
    cur[LATE_MERCHANT] = w.late_merchant


cdef inline int advance(int64_t[::1] cur, Window* w, int64_t m, int64_t cust, int64_t t, int64_t a,
                        const Tables tb, const bint refunds) noexcept nogil:
    """Check one row and say how it moves the cursor (or ``-status``).

    Checks in the order ``_scan`` makes them, so both report the same
    error for the same bad row. Only the zone and the month cache change
    here; they are pure functions of the row and the previous row's keys,
    so a resumed row finds the same answer.
    """
    cdef int64_t month, z
    cdef const int64_t* bucket
    cdef const int64_t* starts
    if a < 0 and not refunds:
        return -NEGATIVE_AMOUNT
    if not w.started or m > w.prev_merchant:
        # A new merchant: its zone's tables, and an empty month cache (it was another zone's).
        # Only here, so a row of the same merchant does no zone work at all.
        z = zone_of(m, &tb)
        cur[ZONE] = z
        w.month_table = tb.month_table + 2 * z * tb.buckets
        w.month_starts = tb.month_starts + z * tb.months
        cur[MONTH_LO] = 0
        cur[MONTH_HI] = 0
    if t < cur[MONTH_LO] or t >= cur[MONTH_HI]:
        if t < 0 or t > tb.ts_max:
            return -TIMESTAMP_RANGE
        bucket = w.month_table + 2 * (t >> tb.shift)
        month = bucket[0] + (t > bucket[1])
        w.month = month
        cur[PERIOD] = tb.month_period[month]
        if a < 0:
            # A refund is no order: it must not widen the orders' month range (the "all"
            # period's start, the cohorts' horizon), so it leaves the cache empty for the
            # next order to fill.
            cur[MONTH_LO] = 0
            cur[MONTH_HI] = 0
        else:
            starts = w.month_starts + month
            cur[MONTH_LO] = starts[0]
            cur[MONTH_HI] = starts[1]
            if month > w.last_month:
                w.last_month = month
    # How the row moves the cursor; an UNSORTED row is reported after a timestamp out of range.
    if w.started and m == w.prev_merchant:
        if cust == w.prev_customer:
            if t < w.prev_ts:
                return -UNSORTED
            return SAME_RUN if cur[PERIOD] == cur[RUN_PERIOD] else NEXT_PERIOD
        if cust > w.prev_customer:
            return NEXT_CUSTOMER
        return -UNSORTED
    if not w.started or m > w.prev_merchant:
        return NEXT_MERCHANT
    return -UNSORTED


cdef inline void track_early(Window* w, int64_t m, int64_t t) noexcept nogil:
    """Keep the earliest order (SPEC §3's observation window, ``period="all"``'s start).

    ``w.month`` is this order's local month: the cache it hit or filled is
    an order's, of this merchant's zone.
    """
    if t < w.early_ts or (t == w.early_ts and m < w.early_merchant):
        w.early_ts = t
        w.early_merchant = m
        w.first_month = w.month


cdef inline void track_late(Window* w, int64_t m, int64_t t) noexcept nogil:
    """Keep the latest order (the observation window)."""
    if t > w.late_ts or (t == w.late_ts and m > w.late_merchant):
        w.late_ts = t
        w.late_merchant = m


cdef inline void track_last_row(int64_t[::1] cur, Window* w) noexcept nogil:
    """Without refunds, the row before a store-customer boundary is its latest order (see ``add_order``)."""
    if w.started and not cur[REFUNDS]:
        track_late(w, w.prev_merchant, w.prev_ts)


cdef void track_last_row_of(int64_t[::1] cur) noexcept nogil:
    """``track_last_row`` on the cursor itself (``*_end``, outside the row loop)."""
    cdef Window w
    w.started = cur[STARTED] != 0
    w.prev_merchant = cur[PREV_MERCHANT]
    w.prev_ts = cur[PREV_TS]
    w.late_ts = cur[LATE_TS]
    w.late_merchant = cur[LATE_MERCHANT]
    track_last_row(cur, &w)
    cur[LATE_TS] = w.late_ts
    cur[LATE_MERCHANT] = w.late_merchant


cdef inline void add_order(int64_t[::1] cur, Window* w, int move, int64_t m, int64_t cust, int64_t t,
                           int64_t a, const bint refunds) noexcept nogil:
    """Open what ``move`` starts (run, store-customer) and count the row's order.

    With refunds a row with ``a < 0`` is a refund (SPEC §2): it belongs to the
    run (its amount is added by the caller) but is no order and has no rank,
    so the cohort is the period of the first row that is an order (-1 until then).
    """
    if move != SAME_RUN:
        cur[RUN_PERIOD] = cur[PERIOD]
        if move != NEXT_PERIOD:
            # Rows are in time order: without refunds this row is the rank-1 order.
            cur[COHORT] = -1 if refunds else cur[PERIOD]
            if not refunds:
                # A store-customer's rows are in time order, so without refunds its first row is its
                # earliest order and the row before this one the previous store-customer's latest:
                # the order range costs nothing on the other rows (``*_end`` sees the last one).
                track_early(w, m, t)
                if w.started:       # (without refunds: ``track_last_row``)
                    track_late(w, w.prev_merchant, w.prev_ts)
    cur[STARTED] = 1
    cur[PREV_MERCHANT] = m
    cur[PREV_CUSTOMER] = cust
    cur[PREV_TS] = t
    w.started = True
    w.prev_merchant = m
    w.prev_customer = cust
    w.prev_ts = t
    if refunds:
        if a >= 0:
            cur[RUN_ORDERS] += 1
            if cur[COHORT] < 0:
                cur[COHORT] = cur[PERIOD]
            track_early(w, m, t)
            track_late(w, m, t)
    else:
        cur[RUN_ORDERS] += 1



cdef inline int need(int64_t[::1] cur, int what, int64_t count) noexcept nogil:
    cur[NEED] = what
    cur[NEED_COUNT] = count
    return NEED_SPACE


# --- cohorts -----------------------------------------------------------------

cdef class CohortArrays:
    """Typed views of a cohort state's arrays (see ``analyses.CohortState``)."""
    cdef int64_t[::1] cur
    cdef int32_t[::1] slot_of         # [period] -> slot of that cohort for the current merchant, or -1
    cdef int32_t[::1] slot_cohort     # [slot] -> cohort period
    cdef int32_t[::1] slot_last       # [slot] -> last period index with activity
    cdef int64_t[:, :, ::1] cells     # [slot, period_index, cell]
    cdef int64_t[::1] out_merchant
    cdef int32_t[::1] out_cohort
    cdef int32_t[::1] out_index
    cdef int64_t[:, ::1] out_cells

    def __init__(self, state):
        self.cur = state.cur
        self.slot_of = state.slot_of
        self.slot_cohort = state.slot_cohort
        self.slot_last = state.slot_last
        self.cells = state.cells
        self.out_merchant = state.out_merchant
        self.out_cohort = state.out_cohort
        self.out_index = state.out_index
        self.out_cells = state.out_cells
        n_periods, n_slots, n_out = self.slot_of.shape[0], self.slot_cohort.shape[0], self.out_merchant.shape[0]
        if (self.cur.shape[0] != N_CURSOR or self.slot_last.shape[0] != n_slots
                or tuple(state.cells.shape) != (n_slots, n_periods, N_CELLS)
                or self.out_cohort.shape[0] != n_out or self.out_index.shape[0] != n_out
                or tuple(state.out_cells.shape) != (n_out, N_CELLS)
                or not 0 <= self.cur[N_SLOTS] <= n_slots or not 0 <= self.cur[N_ROWS] <= n_out):
            raise ValueError("inconsistent cohort state arrays")

    cdef bint fits(self, const int32_t[::1] month_period):
        return month_period.shape[0] and month_period[month_period.shape[0] - 1] < self.slot_of.shape[0]


cdef int cohort_close_run(CohortArrays s) noexcept nogil:
    """Add the open run to its (cohort, period_index) cell; idempotent."""
    cdef int64_t[::1] cur = s.cur
    cdef int64_t n = cur[RUN_ORDERS]
    if n == 0 and cur[RUN_REVENUE] == 0:    # nothing open (a refund-only run's sum is < 0)
        return OK
    if cur[COHORT] < 0:
        # Only refunds so far, before the store-customer's first order: in no cohort's cell.
        cur[RUN_REVENUE] = 0
        return OK
    cdef int32_t cohort = <int32_t>cur[COHORT]
    cdef int32_t k = <int32_t>(cur[RUN_PERIOD] - cohort)
    cdef int32_t slot = s.slot_of[cohort]
    cdef int64_t revenue
    if slot < 0:
        if cur[N_SLOTS] == s.slot_cohort.shape[0]:
            return need(cur, NEED_SLOTS, 1)
        slot = <int32_t>cur[N_SLOTS]
        cur[N_SLOTS] += 1
        s.slot_of[cohort] = slot
        s.slot_cohort[slot] = cohort
        s.slot_last[slot] = -1
    if add_overflows(s.cells[slot, k, REVENUE], cur[RUN_REVENUE], &revenue):
        return TOTAL_OVERFLOW
    s.cells[slot, k, REVENUE] = revenue
    s.cells[slot, k, ACTIVE] += n != 0          # refunds alone make no customer active
    s.cells[slot, k, ORDERS] += n
    if k > s.slot_last[slot]:
        s.slot_last[slot] = k
    cur[RUN_ORDERS] = 0
    cur[RUN_REVENUE] = 0
    return OK


cdef int cohort_flush_merchant(CohortArrays s) noexcept nogil:
    """Move the current merchant's non-empty cells to the output."""
    cdef int64_t[::1] cur = s.cur
    cdef Py_ssize_t slot, k, c, row = cur[N_ROWS], needed = 0
    for slot in range(cur[N_SLOTS]):
        needed += s.slot_last[slot] + 1
    if row + needed > s.out_merchant.shape[0]:
        return need(cur, NEED_ROWS, row + needed - s.out_merchant.shape[0])
    for slot in range(cur[N_SLOTS]):
        for k in range(s.slot_last[slot] + 1):
            if s.cells[slot, k, ACTIVE] == 0 and s.cells[slot, k, REVENUE] == 0:
                continue
            s.out_merchant[row] = cur[PREV_MERCHANT]
            s.out_cohort[row] = s.slot_cohort[slot]
            s.out_index[row] = <int32_t>k
            for c in range(N_CELLS):
                s.out_cells[row, c] = s.cells[slot, k, c]
                s.cells[slot, k, c] = 0
            row += 1
        s.slot_of[s.slot_cohort[slot]] = -1
    cur[N_ROWS] = row
    cur[N_SLOTS] = 0
    return OK


cdef inline int cohort_rows(
    CohortArrays s,
    const merchant_key_t[::1] merchant_id,
    const customer_key_t[::1] customer_id,
    const order_ts_t[::1] order_ts,
    const int64_t[::1] amount,
    const Tables tb,
    Py_ssize_t start,
    Py_ssize_t stop,
    Py_ssize_t* row,
    const bint refunds,
) noexcept nogil:
    cdef int64_t[::1] cur = s.cur
    cdef Py_ssize_t i
    cdef int move, status = OK
    cdef int64_t m, cust, t, a
    cdef Window w
    load_window(cur, &tb, &w)
    for i in range(start, stop):
        m = merchant_id[i]
        cust = customer_id[i]
        t = order_ts[i]
        a = amount[i]
        move = advance(cur, &w, m, cust, t, a, tb, refunds)
        if move < 0:
            status = -move
            break
        if move != SAME_RUN:
            status = cohort_close_run(s)
            if status != OK:
                break
            if move == NEXT_MERCHANT and w.started:
                status = cohort_flush_merchant(s)
                if status != OK:
                    break
        add_order(cur, &w, move, m, cust, t, a, refunds)
        if move >= NEXT_CUSTOMER:
            cur[CUST_REVENUE] = 0
        # The store-customer's amounts so far add up to its part of a cumulative_revenue cell,
        # which may overflow although every period's cell fits.
        if (add_overflows(cur[RUN_REVENUE], a, &cur[RUN_REVENUE])
                or add_overflows(cur[CUST_REVENUE], a, &cur[CUST_REVENUE])):
            status = AMOUNT_OVERFLOW
            break
    else:
        i = stop
    store_window(cur, &w)
    row[0] = i
    return status


cdef int cohort_loop(
    CohortArrays s,
    const merchant_key_t[::1] merchant_id,
    const customer_key_t[::1] customer_id,
    const order_ts_t[::1] order_ts,
    const int64_t[::1] amount,
    const Tables tb,
    Py_ssize_t start,
    Py_ssize_t stop,
    Py_ssize_t* row,
) noexcept nogil:
    # Two copies of the loop, the mode a constant in each (branch on modes outside the row loop),
    # in a function of their own: small enough that GCC inlines both (inlined into the large
    # ``cohort_scan`` wrapper they were called out of line, the mode a variable and the tables on
    # the stack: +35% instructions per row).
    if s.cur[REFUNDS]:
        return cohort_rows(s, merchant_id, customer_id, order_ts, amount, tb, start, stop, row, True)
    return cohort_rows(s, merchant_id, customer_id, order_ts, amount, tb, start, stop, row, False)


def cohort_scan(state,
                const merchant_key_t[::1] merchant_id not None,
                const customer_key_t[::1] customer_id not None,
                const order_ts_t[::1] order_ts not None,
                const int64_t[::1] amount not None,
                const int64_t[:, :, ::1] month_table not None,
                const int64_t[:, ::1] month_starts not None,
                const int64_t[::1] zone_merchant not None,
                const int32_t[::1] zone_index not None,
                const int32_t[::1] month_period not None,
                int shift, int64_t ts_max,
                Py_ssize_t start, Py_ssize_t stop):
    """Scan rows ``[start, stop)`` of one batch into a ``CohortState``; return ``(status, row)``.

    ``month_table[z]`` is zone ``z``'s ``periods.period_table("month", ...)``
    (buckets of ``2**shift`` units), ``month_starts[z]`` its
    ``periods.local_month_starts``; ``zone_merchant`` (sorted) and
    ``zone_index`` name the merchants outside zone 0.
    """
    _check_batch(merchant_id.shape[0], customer_id.shape[0], order_ts.shape[0], amount.shape[0],
                 start, stop, month_table, month_starts, zone_merchant, zone_index, month_period, shift, ts_max)
    cdef CohortArrays s = CohortArrays(state)
    if not s.fits(month_period):
        raise ValueError("the state has fewer periods than month_period names")
    cdef Py_ssize_t row = start
    cdef int status
    cdef Tables tb = tables_of(month_table, month_starts, zone_merchant, zone_index, month_period, shift, ts_max)
    with nogil:
        status = cohort_loop(s, merchant_id, customer_id, order_ts, amount, tb, start, stop, &row)
    return status, row


def cohort_end(state, bint flush):
    """Close the open store-customer (and, with ``flush``, the merchant); return a status."""
    cdef CohortArrays s = CohortArrays(state)
    cdef int status = cohort_close_run(s)
    track_last_row_of(s.cur)
    if status == OK and flush and s.cur[STARTED]:
        status = cohort_flush_merchant(s)
    return status


# --- concentration -------------------------------------------------------------

cdef class HistArrays:
    """Typed views of a histogram state's arrays (see ``analyses.HistState``)."""
    cdef int64_t[::1] cur
    cdef bint first_pass              # every run counts, from 0; else only runs inside a target
    cdef int32_t[::1] slot_of         # [period] -> slot of the current merchant, or -1
    cdef int32_t[::1] slot_period
    cdef int64_t[::1] slot_orders     # first pass: the merchant's orders in the period (size, SPEC §6)
    cdef int32_t[:, ::1] slot_bins    # [slot, 2]: lowest and highest bin touched
    cdef int64_t[:, ::1] hist_count   # [slot, bin]
    cdef int64_t[:, ::1] hist_sum
    cdef int64_t[::1] out_merchant    # first pass: one row per (merchant, period)
    cdef int32_t[::1] out_period
    cdef int64_t[::1] out_orders
    cdef int64_t[::1] bin_key         # first pass: the output row; later: the target
    cdef int32_t[::1] bin_index
    cdef int64_t[::1] bin_count
    cdef int64_t[::1] bin_sum
    cdef int64_t[::1] value_target    # collected (target, value) pairs
    cdef int64_t[::1] value
    cdef const int64_t[::1] target_merchant   # sorted by (merchant, period)
    cdef const int32_t[::1] target_period
    cdef const int64_t[::1] target_low        # values in [low, high] (inclusive)
    cdef const int64_t[::1] target_high
    cdef const uint8_t[::1] target_collect    # 1: collect the values, 0: histogram them from low
    cdef int32_t[::1] period_target   # [period] -> target of the current merchant, or -1

    def __init__(self, state):
        self.cur = state.cur
        self.first_pass = state.first_pass
        self.slot_of = state.slot_of
        self.slot_period = state.slot_period
        self.slot_orders = state.slot_orders
        self.slot_bins = state.slot_bins
        self.hist_count = state.hist_count
        self.hist_sum = state.hist_sum
        self.out_merchant = state.out_merchant
        self.out_period = state.out_period
        self.out_orders = state.out_orders
        self.bin_key = state.bin_key
        self.bin_index = state.bin_index
        self.bin_count = state.bin_count
        self.bin_sum = state.bin_sum
        self.value_target = state.value_target
        self.value = state.value
        self.target_merchant = state.target_merchant
        self.target_period = state.target_period
        self.target_low = state.target_low
        self.target_high = state.target_high
        self.target_collect = state.target_collect
        self.period_target = state.period_target
        n_periods, n_slots, n_targets = self.slot_of.shape[0], self.slot_period.shape[0], self.target_merchant.shape[0]
        n_out, n_bins, n_values = self.out_merchant.shape[0], self.bin_key.shape[0], self.value.shape[0]
        if (self.cur.shape[0] != N_CURSOR or self.slot_orders.shape[0] != n_slots
                or tuple(state.slot_bins.shape) != (n_slots, 2)
                or tuple(state.hist_count.shape) != (n_slots, HIST_COLUMNS)
                or tuple(state.hist_sum.shape) != (n_slots, HIST_COLUMNS)
                or self.out_period.shape[0] != n_out or self.out_orders.shape[0] != n_out
                or self.bin_index.shape[0] != n_bins or self.bin_count.shape[0] != n_bins
                or self.bin_sum.shape[0] != n_bins or self.value_target.shape[0] != n_values
                or self.target_period.shape[0] != n_targets or self.target_low.shape[0] != n_targets
                or self.target_high.shape[0] != n_targets or self.target_collect.shape[0] != n_targets
                or self.period_target.shape[0] != n_periods
                or (n_targets and not (0 <= np.min(state.target_period) and np.max(state.target_period) < n_periods))
                or not 0 <= self.cur[N_SLOTS] <= n_slots or not 0 <= self.cur[N_ROWS] <= n_out
                or not 0 <= self.cur[N_BIN_ROWS] <= n_bins or not 0 <= self.cur[N_VALUES] <= n_values):
            raise ValueError("inconsistent histogram state arrays")

    cdef bint fits(self, const int32_t[::1] month_period):
        return month_period.shape[0] and month_period[month_period.shape[0] - 1] < self.slot_of.shape[0]


cdef int hist_close_run(HistArrays s) noexcept nogil:
    """Count the open run's revenue in its period's histogram (or collect it); idempotent."""
    cdef int64_t[::1] cur = s.cur
    cdef int64_t n = cur[RUN_ORDERS]
    if n == 0 and cur[RUN_REVENUE] == 0:    # nothing open (a refund-only run's sum is < 0)
        return OK
    cdef int32_t p = <int32_t>cur[RUN_PERIOD]
    cdef int64_t v = cur[RUN_REVENUE], low = 0, total
    cdef int32_t target = -1, slot, b
    cdef Py_ssize_t k
    if n == 0 and not s.first_pass:         # refunds only: no customer to rank
        cur[RUN_REVENUE] = 0
        return OK
    if not s.first_pass:
        target = s.period_target[p]
        if target < 0 or v < s.target_low[target] or v > s.target_high[target]:
            cur[RUN_ORDERS] = 0
            cur[RUN_REVENUE] = 0
            return OK
        low = s.target_low[target]
        if s.target_collect[target]:
            k = cur[N_VALUES]
            if k == s.value.shape[0]:
                return need(cur, NEED_VALUES, 1)
            s.value_target[k] = target
            s.value[k] = v
            cur[N_VALUES] = k + 1
            cur[RUN_ORDERS] = 0
            cur[RUN_REVENUE] = 0
            return OK
    slot = s.slot_of[p]
    if slot < 0:
        if cur[N_SLOTS] == s.slot_period.shape[0]:
            return need(cur, NEED_SLOTS, 1)
        slot = <int32_t>cur[N_SLOTS]
        cur[N_SLOTS] += 1
        s.slot_of[p] = slot
        s.slot_period[slot] = p
        s.slot_orders[slot] = 0
        s.slot_bins[slot, 0] = INT32_MAX
        s.slot_bins[slot, 1] = -1
    if n == 0:
        b = REFUND_COLUMN
    elif v < low:                           # first pass (low = 0): a customer's refunds exceed its orders
        b = NEGATIVE_COLUMN
    else:
        b = bin_of(<uint64_t>v - <uint64_t>low)
    if add_overflows(s.hist_sum[slot, b], v, &total):
        return TOTAL_OVERFLOW
    s.hist_sum[slot, b] = total
    s.hist_count[slot, b] += n != 0
    s.slot_orders[slot] += n
    if b < NEGATIVE_COLUMN:
        if b < s.slot_bins[slot, 0]:
            s.slot_bins[slot, 0] = b
        if b > s.slot_bins[slot, 1]:
            s.slot_bins[slot, 1] = b
    cur[RUN_ORDERS] = 0
    cur[RUN_REVENUE] = 0
    return OK


cdef int hist_flush_merchant(HistArrays s) noexcept nogil:
    """Move the current merchant's non-empty bins to the output and forget its targets."""
    cdef int64_t[::1] cur = s.cur
    cdef Py_ssize_t slot, b, row = cur[N_ROWS], binrow = cur[N_BIN_ROWS], needed = 0
    cdef int32_t p
    cdef int64_t key
    for slot in range(cur[N_SLOTS]):
        needed += s.slot_bins[slot, 1] - s.slot_bins[slot, 0] + 1 + 2   # + the two refund columns
    if s.first_pass and row + cur[N_SLOTS] > s.out_merchant.shape[0]:
        return need(cur, NEED_ROWS, cur[N_SLOTS])
    if binrow + needed > s.bin_key.shape[0]:
        return need(cur, NEED_ROWS, needed)
    for slot in range(cur[N_SLOTS]):
        p = s.slot_period[slot]
        if s.first_pass:
            s.out_merchant[row] = cur[PREV_MERCHANT]
            s.out_period[row] = p
            s.out_orders[row] = s.slot_orders[slot]
            key = row
            row += 1
        else:
            key = s.period_target[p]
        for b in range(s.slot_bins[slot, 0], s.slot_bins[slot, 1] + 1):
            if s.hist_count[slot, b] == 0:
                continue
            s.bin_key[binrow] = key
            s.bin_index[binrow] = <int32_t>b
            s.bin_count[binrow] = s.hist_count[slot, b]
            s.bin_sum[binrow] = s.hist_sum[slot, b]
            s.hist_count[slot, b] = 0
            s.hist_sum[slot, b] = 0
            binrow += 1
        for b in range(NEGATIVE_COLUMN, HIST_COLUMNS):
            if s.hist_count[slot, b] == 0 and s.hist_sum[slot, b] == 0:
                continue
            s.bin_key[binrow] = key
            s.bin_index[binrow] = NEGATIVE_INDEX if b == NEGATIVE_COLUMN else REFUND_INDEX
            s.bin_count[binrow] = s.hist_count[slot, b]
            s.bin_sum[binrow] = s.hist_sum[slot, b]
            s.hist_count[slot, b] = 0
            s.hist_sum[slot, b] = 0
            binrow += 1
        s.slot_of[p] = -1
    cur[N_ROWS] = row
    cur[N_BIN_ROWS] = binrow
    cur[N_SLOTS] = 0
    for b in range(cur[TARGET_LO], cur[TARGET_HI]):
        s.period_target[s.target_period[b]] = -1
    cur[TARGET_LO] = 0
    cur[TARGET_HI] = 0
    return OK


cdef void hist_open_merchant(HistArrays s, int64_t m) noexcept nogil:
    """Later passes: point the merchant's periods at its targets (sorted by merchant, then period)."""
    cdef int64_t[::1] cur = s.cur
    cdef Py_ssize_t lo = 0, hi = s.target_merchant.shape[0], mid, j
    while lo < hi:                        # first target of a merchant >= m
        mid = (lo + hi) // 2
        if s.target_merchant[mid] < m:
            lo = mid + 1
        else:
            hi = mid
    j = lo
    while j < s.target_merchant.shape[0] and s.target_merchant[j] == m:
        s.period_target[s.target_period[j]] = <int32_t>j
        j += 1
    cur[TARGET_LO] = lo
    cur[TARGET_HI] = j


cdef inline int hist_rows(
    HistArrays s,
    const merchant_key_t[::1] merchant_id,
    const customer_key_t[::1] customer_id,
    const order_ts_t[::1] order_ts,
    const int64_t[::1] amount,
    const Tables tb,
    Py_ssize_t start,
    Py_ssize_t stop,
    Py_ssize_t* row,
    const bint refunds,
) noexcept nogil:
    cdef int64_t[::1] cur = s.cur
    cdef Py_ssize_t i
    cdef int move, status = OK
    cdef int64_t m, cust, t, a
    cdef Window w
    load_window(cur, &tb, &w)
    for i in range(start, stop):
        m = merchant_id[i]
        cust = customer_id[i]
        t = order_ts[i]
        a = amount[i]
        move = advance(cur, &w, m, cust, t, a, tb, refunds)
        if move < 0:
            status = -move
            break
        if move != SAME_RUN:
            status = hist_close_run(s)
            if status != OK:
                break
            if move == NEXT_MERCHANT:
                if w.started:
                    status = hist_flush_merchant(s)
                    if status != OK:
                        break
                if not s.first_pass:
                    hist_open_merchant(s, m)
        add_order(cur, &w, move, m, cust, t, a, refunds)
        if add_overflows(cur[RUN_REVENUE], a, &cur[RUN_REVENUE]):
            status = AMOUNT_OVERFLOW
            break
    else:
        i = stop
    store_window(cur, &w)
    row[0] = i
    return status


cdef int hist_loop(
    HistArrays s,
    const merchant_key_t[::1] merchant_id,
    const customer_key_t[::1] customer_id,
    const order_ts_t[::1] order_ts,
    const int64_t[::1] amount,
    const Tables tb,
    Py_ssize_t start,
    Py_ssize_t stop,
    Py_ssize_t* row,
) noexcept nogil:
    # Two copies of the loop, the mode a constant in each (branch on modes outside the row loop),
    # in a function of their own: small enough that GCC inlines both (inlined into the large
    # ``hist_scan`` wrapper they were called out of line, the mode a variable and the tables on
    # the stack: +35% instructions per row).
    if s.cur[REFUNDS]:
        return hist_rows(s, merchant_id, customer_id, order_ts, amount, tb, start, stop, row, True)
    return hist_rows(s, merchant_id, customer_id, order_ts, amount, tb, start, stop, row, False)


def hist_scan(state,
              const merchant_key_t[::1] merchant_id not None,
              const customer_key_t[::1] customer_id not None,
              const order_ts_t[::1] order_ts not None,
              const int64_t[::1] amount not None,
              const int64_t[:, :, ::1] month_table not None,
              const int64_t[:, ::1] month_starts not None,
              const int64_t[::1] zone_merchant not None,
              const int32_t[::1] zone_index not None,
              const int32_t[::1] month_period not None,
              int shift, int64_t ts_max,
              Py_ssize_t start, Py_ssize_t stop):
    """Scan rows ``[start, stop)`` of one batch into a ``HistState``; return ``(status, row)``.

    ``month_table[z]`` is zone ``z``'s ``periods.period_table("month", ...)``
    (buckets of ``2**shift`` units), ``month_starts[z]`` its
    ``periods.local_month_starts``; ``zone_merchant`` (sorted) and
    ``zone_index`` name the merchants outside zone 0.
    """
    _check_batch(merchant_id.shape[0], customer_id.shape[0], order_ts.shape[0], amount.shape[0],
                 start, stop, month_table, month_starts, zone_merchant, zone_index, month_period, shift, ts_max)
    cdef HistArrays s = HistArrays(state)
    if not s.fits(month_period):
        raise ValueError("the state has fewer periods than month_period names")
    cdef Py_ssize_t row = start
    cdef int status
    cdef Tables tb = tables_of(month_table, month_starts, zone_merchant, zone_index, month_period, shift, ts_max)
    with nogil:
        status = hist_loop(s, merchant_id, customer_id, order_ts, amount, tb, start, stop, &row)
    return status, row


def hist_end(state, bint flush):
    """Close the open store-customer (and, with ``flush``, the merchant); return a status."""
    cdef HistArrays s = HistArrays(state)
    cdef int status = hist_close_run(s)
    track_last_row_of(s.cur)
    if status == OK and flush and s.cur[STARTED]:
        status = hist_flush_merchant(s)
    return status


def _check_batch(Py_ssize_t n, Py_ssize_t n_customer, Py_ssize_t n_ts, Py_ssize_t n_amount,
                 Py_ssize_t start, Py_ssize_t stop, month_table, month_starts, zone_merchant, zone_index,
                 month_period, int shift, int64_t ts_max):
    """The row loops index these unchecked: check them once per call (``check_zone_tables``)."""
    if n_customer != n or n_ts != n or n_amount != n:
        raise ValueError("columns of one batch must have the same length")
    if not 0 <= start <= stop <= n:
        raise ValueError("start/stop out of range")
    check_zone_tables(month_table, month_starts, zone_merchant, zone_index, month_period, shift, ts_max)


def check_zone_tables(month_table, month_starts, zone_merchant, zone_index, month_period, shift, ts_max):
    """ValueError unless every index the row loop makes into these tables is in range.

    Buckets up to ``ts_max >> shift`` in every zone; months from the tables
    within ``month_period`` and ``month_starts`` (with the month after);
    zone indexes within the tables. Shared by both engines.
    """
    month_table = np.asarray(month_table)
    month_starts = np.asarray(month_starts)
    zone_index = np.asarray(zone_index)
    zones = month_table.shape[0]
    if (month_table.ndim != 3 or month_table.shape[2] != 2 or month_starts.ndim != 2
            or month_starts.shape[0] != zones or zones == 0 or not 0 <= shift < 63 or ts_max < 0
            or (ts_max >> shift) >= month_table.shape[1]
            or np.asarray(zone_merchant).shape != zone_index.shape
            or (len(zone_index) and not (0 <= zone_index.min() and zone_index.max() < zones))):
        raise ValueError("inconsistent zone tables")
    months = month_table[:, : (ts_max >> shift) + 1]
    if (months[:, :, 0].min() < 0 or (months[:, :, 0] + 1).max() >= min(month_period.shape[0], month_starts.shape[1] - 1)):
        raise ValueError("the month tables name months outside month_period and month_starts")
