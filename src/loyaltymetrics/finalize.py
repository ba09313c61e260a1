"""From int64 partials per (merchant, period) to the output table (SPEC §4-7).

Written once and shared by every engine and driver: combine partials, join
the merchants table, bucket merchant size per period, group, derive ratios,
look up the previous period and the same period a year earlier.
"""
import datetime as dt
import math
import numbers
import threading

import numpy as np
import pyarrow as pa

from . import periods
from .arrays import bool_array, numeric_array, string_array
from .errors import AmountOverflowError
from .scan import PARTIAL_COLUMNS, Partials

BASE_COLUMNS = (
    "merchants", "orders", "revenue", "customers", "new_customers", "returning_customers",
    "repeat_orders", "repeat_customers", "orders_from_repeat_customers", "retained_customers",
    "reward_orders", "reward_revenue", "reward_customers", "fees", "member_orders",
    "member_revenue", "member_repeat_customers",
)
DERIVED_COLUMNS = (
    "aov", "reward_aov", "purchase_frequency", "reward_purchase_frequency", "clv", "reward_clv",
    "repeat_customer_rate", "repeat_order_share", "retention_rate", "strict_retention_rate",
    "loyalty_roi", "member_repeat_lift", "member_aov_lift", "member_frequency_lift",
)
GROUP_KEYS = {"merchant": "merchant_id", "industry": "industry", "country": "country", "size": "size"}
DEFAULT_SIZE_EDGES = (30, 300, 3000, 30000)
INT64 = np.iinfo(np.int64)


def check_by(by):
    """``by`` as a tuple of group keys (SPEC §6); a single string is one key."""
    by = (by,) if isinstance(by, str) else tuple(by or ())
    unknown = [k for k in by if k not in GROUP_KEYS]
    if unknown:
        raise ValueError(f"by= has unknown key(s) {unknown}; choose from {', '.join(GROUP_KEYS)}")
    if len(set(by)) != len(by):
        raise ValueError(f"by= names a key twice: {list(by)}")
    return by


def check_size_edges(edges):
    edges = tuple(edges)
    if not edges or not all(isinstance(e, numbers.Real) and not isinstance(e, bool) for e in edges):
        raise ValueError(f"size_edges must be a non-empty sequence of numbers; got {edges!r}")
    floats = [float(e) for e in edges]  # buckets compare in float64: distinct there too
    if not all(math.isfinite(e) and e > 0 for e in floats) or any(b <= a for a, b in zip(floats, floats[1:])):
        raise ValueError(f"size_edges must be positive, finite and strictly increasing; got {edges!r}")
    return edges


def check_observation(observation_start=None, observation_end=None):
    """The observation window's given ends (SPEC §3) as day numbers since 1970-01-01, None where not given.

    Each is a ``datetime.date`` (a ``datetime`` only at midnight), a
    ``numpy.datetime64`` of a whole day or an ISO date string
    ``YYYY-MM-DD``; the window is ``[observation_start, observation_end)``,
    so the end must be after the start.
    """
    start = None if observation_start is None else _observation_day(observation_start, "observation_start")
    end = None if observation_end is None else _observation_day(observation_end, "observation_end")
    if start is not None and end is not None and end <= start:
        raise ValueError(f"observation_end {_day(end)} must be after observation_start {_day(start)}: the "
                         "window [observation_start, observation_end) holds no day")
    return start, end


def _observation_day(value, name):
    original = value
    if isinstance(value, str):
        try:
            value = dt.date.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"{name} {original!r} is not an ISO date (YYYY-MM-DD)") from None
    elif isinstance(value, np.datetime64) and not np.isnat(value):
        day = value.astype("datetime64[D]")
        if day != value:
            raise ValueError(f"{name} {original!r} is not a whole day: the observation window is made of dates")
        value = day.astype(dt.date)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None or value.time() != dt.time(0):
            raise ValueError(f"{name} {original!r} is not a date: the observation window is made of (UTC) "
                             "dates; pass a datetime.date or YYYY-MM-DD")
        value = value.date()
    if not isinstance(value, dt.date):
        raise TypeError(f"{name} must be a datetime.date or an ISO date string (YYYY-MM-DD); "
                        f"got {type(original).__name__} {original!r}")
    day = (value - dt.date(1970, 1, 1)).days
    if not 0 <= day <= periods.N_DAYS:  # an end may be the day after the last valid day
        raise ValueError(f"{name} {original!r} is outside 1970-01-01 .. {_day(periods.N_DAYS)}")
    return day


