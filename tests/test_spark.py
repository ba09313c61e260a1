"""``loyaltymetrics.spark.compute`` on a real local Spark session equals ``lm.compute``, bit for bit.

Record batches of 7 rows (``spark.sql.execution.arrow.maxRecordsPerBatch``),
so that store-customers straddle batches inside a task, and several partition
counts. The session allows one task retry (``local[2,2]``) for the retry test.
"""
from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import loyaltymetrics as lm
from strategies import REFUND_AMOUNTS, bys, orders_and_merchants, periods

pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")

BATCH_ROWS = 7


def _java_found():
    java_home = os.environ.get("JAVA_HOME")
    return shutil.which("java") or (java_home and os.path.exists(os.path.join(java_home, "bin", "java")))


@pytest.fixture(scope="module")
def spark():
    if not _java_found():
        pytest.skip("Spark needs Java 17+: no java on PATH and no JAVA_HOME")
    from pyspark.sql import SparkSession

    # The workers must run this interpreter, which has loyaltymetrics installed.
    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = (
        SparkSession.builder.master("local[2,2]")  # 2 cores; a failed task is tried once more
        .appName("loyaltymetrics-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "1g")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(BATCH_ROWS))
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("FATAL")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def lms(spark):
    from loyaltymetrics import spark as module

    return module


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A generated network, its orders also as Parquet (the canonical layout, SPEC §2)."""
    folder = tmp_path_factory.mktemp("generated")
    made = lm.generate(folder / "orders.arrow", rows=20_000, seed=11, merchants_count=12)
    with pa.memory_map(made.orders_path) as source:
        orders = pa.ipc.open_file(source).read_all()
    pq.write_table(orders, folder / "orders.parquet", row_group_size=3_000)
    return orders, folder / "orders.parquet", made.merchants_path


def assert_identical(actual, expected):
    """Same schema and values; floats compared bit for bit."""
    assert actual.schema == expected.schema
    assert actual.num_rows == expected.num_rows
    for name in expected.column_names:
        a, e = actual.column(name).combine_chunks(), expected.column(name).combine_chunks()
        assert a.is_null().equals(e.is_null()), name
        if pa.types.is_floating(e.type):
            valid = np.asarray(e.is_valid())
            assert np.array_equal(a.to_numpy(zero_copy_only=False)[valid].view(np.int64),
                                  e.to_numpy(zero_copy_only=False)[valid].view(np.int64)), name
        else:
            assert a.equals(e), name


@pytest.mark.parametrize(
    "by, period, partitions",
    [
        ((), "year", 1),
        (["industry", "size"], "year", 3),
        (["merchant"], "month", 8),
        (["country", "industry"], "quarter", 3),
        (["size"], "all", 8),
        (["merchant"], "all", 1),
    ],
)
def test_generated_parquet_matches_local_compute(spark, lms, generated, by, period, partitions):
    orders, parquet, merchants = generated
    actual = lms.compute(spark.read.parquet(str(parquet)), spark.read.parquet(str(merchants)),
                         by=by, period=period, partitions=partitions)
    assert_identical(actual.toArrow(), lm.compute(orders, merchants, by=by, period=period))


def _spark_timestamps(orders):
    """Spark keeps microseconds: nanosecond timestamps floored to them (instants are >= 1970)."""
    ts = orders.column("order_ts")
    if pa.types.is_timestamp(ts.type) and ts.type.unit == "ns":
        ts = pc.cast(ts, pa.timestamp("us", ts.type.tz), safe=False)
        orders = orders.set_column(orders.schema.get_field_index("order_ts"), "order_ts", ts)
    return orders


@settings(max_examples=12, deadline=None)
@given(data=orders_and_merchants(max_customers=6), by=bys(), period=periods(),
       partitions=st.sampled_from([1, 3, 8]), merchants_as_spark=st.booleans())
def test_random_orders_match_local_compute(spark, lms, data, by, period, partitions, merchants_as_spark):
    orders, merchants = data
    orders = _spark_timestamps(orders)
    spark_merchants = spark.createDataFrame(merchants) if merchants_as_spark and merchants is not None else merchants
    actual = lms.compute(spark.createDataFrame(orders), spark_merchants, by=by, period=period,
                         partitions=partitions)
    assert_identical(actual.toArrow(), lm.compute(orders, merchants, by=by, period=period))


@settings(max_examples=10, deadline=None)
@given(data=orders_and_merchants(max_customers=6, amounts=REFUND_AMOUNTS), by=bys(), period=periods(),
       partitions=st.sampled_from([1, 3, 8]))
def test_refunds_match_local_compute(spark, lms, data, by, period, partitions):
    # SPEC §2 refunds go through the same kernel and finalize on Spark: refund-only
    # merchant-periods and partitions included, the table is the local one.
    orders, merchants = data
    orders = _spark_timestamps(orders)
    actual = lms.compute(spark.createDataFrame(orders), merchants, by=by, period=period, partitions=partitions,
                         refunds=True)
    assert_identical(actual.toArrow(), lm.compute(orders, merchants, by=by, period=period, refunds=True))


@settings(max_examples=12, deadline=None)
@given(data=orders_and_merchants(max_customers=6, timezones=True), by=bys(), period=periods(),
       partitions=st.sampled_from([1, 3, 8]), merchants_as_spark=st.booleans(),
       timezone=st.sampled_from([None, "America/New_York", "Pacific/Kiritimati"]))
def test_zones_match_local_compute(spark, lms, data, by, period, partitions, merchants_as_spark, timezone):
    # SPEC §3: each merchant's local calendar, the earliest order's zone for "all", on Spark too.
    orders, merchants = data
    orders = _spark_timestamps(orders)
    spark_merchants = spark.createDataFrame(merchants) if merchants_as_spark and merchants is not None else merchants
    actual = lms.compute(spark.createDataFrame(orders), spark_merchants, by=by, period=period,
                         partitions=partitions, timezone=timezone)
    assert_identical(actual.toArrow(), lm.compute(orders, merchants, by=by, period=period, timezone=timezone))


@pytest.mark.parametrize("period", ["all", "year"])
def test_refund_rows_only_match_local_compute(spark, lms, period):
    # Found by the property above: no task sees an order, so the month range is null on Spark.
    orders = _spark_timestamps(pa.table({
        "merchant_id": pa.array([2147483647], pa.int32()), "customer_id": pa.array([0], pa.int32()),
        "order_ts": pa.array([dt.date(2019, 1, 1)], pa.date32()), "amount": pa.array([-1], pa.int64())}))
    actual = lms.compute(spark.createDataFrame(orders), None, period=period, partitions=1, refunds=True)
    assert_identical(actual.toArrow(), lm.compute(orders, None, period=period, refunds=True))


def _one_partition_each(spark, *tables):
    """A DataFrame whose partition i holds exactly the rows of ``tables[i]``, in their order."""
    tagged = pa.concat_tables([
        t.append_column("part", pa.array([i] * t.num_rows, pa.int32())).append_column(
            "row", pa.array(range(t.num_rows), pa.int64()))
        for i, t in enumerate(tables)
    ])
    df = (spark.createDataFrame(tagged).repartitionByRange(len(tables), "part")
          .sortWithinPartitions("part", "row").drop("part", "row"))
    assert df.rdd.glom().map(len).collect() == [t.num_rows for t in tables]
    return df


def _orders(rows):
    merchant, customer, day, amount = zip(*rows)
    return pa.table({
        "merchant_id": pa.array(merchant, pa.int64()),
        "customer_id": pa.array(customer, pa.int64()),
        "order_ts": pa.array([d * 86_400_000_000 for d in day], pa.timestamp("us", tz="UTC")),
        "amount": pa.array(amount, pa.int64()),
    })


def test_presorted_skips_the_repartition_and_the_sort(spark, lms, generated, tmp_path):
    orders, parquet, merchants = generated
    plan = lms._combined_partials(spark.read.parquet(str(parquet)), None, "year", False, "cython", None, False)
    text = plan._jdf.queryExecution().executedPlan().toString()
    assert "rangepartitioning" in text and "Sort [" in text
    # Written by Spark range-partitioned and sorted; read back one file per partition.
    layout = str(tmp_path / "clustered")
    (spark.read.parquet(str(parquet)).repartitionByRange(5, "merchant_id", "customer_id")
     .sortWithinPartitions("merchant_id", "customer_id", "order_ts").write.parquet(layout))
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(1 << 30))
    spark.conf.set("spark.sql.files.openCostInBytes", str(1 << 30))
    try:
        clustered = spark.read.parquet(layout)
        assert clustered.rdd.getNumPartitions() == 5
        plan = lms._combined_partials(clustered, None, "year", False, "cython", None, True)
        text = plan._jdf.queryExecution().executedPlan().toString()
        assert "rangepartitioning" not in text and "Sort [" not in text
        actual = lms.compute(clustered, merchants, by=["industry"], presorted=True)
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
        spark.conf.unset("spark.sql.files.openCostInBytes")
    assert_identical(actual.toArrow(), lm.compute(orders, merchants, by=["industry"]))


def test_presorted_input_out_of_order_within_a_partition(spark, lms):
    orders = _orders([(1, 1, 19000, 5), (1, 3, 19000, 5), (1, 2, 19001, 5)])
    with pytest.raises(lm.UnsortedInputError) as info:
        lms.compute(_one_partition_each(spark, orders), presorted=True)
    message = str(info.value)
    assert message.startswith("spark partition 0: row 2: (merchant_id, customer_id, order_ts) = (1, 2, 2022-01-09")
    assert "comes after (1, 3, 2022-01-08" in message and "counted from the start of the Spark partition" in message
    assert info.value.row == 2


def test_presorted_input_with_a_store_customer_in_two_partitions(spark, lms):
    first = _orders([(1, 1, 19000, 5), (1, 2, 19000, 5)])
    second = _orders([(1, 2, 19400, 5), (1, 3, 19400, 5)])
    with pytest.raises(lm.UnsortedInputError, match=r"merchant_id 1 .* customer_ids 1\.\.2 and 2\.\.3"):
        lms.compute(_one_partition_each(spark, first, second), presorted=True)
    # Whole store-customers in partitions that come in any order are fine.
    later, earlier = _orders([(1, 3, 19000, 5), (2, 1, 19000, 7)]), _orders([(1, 1, 19000, 5), (1, 2, 19400, 5)])
    both = pa.concat_tables([earlier, later])
    actual = lms.compute(_one_partition_each(spark, later, earlier), by=["merchant"], presorted=True)
    assert_identical(actual.toArrow(), lm.compute(both, by=["merchant"]))


def test_a_sorted_file_split_by_spark_is_rejected_with_presorted(spark, lms, generated):
    # Spark cuts a file at row groups and packs the pieces by size: store-customers get split.
    _, parquet, _ = generated
    spark.conf.set("spark.sql.files.maxPartitionBytes", "20000")
    try:
        split = spark.read.parquet(str(parquet))
        assert split.rdd.getNumPartitions() > 1
        with pytest.raises(lm.UnsortedInputError):
            lms.compute(split, presorted=True)
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")


def test_revenue_overflow_is_an_error(spark, lms):
    big = 5 * 10**18
    orders = _orders([(1, 1, 19000, big), (1, 2, 19000, big)])
    # In one partition the kernel finds the row; over two, the sum Spark adds up is too large.
    with pytest.raises(lm.AmountOverflowError, match="spark partition 0: row 1: amount 5000000000000000000"):
        lms.compute(_one_partition_each(spark, orders), presorted=True)
    with pytest.raises(lm.AmountOverflowError, match="revenue of merchant_id 1 in the period from 2022-01-01 "
                                                     "is 10000000000000000000, outside int64"):
        lms.compute(_one_partition_each(spark, orders.slice(0, 1), orders.slice(1)), presorted=True)


def test_bad_rows_give_typed_errors_from_the_tasks(spark, lms):
    negative = _orders([(1, 1, 19000, 5), (1, 2, 19000, -5)])
    with pytest.raises(lm.NegativeAmountError, match="negative amount -5"):
        lms.compute(spark.createDataFrame(negative))
    early = _orders([(1, 1, -3, 5)])
    with pytest.raises(lm.TimestampRangeError, match="spark partition"):
        lms.compute(spark.createDataFrame(early))
    nulls = spark.createDataFrame(pa.table({
        "merchant_id": pa.array([1, 1], pa.int64()), "customer_id": pa.array([1, 2], pa.int64()),
        "order_ts": pa.array([0, None], pa.timestamp("us", tz="UTC")), "amount": pa.array([1, 2], pa.int64()),
    }))
    with pytest.raises(lm.NullValueError, match="null in column 'order_ts'"):
        lms.compute(nulls)


def test_schema_errors_and_column_mapping(spark, lms):
    orders = _orders([(1, 1, 19000, 5), (1, 2, 19001, 7)])
    renamed = spark.createDataFrame(orders.rename_columns(["shop", "customer_id", "order_ts", "total_cents"]))
    actual = lms.compute(renamed, columns={"merchant_id": "shop", "amount": "total_cents"})
    assert_identical(actual.toArrow(), lm.compute(orders))
    with pytest.raises(lm.SchemaError, match="missing column.*'amount'"):
        lms.compute(renamed)
    floats = spark.createDataFrame(orders.set_column(3, "amount", pc.cast(orders.column("amount"), pa.float64())))
    with pytest.raises(lm.SchemaError, match="column 'amount' has type double"):
        lms.compute(floats)
    with pytest.raises(lm.SchemaError, match="missing column.*'reward'"):
        lms.compute(spark.createDataFrame(orders), columns={"reward": "reward"})


def test_a_task_that_fails_once_is_retried_and_the_result_is_exact(spark, lms, generated, tmp_path):
    orders, parquet, merchants = generated
    flag = tmp_path / "fail-once"

    def fail_once(batches):
        # Fails its task after a few batches have gone on to the kernel, once in the whole job.
        for i, batch in enumerate(batches):
            if i == 3:
                try:
                    os.remove(flag)
                except FileNotFoundError:
                    pass
                else:
                    raise RuntimeError("a task that fails once")
            yield batch

    for presorted in (True, False):  # in the kernel's own task; in the task before the shuffle
        flag.touch()
        df = spark.read.parquet(str(parquet))
        if presorted:
            df = df.repartitionByRange(3, "merchant_id", "customer_id").sortWithinPartitions(
                "merchant_id", "customer_id", "order_ts").localCheckpoint()
        flaky = df.mapInArrow(fail_once, df.schema)
        actual = lms.compute(flaky, merchants, by=["merchant"], period="month", presorted=presorted)
        assert not flag.exists()  # the failure happened
        assert_identical(actual.toArrow(), lm.compute(orders, merchants, by=["merchant"], period="month"))


def test_empty_input(spark, lms):
    orders = _orders([(1, 1, 19000, 5)]).slice(0, 0)
    for by in ([], ["merchant", "size"]):
        assert_identical(lms.compute(spark.createDataFrame(orders), by=by).toArrow(), lm.compute(orders, by=by))


def test_importing_the_library_does_not_import_pyspark():
    code = "import sys, loyaltymetrics; assert 'pyspark' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_numba_engine(spark, lms, generated):
    orders, parquet, _ = generated
    actual = lms.compute(spark.read.parquet(str(parquet)), by=["merchant"], period="quarter", engine="numba")
    assert_identical(actual.toArrow(), lm.compute(orders, by=["merchant"], period="quarter"))


@pytest.mark.parametrize("window", [{}, dict(observation_start="2022-03-01"),
                                    dict(observation_start=dt.date(2022, 1, 1), observation_end="2023-07-01")])
def test_observation_window_matches_local_compute(spark, lms, generated, window):
    # SPEC §3: the tasks carry the days of their earliest and latest orders; the window's defaults
    # and period_complete (so the YoY nulls) are the local ones.
    orders, parquet, merchants = generated
    for period in ("year", "quarter"):
        actual = lms.compute(spark.read.parquet(str(parquet)), merchants, by=["size"], period=period,
                             partitions=3, **window)
        assert_identical(actual.toArrow(), lm.compute(orders, merchants, by=["size"], period=period, **window))
    with pytest.raises(ValueError, match="must be after observation_start"):
        lms.compute(spark.read.parquet(str(parquet)), observation_start="2023-01-01", observation_end="2022-01-01")
