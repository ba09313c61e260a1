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

Days, weeks and months are local to each merchant's time zone (SPEC §3),
as lifetimes sees them when given each order's local wall-clock time: the
caller passes each zone's UTC offsets as segments of constant offset
(``off_start``/``off_value``, zone ``z``'s in ``[zone_first[z],
zone_first[z + 1])``) and the merchants outside zone 0. On a merchant change
the kernel looks up its zone (a binary search); on a timestamp outside the
cached offset segment it looks up the segment; then the period cache holds
the UTC interval in which the row's local period (and offset) stays the
same, so the row loop does one more compare than in UTC. Calibration and
holdout ends are wall-clock times, compared as ``t + offset``.

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
    static inline int lm_rfm_sub_overflows(int64_t a, int64_t b, int64_t *out) {
        return __builtin_sub_overflow(a, b, out);
    }
    """
    bint lm_rfm_add_overflows(int64_t a, int64_t b, int64_t *out) noexcept nogil
    bint lm_rfm_sub_overflows(int64_t a, int64_t b, int64_t *out) noexcept nogil


cdef inline int64_t shifted(int64_t x, int64_t offset) noexcept nogil:
    """``x - offset``, with INT64_MAX and INT64_MIN kept as "no limit" and the result saturated."""
    cdef int64_t out
    if x == INT64_MAX or x == INT64_MIN:
        return x
    if lm_rfm_sub_overflows(x, offset, &out):
        return INT64_MAX if offset < 0 else INT64_MIN
    return out

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
    # The merchant whose zone is loaded, and its segments [seg_lo, seg_hi) of off_start/off_value.
    bint zone_set
    int64_t zone_merchant
    int64_t zone
    int64_t seg_lo
    int64_t seg_hi
    # order_ts -> UTC offset cache: [off_lo, off_hi) in timestamp units, and the offset (units).
    int64_t off_lo
    int64_t off_hi
    int64_t offset
    int64_t calibration_ts      # the calibration and holdout ends minus the offset: compared with t
    int64_t holdout_end_ts
    # order_ts -> local period cache: [period_lo, period_hi) in (UTC) timestamp units.
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

    ``day_period[d + 1]`` is the period index of local day ``d`` since 1970-01-01 (from -1);
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
        self.cur.zone_set = False
        self.cur.off_lo = 0
        self.cur.off_hi = 0
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
    const int64_t[::1] off_start,
    const int64_t[::1] off_value,
    const int64_t[::1] zone_first,
    const int64_t[::1] seg_bucket,
    const int64_t[::1] zone_merchant,
    const int32_t[::1] zone_index,
    int shift,
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
    cdef Py_ssize_t lo, hi, mid
    cdef int64_t z, day, j
    cdef Py_ssize_t buckets = seg_bucket.shape[0] // (zone_first.shape[0] - 1)
    for i in range(start, stop):
        m = merchant_id[i]
        cust = customer_id[i]
        t = order_ts[i]
        a = amount[i]
        if a < min_amount:
            status = NEGATIVE_AMOUNT
            break
        if m != c.zone_merchant or not c.zone_set:
            # A new merchant: its zone's offsets; both caches were another zone's.
            lo, hi = 0, zone_merchant.shape[0]
            while lo < hi:
                mid = (lo + hi) // 2
                if zone_merchant[mid] < m:
                    lo = mid + 1
                else:
                    hi = mid
            z = zone_index[lo] if lo < zone_merchant.shape[0] and zone_merchant[lo] == m else 0
            c.zone = z
            c.seg_lo = zone_first[z]
            c.seg_hi = zone_first[z + 1]
            c.zone_merchant = m
            c.zone_set = True
            c.off_lo = c.off_hi = c.period_lo = c.period_hi = 0
        if t < c.off_lo or t >= c.off_hi:
            if t < 0 or t > ts_max:     # the offset segments cover [0, ts_max] only: checked here
                status = TIMESTAMP_RANGE
                break
            # The segment of t: the one holding its bucket's start, or a later one (offsets change
            # months apart, so at most a step or two).
            j = seg_bucket[c.zone * buckets + (t >> shift)]
            while j + 1 < c.seg_hi and off_start[j + 1] <= t:
                j += 1
            c.offset = off_value[j]
            c.off_lo = off_start[j]
            c.off_hi = off_start[j + 1] if j + 1 < c.seg_hi else (INT64_MAX if ts_max == INT64_MAX else ts_max + 1)
            c.calibration_ts = shifted(calibration_ts, c.offset)
            c.holdout_end_ts = shifted(holdout_end_ts, c.offset)
            c.period_lo = c.period_hi = 0
        if t < c.period_lo or t >= c.period_hi:
            # Local day + 1 (from 1969-12-31), without overflow near INT64_MAX: |offset| < a day.
            day = t // units_per_day + (t % units_per_day + c.offset + units_per_day) // units_per_day
            c.period = st.day_period[day]
            c.period_lo = max(shifted(period_start[c.period], c.offset), c.off_lo)
            c.period_hi = min(shifted(period_start[c.period + 1], c.offset), c.off_hi)
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
        if not same:
            if c.open:                  # the previous store-customer is complete
                if st.out_rows == capacity:
                    status = NEED_SPACE     # nothing of row i is consumed yet: resume here
                    break
                emit(st, &c)
            # Holdout orders count from the store-customer's first row: local wall-clock times repeat
            # where clocks fall back, so a holdout order may precede its first calibration order.
            c.holdout_periods = 0
            c.holdout_last_period = -1
            c.holdout_orders = 0
            c.holdout_value = 0
        if c.period <= observation_period and t <= c.calibration_ts:
            if not c.open:              # the store-customer's first order in the window
                c.open = True
                c.open_merchant = m
                c.open_customer = cust
                c.periods = 1
                c.first_period = c.period
                c.last_period = c.period
                c.counted = include_first
                c.value = 0
            elif c.period != c.last_period:     # its next period (sorted: a later one)
                c.periods += 1
                c.last_period = c.period
                c.counted = True
            if c.counted and lm_rfm_add_overflows(c.value, a, &c.value):
                status = AMOUNT_OVERFLOW
                break
        elif c.calibration_ts < t <= c.holdout_end_ts:    # a holdout order (emitted if the customer opens)
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
         const int64_t[::1] off_start not None,
         const int64_t[::1] off_value not None,
         const int64_t[::1] zone_first not None,
         const int64_t[::1] seg_bucket not None,
         const int64_t[::1] zone_merchant not None,
         const int32_t[::1] zone_index not None,
         int shift,
         int64_t units_per_day,
         int64_t ts_max,
         Py_ssize_t start,
         Py_ssize_t stop,
         int64_t calibration_ts=INT64_MAX,
         int64_t holdout_end_ts=INT64_MIN):
    """Scan rows ``[start, stop)`` of one record batch; return ``(status, row)``.

    ``period_start[p]`` is the first local timestamp of period ``p`` in the
    column's units (clamped to the int64 range); ``off_start``,
    ``off_value``, ``zone_first``, ``zone_merchant`` and ``zone_index`` the
    zones' offsets (module docstring; ``check_zone_offsets``); ``units_per_day`` the units
    in a day, ``ts_max`` the last valid timestamp. ``row`` is where the scan
    stopped: ``stop`` on OK, else the row to report or to resume from.
    ``calibration_ts`` (local wall-clock time in the column's units): only orders at or before it
    open and make a store-customer; its orders after it and at or before
    ``holdout_end_ts`` are its holdout orders (the defaults: no holdout).
    """
    cdef Py_ssize_t n = merchant_id.shape[0]
    if customer_id.shape[0] != n or order_ts.shape[0] != n or amount.shape[0] != n:
        raise ValueError("columns of one batch must have the same length")
    if not 0 <= start <= stop <= n:
        raise ValueError("rows [start, stop) out of range")
    # The row loop indexes these tables unchecked: check them once here.
    if units_per_day <= 0 or ts_max < 0 or ts_max // units_per_day + 2 >= state.day_period.shape[0]:
        raise ValueError("ts_max is outside the day table")
    if period_start.shape[0] < state.n_periods + 1:
        raise ValueError("period_start needs one entry per period plus one")
    check_zone_offsets(off_start, off_value, zone_first, seg_bucket, zone_merchant, zone_index, shift,
                       units_per_day, ts_max)
    cdef Py_ssize_t stopped = start
    cdef Status status
    with nogil:
        status = scan_rows(state, merchant_id, customer_id, order_ts, amount, period_start, off_start, off_value,
                           zone_first, seg_bucket, zone_merchant, zone_index, shift, units_per_day, ts_max,
                           calibration_ts, holdout_end_ts, start, stop, &stopped)
    return status, stopped


def check_zone_offsets(off_start, off_value, zone_first, seg_bucket, zone_merchant, zone_index, int shift,
                       int64_t units_per_day, int64_t ts_max):
    """ValueError unless the zone offset tables are what the row loop assumes (shared by both engines).

    Each zone's segments are non-empty, the first starts at 0, starts
    ascend; offsets are less than a day; zone indexes name a zone; each
    zone's ``seg_bucket`` row covers buckets up to ``ts_max >> shift`` and
    names a segment of that zone starting at or before the bucket.
    """
    off_start, off_value = np.asarray(off_start), np.asarray(off_value)
    zone_first, zone_index = np.asarray(zone_first), np.asarray(zone_index)
    seg_bucket = np.asarray(seg_bucket)
    zones = len(zone_first) - 1
    if zones < 1 or not 0 <= shift < 63 or ts_max < 0 or len(seg_bucket) % zones:
        raise ValueError("inconsistent zone offset tables")
    buckets = len(seg_bucket) // zones
    if buckets <= (ts_max >> shift):
        raise ValueError("inconsistent zone offset tables")
    if (zones < 1 or off_start.shape != off_value.shape or zone_first[0] != 0 or zone_first[-1] != len(off_start)
            or np.any(np.diff(zone_first) < 1) or np.any(off_start[zone_first[:-1]] != 0)
            or np.any(np.abs(off_value) >= units_per_day) or np.asarray(zone_merchant).shape != zone_index.shape
            or (len(zone_index) and not (0 <= zone_index.min() and zone_index.max() < zones))):
        raise ValueError("inconsistent zone offset tables")
    for z in range(zones):
        segment = off_start[zone_first[z]:zone_first[z + 1]]
        row = seg_bucket[z * buckets:(z + 1) * buckets]
        if (np.any(np.diff(segment) <= 0) or row.min() < zone_first[z] or row.max() >= zone_first[z + 1]
                or np.any(off_start[row] > (np.arange(buckets, dtype=np.int64) << shift))):
            raise ValueError("inconsistent zone offset tables")