def _day(day):
    return dt.date(1970, 1, 1) + dt.timedelta(days=int(day))


def observation_window(day_range, observation_start=None, observation_end=None):
    """``(start, end)`` day numbers of the observation window (SPEC §3), defaults filled in.

    ``day_range``: the UTC days of the input's earliest and latest order
    (None without orders). Defaults: the earliest order's day, and the day
    after the latest order's. None when a default is needed and there is no
    order (then there is no row to flag either).
    """
    start, end = check_observation(observation_start, observation_end)
    if day_range is None and (start is None or end is None):
        return None
    start = day_range[0] if start is None else start
    end = day_range[1] + 1 if end is None else end
    if end <= start:
        given = "observation_start" if observation_start is not None else "observation_end"
        raise ValueError(
            f"the observation window [{_day(start)}, {_day(end)}) holds no day: {given} is outside the orders' "
            f"dates ({_day(day_range[0])} .. {_day(day_range[1])}; the other end defaults to them)")
    return start, end


def period_complete(period, index, window, first_month=0):
    """bool per period index: the whole period lies in the observation window (SPEC §3).

    A period is complete when its first day is on or after the window's
    start and the day after its last day (the next period's first day) is
    on or before the window's end. ``period="all"`` is always complete.
    """
    index = np.asarray(index, dtype=np.int64)
    if period == "all":
        return np.ones(index.shape, dtype=bool)
    if window is None:
        return np.zeros(index.shape, dtype=bool)
    first = periods.period_start(period, index, first_month).astype(np.int64)
    after = periods.period_start(period, index + 1, first_month).astype(np.int64)
    return (first >= window[0]) & (after <= window[1])


def size_labels(edges):
    """Bucket labels: ``"<30"``, ``"30-300"``, …, ``"30k+"`` for the edges (SPEC §6)."""
    names = [_edge_label(e) for e in edges]
    return [f"<{names[0]}"] + [f"{a}-{b}" for a, b in zip(names, names[1:])] + [f"{names[-1]}+"]


def _edge_label(edge):
    """30 → "30", 3000 → "3k", 1500 → "1.5k", 2e6 → "2M", 1234 → "1234", 2.5 → "2.5".

    k and M only where they lose nothing (multiples of 100 and 100,000), so
    distinct edges always get distinct labels.
    """
    x = float(edge)
    for scale, step, suffix in ((10**6, 10**5, "M"), (10**3, 100, "k")):
        if x >= scale and x % step == 0:
            return _plain_number(x / scale) + suffix
    return _plain_number(x)


def _plain_number(x):
    return str(int(x)) if x.is_integer() else repr(x)


def size_buckets(orders, months, edges):
    """Bucket index of each merchant-period: ``orders / months >= edge`` counted over the edges.

    Closed on the left, evaluated in float64 as SPEC §6 writes it (for
    integer edges this is exact: a quotient that is not the edge itself is
    at least 1/months away from it).
    """
    rate = np.asarray(orders, dtype=np.float64) / months
    return (rate[:, None] >= np.asarray(edges, dtype=np.float64)[None, :]).sum(axis=1)


def combine(partials, source="orders"):
    """Sum partials that share (merchant, period) — e.g. from two chunks — sorted by both.

    Partials already sorted with one row per (merchant, period) — one state's,
    or combined before — are returned as they are.
    """
    order = sort_order((partials.merchant_id, partials.period))
    if order is not None:
        merchant, period = partials.merchant_id[order], partials.period[order]
    else:
        merchant, period = partials.merchant_id, partials.period
    first = np.ones(len(merchant), dtype=bool)
    first[1:] = (merchant[1:] != merchant[:-1]) | (period[1:] != period[:-1])
    if order is None and first.all():
        return partials
    starts = np.flatnonzero(first)
    counts = sum_groups(partials.counts, starts, source, order)
    return Partials(merchant[starts], period[starts], counts, partials.month_range, partials.day_range)


