"""The ``loyaltymetrics`` command line (SPEC §8)."""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import pyarrow as pa

from .api import compute
from .errors import LoyaltyMetricsError
from .finalize import DEFAULT_SIZE_EDGES, GROUP_KEYS
from .periods import PERIODS
from .scan import ENGINES

# What the terminal summary shows; -o writes every column.
SUMMARY = (
    ("merchants", "merchants", "{:,}"),
    ("orders", "orders", "{:,}"),
    ("orders_yoy", "orders YoY", "{:+.1f}%"),
    ("revenue", "revenue", "money"),
    ("revenue_yoy", "revenue YoY", "{:+.1f}%"),
    ("aov", "AOV", "money"),
    ("purchase_frequency", "frequency", "{:.2f}"),
    ("clv", "CLV", "money"),
    ("repeat_customer_rate", "repeat rate", "pct"),
    ("repeat_customer_rate_yoy", "repeat YoY", "{:+.1f}%"),
    ("retention_rate", "retention", "{:.1f}%"),
    ("reward_revenue", "reward value", "money"),
    ("loyalty_roi", "loyalty ROI", "{:,.0f}%"),
)

EPILOG = """\
examples:
  loyaltymetrics demo
  loyaltymetrics generate orders.arrow --rows 1e7
  loyaltymetrics prepare export.csv -o orders.arrow --columns customer_id=email,order_ts=created_at
  loyaltymetrics compute orders.arrow --merchants merchants.parquet --by industry,size
  loyaltymetrics compute orders.parquet --period quarter -o metrics.parquet
  loyaltymetrics compute export/ --columns amount=total_cents,order_ts=created_at -o metrics.csv

ORDERS is an Arrow IPC file (memory-mapped), a Parquet file or a directory of
Parquet files, sorted by (merchant_id, customer_id, order_ts). Money is in
integer minor units (cents); the terminal summary shows it divided by 100.
"""


def _csv_list(text):
    return [part.strip() for part in text.split(",") if part.strip()]


def _columns(text):
    mapping = {}
    for item in _csv_list(text):
        canonical, sep, actual = item.partition("=")
        if not sep or not canonical or not actual:
            raise argparse.ArgumentTypeError(f"expected NAME=INPUT_NAME pairs, got {item!r}")
        mapping[canonical.strip()] = actual.strip()
    return mapping


def _edges(text):
    try:
        return tuple(float(x) if "." in x else int(x) for x in _csv_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_quiet(p):
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar (it is drawn on stderr only when that is a terminal)")


REFUNDS_HELP = ("a negative amount is a refund, not an order: it adds to revenue and counts in no order or "
                "customer count (SPEC §2; default: a negative amount is an error)")


def _add_compute_options(p):
    p.add_argument("--merchants", metavar="FILE",
                   help="merchants table (Parquet, Arrow or CSV): merchant_id, industry, country, annual_fee")
    p.add_argument("--by", type=_csv_list, default=[], metavar="KEYS",
                   help=f"comma-separated group keys from {', '.join(GROUP_KEYS)} (default: the whole network)")
    p.add_argument("--period", choices=PERIODS, default="year", help="calendar period in UTC (default: year)")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="write every column to OUT.parquet, OUT.csv or OUT.json (default: print a summary)")
    p.add_argument("--columns", type=_columns, metavar="NAME=COL,...",
                   help="map canonical names to the input's, e.g. amount=total_cents,order_ts=created_at")
    p.add_argument("--size-edges", type=_edges, default=DEFAULT_SIZE_EDGES, metavar="E1,E2,...",
                   help="orders-per-month edges of the merchant-size buckets (default: 30,300,3000,30000)")
    p.add_argument("--refunds", action="store_true", help=REFUNDS_HELP)
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="threads scanning chunks side by side (default: the CPUs this process may use, "
                        "or OMP_NUM_THREADS)")
    p.add_argument("--engine", choices=ENGINES, default="cython",
                   help="kernel: cython (default, compiled ahead of time) or numba (compiled on first use)")
    _add_quiet(p)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="loyaltymetrics",
        description="Exact e-commerce loyalty and retention metrics over sorted order rows.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("compute", help="metrics per group and period (SPEC §4-7)", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("orders", metavar="ORDERS", help="sorted orders: .arrow file, Parquet file or directory")
    _add_compute_options(p)
    _add_analysis_commands(sub)
    _add_rfm_parser(sub)
    _add_report_parser(sub)
    d = sub.add_parser("demo", help="generate a small sample network and print its metrics by industry and size")
    d.add_argument("--seed", type=int, default=0, help="random seed of the sample (default: 0)")
    d.add_argument("--rows", type=_rows, default=DEMO_ROWS, metavar="N",
                   help=f"orders in the sample (default: {DEMO_ROWS:,})")
    d.add_argument("--merchants-count", type=int, default=60, help="merchants in the sample (default: 60)")
    d.add_argument("--keep", metavar="DIR", help="also keep the sample's orders.arrow and merchants.parquet in DIR")
    _add_generate_parser(sub)
    _add_prepare_parser(sub)
    return parser


