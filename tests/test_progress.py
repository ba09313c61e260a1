"""The progress bar draws rows and rows/s when enabled on a terminal, and nothing otherwise."""
import io

from loyaltymetrics import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_forced_bar_counts_rows_and_rate():
    out = io.StringIO()
    with progress.bar(3_000, True, desc="generate", file=out, force=True) as bar:
        for _ in range(3):
            bar.update(1_000)
    text = out.getvalue()
    assert "generate" in text
    assert "3.00k/3.00k" in text
    assert "rows/s" in text


def test_enabled_on_a_terminal():
    out = Terminal()
    with progress.bar(10, True, file=out) as bar:
        bar.update(10)
    assert "10.0/10.0" in out.getvalue()
    assert progress.shown(True, out)


def test_off_when_not_a_terminal_or_not_enabled():
    plain = io.StringIO()
    with progress.bar(10, True, file=plain) as bar:  # a pipe or log file: nothing drawn
        bar.update(10)
    assert plain.getvalue() == ""
    terminal = Terminal()
    with progress.bar(10, False, file=terminal, force=True) as bar:  # --quiet wins even when forced
        bar.update(10)
    assert terminal.getvalue() == ""
    assert not progress.shown(False, terminal, force=True)
    assert not progress.shown(True, plain)


def test_unknown_total_still_shows_a_rate():
    out = io.StringIO()
    bar = progress.bar(None, True, file=out, force=True)
    bar.update(500)
    bar.close()
    assert "500 rows" in out.getvalue() and "rows/s" in out.getvalue()


def test_generate_draws_on_a_terminal(tmp_path, monkeypatch):
    import loyaltymetrics as lm

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    lm.generate(tmp_path / "o.arrow", rows=20_000, seed=1, progress=True)
    assert "20.0k/20.0k" in terminal.getvalue() and "rows/s" in terminal.getvalue()
    quiet = Terminal()
    monkeypatch.setattr("sys.stderr", quiet)
    lm.generate(tmp_path / "p.arrow", rows=20_000, seed=1, progress=False)
    assert quiet.getvalue() == ""


# --- the long commands draw it; their results do not change -------------------------------------

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from loyaltymetrics import cli  # noqa: E402
from loyaltymetrics.inputs import count_rows  # noqa: E402


@pytest.fixture(scope="module")
def orders_file(tmp_path_factory):
    import loyaltymetrics as lm

    path = tmp_path_factory.mktemp("progress") / "orders.arrow"
    lm.generate(path, rows=20_000, seed=3, merchants_count=20)
    return path


def _analyses():
    import loyaltymetrics as lm

    return {
        "compute": lambda orders, **kw: lm.compute(orders, by=["merchant"], **kw),
        "rfm": lambda orders, **kw: lm.rfm(orders, observation_end="2024-01-01", **kw).read_all(),
        "cohorts": lambda orders, **kw: lm.cohorts(orders, **kw),
        "concentration": lambda orders, **kw: lm.concentration(orders, by=["merchant"], **kw),
    }


@pytest.mark.parametrize("name", ["compute", "rfm", "cohorts", "concentration"])
def test_api_draws_the_rows_of_the_input_and_keeps_the_result(orders_file, monkeypatch, name):
    run = _analyses()[name]
    quiet = run(orders_file, threads=2, chunk_rows=3_000)
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    shown = run(orders_file, threads=2, chunk_rows=3_000, progress=True)
    assert shown.equals(quiet)
    text = terminal.getvalue()
    assert name in text and "20.0k/20.0k" in text and "rows/s" in text


def test_not_drawn_unless_asked_or_off_a_terminal(orders_file, monkeypatch):
    import loyaltymetrics as lm

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    lm.compute(orders_file)
    assert terminal.getvalue() == ""
    plain = io.StringIO()
    monkeypatch.setattr("sys.stderr", plain)
    lm.compute(orders_file, progress=True)
    assert plain.getvalue() == ""


def test_a_stream_has_no_total_but_still_a_count(orders_file, monkeypatch):
    import loyaltymetrics as lm

    table = pa.ipc.open_file(str(orders_file)).read_all()
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    lm.compute(pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=5_000)),
               progress=True)
    assert "20.0k rows" in terminal.getvalue() and "/20.0k" not in terminal.getvalue()


@pytest.mark.parametrize("command", [
    ["compute", "{orders}"],
    ["cohorts", "{orders}"],
    ["concentration", "{orders}"],
    ["rfm", "{orders}", "-o", "{tmp}/rfm.parquet"],
])
def test_cli_draws_on_a_terminal_unless_quiet(orders_file, tmp_path, monkeypatch, capsys, command):
    argv = [a.format(orders=orders_file, tmp=tmp_path) for a in command]
    for quiet in (False, True):
        terminal = Terminal()
        monkeypatch.setattr("sys.stderr", terminal)
        assert cli.main(argv + (["--quiet"] if quiet else [])) == 0
        drawn = "20.0k/20.0k" in terminal.getvalue()
        assert drawn != quiet, (argv, quiet, terminal.getvalue())
    capsys.readouterr()


def test_count_rows_reads_footers_only(orders_file, tmp_path):
    table = pa.ipc.open_file(str(orders_file)).read_all()
    assert count_rows(orders_file) == count_rows(table) == count_rows(table.to_pandas()) == 20_000
    parts = tmp_path / "parts"
    parts.mkdir()
    pq.write_table(table.slice(0, 7_000), parts / "part-0.parquet")
    pq.write_table(table.slice(7_000), parts / "part-1.parquet")
    (parts / "_SUCCESS").write_bytes(b"")
    assert count_rows(parts) == 20_000
    with pa.OSFile(str(tmp_path / "stream.arrows"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    assert count_rows(tmp_path / "stream.arrows") is None  # a stream is not read ahead
    assert count_rows(pa.RecordBatchReader.from_batches(table.schema, table.to_batches())) is None
    assert count_rows(tmp_path / "missing.arrow") is None  # left for the scan to report
