//! `larder materialize`: the batch lane for every batch feature view.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use larder_ingest::{MaterializeProgress, WritePath, materialize_view};
use larder_offline::{TimeWindow, TransformEngine};
use larder_online::SharedOnlineStore;

use crate::context::RepoContext;

struct Bar(ProgressBar);

impl MaterializeProgress for Bar {
    fn rows_processed(&self, rows: u64) {
        self.0.inc(rows);
    }
}

/// Opens the configured store and materializes.
pub async fn run(root: &Path, only_views: &[String]) -> Result<()> {
    let context = RepoContext::load(root)?;
    let store = context.open_online_store().await?;
    run_with_store(&context, store, only_views).await
}

/// Materializes the selected batch views into `store` and the offline store.
pub async fn run_with_store(
    context: &RepoContext,
    store: SharedOnlineStore,
    only_views: &[String],
) -> Result<()> {
    let registry = context.applied_registry()?;
    for name in only_views {
        if !registry.feature_views.contains_key(name) {
            bail!("unknown feature view '{name}'");
        }
    }
    let engine = TransformEngine::new(&context.root, registry.sources.values()).await?;
    let offline_store = context.offline_store();
    let write_path = WritePath::new(store);
    let mut total_rows = 0;
    for view in registry.feature_views.values() {
        if !only_views.is_empty() && !only_views.contains(&view.name) {
            continue;
        }
        let is_batch = registry
            .sources
            .get(&view.source)
            .is_some_and(|source| source.kind.is_batch());
        if !is_batch || !(view.online || view.offline) {
            continue;
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {prefix:20} {human_pos:>12} rows  {per_sec:>14}  {elapsed}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(view.id().to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        let progress = Bar(bar.clone());
        let report = materialize_view(
            &engine,
            &offline_store,
            &write_path,
            view,
            TimeWindow::default(),
            &progress,
        )
        .await;
        bar.finish_and_clear();
        let report = report?;
        total_rows += report.rows_scanned;
        let seconds = report.duration.as_secs_f64().max(1e-9);
        println!(
            "{:<20} {:>10} rows in {:>6.2}s ({:>9.0} rows/s): online {} written, {} older skipped; offline {} rows in {} date partitions",
            report.view.to_string(),
            report.rows_scanned,
            seconds,
            report.rows_scanned as f64 / seconds,
            report.online.written,
            report.online.skipped_stale,
            report.offline.rows,
            report.offline.partitions
        );
    }
    println!("Materialized {total_rows} rows.");
    Ok(())
}
