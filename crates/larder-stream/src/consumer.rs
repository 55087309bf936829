//! Running stream consumers: one restart loop per view ([`run_view`]), and a supervisor that
//! keeps one consumer per stream view of the registry as it changes ([`run_views`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use larder_ingest::WritePath;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::StreamError;
use crate::job::StreamViewJob;
use crate::resolver::open_source;
use crate::state::{SharedStreamState, StreamStateStore};

/// Consumes a view's stream until `shutdown` turns true, restarting after failures with a
/// growing pause (each restart reloads the persisted state and resumes after its position).
pub async fn run_view(
    job: StreamViewJob,
    write_path: Arc<WritePath>,
    state: StreamStateStore,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let attempt = match open_source(&job.source) {
            Ok(source) => {
                source
                    .consume(&job, Arc::clone(&write_path), state.clone(), &mut shutdown)
                    .await
            }
            Err(error) => Err(error),
        };
        match attempt {
            Ok(()) => return,
            Err(StreamError::Definition(error)) => {
                tracing::error!(view = %job.view.name, %error, "stream consumer cannot run");
                return;
            }
            Err(error) => {
                tracing::warn!(view = %job.view.name, %error, "stream consumer failed; restarting");
                metrics::counter!("larder_stream_consumer_restarts_total", "view" => job.view.name.clone())
                    .increment(1);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// How often the supervisor compares the running consumers with the registry.
const SUPERVISOR_TICK: Duration = Duration::from_secs(1);

/// One running consumer and the signal that stops it alone.
struct RunningConsumer {
    job: StreamViewJob,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Keeps one consumer per stream view that `jobs` returns (read once a second, so
/// `larder apply` adds, changes and removes stream views while serving): a new view starts
/// consuming, a removed one stops, a changed one (new version, source or aggregations) is
/// stopped and started again. `on_start` is told about each consumer started. Everything
/// stops when `shutdown` turns true.
///
/// The consumers' state store (`shared_state`) is opened when the first stream view appears,
/// so a server without stream views creates no state file.
pub fn run_views<Jobs, OnStart>(
    jobs: Jobs,
    write_path: Arc<WritePath>,
    shared_state: SharedStreamState,
    mut shutdown: watch::Receiver<bool>,
    on_start: OnStart,
) -> JoinHandle<()>
where
    Jobs: Fn() -> Vec<StreamViewJob> + Send + 'static,
    OnStart: Fn(&StreamViewJob) + Send + 'static,
{
    tokio::spawn(async move {
        let mut running: BTreeMap<String, RunningConsumer> = BTreeMap::new();
        let mut state: Option<StreamStateStore> = None;
        loop {
            let mut wanted: BTreeMap<String, StreamViewJob> = jobs()
                .into_iter()
                .map(|job| (job.view.name.clone(), job))
                .collect();
            if state.is_none() && !wanted.is_empty() {
                match shared_state.get_or_open() {
                    Ok(opened) => state = Some(opened),
                    Err(error) => {
                        tracing::error!(%error, "cannot open the stream consumers' state");
                        wanted.clear();
                    }
                }
            }
            let stale: Vec<String> = running
                .iter()
                .filter(|(name, consumer)| {
                    wanted.get(*name) != Some(&consumer.job) || consumer.task.is_finished()
                })
                .map(|(name, _)| name.clone())
                .collect();
            for name in stale {
                if let Some(consumer) = running.remove(&name) {
                    let _ = consumer.stop.send(true);
                    let _ = consumer.task.await;
                }
            }
            for (name, job) in wanted {
                let Some(state) = &state else { break };
                if running.contains_key(&name) {
                    continue;
                }
                on_start(&job);
                let (stop, stopped) = watch::channel(false);
                let task = tokio::spawn(run_view(
                    job.clone(),
                    Arc::clone(&write_path),
                    state.clone(),
                    stopped,
                ));
                running.insert(name, RunningConsumer { job, stop, task });
            }
            tokio::select! {
                () = tokio::time::sleep(SUPERVISOR_TICK) => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        for consumer in running.into_values() {
            let _ = consumer.stop.send(true);
            let _ = consumer.task.await;
        }
        // What the consumers applied since the last checkpoint: durable before the files
        // close (closing them one after the other is not atomic).
        if let Some(state) = state
            && let Err(error) = state.checkpoint().await
        {
            tracing::warn!(%error, "the stream consumers' last checkpoint failed; a restart replays from the one before");
        }
    })
}
