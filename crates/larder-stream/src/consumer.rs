//! What every stream consumer shares, whatever the broker: the job description, the restart
//! loop, and the batching of messages.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use larder_core::{DataSource, DataSourceKind, FeatureView, StreamAggregations};
use larder_ingest::WritePath;
use tokio::sync::watch;

use crate::StreamError;
use crate::state::StreamStateStore;

/// Most messages in one batch.
pub(crate) const MAX_BATCH: usize = 50_000;
/// How long a batch waits for more messages once it has one.
pub(crate) const BATCH_LINGER: Duration = Duration::from_millis(20);
/// How often a batch that waits for the previous one's persist checks whether it is done.
const BUSY_POLL: Duration = Duration::from_millis(2);

/// Everything a view's consumer needs.
#[derive(Debug, Clone)]
pub struct StreamViewJob {
    /// The view.
    pub view: FeatureView,
    /// Its source (Kafka or NATS).
    pub source: DataSource,
    /// Its aggregations (`None`: values copied from the messages).
    pub aggregations: Option<StreamAggregations>,
}

impl StreamViewJob {
    /// The name under which the broker tracks this view's consumption: the source's
    /// consumer group (Kafka) or durable consumer (NATS), `larder` by default, then the view
    /// and its version, so two views of one topic consume it independently and a new
    /// version starts afresh.
    pub fn consumer_name(&self) -> String {
        let prefix = match &self.source.kind {
            DataSourceKind::Nats {
                durable: Some(name),
                ..
            }
            | DataSourceKind::Kafka {
                consumer_group: Some(name),
                ..
            } => name.as_str(),
            _ => "larder",
        };
        format!("{prefix}-{}-v{}", self.view.name, self.view.version)
    }
}

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
        let attempt = match &job.source.kind {
            DataSourceKind::Nats { .. } => {
                crate::nats::consume(&job, Arc::clone(&write_path), state.clone(), &mut shutdown)
                    .await
            }
            DataSourceKind::Kafka { .. } => {
                crate::kafka::consume(&job, Arc::clone(&write_path), state.clone(), &mut shutdown)
                    .await
            }
            _ => Err(StreamError::Definition(format!(
                "source '{}' of feature view '{}' is not a stream",
                job.source.name, job.view.name
            ))),
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

/// Waits for a first message, then gathers more for [`BATCH_LINGER`], and for as long as the
/// previous batch is still being persisted, up to [`MAX_BATCH`]: batches grow when the store
/// is the bottleneck, and stay small (fresh) when it keeps up. `Ok(None)` when `shutdown`
/// turned true first.
pub(crate) async fn next_batch<T, S>(
    messages: &mut S,
    shutdown: &mut watch::Receiver<bool>,
    in_flight: &InFlight,
) -> Result<Option<Vec<T>>, StreamError>
where
    S: Stream<Item = Result<T, StreamError>> + Unpin,
{
    let ended = || StreamError::Broker("the message stream ended".to_string());
    let first = tokio::select! {
        first = messages.next() => first.ok_or_else(ended)??,
        _ = shutdown.wait_for(|stop| *stop) => return Ok(None),
    };
    let mut batch = vec![first];
    let linger_end = tokio::time::Instant::now() + BATCH_LINGER;
    while batch.len() < MAX_BATCH {
        let now = tokio::time::Instant::now();
        let wait_until = if now < linger_end {
            linger_end
        } else if in_flight.is_busy() {
            now + BUSY_POLL
        } else {
            break;
        };
        if let Ok(message) = tokio::time::timeout_at(wait_until, messages.next()).await {
            batch.push(message.ok_or_else(ended)??);
        }
    }
    Ok(Some(batch))
}

/// Maps a broker error into [`StreamError::Broker`] with what was being done.
pub(crate) fn broker_error<E: std::fmt::Display>(
    context: &str,
) -> impl FnOnce(E) -> StreamError + '_ {
    move |error| StreamError::Broker(format!("{context}: {error}"))
}

/// The one batch being persisted in the background while the next is prepared.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    task: Option<tokio::task::JoinHandle<Result<(), StreamError>>>,
}

impl InFlight {
    /// Waits for the batch in flight (returning its error, if it failed), then starts
    /// persisting the next one.
    pub(crate) async fn replace<F>(&mut self, persist: F) -> Result<(), StreamError>
    where
        F: Future<Output = Result<(), StreamError>> + Send + 'static,
    {
        self.finish().await?;
        self.task = Some(tokio::spawn(persist));
        Ok(())
    }

    /// Whether a batch is still being persisted.
    pub(crate) fn is_busy(&self) -> bool {
        self.task.as_ref().is_some_and(|task| !task.is_finished())
    }

    /// Waits for the batch in flight, if any.
    pub(crate) async fn finish(&mut self) -> Result<(), StreamError> {
        match self.task.take() {
            Some(task) => task
                .await
                .map_err(|error| StreamError::State(format!("persist task failed: {error}")))?,
            None => Ok(()),
        }
    }
}
