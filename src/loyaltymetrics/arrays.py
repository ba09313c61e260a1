"""NumPy → Arrow arrays without ``pa.array``.

``pa.array`` (and pyarrow compute calls given Python scalars) import pandas
when it is installed: about half a second and tens of MB on the first call,
more than the kernel needs for ten million rows. Building from buffers
avoids it.
"""
import numpy as np
import pyarrow as pa


def numeric_array(values, arrow_type, valid=None):
    """A fixed-width Arrow array over ``values`` (dtype matching ``arrow_type``); nulls where not ``valid``."""
    values = np.ascontiguousarray(values)
    validity = None
    if valid is not None and not valid.all():
        validity = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(arrow_type, len(values), [validity, pa.py_buffer(values)])


def string_array(strings):
    """A ``pa.string()`` array of Python strings (no nulls)."""
    encoded = [s.encode() for s in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(encoded), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])


def bool_array(values):
    """A ``pa.bool_()`` array (no nulls) of a NumPy bool array."""
    values = np.asarray(values, dtype=bool)
    return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(np.packbits(values, bitorder="little"))])
