"""Predictive customer lifetime value (SPEC §11): BG/NBD and Gamma-Gamma per group, as lifetimes fits them.

The models
----------
- **BG/NBD** (Fader, Hardie and Lee 2005, "Counting your customers the easy
  way"): while alive, a customer buys as a Poisson process of rate λ
  (Gamma(r, α) across customers); after each purchase it drops out with
  probability p (Beta(a, b) across customers). Its likelihood depends on a
  customer only through ``(frequency, recency, T)``, so it is summed here
  over the *distinct* triples with their counts: a fit over a billion
  orders costs what its distinct summaries cost.
- **Gamma-Gamma** (Fader, Hardie and Lee 2005, "RFM and CLV: using
  iso-value curves"; Hardie's note 025): the spend per order of a customer
  is Gamma(p, ν) with ν ~ Gamma(q, γ) across customers (lifetimes calls γ
  ``v``), independent of its purchase process. It is fitted on the repeat
  customers (``frequency > 0``) whose ``monetary_value`` is positive, over
  distinct ``(frequency, monetary_value)`` pairs with their counts.

The fits are lifetimes' (0.11.3) ``BetaGeoFitter`` and ``GammaGammaFitter``:
the same objective (the mean negative log-likelihood over customers plus
``penalizer_coef × Σ params²``), in the same log-parameters, from the same
start (0.1 each), with the same optimizer (``scipy.optimize.minimize``'s
default, BFGS, ``tol=1e-7``) and exact gradients (lifetimes takes them from
autograd; here they are written out with ``scipy.special.digamma``). As in
lifetimes, BG/NBD times are scaled by ``1 / max(T)`` for the fit and ``α``
scaled back. The predictions are lifetimes' formulas, operation for
operation (``conditional_expected_number_of_purchases_up_to_time``,
``conditional_probability_alive``, ``conditional_expected_average_profit``,
``customer_lifetime_value``).

The driver
----------
From orders, one pass through the ``rfm`` kernel (SPEC §9) collects the
distinct summaries per group; the groups are fitted; the predictions are a
second pass through the kernel, streamed as Arrow record batches; the
BG/NBD predictions are computed once per distinct summary of the fit pass
and looked up per row. From a ready RFM table the same
happens over the table's batches. A group whose fit fails (too few
customers, no repeat customer, no convergence, a degenerate estimate) gets a
status and a message in the parameter table and null predictions; the
other groups are unaffected.
"""
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import parallel
from ._types import ColumnMap, DateLike, Engine, GroupKeys, Merchants, Orders, SizeEdges
from .errors import (CorruptInputError, InputChangedError, InputError, MissingDependencyError, NullValueError,
                     SchemaError)
from .finalize import DEFAULT_SIZE_EDGES, GROUP_KEYS, check_by, check_size_edges, size_buckets, size_labels
from .inputs import IN_MEMORY, _in_memory, order_batches, read_merchants, rereadable
from .rfm_summary import check_freq, last_order_day, observation_day, rfm


class _SciPy:
    """SciPy's functions, imported on first use: ``import loyaltymetrics`` does not load SciPy
    (the ``clv`` extra), which costs start-up time and whose BLAS threads hang under an
    address-space limit (tests/test_faults.py)."""

    def load(self):
        if "gammaln" not in self.__dict__:
            try:
                from scipy import optimize, special
            except ImportError:
                raise MissingDependencyError("lm.clv needs SciPy: pip install 'loyaltymetrics[clv]'") from None
            self.minimize = optimize.minimize
            for name in ("digamma", "expit", "gammaln", "hyp2f1"):
                setattr(self, name, getattr(special, name))

    def __getattr__(self, name):
        self.load()
        return self.__dict__[name]


sp = _SciPy()

BGNBD_PARAMS = ("r", "alpha", "a", "b")
GAMMA_GAMMA_PARAMS = ("p", "q", "v")
# lifetimes' customer_lifetime_value: freq units per month, and its monthly steps.
MONTH_FACTOR = {"D": 30, "W": 4.345, "M": 1.0}
DEFAULT_MIN_CUSTOMERS = 10
RFM_COLUMNS = ("frequency", "recency", "T", "monetary_value")
PREDICTION_COLUMNS = ("expected_orders", "probability_alive", "expected_spend", "clv")
OK = "ok"
# A shape parameter (r, a, b; p, q) outside this range is the optimizer walking to a boundary of the
# parameter space (a → 0: nobody drops out; a, b → ∞: everybody drops out alike; p → ∞: no spend
# variation): the likelihood has no finite maximum, and where BFGS stops is rounding noise.
SHAPE_RANGE = (1e-5, 1e5)
CODE_LIMIT = 2**62      # summaries are matched as one int64 code below this many combinations


# --- BG/NBD ------------------------------------------------------------------------

def _bgnbd_terms(params, x, tx, T):
    """Per-row log-likelihood terms of BG/NBD (lifetimes' A_1 … A_4) and the mixing weights."""
    r, alpha, a, b = params
    a1 = sp.gammaln(r + x) - sp.gammaln(r) + r * np.log(alpha)
    a2 = sp.gammaln(a + b) + sp.gammaln(b + x) - sp.gammaln(b) - sp.gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + T)
    a4 = np.log(a) - np.log(b + np.maximum(x, 1) - 1) - (r + x) * np.log(tx + alpha)
    top = np.maximum(a3, a4)
    e3 = np.exp(a3 - top)
    e4 = np.exp(a4 - top) * (x > 0)
    mix = np.log(e3 + e4) + top
    return a1 + a2 + mix, e3 / (e3 + e4), e4 / (e3 + e4)


