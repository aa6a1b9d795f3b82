"""Feature values as named numpy arrays: the one in-memory form from a Feast read to a model's input row.

A `Columns` maps each feature name to one array with an entry per user, in the users' order:

- numbers (Float32, Float64, Int64, Bool) as float64, NaN where missing;
- 24-hour vectors (Array(Float32)) as (users × 24) float32 matrices, a NaN row where missing (Feast
  stores them as float32, so nothing is lost; they widen to float64 where they are computed with);
- text (String) and lists of text as object arrays, None where missing;
- request instants as datetime64[ns] in UTC.

One user and a million users take the same path: an online read of one user is a dozen arrays of
length one, with no pandas frame built per request (a frame costs tens of microseconds per
operation, which is most of a one-user plan). Frames are made only where a caller wants one
(training, the CLI, notebooks): `to_frame`, and back with `of_frame`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

Columns = dict[str, np.ndarray]
Kind = Literal["number", "vector", "text", "list"]
HOURS = 24


def length(columns: Mapping[str, Any]) -> int:
    """Rows in a Columns (or a frame)."""
    if isinstance(columns, pd.DataFrame):
        return len(columns)
    return len(next(iter(columns.values()))) if columns else 0


def take(columns: Columns, rows: slice | np.ndarray) -> Columns:
    """The same rows of every column."""
    return {name: values[rows] for name, values in columns.items()}


def numbers(values: Any) -> np.ndarray:
    """float64 of a column (NaN where missing or not a number), as `pd.to_numeric(errors="coerce")`."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
        return values.astype(np.float64, copy=False)
    return np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=np.float64)


def hour_matrix(values: Any) -> np.ndarray:
    """(rows × 24) float64 of a column of 24-hour vectors: a Columns matrix, or a frame's column of
    lists or arrays; a NaN row where a vector is missing or malformed."""
    if isinstance(values, np.ndarray) and values.ndim == 2:
        return values.astype(np.float64, copy=False)
    values = values.to_numpy() if isinstance(values, pd.Series) else np.asarray(values, dtype=object)
    return vectors(values, np.float64)


def vectors(values: Sequence[Any], dtype: type = np.float32) -> np.ndarray:
    """(rows × 24) from a sequence of 24-long lists or arrays (None or malformed: a NaN row); float32
    for what Feast stored as Array(Float32), float64 for anyone else's vectors."""
    n = len(values)
    if n and all(v is not None and not _is_scalar_missing(v) and len(v) == HOURS for v in values):
        return np.asarray(np.stack([np.asarray(v, dtype=dtype) for v in values]), dtype=dtype)
    matrix: np.ndarray = np.full((n, HOURS), np.nan, dtype=dtype)
    for row, vector in enumerate(values):
        if vector is not None and not _is_scalar_missing(vector) and len(vector) == HOURS:
            matrix[row] = np.asarray(vector, dtype=dtype)
    return matrix


def texts(values: Iterable[Any]) -> np.ndarray:
    """A 1-D object array (never a 2-D one, whatever the entries are); NaN entries become None."""
    items = list(values)
    out = np.empty(len(items), dtype=object)
    for row, value in enumerate(items):
        out[row] = None if _is_scalar_missing(value) else value
    return out


def _is_scalar_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def from_python(values: list[Any], kind: Kind) -> np.ndarray:
    """One column of Feast's `OnlineResponse.to_dict()` (Python values, None where missing)."""
    if kind == "number":
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    if kind == "vector":
        return vectors(values)
    return texts(values)


def from_arrow(column: pa.Array | pa.ChunkedArray, kind: Kind) -> np.ndarray:
    """One column of an Arrow table (an offline read), without Python objects per value where the
    kind allows (a million users' 24-hour vectors as one reshape)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if kind == "number":
        return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
    if kind == "vector":
        n = len(column)
        sizes = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
        full = sizes == HOURS
        flat = pc.cast(pc.list_flatten(column), pa.float32()).to_numpy(zero_copy_only=False)
        if full.all():
            return flat.reshape(n, HOURS)
        matrix: np.ndarray = np.full((n, HOURS), np.nan, dtype=np.float32)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        picks = starts[full][:, None] + np.arange(HOURS)
        matrix[full] = flat[picks]
        return matrix
    if kind == "list":
        return texts(column.to_pylist())
    return texts(column.to_numpy(zero_copy_only=False))


def missing(values: np.ndarray) -> np.ndarray:
    """Which rows of one column hold no value."""
    if values.ndim == 2:
        return np.isnan(values).all(axis=1)
    if values.dtype.kind == "f":
        return np.isnan(values)
    if values.dtype == object:
        return np.fromiter((_is_scalar_missing(v) for v in values), dtype=bool, count=len(values))
    if values.dtype.kind == "M":
        return np.isnat(values)
    return np.zeros(len(values), dtype=bool)


def instants(value: Any, n: int) -> np.ndarray:
    """n copies of an instant as datetime64[ns] in UTC (a naive instant is taken as UTC)."""
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return np.full(n, stamp.tz_localize(None).to_datetime64().astype("datetime64[ns]"))


def of_frame(frame: pd.DataFrame) -> Columns:
    """A frame's columns in this form: lists or arrays of 24 as a float64 matrix (whatever their
    precision), times as UTC datetime64, booleans and numbers as float64, the rest as objects."""
    out: Columns = {}
    for name in frame.columns:
        series = frame[name]
        dtype = series.dtype
        if isinstance(dtype, pd.DatetimeTZDtype):
            out[name] = series.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
        elif dtype.kind == "M":
            out[name] = series.to_numpy(dtype="datetime64[ns]")
        elif pd.api.types.is_numeric_dtype(dtype):  # booleans included
            out[name] = numbers(series.to_numpy())
        else:
            values = series.to_numpy(dtype=object)
            first = next((v for v in values if not _is_scalar_missing(v)), None)
            if isinstance(first, list | tuple | np.ndarray) and len(first) == HOURS and _numeric(first):
                out[name] = vectors(values, np.float64)
            else:
                out[name] = texts(values)
    return out


def _numeric(vector: Any) -> bool:
    return all(isinstance(v, int | float | np.floating | np.integer) for v in vector)


def to_frame(columns: Mapping[str, np.ndarray], index: pd.Index | None = None) -> pd.DataFrame:
    """A frame of Columns: a vector column holds one float32 array per row (None where missing), as
    Feast's own frames of Array(Float32) features do; instants are UTC-aware."""
    out: dict[str, Any] = {}
    for name, values in columns.items():
        if values.ndim == 2:
            rows = np.empty(len(values), dtype=object)
            gone = missing(values)
            for row in range(len(values)):
                rows[row] = None if gone[row] else values[row]
            out[name] = rows
        elif values.dtype.kind == "M":
            out[name] = pd.DatetimeIndex(values).tz_localize("UTC")
        else:
            out[name] = values
    return pd.DataFrame(out, index=index if index is not None else pd.RangeIndex(length(columns)))
