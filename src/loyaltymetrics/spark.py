"""``compute`` on Apache Spark: the same kernel and the same finalize as the local path.

The plan (SPEC §1: scale out on Spark when one machine is not enough):

1. ``repartitionByRange`` on ``(merchant_id, customer_id)``, so that every
   store-customer lands in one partition, and ``sortWithinPartitions`` adding
   ``order_ts``. ``presorted=True`` skips both for input whose partitions
   already hold whole store-customers in sorted order.
2. ``mapInArrow``: each task feeds its partition's Arrow record batches to
   the Cython kernel through one ``ScanState``, carried across batches as in
   the local path, and emits the int64 partials per (merchant, period).
   Partials of disjoint store-customers add up, so the partitions' order
   does not matter.
3. ``groupBy(merchant_id, period).sum()`` combines them in Spark, as
   ``decimal(38,0)`` so that an overflow is seen (SPEC §2), not wrapped.
4. The small combined table is collected to the driver and handed to
   ``finalize``, the code the local path runs (SPEC §5-7).

Bad input raises the library's typed errors on the driver. Spark passes
only an exception's text from a task to the driver, so a task carries its
``InputError`` in its message and the driver rebuilds it from there.
"""
import functools
import itertools
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import errors, periods
from ._types import ColumnMap, DateLike, Engine, GroupKeys, Merchants, Period, SizeEdges, SparkDataFrame
from .arrays import numeric_array
from .errors import MissingDependencyError
from .errors import AmountOverflowError, InputError, UnsortedInputError
from .finalize import DEFAULT_SIZE_EDGES, check_by, check_observation, check_size_edges, finalize
from .inputs import REQUIRED_ORDER_COLUMNS, _select, order_batches, read_merchants, resolve_columns
from .scan import PARTIAL_COLUMNS, ComputeKernel, Partials, order_window, scan_module

try:
    from pyspark.sql import functions as F
except ImportError as e:  # pragma: no cover - the extra is not installed
    raise MissingDependencyError(
        "loyaltymetrics.spark needs PySpark: pip install 'loyaltymetrics[spark]'"
    ) from e

SOURCE = "<spark DataFrame>"
SORT_KEYS = ("merchant_id", "customer_id", "order_ts")
# What each task emits: one row per (merchant, period) of its partition.
# first/last_order: the partition's earliest and latest order and their merchants, and
# units_per_day the unit of its timestamps (the observation window and "all"'s months, SPEC §3).
# customer_range: the merchant's first and last customer_id in the partition,
# on the merchant's first row only; it shows whether a store-customer was split.
PARTIALS_SCHEMA = ", ".join(
    ["merchant_id bigint", "period int"] + [f"{name} bigint" for name in PARTIAL_COLUMNS]
    + ["first_order struct<ts:bigint,merchant:bigint>", "last_order struct<ts:bigint,merchant:bigint>",
       "units_per_day bigint", "customer_range struct<first:bigint,last:bigint>"]
)
_ERROR_MARKER = "loyaltymetrics input error: "


