"""The RFM kernel (SPEC §9 ``rfm``) as a plain Numba loop: the twin of ``kernels/_rfm.pyx``.

Same algorithm, same state, same statuses and the same module signature
(``RfmState``, ``scan``, ``Status``, ``OUTPUT_COLUMNS``), so that the driver
in ``loyaltymetrics.rfm_summary`` runs either engine unchanged. The state is a small
int64 array (the Cython kernel's ``Cursor`` struct) plus the output array;
the jitted function reads it into locals and writes it back, as the Cython
kernel keeps a local copy of its cursor.
"""
import enum

import numpy as np
from numba import njit

from ._rfm import check_zone_offsets
from .numba_scan import zone_of

OUTPUT_COLUMNS = ("merchant_id", "customer_id", "periods", "first_period", "last_period", "value",
                  "holdout_periods", "holdout_orders", "holdout_value")
N_OUT = len(OUTPUT_COLUMNS)
INT64_MIN = np.iinfo(np.int64).min
INT64_MAX = np.iinfo(np.int64).max
_KEY_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))
_AMOUNT_DTYPES = (np.dtype(np.int64),)


class Status(enum.IntEnum):
    """Why a scan call returned (the values of the Cython kernel's ``Status``)."""

    OK = 0
    NEED_SPACE = 1
    UNSORTED = 2
    NEGATIVE_AMOUNT = 3
    TIMESTAMP_RANGE = 4
    AMOUNT_OVERFLOW = 5


# Cursor fields (indexes into the state's int64 array).
(STARTED, PREV_MERCHANT, PREV_CUSTOMER, PREV_TS, PERIOD_LO, PERIOD_HI, PERIOD, OPEN, OPEN_MERCHANT,
 OPEN_CUSTOMER, PERIODS, FIRST_PERIOD, LAST_PERIOD, COUNTED, VALUE, HOLDOUT_PERIODS, HOLDOUT_LAST_PERIOD,
 HOLDOUT_ORDERS, HOLDOUT_VALUE, OUT_ROWS, ZONE_SET, ZONE_MERCHANT, SEG_LO, SEG_HI, OFF_LO, OFF_HI, OFFSET,
 CALIBRATION_TS, HOLDOUT_END_TS, ZONE, N_CURSOR) = range(31)


class RfmState:
    """Everything a scan carries between calls, and the rows it emitted (see ``_rfm.RfmState``)."""

    def __init__(self, day_period, n_periods, observation_period, include_first=False,
                 allow_negative=False, capacity=65536):
        day_period = np.asarray(day_period)
        if day_period.dtype != np.int64 or day_period.ndim != 1:
            raise ValueError("day_period must be a 1-d int64 array")
        if len(day_period) and not (0 <= day_period.min() and day_period.max() < n_periods):
            raise ValueError("day_period indexes outside [0, n_periods)")
        self.day_period = day_period
        self.n_periods = int(n_periods)
        self.observation_period = int(observation_period)
        self.include_first = bool(include_first)
        self.min_amount = INT64_MIN if allow_negative else 0
        self.cursor = np.zeros(N_CURSOR, np.int64)   # period_lo = period_hi = 0: the first row misses
        self.out = np.empty((N_OUT, max(int(capacity), 1)), np.int64)   # out[column, row], as in Cython

    @property
    def last_row_keys(self):
        """(merchant_id, customer_id, order_ts) of the last row scanned, or None."""
        c = self.cursor
        if not c[STARTED]:
            return None
        return (int(c[PREV_MERCHANT]), int(c[PREV_CUSTOMER]), int(c[PREV_TS]))

    def take_output(self):
        """The rows emitted since the last take, int64[N_OUT, rows], leaving the output empty (see ``_rfm``)."""
        rows = self.out[:, : self.cursor[OUT_ROWS]]
        if 2 * len(rows[0]) < self.out.shape[1]:
            rows = rows.copy()
        else:
            self.out = np.empty_like(self.out)
        self.cursor[OUT_ROWS] = 0
        return rows

    def close(self):
        """Emit the open store-customer, if any; ``NEED_SPACE`` (take the output, call again) or ``OK``."""
        return Status(_close(self.cursor, self.out))


@njit(nogil=True, cache=True)
def _emit(cursor, out):
    row = cursor[OUT_ROWS]
    out[0, row] = cursor[OPEN_MERCHANT]
    out[1, row] = cursor[OPEN_CUSTOMER]
    out[2, row] = cursor[PERIODS]
    out[3, row] = cursor[FIRST_PERIOD]
    out[4, row] = cursor[LAST_PERIOD]
    out[5, row] = cursor[VALUE]
    out[6, row] = cursor[HOLDOUT_PERIODS]
    out[7, row] = cursor[HOLDOUT_ORDERS]
    out[8, row] = cursor[HOLDOUT_VALUE]
    cursor[OUT_ROWS] = row + 1
    cursor[OPEN] = 0


