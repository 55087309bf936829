//! Recall@10, queries/s and build cost of the embedded vector index on the data of
//! `bench/vector/gen_data.py` (base.npy, queries.npy, truth.npy), through the same
//! `VectorIndex` calls the server makes.
//!
//! ```sh
//! cargo bench -p larder-vector --bench ann -- --data /tmp/vec-1m [--ef 16,32,64,128] [--exact 20]
//! ```
//!
//! Prints one JSON object per line (build, restart, one per ef, exact) for
//! `bench/vector/run.sh` to tabulate beside faiss and pgvector.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::needless_range_loop,
    missing_docs
)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder_core::{
    EntityKey, FeatureViewId, IndexedFeature, Timestamp, VectorIndexSpec, VectorMetric,
};
use larder_vector::{
    EmbeddedVectorIndex, SearchRequest, VectorEntry, VectorIndex, VectorIndexOptions,
};

/// A `.npy` array: its shape and little-endian payload.
fn read_npy(path: &Path) -> (Vec<usize>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    assert_eq!(
        &bytes[..6],
        b"\x93NUMPY",
        "{} is not a .npy file",
        path.display()
    );
    let (header_len, start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        )
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(header.contains("'fortran_order': False"));
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape = shape_text
        .split(',')
        .filter(|part| !part.trim().is_empty())
        .map(|part| part.trim().parse().unwrap())
        .collect();
    (shape, bytes[start + header_len..].to_vec())
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|chunk| f32::from_le_bytes(chunk.try_into().unwrap()))
        .collect()
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn percentile(sorted: &[Duration], fraction: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

struct Args {
    data: PathBuf,
    efs: Vec<usize>,
    exact_queries: usize,
    min_time: Duration,
}

fn args() -> Args {
    let mut parsed = Args {
        data: PathBuf::new(),
        efs: vec![16, 32, 64, 128],
        exact_queries: 20,
        min_time: Duration::from_secs(2),
    };
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        match argument.as_str() {
            "--data" => parsed.data = PathBuf::from(arguments.next().unwrap()),
            "--ef" => {
                parsed.efs = arguments
                    .next()
                    .unwrap()
                    .split(',')
                    .map(|ef| ef.parse().unwrap())
                    .collect();
            }
            "--exact" => parsed.exact_queries = arguments.next().unwrap().parse().unwrap(),
            "--min-time" => {
                parsed.min_time =
                    Duration::from_secs_f64(arguments.next().unwrap().parse().unwrap());
            }
            _ => {} // cargo bench passes --bench
        }
    }
    assert!(
        !parsed.data.as_os_str().is_empty(),
        "--data DIR is required"
    );
    parsed
}

