"""Exact e-commerce loyalty and retention metrics in one pass over sorted orders."""
from .api import compute
from .convert import prepare
from .synthetic import generate
from .errors import (
    AmountOverflowError,
    CorruptInputError,
    DuplicateMerchantError,
    InputError,
    LoyaltyMetricsError,
    NegativeAmountError,
    NullValueError,
    SchemaError,
    TimestampRangeError,
    UnsortedInputError,
)

__version__ = "0.1.0"

__all__ = [
    "compute",
    "generate",
    "prepare",
    "AmountOverflowError",
    "CorruptInputError",
    "DuplicateMerchantError",
    "InputError",
    "LoyaltyMetricsError",
    "NegativeAmountError",
    "NullValueError",
    "SchemaError",
    "TimestampRangeError",
    "UnsortedInputError",
]