def _weighted_sum(weights, values):
    """Σ weights × values, as lifetimes sums it (NumPy's pairwise sum; not BLAS, which threads contend for)."""
    return np.sum(weights * values)


def bgnbd_log_likelihood(params, x, tx, T, weights):
    """Σ weights × log-likelihood of BG/NBD at ``params`` = (r, α, a, b), in the data's time units."""
    ll, _, _ = _bgnbd_terms(np.asarray(params, np.float64), x, tx, T)
    return float(np.sum(weights * ll))


def bgnbd_objective(log_params, x, tx, T, weights, penalizer_coef):
    """lifetimes' ``BetaGeoFitter._negative_log_likelihood`` and its gradient in the log-parameters."""
    params = np.exp(log_params)
    r, alpha, a, b = params
    ll, w3, w4 = _bgnbd_terms(params, x, tx, T)
    total = weights.sum()
    d_r = sp.digamma(r + x) - sp.digamma(r) + np.log(alpha) - w3 * np.log(alpha + T) - w4 * np.log(tx + alpha)
    d_alpha = r / alpha - w3 * (r + x) / (alpha + T) - w4 * (r + x) / (tx + alpha)
    d_a = sp.digamma(a + b) - sp.digamma(a + b + x) + w4 / a
    d_b = sp.digamma(a + b) + sp.digamma(b + x) - sp.digamma(b) - sp.digamma(a + b + x) - w4 / (b + np.maximum(x, 1) - 1)
    grad = np.array([_weighted_sum(weights, d) for d in (d_r, d_alpha, d_a, d_b)])
    value = -_weighted_sum(weights, ll) / total + penalizer_coef * np.sum(params ** 2)
    return value, -grad * params / total + 2 * penalizer_coef * params ** 2


@dataclass
class Fit:
    """One model's fit in one group."""

    status: str                 # "ok", or why there are no usable parameters
    message: str
    params: tuple = None        # the fitted parameters, or None
    log_likelihood: float = None
    converged: bool = False
    iterations: int = 0


def _boundary(names, params, shapes):
    """The message for shape parameters outside ``SHAPE_RANGE``, or None."""
    lo, hi = SHAPE_RANGE
    out = [f"{n} = {params[i]:.3g}" for i, n in enumerate(names) if n in shapes and not lo <= params[i] <= hi]
    if not out:
        return None
    return (f"{', '.join(out)}: the likelihood grows toward a boundary of the parameter space (no finite "
            f"maximum); the model does not describe these customers, or try a penalizer")


def _minimize(objective, x0, args, tol):
    with np.errstate(all="ignore"):
        return sp.minimize(objective, x0=x0, args=args, jac=True, method=None, tol=tol)


def fit_bgnbd(x, tx, T, weights, penalizer_coef=0.0, min_customers=DEFAULT_MIN_CUSTOMERS, tol=1e-7):
    """Maximum-likelihood BG/NBD over distinct ``(x, tx, T)`` rows with ``weights`` customers each."""
    x, tx, T = (np.asarray(v, np.float64) for v in (x, tx, T))
    weights = np.asarray(weights, np.float64)
    customers = int(weights.sum())
    if customers < max(min_customers, 1):
        return Fit("too_few_customers", f"{customers} customers; the fit needs at least {max(min_customers, 1)}")
    if not np.any(x > 0):
        return Fit("no_repeat_customers", "no customer bought more than once: repeat purchasing cannot be estimated")
    scale = 1.0 / T.max() if T.max() > 0 else 1.0
    try:
        result = _minimize(bgnbd_objective, 0.1 * np.ones(4), (x, tx * scale, T * scale, weights, penalizer_coef), tol)
    except (ValueError, FloatingPointError, np.linalg.LinAlgError) as e:
        return Fit("error", f"the optimizer failed: {e}")
    params = np.exp(result.x)
    params[1] /= scale
    iterations = int(getattr(result, "nit", 0))
    if not result.success or not np.all(np.isfinite(params)) or not np.all(params > 0):
        return Fit("not_converged", f"BG/NBD fit did not converge: {result.message}; try a penalizer_coef > 0",
                   tuple(map(float, params)), None, False, iterations)
    with np.errstate(all="ignore"):
        ll = bgnbd_log_likelihood(params, x, tx, T, weights)
    boundary = _boundary(BGNBD_PARAMS, params, ("r", "a", "b"))
    if boundary:
        return Fit("boundary", boundary, tuple(map(float, params)), ll, True, iterations)
    return Fit(OK, str(result.message), tuple(map(float, params)), ll, True, iterations)


def expected_purchases(params, t, x, tx, T):
    """lifetimes' ``conditional_expected_number_of_purchases_up_to_time``: expected repeat orders in (T, T + t]."""
    r, alpha, a, b = params
    _a = r + x
    _b = b + x
    _c = a + b + x - 1
    _z = t / (alpha + T + t)
    with np.errstate(divide="ignore", invalid="ignore"):
        ln_hyp_term = np.log(sp.hyp2f1(_a, _b, _c, _z))
        ln_hyp_term_alt = np.log(sp.hyp2f1(_c - _a, _c - _b, _c, _z)) + (_c - _a - _b) * np.log(1 - _z)
        ln_hyp_term = np.where(np.isinf(ln_hyp_term), ln_hyp_term_alt, ln_hyp_term)
        first_term = (a + b + x - 1) / (a - 1)
        second_term = 1 - np.exp(ln_hyp_term + (r + x) * np.log((alpha + T) / (alpha + t + T)))
        numerator = first_term * second_term
        denominator = 1 + (x > 0) * (a / (b + x - 1)) * ((alpha + T) / (alpha + tx)) ** (r + x)
        return numerator / denominator


