//! Loading a feature repo: finding its YAML files, parsing them and validating every
//! definition into a [`Registry`].
//!
//! # Which files are read
//!
//! Every `*.yaml` and `*.yml` file below the repo root, in path order, except:
//! - `larder.yaml` at the root (the [`RepoConfig`]);
//! - hidden files and everything below hidden directories (names starting with `.`);
//! - everything below a directory named `data` or `target`, at any depth;
//! - everything below the directories that hold the configured registry file, the embedded
//!   online store file and the offline store (the offline store path itself), unless that
//!   directory is the repo root;
//! - symbolic links to directories (they are not followed, so there are no cycles).
//!
//! Each file holds any of the top-level lists `entities`, `sources`, `feature_views` and
//! `feature_services`; any other top-level key is an error.
//!
//! # Diagnostics
//!
//! Syntax and shape errors (YAML syntax, unknown or missing fields, wrong value types) stop
//! the parsing of their file; every file is parsed and all such errors are reported together.
//! When any file fails to parse, validation across files is skipped, because references to
//! the objects of a broken file would all look unknown. Otherwise every semantic problem of
//! every file is reported (names, duplicates, references, dtypes, durations, versions,
//! transformation files, join keys).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use larder_core::ValueType;

use crate::Registry;
use crate::config::RepoConfig;
use crate::diagnostics::{Diagnostic, Diagnostics, Location};
use crate::object_kind::ObjectKind;
use discovery::{ParsedFile, find_definition_files, parse_definition_file};
use resolve::Resolver;

/// One column of the output schema of a feature view's transformation (or of its source when
/// it has none), as computed by the caller (the CLI plans the SQL with DataFusion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaColumn {
    /// Column name.
    pub name: String,
    /// The column's Larder type; `None` when the Arrow type has no Larder equivalent.
    pub dtype: Option<ValueType>,
    /// The Arrow type as text (e.g. `Int32`, `Decimal128(10, 2)`), for messages.
    pub arrow_type: String,
}

/// A loaded and validated feature repo: its config, its definitions resolved into a
/// [`Registry`], and where each definition was declared.
#[derive(Debug, Clone)]
pub struct FeatureRepo {
    root: PathBuf,
    config: RepoConfig,
    registry: Registry,
    definition_files: Vec<PathBuf>,
    object_locations: BTreeMap<(ObjectKind, String), Location>,
    feature_view_locations: BTreeMap<String, FeatureViewLocations>,
}

/// Where the parts of one feature view were declared.
#[derive(Debug, Clone)]
pub(crate) struct FeatureViewLocations {
    /// The view's `name` value.
    pub(crate) name: Location,
    /// The `version` value.
    pub(crate) version: Location,
    /// The `entities` list.
    pub(crate) entities: Location,
    /// The `timestamp_field` value, when declared on the view.
    pub(crate) timestamp_field: Option<Location>,
    /// Each feature's `name` and `dtype` values.
    pub(crate) features: BTreeMap<String, FeatureLocations>,
}

/// Where the parts of one feature were declared.
#[derive(Debug, Clone)]
pub(crate) struct FeatureLocations {
    /// The feature's `name` value.
    pub(crate) name: Location,
    /// The feature's `dtype` value.
    pub(crate) dtype: Location,
}

impl FeatureRepo {
    /// Loads the feature repo at `root`: reads `larder.yaml` (with environment overrides),
    /// then every definition file (see the module documentation for which), and validates
    /// them. All problems found are returned together, sorted by file and line.
    pub fn load(root: &Path) -> Result<FeatureRepo, Diagnostics> {
        let config = RepoConfig::load(root)?;
        Self::load_with_config(root, config)
    }

