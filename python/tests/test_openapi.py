"""The OpenAPI document (``GET /openapi.json``) against a real ``larder serve``: every documented
operation is called with valid requests and its answers validated against the document, then
schemathesis fuzzes every operation (no 5xx, answers as documented).

Both run against a server of their own, with access control on (an ``admin`` token for the
calls, so the bearer scheme is exercised): the fuzz writes, erases, materializes and applies,
which must not change what the session's shared server holds for the other tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

import pytest

from conftest import EXTRA_DEFINITIONS, Server, demo_repo, run, running_server

if sys.version_info < (3, 11):  # schemathesis needs 3.11; the [test] extra installs it there
    pytest.skip("the OpenAPI tests need Python 3.11+", allow_module_level=True)

import pyarrow as pa
import urllib3
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

ARROW = "application/vnd.apache.arrow.stream"
METHODS = ("get", "post", "put", "patch", "delete")

#: Examples per operation in the fuzz (the CI default keeps it well under 2 minutes).
FUZZ_EXAMPLES = int(os.environ.get("LARDER_FUZZ_EXAMPLES", "25"))
#: A fixed seed, so a failure reproduces; set LARDER_FUZZ_SEED to explore others.
FUZZ_SEED = int(os.environ.get("LARDER_FUZZ_SEED", "20261204"))


@pytest.fixture(scope="module")
def openapi_repo(larder_bin: str, tmp_path_factory: pytest.TempPathFactory) -> "Tuple[Path, int]":
    """The session's demo repo (with the SDK tests' push-fed views), applied and materialized,
    with access control on."""
    repo, port = demo_repo(larder_bin, tmp_path_factory.mktemp("openapi"))
    (repo / "features" / "sdk_tests.yaml").write_text(EXTRA_DEFINITIONS)
    run(larder_bin, repo, "apply")
    run(larder_bin, repo, "materialize")
    with open(repo / "larder.yaml", "a") as config:
        config.write("auth: {tokens_file: data/tokens.yaml}\n")
    return repo, port


@pytest.fixture(scope="module")
def openapi_tokens(larder_bin: str, openapi_repo: "Tuple[Path, int]") -> Dict[str, str]:
    """An admin (every scope) and a reader."""
    repo = openapi_repo[0]

    def create(token_id: str, *args: str) -> str:
        return run(larder_bin, repo, "token", "create", token_id, *args).strip()

    return {
        "admin": create("fuzz-admin", "--scope", "admin"),
        "reader": create("fuzz-reader", "--scope", "read"),
    }


@pytest.fixture(scope="module")
def openapi_server(
    larder_bin: str, openapi_repo: "Tuple[Path, int]", openapi_tokens: Dict[str, str]
) -> Iterator[Server]:
    """`larder serve` over the repo, started after its tokens were made."""
    repo, port = openapi_repo
    with running_server(larder_bin, repo, port, repo.parent / "serve.log") as served:
        yield served


def operations(document: Dict[str, Any]) -> Set[Tuple[str, str]]:
    """Every (METHOD, path) the document describes."""
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }


class Contract:
    """Validates real answers against the document and records what was exercised."""

    def __init__(self, document: Dict[str, Any], base_url: str, token: str) -> None:
        self.document = document
        self.base_url = base_url
        self.token = token
        self.http = urllib3.PoolManager(timeout=urllib3.Timeout(total=120), retries=False)
        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self.registry = Registry().with_resource("urn:larder:openapi", resource)
        self.exercised: Set[Tuple[str, str]] = set()

    def _pointer(self, *parts: str) -> str:
        escaped = [part.replace("~", "~0").replace("/", "~1") for part in parts]
        return "urn:larder:openapi#/" + "/".join(escaped)

    def _validate(self, pointer: str, instance: Any, what: str) -> None:
        validator = Draft202012Validator({"$ref": pointer}, registry=self.registry)
        errors = sorted(validator.iter_errors(instance), key=lambda error: list(error.path))
        assert not errors, f"{what}: " + "; ".join(
            f"{list(error.absolute_path)}: {error.message}" for error in errors[:5]
        )

    def call(
        self,
        method: str,
        template: str,
        *,
        path: Optional[str] = None,
        body: Any = None,
        raw: Optional[bytes] = None,
        content_type: str = "application/json",
        headers: Optional[Dict[str, str]] = None,
        token: Optional[str] = "admin",
        query: str = "",
        expect: int = 200,
    ) -> urllib3.BaseHTTPResponse:
        """Sends a request to the operation `method template` and checks the answer's status
        is `expect`, documented, and its body valid against the documented schema."""
        operation = self.document["paths"][template][method.lower()]
        url = self.base_url + (path or template) + (f"?{query}" if query else "")
        sent = dict(headers or {})
        if token == "admin":
            sent["Authorization"] = f"Bearer {self.token}"
        elif token is not None:
            sent["Authorization"] = f"Bearer {token}"
        payload = raw
        if body is not None:
            payload = json.dumps(body).encode()
        if payload is not None:
            sent.setdefault("Content-Type", content_type)
        response = self.http.request(
            method, url, body=payload, headers=sent, redirect=False, preload_content=True
        )
        what = f"{method} {url} -> {response.status}"
        assert response.status == expect, f"{what}: {response.data[:2000]!r}"
        status = str(response.status)
        assert status in operation["responses"], f"{what}: status {status} is not documented"
        answer = operation["responses"][status]
        location: List[str] = ["paths", template, method.lower(), "responses", status]
        if "$ref" in answer:
            name = answer["$ref"].rsplit("/", 1)[1]
            answer = self.document["components"]["responses"][name]
            location = ["components", "responses", name]
        for header in answer.get("headers", {}):
            if header in ("Retry-After",):
                continue  # only for some of the errors behind that status
            assert response.headers.get(header) is not None, f"{what}: no {header} header"
        content = answer.get("content", {})
        if not content:
            assert not response.data, f"{what}: a body where none is documented"
            self.exercised.add((method.upper(), template))
            return response
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        assert media_type in content, f"{what}: content type {media_type!r} is not documented"
        if media_type == "application/json":
            decoded = json.loads(response.data)
            self._validate(
                self._pointer(*location, "content", media_type, "schema"), decoded, what
            )
            if response.status >= 400:
                # The error detail is a JSON string; its decoded object has a schema too.
                self._validate(
                    self._pointer("components", "schemas", "FeastErrorObject"),
                    json.loads(decoded),
                    what,
                )
        elif media_type == ARROW:
            pa.ipc.open_stream(response.data).read_all()
        else:
            assert isinstance(response.data.decode(), str)
        self.exercised.add((method.upper(), template))
        return response


@pytest.fixture(scope="module")
def document(openapi_server: Server) -> Dict[str, Any]:
    """The document as the server serves it (no token needed)."""
    response = urllib3.request("GET", openapi_server.url + "/openapi.json", retries=False)
    assert response.status == 200, response.data
    assert response.headers["Content-Type"] == "application/json"
    parsed = json.loads(response.data)
    assert parsed["openapi"].startswith("3.1")
    return parsed


def arrow_stream(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def test_every_operation_answers_as_documented(
    openapi_server: Server, openapi_tokens: Dict[str, str], document: Dict[str, Any]
) -> None:
    api = Contract(document, openapi_server.url, openapi_tokens["admin"])
    users = {"user_id": [1, 2, 3]}
    today = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    # Operations.
    api.call("GET", "/health", token=None)
    api.call("GET", "/openapi.json", token=None)
    api.call("GET", "/status")
    metrics = api.call("GET", "/metrics")
    assert b"larder_http_requests_total" in metrics.data

    # Direct writes, JSON and Arrow, then reads of them.
    api.call(
        "POST",
        "/write-to-online-store",
        body={
            "feature_view_name": "scores",
            "df": {
                "user_id": [1, 2],
                "event_timestamp": [today, today],
                **{f"s{index}": [index, index + 1] for index in range(8)},
            },
        },
    )
    arrow_rows = pa.table(
        {
            "user_id": pa.array([3], pa.int64()),
            "event_timestamp": pa.array([time.time_ns() // 1000], pa.timestamp("us", "UTC")),
            **{f"s{index}": pa.array([index], pa.int64()) for index in range(8)},
        }
    )
    api.call(
        "POST",
        "/write-to-online-store",
        raw=arrow_stream(arrow_rows),
        content_type=ARROW,
        query="feature_view_name=scores",
    )
    written = api.call(
        "POST",
        "/push",
        body={
            "push_source_name": "documents_push",
            "df": {
                "user_id": [1, 2, 3],
                "event_timestamp": [today] * 3,
                "embedding": [[1, 0, 0, 0], [0, 1, 0, 0], [0.5, 0.5, 0, 0]],
                "category": ["a", "b", "a"],
            },
            "to": "online_and_offline",
        },
    )
    assert json.loads(written.data)["feature_views"][0]["written"] == 3
    read = api.call(
        "POST",
        "/get-online-features",
        body={
            "features": ["user_profile:age", "user_activity:recent_item_ids", "scores:s1"],
            "entities": users,
            "include_feature_view_version_metadata": True,
        },
    )
    assert json.loads(read.data)["results"][3]["values"] == [1, 2, 1]
    api.call(
        "POST",
        "/get-online-features",
        body={"feature_service": "ranking_model", "entities": users, "full_feature_names": True},
        headers={"Accept": ARROW},
    )
    hits = api.call(
        "POST",
        "/retrieve-online-documents",
        body={
            "features": ["documents:embedding", "documents:category"],
            "query": [1, 0, 0, 0],
            "top_k": 2,
            "filters": [{"feature": "category", "eq": "a"}],
        },
    )
    assert json.loads(hits.data)["results"][0]["values"] == [1, 3]
    api.call(
        "POST",
        "/get-historical-features",
        body={
            "features": ["user_profile:age", "user_activity:clicks_7d"],
            "entities": {**users, "event_timestamp": [today] * 3, "label": [0, 1, 0]},
        },
    )
    repaired = api.call(
        "POST",
        "/repair-future-event-times",
        body={"feature_view_name": "scores", "entities": {"user_id": [1]}},
    )
    assert json.loads(repaired.data) == {"status": "ok", "deleted": []}

    # The registry API and the UI.
    api.call("GET", "/api/v1/feature-views", query="tier=tier1")
    api.call("GET", "/api/v1/feature-views/{name}", path="/api/v1/feature-views/user_profile")
    api.call("GET", "/api/v1/features", query="q=age")
    api.call("GET", "/api/v1/lineage")
    api.call("GET", "/api/v1/lineage/{name}", path="/api/v1/lineage/ranking_model")
    api.call("GET", "/api/v1/entities")
    api.call("GET", "/api/v1/sources")
    api.call("GET", "/api/v1/feature-services")
    api.call("GET", "/ui", query="q=user")
    api.call("GET", "/ui/views/{name}", path="/ui/views/user_profile", query="user_id=1")
    api.call("GET", "/ui/lineage", query="name=user_profile")
    api.call("GET", "/ui/login", token=None, query="next=/ui/lineage")
    login = api.call(
        "POST",
        "/ui/login",
        token=None,
        raw=f"token={openapi_tokens['reader']}&next=/ui/lineage".encode(),
        content_type="application/x-www-form-urlencoded",
        expect=303,
    )
    assert login.headers["Location"] == "/ui/lineage"

    # Batch runs, erasure and apply.
    ran = api.call("POST", "/materialize", body={"disable_event_timestamp": True})
    assert {run["status"] for run in json.loads(ran.data)["runs"]} == {"succeeded"}
    api.call(
        "POST",
        "/materialize-incremental",
        body={"end_ts": today, "feature_views": ["user_profile"]},
    )
    api.call("POST", "/forget", body={"entities": {"user_id": [199]}, "verify": True})
    erased = api.call("POST", "/forget", body={"entities": {"user_id": [199]}})
    assert json.loads(erased.data)["entities"] == 1
    api.call("POST", "/api/v1/apply", body={"dry_run": True})
    api.call(
        "POST",
        "/materialize",
        query="async=true",
        body={"feature_views": ["user_activity"], "disable_event_timestamp": True},
        expect=202,
    )

    # Errors: Feast's error detail with the documented statuses and headers.
    unauthenticated = api.call("GET", "/status", token=None, expect=401)
    assert "Bearer" in unauthenticated.headers["WWW-Authenticate"]
    api.call(
        "POST",
        "/push",
        token=openapi_tokens["reader"],
        body={"push_source_name": "scores_push", "df": {"user_id": [1]}},
        expect=403,
    )
    api.call("POST", "/get-online-features", body={"entities": users}, expect=400)
    api.call("POST", "/get-online-features", raw=b"{not json", expect=400)
    api.call("GET", "/api/v1/feature-views/{name}", path="/api/v1/feature-views/nope", expect=404)
    api.call("GET", "/ui", token=None, expect=401)

    missing = operations(document) - api.exercised
    assert not missing, f"documented operations this test never called: {sorted(missing)}"


def schemathesis_command() -> List[str]:
    """The schemathesis CLI of this interpreter's environment."""
    script = Path(sys.executable).parent / "schemathesis"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()"]


