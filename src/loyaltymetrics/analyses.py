"""Drivers of the SPEC §9 analyses: kernel states, the chunk interface, merging.

The kernels (``_analyses`` in Cython, ``numba_analyses`` in Numba) fill
int64 partials into the arrays of a state object defined here. A kernel
object (``CohortKernel``, ``HistKernel``) wraps one engine behind the chunk
interface a chunk-parallel driver needs:

* ``new_state()``: an empty state (one per thread);
* ``scan(state, batch, start, stop)``: rows ``[start, stop)`` of an
  ``inputs.OrderBatch``; the open store-customer carries across calls;
  bad rows raise the same typed ``InputError`` as ``compute``;
* ``end_chunk(state)``: the rows so far end at a store-customer boundary:
  close the open store-customer; returns None (the partials stay in the
  state);
* ``finish(state)``: close what is open and return the state's partials.

One state may see a merchant's rows in several non-contiguous pieces, so
partials are keyed by merchant and combined by addition, never by position.

Periods are local to each merchant's zone (SPEC §3; ``periods.MerchantZones``):
the kernel gets one month table per zone and switches on merchant change.
Every partials object also carries the input's order range: ``day_range``
(UTC days since 1970-01-01 of the earliest and latest order, for the
observation window), ``month_range`` (the local months of the earliest
and the latest order, each in its merchant's zone, as ``compute`` has it:
``period="all"``'s start and its months for ``size``), ``horizon_month``
(the latest local month of any order: the cohorts' horizon, so that no
order's cell is cut off), and ``first_order`` / ``last_order``
(``(order_ts, merchant_id, month)``; ties: the smaller merchant is the
earlier, the larger the later), so that states combine to the same answer
in any order.
``run`` drives a kernel with ``parallel.run`` (one thread or several).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from fractions import Fraction
from decimal import Decimal
import numbers

import numpy as np

from . import _analyses, _scan, parallel, periods
from .errors import AmountOverflowError
from .scan import _row_before, _stop_error

ENGINES = ("cython", "numba")
CURSOR_FIELDS = _analyses.CURSOR_FIELDS
_CUR = {name: i for i, name in enumerate(CURSOR_FIELDS)}
N_BINS = _analyses.N_BINS
HIST_WIDTH = _analyses.HIST_WIDTH   # the bins plus the two refund columns (negative, refund-only)
NEGATIVE_BIN = _analyses.NEGATIVE_BIN
REFUND_BIN = _analyses.REFUND_BIN
_NEEDS = _analyses.NEEDS
INT32_MAX = 2**31 - 1


def engine_module(engine):
    """The kernel module of ``engine`` ("cython", the default, or "numba")."""
    if engine == "cython":
        return _analyses
    if engine == "numba":
        from . import numba_analyses

        return numba_analyses
    raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")


# The kernels' statuses 0-5 are _scan.Status values; this one is theirs alone.
TOTAL_OVERFLOW = 6


def _new_cursor(refunds=False):
    cur = np.zeros(len(CURSOR_FIELDS), dtype=np.int64)
    cur[_CUR["first_month"]] = INT32_MAX   # month cache starts empty: [0, 0); no zone loaded
    cur[_CUR["last_month"]] = -1
    cur[_CUR["early_ts"]] = np.iinfo(np.int64).max
    cur[_CUR["late_ts"]] = -1
    cur[_CUR["refunds"]] = bool(refunds)
    return cur


class _State:
    """What the states share: the cursor, the last batch seen (for error messages)."""

    def __init__(self, refunds=False):
        self.cur = _new_cursor(refunds)
        self.last_batch = None
        self.units_per_day = None       # of the order_ts column scanned (one per input)
        self.local_month = None         # (order_ts, merchant_id) -> local month, set by the kernel's scan

    @property
    def last_row_keys(self):
        """(merchant_id, customer_id, order_ts) of the last row counted, or None."""
        c = self.cur
        if not c[_CUR["started"]]:
            return None
        return tuple(int(c[_CUR[k]]) for k in ("prev_merchant", "prev_customer", "prev_ts"))

    @property
    def horizon_month(self):
        """The latest local month of any order seen, or None."""
        last = int(self.cur[_CUR["last_month"]])
        return None if last < 0 else last

    @property
    def first_order(self):
        """(order_ts, merchant_id, local month) of the earliest order seen, or None."""
        if self.cur[_CUR["late_ts"]] < 0:
            return None
        return tuple(int(self.cur[_CUR[k]]) for k in ("early_ts", "early_merchant", "first_month"))

    @property
    def last_order(self):
        """(order_ts, merchant_id, local month) of the latest order seen, or None."""
        if self.cur[_CUR["late_ts"]] < 0:
            return None
        ts, merchant = int(self.cur[_CUR["late_ts"]]), int(self.cur[_CUR["late_merchant"]])
        return ts, merchant, self.local_month(ts, merchant)

    @property
    def day_range(self):
        """UTC days since 1970-01-01 of the earliest and latest order seen, or None."""
        if self.cur[_CUR["late_ts"]] < 0:
            return None
        return (int(self.cur[_CUR["early_ts"]]) // self.units_per_day,
                int(self.cur[_CUR["late_ts"]]) // self.units_per_day)

    def ranges(self):
        return _ranges([_Ranges(self.day_range, self.first_order, self.last_order, self.horizon_month)])

    def _need(self):
        return int(self.cur[_CUR["need"]]), int(self.cur[_CUR["need_count"]])


def _grown(array, length):
    """``array`` with its first axis grown to ``length``, zero-filled."""
    out = np.zeros((length,) + array.shape[1:], dtype=array.dtype)
    out[: len(array)] = array
    return out


class CohortState(_State):
    """A cohort kernel's state: per-cohort slots of the current merchant, and its output rows."""

    def __init__(self, n_periods, slots=4, rows=1024, refunds=False):
        super().__init__(refunds)
        self.n_periods = n_periods
        self.slot_of = np.full(n_periods, -1, dtype=np.int32)
        self.slot_cohort = np.zeros(slots, dtype=np.int32)
        self.slot_last = np.zeros(slots, dtype=np.int32)
        self.cells = np.zeros((slots, n_periods, 3), dtype=np.int64)
        self.out_merchant = np.zeros(rows, dtype=np.int64)
        self.out_cohort = np.zeros(rows, dtype=np.int32)
        self.out_index = np.zeros(rows, dtype=np.int32)
        self.out_cells = np.zeros((rows, 3), dtype=np.int64)

    def check(self, month_period=None):
        """The shapes the Numba kernels index unchecked (the Cython ones check their own)."""
        slots, rows, n = len(self.slot_cohort), len(self.out_merchant), self.n_periods
        ok = (self.cur.shape == (len(CURSOR_FIELDS),) and self.slot_of.shape == (n,)
              and self.slot_last.shape == (slots,) and self.cells.shape == (slots, n, 3)
              and self.out_cohort.shape == self.out_index.shape == (rows,) and self.out_cells.shape == (rows, 3)
              and 0 <= self.cur[_CUR["n_slots"]] <= slots and 0 <= self.cur[_CUR["n_rows"]] <= rows
              and (month_period is None or (len(month_period) and month_period[-1] < n)))
        if not ok:
            raise ValueError("inconsistent cohort state arrays")

    def grow(self):
        what, count = self._need()
        if what == _NEEDS['slots']:
            n = 2 * len(self.slot_cohort)
            self.slot_cohort, self.slot_last, self.cells = (
                _grown(a, n) for a in (self.slot_cohort, self.slot_last, self.cells))
        elif what == _NEEDS['rows']:
            n = max(2 * len(self.out_merchant), len(self.out_merchant) + count)
            self.out_merchant, self.out_cohort, self.out_index, self.out_cells = (
                _grown(a, n) for a in (self.out_merchant, self.out_cohort, self.out_index, self.out_cells))
        else:
            raise AssertionError(f"cohort kernel asked for {what}")

    def partials(self):
        n = int(self.cur[_CUR["n_rows"]])
        return CohortPartials(self.out_merchant[:n].copy(), self.out_cohort[:n].copy(),
                              self.out_index[:n].copy(), self.out_cells[:n].copy(), **self.ranges())


