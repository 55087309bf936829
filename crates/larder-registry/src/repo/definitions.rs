//! The YAML shapes of definition files. Values that validation must point at are `Spanned`;
//! everything else is checked later, by the resolver, so that all problems are collected.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

/// The content of one definition file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DefinitionFile {
    /// Entity declarations.
    #[serde(default)]
    pub(super) entities: Option<Vec<EntityDefinition>>,
    /// Data source declarations.
    #[serde(default)]
    pub(super) sources: Option<Vec<SourceDefinition>>,
    /// Feature view declarations.
    #[serde(default)]
    pub(super) feature_views: Option<Vec<FeatureViewDefinition>>,
    /// Feature service declarations.
    #[serde(default)]
    pub(super) feature_services: Option<Vec<FeatureServiceDefinition>>,
}

/// `entities[]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EntityDefinition {
    /// Unique name.
    pub(super) name: Spanned<String>,
    /// The columns that identify one entity.
    pub(super) join_keys: Spanned<Vec<JoinKeyDefinition>>,
    /// Free text.
    #[serde(default)]
    pub(super) description: String,
    /// Who to ask.
    #[serde(default)]
    pub(super) owner: String,
    /// Labels.
    #[serde(default)]
    pub(super) tags: BTreeMap<String, String>,
}

/// `entities[].join_keys[]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JoinKeyDefinition {
    /// Column name.
    pub(super) name: Spanned<String>,
    /// int32, int64 or string.
    pub(super) dtype: Spanned<String>,
}

/// `sources[]`: one flat shape for every type, so that every field keeps its position (serde
/// loses positions inside internally tagged enums); fields that do not apply to the type are
/// reported.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SourceDefinition {
    /// Unique name.
    pub(super) name: Spanned<String>,
    /// file, kafka, nats or push.
    #[serde(rename = "type")]
    pub(super) source_type: Spanned<String>,
    /// file: path, directory or glob, relative to the repo root.
    #[serde(default)]
    pub(super) path: Option<Spanned<String>>,
    /// file: parquet or csv.
    #[serde(default)]
    pub(super) format: Option<Spanned<String>>,
    /// kafka: bootstrap brokers.
    #[serde(default)]
    pub(super) brokers: Option<Spanned<Vec<String>>>,
    /// kafka: topic.
    #[serde(default)]
    pub(super) topic: Option<Spanned<String>>,
    /// kafka: consumer group.
    #[serde(default)]
    pub(super) consumer_group: Option<Spanned<String>>,
    /// kafka: earliest or latest.
    #[serde(default)]
    pub(super) start_offset: Option<Spanned<String>>,
    /// nats: server URL.
    #[serde(default)]
    pub(super) url: Option<Spanned<String>>,
    /// nats: stream.
    #[serde(default)]
    pub(super) stream: Option<Spanned<String>>,
    /// nats: subject.
    #[serde(default)]
    pub(super) subject: Option<Spanned<String>>,
    /// nats: durable consumer.
    #[serde(default)]
    pub(super) durable: Option<Spanned<String>>,
    /// kafka, nats: how messages are encoded (json or protobuf).
    #[serde(default)]
    pub(super) message_format: Option<Spanned<String>>,
    /// kafka, nats with protobuf: the `.proto` file, relative to the repo root.
    #[serde(default)]
    pub(super) proto_file: Option<Spanned<String>>,
    /// kafka, nats with protobuf: the full name of the message type.
    #[serde(default)]
    pub(super) proto_message: Option<Spanned<String>>,
    /// kafka, nats: the unit of numeric event times (s, ms, us).
    #[serde(default)]
    pub(super) timestamp_unit: Option<Spanned<String>>,
    /// kafka, nats: typed columns read from each message.
    #[serde(default)]
    pub(super) fields: Option<Spanned<Vec<StreamFieldDefinition>>>,
    /// The event-time column.
    #[serde(default)]
    pub(super) timestamp_field: Option<Spanned<String>>,
    /// Free text.
    #[serde(default)]
    pub(super) description: String,
    /// Who to ask.
    #[serde(default)]
    pub(super) owner: String,
    /// Labels.
    #[serde(default)]
    pub(super) tags: BTreeMap<String, String>,
}

/// `sources[].fields[]`: one typed column of a stream message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StreamFieldDefinition {
    /// Column name.
    pub(super) name: Spanned<String>,
    /// Declared type.
    pub(super) dtype: Spanned<String>,
    /// Dotted path in the message (`user.id`); default: the name.
    #[serde(default)]
    pub(super) path: Option<Spanned<String>>,
}

/// `feature_views[].aggregations[]`: one windowed aggregation of a stream feature view.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AggregationDefinition {
    /// Feature name; default `{column}_{function}_{window}` (`count_{window}`).
    #[serde(default)]
    pub(super) name: Option<Spanned<String>>,
    /// count, sum, mean, min, max, last, last_n.
    pub(super) function: Spanned<String>,
    /// The input column (a field of the source); not for count.
    #[serde(default)]
    pub(super) column: Option<Spanned<String>>,
    /// Window length in event time (`1h`).
    pub(super) window: Spanned<String>,
    /// last_n: how many values.
    #[serde(default)]
    pub(super) n: Option<Spanned<i64>>,
}

fn default_true() -> bool {
    true
}