def compute(orders_df: SparkDataFrame, merchants_df: SparkDataFrame | Merchants | None = None, *, by: GroupKeys = (),
            period: Period = "year", columns: ColumnMap | None = None, size_edges: SizeEdges = DEFAULT_SIZE_EDGES,
            refunds: bool = False, engine: Engine = "cython", partitions: int | None = None,
            presorted: bool = False, observation_start: DateLike | None = None,
            observation_end: DateLike | None = None,
            timezone: str | None = None) -> pa.Table:
    """``loyaltymetrics.compute`` over a Spark DataFrame of orders; same columns, same values.

    Parameters
    ----------
    orders_df : pyspark.sql.DataFrame
        Order rows in any order (unless ``presorted``), columns per SPEC §2:
        ``merchant_id`` and ``customer_id`` int or bigint, ``order_ts``
        timestamp, timestamp_ntz (read as UTC) or date, ``amount`` bigint
        minor units (or a narrower integer), ``reward`` boolean (optional).
    merchants_df : pyspark.sql.DataFrame, path or table, optional
        The merchants table (SPEC §2); anything ``lm.compute`` accepts, or a
        Spark DataFrame (collected to the driver: it has one row per merchant).
    by, period, columns, size_edges, refunds, engine, observation_start, observation_end, timezone
        As for ``loyaltymetrics.compute``. There are no ``threads`` and
        ``chunk_rows``: Spark's tasks are the parallelism, one kernel state each.
    partitions : int, optional
        Partitions of the range repartition; default ``spark.sql.shuffle.partitions``.
    presorted : bool
        The input's partitions already hold whole store-customers (all the
        orders of a ``(merchant_id, customer_id)`` in one partition), sorted
        by ``(merchant_id, customer_id, order_ts)`` within each partition; the
        partitions themselves may come in any order. Skips the repartition
        and the sort. Rows out of order within a partition raise
        ``UnsortedInputError``, and so do the orders of one merchant spread
        over partitions in overlapping ``customer_id`` ranges (where a
        store-customer may be split).

    Returns
    -------
    pyspark.sql.DataFrame
        The table ``lm.compute`` returns, built on the driver
        (``.toArrow()`` gives it back as the same ``pyarrow.Table``).

    Raises
    ------
    loyaltymetrics.InputError
        The typed error for bad input. Errors found in a task name the Spark
        partition and the row within it (after the repartition and sort).
    """
    by = check_by(by)
    periods.check_period(period)
    size_edges = check_size_edges(size_edges)
    check_observation(observation_start, observation_end)
    scan_module(engine)
    if timezone is not None:
        periods.check_zone(timezone)
    if partitions is not None:
        if presorted:
            raise ValueError("partitions= sets the repartition, which presorted=True skips")
        if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
            raise ValueError(f"partitions must be a positive integer or None; got {partitions!r}")
    if hasattr(merchants_df, "toArrow") and hasattr(merchants_df, "sparkSession"):
        merchants_df = merchants_df.toArrow()
    merchant_table = read_merchants(merchants_df)
    zones = merchant_table.zones(timezone)

    combined = _combined_partials(orders_df, columns, period, refunds, engine, partitions, presorted, zones)
    table = finalize(_collect(combined, period, zones), merchant_table, by, period, size_edges, source=SOURCE,
                     observation_start=observation_start, observation_end=observation_end)
    return orders_df.sparkSession.createDataFrame(table)


def _combined_partials(orders_df, columns, period, refunds, engine, partitions, presorted, zones=None):
    """The Spark plan up to the combined partials per (merchant, period): lazy, nothing runs yet."""
    orders = _canonical_columns(orders_df, columns)
    if not presorted:
        orders = orders.repartitionByRange(*([partitions] if partitions else []), *SORT_KEYS[:2])
        orders = orders.sortWithinPartitions(*SORT_KEYS)
    scan = functools.partial(_scan_partition, period=period, refunds=refunds, engine=engine, zones=zones)
    partials = orders.mapInArrow(scan, PARTIALS_SCHEMA)
    # Sums as decimal(38,0), which cannot wrap: _collect checks that each fits int64 (SPEC §2).
    return partials.groupBy("merchant_id", "period").agg(
        *[F.sum(F.col(name).cast("decimal(38,0)")).alias(name) for name in PARTIAL_COLUMNS],
        # Structs compare field by field: the earliest (ts, merchant) and the latest, as the local path.
        F.min("first_order").alias("first_order"),
        F.max("last_order").alias("last_order"),
        F.max("units_per_day").alias("units_per_day"),
        F.collect_list("customer_range").alias("customer_ranges"),
    )


def _canonical_columns(orders_df, columns):
    """The order columns under their canonical names, after the checks of SPEC §2 on the schema."""
    names = resolve_columns(columns)
    required = REQUIRED_ORDER_COLUMNS + (("reward",) if "reward" in (columns or {}) else ())
    # Spark's own conversion gives the Arrow types the tasks will see; limit(0) runs no job.
    wanted = _select(SOURCE, orders_df.limit(0).toArrow().schema, names, required)
    canonical = {names[c]: c for c in names}
    return orders_df.select(*[F.col(f"`{name}`").alias(canonical[name]) for name in wanted])