def _add_analysis_commands(sub):
    """The SPEC §9 analyses: ``cohorts`` and ``concentration``, options as for ``compute``."""
    from .cohort_analysis import COHORT_PERIODS

    for name, help_text, period_choices, default in (
        ("cohorts", "acquisition cohorts: retention and revenue by period since acquisition (SPEC §9)",
         COHORT_PERIODS, "month"),
        ("concentration", "share of revenue from the top store-customers per group and period (SPEC §9)",
         PERIODS, "year"),
    ):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("orders", metavar="ORDERS", help="sorted orders: .arrow file, Parquet file or directory")
        p.add_argument("--merchants", metavar="FILE", help="merchants table (Parquet, Arrow or CSV)")
        p.add_argument("--by", type=_csv_list, default=[], metavar="KEYS",
                       help=f"comma-separated group keys from {', '.join(GROUP_KEYS)} (default: the whole network)")
        p.add_argument("--period", choices=period_choices, default=default,
                       help=f"calendar period in UTC (default: {default})")
        if name == "concentration":
            p.add_argument("--top", type=float, default=0.05, metavar="FRACTION",
                           help="fraction of store-customers at the top, in (0, 1] (default: 0.05)")
        p.add_argument("-o", "--output", metavar="OUT",
                       help="write the table to OUT.parquet, OUT.csv or OUT.json (default: print it)")
        p.add_argument("--columns", type=_columns, metavar="NAME=COL,...",
                       help="map canonical names to the input's, e.g. amount=total_cents,order_ts=created_at")
        p.add_argument("--size-edges", type=_edges, default=DEFAULT_SIZE_EDGES, metavar="E1,E2,...",
                       help="orders-per-month edges of the merchant-size buckets (default: 30,300,3000,30000)")
        p.add_argument("--refunds", action="store_true", help=REFUNDS_HELP)
        p.add_argument("--engine", choices=("cython", "numba"), default="cython", help="kernel engine")
        p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                       help="threads scanning chunks side by side (default: the CPUs this process may use)")
        _add_quiet(p)


def _run_analysis(args):
    from .cohort_analysis import cohorts
    from .concentration_analysis import concentration

    options = dict(by=args.by, period=args.period, columns=args.columns, size_edges=args.size_edges,
                   refunds=args.refunds, engine=args.engine, threads=args.threads, progress=not args.quiet)
    if args.command == "cohorts":
        table = cohorts(args.orders, args.merchants, **options)
    else:
        table = concentration(args.orders, args.merchants, top=args.top, **options)
    if args.output:
        write_table(table, args.output)
        print(f"wrote {table.num_rows} rows × {table.num_columns} columns to {args.output}", file=sys.stderr)
    else:
        print(_format_rows(table))
    return 0


def _format_rows(table):
    """Every column of a small table as fixed-width text (floats to 4 decimals)."""
    cells = [["-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()]
             for row in table.to_pylist()]
    header = table.column_names
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in [header] + cells]
    return "\n".join(lines + [f"({table.num_rows} rows)"])