@dataclass(frozen=True)
class CohortPartials:
    """int64 cells per (merchant, cohort, period_index): active store-customers, orders, revenue.

    Partials of disjoint store-customers add up; ``combine`` concatenates
    (the adding is done once, in ``cohorts_table``).
    """

    merchant_id: np.ndarray   # int64[n]
    cohort: np.ndarray        # int32[n] period index of the cohort
    period_index: np.ndarray  # int32[n] periods since the cohort's
    cells: np.ndarray         # int64[n, 3]: active_customers, orders, revenue
    month_range: tuple | None
    day_range: tuple | None = None
    first_order: tuple | None = None
    last_order: tuple | None = None
    horizon_month: int | None = None

    @staticmethod
    def combine(parts):
        parts = list(parts)
        return CohortPartials(
            np.concatenate([p.merchant_id for p in parts]) if parts else np.empty(0, np.int64),
            np.concatenate([p.cohort for p in parts]) if parts else np.empty(0, np.int32),
            np.concatenate([p.period_index for p in parts]) if parts else np.empty(0, np.int32),
            np.concatenate([p.cells for p in parts]) if parts else np.empty((0, 3), np.int64),
            **_ranges(parts),
        )


@dataclass(frozen=True)
class _Ranges:
    day_range: tuple | None
    first_order: tuple | None
    last_order: tuple | None
    horizon_month: int | None