def sort_order(keys):
    """The stable order sorting rows by ``keys`` (int arrays, most significant first); None if they are sorted.

    The same permutation as ``np.lexsort(keys[::-1])``. Rows of several
    states come as a few sorted runs: checking order first, then one stable
    sort of a single int64 key (a merge of runs) is a fraction of a lexsort.
    """
    n = len(keys[0]) if keys else 0
    if n < 2:
        return None
    tied = np.ones(n - 1, dtype=bool)     # rows equal to the row before on the keys so far
    for k in keys:
        before, here = k[:-1], k[1:]
        if (tied & (here < before)).any():
            break
        tied &= here == before
    else:
        return None
    # One key ordered like the tuple of keys when their ranges multiply to under 2**63.
    spans = [(int(k.min()), int(k.max()) - int(k.min()) + 1) for k in keys]
    if math.prod(span for _, span in spans) > INT64.max:
        return np.lexsort(keys[::-1])
    key = np.zeros(n, dtype=np.int64)
    for k, (low, span) in zip(keys, spans):
        key *= span
        key += k.astype(np.int64, copy=False) - low
    return np.argsort(key, kind="stable")


def sum_groups(values, starts, source, order=None):
    """``np.add.reduceat(values[order], starts, axis=0)`` that raises instead of wrapping (SPEC §2).

    ``starts``: strictly increasing row indexes where groups start;
    ``order``: the rows of ``values`` in group order (None: as they are).
    int64 addition wraps modulo 2**64, so the sum is exact whenever the true
    sum fits; a float64 sum finds the groups that may not, and those are
    checked exactly (unless no group can reach 2**62 by the largest value
    times the largest group). A group of one row is its row: ``reduceat``
    costs about as much per group as per row, so when most groups are one
    row (one merchant-period each: ``by=["merchant"]``, or the pieces of
    two threads) only the others are summed.
    """
    n = len(values) if order is None else len(order)
    if n == 0:
        return values[:0].copy()
    starts = np.asarray(starts, dtype=np.intp)
    sizes = np.diff(starts, append=n)
    many = sizes > 1
    n_many = int(np.count_nonzero(many))
    firsts = starts if order is None else order[starts]
    if n_many == 0:
        return np.take(values, firsts, axis=0)
    if n_many * 4 > len(starts) or sizes.min() < 1:   # (not strictly increasing: reduceat's own rules)
        return _sum_groups(values if order is None else np.take(values, order, axis=0), starts,
                           np.maximum(sizes, 1), source)
    in_many = np.zeros(n, dtype=bool)
    in_many[starts[0]:] = np.repeat(many, sizes)
    rows = np.flatnonzero(in_many) if order is None else order[in_many]
    many_sizes = sizes[many]
    many_starts = np.zeros(n_many, dtype=np.intp)
    np.cumsum(many_sizes[:-1], out=many_starts[1:])
    sums = np.take(values, firsts, axis=0)
    sums[many] = _sum_groups(np.take(values, rows, axis=0), many_starts, many_sizes, source)
    return sums


def _sum_groups(values, starts, sizes, source):
    sums = np.add.reduceat(values, starts, axis=0)
    largest = max(abs(int(values.max())), abs(int(values.min())))
    if largest * int(sizes.max()) <= 2**62:
        return sums
    suspect = np.abs(np.add.reduceat(values.astype(np.float64), starts, axis=0)) > 2.0**62
    ends = np.append(starts[1:], len(values))
    for index in zip(*np.nonzero(suspect)):
        group = values[starts[index[0]]:ends[index[0]]]
        exact = sum(int(v) for v in (group[:, index[1]] if values.ndim == 2 else group))
        if not INT64.min <= exact <= INT64.max:
            raise AmountOverflowError(
                source, None, f"a sum over a group of orders is {exact}, outside int64 (about ±9.2e18 minor units)"
            )
    return sums


