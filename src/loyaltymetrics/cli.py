"""The ``loyaltymetrics`` command line (SPEC §8)."""
import argparse
import contextlib
import datetime
import json
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path


from .api import compute
from .display import format_cohorts, format_concentration, format_summary, reporting_currency
from .errors import LoyaltyMetricsError
from .outputs import (Terminated, atomic_output, check_output_path, check_stop, remove_temporaries,
                      request_stop, reset_stop, stop_requested)
from .finalize import DEFAULT_SIZE_EDGES, GROUP_KEYS
from .periods import PERIODS, check_zone
from .scan import ENGINES

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
integer minor units (cents) in files; the terminal shows it in major units with
the reporting currency (from prepare --currency, or --currency here), rates as
percentages.
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


def _parsed(text, parse):
    """``parse(text)`` for an argparse type: its ValueError's message becomes the usage error."""
    try:
        return parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _zone(text):
    return _parsed(text, check_zone)


TIMEZONE_HELP = ("IANA time zone (e.g. America/New_York) of the calendar periods of merchants without a "
                 "timezone in the merchants table (default: UTC)")


def _add_timezone(p):
    p.add_argument("--timezone", type=_zone, default=None, metavar="ZONE", help=TIMEZONE_HELP)


def _timezone(args):
    """``timezone=`` for an entry point, only when given (so entry points without zones keep working)."""
    return {} if getattr(args, "timezone", None) is None else {"timezone": args.timezone}


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_unsorted(p):
    p.add_argument("--unsorted", action="store_true",
                   help="rows may come in any order: sort them first (stably; ties keep file order), in memory "
                        "or through private temporary files in TMPDIR (results identical to sorted input)")
    p.add_argument("--memory-limit", type=_size, default=None, metavar="BYTES",
                   help="about the peak memory of an --unsorted run, e.g. 4G or 512M (default: a quarter of "
                        "RAM, at most 1.75G); larger input is spilled to disk")


def _size(text):
    from .unsorted import parse_size

    return _parsed(text, parse_size)


def _unsorted(args):
    return dict(presorted=not args.unsorted, memory_limit=args.memory_limit)


def _add_quiet(p):
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar (it is drawn on stderr only when that is a terminal)")


def _add_currency(p):
    p.add_argument("--currency", metavar="CODE", type=str.upper,
                   help="currency code shown with money in the terminal (default: the one prepare recorded "
                        "in the orders file, else none); files keep integer minor units")


REFUNDS_HELP = ("a negative amount is a refund, not an order: it adds to revenue and counts in no order or "
                "customer count (SPEC §2; default: a negative amount is an error)")


def _iso_date(text):
    try:
        return datetime.date.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO date YYYY-MM-DD, got {text!r}") from None


def _add_observation_options(p):
    """The observation window of SPEC §3: which periods are complete (and so compared year over year)."""
    p.add_argument("--observation-start", type=_iso_date, metavar="DATE",
                   help="first day observed (UTC date, YYYY-MM-DD; default: the date of the earliest order)")
    p.add_argument("--observation-end", type=_iso_date, metavar="DATE",
                   help="the day after the last day observed (default: the day after the latest order's date); "
                        "periods wholly inside the window are period_complete, and YoY compares only those")


def _observation(args):
    return dict(observation_start=args.observation_start, observation_end=args.observation_end)


def _add_compute_options(p):
    p.add_argument("--merchants", metavar="FILE",
                   help="merchants table (Parquet, Arrow or CSV): merchant_id, industry, country, annual_fee")
    p.add_argument("--by", type=_csv_list, default=[], metavar="KEYS",
                   help=f"comma-separated group keys from {', '.join(GROUP_KEYS)} (default: the whole network)")
    p.add_argument("--period", choices=PERIODS, default="year",
                   help="calendar period in each merchant's time zone (default: year)")
    _add_timezone(p)
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
    _add_observation_options(p)
    _add_unsorted(p)
    _add_currency(p)
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
    _add_clv_parser(sub)
    _add_benchmarks_parser(sub)
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
                       help=f"calendar period in each merchant's time zone (default: {default})")
        _add_timezone(p)
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
        _add_observation_options(p)
        _add_unsorted(p)
        _add_currency(p)
        _add_quiet(p)


