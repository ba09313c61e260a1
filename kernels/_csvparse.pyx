"""Per-row parsing of CSV order exports for ``csvprep`` (``prepare``'s fast path for CSV).

Every function reads Arrow string columns as (offsets, data, valid) — the int32 offsets of the
array's rows (``len + 1`` of them, already shifted by the array's offset), its data bytes and a 0/1
byte a row for validity — and accepts only a strict subset of what the general path's SQL accepts.
Anything else makes it return the index of the row it could not read (>= 0), and the caller falls
back to the general path, which reads and reports that row: never a guess.
"""
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t

cdef int64_t MAX_US = 9_214_646_400_000_000   # 2263-01-01 UTC, as convert.MAX_US
cdef int64_t MAX_CENTS_DIGITS = 13           # integer digits of an amount read here (× 100 stays far in int64)


cdef inline uint64_t _mix(uint64_t x) noexcept nogil:
    """splitmix64's finaliser: every input bit moves every output bit."""
    x ^= x >> 30
    x *= <uint64_t>0xbf58476d1ce4e5b9
    x ^= x >> 27
    x *= <uint64_t>0x94d049bb133111eb
    x ^= x >> 31
    return x


cdef inline bint _key_bounds(const int32_t[::1] off, const uint8_t[::1] data, Py_ssize_t i,
                             Py_ssize_t *lo, Py_ssize_t *hi) noexcept nogil:
    """The row's value without surrounding spaces (DuckDB's trim, for ASCII text); False if it holds a byte
    beyond ASCII (trim would also strip Unicode spaces: the general path decides) or nothing is left."""
    cdef Py_ssize_t a = off[i], b = off[i + 1], k
    for k in range(a, b):
        if data[k] >= 0x80:
            return False
    while a < b and data[a] == 32:
        a += 1
    while b > a and data[b - 1] == 32:
        b -= 1
    lo[0] = a
    hi[0] = b
    return b > a


def order_runs(const int32_t[::1] off, const uint8_t[::1] data, const uint8_t[::1] valid, uint64_t seed,
               int64_t[::1] starts, uint64_t[::1] hashes):
    """Runs of neighbouring rows with the same order key (trimmed): ``starts[r]`` the first row of run r and
    ``hashes[r]`` a 64-bit hash of (seed, key). Returns (runs, -1), or (0, row) for a row whose key is null,
    empty or not ASCII (rejected as null_order_id or decided by the general path)."""
    cdef Py_ssize_t n = valid.shape[0], i, k, lo = 0, hi = 0, plo = 0, phi = 0, runs = 0
    cdef uint64_t h
    cdef bint same
    with nogil:
        for i in range(n):
            if not valid[i] or not _key_bounds(off, data, i, &lo, &hi):
                with gil:
                    return 0, i
            same = False
            if i > 0 and hi - lo == phi - plo:
                same = True
                for k in range(hi - lo):
                    if data[lo + k] != data[plo + k]:
                        same = False
                        break
            if not same:
                h = _mix(seed + <uint64_t>0x9e3779b97f4a7c15)
                for k in range(lo, hi):   # FNV-1a over the bytes, then mixed
                    h = (h ^ data[k]) * <uint64_t>0x100000001b3
                h = _mix(h ^ <uint64_t>(hi - lo))
                starts[runs] = i
                hashes[runs] = h
                runs += 1
            plo = lo
            phi = hi
    return runs, -1


def run_heads(const int64_t[::1] starts, Py_ssize_t runs, Py_ssize_t end, const uint8_t[::1] carrier,
              const uint8_t[::1] has_customer, int64_t[::1] heads, int64_t[::1] customers):
    """Each of the first ``runs`` runs' head — its first carrier (a row with the order total) — and the row
    of its customer: its first carrier with one, else its first row with one, else -1 (a guest). Run r
    spans rows [starts[r], starts[r + 1]) (``end`` for the last). Returns -1, or the first row of a run
    without a carrier (rejected as order_without_total)."""
    cdef Py_ssize_t r, i, a, b, head, cust, any_row
    with nogil:
        for r in range(runs):
            a = starts[r]
            b = starts[r + 1] if r + 1 < runs else end
            head, cust, any_row = -1, -1, -1
            for i in range(a, b):
                if carrier[i]:
                    if head < 0:
                        head = i
                    if cust < 0 and has_customer[i]:
                        cust = i
                elif any_row < 0 and has_customer[i]:
                    any_row = i
            if head < 0:
                with gil:
                    return a
            heads[r] = head
            customers[r] = cust if cust >= 0 else any_row
    return -1


cdef inline int _digit(uint8_t c) noexcept nogil:
    return c - 48 if 48 <= c <= 57 else -1


cdef inline int _sign(uint8_t c) noexcept nogil:
    """+1 for "+", -1 for "-", 0 for anything else."""
    return 1 if c == 43 else (-1 if c == 45 else 0)


cdef inline int _number(const uint8_t[::1] data, Py_ssize_t at, int width) noexcept nogil:
    """The decimal number of ``width`` digits at ``at``, or -1."""
    cdef int value = 0, d, k
    for k in range(width):
        d = _digit(data[at + k])
        if d < 0:
            return -1
        value = value * 10 + d
    return value


cdef inline int64_t _days(int64_t y, int64_t m, int64_t d) noexcept nogil:
    """Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil)."""
    if m <= 2:
        y -= 1
    cdef int64_t era = (y if y >= 0 else y - 399) // 400
    cdef int64_t yoe = y - era * 400
    cdef int64_t mp = (m + 9) % 12
    cdef int64_t doy = (153 * mp + 2) // 5 + d - 1
    cdef int64_t doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


