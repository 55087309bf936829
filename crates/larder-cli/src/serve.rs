//! `larder serve`: the HTTP feature server.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use larder_online::SharedOnlineStore;
use larder_server::{FeatureServer, RegistryHandle, ServingLimits};

use crate::context::RepoContext;

/// Opens the configured store and serves until Ctrl-C or SIGTERM.
pub async fn run(root: &Path, host: Option<String>, port: Option<u16>) -> Result<()> {
    let context = RepoContext::load(root)?;
    let store = context.open_online_store().await?;
    run_with_store(&context, store, host, port).await
}

/// Serves `store` until Ctrl-C or SIGTERM.
pub async fn run_with_store(
    context: &RepoContext,
    store: SharedOnlineStore,
    host: Option<String>,
    port: Option<u16>,
) -> Result<()> {
    let registry = context.applied_registry()?;
    let project = registry.project.clone();
    let handle = Arc::new(RegistryHandle::new(registry));
    let refresher = handle.spawn_refresher(context.registry_store(), Duration::from_secs(1));
    let serving = &context.config.serving;
    let limits = ServingLimits {
        max_entities_per_request: serving.max_entities_per_request,
        max_body_bytes: serving.max_body_bytes,
    };
    let server = Arc::new(FeatureServer::new(handle, store, limits));
    let host = host.unwrap_or_else(|| serving.host.clone());
    let port = port.unwrap_or(serving.port);
    let listener = tokio::net::TcpListener::bind((host.as_str(), port))
        .await
        .with_context(|| format!("listening on {host}:{port}"))?;
    let address = listener.local_addr()?;
    let address_file = context.server_address_file();
    if let Err(error) = std::fs::write(&address_file, format!("http://{address}\n")) {
        tracing::warn!(%error, path = %address_file.display(), "cannot record the server address");
    }
    println!("Larder is serving project '{project}' on http://{address}");
    println!(
        "Try: curl -s http://{address}/get-online-features -d '{{\"features\":[\"user_profile:age\",\"user_activity:clicks_7d\"],\"entities\":{{\"user_id\":[1,2,3]}}}}'"
    );
    std::io::stdout().flush()?;
    larder_server::http::serve(listener, server, shutdown_signal()).await?;
    refresher.abort();
    let _ = std::fs::remove_file(&address_file);
    println!("Stopped.");
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}
