"""Fit and predict time, rows/s and peak memory of ``lm.clv`` beside lifetimes' BG/NBD + Gamma-Gamma pipeline.

    python benchmarks/clv_bench.py --rows 1e7 --freq W --penalizer 0.001 --timeout 600 --memory-gib 8

The orders are a generated network (``loyaltymetrics generate``, written
once as an uncompressed Arrow IPC file; ``--orders PATH`` reuses a file
made earlier). Each measurement runs in its own subprocess under the same
budget (a wall-clock timeout and an address-space limit) and reports its
peak RSS:

- ``lm.clv``: the fit (one pass through the rfm kernel collecting distinct
  summaries per group, then the fits) and the predictions (a second pass,
  every record batch consumed), on the whole input.
- lifetimes 0.11.3 on the first N rows, for N in ``--lifetimes-rows``
  (ascending; it stops at the first size that does not finish):
  ``summary_data_from_transaction_data`` from a pandas frame,
  ``BetaGeoFitter.fit``, ``GammaGammaFitter.fit`` on the repeat customers,
  then ``conditional_expected_number_of_purchases_up_to_time``,
  ``conditional_probability_alive`` and ``customer_lifetime_value``. The
  same N rows go through ``lm.clv`` too, and the fitted parameters are
  compared.

The store-customer ``(merchant_id, customer_id)`` is lifetimes' customer;
``by`` is the whole input (one fit), unless ``--by`` says otherwise (then
only ``lm.clv`` runs: lifetimes has no groups).
"""
import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rfm_vs_lifetimes import run_job  # noqa: E402  (each measurement in a budgeted subprocess)

ROOT = Path(__file__).resolve().parent.parent

CLV_JOB = """
import json, resource, time, warnings
import pyarrow as pa, loyaltymetrics as lm
warnings.simplefilter("ignore")
source = {path!r}
rows = {rows}
if rows:
    with pa.memory_map(source) as f:
        source = pa.ipc.open_file(f).read_all().slice(0, rows)
t0 = time.perf_counter()
result = lm.clv(source, {merchants!r}, by={by!r}, freq={freq!r}, penalizer_coef={penalizer!r})
fit = time.perf_counter() - t0
t0 = time.perf_counter()
out = 0
for batch in result.predictions():
    out += batch.num_rows
predict = time.perf_counter() - t0
p = result.params
statuses = sorted(set(p.column("bgnbd_status").to_pylist() + p.column("gamma_gamma_status").to_pylist()))
print(json.dumps({{"fit": fit, "predict": predict, "rows_out": out, "groups": p.num_rows,
                  "distinct": sum(p.column("distinct_summaries").to_pylist()),
                  "statuses": statuses, "params": p.to_pylist()[0] if p.num_rows == 1 else None,
                  "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""

LIFETIMES_JOB = """
import json, resource, time, warnings
import numpy as np, pyarrow as pa
warnings.simplefilter("ignore")
from lifetimes import BetaGeoFitter, GammaGammaFitter
from lifetimes.utils import summary_data_from_transaction_data
with pa.memory_map({path!r}) as f:
    table = pa.ipc.open_file(f).read_all().slice(0, {rows})
merchant = table.column("merchant_id").to_numpy().astype(np.int64)
customer = table.column("customer_id").to_numpy()
new = np.r_[True, (merchant[1:] != merchant[:-1]) | (customer[1:] != customer[:-1])]
frame = __import__("pandas").DataFrame({{
    "customer": np.cumsum(new),   # the store-customer as one key, in input order
    "date": table.column("order_ts").cast(pa.timestamp("us")).to_numpy(),
    "amount": table.column("amount").to_numpy(),
}})
del table
times = {{}}
t0 = time.perf_counter()
s = summary_data_from_transaction_data(frame, "customer", "date", "amount", freq={freq!r})
times["summary"] = time.perf_counter() - t0
t0 = time.perf_counter()
bgf = BetaGeoFitter(penalizer_coef={penalizer!r}).fit(s["frequency"], s["recency"], s["T"])
repeat = s[(s["frequency"] > 0) & (s["monetary_value"] > 0)]
ggf = GammaGammaFitter().fit(repeat["frequency"], repeat["monetary_value"])
times["fit"] = time.perf_counter() - t0
t0 = time.perf_counter()
factor = {{"D": 30, "W": 4.345, "M": 1.0}}[{freq!r}]
bgf.conditional_expected_number_of_purchases_up_to_time(12 * factor, s["frequency"], s["recency"], s["T"])
bgf.conditional_probability_alive(s["frequency"], s["recency"], s["T"])
ggf.customer_lifetime_value(bgf, s["frequency"], s["recency"], s["T"], s["monetary_value"], time=12,
                            discount_rate=0.01, freq={freq!r})
