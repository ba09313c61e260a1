"""Type aliases of the public signatures (PEP 561: the package ships ``py.typed``).

Only annotations use these; modules that do say ``from __future__ import
annotations``, so nothing here is evaluated on import of the library and
neither pandas nor polars is imported.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal, Mapping, Protocol, Sequence, Union

import pyarrow as pa

if TYPE_CHECKING:
    import pandas
    import polars


class ArrowStreamExportable(Protocol):
    """Any object exporting an Arrow C stream (a DuckDB relation, a recent pandas or polars frame, …)."""

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any: ...


PathLike = Union[str, os.PathLike]
#: What the analyses read: a path (Arrow IPC file, Parquet file or directory), an Arrow table,
#: batch or reader, a pandas or polars DataFrame, or an Arrow C stream.
if TYPE_CHECKING:
    Orders = Union[PathLike, pa.Table, pa.RecordBatch, pa.RecordBatchReader, pandas.DataFrame, polars.DataFrame,
                   ArrowStreamExportable]
else:  # at run time (typing.get_type_hints) without importing pandas or polars
    Orders = Union[PathLike, pa.Table, pa.RecordBatch, pa.RecordBatchReader, ArrowStreamExportable, Any]
#: The merchants table: a path (Parquet, Arrow IPC or CSV) or a table as for ``Orders``.
Merchants = Orders
#: ``columns=``: canonical name -> the input's name.
ColumnMap = Mapping[str, str]
#: ``by=``: group keys from "merchant", "industry", "country", "size" (a single string is one key).
GroupKeys = Union[str, Sequence[str]]
#: ``size_edges=``: orders-per-month edges of the size buckets.
SizeEdges = Sequence[float]
#: A date or instant given as ISO text, a ``datetime.date``/``datetime`` or a NumPy/pandas timestamp.
DateLike = Any
#: ``period=`` of compute and concentration (cohorts and report take all but "all").
Period = Literal["year", "quarter", "month", "all"]
#: ``engine=``: the kernel.
Engine = Literal["cython", "numba"]
if TYPE_CHECKING:
    import pyspark.sql

    SparkDataFrame = pyspark.sql.DataFrame
else:  # pyspark is an optional extra
    SparkDataFrame = Any
