"""The loyalty report: one self-contained HTML file of the network's metrics, charts and tables,
or one merchant's scorecard.

Every number shown is a value of ``compute()``, ``benchmarks()``,
``concentration()`` or ``cohorts()`` (converted for display only: money ÷ 100,
rates × 100), or a ratio or difference of two of them said so on the page
(share of revenue, participants' values from SPEC §4 counts, YoY in points);
the report never recomputes a metric from orders. Charts are inline SVG drawn
with matplotlib's SVG canvas (no pyplot, so no global state and no display
needed); the page loads nothing else and runs no script.
"""
from __future__ import annotations

import datetime as dt
import html
import io
import math
import re
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

from . import parallel
from ._types import ColumnMap, DateLike, Engine, Merchants, Orders, PathLike, SizeEdges
from .api import compute
from .errors import MissingDependencyError
from .finalize import DEFAULT_SIZE_EDGES, check_observation, check_size_edges, size_labels
from .inputs import rereadable, source_label
from .outputs import atomic_output, check_output_path

REPORT_PERIODS = ("year", "quarter", "month")
MINOR_PER_MAJOR = 100  # money arrives in minor units (cents); the report shows major units
UNKNOWN = "unknown"    # industry of merchants missing from the merchants table (SPEC §2)
ALL_MERCHANTS = "all merchants"

# How a column is shown. "money": minor units ÷ 100; "fraction": × 100 as a percent;
# "percent": already a percent; "number": as is; "lift": a ratio, 1 = no difference.
UNITS = ("money", "fraction", "percent", "number", "lift", "count", "percentile")


@dataclass(frozen=True)
class Metric:
    column: str
    title: str
    unit: str
    definition: str
    axis: str


METRICS = (
    Metric("reward_revenue", "Reward-generated value", "money",
           "Revenue of orders that used a loyalty reward (discount code, points redemption).",
           "revenue of reward orders"),
    Metric("clv", "Customer lifetime value", "money",
           "Revenue per store-customer with an order in the period (historical CLV).", "revenue per customer"),
    Metric("repeat_customer_rate", "Repeat customer rate", "fraction",
           "Share of the period's store-customers with two or more orders in it.", "% of customers"),
    Metric("aov", "Average order value", "money", "Revenue per order.", "revenue per order"),
    Metric("purchase_frequency", "Purchase frequency", "number",
           "Orders per store-customer in the period.", "orders per customer"),
    Metric("loyalty_roi", "Loyalty ROI", "percent",
           "(Reward-generated value − program fees) ÷ program fees × 100; fees are the merchants' "
           "annual_fee for the months of the period.", "% return on fees"),
)
SIX = tuple(m.column for m in METRICS)
# benchmarks() takes SPEC §5 metrics; reward-generated value is a §4 count, so its typical merchant
# comes from compute(by=["merchant", "industry", "size"]) with NumPy's percentiles (the same method).
BENCHMARKED = tuple(c for c in SIX if c != "reward_revenue")
HEADLINE = (
    ("revenue", "Revenue", "money"),
    ("reward_revenue", "Reward-generated value", "money"),
    ("orders", "Orders", "count"),
    ("merchants", "Merchants", "count"),
    ("clv", "Customer lifetime value", "money"),
    ("aov", "Average order value", "money"),
    ("repeat_customer_rate", "Repeat customer rate", "fraction"),
    ("loyalty_roi", "Loyalty ROI", "percent"),
)
# Participants and non-participants (SPEC §5's lifts, numerator and denominator): (label, unit,
# participants' (numerator, denominator), non-participants' (numerator, denominator)); "a-b" is a difference.
GROUP_VALUES = (
    ("repeat rate", "fraction", ("member_repeat_customers", "reward_customers"),
     ("repeat_customers-member_repeat_customers", "customers-reward_customers")),
    ("AOV", "money", ("member_revenue", "member_orders"), ("revenue-member_revenue", "orders-member_orders")),
    ("purchase frequency", "number", ("member_orders", "reward_customers"),
     ("orders-member_orders", "customers-reward_customers")),
)
QUANTILES = (("p25", 25), ("median", 50), ("p75", 75))
LIFTS = (
    ("member_repeat_lift", "repeat rate"),
    ("member_aov_lift", "AOV"),
    ("member_frequency_lift", "purchase frequency"),
)
LIFTS_LABEL = dict(LIFTS)
RETENTION = (
    ("retention_rate", "retention rate (E − N) / B"),
    ("strict_retention_rate", "strict retention (bought in both periods)"),
)
DIMENSIONS = (("industry", "industry"), ("size", "merchant size (orders a month)"))

PREVIOUS_COLOR, LATEST_COLOR = "#a9b4c2", "#2f6db5"
SERIES_COLORS = ("#2f6db5", "#e08a2c", "#3f9c5a")


def report(orders: Orders, merchants: Merchants | None = None, path: PathLike | None = None, *,
           period: Literal["year", "quarter", "month"] = "year", top: float = 0.05, cohort_count: int = 24,
           title: str = "Loyalty report", columns: ColumnMap | None = None, size_edges: SizeEdges = DEFAULT_SIZE_EDGES,
           refunds: bool = False, engine: Engine = "cython", threads: int | None = None,
           chunk_rows: int = parallel.DEFAULT_CHUNK_ROWS, observation_start: DateLike | None = None,
           observation_end: DateLike | None = None, year: int | None = None,
           period_start: DateLike | None = None, currency: str | None = None, progress: bool = False,
           timezone: str | None = None, merchant: int | str | None = None) -> str:
    """Write an HTML loyalty report of a complete period against the same period a year earlier.

    Parameters
    ----------
    orders, merchants, columns, size_edges, refunds, engine, threads, chunk_rows, timezone
        As for ``compute`` (each is passed to every analysis alike).
        The orders are read several times (one pass per breakdown and
        analysis), so they must be a file or a table, not a one-shot
        ``RecordBatchReader``.
    path : str or path, optional
        Where to write the HTML file (UTF-8). Without it nothing is written.
    period : {"year", "quarter", "month"}
        The reporting period: the report headlines the input's latest
        complete period (SPEC §3: wholly inside the observation window) and
        compares it with the same period one year earlier.
    observation_start, observation_end : datetime.date or "YYYY-MM-DD", optional
        The observation window, as for ``compute``: which periods are
        complete. Defaults: the dates of the earliest and latest orders.
    year : int, optional
        Headline the latest complete period in this calendar year instead
        (with ``period="year"``: the year itself).
    period_start : datetime.date or "YYYY-MM-DD", optional
        Headline the period that starts on this date instead.
        The chosen period must hold orders and be complete, else a
        ``ValueError`` lists the periods there are.
    top : number in (0, 1]
        The top share of store-customers of the revenue-concentration chart.
    cohort_count : int
        The most recent month cohorts shown in the cohort heat map.
    title : str
        The page's title.
    currency : str, optional
        The currency code shown with money (display only; amounts stay in
        minor units). Default: the orders' schema metadata
        ``loyaltymetrics.currency`` (``prepare --currency`` writes it), else
        money is labelled "major units".
    progress : bool
        A progress bar on stderr for each pass over the orders, when stderr
        is a terminal.
    merchant : int or str, optional
        Write one merchant's scorecard instead of the network report: its
        six metrics in the headline period, their YoY, and its percentile
        among the merchants of its industry × size group, drawn against the
        group's distribution. A merchant_id, or a name from the merchants
        table's ``name`` column; ``ValueError`` when it names no merchant
        with orders, or none in the headline period.

    Returns
    -------
    str
        The HTML text (also written to ``path`` when given).

    Raises
    ------
    loyaltymetrics.InputError
        For bad input, as ``compute`` does.
    ValueError
        For bad options, a one-shot stream, input without orders, or no
        complete period to headline (or a chosen one that is incomplete or
        has no orders).
    ImportError
        When matplotlib is not installed (``pip install "loyaltymetrics[report]"``).
    """
    if period not in REPORT_PERIODS:
        raise ValueError(f"period must be one of {', '.join(REPORT_PERIODS)} for a report "
                         f"(it compares a period with the same period a year earlier); got {period!r}")
    if isinstance(cohort_count, bool) or not isinstance(cohort_count, int) or cohort_count < 1:
        raise ValueError(f"cohort_count must be a positive integer; got {cohort_count!r}")
    check_observation(observation_start, observation_end)
    year, period_start = _check_choice(year, period_start)
    if not rereadable(orders):
        raise ValueError("report() reads the orders once per breakdown and analysis: pass a file or a table, "
                         "not a one-shot stream (RecordBatchReader)")
    size_edges = check_size_edges(size_edges)
    if path is not None:  # refused before any work: the report never replaces its input
        check_output_path(path, [orders, merchants])
    _require_matplotlib()
    from .benchmark_analysis import benchmarks
    from .cohort_analysis import cohorts
    from .concentration_analysis import concentration

    if isinstance(merchants, pa.RecordBatchReader):
        merchants = merchants.read_all()  # read by every pass below

    options = dict(columns=columns, size_edges=size_edges, refunds=refunds, engine=engine, threads=threads,
                   chunk_rows=chunk_rows, progress=progress, observation_start=observation_start,
                   observation_end=observation_end, timezone=timezone)
    if currency is None:
        from .display import reporting_currency

        currency = reporting_currency(orders)
    if merchant is not None:
        network = compute(orders, merchants, by=[], period=period, **options)
        headline_periods(network, period, year, period_start)
        data = ReportData(
            period=period, network=network, by_industry=None, by_size=None, concentration=None, cohorts=None,
            size_order=tuple(size_labels(size_edges)), top=top, has_merchants=merchants is not None,
            source=source_label(orders), merchants_source=None if merchants is None else source_label(merchants),
            year=year, period_start=period_start, currency=currency,
            standing=benchmarks(orders, merchants, by=["industry", "size"], period=period, per_merchant=True,
                                metrics=BENCHMARKED + tuple(f"{m}_yoy" for m in BENCHMARKED), **options),
            per_merchant=compute(orders, merchants, by=["merchant"], period=period, **options),
            group_stats=benchmarks(orders, merchants, by=["industry", "size"], period=period, metrics=BENCHMARKED,
                                   **options))
        text = scorecard_html(data, merchant, title=title)
        if path is not None:
            with atomic_output(path, [orders, merchants]) as tmp, open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
        return text
    # First: it rejects a bad ``top`` before reading any orders. Then the network: it says
    # whether there is a period to headline before the other passes run.
    top_share = concentration(orders, merchants, by=["industry"], period=period, top=top, **options)
    network = compute(orders, merchants, by=[], period=period, **options)
    headline_periods(network, period, year, period_start)
    data = ReportData(
        period=period,
        network=network,
        by_industry=compute(orders, merchants, by=["industry"], period=period, **options),
        by_size=compute(orders, merchants, by=["size"], period=period, **options),
        per_merchant=compute(orders, merchants, by=["merchant", "industry", "size"], period=period, **options),
        typical={key: benchmarks(orders, merchants, by=[key], period=period, metrics=BENCHMARKED, **options)
                 for key, _ in DIMENSIONS},
        concentration=top_share,
        cohorts=cohorts(orders, merchants, by=[], period="month", **options),
        size_order=tuple(size_labels(size_edges)),
        top=top,
        has_merchants=merchants is not None,
        source=source_label(orders),
        merchants_source=None if merchants is None else source_label(merchants),
        year=year,
        period_start=period_start,
        currency=currency,
    )
    text = render(data, title=title, cohort_count=cohort_count)
    if path is not None:
        with atomic_output(path, [orders, merchants]) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return text


