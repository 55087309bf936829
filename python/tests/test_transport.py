"""Transport behaviour: retries on 503 (a local test double for the transport), a server that
is down, error bodies. The JSON fallback is exercised by the double's answer."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, List, Tuple

import pytest

import larder
from conftest import free_port

FEAST_ANSWER = {
    "metadata": {"feature_names": ["user_id", "age"]},
    "results": [
        {"values": [1, 2], "statuses": ["PRESENT", "PRESENT"], "event_timestamps": ["1970-01-01T00:00:00Z"] * 2},
        {
            "values": [34, None],
            "statuses": ["PRESENT", "NOT_FOUND"],
            "event_timestamps": ["2026-11-19T03:12:44.113Z", "1970-01-01T00:00:00Z"],
        },
    ],
}


def feast_error(code: str, message: str) -> bytes:
    detail = {"module": "feast.errors", "class": "FeastError", "message": message, "code": code}
    return json.dumps(json.dumps(detail)).encode()


class Double:
    """A tiny HTTP server: answers `failures` times with `status`, then 200 (Feast JSON)."""

    def __init__(self, failures: int, status: int = 503, retry_after: str = "0") -> None:
        self.failures = failures
        self.hits: List[Tuple[str, float]] = []
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", 0))
                self.rfile.read(length)
                double.hits.append((self.path, time.monotonic()))
                if len(double.hits) <= double.failures:
                    if status == 503:
                        body = feast_error("RESOURCE_EXHAUSTED", "the server is at its concurrency limit")
                    else:
                        body = feast_error("INTERNAL", "the online store failed (request id 1)")
                    self.send_response(status)
                    self.send_header("Retry-After", retry_after)
                else:
                    body = json.dumps(FEAST_ANSWER).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def double_factory() -> Iterator:
    doubles: List[Double] = []

    def make(*args: object, **kwargs: object) -> Double:
        d = Double(*args, **kwargs)  # type: ignore[arg-type]
        doubles.append(d)
        return d

    yield make
    for d in doubles:
        d.close()


def test_retries_503_then_succeeds(double_factory) -> None:
    double = double_factory(failures=2)
    client = larder.Client(double.url, retries=3, backoff=0.01)
    response = client.get_online_features(["user_profile:age"], entities={"user_id": [1, 2]})
    assert len(double.hits) == 3
    # The JSON fallback of an older server: typed by inference, event times parsed.
    assert response.to_dict() == {"user_id": [1, 2], "age": [34, None]}
    assert response.statuses() == {"age": ["PRESENT", "NOT_FOUND"]}
    times = response.event_timestamps()["age"]
    assert times[0] is not None and times[0].isoformat().startswith("2026-11-19T03:12:44.113")
    assert times[1] is None


def test_retry_after_is_honoured_but_capped(double_factory) -> None:
    double = double_factory(failures=1, retry_after="100")
    client = larder.Client(double.url, retries=1, backoff=0.01, max_retry_after=0.2)
    started = time.monotonic()
    client.get_online_features(["user_profile:age"], entities={"user_id": [1, 2]})
    elapsed = time.monotonic() - started
    assert 0.19 <= elapsed < 5
    assert len(double.hits) == 2


def test_503_after_the_retries_raises_unavailable(double_factory) -> None:
    double = double_factory(failures=10)
    client = larder.Client(double.url, retries=2, backoff=0.01)
    with pytest.raises(larder.Unavailable) as caught:
        client.get_online_features(["user_profile:age"], entities={"user_id": [1]})
    assert len(double.hits) == 3
    assert caught.value.status == 503
    assert caught.value.code == "RESOURCE_EXHAUSTED"
    assert "concurrency limit" in caught.value.message
    assert double.url in caught.value.message


def test_500_raises_server_error(double_factory) -> None:
    double = double_factory(failures=10, status=500)
    client = larder.Client(double.url, retries=3, backoff=0.01)
    with pytest.raises(larder.ServerError):
        client.get_online_features(["user_profile:age"], entities={"user_id": [1]})
    assert len(double.hits) == 1  # only 503 is retried


def test_server_down_is_unavailable_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = larder.Client(url, retries=2, backoff=0.01)
    with pytest.raises(larder.Unavailable) as caught:
        client.get_online_features(["user_profile:age"], entities={"user_id": [1]})
    assert url in caught.value.message
    assert "3 attempts" in caught.value.message
    with pytest.raises(larder.Unavailable) as caught:
        client.write_to_online_store("scores", {"user_id": [1]})
    assert "1 attempt" in caught.value.message  # writes are not retried on connection errors
    assert client.health() is False


def test_conversion_error_sends_nothing() -> None:
    client = larder.Client(f"http://127.0.0.1:{free_port()}", retries=0)
    with pytest.raises(larder.ConversionError) as caught:
        client.push("p", {"user_id": [1, "two"]})
    assert "user_id" in caught.value.message


def test_error_body_parsing() -> None:
    from larder._errors import error_from_response

    error = error_from_response(404, feast_error("NOT_FOUND", "feature view 'x' not found"), "http://h")
    assert isinstance(error, larder.NotFound)
    assert (error.code, error.status, error.message) == ("NOT_FOUND", 404, "feature view 'x' not found")
    error = error_from_response(413, b"too big", "http://h")
    assert isinstance(error, larder.PayloadTooLarge) and error.message == "too big"
    assert isinstance(error_from_response(409, b"{}", "u"), larder.Conflict)
    assert isinstance(error_from_response(502, b"", "u"), larder.ServerError)
