"""SPEC §9 benchmarks against an independent computation, on both engines.

The expected tables are built here from ``lm.compute(by=["merchant"])`` (the
per-merchant SPEC §5 metrics, themselves tested against the pure-Python
reference), joined in this file to the merchants table (industry, country;
"unknown" where missing, null or empty) and to each merchant's size bucket
per period (``compute(by=["merchant", "size"])``); then, per group, period
and metric, NumPy: ``np.percentile`` (default linear method) must agree bit
for bit, the mean must be the exact mean (``fractions``) to rounding, and
the per-merchant percentile is counted value by value.
"""
from __future__ import annotations

import datetime as dt
import importlib
import math
from collections import defaultdict
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import REFUND_AMOUNTS, orders_tables, rebatch, size_edges, zoned_instants_ns, zoned_merchants

import loyaltymetrics as lm
import loyaltymetrics.benchmark_analysis as bm
from loyaltymetrics.cli import main
from loyaltymetrics.finalize import DEFAULT_SIZE_EDGES, DERIVED_COLUMNS, size_labels

ENGINES = ("cython", "numba")
KEYS = ("industry", "country", "size")
STATS = ("mean", "p10", "p25", "median", "p75", "p90")
ALL_METRICS = DERIVED_COLUMNS + tuple(f"{m}_yoy" for m in DERIVED_COLUMNS)


def _label(value):
    return "unknown" if value is None or value == "" else value


def merchant_rows(orders, merchants, period, size_edges=DEFAULT_SIZE_EDGES, **options):
    """The per-merchant table as dicts, each with its industry, country and size (the test's own join)."""
    per = lm.compute(orders, merchants, by=["merchant"], period=period, size_edges=size_edges, **options)
    sized = lm.compute(orders, merchants, by=["merchant", "size"], period=period, size_edges=size_edges, **options)
    size = {(r["merchant_id"], r["period_start"]): r["size"]
            for r in sized.select(["merchant_id", "period_start", "size"]).to_pylist()}
    meta = {}
    if merchants is not None:
        for r in merchants.to_pylist():
            meta[r["merchant_id"]] = (_label(r["industry"]), _label(r["country"]))
    rows = per.to_pylist()
    for r in rows:
        r["industry"], r["country"] = meta.get(r["merchant_id"], ("unknown", "unknown"))
        r["size"] = size[(r["merchant_id"], r["period_start"])]
    return rows


def _group_sort_key(by, edges):
    order = {label: i for i, label in enumerate(size_labels(edges))}
    return lambda key: tuple(order[v] if k == "size" else v for k, v in zip(by, key))


def _by_group(rows, by):
    """Rows by (group key, period_start)."""
    groups = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in by), r["period_start"]].append(r)
    return groups


def expected_distribution(rows, by, metrics, edges):
    groups = _by_group(rows, by)
    sort_key = _group_sort_key(by, edges)
    out = []
    for (key, start) in sorted(groups, key=lambda g: (sort_key(g[0]), g[1])):
        members = groups[key, start]
        complete = {r["period_complete"] for r in members}
        assert len(complete) == 1
        for metric in metrics:
            values = [r[metric] for r in members if r[metric] is not None]
            row = dict(zip(by, key), period_start=start, period_complete=members[0]["period_complete"],
                       metric=metric, merchants=len(values))
            if values:
                p = np.percentile(np.array(values, dtype=np.float64), [10, 25, 50, 75, 90])
                row.update(exact_mean=sum(map(Fraction, values)) / len(values),
                           **{s: float(v) for s, v in zip(STATS[1:], p)})
            else:
                row.update(exact_mean=None, **{s: None for s in STATS[1:]})
            out.append(row)
    return out


def expected_per_merchant(rows, by, metrics, edges):
    groups = _by_group(rows, by)
    sort_key = _group_sort_key(by, edges)
    out = []
    # Rows of one comparison (group and period) together: keys, period, merchant, metric.
    for r in sorted(rows, key=lambda r: (sort_key(tuple(r[k] for k in by)), r["period_start"], r["merchant_id"])):
        peers = groups[tuple(r[k] for k in by), r["period_start"]]
        for metric in metrics:
            value = r[metric]
            row = {k: r[k] for k in by}
            row["merchant_id"] = r["merchant_id"]
            if "merchant_name" in r:
                row["merchant_name"] = r["merchant_name"]
            row.update(period_start=r["period_start"], period_complete=r["period_complete"], metric=metric,
                       value=value, percentile=None)
            if value is not None:
                others = [p[metric] for p in peers if p[metric] is not None]
                below = sum(1 for v in others if v < value)
                equal = sum(1 for v in others if v == value)
                row["percentile"] = 100 * (below + 0.5 * equal) / len(others)
            out.append(row)
    return out


