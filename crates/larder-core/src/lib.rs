//! The Larder data model: names, value types, values, entity keys, timestamps and the
//! definitions (entities, data sources, feature views, feature services) that every other
//! crate shares.
//!
//! This crate does no I/O and has no async runtime: it is the vocabulary of the system, kept
//! small so that every backend and every lane agrees on what a feature value *is*.

mod base64;
pub mod codec;
#[cfg(test)]
mod codec_props;
pub mod definitions;
pub mod entity_key;
pub mod error;
pub mod fault;
pub mod key_ids;
pub mod schedule;
pub mod secret;
pub mod storage;
pub mod stream;
pub mod time;
pub mod value;

pub use definitions::{
    CheckRule, CheckSeverity, DataQualityCheck, DataSource, DataSourceKind, Entity, Feature,
    FeatureRef, FeatureService, FeatureServiceItem, FeatureView, FeatureViewId, FileFormat,
    IndexedFeature, JoinKey, OnMissing, VectorIndexSpec, VectorMetric,
};
pub use entity_key::{EntityKey, EntityKeyList, PackedBytes};
pub use error::CoreError;
pub use key_ids::KeyIds;
pub use schedule::CronSchedule;
pub use storage::{S3Config, is_object_store_path};
pub use stream::{
    Aggregation, AggregationFunction, MessageFormat, ProtobufSchema, StreamAggregations,
    StreamField, StreamPayload, TimestampUnit,
};
pub use time::{Timestamp, TtlDuration};
pub use value::{Value, ValueType};

/// Which ingestion lane produced a stored row. Every row in every online store carries one,
/// so that operators can tell where a served value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteLane {
    /// Batch materialization from offline sources.
    Batch = 1,
    /// Streaming ingestion from a message broker.
    Stream = 2,
    /// Direct writes (push) from producers that computed their values themselves.
    Direct = 3,
}

impl WriteLane {
    /// The lane's one-byte code, as stored beside every online row.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The lane for a stored code, or `None` for an unknown code.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Batch),
            2 => Some(Self::Stream),
            3 => Some(Self::Direct),
            _ => None,
        }
    }

    /// The lane's name as shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Batch => "batch",
            Self::Stream => "stream",
            Self::Direct => "direct",
        }
    }
}
