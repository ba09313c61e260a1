"""Exact e-commerce loyalty and retention metrics in one pass over sorted orders."""
from . import limits as _limits

_limits.adapt()   # before NumPy and pyarrow load: under an address-space limit (RLIMIT_AS), fit or fail in one line
from .api import compute
from .cohort_analysis import cohorts
from .concentration_analysis import concentration
from .benchmark_analysis import benchmarks
from .rfm_summary import rfm
from .clv import clv
from .convert import prepare
from .synthetic import generate
from .html_report import report
from .errors import (
    AmountOverflowError,
    CorruptInputError,
    DuplicateMerchantError,
    InputChangedError,
    InputError,
    LoyaltyMetricsError,
    MissingDependencyError,
    NegativeAmountError,
    NullValueError,
    OutputPathError,
    ResourceError,
    SchemaError,
    TimestampRangeError,
    UnsortedInputError,
)

__version__ = "0.1.0"

__all__ = [
    "compute",
    "cohorts",
    "concentration",
    "benchmarks",
    "rfm",
    "clv",
    "generate",
    "prepare",
    "report",
    "AmountOverflowError",
    "CorruptInputError",
    "DuplicateMerchantError",
    "InputChangedError",
    "InputError",
    "LoyaltyMetricsError",
    "MissingDependencyError",
    "NegativeAmountError",
    "NullValueError",
    "OutputPathError",
    "ResourceError",
    "SchemaError",
    "TimestampRangeError",
    "UnsortedInputError",
]
