//! `aggregations:` of stream feature views: windowed functions over stream fields.

use std::collections::BTreeMap;

use larder_core::{Aggregation, AggregationFunction, Feature, StreamAggregations, TtlDuration};
use serde_saphyr::Spanned;

use super::{DEFAULT_ALLOWED_LATENESS_SECONDS, Resolver, is_valid_name, name_list};
use crate::diagnostics::Location;
use crate::repo::FeatureLocations;
use crate::repo::definitions::{AggregationDefinition, FeatureViewDefinition};
use crate::repo::discovery::ParsedFile;

impl Resolver<'_> {
    /// Resolves `aggregations:` of a stream feature view into its features and
    /// [`StreamAggregations`]; `None` when anything is wrong (each problem reported).
    pub(super) fn resolve_aggregations(
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
                vector_index: None,
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
}
