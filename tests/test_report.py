"""The HTML report shows compute()'s and the analyses' values, every chart, and nothing from outside."""
import base64
import datetime as dt
import io
import math
import sys
from html.parser import HTMLParser

import matplotlib.image
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pytest

import loyaltymetrics as lm
from loyaltymetrics.cli import main
from loyaltymetrics.html_report import DIMENSIONS, HEADLINE, LIFTS, METRICS, RETENTION

CHARTS = (
    {f"{m.column}-by-{key}" for m in METRICS for key, _ in DIMENSIONS}
    | {f"member-lifts-by-{key}" for key, _ in DIMENSIONS}
    | {f"retention-by-{key}" for key, _ in DIMENSIONS}
    | {"concentration-by-industry", "cohort-retention"}
)


class Page(HTMLParser):
    """What a report page holds: headline cards, figures (image, empty note, table), links, scripts."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.cards, self.figures, self.urls, self.scripts, self.meta = {}, {}, [], 0, {}
        self._open = []  # (tag, class) of the open elements
        self._card = self._figure = self._row = None
        self.feed(text)

    def _inside(self, prefix):
        return any(cls.split(" ")[0] == prefix for _, cls in self._open)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag not in ("img", "meta", "br"):  # void elements have no end tag
            self._open.append((tag, a.get("class", "")))
        self.urls += [a[name] for name in ("src", "href", "action", "poster") if name in a]
        self.scripts += tag in ("script", "link", "iframe", "object", "embed")
        if "data-latest" in a:
            self.meta = a
        if "data-metric" in a:
            self._card = self.cards[a["data-metric"]] = {"attrs": a, "value": "", "change": ""}
        if tag == "figure":
            self._figure = self.figures[a["data-chart"]] = {"img": None, "empty": "", "rows": []}
        if tag == "img" and self._figure is not None:
            self._figure["img"] = a
        if tag == "tr" and self._figure is not None:
            self._row = []
        if tag in ("td", "th") and self._row is not None:
            self._row.append({"value": a.get("data-value"), "text": ""})

    def handle_endtag(self, tag):
        self._open.pop()
        if tag == "figure":
            self._figure = None
        if tag == "tr" and self._row is not None:
            self._figure["rows"].append(self._row)
            self._row = None
        if not self._inside("card"):
            self._card = None

    def handle_data(self, data):
        if self._card is not None:
            for part in ("value", "change"):
                if self._inside(part):
                    self._card[part] += data
        if self._figure is not None and self._inside("empty"):
            self._figure["empty"] += data
        if self._row is not None:
            self._row[-1]["text"] += data

    def table(self, chart):
        """The figure's table as {first cell text: [data-value of the other cells]} (header row left out)."""
        rows = self.figures[chart]["rows"][1:]
        return {row[0]["text"]: [cell["value"] for cell in row[1:]] for row in rows}


def exact(value):
    """A compute() value as the page's data-value holds it."""
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    made = lm.generate(folder / "orders.arrow", rows=80_000, seed=11, merchants_count=30)
    return folder, str(made.orders_path), str(made.merchants_path)


@pytest.fixture(scope="module")
def page(network):
    folder, orders, merchants = network
    out = folder / "report.html"
    text = lm.report(orders, merchants, out)
    assert out.read_text(encoding="utf-8") == text
    return Page(text)


def latest_rows(table, key=None):
    rows = table.to_pylist()
    latest = max(r["period_start"] for r in rows)
    return {(r[key] if key else None): r for r in rows if r["period_start"] == latest}, latest


def previous_rows(table, key, latest):
    earlier = latest.replace(year=latest.year - 1)
    return {r[key]: r for r in table.to_pylist() if r["period_start"] == earlier}


def test_headline_numbers_are_computes(network, page):
    _, orders, merchants = network
    row = latest_rows(lm.compute(orders, merchants))[0][None]
    assert set(page.cards) == {column for column, _, _ in HEADLINE}
    for column, _, unit in HEADLINE:
        card = page.cards[column]
        assert card["attrs"]["data-value"] == exact(row[column])
        assert card["attrs"]["data-yoy"] == exact(row[f"{column}_yoy"])
        shown = float(card["value"].replace(",", ""))
        want = row[column] / 100 if unit == "money" else row[column]
        assert shown == pytest.approx(want, abs=0.005)
        assert card["change"].startswith(f"{row[column + '_yoy']:+.1f}%")
    assert page.meta["data-latest"] == "2023-01-01" and page.meta["data-previous"] == "2022-01-01"


