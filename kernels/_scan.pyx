# cython: freethreading_compatible = True
"""One pass over order rows sorted by (merchant_id, customer_id, order_ts).

The kernel emits int64 partial sums per (merchant, period) — the columns of
``PARTIAL_COLUMNS`` — and nothing else: ratios, buckets, grouping and YoY are
finalize code (SPEC §5-7). It knows nothing about files, chunks or threads.

State lives in a ``ScanState`` and carries across calls, so a store-customer
split over two record batches is one store-customer. A call stops early and
says why (``NEED_SPACE`` when the caller-owned output is full, or an input
error at a row); it is resumable at the row it names.
"""
import numpy as np

from libc.stdint cimport INT32_MAX, INT64_MIN, int32_t, int64_t, uint8_t
from _types cimport customer_key_t, merchant_key_t, order_ts_t

cdef extern from *:
    """
    #include <stdint.h>
    static inline int lm_add_overflows(int64_t a, int64_t b, int64_t *out) {
        return __builtin_add_overflow(a, b, out);
    }
    """
    bint lm_add_overflows(int64_t a, int64_t b, int64_t *out) noexcept nogil

# Partial columns, SPEC §4 (returning_customers, repeat_orders, merchants and
# fees are derived from these in finalize).
cdef enum:
    ORDERS
    REVENUE
    CUSTOMERS
    NEW_CUSTOMERS
    REPEAT_CUSTOMERS
    ORDERS_FROM_REPEAT_CUSTOMERS
    RETAINED_CUSTOMERS
    REWARD_ORDERS
    REWARD_REVENUE
    REWARD_CUSTOMERS
    MEMBER_ORDERS
    MEMBER_REVENUE
    MEMBER_REPEAT_CUSTOMERS
    N_COUNTS

PARTIAL_COLUMNS = (
    "orders", "revenue", "customers", "new_customers", "repeat_customers",
    "orders_from_repeat_customers", "retained_customers", "reward_orders",
    "reward_revenue", "reward_customers", "member_orders", "member_revenue",
    "member_repeat_customers",
)
assert len(PARTIAL_COLUMNS) == N_COUNTS

# Why a scan call returned.
cpdef enum Status:
    OK = 0
    NEED_SPACE = 1          # output full: grow it and call again from `row`
    UNSORTED = 2            # row is before the previous row in key order
    NEGATIVE_AMOUNT = 3
    TIMESTAMP_RANGE = 4     # order_ts before 1970-01-01 or after 2262
    AMOUNT_OVERFLOW = 5     # row's amount makes its store-customer's revenue overflow int64
    TOTAL_OVERFLOW = 6      # the previous row's store-customer makes a merchant total overflow

cdef enum:
    NO_PERIOD = -2          # never equals period - 1 for a period >= 0


cdef struct Cursor:
    bint started
    int64_t prev_merchant
    int64_t prev_customer
    int64_t prev_ts
    # The open run: one store-customer's consecutive orders in one period.
    int32_t run_period
    int32_t prev_run_period     # the store-customer's previous run, or NO_PERIOD
    bint run_is_first           # the run holds the store-customer's rank-1 order
    int64_t run_orders
    int64_t run_revenue
    int64_t run_reward_orders
    int64_t run_reward_revenue
    # order_ts -> month cache: [month_lo, month_hi) in timestamp units.
    int64_t month_lo
    int64_t month_hi
    int32_t month
    int32_t period
    int32_t first_month         # earliest / latest month seen in the input
    int32_t last_month
    # Periods the current merchant has touched in `acc`.
    int32_t acc_lo
    int32_t acc_hi


