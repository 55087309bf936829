//! The pgvector vector index: nearest-neighbour search in PostgreSQL with the pgvector
//! extension, shared by every process connected to the same database.
//!
//! # Layout
//!
//! One table per feature view version, `"{table_prefix}{view}@v{version}"` (a quoted
//! identifier; a name longer than PostgreSQL's 63 bytes is cut and ends with a hash of the
//! whole name):
//!
//! ```text
//! key       bytea primary key    the entity key's canonical bytes
//! event_us  bigint not null      event time, microseconds since the Unix epoch
//! embedding vector(D)            NULL for a null entry (which keeps older vectors out)
//! ```
//!
//! with an HNSW index `USING hnsw (embedding vector_{cosine|ip|l2}_ops) WITH (m =
//! connectivity, ef_construction = expansion_add)` (the graph settings clamped to pgvector's
//! bounds: `m` 2..=100, `ef_construction` 4..=1000 and at least `2 m`; no index above 2000
//! dimensions, pgvector's limit, where every search is a sequential scan). One meta table,
//! `{table_prefix}vector_tables`, holds each table's settings (dimension, metric, graph
//! settings, the feature's position), so that [`VectorIndex::prepare`] refuses other settings
//! whichever process prepared the table first. The TTL is not stored: it is kept in memory per
//! table, and searches get it as `not_before`.
//!
//! # Guarantees
//!
//! * **Event-time order, per key, across processes.** An upsert is one statement,
//!   `INSERT … SELECT … FROM unnest(…) ON CONFLICT (key) DO UPDATE … WHERE t.event_us <=
//!   excluded.event_us`: the row lock makes the comparison and the write atomic. Entries of
//!   one key in one call are first collapsed in call order (as the trait says), and the rows
//!   are sent sorted by key so that concurrent writers lock rows in one order (a deadlock or
//!   serialization failure is retried anyway).
//! * **Tables.** `prepare` and `drop_index` run in a transaction holding an advisory lock, so
//!   two processes preparing one table at once agree. Each process caches a table's settings;
//!   a table dropped (or prepared again with other settings) by another process is noticed by
//!   the error of the next statement, which reloads the settings and runs again once.
//! * **Search.** Distances are [`larder_core::VectorMetric::distance`]'s: cosine
//!   `embedding <=> q` (`1 − cos`; 1 for a zero vector), dot `1 + (embedding <#> q)` (pgvector's
//!   `<#>` is the negated inner product), l2 `vector_l2_squared_distance` (`<->` squared).
//!   Approximate searches walk the HNSW index (`ORDER BY embedding <op> q LIMIT k`) in a
//!   transaction with `SET LOCAL hnsw.ef_search = max(expansion, k)` (at most 1000) and, when
//!   filtering by `not_before` or asking for more than that, `hnsw.iterative_scan =
//!   strict_order`, so a filtered search still finds `k` rows (pgvector before 0.8 has no
//!   iterative scans: such searches are exact there). Exact searches order by the distance
//!   itself, which no index serves: a sequential scan, ties broken by key bytes.
//! * **Failures.** Connection and server errors are [`VectorIndexError::Unavailable`] naming
//!   the `pgvector` backend; no message contains the URL or its password. Connections live in
//!   a small pool of at most `pool_size`, opened on demand; a dead one is replaced on next use.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use larder_core::{
    EntityKey, FeatureViewId, IndexedFeature, Timestamp, VectorIndexSpec, VectorMetric,
};
use larder_vector::{
    Neighbour, SearchRequest, UpsertSummary, VectorEntry, VectorIndex, VectorIndexError,
    VectorIndexOptions, check_entries,
};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls};

/// The backend name in errors.
const BACKEND_NAME: &str = "pgvector";

/// PostgreSQL's longest identifier, in bytes.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// The transaction-scoped advisory lock every schema change holds (`larderpv`).
const SCHEMA_LOCK_KEY: i64 = 0x6c61_7264_6572_7076;

/// How long opening a connection may take when the URL does not say.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// pgvector's largest `hnsw.ef_search`.
const MAX_EF_SEARCH: usize = 1000;

/// pgvector's largest dimension for an HNSW index over `vector`.
const MAX_HNSW_DIMENSION: u32 = 2000;

/// pgvector's largest `vector` dimension.
const MAX_DIMENSION: u32 = 16000;

/// Retries of a statement that lost a deadlock or a serialization conflict.
const MAX_CONFLICT_RETRIES: u32 = 5;