@njit(nogil=True, cache=True)
def _close(cursor, out):
    if cursor[OPEN]:
        if cursor[OUT_ROWS] == out.shape[1]:
            return 1  # NEED_SPACE
        _emit(cursor, out)
    return 0


@njit(nogil=True, cache=True)
def _shifted(x, offset):
    """``x - offset``, INT64_MAX / INT64_MIN kept as "no limit", saturated (see ``_rfm.shifted``)."""
    if x == INT64_MAX or x == INT64_MIN:
        return x
    if offset < 0 and x > INT64_MAX + offset:
        return INT64_MAX
    if offset > 0 and x < INT64_MIN + offset:
        return INT64_MIN
    return x - offset


@njit(nogil=True, cache=True)
def _scan_rows(cursor, out, merchant_id, customer_id, order_ts, amount, day_period, period_start,
               off_start, off_value, zone_first, seg_bucket, zone_merchant, zone_index, shift,
               units_per_day, ts_max, min_amount, observation_period, include_first, calibration_ts,
               holdout_end_ts, start, stop):
    started = cursor[STARTED] != 0
    prev_merchant = cursor[PREV_MERCHANT]
    prev_customer = cursor[PREV_CUSTOMER]
    prev_ts = cursor[PREV_TS]
    period_lo = cursor[PERIOD_LO]
    period_hi = cursor[PERIOD_HI]
    period = cursor[PERIOD]
    # The zone and offset caches in locals too (registers, not the cursor array, in the row loop).
    zone_set = cursor[ZONE_SET] != 0
    zone_merchant_now = cursor[ZONE_MERCHANT]
    zone = cursor[ZONE]
    buckets = seg_bucket.shape[0] // (zone_first.shape[0] - 1)
    seg_lo = cursor[SEG_LO]
    seg_hi = cursor[SEG_HI]
    off_lo = cursor[OFF_LO]
    off_hi = cursor[OFF_HI]
    offset = cursor[OFFSET]
    local_calibration_ts = cursor[CALIBRATION_TS]
    local_holdout_end_ts = cursor[HOLDOUT_END_TS]
    capacity = out.shape[1]
    status = 0
    i = start
    while i < stop:
        m = np.int64(merchant_id[i])
        cust = np.int64(customer_id[i])
        t = np.int64(order_ts[i])
        a = amount[i]
        if a < min_amount:
            status = 3  # NEGATIVE_AMOUNT
            break
        if m != zone_merchant_now or not zone_set:
            z = zone_of(m, zone_merchant, zone_index)
            zone = z
            seg_lo = zone_first[z]
            seg_hi = zone_first[z + 1]
            zone_merchant_now = m
            zone_set = True
            off_lo = 0
            off_hi = 0
            period_lo = 0
            period_hi = 0
        if t < off_lo or t >= off_hi:
            if t < 0 or t > ts_max:
                status = 4  # TIMESTAMP_RANGE
                break
            j = seg_bucket[zone * buckets + (t >> shift)]     # see _rfm: the bucket's segment or a later one
            while j + 1 < seg_hi and off_start[j + 1] <= t:
                j += 1
            offset = off_value[j]
            off_lo = off_start[j]
            if j + 1 < seg_hi:
                off_hi = off_start[j + 1]
            else:
                off_hi = INT64_MAX if ts_max == INT64_MAX else ts_max + 1
            local_calibration_ts = _shifted(calibration_ts, offset)
            local_holdout_end_ts = _shifted(holdout_end_ts, offset)
            period_lo = 0
            period_hi = 0
        if t < period_lo or t >= period_hi:
            day = t // units_per_day + (t % units_per_day + offset + units_per_day) // units_per_day
            period = day_period[day]
            period_lo = max(_shifted(period_start[period], offset), off_lo)
            period_hi = min(_shifted(period_start[period + 1], offset), off_hi)
        same = False
        if started:
            if m == prev_merchant:
                if cust == prev_customer:
                    if t < prev_ts:
                        status = 2  # UNSORTED
                        break
                    same = True
                elif cust < prev_customer:
                    status = 2
                    break
            elif m < prev_merchant:
                status = 2
                break
        if not same:
            if cursor[OPEN]:                # the previous store-customer is complete
                if cursor[OUT_ROWS] == capacity:
                    status = 1  # NEED_SPACE: nothing of row i is consumed yet, resume here
                    break
                _emit(cursor, out)
            # Holdout orders count from the store-customer's first row (see _rfm).
            cursor[HOLDOUT_PERIODS] = 0
            cursor[HOLDOUT_LAST_PERIOD] = -1
            cursor[HOLDOUT_ORDERS] = 0
            cursor[HOLDOUT_VALUE] = 0
        if period <= observation_period and t <= local_calibration_ts:
            if not cursor[OPEN]:            # the store-customer's first order in the window
                cursor[OPEN] = 1
                cursor[OPEN_MERCHANT] = m
                cursor[OPEN_CUSTOMER] = cust
                cursor[PERIODS] = 1
                cursor[FIRST_PERIOD] = period
                cursor[LAST_PERIOD] = period
                cursor[COUNTED] = include_first
                cursor[VALUE] = 0
            elif period != cursor[LAST_PERIOD]:     # its next period (sorted: a later one)
                cursor[PERIODS] += 1
                cursor[LAST_PERIOD] = period
                cursor[COUNTED] = 1
            if cursor[COUNTED]:
                value = cursor[VALUE]
                if (a > 0 and value > INT64_MAX - a) or (a < 0 and value < INT64_MIN - a):
                    status = 5  # AMOUNT_OVERFLOW
                    break
                cursor[VALUE] = value + a
        elif local_calibration_ts < t <= local_holdout_end_ts:    # a holdout order (emitted if it opens)
            if period != cursor[HOLDOUT_LAST_PERIOD]:                 # sorted: a later period
                cursor[HOLDOUT_PERIODS] += 1
                cursor[HOLDOUT_LAST_PERIOD] = period
            cursor[HOLDOUT_ORDERS] += 1
            value = cursor[HOLDOUT_VALUE]
            if (a > 0 and value > INT64_MAX - a) or (a < 0 and value < INT64_MIN - a):
                status = 5  # AMOUNT_OVERFLOW
                break
            cursor[HOLDOUT_VALUE] = value + a
        started = True
        prev_merchant = m
        prev_customer = cust
        prev_ts = t
        i += 1
    cursor[STARTED] = started
    cursor[PREV_MERCHANT] = prev_merchant
    cursor[PREV_CUSTOMER] = prev_customer
    cursor[PREV_TS] = prev_ts
    cursor[PERIOD_LO] = period_lo
    cursor[PERIOD_HI] = period_hi
    cursor[PERIOD] = period
    cursor[ZONE_SET] = zone_set
    cursor[ZONE_MERCHANT] = zone_merchant_now
    cursor[ZONE] = zone
    cursor[SEG_LO] = seg_lo
    cursor[SEG_HI] = seg_hi
    cursor[OFF_LO] = off_lo
    cursor[OFF_HI] = off_hi
    cursor[OFFSET] = offset
    cursor[CALIBRATION_TS] = local_calibration_ts
    cursor[HOLDOUT_END_TS] = local_holdout_end_ts
    return status, i


