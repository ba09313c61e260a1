"""The command line writes exactly what compute() returns, in each format."""
import importlib
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import loyaltymetrics as lm
from loyaltymetrics.cli import main
from loyaltymetrics.synthetic import generate


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sample")
    made = generate(folder / "generated.arrow", rows=40_000, seed=3, merchants_count=12)
    orders = pa.ipc.open_file(made.orders_path).read_all()
    merchants = pq.read_table(made.merchants_path)
    orders = orders.rename_columns(["merchant_id", "customer_id", "created_at", "total_cents", "reward"])
    orders_path, merchants_path = folder / "orders.arrow", folder / "merchants.csv"
    with pa.OSFile(str(orders_path), "wb") as sink, pa.ipc.new_file(sink, orders.schema) as writer:
        writer.write_table(orders, max_chunksize=5000)
    pacsv.write_csv(merchants, merchants_path)
    return folder, str(orders_path), str(merchants_path)


def expected(orders_path, merchants_path):
    return lm.compute(orders_path, merchants_path, by=["industry", "size"], period="quarter",
                      columns={"order_ts": "created_at", "amount": "total_cents"})


ARGS = ["--by", "industry,size", "--period", "quarter", "--columns", "order_ts=created_at,amount=total_cents"]


def test_parquet_output_equals_compute(sample):
    folder, orders, merchants = sample
    out = folder / "m.parquet"
    assert main(["compute", orders, "--merchants", merchants, *ARGS, "-o", str(out)]) == 0
    assert pq.read_table(out).equals(expected(orders, merchants))


def test_csv_and_json_outputs_hold_the_same_values(sample):
    folder, orders, merchants = sample
    want = expected(orders, merchants)
    assert main(["compute", orders, "--merchants", merchants, *ARGS, "-o", str(folder / "m.csv")]) == 0
    csv = pacsv.read_csv(folder / "m.csv")
    assert csv.column_names == want.column_names
    assert csv.column("orders").to_pylist() == want.column("orders").to_pylist()
    assert csv.column("aov").to_pylist() == want.column("aov").to_pylist()
    assert main(["compute", orders, "--merchants", merchants, *ARGS, "-o", str(folder / "m.json")]) == 0
    rows = json.loads((folder / "m.json").read_text())
    assert [list(r) for r in rows[:1]] == [want.column_names]
    assert [r["retention_rate"] for r in rows] == want.column("retention_rate").to_pylist()
    assert [r["period_start"] for r in rows] == [str(d) for d in want.column("period_start").to_pylist()]


def test_summary_to_stdout(sample, capsys):
    _, orders, merchants = sample
    assert main(["compute", orders, "--merchants", merchants, *ARGS]) == 0
    printed = capsys.readouterr().out
    want = expected(orders, merchants)
    assert f"({want.num_rows} rows;" in printed
    assert len(printed.splitlines()) == want.num_rows + 3


def test_unknown_output_suffix_is_an_error(sample, capsys):
    folder, orders, _ = sample
    assert main(["compute", orders, *ARGS, "-o", str(folder / "m.xlsx")]) == 1
    assert "use a .parquet, .csv or .json suffix" in capsys.readouterr().err


def test_help_and_demo_run_as_a_module():
    help_text = subprocess.run([sys.executable, "-m", "loyaltymetrics", "compute", "--help"],
                               capture_output=True, text=True, check=True).stdout
    for option in ("--merchants", "--by", "--period", "-o", "--columns", "--size-edges", "--refunds"):
        assert option in help_text
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}  # to a pipe, no width: every column
    demo = subprocess.run([sys.executable, "-m", "loyaltymetrics", "demo"], capture_output=True, text=True, check=True,
                          env=env)
    assert "industry" in demo.stdout and "size" in demo.stdout and "orders YoY" in demo.stdout