def test_every_chart_is_an_embedded_png(page):
    assert set(page.figures) == CHARTS
    for chart, figure in page.figures.items():
        src = figure["img"]["src"]
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix), chart
        image = matplotlib.image.imread(io.BytesIO(base64.b64decode(src[len(prefix):], validate=True)), format="png")
        height, width = image.shape[:2]
        assert width >= 300 and height >= 200, chart
        assert image[..., :3].std() > 0.05, f"{chart} is blank"


def test_nothing_is_loaded_from_outside_and_no_script_runs(page):
    assert page.scripts == 0
    assert page.urls and all(url.startswith("data:image/png;base64,") for url in page.urls)


@pytest.mark.parametrize("key", [key for key, _ in DIMENSIONS])
def test_metric_charts_show_computes_values_and_yoy(network, page, key):
    _, orders, merchants = network
    table = lm.compute(orders, merchants, by=[key])
    latest, start = latest_rows(table, key)
    previous = previous_rows(table, key, start)
    groups = set(latest) | set(previous)
    assert len(groups) > 1
    for metric in METRICS:
        shown = page.table(f"{metric.column}-by-{key}")
        assert set(shown) == groups
        for group in groups:
            before = previous.get(group, {}).get(metric.column)
            now = latest.get(group, {}).get(metric.column)
            change = latest.get(group, {}).get(f"{metric.column}_yoy")
            assert shown[group] == [exact(before), exact(now), exact(change)], (metric.column, group)


def test_sizes_come_in_bucket_order(page):
    rows = page.figures["clv-by-size"]["rows"][1:]
    order = ["<30", "30-300", "300-3k", "3k-30k", "30k+"]
    labels = [row[0]["text"] for row in rows]
    assert labels == [label for label in order if label in labels]


def test_lifts_and_retention_are_computes(network, page):
    _, orders, merchants = network
    network_row = latest_rows(lm.compute(orders, merchants))[0][None]
    for key, _ in DIMENSIONS:
        latest, _ = latest_rows(lm.compute(orders, merchants, by=[key]), key)
        for chart, series in ((f"member-lifts-by-{key}", LIFTS), (f"retention-by-{key}", RETENTION)):
            shown = page.table(chart)
            assert set(shown) == {"all merchants"} | set(latest)
            assert shown["all merchants"] == [exact(network_row[c]) for c, _ in series]
            assert "" not in shown["all merchants"]  # both years hold participants and customers
            for group, row in latest.items():
                assert shown[group] == [exact(row[c]) for c, _ in series]


def test_concentration_is_the_analysis(network, page):
    _, orders, merchants = network
    table = lm.concentration(orders, merchants, by=["industry"], period="year", top=0.05)
    latest, start = latest_rows(table, "industry")
    previous = previous_rows(table, "industry", start)
    shown = page.table("concentration-by-industry")
    assert set(shown) == set(latest) | set(previous)
    for group in shown:
        want = [exact(rows[group][c]) for rows in (previous, latest) for c in ("top_customers", "top_share")]
        assert shown[group] == want


def test_cohort_heat_map_is_the_analysis(network, page):
    _, orders, merchants = network
    cells = lm.cohorts(orders, merchants, period="month").to_pylist()
    shown = page.table("cohort-retention")
    starts = sorted({c["cohort_start"] for c in cells})[-24:]
    assert list(shown) == [f"{s.year}-{s.month:02d}" for s in starts]
    for c in cells:
        label = f"{c['cohort_start'].year}-{c['cohort_start'].month:02d}"
        if label not in shown:
            continue
        assert shown[label][0] == str(c["cohort_customers"])
        if c["period_index"] >= 1:
            assert shown[label][c["period_index"]] == exact(c["retention"])
    # The last cohort has no month after it yet, the first one every month.
    assert set(shown[list(shown)[-1]][1:]) == {""}
    assert "" not in shown[list(shown)[0]][1:]


def test_money_is_in_major_units_and_said_so(network, page):
    _, orders, merchants = network
    row = latest_rows(lm.compute(orders, merchants, by=["industry"]), "industry")[0]
    group, values = next(iter(row.items()))
    figure = page.figures["aov-by-industry"]
    cells = next(r for r in figure["rows"] if r[0]["text"] == group)
    assert cells[2]["text"] == f"{values['aov'] / 100:,.2f}"


def test_without_merchants_industries_are_unknown_and_roi_explained(network):
    _, orders, _ = network
    page = Page(lm.report(orders))
    assert set(page.figures) == CHARTS
    assert set(page.table("clv-by-industry")) == {"unknown"}
    roi = page.figures["loyalty_roi-by-industry"]
    assert roi["img"] is None and "no merchants table" in roi["empty"]
    assert page.figures["clv-by-industry"]["img"] is not None


