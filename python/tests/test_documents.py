"""Nearest-neighbour search (`Client.retrieve_online_documents`) against a real server: the
vectors are pushed, then found nearest first, filtered, and bad queries are refused."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import pyarrow as pa
import pytest

import larder

DOCUMENTS = {
    9001: ([1.0, 0.0, 0.0, 0.0], "shoes"),
    9002: ([0.9, 0.1, 0.0, 0.0], "hats"),
    9003: ([0.0, 1.0, 0.0, 0.0], "shoes"),
    9004: ([-1.0, 0.0, 0.0, 0.0], "shoes"),
}


@pytest.fixture(scope="module")
def documents(client: larder.Client) -> None:
    now = datetime.now(timezone.utc)
    table = pa.table(
        {
            "user_id": pa.array(list(DOCUMENTS), pa.int64()),
            "event_timestamp": pa.array([now] * len(DOCUMENTS), pa.timestamp("us", tz="UTC")),
            "embedding": pa.array(
                [vector for vector, _ in DOCUMENTS.values()], pa.list_(pa.float32(), 4)
            ),
            "category": pa.array([category for _, category in DOCUMENTS.values()]),
        }
    )
    results = client.push("documents_push", table)
    assert [result.rows for result in results] == [len(DOCUMENTS)]


def cosine_distance(a: list, b: list) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return 1.0 - dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_nearest_first_with_distances(client: larder.Client, documents: None) -> None:
    query = [1.0, 0.05, 0.0, 0.0]
    response = client.retrieve_online_documents(
        query, top_k=3, features=["documents:category"], exact=True
    )
    got = response.to_dict()
    assert list(got) == ["user_id", "category", "distance"]
    expected = sorted(DOCUMENTS, key=lambda key: cosine_distance(query, DOCUMENTS[key][0]))[:3]
    assert got["user_id"] == expected
    assert got["category"] == [DOCUMENTS[key][1] for key in expected]
    for key, distance in zip(expected, got["distance"]):
        assert distance == pytest.approx(cosine_distance(query, DOCUMENTS[key][0]), abs=1e-5)


def test_filters_apply_to_stored_values(client: larder.Client, documents: None) -> None:
    response = client.retrieve_online_documents(
        [1.0, 0.0, 0.0, 0.0],
        top_k=2,
        features=["documents:category"],
        filters=[{"feature": "category", "eq": "shoes"}],
        ef_search=64,
    )
    got = response.to_dict()
    assert got["user_id"] == [9001, 9003]
    assert got["category"] == ["shoes", "shoes"]


def test_bad_queries_are_refused_with_the_reason(client: larder.Client, documents: None) -> None:
    with pytest.raises(larder.InvalidArgument, match="dimension|4"):
        client.retrieve_online_documents([1.0, 0.0], top_k=2, features=["documents:category"])
    with pytest.raises(larder.InvalidArgument):
        client.retrieve_online_documents(
            [1.0, 0.0, 0.0, 0.0], top_k=0, features=["documents:category"]
        )
    with pytest.raises(larder.InvalidArgument):
        client.retrieve_online_documents([1.0, 0.0, 0.0, 0.0], top_k=2, features=[])
