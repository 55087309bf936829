//! The Redis / Valkey online store, standalone or Cluster.
//!
//! # Layout
//!
//! One Redis **string** per (feature view version, entity):
//!
//! ```text
//! key   = {key_prefix}{view}@{version}:{entity key bytes}
//! value = event time (8 bytes, big-endian, sign bit flipped) | write time (8 bytes, same)
//!         | lane (1 byte) | values (larder row codec)
//! ```
//!
//! A whole row is one compact binary value: no field names at all (DoorDash's point about
//! hashed field names, taken to its end), one `MGET` reads a whole request, and the row is
//! decoded once, as on the embedded store. BENCHMARKS.md ("Redis and DynamoDB online stores")
//! compares this with a hash per entity (header and values as two fields), measured with
//! `MEMORY USAGE` and read throughput. Keys carry no hash tag, so Redis Cluster spreads the
//! rows of a view across every node by entity.
//!
//! # Guarantees
//!
//! * **Event-time ordering, atomically per key.** Every write runs one Lua script per key
//!   (`EVALSHA`) that compares the stored event time with each incoming row's, byte by byte
//!   (the big-endian, sign-flipped encoding orders like the integers), and writes only rows
//!   that are not older. Redis runs a script atomically, so two writers never race between the
//!   read and the write.
//! * **Server-side expiry.** A table prepared with a TTL writes each row with `SET … PXAT`
//!   at [`TableOptions::expire_at`]; without a TTL, rows never expire.
//! * **Reads** are one `MGET` per request (standalone); on a cluster, one `MGET` per slot, all
//!   in flight at once over one multiplexed connection per node, so a request costs about one
//!   round trip per node.
//! * **Failures.** Connection errors and timeouts are [`OnlineStoreError::Unavailable`] naming
//!   the `redis` backend (serving answers 503); the connections reconnect by themselves when the
//!   server returns, and after such errors a cluster connection is replaced by a fresh one
//!   (`ReplaceableCluster`), so the store follows a failover. A write returns `Ok` only after
//!   every key's script has returned.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use larder_core::{EntityKey, FeatureViewId, Timestamp, WriteLane};
use larder_online::{
    OnlineRow, OnlineStore, OnlineStoreError, RowSwap, TableOptions, WriteDurability, WriteSummary,
};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo, Slot};
use redis::{Cmd, RedisError, RedisFuture, Value};

/// The backend name in errors and metrics.
const BACKEND_NAME: &str = "redis";

/// Length of the header stored before the encoded values of every row.
const STORED_ROW_HEADER_LENGTH: usize = 17;

/// Most key scripts of one write batch in flight at once (pipelined on the connection).
const MAX_SCRIPTS_IN_FLIGHT: usize = 512;

/// Keys deleted per `UNLINK` when dropping a table.
const KEYS_PER_UNLINK: usize = 500;

/// Least time between two replacements of a cluster connection.
const CLUSTER_REPLACEMENT_INTERVAL: Duration = Duration::from_secs(1);

/// The compare-and-write script. `KEYS[1]` is the row's key; `ARGV` holds pairs of (expiry
/// instant in Unix milliseconds, or `0` for none; stored value). It applies the pairs in order,
/// each only if its event time (the first 8 bytes, ordered bytewise) is not older than the
/// stored one, writes the last applied value once, and returns how many pairs it applied.
const COMPARE_AND_WRITE_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[1])
local applied = 0
local applied_value = nil
local applied_expiry = nil
for index = 1, #ARGV, 2 do
  local incoming = ARGV[index + 1]
  local older = false
  if current then
    for position = 1, 8 do
      local stored_byte = string.byte(current, position)
      local incoming_byte = string.byte(incoming, position)
      if stored_byte ~= incoming_byte then
        older = incoming_byte < stored_byte
        break
      end
    end
  end
  if not older then
    current = incoming
    applied = applied + 1
    applied_value = incoming
    applied_expiry = ARGV[index]
  end
end
if applied_value then
  if applied_expiry ~= '0' then
    redis.call('SET', KEYS[1], applied_value, 'PXAT', applied_expiry)
  else
    redis.call('SET', KEYS[1], applied_value)
  end
