//! The conformance suite every [`VectorIndex`] backend passes: [`run_all`] checks each point
//! of the trait's specification. Each check uses tables of its own (named with the process id
//! and a counter), so a persistent backend can run the suite again on the same server.
//! Failures panic with the check's name.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use larder_core::{
    EntityKey, FeatureViewId, IndexedFeature, Timestamp, TtlDuration, VectorIndexSpec, VectorMetric,
};

use crate::{
    Neighbour, SearchRequest, SharedVectorIndex, VectorEntry, VectorIndex, VectorIndexError,
    VectorIndexOptions,
};

/// Runs every check against `index`.
pub async fn run_all(index: SharedVectorIndex) {
    let index_ref: &dyn VectorIndex = index.as_ref();
    check_prepare_is_idempotent_and_refuses_other_settings(index_ref).await;
    check_unprepared_tables_refuse_writes_and_searches(index_ref).await;
    check_exact_search_orders_by_each_metric(index_ref).await;
    check_older_event_time_never_overwrites_newer(index_ref).await;
    check_same_key_twice_in_one_call_applies_in_order(index_ref).await;
    check_null_vector_hides_older_ones(index_ref).await;
    check_bad_vectors_refuse_the_whole_call(index_ref).await;
    check_remove_forgets_keys(index_ref).await;
    check_not_before_filters_old_vectors(index_ref).await;
    check_tables_are_isolated_and_dropped(index_ref).await;
    check_k_bounds(index_ref).await;
    check_approximate_recall(index_ref).await;
    check_concurrent_writers_keep_the_newest(index).await;
}

static TABLE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A table name no other check (or earlier run against the same server) used.
fn fresh_table(check: &str) -> FeatureViewId {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    FeatureViewId {
        name: format!(
            "vc_{check}_{}_{nanos}_{}",
            std::process::id(),
            TABLE_COUNTER.fetch_add(1, Ordering::Relaxed)
        ),
        version: 1,
    }
}

fn options(dimension: u32, metric: VectorMetric) -> VectorIndexOptions {
    VectorIndexOptions {
        feature: IndexedFeature {
            position: 0,
            dimension,
            spec: VectorIndexSpec {
                metric,
                ..VectorIndexSpec::default()
            },
        },
        ttl: None,
    }
}

fn key(id: i64) -> EntityKey {
    EntityKey::from_int(id)
}

fn entry(id: i64, seconds: i64, vector: Option<Vec<f32>>) -> VectorEntry {
    VectorEntry {
        key: key(id),
        event_timestamp: Timestamp::from_seconds(seconds),
        vector,
    }
}

fn exact(query: &[f32], k: usize) -> SearchRequest<'_> {
    SearchRequest {
        query,
        k,
        expansion: None,
        exact: true,
        not_before: None,
    }
}

fn approximate(query: &[f32], k: usize) -> SearchRequest<'_> {
    SearchRequest {
        exact: false,
        ..exact(query, k)
    }
}

/// A seeded xorshift generator: the same data on every backend and run.
struct Seeded(u64);

impl Seeded {
    fn next_unit(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }

    /// A roughly normal number (sum of uniforms).
    fn next_normal(&mut self) -> f32 {
        (0..4).map(|_| self.next_unit()).sum::<f32>() - 2.0
    }
}

struct Check<'a> {
    index: &'a dyn VectorIndex,
    name: &'static str,
}

impl<'a> Check<'a> {
    fn new(index: &'a dyn VectorIndex, name: &'static str) -> Self {
        Self { index, name }
    }

    async fn table(&self, options: VectorIndexOptions) -> FeatureViewId {
        let table = fresh_table(self.name);
        self.ok(self.index.prepare(&table, options).await, "prepare");
        table
    }

    fn ok<T>(&self, result: Result<T, VectorIndexError>, what: &str) -> T {
        match result {
            Ok(value) => value,
            Err(error) => panic!(
                "[{} / {}] {what} failed: {error}",
                self.index.backend_name(),
                self.name
            ),
        }
    }

    async fn upsert(&self, table: &FeatureViewId, entries: Vec<VectorEntry>) {
        self.ok(self.index.upsert(table, entries).await, "upsert");
    }

    async fn search(&self, table: &FeatureViewId, request: SearchRequest<'_>) -> Vec<Neighbour> {
        self.ok(self.index.search(table, request).await, "search")
    }

