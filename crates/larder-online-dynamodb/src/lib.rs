//! The DynamoDB online store, for AWS DynamoDB or any DynamoDB-compatible server.
//!
//! # Layout
//!
//! One DynamoDB table per feature view version, named `{table_prefix}{view}.v{version}`
//! (as Feast does: dropping a view version is one `DeleteTable`, and every table scales on
//! its own). One item per entity:
//!
//! | attribute | type | what |
//! | --- | --- | --- |
//! | `k` (hash key) | B | the canonical entity key bytes |
//! | `ts` | N | event time, microseconds since the epoch |
//! | `wts` | N | write time, microseconds since the epoch |
//! | `lane` | N | the lane's code |
//! | `v` | B | the values, encoded with the row codec (one attribute: no per-feature names) |
//! | `exp` | N | expiry in Unix seconds, the table's TTL attribute (only with a view TTL) |
//!
//! # Guarantees
//!
//! * **Event-time ordering, atomically per key**: each row is one conditional `PutItem`
//!   (`attribute_not_exists(k) OR ts <= :ts`), so DynamoDB itself refuses an older row, and
//!   two writers cannot race between a read and a write. The rows of one batch for one key
//!   are put in batch order; different keys go concurrently.
//! * **Reads** are `BatchGetItem` calls of at most 100 distinct keys, concurrent, strongly
//!   consistent (a read sees every write that returned), with the unprocessed keys retried
//!   with exponential backoff.
//! * **Tables** are created (on-demand capacity) by [`OnlineStore::prepare_table`], which
//!   `larder apply` calls, or on the first write to a table that does not exist; a TTL turns
//!   on DynamoDB's time-to-live on `exp`.
//! * **Failures**: network errors, timeouts and throttling are
//!   [`OnlineStoreError::Unavailable`] naming the `dynamodb` backend (serving answers 503); a
//!   write returns `Ok` only after every item's `PutItem` returned.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, KeysAndAttributes,
    ReturnValue, ScalarAttributeType, TableStatus, TimeToLiveSpecification,
};
use futures::{StreamExt, TryStreamExt};
use larder_core::{EntityKey, FeatureViewId, Timestamp, WriteLane};
use larder_online::{
    OnlineRow, OnlineStore, OnlineStoreError, RowSwap, TableOptions, WriteDurability, WriteSummary,
};

/// The backend name in errors and metrics.
const BACKEND_NAME: &str = "dynamodb";

/// Most keys in one `BatchGetItem` (DynamoDB's limit).
const KEYS_PER_BATCH_GET: usize = 100;

/// Rounds of retrying a `BatchGetItem`'s unprocessed keys before giving up.
const UNPROCESSED_RETRIES: u32 = 8;

