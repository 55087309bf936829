//! Validation and resolution of parsed definitions into a [`Registry`], collecting every
//! problem with its position.

mod aggregations;
mod checks;
mod entity;
mod feature_service;
mod feature_view;
mod source;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use larder_core::{TtlDuration, ValueType};
use serde_saphyr::Spanned;

use crate::Registry;
use crate::config::RepoConfig;
use crate::diagnostics::{Diagnostic, Diagnostics, Location};
use crate::object_kind::ObjectKind;
use crate::repo::FeatureViewLocations;

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
}
