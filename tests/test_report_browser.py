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

# Waits for every image to decode (a broken one rejects), then reports what was drawn. A cut-off
# PNG still decodes its first rows, so the pixels are read back too: the charts are opaque, and
# a cut-off one leaves transparent rows.
CHECK_IMAGES = """async () => {
    const images = [...document.images];
    const decoded = await Promise.allSettled(images.map(image => image.decode()));
    return images.map((image, i) => {
        const canvas = document.createElement("canvas");
        canvas.width = image.naturalWidth;
        canvas.height = image.naturalHeight;
        const context = canvas.getContext("2d");
        context.drawImage(image, 0, 0);
        const pixels = canvas.width ? context.getImageData(0, 0, canvas.width, canvas.height).data : [];
        let transparent = 0;
        for (let p = 3; p < pixels.length; p += 4) transparent += pixels[p] === 0;
        return {
            chart: image.closest("figure").dataset.chart,
            decoded: decoded[i].status === "fulfilled",
            naturalWidth: image.naturalWidth,
            naturalHeight: image.naturalHeight,
            transparentPixels: transparent,
            shownWidth: image.getBoundingClientRect().width,
        };
    });
}"""


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
    text = lm.report(str(made.orders_path), str(made.merchants_path), path)
    return folder, path, text, made


def test_report_renders_in_chromium(rendered):
    folder, path, text, made = rendered
    executable = chromium_path()
    want = {row["period_start"]: row for row in lm.compute(str(made.orders_path), str(made.merchants_path))
            .to_pylist()}
    latest = want[max(want)]
    charts = text.count("<figure ")
    requests, errors = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda request: requests.append(request.url))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda message: message.type == "error" and errors.append(message.text))
            response = page.goto(path.as_uri(), wait_until="load")
            assert response is not None and response.ok
            assert page.title() == "Loyalty report"

            images = page.evaluate(CHECK_IMAGES)
            headline = {
                column: {
                    "value": page.get_attribute(f'[data-metric="{column}"]', "data-value"),
                    "text": page.inner_text(f'[data-metric="{column}"] .value'),
                    "change": page.inner_text(f'[data-metric="{column}"] .change'),
                }
                for column, _, _ in HEADLINE
            }
            screenshot = folder / "report.png"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()

    assert errors == []
    # Only the page itself: the charts are data: URLs, nothing comes from elsewhere.
    assert [url for url in requests if not url.startswith("data:")] == [path.as_uri()]

    assert len(images) == charts == 18
    for image in images:
        assert image["decoded"], image
        assert image["naturalWidth"] > 0 and image["naturalHeight"] > 0, image
        assert image["transparentPixels"] == 0, image  # every row of the PNG was decoded
        assert image["shownWidth"] > 200, image  # laid out, not collapsed

    for column, _, unit in HEADLINE:
        shown = headline[column]
        value = latest[column]
        assert shown["value"] == str(value)
        number = float(shown["text"].replace(",", ""))
        if unit == "money":
            assert number == pytest.approx(value / 100, abs=0.005)
        else:
            assert number == value
        assert shown["change"].startswith(f"{latest[column + '_yoy']:+.1f}% YoY")

    picture = matplotlib.image.imread(str(screenshot))
    assert picture.shape[1] == 1400 and picture.shape[0] > 5000  # the whole page, every section
    assert picture[..., :3].std() > 0.05  # something was painted
