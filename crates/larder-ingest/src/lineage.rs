//! Lineage out: [OpenLineage](https://openlineage.io/spec) run events for batch runs and
//! stream backfills, so that catalogs such as Marquez or DataHub see Larder as a pipeline.
//!
//! Each run of a job (`<view>.materialize`, `<view>.backfill`) sends `START` when it begins
//! and `COMPLETE` or `FAIL` when it ends, all three with the same `run.runId`. The inputs are
//! the sources the view reads (a local file as namespace `file` and its absolute path,
//! `s3://bucket` and the key, a Kafka topic under `kafka://broker`), the outputs the offline
//! table of the view version (namespace `larder://<project>/offline`, name `<view>@v<version>`)
//! and, for online views, its online table (`larder://<project>/online`), with a `schema`
//! facet. `COMPLETE` carries the row counts (`outputStatistics` on each output, and a
//! `larder_run` run facet), `FAIL` an `errorMessage` run facet.
//!
//! A [`LineageSink`] appends the events to a file (one JSON object per line) or POSTs them
//! to a catalog from a background thread. Lineage never fails nor holds up a run: a sink that
//! cannot be written or reached is logged with `tracing::warn!`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use larder_core::{DataSource, DataSourceKind, FeatureView};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::batch::RunReport;

/// The `schemaURL` of every run event: the OpenLineage spec version the events follow.
pub const RUN_EVENT_SCHEMA_URL: &str =
    "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent";

/// The `producer` of every event and facet: this code, at this version.
pub const PRODUCER: &str = concat!(
    "https://github.com/larder-dev/larder/tree/v",
    env!("CARGO_PKG_VERSION")
);

/// The base URL of the standard facets' schemas.
const FACETS: &str = "https://openlineage.io/spec/facets";

/// The `_schemaURL` of Larder's own facets (`larder_run`).
const LARDER_FACET_SCHEMA_URL: &str =
    "https://github.com/larder-dev/larder/blob/main/README.md#lineage-out-openlineage";

/// Events an HTTP sink holds while the catalog is slow; beyond it new events are dropped
/// (with a warning) rather than held in memory.
const HTTP_QUEUE_CAPACITY: usize = 1024;

/// Named facets of a run, job or dataset (name to facet object).
pub type Facets = BTreeMap<String, Value>;

/// Why a lineage event could not be recorded or sent.
#[derive(Debug, thiserror::Error)]
pub enum LineageError {
    /// The event could not be encoded as JSON.
    #[error("encoding the lineage event: {0}")]
    Encode(#[from] serde_json::Error),
    /// The lineage file could not be written.
    #[error("writing the lineage file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The background thread that POSTs events could not be started.
    #[error("starting the lineage sender thread: {0}")]
    Thread(std::io::Error),
    /// Too many events wait for a slow catalog: this one is dropped.
    #[error("{0} lineage events are waiting for the catalog already; dropping this one")]
    QueueFull(usize),
    /// The catalog could not be reached.
    #[error("posting the lineage event to {endpoint}: {message}")]
    Http {
        /// Where the event was sent (credentials redacted).
        endpoint: String,
        /// What went wrong.
        message: String,
    },
    /// The catalog refused the event.
    #[error("the catalog at {endpoint} answered HTTP {status} to a lineage event: {body}")]
    Status {
        /// Where the event was sent (credentials redacted).
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// The start of the answer's body.
        body: String,
    },
}

/// The kind of a run event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    /// The run began.
    Start,
    /// The run succeeded.
    Complete,
    /// The run failed.
    Fail,
}

/// An OpenLineage `RunEvent`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunEvent {
    /// `START`, `COMPLETE` or `FAIL`.
    pub event_type: EventType,
    /// When the event happened (RFC 3339, UTC).
    pub event_time: String,
    /// The run.
    pub run: EventRun,
    /// The job the run is an instance of.
    pub job: EventJob,
    /// The datasets the run reads.
    #[serde(default)]
    pub inputs: Vec<EventDataset>,
    /// The datasets the run writes.
    #[serde(default)]
    pub outputs: Vec<EventDataset>,
    /// What produced the event ([`PRODUCER`]).
    pub producer: String,
    /// The spec the event follows ([`RUN_EVENT_SCHEMA_URL`]).
    #[serde(rename = "schemaURL")]
    pub schema_url: String,
}

