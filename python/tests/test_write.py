"""Direct writes (Arrow bodies): every type round trip, partial updates, stale writes,
refused writes that write nothing, concurrent partial updates."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import larder

UTC = timezone.utc
TS = pa.timestamp("us", tz="UTC")
SCORES = [f"s{i}" for i in range(8)]


def now_minus(seconds: float) -> datetime:
    """A UTC time `seconds` ago, to the microsecond."""
    return (datetime.now(UTC) - timedelta(seconds=seconds)).replace(microsecond=0)


def read_scores(client: larder.Client, user: int) -> Dict[str, Any]:
    got = client.get_online_features([f"scores:{s}" for s in SCORES], entities={"user_id": [user]})
    return {name: values[0] for name, values in got.to_dict().items()}


def write_scores(client: larder.Client, user: int, when: datetime, values: Dict[str, int], partial: bool = False) -> larder.WriteResult:
    table = pa.table(
        {
            "user_id": pa.array([user], pa.int64()),
            "event_timestamp": pa.array([when], TS),
            **{name: pa.array([value], pa.int64()) for name, value in values.items()},
        }
    )
    results = client.write_to_online_store("scores", table, partial=partial)
    assert len(results) == 1 and results[0].feature_view == "scores"
    return results[0]


ALL_TYPES = pa.schema(
    [
        ("f_int32", pa.int32()),
        ("f_int64", pa.int64()),
        ("f_float32", pa.float32()),
        ("f_float64", pa.float64()),
        ("f_bool", pa.bool_()),
        ("f_string", pa.string()),
        ("f_bytes", pa.binary()),
        ("f_timestamp", TS),
        ("f_list_int64", pa.list_(pa.int64())),
        ("f_list_string", pa.list_(pa.string())),
        ("f_vector", pa.list_(pa.float32(), 4)),
    ]
)

ALL_VALUES: Dict[str, List[Any]] = {
    "f_int32": [1, -(2**31), None],
    "f_int64": [2**62, -5, None],
    "f_float32": [1.5, -0.25, None],
    "f_float64": [3.141592653589793, -1e300, None],
    "f_bool": [True, False, None],
    "f_string": ["héllo", "", None],
    "f_bytes": [b"\x00\xff\x10", b"", None],
    "f_timestamp": [datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC), datetime(2000, 1, 1, tzinfo=UTC), None],
    "f_list_int64": [[1, 2, 3], [], None],
    "f_list_string": [["a", "b"], [""], None],
    "f_vector": [[0.5, 1.0, 2.0, -3.0], [0.0, 0.0, 0.0, 0.0], None],
}


def test_every_type_round_trips(client: larder.Client) -> None:
    users = [900_001, 900_002, 900_003]
    table = pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "event_timestamp": pa.array([now_minus(60)] * 3, TS),
            **{f.name: pa.array(ALL_VALUES[f.name], f.type) for f in ALL_TYPES},
        }
    )
    [result] = client.write_to_online_store("all_types", table)
    assert (result.rows, result.written, result.skipped_stale) == (3, 3, 0)

    response = client.get_online_features(
        [f"all_types:{f.name}" for f in ALL_TYPES], entities={"user_id": users + [900_004]}
    )
    arrow = response.to_arrow()
    assert arrow.schema == pa.schema([("user_id", pa.int64())] + list(ALL_TYPES)), arrow.schema
    got = response.to_dict()
    for field in ALL_TYPES:
        values = got[field.name]
        want = ALL_VALUES[field.name] + [None]  # 900_004 was never written
        if field.name == "f_vector":
            assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in values[:2])
            assert [None if v is None else v.tolist() for v in values] == want
        else:
            assert values == want, field.name
    assert got["f_timestamp"][0].tzinfo is not None
    statuses = response.statuses()
    assert statuses["f_int32"] == ["PRESENT", "PRESENT", "PRESENT", "NOT_FOUND"]
    df = response.to_df()
    assert df["f_int32"].dtype == pd.Int32Dtype()
    assert str(df["f_timestamp"].dtype).endswith("UTC]")


def test_partial_update_keeps_other_features_and_skips_stale(client: larder.Client) -> None:
    user = 920_001
    t1 = now_minus(120)
    result = write_scores(client, user, t1, {s: i for i, s in enumerate(SCORES)})
    assert result.written == 1
    t2 = t1 + timedelta(seconds=30)
    result = write_scores(client, user, t2, {"s0": 100}, partial=True)
    assert (result.rows, result.written, result.skipped_stale) == (1, 1, 0)
    assert read_scores(client, user) == {"user_id": user, "s0": 100, **{f"s{i}": i for i in range(1, 8)}}

    stale = write_scores(client, user, t1 - timedelta(seconds=10), {"s1": 555}, partial=True)
    assert (stale.written, stale.skipped_stale) == (0, 1)
    assert read_scores(client, user)["s1"] == 1


def test_missing_join_key_names_it_and_writes_nothing(client: larder.Client) -> None:
    user = 910_001
    write_scores(client, user, now_minus(100), {s: 1 for s in SCORES})
    bad = {"event_timestamp": [now_minus(50)], **{s: [2] for s in SCORES}}
    with pytest.raises(larder.InvalidArgument) as caught:
        client.write_to_online_store("scores", bad)
    assert "user_id" in caught.value.message
    assert caught.value.status == 400
    assert read_scores(client, user) == {"user_id": user, **{s: 1 for s in SCORES}}


def test_wrong_dtype_names_the_column_and_writes_nothing(client: larder.Client) -> None:
    user = 910_002
    write_scores(client, user, now_minus(100), {s: 1 for s in SCORES})
    bad = pd.DataFrame(
        {
            "user_id": [user, user + 1],
            "event_timestamp": pd.to_datetime([now_minus(50)] * 2, utc=True),
            **{s: [2, 2] for s in SCORES[:-1]},
            "s7": ["x", "y"],  # a string into an int64 feature
        }
    )
    with pytest.raises(larder.InvalidArgument) as caught:
        client.write_to_online_store("scores", bad)
    assert "s7" in caught.value.message
    assert read_scores(client, user) == {"user_id": user, **{s: 1 for s in SCORES}}
    assert client.get_online_features(["scores:s0"], entities={"user_id": [user + 1]}).statuses()["s0"] == ["NOT_FOUND"]


def test_unconvertible_column_is_refused_before_sending(client: larder.Client) -> None:
    with pytest.raises(larder.ConversionError) as caught:
        client.write_to_online_store("scores", {"user_id": [1], "s0": [object()]})
    assert "s0" in caught.value.message
    assert isinstance(caught.value, TypeError)


def test_push_writes_every_view_of_the_source(client: larder.Client) -> None:
    user = 940_001
    df = pd.DataFrame(
        {
            "user_id": [user],
            "event_timestamp": pd.to_datetime([now_minus(30)], utc=True),
            **{s: [7] for s in SCORES},
        }
    )
    results = client.push("scores_push", df, to="online")
    assert [(r.feature_view, r.rows, r.written) for r in results] == [("scores", 1, 1)]
    assert read_scores(client, user)["s3"] == 7
    with pytest.raises(larder.InvalidArgument):
        client.push("scores_push", df, to="nowhere")
    with pytest.raises((larder.NotFound, larder.InvalidArgument)) as caught:
        client.push("no_such_push_source", df)
    assert "no_such_push_source" in caught.value.message


def test_concurrent_partial_updates_all_land(client: larder.Client) -> None:
    """8 threads, each updating its own feature of one entity at the same increasing event
    times t+1..t+5: each thread's last update has the newest time any thread writes, so the
    rule (apply when stored time <= own time) applies all of them; earlier ones may be
    skipped_stale, never later ones. The row ends with every thread's last value."""
    user = 930_001
    base = now_minus(200)
    write_scores(client, user, base, {s: 0 for s in SCORES})
    steps = 5
    barrier = threading.Barrier(len(SCORES))
    results: List[larder.WriteResult] = []
    errors: List[BaseException] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        try:
            barrier.wait()
            for step in range(1, steps + 1):
                result = write_scores(
                    client, user, base + timedelta(seconds=step), {SCORES[index]: index * 100 + step}, partial=True
                )
                with lock:
                    results.append(result)
        except BaseException as error:  # noqa: BLE001 - reported below
            with lock:
                errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(SCORES))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert len(results) == len(SCORES) * steps
    assert all(r.written + r.skipped_stale == 1 for r in results)
    final = read_scores(client, user)
    assert final == {"user_id": user, **{s: i * 100 + steps for i, s in enumerate(SCORES)}}
    times = client.get_online_features(["scores:s0"], entities={"user_id": [user]}).event_timestamps()["s0"]
    assert times == [base + timedelta(seconds=steps)]


def test_forget_erases_an_entity_and_verifies(client: larder.Client) -> None:
    user = 424_242
    write_scores(client, user, now_minus(60), {name: 1 for name in SCORES})
    assert read_scores(client, user)["s0"] == 1
    result = client.forget({"user_id": [user]})
    assert result.request_id.startswith("erase-")
    assert result.rows["online"] == 1
    assert len(result.entity_key_hashes) == 1
    assert read_scores(client, user)["s0"] is None
    left = client.forget(pd.DataFrame({"user_id": [user]}), verify=True)
    assert left.is_clean, left
    assert {"online", "digests", "offline"} <= set(left.rows)
    assert left.request_id == ""


def test_forget_refuses_bad_entities_and_erases_nothing(client: larder.Client) -> None:
    user = 424_243
    write_scores(client, user, now_minus(60), {name: 2 for name in SCORES})
    with pytest.raises(larder.InvalidArgument, match="join key 'user_id' is int64"):
        client.forget({"user_id": ["not-a-number"]})
    with pytest.raises(larder.InvalidArgument, match="no feature view has a join key named 'account'"):
        client.forget({"account": [1]})
    assert read_scores(client, user)["s0"] == 2
