//! The streaming lane in the binary: consumers started by `larder serve`, and
//! `larder stream-backfill` (the offline rows of a stream view from a recorded event history).

use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use larder_ingest::WritePath;
use larder_registry::Registry;
use larder_stream::job::StreamViewJob;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::context::RepoContext;

/// The online views fed by a stream source, with their aggregations.
pub fn stream_jobs(registry: &Registry) -> Vec<StreamViewJob> {
    registry
        .feature_views
        .values()
        .filter(|view| view.online)
        .filter_map(|view| {
            let source = registry.sources.get(&view.source)?;
            source.kind.is_stream().then(|| StreamViewJob {
                view: view.clone(),
                source: source.clone(),
                aggregations: registry.stream_views.get(&view.name).cloned(),
            })
        })
        .collect()
}

/// Keeps one consumer per online stream view of the registry `handle` serves, following
/// `larder apply` (views added, changed or removed while serving); all stop when `stop`
/// turns true.
pub fn spawn_consumers(
    state: larder_stream::state::SharedStreamState,
    handle: Arc<larder_server::RegistryHandle>,
    write_path: Arc<WritePath>,
    stop: &watch::Receiver<bool>,
) -> JoinHandle<()> {
    larder_stream::consumer::run_views(
        move || stream_jobs(&handle.snapshot()),
        write_path,
        state,
        stop.clone(),
        |job| {
            let from = larder_stream::resolver::open_source(&job.source).map_or_else(
                |_| job.source.kind.kind_name().to_string(),
                |source| source.describe(),
            );
            println!(
                "Consuming {from} into feature view '{}' (consumer {})",
                job.view.name,
                job.consumer_name()
            );
        },
    )
}

/// `larder stream-backfill`: replays a stream view's event history through its aggregations
/// and replaces its offline rows. The history is what the broker retains (each Kafka
/// partition, or the NATS stream's subject, in order), or a recorded file (one message per
/// line, in stream order).
pub async fn backfill(root: &Path, view_name: &str, events: Option<&Path>) -> Result<()> {
    let context = RepoContext::load(root)?;
    let registry = context.applied_registry()?;
    let view = registry
        .feature_views
        .get(view_name)
        .ok_or_else(|| anyhow!("unknown feature view '{view_name}'"))?;
    let Some(aggregations) = registry.stream_views.get(view_name) else {
        bail!(
            "feature view '{view_name}' has no aggregations: only stream views with aggregations are backfilled"
        );
    };
    // The run, as the lineage catalog sees it: START now, COMPLETE or FAIL at its end.
    let lineage = context
        .lineage_emitter(&registry)
        .map(|emitter| emitter.start_backfill(view, events));
    let outcome = run_backfill(&context, &registry, view, aggregations, events).await;
    if let Some(lineage) = lineage {
        match &outcome {
            Ok(statistics) => lineage.complete(statistics),
            Err(error) => lineage.fail(&format!("{error:#}")),
        }
    }
    context.flush_lineage();
    outcome.map(|_| ())
}

/// Reads the history, replays it and replaces the view's offline rows; what it wrote.
async fn run_backfill(
    context: &RepoContext,
    registry: &Registry,
    view: &larder_core::FeatureView,
    aggregations: &larder_core::StreamAggregations,
    events: Option<&Path>,
) -> Result<larder_ingest::lineage::RunStatistics> {
    let view_name = view.name.as_str();
    let source = registry
        .sources
        .get(&view.source)
        .ok_or_else(|| anyhow!("unknown source '{}'", view.source))?;
    let partitions = match events {
        Some(events) => {
            let file = std::fs::File::open(events)
                .with_context(|| format!("opening the event history {}", events.display()))?;
            let mut lines = Vec::new();
            for line in std::io::BufReader::new(file).lines() {
                let line = line.with_context(|| format!("reading {}", events.display()))?;
                if !line.trim().is_empty() {
                    lines.push(line.into_bytes());
                }
            }
            vec![lines]
        }
        None => larder_stream::backfill::read_history(source)
            .await
            .with_context(|| format!("reading the history of source '{}'", source.name))?,
    };
    let (rows, report) =
        larder_stream::backfill::backfill_partitions(view, source, aggregations, &partitions)?;
    let summary =
        larder_stream::backfill::write_offline(context.offline_store().as_ref(), view, &rows)?;
    println!(
        "Backfilled feature view '{view_name}' from {} partition(s): {} events applied, {} late (dropped), {} invalid; {} offline rows in {} files.",
        partitions.len(),
        report.applied,
        report.late,
        report.invalid,
        summary.rows,
        summary.files
    );
    Ok(larder_stream::backfill::lineage_statistics(
        partitions.len(),
        &report,
        &summary,
    ))
}
