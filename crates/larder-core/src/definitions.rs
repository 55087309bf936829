//! Resolved definitions: what `larder apply` records in the registry and what every other
//! component reads. They use Feast's nouns (Entity, DataSource, FeatureView, FeatureService)
//! so that Feast users feel at home.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::CoreError;
use crate::time::TtlDuration;
use crate::value::ValueType;

/// One column that identifies an entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinKey {
    /// Column name, as it appears in sources and requests.
    pub name: String,
    /// Its type: int32, int64 or string.
    pub dtype: ValueType,
}

/// A kind of thing that features describe (a user, a driver, a document).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entity {
    /// Unique name.
    pub name: String,
    /// The columns that identify one entity, in order.
    pub join_keys: Vec<JoinKey>,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Who to ask about it.
    #[serde(default)]
    pub owner: String,
    /// Free-form labels.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// The file format of a batch file source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    /// Apache Parquet.
    Parquet,
    /// Comma-separated values with a header row.
    Csv,
    /// A Delta Lake table: the path is the table's root (the folder of `_delta_log`), read at
    /// its latest version.
    Delta,
}

impl FileFormat {
    /// The name used in definitions (`format: parquet`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Parquet => "parquet",
            Self::Csv => "csv",
            Self::Delta => "delta",
        }
    }
}

/// Where a data source's rows come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DataSourceKind {
    /// Parquet or CSV files (a path, a directory or a glob) or a Delta Lake table, relative
    /// to the feature repo or on S3-compatible object storage (`s3://bucket/key`).
    File {
        /// Path, directory or glob.
        path: String,
        /// File format.
        format: FileFormat,
    },
    /// A topic on a Kafka-protocol broker (the streaming lane).
    Kafka {
        /// Bootstrap brokers, `host:port`.
        brokers: Vec<String>,
        /// Topic name.
        topic: String,
        /// Consumer group shared by the `larder` processes that consume it.
        consumer_group: Option<String>,
        /// `earliest` or `latest`.
        start_offset: Option<String>,
        /// How messages are decoded.
        #[serde(default)]
        payload: crate::stream::StreamPayload,
    },
    /// A subject of a NATS JetStream stream (the streaming lane).
    Nats {
        /// Server URL.
        url: String,
        /// Stream name.
        stream: String,
        /// Subject filter.
        subject: String,
        /// Durable consumer name.
        durable: Option<String>,
        /// How messages are decoded.
        #[serde(default)]
        payload: crate::stream::StreamPayload,
    },
    /// Rows written directly by producers through the push API.
    Push,
}

impl DataSourceKind {
    /// Whether rows of this source are read in batch (by `materialize`).
    pub fn is_batch(&self) -> bool {
        matches!(self, Self::File { .. })
    }

    /// Whether rows of this source arrive on a stream (Kafka or NATS).
    pub fn is_stream(&self) -> bool {
        matches!(self, Self::Kafka { .. } | Self::Nats { .. })
    }

    /// How the messages of a stream source are decoded; `None` for other sources.
    pub fn stream_payload(&self) -> Option<&crate::stream::StreamPayload> {
        match self {
            Self::Kafka { payload, .. } | Self::Nats { payload, .. } => Some(payload),
            _ => None,
        }
    }

    /// A short name of the kind, for messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::File { .. } => "file",
            Self::Kafka { .. } => "kafka",
            Self::Nats { .. } => "nats",
            Self::Push => "push",
        }
    }
}

/// A named origin of rows (Feast's DataSource).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSource {
    /// Unique name; SQL transformations refer to the source by this name.
    pub name: String,
    /// Where the rows come from.
    pub kind: DataSourceKind,
    /// The column that holds each row's event time.
    pub timestamp_field: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Who to ask about it.
    #[serde(default)]
    pub owner: String,
    /// Free-form labels.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// One feature of a feature view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feature {
    /// Name, unique within its view.
    pub name: String,
    /// Declared type.
    pub dtype: ValueType,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// A nearest-neighbour index over this feature (only on a `vector<N>` feature; at most
    /// one per view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector_index: Option<VectorIndexSpec>,
}

