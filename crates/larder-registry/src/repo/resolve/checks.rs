//! `checks:` of feature views: data-quality rules compiled to SQL.

use std::collections::BTreeSet;
use std::path::Path;

use larder_core::{CheckRule, CheckSeverity, DataQualityCheck};

use super::Resolver;
use crate::diagnostics::Location;
use crate::repo::definitions::{CheckDefinition, CheckLiteral};

impl Resolver<'_> {
    /// Resolves `checks:`, reporting unknown types, missing or misplaced fields and unknown
    /// columns at their position.
    pub(super) fn resolve_checks(
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
