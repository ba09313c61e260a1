"""``prepare()``: raw order exports → the canonical sorted layout (SPEC §2, §10).

``prepare`` is where the meaning of a raw export is settled, so that
``compute`` sees one row per real order:

1. **Stage** (a chunk of up to ``CHUNK_ROWS`` rows at a time): each file —
   CSV, a Parquet file or a directory of Parquet files, many files and
   globs — is read in record batches; the columns a format reads
   (``--format shopify|woocommerce|generic``, ``--columns``) are parsed
   with exact casts (amounts to decimals, timestamps to UTC microseconds
   after a strict check of their form) into the DuckDB table
   ``staged_rows``, each row with the reason it is rejected, if any. The
   raw values of rejected rows (only of those) are kept as text for the
   report and the rejects file. With an order key, rows without the order
   total (line items) keep only their keys, in the narrow table ``items``;
   the view ``staged`` shows both as one row per raw row.
2. **Orders** (one SQL pass): rows sharing an order key are one order, its
   fields from the row that carries the order total; the other rows are
   line items. Cancelled, voided, failed, test and fully refunded orders and
   guest checkouts are excluded by reason; partial refunds are netted;
   several currencies are converted with ``fx`` or refused.
3. **Map and sort**: merchants get integer ids in the natural order of their
   keys (``shop-2`` before ``shop-10``), customers in the order of their
   keys; rows are sorted by ``(merchant_id, customer_id, order_ts, original
   row)`` with DuckDB's external sort under ``memory_limit`` and streamed
   into an uncompressed Arrow IPC file.

Every output is written through :func:`loyaltymetrics.outputs.atomic_output`
(id mappings and rejects hold e-mails: mode 0600). Nothing is lost
silently: read = written + excluded + rejected, by reason.

Amounts are exact: text and decimals are read as decimals, floats through
their shortest decimal representation (0.285 is 0.285, not
0.28499999999999998); the net amount (total − refunded, × the FX rate) is
multiplied by 100 and rounded half away from zero (12.345 → 1235 cents,
-0.125 → -13), as SQL's ROUND and most commerce systems do.
"""
import glob as _glob
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import pyarrow as pa

from . import progress as _progress
from ._types import ColumnMap, Merchants, PathLike
from .errors import CorruptInputError, InputError, MissingDependencyError, ResourceError, SchemaError
from .outputs import atomic_output, check_not_input
from .synthetic import ORDERS_SCHEMA

BATCH_ROWS = 1 << 20
SLICE_ROWS = 1 << 16  # staged in slices of this many rows: the unit DuckDB's threads share out
CHUNK_ROWS = 1 << 21  # rows of a file held in memory and staged by one query
FILE_ROW_BITS = 40  # src_row = file index << 40 | row in the file: unique, in file order
TRUE_WORDS = ("true", "t", "yes", "y", "1")
FALSE_WORDS = ("false", "f", "no", "n", "0", "")
AMOUNT_UNITS = {"major": 100, "minor": 1}
FORMATS = ("generic", "shopify", "woocommerce")
CURRENCY_KEY = b"loyaltymetrics.currency"  # the output schema's metadata: the ISO code of its amounts
FAST_PATH = True  # False forces the general path (tests compare the two)

# Every column prepare can read ("roles"); the first four are required.
ROLES = ("merchant_id", "customer_id", "order_ts", "amount", "reward", "order_id", "status", "refunded",
         "currency", "discount_code", "cancelled_at", "test")
REQUIRED = ("customer_id", "order_ts", "amount")

# The columns each platform preset reads, by role: the first name present in the header wins
# (compared case-insensitively, surrounding spaces ignored). See the README for the sources.
PRESETS = {
    "generic": {role: (role,) for role in ROLES},
    "shopify": {
        "order_id": ("Name",),
        "customer_id": ("Email",),
        "order_ts": ("Created at",),
        "amount": ("Total",),
        "refunded": ("Refunded Amount",),
        "currency": ("Currency",),
        "status": ("Financial Status",),
        "cancelled_at": ("Cancelled at",),
        "discount_code": ("Discount Code",),
        "test": ("Payment Method",),
        "merchant_id": (),
        "reward": (),
    },
    "woocommerce": {
        "order_id": ("Order Number", "order_number", "Order ID", "order_id"),
        "customer_id": ("Billing Email", "billing_email", "Customer Email", "customer_email",
                        "E-mail (Billing)", "Email (Billing)"),
        "order_ts": ("Order Date", "order_date", "Date Created", "date_created"),
        "amount": ("Order Total", "Order Total Amount", "order_total"),
        "refunded": ("Order Refund", "Refunded", "Refund Amount", "Total Refunded", "refunded_total",
                     "order_refund"),
        "currency": ("Order Currency", "order_currency", "Currency"),
        "status": ("Order Status", "order_status", "status", "Status"),
        "discount_code": ("Coupon Code", "Coupons Used", "Coupon Codes", "coupon_code", "coupons_used",
                          "coupon_items", "Coupons"),
        "merchant_id": (),
        "reward": (),
        "cancelled_at": (),
        "test": (),
    },
}
# Status words (lower case, "wc-" prefix dropped, spaces and "_" as "-") → exclusion reason.
STATUS_WORDS = {
    "generic": {"cancelled": "cancelled", "canceled": "cancelled", "voided": "voided", "void": "voided",
                "failed": "failed", "test": "test", "refunded": "refunded_in_full"},
    "shopify": {"voided": "voided", "refunded": "refunded_in_full", "expired": "failed"},
    "woocommerce": {"cancelled": "cancelled", "canceled": "cancelled", "failed": "failed",
                    "refunded": "refunded_in_full", "pending": "unpaid", "pending-payment": "unpaid",
                    "checkout-draft": "unpaid", "draft": "unpaid", "trash": "cancelled"},
}
EXCLUSIONS = ("line_item", "refund_row", "test", "cancelled", "voided", "failed", "unpaid", "refunded_in_full",
              "guest_checkout")

# Timestamp text forms: ISO-8601 date, optional time (T or space), optional zone: Z, UTC, ±HH, ±HHMM,
# ±HH:MM, with or without a space before it (Shopify writes "2023-05-01 10:15:00 -0400").
TS_PATTERN = (r"^(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?))?"
              r" ?(Z|UTC|[+-]\d{2}(?::?\d{2})?)?$")
# The fixed-width forms exports write most (Shopify "2023-05-01 10:15:00 -0400", ISO-8601 with an offset
# or Z, naive "Y-m-d H:i:s"): one DFA match, then the date, time and zone by position — the same three
# parts TS_PATTERN's capture groups give for these strings, without RE2's slower submatch extraction.
TS_FIXED = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}( [+-]\d{4}|[+-]\d{2}:\d{2}|Z)?$"


HINTS = {
    "unparsable_reward": "reward must be a boolean; for a discount-code column use --reward-codes PATTERN",
    "unparsable_order_ts": "accepted: YYYY-MM-DD[ HH:MM[:SS[.f]]][ ±HH[:MM]|Z]; naive text is read in --timezone",
    "unparsable_amount": "accepted: plain decimal numbers such as 1234.50; no thousands separators or signs",
    "no_fx_rate": "add the currency to --fx RATES (currency,rate[,date])",
    "order_without_total": "no row of the order has its total (the amount column)",
}


class MixedCurrencyError(InputError):
    """Orders in more than one currency (or not in the reporting one) without FX rates to convert them."""


@dataclass
class Rejected:
    """Rows rejected (or excluded) for one reason: how many, and the first one (file, row, values)."""

    count: int = 0
    first_source: str = ""
    first_row: int = -1
    first_values: dict = field(default_factory=dict)

    def example(self):
        values = ", ".join(f"{k}={v!r}" for k, v in self.first_values.items())
        return f"{self.first_source}: row {self.first_row}: {values}"


@dataclass
class PrepareReport:
    """What ``prepare()`` read, wrote, excluded and rejected, and where it wrote it."""

    output: str
    merchant_ids: str
    customer_ids: str
    rejects: str | None
    rows_read: int
    rows_written: int
    rejected: dict        # reason -> Rejected
    merchants: int
    customers: int
    seconds: float
    excluded: dict = field(default_factory=dict)   # reason -> Rejected
    warnings: list = field(default_factory=list)
    merchants_table: str | None = None
    files: list = field(default_factory=list)
    likely_line_items: int = 0    # written rows that repeat (merchant, customer, order_ts) without an order key
    # The amounts' currency (--currency, else the orders' one currency), also in the output's schema metadata.
    currency: str | None = None

    @property
    def rows_rejected(self):
        return sum(r.count for r in self.rejected.values())

    @property
    def rows_excluded(self):
        return sum(r.count for r in self.excluded.values())

    def summary(self):
        lines = [
            f"read {self.rows_read:,} rows from {len(self.files)} file(s) = wrote {self.rows_written:,} orders to "
            f"{self.output} ({self.merchants:,} merchants, {self.customers:,} customers) + excluded "
            f"{self.rows_excluded:,} + rejected {self.rows_rejected:,}"
            + (f" (written to {self.rejects})" if self.rejects else ""),
        ]
        for title, table in (("excluded", self.excluded), ("rejected", self.rejected)):
            for reason, entry in sorted(table.items(), key=lambda item: -item[1].count):
                lines.append(f"  {title} {entry.count:,} {reason}; first: {entry.example()}")
                if reason in HINTS:
                    lines.append(f"    ({HINTS[reason]})")
        for warning in self.warnings:
            lines.append(f"  warning: {warning}")
        lines.append(f"id mappings: {self.merchant_ids}, {self.customer_ids}"
                     + (f"; merchants: {self.merchants_table}" if self.merchants_table else ""))
        return "\n".join(lines)

    def problem(self, max_rejects=0.01):
        """Why this run should count as failed (non-zero exit), or None.

        ``max_rejects``: a count (int ≥ 1) or a fraction of the rows read (float < 1).
        """
        if self.rows_written == 0:
            return (f"no order was written: all {self.rows_read:,} rows were rejected or excluded"
                    if self.rows_read else "no order was written: the export holds no rows")
        limit = max_rejects if max_rejects >= 1 else max_rejects * self.rows_read
        if self.rows_rejected > limit:
            share = self.rows_rejected / max(self.rows_read, 1)
            return (f"{self.rows_rejected:,} rows rejected ({share:.2%} of {self.rows_read:,}), more than "
                    f"--max-rejects {max_rejects:g}")
        if self.likely_line_items > limit:
            # Counted as orders, they would inflate orders, revenue and repeat rates: not a silent success.
            return (f"{self.likely_line_items:,} written rows repeat the merchant, customer and order_ts of "
                    f"another: likely line items, more than --max-rejects {max_rejects:g}; map the order key "
                    f"(--columns order_id=..., or --format shopify|woocommerce)")
        return None


def parse_max_rejects(text):
    """``--max-rejects``: a count ("100") or a fraction ("0.01", "1%")."""
    text = str(text).strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ValueError(f"--max-rejects expects a count or a fraction (e.g. 100, 0.01 or 1%), got {text!r}") from None
    if value < 0 or (value >= 1 and value != int(value)):
        raise ValueError(f"--max-rejects expects a count or a fraction below 1, got {text!r}")
    return value


def _duckdb():
    try:
        import duckdb
    except ImportError as e:
        raise MissingDependencyError(
            "prepare needs DuckDB for its out-of-core sort: pip install 'loyaltymetrics[prepare]' "
            "(or pip install duckdb)"
        ) from e
    return duckdb


def _sql_text(text):
    return str(text).replace("'", "''")