def _ranges(parts):
    """The order ranges of several states' partials combined (see the module docstring)."""
    parts = [p for p in parts if p.first_order is not None]
    if not parts:
        return dict(month_range=None, day_range=None, first_order=None, last_order=None, horizon_month=None)
    first = min(p.first_order for p in parts)   # (order_ts, merchant_id, month): ties to the smaller merchant
    last = max(p.last_order for p in parts)     # ties to the larger merchant
    return dict(month_range=(first[2], last[2]),
                day_range=(min(p.day_range[0] for p in parts), max(p.day_range[1] for p in parts)),
                first_order=first, last_order=last, horizon_month=max(p.horizon_month for p in parts))


@dataclass(frozen=True)
class Targets:
    """Value ranges to look at again, per (merchant, period), sorted by both (concentration)."""

    merchant_id: np.ndarray   # int64
    period: np.ndarray        # int32
    low: np.ndarray           # int64: store-customer-period revenues in [low, high]
    high: np.ndarray          # int64
    collect: np.ndarray       # uint8: 1 collect the values, 0 histogram them (bins of value - low)

    @staticmethod
    def none():
        return Targets(np.empty(0, np.int64), np.empty(0, np.int32), np.empty(0, np.int64),
                       np.empty(0, np.int64), np.empty(0, np.uint8))