def _run_analysis(args):
    from .cohort_analysis import cohorts
    from .concentration_analysis import concentration

    options = dict(by=args.by, period=args.period, columns=args.columns, size_edges=args.size_edges,
                   refunds=args.refunds, engine=args.engine, threads=args.threads, progress=not args.quiet,
                   **_observation(args), **_timezone(args), **_unsorted(args))
    inputs = [args.orders, args.merchants]
    if args.output:
        check_table_path(args.output, inputs)  # before reading anything
    if args.command == "cohorts":
        table = cohorts(args.orders, args.merchants, **options)
    else:
        table = concentration(args.orders, args.merchants, top=args.top, **options)
    _check_not_empty(table, args.orders)
    if args.output:
        write_table(table, args.output, inputs)
        print(f"wrote {table.num_rows} rows × {table.num_columns} columns to {args.output}", file=sys.stderr)
    elif args.command == "cohorts":
        print(format_cohorts(table, args.by))
    else:
        print(format_concentration(table, args.by, args.currency or reporting_currency(args.orders)))
    return 0


def _check_not_empty(table, orders):
    """An empty result at the command line is an error, not an empty table and exit 0: the input
    held no orders (e.g. a ``prepare`` that wrote none), and a pipeline must notice."""
    if table.num_rows == 0:
        raise ValueError(f"{orders}: the orders hold no rows (no order in any period): nothing to compute; "
                         "nothing written")


def _format_rows(table):
    """Every column of a small table as fixed-width text (floats to 4 decimals)."""
    cells = [["-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()]
             for row in table.to_pylist()]
    header = table.column_names
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in [header] + cells]
    return "\n".join(lines + [f"({table.num_rows} rows)"])


INTERRUPTED_EXIT = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal's number, as shells report it


def _stop(signum, frame):
    """SIGINT/SIGTERM: unwind the main thread (cleanup runs in ``finally`` blocks), remembering why."""
    stop = request_stop(signum)
    if frame is not None and frame.f_code.co_filename.startswith("<frozen importlib"):
        # Inside the import system an exception is printed as "ignored" and lost: the request
        # is kept (``check_stop`` raises it at the next round of work, before an output is
        # renamed into place and at the end of the command) and the signal is sent again
        # shortly, to land once the import is done.
        try:
            timer = threading.Timer(0.05, _resend, (signum,))
            timer.daemon = True
            timer.start()
        except RuntimeError:  # no thread to be had: the checkpoints still stop the command
            pass
        return
    raise stop


def _resend(signum):
    if stop_requested() == signum and signal.getsignal(signum) is _stop:  # still stopping, still ours
        os.kill(os.getpid(), signum)


