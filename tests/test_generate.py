"""The generator writes a valid, deterministic, calibrated network with bounded memory."""
import hashlib
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import loyaltymetrics as lm
from loyaltymetrics import synthetic as gen
from loyaltymetrics.cli import main

CALIBRATION_ROWS = 4_000_000
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    folder = tmp_path_factory.mktemp("network")
    made = lm.generate(folder / "orders.arrow", rows=CALIBRATION_ROWS, seed=11)
    return made


@pytest.fixture(scope="module")
def by_industry(network):
    return lm.compute(network.orders_path, network.merchants_path, by=["industry"], period="year")


def _rows_of(table):
    return table.to_pylist()


def test_file_is_canonical_and_has_exactly_the_rows_asked_for(tmp_path):
    made = lm.generate(tmp_path / "o.arrow", rows=123_457, seed=5, merchants_count=40)
    assert made.merchants_path == str(tmp_path / "o_merchants.parquet")
    with pa.memory_map(made.orders_path) as source:
        reader = pa.ipc.open_file(source)
        table = reader.read_all()
    assert table.schema == gen.ORDERS_SCHEMA
    assert table.num_rows == 123_457 == made.rows
    assert all(c.null_count == 0 for c in table.columns)
    keys = np.lexsort((table.column("order_ts").cast(pa.int64()).to_numpy(),
                       table.column("customer_id").to_numpy(), table.column("merchant_id").to_numpy()))
    assert (keys == np.arange(table.num_rows)).all()  # already sorted: lexsort is stable
    merchants = pq.read_table(made.merchants_path)
    assert merchants.column("merchant_id").to_pylist() == list(range(1, 41))
    assert set(table.column("merchant_id").to_pylist()) <= set(range(1, 41))
    assert set(merchants.column("industry").to_pylist()) == set(gen.INDUSTRIES)
    ts = table.column("order_ts").cast(pa.int64()).to_numpy()
    assert ts.min() >= np.datetime64("2022-01-01", "us").astype(np.int64)
    assert ts.max() < np.datetime64("2024-01-01", "us").astype(np.int64)
    assert (table.column("amount").to_numpy() > 0).all()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    def digest(name, seed, **kw):
        made = lm.generate(tmp_path / name, tmp_path / (name + ".m.parquet"), rows=150_000, seed=seed, **kw)
        return (hashlib.sha256(Path(made.orders_path).read_bytes()).hexdigest(),
                hashlib.sha256(Path(made.merchants_path).read_bytes()).hexdigest())

    first = digest("a.arrow", 3)
    assert digest("b.arrow", 3) == first
    assert digest("c.arrow", 3, progress=True) == first  # a progress bar changes nothing
    assert digest("d.arrow", 4)[0] != first[0]


def test_one_merchant_larger_than_a_block_stays_sorted(tmp_path):
    """A merchant is simulated block by block; customer ids keep ascending across blocks."""
    rows = gen.BLOCK_ROWS * 2 + 12_345
    made = lm.generate(tmp_path / "one.arrow", rows=rows, seed=2, merchants_count=1, years=(2023, 2023))
    out = lm.compute(made.orders_path, by=["merchant"], period="year")  # raises if unsorted
    assert out.column("orders").to_pylist() == [rows]
    assert out.column("period_start").to_pylist()[0].year == 2023


def test_memory_does_not_grow_with_rows(tmp_path):
    """Peak NumPy allocations are the same for 2M and 6M rows of one merchant (blocks, batches)."""
    script = textwrap.dedent(f"""
        import sys, tracemalloc, loyaltymetrics as lm
        rows = int(sys.argv[1])
        tracemalloc.start()
        lm.generate({str(tmp_path)!r} + "/m.arrow", rows=rows, seed=1, merchants_count=1)
        print(tracemalloc.get_traced_memory()[1])
    """)
    peaks = [int(subprocess.run([sys.executable, "-c", script, str(rows)], capture_output=True, text=True,
                                check=True).stdout) for rows in (2_000_000, 6_000_000)]
    assert peaks[1] < peaks[0] * 1.1, peaks
    assert peaks[1] < 6_000_000 * 29, peaks  # less than the file (29 bytes a row) already at 6M rows


def test_every_size_bucket_is_covered(network):
    table = lm.compute(network.orders_path, by=["size"], period="year")
    for year in (2022, 2023):
        sizes = {r["size"] for r in _rows_of(table) if r["period_start"].year == year}
        assert sizes == set(gen.SIZE_LABELS), (year, sizes)
    # The heavy tail: the largest bucket holds few merchants but the most orders.
    first_year = [r for r in _rows_of(table) if r["period_start"].year == 2022]
    biggest = max(first_year, key=lambda r: r["orders"])
    assert biggest["size"] in ("30k+", "3k-30k")
    smallest = next(r for r in first_year if r["size"] == "<30")
    assert smallest["merchants"] > biggest["merchants"]


