//! Problems found in a feature repo, each pointing at a file, a line and a key.
//!
//! Loading a repo collects every problem it can find before giving up, so that one run of
//! `larder plan` shows all of them. [`Diagnostics`] prints one problem a line, in the
//! `file:line:column: key: message` form that editors and terminals turn into links.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_saphyr::{MessageFormatter, UserMessageFormatter};

use crate::yaml_tree::{YamlTree, line_and_column};

/// A position in a file of the feature repo.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// Path of the file, relative to the repo root.
    pub file: PathBuf,
    /// Line, counted from 1; 0 when only the file is known.
    pub line: u32,
    /// Column in characters, counted from 1; 0 when unknown.
    pub column: u32,
}

impl Location {
    /// A position in a file.
    pub fn new(file: impl Into<PathBuf>, line: u32, column: u32) -> Self {
        Self {
            file: file.into(),
            line,
            column,
        }
    }

    /// A whole file, without a line.
    pub fn file_only(file: impl Into<PathBuf>) -> Self {
        Self {
            file: file.into(),
            line: 0,
            column: 0,
        }
    }

    /// The position of a YAML node of a file.
    pub(crate) fn from_yaml(file: &Path, location: &serde_saphyr::Location) -> Self {
        let (line, column) = line_and_column(location);
        Self {
            file: file.to_path_buf(),
            line,
            column,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.file.display())?;
        if self.line > 0 {
            write!(formatter, ":{}", self.line)?;
            if self.column > 0 {
                write!(formatter, ":{}", self.column)?;
            }
        }
        Ok(())
    }
}

/// One problem in a feature repo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where the problem is, when it is in a file.
    pub location: Option<Location>,
    /// The key it concerns, e.g. `feature_views.user_profile.features.age.dtype` or
    /// `feature_views[0].features[2].dtype` when names are not known yet.
    pub key: Option<String>,
    /// What is wrong, lowercase, without a trailing period.
    pub message: String,
}

impl Diagnostic {
    /// A problem with no position.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            location: None,
            key: None,
            message: message.into(),
        }
    }

    /// A problem at a position, about a key.
    pub fn at(location: Location, key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            location: Some(location),
            key: Some(key.into()),
            message: message.into(),
        }
    }

    /// The same problem at a position.
    #[must_use]
    pub fn with_location(mut self, location: Location) -> Self {
        self.location = Some(location);
        self
    }

    /// The same problem about a key.
    #[must_use]
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Turns a YAML parse error of a file into a diagnostic. `text` is the file's content; it
    /// is used to name the key at the error's position (and to find the position of the few
    /// errors that serde reports without one).
    pub(crate) fn from_yaml_error(file: &Path, text: &str, error: &serde_saphyr::Error) -> Self {
        let message = UserMessageFormatter
            .format_message(error.without_snippet())
            .into_owned();
        let known_position = error.location().filter(|location| location.line() > 0);
        let tree = YamlTree::parse(text);
        let mut diagnostic = Self {
            location: Some(Location::file_only(file)),
            key: None,
            message,
        };
        match (known_position, &tree) {
            (Some(position), Some(tree)) if diagnostic.message.starts_with("missing field") => {
                // serde points at the last key of the mapping that lacks the field; point at
                // the start of that mapping instead.
                let (line, column) = line_and_column(&position);
                match tree.mapping_with_key_at(line, column) {
                    Some(mapping) => {
                        diagnostic.location =
                            Some(Location::new(file, mapping.line, mapping.column));
                        diagnostic.key = Some(mapping.key_path).filter(|path| !path.is_empty());
                    }
                    None => diagnostic.location = Some(Location::from_yaml(file, &position)),
                }
            }
            (Some(position), tree) => {
                diagnostic.location = Some(Location::from_yaml(file, &position));
                let (line, column) = line_and_column(&position);
                diagnostic.key = tree
                    .as_ref()
                    .and_then(|tree| tree.key_path_at(line, column));
                // Inside internally tagged enums serde points at the key holding the enum,
                // not at the unknown field: look for the field below that key.
                let unknown_field = unknown_field_name(&diagnostic.message);
                let points_at_field = match (&diagnostic.key, unknown_field) {
                    (Some(key), Some(field)) => key == field || key.ends_with(&format!(".{field}")),
                    _ => true,
                };
                if !points_at_field
                    && let (Some(tree), Some(field)) = (tree, unknown_field)
                    && let Some(found) = tree.unique_key_named_below(line, column, field)
                {
                    diagnostic.location = Some(Location::new(file, found.line, found.column));
                    diagnostic.key = Some(found.key_path);
                }
            }
            (None, Some(tree)) => {
                if let Some(found) = unknown_field_name(&diagnostic.message)
                    .and_then(|field| tree.unique_key_named(field))
                {
                    diagnostic.location = Some(Location::new(file, found.line, found.column));
                    diagnostic.key = Some(found.key_path);
                }
            }
            (None, None) => {}
        }
        diagnostic
    }
}