# --- in each task ----------------------------------------------------------------

def _scan_partition(batches, period, refunds, engine, zones=None):
    """mapInArrow function: one partition's record batches → its partials (``PARTIALS_SCHEMA``)."""
    from pyspark import TaskContext

    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        return
    kernel = ComputeKernel(engine, period, refunds, zones)
    state = kernel.new_state()
    ranges = []
    try:
        reader = pa.RecordBatchReader.from_batches(first.schema, itertools.chain([first], batches))
        for batch in order_batches(reader):
            kernel.scan(state, batch, 0, len(batch))  # raises at a row out of order, even across batches
            ranges.append(_customer_ranges(batch))
    except InputError as error:
        raise _TaskInputError(error, TaskContext.get().partitionId()) from None
    partials = kernel.finish(state)
    if len(partials.merchant_id):
        yield _partials_batch(partials, ranges, kernel.order_range, kernel.units_per_day)


def _customer_ranges(batch):
    """``(merchant_id, first customer_id, last customer_id)`` of each merchant's run in a sorted batch."""
    m, c = batch.merchant_id, batch.customer_id
    starts = np.flatnonzero(m[1:] != m[:-1]) + 1
    first = np.concatenate(([0], starts))
    last = np.append(starts - 1, len(m) - 1)
    return m[first].astype(np.int64), c[first].astype(np.int64), c[last].astype(np.int64)


def _partials_batch(partials, ranges, order_range, units_per_day):
    """The partials as an Arrow batch of ``PARTIALS_SCHEMA``."""
    merchant, first, last = (np.concatenate(parts) for parts in zip(*ranges))
    # A merchant that goes on from one batch to the next has a piece in each: join them.
    starts = np.flatnonzero(np.append(True, merchant[1:] != merchant[:-1]))
    ends = np.append(starts[1:], len(merchant)) - 1
    n = len(partials.merchant_id)
    # The kernel emits a merchant's periods together, in scan order: one range per merchant.
    first_row = np.append(True, partials.merchant_id[1:] != partials.merchant_id[:-1])
    assert np.array_equal(partials.merchant_id[first_row], merchant[starts])
    range_first, range_last = np.zeros(n, np.int64), np.zeros(n, np.int64)
    range_first[first_row], range_last[first_row] = first[starts], last[ends]
    customer_range = pa.StructArray.from_arrays(
        [numeric_array(range_first, pa.int64()), numeric_array(range_last, pa.int64())],
        names=["first", "last"], mask=_bool_array(~first_row),
    )
    order_type = pa.struct([("ts", pa.int64()), ("merchant", pa.int64())])
    if order_range is None:     # refund rows only: no order
        orders = [pa.nulls(n, order_type)] * 2
    else:
        orders = [pa.array([{"ts": ts, "merchant": m}] * n, order_type) for ts, m in order_range]
    columns = [numeric_array(partials.merchant_id, pa.int64()), numeric_array(partials.period, pa.int32())]
    columns += [numeric_array(partials.counts[:, i], pa.int64()) for i in range(len(PARTIAL_COLUMNS))]
    units = numeric_array(np.full(n, units_per_day or 0, np.int64), pa.int64())
    names = ["merchant_id", "period", *PARTIAL_COLUMNS, "first_order", "last_order", "units_per_day",
             "customer_range"]
    return pa.RecordBatch.from_arrays(columns + orders + [units, customer_range], names=names)


def _bool_array(values):
    return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(np.packbits(values, bitorder="little"))])


class _TaskInputError(Exception):
    """An ``InputError`` met in a task, written into the message: all that Spark hands the driver."""

    def __init__(self, error, partition):
        super().__init__(_ERROR_MARKER + json.dumps({
            "type": type(error).__name__,
            "source": f"spark partition {partition}",
            "row": error.row,
            "detail": error.detail
            + ("" if error.row is None else "; rows are counted from the start of the Spark partition, "
               "after the repartition and sort, not in the input"),
        }))