/// How to reach the server and name the tables.
#[derive(Clone)]
pub struct PgvectorOptions {
    /// A `postgres://user:password@host:port/database` URL (or a `key=value` connection
    /// string). It is never logged nor put in an error.
    pub url: String,
    /// Prefix of every table name (`larder_`).
    pub table_prefix: String,
    /// Most connections open at once (at least 1).
    pub pool_size: usize,
}

impl fmt::Debug for PgvectorOptions {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("PgvectorOptions")
            .field("url", &larder_core::secret::redact_url_password(&self.url))
            .field("table_prefix", &self.table_prefix)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

/// One prepared table, as this process knows it.
#[derive(Debug)]
struct TableState {
    options: VectorIndexOptions,
    /// The table's quoted identifier.
    table: String,
}

/// The vector index in PostgreSQL + pgvector (see the crate docs for the layout).
pub struct PgvectorIndex {
    pool: Pool,
    prefix: String,
    /// The meta table's quoted identifier.
    meta_table: String,
    /// Whether the server's pgvector has iterative index scans (0.8 and later).
    iterative_scans: bool,
    tables: RwLock<HashMap<FeatureViewId, Arc<TableState>>>,
}

impl fmt::Debug for PgvectorIndex {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("PgvectorIndex")
            .field("server", &self.pool.target)
            .field("table_prefix", &self.prefix)
            .field("pool_size", &self.pool.size)
            .finish_non_exhaustive()
    }
}

impl PgvectorIndex {
    /// Connects, creates the `vector` extension and the meta table if they do not exist,
    /// and checks the server's pgvector.
    pub async fn connect(options: PgvectorOptions) -> Result<Self, VectorIndexError> {
        let pool = Pool::new(&options)?;
        let meta_table = quote(&identifier(&format!(
            "{}vector_tables",
            options.table_prefix
        )));
        let mut client = pool.get().await?;
        let transaction = client
            .transaction()
            .await
            .map_err(|error| pool.failed("cannot set up pgvector", &error))?;
        transaction
            .batch_execute(&format!(
                "SELECT pg_advisory_xact_lock({SCHEMA_LOCK_KEY});
                 CREATE EXTENSION IF NOT EXISTS vector;
                 CREATE TABLE IF NOT EXISTS {meta_table} (
                     name text PRIMARY KEY,
                     dimension integer NOT NULL,
                     metric text NOT NULL,
                     connectivity integer NOT NULL,
                     expansion_add integer NOT NULL,
                     expansion_search integer NOT NULL,
                     feature_position integer NOT NULL
                 )"
            ))
            .await
            .map_err(|error| pool.failed("cannot set up pgvector", &error))?;
        let version: Option<String> = transaction
            .query_opt(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'",
                &[],
            )
            .await
            .and_then(|row| row.map(|row| row.try_get(0)).transpose())
            .map_err(|error| pool.failed("cannot set up pgvector", &error))?;
        transaction
            .commit()
            .await
            .map_err(|error| pool.failed("cannot set up pgvector", &error))?;
        drop(client);
        Ok(Self {
            pool,
            prefix: options.table_prefix,
            meta_table,
            iterative_scans: version.as_deref().is_some_and(has_iterative_scans),
            tables: RwLock::new(HashMap::new()),
        })
    }

    /// The table's name (unquoted), as stored in the meta table.
    fn table_name(&self, table: &FeatureViewId) -> String {
        identifier(&format!("{}{}@v{}", self.prefix, table.name, table.version))
    }

    fn cached(&self, table: &FeatureViewId) -> Option<Arc<TableState>> {
        self.tables
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(table)
            .cloned()
    }

    fn remember(&self, table: &FeatureViewId, state: TableState) -> Arc<TableState> {
        let state = Arc::new(state);
        self.tables
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(table.clone(), Arc::clone(&state));
        state
    }

    fn forget(&self, table: &FeatureViewId) {
        self.tables
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(table);
    }

