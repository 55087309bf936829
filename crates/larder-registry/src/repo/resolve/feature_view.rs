//! `feature_views:`: schema, SQL transformation, entities, TTL, schedule and freshness.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use larder_core::{
    Feature, FeatureView, JoinKey, StreamAggregations, ValueType, VectorIndexSpec, VectorMetric,
};
use serde_saphyr::Spanned;

use super::{Resolver, is_valid_name, normalize_relative_path, portable_path};
use crate::diagnostics::Location;
use crate::object_kind::ObjectKind;
use crate::repo::definitions::{FeatureViewDefinition, VectorIndexDefinition};
use crate::repo::discovery::ParsedFile;
use crate::repo::{FeatureLocations, FeatureViewLocations};

impl Resolver<'_> {
    pub(in crate::repo) fn resolve_feature_views(&mut self, file: &ParsedFile) {
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
        let mut indexed_feature: Option<(String, Location)> = None;
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
            let vector_index = feature.vector_index.as_ref().and_then(|definition| {
                self.resolve_vector_index(
                    &file.path,
                    definition,
                    &dtype,
                    &feature_name,
                    &feature_prefix,
                    &mut indexed_feature,
                )
            });
            features.push(Feature {
                name: feature_name,
                dtype,
                description: feature.description.clone(),
                vector_index,
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

    /// Reads a transformation file named relative to the YAML file that declares it. Returns
    /// its text and its repo-relative path.
    /// Checks a feature's `vector_index` (a `vector<N>` feature, a known metric, settings in
    /// range, one index per view) and returns its settings.
    fn resolve_vector_index(
        &mut self,
        path: &Path,
        definition: &Spanned<VectorIndexDefinition>,
        dtype: &ValueType,
        feature_name: &str,
        feature_prefix: &str,
        indexed_feature: &mut Option<(String, Location)>,
    ) -> Option<VectorIndexSpec> {
        let located = |position: &serde_saphyr::Location| Location::from_yaml(path, position);
        let location = located(&definition.referenced);
        let key = format!("{feature_prefix}.vector_index");
        if !matches!(dtype, ValueType::Vector(_)) {
            self.report(
                location,
                key,
                format!(
                    "feature '{feature_name}' is {dtype}; a vector_index needs a vector<N> feature"
                ),
            );
            return None;
        }
        if let Some((first, first_location)) = indexed_feature {
            self.report(
                location,
                key,
                format!(
                    "feature view already indexes feature '{first}' (at {first_location}); a view has at most one vector_index"
                ),
            );
            return None;
        }
        *indexed_feature = Some((feature_name.to_string(), location.clone()));
        let mut spec = VectorIndexSpec::default();
        let mut valid = true;
        if let Some(metric) = &definition.value.metric {
            match VectorMetric::parse(&metric.value) {
                Some(parsed) => spec.metric = parsed,
                None => {
                    self.report(
                        located(&metric.referenced),
                        format!("{key}.metric"),
                        format!(
                            "unknown metric '{}' (one of: cosine, dot, l2)",
                            metric.value
                        ),
                    );
                    valid = false;
                }
            }
        }
        let settings = [
            (
                "connectivity",
                &definition.value.connectivity,
                2,
                128,
                &mut spec.connectivity,
            ),
            (
                "expansion_add",
                &definition.value.expansion_add,
                1,
                4096,
                &mut spec.expansion_add,
            ),
            (
                "expansion_search",
                &definition.value.expansion_search,
                1,
                4096,
                &mut spec.expansion_search,
            ),
        ];
        for (name, value, min, max, target) in settings {
            let Some(value) = value else { continue };
            match u32::try_from(value.value) {
                Ok(number) if (min..=max).contains(&number) => *target = number,
                _ => {
                    self.report(
                        located(&value.referenced),
                        format!("{key}.{name}"),
                        format!(
                            "{name} must be between {min} and {max}, got {}",
                            value.value
                        ),
                    );
                    valid = false;
                }
            }
        }
        valid.then_some(spec)
    }

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
}
