"""Python-side latency of online reads and training-set retrieval: Larder's SDK vs Feast's.

Modes (one JSON line per measured cell on stdout):

  online-larder --url URL       larder.Client(URL).get_online_features(...) -> to_dict() and
                                to_df(), plus "raw": the same request through the same
                                connection pool with the answer read as bytes and not decoded
                                (server + transport time), so SDK time - raw = client overhead
  online-feast --repo DIR       Feast's in-process SDK (store.get_online_features(...)) ->
                                to_dict() and to_df(), on the harness's SQLite repo
  training-larder --url URL --entity-df F
                                client.get_historical_features(entity_df, 13 features).to_df()

Sequential calls, one thread; random user ids with a fixed seed, drawn outside the timer.
"""

import argparse
import json
import random
import statistics
import time

FEATURES = (
    [f"user_profile:p_float_{i}" for i in range(7)]
    + [f"user_profile:p_int_{i}" for i in range(5)]
    + ["user_profile:p_segment"]
    + [f"user_activity:a_float_{i}" for i in range(8)]
    + [f"user_activity:a_int_{i}" for i in range(5)]
)
HISTORY_FEATURES = [f"user_activity_hist:a_float_{i}" for i in range(8)] + [
    f"user_activity_hist:a_int_{i}" for i in range(5)
]


def percentile(samples, p):
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, int(round(p / 100.0 * len(ordered) + 0.5)) - 1))
    return ordered[index]


def measure(call, make_ids, seconds, max_calls):
    for _ in range(20):
        call(make_ids())
    latencies = []
    deadline = time.perf_counter() + seconds
    while len(latencies) < max_calls and time.perf_counter() < deadline:
        ids = make_ids()
        start = time.perf_counter()
        call(ids)
        latencies.append(time.perf_counter() - start)
    return {
        "calls": len(latencies),
        "p50_ms": round(percentile(latencies, 50) * 1e3, 3),
        "p99_ms": round(percentile(latencies, 99) * 1e3, 3),
        "mean_ms": round(statistics.mean(latencies) * 1e3, 3),
    }


def online_larder(args):
    import larder
    import urllib3

    client = larder.Client(args.url)
    pool = urllib3.PoolManager(maxsize=1)

    def raw(ids):
        body = json.dumps({"features": FEATURES, "entities": {"user_id": ids}}).encode()
        response = pool.request(
            "POST",
            f"{args.url}/get-online-features",
            body=body,
            headers={
                "Content-Type": "application/json",
                "Accept": "application/vnd.apache.arrow.stream",
            },
        )
        assert response.status == 200, response.data[:200]
        return response.data

    outputs = {
        "raw_bytes": raw,
        "to_dict": lambda ids: client.get_online_features(
            features=FEATURES, entities={"user_id": ids}
        ).to_dict(),
        "to_df": lambda ids: client.get_online_features(
            features=FEATURES, entities={"user_id": ids}
        ).to_df(),
    }
    check = outputs["to_dict"]([1, 2])
    assert len(check) == 1 + len(FEATURES), sorted(check)
    run_online("larder", outputs, args)


def online_feast(args):
    from feast import FeatureStore

    store = FeatureStore(repo_path=args.repo)
    outputs = {
        "to_dict": lambda ids: store.get_online_features(
            features=FEATURES, entity_rows=[{"user_id": i} for i in ids]
        ).to_dict(),
        "to_df": lambda ids: store.get_online_features(
            features=FEATURES, entity_rows=[{"user_id": i} for i in ids]
        ).to_df(),
    }
    run_online("feast", outputs, args)


def server_time(url):
    """(seconds, requests) the server spent on /get-online-features so far, from its
    Prometheus histogram (every status)."""
    import urllib.request

    text = urllib.request.urlopen(f"{url}/metrics").read().decode()
    seconds = requests = 0.0
    for line in text.splitlines():
        if 'endpoint="/get-online-features"' not in line:
            continue
        if line.startswith("larder_http_request_duration_seconds_sum"):
            seconds += float(line.rsplit(" ", 1)[1])
        elif line.startswith("larder_http_request_duration_seconds_count"):
            requests += float(line.rsplit(" ", 1)[1])
    return seconds, requests


def run_online(system, outputs, args):
    rng = random.Random(7)
    for repeat in range(args.repeats):
        for size in [int(size) for size in args.sizes.split(",")]:
            for output, call in outputs.items():
                before = server_time(args.url) if args.url else None
                result = measure(
                    call,
                    lambda: [rng.randrange(args.n_entities) for _ in range(size)],
                    args.seconds,
                    args.max_calls,
                )
                if before is not None:
                    after = server_time(args.url)
                    # Warm-up calls are in the server's count too, so divide by its count.
                    result["server_mean_ms"] = round(
                        (after[0] - before[0]) / max(after[1] - before[1], 1) * 1e3, 3
                    )
                print(
                    json.dumps(
                        {"system": system, "output": output, "entities": size,
                         "repeat": repeat, **result}
                    ),
                    flush=True,
                )


def training_larder(args):
    import larder
    import pandas as pd

    entity_df = pd.read_parquet(args.entity_df)
    client = larder.Client(args.url, timeout=600)
    start = time.perf_counter()
    frame = client.get_historical_features(entity_df, features=HISTORY_FEATURES).to_df()
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "engine": "larder-sdk", "label": args.label, "entity_rows": len(entity_df),
                "result_rows": len(frame), "seconds": round(seconds, 3),
                "non_null_a_float_0": int(frame["a_float_0"].notna().sum()),
                "sum_a_float_0": round(float(frame["a_float_0"].astype("float64").sum()), 1),
                "sum_a_int_4": int(frame["a_int_4"].fillna(0).astype("int64").sum()),
            }
        ),
        flush=True,
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["online-larder", "online-feast", "training-larder"])
    parser.add_argument("--url", default=None)
    parser.add_argument("--repo")
    parser.add_argument("--entity-df")
    parser.add_argument("--label", default="")
    parser.add_argument("--n-entities", type=int, default=100_000)
    parser.add_argument("--sizes", default="1,100,1000")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--max-calls", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    {"online-larder": online_larder, "online-feast": online_feast,
     "training-larder": training_larder}[args.mode](args)


if __name__ == "__main__":
    main()
