# cython: freethreading_compatible = True
"""RFM summary (SPEC §9 ``rfm``) in one pass over rows sorted by (merchant_id, customer_id, order_ts).

With a calibration end (lifetimes' ``calibration_and_holdout_data``), the
window above is the orders up to that instant, and the store-customers it
opens also count their later orders up to the holdout end: distinct
periods, orders and the sum of their amounts.

For each store-customer the kernel counts the distinct ``freq`` periods of
its orders up to the observation period, notes the first and last of them,
and sums the amounts of the periods that ``monetary_value`` averages over
(the repeat periods, or every period with ``include_first``). It emits
those int64 partials, one output row per store-customer once the next one
starts; frequency, recency, T and the mean are derived from them in
finalize (``loyaltymetrics.rfm_summary``), which is where floats appear.

State lives in an ``RfmState`` and carries across calls, so a store-customer
split over record batches is one store-customer. A call stops early and
says why (``NEED_SPACE`` when the caller-owned output is full, or an input
error at a row); it is resumable at the row it names. The twin in
``loyaltymetrics.numba_rfm`` runs the same algorithm.
"""
import numpy as np

from libc.stdint cimport INT64_MAX, INT64_MIN, int32_t, int64_t
from _types cimport customer_key_t, merchant_key_t, order_ts_t

cdef extern from *:
    """
    #include <stdint.h>
    static inline int lm_rfm_add_overflows(int64_t a, int64_t b, int64_t *out) {
        return __builtin_add_overflow(a, b, out);
    }
    """
    bint lm_rfm_add_overflows(int64_t a, int64_t b, int64_t *out) noexcept nogil

# Output columns (int64), one entry per store-customer: out[column, row], so
# that each column is contiguous for finalize.
cdef enum:
    MERCHANT_ID
    CUSTOMER_ID
    PERIODS             # distinct freq periods with orders, up to the observation period
    FIRST_PERIOD        # period index of the first / last of them
    LAST_PERIOD
    VALUE               # sum of amounts over the periods monetary_value averages
    HOLDOUT_PERIODS     # with a calibration end: distinct periods of the holdout orders,
    HOLDOUT_ORDERS      # the holdout orders (rows) and
    HOLDOUT_VALUE       # the sum of their amounts
    N_OUT

OUTPUT_COLUMNS = ("merchant_id", "customer_id", "periods", "first_period", "last_period", "value",
                  "holdout_periods", "holdout_orders", "holdout_value")
assert len(OUTPUT_COLUMNS) == N_OUT

# Why a scan call returned (the numba twin uses the same values).
cpdef enum Status:
    OK = 0
    NEED_SPACE = 1          # output full: take the output and call again from `row`
    UNSORTED = 2            # row is before the previous row in key order
    NEGATIVE_AMOUNT = 3
    TIMESTAMP_RANGE = 4     # order_ts before 1970-01-01 or after 2262
    AMOUNT_OVERFLOW = 5     # row's amount makes its store-customer's sum overflow int64


cdef struct Cursor:
    bint started                # a row has been scanned
    int64_t prev_merchant
    int64_t prev_customer
    int64_t prev_ts
    # order_ts -> period cache: [period_lo, period_hi) in timestamp units.
    int64_t period_lo
    int64_t period_hi
    int64_t period
    # The open store-customer (it has orders up to the observation period).
    bint open
    int64_t open_merchant
    int64_t open_customer
    int64_t periods
    int64_t first_period
    int64_t last_period
    bint counted                # the current period's amounts go into value
    int64_t value
    # Its orders after the calibration end, up to the holdout end (calibration/holdout mode).
    int64_t holdout_periods
    int64_t holdout_last_period
    int64_t holdout_orders
    int64_t holdout_value