class HistState(_State):
    """A histogram kernel's state (see ``_analyses.HistArrays`` for the arrays)."""

    def __init__(self, n_periods, targets=None, slots=4, rows=1024, refunds=False):
        super().__init__(refunds)
        self.n_periods = n_periods
        self.first_pass = targets is None
        targets = targets or Targets.none()
        self.slot_of = np.full(n_periods, -1, dtype=np.int32)
        self.slot_period = np.zeros(slots, dtype=np.int32)
        self.slot_orders = np.zeros(slots, dtype=np.int64)
        self.slot_bins = np.zeros((slots, 2), dtype=np.int32)
        self.hist_count = np.zeros((slots, HIST_WIDTH), dtype=np.int64)
        self.hist_sum = np.zeros((slots, HIST_WIDTH), dtype=np.int64)
        self.out_merchant = np.zeros(rows if self.first_pass else 0, dtype=np.int64)
        self.out_period = np.zeros(len(self.out_merchant), dtype=np.int32)
        self.out_orders = np.zeros(len(self.out_merchant), dtype=np.int64)
        self.bin_key = np.zeros(rows, dtype=np.int64)
        self.bin_index = np.zeros(rows, dtype=np.int32)
        self.bin_count = np.zeros(rows, dtype=np.int64)
        self.bin_sum = np.zeros(rows, dtype=np.int64)
        self.value_target = np.zeros(0 if self.first_pass else rows, dtype=np.int64)
        self.value = np.zeros(len(self.value_target), dtype=np.int64)
        self.target_merchant = targets.merchant_id
        self.target_period = targets.period
        self.target_low = targets.low
        self.target_high = targets.high
        self.target_collect = targets.collect
        self.period_target = np.full(n_periods, -1, dtype=np.int32)

    def check(self, month_period=None):
        """The shapes the Numba kernels index unchecked (the Cython ones check their own)."""
        c, n, slots = self.cur, self.n_periods, len(self.slot_period)
        rows, bins, values, targets = (len(self.out_merchant), len(self.bin_key), len(self.value),
                                       len(self.target_merchant))
        ok = (c.shape == (len(CURSOR_FIELDS),) and self.slot_of.shape == self.period_target.shape == (n,)
              and self.slot_orders.shape == (slots,) and self.slot_bins.shape == (slots, 2)
              and self.hist_count.shape == self.hist_sum.shape == (slots, HIST_WIDTH)
              and self.out_period.shape == self.out_orders.shape == (rows,)
              and self.bin_index.shape == self.bin_count.shape == self.bin_sum.shape == (bins,)
              and self.value_target.shape == (values,)
              and self.target_period.shape == self.target_low.shape == self.target_high.shape
              == self.target_collect.shape == (targets,)
              and (not targets or (self.target_period.min() >= 0 and self.target_period.max() < n))
              and 0 <= c[_CUR["n_slots"]] <= slots and 0 <= c[_CUR["n_rows"]] <= rows
              and 0 <= c[_CUR["n_bin_rows"]] <= bins and 0 <= c[_CUR["n_values"]] <= values
              and (month_period is None or (len(month_period) and month_period[-1] < n)))
        if not ok:
            raise ValueError("inconsistent histogram state arrays")

    def grow(self):
        what, count = self._need()
        if what == _NEEDS['slots']:
            n = 2 * len(self.slot_period)
            self.slot_period, self.slot_orders, self.slot_bins, self.hist_count, self.hist_sum = (
                _grown(a, n) for a in (self.slot_period, self.slot_orders, self.slot_bins, self.hist_count,
                                       self.hist_sum))
        elif what == _NEEDS['rows']:
            n = max(2 * len(self.out_merchant), len(self.out_merchant) + count)
            self.out_merchant, self.out_period, self.out_orders = (
                _grown(a, n) for a in (self.out_merchant, self.out_period, self.out_orders))
            n = max(2 * len(self.bin_key), len(self.bin_key) + count)
            self.bin_key, self.bin_index, self.bin_count, self.bin_sum = (
                _grown(a, n) for a in (self.bin_key, self.bin_index, self.bin_count, self.bin_sum))
        elif what == _NEEDS['values']:
            n = max(2 * len(self.value), 1024)
            self.value_target, self.value = (_grown(a, n) for a in (self.value_target, self.value))
        else:
            raise AssertionError(f"histogram kernel asked for {what}")

    def partials(self):
        c = self.cur
        rows, bins, values = (int(c[_CUR[k]]) for k in ("n_rows", "n_bin_rows", "n_values"))
        return HistPartials(
            self.out_merchant[:rows].copy(), self.out_period[:rows].copy(), self.out_orders[:rows].copy(),
            self.bin_key[:bins].copy(), self.bin_index[:bins].copy(), self.bin_count[:bins].copy(),
            self.bin_sum[:bins].copy(), self.value_target[:values].copy(), self.value[:values].copy(),
            **self.ranges(),
        )