cdef class ScanState:
    """Everything a scan carries between calls, and the partials it emitted.

    ``day_month[d]`` is the month index (months since 1970-01) of day ``d``
    since 1970-01-01; ``month_period[m]`` the period index of month ``m``;
    ``n_periods`` bounds the period index.
    """
    cdef Cursor cur
    cdef int64_t min_amount
    cdef const int32_t[::1] day_month
    cdef const int32_t[::1] month_period
    cdef int64_t[:, ::1] acc            # [period, count] for the current merchant
    cdef Py_ssize_t out_rows
    cdef object _out_merchant, _out_period, _out_counts
    cdef int64_t[::1] out_merchant
    cdef int32_t[::1] out_period
    cdef int64_t[:, ::1] out_counts

    def __init__(self, const int32_t[::1] day_month not None,
                 const int32_t[::1] month_period not None,
                 Py_ssize_t n_periods, bint allow_negative=False,
                 Py_ssize_t capacity=1024):
        if len(month_period) and not (0 <= np.min(month_period) and np.max(month_period) < n_periods):
            raise ValueError("month_period indexes outside [0, n_periods)")
        if len(day_month) and not (0 <= np.min(day_month) and np.max(day_month) < len(month_period)):
            raise ValueError("day_month indexes outside month_period")
        self.day_month = day_month
        self.month_period = month_period
        self.acc = np.zeros((n_periods, N_COUNTS), dtype=np.int64)
        self.min_amount = INT64_MIN if allow_negative else 0
        self.cur.started = False
        self.cur.month_lo = 0
        self.cur.month_hi = 0      # empty: the first row always misses
        self.cur.first_month = INT32_MAX
        self.cur.last_month = -1
        self.cur.acc_lo = INT32_MAX
        self.cur.acc_hi = -1
        self.cur.run_orders = 0
        self.out_rows = 0
        self._allocate(max(capacity, 1))

    def _allocate(self, Py_ssize_t capacity):
        merchant = np.empty(capacity, dtype=np.int64)
        period = np.empty(capacity, dtype=np.int32)
        counts = np.empty((capacity, N_COUNTS), dtype=np.int64)
        if self.out_rows:
            merchant[:self.out_rows] = self._out_merchant[:self.out_rows]
            period[:self.out_rows] = self._out_period[:self.out_rows]
            counts[:self.out_rows] = self._out_counts[:self.out_rows]
        self._out_merchant, self._out_period, self._out_counts = merchant, period, counts
        self.out_merchant, self.out_period, self.out_counts = merchant, period, counts

    def grow(self):
        """Double the output capacity (after a scan returned NEED_SPACE)."""
        self._allocate(2 * self.out_merchant.shape[0])

    @property
    def last_row_keys(self):
        """(merchant_id, customer_id, order_ts) of the last row scanned, or None."""
        if not self.cur.started:
            return None
        return (self.cur.prev_merchant, self.cur.prev_customer, self.cur.prev_ts)

    @property
    def month_range(self):
        """(first, last) month index of the orders scanned, or None if none."""
        if self.cur.last_month < 0:
            return None
        return (self.cur.first_month, self.cur.last_month)

    def finish(self):
        """Close the last run and merchant; return the partials.

        Returns ``(merchant_id int64[n], period int32[n], counts int64[n, k])``
        with one row per (merchant, period) that has orders, in scan order.
        Raises OverflowError if closing the last run overflows a total.
        """
        if not close_run(self, &self.cur):
            raise OverflowError("the last store-customer makes a merchant's revenue total overflow int64")
        while self.out_rows + self.cur.acc_hi - self.cur.acc_lo + 1 > self.out_merchant.shape[0]:
            self.grow()
        if self.cur.started:
            flush_merchant(self, &self.cur)
        n = self.out_rows
        return (self._out_merchant[:n].copy(), self._out_period[:n].copy(),
                self._out_counts[:n].copy())


cdef inline bint close_run(ScanState st, Cursor* c) noexcept nogil:
    """Add the open run to the merchant accumulator; False on overflow.

    Idempotent: a closed run has no orders, so a call resumed after
    NEED_SPACE does not count it twice.
    """
    cdef int64_t n = c.run_orders
    if n == 0:
        return True
    cdef int32_t p = c.run_period
    cdef int64_t* acc = &st.acc[p, 0]
    acc[ORDERS] += n
    if lm_add_overflows(acc[REVENUE], c.run_revenue, &acc[REVENUE]):
        return False
    acc[CUSTOMERS] += 1
    acc[NEW_CUSTOMERS] += c.run_is_first
    if n >= 2:
        acc[REPEAT_CUSTOMERS] += 1
        acc[ORDERS_FROM_REPEAT_CUSTOMERS] += n
    acc[RETAINED_CUSTOMERS] += c.prev_run_period == p - 1
    if c.run_reward_orders:
        acc[REWARD_ORDERS] += c.run_reward_orders
        acc[REWARD_CUSTOMERS] += 1
        acc[MEMBER_ORDERS] += n
        acc[MEMBER_REPEAT_CUSTOMERS] += n >= 2
        if (lm_add_overflows(acc[REWARD_REVENUE], c.run_reward_revenue, &acc[REWARD_REVENUE])
                or lm_add_overflows(acc[MEMBER_REVENUE], c.run_revenue, &acc[MEMBER_REVENUE])):
            return False
    if p < c.acc_lo:
        c.acc_lo = p
    if p > c.acc_hi:
        c.acc_hi = p
    c.run_orders = 0
    c.run_revenue = 0
    c.run_reward_orders = 0
    c.run_reward_revenue = 0
    return True


cdef inline void open_store_customer(Cursor* c) noexcept nogil:
    """The row at hand is a store-customer's first: open its first run."""
    c.prev_run_period = NO_PERIOD
    c.run_is_first = True
    c.run_period = c.period


cdef inline void flush_merchant(ScanState st, Cursor* c) noexcept nogil:
    """Move the current merchant's touched periods to the output (capacity checked by caller)."""
    cdef int32_t p
    cdef Py_ssize_t k, row
    for p in range(c.acc_lo, c.acc_hi + 1):
        if st.acc[p, ORDERS] == 0:
            continue
        row = st.out_rows
        st.out_merchant[row] = c.prev_merchant
        st.out_period[row] = p
        for k in range(N_COUNTS):
            st.out_counts[row, k] = st.acc[p, k]
            st.acc[p, k] = 0
        st.out_rows = row + 1
    c.acc_lo = INT32_MAX
    c.acc_hi = -1


