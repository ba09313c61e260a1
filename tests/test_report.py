"""The HTML report shows compute()'s and the analyses' values, every chart, and nothing from outside."""
import datetime as dt
import math
import sys
from html.parser import HTMLParser

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pytest

import loyaltymetrics as lm
from loyaltymetrics.cli import main
import numpy as np
import xml.etree.ElementTree as ET

from loyaltymetrics.html_report import DIMENSIONS, HEADLINE, LIFTS, METRICS, RETENTION

CHARTS = (
    {f"{m.column}-by-{key}" for m in METRICS for key, _ in DIMENSIONS}
    | {f"member-lifts-by-{key}" for key, _ in DIMENSIONS}
    | {f"retention-by-{key}" for key, _ in DIMENSIONS}
    | {"concentration-by-industry", "cohort-retention", "participant-values"}
)
RATES = ("fraction", "percent")
SCALE = {"k": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}


def short_money(text):
    """("$889.7M" -> (889.7e6, half its last digit)): the page's rounded money, read back independently."""
    body = text.replace("\u2212", "-").replace("$", "").replace(",", "").split(" ")[0]
    scale = SCALE.get(body[-1], 1)
    digits = body.rstrip("kMBT")
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    return float(digits) * scale, 0.5 * 10 ** -decimals * scale * 1.0001


def rate_change(unit, before, now):
    """Percentage points between two rates as the page shows them (fraction × 100; percent as is)."""
    if before is None or now is None:
        return None
    return (now - before) * (100 if unit == "fraction" else 1)


class Page(HTMLParser):
    """What a report page holds: headline cards, figures (image, empty note, table), links, scripts."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        import re
        self.text = text
        self.svgs = re.findall(r"<svg.*?</svg>", text, flags=re.S)
        self.cards, self.figures, self.urls, self.scripts, self.meta = {}, {}, [], 0, {}
        self.ids, self.refs, self.findings = [], [], []
        self._ref = None
        self._open = []  # (tag, class) of the open elements
        self._card = self._figure = self._row = None
        self.feed(text)

    def _inside(self, prefix):
        return any(cls.split(" ")[0] == prefix for _, cls in self._open)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag not in ("img", "meta", "br"):  # void elements have no end tag
            self._open.append((tag, a.get("class", "")))
        if "id" in a:
            self.ids.append(a["id"])
        if a.get("class") == "ref":
            self._ref = {**a, "text": ""}
            self.refs.append(self._ref)
        if tag == "svg" and self._figure is not None:
            self._figure["svg"] = a
        self.urls += [a[name] for name in ("src", "href", "action", "poster") if name in a]
        self.scripts += tag in ("script", "link", "iframe", "object", "embed")
        if "data-latest" in a:
            self.meta = a
        if "data-metric" in a:
            self._card = self.cards[a["data-metric"]] = {"attrs": a, "value": "", "change": ""}
        if tag == "figure":
            self._figure = self.figures[a["data-chart"]] = {"img": None, "svg": None, "empty": "", "rows": []}
        if tag == "img" and self._figure is not None:
            self._figure["img"] = a
        if tag == "tr" and self._figure is not None:
            self._row = []
        if tag in ("td", "th") and self._row is not None:
            self._row.append({"value": a.get("data-value"), "text": ""})

    def handle_endtag(self, tag):
        self._open.pop()
        if tag == "span":
            self._ref = None
        if tag == "figure":
            self._figure = None
        if tag == "tr" and self._row is not None:
            self._figure["rows"].append(self._row)
            self._row = None
        if not self._inside("card"):
            self._card = None

    def handle_data(self, data):
        if self._ref is not None:
            self._ref["text"] += data
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

    def header(self, chart):
        return [cell["text"] for cell in self.figures[chart]["rows"][0]]

    def cell(self, chart, group, column):
        """The data-value of the cell in row ``group`` and column ``column`` of the chart's table."""
        rows = {row[0]["text"]: row for row in self.figures[chart]["rows"][1:]}
        return rows[group][self.header(chart).index(column)]["value"]


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
    text = lm.report(orders, merchants, out, currency="USD")
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
    before = latest_rows(lm.compute(orders, merchants))[0][None]
    table = lm.compute(orders, merchants).to_pylist()
    earlier = next(r for r in table if r["period_start"] == dt.date(2022, 1, 1))
    assert set(page.cards) == {column for column, _, _ in HEADLINE}
    for column, _, unit in HEADLINE:
        card = page.cards[column]
        assert card["attrs"]["data-value"] == exact(row[column])
        if unit in RATES:  # percentage points, from the two years' values
            change = rate_change(unit, earlier[column], row[column])
            assert float(card["attrs"]["data-yoy"]) == pytest.approx(change, abs=1e-9)
            assert card["attrs"]["data-yoy-unit"] == "pp"
            assert card["change"].startswith(f"{change:+.1f} pp")
        else:
            assert card["attrs"]["data-yoy"] == exact(row[f"{column}_yoy"])
            assert card["change"].startswith(f"{row[column + '_yoy']:+.1f}%")
        if unit == "money":  # "$4.9M": the currency and a readable magnitude
            assert card["value"].startswith("$")
            number, tolerance = short_money(card["value"])
            assert abs(number - row[column] / 100) <= tolerance, (column, card["value"])
        elif unit == "fraction":
            assert card["value"] == f"{row[column] * 100:,.1f}%"
        elif unit == "percent":
            assert card["value"] == f"{row[column]:,.1f}%"
        else:
            assert card["value"] == f"{row[column]:,}"
    assert before is not None
    assert page.meta["data-latest"] == "2023-01-01" and page.meta["data-previous"] == "2022-01-01"