end
return applied
";

/// The compare-and-swap script. `KEYS[1]` is the row's key; `ARGV[1]` the stored value the
/// writer expects (empty: no row), `ARGV[2]` the expiry instant in Unix milliseconds (`0`:
/// none), `ARGV[3]` the new stored value. Returns 1 if it wrote, 0 if the key held another
/// value.
const COMPARE_AND_SWAP_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[1] then
  return 0
end
if ARGV[2] ~= '0' then
  redis.call('SET', KEYS[1], ARGV[3], 'PXAT', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[3])
end
return 1
";

/// How to reach Redis: the runtime form of the `redis` online store configuration.
#[derive(Clone)]
pub struct RedisOnlineStoreOptions {
    /// Server URLs (`redis://[user:password@]host:port[/db]`, `rediss://` for TLS is not
    /// built in). Standalone: the first is used. Cluster: any subset of the nodes (seeds).
    pub urls: Vec<String>,
    /// Whether the URLs name Redis Cluster nodes.
    pub cluster: bool,
    /// Multiplexed connections per standalone server, used round-robin. A cluster keeps one
    /// multiplexed connection per node.
    pub pool_size: usize,
    /// Prefix of every key, so that several projects can share a server.
    pub key_prefix: String,
    /// Username for `AUTH`, if not in the URLs.
    pub username: Option<String>,
    /// Password for `AUTH`, if not in the URLs. Never logged.
    pub password: Option<String>,
    /// How long connecting may take.
    pub connection_timeout: Duration,
    /// How long one command may take before the request fails as unavailable.
    pub response_timeout: Duration,
}

impl Default for RedisOnlineStoreOptions {
    fn default() -> Self {
        Self {
            urls: vec!["redis://127.0.0.1:6379".to_string()],
            cluster: false,
            pool_size: 4,
            key_prefix: "larder:".to_string(),
            username: None,
            password: None,
            connection_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
        }
    }
}

impl fmt::Debug for RedisOnlineStoreOptions {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted_urls: Vec<String> = self.urls.iter().map(|url| redact_url(url)).collect();
        formatter
            .debug_struct("RedisOnlineStoreOptions")
            .field("urls", &redacted_urls)
            .field("cluster", &self.cluster)
            .field("pool_size", &self.pool_size)
            .field("key_prefix", &self.key_prefix)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("connection_timeout", &self.connection_timeout)
            .field("response_timeout", &self.response_timeout)
            .finish()
    }
}

/// A URL with its password replaced by `<redacted>`, for logs and messages (the one
/// redaction of [`larder_core::secret`]).
pub use larder_core::secret::redact_url_password as redact_url;

