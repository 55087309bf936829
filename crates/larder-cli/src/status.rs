//! `larder status`: each online view's freshness against its SLA, asked of the running
//! server (which holds the freshness of what it wrote), beside the batch run history.

use std::path::Path;

use anyhow::{Context, Result};

use crate::context::RepoContext;

/// Prints the status report of the server running over the repo at `root`.
pub async fn run(root: &Path, as_json: bool) -> Result<()> {
    let context = RepoContext::load(root)?;
    let url = format!("{}/status", context.server_base_url());
    let url_for_task = url.clone();
    let report = tokio::task::spawn_blocking(move || fetch_json(&url_for_task))
        .await
        .context("HTTP request task failed")?
        .with_context(|| {
            format!("asking the running server at {url} (is `larder serve` running?)")
        })?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let history = context.run_history();
    println!(
        "{:<24} {:<8} {:<10} {:>9} {:>10} {:>10} {:>12}  last write / last batch run",
        "view", "source", "status", "sla", "lag p50", "lag p99", "newest age"
    );
    let empty = Vec::new();
    let views = report["views"].as_array().unwrap_or(&empty);
    for view in views {
        let name = view["view"].as_str().unwrap_or("?");
        let version = view["version"]
            .as_u64()
            .and_then(|version| u32::try_from(version).ok())
            .unwrap_or(1);
        let last_run = history
            .last_successful_run(name, version)
            .ok()
            .flatten()
            .map(|run| format!("batch run {}", run.started_at));
        let last_write = view["last_write_time"].as_str().map(|time| {
            format!(
                "{} ({})",
                time,
                view["last_write_lane"].as_str().unwrap_or("?")
            )
        });
        println!(
            "{:<24} {:<8} {:<10} {:>9} {:>10} {:>10} {:>12}  {}",
            format!("{name}:v{}", view["version"]),
            view["source"].as_str().unwrap_or("?"),
            view["status"].as_str().unwrap_or("?"),
            seconds(&view["freshness_sla_seconds"]),
            seconds(&view["lag_p50_seconds"]),
            seconds(&view["lag_p99_seconds"]),
            seconds(&view["newest_event_age_seconds"]),
            last_write.or(last_run).unwrap_or_else(|| "-".to_string()),
        );
        if let (Some(schedule), Some(next)) = (
            view["schedule"].as_str(),
            view["next_scheduled_run"].as_str(),
        ) {
            println!("    schedule \"{schedule}\": next run at {next}");
        }
    }
    Ok(())
}

/// A number of seconds for a table cell: `-` when absent, then ms, s, min, h or d.
fn seconds(value: &serde_json::Value) -> String {
    let Some(seconds) = value.as_f64() else {
        return "-".to_string();
    };
    match seconds {
        s if s < 1.0 => format!("{:.0}ms", s * 1_000.0),
        s if s < 120.0 => format!("{s:.1}s"),
        s if s < 7_200.0 => format!("{:.1}min", s / 60.0),
        s if s < 172_800.0 => format!("{:.1}h", s / 3_600.0),
        s => format!("{:.1}d", s / 86_400.0),
    }
}

fn fetch_json(url: &str) -> Result<serde_json::Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(true)
        .build()
        .into();
    let mut request = agent.get(url);
    if let Some(token) = crate::get::api_token() {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let mut response = request.call()?;
    Ok(response.body_mut().read_json()?)
}