def test_reward_value_is_shown_as_a_share_of_revenue(network, page):
    _, orders, merchants = network
    row = latest_rows(lm.compute(orders, merchants))[0][None]
    assert 'data-share="' + exact(row["reward_revenue"] / row["revenue"]) + '"' in page.text
    industries = latest_rows(lm.compute(orders, merchants, by=["industry"]), "industry")[0]
    chart = "reward_revenue-by-industry"
    column = next(h for h in page.header(chart) if h == "share of revenue 2023")
    for group, r in industries.items():
        assert float(page.cell(chart, group, column)) == pytest.approx(r["reward_revenue"] / r["revenue"], rel=1e-15)


def test_every_chart_is_inline_svg(page):
    assert set(page.figures) == CHARTS
    for chart, figure in page.figures.items():
        assert figure["img"] is None, chart
        assert figure["svg"] is not None and "viewbox" in figure["svg"], chart
        assert figure["svg"]["role"] == "img" and figure["svg"]["aria-label"]
    # Well-formed, with selectable text, and each chart's ids its own (one page holds them all).
    for markup in page.svgs:
        root = ET.fromstring(markup)
        texts = [t for t in root.iter("{http://www.w3.org/2000/svg}text")]
        assert texts, "text is drawn as text"
        assert len(list(root.iter("{http://www.w3.org/2000/svg}path"))) > 5
    assert len(page.ids) == len(set(page.ids))


def test_nothing_is_loaded_from_outside_and_no_script_runs(page):
    assert page.scripts == 0
    # Only references inside the page (an SVG's clip paths and markers).
    assert all(url.startswith("#") for url in page.urls)
    assert "http://" not in page.text.replace("http://www.w3.org/", "") and "https://" not in page.text


@pytest.mark.parametrize("key", [key for key, _ in DIMENSIONS])
def test_metric_charts_show_computes_values_and_yoy(network, page, key):
    _, orders, merchants = network
    table = lm.compute(orders, merchants, by=[key])
    latest, start = latest_rows(table, key)
    previous = previous_rows(table, key, start)
    groups = set(latest) | set(previous)
    assert len(groups) > 1
    for metric in METRICS:
        chart = f"{metric.column}-by-{key}"
        shown = page.table(chart)
        assert set(shown) == groups
        assert page.header(chart)[3] == ("YoY (pp)" if metric.unit in RATES else "YoY (%)")
        for group in groups:
            before = previous.get(group, {}).get(metric.column)
            now = latest.get(group, {}).get(metric.column)
            assert shown[group][:2] == [exact(before), exact(now)], (metric.column, group)
            if metric.unit in RATES:
                change = rate_change(metric.unit, before, now)
                assert (shown[group][2] == "" if change is None
                        else float(shown[group][2]) == pytest.approx(change, abs=1e-9)), (metric.column, group)
            else:
                assert shown[group][2] == exact(latest.get(group, {}).get(f"{metric.column}_yoy"))