def scan(state, merchant_id, customer_id, order_ts, amount, period_start, off_start, off_value, zone_first,
         seg_bucket, zone_merchant, zone_index, shift, units_per_day, ts_max, start, stop, calibration_ts=INT64_MAX,
         holdout_end_ts=INT64_MIN):
    """Scan rows ``[start, stop)`` of one record batch; return ``(status, row)`` (see ``_rfm.scan``)."""
    n = len(merchant_id)
    if len(customer_id) != n or len(order_ts) != n or len(amount) != n:
        raise ValueError("columns of one batch must have the same length")
    if not 0 <= start <= stop <= n:
        raise ValueError("rows [start, stop) out of range")
    if units_per_day <= 0 or ts_max < 0 or ts_max // units_per_day + 2 >= len(state.day_period):
        raise ValueError("ts_max is outside the day table")
    if len(period_start) < state.n_periods + 1:
        raise ValueError("period_start needs one entry per period plus one")
    check_zone_offsets(off_start, off_value, zone_first, seg_bucket, zone_merchant, zone_index, shift,
                       units_per_day, ts_max)
    for table, dtype in ((off_start, np.int64), (off_value, np.int64), (zone_first, np.int64), (seg_bucket, np.int64),
                         (zone_merchant, np.int64), (zone_index, np.int32)):
        if table.ndim != 1 or table.dtype != dtype:
            raise ValueError("inconsistent zone offset tables")
    # The dtypes of the Cython kernel's fused types (kernels/_types.pxd).
    for column, dtypes in ((merchant_id, _KEY_DTYPES), (customer_id, _KEY_DTYPES), (order_ts, _KEY_DTYPES),
                           (amount, _AMOUNT_DTYPES)):
        if column.ndim != 1 or column.dtype not in dtypes:
            raise ValueError(f"unexpected column dtype {column.dtype}")
    status, row = _scan_rows(
        state.cursor, state.out, merchant_id, customer_id, order_ts, amount, state.day_period, period_start,
        off_start, off_value, zone_first, seg_bucket, zone_merchant, zone_index, np.int64(shift),
        np.int64(units_per_day), np.int64(ts_max), np.int64(state.min_amount), np.int64(state.observation_period),
        np.int64(state.include_first), np.int64(calibration_ts), np.int64(holdout_end_ts), np.int64(start),
        np.int64(stop),
    )
    return Status(status), int(row)
