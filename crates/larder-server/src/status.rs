//! `GET /status`: each online view's freshness against its freshness SLA.

use larder_core::Timestamp;
use larder_ingest::ViewFreshness;
use larder_registry::Registry;
use serde_json::{Value as Json, json};

/// How a view stands against its SLA.
fn verdict(sla_seconds: Option<f64>, measured_seconds: Option<f64>) -> &'static str {
    match (sla_seconds, measured_seconds) {
        (_, None) => "no_writes",
        (None, Some(_)) => "no_sla",
        (Some(sla), Some(measured)) if measured <= sla => "ok",
        (Some(_), Some(_)) => "late",
    }
}

/// The status report of every online view of `registry`, from what this process wrote
/// (`board`) as of `now`.
///
/// A view fed by a stream or by direct writes is measured by the 99th percentile of its
/// recent event-to-servable lags; a view written only by batch runs by the age of its newest
/// event time. Views this process has not written since it started say `no_writes`.
pub fn report(registry: &Registry, board: &[ViewFreshness], now: Timestamp) -> Json {
    let mut views: Vec<_> = registry
        .feature_views
        .values()
        .filter(|view| view.online)
        .collect();
    views.sort_by(|left, right| left.name.cmp(&right.name));
    let entries: Vec<Json> = views
        .into_iter()
        .map(|view| {
            let sla_seconds = view.freshness_sla.map(|sla| sla.as_seconds() as f64);
            let source_kind = registry
                .sources
                .get(&view.source)
                .map_or("unknown", |source| source.kind.kind_name());
            let written = board.iter().find(|entry| entry.view == view.name);
            let age_seconds = written.map(|entry| {
                (now.as_micros() - entry.newest_event_time.as_micros()).max(0) as f64 / 1e6
            });
            let measured = written
                .and_then(|entry| entry.lag_p99_seconds)
                .or(age_seconds);
            let next_scheduled_run = view
                .schedule
                .as_deref()
                .and_then(|text| larder_core::CronSchedule::parse(text).ok())
                .and_then(|schedule| schedule.next_after(now))
                .map(Timestamp::to_rfc3339);
            json!({
                "view": view.name,
                "version": view.version,
                "source": source_kind,
                "freshness_sla_seconds": sla_seconds,
                "status": verdict(sla_seconds, measured),
                "newest_event_time": written.map(|entry| entry.newest_event_time.to_rfc3339()),
                "newest_event_age_seconds": age_seconds,
                "last_write_time": written.map(|entry| entry.last_write_time.to_rfc3339()),
                "last_write_lane": written.map(|entry| entry.last_lane.as_str()),
                "lag_p50_seconds": written.and_then(|entry| entry.lag_p50_seconds),
                "lag_p99_seconds": written.and_then(|entry| entry.lag_p99_seconds),
                "lag_samples": written.map_or(0, |entry| entry.lag_samples),
                "schedule": view.schedule,
                "next_scheduled_run": next_scheduled_run,
            })
        })
        .collect();
    json!({
        "project": registry.project,
        "now": now.to_rfc3339(),
        "views": entries,
    })
}

#[cfg(test)]
mod tests {
    use super::verdict;

    #[test]
    fn verdicts() {
        assert_eq!(verdict(Some(5.0), Some(0.4)), "ok");
        assert_eq!(verdict(Some(5.0), Some(7.0)), "late");
        assert_eq!(verdict(None, Some(7.0)), "no_sla");
        assert_eq!(verdict(Some(5.0), None), "no_writes");
    }
}
