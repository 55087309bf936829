//! Erasure (GDPR): forgetting entities in every store that keeps rows of them, as a durable
//! job that ends with an append-only audit record.
//!
//! An erasure names entities by join key values (`user_id=123`). Every feature view keyed by
//! exactly those join keys is a target, in every version up to the current one: its online
//! table, its change-detection digests and its offline history (rewritten file by file, each
//! swapped atomically). Views keyed by more join keys than given (a composite key holding
//! `user_id` among others) are listed as skipped in the answer and the audit record.
//!
//! **Durable.** Before anything is erased the planned job (the targets with their keys) is
//! written to `pending/{request_id}.json` and synced; after each step the job is rewritten
//! with the step marked done and its counts. Every step is idempotent, so a job interrupted
//! at any point (even `kill -9`) is finished by [`Eraser::resume_pending`], which every
//! `larder forget` and `larder serve` runs first. The job file is removed only after the
//! audit record is durable.
//!
//! **Audited.** `audit.jsonl` gets one line per finished erasure: request id, who, when, the
//! entity keys hashed (SHA-256 over a random per-repo salt kept in `salt`, so the log does
//! not reveal ids but an operator holding the repo can check whether an id was erased), and
//! per store the rows removed and files rewritten.
//!
//! **Upstream.** Erasure removes what Larder holds. A later batch run writes an entity again
//! if its source still holds it (the digests are gone, so the rows count as new): erasure
//! must also be applied to the sources.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use larder_core::{EntityKey, EntityKeyList, FeatureView, Timestamp, Value, ValueType};
use larder_offline::{OfflineStore, SharedOfflineStore};
use larder_online::{SharedDigestStore, SharedOnlineStore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why an erasure could not be planned or run.
#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    /// The request names no entity, or its columns differ in length.
    #[error("{0}")]
    InvalidRequest(String),
    /// No feature view has a join key of that name.
    #[error("no feature view has a join key named '{name}' (join keys: {known})")]
    UnknownJoinKey {
        /// The name given.
        name: String,
        /// Every join key of the registry.
        known: String,
    },
    /// A value does not fit the join key's type.
    #[error("join key '{name}' is {dtype}; {value} is not a value of that type")]
    InvalidValue {
        /// The join key.
        name: String,
        /// Its declared type.
        dtype: String,
        /// What was given.
        value: String,
    },
    /// A store failed; the job stays pending and is finished by the next resume.
    #[error("erasure {request_id} stopped at {step} and will be finished on resume: {message}")]
    Store {
        /// The job.
        request_id: String,
        /// The step that failed (`online/user_profile/v2`).
        step: String,
        /// The store's message.
        message: String,
    },
    /// The job or audit files could not be read or written.
    #[error("erasure state {path}: {message}")]
    State {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// Rows removed from one store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreCounts {
    /// Rows removed (or, in a verification, still present).
    pub rows: u64,
    /// Files rewritten or removed (offline store).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub files_rewritten: u64,
    /// Files read to look for the entities (offline store).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub files_scanned: u64,
    /// Files not read because their join keys' bloom filters rule the entities out
    /// (offline store).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub files_pruned: u64,
    /// Bytes written by rewrites (offline store).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes_written: u64,
}

fn is_zero(number: &u64) -> bool {
    *number == 0
}

impl StoreCounts {
    fn add(&mut self, other: StoreCounts) {
        self.rows += other.rows;
        self.files_rewritten += other.files_rewritten;
        self.files_scanned += other.files_scanned;
        self.files_pruned += other.files_pruned;
        self.bytes_written += other.bytes_written;
    }
}

/// A view that holds the entities' join keys among others, and so was not erased.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedView {
    /// The view.
    pub view: String,
    /// Why.
    pub reason: String,
}

/// One finished erasure, as the audit log records it and the API answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasureReport {
    /// The job's id.
    pub request_id: String,
    /// Who asked (a user name or token id; never a secret).
    pub requested_by: String,
    /// When it was asked (RFC 3339).
    pub requested_at: String,
    /// When it finished (RFC 3339).
    pub completed_at: String,
    /// How many entities were named.
    pub entities: usize,
    /// The entity keys, salted and hashed (SHA-256, hex).
    pub entity_key_hashes: Vec<String>,
    /// The views erased, with their versions (`user_profile:v1..v2`).
    pub views: Vec<String>,
    /// Per store (`online`, `digests`, `offline`): what was removed.
    pub stores: BTreeMap<String, StoreCounts>,
    /// Views not erased, and why.
    pub skipped: Vec<SkippedView>,
}