def test_a_single_year_has_no_yoy(tmp_path):
    made = lm.generate(tmp_path / "orders.arrow", rows=5_000, seed=2, merchants_count=8, years=(2023, 2023))
    page = Page(lm.report(str(made.orders_path), str(made.merchants_path)))
    assert page.cards["orders"]["attrs"]["data-yoy"] == ""
    assert page.cards["orders"]["change"].startswith("n/a")
    assert {row[-1] for row in page.table("aov-by-industry").values()} == {""}
    assert "needs orders in the period before" in page.figures["retention-by-industry"]["empty"]


def test_quarter_reports_the_latest_quarter_against_a_year_earlier(network):
    _, orders, merchants = network
    page = Page(lm.report(orders, merchants, period="quarter"))
    row = latest_rows(lm.compute(orders, merchants, period="quarter"))[0][None]
    assert page.meta["data-latest"] == "2023-10-01" and page.meta["data-previous"] == "2022-10-01"
    assert page.cards["revenue"]["attrs"]["data-yoy"] == exact(row["revenue_yoy"])


@pytest.mark.parametrize("bad, message", [
    (dict(period="all"), "period must be one of year, quarter, month"),
    (dict(cohort_count=0), "cohort_count must be a positive integer"),
    (dict(top=0), "top"),
])
def test_bad_options(network, bad, message):
    _, orders, merchants = network
    with pytest.raises(ValueError, match=message):
        lm.report(orders, merchants, **bad)


def test_a_one_shot_stream_is_refused(network):
    _, orders, _ = network
    reader = pa.ipc.open_file(orders).read_all().to_reader()
    with pytest.raises(ValueError, match="not a one-shot stream"):
        lm.report(reader)