def prepare(raw: PathLike | Sequence[PathLike], output: PathLike, *, columns: ColumnMap | None = None,
            format: Literal["generic", "shopify", "woocommerce"] = "generic", merchant: str | None = None,
            merchant_from_filename: str | None = None, refunds: bool = False, rejects: PathLike | None = None,
            timezone: str = "UTC", amount_unit: Literal["major", "minor"] = "major", currency: str | None = None,
            fx: PathLike | None = None, keep_guests: bool = False, reward_codes: str | None = None,
            merchants: Merchants | None = None, memory_limit: str = "4GB", temp_directory: PathLike | None = None,
            threads: int | None = None, progress: bool = False) -> PrepareReport:
    """Convert raw order exports into the canonical sorted Arrow IPC file (SPEC §2, §10).

    Parameters
    ----------
    raw : path, glob, or a list of them
        CSV files (header row; ``.csv``, ``.tsv`` or ``.txt``), Parquet files, directories of Parquet
        files, or glob patterns (``exports/*.csv``), read in sorted path order. Rows in any order.
    output : path
        The Arrow IPC file to write: ``merchant_id`` int32, ``customer_id`` int64, ``order_ts``
        timestamp[us, UTC], ``amount`` int64 cents, ``reward`` bool, sorted. Beside it,
        ``<stem>_merchant_ids.parquet`` and ``<stem>_customer_ids.parquet`` map the original keys
        (``merchant_key``, ``customer_key``) to the integer ids.
    columns : dict, optional
        Role → the export's column name, overriding the format's choice, e.g. ``{"customer_id":
        "email", "order_id": "order_number"}``. Roles: merchant_id, customer_id, order_ts, amount,
        reward, order_id, status, refunded, currency, discount_code, cancelled_at, test.
    format : {"generic", "shopify", "woocommerce"}
        Which columns to read and how to read statuses (README, "loyaltymetrics prepare").
    merchant, merchant_from_filename : str, optional
        The merchant key for every row (a constant), or a regular expression whose first group,
        searched in each file's name, is the merchant key. Otherwise the ``merchant_id`` column.
    refunds : bool
        Keep negative amounts (refund rows, SPEC §2); by default they are rejected.
    rejects : path, optional
        Also write the rejected rows (``file``, ``row``, ``reason``, the raw line of a malformed CSV
        row and the raw values as text) as CSV or Parquet, by the suffix (mode 0600).
    timezone : str
        Zone of timestamps written without one (naive text or timestamps, dates); default UTC.
    amount_unit : {"major", "minor"}
        Amounts in major units (dollars: × 100) or already in minor units (cents).
    currency : str, optional
        The reporting currency. Orders in another currency need ``fx``.
    fx : path, optional
        FX rates (CSV or Parquet): ``currency``, ``rate`` (units of the reporting currency per unit),
        optionally ``date`` (a rate applies from its date, UTC, until the next one).
    keep_guests : bool
        Keep orders without a customer key, each as a one-order customer of its own.
    reward_codes : str, optional
        Orders whose discount code matches are reward orders: a glob (``LOYAL-*``) or, prefixed with
        ``re:``, a regular expression; matched case-insensitively against each code of the order.
    merchants : path, optional
        A merchants table keyed by the raw merchant key (``merchant_id``); written beside the output
        as ``<stem>_merchants.parquet`` keyed by the new ids, with the raw key as ``name``.
    memory_limit, temp_directory, threads
        DuckDB's limits; ``temp_directory`` defaults to a fresh directory beside ``output``.
    progress : bool
        Show a progress bar with rows/s on stderr (when it is a terminal).

    Returns
    -------
    PrepareReport
        Rows read = written + excluded + rejected, by reason with the first example of each.
    """
    started = time.perf_counter()
    duckdb = _duckdb()
    if amount_unit not in AMOUNT_UNITS:
        raise ValueError(f"amount_unit must be 'major' or 'minor'; got {amount_unit!r}")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {format!r}")
    if merchant is not None and merchant_from_filename is not None:
        raise ValueError("give the merchant as a constant (--merchant) or from file names "
                         "(--merchant-from-filename), not both")
    if (merchant is not None or merchant_from_filename is not None) and "merchant_id" in (columns or {}):
        raise ValueError("the merchant comes from --merchant/--merchant-from-filename or from a column, not both")
    filename_re = _filename_regex(merchant_from_filename)
    code_re = _code_regex(reward_codes)
    if fx is not None and not currency:
        raise ValueError("--fx converts into the reporting currency: name it with --currency")
    columns = dict(columns or {})
    unknown = set(columns) - set(ROLES)
    if unknown:
        raise ValueError(f"columns= maps unknown names {sorted(unknown)}; the roles are {', '.join(ROLES)}")
    if len(set(columns.values())) < len(columns):
        twice = sorted({v for v in columns.values() if list(columns.values()).count(v) > 1})
        raise ValueError(f"columns= reads the export's column(s) {twice} in more than one role")
    files = _raw_files(raw)
    if len(files) >= 1 << (60 - FILE_ROW_BITS):  # src_row (file index << 40 | row) stays below 2**60
        raise ValueError(f"prepare reads at most {(1 << (60 - FILE_ROW_BITS)) - 1:,} files at once; got {len(files):,}")
    output = Path(output)
    merchant_ids = output.with_name(output.stem + "_merchant_ids.parquet")
    customer_ids = output.with_name(output.stem + "_customer_ids.parquet")
    merchants_out = output.with_name(output.stem + "_merchants.parquet") if merchants else None
    inputs = [str(f) for f in files] + [str(p) for p in (merchants, fx) if p]
    outs = [os.path.realpath(p) for p in (output, merchant_ids, customer_ids, rejects, merchants_out) if p]
    if len(set(outs)) < len(outs):
        raise ValueError("two outputs of prepare would be the same file (e.g. --rejects is the output): "
                         "give each its own path")
    for path, what in ((output, "output"), (merchant_ids, "merchant id mapping"),
                       (customer_ids, "customer id mapping"), (rejects, "rejects file"),
                       (merchants_out, "merchants output")):
        if path is not None:
            check_not_input(path, inputs, what)
    scale = AMOUNT_UNITS[amount_unit]
    fx_table = _read_fx(fx, currency) if fx is not None else None
    merchants_table = _read_merchants_by_key(merchants) if merchants else None

    own_temp = temp_directory is None
    work = Path(tempfile.mkdtemp(prefix=".prepare-", dir=output.parent if own_temp else temp_directory))
    options = _Options(
        started=started, work=work, files=files, inputs=inputs, scale=scale, format=format, columns=columns,
        merchant=merchant, filename_re=filename_re, code_re=code_re, refunds=refunds, timezone=timezone,
        currency=currency, fx_table=fx_table, keep_guests=keep_guests, memory_limit=memory_limit,
        threads=threads, progress=progress, output=output, merchant_ids=merchant_ids, customer_ids=customer_ids,
        rejects=rejects, merchants=merchants, merchants_table=merchants_table, merchants_out=merchants_out)
    try:
        if FAST_PATH:  # exports that need none of the SQL below, same outputs: typed warehouse Parquet
            from . import csvprep, fastprep   # (fastprep.py) and CSV exports with an order key (csvprep.py)

            for fast in (fastprep.prepare_fast, csvprep.prepare_csv):
                report = fast(options)
                if report is not None:
                    return report
        # In memory, spilling to temp_directory past memory_limit: no database file to checkpoint.
        con = duckdb.connect(":memory:")
        try:
            return _run(con, duckdb, options)
        except duckdb.OutOfMemoryException as e:
            raise ResourceError(
                None, None, f"prepare ran out of memory under memory_limit={memory_limit!r} (the input is not at fault): "
                f"raise --memory-limit or free memory. DuckDB: {str(e).splitlines()[0]}") from e
        finally:
            con.close()
    except MemoryError as e:
        if isinstance(e, ResourceError):
            raise
        raise ResourceError(None, None, f"prepare ran out of memory (the input is not at fault): {e}") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class _Options:
    """prepare()'s arguments, checked, and the values derived from them: what _run needs."""

    started: float
    work: Path
    files: list
    inputs: list
    scale: int
    format: str
    columns: dict
    merchant: str | None
    filename_re: object
    code_re: str | None
    refunds: bool
    timezone: str
    currency: str | None
    fx_table: object
    keep_guests: bool
    memory_limit: str
    threads: int | None
    progress: bool
    output: Path
    merchant_ids: Path
    customer_ids: Path
    rejects: object
    merchants: object
    merchants_table: object
    merchants_out: Path | None


def _run(con, duckdb, a):
    """The body of prepare() on an open DuckDB connection."""
    files = a.files
    settings = [("memory_limit", a.memory_limit), ("temp_directory", str(a.work / "spill")),
                ("preserve_insertion_order", "false"), ("TimeZone", a.timezone)]
    if a.threads:
        settings.append(("threads", int(a.threads)))
    for name, value in settings:
        try:
            con.execute(f"SET {name} = '{_sql_text(value)}'")
        except duckdb.Error as e:
            raise ValueError(f"bad {name} {value!r}: {e}") from e
    try:
        con.execute("SELECT 1").fetchall()
    except duckdb.Error as e:
        raise ResourceError(None, None, f"DuckDB cannot run under memory_limit={a.memory_limit!r}: {e}") from e

    stage = _Stage(con, a.format, a.columns, a.merchant, a.filename_re, a.refunds, a.scale, a.code_re,
                   a.timezone, keep_net=a.fx_table is not None)
    with _progress.bar(None, a.progress, desc="prepare: read") as bar:
        for file_idx, path in enumerate(files):
            stage.read_file(file_idx, path, bar)
    if not stage.created:
        raise InputError(str(files[0]), None, "no rows and no header: nothing to prepare")

    currency = _classify(con, stage, a.keep_guests, a.fx_table, a.currency, a.scale)
    rejected, excluded, written, rows_read = _accounts(con, stage, files)
    n_merchants, n_customers = _write_mappings(con, stage, a.merchant_ids, a.customer_ids, a.inputs,
                                               a.keep_guests)
    # Without an order key and without guests, rows sharing (merchant, customer, order_ts) are neighbours
    # in the sorted output: they are counted while it is written instead of by a hash aggregate.
    in_stream = not stage.has_order_any and not con.execute("SELECT count(*) FROM guest_map").fetchall()[0][0]
    duplicates = _Duplicates() if in_stream else None
    rows_written = _write_sorted(con, a.output, written, a.progress, a.inputs, duplicates, currency)
    warnings, likely_line_items = _warnings(con, stage, files, duplicates)
    assert rows_written == written
    merchants_table = None
    if a.merchants_table is not None:
        merchants_table = _write_merchants(con, a.merchants_table, a.merchants, a.merchants_out, a.inputs, warnings)
    if a.rejects:
        _write_rejects(con, stage, files, a.rejects, a.inputs)
    assert rows_read == rows_written + sum(r.count for r in rejected.values()) + \
        sum(r.count for r in excluded.values())
    return PrepareReport(
        output=str(a.output), merchant_ids=str(a.merchant_ids), customer_ids=str(a.customer_ids),
        rejects=str(a.rejects) if a.rejects else None, rows_read=rows_read, rows_written=rows_written,
        rejected=rejected, excluded=excluded, warnings=warnings, merchants=n_merchants, customers=n_customers,
        merchants_table=merchants_table, files=[str(f) for f in files], likely_line_items=likely_line_items,
        seconds=time.perf_counter() - a.started, currency=currency,
    )


def _filename_merchant(filename_re, name):
    """The merchant key ``--merchant-from-filename`` takes from a file name: its first group, or None."""
    found = filename_re.search(name)
    return found.group(1) if found and found.group(1) else None