def probability_alive(params, x, tx, T):
    """lifetimes' ``conditional_probability_alive`` (1 for a customer without repeat orders)."""
    r, alpha, a, b = params
    with np.errstate(divide="ignore", invalid="ignore"):
        log_div = (r + x) * np.log((alpha + T) / (alpha + tx)) + np.log(a / (b + np.maximum(x, 1) - 1))
        return np.where(x == 0, 1.0, sp.expit(-log_div))


# --- Gamma-Gamma -----------------------------------------------------------------------

def _gamma_gamma_terms(params, x, m):
    p, q, v = params
    return (sp.gammaln(p * x + q) - sp.gammaln(p * x) - sp.gammaln(q) + q * np.log(v) + (p * x - 1) * np.log(m)
            + (p * x) * np.log(x) - (p * x + q) * np.log(x * m + v))


def gamma_gamma_log_likelihood(params, x, m, weights):
    """Σ weights × log-likelihood of Gamma-Gamma at ``params`` = (p, q, v)."""
    return float(np.sum(weights * _gamma_gamma_terms(np.asarray(params, np.float64), x, m)))


def gamma_gamma_objective(log_params, x, m, weights, penalizer_coef):
    """lifetimes' ``GammaGammaFitter._negative_log_likelihood`` and its gradient in the log-parameters."""
    params = np.exp(log_params)
    p, q, v = params
    ll = _gamma_gamma_terms(params, x, m)
    total = weights.sum()
    psi_pq = sp.digamma(p * x + q)
    log_xm_v = np.log(x * m + v)
    d_p = x * (psi_pq - sp.digamma(p * x) + np.log(m) + np.log(x) - log_xm_v)
    d_q = psi_pq - sp.digamma(q) + np.log(v) - log_xm_v
    d_v = q / v - (p * x + q) / (x * m + v)
    grad = np.array([_weighted_sum(weights, d) for d in (d_p, d_q, d_v)])
    value = -_weighted_sum(weights, ll) / total + penalizer_coef * np.sum(params ** 2)
    return value, -grad * params / total + 2 * penalizer_coef * params ** 2


def fit_gamma_gamma(x, m, weights, penalizer_coef=0.0, min_customers=DEFAULT_MIN_CUSTOMERS, tol=1e-7):
    """Maximum-likelihood Gamma-Gamma over distinct ``(x, m)`` rows (x > 0, m > 0) with ``weights`` customers each."""
    x, m = np.asarray(x, np.float64), np.asarray(m, np.float64)
    weights = np.asarray(weights, np.float64)
    customers = int(weights.sum())
    if customers == 0:
        return Fit("no_repeat_customers", "no repeat customer with a positive monetary_value: spend cannot be estimated")
    if customers < max(min_customers, 1):
        return Fit("too_few_customers",
                   f"{customers} repeat customers; the fit needs at least {max(min_customers, 1)}")
    try:
        result = _minimize(gamma_gamma_objective, 0.1 * np.ones(3), (x, m, weights, penalizer_coef), tol)
    except (ValueError, FloatingPointError, np.linalg.LinAlgError) as e:
        return Fit("error", f"the optimizer failed: {e}")
    params = np.exp(result.x)
    iterations = int(getattr(result, "nit", 0))
    if not result.success or not np.all(np.isfinite(params)) or not np.all(params > 0):
        return Fit("not_converged", f"Gamma-Gamma fit did not converge: {result.message}; try a penalizer_coef > 0",
                   tuple(map(float, params)), None, False, iterations)
    with np.errstate(all="ignore"):
        ll = gamma_gamma_log_likelihood(params, x, m, weights)
    boundary = _boundary(GAMMA_GAMMA_PARAMS, params, ("p", "q"))
    if boundary:
        return Fit("boundary", boundary, tuple(map(float, params)), ll, True, iterations)
    if params[1] <= 1:
        return Fit("q_not_above_1", f"q = {params[1]:.4g} ≤ 1: the population mean spend v·p/(q−1) is not finite "
                   "and positive, so expected spend is undefined", tuple(map(float, params)), ll, True, iterations)
    return Fit(OK, str(result.message), tuple(map(float, params)), ll, True, iterations)


def expected_average_profit(params, x, m):
    """lifetimes' ``conditional_expected_average_profit``: expected spend per future order."""
    p, q, v = params
    individual_weight = p * x / (p * x + q - 1)
    population_mean = v * p / (q - 1)
    return (1 - individual_weight) * population_mean + individual_weight * m


def monthly_expected_purchases(params, x, tx, T, horizon, freq):
    """Per month k = 1 … horizon, BG/NBD expected orders in month k, as lifetimes' ``customer_lifetime_value`` steps.

    Returns ``(steps, increments)``: ``steps`` the month ends in ``freq``
    units (``k × factor``), ``increments[k-1]`` the expected orders between
    ``steps[k-1] - factor`` and ``steps[k-1]``.
    """
    factor = MONTH_FACTOR[freq]
    steps = np.arange(1, horizon + 1) * factor
    increments = [expected_purchases(params, i, x, tx, T) - expected_purchases(params, i - factor, x, tx, T)
                  for i in steps]
    return steps, increments