    /// The table's settings: cached, or read from the meta table (a table another process
    /// prepared); [`VectorIndexError::NotPrepared`] when it has none.
    async fn table_state(&self, table: &FeatureViewId) -> Result<Arc<TableState>, Failure> {
        if let Some(state) = self.cached(table) {
            return Ok(state);
        }
        let name = self.table_name(table);
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT dimension, metric, connectivity, expansion_add, expansion_search,
                            feature_position
                     FROM {} WHERE name = $1",
                    self.meta_table
                ),
                &[&name],
            )
            .await?;
        drop(client);
        let Some(row) = row else {
            return Err(VectorIndexError::NotPrepared(table.clone()).into());
        };
        let options = VectorIndexOptions {
            feature: feature_from_row(&row)?,
            ttl: None,
        };
        Ok(self.remember(
            table,
            TableState {
                options,
                table: quote(&name),
            },
        ))
    }

    /// What to do after a failed attempt at `what` on `table`: run it again, report the table
    /// as missing, or fail.
    fn after_failure(
        &self,
        table: &FeatureViewId,
        what: &str,
        failure: Failure,
        attempts: &mut Attempts,
    ) -> Next {
        let error = match failure {
            Failure::Index(VectorIndexError::NotPrepared(_)) => return Next::Missing,
            Failure::Index(error) => return Next::Fail(error),
            Failure::Sql(error) => error,
        };
        let code = error.code();
        if code == Some(&SqlState::UNDEFINED_TABLE) || code == Some(&SqlState::DATA_EXCEPTION) {
            // Another process dropped the table, or prepared it again with other settings.
            self.forget(table);
            if !attempts.refreshed {
                attempts.refreshed = true;
                return Next::Retry;
            }
            if code == Some(&SqlState::UNDEFINED_TABLE) {
                return Next::Missing;
            }
        } else if (code == Some(&SqlState::T_R_DEADLOCK_DETECTED)
            || code == Some(&SqlState::T_R_SERIALIZATION_FAILURE))
            && attempts.conflicts < MAX_CONFLICT_RETRIES
        {
            attempts.conflicts += 1;
            return Next::Retry;
        } else if error.is_closed() && !attempts.reconnected {
            // A pooled connection died (a server restart): the pool drops it; try a new one.
            attempts.reconnected = true;
            return Next::Retry;
        }
        Next::Fail(self.pool.failed(&format!("{what} on {table}"), &error))
    }

    async fn try_prepare(
        &self,
        table: &FeatureViewId,
        options: VectorIndexOptions,
    ) -> Result<(), Failure> {
        let feature = options.feature;
        let spec = feature.spec;
        if feature.dimension == 0 || feature.dimension > MAX_DIMENSION {
            return Err(VectorIndexError::InvalidInput(format!(
                "pgvector holds vectors of 1 to {MAX_DIMENSION} components, not {}",
                feature.dimension
            ))
            .into());
        }
        let columns = [
            ("connectivity", spec.connectivity as usize),
            ("expansion_add", spec.expansion_add as usize),
            ("expansion_search", spec.expansion_search as usize),
            ("position", feature.position),
        ]
        .into_iter()
        .map(|(what, value)| {
            i32::try_from(value).map_err(|_| {
                Failure::Index(VectorIndexError::InvalidInput(format!(
                    "the vector index's {what} {value} is too large"
                )))
            })
        })
        .collect::<Result<Vec<i32>, Failure>>()?;
        let name = self.table_name(table);
        let quoted = quote(&name);
        let mut client = self.pool.get().await?;
        let transaction = client.transaction().await?;
        transaction
            .execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK_KEY])
            .await?;
        let existing = transaction
            .query_opt(
                &format!(
                    "SELECT dimension, metric, connectivity, expansion_add, expansion_search,
                            feature_position
                     FROM {} WHERE name = $1",
                    self.meta_table
                ),
                &[&name],
            )
            .await?;
        if let Some(row) = existing {
            let existing = feature_from_row(&row)?;
            if existing != feature {
                return Err(VectorIndexError::Mismatch {
                    table: table.clone(),
                    existing: VectorIndexOptions {
                        feature: existing,
                        ttl: options.ttl,
                    }
                    .describe(),
                    requested: options.describe(),
                }
                .into());
            }
        } else {
            let mut statements = format!(
                "CREATE TABLE IF NOT EXISTS {quoted} (
                     key bytea PRIMARY KEY,
                     event_us bigint NOT NULL,
                     embedding vector({})
                 );",
                feature.dimension
            );
            if feature.dimension <= MAX_HNSW_DIMENSION {
                let connectivity = spec.connectivity.clamp(2, 100);
                let expansion_add = spec.expansion_add.max(2 * connectivity).clamp(4, 1000);
                statements.push_str(&format!(
                    "CREATE INDEX IF NOT EXISTS {} ON {quoted} USING hnsw (embedding {})
                     WITH (m = {connectivity}, ef_construction = {expansion_add});",
                    quote(&identifier(&format!("{name}_hnsw"))),
                    operator_class(spec.metric)
                ));
            }
            transaction.batch_execute(&statements).await?;
            let dimension = i32::try_from(feature.dimension).unwrap_or(i32::MAX);
            transaction
                .execute(
                    &format!(
                        "INSERT INTO {} (name, dimension, metric, connectivity, expansion_add,
                                         expansion_search, feature_position)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        self.meta_table
                    ),
                    &[
                        &name,
                        &dimension,
                        &spec.metric.name(),
                        &columns[0],
                        &columns[1],
                        &columns[2],
                        &columns[3],
                    ],
                )
                .await?;
        }
        transaction.commit().await?;
        drop(client);
        self.remember(
            table,
            TableState {
                options,
                table: quoted,
            },
        );
        Ok(())
    }

    /// One upsert statement for entries already validated against `state`.
    async fn try_upsert(
        &self,
        state: &TableState,
        entries: &[VectorEntry],
    ) -> Result<UpsertSummary, Failure> {
        let (chains, mut summary) = collapse(entries);
        let mut winners: Vec<&Chain<'_>> = chains.values().collect();
        winners.sort_by(|left, right| left.winner.key.as_bytes().cmp(right.winner.key.as_bytes()));
        let keys: Vec<&[u8]> = winners
            .iter()
            .map(|chain| chain.winner.key.as_bytes())
            .collect();
        let event_times: Vec<i64> = winners
            .iter()
            .map(|chain| chain.winner.event_timestamp.as_micros())
            .collect();
        let vectors: Vec<Option<String>> = winners
            .iter()
            .map(|chain| chain.winner.vector.as_deref().map(vector_text))
            .collect();
        let table = &state.table;
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "WITH input AS MATERIALIZED (
                         SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::text[])
                             AS input (key, event_us, embedding)
                     ),
                     previous AS (
                         SELECT t.key, t.event_us FROM {table} t
                         WHERE t.key IN (SELECT key FROM input)
                     ),
                     written AS (
                         INSERT INTO {table} AS t (key, event_us, embedding)
                         SELECT key, event_us, embedding::vector FROM input
                         ON CONFLICT (key) DO UPDATE
                             SET event_us = excluded.event_us, embedding = excluded.embedding
                             WHERE t.event_us <= excluded.event_us
                         RETURNING t.key
                     )
                     SELECT written.key, previous.event_us
                     FROM written LEFT JOIN previous ON previous.key = written.key"
                ),
                &[&keys, &event_times, &vectors],
            )
            .await?;
        drop(client);
        // key → the event time stored before this statement (None: the key was new).
        let mut written: HashMap<Vec<u8>, Option<i64>> = HashMap::with_capacity(rows.len());
        for row in rows {
            written.insert(row.try_get(0)?, row.try_get(1)?);
        }
        for chain in winners {
            let entries = chain.event_times.len() as u64;
            let applied = match written.get(chain.winner.key.as_bytes()) {
                None => 0,
                Some(None) => entries,
                Some(Some(previous)) => chain
                    .event_times
                    .iter()
                    .filter(|event_time| **event_time >= *previous)
                    .count() as u64,
            };
            summary.applied += applied;
            summary.skipped_stale += entries - applied;
        }
        Ok(summary)
    }

    async fn try_search(
        &self,
        state: &TableState,
        request: &SearchRequest<'_>,
    ) -> Result<Vec<Neighbour>, Failure> {
        let spec = state.options.feature.spec;
        let query = vector_text(request.query);
        let limit = i64::try_from(request.k).unwrap_or(i64::MAX);
        let not_before = request.not_before.map(Timestamp::as_micros);
        let ef_search = request
            .expansion
            .unwrap_or(spec.expansion_search as usize)
            .max(request.k)
            .clamp(1, MAX_EF_SEARCH);
        let needs_iteration = not_before.is_some() || request.k > ef_search;
        let exact = request.exact
            || state.options.feature.dimension > MAX_HNSW_DIMENSION
            || (needs_iteration && !self.iterative_scans);
        let table = &state.table;
        let query_vector = "CAST($1::text AS vector)";
        let distance = match spec.metric {
            VectorMetric::Cosine => {
                format!("coalesce(nullif(embedding <=> {query_vector}, 'NaN'::float8), 1)")
            }
            VectorMetric::Dot => format!("1 + (embedding <#> {query_vector})"),
            VectorMetric::L2 => format!("vector_l2_squared_distance(embedding, {query_vector})"),
        };
        let filter = if not_before.is_some() {
            "AND event_us >= $3"
        } else {
            ""
        };
        let mut parameters: Vec<&(dyn ToSql + Sync)> = vec![&query, &limit];
        if let Some(not_before) = &not_before {
            parameters.push(not_before);
        }
        let mut client = self.pool.get().await?;
        let rows = if exact {
            client
                .query(
                    &format!(
                        "SELECT key, event_us, distance FROM (
                             SELECT key, event_us, {distance} AS distance FROM {table}
                             WHERE embedding IS NOT NULL {filter}
                         ) AS scored
                         ORDER BY distance, key LIMIT $2"
                    ),
                    &parameters,
                )
                .await?
        } else {
            let order = format!("embedding {} {query_vector}", operator(spec.metric));
            let transaction = client.transaction().await?;
            let mut settings = format!("SET LOCAL hnsw.ef_search = {ef_search};");
            if needs_iteration {
                settings.push_str("SET LOCAL hnsw.iterative_scan = strict_order;");
            }
            transaction.batch_execute(&settings).await?;
            let rows = transaction
                .query(
                    &format!(
                        "SELECT key, event_us, {distance} AS distance FROM {table}
                         WHERE embedding IS NOT NULL {filter}
                         ORDER BY {order} LIMIT $2"
                    ),
                    &parameters,
                )
                .await?;
            transaction.commit().await?;
            rows
        };
        drop(client);
        rows.iter()
            .map(|row| {
                let distance: f64 = row.try_get(2)?;
                Ok(Neighbour {
                    key: EntityKey::from_bytes(row.try_get(0)?),
                    distance: distance as f32,
                    event_timestamp: Timestamp(row.try_get(1)?),
                })
            })
            .collect()
    }

    async fn try_remove(&self, state: &TableState, keys: &[EntityKey]) -> Result<u64, Failure> {
        let keys: Vec<&[u8]> = keys.iter().map(EntityKey::as_bytes).collect();
        let client = self.pool.get().await?;
        let removed = client
            .execute(
                &format!("DELETE FROM {} WHERE key = ANY($1::bytea[])", state.table),
                &[&keys],
            )
            .await?;
        Ok(removed)
    }

    async fn try_len(&self, state: &TableState) -> Result<u64, Failure> {
        let client = self.pool.get().await?;
        let count: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {} WHERE embedding IS NOT NULL",
                    state.table
                ),
                &[],
            )
            .await?
            .try_get(0)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn try_drop(&self, table: &FeatureViewId) -> Result<(), Failure> {
        let name = self.table_name(table);
        let mut client = self.pool.get().await?;
        let transaction = client.transaction().await?;
        transaction
            .execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK_KEY])
            .await?;
        transaction
            .batch_execute(&format!("DROP TABLE IF EXISTS {}", quote(&name)))
            .await?;
        transaction
            .execute(
                &format!("DELETE FROM {} WHERE name = $1", self.meta_table),
                &[&name],
            )
            .await?;
        transaction.commit().await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl VectorIndex for PgvectorIndex {
    fn backend_name(&self) -> &'static str {
        BACKEND_NAME
    }

    async fn prepare(
        &self,
        table: &FeatureViewId,
        options: VectorIndexOptions,
    ) -> Result<(), VectorIndexError> {
        let mut attempts = Attempts::default();
        loop {
            let failure = match self.try_prepare(table, options).await {
                Ok(()) => return Ok(()),
                Err(failure) => failure,
            };
            match self.after_failure(table, "prepare", failure, &mut attempts) {
                Next::Retry => {}
                Next::Missing => return Err(VectorIndexError::NotPrepared(table.clone())),
                Next::Fail(error) => return Err(error),
            }
        }
    }

    async fn upsert(
        &self,
        table: &FeatureViewId,
        entries: Vec<VectorEntry>,
    ) -> Result<UpsertSummary, VectorIndexError> {
        let mut attempts = Attempts::default();
        loop {
            let attempt = async {
                let state = self.table_state(table).await?;
                check_entries(&state.options, &entries)?;
                if entries.is_empty() {
                    return Ok(UpsertSummary::default());
                }
                self.try_upsert(&state, &entries).await
            };
            let failure = match attempt.await {
                Ok(summary) => return Ok(summary),
                Err(failure) => failure,
            };
            match self.after_failure(table, "upsert", failure, &mut attempts) {
                Next::Retry => {}
                Next::Missing => return Err(VectorIndexError::NotPrepared(table.clone())),
                Next::Fail(error) => return Err(error),
            }
        }
    }

    async fn remove(
        &self,
        table: &FeatureViewId,
        keys: &[EntityKey],
    ) -> Result<u64, VectorIndexError> {
        let mut attempts = Attempts::default();
        loop {
            let attempt = async {
                let state = self.table_state(table).await?;
                if keys.is_empty() {
                    return Ok(0);
                }
                self.try_remove(&state, keys).await
            };
            let failure = match attempt.await {
                Ok(removed) => return Ok(removed),
                Err(failure) => failure,
            };
            match self.after_failure(table, "remove", failure, &mut attempts) {
                Next::Retry => {}
                Next::Missing => return Ok(0),
                Next::Fail(error) => return Err(error),
            }
        }
    }

    async fn search(
        &self,
        table: &FeatureViewId,
        request: SearchRequest<'_>,
    ) -> Result<Vec<Neighbour>, VectorIndexError> {
        let mut attempts = Attempts::default();
        loop {
            let attempt = async {
                let state = self.table_state(table).await?;
                state
                    .options
                    .check_vector(request.query, "the query vector")?;
                if request.k == 0 {
                    return Ok(Vec::new());
                }
                self.try_search(&state, &request).await
            };
            let failure = match attempt.await {
                Ok(found) => return Ok(found),
                Err(failure) => failure,
            };
            match self.after_failure(table, "search", failure, &mut attempts) {
                Next::Retry => {}
                Next::Missing => return Err(VectorIndexError::NotPrepared(table.clone())),
                Next::Fail(error) => return Err(error),
            }
        }
    }

    async fn len(&self, table: &FeatureViewId) -> Result<u64, VectorIndexError> {
        let mut attempts = Attempts::default();
        loop {
            let attempt = async {
                let state = self.table_state(table).await?;
                self.try_len(&state).await
            };
            let failure = match attempt.await {
                Ok(count) => return Ok(count),
                Err(failure) => failure,
            };
            match self.after_failure(table, "len", failure, &mut attempts) {
                Next::Retry => {}
                Next::Missing => return Ok(0),
                Next::Fail(error) => return Err(error),
            }
        }
    }

    async fn drop_index(&self, table: &FeatureViewId) -> Result<(), VectorIndexError> {
        let mut attempts = Attempts::default();
        loop {
            let failure = match self.try_drop(table).await {
                Ok(()) => {
                    self.forget(table);
                    return Ok(());
                }
                Err(failure) => failure,
            };
            match self.after_failure(table, "drop", failure, &mut attempts) {
                Next::Retry => {}
                Next::Missing => return Ok(()),
                Next::Fail(error) => return Err(error),
            }
        }
    }
}