@contextlib.contextmanager
def _signals_raise():
    """SIGINT raises KeyboardInterrupt and SIGTERM ``Terminated`` in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    reset_stop()
    previous = {signum: signal.signal(signum, _stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
        check_stop()  # a stop whose exception was lost on the way
    finally:
        for signum, handler in previous.items():
            if handler is not None:  # None: a handler not set from Python, which cannot be restored
                signal.signal(signum, handler)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        with _signals_raise():
            return _dispatch(args)
    except BaseException as e:
        # After SIGINT/SIGTERM any exception is the interruption (DuckDB, for one, reports it as
        # RuntimeError("Query interrupted")). Cleanup already ran as it unwound: one line, no
        # traceback, the shell's exit code.
        signum = stop_requested()
        if signum is None and not isinstance(e, (KeyboardInterrupt, Terminated)):
            raise
        name = signal.Signals(signum).name if signum is not None else \
            "SIGINT" if isinstance(e, KeyboardInterrupt) else "SIGTERM"
        remove_temporaries()  # any whose ``with`` block the signal cut short before it began
        print(f"loyaltymetrics: interrupted by {name}; no partial output left", file=sys.stderr)
        if argv is None:  # the program itself (not a call from Python): exit with exactly this status
            _exit_now(INTERRUPTED_EXIT[name])
        return INTERRUPTED_EXIT[name]
    finally:
        reset_stop()  # a later call in the same process starts afresh


def _exit_now(code):
    """Exit with ``code`` at once; cleanup has run already. After a handled KeyboardInterrupt,
    CPython's own exit sometimes ends the process by sending itself SIGINT (seen as status -2,
    not 130, about 1 run in 50 when the signal test is repeated), when the interrupt passed
    through one of its internal paths that flag an "unhandled" KeyboardInterrupt."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _dispatch(args):
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
        inputs = [args.orders, args.merchants]
        if args.output:
            check_table_path(args.output, inputs)  # before reading anything
        table = compute(args.orders, args.merchants, by=args.by, period=args.period, columns=args.columns,
                        size_edges=args.size_edges, refunds=args.refunds, engine=args.engine,
                        threads=args.threads, progress=not args.quiet, **_observation(args),
                        timezone=args.timezone, **_unsorted(args))
        _check_not_empty(table, args.orders)
        if args.output:
            write_table(table, args.output, inputs)
            print(f"wrote {table.num_rows} rows × {table.num_columns} columns to {args.output}", file=sys.stderr)
        else:
            print(format_summary(table, args.by, args.currency or reporting_currency(args.orders)))
    except (LoyaltyMetricsError, ValueError, OSError) as e:
        check_stop()  # an error caused by SIGINT/SIGTERM is reported as the interruption
        print(f"loyaltymetrics: error: {e}", file=sys.stderr)
        return 1
    return 0


def _add_benchmarks_parser(sub):
    from .benchmark_analysis import DEFAULT_METRICS

    help_text = ("how merchants compare within their group: per group, period and SPEC §5 metric the "
                 "distribution across merchants (SPEC §9)")
    p = sub.add_parser("benchmarks", help=help_text, description=help_text)
    p.add_argument("orders", metavar="ORDERS", help="sorted orders: .arrow file, Parquet file or directory")
    _add_compute_options(p)
    p.set_defaults(by=[])
    for action in p._actions:  # merchant is not a benchmark group: merchants are what is compared
        if action.dest == "by":
            action.help = "comma-separated group keys from industry, country, size (default: the whole network)"
    p.add_argument("--metrics", type=_csv_list, default=None, metavar="M1,M2",
                   help=f"SPEC §5 metrics (or M_yoy) to compare (default: all: {', '.join(DEFAULT_METRICS)})")
    p.add_argument("--per-merchant", action="store_true",
                   help="one row per merchant, period and metric: its value and percentile within its group")
    p.set_defaults(handler=_benchmarks_command)


def _benchmarks_command(args):
    from .benchmark_analysis import benchmarks, format_benchmarks

    inputs = [args.orders, args.merchants]
    try:
        if args.output:
            check_table_path(args.output, inputs)  # before reading anything
        table = benchmarks(args.orders, args.merchants, by=args.by, period=args.period, metrics=args.metrics,
                           per_merchant=args.per_merchant, columns=args.columns, size_edges=args.size_edges,
                           refunds=args.refunds, engine=args.engine, threads=args.threads,
                           progress=not args.quiet, **_observation(args), timezone=args.timezone)
        _check_not_empty(table, args.orders)
        if args.output:
            write_table(table, args.output, inputs)
            print(f"wrote {table.num_rows} rows × {table.num_columns} columns to {args.output}", file=sys.stderr)
        else:
            print(format_benchmarks(table, args.by, args.currency or reporting_currency(args.orders)))
    except (LoyaltyMetricsError, ValueError, OSError) as e:
        check_stop()  # an error caused by SIGINT/SIGTERM is reported as the interruption
        print(f"loyaltymetrics: error: {e}", file=sys.stderr)
        return 1
    return 0