@dataclass(frozen=True)
class HistPartials:
    """What a histogram pass emits.

    First pass: one row per (merchant, period) with the merchant's orders
    in it, and the non-empty bins of its store-customer-period revenues
    (``bin_key`` = that row). Later passes: bins and collected values keyed
    by target index.
    """

    merchant_id: np.ndarray
    period: np.ndarray
    orders: np.ndarray
    bin_key: np.ndarray
    bin_index: np.ndarray
    bin_count: np.ndarray
    bin_sum: np.ndarray
    value_target: np.ndarray
    value: np.ndarray
    month_range: tuple | None
    day_range: tuple | None = None
    first_order: tuple | None = None
    last_order: tuple | None = None
    horizon_month: int | None = None

    @staticmethod
    def combine(parts):
        """Concatenate several states' partials (first-pass keys are shifted to stay row numbers)."""
        parts = list(parts)
        offsets = np.cumsum([0] + [len(p.merchant_id) for p in parts])
        cat = lambda name, dtype: (np.concatenate([getattr(p, name) for p in parts]) if parts  # noqa: E731
                                   else np.empty(0, dtype))
        keys = [p.bin_key + (offsets[i] if len(p.merchant_id) else 0) for i, p in enumerate(parts)]
        return HistPartials(
            cat("merchant_id", np.int64), cat("period", np.int32), cat("orders", np.int64),
            np.concatenate(keys) if parts else np.empty(0, np.int64), cat("bin_index", np.int32),
            cat("bin_count", np.int64), cat("bin_sum", np.int64), cat("value_target", np.int64),
            cat("value", np.int64), **_ranges(parts),
        )


def merchant_zones(merchants, timezone=None):
    """``periods.MerchantZones`` of an ``inputs.Merchants`` (SPEC §3): its ``timezone``, else ``timezone``, else UTC."""
    return merchants.zones(None if timezone is None else periods.check_zone(timezone))


_UTC_ZONES = periods.MerchantZones.utc()


@lru_cache(maxsize=64)
def _zone_month_starts(zone_names, units_per_day):
    starts = np.stack([periods.local_month_starts(z, units_per_day) for z in zone_names])
    starts.setflags(write=False)
    return starts


class _Kernel:
    """The chunk interface over one engine's ``*_scan`` / ``*_end`` functions."""

    def __init__(self, period, engine="cython", refunds=False, zones=None):
        self.period = period
        self.engine = engine
        self.refunds = bool(refunds)
        self.zones = periods.MerchantZones.utc() if zones is None else zones
        self.module = engine_module(engine)
        self.month_period = periods.month_period(period)
        self.n_periods = periods.n_periods(period)

    def tables(self, units_per_day, dates=False):
        """(month tables, month starts, shift, zones) for a column's units (cached).

        ``dates``: the column holds calendar dates (date32, date64), the same
        date in every zone, so every merchant gets the UTC tables.
        """
        zones = _UTC_ZONES if dates else self.zones
        return (periods.period_tables("month", units_per_day, zones),
                _zone_month_starts(zones.zones, int(units_per_day)), periods.bucket_shift(units_per_day), zones)

    def scan(self, state, batch, start=0, stop=None):
        stop = len(batch) if stop is None else stop
        month_table, month_starts, shift, zones = self.tables(batch.units_per_day, getattr(batch, "dates", False))
        ts_max = periods.ts_max(batch.units_per_day)
        state.units_per_day = batch.units_per_day
        state.local_month = lambda ts, merchant, z=zones, u=batch.units_per_day: periods.local_month_of(
            ts, u, z.zone_name(merchant))
        row = start
        while True:
            status, row = self._scan(state, batch.merchant_id, batch.customer_id, batch.order_ts, batch.amount,
                                     month_table, month_starts, zones.merchant_id, zones.zone,
                                     self.month_period, shift, ts_max, row, stop)
            if status == _scan.Status.OK:
                break
            if status == TOTAL_OVERFLOW:
                raise _total_overflow(state, batch, row)
            if status != _scan.Status.NEED_SPACE:
                raise _stop_error(_scan.Status(status), batch, row, state)
            state.grow()
        if stop > start:
            state.last_batch = batch

    def _close(self, state, flush):
        while True:
            status = self._end(state, flush)
            if status == _scan.Status.OK:
                return
            if status != _scan.Status.NEED_SPACE:
                batch = state.last_batch
                raise _total_overflow(state, batch, len(batch))
            state.grow()

    def end_chunk(self, state):
        self._close(state, flush=False)
        return None

    def finish(self, state):
        self._close(state, flush=True)
        return state.partials()