/// The field named by serde's "unknown field `name`, expected ..." message.
fn unknown_field_name(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(field, _)| field)
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(location) = &self.location {
            write!(formatter, "{location}: ")?;
        }
        if let Some(key) = &self.key {
            write!(formatter, "{key}: ")?;
        }
        formatter.write_str(&self.message)
    }
}

impl std::error::Error for Diagnostic {}

/// Every problem found in a feature repo, in file and line order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// No problems.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Adds a problem.
    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.0.push(diagnostic);
    }

    /// Adds every problem of another list.
    pub fn append(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }

    /// Whether there are no problems.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The number of problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The problems, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }

    /// Orders the problems by file, line and column; problems without a position come first.
    pub fn sort(&mut self) {
        self.0
            .sort_by(|left, right| left.location.cmp(&right.location));
    }

    /// `Ok(value)` when there are no problems, otherwise the problems sorted by position.
    pub fn into_result<T>(mut self, value: T) -> Result<T, Diagnostics> {
        if self.is_empty() {
            return Ok(value);
        }
        self.sort();
        Err(self)
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(diagnostic: Diagnostic) -> Self {
        Self(vec![diagnostic])
    }
}

impl From<Vec<Diagnostic>> for Diagnostics {
    fn from(diagnostics: Vec<Diagnostic>) -> Self {
        Self(diagnostics)
    }
}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Diagnostics {
    type Item = &'a Diagnostic;
    type IntoIter = std::slice::Iter<'a, Diagnostic>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, diagnostic) in self.0.iter().enumerate() {
            if index > 0 {
                formatter.write_str("\n")?;
            }
            write!(formatter, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn diagnostics_print_one_line_each() {
        let diagnostics = Diagnostics(vec![
            Diagnostic::at(
                Location::new("path/file.yaml", 12, 9),
                "feature_views.user_profile.features.age.dtype",
                "unknown dtype 'flaot'",
            ),
            Diagnostic::new("no key, no place"),
            Diagnostic::new("whole file").with_location(Location::file_only("a.yaml")),
        ]);
        assert_eq!(
            diagnostics.to_string(),
            "path/file.yaml:12:9: feature_views.user_profile.features.age.dtype: unknown dtype 'flaot'\n\
             no key, no place\n\
             a.yaml: whole file"
        );
    }

    #[test]
    fn yaml_errors_name_the_key_at_their_position() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Item {
            name: String,
            version: u32,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Document {
            items: Vec<Item>,
        }
        let file = Path::new("defs/items.yaml");
        let check = |text: &str| {
            let error = serde_saphyr::from_str::<Document>(text).expect_err("must fail");
            Diagnostic::from_yaml_error(file, text, &error)
        };

        let unknown = check("items:\n  - name: a\n    version: 1\n    colour: red\n");
        assert_eq!(unknown.location, Some(Location::new(file, 4, 5)));
        assert_eq!(unknown.key.as_deref(), Some("items[0].colour"));
        assert!(
            unknown.message.contains("unknown field `colour`"),
            "{unknown}"
        );

        let missing = check("items:\n  - name: a\n    version: 1\n  - name: b\n");
        assert_eq!(missing.location, Some(Location::new(file, 4, 5)));
        assert_eq!(missing.key.as_deref(), Some("items[1]"));
        assert!(
            missing.message.contains("missing field `version`"),
            "{missing}"
        );

        let wrong_type = check("items:\n  - name: a\n    version: one\n");
        assert_eq!(wrong_type.location, Some(Location::new(file, 3, 14)));
        assert_eq!(wrong_type.key.as_deref(), Some("items[0].version"));

        let syntax = check("items:\n  - name: a\n    version: [1, 2\n");
        assert_eq!(
            syntax
                .location
                .as_ref()
                .map(|location| location.file.as_path()),
            Some(file)
        );
        assert!(
            syntax
                .location
                .as_ref()
                .is_some_and(|location| location.line >= 3),
            "{syntax}"
        );
    }
}
