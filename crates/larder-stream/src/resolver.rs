//! The one place that maps a stream source definition to its broker.

use larder_core::{DataSource, DataSourceKind};

use crate::StreamError;
use crate::source::StreamSource;

/// The broker of a stream source definition.
pub fn open_source(source: &DataSource) -> Result<Box<dyn StreamSource>, StreamError> {
    match &source.kind {
        DataSourceKind::Kafka { brokers, topic, .. } => Ok(Box::new(crate::kafka::KafkaSource {
            brokers: brokers.clone(),
            topic: topic.clone(),
        })),
        DataSourceKind::Nats {
            url,
            stream,
            subject,
            ..
        } => Ok(Box::new(crate::nats::NatsSource {
            url: url.clone(),
            stream: stream.clone(),
            subject: subject.clone(),
        })),
        other => Err(StreamError::Definition(format!(
            "source '{}' is a {} source, not a stream",
            source.name,
            other.kind_name()
        ))),
    }
}
