"""A small, deterministic sample network for trying the library (``loyaltymetrics demo``).

Not calibrated to industry figures: just plausible enough that every metric
has something to show — six industries, merchants from under 30 to a few
thousand orders a month, repeat buyers, reward orders, 2022 and 2023.
"""
import numpy as np
import pyarrow as pa

INDUSTRIES = (
    "apparel & fashion", "jewelry & accessories", "home & garden",
    "beauty & cosmetics", "health & supplements", "food & beverage",
)
COUNTRIES = ("US", "GB", "DE", "AU", "CA", "FR")
START, END = np.datetime64("2022-01-01", "us"), np.datetime64("2024-01-01", "us")


def make_sample(n_merchants=60, seed=0):
    """Return ``(orders, merchants)`` as Arrow tables in the canonical layout, sorted."""
    rng = np.random.default_rng(seed)
    merchant_ids = np.arange(1, n_merchants + 1, dtype=np.int64)
    # Heavy-tailed merchant sizes: customers over the two years.
    customers_per_merchant = np.maximum(5, rng.lognormal(6.0, 1.6, n_merchants)).astype(np.int64)
    merchant_of_customer = np.repeat(merchant_ids, customers_per_merchant)
    n_customers = len(merchant_of_customer)
    customer_ids = rng.integers(1, 2**40, n_customers)
    member = rng.random(n_customers) < 0.25           # loyalty-program participants
    orders_per_customer = 1 + rng.geometric(np.where(member, 0.45, 0.7)) - 1
    rows = np.repeat(np.arange(n_customers), orders_per_customer)
    span = (END - START).astype(np.int64)
    ts = START.astype(np.int64) + rng.integers(0, span, len(rows))
    amount = np.round(rng.lognormal(np.log(7000), 0.6, len(rows)) * np.where(member[rows], 1.15, 1.0)).astype(np.int64)
    reward = member[rows] & (rng.random(len(rows)) < 0.4)
    order = np.lexsort((ts, customer_ids[rows], merchant_of_customer[rows]))
    orders = pa.table({
        "merchant_id": pa.array(merchant_of_customer[rows][order], pa.int64()),
        "customer_id": pa.array(customer_ids[rows][order], pa.int64()),
        "order_ts": pa.array(ts[order], pa.timestamp("us", tz="UTC")),
        "amount": pa.array(amount[order], pa.int64()),
        "reward": pa.array(reward[order], pa.bool_()),
    })
    merchants = pa.table({
        "merchant_id": pa.array(merchant_ids, pa.int64()),
        "industry": [INDUSTRIES[i % len(INDUSTRIES)] for i in range(n_merchants)],
        "country": [COUNTRIES[i] for i in rng.integers(0, len(COUNTRIES), n_merchants)],
        "annual_fee": pa.array(rng.choice([0, 29_00, 99_00, 299_00], n_merchants) * 12, pa.int64()),
    })
    return orders, merchants