def _filename_regex(pattern):
    if pattern is None:
        return None
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"--merchant-from-filename {pattern!r} is not a regular expression: {e}") from None
    if compiled.groups < 1:
        raise ValueError(f"--merchant-from-filename {pattern!r} needs a group, e.g. '^(.+?)_orders'")
    return compiled


def _code_regex(pattern):
    """A RE2 pattern matching one code: from a glob, or from ``re:REGEX``."""
    if pattern is None:
        return None
    if pattern.startswith("re:"):
        body = pattern[3:]
        try:
            re.compile(body)
        except re.error as e:
            raise ValueError(f"--reward-codes {pattern!r} is not a regular expression: {e}") from None
    else:
        body = "".join("[^,;|]*" if ch == "*" else "[^,;|]" if ch == "?" else re.escape(ch) for ch in pattern)
    return body


# --- reading -------------------------------------------------------------------

def _is_csv(path):
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PAR1":
        return False
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        return True
    if not head:
        raise CorruptInputError(str(path), None, "the file is empty")
    raise CorruptInputError(str(path), None, f"not a CSV (.csv/.tsv/.txt) or Parquet file (starts with {head!r})")


def _raw_files(raw):
    """The files to read: each item a file, a directory of Parquet files or a glob, in sorted order."""
    items = list(raw) if isinstance(raw, (list, tuple)) else [raw]
    if not items:
        raise ValueError("no raw export given")
    files = []
    for item in items:
        path = Path(item)
        if path.exists():
            if path.is_dir():
                found = sorted(p for p in path.rglob("*") if p.is_file()
                               and not any(part.startswith(("_", ".")) for part in p.relative_to(path).parts))
                if not found:
                    raise InputError(str(path), None, "the directory holds no files")
                if any(_is_csv(f) for f in found):
                    raise InputError(str(path), None, "a directory is read as Parquet files only; "
                                                      "pass CSV files by name or with a glob")
                files.extend(found)
            else:
                if not path.is_file():
                    raise InputError(str(path), None, "not a regular file (a FIFO or device cannot be read twice)")
                files.append(path)
        elif any(ch in str(item) for ch in "*?["):
            found = sorted(Path(p) for p in _glob.glob(str(item), recursive=True) if Path(p).is_file())
            if not found:
                raise FileNotFoundError(f"{item}: no file matches")
            files.extend(found)
        else:
            raise FileNotFoundError(f"{item}: no such file or directory")
    seen, unique = set(), []
    for f in files:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _csv_header(path, delimiter):
    """The header of a CSV file, read by itself (a first data row of any size does not matter)."""
    import csv

    with open(path, newline="", encoding="utf-8-sig", errors="strict") as f:
        try:
            header = next(csv.reader(f, delimiter=delimiter))
        except StopIteration:
            raise CorruptInputError(str(path), None, "the file is empty") from None
        except (csv.Error, UnicodeDecodeError) as e:
            raise CorruptInputError(str(path), None, f"cannot read the header: {e}") from None
    return header


def _delimiter(path):
    """A .tsv file's fields are tab-separated, any other text file's comma-separated."""
    return "\t" if path.suffix.lower() == ".tsv" else ","


def _csv_batches(path, invalid, names=None, block_size=16 << 20):
    """First the schema (every column as text), then the record batches of a CSV file.

    Rows pyarrow cannot parse are appended to ``invalid`` (its InvalidRow objects). With ``names``, only
    those columns are converted (every field is still parsed and counted). ``block_size``: the bytes
    pyarrow parses at a time (a row larger than a block is an error).
    """
    import pyarrow.csv as pacsv

    delimiter = _delimiter(path)
    header = _csv_header(path, delimiter)

    def skip(row):
        invalid.append(row)
        return "skip"

    reader = pacsv.open_csv(
        str(path),
        read_options=pacsv.ReadOptions(block_size=block_size, use_threads=True),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=skip),
        # Ids stay text ("007" is not 7); empty fields and the usual null markers are nulls.
        convert_options=pacsv.ConvertOptions(column_types={name: pa.string() for name in header},
                                             strings_can_be_null=True, include_columns=names),
    )
    yield reader.schema
    with reader:
        yield from reader


MAX_RECORD_LINES = 200  # a quoted value may span lines; an open quote spanning more is a stray one


def _csv_lines(path, malformed):
    """Careful reader for a CSV the fast parser could not number: a stray quote costs one line.

    A record may span physical lines only inside a properly closed quoted value (and at most
    ``MAX_RECORD_LINES``); otherwise its first line is malformed and reading resumes on the next
    line. Yields the schema, then record batches with a ``__row`` column (the record's index among
    the data records, malformed ones included). Malformed records go to ``malformed`` as
    (row, physical line, text).
    """
    import csv

    import pyarrow.csv as pacsv

    delimiter = _delimiter(path)
    null_values = set(pacsv.ConvertOptions().null_values)

    def parse(text):
        try:
            return "ok", next(csv.reader([text], delimiter=delimiter, strict=True))
        except csv.Error as e:
            return ("open" if "unexpected end of data" in str(e) else "bad"), None
        except StopIteration:
            return "ok", []

    def decoded(number, raw):
        raw = raw.rstrip(b"\r\n")
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            return number, raw.decode("utf-8"), True
        except UnicodeDecodeError:  # kept for the report, never read as data
            return number, raw.decode("utf-8", errors="backslashreplace"), False

    with open(path, "rb") as f:
        numbered = (decoded(number, raw) for number, raw in enumerate(f, start=1))
        _, header_text, _ = next(numbered)
        header = parse(header_text)[1] or []
        schema = pa.schema([(name, pa.string()) for name in header] + [("__row", pa.int64())])
        yield schema
        pushed = []

        def next_line():
            return pushed.pop() if pushed else next(numbered, None)

        rows, row_numbers, record = [], [], 0
        while True:
            first = next_line()
            if first is None:
                break
            used, text = [first], first[1]
            status, fields = parse(text) if first[2] else ("bad", None)
            while status == "open" and len(used) < MAX_RECORD_LINES:
                following = next_line()
                if following is None:
                    break
                used.append(following)
                if not following[2]:
                    status = "bad"
                    break
                text += "\n" + following[1]
                status, fields = parse(text)
            if status == "ok" and len(fields) == len(header):
                rows.append([None if v in null_values else v for v in fields])
                row_numbers.append(record)
            elif first[1] or len(used) > 1:
                malformed.append((record, first[0], first[1]))
                pushed.extend(reversed(used[1:]))  # read the swallowed lines again, each on its own
            else:
                continue  # a blank line is not a record
            record += 1
            if len(rows) >= 100_000:
                yield _rows_batch(schema, rows, row_numbers)
                rows, row_numbers = [], []
        if rows:
            yield _rows_batch(schema, rows, row_numbers)


def _rows_batch(schema, rows, line_numbers):
    columns = [pa.array([r[i] for r in rows], pa.string()) for i in range(len(schema) - 1)]
    return pa.RecordBatch.from_arrays(columns + [pa.array(line_numbers, pa.int64())], schema=schema)


def _parquet_batches(path):
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(str(path))
    yield parquet.schema_arrow
    yield from parquet.iter_batches(batch_size=BATCH_ROWS)


def _file_rows(invalid, first, n):
    """Row indices in the file of n delivered rows, skipping malformed CSV rows the reader dropped."""
    delivered = np.arange(first, first + n, dtype=np.int64)
    if not invalid:
        return delivered
    skipped = np.array(sorted(_malformed_row_index(r) for r in invalid), dtype=np.int64)
    # A delivered row d sits at file row d + (skipped rows before it).
    at = skipped - np.arange(len(skipped))
    return delivered + np.searchsorted(at, delivered, side="right")


def _malformed_row_index(invalid_row):
    # The reader numbers lines from 1 and the header is line 1: data row = line - 2.
    return (invalid_row.number or 0) - 2


def _is_text(t):
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t) or \
        (pa.types.is_dictionary(t) and (pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)))


def _kind(role, t):
    """How a column of Arrow type ``t`` is read in ``role``, or None if it cannot be."""
    if pa.types.is_null(t):
        return "null"
    if _is_text(t):
        return "text"
    if role in ("merchant_id", "customer_id", "order_id"):
        return "int" if pa.types.is_integer(t) else None
    if role in ("amount", "refunded"):
        if pa.types.is_integer(t) or pa.types.is_decimal(t):
            return "decimal"
        return "float" if pa.types.is_floating(t) else None
    if role in ("order_ts", "cancelled_at"):
        if pa.types.is_timestamp(t) or pa.types.is_date64(t):
            return "timestamp"
        return "date" if pa.types.is_date32(t) else None
    if role in ("reward", "test"):
        if pa.types.is_boolean(t):
            return "bool"
        return "int" if pa.types.is_integer(t) else None
    return None


def _normalise(role, kind, array):
    """Text of any flavour → text; keys → int64; typed timestamps → their integer values (checked in SQL)."""
    t = array.type
    if kind == "text" and t != pa.string():
        return array.cast(pa.string())
    if kind == "int" and role in ("merchant_id", "customer_id", "order_id") and t != pa.int64():
        return array.cast(pa.int64())  # uint64 beyond int64 fails here, named by the caller
    if kind == "timestamp":
        return array.view(pa.int64())  # out-of-range values are checked as integers, never converted blindly
    if kind == "date":
        return array.view(pa.int32())
    return array


def _item_columns(alias, src_row):
    """(name, expression) of each column of staged for a row of the narrow items table."""
    a = f"{alias}." if alias else ""
    return [("src_row", src_row), ("file_idx", f"CAST({src_row} >> {FILE_ROW_BITS} AS INTEGER)"),
            ("file_row", f"{src_row} & {(1 << FILE_ROW_BITS) - 1}"), ("merchant_key", f"{a}merchant_key"),
            ("has_order", "true"), ("order_key", f"{a}order_key"), ("customer_key", f"{a}customer_key"),
            ("ts_us", "NULL::BIGINT"), ("net", "NULL::DECIMAL(38, 16)"), ("cents", "NULL::BIGINT"),
            ("reward", "false"), ("currency", "NULL::VARCHAR"), ("excl", "NULL::VARCHAR"), ("is_carrier", "false"),
            ("reason", "NULL::VARCHAR"), ("neg", "false"), ("raw", "NULL::VARCHAR[]")]


# --- staging: parse every row, with the reason it is rejected ---------------------------

MAX_US = 9_214_646_400_000_000      # 2263-01-01 00:00:00 UTC in microseconds
SLACK_US = 3 * 86_400_000_000        # zone offsets move naive values by less than this
UNIT_US = {"s": 1_000_000, "ms": 1_000, "us": 1}