cdef Status scan_rows(
    ScanState st,
    const merchant_key_t[::1] merchant_id,
    const customer_key_t[::1] customer_id,
    const order_ts_t[::1] order_ts,
    const int64_t[::1] amount,
    const uint8_t[::1] reward_bits,
    Py_ssize_t reward_offset,
    const int64_t[::1] month_start,
    int64_t units_per_day,
    int64_t ts_max,
    Py_ssize_t start,
    Py_ssize_t* stop,
) noexcept nogil:
    cdef Cursor c = st.cur          # a local copy the compiler can keep in registers
    cdef Py_ssize_t i, n = merchant_id.shape[0]
    cdef Py_ssize_t capacity = st.out_merchant.shape[0]
    cdef int64_t m, cust, t, a, min_amount = st.min_amount
    cdef Py_ssize_t bit
    cdef Status status = OK
    for i in range(start, n):
        m = merchant_id[i]
        cust = customer_id[i]
        t = order_ts[i]
        a = amount[i]
        if a < min_amount:
            status = NEGATIVE_AMOUNT
            break
        if t < c.month_lo or t >= c.month_hi:
            if t < 0 or t > ts_max:
                status = TIMESTAMP_RANGE
                break
            c.month = st.day_month[t // units_per_day]
            c.month_lo = month_start[c.month]
            c.month_hi = month_start[c.month + 1]
            c.period = st.month_period[c.month]
            if c.month < c.first_month:
                c.first_month = c.month
            if c.month > c.last_month:
                c.last_month = c.month
        if c.started and m == c.prev_merchant:
            if cust == c.prev_customer:
                if t < c.prev_ts:
                    status = UNSORTED
                    break
                if c.period != c.run_period:     # same store-customer, next period
                    if not close_run(st, &c):
                        status = TOTAL_OVERFLOW
                        break
                    c.prev_run_period = c.run_period
                    c.run_is_first = False
                    c.run_period = c.period
            elif cust > c.prev_customer:       # next store-customer
                if not close_run(st, &c):
                    status = TOTAL_OVERFLOW
                    break
                open_store_customer(&c)
            else:
                status = UNSORTED
                break
        elif not c.started or m > c.prev_merchant:   # next merchant
            if not close_run(st, &c):
                status = TOTAL_OVERFLOW
                break
            if c.started:
                if st.out_rows + (c.acc_hi - c.acc_lo + 1) > capacity:
                    status = NEED_SPACE
                    break
                flush_merchant(st, &c)
            c.started = True
            open_store_customer(&c)
        else:
            status = UNSORTED
            break
        c.run_orders += 1
        if lm_add_overflows(c.run_revenue, a, &c.run_revenue):
            status = AMOUNT_OVERFLOW
            break
        bit = reward_offset + i
        if (reward_bits[bit >> 3] >> (bit & 7)) & 1:
            c.run_reward_orders += 1
            if lm_add_overflows(c.run_reward_revenue, a, &c.run_reward_revenue):
                status = AMOUNT_OVERFLOW
                break
        c.prev_merchant = m
        c.prev_customer = cust
        c.prev_ts = t
    else:
        i = n
    stop[0] = i
    st.cur = c
    return status


def scan(ScanState state not None,
         const merchant_key_t[::1] merchant_id not None,
         const customer_key_t[::1] customer_id not None,
         const order_ts_t[::1] order_ts not None,
         const int64_t[::1] amount not None,
         const uint8_t[::1] reward_bits not None,
         Py_ssize_t reward_offset,
         const int64_t[::1] month_start not None,
         int64_t units_per_day,
         int64_t ts_max,
         Py_ssize_t start=0):
    """Scan rows ``start:`` of one record batch; return ``(status, row)``.

    ``reward_bits`` is an Arrow-style LSB bitmap (bit ``reward_offset + i``
    is row ``i``'s reward flag, nulls already cleared). ``month_start[m]`` is
    the first timestamp of month ``m`` in the column's units and
    ``units_per_day`` the units in a day; ``ts_max`` the last valid
    timestamp. ``row`` is where the scan stopped: ``len`` on OK, else the row
    to report or to resume from.
    """
    cdef Py_ssize_t n = merchant_id.shape[0]
    if customer_id.shape[0] != n or order_ts.shape[0] != n or amount.shape[0] != n:
        raise ValueError("columns of one batch must have the same length")
    if (reward_offset + n + 7) // 8 > reward_bits.shape[0]:
        raise ValueError("reward bitmap is shorter than the batch")
    if start < 0 or start > n:
        raise ValueError("start out of range")
    # The row loop indexes these tables unchecked: check them once here.
    if units_per_day <= 0 or ts_max < 0 or ts_max // units_per_day >= state.day_month.shape[0]:
        raise ValueError("ts_max is outside the day table")
    if month_start.shape[0] < state.month_period.shape[0] + 1:
        raise ValueError("month_start needs one entry per month plus one")
    cdef Py_ssize_t stop = start
    cdef Status status
    with nogil:
        status = scan_rows(state, merchant_id, customer_id, order_ts, amount,
                           reward_bits, reward_offset, month_start,
                           units_per_day, ts_max, start, &stop)
    return status, stop