    async fn keys_near(&self, table: &FeatureViewId, query: &[f32], k: usize) -> Vec<EntityKey> {
        self.search(table, exact(query, k))
            .await
            .into_iter()
            .map(|neighbour| neighbour.key)
            .collect()
    }

    fn assert(&self, condition: bool, message: impl std::fmt::Display) {
        assert!(
            condition,
            "[{} / {}] {message}",
            self.index.backend_name(),
            self.name
        );
    }
}

/// Preparing twice with the same settings is fine (a new TTL is taken); other settings are
/// refused.
pub async fn check_prepare_is_idempotent_and_refuses_other_settings(index: &dyn VectorIndex) {
    let check = Check::new(index, "prepare");
    let settings = options(3, VectorMetric::Cosine);
    let table = check.table(settings).await;
    check.ok(
        index
            .prepare(
                &table,
                VectorIndexOptions {
                    ttl: Some(TtlDuration::from_seconds(60)),
                    ..settings
                },
            )
            .await,
        "preparing again",
    );
    let other = index
        .prepare(&table, options(4, VectorMetric::Cosine))
        .await;
    check.assert(
        matches!(other, Err(VectorIndexError::Mismatch { .. })),
        format!("another dimension must be refused, got {other:?}"),
    );
    let other = index.prepare(&table, options(3, VectorMetric::L2)).await;
    check.assert(
        matches!(other, Err(VectorIndexError::Mismatch { .. })),
        format!("another metric must be refused, got {other:?}"),
    );
}

/// Writes and searches need a prepared table; removes and drops of unknown ones do nothing.
pub async fn check_unprepared_tables_refuse_writes_and_searches(index: &dyn VectorIndex) {
    let check = Check::new(index, "unprepared");
    let table = fresh_table("unprepared");
    let written = index
        .upsert(&table, vec![entry(1, 10, Some(vec![1.0, 0.0]))])
        .await;
    check.assert(
        matches!(written, Err(VectorIndexError::NotPrepared(_))),
        format!("upsert into an unprepared table: {written:?}"),
    );
    let searched = index.search(&table, exact(&[1.0, 0.0], 3)).await;
    check.assert(
        matches!(searched, Err(VectorIndexError::NotPrepared(_))),
        format!("search of an unprepared table: {searched:?}"),
    );
    check.assert(
        check.ok(index.remove(&table, &[key(1)]).await, "remove") == 0,
        "removing from an unknown table removes nothing",
    );
    check.ok(index.drop_index(&table).await, "drop of an unknown table");
    check.assert(
        check.ok(index.len(&table).await, "len") == 0,
        "an unknown table is empty",
    );
}

/// Exact searches return the nearest vectors first, with the metric's distances.
pub async fn check_exact_search_orders_by_each_metric(index: &dyn VectorIndex) {
    let check = Check::new(index, "metrics");
    let vectors: Vec<Vec<f32>> = vec![
        vec![1.0, 0.0, 0.0],
        vec![0.0, 2.0, 0.0],
        vec![0.5, 0.5, 0.0],
        vec![-1.0, 0.0, 0.5],
        vec![3.0, 0.1, 0.0],
        vec![0.2, 0.2, 3.0],
    ];
    let query = [1.0f32, 0.1, 0.0];
    for metric in [VectorMetric::Cosine, VectorMetric::Dot, VectorMetric::L2] {
        let table = check.table(options(3, metric)).await;
        check
            .upsert(
                &table,
                vectors
                    .iter()
                    .enumerate()
                    .map(|(id, vector)| entry(id as i64, 10, Some(vector.clone())))
                    .collect(),
            )
            .await;
        let mut expected: Vec<(f32, i64)> = vectors
            .iter()
            .enumerate()
            .map(|(id, vector)| (metric.distance(&query, vector), id as i64))
            .collect();
        expected.sort_by(|left, right| left.0.total_cmp(&right.0));
        for request in [exact(&query, 4), approximate(&query, 4)] {
            let found = check.search(&table, request).await;
            check.assert(found.len() == 4, format!("{metric}: 4 hits, got {found:?}"));
            for (hit, (distance, id)) in found.iter().zip(&expected) {
                check.assert(
                    hit.key == key(*id),
                    format!("{metric}: expected entity {id} at distance {distance}, got {found:?}"),
                );
                check.assert(
                    (hit.distance - distance).abs() <= 1e-4 * distance.abs().max(1.0),
                    format!(
                        "{metric}: distance of {id} should be {distance}, got {}",
                        hit.distance
                    ),
                );
                check.assert(
                    hit.event_timestamp == Timestamp::from_seconds(10),
                    "hits carry their event time",
                );
            }
        }
        check.assert(
            check.ok(index.len(&table).await, "len") == vectors.len() as u64,
            "len counts the vectors",
        );
    }
}