/// What a verification found still present, per store (all zero after an erasure).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Per store (`online`, `digests`, `offline`): rows of the entities still present.
    pub stores: BTreeMap<String, u64>,
    /// The views read.
    pub views: Vec<String>,
}

impl VerifyReport {
    /// Whether no store holds a row of the entities.
    pub fn is_clean(&self) -> bool {
        self.stores.values().all(|rows| *rows == 0)
    }
}

/// One view's part of a job: the view as applied and its entity keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct JobTarget {
    view: FeatureView,
    /// Entity keys, hex.
    keys: Vec<String>,
}

impl JobTarget {
    fn keys(&self) -> Result<Vec<EntityKey>, String> {
        self.keys
            .iter()
            .map(|hex_key| {
                hex::decode(hex_key)
                    .map(EntityKey::from_bytes)
                    .map_err(|error| format!("a job key is not hex: {error}"))
            })
            .collect()
    }

    /// The view as it was at each version up to the current one (same keys, same name).
    fn versions(&self) -> impl Iterator<Item = FeatureView> + '_ {
        (1..=self.view.version).map(|version| FeatureView {
            version,
            ..self.view.clone()
        })
    }
}

/// A view keyed by more join keys than the request gives (a composite key holding
/// `user_id`): which of its join keys were given, and the given values per entity.
struct PartialTarget {
    view: FeatureView,
    /// Positions in the view's join keys of the given ones, in the view's order.
    positions: Vec<usize>,
    /// Per entity, the given values (in the view's order) encoded as an entity key.
    wanted: std::collections::HashSet<Vec<u8>>,
}

impl PartialTarget {
    /// Whether a full key of the view holds one of the wanted entities.
    fn matches(&self, key: &[u8]) -> Result<bool, ErasureError> {
        let values = EntityKey::from_bytes(key.to_vec())
            .values()
            .map_err(|error| ErasureError::InvalidRequest(error.to_string()))?;
        let given: Vec<Value> = self
            .positions
            .iter()
            .filter_map(|position| values.get(*position).cloned())
            .collect();
        Ok(given.len() == self.positions.len() && self.wanted.contains(&encode_values(&given)?))
    }
}

/// Join key values as entity key bytes.
fn encode_values(values: &[Value]) -> Result<Vec<u8>, ErasureError> {
    let mut bytes = Vec::new();
    EntityKey::encode_values_into(values, &mut bytes)
        .map_err(|error| ErasureError::InvalidRequest(error.to_string()))?;
    Ok(bytes)
}

/// A job claimed by this process ([`Eraser::claim`]).
struct JobClaim {
    file: std::fs::File,
    path: PathBuf,
}

impl JobClaim {
    /// Removes the lock file of a finished job, then lets go of the lock.
    fn release(self) {
        // A leftover lock file of a finished job is harmless; removing it keeps the folder
        // to the pending jobs.
        let _ = std::fs::remove_file(&self.path);
        drop(self.file);
    }
}

/// A planned or running erasure, as its job file holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ErasureJob {
    request_id: String,
    requested_by: String,
    requested_at: String,
    entities: usize,
    entity_key_hashes: Vec<String>,
    targets: Vec<JobTarget>,
    skipped: Vec<SkippedView>,
    /// Steps finished (`online/user_profile/v2`).
    done: BTreeSet<String>,
    /// Counts of the finished steps, per store.
    counts: BTreeMap<String, StoreCounts>,
}

/// A store beside the online and offline stores that keeps state per entity (the stream
/// lane's aggregation tiles; an embedding index): erasure removes the entities from it too,
/// before the online rows, so nothing it holds can write them back.
#[async_trait::async_trait]
pub trait EntityStateStore: Send + Sync + std::fmt::Debug {
    /// Its name in reports and audit records (`stream_state`).
    fn name(&self) -> &'static str;

    /// Removes the entities' state for every version of the view; how many entries existed.
    /// Idempotent.
    async fn erase(&self, view: &FeatureView, keys: &[EntityKey]) -> Result<u64, String>;

    /// How many entries of the entities it holds for any version of the view.
    async fn count(&self, view: &FeatureView, keys: &[EntityKey]) -> Result<u64, String>;

    /// Every entity key it holds for any version of the view: how an erasure by part of a
    /// composite key finds the full keys.
    async fn keys(&self, view: &FeatureView) -> Result<Vec<EntityKey>, String>;
}

/// Opens the change detection's digest store for one erasure: the shared one when it lives
/// in the online store, else its local file (which `larder materialize` must be able to open
/// between erasures, so it is not held).
pub type DigestOpener = Arc<dyn Fn() -> Result<SharedDigestStore, String> + Send + Sync>;