def discounted_value(spend, steps, increments, discount_rate, freq):
    """lifetimes' ``_customer_lifetime_value`` sum: Σ_k spend × orders_k / (1 + discount_rate)^(month k)."""
    factor = MONTH_FACTOR[freq]
    total = np.zeros(np.shape(spend))
    for i, expected in zip(steps, increments):
        total += (spend * expected) / (1 + discount_rate) ** (i / factor)
    return total


# --- distinct summaries ------------------------------------------------------------------

class _Distinct:
    """Distinct rows of a few columns with the count of each, compacted as they accumulate."""

    def __init__(self, n_columns, compact_at=1 << 22):
        self.n_columns = n_columns
        self.parts = []
        self.pending = 0
        self.compact_at = compact_at
        self.reduced = None

    def add(self, columns, counts=None):
        n = len(columns[0])
        if n == 0:
            return
        counts = np.ones(n, np.int64) if counts is None else counts
        self.parts.append(_reduce([*columns, counts]))
        self.pending += len(self.parts[-1][0])
        if self.pending > self.compact_at:
            self._compact()

    def _compact(self):
        parts = self.parts if self.reduced is None else [self.reduced, *self.parts]
        if parts:
            self.reduced = _reduce([np.concatenate(c) for c in zip(*parts)])
        self.parts, self.pending = [], 0

    def result(self):
        self._compact()
        if self.reduced is None:
            return [np.empty(0, np.float64) for _ in range(self.n_columns)] + [np.empty(0, np.int64)]
        return self.reduced


def _reduce(columns):
    """Rows of ``columns[:-1]`` made distinct, sorted by the first column first; ``columns[-1]`` (counts) summed."""
    *keys, counts = columns
    order = np.lexsort(keys[::-1])
    keys = [k[order] for k in keys]
    counts = counts[order]
    new = np.ones(len(counts), bool)
    if len(counts):
        new[1:] = np.any([k[1:] != k[:-1] for k in keys], axis=0)
    starts = np.flatnonzero(new)
    return [k[starts] for k in keys] + [np.add.reduceat(counts, starts) if len(starts) else counts[:0]]


# --- groups --------------------------------------------------------------------------------

class _Groups:
    """Group keys (one tuple per group) ↔ group ids, and per row the group id of a batch."""

    def __init__(self, by, merchants, merchant_sizes=None, source=IN_MEMORY):
        self.by = by
        self.merchants = merchants
        self.merchant_sizes = merchant_sizes   # (sorted merchant ids, size labels) or None
        self.source = source
        self.ids = {}
        self.keys = []

    def key_columns(self, batch):
        """Per key of ``by``, the values of each row of ``batch`` (an rfm output or an RFM table batch)."""
        names = batch.schema.names
        values = []
        merchant_id = None
        for key in self.by:
            column = GROUP_KEYS[key]
            if column in names:
                values.append(_numpy(batch.column(names.index(column)), self.source, column))
                continue
            if key == "merchant" or "merchant_id" not in names:
                raise SchemaError(self.source, None, f"by={key!r} needs a {column!r} or 'merchant_id' column; "
                                  f"the table has {', '.join(names)}")
            if merchant_id is None:
                merchant_id = _numpy(batch.column(names.index("merchant_id")), self.source, "merchant_id")
                merchant_id = merchant_id.astype(np.int64)
            values.append(self._merchant_key(key, merchant_id))
        return values

    def merchant_key_values(self, merchant_id):
        """Per key of ``by``, the values of each of ``merchant_id`` (every key a merchant's attribute)."""
        return [self._merchant_key(key, merchant_id) for key in self.by]

    def _merchant_key(self, key, merchant_id):
        """The value of one key of ``by`` for each of ``merchant_id``."""
        if key == "merchant":
            return merchant_id
        if key == "size":
            if self.merchant_sizes is None:
                raise SchemaError(self.source, None, "by='size' on an RFM table needs a 'size' column")
            ids, labels = self.merchant_sizes
            return labels[np.searchsorted(ids, merchant_id)]
        industry, country = self.merchants.lookup(merchant_id)
        return industry if key == "industry" else country

    def row_groups(self, batch):
        """int64 group id of each row of ``batch``, new groups registered as they appear."""
        n = batch.num_rows
        if not self.by:
            if not self.keys:
                self.ids[()] = 0
                self.keys.append(())
            return np.zeros(n, np.int64)
        names = batch.schema.names
        if "merchant_id" in names and all(k == "merchant" or GROUP_KEYS[k] not in names for k in self.by):
            # Every key is the merchant's: look up the batch's distinct merchants only.
            merchant_id = _numpy(batch.column(names.index("merchant_id")), self.source, "merchant_id")
            merchants, inverse = np.unique(merchant_id.astype(np.int64), return_inverse=True)
            return self._group_ids(self.merchant_key_values(merchants))[inverse.reshape(-1)]
        return self._group_ids(self.key_columns(batch))

    def _group_ids(self, columns):
        """Group id of each row of the key ``columns`` (one array per key of ``by``)."""
        codes = []
        for values in columns:
            uniques, inverse = np.unique(values, return_inverse=True)
            codes.append((uniques, inverse.reshape(-1)))
        combos, inverse = np.unique(np.stack([c[1] for c in codes], axis=1), axis=0, return_inverse=True)
        gids = np.empty(len(combos), np.int64)
        for i, combo in enumerate(combos):
            key = tuple(_plain(codes[k][0][j]) for k, j in enumerate(combo))
            gid = self.ids.get(key)
            if gid is None:
                gid = self.ids[key] = len(self.keys)
                self.keys.append(key)
            gids[i] = gid
        return gids[inverse.reshape(-1)]

    def order(self, size_edges):
        """Group ids sorted by their keys (SPEC §7: size in bucket order)."""
        labels = {label: i for i, label in enumerate(size_labels(size_edges))}

        def sort_key(gid):
            return tuple((labels.get(v, len(labels)), str(v)) if k == "size" else (0, v)
                         for k, v in zip(self.by, self.keys[gid]))
        return sorted(range(len(self.keys)), key=sort_key)


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _numpy(column, source, name):
    if column.null_count:
        row = pc.index(column.is_null(), True).as_py()
        raise NullValueError(source, row, f"null in column {name!r}")
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or pa.types.is_dictionary(column.type):
        return np.asarray(column.cast(pa.string()).to_pylist(), dtype=object)
    return column.to_numpy(zero_copy_only=False)