def assert_mean(actual, exact):
    """The library's mean is the correctly rounded sum divided by n: within rounding of the exact mean."""
    if exact is None:
        assert actual is None
        return
    assert actual is not None
    assert math.isclose(actual, float(exact), rel_tol=4 * 2.0**-53, abs_tol=1e-300) or \
        abs(Fraction(actual) - exact) <= Fraction(math.ulp(float(abs(exact)) or 1.0)) * 2, (actual, exact)


def check(orders, merchants, by, period, metrics=None, size_edges=DEFAULT_SIZE_EDGES, **options):
    names = bm.check_metrics(metrics)
    rows = merchant_rows(orders, merchants, period, size_edges, **options)
    table = lm.benchmarks(orders, merchants, by=by, period=period, metrics=metrics, size_edges=size_edges,
                          **options)
    assert table.column_names == list(by) + ["period_start", "period_complete", "metric", "merchants", *STATS]
    expected = expected_distribution(rows, by, names, size_edges)
    actual = table.to_pylist()
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        exact = e.pop("exact_mean")
        assert_mean(a.pop("mean"), exact)
        assert a == e  # keys, period, metric, merchants and percentiles: bit for bit
    per = lm.benchmarks(orders, merchants, by=by, period=period, metrics=metrics, size_edges=size_edges,
                        per_merchant=True, **options)
    assert per.to_pylist() == expected_per_merchant(rows, by, names, size_edges)
    return table, per


def key_subsets():
    return st.permutations(KEYS).flatmap(lambda keys: st.integers(0, 3).map(lambda k: list(keys[:k])))


@st.composite
def zoned_data(draw):
    amounts = draw(st.sampled_from([None, REFUND_AMOUNTS]))
    orders = draw(orders_tables(instants=zoned_instants_ns(), amounts=amounts, max_merchants=6))
    merchants, timezone = draw(zoned_merchants(orders, names=draw(st.booleans())))
    return orders, merchants, timezone, amounts is not None


METRIC_CHOICES = st.none() | st.lists(st.sampled_from(ALL_METRICS), min_size=1, max_size=4, unique=True)


@settings(deadline=None, max_examples=60)
@given(data=zoned_data(), by=key_subsets(), metrics=METRIC_CHOICES, edges=size_edges(),
       engine=st.sampled_from(ENGINES), threads=st.integers(1, 3), k=st.integers(1, 9),
       chunk_rows=st.sampled_from([1, 2, 3, 7, 1 << 20]),
       period=st.sampled_from(["month", "quarter", "year", "all"]))
def test_benchmarks_match_numpy_on_the_per_merchant_table(data, by, metrics, edges, engine, threads, k,
                                                           chunk_rows, period):
    orders, merchants, timezone, refunds = data
    options = dict(refunds=refunds, timezone=timezone, engine=engine, threads=threads, chunk_rows=chunk_rows)
    check(rebatch(orders, k), merchants, by, period, metrics, edges, **options)


@pytest.mark.parametrize("engine", ENGINES)
def test_engines_threads_and_chunks_give_identical_tables(engine):
    rng = np.random.default_rng(7)
    n = 4000
    merchant = np.sort(rng.integers(0, 25, n))
    customer = rng.integers(0, 60, n)
    ts = rng.integers(1_600_000_000, 1_700_000_000, n) * 10**6
    order = np.lexsort((ts, customer, merchant))
    orders = pa.table({"merchant_id": pa.array(merchant[order]), "customer_id": pa.array(customer[order]),
                       "order_ts": pa.array(ts[order], pa.timestamp("us", tz="UTC")),
                       "amount": pa.array(rng.integers(0, 50_000, n)),
                       "reward": pa.array(rng.random(n) < 0.3)})
    merchants = pa.table({"merchant_id": pa.array(np.arange(25)), "industry": [f"i{m % 3}" for m in range(25)],
                          "country": [f"c{m % 2}" for m in range(25)],
                          "annual_fee": pa.array(np.arange(25) * 10_000)})
    base = lm.benchmarks(orders, merchants, by=["industry", "size"], period="quarter", engine="cython", threads=1)
    for threads, chunk_rows in ((1, 1 << 20), (2, 333), (3, 1000)):
        other = lm.benchmarks(orders, merchants, by=["industry", "size"], period="quarter", engine=engine,
                              threads=threads, chunk_rows=chunk_rows)
        assert other.equals(base)
    check(orders, merchants, ["industry", "size"], "quarter", engine=engine, size_edges=(10, 30))
    check(orders, merchants, ["country"], "year", engine=engine)