def _add_rfm_parser(sub):
    p = sub.add_parser("rfm", help="frequency, recency, T, monetary value per store-customer (SPEC §9)",
                       description="One row per store-customer, as lifetimes' summary_data_from_transaction_data; "
                                   "streamed to Parquet, CSV or JSON.")
    p.add_argument("orders", metavar="ORDERS", help="sorted orders: .arrow file, Parquet file or directory")
    p.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="OUT.parquet, OUT.csv or OUT.json (an array of row objects)")
    p.add_argument("--freq", choices=("D", "W", "M"), default="D", help="days, weeks (Mon-Sun) or months (default: D)")
    p.add_argument("--observation-end", metavar="DATE",
                   help="ISO date (UTC) of the observation end (default: the latest order)")
    p.add_argument("--include-first-transaction", action="store_true",
                   help="count the first period in frequency and monetary_value")
    p.add_argument("--calibration-end", metavar="DATE",
                   help="ISO date or datetime (UTC): summarize orders up to it and add frequency_holdout, "
                        "monetary_value_holdout, duration_holdout (lifetimes' calibration_and_holdout_data)")
    p.add_argument("--columns", type=_columns, metavar="NAME=COL,...",
                   help="map canonical names to the input's, e.g. amount=total_cents,order_ts=created_at")
    p.add_argument("--engine", choices=ENGINES, default="cython", help="kernel (default: cython)")
    p.add_argument("--threads", type=_positive_int, metavar="N", help="threads scanning chunks (default: the usable CPUs)")
    p.add_argument("--merchants", metavar="FILE",
                   help="merchants table (Parquet, Arrow or CSV) whose timezone column gives each merchant's "
                        "local days and months (SPEC §3)")
    p.add_argument("--timezone", type=_zone, default=None, metavar="ZONE",
                   help="IANA time zone of the local days and months of every store without a timezone in "
                        "--merchants (default: UTC)")
    _add_unsorted(p)
    _add_quiet(p)


def _rfm(args):
    from .rfm_summary import check_rfm_path, rfm, write_rfm

    inputs = [args.orders] + ([args.merchants] if args.merchants else [])
    check_rfm_path(args.output, inputs)  # before reading anything
    reader = rfm(args.orders, args.freq, args.observation_end, args.include_first_transaction,
                 calibration_end=args.calibration_end, columns=args.columns, engine=args.engine,
                 threads=args.threads, progress=not args.quiet, merchants=args.merchants, **_timezone(args),
                 **_unsorted(args))
    rows = write_rfm(reader, args.output, inputs=inputs)
    print(f"wrote {rows:,} store-customers to {args.output}", file=sys.stderr)
    return 0


