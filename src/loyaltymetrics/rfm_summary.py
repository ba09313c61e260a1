"""RFM summary per store-customer (SPEC §9 ``rfm``), as lifetimes' ``summary_data_from_transaction_data``.

lifetimes truncates every order's time to the start of its ``freq`` period
(pandas periods: ``D`` days, ``W`` weeks ``W-SUN`` that start on Monday,
``M`` calendar months), drops orders in periods after the observation
period, and merges a customer's orders of one period into one transaction
whose value is their sum. Then, per customer:

- ``frequency``: its periods minus one (the first), or all of them with
  ``include_first_transaction``;
- ``recency``: from the start of its first period to the start of its last;
- ``T``: from the start of its first period to the start of the observation
  period;
- ``monetary_value``: the mean of its period sums over the repeat periods
  (every period with ``include_first_transaction``), 0 when there are none.

Durations are in units of ``freq`` as pandas divides them: a timedelta over
``np.timedelta64(1, freq)``; for ``M`` that is NumPy's mean Gregorian month,
2,629,746 s (365.2425 / 12 days), so recency and T in months are not whole
numbers. Here they are computed as ``float64(days × 86400) / seconds per
unit``: both operands are exact, so the quotient is the correctly rounded
value pandas computes from nanoseconds (or microseconds), bit for bit.

Time zones (SPEC §3): days, weeks and months are each merchant's local
ones (the merchants table's ``timezone``, else ``timezone=``, else UTC), so
that ``rfm`` equals lifetimes given each order's local wall-clock time as a
naive timestamp. ``observation_end`` and ``calibration_end`` are wall-clock
dates and times, read in each merchant's zone as lifetimes compares them
with naive local times (an aware datetime is converted to UTC first, and its
UTC wall clock is used). The default observation end is the latest local
date of any order. The kernel gets each zone's UTC offsets as segments of
constant offset (``zone_offsets``, from ``zoneinfo``), built once per zone
and unit, and switches zone on a merchant change. Local wall-clock times
repeat in the hour a zone's clocks fall back, so a holdout order may come
before a store-customer's first calibration order: the kernel counts
holdout orders from each store-customer's first row.

The kernel (``kernels/_rfm.pyx``, or its Numba twin ``numba_rfm``) emits
int64 partials per store-customer; ``_record_batch`` is the finalize step
that turns them into the output columns.
"""
import datetime as dt
import functools
import zoneinfo
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa

from . import _rfm, _scan, parallel, periods
from . import progress as _progress
from ._types import ColumnMap, DateLike, Engine, Merchants, Orders
from .arrays import numeric_array
from .errors import AmountOverflowError, NegativeAmountError, reporting_resource_errors
from .inputs import _in_memory, count_rows, order_batches, read_merchants, rereadable
from .outputs import atomic_output, check_output_path
from .scan import _stop_error

FREQS = ("D", "W", "M")
ENGINES = ("cython", "numba")
SECONDS_PER_DAY = 86_400
# pandas divides by np.timedelta64(1, freq); NumPy's month is 365.2425 / 12 days.
SECONDS_PER_UNIT = {
    "D": SECONDS_PER_DAY,
    "W": 7 * SECONDS_PER_DAY,
    "M": int(np.timedelta64(1, "M").astype("timedelta64[s]").astype(np.int64)),
}
# Day 0 (1970-01-01) is a Thursday; pandas' weekly period W-SUN starts on Monday, day -3.
_FIRST_MONDAY = -3
INT64_MAX = np.iinfo(np.int64).max
OUTPUT_CAPACITY = 1 << 16   # store-customers per output record batch

SCHEMA = pa.schema([
    ("merchant_id", pa.int64()),
    ("customer_id", pa.int64()),
    ("frequency", pa.int64()),
    ("recency", pa.float64()),
    ("T", pa.float64()),
    ("monetary_value", pa.float64()),
])
# With calibration_end: the columns above are lifetimes' ``_cal`` ones, and these follow.
HOLDOUT_SCHEMA = pa.schema(list(SCHEMA) + [
    ("frequency_holdout", pa.int64()),
    ("monetary_value_holdout", pa.float64()),
    ("duration_holdout", pa.float64()),
])
NS_PER_DAY = SECONDS_PER_DAY * 10**9