# --- the entry point ---------------------------------------------------------------------------

class ClvResult:
    """What ``clv`` returns: the per-group fits (``params``) and a way to stream the predictions.

    ``params`` is a ``pyarrow.Table``, one row per group (sorted by the group
    keys). ``predictions()`` returns a fresh ``pyarrow.RecordBatchReader``
    of one row per store-customer (or per row of the RFM table), reading
    the input again as it is consumed.
    """

    def __init__(self, params, batches_factory, schema):
        self.params = params
        self._batches = batches_factory
        self.schema = schema

    def predictions(self):
        return pa.RecordBatchReader.from_batches(self.schema, self._batches())


def clv(orders: Orders | None = None, merchants: Merchants | None = None, *, summary: Orders | None = None,
        by: GroupKeys = (), freq: Literal["D", "W", "M"] = "D", observation_end: DateLike = None, horizon: int = 12,
        discount_rate: float = 0.01, penalizer_coef: float = 0.0, spend_penalizer_coef: float = 0.0,
        min_customers: int = DEFAULT_MIN_CUSTOMERS, columns: ColumnMap | None = None,
        size_edges: SizeEdges = DEFAULT_SIZE_EDGES, engine: Engine = "cython", threads: int | None = None,
        chunk_rows: int = parallel.DEFAULT_CHUNK_ROWS, progress: bool = False) -> ClvResult:
    """Fit BG/NBD and Gamma-Gamma per group and predict per store-customer (SPEC §11).

    Parameters
    ----------
    orders : path or table, optional
        Sorted order rows (SPEC §2), summarized by ``lm.rfm(orders, freq,
        observation_end)``. Read twice: once to fit, once more as the
        predictions are consumed (a one-shot stream is read into memory).
    merchants : path or table, optional
        The merchants table, for ``by`` industry or country.
    summary : path or table, optional
        Instead of ``orders``: a ready RFM table with ``frequency``,
        ``recency``, ``T``, ``monetary_value`` (as lifetimes'
        ``summary_data_from_transaction_data`` makes it; other columns,
        e.g. ids, are carried into the predictions) and the group columns
        ``by`` needs (``merchant_id``; ``industry``/``country``, or
        ``merchant_id`` with ``merchants``; ``size``).
    by : list of {"merchant", "industry", "country", "size"}
        One fit per group; empty: one fit over everything. ``size`` is the
        merchant's bucket over the whole input (its orders per month from
        the input's first order month to its last, SPEC §6).
    freq : {"D", "W", "M"}
        The time unit of recency and T (and of ``rfm`` from orders).
    observation_end : optional
        As for ``rfm``; default the latest order.
    horizon : int
        Months ahead, as lifetimes' ``time``: ``expected_orders`` and
        ``clv`` cover ``horizon`` months of ``MONTH_FACTOR[freq]`` units
        each (30 days, 4.345 weeks, 1 month), lifetimes' conversion.
    discount_rate : float
        Monthly discount rate of the CLV (lifetimes' ``discount_rate``).
    penalizer_coef : float
        L2 penalty on the BG/NBD parameters, ``BetaGeoFitter``'s
        ``penalizer_coef``: a small one (0.001) keeps a fit whose maximum
        lies at infinity (a, b → ∞: every customer drops out alike) finite.
    spend_penalizer_coef : float
        L2 penalty on the Gamma-Gamma parameters, ``GammaGammaFitter``'s
        ``penalizer_coef``. Separate because it weighs ``v`` in the units of
        ``monetary_value`` (minor units from orders): a coefficient that
        suits BG/NBD can swamp a fit in cents.
    min_customers : int
        Fewer customers than this in a group (repeat customers with
        positive spend, for Gamma-Gamma) is a ``too_few_customers`` status.

    Returns
    -------
    ClvResult
        ``.params``: per group the keys, ``customers``, ``repeat_customers``,
        ``distinct_summaries``, and per model its status, message,
        parameters, log-likelihood (summed over customers, at the fitted
        parameters without penalty, in the data's units), convergence and
        iterations. ``.predictions()``: the input's RFM columns plus
        ``expected_orders``, ``probability_alive``, ``expected_spend``,
        ``clv`` (null where the group's model has no usable fit).
    """
    sp.load()
    by = check_by(by)
    freq = check_freq(freq)
    size_edges = check_size_edges(size_edges)
    horizon = _check_horizon(horizon)
    discount_rate = _check_finite("discount_rate", discount_rate, low=0.0, inclusive=True)
    penalizer_coef = _check_finite("penalizer_coef", penalizer_coef, low=0.0, inclusive=True)
    spend_penalizer_coef = _check_finite("spend_penalizer_coef", spend_penalizer_coef, low=0.0, inclusive=True)
    if (orders is None) == (summary is None):
        raise ValueError("pass either orders (order rows) or summary= (a ready RFM table), not both or neither")
    merchants_table = read_merchants(merchants)
    if summary is not None:
        source = str(summary) if isinstance(summary, (str, Path)) else IN_MEMORY
        table = _read_summary(summary, source)
        groups = _Groups(by, merchants_table, source=source)

        def batches():
            return table.to_batches(max_chunksize=1 << 16)
        schema = table.schema
    else:
        source = str(orders) if isinstance(orders, (str, Path)) else IN_MEMORY
        if not isinstance(orders, (str, Path)) and not hasattr(orders, "__fspath__"):
            orders = _in_memory(orders)
            if not rereadable(orders):
                orders = orders.read_all()
        # Fix the observation end once: the prediction pass must summarize as the fit pass did.
        if observation_end is None:
            day = last_order_day(orders, columns)
            observation_end = np.datetime64(0 if day is None else day, "D")
        else:
            observation_end = np.datetime64(observation_day(observation_end), "D")
        sizes = _merchant_sizes(orders, columns, size_edges) if "size" in by else None
        groups = _Groups(by, merchants_table, sizes, source)
        options = dict(columns=columns, engine=engine, threads=threads, chunk_rows=chunk_rows)

        def batches():
            return iter(rfm(orders, freq, observation_end, **options))
        first = rfm(orders, freq, observation_end, progress=progress, **options)
        schema = first.schema
    bg = _Distinct(4)
    gg = _Distinct(3)
    customers = {}
    first_row = 0
    for batch in (first if summary is None else batches()):
        gid = groups.row_groups(batch)
        x, tx, T, m = _rfm_arrays(batch, source, summary is not None, first_row)
        first_row += batch.num_rows
        bg.add([gid, x, tx, T])
        spend = (x > 0) & (m > 0)
        gg.add([gid[spend], x[spend], m[spend]])
        counts = np.bincount(gid, minlength=len(groups.keys))
        repeat = np.bincount(gid, weights=x > 0, minlength=len(groups.keys))
        for g in np.flatnonzero(counts):
            c, r = customers.get(g, (0, 0))
            customers[g] = (c + int(counts[g]), r + int(repeat[g]))
    bg_rows, gg_rows = bg.result(), gg.result()
    fits = {}
    for g in range(len(groups.keys)):
        lo, hi = np.searchsorted(bg_rows[0], [g, g + 1])
        _, x, tx, T, w = (c[lo:hi] for c in bg_rows)
        bg_fit = fit_bgnbd(x, tx, T, w, penalizer_coef, min_customers)
        lo, hi = np.searchsorted(gg_rows[0], [g, g + 1])
        _, x, m, w = (c[lo:hi] for c in gg_rows)
        gg_fit = fit_gamma_gamma(x, m, w, spend_penalizer_coef, min_customers)
        fits[g] = (bg_fit, gg_fit, int(np.searchsorted(bg_rows[0], g + 1) - np.searchsorted(bg_rows[0], g)))
    params = _params_table(groups, fits, customers, size_edges)
    predict = _Predictor(groups, fits, bg_rows, freq, horizon, discount_rate, source, check=summary is not None)
    out_schema = _prediction_schema(schema)

    def prediction_batches():
        for batch in batches():
            yield predict(batch, out_schema)
    return ClvResult(params, prediction_batches, out_schema)