def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(
            'the report draws its charts with matplotlib: pip install "loyaltymetrics[report]"') from e


@dataclass(frozen=True)
class ReportData:
    """The tables a report shows, as ``compute``/``concentration``/``cohorts`` returned them."""

    period: str
    network: pa.Table
    by_industry: pa.Table
    by_size: pa.Table
    concentration: pa.Table
    cohorts: pa.Table
    size_order: tuple
    top: float
    has_merchants: bool
    source: str
    merchants_source: str | None
    year: int | None = None               # the headline period chosen (default: the latest complete one)
    period_start: dt.date | None = None
    currency: str | None = None  # shown with money; None: "major units"
    # benchmarks() distribution tables of the six metrics: {"industry": by industry, "size": by size}
    typical: dict | None = None
    # A scorecard's: benchmarks(by=["industry", "size"], per_merchant=True) with the six metrics and
    # their _yoy, and the same groups' distribution.
    standing: pa.Table | None = None
    # Reward-generated value per merchant: compute(by=["merchant", "industry", "size"]) for the report,
    # compute(by=["merchant"]) for a scorecard (its group's merchants are the benchmarks table's).
    per_merchant: pa.Table | None = None
    group_stats: pa.Table | None = None


def _check_choice(year, period_start):
    """``year`` and ``period_start`` checked (at most one of them); period_start as a date."""
    if year is not None and period_start is not None:
        raise ValueError("pass year or period_start, not both: each chooses the headline period")
    if year is not None and (isinstance(year, bool) or not isinstance(year, int) or not 1970 <= year <= 2262):
        raise ValueError(f"year must be a year from 1970 to 2262; got {year!r}")
    if isinstance(period_start, str):
        try:
            period_start = dt.date.fromisoformat(period_start.strip())
        except ValueError:
            raise ValueError(f"period_start {period_start!r} is not an ISO date (YYYY-MM-DD)") from None
    if isinstance(period_start, dt.datetime):
        period_start = period_start.date()
    if period_start is not None and not isinstance(period_start, dt.date):
        raise ValueError(f"period_start must be a datetime.date or YYYY-MM-DD; got {period_start!r}")
    return year, period_start


# ---------------------------------------------------------------------------
# Periods and rows


def year_earlier(start):
    """The same period one year earlier (SPEC §5: YoY compares with it)."""
    return start.replace(year=start.year - 1)


def period_label(start, period):
    if period == "year":
        return f"{start.year}"
    if period == "quarter":
        return f"{start.year} Q{(start.month - 1) // 3 + 1}"
    return f"{start.year}-{start.month:02d}"


def headline_periods(network, period, year=None, period_start=None):
    """(period_start of the headline period, the one a year earlier) of the whole network.

    The headline is the latest complete period (SPEC §3), or the one
    ``year``/``period_start`` chooses; a chosen period without orders or
    not complete is a ValueError that lists the periods there are.
    """
    rows = network.select(["period_start", "period_complete"]).to_pylist()
    if not rows:
        raise ValueError("the orders hold no rows: nothing to report")
    complete = {r["period_start"]: r["period_complete"] for r in rows}
    available = "; ".join(f"{period_label(s, period)}{'' if complete[s] else ' (incomplete)'}"
                          for s in sorted(complete))
    window = ("not wholly inside the observation window (by default from the earliest order's date to the "
              "latest order's; set it with observation_start/observation_end, --observation-start/--observation-end)")
    if period_start is not None:
        if period_start not in complete:
            raise ValueError(f"no {period} starting on {period_start.isoformat()} holds orders; "
                             f"the {period}s with orders: {available}")
        chosen = period_start
    elif year is not None:
        in_year = [s for s in complete if s.year == year]
        if not in_year:
            raise ValueError(f"no orders in {year}; the {period}s with orders: {available}")
        done = [s for s in in_year if complete[s]]
        chosen = max(done) if done else max(in_year)
    else:
        done = [s for s in complete if complete[s]]
        if not done:
            raise ValueError(f"no {period} is complete, so there is none to headline: every {period} with orders "
                             f"is {window}. The {period}s with orders: {available}")
        chosen = max(done)
    if not complete[chosen]:
        raise ValueError(f"{period_label(chosen, period)} is incomplete: it is {window}, so its numbers would "
                         f"understate a whole {period}. The {period}s with orders: {available}")
    return chosen, year_earlier(chosen)


def rows_by(table, key, start):
    """{group value: row dict} of ``table``'s rows in the period starting at ``start``."""
    return {row[key]: row for row in table.to_pylist() if row["period_start"] == start}


def network_row(network, start):
    rows = [row for row in network.to_pylist() if row["period_start"] == start]
    return rows[0] if rows else None


# ---------------------------------------------------------------------------
# Formatting: display units only, never a different number


def shown(value, unit):
    """A value in the units the page shows (money in major units, fractions as percent)."""
    if value is None:
        return None
    if unit == "money":
        return value / MINOR_PER_MAJOR
    if unit == "fraction":
        return value * 100
    return value


