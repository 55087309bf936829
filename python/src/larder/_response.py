"""Results: :class:`OnlineResponse` (online reads), :class:`TrainingSet` and
:class:`WriteResult`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ._convert import nullable_types_mapper

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["ForgetResult", "OnlineResponse", "TrainingSet", "WriteResult"]

STATUS_SUFFIX = "__status"
EVENT_TIME_SUFFIX = "__event_timestamp"
_TIMESTAMP = pa.timestamp("us", tz="UTC")


def _column_values(column: pa.ChunkedArray) -> List[Any]:
    """Python values of a column; vectors (fixed-size lists) become float32 numpy arrays."""
    if pa.types.is_fixed_size_list(column.type):
        width = column.type.list_size
        out: List[Any] = []
        for chunk in column.chunks:
            flat = chunk.flatten().to_numpy(zero_copy_only=False)
            valid = chunk.is_valid().to_pylist()
            # flatten() skips null slots: walk the valid ones.
            position = 0
            for is_valid in valid:
                if is_valid:
                    out.append(np.array(flat[position : position + width], copy=True))
                    position += width
                else:
                    out.append(None)
        return out
    if column.null_count == 0 and (
        pa.types.is_integer(column.type)
        or pa.types.is_floating(column.type)
        or pa.types.is_boolean(column.type)
    ):
        # numpy's tolist() builds the same Python ints, floats and bools, several times
        # faster than Arrow's per-value conversion.
        values: List[Any] = column.to_numpy().tolist()
        return values
    return list(column.to_pylist())


@dataclass(frozen=True)
class WriteResult:
    """What a direct write did to one feature view.

    Attributes:
        feature_view: The view written.
        rows: Rows received.
        written: Rows stored online.
        skipped_stale: Rows not stored online because a newer value (by event time) was
            stored already.
        written_offline: Rows appended to the offline store.
    """

    feature_view: str
    rows: int
    written: int
    skipped_stale: int
    written_offline: int

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "WriteResult":
        """A result from one entry of the server's ``feature_views`` list."""
        return cls(
            feature_view=str(obj.get("feature_view", "")),
            rows=int(obj.get("rows", 0)),
            written=int(obj.get("written", 0)),
            skipped_stale=int(obj.get("skipped_stale", 0)),
            written_offline=int(obj.get("written_offline", 0)),
        )


@dataclass(frozen=True)
class ForgetResult:
    """What an erasure removed (or, for a verification, what is left) per store.

    Attributes:
        request_id: The erasure's id in the server's audit log (empty for a verification).
        rows: Per store (``online``, ``digests``, ``offline``, ``stream_state``): rows removed,
            or rows still present for a verification.
        views: The views erased (``view:v1..vN``) or read.
        entity_key_hashes: The entity keys as the audit log records them (salted SHA-256).
        skipped: Views that hold some of the join keys but were not erased, with why.
    """

    request_id: str
    rows: Dict[str, int]
    views: List[str]
    entity_key_hashes: List[str]
    skipped: List[str]

    @property
    def is_clean(self) -> bool:
        """Whether no store holds a row of the entities (meaningful for a verification)."""
        return all(count == 0 for count in self.rows.values())

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "ForgetResult":
        """A result from a ``/forget`` answer (an erasure report or a verification)."""
        stores = obj.get("stores", {}) or {}
        rows = {
            str(store): int(counts.get("rows", 0)) if isinstance(counts, Mapping) else int(counts)
            for store, counts in stores.items()
        }
        skipped = [
            f"{item.get('view', '')}: {item.get('reason', '')}" if isinstance(item, Mapping) else str(item)
            for item in obj.get("skipped", []) or []
        ]
        return cls(
            request_id=str(obj.get("request_id", "")),
            rows=rows,
            views=[str(view) for view in obj.get("views", []) or []],
            entity_key_hashes=[str(h) for h in obj.get("entity_key_hashes", []) or []],
            skipped=skipped,
        )


