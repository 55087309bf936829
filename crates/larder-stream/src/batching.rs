//! What every broker's consumer shares: batching of messages and the one batch being
//! persisted in the background while the next is prepared.

use std::future::Future;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::watch;

use crate::StreamError;

/// Most messages in one batch.
pub(crate) const MAX_BATCH: usize = 200_000;
/// How long a batch waits for more messages once it has one.
pub(crate) const BATCH_LINGER: Duration = Duration::from_millis(20);
/// How often a batch that waits for the previous one's persist checks whether it is done.
const BUSY_POLL: Duration = Duration::from_millis(2);

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