/// Why an attempt failed: a verdict already made, or a statement's error to classify.
#[derive(Debug)]
enum Failure {
    Index(VectorIndexError),
    Sql(tokio_postgres::Error),
}

impl From<VectorIndexError> for Failure {
    fn from(error: VectorIndexError) -> Self {
        Self::Index(error)
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Self {
        Self::Sql(error)
    }
}

/// What an operation did after a failed attempt.
#[derive(Debug, Default)]
struct Attempts {
    /// The table's settings were reloaded once.
    refreshed: bool,
    /// Deadlocks and serialization conflicts retried.
    conflicts: u32,
    /// A dead connection was replaced once.
    reconnected: bool,
}

/// The verdict on a failed attempt.
enum Next {
    Retry,
    /// The table does not exist (any more).
    Missing,
    Fail(VectorIndexError),
}

/// A fixed set of at most `size` connections, opened when first needed; one whose
/// connection died is dropped when it comes back, and a new one opened in its place.
struct Pool {
    config: Config,
    size: usize,
    /// `host:port/database`, for messages.
    target: String,
    /// Strings no message may contain (the password, as written in the URL and decoded).
    secrets: Vec<String>,
    idle: Mutex<Vec<Client>>,
    permits: Semaphore,
}

impl Pool {
    fn new(options: &PgvectorOptions) -> Result<Self, VectorIndexError> {
        let mut secrets: Vec<String> = Vec::new();
        if let Some((_, rest)) = options.url.split_once("://")
            && let Some((user_info, _)) = rest.rsplit_once('@')
            && let Some((_, password)) = user_info.split_once(':')
        {
            secrets.push(password.to_owned());
        }
        let parsed = options.url.parse::<Config>();
        if let Ok(config) = &parsed
            && let Some(password) = config.get_password()
        {
            secrets.push(String::from_utf8_lossy(password).into_owned());
        }
        secrets.retain(|secret| !secret.is_empty());
        let mut config = parsed.map_err(|error| VectorIndexError::Unavailable {
            backend: BACKEND_NAME,
            message: redact(
                &format!("the connection URL is invalid: {}", describe(&error)),
                &secrets,
            ),
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("larder");
        }
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(position, host)| {
                let host = match host {
                    Host::Tcp(name) => name.clone(),
                    Host::Unix(path) => path.display().to_string(),
                };
                match config
                    .get_ports()
                    .get(position)
                    .or(config.get_ports().first())
                {
                    Some(port) => format!("{host}:{port}"),
                    None => format!("{host}:5432"),
                }
            })
            .collect();
        let target = format!(
            "{}/{}",
            hosts.join(","),
            config.get_dbname().unwrap_or_default()
        );
        let size = options.pool_size.max(1);
        Ok(Self {
            config,
            size,
            target: redact(&target, &secrets),
            secrets,
            idle: Mutex::new(Vec::with_capacity(size)),
            permits: Semaphore::new(size),
        })
    }