@pytest.mark.parametrize("key", [key for key, _ in DIMENSIONS])
def test_typical_merchant_is_numpy_over_the_merchants(network, page, key):
    """Median and p25-p75 of each group: NumPy over compute(by=merchant)'s values, and benchmarks()'s."""
    _, orders, merchants = network
    per_merchant = lm.compute(orders, merchants, by=["merchant", "industry", "size"]).to_pylist()
    bench = {(r[key], r["period_start"], r["metric"]): r
             for r in lm.benchmarks(orders, merchants, by=[key]).to_pylist()}
    latest = dt.date(2023, 1, 1)
    checked = 0
    for metric in METRICS:
        chart = f"{metric.column}-by-{key}"
        header = page.header(chart)
        for group in page.table(chart):
            for start, label in ((latest, "2023"), (dt.date(2022, 1, 1), "2022")):
                values = [r[metric.column] for r in per_merchant if r[key] == group and r["period_start"] == start
                          and r[metric.column] is not None and not math.isnan(r[metric.column])]
                shown = page.cell(chart, group, f"median merchant {label}")
                if not values:
                    assert shown == ""
                    continue
                median = float(np.percentile(values, 50))
                assert float(shown) == pytest.approx(median, rel=1e-12), (chart, group, label)
                if metric.column != "reward_revenue":
                    assert float(shown) == bench[(group, start, metric.column)]["median"]
                if start == latest:
                    p25, p75 = np.percentile(values, [25, 75])
                    assert float(page.cell(chart, group, "p25 2023")) == pytest.approx(p25, rel=1e-12)
                    assert float(page.cell(chart, group, "p75 2023")) == pytest.approx(p75, rel=1e-12)
                    assert page.cell(chart, group, "merchants 2023") == str(len(values))
                checked += 1
        assert "median merchant 2023" in header
    assert checked > 20


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
            assert shown["all merchants"][:len(series)] == [exact(network_row[c]) for c, _ in series]
            assert "" not in shown["all merchants"]  # both years hold participants and customers
            for group, row in latest.items():
                assert shown[group][:len(series)] == [exact(row[c]) for c, _ in series]


def participants_and_others(r):
    """Participants' and non-participants' repeat rate, AOV and frequency from SPEC §4's counts."""
    others = r["customers"] - r["reward_customers"]
    return [
        (r["member_repeat_customers"] / r["reward_customers"],
         (r["repeat_customers"] - r["member_repeat_customers"]) / others),
        (r["member_revenue"] / r["member_orders"],
         (r["revenue"] - r["member_revenue"]) / (r["orders"] - r["member_orders"])),
        (r["member_orders"] / r["reward_customers"], (r["orders"] - r["member_orders"]) / others),
    ]


def test_participants_and_non_participants_actual_values(network, page):
    _, orders, merchants = network
    row = latest_rows(lm.compute(orders, merchants))[0][None]
    shown = page.table("participant-values")
    for (_, label), (mine, others) in zip(LIFTS, participants_and_others(row)):
        assert [float(x) for x in shown[label]] == [pytest.approx(mine, rel=1e-15), pytest.approx(others, rel=1e-15)]
        # their ratio is compute()'s lift
    for (column, _), (mine, others) in zip(LIFTS, participants_and_others(row)):
        assert mine / others == pytest.approx(row[column], rel=1e-12)
    for key, _ in DIMENSIONS:
        latest, _ = latest_rows(lm.compute(orders, merchants, by=[key]), key)
        chart = f"member-lifts-by-{key}"
        for group, r in latest.items():
            for (_, label), (mine, others) in zip(LIFTS, participants_and_others(r)):
                assert float(page.cell(chart, group, f"participants\u2019 {label}")) == pytest.approx(mine, rel=1e-15)
                assert float(page.cell(chart, group, f"non-participants\u2019 {label}")) == pytest.approx(
                    others, rel=1e-15)


def test_key_findings_point_at_table_cells(page):
    """Every number in a finding is the value of the table cell it names, shown as the page shows it."""
    assert len(page.refs) >= 20
    kinds = set()
    for ref in page.refs:
        cell = page.cell(ref["data-chart"], ref["data-group"], ref["data-column"])
        assert cell == ref["data-value"], ref
        if ref["text"].endswith(" pp"):
            kinds.add("pp")
            assert ref["text"] == f"{float(cell):+.1f} pp"
        elif ref["text"].endswith("%") and ref["data-column"].startswith("YoY"):
            kinds.add("percent")
            assert ref["text"] == f"{float(cell):+.1f}%"
        elif ref["text"].startswith("$"):
            kinds.add("money")
            number, tolerance = short_money(ref["text"])
            assert abs(number - float(cell) / 100) <= tolerance, ref
    assert kinds == {"pp", "percent", "money"}
    # The participants' lift and both groups' values, the largest moves, the top and bottom segments.
    text = page.text[page.text.index('<section id="findings">'):page.text.index('<section id="metrics">')]
    for phrase in ("Program participants against non-participants", "the largest rise", "highest in", "lowest in"):
        assert phrase in text