/// The stores an erasure runs over, and the folder of its jobs and audit log.
#[derive(Clone)]
pub struct Eraser {
    online: SharedOnlineStore,
    digests: DigestOpener,
    offline: SharedOfflineStore,
    state_stores: Vec<Arc<dyn EntityStateStore>>,
    folder: PathBuf,
}

impl std::fmt::Debug for Eraser {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Eraser")
            .field("online", &self.online.backend_name())
            .field("offline", &self.offline.backend_name())
            .field("state_stores", &self.state_stores)
            .field("folder", &self.folder)
            .finish_non_exhaustive()
    }
}

impl Eraser {
    /// An eraser over these stores, keeping jobs and the audit log in `folder`.
    pub fn new(
        online: SharedOnlineStore,
        digests: DigestOpener,
        offline: SharedOfflineStore,
        folder: PathBuf,
    ) -> Self {
        Self {
            online,
            digests,
            offline,
            state_stores: Vec::new(),
            folder,
        }
    }

    /// Erases from `store` too (first, before the online rows).
    pub fn with_state_store(mut self, store: Arc<dyn EntityStateStore>) -> Self {
        self.state_stores.push(store);
        self
    }

    /// The append-only audit log.
    pub fn audit_path(&self) -> PathBuf {
        self.folder.join("audit.jsonl")
    }

    fn pending_folder(&self) -> PathBuf {
        self.folder.join("pending")
    }

    /// Erases `entities` (join key columns, one entity per position) from every view keyed
    /// by exactly those join keys: plans the job, records it durably, runs it and audits it.
    /// Nothing is erased when the request is invalid.
    pub async fn forget(
        &self,
        views: &[FeatureView],
        entities: &[(String, Vec<Value>)],
        requested_by: &str,
    ) -> Result<ErasureReport, ErasureError> {
        let (mut job, partial) = self.plan(views, entities, requested_by)?;
        self.discover(&mut job, partial).await?;
        let Some(claim) = self.claim(&job.request_id)? else {
            return Err(state_error(
                &self.job_path(&job.request_id),
                "a new erasure's id is claimed by another process",
            ));
        };
        self.save_job(&job)?;
        self.run_job(job, claim).await
    }

