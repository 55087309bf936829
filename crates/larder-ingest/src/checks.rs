//! Data-quality checks: a feature view's `checks:` run as SQL aggregate queries over its
//! transformation output (in the run's window, through the offline engine's
//! [`ViewOutputTable`]) before anything is written. The queries use only portable SQL
//! (`COUNT`, `MAX`, `GROUP BY ... HAVING`, `NOT IN`, `LIMIT`), so any engine runs them.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, TimeUnit, TimestampMicrosecondType};
use larder_core::{CheckRule, CheckSeverity, DataQualityCheck, FeatureView, Timestamp};
use larder_offline::{OfflineEngine, OfflineError, TimeWindow, ViewOutputTable};

/// At most this many example rows are named in a failure.
const EXAMPLE_ROW_LIMIT: usize = 5;

/// A check that did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFailure {
    /// The check's name (`not_null(age)`).
    pub check: String,
    /// Error (blocks the run) or warn.
    pub severity: CheckSeverity,
    /// What failed, with example rows.
    pub message: String,
}

impl std::fmt::Display for CheckFailure {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "check {} failed: {}", self.check, self.message)
    }
}

/// Runs every check of `view` over its transformation output in `window`; returns the
/// failures in declaration order. `previous_row_count` is the last successful run's row count
/// (for `row_count`); `now` is the reference of `freshness`.
pub async fn evaluate_checks(
    engine: &dyn OfflineEngine,
    view: &FeatureView,
    window: TimeWindow,
    previous_row_count: Option<u64>,
    now: Timestamp,
) -> Result<Vec<CheckFailure>, OfflineError> {
    if view.checks.is_empty() {
        return Ok(Vec::new());
    }
    let table = engine.view_output_table(view, window).await?;
    let mut failures = Vec::new();
    for check in &view.checks {
        if let Some(message) =
            evaluate_check(table.as_ref(), view, check, previous_row_count, now).await?
        {
            failures.push(CheckFailure {
                check: check.name(),
                severity: check.severity,
                message,
            });
        }
    }
    Ok(failures)
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The first column of the first row cast to `data_type` (an integer or a timestamp), read
/// as an i64; `None` when null.
async fn query_scalar(
    table: &dyn ViewOutputTable,
    sql: &str,
    data_type: &DataType,
) -> Result<Option<i64>, OfflineError> {
    let batches = table.query(sql).await?;
    let Some(batch) = batches.iter().find(|batch| batch.num_rows() > 0) else {
        return Ok(None);
    };
    let column =
        arrow::compute::cast(batch.column(0), data_type).map_err(|source| OfflineError::Arrow {
            context: "reading a check result".to_string(),
            source,
        })?;
    if column.is_null(0) {
        return Ok(None);
    }
    Ok(match data_type {
        DataType::Timestamp(..) => Some(column.as_primitive::<TimestampMicrosecondType>().value(0)),
        _ => Some(column.as_primitive::<Int64Type>().value(0)),
    })
}

/// A `COUNT(*)` query's number.
async fn query_count(table: &dyn ViewOutputTable, sql: &str) -> Result<Option<i64>, OfflineError> {
    query_scalar(table, sql, &DataType::Int64).await
}

/// Formats example rows as `user_id=5, event_timestamp=…, age=NULL`.
fn format_examples(batches: &[RecordBatch]) -> String {
    let mut rows = Vec::new();
    for batch in batches {
        let schema = batch.schema();
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = schema
                .fields()
                .iter()
                .zip(batch.columns())
                .map(|(field, column)| {
                    let text = if column.is_null(row) {
                        "NULL".to_string()
                    } else {
                        arrow::util::display::array_value_to_string(column, row)
                            .unwrap_or_else(|_| "?".to_string())
                    };
                    format!("{}={text}", field.name())
                })
                .collect();
            rows.push(format!("{{{}}}", cells.join(", ")));
        }
    }
    rows.join("; ")
}

/// Counts the rows of `table` matching `condition`; on a match, describes them with examples.
async fn count_violations(
    table: &dyn ViewOutputTable,
    condition: &str,
    shown_columns: &str,
    what: &str,
) -> Result<Option<String>, OfflineError> {
    let name = table.name();
    describe_violations(
        table,
        &format!("SELECT COUNT(*) FROM {name} WHERE {condition}"),
        &format!("SELECT {shown_columns} FROM {name} WHERE {condition}"),
        &format!("rows {what}"),
    )
    .await
}