# --- on the driver ------------------------------------------------------------------

def _collect(combined, period, zones=None):
    """The combined partials as ``Partials`` on the driver, after the checks the sums need."""
    try:
        table = combined.toArrow().combine_chunks()
    except Exception as exc:
        error = _input_error(exc)
        if error is None:
            raise
        raise error from None
    merchant_id = table.column("merchant_id").to_numpy()
    period_index = table.column("period").to_numpy().astype(np.int32)
    _check_whole_store_customers(merchant_id, table.column("customer_ranges").chunk(0))
    # Null where no task saw an order (refund rows only): no range, as the local path has none.
    firsts = [(o["ts"], o["merchant"]) for o in table.column("first_order").to_pylist() if o is not None]
    lasts = [(o["ts"], o["merchant"]) for o in table.column("last_order").to_pylist() if o is not None]
    order_range = (min(firsts), max(lasts)) if firsts else None
    units = pc.max(table.column("units_per_day")).as_py() if table.num_rows else None
    month_range, day_range = order_window(order_range, units, zones or periods.MerchantZones.utc())
    counts = np.empty((table.num_rows, len(PARTIAL_COLUMNS)), np.int64)
    for i, name in enumerate(PARTIAL_COLUMNS):
        try:
            counts[:, i] = table.column(name).cast(pa.int64()).to_numpy()
        except pa.ArrowInvalid:
            values = table.column(name).to_pylist()
            row = next(r for r, v in enumerate(values) if not -2**63 <= v < 2**63)
            start = periods.period_start(period, period_index[row:row + 1],
                                         (month_range or (periods.EPOCH_MONTH,))[0])[0]
            raise AmountOverflowError(
                SOURCE, None, f"the {name} of merchant_id {merchant_id[row]} in the period from {start} "
                f"is {values[row]}, outside int64 (about ±9.2e18 minor units)",
            ) from None
    return Partials(merchant_id, period_index, counts, month_range, day_range)


def _check_whole_store_customers(merchant_id, customer_ranges):
    """UnsortedInputError if partitions hold one merchant's orders in overlapping customer_id ranges.

    Each partition gives every merchant it saw the range of customer_ids it
    saw (its rows are sorted, so the customers in between are all there).
    Disjoint ranges mean no store-customer was split between two partitions.
    After the range repartition this always holds; with ``presorted=True``
    it is the check of the caller's promise.
    """
    merchant = merchant_id[pc.list_parent_indices(customer_ranges).to_numpy()]
    ranges = pc.list_flatten(customer_ranges)
    first, last = ranges.field("first").to_numpy(), ranges.field("last").to_numpy()
    order = np.lexsort((first, merchant))
    merchant, first, last = merchant[order], first[order], last[order]
    overlap = np.flatnonzero((merchant[1:] == merchant[:-1]) & (first[1:] <= last[:-1]))
    if len(overlap):
        i = overlap[0]
        raise UnsortedInputError(
            SOURCE, None,
            f"the orders of merchant_id {merchant[i]} are in Spark partitions holding customer_ids "
            f"{first[i]}..{last[i]} and {first[i + 1]}..{last[i + 1]}, so a store-customer may be split "
            "between them; with presorted=True every (merchant_id, customer_id) must be in one partition "
            "(without it, Spark repartitions the orders so)",
        )


def _input_error(exc):
    """The library's typed error a failed Spark action carries in its message, or None."""
    match = re.search(re.escape(_ERROR_MARKER) + r"(\{.*\})", str(exc))
    if match is None:
        return None
    fields = json.loads(match.group(1))
    error_type = getattr(errors, fields["type"], None)
    if not (isinstance(error_type, type) and issubclass(error_type, InputError)):
        return None
    return error_type(fields["source"], fields["row"], fields["detail"])