/// `feature_views[]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FeatureViewDefinition {
    /// Unique name.
    pub(super) name: Spanned<String>,
    /// Version, at least 1.
    pub(super) version: Spanned<i64>,
    /// Entity names.
    pub(super) entities: Spanned<Vec<Spanned<String>>>,
    /// Source name.
    pub(super) source: Spanned<String>,
    /// SQL file, relative to the YAML file.
    #[serde(default)]
    pub(super) transformation: Option<Spanned<String>>,
    /// Event-time column; default: the source's.
    #[serde(default)]
    pub(super) timestamp_field: Option<Spanned<String>>,
    /// Time to live; `0` (or `0s`) means no age limit, as when omitted.
    #[serde(default)]
    pub(super) ttl: Option<Spanned<String>>,
    /// Served online.
    #[serde(default = "default_true")]
    pub(super) online: bool,
    /// Kept offline.
    #[serde(default = "default_true")]
    pub(super) offline: bool,
    /// Who to ask.
    #[serde(default)]
    pub(super) owner: String,
    /// Importance tier.
    #[serde(default)]
    pub(super) tier: Option<String>,
    /// Labels.
    #[serde(default)]
    pub(super) tags: BTreeMap<String, String>,
    /// Free text.
    #[serde(default)]
    pub(super) description: String,
    /// Freshness promise.
    #[serde(default)]
    pub(super) freshness_sla: Option<Spanned<String>>,
    /// Features; omitted for a stream feature view with aggregations.
    #[serde(default)]
    pub(super) features: Option<Spanned<Vec<FeatureDefinition>>>,
    /// Windowed aggregations over a stream source (a stream feature view).
    #[serde(default)]
    pub(super) aggregations: Option<Spanned<Vec<AggregationDefinition>>>,
    /// Stream feature views: how late an event may be (`5m`); default 0s.
    #[serde(default)]
    pub(super) allowed_lateness: Option<Spanned<String>>,
    /// Data-quality checks over the transformation output.
    #[serde(default)]
    pub(super) checks: Vec<CheckDefinition>,
    /// keep (default) or delete: entities gone from the output of a full batch run.
    #[serde(default)]
    pub(super) on_missing: Option<Spanned<String>>,
    /// Cron schedule (UTC) of batch runs by `larder serve`.
    #[serde(default)]
    pub(super) schedule: Option<Spanned<String>>,
}

/// `feature_views[].checks[]`: one flat shape for every check type, so that every field
/// keeps its position; fields that do not apply to the type are reported.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CheckDefinition {
    /// not_null, range, allowed_values, unique_entity_per_timestamp, row_count, freshness.
    #[serde(rename = "type")]
    pub(super) check_type: Spanned<String>,
    /// not_null, range, allowed_values: the column.
    #[serde(default)]
    pub(super) column: Option<Spanned<String>>,
    /// range: inclusive minimum.
    #[serde(default)]
    pub(super) min: Option<Spanned<f64>>,
    /// range: inclusive maximum.
    #[serde(default)]
    pub(super) max: Option<Spanned<f64>>,
    /// allowed_values: the values.
    #[serde(default)]
    pub(super) values: Option<Spanned<Vec<CheckLiteral>>>,
    /// row_count: allowed change against the last run, in percent.
    #[serde(default)]
    pub(super) max_change_percent: Option<Spanned<f64>>,
    /// freshness: largest allowed age of the newest row (`2d`).
    #[serde(default)]
    pub(super) max_age: Option<Spanned<String>>,
    /// error (default, blocks the run) or warn.
    #[serde(default)]
    pub(super) severity: Option<Spanned<String>>,
}

/// One allowed value of an `allowed_values` check.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum CheckLiteral {
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Integer(i64),
    /// A float.
    Float(f64),
    /// Text.
    Text(String),
}

/// `feature_views[].features[]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FeatureDefinition {
    /// Name, unique in the view.
    pub(super) name: Spanned<String>,
    /// Declared type.
    pub(super) dtype: Spanned<String>,
    /// Free text.
    #[serde(default)]
    pub(super) description: String,
    /// A nearest-neighbour index over a `vector<N>` feature.
    #[serde(default)]
    pub(super) vector_index: Option<Spanned<VectorIndexDefinition>>,
}

/// `features[].vector_index`: every key is optional (`vector_index: {}` takes the defaults).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VectorIndexDefinition {
    /// `cosine` (default), `dot` or `l2`.
    #[serde(default)]
    pub(super) metric: Option<Spanned<String>>,
    /// HNSW `M`.
    #[serde(default)]
    pub(super) connectivity: Option<Spanned<i64>>,
    /// HNSW `ef_construction`.
    #[serde(default)]
    pub(super) expansion_add: Option<Spanned<i64>>,
    /// HNSW `ef_search`.
    #[serde(default)]
    pub(super) expansion_search: Option<Spanned<i64>>,
}

/// `feature_services[]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FeatureServiceDefinition {
    /// Unique name.
    pub(super) name: Spanned<String>,
    /// `view:feature` or whole view names.
    pub(super) features: Spanned<Vec<Spanned<String>>>,
    /// Free text.
    #[serde(default)]
    pub(super) description: String,
    /// Who to ask.
    #[serde(default)]
    pub(super) owner: String,
    /// Labels.
    #[serde(default)]
    pub(super) tags: BTreeMap<String, String>,
}