/// How vectors are compared by a nearest-neighbour search.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VectorMetric {
    /// `1 − cos(a, b)`: 0 for the same direction, 2 for opposite ones.
    #[default]
    Cosine,
    /// `1 − a·b` (for vectors the producer normalised, or scores where larger is closer).
    Dot,
    /// The squared Euclidean distance `Σ (aᵢ − bᵢ)²`.
    L2,
}

impl VectorMetric {
    /// The metric's name in YAML and answers (`cosine`, `dot`, `l2`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Cosine => "cosine",
            Self::Dot => "dot",
            Self::L2 => "l2",
        }
    }

    /// Parses a name, case-insensitively; Feast's `COSINE`, `INNER_PRODUCT`/`DOT_PRODUCT` and
    /// `L2`/`EUCLIDEAN` are accepted too.
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "cosine" => Some(Self::Cosine),
            "dot" | "inner_product" | "dot_product" | "ip" => Some(Self::Dot),
            "l2" | "euclidean" | "l2sq" => Some(Self::L2),
            _ => None,
        }
    }

    /// The distance between two vectors of one length under this metric (the exact
    /// reference every index is measured against).
    pub fn distance(self, left: &[f32], right: &[f32]) -> f32 {
        match self {
            Self::L2 => left.iter().zip(right).map(|(a, b)| (a - b) * (a - b)).sum(),
            Self::Dot => 1.0 - left.iter().zip(right).map(|(a, b)| a * b).sum::<f32>(),
            Self::Cosine => {
                let (mut dot, mut left_norm, mut right_norm) = (0.0f32, 0.0f32, 0.0f32);
                for (a, b) in left.iter().zip(right) {
                    dot += a * b;
                    left_norm += a * a;
                    right_norm += b * b;
                }
                let norms = (left_norm * right_norm).sqrt();
                if norms == 0.0 { 1.0 } else { 1.0 - dot / norms }
            }
        }
    }
}

impl fmt::Display for VectorMetric {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// A nearest-neighbour index over a `vector<N>` feature: the metric and the HNSW graph's
/// parameters (defaults reach recall@10 ≥ 0.95 on clustered embeddings; BENCHMARKS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VectorIndexSpec {
    /// How vectors are compared.
    #[serde(default)]
    pub metric: VectorMetric,
    /// Graph edges per node (HNSW `M`): more is better recall and more memory.
    #[serde(default = "VectorIndexSpec::default_connectivity")]
    pub connectivity: u32,
    /// Candidates kept while inserting (`ef_construction`): more is a better graph, slower
    /// writes.
    #[serde(default = "VectorIndexSpec::default_expansion_add")]
    pub expansion_add: u32,
    /// Candidates kept while searching (`ef_search`, at least k): more is better recall,
    /// slower queries.
    #[serde(default = "VectorIndexSpec::default_expansion_search")]
    pub expansion_search: u32,
}

impl VectorIndexSpec {
    /// Default graph edges per node.
    pub const DEFAULT_CONNECTIVITY: u32 = 16;
    /// Default insertion breadth.
    pub const DEFAULT_EXPANSION_ADD: u32 = 128;
    /// Default search breadth.
    pub const DEFAULT_EXPANSION_SEARCH: u32 = 128;

    fn default_connectivity() -> u32 {
        Self::DEFAULT_CONNECTIVITY
    }

    fn default_expansion_add() -> u32 {
        Self::DEFAULT_EXPANSION_ADD
    }

    fn default_expansion_search() -> u32 {
        Self::DEFAULT_EXPANSION_SEARCH
    }
}

impl Default for VectorIndexSpec {
    fn default() -> Self {
        Self {
            metric: VectorMetric::default(),
            connectivity: Self::DEFAULT_CONNECTIVITY,
            expansion_add: Self::DEFAULT_EXPANSION_ADD,
            expansion_search: Self::DEFAULT_EXPANSION_SEARCH,
        }
    }
}

/// The feature a view's nearest-neighbour index covers ([`FeatureView::vector_index`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IndexedFeature {
    /// Its position among the view's features (and in each encoded row).
    pub position: usize,
    /// Components per vector.
    pub dimension: u32,
    /// Metric and graph settings.
    pub spec: VectorIndexSpec,
}

/// Identifies the online and offline tables of one version of a feature view.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FeatureViewId {
    /// Feature view name.
    pub name: String,
    /// Feature view version.
    pub version: u32,
}

impl fmt::Display for FeatureViewId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}@v{}", self.name, self.version)
    }
}

