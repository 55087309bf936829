//! Read throughput of the Redis online store, in process: the demo's shape (2 feature views
//! of 13 features, 100,000 users), each request reading 100 entities from both views
//! concurrently and decoding every row, as the serving core does.
//!
//! Run by `bench/redis_online.sh`, which starts redis-server and also runs `redis-benchmark`
//! on the same payload. Settings come from the environment: `REDIS_URL` (required),
//! `ENTITIES` (100000), `BATCH` (100), `CONCURRENCY` (8), `SECONDS` (8), `CLUSTER` (0).

#![allow(clippy::expect_used, clippy::print_stdout, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use larder_core::codec::{decode_row, encode_row_to_vec};
use larder_core::{EntityKey, FeatureViewId, Timestamp, Value, WriteLane};
use larder_online::{OnlineRow, OnlineStore};
use larder_online_redis::{RedisOnlineStore, RedisOnlineStoreOptions};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// 7 float64, 5 int64, 1 string: the demo's `user_profile`.
fn profile_values(user: i64) -> Vec<Value> {
    let mut values: Vec<Value> = (0..7)
        .map(|index| Value::Float64(user as f64 * 0.5 + f64::from(index)))
        .collect();
    values.extend((0..5).map(|index| Value::Int64(user * 7 + index)));
    values.push(Value::String(format!("segment_{:04}", user % 1_000)));
    values
}

/// 8 float32, 5 int64: the demo's `user_activity`.
fn activity_values(user: i64) -> Vec<Value> {
    let mut values: Vec<Value> = (0..8)
        .map(|index| Value::Float32(user as f32 * 0.25 + index as f32))
        .collect();
    values.extend((0..5).map(|index| Value::Int64(user * 3 + index)));
    values
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let Ok(url) = std::env::var("REDIS_URL") else {
        println!("REDIS_URL is not set: run bench/redis_online.sh");
        return;
    };
    let entities = setting("ENTITIES", 100_000) as i64;
    let batch = setting("BATCH", 100) as usize;
    let concurrency = setting("CONCURRENCY", 8) as usize;
    let seconds = setting("SECONDS", 8);
    let cluster = setting("CLUSTER", 0) == 1;
    let store = Arc::new(
        RedisOnlineStore::connect(RedisOnlineStoreOptions {
            urls: url.split(',').map(str::to_string).collect(),
            cluster,
            key_prefix: "bench:".to_string(),
            ..RedisOnlineStoreOptions::default()
        })
        .await
        .expect("connect"),
    );
    let views = [
        FeatureViewId {
            name: "user_profile".to_string(),
            version: 1,
        },
        FeatureViewId {
            name: "user_activity".to_string(),
            version: 1,
        },
    ];
    let load_started = Instant::now();
    let now = Timestamp::now();
    for (view_index, view) in views.iter().enumerate() {
        for chunk_start in (0..entities).step_by(8_192) {
            let rows: Vec<OnlineRow> = (chunk_start..(chunk_start + 8_192).min(entities))
                .map(|user| OnlineRow {
                    entity_key: EntityKey::from_int(user),
                    event_timestamp: now,
                    write_timestamp: now,
                    lane: WriteLane::Batch,
                    values: encode_row_to_vec(&if view_index == 0 {
                        profile_values(user)
                    } else {
                        activity_values(user)
                    }),
                })
                .collect();
            store.write_rows(view, rows).await.expect("load");
        }
    }
    let load_seconds = load_started.elapsed().as_secs_f64();
    println!(
        "loaded {} rows in {load_seconds:.2}s ({:.0} rows/s through the compare-and-write script)",
        entities * 2,
        (entities * 2) as f64 / load_seconds
    );
    let stored_bytes = [
        17 + encode_row_to_vec(&profile_values(1)).len(),
        17 + encode_row_to_vec(&activity_values(1)).len(),
    ];
    println!(
        "stored value bytes per row: user_profile {} B, user_activity {} B",
        stored_bytes[0], stored_bytes[1]
    );

    let requests = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let views = Arc::new(views);
    let mut tasks = Vec::new();
    for task_index in 0..concurrency {
        let store = Arc::clone(&store);
        let requests = Arc::clone(&requests);
        let views = Arc::clone(&views);
        tasks.push(tokio::spawn(async move {
            let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (task_index as u64 + 1);
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let keys: Vec<EntityKey> = (0..batch)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        EntityKey::from_int((state % entities as u64) as i64)
                    })
                    .collect();
                let started = Instant::now();
                let (profiles, activities) = tokio::join!(
                    store.read_rows(&views[0], &keys),
                    store.read_rows(&views[1], &keys)
                );
                for row in profiles
                    .expect("read")
                    .into_iter()
                    .chain(activities.expect("read"))
                {
                    let row = row.expect("every entity was loaded");
                    let values = decode_row(&row.values).expect("decodes");
                    assert!(values.len() == 13);
                }
                latencies.push(started.elapsed());
                requests.fetch_add(1, Ordering::Relaxed);
            }
            latencies
        }));
    }
    let started = Instant::now();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let percentile = |fraction: f64| {
        latencies
            .get(
                ((latencies.len() as f64 * fraction) as usize)
                    .min(latencies.len().saturating_sub(1)),
            )
            .map_or(0.0, |latency| latency.as_secs_f64() * 1_000.0)
    };
    let request_count = requests.load(Ordering::Relaxed);
    let requests_per_second = request_count as f64 / elapsed;
    println!(
        "RESULT batch={batch} concurrency={concurrency} requests/s={requests_per_second:.0} keys/s={:.0} p50_ms={:.3} p99_ms={:.3}",
        requests_per_second * batch as f64 * 2.0,
        percentile(0.5),
        percentile(0.99)
    );
    for view in views.iter() {
        store.drop_table(view).await.expect("drop");
    }
}