    /// A connection: an idle one that is still open, or a new one.
    async fn get(&self) -> Result<PooledClient<'_>, VectorIndexError> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| VectorIndexError::Unavailable {
                backend: BACKEND_NAME,
                message: "the connection pool is closed".to_owned(),
            })?;
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            let mut reused = None;
            while let Some(client) = idle.pop() {
                if !client.is_closed() {
                    reused = Some(client);
                    break;
                }
            }
            reused
        };
        let client = match reused {
            Some(client) => client,
            None => self.open().await?,
        };
        Ok(PooledClient {
            pool: self,
            client: Some(client),
            _permit: permit,
        })
    }

    async fn open(&self) -> Result<Client, VectorIndexError> {
        let (client, connection) =
            self.config.connect(NoTls).await.map_err(|error| {
                self.failed(&format!("cannot connect to {}", self.target), &error)
            })?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "a pgvector connection closed");
            }
        });
        Ok(client)
    }

    /// An [`VectorIndexError::Unavailable`] for a failed statement, without secrets.
    fn failed(&self, what: &str, error: &tokio_postgres::Error) -> VectorIndexError {
        VectorIndexError::Unavailable {
            backend: BACKEND_NAME,
            message: redact(&format!("{what}: {}", describe(error)), &self.secrets),
        }
    }
}