/// A group of features computed from one source for one set of entities, served together.
/// `Default` is an empty view (no name, version 0), for building one field by field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureView {
    /// Unique name.
    pub name: String,
    /// Version; must grow whenever the SQL, the source, the entities or the schema change.
    pub version: u32,
    /// Entity names, in order.
    pub entities: Vec<String>,
    /// The join keys of those entities, in order (resolved by `apply`).
    pub join_keys: Vec<JoinKey>,
    /// Name of the data source.
    pub source: String,
    /// SQL transformation over the sources (by name); `None` selects the source as it is.
    pub transformation: Option<String>,
    /// Repo-relative path of the SQL file, for messages.
    pub transformation_path: Option<String>,
    /// The event-time column of the transformation's output.
    pub timestamp_field: String,
    /// Features, in declared order.
    pub features: Vec<Feature>,
    /// Values older than this are served as missing (`OUTSIDE_MAX_AGE`); `None`: forever.
    pub ttl: Option<TtlDuration>,
    /// Whether the view is materialized to the online store and served.
    pub online: bool,
    /// Whether the view is materialized to the offline store.
    pub offline: bool,
    /// Who to ask about it.
    pub owner: String,
    /// Importance tier (e.g. `tier1`), for alerting and discovery.
    pub tier: Option<String>,
    /// Free-form labels.
    pub tags: BTreeMap<String, String>,
    /// Free text.
    pub description: String,
    /// How stale the view may be before it breaks its promise.
    pub freshness_sla: Option<TtlDuration>,
    /// Data-quality checks run over the transformation's output before a batch run writes
    /// anything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<DataQualityCheck>,
    /// What a full batch run does with entities that were materialized before and are no
    /// longer in the transformation's output.
    #[serde(default, skip_serializing_if = "OnMissing::is_keep")]
    pub on_missing: OnMissing,
    /// When `larder serve` runs the view's batch materialization: a cron schedule in UTC
    /// (see [`crate::CronSchedule`]); `None`: only when asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
}

/// What a full batch run does with an entity that disappeared from the view's output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMissing {
    /// Keep serving its last value (until the view's TTL, if any, hides it).
    #[default]
    Keep,
    /// Delete it from the online store (a tombstone): the source is the whole truth.
    Delete,
}

impl OnMissing {
    /// Whether this is the default, [`OnMissing::Keep`].
    pub fn is_keep(&self) -> bool {
        matches!(self, Self::Keep)
    }
}

/// What a failing data-quality check does to a batch run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckSeverity {
    /// The run stops before anything is written online or offline.
    #[default]
    Error,
    /// The failure is reported and the run goes on.
    Warn,
}

/// One data-quality rule over a feature view's transformation output.
///
/// Numbers and allowed values are kept as SQL literal text (validated when the repo is
/// loaded), so that the definition stays exact and comparable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CheckRule {
    /// The column has no nulls.
    NotNull {
        /// Column name.
        column: String,
    },
    /// Every non-null value lies in `[min, max]` (an absent side is unbounded).
    Range {
        /// Column name.
        column: String,
        /// Inclusive minimum, a numeric literal.
        min: Option<String>,
        /// Inclusive maximum, a numeric literal.
        max: Option<String>,
    },
    /// Every non-null value is one of these (SQL literals: `'FR'`, `3`, `true`).
    AllowedValues {
        /// Column name.
        column: String,
        /// The allowed values as SQL literals.
        values: Vec<String>,
    },
    /// At most one row per (join keys, event time).
    UniqueEntityPerTimestamp,
    /// The row count is within `max_change_percent` % of the last successful run's.
    RowCount {
        /// Allowed relative change in percent, a numeric literal.
        max_change_percent: String,
    },
    /// The newest event time is at most `max_age` old.
    Freshness {
        /// Largest allowed age of the newest row.
        max_age: TtlDuration,
    },
}

/// A data-quality check: a rule and its severity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataQualityCheck {
    /// The rule.
    pub rule: CheckRule,
    /// Error (blocks the run) or warn.
    #[serde(default)]
    pub severity: CheckSeverity,
}

