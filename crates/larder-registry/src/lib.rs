//! The feature repository and the registry.
//!
//! A feature repo is a folder with a `larder.yaml` ([`RepoConfig`]) and YAML files anywhere
//! below it that declare entities, sources, feature views (with optional `.sql`
//! transformations) and feature services. [`FeatureRepo::load`] parses and validates them into
//! a [`Registry`], with diagnostics that point at file, line and key. [`plan_apply`] compares a
//! new registry with the recorded one and refuses data-changing edits without a version bump;
//! [`RegistryStore`] records registries.

mod config;
mod diagnostics;
mod object_kind;
mod plan;
mod repo;
mod store;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod test_support;
mod yaml_tree;

use std::collections::BTreeMap;

use larder_core::{
    DataSource, Entity, FeatureRef, FeatureService, FeatureView, StreamAggregations, Timestamp,
};
use serde::{Deserialize, Serialize};

pub use config::{
    AuthConfig, DynamoDbOnlineStoreConfig, LineageConfig, MaterializeConfig, OfflineEngineConfig,
    OfflineStoreConfig, OnlineCacheConfig, OnlineStoreConfig, RedisOnlineStoreConfig, RepoConfig,
    Scope, ServingConfig, StreamConfig, TokenRecord, TokensFile, TokensFileError,
    VectorStoreConfig,
};
pub use diagnostics::{Diagnostic, Diagnostics, Location};
pub use larder_core::secret::redact_url_password;
pub use object_kind::ObjectKind;
pub use plan::{ApplyPlan, ObjectChange, feature_view_details, plan_apply};
pub use repo::{FeatureRepo, SchemaColumn};
pub use store::{FileRegistryStore, MemoryRegistryStore, RegistryError, RegistryStore};

/// Every definition of a project, as recorded by `larder apply`: the single source of truth for
/// serving, materialization and training.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Registry {
    /// Project name.
    pub project: String,
    /// When this registry was applied (microseconds since the epoch).
    pub applied_at: i64,
    /// Entities by name.
    pub entities: BTreeMap<String, Entity>,
    /// Data sources by name.
    pub sources: BTreeMap<String, DataSource>,
    /// Feature views by name.
    pub feature_views: BTreeMap<String, FeatureView>,
    /// Feature services by name.
    pub feature_services: BTreeMap<String, FeatureService>,
    /// The windowed aggregations of the stream feature views, by feature view name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stream_views: BTreeMap<String, StreamAggregations>,
    /// Every version of each feature view, oldest first (the last is the current one), as
    /// last applied: kept by `apply` ([`Registry::carry_history`]) so that a view's page can
    /// show what changed between versions.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub view_history: BTreeMap<String, Vec<AppliedView>>,
}

/// One version of a feature view and when it was first applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedView {
    /// When this version was first applied (microseconds since the epoch).
    pub applied_at: i64,
    /// The definition (its metadata as last applied).
    pub view: FeatureView,
}

/// A feature reference resolved against a registry: its view and the feature's position in
/// the view's declared order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResolvedFeature<'registry> {
    /// The view.
    pub view: &'registry FeatureView,
    /// The feature's position in `view.features`.
    pub feature_index: usize,
}

impl ResolvedFeature<'_> {
    /// The feature's name.
    pub fn feature_name(&self) -> &str {
        &self.view.features[self.feature_index].name
    }
}

/// Why a list of feature references cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// No feature view of that name.
    #[error("unknown feature view '{0}'")]
    UnknownFeatureView(String),
    /// The view exists but has no such feature.
    #[error("feature view '{view}' has no feature '{feature}'")]
    UnknownFeature {
        /// View name.
        view: String,
        /// Feature name.
        feature: String,
    },
    /// No feature service of that name.
    #[error("unknown feature service '{0}'")]
    UnknownFeatureService(String),
    /// A reference that is not `view:feature`.
    #[error("invalid feature reference '{0}' (expected 'feature_view:feature')")]
    InvalidReference(String),
    /// The view is not served online.
    #[error("feature view '{0}' is not online (online: false)")]
    NotOnline(String),
}

