"""A synthetic merchant network calibrated to published loyalty-report figures.

``generate()`` writes order rows in the canonical layout (SPEC §2: sorted by
``(merchant_id, customer_id, order_ts)``) straight to an uncompressed Arrow
IPC file, merchant by merchant and block by block, so memory stays bounded
whatever ``rows`` is; and the merchants table beside it. The same ``seed``
(and the same ``rows``, ``merchants_count`` and ``years``) gives a byte-
identical file: every merchant draws from its own random stream, and block
and batch sizes are constants.

Calibration targets
-------------------
Measured with ``compute(orders, merchants, by=["industry"], period="year")``
on the generated network; tests/test_generate.py checks that each industry
lands inside its band in every year. AOV is the first year's (later years grow
by the AOV YoY column, ± 2.5 points); repeat rate and frequency hold in every
year:

===================== ======= ============ ============ ======= =========
industry              AOV ($) repeat rate  frequency    AOV YoY merchants
===================== ======= ============ ============ ======= =========
apparel & fashion     80      26% ± 3 pp   1.55 ± 0.08  +4%     28%
jewelry & accessories 105     25% ± 3 pp   1.50 ± 0.08  +5%     10%
home & garden         100     26% ± 3 pp   1.52 ± 0.08  +3%     15%
beauty & cosmetics    65      31% ± 3 pp   1.62 ± 0.08  +4%     19%
health & supplements  70      34% ± 3 pp   1.68 ± 0.08  +3%     13%
food & beverage       60      33% ± 3 pp   1.66 ± 0.08  +6%     15%
===================== ======= ============ ============ ======= =========

The exact bands are ``TARGETS`` below. Across industries: AOV $60-110 (± 12%
per industry), repeat customer rate 25-35% (customers with ≥ 2 orders in the
year), purchase frequency 1.5-1.7 orders per customer per year; 6-20% of
orders use a reward; programme participants (customers who used a reward in
the period) repeat at 1.5-3.5x the rate of the others, order 1.3-3x as often
and spend 5-35% more per order (``PROGRAMME_BANDS``). Year over year, AOV
rises by a few percent (the YoY column), new customers grow by 5-15%, and the
repeat rate moves by a point or two. The window starts the network's history:
in the first year every customer is new, so retention and YoY start in the
second year.

Merchant sizes
--------------
Sizes span the five SPEC §6 buckets (orders per month) with a heavy tail:
merchants are split across the buckets in the shares of ``SIZE_SHARES``
(at least one merchant per bucket), sizes log-uniform within a bucket.
Then every size is scaled by one factor so that the orders add up to exactly
``rows``. ``merchants_count`` defaults to the largest count whose unscaled
sizes fit in ``rows``, so the factor is close to 1 and every bucket is
covered from about 1 million rows (for two years). Below that the default is
six merchants, one per industry, and the factor shrinks them all: the 30k+
bucket empties first. More merchants than the default for the same rows
likewise makes every merchant smaller; fewer makes them larger.
"""
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import progress as _progress
from ._types import PathLike
from .outputs import atomic_output, check_output_path, check_stop
from .errors import ResourceError, reporting_resource_errors

DAY_US = 86_400_000_000
SECOND_US = 1_000_000
BATCH_ROWS = 1 << 20   # rows per record batch in the file (a constant: part of the byte-identical output)
BLOCK_ROWS = 1 << 19   # rows simulated at once within a merchant (bounds memory)
ARRIVAL_BINS = 1 << 16  # resolution of the arrival-day lookup table

# The canonical layout (SPEC §2) that generate and prepare write.
ORDERS_SCHEMA = pa.schema([
    ("merchant_id", pa.int32()),
    ("customer_id", pa.int64()),
    ("order_ts", pa.timestamp("us", tz="UTC")),
    ("amount", pa.int64()),
    ("reward", pa.bool_()),
])

SIZE_EDGES = (30, 300, 3_000, 30_000)
SIZE_LABELS = ("<30", "30-300", "300-3k", "3k-30k", "30k+")
# Orders per month spanned by each bucket (the open ends closed at 1 and 150k).
SIZE_RANGES = ((1, 30), (30, 300), (300, 3_000), (3_000, 30_000), (30_000, 150_000))
# Share of merchants in each bucket: most stores are small, a few carry most orders.
SIZE_SHARES = (0.52, 0.30, 0.13, 0.045, 0.005)
# Loyalty plan price per month (major units) by size bucket; small stores are often on a free plan.
PLAN_FEES = ((0, 0, 49), (49, 49, 199), (199, 199, 599), (599, 999), (1_499, 2_999))