def _check_horizon(horizon):
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"horizon must be a positive whole number of months; got {horizon!r}")
    return int(horizon)


def _check_finite(name, value, low, inclusive):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number; got {value!r}") from None
    if not math.isfinite(value) or value < low or (value == low and not inclusive):
        raise ValueError(f"{name} must be a finite number ≥ {low}; got {value!r}")
    return value


def _read_summary(summary, source):
    if isinstance(summary, (str, Path)):
        try:
            table = _read_summary_file(Path(summary))
        except (pa.ArrowInvalid, pa.ArrowIOError) as e:
            raise CorruptInputError(source, None, f"cannot read the RFM table: {e}") from e
    elif type(summary).__module__.startswith("pandas"):
        table = pa.Table.from_pandas(summary)   # a named index (lifetimes' customer id) becomes a column
    else:
        table = _in_memory(summary)
        if isinstance(table, pa.RecordBatchReader):
            table = table.read_all()
        elif isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
    missing = [c for c in RFM_COLUMNS if c not in table.schema.names]
    if missing:
        raise SchemaError(source, None, f"the RFM table has no {', '.join(map(repr, missing))} column; "
                          f"it has {', '.join(table.schema.names)}")
    for name in RFM_COLUMNS:
        if not (pa.types.is_integer(table.schema.field(name).type) or pa.types.is_floating(table.schema.field(name).type)):
            raise SchemaError(source, None, f"RFM column {name!r} has type {table.schema.field(name).type}; "
                              "expected a number")
    return table.combine_chunks()


def _read_summary_file(path):
    """An RFM table file: CSV (group keys read as text), Arrow IPC, or Parquet (file or directory)."""
    if path.suffix.lower() == ".csv":
        import pyarrow.csv as pacsv

        text = {"industry": pa.string(), "country": pa.string(), "size": pa.string()}
        return pacsv.read_csv(str(path), convert_options=pacsv.ConvertOptions(column_types=text))
    if path.suffix.lower() in (".arrow", ".ipc", ".feather"):
        import pyarrow.feather as feather

        return feather.read_table(str(path))
    import pyarrow.parquet as pq

    return pq.read_table(str(path))