    /// Finishes every job a crash or a failed store left pending; their reports.
    pub async fn resume_pending(&self) -> Result<Vec<ErasureReport>, ErasureError> {
        let folder = self.pending_folder();
        let mut paths: Vec<PathBuf> = match std::fs::read_dir(&folder) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| {
                    path.extension()
                        .is_some_and(|extension| extension == "json")
                })
                .collect(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(state_error(&folder, error)),
        };
        paths.sort();
        let mut reports = Vec::new();
        for path in paths {
            let Some(request_id) = path
                .file_stem()
                .map(|stem| stem.to_string_lossy().to_string())
            else {
                continue;
            };
            // A job another process is running (a `larder forget` beside `larder serve` on a
            // remote store) is theirs to finish.
            let Some(claim) = self.claim(&request_id)? else {
                continue;
            };
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                // Finished by that other process between the listing and the claim.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(state_error(&path, error)),
            };
            let job: ErasureJob =
                serde_json::from_slice(&bytes).map_err(|error| state_error(&path, error))?;
            reports.push(self.run_job(job, claim).await?);
        }
        Ok(reports)
    }

    /// Reads every store for rows of `entities` (the same targets [`Eraser::forget`] would
    /// erase) and counts what is still there. The offline count reads the views' join keys.
    pub async fn verify(
        &self,
        views: &[FeatureView],
        entities: &[(String, Vec<Value>)],
    ) -> Result<VerifyReport, ErasureError> {
        let (mut job, partial) = self.plan(views, entities, "verify")?;
        self.discover(&mut job, partial).await?;
        let digest_store = (self.digests)().map_err(|message| ErasureError::Store {
            request_id: "verify".to_string(),
            step: "digests".to_string(),
            message,
        })?;
        let mut report = VerifyReport::default();
        for target in &job.targets {
            let keys = target.keys().map_err(ErasureError::InvalidRequest)?;
            let key_list = keys.iter().collect::<EntityKeyList>();
            for store in &self.state_stores {
                let rows = store.count(&target.view, &keys).await.map_err(|message| {
                    ErasureError::Store {
                        request_id: "verify".to_string(),
                        step: format!("{}/{}", store.name(), target.view.name),
                        message,
                    }
                })?;
                *report.stores.entry(store.name().to_string()).or_default() += rows;
            }
            for view in target.versions() {
                let id = view.id();
                let step = |store: &str| format!("{store}/{}/v{}", id.name, id.version);
                let store_error = |step: String, message: String| ErasureError::Store {
                    request_id: "verify".to_string(),
                    step,
                    message,
                };
                let online = self
                    .online
                    .read_rows(&id, &keys)
                    .await
                    .map_err(|error| store_error(step("online"), error.to_string()))?;
                *report.stores.entry("online".to_string()).or_default() +=
                    online.iter().flatten().count() as u64;
                let digests = digest_store
                    .read_digests(&id, &key_list)
                    .await
                    .map_err(|error| store_error(step("digests"), error.to_string()))?;
                *report.stores.entry("digests".to_string()).or_default() +=
                    digests.iter().flatten().count() as u64;
                let offline = count_offline_rows(self.offline.as_ref(), &view, &keys)
                    .await
                    .map_err(|message| store_error(step("offline"), message))?;
                *report.stores.entry("offline".to_string()).or_default() += offline;
                report.views.push(id.to_string());
            }
        }
        Ok(report)
    }

    /// Resolves the request against the views: targets with typed keys, skipped views.
    ///
    /// Views keyed by more join keys than given come back as [`PartialTarget`]s, whose full
    /// keys [`Eraser::discover`] finds before the job is recorded.
    fn plan(
        &self,
        views: &[FeatureView],
        entities: &[(String, Vec<Value>)],
        requested_by: &str,
    ) -> Result<(ErasureJob, Vec<PartialTarget>), ErasureError> {
        let given: BTreeMap<&str, &Vec<Value>> = entities
            .iter()
            .map(|(name, values)| (name.as_str(), values))
            .collect();
        if given.is_empty() {
            return Err(ErasureError::InvalidRequest(
                "name at least one entity (join_key=value)".to_string(),
            ));
        }
        if given.len() != entities.len() {
            return Err(ErasureError::InvalidRequest(
                "a join key is named twice".to_string(),
            ));
        }
        let count = entities[0].1.len();
        if entities.iter().any(|(_, values)| values.len() != count) || count == 0 {
            return Err(ErasureError::InvalidRequest(
                "every join key needs one value per entity (columns of equal, non-zero length)"
                    .to_string(),
            ));
        }
        let known: BTreeSet<&str> = views
            .iter()
            .flat_map(|view| view.join_keys.iter().map(|key| key.name.as_str()))
            .collect();
        if let Some(unknown) = given.keys().find(|name| !known.contains(*name)) {
            return Err(ErasureError::UnknownJoinKey {
                name: (*unknown).to_string(),
                known: known.iter().copied().collect::<Vec<_>>().join(", "),
            });
        }
        let salt = self.salt()?;
        let mut targets = Vec::new();
        let mut partial = Vec::new();
        let mut skipped = Vec::new();
        let mut hashes = BTreeSet::new();
        for view in views {
            let names: BTreeSet<&str> =
                view.join_keys.iter().map(|key| key.name.as_str()).collect();
            if names.len() == given.len() && names.iter().all(|name| given.contains_key(name)) {
                let columns: Vec<(&larder_core::JoinKey, &Vec<Value>)> = view
                    .join_keys
                    .iter()
                    .map(|join_key| (join_key, given[join_key.name.as_str()]))
                    .collect();
                let keys = (0..count)
                    .map(|row| {
                        let values = columns
                            .iter()
                            .map(|(join_key, column)| typed_key_value(join_key, &column[row]))
                            .collect::<Result<Vec<_>, _>>()?;
                        let key = EntityKey::from_values(&values)
                            .map_err(|error| ErasureError::InvalidRequest(error.to_string()))?;
                        hashes.insert(salted_hash(&salt, key.as_bytes()));
                        Ok(hex::encode(key.as_bytes()))
                    })
                    .collect::<Result<Vec<_>, ErasureError>>()?;
                targets.push(JobTarget {
                    view: view.clone(),
                    keys,
                });
            } else if given.keys().all(|name| names.contains(name)) {
                // Keyed by more join keys than given: its full keys are found in the stores.
                let positions: Vec<usize> = view
                    .join_keys
                    .iter()
                    .enumerate()
                    .filter(|(_, join_key)| given.contains_key(join_key.name.as_str()))
                    .map(|(position, _)| position)
                    .collect();
                let columns: Vec<(&larder_core::JoinKey, &Vec<Value>)> = positions
                    .iter()
                    .map(|position| {
                        let join_key = &view.join_keys[*position];
                        (join_key, given[join_key.name.as_str()])
                    })
                    .collect();
                let wanted = (0..count)
                    .map(|row| {
                        let values = columns
                            .iter()
                            .map(|(join_key, column)| typed_key_value(join_key, &column[row]))
                            .collect::<Result<Vec<_>, _>>()?;
                        encode_values(&values)
                    })
                    .collect::<Result<std::collections::HashSet<_>, ErasureError>>()?;
                partial.push(PartialTarget {
                    view: view.clone(),
                    positions,
                    wanted,
                });
            } else if names.iter().any(|name| given.contains_key(name)) {
                skipped.push(SkippedView {
                    view: view.name.clone(),
                    reason: format!(
                        "keyed by ({}), not by every join key given",
                        view.join_keys
                            .iter()
                            .map(|key| key.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
        }
        let now = Timestamp::now();
        let job = ErasureJob {
            request_id: request_id(now),
            requested_by: requested_by.to_string(),
            requested_at: now.to_rfc3339(),
            entities: count,
            entity_key_hashes: hashes.into_iter().collect(),
            targets,
            skipped,
            done: BTreeSet::new(),
            counts: BTreeMap::new(),
        };
        Ok((job, partial))
    }

    /// Finds the full keys of the partial targets (in the digests, the offline history and
    /// the state stores, every version) and adds them to the job as ordinary targets.
    async fn discover(
        &self,
        job: &mut ErasureJob,
        partial: Vec<PartialTarget>,
    ) -> Result<(), ErasureError> {
        if partial.is_empty() {
            return Ok(());
        }
        let store_error = |step: String, message: String| ErasureError::Store {
            request_id: job.request_id.clone(),
            step,
            message,
        };
        let digests = (self.digests)().map_err(|message| store_error("digests".into(), message))?;
        let salt = self.salt()?;
        let mut hashes: BTreeSet<String> = job.entity_key_hashes.iter().cloned().collect();
        let mut targets = Vec::new();
        for target in partial {
            let mut found: BTreeSet<Vec<u8>> = BTreeSet::new();
            let mut offer = |key: &[u8]| -> Result<(), ErasureError> {
                if target.matches(key)? {
                    found.insert(key.to_vec());
                }
                Ok(())
            };
            for version in 1..=target.view.version {
                let view = FeatureView {
                    version,
                    ..target.view.clone()
                };
                let step = |store: &str| format!("{store}/{}/v{version}", view.name);
                for key in digests
                    .list_keys(&view.id())
                    .await
                    .map_err(|error| store_error(step("digests"), error.to_string()))?
                {
                    offer(key.as_bytes())?;
                }
                for key in offline_keys(self.offline.as_ref(), &view)
                    .await
                    .map_err(|message| store_error(step("offline"), message))?
                {
                    offer(&key)?;
                }
            }
            for store in &self.state_stores {
                for key in store
                    .keys(&target.view)
                    .await
                    .map_err(|message| store_error(store.name().to_string(), message))?
                {
                    offer(key.as_bytes())?;
                }
            }
            for key in &found {
                hashes.insert(salted_hash(&salt, key));
            }
            targets.push(JobTarget {
                view: target.view,
                keys: found.iter().map(hex::encode).collect(),
            });
        }
        job.targets.extend(targets);
        job.entity_key_hashes = hashes.into_iter().collect();
        Ok(())
    }

    /// Runs the steps not done yet, saving the job after each; audits and removes the job.
    async fn run_job(
        &self,
        mut job: ErasureJob,
        claim: JobClaim,
    ) -> Result<ErasureReport, ErasureError> {
        let targets = job.targets.clone();
        let digests = (self.digests)().map_err(|message| ErasureError::Store {
            request_id: job.request_id.clone(),
            step: "digests".to_string(),
            message,
        })?;
        for target in &targets {
            let keys = target.keys().map_err(ErasureError::InvalidRequest)?;
            for store in &self.state_stores {
                let step = format!("{}/{}", store.name(), target.view.name);
                if job.done.contains(&step) {
                    continue;
                }
                let rows = store.erase(&target.view, &keys).await.map_err(|message| {
                    ErasureError::Store {
                        request_id: job.request_id.clone(),
                        step: step.clone(),
                        message,
                    }
                })?;
                job.counts
                    .entry(store.name().to_string())
                    .or_default()
                    .add(StoreCounts {
                        rows,
                        ..StoreCounts::default()
                    });
                job.done.insert(step);
                self.save_job(&job)?;
                crash_point(&job);
            }
            for view in target.versions() {
                for store in ["online", "digests", "offline"] {
                    let step = format!("{store}/{}/v{}", view.name, view.version);
                    if job.done.contains(&step) {
                        continue;
                    }
                    let counts = self
                        .erase_step(store, digests.as_ref(), &view, &keys)
                        .await
                        .map_err(|message| ErasureError::Store {
                            request_id: job.request_id.clone(),
                            step: step.clone(),
                            message,
                        })?;
                    job.counts.entry(store.to_string()).or_default().add(counts);
                    job.done.insert(step);
                    self.save_job(&job)?;
                    crash_point(&job);
                }
            }
        }
        let report = ErasureReport {
            request_id: job.request_id.clone(),
            requested_by: job.requested_by.clone(),
            requested_at: job.requested_at.clone(),
            completed_at: Timestamp::now().to_rfc3339(),
            entities: job.entities,
            entity_key_hashes: job.entity_key_hashes.clone(),
            views: targets
                .iter()
                .map(|target| format!("{}:v1..v{}", target.view.name, target.view.version))
                .collect(),
            stores: job.counts.clone(),
            skipped: job.skipped.clone(),
        };
        self.append_audit(&report)?;
        let path = self.job_path(&job.request_id);
        std::fs::remove_file(&path).map_err(|error| state_error(&path, error))?;
        claim.release();
        Ok(report)
    }

    /// Erases the keys from one store for one view version.
    async fn erase_step(
        &self,
        store: &str,
        digests: &dyn larder_online::DigestStore,
        view: &FeatureView,
        keys: &[EntityKey],
    ) -> Result<StoreCounts, String> {
        let id = view.id();
        match store {
            "online" => {
                let rows = self
                    .online
                    .delete_rows(&id, keys)
                    .await
                    .map_err(|error| error.to_string())?;
                Ok(StoreCounts {
                    rows,
                    ..StoreCounts::default()
                })
            }
            "digests" => {
                let present = digests
                    .read_digests(&id, &keys.iter().collect::<EntityKeyList>())
                    .await
                    .map_err(|error| error.to_string())?;
                digests
                    .delete_digests(&id, keys)
                    .await
                    .map_err(|error| error.to_string())?;
                digests.sync().await.map_err(|error| error.to_string())?;
                Ok(StoreCounts {
                    rows: present.iter().flatten().count() as u64,
                    ..StoreCounts::default()
                })
            }
            _ => {
                let offline = self.offline.clone();
                let view = view.clone();
                let keys = keys.to_vec();
                let summary =
                    tokio::task::spawn_blocking(move || offline.delete_entities(&view, &keys))
                        .await
                        .map_err(|error| error.to_string())?
                        .map_err(|error| error.to_string())?;
                Ok(StoreCounts {
                    rows: summary.rows,
                    files_rewritten: summary.files_rewritten,
                    files_scanned: summary.files_scanned,
                    files_pruned: summary.files_pruned,
                    bytes_written: summary.bytes_written,
                })
            }
        }
    }

    /// Claims a job for this process: an advisory lock on `pending/{request_id}.lock`, held
    /// until the claim drops or the process dies; `None` while another process holds it.
    fn claim(&self, request_id: &str) -> Result<Option<JobClaim>, ErasureError> {
        let path = self.pending_folder().join(format!("{request_id}.lock"));
        create_parent(&path)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|error| state_error(&path, error))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(JobClaim { file, path })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(error)) => Err(state_error(&path, error)),
        }
    }

    fn job_path(&self, request_id: &str) -> PathBuf {
        self.pending_folder().join(format!("{request_id}.json"))
    }

    /// Writes the job file durably (a synced temporary file renamed over it).
    fn save_job(&self, job: &ErasureJob) -> Result<(), ErasureError> {
        let path = self.job_path(&job.request_id);
        let bytes = serde_json::to_vec(job).map_err(|error| state_error(&path, error))?;
        write_durably(&path, &bytes)
    }

    fn append_audit(&self, report: &ErasureReport) -> Result<(), ErasureError> {
        let path = self.audit_path();
        let mut line = serde_json::to_vec(report).map_err(|error| state_error(&path, error))?;
        line.push(b'\n');
        create_parent(&path)?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|error| state_error(&path, error))?;
        file.write_all(&line)
            .and_then(|()| file.sync_all())
            .map_err(|error| state_error(&path, error))
    }

    /// The repo's random salt for key hashes, created on first use.
    fn salt(&self) -> Result<Vec<u8>, ErasureError> {
        let path = self.folder.join("salt");
        match std::fs::read(&path) {
            Ok(salt) if !salt.is_empty() => Ok(salt),
            Ok(_) => Err(state_error(&path, "the salt file is empty")),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let mut salt = vec![0_u8; 32];
                getrandom::fill(&mut salt).map_err(|error| state_error(&path, error))?;
                write_durably(&path, &salt)?;
                Ok(salt)
            }
            Err(error) => Err(state_error(&path, error)),
        }
    }
}

