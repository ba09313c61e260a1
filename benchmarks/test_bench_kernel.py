"""pytest-benchmark timings of the kernel and of ``compute()`` on a few million rows.

Not part of the test suite: ``testpaths = ["tests"]`` in pyproject.toml keeps
a plain ``pytest`` away from this folder. Run it by naming it:

    python -m pytest benchmarks/
    python -m pytest benchmarks/ --benchmark-columns=median,min,max,ops --benchmark-sort=name
    LOYALTYMETRICS_BENCH_ROWS=10000000 python -m pytest benchmarks/ --benchmark-save=local

``LOYALTYMETRICS_BENCH_ROWS`` sets the rows (default 3,000,000),
``LOYALTYMETRICS_BENCH_ROUNDS`` the timed rounds (default 5, after one
warm-up round), ``LOYALTYMETRICS_BENCH_DATA`` a folder where the data file is
kept and reused between sessions (default: a fresh temporary folder). The
file is memory-mapped and read once before timing, so it is in the page
cache.

Engines and thread counts that this version of ``compute()`` does not take
are skipped. Nothing here asserts a time; the assertions check that every
variant returns the same table, since a fast wrong answer is no result.
"""
import inspect
import os
from pathlib import Path

import pytest

from datagen import data_file_name, write_orders_file

lm = pytest.importorskip("loyaltymetrics")
from loyaltymetrics.inputs import order_batches  # noqa: E402
from loyaltymetrics.scan import scan_orders  # noqa: E402

ROWS = int(float(os.environ.get("LOYALTYMETRICS_BENCH_ROWS", 3_000_000)))
ROUNDS = int(os.environ.get("LOYALTYMETRICS_BENCH_ROUNDS", 5))
COMPUTE_KEYWORDS = set(inspect.signature(lm.compute).parameters)
SCAN_KEYWORDS = set(inspect.signature(scan_orders).parameters)
ENGINE_THREADS = [("cython", 1), ("cython", 2), ("numba", 1), ("numba", 2)]


@pytest.fixture(scope="session")
def orders_path(tmp_path_factory):
    folder = os.environ.get("LOYALTYMETRICS_BENCH_DATA") or tmp_path_factory.mktemp("bench")
    path, _ = write_orders_file(Path(folder) / data_file_name(ROWS), ROWS, seed=0)
    with open(path, "rb", buffering=0) as f:  # into the page cache
        while f.read(16 << 20):
            pass
    return path


@pytest.fixture(scope="session")
def reference(orders_path):
    """compute() with the default engine and threads, by merchant and year: what every variant must return."""
    return lm.compute(orders_path, by=["merchant"], period="year")


def timed(benchmark, fn):
    return benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=1, iterations=1)


def engine_options(engine, threads, keywords):
    """Keywords for this variant, or skip where this version lacks them."""
    if "engine" not in keywords or "threads" not in keywords:
        if (engine, threads) != ("cython", 1):
            pytest.skip("no engine= / threads= in this version")
        return {}  # the one-thread Cython kernel was the only one
    if engine == "numba":
        pytest.importorskip("numba")
    return {"engine": engine, "threads": threads}


@pytest.mark.parametrize("engine, threads", ENGINE_THREADS)
@pytest.mark.parametrize("period", ["year", "month"])
def test_kernel(benchmark, orders_path, period, engine, threads):
    """One pass of the kernel over the memory-mapped batches: no combine, no finalize."""
    options = engine_options(engine, threads, SCAN_KEYWORDS)
    benchmark.extra_info["rows"] = ROWS
    partials = timed(benchmark, lambda: scan_orders(order_batches(orders_path), period, **options))
    assert int(partials.column("orders").sum()) == ROWS


@pytest.mark.parametrize("by", [[], ["merchant"], ["size"]], ids=["network", "merchant", "size"])
def test_compute_default(benchmark, orders_path, by):
    """compute() end to end (open, scan, finalize) with the default engine and threads."""
    benchmark.extra_info["rows"] = ROWS
    table = timed(benchmark, lambda: lm.compute(orders_path, by=by, period="year"))
    assert sum(table.column("orders").to_pylist()) == ROWS


@pytest.mark.parametrize("engine, threads", ENGINE_THREADS)
def test_compute_engine_threads(benchmark, orders_path, reference, engine, threads):
    """compute(by=["merchant"]) per engine and thread count; each must equal the default's table."""
    options = engine_options(engine, threads, COMPUTE_KEYWORDS)
    benchmark.extra_info["rows"] = ROWS
    table = timed(benchmark, lambda: lm.compute(orders_path, by=["merchant"], period="year", **options))
    assert table.equals(reference)