/// The `run` of a [`RunEvent`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRun {
    /// The run's id, a UUID shared by all events of the run.
    pub run_id: String,
    /// Run facets (`errorMessage`, `larder_run`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facets: Facets,
}

/// The `job` of a [`RunEvent`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventJob {
    /// The job's namespace (`lineage.namespace`, default the project name).
    pub namespace: String,
    /// The job's name (`<view>.materialize`, `<view>.backfill`).
    pub name: String,
    /// Job facets (`jobType`, `sql`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facets: Facets,
}

/// An input or output dataset of a [`RunEvent`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventDataset {
    /// Where the dataset lives (`file`, `s3://bucket`, `larder://<project>/offline`).
    pub namespace: String,
    /// The dataset within its namespace (a path, a key, `<view>@v<version>`).
    pub name: String,
    /// Dataset facets (`schema`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facets: Facets,
    /// Facets of an output about this run (`outputStatistics`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub output_facets: Facets,
}

impl EventDataset {
    /// A dataset without facets.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            facets: Facets::new(),
            output_facets: Facets::new(),
        }
    }
}

/// A facet object: the standard `_producer` and `_schemaURL`, then `fields`.
fn facet(schema_url: &str, fields: Value) -> Value {
    let mut object = Map::new();
    object.insert("_producer".to_string(), Value::from(PRODUCER));
    object.insert("_schemaURL".to_string(), Value::from(schema_url));
    if let Value::Object(fields) = fields {
        object.extend(fields);
    }
    Value::Object(object)
}

/// Where run events go: a file or a catalog's HTTP endpoint. Shared by every run of a
/// process (one background thread per HTTP sink, started at the first event).
pub struct LineageSink {
    target: Target,
}

enum Target {
    File {
        path: PathBuf,
        lock: Mutex<()>,
    },
    Http {
        endpoint: String,
        timeout: Duration,
        queue: Mutex<Option<SyncSender<String>>>,
        pending: Arc<Pending>,
    },
}

/// How many queued events an HTTP sink has not finished sending.
#[derive(Default)]
struct Pending {
    count: Mutex<usize>,
    idle: Condvar,
}

impl Pending {
    fn count(&self) -> MutexGuard<'_, usize> {
        self.count.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self) {
        *self.count() += 1;
    }

    fn done(&self) {
        let mut count = self.count();
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.idle.notify_all();
        }
    }
}

impl std::fmt::Debug for LineageSink {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("LineageSink")
            .field("target", &self.describe())
            .finish()
    }
}