@pytest.mark.parametrize("engine", ["cython", "numba"])
@pytest.mark.parametrize("threads", ["1", "2"])
def test_engine_and_threads_options_give_the_same_table(sample, engine, threads):
    folder, orders, merchants = sample
    out = folder / f"m-{engine}-{threads}.parquet"
    assert main(["compute", orders, "--merchants", merchants, *ARGS, "--engine", engine, "--threads", threads,
                 "-o", str(out)]) == 0
    assert pq.read_table(out).equals(expected(orders, merchants))


@pytest.mark.parametrize("option", [["--threads", "0"], ["--threads", "two"], ["--engine", "fortran"]])
def test_bad_engine_or_threads_is_a_usage_error(sample, option):
    _, orders, _ = sample
    with pytest.raises(SystemExit) as exit_info:
        main(["compute", orders, *option])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("command", ["compute", "cohorts", "concentration"])
@pytest.mark.parametrize("output", [None, "out.csv"])
def test_input_without_orders_exits_non_zero(tmp_path, capsys, command, output):
    # An empty result is no silent success: e.g. a prepare that wrote no order (issue 11).
    schema = pa.schema([("merchant_id", pa.int32()), ("customer_id", pa.int64()),
                        ("order_ts", pa.timestamp("us", tz="UTC")), ("amount", pa.int64())])
    empty = tmp_path / "empty.arrow"
    with pa.OSFile(str(empty), "wb") as sink, pa.ipc.new_file(sink, schema):
        pass
    argv = [command, str(empty)] + (["-o", str(tmp_path / output)] if output else [])
    assert main(argv) == 1
    assert "hold no rows" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.arrow"]   # nothing written
    assert lm.compute(str(empty)).num_rows == 0   # the API still returns the (empty) table


@pytest.mark.parametrize("command, module", [("clv", "scipy"), ("report", "matplotlib")])
def test_a_missing_optional_dependency_is_one_line_naming_the_extra(sample, tmp_path, monkeypatch, capsys,
                                                                     command, module):
    clv_module = importlib.import_module("loyaltymetrics.clv")   # lm.clv is the function

    _, orders_path, _ = sample
    monkeypatch.setitem(sys.modules, module, None)           # importing it now raises ImportError
    monkeypatch.setattr(clv_module, "sp", clv_module._SciPy())  # nothing loaded yet in this process
    argv = [command, orders_path, "--columns", "order_ts=created_at,amount=total_cents"]
    argv += ["-o", str(tmp_path / "report.html")] if command == "report" else []
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("loyaltymetrics: error: ") and err.count("\n") == 1, err
    assert f"loyaltymetrics[{ {'scipy': 'clv', 'matplotlib': 'report'}[module] }]" in err
    assert isinstance(lm.MissingDependencyError("x"), ImportError)


def test_rfm_merchants_gives_each_merchant_its_zone(sample, tmp_path):
    # The merchants' timezone column reaches rfm from the CLI as from the API (SPEC §3); a far-off zone
    # moves orders across local days, so the flag being ignored would show as the UTC table.
    folder, orders, merchants = sample
    table = pacsv.read_csv(merchants)
    zones = ["Pacific/Kiritimati" if i % 2 else "America/Adak" for i in range(table.num_rows)]
    zoned = tmp_path / "zoned.parquet"
    pq.write_table(table.append_column("timezone", pa.array(zones)), zoned)
    columns = {"order_ts": "created_at", "amount": "total_cents"}
    out = tmp_path / "r.parquet"
    assert main(["rfm", orders, "--merchants", str(zoned), "--columns", "order_ts=created_at,amount=total_cents",
                 "--observation-end", "2024-01-01", "-o", str(out), "-q"]) == 0
    got = pq.read_table(out)
    assert got.equals(lm.rfm(orders, observation_end="2024-01-01", columns=columns, merchants=str(zoned)).read_all())
    assert not got.equals(lm.rfm(orders, observation_end="2024-01-01", columns=columns).read_all())


def test_rfm_refuses_to_write_over_its_merchants(sample, capsys):
    folder, orders, merchants = sample
    before = open(merchants, "rb").read()
    assert main(["rfm", orders, "--merchants", merchants, "-o", merchants, "-q"]) != 0
    assert open(merchants, "rb").read() == before
