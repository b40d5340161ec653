"""numpy <-> Arrow without copies, and without pyarrow's pandas check.

`pa.array(ndarray)` and `Array.to_numpy()` give the same results, but the first call of either
imports pandas when it is installed (pyarrow checks whether the object is a pandas one): 0.25-0.4 s
of every short run, on the serial path of every run. These two go through the array's buffers.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def to_arrow(values: np.ndarray, kind: pa.DataType) -> pa.Array:
    """A numpy array as an Arrow array of `kind` (a fixed-width integer type), without a copy when
    it is already contiguous and of that type."""
    values = np.ascontiguousarray(values, dtype=kind.to_pandas_dtype())
    return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(values)])


def to_numpy(array: pa.Array) -> np.ndarray:
    """A read-only numpy view of an Arrow array of fixed-width integers without nulls (a list
    array's `.offsets` or `.values`, a plain column); a sliced array gives its own elements."""
    if array.null_count:
        raise ValueError(f"to_numpy: {array.null_count} nulls in an array that may have none")
    dtype = np.dtype(array.type.to_pandas_dtype())
    data = array.buffers()[1]
    if data is None:  # an empty array may have no data buffer
        return np.zeros(0, dtype=dtype)
    return np.frombuffer(data, dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)
