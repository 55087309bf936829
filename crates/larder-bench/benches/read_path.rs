//! In-process cost of the online read path, per request and per entity, for the harness's
//! shape (two views, 26 features): request parsing, store reads, response encoding. Also
//! compares serde_json with sonic-rs on the JSON work, which decided our JSON path.
//!
//! `cargo bench -p larder-bench --bench read_path`
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use larder_bench::{IdGenerator, harness_feature_refs, harness_views};
use larder_core::{EntityKey, Timestamp, Value, ValueType, WriteLane, codec};
use larder_online::{EmbeddedOnlineStore, MemoryOnlineStore, OnlineRow, SharedOnlineStore};
use larder_registry::Registry;
use larder_server::json::{parse_online_features_request, write_online_features_response};
use larder_server::{FeatureServer, RegistryHandle, ServingLimits};

const ENTITIES: u64 = 100_000;

fn random_value(generator: &mut IdGenerator, dtype: &ValueType) -> Value {
    match dtype {
        ValueType::Float64 => Value::Float64(generator.next_below(1_000_000) as f64 / 7.0),
        ValueType::Float32 => Value::Float32(generator.next_below(1_000_000) as f32 / 7.0),
        ValueType::Int64 => Value::Int64(generator.next_below(1_000_000) as i64),
        _ => Value::String(format!("segment_{:04}", generator.next_below(1_000))),
    }
}

async fn fill(store: &SharedOnlineStore) {
    let mut generator = IdGenerator::new(42);
    for view in harness_views() {
        for start in (0..ENTITIES).step_by(10_000) {
            let rows = (start..start + 10_000)
                .map(|id| {
                    let values: Vec<Value> = view
                        .features
                        .iter()
                        .map(|feature| random_value(&mut generator, &feature.dtype))
                        .collect();
                    OnlineRow {
                        entity_key: EntityKey::from_int(id as i64),
                        event_timestamp: Timestamp::now(),
                        write_timestamp: Timestamp::now(),
                        lane: WriteLane::Batch,
                        values: codec::encode_row_to_vec(&values),
                    }
                })
                .collect();
            store.write_rows(&view.id(), rows).await.unwrap();
        }
    }
}

fn registry() -> Registry {
    let mut registry = Registry {
        project: "bench".into(),
        ..Registry::default()
    };
    for view in harness_views() {
        registry.feature_views.insert(view.name.clone(), view);
    }
    registry
}

fn request_body(entities: usize, seed: u64) -> Vec<u8> {
    let mut generator = IdGenerator::new(seed);
    let ids: Vec<u64> = (0..entities)
        .map(|_| generator.next_below(ENTITIES))
        .collect();
    serde_json::json!({"features": harness_feature_refs(), "entities": {"user_id": ids}})
        .to_string()
        .into_bytes()
}

fn bench_read_path(criterion: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let directory = tempfile::tempdir().unwrap();
    let stores: Vec<(&str, SharedOnlineStore)> = vec![
        ("memory", Arc::new(MemoryOnlineStore::new())),
        (
            "embedded",
            Arc::new(EmbeddedOnlineStore::open(&directory.path().join("online.redb")).unwrap()),
        ),
    ];
    for (_, store) in &stores {
        runtime.block_on(fill(store));
    }
    let limits = ServingLimits {
        max_entities_per_request: 100_000,
        ..ServingLimits::default()
    };
    let mut group = criterion.benchmark_group("get_online_features_json");
    for entities in [1_usize, 100, 1_000] {
        let bodies: Vec<Vec<u8>> = (0..64)
            .map(|seed| request_body(entities, seed + 1))
            .collect();
        group.throughput(Throughput::Elements(entities as u64));
        for (name, store) in &stores {
            let server = FeatureServer::new(
                Arc::new(RegistryHandle::new(registry())),
                Arc::clone(store),
                limits,
            );
            let mut next = 0;
            group.bench_with_input(
                BenchmarkId::new(*name, entities),
                &entities,
                |bencher, _| {
                    bencher.iter(|| {
                        next = (next + 1) % bodies.len();
                        let request = parse_online_features_request(&bodies[next]).unwrap();
                        let result = runtime
                            .block_on(server.get_online_features(request))
                            .unwrap();
                        let mut out = Vec::with_capacity(64 * 1024);
                        write_online_features_response(&result, &mut out);
                        black_box(out)
                    });
                },
            );
        }
    }
    group.finish();

    // JSON libraries on the same work: parsing a 1000-entity request, encoding its response.
    let body = request_body(1_000, 7);
    let server = FeatureServer::new(
        Arc::new(RegistryHandle::new(registry())),
        Arc::clone(&stores[0].1),
        limits,
    );
    let result = runtime
        .block_on(server.get_online_features(parse_online_features_request(&body).unwrap()))
        .unwrap();
    let owned = result.to_response();
    let mut group = criterion.benchmark_group("json_1000_entities");
    group.bench_function("parse/larder_typed_serde_json", |bencher| {
        bencher.iter(|| black_box(parse_online_features_request(black_box(&body)).unwrap()))
    });
    group.bench_function("parse/serde_json_value", |bencher| {
        bencher.iter(|| {
            black_box(serde_json::from_slice::<serde_json::Value>(black_box(&body)).unwrap())
        })
    });
    group.bench_function("parse/sonic_rs_value", |bencher| {
        bencher
            .iter(|| black_box(sonic_rs::from_slice::<sonic_rs::Value>(black_box(&body)).unwrap()))
    });
    group.bench_function("encode/larder_writer_from_bytes", |bencher| {
        bencher.iter(|| {
            let mut out = Vec::with_capacity(64 * 1024);
            write_online_features_response(black_box(&result), &mut out);
            black_box(out)
        })
    });
    group.bench_function("encode/serde_json_owned", |bencher| {
        bencher.iter(|| black_box(serde_json::to_vec(black_box(&owned)).unwrap()))
    });
    group.bench_function("encode/sonic_rs_owned", |bencher| {
        bencher.iter(|| black_box(sonic_rs::to_vec(black_box(&owned)).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, bench_read_path);
criterion_main!(benches);