class _Stage:
    """Reads the files chunk by chunk into the DuckDB tables behind the view ``staged`` (one row per raw row)."""

    def __init__(self, con, fmt, columns, merchant, filename_re, refunds, scale, code_re, timezone="UTC",
                 keep_net=True):
        self.con, self.fmt, self.columns, self.timezone = con, fmt, columns, timezone
        self.keep_net = keep_net  # the exact net amount is staged only for FX conversion (cents otherwise)
        self.merchant, self.filename_re = merchant, filename_re
        self.refunds, self.scale, self.code_re = refunds, scale, code_re
        self.created = False
        self.key_kinds = {}
        self.names = {}            # file index -> {role: the export's column}
        self.roles = set()         # roles read from any file
        self.has_order_any = False
        self.sources = {}          # file index -> path
        self.simple_items = (0, None)  # (rows, least src_row) of the line items of simple orders (_classify)

    # -- tables --
    def _create(self):
        key = {"int": "BIGINT", "text": "VARCHAR", "null": "VARCHAR"}
        mtype = key[self.key_kinds.get("merchant_id", "text")]
        ctype = key[self.key_kinds.get("customer_id", "text")]
        self.con.execute(f"""
            CREATE TABLE staged_rows (src_row BIGINT, file_idx INTEGER, file_row BIGINT, merchant_key {mtype},
                                      has_order BOOLEAN, order_key VARCHAR, customer_key {ctype}, ts_us BIGINT,
                                      net DECIMAL(38, 16), cents BIGINT, reward BOOLEAN, currency VARCHAR,
                                      excl VARCHAR, is_carrier BOOLEAN, reason VARCHAR, neg BOOLEAN, raw VARCHAR[])""")
        # The rows of an order without its total (line items: most rows of a line-item export), not rejected:
        # only their keys are stored; every other column of theirs is a constant (_parse_sql, part "items").
        self.con.execute(f"CREATE TABLE items (src_row BIGINT, merchant_key {mtype}, order_key VARCHAR, "
                         f"customer_key {ctype})")
        # staged: one row per raw row. (An item's excl is null: no query reads the exclusion of a row without
        # the order total, which is a line item or rejected as order_without_total.)
        self.con.execute(f"""
            CREATE VIEW staged AS
            SELECT * FROM staged_rows
            UNION ALL
            SELECT {", ".join(f"{expr} AS {name}" for name, expr in _item_columns("", "src_row"))}
            FROM items""")
        # raw: a rejected row's raw values as text, by ROLES, or a malformed CSV row's [physical line number,
        # line]; one list column, null on every other row, costs less to stage than a column per value.
        malformed = "reason = 'malformed_csv_row'"
        values = ", ".join(f"CASE WHEN NOT {malformed} THEN raw[{i}] END AS raw_{role}"
                           for i, role in enumerate(ROLES, start=1))
        self.con.execute(f"""
            CREATE VIEW rejected_raw AS
            SELECT src_row, CASE WHEN {malformed} THEN CAST(raw[1] AS BIGINT) END AS line_number,
                   CASE WHEN {malformed} THEN raw[2] END AS line, {values}
            FROM staged_rows WHERE reason IS NOT NULL""")
        self.created = True

    # -- one file --
    def read_file(self, file_idx, path, bar):
        source = str(path)
        self.sources[file_idx] = source
        merchant = self.merchant
        if self.filename_re is not None:
            merchant = _filename_merchant(self.filename_re, path.name)
            if merchant is None:
                raise InputError(source, None, f"--merchant-from-filename {self.filename_re.pattern!r} does not "
                                               f"match the file name {path.name!r} (or its first group is empty)")
        is_csv = _is_csv(path)
        invalid = []
        try:
            if is_csv:  # the header alone decides the columns: every one is text
                header = _csv_header(path, _delimiter(path))
                kinds = self._select(file_idx, source, pa.schema([(n, pa.string()) for n in header]), merchant)
            else:
                batches = _parquet_batches(path)
                kinds = self._select(file_idx, source, next(batches), merchant)
            try:
                if is_csv:
                    # only the columns a role reads are converted and staged
                    batches = _csv_batches(path, invalid, sorted({name for name, _, _ in kinds.values()}))
                    next(batches)
                swallowed = self._stage_batches(file_idx, batches, kinds, merchant, invalid, bar, lines=False)
            except pa.ArrowInvalid as e:
                if not (is_csv and "utf8" in str(e).lower().replace("-", "")):
                    raise
                swallowed = True  # a line of invalid UTF-8: the careful reader rejects that line alone
            if is_csv and swallowed:
                # A stray quote made the parser read many lines as one field: read the file again,
                # line by line, so that one bad line costs one row.
                self.con.execute(f"DELETE FROM staged_rows WHERE file_idx = {file_idx}")
                self.con.execute(f"DELETE FROM items WHERE src_row >> {FILE_ROW_BITS} = {file_idx}")
                malformed = []
                batches = _csv_lines(path, malformed)
                next(batches)
                self._stage_batches(file_idx, batches, kinds, merchant, malformed, bar, lines=True)
        except (pa.ArrowInvalid, pa.ArrowIOError, pa.ArrowNotImplementedError, UnicodeDecodeError) as e:
            if isinstance(e, (FileNotFoundError, PermissionError)):
                raise
            raise CorruptInputError(source, None, f"cannot read: {e}") from e

    def _select(self, file_idx, source, schema, merchant):
        """{role: (the export's column, kind, arrow type)}; SchemaError for missing or unusable columns."""
        by_lower = {}
        for name in schema.names:
            by_lower.setdefault(name.strip().lstrip("\ufeff").lower(), name)
        preset = PRESETS[self.fmt]
        chosen = {}
        for role in ROLES:
            if role in self.columns:
                if self.columns[role] in schema.names:
                    chosen[role] = self.columns[role]
                continue
            for candidate in preset.get(role, ()):
                if candidate.lower() in by_lower:
                    chosen[role] = by_lower[candidate.lower()]
                    break
        if merchant is not None:
            chosen.pop("merchant_id", None)
        required = list(REQUIRED) + [r for r in self.columns if r not in REQUIRED]
        if merchant is None:
            required.insert(0, "merchant_id")
        missing = [r for r in dict.fromkeys(required) if r not in chosen and not (merchant is not None and r == "merchant_id")]
        if missing:
            wanted = [self.columns.get(r) or (preset.get(r) or (r,))[0] for r in missing]
            hint = (" (or give the merchant with --merchant / --merchant-from-filename)"
                    if "merchant_id" in missing else "")
            raise SchemaError(
                source, None,
                f"missing column(s) {', '.join(map(repr, wanted))}; the export has "
                f"{', '.join(map(repr, schema.names))} (map other names with columns={{...}} / --columns){hint}",
            )
        kinds = {}
        for role, name in chosen.items():
            label = repr(name) if name == role else f"{name!r} (read as {role})"
            if len(schema.get_all_field_indices(name)) > 1:
                raise SchemaError(source, None, f"column {label} appears more than once")
            t = schema.field(name).type
            kind = _kind(role, t)
            if kind is None:
                raise SchemaError(source, None, f"column {label} has type {t}, which prepare cannot read as {role}")
            if role in ("merchant_id", "customer_id") and kind != "null":
                earlier = self.key_kinds.setdefault(role, kind)
                if earlier != kind:
                    what = {"int": "an integer", "text": "text"}
                    raise SchemaError(source, None, f"column {label} is {what[kind]} here but "
                                                    f"{what[earlier]} in earlier files")
            kinds[role] = (name, kind, t)
        if merchant is not None:
            earlier = self.key_kinds.setdefault("merchant_id", "text")
            if earlier != "text":
                raise SchemaError(source, None, "merchant keys are text here (--merchant/--merchant-from-filename) "
                                                "but integers in earlier files")
        if not self.created:
            self._create()
        self.names[file_idx] = {role: name for role, (name, _, _) in kinds.items()}
        self.roles |= set(kinds)
        if "order_id" in kinds:
            self.has_order_any = True
        return kinds

    def _stage_batches(self, file_idx, batches, kinds, merchant, invalid, bar, lines):
        """Stage every batch of one file; return True if the CSV parser swallowed lines (stray quote).

        The batches are staged a chunk at a time (_insert_chunk); the raw values of the rows the parse
        rejects are kept in the same pass.
        """
        base = file_idx << FILE_ROW_BITS
        state = {"file_row": 0, "swallowed": False, "error": None}

        def slices():
            try:
                for batch in batches:
                    if lines:
                        rows = batch.column("__row").to_numpy()
                    else:
                        if any(r.number is None or "\n" in (r.text or "") for r in invalid):
                            state["swallowed"] = True
                            return
                        rows = _file_rows(invalid, state["file_row"], batch.num_rows)
                    state["file_row"] += batch.num_rows
                    arrays = {role: _normalise(role, kind, batch.column(name))
                              for role, (name, kind, _) in kinds.items()}
                    arrays["src_row"] = pa.array(base + rows, pa.int64())
                    arrays["file_row"] = pa.array(rows, pa.int64())
                    staged = pa.RecordBatch.from_pydict(arrays)
                    bar.update(batch.num_rows)
                    for start in range(0, staged.num_rows, SLICE_ROWS):
                        yield staged.slice(start, SLICE_ROWS)
            except Exception as e:  # raised again below, with its own type, not as a DuckDB error
                state["error"] = e

        stream = slices()
        first = next(stream, None)
        if state["error"] is not None:
            raise state["error"]
        if first is not None:
            # Staged a chunk at a time from an Arrow table in memory (not one INSERT reading a Python stream,
            # which DuckDB reads on one thread): every thread parses slices of the chunk.
            pending, n_pending = [first], first.num_rows
            for piece in stream:
                pending.append(piece if piece.schema.equals(first.schema) else piece.cast(first.schema))
                n_pending += piece.num_rows
                if n_pending >= CHUNK_ROWS:
                    self._insert_chunk(pending, first.schema, kinds, merchant, file_idx)
                    pending, n_pending = [], 0
            if pending:
                self._insert_chunk(pending, first.schema, kinds, merchant, file_idx)
            if state["error"] is not None:
                raise state["error"]
        if state["swallowed"] or (not lines and any(r.number is None or "\n" in (r.text or "") for r in invalid)):
            return True
        malformed = invalid if lines else [(_malformed_row_index(r), r.number, r.text) for r in invalid]
        if malformed:
            src = pa.array([base + row for row, _, _ in malformed], pa.int64())
            rows = pa.array([row for row, _, _ in malformed], pa.int64())
            table = pa.table({"src_row": src, "file_row": rows,
                              "line_number": pa.array([line for _, line, _ in malformed], pa.int64()),
                              "line": pa.array([text for _, _, text in malformed], pa.string())})
            self.con.register("bad_rows", table)
            try:
                self.con.execute(f"""INSERT INTO staged_rows (src_row, file_idx, file_row, has_order, is_carrier, reason,
                                                         neg, raw)
                                     SELECT src_row, {file_idx}, file_row, false, true, 'malformed_csv_row', false,
                                            [CAST(line_number AS VARCHAR), line]
                                     FROM bad_rows""")
            finally:
                self.con.unregister("bad_rows")
            bar.update(len(malformed))
        return False

    def _insert_chunk(self, pieces, schema, kinds, merchant, file_idx):
        """Parse and stage one chunk of a file's rows. With an order key, the rows carrying an order total
        and the others (line items, most rows of a line-item export) are parsed by two queries, each with
        the carrier test folded to a constant: a line item costs its keys, not the dozen parse expressions."""
        self.con.register("raw_batch", pa.Table.from_batches(pieces, schema=schema))
        try:
            if "order_id" in kinds and kinds["order_id"][1] != "null":
                self.con.execute(f"INSERT INTO staged_rows {self._parse_sql(kinds, merchant, file_idx, 'carriers')}")
                items = self._parse_sql(kinds, merchant, file_idx, "items")
                if isinstance(items, tuple):
                    # The keys of the items to the narrow table; those without a merchant or order key (rejected,
                    # rare) are staged in full instead.
                    self.con.execute(f"INSERT INTO items {items[0]}")
                    low = pieces[0].column("src_row")[0].as_py()
                    where = f"src_row >= {low} AND (merchant_key IS NULL OR order_key IS NULL)"
                    if self.con.execute(f"SELECT count(*) FROM items WHERE {where}").fetchall()[0][0]:
                        self.con.execute(f"INSERT INTO staged_rows {items[1]}")
                        self.con.execute(f"DELETE FROM items WHERE {where}")
                else:
                    self.con.execute(f"INSERT INTO staged_rows {items}")
            else:
                self.con.execute(f"INSERT INTO staged_rows {self._parse_sql(kinds, merchant, file_idx)}")
        finally:
            self.con.unregister("raw_batch")

    # -- the parse query of one file --
    def _parse_sql(self, kinds, merchant, file_idx, part=None):
        """The parse query of one file's rows (all of them, or with an order key ``part`` "carriers": those
        with an amount, or "items": the others)."""
        def has(role):
            return role in kinds and kinds[role][1] != "null"

        def kind(role):
            return kinds[role][1] if role in kinds else "null"

        # keys
        if merchant is not None:
            m = f"'{_sql_text(merchant)}'::VARCHAR"
        else:
            m = "merchant_id" if has("merchant_id") else "NULL"
        has_order = has("order_id")
        if has_order:
            o = "NULLIF(trim(order_id), '')" if kind("order_id") == "text" else "CAST(order_id AS VARCHAR)"
        else:
            o = "NULL::VARCHAR"
        if kind("customer_id") == "text":
            # c_lt, the e-mail form, is computed in an earlier projection (p0): as a branch of the CASE
            # it costs twice as much (DuckDB copies the long strings of a branch's result).
            c = _customer_key_sql("customer_id", "c_lt")
        elif kind("customer_id") == "int":
            c = "customer_id"
        else:
            c = "NULL"
        c_lt = f", {_email_sql('customer_id')} AS c_lt" if kind("customer_id") == "text" else ""
        carrier = "(amount IS NOT NULL)" if has_order else "true"
        source = "raw_batch"
        if has_order and part is not None:
            carrier = "true" if part == "carriers" else "false"
            source = f"raw_batch WHERE amount IS {'NOT ' if part == 'carriers' else ''}NULL"
            if part == "items" and kind("order_ts") in ("text", "null"):
                # What the full query gives a row without an amount, spelled out: no amount, time (text is
                # parsed on carriers only), flags or currency; rejected only for a missing key.
                excl = "CASE WHEN rv_cancelled_at IS NOT NULL THEN 'cancelled' END" if has("cancelled_at") else "NULL"
                carried = "".join(f", {role} AS rv_{role}" for role in ROLES if role in kinds)
                raw_values = ", ".join(f"CAST(rv_{role} AS VARCHAR)" if role in kinds else "NULL" for role in ROLES)
                keys = f"SELECT src_row, {m} AS m, {o} AS o, {c} AS c FROM (SELECT *{c_lt} FROM {source})"
                return keys, f"""
                    SELECT src_row, {file_idx} AS file_idx, file_row, m, true AS has_order, o, c, NULL AS ts_us,
                           NULL AS net, NULL AS cents, false AS reward, NULL AS cur, {excl} AS excl,
                           false AS is_carrier, reason, false AS neg,
                           CASE WHEN reason IS NOT NULL THEN [{raw_values}] END
                    FROM (SELECT *, CASE WHEN m IS NULL THEN 'null_merchant_id' WHEN o IS NULL THEN 'null_order_id'
                                    END AS reason
                          FROM (SELECT src_row, file_row, {m} AS m, {o} AS o, {c} AS c{carried}
                                FROM (SELECT *{c_lt} FROM {source} AND ({m} IS NULL OR {o} IS NULL))))"""
        # amounts
        amount_txt, dec, dbl = _amount_sql("amount", kind("amount"))
        refunded_txt, ref, _ = _amount_sql("refunded", kind("refunded"))
        # Fast exact path: amounts with at most as many decimals as the unit has (cents for major units)
        # also read as DECIMAL(15, k), 64-bit, where the net in minor units is a plain integer; the
        # DECIMAL(38, 16) rounding (128-bit division, most of the staging time) is left for the rest.
        digits = {100: 2, 1: 0}.get(self.scale)
        small_dec = _small_decimal_sql("amount", kind("amount"), digits)
        small_ref = _small_decimal_sql("refunded", kind("refunded"), digits) if has("refunded") else "0"
        p0 = [c_lt[2:]] if c_lt else []
        if amount_txt:
            p0.append(f"CASE WHEN {carrier} THEN {amount_txt} END AS amount_txt")
        if refunded_txt:
            p0.append(f"CASE WHEN {carrier} THEN {refunded_txt} END AS refunded_txt")
        if kind("order_ts") == "text":
            # ts_shape (pt): 1-4 for the fixed-width forms (read by position in _ts_sql), 0 for the rest,
            # which alone go through TS_PATTERN's capture groups.
            pt = (f"""CASE WHEN {carrier} THEN (CASE
                WHEN NOT regexp_full_match(order_ts, '{TS_FIXED}') THEN 0
                WHEN length(order_ts) = 19 THEN 1
                WHEN length(order_ts) = 20 THEN 2
                WHEN substr(order_ts, 20, 1) = ' ' THEN 3
                ELSE 4 END) END AS ts_shape""")
            p0.append("CASE WHEN ts_shape >= 3 THEN CAST(replace(trim(substr(order_ts, 20)), ':', '') AS BIGINT) "
                      "END AS ts_zone")
            p0.append(f"CASE WHEN ts_shape = 0 THEN regexp_extract(trim(order_ts), '{TS_PATTERN}', ['d', 't', 'z']) "
                      f"END AS tsp")
        else:
            pt = "NULL AS ts_shape"
        if has("status"):
            p0.append(f"CASE WHEN {carrier} THEN lower(trim(CAST(status AS VARCHAR))) END AS status_l")
        p0 = "".join(", " + e for e in p0)
        ref_bad = f"(refunded IS NOT NULL AND ({ref}) IS NULL)" if has("refunded") else "false"
        # timestamps
        ts_value, ts_unparsable = _ts_sql(kinds.get("order_ts"), utc=self.timezone.upper() in ("UTC", "ETC/UTC"))
        # flags
        reward, bad_reward = _bool_sql("reward", kind("reward"))
        if self.code_re is not None and has("discount_code"):
            reward = f"(({reward}) OR {_reward_code_sql(self.code_re, 'discount_code')})"
        if has("test") and self.fmt == "shopify" and "test" not in self.columns:
            test, bad_test = _test_payment_sql("test"), "false"
        else:
            test, bad_test = _bool_sql("test", kind("test"))
        cancelled = "(cancelled_at IS NOT NULL)" if has("cancelled_at") else "false"
        if has("status"):
            status = _status_sql(self.fmt, "status_l")   # status_l (p0): lower(trim(status))
        else:
            status = "NULL::VARCHAR"
        currency = _currency_sql("currency") if has("currency") else "NULL::VARCHAR"
        negative = "false" if self.refunds else "cents < 0"
        # The raw values, kept as text for the rows rejected (only those): for the report and the rejects file.
        carried = "".join(f", {role} AS rv_{role}" for role in ROLES if role in kinds)
        carried_on = "".join(f", rv_{role}" for role in ROLES if role in kinds)
        raw_values = ", ".join(f"CAST(rv_{role} AS VARCHAR)" if role in kinds else "NULL" for role in ROLES)
        return f"""
            WITH pt AS (SELECT *, {pt} FROM {source}),
            p0 AS (SELECT *{p0} FROM pt),
            p1a AS (
                SELECT src_row, file_row, {m} AS m, {o} AS o, {c} AS c,
                       {"order_ts" if "order_ts" in kinds else "NULL"} AS raw_ts,
                       {"amount" if "amount" in kinds else "NULL"} AS raw_amount,
                       {dec} AS dec, CASE WHEN ({dec}) IS NULL THEN {dbl} END AS dbl, {ref} AS ref,
                       {small_dec} AS dec_small, coalesce({small_ref}, 0) AS ref_small,
                       {ref_bad} AS ref_bad, {ts_value} AS ts_us,
                       CASE WHEN {carrier} THEN {reward} END AS reward_flag,
                       ({carrier} AND ({bad_reward})) AS bad_reward,
                       CASE WHEN {carrier} THEN {test} END AS test_flag, ({carrier} AND ({bad_test})) AS bad_test,
                       {cancelled} AS cancelled, CASE WHEN {carrier} THEN {status} END AS status_reason,
                       CASE WHEN {carrier} THEN {currency} END AS cur, {carrier} AS is_carrier{carried}
                FROM p0
            ), p1 AS (
                SELECT *, {ts_unparsable.replace("order_ts IS", "raw_ts IS")} AS ts_unparsable
                FROM p1a
            ), p2 AS (
                SELECT *, coalesce(abs(ref), 0) AS refunded_abs,
                       (coalesce(abs(ref), 0) > 0 AND coalesce(abs(ref), 0) >= dec) AS full_refund
                FROM p1
            ), p3 AS (
                SELECT *, CASE WHEN {_below_1e19("abs(dec)")} AND {_below_1e19("refunded_abs")} AND NOT full_refund
                               THEN dec - refunded_abs END AS net,
                       (CAST(dec_small AS DECIMAL(38, 16)) = dec
                        AND CAST(ref_small AS DECIMAL(38, 16)) = coalesce(ref, 0)) AS exact_small
                FROM p2
            ), p4 AS (
                SELECT *, CASE WHEN net IS NULL OR NOT {_below_1e19("abs(net)")} THEN NULL
                               WHEN exact_small THEN CAST(dec_small * {self.scale} AS BIGINT)
                                                     - CAST(abs(ref_small) * {self.scale} AS BIGINT)
                               ELSE TRY_CAST(ROUND(net * {self.scale}) AS BIGINT) END AS cents
                FROM p3
            ), p5 AS (
            SELECT src_row, {file_idx} AS file_idx, file_row, m, {str(has_order).lower()} AS has_order, o, c,
                   CASE WHEN ts_us >= 0 AND ts_us < {MAX_US} THEN ts_us END AS ts_us,
                   {"net" if self.keep_net else "NULL"} AS net, cents,
                   coalesce(reward_flag, false) AS reward,
                   cur,
                   CASE WHEN test_flag THEN 'test' WHEN cancelled THEN 'cancelled'
                        WHEN status_reason IS NOT NULL THEN status_reason
                        WHEN full_refund THEN 'refunded_in_full' END AS excl,
                   is_carrier,
                   CASE
                       WHEN m IS NULL THEN 'null_merchant_id'
                       WHEN {str(has_order).lower()} AND o IS NULL THEN 'null_order_id'
                       WHEN NOT is_carrier THEN NULL
                       WHEN raw_ts IS NULL THEN 'null_order_ts'
                       WHEN raw_amount IS NULL THEN 'null_amount'
                       WHEN dec IS NULL AND isfinite(dbl) THEN 'amount_out_of_range'
                       WHEN dec IS NULL THEN 'unparsable_amount'
                       WHEN ref_bad THEN 'unparsable_refunded_amount'
                       WHEN cents IS NULL AND NOT full_refund THEN 'amount_out_of_range'
                       WHEN {negative} THEN 'negative_amount'
                       WHEN ts_unparsable THEN 'unparsable_order_ts'
                       WHEN ts_us IS NULL OR ts_us < 0 OR ts_us >= {MAX_US} THEN 'order_ts_out_of_range'
                       WHEN bad_reward THEN 'unparsable_reward'
                       WHEN bad_test THEN 'unparsable_test'
                       WHEN {str(has('currency')).lower()} AND cur IS NULL THEN 'null_currency'
                   END AS reason,
                   coalesce(dec < 0, false) AS neg{carried_on}
            FROM p4)
            SELECT src_row, file_idx, file_row, m, has_order, o, c, ts_us, net, cents, reward, cur, excl, is_carrier,
                   reason, neg, CASE WHEN reason IS NOT NULL THEN [{raw_values}] END
            FROM p5
        """