def group_codes(merchant_id, orders, months, merchants, by, size_edges):
    """The ``by`` keys (SPEC §6) of rows that are each one merchant in one period.

    ``orders`` are the merchant's orders in that period and ``months`` the
    months in it (for ``size``). Returns ``(codes, decode)``: per key, int64
    codes that sort like the key's values (SPEC §7), and a function turning
    codes back into the key's Arrow output column. Shared by ``finalize``
    and the SPEC §9 analyses, so every output groups merchants alike.
    """
    if "industry" in by or "country" in by:
        industry, country = merchants.lookup(merchant_id)
    codes, decode = [], []
    for key in by:
        if key == "merchant":
            codes.append(np.asarray(merchant_id, dtype=np.int64))
            decode.append(lambda c: numeric_array(c, pa.int64()))
        else:  # string keys sort by their values (SPEC §7), size labels included
            if key == "size":  # sorts in bucket order, smallest first (SPEC §7): the code is the bucket
                names = np.array(size_labels(size_edges), dtype=object)
                code = size_buckets(orders, months, size_edges)
            else:
                labels = industry if key == "industry" else country
                names, code = np.unique(labels, return_inverse=True)
            codes.append(np.asarray(code, dtype=np.int64).reshape(-1))
            decode.append(lambda c, names=names: string_array(names[c]))
    return codes, decode


def key_columns(by, codes, decode, merchants):
    """The output's group-key columns from ``group_codes`` codes (already one per output row).

    With ``merchant`` comes ``merchant_name`` right after ``merchant_id``
    when the merchants table has a ``name`` column (SPEC §7): null for a
    merchant missing from it or without a name.
    """
    columns = {}
    for key, c, dec in zip(by, codes, decode):
        columns[GROUP_KEYS[key]] = dec(c)
        if key == "merchant" and merchants.name is not None:
            columns["merchant_name"] = _nullable_strings(merchants.names(c))
    return columns


def _nullable_strings(values):
    """A ``pa.string()`` array of Python strings and Nones."""
    valid = np.array([v is not None for v in values], dtype=bool)
    strings = string_array(["" if v is None else v for v in values])
    if valid.all():
        return strings
    validity = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(pa.string(), len(values), [validity, *strings.buffers()[1:]])