impl LineageSink {
    /// Appends each event as one JSON line to `path` (its folders are created).
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            target: Target::File {
                path: path.into(),
                lock: Mutex::new(()),
            },
        }
    }

    /// POSTs each event as JSON to `endpoint` (the full URL, e.g.
    /// `http://marquez:5000/api/v1/lineage`) from a background thread; each POST may take up
    /// to `timeout`.
    pub fn http(endpoint: impl Into<String>, timeout: Duration) -> Self {
        Self {
            target: Target::Http {
                endpoint: endpoint.into(),
                timeout,
                queue: Mutex::new(None),
                pending: Arc::new(Pending::default()),
            },
        }
    }

    /// Where the events go, for messages (credentials redacted).
    pub fn describe(&self) -> String {
        match &self.target {
            Target::File { path, .. } => path.display().to_string(),
            Target::Http { endpoint, .. } => larder_core::secret::redact_url_password(endpoint),
        }
    }

    /// Records or queues `event`; a failure is logged as a warning, never returned.
    pub fn send(&self, event: &RunEvent) {
        if let Err(error) = self.try_send(event) {
            tracing::warn!(%error, job = %event.job.name, "lineage event not sent");
        }
    }

    /// Writes `event` (file) or queues it for the background thread (HTTP).
    pub fn try_send(&self, event: &RunEvent) -> Result<(), LineageError> {
        let mut line = serde_json::to_string(event)?;
        match &self.target {
            Target::File { path, lock } => {
                line.push('\n');
                let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
                append_line(path, &line).map_err(|source| LineageError::Write {
                    path: path.clone(),
                    source,
                })
            }
            Target::Http {
                endpoint,
                timeout,
                queue,
                pending,
            } => {
                let mut queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
                let sender = match &*queue {
                    Some(sender) => sender.clone(),
                    None => {
                        let sender = spawn_sender(endpoint.clone(), *timeout, pending)
                            .map_err(LineageError::Thread)?;
                        *queue = Some(sender.clone());
                        sender
                    }
                };
                pending.add();
                match sender.try_send(line) {
                    Ok(()) => Ok(()),
                    Err(TrySendError::Full(_)) => {
                        pending.done();
                        Err(LineageError::QueueFull(HTTP_QUEUE_CAPACITY))
                    }
                    Err(TrySendError::Disconnected(_)) => {
                        pending.done();
                        *queue = None;
                        Err(LineageError::Http {
                            endpoint: self.describe(),
                            message: "the sender thread stopped".to_string(),
                        })
                    }
                }
            }
        }
    }

    /// Waits until every queued event was sent (or failed), at most `timeout`; whether all
    /// were. A command that exits right after its runs calls it so that its events are not
    /// lost with the process. A file sink writes at once and never waits.
    pub fn flush(&self, timeout: Duration) -> bool {
        let Target::Http { pending, .. } = &self.target else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        let mut count = pending.count();
        while *count > 0 {
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(
                    pending = *count,
                    endpoint = %self.describe(),
                    "lineage events not delivered in time"
                );
                return false;
            }
            count = pending
                .idle
                .wait_timeout(count, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

/// Appends `line` to `path`, creating its folders.
fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(line.as_bytes())
}

/// Starts the thread that POSTs the events queued on the returned sender, in order, until
/// the sink (the last sender) is dropped.
fn spawn_sender(
    endpoint: String,
    timeout: Duration,
    pending: &Arc<Pending>,
) -> std::io::Result<SyncSender<String>> {
    let (sender, receiver) = std::sync::mpsc::sync_channel::<String>(HTTP_QUEUE_CAPACITY);
    let pending = Arc::clone(pending);
    std::thread::Builder::new()
        .name("larder-lineage".to_string())
        .spawn(move || post_all(&endpoint, timeout, &receiver, &pending))?;
    Ok(sender)
}

fn post_all(endpoint: &str, timeout: Duration, receiver: &Receiver<String>, pending: &Pending) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    for body in receiver {
        if let Err(error) = post(&agent, endpoint, &body) {
            tracing::warn!(%error, "lineage event not delivered");
        }
        pending.done();
    }
}

fn post(agent: &ureq::Agent, endpoint: &str, body: &str) -> Result<(), LineageError> {
    let redacted = || larder_core::secret::redact_url_password(endpoint);
    let mut response = agent
        .post(endpoint)
        .header("Content-Type", "application/json")
        .send(body)
        .map_err(|error| LineageError::Http {
            endpoint: redacted(),
            message: error.to_string(),
        })?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let text = response
        .body_mut()
        .read_to_string()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    Err(LineageError::Status {
        endpoint: redacted(),
        status: status.as_u16(),
        body: text,
    })
}

/// Builds the run events of one project's jobs and hands them to its sink.
#[derive(Debug, Clone)]
pub struct LineageEmitter {
    sink: Arc<LineageSink>,
    namespace: String,
    project: String,
    repo_root: PathBuf,
    sources: BTreeMap<String, DataSource>,
}

impl LineageEmitter {
    /// An emitter of the jobs of `project` under `namespace`, whose relative source paths
    /// are relative to `repo_root`; add the sources with [`LineageEmitter::with_sources`].
    pub fn new(
        sink: Arc<LineageSink>,
        namespace: impl Into<String>,
        project: impl Into<String>,
        repo_root: impl Into<PathBuf>,
    ) -> Self {
        Self {
            sink,
            namespace: namespace.into(),
            project: project.into(),
            repo_root: repo_root.into(),
            sources: BTreeMap::new(),
        }
    }

