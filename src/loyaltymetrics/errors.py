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
    """Rows are not sorted ascending by (merchant_id, customer_id, order_ts)."""


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