/// An older entry never replaces a newer one; an equal event time replaces.
pub async fn check_older_event_time_never_overwrites_newer(index: &dyn VectorIndex) {
    let check = Check::new(index, "event_time_order");
    let table = check.table(options(2, VectorMetric::L2)).await;
    check
        .upsert(&table, vec![entry(1, 20, Some(vec![0.0, 0.0]))])
        .await;
    let summary = check.ok(
        index
            .upsert(&table, vec![entry(1, 10, Some(vec![5.0, 5.0]))])
            .await,
        "upsert of an older entry",
    );
    check.assert(
        summary.skipped_stale == 1 && summary.applied == 0,
        format!("an older entry is skipped: {summary:?}"),
    );
    let found = check.search(&table, exact(&[0.0, 0.0], 1)).await;
    check.assert(
        found.first().is_some_and(|hit| hit.distance == 0.0),
        format!("the newer vector stays: {found:?}"),
    );
    check
        .upsert(&table, vec![entry(1, 20, Some(vec![1.0, 0.0]))])
        .await;
    let found = check.search(&table, exact(&[0.0, 0.0], 1)).await;
    check.assert(
        found
            .first()
            .is_some_and(|hit| (hit.distance - 1.0).abs() < 1e-6),
        format!("an equal event time replaces: {found:?}"),
    );
}

/// Entries of one key in one call apply in order.
pub async fn check_same_key_twice_in_one_call_applies_in_order(index: &dyn VectorIndex) {
    let check = Check::new(index, "same_key_twice");
    let table = check.table(options(2, VectorMetric::L2)).await;
    check
        .upsert(
            &table,
            vec![
                entry(1, 10, Some(vec![1.0, 0.0])),
                entry(1, 30, Some(vec![3.0, 0.0])),
                entry(1, 20, Some(vec![2.0, 0.0])),
                entry(2, 10, Some(vec![9.0, 9.0])),
                entry(2, 10, Some(vec![8.0, 8.0])),
            ],
        )
        .await;
    let found = check.search(&table, exact(&[0.0, 0.0], 2)).await;
    check.assert(
        found.len() == 2
            && found[0].key == key(1)
            && (found[0].distance - 9.0).abs() < 1e-5
            && found[0].event_timestamp == Timestamp::from_seconds(30)
            && (found[1].distance - 128.0).abs() < 1e-4,
        format!("entity 1 keeps its newest vector, entity 2 its later equal one: {found:?}"),
    );
}

/// A newer null vector hides the older vector, is never returned, and keeps older vectors out.
pub async fn check_null_vector_hides_older_ones(index: &dyn VectorIndex) {
    let check = Check::new(index, "null_vector");
    let table = check.table(options(2, VectorMetric::Cosine)).await;
    check
        .upsert(
            &table,
            vec![
                entry(1, 10, Some(vec![1.0, 0.0])),
                entry(2, 10, Some(vec![0.0, 1.0])),
            ],
        )
        .await;
    check.upsert(&table, vec![entry(1, 20, None)]).await;
    check
        .upsert(&table, vec![entry(1, 15, Some(vec![1.0, 0.0]))])
        .await;
    for request in [exact(&[1.0, 0.0], 5), approximate(&[1.0, 0.0], 5)] {
        let found = check.search(&table, request).await;
        check.assert(
            found.len() == 1 && found[0].key == key(2),
            format!("only entity 2 has a vector: {found:?}"),
        );
    }
    check.assert(
        check.ok(index.len(&table).await, "len") == 1,
        "null entries are not counted",
    );
    check
        .upsert(&table, vec![entry(1, 30, Some(vec![1.0, 0.0]))])
        .await;
    let found = check.keys_near(&table, &[1.0, 0.0], 1).await;
    check.assert(
        found == vec![key(1)],
        format!("a newer vector replaces the null entry: {found:?}"),
    );
}