# --- periods ------------------------------------------------------------------

# Local days count from 1969-12-31 (00:30 UTC on 1970-01-01 is 1969-12-31 in New York) through
# 2263-01-01 (23:00 UTC on 2262-12-31 in Tokyo); ``day_period(freq)[day - FIRST_DAY]``.
FIRST_DAY = -1
N_LOCAL_DAYS = periods.N_DAYS + 2

def check_freq(freq):
    if freq not in FREQS:
        raise ValueError(f"freq must be one of {', '.join(FREQS)}; got {freq!r}")
    return freq


@lru_cache(maxsize=None)
def day_period(freq):
    """int64[N_LOCAL_DAYS]: the ``freq`` period index of each local day from ``FIRST_DAY`` (index 0)."""
    days = np.arange(FIRST_DAY, FIRST_DAY + N_LOCAL_DAYS, dtype=np.int64)
    if freq == "D":
        return days - FIRST_DAY
    if freq == "W":
        return (days - _FIRST_MONDAY) // 7
    # Months since 1969-01, as periods numbers them.
    return days.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64) + periods.EPOCH_MONTH


def period_of_day(day, freq):
    """The ``freq`` period index of local day ``day`` (since 1970-01-01, from ``FIRST_DAY``)."""
    return int(day_period(freq)[day - FIRST_DAY])


@lru_cache(maxsize=None)
def period_start_day(freq):
    """int64[n_periods + 1]: first day (since 1970-01-01) of each period index, and of the one after the last."""
    n = int(day_period(freq)[-1]) + 2
    index = np.arange(n, dtype=np.int64)
    if freq == "D":
        return index + FIRST_DAY
    if freq == "W":
        return index * 7 + _FIRST_MONDAY
    return (index - periods.EPOCH_MONTH).astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)