def _amount_sql(column, kind):
    """(p0 expression of the checked text or None, exact DECIMAL(38,16) or NULL, DOUBLE for telling huge from
    unparsable) of an amount column. Text is checked once, in p0, as ``{column}_txt``."""
    if kind == "null":
        return None, "NULL::DECIMAL(38, 16)", "NULL::DOUBLE"
    if kind == "text":
        # DuckDB's decimal cast is strict (no thousands separators, signs, commas, hex, nan or inf) except
        # for digit-group underscores, which are refused here: "1_000" is not guessed to be 1000.
        checked = f"CASE WHEN NOT contains({column}, '_') THEN trim({column}) END"
        return checked, f"TRY_CAST({column}_txt AS DECIMAL(38, 16))", f"TRY_CAST({column}_txt AS DOUBLE)"
    if kind == "float":
        raw = f"CAST({column} AS VARCHAR)"  # shortest decimal that reads back as the same float
        return None, f"TRY_CAST({raw} AS DECIMAL(38, 16))", f"CAST({column} AS DOUBLE)"
    return None, f"TRY_CAST({column} AS DECIMAL(38, 16))", f"TRY_CAST({column} AS DOUBLE)"


def _small_decimal_sql(column, kind, digits):
    """The amount as DECIMAL(15, digits) (× 100 still fits 64 bits) — text or integers only, NULL where it does not fit. Text with
    more decimals is rounded by the cast: the caller uses it only where it equals the exact value."""
    if digits is None or kind not in ("text", "decimal"):
        return "NULL::BIGINT"
    if kind == "text":
        return f"TRY_CAST({column}_txt AS DECIMAL(15, {digits}))"
    return f"(CASE WHEN typeof({column}) LIKE '%INT%' THEN TRY_CAST({column} AS DECIMAL(15, {digits})) END)"


