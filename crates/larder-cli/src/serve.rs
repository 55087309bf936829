//! `larder serve`: the HTTP feature server.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use larder_server::documents::DocumentSearch;
use larder_server::forget::ForgetService;
use larder_server::push::PushService;
use larder_server::training::TrainingService;
use larder_server::{FeatureServer, RegistryHandle, Services, ServingLimits};

use crate::context::{OnlineStores, RepoContext};

/// Where to listen; `None` falls back to larder.yaml's `serving` section.
#[derive(Debug, Clone, Default)]
pub struct ListenOptions {
    /// HTTP address.
    pub host: Option<String>,
    /// HTTP port (0: any free port).
    pub port: Option<u16>,
    /// gRPC port (0: any free port).
    pub grpc_port: Option<u16>,
}

/// Opens the configured store and serves until Ctrl-C or SIGTERM.
pub async fn run(root: &Path, listen: ListenOptions) -> Result<()> {
    let context = RepoContext::load(root)?;
    let stores = context.open_online_stores().await?;
    run_with_store(&context, stores, listen).await
}

/// Serves `store` over HTTP (and gRPC when a gRPC port is configured) until Ctrl-C or SIGTERM,
/// consumes the stream views' sources and runs the scheduled batch views (with `digests`, the
/// change detection's store that was opened with `store`).
pub async fn run_with_store(
    context: &RepoContext,
    stores: OnlineStores,
    listen: ListenOptions,
) -> Result<()> {
    let OnlineStores {
        store,
        digests,
        vectors,
    } = stores;
    // Before anything records: metrics recorded before the recorder exists are lost (a stream
    // consumer can finish its first batches before the router is built).
    let _ = larder_server::metrics::prometheus_handle();
    let registry = context.applied_registry()?;
    let project = registry.project.clone();
    let example = example_request(&registry);
    let handle = Arc::new(RegistryHandle::new(registry));
    let refresher = handle.spawn_refresher(context.registry_store(), Duration::from_secs(1));
    let serving = &context.config.serving;
    let limits = ServingLimits {
        max_entities_per_request: serving.max_entities_per_request,
        max_body_bytes: serving.max_body_bytes,
        max_concurrent_requests: serving.max_concurrent_requests,
        max_concurrent_historical_requests: serving.max_concurrent_historical_requests,
        read_header_timeout: Duration::from_secs(serving.read_header_timeout.as_seconds()),
        read_body_timeout: Duration::from_secs(serving.read_body_timeout.as_seconds()),
    };
    let write_path = Arc::new(larder_ingest::WritePath::new(Arc::clone(&store)));
    let (stop_sender, stop_receiver) = tokio::sync::watch::channel(false);
    let stream_state = larder_stream::state::SharedStreamState::new(context.stream_state_path())
        .with_checkpoint_interval(Duration::from_secs(
            context.config.stream.checkpoint_interval.as_seconds(),
        ));
    let stream_consumers = crate::stream::spawn_consumers(
        stream_state.clone(),
        Arc::clone(&handle),
        Arc::clone(&write_path),
        &stop_receiver,
    );
    // A remote store's digests live in a local file that `larder materialize` must be able
    // to open while the server runs: the scheduler opens it for each run instead.
    let digests = context.digest_opener(context.digests_live_in_online_store().then_some(digests));
    let materializer = Arc::new(crate::materialize::ServeMaterializer::new(
        Arc::new(context.clone()),
        Arc::clone(&store),
        Arc::clone(&digests),
    ));
    let schedule = crate::materialize::ServeSchedule {
        registry: Arc::clone(&handle),
        materializer: Arc::clone(&materializer),
    };
    let scheduler = larder_ingest::spawn_scheduler(
        Arc::new(schedule),
        context.run_history(),
        stop_receiver.clone(),
    );
    let eraser = context
        .eraser(Arc::clone(&store), digests)
        .with_state_store(Arc::new(stream_state));
    for report in eraser
        .resume_pending()
        .await
        .context("finishing the erasures a previous run left pending")?
    {
        println!("{}", crate::forget::summary(&report));
    }
    let offline_store = context.offline_store();
    // Training sets join on the configured engine (Spark is connected to now, so a wrong
    // remote stops the server here rather than failing its first training set).
    let training_engine =
        crate::context::open_offline_engine(&context.root, &context.config, Vec::new())
            .await
            .context("opening the offline engine for training sets")?;
    let push = PushService::new(
        Arc::clone(&handle),
        write_path,
        serving.max_entities_per_request,
    )
    .with_event_time_bounds(context.event_time_bounds())
    .with_offline_store(Arc::clone(&offline_store));
    let auth = Arc::new(context.authenticator()?);
    let auth_reloader = auth.spawn_reloader(Duration::from_secs(1));
    let write_audit = larder_server::audit::WriteAudit::open(&context.write_audit_path())
        .with_context(|| format!("opening {}", context.write_audit_path().display()))?;
    let services = Services {
        auth: Arc::clone(&auth),
        write_audit: Some(Arc::new(write_audit)),
        runs: Some(context.run_history()),
        apply: Some(Arc::new(crate::apply::ServeApplier::new(&context.root))),
        materialize: Some(materializer),
        forget: Some(Arc::new(ForgetService::new(Arc::clone(&handle), eraser))),
        training: Some(Arc::new(
            TrainingService::new(
                Arc::clone(&handle),
                offline_store,
                serving.max_concurrent_historical_requests,
            )
            .with_engine(training_engine),
        )),
        push: Some(Arc::new(push)),
        documents: Some(Arc::new(DocumentSearch::new(
            Arc::clone(&handle),
            Arc::clone(&store),
            Arc::clone(&vectors),
            serving.max_top_k,
        ))),
        features: Arc::new(FeatureServer::new(handle, store, limits)),
    };
    let host = listen.host.unwrap_or_else(|| serving.host.clone());
    let port = listen.port.unwrap_or(serving.port);
    let listener = tokio::net::TcpListener::bind((host.as_str(), port))
        .await
        .with_context(|| format!("listening on {host}:{port}"))?;
    let address = listener.local_addr()?;
    let grpc_listener = match listen.grpc_port.or(serving.grpc_port) {
        Some(grpc_port) => Some(
            tokio::net::TcpListener::bind((host.as_str(), grpc_port))
                .await
                .with_context(|| format!("listening for gRPC on {host}:{grpc_port}"))?,
        ),
        None => None,
    };
    let address_file = context.server_address_file();
    if let Err(error) = std::fs::write(&address_file, format!("http://{address}\n")) {
        tracing::warn!(%error, path = %address_file.display(), "cannot record the server address");
    }
    println!("Larder is serving project '{project}' on http://{address}");
    if auth.is_enabled() {
        println!(
            "Access control is on: {} API token(s); the discovery UI is at /ui",
            auth.token_count()
        );
    } else {
        println!("The discovery UI is at /ui");
        if !address.ip().is_loopback() {
            eprintln!(
                "warning: serving on {address}, reachable from other machines, without access control: anyone who can reach the port can read, write and erase. Turn it on with one line in larder.yaml: auth: {{tokens_file: data/tokens.yaml}} (then `larder token create`)"
            );
        }
    }
    let stopped = |mut receiver: tokio::sync::watch::Receiver<bool>| async move {
        let _ = receiver.wait_for(|stop| *stop).await;
    };
    let grpc_task = match grpc_listener {
        Some(grpc_listener) => {
            println!(
                "gRPC (larder.serving.v1.FeatureServing) on {}",
                grpc_listener.local_addr()?
            );
            let grpc_services = services.clone();
            let stop = stopped(stop_receiver.clone());
            Some(tokio::spawn(async move {
                larder_server::grpc::serve(grpc_listener, grpc_services, stop).await
            }))
        }
        None => None,
    };
    if let Some(example) = example {
        println!("Try: curl -s http://{address}/get-online-features -d '{example}'");
    }
    std::io::stdout().flush()?;
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_sender.send(true);
    });
    larder_server::http::serve(listener, services, stopped(stop_receiver)).await?;
    if let Some(task) = grpc_task {
        task.await.context("gRPC server task")??;
    }
    let _ = stream_consumers.await;
    let _ = scheduler.await;
    refresher.abort();
    if let Some(reloader) = auth_reloader {
        reloader.abort();
    }
    // The next start loads the graphs instead of replaying the changes since the last
    // snapshot.
    if let Err(error) = vectors.flush().await {
        eprintln!(
            "warning: saving the vector indexes failed ({error}); the next start replays their recent changes"
        );
    }
    let _ = std::fs::remove_file(&address_file);
    println!("Stopped.");
    Ok(())
}

/// A request body naming the first feature of the first online view, for the startup hint.
fn example_request(registry: &larder_registry::Registry) -> Option<String> {
    let view = registry.feature_views.values().find(|view| view.online)?;
    let feature = view.features.first()?;
    let entities: serde_json::Map<String, serde_json::Value> = view
        .join_keys
        .iter()
        .map(|join_key| {
            let values = match join_key.dtype {
                larder_core::ValueType::String => serde_json::json!(["a", "b"]),
                _ => serde_json::json!([1, 2, 3]),
            };
            (join_key.name.clone(), values)
        })
        .collect();
    Some(serde_json::json!({"features": [format!("{}:{}", view.name, feature.name)], "entities": entities}).to_string())
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