/// The entities erased so far, as the audit log holds them (salted hashes): what a batch run
/// checks its entities against, to report the ones its sources bring back.
#[derive(Debug)]
pub struct ForgottenEntities {
    salt: Vec<u8>,
    hashes: std::collections::HashSet<[u8; 32]>,
}

impl ForgottenEntities {
    /// Reads the audit log of the erasure folder; `None` when nothing was ever erased.
    pub fn load(folder: &Path) -> Result<Option<Self>, ErasureError> {
        let audit = folder.join("audit.jsonl");
        let text = match std::fs::read_to_string(&audit) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(state_error(&audit, error)),
        };
        let mut hashes = std::collections::HashSet::new();
        for (number, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let record: ErasureReport = serde_json::from_str(line)
                .map_err(|error| state_error(&audit, format!("line {}: {error}", number + 1)))?;
            for hash in record.entity_key_hashes {
                let mut bytes = [0_u8; 32];
                hex::decode_to_slice(&hash, &mut bytes).map_err(|error| {
                    state_error(&audit, format!("line {}: {error}", number + 1))
                })?;
                hashes.insert(bytes);
            }
        }
        if hashes.is_empty() {
            return Ok(None);
        }
        let salt_path = folder.join("salt");
        let salt = std::fs::read(&salt_path).map_err(|error| state_error(&salt_path, error))?;
        Ok(Some(Self { salt, hashes }))
    }

    /// How many entities were erased (each counted once, however often it was erased).
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether no entity was erased (never: [`ForgottenEntities::load`] gives `None` then).
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// How many of `keys` (entity key bytes) were erased before.
    pub fn count_among<'key>(&self, keys: impl Iterator<Item = &'key [u8]>) -> u64 {
        keys.filter(|key| self.hashes.contains(&salted_digest(&self.salt, key)))
            .count() as u64
    }
}