fn main() {
    let args = args();
    let (base_shape, base_bytes) = read_npy(&args.data.join("base.npy"));
    let (query_shape, query_bytes) = read_npy(&args.data.join("queries.npy"));
    let (truth_shape, truth_bytes) = read_npy(&args.data.join("truth.npy"));
    let (n, dimension) = (base_shape[0], base_shape[1]);
    let base = floats(&base_bytes);
    drop(base_bytes);
    let queries = floats(&query_bytes);
    let query_count = query_shape[0];
    let truth: Vec<HashSet<EntityKey>> = (0..query_count)
        .map(|query| {
            (0..10)
                .map(|rank| {
                    let at = (query * truth_shape[1] + rank) * 8;
                    EntityKey::from_int(i64::from_le_bytes(
                        truth_bytes[at..at + 8].try_into().unwrap(),
                    ))
                })
                .collect()
        })
        .collect();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let folder = tempfile::tempdir().unwrap();
    let table = FeatureViewId {
        name: "bench".into(),
        version: 1,
    };
    let options = VectorIndexOptions {
        feature: IndexedFeature {
            position: 0,
            dimension: dimension as u32,
            spec: VectorIndexSpec {
                metric: VectorMetric::Cosine,
                ..VectorIndexSpec::default()
            },
        },
        ttl: None,
    };
    let rss_before = rss_bytes();
    let index = EmbeddedVectorIndex::open(folder.path()).unwrap();
    let started = Instant::now();
    runtime.block_on(async {
        index.prepare(&table, options).await.unwrap();
        for chunk_start in (0..n).step_by(65_536) {
            let entries = (chunk_start..n.min(chunk_start + 65_536))
                .map(|row| VectorEntry {
                    key: EntityKey::from_int(row as i64),
                    event_timestamp: Timestamp::from_seconds(1_700_000_000),
                    vector: Some(base[row * dimension..(row + 1) * dimension].to_vec()),
                })
                .collect();
            index.upsert(&table, entries).await.unwrap();
        }
    });
    let build = started.elapsed();
    let started = Instant::now();
    runtime.block_on(index.flush()).unwrap();
    let snapshot = started.elapsed();
    let graph_bytes = index.memory_usage();
    let rss_after = rss_bytes();
    println!(
        "{{\"kind\":\"build\",\"n\":{n},\"dim\":{dimension},\"build_s\":{:.2},\"vectors_per_s\":{:.0},\"snapshot_s\":{:.2},\"graph_bytes_per_vec\":{},\"rss_bytes_per_vec\":{}}}",
        build.as_secs_f64(),
        n as f64 / build.as_secs_f64(),
        snapshot.as_secs_f64(),
        graph_bytes / n,
        rss_after.saturating_sub(rss_before) / n as u64
    );
    drop(base);
    drop(index);
    // A restart: open the folder again and load the graph from its snapshot.
    let started = Instant::now();
    let index = Arc::new(EmbeddedVectorIndex::open(folder.path()).unwrap());
    let loaded = runtime.block_on(index.len(&table)).unwrap();
    println!(
        "{{\"kind\":\"restart\",\"load_s\":{:.2},\"vectors\":{loaded}}}",
        started.elapsed().as_secs_f64()
    );

    let query_of = |query: usize| &queries[query * dimension..(query + 1) * dimension];
    for ef in &args.efs {
        let request = |query: &[f32]| {
            let query = query.to_vec();
            let index = Arc::clone(&index);
            let table = table.clone();
            let ef = *ef;
            async move {
                index
                    .search(
                        &table,
                        SearchRequest {
                            query: &query,
                            k: 10,
                            expansion: Some(ef),
                            exact: false,
                            not_before: None,
                        },
                    )
                    .await
                    .unwrap()
            }
        };
        // One pass for recall, then timed passes on one thread, then on two.
        let mut hits = 0;
        let mut latencies = Vec::new();
        for query in 0..query_count {
            let started = Instant::now();
            let found = runtime.block_on(request(query_of(query)));
            latencies.push(started.elapsed());
            hits += found
                .iter()
                .filter(|hit| truth[query].contains(&hit.key))
                .count();
        }
        let recall = hits as f64 / (query_count * 10) as f64;
        let started = Instant::now();
        let mut done = 0usize;
        while started.elapsed() < args.min_time {
            runtime.block_on(request(query_of(done % query_count)));
            done += 1;
        }
        let qps_1 = done as f64 / started.elapsed().as_secs_f64();
        let started = Instant::now();
        let done_2: usize = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..2)
                .map(|worker| {
                    let request = &request;
                    let runtime = &runtime;
                    let query_of = &query_of;
                    let min_time = args.min_time;
                    scope.spawn(move || {
                        let mut done = 0usize;
                        while started.elapsed() < min_time {
                            runtime.block_on(request(query_of((done * 2 + worker) % query_count)));
                            done += 1;
                        }
                        done
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|worker| worker.join().unwrap())
                .sum()
        });
        let qps_2 = done_2 as f64 / started.elapsed().as_secs_f64();
        latencies.sort();
        println!(
            "{{\"kind\":\"search\",\"ef\":{ef},\"recall_at_10\":{recall:.4},\"qps_1\":{qps_1:.0},\"qps_2\":{qps_2:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3}}}",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99)
        );
    }
    if args.exact_queries > 0 {
        let count = args.exact_queries.min(query_count);
        let mut hits = 0;
        let started = Instant::now();
        for query in 0..count {
            let found = runtime
                .block_on(index.search(
                    &table,
                    SearchRequest {
                        query: query_of(query),
                        k: 10,
                        expansion: None,
                        exact: true,
                        not_before: None,
                    },
                ))
                .unwrap();
            hits += found
                .iter()
                .filter(|hit| truth[query].contains(&hit.key))
                .count();
        }
        let elapsed = started.elapsed();
        println!(
            "{{\"kind\":\"exact\",\"queries\":{count},\"recall_at_10\":{:.4},\"qps_1\":{:.1}}}",
            hits as f64 / (count * 10) as f64,
            count as f64 / elapsed.as_secs_f64()
        );
    }
}