/// A connection borrowed from the pool; it goes back when dropped, unless it is closed.
struct PooledClient<'a> {
    pool: &'a Pool,
    client: Option<Client>,
    _permit: SemaphorePermit<'a>,
}

impl std::ops::Deref for PooledClient<'_> {
    type Target = Client;

    fn deref(&self) -> &Client {
        match &self.client {
            Some(client) => client,
            None => unreachable!("a pooled client is present until dropped"),
        }
    }
}

impl std::ops::DerefMut for PooledClient<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        match &mut self.client {
            Some(client) => client,
            None => unreachable!("a pooled client is present until dropped"),
        }
    }
}

impl Drop for PooledClient<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && !client.is_closed()
        {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(client);
        }
    }
}

/// One key's entries of an upsert call: the surviving entry and the event times of every
/// entry that replaced the one before it in call order (nondecreasing, the survivor's last).
struct Chain<'a> {
    winner: &'a VectorEntry,
    event_times: Vec<i64>,
}

/// Applies entries per key in call order (an entry older than the key's previous survivor is
/// skipped), as `larder_vector`'s `newest_per_key` does before it looks at the stored entry.
fn collapse(entries: &[VectorEntry]) -> (HashMap<&EntityKey, Chain<'_>>, UpsertSummary) {
    let mut summary = UpsertSummary::default();
    let mut chains: HashMap<&EntityKey, Chain<'_>> = HashMap::with_capacity(entries.len());
    for entry in entries {
        let event_time = entry.event_timestamp.as_micros();
        match chains.get_mut(&entry.key) {
            Some(chain) if chain.winner.event_timestamp > entry.event_timestamp => {
                summary.skipped_stale += 1;
            }
            Some(chain) => {
                chain.winner = entry;
                chain.event_times.push(event_time);
            }
            None => {
                chains.insert(
                    &entry.key,
                    Chain {
                        winner: entry,
                        event_times: vec![event_time],
                    },
                );
            }
        }
    }
    (chains, summary)
}