    /// [`FeatureRepo::load`] with a config that the caller already loaded.
    pub fn load_with_config(root: &Path, config: RepoConfig) -> Result<FeatureRepo, Diagnostics> {
        let definition_files = find_definition_files(root, &config)?;
        let mut diagnostics = Diagnostics::new();
        let mut parsed_files = Vec::new();
        for relative_path in &definition_files {
            match parse_definition_file(root, relative_path) {
                Ok(definitions) => parsed_files.push(ParsedFile {
                    path: relative_path.clone(),
                    definitions,
                }),
                Err(diagnostic) => diagnostics.push(diagnostic),
            }
        }
        diagnostics.into_result(())?;

        let mut resolver = Resolver::new(root, &config);
        for file in &parsed_files {
            resolver.resolve_entities(file);
        }
        for file in &parsed_files {
            resolver.resolve_sources(file);
        }
        for file in &parsed_files {
            resolver.resolve_feature_views(file);
        }
        for file in &parsed_files {
            resolver.resolve_feature_services(file);
        }
        let Resolver {
            registry,
            diagnostics,
            object_locations,
            feature_view_locations,
            ..
        } = resolver;
        diagnostics.into_result(FeatureRepo {
            root: root.to_path_buf(),
            config,
            registry,
            definition_files,
            object_locations,
            feature_view_locations,
        })
    }

    /// The repo's configuration (after environment overrides).
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// The repo root, as given to [`FeatureRepo::load`].
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The definitions, resolved and validated (project from the config, `applied_at` 0).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The definitions, resolved and validated.
    pub fn into_registry(self) -> Registry {
        self.registry
    }

    /// The definition files that were read, relative to the root, in the order they were read.
    pub fn definition_files(&self) -> &[PathBuf] {
        &self.definition_files
    }

    /// Where an object was declared (the position of its `name`).
    pub fn location_of(&self, kind: ObjectKind, name: &str) -> Option<Location> {
        self.object_locations
            .get(&(kind, name.to_string()))
            .cloned()
    }

    /// Where the parts of a feature view were declared.
    pub(crate) fn feature_view_locations(&self, view_name: &str) -> Option<&FeatureViewLocations> {
        self.feature_view_locations.get(view_name)
    }