COUNTRIES = ("US", "GB", "CA", "AU", "DE", "FR", "NL", "IE", "NZ", "SE", "ES", "IT", "DK", "BE", "CH", "SG",
             "ZA", "MX", "BR", "IN", "JP", "NO", "AT", "PL")
COUNTRY_WEIGHTS = (42, 12, 9, 8, 5, 4, 3, 2, 2, 1.5, 1.5, 1.5, 1, 1, 1, 1, 1, 1, 0.8, 0.8, 0.6, 0.5, 0.5, 0.5)
# Share of orders by calendar month: the November-December peak of online retail.
MONTH_WEIGHTS = (0.85, 0.80, 0.90, 0.90, 0.95, 0.90, 0.95, 0.95, 0.95, 1.00, 1.35, 1.40)


@dataclass(frozen=True)
class Target:
    """What ``compute(by=["industry"])`` should show for an industry in the first year."""

    aov: float            # average order value, major units
    repeat_rate: float    # repeat_customer_rate
    frequency: float      # purchase_frequency
    aov_growth: float     # aov_yoy / 100 in the following year


@dataclass(frozen=True)
class Behaviour:
    """Model parameters of an industry, tuned so that its metrics land on its ``Target``."""

    merchant_share: float
    p_second: float        # a customer's chance of a second order (non-participants)
    p_more: float          # chance of each further order once a customer has repeated
    gap_days: float        # mean days between a customer's orders
    member_share: float    # share of customers in the loyalty programme
    customer_growth: float  # yearly growth of new customers
    repeat_drift: float    # yearly multiplier on p_second


INDUSTRIES = (
    "apparel & fashion", "jewelry & accessories", "home & garden",
    "beauty & cosmetics", "health & supplements", "food & beverage",
)

TARGETS = {
    "apparel & fashion": Target(aov=80, repeat_rate=0.26, frequency=1.55, aov_growth=0.04),
    "jewelry & accessories": Target(aov=105, repeat_rate=0.25, frequency=1.50, aov_growth=0.05),
    "home & garden": Target(aov=100, repeat_rate=0.26, frequency=1.52, aov_growth=0.03),
    "beauty & cosmetics": Target(aov=65, repeat_rate=0.31, frequency=1.62, aov_growth=0.04),
    "health & supplements": Target(aov=70, repeat_rate=0.34, frequency=1.68, aov_growth=0.03),
    "food & beverage": Target(aov=60, repeat_rate=0.33, frequency=1.66, aov_growth=0.06),
}
# How far a measured value may sit from its target (AOV relative, repeat rate absolute, frequency absolute).
TOLERANCE = {"aov": 0.12, "repeat_rate": 0.03, "frequency": 0.08}
# Network-wide bands of the programme metrics (SPEC §5), checked in every year.
PROGRAMME_BANDS = {
    "reward_order_share": (0.06, 0.20),
    "member_repeat_lift": (1.5, 3.5),
    "member_frequency_lift": (1.3, 3.0),
    "member_aov_lift": (1.05, 1.35),
}

BEHAVIOUR = {
    "apparel & fashion": Behaviour(0.28, 0.290, 0.59, 60, 0.22, 0.10, 0.92),
    "jewelry & accessories": Behaviour(0.10, 0.285, 0.59, 65, 0.20, 0.08, 0.92),
    "home & garden": Behaviour(0.15, 0.290, 0.58, 65, 0.20, 0.06, 0.92),
    "beauty & cosmetics": Behaviour(0.19, 0.340, 0.57, 60, 0.24, 0.12, 0.92),
    "health & supplements": Behaviour(0.13, 0.375, 0.57, 58, 0.26, 0.10, 0.92),
    "food & beverage": Behaviour(0.15, 0.360, 0.60, 55, 0.24, 0.12, 0.92),
}
# Participants (loyalty-programme members) against everyone else.
MEMBER_REPEAT = 1.4      # × p_second
MEMBER_MORE = 1.15       # × p_more
MEMBER_GAP = 0.8         # × gap_days
MEMBER_SPEND = 1.18      # × order amount
REWARD_FIRST = 0.25      # chance a member's first order uses a reward (a welcome code)
REWARD_LATER = 0.50      # chance a member's later order does (points to redeem)
ORDER_SPREAD = 0.55      # sigma of log order amount around a customer's level
CUSTOMER_SPREAD = 0.35   # sigma of log customer spending level
MERCHANT_SPREAD = 0.05   # sigma of a merchant's log AOV / log repeat propensity around its industry