class OnlineResponse:
    """The answer of an online read: entity columns, then each feature's value, status and
    event time.

    Built from the server's Arrow answer (typed exactly as the features are declared) or,
    from an older server or ``larder get``, from Feast's JSON answer (typed by inference).
    """

    def __init__(self, table: pa.Table, entity_names: Sequence[str], feature_names: Sequence[str]):
        """Wraps ``table``, whose columns are the entity columns, then per feature ``NAME``,
        ``NAME__status`` and ``NAME__event_timestamp``."""
        self._table = table
        self.entity_names: List[str] = list(entity_names)
        """The entity (join key) columns, in request order."""
        self.feature_names: List[str] = list(feature_names)
        """The feature columns, as the server named them."""

    @classmethod
    def from_arrow(cls, table: pa.Table, entity_count: int) -> "OnlineResponse":
        """From the Arrow answer, whose first ``entity_count`` columns are the entities."""
        names = table.column_names
        entity_names = names[:entity_count]
        feature_names = [
            n
            for n in names[entity_count:]
            if not (n.endswith(STATUS_SUFFIX) or n.endswith(EVENT_TIME_SUFFIX))
        ]
        return cls(table, entity_names, feature_names)

    @classmethod
    def from_json(cls, body: Mapping[str, Any], entity_count: int) -> "OnlineResponse":
        """From Feast's JSON answer (``metadata.feature_names`` and ``results``), whose first
        ``entity_count`` columns are the entities. Values are typed by inference: bytes stay
        base64 text, timestamps RFC 3339 text."""
        names = list(body["metadata"]["feature_names"])
        results = body["results"]
        columns: Dict[str, pa.Array] = {}
        for index, (name, result) in enumerate(zip(names, results)):
            values = result["values"]
            try:
                array = pa.array(values)
            except (pa.ArrowException, TypeError, ValueError):
                array = pa.array([None if v is None else str(v) for v in values], pa.string())
            columns[name] = array
            if index < entity_count:
                continue
            statuses = result.get("statuses") or []
            times = pc.cast(pa.array(result.get("event_timestamps") or [], pa.string()), _TIMESTAMP)
            present = pa.array([s == "PRESENT" for s in statuses], pa.bool_())
            columns[name + STATUS_SUFFIX] = pa.array(statuses, pa.string())
            columns[name + EVENT_TIME_SUFFIX] = pc.if_else(present, times, pa.scalar(None, _TIMESTAMP))
        return cls.from_arrow(pa.table(columns), entity_count)

    def _value_names(self) -> List[str]:
        return self.entity_names + self.feature_names

    def to_arrow(self) -> pa.Table:
        """The entity and feature value columns as a pyarrow Table (the full answer, with
        statuses and event times, is :meth:`to_arrow_full`)."""
        return self._table.select(self._value_names())

    def to_arrow_full(self) -> pa.Table:
        """Every column of the answer: values, ``NAME__status`` and
        ``NAME__event_timestamp``."""
        return self._table

    def to_dict(self) -> Dict[str, List[Any]]:
        """Feast's shape: ``{name: [values]}`` for the entity and feature columns. Nulls are
        ``None``, timestamps UTC-aware ``datetime``, vectors float32 numpy arrays."""
        return {name: _column_values(self._table.column(name)) for name in self._value_names()}

    def to_df(self) -> "pd.DataFrame":
        """The entity and feature columns as a pandas DataFrame (integers and booleans with
        nulls as pandas' nullable ``Int64``/``Int32``/``boolean``)."""
        df: "pd.DataFrame" = self.to_arrow().to_pandas(types_mapper=nullable_types_mapper)
        return df

    def statuses(self) -> Dict[str, List[str]]:
        """``{feature: [status]}``: ``PRESENT``, ``NOT_FOUND``, ``OUTSIDE_MAX_AGE``, ..."""
        return {
            name: self._table.column(name + STATUS_SUFFIX).to_pylist()
            for name in self.feature_names
        }

    def event_timestamps(self) -> Dict[str, List[Optional[datetime]]]:
        """``{feature: [event time]}`` (UTC-aware ``datetime``, ``None`` when absent)."""
        return {
            name: self._table.column(name + EVENT_TIME_SUFFIX).to_pylist()
            for name in self.feature_names
        }

    def __len__(self) -> int:
        """The number of entity rows."""
        return int(self._table.num_rows)

    def __repr__(self) -> str:
        return (
            f"OnlineResponse(rows={self._table.num_rows}, entities={self.entity_names}, "
            f"features={self.feature_names})"
        )


class TrainingSet:
    """A point-in-time correct training set: the entity table's columns in their order,
    then the features, one row per entity row in input order."""

    def __init__(self, table: pa.Table):
        """Wraps the training set ``table``."""
        self._table = table

    def to_arrow(self) -> pa.Table:
        """The training set as a pyarrow Table."""
        return self._table

    def to_df(self) -> "pd.DataFrame":
        """The training set as a pandas DataFrame (integers and booleans with nulls as
        pandas' nullable dtypes)."""
        df: "pd.DataFrame" = self._table.to_pandas(types_mapper=nullable_types_mapper)
        return df

    def __len__(self) -> int:
        """The number of rows."""
        return int(self._table.num_rows)

    def __repr__(self) -> str:
        return f"TrainingSet(rows={self._table.num_rows}, columns={self._table.column_names})"