# --- a hand-worked example ------------------------------------------------------------------

def _orders(rows):
    rows = sorted(rows)
    return pa.table({"merchant_id": pa.array([r[0] for r in rows], pa.int64()),
                     "customer_id": pa.array([r[1] for r in rows], pa.int64()),
                     "order_ts": pa.array([dt.date.fromisoformat(r[2]) for r in rows], pa.date32()),
                     "amount": pa.array([r[3] for r in rows], pa.int64())})


HAND_ORDERS = _orders([
    # 2023: AOVs 50 (merchant 1), 100 (2), 100 (3), 200 (4) in "food"; merchant 5 (not in the table) "unknown"
    (1, 1, "2023-02-01", 40), (1, 2, "2023-03-01", 60),
    (2, 1, "2023-02-01", 100),
    (3, 7, "2023-05-05", 100), (3, 7, "2023-06-05", 100),
    (4, 1, "2023-02-01", 100), (4, 2, "2023-07-01", 300),
    (5, 1, "2023-01-01", 999),
])
HAND_MERCHANTS = pa.table({"merchant_id": pa.array([1, 2, 3, 4], pa.int64()), "industry": ["food"] * 4,
                           "country": ["DE", "DE", "FR", "FR"], "annual_fee": pa.array([0] * 4, pa.int64()),
                           "name": ["a.example", "b.example", "c.example", "d.example"]})


def test_hand_worked_distribution():
    t = lm.benchmarks(HAND_ORDERS, HAND_MERCHANTS, by=["industry"], metrics=["aov", "purchase_frequency"])
    rows = {(r["industry"], r["metric"]): r for r in t.to_pylist()}
    assert [(r["industry"], r["metric"]) for r in t.to_pylist()] == [
        ("food", "aov"), ("food", "purchase_frequency"), ("unknown", "aov"), ("unknown", "purchase_frequency")]
    food = rows["food", "aov"]
    # sorted 50, 100, 100, 200; virtual index 3 * q: p10 0.3 -> 50 + 50 * 0.3; p25 0.75 -> 100 - 50 * 0.25;
    # median 1.5 between the two 100s; p75 2.25 -> 100 + 100 * 0.25; p90 2.7 -> 200 - 100 * 0.3
    assert food["merchants"] == 4 and food["period_start"] == dt.date(2023, 1, 1)
    assert (food["mean"], food["p10"], food["p25"], food["median"], food["p75"], food["p90"]) == \
        pytest.approx((112.5, 65.0, 87.5, 100.0, 125.0, 170.0), rel=1e-15)
    # purchase frequency: 1 (two customers, one order each), 1, 2, 1
    freq = rows["food", "purchase_frequency"]
    assert (freq["merchants"], freq["mean"], freq["median"]) == (4, 1.25, 1.0)
    assert freq["p90"] == pytest.approx(1.7, rel=1e-15)  # 2 - 1 * (1 - 0.7), as NumPy's lerp rounds it
    unknown = rows["unknown", "aov"]
    assert unknown["merchants"] == 1 and {unknown[s] for s in STATS} == {999.0}


def test_hand_worked_percentiles_with_ties():
    t = lm.benchmarks(HAND_ORDERS, HAND_MERCHANTS, by=["industry"], metrics="aov", per_merchant=True)
    assert t.column_names == ["industry", "merchant_id", "merchant_name", "period_start", "period_complete",
                              "metric", "value", "percentile"]
    got = [(r["merchant_id"], r["merchant_name"], r["value"], r["percentile"]) for r in t.to_pylist()]
    # 50: 0 below, 1 equal of 4 -> 12.5; 100: 1 below, 2 equal -> 50; 200: 3 below -> 87.5; alone -> 50
    assert got == [(1, "a.example", 50.0, 12.5), (2, "b.example", 100.0, 50.0), (3, "c.example", 100.0, 50.0),
                   (4, "d.example", 200.0, 87.5), (5, None, 999.0, 50.0)]


def test_groups_by_country_and_the_whole_network():
    t = lm.benchmarks(HAND_ORDERS, HAND_MERCHANTS, by=["country"], metrics=["aov"])
    assert [(r["country"], r["merchants"], r["median"]) for r in t.to_pylist()] == [
        ("DE", 2, 75.0), ("FR", 2, 150.0), ("unknown", 1, 999.0)]
    network = lm.benchmarks(HAND_ORDERS, HAND_MERCHANTS, metrics=["aov"]).to_pylist()
    assert len(network) == 1 and network[0]["merchants"] == 5 and network[0]["median"] == 100.0