def _rfm_arrays(batch, source, check, first_row=0):
    """frequency, recency, T, monetary_value of a batch as float64, checked as lifetimes' ``_check_inputs`` does."""
    names = batch.schema.names
    x, tx, T, m = (_numpy(batch.column(names.index(c)), source, c).astype(np.float64) for c in RFM_COLUMNS)
    if check:
        problems = (
            (~np.isfinite(x) | ~np.isfinite(tx) | ~np.isfinite(T) | ~np.isfinite(m), "a value is not finite"),
            ((x < 0) | (x != np.floor(x)), "frequency is not a whole number ≥ 0"),
            (tx < 0, "recency is negative"),
            (tx > T, "recency is larger than T"),
            ((x == 0) & (tx != 0), "recency is not 0 where frequency is 0"),
        )
        for bad, what in problems:
            if np.any(bad):
                row = int(np.flatnonzero(bad)[0])
                raise InputError(source, first_row + row, f"{what}: frequency={x[row]!r}, recency={tx[row]!r}, "
                                 f"T={T[row]!r}, monetary_value={m[row]!r}")
    return x, tx, T, m


def _merchant_sizes(orders, columns, size_edges):
    """Per merchant (sorted ids), its size label over the whole input (SPEC §6 with period "all")."""
    from . import periods

    ids, counts, first_day, last_day = [], [], None, None
    for batch in order_batches(orders, columns):
        merchant_id = np.asarray(batch.merchant_id, np.int64)
        if len(merchant_id):
            starts = np.flatnonzero(np.r_[True, merchant_id[1:] != merchant_id[:-1]])
            ids.append(merchant_id[starts])
            counts.append(np.diff(np.r_[starts, len(merchant_id)]))
            days = np.asarray(batch.order_ts, np.int64) // batch.units_per_day
            lo, hi = int(days.min()), int(days.max())
            first_day = lo if first_day is None else min(first_day, lo)
            last_day = hi if last_day is None else max(last_day, hi)
        batch.release()
    if not ids:
        return np.empty(0, np.int64), np.empty(0, object)
    ids, counts = _reduce([np.concatenate(ids), np.concatenate(counts)])
    month = periods.day_month()
    first_day = min(max(first_day, 0), len(month) - 1)
    last_day = min(max(last_day, 0), len(month) - 1)
    months = int(month[last_day]) - int(month[first_day]) + 1
    labels = np.array(size_labels(size_edges), dtype=object)[size_buckets(counts, months, size_edges)]
    return ids, labels


def _params_table(groups, fits, customers, size_edges):
    order = groups.order(size_edges)
    columns = {}
    for k, key in enumerate(groups.by):
        values = [groups.keys[g][k] for g in order]
        columns[GROUP_KEYS[key]] = pa.array(values, pa.int64() if key == "merchant" else pa.string())
    columns["customers"] = pa.array([customers.get(g, (0, 0))[0] for g in order], pa.int64())
    columns["repeat_customers"] = pa.array([customers.get(g, (0, 0))[1] for g in order], pa.int64())
    columns["distinct_summaries"] = pa.array([fits[g][2] for g in order], pa.int64())
    for model, index, names in (("bgnbd", 0, BGNBD_PARAMS), ("gamma_gamma", 1, GAMMA_GAMMA_PARAMS)):
        model_fits = [fits[g][index] for g in order]
        columns[f"{model}_status"] = pa.array([f.status for f in model_fits], pa.string())
        for i, name in enumerate(names):
            columns[name] = pa.array([None if f.params is None else f.params[i] for f in model_fits], pa.float64())
        columns[f"{model}_log_likelihood"] = pa.array([f.log_likelihood for f in model_fits], pa.float64())
        columns[f"{model}_converged"] = pa.array([f.converged for f in model_fits], pa.bool_())
        columns[f"{model}_iterations"] = pa.array([f.iterations for f in model_fits], pa.int64())
        columns[f"{model}_message"] = pa.array([f.message for f in model_fits], pa.string())
    return pa.table(columns)


def _prediction_schema(schema):
    return pa.schema(list(schema) + [pa.field(name, pa.float64()) for name in PREDICTION_COLUMNS])


