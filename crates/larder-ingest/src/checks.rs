//! Data-quality checks: a feature view's `checks:` run as DataFusion aggregate queries over
//! its transformation output (in the run's window) before anything is written.

use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use larder_core::{CheckRule, CheckSeverity, DataQualityCheck, FeatureView, Timestamp};
use larder_offline::{OfflineError, TimeWindow, TransformEngine};

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

static CHECK_TABLE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Runs every check of `view` over its transformation output in `window`; returns the
/// failures in declaration order. `previous_row_count` is the last successful run's row count
/// (for `row_count`); `now` is the reference of `freshness`.
pub async fn evaluate_checks(
    engine: &TransformEngine,
    view: &FeatureView,
    window: TimeWindow,
    previous_row_count: Option<u64>,
    now: Timestamp,
) -> Result<Vec<CheckFailure>, OfflineError> {
    if view.checks.is_empty() {
        return Ok(Vec::new());
    }
    let frame = engine.view_frame_in_window(view, window).await?;
    let table_name = format!(
        "__larder_checks_{}_{}",
        view.name
            .to_lowercase()
            .replace(|character: char| !character.is_ascii_alphanumeric(), "_"),
        CHECK_TABLE_COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let session = engine.session();
    session
        .register_table(table_name.as_str(), frame.into_view())
        .map_err(|source| query_error(view, source))?;
    let mut failures = Vec::new();
    let mut outcome = Ok(());
    for check in &view.checks {
        match evaluate_check(engine, view, &table_name, check, previous_row_count, now).await {
            Ok(Some(message)) => failures.push(CheckFailure {
                check: check.name(),
                severity: check.severity,
                message,
            }),
            Ok(None) => {}
            Err(error) => {
                outcome = Err(error);
                break;
            }
        }
    }
    let _ = session.deregister_table(table_name.as_str());
    outcome.map(|()| failures)
}

fn query_error(view: &FeatureView, source: datafusion::error::DataFusionError) -> OfflineError {
    OfflineError::Query {
        context: format!("data-quality checks of feature view '{}'", view.name),
        source,
    }
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

async fn run_query(
    engine: &TransformEngine,
    view: &FeatureView,
    sql: &str,
) -> Result<Vec<RecordBatch>, OfflineError> {
    let frame = engine
        .session()
        .sql(sql)
        .await
        .map_err(|source| query_error(view, source))?;
    frame
        .collect()
        .await
        .map_err(|source| query_error(view, source))
}

/// The first column of the first row as an i64 (a `COUNT(*)`), `None` when null.
async fn query_scalar(
    engine: &TransformEngine,
    view: &FeatureView,
    sql: &str,
) -> Result<Option<i64>, OfflineError> {
    let batches = run_query(engine, view, sql).await?;
    let Some(batch) = batches.iter().find(|batch| batch.num_rows() > 0) else {
        return Ok(None);
    };
    let column = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Int64)
        .map_err(|source| OfflineError::Arrow {
            context: "reading a check result".to_string(),
            source,
        })?;
    let values = column.as_primitive::<Int64Type>();
    Ok((!values.is_null(0)).then(|| values.value(0)))
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
    engine: &TransformEngine,
    view: &FeatureView,
    table: &str,
    condition: &str,
    shown_columns: &str,
    what: &str,
) -> Result<Option<String>, OfflineError> {
    describe_violations(
        engine,
        view,
        &format!("SELECT COUNT(*) FROM {table} WHERE {condition}"),
        &format!("SELECT {shown_columns} FROM {table} WHERE {condition}"),
        &format!("rows {what}"),
    )
    .await
}

/// Runs `count_sql` (one number); when it is not zero, runs `examples_sql` (limited to a few
/// rows) and says `"{count} {what}, e.g. {examples}"`.
async fn describe_violations(
    engine: &TransformEngine,
    view: &FeatureView,
    count_sql: &str,
    examples_sql: &str,
    what: &str,
) -> Result<Option<String>, OfflineError> {
    let count = query_scalar(engine, view, count_sql).await?.unwrap_or(0);
    if count == 0 {
        return Ok(None);
    }
    let examples = run_query(
        engine,
        view,
        &format!("{examples_sql} LIMIT {EXAMPLE_ROW_LIMIT}"),
    )
    .await?;
    Ok(Some(format!(
        "{count} {what}, e.g. {}",
        format_examples(&examples)
    )))
}

async fn evaluate_check(
    engine: &TransformEngine,
    view: &FeatureView,
    table: &str,
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
                engine,
                view,
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
                engine,
                view,
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
                engine,
                view,
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
            let duplicates = format!(
                "SELECT {keys}, COUNT(*) AS row_count FROM {table} GROUP BY {keys} HAVING COUNT(*) > 1"
            );
            describe_violations(
                engine,
                view,
                &format!("SELECT COUNT(*) FROM ({duplicates})"),
                &duplicates,
                "(entity, event time) pairs have more than one row",
            )
            .await
        }
        CheckRule::RowCount { max_change_percent } => {
            let Some(previous) = previous_row_count.filter(|previous| *previous > 0) else {
                return Ok(None);
            };
            let count = query_scalar(engine, view, &format!("SELECT COUNT(*) FROM {table}"))
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
            let newest_seconds = query_scalar(
                engine,
                view,
                &format!(
                    "SELECT to_unixtime(MAX({})) FROM {table}",
                    quoted(&view.timestamp_field)
                ),
            )
            .await?;
            let oldest_allowed = now.saturating_sub(*max_age);
            match newest_seconds {
                None => Ok(Some("the source has no rows".to_string())),
                Some(seconds) if Timestamp::from_seconds(seconds) < oldest_allowed => {
                    Ok(Some(format!(
                        "the newest row is from {}, older than {max_age}",
                        Timestamp::from_seconds(seconds).to_rfc3339()
                    )))
                }
                Some(_) => Ok(None),
            }
        }
    }
}