@dataclass(frozen=True)
class GenerateResult:
    """What ``generate()`` wrote."""

    orders_path: str
    merchants_path: str
    rows: int
    merchants: int
    seconds: float

    @property
    def rows_per_second(self):
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


def parse_rows(text):
    """``"1e9"``, ``"10_000_000"``, ``"2500000"`` → int; ValueError unless a whole number ≥ 1."""
    text = str(text).strip().replace("_", "").replace(",", "")
    try:
        value = int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"rows must be a number such as 1e6 or 2500000; got {text!r}") from None
        if not math.isfinite(number) or number != int(number):
            raise ValueError(f"rows must be a whole number; got {text!r}")
        value = int(number)
    if value < 1:
        raise ValueError(f"rows must be at least 1; got {value}")
    return value


@reporting_resource_errors
def generate(path: PathLike, merchants_path: PathLike | None = None, *, rows: int, seed: int = 0,
             merchants_count: int | None = None, years: tuple[int, int] = (2022, 2023),
             progress: bool = False) -> GenerateResult:
    """Write a synthetic, calibrated merchant network: orders to ``path``, merchants beside it.

    Parameters
    ----------
    path : str or path
        The orders file: uncompressed Arrow IPC, sorted by (merchant_id, customer_id, order_ts);
        ``merchant_id`` int32, ``customer_id`` int64, ``order_ts`` timestamp[us, UTC], ``amount``
        int64 cents, ``reward`` bool.
    merchants_path : str or path, optional
        The merchants table (``merchant_id``, ``industry``, ``country``, ``annual_fee``): Parquet,
        or CSV if it ends in ``.csv``. Default: ``<path stem>_merchants.parquet`` beside ``path``.
    rows : int
        Exactly how many order rows to write.
    seed : int
        The same seed (with the same other arguments) writes byte-identical files.
    merchants_count : int, optional
        How many merchants; by default as many as ``rows`` holds at real sizes (see the module doc).
    years : (int, int)
        First and last calendar year of orders, inclusive.
    progress : bool
        Show a progress bar with rows/s on stderr (when it is a terminal).

    Returns
    -------
    GenerateResult
        Paths, rows, merchants and the seconds it took (``rows_per_second``).

    The calibration targets, as a table, are in this module's docstring and ``TARGETS``.
    """
    started = time.perf_counter()
    rows = parse_rows(rows)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    first_year, last_year = _check_years(years)
    months = 12 * (last_year - first_year + 1)
    _check_resources(path, rows, merchants_count, months)
    if merchants_count is None:
        merchants_count = default_merchants_count(rows, months)
    elif isinstance(merchants_count, bool) or not isinstance(merchants_count, (int, np.integer)) \
            or merchants_count < 1:
        raise ValueError(f"merchants_count must be a positive integer; got {merchants_count!r}")
    if merchants_count > rows:
        raise ValueError(f"{rows} rows cannot hold {merchants_count} merchants of at least one order each")
    path = Path(path)
    merchants_path = Path(merchants_path) if merchants_path is not None else \
        path.with_name(path.stem + "_merchants.parquet")
    # Two outputs: neither may be the other (also through a link) nor a directory.
    check_output_path(path, what="orders file")
    check_output_path(merchants_path, [path], what="merchants table")

    root = np.random.SeedSequence(seed)
    plan = _plan_merchants(np.random.default_rng(root.spawn(1)[0]), merchants_count, rows, months)
    window = _Window(first_year, last_year)

    # Both written to private temporary files and renamed into place only when both are
    # complete (orders, then merchants): a failure or a signal leaves earlier files as they were.
    write_merchants = _merchants_writer(merchants_path)  # no import runs while a temporary file exists
    with atomic_output(merchants_path, [path], what="merchants table") as merchants_tmp, \
            atomic_output(path, [merchants_path], what="orders file") as tmp:
        _write_merchants(plan, write_merchants, merchants_tmp)
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, ORDERS_SCHEMA) as writer, \
                _progress.bar(rows, progress, desc="generate") as bar:
            out = _BatchWriter(writer, BATCH_ROWS)
            # One random stream per merchant, keyed by its id: merchants never share draws.
            for index in range(merchants_count):
                check_stop()  # SIGINT/SIGTERM whose exception was lost (see outputs.py)
                rng = np.random.default_rng(np.random.SeedSequence([seed, 1, index]))
                for block in _merchant_orders(rng, plan, index, window):
                    out.append(block)
                    bar.update(len(block[0]))
            out.flush()
    return GenerateResult(str(path), str(merchants_path), rows, merchants_count, time.perf_counter() - started)