/// The connections of a store: a pool of self-reconnecting connections to one server, or a
/// cluster connection (one multiplexed connection per node, following slot moves).
#[derive(Clone)]
enum RedisConnection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Standalone(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Standalone(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Standalone(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

/// Where a store's connections come from.
enum Connections {
    /// Self-reconnecting connections to one server, used round-robin (at least one).
    Standalone(Vec<ConnectionManager>),
    /// The cluster connection, replaced after failures.
    Cluster(Arc<ReplaceableCluster>),
}

/// A cluster connection that the store replaces with a fresh one after `Unavailable` errors.
///
/// redis-rs 1.8 can wedge a cluster connection for good when a node dies under concurrent
/// requests: its topology recovery waits forever for a lock whose permits went to requests it
/// no longer polls, so every later command times out, even once a replica has taken over (seen
/// in `tests/failures.rs`). After an `Unavailable` error the store therefore connects again
/// from the seed URLs, in the background and at most once per
/// [`CLUSTER_REPLACEMENT_INTERVAL`], and swaps the new connection in (reading the topology
/// afresh). The old connection's task stops when its last in-flight request ends.
struct ReplaceableCluster {
    client: ClusterClient,
    current: RwLock<ClusterConnection>,
    /// When the last replacement started.
    last_replacement: Mutex<Option<Instant>>,
    /// How long connecting again may take.
    replacement_timeout: Duration,
}

impl ReplaceableCluster {
    fn connection(&self) -> ClusterConnection {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Starts connecting again in the background, unless a replacement started less than
    /// [`CLUSTER_REPLACEMENT_INTERVAL`] ago (or no Tokio runtime is running).
    fn replace_soon(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        {
            let mut last_replacement = self
                .last_replacement
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last_replacement
                .is_some_and(|started| started.elapsed() < CLUSTER_REPLACEMENT_INTERVAL)
            {
                return;
            }
            *last_replacement = Some(Instant::now());
        }
        let cluster = Arc::clone(self);
        runtime.spawn(async move {
            let connected = tokio::time::timeout(
                cluster.replacement_timeout,
                cluster.client.get_async_connection(),
            )
            .await;
            // On failure the old connection stays; the next error tries again.
            if let Ok(Ok(connection)) = connected {
                *cluster
                    .current
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = connection;
            }
        });
    }
}

/// An online store on Redis or Valkey (standalone or Cluster); see the crate docs.
pub struct RedisOnlineStore {
    connections: Connections,
    next_connection: AtomicUsize,
    options: RedisOnlineStoreOptions,
    script: redis::Script,
    /// The compare-and-swap script, for partial updates.
    swap_script: redis::Script,
    table_options: RwLock<HashMap<FeatureViewId, TableOptions>>,
}

impl fmt::Debug for RedisOnlineStore {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("RedisOnlineStore")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl RedisOnlineStore {
    /// Connects (every pooled connection, or the cluster) and checks the server with `PING`.
    ///
    /// Returns [`OnlineStoreError::Unavailable`] when the server cannot be reached, and
    /// [`OnlineStoreError::Internal`] for malformed options.
    pub async fn connect(options: RedisOnlineStoreOptions) -> Result<Self, OnlineStoreError> {
        if options.urls.is_empty() {
            return Err(internal("no redis URL configured".to_string()));
        }
        let connections = if options.cluster {
            let (client, connection) = connect_cluster(&options).await?;
            Connections::Cluster(Arc::new(ReplaceableCluster {
                client,
                current: RwLock::new(connection),
                last_replacement: Mutex::new(None),
                replacement_timeout: (options.connection_timeout + options.response_timeout) * 3,
            }))
        } else {
            let mut pool = Vec::with_capacity(options.pool_size.max(1));
            for _ in 0..options.pool_size.max(1) {
                pool.push(connect_standalone(&options).await?);
            }
            Connections::Standalone(pool)
        };
        let store = Self {
            connections,
            next_connection: AtomicUsize::new(0),
            options,
            script: redis::Script::new(COMPARE_AND_WRITE_SCRIPT),
            swap_script: redis::Script::new(COMPARE_AND_SWAP_SCRIPT),
            table_options: RwLock::new(HashMap::new()),
        };
        let _: String = redis::cmd("PING")
            .query_async(&mut store.connection())
            .await
            .map_err(|error| store.map_error("ping", &error))?;
        Ok(store)
    }

    /// The options it was connected with.
    pub fn options(&self) -> &RedisOnlineStoreOptions {
        &self.options
    }

    /// The Redis key of one row.
    pub fn row_key(&self, table: &FeatureViewId, entity_key: &EntityKey) -> Vec<u8> {
        let mut key = self.table_key_prefix(table);
        key.extend_from_slice(entity_key.as_bytes());
        key
    }

    /// The prefix of every key of a table.
    fn table_key_prefix(&self, table: &FeatureViewId) -> Vec<u8> {
        format!(
            "{}{}@{}:",
            self.options.key_prefix, table.name, table.version
        )
        .into_bytes()
    }

    /// The next connection of the pool, or the current cluster connection.
    fn connection(&self) -> RedisConnection {
        match &self.connections {
            Connections::Standalone(pool) => {
                let index = self.next_connection.fetch_add(1, Ordering::Relaxed) % pool.len();
                RedisConnection::Standalone(pool[index].clone())
            }
            Connections::Cluster(cluster) => RedisConnection::Cluster(cluster.connection()),
        }
    }

    fn options_of(&self, table: &FeatureViewId) -> TableOptions {
        self.table_options
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(table)
            .copied()
            .unwrap_or_default()
    }

    fn map_error(&self, operation: &str, error: &RedisError) -> OnlineStoreError {
        let mapped = map_redis_error(operation, error);
        self.note_failure(&mapped);
        mapped
    }

    /// After an `Unavailable` error on a cluster, gets a fresh cluster connection going.
    fn note_failure(&self, error: &OnlineStoreError) {
        if let (Connections::Cluster(cluster), OnlineStoreError::Unavailable { .. }) =
            (&self.connections, error)
        {
            cluster.replace_soon();
        }
    }

    /// The stored values of `row_keys` on a cluster: one `MGET` per slot, all in flight at once.
    /// (The client's own split of a multi-slot `MGET` fails with a client-side "mismatch"
    /// error when a node is missing, which does not say the cluster is unavailable.)
    async fn read_cluster(
        &self,
        connection: ClusterConnection,
        row_keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, OnlineStoreError> {
        let mut positions_by_slot: HashMap<Slot, Vec<usize>> = HashMap::new();
        for (position, key) in row_keys.iter().enumerate() {
            positions_by_slot
                .entry(Slot::for_key(key))
                .or_default()
                .push(position);
        }
        let mut parts = futures::stream::iter(positions_by_slot.into_values())
            .map(|positions| {
                let mut connection = connection.clone();
                let mut command = redis::cmd("MGET");
                for position in &positions {
                    command.arg(&row_keys[*position]);
                }
                async move {
                    let values: Vec<Option<Vec<u8>>> =
                        command
                            .query_async(&mut connection)
                            .await
                            .map_err(|error| self.map_error("read", &error))?;
                    Ok::<_, OnlineStoreError>((positions, values))
                }
            })
            .buffer_unordered(MAX_SCRIPTS_IN_FLIGHT);
        let mut stored_values = vec![None; row_keys.len()];
        while let Some((positions, values)) = parts.try_next().await? {
            if values.len() != positions.len() {
                return Err(internal(format!(
                    "MGET of {} keys returned {} values",
                    positions.len(),
                    values.len()
                )));
            }
            for (position, value) in positions.into_iter().zip(values) {
                stored_values[position] = value;
            }
        }
        Ok(stored_values)
    }

    /// Runs one `EVALSHA` of the compare-and-write script (see [`Self::run_script`]).
    async fn run_compare_and_write(
        &self,
        command: Cmd,
        connection: RedisConnection,
    ) -> Result<u64, OnlineStoreError> {
        self.run_script(command, COMPARE_AND_WRITE_SCRIPT, connection)
            .await
    }

    /// Runs one `EVALSHA` of `script_source`; when the server does not know the script (a
    /// restarted server, a new node), loads it and runs the call again. A call that failed
    /// with `NOSCRIPT` applied nothing, so running it again is exact.
    async fn run_script(
        &self,
        command: Cmd,
        script_source: &str,
        mut connection: RedisConnection,
    ) -> Result<u64, OnlineStoreError> {
        match command.query_async::<u64>(&mut connection).await {
            Ok(applied) => Ok(applied),
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                let mut load = redis::cmd("SCRIPT");
                load.arg("LOAD").arg(script_source);
                let _: String = load
                    .query_async(&mut connection)
                    .await
                    .map_err(|error| self.map_error("script load", &error))?;
                command
                    .query_async::<u64>(&mut connection)
                    .await
                    .map_err(|error| self.map_error("write", &error))
            }
            Err(error) => Err(self.map_error("write", &error)),
        }
    }

    /// The addresses (`host`, `port`) of every master of the cluster.
    async fn cluster_master_addresses(
        &self,
        connection: &mut ClusterConnection,
    ) -> Result<Vec<(String, u16)>, OnlineStoreError> {
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(connection)
            .await
            .map_err(|error| self.map_error("cluster nodes", &error))?;
        Ok(parse_cluster_master_addresses(&nodes))
    }

    /// Deletes every key matching `pattern` on one node (or the standalone server), with
    /// `SCAN` and `UNLINK`.
    async fn delete_matching_keys(
        &self,
        pattern: &[u8],
        node: Option<(String, u16)>,
    ) -> Result<(), OnlineStoreError> {
        let mut connection = self.connection();
        let mut cursor: u64 = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1_000);
            let (next_cursor, keys): (u64, Vec<Vec<u8>>) =
                query_on_node(&mut connection, scan, node.as_ref())
                    .await
                    .inspect_err(|error| self.note_failure(error))?;
            for chunk in keys.chunks(KEYS_PER_UNLINK) {
                for key in chunk {
                    // One key per UNLINK keeps every command within one slot on a cluster.
                    let mut unlink = redis::cmd("UNLINK");
                    unlink.arg(key);
                    let _: i64 = query_on_node(&mut connection, unlink, None)
                        .await
                        .inspect_err(|error| self.note_failure(error))?;
                }
            }
            if next_cursor == 0 {
                return Ok(());
            }
            cursor = next_cursor;
        }
    }
}

/// Sends `command` to one node of a cluster (by address), or as usual when `node` is `None`.
async fn query_on_node<Output: redis::FromRedisValue>(
    connection: &mut RedisConnection,
    command: Cmd,
    node: Option<&(String, u16)>,
) -> Result<Output, OnlineStoreError> {
    let value = match (connection, node) {
        (RedisConnection::Cluster(cluster), Some((host, port))) => cluster
            .route_command(
                command,
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                }),
            )
            .await
            .map_err(|error| map_redis_error("scan", &error))?,
        (connection, _) => command
            .query_async::<Value>(connection)
            .await
            .map_err(|error| map_redis_error("command", &error))?,
    };
    redis::from_redis_value(value).map_err(|error| internal(format!("unexpected reply: {error}")))
}

/// The `host:port` of every master line of `CLUSTER NODES` that is not failed.
fn parse_cluster_master_addresses(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _node_id = fields.next()?;
            let address = fields.next()?;
            let flags = fields.next()?;
            if !flags.split(',').any(|flag| flag == "master")
                || flags.split(',').any(|flag| flag == "fail")
            {
                return None;
            }
            let host_and_port = address.split('@').next()?;
            let (host, port) = host_and_port.rsplit_once(':')?;
            Some((host.to_string(), port.parse().ok()?))
        })
        .collect()
}