/// Runs `count_sql` (one number); when it is not zero, runs `examples_sql` (limited to a few
/// rows) and says `"{count} {what}, e.g. {examples}"`.
async fn describe_violations(
    table: &dyn ViewOutputTable,
    count_sql: &str,
    examples_sql: &str,
    what: &str,
) -> Result<Option<String>, OfflineError> {
    let count = query_count(table, count_sql).await?.unwrap_or(0);
    if count == 0 {
        return Ok(None);
    }
    let examples = table
        .query(&format!("{examples_sql} LIMIT {EXAMPLE_ROW_LIMIT}"))
        .await?;
    Ok(Some(format!(
        "{count} {what}, e.g. {}",
        format_examples(&examples)
    )))
}

async fn evaluate_check(
    table: &dyn ViewOutputTable,
    view: &FeatureView,
    check: &DataQualityCheck,
    previous_row_count: Option<u64>,
    now: Timestamp,
) -> Result<Option<String>, OfflineError> {
    let mut key_columns: Vec<String> = view
        .join_keys
        .iter()
        .map(|join_key| quoted(&join_key.name))
        .collect();
    key_columns.push(quoted(&view.timestamp_field));
    let keys = key_columns.join(", ");
    match &check.rule {
        CheckRule::NotNull { column } => {
            let column = quoted(column);
            count_violations(
                table,
                &format!("{column} IS NULL"),
                &keys,
                &format!("have a null {column}"),
            )
            .await
        }
        CheckRule::Range { column, min, max } => {
            let column_sql = quoted(column);
            let mut conditions = Vec::new();
            if let Some(min) = min {
                conditions.push(format!("{column_sql} < {min}"));
            }
            if let Some(max) = max {
                conditions.push(format!("{column_sql} > {max}"));
            }
            let range = format!(
                "[{}, {}]",
                min.as_deref().unwrap_or("-inf"),
                max.as_deref().unwrap_or("inf")
            );
            count_violations(
                table,
                &format!("({})", conditions.join(" OR ")),
                &format!("{keys}, {column_sql}"),
                &format!("have {column_sql} outside {range}"),
            )
            .await
        }
        CheckRule::AllowedValues { column, values } => {
            let column_sql = quoted(column);
            count_violations(
                table,
                &format!(
                    "{column_sql} IS NOT NULL AND {column_sql} NOT IN ({})",
                    values.join(", ")
                ),
                &format!("{keys}, {column_sql}"),
                &format!("have {column_sql} not in [{}]", values.join(", ")),
            )
            .await
        }
        CheckRule::UniqueEntityPerTimestamp => {
            let name = table.name();
            let duplicates = format!(
                "SELECT {keys}, COUNT(*) AS row_count FROM {name} GROUP BY {keys} HAVING COUNT(*) > 1"
            );
            describe_violations(
                table,
                &format!("SELECT COUNT(*) FROM ({duplicates}) AS duplicates"),
                &duplicates,
                "(entity, event time) pairs have more than one row",
            )
            .await
        }
        CheckRule::RowCount { max_change_percent } => {
            let Some(previous) = previous_row_count.filter(|previous| *previous > 0) else {
                return Ok(None);
            };
            let count = query_count(table, &format!("SELECT COUNT(*) FROM {}", table.name()))
                .await?
                .unwrap_or(0);
            let allowed: f64 = max_change_percent.parse().unwrap_or(0.0);
            let change = (count as f64 - previous as f64).abs() / previous as f64 * 100.0;
            if change <= allowed {
                return Ok(None);
            }
            Ok(Some(format!(
                "{count} rows, {change:.1}% away from the last run's {previous} (allowed: ±{max_change_percent}%)"
            )))
        }
        CheckRule::Freshness { max_age } => {
            let utc_micros = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
            let newest_micros = query_scalar(
                table,
                &format!(
                    "SELECT MAX({}) FROM {}",
                    quoted(&view.timestamp_field),
                    table.name()
                ),
                &utc_micros,
            )
            .await?;
            let oldest_allowed = now.saturating_sub(*max_age);
            match newest_micros.map(Timestamp) {
                None => Ok(Some("the source has no rows".to_string())),
                Some(newest) if newest < oldest_allowed => Ok(Some(format!(
                    "the newest row is from {}, older than {max_age}",
                    newest.to_rfc3339()
                ))),
                Some(_) => Ok(None),
            }
        }
    }
}