def _add_clv_parser(sub):
    p = sub.add_parser(
        "clv", help="predictive CLV: BG/NBD and Gamma-Gamma fits per group, predictions per store-customer (SPEC §11)",
        description="Fit BG/NBD and Gamma-Gamma per group (as lifetimes does) and predict expected orders, "
                    "probability alive, expected spend and discounted CLV per store-customer.")
    p.add_argument("orders", metavar="ORDERS", help="sorted orders (.arrow, Parquet file or directory), "
                   "or with --rfm-table an RFM table (frequency, recency, T, monetary_value)")
    p.add_argument("--rfm-table", action="store_true",
                   help="ORDERS is a ready RFM table (Parquet, Arrow or CSV), not order rows")
    p.add_argument("--merchants", metavar="FILE", help="merchants table, for --by industry/country")
    p.add_argument("--by", type=_csv_list, default=[], metavar="KEYS",
                   help=f"comma-separated group keys from {', '.join(GROUP_KEYS)} (default: one fit over everything)")
    p.add_argument("--freq", choices=("D", "W", "M"), default="D", help="time unit: days, weeks, months (default: D)")
    p.add_argument("--observation-end", metavar="DATE", help="ISO date (UTC) of the observation end (default: the latest order)")
    p.add_argument("--horizon", type=_positive_int, default=12, metavar="MONTHS",
                   help="months ahead for expected orders and CLV (default: 12)")
    p.add_argument("--discount-rate", type=float, default=0.01, metavar="R", help="monthly discount rate (default: 0.01)")
    p.add_argument("--penalizer", type=float, default=0.0, metavar="X",
                   help="L2 penalizer coefficient of the BG/NBD fit (default: 0; 0.001 tames a fit that runs off "
                        "to infinity)")
    p.add_argument("--spend-penalizer", type=float, default=0.0, metavar="X",
                   help="L2 penalizer coefficient of the Gamma-Gamma fit (default: 0; it weighs v in minor units)")
    p.add_argument("--min-customers", type=_positive_int, default=10, metavar="N",
                   help="fewer customers in a group is a too_few_customers status (default: 10)")
    p.add_argument("-o", "--output", metavar="OUT", help="predictions to OUT.parquet or OUT.csv")
    p.add_argument("--params-out", metavar="FILE", help="per-group parameters to FILE.json, .csv or .parquet")
    p.add_argument("--columns", type=_columns, metavar="NAME=COL,...",
                   help="map canonical names to the input's, e.g. amount=total_cents,order_ts=created_at")
    p.add_argument("--engine", choices=ENGINES, default="cython", help="kernel (default: cython)")
    p.add_argument("--threads", type=_positive_int, metavar="N", help="threads scanning chunks (default: the usable CPUs)")
    _add_quiet(p)
    p.set_defaults(handler=_clv_command)


def _clv_command(args):
    from .clv import clv, write_params, write_predictions

    inputs = [args.orders] + ([args.merchants] if args.merchants else [])
    try:
        source = dict(summary=args.orders) if args.rfm_table else dict(orders=args.orders)
        result = clv(merchants=args.merchants, by=args.by, freq=args.freq, observation_end=args.observation_end,
                     horizon=args.horizon, discount_rate=args.discount_rate, penalizer_coef=args.penalizer,
                     spend_penalizer_coef=args.spend_penalizer,
                     min_customers=args.min_customers, columns=args.columns, engine=args.engine,
                     threads=args.threads, progress=not args.quiet, **source)
        print(_format_clv_params(result.params))
        if args.params_out:
            write_params(result.params, args.params_out, inputs)
            print(f"wrote {result.params.num_rows} groups' parameters to {args.params_out}", file=sys.stderr)
        if args.output:
            rows = write_predictions(result.predictions(), args.output, inputs)
            print(f"wrote {rows:,} predictions to {args.output}", file=sys.stderr)
    except (LoyaltyMetricsError, ValueError, OSError) as e:
        print(f"loyaltymetrics: error: {e}", file=sys.stderr)
        return 1
    return 0


def _format_clv_params(table):
    """The per-group fits as a terminal table: keys, customers, statuses, parameters, log-likelihoods."""
    shown = [c for c in table.column_names if not c.endswith(("_message", "_converged", "_iterations"))]
    text = _format_rows(table.select(shown))
    notes = []
    for row in table.to_pylist():
        for model in ("bgnbd", "gamma_gamma"):
            if row[f"{model}_status"] != "ok":
                keys = ", ".join(f"{k}={row[k]}" for k in table.column_names[:table.column_names.index("customers")])
                notes.append(f"{keys or 'all'}: {model} {row[f'{model}_status']}: {row[f'{model}_message']}")
    return "\n".join([text, *notes])


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
    _add_timezone(p)
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
    _add_observation_options(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--year", type=int, metavar="YYYY",
                       help="headline this year (with --period quarter/month: its latest complete period) "
                            "instead of the latest complete period")
    which.add_argument("--period-start", type=_iso_date, metavar="DATE",
                       help="headline the period starting on DATE (YYYY-MM-DD, e.g. 2024-01-01) "
                            "instead of the latest complete period")
    p.add_argument("--merchant", metavar="NAME|ID",
                   help="write one merchant's scorecard instead: its metrics, YoY and percentile within its "
                        "industry x size group (a merchant_id, or a name from the merchants table)")
    _add_currency(p)
    _add_quiet(p)