/// A given value as the join key's type; text names integer keys too (from a command line or
/// a file).
fn typed_key_value(join_key: &larder_core::JoinKey, value: &Value) -> Result<Value, ErasureError> {
    let typed = match (value, &join_key.dtype) {
        (Value::Null, _) => None,
        (Value::String(text), ValueType::Int64) => text.trim().parse().map(Value::Int64).ok(),
        (Value::String(text), ValueType::Int32) => text.trim().parse().map(Value::Int32).ok(),
        (value, dtype) => value.clone().coerce_to(dtype).ok(),
    };
    typed.ok_or_else(|| ErasureError::InvalidValue {
        name: join_key.name.clone(),
        dtype: join_key.dtype.to_string(),
        value: serde_json::to_string(value).unwrap_or_default(),
    })
}

/// Calls `visit` with the entity key of every row of a view version's offline history
/// (reading only the join key and event time columns).
async fn scan_offline_keys(
    store: &dyn OfflineStore,
    view: &FeatureView,
    mut visit: impl FnMut(&[u8]),
) -> Result<(), String> {
    use futures::StreamExt;
    let Some(rows) = store.rows(view).map_err(|error| error.to_string())? else {
        return Ok(());
    };
    let keys_only = FeatureView {
        features: Vec::new(),
        ..view.clone()
    };
    let mut columns: Vec<String> = view.join_keys.iter().map(|key| key.name.clone()).collect();
    columns.push(view.timestamp_field.clone());
    let mut stream = rows
        .read(&columns)
        .await
        .map_err(|error| error.to_string())?;
    let mut key = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|error| error.to_string())?;
        let view_batch = larder_offline::ViewBatch::from_batch(&keys_only, &batch)
            .map_err(|error| error.to_string())?;
        for row in 0..view_batch.num_rows() {
            key.clear();
            view_batch
                .write_entity_key(row, &mut key)
                .map_err(|error| error.to_string())?;
            visit(&key);
        }
    }
    Ok(())
}

