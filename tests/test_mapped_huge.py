"""Arrow IPC files mapped with MADV_HUGEPAGE (pages missing from the page cache read in 2 MiB folios).

The advice changes only how missing pages are read: every result must be
the same with it and without it, and where the kernel refuses it (or Python
lacks it) nothing changes. Files shorter than a page, without rows, with
record batches whose buffers start anywhere in a page, several files of a
directory, 1 to 3 threads, a file read cold (dropped from the page cache
first), all compared with the same rows in memory (no mapping at all).
"""
import errno
import mmap
import os

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import loyaltymetrics as lm
from loyaltymetrics import inputs
from strategies import orders_tables, rebatch

T0 = np.datetime64("2022-01-01", "us")


def orders(n, seed=0, customers_per_merchant=40):
    rng = np.random.default_rng(seed)
    key = np.sort(rng.integers(0, max(n // 3, 1), n))
    ts = T0 + np.sort(rng.integers(0, 900 * 86_400 * 10**6, n)).astype("timedelta64[us]")
    merchant, customer = key // customers_per_merchant + 1, key % customers_per_merchant + 1
    order = np.lexsort((ts, customer, merchant))
    return pa.table({
        "merchant_id": pa.array(merchant[order], pa.int32()),
        "customer_id": pa.array(customer[order], pa.int64()),
        "order_ts": pa.array(ts[order], pa.timestamp("us", tz="UTC")),
        "amount": pa.array(rng.integers(0, 20_000, n), pa.int64()),
        "reward": pa.array(rng.random(n) < 0.2),
    })


def write_ipc(table, path, batch_rows=None):
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=batch_rows)
    return path


@pytest.fixture
def advice_calls(monkeypatch):
    """Record the advice each new map gets (and still give it)."""
    calls = []
    real = inputs._read_missing_in_huge_folios

    def recording(mapping):
        calls.append(mapping)
        real(mapping)

    monkeypatch.setattr(inputs, "_read_missing_in_huge_folios", recording)
    return calls


def without_advice(monkeypatch):
    monkeypatch.setattr(inputs, "_read_missing_in_huge_folios", lambda mapping: None)


def compute_both(path, table, monkeypatch, **kw):
    """compute() over the mapped file with the advice, without it, and over the rows in memory."""
    with_advice = lm.compute(str(path), **kw)
    with monkeypatch.context() as m:
        without_advice(m)
        plain = lm.compute(str(path), **kw)
    in_memory = lm.compute(table, **kw)
    return with_advice, plain, in_memory


@pytest.mark.skipif(getattr(mmap, "MADV_HUGEPAGE", None) is None, reason="no MADV_HUGEPAGE here")
def test_maps_get_the_advice(tmp_path, advice_calls, monkeypatch):
    """Each map of an Arrow file gets MADV_HUGEPAGE, before any page is read."""
    advised = []
    real_madvise = mmap.mmap.madvise

    class Recording(mmap.mmap):
        def madvise(self, option, *args):
            advised.append(option)
            return real_madvise(self, option, *args)

    monkeypatch.setattr(inputs.mmap, "mmap", Recording)
    table = orders(500)
    path = write_ipc(table, tmp_path / "o.arrow", batch_rows=97)
    assert lm.compute(str(path), by=["merchant"]).equals(lm.compute(table, by=["merchant"]))
    assert len(advice_calls) == 1 and advised == [mmap.MADV_HUGEPAGE]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("n, batch_rows", [(1, None), (3, 1), (150, 7), (5000, 97), (20_000, 4099)])
def test_same_results_with_and_without_advice(tmp_path, monkeypatch, n, batch_rows, threads):
    """Tiny files (under a page), one-row batches, batches whose buffers start mid-page: all equal."""
    table = orders(n, seed=n)
    path = write_ipc(table, tmp_path / "o.arrow", batch_rows)
    kw = dict(by=["merchant"], period="month", threads=threads, chunk_rows=max(n // 5, 1))
    with_advice, plain, in_memory = compute_both(path, table, monkeypatch, **kw)
    assert with_advice.equals(plain) and with_advice.equals(in_memory)


def test_zero_rows(tmp_path, monkeypatch):
    table = orders(10).slice(0, 0)
    path = write_ipc(table, tmp_path / "empty.arrow")
    with_advice, plain, in_memory = compute_both(path, table, monkeypatch, by=["merchant"])
    assert with_advice.num_rows == 0 and with_advice.equals(plain) and with_advice.equals(in_memory)


@pytest.mark.parametrize("threads", [1, 2])
def test_several_files(tmp_path, monkeypatch, threads):
    """A directory of Arrow files, one map each, read in path order: the rows of all of them."""
    table = orders(3000, seed=5)
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, start in enumerate(range(0, 3000, 1000)):
        write_ipc(table.slice(start, 1000), folder / f"part-{i}.arrow", batch_rows=333)
    kw = dict(by=["merchant"], period="year", threads=threads)
    with_advice, plain, in_memory = compute_both(folder, table, monkeypatch, **kw)
    assert with_advice.equals(plain) and with_advice.equals(in_memory)


@pytest.mark.parametrize("failure", ["einval", "missing"])
def test_advice_refused_or_missing_changes_nothing(tmp_path, monkeypatch, failure):
    """A kernel without transparent huge pages answers EINVAL; an old Python has no madvise: both read as before."""
    table = orders(2000, seed=2)
    path = write_ipc(table, tmp_path / "o.arrow", batch_rows=500)

    class Refusing(mmap.mmap):
        def madvise(self, *args):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    if failure == "einval":
        monkeypatch.setattr(inputs.mmap, "mmap", Refusing)
    else:
        monkeypatch.delattr(inputs.mmap, "MADV_HUGEPAGE", raising=False)
    assert lm.compute(str(path), by=["merchant"], threads=2).equals(lm.compute(table, by=["merchant"], threads=2))


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="needs posix_fadvise to drop the page cache")
@pytest.mark.parametrize("threads", [1, 2])
def test_cold_file(tmp_path, monkeypatch, threads):
    """Pages read through the map from disk (the file dropped from the page cache first): the same results."""
    table = orders(60_000, seed=9)
    path = write_ipc(table, tmp_path / "o.arrow", batch_rows=7001)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)   # written back, so that it can be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        cold = lm.compute(str(path), by=["merchant"], period="month", threads=threads)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        with monkeypatch.context() as m:
            without_advice(m)
            plain = lm.compute(str(path), by=["merchant"], period="month", threads=threads)
    finally:
        os.close(fd)
    assert cold.equals(plain) and cold.equals(lm.compute(table, by=["merchant"], period="month", threads=threads))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=orders_tables(), batch=st.integers(1, 9), threads=st.integers(1, 3))
def test_hostile_tables_same_with_and_without_advice(tmp_path_factory, table, batch, threads):
    """Hypothesis orders (year edges, equal keys, int64 ids, null rewards) written in small batches."""
    path = tmp_path_factory.mktemp("huge") / "o.arrow"
    write_ipc(rebatch(table, batch), path)
    kw = dict(by=["merchant"], period="month", threads=threads, chunk_rows=3)
    mp = pytest.MonkeyPatch()
    try:
        with_advice = lm.compute(str(path), **kw)
        without_advice(mp)
        plain = lm.compute(str(path), **kw)
    finally:
        mp.undo()
    assert with_advice.equals(plain)
