//! How fresh each view's served values are: when the newest value was written, how old its
//! event time is, and how long events took from their event time to servable.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use larder_core::{Timestamp, WriteLane};

/// Lags kept per view for the percentiles of [`ViewFreshness`].
const RECENT_LAGS: usize = 16_384;

/// What one view's writes looked like, as [`FreshnessBoard::snapshot`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewFreshness {
    /// The view.
    pub view: String,
    /// The newest event time written so far.
    pub newest_event_time: Timestamp,
    /// When the last write happened (wall clock).
    pub last_write_time: Timestamp,
    /// The lane of the last write.
    pub last_lane: WriteLane,
    /// Median lag from event time to servable over the recent stream and direct writes
    /// (seconds); `None` when only batch runs wrote.
    pub lag_p50_seconds: Option<f64>,
    /// 99th percentile of the same lags.
    pub lag_p99_seconds: Option<f64>,
    /// How many recent lags the percentiles are over.
    pub lag_samples: usize,
}

#[derive(Debug)]
struct Entry {
    newest_event: i64,
    last_write: i64,
    last_lane: WriteLane,
    lags: VecDeque<f64>,
}

/// The freshness of every view written through one write path, in memory.
///
/// Event-to-servable lags are recorded for the stream and direct lanes (a batch run writes
/// values whose event times are by design hours or days old) into the histogram
/// `larder_event_to_servable_duration_seconds{view,lane}` and a window of recent lags per view.
#[derive(Debug, Default)]
pub struct FreshnessBoard {
    views: Mutex<HashMap<String, Entry>>,
}

impl FreshnessBoard {
    /// Records a write of rows with these event times (µs), servable at `now`.
    pub fn record(&self, view: &str, lane: WriteLane, event_times: &[i64], now: Timestamp) {
        let Some(&newest) = event_times.iter().max() else {
            return;
        };
        let now_micros = now.as_micros();
        let timed = matches!(lane, WriteLane::Stream | WriteLane::Direct);
        let lags: Vec<f64> = if timed {
            event_times
                .iter()
                .map(|time| (now_micros - time).max(0) as f64 / 1e6)
                .collect()
        } else {
            Vec::new()
        };
        if !lags.is_empty() {
            let histogram = metrics::histogram!(
                "larder_event_to_servable_duration_seconds",
                "view" => view.to_string(),
                "lane" => lane.as_str()
            );
            for lag in &lags {
                histogram.record(*lag);
            }
        }
        let mut views = self.views.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = views.entry(view.to_string()).or_insert_with(|| Entry {
            newest_event: newest,
            last_write: now_micros,
            last_lane: lane,
            lags: VecDeque::new(),
        });
        entry.newest_event = entry.newest_event.max(newest);
        entry.last_write = now_micros;
        entry.last_lane = lane;
        for lag in lags {
            if entry.lags.len() == RECENT_LAGS {
                entry.lags.pop_front();
            }
            entry.lags.push_back(lag);
        }
    }

    /// The freshness of every view written so far, by view name.
    pub fn snapshot(&self) -> Vec<ViewFreshness> {
        let views = self.views.lock().unwrap_or_else(PoisonError::into_inner);
        let mut report: Vec<ViewFreshness> = views
            .iter()
            .map(|(view, entry)| {
                let mut lags: Vec<f64> = entry.lags.iter().copied().collect();
                lags.sort_by(f64::total_cmp);
                ViewFreshness {
                    view: view.clone(),
                    newest_event_time: Timestamp(entry.newest_event),
                    last_write_time: Timestamp(entry.last_write),
                    last_lane: entry.last_lane,
                    lag_p50_seconds: percentile(&lags, 0.50),
                    lag_p99_seconds: percentile(&lags, 0.99),
                    lag_samples: lags.len(),
                }
            })
            .collect();
        report.sort_by(|left, right| left.view.cmp(&right.view));
        report
    }
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], quantile: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((quantile * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lags_are_kept_for_timed_lanes_and_newest_event_for_all() {
        let board = FreshnessBoard::default();
        let now = Timestamp(100_000_000);
        board.record("batchy", WriteLane::Batch, &[1_000_000, 5_000_000], now);
        let lags: Vec<i64> = (1..=100).map(|lag| 100_000_000 - lag * 10_000).collect();
        board.record("streamy", WriteLane::Stream, &lags, now);
        let report = board.snapshot();
        assert_eq!(report.len(), 2);
        assert_eq!(report[0].view, "batchy");
        assert_eq!(report[0].newest_event_time, Timestamp(5_000_000));
        assert_eq!(report[0].lag_p99_seconds, None);
        assert_eq!(report[1].newest_event_time, Timestamp(99_990_000));
        assert_eq!(report[1].lag_samples, 100);
        assert_eq!(report[1].lag_p50_seconds, Some(0.5));
        assert_eq!(report[1].lag_p99_seconds, Some(0.99));
    }
}