    /// The emitter knowing `sources`, the inputs of the views' runs.
    pub fn with_sources<'a>(mut self, sources: impl IntoIterator<Item = &'a DataSource>) -> Self {
        self.sources.extend(
            sources
                .into_iter()
                .map(|source| (source.name.clone(), source.clone())),
        );
        self
    }

    /// The sink the events go to.
    pub fn sink(&self) -> &Arc<LineageSink> {
        &self.sink
    }

    /// The namespace of the jobs.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The dataset of a data source: a local file as `file` and its absolute path,
    /// `s3://bucket` and the key, a Kafka topic under `kafka://<first broker>`, a NATS
    /// subject under the server URL, pushed rows under `larder://<project>/push`.
    pub fn source_dataset(&self, source: &DataSource) -> EventDataset {
        match &source.kind {
            DataSourceKind::File { path, .. } => self.path_dataset(path),
            DataSourceKind::Kafka { brokers, topic, .. } => EventDataset::new(
                format!(
                    "kafka://{}",
                    brokers.first().map(String::as_str).unwrap_or_default()
                ),
                topic.clone(),
            ),
            DataSourceKind::Nats {
                url,
                stream,
                subject,
                ..
            } => {
                let server = url.trim_end_matches('/');
                let namespace = if server.contains("://") {
                    server.to_string()
                } else {
                    format!("nats://{server}")
                };
                EventDataset::new(namespace, format!("{stream}/{subject}"))
            }
            DataSourceKind::Push => {
                EventDataset::new(format!("larder://{}/push", self.project), &source.name)
            }
        }
    }

    /// The dataset of a path: `scheme://authority` and the rest for a URL (`s3a://` read as
    /// `s3://`), else `file` and the absolute path (relative to the repo root).
    pub fn path_dataset(&self, path: &str) -> EventDataset {
        if let Some((scheme, rest)) = path.split_once("://") {
            let scheme = if scheme.eq_ignore_ascii_case("s3a") {
                "s3"
            } else {
                scheme
            };
            let (authority, key) = rest.split_once('/').unwrap_or((rest, ""));
            return EventDataset::new(format!("{scheme}://{authority}"), key);
        }
        let joined = self.repo_root.join(path);
        let absolute = joined
            .canonicalize()
            .or_else(|_| std::path::absolute(&joined))
            .unwrap_or(joined);
        EventDataset::new("file", absolute.display().to_string())
    }

    /// The offline table of the view's version, with its schema.
    pub fn offline_dataset(&self, view: &FeatureView) -> EventDataset {
        self.table_dataset(view, "offline")
    }

    /// The online table of the view's version, with its schema.
    pub fn online_dataset(&self, view: &FeatureView) -> EventDataset {
        self.table_dataset(view, "online")
    }

    fn table_dataset(&self, view: &FeatureView, store: &str) -> EventDataset {
        let mut dataset = EventDataset::new(
            format!("larder://{}/{store}", self.project),
            format!("{}@v{}", view.name, view.version),
        );
        dataset
            .facets
            .insert("schema".to_string(), schema_facet(view));
        dataset
    }

    /// The inputs of a view's batch run: its source, and the other sources its SQL names.
    fn view_inputs(&self, view: &FeatureView) -> Vec<EventDataset> {
        let names = view.sources_read(self.sources.keys().map(String::as_str));
        names
            .into_iter()
            .filter_map(|name| self.sources.get(name))
            .map(|source| self.source_dataset(source))
            .collect()
    }

    /// Starts a batch run of `view` (job `<view>.materialize`): sends `START`.
    pub fn start_materialize(&self, view: &FeatureView) -> LineageRun {
        let mut outputs = Vec::new();
        if view.offline {
            outputs.push(self.offline_dataset(view));
        }
        if view.online {
            outputs.push(self.online_dataset(view));
        }
        let mut job = self.job(format!("{}.materialize", view.name), "MATERIALIZE");
        if let Some(sql) = &view.transformation {
            job.facets.insert(
                "sql".to_string(),
                facet(
                    &format!("{FACETS}/1-0-1/SQLJobFacet.json#/$defs/SQLJobFacet"),
                    json!({"query": sql}),
                ),
            );
        }
        self.start(job, self.view_inputs(view), outputs)
    }

    /// Starts a stream backfill of `view` (job `<view>.backfill`), reading `history` (a
    /// recorded event file) or else the view's stream source: sends `START`.
    pub fn start_backfill(&self, view: &FeatureView, history: Option<&Path>) -> LineageRun {
        let inputs = match history {
            Some(path) => vec![self.path_dataset(&path.to_string_lossy())],
            None => self
                .sources
                .get(&view.source)
                .map(|source| self.source_dataset(source))
                .into_iter()
                .collect(),
        };
        let job = self.job(format!("{}.backfill", view.name), "BACKFILL");
        self.start(job, inputs, vec![self.offline_dataset(view)])
    }

    fn job(&self, name: String, job_type: &str) -> EventJob {
        let mut facets = Facets::new();
        facets.insert(
            "jobType".to_string(),
            facet(
                &format!("{FACETS}/2-0-3/JobTypeJobFacet.json#/$defs/JobTypeJobFacet"),
                json!({"processingType": "BATCH", "integration": "LARDER", "jobType": job_type}),
            ),
        );
        EventJob {
            namespace: self.namespace.clone(),
            name,
            facets,
        }
    }

    fn start(
        &self,
        job: EventJob,
        inputs: Vec<EventDataset>,
        outputs: Vec<EventDataset>,
    ) -> LineageRun {
        let run = LineageRun {
            sink: Arc::clone(&self.sink),
            run_id: new_run_id(),
            job,
            inputs,
            outputs,
        };
        let mut facets = Facets::new();
        facets.insert(
            "processing_engine".to_string(),
            facet(
                &format!(
                    "{FACETS}/1-1-1/ProcessingEngineRunFacet.json#/$defs/ProcessingEngineRunFacet"
                ),
                json!({"name": "larder", "version": env!("CARGO_PKG_VERSION")}),
            ),
        );
        run.sink
            .send(&run.event(EventType::Start, facets, run.outputs.clone()));
        run
    }
}