    /// Checks a feature view against the output schema of its transformation (or of its source
    /// when it has none): every join key and the timestamp field must be columns, and every
    /// declared feature must be a column of the declared dtype. A declared `vector<N>` accepts
    /// a `list<float32>` or `list<float64>` column. Each mismatch is reported at the feature's
    /// `dtype`, with the cast that would fix it.
    pub fn check_view_schema(
        &self,
        view_name: &str,
        columns: &[SchemaColumn],
    ) -> Result<(), Diagnostics> {
        let Some(view) = self.registry.feature_views.get(view_name) else {
            return Err(Diagnostic::new(format!("unknown feature view '{view_name}'")).into());
        };
        let locations = self.feature_view_locations.get(view_name);
        let view_location = locations.map(|locations| locations.name.clone());
        let columns_by_name: BTreeMap<&str, &SchemaColumn> = columns
            .iter()
            .map(|column| (column.name.as_str(), column))
            .collect();
        let column_list = columns
            .iter()
            .map(|column| column.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let output_description = match &view.transformation_path {
            Some(path) => format!("the output of its transformation ({path})"),
            None => format!("source '{}'", view.source),
        };
        let key_prefix = format!("feature_views.{view_name}");
        let mut diagnostics = Diagnostics::new();
        let mut report = |location: Option<Location>, key: String, message: String| {
            let diagnostic = Diagnostic::new(message).with_key(key);
            diagnostics.push(match location {
                Some(location) => diagnostic.with_location(location),
                None => diagnostic,
            });
        };

        for join_key in &view.join_keys {
            if !columns_by_name.contains_key(join_key.name.as_str()) {
                report(
                    locations
                        .map(|locations| locations.entities.clone())
                        .or_else(|| view_location.clone()),
                    format!("{key_prefix}.entities"),
                    format!(
                        "join key '{}' of feature view '{view_name}' is not a column of {output_description} (columns: {column_list})",
                        join_key.name
                    ),
                );
            }
        }
        if !columns_by_name.contains_key(view.timestamp_field.as_str()) {
            let declared_location =
                locations.and_then(|locations| locations.timestamp_field.clone());
            let origin = if declared_location.is_some() {
                String::new()
            } else {
                format!(" (inherited from source '{}')", view.source)
            };
            report(
                declared_location.or_else(|| view_location.clone()),
                format!("{key_prefix}.timestamp_field"),
                format!(
                    "timestamp field '{}'{origin} of feature view '{view_name}' is not a column of {output_description} (columns: {column_list})",
                    view.timestamp_field
                ),
            );
        }
        for feature in &view.features {
            let feature_locations =
                locations.and_then(|locations| locations.features.get(&feature.name));
            let Some(column) = columns_by_name.get(feature.name.as_str()) else {
                report(
                    feature_locations
                        .map(|found| found.name.clone())
                        .or_else(|| view_location.clone()),
                    format!("{key_prefix}.features.{}", feature.name),
                    format!(
                        "feature '{}' is not a column of {output_description} (columns: {column_list})",
                        feature.name
                    ),
                );
                continue;
            };
            if column_matches_declared_type(column.dtype.as_ref(), &feature.dtype) {
                continue;
            }
            let actual = match &column.dtype {
                Some(dtype) => format!("{dtype} (arrow {})", column.arrow_type),
                None => format!(
                    "arrow type {}, which Larder cannot store",
                    column.arrow_type
                ),
            };
            let fix = cast_suggestion(
                &feature.name,
                &feature.dtype,
                view.transformation_path.is_some(),
            );
            report(
                feature_locations
                    .map(|found| found.dtype.clone())
                    .or_else(|| view_location.clone()),
                format!("{key_prefix}.features.{}.dtype", feature.name),
                format!(
                    "feature '{}' is declared {} but {output_description} has {actual}; {fix}",
                    feature.name, feature.dtype
                ),
            );
        }
        diagnostics.into_result(())
    }
}

/// Whether a column of type `actual` can be stored as a feature declared `declared`.
fn column_matches_declared_type(actual: Option<&ValueType>, declared: &ValueType) -> bool {
    let Some(actual) = actual else {
        return false;
    };
    if actual == declared {
        return true;
    }
    match (declared, actual) {
        (ValueType::Vector(_), ValueType::List(element)) => {
            matches!(element.as_ref(), ValueType::Float32 | ValueType::Float64)
        }
        _ => false,
    }
}

/// How to make a column produce the declared type.
fn cast_suggestion(feature_name: &str, declared: &ValueType, has_transformation: bool) -> String {
    let sql_type = match declared {
        ValueType::Bool => Some("BOOLEAN"),
        ValueType::Int32 => Some("INT"),
        ValueType::Int64 => Some("BIGINT"),
        ValueType::Float32 => Some("REAL"),
        ValueType::Float64 => Some("DOUBLE"),
        ValueType::String => Some("VARCHAR"),
        ValueType::Bytes => Some("BYTEA"),
        ValueType::Timestamp => Some("TIMESTAMP"),
        ValueType::List(_) | ValueType::Vector(_) => None,
    };
    let cast =
        sql_type.map(|sql_type| format!("CAST({feature_name} AS {sql_type}) AS {feature_name}"));
    match (has_transformation, cast) {
        (true, Some(cast)) => format!("cast it in the SQL: {cast}"),
        (true, None) => format!("cast it in the SQL to {declared}, or declare the dtype it has"),
        (false, Some(cast)) => {
            format!("add a transformation that casts it ({cast}), or declare the dtype it has")
        }
        (false, None) => format!(
            "add a transformation that converts it to {declared}, or declare the dtype it has"
        ),
    }
}

mod definitions;
mod discovery;
mod resolve;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