impl DataQualityCheck {
    /// A short name for messages: `not_null(age)`, `range(age)`, `row_count`.
    pub fn name(&self) -> String {
        match &self.rule {
            CheckRule::NotNull { column } => format!("not_null({column})"),
            CheckRule::Range { column, .. } => format!("range({column})"),
            CheckRule::AllowedValues { column, .. } => format!("allowed_values({column})"),
            CheckRule::UniqueEntityPerTimestamp => "unique_entity_per_timestamp".to_string(),
            CheckRule::RowCount { .. } => "row_count".to_string(),
            CheckRule::Freshness { .. } => "freshness".to_string(),
        }
    }
}

impl FeatureView {
    /// The view's nearest-neighbour index, if it declares one: the indexed feature's
    /// position, its dimension and the index settings.
    pub fn vector_index(&self) -> Option<IndexedFeature> {
        self.features
            .iter()
            .enumerate()
            .find_map(|(position, feature)| {
                let spec = feature.vector_index?;
                let crate::ValueType::Vector(dimension) = feature.dtype else {
                    return None;
                };
                Some(IndexedFeature {
                    position,
                    dimension,
                    spec,
                })
            })
    }

    /// The sources this view reads, among the source names `known`: its declared source
    /// first, then every other one its SQL names as a whole word (case-insensitively, as
    /// unquoted SQL identifiers are), in the order of `known`.
    pub fn sources_read<'a>(&self, known: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
        let sql_words: std::collections::BTreeSet<String> = self
            .transformation
            .as_deref()
            .unwrap_or_default()
            .split(|character: char| !(character.is_alphanumeric() || character == '_'))
            .filter(|word| !word.is_empty())
            .map(str::to_lowercase)
            .collect();
        let mut declared = None;
        let mut named = Vec::new();
        for name in known {
            if name == self.source {
                declared = Some(name);
            } else if sql_words.contains(&name.to_lowercase()) {
                named.push(name);
            }
        }
        declared.into_iter().chain(named).collect()
    }

    /// The id of this view's tables.
    pub fn id(&self) -> FeatureViewId {
        FeatureViewId {
            name: self.name.clone(),
            version: self.version,
        }
    }

    /// The position of a feature in [`FeatureView::features`].
    pub fn feature_index(&self, feature_name: &str) -> Option<usize> {
        self.features
            .iter()
            .position(|feature| feature.name == feature_name)
    }
}

/// A reference to one feature: `feature_view:feature`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FeatureRef {
    /// Feature view name.
    pub view: String,
    /// Feature name.
    pub feature: String,
}

impl FromStr for FeatureRef {
    type Err = CoreError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once(':') {
            Some((view, feature))
                if !view.is_empty() && !feature.is_empty() && !feature.contains(':') =>
            {
                Ok(Self {
                    view: view.to_string(),
                    feature: feature.to_string(),
                })
            }
            _ => Err(CoreError::InvalidFeatureRef(text.to_string())),
        }
    }
}

impl fmt::Display for FeatureRef {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}:{}", self.view, self.feature)
    }
}

/// One entry of a feature service: a whole view, or some of its features.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureServiceItem {
    /// Feature view name.
    pub view: String,
    /// The chosen features; `None` means all of the view's features.
    pub features: Option<Vec<String>>,
}

/// A named list of features that one model consumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureService {
    /// Unique name.
    pub name: String,
    /// The features, in order.
    pub items: Vec<FeatureServiceItem>,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Who to ask about it.
    #[serde(default)]
    pub owner: String,
    /// Free-form labels.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_reads_its_source_and_the_sources_its_sql_names() {
        let view = FeatureView {
            source: "clicks".into(),
            transformation: Some("SELECT * FROM Clicks c JOIN impressions USING (id)".into()),
            ..FeatureView::default()
        };
        let known = ["impressions", "clicks_daily", "clicks", "profiles"];
        assert_eq!(view.sources_read(known), ["clicks", "impressions"]);
        let plain = FeatureView {
            source: "profiles".into(),
            ..FeatureView::default()
        };
        assert_eq!(plain.sources_read(known), ["profiles"]);
    }

    #[test]
    fn feature_refs_parse() {
        assert_eq!(
            "user_profile:age".parse(),
            Ok(FeatureRef {
                view: "user_profile".into(),
                feature: "age".into()
            })
        );
        for bad in ["age", ":age", "v:", "a:b:c"] {
            assert!(bad.parse::<FeatureRef>().is_err(), "{bad}");
        }
    }
}