/// The `schema` facet of a view's table: join keys, event time, features.
fn schema_facet(view: &FeatureView) -> Value {
    let mut fields: Vec<Value> = view
        .join_keys
        .iter()
        .map(|key| json!({"name": key.name, "type": key.dtype.to_string()}))
        .collect();
    fields.push(json!({"name": view.timestamp_field, "type": "timestamp"}));
    fields.extend(view.features.iter().map(|feature| {
        let mut field = json!({"name": feature.name, "type": feature.dtype.to_string()});
        if !feature.description.is_empty()
            && let Value::Object(object) = &mut field
        {
            object.insert(
                "description".to_string(),
                Value::from(feature.description.clone()),
            );
        }
        field
    }));
    facet(
        &format!("{FACETS}/1-1-1/SchemaDatasetFacet.json#/$defs/SchemaDatasetFacet"),
        json!({ "fields": fields }),
    )
}

/// A random UUID (version 4).
fn new_run_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No system randomness: the time and a process-wide counter still tell runs apart.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos());
        let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mixed = nanos ^ (u128::from(count) << 96) ^ (u128::from(std::process::id()) << 64);
        bytes = mixed.to_be_bytes();
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// What a successful run wrote, for its `COMPLETE` event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunStatistics {
    /// Rows written to the offline table (`outputStatistics.rowCount` of that output).
    pub offline_rows: Option<u64>,
    /// Rows written to the online table (`outputStatistics.rowCount` of that output).
    pub online_rows: Option<u64>,
    /// Every count of the run, in the `larder_run` run facet.
    pub counts: BTreeMap<String, u64>,
}

impl RunStatistics {
    /// The statistics of a batch run's report.
    pub fn of_report(report: &RunReport) -> Self {
        let counts = [
            ("rowsScanned", report.rows_scanned),
            ("rowsChanged", report.rows_changed),
            ("rowsWritten", report.rows_written),
            ("rowsSkipped", report.rows_skipped),
            ("rowsUnchanged", report.rows_unchanged),
            ("rowsDeleted", report.rows_deleted),
            ("offlineRows", report.offline_rows),
            ("offlinePartitions", report.offline_partitions),
            ("durationMs", report.duration_ms),
        ];
        Self {
            offline_rows: Some(report.offline_rows),
            online_rows: Some(report.rows_written),
            counts: counts
                .into_iter()
                .map(|(name, count)| (name.to_string(), count))
                .collect(),
        }
    }
}

/// One run in progress: its `START` was sent; [`LineageRun::complete`] or
/// [`LineageRun::fail`] sends its end with the same run id.
#[derive(Debug)]
pub struct LineageRun {
    sink: Arc<LineageSink>,
    run_id: String,
    job: EventJob,
    inputs: Vec<EventDataset>,
    outputs: Vec<EventDataset>,
}

