"""From int64 partials per (merchant, period) to the output table (SPEC §4-7).

Written once and shared by every engine and driver: combine partials, join
the merchants table, bucket merchant size per period, group, derive ratios,
look up the previous period and the same period a year earlier.
"""
import math
import numbers

import numpy as np
import pyarrow as pa

from . import periods
from .arrays import numeric_array, string_array
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
    """Sum partials that share (merchant, period) — e.g. from two chunks — sorted by both."""
    order = np.lexsort((partials.period, partials.merchant_id))
    merchant, period = partials.merchant_id[order], partials.period[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (merchant[1:] != merchant[:-1]) | (period[1:] != period[:-1])
    starts = np.flatnonzero(first)
    counts = sum_groups(partials.counts[order], starts, source)
    return Partials(merchant[starts], period[starts], counts, partials.month_range, partials.day_range)


def sum_groups(values, starts, source):
    """``np.add.reduceat(values, starts, axis=0)`` that raises instead of wrapping (SPEC §2).

    int64 addition wraps modulo 2**64, so the sum is exact whenever the true
    sum fits; a float64 sum finds the groups that may not, and those are
    checked exactly.
    """
    if len(values) == 0:
        return values[:0].copy()
    sums = np.add.reduceat(values, starts, axis=0)
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
    industry, country, _ = merchants.lookup(merchant_id)
    codes, decode = [], []
    for key in by:
        if key == "merchant":
            codes.append(np.asarray(merchant_id, dtype=np.int64))
            decode.append(lambda c: numeric_array(c, pa.int64()))
        else:  # string keys sort by their values (SPEC §7), size labels included
            if key == "size":
                bucket = size_buckets(orders, months, size_edges)
                labels = np.array(size_labels(size_edges), dtype=object)[bucket]
            else:
                labels = industry if key == "industry" else country
            names, code = np.unique(labels, return_inverse=True)
            codes.append(code.astype(np.int64).reshape(-1))
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


def finalize(partials, merchants, by, period, size_edges=DEFAULT_SIZE_EDGES, source="orders"):
    """The SPEC §7 table from ``Partials`` and an ``inputs.Merchants``; ``source`` names the input in errors."""
    p = combine(partials, source)
    first_month, last_month = p.month_range or (0, 0)
    months = (last_month - first_month + 1) if period == "all" else periods.MONTHS_PER_PERIOD[period]
    _, _, fee = merchants.lookup(p.merchant_id)
    codes, decode = group_codes(p.merchant_id, p.column("orders"), months, merchants, by, size_edges)

    order = np.lexsort([p.period] + codes[::-1])
    codes = [c[order] for c in codes]
    period_index = p.period[order].astype(np.int64)
    n = len(order)
    new_group = np.zeros(n, dtype=bool)
    new_group[:1] = True
    for c in codes:
        new_group[1:] |= c[1:] != c[:-1]
    new_row = new_group.copy()
    new_row[1:] |= period_index[1:] != period_index[:-1]
    starts = np.flatnonzero(new_row)

    sums = sum_groups(p.counts[order], starts, source)
    # With refunds, a merchant-period of only refunds adds to its group's revenue sums but is
    # no merchant (SPEC §4: merchants with >= 1 order) and pays no fee; a group-period without
    # orders is no row (SPEC §3).
    has_orders = p.column("orders")[order] > 0
    merchants_counted = np.add.reduceat(has_orders.astype(np.int64), starts) if n else np.zeros(0, np.int64)
    fee_sum = _fee_sums(np.where(has_orders, fee[order], 0), starts, p.merchant_id[order], merchants.source)
    group_id = np.cumsum(new_group)[starts] - 1
    keep = sums[:, PARTIAL_COLUMNS.index("orders")] > 0
    if not keep.all():
        starts, sums, merchants_counted, fee_sum, group_id = (
            x[keep] for x in (starts, sums, merchants_counted, fee_sum, group_id))
    base = {name: sums[:, i] for i, name in enumerate(PARTIAL_COLUMNS)}
    base["merchants"] = merchants_counted.astype(np.int64)
    base["returning_customers"] = base["customers"] - base["new_customers"]
    base["repeat_orders"] = base["orders"] - base["new_customers"]
    group_period = period_index[starts]

    columns = key_columns(by, [c[starts] for c in codes], decode, merchants)
    days = periods.period_start(period, group_period, first_month).astype(np.int32)
    columns["period_start"] = numeric_array(days, pa.date32())

    # Metric values with validity: (float or int array, bool array).
    metrics = {name: (base[name], np.ones(len(starts), bool)) for name in BASE_COLUMNS if name != "fees"}
    if period == "all":
        metrics["fees"] = (np.zeros(len(starts)), np.zeros(len(starts), bool))
    else:
        metrics["fees"] = (_fees(fee_sum, months), np.ones(len(starts), bool))
    base_order = {name: metrics[name] for name in BASE_COLUMNS}

    prev_period = _shift(group_id, group_period, 1, period)
    customers_prev = _take(metrics["customers"], prev_period)
    derived = _derived(base_order, customers_prev)

    year_ago = _shift(group_id, group_period, periods.PERIODS_PER_YEAR.get(period), period)
    all_metrics = {**base_order, **derived}
    for name, (values, valid) in all_metrics.items():
        columns[name] = _to_arrow(values, valid)
    for name, (values, valid) in all_metrics.items():
        prev_values, prev_valid = _take((values, valid), year_ago)
        delta = difference(values, prev_values)  # exact integer subtraction for counts
        yoy, ok = _ratio(delta, prev_values)
        columns[f"{name}_yoy"] = _to_arrow(yoy * 100, ok & valid & prev_valid)
    return pa.table(columns)


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


def difference(a, b):
    """``a - b`` as float64; for int64 arrays exact even where int64 subtraction would wrap."""
    if a.dtype != np.int64 or b.dtype != np.int64:
        return np.asarray(a, np.float64) - np.asarray(b, np.float64)
    d = a - b  # wraps silently on overflow (refunds near ±9.2e18)
    out = d.astype(np.float64)
    for i in np.flatnonzero(((a ^ b) & (a ^ d)) < 0):
        out[i] = float(int(a[i]) - int(b[i]))
    return out


def _shift(group_id, group_period, lag, period):
    """Row index of the same group ``lag`` periods earlier, -1 where there is none."""
    n = len(group_id)
    if lag is None or period == "all" or n == 0:
        return np.full(n, -1, dtype=np.int64)
    # Ascending, as rows are sorted by group then period. The stride leaves a
    # gap of n_periods between groups, so ``key - lag`` never lands in the
    # previous group.
    stride = 2 * periods.n_periods(period)
    key = group_id * stride + group_period
    idx = np.searchsorted(key, key - lag)
    found = idx < n
    found[found] = key[idx[found]] == (key - lag)[found]
    return np.where(found, idx, -1)


def _take(metric, index):
    values, valid = metric
    found = index >= 0
    safe = np.where(found, index, 0)
    if len(values) == 0:
        return values.copy(), found
    return values[safe], found & valid[safe]


def _ratio(num, den):
    """num / den as float64 with validity (null where den is 0)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    ok = den != 0
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=ok)
    return out, ok


def _lift(a, b, c, d):
    """(a / b) / (c / d), null where any denominator is 0 (SPEC §5 lifts)."""
    members, ok1 = _ratio(a, b)
    others, ok2 = _ratio(c, d)
    lift, ok3 = _ratio(members, others)
    return lift, ok1 & ok2 & ok3


def _derived(m, customers_prev):
    """SPEC §5, each formula as written there, left to right."""
    v = {name: values for name, (values, _) in m.items()}
    prev, prev_ok = customers_prev

    def rate(num, den, ok=True):
        values, ok2 = _ratio(num, den)
        return values * 100, ok2 & ok

    fees, fees_ok = m["fees"]
    return {
        "aov": _ratio(v["revenue"], v["orders"]),
        "reward_aov": _ratio(v["reward_revenue"], v["reward_orders"]),
        "purchase_frequency": _ratio(v["orders"], v["customers"]),
        "reward_purchase_frequency": _ratio(v["reward_orders"], v["reward_customers"]),
        "clv": _ratio(v["revenue"], v["customers"]),
        "reward_clv": _ratio(v["reward_revenue"], v["reward_customers"]),
        "repeat_customer_rate": _ratio(v["repeat_customers"], v["customers"]),
        "repeat_order_share": _ratio(v["orders_from_repeat_customers"], v["orders"]),
        "retention_rate": rate(v["customers"] - v["new_customers"], prev, prev_ok),
        "strict_retention_rate": rate(v["retained_customers"], prev, prev_ok),
        "loyalty_roi": rate(v["reward_revenue"] - fees, fees, fees_ok),
        "member_repeat_lift": _lift(
            v["member_repeat_customers"], v["reward_customers"],
            v["repeat_customers"] - v["member_repeat_customers"], v["customers"] - v["reward_customers"],
        ),
        "member_aov_lift": _lift(
            v["member_revenue"], v["member_orders"],
            difference(v["revenue"], v["member_revenue"]), v["orders"] - v["member_orders"],
        ),
        "member_frequency_lift": _lift(
            v["member_orders"], v["reward_customers"],
            v["orders"] - v["member_orders"], v["customers"] - v["reward_customers"],
        ),
    }


def _to_arrow(values, valid):
    if values.dtype == np.int64 and valid.all():
        return numeric_array(values, pa.int64())
    return numeric_array(values.astype(np.float64), pa.float64(), valid)