def test_retention_says_why_it_equals_strict_retention(network, page):
    _, orders, merchants = network
    row = latest_rows(lm.compute(orders, merchants))[0][None]
    # The orders begin in 2022: every returning customer of 2023 bought in 2022.
    assert row["retention_rate"] == row["strict_retention_rate"]
    assert 'id="retention-note"' in page.text and "equal by definition here" in page.text
    # Quarters: 2023 Q4's returning customers may have bought before 2022 Q4, so no such note.
    quarter = Page(lm.report(orders, merchants, period="quarter"))
    assert 'id="retention-note"' not in quarter.text


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
    assert roi["svg"] is None and "no merchants table" in roi["empty"]
    assert page.figures["clv-by-industry"]["svg"] is not None


def test_a_single_year_has_no_yoy(tmp_path):
    made = lm.generate(tmp_path / "orders.arrow", rows=5_000, seed=2, merchants_count=8, years=(2023, 2023))
    page = Page(lm.report(str(made.orders_path), str(made.merchants_path)))
    assert page.cards["orders"]["attrs"]["data-yoy"] == ""
    assert page.cards["orders"]["change"].startswith("n/a")
    assert {row[2] for row in page.table("aov-by-industry").values()} == {""}
    assert {row[2] for row in page.table("repeat_customer_rate-by-industry").values()} == {""}
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
    for column, _, unit in HEADLINE:
        assert page.cards[column]["attrs"]["data-value"] == exact(y22[column])
        if unit in RATES:
            change = rate_change(unit, years[0][column], y22[column])
            assert float(page.cards[column]["attrs"]["data-yoy"]) == pytest.approx(change, abs=1e-9)
        else:
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
    assert {row[2] for row in page.table("aov-by-industry").values()} == {""}
    assert {row[2] for row in page.table("repeat_customer_rate-by-industry").values()} == {""}


# --- one merchant's scorecard (--merchant) ----------------------------------------------

def scorecard_expectations(orders, merchants, merchant_id):
    """The merchant's 2023 values and percentiles within its industry × size, from compute(by=merchant)."""
    rows = lm.compute(orders, merchants, by=["merchant", "industry", "size"]).to_pylist()
    latest = dt.date(2023, 1, 1)
    own = next(r for r in rows if r["merchant_id"] == merchant_id and r["period_start"] == latest)
    peers = [r for r in rows if r["period_start"] == latest and r["industry"] == own["industry"]
             and r["size"] == own["size"]]
    out = {}
    for metric in METRICS:
        values = [r[metric.column] for r in peers
                  if r[metric.column] is not None and not math.isnan(r[metric.column])]
        value = own[metric.column]
        if value is None or math.isnan(value):
            out[metric.column] = (value, None, values)
            continue
        below = sum(v < value for v in values)
        equal = sum(v == value for v in values)
        out[metric.column] = (value, 100 * (below + 0.5 * equal) / len(values), values)
    return own, peers, out