impl LineageRun {
    /// The run's id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Sends `COMPLETE` or `FAIL`, as the batch run's report says.
    pub fn finish_materialize(self, report: &RunReport) {
        if report.succeeded() {
            self.complete(&RunStatistics::of_report(report));
        } else {
            let message = report.error.as_deref().unwrap_or("the run failed");
            self.fail(message);
        }
    }

    /// Sends `COMPLETE` with the run's row counts.
    pub fn complete(self, statistics: &RunStatistics) {
        let mut outputs = self.outputs.clone();
        for output in &mut outputs {
            let rows = if output.namespace.ends_with("/offline") {
                statistics.offline_rows
            } else if output.namespace.ends_with("/online") {
                statistics.online_rows
            } else {
                None
            };
            if let Some(rows) = rows {
                output.output_facets.insert(
                    "outputStatistics".to_string(),
                    facet(
                        &format!(
                            "{FACETS}/1-0-2/OutputStatisticsOutputDatasetFacet.json#/$defs/OutputStatisticsOutputDatasetFacet"
                        ),
                        json!({ "rowCount": rows }),
                    ),
                );
            }
        }
        let mut facets = Facets::new();
        if !statistics.counts.is_empty() {
            facets.insert(
                "larder_run".to_string(),
                facet(LARDER_FACET_SCHEMA_URL, json!(statistics.counts)),
            );
        }
        self.sink
            .send(&self.event(EventType::Complete, facets, outputs));
    }

    /// Sends `FAIL` with `message` in an `errorMessage` run facet.
    pub fn fail(self, message: &str) {
        let mut facets = Facets::new();
        facets.insert(
            "errorMessage".to_string(),
            facet(
                &format!("{FACETS}/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet"),
                json!({"message": message, "programmingLanguage": "RUST"}),
            ),
        );
        self.sink
            .send(&self.event(EventType::Fail, facets, self.outputs.clone()));
    }

