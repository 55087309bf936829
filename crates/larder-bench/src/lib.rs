//! Shared pieces of Larder's benchmarks: the demo-shaped feature views and a deterministic
//! id generator, so that the criterion benches and the load generator ask for the same data.

use larder_core::{Feature, FeatureView, JoinKey, ValueType};

/// The 26 features of the Feast harness (`../shared/peers/feast/features.py`), as two views.
pub fn harness_views() -> Vec<FeatureView> {
    let view = |name: &str, features: Vec<Feature>| FeatureView {
        name: name.to_string(),
        version: 1,
        entities: vec!["user".to_string()],
        join_keys: vec![JoinKey {
            name: "user_id".to_string(),
            dtype: ValueType::Int64,
        }],
        source: format!("{name}_src"),
        transformation: None,
        transformation_path: None,
        timestamp_field: "event_timestamp".to_string(),
        features,
        ttl: None,
        online: true,
        offline: true,
        owner: String::new(),
        tier: None,
        tags: Default::default(),
        description: String::new(),
        freshness_sla: None,
        checks: Vec::new(),
        ..larder_core::FeatureView::default()
    };
    let feature = |name: String, dtype: ValueType| Feature {
        name,
        dtype,
        description: String::new(),
        vector_index: None,
    };
    let mut profile: Vec<Feature> = (0..7)
        .map(|index| feature(format!("p_float_{index}"), ValueType::Float64))
        .collect();
    profile.extend((0..5).map(|index| feature(format!("p_int_{index}"), ValueType::Int64)));
    profile.push(feature("p_segment".to_string(), ValueType::String));
    let mut activity: Vec<Feature> = (0..8)
        .map(|index| feature(format!("a_float_{index}"), ValueType::Float32))
        .collect();
    activity.extend((0..5).map(|index| feature(format!("a_int_{index}"), ValueType::Int64)));
    vec![
        view("user_profile", profile),
        view("user_activity", activity),
    ]
}

/// The 26 feature references of the harness, `view:feature`.
pub fn harness_feature_refs() -> Vec<String> {
    harness_views()
        .iter()
        .flat_map(|view| {
            view.features
                .iter()
                .map(move |feature| format!("{}:{}", view.name, feature.name))
        })
        .collect()
}

/// A tiny deterministic generator (xorshift64*) for entity ids.
#[derive(Debug, Clone)]
pub struct IdGenerator(u64);

impl IdGenerator {
    /// A generator for a seed (0 is replaced by a fixed odd constant).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next id in `[0, bound)`.
    pub fn next_below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound.max(1)
    }
}