def test_scorecard_is_the_merchants_standing(network, tmp_path):
    _, orders, merchants = network
    rows = lm.compute(orders, merchants, by=["merchant"]).to_pylist()
    # The merchant with the most orders in 2023: a group with peers.
    mid = max((r for r in rows if r["period_start"] == dt.date(2023, 1, 1)), key=lambda r: r["orders"])["merchant_id"]
    out = tmp_path / "card.html"
    text = lm.report(orders, merchants, out, merchant=mid, currency="USD")
    assert out.read_text(encoding="utf-8") == text
    page = Page(text)
    own, peers, want = scorecard_expectations(orders, merchants, mid)
    assert page.meta["data-merchant"] == str(mid)
    assert (page.meta["data-industry"], page.meta["data-size"]) == (own["industry"], own["size"])
    assert set(page.figures) == {"merchant-standing"}
    assert page.figures["merchant-standing"]["svg"] is not None
    by_merchant = {r["period_start"]: r for r in rows if r["merchant_id"] == mid}
    table = page.table("merchant-standing")
    for metric in METRICS:
        value, percentile, values = want[metric.column]
        card = page.cards[metric.column]
        assert card["attrs"]["data-value"] == exact(by_merchant[dt.date(2023, 1, 1)][metric.column])
        if percentile is None:
            assert card["attrs"]["data-percentile"] == ""
        else:
            assert float(card["attrs"]["data-percentile"]) == pytest.approx(percentile, abs=1e-9)
        cells = table[metric.title]
        assert cells[0] == exact(by_merchant[dt.date(2022, 1, 1)][metric.column])
        assert cells[4] == str(len(values))
        if values:
            p25, median, p75 = np.percentile(values, [25, 50, 75])
            assert [float(c) for c in cells[5:8]] == [pytest.approx(x, rel=1e-12) for x in (p25, median, p75)]
        before, now = by_merchant[dt.date(2022, 1, 1)][metric.column], by_merchant[dt.date(2023, 1, 1)][metric.column]
        if metric.unit in RATES:
            change = rate_change(metric.unit, before, now)
            assert cells[2] == "" if change is None else float(cells[2]) == pytest.approx(change, abs=1e-9)
        else:
            assert cells[2] == exact(by_merchant[dt.date(2023, 1, 1)][f"{metric.column}_yoy"])
    # The benchmarks API agrees on the percentiles it covers.
    bench = {r["metric"]: r for r in lm.benchmarks(orders, merchants, by=["industry", "size"], per_merchant=True)
             .to_pylist() if r["merchant_id"] == mid and r["period_start"] == dt.date(2023, 1, 1)}
    for column, row in bench.items():
        if column in page.cards:
            assert page.cards[column]["attrs"]["data-percentile"] == exact(row["percentile"])


def test_scorecard_refuses_an_unknown_merchant(network):
    _, orders, merchants = network
    with pytest.raises(ValueError, match="no merchant 'nobody' in the orders"):
        lm.report(orders, merchants, merchant="nobody")
    with pytest.raises(ValueError, match="no merchant '99999'"):
        lm.report(orders, merchants, merchant=99999)


def test_scorecard_finds_a_merchant_by_name(tmp_path, network):
    _, orders, merchants = network
    import pyarrow.parquet as pq

    table = pq.read_table(merchants)
    names = pa.array([f"Store {i}" for i in table.column("merchant_id").to_pylist()])
    named = tmp_path / "named.parquet"
    pq.write_table(table.append_column("name", names), named)
    page = Page(lm.report(orders, str(named), merchant="store 3"))
    assert page.meta["data-merchant"] == "3"
    assert "Store 3" in page.text


def test_cli_writes_a_scorecard(network, capsys):
    folder, orders, merchants = network
    out = folder / "card-cli.html"
    assert main(["report", orders, "--merchants", merchants, "--merchant", "2", "-o", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == lm.report(orders, merchants, merchant="2")
    assert main(["report", orders, "--merchants", merchants, "--merchant", "nobody",
                 "-o", str(folder / "none.html")]) == 1
    assert "no merchant 'nobody'" in capsys.readouterr().err
    assert not (folder / "none.html").exists()


def test_scorecard_yoy_follows_the_merchant_across_size_buckets(network):
    """A merchant that changed size bucket still has its YoY: it compares the merchant, not the bucket."""
    _, orders, merchants = network
    rows = lm.compute(orders, merchants, by=["merchant", "size"]).to_pylist()
    sizes = {}
    for r in rows:
        sizes.setdefault(r["merchant_id"], {})[r["period_start"].year] = r["size"]
    moved = [m for m, s in sizes.items() if 2022 in s and 2023 in s and s[2022] != s[2023]]
    assert moved, "the fixture has a merchant that changed size bucket"
    mine = {r["period_start"].year: r for r in lm.compute(orders, merchants, by=["merchant"]).to_pylist()
            if r["merchant_id"] == moved[0]}
    page = Page(lm.report(orders, merchants, merchant=moved[0]))
    for metric in METRICS:
        if metric.unit not in RATES:
            assert page.cards[metric.column]["attrs"]["data-yoy"] == exact(mine[2023][f"{metric.column}_yoy"])
    assert page.cards["reward_revenue"]["attrs"]["data-yoy"] != ""


def test_scorecard_without_merchants_table(network):
    _, orders, _ = network
    page = Page(lm.report(orders, merchant=1))
    assert page.meta["data-industry"] == "unknown"
    assert page.cards["loyalty_roi"]["attrs"]["data-value"] == ""
    assert page.cards["aov"]["attrs"]["data-percentile"] != ""
