"""The report in a real browser: headless Chromium loads it, decodes every chart, shows compute()'s numbers.

Playwright drives the system's Chromium (``executable_path``); Playwright's own
browser download is never used. Where no Chromium is installed the test skips
and says so: ``.ci/run`` installs Debian's ``chromium`` when it can.
"""
import shutil

import matplotlib.image
import pytest
from playwright.sync_api import sync_playwright

import loyaltymetrics as lm
from loyaltymetrics.html_report import HEADLINE

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# What the browser drew of each chart: the inline SVG's laid-out size and how many of its
# shapes and texts have a rendered box (an SVG the parser rejected would have none).
CHECK_CHARTS = """() => [...document.querySelectorAll("figure")].map(figure => {
    const svg = figure.querySelector("svg");
    const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
    const drawn = svg ? [...svg.querySelectorAll("path, text, rect, use")]
        .filter(e => { const b = e.getBBox(); return b.width > 0 || b.height > 0; }).length : 0;
    return {
        chart: figure.dataset.chart,
        svg: !!svg,
        empty: !!figure.querySelector("p.empty"),
        width: box.width,
        height: box.height,
        drawn: drawn,
        texts: svg ? svg.querySelectorAll("text").length : 0,
    };
})"""


def short_money(text):
    body = text.replace("\u2212", "-").replace("$", "").replace(",", "").split(" ")[0]
    scale = {"k": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}.get(body[-1], 1)
    digits = body.rstrip("kMBT")
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    return float(digits) * scale, 0.5 * 10 ** -decimals * scale * 1.0001


def chromium_path():
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(f"no Chromium on PATH (looked for {', '.join(BROWSERS)}): the browser test needs one; "
                ".ci/run installs Debian's chromium with apt-get when run as root")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser")
    made = lm.generate(folder / "orders.arrow", rows=60_000, seed=5, merchants_count=24)
    path = folder / "report.html"
    text = lm.report(str(made.orders_path), str(made.merchants_path), path, currency="USD")
    return folder, path, text, made


def load(path, folder, name):
    """Open ``path`` in headless Chromium: (requests made, errors, the charts drawn, headline cards, screenshot)."""
    requests, errors = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path())
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda request: requests.append(request.url))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda message: message.type == "error" and errors.append(message.text))
            response = page.goto(path.as_uri(), wait_until="load")
            assert response is not None and response.ok
            title = page.title()
            charts = page.evaluate(CHECK_CHARTS)
            cards = {
                element.get_attribute("data-metric"): {
                    "value": element.get_attribute("data-value"),
                    "percentile": element.get_attribute("data-percentile"),
                    "text": element.query_selector(".value").inner_text(),
                    "change": element.query_selector(".change").inner_text(),
                }
                for element in page.query_selector_all(".card[data-metric]")
            }
            screenshot = folder / f"{name}.png"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return title, requests, errors, charts, cards, screenshot


def check_charts(charts, text):
    assert len(charts) == text.count("<figure ")
    for chart in charts:
        if chart["empty"]:  # said why instead of drawn
            continue
        assert chart["svg"], chart
        assert chart["width"] > 200 and chart["height"] > 100, chart  # laid out, not collapsed
        assert chart["drawn"] > 10 and chart["texts"] > 3, chart  # the browser parsed and drew it


def test_report_renders_in_chromium(rendered):
    folder, path, text, made = rendered
    want = {row["period_start"]: row for row in lm.compute(str(made.orders_path), str(made.merchants_path))
            .to_pylist()}
    latest = want[max(want)]
    title, requests, errors, charts, cards, screenshot = load(path, folder, "report")
    assert title == "Loyalty report"
    assert errors == []
    # Only the page itself: the charts are inline SVG, nothing comes from elsewhere.
    assert requests == [path.as_uri()]
    check_charts(charts, text)
    assert sum(not c["empty"] for c in charts) == 19

    assert set(cards) == {column for column, _, _ in HEADLINE}
    for column, _, unit in HEADLINE:
        shown = cards[column]
        value = latest[column]
        assert shown["value"] == str(value)
        if unit == "money":
            number, tolerance = short_money(shown["text"])
            assert shown["text"].startswith("$") and abs(number - value / 100) <= tolerance
        elif unit == "fraction":
            assert shown["text"] == f"{value * 100:,.1f}%"
        elif unit == "percent":
            assert shown["text"] == f"{value:,.1f}%"
        else:
            assert float(shown["text"].replace(",", "")) == value
        if unit not in ("fraction", "percent"):
            assert shown["change"].startswith(f"{latest[column + '_yoy']:+.1f}% YoY")
        else:
            assert shown["change"].split(" ")[1] == "pp"

    picture = matplotlib.image.imread(str(screenshot))
    assert picture.shape[1] == 1400 and picture.shape[0] > 5000  # the whole page, every section
    assert picture[..., :3].std() > 0.05  # something was painted


def test_scorecard_renders_in_chromium(rendered):
    folder, _, _, made = rendered
    orders, merchants = str(made.orders_path), str(made.merchants_path)
    rows = lm.compute(orders, merchants, by=["merchant"]).to_pylist()
    latest = max(r["period_start"] for r in rows)
    mine = max((r for r in rows if r["period_start"] == latest), key=lambda r: r["orders"])
    path = folder / "scorecard.html"
    text = lm.report(orders, merchants, path, merchant=mine["merchant_id"], currency="USD")
    title, requests, errors, charts, cards, screenshot = load(path, folder, "scorecard")
    assert errors == [] and requests == [path.as_uri()]
    check_charts(charts, text)
    assert [c["chart"] for c in charts] == ["merchant-standing"]
    bench = {r["metric"]: r for r in lm.benchmarks(orders, merchants, by=["industry", "size"], per_merchant=True)
             .to_pylist() if r["merchant_id"] == mine["merchant_id"] and r["period_start"] == latest}
    for column in ("clv", "aov", "repeat_customer_rate", "purchase_frequency"):
        assert cards[column]["value"] == str(mine[column])
        assert cards[column]["percentile"] == str(bench[column]["percentile"])
    number, tolerance = short_money(cards["aov"]["text"])
    assert abs(number - mine["aov"] / 100) <= tolerance
    picture = matplotlib.image.imread(str(screenshot))
    assert picture[..., :3].std() > 0.05
