//! `sources:`: files, streams (with their payload schemas) and push sources.

use std::path::Path;

use larder_core::{
    DataSource, DataSourceKind, FileFormat, MessageFormat, ProtobufSchema, StreamField,
    StreamPayload, TimestampUnit,
};
use serde_saphyr::Spanned;

use super::{Resolver, is_valid_name};
use crate::diagnostics::Location;
use crate::object_kind::ObjectKind;
use crate::repo::definitions::SourceDefinition;
use crate::repo::discovery::ParsedFile;

impl Resolver<'_> {
    pub(in crate::repo) fn resolve_sources(&mut self, file: &ParsedFile) {
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
