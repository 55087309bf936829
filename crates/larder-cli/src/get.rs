//! `larder get`: read online features from the command line.
//!
//! Reads the online store directly; when the embedded store is held by a running
//! `larder serve`, asks that server instead, so the command works either way.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use larder_online::OnlineStoreError;
use larder_server::{FeatureServer, RegistryHandle, ServingLimits};

use crate::context::RepoContext;

/// Arguments of `larder get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// Entity key values, `join_key=value[,value...]`; repeat for composite keys.
    #[arg(long = "entity", short = 'e', required = true)]
    entities: Vec<String>,
    /// Feature references, `view:feature` (comma-separated or repeated).
    #[arg(long, short = 'f', value_delimiter = ',')]
    features: Vec<String>,
    /// A feature service instead of a feature list.
    #[arg(long)]
    feature_service: Option<String>,
    /// Print Feast's JSON response instead of a table.
    #[arg(long)]
    json: bool,
}

/// `--entity join_key=value[,value...]` arguments as JSON columns (integers where they
/// parse, text otherwise).
pub fn entity_columns(arguments: &[String]) -> Result<serde_json::Map<String, serde_json::Value>> {
    let mut columns = serde_json::Map::new();
    for argument in arguments {
        let Some((name, values)) = argument.split_once('=') else {
            bail!("--entity '{argument}' must look like join_key=value[,value...]");
        };
        let parsed: Vec<serde_json::Value> = values
            .split(',')
            .map(|text| match text.trim().parse::<i64>() {
                Ok(number) => serde_json::Value::from(number),
                Err(_) => serde_json::Value::from(text.trim()),
            })
            .collect();
        columns.insert(name.trim().to_string(), serde_json::Value::Array(parsed));
    }
    Ok(columns)
}

/// Runs `larder get`.
pub async fn run(root: &Path, args: &GetArgs) -> Result<()> {
    let context = RepoContext::load(root)?;
    let request_json = serde_json::json!({
        "features": if args.features.is_empty() { serde_json::Value::Null } else { serde_json::json!(args.features) },
        "feature_service": args.feature_service,
        "entities": entity_columns(&args.entities)?,
    });
    let response: serde_json::Value = match context.open_online_store().await {
        Ok(store) => {
            let registry = context.applied_registry()?;
            let server = FeatureServer::new(
                Arc::new(RegistryHandle::new(registry)),
                store,
                ServingLimits::default(),
            );
            let body = serde_json::to_vec(&request_json)?;
            let request = larder_server::json::parse_online_features_request(&body)
                .map_err(|error| anyhow!("{error}"))?;
            let result = server
                .get_online_features(request)
                .await
                .map_err(|error| anyhow!("{error}"))?;
            serde_json::to_value(result.to_response())?
        }
        Err(OnlineStoreError::Locked { .. }) => {
            let url = format!("{}/get-online-features", context.server_base_url());
            eprintln!("(the online store is held by a running `larder serve`; asking it at {url})");
            let url_for_task = url.clone();
            tokio::task::spawn_blocking(move || post_json(&url_for_task, &request_json))
                .await
                .context("HTTP request task failed")?
                .with_context(|| format!("asking the running server at {url}"))?
        }
        Err(error) => return Err(error.into()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&response)?);
    } else {
        print_table(&response);
    }
    Ok(())
}

/// The API token for a server with access control on: `LARDER_TOKEN`.
pub fn api_token() -> Option<String> {
    std::env::var("LARDER_TOKEN")
        .ok()
        .filter(|token| !token.trim().is_empty())
}

/// POSTs JSON to a running server; an error answer becomes an error with its message.
pub fn post_json(url: &str, body: &serde_json::Value) -> Result<serde_json::Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent.post(url);
    if let Some(token) = api_token() {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let mut response = request.send_json(body)?;
    let status = response.status();
    let parsed: serde_json::Value = response.body_mut().read_json()?;
    if !status.is_success() {
        // Feast's error detail: a JSON string holding {"module", "class", "message", "code"}.
        let detail: serde_json::Value = parsed
            .as_str()
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_default();
        let message = detail["message"].as_str().unwrap_or("unknown error");
        bail!("{message} (HTTP {status})");
    }
    Ok(parsed)
}

fn print_table(response: &serde_json::Value) {
    let names: Vec<&str> = response
        .pointer("/metadata/feature_names")
        .and_then(|names| names.as_array())
        .map(|names| names.iter().filter_map(|name| name.as_str()).collect())
        .unwrap_or_default();
    let empty = Vec::new();
    let results = response
        .get("results")
        .and_then(|results| results.as_array())
        .unwrap_or(&empty);
    let entity_count = results
        .first()
        .and_then(|column| column.get("values"))
        .and_then(|values| values.as_array())
        .map_or(0, Vec::len);
    let width = names.iter().map(|name| name.len()).max().unwrap_or(8);
    for row in 0..entity_count {
        if row > 0 {
            println!();
        }
        for (name, column) in names.iter().zip(results) {
            let cell = |field: &str| {
                column
                    .get(field)
                    .and_then(|values| values.get(row))
                    .cloned()
                    .unwrap_or(serde_json::Value::Null)
            };
            let value = cell("values");
            let status = cell("statuses");
            let timestamp = cell("event_timestamps");
            println!(
                "{name:<width$}  {:<24}  {:<16}  {}",
                value.to_string(),
                status.as_str().unwrap_or_default(),
                timestamp.as_str().unwrap_or_default()
            );
        }
    }
}