cdef class RfmState:
    """Everything a scan carries between calls, and the rows it emitted.

    ``day_period[d]`` is the period index of day ``d`` since 1970-01-01;
    orders in periods after ``observation_period`` are left out (but still
    checked). ``include_first`` counts the first period in ``value``.
    """
    cdef Cursor cur
    cdef int64_t min_amount
    cdef int64_t observation_period
    cdef bint include_first
    cdef const int64_t[::1] day_period
    cdef Py_ssize_t n_periods
    cdef Py_ssize_t out_rows
    cdef object _out
    cdef int64_t[:, ::1] out

    def __init__(self, const int64_t[::1] day_period not None, Py_ssize_t n_periods,
                 int64_t observation_period, bint include_first=False,
                 bint allow_negative=False, Py_ssize_t capacity=65536):
        if len(day_period) and not (0 <= np.min(day_period) and np.max(day_period) < n_periods):
            raise ValueError("day_period indexes outside [0, n_periods)")
        self.day_period = day_period
        self.n_periods = n_periods
        self.observation_period = observation_period
        self.include_first = include_first
        self.min_amount = INT64_MIN if allow_negative else 0
        self.cur.started = False
        self.cur.open = False
        self.cur.period_lo = 0
        self.cur.period_hi = 0      # empty: the first row always misses
        self.out_rows = 0
        self._out = np.empty((N_OUT, max(capacity, 1)), dtype=np.int64)
        self.out = self._out

    @property
    def last_row_keys(self):
        """(merchant_id, customer_id, order_ts) of the last row scanned, or None."""
        if not self.cur.started:
            return None
        return (self.cur.prev_merchant, self.cur.prev_customer, self.cur.prev_ts)

    def take_output(self):
        """The rows emitted since the last take, int64[N_OUT, rows], leaving the output empty.

        A full output array is handed over as it is (finalize uses its
        columns as the Arrow buffers) and the kernel writes on in a new one;
        a mostly empty one is copied, so that small batches hold no large
        buffers.
        """
        rows = self._out[:, :self.out_rows]
        if 2 * self.out_rows < self.out.shape[1]:
            rows = rows.copy()
        else:
            self._out = np.empty_like(self._out)
            self.out = self._out
        self.out_rows = 0
        return rows

    def close(self):
        """Emit the open store-customer, if any: the rows so far end at a store-customer boundary.

        Returns ``NEED_SPACE`` (take the output, call again) or ``OK``.
        """
        if self.cur.open:
            if self.out_rows == self.out.shape[1]:
                return Status.NEED_SPACE
            emit(self, &self.cur)
        return Status.OK


cdef inline void emit(RfmState st, Cursor* c) noexcept nogil:
    """Write the open store-customer to the output (capacity checked by caller) and close it."""
    cdef Py_ssize_t row = st.out_rows
    st.out[MERCHANT_ID, row] = c.open_merchant
    st.out[CUSTOMER_ID, row] = c.open_customer
    st.out[PERIODS, row] = c.periods
    st.out[FIRST_PERIOD, row] = c.first_period
    st.out[LAST_PERIOD, row] = c.last_period
    st.out[VALUE, row] = c.value
    st.out[HOLDOUT_PERIODS, row] = c.holdout_periods
    st.out[HOLDOUT_ORDERS, row] = c.holdout_orders
    st.out[HOLDOUT_VALUE, row] = c.holdout_value
    st.out_rows = row + 1
    c.open = False


