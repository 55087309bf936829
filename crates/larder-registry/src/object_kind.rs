//! The kinds of objects a registry holds, named in plans and diagnostics.

use std::fmt;

/// The kinds of objects a registry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    /// An [`larder_core::Entity`].
    Entity,
    /// A [`larder_core::DataSource`].
    DataSource,
    /// A [`larder_core::FeatureView`].
    FeatureView,
    /// A [`larder_core::FeatureService`].
    FeatureService,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Self::Entity => "entity",
            Self::DataSource => "source",
            Self::FeatureView => "feature view",
            Self::FeatureService => "feature service",
        })
    }
}
