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
