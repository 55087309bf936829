//! Prometheus metrics: one process-wide recorder, rendered by `GET /metrics`.
//!
//! Names: `larder_http_requests_total{endpoint,status}`,
//! `larder_http_request_duration_seconds{endpoint,status}` (histogram),
//! `larder_http_requests_in_flight`, `larder_http_requests_rejected_total{reason}`,
//! `larder_online_rows_read_total{feature_view}`, the online store decorators'
//! `larder_online_cache_{hits,misses}_total`, the write path's
//! `larder_event_to_servable_duration_seconds{view,lane}` (histogram, stream and direct lanes)
//! and the stream consumers' `larder_stream_events_total{view,outcome}` and the size of their
//! in-memory state, `larder_stream_state_entities` and `larder_stream_state_tiles`
//! `{view,partition}` (gauges).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets, in seconds: 50 µs to 10 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// Event-to-servable buckets, in seconds: 10 ms to a day.
const FRESHNESS_BUCKETS: [f64; 16] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3_600.0,
    86_400.0,
];

/// Installs the Prometheus recorder once per process and returns its handle; `None` if
/// another recorder was installed first (metrics are then not rendered).
pub fn prometheus_handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        "larder_event_to_servable_duration_seconds".to_string(),
                    ),
                    &FRESHNESS_BUCKETS,
                )
                .ok()?
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("duration_seconds".to_string()),
                    &LATENCY_BUCKETS,
                )
                .ok()?;
            builder.install_recorder().ok()
        })
        .clone()
}