class CohortKernel(_Kernel):
    """Cells per (merchant, cohort, period_index) (SPEC §9 cohorts)."""

    def __init__(self, period, engine="cython", refunds=False, zones=None):
        super().__init__(period, engine, refunds, zones)
        self._scan, self._end = self.module.cohort_scan, self.module.cohort_end

    def new_state(self):
        return CohortState(self.n_periods, refunds=self.refunds)

    combine = staticmethod(CohortPartials.combine)


class HistKernel(_Kernel):
    """Histograms of store-customer-period revenue per (merchant, period) (SPEC §9 concentration).

    Without ``targets`` (the first pass): every store-customer-period, in
    bins from 0, plus the merchant's orders per period (with ``refunds``,
    negative revenues in ``NEGATIVE_BIN`` and refund-only runs' revenue in
    ``REFUND_BIN``). With ``targets``:
    only revenues inside a (merchant, period)'s target range, collected or
    in bins from the range's lower end.
    """

    def __init__(self, period, engine="cython", targets=None, refunds=False, zones=None):
        super().__init__(period, engine, refunds, zones)
        self.targets = targets
        self._scan, self._end = self.module.hist_scan, self.module.hist_end

    def new_state(self):
        return HistState(self.n_periods, self.targets, refunds=self.refunds)

    combine = staticmethod(HistPartials.combine)


def run(kernel, batches, threads=1, chunk_rows=parallel.DEFAULT_CHUNK_ROWS, progress=None):
    """The partials of ``batches`` through ``kernel``, its states' partials combined.

    ``progress(rows)`` is called as rows are done (``parallel.run``).
    """
    return kernel.combine(parallel.run(batches, kernel, threads, chunk_rows, progress))


def _total_overflow(state, batch, row):
    """The store-customer closed at ``row`` of ``batch`` overflowed a sum of its merchant."""
    m, c, _ = state.last_row_keys
    where = _row_before(batch, row) + (f" (amount {batch.amount[row - 1]})" if row > 0 else "")
    return AmountOverflowError(
        batch.source, max(batch.first_row + row - 1, 0),
        f"the orders of store-customer (merchant_id {m}, customer_id {c}), ending at {where}, "
        f"make a revenue total of merchant {m} overflow int64 (more than 9.2e18 minor units)",
    )


# --- the top fraction ------------------------------------------------------------

def check_top(top):
    """``top`` as an exact Fraction in (0, 1].

    A float is read as the decimal it prints as (``0.07`` is 7/100, not the
    binary double just above it), so ``ceil(0.07 × 100)`` is 7 as an
    analyst expects, not 8. Fractions and Decimals are taken exactly.
    """
    if isinstance(top, bool) or not isinstance(top, (numbers.Real, Decimal)):
        raise ValueError(f"top must be a number in (0, 1]; got {top!r}")
    if isinstance(top, (Fraction, Decimal, numbers.Integral)):
        exact = Fraction(top) if not isinstance(top, Decimal) or top.is_finite() else None
    else:
        exact = Fraction(str(float(top))) if math.isfinite(float(top)) else None
    if exact is None or not 0 < exact <= 1:
        raise ValueError(f"top must be a number in (0, 1]; got {top!r}")
    return exact


def top_count(customers, top):
    """``ceil(top × customers)`` exactly, per entry (SPEC §9)."""
    num, den = top.numerator, top.denominator
    return np.array([-((-int(c) * num) // den) for c in customers], dtype=np.int64)