/// Counts the rows of a view version's offline history whose entity is one of `keys`.
async fn count_offline_rows(
    store: &dyn OfflineStore,
    view: &FeatureView,
    keys: &[EntityKey],
) -> Result<u64, String> {
    let wanted: BTreeSet<&[u8]> = keys.iter().map(EntityKey::as_bytes).collect();
    let mut found = 0;
    scan_offline_keys(store, view, |key| {
        if wanted.contains(key) {
            found += 1;
        }
    })
    .await?;
    Ok(found)
}

/// The distinct entity keys of a view version's offline history.
async fn offline_keys(
    store: &dyn OfflineStore,
    view: &FeatureView,
) -> Result<Vec<Vec<u8>>, String> {
    let mut keys = std::collections::HashSet::new();
    scan_offline_keys(store, view, |key| {
        if !keys.contains(key) {
            keys.insert(key.to_vec());
        }
    })
    .await?;
    Ok(keys.into_iter().collect())
}

/// The crash point after the N-th step of a job (counting steps done, resumed ones
/// included), `erasure.after_step.N`: how the tests stop an erasure at each point as
/// `kill -9` would ([`larder_core::fault`]).
fn crash_point(job: &ErasureJob) {
    larder_core::fault::crash_point(&format!("erasure.after_step.{}", job.done.len()));
}

