"""Typed errors for bad input (SPEC §2).

Every error names where the problem is — the file (or ``<table>`` for an
in-memory input), the row index (0-based, counted from the start of that
file) and the offending values — so that a pipeline can report it and an
analyst can find the row.
"""


class LoyaltyMetricsError(Exception):
    """Base class of every error raised by loyaltymetrics."""


class InputError(LoyaltyMetricsError, ValueError):
    """The input cannot be used as it is. ``source`` and ``row`` say where."""

    def __init__(self, source, row, detail):
        self.source = source
        self.row = row
        self.detail = detail
        where = str(source) if row is None else f"{source}: row {row}"
        super().__init__(f"{where}: {detail}")


class SchemaError(InputError):
    """A column is missing or has a type the library cannot read exactly."""


class NullValueError(InputError):
    """A null in a column that must not have one (merchant_id, customer_id, order_ts, amount)."""


class UnsortedInputError(InputError):
    """Rows are not sorted ascending by (merchant_id, customer_id, order_ts).

    For an in-memory table (``source`` ``"<table>"``) the message ends with
    the one line that sorts a pandas or polars frame, and names ``prepare``
    for a frame too large to sort in memory.
    """

    def __init__(self, source, row, detail):
        if source == "<table>":  # inputs.IN_MEMORY
            detail += (
                "; sort the frame first: pandas "
                'df.sort_values(["merchant_id", "customer_id", "order_ts"], kind="stable"), polars '
                'df.sort("merchant_id", "customer_id", "order_ts", maintain_order=True); too large for that: '
                "write it to Parquet and sort it out of core with "
                "loyaltymetrics prepare orders.parquet -o orders.arrow --amount-unit minor"
            )
        super().__init__(source, row, detail)


class NegativeAmountError(InputError):
    """A negative amount while refunds are not enabled (or a negative annual_fee)."""


class TimestampRangeError(InputError):
    """An order_ts before 1970-01-01 or after 2262 (UTC)."""


class AmountOverflowError(InputError):
    """A sum of amounts does not fit in int64 minor units."""


class CorruptInputError(InputError):
    """The file is truncated, corrupt or not in a format the library reads."""


class DuplicateMerchantError(InputError):
    """The merchants table has the same merchant_id on more than one row."""


class InputChangedError(InputError):
    """The input read differently on a later pass than on the first (analyses that read it twice),
    or the file was truncated, rewritten or replaced while it was being read."""


class MissingDependencyError(LoyaltyMetricsError, ImportError):
    """An optional dependency a feature needs is not installed (the message names the pip extra)."""


class OutputPathError(LoyaltyMetricsError, ValueError):
    """An output path that cannot be written safely: an input of the same command, or a directory."""

    def __init__(self, path, detail):
        self.path = path
        self.detail = detail
        super().__init__(f"{path}: {detail}")


class ResourceError(LoyaltyMetricsError, MemoryError):
    """Out of memory, threads or disk space: the input may be sound, the machine could not finish.

    Never a ``CorruptInputError``: a pipeline that sets corrupt files aside
    must not discard good data because memory ran out. ``source`` and
    ``row`` say where the reading was, when known (else None).
    """

    def __init__(self, source, row, detail):
        self.source = source
        self.row = row
        self.detail = detail
        where = "" if source is None else (f"{source}: " if row is None else f"{source}: row {row}: ")
        super().__init__(f"{where}{detail}")


def resource_error(error, source=None, row=None):
    """``error`` as a ``ResourceError`` if it means out of memory or threads, else None.

    MemoryError (NumPy's and Arrow's included), a thread that could not
    start (Python's "can't start new thread", Arrow's "Failed to launch
    worker thread") and ENOMEM are resource errors; a ``LoyaltyMetricsError``
    is already typed and is left as it is.
    """
    import errno

    if isinstance(error, ResourceError):
        return error
    if isinstance(error, LoyaltyMetricsError):
        return None
    message = str(error)
    lowered = message.lower()
    if "thread" in lowered and any(w in lowered for w in ("can't start", "cannot start", "launch", "create")):
        return ResourceError(source, row, f"out of threads (raise the limit on threads or memory, or use fewer "
                                          f"threads): {message}")
    if isinstance(error, (ImportError, OSError)) and (
            "failed to map segment" in message
            or ("shared object" in lowered and _address_space_limited())):
        # A shared library that cannot be mapped (llvmlite's says "Could not find/load").
        return ResourceError(source, row, f"out of memory while loading a library (raise the memory limit): "
                                          f"{message}")
    if isinstance(error, MemoryError) or (isinstance(error, OSError) and error.errno == errno.ENOMEM) \
            or "cannot allocate memory" in lowered or "std::bad_alloc" in lowered:
        return ResourceError(source, row, f"out of memory (raise the memory limit or use fewer threads or "
                                          f"smaller chunks){': ' + message if message else ''}")
    return None


def _address_space_limited():
    from .limits import address_space_limited

    return address_space_limited()


def reporting_resource_errors(function):
    """Decorate an entry point: out of memory or threads leaves it as a ``ResourceError`` (SPEC §2)."""
    import functools

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        from .limits import adapt_loaded

        try:
            adapt_loaded()
            return function(*args, **kwargs)
        except Exception as error:
            typed = resource_error(error)
            if typed is None or typed is error:
                raise
            raise typed from error

    return wrapper