def _below_1e19(expr):
    """``expr < 1e19`` as DuckDB compares a DECIMAL(38, 16) with a DOUBLE literal (through a double), but
    decided exactly, without the conversion, where the value is far from the bound."""
    return f"(CASE WHEN {expr} < CAST('9000000000000000000' AS DECIMAL(38, 16)) THEN true ELSE {expr} < 1e19 END)"


def _ts_sql(spec, utc=False):
    """(UTC microseconds or NULL, unparsable?) of the order_ts column, by its kind."""
    if spec is None or spec[1] == "null":
        return "NULL::BIGINT", "false"
    _, kind, t = spec
    if kind == "text":
        # tsp: regexp_extract of TS_PATTERN, computed once in p0 (d is empty when the form is wrong)
        clock = "tsp.d || ' ' || coalesce(NULLIF(tsp.t, ''), '00:00:00')"
        zone = "tsp.z"
        zh = f"TRY_CAST(substr({zone}, 2, 2) AS INTEGER)"
        zm = f"(CASE WHEN length(replace({zone}, ':', '')) = 5 THEN TRY_CAST(right({zone}, 2) AS INTEGER) ELSE 0 END)"
        # Offsets are applied by arithmetic (no time-zone library on the hot path); only naive text needs
        # the session zone (--timezone), and UTC is the identity.
        wall = f"epoch_us(TRY_CAST({clock} AS TIMESTAMP))"
        naive = wall if utc else f"epoch_us(CAST(TRY_CAST({clock} AS TIMESTAMP) AS TIMESTAMPTZ))"
        # The fixed-width forms (ts_shape 1-4, digits checked by TS_FIXED): the same parts by position.
        # (the first 19 characters: DuckDB reads the date and time separated by "T" as by a space)
        fixed_clock = "left(order_ts, 19)"
        fixed_wall = f"epoch_us(TRY_CAST({fixed_clock} AS TIMESTAMP))"
        fixed_naive = fixed_wall if utc else f"epoch_us(CAST(TRY_CAST({fixed_clock} AS TIMESTAMP) AS TIMESTAMPTZ))"

        # Shapes 3 and 4 (" ±HHMM", "±HH:MM"): ts_zone (p0) is the offset as the integer ±HHMM.
        hours, minutes = "(abs(ts_zone) // 100)", "(abs(ts_zone) % 100)"
        zoned = (f"(CASE WHEN {hours} > 14 OR {minutes} > 59 THEN NULL ELSE {fixed_wall} - "
                 f"sign(ts_zone) * ({hours} * 3600 + {minutes} * 60) * 1000000 END)")

        value = f"""(CASE
            WHEN ts_shape = 1 THEN {fixed_naive}
            WHEN ts_shape = 2 THEN {fixed_wall}
            WHEN ts_shape >= 3 THEN {zoned}
            WHEN tsp.d IS NULL OR tsp.d = '' THEN NULL
            WHEN {zone} = '' THEN {naive}
            WHEN {zone} IN ('Z', 'UTC') THEN {wall}
            WHEN {zh} > 14 OR {zm} > 59 THEN NULL
            ELSE {wall} - (CASE WHEN left({zone}, 1) = '-' THEN -1 ELSE 1 END)
                          * (CAST({zh} AS BIGINT) * 3600 + {zm} * 60) * 1000000
        END)"""
        return value, "(order_ts IS NOT NULL AND ts_us IS NULL)"
    lo, hi = -SLACK_US, MAX_US + SLACK_US
    if kind == "date":
        day = 86_400_000_000
        us = f"(CASE WHEN order_ts BETWEEN {lo // day} AND {hi // day} THEN CAST(order_ts AS BIGINT) * {day} END)"
        naive = True
    else:
        unit = "ms" if pa.types.is_date64(t) else t.unit
        if unit == "ns":
            us = (f"(CASE WHEN order_ts BETWEEN {lo * 1000} AND {hi * 1000} THEN "
                  f"(CASE WHEN order_ts >= 0 THEN order_ts // 1000 ELSE -((999 - order_ts) // 1000) END) END)")
        else:
            mult = UNIT_US[unit]
            us = f"(CASE WHEN order_ts BETWEEN {lo // mult} AND {hi // mult} THEN order_ts * {mult} END)"
        naive = pa.types.is_date64(t) or t.tz is None
    if naive and not utc:  # wall-clock time in the session zone (--timezone)
        us = f"epoch_us(CAST(make_timestamp({us}) AS TIMESTAMPTZ))"
    return us, "false"


def _email_sql(column):
    """The e-mail form of a text customer id: trimmed and lower-cased, NULL when empty."""
    return f"NULLIF(lower(trim({column})), '')"


def _customer_key_sql(column, email):
    """The customer key of a text customer id: ``email`` (its ``_email_sql``) when it holds "@", else as it is."""
    return f"CASE WHEN contains({column}, '@') THEN {email} ELSE {column} END"


def _reward_code_sql(code_re, column):
    """Whether a discount-code column holds a code ``--reward-codes`` matches (``code_re``, RE2)."""
    # Each code of a list ("A, B", "A;B", "code:A|amount:5" as some WooCommerce plugins write).
    pattern = _sql_text(r"(?i)(^|[,;|])\s*(?:code:)?(?:" + code_re + r")\s*($|[,;|])")
    return f"coalesce(regexp_matches(CAST({column} AS VARCHAR), '{pattern}'), false)"


def _test_payment_sql(column):
    """Whether Shopify's payment method column marks a test order (its "bogus" gateway)."""
    return f"coalesce(contains(lower(CAST({column} AS VARCHAR)), 'bogus'), false)"


def _currency_sql(column):
    return f"NULLIF(upper(trim(CAST({column} AS VARCHAR))), '')"


def _status_sql(fmt, lowered):
    """The exclusion reason (or NULL) of a status, ``lowered`` its lower(trim(...)) form: the regular
    expressions only for the values they change."""
    words = STATUS_WORDS[fmt]
    norm = (f"(CASE WHEN contains({lowered}, ' ') OR contains({lowered}, '_') OR starts_with({lowered}, 'wc-') "
            f"THEN regexp_replace(regexp_replace({lowered}, '^wc-', ''), '[ _]+', '-', 'g') ELSE {lowered} END)")
    if not any("-" in w for w in words):
        # A value holding a space or "_" normalises to one holding "-", which no word of this format
        # does: only the "wc-" prefix can matter, and it is dropped without a regular expression.
        norm = f"(CASE WHEN starts_with({lowered}, 'wc-') THEN substr({lowered}, 4) ELSE {lowered} END)"
    cases = " ".join(f"WHEN '{w}' THEN '{r}'" for w, r in words.items())
    return f"(CASE {norm} {cases} END)"


def _bool_sql(column, kind):
    """(flag, unparsable?) of a bool-ish column: bool, 0/1, or true/false words."""
    if kind == "null":
        return "false", "false"
    if kind == "bool":
        return f"coalesce({column}, false)", "false"
    if kind == "int":
        return f"coalesce({column} = 1, false)", f"{column} IS NOT NULL AND {column} NOT IN (0, 1)"
    words = f"lower(trim({column}))"
    true_list = ", ".join(f"'{w}'" for w in TRUE_WORDS)
    known = ", ".join(f"'{w}'" for w in TRUE_WORDS + FALSE_WORDS)
    return (f"coalesce({words} IN ({true_list}), false)",
            f"{column} IS NOT NULL AND {words} NOT IN ({known})")


# --- orders: line items, exclusions, currencies ---------------------------------------