def test_a_metric_no_merchant_has_is_a_row_with_zero_merchants():
    t = lm.benchmarks(HAND_ORDERS, HAND_MERCHANTS, metrics=["retention_rate", "aov_yoy"]).to_pylist()
    assert [(r["metric"], r["merchants"]) for r in t] == [("retention_rate", 0), ("aov_yoy", 0)]
    assert all(r[s] is None for r in t for s in STATS)
    per = lm.benchmarks(HAND_ORDERS, HAND_MERCHANTS, metrics=["retention_rate"], per_merchant=True).to_pylist()
    assert len(per) == 5 and all(r["value"] is None and r["percentile"] is None for r in per)


def test_size_is_each_merchants_own_bucket_in_the_period():
    # By month every merchant has 1 order in each month it sells: "1-2" with edges (1, 2). By year,
    # with edges (0.1, 0.15): 1/12 orders a month is "<0.1", 2/12 is "0.15+"
    t = lm.benchmarks(HAND_ORDERS, HAND_MERCHANTS, by=["size"], period="month", metrics=["aov"],
                      size_edges=(1, 2))
    assert {r["size"] for r in t.to_pylist()} == {"1-2"}
    t = lm.benchmarks(HAND_ORDERS, HAND_MERCHANTS, by=["size"], metrics=["aov"], size_edges=(0.1, 0.15))
    assert [(r["size"], r["merchants"], r["median"]) for r in t.to_pylist()] == [("<0.1", 2, 549.5),
                                                                                  ("0.15+", 3, 100.0)]
    check(HAND_ORDERS, HAND_MERCHANTS, ["size", "industry"], "month", ["aov"], size_edges=(1, 2))
    check(HAND_ORDERS, HAND_MERCHANTS, ["industry", "size"], "year", None, size_edges=(0.25, 1))


def test_one_scan_only(monkeypatch):
    calls = []
    api = importlib.import_module("loyaltymetrics.api")  # the one kernel pass benchmarks shares with compute
    real = api.scan_orders

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "scan_orders", counting)
    lm.benchmarks(HAND_ORDERS, HAND_MERCHANTS, by=["industry", "size"])
    assert len(calls) == 1


def test_benchmark_tables_from_partials_of_one_scan():
    from loyaltymetrics.finalize import finalize
    from loyaltymetrics.inputs import order_batches, read_merchants
    from loyaltymetrics.scan import scan_orders

    merchants = read_merchants(HAND_MERCHANTS)
    partials = scan_orders(order_batches(HAND_ORDERS, None), "year", False, "cython", 1, 1 << 20, None,
                           merchants.zones(None))
    via_partials = bm.benchmark_tables(partials, merchants, ["industry"], "year", ["aov"])
    assert via_partials.equals(lm.benchmarks(HAND_ORDERS, HAND_MERCHANTS, by=["industry"], metrics=["aov"]))
    per = finalize(partials, merchants, ("merchant",), "year")
    reused = bm.benchmark_tables(partials, merchants, ["industry"], "year", ["aov"], merchant_metrics=per)
    assert reused.equals(via_partials)


def test_empty_input_gives_an_empty_table_with_the_columns():
    empty = HAND_ORDERS.slice(0, 0)
    t = lm.benchmarks(empty, HAND_MERCHANTS, by=["industry", "size"])
    assert t.num_rows == 0
    assert t.column_names == ["industry", "size", "period_start", "period_complete", "metric", "merchants", *STATS]
    per = lm.benchmarks(empty, None, per_merchant=True)
    assert per.num_rows == 0 and per.column_names[-2:] == ["value", "percentile"]


@pytest.mark.parametrize("bad, message", [
    (dict(by=["merchant"]), "cannot hold 'merchant'"),
    (dict(by=["region"]), "unknown key"),
    (dict(metrics=["orders"]), "unknown name"),
    (dict(metrics=["aov", "nope"]), "nope"),
    (dict(metrics=[]), "names no metric"),
    (dict(period="week"), "week"),
])
def test_bad_options_are_value_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        lm.benchmarks(HAND_ORDERS, HAND_MERCHANTS, **bad)


def test_metrics_follow_spec_order_whatever_the_order_given():
    t = lm.benchmarks(HAND_ORDERS, None, metrics=["clv_yoy", "clv", "aov", "aov"])
    assert t.column("metric").to_pylist() == ["aov", "clv", "clv_yoy"]