/// A wrong dimension or a non-finite component refuses the whole call.
pub async fn check_bad_vectors_refuse_the_whole_call(index: &dyn VectorIndex) {
    let check = Check::new(index, "bad_vectors");
    let table = check.table(options(2, VectorMetric::L2)).await;
    for bad in [
        vec![1.0],
        vec![1.0, 2.0, 3.0],
        vec![f32::NAN, 0.0],
        vec![0.0, f32::INFINITY],
    ] {
        let result = index
            .upsert(
                &table,
                vec![
                    entry(1, 10, Some(vec![0.0, 0.0])),
                    entry(2, 10, Some(bad.clone())),
                ],
            )
            .await;
        check.assert(
            matches!(result, Err(VectorIndexError::InvalidInput(_))),
            format!("{bad:?} must be refused, got {result:?}"),
        );
    }
    check.assert(
        check.ok(index.len(&table).await, "len") == 0,
        "nothing of a refused call is written",
    );
    for bad in [vec![1.0], vec![f32::NAN, 1.0]] {
        let result = index.search(&table, exact(&bad, 1)).await;
        check.assert(
            matches!(result, Err(VectorIndexError::InvalidInput(_))),
            format!("query {bad:?} must be refused, got {result:?}"),
        );
    }
}

/// Removing forgets keys entirely and counts them.
pub async fn check_remove_forgets_keys(index: &dyn VectorIndex) {
    let check = Check::new(index, "remove");
    let table = check.table(options(2, VectorMetric::L2)).await;
    check
        .upsert(
            &table,
            vec![
                entry(1, 20, Some(vec![0.0, 0.0])),
                entry(2, 20, Some(vec![1.0, 0.0])),
                entry(3, 20, None),
            ],
        )
        .await;
    let removed = check.ok(
        index.remove(&table, &[key(1), key(3), key(9)]).await,
        "remove",
    );
    check.assert(
        removed == 2,
        format!("two held keys removed, got {removed}"),
    );
    let again = check.ok(index.remove(&table, &[key(1)]).await, "remove again");
    check.assert(again == 0, "removing again removes nothing");
    for request in [exact(&[0.0, 0.0], 5), approximate(&[0.0, 0.0], 5)] {
        let found = check.search(&table, request).await;
        check.assert(
            found.len() == 1 && found[0].key == key(2),
            format!("entity 1 is gone: {found:?}"),
        );
    }
    check
        .upsert(&table, vec![entry(1, 5, Some(vec![0.0, 0.0]))])
        .await;
    let found = check.keys_near(&table, &[0.0, 0.0], 1).await;
    check.assert(
        found == vec![key(1)],
        format!("an older entry may be written after a removal: {found:?}"),
    );
}

/// Only vectors at or after `not_before` are returned, by exact and approximate searches.
pub async fn check_not_before_filters_old_vectors(index: &dyn VectorIndex) {
    let check = Check::new(index, "not_before");
    let table = check.table(options(2, VectorMetric::L2)).await;
    let entries = (0..50)
        .map(|id| entry(id, 100 + id, Some(vec![id as f32, 0.0])))
        .collect();
    check.upsert(&table, entries).await;
    for exact_search in [true, false] {
        let found = check
            .search(
                &table,
                SearchRequest {
                    query: &[0.0, 0.0],
                    k: 3,
                    expansion: None,
                    exact: exact_search,
                    not_before: Some(Timestamp::from_seconds(140)),
                },
            )
            .await;
        let keys: Vec<EntityKey> = found.iter().map(|hit| hit.key.clone()).collect();
        check.assert(
            keys == vec![key(40), key(41), key(42)],
            format!("exact={exact_search}: the nearest fresh vectors are 40, 41, 42: {found:?}"),
        );
    }
}

/// Tables never see each other's entries; a dropped table is empty and can be prepared
/// again with other settings.
pub async fn check_tables_are_isolated_and_dropped(index: &dyn VectorIndex) {
    let check = Check::new(index, "isolation");
    let first = check.table(options(2, VectorMetric::L2)).await;
    let second = check.table(options(2, VectorMetric::L2)).await;
    check
        .upsert(&first, vec![entry(1, 10, Some(vec![0.0, 0.0]))])
        .await;
    check
        .upsert(&second, vec![entry(2, 10, Some(vec![0.0, 0.0]))])
        .await;
    check.assert(
        check.keys_near(&first, &[0.0, 0.0], 5).await == vec![key(1)],
        "the first table holds only its entry",
    );
    check.ok(index.drop_index(&first).await, "drop");
    check.assert(
        check.ok(index.len(&first).await, "len") == 0,
        "a dropped table is empty",
    );
    check.ok(
        index
            .prepare(&first, options(3, VectorMetric::Cosine))
            .await,
        "preparing a dropped table with other settings",
    );
    check.assert(
        check
            .keys_near(&first, &[0.0, 0.0, 1.0], 5)
            .await
            .is_empty(),
        "a table prepared again starts empty",
    );
    check.assert(
        check.keys_near(&second, &[0.0, 0.0], 5).await == vec![key(2)],
        "dropping one table keeps the other",
    );
}