/// The feature's settings from a meta table row.
fn feature_from_row(row: &tokio_postgres::Row) -> Result<IndexedFeature, Failure> {
    let number = |column: usize| -> Result<u32, Failure> {
        let value: i32 = row.try_get(column)?;
        u32::try_from(value).map_err(|_| corrupt(format!("negative setting {value}")))
    };
    let metric_name: String = row.try_get(1)?;
    let metric = VectorMetric::parse(&metric_name)
        .ok_or_else(|| corrupt(format!("unknown metric '{metric_name}' in the meta table")))?;
    Ok(IndexedFeature {
        position: number(5)? as usize,
        dimension: number(0)?,
        spec: VectorIndexSpec {
            metric,
            connectivity: number(2)?,
            expansion_add: number(3)?,
            expansion_search: number(4)?,
        },
    })
}

fn corrupt(message: String) -> Failure {
    Failure::Index(VectorIndexError::Corrupt {
        backend: BACKEND_NAME,
        message,
    })
}

/// pgvector's text form of a vector, `[1e0,2.5e-1]` (each component's shortest form that
/// reads back as the same `f32`).
fn vector_text(vector: &[f32]) -> String {
    let mut text = String::with_capacity(2 + vector.len() * 12);
    text.push('[');
    for (position, component) in vector.iter().enumerate() {
        if position > 0 {
            text.push(',');
        }
        text.push_str(&format!("{component:e}"));
    }
    text.push(']');
    text
}