def _classify(con, stage, keep_guests, fx_table, currency, scale):
    """Create ``classified``: every staged row with its outcome. Returns the written orders' currency."""
    keep = "true" if keep_guests else "false"
    if stage.has_order_any:
        # One head row per order: its first carrier (the row with the order total) that is not a refund, else
        # its first carrier, else its first row — the least (rank << 60 | src_row), src_row < 2**60; its
        # customer: the first carrier's, else the first one on any of its rows — the customer of the row
        # cust_row, the least (rank << 60 | src_row) among the rows with one (looked up only where needed).
        # An order is "simple" when it has one carrier holding the order's customer (or none of its rows has
        # one), as most have: that carrier is its head and the other rows its line items, known without
        # joining the row to its order; only the rows of the other orders are joined to their heads.
        mask, top = (1 << 60) - 1, 1 << 60
        con.execute(f"""
            CREATE TABLE order_heads AS
            SELECT merchant_key, order_key, head_key & {mask} AS head, cust_key & {mask} AS cust_row,
                   (n - n_items = 1 AND (cust_key IS NULL OR cust_key < {top})) AS simple, n_items, first_item
            FROM (
                SELECT merchant_key, order_key,
                       min((CASE WHEN is_carrier AND NOT neg THEN 0 WHEN is_carrier THEN 1 ELSE 2 END)::BIGINT << 60
                           | src_row) AS head_key,
                       min((CASE WHEN is_carrier THEN 0 ELSE 1 END)::BIGINT << 60 | src_row)
                           FILTER (WHERE customer_key IS NOT NULL) AS cust_key,
                       count(*) AS n, count(*) FILTER (WHERE NOT is_carrier) AS n_items,
                       min(src_row) FILTER (WHERE NOT is_carrier) AS first_item
                FROM staged
                WHERE has_order AND merchant_key IS NOT NULL AND order_key IS NOT NULL
                GROUP BY merchant_key, order_key)""")
        con.execute("""
            CREATE TABLE complex_heads AS
            SELECT h.merchant_key, h.order_key, h.head, s.customer_key AS cust
            FROM (SELECT * FROM order_heads WHERE NOT simple) h LEFT JOIN staged s ON s.src_row = h.cust_row""")
        # The line items of simple orders (every row but the carrier) are counted here, by order, and not
        # classified row by row: they are most rows of a line-item export, and no later step reads them.
        stage.simple_items = con.execute(
            "SELECT coalesce(sum(n_items), 0), min(first_item) FROM order_heads WHERE simple").fetchall()[0]
        # k: 1 the head of its order (or a row of none), 2 a line item, 3 a refund row (a later carrier with a
        # negative amount). cust: the order's customer. The narrow items table holds rows of orders with
        # both keys, without the total: only those of complex orders are kept, each a head (k 1) or an item.
        item_columns = ", ".join(
            f"{expr} AS {name}" for name, expr in _item_columns("i", "i.src_row"))
        source = f"""
            SELECT s.*,
                   CASE WHEN NOT s.has_order THEN 1
                        WHEN h.head IS NOT NULL THEN (CASE WHEN s.src_row = h.head THEN 1
                                                           WHEN s.is_carrier AND s.neg THEN 3 ELSE 2 END)
                        WHEN s.merchant_key IS NULL OR s.order_key IS NULL THEN 1
                        WHEN s.is_carrier THEN 1
                        ELSE 2 END AS k,
                   CASE WHEN NOT s.has_order THEN s.customer_key
                        WHEN h.head IS NOT NULL THEN h.cust
                        WHEN s.merchant_key IS NOT NULL AND s.order_key IS NOT NULL THEN s.customer_key END AS cust
            FROM staged_rows s LEFT JOIN complex_heads h
              ON s.has_order AND s.merchant_key = h.merchant_key AND s.order_key = h.order_key
            WHERE NOT (s.has_order AND NOT s.is_carrier AND s.merchant_key IS NOT NULL AND s.order_key IS NOT NULL
                       AND h.head IS NULL)
            UNION ALL
            SELECT {item_columns}, CASE WHEN i.src_row = h.head THEN 1 ELSE 2 END AS k, h.cust AS cust
            FROM items i JOIN complex_heads h ON i.merchant_key = h.merchant_key AND i.order_key = h.order_key"""
    else:
        source = "SELECT *, 1 AS k, customer_key AS cust FROM staged"
    grouped = f"""
        WITH g AS ({source})
        SELECT src_row, file_idx, file_row, merchant_key, has_order, order_key, cust AS customer_key, ts_us,
               net, cents, reward, currency,
               CASE WHEN k = 3 THEN 'excluded:refund_row'
                    WHEN reason IS NOT NULL THEN 'rejected:' || reason
                    WHEN k > 1 THEN 'excluded:line_item'
                    WHEN NOT is_carrier THEN 'rejected:order_without_total'
                    WHEN excl IS NOT NULL THEN 'excluded:' || excl
                    WHEN cust IS NULL AND NOT {keep} THEN 'excluded:guest_checkout'
                    ELSE 'ok' END AS outcome
        FROM g"""
    if fx_table is None:
        # Without an order key every outcome is a function of its own staged row: a view, not a copy of
        # every row (the later queries each filter it once).
        kind = "TABLE" if stage.has_order_any else "VIEW"
        con.execute(f"CREATE {kind} classified AS SELECT * EXCLUDE (outcome, net), "
                    f"CASE WHEN outcome = 'ok' THEN 'written' ELSE outcome END AS outcome FROM ({grouped})")
        return _check_one_currency(con, stage, currency)
    else:
        con.register("fx_arrow", fx_table)
        con.execute("CREATE TABLE fx AS SELECT * FROM fx_arrow")
        con.unregister("fx_arrow")
        dated = "date" in fx_table.column_names
        join = ("ASOF LEFT JOIN fx f ON c.currency = f.currency AND c.day >= f.date" if dated
                else "LEFT JOIN fx f ON c.currency = f.currency")
        reporting = _sql_text(currency.upper())
        con.execute(f"""
            CREATE TABLE classified AS
            WITH c AS (SELECT *, CAST(make_timestamp(ts_us) AS DATE) AS day FROM ({grouped})),
            r AS (SELECT c.*, CASE WHEN c.currency IS NULL OR c.currency = '{reporting}'
                                   THEN CAST(1 AS DECIMAL(38, 10)) ELSE f.rate END AS rate
                  FROM c {join}),
            x AS (SELECT * EXCLUDE (cents, day), CASE WHEN outcome = 'ok' AND abs(net) < 1e11 AND rate < 1e6
                  THEN CAST(ROUND(CAST(net AS DECIMAL(38, 8)) * rate * {scale}) AS BIGINT) END AS cents FROM r)
            SELECT * EXCLUDE (outcome, rate),
                   CASE WHEN outcome <> 'ok' THEN outcome
                        WHEN rate IS NULL THEN 'rejected:no_fx_rate'
                        WHEN cents IS NULL THEN 'rejected:amount_out_of_range'
                        WHEN cents < 0 AND NOT {str(stage.refunds).lower()} THEN 'rejected:negative_amount'
                        ELSE 'written' END AS outcome
            FROM x""")
        return currency.upper()


def _check_one_currency(con, stage, currency):
    """The currency of the written orders: ``currency`` if given, else the one currency they are in (None
    without a currency column or without orders); MixedCurrencyError if they are in another or in several."""
    if "currency" not in stage.roles:
        return currency.upper() if currency else None
    found = con.execute("""SELECT currency, count(*), min(src_row) FROM classified WHERE outcome = 'written'
                           GROUP BY currency ORDER BY 3""").fetchall()
    allowed = {None, currency.upper()} if currency else {None, found[0][0] if found else None}
    if any(cur not in allowed for cur, _, _ in found):
        where = con.execute("SELECT file_idx, file_row FROM classified WHERE src_row = ?",
                            [min(first for cur, _, first in found if cur not in allowed)]).fetchall()[0]
        listing = ", ".join(f"{cur or '(none)'}: {n:,} orders" for cur, n, _ in found)
        wanted = f"the reporting currency {currency.upper()}" if currency else "one currency"
        raise MixedCurrencyError(
            stage.sources[where[0]], where[1],
            f"orders are in more than {wanted} ({listing}) and no --fx rates convert them: adding them up "
            f"would mix currencies. Pass --fx RATES (currency,rate[,date]) and --currency CODE")
    if currency:
        return currency.upper()
    named = {cur for cur, _, _ in found if cur is not None}
    return named.pop() if len(named) == 1 else None


def _accounts(con, stage, files):
    """(rejected, excluded, rows written, rows read): each reason with its count and first row."""
    rejected, excluded = {}, {}
    # One pass over the outcomes gives every count, the written rows' and the total included.
    rows = con.execute("""SELECT outcome, count(*), min(src_row) FROM classified
                          GROUP BY outcome ORDER BY 3""").fetchall()
    items, first_item = stage.simple_items
    if items:  # the line items of simple orders, not in classified (see _classify)
        listed = {outcome: (count, first) for outcome, count, first in rows}
        count, first = listed.get("excluded:line_item", (0, first_item))
        listed["excluded:line_item"] = (count + items, min(first, first_item))
        rows = sorted(((outcome, count, first) for outcome, (count, first) in listed.items()), key=lambda r: r[2])
    written = sum(count for outcome, count, _ in rows if outcome == "written")
    read = sum(count for _, count, _ in rows)
    for outcome, count, first in rows:
        if outcome == "written":
            continue
        kind, reason = outcome.split(":", 1)
        entry = Rejected(count=count)
        # From staged (the line items of simple orders are not in classified), with the order's customer.
        # The order's customer: that of its row cust_row (see _classify).
        cust_row = "CASE WHEN s.has_order THEN h.cust_row ELSE s.src_row END" if stage.has_order_any \
            else "s.src_row"
        heads = ("LEFT JOIN order_heads h ON s.has_order AND s.merchant_key = h.merchant_key "
                 "AND s.order_key = h.order_key" if stage.has_order_any else "")
        file_idx, file_row, merchant_key, order_key, customer_row = con.execute(
            f"SELECT s.file_idx, s.file_row, s.merchant_key, s.order_key, {cust_row} FROM staged s {heads} "
            "WHERE s.src_row = ?", [first]).fetchall()[0]
        customer_key = None if customer_row is None else con.execute(
            "SELECT customer_key FROM staged WHERE src_row = ?", [customer_row]).fetchall()[0][0]
        entry.first_source, entry.first_row = str(files[file_idx]), file_row
        cur = con.execute("SELECT * FROM rejected_raw WHERE src_row = ?", [first])
        cols = [d[0] for d in cur.description]
        raw = [dict(zip(cols, r)) for r in cur.fetchall()]
        names = stage.names.get(file_idx, {})
        if raw:
            raw = raw[0]
            if raw["line"] is not None:
                entry.first_values = {"physical line": raw["line_number"], "text": raw["line"]}
            else:
                entry.first_values = {name: raw["raw_" + role] for role, name in names.items()}
        else:
            entry.first_values = {k: v for k, v in (("merchant", merchant_key), ("order", order_key),
                                                    ("customer", customer_key)) if v is not None}
        (rejected if kind == "rejected" else excluded)[reason] = entry
    return rejected, excluded, written, read


class _Duplicates:
    """Groups of neighbouring rows with equal (merchant_id, customer_id, order_ts) in the sorted stream:
    how many groups of two or more, their rows, and the smallest src_row among those rows."""

    def __init__(self):
        self.groups, self.rows, self.first = 0, 0, None
        self.last = None          # (merchant, customer, ts, src_row) of the previous batch's last row
        self.last_in_group = False

    def add(self, merchant, customer, ts, src):
        if len(ts) == 0:
            return
        carried = self.last is not None  # the previous batch's last row leads, to compare across batches
        if carried:
            m0, c0, t0, s0 = self.last
            merchant, customer, ts, src = np.r_[m0, merchant], np.r_[c0, customer], np.r_[t0, ts], np.r_[s0, src]
        same = (merchant[1:] == merchant[:-1]) & (customer[1:] == customer[:-1]) & (ts[1:] == ts[:-1])
        in_group = np.zeros(len(ts), dtype=bool)
        in_group[1:] |= same
        in_group[:-1] |= same
        # A group starts where a row repeats its predecessor and the predecessor did not repeat its own.
        before = np.r_[self.last_in_group if carried else False, same[:-1]]
        self.groups += int((same & ~before).sum())
        # The carried row was counted with its batch if it was in a group there.
        self.rows += int(in_group[1:].sum()) + int(carried and same[0] and not self.last_in_group) \
            if carried else int(in_group.sum())
        if in_group.any():
            low = int(src[in_group].min())
            self.first = low if self.first is None else min(self.first, low)
        self.last = (merchant[-1], customer[-1], ts[-1], src[-1])
        self.last_in_group = bool(in_group[-1])


def _warnings(con, stage, files, duplicates=None):
    """(warnings, likely line-item rows: those beyond the first of each (merchant, customer, order_ts))."""
    warnings = []
    if duplicates is not None:
        groups, rows, first = duplicates.groups, duplicates.rows, duplicates.first
    else:
        groups, rows, first = _duplicate_groups(con)
    if groups:
        file_idx, file_row = con.execute("SELECT file_idx, file_row FROM classified WHERE src_row = ?",
                                         [first]).fetchall()[0]
        warnings.append(
            f"{rows:,} rows in {groups:,} groups share merchant, customer and order_ts: likely line items of one "
            f"order each, counted here as separate orders; map an order key (--columns order_id=...) to count "
            f"each order once; first: {files[file_idx]}: row {file_row}")
    return warnings, int(rows or 0) - int(groups or 0)