/// `k = 0` finds nothing; a `k` above the size finds every vector.
pub async fn check_k_bounds(index: &dyn VectorIndex) {
    let check = Check::new(index, "k_bounds");
    let table = check.table(options(2, VectorMetric::Cosine)).await;
    check.assert(
        check
            .search(&table, approximate(&[1.0, 0.0], 5))
            .await
            .is_empty(),
        "an empty table finds nothing",
    );
    check
        .upsert(
            &table,
            (1..=3)
                .map(|id| entry(id, 10, Some(vec![1.0, id as f32])))
                .collect(),
        )
        .await;
    check.assert(
        check
            .search(&table, approximate(&[1.0, 0.0], 0))
            .await
            .is_empty(),
        "k = 0 finds nothing",
    );
    for request in [exact(&[1.0, 0.0], 100), approximate(&[1.0, 0.0], 100)] {
        let found = check.search(&table, request).await;
        check.assert(
            found.len() == 3,
            format!("k above the size finds all 3: {found:?}"),
        );
    }
}

/// Approximate searches find at least 90 % of the exact top 10 on clustered data.
pub async fn check_approximate_recall(index: &dyn VectorIndex) {
    let check = Check::new(index, "recall");
    let dimension = 32;
    let table = check.table(options(dimension, VectorMetric::Cosine)).await;
    let mut random = Seeded(0x5eed_1234_abcd_0001);
    let centres: Vec<Vec<f32>> = (0..40)
        .map(|_| (0..dimension).map(|_| random.next_normal()).collect())
        .collect();
    let point = |random: &mut Seeded, centre: usize| -> Vec<f32> {
        centres[centre]
            .iter()
            .map(|component| component + 0.6 * random.next_normal())
            .collect()
    };
    let entries: Vec<VectorEntry> = (0..3000)
        .map(|id| {
            let centre = id % 40;
            entry(id as i64, 10, Some(point(&mut random, centre)))
        })
        .collect();
    for chunk in entries.chunks(700) {
        check.upsert(&table, chunk.to_vec()).await;
    }
    let mut found_total = 0;
    let queries = 30;
    for query_index in 0..queries {
        let query = point(&mut random, (query_index * 7) % 40);
        let truth = check.keys_near(&table, &query, 10).await;
        let approximate_hits = check.search(&table, approximate(&query, 10)).await;
        found_total += approximate_hits
            .iter()
            .filter(|hit| truth.contains(&hit.key))
            .count();
    }
    let recall = found_total as f64 / (queries * 10) as f64;
    check.assert(recall >= 0.9, format!("recall@10 {recall:.3} is below 0.9"));
}

/// Four writers racing over the same keys with event times leave each key's newest vector.
pub async fn check_concurrent_writers_keep_the_newest(index: SharedVectorIndex) {
    let check_index = Arc::clone(&index);
    let check = Check::new(check_index.as_ref(), "concurrent_writers");
    let table = check.table(options(2, VectorMetric::L2)).await;
    let mut writers = Vec::new();
    for writer in 0..4i64 {
        let index = Arc::clone(&index);
        let table = table.clone();
        writers.push(tokio::spawn(async move {
            for round in 0..10i64 {
                // Writer w writes event time round*4 + w: the global newest is round 9, writer 3.
                let seconds = round * 4 + writer;
                let entries = (0..20)
                    .map(|id| entry(id, seconds, Some(vec![seconds as f32, id as f32])))
                    .collect();
                index.upsert(&table, entries).await?;
            }
            Ok::<(), VectorIndexError>(())
        }));
    }
    for writer in writers {
        let joined = writer.await.map_err(|error| VectorIndexError::Unavailable {
            backend: "test",
            message: error.to_string(),
        });
        check.ok(joined.and_then(|result| result), "writer");
    }
    for id in 0..20 {
        let found = check.search(&table, exact(&[39.0, id as f32], 1)).await;
        check.assert(
            found.first().is_some_and(|hit| {
                hit.key == key(id)
                    && hit.distance == 0.0
                    && hit.event_timestamp == Timestamp::from_seconds(39)
            }),
            format!("entity {id} ends with its newest vector: {found:?}"),
        );
    }
}