def fmt(value, unit):
    """The text the page shows for ``value``; "n/a" for null (a zero denominator, SPEC §5)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    x = shown(value, unit)
    if unit == "count":
        return f"{x:,}"
    if unit == "money":
        return f"{x:,.2f}"
    if unit in ("fraction", "percent"):
        return f"{x:,.1f}%"
    if unit == "lift":
        return f"{x:.2f}×"
    if unit == "percentile":
        return f"{x:.1f}"
    return f"{x:,.2f}"


def fmt_change(yoy):
    return "n/a" if yoy is None else f"{yoy:+.1f}%"


def fmt_pp(change):
    """A change of a rate in percentage points."""
    return "n/a" if change is None else f"{change:+.1f} pp"


RATE_UNITS = ("fraction", "percent")


def change_of(unit, previous, latest, yoy, comparable=True):
    """(value, kind) of the YoY change the page shows: percentage points for rates, compute's _yoy for amounts.

    For a rate (``fraction`` or ``percent``) the change is ``shown(latest) − shown(previous)``
    in percentage points, defined when both periods are complete (``comparable``) and
    both values exist; for an amount it is compute's ``_yoy`` (percent of the earlier value).
    """
    if unit in RATE_UNITS:
        if not comparable or previous is None or latest is None:
            return None, "pp"
        return shown(latest, unit) - shown(previous, unit), "pp"
    return yoy, "change"


CURRENCY_SYMBOLS = {"USD": "$", "EUR": "\u20ac", "GBP": "\u00a3", "JPY": "\u00a5", "CAD": "CA$", "AUD": "A$",
                    "INR": "\u20b9", "CNY": "CN\u00a5", "BRL": "R$", "MXN": "MX$"}


def short_number(x):
    """889703054.91 -> "889.7M"; below 1,000 two decimals."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale * 0.9995:
            return f"{x / scale:,.1f}{suffix}"
    return f"{x:,.2f}"


def money_text(value, currency, minor=True):
    """Money for reading: "$889.7M" (USD), "889.7M SEK", "889.7M" without a currency; "n/a" for null."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    x = value / MINOR_PER_MAJOR if minor else value
    return _with_currency(x, short_number(abs(x)), currency)


def _with_currency(x, number, currency):
    """``number`` (the text of ``abs(x)``) with x's sign and the currency's symbol, else its code after."""
    sign = "\u2212" if x < 0 else ""
    symbol = CURRENCY_SYMBOLS.get(currency or "")
    if symbol:
        return f"{sign}{symbol}{number}"
    return f"{sign}{number} {currency}" if currency else f"{sign}{number}"


def readable(value, unit, currency):
    """The text of a value in sentences, cards and charts: money short with its currency, else as ``fmt``."""
    return money_text(value, currency) if unit == "money" else fmt(value, unit)


def _divide(a, b):
    """a ÷ b, None where either is missing or b is 0 (SPEC §5's rule for a zero denominator)."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def _term(row, expression):
    """A base count of ``row``, or "a-b": a difference of two."""
    names = expression.split("-")
    values = [row[n] for n in names]
    if any(v is None for v in values):
        return None
    return values[0] - sum(values[1:])


def counted_distribution(per_merchant, key, start, column):
    """{group of ``key``: {"merchants", "p25", "median", "p75"}} of a base count over the merchants of
    ``per_merchant`` (compute by merchant, industry and size) in the period at ``start``: NumPy's linear
    percentiles, as benchmarks() computes them for the §5 metrics."""
    import numpy as np

    if per_merchant is None:
        return {}
    values = {}
    for row in per_merchant.to_pylist():
        if row["period_start"] == start and row[column] is not None:
            values.setdefault(row[key], []).append(row[column])
    out = {}
    for group, vs in values.items():
        qs = np.percentile(np.array(vs, dtype=float), [q for _, q in QUANTILES])
        out[group] = {"merchants": len(vs), **{name: float(q) for (name, _), q in zip(QUANTILES, qs)}}
    return out


def group_value(row, spec):
    """Participants' or non-participants' value from the base counts (the lift's numerator or denominator)."""
    if row is None:
        return None
    numerator, denominator = spec
    return _divide(_term(row, numerator), _term(row, denominator))


def data_value(value):
    """The exact value behind a cell, for machines: ints as is, floats by repr, null as ""."""
    if value is None:
        return ""
    if isinstance(value, (dt.date,)):
        return value.isoformat()
    return repr(value) if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------
# Charts


# Names (industries, countries) are data: drawn as typed, never parsed as
# mathtext ("$\\frac$" would fail, "Toys $ Games $" would render as math).
LITERAL_TEXT = {"text.parse_math": False, "text.usetex": False}


def _literal_text(chart):
    """Run ``chart`` (creating and rendering a figure) with every text drawn literally."""
    import functools

    @functools.wraps(chart)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(LITERAL_TEXT):
            return chart(*args, **kwargs)

    return wrapper


SVG_RC = {"svg.fonttype": "none",           # text stays text: selectable, searchable, sharp
          "svg.hashsalt": "loyaltymetrics",   # no random ids: the same input gives the same page
          "svg.image_inline": True}


def _svg(fig):
    """The figure as SVG markup to inline in the page (no XML prolog, no fixed size: it scales with the page)."""
    import matplotlib
    from matplotlib.backends.backend_svg import FigureCanvasSVG

    FigureCanvasSVG(fig)
    buffer = io.StringIO()
    with matplotlib.rc_context(SVG_RC):
        # No date or version in the file: the same input gives the same report.
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.S)  # RDF boilerplate
    # The viewBox keeps the aspect ratio; CSS sets the width.
    match = re.match(r'<svg([^>]*?) width="([0-9.]+)pt" height="[^"]*"', text)
    if match:  # at most 1.5 × its natural size: wide screens do not blow the text up
        text = (f'<svg{match.group(1)} style="max-width: {float(match.group(2)) * 2:.0f}px"'
                + text[match.end():])
    return text


def scoped_svg(svg, scope):
    """``svg`` with its ids (clip paths, markers) prefixed by ``scope``: several SVGs share one page's ids."""
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{scope}-{m.group(1)}"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{scope}-{m.group(1)})", svg)
    return re.sub(r'href="#([^"]+)"', lambda m: f'href="#{scope}-{m.group(1)}"', svg)


def _figure(width=6.4, height=3.6):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def _style_axes(ax, categories, ylabel, money=False):
    ax.set_xticks(range(len(categories)))
    rotate = len(categories) > 4 or max((len(c) for c in categories), default=0) > 12
    ax.set_xticklabels(categories, rotation=30 if rotate else 0, ha="right" if rotate else "center", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(axis="y", labelsize=8)
    if money is not False:  # ticks like "$1.5M": the currency on the axis itself
        ax.yaxis.set_major_formatter(lambda x, _pos=None: axis_money(x, money))
    else:
        ax.yaxis.set_major_formatter(_axis_number)
    ax.axhline(0, color="#555555", linewidth=0.6)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(axis="y", color="#e4e7eb", linewidth=0.6)
    ax.set_axisbelow(True)


def axis_money(x, currency):
    """A money tick: "$200", "$1.5M" (major units; the currency's symbol, else its code after)."""
    return _with_currency(x, _axis_number(abs(x)), currency)


def _axis_number(x, _pos=None):
    """Axis ticks in plain figures (12k, 3.5M) rather than matplotlib's "1e7" offset."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:g}{suffix}"
    return f"{x:g}"


def _nan(values):
    return [math.nan if v is None else v for v in values]


@_literal_text
def yoy_bar_chart(categories, previous, latest, changes, labels, ylabel, bands=None, money=False, signs=None):
    """Grouped bars, the earlier period beside the latest, each latest bar labelled with its YoY change.

    ``bands``: per category (p25, median, p75) of the merchants' own values in the latest period,
    drawn as a diamond with a whisker over the latest bar. ``money``: the currency code (or None)
    when the axis shows money; ``signs``: the changes as numbers, for the labels' colour.
    """
    fig, ax = _figure()
    n = len(categories)
    width = 0.38
    xs = range(n)
    ax.bar([x - width / 2 for x in xs], _nan(previous), width, label=labels[0], color=PREVIOUS_COLOR)
    bars = ax.bar([x + width / 2 for x in xs], _nan(latest), width, label=labels[1], color=LATEST_COLOR)
    finite = [v for v in previous + latest if v is not None]
    if bands:
        finite += [v for band in bands if band for v in band]
        for x, band in zip(xs, bands):
            if band:
                low, mid, high = band
                ax.errorbar([x + width / 2], [mid], yerr=[[mid - low], [high - mid]], fmt="D", color="#111111",
                            markersize=4, capsize=3, linewidth=1,
                            label="typical merchant (median, p25\u2013p75)" if x == 0 else None)
    top = max(finite + [0])
    bottom = min(finite + [0])
    pad = (top - bottom) * 0.04 or 1
    for bar, value, text, change in zip(bars, latest, changes, signs or [None] * n):
        y = 0 if value is None else value
        above = y >= 0
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, y),
                    xytext=(0, 2 if above else -2), textcoords="offset points",
                    ha="center", va="bottom" if above else "top", fontsize=7,
                    color="#1b7a3a" if change is not None and change >= 0 else
                    "#b3261e" if change is not None else "#555555")
    ax.set_ylim(bottom - (pad * 3 if bottom < 0 else 0), top + pad * 3)
    _style_axes(ax, categories, ylabel, money)
    handles, names = ax.get_legend_handles_labels()
    ax.legend(handles, names, fontsize=8, frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3)
    return _svg(fig)


@_literal_text
def reward_chart(categories, shares, share_changes, medians, bands, labels, money_label, currency):
    """Reward-generated value of a breakdown: left the share of revenue (pooled), right the typical
    merchant's value (median, with the p25-p75 whisker in the latest period), each year beside the other."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12.8, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    n, width = len(categories), 0.38
    xs = range(n)
    left.bar([x - width / 2 for x in xs], _nan(shares[0]), width, label=labels[0], color=PREVIOUS_COLOR)
    bars = left.bar([x + width / 2 for x in xs], _nan(shares[1]), width, label=labels[1], color=LATEST_COLOR)
    for bar, value, change in zip(bars, shares[1], share_changes):
        left.annotate(fmt_pp(change), (bar.get_x() + bar.get_width() / 2, value or 0), xytext=(0, 2),
                      textcoords="offset points", ha="center", va="bottom", fontsize=7,
                      color="#555555" if change is None else "#1b7a3a" if change >= 0 else "#b3261e")
    finite = [v for v in shares[0] + shares[1] if v is not None]
    left.set_ylim(0, (max(finite + [0]) or 1) * 1.15)
    _style_axes(left, categories, "% of the group\u2019s revenue")
    left.set_title("Share of revenue from reward orders (all the group\u2019s orders)", fontsize=9)
    left.legend(fontsize=8, frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.06), ncol=2)
    right.bar([x - width / 2 for x in xs], _nan(medians[0]), width, label=labels[0], color=PREVIOUS_COLOR)
    right.bar([x + width / 2 for x in xs], _nan(medians[1]), width, label=labels[1], color=LATEST_COLOR)
    for x, band in zip(xs, bands):
        if band:
            low, mid, high = band
            right.errorbar([x + width / 2], [mid], yerr=[[mid - low], [high - mid]], fmt="none", color="#111111",
                           capsize=3, linewidth=1, label="p25\u2013p75" if x == 0 else None)
    _style_axes(right, categories, "per merchant" + money_label, currency)
    right.set_title("The typical merchant\u2019s reward-generated value (median)", fontsize=9)
    right.legend(fontsize=8, frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.06), ncol=3)
    return _svg(fig)


