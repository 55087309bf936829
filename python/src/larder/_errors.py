"""Exceptions raised by the Larder SDK, built from the server's error body.

The server answers errors with Feast's error detail: the body is a JSON *string* holding an
object ``{"module", "class", "message", "code"}``; ``code`` is Larder's stable error code
(``INVALID_ARGUMENT``, ``NOT_FOUND``, ...). :func:`error_from_response` turns such a body into
the matching exception class.
"""

from __future__ import annotations

import json
from typing import Dict, Optional, Type

__all__ = [
    "LarderError",
    "InvalidArgument",
    "ConversionError",
    "NotFound",
    "PayloadTooLarge",
    "Conflict",
    "Unavailable",
    "ServerError",
    "error_from_response",
]


class LarderError(Exception):
    """Base class of every error the SDK raises.

    Attributes:
        code: Larder's stable error code (``INVALID_ARGUMENT``, ``NOT_FOUND``,
            ``UNAVAILABLE``, ...), or ``None`` when the error did not come from a server
            answer that carried one.
        status: The HTTP status of the answer, or ``None`` (no answer, local mode).
        message: The human-readable message (the server's, or the CLI's stderr).
    """

    def __init__(
        self, message: str, code: Optional[str] = None, status: Optional[int] = None
    ) -> None:
        super().__init__(message)
        self.message: str = message
        self.code: Optional[str] = code
        self.status: Optional[int] = status

    def __str__(self) -> str:
        prefix = []
        if self.status is not None:
            prefix.append(str(self.status))
        if self.code:
            prefix.append(self.code)
        return f"[{' '.join(prefix)}] {self.message}" if prefix else self.message


class InvalidArgument(LarderError):
    """The request was refused as invalid (HTTP 400, ``INVALID_ARGUMENT``)."""


class ConversionError(InvalidArgument, TypeError):
    """Client-side: a column could not be converted to Arrow; nothing was sent."""


class Unauthenticated(LarderError):
    """The server requires an API token and got none, or an unknown one (HTTP 401)."""


class PermissionDenied(LarderError):
    """The token lacks the scope or the feature views the request needs (HTTP 403); the
    message names what is missing."""


class NotFound(LarderError):
    """A feature view, feature, feature service or push source does not exist (HTTP 404)."""


class PayloadTooLarge(LarderError):
    """The body or the number of entities is over the server's limits (HTTP 413)."""


class Conflict(LarderError):
    """The operation conflicts with one in progress, e.g. a running materialization (409)."""


class Unavailable(LarderError):
    """The server or its online store cannot be reached or is overloaded (503, or no
    connection at all); the message names the URL."""


class ServerError(LarderError):
    """The server failed (HTTP 5xx other than 503)."""


_BY_CODE: Dict[str, Type[LarderError]] = {
    "INVALID_ARGUMENT": InvalidArgument,
    "NOT_FOUND": NotFound,
    "UNAUTHENTICATED": Unauthenticated,
    "PERMISSION_DENIED": PermissionDenied,
    "PAYLOAD_TOO_LARGE": PayloadTooLarge,
    "CONFLICT": Conflict,
    "UNAVAILABLE": Unavailable,
    "RESOURCE_EXHAUSTED": Unavailable,
    "INTERNAL": ServerError,
    "RUN_FAILED": ServerError,
}

_BY_STATUS: Dict[int, Type[LarderError]] = {
    400: InvalidArgument,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    503: Unavailable,
}


def _parse_body(body: bytes) -> "tuple[Optional[str], str]":
    """The ``(code, message)`` of an error body (Feast's detail, a JSON object, or text)."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        detail: object = json.loads(text)
        if isinstance(detail, str):  # Feast's detail: a JSON string holding an object
            detail = json.loads(detail)
    except ValueError:
        return None, text or "(empty body)"
    if isinstance(detail, dict):
        inner = detail.get("error", detail)  # also accept {"error": {"code", "message"}}
        if isinstance(inner, dict):
            code = inner.get("code")
            message = inner.get("message") or inner.get("detail") or text
            return (str(code) if code else None), str(message)
    return None, text


def error_from_response(status: int, body: bytes, url: str) -> LarderError:
    """The exception for an error answer: by the body's code, else by HTTP status."""
    code, message = _parse_body(body)
    cls: Type[LarderError] = LarderError
    if code and code in _BY_CODE:
        cls = _BY_CODE[code]
    elif status in _BY_STATUS:
        cls = _BY_STATUS[status]
    elif status >= 500:
        cls = ServerError
    if cls is Unavailable:
        message = f"{message} ({url})"
    return cls(message, code=code, status=status)