def _duplicate_groups(con):
    groups, rows, first = con.execute("""
        SELECT count(*), sum(n), min(first) FROM (
            SELECT count(*) AS n, min(src_row) AS first FROM classified WHERE outcome = 'written' AND NOT has_order
            GROUP BY merchant_key, customer_key, ts_us HAVING count(*) > 1)""").fetchall()[0]
    return groups, rows, first


# --- mapping and sorting ---------------------------------------------------------

def _natural_key(key):
    """Text keys in natural order ("shop-2" before "shop-10"); integers as numbers."""
    if isinstance(key, int):
        return (key,)
    parts = re.split(r"(\d+)", key)
    return tuple((int(p), p) if i % 2 else p for i, p in enumerate(parts))


def _copy_private(con, query, path, inputs, fmt="PARQUET", what="output"):
    with atomic_output(path, inputs=inputs, private=True, what=what) as tmp:
        header = ", HEADER" if fmt == "CSV" else ""
        con.execute(f"COPY ({query}) TO '{_sql_text(tmp)}' (FORMAT {fmt}{header})")
        os.chmod(tmp, 0o600)


def _write_mappings(con, stage, merchant_ids, customer_ids, inputs, keep_guests=True):
    keys = [row[0] for row in con.execute(
        "SELECT DISTINCT merchant_key FROM classified WHERE outcome = 'written'").fetchall()]
    keys.sort(key=_natural_key)
    kind = stage.key_kinds.get("merchant_id", "text")
    con.register("merchant_arrow", pa.table({
        "merchant_key": pa.array(keys, pa.int64() if kind == "int" else pa.string()),
        "merchant_id": pa.array(range(1, len(keys) + 1), pa.int32()),
    }))
    con.execute("CREATE TABLE merchant_map AS SELECT * FROM merchant_arrow")
    con.unregister("merchant_arrow")
    con.execute("""
        CREATE TABLE customer_map AS
        SELECT customer_key, CAST(row_number() OVER (ORDER BY customer_key) AS BIGINT) AS customer_id
        FROM (SELECT DISTINCT customer_key FROM classified WHERE outcome = 'written' AND customer_key IS NOT NULL)
    """)
    n_customers = con.execute("SELECT count(*) FROM customer_map").fetchall()[0][0]
    con.execute(f"""
        CREATE TABLE guest_map AS
        SELECT src_row, CAST({n_customers} + row_number() OVER (ORDER BY src_row) AS BIGINT) AS customer_id
        FROM classified WHERE outcome = 'written' AND customer_key IS NULL{"" if keep_guests else " AND false"}
    """)  # without keep_guests a written order always has a customer (guests are excluded): no scan
    n_guests = con.execute("SELECT count(*) FROM guest_map").fetchall()[0][0]
    _copy_private(con, "SELECT * FROM merchant_map ORDER BY merchant_id", merchant_ids, inputs,
                  what="merchant id mapping")
    _copy_private(con, "SELECT * FROM customer_map ORDER BY customer_id", customer_ids, inputs,
                  what="customer id mapping")
    return len(keys), n_customers + n_guests


def _write_sorted(con, output, total, progress, inputs, duplicates=None, currency=None):
    schema = ORDERS_SCHEMA.with_metadata({CURRENCY_KEY: currency.encode()}) if currency else ORDERS_SCHEMA
    guests = con.execute("SELECT count(*) FROM guest_map").fetchall()[0][0]
    customer = "coalesce(c.customer_id, g.customer_id)" if guests else "c.customer_id"
    guest_join = "LEFT JOIN guest_map g ON v.src_row = g.src_row" if guests else ""
    relation = con.sql(f"""
        SELECT m.merchant_id, {customer} AS customer_id, v.ts_us, v.cents, v.reward{", v.src_row" if duplicates else ""}
        FROM (SELECT * FROM classified WHERE outcome = 'written') v
        JOIN merchant_map m ON v.merchant_key = m.merchant_key
        {"LEFT" if guests else ""} JOIN customer_map c ON v.customer_key = c.customer_key
        {guest_join}
        ORDER BY m.merchant_id, customer_id, v.ts_us, v.src_row
    """)
    reader = _arrow_reader(relation, BATCH_ROWS)
    written = 0
    with atomic_output(output, inputs=inputs, what="output") as tmp, \
            pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer, \
            _progress.bar(total, progress, desc="prepare: sort and write") as bar:
        for batch in reader:
            if batch.num_rows == 0:
                continue
            writer.write_batch(pa.record_batch([
                batch.column(0).cast(pa.int32()),
                batch.column(1).cast(pa.int64()),
                batch.column(2).cast(pa.int64()).view(pa.timestamp("us", tz="UTC")),
                batch.column(3).cast(pa.int64()),
                batch.column(4).cast(pa.bool_()),
            ], schema=schema))
            if duplicates is not None:
                duplicates.add(*(batch.column(i).to_numpy() for i in (0, 1, 2, 5)))
            written += batch.num_rows
            bar.update(batch.num_rows)
    return written


def _arrow_reader(relation, batch_rows):
    """A DuckDB relation streamed as a RecordBatchReader."""
    if hasattr(relation, "to_arrow_reader"):
        return relation.to_arrow_reader(batch_rows)
    return relation.fetch_arrow_reader(batch_rows)


# --- rejects, merchants, FX ------------------------------------------------------------

def _write_rejects(con, stage, files, path, inputs):
    con.register("files_arrow", pa.table({"file_idx": pa.array(range(len(files)), pa.int32()),
                                          "path": pa.array([str(f) for f in files], pa.string())}))
    fallback = {"merchant_id": "CAST(c.merchant_key AS VARCHAR)", "customer_id": "CAST(c.customer_key AS VARCHAR)",
                "order_id": "c.order_key"}
    roles = [r for r in ROLES if r in stage.roles or r in ("merchant_id", "customer_id")]
    raw = ", ".join(f"coalesce(r.raw_{role}, {fallback[role]}) AS {role}" if role in fallback
                    else f"r.raw_{role} AS {role}" for role in roles)
    query = f"""
        SELECT f.path AS file, c.file_row AS row, substr(c.outcome, 10) AS reason, r.line_number AS line_number,
               r.line AS line, {raw}
        FROM classified c JOIN files_arrow f ON c.file_idx = f.file_idx
        LEFT JOIN rejected_raw r ON c.src_row = r.src_row
        WHERE c.outcome LIKE 'rejected:%' ORDER BY c.src_row"""
    fmt = "CSV" if Path(path).suffix.lower() == ".csv" else "PARQUET"
    try:
        _copy_private(con, query, path, inputs, fmt=fmt, what="rejects file")
    finally:
        con.unregister("files_arrow")


def _read_table(path, text_columns=()):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        import pyarrow.csv as pacsv

        header = _csv_header(path, _delimiter(path))
        try:
            return pacsv.read_csv(str(path), parse_options=pacsv.ParseOptions(
                delimiter=_delimiter(path)),
                convert_options=pacsv.ConvertOptions(
                    column_types={c: pa.string() for c in header if c in text_columns or not text_columns},
                    strings_can_be_null=True))
        except (pa.ArrowInvalid, UnicodeDecodeError) as e:
            raise CorruptInputError(str(path), None, f"cannot read: {e}") from e
    import pyarrow.parquet as pq

    try:
        return pq.read_table(str(path))
    except (pa.ArrowInvalid, OSError) as e:
        raise CorruptInputError(str(path), None, f"cannot read: {e}") from e


def _read_fx(path, currency):
    """FX rates: currency, rate (exact decimal, > 0), optional date; validated, as an Arrow table."""
    from decimal import Decimal, InvalidOperation

    table = _read_table(path)
    lowered = {c.lower(): c for c in table.column_names}
    if "currency" not in lowered or "rate" not in lowered:
        raise SchemaError(str(path), None, f"FX rates need columns currency and rate (optionally date); "
                                           f"the file has {', '.join(map(repr, table.column_names))}")
    currencies = [None if c is None else str(c).strip().upper() for c in table.column(lowered["currency"]).to_pylist()]
    rates, dates = [], []
    raw_dates = table.column(lowered["date"]).to_pylist() if "date" in lowered else None
    for row, (cur, rate) in enumerate(zip(currencies, table.column(lowered["rate"]).to_pylist())):
        try:
            value = Decimal(str(rate).strip())
        except (InvalidOperation, ValueError):
            value = None
        if not cur or value is None or not value.is_finite() or value <= 0 or value >= 1_000_000:
            raise InputError(str(path), row, f"bad FX rate: currency={cur!r}, rate={rate!r} "
                                             "(want a currency code and a decimal rate > 0)")
        rates.append(value.quantize(Decimal("1e-10")))
        if raw_dates is not None:
            import datetime

            d = raw_dates[row]
            try:
                d = d if isinstance(d, datetime.date) else datetime.date.fromisoformat(str(d).strip())
            except ValueError:
                raise InputError(str(path), row, f"bad FX date {d!r} (want YYYY-MM-DD)") from None
            dates.append(d)
    keys = list(zip(currencies, dates)) if raw_dates is not None else currencies
    if len(set(keys)) != len(keys):
        raise InputError(str(path), None, "FX rates list the same currency (and date) twice")
    out = {"currency": pa.array(currencies, pa.string()), "rate": pa.array(rates, pa.decimal128(38, 10))}
    if raw_dates is not None:
        out["date"] = pa.array(dates, pa.date32())
    return pa.table(out)


def _read_merchants_by_key(path):
    table = _read_table(path, text_columns=("merchant_id",))
    if "merchant_id" not in table.column_names:
        raise SchemaError(str(path), None, f"the merchants table needs a merchant_id column holding the raw "
                                           f"merchant keys; it has {', '.join(map(repr, table.column_names))}")
    keys = [None if k is None else str(k) for k in table.column("merchant_id").to_pylist()]
    if any(k is None for k in keys):
        raise InputError(str(path), keys.index(None), "merchant_id is null")
    seen = set()
    for row, k in enumerate(keys):
        if k in seen:
            raise InputError(str(path), row, f"merchant_id {k!r} appears more than once")
        seen.add(k)
    return table


def _write_merchants(con, table, source, path, inputs, warnings):
    """The merchants table re-keyed: new integer merchant_id, the raw key as name."""
    import pyarrow.parquet as pq

    mapping = {str(k): i for k, i in con.execute("SELECT merchant_key, merchant_id FROM merchant_map").fetchall()}
    keys = [str(k) for k in table.column("merchant_id").to_pylist()]
    keep = [i for i, k in enumerate(keys) if k in mapping]
    unmatched = set(mapping) - set(keys)
    if unmatched:
        example = sorted(unmatched, key=_natural_key)[0]
        warnings.append(f"{len(unmatched):,} merchants of the orders are not in {source} (e.g. {example!r}): "
                        "they fall in industry/country 'unknown'")
    if len(keep) < len(keys):
        warnings.append(f"{len(keys) - len(keep):,} merchants of {source} have no written order and are left out")
    rest = table.take(pa.array(keep, pa.int64())).drop_columns(
        [c for c in ("merchant_id", "name") if c in table.column_names])
    out = pa.table({"merchant_id": pa.array([mapping[keys[i]] for i in keep], pa.int32()),
                    "name": pa.array([keys[i] for i in keep], pa.string())})
    for name in rest.column_names:
        out = out.append_column(rest.schema.field(name), rest.column(name))
    out = out.sort_by("merchant_id")
    with atomic_output(path, inputs=inputs, what="merchants output") as tmp:
        pq.write_table(out, str(tmp))
    return str(path)