/// SHA-256 of the repo's salt and an entity key's bytes: how the audit log names a key.
fn salted_digest(salt: &[u8], key: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(key);
    hasher.finalize().into()
}

/// [`salted_digest`] as hex.
fn salted_hash(salt: &[u8], key: &[u8]) -> String {
    hex::encode(salted_digest(salt, key))
}

/// `erase-20261203T171500Z-1a2b3c4d`: sortable by time, unique by its random tail.
fn request_id(now: Timestamp) -> String {
    let mut random = [0_u8; 4];
    // A failed random source leaves zeros; the time still orders and mostly separates ids.
    let _ = getrandom::fill(&mut random);
    let time = now.to_rfc3339().replace(['-', ':'], "");
    let time = time
        .split('.')
        .next()
        .unwrap_or_default()
        .trim_end_matches('Z');
    format!("erase-{time}Z-{}", hex::encode(random))
}

fn create_parent(path: &Path) -> Result<(), ErasureError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|error| state_error(parent, error))?;
    }
    Ok(())
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), ErasureError> {
    create_parent(path)?;
    let temporary = path.with_extension("partial");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        if let Some(parent) = path.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|error| state_error(path, error))
}

fn state_error(path: &Path, error: impl std::fmt::Display) -> ErasureError {
    ErasureError::State {
        path: path.display().to_string(),
        message: error.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn eraser(folder: &Path) -> Eraser {
        let digests: SharedDigestStore = Arc::new(larder_online::MemoryDigestStore::new());
        Eraser::new(
            Arc::new(larder_online::MemoryOnlineStore::new()),
            Arc::new(move || Ok(Arc::clone(&digests))),
            Arc::new(larder_offline::ParquetOfflineStore::new(
                folder.join("offline"),
            )),
            folder.join("erasure"),
        )
    }

    /// A job claimed by one holder (another process, in production) is not claimed twice,
    /// and is claimable again once released.
    #[test]
    fn a_job_is_claimed_by_one_holder_at_a_time() {
        let folder = tempfile::tempdir().unwrap();
        let eraser = eraser(folder.path());
        let first = eraser
            .claim("erase-1")
            .unwrap()
            .expect("a free job is claimed");
        assert!(eraser.claim("erase-1").unwrap().is_none(), "claimed twice");
        assert!(
            eraser.claim("erase-2").unwrap().is_some(),
            "another job is free"
        );
        first.release();
        assert!(
            eraser.claim("erase-1").unwrap().is_some(),
            "released, claimable again"
        );
    }

    /// A pending job held by another holder is left to it by `resume_pending`.
    #[tokio::test]
    async fn resume_leaves_a_job_claimed_elsewhere() {
        let folder = tempfile::tempdir().unwrap();
        let eraser = eraser(folder.path());
        let job = ErasureJob {
            request_id: "erase-held".to_string(),
            requested_by: "test".to_string(),
            requested_at: Timestamp::now().to_rfc3339(),
            entities: 0,
            entity_key_hashes: Vec::new(),
            targets: Vec::new(),
            skipped: Vec::new(),
            done: BTreeSet::new(),
            counts: BTreeMap::new(),
        };
        eraser.save_job(&job).unwrap();
        let held = eraser.claim("erase-held").unwrap().expect("claimed");
        assert!(eraser.resume_pending().await.unwrap().is_empty());
        assert!(
            eraser.job_path("erase-held").exists(),
            "the holder's job is untouched"
        );
        held.release();
        let finished = eraser.resume_pending().await.unwrap();
        assert_eq!(finished.len(), 1);
        assert!(!eraser.job_path("erase-held").exists());
        assert_eq!(
            std::fs::read_to_string(eraser.audit_path())
                .unwrap()
                .lines()
                .count(),
            1
        );
    }
}