@_literal_text
def panel_bar_chart(panels):
    """One small panel per measure: participants' bar beside non-participants'. ``panels``:
    (title, participants, non-participants, currency-or-False) in display units."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.6, 2.8), layout="constrained")
    axes = fig.subplots(1, len(panels))
    for ax, (title, mine, others, money) in zip(axes, panels):
        values = [mine, others]
        ax.bar([0, 1], _nan(values), 0.6, color=(LATEST_COLOR, PREVIOUS_COLOR))
        for x, v in enumerate(values):
            text = "n/a" if v is None else (money_text(v, money or None, minor=False) if money is not False
                                            else f"{v:,.2f}" if "%" not in title and "rate" not in title
                                            else f"{v:,.1f}%")
            ax.annotate(text, (x, 0 if v is None else v), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=8)
        finite = [v for v in values if v is not None]
        ax.set_ylim(0, (max(finite + [0]) or 1) * 1.18)
        _style_axes(ax, ["participants", "non-participants"], "", money)
        ax.set_title(title, fontsize=9)
    return _svg(fig)


@_literal_text
def series_bar_chart(categories, series, ylabel, reference=None, colors=SERIES_COLORS):
    """Grouped bars of several series; ``reference``: a dashed line (1 for lifts)."""
    fig, ax = _figure()
    n, k = len(categories), len(series)
    width = 0.8 / k
    for i, (name, values) in enumerate(series):
        offset = (i - (k - 1) / 2) * width
        ax.bar([x + offset for x in range(n)], _nan(values), width, label=name, color=colors[i % len(colors)])
        for x, value in enumerate(values):
            if value is None:  # say so rather than leave a gap that reads as 0
                ax.annotate("n/a", (x + offset, 0), xytext=(0, 2), textcoords="offset points", ha="center",
                            va="bottom", fontsize=6, color="#555555", rotation=90)
    if reference is not None:
        ax.axhline(reference, color="#333333", linewidth=0.8, linestyle="--")
    _style_axes(ax, categories, ylabel)
    ax.legend(fontsize=8, frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=max(k, 1))
    return _svg(fig)


@_literal_text
def heat_map(row_labels, column_labels, matrix, colorbar_label):
    """A cohort × period-index heat map; NaN cells (not yet observable) stay blank."""
    import numpy as np

    values = np.array(matrix, dtype=float)
    height = 1.2 + 0.24 * len(row_labels)
    fig, ax = _figure(width=9.6, height=max(3.0, height))
    masked = np.ma.masked_invalid(values)
    finite = values[np.isfinite(values)]
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    image = ax.imshow(masked, aspect="auto", cmap="Blues", vmin=0, vmax=vmax, interpolation="nearest")
    ax.set_xticks(range(len(column_labels)))
    ax.set_xticklabels(column_labels, fontsize=7)
    ax.set_yticks(range(len(row_labels)))
    ax.set_yticklabels(row_labels, fontsize=7)
    ax.set_xlabel("months since acquisition", fontsize=8)
    ax.set_ylabel("cohort (store-customers)", fontsize=8)
    if len(column_labels) <= 30 and len(row_labels) <= 40:
        for (r, c), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(c, r, f"{v:.0f}", ha="center", va="center", fontsize=6,
                        color="white" if v > vmax * 0.6 else "#1f2a36")
    bar = fig.colorbar(image, ax=ax, shrink=0.8)
    bar.set_label(colorbar_label, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return _svg(fig)


# ---------------------------------------------------------------------------
# HTML

CSS = """
body { font-family: "Liberation Sans", "DejaVu Sans", Arial, sans-serif; color: #1f2a36; margin: 0;
       background: #f6f7f9; }
main { max-width: 1380px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { margin: 0 0 4px; font-size: 28px; }
h2 { margin: 36px 0 8px; font-size: 21px; border-bottom: 2px solid #d8dde3; padding-bottom: 4px; }
h3 { margin: 20px 0 4px; font-size: 16px; }
p.meta, p.note, p.definition { margin: 4px 0; font-size: 13px; color: #4a5868; }
p.warning { margin: 8px 0; padding: 8px 12px; font-size: 13px; background: #fff4d6; border-left: 4px solid #e0a800; }
.cards { display: grid; grid-template-columns: repeat(4, 1fr); gap: 16px; margin-top: 12px; }
.card { background: #fff; border-radius: 8px; padding: 14px 18px; box-shadow: 0 1px 3px rgba(0,0,0,.08); }
.card .label { font-size: 13px; color: #4a5868; }
.card .value { font-size: 28px; font-weight: bold; margin: 4px 0; }
.card .change { font-size: 13px; }
.card .sub { font-size: 13px; color: #1f2a36; }
ol.findings li { margin: 4px 0; font-size: 14px; }
.up { color: #1b7a3a; } .down { color: #b3261e; } .flat { color: #4a5868; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
.single { display: grid; grid-template-columns: 1fr; gap: 16px; }
figure { background: #fff; margin: 8px 0; padding: 10px 12px; border-radius: 8px;
         box-shadow: 0 1px 3px rgba(0,0,0,.08); }
figure svg { display: block; width: 100%; height: auto; }
figcaption { font-size: 13px; font-weight: bold; margin-bottom: 6px; }
figure p.empty { font-size: 13px; color: #4a5868; padding: 24px 8px; }
details { font-size: 12px; margin-top: 6px; }
table { border-collapse: collapse; margin-top: 6px; }
th, td { padding: 2px 8px; border-bottom: 1px solid #e4e7eb; text-align: right; }
th:first-child, td:first-child { text-align: left; }
footer { margin-top: 40px; font-size: 12px; color: #4a5868; }
"""


def esc(text):
    return html.escape(str(text), quote=True)


def svg_tag(svg, alt, scope):
    """The chart inline, its ids scoped to the figure, labelled for screen readers."""
    svg = scoped_svg(svg, scope)
    return svg.replace("<svg", f'<svg role="img" aria-label="{esc(alt)}"', 1)


def table_html(header, rows):
    """``rows``: lists of cells, a cell being text or (value, unit) — shown formatted, exact in data-value."""
    out = ["<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for row in rows:
        cells = []
        for cell in row:
            if isinstance(cell, tuple):
                value, unit = cell
                text = (fmt_change(value) if unit == "change" else fmt_pp(value) if unit == "pp"
                        else fmt(value, unit))
                cells.append(f'<td data-value="{esc(data_value(value))}">{esc(text)}</td>')
            else:
                cells.append(f"<td>{esc(cell)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def figure_html(chart_id, caption, svg, alt, table, empty_reason=None):
    body = (f'<p class="empty">{esc(empty_reason)}</p>' if svg is None else svg_tag(svg, alt, chart_id))
    return (f'<figure data-chart="{esc(chart_id)}"><figcaption>{esc(caption)}</figcaption>{body}'
            f"<details><summary>Numbers</summary>{table}</details></figure>")


def render(data, *, title="Loyalty report", cohort_count=24):
    """The report's HTML for the tables in ``data`` (a ``ReportData``)."""
    latest, previous = headline_periods(data.network, data.period, data.year, data.period_start)
    labels = (period_label(previous, data.period), period_label(latest, data.period))
    page = Page(data, latest, previous, labels)
    sections = [
        page.headline(),
        page.findings(),
        page.metric_sections(),
        page.participants(),
        page.retention(),
        page.concentration(),
        page.cohort_section(cohort_count),
    ]
    source = f"orders: {data.source}; merchants: {data.merchants_source or 'none given'}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
        f"<style>{CSS}</style></head><body><main>"
        f"<header><h1>{esc(title)}</h1>"
        f'<p class="meta" data-latest="{latest.isoformat()}" data-previous="{previous.isoformat()}">'
        f"{esc(labels[1])} against {esc(labels[0])}, by calendar {esc(data.period)} in each merchant's time "
        "zone (UTC unless set). "
        f"Money is shown in major units{f' ({esc(data.currency)})' if data.currency else ''}: "
        f"the input's minor units (cents) ÷ {MINOR_PER_MAJOR}. "
        f"YoY is the change against the same {esc(data.period)} a year earlier: in percentage points (pp) for "
        "rates (repeat rate, retention, loyalty ROI), in percent of the earlier value for amounts. "
        f"Text and charts round money ({esc(readable(page.network_latest['revenue'], 'money', data.currency))} "
        "of revenue); the \u201cNumbers\u201d tables under the charts hold it exactly.</p>"
        f'<p class="meta">{esc(source)}</p>{page.warnings()}</header>'
        + "".join(sections)
        + "<footer><p>Made by loyaltymetrics: every number is a value of compute(), concentration() "
          "or cohorts() over the same orders. Store-customers are (merchant, customer) pairs: the same "
          "shopper at two merchants counts twice. "
          "n/a: undefined (a zero denominator, or no earlier period to compare with).</p></footer>"
        "</main></body></html>\n"
    )


class Page:
    """The sections of one report."""

    def __init__(self, data, latest, previous, labels):
        self.data, self.latest, self.previous, self.labels = data, latest, previous, labels
        self.money = f" ({data.currency})" if data.currency else " (major units)"
        self.network_latest = network_row(data.network, latest)
        self.network_previous = network_row(data.network, previous)
        self.tables = {"industry": data.by_industry, "size": data.by_size}
        self.latest_rows = {key: rows_by(table, key, latest) for key, table in self.tables.items()}
        self.previous_rows = {key: rows_by(table, key, previous) for key, table in self.tables.items()}

    # -- groups ------------------------------------------------------------

    def categories(self, key):
        """Groups with an order in either period: industries by latest revenue (unknown last), sizes small first."""
        present = set(self.latest_rows[key]) | set(self.previous_rows[key])
        if key == "size":
            return [label for label in self.data.size_order if label in present]

        def revenue(name):
            row = self.latest_rows[key].get(name)
            return row["revenue"] if row else -1

        return sorted(present, key=lambda name: (name == UNKNOWN, -revenue(name), name))

    def warnings(self):
        notes = []
        if not self.data.has_merchants:
            notes.append("No merchants table was given: every merchant is in industry \u201cunknown\u201d, "
                         "and loyalty ROI is undefined (it divides by the merchants\u2019 annual fees).")
        elif UNKNOWN in self.latest_rows["industry"] or UNKNOWN in self.previous_rows["industry"]:
            notes.append("Industry \u201cunknown\u201d: merchants missing from the merchants table "
                         "or without an industry in it.")
        if self.network_previous is None:
            notes.append(f"The orders hold nothing in {self.labels[0]}: there is no year-over-year comparison.")
        elif not self.network_previous["period_complete"]:
            notes.append(f"{self.labels[0]} is not wholly observed (it begins before the observation window): "
                         f"its numbers cover part of the {self.data.period} only, and no year-over-year change "
                         "is shown.")
        return "".join(f'<p class="warning">{esc(n)}</p>' for n in notes)

    # -- headline ----------------------------------------------------------

    def comparable(self):
        """Both periods complete: YoY changes are defined (SPEC §3)."""
        return self.network_previous is not None and bool(self.network_previous["period_complete"])

    def change(self, unit, before, now, yoy):
        return change_of(unit, before, now, yoy, self.comparable())

    def headline(self):
        cards = []
        currency = self.data.currency
        for column, label, unit in HEADLINE:
            value = self.network_latest[column]
            before = None if self.network_previous is None else self.network_previous[column]
            change, kind = self.change(unit, before, value, self.network_latest[f"{column}_yoy"])
            tone = "flat" if not change else ("up" if change > 0 else "down")
            extra = ""
            if column == "reward_revenue":
                share = _divide(value, self.network_latest["revenue"])
                extra = (f'<div class="sub" data-share="{esc(data_value(share))}">'
                         f'{esc(fmt(share, "fraction"))} of revenue</div>')
            cards.append(
                f'<div class="card" data-metric="{column}" data-value="{esc(data_value(value))}" '
                f'data-yoy="{esc(data_value(change))}" data-yoy-unit="{"pp" if kind == "pp" else "%"}">'
                f'<div class="label">{esc(label)}{self.money if unit == "money" else ""}</div>'
                f'<div class="value">{esc(readable(value, unit, currency))}</div>{extra}'
                f'<div class="change {tone}">{esc(fmt_pp(change) if kind == "pp" else fmt_change(change))} YoY '
                f'<span class="flat">({esc(self.labels[0])}: {esc(readable(before, unit, currency))})</span>'
                f'</div></div>')
        return (f'<section id="headline"><h2>{esc(self.labels[1])} at a glance</h2>'
                f'<div class="cards">{"".join(cards)}</div></section>')

    # -- the six metrics, by industry and by size, year over year ----------

    def metric_sections(self):
        parts = ['<section id="metrics"><h2>Metrics by industry and merchant size, year over year</h2>'
                 f'<p class="note">Bars: the pooled value of all the group\u2019s orders, grey for '
                 f'{esc(self.labels[0])}, blue for {esc(self.labels[1])}, labelled with the YoY change '
                 "(percentage points for rates, percent for amounts). Black diamond and whisker: the typical "
                 f"merchant of the group in {esc(self.labels[1])}, its median and the p25\u2013p75 spread of the "
                 "merchants\u2019 own values.</p>"]
        for metric in METRICS:
            # Reward-generated value is a sum, so pooled by group it mostly shows the group's size: its
            # charts show the share of revenue and the typical merchant's value instead, full width.
            layout = "single" if metric.column == "reward_revenue" else "pair"
            parts.append(f'<h3 id="{metric.column}">{esc(metric.title)}</h3>'
                         f'<p class="definition">{esc(metric.definition)}</p><div class="{layout}">')
            for key, name in DIMENSIONS:
                parts.append(self.yoy_figure(metric, key, name))
            parts.append("</div>")
        parts.append("</section>")
        return "".join(parts)

    def typical(self, key, start, column):
        """{group: benchmarks() row} of the merchants' distribution of ``column`` in the period at ``start``."""
        if column not in BENCHMARKED:
            return counted_distribution(self.data.per_merchant, key, start, column)
        table = (self.data.typical or {}).get(key)
        if table is None:
            return {}
        if not hasattr(self, "_typical_rows"):
            self._typical_rows = {}
        if key not in self._typical_rows:
            index = {}
            for row in table.to_pylist():
                if row["merchants"]:
                    index[(row[key], row["period_start"], row["metric"])] = row
            self._typical_rows[key] = index
        return {g: row for (g, s, m), row in self._typical_rows[key].items() if s == start and m == column}

    def yoy_figure(self, metric, key, name):
        categories = self.categories(key)
        latest = [self._value(self.latest_rows[key], c, metric.column) for c in categories]
        previous = [self._value(self.previous_rows[key], c, metric.column) for c in categories]
        yoys = [self._value(self.latest_rows[key], c, f"{metric.column}_yoy") for c in categories]
        unit = metric.unit
        changes = []
        for p, v, y in zip(previous, latest, yoys):
            changes.append(self.change(unit, p, v, y))
        kind = "pp" if unit in RATE_UNITS else "change"
        typical = self.typical(key, self.latest, metric.column)
        typical_before = self.typical(key, self.previous, metric.column)
        header = [name, self.labels[0], self.labels[1], "YoY (pp)" if kind == "pp" else "YoY (%)"]
        if metric.column == "reward_revenue":
            header += [f"share of revenue {self.labels[0]}", f"share of revenue {self.labels[1]}",
                       "share of revenue YoY (pp)"]
        header += [f"median merchant {self.labels[0]}", f"median merchant {self.labels[1]}",
                   f"p25 {self.labels[1]}", f"p75 {self.labels[1]}", f"merchants {self.labels[1]}"]
        rows = []
        for c, p, v, (ch, _) in zip(categories, previous, latest, changes):
            row = [c, (p, unit), (v, unit), (ch, kind)]
            if metric.column == "reward_revenue":
                before = _divide(p, self._value(self.previous_rows[key], c, "revenue"))
                now = _divide(v, self._value(self.latest_rows[key], c, "revenue"))
                row += [(before, "fraction"), (now, "fraction"), (self.change("fraction", before, now, None)[0], "pp")]
            t, tb = typical.get(c, {}), typical_before.get(c, {})
            row += [(tb.get("median"), unit), (t.get("median"), unit), (t.get("p25"), unit), (t.get("p75"), unit),
                    (t.get("merchants", 0), "count")]
            rows.append(row)
        table = table_html(header, rows)
        chart_id = f"{metric.column}-by-{key}"
        caption = f"{metric.title} by {name}"
        if all(v is None for v in latest + previous):
            return figure_html(chart_id, caption, None, None, table, self._empty_reason(metric.column))
        ylabel = metric.axis + (self.money if unit == "money" else "")
        bands = [None if c not in typical else tuple(shown(typical[c][q], unit) for q, _ in QUANTILES)
                 for c in categories]
        if metric.column == "reward_revenue":
            shares = [[shown(row[4 + i][0], "fraction") for row in rows] for i in range(2)]
            share_changes = [row[6][0] for row in rows]
            medians = [[shown(row[7 + i][0], unit) for row in rows] for i in range(2)]
            svg = reward_chart(categories, shares, share_changes, medians, bands, self.labels,
                               self.money, self.data.currency)
        else:
            svg = yoy_bar_chart(categories, [shown(v, unit) for v in previous], [shown(v, unit) for v in latest],
                                [fmt_pp(ch) if k == "pp" else fmt_change(ch) for ch, k in changes], self.labels,
                                ylabel, bands=bands, money=self.data.currency if unit == "money" else False,
                                signs=[ch for ch, _ in changes])
        return figure_html(chart_id, caption, svg, f"{caption}, {self.labels[0]} and {self.labels[1]}", table)

    @staticmethod
    def _value(rows, category, column):
        row = rows.get(category)
        return None if row is None else row[column]

    def _empty_reason(self, column):
        if column == "loyalty_roi":
            if not self.data.has_merchants:
                return ("Loyalty ROI is undefined: it divides by the merchants\u2019 annual fees, and no "
                        "merchants table was given.")
            return "Loyalty ROI is undefined: the merchants\u2019 annual fees are 0 (or missing) in every group."
        if column in ("retention_rate", "strict_retention_rate"):
            return "Retention is undefined: it needs orders in the period before."
        if column.startswith("member_"):
            return ("Participant lifts are undefined: they need both program participants "
                    "(customers with a reward order) and non-participants.")
        return "No values: every group's denominator is 0."

    # -- one-period snapshots: participants and retention -----------------

    def snapshot_figure(self, chart_id, caption, key, name, series, unit, ylabel, reference=None, extra=None):
        """Several columns of the latest period, network first, then the groups of ``key``."""
        categories = self.categories(key)
        rows = [self.network_latest] + [self.latest_rows[key].get(c) for c in categories]
        names = [ALL_MERCHANTS] + categories
        values = [[None if row is None else row[column] for row in rows] for column, _ in series]
        header = [name] + [label for _, label in series]
        extra_cells = [[] for _ in rows]
        if extra:
            header += [h for h, _ in extra]
            extra_cells = [[cell(row) for _, cell in extra] for row in rows]
        table = table_html(header, [[n] + [(v[i], unit) for v in values] + extra_cells[i]
                                    for i, n in enumerate(names)])
        if all(x is None for v in values for x in v):
            return figure_html(chart_id, caption, None, None, table, self._empty_reason(series[0][0]))
        svg = series_bar_chart(names, [(label, [shown(x, unit) for x in v]) for (_, label), v in zip(series, values)],
                               ylabel, reference)
        return figure_html(chart_id, caption, svg, caption, table)

    def participants(self):
        n = self.network_latest
        sentences = []
        for column, label in LIFTS:
            if n[column] is not None:
                sentences.append(f"{label} {fmt(n[column], 'lift')}")
        summary = ("Across all merchants in " + self.labels[1] + ", participants\u2019 " + ", ".join(sentences)
                   + " that of non-participants.") if sentences else ""
        extra = []
        for label, unit, mine, others in GROUP_VALUES:
            extra.append((f"participants\u2019 {label}", lambda row, u=unit, m=mine: (group_value(row, m), u)))
            extra.append((f"non-participants\u2019 {label}", lambda row, u=unit, o=others: (group_value(row, o), u)))
        figures = "".join(
            self.snapshot_figure(f"member-lifts-by-{key}", f"Participants vs non-participants by {name}, "
                                 f"{self.labels[1]}", key, name, LIFTS, "lift", "participants \u00f7 non-participants",
                                 reference=1.0, extra=extra)
            for key, name in DIMENSIONS)
        return ('<section id="participants"><h2>Program participants vs non-participants</h2>'
                '<p class="definition">Participants are the period\u2019s store-customers with at least one reward '
                "order. First their actual repeat rate, AOV and purchase frequency beside the non-participants\u2019 "
                "(all merchants); then, by industry and size, the lift: participants\u2019 value divided by "
                "non-participants\u2019 (1 = no difference, the dashed line).</p>"
                f'<p class="note">{esc(summary)}</p>{self.participant_values()}'
                f'<div class="pair">{figures}</div></section>')

    def participant_values(self):
        n = self.network_latest
        rows, panels = [], []
        for label, unit, mine, others in GROUP_VALUES:
            a, b = group_value(n, mine), group_value(n, others)
            rows.append([label, (a, unit), (b, unit)])
            panels.append((label + (self.money if unit == "money" else ""), shown(a, unit), shown(b, unit),
                           unit == "money" and self.data.currency))
        table = table_html(["measure", "participants", "non-participants"], rows)
        caption = f"Participants and non-participants, all merchants, {self.labels[1]}"
        if all(a is None and b is None for _, a, b, _ in panels):
            return figure_html("participant-values", caption, None, None, table, self._empty_reason("member_"))
        return figure_html("participant-values", caption, panel_bar_chart(panels), caption, table)

    def retention(self):
        figures = "".join(
            self.snapshot_figure(f"retention-by-{key}", f"Retention by {name}, {self.labels[1]}", key, name,
                                 RETENTION, "percent", "% of the earlier period\u2019s customers")
            for key, name in DIMENSIONS)
        return ('<section id="retention"><h2>Retention</h2>'
                '<p class="definition">Customer retention rate: (customers \u2212 new customers) \u00f7 the '
                "customers of the period before \u00d7 100: every returning customer counts, whenever they "
                "bought before. Strict retention counts only the store-customers who bought in both periods.</p>"
                f'{self.retention_note()}<div class="pair">{figures}</div></section>')

    def retention_note(self):
        first = min(r["period_start"] for r in self.data.network.select(["period_start"]).to_pylist())
        if self.network_previous is None:
            return ""
        if self.previous == first:
            return ('<p class="warning" id="retention-note">The orders begin in '
                    f"{esc(self.labels[0])}, so every returning customer of {esc(self.labels[1])} bought in "
                    f"{esc(self.labels[0])}: retention and strict retention are equal by definition here. "
                    "They differ when the orders reach further back (customers returning after a gap count "
                    "in retention, not in strict retention).</p>")
        return ""

    # -- key findings: sentences from the numbers, each number a cell of a table below ----------

    def ref(self, text, chart, group, column, value):
        """A number in a sentence, pointing at the table cell it comes from."""
        return (f'<span class="ref" data-chart="{esc(chart)}" data-group="{esc(group)}" '
                f'data-column="{esc(column)}" data-value="{esc(data_value(value))}">{esc(text)}</span>')

    def findings(self):
        items = []
        currency = self.data.currency
        # Participants against non-participants (all merchants).
        n = self.network_latest
        parts = []
        for (lift, label), (_, unit, mine, others) in zip(LIFTS, GROUP_VALUES):
            a, b = group_value(n, mine), group_value(n, others)
            if n[lift] is None or a is None or b is None:
                continue
            lift_ref = self.ref(fmt(n[lift], "lift"), "member-lifts-by-industry", ALL_MERCHANTS, LIFTS_LABEL[lift],
                                n[lift])
            mine_ref = self.ref(readable(a, unit, currency), "participant-values", label, "participants", a)
            others_ref = self.ref(readable(b, unit, currency), "participant-values", label, "non-participants", b)
            parts.append(f"{esc(label)} {lift_ref} ({mine_ref} against {others_ref})")
        if parts:
            items.append(f"Program participants against non-participants in {esc(self.labels[1])}: "
                         + "; ".join(parts) + ".")
        # Largest and smallest YoY moves, per dimension, amounts in percent and rates in points.
        if self.comparable():
            for key, name in DIMENSIONS:
                for kind, title in (("change", "amounts"), ("pp", "rates")):
                    moves = []
                    for metric in METRICS:
                        if (metric.unit in RATE_UNITS) != (kind == "pp"):
                            continue
                        for group in self.categories(key):
                            now = self._value(self.latest_rows[key], group, metric.column)
                            before = self._value(self.previous_rows[key], group, metric.column)
                            yoy = self._value(self.latest_rows[key], group, f"{metric.column}_yoy")
                            change, _ = self.change(metric.unit, before, now, yoy)
                            if change is not None and not math.isnan(change):
                                moves.append((change, metric, group))
                    if len(moves) < 2:
                        continue
                    moves.sort(key=lambda m: m[0])
                    header = "YoY (pp)" if kind == "pp" else "YoY (%)"
                    text = fmt_pp if kind == "pp" else fmt_change
                    phrases = [f"{esc(m.title)} in {esc(g)} "
                               f"{self.ref(text(c), f'{m.column}-by-{key}', g, header, c)}"
                               for c, m, g in (moves[-1], moves[0])]
                    items.append(f"By {esc(name)}, among the {title}: the largest rise was {phrases[0]}; "
                                 f"the largest fall (or smallest rise) {phrases[1]}.")
        # Top and bottom segment per metric.
        for metric in METRICS:
            found = []
            for key, name in DIMENSIONS:
                values = [(v, g) for g in self.categories(key)
                          if (v := self._value(self.latest_rows[key], g, metric.column)) is not None
                          and not (isinstance(v, float) and math.isnan(v))]
                if len(values) < 2:
                    continue
                values.sort(key=lambda x: x[0])
                chart = f"{metric.column}-by-{key}"
                (low, lg), (high, hg) = values[0], values[-1]
                found.append(f"by {esc(name)} highest in {esc(hg)} "
                             f"({self.ref(readable(high, metric.unit, currency), chart, hg, self.labels[1], high)}), "
                             f"lowest in {esc(lg)} "
                             f"({self.ref(readable(low, metric.unit, currency), chart, lg, self.labels[1], low)})")
            if found:
                items.append(f"{esc(metric.title)} in {esc(self.labels[1])}: " + "; ".join(found) + ".")
        if not items:
            return ""
        return ('<section id="findings"><h2>Key findings</h2><ol class="findings">'
                + "".join(f"<li>{item}</li>" for item in items) + "</ol>"
                '<p class="note">Each number links to a cell of the "Numbers" table under the chart it comes '
                "from.</p></section>")

    # -- concentration ------------------------------------------------------

    def concentration(self):
        table = self.data.concentration
        latest = rows_by(table, "industry", self.latest)
        previous = rows_by(table, "industry", self.previous)
        categories = [c for c in self.categories("industry") if c in latest or c in previous]
        top_label = f"top {self.data.top * 100:g}%"
        rows = []
        for c in categories:
            rows.append([c] + [(None if r.get(c) is None else r[c][col], unit)
                               for r in (previous, latest)
                               for col, unit in (("top_customers", "count"), ("top_share", "fraction"))])
        header = ["industry"] + [f"{label}: {what}" for label in self.labels
                                 for what in (f"{top_label} customers", "their revenue share")]
        html_table = table_html(header, rows)
        caption = f"Revenue share of the {top_label} of store-customers by industry"
        shares = {label: [None if r.get(c) is None else r[c]["top_share"] for c in categories]
                  for label, r in zip(self.labels, (previous, latest))}
        if not categories:
            figure = figure_html("concentration-by-industry", caption, None, None, html_table, "No revenue.")
        else:
            png = series_bar_chart(categories, [(label, [shown(v, "fraction") for v in shares[label]])
                                                for label in self.labels], "% of revenue",
                                   colors=(PREVIOUS_COLOR, LATEST_COLOR))
            figure = figure_html("concentration-by-industry", caption, png, caption, html_table)
        return ('<section id="concentration"><h2>Revenue concentration</h2>'
                f'<p class="definition">The share of each industry\u2019s revenue that comes from its {top_label} '
                "of store-customers by revenue in the period (ceil of the share \u00d7 customers).</p>"
                f"{figure}</section>")

    # -- cohorts ------------------------------------------------------------

    def cohort_section(self, cohort_count):
        # Cells of months not wholly observed would read as a drop in retention: left out (SPEC §3).
        every = [r for r in self.data.cohorts.to_pylist() if r["period_complete"]]
        size = {r["cohort_start"]: r["cohort_customers"] for r in every}
        starts = sorted(size)[-cohort_count:]
        shown_starts = set(starts)
        rows = [r for r in every if r["cohort_start"] in shown_starts and r["period_index"] >= 1]
        max_index = max((r["period_index"] for r in rows), default=0)
        position = {s: i for i, s in enumerate(starts)}
        matrix = [[math.nan] * max_index for _ in starts]
        for r in rows:
            matrix[position[r["cohort_start"]]][r["period_index"] - 1] = r["retention"] * 100
        row_labels = [f"{s.year}-{s.month:02d} ({size[s]:,})" for s in starts]
        caption = "Month cohorts: share of each cohort active k months after its first order"
        table = table_html(["cohort", "customers"] + [str(k) for k in range(1, max_index + 1)],
                           [[f"{s.year}-{s.month:02d}", (size[s], "count")]
                            + [self._cohort_cell(rows_at, k) for k in range(1, max_index + 1)]
                            for s, rows_at in ((s, {r["period_index"]: r for r in rows if r["cohort_start"] == s})
                                               for s in starts)])
        if max_index == 0:
            figure = figure_html("cohort-retention", caption, None, None, table,
                                 "No cohort has a month after its first yet: the orders span one month.")
        else:
            png = heat_map(row_labels, [str(k) for k in range(1, max_index + 1)], matrix, "% of the cohort active")
            figure = figure_html("cohort-retention", caption, png, caption, table)
        return ('<section id="cohorts"><h2>Cohort retention</h2>'
                f'<p class="definition">Store-customers grouped by the calendar month (UTC) of their first order '
                f"(the latest {len(starts)} cohorts, all merchants); each cell is the share of the cohort with an order "
                "k months later. Month 0 is 100% by definition and left out; blank cells are not observable yet "
                "(months not wholly observed are left out).</p>"
                f"{figure}</section>")

    @staticmethod
    def _cohort_cell(rows_at, k):
        row = rows_at.get(k)
        return (None if row is None else row["retention"], "fraction")


# ---------------------------------------------------------------------------
# One merchant's scorecard


def find_merchant(per_merchant, merchant):
    """The merchant_id that ``merchant`` (an id, or a name in the merchants table) names; ValueError if none.

    An int, or text of digits, is an id first; other text is matched against ``merchant_name``
    (case and surrounding spaces ignored), and must name exactly one merchant.
    """
    ids = sorted(set(per_merchant.column("merchant_id").to_pylist()))
    text = str(merchant).strip()
    if isinstance(merchant, int) and not isinstance(merchant, bool) or text.lstrip("-").isdigit():
        if int(text) in ids:
            return int(text)
    if "merchant_name" in per_merchant.column_names:
        names = {}
        for mid, name in zip(per_merchant.column("merchant_id").to_pylist(),
                             per_merchant.column("merchant_name").to_pylist()):
            if name is not None and name.strip().casefold() == text.casefold():
                names[mid] = name
        if len(names) == 1:
            return next(iter(names))
        if len(names) > 1:
            raise ValueError(f"merchant name {text!r} names {len(names)} merchants (ids "
                             f"{', '.join(map(str, sorted(names)))}): pass the id instead")
    sample = ", ".join(map(str, ids[:10])) + (" …" if len(ids) > 10 else "")
    raise ValueError(f"no merchant {text!r} in the orders: pass a merchant_id with orders "
                     f"({len(ids)} merchants: {sample})"
                     + ("" if "merchant_name" in per_merchant.column_names else
                        ", or a name from the merchants table's name column (this one has none)"))


def standing(value, values):
    """The percentile of ``value`` among ``values`` (SPEC §9): 100 × (below + ½ equal) / count."""
    below = sum(1 for v in values if v < value)
    equal = sum(1 for v in values if v == value)
    return 100.0 * (below + 0.5 * equal) / len(values)


def _finite(v):
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def scorecard_html(data, merchant, *, title):
    """The one-merchant page: its metrics in the headline period, YoY, and percentile in its industry × size."""

    latest, previous = headline_periods(data.network, data.period, data.year, data.period_start)
    labels = (period_label(previous, data.period), period_label(latest, data.period))
    mid = find_merchant(data.standing, merchant)
    every = data.standing.to_pylist()
    mine = [r for r in every if r["merchant_id"] == mid]
    now = {r["metric"]: r for r in mine if r["period_start"] == latest}
    before = {r["metric"]: r for r in mine if r["period_start"] == previous}
    if not now:
        held = ", ".join(sorted({period_label(r["period_start"], data.period) for r in mine}))
        raise ValueError(f"merchant {mid} has no orders in {labels[1]}, the period the report headlines; "
                         f"its {data.period}s with orders: {held}. Choose one with year=/period_start=")
    first = next(iter(now.values()))
    industry, size = first["industry"], first["size"]
    peers = {r["merchant_id"] for r in every if r["period_start"] == latest and r["industry"] == industry
             and r["size"] == size}
    stats = {r["metric"]: r for r in data.group_stats.to_pylist()
             if r["period_start"] == latest and r["industry"] == industry and r["size"] == size}
    name = first.get("merchant_name") or f"merchant {mid}"
    currency = data.currency
    network_previous = network_row(data.network, previous)
    comparable = network_previous is not None and bool(network_previous["period_complete"])
    rows, cards, panels = [], [], []
    import numpy as np

    counts = data.per_merchant.to_pylist()
    own = {r["period_start"]: r for r in counts if r["merchant_id"] == mid}
    for metric in METRICS:
        if metric.column in BENCHMARKED:
            value = now[metric.column]["value"]
            earlier = before[metric.column]["value"] if metric.column in before else None
            yoy = now[f"{metric.column}_yoy"]["value"]
            values = [r["value"] for r in every if r["period_start"] == latest and r["industry"] == industry
                      and r["size"] == size and r["metric"] == metric.column and _finite(r["value"])]
            pct = now[metric.column]["percentile"]
            group = stats.get(metric.column, {})
        else:  # a base count: compute(by=["merchant"]) over the group's merchants, percentiles as benchmarks
            value = own[latest][metric.column]
            earlier = own[previous][metric.column] if previous in own else None
            yoy = own[latest][f"{metric.column}_yoy"]
            values = [r[metric.column] for r in counts if r["period_start"] == latest
                      and r["merchant_id"] in peers and _finite(r[metric.column])]
            pct = standing(value, values) if _finite(value) and values else None
            group = {"merchants": len(values)}
            if values:
                group.update(zip([name for name, _ in QUANTILES],
                                 np.percentile(np.array(values, dtype=float), [q for _, q in QUANTILES]).tolist()))
        change, kind = change_of(metric.unit, earlier, value, yoy, comparable)
        count = group.get("merchants", 0)
        qs = [group.get(q) for q, _ in QUANTILES]
        rows.append([metric.title, (earlier, metric.unit), (value, metric.unit), (change, kind),
                     (pct, "percentile"), (count, "count")] + [(q, metric.unit) for q in qs])
        change_text = fmt_pp(change) if kind == "pp" else fmt_change(change)
        rank = ("percentile n/a" if pct is None
                else f"percentile {pct:.0f} among the {count} merchants of its group")
        cards.append(
            f'<div class="card" data-metric="{metric.column}" data-value="{esc(data_value(value))}" '
            f'data-yoy="{esc(data_value(change))}" data-percentile="{esc(data_value(pct))}">'
            f'<div class="label">{esc(metric.title)}</div>'
            f'<div class="value">{esc(readable(value, metric.unit, currency))}</div>'
            f'<div class="sub">{esc(rank)}</div>'
            f'<div class="change {"flat" if not change else "up" if change > 0 else "down"}">{esc(change_text)} '
            f'YoY <span class="flat">({esc(labels[0])}: {esc(readable(earlier, metric.unit, currency))})</span>'
            f"</div></div>")
        panels.append((metric.title + (f" ({currency})" if metric.unit == "money" and currency else ""),
                       [shown(v, metric.unit) for v in values],
                       shown(value, metric.unit) if _finite(value) else None,
                       [None if q is None else shown(q, metric.unit) for q in qs],
                       currency if metric.unit == "money" else False, metric.unit))
    table = table_html(["metric", labels[0], labels[1], "YoY", "percentile in group", "merchants in group",
                        "group p25", "group median", "group p75"], rows)
    caption = (f"{name} among the {len(peers)} merchants of {industry} \u00d7 {size} orders a month, "
               f"{labels[1]}")
    svg = strip_chart(panels, name)
    figure = figure_html("merchant-standing", caption, svg, caption, table)
    few = (f'<p class="warning">Only {len(peers)} merchant{"s" if len(peers) != 1 else ""} in this group: '
           "percentiles among so few say little.</p>" if len(peers) < 5 else "")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
        f"<style>{CSS}</style></head><body><main>"
        f"<header><h1>{esc(title)}: {esc(name)}</h1>"
        f'<p class="meta" data-latest="{latest.isoformat()}" data-previous="{previous.isoformat()}" '
        f'data-merchant="{mid}" data-industry="{esc(industry)}" data-size="{esc(size)}">'
        f"{esc(name)} (merchant_id {mid}) in {esc(labels[1])} against {esc(labels[0])}. Its group: industry "
        f"{esc(industry)}, size {esc(size)} orders a month in {esc(labels[1])} ({len(peers)} merchants). "
        "Percentile: 100 \u00d7 (merchants below + half those equal) \u00f7 merchants in the group with a value; "
        "50 is the typical merchant, higher is a larger value. YoY in percentage points for rates, percent "
        "for amounts.</p>"
        f"<p class=\"meta\">orders: {esc(data.source)}; "
        f"merchants: {esc(data.merchants_source or 'none given')}</p>{few}</header>"
        f'<section id="scorecard"><h2>{esc(name)} in {esc(labels[1])}</h2><div class="cards">{"".join(cards)}</div>'
        "</section>"
        f'<section id="standing"><h2>Where it stands in its group</h2>'
        '<p class="note">Each row: every merchant of the group (grey dots), the middle half of them (box, p25 '
        "to p75) and the median (black line); the orange diamond is this merchant.</p>"
        f"{figure}</section>"
        "<footer><p>Made by loyaltymetrics: the merchant\u2019s values and percentiles are "
        "benchmarks(by=[\"industry\", \"size\"], per_merchant=True), the group\u2019s p25, median and p75 "
        "benchmarks(by=[\"industry\", \"size\"]), over the same orders; reward-generated value (a count "
        "benchmarks does not take) is compute(by=[\"merchant\"]) with the same percentile rules.</p></footer>"
        "</main></body></html>\n")


@_literal_text
def strip_chart(panels, name):
    """One row per metric: the group's merchants as dots, p25-p75 box, median, and this merchant."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.6, 1.0 * len(panels) + 0.6), layout="constrained")
    axes = fig.subplots(len(panels), 1)
    for ax, (title, values, value, (p25, med, p75), money, unit) in zip(axes, panels):
        if values and med is not None:
            jitter = [((i * 7919) % 13 - 6) / 30 for i in range(len(values))]  # fixed, not random
            ax.scatter(values, jitter, s=10, color=PREVIOUS_COLOR, zorder=2)
            ax.add_patch(__import__("matplotlib.patches", fromlist=["Rectangle"]).Rectangle(
                (p25, -0.3), p75 - p25, 0.6, facecolor="#dbe6f3", edgecolor=LATEST_COLOR, zorder=1))
            ax.plot([med, med], [-0.3, 0.3], color="#111111", linewidth=1.5, zorder=3)
        if value is not None:
            ax.scatter([value], [0], s=90, marker="D", color="#e08a2c", edgecolor="#111111", zorder=4,
                       label=name)
            ax.annotate(money_text(value, money or None, minor=False) if money is not False
                        else f"{value:,.1f}%" if unit in RATE_UNITS else f"{value:,.2f}",
                        (value, 0.3), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                        fontsize=8)
        else:
            ax.annotate("this merchant: n/a", (0.5, 0.9), xycoords="axes fraction", ha="center", fontsize=8,
                        color="#555555")
        ax.set_ylim(-0.6, 0.8)
        ax.set_yticks([])
        ax.set_title(title, fontsize=9, loc="left")
        ax.tick_params(axis="x", labelsize=8)
        if money is not False:
            ax.xaxis.set_major_formatter(lambda x, _pos=None, code=money: axis_money(x, code))
        else:
            ax.xaxis.set_major_formatter(_axis_number)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
    return _svg(fig)
