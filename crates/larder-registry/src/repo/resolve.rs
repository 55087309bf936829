//! Validation and resolution of parsed definitions into a [`Registry`], collecting every
//! problem with its position.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use larder_core::{
    Aggregation, AggregationFunction, CheckRule, CheckSeverity, DataQualityCheck, DataSource,
    DataSourceKind, Entity, Feature, FeatureRef, FeatureService, FeatureServiceItem, FeatureView,
    FileFormat, JoinKey, MessageFormat, ProtobufSchema, StreamAggregations, StreamField,
    StreamPayload, TimestampUnit, TtlDuration, ValueType,
};
use serde_saphyr::Spanned;

use crate::Registry;
use crate::config::RepoConfig;
use crate::diagnostics::{Diagnostic, Diagnostics, Location};
use crate::object_kind::ObjectKind;
use crate::repo::definitions::{
    AggregationDefinition, CheckDefinition, CheckLiteral, FeatureServiceDefinition,
    FeatureViewDefinition, SourceDefinition,
};
use crate::repo::discovery::ParsedFile;
use crate::repo::{FeatureLocations, FeatureViewLocations};

/// How far behind the newest event an event of a stream view may be and still count, when
/// the view does not say (`allowed_lateness`).
const DEFAULT_ALLOWED_LATENESS_SECONDS: u64 = 300;
/// Whether a name matches `[A-Za-z_][A-Za-z0-9_]*`.
fn is_valid_name(name: &str) -> bool {
    let mut characters = name.chars();
    characters
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && characters.all(|character| character.is_ascii_alphanumeric() || character == '_')
}

/// Names for a "declared ...: a, b" hint, or "none".
fn name_list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    const MOST_NAMES_SHOWN: usize = 12;
    let names: Vec<&String> = names.collect();
    if names.is_empty() {
        return "none".to_string();
    }
    let mut text = names
        .iter()
        .take(MOST_NAMES_SHOWN)
        .map(|name| name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > MOST_NAMES_SHOWN {
        text.push_str(&format!(", and {} more", names.len() - MOST_NAMES_SHOWN));
    }
    text
}

/// Normalises `.` and `..` in a relative path without touching the file system; `None` when
/// the path leaves its starting directory or is absolute.
fn normalize_relative_path(path: &Path) -> Option<PathBuf> {
    let mut normalized = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !normalized.pop() {
                    return None;
                }
            }
            Component::Normal(part) => normalized.push(part),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(normalized)
}