def main(argv=None):
    args = build_parser().parse_args(argv)
    if getattr(args, "handler", None):  # subcommands that bring their own function
        return args.handler(args)
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command in ("cohorts", "concentration"):
            return _run_analysis(args)
        if args.command == "rfm":
            return _rfm(args)
        if args.command == "report":
            return _report(args)
        table = compute(args.orders, args.merchants, by=args.by, period=args.period, columns=args.columns,
                        size_edges=args.size_edges, refunds=args.refunds, engine=args.engine,
                        threads=args.threads, progress=not args.quiet)
        if args.output:
            write_table(table, args.output)
            print(f"wrote {table.num_rows} rows × {table.num_columns} columns to {args.output}", file=sys.stderr)
        else:
            print(format_summary(table))
    except (LoyaltyMetricsError, ValueError, OSError) as e:
        print(f"loyaltymetrics: error: {e}", file=sys.stderr)
        return 1
    return 0


def _add_rfm_parser(sub):
    p = sub.add_parser("rfm", help="frequency, recency, T, monetary value per store-customer (SPEC §9)",
                       description="One row per store-customer, as lifetimes' summary_data_from_transaction_data; "
                                   "streamed to Parquet or CSV.")
    p.add_argument("orders", metavar="ORDERS", help="sorted orders: .arrow file, Parquet file or directory")
    p.add_argument("-o", "--output", metavar="OUT", required=True, help="OUT.parquet or OUT.csv")
    p.add_argument("--freq", choices=("D", "W", "M"), default="D", help="days, weeks (Mon-Sun) or months (default: D)")
    p.add_argument("--observation-end", metavar="DATE",
                   help="ISO date (UTC) of the observation end (default: the latest order)")
    p.add_argument("--include-first-transaction", action="store_true",
                   help="count the first period in frequency and monetary_value")
    p.add_argument("--columns", type=_columns, metavar="NAME=COL,...",
                   help="map canonical names to the input's, e.g. amount=total_cents,order_ts=created_at")
    p.add_argument("--engine", choices=ENGINES, default="cython", help="kernel (default: cython)")
    p.add_argument("--threads", type=_positive_int, metavar="N", help="threads scanning chunks (default: the usable CPUs)")
    p.add_argument("--refunds", action="store_true", help="accept negative amounts (refunds)")
    _add_quiet(p)


def _rfm(args):
    from .rfm_summary import rfm, write_rfm

    reader = rfm(args.orders, args.freq, args.observation_end, args.include_first_transaction,
                 columns=args.columns, engine=args.engine, threads=args.threads, refunds=args.refunds,
                 progress=not args.quiet)
    rows = write_rfm(reader, args.output)
    print(f"wrote {rows:,} store-customers to {args.output}", file=sys.stderr)
    return 0


def _add_report_parser(sub):
    p = sub.add_parser(
        "report", help="an HTML loyalty report: headline numbers and charts, year over year",
        description="Write one self-contained HTML file (charts embedded, no external files or scripts): "
                    "the latest period against the same period a year earlier, by industry and merchant "
                    "size, participants vs non-participants, retention, revenue concentration and month "
                    "cohorts. Needs matplotlib: pip install \"loyaltymetrics[report]\".")
    p.add_argument("orders", metavar="ORDERS", help="sorted orders: .arrow file, Parquet file or directory")
    p.add_argument("--merchants", metavar="FILE",
                   help="merchants table (Parquet, Arrow or CSV): merchant_id, industry, country, annual_fee; "
                        "without it every industry is \"unknown\" and loyalty ROI is undefined")
    p.add_argument("-o", "--output", metavar="OUT.html", required=True, help="the HTML file to write")
    p.add_argument("--period", choices=("year", "quarter", "month"), default="year",
                   help="reporting period: the latest one against a year earlier (default: year)")
    p.add_argument("--title", default="Loyalty report", help="the page's title (default: Loyalty report)")
    p.add_argument("--top", type=float, default=0.05, metavar="SHARE",
                   help="top share of store-customers in the revenue-concentration chart (default: 0.05)")
    p.add_argument("--columns", type=_columns, metavar="NAME=COL,...",
                   help="map canonical names to the input's, e.g. amount=total_cents,order_ts=created_at")
    p.add_argument("--size-edges", type=_edges, default=DEFAULT_SIZE_EDGES, metavar="E1,E2,...",
                   help="orders-per-month edges of the merchant-size buckets (default: 30,300,3000,30000)")
    p.add_argument("--refunds", action="store_true", help=REFUNDS_HELP)
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="threads scanning chunks side by side (default: the CPUs this process may use)")
    p.add_argument("--engine", choices=ENGINES, default="cython", help="kernel (default: cython)")