def test_cli_writes_the_same_report(network, capsys):
    folder, orders, merchants = network
    out = folder / "cli.html"
    assert main(["report", orders, "--merchants", merchants, "-o", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == lm.report(orders, merchants)
    assert "wrote the report" in capsys.readouterr().err


def test_cli_reports_bad_input_without_traceback(network, capsys):
    folder, _, _ = network
    broken = folder / "broken.arrow"
    broken.write_bytes(b"not an arrow file")
    assert main(["report", str(broken), "-o", str(folder / "x.html")]) == 1
    assert capsys.readouterr().err.startswith("loyaltymetrics: error:")
    assert not (folder / "x.html").exists()


def test_cli_says_what_to_install_without_matplotlib(network, capsys, monkeypatch):
    folder, orders, _ = network
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert main(["report", orders, "-o", str(folder / "y.html")]) == 1
    assert 'pip install "loyaltymetrics[report]"' in capsys.readouterr().err
    assert not (folder / "y.html").exists()


def test_math_of_displayed_percentages(page, network):
    """Fractions show × 100 and percents as they are (repeat rate vs loyalty ROI)."""
    _, orders, merchants = network
    latest, _ = latest_rows(lm.compute(orders, merchants, by=["size"]), "size")
    group, row = next(iter(latest.items()))
    rate = next(r for r in page.figures["repeat_customer_rate-by-size"]["rows"] if r[0]["text"] == group)
    assert rate[2]["text"] == f"{row['repeat_customer_rate'] * 100:,.1f}%"
    roi = next(r for r in page.figures["loyalty_roi-by-size"]["rows"] if r[0]["text"] == group)
    assert roi[2]["text"] == ("n/a" if row["loyalty_roi"] is None or math.isnan(row["loyalty_roi"])
                              else f"{row['loyalty_roi']:,.1f}%")


# --- the headline period: the latest complete one (SPEC §3) -------------------------------

@pytest.fixture(scope="module")
def begun(tmp_path_factory):
    """2021-2023 orders cut after 2023-03-31: 2023 has only begun (its first quarter is whole)."""
    folder = tmp_path_factory.mktemp("begun")
    made = lm.generate(folder / "full.arrow", rows=30_000, seed=5, merchants_count=12, years=(2021, 2023))
    orders = pa.ipc.open_file(str(made.orders_path)).read_all()
    cut = orders.filter(pa.compute.less(orders.column("order_ts"),
                                        pa.scalar(dt.datetime(2023, 4, 1), orders.schema.field("order_ts").type)))
    path = folder / "orders.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, cut.schema) as writer:
        writer.write_table(cut)
    return folder, str(path), str(made.merchants_path)


def test_report_headlines_the_latest_complete_year(begun):
    _, orders, merchants = begun
    years = lm.compute(orders, merchants).to_pylist()
    assert [(r["period_start"].year, r["period_complete"]) for r in years] == [
        (2021, True), (2022, True), (2023, False)]
    page = Page(lm.report(orders, merchants))
    assert page.meta["data-latest"] == "2022-01-01" and page.meta["data-previous"] == "2021-01-01"
    y22 = years[1]
    for column, _, _ in HEADLINE:
        assert page.cards[column]["attrs"]["data-value"] == exact(y22[column])
        assert page.cards[column]["attrs"]["data-yoy"] == exact(y22[f"{column}_yoy"])
    assert y22["orders_yoy"] is not None   # both years whole: compared


def test_report_year_and_period_start_choose_the_period(begun, capsys):
    folder, orders, merchants = begun
    page = Page(lm.report(orders, merchants, year=2021))
    assert page.meta["data-latest"] == "2021-01-01"
    assert page.cards["orders"]["attrs"]["data-yoy"] == ""   # no 2020: nothing to compare with
    assert lm.report(orders, merchants, period_start="2022-01-01") == lm.report(orders, merchants)
    # By quarter, 2023 Q1 is whole: it is the latest complete quarter, and --year 2022 gives 2022 Q4.
    assert Page(lm.report(orders, merchants, period="quarter")).meta["data-latest"] == "2023-01-01"
    assert Page(lm.report(orders, merchants, period="quarter", year=2022)).meta["data-latest"] == "2022-10-01"
    out = folder / "year.html"
    assert main(["report", orders, "--merchants", merchants, "-o", str(out), "--year", "2021"]) == 0
    assert out.read_text(encoding="utf-8") == lm.report(orders, merchants, year=2021)
    out = folder / "start.html"
    assert main(["report", orders, "--merchants", merchants, "-o", str(out), "--period", "quarter",
                 "--period-start", "2022-04-01"]) == 0
    assert Page(out.read_text(encoding="utf-8")).meta["data-latest"] == "2022-04-01"


@pytest.mark.parametrize("choice, message", [
    (dict(year=2023), "2023 is incomplete"),
    (dict(period_start="2023-01-01"), "2023 is incomplete"),
    (dict(year=2019), "no orders in 2019"),
    (dict(period_start="2022-02-01"), "no year starting on 2022-02-01"),
    (dict(year=2021, period_start="2021-01-01"), "not both"),
])
def test_report_refuses_a_period_without_data_or_incomplete(begun, choice, message):
    _, orders, merchants = begun
    with pytest.raises(ValueError, match=message) as error:
        lm.report(orders, merchants, **choice)
    if "both" not in message:   # the periods there are, to choose from
        assert "2021; 2022; 2023 (incomplete)" in str(error.value)


def test_report_cli_refuses_an_incomplete_year(begun, capsys):
    folder, orders, merchants = begun
    out = folder / "no.html"
    assert main(["report", orders, "--merchants", merchants, "-o", str(out), "--year", "2023"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("loyaltymetrics: error:") and "2023 is incomplete" in err
    assert not out.exists()
    # Observed to the end of 2023, 2023 is whole (its YoY then compares a quarter of orders with a year).
    assert main(["report", orders, "--merchants", merchants, "-o", str(out), "--year", "2023",
                 "--observation-end", "2024-01-01"]) == 0
    assert Page(out.read_text(encoding="utf-8")).meta["data-latest"] == "2023-01-01"


def test_report_without_a_complete_period_says_so(tmp_path):
    made = lm.generate(tmp_path / "orders.arrow", rows=3_000, seed=3, merchants_count=4, years=(2023, 2023))
    with pytest.raises(ValueError, match="no year is complete"):
        lm.report(str(made.orders_path), observation_start="2023-02-01")
    # A month report of the same orders has complete months to headline.
    page = Page(lm.report(str(made.orders_path), period="month", observation_start="2023-02-01"))
    assert page.meta["data-latest"] == "2023-12-01"


def test_report_with_an_incomplete_year_earlier_shows_no_yoy(begun):
    _, orders, merchants = begun
    # Observed from 2021-07-01: 2021 is incomplete, so 2022 has nothing to be compared with.
    text = lm.report(orders, merchants, observation_start="2021-07-01")
    page = Page(text)
    assert page.meta["data-latest"] == "2022-01-01"
    assert all(page.cards[c]["attrs"]["data-yoy"] == "" for c, _, _ in HEADLINE)
    assert "2021 is not wholly observed" in text
    assert {row[-1] for row in page.table("aov-by-industry").values()} == {""}