def finalize(partials, merchants, by, period, size_edges=DEFAULT_SIZE_EDGES, source="orders",
             observation_start=None, observation_end=None, threads=1):
    """The SPEC §7 table from ``Partials`` and an ``inputs.Merchants``; ``source`` names the input in errors.

    ``observation_start``/``observation_end``: the observation window of
    SPEC §3 (``check_observation``), by default the orders' dates.
    ``threads``: with more than one, the YoY columns are worked out on two
    threads (``compute`` passes its own); the table is the same.
    """
    p = combine(partials, source)
    window = observation_window(p.day_range, observation_start, observation_end)
    first_month, last_month = p.month_range or (0, 0)
    months = (last_month - first_month + 1) if period == "all" else periods.MONTHS_PER_PERIOD[period]
    fee = merchants.annual_fees(p.merchant_id)
    codes, decode = group_codes(p.merchant_id, p.column("orders"), months, merchants, by, size_edges)

    # Rows are (merchant, period); with by=["merchant"] they are already in output order.
    order = sort_order(codes + [p.period])
    merchant_id, period_index, counts = p.merchant_id, p.period.astype(np.int64), p.counts
    if order is not None:
        codes = [c[order] for c in codes]
        merchant_id, period_index, fee = merchant_id[order], period_index[order], fee[order]
        counts = np.take(counts, order, axis=0)
    n = len(period_index)
    new_group = np.zeros(n, dtype=bool)
    new_group[:1] = True
    for c in codes:
        new_group[1:] |= c[1:] != c[:-1]
    new_row = new_group.copy()
    new_row[1:] |= period_index[1:] != period_index[:-1]
    starts = np.flatnonzero(new_row)

    # Every group one row (by=["merchant"]): its sums are its row, no copy.
    sums = counts if len(starts) == n else sum_groups(counts, starts, source)
    # With refunds, a merchant-period of only refunds adds to its group's revenue sums but is
    # no merchant (SPEC §4: merchants with >= 1 order) and pays no fee; a group-period without
    # orders is no row (SPEC §3).
    has_orders = counts[:, PARTIAL_COLUMNS.index("orders")] > 0
    merchants_counted = sum_groups(has_orders.astype(np.int64), starts, source)
    fee_sum = _fee_sums(np.where(has_orders, fee, 0), starts, merchant_id, merchants.source)
    group_id = np.cumsum(new_group)[starts] - 1
    keep = sums[:, PARTIAL_COLUMNS.index("orders")] > 0
    if not keep.all():
        starts, sums, merchants_counted, fee_sum, group_id = (
            x[keep] for x in (starts, sums, merchants_counted, fee_sum, group_id))
    group_period = period_index[starts]
    rows = len(starts)

    columns = key_columns(by, [c[starts] for c in codes], decode, merchants)
    days, complete = _period_columns(period, group_period, window, first_month)
    columns["period_start"] = numeric_array(days, pa.date32())
    columns["period_complete"] = bool_array(complete)

    # The metric columns are rows of two blocks, one int64 and one float64 (their Arrow buffers):
    # two allocations instead of about sixty, and no copy of a column into Arrow. Fresh memory
    # is most of finalize's time on a virtual machine (page faults), so temporaries are few too.
    n_counts = len(PARTIAL_COLUMNS)
    ints = np.empty((n_counts + 3, rows), np.int64)
    ints[:n_counts] = sums.T
    base = {name: ints[i] for i, name in enumerate(PARTIAL_COLUMNS)}
    ints[n_counts] = merchants_counted
    base["merchants"] = ints[n_counts]
    base["returning_customers"] = np.subtract(base["customers"], base["new_customers"], out=ints[n_counts + 1])
    base["repeat_orders"] = np.subtract(base["orders"], base["new_customers"], out=ints[n_counts + 2])
    floats = np.empty((1 + len(DERIVED_COLUMNS) + len(BASE_COLUMNS) + len(DERIVED_COLUMNS), rows))
    fees_row, derived_rows, yoy_rows = floats[0], floats[1:1 + len(DERIVED_COLUMNS)], floats[1 + len(DERIVED_COLUMNS):]

    # Metric values with validity: (float or int array, bool array).
    metrics = {name: (base[name], np.ones(rows, bool)) for name in BASE_COLUMNS if name != "fees"}
    if period == "all":
        fees_row[:] = 0
        metrics["fees"] = (fees_row, np.zeros(rows, bool))
    else:
        fees_row[:] = _fees(fee_sum, months)
        metrics["fees"] = (fees_row, np.ones(rows, bool))
    base_order = {name: metrics[name] for name in BASE_COLUMNS}

    # SPEC §3: no YoY unless both periods are complete (a year that has only begun is no year).
    year_ago = _shift(group_id, group_period, periods.PERIODS_PER_YEAR.get(period), period)
    found = year_ago >= 0
    year_ago = np.where(found, year_ago, 0)    # rows without one compare with row 0, then are null
    compared = complete & found & complete[year_ago]
    yoy = {}

    def yoy_of(name, values, valid, out):
        yoy[name] = _to_arrow(*_yoy(values, valid, year_ago, compared, out))

    def tasks_of(metrics, rows):   # (name, values, valid, its YoY row) of each metric
        return [(name, values, valid, row) for (name, (values, valid)), row in zip(metrics.items(), rows)]

    # The YoY columns are worked out on two threads, the base metrics' first (while this one works
    # out the derived metrics): NumPy lets go of the GIL inside each operation, so they overlap.
    tasks = _Tasks(yoy_of, tasks_of(base_order, yoy_rows), second_thread=threads > 1)
    try:
        prev_period = _shift(group_id, group_period, 1, period)
        customers_prev = _take(metrics["customers"], prev_period)
        derived = _derived(base_order, customers_prev, derived_rows)
        tasks.add(tasks_of(derived, yoy_rows[len(base_order):]))
    finally:
        tasks.close()
    tasks.run()
    all_metrics = {**base_order, **derived}
    for name, (values, valid) in all_metrics.items():
        columns[name] = _to_arrow(values, valid)
    for name in all_metrics:
        columns[f"{name}_yoy"] = yoy[name]
    return pa.table(columns)


def _yoy(values, valid, year_ago, compared, out):
    """A metric's YoY change in percent into ``out``, and its validity: null unless both periods compared
    have the metric and the year-ago one is not 0."""
    prev_values = np.take(values, year_ago)
    delta = difference(values, prev_values, taken=True)  # exact integer subtraction for counts
    _, ok = _ratio(delta, prev_values, out=out)
    out *= 100
    ok &= compared
    if not valid.all():
        ok &= valid
        ok &= np.take(valid, year_ago)
    return out, ok