@lru_cache(maxsize=None)
def period_start_ts(freq, units_per_day):
    """int64[n_periods + 1]: first local timestamp of each period in the given units, clamped to int64."""
    days = period_start_day(freq)
    return np.where(days > INT64_MAX // units_per_day, INT64_MAX, days * units_per_day)


# --- time zones -----------------------------------------------------------------

_UTC_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


@lru_cache(maxsize=None)
def _offset_changes(zone):
    """((first UTC second, offset in seconds), ...) of ``zone`` over the valid range: where its offset changes.

    Found with ``zoneinfo``: the offset at each UTC midnight, and where two
    days differ, the second of each change by bisection (offsets change on
    whole seconds). Two changes that undo each other within one day would
    be missed; no zone has had one.
    """
    tz = zoneinfo.ZoneInfo(zone)

    def offset(second):
        return int((_UTC_EPOCH + dt.timedelta(seconds=second)).astimezone(tz).utcoffset().total_seconds())

    changes = [(0, offset(0))]
    prev_day, prev = 0, changes[0][1]
    for second in range(86_400, (periods.N_DAYS + 1) * 86_400, 86_400):
        now = offset(second)
        lo = prev_day
        while now != prev:
            hi = second                 # the first second in (lo, hi] whose offset is not prev's
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if offset(mid) != prev:
                    hi = mid
                else:
                    lo = mid
            prev = offset(hi)
            changes.append((hi, prev))
            lo = hi
        prev_day = second
    return tuple(changes)


@lru_cache(maxsize=None)
def zone_offsets(zone, units_per_day):
    """(starts, offsets): int64 arrays of ``zone``'s segments of constant UTC offset, in the given units.

    Segment ``i`` is ``[starts[i], starts[i + 1])`` (the last runs to the end
    of the valid range); ``starts[0] == 0``. A date32 column (``units_per_day
    == 1``) is a calendar date, the same in every zone: one segment, offset 0.
    """
    periods.check_zone(zone)
    units_per_day = int(units_per_day)
    if units_per_day == 1:
        starts, offsets = np.zeros(1, np.int64), np.zeros(1, np.int64)
    else:
        scale = units_per_day // SECONDS_PER_DAY
        top = periods.ts_max(units_per_day)
        changes = [(s * scale, o * scale) for s, o in _offset_changes(zone) if s * scale <= top]
        starts = np.array([s for s, _ in changes], np.int64)
        offsets = np.array([o for _, o in changes], np.int64)
    starts.setflags(write=False)
    offsets.setflags(write=False)
    return starts, offsets


@lru_cache(maxsize=64)
def _offset_tables(zone_names, units_per_day):
    """(off_start, off_value, zone_first, seg_bucket, shift) of the zones stacked, as the kernels take them.

    ``seg_bucket[z * buckets + (t >> shift)]`` is the segment of zone ``z``
    holding that bucket's first timestamp (``periods.bucket_shift``: at
    most 28 days), so the kernel finds a timestamp's segment in a step or
    two instead of a binary search.
    """
    tables = [zone_offsets(z, units_per_day) for z in zone_names]
    first = np.cumsum([0] + [len(t[0]) for t in tables]).astype(np.int64)
    off_start = np.concatenate([t[0] for t in tables])
    off_value = np.concatenate([t[1] for t in tables])
    shift = periods.bucket_shift(units_per_day)
    bucket_starts = np.arange((periods.ts_max(units_per_day) >> shift) + 1, dtype=np.int64) << shift
    seg_bucket = np.concatenate([np.searchsorted(t[0], bucket_starts, "right") - 1 + first[z]
                                 for z, t in enumerate(tables)]).astype(np.int64)
    for a in (off_start, off_value, first, seg_bucket):
        a.setflags(write=False)
    return off_start, off_value, first, seg_bucket, shift


_UTC_ZONES = periods.MerchantZones.utc()


def local_days(order_ts, zone, units_per_day):
    """Local day numbers (since 1970-01-01) of valid raw timestamps in ``zone``."""
    starts, offsets = zone_offsets(zone, units_per_day)
    ts = np.asarray(order_ts, dtype=np.int64)
    offset = offsets[np.searchsorted(starts, ts, "right") - 1]
    # t // u + floor((t % u + offset) / u): no overflow near INT64_MAX, |offset| < a day.
    return ts // units_per_day + (ts % units_per_day + offset) // units_per_day


def observation_day(value, name="observation_end"):
    """Day since 1970-01-01 of an observation end: a date, datetime, NumPy datetime64 or ISO string.

    The date as written: a wall-clock date, read in each merchant's zone
    (UTC without zones); an aware datetime is converted to UTC first.
    """
    original = value
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{name} {original!r} is not an ISO date or datetime (YYYY-MM-DD[THH:MM:SS])") from None
    if isinstance(value, np.datetime64):
        if np.isnat(value):
            raise ValueError(f"{name} is NaT")
        day = int(value.astype("datetime64[D]").astype(np.int64))
    elif isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        day = (value.date() - dt.date(1970, 1, 1)).days
    elif isinstance(value, dt.date):
        day = (value - dt.date(1970, 1, 1)).days
    else:
        raise TypeError(f"{name} must be a date, datetime, numpy.datetime64 or ISO string; got {type(original).__name__}")
    if not 0 <= day < periods.N_DAYS:
        raise ValueError(f"{name} {original!r} is outside 1970-01-01 .. 2262-12-31")
    return day


def instant_ns(value, name):
    """Nanoseconds since 1970-01-01 of a wall-clock time given as ``observation_day`` takes it (a date is its midnight).

    lifetimes' ``calibration_and_holdout_data`` compares raw order times
    with ``pd.to_datetime(calibration_period_end)``: a date means its
    midnight, so orders later that day are after it.
    """
    observation_day(value, name)    # the same forms and range checks
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if isinstance(value, np.datetime64):
        if np.datetime_data(value.dtype)[0] in ("ns", "ps", "fs", "as"):
            return int(value.astype("datetime64[ns]").astype(np.int64))
        return int(value.astype("datetime64[us]").astype(np.int64)) * 1000
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        micros = (value - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1)
        return int(micros) * 1000 + int(getattr(value, "nanosecond", 0))
    return (value - dt.date(1970, 1, 1)).days * NS_PER_DAY


@dataclass(frozen=True)
class Holdout:
    """Calibration/holdout mode: the calibration end, the holdout end (None: no limit) and its day."""

    calibration_ns: int
    end_ns: object
    end_day: int

    def thresholds(self, units_per_day):
        """(calibration_ts, holdout_end_ts) in a column's units: ``ts <= threshold`` iff the instant is at or before."""
        def floor(ns):
            return max(min(ns * units_per_day // NS_PER_DAY, INT64_MAX), -INT64_MAX)
        return floor(self.calibration_ns), INT64_MAX if self.end_ns is None else floor(self.end_ns)


# --- the kernel, in the shape the chunk-parallel driver runs ---------------------

def engine_module(engine):
    """The kernel module of ``engine``: same ``RfmState``, ``scan``, ``Status`` in each."""
    if engine == "cython":
        return _rfm
    if engine == "numba":
        from . import numba_rfm

        return numba_rfm
    raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")


@dataclass
class RfmRun:
    """One thread's kernel state: the engine's state and the finished output not yet handed out."""

    engine_state: object
    ready: list = field(default_factory=list)   # finalized pyarrow.RecordBatch es


class RfmKernel:
    """The RFM kernel in the shape ``parallel.run`` drives.

    ``new_state()`` → a state; ``scan(state, batch, start, stop)`` scans rows
    ``[start, stop)`` of an ``inputs.OrderBatch``, carrying the open
    store-customer across calls and raising typed ``InputError`` s;
    ``end_chunk(state)`` closes the open store-customer (the rows given so
    far end at a store-customer boundary) and returns the state's output
    since its last ``end_chunk``; ``finish(state)`` does the same at the end
    of the input. Output is a list of ``pyarrow.RecordBatch`` es with
    ``SCHEMA`` and at most ``capacity`` rows each, in input order, or None.
    Combining the outputs of states is concatenation in chunk order.
    """

    def __init__(self, freq="D", observation_day=0, include_first_transaction=False,
                 engine="cython", capacity=OUTPUT_CAPACITY, holdout=None, zones=None):
        self.freq = check_freq(freq)
        self.zones = periods.MerchantZones.utc() if zones is None else zones
        # Calibration/holdout: observation_day is the calibration end's day, ``holdout`` a ``Holdout``.
        self.holdout = holdout
        self.schema = SCHEMA if holdout is None else HOLDOUT_SCHEMA
        self.engine = engine_module(engine)
        self.observation_period = period_of_day(observation_day, freq)
        self.observation_start_day = int(period_start_day(freq)[self.observation_period])
        self.include_first = bool(include_first_transaction)
        self.capacity = capacity
        self._day_period = day_period(freq)
        self._n_periods = len(period_start_day(freq)) - 1

    def new_state(self):
        return RfmRun(self.engine.RfmState(
            self._day_period, self._n_periods, self.observation_period,
            include_first=self.include_first, capacity=self.capacity,
        ))

    def scan(self, state, batch, start=0, stop=None):
        stop = len(batch) if stop is None else stop
        period_start = period_start_ts(self.freq, batch.units_per_day)
        ts_max = periods.ts_max(batch.units_per_day)
        engine, st = self.engine, state.engine_state
        limits = () if self.holdout is None else self.holdout.thresholds(batch.units_per_day)
        # Calendar dates (date32, date64) are the same date in every zone: UTC for every merchant.
        zones = _UTC_ZONES if getattr(batch, "dates", False) else self.zones
        off_start, off_value, zone_first, seg_bucket, shift = _offset_tables(zones.zones, int(batch.units_per_day))
        row = start
        while True:
            status, row = engine.scan(st, batch.merchant_id, batch.customer_id, batch.order_ts, batch.amount,
                                      period_start, off_start, off_value, zone_first, seg_bucket,
                                      zones.merchant_id, zones.zone, shift, batch.units_per_day, ts_max,
                                      row, stop, *limits)
            if status == engine.Status.OK:
                return
            if status != engine.Status.NEED_SPACE:
                raise _error(engine.Status(status), batch, row, st)
            self._move_output(state)

    def end_chunk(self, state):
        while state.engine_state.close() == self.engine.Status.NEED_SPACE:
            self._move_output(state)
        self._move_output(state)
        ready, state.ready = state.ready, []
        return ready or None

    finish = end_chunk

    def flush(self, state):
        """The store-customers closed so far (the open one stays open), so that output streams."""
        self._move_output(state)
        ready, state.ready = state.ready, []
        return ready or None

    def _move_output(self, state):
        rows = state.engine_state.take_output()
        if rows.shape[1]:
            state.ready.append(self._record_batch(rows))

    def _record_batch(self, rows):
        """Finalize: int64 partials per store-customer → the output columns (floats only here).

        ``rows`` is int64[6, n], one contiguous row per ``OUTPUT_COLUMNS``
        entry. Durations are float64(days) × 86400 / seconds per unit: the
        product is exact, so this is the correctly rounded quotient.
        """
        merchant_id, customer_id, frequency, first_period, last_period, value = rows[:6]
        frequency -= not self.include_first    # periods → the periods monetary_value averages over
        start_day = period_start_day(self.freq)
        first_day = start_day[first_period]
        seconds = float(SECONDS_PER_UNIT[self.freq])
        recency = (start_day[last_period] - first_day).astype(np.float64)
        recency *= SECONDS_PER_DAY
        recency /= seconds
        age = (self.observation_start_day - first_day).astype(np.float64)
        age *= SECONDS_PER_DAY
        age /= seconds
        monetary_value = np.divide(value.astype(np.float64), frequency, out=np.zeros(len(value)),
                                   where=frequency > 0)
        arrays = [numeric_array(merchant_id, pa.int64()), numeric_array(customer_id, pa.int64()),
                  numeric_array(frequency, pa.int64()), numeric_array(recency, pa.float64()),
                  numeric_array(age, pa.float64()), numeric_array(monetary_value, pa.float64())]
        if self.holdout is not None:
            # lifetimes: distinct periods of the holdout orders; the mean amount per holdout *order*;
            # the periods from the calibration end's to the holdout end's (pandas Period difference).
            holdout_periods, holdout_orders, holdout_value = rows[6:9]
            mean = np.divide(holdout_value.astype(np.float64), holdout_orders, out=np.zeros(len(holdout_value)),
                             where=holdout_orders > 0)
            duration = float(period_of_day(self.holdout.end_day, self.freq) - self.observation_period)
            arrays += [numeric_array(holdout_periods, pa.int64()), numeric_array(mean, pa.float64()),
                       numeric_array(np.full(len(mean), duration), pa.float64())]
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)


def _error(status, batch, row, engine_state):
    """The typed error of a kernel stop, worded as compute's (``scan._stop_error``)."""
    if status.name == "AMOUNT_OVERFLOW":
        return AmountOverflowError(
            batch.source, batch.first_row + row,
            f"amount {int(batch.amount[row])} makes its store-customer's sum of amounts overflow int64 "
            "(more than 9.2e18 minor units)",
        )
    if status.name == "NEGATIVE_AMOUNT":  # SPEC §9: rfm takes no refunds, so no flag to name
        return NegativeAmountError(batch.source, batch.first_row + row,
                                   f"negative amount {int(batch.amount[row])}: rfm takes no refunds; net them "
                                   "into their orders first (loyaltymetrics prepare does)")
    return _stop_error(_scan.Status[status.name], batch, row, engine_state)


def output_batches(batches, kernel, threads=None, chunk_rows=parallel.DEFAULT_CHUNK_ROWS, progress=False,
                   total=None):
    """Yield the output record batches of ``kernel`` over ``batches`` in input order (``parallel.run``).

    With ``progress``, a bar (of ``total`` rows) counts the rows scanned from
    the first read on, and closes when the output ends.
    """
    with _progress.bar(total, progress, desc="rfm") as bar:
        for output in parallel.run(batches, kernel, threads, chunk_rows, bar.update):
            yield from output


# --- the entry point -----------------------------------------------------------

def last_order_day(orders, columns=None, zones=None):
    """Local day (since 1970-01-01) of the latest order in ``orders`` (each in its merchant's zone), or None.

    A separate pass over the input: lifetimes' default observation end is
    the latest order, which a single streaming pass only knows at its end.
    In one zone the latest instant has the latest local date, so each batch
    contributes the latest order of each merchant (one per zone would do;
    merchants are contiguous, so this is one ``reduceat``).
    """
    zones = periods.MerchantZones.utc() if zones is None else zones
    latest = None
    for batch in order_batches(orders, columns):
        if len(batch) == 0:
            continue
        batch.populate(columns=("merchant_id", "order_ts"))   # a truncated file: InputChangedError, not SIGBUS
        if len(zones.merchant_id) == 0:
            merchants, tops = batch.merchant_id[:1], np.array([batch.order_ts.max()])
        else:
            merchant_id = np.asarray(batch.merchant_id)
            starts = np.concatenate([[0], np.flatnonzero(merchant_id[1:] != merchant_id[:-1]) + 1])
            merchants, tops = merchant_id[starts], np.maximum.reduceat(np.asarray(batch.order_ts), starts)
        batch.check()                           # the maximum of whole pages, not of zeros
        # Out of range: the scan reports it as a TimestampRangeError at its row.
        tops = np.clip(tops.astype(np.int64), 0, periods.ts_max(batch.units_per_day))
        dates = getattr(batch, "dates", False)     # calendar dates: the same date in every zone
        for m, top in zip(merchants.tolist(), tops.tolist()):
            day = int(local_days([top], "UTC" if dates else zones.zone_name(m), batch.units_per_day)[0])
            latest = day if latest is None else max(latest, day)
        batch.release()
    return latest


@reporting_resource_errors
def rfm(orders: Orders, freq: Literal["D", "W", "M"] = "D", observation_end: DateLike = None,
        include_first_transaction: bool = False, *, calibration_end: DateLike = None,
        columns: ColumnMap | None = None, engine: Engine = "cython", threads: int | None = None,
        chunk_rows: int = parallel.DEFAULT_CHUNK_ROWS, progress: bool = False, merchants: Merchants | None = None,
        timezone: str | None = None, presorted: bool = True,
        memory_limit: int | None = None) -> pa.RecordBatchReader:
    """Frequency, recency, T and monetary value per store-customer (SPEC §9), streamed.

    Equal to ``lifetimes.utils.summary_data_from_transaction_data(orders,
    customer, order_ts, amount, freq=freq, observation_period_end=
    observation_end, include_first_transaction=...)`` with the customer
    being the store-customer ``(merchant_id, customer_id)`` and times the
    local wall-clock times of each order in its merchant's zone (UTC
    without zones).

    Parameters
    ----------
    orders : path or table
        Order rows sorted by (merchant_id, customer_id, order_ts), as for
        ``compute`` (SPEC §2).
    freq : {"D", "W", "M"}
        Days, weeks (Monday to Sunday, pandas ``W-SUN``) or calendar months.
    observation_end : date, datetime, numpy.datetime64 or ISO string, optional
        The end of the observation (a local date in each merchant's zone;
        an aware datetime is converted to UTC first). Its
        ``freq`` period is the last one counted: orders in later periods are
        left out, and T runs to the start of that period. Default: the
        latest local date of any order in the input, as in lifetimes; that takes one extra
        pass over ``order_ts``, so a one-shot stream (a
        ``RecordBatchReader``) needs it given.
    include_first_transaction : bool
        Count the first period in ``frequency`` and ``monetary_value``.
    calibration_end : date, datetime, numpy.datetime64 or ISO string, optional
        Calibration/holdout mode, as lifetimes'
        ``calibration_and_holdout_data(..., calibration_period_end=
        calibration_end, observation_period_end=observation_end)``: the
        summary columns are those of the orders at or before this instant
        (a date is its midnight, as ``pd.to_datetime`` makes it), with T to
        the start of its period; only store-customers with such an order
        are in the output. Three columns follow: ``frequency_holdout``
        (distinct ``freq`` periods of the store-customer's orders after
        ``calibration_end`` and at or before ``observation_end``; default:
        every later order), ``monetary_value_holdout`` (the mean amount of
        those orders — per order, not per period, as lifetimes — 0 if none)
        and ``duration_holdout`` (the ``freq`` periods from the calibration
        end's period to the observation end's).
    columns : dict, optional
        Canonical name → the input's name, e.g. ``{"amount": "total_cents"}``.
    engine : {"cython", "numba"}
        The kernel; both give identical output (``"numba"`` compiles on
        first use in a process).
    threads : int, optional
        Threads scanning chunks of the input side by side; default: the
        CPUs this process may use (``OMP_NUM_THREADS`` if set, else its CPU
        affinity). Output is identical for every thread count.
    chunk_rows : int
        Rows per chunk and thread in one round; memory in flight is about
        ``threads * chunk_rows`` input rows and their output. Output is
        identical for every chunk size.
    progress : bool
        Show a progress bar with rows/s on stderr as the reader is consumed,
        when stderr is a terminal.
    merchants : path or table, optional
        A merchants table (SPEC §2); only its ``timezone`` column is used.
    timezone : str, optional
        IANA zone of the merchants without a ``timezone`` in ``merchants``
        (default UTC). Days, weeks and months are local to each merchant's
        zone (SPEC §3); a date32 ``order_ts`` is its own date in every zone.

    Returns
    -------
    pyarrow.RecordBatchReader
        Record batches of at most 65,536 rows (in chunk-sized groups), columns ``merchant_id``,
        ``customer_id`` (int64), ``frequency`` (int64), ``recency``, ``T``,
        ``monetary_value`` (float64, in minor units like ``amount``), one
        row per store-customer with an order up to the observation period,
        in input order. The input is read as the reader is consumed, so
        memory stays bounded; bad input raises a typed ``InputError`` from
        the read that reaches it. Use ``.read_all()`` for a Table, or pass
        the reader to a Parquet writer.
    """
    check_freq(freq)
    engine_module(engine)
    zones = read_merchants(merchants).zones(None if timezone is None else periods.check_zone(timezone))
    if not presorted:   # SPEC §8: sorted first, then read as sorted rows (see compute)
        return _rfm_unsorted(orders, freq, observation_end, include_first_transaction, calibration_end, columns,
                             engine, threads, chunk_rows, progress, merchants, timezone, memory_limit)
    threads = parallel.resolve_threads(threads)
    chunk_rows = parallel.check_chunk_rows(chunk_rows)
    if not isinstance(orders, (str, Path)) and not hasattr(orders, "__fspath__"):
        orders = _in_memory(orders)     # a DataFrame is converted once, not once per pass
    if observation_end is not None:
        day = observation_day(observation_end)
    elif rereadable(orders):
        day = last_order_day(orders, columns, zones)
        if day is None:
            day = 0   # no orders: no output rows, whatever the observation end
    else:
        raise ValueError(
            "observation_end=None reads the input twice (to find its latest order first); "
            "pass observation_end for a one-shot stream such as a RecordBatchReader"
        )
    holdout = None
    if calibration_end is not None:
        calibration_ns = instant_ns(calibration_end, "calibration_end")
        end_ns = None if observation_end is None else instant_ns(observation_end, "observation_end")
        if end_ns is not None and end_ns < calibration_ns:
            raise ValueError(f"observation_end {observation_end!r} is before calibration_end {calibration_end!r}")
        holdout = Holdout(calibration_ns, end_ns, max(day, calibration_ns // NS_PER_DAY))
        day = calibration_ns // NS_PER_DAY
    kernel = RfmKernel(freq, day, include_first_transaction, engine, holdout=holdout, zones=zones)
    total = count_rows(orders) if _progress.shown(progress) else None
    batches = output_batches(order_batches(orders, columns, threads=threads), kernel, threads, chunk_rows, progress, total)
    return pa.RecordBatchReader.from_batches(kernel.schema, batches)


def _rfm_unsorted(orders, freq, observation_end, include_first_transaction, calibration_end, columns, engine,
                  threads, chunk_rows, progress, merchants, timezone, memory_limit):
    """``rfm`` of rows in any order: sorted first (``unsorted.sorted_input``), streamed from the sorted copy.

    The input is sorted when this is called; the temporary files live until
    the returned reader is exhausted or closed (or garbage collected).
    """
    from . import unsorted

    stack = unsorted.sorted_input(orders, columns, False, memory_limit, stop_error=_error)   # no refunds in rfm
    sorted_orders = stack.__enter__()
    try:
        with sorted_orders.translated_errors():
            reader = rfm(sorted_orders.orders, freq, observation_end, include_first_transaction,
                         calibration_end=calibration_end, engine=engine, threads=threads, chunk_rows=chunk_rows,
                         progress=progress, merchants=merchants, timezone=timezone)
    except BaseException:
        stack.__exit__(None, None, None)
        raise

    def batches():
        try:
            with sorted_orders.translated_errors():
                yield from reader
        finally:
            stack.__exit__(None, None, None)

    return pa.RecordBatchReader.from_batches(reader.schema, batches())


RFM_SUFFIXES = (".parquet", ".csv", ".json")


def check_rfm_path(path, inputs=()):
    """Refuse an ``rfm`` output path with an unknown suffix or that is one of ``inputs``."""
    check_output_path(path, inputs)
    if Path(path).suffix.lower() not in RFM_SUFFIXES:
        raise ValueError(f"cannot tell the output format of {str(path)!r}: use a .parquet, .csv or .json suffix")


def write_rfm(reader, path, inputs=()):
    """Stream an ``rfm`` reader to ``path``: Parquet, CSV or JSON by the suffix; returns the rows written.

    JSON is an array of row objects, as the other commands write it, streamed
    one record batch at a time (floats as Python writes them: they read back
    exactly).

    Written through :func:`outputs.atomic_output` (a private temporary file
    renamed into place at the end): bad input found midway, a full disk or a
    signal leave no partial file and an older file intact; an output that
    is one of ``inputs`` (the orders the reader reads) is refused.
    """
    check_rfm_path(path, inputs)
    # Imported before the temporary file exists: no import runs while it does.
    if Path(path).suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        writer = functools.partial(pq.ParquetWriter, schema=reader.schema)
    elif Path(path).suffix.lower() == ".json":
        writer = _JsonWriter
    else:
        import pyarrow.csv as pacsv

        writer = functools.partial(pacsv.CSVWriter, schema=reader.schema)
    rows = 0
    with atomic_output(path, inputs) as tmp, writer(str(tmp)) as out:
        for batch in reader:
            out.write_batch(batch)
            rows += batch.num_rows
    return rows


class _JsonWriter:
    """``[{...},\n {...}]``: a JSON array of row objects written batch by batch (nulls and NaN as null)."""

    def __init__(self, path):
        self.file = open(path, "w", encoding="utf-8")
        self.rows = 0

    def write_batch(self, batch):
        import json
        import math

        parts = []
        for row in batch.to_pylist():
            for name, value in row.items():
                if isinstance(value, float) and not math.isfinite(value):
                    row[name] = None  # NaN/inf are not JSON
            parts.append(("[" if self.rows == 0 else ",\n ") + json.dumps(row, default=str))
            self.rows += 1
        self.file.write("".join(parts))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            if exc[0] is None:
                self.file.write("[]\n" if self.rows == 0 else "]\n")
        finally:
            self.file.close()
        return False
