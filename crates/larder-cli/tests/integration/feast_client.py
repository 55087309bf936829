"""Drives Feast's own Python SDK (the pinned `feast` package) against a live `larder serve`.

Run by `feast_client.rs` as `python feast_client.py FEAST_REPO_DIR LARDER_URL`: it writes a
Feast repo whose online store is `{type: remote, path: LARDER_URL}` and whose definitions
mirror Larder's demo repo (plus the push view `relevance`), then uses only Feast's public API:
materialize, materialize_incremental, get_online_features (features and a feature service),
write_to_online_store, push, and the exceptions Feast raises for Larder's errors. Each
outcome is compared with Larder's own HTTP answer. Exits non-zero on the first mismatch.
"""

import json
import logging
import math
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import requests

feast_repo = Path(sys.argv[1])
larder_url = sys.argv[2]
feast_repo.mkdir(parents=True, exist_ok=True)
(feast_repo / "data").mkdir(exist_ok=True)
(feast_repo / "feature_store.yaml").write_text(
    f"""project: demo
registry: data/registry.db
provider: local
online_store:
  type: remote
  path: {larder_url}
offline_store:
  type: file
entity_key_serialization_version: 3
"""
)
# Feast's file sources must exist for apply; Larder reads its own sources.
placeholder = pd.DataFrame(
    {"user_id": [0], "event_timestamp": [pd.Timestamp("2026-01-01", tz="UTC")]}
)
placeholder.to_parquet(feast_repo / "data" / "placeholder.parquet")

from feast import (  # noqa: E402  (after the repo exists)
    Entity,
    FeatureService,
    FeatureStore,
    FeatureView,
    Field,
    FileSource,
    PushSource,
)
from feast.data_source import PushMode  # noqa: E402
from feast.errors import FeatureViewNotFoundException, FeastError  # noqa: E402
from feast.types import Array, Bool, Float32, Float64, Int32, Int64, String  # noqa: E402

warnings_seen = []


class RecordWarnings(logging.Handler):
    def emit(self, record):
        warnings_seen.append(record.getMessage())


logging.getLogger("feast").addHandler(RecordWarnings(level=logging.WARNING))

user = Entity(name="user", join_keys=["user_id"])
placeholder_source = FileSource(
    name="placeholder",
    path=str(feast_repo / "data" / "placeholder.parquet"),
    timestamp_field="event_timestamp",
)
user_profile = FeatureView(
    name="user_profile",
    entities=[user],
    ttl=timedelta(days=365),
    source=placeholder_source,
    schema=[
        Field(name="age", dtype=Int64),
        Field(name="country", dtype=String),
        Field(name="account_age_days", dtype=Int32),
        Field(name="is_premium", dtype=Bool),
        Field(name="lifetime_value", dtype=Float64),
        Field(name="avg_order_value", dtype=Float64),
        Field(name="orders_total", dtype=Int64),
        Field(name="days_since_last_order", dtype=Int32),
        Field(name="credit_score", dtype=Float64),
        Field(name="email_verified", dtype=Bool),
        Field(name="signup_channel", dtype=String),
        Field(name="loyalty_points", dtype=Int64),
        Field(name="churn_risk", dtype=Float32),
    ],
)
user_activity = FeatureView(
    name="user_activity",
    entities=[user],
    ttl=timedelta(days=7),
    source=placeholder_source,
    schema=[
        Field(name="clicks_1d", dtype=Int64),
        Field(name="clicks_7d", dtype=Int64),
        Field(name="clicks_30d", dtype=Int64),
        Field(name="impressions_7d", dtype=Int64),
        Field(name="ctr_7d", dtype=Float64),
        Field(name="sessions_7d", dtype=Int32),
        Field(name="avg_session_minutes", dtype=Float32),
        Field(name="purchases_30d", dtype=Int64),
        Field(name="conversion_rate_30d", dtype=Float64),
        Field(name="dwell_seconds_7d", dtype=Float64),
        Field(name="last_category", dtype=String),
        Field(name="recent_item_ids", dtype=Array(Int64)),
        Field(name="is_active_7d", dtype=Bool),
    ],
)
relevance_push = PushSource(name="relevance_push", batch_source=placeholder_source)
relevance = FeatureView(
    name="relevance",
    entities=[user],
    ttl=timedelta(days=30),
    source=relevance_push,
    schema=[Field(name="score", dtype=Float64), Field(name="label", dtype=String)],
)
ranking_model = FeatureService(name="ranking_model", features=[user_profile, user_activity])

