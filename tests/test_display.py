"""What the commands print for a person (SPEC §7, issue 13): keys in ``by`` order, money in major
units with the reporting currency, rates as percentages, cohorts as a triangle; files stay exact.

Expected texts are derived here from the API's tables with the formats the README documents,
not with the library's own formatter."""
import io
import json
import re

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import loyaltymetrics as lm
from loyaltymetrics import display
from loyaltymetrics.cli import main
from loyaltymetrics.synthetic import generate


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    folder = tmp_path_factory.mktemp("display")
    made = generate(folder / "orders.arrow", folder / "merchants.parquet", rows=20_000, seed=5, merchants_count=10)
    return folder, str(made.orders_path), str(made.merchants_path)


@pytest.fixture(autouse=True)
def wide(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)  # captured output is no terminal: no width limit


def cells(line):
    """A printed line's cells: columns are separated by two or more spaces (values have at most one)."""
    return re.split(r"\s{2,}", line.strip())


def body(printed):
    """Header and data lines of a printed table (the rule under the header and the notes left out)."""
    lines = printed.splitlines()
    assert set(lines[1].replace(" ", "")) == {"-"}
    return cells(lines[0]), [cells(line) for line in lines[2:] if not line.startswith(("(", "*"))]


def money(cents, currency=None):
    if cents is None:
        return "-"
    text = f"{cents / 100:,.2f}"
    return f"{text} {currency}" if currency else text


def fraction(x):
    return "-" if x is None else f"{x * 100:.1f}%"


def percent(x):
    return "-" if x is None else f"{x:,.1f}%"


def change(x):
    return "-" if x is None else f"{x:+,.1f}%"


def count(n):
    return "-" if n is None else f"{n:,}"


# The summary's titles and how the README says each is shown.
COMPUTE_SHOWN = {
    "merchants": ("merchants", count), "orders": ("orders", count), "orders YoY": ("orders_yoy", change),
    "revenue": ("revenue", money), "revenue YoY": ("revenue_yoy", change), "AOV": ("aov", money),
    "frequency": ("purchase_frequency", lambda x: "-" if x is None else f"{x:,.2f}"), "CLV": ("clv", money),
    "repeat rate": ("repeat_customer_rate", fraction), "repeat YoY": ("repeat_customer_rate_yoy", change),
    "retention": ("retention_rate", percent), "reward value": ("reward_revenue", money),
    "loyalty ROI": ("loyalty_roi", percent),
}


@pytest.mark.parametrize("by", [["size", "industry"], ["industry", "size"]])
def test_compute_summary_keeps_by_order_and_shows_every_row(sample, capsys, by):
    _, orders, merchants = sample
    want = lm.compute(orders, merchants, by=by)
    assert main(["compute", orders, "--merchants", merchants, "--by", ",".join(by)]) == 0
    header, rows = body(capsys.readouterr().out)
    assert header[:3] == by + ["period"]
    assert [r[:3] for r in rows] == [[str(row[by[0]]), str(row[by[1]]), str(row["period_start"])]
                                     for row in want.to_pylist()]


@pytest.mark.parametrize("currency, option", [(None, []), ("EUR", ["--currency", "eur"])])
def test_compute_summary_shows_money_in_major_units_and_rates_in_percent(sample, capsys, currency, option):
    _, orders, merchants = sample
    want = lm.compute(orders, merchants, by=["industry"]).to_pylist()
    assert main(["compute", orders, "--merchants", merchants, "--by", "industry", *option]) == 0
    printed = capsys.readouterr().out
    header, rows = body(printed)
    assert header[2:] == list(COMPUTE_SHOWN)  # no terminal width: every summary column
    for row, line in zip(want, rows, strict=True):
        for title, text in zip(header[2:], line[2:], strict=True):
            column, shown = COMPUTE_SHOWN[title]
            expected = shown(row[column], currency) if shown is money else shown(row[column])
            assert text == expected, (title, row[column])
    assert f"money in {currency}" in printed if currency else "money in major units" in printed