cdef Status scan_rows(
    RfmState st,
    const merchant_key_t[::1] merchant_id,
    const customer_key_t[::1] customer_id,
    const order_ts_t[::1] order_ts,
    const int64_t[::1] amount,
    const int64_t[::1] period_start,
    int64_t units_per_day,
    int64_t ts_max,
    int64_t calibration_ts,
    int64_t holdout_end_ts,
    Py_ssize_t start,
    Py_ssize_t stop,
    Py_ssize_t* stopped,
) noexcept nogil:
    cdef Cursor c = st.cur          # a local copy the compiler can keep in registers
    cdef Py_ssize_t i
    cdef Py_ssize_t capacity = st.out.shape[1]
    cdef int64_t m, cust, t, a, min_amount = st.min_amount
    cdef int64_t observation_period = st.observation_period
    cdef bint include_first = st.include_first
    cdef bint same
    cdef Status status = OK
    for i in range(start, stop):
        m = merchant_id[i]
        cust = customer_id[i]
        t = order_ts[i]
        a = amount[i]
        if a < min_amount:
            status = NEGATIVE_AMOUNT
            break
        if t < c.period_lo or t >= c.period_hi:
            if t < 0 or t > ts_max:
                status = TIMESTAMP_RANGE
                break
            c.period = st.day_period[t // units_per_day]
            c.period_lo = period_start[c.period]
            c.period_hi = period_start[c.period + 1]
        same = False
        if c.started:
            if m == c.prev_merchant:
                if cust == c.prev_customer:
                    if t < c.prev_ts:
                        status = UNSORTED
                        break
                    same = True
                elif cust < c.prev_customer:
                    status = UNSORTED
                    break
            elif m < c.prev_merchant:
                status = UNSORTED
                break
        if not same and c.open:         # the previous store-customer is complete
            if st.out_rows == capacity:
                status = NEED_SPACE     # nothing of row i is consumed yet: resume here
                break
            emit(st, &c)
        if c.period <= observation_period and t <= calibration_ts:
            if not c.open:              # the store-customer's first order in the window
                c.open = True
                c.open_merchant = m
                c.open_customer = cust
                c.periods = 1
                c.first_period = c.period
                c.last_period = c.period
                c.counted = include_first
                c.value = 0
                c.holdout_periods = 0
                c.holdout_last_period = -1
                c.holdout_orders = 0
                c.holdout_value = 0
            elif c.period != c.last_period:     # its next period (sorted: a later one)
                c.periods += 1
                c.last_period = c.period
                c.counted = True
            if c.counted and lm_rfm_add_overflows(c.value, a, &c.value):
                status = AMOUNT_OVERFLOW
                break
        elif c.open and calibration_ts < t <= holdout_end_ts:    # a holdout order of a calibration customer
            if c.period != c.holdout_last_period:               # sorted: a later period
                c.holdout_periods += 1
                c.holdout_last_period = c.period
            c.holdout_orders += 1
            if lm_rfm_add_overflows(c.holdout_value, a, &c.holdout_value):
                status = AMOUNT_OVERFLOW
                break
        c.started = True
        c.prev_merchant = m
        c.prev_customer = cust
        c.prev_ts = t
    else:
        i = stop
    stopped[0] = i
    st.cur = c
    return status


def scan(RfmState state not None,
         const merchant_key_t[::1] merchant_id not None,
         const customer_key_t[::1] customer_id not None,
         const order_ts_t[::1] order_ts not None,
         const int64_t[::1] amount not None,
         const int64_t[::1] period_start not None,
         int64_t units_per_day,
         int64_t ts_max,
         Py_ssize_t start,
         Py_ssize_t stop,
         int64_t calibration_ts=INT64_MAX,
         int64_t holdout_end_ts=INT64_MIN):
    """Scan rows ``[start, stop)`` of one record batch; return ``(status, row)``.

    ``period_start[p]`` is the first timestamp of period ``p`` in the
    column's units (clamped to the int64 range), ``units_per_day`` the units
    in a day, ``ts_max`` the last valid timestamp. ``row`` is where the scan
    stopped: ``stop`` on OK, else the row to report or to resume from.
    ``calibration_ts`` (in the column's units): only orders at or before it
    open and make a store-customer; its orders after it and at or before
    ``holdout_end_ts`` are its holdout orders (the defaults: no holdout).
    """
    cdef Py_ssize_t n = merchant_id.shape[0]
    if customer_id.shape[0] != n or order_ts.shape[0] != n or amount.shape[0] != n:
        raise ValueError("columns of one batch must have the same length")
    if not 0 <= start <= stop <= n:
        raise ValueError("rows [start, stop) out of range")
    # The row loop indexes these tables unchecked: check them once here.
    if units_per_day <= 0 or ts_max < 0 or ts_max // units_per_day >= state.day_period.shape[0]:
        raise ValueError("ts_max is outside the day table")
    if period_start.shape[0] < state.n_periods + 1:
        raise ValueError("period_start needs one entry per period plus one")
    cdef Py_ssize_t stopped = start
    cdef Status status
    with nogil:
        status = scan_rows(state, merchant_id, customer_id, order_ts, amount, period_start,
                           units_per_day, ts_max, calibration_ts, holdout_end_ts, start, stop, &stopped)
    return status, stopped