store = FeatureStore(repo_path=str(feast_repo))
store.apply([user, user_profile, user_activity, relevance_push, relevance, ranking_model])
checks = 0


def check(condition, message):
    global checks
    if not condition:
        print(f"FAILED: {message}", file=sys.stderr)
        sys.exit(1)
    checks += 1


def larder_read(body):
    response = requests.post(f"{larder_url}/get-online-features", json=body, timeout=30)
    check(response.status_code == 200, f"larder read {body}: {response.status_code} {response.text}")
    return response.json()


def same(feast_value, larder_value):
    if isinstance(larder_value, float) and feast_value is not None:
        return math.isclose(feast_value, larder_value, rel_tol=1e-6)
    return feast_value == larder_value


# 1. `feast materialize` and `materialize-incremental` ask Larder to run its batch lane.
before = larder_read({"features": ["user_profile:age"], "entities": {"user_id": [1]}})
check(before["results"][1]["statuses"] == ["NOT_FOUND"], f"not yet materialized: {before}")
now = datetime.now(timezone.utc)
store.materialize(start_date=now - timedelta(days=3650), end_date=now + timedelta(minutes=1))
after = larder_read({"features": ["user_profile:age"], "entities": {"user_id": [1]}})
check(after["results"][1]["statuses"] == ["PRESENT"], f"materialized: {after}")
store.materialize_incremental(end_date=now + timedelta(minutes=1), feature_views=["user_activity"])

# 2. Reads through Feast's client equal Larder's own answer, value for value. Users whose
# recent_item_ids list is empty are left out: Feast 0.67's client cannot parse an empty list
# from any feature server, Feast's own included (README, "Feast clients").
features = [f"user_profile:{field.name}" for field in user_profile.features] + [
    f"user_activity:{field.name}" for field in user_activity.features
]
raw = larder_read({"features": ["user_activity:recent_item_ids"], "entities": {"user_id": list(range(1, 41))}})
users = [
    user_id
    for user_id, items, status in zip(
        raw["results"][0]["values"], raw["results"][1]["values"], raw["results"][1]["statuses"]
    )
    if status == "PRESENT" and items
][:10]
empty_list_users = [
    user_id
    for user_id, items in zip(raw["results"][0]["values"], raw["results"][1]["values"])
    if items == []
]
check(len(users) >= 5, f"enough users with items: {raw}")
read = store.get_online_features(
    features=features, entity_rows=[{"user_id": user_id} for user_id in users]
).to_dict()
expected = larder_read({"features": features, "entities": {"user_id": users}})
for name, column in zip(expected["metadata"]["feature_names"], expected["results"]):
    check(name in read, f"feature {name} in Feast's answer")
    for got, want in zip(read[name], column["values"]):
        check(same(got, want), f"{name}: Feast read {got}, Larder serves {want}")

# 2a. Larder's own Python SDK (installed in the same venv by scripts/test.sh) reads the same
# values as Feast's client, through its Arrow answers.
import larder  # noqa: E402

ours = larder.Client(larder_url).get_online_features(
    features=features, entities={"user_id": users}
).to_dict()
for name, column in read.items():
    check(name in ours, f"feature {name} in the Larder SDK's answer: {sorted(ours)}")
    for got, want in zip(column, ours[name]):
        if hasattr(want, "tolist"):
            want = want.tolist()
        check(same(got, want), f"{name}: Feast read {got}, the Larder SDK read {want}")

