"""Training sets: the server's (Arrow in, Arrow out) against local mode's (`larder
training-set`) on the same repo, and local mode's own behaviour."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone

import pandas as pd
import pyarrow as pa
import pytest

import larder
from conftest import Server

UTC = timezone.utc
FEATURES = ["user_profile:age", "user_profile:country", "user_activity:clicks_7d", "user_activity:recent_item_ids"]


def entity_df() -> pd.DataFrame:
    now = datetime.now(UTC).replace(microsecond=0)
    return pd.DataFrame(
        {
            "user_id": [3, 1, 2, 42, 999_999, 1],
            "event_timestamp": pd.to_datetime(
                [now, now, now - timedelta(days=1), now, now, datetime(2001, 1, 1, tzinfo=UTC)], utc=True
            ),
            "label": [1, 0, 1, 0, 1, 1],
        }
    )


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([("user_id", "ascending"), ("event_timestamp", "ascending")])


def test_server_matches_local_mode(client: larder.Client, store: larder.FeatureStore) -> None:
    entities = entity_df()
    remote = client.get_historical_features(entities, FEATURES)
    local = store.get_historical_features(entities, FEATURES)
    assert remote.to_arrow().column_names == ["user_id", "event_timestamp", "label", "age", "country", "clicks_7d", "recent_item_ids"]
    assert _sorted(remote.to_arrow()).to_pylist() == _sorted(local.to_arrow()).to_pylist()
    assert remote.to_arrow().schema.field("age").type == local.to_arrow().schema.field("age").type
    assert len(remote) == len(entities)
    assert remote.to_arrow().column("user_id").to_pylist() == entities["user_id"].tolist()  # input order
    df = remote.to_df()
    assert df["label"].tolist() == entities["label"].tolist()
    assert df["age"].isna().tolist()[4]  # an unknown user gets null features


def test_feature_service_and_full_names(client: larder.Client, store: larder.FeatureStore) -> None:
    entities = entity_df().iloc[:3]
    remote = client.get_historical_features(entities, feature_service="ranking_model", full_feature_names=True)
    local = store.get_historical_features(entities, feature_service="ranking_model", full_feature_names=True)
    assert "user_profile__age" in remote.to_arrow().column_names
    assert _sorted(remote.to_arrow()).to_pylist() == _sorted(local.to_arrow()).to_pylist()


def test_unknown_feature_in_training_set(client: larder.Client, store: larder.FeatureStore) -> None:
    with pytest.raises((larder.NotFound, larder.InvalidArgument)) as caught:
        client.get_historical_features(entity_df(), ["user_profile:nope"])
    assert "nope" in caught.value.message
    with pytest.raises(larder.LarderError) as caught:
        store.get_historical_features(entity_df(), ["user_profile:nope"])
    assert "nope" in caught.value.message  # the CLI's stderr


def test_local_online_read_matches_client(client: larder.Client, store: larder.FeatureStore) -> None:
    features = ["user_profile:age", "user_profile:country"]
    local = store.get_online_features(features, entities={"user_id": [1, 2, 999_999]})
    remote = client.get_online_features(features, entities={"user_id": [1, 2, 999_999]})
    assert local.to_dict() == remote.to_dict()
    assert local.statuses() == remote.statuses()


def test_apply_dry_run_and_process_overhead(store: larder.FeatureStore) -> None:
    durations = []
    for _ in range(20):
        started = time.perf_counter()
        plan = store.apply(dry_run=True)
        durations.append(time.perf_counter() - started)
    assert "feature view" in plan or "no changes" in plan.lower() or plan
    durations.sort()
    median_ms = (durations[9] + durations[10]) / 2 * 1000
    print(f"\nFeatureStore.apply(dry_run=True): median {median_ms:.1f} ms over 20 calls")


def test_binary_lookup(monkeypatch: pytest.MonkeyPatch, server: Server, tmp_path) -> None:
    monkeypatch.setenv("LARDER_BIN", server.binary)
    assert larder.find_binary() == server.binary
    monkeypatch.setenv("LARDER_BIN", str(tmp_path / "nope"))
    with pytest.raises(larder.LarderError, match="LARDER_BIN"):
        larder.find_binary()
    monkeypatch.delenv("LARDER_BIN")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(larder.LarderError, match="cannot find the larder binary"):
        larder.FeatureStore(server.repo)
    assert larder.find_binary(server.binary) == server.binary


def test_cli_failure_carries_stderr(tmp_path, server: Server) -> None:
    store = larder.FeatureStore(tmp_path, binary=server.binary)  # no larder.yaml here
    with pytest.raises(larder.LarderError) as caught:
        store.apply(dry_run=True)
    assert "larder.yaml" in caught.value.message or "apply" in caught.value.message
    assert os.fspath(tmp_path) in str(store.repo_path)


def test_local_mode_on_its_own_repo(tmp_path, server: Server) -> None:
    import subprocess
    from datetime import date

    repo = tmp_path / "small"
    subprocess.run([server.binary, "init", str(repo), "--entities", "20"], check=True, capture_output=True)
    store = larder.FeatureStore(repo, binary=server.binary)
    assert "user_profile" in store.apply()
    report = store.materialize()
    assert "user_profile" in report and "user_activity" in report
    again = store.materialize(views=["user_profile"], end=date.today() + timedelta(days=1), full_refresh=True)
    assert "user_profile" in again and "user_activity" not in again
    online = store.get_online_features(["user_profile:age"], entities={"user_id": [1, 2]})
    assert online.statuses() == {"age": ["PRESENT", "PRESENT"]}
    with pytest.raises(larder.LarderError) as caught:
        store.materialize(views=["no_such_view"])
    assert "no_such_view" in caught.value.message