# Bytes per order row in the file: int32 + int64 × 3 + one bit (batch metadata is < 0.1%).
ORDER_BYTES = 4 + 8 + 8 + 8 + 1 / 8
# Peak bytes per merchant while planning (the plan's arrays and temporaries: ≈ 125 measured at 1e10 rows).
PLAN_BYTES_PER_MERCHANT = 400
MAX_MERCHANTS = np.iinfo(np.int32).max   # merchant_id is int32


def _mean_monthly_orders():
    """Orders per month of the average merchant before scaling: log-uniform within each size bucket."""
    return sum(share * (hi - lo) / math.log(hi / lo) for share, (lo, hi) in zip(SIZE_SHARES, SIZE_RANGES))


def _available_memory():
    """Bytes this process may still allocate: free memory, and what an address-space limit leaves."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/statm") as f:
                used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            available = min(available or soft, soft - used)
    except (ImportError, OSError, ValueError, IndexError):
        pass
    return available


def _check_resources(path, rows, merchants_count, months):
    """Fail fast, before planning, when the plan cannot fit in memory or the file on disk."""
    merchants = merchants_count if merchants_count is not None else \
        math.ceil(rows / (_mean_monthly_orders() * months))
    if merchants > MAX_MERCHANTS:
        raise ValueError(f"{merchants:,} merchants do not fit merchant_id (int32, at most {MAX_MERCHANTS:,}); "
                         "pass fewer rows or a smaller merchants_count")
    need, available = merchants * PLAN_BYTES_PER_MERCHANT, _available_memory()
    if available is not None and need > available:
        raise ResourceError(
            str(path), None,
            f"planning {merchants:,} merchants for {rows:,} rows needs about {need / 2**30:.1f} GiB of memory; "
            f"{max(available, 0) / 2**30:.1f} GiB are available (pass fewer rows or a smaller merchants_count)",
        )
    try:
        free = shutil.disk_usage(Path(path).resolve().parent).free
    except OSError:
        return   # no such directory: writing reports it
    need = rows * ORDER_BYTES
    if need > free:
        raise ResourceError(
            str(path), None,
            f"{rows:,} rows need about {need / 2**30:,.1f} GiB on disk; {free / 2**30:,.1f} GiB are free there",
        )


def _check_years(years):
    try:
        first, last = (int(y) for y in years)
    except (TypeError, ValueError):
        raise ValueError(f"years must be (first, last), e.g. (2022, 2023); got {years!r}") from None
    if not 1970 <= first <= last <= 2261:
        raise ValueError(f"years must satisfy 1970 <= first <= last <= 2261; got {first}-{last}")
    return first, last


# --- merchants --------------------------------------------------------------

def _bucket_counts(n):
    """Merchants per size bucket: largest remainder of n × SIZE_SHARES, at least one each when n ≥ 5."""
    shares = np.array(SIZE_SHARES)
    counts = np.floor(n * shares).astype(np.int64)
    if n >= len(shares):
        counts = np.maximum(counts, 1)
    while counts.sum() > n:  # the minimum of one took merchants from the largest buckets' remainders
        counts[np.argmax(counts)] -= 1
    remainder = n * shares - counts
    for i in np.argsort(-remainder, kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return counts


def _bucket_sizes(n):
    """Orders per month of n merchants, unscaled: log-uniform quantiles within each bucket, small first."""
    sizes = []
    for (lo, hi), count in zip(SIZE_RANGES, _bucket_counts(n)):
        q = (np.arange(count) + 0.5) / max(count, 1)
        sizes.append(lo * (hi / lo) ** q)
    return np.concatenate(sizes), np.repeat(np.arange(len(SIZE_RANGES)), _bucket_counts(n))


def default_merchants_count(rows, months=24):
    """The largest merchant count whose unscaled sizes fit in ``rows`` (at least one per industry)."""
    def need(n):
        return _bucket_sizes(n)[0].sum() * months

    lo, hi = len(INDUSTRIES), len(INDUSTRIES)
    if need(lo) > rows:
        return min(lo, rows)
    while need(hi * 2) <= rows:
        hi *= 2
    hi *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if need(mid) <= rows else (lo, mid)
    return lo


@dataclass(frozen=True)
class _Plan:
    merchant_id: np.ndarray   # int32, 1..n
    industry: np.ndarray      # index into INDUSTRIES
    country: np.ndarray       # index into COUNTRIES
    annual_fee: np.ndarray    # int64 cents
    rows: np.ndarray          # int64 orders to generate, summing to the requested rows
    aov_level: np.ndarray     # merchant's multiplier on its industry's AOV
    repeat_level: np.ndarray  # merchant's multiplier on its industry's p_second
    growth: np.ndarray        # yearly growth of the merchant's new customers


def _plan_merchants(rng, n, rows, months):
    sizes, bucket = _bucket_sizes(n)
    # Exactly `rows` orders: floor of the scaled sizes, the remainder to the largest fractions, ≥ 1 each.
    want = sizes * months * (rows / (sizes.sum() * months))
    counts = np.maximum(np.floor(want).astype(np.int64), 1)
    while counts.sum() > rows:
        counts[np.argmax(counts)] -= 1
    for i in np.argsort(-(want - np.floor(want)), kind="stable")[: rows - counts.sum()]:
        counts[i] += 1
    counts[np.argmax(counts)] += rows - counts.sum()  # more than n × 1 short (tiny rows): the largest absorbs it
    # Sizes are dealt to merchant ids at random, so ids say nothing about size or industry.
    order = rng.permutation(n)
    counts, bucket = counts[order], bucket[order]
    shares = np.array([BEHAVIOUR[name].merchant_share for name in INDUSTRIES])
    industry = rng.choice(len(INDUSTRIES), n, p=shares / shares.sum())
    if n >= len(INDUSTRIES):  # every industry present: the first six merchants take one each
        industry[: len(INDUSTRIES)] = rng.permutation(len(INDUSTRIES))
    weights = np.array(COUNTRY_WEIGHTS)
    country = rng.choice(len(COUNTRIES), n, p=weights / weights.sum())
    fee = np.array([rng.choice(PLAN_FEES[b]) for b in bucket], dtype=np.int64) * 100 * 12
    growth = np.array([BEHAVIOUR[INDUSTRIES[i]].customer_growth for i in industry]) + rng.normal(0, 0.05, n)
    return _Plan(
        merchant_id=np.arange(1, n + 1, dtype=np.int32),
        industry=industry,
        country=country,
        annual_fee=fee,
        rows=counts,
        aov_level=np.exp(rng.normal(0, MERCHANT_SPREAD, n)),
        repeat_level=np.exp(rng.normal(0, MERCHANT_SPREAD, n)),
        growth=growth,
    )


def merchants_table(plan):
    return pa.table({
        "merchant_id": pa.array(plan.merchant_id, pa.int32()),
        "industry": pa.array([INDUSTRIES[i] for i in plan.industry], pa.string()),
        "country": pa.array([COUNTRIES[i] for i in plan.country], pa.string()),
        "annual_fee": pa.array(plan.annual_fee, pa.int64()),
    })


def _merchants_writer(path):
    """The function writing the merchants table in the format of ``path`` (imported now, not while writing)."""
    if path.suffix.lower() == ".csv":
        import pyarrow.csv as pacsv

        return pacsv.write_csv
    import pyarrow.parquet as pq

    return pq.write_table


def _write_merchants(plan, write, tmp):
    """The merchants table to ``tmp`` (a temporary file of ``atomic_output``) with ``write``."""
    write(merchants_table(plan), str(tmp))


# --- orders -----------------------------------------------------------------

class _Window:
    """The calendar window of orders, with per-day weights for arrivals (seasonality)."""

    def __init__(self, first_year, last_year):
        days = np.arange(np.datetime64(f"{first_year}-01-01"), np.datetime64(f"{last_year + 1}-01-01"))
        self.first_year = first_year
        self.start = days[0].astype("datetime64[us]").astype(np.int64)
        self.end = self.start + len(days) * DAY_US
        month = days.astype("datetime64[M]").astype(np.int64) % 12
        self.day_start = days.astype("datetime64[us]").astype(np.int64)
        self.day_weight = np.array(MONTH_WEIGHTS)[month]
        self.day_years = (days - days[0]).astype(np.int64) / 365.25
        # First day of each year of the window, in µs, for per-year drift of amounts.
        self.year_start = np.array(
            [np.datetime64(f"{y}-01-01", "us").astype(np.int64) for y in range(first_year, last_year + 2)]
        )
        self._tables = {}

    def arrival_days(self, growth):
        """Day index of each of ARRIVAL_BINS equal-probability bins of the arrival density.

        A table lookup instead of a search per customer (searching 730 days for
        a random number costs more than all the other draws of a customer).
        Growth is rounded to 0.5% so that merchants share tables.
        """
        key = round(float(growth) * 200)
        table = self._tables.get(key)
        if table is None:
            weight = self.day_weight * (1 + key / 200) ** self.day_years
            cdf = np.cumsum(weight)
            bins = (np.arange(ARRIVAL_BINS) + 0.5) / ARRIVAL_BINS
            table = np.searchsorted(cdf / cdf[-1], bins, side="right").astype(np.int32)
            self._tables[key] = table
        return table


def _merchant_orders(rng, plan, index, window):
    """Yield blocks ``(merchant_id, customer_id, order_ts, amount, reward)`` of one merchant, in order."""
    industry = INDUSTRIES[plan.industry[index]]
    behaviour, target = BEHAVIOUR[industry], TARGETS[industry]
    remaining = int(plan.rows[index])
    arrival_days = window.arrival_days(plan.growth[index])
    # Amount scale: the industry AOV, corrected for what participants add (they spend more
    # and order more often), so the merchant's AOV lands near target.aov × aov_level.
    member_orders = behaviour.member_share * 1.3  # participants' rough share of orders, per member share
    spend = target.aov * 100 * plan.aov_level[index] / (1 + member_orders * (MEMBER_SPEND - 1))
    year_factor = (1 + target.aov_growth) ** np.arange(len(window.year_start))
    p_second = behaviour.p_second * plan.repeat_level[index]
    next_customer = int(rng.integers(1_000, 1_000_000))
    orders_per_customer = 1.6  # updated from what each block yields
    merchant_id = plan.merchant_id[index]
    while remaining > 0:
        n = int(min(remaining, BLOCK_ROWS) / orders_per_customer) + 16
        block = _customer_block(rng, n, window, arrival_days, behaviour, p_second, spend, year_factor)
        customer, ts, amount, reward = block
        orders_per_customer = max(1.0, len(ts) / n)
        ids = next_customer + np.cumsum(rng.integers(1, 8, n, dtype=np.int64))
        next_customer = int(ids[-1])
        take = min(remaining, len(ts))
        remaining -= take
        yield (np.full(take, merchant_id, np.int32), ids[customer[:take]], ts[:take], amount[:take],
               reward[:take])


def _customer_block(rng, n, window, arrival_days, behaviour, p_second, spend, year_factor):
    """Orders of n new store-customers: (customer index, order_ts µs, amount cents, reward), sorted."""
    member = rng.random(n) < behaviour.member_share
    day = arrival_days[rng.integers(0, ARRIVAL_BINS, n)]
    first_ts = window.day_start[day] + rng.integers(0, DAY_US, n)
    # Repeat propensity drifts with the year the customer arrived in.
    arrival_year = (day / 365.25).astype(np.int64)
    p2 = np.where(member, np.minimum(0.95, p_second * MEMBER_REPEAT), p_second) * \
        behaviour.repeat_drift ** arrival_year
    p_more = np.where(member, min(0.95, behaviour.p_more * MEMBER_MORE), behaviour.p_more)
    repeats = rng.random(n) < p2
    # Orders after the second: geometric with continuation p_more, drawn as floor(E / -ln p_more)
    # (several times cheaper than Generator.geometric).
    n_orders = 1 + repeats * (1 + (rng.standard_exponential(n) / -np.log(p_more)).astype(np.int64))
    # Each customer's own mean gap: gamma(2) around the industry's, as a sum of two exponentials.
    own_gap = rng.standard_exponential((2, n)).sum(axis=0) / 2
    gap_s = behaviour.gap_days * 86_400 * np.where(member, MEMBER_GAP, 1.0) * own_gap
    level = spend * np.exp(rng.normal(-CUSTOMER_SPREAD ** 2 / 2, CUSTOMER_SPREAD, n)) * \
        np.where(member, MEMBER_SPEND, 1.0)

    customer = np.repeat(np.arange(n), n_orders)
    total = len(customer)
    first = np.cumsum(n_orders) - n_orders
    # Gaps in whole seconds: their running sum over a block stays far inside int64.
    gaps = (rng.standard_exponential(total, dtype=np.float32) * gap_s[customer]).astype(np.int64)
    gaps[first] = 0
    since_first = np.cumsum(gaps)
    since_first -= np.repeat(since_first[first], n_orders)
    ts = first_ts[customer] + since_first * SECOND_US
    keep = ts < window.end  # orders after the window are not (yet) placed
    is_first = np.zeros(total, bool)
    is_first[first] = True
    customer, ts, is_first = customer[keep], ts[keep], is_first[keep]
    m = len(ts)

    amount = level[customer] * _year_factor(ts, window.year_start, year_factor)
    # float32 noise: half the cost of float64 draws, and far finer than a cent.
    amount *= np.exp(rng.standard_normal(m, dtype=np.float32) * np.float32(ORDER_SPREAD)
                     - np.float32(ORDER_SPREAD ** 2 / 2))
    amount = np.maximum(np.rint(amount), 1).astype(np.int64)
    reward = member[customer] & (rng.random(m, dtype=np.float32) < np.where(is_first, REWARD_FIRST, REWARD_LATER))
    return customer, ts, amount, reward


def _year_factor(ts, year_start, year_factor):
    """year_factor of each order's calendar year (a few comparisons beat a search per row)."""
    if len(year_start) > 8:
        return year_factor[np.searchsorted(year_start, ts, side="right") - 1]
    factor = np.full(len(ts), year_factor[0])
    for start, value in zip(year_start[1:-1], year_factor[1:]):
        factor[ts >= start] = value
    return factor