# 2b. A feature service, and the version metadata Feast's client asks for.
service = store.get_online_features(
    features=store.get_feature_service("ranking_model"), entity_rows=[{"user_id": users[0]}]
).to_dict()
check(service["age"] == read["age"][:1], f"feature service read: {service}")
check(len(service) == 1 + len(features), f"every feature of the service: {sorted(service)}")
metadata = requests.post(
    f"{larder_url}/get-online-features",
    json={
        "features": ["user_profile:age", "user_activity:clicks_7d"],
        "entities": {"user_id": [users[0]]},
        "include_feature_view_version_metadata": True,
    },
    timeout=30,
).json()["metadata"]
check(
    metadata.get("feature_view_metadata")
    == [{"name": "user_profile", "version": 1}, {"name": "user_activity", "version": 1}],
    f"feature view metadata: {metadata}",
)

# 2c. An empty list is served as [], as Feast's own feature server sends it.
if empty_list_users:
    body = {"features": ["user_activity:recent_item_ids"], "entities": {"user_id": empty_list_users[:1]}}
    check(larder_read(body)["results"][1]["values"] == [[]], "an empty list is []")

# 3. Writes: Feast's write_to_online_store sends its `created` column and body keys.
event_time = datetime.now(timezone.utc).replace(microsecond=0)
profile_row = {
    "user_id": [users[0]],
    "event_timestamp": [event_time],
    "age": [77],
    "country": ["NZ"],
    "account_age_days": [12],
    "is_premium": [True],
    "lifetime_value": [1234.5],
    "avg_order_value": [61.25],
    "orders_total": [20],
    "days_since_last_order": [3],
    "credit_score": [701.5],
    "email_verified": [True],
    "signup_channel": ["partner"],
    "loyalty_points": [4242],
    "churn_risk": [0.125],
}
store.write_to_online_store("user_profile", pd.DataFrame(profile_row))
written = larder_read(
    {"features": ["user_profile:age", "user_profile:country", "user_profile:churn_risk"], "entities": {"user_id": [users[0]]}}
)
check([column["values"][0] for column in written["results"][1:]] == [77, "NZ", 0.125], f"written: {written}")
check(written["results"][1]["event_timestamps"][0].startswith(event_time.strftime("%Y-%m-%dT%H:%M:%S")), f"event time: {written}")

# 4. Push: every view of the push source, online.
store.push(
    "relevance_push",
    pd.DataFrame({"user_id": users[:2], "event_timestamp": [event_time] * 2, "score": [0.5, 0.25], "label": ["a", "b"]}),
    to=PushMode.ONLINE,
)
pushed = store.get_online_features(
    features=["relevance:score", "relevance:label"], entity_rows=[{"user_id": user_id} for user_id in users[:2]]
).to_dict()
check(pushed["score"] == [0.5, 0.25] and pushed["label"] == ["a", "b"], f"pushed: {pushed}")

# 5. Errors arrive as Feast's exceptions, without "Invalid error detail" warnings.
try:
    store.get_online_features(features=["no_such_view:x"], entity_rows=[{"user_id": 1}])
    check(False, "an unknown view must raise")
except FeatureViewNotFoundException as error:
    check("no_such_view" in str(error), f"the message names the view: {error}")
try:
    store.get_online_features(features=["user_profile:no_such_feature"], entity_rows=[{"user_id": 1}])
    check(False, "an unknown feature must raise")
except FeastError as error:
    check("no_such_feature" in str(error), f"the message names the feature: {error}")
check(
    not [warning for warning in warnings_seen if "Invalid error detail" in warning],
    f"Feast logged: {warnings_seen}",
)

print(json.dumps({"checks": checks, "users": users}))
