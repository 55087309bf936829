"""Access control and discovery against a real ``larder serve`` with ``auth`` on: tokens made
by ``larder token create``, scopes and view limits enforced, the registry API searched."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator

import pytest

import larder

from conftest import Server, demo_repo, run, running_server


@pytest.fixture(scope="module")
def secured_repo(larder_bin: str, tmp_path_factory: pytest.TempPathFactory) -> "tuple[Path, int]":
    """A demo repo with access control on, applied and materialized."""
    repo, port = demo_repo(larder_bin, tmp_path_factory.mktemp("secured"), entities=50)
    run(larder_bin, repo, "apply")
    run(larder_bin, repo, "materialize")
    with open(repo / "larder.yaml", "a") as config:
        config.write("auth: {tokens_file: data/tokens.yaml}\n")
    return repo, port


@pytest.fixture(scope="module")
def tokens(larder_bin: str, secured_repo: "tuple[Path, int]") -> Dict[str, str]:
    """A reader of every view, a writer, and a reader limited to user_profile."""
    repo = secured_repo[0]

    def create(token_id: str, *args: str) -> str:
        return run(larder_bin, repo, "token", "create", token_id, *args).strip()

    return {
        "reader": create("reader", "--scope", "read"),
        "writer": create("writer", "--scope", "write"),
        "profiles": create("profiles", "--scope", "read", "--views", "user_profile"),
    }


@pytest.fixture(scope="module")
def secured(
    larder_bin: str, secured_repo: "tuple[Path, int]", tokens: Dict[str, str]
) -> Iterator[Server]:
    """`larder serve` over the secured repo, started after its tokens were made."""
    repo, port = secured_repo
    with running_server(larder_bin, repo, port, repo.parent / "serve.log") as served:
        yield served


def test_requests_need_a_token_with_the_right_scope(
    secured: Server, tokens: Dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LARDER_TOKEN", raising=False)
    entities = {"user_id": [1, 2]}
    with larder.Client(secured.url) as anonymous:
        assert anonymous.health()  # liveness stays open
        with pytest.raises(larder.Unauthenticated, match="requires an API token"):
            anonymous.get_online_features(["user_profile:age"], entities)
    with larder.Client(secured.url, token=tokens["reader"]) as reader:
        ages = reader.get_online_features(["user_profile:age"], entities).to_dict()["age"]
        assert len(ages) == 2 and all(isinstance(age, int) for age in ages)
        with pytest.raises(larder.PermissionDenied, match="'write' scope"):
            reader.write_to_online_store(
                "user_profile", {"user_id": [1], "event_timestamp": ["2026-01-01T00:00:00Z"]}
            )
    with larder.Client(secured.url, token=tokens["profiles"]) as limited:
        limited.get_online_features(["user_profile:age"], entities)
        with pytest.raises(larder.PermissionDenied, match="user_activity"):
            limited.get_online_features(["user_activity:clicks_7d"], entities)
        assert [view["name"] for view in limited.list_feature_views()] == ["user_profile"]


def test_the_token_can_come_from_the_environment(
    secured: Server, tokens: Dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LARDER_TOKEN", tokens["reader"])
    with larder.Client(secured.url) as client:
        assert client.status()["project"] == "demo"


def test_discovery_searches_describes_and_traces(secured: Server, tokens: Dict[str, str]) -> None:
    with larder.Client(secured.url, token=tokens["reader"]) as client:
        found = client.search_features("conversion")
        assert [feature["reference"] for feature in found] == [
            "user_activity:conversion_rate_30d"
        ]
        tier1 = client.list_feature_views(tier="tier1")
        assert {view["name"] for view in tier1} == {"user_profile", "user_activity"}
        described = client.describe("user_activity")
        assert described["definition"]["transformation"].lstrip().startswith("--")
        assert described["versions"][0]["version"] == 1
        assert described["runs"][0]["status"] == "succeeded"
        assert described["freshness"]["status"] in {"ok", "late"}
        graph = client.lineage("user_profile:age")
        assert graph["impacted_feature_services"] == ["ranking_model"]
        kinds = {node["kind"] for node in graph["nodes"]}
        assert kinds == {"source", "feature_view", "feature", "feature_service"}
        with pytest.raises(larder.NotFound, match="nope"):
            client.describe("nope")


def test_the_tokens_file_holds_hashes_only(secured: Server, tokens: Dict[str, str]) -> None:
    text = Path(secured.repo / "data" / "tokens.yaml").read_text()
    for token in tokens.values():
        secret = token.rsplit(".", 1)[1]
        assert len(secret) == 64 and secret not in text
    assert text.count("sha256: ") == len(tokens)