async fn connect_standalone(
    options: &RedisOnlineStoreOptions,
) -> Result<ConnectionManager, OnlineStoreError> {
    let mut connection_info = redis::IntoConnectionInfo::into_connection_info(
        options.urls[0].as_str(),
    )
    .map_err(|error| {
        internal(format!(
            "invalid redis URL '{}': {error}",
            redact_url(&options.urls[0])
        ))
    })?;
    connection_info = apply_credentials(connection_info, options);
    let client = redis::Client::open(connection_info).map_err(|error| {
        internal(format!(
            "invalid redis URL '{}': {error}",
            redact_url(&options.urls[0])
        ))
    })?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(options.connection_timeout))
        .set_response_timeout(Some(options.response_timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    client
        .get_connection_manager_with_config(config)
        .await
        .map_err(|error| map_redis_error("connect", &error))
}

async fn connect_cluster(
    options: &RedisOnlineStoreOptions,
) -> Result<(ClusterClient, ClusterConnection), OnlineStoreError> {
    let mut builder = redis::cluster::ClusterClientBuilder::new(options.urls.clone())
        .connection_timeout(options.connection_timeout)
        .response_timeout(options.response_timeout)
        .retries(2);
    if let Some(username) = &options.username {
        builder = builder.username(username);
    }
    if let Some(password) = &options.password {
        builder = builder.password(password);
    }
    let client = builder
        .build()
        .map_err(|error| internal(format!("invalid redis cluster configuration: {error}")))?;
    let connection = client
        .get_async_connection()
        .await
        .map_err(|error| map_redis_error("connect to the cluster", &error))?;
    Ok((client, connection))
}

fn apply_credentials(
    connection_info: redis::ConnectionInfo,
    options: &RedisOnlineStoreOptions,
) -> redis::ConnectionInfo {
    let mut settings = connection_info.redis_settings().clone();
    if let Some(username) = &options.username {
        settings = settings.set_username(username);
    }
    if let Some(password) = &options.password {
        settings = settings.set_password(password);
    }
    connection_info.set_redis_settings(settings)
}

fn internal(message: String) -> OnlineStoreError {
    OnlineStoreError::Internal {
        backend: BACKEND_NAME,
        message,
    }
}

/// Connection trouble, timeouts and a cluster that is down or moving are `Unavailable`
/// (retrying later may work); anything else is `Internal`. Messages never hold credentials.
fn map_redis_error(operation: &str, error: &RedisError) -> OnlineStoreError {
    use redis::{ErrorKind, ServerErrorKind};
    let unavailable = error.is_io_error()
        || error.is_timeout()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
        || error.is_cluster_error()
        || matches!(
            error.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::AuthenticationFailed
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
        );
    let message = format!("{operation} failed: {error}");
    if unavailable {
        OnlineStoreError::Unavailable {
            backend: BACKEND_NAME,
            message,
        }
    } else {
        internal(message)
    }
}

/// A timestamp as 8 bytes that order like the integers: big-endian with the sign bit flipped.
fn ordered_timestamp_bytes(timestamp: Timestamp) -> [u8; 8] {
    ((timestamp.as_micros() as u64) ^ (1 << 63)).to_be_bytes()
}

fn timestamp_from_ordered_bytes(bytes: [u8; 8]) -> Timestamp {
    Timestamp((u64::from_be_bytes(bytes) ^ (1 << 63)) as i64)
}

/// The stored value of a row: header, then the encoded values.
fn encode_stored_row(row: &OnlineRow) -> Vec<u8> {
    let mut stored = Vec::with_capacity(STORED_ROW_HEADER_LENGTH + row.values.len());
    stored.extend_from_slice(&ordered_timestamp_bytes(row.event_timestamp));
    stored.extend_from_slice(&ordered_timestamp_bytes(row.write_timestamp));
    stored.push(row.lane.code());
    stored.extend_from_slice(&row.values);
    stored
}

/// Decodes a stored value back into the row of `entity_key`.
fn decode_stored_row(
    entity_key: EntityKey,
    mut stored: Vec<u8>,
) -> Result<OnlineRow, OnlineStoreError> {
    let corrupt = |message: String| OnlineStoreError::Corrupt {
        backend: BACKEND_NAME,
        message,
    };
    let Some(header) = stored.first_chunk::<STORED_ROW_HEADER_LENGTH>() else {
        return Err(corrupt(format!(
            "a stored row of key {entity_key} has {} bytes, fewer than its {STORED_ROW_HEADER_LENGTH}-byte header",
            stored.len()
        )));
    };
    let mut event_bytes = [0u8; 8];
    event_bytes.copy_from_slice(&header[0..8]);
    let mut write_bytes = [0u8; 8];
    write_bytes.copy_from_slice(&header[8..16]);
    let lane_code = header[16];
    let lane = WriteLane::from_code(lane_code).ok_or_else(|| {
        corrupt(format!(
            "a stored row of key {entity_key} has unknown lane code {lane_code}"
        ))
    })?;
    // The values stay in the reply's buffer: shift them over the header instead of copying.
    stored.drain(..STORED_ROW_HEADER_LENGTH);
    Ok(OnlineRow {
        entity_key,
        event_timestamp: timestamp_from_ordered_bytes(event_bytes),
        write_timestamp: timestamp_from_ordered_bytes(write_bytes),
        lane,
        values: stored,
    })
}

/// Escapes the glob characters of a `SCAN MATCH` pattern.
fn escape_glob(text: &[u8]) -> Vec<u8> {
    let mut escaped = Vec::with_capacity(text.len() + 2);
    for byte in text {
        if matches!(byte, b'*' | b'?' | b'[' | b']' | b'\\') {
            escaped.push(b'\\');
        }
        escaped.push(*byte);
    }
    escaped
}

#[async_trait::async_trait]
impl OnlineStore for RedisOnlineStore {
    fn backend_name(&self) -> &'static str {
        BACKEND_NAME
    }

    async fn prepare_table(
        &self,
        table: &FeatureViewId,
        options: TableOptions,
    ) -> Result<(), OnlineStoreError> {
        self.table_options
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(table.clone(), options);
        Ok(())
    }

    async fn write_rows_with(
        &self,
        table: &FeatureViewId,
        rows: Vec<OnlineRow>,
        _durability: WriteDurability,
    ) -> Result<WriteSummary, OnlineStoreError> {
        // Redis's own persistence settings decide durability; there is no fsync to defer.
        if rows.is_empty() {
            return Ok(WriteSummary::default());
        }
        let table_options = self.options_of(table);
        let row_count = rows.len() as u64;
        // Rows of one key go to one script call, in batch order, so they apply in order.
        let script_hash = self.script.get_hash().to_string();
        let (group_of_row, group_count) = larder_online::group_rows_by_key(&rows);
        let mut commands: Vec<Option<Cmd>> = (0..group_count).map(|_| None).collect();
        for (row, group) in rows.iter().zip(group_of_row) {
            let expiry_millis = table_options
                .expire_at(row)
                .map_or(0, |instant| instant.as_micros().div_euclid(1_000).max(1));
            let Some(slot) = commands.get_mut(group) else {
                continue;
            };
            slot.get_or_insert_with(|| {
                let mut command = redis::cmd("EVALSHA");
                command
                    .arg(&script_hash)
                    .arg(1)
                    .arg(self.row_key(table, &row.entity_key));
                command
            })
            .arg(expiry_millis)
            .arg(encode_stored_row(row));
        }
        let commands: Vec<Cmd> = commands.into_iter().flatten().collect();
        let connection = self.connection();
        // Every script call of the batch is in flight at once on one multiplexed connection
        // (per node), so the batch is pipelined.
        let written: u64 = futures::stream::iter(commands)
            .map(|command| {
                let connection = connection.clone();
                self.run_compare_and_write(command, connection)
            })
            .buffer_unordered(MAX_SCRIPTS_IN_FLIGHT)
            .try_fold(0u64, |total, applied| async move { Ok(total + applied) })
            .await?;
        Ok(WriteSummary {
            written,
            skipped_stale: row_count - written,
        })
    }

    async fn sync(&self) -> Result<(), OnlineStoreError> {
        Ok(())
    }

    async fn swap_rows(
        &self,
        table: &FeatureViewId,
        swaps: Vec<RowSwap>,
    ) -> Result<Vec<bool>, OnlineStoreError> {
        let table_options = self.options_of(table);
        let script_hash = self.swap_script.get_hash().to_string();
        let connection = self.connection();
        let commands: Vec<Cmd> = swaps
            .iter()
            .map(|swap| {
                let expiry_millis = table_options
                    .expire_at(&swap.row)
                    .map_or(0, |instant| instant.as_micros().div_euclid(1_000).max(1));
                let mut command = redis::cmd("EVALSHA");
                command
                    .arg(&script_hash)
                    .arg(1)
                    .arg(self.row_key(table, &swap.row.entity_key))
                    .arg(
                        swap.expected
                            .as_ref()
                            .map(encode_stored_row)
                            .unwrap_or_default(),
                    )
                    .arg(expiry_millis)
                    .arg(encode_stored_row(&swap.row));
                command
            })
            .collect();
        futures::stream::iter(commands)
            .map(|command| {
                let connection = connection.clone();
                async move {
                    self.run_script(command, COMPARE_AND_SWAP_SCRIPT, connection)
                        .await
                        .map(|applied| applied == 1)
                }
            })
            .buffered(MAX_SCRIPTS_IN_FLIGHT)
            .try_collect()
            .await
    }

    async fn read_rows(
        &self,
        table: &FeatureViewId,
        keys: &[EntityKey],
    ) -> Result<Vec<Option<OnlineRow>>, OnlineStoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let stored_values: Vec<Option<Vec<u8>>> = match self.connection() {
            RedisConnection::Cluster(connection) => {
                let row_keys: Vec<Vec<u8>> =
                    keys.iter().map(|key| self.row_key(table, key)).collect();
                self.read_cluster(connection, &row_keys).await?
            }
            mut connection => {
                let mut command = redis::cmd("MGET");
                for key in keys {
                    command.arg(self.row_key(table, key));
                }
                command
                    .query_async(&mut connection)
                    .await
                    .map_err(|error| self.map_error("read", &error))?
            }
        };
        if stored_values.len() != keys.len() {
            return Err(internal(format!(
                "MGET of {} keys returned {} values",
                keys.len(),
                stored_values.len()
            )));
        }
        keys.iter()
            .zip(stored_values)
            .map(|(key, stored)| {
                stored
                    .map(|stored| decode_stored_row(key.clone(), stored))
                    .transpose()
            })
            .collect()
    }

    async fn delete_rows(
        &self,
        table: &FeatureViewId,
        keys: &[EntityKey],
    ) -> Result<u64, OnlineStoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut unique_keys: Vec<Vec<u8>> =
            keys.iter().map(|key| self.row_key(table, key)).collect();
        unique_keys.sort();
        unique_keys.dedup();
        let connection = self.connection();
        futures::stream::iter(unique_keys)
            .map(|key| {
                let mut connection = connection.clone();
                async move {
                    redis::cmd("DEL")
                        .arg(key)
                        .query_async::<u64>(&mut connection)
                        .await
                        .map_err(|error| self.map_error("delete", &error))
                }
            })
            .buffer_unordered(MAX_SCRIPTS_IN_FLIGHT)
            .try_fold(0u64, |total, deleted| async move { Ok(total + deleted) })
            .await
    }

    async fn drop_table(&self, table: &FeatureViewId) -> Result<(), OnlineStoreError> {
        let mut pattern = escape_glob(&self.table_key_prefix(table));
        pattern.push(b'*');
        match self.connection() {
            RedisConnection::Standalone(_) => self.delete_matching_keys(&pattern, None).await,
            RedisConnection::Cluster(mut cluster) => {
                for address in self.cluster_master_addresses(&mut cluster).await? {
                    self.delete_matching_keys(&pattern, Some(address)).await?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_timestamps_compare_like_integers() {
        let instants = [
            i64::MIN,
            -2,
            -1,
            0,
            1,
            9,
            10,
            1_700_000_000_000_000,
            i64::MAX,
        ];
        for pair in instants.windows(2) {
            let lower = ordered_timestamp_bytes(Timestamp(pair[0]));
            let higher = ordered_timestamp_bytes(Timestamp(pair[1]));
            assert!(lower < higher, "{pair:?}");
            assert_eq!(timestamp_from_ordered_bytes(lower), Timestamp(pair[0]));
        }
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("redis://user:secret@host:6379/0"),
            "redis://user:<redacted>@host:6379/0"
        );
        assert_eq!(
            redact_url("redis://:secret@host"),
            "redis://:<redacted>@host"
        );
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        let options = RedisOnlineStoreOptions {
            urls: vec!["redis://:hunter2@h:1".to_string()],
            password: Some("hunter3".to_string()),
            ..RedisOnlineStoreOptions::default()
        };
        let debug = format!("{options:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("hunter3"),
            "{debug}"
        );
    }

    #[test]
    fn cluster_nodes_lists_live_masters() {
        let nodes = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7002@17002 master - 0 0 2 connected 5461-10922
c3 127.0.0.1:7003@17003 slave a1 0 0 1 connected
d4 127.0.0.1:7004@17004 master,fail - 0 0 3 disconnected
";
        assert_eq!(
            parse_cluster_master_addresses(nodes),
            vec![
                ("127.0.0.1".to_string(), 7001),
                ("127.0.0.1".to_string(), 7002)
            ]
        );
    }
}
