//! What a stream view's consumer is given: the view, its source and its aggregations.

use larder_core::{DataSource, DataSourceKind, FeatureView, StreamAggregations};

/// Everything a view's consumer needs.
#[derive(Debug, Clone, PartialEq)]
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
