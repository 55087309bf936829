//! What every broker's consumer shares: batching of messages and the batches being
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
/// How often a batch that waits for the previous one's rows checks whether they are written.
const BUSY_POLL: Duration = Duration::from_millis(2);

/// Waits for a first message, then gathers more for [`BATCH_LINGER`], and for as long as the
/// previous batch is still writing its rows, up to [`MAX_BATCH`]: batches grow when the store
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

/// The batches being persisted in the background while the next is prepared: at most two,
/// one committing its state while the next writes its rows.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    tasks: std::collections::VecDeque<Persisting>,
}

#[derive(Debug)]
struct Persisting {
    task: tokio::task::JoinHandle<Result<(), StreamError>>,
    /// Fires once the batch's rows are written (or is dropped when it failed before).
    rows_written: Option<tokio::sync::oneshot::Receiver<()>>,
    written: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// What a persist calls once its batch's rows are written: the next batch may write its own.
#[derive(Debug)]
pub(crate) struct RowsWritten {
    signal: tokio::sync::oneshot::Sender<()>,
    written: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl RowsWritten {
    /// The batch's rows are written.
    pub(crate) fn done(self) {
        self.written
            .store(true, std::sync::atomic::Ordering::Release);
        let _ = self.signal.send(());
    }
}

impl InFlight {
    /// Waits until the newest batch in flight has written its rows (and the one before it
    /// has finished, returning its error, if it failed), then starts persisting the next:
    /// `persist` calls [`RowsWritten::done`] once its rows are written.
    pub(crate) async fn replace<P, F>(&mut self, persist: P) -> Result<(), StreamError>
    where
        P: FnOnce(RowsWritten) -> F,
        F: Future<Output = Result<(), StreamError>> + Send + 'static,
    {
        while self.tasks.len() > 1 {
            self.finish_oldest().await?;
        }
        if let Some(newest) = self.tasks.back_mut()
            && let Some(rows_written) = newest.rows_written.take()
            && rows_written.await.is_err()
        {
            // It ended before writing its rows: its result says why.
            self.finish().await?;
        }
        let (signal, rows_written) = tokio::sync::oneshot::channel();
        let written = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn(persist(RowsWritten {
            signal,
            written: std::sync::Arc::clone(&written),
        }));
        self.tasks.push_back(Persisting {
            task,
            rows_written: Some(rows_written),
            written,
        });
        Ok(())
    }

    /// Whether the newest batch is still writing its rows.
    pub(crate) fn is_busy(&self) -> bool {
        self.tasks.back().is_some_and(|newest| {
            !newest.written.load(std::sync::atomic::Ordering::Acquire) && !newest.task.is_finished()
        })
    }

    /// Waits for every batch in flight, oldest first.
    pub(crate) async fn finish(&mut self) -> Result<(), StreamError> {
        while !self.tasks.is_empty() {
            self.finish_oldest().await?;
        }
        Ok(())
    }

    async fn finish_oldest(&mut self) -> Result<(), StreamError> {
        match self.tasks.pop_front() {
            Some(oldest) => oldest
                .task
                .await
                .map_err(|error| StreamError::State(format!("persist task failed: {error}")))?,
            None => Ok(()),
        }
    }
}
