//! Feature views and values for the crate's tests.

use larder_core::{Feature, FeatureView, JoinKey, Value, ValueType};

/// An online and offline view version 1 of `source`, keyed by `keys`, with `features`, its
/// event time in `event_timestamp`.
pub fn view(
    name: &str,
    source: &str,
    keys: &[(&str, ValueType)],
    features: &[(&str, ValueType)],
) -> FeatureView {
    FeatureView {
        name: name.to_string(),
        version: 1,
        join_keys: keys
            .iter()
            .map(|(name, dtype)| JoinKey {
                name: name.to_string(),
                dtype: dtype.clone(),
            })
            .collect(),
        source: source.to_string(),
        timestamp_field: "event_timestamp".to_string(),
        features: features
            .iter()
            .map(|(name, dtype)| Feature {
                name: name.to_string(),
                dtype: dtype.clone(),
                description: String::new(),
                vector_index: None,
            })
            .collect(),
        online: true,
        offline: true,
        ..FeatureView::default()
    }
}

/// A string value.
pub fn text(value: &str) -> Value {
    Value::String(value.to_string())
}