cdef inline bint _leap(int64_t y) noexcept nogil:
    return (y % 4 == 0 and y % 100 != 0) or y % 400 == 0


cdef inline bint _timestamp(const uint8_t[::1] data, Py_ssize_t a, Py_ssize_t b, bint naive_ok,
                            int64_t *out) noexcept nogil:
    """UTC microseconds of the fixed-width forms of convert.TS_FIXED read by position as ``_ts_sql`` does —
    "YYYY-MM-DD[T ]HH:MM:SS" then nothing (naive: only where the zone is UTC), "Z", " ±HHMM" or "±HH:MM" —
    with every field in its ordinary range; False for anything else (the general path decides)."""
    cdef Py_ssize_t n = b - a
    cdef int y, mo, d, hh, mi, ss, zh = 0, zm = 0, sign = 0
    cdef int dim
    if n != 19 and n != 20 and n != 25:
        return False
    if data[a + 4] != 45 or data[a + 7] != 45 or (data[a + 10] != 32 and data[a + 10] != 84) \
            or data[a + 13] != 58 or data[a + 16] != 58:
        return False
    y = _number(data, a, 4)
    mo = _number(data, a + 5, 2)
    d = _number(data, a + 8, 2)
    hh = _number(data, a + 11, 2)
    mi = _number(data, a + 14, 2)
    ss = _number(data, a + 17, 2)
    if y < 0 or mo < 1 or mo > 12 or d < 1 or hh < 0 or hh > 23 or mi < 0 or mi > 59 or ss < 0 or ss > 59:
        return False
    if mo == 2:
        dim = 29 if _leap(y) else 28
    elif mo == 4 or mo == 6 or mo == 9 or mo == 11:
        dim = 30
    else:
        dim = 31
    if d > dim:
        return False
    if n == 19:
        if not naive_ok:
            return False
    elif n == 20:
        if data[a + 19] != 90:   # "Z"
            return False
    elif data[a + 19] == 32:     # " ±HHMM"
        sign = _sign(data[a + 20])
        zh = _number(data, a + 21, 2)
        zm = _number(data, a + 23, 2)
    else:                        # "±HH:MM"
        sign = _sign(data[a + 19])
        if data[a + 22] != 58:
            return False
        zh = _number(data, a + 20, 2)
        zm = _number(data, a + 23, 2)
    if n == 25 and sign == 0:
        return False
    if zh < 0 or zm < 0 or zh > 14 or zm > 59:
        return False
    cdef int64_t seconds = _days(y, mo, d) * 86400 + hh * 3600 + mi * 60 + ss - sign * (zh * 3600 + zm * 60)
    cdef int64_t us = seconds * 1_000_000
    if seconds < 0 or us >= MAX_US:
        return False
    out[0] = us
    return True


cdef inline bint _cents(const uint8_t[::1] data, Py_ssize_t a, Py_ssize_t b, int64_t *out) noexcept nogil:
    """Exact cents of a plain amount "D[.D[D]]" (1 to 13 integer digits, no sign, space or separator); False
    for anything else (the general path decides)."""
    cdef int64_t value = 0
    cdef Py_ssize_t k = a, digits = 0, decimals = 0
    cdef int c
    while k < b and digits <= MAX_CENTS_DIGITS:
        c = _digit(data[k])
        if c < 0:
            break
        value = value * 10 + c
        digits += 1
        k += 1
    if digits == 0 or digits > MAX_CENTS_DIGITS:
        return False
    if k < b:
        if data[k] != 46:   # "."
            return False
        k += 1
        while k < b:
            c = _digit(data[k])
            if c < 0 or decimals == 2:
                return False
            value = value * 10 + c
            decimals += 1
            k += 1
        if decimals == 0:
            return False
    while decimals < 2:
        value *= 10
        decimals += 1
    out[0] = value
    return True


def parse_carriers(const uint8_t[::1] carrier, Py_ssize_t end,
                   const int32_t[::1] ts_off, const uint8_t[::1] ts_data, const uint8_t[::1] ts_valid,
                   const int32_t[::1] amount_off, const uint8_t[::1] amount_data,
                   const int32_t[::1] refund_off, const uint8_t[::1] refund_data, const uint8_t[::1] refund_valid,
                   bint has_refund, bint naive_ok,
                   int64_t[::1] ts_us, int64_t[::1] cents, uint8_t[::1] full_refund):
    """The order time (UTC µs), net cents (total − refunded, 0 for a full refund) and full-refund flag of
    every carrier among rows [0, end). Returns -1, or the first carrier the general path must read."""
    cdef Py_ssize_t i
    cdef int64_t total = 0, refunded = 0
    with nogil:
        for i in range(end):
            if not carrier[i]:
                continue
            if not ts_valid[i] or not _timestamp(ts_data, ts_off[i], ts_off[i + 1], naive_ok, &ts_us[i]):
                with gil:
                    return i
            if not _cents(amount_data, amount_off[i], amount_off[i + 1], &total):
                with gil:
                    return i
            refunded = 0
            if has_refund and refund_valid[i]:
                if not _cents(refund_data, refund_off[i], refund_off[i + 1], &refunded):
                    with gil:
                        return i
            if refunded > 0 and refunded >= total:
                full_refund[i] = 1
                cents[i] = 0
            else:
                full_refund[i] = 0
                cents[i] = total - refunded
    return -1