def _report(args):
    from .html_report import report

    try:
        report(args.orders, args.merchants, args.output, period=args.period, title=args.title, top=args.top,
               columns=args.columns, size_edges=args.size_edges, refunds=args.refunds, engine=args.engine,
               threads=args.threads, year=args.year, period_start=args.period_start, currency=args.currency,
               progress=not args.quiet, merchant=args.merchant, **_observation(args), **_timezone(args))
    except ImportError as e:  # matplotlib missing: say what to install, without a traceback
        print(f"loyaltymetrics: error: {e}", file=sys.stderr)
        return 1
    if not args.quiet:
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
    print(format_summary(table, ["industry", "size"]))
    return 0


# --- generate ------------------------------------------------------------------

def _rows(text):
    from .synthetic import parse_rows

    return _parsed(text, parse_rows)


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
        check_stop()  # an error caused by SIGINT/SIGTERM is reported as the interruption
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
        "prepare", help="turn raw order exports (Shopify, WooCommerce, CSV or Parquet) into sorted orders",
        description="Convert raw order exports into the canonical layout (SPEC §2, §10): one row per real "
                    "order (line items merged, cancelled/voided/failed/test/refunded orders and guests "
                    "excluded by reason, partial refunds netted), integer ids (mappings written beside the "
                    "output), int64 cents, UTC timestamps, sorted out of core with DuckDB. Every row is "
                    "written, excluded or rejected with a reason; nothing is dropped silently. Exits 1 when "
                    "no order is written or rejects pass --max-rejects.",
        epilog="examples:\n  loyaltymetrics prepare 'exports/*_orders.csv' -o orders.arrow --format shopify "
               "--merchant-from-filename '^(.+)_orders' --currency USD --fx rates.csv --reward-codes 'LOYAL-*'\n"
               "  loyaltymetrics prepare export.csv -o orders.arrow "
               "--columns merchant_id=shop,customer_id=email,order_ts=created_at,amount=total,reward=discount_used",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("raw", nargs="+", metavar="RAW",
                   help="the exports: CSV files, Parquet files, directories of Parquet files or globs")
    p.add_argument("-o", "--output", required=True, metavar="ORDERS.arrow", help="the sorted Arrow IPC file to write")
    p.add_argument("--format", choices=("generic", "shopify", "woocommerce"), default="generic",
                   help="which columns to read and how to read statuses (default: generic, by --columns)")
    p.add_argument("--columns", type=_columns, metavar="ROLE=COL,...",
                   help="map roles to the export's columns, e.g. customer_id=email,order_id=order_number "
                        "(roles: merchant_id, customer_id, order_ts, amount, reward, order_id, status, refunded, "
                        "currency, discount_code, cancelled_at, test)")
    p.add_argument("--merchant", metavar="NAME", help="the merchant key of every row (one shop's export)")
    p.add_argument("--merchant-from-filename", metavar="REGEX",
                   help="the merchant key is the first group of REGEX searched in each file's name")
    p.add_argument("--keep-guests", action="store_true",
                   help="keep orders without a customer key, each as a one-order customer (default: excluded)")
    p.add_argument("--reward-codes", metavar="PATTERN",
                   help="orders whose discount code matches are reward orders: a glob (LOYAL-*) or re:REGEX")
    p.add_argument("--currency", metavar="CODE", help="the reporting currency, e.g. USD")
    p.add_argument("--fx", metavar="RATES", help="FX rates (CSV/Parquet: currency,rate[,date]) into --currency")
    p.add_argument("--merchants", metavar="FILE",
                   help="merchants table keyed by the raw merchant key; written as ORDERS_merchants.parquet "
                        "keyed by the new ids, with the raw key as name")
    p.add_argument("--refunds", action="store_true", help="keep negative amounts (refund rows) instead of rejecting them")
    p.add_argument("--rejects", metavar="FILE", help="also write rejected rows with their reason to FILE (.csv or .parquet)")
    p.add_argument("--max-rejects", default="0.01", metavar="N|FRACTION",
                   help="exit 1 when more rows than this are rejected: a count or a fraction of the rows read "
                        "(default: 0.01)")
    p.add_argument("--timezone", default="UTC", metavar="ZONE",
                   help="zone of timestamps written without one, e.g. Europe/Berlin (default: UTC)")
    p.add_argument("--amount-unit", choices=("major", "minor"), default="major",
                   help="amounts in major units (dollars, the default) or already in minor units (cents)")
    p.add_argument("--memory-limit", default="4GB", metavar="SIZE",
                   help="memory the sort may use before spilling to disk (default: 4GB)")
    p.add_argument("--temp-directory", metavar="DIR", help="where the sort spills (default: beside the output)")
    p.add_argument("--threads", type=int, metavar="N", help="threads for the sort (default: all cores)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar; the report shows only problems")
    p.set_defaults(handler=_prepare_command)