def test_the_currency_prepare_recorded_is_shown_and_an_option_overrides_it(sample, tmp_path, capsys):
    _, orders, _ = sample
    table = pa.ipc.open_file(orders).read_all()
    table = table.replace_schema_metadata({b"loyaltymetrics.currency": b"CAD"})
    tagged = tmp_path / "tagged.arrow"
    with pa.OSFile(str(tagged), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    pq.write_table(table, tmp_path / "tagged.parquet")
    revenue = lm.compute(orders).column("revenue").to_pylist()
    for path in (tagged, tmp_path / "tagged.parquet"):
        assert main(["compute", str(path)]) == 0
        header, rows = body(capsys.readouterr().out)
        assert [r[header.index("revenue")] for r in rows] == [money(v, "CAD") for v in revenue]
    assert main(["compute", str(tagged), "--currency", "USD"]) == 0
    header, rows = body(capsys.readouterr().out)
    assert [r[header.index("revenue")] for r in rows] == [money(v, "USD") for v in revenue]
    assert display.reporting_currency(table) == "CAD" and display.reporting_currency(orders) is None


def test_a_narrow_terminal_keeps_keys_and_period_and_says_what_it_left_out(sample, capsys, monkeypatch):
    _, orders, merchants = sample
    monkeypatch.setenv("COLUMNS", "90")
    assert main(["compute", orders, "--merchants", merchants, "--by", "size,industry"]) == 0
    printed = capsys.readouterr().out
    assert all(len(line) <= 90 for line in printed.splitlines() if not line.startswith("("))
    header, _ = body(printed)
    assert header[:3] == ["size", "industry", "period"] and "orders" in header and "revenue" in header
    assert f"{len(COMPUTE_SHOWN) - len(header) + 3} columns left out" in printed


def test_every_output_column_has_a_display_kind(sample):
    _, orders, merchants = sample
    keys = {"merchant_id", "merchant_name", "industry", "country", "size", "period_start", "period_complete",
            "cohort_start", "customer_id"}
    tables = [lm.compute(orders, merchants, by=["merchant"]), lm.cohorts(orders), lm.concentration(orders),
              lm.rfm(orders, calibration_end="2023-06-30").read_all()]
    for table in tables:
        assert [c for c in table.column_names if c not in keys and display.kind(c) is None] == []


def test_concentration_prints_money_and_shares(sample, capsys):
    _, orders, merchants = sample
    want = lm.concentration(orders, merchants, by=["size", "industry"]).to_pylist()
    assert main(["concentration", orders, "--merchants", merchants, "--by", "size,industry",
                 "--currency", "USD"]) == 0
    header, rows = body(capsys.readouterr().out)
    assert header == ["size", "industry", "period", "customers", "top_customers", "revenue", "top_revenue",
                      "top_share"]
    # A period the observation window does not cover whole is marked with "*" (SPEC §3).
    assert rows == [[row["size"], row["industry"], f"{row['period_start']}{'' if row['period_complete'] else '*'}",
                     count(row["customers"]),
                     count(row["top_customers"]), money(row["revenue"], "USD"), money(row["top_revenue"], "USD"),
                     fraction(row["top_share"])] for row in want]


def test_cohorts_print_a_retention_triangle_per_group(sample, capsys):
    _, orders, merchants = sample
    want = lm.cohorts(orders, merchants, by=["industry"], period="quarter").to_pylist()
    assert main(["cohorts", orders, "--merchants", merchants, "--by", "industry", "--period", "quarter"]) == 0
    printed = capsys.readouterr().out
    # The triangle as the table says it should be: per group, cohort -> (size, {k: retention}).
    expected = {}
    for row in want:
        cohort = expected.setdefault(f"industry={row['industry']}", {}).setdefault(
            str(row["cohort_start"]), [count(row["cohort_customers"]), {}])
        cohort[1][row["period_index"]] = fraction(row["retention"])
    shown, group, ks = {}, None, None
    for line in printed.splitlines():
        if line.startswith("industry="):
            group = shown.setdefault(line, {})
        elif line.startswith("cohort"):
            ks = [int(k) for k in line.split()[2:]]
        elif line and line[0].isdigit():
            start, size, *values = line.split()
            shown_cells = dict(zip(ks, values))   # cells not yet observable are blank: the line ends early
            group[start] = [size, shown_cells]
    assert shown.keys() == expected.keys()
    for name, cohorts in expected.items():
        assert shown[name] == cohorts, name
    assert len(printed.splitlines()) < len(want)  # a glance, not a line per cell


def test_a_wide_triangle_is_cut_to_the_terminal(sample, capsys, monkeypatch):
    _, orders, _ = sample
    monkeypatch.setenv("COLUMNS", "70")
    assert main(["cohorts", orders]) == 0
    printed = capsys.readouterr().out
    assert all(len(line) <= 70 for line in printed.splitlines() if not line.startswith("("))
    assert "not shown" in printed


@pytest.mark.parametrize("calibration", [[], ["--calibration-end", "2023-06-30"]])
def test_rfm_json_holds_what_parquet_holds(sample, tmp_path, capsys, calibration):
    _, orders, _ = sample
    assert main(["rfm", orders, "-o", str(tmp_path / "r.parquet"), "-q", *calibration]) == 0
    assert main(["rfm", orders, "-o", str(tmp_path / "r.json"), "-q", *calibration]) == 0
    want = pq.read_table(tmp_path / "r.parquet")
    assert json.loads((tmp_path / "r.json").read_text()) == want.to_pylist()
    pd.testing.assert_frame_equal(pd.read_json(tmp_path / "r.json"), want.to_pandas(), check_dtype=False)
    capsys.readouterr()
    assert main(["rfm", orders, "-o", str(tmp_path / "r.txt")]) == 1
    assert "use a .parquet, .csv or .json suffix" in capsys.readouterr().err


def test_report_quiet_prints_nothing_and_draws_progress_only_on_a_terminal(sample, tmp_path, monkeypatch, capsys):
    _, orders, merchants = sample
    argv = ["report", orders, "--merchants", merchants, "-o", str(tmp_path / "r.html")]
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert main(argv + ["-q"]) == 0
    assert terminal.getvalue() == "" and capsys.readouterr().out == ""
    assert main(argv + ["--currency", "EUR"]) == 0
    assert "20.0k/20.0k" in terminal.getvalue() and "wrote the report" in terminal.getvalue()
    assert "Revenue (EUR)" in (tmp_path / "r.html").read_text(encoding="utf-8")
    plain = io.StringIO()  # not a terminal: the closing line only
    monkeypatch.setattr("sys.stderr", plain)
    assert main(argv) == 0
    assert plain.getvalue() == f"wrote the report to {tmp_path / 'r.html'}\n"
    assert "Revenue (major units)" in (tmp_path / "r.html").read_text(encoding="utf-8")


def _frame(ids, kind):
    data = dict(merchant_id=ids[0], customer_id=ids[1],
                order_ts=pd.to_datetime(["2023-01-05", "2023-01-03", "2023-02-01", "2023-01-04"]),
                amount=[1000, 2500, 700, 300])
    return pd.DataFrame(data) if kind == "pandas" else pl.DataFrame(data)


@pytest.mark.parametrize("kind", ["pandas", "polars"])
def test_text_ids_name_prepare(kind):
    frame = _frame((["shop-a"] * 4, ["x@y", "x@y", "z@y", "w@y"]), kind)
    with pytest.raises(lm.SchemaError, match=r"merchant_id.*loyaltymetrics prepare RAW -o orders\.arrow"):
        lm.compute(frame)


@pytest.mark.parametrize("kind", ["pandas", "polars"])
def test_an_unsorted_frame_gets_the_line_that_sorts_it(kind):
    df = _frame(([1, 1, 2, 1], [5, 5, 1, 2]), kind)
    with pytest.raises(lm.UnsortedInputError) as error:
        lm.cohorts(df)
    message = str(error.value)
    assert "loyaltymetrics prepare" in message
    line = re.search(r"pandas (df\.sort_values\(.*?\)), polars (df\.sort\(.*?\));", message).group(1 if kind == "pandas"
                                                                                                   else 2)
    fixed = eval(line, {"df": df})  # the line the message gives, as a user would paste it
    amount = dict(zip(zip(df["merchant_id"], df["customer_id"], df["order_ts"]), df["amount"]))
    rows = sorted(amount)
    assert list(zip(fixed["merchant_id"], fixed["customer_id"], fixed["order_ts"])) == rows
    by_hand = pa.table(dict(merchant_id=[r[0] for r in rows], customer_id=[r[1] for r in rows],
                            order_ts=[r[2] for r in rows], amount=[amount[r] for r in rows]))
    assert lm.compute(fixed).equals(lm.compute(by_hand))


def test_a_file_keeps_its_unsorted_message(tmp_path):
    table = pa.table(dict(merchant_id=[1, 1], customer_id=[2, 1], order_ts=pa.array([1, 2], pa.timestamp("s")),
                          amount=[1, 2]))
    pq.write_table(table, tmp_path / "o.parquet")
    with pytest.raises(lm.UnsortedInputError) as error:
        lm.compute(str(tmp_path / "o.parquet"))
    assert "sort_values" not in str(error.value)


def test_every_public_function_has_type_hints_and_the_package_says_so():
    import importlib.resources
    import inspect
    import typing

    from loyaltymetrics import spark

    functions = [getattr(lm, name) for name in lm.__all__ if inspect.isfunction(getattr(lm, name))] + [spark.compute]
    assert len(functions) == 10
    for function in functions:
        hints = typing.get_type_hints(function)  # resolvable at run time, without pandas/polars/pyspark imports
        missing = [p for p in inspect.signature(function).parameters if p not in hints]
        assert not missing and "return" in hints, (function.__qualname__, missing)
    assert importlib.resources.files("loyaltymetrics").joinpath("py.typed").is_file()
    assert issubclass(lm.MissingDependencyError, lm.LoyaltyMetricsError) and "MissingDependencyError" in lm.__all__