def _report(args):
    from .html_report import report

    try:
        report(args.orders, args.merchants, args.output, period=args.period, title=args.title, top=args.top,
               columns=args.columns, size_edges=args.size_edges, refunds=args.refunds, engine=args.engine,
               threads=args.threads)
    except ImportError as e:  # matplotlib missing: say what to install, without a traceback
        print(f"loyaltymetrics: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote the report to {args.output}", file=sys.stderr)
    return 0


DEMO_ROWS = 300_000


def _demo(args):
    from .synthetic import generate

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        orders_path, merchants_path = folder / "orders.arrow", folder / "merchants.parquet"
        made = generate(orders_path, merchants_path, rows=args.rows, seed=args.seed,
                        merchants_count=args.merchants_count)
        print(f"sample: {made.rows:,} orders of {made.merchants} merchants, 2022-2023"
              + (f", kept in {folder}" if args.keep else ""))
        print(f"$ loyaltymetrics compute {orders_path.name} --merchants {merchants_path.name} --by industry,size\n")
        table = compute(str(orders_path), str(merchants_path), by=["industry", "size"], period="year")
    print(format_summary(table))
    return 0


# --- generate ------------------------------------------------------------------

def _rows(text):
    from .synthetic import parse_rows

    try:
        return parse_rows(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _years(text):
    first, sep, last = text.partition("-")
    try:
        return int(first), int(last if sep else first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected YEAR or FIRST-LAST, e.g. 2022-2023; got {text!r}") from None


def _add_generate_parser(sub):
    g = sub.add_parser(
        "generate", help="write a synthetic merchant network calibrated to industry loyalty figures",
        description="Write a synthetic merchant network: sorted orders as an uncompressed Arrow IPC file "
                    "and the merchants table beside it. Calibrated to published loyalty-report figures "
                    "(six industries, all five size buckets, repeat rates, AOV, frequency, rewards, YoY "
                    "drift; see the README). The same --seed writes a byte-identical file.",
        epilog="example:\n  loyaltymetrics generate orders.arrow --rows 1e8 --seed 7\n"
               "  loyaltymetrics compute orders.arrow --merchants orders_merchants.parquet --by industry,size",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("output", metavar="ORDERS.arrow", help="the orders file to write")
    g.add_argument("--rows", type=_rows, required=True, metavar="N",
                   help="exactly how many orders, e.g. 1e6, 1e9 or 2_500_000")
    g.add_argument("--merchants", metavar="FILE",
                   help="the merchants table to write, .parquet or .csv (default: ORDERS_merchants.parquet)")
    g.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same bytes (default: 0)")
    g.add_argument("--merchants-count", type=int, metavar="N",
                   help="how many merchants (default: as many as --rows holds at real sizes; "
                        "more merchants for the same rows makes them smaller)")
    g.add_argument("--years", type=_years, default=(2022, 2023), metavar="FIRST-LAST",
                   help="calendar years of the orders (default: 2022-2023)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no closing report")
    g.set_defaults(handler=_generate_command)


def _generate_command(args):
    from .synthetic import generate

    try:
        made = generate(args.output, args.merchants, rows=args.rows, seed=args.seed,
                        merchants_count=args.merchants_count, years=args.years, progress=not args.quiet)
    except (LoyaltyMetricsError, ValueError, OSError) as e:
        print(f"loyaltymetrics: error: {e}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"wrote {made.rows:,} orders of {made.merchants:,} merchants to {made.orders_path} "
              f"(merchants: {made.merchants_path}) in {made.seconds:.1f} s, "
              f"{made.rows_per_second:,.0f} rows/s", file=sys.stderr)
    return 0


# --- prepare -------------------------------------------------------------------

def _add_prepare_parser(sub):
    p = sub.add_parser(
        "prepare", help="turn a raw order export (CSV or Parquet, any order, string ids) into sorted orders",
        description="Convert a raw order export into the canonical layout (SPEC §2): integer ids (mappings "
                    "written beside the output), int64 cents, UTC timestamps, sorted out of core with "
                    "DuckDB. Every row is written or rejected with a reason; nothing is dropped silently.",
        epilog="example:\n  loyaltymetrics prepare export.csv -o orders.arrow "
               "--columns merchant_id=shop,customer_id=email,order_ts=created_at,amount=total,reward=discount_used",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("raw", metavar="RAW", help="the export: a CSV file, a Parquet file or a directory of Parquet files")
    p.add_argument("-o", "--output", required=True, metavar="ORDERS.arrow", help="the sorted Arrow IPC file to write")
    p.add_argument("--columns", type=_columns, metavar="NAME=COL,...",
                   help="map canonical names to the export's, e.g. customer_id=email,reward=discount_used")
    p.add_argument("--refunds", action="store_true", help="keep negative amounts (refunds) instead of rejecting them")
    p.add_argument("--rejects", metavar="FILE", help="also write rejected rows with their reason to FILE (.csv or .parquet)")
    p.add_argument("--timezone", default="UTC", metavar="ZONE",
                   help="zone of timestamps written without one, e.g. Europe/Berlin (default: UTC)")
    p.add_argument("--amount-unit", choices=("major", "minor"), default="major",
                   help="amounts in major units (dollars, the default) or already in minor units (cents)")
    p.add_argument("--memory-limit", default="4GB", metavar="SIZE",
                   help="memory the sort may use before spilling to disk (default: 4GB)")
    p.add_argument("--temp-directory", metavar="DIR", help="where the sort spills (default: beside the output)")
    p.add_argument("--threads", type=int, metavar="N", help="threads for the sort (default: all cores)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar; the report shows only rejects")
    p.set_defaults(handler=_prepare_command)


def _prepare_command(args):
    from .convert import MissingDependencyError, prepare

    try:
        report = prepare(args.raw, args.output, columns=args.columns, refunds=args.refunds,
                         rejects=args.rejects, timezone=args.timezone, amount_unit=args.amount_unit,
                         memory_limit=args.memory_limit, temp_directory=args.temp_directory,
                         threads=args.threads, progress=not args.quiet)
    except (LoyaltyMetricsError, MissingDependencyError, ValueError, OSError) as e:
        print(f"loyaltymetrics: error: {e}", file=sys.stderr)
        return 1
    if not args.quiet or report.rows_rejected:  # rejects are always reported: never a silent drop
        print(report.summary(), file=sys.stderr)
    return 0


def write_table(table, path):
    """Write ``table`` as Parquet, CSV or JSON, chosen by the file's suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    elif suffix == ".csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, path)
    elif suffix == ".json":
        rows = table.to_pylist()
        with open(path, "w") as f:
            json.dump(rows, f, default=str, indent=1)
            f.write("\n")
    else:
        raise ValueError(f"cannot tell the output format of {path!r}: use a .parquet, .csv or .json suffix")


def format_summary(table):
    """A fixed-width text table of the headline metrics, one line per (group, period)."""
    # The group keys as the table has them (in `by` order, merchant_name after merchant_id: SPEC §7).
    keys = table.column_names[:table.column_names.index("period_start")]
    shown = [(name, title, fmt) for name, title, fmt in SUMMARY if name in table.column_names]
    header = keys + ["period"] + [title for _, title, _ in shown]
    lines = []
    for row in table.to_pylist():
        cells = ["-" if row[k] is None else str(row[k]) for k in keys] + [str(row["period_start"])]
        for name, _, fmt in shown:
            cells.append(_format(row[name], fmt))
        lines.append(cells)
    widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, h in enumerate(header)]
    n_left = len(keys) + 1

    def render(cells):
        return "  ".join(c.ljust(w) if i < n_left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [render(header), render(["-" * w for w in widths])] + [render(line) for line in lines]
    out.append(f"({table.num_rows} rows; money in major units; -o OUT.parquet writes all {table.num_columns} columns)")
    return "\n".join(out)


def _format(value, fmt):
    if value is None:
        return "-"
    if fmt == "money":
        return f"{value / 100:,.2f}"
    if fmt == "pct":
        return f"{value * 100:.1f}%"
    return fmt.format(value)


if __name__ == "__main__":
    sys.exit(main())
