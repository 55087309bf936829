//! `larder repair-future-event-times`: deletes online rows whose event time lies beyond the
//! direct writes' bounds, so the entity's next write lands again.
//!
//! Such a row (written before the bounds existed, e.g. milliseconds sent as seconds) would
//! otherwise block every later write of its entity, since an older event time never
//! overwrites a newer one. Works on the store directly, or asks the running `larder serve`
//! when it holds the embedded store.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use larder_online::OnlineStoreError;
use larder_server::RegistryHandle;
use larder_server::push::{PushService, parse_repair};

use crate::context::RepoContext;

/// Arguments of `larder repair-future-event-times`.
#[derive(Debug, clap::Args)]
pub struct RepairArgs {
    /// The feature view.
    #[arg(long)]
    view: String,
    /// Entity key values, `join_key=value[,value...]`; repeat for composite keys.
    #[arg(long = "entity", short = 'e', required = true)]
    entities: Vec<String>,
}

/// Runs `larder repair-future-event-times`.
pub async fn run(root: &Path, args: &RepairArgs) -> Result<()> {
    let context = RepoContext::load(root)?;
    let entities = crate::get::entity_columns(&args.entities)?;
    let entity_count = entities
        .values()
        .next()
        .and_then(serde_json::Value::as_array)
        .map_or(0, Vec::len);
    let request_json = serde_json::json!({
        "feature_view_name": args.view,
        "entities": entities,
    });
    let response = match context.open_online_store().await {
        Ok(store) => {
            let registry = Arc::new(RegistryHandle::new(context.applied_registry()?));
            let write_path = Arc::new(larder_ingest::WritePath::new(store));
            let service = PushService::new(
                registry,
                write_path,
                context.config.serving.max_entities_per_request,
            )
            .with_event_time_bounds(context.event_time_bounds());
            let request = parse_repair(&serde_json::to_vec(&request_json)?)
                .map_err(|error| anyhow!("{error}"))?;
            let deleted = service
                .repair_future_event_times(request)
                .await
                .map_err(|error| anyhow!("{error}"))?;
            serde_json::json!({ "deleted": deleted })
        }
        Err(OnlineStoreError::Locked { .. }) => {
            let url = format!("{}/repair-future-event-times", context.server_base_url());
            eprintln!("(the online store is held by a running `larder serve`; asking it at {url})");
            let url_for_task = url.clone();
            tokio::task::spawn_blocking(move || crate::get::post_json(&url_for_task, &request_json))
                .await
                .context("HTTP request task failed")?
                .with_context(|| format!("asking the running server at {url}"))?
        }
        Err(error) => return Err(error.into()),
    };
    let deleted = response["deleted"].as_array().cloned().unwrap_or_default();
    for row in &deleted {
        println!(
            "deleted {} {}: event time {}",
            args.view, row["entity"], row["event_timestamp"]
        );
    }
    println!(
        "{} of {} entities had an event time beyond the bounds; their next write lands.",
        deleted.len(),
        entity_count
    );
    Ok(())
}