/// How long a new table may take to become active.
const TABLE_ACTIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// How to reach DynamoDB.
#[derive(Clone, PartialEq, Eq)]
pub struct DynamoDbOnlineStoreOptions {
    /// The AWS region. Default `us-east-1`.
    pub region: String,
    /// An endpoint URL for a DynamoDB-compatible server or a VPC endpoint; `None`: AWS's.
    pub endpoint: Option<String>,
    /// Prefix of every table name, so that several projects can share an account.
    pub table_prefix: String,
    /// Static credentials (access key id, secret access key); `None`: the standard
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN` variables.
    pub credentials: Option<(String, String)>,
    /// Most requests in flight per operation. Default 32.
    pub max_concurrency: usize,
}

impl Default for DynamoDbOnlineStoreOptions {
    fn default() -> Self {
        Self {
            region: "us-east-1".to_string(),
            endpoint: None,
            table_prefix: "larder.".to_string(),
            credentials: None,
            max_concurrency: 32,
        }
    }
}

impl fmt::Debug for DynamoDbOnlineStoreOptions {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("DynamoDbOnlineStoreOptions")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("table_prefix", &self.table_prefix)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .field("max_concurrency", &self.max_concurrency)
            .finish()
    }
}

/// The DynamoDB online store (see the crate docs for its layout and guarantees).
pub struct DynamoDbOnlineStore {
    client: aws_sdk_dynamodb::Client,
    options: DynamoDbOnlineStoreOptions,
    table_options: RwLock<HashMap<FeatureViewId, TableOptions>>,
    ready_tables: RwLock<HashSet<String>>,
}

impl fmt::Debug for DynamoDbOnlineStore {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("DynamoDbOnlineStore")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn unavailable(message: impl Into<String>) -> OnlineStoreError {
    OnlineStoreError::Unavailable {
        backend: BACKEND_NAME,
        message: message.into(),
    }
}

fn internal(message: impl Into<String>) -> OnlineStoreError {
    OnlineStoreError::Internal {
        backend: BACKEND_NAME,
        message: message.into(),
    }
}

fn corrupt(message: impl Into<String>) -> OnlineStoreError {
    OnlineStoreError::Corrupt {
        backend: BACKEND_NAME,
        message: message.into(),
    }
}

/// Whether a service error says the table does not exist.
fn is_missing_table<E: ProvideErrorMetadata, R>(error: &SdkError<E, R>) -> bool {
    error
        .as_service_error()
        .and_then(ProvideErrorMetadata::code)
        == Some("ResourceNotFoundException")
}

/// Maps an SDK error: transport failures, timeouts and throttling are `Unavailable` (the
/// caller may retry); anything else is `Internal`.
fn map_error<E, R>(operation: &str, error: &SdkError<E, R>) -> OnlineStoreError
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    R: fmt::Debug,
{
    let message = format!("{operation}: {}", DisplayErrorContext(error));
    match error {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            unavailable(message)
        }
        SdkError::ServiceError(service) => match service.err().code() {
            Some(
                "ProvisionedThroughputExceededException"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "InternalServerError"
                | "ServiceUnavailable",
            ) => unavailable(message),
            _ => internal(message),
        },
        _ => internal(message),
    }
}

fn number(micros: i64) -> AttributeValue {
    AttributeValue::N(micros.to_string())
}

fn key_item(key: &EntityKey) -> HashMap<String, AttributeValue> {
    HashMap::from([(
        "k".to_string(),
        AttributeValue::B(Blob::new(key.as_bytes().to_vec())),
    )])
}

fn number_attribute(
    item: &HashMap<String, AttributeValue>,
    name: &str,
) -> Result<i64, OnlineStoreError> {
    match item.get(name) {
        Some(AttributeValue::N(text)) => text
            .parse()
            .map_err(|_| corrupt(format!("attribute '{name}' is not an integer: {text}"))),
        _ => Err(corrupt(format!("an item has no number attribute '{name}'"))),
    }
}

/// The row stored in `item` for `entity_key`.
fn row_of_item(
    entity_key: EntityKey,
    item: &HashMap<String, AttributeValue>,
) -> Result<OnlineRow, OnlineStoreError> {
    let lane_code = number_attribute(item, "lane")?;
    let lane = u8::try_from(lane_code)
        .ok()
        .and_then(WriteLane::from_code)
        .ok_or_else(|| corrupt(format!("unknown lane code {lane_code}")))?;
    let values = match item.get("v") {
        Some(AttributeValue::B(blob)) => blob.as_ref().to_vec(),
        _ => return Err(corrupt("an item has no binary attribute 'v'")),
    };
    Ok(OnlineRow {
        entity_key,
        event_timestamp: Timestamp(number_attribute(item, "ts")?),
        write_timestamp: Timestamp(number_attribute(item, "wts")?),
        lane,
        values,
    })
}

impl DynamoDbOnlineStore {
    /// A store reaching DynamoDB as `options` say. Makes no request: the first operation
    /// reports an unreachable endpoint or bad credentials.
    pub fn connect(options: DynamoDbOnlineStoreOptions) -> Result<Self, OnlineStoreError> {
        let (access_key, secret_key, session_token) = match &options.credentials {
            Some((access_key, secret_key)) => (access_key.clone(), secret_key.clone(), None),
            None => {
                let variable = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
                match (
                    variable("AWS_ACCESS_KEY_ID"),
                    variable("AWS_SECRET_ACCESS_KEY"),
                ) {
                    (Some(access_key), Some(secret_key)) => {
                        (access_key, secret_key, variable("AWS_SESSION_TOKEN"))
                    }
                    _ => {
                        return Err(internal(
                            "no DynamoDB credentials: set online_store.access_key_id and \
                             secret_access_key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                        ));
                    }
                }
            }
        };
        let mut builder = aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(options.region.clone()))
            .credentials_provider(Credentials::new(
                access_key,
                secret_key,
                session_token,
                None,
                "larder.yaml",
            ));
        if let Some(endpoint) = &options.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        Ok(Self {
            client: aws_sdk_dynamodb::Client::from_conf(builder.build()),
            options,
            table_options: RwLock::new(HashMap::new()),
            ready_tables: RwLock::new(HashSet::new()),
        })
    }

    /// The DynamoDB table name of a feature view version.
    pub fn table_name(&self, table: &FeatureViewId) -> String {
        format!(
            "{}{}.v{}",
            self.options.table_prefix, table.name, table.version
        )
    }

    fn concurrency(&self) -> usize {
        self.options.max_concurrency.max(1)
    }

    /// Forgets that a table was seen active, so the next [`Self::ensure_table`] asks the
    /// server again (the table was dropped, or the server lost it).
    fn forget_table(&self, name: &str) {
        self.ready_tables
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
    }

    /// Creates the table if it does not exist and waits until it is active.
    async fn ensure_table(&self, name: &str) -> Result<(), OnlineStoreError> {
        let ready = self
            .ready_tables
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(name);
        if ready {
            return Ok(());
        }
        let created = self
            .client
            .create_table()
            .table_name(name)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("k")
                    .attribute_type(ScalarAttributeType::B)
                    .build()
                    .map_err(|error| internal(error.to_string()))?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("k")
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(|error| internal(error.to_string()))?,
            )
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        if let Err(error) = created {
            let exists = error
                .as_service_error()
                .and_then(ProvideErrorMetadata::code)
                == Some("ResourceInUseException");
            if !exists {
                return Err(map_error(&format!("creating table {name}"), &error));
            }
        }
        let deadline = tokio::time::Instant::now() + TABLE_ACTIVE_TIMEOUT;
        loop {
            let described = self
                .client
                .describe_table()
                .table_name(name)
                .send()
                .await
                .map_err(|error| map_error(&format!("describing table {name}"), &error))?;
            let status = described.table().and_then(|table| table.table_status());
            if status == Some(&TableStatus::Active) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(unavailable(format!(
                    "table {name} did not become active within {TABLE_ACTIVE_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.ready_tables
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string());
        Ok(())
    }

    fn options_of(&self, table: &FeatureViewId) -> TableOptions {
        self.table_options
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(table)
            .copied()
            .unwrap_or_default()
    }

    /// Puts one row if no newer one is stored; `Ok(false)` when a newer one is.
    async fn put_if_not_older(
        &self,
        name: &str,
        row: &OnlineRow,
        options: TableOptions,
    ) -> Result<bool, OnlineStoreError> {
        let condition =
            HashMap::from([(":ts".to_string(), number(row.event_timestamp.as_micros()))]);
        self.put_on_condition(
            name,
            row,
            options,
            "attribute_not_exists(k) OR ts <= :ts",
            condition,
        )
        .await
    }

    /// Puts one row if the key still holds `expected` (no item when `None`); `Ok(false)`
    /// when it holds something else.
    async fn put_if_unchanged(
        &self,
        name: &str,
        swap: &RowSwap,
        options: TableOptions,
    ) -> Result<bool, OnlineStoreError> {
        match &swap.expected {
            None => {
                self.put_on_condition(
                    name,
                    &swap.row,
                    options,
                    "attribute_not_exists(k)",
                    HashMap::new(),
                )
                .await
            }
            Some(expected) => {
                let values = HashMap::from([
                    (
                        ":ts".to_string(),
                        number(expected.event_timestamp.as_micros()),
                    ),
                    (
                        ":wts".to_string(),
                        number(expected.write_timestamp.as_micros()),
                    ),
                    (
                        ":lane".to_string(),
                        AttributeValue::N(expected.lane.code().to_string()),
                    ),
                    (
                        ":v".to_string(),
                        AttributeValue::B(Blob::new(expected.values.clone())),
                    ),
                ]);
                self.put_on_condition(
                    name,
                    &swap.row,
                    options,
                    "ts = :ts AND wts = :wts AND lane = :lane AND v = :v",
                    values,
                )
                .await
            }
        }
    }

    /// Puts one row if `condition` holds for the stored item; `Ok(false)` when it does not.
    async fn put_on_condition(
        &self,
        name: &str,
        row: &OnlineRow,
        options: TableOptions,
        condition: &str,
        condition_values: HashMap<String, AttributeValue>,
    ) -> Result<bool, OnlineStoreError> {
        let mut item = key_item(&row.entity_key);
        item.insert("ts".to_string(), number(row.event_timestamp.as_micros()));
        item.insert("wts".to_string(), number(row.write_timestamp.as_micros()));
        item.insert(
            "lane".to_string(),
            AttributeValue::N(row.lane.code().to_string()),
        );
        item.insert(
            "v".to_string(),
            AttributeValue::B(Blob::new(row.values.clone())),
        );
        if let Some(expire_at) = options.expire_at(row) {
            let seconds = expire_at.as_micros().div_euclid(1_000_000) + 1;
            item.insert("exp".to_string(), number(seconds));
        }
        let put = self
            .client
            .put_item()
            .table_name(name)
            .set_item(Some(item))
            .condition_expression(condition)
            .set_expression_attribute_values(
                (!condition_values.is_empty()).then_some(condition_values),
            )
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(error)
                if error
                    .as_service_error()
                    .and_then(ProvideErrorMetadata::code)
                    == Some("ConditionalCheckFailedException") =>
            {
                Ok(false)
            }
            Err(error) if is_missing_table(&error) => {
                // Seen active before, gone now (deleted, or a DynamoDB-compatible server
                // restarted empty): the next write creates it again.
                self.forget_table(name);
                Err(unavailable(format!(
                    "writing to {name}: the table no longer exists; it is created again on \
                     the next write"
                )))
            }
            Err(error) => Err(map_error(&format!("writing to {name}"), &error)),
        }
    }

    /// Reads up to 100 distinct keys, retrying unprocessed ones; `None` when the table does
    /// not exist.
    async fn batch_get(
        &self,
        name: &str,
        keys: Vec<EntityKey>,
    ) -> Result<Vec<(EntityKey, OnlineRow)>, OnlineStoreError> {
        let mut pending: Vec<HashMap<String, AttributeValue>> = keys.iter().map(key_item).collect();
        let mut found = Vec::with_capacity(keys.len());
        let mut attempt = 0;
        while !pending.is_empty() {
            let request = KeysAndAttributes::builder()
                .set_keys(Some(std::mem::take(&mut pending)))
                .consistent_read(true)
                .build()
                .map_err(|error| internal(error.to_string()))?;
            let response = match self
                .client
                .batch_get_item()
                .request_items(name, request)
                .send()
                .await
            {
                Ok(response) => response,
                Err(error) if is_missing_table(&error) => return Ok(Vec::new()),
                Err(error) => return Err(map_error(&format!("reading {name}"), &error)),
            };
            for item in response
                .responses()
                .and_then(|tables| tables.get(name))
                .into_iter()
                .flatten()
            {
                let key = match item.get("k") {
                    Some(AttributeValue::B(blob)) => EntityKey::from_bytes(blob.as_ref().to_vec()),
                    _ => return Err(corrupt("an item has no binary key 'k'")),
                };
                let row = row_of_item(key.clone(), item)?;
                found.push((key, row));
            }
            if let Some(unprocessed) = response
                .unprocessed_keys()
                .and_then(|tables| tables.get(name))
            {
                pending = unprocessed.keys().to_vec();
            }
            if !pending.is_empty() {
                attempt += 1;
                if attempt > UNPROCESSED_RETRIES {
                    return Err(unavailable(format!(
                        "reading {name}: {} keys still unprocessed after {UNPROCESSED_RETRIES} retries",
                        pending.len()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(25 << attempt.min(6))).await;
            }
        }
        Ok(found)
    }
}

#[async_trait::async_trait]
impl OnlineStore for DynamoDbOnlineStore {
    fn backend_name(&self) -> &'static str {
        BACKEND_NAME
    }

    async fn prepare_table(
        &self,
        table: &FeatureViewId,
        options: TableOptions,
    ) -> Result<(), OnlineStoreError> {
        let name = self.table_name(table);
        // Declaring a table asks the server, whatever this store saw before: the table may
        // have been deleted, or the server restarted empty, since.
        self.forget_table(&name);
        self.ensure_table(&name).await?;
        if options.ttl.is_some() {
            let enabled = self
                .client
                .update_time_to_live()
                .table_name(&name)
                .time_to_live_specification(
                    TimeToLiveSpecification::builder()
                        .enabled(true)
                        .attribute_name("exp")
                        .build()
                        .map_err(|error| internal(error.to_string()))?,
                )
                .send()
                .await;
            if let Err(error) = enabled {
                // Enabling it twice is refused; that is the state we want.
                let already = error
                    .as_service_error()
                    .and_then(ProvideErrorMetadata::message)
                    .is_some_and(|message| message.contains("already enabled"));
                if !already {
                    return Err(map_error(&format!("enabling TTL on {name}"), &error));
                }
            }
        }
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
        // DynamoDB acknowledges a write once it is durable; there is nothing to defer.
        if rows.is_empty() {
            return Ok(WriteSummary::default());
        }
        let name = self.table_name(table);
        self.ensure_table(&name).await?;
        let options = self.options_of(table);
        // The rows of each key in batch order; keys in order of first appearance.
        let (group_of_row, group_count) = larder_online::group_rows_by_key(&rows);
        let mut rows_by_key: Vec<Vec<OnlineRow>> = (0..group_count).map(|_| Vec::new()).collect();
        for (row, group) in rows.into_iter().zip(group_of_row) {
            if let Some(key_rows) = rows_by_key.get_mut(group) {
                key_rows.push(row);
            }
        }
        let name = name.as_str();
        futures::stream::iter(rows_by_key)
            .map(|key_rows| async move {
                let mut summary = WriteSummary::default();
                for row in &key_rows {
                    if self.put_if_not_older(name, row, options).await? {
                        summary.written += 1;
                    } else {
                        summary.skipped_stale += 1;
                    }
                }
                Ok::<_, OnlineStoreError>(summary)
            })
            .buffer_unordered(self.concurrency())
            .try_fold(WriteSummary::default(), |mut total, summary| async move {
                total.add(summary);
                Ok(total)
            })
            .await
    }

    async fn sync(&self) -> Result<(), OnlineStoreError> {
        Ok(())
    }

    async fn swap_rows(
        &self,
        table: &FeatureViewId,
        swaps: Vec<RowSwap>,
    ) -> Result<Vec<bool>, OnlineStoreError> {
        if swaps.is_empty() {
            return Ok(Vec::new());
        }
        let name = self.table_name(table);
        self.ensure_table(&name).await?;
        let options = self.options_of(table);
        let name = name.as_str();
        futures::stream::iter(swaps)
            .map(|swap| async move { self.put_if_unchanged(name, &swap, options).await })
            .buffered(self.concurrency())
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
        let name = self.table_name(table);
        // BatchGetItem refuses duplicate keys: ask for each key once.
        let mut distinct: Vec<EntityKey> = Vec::with_capacity(keys.len());
        let mut seen: HashSet<&EntityKey> = HashSet::with_capacity(keys.len());
        for key in keys {
            if seen.insert(key) {
                distinct.push(key.clone());
            }
        }
        let name = name.as_str();
        let chunks: Vec<Vec<EntityKey>> = distinct
            .chunks(KEYS_PER_BATCH_GET)
            .map(<[EntityKey]>::to_vec)
            .collect();
        let found: Vec<Vec<(EntityKey, OnlineRow)>> = futures::stream::iter(chunks)
            .map(|chunk| self.batch_get(name, chunk))
            .buffer_unordered(self.concurrency())
            .try_collect()
            .await?;
        let mut rows: HashMap<EntityKey, OnlineRow> = found.into_iter().flatten().collect();
        let mut remaining: HashMap<&EntityKey, usize> = HashMap::with_capacity(distinct.len());
        for key in keys {
            *remaining.entry(key).or_default() += 1;
        }
        let mut slots = Vec::with_capacity(keys.len());
        for key in keys {
            // The last slot of a key takes the row; earlier duplicates get a copy.
            let left = remaining.entry(key).or_default();
            *left -= 1;
            slots.push(if *left == 0 {
                rows.remove(key)
            } else {
                rows.get(key).cloned()
            });
        }
        Ok(slots)
    }

    async fn delete_rows(
        &self,
        table: &FeatureViewId,
        keys: &[EntityKey],
    ) -> Result<u64, OnlineStoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let name = self.table_name(table);
        let distinct: HashSet<EntityKey> = keys.iter().cloned().collect();
        let name = name.as_str();
        futures::stream::iter(distinct)
            .map(|key: EntityKey| async move {
                let deleted = self
                    .client
                    .delete_item()
                    .table_name(name)
                    .set_key(Some(key_item(&key)))
                    .return_values(ReturnValue::AllOld)
                    .send()
                    .await;
                match deleted {
                    Ok(output) => Ok(u64::from(output.attributes().is_some())),
                    Err(error) if is_missing_table(&error) => Ok(0),
                    Err(error) => Err(map_error(&format!("deleting from {name}"), &error)),
                }
            })
            .buffer_unordered(self.concurrency())
            .try_fold(0u64, |total, deleted| async move { Ok(total + deleted) })
            .await
    }

    async fn drop_table(&self, table: &FeatureViewId) -> Result<(), OnlineStoreError> {
        let name = self.table_name(table);
        self.forget_table(&name);
        match self.client.delete_table().table_name(&name).send().await {
            Ok(_) => Ok(()),
            Err(error) if is_missing_table(&error) => Ok(()),
            Err(error) => Err(map_error(&format!("dropping table {name}"), &error)),
        }
    }
}
