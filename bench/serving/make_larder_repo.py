"""Writes a Larder feature repo over the Feast harness's data: the same entity, views and 26 features."""
import argparse
import os

ap = argparse.ArgumentParser()
ap.add_argument("--repo", required=True)
ap.add_argument("--data", required=True)
ap.add_argument("--online-store", default="type: embedded\n  path: data/online.redb")
a = ap.parse_args()

os.makedirs(a.repo, exist_ok=True)
with open(os.path.join(a.repo, "larder.yaml"), "w") as f:
    f.write(f"project: fsbench\nonline_store:\n  {a.online_store}\nserving:\n  max_entities_per_request: 10000\n")

profile = "\n".join([f"      - {{name: p_float_{i}, dtype: float64}}" for i in range(7)]
                    + [f"      - {{name: p_int_{i}, dtype: int64}}" for i in range(5)]
                    + ["      - {name: p_segment, dtype: string}"])
activity = "\n".join([f"      - {{name: a_float_{i}, dtype: float32}}" for i in range(8)]
                     + [f"      - {{name: a_int_{i}, dtype: int64}}" for i in range(5)])
data = os.path.abspath(a.data)
with open(os.path.join(a.repo, "features.yaml"), "w") as f:
    f.write(f"""entities:
  - name: user
    join_keys: [{{name: user_id, dtype: int64}}]
sources:
  - {{name: profile_src, type: file, path: {data}/profile.parquet, timestamp_field: event_timestamp}}
  - {{name: activity_src, type: file, path: {data}/activity.parquet, timestamp_field: event_timestamp}}
feature_views:
  # The harness's data is from January 2025: a 10-year TTL keeps every value servable.
  - name: user_profile
    version: 1
    entities: [user]
    source: profile_src
    ttl: 3650d
    features:
{profile}
  - name: user_activity
    version: 1
    entities: [user]
    source: activity_src
    ttl: 3650d
    features:
{activity}
feature_services:
  - name: all_online
    features: [user_profile, user_activity]
""")
print(f"larder repo {a.repo} over {data}")