@pytest.mark.parametrize("industry", gen.INDUSTRIES)
def test_industry_metrics_land_on_their_targets(by_industry, industry):
    target = gen.TARGETS[industry]
    rows = [r for r in _rows_of(by_industry) if r["industry"] == industry]
    assert [r["period_start"].year for r in rows] == [2022, 2023]
    for k, row in enumerate(rows):
        aov = row["aov"] / 100
        want_aov = target.aov * (1 + target.aov_growth) ** k
        assert abs(aov / want_aov - 1) <= gen.TOLERANCE["aov"], (row["period_start"], aov, want_aov)
        assert abs(row["repeat_customer_rate"] - target.repeat_rate) <= gen.TOLERANCE["repeat_rate"], row
        assert abs(row["purchase_frequency"] - target.frequency) <= gen.TOLERANCE["frequency"], row
    # Year-over-year drift: AOV grows by about the industry's rate.
    assert rows[0]["aov_yoy"] is None
    assert abs(rows[1]["aov_yoy"] - 100 * target.aov_growth) <= 2.5, rows[1]["aov_yoy"]
    assert 0 < rows[1]["new_customers_yoy"] < 25
    assert rows[1]["returning_customers"] > 0


def test_programme_metrics_land_in_their_bands(network):
    table = lm.compute(network.orders_path, network.merchants_path, by=["industry"], period="year")
    for row in _rows_of(table):
        measured = {
            "reward_order_share": row["reward_orders"] / row["orders"],
            "member_repeat_lift": row["member_repeat_lift"],
            "member_frequency_lift": row["member_frequency_lift"],
            "member_aov_lift": row["member_aov_lift"],
        }
        for name, (lo, hi) in gen.PROGRAMME_BANDS.items():
            assert lo <= measured[name] <= hi, (row["industry"], row["period_start"], name, measured[name])


def test_network_ranges(network):
    """Across the network the headline figures sit in the published ranges."""
    for row in _rows_of(lm.compute(network.orders_path, period="year")):
        assert 60 <= row["aov"] / 100 <= 110
        assert 0.25 <= row["repeat_customer_rate"] <= 0.35
        assert 1.5 <= row["purchase_frequency"] <= 1.7


def _documented_targets(text):
    """{industry: (aov, repeat rate, frequency, aov growth)} from a table in the docs."""
    found = {}
    for industry in gen.INDUSTRIES:
        line = next(line for line in text.splitlines() if line.strip("| ").startswith(industry))
        numbers = re.findall(r"[-+]?\d+(?:\.\d+)?", line[line.index(industry) + len(industry):])
        aov, repeat, _, frequency, _, growth = (float(x) for x in numbers[:6])
        found[industry] = (aov, repeat / 100, frequency, growth / 100)
    return found


@pytest.mark.parametrize("where", ["docstring", "README"])
def test_documented_targets_are_the_ones_checked(where):
    text = gen.__doc__ if where == "docstring" else README.read_text()
    documented = _documented_targets(text)
    for industry, target in gen.TARGETS.items():
        assert documented[industry] == pytest.approx(
            (target.aov, target.repeat_rate, target.frequency, target.aov_growth)), industry


def test_default_merchant_count_scales_with_rows():
    counts = [gen.default_merchants_count(rows) for rows in (10_000, 2_000_000, 10**8, 10**9)]
    assert counts[0] == len(gen.INDUSTRIES)
    assert counts == sorted(counts) and counts[3] > 9 * counts[2]


@pytest.mark.parametrize("kwargs, message", [
    ({"rows": 10, "merchants_count": 11}, "cannot hold"),
    ({"rows": 0}, "at least 1"),
    ({"rows": "1.5"}, "whole number"),
    ({"rows": 100, "years": (2023, 2022)}, "first <= last"),
    ({"rows": 100, "seed": -1}, "seed"),
])
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        lm.generate(tmp_path / "x.arrow", **kwargs)
    assert not (tmp_path / "x.arrow").exists()


def test_command_line(tmp_path, capsys):
    out = tmp_path / "cli.arrow"
    assert main(["generate", str(out), "--rows", "5e4", "--merchants", str(tmp_path / "m.csv"),
                 "--years", "2021-2023", "--seed", "9"]) == 0
    report = capsys.readouterr().err
    assert re.search(r"wrote 50,000 orders of \d+ merchants .* rows/s", report), report
    table = lm.compute(str(out), str(tmp_path / "m.csv"), by=["industry"], period="year")
    assert {r["period_start"].year for r in _rows_of(table)} == {2021, 2022, 2023}
    assert sum(table.column("orders").to_pylist()) == 50_000
    assert main(["generate", str(tmp_path / "q.arrow"), "--rows", "1000", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["generate", str(tmp_path / "bad.arrow"), "--rows", "5", "--merchants-count", "6"]) == 1
    assert "cannot hold" in capsys.readouterr().err