    fn event(
        &self,
        event_type: EventType,
        run_facets: Facets,
        outputs: Vec<EventDataset>,
    ) -> RunEvent {
        RunEvent {
            event_type,
            event_time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            run: EventRun {
                run_id: self.run_id.clone(),
                facets: run_facets,
            },
            job: self.job.clone(),
            inputs: self.inputs.clone(),
            outputs,
            producer: PRODUCER.to_string(),
            schema_url: RUN_EVENT_SCHEMA_URL.to_string(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::io::{BufRead, BufReader, Read};

    use larder_core::{Feature, FileFormat, JoinKey, ValueType};

    use super::*;

    fn source() -> DataSource {
        DataSource {
            name: "profiles".to_string(),
            kind: DataSourceKind::File {
                path: "data/profiles.parquet".to_string(),
                format: FileFormat::Parquet,
            },
            timestamp_field: "event_timestamp".to_string(),
            description: String::new(),
            owner: String::new(),
            tags: BTreeMap::new(),
        }
    }

    fn view() -> FeatureView {
        FeatureView {
            name: "user_profile".to_string(),
            version: 3,
            entities: vec!["user".to_string()],
            join_keys: vec![JoinKey {
                name: "user_id".to_string(),
                dtype: ValueType::Int64,
            }],
            source: "profiles".to_string(),
            transformation: Some("SELECT user_id, age, event_timestamp FROM profiles".to_string()),
            timestamp_field: "event_timestamp".to_string(),
            features: vec![Feature {
                name: "age".to_string(),
                dtype: ValueType::Int64,
                description: "years".to_string(),
                vector_index: None,
            }],
            online: true,
            offline: true,
            ..FeatureView::default()
        }
    }

    fn emitter(sink: LineageSink, root: &Path) -> LineageEmitter {
        let source = source();
        LineageEmitter::new(Arc::new(sink), "larder", "demo", root).with_sources([&source])
    }

    fn read_events(path: &Path) -> Vec<Value> {
        let file = std::fs::File::open(path).unwrap();
        BufReader::new(file)
            .lines()
            .map(|line| serde_json::from_str(&line.unwrap()).unwrap())
            .collect()
    }

    fn assert_valid_event(event: &Value, event_type: &str) {
        assert_eq!(event["eventType"], event_type, "{event}");
        assert_eq!(event["schemaURL"], RUN_EVENT_SCHEMA_URL);
        assert_eq!(event["producer"], PRODUCER);
        let time = event["eventTime"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok(), "{time}");
        let run_id = event["run"]["runId"].as_str().unwrap();
        assert_eq!(run_id.len(), 36, "{run_id}");
        assert_eq!(&run_id[14..15], "4", "a version 4 UUID: {run_id}");
        assert_eq!(event["job"]["namespace"], "larder");
        // Typed round trip: every event reads back as a RunEvent.
        let typed: RunEvent = serde_json::from_value(event.clone()).unwrap();
        assert_eq!(typed.run.run_id, run_id);
    }

    #[test]
    fn file_sink_writes_start_then_complete_with_the_same_run_id() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("nested/lineage.jsonl");
        let emitter = emitter(LineageSink::file(&path), directory.path());
        let view = view();
        let run = emitter.start_materialize(&view);
        let run_id = run.run_id().to_string();
        let report = RunReport {
            view: view.name.clone(),
            version: view.version,
            status: "succeeded".to_string(),
            rows_scanned: 10,
            rows_written: 7,
            offline_rows: 10,
            ..RunReport::default()
        };
        run.finish_materialize(&report);

        let events = read_events(&path);
        assert_eq!(events.len(), 2);
        assert_valid_event(&events[0], "START");
        assert_valid_event(&events[1], "COMPLETE");
        for event in &events {
            assert_eq!(event["run"]["runId"], run_id.as_str());
            assert_eq!(event["job"]["name"], "user_profile.materialize");
            assert_eq!(
                event["job"]["facets"]["sql"]["query"],
                "SELECT user_id, age, event_timestamp FROM profiles"
            );
            assert_eq!(event["inputs"][0]["namespace"], "file");
            let input = event["inputs"][0]["name"].as_str().unwrap();
            assert!(Path::new(input).is_absolute(), "{input}");
            assert!(input.ends_with("data/profiles.parquet"), "{input}");
            assert_eq!(event["inputs"].as_array().unwrap().len(), 1);
            assert_eq!(event["outputs"][0]["namespace"], "larder://demo/offline");
            assert_eq!(event["outputs"][0]["name"], "user_profile@v3");
            assert_eq!(event["outputs"][1]["namespace"], "larder://demo/online");
            let fields = &event["outputs"][0]["facets"]["schema"]["fields"];
            assert_eq!(fields[0]["name"], "user_id");
            assert_eq!(fields[1]["type"], "timestamp");
            assert_eq!(fields[2]["name"], "age");
            assert_eq!(fields[2]["type"], "int64");
            assert_eq!(fields[2]["description"], "years");
        }
        let start_id = events[0]["run"]["runId"].as_str().unwrap();
        let complete = &events[1];
        assert_eq!(complete["run"]["runId"], start_id);
        assert_eq!(
            complete["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"],
            10
        );
        assert_eq!(
            complete["outputs"][1]["outputFacets"]["outputStatistics"]["rowCount"],
            7
        );
        assert_eq!(complete["run"]["facets"]["larder_run"]["rowsScanned"], 10);
        assert!(
            events[0]["outputs"][0].get("outputFacets").is_none(),
            "START has no statistics"
        );

        let second = emitter.start_materialize(&view);
        assert_ne!(second.run_id(), run_id, "each run has its own id");
    }

    #[test]
    fn failed_runs_send_fail_with_the_error_message() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("lineage.jsonl");
        let emitter = emitter(LineageSink::file(&path), directory.path());
        let view = view();
        let report = RunReport {
            status: "failed".to_string(),
            error: Some("check not_null(age) failed".to_string()),
            ..RunReport::default()
        };
        emitter.start_materialize(&view).finish_materialize(&report);
        let events = read_events(&path);
        assert_eq!(events.len(), 2);
        assert_valid_event(&events[1], "FAIL");
        assert_eq!(events[0]["run"]["runId"], events[1]["run"]["runId"]);
        let error = &events[1]["run"]["facets"]["errorMessage"];
        assert_eq!(error["message"], "check not_null(age) failed");
        assert_eq!(error["programmingLanguage"], "RUST");
        assert!(
            error["_schemaURL"]
                .as_str()
                .unwrap()
                .contains("ErrorMessageRunFacet")
        );
        assert!(error["_producer"].is_string());
    }

    #[test]
    fn backfills_read_their_history_and_write_the_offline_table() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("lineage.jsonl");
        let mut stream_source = source();
        stream_source.kind = DataSourceKind::Kafka {
            brokers: vec!["broker1:9092".to_string(), "broker2:9092".to_string()],
            topic: "clicks".to_string(),
            consumer_group: None,
            start_offset: None,
            payload: Default::default(),
        };
        let emitter = LineageEmitter::new(
            Arc::new(LineageSink::file(&path)),
            "larder",
            "demo",
            directory.path(),
        )
        .with_sources([&stream_source]);
        let view = view();
        emitter
            .start_backfill(&view, None)
            .complete(&RunStatistics {
                offline_rows: Some(5),
                ..RunStatistics::default()
            });
        let events = read_events(&path);
        assert_valid_event(&events[0], "START");
        assert_valid_event(&events[1], "COMPLETE");
        assert_eq!(events[1]["job"]["name"], "user_profile.backfill");
        assert_eq!(events[1]["inputs"][0]["namespace"], "kafka://broker1:9092");
        assert_eq!(events[1]["inputs"][0]["name"], "clicks");
        assert_eq!(events[1]["outputs"].as_array().unwrap().len(), 1);
        assert_eq!(
            events[1]["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"],
            5
        );
    }