times["predict"] = time.perf_counter() - t0
params = {{**bgf.params_.to_dict(), **ggf.params_.to_dict()}}
print(json.dumps({{**times, "customers": len(s), "params": params,
                  "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""


def _params_text(params):
    names = ("r", "alpha", "a", "b", "p", "q", "v")
    return " ".join(f"{n}={params[n]:.6g}" for n in names if params.get(n) is not None)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=float, default=1e7, help="orders to generate (default 1e7)")
    parser.add_argument("--orders", help="an orders .arrow file made earlier (with its _merchants.parquet)")
    parser.add_argument("--freq", choices=("D", "W", "M"), default="W")
    parser.add_argument("--by", default="", help="comma-separated group keys for lm.clv (default: one fit)")
    parser.add_argument("--penalizer", type=float, default=0.001,
                        help="BG/NBD penalizer_coef for both (default 0.001: the generated network's unpenalized "
                             "BG/NBD optimum lies at a, b → ∞)")
    parser.add_argument("--lifetimes-rows", default="1e5,1e6,1e7",
                        help="comma-separated input sizes for lifetimes, ascending (default 1e5,1e6,1e7)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per measurement (default 600)")
    parser.add_argument("--memory-gib", type=float, default=8, help="address-space limit per measurement")
    parser.add_argument("--skip-lifetimes", action="store_true")
    parser.add_argument("--dir", help="where to write generated data (default: a temporary directory)")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "src"))
    import loyaltymetrics as lm
    from loyaltymetrics.inputs import count_rows

    by = [k for k in args.by.split(",") if k]
    budget = dict(timeout=args.timeout, memory_bytes=int(args.memory_gib * 2**30))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        if args.orders:
            path = args.orders
        else:
            path = str(Path(tmp) / "orders.arrow")
            lm.generate(path, rows=int(args.rows), seed=0)
        merchants = str(Path(path).with_name(Path(path).stem + "_merchants.parquet"))
        rows = count_rows(path)
        print(f"{rows:,} generated orders ({Path(path).stat().st_size / 2**20:,.0f} MiB Arrow IPC); freq={args.freq}, "
              f"by={by or 'everything'}, BG/NBD penalizer {args.penalizer:g}; "
              f"budget {args.timeout:g} s and {args.memory_gib:g} GiB per run")
        common = dict(path=path, merchants=merchants if Path(merchants).exists() else None, by=by, freq=args.freq,
                      penalizer=args.penalizer)
        result, why_not = run_job(CLV_JOB.format(rows=0, **common), **budget)
        if result is None:
            print(f"lm.clv on {rows:,} rows: {why_not}")
        else:
            total = result["fit"] + result["predict"]
            print(f"lm.clv        {rows:>12,} rows: fit {result['fit']:7.2f} s, predict {result['predict']:6.2f} s, "
                  f"{rows / total / 1e6:6.2f} M rows/s, peak RSS {result['peak_kib'] / 1024:,.0f} MiB; "
                  f"{result['rows_out']:,} store-customers, {result['groups']} groups, "
                  f"{result['distinct']:,} distinct summaries, statuses {result['statuses']}")
            if result["params"]:
                print(f"              {_params_text(result['params'])}")
        if args.skip_lifetimes or by:
            return
        for size in sorted(int(float(s)) for s in args.lifetimes_rows.split(",") if s):
            size = min(size, rows)
            theirs, why_not = run_job(LIFETIMES_JOB.format(rows=size, **common), **budget)
            if theirs is None:
                print(f"lifetimes     {size:>12,} rows: {why_not}; it gives up here")
                break
            total = theirs["summary"] + theirs["fit"] + theirs["predict"]
            print(f"lifetimes     {size:>12,} rows: summary {theirs['summary']:7.2f} s, fit {theirs['fit']:6.2f} s, "
                  f"predict {theirs['predict']:6.2f} s, {size / total / 1e6:6.2f} M rows/s, "
                  f"peak RSS {theirs['peak_kib'] / 1024:,.0f} MiB; {theirs['customers']:,} customers")
            ours, why_not = run_job(CLV_JOB.format(rows=size, **common), **budget)
            if ours is None:
                print(f"lm.clv        {size:>12,} rows: {why_not}")
                continue
            total = ours["fit"] + ours["predict"]
            worst = max(abs(ours["params"][k] / theirs["params"][k] - 1) for k in theirs["params"])
            print(f"lm.clv        {size:>12,} rows: fit {ours['fit']:7.2f} s, predict {ours['predict']:6.2f} s, "
                  f"{size / total / 1e6:6.2f} M rows/s, peak RSS {ours['peak_kib'] / 1024:,.0f} MiB; "
                  f"parameters differ from lifetimes' by {worst:.1e} relative at most")
            if size == rows:
                break


if __name__ == "__main__":
    main()