class _Predictor:
    """The prediction columns of one batch.

    The BG/NBD predictions depend on a customer only through its group and
    ``(frequency, recency, T)``: they are computed once per distinct
    summary of the fit pass (``table``, sorted as ``_reduce`` sorts), and
    each row of a prediction batch finds its summary there. Spend and CLV
    need the row's own ``monetary_value`` and are computed per row.
    """

    def __init__(self, groups, fits, table, freq, horizon, discount_rate, source, check):
        self.groups, self.fits = groups, fits
        self.freq, self.horizon, self.discount_rate = freq, horizon, discount_rate
        self.source, self.check = source, check
        self.first_row = 0
        self.keys = table[:4]       # gid, x, tx, T of every distinct summary
        n = len(self.keys[0])
        self.expected = np.full(n, np.nan)
        self.alive = np.full(n, np.nan)
        self.increments = np.full((horizon, n), np.nan)
        self.steps = np.arange(1, horizon + 1) * MONTH_FACTOR[freq]
        # Each summary as one int64: its columns' ranks among their distinct values, combined like digits
        # (sorted like the table), unless the product of the numbers of distinct values overflows.
        self.distinct = [np.unique(k) for k in self.keys]
        self.codes = None
        if math.prod(max(len(d), 1) for d in self.distinct) < CODE_LIMIT:
            self.codes = self._encode(self.keys)
        for g, fit in fits.items():
            if fit[0].status != OK:
                continue
            lo, hi = np.searchsorted(self.keys[0], [g, g + 1])
            _, x, tx, T = (k[lo:hi] for k in self.keys)
            params = fit[0].params
            self.expected[lo:hi] = expected_purchases(params, horizon * MONTH_FACTOR[freq], x, tx, T)
            self.alive[lo:hi] = probability_alive(params, x, tx, T)
            _, increments = monthly_expected_purchases(params, x, tx, T, horizon, freq)
            self.increments[:, lo:hi] = increments

    def _usable(self, gid, index):
        """Per row, its group's fit of model ``index`` is usable."""
        ok = np.zeros(len(self.fits) + 1, bool)
        for g, fit in self.fits.items():
            ok[g] = fit[index].status == OK
        return ok[np.minimum(gid, len(self.fits))]   # a group unseen by the fit: not usable

    def _encode(self, columns):
        code = np.zeros(len(columns[0]), np.int64)
        for distinct, column in zip(self.distinct, columns):
            rank = np.minimum(np.searchsorted(distinct, column), max(len(distinct) - 1, 0))
            code = code * max(len(distinct), 1) + rank
        return code

    def _locate(self, gid, x, tx, T):
        """Index of each row's summary in the table, checked (a value the table lacks finds a wrong one)."""
        n = len(self.keys[0])
        if self.codes is not None:
            where = np.minimum(np.searchsorted(self.codes, self._encode((gid, x, tx, T))), max(n - 1, 0))
        else:   # a lexsort merge: table rows sort before equal data rows
            combined = [np.concatenate([k, c]) for k, c in zip(self.keys, (gid, x, tx, T))]
            order = np.lexsort(combined[::-1])
            is_table = order < n
            last = np.maximum.accumulate(np.where(is_table, order, -1))
            where = np.empty(len(gid), np.int64)
            where[order[~is_table] - n] = last[~is_table]
        found = (where >= 0) & (n > 0)
        for k, c in zip(self.keys, (gid, x, tx, T)):
            found &= k[np.maximum(where, 0)] == c
        if not found.all():
            row = self.first_row + int(np.flatnonzero(~found)[0])
            raise InputChangedError(self.source, row, "a summary the fit pass did not see: the input changed "
                                    "between the fit and the predictions")
        return where

    def __call__(self, batch, schema):
        gid = self.groups.row_groups(batch)
        x, tx, T, m = _rfm_arrays(batch, self.source, self.check, self.first_row)
        n = len(gid)
        expected = np.full(n, np.nan)
        alive = np.full(n, np.nan)
        spend = np.full(n, np.nan)
        value = np.full(n, np.nan)
        bg_ok = self._usable(gid, 0)
        gg_ok = self._usable(gid, 1)
        spend_rows = np.flatnonzero(gg_ok)
        if len(spend_rows):
            params = np.array([self.fits[g][1].params if self.fits[g][1].status == OK else (np.nan,) * 3
                               for g in range(len(self.fits))]).reshape(-1, 3)
            gp = tuple(params[gid[spend_rows]].T)
            spend[spend_rows] = expected_average_profit(gp, x[spend_rows], m[spend_rows])
        rows = np.flatnonzero(bg_ok)
        if len(rows):
            where = self._locate(gid[rows], x[rows], tx[rows], T[rows])
            expected[rows] = self.expected[where]
            alive[rows] = self.alive[where]
            both = gg_ok[rows]
            value_rows = rows[both]
            value[value_rows] = discounted_value(spend[value_rows], self.steps,
                                                 [inc[where[both]] for inc in self.increments],
                                                 self.discount_rate, self.freq)
        self.first_row += n
        arrays = list(batch.columns) + [pa.array(a, pa.float64(), mask=np.isnan(a)) for a in
                                        (expected, alive, spend, value)]
        return pa.RecordBatch.from_arrays(arrays, schema=schema)


# --- writing -----------------------------------------------------------------------------------

def write_predictions(reader, path, inputs=()):
    """Stream a predictions reader to ``path`` (Parquet or CSV by suffix) through ``atomic_output``; rows written."""
    from .outputs import atomic_output

    suffix = Path(path).suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise ValueError(f"cannot tell the output format of {str(path)!r}: use a .parquet or .csv suffix")
    rows = 0
    with atomic_output(path, inputs=inputs, what="predictions output") as tmp:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            writer = pq.ParquetWriter(str(tmp), reader.schema)
        else:
            import pyarrow.csv as pacsv

            writer = pacsv.CSVWriter(str(tmp), reader.schema)
        with writer:
            for batch in reader:
                writer.write_batch(batch)
                rows += batch.num_rows
    return rows


def write_params(table, path, inputs=()):
    """The per-group parameter table to ``path``: JSON (a list of records), CSV or Parquet, through ``atomic_output``."""
    import json

    from .outputs import atomic_output

    suffix = Path(path).suffix.lower()
    if suffix not in (".json", ".csv", ".parquet"):
        raise ValueError(f"cannot tell the format of {str(path)!r}: use a .json, .csv or .parquet suffix")
    with atomic_output(path, inputs=inputs, what="parameters output") as tmp:
        if suffix == ".json":
            records = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
                       for row in table.to_pylist()]
            Path(tmp).write_text(json.dumps(records, indent=2) + "\n")
        elif suffix == ".csv":
            import pyarrow.csv as pacsv

            pacsv.write_csv(table, str(tmp))
        else:
            import pyarrow.parquet as pq

            pq.write_table(table, str(tmp))