class _Tasks:
    """Calls ``fn(*task)`` for each task on this thread and (``second_thread``) a second one, which starts at once.

    ``add`` gives more tasks, ``close`` says there are no more (always call it),
    ``run`` (on this thread) takes tasks until none is left, waits for the
    other thread and raises what either raised. Without a second thread (or
    where none can start) ``run`` does them all.
    """

    def __init__(self, fn, tasks, second_thread=True):
        self._fn, self._tasks, self._next, self._closed, self._errors = fn, list(tasks), 0, False, []
        self._ready = threading.Condition()
        self._thread = None
        if second_thread:
            self._thread = threading.Thread(target=self._work, name="loyaltymetrics-finalize", daemon=True)
            try:
                self._thread.start()
            except RuntimeError:   # can't start new thread
                self._thread = None

    def add(self, tasks):
        with self._ready:
            self._tasks.extend(tasks)
            self._ready.notify()

    def close(self):
        with self._ready:
            self._closed = True
            self._ready.notify()

    def run(self):
        self._work()
        if self._thread is not None:
            self._thread.join()
        if self._errors:
            raise self._errors[0]

    def _work(self):
        while True:
            with self._ready:
                while self._next == len(self._tasks) and not self._closed:
                    self._ready.wait()
                if self._next == len(self._tasks) or self._errors:
                    return
                task = self._tasks[self._next]
                self._next += 1
            try:
                self._fn(*task)
            except BaseException as error:
                with self._ready:
                    self._errors.append(error)
                return


def _period_columns(period, group_period, window, first_month):
    """``period_start`` (int32 days) and ``period_complete`` of each row, worked out once per distinct period."""
    if len(group_period) == 0:
        low, high = 0, -1
    else:
        low, high = int(group_period.min()), int(group_period.max())
    index = np.arange(low, high + 1, dtype=np.int64)
    days = periods.period_start(period, index, first_month).astype(np.int32)
    complete = period_complete(period, index, window, first_month)
    return days[group_period - low], complete[group_period - low]


def _fee_sums(fee, starts, merchant_id, source):
    """``sum_groups`` of the merchants' ``annual_fee``, an overflow named as such with its merchants."""
    try:
        return sum_groups(fee, starts, source)
    except AmountOverflowError:
        ends = np.append(starts[1:], len(fee))
        for start, end in zip(starts, ends):
            total = sum(int(f) for f in fee[start:end])
            if not INT64.min <= total <= INT64.max:
                ids = ", ".join(str(m) for m in merchant_id[start:end][:5]) + (", ..." if end - start > 5 else "")
                raise AmountOverflowError(
                    source, None, f"the annual_fee of merchants {ids} (counted in one group and period) adds up to "
                    f"{total}, outside int64 (about ±9.2e18 minor units)") from None
        raise