impl Registry {
    /// Fills [`Registry::view_history`] of this registry (about to be recorded at
    /// `self.applied_at`) from the `recorded` one: a view keeps its earlier versions, a new
    /// version is appended, a metadata change updates the current entry in place. Views no
    /// longer declared lose their history. A recorded registry from before histories were
    /// kept contributes its current versions.
    pub fn carry_history(&mut self, recorded: Option<&Registry>) {
        let mut history = BTreeMap::new();
        for (name, view) in &self.feature_views {
            let mut versions: Vec<AppliedView> = match recorded {
                Some(recorded) => match recorded.view_history.get(name) {
                    Some(versions) => versions.clone(),
                    None => recorded
                        .feature_views
                        .get(name)
                        .map(|old| AppliedView {
                            applied_at: recorded.applied_at,
                            view: old.clone(),
                        })
                        .into_iter()
                        .collect(),
                },
                None => Vec::new(),
            };
            match versions.last_mut() {
                Some(last) if last.view.version == view.version => last.view = view.clone(),
                _ => versions.push(AppliedView {
                    applied_at: self.applied_at,
                    view: view.clone(),
                }),
            }
            history.insert(name.clone(), versions);
        }
        self.view_history = history;
    }

    /// When this registry was applied.
    pub fn applied_timestamp(&self) -> Timestamp {
        Timestamp(self.applied_at)
    }

    /// Resolves `view:feature` strings against this registry, in order: each to its view and
    /// the feature's position, checked once here so callers never look them up again.
    pub fn resolve_feature_refs<S: AsRef<str>>(
        &self,
        references: &[S],
    ) -> Result<Vec<ResolvedFeature<'_>>, ResolveError> {
        references
            .iter()
            .map(|reference| {
                let text = reference.as_ref();
                let parsed: FeatureRef = text
                    .parse()
                    .map_err(|_| ResolveError::InvalidReference(text.to_string()))?;
                self.resolve(&parsed.view, &parsed.feature)
            })
            .collect()
    }

    /// The batch views (views over a file source that are online or offline) among
    /// `only_views`, or all of them when `only_views` is empty, in name order; an unknown
    /// name is an error.
    pub fn batch_views(&self, only_views: &[String]) -> Result<Vec<&FeatureView>, ResolveError> {
        if let Some(unknown) = only_views
            .iter()
            .find(|name| !self.feature_views.contains_key(*name))
        {
            return Err(ResolveError::UnknownFeatureView(unknown.clone()));
        }
        Ok(self
            .feature_views
            .values()
            .filter(|view| only_views.is_empty() || only_views.contains(&view.name))
            .filter(|view| {
                self.sources
                    .get(&view.source)
                    .is_some_and(|source| source.kind.is_batch())
            })
            .filter(|view| view.online || view.offline)
            .collect())
    }

    /// The features of a feature service, in order, resolved like
    /// [`Registry::resolve_feature_refs`].
    pub fn resolve_feature_service(
        &self,
        service_name: &str,
    ) -> Result<Vec<ResolvedFeature<'_>>, ResolveError> {
        let service = self
            .feature_services
            .get(service_name)
            .ok_or_else(|| ResolveError::UnknownFeatureService(service_name.to_string()))?;
        let mut resolved = Vec::new();
        for item in &service.items {
            let view = self
                .feature_views
                .get(&item.view)
                .ok_or_else(|| ResolveError::UnknownFeatureView(item.view.clone()))?;
            match &item.features {
                Some(features) => {
                    for feature in features {
                        resolved.push(self.resolve(&item.view, feature)?);
                    }
                }
                None => {
                    resolved.extend(
                        (0..view.features.len()).map(|feature_index| ResolvedFeature {
                            view,
                            feature_index,
                        }),
                    )
                }
            }
        }
        Ok(resolved)
    }

    /// One feature of one view.
    fn resolve(&self, view_name: &str, feature: &str) -> Result<ResolvedFeature<'_>, ResolveError> {
        let view = self
            .feature_views
            .get(view_name)
            .ok_or_else(|| ResolveError::UnknownFeatureView(view_name.to_string()))?;
        let feature_index =
            view.feature_index(feature)
                .ok_or_else(|| ResolveError::UnknownFeature {
                    view: view_name.to_string(),
                    feature: feature.to_string(),
                })?;
        Ok(ResolvedFeature {
            view,
            feature_index,
        })
    }
}