def test_fuzzing_finds_no_server_error_and_no_undocumented_answer(
    openapi_server: Server, openapi_tokens: Dict[str, str], tmp_path: Path
) -> None:
    """A bounded schemathesis run over every operation, /materialize, /forget and
    /api/v1/apply included (on this test's own server they take well under a second; nothing is
    excluded): any 5xx, or an answer whose status, content type, headers or body the document
    does not describe, fails the test with schemathesis' report. (Loaded from its URL,
    schemathesis leaves out GET /openapi.json itself; the test above covers it.)"""
    command = [
        *schemathesis_command(),
        "run",
        openapi_server.url + "/openapi.json",
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_headers_conformance,response_schema_conformance",
        "--max-examples",
        str(FUZZ_EXAMPLES),
        "--seed",
        str(FUZZ_SEED),
        # One worker: Hypothesis' lambda descriptions are not thread-safe (schemathesis 4.32
        # reports spurious "AST constructor recursion depth mismatch" errors with several).
        "--workers",
        "1",
        "--request-timeout",
        "60",
        "--header",
        f"Authorization: Bearer {openapi_tokens['admin']}",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
        "--no-color",
    ]
    started = time.monotonic()
    completed = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1"},
    )
    elapsed = time.monotonic() - started
    report = completed.stdout + completed.stderr
    print(report)
    print(f"schemathesis ran {elapsed:.1f}s")
    exit_code = completed.returncode
    assert exit_code == 0, f"schemathesis failed (exit {exit_code}):\n{report}"
    assert "generated" in report and "passed" in report, report
