"""The HTTP client of a running ``larder serve``."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union
from urllib.parse import quote, urlencode

import pyarrow as pa
import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError, ProtocolError

from ._convert import (
    ARROW_STREAM,
    TableLike,
    entities_to_columns,
    ipc_stream_bytes,
    to_arrow_table,
)
from ._errors import ConversionError, InvalidArgument, LarderError, Unavailable, error_from_response
from ._response import ForgetResult, OnlineResponse, TrainingSet, WriteResult

__all__ = ["Client"]

_PUSH_TARGETS = ("online", "offline", "online_and_offline")


def _wire_table(table: pa.Table) -> pa.Table:
    """``table`` without pandas metadata and with large Arrow types (pandas' strings) cast to
    their regular forms, as the server reads them."""

    def regular(data_type: pa.DataType) -> pa.DataType:
        if pa.types.is_large_string(data_type) or str(data_type) == "string_view":
            return pa.string()
        if pa.types.is_large_binary(data_type):
            return pa.binary()
        if pa.types.is_large_list(data_type):
            return pa.list_(regular(data_type.value_type))
        if pa.types.is_list(data_type):
            return pa.list_(regular(data_type.value_type))
        return data_type

    fields = [pa.field(f.name, regular(f.type), f.nullable) for f in table.schema]
    schema = pa.schema(fields)
    if schema != table.schema.remove_metadata():
        try:
            table = table.cast(schema)
        except (pa.ArrowException, ValueError) as error:  # pragma: no cover - defensive
            raise ConversionError(str(error), code="INVALID_ARGUMENT") from error
    return table.replace_schema_metadata(None)


class Client:
    """A client of a running ``larder serve`` (HTTP API).

    One connection pool is kept for the client's life (connections are reused; the client is
    safe to share between threads). Answers that say the server is overloaded or its store
    unavailable (503) are retried with exponential backoff (``Retry-After`` honoured, capped
    at ``max_retry_after`` seconds); connection failures (refused, reset) are retried for
    reads only. Errors raise :class:`~larder.LarderError` subclasses built from the server's
    error body.

    Args:
        url: The server's base URL.
        timeout: Seconds to connect, and between bytes of an answer.
        retries: How many times a retryable failure is retried (0: never).
        backoff: The first retry's delay in seconds; each next one doubles it.
        max_retry_after: The most seconds a retry waits, whatever ``Retry-After`` says.
        token: The API token (``larder.<id>.<secret>``) of a server with access control on;
            default: the ``LARDER_TOKEN`` environment variable. Sent as a bearer token.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:6566",
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.1,
        max_retry_after: float = 5.0,
        token: Optional[str] = None,
    ) -> None:
        self.url: str = url.rstrip("/")
        """The server's base URL."""
        token = token if token is not None else os.environ.get("LARDER_TOKEN")
        self._auth_headers: Dict[str, str] = (
            {"Authorization": f"Bearer {token.strip()}"} if token and token.strip() else {}
        )
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self.max_retry_after = max_retry_after
        self._pool = urllib3.PoolManager(
            num_pools=4, maxsize=16, block=False, retries=False, timeout=urllib3.Timeout(timeout)
        )

    # -- transport -------------------------------------------------------------------------

    def _delay(self, attempt: int, retry_after: Optional[str] = None) -> float:
        delay = float(self.backoff) * float(2**attempt)
        if retry_after:
            try:
                delay = float(retry_after)
            except ValueError:
                pass  # an HTTP date: keep the backoff
        return float(max(0.0, min(delay, float(self.max_retry_after))))

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Optional[bytes] = None,
        headers: Optional[Mapping[str, str]] = None,
        idempotent: bool,
    ) -> urllib3.BaseHTTPResponse:
        """Sends a request (with retries) and returns a successful answer, its body not yet
        read (the caller reads it and releases the connection)."""
        url = self.url + path
        attempt = 0
        while True:
            try:
                response = self._pool.request(
                    method,
                    url,
                    body=body,
                    headers={**self._auth_headers, **dict(headers or {})},
                    preload_content=False,
                    redirect=False,
                    retries=False,
                )
            except (NewConnectionError, ProtocolError, ConnectionError) as error:
                if idempotent and attempt < self.retries:
                    time.sleep(self._delay(attempt))
                    attempt += 1
                    continue
                tries = attempt + 1
                raise Unavailable(
                    f"cannot reach the Larder server at {url} "
                    f"({tries} attempt{'s' if tries > 1 else ''}): {error}",
                    code="UNAVAILABLE",
                ) from error
            except HTTPError as error:  # timeouts and the rest
                raise Unavailable(
                    f"the Larder server at {url} did not answer: {error}", code="UNAVAILABLE"
                ) from error
            if response.status == 503 and attempt < self.retries:
                retry_after = response.headers.get("Retry-After")
                response.drain_conn()
                response.release_conn()
                time.sleep(self._delay(attempt, retry_after))
                attempt += 1
                continue
            if response.status >= 400:
                try:
                    data = response.read()
                finally:
                    response.release_conn()
                raise error_from_response(response.status, data, url)
            return response

    def _json(self, response: urllib3.BaseHTTPResponse) -> Any:
        try:
            return json.loads(response.read() or b"null")
        finally:
            response.release_conn()

    def _arrow(
        self, response: urllib3.BaseHTTPResponse, path: str, *, stream: bool = True
    ) -> pa.Table:
        """Reads an Arrow IPC stream answer: as it arrives (training sets), or, for small
        answers (online reads), read whole first, which saves many small socket reads."""
        try:
            source: Any = response if stream else pa.py_buffer(response.read())
            reader = pa.ipc.open_stream(source)
            return reader.read_all()
        except (pa.ArrowException, OSError, HTTPError) as error:
            raise LarderError(
                f"the Arrow answer of {self.url}{path} was cut or malformed: {error}"
            ) from error
        finally:
            response.release_conn()

    # -- reads -----------------------------------------------------------------------------

    def health(self) -> bool:
        """Whether the server answers ``GET /health`` with 200 (one attempt, no retries)."""
        try:
            response = self._pool.request(
                "GET", self.url + "/health", retries=False, timeout=urllib3.Timeout(self.timeout)
            )
        except (HTTPError, OSError):
            return False
        return response.status == 200

    def status(self) -> Dict[str, Any]:
        """``GET /status``: every online view's freshness against its SLA."""
        result: Dict[str, Any] = self._json(self._request("GET", "/status", idempotent=True))
        return result

    # -- discovery ------------------------------------------------------------------------

    def _get_json(self, path: str, params: Optional[Mapping[str, Optional[str]]] = None) -> Any:
        query = {key: value for key, value in (params or {}).items() if value}
        if query:
            path = f"{path}?{urlencode(query)}"
        return self._json(self._request("GET", path, idempotent=True))

    def _search(self, path: str, key: str, query: Optional[str], **filters: Optional[str]) -> Any:
        return self._get_json(path, {"q": query, **filters})[key]

    def search_features(
        self,
        query: Optional[str] = None,
        *,
        owner: Optional[str] = None,
        tier: Optional[str] = None,
        tag: Optional[str] = None,
        entity: Optional[str] = None,
        source: Optional[str] = None,
    ) -> List[Dict[str, Any]]:
        """Features whose name, description or view metadata contain every word of
        ``query``, in views matching the filters (``tag`` is ``key`` or ``key=value``)."""
        result: List[Dict[str, Any]] = self._search(
            "/api/v1/features", "features", query,
            owner=owner, tier=tier, tag=tag, entity=entity, source=source,
        )
        return result

    def list_feature_views(
        self,
        query: Optional[str] = None,
        *,
        owner: Optional[str] = None,
        tier: Optional[str] = None,
        tag: Optional[str] = None,
        entity: Optional[str] = None,
        source: Optional[str] = None,
    ) -> List[Dict[str, Any]]:
        """Feature views matching ``query`` and the filters, best match first."""
        result: List[Dict[str, Any]] = self._search(
            "/api/v1/feature-views", "feature_views", query,
            owner=owner, tier=tier, tag=tag, entity=entity, source=source,
        )
        return result

    def describe(self, view: str) -> Dict[str, Any]:
        """Everything about one feature view: definition (schema, SQL, TTL, checks,
        schedule), every version with what changed, freshness, the last runs."""
        result: Dict[str, Any] = self._get_json(f"/api/v1/feature-views/{quote(view, safe='')}")
        return result

    def lineage(self, name: Optional[str] = None) -> Dict[str, Any]:
        """The lineage graph (``nodes``, ``edges``) of a source, view, ``view:feature`` or
        feature service, with ``impacted_feature_services``; the whole project's without a
        name."""
        path = "/api/v1/lineage" + (f"/{quote(name, safe='')}" if name else "")
        result: Dict[str, Any] = self._get_json(path)
        return result

    def get_online_features(
        self,
        features: Optional[Sequence[str]] = None,
        entities: Optional[TableLike] = None,
        *,
        feature_service: Optional[str] = None,
        full_feature_names: bool = False,
    ) -> OnlineResponse:
        """Reads the latest feature values of some entities.

        Args:
            features: Feature references ``view:feature`` (or give ``feature_service``).
            entities: The join key columns: a dict of lists, a pandas DataFrame or a pyarrow
                Table, e.g. ``{"user_id": [1, 2]}``.
            feature_service: A feature service instead of a feature list.
            full_feature_names: Name features ``view__feature``.

        Returns:
            An :class:`OnlineResponse`, typed as the features are declared.
        """
        selection = _selection(features, feature_service)
        if entities is None:
            raise InvalidArgument("entities are required, e.g. {'user_id': [1, 2]}")
        columns = entities_to_columns(entities)
        payload: Dict[str, Any] = dict(selection)
        payload["entities"] = columns
        payload["full_feature_names"] = full_feature_names
        response = self._request(
            "POST",
            "/get-online-features",
            body=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json", "Accept": ARROW_STREAM},
            idempotent=True,
        )
        if response.headers.get("Content-Type", "").startswith(ARROW_STREAM):
            return OnlineResponse.from_arrow(
                self._arrow(response, "/get-online-features", stream=False), len(columns)
            )
        return OnlineResponse.from_json(self._json(response), len(columns))

    def retrieve_online_documents(
        self,
        query: Sequence[float],
        *,
        top_k: int,
        features: Sequence[str],
        filters: Optional[Sequence[Mapping[str, Any]]] = None,
        ef_search: Optional[int] = None,
        exact: bool = False,
    ) -> OnlineResponse:
        """Finds the entities whose indexed ``vector<N>`` feature is nearest to ``query``.

        The view is the one of ``features`` (all from one view, which has a ``vector_index``).
        Hits are checked against the online store: missing, expired or filtered rows are
        dropped, and the search widens until it has ``top_k`` hits or none are left.

        Args:
            query: The query vector (the indexed feature's dimension, finite numbers).
            top_k: How many hits at most (1 to the server's ``serving.max_top_k``).
            features: Feature references ``view:feature`` to return with each hit.
            filters: Conditions on the view's features, e.g.
                ``[{"feature": "category", "eq": "shoes"}, {"feature": "price", "gte": 10}]``
                (``eq``, ``ne``, ``gt``, ``gte``, ``lt``, ``lte``; several in one item all
                apply).
            ef_search: The approximate search's breadth for this request (more: better recall,
                slower).
            exact: Compare with every vector instead of searching the graph.

        Returns:
            An :class:`OnlineResponse` with one row per hit, nearest first: the join keys,
            the features, then ``distance``.
        """
        if not features:
            raise InvalidArgument("features are required, e.g. ['documents:category']")
        payload: Dict[str, Any] = {
            "features": list(features),
            "query": [float(component) for component in query],
            "top_k": int(top_k),
        }
        if filters:
            payload["filters"] = [dict(item) for item in filters]
        if ef_search is not None:
            payload["ef_search"] = int(ef_search)
        if exact:
            payload["exact"] = True
        response = self._request(
            "POST",
            "/retrieve-online-documents",
            body=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
            idempotent=True,
        )
        body = self._json(response)
        names = body.get("metadata", {}).get("feature_names", []) if isinstance(body, dict) else []
        # The answer's columns: the view's join keys, the features, then the distance.
        key_count = max(len(names) - len(features) - 1, 0)
        return OnlineResponse.from_json(body, key_count)

    def get_historical_features(
        self,
        entity_df: TableLike,
        features: Optional[Sequence[str]] = None,
        *,
        feature_service: Optional[str] = None,
        entity_timestamp_column: str = "event_timestamp",
        full_feature_names: bool = False,
    ) -> TrainingSet:
        """Builds a point-in-time correct training set on the server.

        Args:
            entity_df: The entity table: join keys, a timestamp column and any labels
                (carried through).
            features: Feature references ``view:feature`` (or give ``feature_service``).
            feature_service: A feature service instead of a feature list.
            entity_timestamp_column: The entity table's timestamp column.
            full_feature_names: Name features ``view__feature``.

        Returns:
            A :class:`TrainingSet`: one row per entity row, in input order.
        """
        selection = _selection(features, feature_service)
        table = _wire_table(to_arrow_table(entity_df, "entity table"))
        params: List[Any] = []
        if "features" in selection:
            params += [("features", f) for f in selection["features"]]
        else:
            params.append(("feature_service", selection["feature_service"]))
        params.append(("entity_timestamp_column", entity_timestamp_column))
        if full_feature_names:
            params.append(("full_feature_names", "true"))
        path = "/get-historical-features?" + urlencode(params)
        response = self._request(
            "POST",
            path,
            body=ipc_stream_bytes(table),
            headers={"Content-Type": ARROW_STREAM, "Accept": ARROW_STREAM},
            idempotent=True,
        )
        return TrainingSet(self._arrow(response, "/get-historical-features"))

    # -- writes ----------------------------------------------------------------------------

    def _write(self, path: str, df: TableLike) -> List[WriteResult]:
        table = _wire_table(to_arrow_table(df, "table to write"))
        if table.num_columns == 0:
            raise ConversionError("the table to write has no columns", code="INVALID_ARGUMENT")
        response = self._request(
            "POST",
            path,
            body=ipc_stream_bytes(table),
            headers={"Content-Type": ARROW_STREAM},
            idempotent=False,
        )
        body = self._json(response)
        views = body.get("feature_views", []) if isinstance(body, dict) else body
        return [WriteResult.from_json(v) for v in views or []]

    def push(
        self,
        push_source_name: str,
        df: TableLike,
        to: str = "online",
    ) -> List[WriteResult]:
        """Writes rows to every feature view of a push source.

        Args:
            push_source_name: The push source.
            df: The rows: join keys, the source's timestamp field and the features (pandas
                DataFrame, pyarrow Table/RecordBatch, or dict of lists).
            to: ``online``, ``offline`` or ``online_and_offline``.

        Returns:
            One :class:`WriteResult` per feature view written.
        """
        if to not in _PUSH_TARGETS:
            raise InvalidArgument(f"to must be one of {', '.join(_PUSH_TARGETS)}; got {to!r}")
        query = urlencode({"push_source_name": push_source_name, "to": to})
        return self._write("/push?" + query, df)

    def write_to_online_store(
        self,
        feature_view: str,
        df: TableLike,
        partial: bool = False,
    ) -> List[WriteResult]:
        """Writes rows to one feature view's online store.

        Args:
            feature_view: The view.
            df: The rows: join keys, the view's timestamp field and features.
            partial: Update only the features sent (besides join keys and event time),
                keeping each entity's other stored features. A row applies when the stored
                row's event time is not newer than its own (else it is ``skipped_stale``).

        Returns:
            The view's :class:`WriteResult` (a one-element list).
        """
        params = {"feature_view_name": feature_view}
        if partial:
            params["partial"] = "true"
        return self._write("/write-to-online-store?" + urlencode(params), df)

    # -- erasure ---------------------------------------------------------------------------

    def forget(self, entities: TableLike, *, verify: bool = False) -> ForgetResult:
        """Erases entities from every store the server keeps them in (GDPR): online rows,
        change-detection digests, stream aggregation state and offline history, as a
        durable job with an audit record. With ``verify``, erases nothing and counts what is
        left of the entities per store instead.

        Args:
            entities: The join key columns, e.g. ``{"user_id": [123]}`` (a dict of lists, a
                pandas DataFrame or a pyarrow Table).
            verify: Count instead of erasing.

        Returns:
            A :class:`ForgetResult` with the rows removed (or left) per store.
        """
        columns = entities_to_columns(entities)
        payload = {"entities": columns, "verify": verify}
        response = self._request(
            "POST",
            "/forget",
            body=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
            # Erasure is idempotent: a retried request finishes the same work.
            idempotent=True,
        )
        return ForgetResult.from_json(self._json(response))

    # -- life ------------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the pooled connections."""
        self._pool.clear()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"


def _selection(
    features: Optional[Sequence[str]], feature_service: Optional[str]
) -> Dict[str, Union[List[str], str]]:
    """The request's feature selection: exactly one of a feature list and a service."""
    if (features is None) == (feature_service is None):
        raise InvalidArgument("give either features=[...] or feature_service=..., not both")
    if feature_service is not None:
        return {"feature_service": feature_service}
    if isinstance(features, str):
        raise InvalidArgument("features must be a list of 'view:feature' strings, not a string")
    return {"features": list(features or [])}