/// The distance operator the HNSW index orders by.
fn operator(metric: VectorMetric) -> &'static str {
    match metric {
        VectorMetric::Cosine => "<=>",
        VectorMetric::Dot => "<#>",
        VectorMetric::L2 => "<->",
    }
}

/// The HNSW operator class of a metric.
fn operator_class(metric: VectorMetric) -> &'static str {
    match metric {
        VectorMetric::Cosine => "vector_cosine_ops",
        VectorMetric::Dot => "vector_ip_ops",
        VectorMetric::L2 => "vector_l2_ops",
    }
}

/// Whether a pgvector version (`0.8.1`) has iterative index scans (0.8 and later).
fn has_iterative_scans(version: &str) -> bool {
    let mut parts = version
        .split('.')
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= (0, 8)
}

/// A name PostgreSQL keeps whole: `name` itself when it fits in 63 bytes, else its start and
/// a hash of all of it (NUL bytes, which identifiers cannot hold, become `_`).
fn identifier(name: &str) -> String {
    let name = name.replace('\0', "_");
    if name.len() <= MAX_IDENTIFIER_BYTES {
        return name;
    }
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let mut cut = MAX_IDENTIFIER_BYTES - 17;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}_{hash:016x}", &name[..cut])
}

/// A quoted identifier.
fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// An error with its causes (the server's message and SQLSTATE for a server error).
fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut message = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            message.push_str(&format!(" ({detail})"));
        }
        return message;
    }
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}

/// `message` with every secret replaced by `<redacted>`.
fn redact(message: &str, secrets: &[String]) -> String {
    secrets.iter().fold(message.to_owned(), |message, secret| {
        message.replace(secret.as_str(), "<redacted>")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_cut_and_hashed_within_63_bytes() {
        assert_eq!(identifier("larder_items@v1"), "larder_items@v1");
        let long = format!("larder_{}@v1", "é".repeat(40));
        let cut = identifier(&long);
        assert!(cut.len() <= MAX_IDENTIFIER_BYTES, "{cut}");
        assert_ne!(cut, identifier(&format!("larder_{}@v2", "é".repeat(40))));
        assert_eq!(cut, identifier(&long));
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn vectors_are_written_in_a_form_that_reads_back_exactly() {
        assert_eq!(vector_text(&[1.0, -0.25, 3e-7]), "[1e0,-2.5e-1,3e-7]");
        for component in [0.1f32, f32::MAX, f32::MIN_POSITIVE, 1.0e-40, -7.123_456_7] {
            let text = format!("{component:e}");
            assert_eq!(text.parse::<f32>().ok(), Some(component));
        }
    }

    #[test]
    fn entries_of_one_key_collapse_in_call_order() {
        let entry = |seconds: i64| VectorEntry {
            key: EntityKey::from_int(1),
            event_timestamp: Timestamp::from_seconds(seconds),
            vector: None,
        };
        let entries = vec![entry(10), entry(30), entry(20), entry(30)];
        let (chains, summary) = collapse(&entries);
        assert_eq!(summary.skipped_stale, 1);
        let chain = &chains[&EntityKey::from_int(1)];
        assert_eq!(chain.event_times, vec![10_000_000, 30_000_000, 30_000_000]);
        assert!(std::ptr::eq(chain.winner, &entries[3]));
    }

    #[test]
    fn messages_never_hold_the_password() {
        let pool = Pool::new(&PgvectorOptions {
            url: "postgres://app:s%40cret@db.example:5433/features".to_owned(),
            table_prefix: "larder_".to_owned(),
            pool_size: 2,
        })
        .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(pool.target, "db.example:5433/features");
        assert_eq!(
            redact("x s%40cret y s@cret", &pool.secrets),
            "x <redacted> y <redacted>"
        );
        let invalid = Pool::new(&PgvectorOptions {
            url: "postgres://app:s3cret@db.example:notaport/features".to_owned(),
            table_prefix: String::new(),
            pool_size: 1,
        });
        let message = invalid
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(
            message.contains("invalid") && !message.contains("s3cret"),
            "{message}"
        );
        assert!(has_iterative_scans("0.8.0") && has_iterative_scans("1.0"));
        assert!(!has_iterative_scans("0.7.4"));
    }
}