/// A repo-relative path with `/` separators, as recorded in the registry.
fn portable_path(path: &Path) -> String {
    path.components()
        .map(|component| component.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

pub(super) struct Resolver<'a> {
    root: &'a Path,
    /// The registry being built.
    pub(super) registry: Registry,
    /// Every problem found so far.
    pub(super) diagnostics: Diagnostics,
    /// Every declared object (also those whose definition has errors), at its `name`.
    pub(super) object_locations: BTreeMap<(ObjectKind, String), Location>,
    /// Where the parts of each resolved feature view were declared.
    pub(super) feature_view_locations: BTreeMap<String, FeatureViewLocations>,
}

impl<'a> Resolver<'a> {
    pub(super) fn new(root: &'a Path, config: &RepoConfig) -> Self {
        Self {
            root,
            registry: Registry {
                project: config.project.clone(),
                applied_at: 0,
                ..Registry::default()
            },
            diagnostics: Diagnostics::new(),
            object_locations: BTreeMap::new(),
            feature_view_locations: BTreeMap::new(),
        }
    }

    fn report(&mut self, location: Location, key: impl Into<String>, message: impl Into<String>) {
        self.diagnostics
            .push(Diagnostic::at(location, key, message));
    }

    /// Checks an object's name and records where it was declared. Returns `false` for a
    /// duplicate, which must then be skipped.
    fn declare(
        &mut self,
        kind: ObjectKind,
        name: &str,
        location: &Location,
        key_prefix: &str,
    ) -> bool {
        if !is_valid_name(name) {
            self.report(
                location.clone(),
                format!("{key_prefix}.name"),
                format!("invalid {kind} name '{name}' (names match [A-Za-z_][A-Za-z0-9_]*)"),
            );
        }
        if let Some(first) = self.object_locations.get(&(kind, name.to_string())) {
            let message = format!("duplicate {kind} '{name}' (first declared at {first})");
            self.report(location.clone(), format!("{key_prefix}.name"), message);
            return false;
        }
        self.object_locations
            .insert((kind, name.to_string()), location.clone());
        true
    }

    fn is_declared(&self, kind: ObjectKind, name: &str) -> bool {
        self.object_locations
            .contains_key(&(kind, name.to_string()))
    }

    fn declared_names(&self, kind: ObjectKind) -> String {
        name_list(
            self.object_locations
                .keys()
                .filter(|(declared_kind, _)| *declared_kind == kind)
                .map(|(_, name)| name),
        )
    }

    /// Parses a dtype, reporting a bad one.
    fn parse_dtype(
        &mut self,
        file: &Path,
        dtype: &Spanned<String>,
        key: String,
    ) -> Option<ValueType> {
        match dtype.value.parse::<ValueType>() {
            Ok(value_type) => Some(value_type),
            Err(error) => {
                self.report(
                    Location::from_yaml(file, &dtype.referenced),
                    key,
                    error.to_string(),
                );
                None
            }
        }
    }

    /// Parses an optional duration, reporting one that does not parse; zero is kept.
    fn parse_any_duration(
        &mut self,
        file: &Path,
        duration: Option<&Spanned<String>>,
        key: &str,
    ) -> Option<TtlDuration> {
        let duration = duration?;
        match duration.value.parse::<TtlDuration>() {
            Ok(parsed) => Some(parsed),
            Err(error) => {
                let location = Location::from_yaml(file, &duration.referenced);
                self.report(location, key.to_string(), error.to_string());
                None
            }
        }
    }

    /// Parses an optional positive duration, reporting a bad one.
    fn parse_duration(
        &mut self,
        file: &Path,
        duration: Option<&Spanned<String>>,
        key: String,
    ) -> Option<TtlDuration> {
        let parsed = self.parse_any_duration(file, duration, &key)?;
        if parsed.as_seconds() > 0 {
            return Some(parsed);
        }
        let location = Location::from_yaml(file, &duration?.referenced);
        self.report(
            location,
            key,
            "duration must be positive (omit it for no limit)",
        );
        None
    }

    /// Parses an optional TTL, reporting a bad one. A zero TTL (`0`, `0s`) means no age
    /// limit, the same as no `ttl`, and resolves to `None`: serving, training sets and
    /// online expiry then all treat it as unlimited, and switching between the two spellings
    /// is no change in the plan.
    fn parse_ttl(
        &mut self,
        file: &Path,
        duration: Option<&Spanned<String>>,
        key: String,
    ) -> Option<TtlDuration> {
        self.parse_any_duration(file, duration, &key)
            .filter(|ttl| ttl.as_seconds() > 0)
    }

    pub(super) fn resolve_entities(&mut self, file: &ParsedFile) {
        for definition in file.definitions.entities.iter().flatten() {
            let name = definition.name.value.clone();
            let key_prefix = format!("entities.{name}");
            let name_location = Location::from_yaml(&file.path, &definition.name.referenced);
            if !self.declare(ObjectKind::Entity, &name, &name_location, &key_prefix) {
                continue;
            }
            if definition.join_keys.value.is_empty() {
                self.report(
                    Location::from_yaml(&file.path, &definition.join_keys.referenced),
                    format!("{key_prefix}.join_keys"),
                    format!("entity '{name}' declares no join keys"),
                );
            }
            let mut join_keys: Vec<JoinKey> = Vec::new();
            let mut join_key_locations: BTreeMap<String, Location> = BTreeMap::new();
            for join_key in &definition.join_keys.value {
                let join_key_name = join_key.name.value.clone();
                let join_key_prefix = format!("{key_prefix}.join_keys.{join_key_name}");
                let join_key_location = Location::from_yaml(&file.path, &join_key.name.referenced);
                if !is_valid_name(&join_key_name) {
                    self.report(
                        join_key_location.clone(),
                        format!("{join_key_prefix}.name"),
                        format!("invalid join key name '{join_key_name}' (names match [A-Za-z_][A-Za-z0-9_]*)"),
                    );
                }
                if let Some(first) = join_key_locations.get(&join_key_name) {
                    let message = format!(
                        "duplicate join key '{join_key_name}' in entity '{name}' (first declared at {first})"
                    );
                    self.report(
                        join_key_location,
                        format!("{join_key_prefix}.name"),
                        message,
                    );
                    continue;
                }
                join_key_locations.insert(join_key_name.clone(), join_key_location);
                let Some(dtype) = self.parse_dtype(
                    &file.path,
                    &join_key.dtype,
                    format!("{join_key_prefix}.dtype"),
                ) else {
                    continue;
                };
                if !dtype.is_join_key_type() {
                    self.report(
                        Location::from_yaml(&file.path, &join_key.dtype.referenced),
                        format!("{join_key_prefix}.dtype"),
                        larder_core::CoreError::UnsupportedJoinKeyType(dtype.to_string())
                            .to_string(),
                    );
                    continue;
                }
                join_keys.push(JoinKey {
                    name: join_key_name,
                    dtype,
                });
            }
            self.registry.entities.insert(
                name.clone(),
                Entity {
                    name,
                    join_keys,
                    description: definition.description.clone(),
                    owner: definition.owner.clone(),
                    tags: definition.tags.clone(),
                },
            );
        }
    }

    pub(super) fn resolve_sources(&mut self, file: &ParsedFile) {
        for definition in file.definitions.sources.iter().flatten() {
            let name = definition.name.value.clone();
            let key_prefix = format!("sources.{name}");
            let name_location = Location::from_yaml(&file.path, &definition.name.referenced);
            if !self.declare(ObjectKind::DataSource, &name, &name_location, &key_prefix) {
                continue;
            }
            if let Some(source) = self.resolve_source(file, definition, &key_prefix) {
                self.registry.sources.insert(name, source);
            }
        }
    }

    fn resolve_source(
        &mut self,
        file: &ParsedFile,
        definition: &SourceDefinition,
        key_prefix: &str,
    ) -> Option<DataSource> {
        let name = &definition.name.value;
        let source_type = definition.source_type.value.trim().to_ascii_lowercase();
        let type_location = Location::from_yaml(&file.path, &definition.source_type.referenced);
        let type_specific_fields: [(&str, Option<&serde_saphyr::Location>); 15] = [
            (
                "proto_file",
                definition
                    .proto_file
                    .as_ref()
                    .map(|field| &field.referenced),
            ),
            (
                "proto_message",
                definition
                    .proto_message
                    .as_ref()
                    .map(|field| &field.referenced),
            ),
            (
                "message_format",
                definition
                    .message_format
                    .as_ref()
                    .map(|field| &field.referenced),
            ),
            (
                "timestamp_unit",
                definition
                    .timestamp_unit
                    .as_ref()
                    .map(|field| &field.referenced),
            ),
            (
                "fields",
                definition.fields.as_ref().map(|field| &field.referenced),
            ),
            (
                "path",
                definition.path.as_ref().map(|field| &field.referenced),
            ),
            (
                "format",
                definition.format.as_ref().map(|field| &field.referenced),
            ),
            (
                "brokers",
                definition.brokers.as_ref().map(|field| &field.referenced),
            ),
            (
                "topic",
                definition.topic.as_ref().map(|field| &field.referenced),
            ),
            (
                "consumer_group",
                definition
                    .consumer_group
                    .as_ref()
                    .map(|field| &field.referenced),
            ),
            (
                "start_offset",
                definition
                    .start_offset
                    .as_ref()
                    .map(|field| &field.referenced),
            ),
            (
                "url",
                definition.url.as_ref().map(|field| &field.referenced),
            ),
            (
                "stream",
                definition.stream.as_ref().map(|field| &field.referenced),
            ),
            (
                "subject",
                definition.subject.as_ref().map(|field| &field.referenced),
            ),
            (
                "durable",
                definition.durable.as_ref().map(|field| &field.referenced),
            ),
        ];
        let allowed_fields: &[&str] = match source_type.as_str() {
            "file" => &["path", "format"],
            "kafka" => &[
                "brokers",
                "topic",
                "consumer_group",
                "start_offset",
                "message_format",
                "proto_file",
                "proto_message",
                "timestamp_unit",
                "fields",
            ],
            "nats" => &[
                "url",
                "stream",
                "subject",
                "durable",
                "message_format",
                "proto_file",
                "proto_message",
                "timestamp_unit",
                "fields",
            ],
            "push" => &[],
            _ => {
                self.report(
                    type_location,
                    format!("{key_prefix}.type"),
                    format!(
                        "unknown source type '{}' (expected file, kafka, nats or push)",
                        definition.source_type.value
                    ),
                );
                return None;
            }
        };
        let mut valid = true;
        for (field, position) in type_specific_fields {
            if let Some(position) = position
                && !allowed_fields.contains(&field)
            {
                self.report(
                    Location::from_yaml(&file.path, position),
                    format!("{key_prefix}.{field}"),
                    format!("field '{field}' does not apply to a source of type {source_type}"),
                );
                valid = false;
            }
        }
        let required_text =
            |resolver: &mut Self, field: &str, value: Option<&Spanned<String>>| -> Option<String> {
                match value {
                    Some(value) if !value.value.trim().is_empty() => {
                        Some(value.value.trim().to_string())
                    }
                    Some(value) => {
                        resolver.report(
                            Location::from_yaml(&file.path, &value.referenced),
                            format!("{key_prefix}.{field}"),
                            format!("'{field}' is empty"),
                        );
                        None
                    }
                    None => {
                        resolver.report(
                            type_location.clone(),
                            format!("{key_prefix}.{field}"),
                            format!("source '{name}' of type {source_type} needs '{field}'"),
                        );
                        None
                    }
                }
            };
        let optional_text = |value: Option<&Spanned<String>>| {
            value
                .map(|value| value.value.trim().to_string())
                .filter(|value| !value.is_empty())
        };

        let timestamp_field = if source_type == "push" && definition.timestamp_field.is_none() {
            Some("event_timestamp".to_string())
        } else {
            required_text(self, "timestamp_field", definition.timestamp_field.as_ref())
        };
        let payload = if matches!(source_type.as_str(), "kafka" | "nats") {
            let payload = self.resolve_stream_payload(file, definition, key_prefix);
            if payload.is_none() {
                valid = false;
            }
            payload.unwrap_or_default()
        } else {
            StreamPayload::default()
        };
        let kind = match source_type.as_str() {
            "file" => {
                let path = required_text(self, "path", definition.path.as_ref());
                let format = match (&definition.format, &path) {
                    (Some(format), _) => match format.value.trim().to_ascii_lowercase().as_str() {
                        "parquet" => Some(FileFormat::Parquet),
                        "csv" => Some(FileFormat::Csv),
                        "delta" => Some(FileFormat::Delta),
                        _ => {
                            self.report(
                                Location::from_yaml(&file.path, &format.referenced),
                                format!("{key_prefix}.format"),
                                format!(
                                    "unknown file format '{}' (expected parquet, csv or delta)",
                                    format.value
                                ),
                            );
                            None
                        }
                    },
                    (None, Some(path)) => {
                        let local = Path::new(path);
                        let local = if local.is_absolute() {
                            local.to_path_buf()
                        } else {
                            self.root.join(local)
                        };
                        let format = if local.join("_delta_log").is_dir() {
                            // A folder of Parquet files with a Delta log is a Delta table:
                            // reading its files directly would resurrect removed rows.
                            Some(FileFormat::Delta)
                        } else {
                            infer_file_format(path)
                        };
                        if format.is_none()
                            && let Some(path_value) = &definition.path
                        {
                            self.report(
                                Location::from_yaml(&file.path, &path_value.referenced),
                                format!("{key_prefix}.path"),
                                format!("cannot tell the format of '{path}' from its extension: add `format: parquet`, `format: csv` or `format: delta`"),
                            );
                        }
                        format
                    }
                    (None, None) => None,
                };
                match (path, format) {
                    (Some(path), Some(format)) => Some(DataSourceKind::File { path, format }),
                    _ => None,
                }
            }
            "kafka" => {
                let brokers = match &definition.brokers {
                    Some(brokers)
                        if brokers.value.iter().any(|broker| !broker.trim().is_empty()) =>
                    {
                        Some(
                            brokers
                                .value
                                .iter()
                                .map(|broker| broker.trim().to_string())
                                .filter(|broker| !broker.is_empty())
                                .collect(),
                        )
                    }
                    Some(brokers) => {
                        self.report(
                            Location::from_yaml(&file.path, &brokers.referenced),
                            format!("{key_prefix}.brokers"),
                            "'brokers' is empty (expected host:port addresses)",
                        );
                        None
                    }
                    None => {
                        self.report(
                            type_location.clone(),
                            format!("{key_prefix}.brokers"),
                            format!("source '{name}' of type kafka needs 'brokers'"),
                        );
                        None
                    }
                };
                let topic = required_text(self, "topic", definition.topic.as_ref());
                let start_offset = optional_text(definition.start_offset.as_ref());
                if let (Some(offset), Some(position)) = (&start_offset, &definition.start_offset)
                    && offset != "earliest"
                    && offset != "latest"
                {
                    self.report(
                        Location::from_yaml(&file.path, &position.referenced),
                        format!("{key_prefix}.start_offset"),
                        format!("unknown start offset '{offset}' (expected earliest or latest)"),
                    );
                    valid = false;
                }
                match (brokers, topic) {
                    (Some(brokers), Some(topic)) => Some(DataSourceKind::Kafka {
                        brokers,
                        topic,
                        consumer_group: optional_text(definition.consumer_group.as_ref()),
                        start_offset,
                        payload,
                    }),
                    _ => None,
                }
            }
            "nats" => {
                let url = required_text(self, "url", definition.url.as_ref());
                let stream = required_text(self, "stream", definition.stream.as_ref());
                let subject = required_text(self, "subject", definition.subject.as_ref());
                match (url, stream, subject) {
                    (Some(url), Some(stream), Some(subject)) => Some(DataSourceKind::Nats {
                        url,
                        stream,
                        subject,
                        durable: optional_text(definition.durable.as_ref()),
                        payload,
                    }),
                    _ => None,
                }
            }
            _ => Some(DataSourceKind::Push),
        };
        let (Some(kind), Some(timestamp_field), true) = (kind, timestamp_field, valid) else {
            return None;
        };
        Some(DataSource {
            name: name.clone(),
            kind,
            timestamp_field,
            description: definition.description.clone(),
            owner: definition.owner.clone(),
            tags: definition.tags.clone(),
        })
    }

    /// Resolves a stream source's `message_format`, `timestamp_unit` and `fields`; `None`
    /// when any of them is wrong (each problem reported at its position).
    fn resolve_stream_payload(
        &mut self,
        file: &ParsedFile,
        definition: &SourceDefinition,
        key_prefix: &str,
    ) -> Option<StreamPayload> {
        let mut payload = StreamPayload::default();
        let mut valid = true;
        if let Some(format) = &definition.message_format {
            match format.value.trim().to_ascii_lowercase().as_str() {
                "json" => payload.format = MessageFormat::Json,
                "protobuf" => payload.format = MessageFormat::Protobuf,
                other => {
                    self.report(
                        Location::from_yaml(&file.path, &format.referenced),
                        format!("{key_prefix}.message_format"),
                        format!("unknown message format '{other}' (expected json or protobuf)"),
                    );
                    valid = false;
                }
            }
        }
        match (
            payload.format,
            &definition.proto_file,
            &definition.proto_message,
        ) {
            (MessageFormat::Protobuf, Some(proto_file), Some(message)) => {
                match self.compile_protobuf(file, proto_file, message, key_prefix) {
                    Some(schema) => payload.protobuf = Some(schema),
                    None => valid = false,
                }
            }
            (MessageFormat::Protobuf, _, _) => {
                let location = definition.message_format.as_ref().map_or_else(
                    || Location::from_yaml(&file.path, &definition.name.referenced),
                    |format| Location::from_yaml(&file.path, &format.referenced),
                );
                self.report(
                    location,
                    format!("{key_prefix}.message_format"),
                    "protobuf messages need proto_file (a .proto file of the repo) and proto_message (the full message name)".to_string(),
                );
                valid = false;
            }
            (MessageFormat::Json, proto_file, proto_message) => {
                for (field, value) in [("proto_file", proto_file), ("proto_message", proto_message)]
                {
                    if let Some(value) = value {
                        self.report(
                            Location::from_yaml(&file.path, &value.referenced),
                            format!("{key_prefix}.{field}"),
                            format!("'{field}' applies only to message_format: protobuf"),
                        );
                        valid = false;
                    }
                }
            }
        }
        if let Some(unit) = &definition.timestamp_unit {
            match unit.value.trim() {
                "s" => payload.timestamp_unit = TimestampUnit::Seconds,
                "ms" => payload.timestamp_unit = TimestampUnit::Milliseconds,
                "us" => payload.timestamp_unit = TimestampUnit::Microseconds,
                other => {
                    self.report(
                        Location::from_yaml(&file.path, &unit.referenced),
                        format!("{key_prefix}.timestamp_unit"),
                        format!("unknown timestamp unit '{other}' (expected s, ms or us)"),
                    );
                    valid = false;
                }
            }
        }
        for field in definition
            .fields
            .iter()
            .flat_map(|fields| fields.value.iter())
        {
            let field_name = field.name.value.trim().to_string();
            let field_key = format!("{key_prefix}.fields.{field_name}");
            let name_location = Location::from_yaml(&file.path, &field.name.referenced);
            if !is_valid_name(&field_name) {
                self.report(
                    name_location,
                    format!("{field_key}.name"),
                    format!(
                        "invalid field name '{field_name}' (names match [A-Za-z_][A-Za-z0-9_]*)"
                    ),
                );
                valid = false;
                continue;
            }
            if payload.field(&field_name).is_some() {
                self.report(
                    name_location,
                    format!("{field_key}.name"),
                    format!("duplicate field '{field_name}'"),
                );
                valid = false;
                continue;
            }
            let path_text = field
                .path
                .as_ref()
                .map_or(field_name.as_str(), |path| path.value.trim());
            let path: Vec<String> = path_text.split('.').map(str::to_string).collect();
            if path.iter().any(String::is_empty) {
                let location = field.path.as_ref().map_or(name_location, |path| {
                    Location::from_yaml(&file.path, &path.referenced)
                });
                self.report(
                    location,
                    format!("{field_key}.path"),
                    format!(
                        "path '{path_text}' has an empty segment (expected keys joined by '.', e.g. user.id)"
                    ),
                );
                valid = false;
                continue;
            }
            let Some(dtype) =
                self.parse_dtype(&file.path, &field.dtype, format!("{field_key}.dtype"))
            else {
                valid = false;
                continue;
            };
            payload.fields.push(StreamField {
                name: field_name,
                path,
                dtype,
            });
        }
        valid.then_some(payload)
    }

    /// Compiles a stream source's `.proto` file (and its imports, the repo root being the
    /// import path) and checks that it declares the message; `None` when it cannot (reported
    /// at the YAML key, with the compiler's message naming the `.proto` line).
    fn compile_protobuf(
        &mut self,
        file: &ParsedFile,
        proto_file: &Spanned<String>,
        message: &Spanned<String>,
        key_prefix: &str,
    ) -> Option<ProtobufSchema> {
        use prost::Message as _;
        let relative = proto_file.value.trim().to_string();
        let compiled = protox::Compiler::new([self.root]).and_then(|mut compiler| {
            compiler.include_imports(true).include_source_info(false);
            compiler.open_file(self.root.join(&relative))?;
            Ok(compiler)
        });
        let compiler = match compiled {
            Ok(compiler) => compiler,
            Err(error) => {
                self.report(
                    Location::from_yaml(&file.path, &proto_file.referenced),
                    format!("{key_prefix}.proto_file"),
                    format!("cannot compile '{relative}': {error}"),
                );
                return None;
            }
        };
        let message_name = message.value.trim().to_string();
        let pool = compiler.descriptor_pool();
        if pool.get_message_by_name(&message_name).is_none() {
            let known: Vec<String> = pool
                .all_messages()
                .map(|descriptor| descriptor.full_name().to_string())
                .filter(|name| !name.starts_with("google.protobuf."))
                .collect();
            self.report(
                Location::from_yaml(&file.path, &message.referenced),
                format!("{key_prefix}.proto_message"),
                format!(
                    "'{relative}' declares no message '{message_name}' (it declares: {})",
                    known.join(", ")
                ),
            );
            return None;
        }
        Some(ProtobufSchema {
            proto_file: relative,
            message: message_name,
            descriptor_set: compiler.file_descriptor_set().encode_to_vec(),
        })
    }

    /// Resolves `aggregations:` of a stream feature view into its features and
    /// [`StreamAggregations`]; `None` when anything is wrong (each problem reported).
    fn resolve_aggregations(
        &mut self,
        file: &ParsedFile,
        definition: &FeatureViewDefinition,
        aggregations: &Spanned<Vec<AggregationDefinition>>,
        key_prefix: &str,
    ) -> Option<(
        Vec<Feature>,
        StreamAggregations,
        BTreeMap<String, FeatureLocations>,
    )> {
        let located = |position: &serde_saphyr::Location| Location::from_yaml(&file.path, position);
        let view_name = &definition.name.value;
        let error_count_before = self.diagnostics.len();
        if let Some(features) = &definition.features {
            self.report(
                located(&features.referenced),
                format!("{key_prefix}.features"),
                format!(
                    "feature view '{view_name}' has aggregations, which define its features: remove 'features'"
                ),
            );
        }
        if aggregations.value.is_empty() {
            self.report(
                located(&aggregations.referenced),
                format!("{key_prefix}.aggregations"),
                format!("feature view '{view_name}' lists no aggregations"),
            );
        }
        if definition.transformation.is_some() {
            self.report(
                located(&definition.source.referenced),
                format!("{key_prefix}.transformation"),
                "a stream feature view with aggregations cannot have a SQL transformation",
            );
        }
        let source_name = &definition.source.value;
        let payload = match self.registry.sources.get(source_name) {
            Some(source) => match source.kind.stream_payload() {
                Some(payload) => Some(payload.clone()),
                None => {
                    self.report(
                        located(&definition.source.referenced),
                        format!("{key_prefix}.source"),
                        format!(
                            "feature view '{view_name}' has aggregations but its source '{source_name}' is of type {}: aggregations need a kafka or nats source",
                            source.kind.kind_name()
                        ),
                    );
                    None
                }
            },
            // An unknown or broken source is reported elsewhere.
            None => None,
        };
        let allowed_lateness = match &definition.allowed_lateness {
            None => TtlDuration::from_seconds(DEFAULT_ALLOWED_LATENESS_SECONDS),
            Some(text) => match text.value.parse::<TtlDuration>() {
                Ok(duration) => duration,
                Err(error) => {
                    self.report(
                        located(&text.referenced),
                        format!("{key_prefix}.allowed_lateness"),
                        error.to_string(),
                    );
                    TtlDuration::from_seconds(0)
                }
            },
        };
        let mut features = Vec::new();
        let mut resolved = Vec::new();
        let mut locations: BTreeMap<String, FeatureLocations> = BTreeMap::new();
        for (index, aggregation) in aggregations.value.iter().enumerate() {
            let key = format!("{key_prefix}.aggregations[{index}]");
            let function_location = located(&aggregation.function.referenced);
            let function_text = aggregation.function.value.trim().to_ascii_lowercase();
            let function = match function_text.as_str() {
                "count" => AggregationFunction::Count,
                "sum" => AggregationFunction::Sum,
                "mean" | "avg" => AggregationFunction::Mean,
                "min" => AggregationFunction::Min,
                "max" => AggregationFunction::Max,
                "last" => AggregationFunction::Last,
                "last_n" => match &aggregation.n {
                    Some(n) if (1..=1000).contains(&n.value) => AggregationFunction::LastN {
                        n: u32::try_from(n.value).unwrap_or(1),
                    },
                    Some(n) => {
                        self.report(
                            located(&n.referenced),
                            format!("{key}.n"),
                            format!("n must be from 1 to 1000, not {}", n.value),
                        );
                        continue;
                    }
                    None => {
                        self.report(
                            function_location,
                            format!("{key}.n"),
                            "a last_n aggregation needs n (how many values)",
                        );
                        continue;
                    }
                },
                other => {
                    self.report(
                        function_location,
                        format!("{key}.function"),
                        format!(
                            "unknown aggregation function '{other}' (expected count, sum, mean, min, max, last or last_n)"
                        ),
                    );
                    continue;
                }
            };
            if let (Some(n), false) = (
                &aggregation.n,
                matches!(function, AggregationFunction::LastN { .. }),
            ) {
                self.report(
                    located(&n.referenced),
                    format!("{key}.n"),
                    format!("'n' does not apply to {}", function.name()),
                );
            }
            let window_location = located(&aggregation.window.referenced);
            let window = match aggregation.window.value.parse::<TtlDuration>() {
                Ok(window) if window.as_seconds() > 0 => window,
                Ok(_) => {
                    self.report(
                        window_location,
                        format!("{key}.window"),
                        "window must be positive",
                    );
                    continue;
                }
                Err(error) => {
                    self.report(window_location, format!("{key}.window"), error.to_string());
                    continue;
                }
            };
            let column = aggregation
                .column
                .as_ref()
                .map(|column| column.value.trim().to_string());
            let input_dtype = match (&aggregation.column, &payload) {
                (Some(column), Some(payload)) => match payload.field(column.value.trim()) {
                    Some(field) => Some(field.dtype.clone()),
                    None => {
                        let declared = name_list(payload.fields.iter().map(|field| &field.name));
                        self.report(
                            located(&column.referenced),
                            format!("{key}.column"),
                            format!(
                                "column '{}' is not a field of source '{source_name}' (declared fields: {declared}); declare it under the source's fields with its dtype",
                                column.value
                            ),
                        );
                        continue;
                    }
                },
                (None, _) if function.needs_column() => {
                    self.report(
                        function_location,
                        format!("{key}.column"),
                        format!("a {} aggregation needs a column", function.name()),
                    );
                    continue;
                }
                _ => None,
            };
            let output_dtype = match function.output_type(input_dtype.as_ref()) {
                Some(dtype) => dtype,
                None => {
                    let input = input_dtype
                        .as_ref()
                        .map_or_else(|| "none".to_string(), ToString::to_string);
                    self.report(
                        function_location,
                        format!("{key}.function"),
                        format!(
                            "{} cannot aggregate a column of type {input}",
                            function.name()
                        ),
                    );
                    continue;
                }
            };
            let window_text = aggregation.window.value.trim().to_string();
            let default_name = match (&column, function) {
                (None, _) => format!("count_{window_text}"),
                (Some(column), AggregationFunction::LastN { n }) => {
                    format!("{column}_last{n}_{window_text}")
                }
                (Some(column), function) => format!("{column}_{}_{window_text}", function.name()),
            };
            let (feature_name, name_location) = match &aggregation.name {
                Some(name) => (name.value.trim().to_string(), located(&name.referenced)),
                None => (default_name, function_location.clone()),
            };
            if !is_valid_name(&feature_name) {
                self.report(
                    name_location,
                    format!("{key}.name"),
                    format!(
                        "invalid feature name '{feature_name}' (names match [A-Za-z_][A-Za-z0-9_]*){}",
                        if aggregation.name.is_none() {
                            "; give the aggregation a name"
                        } else {
                            ""
                        }
                    ),
                );
                continue;
            }
            if let Some(first) = locations.get(&feature_name) {
                let message = format!(
                    "duplicate feature '{feature_name}' in feature view '{view_name}' (first declared at {})",
                    first.name
                );
                self.report(name_location, format!("{key}.name"), message);
                continue;
            }
            locations.insert(
                feature_name.clone(),
                FeatureLocations {
                    name: name_location,
                    dtype: function_location,
                },
            );
            features.push(Feature {
                name: feature_name.clone(),
                dtype: output_dtype,
                description: String::new(),
            });
            resolved.push(Aggregation {
                feature: feature_name,
                function,
                column,
                input_dtype,
                window,
            });
        }
        if self.diagnostics.len() > error_count_before || payload.is_none() {
            return None;
        }
        Some((
            features,
            StreamAggregations {
                aggregations: resolved,
                allowed_lateness,
            },
            locations,
        ))
    }

    pub(super) fn resolve_feature_views(&mut self, file: &ParsedFile) {
        for definition in file.definitions.feature_views.iter().flatten() {
            let name = definition.name.value.clone();
            let key_prefix = format!("feature_views.{name}");
            let name_location = Location::from_yaml(&file.path, &definition.name.referenced);
            if !self.declare(ObjectKind::FeatureView, &name, &name_location, &key_prefix) {
                continue;
            }
            if let Some((view, locations, stream_aggregations)) =
                self.resolve_feature_view(file, definition, &key_prefix, name_location)
            {
                if let Some(stream_aggregations) = stream_aggregations {
                    self.registry
                        .stream_views
                        .insert(name.clone(), stream_aggregations);
                }
                self.registry.feature_views.insert(name.clone(), view);
                self.feature_view_locations.insert(name, locations);
            }
        }
    }

    fn resolve_feature_view(
        &mut self,
        file: &ParsedFile,
        definition: &FeatureViewDefinition,
        key_prefix: &str,
        name_location: Location,
    ) -> Option<(
        FeatureView,
        FeatureViewLocations,
        Option<StreamAggregations>,
    )> {
        let name = definition.name.value.clone();
        let error_count_before = self.diagnostics.len();
        let located = |position: &serde_saphyr::Location| Location::from_yaml(&file.path, position);

        let version_location = located(&definition.version.referenced);
        let version = match u32::try_from(definition.version.value) {
            Ok(version) if version >= 1 => version,
            _ => {
                self.report(
                    version_location.clone(),
                    format!("{key_prefix}.version"),
                    format!(
                        "version must be an integer from 1 to {}, not {}",
                        u32::MAX,
                        definition.version.value
                    ),
                );
                1
            }
        };

        // Entities and their join keys.
        let entities_location = located(&definition.entities.referenced);
        if definition.entities.value.is_empty() {
            self.report(
                entities_location.clone(),
                format!("{key_prefix}.entities"),
                format!("feature view '{name}' needs at least one entity"),
            );
        }
        let mut entity_names: Vec<String> = Vec::new();
        let mut join_keys: Vec<JoinKey> = Vec::new();
        let mut join_key_owners: BTreeMap<String, String> = BTreeMap::new();
        for entity_reference in &definition.entities.value {
            let entity_name = entity_reference.value.clone();
            let reference_location = located(&entity_reference.referenced);
            if entity_names.contains(&entity_name) {
                self.report(
                    reference_location,
                    format!("{key_prefix}.entities"),
                    format!("entity '{entity_name}' is listed twice"),
                );
                continue;
            }
            entity_names.push(entity_name.clone());
            if !self.is_declared(ObjectKind::Entity, &entity_name) {
                let declared = self.declared_names(ObjectKind::Entity);
                self.report(
                    reference_location,
                    format!("{key_prefix}.entities"),
                    format!("unknown entity '{entity_name}' (declared entities: {declared})"),
                );
                continue;
            }
            let Some(entity) = self.registry.entities.get(&entity_name) else {
                continue;
            };
            let entity_join_keys = entity.join_keys.clone();
            for join_key in entity_join_keys {
                match join_keys
                    .iter()
                    .find(|existing| existing.name == join_key.name)
                {
                    Some(existing) if existing.dtype == join_key.dtype => {}
                    Some(existing) => {
                        let first_owner = join_key_owners
                            .get(&join_key.name)
                            .cloned()
                            .unwrap_or_default();
                        let message = format!(
                            "join key '{}' is {} in entity '{first_owner}' but {} in entity '{entity_name}': entities used together must agree on the dtype of a shared join key",
                            join_key.name, existing.dtype, join_key.dtype
                        );
                        self.report(
                            reference_location.clone(),
                            format!("{key_prefix}.entities"),
                            message,
                        );
                    }
                    None => {
                        join_key_owners.insert(join_key.name.clone(), entity_name.clone());
                        join_keys.push(join_key);
                    }
                }
            }
        }

        // Source and timestamp field.
        let source_name = definition.source.value.clone();
        if !self.is_declared(ObjectKind::DataSource, &source_name) {
            let declared = self.declared_names(ObjectKind::DataSource);
            self.report(
                located(&definition.source.referenced),
                format!("{key_prefix}.source"),
                format!("unknown source '{source_name}' (declared sources: {declared})"),
            );
        }
        let timestamp_field = match &definition.timestamp_field {
            Some(field) if field.value.trim().is_empty() => {
                self.report(
                    located(&field.referenced),
                    format!("{key_prefix}.timestamp_field"),
                    "'timestamp_field' is empty",
                );
                String::new()
            }
            Some(field) => field.value.trim().to_string(),
            None => self
                .registry
                .sources
                .get(&source_name)
                .map(|source| source.timestamp_field.clone())
                .unwrap_or_default(),
        };

        // Transformation.
        let (transformation, transformation_path) = match &definition.transformation {
            Some(reference) => match self.read_transformation(&file.path, reference, key_prefix) {
                Some((text, path)) => (Some(text), Some(path)),
                None => (None, None),
            },
            None => (None, None),
        };

        let ttl = self.parse_ttl(
            &file.path,
            definition.ttl.as_ref(),
            format!("{key_prefix}.ttl"),
        );
        let freshness_sla = self.parse_duration(
            &file.path,
            definition.freshness_sla.as_ref(),
            format!("{key_prefix}.freshness_sla"),
        );

        // Features: declared, or computed by the aggregations of a stream feature view.
        let mut features: Vec<Feature> = Vec::new();
        let mut feature_locations: BTreeMap<String, FeatureLocations> = BTreeMap::new();
        let mut stream_aggregations = None;
        if let Some(aggregations) = &definition.aggregations {
            if let Some((aggregated, resolved, locations)) =
                self.resolve_aggregations(file, definition, aggregations, key_prefix)
            {
                for feature in &aggregated {
                    if let Some(owner) = join_key_owners.get(&feature.name) {
                        let location = locations
                            .get(&feature.name)
                            .map_or_else(|| name_location.clone(), |found| found.name.clone());
                        self.report(
                            location,
                            format!("{key_prefix}.aggregations"),
                            format!("feature '{}' has the name of a join key of entity '{owner}'; rename the aggregation", feature.name),
                        );
                    }
                }
                features = aggregated;
                feature_locations = locations;
                stream_aggregations = Some(resolved);
            }
        } else if let Some(lateness) = &definition.allowed_lateness {
            self.report(
                located(&lateness.referenced),
                format!("{key_prefix}.allowed_lateness"),
                "allowed_lateness applies only to a stream feature view with aggregations",
            );
        }
        let declared_features: &[crate::repo::definitions::FeatureDefinition] = match (
            &definition.features,
            &definition.aggregations,
        ) {
            (Some(declared), None) => {
                if declared.value.is_empty() {
                    self.report(
                        located(&declared.referenced),
                        format!("{key_prefix}.features"),
                        format!("feature view '{name}' declares no features"),
                    );
                }
                &declared.value
            }
            (None, None) => {
                self.report(
                        name_location.clone(),
                        format!("{key_prefix}.features"),
                        format!("feature view '{name}' declares no features (add features, or aggregations over a stream source)"),
                    );
                &[]
            }
            (_, Some(_)) => &[],
        };
        for feature in declared_features {
            let feature_name = feature.name.value.clone();
            let feature_prefix = format!("{key_prefix}.features.{feature_name}");
            let feature_name_location = located(&feature.name.referenced);
            if !is_valid_name(&feature_name) {
                self.report(
                    feature_name_location.clone(),
                    format!("{feature_prefix}.name"),
                    format!(
                        "invalid feature name '{feature_name}' (names match [A-Za-z_][A-Za-z0-9_]*)"
                    ),
                );
            }
            if let Some(first) = feature_locations.get(&feature_name) {
                let message = format!(
                    "duplicate feature '{feature_name}' in feature view '{name}' (first declared at {})",
                    first.name
                );
                self.report(
                    feature_name_location,
                    format!("{feature_prefix}.name"),
                    message,
                );
                continue;
            }
            if let Some(owner) = join_key_owners.get(&feature_name) {
                self.report(
                    feature_name_location.clone(),
                    format!("{feature_prefix}.name"),
                    format!("feature '{feature_name}' has the name of a join key of entity '{owner}'; rename the feature"),
                );
            }
            if feature_name == timestamp_field {
                self.report(
                    feature_name_location.clone(),
                    format!("{feature_prefix}.name"),
                    format!("feature '{feature_name}' has the name of the view's timestamp field; rename the feature"),
                );
            }
            feature_locations.insert(
                feature_name.clone(),
                FeatureLocations {
                    name: feature_name_location,
                    dtype: located(&feature.dtype.referenced),
                },
            );
            let Some(dtype) = self.parse_dtype(
                &file.path,
                &feature.dtype,
                format!("{feature_prefix}.dtype"),
            ) else {
                continue;
            };
            features.push(Feature {
                name: feature_name,
                dtype,
                description: feature.description.clone(),
            });
        }

        let locations = FeatureViewLocations {
            name: name_location,
            version: version_location,
            entities: entities_location,
            timestamp_field: definition
                .timestamp_field
                .as_ref()
                .map(|field| located(&field.referenced)),
            features: feature_locations,
        };
        let mut check_columns: BTreeSet<String> = features
            .iter()
            .map(|feature| feature.name.clone())
            .collect();
        check_columns.extend(join_keys.iter().map(|join_key| join_key.name.clone()));
        check_columns.insert(timestamp_field.clone());
        let checks =
            self.resolve_checks(&file.path, &definition.checks, key_prefix, &check_columns);
        let on_missing = match &definition.on_missing {
            None => larder_core::OnMissing::Keep,
            Some(text) => match text.value.trim() {
                "keep" => larder_core::OnMissing::Keep,
                "delete" => larder_core::OnMissing::Delete,
                other => {
                    self.report(
                        Location::from_yaml(&file.path, &text.referenced),
                        format!("{key_prefix}.on_missing"),
                        format!("on_missing must be 'keep' or 'delete', not '{other}'"),
                    );
                    larder_core::OnMissing::Keep
                }
            },
        };
        let source_is_batch = self
            .registry
            .sources
            .get(&source_name)
            .is_none_or(|source| source.kind.is_batch());
        let schedule = definition.schedule.as_ref().and_then(|text| {
            let location = Location::from_yaml(&file.path, &text.referenced);
            let key = format!("{key_prefix}.schedule");
            if !source_is_batch {
                self.report(
                    location,
                    key,
                    "only batch feature views have a schedule (stream views run continuously)"
                        .to_string(),
                );
                return None;
            }
            match larder_core::CronSchedule::parse(&text.value) {
                Ok(schedule) => Some(schedule.as_str().to_string()),
                Err(message) => {
                    self.report(location, key, message);
                    None
                }
            }
        });
        if self.diagnostics.len() > error_count_before {
            return None;
        }
        let view = FeatureView {
            name,
            version,
            entities: entity_names,
            join_keys,
            source: source_name,
            transformation,
            transformation_path,
            timestamp_field,
            features,
            ttl,
            online: definition.online,
            offline: definition.offline,
            owner: definition.owner.clone(),
            tier: definition
                .tier
                .clone()
                .filter(|tier| !tier.trim().is_empty()),
            tags: definition.tags.clone(),
            description: definition.description.clone(),
            freshness_sla,
            checks,
            on_missing,
            schedule,
        };
        Some((view, locations, stream_aggregations))
    }

    /// Resolves `checks:`, reporting unknown types, missing or misplaced fields and unknown
    /// columns at their position.
    fn resolve_checks(
        &mut self,
        file: &Path,
        definitions: &[CheckDefinition],
        key_prefix: &str,
        columns: &BTreeSet<String>,
    ) -> Vec<DataQualityCheck> {
        let mut checks = Vec::new();
        for (index, definition) in definitions.iter().enumerate() {
            let key = format!("{key_prefix}.checks[{index}]");
            let type_location = Location::from_yaml(file, &definition.check_type.referenced);
            let severity = match &definition.severity {
                None => CheckSeverity::Error,
                Some(severity) => match severity.value.as_str() {
                    "error" => CheckSeverity::Error,
                    "warn" => CheckSeverity::Warn,
                    other => {
                        self.report(
                            Location::from_yaml(file, &severity.referenced),
                            format!("{key}.severity"),
                            format!("unknown severity '{other}': use error or warn"),
                        );
                        continue;
                    }
                },
            };
            let mut column = || -> Option<String> {
                let Some(column) = &definition.column else {
                    self.report(
                        type_location.clone(),
                        format!("{key}.column"),
                        format!("a {} check needs a column", definition.check_type.value),
                    );
                    return None;
                };
                if !columns.contains(&column.value) {
                    self.report(
                        Location::from_yaml(file, &column.referenced),
                        format!("{key}.column"),
                        format!(
                            "unknown column '{}': checks read the view's join keys, event time and features",
                            column.value
                        ),
                    );
                    return None;
                }
                Some(column.value.clone())
            };
            let rule = match definition.check_type.value.as_str() {
                "not_null" => column().map(|column| CheckRule::NotNull { column }),
                "range" => {
                    let column = column();
                    if definition.min.is_none() && definition.max.is_none() {
                        self.report(
                            type_location.clone(),
                            format!("{key}.min"),
                            "a range check needs min, max or both",
                        );
                        continue;
                    }
                    column.map(|column| CheckRule::Range {
                        column,
                        min: definition.min.as_ref().map(|min| format_number(min.value)),
                        max: definition.max.as_ref().map(|max| format_number(max.value)),
                    })
                }
                "allowed_values" => {
                    let column = column();
                    let Some(values) = &definition.values else {
                        self.report(
                            type_location.clone(),
                            format!("{key}.values"),
                            "an allowed_values check needs values",
                        );
                        continue;
                    };
                    column.map(|column| CheckRule::AllowedValues {
                        column,
                        values: values.value.iter().map(sql_literal).collect(),
                    })
                }
                "unique_entity_per_timestamp" => Some(CheckRule::UniqueEntityPerTimestamp),
                "row_count" => match &definition.max_change_percent {
                    Some(percent) if percent.value >= 0.0 && percent.value.is_finite() => {
                        Some(CheckRule::RowCount {
                            max_change_percent: format_number(percent.value),
                        })
                    }
                    Some(percent) => {
                        self.report(
                            Location::from_yaml(file, &percent.referenced),
                            format!("{key}.max_change_percent"),
                            "max_change_percent must be a non-negative number",
                        );
                        None
                    }
                    None => {
                        self.report(
                            type_location.clone(),
                            format!("{key}.max_change_percent"),
                            "a row_count check needs max_change_percent",
                        );
                        None
                    }
                },
                "freshness" => {
                    if definition.max_age.is_none() {
                        self.report(
                            type_location.clone(),
                            format!("{key}.max_age"),
                            "a freshness check needs max_age",
                        );
                    }
                    self.parse_duration(file, definition.max_age.as_ref(), format!("{key}.max_age"))
                        .map(|max_age| CheckRule::Freshness { max_age })
                }
                other => {
                    self.report(
                        type_location.clone(),
                        format!("{key}.type"),
                        format!(
                            "unknown check type '{other}': use not_null, range, allowed_values, unique_entity_per_timestamp, row_count or freshness"
                        ),
                    );
                    None
                }
            };
            if let Some(rule) = rule {
                checks.push(DataQualityCheck { rule, severity });
            }
        }
        checks
    }

    /// Reads a transformation file named relative to the YAML file that declares it. Returns
    /// its text and its repo-relative path.
    fn read_transformation(
        &mut self,
        yaml_file: &Path,
        reference: &Spanned<String>,
        key_prefix: &str,
    ) -> Option<(String, String)> {
        let location = Location::from_yaml(yaml_file, &reference.referenced);
        let key = format!("{key_prefix}.transformation");
        let declared = reference.value.trim();
        let yaml_directory = yaml_file.parent().unwrap_or_else(|| Path::new(""));
        let Some(relative_path) = normalize_relative_path(&yaml_directory.join(declared))
            .filter(|_| !declared.is_empty())
        else {
            self.report(
                location,
                key,
                format!("transformation '{declared}' must be a path relative to this file, inside the feature repo"),
            );
            return None;
        };
        let portable = portable_path(&relative_path);
        match std::fs::read_to_string(self.root.join(&relative_path)) {
            Ok(text) if text.trim().is_empty() => {
                self.report(
                    location,
                    key,
                    format!("transformation file '{portable}' is empty"),
                );
                None
            }
            Ok(text) => Some((text, portable)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                self.report(
                    location,
                    key,
                    format!("transformation file '{declared}' not found (looked for {portable})"),
                );
                None
            }
            Err(error) => {
                self.report(
                    location,
                    key,
                    format!("cannot read transformation file '{portable}': {error}"),
                );
                None
            }
        }
    }

    pub(super) fn resolve_feature_services(&mut self, file: &ParsedFile) {
        for definition in file.definitions.feature_services.iter().flatten() {
            let name = definition.name.value.clone();
            let key_prefix = format!("feature_services.{name}");
            let name_location = Location::from_yaml(&file.path, &definition.name.referenced);
            if !self.declare(
                ObjectKind::FeatureService,
                &name,
                &name_location,
                &key_prefix,
            ) {
                continue;
            }
            if let Some(service) = self.resolve_feature_service(file, definition, &key_prefix) {
                self.registry.feature_services.insert(name, service);
            }
        }
    }

    fn resolve_feature_service(
        &mut self,
        file: &ParsedFile,
        definition: &FeatureServiceDefinition,
        key_prefix: &str,
    ) -> Option<FeatureService> {
        let name = definition.name.value.clone();
        let key = format!("{key_prefix}.features");
        let error_count_before = self.diagnostics.len();
        if definition.features.value.is_empty() {
            self.report(
                Location::from_yaml(&file.path, &definition.features.referenced),
                key.clone(),
                format!("feature service '{name}' lists no features"),
            );
        }
        let mut items: Vec<FeatureServiceItem> = Vec::new();
        let mut listed_features: BTreeSet<FeatureRef> = BTreeSet::new();
        // Join key name -> (dtype, the feature view that brought it).
        let mut join_key_types: BTreeMap<String, (ValueType, String)> = BTreeMap::new();
        for reference in &definition.features.value {
            let location = Location::from_yaml(&file.path, &reference.referenced);
            let text = reference.value.trim();
            let (view_name, feature_name) = if text.contains(':') {
                match text.parse::<FeatureRef>() {
                    Ok(parsed) => (parsed.view, Some(parsed.feature)),
                    Err(error) => {
                        self.report(
                            location,
                            key.clone(),
                            format!("{error}; or name a whole feature view"),
                        );
                        continue;
                    }
                }
            } else {
                (text.to_string(), None)
            };
            if !self.is_declared(ObjectKind::FeatureView, &view_name) {
                let declared = self.declared_names(ObjectKind::FeatureView);
                self.report(
                    location,
                    key.clone(),
                    format!(
                        "unknown feature view '{view_name}' (declared feature views: {declared})"
                    ),
                );
                continue;
            }
            let Some(view) = self.registry.feature_views.get(&view_name) else {
                // The view has errors of its own, reported where it is declared.
                continue;
            };
            let chosen_features: Vec<String> = match &feature_name {
                Some(feature_name) if view.feature_index(feature_name).is_none() => {
                    let known = name_list(view.features.iter().map(|feature| &feature.name));
                    self.report(
                        location,
                        key.clone(),
                        format!("feature view '{view_name}' has no feature '{feature_name}' (its features: {known})"),
                    );
                    continue;
                }
                Some(feature_name) => vec![feature_name.clone()],
                None => view
                    .features
                    .iter()
                    .map(|feature| feature.name.clone())
                    .collect(),
            };
            let view_join_keys = view.join_keys.clone();
            let mut problems = Vec::new();
            for chosen in &chosen_features {
                let feature_ref = FeatureRef {
                    view: view_name.clone(),
                    feature: chosen.clone(),
                };
                if !listed_features.insert(feature_ref.clone()) {
                    problems.push(format!("feature '{feature_ref}' is listed more than once"));
                }
            }
            for join_key in view_join_keys {
                match join_key_types.get(&join_key.name) {
                    Some((dtype, first_view)) if *dtype != join_key.dtype => problems.push(format!(
                        "join key '{}' is {dtype} in feature view '{first_view}' but {} in feature view '{view_name}': a feature service cannot mix them",
                        join_key.name, join_key.dtype
                    )),
                    Some(_) => {}
                    None => {
                        join_key_types.insert(join_key.name.clone(), (join_key.dtype.clone(), view_name.clone()));
                    }
                }
            }
            for problem in problems {
                self.report(location.clone(), key.clone(), problem);
            }
            match (feature_name, items.last_mut()) {
                (
                    Some(feature_name),
                    Some(FeatureServiceItem {
                        view,
                        features: Some(features),
                    }),
                ) if *view == view_name => {
                    features.push(feature_name);
                }
                (feature_name, _) => items.push(FeatureServiceItem {
                    view: view_name,
                    features: feature_name.map(|feature| vec![feature]),
                }),
            }
        }
        if self.diagnostics.len() > error_count_before {
            return None;
        }
        Some(FeatureService {
            name,
            items,
            description: definition.description.clone(),
            owner: definition.owner.clone(),
            tags: definition.tags.clone(),
        })
    }
}

/// The format of a file source from its path's extension; directories and globs without an
/// extension are Parquet.
fn infer_file_format(path: &str) -> Option<FileFormat> {
    let last_segment = path
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    match Path::new(last_segment)
        .extension()
        .map(|extension| extension.to_string_lossy().to_ascii_lowercase())
    {
        None => Some(FileFormat::Parquet),
        Some(extension) => match extension.as_str() {
            "parquet" | "pq" => Some(FileFormat::Parquet),
            "csv" => Some(FileFormat::Csv),
            _ => None,
        },
    }
}

/// A number as SQL literal text (integers without a fraction).
fn format_number(number: f64) -> String {
    if number.fract() == 0.0 && number.abs() < 1e15 {
        format!("{}", number as i64)
    } else {
        format!("{number:?}")
    }
}

/// An allowed value as a SQL literal (text single-quoted, quotes doubled).
fn sql_literal(literal: &CheckLiteral) -> String {
    match literal {
        CheckLiteral::Bool(value) => value.to_string(),
        CheckLiteral::Integer(value) => value.to_string(),
        CheckLiteral::Float(value) => format_number(*value),
        CheckLiteral::Text(text) => format!("'{}'", text.replace('\'', "''")),
    }
}