def test_percentile_sorted_is_numpy_on_awkward_values():
    rng = np.random.default_rng(3)
    for n in list(range(1, 12)) + [97, 1000]:
        for values in (rng.normal(size=n) * 10.0 ** rng.integers(-300, 300, n), rng.integers(-3, 3, n) * 1.0,
                       np.array([1e308, -1e308, 5e-324, 0.0, -0.0] * n)[:n]):
            x = np.sort(values)
            for q in (10, 25, 50, 75, 90):
                with np.errstate(over="ignore", invalid="ignore"):
                    got = bm.percentile_sorted(x, np.array([0]), np.array([n]), q)[0]
                    want = np.percentile(values, q)
                assert got == want or (np.isnan(got) and np.isnan(want)), (n, q, got, want)


# --- the command line ---------------------------------------------------------------------------

def _files(tmp_path):
    orders, merchants = tmp_path / "orders.parquet", tmp_path / "merchants.parquet"
    pq.write_table(HAND_ORDERS, orders)
    pq.write_table(HAND_MERCHANTS, merchants)
    return str(orders), str(merchants)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".json"])
def test_cli_writes_the_table(tmp_path, suffix, capsys):
    orders, merchants = _files(tmp_path)
    out = tmp_path / f"bench{suffix}"
    assert main(["benchmarks", orders, "--merchants", merchants, "--by", "industry", "--metrics", "aov,clv",
                 "-o", str(out), "-q"]) == 0
    expected = lm.benchmarks(orders, merchants, by=["industry"], metrics=["aov", "clv"])
    if suffix == ".parquet":
        assert pq.read_table(out).equals(expected)
    else:
        text = out.read_text()
        assert "food" in text and "112.5" in text
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli_per_merchant_and_summary(tmp_path, capsys):
    orders, merchants = _files(tmp_path)
    out = tmp_path / "per.parquet"
    assert main(["benchmarks", orders, "--merchants", merchants, "--by", "industry", "--metrics", "aov",
                 "--per-merchant", "-o", str(out), "-q"]) == 0
    assert pq.read_table(out).equals(lm.benchmarks(orders, merchants, by=["industry"], metrics=["aov"],
                                                   per_merchant=True))
    capsys.readouterr()
    assert main(["benchmarks", orders, "--merchants", merchants, "--by", "industry", "--metrics",
                 "aov,repeat_customer_rate,member_aov_lift", "--currency", "EUR", "-q"]) == 0
    text = capsys.readouterr().out
    assert "1.12 EUR" in text  # the mean, 112.5 cents
    assert "0.65 EUR" in text and "%" in text  # p10 65 cents; the repeat rate as a percentage


@pytest.mark.parametrize("args, message", [
    (["--by", "merchant"], "cannot hold 'merchant'"),
    (["--metrics", "foo"], "unknown name"),
])
def test_cli_errors(tmp_path, capsys, args, message):
    orders, merchants = _files(tmp_path)
    assert main(["benchmarks", orders, "--merchants", merchants, *args, "-q"]) == 1
    assert message in capsys.readouterr().err


def test_cli_refuses_an_input_as_output(tmp_path, capsys):
    orders, merchants = _files(tmp_path)
    before = (tmp_path / "merchants.parquet").read_bytes()
    assert main(["benchmarks", orders, "--merchants", merchants, "-o", merchants, "-q"]) == 1
    assert (tmp_path / "merchants.parquet").read_bytes() == before


def test_metrics_of_the_wrong_type_are_type_errors():
    with pytest.raises(TypeError, match="metrics= must be"):
        lm.benchmarks(HAND_ORDERS, None, metrics=5)


def test_bad_input_raises_what_compute_raises_and_is_left_as_it_was(tmp_path):
    unsorted = HAND_ORDERS.take([1, 0] + list(range(2, HAND_ORDERS.num_rows)))
    with pytest.raises(lm.UnsortedInputError):
        lm.compute(unsorted)
    with pytest.raises(lm.UnsortedInputError):
        lm.benchmarks(unsorted, HAND_MERCHANTS)
    negative = HAND_ORDERS.set_column(3, "amount", pa.array([-5] + HAND_ORDERS.column("amount").to_pylist()[1:],
                                                           pa.int64()))
    path = tmp_path / "orders.parquet"
    pq.write_table(negative, path)
    before = path.read_bytes()
    with pytest.raises(lm.NegativeAmountError):
        lm.benchmarks(str(path), HAND_MERCHANTS)
    assert path.read_bytes() == before
    # With refunds the refund lowers its merchant's revenue and so its AOV: (60 - 5) / 1 order
    t = lm.benchmarks(str(path), HAND_MERCHANTS, by=["industry"], metrics=["aov"], refunds=True, per_merchant=True)
    assert t.to_pylist()[0]["merchant_id"] == 1 and t.to_pylist()[0]["value"] == 55.0
    assert path.read_bytes() == before