class _BatchWriter:
    """Writes record batches of exactly ``batch_rows`` rows (the last one shorter) from blocks of any size.

    Whole batches inside a block are written straight from its arrays; only
    the rows that do not fill a batch yet are kept (copied, so the block can go).
    """

    def __init__(self, writer, batch_rows):
        self.writer, self.batch_rows = writer, batch_rows
        self.pending, self.rows = [], 0

    def append(self, block):
        n, offset = len(block[0]), 0
        if self.rows:
            need = self.batch_rows - self.rows
            if n < need:
                self._keep(block)
                return
            parts = self.pending + [tuple(c[:need] for c in block)]
            self._write([np.concatenate([p[i] for p in parts]) for i in range(5)])
            self.pending, self.rows, offset = [], 0, need
        while n - offset >= self.batch_rows:
            self._write([c[offset: offset + self.batch_rows] for c in block])
            offset += self.batch_rows
        if offset < n:
            self._keep(tuple(c[offset:] for c in block))

    def _keep(self, block):
        self.pending.append(tuple(c.copy() for c in block))
        self.rows += len(block[0])

    def flush(self):
        if self.rows:
            self._write([np.concatenate([p[i] for p in self.pending]) for i in range(5)])
            self.pending, self.rows = [], 0

    def _write(self, columns):
        self.writer.write_batch(pa.record_batch([
            pa.array(columns[0], pa.int32()),
            pa.array(columns[1], pa.int64()),
            pa.array(columns[2], pa.timestamp("us", tz="UTC")),
            pa.array(columns[3], pa.int64()),
            pa.array(columns[4], pa.bool_()),
        ], schema=ORDERS_SCHEMA))
