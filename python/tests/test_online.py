"""Online reads against the served demo repo; expected values come from the repo's generated
source data and from `larder get`."""

from __future__ import annotations

import math

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import larder
from conftest import Server, larder_get_json

USERS = [1, 2, 3, 17, 42]
PROFILE = ["age", "country", "account_age_days", "is_premium", "churn_risk", "lifetime_value"]


def latest_profiles(server: Server) -> dict:
    """user_id -> the newest source row of user_profile (the view has no transformation)."""
    table = pq.read_table(server.repo / "data" / "sources" / "profiles.parquet")
    rows: dict = {}
    for row in table.to_pylist():
        current = rows.get(row["user_id"])
        if current is None or row["event_timestamp"] >= current["event_timestamp"]:
            rows[row["user_id"]] = row
    return rows


def test_values_match_source_data(client: larder.Client, server: Server) -> None:
    expected = latest_profiles(server)
    response = client.get_online_features(
        [f"user_profile:{f}" for f in PROFILE], entities={"user_id": USERS}
    )
    got = response.to_dict()
    assert list(got) == ["user_id"] + PROFILE
    assert got["user_id"] == USERS
    for feature in PROFILE:
        want = [expected[u][feature] for u in USERS]
        values = got[feature]
        if feature == "churn_risk":  # float32: compare as float32 (JSON answers carry text)
            want = pa.array(want, pa.float32()).to_pylist()
            values = pa.array(values, pa.float32()).to_pylist()
        assert values == want, feature
    assert response.statuses() == {f: ["PRESENT"] * len(USERS) for f in PROFILE}
    for feature, times in response.event_timestamps().items():
        want_times = [expected[u]["event_timestamp"] for u in USERS]
        assert [t.tzinfo is not None for t in times] == [True] * len(USERS)
        assert [t.replace(tzinfo=None) for t in times] == [
            (w.replace(tzinfo=None) if w is not None else None) for w in want_times
        ], feature


def test_declared_arrow_types(client: larder.Client) -> None:
    table = client.get_online_features(
        [f"user_profile:{f}" for f in PROFILE] + ["user_activity:recent_item_ids"],
        entities={"user_id": USERS},
    ).to_arrow()
    types = {field.name: field.type for field in table.schema}
    assert types["user_id"] == pa.int64()
    assert types["age"] == pa.int64()
    assert types["country"] == pa.string()
    assert types["account_age_days"] == pa.int32()
    assert types["is_premium"] == pa.bool_()
    assert types["churn_risk"] == pa.float32()
    assert types["lifetime_value"] == pa.float64()
    assert types["recent_item_ids"] == pa.list_(pa.int64())


def test_matches_larder_get(client: larder.Client, server: Server) -> None:
    # Not a float64: `larder get --json` asking a running server re-parses its JSON with
    # serde_json's default (not round-trip exact) float parser, so float64s may differ there.
    features = ["user_activity:clicks_7d", "user_activity:recent_item_ids", "user_activity:last_category"]
    expected = larder_get_json(server, USERS, features)
    got = client.get_online_features(features, entities={"user_id": USERS}).to_dict()
    names = expected["metadata"]["feature_names"]
    for name, result in zip(names, expected["results"]):
        assert got[name] == result["values"], name


def test_dict_df_arrow_agree(client: larder.Client) -> None:
    response = client.get_online_features(
        [f"user_profile:{f}" for f in PROFILE] + ["user_activity:recent_item_ids"],
        entities={"user_id": USERS + [999_999]},
    )
    as_dict = response.to_dict()
    as_arrow = response.to_arrow()
    as_df = response.to_df()
    assert as_arrow.column_names == list(as_dict) == list(as_df.columns)
    assert as_arrow.to_pydict() == as_dict
    for name in as_dict:
        from_df = [None if _is_null(v) else _plain(v) for v in as_df[name].tolist()]
        want = as_dict[name]
        if name == "churn_risk":
            from_df = [None if v is None else float(v) for v in from_df]
        assert from_df == want, name
    assert as_df["age"].dtype == pd.Int64Dtype()  # a null stays a null, not a float
    assert as_df["account_age_days"].dtype == pd.Int32Dtype()


def _is_null(value: object) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def _plain(value: object) -> object:
    tolist = getattr(value, "tolist", None)
    return tolist() if tolist is not None else value


def test_unknown_entity_is_not_found(client: larder.Client) -> None:
    response = client.get_online_features(["user_profile:age"], entities={"user_id": [1, 999_999]})
    assert response.to_dict()["age"][1] is None
    assert response.statuses()["age"] == ["PRESENT", "NOT_FOUND"]
    assert response.event_timestamps()["age"][1] is None


def test_entities_as_dataframe_and_arrow(client: larder.Client) -> None:
    features = ["user_profile:age", "user_profile:country"]
    want = client.get_online_features(features, entities={"user_id": USERS}).to_dict()
    from_df = client.get_online_features(features, entities=pd.DataFrame({"user_id": USERS}))
    from_arrow = client.get_online_features(features, entities=pa.table({"user_id": USERS}))
    assert from_df.to_dict() == want
    assert from_arrow.to_dict() == want


def test_feature_service(client: larder.Client) -> None:
    response = client.get_online_features(
        feature_service="ranking_model", entities={"user_id": USERS}
    )
    assert len(response.feature_names) == 26
    by_list = client.get_online_features(["user_profile:age"], entities={"user_id": USERS})
    assert response.to_dict()["age"] == by_list.to_dict()["age"]


def test_full_feature_names(client: larder.Client) -> None:
    response = client.get_online_features(
        ["user_profile:age"], entities={"user_id": [1]}, full_feature_names=True
    )
    assert list(response.to_dict()) == ["user_id", "user_profile__age"]


@pytest.mark.parametrize("feature", ["user_profile:no_such_feature", "no_such_view:age"])
def test_unknown_feature_names_it(client: larder.Client, feature: str) -> None:
    with pytest.raises((larder.NotFound, larder.InvalidArgument)) as caught:
        client.get_online_features([feature], entities={"user_id": [1]})
    missing = feature.split(":")[1] if feature.startswith("user_profile") else "no_such_view"
    assert missing in caught.value.message
    assert caught.value.status in (400, 404)
    assert caught.value.code in ("NOT_FOUND", "INVALID_ARGUMENT")


def test_unknown_feature_service(client: larder.Client) -> None:
    with pytest.raises((larder.NotFound, larder.InvalidArgument)) as caught:
        client.get_online_features(feature_service="no_such_service", entities={"user_id": [1]})
    assert "no_such_service" in caught.value.message


def test_health_and_status(client: larder.Client) -> None:
    assert client.health() is True
    status = client.status()
    assert status["project"] == "demo"
    assert {v["view"] for v in status["views"]} >= {"user_profile", "user_activity", "scores"}


def test_statuses_are_utf8_and_times_utc(client: larder.Client) -> None:
    full = client.get_online_features(
        ["user_profile:age"], entities={"user_id": [1]}
    ).to_arrow_full()
    assert full.schema.field("age__status").type == pa.string()
    assert full.schema.field("age__event_timestamp").type == pa.timestamp("us", tz="UTC")
    assert pc.all(pc.is_valid(full.column("age__event_timestamp"))).as_py()