    #[test]
    fn source_paths_name_their_dataset() {
        let emitter = LineageEmitter::new(
            Arc::new(LineageSink::file("unused")),
            "larder",
            "demo",
            "/repo",
        );
        let s3 = emitter.path_dataset("s3://lake/events/2026/*.parquet");
        assert_eq!(
            (s3.namespace.as_str(), s3.name.as_str()),
            ("s3://lake", "events/2026/*.parquet")
        );
        let s3a = emitter.path_dataset("s3a://lake/x.csv");
        assert_eq!(s3a.namespace, "s3://lake");
        let local = emitter.path_dataset("data/x.parquet");
        assert_eq!(
            (local.namespace.as_str(), local.name.as_str()),
            ("file", "/repo/data/x.parquet")
        );
    }

    #[test]
    fn http_sink_posts_events_in_order_and_flush_waits_for_them() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let receiver = std::thread::spawn(move || {
            let mut bodies = Vec::new();
            for _ in 0..2 {
                let (mut stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0;
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                assert!(
                    request_line.starts_with("POST /api/v1/lineage "),
                    "{request_line}"
                );
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                bodies.push(String::from_utf8(body).unwrap());
                stream
                    .write_all(
                        b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    )
                    .unwrap();
            }
            bodies
        });
        let sink = LineageSink::http(
            format!("http://{address}/api/v1/lineage"),
            Duration::from_secs(5),
        );
        let directory = tempfile::tempdir().unwrap();
        let emitter = emitter(sink, directory.path());
        emitter
            .start_materialize(&view())
            .fail("the source is missing");
        assert!(emitter.sink().flush(Duration::from_secs(10)));
        let bodies = receiver.join().unwrap();
        let events: Vec<Value> = bodies
            .iter()
            .map(|body| serde_json::from_str(body).unwrap())
            .collect();
        assert_valid_event(&events[0], "START");
        assert_valid_event(&events[1], "FAIL");
        assert_eq!(events[0]["run"]["runId"], events[1]["run"]["runId"]);
    }

    #[test]
    fn an_unreachable_catalog_is_only_a_warning() {
        // Nothing listens on the port once the listener is dropped.
        let address = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let sink = LineageSink::http(
            format!("http://{address}/api/v1/lineage"),
            Duration::from_secs(2),
        );
        let directory = tempfile::tempdir().unwrap();
        let emitter = emitter(sink, directory.path());
        emitter
            .start_materialize(&view())
            .complete(&RunStatistics::default());
        assert!(
            emitter.sink().flush(Duration::from_secs(10)),
            "failures count as done"
        );

        let blocked = directory.path().join("file-not-folder");
        std::fs::write(&blocked, "").unwrap();
        let sink = LineageSink::file(blocked.join("lineage.jsonl"));
        let event = emitter.start_materialize(&view());
        let error = sink
            .try_send(&event.event(EventType::Start, Facets::new(), Vec::new()))
            .unwrap_err();
        assert!(matches!(error, LineageError::Write { .. }), "{error}");
    }
}
