"""Conversions between user tables (pandas, pyarrow, dicts of lists) and Arrow IPC."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Union

import pyarrow as pa

from ._errors import ConversionError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: What the SDK accepts as a table: a pandas DataFrame, a pyarrow Table or RecordBatch, or a
#: mapping of column name to a list (or array) of values.
TableLike = Union["pd.DataFrame", pa.Table, pa.RecordBatch, Mapping[str, Sequence[Any]]]

ARROW_STREAM = "application/vnd.apache.arrow.stream"


def _describe(values: Any) -> str:
    dtype = getattr(values, "dtype", None)
    if dtype is not None:
        return str(dtype)
    kinds = sorted({type(v).__name__ for v in values if v is not None}) if values else []
    return "list of " + ("/".join(kinds) if kinds else "None")


def _column_to_arrow(name: str, values: Any, from_pandas: bool) -> pa.Array:
    try:
        if isinstance(values, (pa.Array, pa.ChunkedArray)):
            return values
        return pa.array(values, from_pandas=from_pandas)
    except (pa.ArrowException, TypeError, ValueError, OverflowError) as error:
        raise ConversionError(
            f"column '{name}' ({_describe(values)}) cannot be converted to Arrow: {error}",
            code="INVALID_ARGUMENT",
        ) from error


def to_arrow_table(data: TableLike, what: str = "table") -> pa.Table:
    """``data`` as a pyarrow Table; :class:`ConversionError` names a column that does not
    convert (and its dtype)."""
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        pd = None  # type: ignore[assignment]
    if pd is not None and isinstance(data, pd.DataFrame):
        try:
            return pa.Table.from_pandas(data, preserve_index=False)
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as error:
            for name in data.columns:  # find the column that failed, to name it
                _column_to_arrow(str(name), data[name], from_pandas=True)
            raise ConversionError(
                f"the {what} cannot be converted to Arrow: {error}", code="INVALID_ARGUMENT"
            ) from error
    if isinstance(data, Mapping):
        columns = {str(k): _column_to_arrow(str(k), v, False) for k, v in data.items()}
        lengths = {len(c) for c in columns.values()}
        if len(lengths) > 1:
            raise ConversionError(
                f"the {what}'s columns have different lengths: "
                + ", ".join(f"{k}={len(c)}" for k, c in columns.items()),
                code="INVALID_ARGUMENT",
            )
        return pa.table(columns)
    raise ConversionError(
        f"the {what} must be a pandas DataFrame, a pyarrow Table or RecordBatch, or a dict of "
        f"lists; got {type(data).__name__}",
        code="INVALID_ARGUMENT",
    )


def ipc_stream_bytes(table: pa.Table) -> bytes:
    """``table`` as an Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def entities_to_columns(entities: TableLike) -> Dict[str, List[Any]]:
    """An entity table as JSON-ready columns (Python values), in its column order.

    A dict of lists of ints or strings (the common case of an online read) is taken as it is,
    without a round trip through Arrow."""
    if isinstance(entities, Mapping) and all(
        isinstance(values, list)
        and all(type(value) in (int, str) for value in values)
        for values in entities.values()
    ):
        return {str(name): values for name, values in entities.items()}
    table = to_arrow_table(entities, "entity table")
    return {name: table.column(name).to_pylist() for name in table.column_names}


_NULLABLE_PANDAS_TYPES: Dict[pa.DataType, Any] = {}


def nullable_types_mapper(data_type: pa.DataType) -> Optional[Any]:
    """pandas dtypes that keep integers and booleans with nulls as they are (``Int32``,
    ``Int64``, ``boolean``) instead of turning them into floats or objects."""
    if not _NULLABLE_PANDAS_TYPES:
        _NULLABLE_PANDAS_TYPES.update(_nullable_pandas_types())
    return _NULLABLE_PANDAS_TYPES.get(data_type)


def _nullable_pandas_types() -> Dict[pa.DataType, Any]:
    import pandas as pd

    return {
        pa.int8(): pd.Int8Dtype(),
        pa.int16(): pd.Int16Dtype(),
        pa.int32(): pd.Int32Dtype(),
        pa.int64(): pd.Int64Dtype(),
        pa.uint8(): pd.UInt8Dtype(),
        pa.uint16(): pd.UInt16Dtype(),
        pa.uint32(): pd.UInt32Dtype(),
        pa.uint64(): pd.UInt64Dtype(),
        pa.bool_(): pd.BooleanDtype(),
    }
