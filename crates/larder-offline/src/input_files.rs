//! The files behind a view's rows, for runs that read only the files added since the last
//! one.
//!
//! A view whose SQL maps each source row to at most one output row, by itself (projections
//! and filters of deterministic expressions over one file source), has an output that is the
//! union of the outputs of its source's files. When the files seen by the last run are all
//! still there, unchanged, the output of the files added since is exactly what the current
//! output adds to the last one. [`row_local_source`] decides whether a view is such a view;
//! [`list_input_files`] lists a source's files as DataFusion's own listing sees them.

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;

use crate::OfflineError;

/// One source file as a run saw it: where it is, and what identifies its content (size,
/// modification time, the store's entity tag).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct InputFile {
    /// The file's URL (`file:///…`, `s3://bucket/key`).
    pub url: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, in microseconds since the epoch.
    pub modified_micros: i64,
    /// The object store's entity tag, when it gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e_tag: Option<String>,
}

/// The name DataFusion gives the scan of a table read without registering it.
const ANONYMOUS_TABLE: &str = "?table?";

/// The name of the one table a view's plan reads, when every node of the plan maps a row to
/// at most one row on its own: projections, filters and aliases of immutable expressions
/// without subqueries, over a single table scan. `None` for anything else (aggregates,
/// windows, joins, unions, sorts, limits, `DISTINCT`, `now()`, `random()`, subqueries).
pub(crate) fn row_local_source(plan: &LogicalPlan) -> Option<String> {
    let mut table: Option<String> = None;
    // A registered source is a view over an anonymous scan, named by the alias above it.
    let mut innermost_alias: Option<String> = None;
    let mut row_local = true;
    let visited = plan.apply(|node| {
        let expressions_ok = node.expressions().iter().all(is_row_local_expression);
        match node {
            LogicalPlan::Projection(_) | LogicalPlan::Filter(_) if expressions_ok => {}
            LogicalPlan::SubqueryAlias(alias) => {
                innermost_alias = Some(alias.alias.table().to_string());
            }
            LogicalPlan::TableScan(scan)
                if expressions_ok && scan.fetch.is_none() && table.is_none() =>
            {
                let name = scan.table_name.table();
                table = if name == ANONYMOUS_TABLE {
                    innermost_alias.clone()
                } else {
                    Some(name.to_string())
                };
            }
            _ => {
                row_local = false;
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    if visited.is_err() || !row_local {
        return None;
    }
    table
}

/// Whether an expression gives the same value for the same row on every run: no function
/// that is not immutable, no subquery, no aggregate or window function.
fn is_row_local_expression(expression: &Expr) -> bool {
    let disallowed = expression.exists(|node| {
        Ok(match node {
            Expr::ScalarFunction(function) => {
                function.func.signature().volatility != Volatility::Immutable
            }
            Expr::ScalarSubquery(_)
            | Expr::InSubquery(_)
            | Expr::Exists(_)
            | Expr::OuterReferenceColumn(..)
            | Expr::AggregateFunction(_)
            | Expr::WindowFunction(_)
            | Expr::Placeholder(_) => true,
            _ => false,
        })
    });
    matches!(disallowed, Ok(false))
}

/// Lists the files of a source location (a file, a folder or prefix, a glob) with
/// `extension`, as DataFusion's listing table reads them, sorted by URL.
pub(crate) async fn list_input_files(
    context: &SessionContext,
    location: &str,
    extension: &str,
) -> Result<Vec<InputFile>, OfflineError> {
    let query_error = |source| OfflineError::Query {
        context: format!("listing {location}"),
        source,
    };
    let table_url = ListingTableUrl::parse(location).map_err(query_error)?;
    let store_url = table_url.object_store();
    let store = context
        .runtime_env()
        .object_store(&store_url)
        .map_err(query_error)?;
    let state = context.state();
    let listed: Vec<_> = table_url
        .list_all_files(&state, store.as_ref(), extension)
        .await
        .map_err(query_error)?
        .try_collect()
        .await
        .map_err(query_error)?;
    let mut files: Vec<InputFile> = listed
        .into_iter()
        .map(|meta| InputFile {
            url: format!("{}{}", store_url.as_str(), meta.location),
            size: meta.size,
            modified_micros: meta.last_modified.timestamp_micros(),
            e_tag: meta.e_tag,
        })
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;

    async fn plan_of(sql: &str) -> LogicalPlan {
        let context = SessionContext::new();
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, false),
            Field::new("clicks", DataType::Int64, true),
        ]));
        for name in ["events", "other"] {
            let table = MemTable::try_new(Arc::clone(&schema), vec![vec![]]).unwrap();
            context.register_table(name, Arc::new(table)).unwrap();
        }
        context.sql(sql).await.unwrap().logical_plan().clone()
    }

    #[tokio::test]
    async fn projections_and_filters_of_one_table_are_row_local() {
        for sql in [
            "SELECT * FROM events",
            "SELECT user_id, CASE WHEN clicks > 0 THEN clicks * 2 ELSE 0 END AS c FROM events",
            "SELECT e.user_id, abs(e.clicks) AS c FROM events e WHERE clicks IS NOT NULL",
            "SELECT user_id, c FROM (SELECT user_id, clicks + 1 AS c FROM events) t WHERE c > 3",
        ] {
            assert_eq!(
                row_local_source(&plan_of(sql).await).as_deref(),
                Some("events"),
                "{sql}"
            );
        }
    }

    #[tokio::test]
    async fn plans_that_combine_or_order_rows_are_not_row_local() {
        for sql in [
            "SELECT user_id, count(*) AS c FROM events GROUP BY user_id",
            "SELECT DISTINCT user_id FROM events",
            "SELECT user_id, sum(clicks) OVER (PARTITION BY user_id) AS c FROM events",
            "SELECT * FROM events ORDER BY user_id LIMIT 10",
            "SELECT e.user_id FROM events e JOIN other o ON e.user_id = o.user_id",
            "SELECT * FROM events UNION ALL SELECT * FROM other",
            "SELECT * FROM events WHERE user_id IN (SELECT user_id FROM other)",
            "SELECT user_id, random() AS r FROM events",
            "SELECT user_id, now() AS t FROM events",
        ] {
            assert_eq!(row_local_source(&plan_of(sql).await), None, "{sql}");
        }
    }
}