def _prepare_command(args):
    from .convert import parse_max_rejects, prepare

    try:
        max_rejects = parse_max_rejects(args.max_rejects)
        report = prepare(args.raw, args.output, columns=args.columns, format=args.format, merchant=args.merchant,
                         merchant_from_filename=args.merchant_from_filename, refunds=args.refunds,
                         rejects=args.rejects, timezone=args.timezone, amount_unit=args.amount_unit,
                         currency=args.currency, fx=args.fx, keep_guests=args.keep_guests,
                         reward_codes=args.reward_codes, merchants=args.merchants,
                         memory_limit=args.memory_limit, temp_directory=args.temp_directory,
                         threads=args.threads, progress=not args.quiet)
    except (LoyaltyMetricsError, ValueError, OSError, MemoryError) as e:
        print(f"loyaltymetrics: error: {e}", file=sys.stderr)
        return 1
    problem = report.problem(max_rejects)
    # Rejects, exclusions and warnings are always reported: never a silent drop.
    if not args.quiet or report.rows_rejected or report.rows_excluded or report.warnings or problem:
        print(report.summary(), file=sys.stderr)
    if problem:
        print(f"loyaltymetrics: error: {problem}", file=sys.stderr)
        return 1
    return 0


TABLE_SUFFIXES = (".parquet", ".csv", ".json")


def check_table_path(path, inputs=()):
    """Refuse, before any work, an output path with an unknown suffix or that is one of ``inputs``."""
    check_output_path(path, inputs)
    if Path(path).suffix.lower() not in TABLE_SUFFIXES:
        raise ValueError(f"cannot tell the output format of {str(path)!r}: use a .parquet, .csv or .json suffix")


def write_table(table, path, inputs=()):
    """Write ``table`` as Parquet, CSV or JSON, chosen by the file's suffix.

    Written through :func:`outputs.atomic_output`: an output that is one of
    ``inputs`` is refused, and a failure leaves an earlier file as it was.
    """
    check_table_path(path, inputs)
    suffix = Path(path).suffix.lower()
    # Imported before the temporary file exists: no import runs while it does.
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    with atomic_output(path, inputs) as tmp:
        if suffix == ".parquet":
            pq.write_table(table, str(tmp))
        elif suffix == ".csv":
            pacsv.write_csv(table, str(tmp))
        else:
            rows = table.to_pylist()
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(rows, f, default=str, indent=1)
                f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