def _fees(fee_sum, months):
    """``(fee_sum * months) / 12`` correctly rounded, as Python computes it on ints (SPEC §4)."""
    if np.all(np.abs(fee_sum) < 2**53 // months):  # the product is exact in float64
        return (fee_sum * months).astype(np.float64) / 12
    return np.array([int(f) * months / 12 for f in fee_sum], dtype=np.float64)


def difference(a, b, taken=False):
    """``a - b`` as float64; for int64 arrays exact even where int64 subtraction would wrap.

    ``taken``: ``b`` holds values of ``a`` (``a[index]``), so ``a``'s range bounds both.
    """
    if a.dtype != np.int64 or b.dtype != np.int64:
        return np.asarray(a, np.float64) - np.asarray(b, np.float64)
    out = np.empty(len(a))
    np.subtract(a, b, out=out, casting="unsafe")  # int64 difference (wraps silently on overflow), then float64
    if len(a) == 0:
        return out
    low, high = int(a.min()), int(a.max())
    b_low, b_high = (low, high) if taken else (int(b.min()), int(b.max()))
    if high - b_low <= INT64.max and low - b_high >= INT64.min:
        return out   # no difference can wrap (refunds near ±9.2e18 can)
    d = a - b
    for i in np.flatnonzero(((a ^ b) & (a ^ d)) < 0):
        out[i] = float(int(a[i]) - int(b[i]))
    return out


def _shift(group_id, group_period, lag, period):
    """Row index of the same group ``lag`` periods earlier, -1 where there is none."""
    n = len(group_id)
    out = np.full(n, -1, dtype=np.int64)
    if lag is None or period == "all" or n == 0:
        return out
    # Rows are sorted by group then period, one row per period: the row ``lag`` periods
    # earlier is at most ``lag`` rows back. The stride leaves a gap of n_periods between
    # groups, so ``key - lag`` never matches a row of the previous group.
    stride = 2 * periods.n_periods(period)
    key = group_id * stride + group_period
    target = key - lag
    for back in range(1, min(lag, n - 1) + 1):
        hit = np.flatnonzero(key[:-back] == target[back:])
        out[hit + back] = hit
    return out


def _take(metric, index):
    values, valid = metric
    found = index >= 0
    safe = np.where(found, index, 0)
    if len(values) == 0:
        return values.copy(), found
    return values[safe], found & valid[safe]


def _ratio(num, den, out=None):
    """num / den as float64 with validity (null where den is 0); into ``out`` when given.

    Integers are divided as float64 (NumPy casts them as ``astype`` would);
    where den is 0 the value is 0.
    """
    ok = np.not_equal(den, 0)
    if out is None:
        out = np.empty(np.broadcast(num, den).shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        np.divide(num, den, out=out, dtype=np.float64)
    np.copyto(out, 0.0, where=~ok)   # not the inf or nan of x / 0: the same value for any x
    return out, ok


def _lift(a, b, c, d, out=None):
    """(a / b) / (c / d), null where any denominator is 0 (SPEC §5 lifts)."""
    members, ok1 = _ratio(a, b)
    others, ok2 = _ratio(c, d)
    lift, ok3 = _ratio(members, others, out)
    return lift, ok1 & ok2 & ok3


def _derived(m, customers_prev, out):
    """SPEC §5, each formula as written there, left to right; the values into the rows of ``out``."""
    v = {name: values for name, (values, _) in m.items()}
    prev, prev_ok = customers_prev
    rows = iter(out)

    def ratio(num, den):
        return _ratio(num, den, next(rows))

    def rate(num, den, ok=True):
        values, ok2 = _ratio(num, den, next(rows))
        values *= 100
        return values, ok2 & ok

    def lift(a, b, c, d):
        return _lift(a, b, c, d, next(rows))

    fees, fees_ok = m["fees"]
    return {
        "aov": ratio(v["revenue"], v["orders"]),
        "reward_aov": ratio(v["reward_revenue"], v["reward_orders"]),
        "purchase_frequency": ratio(v["orders"], v["customers"]),
        "reward_purchase_frequency": ratio(v["reward_orders"], v["reward_customers"]),
        "clv": ratio(v["revenue"], v["customers"]),
        "reward_clv": ratio(v["reward_revenue"], v["reward_customers"]),
        "repeat_customer_rate": ratio(v["repeat_customers"], v["customers"]),
        "repeat_order_share": ratio(v["orders_from_repeat_customers"], v["orders"]),
        "retention_rate": rate(v["customers"] - v["new_customers"], prev, prev_ok),
        "strict_retention_rate": rate(v["retained_customers"], prev, prev_ok),
        "loyalty_roi": rate(v["reward_revenue"] - fees, fees, fees_ok),
        "member_repeat_lift": lift(
            v["member_repeat_customers"], v["reward_customers"],
            v["repeat_customers"] - v["member_repeat_customers"], v["customers"] - v["reward_customers"],
        ),
        "member_aov_lift": lift(
            v["member_revenue"], v["member_orders"],
            difference(v["revenue"], v["member_revenue"]), v["orders"] - v["member_orders"],
        ),
        "member_frequency_lift": lift(
            v["member_orders"], v["reward_customers"],
            v["orders"] - v["member_orders"], v["customers"] - v["reward_customers"],
        ),
    }


def _to_arrow(values, valid):
    if values.dtype == np.int64 and valid.all():
        return numeric_array(values, pa.int64())
    return numeric_array(values.astype(np.float64, copy=False), pa.float64(), valid)
